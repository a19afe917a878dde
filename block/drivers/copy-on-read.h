/*
 * The copy-on-read filter (copy-on-read.c): reads of data that the node
 * below it (`file`, the "top") does not hold itself but takes from its
 * backing chain are written into the top as well, so the top fills up
 * with what is read.  With `bottom`, only data from the layers down to
 * bottom (included) is copied.  block-stream inserts one above the node
 * it streams into for the job's lifetime.
 */
#ifndef BLOCK_DRIVERS_COPY_ON_READ_H
#define BLOCK_DRIVERS_COPY_ON_READ_H

#include "block/block.h"

/*
 * Open a copy-on-read filter on `top` (with `bottom`, may be NULL) and
 * move every parent of top onto it.  The filter is named
 * filter_node_name, or gets a generated name and is marked implicit.
 * `holder` names who holds the chain top..bottom meanwhile (a job type,
 * e.g. "stream"), in the errors of graph changes it refuses.  Returns the
 * filter with one reference for the caller, or NULL (nothing changed).
 */
BlockDriverState *coroutine_fn bdrv_cor_filter_append(
    BlockDriverState *top, BlockDriverState *bottom,
    const char *filter_node_name, const char *holder, GError **errp);

/* Take the filter out again: its parents go back to the node below it,
 * the chain is released, and the caller's reference is dropped. */
void bdrv_cor_filter_drop(BlockDriverState *cor);

/*
 * A hook for block-stream's parallel copies, called in the copy's
 * coroutine around each read a BDRV_REQ_PREFETCH copy makes of
 * [offset, offset + bytes) of the top: with read=false just before the
 * read (the copy holds its range in the filter by then; the result is
 * ignored and it must not wait), with read=true after a successful read,
 * before the data is written back.  Then it may wait (only for other
 * copies' reads under way), and false means "do not write": the copy
 * fails with -ECANCELED, leaving the range as it was.  The job uses it so
 * that a read error stops the copy where it would stop if the copies ran
 * one after another.  fn NULL removes it.
 */
typedef bool coroutine_fn BdrvCorReadHook(void *opaque, int64_t offset,
                                          int64_t bytes, bool read);
void bdrv_cor_filter_set_read_hook(BlockDriverState *cor, BdrvCorReadHook *fn,
                                   void *opaque);

#endif
