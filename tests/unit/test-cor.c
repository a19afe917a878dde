/*
 * Unit tests for the copy-on-read filter (block/drivers/copy-on-read.c):
 * what a read copies into the top (whole clusters, zero buffers as
 * write-zeroes, with bottom only the layers down to bottom), PREFETCH,
 * and the ordering of copies with writes through the filter: a write that
 * arrives while a copy is between its read and its write waits (or the
 * copy would write old data over it), and a copy that arrives while a
 * write is in flight waits and then finds the cluster allocated.
 *
 * An in-memory test format in the qcow2 slot stands in for the images:
 * 64 KiB clusters with an allocation flag each, a backing child, and
 * gates that hold reads of the backing file or writes in the driver
 * until the test opens them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <glib.h>

#include "block/block_int.h"
#include "tests/unit/test-helpers.h"
#include "util/aio.h"

#define CS (64 * 1024)
#define NCL 16
#define SZ ((int64_t)CS * NCL)

/* ---- the test format ---- */

typedef struct MemFmt {
    uint8_t mem[SZ];
    bool alloc[NCL];
    int data_writes, zero_writes;
    bool gate_backing_reads; /* hold reads that go to the backing file */
    bool gate_writes;        /* hold writes before they land */
} MemFmt;

/* One gate for all nodes: requests wait here while it is closed. */
static CoQueue gate;
static bool gate_closed;
static int gate_waiting;

static void coroutine_fn gate_pass(void)
{
    while (gate_closed) {
        gate_waiting++;
        co_queue_wait(&gate, NULL);
        gate_waiting--;
    }
}

static void gate_open(void)
{
    gate_closed = false;
    co_queue_restart_all(&gate);
}

static int coroutine_fn fmt_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    const BlockdevOptionsQcow2 *o = &opts->u.qcow2;
    if (!bdrv_open_child(bs, o->file, "file",
                         BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false, errp)) {
        return -EINVAL;
    }
    if (o->has_backing && o->backing->type == QTYPE_QSTRING) {
        BlockDriverState *b =
            bdrv_lookup_bs(NULL, o->backing->u.reference, errp);
        if (!b ||
            !bdrv_attach_child(bs, b, "backing", BDRV_CHILD_COW, errp)) {
            return -EINVAL;
        }
    }
    bs->total_bytes = SZ;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;
    return 0;
}

/* The run of clusters from offset with the same allocation, cut to
 * bytes. */
static int64_t run_len(MemFmt *s, int64_t offset, int64_t bytes, bool *a)
{
    *a = s->alloc[offset / CS];
    int64_t end = offset;
    while (end < offset + bytes && s->alloc[end / CS] == *a) {
        end = (end / CS + 1) * CS;
    }
    return MIN(end, offset + bytes) - offset;
}

static int coroutine_fn fmt_preadv(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    MemFmt *s = bs->opaque;
    size_t qoff = 0;
    while (bytes > 0) {
        bool a;
        int64_t n = run_len(s, offset, bytes, &a);
        if (a) {
            qiov_from_buf(qiov, qoff, s->mem + offset, (size_t)n);
        } else if (bs->backing) {
            if (s->gate_backing_reads) {
                gate_pass();
            }
            IOVector part;
            qiov_init(&part, qiov->niov);
            qiov_concat(&part, qiov, qoff, (size_t)n);
            int ret = bdrv_co_preadv(bs->backing, offset, n, &part, 0);
            qiov_destroy(&part);
            if (ret < 0) {
                return ret;
            }
        } else {
            qiov_memset(qiov, qoff, 0, (size_t)n);
        }
        offset += n;
        qoff += (size_t)n;
        bytes -= n;
    }
    return 0;
}

static void mark_alloc(MemFmt *s, int64_t offset, int64_t bytes)
{
    for (int64_t c = offset / CS; c * CS < offset + bytes; c++) {
        s->alloc[c] = true;
    }
}

static int coroutine_fn fmt_pwritev(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, IOVector *qiov,
                                    BdrvRequestFlags flags)
{
    MemFmt *s = bs->opaque;
    /* copied before the gate: a copy in flight has its data already */
    uint8_t *tmp = g_malloc((size_t)bytes);
    qiov_to_buf(qiov, 0, tmp, (size_t)bytes);
    if (s->gate_writes) {
        gate_pass();
    }
    memcpy(s->mem + offset, tmp, (size_t)bytes);
    g_free(tmp);
    mark_alloc(s, offset, bytes);
    s->data_writes++;
    return 0;
}

static int coroutine_fn fmt_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                          int64_t bytes,
                                          BdrvRequestFlags flags)
{
    MemFmt *s = bs->opaque;
    if (s->gate_writes) {
        gate_pass();
    }
    memset(s->mem + offset, 0, (size_t)bytes);
    mark_alloc(s, offset, bytes);
    s->zero_writes++;
    return 0;
}

static int coroutine_fn fmt_block_status(BlockDriverState *bs, bool want_zero,
                                         int64_t offset, int64_t bytes,
                                         int64_t *pnum, int64_t *map,
                                         BlockDriverState **file)
{
    bool a;
    *pnum = run_len(bs->opaque, offset, bytes, &a);
    return a ? BDRV_BLOCK_DATA : 0;
}

static int coroutine_fn fmt_get_info(BlockDriverState *bs, ImageInfo *info,
                                     GError **errp)
{
    info->has_cluster_size = true;
    info->cluster_size = CS;
    return 0;
}

static const BlockDriver memfmt = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "qcow2",
    .driver = BLOCKDEV_DRIVER_QCOW2,
    .instance_size = sizeof(MemFmt),
    .is_format = true,
    .supports_backing = true,
    .bdrv_open = fmt_open,
    .bdrv_co_preadv = fmt_preadv,
    .bdrv_co_pwritev = fmt_pwritev,
    .bdrv_co_pwrite_zeroes = fmt_pwrite_zeroes,
    .bdrv_co_block_status = fmt_block_status,
    .bdrv_co_get_info = fmt_get_info,
};

/* ---- helpers ---- */

#define FILE_OPTS "file.driver=null-co,file.size=1048576"

static BlockDriverState *open_fmt(const char *name, const char *backing)
{
    g_autofree char *opts =
        backing ? g_strdup_printf("driver=qcow2,node-name=%s,backing=%s,"
                                  FILE_OPTS, name, backing)
                : g_strdup_printf("driver=qcow2,node-name=%s," FILE_OPTS,
                                  name);
    return test_open_owned(opts);
}

static MemFmt *st(BlockDriverState *bs)
{
    return bs->opaque;
}

/* Clusters [first, first+n) of bs hold byte v. */
static void fill(BlockDriverState *bs, int first, int n, uint8_t v)
{
    memset(st(bs)->mem + (int64_t)first * CS, v, (size_t)n * CS);
    for (int c = first; c < first + n; c++) {
        st(bs)->alloc[c] = true;
    }
}

static void assert_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != v) {
            fail_msg("byte %zu is 0x%02x, not 0x%02x", i, p[i], v);
        }
    }
}

static void poll_until(const bool *done)
{
    for (int i = 0; i < 100000 && !*done; i++) {
        aio_poll(true);
    }
    assert_true(*done);
}

static int setup(void **state)
{
    co_queue_init(&gate);
    gate_closed = false;
    gate_waiting = 0;
    return 0;
}

static int teardown(void **state)
{
    bdrv_close_all();
    return 0;
}

/* ---- tests ---- */

/* Without bottom: every cluster the top lacks is copied, whole; a
 * cluster of zeroes goes in as write-zeroes. */
static void test_copies_whole_clusters(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *top = open_fmt("top", "base");
    BlockDriverState *cor =
        test_open_owned("driver=copy-on-read,node-name=cor,file=top");
    fill(base, 0, 4, 0xaa);
    fill(base, 8, 1, 0x00);
    BlockBackend *blk = test_rw_blk(cor);

    uint8_t *buf = g_malloc(4 * CS);
    TestReq r = {blk, TEST_OP_READ, 0, 4 * CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 4 * CS, 0xaa);
    for (int c = 0; c < 4; c++) {
        assert_true(st(top)->alloc[c]);
    }
    assert_bytes(st(top)->mem, 4 * CS, 0xaa);
    assert_int_equal(st(top)->zero_writes, 0);

    /* a few bytes in the middle of cluster 5 copy all of it (zeroes:
     * nothing below has it, and without bottom that is copied too) */
    r = (TestReq){blk, TEST_OP_READ, 5 * CS + 100, 200, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 200, 0);
    assert_true(st(top)->alloc[5]);
    assert_false(st(top)->alloc[4]);
    assert_false(st(top)->alloc[6]);
    assert_int_equal(st(top)->zero_writes, 1);

    /* base's cluster of zero bytes: a write-zeroes, not data */
    int data_before = st(top)->data_writes;
    r = (TestReq){blk, TEST_OP_READ, 8 * CS, CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_true(st(top)->alloc[8]);
    assert_int_equal(st(top)->zero_writes, 2);
    assert_int_equal(st(top)->data_writes, data_before);

    /* allocated in top now: read, not copied again */
    int writes = st(top)->data_writes + st(top)->zero_writes;
    r = (TestReq){blk, TEST_OP_READ, 0, 4 * CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_int_equal(st(top)->data_writes + st(top)->zero_writes, writes);
    g_free(buf);
    blk_unref(blk);
}

/* With bottom=mid: mid's data is copied, base's is not. */
static void test_bottom(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *mid = open_fmt("mid", "base");
    BlockDriverState *top = open_fmt("top", "mid");
    BlockDriverState *cor = test_open_owned(
        "driver=copy-on-read,node-name=cor,file=top,bottom=mid");
    fill(base, 0, 4, 0xaa);
    fill(mid, 2, 4, 0xbb);
    BlockBackend *blk = test_rw_blk(cor);

    uint8_t *buf = g_malloc(8 * CS);
    TestReq r = {blk, TEST_OP_READ, 0, 8 * CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 2 * CS, 0xaa);
    assert_bytes(buf + 2 * CS, 4 * CS, 0xbb);
    assert_bytes(buf + 6 * CS, 2 * CS, 0);
    bool want[8] = {false, false, true, true, true, true, false, false};
    for (int c = 0; c < 8; c++) {
        assert_int_equal(st(top)->alloc[c], want[c]);
    }
    assert_false(st(mid)->alloc[0]); /* nothing else changed below */
    g_free(buf);
    blk_unref(blk);
}

/* PREFETCH copies without filling the caller's buffer. */
static void test_prefetch(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *top = open_fmt("top", "base");
    BlockDriverState *cor =
        test_open_owned("driver=copy-on-read,node-name=cor,file=top");
    fill(base, 0, 2, 0xaa);
    BlockBackend *blk = test_rw_blk(cor);
    uint8_t *buf = g_malloc(2 * CS);
    memset(buf, 0x55, 2 * CS);
    TestReq r = {blk, TEST_OP_READ, 0, 2 * CS, buf, BDRV_REQ_PREFETCH, 0,
                 false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 2 * CS, 0x55);
    assert_true(st(top)->alloc[0] && st(top)->alloc[1]);
    assert_bytes(st(top)->mem, 2 * CS, 0xaa);
    g_free(buf);
    blk_unref(blk);
}

/* A write that comes while a copy of its cluster has read the old data
 * but not written it yet waits: the copy cannot write the old data over
 * the new. */
static void test_write_waits_for_copy(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *top = open_fmt("top", "base");
    BlockDriverState *cor =
        test_open_owned("driver=copy-on-read,node-name=cor,file=top");
    fill(base, 0, 1, 0xaa);
    BlockBackend *blk = test_rw_blk(cor);

    uint8_t *rbuf = g_malloc(CS), *wbuf = g_malloc(CS);
    memset(wbuf, 0xbb, CS);
    st(top)->gate_backing_reads = true;
    gate_closed = true;
    TestReq r = {blk, TEST_OP_READ, 0, CS, rbuf, 0, 0, false};
    coroutine_enter(coroutine_create(test_req_co, &r));
    for (int i = 0; i < 1000 && gate_waiting == 0; i++) {
        aio_poll(false);
    }
    assert_int_equal(gate_waiting, 1); /* the copy's read is held */

    TestReq w = {blk, TEST_OP_WRITE, 0, CS, wbuf, 0, 0, false};
    coroutine_enter(coroutine_create(test_req_co, &w));
    for (int i = 0; i < 100; i++) {
        aio_poll(false);
    }
    assert_false(w.done);
    assert_false(st(top)->alloc[0]);

    gate_open();
    poll_until(&r.done);
    poll_until(&w.done);
    assert_int_equal(r.ret, 0);
    assert_int_equal(w.ret, 0);
    assert_bytes(rbuf, CS, 0xaa);        /* the reader saw the old data */
    assert_bytes(st(top)->mem, CS, 0xbb); /* and the write came last */
    g_free(rbuf);
    g_free(wbuf);
    blk_unref(blk);
}

/* A copy that comes while a write of its cluster is in flight waits for
 * it, then finds the cluster allocated and copies nothing. */
static void test_copy_waits_for_write(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *top = open_fmt("top", "base");
    BlockDriverState *cor =
        test_open_owned("driver=copy-on-read,node-name=cor,file=top");
    fill(base, 0, 1, 0xaa);
    BlockBackend *blk = test_rw_blk(cor);

    uint8_t *rbuf = g_malloc(CS), *wbuf = g_malloc(CS);
    memset(wbuf, 0xbb, CS);
    st(top)->gate_writes = true;
    gate_closed = true;
    TestReq w = {blk, TEST_OP_WRITE, 0, CS, wbuf, 0, 0, false};
    coroutine_enter(coroutine_create(test_req_co, &w));
    for (int i = 0; i < 1000 && gate_waiting == 0; i++) {
        aio_poll(false);
    }
    assert_int_equal(gate_waiting, 1); /* the write is held in the driver */

    TestReq r = {blk, TEST_OP_READ, 0, CS, rbuf, 0, 0, false};
    coroutine_enter(coroutine_create(test_req_co, &r));
    for (int i = 0; i < 100; i++) {
        aio_poll(false);
    }
    assert_false(r.done);
    assert_int_equal(gate_waiting, 1); /* the copy did not get as far */

    gate_open();
    poll_until(&w.done);
    poll_until(&r.done);
    assert_int_equal(r.ret, 0);
    assert_bytes(rbuf, CS, 0xbb);
    assert_bytes(st(top)->mem, CS, 0xbb);
    assert_int_equal(st(top)->data_writes, 1); /* only the guest's */
    g_free(rbuf);
    g_free(wbuf);
    blk_unref(blk);
}

/* Open errors, and a bottom that is not below the top limits nothing. */
static void test_open_errors(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *top = open_fmt("top", "base");
    fill(base, 0, 1, 0xaa);
    char *msg = test_open_error(
        "driver=copy-on-read,node-name=c0,file=top,bottom=nosuch");
    assert_string_equal(msg, "Bottom node 'nosuch' not found");
    g_free(msg);
    BlockDriverState *c1 =
        test_open_owned("driver=copy-on-read,node-name=c1,file=base");
    msg = test_open_error("driver=copy-on-read,node-name=c0,file=top,"
                          "bottom=c1");
    assert_string_equal(msg, "Bottom node 'c1' is a filter");
    g_free(msg);
    (void)c1;

    BlockDriverState *cor = test_open_owned(
        "driver=copy-on-read,node-name=cor,file=top,bottom=top");
    BlockBackend *blk = test_rw_blk(cor);
    uint8_t *buf = g_malloc(CS);
    TestReq r = {blk, TEST_OP_READ, 0, CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_true(st(top)->alloc[0]);
    g_free(buf);
    blk_unref(blk);
}

int main(void)
{
    test_aio_init();
    bdrv_register_test_driver(&memfmt);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_copies_whole_clusters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bottom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefetch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_waits_for_copy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_copy_waits_for_write, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_unregister_test_driver(&memfmt);
    return ret;
}
