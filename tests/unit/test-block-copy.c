/*
 * block-copy and the copy-before-write filter on real files: the
 * background copy equals the source; zero ranges become zeroes on the
 * target; a cluster is copied once even when guest writes and the
 * background copy race for it (progress adds up to exactly the length);
 * a failed copy makes its clusters dirty again; a write through the
 * filter leaves the old data on the target; the point-in-time view reads
 * old data after a write; a copy with a deadline fails with ETIMEDOUT and
 * ends in the background; copy offload (copy_file_range) between two
 * files gives the same target as reading and writing, and refuses
 * (ENOTSUP) where a node cannot offload.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <glib.h>

#include "block/block_int.h"
#include "block/drivers/copy-before-write.h"
#include "block/jobs/block-copy.h"
#include "util/aio.h"
#include "util/error.h"

#define MiB (1024 * 1024)
#define SIZE (8 * MiB)

static char *dir;
static char *src_path, *tgt_path;

static void write_file(const char *path, int64_t size, bool pattern)
{
    FILE *f = fopen(path, "w+");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), size), 0);
    if (pattern) {
        /* data in the first 3 MiB and from 5 MiB on; a hole between */
        uint8_t *buf = g_malloc(MiB);
        for (int64_t off = 0; off < size; off += MiB) {
            if (off >= 3 * MiB && off < 5 * MiB) {
                continue;
            }
            memset(buf, (int)(1 + off / MiB), MiB);
            fseek(f, off, SEEK_SET);
            assert_int_equal(fwrite(buf, 1, MiB, f), MiB);
        }
        g_free(buf);
    }
    fclose(f);
}

static gchar *read_file(const char *path, gsize *len)
{
    gchar *data = NULL;
    assert_true(g_file_get_contents(path, &data, len, NULL));
    return data;
}

static int setup(void **state)
{
    (void)state;
    dir = g_dir_make_tmp("test-block-copy-XXXXXX", NULL);
    src_path = g_build_filename(dir, "src", NULL);
    tgt_path = g_build_filename(dir, "tgt", NULL);
    write_file(src_path, SIZE, true);
    write_file(tgt_path, SIZE, false);
    /* the target starts with garbage where the source has a hole */
    FILE *f = fopen(tgt_path, "r+");
    uint8_t junk[4096];
    memset(junk, 0xee, sizeof(junk));
    fseek(f, 4 * MiB, SEEK_SET);
    assert_int_equal(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(src_path);
    unlink(tgt_path);
    rmdir(dir);
    g_free(src_path);
    g_free(tgt_path);
    g_free(dir);
    return 0;
}

/* ---- the filter and a user of it ---- */

typedef struct Fixture {
    BlockDriverState *cbw;
    BlockBackend *blk;
    BlockCopyState *bcs;
    int64_t progress;
    int progress_calls;
    const char *target_opts;
} Fixture;

static void progress_cb(void *opaque, int64_t bytes, bool skipped)
{
    Fixture *fx = opaque;
    (void)skipped;
    fx->progress += bytes;
    fx->progress_calls++;
}

static void coroutine_fn open_co(void *opaque)
{
    Fixture *fx = opaque;
    GError *err = NULL;
    g_autofree char *opts = g_strdup_printf(
        "driver=copy-before-write,node-name=cbw,"
        "file.driver=file,file.filename=%s,%s",
        src_path, fx->target_opts);
    fx->cbw = bdrv_co_open_keyval(opts, &err);
    if (!fx->cbw) {
        fail_msg("open: %s", err->message);
    }
    fx->blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                      BLK_PERM_ALL);
    assert_int_equal(blk_insert_bs(fx->blk, fx->cbw, &err), 0);
    fx->bcs = bdrv_cbw_get_block_copy_state(fx->cbw);
    assert_non_null(fx->bcs);
    block_copy_set_progress(fx->bcs, progress_cb, fx);
}

static void fixture_open(Fixture *fx, const char *target_opts)
{
    memset(fx, 0, sizeof(*fx));
    fx->target_opts = target_opts;
    coroutine_run_sync(open_co, fx);
}

static void fixture_close(Fixture *fx)
{
    blk_unref(fx->blk);
    bdrv_unref(fx->cbw);
}

static const char *plain_target(void)
{
    static char buf[512];
    snprintf(buf, sizeof(buf), "target.driver=file,target.filename=%s",
             tgt_path);
    return buf;
}

typedef struct RunCo {
    Fixture *fx;
    int ret;
    bool is_read;
} RunCo;

static void coroutine_fn run_co(void *opaque)
{
    RunCo *r = opaque;
    static const BlockCopyRunOps ops = {0};
    r->ret = block_copy_run(r->fx->bcs, &ops, NULL, &r->is_read);
}

/* ---- tests ---- */

/* Copy everything, close, and the target file is the source's (the
 * source's hole became zeroes: the junk on the target is gone). */
static void copy_all_and_compare(Fixture *fx)
{
    RunCo r = {.fx = fx};
    coroutine_run_sync(run_co, &r);
    assert_int_equal(r.ret, 0);
    assert_int_equal(block_copy_dirty_bytes(fx->bcs), 0);
    assert_int_equal(fx->progress, SIZE);
    fixture_close(fx);

    gsize ls, lt;
    g_autofree gchar *s = read_file(src_path, &ls);
    g_autofree gchar *t = read_file(tgt_path, &lt);
    assert_int_equal(ls, lt);
    assert_memory_equal(s, t, ls);
}

static void test_full_copy(void **state)
{
    (void)state;
    Fixture fx;
    fixture_open(&fx, plain_target());
    assert_int_equal(block_copy_dirty_bytes(fx.bcs), SIZE);
    assert_int_equal(block_copy_cluster_size(fx.bcs), 64 * 1024);
    block_copy_set_perf(fx.bcs, 4, MiB, false);
    copy_all_and_compare(&fx);
}

typedef struct WriteCo {
    Fixture *fx;
    int64_t offset;
    uint8_t byte;
    int ret;
} WriteCo;

static void coroutine_fn write_co(void *opaque)
{
    WriteCo *w = opaque;
    uint8_t buf[65536];
    memset(buf, w->byte, sizeof(buf));
    w->ret = blk_co_pwrite(w->fx->blk, w->offset, sizeof(buf), buf, 0);
}

/* The background copy and guest writes at once: each cluster copied once
 * (progress adds up to exactly the size), the target is the old image. */
typedef struct RaceCo {
    Fixture *fx;
    int ret;
} RaceCo;

static WriteCo race_w[16];

static void coroutine_fn race_co(void *opaque)
{
    RaceCo *rc = opaque;
    WriteCo *w = race_w;
    for (int i = 0; i < 16; i++) {
        w[i] = (WriteCo){.fx = rc->fx, .offset = (int64_t)i * 512 * 1024,
                         .byte = 0xaa};
        coroutine_enter(coroutine_create(write_co, &w[i]));
    }
    static const BlockCopyRunOps ops = {0};
    bool is_read;
    rc->ret = block_copy_run(rc->fx->bcs, &ops, NULL, &is_read);
}

static void test_race_once(void **state)
{
    (void)state;
    gsize ls;
    g_autofree gchar *before = read_file(src_path, &ls);
    Fixture fx;
    fixture_open(&fx, plain_target());
    block_copy_set_perf(fx.bcs, 8, 256 * 1024, false);
    RaceCo rc = {.fx = &fx};
    coroutine_run_sync(race_co, &rc);
    assert_int_equal(rc.ret, 0);
    /* drain: the writers are done when nothing is in flight */
    bdrv_drained_begin(fx.cbw);
    bdrv_drained_end(fx.cbw);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(race_w[i].ret, 0);
    }
    assert_int_equal(fx.progress, SIZE);
    assert_int_equal(block_copy_dirty_bytes(fx.bcs), 0);
    fixture_close(&fx);

    gsize lt, ln;
    g_autofree gchar *t = read_file(tgt_path, &lt);
    g_autofree gchar *now = read_file(src_path, &ln);
    assert_memory_equal(before, t, ls);
    for (int i = 0; i < 16; i++) {
        assert_int_equal((uint8_t)now[i * 512 * 1024], 0xaa);
    }
}

/* A write through the filter copies the old data first. */
static void test_cbw_write(void **state)
{
    (void)state;
    gsize ls;
    g_autofree gchar *before = read_file(src_path, &ls);
    Fixture fx;
    fixture_open(&fx, plain_target());
    WriteCo w = {.fx = &fx, .offset = MiB + 4096, .byte = 0x77};
    coroutine_run_sync(write_co, &w);
    assert_int_equal(w.ret, 0);
    /* the cluster(s) touched were copied, nothing else */
    assert_int_equal(fx.progress, 128 * 1024);
    assert_int_equal(block_copy_dirty_bytes(fx.bcs), SIZE - 128 * 1024);
    assert_true(block_copy_range_clean(fx.bcs, MiB, 128 * 1024));
    assert_false(block_copy_range_clean(fx.bcs, 0, 65536));
    fixture_close(&fx);

    gsize lt;
    g_autofree gchar *t = read_file(tgt_path, &lt);
    assert_memory_equal(before + MiB, t + MiB, 128 * 1024);
    g_autofree gchar *now = read_file(src_path, &ls);
    assert_int_equal((uint8_t)now[MiB + 4096], 0x77);
}

typedef struct ViewCo {
    Fixture *fx;
    uint8_t buf[65536];
    int ret;
} ViewCo;

static void coroutine_fn view_co(void *opaque)
{
    ViewCo *v = opaque;
    IOVector q;
    qiov_init_buf(&q, v->buf, sizeof(v->buf));
    v->ret = bdrv_cbw_snapshot_preadv(v->fx->cbw, MiB, sizeof(v->buf), &q);
}

/* The point-in-time view reads the old data, before and after a write. */
static void test_snapshot_view(void **state)
{
    (void)state;
    Fixture fx;
    fixture_open(&fx, plain_target());
    ViewCo v = {.fx = &fx};
    coroutine_run_sync(view_co, &v);
    assert_int_equal(v.ret, 0);
    assert_int_equal(v.buf[0], 2); /* from the source */
    WriteCo w = {.fx = &fx, .offset = MiB, .byte = 0x99};
    coroutine_run_sync(write_co, &w);
    assert_int_equal(w.ret, 0);
    memset(v.buf, 0, sizeof(v.buf));
    coroutine_run_sync(view_co, &v);
    assert_int_equal(v.ret, 0);
    assert_int_equal(v.buf[0], 2); /* from the target now */
    assert_int_equal(v.buf[65535], 2);
    fixture_close(&fx);
}

/* A failed copy: the clusters are dirty again, the next try succeeds. */
typedef struct CopyCo {
    Fixture *fx;
    int ret;
} CopyCo;

static void coroutine_fn copy_co(void *opaque)
{
    CopyCo *c = opaque;
    c->ret = block_copy(c->fx->bcs, 2 * MiB, 65536);
}

static void test_failure_redirties(void **state)
{
    (void)state;
    char opts[1024];
    snprintf(opts, sizeof(opts),
             "target.driver=blkdebug,target.image.driver=file,"
             "target.image.filename=%s,target.inject-error.0.event=pwritev,"
             "target.inject-error.0.errno=5,target.inject-error.0.once=on",
             tgt_path);
    Fixture fx;
    fixture_open(&fx, opts);
    CopyCo c = {.fx = &fx};
    coroutine_run_sync(copy_co, &c);
    assert_int_equal(c.ret, -5);
    assert_int_equal(block_copy_dirty_bytes(fx.bcs), SIZE);
    assert_false(block_copy_range_clean(fx.bcs, 2 * MiB, 65536));
    coroutine_run_sync(copy_co, &c);
    assert_int_equal(c.ret, 0);
    assert_true(block_copy_range_clean(fx.bcs, 2 * MiB, 65536));
    assert_int_equal(block_copy_dirty_bytes(fx.bcs), SIZE - 65536);
    fixture_close(&fx);
}

/* ---- deadlines (cbw-timeout) ---- */

typedef struct TimeoutCo {
    Fixture *fx;
    int64_t timeout_ns;
    int ret;
    int done_calls;
} TimeoutCo;

static void timeout_done(void *opaque)
{
    TimeoutCo *t = opaque;
    t->done_calls++;
}

static void coroutine_fn timeout_co(void *opaque)
{
    TimeoutCo *t = opaque;
    t->ret = block_copy_timeout(t->fx->bcs, 2 * MiB, 65536, t->timeout_ns,
                                timeout_done, t);
}

static const char *slow_target(void)
{
    /* every request to the target takes 200 ms */
    return "target.driver=null-co,target.size=8388608,"
           "target.latency-ns=200000000,target.read-zeroes=on";
}

static void test_timeout_expires(void **state)
{
    (void)state;
    Fixture fx;
    fixture_open(&fx, slow_target());
    TimeoutCo t = {.fx = &fx, .timeout_ns = 20 * 1000 * 1000};
    coroutine_run_sync(timeout_co, &t);
    assert_int_equal(t.ret, -ETIMEDOUT);
    /* the chunk it was copying goes on in the background */
    assert_int_equal(t.done_calls, 0);
    AIO_WAIT_WHILE(t.done_calls == 0);
    assert_int_equal(t.done_calls, 1);
    /* and it was copied: nothing left to do there, at once */
    assert_true(block_copy_range_clean(fx.bcs, 2 * MiB, 65536));
    assert_int_equal(fx.progress, 65536);
    t.timeout_ns = 1000 * 1000;
    coroutine_run_sync(timeout_co, &t);
    assert_int_equal(t.ret, 0);
    assert_int_equal(t.done_calls, 2);
    fixture_close(&fx);
}

static void test_timeout_in_time(void **state)
{
    (void)state;
    Fixture fx;
    fixture_open(&fx, slow_target());
    TimeoutCo t = {.fx = &fx, .timeout_ns = 30LL * 1000 * 1000 * 1000};
    coroutine_run_sync(timeout_co, &t);
    assert_int_equal(t.ret, 0);
    assert_int_equal(t.done_calls, 1); /* before it returned */
    assert_true(block_copy_range_clean(fx.bcs, 2 * MiB, 65536));
    fixture_close(&fx);
}

/* ---- copy offload ---- */

static BdrvChild *child_named(BlockDriverState *bs, const char *name)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

typedef struct RangeCo {
    Fixture *fx;
    int64_t offset, bytes;
    int ret;
} RangeCo;

static void coroutine_fn range_co(void *opaque)
{
    RangeCo *r = opaque;
    BlockDriverState *cbw = r->fx->cbw;
    r->ret = bdrv_co_copy_range(cbw->file, r->offset, child_named(cbw, "target"),
                                r->offset, r->bytes);
}

static void test_copy_range_direct(void **state)
{
    (void)state;
    gsize ls, lt;
    g_autofree gchar *s = read_file(src_path, &ls);
    Fixture fx;
    fixture_open(&fx, plain_target());
    RangeCo r = {.fx = &fx, .offset = MiB, .bytes = 2 * MiB};
    coroutine_run_sync(range_co, &r);
    assert_int_equal(r.ret, 0);
    /* not inside the node: refused, nothing done */
    r.offset = SIZE - MiB;
    coroutine_run_sync(range_co, &r);
    assert_int_equal(r.ret, -ENOTSUP);
    fixture_close(&fx);
    g_autofree gchar *t = read_file(tgt_path, &lt);
    assert_memory_equal(s + MiB, t + MiB, 2 * MiB);
    assert_int_equal(t[0], 0);

    /* a node without offload on the way: ENOTSUP */
    char opts[1024];
    snprintf(opts, sizeof(opts),
             "target.driver=blkdebug,target.image.driver=file,"
             "target.image.filename=%s", tgt_path);
    fixture_open(&fx, opts);
    r = (RangeCo){.fx = &fx, .offset = 0, .bytes = MiB};
    coroutine_run_sync(range_co, &r);
    assert_int_equal(r.ret, -ENOTSUP);
    fixture_close(&fx);
}

/* The background copy with offload on: the same target as without. */
static void test_copy_range_full(void **state)
{
    (void)state;
    Fixture fx;
    fixture_open(&fx, plain_target());
    block_copy_set_perf(fx.bcs, 4, 512 * 1024, true);
    copy_all_and_compare(&fx);
}

int main(void)
{
    GError *err = NULL;
    if (!aio_init(&err)) {
        fprintf(stderr, "aio_init: %s\n", err->message);
        return 1;
    }
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_full_copy),   T(test_race_once),
        T(test_cbw_write),   T(test_snapshot_view),
        T(test_failure_redirties),
        T(test_timeout_expires), T(test_timeout_in_time),
        T(test_copy_range_direct), T(test_copy_range_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
