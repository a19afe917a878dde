/*
 * QMP internal snapshots (qcow2): blockdev-snapshot-internal-sync (also a
 * transaction action, block/qmp-transaction.c) and
 * blockdev-snapshot-delete-internal-sync, with qemu-storage-daemon 7.2's
 * checks, their order and their words.  The image work is in
 * block/drivers/qcow2-snapshot.c.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "block/jobs/blockjob.h"
#include "block/qmp-snapshot-internal.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"
#include "util/transaction.h"

/*
 * The node that keeps the snapshots: bs itself if it is qcow2, else, as
 * QEMU's bdrv_snapshot_fallback(), the node below one whose only child
 * is its file or backing child (raw, filters).  NULL: none can.
 */
BlockDriverState *qmp_internal_snapshot_node(BlockDriverState *bs)
{
    while (bs && bs->drv && bs->drv->driver != BLOCKDEV_DRIVER_QCOW2) {
        BdrvChild *c, *only = NULL;
        int n = 0;
        LIST_FOREACH (c, &bs->children, next) {
            only = c;
            n++;
        }
        if (n != 1 || (only != bs->file && only != bs->backing)) {
            return NULL;
        }
        bs = only->bs;
    }
    return bs && bs->drv ? bs : NULL;
}

/* ---- create (a transaction action) ---- */

typedef struct InternalSnapshotUndo {
    BlockDriverState *bs; /* the qcow2 node */
    char *id, *name;
} InternalSnapshotUndo;

static void internal_snapshot_abort(void *opaque)
{
    InternalSnapshotUndo *u = opaque;
    g_autoptr(GError) err = NULL;
    /* a snapshot taken by an action of a failed transaction goes again */
    if (qcow2_snapshot_delete(u->bs, u->id, u->name, &err) < 0) {
        warn_report("Failed to delete snapshot with id '%s' and name '%s' "
                    "on device '%s': %s",
                    u->id, u->name, bdrv_get_node_name(u->bs), err->message);
    }
}

static void internal_snapshot_clean(void *opaque)
{
    InternalSnapshotUndo *u = opaque;
    bdrv_unref(u->bs);
    g_free(u->id);
    g_free(u->name);
    g_free(u);
}

static const TransactionActionDrv internal_snapshot_drv = {
    .abort = internal_snapshot_abort,
    .clean = internal_snapshot_clean,
};

int coroutine_fn qmp_internal_snapshot_action(
    const BlockdevSnapshotInternal *arg, Transaction *tran, GError **errp)
{
    const char *device = arg->device;
    BlockDriverState *bs = bdrv_lookup_root_bs(device, errp);
    if (!bs) {
        return -ENOENT;
    }
    if (block_job_node_busy(bs, errp)) {
        return -EBUSY;
    }
    if (bdrv_is_read_only(bs)) {
        error_setg(errp, "Device '%s' is read only", device);
        return -EPERM;
    }
    BlockDriverState *target = qmp_internal_snapshot_node(bs);
    if (!target || bdrv_is_read_only(target)) {
        error_setg(errp, "Block format '%s' used by device '%s' does not "
                         "support internal snapshots",
                   bdrv_get_format_name(bs), device);
        return -ENOTSUP;
    }
    if (!arg->name[0]) {
        error_setg(errp, "Name is empty");
        return -EINVAL;
    }
    BDRVQcow2State *s = target->opaque;
    if (qcow2_snapshot_find(s->snapshots, s->nb_snapshots, NULL, arg->name) >=
        0) {
        error_setg(errp, "Snapshot with name '%s' already exists on device "
                         "'%s'",
                   arg->name, device);
        return -EEXIST;
    }

    /* QEMU keeps names in a 256-byte buffer; the virtual clock of
     * qemu-storage-daemon (no guest) is the real time clock */
    Qcow2Snapshot sn = {0};
    sn.name = g_strndup(arg->name, 255);
    int64_t rt = g_get_real_time();
    sn.date_sec = (uint32_t)(rt / G_USEC_PER_SEC);
    sn.date_nsec = (uint32_t)((rt % G_USEC_PER_SEC) * 1000);
    sn.vm_clock_nsec = (uint64_t)g_get_real_time() * 1000;
    sn.has_icount = false;
    char *id = NULL;
    int ret = qcow2_snapshot_create(target, &sn, &id);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to create snapshot '%s' on "
                                     "device '%s'",
                         arg->name, device);
        g_free(sn.name);
        return ret;
    }
    InternalSnapshotUndo *u = g_new0(InternalSnapshotUndo, 1);
    u->bs = target;
    bdrv_ref(target);
    u->id = id;
    u->name = sn.name;
    tran_add(tran, &internal_snapshot_drv, u);
    return 0;
}

void qmp_blockdev_snapshot_internal_sync(BlockdevSnapshotInternal *arg,
                                         GError **errp)
{
    TransactionAction act = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_INTERNAL_SYNC};
    act.u.blockdev_snapshot_internal_sync.data = arg;
    TransactionActionList list = {.next = NULL, .value = &act};
    q_obj_transaction_arg targ = {.actions = &list};
    qmp_transaction(&targ, errp);
}

/* ---- delete ---- */

SnapshotInfo *qmp_blockdev_snapshot_delete_internal_sync(
    q_obj_blockdev_snapshot_delete_internal_sync_arg *arg, GError **errp)
{
    const char *device = arg->device;
    const char *id = arg->has_id ? arg->id : NULL;
    const char *name = arg->has_name ? arg->name : NULL;
    BlockDriverState *bs = bdrv_lookup_root_bs(device, errp);
    if (!bs) {
        return NULL;
    }
    if (!id && !name) {
        error_setg(errp, "Name or id must be provided");
        return NULL;
    }
    if (block_job_node_busy(bs, errp)) {
        return NULL;
    }
    BlockDriverState *target = qmp_internal_snapshot_node(bs);
    if (!target) {
        error_setg_errno(errp, ENOTSUP, "Failed to get a snapshot list");
        return NULL;
    }
    BDRVQcow2State *s = target->opaque;
    int idx = qcow2_snapshot_find(s->snapshots, s->nb_snapshots, id, name);
    if (idx < 0) {
        error_setg(errp, "Snapshot with id '%s' and name '%s' does not exist "
                         "on device '%s'",
                   id ? id : "null", name ? name : "null", device);
        return NULL;
    }
    Qcow2Snapshot *sn = &s->snapshots[idx];
    SnapshotInfo *info = qcow2_snapshot_info(sn);

    bdrv_ref(target);
    bdrv_drain_all_begin();
    int ret = qcow2_snapshot_delete(target, id, name, errp);
    bdrv_drain_all_end();
    bdrv_unref(target);
    if (ret < 0) {
        qapi_free_SnapshotInfo(info);
        return NULL;
    }
    return info;
}
