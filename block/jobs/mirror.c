/*
 * blockdev-mirror and active commit (see mirror.h and docs/mirror.md).
 *
 * Pieces:
 *  - the mirror_top filter: inserted above the source for the job's
 *    lifetime; it passes every request down and records what guest writes
 *    touch in the job's dirty bitmap (write-blocking: writes the same data
 *    to the target before the guest's request completes);
 *  - operations: a background copy of a dirty extent (read the source,
 *    write the target, or write zeroes where the source reads as zero) or
 *    an active write of the filter; each owns a granularity-aligned extent
 *    and later ones that overlap wait for it, so the target always
 *    receives the newest data last;
 *  - the job's loop (mirror_run): copy until nothing is dirty, then READY,
 *    then keep copying until job-complete or a soft cancel; the last round
 *    happens with the source drained, which lasts until the exit code
 *    (mirror_exit_common) has changed the graph.
 * Argument checks and messages follow qemu-storage-daemon 7.2.
 */
#include "block/jobs/mirror.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"
#include "util/error.h"

#define MIRROR_MAX_IN_FLIGHT 16
#define MIRROR_MAX_IO_BYTES (1 << 20)
#define MIRROR_DEFAULT_BUF_SIZE (MIRROR_MAX_IN_FLIGHT * MIRROR_MAX_IO_BYTES)
/* A zero write needs no buffer: one operation may cover this much. */
#define MIRROR_MAX_ZERO_BYTES (INT64_C(64) << 20)
#define MIRROR_MAX_GRANULARITY (INT64_C(64) << 20)

#define ALIGN_DOWN(n, a) ((n) / (a) * (a))
#define ALIGN_UP(n, a) ALIGN_DOWN((n) + (a) - 1, a)

typedef struct MirrorJob MirrorJob;

typedef enum MirrorMethod {
    MIRROR_METHOD_COPY,
    MIRROR_METHOD_ZERO,
} MirrorMethod;

/* An operation in flight: it owns [offset, offset + bytes) (aligned to the
 * granularity); overlapping operations wait on `waiters`. */
typedef struct MirrorOp {
    MirrorJob *s;
    int64_t offset, bytes;
    MirrorMethod method;
    bool is_active_write;
    void *buf;
    CoQueue waiters;
    LIST_ENTRY(MirrorOp) next;
} MirrorOp;

struct MirrorJob {
    BlockJob common;
    BlockDriverState *mirror_top;
    BlockBackend *target; /* the job's writer on the target */
    BlockDriverState *target_bs;
    /* sync=top: the backing node of the source (what lies below is not
     * copied); active commit: the target; sync=full: NULL */
    BlockDriverState *base;
    char *replaces;
    BlockDriverState *to_replace; /* looked up by job-complete */
    bool is_none_mode;
    bool is_commit;
    MirrorBackingMode backing_mode; /* drive-mirror's */
    MirrorCopyMode copy_mode;
    BlockdevOnError on_source_error, on_target_error;
    int64_t granularity;
    int64_t buf_size, buf_free;
    int64_t max_io_bytes;
    /* copies are widened to this (the target's cluster size when it has
     * a backing file name but no backing node, so it cannot fill partial
     * clusters itself; else the granularity) */
    int64_t copy_align;
    int64_t len;
    BdrvDirtyBitmap *dirty_bitmap;
    int64_t cursor; /* where the next dirty extent is looked for */

    bool should_complete; /* job-complete */
    bool in_drain;        /* run() drained the source for the exit */
    BlockDriverState *drained_bs;
    bool prepared;        /* mirror_exit_common ran */
    int ret;              /* first reported failure of an operation */

    int in_flight; /* background operations */
    int64_t bytes_in_flight;
    int64_t active_bytes_in_flight;
    LIST_HEAD(, MirrorOp) ops;
    CoQueue op_done; /* the job waiting for any background operation */
    /* Copy buffers (max_io_bytes each) kept for reuse: a fresh buffer per
     * operation costs a mapping and its page faults every time. */
    GPtrArray *buf_pool;
    int64_t last_yield_ns;
};

/* ---- the mirror_top filter ---- */

typedef struct MirrorTopState {
    MirrorJob *job; /* NULL before the job exists and once it let go */
    bool stop;      /* being removed: forward no permissions */
    bool is_commit;
} MirrorTopState;

static MirrorOp *coroutine_fn active_write_prepare(MirrorJob *s,
                                                   int64_t offset,
                                                   int64_t bytes);
static void active_write_settle(MirrorOp *op);
static void coroutine_fn do_sync_target_write(MirrorJob *s,
                                              MirrorMethod method,
                                              int64_t offset, int64_t bytes,
                                              IOVector *qiov,
                                              BdrvRequestFlags flags);

static int coroutine_fn mirror_top_preadv(BlockDriverState *bs, int64_t offset,
                                          int64_t bytes, IOVector *qiov,
                                          BdrvRequestFlags flags)
{
    return bdrv_co_preadv(bs->backing, offset, bytes, qiov, flags);
}

/* A guest write (data, zeroes or discard: qiov NULL and `discard`). */
static int coroutine_fn mirror_top_do_write(BlockDriverState *bs,
                                            MirrorMethod method, bool discard,
                                            int64_t offset, int64_t bytes,
                                            IOVector *qiov,
                                            BdrvRequestFlags flags)
{
    MirrorTopState *ts = bs->opaque;
    MirrorJob *s = ts->job;
    MirrorOp *op = NULL;
    int ret;

    /* A discard is not sent to the target: what the source reads after it
     * depends on the source's own backing chain, so the background copy
     * (which asks the source) brings it over. */
    bool copy_to_target =
        s && !discard && s->ret >= 0 && !job_is_cancelled(&s->common.job) &&
        s->copy_mode == MIRROR_COPY_MODE_WRITE_BLOCKING;
    if (copy_to_target) {
        op = active_write_prepare(s, offset, bytes);
    }
    if (discard) {
        ret = bdrv_co_pdiscard(bs->backing, offset, bytes);
    } else if (method == MIRROR_METHOD_ZERO) {
        ret = bdrv_co_pwrite_zeroes(bs->backing, offset, bytes, flags);
    } else {
        ret = bdrv_co_pwritev(bs->backing, offset, bytes, qiov, flags);
    }
    /* the job may have let go while we waited */
    s = ts->job;
    if (s && (!copy_to_target || ret < 0)) {
        /* In background mode the bitmap records every write to the
         * source by itself; in write-blocking mode it does not (what
         * went to the target is not dirty), so what did not go there is
         * marked here.  Also on failure: part of it may have changed. */
        if (!bdrv_dirty_bitmap_enabled(s->dirty_bitmap)) {
            bdrv_set_dirty_bitmap(s->dirty_bitmap, offset, bytes);
        }
    } else if (s && copy_to_target) {
        do_sync_target_write(s, method, offset, bytes, qiov, flags);
    }
    if (op) {
        active_write_settle(op);
    }
    return ret;
}

static int coroutine_fn mirror_top_pwritev(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           IOVector *qiov,
                                           BdrvRequestFlags flags)
{
    return mirror_top_do_write(bs, MIRROR_METHOD_COPY, false, offset, bytes,
                               qiov, flags);
}

static int coroutine_fn mirror_top_pwrite_zeroes(BlockDriverState *bs,
                                                 int64_t offset, int64_t bytes,
                                                 BdrvRequestFlags flags)
{
    return mirror_top_do_write(bs, MIRROR_METHOD_ZERO, false, offset, bytes,
                               NULL, flags);
}

static int coroutine_fn mirror_top_pdiscard(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes)
{
    return mirror_top_do_write(bs, MIRROR_METHOD_ZERO, true, offset, bytes,
                               NULL, 0);
}

static void mirror_top_child_perm(BlockDriverState *bs, BdrvChild *c,
                                  BdrvChildRole role, uint64_t perm,
                                  uint64_t shared, uint64_t *nperm,
                                  uint64_t *nshared)
{
    MirrorTopState *ts = bs->opaque;
    if (ts->stop) {
        /* Being removed: nothing goes through any more, and the parents
         * must be able to move back down without meeting our claims. */
        *nperm = 0;
        *nshared = BLK_PERM_ALL;
        return;
    }
    bdrv_filter_default_perms(bs, c, role, perm, shared, nperm, nshared);
    if (ts->is_commit) {
        /* Active commit: the layers above base unshare consistent read
         * for everything above base, so do not ask for it; and share
         * write, or we would block the job's own writes to base. */
        *nperm &= ~(uint64_t)BLK_PERM_CONSISTENT_READ;
        *nshared |= BLK_PERM_WRITE;
    }
}

/* The filter reads what its child reads, and is named after it. */
static void mirror_top_own_filename(BlockDriverState *bs)
{
    if (bs->backing) {
        g_strlcpy(bs->filename, bs->backing->bs->filename,
                  sizeof(bs->filename));
    }
}

static const BlockDriver bdrv_mirror_top = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "mirror_top",
    .driver = BLOCKDEV_DRIVER__MAX, /* not a blockdev-add driver */
    .instance_size = sizeof(MirrorTopState),
    .is_filter = true,
    .bdrv_co_preadv = mirror_top_preadv,
    .bdrv_co_pwritev = mirror_top_pwritev,
    .bdrv_co_pwrite_zeroes = mirror_top_pwrite_zeroes,
    .bdrv_co_pdiscard = mirror_top_pdiscard,
    .bdrv_child_perm = mirror_top_child_perm,
    .bdrv_own_filename = mirror_top_own_filename,
};

/* Create the filter over bs and put it in bs's place. */
static BlockDriverState *mirror_top_insert(BlockDriverState *bs,
                                           const char *filter_node_name,
                                           bool is_commit, GError **errp)
{
    BlockDriverState *top = bdrv_new_open_driver(
        &bdrv_mirror_top, filter_node_name, BDRV_O_RDWR, errp);
    if (!top) {
        return NULL;
    }
    top->implicit = !filter_node_name;
    MirrorTopState *ts = top->opaque;
    ts->is_commit = is_commit;
    top->total_bytes = bdrv_getlength(bs);
    top->supported_write_flags =
        BDRV_REQ_WRITE_UNCHANGED | (BDRV_REQ_FUA & bs->supported_write_flags);
    top->supported_zero_flags =
        BDRV_REQ_WRITE_UNCHANGED |
        ((BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK) &
         bs->supported_zero_flags);
    return bdrv_insert_filter(top, bs, "backing", errp);
}

/* Nothing goes through the filter any more: it forwards no permissions
 * and no writes to the job (the caller has it drained). */
static void mirror_top_stop(BlockDriverState *top)
{
    MirrorTopState *ts = top->opaque;
    g_autoptr(GError) err = NULL;

    ts->stop = true;
    ts->job = NULL;
    if (bdrv_refresh_perms(top, &err) < 0) {
        warn_report("mirror: %s", err->message);
    }
}

/* Take the filter out again: its parents go to whatever is below it. */
static void mirror_top_remove(BlockDriverState *top)
{
    bdrv_ref(top);
    bdrv_drained_begin(top);
    mirror_top_stop(top);
    bdrv_remove_filter(top, "mirror");
    bdrv_drained_end(top);
    bdrv_unref(top);
}

/* ---- operations ---- */

static MirrorOp *find_conflict(MirrorJob *s, int64_t offset, int64_t bytes)
{
    MirrorOp *op;
    LIST_FOREACH (op, &s->ops, next) {
        if (op->offset < offset + bytes && offset < op->offset + op->bytes) {
            return op;
        }
    }
    return NULL;
}

static void coroutine_fn wait_on_conflicts(MirrorJob *s, int64_t offset,
                                           int64_t bytes)
{
    MirrorOp *c;
    while ((c = find_conflict(s, offset, bytes))) {
        co_queue_wait(&c->waiters, NULL);
    }
}

static MirrorOp *op_new(MirrorJob *s, int64_t offset, int64_t bytes,
                        MirrorMethod method, bool active)
{
    MirrorOp *op = g_new0(MirrorOp, 1);
    op->s = s;
    op->offset = offset;
    op->bytes = bytes;
    op->method = method;
    op->is_active_write = active;
    co_queue_init(&op->waiters);
    LIST_INSERT_HEAD(&s->ops, op, next);
    return op;
}

static void op_free(MirrorOp *op)
{
    LIST_REMOVE(op, next);
    co_queue_restart_all(&op->waiters);
    g_free(op);
}

static BlockErrorAction mirror_error_action(MirrorJob *s, bool is_read,
                                            int error)
{
    return block_job_error_action(
        &s->common, is_read ? s->on_source_error : s->on_target_error,
        is_read, error);
}

static void op_failed(MirrorJob *s, bool is_read, int ret)
{
    BlockErrorAction act = mirror_error_action(s, is_read, -ret);
    if (act == BLOCK_ERROR_ACTION_REPORT && s->ret >= 0) {
        s->ret = ret;
    }
}

/* A background operation (its own coroutine). */
static void coroutine_fn mirror_op_co(void *opaque)
{
    MirrorOp *op = opaque;
    MirrorJob *s = op->s;
    int64_t end = MIN(op->offset + op->bytes, s->len);
    int64_t n = end - op->offset;
    bool is_read = false;
    int ret;

    if (op->method == MIRROR_METHOD_COPY) {
        IOVector qiov;
        qiov_init_buf(&qiov, op->buf, (size_t)n);
        ret = bdrv_co_preadv(s->mirror_top->backing, op->offset, n, &qiov, 0);
        if (ret < 0) {
            is_read = true;
        } else {
            ret = blk_co_pwritev(s->target, op->offset, n, &qiov, 0);
        }
    } else {
        ret = blk_co_pwrite_zeroes(s->target, op->offset, n,
                                   BDRV_REQ_MAY_UNMAP);
    }

    if (ret < 0) {
        /* not copied: dirty again, and the policy decides */
        bdrv_set_dirty_bitmap(s->dirty_bitmap, op->offset, n);
        op_failed(s, is_read, ret);
    } else {
        job_progress_update(&s->common.job, (uint64_t)n);
    }
    if (op->buf) {
        g_ptr_array_add(s->buf_pool, op->buf);
        s->buf_free += op->bytes;
    }
    s->in_flight--;
    s->bytes_in_flight -= op->bytes;
    op_free(op);
    co_queue_restart_all(&s->op_done);
    bdrv_wakeup(); /* a drain may wait for the last operation */
}

/* Wait until some background operation has finished (whichever is
 * first, not a particular one). */
static void coroutine_fn mirror_wait_for_any(MirrorJob *s)
{
    if (s->in_flight > 0) {
        co_queue_wait(&s->op_done, NULL);
    }
}

static void coroutine_fn mirror_wait_for_all_io(MirrorJob *s)
{
    while (s->in_flight > 0) {
        mirror_wait_for_any(s);
    }
}

static MirrorOp *coroutine_fn active_write_prepare(MirrorJob *s,
                                                   int64_t offset,
                                                   int64_t bytes)
{
    int64_t start = ALIGN_DOWN(offset, s->granularity);
    int64_t end = ALIGN_UP(offset + bytes, s->granularity);
    wait_on_conflicts(s, start, end - start);
    MirrorOp *op = op_new(s, start, end - start, MIRROR_METHOD_COPY, true);
    s->active_bytes_in_flight += op->bytes;
    return op;
}

static void active_write_settle(MirrorOp *op)
{
    MirrorJob *s = op->s;
    /* The job may be gone (ts->job NULL), never while we are in flight:
     * its exit drains the source first. */
    s->active_bytes_in_flight -= op->bytes;
    op_free(op);
}

/*
 * Write-blocking: the guest's write reached the source; send it to the
 * target too.  Partial granules at either end that are dirty anyway are
 * left to the background copy (their bits cannot be cleared for a part).
 */
static void coroutine_fn do_sync_target_write(MirrorJob *s,
                                              MirrorMethod method,
                                              int64_t offset, int64_t bytes,
                                              IOVector *qiov,
                                              BdrvRequestFlags flags)
{
    int64_t g = s->granularity;
    size_t qiov_offset = 0;

    if (offset % g && bdrv_dirty_bitmap_get(s->dirty_bitmap, offset)) {
        int64_t skip = ALIGN_UP(offset, g) - offset;
        if (bytes <= skip) {
            return;
        }
        qiov_offset = (size_t)skip;
        offset += skip;
        bytes -= skip;
    }
    if ((offset + bytes) % g &&
        bdrv_dirty_bitmap_get(s->dirty_bitmap, offset + bytes - 1)) {
        int64_t tail = (offset + bytes) % g;
        if (bytes <= tail) {
            return;
        }
        bytes -= tail;
    }
    int64_t bstart = ALIGN_UP(offset, g);
    int64_t bend = ALIGN_DOWN(offset + bytes, g);
    if (offset + bytes == s->len) {
        bend = s->len; /* the last granule may be short */
    }
    if (bstart < bend) {
        bdrv_reset_dirty_bitmap(s->dirty_bitmap, bstart, bend - bstart);
    }
    job_progress_increase_remaining(&s->common.job, (uint64_t)bytes);

    int ret;
    if (method == MIRROR_METHOD_ZERO) {
        ret = blk_co_pwrite_zeroes(
            s->target, offset, bytes,
            flags & (BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA));
    } else {
        IOVector part;
        qiov_init(&part, qiov->niov);
        qiov_concat(&part, qiov, qiov_offset, (size_t)bytes);
        ret = blk_co_pwritev(s->target, offset, bytes, &part,
                             flags & BDRV_REQ_FUA);
        qiov_destroy(&part);
    }
    if (ret >= 0) {
        job_progress_update(&s->common.job, (uint64_t)bytes);
        return;
    }
    /* The whole range (aligned out) is dirty again: the partial granules
     * were dirty before and nobody copied them meanwhile (we own them). */
    int64_t dstart = ALIGN_DOWN(offset, g);
    int64_t dend = MIN(ALIGN_UP(offset + bytes, g), s->len);
    bdrv_set_dirty_bitmap(s->dirty_bitmap, dstart, dend - dstart);
    op_failed(s, false, ret);
}

/*
 * Start one background operation on the first dirty extent at or after
 * the cursor.  Returns after starting it (or after waiting for an
 * operation that overlaps it, or for buffer space: the caller loops).
 */
static void coroutine_fn mirror_iteration(MirrorJob *s)
{
    int64_t off = bdrv_dirty_bitmap_next_dirty(s->dirty_bitmap, s->cursor,
                                               s->len - s->cursor);
    if (off < 0) {
        off = bdrv_dirty_bitmap_next_dirty(s->dirty_bitmap, 0, s->len);
        if (off < 0) {
            return;
        }
    }
    off = ALIGN_DOWN(off, s->copy_align);

    MirrorOp *busy = find_conflict(s, off, s->granularity);
    if (busy) {
        co_queue_wait(&busy->waiters, NULL);
        return;
    }

    /* The dirty run from off, not into an operation in flight. */
    int64_t limit = MIN(s->len - off, MIRROR_MAX_ZERO_BYTES);
    int64_t dstart, dcount;
    if (!bdrv_dirty_bitmap_next_dirty_area(s->dirty_bitmap, off, limit,
                                           &dstart, &dcount) ||
        dstart != off) {
        /* widened to copy_align: the run starts at the dirty granule */
        dcount = s->granularity;
    }
    int64_t bytes = dcount;
    MirrorOp *op;
    LIST_FOREACH (op, &s->ops, next) {
        if (op->offset > off && op->offset < off + bytes) {
            bytes = op->offset - off;
        }
    }

    /* The bits are cleared before the source's status is asked (which may
     * yield): a guest write meanwhile sets them again, so a decision made
     * on what the source read before that write is made good later. */
    int64_t cand_end = MIN(off + ALIGN_UP(bytes, s->granularity), s->len);
    bdrv_reset_dirty_bitmap(s->dirty_bitmap, off, cand_end - off);

    /* What the source reads there decides between copying and zeroing. */
    int64_t pnum = 0;
    BlockDriverState *src = s->mirror_top->backing->bs;
    int st = bdrv_co_block_status_above(src, NULL, off, bytes, &pnum, NULL,
                                        NULL);
    /* An active write may have taken the start meanwhile: later. */
    if (find_conflict(s, off, MIN(bytes, s->granularity))) {
        bdrv_set_dirty_bitmap(s->dirty_bitmap, off, cand_end - off);
        return;
    }
    /* Whole copy units, except at the end of the image.  A zero run
     * shorter than a unit is copied (the unit reads what it reads). */
    int64_t unit = s->copy_align;
    MirrorMethod method = MIRROR_METHOD_COPY;
    if (st >= 0 && pnum > 0) {
        int64_t cand = MIN(bytes, pnum);
        if (off + cand < s->len) {
            cand = ALIGN_DOWN(cand, unit);
        }
        if (cand > 0) {
            bytes = cand;
            if (!(st & BDRV_BLOCK_DATA)) {
                method = MIRROR_METHOD_ZERO;
            }
        } else {
            bytes = unit;
        }
    }
    if (method == MIRROR_METHOD_COPY) {
        bytes = MIN(bytes, s->max_io_bytes);
        if (off + bytes < s->len) {
            int64_t al = ALIGN_DOWN(bytes, unit);
            bytes = al > 0 ? al : unit;
        }
    }
    bytes = MIN(bytes, s->len - off);
    /* not into an active write that started while we asked */
    LIST_FOREACH (op, &s->ops, next) {
        if (op->offset > off && op->offset < off + bytes) {
            bytes = op->offset - off;
        }
    }
    int64_t own = MIN(ALIGN_UP(bytes, s->granularity), s->len - off);
    if (method == MIRROR_METHOD_COPY && own > s->max_io_bytes) {
        own = bytes = s->max_io_bytes; /* one pooled buffer */
    }
    if (off + own > cand_end) {
        /* widened past the dirty run (a copy unit): those bits too */
        bdrv_reset_dirty_bitmap(s->dirty_bitmap, cand_end,
                                off + own - cand_end);
    } else if (off + own < cand_end) {
        /* what this operation does not take stays dirty */
        bdrv_set_dirty_bitmap(s->dirty_bitmap, off + own,
                              cand_end - (off + own));
    }

    if (method == MIRROR_METHOD_COPY && s->buf_free < own &&
        s->in_flight > 0) {
        /* wait for buffer space (the buffer holds at least one
         * operation, so something is in flight) */
        bdrv_set_dirty_bitmap(s->dirty_bitmap, off, own);
        mirror_wait_for_any(s);
        return;
    }

    op = op_new(s, off, own, method, false);
    if (method == MIRROR_METHOD_COPY) {
        op->buf = s->buf_pool->len
                      ? g_ptr_array_steal_index_fast(s->buf_pool,
                                                     s->buf_pool->len - 1)
                      : blk_memalign(4096, (size_t)s->max_io_bytes);
        s->buf_free -= own;
        block_job_ratelimit_processed_bytes(&s->common, (uint64_t)bytes);
    }
    s->in_flight++;
    s->bytes_in_flight += own;
    s->cursor = off + own >= s->len ? 0 : off + own;
    Coroutine *co = coroutine_create(mirror_op_co, op);
    coroutine_enter(co);
}

/* ---- the job ---- */

/* Mark what needs copying before the loop starts (not for sync=none). */
static int coroutine_fn mirror_dirty_init(MirrorJob *s)
{
    BlockDriverState *src = s->mirror_top->backing->bs;

    if (!s->base) {
        /* sync=full: every byte, so that the target reads the same
         * zeroes too (the copy writes zeroes where the source has none) */
        bdrv_set_dirty_bitmap(s->dirty_bitmap, 0, s->len);
        return 0;
    }
    for (int64_t off = 0; off < s->len;) {
        int64_t pnum = 0;
        job_pause_point(&s->common.job);
        if (job_is_cancelled(&s->common.job)) {
            return 0;
        }
        int ret = bdrv_co_block_status_above(src, s->base, off, s->len - off,
                                             &pnum, NULL, NULL);
        if (ret < 0) {
            return ret;
        }
        if (pnum <= 0) {
            break;
        }
        if (ret & BDRV_BLOCK_ALLOCATED) {
            bdrv_set_dirty_bitmap(s->dirty_bitmap, off, pnum);
        }
        off += pnum;
    }
    return 0;
}

static int coroutine_fn mirror_flush(MirrorJob *s)
{
    int ret = blk_co_flush(s->target);
    if (ret < 0) {
        if (mirror_error_action(s, false, -ret) ==
            BLOCK_ERROR_ACTION_REPORT) {
            s->ret = ret;
        }
    }
    return ret;
}

static void coroutine_fn mirror_enter_drain(MirrorJob *s)
{
    BlockDriverState *src = s->mirror_top->backing->bs;
    s->in_drain = true;
    s->drained_bs = src;
    bdrv_ref(src);
    bdrv_drained_begin(src);
}

static int coroutine_fn mirror_run(Job *job, GError **errp)
{
    MirrorJob *s = (MirrorJob *)job;
    BlockDriverState *src = s->mirror_top->backing->bs;
    int ret = 0;

    s->len = bdrv_getlength(src);
    if (s->len < 0) {
        ret = (int)s->len;
        s->len = 0;
        goto out;
    }
    int64_t target_len = blk_getlength(s->target);
    if (target_len < 0) {
        ret = (int)target_len;
        goto out;
    }
    if (s->is_commit) {
        /* Active commit grows base to the top's size. */
        if (s->len > target_len) {
            ret = blk_co_truncate(s->target, s->len, false, PREALLOC_MODE_OFF,
                                  0, NULL);
            if (ret < 0) {
                goto out;
            }
        }
    } else if (s->len != target_len) {
        error_setg(errp, "Source and target image have different sizes");
        ret = -EINVAL;
        goto out;
    }

    if (s->len == 0) {
        /* Nothing to copy: ready at once, then wait for the word. */
        job_transition_to_ready(job);
        while (!job_cancel_requested(job) && !s->should_complete) {
            job_yield(job);
        }
        goto out;
    }

    if (!s->is_none_mode) {
        ret = mirror_dirty_init(s);
        if (ret < 0 || job_is_cancelled(job)) {
            goto out;
        }
    }

    s->last_yield_ns = clock_ns();
    for (;;) {
        if (s->ret < 0) {
            ret = s->ret;
            goto out;
        }
        job_pause_point(job);
        if (job_is_cancelled(job)) {
            ret = 0;
            goto out;
        }

        int64_t cnt = bdrv_dirty_bitmap_count(s->dirty_bitmap);
        job_progress_set_remaining(job, (uint64_t)(s->bytes_in_flight + cnt +
                                                   s->active_bytes_in_flight));

        /* Even unthrottled, stop now and then with nothing in flight so
         * that drains (and pauses) get their turn. */
        int64_t delta = clock_ns() - s->last_yield_ns;
        if (delta < BLOCK_JOB_SLICE_TIME_NS &&
            s->common.iostatus == BLOCK_DEVICE_IO_STATUS_OK) {
            if (s->in_flight >= MIRROR_MAX_IN_FLIGHT ||
                (cnt == 0 && s->in_flight > 0)) {
                mirror_wait_for_any(s);
                continue;
            } else if (cnt != 0) {
                if (s->common.speed &&
                    ratelimit_delay(&s->common.limit, clock_ns()) > 0) {
                    block_job_ratelimit_sleep(&s->common);
                    s->last_yield_ns = clock_ns();
                    continue;
                }
                mirror_iteration(s);
                continue;
            }
        }

        bool should_complete = false;
        if (s->in_flight == 0 && cnt == 0) {
            if (!job_is_ready(job)) {
                if (mirror_flush(s) < 0) {
                    continue; /* s->ret tells */
                }
                /* From now on a soft cancel completes the job with the
                 * target in sync (block-job-cancel after READY). */
                job_transition_to_ready(job);
            }
            should_complete = s->should_complete || job_cancel_requested(job);
            cnt = bdrv_dirty_bitmap_count(s->dirty_bitmap);
        }

        if (cnt == 0 && should_complete) {
            /* The last round, with nobody writing: drained until the exit
             * code has changed the graph. */
            mirror_enter_drain(s);
            cnt = bdrv_dirty_bitmap_count(s->dirty_bitmap);
            if (cnt > 0 || mirror_flush(s) < 0) {
                bdrv_drained_end(s->drained_bs);
                bdrv_unref(s->drained_bs);
                s->drained_bs = NULL;
                s->in_drain = false;
                continue;
            }
            ret = 0;
            break;
        }

        int64_t delay = 0;
        if (job_is_ready(job) && !should_complete) {
            delay = (s->in_flight == 0 && cnt == 0) ? BLOCK_JOB_SLICE_TIME_NS
                                                     : 0;
        }
        job_sleep_ns(job, delay);
        s->last_yield_ns = clock_ns();
    }

out:
    mirror_wait_for_all_io(s);
    g_ptr_array_set_size(s->buf_pool, 0); /* frees them */
    if (!s->in_drain) {
        mirror_enter_drain(s);
    }
    return ret;
}

static bool mirror_can_replace(BlockDriverState *bs, BlockDriverState *to)
{
    /* Only bs itself or a node below it through filters: anything else
     * would change what the parents read. */
    while (bs) {
        if (bs == to) {
            return true;
        }
        if (!bs->drv || !bs->drv->is_filter) {
            return false;
        }
        bs = bdrv_child_bs(bdrv_filter_or_cow_child(bs));
    }
    return false;
}

typedef struct ReopenRo {
    BlockDriverState *bs;
    bool read_only;
} ReopenRo;

static void coroutine_fn reopen_ro_co(void *opaque)
{
    ReopenRo *r = opaque;
    g_autoptr(GError) err = NULL;
    if (bdrv_co_reopen_set_read_only(r->bs, r->read_only, &err) < 0) {
        warn_report("mirror: %s", err->message);
    }
}

/* The exit runs in the loop or in a QMP coroutine (job-finalize). */
static void reopen_read_only(BlockDriverState *bs, bool read_only)
{
    ReopenRo r = {.bs = bs, .read_only = read_only};
    if (in_coroutine()) {
        reopen_ro_co(&r);
    } else {
        coroutine_run_sync(reopen_ro_co, &r);
    }
}

/*
 * drive-mirror: the target gets the backing chain its image names, before
 * it takes the source's place (as QEMU, also when a ready job is
 * cancelled without switching): the source's backing node (sync=top, or
 * none for sync=full), or the source itself (sync=none).  A failure is
 * reported, not fatal.
 */
static void mirror_target_backing(MirrorJob *s, BlockDriverState *src)
{
    BlockDriverState *t = bdrv_skip_filters(s->target_bs);
    BlockDriverState *backing = s->is_none_mode ? src : s->base;
    g_autoptr(GError) err = NULL;
    if (!t || bdrv_backing_bs(t) == backing) {
        return;
    }
    if (bdrv_set_backing_hd(t, backing, &err) < 0) {
        error_report("%s", err->message);
    }
    bdrv_refresh_filenames_up(t);
}

/* The end, success or not (prepare or abort): switch the graph if the job
 * was completed, take the filter out, end the drain run() began. */
static int mirror_exit_common(Job *job)
{
    MirrorJob *s = (MirrorJob *)job;
    if (s->prepared) {
        return 0;
    }
    s->prepared = true;

    BlockDriverState *top = s->mirror_top;
    BlockDriverState *src = top->backing->bs;
    BlockDriverState *target_bs = s->target_bs;
    bool abort = job->ret < 0;
    int ret = 0;
    g_autoptr(GError) err = NULL;

    bdrv_ref(src);
    bdrv_ref(top);
    bdrv_ref(target_bs);

    if (s->dirty_bitmap) {
        bdrv_release_dirty_bitmap(s->dirty_bitmap);
        s->dirty_bitmap = NULL;
    }
    /* Our writer on the target goes first: where the target is going its
     * new parents may need what it keeps from others. */
    blk_unref(s->target);
    s->target = NULL;

    /* Nothing goes through the filter any more (drained until the end). */
    bdrv_drained_begin(top);
    mirror_top_stop(top);

    /* The graph changes now: the job's hold on the chain and its edges
     * (which carry its blocker) go first. */
    block_job_remove_all_bdrv(&s->common);
    /* The job's own user of the filter would follow the filter's parents
     * onto the node below; it has no business there. */
    if (s->common.blk) {
        blk_remove_bs(s->common.blk);
    }

    if (!abort && s->backing_mode != MIRROR_LEAVE_BACKING_CHAIN) {
        mirror_target_backing(s, src);
    }

    if (s->should_complete && !abort) {
        BlockDriverState *to_replace = s->to_replace ? s->to_replace : src;
        /* The target takes the replaced node's place as it was: a
         * read-only source gives a read-only target (as QEMU). */
        if (bdrv_is_read_only(to_replace) != bdrv_is_read_only(target_bs)) {
            reopen_read_only(target_bs, bdrv_is_read_only(to_replace));
        }
        bdrv_drained_begin(target_bs);
        if (mirror_can_replace(src, to_replace)) {
            /* the parents' json:{} names now name the target's file */
            if (bdrv_replace_node(to_replace, target_bs, &err) == 0) {
                bdrv_refresh_filenames_up(target_bs);
            }
        } else {
            error_setg(&err,
                       "Can no longer replace '%s' by '%s', because it can "
                       "no longer be guaranteed that doing so would not lead "
                       "to an abrupt change of visible data",
                       to_replace->node_name, target_bs->node_name);
        }
        bdrv_drained_end(target_bs);
        if (err) {
            error_report("%s", err->message);
            g_clear_error(&err);
            ret = -EPERM;
        }
    }
    if (s->to_replace) {
        bdrv_unref(s->to_replace);
        s->to_replace = NULL;
    }

    /* The filter's parents go to what is below it now (the target after a
     * switch). */
    bdrv_remove_filter(top, "mirror");

    if (s->drained_bs) {
        bdrv_drained_end(s->drained_bs);
        bdrv_unref(s->drained_bs);
        s->drained_bs = NULL;
        s->in_drain = false;
    }
    bdrv_drained_end(top);
    /* our reference from the creation, and the one above */
    s->mirror_top = NULL;
    bdrv_unref(top);
    bdrv_unref(top);
    bdrv_unref(target_bs);
    bdrv_unref(src);
    return ret;
}

static int mirror_prepare(Job *job, GError **errp)
{
    (void)errp;
    return mirror_exit_common(job);
}

static void mirror_abort(Job *job)
{
    mirror_exit_common(job);
}

static void mirror_complete(Job *job, GError **errp)
{
    MirrorJob *s = (MirrorJob *)job;

    if (!job_is_ready(job)) {
        error_setg(errp, "The active block job '%s' cannot be completed",
                   job->id ? job->id : "");
        return;
    }
    if (s->replaces && !s->to_replace) {
        s->to_replace = bdrv_find_node(s->replaces);
        if (!s->to_replace) {
            error_setg(errp, "Node name '%s' not found", s->replaces);
            return;
        }
        bdrv_ref(s->to_replace);
    }
    s->should_complete = true;
    /* a paused job goes on when resumed */
    if (!job->paused) {
        job_enter(job);
    }
}

static bool mirror_cancel(Job *job, bool force)
{
    /* Before READY every cancel is forced; after it a soft one completes
     * the job (target in sync) without switching. */
    return force || !job_is_ready(job);
}

static bool mirror_drained_poll(Job *job)
{
    MirrorJob *s = (MirrorJob *)job;
    /* A running job may issue more requests at any moment, unless we are
     * in our own drain (waiting for ourselves would never end). */
    if (!job->paused && !job_is_cancelled(job) && !s->in_drain) {
        return true;
    }
    return s->in_flight > 0;
}

static void mirror_free(Job *job)
{
    MirrorJob *s = (MirrorJob *)job;
    if (s->buf_pool) {
        g_ptr_array_unref(s->buf_pool);
        s->buf_pool = NULL;
    }
    g_free(s->replaces);
    s->replaces = NULL;
    if (s->to_replace) {
        bdrv_unref(s->to_replace);
        s->to_replace = NULL;
    }
}

static const BlockJobDriver mirror_job_driver = {
    .job_driver = {
        .instance_size = sizeof(MirrorJob),
        .job_type = JOB_TYPE_MIRROR,
        .run = mirror_run,
        .prepare = mirror_prepare,
        .abort = mirror_abort,
        .complete = mirror_complete,
        .cancel = mirror_cancel,
        .drained_poll = mirror_drained_poll,
        .free = mirror_free,
    },
};

static const BlockJobDriver commit_active_job_driver = {
    .job_driver = {
        .instance_size = sizeof(MirrorJob),
        .job_type = JOB_TYPE_COMMIT,
        .run = mirror_run,
        .prepare = mirror_prepare,
        .abort = mirror_abort,
        .complete = mirror_complete,
        .cancel = mirror_cancel,
        .drained_poll = mirror_drained_poll,
        .free = mirror_free,
    },
};

/* ---- creation ---- */

/* The node whose filtered/backing child is `base`, starting at bs. */
static BlockDriverState *find_overlay(BlockDriverState *bs,
                                      BlockDriverState *base)
{
    while (bs) {
        BlockDriverState *below = bdrv_child_bs(bdrv_filter_or_cow_child(bs));
        if (below == base) {
            return bs;
        }
        bs = below;
    }
    return NULL;
}

typedef struct MirrorParams {
    const char *job_id;
    BlockDriverState *bs;
    BlockDriverState *target;
    const char *replaces;
    int flags;
    int64_t speed;
    int64_t granularity; /* 0: default */
    int64_t buf_size;    /* 0: default */
    bool is_none_mode;
    BlockDriverState *base;
    BlockdevOnError on_source_error, on_target_error;
    const char *filter_node_name;
    MirrorCopyMode copy_mode;
    const BlockJobDriver *driver;
    MirrorBackingMode backing_mode;
} MirrorParams;

/* A target that names a backing file in its header but has no backing
 * node cannot fill the rest of a partly written cluster from it. */
static int64_t coroutine_fn copy_alignment(BlockDriverState *target,
                                           int64_t granularity)
{
    BlockDriverState *t = bdrv_skip_filters(target);
    if (!t || !t->backing_file[0] || bdrv_backing_bs(t)) {
        return granularity;
    }
    int64_t cs = 0;
    bool dirty = false;
    if (bdrv_co_get_bdi(target, &cs, &dirty, NULL) < 0 || cs <= granularity) {
        return granularity;
    }
    return cs;
}

/* QEMU's mirror_start_job: checks, filter, job, edges; starts the job. */
static MirrorJob *coroutine_fn mirror_start_job(const MirrorParams *p,
                                                GError **errp)
{
    BlockDriverState *bs = p->bs;
    BlockDriverState *target = p->target;
    int64_t granularity = p->granularity;
    int64_t buf_size = p->buf_size;

    if (granularity == 0) {
        granularity = bdrv_co_default_bitmap_granularity(target);
    }
    if (buf_size < 0) {
        error_setg(errp, "Invalid parameter 'buf-size'");
        return NULL;
    }
    if (buf_size == 0) {
        buf_size = MIRROR_DEFAULT_BUF_SIZE;
    }
    if (bdrv_skip_filters(bs) == bdrv_skip_filters(target)) {
        error_setg(errp, "Can't mirror node into itself");
        return NULL;
    }
    bool target_is_backing = bdrv_chain_contains(bs, target);
    /* asked before the filter goes in: nothing may yield between the
     * filter's insertion and its job taking over */
    int64_t copy_align = copy_alignment(target, granularity);

    BlockDriverState *top =
        mirror_top_insert(bs, p->filter_node_name, target_is_backing, errp);
    if (!top) {
        return NULL;
    }

    /* As QEMU, the job exists (created, then null) when the speed is
     * refused: create it unthrottled, then set the speed. */
    MirrorJob *s = block_job_create(
        p->job_id, p->driver, NULL, top, BLK_PERM_CONSISTENT_READ,
        BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE,
        0, p->flags, NULL, NULL, errp);
    if (!s) {
        mirror_top_remove(top);
        bdrv_unref(top);
        return NULL;
    }
    s->mirror_top = top;
    if (!block_job_set_speed(&s->common, p->speed, errp)) {
        goto fail;
    }

    /* The target may not be read consistently while the copy runs, nor
     * written or resized by others.  Active commit's target is base, in
     * use by the chain: only resize stays ours. */
    uint64_t target_perms = BLK_PERM_WRITE;
    uint64_t target_shared = BLK_PERM_WRITE_UNCHANGED;
    if (target_is_backing) {
        int64_t bs_size = bdrv_getlength(bs);
        if (bs_size < 0) {
            error_setg_errno(errp, (int)-bs_size,
                             "Could not inquire top image size");
            goto fail;
        }
        int64_t target_size = bdrv_getlength(target);
        if (target_size < 0) {
            error_setg_errno(errp, (int)-target_size,
                             "Could not inquire base image size");
            goto fail;
        }
        if (target_size < bs_size) {
            target_perms |= BLK_PERM_RESIZE;
        }
        target_shared |= BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;
    } else if (bdrv_chain_contains(bs, bdrv_skip_filters(target))) {
        error_setg(errp, "Cannot mirror to a filter on top of a node in the "
                         "source's backing chain");
        goto fail;
    }
    s->target = blk_new(target_perms, target_shared);
    if (blk_insert_bs(s->target, target, errp) < 0) {
        goto fail;
    }
    blk_set_disable_request_queuing(s->target, true);
    s->target_bs = target;

    s->replaces = g_strdup(p->replaces);
    s->on_source_error = p->on_source_error;
    s->on_target_error = p->on_target_error;
    s->is_none_mode = p->is_none_mode;
    s->is_commit = target_is_backing;
    s->backing_mode = p->backing_mode;
    s->copy_mode = p->copy_mode;
    s->base = p->base;
    s->granularity = granularity;
    s->buf_size = ALIGN_UP(buf_size, granularity);
    s->max_io_bytes = MAX(s->buf_size / MIRROR_MAX_IN_FLIGHT,
                          (int64_t)MIRROR_MAX_IO_BYTES);
    s->max_io_bytes = MAX(ALIGN_DOWN(s->max_io_bytes, granularity),
                          granularity);
    s->copy_align = copy_align;
    if (s->copy_align > s->max_io_bytes) {
        s->max_io_bytes = s->copy_align;
    }
    s->buf_size = MAX(s->buf_size, s->max_io_bytes);
    s->buf_free = s->buf_size;
    /* run() asks again; the filter may need it before run() starts */
    s->len = bdrv_getlength(bs);
    LIST_INIT(&s->ops);
    co_queue_init(&s->op_done);
    s->buf_pool = g_ptr_array_new_with_free_func(blk_vfree);

    s->dirty_bitmap =
        bdrv_create_dirty_bitmap(bs, (uint32_t)granularity, NULL, errp);
    if (!s->dirty_bitmap) {
        goto fail;
    }
    /* As QEMU: in write-blocking mode the filter marks what it did not
     * send to the target; otherwise the bitmap records every write to
     * the source (also one that bypasses the filter). */
    if (p->copy_mode == MIRROR_COPY_MODE_WRITE_BLOCKING) {
        bdrv_disable_dirty_bitmap(s->dirty_bitmap);
    }

    if (block_job_add_bdrv(&s->common, "source", bs, 0,
                           BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE |
                               BLK_PERM_CONSISTENT_READ,
                           errp) < 0) {
        goto fail;
    }
    if (block_job_add_bdrv(&s->common, "target", target, 0, BLK_PERM_ALL,
                           errp) < 0) {
        goto fail;
    }
    if (target_is_backing) {
        /* The layers between top and base disappear from the chain at the
         * end: nobody else may use them meanwhile. */
        BlockDriverState *filtered_target =
            bdrv_child_bs(bdrv_filter_or_cow_child(find_overlay(bs, target)));
        uint64_t iter_shared = BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE;
        for (BlockDriverState *it =
                 bdrv_child_bs(bdrv_filter_or_cow_child(bs));
             it && it != target;
             it = bdrv_child_bs(bdrv_filter_or_cow_child(it))) {
            if (it == filtered_target) {
                /* from here on only filters on base */
                iter_shared |= BLK_PERM_CONSISTENT_READ;
            }
            if (block_job_add_bdrv(&s->common, "intermediate node", it, 0,
                                   iter_shared, errp) < 0) {
                goto fail;
            }
        }
        block_job_hold_chain(&s->common, top, target);
    } else {
        /* The filter's edge to the source is what the job works through. */
        block_job_hold_chain(&s->common, top, bs);
    }

    MirrorTopState *ts = top->opaque;
    ts->job = s;
    job_start(&s->common.job);
    return s;

fail:
    ((MirrorTopState *)top->opaque)->job = NULL;
    if (s->dirty_bitmap) {
        bdrv_release_dirty_bitmap(s->dirty_bitmap);
        s->dirty_bitmap = NULL;
    }
    if (s->target) {
        blk_unref(s->target);
        s->target = NULL;
    }
    s->mirror_top = NULL;
    /* The job's edges and BlockBackend on the filter go with the job. */
    job_early_fail(&s->common.job);
    mirror_top_remove(top);
    bdrv_unref(top);
    return NULL;
}

/* ---- blockdev-mirror ---- */

/* QEMU enters a started job at once: it runs to its first yield (and a
 * job that fails at once is finished) before the command returns.  Let
 * the loop run the job's coroutine, then its exit. */
static void coroutine_fn mirror_let_job_start(void)
{
    for (int i = 0; i < 2 && in_coroutine(); i++) {
        coroutine_wake(coroutine_self());
        coroutine_yield();
    }
}

/* QEMU's check_to_replace_node. */
static BlockDriverState *check_to_replace_node(BlockDriverState *bs,
                                               const char *name,
                                               GError **errp)
{
    BlockDriverState *to_replace = bdrv_find_node(name);
    if (!to_replace) {
        error_setg(errp, "Failed to find node with node-name='%s'", name);
        return NULL;
    }
    /* QEMU names the newest blocker first: a job's comes after the
     * backing link's */
    if (block_job_node_busy(to_replace, errp)) {
        return NULL;
    }
    const char *user = bdrv_backing_user(to_replace);
    if (user) {
        error_setg(errp, "Node '%s' is busy: node is used as backing hd of "
                         "'%s'",
                   name, user);
        return NULL;
    }
    if (!mirror_can_replace(bs, to_replace)) {
        error_setg(errp,
                   "Cannot replace '%s' by a node mirrored from '%s', because "
                   "it cannot be guaranteed that doing so would not lead to "
                   "an abrupt change of visible data",
                   name, bs->node_name);
        return NULL;
    }
    return to_replace;
}

void qmp_blockdev_mirror(q_obj_blockdev_mirror_arg *arg, GError **errp)
{
    BlockDriverState *bs = bdrv_lookup_root_bs(arg->device, errp);
    if (!bs) {
        return;
    }
    BlockDriverState *target = bdrv_lookup_bs(arg->target, arg->target, errp);
    if (!target) {
        return;
    }
    mirror_start_qmp(arg, target, MIRROR_LEAVE_BACKING_CHAIN, errp);
}

void coroutine_fn mirror_start_qmp(q_obj_blockdev_mirror_arg *arg,
                                   BlockDriverState *target,
                                   MirrorBackingMode backing_mode,
                                   GError **errp)
{
    BlockDriverState *bs = bdrv_lookup_bs(arg->device, arg->device, errp);
    if (!bs) {
        return;
    }

    int64_t granularity = arg->has_granularity ? arg->granularity : 0;
    if (granularity != 0 &&
        (granularity < 512 || granularity > MIRROR_MAX_GRANULARITY)) {
        error_setg(errp, "Parameter 'granularity' expects a value in range "
                         "[512B, 64MB]");
        return;
    }
    if (granularity & (granularity - 1)) {
        error_setg(errp, "Parameter 'granularity' expects a power of 2");
        return;
    }
    /* QEMU's op blockers: a node a job uses is neither source nor target
     * of another mirror; a backing file is no target. */
    if (block_job_node_busy(bs, errp)) {
        return;
    }
    if (block_job_node_busy(target, errp)) {
        return;
    }
    const char *user = bdrv_backing_user(target);
    if (user) {
        error_setg(errp, "Node '%s' is busy: node is used as backing hd of "
                         "'%s'",
                   target->node_name, user);
        return;
    }

    MirrorSyncMode sync = arg->sync;
    BlockDriverState *unfiltered = bdrv_skip_filters(bs);
    BlockDriverState *backing =
        unfiltered ? bdrv_skip_filters(bdrv_backing_bs(unfiltered)) : NULL;
    if (!backing && sync == MIRROR_SYNC_MODE_TOP) {
        sync = MIRROR_SYNC_MODE_FULL;
    }

    const char *replaces = arg->has_replaces ? arg->replaces : NULL;
    if (!replaces) {
        /* mirror from bs, but keep implicit filters above the target */
        BlockDriverState *u = bdrv_skip_implicit_filters(bs);
        if (u && u != bs) {
            replaces = u->node_name;
        }
    }
    if (replaces) {
        int64_t bs_size = bdrv_getlength(bs);
        if (bs_size < 0) {
            error_setg_errno(errp, (int)-bs_size,
                             "Failed to query device's size");
            return;
        }
        BlockDriverState *to_replace =
            check_to_replace_node(bs, replaces, errp);
        if (!to_replace) {
            return;
        }
        int64_t replace_size = bdrv_getlength(to_replace);
        if (replace_size < 0) {
            error_setg_errno(errp, (int)-replace_size,
                             "Failed to query the replacement node's size");
            return;
        }
        if (bs_size != replace_size) {
            error_setg(errp, "cannot replace image with a mirror image of "
                             "different size");
            return;
        }
    }

    if (sync == MIRROR_SYNC_MODE_INCREMENTAL ||
        sync == MIRROR_SYNC_MODE_BITMAP) {
        error_setg(errp, "Sync mode '%s' not supported",
                   MirrorSyncMode_str(sync));
        return;
    }

    int flags = JOB_DEFAULT;
    if (arg->has_auto_finalize && !arg->auto_finalize) {
        flags |= JOB_MANUAL_FINALIZE;
    }
    if (arg->has_auto_dismiss && !arg->auto_dismiss) {
        flags |= JOB_MANUAL_DISMISS;
    }
    MirrorParams p = {
        .job_id = arg->has_job_id ? arg->job_id : "",
        .bs = bs,
        .target = target,
        .replaces = replaces,
        .flags = flags,
        .speed = arg->has_speed ? arg->speed : 0,
        .granularity = granularity,
        .buf_size = arg->has_buf_size ? arg->buf_size : 0,
        .is_none_mode = sync == MIRROR_SYNC_MODE_NONE,
        .base = sync == MIRROR_SYNC_MODE_TOP ? backing : NULL,
        .on_source_error = arg->has_on_source_error ? arg->on_source_error
                                                    : BLOCKDEV_ON_ERROR_REPORT,
        .on_target_error = arg->has_on_target_error ? arg->on_target_error
                                                    : BLOCKDEV_ON_ERROR_REPORT,
        .filter_node_name =
            arg->has_filter_node_name ? arg->filter_node_name : NULL,
        .copy_mode =
            arg->has_copy_mode ? arg->copy_mode : MIRROR_COPY_MODE_BACKGROUND,
        .driver = &mirror_job_driver,
        .backing_mode = backing_mode,
    };
    if (mirror_start_job(&p, errp)) {
        mirror_let_job_start();
    }
}

/* ---- active commit ---- */

BlockJob *coroutine_fn mirror_start_active_commit(
    const char *job_id, BlockDriverState *bs, BlockDriverState *base,
    int creation_flags, int64_t speed, BlockdevOnError on_error,
    const char *filter_node_name, bool auto_finalize, bool auto_dismiss,
    GError **errp)
{
    int flags = creation_flags;
    if (!auto_finalize) {
        flags |= JOB_MANUAL_FINALIZE;
    }
    if (!auto_dismiss) {
        flags |= JOB_MANUAL_DISMISS;
    }
    /* As QEMU: a read-only base (a backing file opened from the header)
     * is reopened read-write for the job, and stays so (it becomes the
     * active layer, or already holds copies of the layers above). */
    bool base_ro = bdrv_is_read_only(base);
    if (base_ro && bdrv_co_reopen_set_read_only(base, false, errp) < 0) {
        return NULL;
    }
    MirrorParams p = {
        .job_id = job_id,
        .bs = bs,
        .target = base,
        .flags = flags,
        .speed = speed,
        .base = base,
        .on_source_error = on_error,
        .on_target_error = on_error,
        .filter_node_name = filter_node_name,
        .copy_mode = MIRROR_COPY_MODE_BACKGROUND,
        .driver = &commit_active_job_driver,
    };
    /* Runs in a QMP coroutine (block-commit). */
    MirrorJob *s = mirror_start_job(&p, errp);
    if (!s) {
        if (base_ro) {
            /* the original error is the one to report */
            bdrv_co_reopen_set_read_only(base, true, NULL);
        }
        return NULL;
    }
    mirror_let_job_start();
    return &s->common;
}
