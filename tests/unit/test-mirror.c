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
 * The in-memory test format of test-memfmt.h stands in for the images;
 * its gate holds writes of a node until the test opens it.
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
#include "tests/unit/test-memfmt.h"
#include "util/aio.h"

#define CS TEST_MEM_CS
#define NCL TEST_MEM_NCL
#define SZ TEST_MEM_SIZE

static void assert_cluster(BlockDriverState *bs, int c, uint8_t v)
{
    const uint8_t *p = test_memfmt(bs)->mem + (int64_t)c * CS;
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
    return test_gate_waiting() > 0;
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

/* src (all clusters 0x11) mirrored to an empty tgt in `mode`, until the
 * first copy is held at tgt's gate; a backend on src for the guest. */
static BlockBackend *start_held_mirror(MirrorCopyMode mode,
                                       BlockDriverState **src,
                                       BlockDriverState **tgt)
{
    *src = test_memfmt_open("src", NULL);
    *tgt = test_memfmt_open("tgt", NULL);
    test_memfmt_fill(*src, 0, NCL, 0x11);
    BlockBackend *blk = test_rw_blk(*src);

    test_memfmt(*tgt)->gate_writes = true;
    test_gate_close();
    start_mirror(mode);
    poll_until(gate_has_waiters, NULL);
    return blk;
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
    test_gate_reset();
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
    BlockDriverState *src, *tgt;
    BlockBackend *blk =
        start_held_mirror(MIRROR_COPY_MODE_BACKGROUND, &src, &tgt);

    TestReq *w = guest_write(blk, 0, 0x22);
    poll_until(req_done, w);
    assert_int_equal(w->ret, 0);
    assert_cluster(src, 0, 0x22);
    assert_cluster(tgt, 0, 0x00); /* the old copy is still held */

    test_gate_open();
    wait_status(JOB_STATUS_READY);
    assert_cluster(tgt, 0, 0x22);
    assert_memory_equal(test_memfmt(src)->mem, test_memfmt(tgt)->mem, SZ);

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
    BlockDriverState *src, *tgt;
    BlockBackend *blk =
        start_held_mirror(MIRROR_COPY_MODE_WRITE_BLOCKING, &src, &tgt);

    TestReq *w = guest_write(blk, 0, 0x33);
    for (int i = 0; i < 20; i++) {
        aio_poll(false);
    }
    assert_false(w->done);
    assert_cluster(src, 0, 0x11);

    test_gate_open();
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
    BlockDriverState *src = test_memfmt_open("src", NULL);
    BlockDriverState *tgt = test_memfmt_open("tgt", NULL);
    test_memfmt_fill(src, 2, 5, 0x44);
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
    assert_memory_equal(test_memfmt(src)->mem, test_memfmt(tgt)->mem, SZ);
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
    BlockDriverState *base = test_memfmt_open("base", NULL);
    BlockDriverState *top = test_memfmt_open("top", "base");
    test_memfmt_fill(base, 0, 8, 0x11);
    test_memfmt_fill(top, 4, 8, 0x22);
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
    bdrv_register_test_driver(&test_memfmt_driver);
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
    bdrv_unregister_test_driver(&test_memfmt_driver);
    return ret;
}
