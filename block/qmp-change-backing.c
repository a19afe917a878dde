/*
 * change-backing-file: rewrite the backing file name recorded in the
 * header of an image in the chain below a root node, without touching the
 * graph (the backing edge stays as it is).  The checks, their order and
 * their words are qemu-storage-daemon 7.2's; as there, the format recorded
 * next to the new name is the image's own format, and a read-only image is
 * reopened read-write for the write and read-only again afterwards.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/jobs/blockjob.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

static int coroutine_fn change_backing(BlockDriverState *bs,
                                       const char *backing_file)
{
    if (!bs->drv) {
        return -ENOMEDIUM;
    }
    if (!bs->drv->bdrv_co_change_backing_file) {
        return -ENOTSUP;
    }
    return bs->drv->bdrv_co_change_backing_file(bs, backing_file,
                                                bs->drv->format_name);
}

void qmp_change_backing_file(q_obj_change_backing_file_arg *arg,
                             GError **errp)
{
    BlockDriverState *bs = bdrv_lookup_root_bs(arg->device, errp);
    if (!bs) {
        return;
    }
    BlockDriverState *image_bs =
        bdrv_lookup_bs(NULL, arg->image_node_name, errp);
    if (!image_bs) {
        return;
    }
    /* An image that is its own base (nothing below it) keeps no name. */
    if (!bdrv_filter_or_cow_child(image_bs)) {
        error_setg(errp, "not allowing backing file change on an image "
                         "without a backing file");
        return;
    }
    /* QEMU's op blocker is checked on the device, not on the image: a
     * job anywhere on the device node blocks the change. */
    if (block_job_node_busy(bs, errp)) {
        return;
    }
    if (!bdrv_chain_contains(bs, image_bs)) {
        error_setg(errp, "'%s' and image file are not in the same chain",
                   arg->device);
        return;
    }

    /* Other QMP sessions run while we yield (reopen, header write): keep
     * the node alive even if one of them deletes it meanwhile. */
    bdrv_ref(image_bs);
    bool ro = bdrv_is_read_only(image_bs);
    if (ro && bdrv_co_reopen_set_read_only(image_bs, false, errp) < 0) {
        bdrv_unref(image_bs);
        return;
    }
    int ret = change_backing(image_bs, arg->backing_file);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not change backing file to '%s'",
                         arg->backing_file);
    }
    if (ro) {
        GError *err = NULL;
        bdrv_co_reopen_set_read_only(image_bs, true, &err);
        if (err && ret >= 0) {
            error_propagate(errp, err);
        } else {
            g_clear_error(&err);
        }
    }
    bdrv_unref(image_bs);
}
