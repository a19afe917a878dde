/*
 * blockdev-snapshot-internal-sync as a transaction action
 * (block/qmp-snapshot-internal.c): the checks, then the snapshot; its undo
 * (registered on tran) deletes it again if the transaction fails.
 */
#ifndef BLOCK_QMP_SNAPSHOT_INTERNAL_H
#define BLOCK_QMP_SNAPSHOT_INTERNAL_H

#include "block/block.h"
#include "qapi/qapi-types.h"
#include "util/transaction.h"

int coroutine_fn qmp_internal_snapshot_action(
    const BlockdevSnapshotInternal *arg, Transaction *tran, GError **errp);

/*
 * The node that keeps bs's internal snapshots: bs if it is qcow2, else, as
 * QEMU's bdrv_snapshot_fallback(), the one below a node whose only child
 * is its file or backing child (raw, filters).  NULL: none can.
 */
BlockDriverState *qmp_internal_snapshot_node(BlockDriverState *bs);

#endif
