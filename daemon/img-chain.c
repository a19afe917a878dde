/*
 * Opening an image together with its backing chain, for the commands that
 * read what a guest would see (map, compare, convert): qemu-img opens
 * those without BDRV_O_NO_BACKING, so the format driver follows the
 * backing file name (and format) recorded in the image.
 */
#include <string.h>

#include "block/block_int.h"
#include "daemon/img.h"
#include "util/json-stream.h"

static BlockDriverState *coroutine_fn open_chain(const char *filename,
                                                 const BlockDriver *drv,
                                                 bool read_only,
                                                 bool force_share,
                                                 bool backing, bool unmap,
                                                 GError **errp)
{
    JsonObject *file = json_object_new();

    json_object_set_string_member(file, "driver", "file");
    json_object_set_string_member(file, "filename", filename);
    json_object_set_boolean_member(file, "read-only", read_only);
    if (force_share) {
        json_object_set_boolean_member(file, "force-share", true);
    }

    JsonObject *o = file;
    if (drv->is_format || drv->is_filter) {
        o = json_object_new();
        json_object_set_string_member(o, "driver", drv->format_name);
        json_object_set_object_member(o, "file", file);
        json_object_set_boolean_member(o, "read-only", read_only);
        if (force_share) {
            json_object_set_boolean_member(o, "force-share", true);
        }
        if (!backing && drv->supports_backing) {
            json_object_set_null_member(o, "backing");
        }
    }
    if (unmap) {
        json_object_set_string_member(o, "discard", "unmap");
    }
    JsonNode *node = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    BlockDriverState *bs = bdrv_co_open_json(node, false, errp);
    json_node_unref(node);
    return bs;
}

static bool coroutine_fn open_image(ImgImage *img, const char *filename,
                                    const char *fmt, uint64_t perm,
                                    bool force_share, bool backing,
                                    bool unmap, GError **errp)
{
    GError *err = NULL;

    if (g_str_has_prefix(filename, "json:")) {
        /* Options given in full: the caller's tree as it stands. */
        return img_open(img, filename, fmt, perm, force_share, errp);
    }
    memset(img, 0, sizeof(*img));
    if (!fmt) {
        fmt = img_probe(filename, force_share, &err);
        if (!fmt) {
            goto fail;
        }
    }
    const BlockDriver *drv = bdrv_find_format(fmt);
    if (!drv) {
        error_setg(&err, "Unknown driver '%s'", fmt);
        goto fail;
    }
    BlockDriverState *bs = open_chain(filename, drv, !(perm & BLK_PERM_WRITE),
                                      force_share, backing, unmap, &err);
    if (!bs) {
        goto fail;
    }
    img->blk = blk_new(perm, BLK_PERM_ALL);
    if (blk_insert_bs(img->blk, bs, &err) < 0) {
        blk_unref(img->blk);
        img->blk = NULL;
        bdrv_unref(bs);
        goto fail;
    }
    bdrv_unref(bs); /* the backend's reference keeps it */
    img->bs = bs;
    img->format = drv->format_name;
    img->backing_off = !backing && drv->supports_backing;
    return true;

fail:
    if (err && strstr(err->message, "Failed to get ") &&
        g_str_has_suffix(err->message, " lock")) {
        char *msg = g_strdup_printf("%s\nIs another process using the "
                                    "image [%s]?",
                                    err->message, filename);
        g_free(err->message);
        err->message = msg;
    }
    error_prepend(&err, "Could not open '%s': ", filename);
    error_propagate(errp, err);
    return false;
}

bool coroutine_fn img_open_chain(ImgImage *img, const char *filename,
                                 const char *fmt, uint64_t perm,
                                 bool force_share, GError **errp)
{
    return open_image(img, filename, fmt, perm, force_share, true, false,
                      errp);
}

bool coroutine_fn img_open_target(ImgImage *img, const char *filename,
                                  const char *fmt, bool backing,
                                  GError **errp)
{
    return open_image(img, filename, fmt,
                      BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, false,
                      backing, true, errp);
}
