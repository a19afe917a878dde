/*
 * QMP `transaction`: prepare every action (each does its work and
 * registers its undo on one Transaction), then commit all, or abort all
 * in reverse order if one failed, so a failing action leaves no trace of
 * the others.  Also blockdev-snapshot and blockdev-snapshot-sync, which
 * run as a transaction of one action.
 *
 * Backup jobs are created (filter inserted, bitmap frozen) in prepare and
 * started in commit; with completion-mode grouped they share one JobTxn
 * and finish (or fail) together.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "block/jobs/backup.h"
#include "block/jobs/blockjob.h"
#include "block/qmp-dirty-bitmap.h"
#include "block/qmp-drive-jobs.h"
#include "block/qmp-snapshot-internal.h"
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

/* ---- blockdev-snapshot(-sync): an overlay goes on top of a node ---- */

/*
 * Both commands are QEMU's external snapshot: the node to snapshot must not
 * be busy, is flushed, then the overlay (an existing node, or a new image
 * created and opened here) gets it as backing file and takes over all its
 * parents.  Undo moves the parents back and drops the backing link; a new
 * overlay is closed again in clean (its file stays, as in QEMU).
 */
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
    bdrv_refresh_filenames_up(u->new_bs);
    bdrv_refresh_filenames_up(u->old_bs);
}

static void snapshot_clean(void *opaque)
{
    SnapshotUndo *u = opaque;
    bdrv_unref(u->old_bs);
    /* the last reference of an overlay nobody took over (a created
     * overlay after an abort, or a node without parents): closed now */
    bdrv_unref(u->new_bs);
    g_free(u);
}

/*
 * The old node is a backing file now: QEMU reopens it read-only when the
 * snapshot commits (and ignores a failure, leaving it as it was).  Here
 * bdrv_co_reopen_set_read_only(): a blockdev-reopen of the node with its
 * options as they are, but read-only, and its children as they are now (a
 * backing node set at run time is kept; inline children are reopened with
 * it and inherit read-only, as in QEMU).
 */
static void coroutine_fn snapshot_make_read_only(BlockDriverState *bs)
{
    if (bdrv_is_read_only(bs) || !bs->options || !bs->node_name[0]) {
        return;
    }
    g_autoptr(GError) err = NULL;
    if (bdrv_co_reopen_set_read_only(bs, true, &err) < 0) {
        warn_report("blockdev-snapshot: '%s' stays writable: %s",
                    bs->node_name, err->message);
    }
}

static void snapshot_commit(void *opaque)
{
    SnapshotUndo *u = opaque;
    snapshot_make_read_only(u->old_bs);
}

static const TransactionActionDrv snapshot_action_drv = {
    .commit = snapshot_commit,
    .abort = snapshot_abort,
    .clean = snapshot_clean,
};

/* The node to snapshot: found, not busy, flushed (QEMU's order). */
static BlockDriverState *coroutine_fn snapshot_old_bs(const char *device,
                                                      const char *node_name,
                                                      GError **errp)
{
    BlockDriverState *old_bs = bdrv_lookup_bs(device, node_name, errp);
    if (!old_bs) {
        return NULL;
    }
    /* QEMU's op blockers: a job's nodes and backing nodes.  QEMU names
     * the newest blocker, and a job's comes after the backing link it
     * works on. */
    BlockJob *job = block_job_find_by_node(old_bs);
    if (job) {
        error_setg(errp, "Node '%s' is busy: block device is in use by block "
                         "job: %s",
                   bdrv_get_node_name(old_bs), job_type_str(&job->job));
        return NULL;
    }
    const char *user = bdrv_backing_user(old_bs);
    if (user) {
        error_setg(errp, "Node '%s' is busy: node is used as backing hd of "
                         "'%s'", bdrv_get_node_name(old_bs), user);
        return NULL;
    }
    if (!bdrv_is_read_only(old_bs)) {
        int ret = bdrv_co_flush(old_bs);
        if (ret < 0) {
            error_setg(errp, "An IO error has occurred");
            return NULL;
        }
    }
    return old_bs;
}

/*
 * Put new_bs on top of old_bs: new_bs gets old_bs as backing file and all
 * parents of old_bs.  On success the undo (registered on tran) holds a
 * reference to both.
 */
static int snapshot_insert(BlockDriverState *old_bs, BlockDriverState *new_bs,
                           Transaction *tran, GError **errp)
{
    /* An overlay in use may get a backing file only if none of its users
     * expects a valid image yet (a mirror target writes, never reads). */
    if (new_bs->perm & BLK_PERM_CONSISTENT_READ) {
        error_setg(errp, "The overlay is already in use");
        return -EBUSY;
    }
    if (new_bs->drv->is_filter) {
        error_setg(errp, "Filters cannot be used as overlays");
        return -EINVAL;
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
    bdrv_refresh_filenames_up(new_bs);
    SnapshotUndo *u = g_new0(SnapshotUndo, 1);
    u->old_bs = old_bs;
    u->new_bs = new_bs;
    bdrv_ref(old_bs);
    bdrv_ref(new_bs);
    tran_add(tran, &snapshot_action_drv, u);
    return 0;
}

static int coroutine_fn snapshot_action(const BlockdevSnapshot *arg,
                                        Transaction *tran, GError **errp)
{
    BlockDriverState *old_bs = snapshot_old_bs(arg->node, arg->node, errp);
    if (!old_bs) {
        return -EINVAL;
    }
    BlockDriverState *new_bs =
        bdrv_lookup_bs(arg->overlay, arg->overlay, errp);
    if (!new_bs) {
        return -ENOENT;
    }
    return snapshot_insert(old_bs, new_bs, tran, errp);
}

/*
 * QEMU's bdrv_img_create() for a new overlay: `fmt` over a new file of
 * old_bs's size, old_bs's file name and format in its header.  Only
 * formats with image creation and backing files can do that; the checks
 * and their words are qemu-storage-daemon's.
 */
static int coroutine_fn snapshot_create_image(const char *filename,
                                              const char *fmt,
                                              BlockDriverState *old_bs,
                                              GError **errp)
{
    const BlockDriver *drv = bdrv_find_format(fmt);
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    switch (drv->driver) {
    case BLOCKDEV_DRIVER_QCOW2:
        break;
    case BLOCKDEV_DRIVER_RAW:
    case BLOCKDEV_DRIVER_FILE:
        /* they create images, but have no backing file option */
        error_setg(errp, "Backing file not supported for file format '%s'",
                   fmt);
        return -ENOTSUP;
    default:
        error_setg(errp, "Format driver '%s' does not support image creation",
                   fmt);
        return -ENOTSUP;
    }
    const char *backing = old_bs->filename;
    if (!strcmp(filename, backing)) {
        error_setg(errp, "Error: Trying to create an image with the same "
                         "filename as the backing file");
        return -EINVAL;
    }
    if (!backing[0]) {
        error_setg(errp, "Expected backing file name, got empty string");
        return -EINVAL;
    }
    int64_t size = bdrv_getlength(old_bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "bdrv_getlength failed");
        return (int)size;
    }
    Qcow2CreateParams p = {
        .size = (uint64_t)size,
        .backing_file = backing,
        .backing_fmt = bdrv_get_format_name(old_bs),
    };
    return qcow2_co_create_image(filename, &p, errp);
}

/*
 * Open the overlay image as QEMU's bdrv_open(filename, {driver: fmt,
 * node-name}, flags of old_bs without backing) does: the format over a
 * `file` node, with old_bs's read-only, cache and discard settings, and
 * its backing file left unopened (old_bs becomes the backing).
 */
static BlockDriverState *coroutine_fn snapshot_open_overlay(
    const char *filename, const char *fmt, const char *node_name,
    BlockDriverState *old_bs, GError **errp)
{
    JsonObject *o =
        bdrv_image_open_options(filename, fmt, node_name, old_bs, true, errp);
    return o ? bdrv_co_open_object(o, errp) : NULL;
}

static int coroutine_fn snapshot_sync_action(const BlockdevSnapshotSync *arg,
                                             Transaction *tran, GError **errp)
{
    const char *node_name = arg->has_node_name ? arg->node_name : NULL;
    const char *snap_name =
        arg->has_snapshot_node_name ? arg->snapshot_node_name : NULL;
    const char *fmt = arg->has_format ? arg->format : "qcow2";
    NewImageMode mode =
        arg->has_mode ? arg->mode : NEW_IMAGE_MODE_ABSOLUTE_PATHS;

    BlockDriverState *old_bs = snapshot_old_bs(
        arg->has_device ? arg->device : NULL, node_name, errp);
    if (!old_bs) {
        return -EINVAL;
    }
    if (node_name && !snap_name) {
        error_setg(errp, "New overlay node-name missing");
        return -EINVAL;
    }
    if (snap_name && bdrv_find_node(snap_name)) {
        error_setg(errp, "New overlay node-name already in use");
        return -EEXIST;
    }
    if (mode != NEW_IMAGE_MODE_EXISTING) {
        int ret = snapshot_create_image(arg->snapshot_file, fmt, old_bs, errp);
        if (ret < 0) {
            return ret;
        }
    }
    BlockDriverState *new_bs = snapshot_open_overlay(
        arg->snapshot_file, fmt, snap_name, old_bs, errp);
    if (!new_bs) {
        return -EINVAL;
    }
    int ret = snapshot_insert(old_bs, new_bs, tran, errp);
    /* from here the undo (or, failing, nobody) holds the overlay */
    bdrv_unref(new_bs);
    return ret;
}

/* ---- the transaction ---- */

static bool supports_grouped(TransactionActionKind kind)
{
    /* QEMU refuses grouped completion for the bitmap and snapshot
     * actions (they have no job to group); backup takes part. */
    switch (kind) {
    case TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT:
    case TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC:
    case TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_INTERNAL_SYNC:
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
    case TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC:
        return snapshot_sync_action(act->u.blockdev_snapshot_sync.data, tran,
                                    errp);
    case TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_INTERNAL_SYNC:
        return qmp_internal_snapshot_action(
            act->u.blockdev_snapshot_internal_sync.data, tran, errp);
    case TRANSACTION_ACTION_KIND_DRIVE_BACKUP:
        return qmp_drive_backup_action(act->u.drive_backup.data, txn, tran,
                                       errp);
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

/* The commands that are also actions run as a transaction of one, as in
 * QEMU (drained, same checks). */
static void run_one_action(TransactionAction *act, GError **errp)
{
    TransactionActionList list = {.next = NULL, .value = act};
    q_obj_transaction_arg arg = {.actions = &list};
    qmp_transaction(&arg, errp);
}

void qmp_blockdev_snapshot(BlockdevSnapshot *arg, GError **errp)
{
    TransactionAction act = {.type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT};
    act.u.blockdev_snapshot.data = arg;
    run_one_action(&act, errp);
}

void qmp_blockdev_snapshot_sync(BlockdevSnapshotSync *arg, GError **errp)
{
    TransactionAction act = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC};
    act.u.blockdev_snapshot_sync.data = arg;
    run_one_action(&act, errp);
}
