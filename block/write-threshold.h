/*
 * Write threshold: a per-node offset that, once a write request ends past
 * it, sends BLOCK_WRITE_THRESHOLD once and disarms itself.  Management
 * software (libvirt) arms it on the protocol node of a thin-provisioned
 * image to learn that the image is about to outgrow its storage, before a
 * write fails with ENOSPC.  The request path calls
 * bdrv_write_threshold_check() for every write, write-zeroes and discard
 * that is about to be issued on a node.
 */
#ifndef BLOCK_WRITE_THRESHOLD_H
#define BLOCK_WRITE_THRESHOLD_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block_int.h"

/* Arm (threshold > 0) or disarm (0) the node's threshold. */
void bdrv_write_threshold_set(BlockDriverState *bs, uint64_t threshold);

/* The armed threshold, 0 when none. */
uint64_t bdrv_write_threshold_get(const BlockDriverState *bs);

/*
 * The arithmetic: true when a request [offset, offset + bytes) on a node
 * with `threshold` armed (non-zero) ends past it; *amount is then by how
 * many bytes.  A request that ends exactly at the threshold does not
 * exceed it.  offset and bytes are those of a request the request path
 * already checked (non-negative, their sum fits in int64_t).
 */
bool bdrv_write_threshold_exceeded(uint64_t threshold, int64_t offset,
                                   int64_t bytes, uint64_t *amount);

/* The slow half of bdrv_write_threshold_check(): only called with a
 * threshold armed. */
void bdrv_write_threshold_check_write(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes);

/*
 * A write, write-zeroes or discard of [offset, offset + bytes) is about
 * to be issued on bs: send the event and disarm when it ends past the
 * threshold.  One compare when no threshold is armed.
 */
static inline void bdrv_write_threshold_check(BlockDriverState *bs,
                                              int64_t offset, int64_t bytes)
{
    if (__builtin_expect(bs->write_threshold_offset != 0, 0)) {
        bdrv_write_threshold_check_write(bs, offset, bytes);
    }
}

/*
 * True for the write-back of a copy-on-read: a WRITE_UNCHANGED request a
 * copy-on-read filter issues to the node below it.  QEMU writes those
 * straight to the node's driver, past the threshold check, so they do
 * not count on that node (what its driver writes to its own children
 * does).
 */
bool bdrv_write_threshold_is_cor_write(const BdrvChild *child,
                                       BdrvRequestFlags flags);

/* bdrv_write_threshold_check() for a data or zero write through child
 * with flags. */
static inline void bdrv_write_threshold_check_child(BdrvChild *child,
                                                    int64_t offset,
                                                    int64_t bytes,
                                                    BdrvRequestFlags flags)
{
    if (__builtin_expect(child->bs->write_threshold_offset != 0, 0) &&
        !bdrv_write_threshold_is_cor_write(child, flags)) {
        bdrv_write_threshold_check_write(child->bs, offset, bytes);
    }
}

#endif
