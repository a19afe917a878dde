/*
 * Dirty bitmaps of a node: which granules were written since the bitmap
 * was created or last cleared.
 *
 * A node keeps its bitmaps in bs->dirty_bitmaps, newest first (the order
 * queries list them).  Every write, write-zeroes and discard that reaches
 * the node marks its enabled bitmaps before the request completes (the
 * request path calls bdrv_dirty_bitmaps_mark through
 * bdrv_dirty_bitmap_hooks), also when the request failed: a failed write
 * may have changed part of the range, and a bitmap must never miss a
 * change.
 *
 * Flags, independent of each other:
 *  - enabled: records writes (a disabled bitmap keeps its bits);
 *  - busy: an operation holds it (an NBD export, a backup); only that
 *    operation may change it;
 *  - readonly: loaded from an image that cannot be written; it cannot be
 *    changed, but may be enabled/disabled, read and merged from;
 *  - persistent: the node's driver stores it in the image;
 *  - inconsistent: loaded from an image that was not closed cleanly, so it
 *    may have missed writes; only removal is allowed.
 * bdrv_dirty_bitmap_check() turns a set of forbidden flags into the
 * uniform error every user reports.
 *
 * Successor: an operation that consumes a bitmap (a backup) freezes it
 * (create_successor: the bitmap becomes busy and stops recording, a new
 * anonymous successor records in its place), then either gives up
 * (reclaim: the successor's bits are merged back) or succeeds (abdicate:
 * the successor takes over the name and the frozen bits are dropped).
 *
 * Persistence contract with drivers (BlockDriver callbacks in
 * block_int.h): a driver that stores bitmaps creates them on open with
 * bdrv_create_dirty_bitmap(), fills them with bdrv_dirty_bitmap_deserialize
 * and sets persistent/readonly/inconsistent; it writes every persistent,
 * consistent bitmap of the node back on flush-for-close (bdrv_close) and
 * marks them in-use while the image is open writable.
 * bdrv_co_can_store_new_dirty_bitmap is asked before a persistent bitmap is
 * added, bdrv_co_remove_persistent_dirty_bitmap when one is removed.
 */
#ifndef BLOCK_DIRTY_BITMAP_H
#define BLOCK_DIRTY_BITMAP_H

#include "block/block.h"
#include "util/hbitmap.h"

typedef struct BdrvDirtyBitmap BdrvDirtyBitmap;

/* Flags an operation forbids (bdrv_dirty_bitmap_check). */
enum {
    BDRV_BITMAP_BUSY = 1 << 0,
    BDRV_BITMAP_RO = 1 << 1,
    BDRV_BITMAP_INCONSISTENT = 1 << 2,
    /* changes the bitmap: clear, merge target, remove (less RO) */
    BDRV_BITMAP_DEFAULT =
        BDRV_BITMAP_BUSY | BDRV_BITMAP_RO | BDRV_BITMAP_INCONSISTENT,
    /* only reads it or flips recording: enable/disable, merge source */
    BDRV_BITMAP_ALLOW_RO = BDRV_BITMAP_BUSY | BDRV_BITMAP_INCONSISTENT,
};

/* Longest name (bytes), as QEMU and the qcow2 format allow. */
#define BDRV_BITMAP_MAX_NAME_SIZE 1023
#define BDRV_BITMAP_MIN_GRANULARITY 512

/* Install the request-path and query hooks (idempotent). */
void bdrv_dirty_bitmap_init(void);

/*
 * A new enabled bitmap of the node's current size.  name NULL: an
 * anonymous (internal) bitmap.  granularity: a power of two >= 512.
 * Errors: "Bitmap already exists: NAME", "Bitmap name too long: NAME".
 */
BdrvDirtyBitmap *bdrv_create_dirty_bitmap(BlockDriverState *bs,
                                          uint32_t granularity,
                                          const char *name, GError **errp);
/* Drop it from its node and free it (its successor too, if any). */
void bdrv_release_dirty_bitmap(BdrvDirtyBitmap *bm);
/* Node close: free every bitmap of bs. */
void bdrv_release_all_dirty_bitmaps(BlockDriverState *bs);

BdrvDirtyBitmap *bdrv_find_dirty_bitmap(BlockDriverState *bs,
                                        const char *name);
/* The bitmap `name` on node `node`, as QMP commands look it up:
 * "Node 'X' not found" / "Dirty bitmap 'Y' not found" (GenericError). */
BdrvDirtyBitmap *bdrv_dirty_bitmap_lookup(const char *node, const char *name,
                                          BlockDriverState **pbs,
                                          GError **errp);
/* 0, or -1 with the error for the first forbidden flag bm has. */
int bdrv_dirty_bitmap_check(const BdrvDirtyBitmap *bm, unsigned flags,
                            GError **errp);

/* QEMU's default: the cluster size clamped to [4 KiB, 64 KiB], else
 * 64 KiB. */
uint32_t coroutine_fn bdrv_co_default_bitmap_granularity(BlockDriverState *bs);

/* ---- properties ---- */
const char *bdrv_dirty_bitmap_name(const BdrvDirtyBitmap *bm);
BlockDriverState *bdrv_dirty_bitmap_bs(const BdrvDirtyBitmap *bm);
uint32_t bdrv_dirty_bitmap_granularity(const BdrvDirtyBitmap *bm);
int64_t bdrv_dirty_bitmap_size(const BdrvDirtyBitmap *bm);
/* dirty bytes: dirty granules times the granularity */
int64_t bdrv_dirty_bitmap_count(const BdrvDirtyBitmap *bm);
bool bdrv_dirty_bitmap_enabled(const BdrvDirtyBitmap *bm);
/* enabled, or frozen with a recording successor */
bool bdrv_dirty_bitmap_recording(const BdrvDirtyBitmap *bm);
bool bdrv_dirty_bitmap_busy(const BdrvDirtyBitmap *bm);
bool bdrv_dirty_bitmap_readonly(const BdrvDirtyBitmap *bm);
bool bdrv_dirty_bitmap_persistent(const BdrvDirtyBitmap *bm);
bool bdrv_dirty_bitmap_inconsistent(const BdrvDirtyBitmap *bm);
bool bdrv_dirty_bitmap_has_successor(const BdrvDirtyBitmap *bm);

void bdrv_enable_dirty_bitmap(BdrvDirtyBitmap *bm);
void bdrv_disable_dirty_bitmap(BdrvDirtyBitmap *bm);
void bdrv_dirty_bitmap_set_busy(BdrvDirtyBitmap *bm, bool busy);
void bdrv_dirty_bitmap_set_readonly(BdrvDirtyBitmap *bm, bool readonly);
void bdrv_dirty_bitmap_set_persistence(BdrvDirtyBitmap *bm, bool persistent);
/* Also disables it: an inconsistent bitmap records nothing. */
void bdrv_dirty_bitmap_set_inconsistent(BdrvDirtyBitmap *bm);

/* ---- bits (byte offsets; ranges are cut at the bitmap's size) ---- */
void bdrv_set_dirty_bitmap(BdrvDirtyBitmap *bm, int64_t offset, int64_t bytes);
void bdrv_reset_dirty_bitmap(BdrvDirtyBitmap *bm, int64_t offset,
                             int64_t bytes);
bool bdrv_dirty_bitmap_get(const BdrvDirtyBitmap *bm, int64_t offset);
/* First dirty/clean byte offset (granule start, not before offset) in
 * [offset, offset + bytes), or -1. */
int64_t bdrv_dirty_bitmap_next_dirty(const BdrvDirtyBitmap *bm,
                                     int64_t offset, int64_t bytes);
int64_t bdrv_dirty_bitmap_next_clean(const BdrvDirtyBitmap *bm,
                                     int64_t offset, int64_t bytes);
/* The first dirty extent inside [offset, offset + bytes), cut to that
 * range and to the bitmap's size; false if there is none. */
bool bdrv_dirty_bitmap_next_dirty_area(const BdrvDirtyBitmap *bm,
                                       int64_t offset, int64_t bytes,
                                       int64_t *dirty_start,
                                       int64_t *dirty_count);

/* Clear every bit.  With `backup`, the old bits are handed over for
 * bdrv_restore_dirty_bitmap (transaction abort). */
void bdrv_clear_dirty_bitmap(BdrvDirtyBitmap *bm, HBitmap **backup);
/* Put back the bits a clear or merge saved; frees `backup`. */
void bdrv_restore_dirty_bitmap(BdrvDirtyBitmap *bm, HBitmap *backup);
/*
 * dst |= src (granularities may differ; sizes must match).  Checks dst
 * with BDRV_BITMAP_DEFAULT and src with BDRV_BITMAP_ALLOW_RO.  With
 * `backup`, dst's old bits are saved as for clear.  dst is unchanged on
 * failure.
 */
bool bdrv_merge_dirty_bitmap(BdrvDirtyBitmap *dst, const BdrvDirtyBitmap *src,
                             HBitmap **backup, GError **errp);

/* Serialised bits for image formats (see hbitmap_serialize): granules
 * [first, first + count), first a multiple of 64. */
bool bdrv_dirty_bitmap_serialize(const BdrvDirtyBitmap *bm, uint64_t first,
                                 uint64_t count, uint8_t *buf);
bool bdrv_dirty_bitmap_deserialize(BdrvDirtyBitmap *bm, uint64_t first,
                                   uint64_t count, const uint8_t *buf);
/* x-debug-block-dirty-bitmap-sha256 (caller frees). */
char *bdrv_dirty_bitmap_sha256(const BdrvDirtyBitmap *bm);

/* ---- successors ---- */
/* Freeze bm (busy, not recording) with an anonymous successor that
 * records in its place.  Refused if bm is busy or already has one. */
int bdrv_dirty_bitmap_create_successor(BdrvDirtyBitmap *bm, GError **errp);
/* Success: the successor takes bm's name, flags and place; bm is freed.
 * Returns the successor. */
BdrvDirtyBitmap *bdrv_dirty_bitmap_abdicate(BdrvDirtyBitmap *bm,
                                            GError **errp);
/* Failure: merge the successor back into bm, which records again (if it
 * did before) and stops being busy.  Returns bm. */
BdrvDirtyBitmap *bdrv_reclaim_dirty_bitmap(BdrvDirtyBitmap *bm,
                                           GError **errp);

/* ---- node-wide (request path, resize, queries) ---- */
/* Mark [offset, offset + bytes) in every enabled bitmap of bs. */
void bdrv_dirty_bitmaps_mark(BlockDriverState *bs, int64_t offset,
                             int64_t bytes);
/* The node's size changed: resize every bitmap (new bits are clean). */
void bdrv_dirty_bitmaps_truncate(BlockDriverState *bs, int64_t bytes);
BlockDirtyInfoList *bdrv_query_dirty_bitmaps(BlockDriverState *bs);

#endif
