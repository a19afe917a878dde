/*
 * Dirty bitmaps on real nodes: writes, zeroes and discards mark enabled
 * bitmaps; the flag checks and their messages; successors; merge across
 * granularities; resize; the QMP actions as transactions (abort restores);
 * and the cost of bitmaps on a 16 TiB node.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <glib.h>

#include "block/block_int.h"
#include "tests/unit/test-helpers.h"
#include "block/dirty-bitmap.h"
#include "block/qmp-dirty-bitmap.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"

typedef enum { OP_WRITE, OP_ZERO, OP_DISCARD, OP_TRUNCATE } Op;
typedef struct Req {
    BlockBackend *blk;
    Op op;
    int64_t offset, bytes;
    int ret;
} Req;

static void coroutine_fn req_co(void *opaque)
{
    Req *r = opaque;
    g_autofree void *buf = NULL;
    switch (r->op) {
    case OP_WRITE:
        buf = g_malloc0(r->bytes);
        r->ret = blk_co_pwrite(r->blk, r->offset, r->bytes, buf, 0);
        break;
    case OP_ZERO:
        r->ret = blk_co_pwrite_zeroes(r->blk, r->offset, r->bytes, 0);
        break;
    case OP_DISCARD:
        r->ret = blk_co_pdiscard(r->blk, r->offset, r->bytes);
        break;
    case OP_TRUNCATE:
        r->ret = blk_co_truncate(r->blk, r->offset, false, PREALLOC_MODE_OFF,
                                 0, NULL);
        break;
    }
}

static int do_req(BlockBackend *blk, Op op, int64_t offset, int64_t bytes)
{
    Req r = { blk, op, offset, bytes, 0 };
    coroutine_run_sync(req_co, &r);
    return r.ret;
}

static BdrvDirtyBitmap *add(BlockDriverState *bs, uint32_t g, const char *n)
{
    GError *err = NULL;
    BdrvDirtyBitmap *bm = bdrv_create_dirty_bitmap(bs, g, n, &err);
    if (!bm) {
        fail_msg("add %s: %s", n ? n : "(anon)", err->message);
    }
    return bm;
}

static void test_marking(void **state)
{
    /* a file, which can be resized */
    g_autofree char *path = NULL;
    int fd = g_file_open_tmp("test-dirty-bitmap-XXXXXX", &path, NULL);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4 << 20), 0);
    close(fd);
    g_autofree char *opts = g_strdup_printf(
        "driver=file,node-name=n0,filename=%s,discard=unmap", path);
    BlockDriverState *bs = test_open_node(opts);
    BlockBackend *blk = test_rw_resize_blk(bs);
    BdrvDirtyBitmap *a = add(bs, 65536, "a");
    BdrvDirtyBitmap *b = add(bs, 512, "b");
    BdrvDirtyBitmap *off = add(bs, 65536, "off");
    bdrv_disable_dirty_bitmap(off);

    assert_int_equal(do_req(blk, OP_WRITE, 0, 512), 0);
    assert_int_equal(do_req(blk, OP_WRITE, 1 << 20, 70 * 1024), 0);
    assert_int_equal(do_req(blk, OP_ZERO, 3 << 20, 4096), 0);
    /* the granule-rounded counts qemu-storage-daemon reports */
    assert_int_equal(bdrv_dirty_bitmap_count(a), 4 * 65536);
    assert_int_equal(bdrv_dirty_bitmap_count(b), 512 + 70 * 1024 + 4096);
    assert_int_equal(bdrv_dirty_bitmap_count(off), 0);
    assert_true(bdrv_dirty_bitmap_get(a, 65535));
    assert_false(bdrv_dirty_bitmap_get(a, 65536));

    /* discard marks too */
    bdrv_clear_dirty_bitmap(a, NULL);
    assert_int_equal(do_req(blk, OP_DISCARD, 2 << 20, 65536), 0);
    assert_int_equal(bdrv_dirty_bitmap_count(a), 65536);

    int64_t s, n;
    assert_true(bdrv_dirty_bitmap_next_dirty_area(a, 0, 4 << 20, &s, &n));
    assert_int_equal(s, 2 << 20);
    assert_int_equal(n, 65536);
    /* inside a dirty granule the area starts at the offset asked for */
    assert_true(bdrv_dirty_bitmap_next_dirty_area(a, (2 << 20) + 100, 1000,
                                                  &s, &n));
    assert_int_equal(s, (2 << 20) + 100);
    assert_int_equal(n, 1000);
    assert_int_equal(bdrv_dirty_bitmap_next_clean(a, 2 << 20, 4 << 20),
                     (2 << 20) + 65536);

    /* resize: bits stay, new area clean; shrinking drops bits */
    assert_int_equal(do_req(blk, OP_TRUNCATE, 8 << 20, 0), 0);
    assert_int_equal(bdrv_dirty_bitmap_size(a), 8 << 20);
    assert_int_equal(bdrv_dirty_bitmap_count(a), 65536);
    assert_int_equal(do_req(blk, OP_WRITE, (8 << 20) - 512, 512), 0);
    assert_int_equal(bdrv_dirty_bitmap_count(a), 2 * 65536);
    assert_int_equal(do_req(blk, OP_TRUNCATE, 1 << 20, 0), 0);
    assert_int_equal(bdrv_dirty_bitmap_count(a), 0);
    assert_int_equal(bdrv_dirty_bitmap_count(b), 512);

    blk_unref(blk);
    bdrv_unref(bs); /* frees the bitmaps (ASan checks the leak) */
    unlink(path);
}

static void test_checks(void **state)
{
    BlockDriverState *bs =
        test_open_node("driver=null-co,node-name=n1,size=1048576");
    BdrvDirtyBitmap *bm = add(bs, 65536, "x");
    GError *err = NULL;

    assert_null(bdrv_create_dirty_bitmap(bs, 65536, "x", &err));
    assert_string_equal(err->message, "Bitmap already exists: x");
    g_clear_error(&err);
    assert_null(bdrv_create_dirty_bitmap(bs, 1000, "y", &err));
    assert_string_equal(err->message,
                        "Granularity must be power of 2 and at least 512");
    g_clear_error(&err);
    g_autofree char *longname = g_strnfill(1024, 'z');
    assert_null(bdrv_create_dirty_bitmap(bs, 65536, longname, &err));
    assert_true(g_str_has_prefix(err->message, "Bitmap name too long: zzz"));
    g_clear_error(&err);

    assert_int_equal(bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_DEFAULT, NULL), 0);
    bdrv_dirty_bitmap_set_busy(bm, true);
    assert_int_equal(bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_ALLOW_RO, &err),
                     -1);
    assert_string_equal(err->message,
                        "Bitmap 'x' is currently in use by another operation "
                        "and cannot be used");
    g_clear_error(&err);
    bdrv_dirty_bitmap_set_busy(bm, false);
    bdrv_dirty_bitmap_set_readonly(bm, true);
    assert_int_equal(bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_ALLOW_RO, NULL),
                     0);
    assert_int_equal(bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_DEFAULT, &err),
                     -1);
    assert_string_equal(err->message,
                        "Bitmap 'x' is readonly and cannot be modified");
    g_clear_error(&err);
    bdrv_dirty_bitmap_set_readonly(bm, false);
    bdrv_dirty_bitmap_set_inconsistent(bm);
    assert_false(bdrv_dirty_bitmap_recording(bm));
    assert_int_equal(bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_BUSY, NULL), 0);
    assert_int_equal(bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_ALLOW_RO, &err),
                     -1);
    assert_string_equal(err->message,
                        "Bitmap 'x' is inconsistent and cannot be used");
    g_clear_error(&err);

    /* merge: sizes must match, the target must be usable */
    BlockDriverState *bs2 =
        test_open_node("driver=null-co,node-name=n2,size=2097152");
    BdrvDirtyBitmap *o = add(bs2, 65536, "o");
    BdrvDirtyBitmap *t = add(bs, 4096, "t");
    assert_false(bdrv_merge_dirty_bitmap(t, o, NULL, &err));
    assert_string_equal(err->message,
                        "Bitmaps are of different sizes (destination size is "
                        "1048576, source size is 2097152) and can't be merged");
    g_clear_error(&err);
    assert_false(bdrv_merge_dirty_bitmap(t, bm, NULL, &err)); /* inconsistent */
    g_clear_error(&err);
    bdrv_unref(bs2);
    bdrv_unref(bs);
}

static void test_merge_granularity(void **state)
{
    BlockDriverState *bs =
        test_open_node("driver=null-co,node-name=n3,size=1048576");
    BdrvDirtyBitmap *fine = add(bs, 512, "fine");
    BdrvDirtyBitmap *coarse = add(bs, 65536, "coarse");
    bdrv_disable_dirty_bitmap(coarse);
    bdrv_set_dirty_bitmap(fine, 1000, 10);
    bdrv_set_dirty_bitmap(fine, 200000, 100000);
    GError *err = NULL;
    HBitmap *backup = NULL;
    assert_true(bdrv_merge_dirty_bitmap(coarse, fine, &backup, &err));
    /* granules 0, and 196608..327679 -> 3 granules */
    assert_int_equal(bdrv_dirty_bitmap_count(coarse), 3 * 65536);
    bdrv_restore_dirty_bitmap(coarse, backup);
    assert_int_equal(bdrv_dirty_bitmap_count(coarse), 0);
    /* coarse into fine: whole granules */
    bdrv_set_dirty_bitmap(coarse, 65536, 1);
    assert_true(bdrv_merge_dirty_bitmap(fine, coarse, NULL, &err));
    assert_true(bdrv_dirty_bitmap_get(fine, 65536 + 65535));
    bdrv_unref(bs);
}

static void test_successor(void **state)
{
    BlockDriverState *bs =
        test_open_node("driver=null-co,node-name=n4,size=1048576");
    BlockBackend *blk = test_rw_resize_blk(bs);
    BdrvDirtyBitmap *bm = add(bs, 65536, "s");
    GError *err = NULL;
    assert_int_equal(do_req(blk, OP_WRITE, 0, 512), 0);
    assert_int_equal(bdrv_dirty_bitmap_create_successor(bm, &err), 0);
    assert_true(bdrv_dirty_bitmap_busy(bm));
    assert_true(bdrv_dirty_bitmap_recording(bm)); /* through the successor */
    assert_int_equal(bdrv_dirty_bitmap_create_successor(bm, &err), -1);
    g_clear_error(&err);
    assert_int_equal(do_req(blk, OP_WRITE, 65536, 512), 0);
    assert_int_equal(bdrv_dirty_bitmap_count(bm), 65536); /* frozen */
    /* reclaim: both writes, usable again */
    assert_ptr_equal(bdrv_reclaim_dirty_bitmap(bm, &err), bm);
    assert_int_equal(bdrv_dirty_bitmap_count(bm), 2 * 65536);
    assert_false(bdrv_dirty_bitmap_busy(bm));
    assert_true(bdrv_dirty_bitmap_enabled(bm));
    assert_int_equal(g_list_length(bs->dirty_bitmaps), 1);

    /* abdicate: only the writes after the freeze remain, under the name */
    assert_int_equal(bdrv_dirty_bitmap_create_successor(bm, &err), 0);
    assert_int_equal(do_req(blk, OP_WRITE, 131072, 512), 0);
    BdrvDirtyBitmap *s = bdrv_dirty_bitmap_abdicate(bm, &err);
    assert_non_null(s);
    assert_ptr_equal(bdrv_find_dirty_bitmap(bs, "s"), s);
    assert_int_equal(bdrv_dirty_bitmap_count(s), 65536);
    assert_false(bdrv_dirty_bitmap_busy(s));
    assert_int_equal(g_list_length(bs->dirty_bitmaps), 1);
    blk_unref(blk);
    bdrv_unref(bs);
}

typedef struct QmpCo {
    BlockDriverState *bs;
} QmpCo;

static void coroutine_fn qmp_co(void *opaque)
{
    GError *err = NULL;
    BlockDirtyBitmapAdd add_arg = { .node = (char *)"n5", .name = (char *)"q" };
    qmp_block_dirty_bitmap_add(&add_arg, &err);
    assert_null(err);
    BdrvDirtyBitmap *q = bdrv_find_dirty_bitmap(((QmpCo *)opaque)->bs, "q");
    assert_non_null(q);
    /* null-co has no cluster size: the default granularity is 64 KiB */
    assert_int_equal(bdrv_dirty_bitmap_granularity(q), 65536);
    bdrv_set_dirty_bitmap(q, 0, 1);

    /* a transaction of clear + disable + add, aborted: all undone */
    BlockDirtyBitmap ref = { .node = (char *)"n5", .name = (char *)"q" };
    BlockDirtyBitmapAdd add2 = { .node = (char *)"n5", .name = (char *)"r" };
    Transaction *tran = tran_new();
    assert_int_equal(bdrv_dirty_bitmap_action_clear(&ref, tran, &err), 0);
    assert_int_equal(bdrv_dirty_bitmap_action_disable(&ref, tran, &err), 0);
    assert_int_equal(bdrv_dirty_bitmap_action_add(&add2, tran, &err), 0);
    assert_int_equal(bdrv_dirty_bitmap_count(q), 0);
    tran_abort(tran);
    assert_int_equal(bdrv_dirty_bitmap_count(q), 65536);
    assert_true(bdrv_dirty_bitmap_enabled(q));
    assert_null(bdrv_find_dirty_bitmap(((QmpCo *)opaque)->bs, "r"));

    /* remove, aborted, leaves it usable; committed, it is gone */
    tran = tran_new();
    assert_int_equal(bdrv_dirty_bitmap_action_remove(&ref, tran, &err), 0);
    assert_true(bdrv_dirty_bitmap_busy(q));
    tran_abort(tran);
    assert_false(bdrv_dirty_bitmap_busy(q));

    /* merge with an empty list is an error (qsd 7.2 crashes) */
    BlockDirtyBitmapMerge m = { .node = (char *)"n5", .target = (char *)"q" };
    qmp_block_dirty_bitmap_merge(&m, &err);
    assert_non_null(err);
    g_clear_error(&err);

    qmp_block_dirty_bitmap_remove(&ref, &err);
    assert_null(err);
    assert_null(bdrv_find_dirty_bitmap(((QmpCo *)opaque)->bs, "q"));
    qmp_block_dirty_bitmap_remove(&ref, &err);
    assert_string_equal(err->message, "Dirty bitmap 'q' not found");
    g_clear_error(&err);
}

static void test_qmp_actions(void **state)
{
    QmpCo qc = {test_open_node("driver=null-co,node-name=n5,size=1048576")};
    coroutine_run_sync(qmp_co, &qc);
    bdrv_unref(qc.bs);
}

/* The figures: add, merge and count on a 16 TiB node. */
static void test_16tib(void **state)
{
    BlockDriverState *bs =
        test_open_node("driver=null-co,node-name=big,size=17592186044416");
    gint64 t0 = g_get_monotonic_time();
    BdrvDirtyBitmap *a = add(bs, 65536, "a");
    gint64 t1 = g_get_monotonic_time();
    BdrvDirtyBitmap *b = add(bs, 65536, "b");
    bdrv_set_dirty_bitmap(b, 5LL << 40, 1 << 20);
    GError *err = NULL;
    gint64 t2 = g_get_monotonic_time();
    assert_true(bdrv_merge_dirty_bitmap(a, b, NULL, &err));
    gint64 t3 = g_get_monotonic_time();
    int64_t c = bdrv_dirty_bitmap_count(a);
    gint64 t4 = g_get_monotonic_time();
    assert_int_equal(c, 1 << 20);
    bdrv_set_dirty_bitmap(b, 0, 16LL << 40); /* everything */
    gint64 t5 = g_get_monotonic_time();
    assert_true(bdrv_merge_dirty_bitmap(a, b, NULL, &err));
    gint64 t6 = g_get_monotonic_time();
    assert_int_equal(bdrv_dirty_bitmap_count(a), 16LL << 40);
    printf("16 TiB @ 64 KiB: add %" G_GINT64_FORMAT " us, merge (1 MiB dirty) "
           "%" G_GINT64_FORMAT " us, count %" G_GINT64_FORMAT
           " us, merge (all dirty) %" G_GINT64_FORMAT " us\n",
           t1 - t0, t3 - t2, t4 - t3, t6 - t5);
    assert_true(t1 - t0 < 100000 && t3 - t2 < 100000);
    bdrv_unref(bs);
}

/* The write path's cost: marking 8 enabled bitmaps per 4k write. */
static void test_mark_cost(void **state)
{
    BlockDriverState *bs =
        test_open_node("driver=null-co,node-name=mk,size=1099511627776");
    for (int i = 0; i < 8; i++) {
        g_autofree char *n = g_strdup_printf("m%d", i);
        add(bs, 65536, n);
    }
    GRand *r = g_rand_new_with_seed(42);
    const int N = 1000000;
    int64_t *offs = g_new(int64_t, N);
    for (int i = 0; i < N; i++) {
        offs[i] = (int64_t)g_rand_int_range(r, 0, 1 << 28) * 4096;
    }
    gint64 t0 = g_get_monotonic_time();
    for (int i = 0; i < N; i++) {
        bdrv_dirty_bitmaps_mark(bs, offs[i], 4096);
    }
    gint64 t1 = g_get_monotonic_time();
    /* second pass: every chunk already allocated (steady state) */
    for (int i = 0; i < N; i++) {
        bdrv_dirty_bitmaps_mark(bs, offs[i], 4096);
    }
    gint64 t2 = g_get_monotonic_time();
    printf("8 bitmaps, 4k random marks on 1 TiB: %.0f ns/write (first "
           "touch), %.0f ns/write (steady)\n",
           (t1 - t0) * 1000.0 / N, (t2 - t1) * 1000.0 / N);
    g_free(offs);
    g_rand_free(r);
    bdrv_unref(bs);
}

int main(void)
{
    test_aio_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_marking),
        cmocka_unit_test(test_checks),
        cmocka_unit_test(test_merge_granularity),
        cmocka_unit_test(test_successor),
        cmocka_unit_test(test_qmp_actions),
        cmocka_unit_test(test_16tib),
        cmocka_unit_test(test_mark_cost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
