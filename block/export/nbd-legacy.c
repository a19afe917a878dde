/*
 * The legacy NBD export commands nbd-server-add and nbd-server-remove
 * (deprecated in QEMU, still in qemu-storage-daemon 7.2): thin wrappers
 * over block-export-add/del where the export id is the NBD export name.
 * As in qsd, the device is looked up first, a read-only node is quietly
 * exported read-only even when `writable` asks otherwise, and every later
 * check and message is block-export-add's.
 */
#include <string.h>

#include "block/export/nbd-int.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

void qmp_nbd_server_add(NbdServerAddOptions *arg, GError **errp)
{
    BlockDriverState *bs = bdrv_lookup_bs(arg->device, arg->device, errp);
    if (!bs) {
        return;
    }
    /* The name defaults to the device (block-export-add: to the node). */
    const char *name = arg->has_name ? arg->name : arg->device;
    BlockDirtyBitmapOrStr bitmap = {
        .type = QTYPE_QSTRING,
        .u.local = arg->bitmap,
    };
    BlockDirtyBitmapOrStrList bitmaps = {.next = NULL, .value = &bitmap};
    /* Everything borrowed from arg: nothing to free. */
    BlockExportOptions opts = {
        .type = BLOCK_EXPORT_TYPE_NBD,
        .id = (char *)name,
        .node_name = (char *)bdrv_get_node_name(bs),
        .has_writable = arg->has_writable,
        .writable = arg->has_writable && arg->writable &&
                    !bdrv_is_read_only(bs),
        .u.nbd =
            {
                .has_name = true,
                .name = (char *)name,
                .has_description = arg->has_description,
                .description = arg->description,
                .has_bitmaps = arg->has_bitmap,
                .bitmaps = arg->has_bitmap ? &bitmaps : NULL,
            },
    };
    blk_exp_add(&opts, errp);
}

void qmp_nbd_server_remove(q_obj_nbd_server_remove_arg *arg, GError **errp)
{
    BlockExport *exp = blk_exp_find(arg->name);
    if (exp && exp->type != BLOCK_EXPORT_TYPE_NBD) {
        error_setg(errp, "Block export '%s' is not an NBD export", arg->name);
        return;
    }
    q_obj_block_export_del_arg del = {
        .id = arg->name,
        .has_mode = arg->has_mode,
        .mode = arg->mode,
    };
    qmp_block_export_del(&del, errp);
}
