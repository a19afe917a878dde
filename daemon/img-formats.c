/*
 * The formats blockd-img knows: how to recognise each by its first bytes
 * and how to create one.  A new format is one more entry in `formats`.
 *
 * The -o option lists are in the order qemu-img 7.2 prints them in its
 * "Formatting ..." line (not alphabetical: that of QEMU's option tables).
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "daemon/img.h"

/* ---- raw ---- */

static int raw_probe(const uint8_t *buf, size_t len)
{
    return 1; /* anything is a raw image, as a last resort */
}

static const ImgCreateOpt raw_create_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", IMG_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", NULL, true },
    { "nocow", IMG_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
      NULL, true },
    { "extent_size_hint", IMG_OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL, true },
    { NULL, 0, NULL, NULL, false },
};

/* The file protocol and qcow2 word a bad mode differently in QEMU. */
static bool parse_prealloc(const char *v, bool qapi_style, PreallocMode *out,
                           GError **errp)
{
    int m = v ? PreallocMode_parse(v) : PREALLOC_MODE_OFF;

    if (m < 0) {
        if (qapi_style) {
            error_setg(errp,
                       "Parameter 'preallocation' does not accept value '%s'",
                       v);
        } else {
            error_setg(errp, "invalid parameter value: %s", v);
        }
        return false;
    }
    *out = m;
    return true;
}

/* QemuOpts booleans as qemu-img accepts them (validated before). */
static bool opt_on(const ImgCreateArgs *a, const char *name)
{
    const char *v = g_hash_table_lookup(a->opts, name);
    return v && (!strcmp(v, "on") || !strcmp(v, "yes") ||
                 !strcmp(v, "true") || !strcmp(v, "y"));
}

static int coroutine_fn raw_create(const ImgCreateArgs *a, GError **errp)
{
    const BlockDriver *fdrv = bdrv_find_driver(BLOCKDEV_DRIVER_FILE);
    BlockdevCreateOptions co;
    PreallocMode prealloc;

    if (!parse_prealloc(g_hash_table_lookup(a->opts, "preallocation"), false,
                        &prealloc, errp)) {
        return -EINVAL;
    }
    if (!fdrv || !fdrv->bdrv_co_create) {
        error_setg(errp, "The file driver is not available");
        return -ENOTSUP;
    }
    memset(&co, 0, sizeof(co));
    co.driver = BLOCKDEV_DRIVER_FILE;
    co.u.file.filename = (char *)a->filename;
    /* The file protocol keeps whole sectors, as QEMU's does. */
    co.u.file.size = (a->size + BDRV_SECTOR_SIZE - 1) & ~(BDRV_SECTOR_SIZE - 1);
    co.u.file.has_preallocation = true;
    co.u.file.preallocation = prealloc;
    if (g_hash_table_lookup(a->opts, "nocow")) {
        co.u.file.has_nocow = true;
        co.u.file.nocow = opt_on(a, "nocow");
    }
    const char *hint = g_hash_table_lookup(a->opts, "extent_size_hint");
    if (hint) {
        uint64_t v = 0;
        img_strtosz(hint, &v); /* validated when parsing -o */
        co.u.file.has_extent_size_hint = true;
        co.u.file.extent_size_hint = v;
    }
    return fdrv->bdrv_co_create(&co, errp);
}

/* ---- qcow2 ---- */

#define QCOW2_PROBE_MAGIC 0x514649fbu /* "QFI\xfb" */

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    /* QEMU probes a zero-padded 2 KiB buffer: magic and version >= 2. */
    uint8_t hdr[8] = { 0 };
    memcpy(hdr, buf, len < sizeof(hdr) ? len : sizeof(hdr));
    uint32_t magic = (uint32_t)hdr[0] << 24 | hdr[1] << 16 | hdr[2] << 8 |
                     hdr[3];
    uint32_t version = (uint32_t)hdr[4] << 24 | hdr[5] << 16 | hdr[6] << 8 |
                       hdr[7];
    return magic == QCOW2_PROBE_MAGIC && version >= 2 ? 100 : 0;
}

static const ImgCreateOpt qcow2_create_opts[] = {
    { "encryption", IMG_OPT_BOOL,
      "Encrypt the image with format 'aes'. (Deprecated in favor of "
      "encrypt.format=aes)", NULL },
    { "cluster_size", IMG_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "extended_l2", IMG_OPT_BOOL, "Extended L2 tables", "off" },
    { "preallocation", IMG_OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)",
      NULL },
    { "compression_type", IMG_OPT_STRING,
      "Compression method used for image cluster compression", "zlib" },
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", IMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", IMG_OPT_STRING, "Image format of the base image", NULL },
    { "compat", IMG_OPT_STRING,
      "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "data_file", IMG_OPT_STRING, "File name of an external data file",
      NULL },
    { "data_file_raw", IMG_OPT_BOOL,
      "The external data file must stay valid as a raw image", NULL },
    { "lazy_refcounts", IMG_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", IMG_OPT_NUMBER,
      "Width of a reference count entry in bits", "16" },
    { "nocow", IMG_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
      NULL, true },
    { "extent_size_hint", IMG_OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL, true },
    { NULL, 0, NULL, NULL, false },
};

static int coroutine_fn qcow2_create(const ImgCreateArgs *a, GError **errp)
{
    Qcow2CreateParams p = {
        /* Whole sectors, as QEMU's qcow2 rounds the requested size. */
        .size = (a->size + BDRV_SECTOR_SIZE - 1) & ~(BDRV_SECTOR_SIZE - 1),
        .version = 3,
        .refcount_bits = 16,
        .backing_file = a->backing_file,
        .backing_fmt = a->backing_fmt,
    };
    const char *v;

    if (opt_on(a, "encryption")) {
        error_setg(errp, "Encrypted images are not supported by blockd");
        return -ENOTSUP;
    }
    if (g_hash_table_lookup(a->opts, "data_file")) {
        error_setg(errp, "External data files are not supported");
        return -ENOTSUP;
    }
    if (opt_on(a, "extended_l2")) {
        error_setg(errp, "Extended L2 tables are not supported by blockd");
        return -ENOTSUP;
    }
    v = g_hash_table_lookup(a->opts, "compression_type");
    if (v && strcmp(v, "zlib") != 0) {
        if (Qcow2CompressionType_parse(v) < 0) {
            error_setg(errp, "Invalid parameter value for "
                             "'compression_type': '%s'", v);
        } else {
            error_setg(errp, "Compression type '%s' is not supported by "
                             "blockd", v);
        }
        return -EINVAL;
    }
    v = g_hash_table_lookup(a->opts, "compat");
    if (v) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
            p.version = 2;
        } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
            p.version = 3;
        } else {
            error_setg(errp, "Parameter 'version' does not accept value '%s'",
                       v);
            return -EINVAL;
        }
    }
    v = g_hash_table_lookup(a->opts, "cluster_size");
    p.cluster_size = 65536;
    if (v) {
        img_strtosz(v, &p.cluster_size); /* validated when parsing -o */
    }
    v = g_hash_table_lookup(a->opts, "refcount_bits");
    if (v) {
        p.refcount_bits = (int)g_ascii_strtoll(v, NULL, 0);
    }
    p.lazy_refcounts = opt_on(a, "lazy_refcounts");
    if (!parse_prealloc(g_hash_table_lookup(a->opts, "preallocation"), true,
                        &p.preallocation, errp)) {
        return -EINVAL;
    }
    return qcow2_co_create_image(a->filename, &p, errp);
}

/* ---- the table ---- */

static const ImgFormat formats[] = {
    { "qcow2", qcow2_probe, qcow2_create_opts, qcow2_create },
    { "raw", raw_probe, raw_create_opts, raw_create },
    { "add-cow", img_add_cow_probe, img_add_cow_create_opts,
      img_add_cow_create },
};

const ImgFormat *img_find_format(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(formats); i++) {
        if (!strcmp(formats[i].name, name)) {
            return &formats[i];
        }
    }
    return NULL;
}

/* Probe through the file protocol, as QEMU does (a 2 KiB read). */
const char *coroutine_fn img_probe(const char *filename, bool force_share,
                                   GError **errp)
{
    BlockdevOptions o;
    memset(&o, 0, sizeof(o));
    o.driver = BLOCKDEV_DRIVER_FILE;
    o.u.file.filename = (char *)filename;
    o.has_read_only = true;
    o.read_only = true;
    if (force_share) {
        o.has_force_share = true;
        o.force_share = true;
    }

    BlockDriverState *bs = bdrv_co_open(&o, errp);
    if (!bs) {
        return NULL;
    }
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    if (blk_insert_bs(blk, bs, errp) < 0) {
        blk_unref(blk);
        bdrv_unref(bs);
        return NULL;
    }
    bdrv_unref(bs); /* the backend holds it now */

    uint8_t buf[2048] = { 0 };
    int64_t len = blk_getlength(blk);
    const char *best = "raw";
    if (len > 0) {
        int64_t n = len < (int64_t)sizeof(buf) ? len : (int64_t)sizeof(buf);
        int ret = blk_co_pread(blk, 0, n, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read image for "
                                         "determining its format");
            blk_unref(blk);
            return NULL;
        }
        int best_score = 0;
        for (size_t i = 0; i < G_N_ELEMENTS(formats); i++) {
            int score = formats[i].probe(buf, sizeof(buf));
            if (score > best_score) {
                best_score = score;
                best = formats[i].name;
            }
        }
    }
    blk_unref(blk);
    return best;
}
