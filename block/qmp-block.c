/*
 * QMP handlers for nodes: blockdev-add, blockdev-del, block_resize,
 * query-named-block-nodes, query-block; and the node/image info they
 * report (also used by blockd-img).
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "qapi/qapi-commands.h"

/* ---- info ---- */

/* The backing file name as a path usable from here: relative names are
 * relative to the image's directory (NULL when that is not a file). */
static char *full_backing_filename(BlockDriverState *bs)
{
    const char *b = bs->backing_file;
    if (b[0] == '/' || strstr(b, "://") || !strncmp(b, "json:", 5)) {
        return g_strdup(b);
    }
    /* The directory is that of the protocol node at the bottom of the
     * primary children (QEMU's bdrv_dirname()). */
    BlockDriverState *p = bs;
    while (p->file) {
        p = p->file->bs;
    }
    const char *img = p->filename;
    if (!img[0] || !strncmp(img, "json:", 5) || strstr(img, "://")) {
        return NULL;
    }
    g_autofree char *dir = g_path_get_dirname(img);
    if (!strcmp(dir, ".") && img[0] != '.') {
        return g_strdup(b);
    }
    return g_build_filename(dir, b, NULL);
}

int coroutine_fn bdrv_co_get_bdi(BlockDriverState *bs, int64_t *cluster_size,
                                 bool *dirty, GError **errp)
{
    const BlockDriver *drv = bs->drv;
    if (!drv) {
        return -ENOMEDIUM;
    }
    if (!drv->bdrv_co_get_info) {
        BdrvChild *f = drv->is_filter ? bdrv_filter_or_cow_child(bs) : NULL;
        return f ? bdrv_co_get_bdi(f->bs, cluster_size, dirty, errp) : -ENOTSUP;
    }
    ImageInfo *tmp = g_new0(ImageInfo, 1);
    int ret = drv->bdrv_co_get_info(bs, tmp, errp);
    if (ret >= 0) {
        *cluster_size = tmp->has_cluster_size ? tmp->cluster_size : 0;
        *dirty = tmp->has_dirty_flag && tmp->dirty_flag;
    }
    qapi_free_ImageInfo(tmp);
    return ret;
}

ImageInfo *coroutine_fn bdrv_co_image_info(BlockDriverState *bs, GError **errp)
{
    int64_t size = bdrv_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Can't get image size '%s'",
                         bs->node_name);
        return NULL;
    }
    ImageInfo *info = g_new0(ImageInfo, 1);
    info->filename = g_strdup(bs->filename);
    info->format = g_strdup(bdrv_get_format_name(bs));
    info->virtual_size = size;
    int64_t actual = bdrv_co_get_allocated_file_size(bs);
    info->has_actual_size = actual >= 0;
    info->actual_size = actual >= 0 ? actual : 0;
    if (bs->encrypted) {
        info->has_encrypted = true;
        info->encrypted = true;
    }
    if (!bs->drv->bdrv_co_get_info) {
        /* A filter shows what is below it (QEMU's bdrv_get_info). */
        int64_t cluster_size = 0;
        bool dirty = false;
        if (bdrv_co_get_bdi(bs, &cluster_size, &dirty, NULL) >= 0) {
            info->has_dirty_flag = true;
            info->dirty_flag = dirty;
            info->has_cluster_size = cluster_size != 0;
            info->cluster_size = cluster_size;
        }
    } else {
        GError *err = NULL;
        int ret = bs->drv->bdrv_co_get_info(bs, info, &err);
        if (ret >= 0) {
            /* A driver that can describe itself reports a dirty flag. */
            info->has_dirty_flag = true;
            if (info->has_cluster_size && info->cluster_size == 0) {
                info->has_cluster_size = false;
            }
        } else if (ret == -ENOTSUP || ret == -ENOMEDIUM) {
            g_clear_error(&err);
            info->has_dirty_flag = false;
        } else {
            if (!err) {
                error_setg_errno(&err, -ret, "Could not get image info");
            }
            error_propagate(errp, err);
            qapi_free_ImageInfo(info);
            return NULL;
        }
    }
    if (bs->backing_file[0]) {
        info->has_backing_filename = true;
        info->backing_filename = g_strdup(bs->backing_file);
        char *full = full_backing_filename(bs);
        if (full) {
            info->has_full_backing_filename = true;
            info->full_backing_filename = full;
        }
        if (bs->backing_format[0]) {
            info->has_backing_filename_format = true;
            info->backing_filename_format = g_strdup(bs->backing_format);
        }
    }
    info->has_format_specific = info->format_specific != NULL;
    info->has_snapshots = info->snapshots != NULL;
    return info;
}

typedef struct InfoCo {
    BlockDriverState *bs;
    bool flat;
    BlockDeviceInfo *info;
    GError *err;
} InfoCo;

static void coroutine_fn block_device_info_co(void *opaque)
{
    InfoCo *ic = opaque;
    BlockDriverState *bs = ic->bs;
    BlockDeviceInfo *info = g_new0(BlockDeviceInfo, 1);

    info->file = g_strdup(bs->filename);
    info->has_node_name = bs->node_name[0] != 0;
    info->node_name = g_strdup(bs->node_name);
    info->ro = bs->read_only;
    info->drv = g_strdup(bdrv_get_format_name(bs));
    info->encrypted = bs->encrypted;
    /* The node actually below, not the header's name for it; a filter
     * whose child is called "backing" (commit_top) has no backing file
     * (QEMU's bdrv_cow_bs). */
    BlockDriverState *cow = bdrv_backing_bs(bs);
    if (cow && (bs->backing->role & BDRV_CHILD_COW)) {
        info->has_backing_file = true;
        info->backing_file = g_strdup(cow->filename);
    }
    info->detect_zeroes = bs->detect_zeroes;
    info->cache = g_new0(BlockdevCacheInfo, 1);
    info->cache->writeback = true; /* no guest device to turn it off */
    info->cache->direct = bs->open_flags & BDRV_O_NOCACHE;
    info->cache->no_flush = bs->open_flags & BDRV_O_NO_FLUSH;
    info->write_threshold = (int64_t)bs->write_threshold_offset;
    if (bdrv_dirty_bitmap_hooks && bdrv_dirty_bitmap_hooks->query) {
        info->dirty_bitmaps = bdrv_dirty_bitmap_hooks->query(bs);
        info->has_dirty_bitmaps = info->dirty_bitmaps != NULL;
    }

    /* The image, and unless flat, the chain below it (filtered or
     * backing children), each as the previous one's backing-image. */
    ImageInfo **p = &info->image;
    BlockDriverState *b = bs;
    while (1) {
        *p = bdrv_co_image_info(b, &ic->err);
        if (!*p) {
            qapi_free_BlockDeviceInfo(info);
            return;
        }
        BdrvChild *below = ic->flat ? NULL : bdrv_filter_or_cow_child(b);
        if (!below) {
            break;
        }
        info->backing_file_depth++;
        (*p)->has_backing_image = true;
        p = &(*p)->backing_image;
        b = below->bs;
    }
    ic->info = info;
}

BlockDeviceInfo *bdrv_block_device_info(BlockDriverState *bs, bool flat,
                                        GError **errp)
{
    InfoCo ic = {.bs = bs, .flat = flat};
    if (in_coroutine()) {
        block_device_info_co(&ic);
    } else {
        coroutine_run_sync(block_device_info_co, &ic);
    }
    if (ic.err) {
        error_propagate(errp, ic.err);
    }
    return ic.info;
}

/* ---- commands ---- */

void qmp_blockdev_add(BlockdevOptions *arg, GError **errp)
{
    if (!arg->has_node_name || !arg->node_name) {
        error_setg(errp, "'node-name' must be specified for the root node");
        return;
    }
    BlockDriverState *bs = bdrv_co_open(arg, errp);
    if (!bs) {
        return;
    }
    /* The reference from opening is the monitor's. */
    bdrv_set_monitor_owned(bs);
}

void qmp_blockdev_del(q_obj_blockdev_del_arg *arg, GError **errp)
{
    BlockDriverState *bs = bdrv_find_node(arg->node_name);
    if (!bs) {
        error_setg(errp, "Failed to find node with node-name='%s'",
                   arg->node_name);
        return;
    }
    bdrv_co_blockdev_del(bs, errp);
}

BlockDeviceInfoList *
qmp_query_named_block_nodes(q_obj_query_named_block_nodes_arg *arg,
                            GError **errp)
{
    bool flat = arg && arg->has_flat && arg->flat;
    BlockDeviceInfoList *list = NULL;
    /* Newest first, as qemu-storage-daemon lists them. */
    for (BlockDriverState *bs = bdrv_next_node(NULL); bs;
         bs = bdrv_next_node(bs)) {
        BlockDeviceInfo *info = bdrv_block_device_info(bs, flat, errp);
        if (!info) {
            qapi_free_BlockDeviceInfoList(list);
            return NULL;
        }
        BlockDeviceInfoList *e = g_new0(BlockDeviceInfoList, 1);
        e->value = info;
        e->next = list;
        list = e;
    }
    return list;
}

BlockInfoList *qmp_query_block(GError **errp)
{
    /* A storage daemon has no guest devices. */
    return NULL;
}

void qmp_block_resize(q_obj_block_resize_arg *arg, GError **errp)
{
    BlockDriverState *bs =
        bdrv_lookup_bs(arg->has_device ? arg->device : NULL,
                       arg->has_node_name ? arg->node_name : NULL, errp);
    if (!bs) {
        return;
    }
    if (arg->size < 0) {
        error_setg(errp, "Parameter 'size' expects a >0 size");
        return;
    }
    if (bdrv_backing_user(bs)) {
        /* qemu-storage-daemon 7.2 prints the absent device as (null) */
        error_setg(errp, "Device '%s' is in use",
                   arg->has_device ? arg->device : "(null)");
        return;
    }
    BlockBackend *blk = blk_new(BLK_PERM_RESIZE, BLK_PERM_ALL);
    if (blk_insert_bs(blk, bs, errp) < 0) {
        blk_unref(blk);
        return;
    }
    bdrv_drained_begin(bs);
    blk_co_truncate(blk, arg->size, false, PREALLOC_MODE_OFF, 0, errp);
    bdrv_drained_end(bs);
    blk_unref(blk);
}
