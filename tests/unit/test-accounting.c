/*
 * Node-level accounting (block/accounting.c): wr_highest_offset as the
 * request path keeps it (aligned, failed writes too, zeroes yes, discards
 * and zero-length requests no), the file driver's discard counters, which
 * child shows as `parent`, and the BlockStats tree query-blockstats
 * builds from them.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <glib.h>

#include "block/accounting.h"
#include "block/block_int.h"
#include "test-helpers.h"

/* ---- pure counters ---- */

static void test_discard_counters(void **state)
{
    (void)state;
    BdrvDiscardStats st = {0};
    bdrv_acct_discard_done(&st, 4096, 0);
    bdrv_acct_discard_done(&st, 65536, 0);
    bdrv_acct_discard_done(&st, 512, -EIO);
    /* the host could not: the request succeeds, the count says failed */
    bdrv_acct_discard_done(&st, 512, -ENOTSUP);
    assert_int_equal(st.nb_ok, 2);
    assert_int_equal(st.nb_failed, 2);
    assert_int_equal(st.bytes_ok, 4096 + 65536);

    BlockStatsSpecific *s = bdrv_acct_file_specific_stats(&st);
    assert_int_equal(s->driver, BLOCKDEV_DRIVER_FILE);
    assert_int_equal(s->u.file.discard_nb_ok, 2);
    assert_int_equal(s->u.file.discard_nb_failed, 2);
    assert_int_equal(s->u.file.discard_bytes_ok, 4096 + 65536);
    g_autofree char *json = NULL;
    JsonNode *n = qapi_BlockStatsSpecific_to_json(s);
    json = json_to_string(n, FALSE);
    json_node_unref(n);
    assert_non_null(strstr(json, "\"discard-nb-failed\":2"));
    assert_non_null(strstr(json, "\"driver\":\"file\""));
    qapi_free_BlockStatsSpecific(s);
}

static void test_highest_offset_max(void **state)
{
    (void)state;
    BlockDriverState bs;
    memset(&bs, 0, sizeof(bs));
    bdrv_acct_write_done(&bs, 4096, 4096);
    assert_int_equal(bs.wr_highest_offset, 8192);
    bdrv_acct_write_done(&bs, 0, 512); /* lower: unchanged */
    assert_int_equal(bs.wr_highest_offset, 8192);
    bdrv_acct_write_done(&bs, 1 << 20, 0); /* empty: not a write */
    assert_int_equal(bs.wr_highest_offset, 8192);
    bdrv_acct_write_done(&bs, INT64_MAX - 512, 512);
    assert_true(bs.wr_highest_offset == (uint64_t)INT64_MAX);
}

/* ---- through the request path ---- */

static int req(BlockBackend *blk, TestOp op, int64_t offset, int64_t bytes)
{
    g_autofree void *buf = g_malloc0(bytes ? bytes : 1);
    TestReq r = {.blk = blk, .op = op, .offset = offset, .bytes = bytes,
                 .buf = buf};
    return test_req_run(&r);
}

/* blkdebug with align 4096 over null-co; writes touching sector 16
 * (8 KiB) fail in blkdebug, before they reach null-co. */
static void test_request_path(void **state)
{
    (void)state;
    BlockDriverState *bs = test_open_node(
        "driver=blkdebug,node-name=dbg,align=4096,"
        "image.driver=null-co,image.node-name=nul,image.size=1048576,"
        "inject-error.0.event=none,inject-error.0.iotype=write,"
        "inject-error.0.sector=16,inject-error.0.errno=5");
    BlockDriverState *nul = bdrv_find_node("nul");
    assert_non_null(nul);
    BlockBackend *blk = test_rw_blk(bs);

    assert_int_equal(req(blk, TEST_OP_WRITE, 100, 512), 0);
    /* padded to the alignment at both levels */
    assert_int_equal(bs->wr_highest_offset, 4096);
    assert_int_equal(nul->wr_highest_offset, 4096);

    assert_int_equal(req(blk, TEST_OP_WRITE, 8192, 4096), -EIO);
    /* counted where it failed, not below */
    assert_int_equal(bs->wr_highest_offset, 12288);
    assert_int_equal(nul->wr_highest_offset, 4096);

    assert_int_equal(req(blk, TEST_OP_DISCARD, 0, 65536), 0);
    assert_int_equal(req(blk, TEST_OP_FLUSH, 0, 0), 0);
    assert_int_equal(req(blk, TEST_OP_READ, 0, 1 << 20), 0);
    assert_int_equal(req(blk, TEST_OP_WRITE, 65536, 0), 0);
    assert_int_equal(bs->wr_highest_offset, 12288);
    assert_int_equal(nul->wr_highest_offset, 4096);

    assert_int_equal(req(blk, TEST_OP_ZERO, 512 * 1024, 65536), 0);
    assert_int_equal(bs->wr_highest_offset, 576 * 1024);
    assert_int_equal(nul->wr_highest_offset, 576 * 1024);

    /* the tree: parent is the filtered child, null-co has no driver
     * statistics, every other counter is a BlockBackend's and is 0 */
    BlockStats *s = bdrv_acct_query_node(bs);
    assert_true(s->has_node_name);
    assert_string_equal(s->node_name, "dbg");
    assert_int_equal(s->stats->wr_highest_offset, 576 * 1024);
    assert_int_equal(s->stats->wr_bytes, 0);
    assert_int_equal(s->stats->wr_operations, 0);
    assert_int_equal(s->stats->failed_wr_operations, 0);
    assert_false(s->stats->has_idle_time_ns);
    assert_null(s->stats->timed_stats);
    assert_false(s->has_driver_specific);
    assert_false(s->has_backing);
    assert_false(s->has_device);
    assert_true(s->has_parent);
    assert_string_equal(s->parent->node_name, "nul");
    assert_false(s->parent->has_parent);
    qapi_free_BlockStats(s);

    blk_unref(blk);
    bdrv_unref(bs);
}

/* A file node's discards show in its driver-specific statistics; a node
 * with discard=ignore above it passes none down. */
static void test_file_discards(void **state)
{
    (void)state;
    GError *err = NULL;
    g_autofree char *dir = test_tmpdir_new("test-accounting", &err);
    assert_non_null(dir);
    g_autofree char *path = g_build_filename(dir, "img", NULL);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(ftruncate(fileno(fp), 1 << 20), 0);
    fclose(fp);
    g_autofree char *opts = g_strdup_printf(
        "driver=raw,node-name=top,discard=unmap,"
        "file.driver=file,file.node-name=f,file.discard=unmap,"
        "file.filename=%s",
        path);
    BlockDriverState *bs = test_open_node(opts);
    BlockDriverState *f = bs->file->bs;
    BlockBackend *blk = test_rw_blk(bs);

    assert_int_equal(req(blk, TEST_OP_WRITE, 0, 131072), 0);
    assert_int_equal(req(blk, TEST_OP_DISCARD, 0, 65536), 0);
    assert_int_equal(req(blk, TEST_OP_DISCARD, 65536, 4096), 0);
    BlockStats *s = bdrv_acct_query_node(bs);
    assert_false(s->has_driver_specific);
    assert_true(s->has_parent);
    BlockStats *p = s->parent;
    assert_string_equal(p->node_name, "f");
    assert_true(p->has_driver_specific);
    assert_int_equal(p->driver_specific->driver, BLOCKDEV_DRIVER_FILE);
    assert_int_equal(p->driver_specific->u.file.discard_nb_ok, 2);
    assert_int_equal(p->driver_specific->u.file.discard_nb_failed, 0);
    assert_int_equal(p->driver_specific->u.file.discard_bytes_ok, 69632);
    assert_int_equal(p->stats->wr_highest_offset, 131072);
    assert_int_equal(f->wr_highest_offset, 131072);
    qapi_free_BlockStats(s);
    blk_unref(blk);
    bdrv_unref(bs);

    /* discard=ignore (the default) on raw: nothing reaches the file */
    g_free(opts);
    opts = g_strdup_printf("driver=raw,node-name=top2,"
                           "file.driver=file,file.node-name=f2,"
                           "file.discard=unmap,file.filename=%s",
                           path);
    bs = test_open_node(opts);
    blk = test_rw_blk(bs);
    assert_int_equal(req(blk, TEST_OP_DISCARD, 0, 65536), 0);
    s = bdrv_acct_query_node(bs);
    assert_int_equal(s->parent->driver_specific->u.file.discard_nb_ok, 0);
    assert_int_equal(s->parent->driver_specific->u.file.discard_nb_failed, 0);
    qapi_free_BlockStats(s);
    blk_unref(blk);
    bdrv_unref(bs);
    test_tmpdir_remove(dir);
}

/* ---- which child is `parent` ---- */

static const BlockDriver role_drv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "test-roles",
    .driver = BLOCKDEV_DRIVER_RAW,
};

static BlockDriverState *leaf(const char *name)
{
    g_autofree char *opts =
        g_strdup_printf("driver=null-co,node-name=%s,size=65536", name);
    return test_open_node(opts);
}

static BdrvChild *attach(BlockDriverState *bs, const char *leaf_name,
                         const char *child_name, BdrvChildRole role)
{
    GError *err = NULL;
    BlockDriverState *c = leaf(leaf_name);
    BdrvChild *e = bdrv_attach_child(bs, c, child_name, role, &err);
    assert_null(err);
    assert_non_null(e);
    bdrv_unref(c); /* the edge holds it */
    return e;
}

static void test_parent_choice(void **state)
{
    (void)state;
    GError *err = NULL;

    /* no children: no parent */
    BlockDriverState *bs = bdrv_new_open_driver(&role_drv, "p0", 0, &err);
    assert_non_null(bs);
    assert_null(bdrv_acct_stats_parent(bs));
    bdrv_unref(bs);

    /* a primary child holding data wins over others */
    bs = bdrv_new_open_driver(&role_drv, "p1", 0, &err);
    attach(bs, "other1", "target", BDRV_CHILD_DATA);
    BdrvChild *prim =
        attach(bs, "prim1", "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY);
    assert_ptr_equal(bdrv_acct_stats_parent(bs), prim);
    bdrv_unref(bs);

    /* a filtered primary child counts as holding the data */
    bs = bdrv_new_open_driver(&role_drv, "p2", 0, &err);
    prim = attach(bs, "prim2", "file",
                  BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY);
    assert_ptr_equal(bdrv_acct_stats_parent(bs), prim);
    bdrv_unref(bs);

    /* a metadata-only primary (an external data file): the one data
     * child; a COW child never */
    bs = bdrv_new_open_driver(&role_drv, "p3", 0, &err);
    attach(bs, "meta3", "file", BDRV_CHILD_METADATA | BDRV_CHILD_PRIMARY);
    attach(bs, "cow3", "backing", BDRV_CHILD_COW);
    assert_null(bdrv_acct_stats_parent(bs));
    BdrvChild *data = attach(bs, "data3", "data-file", BDRV_CHILD_DATA);
    assert_ptr_equal(bdrv_acct_stats_parent(bs), data);
    /* two data children: no choice */
    attach(bs, "data3b", "data-file2", BDRV_CHILD_DATA);
    assert_null(bdrv_acct_stats_parent(bs));
    bdrv_unref(bs);
}

int main(void)
{
    test_aio_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_discard_counters),
        cmocka_unit_test(test_highest_offset_max),
        cmocka_unit_test(test_request_path),
        cmocka_unit_test(test_file_discards),
        cmocka_unit_test(test_parent_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
