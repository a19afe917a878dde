/*
 * block-copy: the copy engine shared by backup and the copy-before-write
 * filter.
 *
 * A BlockCopyState copies clusters from `source` to `target` (two edges
 * the caller owns, normally the cbw filter's `file` and `target`).  It
 * keeps a bitmap of the clusters still to copy; a cluster is copied at
 * most once: a range is claimed (its bits cleared and an in-flight record
 * added) before the first yield, and anyone who needs an overlapping range
 * (a guest write through the filter, or the background copy) waits for
 * that record to finish.  A failed copy sets its bits again, so nothing is
 * lost.
 *
 * The background copy (block_copy_run) runs up to max_workers chunks of
 * up to max_chunk bytes in parallel worker coroutines; the caller's
 * coroutine (a job) only spawns them, so it can take pause points and
 * sleep for the rate limit between spawns.  Zero ranges of the source
 * are written as write-zeroes; with skip_unallocated (sync=top) ranges
 * not allocated in the source's top layer are dropped from the bitmap.
 */
#ifndef BLOCK_JOBS_BLOCK_COPY_H
#define BLOCK_JOBS_BLOCK_COPY_H

#include "block/block.h"
#include "block/dirty-bitmap.h"
#include "util/hbitmap.h"

typedef struct BlockCopyState BlockCopyState;

/* Defaults, as QEMU's x-perf. */
#define BLOCK_COPY_DEFAULT_MAX_WORKERS 64
#define BLOCK_COPY_DEFAULT_CHUNK (1 << 20)
#define BLOCK_COPY_MAX_CHUNK (16 << 20)

/* Called for every range copied (or skipped as unallocated: `skipped`). */
typedef void BlockCopyProgressFunc(void *opaque, int64_t bytes, bool skipped);

/*
 * A copier from source to target.  The cluster size is the target's
 * (at least 64 KiB); an error if it cannot be told and the target has a
 * backing file (as QEMU).  The bitmap starts all set: everything is to be
 * copied; block_copy_set_dirty_from() narrows it to a dirty bitmap.
 */
BlockCopyState *coroutine_fn block_copy_state_new(BdrvChild *source,
                                                  BdrvChild *target,
                                                  bool compress,
                                                  GError **errp);
void block_copy_state_free(BlockCopyState *s);

int64_t block_copy_cluster_size(const BlockCopyState *s);
/* Bytes still to copy. */
int64_t block_copy_dirty_bytes(const BlockCopyState *s);
/* Replace the to-copy set by the dirty bits of `bm` (incremental and
 * bitmap sync), rounded out to clusters. */
void block_copy_set_dirty_from(BlockCopyState *s, const BdrvDirtyBitmap *bm);
/* The to-copy set itself (an anonymous disabled bitmap on the source). */
BdrvDirtyBitmap *block_copy_dirty_bitmap(BlockCopyState *s);
/* Nothing more to copy in [offset, offset+bytes) (snapshot discard). */
void block_copy_reset(BlockCopyState *s, int64_t offset, int64_t bytes);
/* Nothing to copy (sync=none: only what guest writes touch). */
void block_copy_clear_dirty(BlockCopyState *s);
/* Is [offset, offset+bytes) all copied (or not to be copied)? */
bool block_copy_range_clean(const BlockCopyState *s, int64_t offset,
                            int64_t bytes);

void block_copy_set_perf(BlockCopyState *s, int max_workers,
                         int64_t max_chunk, bool use_copy_range);
void block_copy_set_skip_unallocated(BlockCopyState *s, bool skip);
/* Write data as compressed clusters (backup's compress). */
void block_copy_set_compress(BlockCopyState *s, bool compress);
void block_copy_set_progress(BlockCopyState *s, BlockCopyProgressFunc *fn,
                             void *opaque);

/*
 * Copy what is still dirty in [offset, offset+bytes) now, waiting for
 * copies of overlapping ranges in flight (the copy-before-write path).
 * 0 or -errno.
 */
int coroutine_fn block_copy(BlockCopyState *s, int64_t offset, int64_t bytes);

/*
 * Same, giving up after timeout_ns (> 0; 0: no limit) with -ETIMEDOUT.  A
 * copy that timed out goes on in the background until the chunk it is
 * copying is done, then stops (what it did not copy stays dirty).
 * done(opaque), if given, is called once when the copy has really ended
 * (before return, or later after a timeout): the copy-before-write filter
 * counts it as in flight until then, so a drain waits for it.
 */
typedef void BlockCopyDoneFunc(void *opaque);
int coroutine_fn block_copy_timeout(BlockCopyState *s, int64_t offset,
                                    int64_t bytes, int64_t timeout_ns,
                                    BlockCopyDoneFunc *done, void *opaque);

/*
 * Drop from the bitmap what is not allocated in the source's top layer,
 * from `offset` on, for one run of the same status; returns the bytes
 * looked at (> 0) or -errno.  For sync=top, before copying.
 */
int64_t coroutine_fn block_copy_reset_unallocated(BlockCopyState *s,
                                                  int64_t offset);

/* Background copy: what the driver hooks into between spawns. */
typedef struct BlockCopyRunOps {
    /* Stop spawning (cancel): true ends the run with 0 after in-flight
     * chunks finished. */
    bool (*should_stop)(void *opaque);
    /* Between chunks, in the run's coroutine (the job's pause point). */
    void coroutine_fn (*pause_point)(void *opaque);
    /* A chunk is ready to start: true if the rate limit says to wait
     * first (the chunk is given back, then `wait` runs). */
    bool (*must_wait)(void *opaque);
    void coroutine_fn (*wait)(void *opaque);
    /* A chunk of `bytes` starts now (rate accounting). */
    void (*chunk_started)(void *opaque, int64_t bytes);
} BlockCopyRunOps;

/*
 * Copy everything still dirty with parallel workers.  Returns 0 when the
 * bitmap is empty (or should_stop), else the first error (-errno) with
 * *error_is_read, after every worker finished; the failed ranges are dirty
 * again.
 */
int coroutine_fn block_copy_run(BlockCopyState *s, const BlockCopyRunOps *ops,
                                void *opaque, bool *error_is_read);
/* Chunks in flight (for drain polls). */
int block_copy_in_flight(const BlockCopyState *s);

#endif
