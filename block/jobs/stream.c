/*
 * block-stream: copy into a node (the "top") everything its backing chain
 * holds down to a base, then make base the top's backing file (or none
 * without a base: the top stands alone).  Argument checks, messages and
 * events follow qemu-storage-daemon 7.2.
 *
 * For the job's lifetime a copy-on-read filter sits above the top (its
 * parents, an NBD export say, move onto it), so reads by other users
 * populate the top as well and their writes are ordered with the copies.
 * The job reads through that filter with BDRV_REQ_PREFETCH every range
 * that a layer between the top and base allocates; the filter writes it
 * into the top.  The chain top..base is held (graph-mod counter) until
 * the job's own final graph change.
 *
 * Terms as in QEMU: base_overlay is the lowest layer whose data is
 * copied, above_base the node directly above base (the same node unless
 * filters sit between them); base may change below above_base while the
 * job runs, so it is looked up again at the end.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/copy-on-read.h"
#include "block/jobs/blockjob.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"
#include "util/error.h"

/* How much one step looks at (and copies at most), as QEMU. */
#define STREAM_CHUNK (512 * 1024)
/* Copies in flight at most when the speed is unlimited. */
#define STREAM_MAX_IN_FLIGHT 4

typedef struct StreamOp StreamOp;

typedef struct StreamJob {
    BlockJob common;
    BlockDriverState *target;       /* the node streamed into (device) */
    BlockDriverState *cor;          /* the filter above it, until dropped */
    BlockDriverState *base_overlay; /* lowest layer copied from */
    BlockDriverState *above_base;   /* the node base hangs below */
    char *backing_file;             /* backing-file argument, or NULL */
    BlockdevOnError on_error;
    bool target_read_only; /* reopened read-write for the job */

    /* the copy loop (stream_run) */
    GQueue ops;      /* StreamOp *, in the order they were started */
    GQueue retry;    /* StreamRange *: stopped by an error, to redo */
    GPtrArray *bufs; /* STREAM_CHUNK buffers kept for reuse */
    int in_flight;
    int64_t cluster_size; /* of the top (1 if it has none) */
    CoQueue wake;         /* the loop waiting for an operation */
} StreamJob;

/*
 * One copy in flight: a prefetch read through the filter, which writes
 * what it read into the top.  Copies read at the same time, but one
 * writes only once every copy started before it has read its range
 * (the filter's read hook waits for that); if one of them failed, it
 * does not write at all and its range is taken again later.  So a read
 * error leaves the top as copies one at a time would.
 */
struct StreamOp {
    StreamJob *s;
    int64_t offset, bytes;
    void *buf;
    int ret;
    bool reading;   /* a read of the filter for it is under way */
    bool read_done; /* the filter read its whole range */
    bool abandoned; /* not written because an older copy failed */
    bool copy;      /* false: a range with nothing to copy, settled in
                     * order after the copies before it */
    bool done;
};

typedef struct StreamRange {
    int64_t offset, end;
} StreamRange;

/* ---- the copy ---- */

/*
 * The filter's read hook.  A copy that has read waits for the reads of
 * the older copies, but only for reads under way: an older copy that is
 * not reading yet (or again) may be waiting in the filter for a request
 * that waits for this one, so then this one gives up instead (and its
 * range is taken again).  Every wait thus points at an older request of
 * the filter, and no cycle can form.
 */
static bool coroutine_fn stream_read_hook(void *opaque, int64_t offset,
                                          int64_t bytes, bool read)
{
    StreamJob *s = opaque;
    StreamOp *me = NULL;
    for (GList *l = s->ops.head; l; l = l->next) {
        StreamOp *op = l->data;
        if (!op->done && offset < op->offset + op->bytes &&
            op->offset < offset + bytes) {
            me = op;
            break;
        }
    }
    if (!me) {
        return true; /* not one of ours */
    }
    if (!read) {
        me->reading = true;
        return true;
    }
    me->reading = false;
    /* the read reaching the end of the operation's range (the filter
     * widens it to whole clusters) */
    if (offset + bytes >= me->offset + me->bytes) {
        me->read_done = true;
    }
    co_queue_restart_all(&s->wake);
    for (;;) {
        bool wait = false;
        for (GList *l = s->ops.head; l && l->data != me; l = l->next) {
            StreamOp *op = l->data;
            if (op->done ? op->ret < 0 : !op->read_done && !op->reading) {
                me->abandoned = true;
                return false;
            }
            if (!op->done && !op->read_done) {
                wait = true;
            }
        }
        if (!wait) {
            return true;
        }
        co_queue_wait(&s->wake, NULL);
    }
}

static void coroutine_fn stream_op_co(void *opaque)
{
    StreamOp *op = opaque;
    StreamJob *s = op->s;
    IOVector q;
    qiov_init_buf(&q, op->buf, (size_t)op->bytes);
    op->ret = blk_co_preadv(s->common.blk, op->offset, op->bytes, &q,
                            BDRV_REQ_PREFETCH);
    op->done = true;
    s->in_flight--;
    co_queue_restart_all(&s->wake);
    bdrv_wakeup(); /* a drain may wait for the last operation */
}

typedef enum {
    STREAM_NEXT,  /* the range is done with */
    STREAM_RETRY, /* stopped (paused): the range again after resume */
    STREAM_BREAK, /* reported: the job fails */
} StreamSettle;

/* What a step's result means, as one step after another in QEMU. */
static StreamSettle stream_settle(StreamJob *s, int64_t n, bool copy, int ret,
                                  int *error, int64_t *delay_ns)
{
    Job *job = &s->common.job;
    if (ret < 0) {
        BlockErrorAction action =
            block_job_error_action(&s->common, s->on_error, true, -ret);
        if (action == BLOCK_ERROR_ACTION_STOP) {
            return STREAM_RETRY;
        }
        if (*error == 0) {
            *error = ret;
        }
        if (action == BLOCK_ERROR_ACTION_REPORT) {
            return STREAM_BREAK;
        }
        /* ignore: go on, but the job fails at the end */
    }
    job_progress_update(job, (uint64_t)n);
    if (copy) {
        block_job_ratelimit_processed_bytes(&s->common, (uint64_t)n);
        *delay_ns = ratelimit_delay(&s->common.limit, clock_ns());
    }
    return STREAM_NEXT;
}

static void stream_add_retry(StreamJob *s, int64_t offset, int64_t end)
{
    StreamRange *r = g_new(StreamRange, 1);
    r->offset = offset;
    r->end = end;
    g_queue_push_tail(&s->retry, r);
}

/* Settle the finished operations at the head of the queue, oldest first;
 * false if the job fails now. */
static bool stream_settle_done(StreamJob *s, int *error, int64_t *delay_ns)
{
    StreamOp *op;
    bool redo = false; /* what follows a range to redo waits for it */
    while ((op = g_queue_peek_head(&s->ops)) && op->done) {
        g_queue_pop_head(&s->ops);
        StreamSettle r = STREAM_RETRY; /* abandoned: not copied */
        if (!op->abandoned && !(redo && !op->copy)) {
            r = stream_settle(s, op->bytes, op->copy, op->ret, error, delay_ns);
        }
        if (r == STREAM_RETRY) {
            stream_add_retry(s, op->offset, op->offset + op->bytes);
            redo = true;
        }
        if (op->buf) {
            g_ptr_array_add(s->bufs, op->buf);
        }
        g_free(op);
        if (r == STREAM_BREAK) {
            return false;
        }
    }
    return true;
}

static bool stream_any_failed(StreamJob *s)
{
    for (GList *l = s->ops.head; l; l = l->next) {
        StreamOp *op = l->data;
        if (op->done && op->ret < 0) {
            return true;
        }
    }
    return false;
}

/* A copy of [offset, offset + bytes) may start: there is room, and no
 * copy in flight shares a cluster of the top with it (the filter would
 * order the two, and the older could end up waiting for the newer). */
static bool stream_may_start(StreamJob *s, int64_t offset, int64_t bytes)
{
    if (s->in_flight >= STREAM_MAX_IN_FLIGHT) {
        return false;
    }
    int64_t cs = s->cluster_size;
    int64_t start = offset / cs * cs;
    int64_t end = (offset + bytes + cs - 1) / cs * cs;
    for (GList *l = s->ops.head; l; l = l->next) {
        StreamOp *op = l->data;
        int64_t ostart = op->offset / cs * cs;
        int64_t oend = (op->offset + op->bytes + cs - 1) / cs * cs;
        if (!op->done && ostart < end && start < oend) {
            return false;
        }
    }
    return true;
}

/*
 * Look at [offset, end): sets *n to how much of it the answer covers and
 * *copy if a layer above base has it and the top does not.  Returns
 * < 0 if the status could not be read.
 */
static int coroutine_fn stream_examine(BlockDriverState *top,
                                       BlockDriverState *limit, int64_t len,
                                       int64_t offset, int64_t end, int64_t *n,
                                       bool *copy)
{
    int ret =
        bdrv_co_is_allocated(top, offset, MIN(STREAM_CHUNK, end - offset), n);
    *copy = false;
    if (ret == 1) {
        /* the top has it already */
    } else if (ret >= 0) {
        /* Copy if a layer above base has it; only within the range the
         * top does not hold. */
        BlockDriverState *below = bdrv_child_bs(bdrv_filter_or_cow_child(top));
        int64_t m = 0;
        ret = below ? bdrv_co_block_status_above(below, limit, offset, *n, &m,
                                                 NULL, NULL)
                    : 0;
        if (ret >= 0) {
            if (m <= 0) {
                /* past the end of the backing chain: nothing more */
                m = len - offset;
                ret = 0;
            }
            *n = MIN(m, end - offset);
            *copy = ret & BDRV_BLOCK_ALLOCATED;
            ret = 0;
        }
    }
    if (ret >= 0) {
        *n = MIN(*n, end - offset);
    }
    return ret;
}

static int coroutine_fn stream_run(Job *job, GError **errp)
{
    StreamJob *s = (StreamJob *)job;
    BlockDriverState *top = bdrv_skip_filters(s->target);
    int error = 0;
    (void)errp; /* failures report as strerror, as QEMU's */

    if (top == s->base_overlay) {
        return 0; /* nothing between top and base */
    }
    int64_t len = bdrv_getlength(s->target);
    if (len < 0) {
        return (int)len;
    }
    job_progress_set_remaining(job, (uint64_t)len);

    /* Where the copied layers end: below base_overlay. */
    BlockDriverState *limit =
        bdrv_child_bs(bdrv_filter_or_cow_child(s->base_overlay));
    g_queue_init(&s->ops);
    g_queue_init(&s->retry);
    co_queue_init(&s->wake);
    s->bufs = g_ptr_array_new_with_free_func(blk_vfree);
    s->in_flight = 0;
    bool dirty;
    if (bdrv_co_get_bdi(top, &s->cluster_size, &dirty, NULL) < 0 ||
        s->cluster_size <= 0) {
        s->cluster_size = 1;
    }
    if (s->cor) {
        bdrv_cor_filter_set_read_hook(s->cor, stream_read_hook, s);
    }

    /*
     * Step by step as QEMU 7.2's stream (one sleep per step, which is a
     * pause point: a pause or a speed change that interrupts it lets the
     * next step go), except that without a speed limit a step does not
     * wait for its copy to finish: up to STREAM_MAX_IN_FLIGHT copies run
     * at once, their results settled in the order they started.  With a
     * speed, each step waits for its copy, exactly one after another.
     */
    int64_t pos = 0; /* what is not looked at yet starts here */
    int64_t delay_ns = 0;
    for (;;) {
        if (!stream_settle_done(s, &error, &delay_ns)) {
            break;
        }
        /* Even unlimited, yield here so drains and pauses get their
         * turn. */
        job_sleep_ns(job, delay_ns);
        delay_ns = 0;
        if (job_is_cancelled(job)) {
            break;
        }
        StreamRange *r = g_queue_peek_head(&s->retry);
        if (!r && pos >= len) {
            if (s->ops.length == 0) {
                break; /* all done */
            }
            while (!((StreamOp *)g_queue_peek_head(&s->ops))->done) {
                co_queue_wait(&s->wake, NULL);
            }
            continue;
        }
        int64_t offset = r ? r->offset : pos;
        int64_t end = r ? r->end : len;
        int64_t n = 0;
        bool copy = false;
        int ret = stream_examine(top, limit, len, offset, end, &n, &copy);

        if (ret >= 0 && copy) {
            while (!stream_may_start(s, offset, n)) {
                co_queue_wait(&s->wake, NULL);
            }
            if (stream_any_failed(s)) {
                /* the failure first: this range is looked at again */
                while (!((StreamOp *)g_queue_peek_head(&s->ops))->done) {
                    co_queue_wait(&s->wake, NULL);
                }
                continue;
            }
            StreamOp *op = g_new0(StreamOp, 1);
            op->s = s;
            op->offset = offset;
            op->bytes = n;
            op->copy = true;
            op->buf =
                s->bufs->len
                    ? g_ptr_array_steal_index_fast(s->bufs, s->bufs->len - 1)
                    : blk_memalign(4096, STREAM_CHUNK);
            g_queue_push_tail(&s->ops, op);
            s->in_flight++;
            coroutine_enter(coroutine_create(stream_op_co, op));
            if (s->common.speed) {
                /* one after another: settled before the next sleep */
                while (!op->done) {
                    co_queue_wait(&s->wake, NULL);
                }
            }
        } else if (ret >= 0 && !g_queue_is_empty(&s->ops)) {
            /* nothing to copy, but counted after the copies before it
             * (as if they had run one after another) */
            StreamOp *op = g_new0(StreamOp, 1);
            op->s = s;
            op->offset = offset;
            op->bytes = n;
            op->done = true;
            g_queue_push_tail(&s->ops, op);
        } else {
            if (!g_queue_is_empty(&s->ops)) {
                /* the status could not be read: what is in flight
                 * comes first, and if some of it is to be redone, this
                 * range is looked at again after it */
                while (s->in_flight > 0) {
                    co_queue_wait(&s->wake, NULL);
                }
                if (!stream_settle_done(s, &error, &delay_ns)) {
                    break;
                }
                if (!g_queue_is_empty(&s->retry)) {
                    continue;
                }
            }
            StreamSettle st =
                stream_settle(s, n, false, ret, &error, &delay_ns);
            if (st == STREAM_BREAK) {
                break;
            }
            if (st == STREAM_RETRY) {
                continue; /* paused now; this range again after resume */
            }
        }
        /* the range is taken care of */
        if (r) {
            r->offset += n;
            if (r->offset >= r->end) {
                g_free(g_queue_pop_head(&s->retry));
            }
        } else {
            pos += n;
        }
    }

    /* Nothing may be left in flight; what finishes now is not counted
     * (the job stops here). */
    while (s->in_flight > 0) {
        co_queue_wait(&s->wake, NULL);
    }
    StreamOp *op;
    while ((op = g_queue_pop_head(&s->ops))) {
        g_ptr_array_add(s->bufs, op->buf);
        g_free(op);
    }
    g_queue_clear_full(&s->retry, g_free);
    g_ptr_array_free(s->bufs, true);
    s->bufs = NULL;
    if (s->cor) {
        bdrv_cor_filter_set_read_hook(s->cor, NULL, NULL);
    }
    /* An ignored error keeps the chain as it is. */
    return error;
}

/* ---- the end: base becomes the top's backing file ---- */

typedef struct StreamFinish {
    StreamJob *s;
    BlockDriverState *top;
    BlockDriverState *base;
    int ret;
    GError *err;
} StreamFinish;

static void coroutine_fn stream_finish_co(void *opaque)
{
    StreamFinish *f = opaque;
    StreamJob *s = f->s;
    BlockDriverState *top = f->top;
    BlockDriverState *base = f->base;
    BlockDriverState *ubase = bdrv_skip_filters(base);
    const char *base_id = NULL, *base_fmt = NULL;

    if (ubase) {
        base_id = s->backing_file ? s->backing_file : ubase->filename;
        base_fmt = ubase->drv ? ubase->drv->format_name : NULL;
    }
    /* What was copied must be on disk before the header stops naming
     * the layers it came from (a crash in between would lose it). */
    f->ret = bdrv_co_flush(top);
    if (f->ret < 0) {
        return;
    }
    if (bdrv_set_backing_hd(top, base, &f->err) < 0) {
        error_report("%s", f->err->message);
        g_clear_error(&f->err);
        f->ret = -EPERM;
        return;
    }
    if (!top->drv->bdrv_co_change_backing_file) {
        f->ret = -ENOTSUP;
        return;
    }
    f->ret = top->drv->bdrv_co_change_backing_file(top, base_id, base_fmt);
}

static int stream_prepare(Job *job, GError **errp)
{
    StreamJob *s = (StreamJob *)job;
    BlockDriverState *top = bdrv_skip_filters(s->target);
    (void)errp;

    /* The job's own edges and holds go first: they would stand in the
     * way of taking the filter out and of the new backing edge. */
    block_job_remove_all_bdrv(&s->common);
    if (s->cor) {
        BlockDriverState *cor = s->cor;
        s->cor = NULL;
        bdrv_cor_filter_drop(cor);
    }
    if (!top->backing) {
        return 0;
    }
    bdrv_ref(top);
    bdrv_drained_begin(top);
    /* base as it is now (it may have changed below above_base) */
    StreamFinish f = {
        .s = s,
        .top = top,
        .base = bdrv_child_bs(bdrv_filter_or_cow_child(s->above_base)),
    };
    if (f.base) {
        bdrv_ref(f.base);
    }
    if (in_coroutine()) {
        stream_finish_co(&f);
    } else {
        coroutine_run_sync(stream_finish_co, &f);
    }
    if (f.base) {
        bdrv_unref(f.base);
    }
    bdrv_drained_end(top);
    bdrv_unref(top);
    return f.ret;
}

typedef struct StreamReopen {
    BlockDriverState *bs;
    bool read_only;
    int ret;
    GError *err;
} StreamReopen;

static void coroutine_fn stream_reopen_co(void *opaque)
{
    StreamReopen *r = opaque;
    r->ret = bdrv_co_reopen_set_read_only(r->bs, r->read_only, &r->err);
}

/* Make bs read-only or writable again, in or outside coroutine context. */
static int stream_reopen(BlockDriverState *bs, bool read_only, GError **errp)
{
    StreamReopen r = {.bs = bs, .read_only = read_only};
    if (in_coroutine()) {
        stream_reopen_co(&r);
    } else {
        coroutine_run_sync(stream_reopen_co, &r);
    }
    if (r.err) {
        error_propagate(errp, r.err);
    }
    return r.ret;
}

static void stream_clean(Job *job)
{
    StreamJob *s = (StreamJob *)job;
    block_job_remove_all_bdrv(&s->common);
    if (s->cor) {
        BlockDriverState *cor = s->cor;
        s->cor = NULL;
        bdrv_cor_filter_drop(cor);
    }
    if (s->target_read_only) {
        /* As QEMU: give up our write permission, then read-only again. */
        g_autoptr(GError) err = NULL;
        blk_set_perm(s->common.blk, 0, BLK_PERM_ALL, NULL);
        if (stream_reopen(s->target, true, &err) < 0) {
            warn_report("block-stream: %s", err ? err->message : "");
        }
        s->target_read_only = false;
    }
}

static void stream_free(Job *job)
{
    StreamJob *s = (StreamJob *)job;
    g_free(s->backing_file);
    s->backing_file = NULL;
}

static const BlockJobDriver stream_job_driver = {
    .job_driver = {
        .instance_size = sizeof(StreamJob),
        .job_type = JOB_TYPE_STREAM,
        .run = stream_run,
        .prepare = stream_prepare,
        .clean = stream_clean,
        .free = stream_free,
    },
};

/* ---- chain lookups ---- */

/* The COW (backing) child of a format node; filters have none. */
static BlockDriverState *cow_bs(BlockDriverState *bs)
{
    if (!bs || !bs->drv || bs->drv->is_filter) {
        return NULL;
    }
    return bdrv_backing_bs(bs);
}

/* QEMU's bdrv_find_overlay: the node of active's chain (filters skipped)
 * whose backing chain continues with bs; bs NULL: the lowest image. */
static BlockDriverState *find_overlay(BlockDriverState *active,
                                      BlockDriverState *bs)
{
    bs = bdrv_skip_filters(bs);
    active = bdrv_skip_filters(active);
    while (active) {
        BlockDriverState *next = bdrv_skip_filters(cow_bs(active));
        if (bs == next) {
            return active;
        }
        active = next;
    }
    return NULL;
}

static bool has_protocol(const char *path)
{
    const char *p = strpbrk(path, ":/");
    return p && *p == ':';
}

/* name relative to the directory of the image `bs` reads (or as is). */
static char *path_relative_to(BlockDriverState *bs, const char *name)
{
    if (name[0] == '/' || has_protocol(name) || has_protocol(bs->filename) ||
        !bs->filename[0]) {
        return g_strdup(name);
    }
    g_autofree char *dir = g_path_get_dirname(bs->filename);
    return g_build_filename(dir, name, NULL);
}

/*
 * QEMU's bdrv_find_backing_image: the backing node whose overlay's header
 * names it `name`, comparing canonical absolute paths (relative names are
 * relative to the overlay's directory) unless a protocol is involved.
 */
static BlockDriverState *find_backing_image(BlockDriverState *bs,
                                            const char *name)
{
    bool proto = has_protocol(name);
    for (BlockDriverState *cur = bs; cow_bs(cur);
         cur = bdrv_skip_filters(cow_bs(cur))) {
        BlockDriverState *next = bdrv_skip_filters(cow_bs(cur));
        if (!cur->backing_file[0]) {
            continue;
        }
        g_autofree char *full_backing = path_relative_to(cur, cur->backing_file);
        if (proto || has_protocol(cur->backing_file)) {
            if (!strcmp(name, cur->backing_file) ||
                !strcmp(name, full_backing)) {
                return next;
            }
            continue;
        }
        g_autofree char *want = path_relative_to(cur, name);
        char want_real[PATH_MAX], have_real[PATH_MAX];
        if (!realpath(want, want_real) || !realpath(full_backing, have_real)) {
            continue;
        }
        if (!strcmp(want_real, have_real)) {
            return next;
        }
    }
    return NULL;
}

/* ---- start ---- */

/* QEMU's stream_start: the filter, the job and its nodes. */
static void stream_start(const char *job_id, BlockDriverState *bs,
                         BlockDriverState *base, const char *backing_file,
                         BlockDriverState *bottom, int flags, int64_t speed,
                         BlockdevOnError on_error,
                         const char *filter_node_name, GError **errp)
{
    BlockDriverState *base_overlay, *above_base;
    const uint64_t basic = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;

    if (bottom) {
        /* the newer interface: bottom is the lowest layer copied */
        base_overlay = above_base = bottom;
    } else {
        base_overlay = find_overlay(bs, base);
        if (!base_overlay) {
            error_setg(errp, "'%s' is not in the backing chain of '%s'",
                       base ? base->node_name : "", bs->node_name);
            return;
        }
        /* base_overlay is a COW overlay; only filters can sit between it
         * and base */
        above_base = base_overlay;
        if (cow_bs(above_base) != base) {
            above_base = cow_bs(above_base);
            while (above_base &&
                   bdrv_child_bs(bdrv_filter_or_cow_child(above_base)) !=
                       base) {
                above_base = bdrv_child_bs(bdrv_filter_or_cow_child(above_base));
            }
            if (!above_base) {
                error_setg(errp, "'%s' is not in the backing chain of '%s'",
                           base ? base->node_name : "", bs->node_name);
                return;
            }
        }
    }

    BlockDriverState *top = bdrv_skip_filters(bs);
    if (top->backing && top->drv && !top->drv->bdrv_co_change_backing_file) {
        /* found out now, not after the data was copied */
        error_setg(errp, "Driver '%s' of node '%s' cannot change its backing "
                         "file",
                   top->drv->format_name, top->node_name);
        return;
    }
    /* The job writes bs: a read-only node is reopened read-write for the
     * job's lifetime (and read-only again at the end), as QEMU does. */
    bool bs_read_only = bdrv_is_read_only(bs);
    if (bs_read_only && stream_reopen(bs, false, errp) < 0) {
        return;
    }

    BlockDriverState *cor = bdrv_cor_filter_append(bs, base_overlay,
                                                   filter_node_name, "stream",
                                                   errp);
    if (!cor) {
        if (bs_read_only) {
            stream_reopen(bs, true, NULL);
        }
        return;
    }
    StreamJob *s = block_job_create(job_id, &stream_job_driver, NULL, cor,
                                    BLK_PERM_CONSISTENT_READ,
                                    basic | BLK_PERM_WRITE,
                                    speed < 0 ? 0 : speed, flags, NULL, NULL,
                                    errp);
    if (!s) {
        bdrv_cor_filter_drop(cor);
        if (bs_read_only) {
            stream_reopen(bs, true, NULL);
        }
        return;
    }
    if (speed < 0) {
        /* As QEMU: the job exists (created, then null) when the speed is
         * refused. */
        block_job_set_speed(&s->common, speed, errp);
        goto fail;
    }
    if (block_job_add_bdrv(&s->common, "active node", bs, 0,
                           basic | BLK_PERM_WRITE, errp) < 0) {
        goto fail;
    }
    /* The layers that disappear from the chain: the job reads each block
     * once, so nobody may write or resize them meanwhile.  base is looked
     * up again: it hangs below above_base. */
    BlockDriverState *base_now =
        bdrv_child_bs(bdrv_filter_or_cow_child(above_base));
    for (BlockDriverState *it = bdrv_child_bs(bdrv_filter_or_cow_child(bs));
         it && it != base_now;
         it = bdrv_child_bs(bdrv_filter_or_cow_child(it))) {
        if (block_job_add_bdrv(&s->common, "intermediate node", it, 0, basic,
                               errp) < 0) {
            goto fail;
        }
    }
    /* The edges down to above_base stay as they are until we change them
     * ourselves at the end. */
    if (bs != above_base) {
        block_job_hold_chain(&s->common, bs, above_base);
    }
    s->target = bs;
    s->cor = cor;
    s->base_overlay = base_overlay;
    s->above_base = above_base;
    s->backing_file = g_strdup(backing_file);
    s->on_error = on_error;
    s->target_read_only = bs_read_only;
    job_start(&s->common.job);
    return;

fail:
    job_early_fail(&s->common.job);
    bdrv_cor_filter_drop(cor);
    if (bs_read_only) {
        stream_reopen(bs, true, NULL);
    }
}

void qmp_block_stream(q_obj_block_stream_arg *arg, GError **errp)
{
    BlockDriverState *bs, *base_bs = NULL, *bottom_bs = NULL;
    const char *device = arg->device;
    int flags = JOB_DEFAULT;

    if (arg->has_base && arg->has_base_node) {
        error_setg(errp, "'base' and 'base-node' cannot be specified at the "
                         "same time");
        return;
    }
    if (arg->has_base && arg->has_bottom) {
        error_setg(errp, "'base' and 'bottom' cannot be specified at the "
                         "same time");
        return;
    }
    if (arg->has_bottom && arg->has_base_node) {
        error_setg(errp, "'bottom' and 'base-node' cannot be specified at the "
                         "same time");
        return;
    }
    BlockdevOnError on_error =
        arg->has_on_error ? arg->on_error : BLOCKDEV_ON_ERROR_REPORT;

    bs = bdrv_lookup_bs(device, device, errp);
    if (!bs) {
        return;
    }
    if (arg->has_base) {
        base_bs = find_backing_image(bs, arg->base);
        if (!base_bs) {
            error_setg(errp, "Can't find '%s' in the backing chain",
                       arg->base);
            return;
        }
    }
    if (arg->has_base_node) {
        base_bs = bdrv_lookup_bs(NULL, arg->base_node, errp);
        if (!base_bs) {
            return;
        }
        if (bs == base_bs || !bdrv_chain_contains(bs, base_bs)) {
            error_setg(errp, "Node '%s' is not a backing image of '%s'",
                       arg->base_node, device);
            return;
        }
    }
    if (arg->has_bottom) {
        bottom_bs = bdrv_lookup_bs(NULL, arg->bottom, errp);
        if (!bottom_bs) {
            return;
        }
        if (!bottom_bs->drv) {
            error_setg(errp, "Node '%s' is not open", arg->bottom);
            return;
        }
        if (bottom_bs->drv->is_filter) {
            error_setg(errp, "Node '%s' is a filter, use a non-filter node as "
                             "'bottom'",
                       arg->bottom);
            return;
        }
        if (!bdrv_chain_contains(bs, bottom_bs)) {
            error_setg(errp, "Node '%s' is not in a chain starting from '%s'",
                       arg->bottom, device);
            return;
        }
    }

    /* Nothing in the chain that would change may be in use by a job. */
    BlockDriverState *end =
        bottom_bs ? bdrv_child_bs(bdrv_filter_or_cow_child(bottom_bs))
                  : base_bs;
    for (BlockDriverState *it = bs; it && it != end;
         it = bdrv_child_bs(bdrv_filter_or_cow_child(it))) {
        BlockJob *busy = block_job_find_by_node(it);
        if (busy) {
            error_setg(errp,
                       "Node '%s' is busy: block device is in use by block "
                       "job: %s",
                       it->node_name, job_type_str(&busy->job));
            return;
        }
    }

    /* Streaming the whole chain leaves no backing file to name. */
    if (!base_bs && arg->has_backing_file) {
        error_setg(errp, "backing file specified, but streaming the entire "
                         "chain");
        return;
    }
    if (arg->has_auto_finalize && !arg->auto_finalize) {
        flags |= JOB_MANUAL_FINALIZE;
    }
    if (arg->has_auto_dismiss && !arg->auto_dismiss) {
        flags |= JOB_MANUAL_DISMISS;
    }
    stream_start(arg->has_job_id ? arg->job_id : "", bs, base_bs,
                 arg->has_backing_file ? arg->backing_file : NULL, bottom_bs,
                 flags, arg->has_speed ? arg->speed : 0, on_error,
                 arg->has_filter_node_name ? arg->filter_node_name : NULL,
                 errp);
}
