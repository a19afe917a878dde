/*
 * Opening an image for a blockd-img command: probe (unless -f), build the
 * node tree (format over file, no backing), attach a backend.
 */
#include <string.h>

#include "block/block_int.h"
#include "daemon/img.h"
#include "util/json-stream.h"
#include "util/keyval.h"

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
                                                bool *backing_off,
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
            *backing_off = true;
        }
    }

    JsonNode *node = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    BlockDriverState *bs = bdrv_co_open_json(node, false, errp);
    json_node_unref(node);
    return bs;
}

/*
 * Options given as a "json:{...}" file name or with --image-opts (keyval
 * text, all values strings): complete them as qemu-img does (protocol
 * "file" for a bare file.filename, the probed format when "driver" is
 * absent, read-only, force-share, no backing file) and open the tree.
 */
static BlockDriverState *coroutine_fn open_options(JsonNode *node,
                                                   bool keyval,
                                                   const char *fmt,
                                                   bool read_only,
                                                   bool force_share,
                                                   const char **format,
                                                   bool *backing_off,
                                                   GError **errp)
{
    if (!JSON_NODE_HOLDS_OBJECT(node)) {
        error_setg(errp, "Invalid JSON object given");
        return NULL;
    }
    JsonObject *o = json_node_get_object(node);
    JsonObject *file = json_object_has_member(o, "file") &&
                               JSON_NODE_HOLDS_OBJECT(
                                   json_object_get_member(o, "file"))
                           ? json_object_get_object_member(o, "file")
                           : NULL;
    if (file && !json_object_has_member(file, "driver") &&
        json_object_has_member(file, "filename")) {
        json_object_set_string_member(file, "driver", "file");
    }
    if (!json_object_has_member(o, "driver")) {
        if (!fmt && file && json_object_has_member(file, "filename") &&
            JSON_NODE_HOLDS_VALUE(json_object_get_member(file, "filename"))) {
            fmt = img_probe(json_object_get_string_member(file, "filename"),
                            force_share, errp);
            if (!fmt) {
                return NULL;
            }
        }
        if (fmt) {
            json_object_set_string_member(o, "driver", fmt);
        }
    }
    const char *driver = json_object_has_member(o, "driver") &&
                                 JSON_NODE_HOLDS_VALUE(
                                     json_object_get_member(o, "driver"))
                             ? json_object_get_string_member(o, "driver")
                             : NULL;
    const BlockDriver *drv = driver ? bdrv_find_format(driver) : NULL;
    if (driver && !drv) {
        error_setg(errp, "Unknown driver '%s'", driver);
        return NULL;
    }
    if (drv && drv->is_format && !json_object_has_member(o, "file")) {
        /* qemu-img opens option dicts with bdrv_open(), whose wording
         * this is (QMP's schema check says "Parameter 'file' is
         * missing") */
        error_setg(errp, "A block device must be specified for \"file\"");
        return NULL;
    }
    if (drv && !strcmp(drv->format_name, "file") &&
        !json_object_has_member(o, "filename")) {
        error_setg(errp, "The 'file' block driver requires a file name");
        return NULL;
    }
    if (keyval) {
        json_object_set_string_member(o, "read-only", read_only ? "on" : "off");
        if (force_share) {
            json_object_set_string_member(o, "force-share", "on");
        }
    } else {
        json_object_set_boolean_member(o, "read-only", read_only);
        if (force_share) {
            json_object_set_boolean_member(o, "force-share", true);
        }
    }
    if (drv && drv->supports_backing && !json_object_has_member(o, "backing")) {
        json_object_set_null_member(o, "backing");
        *backing_off = true;
    }
    BlockdevOptions *opts = qapi_BlockdevOptions_from_json(node, keyval, errp);
    if (!opts) {
        return NULL;
    }
    BlockDriverState *bs = bdrv_co_open(opts, errp);
    qapi_free_BlockdevOptions(opts);
    if (bs) {
        *format = drv ? drv->format_name : bdrv_get_format_name(bs);
    }
    return bs;
}

static bool attach(ImgImage *img, BlockDriverState *bs, uint64_t perm,
                   const char *format, GError **errp)
{
    img->blk = blk_new(perm, BLK_PERM_ALL);
    if (blk_insert_bs(img->blk, bs, errp) < 0) {
        blk_unref(img->blk);
        img->blk = NULL;
        bdrv_unref(bs);
        return false;
    }
    bdrv_unref(bs); /* the backend's reference keeps it */
    img->bs = bs;
    img->format = format;
    return true;
}

bool coroutine_fn img_open_image_opts(ImgImage *img, const char *optstr,
                                      const char *fmt, uint64_t perm,
                                      bool force_share, GError **errp)
{
    const char *format = NULL;

    memset(img, 0, sizeof(*img));
    JsonNode *node = keyval_parse(optstr, NULL, errp);
    if (!node) {
        return false;
    }
    BlockDriverState *bs = open_options(node, true, fmt,
                                        !(perm & BLK_PERM_WRITE), force_share,
                                        &format, &img->backing_off, errp);
    json_node_unref(node);
    return bs && attach(img, bs, perm, format, errp);
}

bool coroutine_fn img_open_bare(ImgImage *img, const char *filename,
                                const char *fmt, uint64_t perm,
                                bool force_share, GError **errp)
{
    bool read_only = !(perm & BLK_PERM_WRITE);
    GError *err = NULL;
    BlockDriverState *bs;

    memset(img, 0, sizeof(*img));
    if (g_str_has_prefix(filename, "json:")) {
        const char *text = filename + strlen("json:");
        const char *format = NULL;
        JsonNode *node = json_parse_text(text, strlen(text), &err);
        if (!node) {
            error_prepend(&err, "Could not parse the JSON options: ");
            goto fail;
        }
        bs = open_options(node, false, fmt, read_only, force_share, &format,
                          &img->backing_off, &err);
        json_node_unref(node);
        if (!bs || !attach(img, bs, perm, format, &err)) {
            goto fail;
        }
        return true;
    }
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
    bs = open_tree(filename, drv, read_only, force_share, &img->backing_off,
                   &err);
    if (!bs || !attach(img, bs, perm, drv->format_name, &err)) {
        goto fail;
    }
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

bool coroutine_fn img_open_for_cmd(ImgImage *img, const char *filename,
                                   const char *fmt, bool image_opts,
                                   bool chain, uint64_t perm,
                                   bool force_share)
{
    GError *err = NULL;
    bool ok;

    if (image_opts) {
        ok = img_open_image_opts(img, filename, fmt, perm, force_share, &err);
        if (!ok) {
            error_prepend(&err, "Could not open '%s': ", filename);
        }
    } else if (chain) {
        ok = img_open_chain(img, filename, fmt, perm, force_share, &err);
    } else {
        ok = img_open(img, filename, fmt, perm, force_share, &err);
    }
    if (!ok) {
        img_error("%s", err->message);
        g_error_free(err);
    }
    return ok;
}
