/*
 * raw: the image is the bytes of its `file` child, optionally a window
 * [offset, offset+size) of it.  Without offset and size it behaves like a
 * filter (its child's role is FILTERED, so permissions pass through).
 */
#include <errno.h>
#include <inttypes.h>

#include "block/block_int.h"

typedef struct RawState {
    uint64_t offset;
    uint64_t size;
    bool has_size;
} RawState;

/* Check the window against the file's current size. */
static int raw_apply_window(BlockDriverState *bs, GError **errp)
{
    RawState *s = bs->opaque;
    int64_t file_size = bdrv_getlength(bs->file->bs);
    if (file_size < 0) {
        error_setg_errno(errp, (int)-file_size,
                         "Could not get size of the containing file");
        return (int)file_size;
    }
    if (s->offset > (uint64_t)file_size) {
        error_setg(errp,
                   "Offset (%" PRIu64 ") cannot be greater than size of the "
                   "containing file (%" PRId64 ")",
                   s->offset, file_size);
        return -EINVAL;
    }
    if (s->has_size && (uint64_t)file_size - s->offset < s->size) {
        error_setg(errp,
                   "The sum of offset (%" PRIu64 ") and size (%" PRIu64 ") "
                   "has to be smaller or equal to the  actual size of the "
                   "containing file (%" PRId64 ")",
                   s->offset, s->size, file_size);
        return -EINVAL;
    }
    if (!s->has_size) {
        s->size = (uint64_t)file_size - s->offset;
    }
    bs->total_bytes = (int64_t)s->size;
    return 0;
}

/* The window's own checks (open and reopen), as QEMU words them. */
static bool raw_check_window(const BlockdevOptionsRaw *o, GError **errp)
{
    if ((o->has_offset && o->offset < 0) || (o->has_size && o->size < 0)) {
        error_setg(errp,
                   "Parameter '%s' expects a non-negative number "
                   "below 2^64",
                   (o->has_offset && o->offset < 0) ? "offset" : "size");
        return false;
    }
    if (o->has_size && (o->size % BDRV_SECTOR_SIZE)) {
        error_setg(errp, "Specified size is not multiple of %llu",
                   (unsigned long long)BDRV_SECTOR_SIZE);
        return false;
    }
    return true;
}

static int coroutine_fn raw_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    RawState *s = bs->opaque;
    const BlockdevOptionsRaw *o = &opts->u.raw;

    /* The window decides the role, so it is read first; QEMU validates
     * it only after the file is open (errors come in that order). */
    bool windowed = (o->has_offset && o->offset != 0) || o->has_size;
    BdrvChildRole role = windowed ? BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY
                                  : BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY;
    s->offset = o->has_offset ? (uint64_t)o->offset : 0;
    s->has_size = o->has_size;
    s->size = o->has_size ? (uint64_t)o->size : 0;
    if (!bdrv_open_child(bs, o->file, "file", role, false, errp)) {
        return -EINVAL;
    }
    if (!raw_check_window(o, errp)) {
        return -EINVAL;
    }
    int ret = raw_apply_window(bs, errp);
    if (ret < 0) {
        return ret;
    }
    BlockDriverState *f = bs->file->bs;
    bs->supported_write_flags =
        BDRV_REQ_WRITE_UNCHANGED | (f->supported_write_flags & BDRV_REQ_FUA);
    bs->supported_zero_flags =
        BDRV_REQ_WRITE_UNCHANGED |
        (f->supported_zero_flags &
         (BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK));
    return 0;
}

/* Map a request into the file; refuse anything outside the window so no
 * byte outside it is ever read or written. */
static int raw_adjust(BlockDriverState *bs, int64_t *offset, int64_t bytes,
                      bool is_write)
{
    RawState *s = bs->opaque;
    if (*offset < 0 || bytes < 0 || (uint64_t)*offset > INT64_MAX - s->offset) {
        return -EINVAL;
    }
    if (s->has_size &&
        ((uint64_t)*offset > s->size || (uint64_t)bytes > s->size - *offset)) {
        return is_write ? -ENOSPC : -EINVAL;
    }
    *offset += s->offset;
    return 0;
}

static int coroutine_fn raw_preadv(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    int ret = raw_adjust(bs, &offset, bytes, false);
    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, BLKDBG_READ_AIO);
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, flags);
}

static int coroutine_fn raw_pwritev(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, IOVector *qiov,
                                    BdrvRequestFlags flags)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, BLKDBG_WRITE_AIO);
    return bdrv_co_pwritev(bs->file, offset, bytes, qiov, flags);
}

static int coroutine_fn raw_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                          int64_t bytes, BdrvRequestFlags flags)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn raw_pdiscard(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

/* copy offload: the range in the file, on either side of the copy */
static int coroutine_fn raw_copy_range_from(BlockDriverState *bs,
                                            BdrvChild *src,
                                            int64_t src_offset,
                                            BdrvChild *dst,
                                            int64_t dst_offset, int64_t bytes)
{
    int ret = raw_adjust(bs, &src_offset, bytes, false);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_copy_range_from(bs->file, src_offset, dst, dst_offset,
                                   bytes);
}

static int coroutine_fn raw_copy_range_to(BlockDriverState *bs,
                                          BdrvChild *src, int64_t src_offset,
                                          BdrvChild *dst, int64_t dst_offset,
                                          int64_t bytes)
{
    int ret = raw_adjust(bs, &dst_offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_copy_range_to(src, src_offset, bs->file, dst_offset,
                                 bytes);
}

static int coroutine_fn raw_block_status(BlockDriverState *bs, bool want_zero,
                                         int64_t offset, int64_t bytes,
                                         int64_t *pnum, int64_t *map,
                                         BlockDriverState **file)
{
    RawState *s = bs->opaque;
    /* The status is the file's at the shifted offset; the file's end of
     * file is not necessarily ours (the core sets our EOF). */
    int ret = bdrv_co_block_status(bs->file->bs, offset + s->offset, bytes,
                                   pnum, map, file);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        /* the window reaches past the file's end: zeroes */
        *pnum = bytes;
        return BDRV_BLOCK_ZERO;
    }
    return ret & ~BDRV_BLOCK_EOF;
}

static int coroutine_fn raw_truncate(BlockDriverState *bs, int64_t offset,
                                     bool exact, PreallocMode prealloc,
                                     BdrvRequestFlags flags, GError **errp)
{
    RawState *s = bs->opaque;
    if (s->has_size) {
        error_setg(errp, "Cannot resize fixed-size raw disks");
        return -ENOTSUP;
    }
    if ((uint64_t)INT64_MAX - offset < s->offset) {
        error_setg(errp, "Disk size too large for the chosen offset");
        return -EINVAL;
    }
    int ret = bdrv_co_truncate(bs->file, offset + s->offset, exact, prealloc,
                               flags, errp);
    if (ret == 0) {
        s->size = offset;
        bs->total_bytes = offset;
    }
    return ret;
}

static int coroutine_fn raw_get_info(BlockDriverState *bs, ImageInfo *info,
                                     GError **errp)
{
    /* What the node below knows (dirty flag, cluster size) is ours. */
    int64_t cluster_size = 0;
    bool dirty = false;
    int ret = bdrv_co_get_bdi(bs->file->bs, &cluster_size, &dirty, errp);
    if (ret >= 0) {
        info->has_cluster_size = cluster_size != 0;
        info->cluster_size = cluster_size;
        info->has_dirty_flag = true;
        info->dirty_flag = dirty;
    }
    return ret;
}

static void raw_child_perm(BlockDriverState *bs, BdrvChild *c,
                           BdrvChildRole role, uint64_t perm, uint64_t shared,
                           uint64_t *nperm, uint64_t *nshared)
{
    bdrv_default_perms(bs, c, role, perm, shared, nperm, nshared);
    /* The defaults may add write and resize for a format's metadata; raw
     * has none, so take them only when a parent needs them. */
    *nperm &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    *nperm |= perm & (BLK_PERM_WRITE | BLK_PERM_RESIZE);
}

/* QEMU re-reads raw's size from its file at every query, so a resize of
 * the file done by another user shows through (a size option still
 * caps it). */
static void raw_child_resized(BlockDriverState *bs, BdrvChild *c)
{
    RawState *s = bs->opaque;
    int64_t len = bdrv_getlength(c->bs);
    if (c != bs->file || len < 0) {
        return;
    }
    if ((uint64_t)len < s->offset) {
        s->size = 0;
    } else if (s->has_size) {
        s->size = MIN(s->size, (uint64_t)len - s->offset);
    } else {
        s->size = (uint64_t)len - s->offset;
    }
    bs->total_bytes = (int64_t)s->size;
}

static const char *const raw_strong_opts[] = {"offset", "size", NULL};

/* ---- reopen: the window may change (and be left out: the whole file) */

static const char *const raw_reopen_opts[] = {"offset", "size", NULL};

/* The window in force before the reopen, for abort. */
typedef struct RawReopenState {
    RawState old;
    int64_t old_total_bytes;
} RawReopenState;

static int coroutine_fn raw_reopen_prepare(BDRVReopenState *state,
                                           GError **errp)
{
    BlockDriverState *bs = state->bs;
    RawState *s = bs->opaque;
    const BlockdevOptionsRaw *o = &state->options->u.raw;

    if (!raw_check_window(o, errp)) {
        return -EINVAL;
    }
    RawReopenState *rs = g_new0(RawReopenState, 1);
    rs->old = *s;
    rs->old_total_bytes = bs->total_bytes;
    /* Nothing reads while the transaction runs (all drained): check the
     * new window in place and put the old one back on abort. */
    s->offset = o->has_offset ? (uint64_t)o->offset : 0;
    s->has_size = o->has_size;
    s->size = o->has_size ? (uint64_t)o->size : 0;
    int ret = raw_apply_window(bs, errp);
    if (ret < 0) {
        *s = rs->old;
        bs->total_bytes = rs->old_total_bytes;
        g_free(rs);
        return ret;
    }
    state->opaque = rs;
    return 0;
}

static void raw_reopen_commit(BDRVReopenState *state)
{
    RawReopenState *rs = state->opaque;
    bool resized = rs->old_total_bytes != state->bs->total_bytes;
    g_free(rs);
    state->opaque = NULL;
    if (resized) {
        bdrv_parent_cb_resize(state->bs);
    }
}

static void raw_reopen_abort(BDRVReopenState *state)
{
    RawReopenState *rs = state->opaque;
    RawState *s = state->bs->opaque;
    *s = rs->old;
    state->bs->total_bytes = rs->old_total_bytes;
    g_free(rs);
    state->opaque = NULL;
}

const BlockDriver bdrv_raw = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "raw",
    .driver = BLOCKDEV_DRIVER_RAW,
    .instance_size = sizeof(RawState),
    .is_format = true,
    .bdrv_open = raw_open,
    .bdrv_co_preadv = raw_preadv,
    .bdrv_co_pwritev = raw_pwritev,
    .bdrv_co_pwrite_zeroes = raw_pwrite_zeroes,
    .bdrv_co_pdiscard = raw_pdiscard,
    .bdrv_co_copy_range_from = raw_copy_range_from,
    .bdrv_co_copy_range_to = raw_copy_range_to,
    .bdrv_co_block_status = raw_block_status,
    .bdrv_co_truncate = raw_truncate,
    .bdrv_co_get_info = raw_get_info,
    .bdrv_child_perm = raw_child_perm,
    .strong_opts = raw_strong_opts,
    .bdrv_child_resized = raw_child_resized,
    .reopen_opts = raw_reopen_opts,
    .mutable_opts = raw_reopen_opts,
    .bdrv_reopen_prepare = raw_reopen_prepare,
    .bdrv_reopen_commit = raw_reopen_commit,
    .bdrv_reopen_abort = raw_reopen_abort,
};
