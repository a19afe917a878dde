/*
 * The copy-before-write filter, as backup uses it: it sits above the
 * source for the job's lifetime, and every write through it first copies
 * the old data of the touched clusters to the target (block-copy).
 */
#ifndef BLOCK_DRIVERS_COPY_BEFORE_WRITE_H
#define BLOCK_DRIVERS_COPY_BEFORE_WRITE_H

#include "block/block.h"
#include "block/jobs/block-copy.h"

/*
 * Open a cbw filter over `source` with `target` and insert it above the
 * source (every parent of source moves to it).  filter_node_name NULL: an
 * implicit node with a generated name.  Returns the filter (one reference,
 * the caller's) or NULL.
 */
BlockDriverState *coroutine_fn bdrv_cbw_append(BlockDriverState *source,
                                               BlockDriverState *target,
                                               const char *filter_node_name,
                                               GError **errp);
/* Take the filter out again (its parents go back to the source) and drop
 * the caller's reference. */
void bdrv_cbw_drop(BlockDriverState *cbw);
/* The filter's copier (NULL if bs is not a cbw node). */
BlockCopyState *bdrv_cbw_get_block_copy_state(BlockDriverState *bs);

/*
 * The point-in-time view (for snapshot-access): a cluster reads from the
 * target once its old data was copied there, else from the source, whose
 * cluster a guest write then waits for.  -EACCES for clusters outside the
 * view (not in the bitmap the filter was opened with, or discarded);
 * after a break-snapshot failure every read fails.
 */
int coroutine_fn bdrv_cbw_snapshot_preadv(BlockDriverState *cbw,
                                          int64_t offset, int64_t bytes,
                                          IOVector *qiov);
/* Drop clusters wholly inside the range from the view (and from what
 * remains to copy); the target's copy is discarded. */
int coroutine_fn bdrv_cbw_snapshot_pdiscard(BlockDriverState *cbw,
                                            int64_t offset, int64_t bytes);
/* DATA|ALLOCATED for a run of readable clusters, 0 for a run outside the
 * view (*pnum bytes). */
int coroutine_fn bdrv_cbw_snapshot_block_status(BlockDriverState *cbw,
                                                int64_t offset, int64_t bytes,
                                                int64_t *pnum);

#endif
