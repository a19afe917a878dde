/*
 * QMP handlers for dirty bitmaps (block-dirty-bitmap-add/remove/clear/
 * enable/disable/merge, x-debug-block-dirty-bitmap-sha256), built from
 * transaction actions (qmp-dirty-bitmap.h).  Messages and the order of
 * the checks are qemu-storage-daemon 7.2's.
 */
#include "block/qmp-dirty-bitmap.h"

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

typedef struct BitmapUndo {
    BdrvDirtyBitmap *bm;
    HBitmap *backup;  /* clear, merge: the old bits */
    bool was_enabled; /* enable, disable */
    bool was_busy;    /* remove */
} BitmapUndo;

static BitmapUndo *undo_new(BdrvDirtyBitmap *bm)
{
    BitmapUndo *u = g_new0(BitmapUndo, 1);
    u->bm = bm;
    return u;
}

static void undo_clean(void *opaque)
{
    BitmapUndo *u = opaque;
    hbitmap_free(u->backup);
    g_free(u);
}

/* ---- add ---- */

static void add_abort(void *opaque)
{
    BitmapUndo *u = opaque;
    bdrv_release_dirty_bitmap(u->bm);
}

static const TransactionActionDrv add_drv = {
    .abort = add_abort,
    .clean = undo_clean,
};

int bdrv_dirty_bitmap_action_add(const BlockDirtyBitmapAdd *arg,
                                 Transaction *tran, GError **errp)
{
    if (!arg->name || !arg->name[0]) {
        error_setg(errp, "Bitmap name cannot be empty");
        return -1;
    }
    BlockDriverState *bs = bdrv_lookup_bs(arg->node, arg->node, errp);
    if (!bs) {
        return -1;
    }
    uint32_t granularity;
    if (arg->has_granularity) {
        granularity = arg->granularity;
        if (granularity < BDRV_BITMAP_MIN_GRANULARITY ||
            (granularity & (granularity - 1))) {
            error_setg(errp, "Granularity must be power of 2 and at least 512");
            return -1;
        }
    } else {
        granularity = bdrv_co_default_bitmap_granularity(bs);
    }
    bool persistent = arg->has_persistent && arg->persistent;
    if (persistent) {
        if (!bs->drv || !bs->drv->bdrv_co_can_store_new_dirty_bitmap) {
            error_setg(errp,
                       "Can't store persistent bitmaps to %s: Operation not "
                       "supported",
                       bs->node_name);
            return -1;
        }
        if (!bs->drv->bdrv_co_can_store_new_dirty_bitmap(bs, arg->name,
                                                         granularity, errp)) {
            return -1;
        }
    }
    BdrvDirtyBitmap *bm =
        bdrv_create_dirty_bitmap(bs, granularity, arg->name, errp);
    if (!bm) {
        return -1;
    }
    if (arg->has_disabled && arg->disabled) {
        bdrv_disable_dirty_bitmap(bm);
    }
    bdrv_dirty_bitmap_set_persistence(bm, persistent);
    tran_add(tran, &add_drv, undo_new(bm));
    return 0;
}

/* ---- remove ---- */

static void remove_commit(void *opaque)
{
    BitmapUndo *u = opaque;
    bdrv_release_dirty_bitmap(u->bm);
}

static void remove_abort(void *opaque)
{
    BitmapUndo *u = opaque;
    bdrv_dirty_bitmap_set_busy(u->bm, u->was_busy);
}

static const TransactionActionDrv remove_drv = {
    .commit = remove_commit,
    .abort = remove_abort,
    .clean = undo_clean,
};

int bdrv_dirty_bitmap_action_remove(const BlockDirtyBitmap *arg,
                                    Transaction *tran, GError **errp)
{
    BlockDriverState *bs;
    BdrvDirtyBitmap *bm =
        bdrv_dirty_bitmap_lookup(arg->node, arg->name, &bs, errp);
    if (!bm) {
        return -1;
    }
    /* Inconsistent bitmaps may (only) be removed. */
    if (bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_BUSY | BDRV_BITMAP_RO,
                                errp)) {
        return -1;
    }
    if (bdrv_dirty_bitmap_persistent(bm) && bs->drv &&
        bs->drv->bdrv_co_remove_persistent_dirty_bitmap &&
        bs->drv->bdrv_co_remove_persistent_dirty_bitmap(bs, arg->name,
                                                        errp) < 0) {
        return -1;
    }
    BitmapUndo *u = undo_new(bm);
    u->was_busy = bdrv_dirty_bitmap_busy(bm);
    /* Nothing else may use it until the transaction ends. */
    bdrv_dirty_bitmap_set_busy(bm, true);
    tran_add(tran, &remove_drv, u);
    return 0;
}

/* ---- clear and merge (the target's old bits are the undo) ---- */

static void restore_abort(void *opaque)
{
    BitmapUndo *u = opaque;
    bdrv_restore_dirty_bitmap(u->bm, u->backup);
    u->backup = NULL;
}

static const TransactionActionDrv restore_drv = {
    .abort = restore_abort,
    .clean = undo_clean,
};

int bdrv_dirty_bitmap_action_clear(const BlockDirtyBitmap *arg,
                                   Transaction *tran, GError **errp)
{
    BdrvDirtyBitmap *bm =
        bdrv_dirty_bitmap_lookup(arg->node, arg->name, NULL, errp);
    if (!bm || bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_DEFAULT, errp)) {
        return -1;
    }
    BitmapUndo *u = undo_new(bm);
    bdrv_clear_dirty_bitmap(bm, &u->backup);
    tran_add(tran, &restore_drv, u);
    return 0;
}

int bdrv_dirty_bitmap_action_merge(const BlockDirtyBitmapMerge *arg,
                                   Transaction *tran, GError **errp)
{
    BlockDriverState *bs;
    BdrvDirtyBitmap *dst =
        bdrv_dirty_bitmap_lookup(arg->node, arg->target, &bs, errp);
    if (!dst || bdrv_dirty_bitmap_check(dst, BDRV_BITMAP_DEFAULT, errp)) {
        return -1;
    }
    if (!arg->bitmaps) {
        /* qemu-storage-daemon 7.2 crashes here */
        error_setg(errp, "Parameter 'bitmaps' must not be empty");
        return -1;
    }
    /* Merge the sources into a scratch bitmap first, so that a failing
     * source leaves the target untouched. */
    BdrvDirtyBitmap *anon = bdrv_create_dirty_bitmap(
        bs, bdrv_dirty_bitmap_granularity(dst), NULL, errp);
    if (!anon) {
        return -1;
    }
    int ret = -1;
    for (const BlockDirtyBitmapOrStrList *l = arg->bitmaps; l; l = l->next) {
        const BlockDirtyBitmapOrStr *v = l->value;
        BdrvDirtyBitmap *src;
        if (v->type == QTYPE_QSTRING) {
            src = bdrv_find_dirty_bitmap(bs, v->u.local);
            if (!src) {
                error_setg(errp, "Dirty bitmap '%s' not found", v->u.local);
                goto out;
            }
        } else {
            src = bdrv_dirty_bitmap_lookup(v->u.external.node,
                                           v->u.external.name, NULL, errp);
            if (!src) {
                goto out;
            }
        }
        if (!bdrv_merge_dirty_bitmap(anon, src, NULL, errp)) {
            goto out;
        }
    }
    BitmapUndo *u = undo_new(dst);
    if (!bdrv_merge_dirty_bitmap(dst, anon, &u->backup, errp)) {
        undo_clean(u);
        goto out;
    }
    tran_add(tran, &restore_drv, u);
    ret = 0;
out:
    bdrv_release_dirty_bitmap(anon);
    return ret;
}

/* ---- enable / disable ---- */

static void enable_abort(void *opaque)
{
    BitmapUndo *u = opaque;
    if (u->was_enabled) {
        bdrv_enable_dirty_bitmap(u->bm);
    } else {
        bdrv_disable_dirty_bitmap(u->bm);
    }
}

static const TransactionActionDrv enable_drv = {
    .abort = enable_abort,
    .clean = undo_clean,
};

static int set_enabled(const BlockDirtyBitmap *arg, bool enable,
                       Transaction *tran, GError **errp)
{
    BdrvDirtyBitmap *bm =
        bdrv_dirty_bitmap_lookup(arg->node, arg->name, NULL, errp);
    if (!bm || bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_ALLOW_RO, errp)) {
        return -1;
    }
    BitmapUndo *u = undo_new(bm);
    u->was_enabled = bdrv_dirty_bitmap_enabled(bm);
    if (enable) {
        bdrv_enable_dirty_bitmap(bm);
    } else {
        bdrv_disable_dirty_bitmap(bm);
    }
    tran_add(tran, &enable_drv, u);
    return 0;
}

int bdrv_dirty_bitmap_action_enable(const BlockDirtyBitmap *arg,
                                    Transaction *tran, GError **errp)
{
    return set_enabled(arg, true, tran, errp);
}

int bdrv_dirty_bitmap_action_disable(const BlockDirtyBitmap *arg,
                                     Transaction *tran, GError **errp)
{
    return set_enabled(arg, false, tran, errp);
}

/* ---- the commands: one-action transactions ---- */

#define ONE_ACTION(fn, arg, errp)                                              \
    do {                                                                       \
        Transaction *tran = tran_new();                                        \
        tran_finalize(tran, fn(arg, tran, errp));                              \
    } while (0)

void qmp_block_dirty_bitmap_add(BlockDirtyBitmapAdd *arg, GError **errp)
{
    ONE_ACTION(bdrv_dirty_bitmap_action_add, arg, errp);
}

void qmp_block_dirty_bitmap_remove(BlockDirtyBitmap *arg, GError **errp)
{
    ONE_ACTION(bdrv_dirty_bitmap_action_remove, arg, errp);
}

void qmp_block_dirty_bitmap_clear(BlockDirtyBitmap *arg, GError **errp)
{
    ONE_ACTION(bdrv_dirty_bitmap_action_clear, arg, errp);
}

void qmp_block_dirty_bitmap_enable(BlockDirtyBitmap *arg, GError **errp)
{
    ONE_ACTION(bdrv_dirty_bitmap_action_enable, arg, errp);
}

void qmp_block_dirty_bitmap_disable(BlockDirtyBitmap *arg, GError **errp)
{
    ONE_ACTION(bdrv_dirty_bitmap_action_disable, arg, errp);
}

void qmp_block_dirty_bitmap_merge(BlockDirtyBitmapMerge *arg, GError **errp)
{
    ONE_ACTION(bdrv_dirty_bitmap_action_merge, arg, errp);
}

BlockDirtyBitmapSha256 *
qmp_x_debug_block_dirty_bitmap_sha256(BlockDirtyBitmap *arg, GError **errp)
{
    BdrvDirtyBitmap *bm =
        bdrv_dirty_bitmap_lookup(arg->node, arg->name, NULL, errp);
    if (!bm) {
        return NULL;
    }
    BlockDirtyBitmapSha256 *ret = g_new0(BlockDirtyBitmapSha256, 1);
    ret->sha256 = bdrv_dirty_bitmap_sha256(bm);
    return ret;
}
