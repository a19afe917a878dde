/*
 * Opening an image for a blockd-img command: probe (unless -f), build the
 * node tree (format over file, no backing), attach a backend.
 */
#include <string.h>

#include "block/block_int.h"
#include "daemon/img.h"

static JsonObject *file_options(const char *filename, bool read_only,
                                bool force_share)
{
    JsonObject *o = json_object_new();

    json_object_set_string_member(o, "driver", "file");
    json_object_set_string_member(o, "filename", filename);
    json_object_set_boolean_member(o, "read-only", read_only);
    if (force_share) {
        json_object_set_boolean_member(o, "force-share", true);
    }
    return o;
}

static BlockDriverState *coroutine_fn open_tree(const char *filename,
                                                const BlockDriver *drv,
                                                bool read_only,
                                                bool force_share,
                                                GError **errp)
{
    JsonObject *o;

    if (!drv->is_format && !drv->is_filter) {
        /* A protocol as the format ("-f file"): the file node alone. */
        o = file_options(filename, read_only, force_share);
    } else {
        o = json_object_new();
        json_object_set_string_member(o, "driver", drv->format_name);
        json_object_set_object_member(
            o, "file", file_options(filename, read_only, force_share));
        json_object_set_boolean_member(o, "read-only", read_only);
        if (force_share) {
            json_object_set_boolean_member(o, "force-share", true);
        }
        if (drv->supports_backing) {
            json_object_set_null_member(o, "backing");
        }
    }

    JsonNode *node = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    BlockdevOptions *opts = qapi_BlockdevOptions_from_json(node, false, errp);
    json_node_unref(node);
    if (!opts) {
        return NULL;
    }
    BlockDriverState *bs = bdrv_co_open(opts, errp);
    qapi_free_BlockdevOptions(opts);
    return bs;
}

bool coroutine_fn img_open_bare(ImgImage *img, const char *filename,
                                const char *fmt, uint64_t perm,
                                bool force_share, GError **errp)
{
    bool read_only = !(perm & BLK_PERM_WRITE);
    GError *err = NULL;

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
    BlockDriverState *bs = open_tree(filename, drv, read_only, force_share,
                                     &err);
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
    return true;

fail:
    if (err && strstr(err->message, "Failed to get ") &&
        g_str_has_suffix(err->message, " lock")) {
        /* The hint QEMU's tools print under a lock conflict. */
        char *msg = g_strdup_printf("%s\nIs another process using the "
                                    "image [%s]?",
                                    err->message, filename);
        g_free(err->message);
        err->message = msg;
    }
    error_propagate(errp, err);
    return false;
}

bool coroutine_fn img_open(ImgImage *img, const char *filename,
                           const char *fmt, uint64_t perm, bool force_share,
                           GError **errp)
{
    if (img_open_bare(img, filename, fmt, perm, force_share, errp)) {
        return true;
    }
    error_prepend(errp, "Could not open '%s': ", filename);
    return false;
}

void img_close(ImgImage *img)
{
    blk_unref(img->blk);
    img->blk = NULL;
    img->bs = NULL;
}
