/*
 * QMP `transaction`: prepare every action (each does its work and
 * registers its undo on one Transaction), then commit all, or abort all
 * in reverse order if one failed, so a failing action leaves no trace of
 * the others.  Also blockdev-snapshot, which is one of its actions.
 *
 * Backup jobs are created (filter inserted, bitmap frozen) in prepare and
 * started in commit; with completion-mode grouped they share one JobTxn
 * and finish (or fail) together.
 */
#include <errno.h>

#include "block/block_int.h"
#include "block/jobs/backup.h"
#include "block/qmp-dirty-bitmap.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"
#include "util/transaction.h"

/* ---- blockdev-backup as an action ---- */

static void backup_action_commit(void *opaque)
{
    BlockJob *job = opaque;
    job_start(&job->job);
    /* QEMU enters each job as it starts it */
    backup_let_jobs_start();
}

static void backup_action_abort(void *opaque)
{
    backup_job_discard_unstarted(opaque);
}

static const TransactionActionDrv backup_action_drv = {
    .commit = backup_action_commit,
    .abort = backup_action_abort,
};

static int coroutine_fn backup_action(const BlockdevBackup *arg, JobTxn *txn,
                                      Transaction *tran, GError **errp)
{
    BlockJob *job = backup_job_create_qmp(arg, txn, errp);
    if (!job) {
        return -EINVAL;
    }
    tran_add(tran, &backup_action_drv, job);
    return 0;
}

/* ---- blockdev-snapshot: put an existing overlay on top of a node ---- */

typedef struct SnapshotUndo {
    BlockDriverState *old_bs, *new_bs;
} SnapshotUndo;

static void snapshot_abort(void *opaque)
{
    SnapshotUndo *u = opaque;
    g_autoptr(GError) err = NULL;
    if (bdrv_replace_node(u->new_bs, u->old_bs, &err) < 0 ||
        bdrv_set_backing_hd(u->new_bs, NULL, &err) < 0) {
        warn_report("blockdev-snapshot: undo failed: %s", err->message);
    }
}

static void snapshot_clean(void *opaque)
{
    SnapshotUndo *u = opaque;
    bdrv_unref(u->old_bs);
    bdrv_unref(u->new_bs);
    g_free(u);
}

static const TransactionActionDrv snapshot_action_drv = {
    .abort = snapshot_abort,
    .clean = snapshot_clean,
};

/* Has bs a root user (an export, a BlockBackend)? */
static bool has_blk(BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (!c->klass->parent_is_bds && !c->klass->parent_is_job) {
            return true;
        }
    }
    return false;
}

static int coroutine_fn snapshot_action(const BlockdevSnapshot *arg,
                                        Transaction *tran, GError **errp)
{
    BlockDriverState *old_bs = bdrv_lookup_bs(arg->node, arg->node, errp);
    if (!old_bs) {
        return -ENOENT;
    }
    const char *user = bdrv_backing_user(old_bs);
    if (user) {
        /* QEMU's op blocker on backing nodes */
        error_setg(errp, "Node '%s' is busy: node is used as backing hd of "
                         "'%s'", bdrv_get_node_name(old_bs), user);
        return -EBUSY;
    }
    if (!bdrv_is_read_only(old_bs)) {
        int ret = bdrv_co_flush(old_bs);
        if (ret < 0) {
            error_setg(errp, "An IO error has occurred");
            return ret;
        }
    }
    BlockDriverState *new_bs =
        bdrv_lookup_bs(arg->overlay, arg->overlay, errp);
    if (!new_bs) {
        return -ENOENT;
    }
    if (has_blk(new_bs)) {
        error_setg(errp, "The overlay is already in use");
        return -EBUSY;
    }
    if (new_bs->backing) {
        error_setg(errp, "The overlay already has a backing image");
        return -EINVAL;
    }
    if (!new_bs->drv->supports_backing) {
        error_setg(errp, "The overlay does not support backing images");
        return -ENOTSUP;
    }
    if (bdrv_set_backing_hd(new_bs, old_bs, errp) < 0) {
        return -EPERM;
    }
    if (bdrv_replace_node(old_bs, new_bs, errp) < 0) {
        bdrv_set_backing_hd(new_bs, NULL, NULL);
        return -EPERM;
    }
    SnapshotUndo *u = g_new0(SnapshotUndo, 1);
    u->old_bs = old_bs;
    u->new_bs = new_bs;
    bdrv_ref(old_bs);
    bdrv_ref(new_bs);
    tran_add(tran, &snapshot_action_drv, u);
    return 0;
}

void qmp_blockdev_snapshot(BlockdevSnapshot *arg, GError **errp)
{
    Transaction *tran = tran_new();
    int ret = snapshot_action(arg, tran, errp);
    tran_finalize(tran, ret);
}

/* ---- the transaction ---- */

static bool supports_grouped(TransactionActionKind kind)
{
    /* QEMU refuses grouped completion for the bitmap actions (they have
     * no job to group); backup takes part, snapshots ignore it. */
    switch (kind) {
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ADD:
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_REMOVE:
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_CLEAR:
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ENABLE:
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_DISABLE:
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_MERGE:
        return false;
    default:
        return true;
    }
}

static int coroutine_fn prepare_action(const TransactionAction *act,
                                       JobTxn *txn, Transaction *tran,
                                       GError **errp)
{
    switch (act->type) {
    case TRANSACTION_ACTION_KIND_ABORT:
        error_setg(errp, "Transaction aborted using Abort action");
        return -ECANCELED;
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ADD:
        return bdrv_dirty_bitmap_action_add(act->u.block_dirty_bitmap_add.data,
                                            tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_REMOVE:
        return bdrv_dirty_bitmap_action_remove(
            act->u.block_dirty_bitmap_remove.data, tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_CLEAR:
        return bdrv_dirty_bitmap_action_clear(
            act->u.block_dirty_bitmap_clear.data, tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ENABLE:
        return bdrv_dirty_bitmap_action_enable(
            act->u.block_dirty_bitmap_enable.data, tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_DISABLE:
        return bdrv_dirty_bitmap_action_disable(
            act->u.block_dirty_bitmap_disable.data, tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_MERGE:
        return bdrv_dirty_bitmap_action_merge(
            act->u.block_dirty_bitmap_merge.data, tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCKDEV_BACKUP:
        return backup_action(act->u.blockdev_backup.data, txn, tran, errp);
    case TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT:
        return snapshot_action(act->u.blockdev_snapshot.data, tran, errp);
    default:
        error_setg(errp, "Unsupported transaction action '%s'",
                   TransactionActionKind_str(act->type));
        return -ENOTSUP;
    }
}

void qmp_transaction(q_obj_transaction_arg *arg, GError **errp)
{
    bool grouped = arg->properties && arg->properties->has_completion_mode &&
                   arg->properties->completion_mode ==
                       ACTION_COMPLETION_MODE_GROUPED;
    JobTxn *txn = grouped ? job_txn_new() : NULL;
    Transaction *tran = tran_new();
    int ret = 0;

    /* Everything below must see a stable graph while actions stack up. */
    bdrv_drain_all_begin();
    /* running jobs reach their pause point now, as QEMU enters them */
    backup_let_jobs_start();
    for (TransactionActionList *l = arg->actions; l; l = l->next) {
        const TransactionAction *act = l->value;
        if (grouped && !supports_grouped(act->type)) {
            error_setg(errp,
                       "Action '%s' does not support Transaction property "
                       "completion-mode = %s",
                       TransactionActionKind_str(act->type),
                       ActionCompletionMode_str(
                           arg->properties->completion_mode));
            ret = -ENOTSUP;
            break;
        }
        ret = prepare_action(act, txn, tran, errp);
        if (ret < 0) {
            break;
        }
    }
    /* Jobs start (commit) still drained, as in QEMU: they pause at their
     * first pause point until the drain ends. */
    tran_finalize(tran, ret);
    bdrv_drain_all_end();
    if (txn) {
        job_txn_unref(txn);
    }
}

/* Placeholder until the transaction owner lands it (session 2). */
void qmp_blockdev_snapshot_sync(BlockdevSnapshotSync *arg, GError **errp)
{
    (void)arg;
    error_setg(errp, "blockdev-snapshot-sync is not implemented yet");
}
