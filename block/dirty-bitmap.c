/*
 * Dirty bitmaps of a node (see dirty-bitmap.h): byte offsets over an
 * HBitmap of granules, the flags and their checks, successors, and the
 * node-wide hooks the request path calls.
 */
#include "block/dirty-bitmap.h"

#include <string.h>

#include "block/block_int.h"
#include "util/error.h"

struct BdrvDirtyBitmap {
    BlockDriverState *bs;
    HBitmap *hb;
    char *name; /* NULL: anonymous */
    uint32_t granularity;
    int shift;    /* log2(granularity) */
    int64_t size; /* bytes covered */
    bool disabled;
    bool busy;
    bool readonly;
    bool persistent;
    bool inconsistent;
    BdrvDirtyBitmap *successor;
};

static const BdrvDirtyBitmapHooks hooks;

/* Granules covering [offset, offset + bytes), cut at the size. */
static bool to_granules(const BdrvDirtyBitmap *bm, int64_t offset,
                        int64_t bytes, uint64_t *first, uint64_t *count)
{
    if (offset < 0 || bytes <= 0 || offset >= bm->size) {
        return false;
    }
    int64_t end = bytes > bm->size - offset ? bm->size : offset + bytes;
    *first = (uint64_t)offset >> bm->shift;
    uint64_t last = ((uint64_t)end - 1) >> bm->shift;
    *count = last - *first + 1;
    return true;
}

static uint64_t granules_for(int64_t size, int shift)
{
    return ((uint64_t)size + (UINT64_C(1) << shift) - 1) >> shift;
}

BdrvDirtyBitmap *bdrv_create_dirty_bitmap(BlockDriverState *bs,
                                          uint32_t granularity,
                                          const char *name, GError **errp)
{
    bdrv_dirty_bitmap_init();
    if (granularity < BDRV_BITMAP_MIN_GRANULARITY ||
        (granularity & (granularity - 1))) {
        error_setg(errp, "Granularity must be power of 2 and at least 512");
        return NULL;
    }
    if (name) {
        if (bdrv_find_dirty_bitmap(bs, name)) {
            error_setg(errp, "Bitmap already exists: %s", name);
            return NULL;
        }
        if (strlen(name) > BDRV_BITMAP_MAX_NAME_SIZE) {
            error_setg(errp, "Bitmap name too long: %s", name);
            return NULL;
        }
    }
    int64_t size = bdrv_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "could not get length of device");
        return NULL;
    }
    int shift = __builtin_ctz(granularity);
    uint64_t nbits = granules_for(size, shift);
    if (nbits > HBITMAP_MAX_BITS) {
        error_setg(errp,
                   "Bitmap of %" G_GUINT64_FORMAT
                   " granules is too large (granularity %" G_GUINT32_FORMAT
                   " on a node of %" G_GINT64_FORMAT " bytes)",
                   nbits, granularity, size);
        return NULL;
    }
    BdrvDirtyBitmap *bm = g_new0(BdrvDirtyBitmap, 1);
    bm->bs = bs;
    bm->hb = hbitmap_new(nbits);
    bm->name = g_strdup(name);
    bm->granularity = granularity;
    bm->shift = shift;
    bm->size = size;
    bs->dirty_bitmaps = g_list_prepend(bs->dirty_bitmaps, bm);
    return bm;
}

static void bitmap_free(BdrvDirtyBitmap *bm)
{
    hbitmap_free(bm->hb);
    g_free(bm->name);
    g_free(bm);
}

void bdrv_release_dirty_bitmap(BdrvDirtyBitmap *bm)
{
    if (bm->successor) {
        bdrv_release_dirty_bitmap(bm->successor);
        bm->successor = NULL;
    }
    bm->bs->dirty_bitmaps = g_list_remove(bm->bs->dirty_bitmaps, bm);
    bitmap_free(bm);
}

void bdrv_release_all_dirty_bitmaps(BlockDriverState *bs)
{
    while (bs->dirty_bitmaps) {
        BdrvDirtyBitmap *bm = bs->dirty_bitmaps->data;
        bs->dirty_bitmaps = g_list_delete_link(bs->dirty_bitmaps,
                                               bs->dirty_bitmaps);
        bitmap_free(bm);
    }
}

BdrvDirtyBitmap *bdrv_find_dirty_bitmap(BlockDriverState *bs,
                                        const char *name)
{
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        BdrvDirtyBitmap *bm = l->data;
        if (bm->name && !strcmp(bm->name, name)) {
            return bm;
        }
    }
    return NULL;
}

BdrvDirtyBitmap *bdrv_dirty_bitmap_lookup(const char *node, const char *name,
                                          BlockDriverState **pbs,
                                          GError **errp)
{
    BlockDriverState *bs = node ? bdrv_find_node(node) : NULL;
    if (!bs) {
        error_setg(errp, "Node '%s' not found", node ? node : "");
        return NULL;
    }
    BdrvDirtyBitmap *bm = bdrv_find_dirty_bitmap(bs, name);
    if (!bm) {
        error_setg(errp, "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    if (pbs) {
        *pbs = bs;
    }
    return bm;
}

int bdrv_dirty_bitmap_check(const BdrvDirtyBitmap *bm, unsigned flags,
                            GError **errp)
{
    const char *name = bm->name ? bm->name : "";
    if ((flags & BDRV_BITMAP_BUSY) && bm->busy) {
        error_setg(errp,
                   "Bitmap '%s' is currently in use by another operation "
                   "and cannot be used",
                   name);
        return -1;
    }
    if ((flags & BDRV_BITMAP_RO) && bm->readonly) {
        error_setg(errp, "Bitmap '%s' is readonly and cannot be modified",
                   name);
        return -1;
    }
    if ((flags & BDRV_BITMAP_INCONSISTENT) && bm->inconsistent) {
        /* QEMU's text; its hint ("Try block-dirty-bitmap-remove to delete
         * this bitmap from disk") goes only to a terminal, never to QMP,
         * so it is logged here for the daemon's operator. */
        error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used",
                   name);
        if (errp) {
            warn_report("Bitmap '%s' is inconsistent: try "
                        "block-dirty-bitmap-remove to delete this bitmap "
                        "from disk",
                        name);
        }
        return -1;
    }
    return 0;
}

uint32_t coroutine_fn bdrv_co_default_bitmap_granularity(BlockDriverState *bs)
{
    uint32_t g = 65536;
    if (bs->drv && bs->drv->bdrv_co_get_info) {
        ImageInfo *info = g_new0(ImageInfo, 1);
        GError *err = NULL;
        if (bs->drv->bdrv_co_get_info(bs, info, &err) >= 0 &&
            info->has_cluster_size && info->cluster_size > 0) {
            int64_t cs = info->cluster_size;
            g = (uint32_t)MIN(MAX(cs, (int64_t)4096), (int64_t)65536);
        }
        g_clear_error(&err);
        qapi_free_ImageInfo(info);
    }
    return g;
}

/* ---- properties ---- */

const char *bdrv_dirty_bitmap_name(const BdrvDirtyBitmap *bm)
{
    return bm->name;
}

BlockDriverState *bdrv_dirty_bitmap_bs(const BdrvDirtyBitmap *bm)
{
    return bm->bs;
}

uint32_t bdrv_dirty_bitmap_granularity(const BdrvDirtyBitmap *bm)
{
    return bm->granularity;
}

int64_t bdrv_dirty_bitmap_size(const BdrvDirtyBitmap *bm)
{
    return bm->size;
}

int64_t bdrv_dirty_bitmap_count(const BdrvDirtyBitmap *bm)
{
    return (int64_t)(hbitmap_count(bm->hb) << bm->shift);
}

bool bdrv_dirty_bitmap_enabled(const BdrvDirtyBitmap *bm)
{
    return !bm->disabled;
}

bool bdrv_dirty_bitmap_recording(const BdrvDirtyBitmap *bm)
{
    return !bm->disabled || (bm->successor && !bm->successor->disabled);
}

bool bdrv_dirty_bitmap_busy(const BdrvDirtyBitmap *bm)
{
    return bm->busy;
}

bool bdrv_dirty_bitmap_readonly(const BdrvDirtyBitmap *bm)
{
    return bm->readonly;
}

bool bdrv_dirty_bitmap_persistent(const BdrvDirtyBitmap *bm)
{
    return bm->persistent;
}

bool bdrv_dirty_bitmap_inconsistent(const BdrvDirtyBitmap *bm)
{
    return bm->inconsistent;
}

bool bdrv_dirty_bitmap_has_successor(const BdrvDirtyBitmap *bm)
{
    return bm->successor != NULL;
}

void bdrv_enable_dirty_bitmap(BdrvDirtyBitmap *bm)
{
    bm->disabled = false;
}

void bdrv_disable_dirty_bitmap(BdrvDirtyBitmap *bm)
{
    bm->disabled = true;
}

void bdrv_dirty_bitmap_set_busy(BdrvDirtyBitmap *bm, bool busy)
{
    bm->busy = busy;
}

void bdrv_dirty_bitmap_set_readonly(BdrvDirtyBitmap *bm, bool readonly)
{
    bm->readonly = readonly;
}

void bdrv_dirty_bitmap_set_persistence(BdrvDirtyBitmap *bm, bool persistent)
{
    bm->persistent = persistent;
}

void bdrv_dirty_bitmap_set_inconsistent(BdrvDirtyBitmap *bm)
{
    bm->inconsistent = true;
    bm->disabled = true;
}

/* ---- bits ---- */

void bdrv_set_dirty_bitmap(BdrvDirtyBitmap *bm, int64_t offset, int64_t bytes)
{
    uint64_t first, count;
    if (to_granules(bm, offset, bytes, &first, &count)) {
        hbitmap_set(bm->hb, first, count);
    }
}

void bdrv_reset_dirty_bitmap(BdrvDirtyBitmap *bm, int64_t offset,
                             int64_t bytes)
{
    uint64_t first, count;
    if (to_granules(bm, offset, bytes, &first, &count)) {
        hbitmap_reset(bm->hb, first, count);
    }
}

bool bdrv_dirty_bitmap_get(const BdrvDirtyBitmap *bm, int64_t offset)
{
    if (offset < 0 || offset >= bm->size) {
        return false;
    }
    return hbitmap_get(bm->hb, (uint64_t)offset >> bm->shift);
}

static int64_t next_bit(const BdrvDirtyBitmap *bm, int64_t offset,
                        int64_t bytes, bool dirty)
{
    uint64_t first, count;
    if (!to_granules(bm, offset, bytes, &first, &count)) {
        return -1;
    }
    int64_t r = dirty ? hbitmap_next_dirty(bm->hb, first, count)
                      : hbitmap_next_clean(bm->hb, first, count);
    if (r < 0) {
        return -1;
    }
    return MAX(offset, (int64_t)((uint64_t)r << bm->shift));
}

int64_t bdrv_dirty_bitmap_next_dirty(const BdrvDirtyBitmap *bm,
                                     int64_t offset, int64_t bytes)
{
    return next_bit(bm, offset, bytes, true);
}

int64_t bdrv_dirty_bitmap_next_clean(const BdrvDirtyBitmap *bm,
                                     int64_t offset, int64_t bytes)
{
    return next_bit(bm, offset, bytes, false);
}

bool bdrv_dirty_bitmap_next_dirty_area(const BdrvDirtyBitmap *bm,
                                       int64_t offset, int64_t bytes,
                                       int64_t *dirty_start,
                                       int64_t *dirty_count)
{
    uint64_t first, count, s, n;
    if (!to_granules(bm, offset, bytes, &first, &count) ||
        !hbitmap_next_dirty_area(bm->hb, first, count, &s, &n)) {
        return false;
    }
    int64_t end = bytes > bm->size - offset ? bm->size : offset + bytes;
    int64_t start = MAX(offset, (int64_t)(s << bm->shift));
    int64_t stop = MIN(end, (int64_t)((s + n) << bm->shift));
    *dirty_start = start;
    *dirty_count = stop - start;
    return true;
}

void bdrv_clear_dirty_bitmap(BdrvDirtyBitmap *bm, HBitmap **backup)
{
    if (backup) {
        *backup = bm->hb;
        bm->hb = hbitmap_new(hbitmap_size(*backup));
    } else {
        hbitmap_reset_all(bm->hb);
    }
}

void bdrv_restore_dirty_bitmap(BdrvDirtyBitmap *bm, HBitmap *backup)
{
    HBitmap *cur = bm->hb;
    bm->hb = backup;
    hbitmap_free(cur);
}

bool bdrv_merge_dirty_bitmap(BdrvDirtyBitmap *dst, const BdrvDirtyBitmap *src,
                             HBitmap **backup, GError **errp)
{
    if (bdrv_dirty_bitmap_check(dst, BDRV_BITMAP_DEFAULT, errp) ||
        bdrv_dirty_bitmap_check(src, BDRV_BITMAP_ALLOW_RO, errp)) {
        return false;
    }
    if (dst->size != src->size) {
        error_setg(errp,
                   "Bitmaps are of different sizes (destination size is %" G_GINT64_FORMAT
                   ", source size is %" G_GINT64_FORMAT ") and can't be merged",
                   dst->size, src->size);
        return false;
    }
    if (backup) {
        *backup = hbitmap_copy(dst->hb);
    }
    if (dst == src) {
        return true;
    }
    if (dst->granularity == src->granularity) {
        hbitmap_merge(dst->hb, src->hb);
        return true;
    }
    /* Different granularity: every dirty extent of src, in bytes. */
    uint64_t pos = 0, size = hbitmap_size(src->hb), s, n;
    while (pos < size && hbitmap_next_dirty_area(src->hb, pos, size - pos, &s, &n)) {
        int64_t off = (int64_t)(s << src->shift);
        int64_t len = (int64_t)(n << src->shift);
        bdrv_set_dirty_bitmap(dst, off, MIN(len, dst->size - off));
        pos = s + n;
    }
    return true;
}

bool bdrv_dirty_bitmap_serialize(const BdrvDirtyBitmap *bm, uint64_t first,
                                 uint64_t count, uint8_t *buf)
{
    return hbitmap_serialize(bm->hb, first, count, buf);
}

bool bdrv_dirty_bitmap_deserialize(BdrvDirtyBitmap *bm, uint64_t first,
                                   uint64_t count, const uint8_t *buf)
{
    return hbitmap_deserialize(bm->hb, first, count, buf);
}

char *bdrv_dirty_bitmap_sha256(const BdrvDirtyBitmap *bm)
{
    return hbitmap_sha256(bm->hb);
}

/* ---- successors ---- */

int bdrv_dirty_bitmap_create_successor(BdrvDirtyBitmap *bm, GError **errp)
{
    if (bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_BUSY, errp)) {
        return -1;
    }
    if (bm->successor) {
        error_setg(errp, "Cannot create a successor for a bitmap that "
                         "already has one");
        return -1;
    }
    BdrvDirtyBitmap *child =
        bdrv_create_dirty_bitmap(bm->bs, bm->granularity, NULL, errp);
    if (!child) {
        return -1;
    }
    /* The successor records exactly when the parent did. */
    child->disabled = bm->disabled;
    bm->disabled = true;
    bm->successor = child;
    bm->busy = true;
    return 0;
}

/* Drop `bm` from its node's list without freeing its successor link. */
static void unlink_bitmap(BdrvDirtyBitmap *bm)
{
    bm->bs->dirty_bitmaps = g_list_remove(bm->bs->dirty_bitmaps, bm);
}

BdrvDirtyBitmap *bdrv_dirty_bitmap_abdicate(BdrvDirtyBitmap *bm,
                                            GError **errp)
{
    BdrvDirtyBitmap *s = bm->successor;
    if (!s) {
        error_setg(errp, "Cannot relinquish control if there's no successor");
        return NULL;
    }
    s->name = bm->name;
    bm->name = NULL;
    s->persistent = bm->persistent;
    s->readonly = bm->readonly;
    bm->successor = NULL;
    unlink_bitmap(bm);
    bitmap_free(bm);
    return s;
}

BdrvDirtyBitmap *bdrv_reclaim_dirty_bitmap(BdrvDirtyBitmap *bm,
                                           GError **errp)
{
    BdrvDirtyBitmap *s = bm->successor;
    if (!s) {
        error_setg(errp, "Cannot reclaim a successor when none is present");
        return NULL;
    }
    /* Same granularity and size (made together, resized together). */
    hbitmap_merge(bm->hb, s->hb);
    bm->disabled = s->disabled;
    bm->busy = false;
    bm->successor = NULL;
    unlink_bitmap(s);
    bitmap_free(s);
    return bm;
}

/* ---- node-wide ---- */

void bdrv_dirty_bitmaps_mark(BlockDriverState *bs, int64_t offset,
                             int64_t bytes)
{
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        BdrvDirtyBitmap *bm = l->data;
        if (!bm->disabled) {
            bdrv_set_dirty_bitmap(bm, offset, bytes);
        }
    }
}

void bdrv_dirty_bitmaps_truncate(BlockDriverState *bs, int64_t bytes)
{
    if (bytes < 0) {
        return;
    }
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        BdrvDirtyBitmap *bm = l->data;
        hbitmap_truncate(bm->hb, granules_for(bytes, bm->shift));
        bm->size = bytes;
    }
}

BlockDirtyInfoList *bdrv_query_dirty_bitmaps(BlockDriverState *bs)
{
    BlockDirtyInfoList *head = NULL, **tail = &head;
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        BdrvDirtyBitmap *bm = l->data;
        BlockDirtyInfo *info = g_new0(BlockDirtyInfo, 1);
        info->has_name = bm->name != NULL;
        info->name = g_strdup(bm->name);
        info->count = bdrv_dirty_bitmap_count(bm);
        info->granularity = bm->granularity;
        info->recording = bdrv_dirty_bitmap_recording(bm);
        info->busy = bm->busy;
        info->persistent = bm->persistent;
        info->has_inconsistent = bm->inconsistent;
        info->inconsistent = bm->inconsistent;
        QAPI_LIST_APPEND(tail, info);
    }
    return head;
}

static void hook_truncate(BlockDriverState *bs, int64_t bytes)
{
    bdrv_dirty_bitmaps_truncate(bs, bytes);
}

static const BdrvDirtyBitmapHooks hooks = {
    .set_dirty = bdrv_dirty_bitmaps_mark,
    .query = bdrv_query_dirty_bitmaps,
    .truncate = hook_truncate,
    .release_all = bdrv_release_all_dirty_bitmaps,
};

void bdrv_dirty_bitmap_init(void)
{
    bdrv_dirty_bitmap_hooks = &hooks;
}
