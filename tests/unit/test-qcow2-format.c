/*
 * qcow2's pure decoding helpers: refcount entries of every width, L2 entry
 * types, compressed cluster descriptors, deflate round trips.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "block/drivers/qcow2.h"

static void test_refcount_widths(void **state)
{
    uint8_t block[512];
    for (int order = 0; order <= 6; order++) {
        int bits = 1 << order;
        uint64_t n = 512 * 8 / bits;
        uint64_t max = bits == 64 ? UINT64_MAX : (1ULL << bits) - 1;
        memset(block, 0, sizeof(block));
        for (uint64_t i = 0; i < n; i++) {
            qcow2_refcount_set(block, order, i, (i * 0x9e3779b97f4a7c15ULL) & max);
        }
        for (uint64_t i = 0; i < n; i++) {
            assert_int_equal(qcow2_refcount_get(block, order, i),
                             (i * 0x9e3779b97f4a7c15ULL) & max);
        }
        /* setting one entry leaves its neighbours alone */
        qcow2_refcount_set(block, order, 5, max);
        assert_int_equal(qcow2_refcount_get(block, order, 4),
                         (4 * 0x9e3779b97f4a7c15ULL) & max);
        assert_int_equal(qcow2_refcount_get(block, order, 6),
                         (6 * 0x9e3779b97f4a7c15ULL) & max);
        qcow2_refcount_set(block, order, 5, 0);
        assert_int_equal(qcow2_refcount_get(block, order, 5), 0);
    }
    /* on-disk layout: sub-byte widths fill each byte from bit 0 */
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 0, 0, 1);
    qcow2_refcount_set(block, 0, 3, 1);
    assert_int_equal(block[0], 0x09);
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 2, 1, 0xa);
    assert_int_equal(block[0], 0xa0);
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 4, 1, 0x1234);
    assert_int_equal(block[2], 0x12);
    assert_int_equal(block[3], 0x34);
    qcow2_refcount_set(block, 6, 1, 0x0102030405060708ULL);
    assert_int_equal(block[8], 0x01);
    assert_int_equal(block[15], 0x08);
}

static void test_l2_entry_types(void **state)
{
    assert_int_equal(qcow2_l2_entry_type(0, 3), QCOW2_CLUSTER_UNALLOCATED);
    assert_int_equal(qcow2_l2_entry_type(QCOW_OFLAG_ZERO, 3),
                     QCOW2_CLUSTER_ZERO_PLAIN);
    assert_int_equal(qcow2_l2_entry_type(0x50000 | QCOW_OFLAG_ZERO, 3),
                     QCOW2_CLUSTER_ZERO_ALLOC);
    assert_int_equal(qcow2_l2_entry_type(0x50000 | QCOW_OFLAG_COPIED, 3),
                     QCOW2_CLUSTER_NORMAL);
    /* v2 has no zero flag */
    assert_int_equal(qcow2_l2_entry_type(QCOW_OFLAG_ZERO, 2),
                     QCOW2_CLUSTER_UNALLOCATED);
    assert_int_equal(qcow2_l2_entry_type(QCOW_OFLAG_COMPRESSED | 0x1234, 3),
                     QCOW2_CLUSTER_COMPRESSED);
}

static void test_compressed_descriptor(void **state)
{
    for (int cb = 9; cb <= 21; cb++) {
        uint64_t hosts[] = { 0x10000, 0x10200 + 17, 0x7fff00, 1ULL << 40 };
        for (size_t i = 0; i < 4; i++) {
            uint64_t maxlen = (1ULL << cb);
            for (uint64_t len = 1; len <= maxlen; len = len * 3 + 1) {
                uint64_t e = qcow2_compressed_encode(hosts[i], len, cb);
                assert_true(e & QCOW_OFLAG_COMPRESSED);
                uint64_t h, l;
                qcow2_compressed_decode(e, cb, &h, &l);
                assert_int_equal(h, hosts[i]);
                /* whole sectors from the offset's sector: covers len */
                assert_true(l >= len);
                assert_int_equal((h + l) % 512, 0);
                assert_true(l < len + 512);
            }
        }
    }
    /* A descriptor as QEMU writes it for 64k clusters: x = 54 */
    uint64_t e = QCOW_OFLAG_COMPRESSED | (3ULL << 54) | 0x30123ULL;
    uint64_t h, l;
    qcow2_compressed_decode(e, 16, &h, &l);
    assert_int_equal(h, 0x30123);
    assert_int_equal(l, 4 * 512 - 0x123);
}

static void test_deflate_roundtrip(void **state)
{
    uint8_t in[65536], out[65536], back[65536];
    for (size_t i = 0; i < sizeof(in); i++) {
        in[i] = (uint8_t)(i / 100);
    }
    int64_t n = qcow2_compress_buf(out, sizeof(out) - 1, in, sizeof(in));
    assert_true(n > 0 && n < 65535);
    /* trailing bytes after the stream (sector rounding) are fine */
    memset(out + n, 0x5a, 100);
    assert_int_equal(qcow2_decompress_buf(back, sizeof(back), out,
                                          (size_t)n + 100),
                     0);
    assert_memory_equal(in, back, sizeof(in));
    /* truncated input fails, never overreads */
    assert_int_equal(qcow2_decompress_buf(back, sizeof(back), out,
                                          (size_t)n / 2),
                     -EIO);
    /* incompressible data does not fit */
    for (size_t i = 0; i < sizeof(in); i++) {
        in[i] = (uint8_t)(i * 2654435761u >> 13);
    }
    GRand *r = g_rand_new_with_seed(1);
    for (size_t i = 0; i < sizeof(in); i++) {
        in[i] = (uint8_t)g_rand_int(r);
    }
    g_rand_free(r);
    assert_int_equal(qcow2_compress_buf(out, sizeof(out) - 1, in, sizeof(in)),
                     -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refcount_widths),
        cmocka_unit_test(test_l2_entry_types),
        cmocka_unit_test(test_compressed_descriptor),
        cmocka_unit_test(test_deflate_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
