/*
 * The write threshold (block/write-threshold.c): its arithmetic, and
 * which requests of the request path count: data writes, write-zeroes,
 * discards a node carries out, the padded extent of a request the node
 * aligns, each node a request passes on its own; not discards the node
 * ignores, not reads, not the write-back of a copy-on-read into the node
 * below the filter.  The event fires once and disarms; 0 disarms.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "block/block_int.h"
#include "block/write-threshold.h"
#include "qapi/qapi-commands.h"
#include "tests/unit/test-helpers.h"
#include "tests/unit/test-memfmt.h"
#include "util/aio.h"

/* ---- events: recorded as "node amount threshold" lines ---- */

static GPtrArray *events;

void qapi_event_emit(const char *name, JsonObject *data)
{
    if (strcmp(name, "BLOCK_WRITE_THRESHOLD") != 0) {
        return;
    }
    g_ptr_array_add(
        events,
        g_strdup_printf(
            "%s %" PRId64 " %" PRId64,
            json_object_get_string_member(data, "node-name"),
            json_object_get_int_member(data, "amount-exceeded"),
            json_object_get_int_member(data, "write-threshold")));
}

/* The events since the last call, joined by "; " ("" for none). */
static char *take_events(void)
{
    g_ptr_array_add(events, NULL);
    char *s = g_strjoinv("; ", (char **)events->pdata);
    g_ptr_array_set_size(events, 0);
    return s;
}

#define assert_events(want)                                                    \
    do {                                                                       \
        g_autofree char *got_ = take_events();                                 \
        assert_string_equal(got_, (want));                                     \
    } while (0)

static int setup(void **state)
{
    g_ptr_array_set_size(events, 0);
    test_gate_reset();
    return 0;
}

static int teardown(void **state)
{
    bdrv_close_all();
    return 0;
}

static int req(BlockBackend *blk, TestOp op, int64_t offset, int64_t bytes)
{
    g_autofree uint8_t *buf = g_malloc0(bytes ? bytes : 1);
    TestReq r = {.blk = blk, .op = op, .offset = offset, .bytes = bytes,
                 .buf = buf};
    int ret = test_req_run(&r);
    if (r.err) {
        g_error_free(r.err);
    }
    return ret;
}

static void arm(const char *node, uint64_t value, const char *want_err)
{
    q_obj_block_set_write_threshold_arg arg = {
        .node_name = (char *)node, .write_threshold = value};
    GError *err = NULL;
    qmp_block_set_write_threshold(&arg, &err);
    if (want_err) {
        assert_non_null(err);
        assert_string_equal(err->message, want_err);
        g_error_free(err);
    } else {
        assert_null(err);
    }
}

/* ---- tests ---- */

static void test_arithmetic(void **state)
{
    uint64_t amount = 12345;
    /* 0 is "not armed", whatever the request */
    assert_false(bdrv_write_threshold_exceeded(0, 0, 1, &amount));
    assert_false(bdrv_write_threshold_exceeded(0, INT64_MAX - 1, 1, &amount));
    /* ending at the threshold is not past it */
    assert_false(bdrv_write_threshold_exceeded(4096, 0, 4096, &amount));
    assert_false(bdrv_write_threshold_exceeded(4096, 4095, 1, &amount));
    assert_false(bdrv_write_threshold_exceeded(4096, 100, 0, &amount));
    assert_int_equal(amount, 12345); /* untouched when not exceeded */
    assert_true(bdrv_write_threshold_exceeded(4096, 4095, 2, &amount));
    assert_int_equal(amount, 1);
    /* a request starting past the threshold: measured from the end */
    assert_true(bdrv_write_threshold_exceeded(4096, 1 << 20, 512, &amount));
    assert_int_equal(amount, (1 << 20) + 512 - 4096);
    /* an empty request past the threshold still ends past it */
    assert_true(bdrv_write_threshold_exceeded(1, 2, 0, &amount));
    assert_int_equal(amount, 1);
    /* beyond INT64_MAX nothing ends past it */
    assert_false(bdrv_write_threshold_exceeded(UINT64_MAX, 0, INT64_MAX,
                                               &amount));
    assert_false(bdrv_write_threshold_exceeded((uint64_t)INT64_MAX, 0,
                                               INT64_MAX, &amount));
    assert_true(bdrv_write_threshold_exceeded((uint64_t)INT64_MAX - 1, 0,
                                              INT64_MAX, &amount));
    assert_int_equal(amount, 1);
    /* requests the request path would have refused */
    assert_false(bdrv_write_threshold_exceeded(1, -1, 10, &amount));
    assert_false(bdrv_write_threshold_exceeded(1, 0, -1, &amount));
    assert_false(bdrv_write_threshold_exceeded(1, INT64_MAX, 1, &amount));
}

static void test_command(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=null-co,node-name=n0,size=1048576");
    arm("nosuch", 1, "Device 'nosuch' not found");
    arm("", 1, "Device '' not found");
    assert_int_equal(bdrv_write_threshold_get(bs), 0);
    arm("n0", 65536, NULL);
    assert_int_equal(bdrv_write_threshold_get(bs), 65536);
    assert_int_equal(bs->write_threshold_offset, 65536);
    arm("n0", UINT64_MAX, NULL);
    assert_true(bdrv_write_threshold_get(bs) == UINT64_MAX);
    arm("n0", 0, NULL);
    assert_int_equal(bdrv_write_threshold_get(bs), 0);
    assert_events("");
}

/* Data writes, write-zeroes: once, then disarmed; 0 disarms; reads and
 * requests ending at the threshold do not count. */
static void test_writes(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=null-co,node-name=n0,size=1048576");
    BlockBackend *blk = test_rw_blk(bs);

    arm("n0", 65536, NULL);
    assert_int_equal(req(blk, TEST_OP_WRITE, 0, 65536), 0);
    assert_int_equal(req(blk, TEST_OP_ZERO, 32768, 32768), 0);
    assert_int_equal(req(blk, TEST_OP_READ, 0, 131072), 0);
    assert_int_equal(req(blk, TEST_OP_FLUSH, 0, 0), 0);
    assert_events("");
    assert_int_equal(bdrv_write_threshold_get(bs), 65536);

    assert_int_equal(req(blk, TEST_OP_WRITE, 65000, 1000), 0);
    assert_events("n0 464 65536");
    assert_int_equal(bdrv_write_threshold_get(bs), 0);
    assert_int_equal(req(blk, TEST_OP_WRITE, 500000, 1000), 0);
    assert_events("");

    arm("n0", 100, NULL);
    assert_int_equal(req(blk, TEST_OP_ZERO, 4096, 4096), 0);
    assert_events("n0 8092 100");
    assert_int_equal(bdrv_write_threshold_get(bs), 0);

    arm("n0", 100, NULL);
    arm("n0", 0, NULL);
    assert_int_equal(req(blk, TEST_OP_WRITE, 0, 4096), 0);
    assert_events("");

    /* a discard the node ignores (discard=ignore, the default) is no
     * request */
    arm("n0", 100, NULL);
    assert_int_equal(req(blk, TEST_OP_DISCARD, 0, 4096), 0);
    assert_events("");
    assert_int_equal(bdrv_write_threshold_get(bs), 100);
    blk_unref(blk);
}

/* A request passes through raw onto its file: both nodes count it,
 * the upper one first; each has its own threshold. */
static void test_each_node(void **state)
{
    BlockDriverState *f =
        test_open_owned("driver=null-co,node-name=f0,size=1048576");
    BlockDriverState *r =
        test_open_owned("driver=raw,node-name=r0,file=f0,offset=65536");
    BlockBackend *blk = test_rw_blk(r);

    arm("r0", 4096, NULL);
    arm("f0", 65536 + 8192, NULL);
    assert_int_equal(req(blk, TEST_OP_WRITE, 0, 8192), 0);
    assert_events("r0 4096 4096");
    assert_int_equal(req(blk, TEST_OP_WRITE, 0, 8193), 0);
    assert_events("f0 1 73728");
    assert_int_equal(bdrv_write_threshold_get(r), 0);
    assert_int_equal(bdrv_write_threshold_get(f), 0);

    arm("r0", 1, NULL);
    arm("f0", 1, NULL);
    assert_int_equal(req(blk, TEST_OP_ZERO, 0, 512), 0);
    assert_events("r0 511 1; f0 66047 1");
    blk_unref(blk);
}

/* A node that aligns requests (O_DIRECT-like 4 KiB here, through
 * blkdebug's align) sees the padded extent of an unaligned write. */
static void test_padded(void **state)
{
    test_open_owned("driver=null-co,node-name=f0,size=1048576");
    BlockDriverState *bs = test_open_owned(
        "driver=blkdebug,node-name=d0,image=f0,align=4096");
    BlockBackend *blk = test_rw_blk(bs);

    arm("d0", 4097, NULL);
    assert_int_equal(req(blk, TEST_OP_WRITE, 10, 100), 0);
    assert_events("");
    arm("d0", 4096, NULL);
    assert_int_equal(req(blk, TEST_OP_WRITE, 4096, 1), 0);
    assert_events("d0 4096 4096");
    blk_unref(blk);
}

/* Discards count on a node with discard=unmap, as requested (before the
 * node trims them to its alignment); not with discard=ignore. */
static void test_discard(void **state)
{
    GError *err = NULL;
    g_autofree char *dir = test_tmpdir_new("test-write-threshold", &err);
    assert_non_null(dir);
    g_autofree char *img = g_strdup_printf("%s/img", dir);
    FILE *fp = fopen(img, "w");
    assert_non_null(fp);
    assert_int_equal(ftruncate(fileno(fp), 1 << 20), 0);
    fclose(fp);

    g_autofree char *opts = g_strdup_printf(
        "driver=raw,node-name=r0,discard=unmap,file.driver=file,"
        "file.node-name=f0,file.discard=ignore,file.filename=%s",
        img);
    BlockDriverState *r = test_open_owned(opts);
    BlockBackend *blk = test_rw_blk(r);

    arm("r0", 65536, NULL);
    arm("f0", 65536, NULL);
    assert_int_equal(req(blk, TEST_OP_DISCARD, 0, 65536), 0);
    assert_events("");
    assert_int_equal(req(blk, TEST_OP_DISCARD, 65535, 2), 0);
    assert_events("r0 1 65536");
    assert_int_equal(bdrv_write_threshold_get(r), 0);
    blk_unref(blk);
    bdrv_close_all();
    test_tmpdir_remove(dir);
}

/* A copy-on-read filter's write-back into the node below it does not
 * count there (QEMU writes it straight to that node's driver); a guest
 * write through the filter does. */
static void test_copy_on_read(void **state)
{
    BlockDriverState *base = test_memfmt_open("base", NULL);
    BlockDriverState *top = test_memfmt_open("top", "base");
    test_memfmt_fill(base, 0, 2, 0x5a);
    BlockBackend *blk = test_rw_blk(
        test_open_owned("driver=copy-on-read,node-name=cor,file=top"));

    arm("top", 1, NULL);
    assert_int_equal(req(blk, TEST_OP_READ, 0, 2 * TEST_MEM_CS), 0);
    assert_true(test_memfmt(top)->alloc[0]);
    assert_true(test_memfmt(top)->alloc[1]);
    assert_events("");
    assert_int_equal(bdrv_write_threshold_get(top), 1);

    arm("cor", 1, NULL);
    assert_int_equal(req(blk, TEST_OP_WRITE, 0, 512), 0);
    assert_events("cor 511 1; top 511 1");
    (void)base;
    blk_unref(blk);
}

int main(void)
{
    events = g_ptr_array_new_with_free_func(g_free);
    test_aio_init();
    bdrv_register_test_driver(&test_memfmt_driver);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arithmetic),
        cmocka_unit_test_setup_teardown(test_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_each_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_padded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_discard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_on_read, setup, teardown),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_unregister_test_driver(&test_memfmt_driver);
    g_ptr_array_free(events, TRUE);
    return ret;
}
