/*
 * qcow2 bitmaps extension (see qcow2-bitmap.h): parsers, loading, marking
 * in use, storing, removal.  Every field comes from the image, so every
 * field is checked before it is used.
 *
 * Crash safety of every change to the bitmaps: new clusters (data,
 * tables, directory) are written, then their refcounts, then the file is
 * flushed, and only then does the header point at the new directory; old
 * clusters are freed last.  A crash leaves the old directory (bitmaps
 * marked in use: loaded inconsistent) or the new one, and at worst
 * leaked clusters.  The one in-place write is the in-use marking at open,
 * which changes only flag words of a directory that stays valid.
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
            (!(b->flags & QCOW2_BME_FLAG_IN_USE) &&
             b->table_size != qcow2_bitmap_table_entries(
                                  virtual_size, b->granularity_bits,
                                  cluster_size))) {
            /* An in-use entry may predate a resize of the image that was
             * never stored (crash): it loads inconsistent, data unread. */
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

/* ---- the directory as it is on disk ---- */

/* The image's bitmaps extension and directory, parsed, with each entry's
 * raw bytes (entries kept as they are are copied verbatim). */
typedef struct Dir {
    Qcow2BitmapExt ext; /* nb_bitmaps 0: no (valid) extension */
    uint8_t *raw;
    Qcow2BitmapEntry *e;
    size_t *off, *len; /* each entry's place in raw */
} Dir;

static void dir_free(Dir *d)
{
    qcow2_bitmap_dir_free(d->e, d->ext.nb_bitmaps);
    g_free(d->raw);
    g_free(d->off);
    g_free(d->len);
    memset(d, 0, sizeof(*d));
}

/* The bitmaps extension the image vouches for (autoclear bit set), or
 * NULL.  A stale one (bit clear) is metadata of nobody. */
static Qcow2Extension *find_ext(BDRVQcow2State *s)
{
    if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) || !s->extensions) {
        return NULL;
    }
    for (guint i = 0; i < s->extensions->len; i++) {
        Qcow2Extension *e = g_ptr_array_index(s->extensions, i);
        if (e->type == QCOW2_EXT_BITMAPS) {
            return e;
        }
    }
    return NULL;
}

static int coroutine_fn dir_read(BlockDriverState *bs, Dir *d, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    memset(d, 0, sizeof(*d));
    const Qcow2Extension *x = find_ext(s);
    if (!x) {
        return 0;
    }
    Qcow2BitmapExt ext;
    if (!qcow2_bitmap_ext_parse(x->data, x->len, s->cluster_size, &ext,
                                errp)) {
        return -EINVAL;
    }
    d->raw = g_malloc(MAX(ext.dir_size, 1));
    int ret = bdrv_co_pread(bs->file, (int64_t)ext.dir_offset,
                            (int64_t)ext.dir_size, d->raw, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read bitmap directory");
        dir_free(d);
        return ret;
    }
    d->e = qcow2_bitmap_dir_parse(d->raw, ext.dir_size, ext.nb_bitmaps,
                                  s->cluster_size, (int64_t)s->size, errp);
    if (!d->e) {
        dir_free(d);
        return -EINVAL;
    }
    d->ext = ext;
    d->off = g_new(size_t, ext.nb_bitmaps);
    d->len = g_new(size_t, ext.nb_bitmaps);
    size_t pos = 0;
    for (uint32_t i = 0; i < ext.nb_bitmaps; i++) {
        /* parse checked every size already */
        const uint8_t *p = d->raw + pos;
        size_t n = ((size_t)ENTRY_FIXED + rd32(p + 20) + rd16(p + 18) + 7) &
                   ~(size_t)7;
        d->off[i] = pos;
        d->len[i] = n;
        pos += n;
    }
    return 0;
}

static int dir_find(const Dir *d, const char *name)
{
    for (uint32_t i = 0; i < d->ext.nb_bitmaps; i++) {
        if (!strcmp(d->e[i].name, name)) {
            return (int)i;
        }
    }
    return -1;
}

static size_t entry_size(size_t name_len)
{
    return (ENTRY_FIXED + name_len + 7) & ~(size_t)7;
}

static void put_entry(GByteArray *out, uint64_t table_offset,
                      uint32_t table_size, uint32_t flags, uint8_t gran_bits,
                      const char *name)
{
    size_t nl = strlen(name), n = entry_size(nl);
    uint8_t *p = g_malloc0(n);
    qcow2_put_be64(p, table_offset);
    qcow2_put_be32(p + 8, table_size);
    qcow2_put_be32(p + 12, flags);
    p[16] = 1; /* type: dirty tracking bitmap */
    p[17] = gran_bits;
    qcow2_put_be16(p + 18, (uint16_t)nl);
    qcow2_put_be32(p + 20, 0); /* no extra data */
    memcpy(p + ENTRY_FIXED, name, nl);
    g_byte_array_append(out, p, (guint)n);
    g_free(p);
}

/* Host ranges to give back once the image no longer points at them. */
typedef struct FreeList {
    GArray *r; /* pairs of uint64_t: offset, size */
} FreeList;

static void free_add(FreeList *f, uint64_t off, uint64_t size)
{
    if (!f->r) {
        f->r = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    }
    g_array_append_val(f->r, off);
    g_array_append_val(f->r, size);
}

/* Collect an on-disk bitmap's table and data clusters.  A table that
 * cannot be read or holds bad entries leaks instead (never free what
 * might be someone else's cluster). */
static void coroutine_fn free_add_bitmap(BlockDriverState *bs,
                                         const Qcow2BitmapEntry *b,
                                         FreeList *f)
{
    BDRVQcow2State *s = bs->opaque;
    size_t tbytes = (size_t)b->table_size * 8;
    g_autofree uint8_t *table = g_malloc(MAX(tbytes, 1));
    if (bdrv_co_pread(bs->file, (int64_t)b->table_offset, (int64_t)tbytes,
                      table, 0) < 0) {
        return;
    }
    for (uint32_t i = 0; i < b->table_size; i++) {
        uint64_t ent = rd64(table + (size_t)i * 8);
        uint64_t off = ent & BME_TABLE_OFFSET;
        if ((ent & BME_TABLE_RESERVED) || (off && (ent & 1)) ||
            off % s->cluster_size) {
            return;
        }
    }
    for (uint32_t i = 0; i < b->table_size; i++) {
        uint64_t off = rd64(table + (size_t)i * 8) & BME_TABLE_OFFSET;
        if (off) {
            free_add(f, off, s->cluster_size);
        }
    }
    free_add(f, b->table_offset, ROUND_UP(MAX(tbytes, 1), s->cluster_size));
}

static void coroutine_fn free_run(BlockDriverState *bs, FreeList *f)
{
    if (!f->r) {
        return;
    }
    for (guint i = 0; i + 1 < f->r->len; i += 2) {
        qcow2_free_clusters(bs, g_array_index(f->r, uint64_t, i),
                            g_array_index(f->r, uint64_t, i + 1));
    }
    g_array_free(f->r, TRUE);
    f->r = NULL;
}

/*
 * Point the header at a new directory (nb 0: no bitmaps, the extension
 * and the autoclear bit go) and write it.  The directory must be on disk
 * and flushed already: after this write, the image is its bitmaps.
 */
static int coroutine_fn set_ext(BlockDriverState *bs, uint32_t nb,
                                uint64_t dir_size, uint64_t dir_offset)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->extensions) {
        s->extensions = g_ptr_array_new();
    }
    Qcow2Extension *x = NULL;
    for (guint i = 0; i < s->extensions->len; i++) {
        Qcow2Extension *e = g_ptr_array_index(s->extensions, i);
        if (e->type == QCOW2_EXT_BITMAPS) {
            if (!nb) {
                g_free(e->data);
                g_free(e);
                g_ptr_array_remove_index(s->extensions, i);
                break;
            }
            x = e;
        }
    }
    if (nb) {
        if (!x) {
            x = g_new0(Qcow2Extension, 1);
            x->type = QCOW2_EXT_BITMAPS;
            g_ptr_array_add(s->extensions, x);
        }
        g_free(x->data);
        x->len = 24;
        x->data = g_malloc0(24);
        qcow2_put_be32(x->data, nb);
        qcow2_put_be64(x->data + 8, dir_size);
        qcow2_put_be64(x->data + 16, dir_offset);
        s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    } else {
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    }
    s->bitmap_dir_offset = nb ? dir_offset : 0;
    s->bitmap_dir_size = nb ? dir_size : 0;
    return qcow2_update_header(bs);
}

/* Write a new directory to fresh clusters and switch the header to it;
 * the old directory's clusters are queued on f. */
static int coroutine_fn replace_dir(BlockDriverState *bs, const Dir *old,
                                    GByteArray *dir, uint32_t nb,
                                    FreeList *f, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t off = 0;
    int ret;
    if (nb) {
        off = qcow2_alloc_clusters(bs, dir->len);
        if (off < 0) {
            error_setg_errno(errp, (int)-off,
                             "Could not allocate the bitmap directory");
            return (int)off;
        }
        /* The directory, then the refcounts of every new cluster (they
         * flush the file too), all before the header points at them.
         * Every new cluster is written before its refcount can reach the
         * disk: a refcount beyond the end of the file is taken for
         * damage on the next open. */
        ret = bdrv_co_pwrite(bs->file, off, dir->len, dir->data, 0);
        if (ret == 0) {
            ret = qcow2_cache_flush(bs, s->rc_cache);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret,
                             "Could not write the bitmap directory");
            qcow2_free_clusters(bs, (uint64_t)off, dir->len);
            return ret;
        }
    }
    ret = set_ext(bs, nb, nb ? dir->len : 0, (uint64_t)off);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update the qcow2 header");
        return ret;
    }
    if (old->ext.nb_bitmaps) {
        free_add(f, old->ext.dir_offset,
                 ROUND_UP(MAX(old->ext.dir_size, 1), s->cluster_size));
    }
    return 0;
}

/*
 * Switch the image to directory `dir` (nb entries) in place of d.  From
 * then on the clusters allocated for it (fresh; NULL: none) are the
 * image's, and those only the old directory named (old) are given back.
 * Before the switch an error leaves both lists to dir_change_end().
 */
static int coroutine_fn switch_dir(BlockDriverState *bs, const Dir *d,
                                   GByteArray *dir, uint32_t nb,
                                   FreeList *fresh, FreeList *old,
                                   GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = replace_dir(bs, d, dir, nb, old, errp);
    if (ret < 0) {
        return ret;
    }
    if (fresh && fresh->r) { /* the image owns them now */
        g_array_free(fresh->r, TRUE);
        fresh->r = NULL;
    }
    free_run(bs, old);
    ret = qcow2_cache_flush(bs, s->rc_cache);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not flush refcounts");
    }
    return ret;
}

/* What a directory change leaves, switched or not: clusters allocated for
 * a directory that never was go back; the old ones are still referenced
 * and stay. */
static void coroutine_fn dir_change_end(BlockDriverState *bs,
                                        FreeList *fresh, FreeList *old)
{
    if (fresh && fresh->r) {
        free_run(bs, fresh); /* never referenced: give them back */
    }
    if (old->r) {
        g_array_free(old->r, TRUE); /* still referenced: keep */
        old->r = NULL;
    }
}

/* ---- loading ---- */

int coroutine_fn qcow2_bitmaps_load(BlockDriverState *bs, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Dir d;
    int ret = dir_read(bs, &d, errp);
    if (ret < 0 || !d.ext.nb_bitmaps) {
        return ret;
    }
    bool mark = false;
    for (uint32_t i = 0; i < d.ext.nb_bitmaps; i++) {
        Qcow2BitmapEntry *b = &d.e[i];
        BdrvDirtyBitmap *bm = bdrv_create_dirty_bitmap(
            bs, UINT32_C(1) << b->granularity_bits, b->name, errp);
        if (!bm) {
            ret = -EINVAL;
            break;
        }
        bdrv_dirty_bitmap_set_persistence(bm, true);
        if (!s->writable) {
            bdrv_dirty_bitmap_set_readonly(bm, true);
        }
        if (b->flags & QCOW2_BME_FLAG_IN_USE) {
            /* not closed cleanly: it may have missed writes */
            bdrv_dirty_bitmap_set_inconsistent(bm);
            continue;
        }
        if (!(b->flags & QCOW2_BME_FLAG_AUTO)) {
            bdrv_disable_dirty_bitmap(bm);
        }
        ret = load_bitmap(bs, s, b, bm, errp);
        if (ret < 0) {
            break;
        }
        if (s->writable) {
            /* in use from now on: the flag goes before any write */
            uint8_t *fl = d.raw + d.off[i] + 12;
            qcow2_put_be32(fl, rd32(fl) | QCOW2_BME_FLAG_IN_USE);
            mark = true;
        }
    }
    if (ret == 0 && mark) {
        /* Only flags change: the directory is rewritten in place. */
        ret = bdrv_co_pwrite(bs->file, (int64_t)d.ext.dir_offset,
                             (int64_t)d.ext.dir_size, d.raw, 0);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Can't update bitmap directory");
        }
    }
    dir_free(&d);
    if (ret < 0) {
        bdrv_release_all_dirty_bitmaps(bs);
    }
    return ret < 0 ? ret : 0;
}

/* ---- storing ---- */

/* Write bm's data clusters (all-zero ones stay entry 0) and its table.
 * New clusters are queued on `fresh` so a failure can give them back. */
static int coroutine_fn store_bitmap(BlockDriverState *bs,
                                     BdrvDirtyBitmap *bm, uint32_t *tsize,
                                     uint64_t *toff, FreeList *fresh,
                                     GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t gran = bdrv_dirty_bitmap_granularity(bm);
    uint8_t gbits = (uint8_t)g_bit_nth_lsf(gran, -1);
    uint64_t n = qcow2_bitmap_table_entries((int64_t)s->size, gbits,
                                            s->cluster_size);
    uint64_t granules = (s->size + gran - 1) >> gbits;
    uint64_t per_cluster = s->cluster_size * 8;
    size_t tbytes = (size_t)n * 8;
    g_autofree uint8_t *table = g_malloc0(MAX(tbytes, 1));
    g_autofree uint8_t *buf = g_malloc(s->cluster_size);
    int ret;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t first = i * per_cluster;
        uint64_t count = MIN(per_cluster, granules - first);
        if (bdrv_dirty_bitmap_next_dirty(bm, (int64_t)(first << gbits),
                                         (int64_t)(count << gbits)) < 0) {
            continue; /* all zeroes: entry 0, no cluster */
        }
        memset(buf, 0, s->cluster_size);
        bdrv_dirty_bitmap_serialize(bm, first, count, buf);
        int64_t off = qcow2_alloc_clusters(bs, s->cluster_size);
        if (off < 0) {
            error_setg_errno(errp, (int)-off, "Could not allocate bitmap "
                                              "cluster");
            return (int)off;
        }
        free_add(fresh, (uint64_t)off, s->cluster_size);
        ret = bdrv_co_pwrite(bs->file, off, (int64_t)s->cluster_size, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write bitmap data");
            return ret;
        }
        qcow2_put_be64(table + i * 8, (uint64_t)off);
    }
    int64_t off = qcow2_alloc_clusters(bs, MAX(tbytes, 1));
    if (off < 0) {
        error_setg_errno(errp, (int)-off, "Could not allocate bitmap table");
        return (int)off;
    }
    free_add(fresh, (uint64_t)off, ROUND_UP(MAX(tbytes, 1), s->cluster_size));
    ret = bdrv_co_pwrite(bs->file, off, (int64_t)tbytes, table, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write bitmap table");
        return ret;
    }
    *tsize = (uint32_t)n;
    *toff = (uint64_t)off;
    return 0;
}

static bool storable(BdrvDirtyBitmap *bm)
{
    return bdrv_dirty_bitmap_persistent(bm) && bdrv_dirty_bitmap_name(bm) &&
           !bdrv_dirty_bitmap_inconsistent(bm) &&
           !bdrv_dirty_bitmap_readonly(bm);
}

int coroutine_fn qcow2_bitmaps_store(BlockDriverState *bs, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->writable || s->corrupt_fatal || s->version < 3) {
        return 0;
    }
    bool any = false;
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        any |= storable(l->data);
    }
    if (!any && !find_ext(s)) {
        return 0;
    }
    co_mutex_lock(&s->lock);
    Dir d;
    FreeList old = { 0 }, fresh = { 0 };
    GByteArray *dir = g_byte_array_new();
    uint32_t nb = 0;
    int ret = dir_read(bs, &d, errp);
    if (ret < 0) {
        goto out;
    }
    /* Old entries keep their place: rewritten if their bitmap is in memory
     * and consistent, else verbatim (an inconsistent one stays in use). */
    for (uint32_t i = 0; i < d.ext.nb_bitmaps; i++) {
        BdrvDirtyBitmap *bm = bdrv_find_dirty_bitmap(bs, d.e[i].name);
        if (bm && storable(bm)) {
            uint32_t tsize;
            uint64_t toff;
            ret = store_bitmap(bs, bm, &tsize, &toff, &fresh, errp);
            if (ret < 0) {
                goto out;
            }
            put_entry(dir, toff, tsize,
                      bdrv_dirty_bitmap_enabled(bm) ? QCOW2_BME_FLAG_AUTO : 0,
                      d.e[i].granularity_bits, d.e[i].name);
            free_add_bitmap(bs, &d.e[i], &old);
        } else {
            g_byte_array_append(dir, d.raw + d.off[i], (guint)d.len[i]);
        }
        nb++;
    }
    /* New bitmaps after them, newest first (list order), as QEMU. */
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        BdrvDirtyBitmap *bm = l->data;
        if (!storable(bm) || dir_find(&d, bdrv_dirty_bitmap_name(bm)) >= 0) {
            continue;
        }
        uint32_t tsize;
        uint64_t toff;
        ret = store_bitmap(bs, bm, &tsize, &toff, &fresh, errp);
        if (ret < 0) {
            goto out;
        }
        put_entry(dir, toff, tsize,
                  bdrv_dirty_bitmap_enabled(bm) ? QCOW2_BME_FLAG_AUTO : 0,
                  (uint8_t)g_bit_nth_lsf(bdrv_dirty_bitmap_granularity(bm),
                                         -1),
                  bdrv_dirty_bitmap_name(bm));
        nb++;
    }
    /* data and tables must be on disk before the directory names them */
    ret = bdrv_co_flush(bs->file->bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not flush bitmap data");
        goto out;
    }
    ret = switch_dir(bs, &d, dir, nb, &fresh, &old, errp);
out:
    dir_change_end(bs, &fresh, &old);
    g_byte_array_unref(dir);
    dir_free(&d);
    co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- adding and removing ---- */

/* Would `len` bytes need more than `bits` granules of 2^gbits bytes? */
static bool too_many_bits(uint64_t len, uint64_t bits, int gbits)
{
    if (bits > (UINT64_MAX >> gbits)) {
        return false; /* the limit is beyond any size */
    }
    return len > (bits << gbits);
}

bool coroutine_fn qcow2_co_can_store_new_dirty_bitmap(BlockDriverState *bs,
                                                      const char *name,
                                                      uint32_t granularity,
                                                      GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    GError *err = NULL;
    int gbits = g_bit_nth_lsf(granularity, -1);
    uint64_t len = s->size;
    Dir d = { 0 };
    if (bdrv_find_dirty_bitmap(bs, name)) {
        /* QEMU names the clash with a bitmap in memory (every stored one
         * is) before any storage check */
        error_setg(errp, "Bitmap already exists: %s", name);
        return false;
    }
    if (s->version < 3) {
        error_setg(&err, "Cannot store dirty bitmaps in qcow2 v2 files");
        goto fail;
    }
    if (gbits > QCOW2_BME_MAX_GRANULARITY_BITS) {
        error_setg(&err, "Granularity exceeds maximum (%llu bytes)",
                   1ULL << QCOW2_BME_MAX_GRANULARITY_BITS);
        goto fail;
    }
    if (gbits < QCOW2_BME_MIN_GRANULARITY_BITS) {
        error_setg(&err, "Granularity is under minimum (%llu bytes)",
                   1ULL << QCOW2_BME_MIN_GRANULARITY_BITS);
        goto fail;
    }
    /* 512 MiB of bitmap at most, in at most the table limit of clusters */
    if (too_many_bits(len, UINT64_C(0x20000000) * 8, gbits) ||
        too_many_bits(len, (uint64_t)QCOW2_BME_MAX_TABLE_SIZE *
                               s->cluster_size * 8, gbits)) {
        error_setg(&err, "Too much space will be occupied by the bitmap. "
                         "Use larger granularity");
        goto fail;
    }
    if (strlen(name) > QCOW2_BME_MAX_NAME_SIZE) {
        error_setg(&err, "Name length exceeds maximum (%u characters)",
                   QCOW2_BME_MAX_NAME_SIZE);
        goto fail;
    }
    co_mutex_lock(&s->lock);
    int ret = dir_read(bs, &d, &err);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        goto fail;
    }
    if (d.ext.nb_bitmaps >= QCOW2_MAX_BITMAPS) {
        error_setg(&err,
                   "Maximum number of persistent bitmaps is already reached");
        goto fail;
    }
    if (d.ext.dir_size + entry_size(strlen(name)) >
        QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        error_setg(&err, "Not enough space in the bitmap directory");
        goto fail;
    }
    if (dir_find(&d, name) >= 0) {
        error_setg(&err, "Bitmap with the same name is already stored");
        goto fail;
    }
    dir_free(&d);
    return true;
fail:
    dir_free(&d);
    error_prepend(&err, "Can't make bitmap '%s' persistent in '%s': ", name,
                  bs->node_name);
    g_propagate_error(errp, err);
    return false;
}

int coroutine_fn qcow2_co_remove_persistent_dirty_bitmap(BlockDriverState *bs,
                                                         const char *name,
                                                         GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    co_mutex_lock(&s->lock);
    Dir d;
    FreeList old = { 0 };
    GByteArray *dir = g_byte_array_new();
    int ret = dir_read(bs, &d, errp);
    /* Not stored (added since open): nothing on disk, as QEMU.  Stored
     * ones of a read-only image are readonly: refused before this. */
    int idx = ret < 0 ? -1 : dir_find(&d, name);
    if (idx >= 0 && !s->writable) {
        error_setg_errno(errp, EACCES, "Can't update bitmap directory");
        ret = -EACCES;
    } else if (idx >= 0) {
        uint32_t nb = 0;
        for (uint32_t i = 0; i < d.ext.nb_bitmaps; i++) {
            if ((int)i != idx) {
                g_byte_array_append(dir, d.raw + d.off[i], (guint)d.len[i]);
                nb++;
            }
        }
        free_add_bitmap(bs, &d.e[idx], &old);
        ret = switch_dir(bs, &d, dir, nb, NULL, &old, errp);
    }
    dir_change_end(bs, NULL, &old);
    g_byte_array_unref(dir);
    dir_free(&d);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        g_prefix_error(errp, "Failed to remove bitmap '%s' from '%s': ",
                       name, bs->node_name);
    }
    return ret < 0 ? ret : 0;
}

/* ---- resize ---- */

int qcow2_bitmaps_truncate_check(BlockDriverState *bs, GError **errp)
{
    /* oldest first: QEMU reports the first one in directory order */
    for (GList *l = g_list_last(bs->dirty_bitmaps); l; l = l->prev) {
        BdrvDirtyBitmap *bm = l->data;
        if (bdrv_dirty_bitmap_persistent(bm) &&
            bdrv_dirty_bitmap_check(bm, BDRV_BITMAP_DEFAULT, errp)) {
            return -ENOTSUP;
        }
    }
    return 0;
}

/* ---- reporting ---- */

int coroutine_fn qcow2_bitmaps_get_info(BlockDriverState *bs,
                                        Qcow2BitmapInfoList **list,
                                        GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    *list = NULL;
    /* the directory as stored, not the in-memory bitmaps: bitmaps added
     * since open are not listed, and the flags say what the image says */
    co_mutex_lock(&s->lock);
    Dir d;
    int ret = dir_read(bs, &d, errp);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    Qcow2BitmapInfoList **tail = list;
    for (uint32_t i = 0; i < d.ext.nb_bitmaps; i++) {
        Qcow2BitmapInfo *info = g_new0(Qcow2BitmapInfo, 1);
        info->name = g_strdup(d.e[i].name);
        info->granularity = UINT32_C(1) << d.e[i].granularity_bits;
        /* in the order of the Qcow2BitmapInfoFlags enum, as QEMU */
        static const struct {
            uint32_t bme;
            Qcow2BitmapInfoFlags info;
        } map[] = {
            { QCOW2_BME_FLAG_IN_USE, QCOW2_BITMAP_INFO_FLAGS_IN_USE },
            { QCOW2_BME_FLAG_AUTO, QCOW2_BITMAP_INFO_FLAGS_AUTO },
        };
        Qcow2BitmapInfoFlagsList **ftail = &info->flags;
        for (size_t k = 0; k < G_N_ELEMENTS(map); k++) {
            if (d.e[i].flags & map[k].bme) {
                Qcow2BitmapInfoFlagsList *f = g_new0(Qcow2BitmapInfoFlagsList,
                                                     1);
                f->value = map[k].info;
                *ftail = f;
                ftail = &f->next;
            }
        }
        Qcow2BitmapInfoList *el = g_new0(Qcow2BitmapInfoList, 1);
        el->value = info;
        *tail = el;
        tail = &el->next;
    }
    dir_free(&d);
    return 0;
}

/* ---- offline repair of bitmaps left in use ---- */

/* A table of `n` "all ones" entries (no data clusters) in a new cluster
 * run, queued on `fresh` until the directory names it. */
static int coroutine_fn write_all_ones_table(BlockDriverState *bs,
                                             uint64_t n, uint64_t *toff,
                                             FreeList *fresh, GError **errp)
{
    size_t tbytes = (size_t)n * 8;
    g_autofree uint8_t *table = g_malloc(MAX(tbytes, 1));
    for (uint64_t i = 0; i < n; i++) {
        qcow2_put_be64(table + i * 8, 1); /* offset 0, bit 0: all ones */
    }
    int64_t off = qcow2_alloc_clusters(bs, MAX(tbytes, 1));
    if (off < 0) {
        error_setg_errno(errp, (int)-off, "Could not allocate bitmap table");
        return (int)off;
    }
    BDRVQcow2State *s = bs->opaque;
    free_add(fresh, (uint64_t)off, ROUND_UP(MAX(tbytes, 1), s->cluster_size));
    int ret = bdrv_co_pwrite(bs->file, off, (int64_t)tbytes, table, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write bitmap table");
        return ret;
    }
    *toff = (uint64_t)off;
    return 0;
}

int coroutine_fn qcow2_bitmaps_repair_in_use(BlockDriverState *bs,
                                             GPtrArray *names, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (!s->writable) {
        error_setg_errno(errp, EACCES, "Can't update bitmap directory");
        return -EACCES;
    }
    co_mutex_lock(&s->lock);
    Dir d;
    FreeList old = { 0 }, fresh = { 0 };
    GByteArray *dir = g_byte_array_new();
    int repaired = 0;
    int ret = dir_read(bs, &d, errp);
    if (ret < 0) {
        goto out;
    }
    for (uint32_t i = 0; i < d.ext.nb_bitmaps; i++) {
        const Qcow2BitmapEntry *b = &d.e[i];
        BdrvDirtyBitmap *bm = bdrv_find_dirty_bitmap(bs, b->name);
        /* In use but loaded consistent: this open marked it, it is fine
         * and is stored on close.  Loaded inconsistent: left by a crash. */
        if (!(b->flags & QCOW2_BME_FLAG_IN_USE) || !bm ||
            !bdrv_dirty_bitmap_inconsistent(bm)) {
            g_byte_array_append(dir, d.raw + d.off[i], (guint)d.len[i]);
            continue;
        }
        uint64_t n = qcow2_bitmap_table_entries((int64_t)s->size,
                                                b->granularity_bits,
                                                s->cluster_size);
        uint64_t toff = 0;
        ret = write_all_ones_table(bs, n, &toff, &fresh, errp);
        if (ret < 0) {
            goto out;
        }
        /* the entry as it was (name, extra data, granularity, auto), with
         * the new table and without in-use */
        guint at = dir->len;
        g_byte_array_append(dir, d.raw + d.off[i], (guint)d.len[i]);
        qcow2_put_be64(dir->data + at, toff);
        qcow2_put_be32(dir->data + at + 8, (uint32_t)n);
        qcow2_put_be32(dir->data + at + 12, b->flags & ~QCOW2_BME_FLAG_IN_USE);
        free_add_bitmap(bs, b, &old);
        if (names) {
            g_ptr_array_add(names, g_strdup(b->name));
        }
        repaired++;
    }
    if (!repaired) {
        goto out;
    }
    /* the tables must be on disk before the directory names them */
    ret = bdrv_co_flush(bs->file->bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not flush bitmap tables");
        goto out;
    }
    ret = switch_dir(bs, &d, dir, d.ext.nb_bitmaps, &fresh, &old, errp);
out:
    dir_change_end(bs, &fresh, &old);
    g_byte_array_unref(dir);
    dir_free(&d);
    co_mutex_unlock(&s->lock);
    return ret < 0 ? ret : repaired;
}

/* ---- reopen read-write ---- */

int coroutine_fn qcow2_bitmaps_reopen_rw(BlockDriverState *bs, GError **errp)
{
    Dir d;
    int ret = dir_read(bs, &d, errp);
    if (ret < 0 || !d.ext.nb_bitmaps) {
        return ret;
    }
    GPtrArray *made_writable = g_ptr_array_new();
    bool mark = false;
    for (uint32_t i = 0; i < d.ext.nb_bitmaps; i++) {
        BdrvDirtyBitmap *bm = bdrv_find_dirty_bitmap(bs, d.e[i].name);
        /* An inconsistent bitmap stays as it is (in use) until removed. */
        if (!bm || !bdrv_dirty_bitmap_persistent(bm) ||
            bdrv_dirty_bitmap_inconsistent(bm)) {
            continue;
        }
        if (!(d.e[i].flags & QCOW2_BME_FLAG_IN_USE)) {
            uint8_t *fl = d.raw + d.off[i] + 12;
            qcow2_put_be32(fl, rd32(fl) | QCOW2_BME_FLAG_IN_USE);
            mark = true;
        }
        g_ptr_array_add(made_writable, bm);
    }
    if (mark) {
        /* in use on disk before the first write, as at a writable open */
        ret = bdrv_co_pwrite(bs->file, (int64_t)d.ext.dir_offset,
                             (int64_t)d.ext.dir_size, d.raw, 0);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Can't update bitmap directory");
        }
    }
    if (ret == 0) {
        for (guint i = 0; i < made_writable->len; i++) {
            bdrv_dirty_bitmap_set_readonly(made_writable->pdata[i], false);
        }
    }
    g_ptr_array_free(made_writable, TRUE);
    dir_free(&d);
    return ret < 0 ? ret : 0;
}
