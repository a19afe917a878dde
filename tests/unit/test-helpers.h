/*
 * Set-up helpers shared by the block-layer unit tests: opening nodes from
 * keyval text (in a coroutine, as the monitor does), attaching
 * BlockBackends, deleting nodes, and a scratch directory.  The helpers that
 * "must" succeed or fail end the test through cmocka with the reason.
 */
#ifndef TESTS_UNIT_TEST_HELPERS_H
#define TESTS_UNIT_TEST_HELPERS_H

#include <stdint.h>

#include <glib.h>

#include "block/block_int.h"

/* Start the event loop the block layer runs in (aio_init); on failure
 * print why and exit(1), as a test program cannot run without it. */
void test_aio_init(void);

/* Open a node from keyval text in a coroutine; NULL with *errp set on
 * failure.  The caller holds the only reference. */
BlockDriverState *test_try_open(const char *opts, GError **errp);

/* test_try_open that fails the test on error. */
BlockDriverState *test_open_node(const char *opts);

/* test_open_node, then hand the node to the monitor (as blockdev-add
 * does), so bdrv_close_all() frees it. */
BlockDriverState *test_open_owned(const char *opts);

/* Open that must fail: fails the test if it succeeds, else returns the
 * error message (caller frees). */
char *test_open_error(const char *opts);

/* A BlockBackend with perm/shared attached to bs; NULL with *errp set
 * (and the backend freed) when the permissions are refused. */
BlockBackend *test_new_blk(BlockDriverState *bs, uint64_t perm, uint64_t shared,
                           GError **errp);

/* test_new_blk sharing everything, failing the test on error. */
BlockBackend *test_blk(BlockDriverState *bs, uint64_t perm);

/* Reader/writer backends, the common cases of test_blk. */
#define test_rw_blk(bs)                                                        \
    test_blk((bs), BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)
#define test_rw_resize_blk(bs)                                                 \
    test_blk((bs), BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE)

/* One request through a BlockBackend, run in a coroutine by
 * test_req_co: the op picks the call, the other fields are its arguments
 * (unused ones ignored) and results. */
typedef enum {
    TEST_OP_READ,        /* blk_co_pread(buf, flags) */
    TEST_OP_WRITE,       /* blk_co_pwrite(buf, flags) */
    TEST_OP_ZERO,        /* blk_co_pwrite_zeroes(flags) */
    TEST_OP_FLUSH,       /* blk_co_flush */
    TEST_OP_DISCARD,     /* blk_co_pdiscard */
    TEST_OP_TRUNCATE,    /* blk_co_truncate to offset (exact, prealloc, err) */
    TEST_OP_STATUS,      /* blk_co_block_status (pnum) */
    TEST_OP_BDRV_STATUS, /* bdrv_co_block_status of the root node (pnum) */
    TEST_OP_CHILD_WRITE, /* bdrv_co_pwrite on the root child (buf, flags) */
    TEST_OP_CHILD_ZERO,  /* bdrv_co_pwrite_zeroes on the root child */
} TestOp;

typedef struct TestReq {
    BlockBackend *blk;
    TestOp op;
    int64_t offset, bytes;
    void *buf;
    BdrvRequestFlags flags;
    int ret;
    bool done; /* set when the request has finished */
    bool exact;
    PreallocMode prealloc;
    int64_t pnum;
    GError *err;
} TestReq;

/* Coroutine body running the TestReq at opaque (for coroutine_create to
 * run requests concurrently). */
void coroutine_fn test_req_co(void *opaque);

/* Run r synchronously; returns r->ret. */
int test_req_run(TestReq *r);

/* The data path of an in-memory test driver whose image is `mem`
 * (bs->total_bytes long): reads past the end return zeroes, writes past
 * the end fail with -EIO. */
void test_mem_read(BlockDriverState *bs, const uint8_t *mem, int64_t offset,
                   int64_t bytes, IOVector *qiov);
int test_mem_write(BlockDriverState *bs, uint8_t *mem, int64_t offset,
                   int64_t bytes, IOVector *qiov);

/* blockdev-del of bs run in a coroutine; returns its result. */
int test_blockdev_del(BlockDriverState *bs, GError **errp);

/* A fresh directory /tmp/<prefix>-XXXXXX (caller frees the name), or NULL
 * with *errp set. */
char *test_tmpdir_new(const char *prefix, GError **errp);

/* Remove dir and everything in it (not following links). */
void test_tmpdir_remove(const char *dir);

#endif
