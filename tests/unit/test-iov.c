/*
 * Tests for IOVector and the zero-detection helpers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <glib.h>
#include <stdint.h>
#include <string.h>

#include "util/iov.h"

static void test_init_add(void **state)
{
    IOVector q;
    char a[10], b[20], c[30];

    qiov_init(&q, 0);
    assert_int_equal(q.niov, 0);
    assert_int_equal(q.size, 0);
    qiov_add(&q, a, sizeof(a));
    qiov_add(&q, b, 0); /* empty pieces are dropped */
    qiov_add(&q, b, sizeof(b));
    qiov_add(&q, c, sizeof(c));
    assert_int_equal(q.size, 60);
    /* Grows beyond its hint. */
    for (int i = 0; i < 100; i++) {
        qiov_add(&q, c + (i % 2) * 15, 15);
    }
    assert_int_equal(q.size, 60 + 1500);
    size_t total = 0;
    for (int i = 0; i < q.niov; i++) {
        total += q.iov[i].iov_len;
    }
    assert_int_equal(total, q.size);

    qiov_reset(&q);
    assert_int_equal(q.niov, 0);
    assert_int_equal(q.size, 0);
    qiov_add(&q, a, 5);
    assert_int_equal(q.size, 5);
    qiov_destroy(&q);
}

static void test_contiguous_merge(void **state)
{
    IOVector q;
    char buf[100];

    qiov_init(&q, 4);
    qiov_add(&q, buf, 10);
    qiov_add(&q, buf + 10, 20);
    assert_int_equal(q.niov, 1);
    assert_int_equal(q.iov[0].iov_len, 30);
    qiov_add(&q, buf + 50, 10);
    assert_int_equal(q.niov, 2);
    qiov_destroy(&q);
}

static void test_buf(void **state)
{
    IOVector q;
    char buf[64], other[16];

    qiov_init_buf(&q, buf, sizeof(buf));
    assert_int_equal(q.niov, 1);
    assert_int_equal(q.size, 64);
    assert_ptr_equal(q.iov[0].iov_base, buf);
    assert_int_equal(q.nalloc, -1);

    /* Adding to a buffer vector turns it into an owned one. */
    qiov_add(&q, other, sizeof(other));
    assert_int_equal(q.niov, 2);
    assert_int_equal(q.size, 80);
    assert_ptr_equal(q.iov[0].iov_base, buf);
    assert_ptr_equal(q.iov[1].iov_base, other);
    qiov_destroy(&q);

    qiov_init_buf(&q, buf, sizeof(buf));
    qiov_destroy(&q); /* fine, frees nothing */
}

/* A vector of uneven pieces over one flat backing buffer, reversed so
 * nothing is merged. */
static void make_scattered(IOVector *q, uint8_t *backing, size_t len,
                           size_t *pieces, int npieces)
{
    qiov_init(q, 2);
    size_t off = 0;
    for (int i = 0; i < npieces && off < len; i++) {
        size_t n = MIN(pieces[i], len - off);
        qiov_add(q, backing + off, n);
        /* a gap of one byte between pieces prevents merging */
        off += n + 1;
    }
}

static void test_copy(void **state)
{
    uint8_t backing[300];
    size_t pieces[] = { 1, 7, 50, 3, 100, 64, 2 };
    IOVector q;
    uint8_t src[227], dst[227];

    memset(backing, 0xee, sizeof(backing));
    make_scattered(&q, backing, sizeof(backing), pieces, 7);
    assert_int_equal(q.size, 227);
    assert_int_equal(q.niov, 7);

    for (size_t i = 0; i < sizeof(src); i++) {
        src[i] = (uint8_t)(i * 13 + 1);
    }
    assert_int_equal(qiov_from_buf(&q, 0, src, sizeof(src)), 227);
    memset(dst, 0, sizeof(dst));
    assert_int_equal(qiov_to_buf(&q, 0, dst, sizeof(dst)), 227);
    assert_memory_equal(src, dst, sizeof(src));
    /* The gaps were not touched. */
    assert_int_equal(backing[1], 0xee);
    assert_int_equal(backing[1 + 1 + 7], 0xee);

    /* Partial ranges at every offset. */
    for (size_t off = 0; off < 227; off += 5) {
        for (size_t len = 0; off + len <= 227; len += 17) {
            memset(dst, 0, sizeof(dst));
            assert_int_equal(qiov_to_buf(&q, off, dst, len), len);
            assert_memory_equal(dst, src + off, len);
        }
    }
    /* Beyond the end: short counts. */
    assert_int_equal(qiov_to_buf(&q, 200, dst, 100), 27);
    assert_int_equal(qiov_to_buf(&q, 500, dst, 100), 0);
    assert_int_equal(qiov_from_buf(&q, 220, src, 100), 7);

    /* memset (after restoring what the short copy overwrote) */
    assert_int_equal(qiov_from_buf(&q, 0, src, sizeof(src)), 227);
    assert_int_equal(qiov_memset(&q, 10, 0x5a, 100), 100);
    assert_int_equal(qiov_to_buf(&q, 0, dst, sizeof(dst)), 227);
    for (size_t i = 0; i < 227; i++) {
        assert_int_equal(dst[i], (i >= 10 && i < 110) ? 0x5a : src[i]);
    }
    qiov_destroy(&q);
}

static void test_concat(void **state)
{
    uint8_t backing[300];
    size_t pieces[] = { 10, 20, 30, 40 };
    IOVector src, dst;

    for (size_t i = 0; i < sizeof(backing); i++) {
        backing[i] = (uint8_t)i;
    }
    make_scattered(&src, backing, sizeof(backing), pieces, 4);
    assert_int_equal(src.size, 100);

    qiov_init(&dst, 1);
    qiov_concat(&dst, &src, 15, 50); /* from piece 2 into piece 4 */
    assert_int_equal(dst.size, 50);
    assert_int_equal(dst.niov, 3);
    uint8_t a[50], b[50];
    qiov_to_buf(&dst, 0, a, 50);
    qiov_to_buf(&src, 15, b, 50);
    assert_memory_equal(a, b, 50);
    /* It shares src's memory. */
    assert_ptr_equal(dst.iov[0].iov_base, backing + 11 + 5);

    /* Past the end: only what exists. */
    qiov_reset(&dst);
    qiov_concat(&dst, &src, 90, 100);
    assert_int_equal(dst.size, 10);
    qiov_destroy(&dst);
    qiov_destroy(&src);
}

static void test_buffer_is_zero(void **state)
{
    uint8_t *buf = g_malloc0(8192 + 64);

    assert_true(buffer_is_zero(buf, 0));
    /* Every alignment and length, and a non-zero byte at every place. */
    for (size_t start = 0; start < 16; start++) {
        for (size_t len = 1; len < 300; len += 7) {
            assert_true(buffer_is_zero(buf + start, len));
            for (size_t pos = 0; pos < len; pos += 3) {
                buf[start + pos] = 1;
                assert_false(buffer_is_zero(buf + start, len));
                buf[start + pos] = 0;
            }
            /* Just outside the range does not count. */
            buf[start + len] = 1;
            assert_true(buffer_is_zero(buf + start, len));
            buf[start + len] = 0;
        }
    }
    assert_true(buffer_is_zero(buf, 8192));
    buf[8191] = 0x80;
    assert_false(buffer_is_zero(buf, 8192));
    assert_true(buffer_is_zero(buf, 8191));
    g_free(buf);
}

static void test_qiov_is_zero(void **state)
{
    uint8_t backing[200] = { 0 };
    size_t pieces[] = { 10, 20, 30, 40 };
    IOVector q;

    make_scattered(&q, backing, sizeof(backing), pieces, 4);
    assert_true(qiov_is_zero(&q, 0, q.size));
    /* A non-zero gap byte is not in the vector. */
    backing[10] = 1;
    assert_true(qiov_is_zero(&q, 0, q.size));
    /* Byte 35 of the vector: piece 3 (offset 30 in the vector) starts at
     * backing offset 32. */
    backing[32 + 5] = 1;
    assert_false(qiov_is_zero(&q, 0, q.size));
    assert_false(qiov_is_zero(&q, 35, 1));
    assert_true(qiov_is_zero(&q, 0, 35));
    assert_true(qiov_is_zero(&q, 36, q.size - 36));
    qiov_destroy(&q);
}

static void test_memalign(void **state)
{
    size_t aligns[] = { 1, 8, 512, 4096, 65536, 3000 };
    for (size_t i = 0; i < G_N_ELEMENTS(aligns); i++) {
        void *p = blk_memalign(aligns[i], 12345);
        assert_non_null(p);
        size_t a = aligns[i] == 3000 ? 4096 : aligns[i];
        assert_int_equal((uintptr_t)p % a, 0);
        memset(p, 1, 12345);
        blk_vfree(p);
    }
    void *p = blk_memalign(4096, 0);
    assert_non_null(p);
    blk_vfree(p);
    blk_vfree(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_add),
        cmocka_unit_test(test_contiguous_merge),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_buffer_is_zero),
        cmocka_unit_test(test_qiov_is_zero),
        cmocka_unit_test(test_memalign),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
