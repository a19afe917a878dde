/*
 * The dirty-bitmap QMP actions as prepare steps of a transaction, so that
 * QMP's `transaction` can run several of them with rollback: each action
 * does its work at once and registers on `tran` how to undo it (abort) or
 * finish it (commit).  The block-dirty-bitmap-* commands are a
 * transaction of one action.
 */
#ifndef BLOCK_QMP_DIRTY_BITMAP_H
#define BLOCK_QMP_DIRTY_BITMAP_H

#include "qapi/qapi-types.h"
#include "util/transaction.h"

/* abort: the new bitmap is released */
int bdrv_dirty_bitmap_action_add(const BlockDirtyBitmapAdd *arg,
                                 Transaction *tran, GError **errp);
/* The bitmap is hidden (busy) at once and released on commit; abort
 * gives it back.  A persistent bitmap is deleted from its image already
 * in prepare (not undone), as QEMU does. */
int bdrv_dirty_bitmap_action_remove(const BlockDirtyBitmap *arg,
                                    Transaction *tran, GError **errp);
/* abort: the old bits come back */
int bdrv_dirty_bitmap_action_clear(const BlockDirtyBitmap *arg,
                                   Transaction *tran, GError **errp);
/* abort: the old recording state comes back */
int bdrv_dirty_bitmap_action_enable(const BlockDirtyBitmap *arg,
                                    Transaction *tran, GError **errp);
int bdrv_dirty_bitmap_action_disable(const BlockDirtyBitmap *arg,
                                     Transaction *tran, GError **errp);
/* abort: the target's old bits come back */
int bdrv_dirty_bitmap_action_merge(const BlockDirtyBitmapMerge *arg,
                                   Transaction *tran, GError **errp);

#endif
