/*
 * block-commit: write the data of the layers between `top` and `base` of a
 * backing chain into base and drop them from the chain.
 *
 * Two kinds, as in qemu-storage-daemon 7.2:
 *  - top is the active layer (or someone writes it): active commit, the
 *    mirror engine (mirror_start_active_commit in mirror.c);
 *  - otherwise (intermediate commit), this file: a job of type commit
 *    with an implicit `commit_top` filter above top for its lifetime.
 *    The filter hides top from its overlay's permissions, so the job may
 *    forbid consistent reads of the layers it empties.  The job copies
 *    into base every range that some layer in (top .. above base]
 *    allocates and skips the rest.  On success the overlay's backing
 *    child becomes base and the overlay's header names base
 *    (`backing-file`, or base's filename); on failure or cancel the
 *    filter goes and the chain is as it was (base may hold some of the
 *    data, which is invisible through the chain).
 *
 * blockd's own option x-blockd-discard-committed (see
 * docs/commit-stream.md) discards, after a successful intermediate
 * commit, the committed ranges from the dropped layers that are still
 * open elsewhere, so their files shrink.
 *
 * Argument checks, their order and messages follow qemu-storage-daemon.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/jobs/blockjob.h"
#include "block/jobs/mirror.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"
#include "util/iov.h"

/* What the job reads and writes at once (QEMU's COMMIT_BUFFER_SIZE). */
#define COMMIT_BUFFER_SIZE (512 * 1024)

/* ---- the commit_top filter ---- */

/* Reads pass to the layer below; nobody writes through it (the overlay
 * only reads its backing file). */
static int coroutine_fn commit_top_preadv(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          IOVector *qiov,
                                          BdrvRequestFlags flags)
{
    return bdrv_co_preadv(bs->backing, offset, bytes, qiov, flags);
}

static int coroutine_fn commit_top_pwritev(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           IOVector *qiov,
                                           BdrvRequestFlags flags)
{
    (void)bs; (void)offset; (void)bytes; (void)qiov; (void)flags;
    return -ENOTSUP;
}

/* It takes nothing on top and lets others do anything: the job itself
 * holds what the commit needs, and the overlay's read of its backing
 * file must not conflict with the job forbidding consistent reads of the
 * layers it is emptying. */
static void commit_top_child_perm(BlockDriverState *bs, BdrvChild *c,
                                  BdrvChildRole role, uint64_t perm,
                                  uint64_t shared, uint64_t *nperm,
                                  uint64_t *nshared)
{
    (void)bs; (void)c; (void)role; (void)perm; (void)shared;
    *nperm = 0;
    *nshared = BLK_PERM_ALL;
}

/* Named after what it filters (QEMU's commit_top_refresh_filename). */
static void commit_top_own_filename(BlockDriverState *bs)
{
    if (bs->backing) {
        g_strlcpy(bs->filename, bs->backing->bs->filename,
                  sizeof(bs->filename));
    }
}

/* Not in the driver table: blockdev-add cannot create it. */
static const BlockDriver bdrv_commit_top = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "commit_top",
    .instance_size = 0,
    .is_filter = true,
    .bdrv_co_preadv = commit_top_preadv,
    .bdrv_co_pwritev = commit_top_pwritev,
    .bdrv_child_perm = commit_top_child_perm,
    .bdrv_own_filename = commit_top_own_filename,
};

/* Open a commit_top node over `top` and put it in top's place (every
 * parent of top moves to it).  Returns it with one reference (the
 * caller's), or NULL. */
static BlockDriverState *commit_top_insert(BlockDriverState *top,
                                           const char *filter_node_name,
                                           GError **errp)
{
    BlockDriverState *f =
        bdrv_new_open_driver(&bdrv_commit_top, filter_node_name, 0, errp);
    if (!f) {
        return NULL;
    }
    f->implicit = !filter_node_name;
    f->total_bytes = top->total_bytes;
    return bdrv_insert_filter(f, top, "backing", errp);
}

/* Take the filter out again: its parents go back to what it filters. */
static void commit_top_remove(BlockDriverState *f)
{
    if (!LIST_EMPTY(&f->parents)) {
        bdrv_remove_filter(f, "commit");
    }
}

/* ---- coroutine context from the main loop ---- */

/* Run fn in coroutine context, from the main loop or a coroutine. */
static void commit_run_co(CoroutineEntry *fn, void *opaque)
{
    if (in_coroutine()) {
        fn(opaque);
    } else {
        coroutine_run_sync(fn, opaque);
    }
}

/* A read-only base (or overlay) is made writable for the job, and
 * read-only again after, with bdrv_co_reopen_set_read_only(). */
typedef struct ReopenWork {
    BlockDriverState *bs;
    bool read_only;
    GError *err;
    int ret;
} ReopenWork;

static void coroutine_fn commit_reopen_co(void *opaque)
{
    ReopenWork *w = opaque;
    w->ret = bdrv_co_reopen_set_read_only(w->bs, w->read_only, &w->err);
}

/* ---- the job ---- */

typedef struct CommitRange {
    int64_t offset, bytes;
} CommitRange;

typedef struct CommitJob {
    BlockJob common;
    BlockDriverState *commit_top; /* our reference */
    BlockDriverState *top;        /* the highest layer committed */
    BlockDriverState *base;
    BlockDriverState *overlay;    /* the node whose backing file top was */
    BlockBackend *top_blk;        /* reads of top (below the filter) */
    BlockBackend *base_blk;       /* writes to base */
    char *backing_file_str;       /* NULL: base's filename */
    BlockdevOnError on_error;
    bool base_read_only; /* reopened read-write for the job */
    bool discard_committed;
    /* The dropped layers (top down to above base), referenced, and the
     * ranges copied from them (merged when adjacent), for
     * x-blockd-discard-committed. */
    GPtrArray *dropped;
    GArray *copied;
} CommitJob;

static void commit_note_copied(CommitJob *s, int64_t offset, int64_t bytes)
{
    if (!s->discard_committed) {
        return;
    }
    if (s->copied->len) {
        CommitRange *last =
            &g_array_index(s->copied, CommitRange, s->copied->len - 1);
        if (last->offset + last->bytes == offset) {
            last->bytes += bytes;
            return;
        }
    }
    CommitRange r = {offset, bytes};
    g_array_append_val(s->copied, r);
}

static int coroutine_fn commit_run(Job *job, GError **errp)
{
    CommitJob *s = (CommitJob *)job;
    (void)errp; /* failures are reported by errno, as QEMU's */
    int64_t len = blk_getlength(s->top_blk);
    if (len < 0) {
        return (int)len;
    }
    job_progress_set_remaining(job, (uint64_t)len);
    int64_t base_len = blk_getlength(s->base_blk);
    if (base_len < 0) {
        return (int)base_len;
    }
    if (base_len < len) {
        int ret = blk_co_truncate(s->base_blk, len, false, PREALLOC_MODE_OFF,
                                  0, NULL);
        if (ret < 0) {
            return ret;
        }
    }

    uint8_t *buf = blk_memalign(4096, COMMIT_BUFFER_SIZE);
    int ret = 0;
    bool limited = false;
    for (int64_t offset = 0, n = 0; offset < len; offset += n) {
        /* Even unlimited, stop here with nothing in flight, so a drain
         * (and a pause or cancel) gets its turn. */
        if (limited) {
            block_job_ratelimit_sleep(&s->common);
        } else {
            job_sleep_ns(job, 0);
        }
        if (job_is_cancelled(job)) {
            ret = 0;
            break;
        }
        bool in_source = true;
        int64_t want = MIN(COMMIT_BUFFER_SIZE, len - offset);
        /* Copy what some layer above base allocates. */
        ret = bdrv_co_block_status_above(s->top, s->base, offset, want, &n,
                                         NULL, NULL);
        bool copy = ret >= 0 && (ret & BDRV_BLOCK_ALLOCATED);
        if (ret >= 0 && n <= 0) {
            ret = -EIO; /* a layer that claims nothing about the range */
        }
        if (ret >= 0 && copy) {
            n = MIN(n, want);
            ret = blk_co_pread(s->top_blk, offset, n, buf, 0);
            if (ret >= 0) {
                ret = blk_co_pwrite(s->base_blk, offset, n, buf, 0);
                in_source = ret >= 0;
            }
        }
        if (ret < 0) {
            BlockErrorAction act = block_job_error_action(
                &s->common, s->on_error, in_source, -ret);
            if (act == BLOCK_ERROR_ACTION_REPORT) {
                break;
            }
            /* stop: paused now, the range is tried again after job-resume;
             * ignore: the range is tried again at once */
            n = 0;
            limited = false;
            continue;
        }
        ret = 0;
        if (copy) {
            commit_note_copied(s, offset, n);
            block_job_ratelimit_processed_bytes(&s->common, (uint64_t)n);
        }
        limited = copy;
        job_progress_update(job, (uint64_t)n);
    }
    blk_vfree(buf);
    if (ret == 0 && !job_is_cancelled(job)) {
        /* The data must be on disk in base before an overlay's header
         * stops naming the layers that held it (a crash in between would
         * lose it). */
        ret = blk_co_flush(s->base_blk);
    }
    return ret;
}

typedef struct BackingUpdate {
    GPtrArray *parents; /* BlockDriverState * whose header names base */
    const char *file, *fmt;
    int ret;
    BlockDriverState *failed;
} BackingUpdate;

static void coroutine_fn commit_update_backing_co(void *opaque)
{
    BackingUpdate *u = opaque;
    for (guint i = 0; i < u->parents->len && u->ret == 0; i++) {
        BlockDriverState *p = u->parents->pdata[i];
        /* A read-only overlay is made writable for the moment (QEMU's
         * update_filename). */
        bool ro = bdrv_is_read_only(p);
        g_autoptr(GError) err = NULL;
        if (ro && bdrv_co_reopen_set_read_only(p, false, &err) < 0) {
            warn_report("commit: %s", err->message);
            u->ret = -EACCES;
        } else if (!p->drv || !p->drv->bdrv_co_change_backing_file) {
            u->ret = -ENOTSUP;
        } else {
            u->ret = p->drv->bdrv_co_change_backing_file(p, u->file, u->fmt);
        }
        if (ro && !bdrv_is_read_only(p)) {
            g_clear_error(&err);
            if (bdrv_co_reopen_set_read_only(p, true, &err) < 0) {
                warn_report("commit: %s", err->message);
            }
        }
        if (u->ret < 0) {
            u->failed = p;
        }
    }
}


typedef struct DiscardWork {
    CommitJob *s;
} DiscardWork;

/* x-blockd-discard-committed: the dropped layers' committed ranges are
 * in base now; discard them where a layer is still open (and writable),
 * so its file gives the space back.  Discards obey each node's `discard`
 * option, as every discard does.  Failures only warn: the commit itself
 * has succeeded. */
static void coroutine_fn commit_discard_co(void *opaque)
{
    CommitJob *s = ((DiscardWork *)opaque)->s;
    for (guint i = 0; i < s->dropped->len; i++) {
        BlockDriverState *l = s->dropped->pdata[i];
        if (!bdrv_is_writable(l)) {
            continue; /* opened read-only (an implicit backing file) */
        }
        g_autoptr(GError) err = NULL;
        BlockBackend *blk = blk_new(BLK_PERM_WRITE, BLK_PERM_ALL);
        if (blk_insert_bs(blk, l, &err) < 0) {
            warn_report("commit: cannot discard in '%s': %s", l->node_name,
                        err->message);
            blk_unref(blk);
            continue;
        }
        blk_set_disable_request_queuing(blk, true);
        int ret = 0;
        for (guint k = 0; k < s->copied->len && ret == 0; k++) {
            CommitRange *r = &g_array_index(s->copied, CommitRange, k);
            for (int64_t off = r->offset; off < r->offset + r->bytes;) {
                int64_t n = MIN(r->offset + r->bytes - off,
                                (int64_t)1 << 30);
                ret = blk_co_pdiscard(blk, off, n);
                if (ret < 0) {
                    break;
                }
                off += n;
            }
        }
        if (ret == 0) {
            ret = blk_co_flush(blk);
        }
        if (ret < 0) {
            warn_report("commit: discarding committed data in '%s' failed: "
                        "%s", l->node_name, g_strerror(-ret));
        }
        blk_unref(blk);
    }
}

/* Success: the overlay's backing child becomes base (QEMU's
 * bdrv_drop_intermediate) and its header names base. */
static int commit_prepare(Job *job, GError **errp)
{
    CommitJob *s = (CommitJob *)job;
    BlockDriverState *f = s->commit_top;

    /* Our own final change: the chain is ours to modify now. */
    block_job_release_chain(&s->common);
    /* base's writer goes before the chain may use base as a backing
     * file again (it shares no write). */
    blk_unref(s->base_blk);
    s->base_blk = NULL;

    const char *file = s->backing_file_str;
    if (!file) {
        bdrv_refresh_filename(s->base);
        file = s->base->filename;
    }
    BackingUpdate u = {
        .parents = g_ptr_array_new(),
        .file = file,
        .fmt = s->base->drv ? s->base->drv->format_name : "",
    };
    BdrvChild *c;
    LIST_FOREACH (c, &f->parents, next_parent) {
        if (c->klass->parent_is_bds && (c->role & BDRV_CHILD_COW)) {
            g_ptr_array_add(u.parents, c->opaque);
        }
    }
    bdrv_ref(f);
    int ret = bdrv_replace_node(f, s->base, errp);
    if (ret == 0) {
        commit_run_co(commit_update_backing_co, &u);
        ret = u.ret;
        if (ret < 0) {
            /* The graph has changed; only the header is behind (as in
             * QEMU, nothing is rolled back). */
            error_setg_errno(errp, -ret, "Could not update backing file link");
            error_prepend(errp, "%s: ", u.failed->node_name);
            warn_report("commit: %s", (*errp)->message);
            g_clear_error(errp);
        }
        for (guint i = 0; i < u.parents->len; i++) {
            bdrv_refresh_filenames_up(u.parents->pdata[i]);
        }
    }
    g_ptr_array_free(u.parents, TRUE);
    bdrv_unref(f);

    if (ret == 0 && s->discard_committed) {
        /* The filter (and its edge to top) goes first: then top is out
         * of every chain it was read through. */
        s->commit_top = NULL;
        bdrv_unref(f);
        DiscardWork w = {s};
        commit_run_co(commit_discard_co, &w);
    }
    return ret;
}

/* Failure or cancel: the filter goes, the chain is as it was. */
static void commit_abort(Job *job)
{
    CommitJob *s = (CommitJob *)job;
    block_job_release_chain(&s->common);
    if (s->base_blk) {
        blk_unref(s->base_blk);
        s->base_blk = NULL;
    }
    /* The job's own edges go first: their permissions (no consistent
     * read of the layers) would stand in the way of the overlay reading
     * top directly again. */
    block_job_remove_all_bdrv(&s->common);
    if (s->commit_top) {
        commit_top_remove(s->commit_top);
    }
}

/* Put a base that was read-only back (failures only warn, as QEMU). */
static void commit_restore_base(CommitJob *s)
{
    if (!s->base_read_only) {
        return;
    }
    s->base_read_only = false;
    ReopenWork w = {.bs = s->base, .read_only = true};
    commit_run_co(commit_reopen_co, &w);
    if (w.ret < 0) {
        warn_report("commit: %s", w.err->message);
        g_error_free(w.err);
    }
}

static void commit_clean(Job *job)
{
    CommitJob *s = (CommitJob *)job;
    commit_restore_base(s);
    if (s->commit_top) {
        bdrv_unref(s->commit_top);
        s->commit_top = NULL;
    }
    if (s->top_blk) {
        blk_unref(s->top_blk);
        s->top_blk = NULL;
    }
}

static void commit_free(Job *job)
{
    CommitJob *s = (CommitJob *)job;
    g_free(s->backing_file_str);
    if (s->dropped) {
        for (guint i = 0; i < s->dropped->len; i++) {
            bdrv_unref(s->dropped->pdata[i]);
        }
        g_ptr_array_free(s->dropped, TRUE);
    }
    if (s->copied) {
        g_array_free(s->copied, TRUE);
    }
}

static const BlockJobDriver commit_job_driver = {
    .job_driver = {
        .instance_size = sizeof(CommitJob),
        .job_type = JOB_TYPE_COMMIT,
        .run = commit_run,
        .prepare = commit_prepare,
        .abort = commit_abort,
        .clean = commit_clean,
        .free = commit_free,
    },
};

/* Undo a commit_start that failed after the job was created. */
static void commit_start_fail(CommitJob *s)
{
    block_job_release_chain(&s->common);
    if (s->base_blk) {
        blk_unref(s->base_blk);
        s->base_blk = NULL;
    }
    if (s->top_blk) {
        blk_unref(s->top_blk);
        s->top_blk = NULL;
    }
    commit_restore_base(s);
    BlockDriverState *f = s->commit_top;
    s->commit_top = NULL;
    /* The job (and its edges) go first, or the filter could not hand the
     * overlay back to top for lack of permissions. */
    job_early_fail(&s->common.job);
    if (f) {
        commit_top_remove(f);
        bdrv_unref(f);
    }
}

/* QEMU's commit_start: the intermediate commit job. */
static void commit_start(const char *job_id, BlockDriverState *bs,
                         BlockDriverState *base, BlockDriverState *top,
                         BlockDriverState *overlay, int flags, int64_t speed,
                         BlockdevOnError on_error, const char *backing_file,
                         const char *filter_node_name, bool discard_committed,
                         GError **errp)
{
    if (bdrv_skip_filters(top) == bdrv_skip_filters(base)) {
        error_setg(errp, "Invalid files for merge: top and base are the same");
        return;
    }
    int64_t base_size = bdrv_getlength(base);
    if (base_size < 0) {
        error_setg_errno(errp, (int)-base_size,
                         "Could not inquire base image size");
        return;
    }
    int64_t top_size = bdrv_getlength(top);
    if (top_size < 0) {
        error_setg_errno(errp, (int)-top_size,
                         "Could not inquire top image size");
        return;
    }
    uint64_t base_perms = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;
    if (base_size < top_size) {
        base_perms |= BLK_PERM_RESIZE;
    }

    /* As QEMU, the job exists (created, then null) when the speed is
     * refused. */
    CommitJob *s = block_job_create(job_id, &commit_job_driver, NULL, bs, 0,
                                    BLK_PERM_ALL, speed < 0 ? 0 : speed,
                                    flags, NULL, NULL, errp);
    if (!s) {
        return;
    }
    if (speed < 0) {
        block_job_set_speed(&s->common, speed, errp);
        job_early_fail(&s->common.job);
        return;
    }
    /* As QEMU 7.2's block jobs, the main node is only watched (no
     * BlockBackend on it: blockdev-del then names the job). */
    blk_remove_bs(s->common.blk);
    s->base = base;
    s->top = top;
    s->overlay = overlay;
    s->on_error = on_error;
    s->backing_file_str = g_strdup(backing_file);
    s->discard_committed = discard_committed;
    s->dropped = g_ptr_array_new();
    s->copied = g_array_new(FALSE, FALSE, sizeof(CommitRange));

    /* A read-only base (a backing file opened from a header is) is
     * reopened read-write for the job's duration, as QEMU does. */
    if (bdrv_is_read_only(base)) {
        ReopenWork w = {.bs = base, .read_only = false};
        commit_run_co(commit_reopen_co, &w);
        if (w.ret < 0) {
            error_propagate(errp, w.err);
            commit_start_fail(s);
            return;
        }
        s->base_read_only = true;
    }

    s->commit_top = commit_top_insert(top, filter_node_name, errp);
    if (!s->commit_top) {
        commit_start_fail(s);
        return;
    }

    /* The layers that will disappear: nobody else may read them
     * consistently while they are being emptied. */
    for (BlockDriverState *it = top; it && it != base;
         it = bdrv_child_bs(bdrv_filter_or_cow_child(it))) {
        if (block_job_add_bdrv(&s->common, "intermediate node", it, 0,
                               BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE,
                               errp) < 0) {
            commit_start_fail(s);
            return;
        }
        bdrv_ref(it);
        g_ptr_array_add(s->dropped, it);
    }
    /* The chain from the overlay down to base must not change under the
     * job (graph-mod counter; blockdev-del, reopen, other jobs refuse). */
    block_job_hold_chain(&s->common, overlay, base);

    if (block_job_add_bdrv(&s->common, "base", base, 0, BLK_PERM_ALL,
                           errp) < 0) {
        commit_start_fail(s);
        return;
    }
    s->base_blk = blk_new(base_perms,
                          BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
    /* (QEMU names neither of the job's BlockBackends in conflicts.) */
    if (blk_insert_bs(s->base_blk, base, errp) < 0) {
        commit_start_fail(s);
        return;
    }
    blk_set_disable_request_queuing(s->base_blk, true);

    /* What the job reads: top directly, below the filter (its permissions
     * are the intermediate edges'). */
    s->top_blk = blk_new(0, BLK_PERM_ALL);
    if (blk_insert_bs(s->top_blk, top, errp) < 0) {
        commit_start_fail(s);
        return;
    }
    blk_set_disable_request_queuing(s->top_blk, true);

    job_start(&s->common.job);
}

/* ---- QMP ---- */

/* The bottom of bs's chain (QEMU's bdrv_find_base). */
static BlockDriverState *chain_bottom(BlockDriverState *bs)
{
    BlockDriverState *cur = bdrv_skip_filters(bs);
    while (cur && cur->backing) {
        cur = bdrv_skip_filters(cur->backing->bs);
    }
    return cur;
}

/* The layer whose backing file (after filters) is top (QEMU's
 * bdrv_find_overlay), or NULL. */
static BlockDriverState *find_overlay(BlockDriverState *active,
                                      BlockDriverState *top)
{
    top = bdrv_skip_filters(top);
    for (BlockDriverState *cur = bdrv_skip_filters(active); cur;) {
        BlockDriverState *next =
            cur->backing ? bdrv_skip_filters(cur->backing->bs) : NULL;
        if (next == top) {
            return cur;
        }
        cur = next;
    }
    return NULL;
}

void qmp_block_commit(q_obj_block_commit_arg *arg, GError **errp)
{
    int64_t speed = arg->has_speed ? arg->speed : 0;
    BlockdevOnError on_error =
        arg->has_on_error ? arg->on_error : BLOCKDEV_ON_ERROR_REPORT;
    const char *filter_node_name =
        arg->has_filter_node_name ? arg->filter_node_name : NULL;
    int flags = JOB_DEFAULT;
    if (arg->has_auto_finalize && !arg->auto_finalize) {
        flags |= JOB_MANUAL_FINALIZE;
    }
    if (arg->has_auto_dismiss && !arg->auto_dismiss) {
        flags |= JOB_MANUAL_DISMISS;
    }
    bool discard_committed =
        arg->has_x_blockd_discard_committed && arg->x_blockd_discard_committed;

    /* The device first: clients probe for the command with a missing
     * device and rely on the DeviceNotFound class. */
    BlockDriverState *bs = bdrv_lookup_bs(arg->device, arg->device, NULL);
    if (!bs) {
        error_set(errp, ERROR_CLASS_DEVICE_NOT_FOUND, "Device '%s' not found",
                  arg->device);
        return;
    }
    if (!bdrv_is_root_node(bs)) {
        error_setg(errp, "Need a root block node");
        return;
    }
    if (block_job_node_busy(bs, errp)) {
        return;
    }

    /* top defaults to the active layer */
    BlockDriverState *top = bs;
    if (arg->has_top_node && arg->has_top) {
        error_setg(errp, "'top-node' and 'top' are mutually exclusive");
        return;
    } else if (arg->has_top_node) {
        top = bdrv_lookup_bs(NULL, arg->top_node, errp);
        if (!top) {
            return;
        }
        if (!bdrv_chain_contains(bs, top)) {
            error_setg(errp, "'%s' is not in this backing file chain",
                       arg->top_node);
            return;
        }
    } else if (arg->has_top && arg->top) {
        if (strcmp(bs->filename, arg->top)) {
            top = bdrv_find_backing_image(bs, arg->top);
        }
    }
    if (!top) {
        error_setg(errp, "Top image file %s not found",
                   arg->has_top && arg->top ? arg->top : "NULL");
        return;
    }

    BlockDriverState *base;
    if (arg->has_base_node && arg->has_base) {
        error_setg(errp, "'base-node' and 'base' are mutually exclusive");
        return;
    } else if (arg->has_base_node) {
        base = bdrv_lookup_bs(NULL, arg->base_node, errp);
        if (!base) {
            return;
        }
        if (!bdrv_chain_contains(top, base)) {
            error_setg(errp, "'%s' is not in this backing file chain",
                       arg->base_node);
            return;
        }
    } else if (arg->has_base && arg->base) {
        base = bdrv_find_backing_image(top, arg->base);
        if (!base) {
            error_setg(errp, "Can't find '%s' in the backing chain",
                       arg->base);
            return;
        }
    } else {
        base = chain_bottom(top);
        if (!base) {
            error_setg(errp, "There is no backimg image");
            return;
        }
    }

    for (BlockDriverState *it = top; it && it != base;
         it = bdrv_child_bs(bdrv_filter_or_cow_child(it))) {
        if (block_job_node_busy(it, errp)) {
            return;
        }
    }
    if (top == base) {
        error_setg(errp, "cannot commit an image into itself");
        return;
    }

    /* Active commit when someone writes top, and always for the active
     * layer itself. */
    bool active = bdrv_skip_filters(top) == bdrv_skip_filters(bs);
    if ((top->perm & BLK_PERM_WRITE) || active) {
        if (arg->has_backing_file) {
            error_setg(errp, active ? "'backing-file' specified, but 'top' "
                                      "is the active layer"
                                    : "'backing-file' specified, but 'top' "
                                      "has a writer on it");
            return;
        }
        /* The job is named after the device (which has no name here). */
        const char *job_id = arg->has_job_id ? arg->job_id : "";
        mirror_start_active_commit(job_id, top, base, flags, speed, on_error,
                                   filter_node_name, !arg->has_auto_finalize ||
                                                         arg->auto_finalize,
                                   !arg->has_auto_dismiss || arg->auto_dismiss,
                                   errp);
        return;
    }

    BlockDriverState *overlay = find_overlay(bs, top);
    if (!overlay) {
        error_setg(errp, "'%s' is not in this backing file chain",
                   bdrv_get_node_name(top));
        return;
    }
    if (block_job_node_busy(overlay, errp)) {
        return;
    }
    commit_start(arg->has_job_id ? arg->job_id : "", bs, base, top, overlay,
                 flags, speed, on_error,
                 arg->has_backing_file ? arg->backing_file : NULL,
                 filter_node_name, discard_committed, errp);
}
