/*
 * Node-level I/O accounting, as query-blockstats (query-nodes: true)
 * reports it in qemu-storage-daemon 7.2.
 *
 * QEMU keeps two kinds of statistics.  The per-request counters (bytes,
 * operations, times, failed/invalid requests, latency histograms) belong
 * to a BlockBackend and are fed by the guest device model (virtio-blk,
 * IDE, SCSI...) around each request; the block layer never fills them in,
 * and a storage daemon has no device models and no named BlockBackends,
 * so at node level they are always 0 and `query-blockstats` without
 * query-nodes returns [].  What the block layer itself keeps per node is
 * the highest offset a write reached (wr_highest_offset), and the file
 * driver counts its discards (driver-specific).  That is what lives here.
 */
#ifndef BLOCK_ACCOUNTING_H
#define BLOCK_ACCOUNTING_H

#include <stdint.h>

#include "block/block_int.h"
#include "qapi/qapi-types.h"

/*
 * The end of a write request issued to a node: [offset, offset + bytes)
 * as the node's driver saw it (already aligned).  Counted whether the
 * request succeeded or not, as QEMU does (a failed write may still have
 * written part of the range); write-zeroes are writes, discards and
 * truncates are not.
 */
static inline void bdrv_acct_write_done(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    uint64_t end = (uint64_t)offset + (uint64_t)bytes;
    if (bytes > 0 && end > bs->wr_highest_offset) {
        bs->wr_highest_offset = end;
    }
}

/* Discard counters of a protocol driver (BlockStatsSpecificFile). */
typedef struct BdrvDiscardStats {
    uint64_t nb_ok;
    uint64_t nb_failed;
    uint64_t bytes_ok;
} BdrvDiscardStats;

/*
 * One discard the driver passed to the host: ret is its result (0 or
 * -errno).  A host that cannot discard (-ENOTSUP) counts as failed even
 * though the request itself succeeds (discard is advisory).
 */
void bdrv_acct_discard_done(BdrvDiscardStats *st, uint64_t bytes, int ret);

/* The driver-specific statistics of a file node (driver "file"). */
BlockStatsSpecific *bdrv_acct_file_specific_stats(const BdrvDiscardStats *st);

/*
 * The statistics of one node and, recursively, of the node that stores
 * its data (`parent`: the primary child when it holds data or is
 * filtered, else the one child holding data, if there is exactly one).
 * Never fails; the caller frees the result with qapi_free_BlockStats().
 */
BlockStats *bdrv_acct_query_node(BlockDriverState *bs);

/* The child whose statistics show as `parent` of bs, or NULL. */
BdrvChild *bdrv_acct_stats_parent(BlockDriverState *bs);

#endif
