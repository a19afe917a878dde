/*
 * blockdev-backup (see backup.h).  Argument checks and messages follow
 * qemu-storage-daemon 7.2.
 *
 * Bitmaps: with a sync bitmap, the bitmap is frozen with a successor at
 * creation (new writes go to the successor).  At the end, per
 * bitmap-mode: on-success (and always) on success hands the name to the
 * successor (the copied bits are dropped); never, or a failure with
 * on-success, merges the successor back (nothing lost); always on a
 * failure also hands over, then sets again every bit not yet copied.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "block/drivers/copy-before-write.h"
#include "block/jobs/backup.h"
#include "block/jobs/block-copy.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"
#include "util/error.h"

typedef struct BackupJob {
    BlockJob common;
    BlockDriverState *cbw;    /* the filter above the source */
    BlockDriverState *target;
    BlockCopyState *bcs;      /* the filter's copier */
    MirrorSyncMode sync;
    BdrvDirtyBitmap *sync_bitmap; /* frozen, with a successor */
    BitmapSyncMode bitmap_mode;
    BlockdevOnError on_source_error, on_target_error;
    int64_t len;
} BackupJob;

static void backup_progress(void *opaque, int64_t bytes, bool skipped)
{
    BackupJob *s = opaque;
    (void)skipped;
    job_progress_update(&s->common.job, (uint64_t)bytes);
}

static bool backup_should_stop(void *opaque)
{
    BackupJob *s = opaque;
    return job_is_cancelled(&s->common.job);
}

static void coroutine_fn backup_pause_point(void *opaque)
{
    BackupJob *s = opaque;
    job_pause_point(&s->common.job);
}

/* Only when there is a chunk to copy does the speed make the job wait
 * (a job whose last chunk is done finishes at once, as QEMU's). */
static bool backup_must_wait(void *opaque)
{
    BackupJob *s = opaque;
    return ratelimit_delay(&s->common.limit, clock_ns()) > 0;
}

static void coroutine_fn backup_wait(void *opaque)
{
    BackupJob *s = opaque;
    block_job_ratelimit_sleep(&s->common);
}

static void backup_chunk_started(void *opaque, int64_t bytes)
{
    BackupJob *s = opaque;
    /* accounted when it starts, so the speed bounds what is in flight */
    block_job_ratelimit_processed_bytes(&s->common, (uint64_t)bytes);
}

static const BlockCopyRunOps backup_run_ops = {
    .should_stop = backup_should_stop,
    .pause_point = backup_pause_point,
    .must_wait = backup_must_wait,
    .wait = backup_wait,
    .chunk_started = backup_chunk_started,
};

static int coroutine_fn backup_run(Job *job, GError **errp)
{
    BackupJob *s = (BackupJob *)job;
    int ret;

    if (s->sync == MIRROR_SYNC_MODE_TOP) {
        /* only what the top layer itself holds is copied */
        block_copy_set_skip_unallocated(s->bcs, true);
        for (int64_t off = 0; off < s->len;) {
            job_pause_point(job);
            if (job_is_cancelled(job)) {
                return 0;
            }
            int64_t n = block_copy_reset_unallocated(s->bcs, off);
            if (n < 0) {
                error_setg_errno(errp, (int)-n, "Could not inspect '%s'",
                                 bdrv_get_node_name(s->cbw->file->bs));
                return (int)n;
            }
            off += n;
        }
    }
    job_progress_set_remaining(job, (uint64_t)block_copy_dirty_bytes(s->bcs));

    if (s->sync == MIRROR_SYNC_MODE_NONE) {
        /* Only the filter copies, before guest writes, until cancelled. */
        while (!job_is_cancelled(job)) {
            job_yield(job);
        }
        return 0;
    }

    for (;;) {
        bool is_read = false;
        ret = block_copy_run(s->bcs, &backup_run_ops, s, &is_read);
        if (ret == 0 || job_is_cancelled(job)) {
            return 0;
        }
        BlockErrorAction act = block_job_error_action(
            &s->common, is_read ? s->on_source_error : s->on_target_error,
            is_read, -ret);
        if (act == BLOCK_ERROR_ACTION_REPORT) {
            error_setg_errno(errp, -ret, "%s",
                             is_read ? "Could not read source"
                                     : "Could not write target");
            /* The job's error string is strerror, as QEMU's. */
            g_clear_error(errp);
            return ret;
        }
        /* stop: the job is paused now, go on after job-resume; ignore:
         * try the remaining clusters again */
        job_pause_point(job);
        if (job_is_cancelled(job)) {
            return 0;
        }
    }
}

/* Set every cluster not yet copied in bm (bitmap-mode always, failed). */
static void merge_uncopied(BackupJob *s, BdrvDirtyBitmap *bm)
{
    int64_t cs = block_copy_cluster_size(s->bcs);
    for (int64_t off = 0; off < s->len; off += cs) {
        if (!block_copy_range_clean(s->bcs, off, cs)) {
            bdrv_set_dirty_bitmap(bm, off, MIN(cs, s->len - off));
        }
    }
}

static void backup_cleanup_sync_bitmap(BackupJob *s, int ret)
{
    if (!s->sync_bitmap) {
        return;
    }
    bool sync = (ret == 0 || s->bitmap_mode == BITMAP_SYNC_MODE_ALWAYS) &&
                s->bitmap_mode != BITMAP_SYNC_MODE_NEVER;
    BdrvDirtyBitmap *bm;
    if (sync) {
        bm = bdrv_dirty_bitmap_abdicate(s->sync_bitmap, NULL);
    } else {
        bm = bdrv_reclaim_dirty_bitmap(s->sync_bitmap, NULL);
    }
    if (bm && ret < 0 && s->bitmap_mode == BITMAP_SYNC_MODE_ALWAYS) {
        merge_uncopied(s, bm);
    }
    s->sync_bitmap = NULL;
}

static void backup_commit(Job *job)
{
    backup_cleanup_sync_bitmap((BackupJob *)job, 0);
}

static void backup_abort(Job *job)
{
    backup_cleanup_sync_bitmap((BackupJob *)job, -1);
}

static void backup_clean(Job *job)
{
    BackupJob *s = (BackupJob *)job;
    block_job_remove_all_bdrv(&s->common);
    if (s->cbw) {
        BlockDriverState *cbw = s->cbw;
        s->cbw = NULL;
        s->bcs = NULL;
        bdrv_cbw_drop(cbw);
    }
}

static bool backup_drained_poll(Job *job)
{
    BackupJob *s = (BackupJob *)job;
    return s->bcs && block_copy_in_flight(s->bcs) > 0;
}

static const BlockJobDriver backup_job_driver = {
    .job_driver = {
        .instance_size = sizeof(BackupJob),
        .job_type = JOB_TYPE_BACKUP,
        .run = backup_run,
        .commit = backup_commit,
        .abort = backup_abort,
        .clean = backup_clean,
        .drained_poll = backup_drained_poll,
    },
};

void backup_job_discard_unstarted(BlockJob *job)
{
    /* As QEMU: a cancel of a job never started runs abort (the bitmap is
     * reclaimed) and clean (the filter goes), created -> aborting ->
     * concluded -> null, without BLOCK_JOB_CANCELLED. */
    job_cancel_sync(&job->job, true);
}

/* The checks of QEMU's do_backup_common, in its order.  May rewrite
 * sync/bitmap-mode (incremental is bitmap + on-success). */
static BdrvDirtyBitmap *check_bitmap_args(BlockDriverState *bs,
                                          MirrorSyncMode *sync,
                                          bool *has_mode, BitmapSyncMode *mode,
                                          const BlockdevBackup *arg,
                                          GError **errp)
{
    if ((*sync == MIRROR_SYNC_MODE_BITMAP ||
         *sync == MIRROR_SYNC_MODE_INCREMENTAL) &&
        !arg->has_bitmap) {
        error_setg(errp, "must provide a valid bitmap name for '%s' sync mode",
                   MirrorSyncMode_str(*sync));
        return NULL;
    }
    if (*sync == MIRROR_SYNC_MODE_INCREMENTAL) {
        if (*has_mode && *mode != BITMAP_SYNC_MODE_ON_SUCCESS) {
            error_setg(errp,
                       "Bitmap sync mode must be '%s' when using sync mode "
                       "'%s'",
                       BitmapSyncMode_str(BITMAP_SYNC_MODE_ON_SUCCESS),
                       MirrorSyncMode_str(*sync));
            return NULL;
        }
        *has_mode = true;
        *sync = MIRROR_SYNC_MODE_BITMAP;
        *mode = BITMAP_SYNC_MODE_ON_SUCCESS;
    }
    if (!arg->has_bitmap) {
        if (*has_mode) {
            error_setg(errp, "Cannot specify bitmap sync mode without a "
                             "bitmap");
        }
        return NULL;
    }
    BdrvDirtyBitmap *bm = bdrv_find_dirty_bitmap(bs, arg->bitmap);
    if (!bm) {
        error_setg(errp, "Bitmap '%s' could not be found", arg->bitmap);
        return NULL;
    }
    if (!*has_mode) {
        error_setg(errp, "Bitmap sync mode must be given when providing a "
                         "bitmap");
        return NULL;
    }
    if (bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_ALLOW_RO, errp) < 0) {
        return NULL;
    }
    if (*sync == MIRROR_SYNC_MODE_NONE) {
        error_setg(errp,
                   "sync mode '%s' does not produce meaningful bitmap outputs",
                   MirrorSyncMode_str(*sync));
        return NULL;
    }
    if (*mode == BITMAP_SYNC_MODE_NEVER && *sync != MIRROR_SYNC_MODE_BITMAP) {
        error_setg(errp,
                   "Bitmap sync mode '%s' has no meaningful effect when "
                   "combined with sync mode '%s'",
                   BitmapSyncMode_str(*mode), MirrorSyncMode_str(*sync));
        return NULL;
    }
    return bm;
}

BlockJob *coroutine_fn backup_job_create_qmp(const BlockdevBackup *arg,
                                             JobTxn *txn, GError **errp)
{
    GError *local = NULL;
    BlockDriverState *bs = bdrv_lookup_bs(arg->device, arg->device, errp);
    if (!bs) {
        return NULL;
    }
    BlockDriverState *target = bdrv_lookup_bs(arg->target, arg->target, errp);
    if (!target) {
        return NULL;
    }

    MirrorSyncMode sync = arg->sync;
    bool has_mode = arg->has_bitmap_mode;
    BitmapSyncMode mode = arg->bitmap_mode;
    BdrvDirtyBitmap *bm =
        check_bitmap_args(bs, &sync, &has_mode, &mode, arg, &local);
    if (local) {
        error_propagate(errp, local);
        return NULL;
    }
    int flags = JOB_DEFAULT;
    if (arg->has_auto_finalize && !arg->auto_finalize) {
        flags |= JOB_MANUAL_FINALIZE;
    }
    if (arg->has_auto_dismiss && !arg->auto_dismiss) {
        flags |= JOB_MANUAL_DISMISS;
    }
    int64_t max_workers = BLOCK_COPY_DEFAULT_MAX_WORKERS, max_chunk = 0;
    bool use_copy_range = false;
    if (arg->x_perf) {
        if (arg->x_perf->has_use_copy_range) {
            use_copy_range = arg->x_perf->use_copy_range;
        }
        if (arg->x_perf->has_max_workers) {
            max_workers = arg->x_perf->max_workers;
        }
        if (arg->x_perf->has_max_chunk) {
            max_chunk = arg->x_perf->max_chunk;
        }
    }
    int64_t speed = arg->has_speed ? arg->speed : 0;
    bool compress = arg->has_compress && arg->compress;

    /* backup_job_create */
    if (bs == target) {
        error_setg(errp, "Source and target cannot be the same");
        return NULL;
    }
    /* QEMU's op blocker: a job's target is not another backup's */
    if (block_job_node_busy(target, errp)) {
        return NULL;
    }
    if (compress && !(target->supported_write_flags &
                      BDRV_REQ_WRITE_COMPRESSED) &&
        !(bdrv_skip_filters(target)->supported_write_flags &
          BDRV_REQ_WRITE_COMPRESSED)) {
        /* QEMU names the device, which a node without one has not */
        error_setg(errp, "Compression is not supported for this drive %s",
                   "");
        return NULL;
    }
    if (max_workers < 1 || max_workers > INT_MAX) {
        error_setg(errp, "max-workers must be between 1 and %d", INT_MAX);
        return NULL;
    }
    if (max_chunk < 0) {
        error_setg(errp, "max-chunk must be zero (which means no limit) or "
                         "positive");
        return NULL;
    }
    if (bm) {
        if (mode != BITMAP_SYNC_MODE_NEVER &&
            bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_DEFAULT, errp) < 0) {
            return NULL;
        }
        if (bdrv_dirty_bitmap_create_successor(bm, errp) < 0) {
            return NULL;
        }
    }
    int64_t len = bdrv_getlength(bs);
    int64_t target_len = bdrv_getlength(target);
    if (len < 0 || target_len < 0) {
        error_setg_errno(errp, (int)-(len < 0 ? len : target_len),
                         "Unable to get length for '%s'",
                         bdrv_get_node_name(len < 0 ? bs : target));
        goto fail_bitmap;
    }
    if (target_len != len) {
        error_setg(errp, "Source and target image have different sizes");
        goto fail_bitmap;
    }

    BlockDriverState *cbw = bdrv_cbw_append(
        bs, target, arg->has_filter_node_name ? arg->filter_node_name : NULL,
        errp);
    if (!cbw) {
        goto fail_bitmap;
    }
    BlockCopyState *bcs = bdrv_cbw_get_block_copy_state(cbw);
    int64_t cluster_size = block_copy_cluster_size(bcs);
    if (max_chunk && max_chunk < cluster_size) {
        error_setg(errp,
                   "Required max-chunk (%" PRIi64 ") is less than backup "
                   "cluster size (%" PRIi64 ")",
                   max_chunk, cluster_size);
        goto fail_cbw;
    }

    BackupJob *s = block_job_create(
        arg->has_job_id ? arg->job_id : "",
        &backup_job_driver, txn, cbw, 0, BLK_PERM_ALL, speed < 0 ? 0 : speed,
        flags, NULL, NULL, errp);
    if (!s) {
        goto fail_cbw;
    }
    if (speed < 0) {
        /* As QEMU: the job exists (created, then null) when the speed is
         * refused. */
        block_job_set_speed(&s->common, speed, errp);
        job_early_fail(&s->common.job);
        goto fail_cbw;
    }
    s->cbw = cbw;
    s->target = target;
    s->bcs = bcs;
    s->sync = sync;
    s->sync_bitmap = bm;
    s->bitmap_mode = mode;
    s->on_source_error =
        arg->has_on_source_error ? arg->on_source_error : BLOCKDEV_ON_ERROR_REPORT;
    s->on_target_error =
        arg->has_on_target_error ? arg->on_target_error : BLOCKDEV_ON_ERROR_REPORT;
    s->len = len;

    block_copy_set_perf(bcs, (int)max_workers, max_chunk, use_copy_range);
    block_copy_set_compress(bcs, compress);
    block_copy_set_progress(bcs, backup_progress, s);
    if (sync == MIRROR_SYNC_MODE_BITMAP) {
        block_copy_set_dirty_from(bcs, bm);
    }
    /* full, top, none: everything may need copying (none: only what the
     * guest overwrites, by the filter) */

    if (block_job_add_bdrv(&s->common, "target", target, 0, BLK_PERM_ALL,
                           errp) < 0) {
        s->sync_bitmap = NULL;
        backup_clean(&s->common.job);
        job_early_fail(&s->common.job);
        goto fail_bitmap;
    }
    return &s->common;

fail_cbw:
    bdrv_cbw_drop(cbw);
fail_bitmap:
    if (bm) {
        bdrv_reclaim_dirty_bitmap(bm, NULL);
    }
    return NULL;
}

void coroutine_fn backup_let_jobs_start(void)
{
    /* job_start schedules the job's coroutine: let it run to its first
     * pause point (jobs scheduled before us run first) before the drain
     * ends, as QEMU enters it at once. */
    if (in_coroutine()) {
        coroutine_wake(coroutine_self());
        coroutine_yield();
    }
}

void qmp_blockdev_backup(BlockdevBackup *arg, GError **errp)
{
    /* As QEMU (a transaction of one action): created and started while
     * the graph is drained, so the job pauses once at its first pause
     * point and resumes when the drain ends. */
    bdrv_drain_all_begin();
    /* running jobs reach their pause point now, as QEMU enters them */
    backup_let_jobs_start();
    BlockJob *job = backup_job_create_qmp(arg, NULL, errp);
    if (job) {
        job_start(&job->job);
        backup_let_jobs_start();
    }
    bdrv_drain_all_end();
}
