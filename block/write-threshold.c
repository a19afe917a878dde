/*
 * block-set-write-threshold and BLOCK_WRITE_THRESHOLD, as
 * qemu-storage-daemon 7.2 has them: the threshold is a byte offset on one
 * node; the first write request to that node that ends past it sends the
 * event (how far past, and the threshold) and disarms it, so a guest
 * writing on does not flood the monitor.  The user re-arms it with a
 * higher value after growing the storage.  Any node can carry one:
 * writes a format driver issues to its file child are requests on the
 * file node, so a threshold on a qcow2 image's protocol node fires when
 * the image allocates past that offset in its file.
 */
#include "block/write-threshold.h"

#include "qapi/qapi-commands.h"
#include "qapi/qapi-events.h"
#include "util/error.h"

void bdrv_write_threshold_set(BlockDriverState *bs, uint64_t threshold)
{
    bs->write_threshold_offset = threshold;
}

uint64_t bdrv_write_threshold_get(const BlockDriverState *bs)
{
    return bs->write_threshold_offset;
}

bool bdrv_write_threshold_exceeded(uint64_t threshold, int64_t offset,
                                   int64_t bytes, uint64_t *amount)
{
    if (threshold == 0 || offset < 0 || bytes < 0 ||
        offset > INT64_MAX - bytes) {
        return false;
    }
    uint64_t end = (uint64_t)offset + (uint64_t)bytes;
    if (end <= threshold) {
        return false;
    }
    *amount = end - threshold;
    return true;
}

bool bdrv_write_threshold_is_cor_write(const BdrvChild *child,
                                       BdrvRequestFlags flags)
{
    if (!(flags & BDRV_REQ_WRITE_UNCHANGED) || !child->klass ||
        !child->klass->parent_is_bds) {
        return false;
    }
    const BlockDriverState *parent = child->opaque;
    return parent && parent->drv &&
           parent->drv->driver == BLOCKDEV_DRIVER_COPY_ON_READ;
}

void bdrv_write_threshold_check_write(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes)
{
    uint64_t threshold = bs->write_threshold_offset;
    uint64_t amount;
    if (!bdrv_write_threshold_exceeded(threshold, offset, bytes, &amount)) {
        return;
    }
    /* Disarm first: whatever the event sending does, this request has
     * used the threshold up. */
    bdrv_write_threshold_set(bs, 0);
    qapi_event_send_block_write_threshold(bs->node_name, amount, threshold);
}

void qmp_block_set_write_threshold(q_obj_block_set_write_threshold_arg *arg,
                                   GError **errp)
{
    BlockDriverState *bs = bdrv_find_node(arg->node_name);
    if (!bs) {
        error_setg(errp, "Device '%s' not found", arg->node_name);
        return;
    }
    bdrv_write_threshold_set(bs, arg->write_threshold);
}
