/*
 * Set-up helpers shared by the block-layer unit tests (see test-helpers.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "tests/unit/test-helpers.h"
#include "util/aio.h"

void test_aio_init(void)
{
    GError *err = NULL;
    if (!aio_init(&err)) {
        fprintf(stderr, "aio_init: %s\n", err->message);
        exit(1);
    }
}

typedef struct OpenCo {
    const char *opts;
    BlockDriverState *bs;
    GError *err;
} OpenCo;

/* Opening may yield (image probing, I/O), so it runs in a coroutine. */
static void coroutine_fn open_co(void *opaque)
{
    OpenCo *oc = opaque;
    oc->bs = bdrv_co_open_keyval(oc->opts, &oc->err);
}

BlockDriverState *test_try_open(const char *opts, GError **errp)
{
    OpenCo oc = {.opts = opts};
    coroutine_run_sync(open_co, &oc);
    if (!oc.bs) {
        g_propagate_error(errp, oc.err);
    }
    return oc.bs;
}

BlockDriverState *test_open_node(const char *opts)
{
    GError *err = NULL;
    BlockDriverState *bs = test_try_open(opts, &err);
    if (!bs) {
        fail_msg("open '%s': %s", opts, err->message);
    }
    return bs;
}

BlockDriverState *test_open_owned(const char *opts)
{
    BlockDriverState *bs = test_open_node(opts);
    bdrv_set_monitor_owned(bs);
    return bs;
}

char *test_open_error(const char *opts)
{
    GError *err = NULL;
    BlockDriverState *bs = test_try_open(opts, &err);
    if (bs) {
        fail_msg("open '%s' succeeded", opts);
    }
    assert_non_null(err);
    char *msg = g_strdup(err->message);
    g_error_free(err);
    return msg;
}

BlockBackend *test_new_blk(BlockDriverState *bs, uint64_t perm, uint64_t shared,
                           GError **errp)
{
    BlockBackend *blk = blk_new(perm, shared);
    if (blk_insert_bs(blk, bs, errp) < 0) {
        blk_unref(blk);
        return NULL;
    }
    return blk;
}

BlockBackend *test_blk(BlockDriverState *bs, uint64_t perm)
{
    GError *err = NULL;
    BlockBackend *blk = test_new_blk(bs, perm, BLK_PERM_ALL, &err);
    if (!blk) {
        fail_msg("insert: %s", err->message);
    }
    return blk;
}

void coroutine_fn test_req_co(void *opaque)
{
    TestReq *r = opaque;
    switch (r->op) {
    case TEST_OP_READ:
        r->ret = blk_co_pread(r->blk, r->offset, r->bytes, r->buf, r->flags);
        break;
    case TEST_OP_WRITE:
        r->ret = blk_co_pwrite(r->blk, r->offset, r->bytes, r->buf, r->flags);
        break;
    case TEST_OP_ZERO:
        r->ret = blk_co_pwrite_zeroes(r->blk, r->offset, r->bytes, r->flags);
        break;
    case TEST_OP_FLUSH:
        r->ret = blk_co_flush(r->blk);
        break;
    case TEST_OP_DISCARD:
        r->ret = blk_co_pdiscard(r->blk, r->offset, r->bytes);
        break;
    case TEST_OP_TRUNCATE:
        r->ret = blk_co_truncate(r->blk, r->offset, r->exact, r->prealloc, 0,
                                 &r->err);
        break;
    case TEST_OP_STATUS:
        r->ret = blk_co_block_status(r->blk, r->offset, r->bytes, &r->pnum);
        break;
    case TEST_OP_BDRV_STATUS:
        r->ret = bdrv_co_block_status(blk_bs(r->blk), r->offset, r->bytes,
                                      &r->pnum, NULL, NULL);
        break;
    case TEST_OP_CHILD_WRITE:
        r->ret = bdrv_co_pwrite(blk_root(r->blk), r->offset, r->bytes, r->buf,
                                r->flags);
        break;
    case TEST_OP_CHILD_ZERO:
        r->ret = bdrv_co_pwrite_zeroes(blk_root(r->blk), r->offset, r->bytes,
                                       r->flags);
        break;
    }
    r->done = true;
}

int test_req_run(TestReq *r)
{
    r->done = false;
    coroutine_run_sync(test_req_co, r);
    return r->ret;
}

void test_mem_read(BlockDriverState *bs, const uint8_t *mem, int64_t offset,
                   int64_t bytes, IOVector *qiov)
{
    int64_t n = MAX(0, MIN(bytes, bs->total_bytes - offset));
    qiov_from_buf(qiov, 0, mem + offset, n);
    if (n < bytes) {
        qiov_memset(qiov, n, 0, bytes - n);
    }
}

int test_mem_write(BlockDriverState *bs, uint8_t *mem, int64_t offset,
                   int64_t bytes, IOVector *qiov)
{
    if (offset + bytes > bs->total_bytes) {
        return -EIO;
    }
    qiov_to_buf(qiov, 0, mem + offset, bytes);
    return 0;
}

typedef struct DelCo {
    BlockDriverState *bs;
    int ret;
    GError *err;
} DelCo;

static void coroutine_fn del_co(void *opaque)
{
    DelCo *d = opaque;
    d->ret = bdrv_co_blockdev_del(d->bs, &d->err);
}

int test_blockdev_del(BlockDriverState *bs, GError **errp)
{
    DelCo d = {.bs = bs};
    coroutine_run_sync(del_co, &d);
    if (d.err) {
        g_propagate_error(errp, d.err);
    }
    return d.ret;
}

char *test_tmpdir_new(const char *prefix, GError **errp)
{
    char *tmpl = g_strdup_printf("%s-XXXXXX", prefix);
    char *dir = g_dir_make_tmp(tmpl, errp);
    g_free(tmpl);
    return dir;
}

void test_tmpdir_remove(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    if (d) {
        const char *name;
        while ((name = g_dir_read_name(d))) {
            char *path = g_build_filename(dir, name, NULL);
            if (g_file_test(path, G_FILE_TEST_IS_DIR) &&
                !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
                test_tmpdir_remove(path);
            } else {
                g_unlink(path);
            }
            g_free(path);
        }
        g_dir_close(d);
    }
    g_rmdir(dir);
}
