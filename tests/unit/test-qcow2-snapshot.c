/*
 * qcow2 snapshot table entries (block/drivers/qcow2-snapshot.c): the
 * on-disk layout of qcow2.txt byte by byte, encode/decode round trips,
 * entries with less or more extra data than QEMU writes, damaged entries,
 * and the lookups by id and name and the choice of a new id.
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

static void test_layout(void **state)
{
    (void)state;
    Qcow2Snapshot sn = {
        .l1_table_offset = 0x50000,
        .l1_size = 3,
        .id_str = "12",
        .name = "hello",
        .date_sec = 0x11223344,
        .date_nsec = 0x55667788,
        .vm_clock_nsec = 0x0102030405060708ULL,
        .vm_state_size = 0,
        .has_icount = false,
    };
    uint8_t buf[128];
    /* 40 + 24 extra + 2 + 5 = 71, padded to 72 */
    assert_int_equal(qcow2_snapshot_encoded_size(&sn), 72);
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(qcow2_snapshot_encode(buf, &sn, 4 << 20), 72);
    assert_int_equal(qcow2_be64(buf), 0x50000);
    assert_int_equal(qcow2_be32(buf + 8), 3);
    assert_int_equal(qcow2_be16(buf + 12), 2);
    assert_int_equal(qcow2_be16(buf + 14), 5);
    assert_int_equal(qcow2_be32(buf + 16), 0x11223344);
    assert_int_equal(qcow2_be32(buf + 20), 0x55667788);
    assert_int_equal(qcow2_be64(buf + 24), 0x0102030405060708ULL);
    assert_int_equal(qcow2_be32(buf + 32), 0);
    assert_int_equal(qcow2_be32(buf + 36), 24);
    assert_int_equal(qcow2_be64(buf + 40), 0);          /* vm state, 64 bit */
    assert_int_equal(qcow2_be64(buf + 48), 4 << 20);    /* disk size */
    assert_int_equal(qcow2_be64(buf + 56), UINT64_MAX); /* no icount */
    assert_memory_equal(buf + 64, "12hello", 7);
    assert_int_equal(buf[71], 0);    /* padding */
    assert_int_equal(buf[72], 0xee); /* nothing beyond */
}

static void test_roundtrip(void **state)
{
    (void)state;
    Qcow2Snapshot sn = {
        .l1_table_offset = 0x7fff0000,
        .l1_size = 65536,
        .id_str = "4",
        .name = "a snapshot name of some length",
        .date_sec = 1795330579,
        .date_nsec = 336388000,
        .vm_clock_nsec = 1795330579336389000ULL,
        .vm_state_size = 4096,
        .has_icount = true,
        .icount = 77,
    };
    uint8_t buf[256];
    size_t n = qcow2_snapshot_encode(buf, &sn, 123456789);
    assert_int_equal(n % 8, 0);
    Qcow2Snapshot out;
    uint64_t disk;
    assert_int_equal(qcow2_snapshot_decode(buf, n, &out, &disk), (int64_t)n);
    assert_int_equal(out.l1_table_offset, sn.l1_table_offset);
    assert_int_equal(out.l1_size, sn.l1_size);
    assert_string_equal(out.id_str, "4");
    assert_string_equal(out.name, sn.name);
    assert_int_equal(out.date_sec, sn.date_sec);
    assert_int_equal(out.date_nsec, sn.date_nsec);
    assert_int_equal(out.vm_clock_nsec, sn.vm_clock_nsec);
    assert_int_equal(out.vm_state_size, 4096);
    assert_true(out.has_icount);
    assert_int_equal(out.icount, 77);
    assert_int_equal(disk, 123456789);
    g_free(out.id_str);
    g_free(out.name);

    /* an empty name (qemu-img snapshot -c '') */
    sn.name = "";
    sn.has_icount = false;
    n = qcow2_snapshot_encode(buf, &sn, 0);
    assert_int_equal(n, 72); /* 40 + 24 + 1 -> 72 */
    assert_int_equal(qcow2_snapshot_decode(buf, n, &out, NULL), 72);
    assert_string_equal(out.name, "");
    assert_false(out.has_icount);
    g_free(out.id_str);
    g_free(out.name);
}

/* A v2-style entry: no extra data at all, then one with 16 bytes (no
 * icount) and one with more than QEMU knows (kept as length only). */
static void test_other_extra_sizes(void **state)
{
    (void)state;
    uint8_t buf[128];
    Qcow2Snapshot out;
    uint64_t disk;

    memset(buf, 0, sizeof(buf));
    qcow2_put_be16(buf + 12, 1);
    qcow2_put_be16(buf + 14, 2);
    memcpy(buf + 40, "7ab", 3);
    assert_int_equal(qcow2_snapshot_decode(buf, 43, &out, &disk), 48);
    assert_string_equal(out.id_str, "7");
    assert_string_equal(out.name, "ab");
    assert_int_equal(disk, UINT64_MAX);
    assert_false(out.has_icount);
    g_free(out.id_str);
    g_free(out.name);

    memset(buf, 0, sizeof(buf));
    qcow2_put_be32(buf + 36, 16);
    qcow2_put_be64(buf + 48, 1 << 20);
    qcow2_put_be16(buf + 12, 1);
    memcpy(buf + 56, "1", 1);
    assert_int_equal(qcow2_snapshot_decode(buf, sizeof(buf), &out, &disk), 64);
    assert_int_equal(disk, 1 << 20);
    assert_false(out.has_icount);
    g_free(out.id_str);
    g_free(out.name);

    memset(buf, 0, sizeof(buf));
    qcow2_put_be32(buf + 36, 40);
    qcow2_put_be64(buf + 56, 5); /* icount */
    qcow2_put_be16(buf + 12, 1);
    qcow2_put_be16(buf + 14, 1);
    memcpy(buf + 80, "9z", 2);
    assert_int_equal(qcow2_snapshot_decode(buf, sizeof(buf), &out, NULL), 88);
    assert_true(out.has_icount);
    assert_int_equal(out.icount, 5);
    assert_string_equal(out.id_str, "9");
    assert_string_equal(out.name, "z");
    g_free(out.id_str);
    g_free(out.name);
}

static void test_damaged(void **state)
{
    (void)state;
    uint8_t buf[64];
    memset(buf, 0, sizeof(buf));
    /* shorter than a header */
    assert_int_equal(qcow2_snapshot_decode(buf, 39, NULL, NULL), -EINVAL);
    /* names running past the data */
    qcow2_put_be16(buf + 14, 100);
    assert_int_equal(qcow2_snapshot_decode(buf, sizeof(buf), NULL, NULL),
                     -EINVAL);
    /* too much extra data (QEMU's limit) */
    qcow2_put_be16(buf + 14, 0);
    qcow2_put_be32(buf + 36, 1025);
    assert_int_equal(qcow2_snapshot_decode(buf, sizeof(buf), NULL, NULL),
                     -EFBIG);
}

static void test_find_and_new_id(void **state)
{
    (void)state;
    Qcow2Snapshot list[] = {
        { .id_str = "1", .name = "a" },
        { .id_str = "2", .name = "a" },
        { .id_str = "10", .name = "1" },
        { .id_str = "x", .name = "b" },
    };
    assert_int_equal(qcow2_snapshot_find(list, 4, "1", NULL), 0);
    assert_int_equal(qcow2_snapshot_find(list, 4, NULL, "a"), 0);
    assert_int_equal(qcow2_snapshot_find(list, 4, "2", "a"), 1);
    assert_int_equal(qcow2_snapshot_find(list, 4, "1", "1"), -1);
    assert_int_equal(qcow2_snapshot_find(list, 4, NULL, "1"), 2);
    assert_int_equal(qcow2_snapshot_find(list, 4, NULL, NULL), -1);
    assert_int_equal(qcow2_snapshot_find(list, 0, "1", NULL), -1);
    char *id = qcow2_snapshot_new_id(list, 4);
    assert_string_equal(id, "11");
    g_free(id);
    id = qcow2_snapshot_new_id(list, 0);
    assert_string_equal(id, "1");
    g_free(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_other_extra_sizes),
        cmocka_unit_test(test_damaged),
        cmocka_unit_test(test_find_and_new_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
