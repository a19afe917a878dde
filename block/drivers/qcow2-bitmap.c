/*
 * qcow2 bitmaps extension: parsers and read-only loading (see
 * qcow2-bitmap.h).  Every field comes from the image, so every field is
 * checked before it is used.
 */
#include "block/drivers/qcow2-bitmap.h"

#include <string.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "block/drivers/qcow2.h"
#include "util/error.h"

#define ENTRY_FIXED 24 /* bytes before extra data and name */
#define BME_TABLE_RESERVED (UINT64_C(0xff000000000001fe))
#define BME_TABLE_OFFSET (UINT64_C(0x00fffffffffffe00))

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return GUINT64_FROM_BE(v);
}

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return GUINT32_FROM_BE(v);
}

static uint16_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return GUINT16_FROM_BE(v);
}

bool qcow2_bitmap_ext_parse(const uint8_t *data, size_t len,
                            uint64_t cluster_size, Qcow2BitmapExt *ext,
                            GError **errp)
{
    if (len != 24) {
        error_setg(errp, "bitmaps_ext: Invalid extension length");
        return false;
    }
    ext->nb_bitmaps = rd32(data);
    uint32_t reserved = rd32(data + 4);
    ext->dir_size = rd64(data + 8);
    ext->dir_offset = rd64(data + 16);
    if (reserved) {
        error_setg(errp, "bitmaps_ext: reserved32 is not zero");
        return false;
    }
    if (ext->nb_bitmaps == 0) {
        error_setg(errp, "found bitmaps extension with zero bitmaps");
        return false;
    }
    if (ext->nb_bitmaps > QCOW2_MAX_BITMAPS) {
        error_setg(errp,
                   "bitmaps_ext: Image has %" G_GUINT32_FORMAT
                   " bitmaps, exceeding the QEMU supported maximum of %d",
                   ext->nb_bitmaps, QCOW2_MAX_BITMAPS);
        return false;
    }
    if (ext->dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        error_setg(errp, "bitmaps_ext: directory size is too large");
        return false;
    }
    if (cluster_size == 0 || ext->dir_offset % cluster_size) {
        error_setg(errp, "bitmaps_ext: invalid bitmap directory offset");
        return false;
    }
    return true;
}

uint64_t qcow2_bitmap_table_entries(int64_t virtual_size,
                                    uint8_t granularity_bits,
                                    uint64_t cluster_size)
{
    uint64_t granules = ((uint64_t)virtual_size +
                         (UINT64_C(1) << granularity_bits) - 1) >>
                        granularity_bits;
    uint64_t per_cluster = cluster_size * 8;
    return (granules + per_cluster - 1) / per_cluster;
}

void qcow2_bitmap_dir_free(Qcow2BitmapEntry *e, uint32_t nb_bitmaps)
{
    if (!e) {
        return;
    }
    for (uint32_t i = 0; i < nb_bitmaps; i++) {
        g_free(e[i].name);
    }
    g_free(e);
}

Qcow2BitmapEntry *qcow2_bitmap_dir_parse(const uint8_t *buf, size_t len,
                                         uint32_t nb_bitmaps,
                                         uint64_t cluster_size,
                                         int64_t virtual_size, GError **errp)
{
    if (cluster_size < 512 || (cluster_size & (cluster_size - 1)) ||
        virtual_size < 0 || nb_bitmaps > QCOW2_MAX_BITMAPS) {
        error_setg(errp, "Invalid image parameters for the bitmap directory");
        return NULL;
    }
    Qcow2BitmapEntry *e = g_new0(Qcow2BitmapEntry, MAX(nb_bitmaps, 1));
    size_t pos = 0;
    uint32_t i;
    for (i = 0; i < nb_bitmaps; i++) {
        if (len - pos < ENTRY_FIXED) {
            error_setg(errp, "Bitmap directory is truncated");
            goto fail;
        }
        const uint8_t *p = buf + pos;
        Qcow2BitmapEntry *b = &e[i];
        b->table_offset = rd64(p);
        b->table_size = rd32(p + 8);
        b->flags = rd32(p + 12);
        b->type = p[16];
        b->granularity_bits = p[17];
        uint16_t name_size = rd16(p + 18);
        uint32_t extra = rd32(p + 20);
        /* fixed part + extra data + name, padded to 8 */
        uint64_t entry_size =
            ((uint64_t)ENTRY_FIXED + extra + name_size + 7) & ~UINT64_C(7);
        if (entry_size > len - pos) {
            error_setg(errp, "Bitmap directory is truncated");
            goto fail;
        }
        if (name_size == 0 || name_size > QCOW2_BME_MAX_NAME_SIZE) {
            error_setg(errp, "Bitmap %u has an invalid name length", i);
            goto fail;
        }
        b->name = g_strndup((const char *)p + ENTRY_FIXED + extra, name_size);
        if (strlen(b->name) != name_size ||
            !g_utf8_validate(b->name, -1, NULL)) {
            error_setg(errp, "Bitmap %u has an invalid name", i);
            goto fail;
        }
        if (b->type != 1) {
            error_setg(errp, "Bitmap '%s' has an unknown type %u", b->name,
                       b->type);
            goto fail;
        }
        if (b->granularity_bits < QCOW2_BME_MIN_GRANULARITY_BITS ||
            b->granularity_bits > QCOW2_BME_MAX_GRANULARITY_BITS) {
            error_setg(errp, "Bitmap '%s' has an invalid granularity",
                       b->name);
            goto fail;
        }
        if (b->flags & ~(QCOW2_BME_FLAG_IN_USE | QCOW2_BME_FLAG_AUTO |
                         QCOW2_BME_FLAG_EXTRA_DATA_COMPATIBLE)) {
            error_setg(errp, "Bitmap '%s' has reserved flags set", b->name);
            goto fail;
        }
        if (extra && !(b->flags & QCOW2_BME_FLAG_EXTRA_DATA_COMPATIBLE)) {
            error_setg(errp, "Bitmap '%s' has incompatible extra data",
                       b->name);
            goto fail;
        }
        if (b->table_offset % cluster_size || b->table_offset == 0 ||
            b->table_size > QCOW2_BME_MAX_TABLE_SIZE ||
            b->table_size != qcow2_bitmap_table_entries(
                                 virtual_size, b->granularity_bits,
                                 cluster_size)) {
            error_setg(errp, "Bitmap '%s' has an invalid bitmap table",
                       b->name);
            goto fail;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (!strcmp(e[j].name, b->name)) {
                error_setg(errp, "Duplicate bitmap name '%s'", b->name);
                goto fail;
            }
        }
        /* padding must be zero */
        for (uint64_t k = ENTRY_FIXED + extra + name_size; k < entry_size;
             k++) {
            if (p[k]) {
                error_setg(errp, "Bitmap '%s' has non-zero padding", b->name);
                goto fail;
            }
        }
        pos += entry_size;
    }
    if (pos != len) {
        error_setg(errp, "Bitmap directory size does not match its entries");
        goto fail;
    }
    return e;
fail:
    qcow2_bitmap_dir_free(e, nb_bitmaps);
    return NULL;
}

/* Read one bitmap's table and data into bm. */
static int coroutine_fn load_bitmap(BlockDriverState *bs, BDRVQcow2State *s,
                                    const Qcow2BitmapEntry *b,
                                    BdrvDirtyBitmap *bm, GError **errp)
{
    size_t tbytes = (size_t)b->table_size * 8;
    g_autofree uint8_t *table = g_malloc(MAX(tbytes, 1));
    int ret = bdrv_co_pread(bs->file, (int64_t)b->table_offset,
                            (int64_t)tbytes, table, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read bitmap table of '%s'",
                         b->name);
        return ret;
    }
    uint64_t granules = ((uint64_t)s->size +
                         (UINT64_C(1) << b->granularity_bits) - 1) >>
                        b->granularity_bits;
    uint64_t per_cluster = s->cluster_size * 8;
    g_autofree uint8_t *data = g_malloc(s->cluster_size);
    uint32_t gran = UINT32_C(1) << b->granularity_bits;
    for (uint32_t i = 0; i < b->table_size; i++) {
        uint64_t ent = rd64(table + (size_t)i * 8);
        uint64_t off = ent & BME_TABLE_OFFSET;
        uint64_t first = (uint64_t)i * per_cluster;
        uint64_t count = MIN(per_cluster, granules - first);
        if ((ent & BME_TABLE_RESERVED) || (off && (ent & 1)) ||
            off % s->cluster_size) {
            error_setg(errp, "Bitmap '%s' has an invalid table entry",
                       b->name);
            return -EINVAL;
        }
        if (!off) {
            if (ent & 1) { /* all ones */
                bdrv_set_dirty_bitmap(bm, (int64_t)(first * gran),
                                      (int64_t)(count * gran));
            }
            continue;
        }
        ret = bdrv_co_pread(bs->file, (int64_t)off,
                            (int64_t)s->cluster_size, data, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read bitmap '%s'",
                             b->name);
            return ret;
        }
        bdrv_dirty_bitmap_deserialize(bm, first, count, data);
    }
    return 0;
}

int coroutine_fn qcow2_bitmaps_load_readonly(BlockDriverState *bs,
                                             GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) || !s->extensions) {
        return 0;
    }
    const Qcow2Extension *x = NULL;
    for (guint i = 0; i < s->extensions->len; i++) {
        const Qcow2Extension *e = g_ptr_array_index(s->extensions, i);
        if (e->type == QCOW2_EXT_BITMAPS) {
            x = e;
        }
    }
    if (!x) {
        return 0;
    }
    Qcow2BitmapExt ext;
    if (!qcow2_bitmap_ext_parse(x->data, x->len, s->cluster_size, &ext,
                                errp)) {
        return -EINVAL;
    }
    g_autofree uint8_t *dir = g_malloc(MAX(ext.dir_size, 1));
    int ret = bdrv_co_pread(bs->file, (int64_t)ext.dir_offset,
                            (int64_t)ext.dir_size, dir, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read bitmap directory");
        return ret;
    }
    Qcow2BitmapEntry *e =
        qcow2_bitmap_dir_parse(dir, ext.dir_size, ext.nb_bitmaps,
                               s->cluster_size, (int64_t)s->size, errp);
    if (!e) {
        return -EINVAL;
    }
    for (uint32_t i = 0; i < ext.nb_bitmaps; i++) {
        BdrvDirtyBitmap *bm = bdrv_create_dirty_bitmap(
            bs, UINT32_C(1) << e[i].granularity_bits, e[i].name, errp);
        if (!bm) {
            ret = -EINVAL;
            break;
        }
        bdrv_dirty_bitmap_set_persistence(bm, true);
        bdrv_dirty_bitmap_set_readonly(bm, true);
        if (e[i].flags & QCOW2_BME_FLAG_IN_USE) {
            /* not closed cleanly: it may have missed writes */
            bdrv_dirty_bitmap_set_inconsistent(bm);
            continue;
        }
        if (!(e[i].flags & QCOW2_BME_FLAG_AUTO)) {
            bdrv_disable_dirty_bitmap(bm);
        }
        ret = load_bitmap(bs, s, &e[i], bm, errp);
        if (ret < 0) {
            break;
        }
    }
    qcow2_bitmap_dir_free(e, ext.nb_bitmaps);
    if (ret < 0) {
        bdrv_release_all_dirty_bitmaps(bs);
    }
    return ret < 0 ? ret : 0;
}
