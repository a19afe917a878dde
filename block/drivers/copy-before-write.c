/*
 * copy-before-write filter: reads pass through to `file`; a write,
 * write-zeroes or discard first has the old data of every cluster it
 * touches copied to `target` (if not copied yet), then goes down.  So
 * `target` plus what is not yet copied is the image as it was when the
 * filter was opened: backup's point in time, and the source of a fleecing
 * export.
 *
 * on-cbw-error: break-guest-write fails the guest's write when the copy
 * fails (the snapshot stays valid); break-snapshot lets the write through
 * and stops copying for good (the snapshot is broken, reads of it fail
 * with -EACCES).  cbw-timeout: a copy that takes longer fails the same
 * way (-ETIMEDOUT).
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "block/drivers/copy-before-write.h"
#include "util/error.h"

#define ROUND_UP_CLUSTER(n, cs) (((n) + (cs) - 1) & ~((int64_t)(cs) - 1))

/* A snapshot read of the source in flight: guest writes to its range wait
 * until it is done. */
typedef struct SnapshotRead {
    int64_t offset, bytes;
    CoQueue waiters;
    LIST_ENTRY(SnapshotRead) next;
} SnapshotRead;

typedef struct BDRVCbwState {
    BdrvChild *target;
    BlockCopyState *bcs;
    int64_t cluster_size;
    /* Clusters whose old data is on the target (read them there). */
    BdrvDirtyBitmap *done_bitmap;
    /* Clusters the point-in-time view has (the to-copy set at open). */
    BdrvDirtyBitmap *access_bitmap;
    LIST_HEAD(, SnapshotRead) reads;
    OnCbwError on_cbw_error;
    int64_t cbw_timeout_ns; /* 0: a copy may take as long as it takes */
    int snapshot_error;     /* break-snapshot: the first copy failure */
    bool active;            /* false while being taken out of the graph */
} BDRVCbwState;

static void cbw_close(BlockDriverState *bs);

static int coroutine_fn cbw_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    BDRVCbwState *s = bs->opaque;
    const BlockdevOptionsCbw *o = &opts->u.copy_before_write;

    s->active = true;
    bs->file = bdrv_open_child(bs, o->file, "file",
                               BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                               false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    s->target = bdrv_open_child(bs, o->target, "target", BDRV_CHILD_DATA,
                                false, errp);
    if (!s->target) {
        return -EINVAL;
    }
    int64_t len = bdrv_getlength(bs->file->bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the image size");
        return (int)len;
    }
    bs->total_bytes = len;
    bs->supported_write_flags =
        BDRV_REQ_FUA & bs->file->bs->supported_write_flags;
    bs->supported_zero_flags =
        (BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK) &
        bs->file->bs->supported_zero_flags;

    s->on_cbw_error = o->has_on_cbw_error ? o->on_cbw_error
                                          : ON_CBW_ERROR_BREAK_GUEST_WRITE;
    s->cbw_timeout_ns =
        o->has_cbw_timeout ? (int64_t)o->cbw_timeout * 1000000000 : 0;

    s->bcs = block_copy_state_new(bs->file, s->target, false, errp);
    if (!s->bcs) {
        return -EINVAL;
    }
    if (o->has_bitmap) {
        BlockDriverState *bmbs;
        BdrvDirtyBitmap *bm = bdrv_dirty_bitmap_lookup(
            o->bitmap->node, o->bitmap->name, &bmbs, errp);
        if (!bm) {
            block_copy_state_free(s->bcs);
            s->bcs = NULL;
            return -EINVAL;
        }
        if (bdrv_dirty_bitmap_size(bm) != len) {
            error_setg(errp, "Bitmap '%s' has a different size than the "
                             "source", o->bitmap->name);
            block_copy_state_free(s->bcs);
            s->bcs = NULL;
            return -EINVAL;
        }
        /* only the clusters the bitmap marks are worth preserving */
        block_copy_set_dirty_from(s->bcs, bm);
    }

    /* As QEMU: two anonymous disabled bitmaps on the filter node */
    s->cluster_size = block_copy_cluster_size(s->bcs);
    s->done_bitmap =
        bdrv_create_dirty_bitmap(bs, (uint32_t)s->cluster_size, NULL, errp);
    if (!s->done_bitmap) {
        goto fail;
    }
    bdrv_disable_dirty_bitmap(s->done_bitmap);
    s->access_bitmap =
        bdrv_create_dirty_bitmap(bs, (uint32_t)s->cluster_size, NULL, errp);
    if (!s->access_bitmap) {
        goto fail;
    }
    bdrv_disable_dirty_bitmap(s->access_bitmap);
    if (!bdrv_merge_dirty_bitmap(s->access_bitmap,
                                 block_copy_dirty_bitmap(s->bcs), NULL,
                                 errp)) {
        goto fail;
    }
    LIST_INIT(&s->reads);
    return 0;

fail:
    cbw_close(bs);
    return -EINVAL;
}

static void cbw_close(BlockDriverState *bs)
{
    BDRVCbwState *s = bs->opaque;
    if (s->access_bitmap) {
        bdrv_release_dirty_bitmap(s->access_bitmap);
        s->access_bitmap = NULL;
    }
    if (s->done_bitmap) {
        bdrv_release_dirty_bitmap(s->done_bitmap);
        s->done_bitmap = NULL;
    }
    block_copy_state_free(s->bcs);
    s->bcs = NULL;
}

/* A copy that timed out has ended in the background. */
static void cbw_copy_done(void *opaque)
{
    bdrv_dec_in_flight(opaque);
}

/*
 * Copy the old data of [offset, offset+bytes) before it is overwritten.
 * A copy that takes longer than cbw-timeout fails with -ETIMEDOUT (and
 * goes on in the background until its current chunk is done: counted in
 * flight on the filter until then, so a drain or close waits for it).
 */
static int coroutine_fn do_cbw(BlockDriverState *bs, int64_t offset,
                               int64_t bytes)
{
    BDRVCbwState *s = bs->opaque;
    if (!s->bcs || s->snapshot_error) {
        return 0;
    }
    bdrv_inc_in_flight(bs);
    int ret = block_copy_timeout(s->bcs, offset, bytes, s->cbw_timeout_ns,
                                 cbw_copy_done, bs);
    if (ret < 0) {
        if (s->on_cbw_error == ON_CBW_ERROR_BREAK_SNAPSHOT) {
            s->snapshot_error = ret;
            return 0;
        }
        return ret;
    }
    int64_t start = offset & ~(s->cluster_size - 1);
    int64_t end = MIN(offset + bytes, bs->total_bytes);
    bdrv_set_dirty_bitmap(s->done_bitmap, start, end - start);
    /* readers of the old data on the source finish first */
    for (;;) {
        SnapshotRead *r, *busy = NULL;
        LIST_FOREACH (r, &s->reads, next) {
            if (r->offset < end && start < r->offset + r->bytes) {
                busy = r;
                break;
            }
        }
        if (!busy) {
            return 0;
        }
        co_queue_wait(&busy->waiters, NULL);
    }
}

static int coroutine_fn cbw_co_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       BdrvRequestFlags flags)
{
    int ret = do_cbw(bs, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pwritev(bs->file, offset, bytes, qiov, flags);
}

static int coroutine_fn cbw_co_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    int ret = do_cbw(bs, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn cbw_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    int ret = do_cbw(bs, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn cbw_co_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, IOVector *qiov,
                                      BdrvRequestFlags flags)
{
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, flags);
}

static void cbw_child_perm(BlockDriverState *bs, BdrvChild *c,
                           BdrvChildRole role, uint64_t perm, uint64_t shared,
                           uint64_t *nperm, uint64_t *nshared)
{
    BDRVCbwState *s = bs->opaque;
    if (!s->active) {
        /* Being taken out (drained): its edges must not stand in the way
         * of the parents moving back onto the source, which may have
         * another active filter among them. */
        *nperm = 0;
        *nshared = BLK_PERM_ALL;
        return;
    }
    if (!(role & BDRV_CHILD_FILTERED)) {
        /* target: we write it; others may read and write, not resize */
        *nperm = BLK_PERM_WRITE;
        *nshared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                   BLK_PERM_WRITE_UNCHANGED;
        return;
    }
    bdrv_filter_default_perms(bs, c, role, perm, shared, nperm, nshared);
    if (!LIST_EMPTY(&bs->parents)) {
        /* Writes that bypass the filter would not be copied first. */
        *nperm |= BLK_PERM_CONSISTENT_READ;
        *nshared &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
}

/* QEMU names the filter after the node it filters (whatever its
 * options). */
static void cbw_own_filename(BlockDriverState *bs)
{
    if (bs->file) {
        g_strlcpy(bs->filename, bs->file->bs->filename, sizeof(bs->filename));
    }
}

static const char *const cbw_strong_opts[] = {"target", "bitmap", NULL};

const BlockDriver bdrv_cbw = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "copy-before-write",
    .driver = BLOCKDEV_DRIVER_COPY_BEFORE_WRITE,
    .instance_size = sizeof(BDRVCbwState),
    .is_filter = true,
    .bdrv_open = cbw_open,
    .bdrv_close = cbw_close,
    .bdrv_co_preadv = cbw_co_preadv,
    .bdrv_co_pwritev = cbw_co_pwritev,
    .bdrv_co_pwrite_zeroes = cbw_co_pwrite_zeroes,
    .bdrv_co_pdiscard = cbw_co_pdiscard,
    .bdrv_child_perm = cbw_child_perm,
    .strong_opts = cbw_strong_opts,
    .bdrv_own_filename = cbw_own_filename,
};

BlockCopyState *bdrv_cbw_get_block_copy_state(BlockDriverState *bs)
{
    if (!bs || bs->drv != &bdrv_cbw) {
        return NULL;
    }
    return ((BDRVCbwState *)bs->opaque)->bcs;
}

BlockDriverState *coroutine_fn bdrv_cbw_append(BlockDriverState *source,
                                               BlockDriverState *target,
                                               const char *filter_node_name,
                                               GError **errp)
{
    BlockdevOptions *opts = g_new0(BlockdevOptions, 1);
    opts->driver = BLOCKDEV_DRIVER_COPY_BEFORE_WRITE;
    if (filter_node_name) {
        opts->has_node_name = true;
        opts->node_name = g_strdup(filter_node_name);
    }
    BlockdevOptionsCbw *o = &opts->u.copy_before_write;
    o->file = g_new0(BlockdevRef, 1);
    o->file->type = QTYPE_QSTRING;
    o->file->u.reference = g_strdup(bdrv_get_node_name(source));
    o->target = g_new0(BlockdevRef, 1);
    o->target->type = QTYPE_QSTRING;
    o->target->u.reference = g_strdup(bdrv_get_node_name(target));

    if (filter_node_name && bdrv_find_node(filter_node_name)) {
        error_setg(errp,
                   "Could not create node: Duplicate nodes with node-name='%s'",
                   filter_node_name);
        qapi_free_BlockdevOptions(opts);
        return NULL;
    }
    BlockDriverState *cbw = bdrv_co_open(opts, errp);
    qapi_free_BlockdevOptions(opts);
    if (!cbw) {
        return NULL;
    }
    cbw->implicit = !filter_node_name;
    return bdrv_insert_filter(cbw, source, NULL, errp);
}

void bdrv_cbw_drop(BlockDriverState *cbw)
{
    BDRVCbwState *s = cbw->opaque;
    g_autoptr(GError) err = NULL;

    bdrv_ref(cbw);
    bdrv_drained_begin(cbw);
    /* Give up the exclusive write first, or the parents going back to the
     * source would conflict with it. */
    s->active = false;
    if (bdrv_refresh_perms(cbw, &err) < 0) {
        warn_report("copy-before-write: %s", err->message);
        g_clear_error(&err);
    }
    bdrv_remove_filter(cbw, "copy-before-write");
    /* The copier's bitmaps go now, not when the node is finally closed:
     * queries right after the job must not list them any more. */
    if (LIST_EMPTY(&cbw->parents)) {
        cbw_close(cbw);
    }
    bdrv_drained_end(cbw);
    bdrv_unref(cbw);
    bdrv_unref(cbw);
}

/* ---- the point-in-time view (snapshot-access) ---- */

/* The run of clusters from offset with the same (access, done) state,
 * cut to bytes. */
static int64_t view_run(BDRVCbwState *s, int64_t offset, int64_t bytes,
                        bool *access, bool *done)
{
    *access = bdrv_dirty_bitmap_get(s->access_bitmap, offset);
    *done = bdrv_dirty_bitmap_get(s->done_bitmap, offset);
    int64_t end = offset + bytes;
    int64_t next = (offset & ~(s->cluster_size - 1)) + s->cluster_size;
    while (next < end && bdrv_dirty_bitmap_get(s->access_bitmap, next) ==
                             *access &&
           bdrv_dirty_bitmap_get(s->done_bitmap, next) == *done) {
        next += s->cluster_size;
    }
    return MIN(next, end) - offset;
}

int coroutine_fn bdrv_cbw_snapshot_preadv(BlockDriverState *cbw,
                                          int64_t offset, int64_t bytes,
                                          IOVector *qiov)
{
    if (!cbw || cbw->drv != &bdrv_cbw) {
        return -ENOTSUP;
    }
    BDRVCbwState *s = cbw->opaque;
    int64_t done_bytes = 0;

    while (done_bytes < bytes) {
        if (s->snapshot_error) {
            return -EACCES; /* as QEMU: the view is gone */
        }
        bool access, done;
        int64_t n = view_run(s, offset + done_bytes, bytes - done_bytes,
                             &access, &done);
        if (!access) {
            return -EACCES;
        }
        IOVector part;
        qiov_init(&part, qiov->niov);
        qiov_concat(&part, qiov, (size_t)done_bytes, (size_t)n);
        int ret;
        if (done) {
            ret = bdrv_co_preadv(s->target, offset + done_bytes, n, &part, 0);
        } else {
            /* Hold off guest writes to this range until the read is
             * done (they copy first, then wait for us). */
            SnapshotRead r = {.offset = offset + done_bytes, .bytes = n};
            co_queue_init(&r.waiters);
            LIST_INSERT_HEAD(&s->reads, &r, next);
            ret = bdrv_co_preadv(cbw->file, offset + done_bytes, n, &part, 0);
            LIST_REMOVE(&r, next);
            co_queue_restart_all(&r.waiters);
        }
        qiov_destroy(&part);
        if (ret < 0) {
            return ret;
        }
        done_bytes += n;
    }
    return 0;
}

int coroutine_fn bdrv_cbw_snapshot_pdiscard(BlockDriverState *cbw,
                                            int64_t offset, int64_t bytes)
{
    if (!cbw || cbw->drv != &bdrv_cbw) {
        return -ENOTSUP;
    }
    BDRVCbwState *s = cbw->opaque;
    int64_t start = ROUND_UP_CLUSTER(offset, s->cluster_size);
    int64_t end = offset + bytes >= cbw->total_bytes
                      ? cbw->total_bytes
                      : ((offset + bytes) & ~(s->cluster_size - 1));
    if (end <= start) {
        return 0;
    }
    bdrv_reset_dirty_bitmap(s->access_bitmap, start, end - start);
    block_copy_reset(s->bcs, start, end - start);
    return bdrv_co_pdiscard(s->target, start, end - start);
}

int coroutine_fn bdrv_cbw_snapshot_block_status(BlockDriverState *cbw,
                                                int64_t offset, int64_t bytes,
                                                int64_t *pnum)
{
    if (!cbw || cbw->drv != &bdrv_cbw) {
        return -ENOTSUP;
    }
    BDRVCbwState *s = cbw->opaque;
    bool access, done;
    *pnum = view_run(s, offset, bytes, &access, &done);
    return access ? BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED : 0;
}
