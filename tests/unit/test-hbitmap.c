/*
 * hbitmap: every operation checked against a plain bit array under random
 * sequences (sizes around the chunk boundaries), plus the layouts that
 * serialisation and the QEMU-compatible SHA-256 promise, and the costs a
 * huge bitmap must not pay.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <glib.h>

#include "util/hbitmap.h"

typedef struct Model {
    uint64_t size;
    uint8_t *bits; /* a byte per bit */
} Model;

static void model_assign(Model *m, uint64_t s, uint64_t n, uint8_t v)
{
    for (uint64_t i = s; i < s + n && i < m->size; i++) {
        m->bits[i] = v;
    }
}

static uint64_t model_count(const Model *m)
{
    uint64_t c = 0;
    for (uint64_t i = 0; i < m->size; i++) {
        c += m->bits[i];
    }
    return c;
}

static int64_t model_find(const Model *m, uint64_t s, uint64_t n, uint8_t v)
{
    for (uint64_t i = s; i < s + n && i < m->size; i++) {
        if (m->bits[i] == v) {
            return (int64_t)i;
        }
    }
    return -1;
}

static void check_equal(const HBitmap *hb, const Model *m, GRand *r)
{
    assert_int_equal(hbitmap_count(hb), model_count(m));
    for (int k = 0; k < 20; k++) {
        uint64_t s = m->size ? (uint64_t)g_rand_int_range(r, 0, (gint32)m->size) : 0;
        uint64_t n = (uint64_t)g_rand_int_range(r, 1, (gint32)m->size + 2);
        assert_int_equal(hbitmap_next_dirty(hb, s, n), model_find(m, s, n, 1));
        assert_int_equal(hbitmap_next_clean(hb, s, n), model_find(m, s, n, 0));
        if (m->size) {
            assert_int_equal(hbitmap_get(hb, s), m->bits[s]);
        }
        uint64_t as, an;
        int64_t d = model_find(m, s, n, 1);
        bool found = hbitmap_next_dirty_area(hb, s, n, &as, &an);
        assert_int_equal(found, d >= 0);
        if (found) {
            uint64_t end = MIN(s + n, m->size);
            int64_t c = model_find(m, (uint64_t)d, end - (uint64_t)d, 0);
            assert_int_equal(as, (uint64_t)d);
            assert_int_equal(an, (c < 0 ? end : (uint64_t)c) - (uint64_t)d);
        }
    }
    /* serialised form, whole bitmap */
    uint64_t nbytes = (m->size + 7) / 8;
    g_autofree uint8_t *buf = g_malloc0(nbytes + 8);
    assert_true(hbitmap_serialize(hb, 0, m->size, buf));
    for (uint64_t i = 0; i < m->size; i++) {
        assert_int_equal((buf[i / 8] >> (i % 8)) & 1, m->bits[i]);
    }
}

static void random_ops(uint64_t size, unsigned seed)
{
    GRand *r = g_rand_new_with_seed(seed);
    Model m = { size, g_malloc0(size + 1) };
    HBitmap *hb = hbitmap_new(size);
    const uint64_t CB = HBITMAP_CHUNK_BITS;
    for (int op = 0; op < 300; op++) {
        uint64_t s, n;
        switch (g_rand_int_range(r, 0, 4)) {
        case 0: /* short */
            s = (uint64_t)g_rand_int_range(r, 0, (gint32)size);
            n = (uint64_t)g_rand_int_range(r, 1, 200);
            break;
        case 1: /* chunk aligned */
            s = (uint64_t)g_rand_int_range(r, 0, (gint32)(size / CB + 1)) * CB;
            n = CB * (uint64_t)g_rand_int_range(r, 1, 3);
            break;
        case 2: /* around chunk boundaries */
            s = (uint64_t)g_rand_int_range(r, 0, (gint32)(size / CB + 1)) * CB;
            s = s > 5 ? s - (uint64_t)g_rand_int_range(r, 0, 5) : 0;
            n = CB - 1 + (uint64_t)g_rand_int_range(r, 0, 3);
            break;
        default: /* long */
            s = (uint64_t)g_rand_int_range(r, 0, (gint32)size);
            n = (uint64_t)g_rand_int_range(r, 1, (gint32)size + 1);
            break;
        }
        bool set = g_rand_int_range(r, 0, 3) != 0;
        if (set) {
            hbitmap_set(hb, s, n);
        } else {
            hbitmap_reset(hb, s, n);
        }
        model_assign(&m, s, n, set);
        if (op % 25 == 0) {
            check_equal(hb, &m, r);
        }
    }
    check_equal(hb, &m, r);

    /* copy and merge */
    HBitmap *other = hbitmap_new(size);
    Model m2 = { size, g_malloc0(size + 1) };
    for (int k = 0; k < 10; k++) {
        uint64_t s = (uint64_t)g_rand_int_range(r, 0, (gint32)size);
        uint64_t n = (uint64_t)g_rand_int_range(r, 1, (gint32)(2 * CB));
        hbitmap_set(other, s, n);
        model_assign(&m2, s, n, 1);
    }
    HBitmap *copy = hbitmap_copy(hb);
    check_equal(copy, &m, r);
    assert_true(hbitmap_merge(copy, other));
    for (uint64_t i = 0; i < size; i++) {
        m.bits[i] |= m2.bits[i];
    }
    check_equal(copy, &m, r);

    /* deserialize a serialised copy into an empty bitmap */
    uint64_t nbytes = (size + 7) / 8;
    g_autofree uint8_t *buf = g_malloc0(nbytes + 8);
    assert_true(hbitmap_serialize(copy, 0, size, buf));
    HBitmap *back = hbitmap_new(size);
    hbitmap_set(back, 0, size); /* deserialize replaces, not ORs */
    assert_true(hbitmap_deserialize(back, 0, size, buf));
    check_equal(back, &m, r);
    g_autofree char *h1 = hbitmap_sha256(copy);
    g_autofree char *h2 = hbitmap_sha256(back);
    assert_string_equal(h1, h2);

    /* shrink then grow: dropped bits stay clear */
    uint64_t small = size / 3;
    hbitmap_truncate(back, small);
    model_assign(&m, small, size - small, 0);
    hbitmap_truncate(back, size);
    check_equal(back, &m, r);

    hbitmap_reset_all(back);
    memset(m.bits, 0, size);
    check_equal(back, &m, r);

    hbitmap_free(back);
    hbitmap_free(copy);
    hbitmap_free(other);
    hbitmap_free(hb);
    g_free(m.bits);
    g_free(m2.bits);
    g_rand_free(r);
}

static void test_random(void **state)
{
    const uint64_t CB = HBITMAP_CHUNK_BITS;
    uint64_t sizes[] = { 1, 63, 64, 65, 1000, CB - 1, CB, CB + 1,
                         3 * CB + 77, 5 * CB };
    for (unsigned i = 0; i < G_N_ELEMENTS(sizes); i++) {
        for (unsigned seed = 1; seed <= 3; seed++) {
            random_ops(sizes[i], seed * 7919 + i);
        }
    }
}

/* The bytes hashed are max(1, ceil(size/64)) little-endian words, as
 * QEMU's last hbitmap level. */
static void test_sha256_layout(void **state)
{
    HBitmap *hb = hbitmap_new(100); /* 2 words */
    hbitmap_set(hb, 0, 1);
    hbitmap_set(hb, 65, 2);
    uint8_t bytes[16] = { 0 };
    bytes[0] = 1;
    bytes[8] = 0x6;
    g_autofree char *want =
        g_compute_checksum_for_data(G_CHECKSUM_SHA256, bytes, sizeof(bytes));
    g_autofree char *got = hbitmap_sha256(hb);
    assert_string_equal(got, want);
    hbitmap_free(hb);

    /* an empty bitmap hashes one zero word */
    hb = hbitmap_new(0);
    uint8_t zero[8] = { 0 };
    g_autofree char *want0 =
        g_compute_checksum_for_data(G_CHECKSUM_SHA256, zero, sizeof(zero));
    g_autofree char *got0 = hbitmap_sha256(hb);
    assert_string_equal(got0, want0);
    hbitmap_free(hb);
}

static void test_serialize_unaligned_start(void **state)
{
    HBitmap *hb = hbitmap_new(1000);
    uint8_t buf[16];
    assert_false(hbitmap_serialize(hb, 3, 10, buf));
    assert_false(hbitmap_deserialize(hb, 3, 10, buf));
    /* a partial range: padding bits are zero */
    hbitmap_set(hb, 64, 1000);
    memset(buf, 0xaa, sizeof(buf));
    assert_true(hbitmap_serialize(hb, 64, 12, buf));
    assert_int_equal(buf[0], 0xff);
    assert_int_equal(buf[1], 0x0f);
    hbitmap_free(hb);
}

/* 2^30 bits (64 TiB at 64 KiB): creating, filling everything, searching,
 * merging and counting stay cheap (whole chunks are markers). */
static void test_huge(void **state)
{
    uint64_t n = UINT64_C(1) << 30;
    gint64 t0 = g_get_monotonic_time();
    HBitmap *a = hbitmap_new(n);
    HBitmap *b = hbitmap_new(n);
    assert_int_equal(hbitmap_next_dirty(a, 0, n), -1);
    assert_true(hbitmap_merge(a, b));
    hbitmap_set(b, 0, n);
    assert_int_equal(hbitmap_count(b), n);
    assert_int_equal(hbitmap_next_clean(b, 0, n), -1);
    hbitmap_reset(b, n - 5, 1);
    assert_int_equal(hbitmap_next_clean(b, 0, n), (int64_t)(n - 5));
    hbitmap_set(a, n / 2 + 3, 1);
    assert_int_equal(hbitmap_next_dirty(a, 0, n), (int64_t)(n / 2 + 3));
    assert_true(hbitmap_merge(a, b));
    assert_int_equal(hbitmap_count(a), n - 1); /* all but bit n - 5 */
    hbitmap_truncate(a, n / 2);
    assert_int_equal(hbitmap_count(a), n / 2);
    gint64 us = g_get_monotonic_time() - t0;
    /* generous: a whole-bitmap walk per call would take far longer */
    assert_true(us < 2 * G_USEC_PER_SEC);
    hbitmap_free(a);
    hbitmap_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_sha256_layout),
        cmocka_unit_test(test_serialize_unaligned_start),
        cmocka_unit_test(test_huge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
