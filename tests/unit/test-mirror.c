/*
 * Unit tests for the mirror engine (block/jobs/mirror.c): the orderings
 * an iotest cannot force.  A guest write that lands on the source while a
 * background copy of the same cluster is between its read and its write
 * is copied again afterwards (background mode), or waits for that copy and
 * is on the target when it completes (write-blocking mode); job-complete
 * moves the source's users to the target, a soft cancel after READY
 * leaves them; active commit moves the top's users to base, which then
 * holds the whole chain's data.
 *
 * An in-memory test format in the qcow2 slot stands in for the images:
 * 64 KiB clusters with an allocation flag each, an optional backing
 * child, and a gate that holds writes of a node until the test opens it.
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
#include "block/jobs/mirror.h"
#include "qapi/qapi-commands.h"
#include "tests/unit/test-helpers.h"
#include "util/aio.h"

#define CS (64 * 1024)
#define NCL 16
#define SZ ((int64_t)CS * NCL)

/* ---- the test format ---- */

typedef struct MemFmt {
    uint8_t mem[SZ];
    bool alloc[NCL];
    bool gate_writes; /* hold writes before they land */
} MemFmt;

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
    /* the data is taken before the gate: a copy in flight has it */
    uint8_t *tmp = g_malloc((size_t)bytes);
    qiov_to_buf(qiov, 0, tmp, (size_t)bytes);
    if (s->gate_writes) {
        gate_pass();
    }
    memcpy(s->mem + offset, tmp, (size_t)bytes);
    g_free(tmp);
    mark_alloc(s, offset, bytes);
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
    return 0;
}

static int coroutine_fn fmt_block_status(BlockDriverState *bs, bool want_zero,
                                         int64_t offset, int64_t bytes,
                                         int64_t *pnum, int64_t *map,
                                         BlockDriverState **file)
{
    bool a;
    *pnum = run_len(bs->opaque, offset, bytes, &a);
    return a ? BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED : 0;
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

static void fill(BlockDriverState *bs, int first, int n, uint8_t v)
{
    memset(st(bs)->mem + (int64_t)first * CS, v, (size_t)n * CS);
    for (int c = first; c < first + n; c++) {
        st(bs)->alloc[c] = true;
    }
}

static void assert_cluster(BlockDriverState *bs, int c, uint8_t v)
{
    const uint8_t *p = st(bs)->mem + (int64_t)c * CS;
    for (size_t i = 0; i < CS; i++) {
        if (p[i] != v) {
            fail_msg("%s cluster %d byte %zu is 0x%02x, not 0x%02x",
                     bs->node_name, c, i, p[i], v);
        }
    }
}

/* Iterate the loop until cond(opaque) holds (bounded). */
static void poll_until(bool (*cond)(void *), void *opaque)
{
    for (int i = 0; i < 200000 && !cond(opaque); i++) {
        aio_poll(true);
    }
    assert_true(cond(opaque));
}

static bool job_in_status(void *opaque)
{
    Job *job = job_get("m");
    return job && job->status == *(JobStatus *)opaque;
}

static bool job_gone(void *opaque)
{
    (void)opaque;
    return job_get("m") == NULL;
}

static bool gate_has_waiters(void *opaque)
{
    (void)opaque;
    return gate_waiting > 0;
}

static bool req_done(void *opaque)
{
    return ((TestReq *)opaque)->done;
}

static void wait_status(JobStatus s)
{
    poll_until(job_in_status, &s);
}

typedef struct MirrorCall {
    q_obj_blockdev_mirror_arg arg;
    GError *err;
} MirrorCall;

static void coroutine_fn mirror_co(void *opaque)
{
    MirrorCall *c = opaque;
    qmp_blockdev_mirror(&c->arg, &c->err);
}

/* blockdev-mirror job "m" from src to tgt, sync=full. */
static void start_mirror(MirrorCopyMode mode)
{
    MirrorCall c = {
        .arg = {.has_job_id = true, .job_id = (char *)"m",
                .device = (char *)"src", .target = (char *)"tgt",
                .sync = MIRROR_SYNC_MODE_FULL, .has_copy_mode = true,
                .copy_mode = mode},
    };
    coroutine_run_sync(mirror_co, &c);
    if (c.err) {
        fail_msg("blockdev-mirror: %s", c.err->message);
    }
}

/* A guest write of cluster c (byte v) through blk, started now. */
static TestReq *guest_write(BlockBackend *blk, int c, uint8_t v)
{
    TestReq *r = g_new0(TestReq, 1);
    r->blk = blk;
    r->op = TEST_OP_WRITE;
    r->offset = (int64_t)c * CS;
    r->bytes = CS;
    r->buf = g_malloc(CS);
    memset(r->buf, v, CS);
    coroutine_enter(coroutine_create(test_req_co, r));
    return r;
}

static void req_free(TestReq *r)
{
    g_free(r->buf);
    g_free(r);
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
    Job *job = job_get("m");
    if (job) {
        job_cancel_sync(job, true);
    }
    bdrv_close_all();
    return 0;
}

/* ---- tests ---- */

/* Background mode: a copy holds cluster 0's old data at the target's
 * gate while the guest overwrites it; the cluster is copied again, so the
 * target ends with the new data. */
static void test_background_recopies(void **state)
{
    BlockDriverState *src = open_fmt("src", NULL);
    BlockDriverState *tgt = open_fmt("tgt", NULL);
    fill(src, 0, NCL, 0x11);
    BlockBackend *blk = test_rw_blk(src);

    st(tgt)->gate_writes = true;
    gate_closed = true;
    start_mirror(MIRROR_COPY_MODE_BACKGROUND);
    poll_until(gate_has_waiters, NULL);

    TestReq *w = guest_write(blk, 0, 0x22);
    poll_until(req_done, w);
    assert_int_equal(w->ret, 0);
    assert_cluster(src, 0, 0x22);
    assert_cluster(tgt, 0, 0x00); /* the old copy is still held */

    gate_open();
    wait_status(JOB_STATUS_READY);
    assert_cluster(tgt, 0, 0x22);
    assert_memory_equal(st(src)->mem, st(tgt)->mem, SZ);

    GError *err = NULL;
    job_complete(job_get("m"), &err);
    assert_null(err);
    poll_until(job_gone, NULL);
    assert_ptr_equal(blk_bs(blk), tgt);
    req_free(w);
    blk_unref(blk);
}

/* Write-blocking mode: the guest's write of a cluster whose copy is in
 * flight waits for the copy (and the source keeps the old data
 * meanwhile), then is on the target when it completes: a forced cancel
 * right after it keeps it there. */
static void test_write_blocking_waits(void **state)
{
    BlockDriverState *src = open_fmt("src", NULL);
    BlockDriverState *tgt = open_fmt("tgt", NULL);
    fill(src, 0, NCL, 0x11);
    BlockBackend *blk = test_rw_blk(src);

    st(tgt)->gate_writes = true;
    gate_closed = true;
    start_mirror(MIRROR_COPY_MODE_WRITE_BLOCKING);
    poll_until(gate_has_waiters, NULL);

    TestReq *w = guest_write(blk, 0, 0x33);
    for (int i = 0; i < 20; i++) {
        aio_poll(false);
    }
    assert_false(w->done);
    assert_cluster(src, 0, 0x11);

    gate_open();
    poll_until(req_done, w);
    assert_int_equal(w->ret, 0);
    assert_cluster(src, 0, 0x33);
    assert_cluster(tgt, 0, 0x33);

    job_cancel_sync(job_get("m"), true);
    poll_until(job_gone, NULL);
    assert_cluster(tgt, 0, 0x33);
    assert_ptr_equal(blk_bs(blk), src);
    req_free(w);
    blk_unref(blk);
}

/* A soft cancel after READY completes the job without switching: the
 * user stays on the source, the filter is gone, the target is a copy. */
static void test_soft_cancel_keeps_graph(void **state)
{
    BlockDriverState *src = open_fmt("src", NULL);
    BlockDriverState *tgt = open_fmt("tgt", NULL);
    fill(src, 2, 5, 0x44);
    BlockBackend *blk = test_rw_blk(src);

    start_mirror(MIRROR_COPY_MODE_BACKGROUND);
    assert_ptr_not_equal(blk_bs(blk), src); /* the filter is above */
    wait_status(JOB_STATUS_READY);
    TestReq *w = guest_write(blk, 9, 0x55);
    poll_until(req_done, w);

    GError *err = NULL;
    job_user_cancel(job_get("m"), false, &err);
    assert_null(err);
    poll_until(job_gone, NULL);
    assert_ptr_equal(blk_bs(blk), src);
    assert_memory_equal(st(src)->mem, st(tgt)->mem, SZ);
    assert_cluster(tgt, 9, 0x55);
    /* nothing but the user above the source any more */
    int parents = 0;
    BdrvChild *c;
    LIST_FOREACH (c, &src->parents, next_parent) {
        parents++;
    }
    assert_int_equal(parents, 1);
    req_free(w);
    blk_unref(blk);
}

static void coroutine_fn commit_co(void *opaque)
{
    void **a = opaque;
    a[2] = mirror_start_active_commit(
        "m", a[0], a[1], JOB_DEFAULT, 0, BLOCKDEV_ON_ERROR_REPORT, NULL, true,
        true, (GError **)&a[3]);
}

/* Active commit: base gets what top has over it, and top's user moves to
 * base on job-complete. */
static void test_active_commit(void **state)
{
    BlockDriverState *base = open_fmt("base", NULL);
    BlockDriverState *top = open_fmt("top", "base");
    fill(base, 0, 8, 0x11);
    fill(top, 4, 8, 0x22);
    BlockBackend *blk = test_rw_blk(top);

    void *a[4] = {top, base, NULL, NULL};
    coroutine_run_sync(commit_co, a);
    if (a[3]) {
        fail_msg("active commit: %s", ((GError *)a[3])->message);
    }
    assert_non_null(a[2]);
    wait_status(JOB_STATUS_READY);
    assert_string_equal(job_type_str(job_get("m")), "commit");
    TestReq *w = guest_write(blk, 14, 0x66);
    poll_until(req_done, w);

    GError *err = NULL;
    job_complete(job_get("m"), &err);
    assert_null(err);
    poll_until(job_gone, NULL);
    assert_ptr_equal(blk_bs(blk), base);
    assert_cluster(base, 0, 0x11);
    assert_cluster(base, 3, 0x11);
    assert_cluster(base, 4, 0x22);
    assert_cluster(base, 11, 0x22);
    assert_cluster(base, 14, 0x66);
    assert_cluster(base, 15, 0x00);
    req_free(w);
    blk_unref(blk);
}

int main(void)
{
    test_aio_init();
    bdrv_register_test_driver(&memfmt);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_background_recopies, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_blocking_waits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_soft_cancel_keeps_graph, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_active_commit, setup, teardown),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_unregister_test_driver(&memfmt);
    return ret;
}
