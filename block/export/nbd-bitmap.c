/*
 * Dirty bitmaps on NBD exports: block-export-add's `bitmaps`, the
 * qemu:dirty-bitmap:NAME meta contexts and their block status (flag 1,
 * NBD_STATE_DIRTY, for dirty extents), as qemu-storage-daemon 7.2.
 *
 * An exported bitmap is busy for the export's lifetime, so nothing can
 * clear or remove it under a client; the export holds a reference on each
 * bitmap's node (a {node, name} bitmap may live on another node).
 */
#include <string.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "block/export/nbd-int.h"
#include "block/export/nbd-proto.h"
#include "util/error.h"

#define BITMAP_CTX_PREFIX "qemu:dirty-bitmap:"
/* qemu:dirty-bitmap:NAME extent flag */
#define NBD_STATE_DIRTY (1 << 0)

bool nbd_export_bitmaps_init(BlockExport *exp,
                             const BlockDirtyBitmapOrStrList *list,
                             GError **errp)
{
    unsigned n = 0;
    for (const BlockDirtyBitmapOrStrList *l = list; l; l = l->next) {
        n++;
    }
    if (!n) {
        return true;
    }
    g_autofree BdrvDirtyBitmap **bms = g_new0(BdrvDirtyBitmap *, n);
    BlockDriverState *top = blk_bs(exp->blk);
    unsigned i = 0;
    /* Check them all first, then mark them busy: nothing to undo. */
    for (const BlockDirtyBitmapOrStrList *l = list; l; l = l->next, i++) {
        const BlockDirtyBitmapOrStr *b = l->value;
        BlockDriverState *bs = top;
        BdrvDirtyBitmap *bm = NULL;
        if (b->type == QTYPE_QSTRING) {
            /* the node, or a node below it through filters and backing */
            while (bs) {
                bm = bdrv_find_dirty_bitmap(bs, b->u.local);
                if (bm) {
                    break;
                }
                BdrvChild *c = bdrv_filter_or_cow_child(bs);
                bs = c ? c->bs : NULL;
            }
            if (!bm) {
                error_setg(errp, "Bitmap '%s' is not found", b->u.local);
                return false;
            }
            /* A read-only export must show a bitmap that cannot change
             * (checked for names only and before busy, as qsd does). */
            if (!exp->writable && bdrv_is_writable(bs) &&
                bdrv_dirty_bitmap_enabled(bm)) {
                error_setg(errp, "Enabled bitmap '%s' incompatible with "
                           "readonly export",
                           bdrv_dirty_bitmap_name(bm));
                return false;
            }
        } else {
            bm = bdrv_dirty_bitmap_lookup(b->u.external.node,
                                          b->u.external.name, NULL, errp);
            if (!bm) {
                return false;
            }
            bs = top;
        }
        if (bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_ALLOW_RO, errp)) {
            return false;
        }
        bms[i] = bm;
    }
    exp->nr_bitmaps = n;
    exp->bitmap_ctx = g_new0(char *, n);
    for (i = 0; i < n; i++) {
        bdrv_dirty_bitmap_set_busy(bms[i], true);
        bdrv_ref(bdrv_dirty_bitmap_bs(bms[i]));
        exp->bitmap_ctx[i] =
            g_strconcat(BITMAP_CTX_PREFIX, bdrv_dirty_bitmap_name(bms[i]), NULL);
    }
    exp->bitmaps = g_steal_pointer(&bms);
    return true;
}

void nbd_export_bitmaps_release(BlockExport *exp)
{
    for (unsigned i = 0; i < exp->nr_bitmaps; i++) {
        BlockDriverState *bs = bdrv_dirty_bitmap_bs(exp->bitmaps[i]);
        bdrv_dirty_bitmap_set_busy(exp->bitmaps[i], false);
        g_free(exp->bitmap_ctx[i]);
        bdrv_unref(bs);
    }
    g_free(exp->bitmaps);
    g_free(exp->bitmap_ctx);
    exp->bitmaps = NULL;
    exp->bitmap_ctx = NULL;
    exp->nr_bitmaps = 0;
}

void nbd_meta_match_bitmaps(BlockExport *exp, const char *q, bool list,
                            NBDMetaSelection *sel)
{
    bool all = list && (strcmp(q, "qemu:") == 0 ||
                        strcmp(q, BITMAP_CTX_PREFIX) == 0);
    for (unsigned i = 0; i < exp->nr_bitmaps && i < sel->nr_bitmaps; i++) {
        if (all || strcmp(q, exp->bitmap_ctx[i]) == 0) {
            sel->bitmaps[i] = true;
        }
    }
}

int nbd_bitmap_status(BlockExport *exp, uint32_t id, uint64_t off,
                      uint64_t bytes, int64_t *pnum)
{
    uint32_t i = id - NBD_META_ID_DIRTY_BITMAP;
    if (id < NBD_META_ID_DIRTY_BITMAP || i >= exp->nr_bitmaps ||
        off > INT64_MAX || bytes > INT64_MAX - off) {
        return -EINVAL;
    }
    const BdrvDirtyBitmap *bm = exp->bitmaps[i];
    int64_t start, count;
    if (!bdrv_dirty_bitmap_next_dirty_area(bm, (int64_t)off, (int64_t)bytes,
                                           &start, &count)) {
        *pnum = (int64_t)bytes; /* clean to the end of the range */
        return 0;
    }
    if (start > (int64_t)off) {
        *pnum = start - (int64_t)off;
        return 0;
    }
    *pnum = count;
    return NBD_STATE_DIRTY;
}
