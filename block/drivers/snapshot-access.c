/*
 * snapshot-access: the point-in-time view of a copy-before-write node as a
 * read-only node of its own (fleecing).  Its `file` is the cbw node; reads
 * come from the target for clusters already copied there and from the
 * source otherwise (copy-before-write.h).  A discard drops clusters from
 * the view, so a client that has read them lets the filter stop copying
 * them.  Writes are not supported, as in QEMU.
 */
#include <errno.h>

#include "block/block_int.h"
#include "block/drivers/copy-before-write.h"
#include "util/error.h"

static int coroutine_fn snapshot_access_open(BlockDriverState *bs,
                                             const BlockdevOptions *opts,
                                             GError **errp)
{
    const BlockdevOptionsGenericFormat *o = &opts->u.snapshot_access;
    bs->file = bdrv_open_child(bs, o->file, "file",
                               BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY, false,
                               errp);
    if (!bs->file) {
        return -EINVAL;
    }
    int64_t len = bdrv_getlength(bs->file->bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the image size");
        return (int)len;
    }
    bs->total_bytes = len;
    return 0;
}

static int coroutine_fn snapshot_access_preadv(BlockDriverState *bs,
                                               int64_t offset, int64_t bytes,
                                               IOVector *qiov,
                                               BdrvRequestFlags flags)
{
    (void)flags;
    return bdrv_cbw_snapshot_preadv(bs->file->bs, offset, bytes, qiov);
}

static int coroutine_fn snapshot_access_pdiscard(BlockDriverState *bs,
                                                 int64_t offset, int64_t bytes)
{
    return bdrv_cbw_snapshot_pdiscard(bs->file->bs, offset, bytes);
}

static int coroutine_fn snapshot_access_pwritev(BlockDriverState *bs,
                                                int64_t offset, int64_t bytes,
                                                IOVector *qiov,
                                                BdrvRequestFlags flags)
{
    return -ENOTSUP;
}

static int coroutine_fn snapshot_access_pwrite_zeroes(BlockDriverState *bs,
                                                      int64_t offset,
                                                      int64_t bytes,
                                                      BdrvRequestFlags flags)
{
    return -ENOTSUP;
}

static int coroutine_fn snapshot_access_block_status(
    BlockDriverState *bs, bool want_zero, int64_t offset, int64_t bytes,
    int64_t *pnum, int64_t *map, BlockDriverState **file)
{
    (void)want_zero;
    (void)map;
    (void)file;
    return bdrv_cbw_snapshot_block_status(bs->file->bs, offset, bytes, pnum);
}

static int coroutine_fn snapshot_access_flush(BlockDriverState *bs)
{
    /* nothing of ours to write back; the view is read-only */
    return 0;
}

static void snapshot_access_child_perm(BlockDriverState *bs, BdrvChild *c,
                                       BdrvChildRole role, uint64_t perm,
                                       uint64_t shared, uint64_t *nperm,
                                       uint64_t *nshared)
{
    /* reads go to the cbw node's own children, not through it */
    *nperm = 0;
    *nshared = BLK_PERM_ALL;
}

/* QEMU names the node after the cbw node it reads through. */
static void snapshot_access_own_filename(BlockDriverState *bs)
{
    if (bs->file) {
        g_strlcpy(bs->filename, bs->file->bs->filename, sizeof(bs->filename));
    }
}

const BlockDriver bdrv_snapshot_access = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "snapshot-access",
    .driver = BLOCKDEV_DRIVER_SNAPSHOT_ACCESS,
    .instance_size = 1,
    .bdrv_open = snapshot_access_open,
    .bdrv_co_preadv = snapshot_access_preadv,
    .bdrv_co_pwritev = snapshot_access_pwritev,
    .bdrv_co_pwrite_zeroes = snapshot_access_pwrite_zeroes,
    .bdrv_co_pdiscard = snapshot_access_pdiscard,
    .bdrv_co_block_status = snapshot_access_block_status,
    .bdrv_co_flush_to_os = snapshot_access_flush,
    .bdrv_child_perm = snapshot_access_child_perm,
    .bdrv_own_filename = snapshot_access_own_filename,
};
