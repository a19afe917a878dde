/*
 * qcow2 format driver: open/close, header and extensions, options, and the
 * request entry points (which hand over to qcow2-cluster.c).
 *
 * The header comes from an untrusted file: every field is validated before
 * it sizes an allocation or locates a table.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <unistd.h>

#include "block/drivers/qcow2.h"
#include "block/dirty-bitmap.h"
#include "block/drivers/qcow2-bitmap.h"
#include "qapi/qapi-events.h"

#define DEFAULT_L2_CACHE_MAX (32 * 1024 * 1024)
#define MIN_L2_CACHE_TABLES 2
#define MIN_RC_CACHE_TABLES 4
#define DEFAULT_CACHE_CLEAN_INTERVAL 600

static const struct {
    uint8_t type, bit;
    const char *name;
} feature_names[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

/* ---- corruption and overlap checks ---- */

int qcow2_signal_corruption(BlockDriverState *bs, bool fatal, int64_t offset,
                            int64_t size, const char *fmt, ...)
{
    BDRVQcow2State *s = bs->opaque;
    if (s->corrupt_fatal) {
        return -EIO; /* reported once */
    }
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (fatal) {
        error_report("Marking image as corrupt: %s; further corruption events "
                     "will be suppressed",
                     msg);
    } else {
        error_report("qcow2: %s; further non-fatal corruption events will be "
                     "suppressed",
                     msg);
    }
    /* device is "" for a node without a BlockBackend name, as in qsd */
    qapi_event_send_block_image_corrupted("", true, bs->node_name,
                                          msg, offset >= 0, offset, size >= 0,
                                          size, fatal);
    if (fatal) {
        s->corrupt_fatal = true;
        s->incompat |= QCOW2_INCOMPAT_CORRUPT;
        if (s->version >= 3 && s->writable && in_coroutine()) {
            /* Only the feature field: the rest of the header is not to be
             * trusted to be rewritten now. */
            uint8_t buf[8];
            qcow2_put_be64(buf, s->incompat);
            if (bdrv_co_pwrite(bs->file, 72, 8, buf, 0) == 0) {
                bdrv_co_flush(bs->file->bs);
            }
        }
    }
    return -EIO;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
                           uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

int qcow2_pre_write_overlap_check(BlockDriverState *bs, int ign,
                                  int64_t offset, int64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    int chk = s->overlap_check & ~ign;
    uint64_t off = (uint64_t)offset, len = (uint64_t)size;
    const char *what = NULL;
    if (!chk || size <= 0) {
        return 0;
    }
    if ((chk & QCOW2_OL_MAIN_HEADER) && off < s->cluster_size) {
        what = "qcow2_header";
    } else if ((chk & QCOW2_OL_ACTIVE_L1) &&
               ranges_overlap(off, len, s->l1_table_offset,
                              (uint64_t)s->l1_size * 8)) {
        what = "active L1 table";
    } else if ((chk & QCOW2_OL_REFCOUNT_TABLE) &&
               ranges_overlap(off, len, s->reftable_offset,
                              (uint64_t)s->reftable_clusters
                                  << s->cluster_bits)) {
        what = "refcount table";
    } else if ((chk & QCOW2_OL_SNAPSHOT_TABLE) &&
               ranges_overlap(off, len, s->snapshots_offset,
                              s->snapshots_size)) {
        what = "snapshot table";
    } else if ((chk & QCOW2_OL_BITMAP_DIRECTORY) &&
               ranges_overlap(off, len, s->bitmap_dir_offset,
                              s->bitmap_dir_size)) {
        what = "bitmap directory";
    }
    if (!what && (chk & QCOW2_OL_INACTIVE_L1)) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            if (ranges_overlap(off, len, s->snapshots[i].l1_table_offset,
                               (uint64_t)s->snapshots[i].l1_size * 8)) {
                what = "inactive L1 table";
                break;
            }
        }
    }
    if (!what && (chk & QCOW2_OL_ACTIVE_L2)) {
        for (uint32_t i = 0; i < s->l1_size; i++) {
            uint64_t l2 = s->l1_table[i] & L1E_OFFSET_MASK;
            if (l2 && ranges_overlap(off, len, l2, s->cluster_size)) {
                what = "active L2 table";
                break;
            }
        }
    }
    if (!what && (chk & QCOW2_OL_REFCOUNT_BLOCK) &&
        qcow2_overlaps_refblock(s, off, len)) {
        what = "refcount block";
    }
    if (!what) {
        return 0;
    }
    return qcow2_signal_corruption(
        bs, true, offset, size,
        "Preventing invalid write on metadata (overlaps with %s)", what);
}

/* ---- header ---- */

static size_t put_ext(uint8_t *buf, size_t pos, size_t cap, uint32_t type,
                      const void *data, uint32_t len)
{
    size_t need = 8 + ROUND_UP((size_t)len, 8);
    if (pos + need > cap) {
        return 0;
    }
    qcow2_put_be32(buf + pos, type);
    qcow2_put_be32(buf + pos + 4, len);
    if (len) {
        memcpy(buf + pos + 8, data, len);
    }
    memset(buf + pos + 8 + len, 0, need - 8 - len);
    return need;
}

/* Build the first cluster: header, extensions, backing file name.
 * Returns the used length or -errno. */
int64_t qcow2_build_header(BDRVQcow2State *s, uint8_t *buf, size_t cap)
{
    memset(buf, 0, cap);
    uint32_t hlen = s->version >= 3 ? QCOW2_V3_HEADER_LENGTH
                                    : QCOW2_V2_HEADER_LENGTH;
    qcow2_put_be32(buf, QCOW_MAGIC);
    qcow2_put_be32(buf + 4, (uint32_t)s->version);
    qcow2_put_be32(buf + 20, (uint32_t)s->cluster_bits);
    qcow2_put_be64(buf + 24, s->size);
    qcow2_put_be32(buf + 32, 0);
    qcow2_put_be32(buf + 36, s->l1_size);
    qcow2_put_be64(buf + 40, s->l1_table_offset);
    qcow2_put_be64(buf + 48, s->reftable_offset);
    qcow2_put_be32(buf + 56, s->reftable_clusters);
    qcow2_put_be32(buf + 60, s->nb_snapshots);
    qcow2_put_be64(buf + 64, s->snapshots_offset);
    if (s->version >= 3) {
        qcow2_put_be64(buf + 72, s->incompat);
        qcow2_put_be64(buf + 80, s->compat);
        qcow2_put_be64(buf + 88, s->autoclear);
        qcow2_put_be32(buf + 96, (uint32_t)s->refcount_order);
        qcow2_put_be32(buf + 100, hlen);
        buf[104] = s->compression_type;
    }
    size_t pos = hlen, n;
    if (s->backing_format) {
        n = put_ext(buf, pos, cap, QCOW2_EXT_BACKING_FORMAT, s->backing_format,
                    (uint32_t)strlen(s->backing_format));
        if (!n) {
            return -ENOSPC;
        }
        pos += n;
    }
    /* As QEMU: no feature table with clusters of 4 KiB and less (it
     * would leave little room for the bitmaps extension and backing
     * file name). */
    if (s->version >= 3 && s->cluster_size > 4096) {
        uint8_t table[G_N_ELEMENTS(feature_names) * 48];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < G_N_ELEMENTS(feature_names); i++) {
            table[i * 48] = feature_names[i].type;
            table[i * 48 + 1] = feature_names[i].bit;
            strncpy((char *)table + i * 48 + 2, feature_names[i].name, 46);
        }
        n = put_ext(buf, pos, cap, QCOW2_EXT_FEATURE_TABLE, table,
                    sizeof(table));
        if (!n) {
            return -ENOSPC;
        }
        pos += n;
    }
    for (guint i = 0; s->extensions && i < s->extensions->len; i++) {
        Qcow2Extension *e = g_ptr_array_index(s->extensions, i);
        n = put_ext(buf, pos, cap, e->type, e->data, e->len);
        if (!n) {
            return -ENOSPC;
        }
        pos += n;
    }
    if (pos + 8 > cap) {
        return -ENOSPC;
    }
    pos += 8; /* end of extensions (zeroes) */
    if (s->backing_file) {
        size_t bl = strlen(s->backing_file);
        if (pos + bl > cap) {
            return -ENOSPC;
        }
        memcpy(buf + pos, s->backing_file, bl);
        qcow2_put_be64(buf + 8, pos);
        qcow2_put_be32(buf + 16, (uint32_t)bl);
        pos += bl;
    }
    return (int64_t)pos;
}

int coroutine_fn qcow2_update_header(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    size_t cap = s->cluster_size;
    uint8_t *buf = blk_memalign(4096, cap);
    int64_t used = qcow2_build_header(s, buf, cap);
    int ret;
    if (used < 0) {
        ret = (int)used;
    } else {
        int64_t len = ROUND_UP(used, 512);
        ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_MAIN_HEADER, 0, len);
        if (ret == 0) {
            ret = bdrv_co_pwrite(bs->file, 0, len, buf, 0);
        }
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
    }
    blk_vfree(buf);
    return ret;
}

/*
 * block-stream / block-commit changed the backing child: record the new
 * backing file name and format (NULL: none) in the header.  The whole
 * header cluster is rebuilt from the state and written in one request,
 * so the image holds either the old or the new name; if the new header
 * does not fit or cannot be written, the old state is put back.
 */
static int coroutine_fn qcow2_co_change_backing_file(BlockDriverState *bs,
                                                     const char *backing_file,
                                                     const char *backing_fmt)
{
    BDRVQcow2State *s = bs->opaque;
    if (backing_file && strlen(backing_file) > QCOW2_MAX_BACKING_NAME) {
        return -EINVAL;
    }
    if (backing_fmt && strlen(backing_fmt) >= sizeof(bs->backing_format)) {
        return -EINVAL;
    }
    if (!backing_file && backing_fmt) {
        return -EINVAL; /* a format without a file means nothing */
    }
    if (bs->read_only) {
        return -EACCES;
    }
    co_mutex_lock(&s->lock);
    char *old_file = s->backing_file, *old_fmt = s->backing_format;
    s->backing_file = backing_file && *backing_file ? g_strdup(backing_file)
                                                    : NULL;
    s->backing_format = s->backing_file && backing_fmt ? g_strdup(backing_fmt)
                                                       : NULL;
    int ret = qcow2_update_header(bs);
    if (ret < 0) {
        g_free(s->backing_file);
        g_free(s->backing_format);
        s->backing_file = old_file;
        s->backing_format = old_fmt;
    } else {
        g_free(old_file);
        g_free(old_fmt);
        g_strlcpy(bs->backing_file, s->backing_file ? s->backing_file : "",
                  sizeof(bs->backing_file));
        g_strlcpy(bs->backing_format,
                  s->backing_format ? s->backing_format : "",
                  sizeof(bs->backing_format));
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/* Parse the header extensions in buf[start, end). */
static int parse_extensions(BlockDriverState *bs, const uint8_t *buf,
                            size_t start, size_t end, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    size_t pos = start;
    s->extensions = g_ptr_array_new();
    while (pos + 8 <= end) {
        uint32_t type = qcow2_be32(buf + pos);
        uint32_t len = qcow2_be32(buf + pos + 4);
        pos += 8;
        if (type == QCOW2_EXT_END) {
            return 0;
        }
        if (len > end - pos) {
            error_setg(errp, "Header extension too large");
            return -EINVAL;
        }
        const uint8_t *data = buf + pos;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len >= 32) {
                error_setg(errp, "ERROR: ext_backing_format: len=%u too large "
                                 "(>=%zu)",
                           len, (size_t)32);
                return -EINVAL;
            }
            g_free(s->backing_format);
            s->backing_format = g_strndup((const char *)data, len);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            break; /* read again on demand for error messages */
        case QCOW2_EXT_DATA_FILE:
            break; /* the incompatible bit refuses the image */
        default: {
            if (type == QCOW2_EXT_BITMAPS && len >= 24) {
                s->bitmap_dir_size = qcow2_be64(data + 8);
                s->bitmap_dir_offset = qcow2_be64(data + 16);
                if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
                    s->bitmap_dir_size = 0; /* stale: not metadata */
                }
            }
            Qcow2Extension *e = g_new0(Qcow2Extension, 1);
            e->type = type;
            e->len = len;
            e->data = g_memdup2(data, len);
            g_ptr_array_add(s->extensions, e);
            break;
        }
        }
        pos += ROUND_UP((size_t)len, 8);
    }
    return 0;
}

/* Name the unknown incompatible features from the image's feature table. */
static char *unknown_features(const uint8_t *buf, size_t start, size_t end,
                              uint64_t mask)
{
    GString *out = g_string_new(NULL);
    for (int bit = 0; bit < 64; bit++) {
        if (!(mask & (1ULL << bit))) {
            continue;
        }
        const char *name = NULL;
        char namebuf[47];
        size_t pos = start;
        while (!name && pos + 8 <= end) {
            uint32_t type = qcow2_be32(buf + pos);
            uint32_t len = qcow2_be32(buf + pos + 4);
            pos += 8;
            if (type == QCOW2_EXT_END || len > end - pos) {
                break;
            }
            if (type == QCOW2_EXT_FEATURE_TABLE) {
                for (uint32_t i = 0; i + 48 <= len; i += 48) {
                    if (buf[pos + i] == 0 && buf[pos + i + 1] == bit) {
                        memcpy(namebuf, buf + pos + i + 2, 46);
                        namebuf[46] = 0;
                        name = namebuf;
                        break;
                    }
                }
            }
            pos += ROUND_UP((size_t)len, 8);
        }
        if (out->len) {
            g_string_append(out, ", ");
        }
        if (name) {
            g_string_append(out, name);
        } else {
            g_string_append_printf(out, "Unknown incompatible feature: %" PRIx64,
                                   (uint64_t)1 << bit);
        }
    }
    return g_string_free(out, FALSE);
}

static int coroutine_fn read_snapshots(BlockDriverState *bs, int64_t flen,
                                       GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->nb_snapshots) {
        return 0;
    }
    s->snapshots = g_new0(Qcow2Snapshot, s->nb_snapshots);
    uint64_t pos = s->snapshots_offset;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t h[40];
        if (pos + 40 > (uint64_t)flen) {
            error_setg(errp, "Snapshot table is outside the image file");
            return -EINVAL;
        }
        int ret = bdrv_co_pread(bs->file, (int64_t)pos, 40, h, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read snapshot table");
            return ret;
        }
        uint16_t id_len = qcow2_be16(h + 12), name_len = qcow2_be16(h + 14);
        uint32_t extra = qcow2_be32(h + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
            error_setg(errp, "Too much extra metadata in snapshot table "
                             "entry %u",
                       i);
            return -EFBIG;
        }
        size_t vlen = (size_t)extra + id_len + name_len;
        if (pos + 40 + vlen > (uint64_t)flen) {
            error_setg(errp, "Snapshot table is outside the image file");
            return -EINVAL;
        }
        /* the whole entry, decoded as the snapshot code writes it */
        uint8_t *e = g_malloc(40 + vlen);
        memcpy(e, h, 40);
        ret = vlen ? bdrv_co_pread(bs->file, (int64_t)pos + 40,
                                   (int64_t)vlen, e + 40, 0)
                   : 0;
        if (ret < 0) {
            g_free(e);
            error_setg_errno(errp, -ret, "Failed to read snapshot table");
            return ret;
        }
        Qcow2Snapshot *sn = &s->snapshots[i];
        int64_t elen = qcow2_snapshot_decode(e, 40 + vlen, sn, NULL);
        g_free(e);
        if (elen < 0) {
            error_setg(errp, "Invalid snapshot table entry %u", i);
            return (int)elen;
        }
        pos = ROUND_UP(pos + 40 + vlen, 8);
        if (pos - s->snapshots_offset > 64 * 1024 * 1024) {
            error_setg(errp, "Snapshot table is too big");
            return -EFBIG;
        }
        if (qcow2_offset_into_cluster(s, sn->l1_table_offset) ||
            (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            error_setg(errp, "Snapshot L1 table offset invalid or table too "
                             "large (snapshot %u)",
                       i);
            return -EINVAL;
        }
    }
    s->snapshots_size = pos - s->snapshots_offset;
    return 0;
}

/* ---- options ---- */

static int parse_overlap(const BlockdevOptionsQcow2 *o)
{
    static const int template_of[] = {
        [QCOW2_OVERLAP_CHECK_MODE_NONE] = 0,
        [QCOW2_OVERLAP_CHECK_MODE_CONSTANT] = QCOW2_OL_CONSTANT,
        [QCOW2_OVERLAP_CHECK_MODE_CACHED] = QCOW2_OL_CACHED,
        [QCOW2_OVERLAP_CHECK_MODE_ALL] = QCOW2_OL_ALL,
    };
    if (!o->has_overlap_check || !o->overlap_check) {
        return QCOW2_OL_CACHED;
    }
    const Qcow2OverlapChecks *c = o->overlap_check;
    if (c->type == QTYPE_QSTRING) {
        return template_of[c->u.mode];
    }
    const Qcow2OverlapCheckFlags *f = &c->u.flags;
    int r = f->has_q_template ? template_of[f->q_template] : QCOW2_OL_CACHED;
#define FLAG(member, bit)                                                      \
    if (f->has_##member) {                                                     \
        r = f->member ? (r | (bit)) : (r & ~(bit));                            \
    }
    FLAG(main_header, QCOW2_OL_MAIN_HEADER)
    FLAG(active_l1, QCOW2_OL_ACTIVE_L1)
    FLAG(active_l2, QCOW2_OL_ACTIVE_L2)
    FLAG(refcount_table, QCOW2_OL_REFCOUNT_TABLE)
    FLAG(refcount_block, QCOW2_OL_REFCOUNT_BLOCK)
    FLAG(snapshot_table, QCOW2_OL_SNAPSHOT_TABLE)
    FLAG(inactive_l1, QCOW2_OL_INACTIVE_L1)
    FLAG(inactive_l2, QCOW2_OL_INACTIVE_L2)
    FLAG(bitmap_directory, QCOW2_OL_BITMAP_DIRECTORY)
#undef FLAG
    return r;
}

/* Cache sizes in bytes, as QEMU's read_cache_sizes(). */
static int cache_sizes(BDRVQcow2State *s, const BlockdevOptionsQcow2 *o,
                       uint64_t *l2, uint64_t *rc, GError **errp)
{
    uint64_t cs = s->cluster_size;
    uint64_t max_l2 = ROUND_UP(s->size, cs) / (cs / 8) ;
    max_l2 = ROUND_UP(MAX(max_l2, cs), cs);
    uint64_t min_rc = MIN_RC_CACHE_TABLES * cs;
    if (o->has_cache_size && o->cache_size < 0) {
        error_setg(errp, "cache-size must be non-negative");
        return -EINVAL;
    }
    if ((o->has_l2_cache_size && o->l2_cache_size < 0) ||
        (o->has_refcount_cache_size && o->refcount_cache_size < 0)) {
        error_setg(errp, "Cache sizes must be non-negative");
        return -EINVAL;
    }
    if (o->has_cache_size) {
        uint64_t total = (uint64_t)o->cache_size;
        if (o->has_l2_cache_size && o->has_refcount_cache_size) {
            error_setg(errp, "cache-size, l2-cache-size and "
                             "refcount-cache-size may not be set at the same "
                             "time");
            return -EINVAL;
        } else if (o->has_l2_cache_size) {
            if ((uint64_t)o->l2_cache_size > total) {
                error_setg(errp, "l2-cache-size may not exceed cache-size");
                return -EINVAL;
            }
            *l2 = (uint64_t)o->l2_cache_size;
            *rc = total - *l2;
        } else if (o->has_refcount_cache_size) {
            if ((uint64_t)o->refcount_cache_size > total) {
                error_setg(errp,
                           "refcount-cache-size may not exceed cache-size");
                return -EINVAL;
            }
            *rc = (uint64_t)o->refcount_cache_size;
            *l2 = total - *rc;
        } else {
            *l2 = MIN(max_l2, total > min_rc ? total - min_rc : 0);
            *rc = total - *l2;
        }
    } else {
        *l2 = o->has_l2_cache_size ? (uint64_t)o->l2_cache_size
                                   : MIN(max_l2, DEFAULT_L2_CACHE_MAX);
        *rc = o->has_refcount_cache_size ? (uint64_t)o->refcount_cache_size
                                         : min_rc;
    }
    if (o->has_l2_cache_entry_size) {
        int64_t e = o->l2_cache_entry_size;
        if (e < 512 || (uint64_t)e > cs || (e & (e - 1))) {
            error_setg(errp, "L2 cache entry size must be a power of two "
                             "between 512 and the cluster size (%" PRIu64 ")",
                       cs);
            return -EINVAL;
        }
    }
    /* Never more than the whole image's worth of L2 tables. */
    *l2 = MIN(*l2, max_l2);
    return 0;
}

/* ---- backing file ---- */

static char *backing_path(BlockDriverState *bs, const char *name)
{
    if (g_path_is_absolute(name) || !bs->file ||
        !strncmp(bs->file->bs->filename, "json:", 5) ||
        !bs->file->bs->filename[0] ||
        !strchr(bs->file->bs->filename, '/')) {
        /* QEMU's path_combine(): no directory part, the name as it is
         * ("base.qcow2", not "./base.qcow2") */
        return g_strdup(name);
    }
    g_autofree char *dir = g_path_get_dirname(bs->file->bs->filename);
    return g_build_filename(dir, name, NULL);
}

static int coroutine_fn open_backing(BlockDriverState *bs,
                                     const BlockdevOptionsQcow2 *o,
                                     GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (o->has_backing && o->backing) {
        const BlockdevRefOrNull *r = o->backing;
        if (r->type == QTYPE_QNULL) {
            return 0;
        }
        BlockdevRef ref;
        memset(&ref, 0, sizeof(ref));
        if (r->type == QTYPE_QSTRING) {
            ref.type = QTYPE_QSTRING;
            ref.u.reference = r->u.reference;
        } else {
            ref.type = QTYPE_QDICT;
            ref.u.definition = r->u.definition;
        }
        BdrvChild *c = bdrv_open_child(bs, &ref, "backing", BDRV_CHILD_COW,
                                       false, errp);
        return c ? 0 : -EINVAL;
    }
    if (!s->backing_file) {
        return 0;
    }
    g_autofree char *path = backing_path(bs, s->backing_file);
    const char *fmt = s->backing_format ? s->backing_format
                                        : bdrv_probe_format(path);
    GError *err = NULL;
    BlockdevOptions *bo = bdrv_format_on_file_options(fmt, path, &err);
    if (!bo) {
        error_setg(errp, "Could not open backing file: unknown format '%s'",
                   fmt);
        g_clear_error(&err);
        return -EINVAL;
    }
    BlockdevRef ref;
    memset(&ref, 0, sizeof(ref));
    ref.type = QTYPE_QDICT;
    ref.u.definition = *bo;
    BdrvChild *c =
        bdrv_open_child(bs, &ref, "backing", BDRV_CHILD_COW, false, &err);
    qapi_free_BlockdevOptions(bo);
    if (!c) {
        error_propagate(errp, err);
        error_prepend(errp, "Could not open backing file: ");
        return -EINVAL;
    }
    return 0;
}

/* ---- open / close ---- */

static gboolean cache_clean_timer(gpointer opaque)
{
    BlockDriverState *bs = opaque;
    BDRVQcow2State *s = bs->opaque;
    if (s->l2_cache) {
        qcow2_cache_clean_unused(s->l2_cache);
    }
    if (s->rc_cache) {
        qcow2_cache_clean_unused(s->rc_cache);
    }
    return G_SOURCE_CONTINUE;
}

static void qcow2_free_state(BDRVQcow2State *s)
{
    if (s->cache_clean_source) {
        g_source_remove(s->cache_clean_source);
        s->cache_clean_source = 0;
    }
    qcow2_cache_destroy(s->l2_cache);
    qcow2_cache_destroy(s->rc_cache);
    s->l2_cache = s->rc_cache = NULL;
    g_free(s->l1_table);
    s->l1_table = NULL;
    g_free(s->reftable);
    s->reftable = NULL;
    qcow2_snapshot_list_free(s->snapshots, s->nb_snapshots);
    s->snapshots = NULL;
    if (s->extensions) {
        for (guint i = 0; i < s->extensions->len; i++) {
            Qcow2Extension *e = g_ptr_array_index(s->extensions, i);
            g_free(e->data);
            g_free(e);
        }
        g_ptr_array_free(s->extensions, TRUE);
        s->extensions = NULL;
    }
    g_free(s->backing_file);
    g_free(s->backing_format);
    s->backing_file = s->backing_format = NULL;
}

static int coroutine_fn qcow2_do_open(BlockDriverState *bs,
                                      const BlockdevOptionsQcow2 *o,
                                      GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t h[QCOW2_V3_HEADER_LENGTH];
    int ret;

    int64_t flen = bdrv_getlength(bs->file->bs);
    if (flen < 0) {
        error_setg_errno(errp, (int)-flen, "Could not get the image size");
        return (int)flen;
    }
    if (flen < QCOW2_V2_HEADER_LENGTH) {
        error_setg(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    memset(h, 0, sizeof(h));
    ret = bdrv_co_pread(bs->file, 0, MIN(flen, (int64_t)sizeof(h)), h, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read qcow2 header");
        return ret;
    }
    if (qcow2_be32(h) != QCOW_MAGIC) {
        error_setg(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    s->version = (int)qcow2_be32(h + 4);
    if (s->version < 2 || s->version > 3) {
        error_setg(errp, "Unsupported qcow2 version %d", s->version);
        return -ENOTSUP;
    }
    s->cluster_bits = (int)qcow2_be32(h + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "Unsupported cluster size: 2^%" PRIu32,
                   qcow2_be32(h + 20));
        return -EINVAL;
    }
    s->cluster_size = 1ULL << s->cluster_bits;
    s->l2_bits = s->cluster_bits - 3;
    s->l2_size = 1ULL << s->l2_bits;
    s->size = qcow2_be64(h + 24);
    uint32_t crypt = qcow2_be32(h + 32);
    s->l1_size = qcow2_be32(h + 36);
    s->l1_table_offset = qcow2_be64(h + 40);
    s->reftable_offset = qcow2_be64(h + 48);
    s->reftable_clusters = qcow2_be32(h + 56);
    s->nb_snapshots = qcow2_be32(h + 60);
    s->snapshots_offset = qcow2_be64(h + 64);
    uint64_t backing_off = qcow2_be64(h + 8);
    uint32_t backing_len = qcow2_be32(h + 16);
    if (s->version == 2) {
        s->incompat = s->compat = s->autoclear = 0;
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_LENGTH;
        s->compression_type = 0;
    } else {
        s->incompat = qcow2_be64(h + 72);
        s->compat = qcow2_be64(h + 80);
        s->autoclear = qcow2_be64(h + 88);
        uint32_t order = qcow2_be32(h + 96);
        s->refcount_order = order > 64 ? 64 : (int)order; /* checked below */
        s->header_length = qcow2_be32(h + 100);
        if (s->header_length < 104) {
            error_setg(errp, "qcow2 header too short");
            return -EINVAL;
        }
        s->compression_type = s->header_length > 104 ? h[104] : 0;
    }
    if (s->header_length > s->cluster_size) {
        error_setg(errp, "qcow2 header exceeds cluster size");
        return -EINVAL;
    }

    /* The whole first cluster: extensions live there. */
    size_t hc = (size_t)MIN((uint64_t)flen, s->cluster_size);
    g_autofree uint8_t *hbuf = g_malloc0(s->cluster_size);
    ret = bdrv_co_pread(bs->file, 0, (int64_t)hc, hbuf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read qcow2 header");
        return ret;
    }
    size_t ext_end = s->cluster_size;
    if (backing_off && backing_off < ext_end) {
        ext_end = (size_t)backing_off;
    }
    if (s->header_length > ext_end) {
        ext_end = s->header_length;
    }

    uint64_t unknown = s->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        g_autofree char *names =
            unknown_features(hbuf, s->header_length, ext_end, unknown);
        error_setg(errp, "Unsupported qcow2 feature(s): %s", names);
        return -ENOTSUP;
    }
    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
        error_setg(errp, "Images with an external data file are not "
                         "supported");
        return -ENOTSUP;
    }
    if (s->incompat & QCOW2_INCOMPAT_EXTL2) {
        error_setg(errp, "Images with extended L2 entries (subclusters) are "
                         "not supported");
        return -ENOTSUP;
    }
    if (s->compression_type != 0) {
        error_setg(errp, "Unsupported compression type %u",
                   s->compression_type);
        return -ENOTSUP;
    }
    if ((s->incompat & QCOW2_INCOMPAT_COMPRESSION) &&
        s->compression_type == 0) {
        error_setg(errp, "qcow2: Compression type incompatible feature bit "
                         "must not be set when compression type is zlib");
        return -EINVAL;
    }
    if (crypt) {
        error_setg(errp, "Encrypted images are not supported");
        return -ENOTSUP;
    }
    if (s->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
        error_setg(errp, "Reference count entry width too large; may not "
                         "exceed 64 bits");
        return -EINVAL;
    }
    s->refcount_bits = 1 << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64
                          ? UINT64_MAX
                          : (1ULL << s->refcount_bits) - 1;
    s->refblock_bits = s->cluster_bits + 3 - s->refcount_order;

    ret = parse_extensions(bs, hbuf, s->header_length, ext_end, errp);
    if (ret < 0) {
        return ret;
    }
    if (backing_off) {
        if (backing_len > QCOW2_MAX_BACKING_NAME || backing_len == 0) {
            error_setg(errp, "Backing file name too long");
            return -EINVAL;
        }
        if (backing_off > (uint64_t)flen ||
            backing_len > (uint64_t)flen - backing_off) {
            error_setg(errp, "Invalid backing file offset");
            return -EINVAL;
        }
        char name[QCOW2_MAX_BACKING_NAME + 1];
        ret = bdrv_co_pread(bs->file, (int64_t)backing_off, backing_len, name,
                            0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read backing file name");
            return ret;
        }
        name[backing_len] = 0;
        s->backing_file = g_strdup(name);
    }

    /* Tables: aligned, inside the file, of sane size. */
    if (s->size > (1ULL << 62)) {
        error_setg(errp, "Image is too big");
        return -EFBIG;
    }
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "Active L1 table too large");
        return -EFBIG;
    }
    if (s->l1_size < qcow2_size_to_l1(s->cluster_bits, s->size)) {
        error_setg(errp, "L1 table is too small");
        return -EINVAL;
    }
    if (s->l1_size && (qcow2_offset_into_cluster(s, s->l1_table_offset) ||
                       s->l1_table_offset > (uint64_t)flen ||
                       (uint64_t)s->l1_size * 8 >
                           (uint64_t)flen - s->l1_table_offset)) {
        error_setg(errp, "Invalid L1 table offset");
        return -EINVAL;
    }
    if (((uint64_t)s->reftable_clusters << s->cluster_bits) >
        QCOW2_MAX_REFTABLE_BYTES) {
        error_setg(errp, "Reference count table too large");
        return -EFBIG;
    }
    if (!s->reftable_clusters ||
        qcow2_offset_into_cluster(s, s->reftable_offset) ||
        s->reftable_offset > (uint64_t)flen ||
        ((uint64_t)s->reftable_clusters << s->cluster_bits) >
            (uint64_t)flen - s->reftable_offset + s->cluster_size) {
        error_setg(errp, "Invalid reference count table offset");
        return -EINVAL;
    }
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "Too many snapshots");
        return -EINVAL;
    }
    if (s->nb_snapshots && qcow2_offset_into_cluster(s, s->snapshots_offset)) {
        error_setg(errp, "Invalid snapshot table offset");
        return -EINVAL;
    }

    bool want_write = !bs->read_only;
    if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && want_write) {
        error_setg(errp, "qcow2: Image is corrupt; cannot be opened "
                         "read/write");
        return -EACCES;
    }

    /* L1 table */
    s->l1_alloc = s->l1_size;
    s->l1_table = g_try_malloc0(MAX((size_t)s->l1_size * 8, 8));
    if (!s->l1_table) {
        error_setg(errp, "Could not allocate L1 table");
        return -ENOMEM;
    }
    if (s->l1_size) {
        ret = bdrv_co_pread(bs->file, (int64_t)s->l1_table_offset,
                            (int64_t)s->l1_size * 8, s->l1_table, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read L1 table");
            return ret;
        }
        for (uint32_t i = 0; i < s->l1_size; i++) {
            s->l1_table[i] = qcow2_be64(&s->l1_table[i]);
        }
    }
    ret = qcow2_refcount_init(bs, errp);
    if (ret < 0) {
        return ret;
    }
    ret = read_snapshots(bs, flen, errp);
    if (ret < 0) {
        return ret;
    }

    uint64_t l2_bytes, rc_bytes;
    ret = cache_sizes(s, o, &l2_bytes, &rc_bytes, errp);
    if (ret < 0) {
        return ret;
    }
    int l2_n = (int)MAX(l2_bytes / s->cluster_size, MIN_L2_CACHE_TABLES);
    int rc_n = (int)MAX(rc_bytes / s->cluster_size, MIN_RC_CACHE_TABLES);
    s->l2_cache = qcow2_cache_create(bs, l2_n, s->cluster_size,
                                     QCOW2_OL_ACTIVE_L2);
    s->rc_cache = qcow2_cache_create(bs, rc_n, s->cluster_size,
                                     QCOW2_OL_REFCOUNT_BLOCK);
    s->cache_clean_interval = o->has_cache_clean_interval
                                  ? o->cache_clean_interval
                                  : DEFAULT_CACHE_CLEAN_INTERVAL;
    if (s->cache_clean_interval < 0 ||
        s->cache_clean_interval > UINT_MAX) {
        error_setg(errp, "Cache clean interval too big");
        s->cache_clean_interval = 0;
        return -EINVAL;
    }
    if (s->cache_clean_interval > 0) {
        s->cache_clean_source = g_timeout_add_seconds(
            (guint)s->cache_clean_interval, cache_clean_timer, bs);
    }

    s->overlap_check = parse_overlap(o);
    s->lazy_refcounts = o->has_lazy_refcounts
                            ? o->lazy_refcounts
                            : !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
    if (s->lazy_refcounts && s->version < 3) {
        error_setg(errp, "Lazy refcounts require a qcow2 image with at least "
                         "qemu 1.1 compatibility level");
        return -EINVAL;
    }
    s->discard_passthrough =
        o->has_pass_discard_request ? o->pass_discard_request : true;
    s->fresh_start = ROUND_UP((uint64_t)flen, s->cluster_size);
    s->writable = want_write;

    bool rebuilt = false;
    if (want_write && (s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        /* Closed uncleanly with lazy refcounts: the refcounts on disk
         * cannot be trusted.  Recount from the L1/L2 tables first. */
        rebuilt = true;
        ret = qcow2_rebuild_refcounts(bs, errp);
        if (ret < 0) {
            error_prepend(errp, "qcow2: image is dirty (lazy refcounts): ");
            return ret;
        }
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        ret = qcow2_update_header(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not update qcow2 header");
            return ret;
        }
    }

    /* We maintain the bitmaps (qcow2-bitmap.c), nothing else the
     * autoclear bits vouch for.  A refcount rebuild does not count bitmap
     * clusters, so it drops the bitmaps too. */
    uint64_t keep = rebuilt ? 0 : QCOW2_AUTOCLEAR_BITMAPS;
    if (want_write && (s->autoclear & ~keep)) {
        s->autoclear &= keep;
        if (s->version >= 3) {
            ret = qcow2_update_header(bs);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Could not update qcow2 header");
                return ret;
            }
        }
    }
    return 0;
}

static int coroutine_fn qcow2_open(BlockDriverState *bs,
                                   const BlockdevOptions *opts, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const BlockdevOptionsQcow2 *o = &opts->u.qcow2;
    s->bs = bs;
    co_mutex_init(&s->lock);
    LIST_INIT(&s->allocs);

    if (o->has_data_file && o->data_file) {
        if (o->data_file->type == QTYPE_QSTRING &&
            !bdrv_lookup_bs(o->data_file->u.reference,
                            o->data_file->u.reference, errp)) {
            return -ENOENT;
        }
        error_setg(errp, "External data files are not supported");
        return -ENOTSUP;
    }
    bs->file = bdrv_open_child(bs, o->file, "file",
                               BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false,
                               errp);
    if (!bs->file) {
        return -EINVAL;
    }
    int ret = qcow2_do_open(bs, o, errp);
    if (ret < 0) {
        qcow2_free_state(s);
        return ret;
    }
    ret = open_backing(bs, o, errp);
    if (ret < 0) {
        qcow2_free_state(s);
        return ret;
    }
    bs->total_bytes = (int64_t)s->size;
    /* Persistent dirty bitmaps (qcow2-bitmap.c): a writable open marks
     * them in use here, before any write. */
    ret = qcow2_bitmaps_load(bs, errp);
    if (ret < 0) {
        qcow2_free_state(s);
        return ret;
    }
    bs->supported_write_flags = BDRV_REQ_WRITE_COMPRESSED;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    if (s->backing_file) {
        g_strlcpy(bs->backing_file, s->backing_file, sizeof(bs->backing_file));
    }
    if (s->backing_format) {
        g_strlcpy(bs->backing_format, s->backing_format,
                  sizeof(bs->backing_format));
    }
    if (strncmp(bs->file->bs->filename, "json:", 5) &&
        !(o->has_backing && o->backing && o->backing->type == QTYPE_QDICT)) {
        g_strlcpy(bs->filename, bs->file->bs->filename, sizeof(bs->filename));
    }
    return 0;
}

static void qcow2_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    if (s->writable && in_coroutine() && s->l2_cache) {
        GError *err = NULL;
        if (qcow2_bitmaps_store(bs, &err) < 0) {
            warn_report("qcow2: could not store bitmaps of '%s': %s",
                        bs->node_name, err->message);
            g_error_free(err);
        }
    }
    /* The core flushed already, unless nothing went through the request
     * path (metadata-only changes such as preallocation). */
    if (s->writable && in_coroutine() && s->l2_cache &&
        (qcow2_cache_has_dirty(s->l2_cache) ||
         qcow2_cache_has_dirty(s->rc_cache))) {
        int ret = qcow2_cache_write(bs, s->l2_cache);
        if (ret == 0) {
            ret = qcow2_cache_write(bs, s->rc_cache);
        }
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            warn_report("qcow2: could not write back metadata of '%s' on "
                        "close: %s",
                        bs->node_name, g_strerror(-ret));
        }
    }
    qcow2_free_state(s);
}

static void qcow2_refresh_limits(BlockDriverState *bs, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    bs->bl.pdiscard_alignment = (int64_t)s->cluster_size;
    bs->bl.pwrite_zeroes_alignment = (int64_t)s->cluster_size;
    bs->bl.opt_transfer = (int64_t)s->cluster_size;
}

/* ---- requests ---- */

static int coroutine_fn qcow2_co_preadv(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, IOVector *qiov,
                                        BdrvRequestFlags flags)
{
    return qcow2_co_preadv_data(bs, (uint64_t)offset, (uint64_t)bytes, qiov,
                                0);
}

static int coroutine_fn qcow2_co_pwritev(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, IOVector *qiov,
                                         BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->writable || s->corrupt_fatal) {
        return s->corrupt_fatal ? -EIO : -EACCES;
    }
    if (!(flags & BDRV_REQ_WRITE_COMPRESSED)) {
        return qcow2_co_pwritev_data(bs, (uint64_t)offset, (uint64_t)bytes,
                                     qiov, 0);
    }
    /* Compressed: whole clusters (the last one may end at the disk end). */
    uint64_t off = (uint64_t)offset, left = (uint64_t)bytes;
    size_t qoff = 0;
    if (qcow2_offset_into_cluster(s, off)) {
        return -EINVAL;
    }
    while (left > 0) {
        uint64_t n = MIN(left, s->cluster_size);
        if (n < s->cluster_size && off + n != s->size) {
            return -EINVAL;
        }
        IOVector sub;
        qiov_init(&sub, qiov->niov);
        qiov_concat(&sub, qiov, qoff, n);
        int ret = qcow2_co_pwrite_compressed(bs, off, n, &sub);
        qiov_destroy(&sub);
        if (ret < 0) {
            return ret;
        }
        off += n;
        qoff += n;
        left -= n;
    }
    return 0;
}

/* Whether guest cluster containing `offset` already reads as zeroes. */
static int coroutine_fn cluster_reads_zero(BlockDriverState *bs,
                                           uint64_t offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cur = 1, host, entry;
    Qcow2ClusterType type;
    co_mutex_lock(&s->lock);
    int ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type, &entry);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    return type == QCOW2_CLUSTER_ZERO_PLAIN ||
           type == QCOW2_CLUSTER_ZERO_ALLOC ||
           (type == QCOW2_CLUSTER_UNALLOCATED && !bs->backing);
}

/* Write zero data over [offset, offset+bytes) (within one cluster);
 * with NO_FALLBACK only if the cluster reads as zeroes already. */
static int coroutine_fn write_zero_data(BlockDriverState *bs, uint64_t offset,
                                        uint64_t bytes, BdrvRequestFlags flags)
{
    int r = cluster_reads_zero(bs, offset);
    if (r != 0) {
        return r < 0 ? r : 0;
    }
    if (flags & BDRV_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    void *z = g_malloc0(bytes);
    IOVector q;
    qiov_init_buf(&q, z, bytes);
    int ret = qcow2_co_pwritev_data(bs, offset, bytes, &q, 0);
    g_free(z);
    return ret;
}

static int coroutine_fn qcow2_co_pwrite_zeroes(BlockDriverState *bs,
                                               int64_t offset, int64_t bytes,
                                               BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->writable || s->corrupt_fatal) {
        return s->corrupt_fatal ? -EIO : -EACCES;
    }
    if (s->version < 3) {
        return -ENOTSUP; /* no zero flag: the generic layer writes zeroes */
    }
    uint64_t off = (uint64_t)offset, end = off + (uint64_t)bytes;
    uint64_t astart = ROUND_UP(off, s->cluster_size);
    uint64_t aend = (end == s->size) ? end : qcow2_start_of_cluster(s, end);
    int ret = 0;
    if (astart >= aend) {
        /* Inside one cluster (or two partial ones). */
        uint64_t mid = MIN(end, astart);
        if (off < mid) {
            if (qcow2_offset_into_cluster(s, off) == 0 && mid == s->size) {
                return qcow2_cluster_zeroize(bs, off, mid - off,
                                             flags & BDRV_REQ_MAY_UNMAP);
            }
            ret = write_zero_data(bs, off, mid - off, flags);
            if (ret < 0) {
                return ret;
            }
        }
        if (mid < end) {
            ret = write_zero_data(bs, mid, end - mid, flags);
        }
        return ret < 0 ? ret : 0;
    }
    if (off < astart) {
        ret = write_zero_data(bs, off, astart - off, flags);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_cluster_zeroize(bs, astart, aend - astart,
                                flags & BDRV_REQ_MAY_UNMAP);
    if (ret < 0) {
        return ret;
    }
    if (aend < end) {
        ret = write_zero_data(bs, aend, end - aend, flags);
    }
    return ret;
}

static int coroutine_fn qcow2_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                          int64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->writable || s->corrupt_fatal) {
        return s->corrupt_fatal ? -EIO : -EACCES;
    }
    uint64_t off = (uint64_t)offset, end = off + (uint64_t)bytes;
    uint64_t astart = ROUND_UP(off, s->cluster_size);
    uint64_t aend = (end >= s->size) ? s->size
                                     : qcow2_start_of_cluster(s, end);
    if (astart >= aend) {
        return 0; /* discard is advisory: partial clusters stay */
    }
    return qcow2_cluster_discard(bs, astart, aend - astart);
}

static int coroutine_fn qcow2_co_flush_to_os(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->l2_cache) {
        return 0;
    }
    co_mutex_lock(&s->lock);
    int ret = qcow2_cache_write(bs, s->l2_cache);
    if (ret == 0) {
        ret = qcow2_cache_write(bs, s->rc_cache);
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

static int coroutine_fn qcow2_co_block_status(BlockDriverState *bs,
                                              bool want_zero, int64_t offset,
                                              int64_t bytes, int64_t *pnum,
                                              int64_t *map,
                                              BlockDriverState **file)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cur = (uint64_t)bytes, host, entry;
    Qcow2ClusterType type;
    co_mutex_lock(&s->lock);
    int ret =
        qcow2_get_host_offset(bs, (uint64_t)offset, &cur, &host, &type, &entry);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)cur;
    int status = 0;
    switch (type) {
    case QCOW2_CLUSTER_NORMAL:
        status = BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID |
                 BDRV_BLOCK_ALLOCATED;
        *map = (int64_t)host;
        *file = bs->file->bs;
        break;
    case QCOW2_CLUSTER_ZERO_ALLOC:
        status = BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID |
                 BDRV_BLOCK_ALLOCATED;
        *map = (int64_t)host;
        *file = bs->file->bs;
        break;
    case QCOW2_CLUSTER_ZERO_PLAIN:
        status = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        break;
    case QCOW2_CLUSTER_COMPRESSED:
        status = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
        break;
    case QCOW2_CLUSTER_UNALLOCATED:
        status = 0;
        break;
    }
    return status;
}

static int coroutine_fn qcow2_co_truncate(BlockDriverState *bs,
                                          int64_t offset, bool exact,
                                          PreallocMode prealloc,
                                          BdrvRequestFlags flags,
                                          GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t new_size = (uint64_t)offset, old_size = s->size;
    int ret;
    if (!s->writable || s->corrupt_fatal) {
        error_setg(errp, "Image is read-only or corrupt");
        return -EACCES;
    }
    if (offset < 0 || new_size > (1ULL << 62)) {
        error_setg(errp, "Invalid image size");
        return -EINVAL;
    }
    if (new_size & 511) {
        error_setg(errp, "The new size must be a multiple of 512");
        return -EINVAL;
    }
    /* persistent bitmaps are resized with the node (stored on close) */
    ret = qcow2_bitmaps_truncate_check(bs, errp);
    if (ret < 0) {
        return ret;
    }
    if (s->nb_snapshots && new_size < old_size) {
        error_setg(errp, "Can't shrink an image with internal snapshots");
        return -ENOTSUP;
    }
    if (new_size < old_size) {
        if (prealloc != PREALLOC_MODE_OFF) {
            error_setg(errp, "Preallocation can't be used for shrinking an "
                             "image");
            return -EINVAL;
        }
        ret = qcow2_any_allocated_from(bs, new_size);
        if (ret != 0) {
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to check allocation");
                return ret;
            }
            error_setg(errp, "Cannot shrink the image: clusters beyond the "
                             "new size are allocated");
            return -ENOTSUP;
        }
    }
    co_mutex_lock(&s->lock);
    ret = qcow2_grow_l1_table(bs, qcow2_size_to_l1(s->cluster_bits, new_size));
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to grow the L1 table");
        return ret;
    }
    if (new_size > old_size && prealloc != PREALLOC_MODE_OFF) {
        uint64_t host_end = 0;
        ret = qcow2_preallocate(bs, old_size, new_size - old_size, false,
                                &host_end);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Preallocation failed");
            return ret;
        }
        int64_t flen = bdrv_getlength(bs->file->bs);
        if (host_end && flen >= 0 && (int64_t)host_end > flen) {
            ret = bdrv_co_truncate(bs->file, (int64_t)host_end, false,
                                   prealloc == PREALLOC_MODE_METADATA
                                       ? PREALLOC_MODE_OFF
                                       : prealloc,
                                   0, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    /* Flush metadata first: the new size must not expose unwritten
     * tables. */
    co_mutex_lock(&s->lock);
    ret = qcow2_cache_write(bs, s->l2_cache);
    if (ret == 0) {
        ret = qcow2_cache_flush(bs, s->rc_cache);
    }
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to flush metadata");
        return ret;
    }
    uint8_t buf[8];
    qcow2_put_be64(buf, new_size);
    ret = bdrv_co_pwrite(bs->file, 24, 8, buf, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image size");
        return ret;
    }
    s->size = new_size;
    bs->total_bytes = (int64_t)new_size;
    if (new_size > old_size && bs->backing && prealloc == PREALLOC_MODE_OFF) {
        /* The new area must read as zeroes, not as the (longer) backing
         * file. */
        int64_t blen = bdrv_getlength(bs->backing->bs);
        if (blen > (int64_t)old_size) {
            uint64_t zend = MIN(new_size, (uint64_t)blen);
            if (s->version >= 3) {
                ret = qcow2_co_pwrite_zeroes(bs, (int64_t)old_size,
                                             (int64_t)(zend - old_size), 0);
            } else {
                for (uint64_t o2 = old_size; o2 < zend && ret == 0;) {
                    uint64_t n = MIN(zend - o2, 1ULL << 20);
                    void *z = g_malloc0(n);
                    IOVector q;
                    qiov_init_buf(&q, z, n);
                    ret = qcow2_co_pwritev_data(bs, o2, n, &q, 0);
                    g_free(z);
                    o2 += n;
                }
            }
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to zero the new area");
                return ret;
            }
        }
    }
    return 0;
}

static int coroutine_fn qcow2_co_get_info(BlockDriverState *bs,
                                          ImageInfo *info, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    info->has_cluster_size = true;
    info->cluster_size = (int64_t)s->cluster_size;
    info->has_dirty_flag = true;
    info->dirty_flag = !!(s->incompat & QCOW2_INCOMPAT_DIRTY);
    ImageInfoSpecificQCow2 *q = g_new0(ImageInfoSpecificQCow2, 1);
    q->compat = g_strdup(s->version >= 3 ? "1.1" : "0.10");
    q->refcount_bits = s->refcount_bits;
    q->compression_type = QCOW2_COMPRESSION_TYPE_ZLIB;
    if (s->version >= 3) {
        q->has_lazy_refcounts = true;
        q->lazy_refcounts = !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
        q->has_corrupt = true;
        q->corrupt = !!(s->incompat & QCOW2_INCOMPAT_CORRUPT);
        q->has_extended_l2 = true;
        q->extended_l2 = false;
        /* the stored bitmaps with their on-disk flags, as QEMU lists them */
        if (qcow2_bitmaps_get_info(bs, &q->bitmaps, errp) < 0) {
            qapi_free_ImageInfoSpecificQCow2(q);
            return -EINVAL;
        }
        q->has_bitmaps = q->bitmaps != NULL;
    }
    ImageInfoSpecific *spec = g_new0(ImageInfoSpecific, 1);
    spec->type = IMAGE_INFO_SPECIFIC_KIND_QCOW2;
    spec->u.qcow2.data = q;
    if (info->has_format_specific) {
        qapi_free_ImageInfoSpecific(info->format_specific);
    }
    info->has_format_specific = true;
    info->format_specific = spec;
    if (s->nb_snapshots && !info->has_snapshots) {
        SnapshotInfoList *head = NULL, **tail = &head;
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            Qcow2Snapshot *sn = &s->snapshots[i];
            SnapshotInfo *si = qcow2_snapshot_info(sn);
            SnapshotInfoList *el = g_new0(SnapshotInfoList, 1);
            el->value = si;
            *tail = el;
            tail = &el->next;
        }
        info->has_snapshots = true;
        info->snapshots = head;
    }
    return 0;
}

static void qcow2_child_perm(BlockDriverState *bs, BdrvChild *c,
                             BdrvChildRole role, uint64_t perm,
                             uint64_t shared, uint64_t *nperm,
                             uint64_t *nshared)
{
    bdrv_default_perms(bs, c, role, perm, shared, nperm, nshared);
}

/* ---- reopen ---- */

/* The runtime options reopen applies; each may also be left out. */
static const char *const qcow2_reopen_opts[] = {
    "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
    "pass-discard-other", "overlap-check", "cache-size", "l2-cache-size",
    "l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval",
    NULL,
};

typedef struct Qcow2ReopenState {
    int l2_n, rc_n; /* cache tables */
    int64_t cache_clean_interval;
    int overlap_check;
    bool lazy_refcounts;
    bool discard_passthrough;
    bool bitmaps_stored; /* going read-only: stored in prepare */
    bool becomes_writable;
} Qcow2ReopenState;

/* The new options, checked as at open (same messages); going read-only,
 * everything is written out now, while the node may still write. */
static int coroutine_fn qcow2_reopen_prepare(BDRVReopenState *state,
                                             GError **errp)
{
    BlockDriverState *bs = state->bs;
    BDRVQcow2State *s = bs->opaque;
    const BlockdevOptionsQcow2 *o = &state->options->u.qcow2;
    Qcow2ReopenState *r = g_new0(Qcow2ReopenState, 1);
    uint64_t l2_bytes, rc_bytes;
    int ret = cache_sizes(s, o, &l2_bytes, &rc_bytes, errp);
    if (ret < 0) {
        goto fail;
    }
    r->l2_n = (int)MAX(l2_bytes / s->cluster_size, MIN_L2_CACHE_TABLES);
    r->rc_n = (int)MAX(rc_bytes / s->cluster_size, MIN_RC_CACHE_TABLES);
    r->cache_clean_interval = o->has_cache_clean_interval
                                  ? o->cache_clean_interval
                                  : DEFAULT_CACHE_CLEAN_INTERVAL;
    if (r->cache_clean_interval < 0 || r->cache_clean_interval > UINT_MAX) {
        error_setg(errp, "Cache clean interval too big");
        ret = -EINVAL;
        goto fail;
    }
    r->overlap_check = parse_overlap(o);
    r->lazy_refcounts = o->has_lazy_refcounts
                            ? o->lazy_refcounts
                            : !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
    if (r->lazy_refcounts && s->version < 3) {
        error_setg(errp, "Lazy refcounts require a qcow2 image with at least "
                         "qemu 1.1 compatibility level");
        ret = -EINVAL;
        goto fail;
    }
    r->discard_passthrough =
        o->has_pass_discard_request ? o->pass_discard_request : true;
    r->becomes_writable = !s->writable && !state->read_only;
    if (s->writable && state->read_only) {
        ret = qcow2_bitmaps_store(bs, errp);
        if (ret < 0) {
            goto fail;
        }
        r->bitmaps_stored = true;
    }
    /* The caches are rebuilt at commit: nothing may be left unwritten. */
    ret = bdrv_co_flush(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not flush qcow2 metadata");
        goto fail;
    }
    state->opaque = r;
    return 0;

fail:
    if (r->bitmaps_stored) {
        GError *err = NULL;
        if (qcow2_bitmaps_reopen_rw(bs, &err) < 0) {
            warn_report("%s: %s", bs->node_name, err->message);
            g_error_free(err);
        }
    }
    g_free(r);
    return ret;
}

static void qcow2_reopen_commit(BDRVReopenState *state)
{
    BlockDriverState *bs = state->bs;
    BDRVQcow2State *s = bs->opaque;
    Qcow2ReopenState *r = state->opaque;

    /* Flushed in prepare and drained since: the caches are clean, so they
     * can be rebuilt at the new sizes. */
    if (!qcow2_cache_has_dirty(s->l2_cache) &&
        !qcow2_cache_has_dirty(s->rc_cache)) {
        qcow2_cache_destroy(s->l2_cache);
        qcow2_cache_destroy(s->rc_cache);
        s->l2_cache = qcow2_cache_create(bs, r->l2_n, s->cluster_size,
                                         QCOW2_OL_ACTIVE_L2);
        s->rc_cache = qcow2_cache_create(bs, r->rc_n, s->cluster_size,
                                         QCOW2_OL_REFCOUNT_BLOCK);
    }
    if (s->cache_clean_source) {
        g_source_remove(s->cache_clean_source);
        s->cache_clean_source = 0;
    }
    s->cache_clean_interval = r->cache_clean_interval;
    if (s->cache_clean_interval > 0) {
        s->cache_clean_source = g_timeout_add_seconds(
            (guint)s->cache_clean_interval, cache_clean_timer, bs);
    }
    s->overlap_check = r->overlap_check;
    s->lazy_refcounts = r->lazy_refcounts;
    s->discard_passthrough = r->discard_passthrough;
    s->writable = !state->read_only;
    if (state->read_only) {
        /* stored in prepare; readonly from now on, as at a read-only open */
        for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
            if (bdrv_dirty_bitmap_persistent(l->data)) {
                bdrv_dirty_bitmap_set_readonly(l->data, true);
            }
        }
    }
}

/* Writable again: the bitmaps are marked in use before any write. */
static void coroutine_fn qcow2_reopen_commit_post(BDRVReopenState *state)
{
    Qcow2ReopenState *r = state->opaque;
    if (r->becomes_writable) {
        GError *err = NULL;
        if (qcow2_bitmaps_reopen_rw(state->bs, &err) < 0) {
            /* not fatal: the bitmaps stay readonly (writes to the node
             * then fail until they are removed or the reopen retried) */
            error_report("%s: Failed to make dirty bitmaps writable: %s",
                         state->bs->node_name, err->message);
            g_error_free(err);
        }
    }
    g_free(r);
    state->opaque = NULL;
}

static void qcow2_reopen_abort(BDRVReopenState *state)
{
    Qcow2ReopenState *r = state->opaque;
    if (r->bitmaps_stored && in_coroutine()) {
        /* still writable: the stored bitmaps are in use again */
        GError *err = NULL;
        if (qcow2_bitmaps_reopen_rw(state->bs, &err) < 0) {
            warn_report("%s: %s", state->bs->node_name, err->message);
            g_error_free(err);
        }
    }
    g_free(r);
    state->opaque = NULL;
}

const BlockDriver bdrv_qcow2 = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "qcow2",
    .driver = BLOCKDEV_DRIVER_QCOW2,
    .instance_size = sizeof(BDRVQcow2State),
    .is_format = true,
    .supports_backing = true,
    .bdrv_open = qcow2_open,
    .bdrv_close = qcow2_close,
    .bdrv_co_can_store_new_dirty_bitmap = qcow2_co_can_store_new_dirty_bitmap,
    .bdrv_co_remove_persistent_dirty_bitmap =
        qcow2_co_remove_persistent_dirty_bitmap,
    .bdrv_refresh_limits = qcow2_refresh_limits,
    .bdrv_co_preadv = qcow2_co_preadv,
    .bdrv_co_pwritev = qcow2_co_pwritev,
    .bdrv_co_pwrite_zeroes = qcow2_co_pwrite_zeroes,
    .bdrv_co_pdiscard = qcow2_co_pdiscard,
    .bdrv_co_flush_to_os = qcow2_co_flush_to_os,
    .bdrv_co_block_status = qcow2_co_block_status,
    .bdrv_co_truncate = qcow2_co_truncate,
    .bdrv_co_get_info = qcow2_co_get_info,
    .bdrv_child_perm = qcow2_child_perm,
    .bdrv_co_create = qcow2_co_create,
    .bdrv_co_change_backing_file = qcow2_co_change_backing_file,
    .reopen_opts = qcow2_reopen_opts,
    .mutable_opts = qcow2_reopen_opts,
    .bdrv_reopen_prepare = qcow2_reopen_prepare,
    .bdrv_reopen_commit = qcow2_reopen_commit,
    .bdrv_reopen_commit_post = qcow2_reopen_commit_post,
    .bdrv_reopen_abort = qcow2_reopen_abort,
};
