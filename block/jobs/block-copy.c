/*
 * block-copy: see block-copy.h.  One bit per cluster of "still to copy";
 * a range is claimed (bits cleared, task listed) before anything yields,
 * so the background workers and copy-before-write callers never copy the
 * same cluster twice, and a failure sets the bits again.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "block/block_int.h"
#include "block/jobs/block-copy.h"
#include "util/error.h"

typedef struct BlockCopyTask {
    BlockCopyState *s;
    int64_t offset, bytes; /* cluster aligned (bytes may end at EOF) */
    CoQueue waiters;       /* callers needing an overlapping range */
    LIST_ENTRY(BlockCopyTask) next;
} BlockCopyTask;

struct BlockCopyState {
    BdrvChild *source, *target;
    int64_t len;          /* source length when created */
    int64_t cluster_size; /* power of two */
    /* Clusters still to copy: an anonymous, disabled bitmap on the
     * source node at cluster granularity (QEMU's is one too, so queries
     * list it the same way). */
    BdrvDirtyBitmap *dirty;
    LIST_HEAD(, BlockCopyTask) tasks;
    bool compress;
    bool skip_unallocated;
    /* x-perf use-copy-range: copy_file_range where both ends allow it;
     * cleared at the first failure (then read and write) */
    bool use_copy_range;
    /* The target has no backing file: where it already reads as zero, a
     * zero range of the source needs no write.  (With a backing file,
     * e.g. fleecing's overlay of the source, unallocated is not final.) */
    bool target_standalone;
    int max_workers;
    int64_t max_chunk;
    BlockCopyProgressFunc *progress;
    void *progress_opaque;
    /* Free chunk buffers of buf_size bytes, reused: a fresh 1 MiB
     * allocation per chunk costs an mmap and its page faults. */
    GSList *free_bufs;
    size_t buf_size;
    /* Where buffers of buf_size come from first: one region for
     * max_workers of them, 2 MiB aligned and marked for transparent huge
     * pages (see buf_get); carved from arena_next on, never freed before
     * the state.  NULL until the first buffer is needed. */
    uint8_t *arena;
    size_t arena_size, arena_map_size, arena_next;
    size_t arena_slot; /* buf_size when the arena was made */
    void *arena_map;

    /* block_copy_run */
    int workers;          /* worker coroutines alive */
    Coroutine *run_co;    /* the run's coroutine, while waiting */
    bool run_waiting;
    int run_ret;
    bool run_err_read;
};

static void buf_free_one(BlockCopyState *s, uint8_t *buf);

#define BLOCK_COPY_MIN_CLUSTER (64 * 1024)
#define BLOCK_COPY_MEM_ALIGN 4096
#define ROUND_UP(n, d) (((n) + (d) - 1) / (d) * (d))

BlockCopyState *coroutine_fn block_copy_state_new(BdrvChild *source,
                                                  BdrvChild *target,
                                                  bool compress, GError **errp)
{
    int64_t len = bdrv_getlength(source->bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Cannot get length of '%s'",
                         bdrv_get_node_name(source->bs));
        return NULL;
    }
    int64_t tcs = 0;
    bool dirty_flag;
    g_autoptr(GError) local = NULL;
    int ret = bdrv_co_get_bdi(target->bs, &tcs, &dirty_flag, &local);
    if ((ret < 0 || tcs <= 0) && bdrv_backing_bs(target->bs)) {
        /* Copying whole clusters matters when the target has a backing
         * file: a partial cluster would read the rest from it.  QEMU's
         * message. */
        error_setg(errp,
                   "Couldn't determine the cluster size of the target image, "
                   "which has a backing file: %s",
                   local ? local->message : "Operation not supported");
        return NULL;
    }
    int64_t cs = BLOCK_COPY_MIN_CLUSTER;
    if (ret >= 0 && tcs > cs) {
        cs = tcs;
    }

    BdrvDirtyBitmap *bm =
        bdrv_create_dirty_bitmap(source->bs, (uint32_t)cs, NULL, errp);
    if (!bm) {
        return NULL;
    }
    bdrv_disable_dirty_bitmap(bm);
    bdrv_set_dirty_bitmap(bm, 0, len);

    BlockCopyState *s = g_new0(BlockCopyState, 1);
    s->source = source;
    s->target = target;
    s->len = len;
    s->cluster_size = cs;
    s->dirty = bm;
    s->target_standalone = !bdrv_backing_bs(bdrv_skip_filters(target->bs));
    LIST_INIT(&s->tasks);
    s->compress = compress;
    s->max_workers = BLOCK_COPY_DEFAULT_MAX_WORKERS;
    s->max_chunk = MAX(BLOCK_COPY_DEFAULT_CHUNK, cs);
    s->buf_size = (size_t)s->max_chunk;
    return s;
}

void block_copy_state_free(BlockCopyState *s)
{
    if (!s) {
        return;
    }
    bdrv_release_dirty_bitmap(s->dirty);
    for (GSList *l = s->free_bufs; l; l = l->next) {
        buf_free_one(s, l->data);
    }
    g_slist_free(s->free_bufs);
    if (s->arena_map) {
        munmap(s->arena_map, s->arena_map_size);
    }
    g_free(s);
}

int64_t block_copy_cluster_size(const BlockCopyState *s)
{
    return s->cluster_size;
}

/* Whole clusters, as QEMU counts progress: a partial last cluster
 * counts in full. */
int64_t block_copy_dirty_bytes(const BlockCopyState *s)
{
    return bdrv_dirty_bitmap_count(s->dirty);
}

void block_copy_set_dirty_from(BlockCopyState *s, const BdrvDirtyBitmap *bm)
{
    /* bit by area: bm may be frozen (busy), which a merge refuses */
    bdrv_reset_dirty_bitmap(s->dirty, 0, s->len);
    int64_t size = MIN(bdrv_dirty_bitmap_size(bm), s->len);
    int64_t off = 0, start, count;
    while (off < size &&
           bdrv_dirty_bitmap_next_dirty_area(bm, off, size - off, &start,
                                             &count)) {
        bdrv_set_dirty_bitmap(s->dirty, start, count);
        off = start + count;
    }
}

BdrvDirtyBitmap *block_copy_dirty_bitmap(BlockCopyState *s)
{
    return s->dirty;
}

void block_copy_reset(BlockCopyState *s, int64_t offset, int64_t bytes)
{
    bdrv_reset_dirty_bitmap(s->dirty, offset, bytes);
}

void block_copy_clear_dirty(BlockCopyState *s)
{
    bdrv_reset_dirty_bitmap(s->dirty, 0, s->len);
}

bool block_copy_range_clean(const BlockCopyState *s, int64_t offset,
                            int64_t bytes)
{
    if (bytes <= 0 || offset >= s->len) {
        return true;
    }
    return bdrv_dirty_bitmap_next_dirty(s->dirty, offset,
                                        MIN(bytes, s->len - offset)) < 0;
}

void block_copy_set_perf(BlockCopyState *s, int max_workers,
                         int64_t max_chunk, bool use_copy_range)
{
    s->max_workers = max_workers > 0 ? max_workers
                                     : BLOCK_COPY_DEFAULT_MAX_WORKERS;
    if (max_chunk <= 0) {
        max_chunk = MAX(BLOCK_COPY_DEFAULT_CHUNK, s->cluster_size);
    }
    max_chunk = MIN(max_chunk, BLOCK_COPY_MAX_CHUNK);
    /* whole clusters: a chunk never splits one */
    s->max_chunk = MAX(s->cluster_size, max_chunk & ~(s->cluster_size - 1));
    s->use_copy_range = use_copy_range;
    if ((size_t)s->max_chunk != s->buf_size) {
        for (GSList *l = s->free_bufs; l; l = l->next) {
            buf_free_one(s, l->data);
        }
        g_slist_free(s->free_bufs);
        s->free_bufs = NULL;
        s->buf_size = (size_t)s->max_chunk;
        /* the arena's slots have the old size: carve no more of it */
        s->arena_next = s->arena_size;
    }
}

void block_copy_set_compress(BlockCopyState *s, bool compress)
{
    s->compress = compress;
}

void block_copy_set_skip_unallocated(BlockCopyState *s, bool skip)
{
    s->skip_unallocated = skip;
}

void block_copy_set_progress(BlockCopyState *s, BlockCopyProgressFunc *fn,
                             void *opaque)
{
    s->progress = fn;
    s->progress_opaque = opaque;
}

int block_copy_in_flight(const BlockCopyState *s)
{
    return s->workers;
}

/* ---- tasks ---- */

static BlockCopyTask *find_overlapping(BlockCopyState *s, int64_t offset,
                                       int64_t end)
{
    BlockCopyTask *t;
    LIST_FOREACH (t, &s->tasks, next) {
        if (t->offset < end && offset < t->offset + t->bytes) {
            return t;
        }
    }
    return NULL;
}

/* Claim the first dirty run of clusters in [offset, end) (cluster
 * aligned), at most max_chunk bytes.  NULL if there is none. */
static BlockCopyTask *task_claim(BlockCopyState *s, int64_t offset,
                                 int64_t end)
{
    int64_t astart, acount;
    end = MIN(end, s->len);
    if (end <= offset ||
        !bdrv_dirty_bitmap_next_dirty_area(s->dirty, offset, end - offset,
                                           &astart, &acount)) {
        return NULL;
    }
    /* whole clusters (the area may be cut inside one) */
    int64_t aend = ROUND_UP(astart + acount, s->cluster_size);
    astart &= ~(s->cluster_size - 1);
    acount = MIN(aend - astart, s->max_chunk);
    bdrv_reset_dirty_bitmap(s->dirty, astart, acount);
    BlockCopyTask *t = g_new0(BlockCopyTask, 1);
    t->s = s;
    t->offset = astart;
    t->bytes = acount;
    co_queue_init(&t->waiters);
    LIST_INSERT_HEAD(&s->tasks, t, next);
    return t;
}

/* Give back the tail [offset + new_bytes, end) of a task: dirty again. */
static void task_shrink(BlockCopyTask *t, int64_t new_bytes)
{
    BlockCopyState *s = t->s;
    if (new_bytes >= t->bytes) {
        return;
    }
    bdrv_set_dirty_bitmap(s->dirty, t->offset + new_bytes,
                          t->bytes - new_bytes);
    t->bytes = new_bytes;
    /* those waiting for the tail may claim it themselves now */
    co_queue_restart_all(&t->waiters);
}

static void task_end(BlockCopyTask *t, int ret)
{
    BlockCopyState *s = t->s;
    if (ret < 0 && t->bytes > 0) {
        bdrv_set_dirty_bitmap(s->dirty, t->offset, t->bytes);
    }
    LIST_REMOVE(t, next);
    co_queue_restart_all(&t->waiters);
    g_free(t);
}

/* Round a status length down to whole clusters (at least one). */
static int64_t status_clusters(BlockCopyState *s, int64_t pnum,
                               int64_t bytes)
{
    if (pnum >= bytes) {
        return bytes;
    }
    int64_t aligned = pnum & ~(s->cluster_size - 1);
    return aligned > 0 ? aligned : MIN(s->cluster_size, bytes);
}

#define BLOCK_COPY_HUGE_PAGE (2 * 1024 * 1024)

/*
 * The arena: O_DIRECT I/O pins the buffer's pages for every request, at a
 * cost per page (256 pages for a 1 MiB chunk with 4 KiB pages; with a
 * transparent huge page one for 2 MiB), and a fresh buffer faults in page
 * by page.  With THP off or unavailable the arena is plain memory.  Only
 * as much as max_workers buffers: what the free list keeps anyway.
 */
static void arena_init(BlockCopyState *s)
{
    size_t size = ROUND_UP((size_t)s->max_workers * s->buf_size,
                           (size_t)BLOCK_COPY_HUGE_PAGE);
    size_t map_size = size + BLOCK_COPY_HUGE_PAGE;
    void *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        s->arena_next = s->arena_size = 0;
        s->arena = NULL;
        return; /* buffers come from the heap */
    }
    uintptr_t start = ROUND_UP((uintptr_t)map, (uintptr_t)BLOCK_COPY_HUGE_PAGE);
    s->arena_map = map;
    s->arena_map_size = map_size;
    s->arena = (uint8_t *)start;
    s->arena_size = size;
    s->arena_next = 0;
    s->arena_slot = s->buf_size;
#ifdef MADV_HUGEPAGE
    madvise(s->arena, size, MADV_HUGEPAGE); /* a hint: failure is fine */
#endif
}

static bool in_arena(const BlockCopyState *s, const uint8_t *buf)
{
    return s->arena && buf >= s->arena && buf < s->arena + s->arena_size;
}

static void buf_free_one(BlockCopyState *s, uint8_t *buf)
{
    if (!in_arena(s, buf)) {
        free(buf);
    }
}

static uint8_t *buf_get(BlockCopyState *s, size_t n)
{
    size_t want = MAX(s->buf_size, (size_t)ROUND_UP(n, BLOCK_COPY_MEM_ALIGN));
    if (want == s->buf_size && s->free_bufs) {
        uint8_t *buf = s->free_bufs->data;
        s->free_bufs = g_slist_delete_link(s->free_bufs, s->free_bufs);
        return buf;
    }
    if (want == s->buf_size) {
        if (!s->arena_map) {
            arena_init(s);
        }
        if (s->arena && s->arena_next + want <= s->arena_size) {
            uint8_t *buf = s->arena + s->arena_next;
            s->arena_next += want;
            return buf;
        }
    }
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, BLOCK_COPY_MEM_ALIGN, want)) {
        return NULL;
    }
    return buf;
}

static void buf_put(BlockCopyState *s, uint8_t *buf, size_t n)
{
    size_t size = MAX(s->buf_size, (size_t)ROUND_UP(n, BLOCK_COPY_MEM_ALIGN));
    if (in_arena(s, buf)) {
        /* a slot of another size (max-chunk changed meanwhile) stays
         * unused until the arena goes */
        if (s->arena_slot == s->buf_size) {
            s->free_bufs = g_slist_prepend(s->free_bufs, buf);
        }
    } else if (size == s->buf_size &&
               g_slist_length(s->free_bufs) < (guint)s->max_workers) {
        s->free_bufs = g_slist_prepend(s->free_bufs, buf);
    } else {
        free(buf);
    }
}

static int coroutine_fn write_data(BlockCopyState *s, int64_t offset,
                                   int64_t bytes, const uint8_t *buf)
{
    if (!s->compress) {
        return bdrv_co_pwrite(s->target, offset, bytes, buf, 0);
    }
    /* compressed clusters are written one at a time */
    for (int64_t done = 0; done < bytes; done += s->cluster_size) {
        int64_t n = MIN(s->cluster_size, bytes - done);
        int ret = bdrv_co_pwrite(s->target, offset + done, n, buf + done,
                                 BDRV_REQ_WRITE_COMPRESSED);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Copy one claimed task.  The source's status may cover only part of it:
 * the rest is given back (dirty again) for a later claim.
 */
static int coroutine_fn task_copy(BlockCopyTask *t, bool *error_is_read)
{
    BlockCopyState *s = t->s;
    BlockDriverState *src = s->source->bs;
    int64_t pnum;
    int ret;

    /* t->bytes is whole clusters; the I/O stops at the end of the image */
#define IO_BYTES (MIN(t->bytes, s->len - t->offset))
    *error_is_read = true;
    if (s->skip_unallocated) {
        ret = bdrv_co_is_allocated(src, t->offset, IO_BYTES, &pnum);
        if (ret < 0) {
            return ret;
        }
        if (pnum < IO_BYTES) {
            task_shrink(t, status_clusters(s, pnum, t->bytes));
        }
        if (ret == 0 && pnum >= IO_BYTES) {
            if (s->progress) {
                s->progress(s->progress_opaque, t->bytes, true);
            }
            return 0;
        }
    }

    ret = bdrv_co_block_status_above(src, NULL, t->offset, IO_BYTES, &pnum,
                                     NULL, NULL);
    bool zero = false;
    if (ret >= 0) {
        if (pnum < IO_BYTES) {
            task_shrink(t, status_clusters(s, pnum, t->bytes));
        }
        zero = (ret & BDRV_BLOCK_ZERO) && pnum >= IO_BYTES;
    }
    /* a failed status query is no reason to fail: copy the data */

    int64_t n = IO_BYTES;
#undef IO_BYTES
    if (zero && !s->compress) {
        *error_is_read = false;
        int64_t tnum;
        int tret = s->target_standalone
                       ? bdrv_co_block_status_above(s->target->bs, NULL,
                                                    t->offset, n, &tnum,
                                                    NULL, NULL)
                       : -ENOTSUP;
        if (tret >= 0 && (tret & BDRV_BLOCK_ZERO) && tnum >= n) {
            ret = 0; /* already reads as zeroes: nothing to write */
        } else {
            ret = bdrv_co_pwrite_zeroes(s->target, t->offset, n, 0);
        }
    } else if (s->use_copy_range && !s->compress &&
               (ret = bdrv_co_copy_range(s->source, t->offset, s->target,
                                         t->offset, n)) == 0) {
        *error_is_read = false; /* copied without passing through us */
    } else {
        if (s->use_copy_range && !s->compress) {
            /* Offload failed (cannot, or an I/O error): read and write
             * this chunk, which also tells a read error from a write
             * error, and do not try offload again. */
            s->use_copy_range = false;
        }
        uint8_t *buf = buf_get(s, (size_t)n);
        if (!buf) {
            return -ENOMEM;
        }
        ret = bdrv_co_pread(s->source, t->offset, n, buf, 0);
        if (ret >= 0) {
            *error_is_read = false;
            ret = write_data(s, t->offset, n, buf);
        }
        buf_put(s, buf, (size_t)n);
    }
    if (ret < 0) {
        return ret;
    }
    if (s->progress) {
        s->progress(s->progress_opaque, t->bytes, false);
    }
    return 0;
}

/*
 * Copy what is dirty in [offset, offset+bytes), waiting for overlapping
 * copies in flight.  `cancelled` (may be NULL) is looked at before every
 * claim: once set, nothing more is claimed (-ECANCELED).
 */
static int coroutine_fn copy_range(BlockCopyState *s, int64_t offset,
                                   int64_t bytes, const bool *cancelled)
{
    if (bytes <= 0 || offset >= s->len) {
        return 0;
    }
    int64_t start = offset & ~(s->cluster_size - 1);
    int64_t end = MIN(offset + bytes, s->len);

    for (;;) {
        if (cancelled && *cancelled) {
            return -ECANCELED;
        }
        BlockCopyTask *busy = find_overlapping(s, start, end);
        if (busy) {
            /* the other copy may fail: look again after it ended */
            co_queue_wait(&busy->waiters, NULL);
            continue;
        }
        BlockCopyTask *t = task_claim(s, start, end);
        if (!t) {
            return 0;
        }
        bool is_read;
        int ret = task_copy(t, &is_read);
        task_end(t, ret);
        if (ret < 0) {
            return ret;
        }
    }
}

int coroutine_fn block_copy(BlockCopyState *s, int64_t offset, int64_t bytes)
{
    return copy_range(s, offset, bytes, NULL);
}

/*
 * A copy with a deadline runs in a coroutine of its own, so the caller
 * can stop waiting for it.  A copy that timed out cannot be stopped in
 * the middle of a chunk: it finishes the chunk it is copying (its
 * clusters are then copied, or dirty again if that failed), claims
 * nothing more, and frees itself.
 */
typedef struct BlockCopyCall {
    BlockCopyState *s;
    int64_t offset, bytes;
    bool cancelled; /* the caller gave up: claim nothing more, free self */
    bool finished;
    int ret;
    CoSleep wait; /* the caller's timed wait */
    BlockCopyDoneFunc *done;
    void *done_opaque;
} BlockCopyCall;

static void coroutine_fn call_entry(void *opaque)
{
    BlockCopyCall *c = opaque;
    c->ret = copy_range(c->s, c->offset, c->bytes, &c->cancelled);
    c->finished = true;
    if (c->done) {
        c->done(c->done_opaque);
    }
    if (c->cancelled) {
        g_free(c); /* nobody waits for the result any more */
        return;
    }
    co_sleep_wake(&c->wait); /* no-op unless the caller sleeps */
}

int coroutine_fn block_copy_timeout(BlockCopyState *s, int64_t offset,
                                    int64_t bytes, int64_t timeout_ns,
                                    BlockCopyDoneFunc *done, void *opaque)
{
    if (timeout_ns <= 0) {
        int ret = copy_range(s, offset, bytes, NULL);
        if (done) {
            done(opaque);
        }
        return ret;
    }
    BlockCopyCall *c = g_new0(BlockCopyCall, 1);
    c->s = s;
    c->offset = offset;
    c->bytes = bytes;
    c->done = done;
    c->done_opaque = opaque;
    coroutine_enter(coroutine_create(call_entry, c));
    if (!c->finished) {
        co_sleep_ns_wakeable(&c->wait, timeout_ns);
    }
    if (!c->finished) {
        c->cancelled = true; /* call_entry frees it when the copy ends */
        return -ETIMEDOUT;
    }
    int ret = c->ret;
    g_free(c);
    return ret;
}

int64_t coroutine_fn block_copy_reset_unallocated(BlockCopyState *s,
                                                  int64_t offset)
{
    int64_t pnum;
    int64_t bytes = s->len - offset;
    if (bytes <= 0) {
        return -EINVAL;
    }
    int ret = bdrv_co_is_allocated(s->source->bs, offset, bytes, &pnum);
    if (ret < 0) {
        return ret;
    }
    if (pnum <= 0) {
        return -EIO;
    }
    if (ret == 0) {
        /* only whole clusters that are entirely unallocated */
        int64_t first = ROUND_UP(offset, s->cluster_size);
        int64_t end = offset + pnum == s->len
                          ? ROUND_UP(s->len, s->cluster_size)
                          : ((offset + pnum) & ~(s->cluster_size - 1));
        if (end > first) {
            bdrv_reset_dirty_bitmap(s->dirty, first, end - first);
        }
    }
    return pnum;
}

/* ---- background copy ---- */

static void coroutine_fn worker_entry(void *opaque)
{
    BlockCopyTask *t = opaque;
    BlockCopyState *s = t->s;
    bool is_read = false;
    int ret = task_copy(t, &is_read);
    task_end(t, ret);
    if (ret < 0 && s->run_ret == 0) {
        s->run_ret = ret;
        s->run_err_read = is_read;
    }
    s->workers--;
    if (s->run_waiting) {
        s->run_waiting = false;
        coroutine_wake(s->run_co);
    }
}

/* Wait in the run's coroutine until a worker ends. */
static void coroutine_fn run_wait(BlockCopyState *s)
{
    s->run_co = coroutine_self();
    s->run_waiting = true;
    coroutine_yield();
}

int coroutine_fn block_copy_run(BlockCopyState *s, const BlockCopyRunOps *ops,
                                void *opaque, bool *error_is_read)
{
    int64_t cursor = 0; /* claims go forward; wrap once at the end */
    s->run_ret = 0;
    s->run_err_read = false;

    for (;;) {
        if (s->run_ret < 0 || (ops->should_stop && ops->should_stop(opaque))) {
            break;
        }
        if (s->workers >= s->max_workers) {
            run_wait(s);
            continue;
        }
        if (ops->pause_point) {
            ops->pause_point(opaque);
            if (s->run_ret < 0 ||
                (ops->should_stop && ops->should_stop(opaque))) {
                break;
            }
        }
        BlockCopyTask *t = task_claim(s, cursor, s->len);
        if (!t && cursor > 0) {
            cursor = 0;
            t = task_claim(s, 0, s->len);
        }
        if (!t) {
            if (s->workers == 0) {
                break;
            }
            /* an in-flight copy may fail and make its range dirty */
            run_wait(s);
            continue;
        }
        if (ops->must_wait && ops->must_wait(opaque)) {
            /* Do not hold the claim while sleeping: a guest write to it
             * would wait for the rate limit. */
            task_end(t, -EAGAIN);
            ops->wait(opaque);
            continue;
        }
        cursor = t->offset + t->bytes;
        if (ops->chunk_started) {
            ops->chunk_started(opaque, t->bytes);
        }
        s->workers++;
        coroutine_enter(coroutine_create(worker_entry, t));
    }
    while (s->workers > 0) {
        run_wait(s);
    }
    if (error_is_read) {
        *error_is_read = s->run_err_read;
    }
    return s->run_ret;
}
