/*
 * add-cow header: parsing (every field is untrusted), encoding, and image
 * creation.  Layout and rules: docs/specs/add-cow.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/drivers/add-cow.h"

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* A format field: up to 16 bytes, ending at the first NUL (V18 wrote
 * exactly 16 without one).  Only [a-z0-9-] is accepted, so nothing odd
 * reaches a driver lookup or a message. */
static bool parse_fmt(const uint8_t *p, char *out, const char *what,
                      GError **errp)
{
    size_t n = 0;
    while (n < ADD_COW_FMT_LEN && p[n]) {
        n++;
    }
    if (n == ADD_COW_FMT_LEN) {
        /* keep one byte for our own terminator: 16 chars cannot name
         * any driver blockd has */
        error_setg(errp, "add-cow: %s format name is not terminated", what);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!g_ascii_islower(p[i]) && !g_ascii_isdigit(p[i]) && p[i] != '-') {
            error_setg(errp, "add-cow: invalid %s format name", what);
            return false;
        }
    }
    for (size_t i = n; i < ADD_COW_FMT_LEN; i++) {
        if (p[i]) {
            error_setg(errp, "add-cow: %s format field is not zero-padded",
                       what);
            return false;
        }
    }
    memcpy(out, p, n);
    out[n] = 0;
    return true;
}

static bool check_name_field(uint32_t off, uint32_t len, uint32_t hsize,
                             const char *what, GError **errp)
{
    if (off < ADD_COW_HEADER_STRUCT || off > hsize - 2 || len == 0 ||
        len > ADD_COW_MAX_NAME || len > hsize - off) {
        error_setg(errp,
                   "add-cow: invalid %s file name location (offset %" PRIu32
                   ", length %" PRIu32 ", header size %" PRIu32 ")",
                   what, off, len, hsize);
        return false;
    }
    return true;
}

bool add_cow_header_parse_fixed(const uint8_t *buf, AddCowHeader *h,
                                GError **errp)
{
    memset(h, 0, sizeof(*h));
    if (le32(buf) != ADD_COW_MAGIC) {
        error_setg(errp, "Image is not in add-cow format");
        return false;
    }
    h->backing_name_off = le32(buf + 4);
    h->backing_name_len = le32(buf + 8);
    h->image_name_off = le32(buf + 12);
    h->image_name_len = le32(buf + 16);
    h->cluster_bits = le32(buf + 20);
    h->features = le64(buf + 24);
    h->compat_features = le64(buf + 32);
    h->header_size = le32(buf + 40);

    if (h->features & ~ADD_COW_FEATURES_KNOWN) {
        error_setg(errp, "add-cow: unsupported incompatible features 0x%" PRIx64,
                   h->features & ~ADD_COW_FEATURES_KNOWN);
        return false;
    }
    if (h->cluster_bits < ADD_COW_MIN_CLUSTER_BITS ||
        h->cluster_bits > ADD_COW_MAX_CLUSTER_BITS) {
        error_setg(errp, "add-cow: invalid cluster_bits %" PRIu32
                         " (must be %d to %d)",
                   h->cluster_bits, ADD_COW_MIN_CLUSTER_BITS,
                   ADD_COW_MAX_CLUSTER_BITS);
        return false;
    }
    if (h->header_size < ADD_COW_HEADER_STRUCT + 2 ||
        h->header_size > ADD_COW_MAX_HEADER_SIZE) {
        error_setg(errp, "add-cow: invalid header size %" PRIu32,
                   h->header_size);
        return false;
    }
    if (!check_name_field(h->image_name_off, h->image_name_len,
                          h->header_size, "image", errp)) {
        return false;
    }
    if ((h->backing_name_off == 0) != (h->backing_name_len == 0)) {
        error_setg(errp, "add-cow: backing file name offset and length "
                         "disagree");
        return false;
    }
    if (h->backing_name_off &&
        !check_name_field(h->backing_name_off, h->backing_name_len,
                          h->header_size, "backing", errp)) {
        return false;
    }
    if (h->backing_name_off) {
        /* the names may not overlap */
        uint64_t be = (uint64_t)h->backing_name_off + h->backing_name_len;
        uint64_t ie = (uint64_t)h->image_name_off + h->image_name_len;
        if (h->backing_name_off < ie && h->image_name_off < be) {
            error_setg(errp, "add-cow: file names overlap");
            return false;
        }
    }
    if (!parse_fmt(buf + 44, h->backing_fmt, "backing", errp) ||
        !parse_fmt(buf + 60, h->image_fmt, "image", errp)) {
        return false;
    }
    if (!h->image_fmt[0]) {
        error_setg(errp, "add-cow: image format is empty");
        return false;
    }
    if (!h->backing_name_off && h->backing_fmt[0]) {
        error_setg(errp, "add-cow: backing format without a backing file");
        return false;
    }
    if (h->backing_name_off && !h->backing_fmt[0]) {
        /* never probe: a format must be recorded */
        error_setg(errp, "add-cow: backing file without a backing format");
        return false;
    }
    return true;
}

static char *get_name(const uint8_t *buf, uint32_t off, uint32_t len,
                      const char *what, GError **errp)
{
    if (memchr(buf + off, 0, len)) {
        error_setg(errp, "add-cow: %s file name contains a NUL byte", what);
        return NULL;
    }
    return g_strndup((const char *)buf + off, len);
}

bool add_cow_header_parse_names(const uint8_t *buf, size_t len,
                                AddCowHeader *h, GError **errp)
{
    if (len < h->header_size) {
        error_setg(errp, "add-cow: header is truncated");
        return false;
    }
    h->image_name = get_name(buf, h->image_name_off, h->image_name_len,
                             "image", errp);
    if (!h->image_name) {
        return false;
    }
    if (h->backing_name_off) {
        h->backing_name = get_name(buf, h->backing_name_off,
                                   h->backing_name_len, "backing", errp);
        if (!h->backing_name) {
            g_clear_pointer(&h->image_name, g_free);
            return false;
        }
    }
    return true;
}

void add_cow_header_clear(AddCowHeader *h)
{
    g_free(h->backing_name);
    g_free(h->image_name);
    memset(h, 0, sizeof(*h));
}

uint8_t *add_cow_header_encode(const AddCowHeader *h)
{
    uint8_t *buf = g_malloc0(h->header_size);
    put32(buf, ADD_COW_MAGIC);
    put32(buf + 4, h->backing_name_off);
    put32(buf + 8, h->backing_name_len);
    put32(buf + 12, h->image_name_off);
    put32(buf + 16, h->image_name_len);
    put32(buf + 20, h->cluster_bits);
    put64(buf + 24, h->features);
    put64(buf + 32, h->compat_features);
    put32(buf + 40, h->header_size);
    memcpy(buf + 44, h->backing_fmt, strnlen(h->backing_fmt, 15));
    memcpy(buf + 60, h->image_fmt, strnlen(h->image_fmt, 15));
    if (h->backing_name) {
        memcpy(buf + h->backing_name_off, h->backing_name,
               h->backing_name_len);
    }
    memcpy(buf + h->image_name_off, h->image_name, h->image_name_len);
    return buf;
}

uint64_t add_cow_clusters(uint64_t size, uint32_t cluster_bits)
{
    return (size >> cluster_bits) +
           ((size & ((UINT64_C(1) << cluster_bits) - 1)) != 0);
}

uint64_t add_cow_bitmap_bytes(uint64_t size, uint32_t cluster_bits)
{
    uint64_t cs = UINT64_C(1) << cluster_bits;
    uint64_t bytes = (add_cow_clusters(size, cluster_bits) + 7) / 8;
    return (bytes + cs - 1) & ~(cs - 1);
}

char *add_cow_resolve(const char *meta_filename, const char *name)
{
    if (g_path_is_absolute(name) || !meta_filename || !meta_filename[0] ||
        !strncmp(meta_filename, "json:", 5)) {
        return g_strdup(name);
    }
    g_autofree char *dir = g_path_get_dirname(meta_filename);
    return g_build_filename(dir, name, NULL);
}

/* ---- creation ---- */

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) == 0 && stat(b, &sb) == 0) {
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    }
    return !strcmp(a, b);
}

/* Open `path` with format `fmt` (over the file protocol), writable. */
static BlockDriverState *coroutine_fn open_image(const char *path,
                                                 const char *fmt,
                                                 GError **errp)
{
    g_autofree char *opts = NULL;
    g_autofree char *esc = NULL;
    GString *g = g_string_new(NULL);
    /* keyval: a comma in a value is written twice */
    for (const char *p = path; *p; p++) {
        g_string_append_c(g, *p);
        if (*p == ',') {
            g_string_append_c(g, ',');
        }
    }
    esc = g_string_free(g, FALSE);
    opts = g_strdup_printf("driver=%s,file.driver=file,file.filename=%s", fmt,
                           esc);
    return bdrv_co_open_keyval(opts, errp);
}

int coroutine_fn add_cow_co_create_on_node(BlockDriverState *meta,
                                           const AddCowCreateParams *p,
                                           GError **errp)
{
    uint64_t cs = p->cluster_size ? p->cluster_size : 65536;
    AddCowHeader h;
    g_autofree uint8_t *buf = NULL;
    int ret;

    memset(&h, 0, sizeof(h));
    if (cs & (cs - 1) || cs < (1u << ADD_COW_MIN_CLUSTER_BITS) ||
        cs > (1u << ADD_COW_MAX_CLUSTER_BITS)) {
        error_setg(errp, "Cluster size must be a power of two between %d "
                         "and %dk",
                   1 << ADD_COW_MIN_CLUSTER_BITS,
                   1 << (ADD_COW_MAX_CLUSTER_BITS - 10));
        return -EINVAL;
    }
    if (!p->image_file || !p->image_file[0]) {
        error_setg(errp, "add-cow: image_file is required");
        return -EINVAL;
    }
    const char *ifmt = p->image_fmt ? p->image_fmt : "raw";
    const char *bfmt = p->backing_fmt;
    if (!bdrv_find_format(ifmt) || !strcmp(ifmt, "add-cow") ||
        strlen(ifmt) > 15) {
        error_setg(errp, "add-cow: unknown or unusable image format '%s'",
                   ifmt);
        return -EINVAL;
    }
    h.cluster_bits = (uint32_t)__builtin_ctzll(cs);
    h.header_size = (uint32_t)MAX(cs, 4096);
    size_t ilen = strlen(p->image_file);
    size_t blen = p->backing_file ? strlen(p->backing_file) : 0;
    if (p->backing_file && !blen) {
        error_setg(errp, "add-cow: empty backing file name");
        return -EINVAL;
    }
    if (ilen > ADD_COW_MAX_NAME || blen > ADD_COW_MAX_NAME ||
        ADD_COW_HEADER_STRUCT + ilen + blen > h.header_size) {
        error_setg(errp, "add-cow: file names too long for the header");
        return -EINVAL;
    }
    const char *mname = meta->filename;
    g_autofree char *ipath = add_cow_resolve(mname, p->image_file);
    g_autofree char *bpath =
        p->backing_file ? add_cow_resolve(mname, p->backing_file) : NULL;
    if (same_file(ipath, mname) || (bpath && (same_file(ipath, bpath) ||
                                              same_file(bpath, mname)))) {
        error_setg(errp, "add-cow: the image, backing and metadata files "
                         "must be different files");
        return -EINVAL;
    }
    if (bpath) {
        if (!bfmt) {
            bfmt = bdrv_probe_format(bpath);
        }
        if (!bdrv_find_format(bfmt) || !strcmp(bfmt, "add-cow") ||
            strlen(bfmt) > 15) {
            error_setg(errp, "add-cow: unknown or unusable backing format "
                             "'%s'", bfmt);
            return -EINVAL;
        }
        g_strlcpy(h.backing_fmt, bfmt, sizeof(h.backing_fmt));
        h.backing_name_off = ADD_COW_HEADER_STRUCT;
        h.backing_name_len = (uint32_t)blen;
        h.backing_name = (char *)p->backing_file;
    } else {
        h.compat_features = ADD_COW_COMPAT_ALL_ALLOCATED;
    }
    g_strlcpy(h.image_fmt, ifmt, sizeof(h.image_fmt));
    h.image_name_off = (uint32_t)(ADD_COW_HEADER_STRUCT + blen);
    h.image_name_len = (uint32_t)ilen;
    h.image_name = (char *)p->image_file;

    /* The image file must exist; size it (never shrinking silently). */
    BlockDriverState *img = open_image(ipath, ifmt, errp);
    if (!img) {
        error_prepend(errp, "Could not open image file: ");
        return -ENOENT;
    }
    BlockBackend *iblk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                     BLK_PERM_RESIZE,
                                 BLK_PERM_ALL);
    ret = blk_insert_bs(iblk, img, errp);
    bdrv_unref(img);
    if (ret < 0) {
        blk_unref(iblk);
        return ret;
    }
    int64_t cur = blk_getlength(iblk);
    uint64_t size = p->has_size ? p->size : (uint64_t)MAX(cur, 0);
    if (cur < 0) {
        error_setg_errno(errp, (int)-cur, "Could not get image file size");
        blk_unref(iblk);
        return (int)cur;
    }
    if (size > (uint64_t)BDRV_MAX_LENGTH ||
        add_cow_bitmap_bytes(size, h.cluster_bits) > ADD_COW_MAX_BITMAP_BYTES) {
        error_setg(errp, "add-cow: image size too large");
        blk_unref(iblk);
        return -EFBIG;
    }
    if (size < (uint64_t)cur) {
        error_setg(errp, "add-cow: the image file (%" PRId64 " bytes) is "
                         "larger than size %" PRIu64 "; refusing to shrink it",
                   cur, size);
        blk_unref(iblk);
        return -EINVAL;
    }

    BlockBackend *mblk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                     BLK_PERM_RESIZE,
                                 BLK_PERM_ALL);
    ret = blk_insert_bs(mblk, meta, errp);
    if (ret < 0) {
        goto out;
    }
    /* An empty file first, so no stale bitmap bits survive. */
    ret = blk_co_truncate(mblk, 0, false, PREALLOC_MODE_OFF, 0, errp);
    if (ret < 0) {
        goto out;
    }
    ret = blk_co_truncate(mblk,
                          (int64_t)(h.header_size +
                                    add_cow_bitmap_bytes(size, h.cluster_bits)),
                          false, PREALLOC_MODE_OFF, 0, errp);
    if (ret < 0) {
        goto out;
    }
    buf = add_cow_header_encode(&h);
    ret = blk_co_pwrite(mblk, 0, h.header_size, buf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write add-cow header");
        goto out;
    }
    if (size != (uint64_t)cur) {
        ret = blk_co_truncate(iblk, (int64_t)size, false, PREALLOC_MODE_OFF, 0,
                              errp);
        if (ret < 0) {
            goto out;
        }
    }
    ret = blk_co_flush(iblk);
    if (ret == 0) {
        ret = blk_co_flush(mblk);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not flush the new image");
    }
out:
    blk_unref(mblk);
    blk_unref(iblk);
    return ret;
}

int coroutine_fn add_cow_co_create_image(const char *filename,
                                         const AddCowCreateParams *p,
                                         GError **errp)
{
    BlockDriverState *file = bdrv_co_create_empty_file(filename, errp);
    if (!file) {
        return -EIO;
    }
    int ret = add_cow_co_create_on_node(file, p, errp);
    bdrv_unref(file);
    return ret;
}

int coroutine_fn add_cow_co_create(BlockdevCreateOptions *opts, GError **errp)
{
    BlockdevCreateOptionsAddCow *a = &opts->u.add_cow;
    AddCowCreateParams p = {
        .has_size = a->has_size,
        .size = a->size,
        .image_file = a->image_file,
        .image_fmt = a->has_image_fmt ? BlockdevDriver_str(a->image_fmt)
                                      : NULL,
        .backing_file = a->has_backing_file ? a->backing_file : NULL,
        .backing_fmt = a->has_backing_fmt ? BlockdevDriver_str(a->backing_fmt)
                                          : NULL,
        .cluster_size = a->has_cluster_size ? a->cluster_size : 0,
    };
    if (a->has_cluster_size && a->cluster_size == 0) {
        p.cluster_size = 1; /* refused by the checks */
    }
    BlockDriverState *file = bdrv_co_open_create_file(a->file, errp);
    if (!file) {
        return -ENOENT;
    }
    int ret = add_cow_co_create_on_node(file, &p, errp);
    bdrv_unref(file);
    return ret;
}
