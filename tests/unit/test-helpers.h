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

/* blockdev-del of bs run in a coroutine; returns its result. */
int test_blockdev_del(BlockDriverState *bs, GError **errp);

/* A fresh directory /tmp/<prefix>-XXXXXX (caller frees the name), or NULL
 * with *errp set. */
char *test_tmpdir_new(const char *prefix, GError **errp);

/* Remove dir and everything in it (not following links). */
void test_tmpdir_remove(const char *dir);

#endif
