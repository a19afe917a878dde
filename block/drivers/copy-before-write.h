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

#endif
