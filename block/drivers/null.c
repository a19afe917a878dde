/*
 * null-co / null-aio: a node of a given size that discards writes and
 * whose reads return nothing (or zeroes with read-zeroes=on), after an
 * optional latency.  For tests and benchmarks.
 *
 * QEMU 7.2 defaults: size 1 GiB, read-zeroes off (reads leave the
 * caller's buffer untouched), latency 0.
 */
#include <errno.h>
#include <stdio.h>

#include "block/block_int.h"

#define NULL_DEFAULT_SIZE (INT64_C(1) << 30)

typedef struct NullState {
    int64_t latency_ns;
    bool read_zeroes;
} NullState;

static const BlockdevOptionsNull *null_opts(const BlockdevOptions *opts)
{
    return opts->driver == BLOCKDEV_DRIVER_NULL_AIO ? &opts->u.null_aio
                                                    : &opts->u.null_co;
}

static int coroutine_fn null_open(BlockDriverState *bs,
                                  const BlockdevOptions *opts, GError **errp)
{
    NullState *s = bs->opaque;
    const BlockdevOptionsNull *o = null_opts(opts);
    int64_t size = o->has_size ? o->size : NULL_DEFAULT_SIZE;

    if (size < 0) {
        error_setg(errp, "Parameter 'size' expects a non-negative number "
                         "below 2^64");
        return -EINVAL;
    }
    if (o->has_latency_ns && o->latency_ns > INT64_MAX) {
        error_setg(errp, "latency-ns is invalid");
        return -EINVAL;
    }
    s->latency_ns = o->has_latency_ns ? (int64_t)o->latency_ns : 0;
    s->read_zeroes = o->has_read_zeroes && o->read_zeroes;
    bs->total_bytes = size;
    /* Only latency-ns does not change what the node reads, so only then
     * is the plain name right; otherwise the core builds json:{...}. */
    if (!o->has_size && !o->has_read_zeroes) {
        snprintf(bs->filename, sizeof(bs->filename), "%s://",
                 bs->drv->format_name);
    }
    return 0;
}

static int coroutine_fn null_common(BlockDriverState *bs)
{
    NullState *s = bs->opaque;
    if (s->latency_ns) {
        co_sleep_ns(s->latency_ns);
    }
    return 0;
}

static int coroutine_fn null_preadv(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, IOVector *qiov,
                                    BdrvRequestFlags flags)
{
    NullState *s = bs->opaque;
    if (s->read_zeroes) {
        qiov_memset(qiov, 0, 0, bytes);
    }
    return null_common(bs);
}

static int coroutine_fn null_pwritev(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, IOVector *qiov,
                                     BdrvRequestFlags flags)
{
    return null_common(bs);
}

static int coroutine_fn null_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                           int64_t bytes,
                                           BdrvRequestFlags flags)
{
    return null_common(bs);
}

static int coroutine_fn null_pdiscard(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes)
{
    return null_common(bs);
}

static int coroutine_fn null_flush(BlockDriverState *bs)
{
    return null_common(bs);
}

static int coroutine_fn null_block_status(BlockDriverState *bs, bool want_zero,
                                          int64_t offset, int64_t bytes,
                                          int64_t *pnum, int64_t *map,
                                          BlockDriverState **file)
{
    NullState *s = bs->opaque;
    *pnum = bytes;
    *map = offset;
    *file = bs;
    /* Nothing is "data": without read-zeroes the content is undefined,
     * which QEMU reports as unallocated. */
    return BDRV_BLOCK_OFFSET_VALID | (s->read_zeroes ? BDRV_BLOCK_ZERO : 0);
}

static int64_t coroutine_fn null_allocated_size(BlockDriverState *bs)
{
    return 0;
}

static const char *const null_strong_opts[] = {"size", "read-zeroes", NULL};

/* blockdev-reopen: nothing of its own changes (QEMU's null driver accepts
 * a reopen whose options are all as they were). */
static int coroutine_fn null_reopen_prepare(BDRVReopenState *state,
                                            GError **errp)
{
    return 0;
}

const BlockDriver bdrv_null_co = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-co",
    .driver = BLOCKDEV_DRIVER_NULL_CO,
    .instance_size = sizeof(NullState),
    .bdrv_open = null_open,
    .bdrv_co_preadv = null_preadv,
    .bdrv_co_pwritev = null_pwritev,
    .bdrv_co_pwrite_zeroes = null_pwrite_zeroes,
    .bdrv_co_pdiscard = null_pdiscard,
    .bdrv_co_flush_to_disk = null_flush,
    .bdrv_co_block_status = null_block_status,
    .bdrv_co_get_allocated_file_size = null_allocated_size,
    .strong_opts = null_strong_opts,
    .bdrv_reopen_prepare = null_reopen_prepare,
};

const BlockDriver bdrv_null_aio = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-aio",
    .driver = BLOCKDEV_DRIVER_NULL_AIO,
    .instance_size = sizeof(NullState),
    .bdrv_open = null_open,
    .bdrv_co_preadv = null_preadv,
    .bdrv_co_pwritev = null_pwritev,
    .bdrv_co_pwrite_zeroes = null_pwrite_zeroes,
    .bdrv_co_pdiscard = null_pdiscard,
    .bdrv_co_flush_to_disk = null_flush,
    .bdrv_co_block_status = null_block_status,
    .bdrv_co_get_allocated_file_size = null_allocated_size,
    .strong_opts = null_strong_opts,
    .bdrv_reopen_prepare = null_reopen_prepare,
};
