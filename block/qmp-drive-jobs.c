/*
 * drive-backup and drive-mirror: the filename-based forms of
 * blockdev-backup and blockdev-mirror that qemu-storage-daemon 7.2 still
 * has.  The target image is created (unless mode=existing: format
 * defaulting to the source's, the source's size, a backing file where the
 * sync mode leaves the rest of the data in the source's chain), opened as
 * a new node (drive-mirror's `node-name` names it, else it is anonymous)
 * and handed to the existing job engine, which then holds the only
 * reference: the node goes away when the job ends (or takes the source's
 * place after a completed mirror).  The checks, their order and their
 * words are QEMU's; a file created before a later check fails stays on
 * disk, as in QEMU.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "block/jobs/backup.h"
#include "block/jobs/blockjob.h"
#include "block/jobs/mirror.h"
#include "block/qmp-drive-jobs.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

/* ---- the target image ---- */

/*
 * QEMU's bdrv_img_create(filename, fmt, backing file name and format,
 * size) as the two commands call it: the checks in its order and words,
 * and its "Formatting ..." line on stdout (the daemon is not quiet).
 * backing NULL: an image without backing file.
 */
static int coroutine_fn create_image(const char *filename, const char *fmt,
                                     BlockDriverState *backing, int64_t size,
                                     GError **errp)
{
    const BlockDriver *drv = bdrv_find_format(fmt);
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    bool is_qcow2 = drv->driver == BLOCKDEV_DRIVER_QCOW2;
    bool is_plain = drv->driver == BLOCKDEV_DRIVER_RAW ||
                    drv->driver == BLOCKDEV_DRIVER_FILE;
    if (!is_qcow2 && !is_plain) {
        error_setg(errp, "Format driver '%s' does not support image creation",
                   fmt);
        return -ENOTSUP;
    }
    const char *backing_file = backing ? backing->filename : NULL;
    const char *backing_fmt = backing ? bdrv_get_format_name(backing) : NULL;
    if (backing_file && !strcmp(filename, backing_file)) {
        error_setg(errp, "Error: Trying to create an image with the same "
                         "filename as the backing file");
        return -EINVAL;
    }
    if (backing_file && !is_qcow2) {
        error_setg(errp, "Backing file not supported for file format '%s'",
                   fmt);
        return -ENOTSUP;
    }
    if (backing_file && !backing_file[0]) {
        error_setg(errp, "Expected backing file name, got empty string");
        return -EINVAL;
    }

    if (is_plain) {
        printf("Formatting '%s', fmt=%s size=%" PRId64 "\n", filename, fmt,
               size);
        fflush(stdout);
        BlockdevCreateOptions opts = {.driver = BLOCKDEV_DRIVER_FILE};
        opts.u.file.filename = (char *)filename;
        opts.u.file.size = (uint64_t)size;
        return bdrv_find_format("file")->bdrv_co_create(&opts, errp);
    }
    if (backing_file) {
        printf("Formatting '%s', fmt=qcow2 cluster_size=65536 "
               "extended_l2=off compression_type=zlib size=%" PRId64
               " backing_file=%s backing_fmt=%s lazy_refcounts=off "
               "refcount_bits=16\n",
               filename, size, backing_file, backing_fmt);
    } else {
        printf("Formatting '%s', fmt=qcow2 cluster_size=65536 "
               "extended_l2=off compression_type=zlib size=%" PRId64
               " lazy_refcounts=off refcount_bits=16\n",
               filename, size);
    }
    fflush(stdout);
    Qcow2CreateParams p = {
        .size = (uint64_t)size,
        .backing_file = backing_file,
        .backing_fmt = backing_fmt,
    };
    return qcow2_co_create_image(filename, &p, errp);
}

/*
 * QEMU's bdrv_open(filename, {driver: fmt, ...}, source's flags | RDWR):
 * the format over a `file` node, writable, with the source's cache and
 * auto-read-only settings.  no_backing: the backing file the header
 * names stays unopened (the job gives the target its backing node).
 * For drive-backup, discard and detect-zeroes are "unmap" as QEMU sets
 * them; drive-mirror inherits the source's discard setting.
 */
static BlockDriverState *coroutine_fn open_target(const char *filename,
                                                  const char *fmt,
                                                  const char *node_name,
                                                  BlockDriverState *src,
                                                  bool no_backing,
                                                  bool for_backup,
                                                  GError **errp)
{
    if (!fmt) {
        fmt = bdrv_probe_format(filename);
    }
    JsonObject *o = bdrv_image_open_options(filename, fmt, node_name, src,
                                            no_backing, errp);
    if (!o) {
        return NULL;
    }
    json_object_set_boolean_member(o, "read-only", false);
    if (for_backup) {
        json_object_set_string_member(o, "discard", "unmap");
        json_object_set_string_member(o, "detect-zeroes", "unmap");
    }
    return bdrv_co_open_object(o, errp);
}

/* ---- drive-backup ---- */

/* blockdev-backup's arguments for the target node (the common part is
 * the same; strings are borrowed). */
static void backup_args(const DriveBackup *d, MirrorSyncMode sync,
                        BlockDriverState *target, BlockdevBackup *b)
{
    memset(b, 0, sizeof(*b));
    b->has_job_id = d->has_job_id;
    b->job_id = d->job_id;
    b->device = d->device;
    b->sync = sync;
    b->has_speed = d->has_speed;
    b->speed = d->speed;
    b->has_bitmap = d->has_bitmap;
    b->bitmap = d->bitmap;
    b->has_bitmap_mode = d->has_bitmap_mode;
    b->bitmap_mode = d->bitmap_mode;
    b->has_compress = d->has_compress;
    b->compress = d->compress;
    b->has_on_source_error = d->has_on_source_error;
    b->on_source_error = d->on_source_error;
    b->has_on_target_error = d->has_on_target_error;
    b->on_target_error = d->on_target_error;
    b->has_auto_finalize = d->has_auto_finalize;
    b->auto_finalize = d->auto_finalize;
    b->has_auto_dismiss = d->has_auto_dismiss;
    b->auto_dismiss = d->auto_dismiss;
    b->has_filter_node_name = d->has_filter_node_name;
    b->filter_node_name = d->filter_node_name;
    b->has_x_perf = d->has_x_perf;
    b->x_perf = d->x_perf;
    /* the new node's generated name finds it (it has no other) */
    b->target = target->node_name;
}

static void drive_backup_commit(void *opaque)
{
    BlockJob *job = opaque;
    job_start(&job->job);
    /* QEMU enters each job as it starts it */
    backup_let_jobs_start();
}

static void drive_backup_abort(void *opaque)
{
    /* the job held the only reference to the target node */
    backup_job_discard_unstarted(opaque);
}

static const TransactionActionDrv drive_backup_drv = {
    .commit = drive_backup_commit,
    .abort = drive_backup_abort,
};

/*
 * QEMU's drive_backup_prepare.  sync=top: the new image gets the source's
 * backing file (opened with it, as separate nodes); without one it is a
 * full backup.  sync=none: the image names the source itself, whose node
 * becomes the target's backing node.  full, bitmap and incremental: an
 * image without backing file.
 */
int coroutine_fn qmp_drive_backup_action(const DriveBackup *arg, JobTxn *txn,
                                         Transaction *tran, GError **errp)
{
    NewImageMode mode =
        arg->has_mode ? arg->mode : NEW_IMAGE_MODE_ABSOLUTE_PATHS;
    BlockDriverState *bs = bdrv_lookup_bs(arg->device, arg->device, errp);
    if (!bs) {
        return -ENOENT;
    }
    if (!bs->drv) {
        error_setg(errp, "Device has no medium");
        return -ENOMEDIUM;
    }
    const char *format = arg->has_format ? arg->format
                         : mode == NEW_IMAGE_MODE_EXISTING
                             ? NULL
                             : bdrv_get_format_name(bs);
    /* early check, before a target is created */
    if (block_job_node_busy(bs, errp)) {
        return -EBUSY;
    }

    MirrorSyncMode sync = arg->sync;
    BlockDriverState *source = NULL;
    bool set_backing = false;
    if (sync == MIRROR_SYNC_MODE_TOP) {
        BlockDriverState *unfiltered = bdrv_skip_filters(bs);
        source = unfiltered ? bdrv_backing_bs(unfiltered) : NULL;
        if (!source) {
            sync = MIRROR_SYNC_MODE_FULL;
        }
    }
    if (sync == MIRROR_SYNC_MODE_NONE) {
        source = bs;
        set_backing = true;
    }
    int64_t size = bdrv_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "bdrv_getlength failed");
        return (int)size;
    }
    if (mode != NEW_IMAGE_MODE_EXISTING) {
        int ret = create_image(arg->target, format,
                               bdrv_skip_implicit_filters(source), size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    BlockDriverState *target = open_target(arg->target, format, NULL, bs,
                                           set_backing, true, errp);
    if (!target) {
        return -EINVAL;
    }
    if (set_backing && bdrv_set_backing_hd(target, bs, errp) < 0) {
        bdrv_unref(target);
        return -EPERM;
    }
    if (set_backing) {
        bdrv_refresh_filenames_up(target);
    }

    BlockdevBackup b;
    backup_args(arg, sync, target, &b);
    BlockJob *job = backup_job_create_qmp(&b, txn, errp);
    /* from here the job (or, failing, nobody) holds the target */
    bdrv_unref(target);
    if (!job) {
        return -EINVAL;
    }
    tran_add(tran, &drive_backup_drv, job);
    return 0;
}

void qmp_drive_backup(DriveBackup *arg, GError **errp)
{
    /* As QEMU: a transaction of one action (drained, same checks). */
    TransactionAction act = {.type = TRANSACTION_ACTION_KIND_DRIVE_BACKUP};
    act.u.drive_backup.data = arg;
    TransactionActionList list = {.next = NULL, .value = &act};
    q_obj_transaction_arg targ = {.actions = &list};
    qmp_transaction(&targ, errp);
}

/* ---- drive-mirror ---- */

/*
 * QEMU's qmp_drive_mirror.  The new image has no backing file for
 * sync=full (or a source without one); for sync=top it names the source's
 * backing file and for sync=none the source, and the target is opened
 * without backing node: the job gives it that node at its end
 * (MIRROR_SOURCE_BACKING_CHAIN).  An existing target is opened with the
 * backing chain its header names.
 */
void qmp_drive_mirror(DriveMirror *arg, GError **errp)
{
    BlockDriverState *bs = bdrv_lookup_root_bs(arg->device, errp);
    if (!bs) {
        return;
    }
    /* early check, before a target is created */
    if (block_job_node_busy(bs, errp)) {
        return;
    }
    NewImageMode mode =
        arg->has_mode ? arg->mode : NEW_IMAGE_MODE_ABSOLUTE_PATHS;
    const char *format = arg->has_format ? arg->format
                         : mode == NEW_IMAGE_MODE_EXISTING
                             ? NULL
                             : bdrv_get_format_name(bs);
    MirrorSyncMode sync = arg->sync;
    BlockDriverState *unfiltered = bdrv_skip_filters(bs);
    BlockDriverState *target_backing =
        unfiltered ? bdrv_backing_bs(unfiltered) : NULL;
    if (!target_backing && sync == MIRROR_SYNC_MODE_TOP) {
        sync = MIRROR_SYNC_MODE_FULL;
    }
    if (sync == MIRROR_SYNC_MODE_NONE) {
        target_backing = bs;
    }
    int64_t size = bdrv_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "bdrv_getlength failed");
        return;
    }
    if (arg->has_replaces && !arg->has_node_name) {
        error_setg(errp, "a node-name must be provided when replacing a "
                         "named node of the graph");
        return;
    }
    if (mode != NEW_IMAGE_MODE_EXISTING) {
        BlockDriverState *backing =
            sync == MIRROR_SYNC_MODE_FULL || !target_backing
                ? NULL
                : bdrv_skip_implicit_filters(target_backing);
        if (create_image(arg->target, format, backing, size, errp) < 0) {
            return;
        }
    }
    BlockDriverState *target = open_target(
        arg->target, format, arg->has_node_name ? arg->node_name : NULL, bs,
        mode != NEW_IMAGE_MODE_EXISTING, false, errp);
    if (!target) {
        return;
    }

    q_obj_blockdev_mirror_arg m = {
        .has_job_id = arg->has_job_id,
        .job_id = arg->job_id,
        .device = arg->device,
        .target = target->node_name,
        .has_replaces = arg->has_replaces,
        .replaces = arg->replaces,
        .sync = sync,
        .has_speed = arg->has_speed,
        .speed = arg->speed,
        .has_granularity = arg->has_granularity,
        .granularity = arg->granularity,
        .has_buf_size = arg->has_buf_size,
        .buf_size = arg->buf_size,
        .has_on_source_error = arg->has_on_source_error,
        .on_source_error = arg->on_source_error,
        .has_on_target_error = arg->has_on_target_error,
        .on_target_error = arg->on_target_error,
        .has_copy_mode = arg->has_copy_mode,
        .copy_mode = arg->copy_mode,
        .has_auto_finalize = arg->has_auto_finalize,
        .auto_finalize = arg->auto_finalize,
        .has_auto_dismiss = arg->has_auto_dismiss,
        .auto_dismiss = arg->auto_dismiss,
    };
    mirror_start_qmp(&m,
                     target,
                     mode == NEW_IMAGE_MODE_EXISTING
                         ? MIRROR_LEAVE_BACKING_CHAIN
                         : MIRROR_SOURCE_BACKING_CHAIN,
                     errp);
    /* the job (or, failing, nobody) holds the target now */
    bdrv_unref(target);
}
