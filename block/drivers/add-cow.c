/*
 * add-cow driver: guest data lives in the `image` child at the same
 * offsets; the `file` child (metadata) holds a header and a bitmap with
 * one bit per cluster.  A set bit: the cluster is valid in the image
 * file.  A clear bit: it reads from the `backing` child (zeroes past its
 * end, or without one).
 *
 * Crash safety (docs/specs/add-cow.md): a bit is set in memory only after
 * the cluster's data and copy-on-write fill are flushed in the image
 * file, so every bitmap block that reaches the metadata file only ever
 * names durable data.  A crash before the bit is written loses only that
 * unacknowledged write; the cluster still reads from the backing file.
 *
 * Concurrency: allocating writes register the cluster range they make
 * valid; a write overlapping a range being allocated waits for it, writes
 * elsewhere proceed in parallel.  Writing bitmap blocks back is
 * serialised (wb_lock) so an older snapshot of a block never lands after
 * a newer one.
 *
 * The bitmap cache holds cluster-sized bitmap blocks, loaded on first use
 * and written back when an allocation completes (without a metadata
 * flush), on flush and on close.  Memory is bounded by
 * ADD_COW_MAX_BITMAP_BYTES (checked at open and on growth).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include <json-glib/json-glib.h>

#include "block/block_int.h"
#include "block/drivers/add-cow.h"

#define ACOW_ROUND_UP(x, a) ((((x) + (a) - 1) / (a)) * (a))
#define ACOW_ROUND_DOWN(x, a) (((x) / (a)) * (a))

typedef struct AddCowAlloc {
    uint64_t c0, c1; /* clusters being made valid, inclusive */
    CoQueue waiters;
    LIST_ENTRY(AddCowAlloc) next;
} AddCowAlloc;

typedef struct BDRVAddCowState {
    AddCowHeader h;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    bool all_allocated; /* compat ALL_ALLOCATED: bitmap and backing unused */
    BdrvChild *image;
    char *image_path; /* resolved, for info */
    /* Opening the metadata file's name gives the same tree (image and
     * backing from the header): the node is named after it. */
    bool plain_name;

    uint64_t nclusters;
    uint64_t nblocks;  /* bitmap blocks (cluster-sized) for nclusters */
    uint8_t **blocks;  /* NULL: not loaded yet */
    bool *dirty;
    CoMutex load_lock;
    CoMutex wb_lock;
    CoMutex hdr_lock; /* one backing file change at a time */
    LIST_HEAD(, AddCowAlloc) allocs;
} BDRVAddCowState;

/* ---- bitmap cache ---- */

/* One block holds cluster_size * 8 bits. */
static uint64_t block_of(BDRVAddCowState *s, uint64_t c)
{
    return c >> (s->cluster_bits + 3);
}

static bool get_bit(BDRVAddCowState *s, uint64_t c)
{
    const uint8_t *b = s->blocks[block_of(s, c)];
    return b[(c >> 3) & (s->cluster_size - 1)] & (1u << (c & 7));
}

static void set_bit(BDRVAddCowState *s, uint64_t c)
{
    uint64_t bi = block_of(s, c);
    s->blocks[bi][(c >> 3) & (s->cluster_size - 1)] |= (uint8_t)(1u << (c & 7));
    s->dirty[bi] = true;
}

/* Clear bits at or past nclusters in block bi (padding and stale bits
 * past the end are ignored on read and must not come back on growth). */
static void mask_tail(BDRVAddCowState *s, uint64_t bi)
{
    uint64_t bits = s->cluster_size * 8;
    uint64_t first = bi * bits;
    if (first + bits <= s->nclusters) {
        return;
    }
    uint8_t *b = s->blocks[bi];
    for (uint64_t c = MAX(first, s->nclusters); c < first + bits; c++) {
        uint64_t byte = (c - first) >> 3;
        if (!(c & 7) && c + 8 <= first + bits) {
            if (b[byte]) {
                b[byte] = 0;
                s->dirty[bi] = true;
            }
            c += 7;
            continue;
        }
        if (b[byte] & (1u << (c & 7))) {
            b[byte] &= (uint8_t) ~(1u << (c & 7));
            s->dirty[bi] = true;
        }
    }
}

static int coroutine_fn load_block(BlockDriverState *bs, uint64_t bi)
{
    BDRVAddCowState *s = bs->opaque;
    int ret = 0;
    co_mutex_lock(&s->load_lock);
    if (bi < s->nblocks && !s->blocks[bi]) {
        uint8_t *b = g_malloc0(s->cluster_size);
        int64_t flen = bdrv_getlength(bs->file->bs);
        int64_t off = (int64_t)(s->h.header_size + bi * s->cluster_size);
        if (flen < 0) {
            ret = (int)flen;
        } else if (off < flen) {
            /* a short metadata file reads as clear bits */
            int64_t n = MIN((int64_t)s->cluster_size, flen - off);
            ret = bdrv_co_pread(bs->file, off, n, b, 0);
        }
        if (ret < 0) {
            g_free(b);
        } else {
            s->blocks[bi] = b;
            mask_tail(s, bi);
        }
    }
    co_mutex_unlock(&s->load_lock);
    return ret;
}

/* Load the blocks covering clusters c0..c1. */
static int coroutine_fn load_range(BlockDriverState *bs, uint64_t c0,
                                   uint64_t c1)
{
    BDRVAddCowState *s = bs->opaque;
    for (uint64_t bi = block_of(s, c0); bi <= block_of(s, c1); bi++) {
        if (bi < s->nblocks && !s->blocks[bi]) {
            int ret = load_block(bs, bi);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Write dirty blocks in [b0, b1] to the metadata file (no flush). */
static int coroutine_fn write_back(BlockDriverState *bs, uint64_t b0,
                                   uint64_t b1)
{
    BDRVAddCowState *s = bs->opaque;
    int ret = 0;
    uint8_t *snap = NULL;
    if (!bdrv_is_writable(bs)) {
        /* read-only: blocks dirtied by masking stray bits on load stay
         * in memory (the bits are ignored on read anyway) */
        return 0;
    }
    co_mutex_lock(&s->wb_lock);
    for (uint64_t bi = b0; bi <= b1 && bi < s->nblocks; bi++) {
        if (!s->blocks[bi] || !s->dirty[bi]) {
            continue;
        }
        if (!snap) {
            snap = g_malloc(s->cluster_size);
        }
        /* Snapshot and clear first: bits set while the write is in
         * flight make the block dirty again. */
        memcpy(snap, s->blocks[bi], s->cluster_size);
        s->dirty[bi] = false;
        ret = bdrv_co_pwrite(bs->file,
                             (int64_t)(s->h.header_size + bi * s->cluster_size),
                             (int64_t)s->cluster_size, snap, 0);
        if (ret < 0) {
            if (bi < s->nblocks) {
                s->dirty[bi] = true;
            }
            break;
        }
    }
    co_mutex_unlock(&s->wb_lock);
    g_free(snap);
    return ret;
}

/* Resize the cache for a new cluster count (blocks past the end freed,
 * new ones unloaded). */
static void resize_cache(BDRVAddCowState *s, uint64_t nclusters)
{
    uint64_t nb = add_cow_bitmap_bytes(nclusters << s->cluster_bits,
                                       s->cluster_bits) >>
                  s->cluster_bits;
    for (uint64_t i = nb; i < s->nblocks; i++) {
        g_free(s->blocks[i]);
    }
    s->blocks = g_renew(uint8_t *, s->blocks, MAX(nb, 1));
    s->dirty = g_renew(bool, s->dirty, MAX(nb, 1));
    for (uint64_t i = s->nblocks; i < nb; i++) {
        s->blocks[i] = NULL;
        s->dirty[i] = false;
    }
    s->nblocks = nb;
    s->nclusters = nclusters;
}

/* ---- opening ---- */


/* Formats the header may name for a child: known drivers that are
 * formats, not add-cow itself (a file naming itself would recurse). */
static bool usable_format(const char *fmt)
{
    const BlockDriver *drv = bdrv_find_format(fmt);
    return drv && drv->is_format && strcmp(fmt, "add-cow") != 0;
}

static BdrvChild *coroutine_fn open_from_header(BlockDriverState *bs,
                                                const char *fmt,
                                                const char *path,
                                                const char *name,
                                                BdrvChildRole role,
                                                GError **errp)
{
    if (!usable_format(fmt)) {
        error_setg(errp, "Could not open %s file: unknown format '%s'", name,
                   fmt);
        return NULL;
    }
    GError *err = NULL;
    BlockdevOptions *o = bdrv_format_on_file_options(fmt, path, &err);
    if (!o) {
        error_setg(errp, "Could not open %s file: %s", name, err->message);
        g_error_free(err);
        return NULL;
    }
    BlockdevRef ref;
    memset(&ref, 0, sizeof(ref));
    ref.type = QTYPE_QDICT;
    ref.u.definition = *o;
    BdrvChild *c = bdrv_open_child(bs, &ref, name, role, false, &err);
    qapi_free_BlockdevOptions(o);
    if (!c) {
        error_propagate(errp, err);
        error_prepend(errp, "Could not open %s file: ", name);
    }
    return c;
}

static int coroutine_fn read_header(BlockDriverState *bs, GError **errp)
{
    BDRVAddCowState *s = bs->opaque;
    uint8_t fixed[ADD_COW_HEADER_STRUCT];
    int64_t flen = bdrv_getlength(bs->file->bs);
    if (flen < 0) {
        error_setg_errno(errp, (int)-flen, "Could not get metadata file size");
        return (int)flen;
    }
    if (flen < ADD_COW_HEADER_STRUCT) {
        error_setg(errp, "Image is not in add-cow format");
        return -EINVAL;
    }
    int ret = bdrv_co_pread(bs->file, 0, sizeof(fixed), fixed, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read add-cow header");
        return ret;
    }
    if (!add_cow_header_parse_fixed(fixed, &s->h, errp)) {
        return -EINVAL;
    }
    if ((uint64_t)flen < s->h.header_size) {
        error_setg(errp, "add-cow: metadata file is shorter than its header");
        return -EINVAL;
    }
    g_autofree uint8_t *buf = g_malloc(s->h.header_size);
    ret = bdrv_co_pread(bs->file, 0, s->h.header_size, buf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read add-cow header");
        return ret;
    }
    if (!add_cow_header_parse_names(buf, s->h.header_size, &s->h, errp)) {
        return -EINVAL;
    }
    return 0;
}

static bool same_path(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) == 0 && stat(b, &sb) == 0) {
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    }
    return !strcmp(a, b);
}

static void addcow_free_state(BDRVAddCowState *s)
{
    for (uint64_t i = 0; i < s->nblocks; i++) {
        g_free(s->blocks[i]);
    }
    g_clear_pointer(&s->blocks, g_free);
    g_clear_pointer(&s->dirty, g_free);
    s->nblocks = 0;
    g_clear_pointer(&s->image_path, g_free);
    add_cow_header_clear(&s->h);
}

static int coroutine_fn addcow_open(BlockDriverState *bs,
                                    const BlockdevOptions *opts, GError **errp)
{
    BDRVAddCowState *s = bs->opaque;
    const BlockdevOptionsAddCow *o = &opts->u.add_cow;
    g_autofree char *bpath = NULL;
    int ret;

    co_mutex_init(&s->load_lock);
    co_mutex_init(&s->wb_lock);
    co_mutex_init(&s->hdr_lock);
    LIST_INIT(&s->allocs);
    bs->file = bdrv_open_child(bs, o->file, "file",
                               BDRV_CHILD_METADATA | BDRV_CHILD_PRIMARY, false,
                               errp);
    if (!bs->file) {
        return -EINVAL;
    }
    ret = read_header(bs, errp);
    if (ret < 0) {
        goto fail;
    }
    s->cluster_bits = s->h.cluster_bits;
    s->cluster_size = UINT64_C(1) << s->cluster_bits;
    s->all_allocated = s->h.compat_features & ADD_COW_COMPAT_ALL_ALLOCATED;
    const char *mname = bs->file->bs->filename;
    s->image_path = add_cow_resolve(mname, s->h.image_name);
    bpath = s->h.backing_name ? add_cow_resolve(mname, s->h.backing_name)
                              : NULL;

    if (bpath && same_path(bpath, s->image_path)) {
        error_setg(errp, "add-cow: the image file and the backing file are "
                         "the same file");
        ret = -EINVAL;
        goto fail;
    }
    if (same_path(s->image_path, mname) ||
        (bpath && same_path(bpath, mname))) {
        error_setg(errp, "add-cow: the metadata file names itself");
        ret = -EINVAL;
        goto fail;
    }

    /* The image file: from the options, else the header (never probed). */
    if (o->has_image && o->image) {
        s->image = bdrv_open_child(bs, o->image, "image", BDRV_CHILD_DATA,
                                   false, errp);
    } else {
        s->image = open_from_header(bs, s->h.image_fmt, s->image_path,
                                    "image", BDRV_CHILD_DATA, errp);
    }
    if (!s->image) {
        ret = -EINVAL;
        goto fail;
    }

    /* The backing file: options (null: none), else the header, unless
     * ALL_ALLOCATED says it is not needed. */
    if (o->has_backing && o->backing) {
        const BlockdevRefOrNull *r = o->backing;
        if (r->type != QTYPE_QNULL) {
            BlockdevRef ref;
            memset(&ref, 0, sizeof(ref));
            ref.type = r->type;
            if (r->type == QTYPE_QSTRING) {
                ref.u.reference = r->u.reference;
            } else {
                ref.u.definition = r->u.definition;
            }
            if (!bdrv_open_child(bs, &ref, "backing", BDRV_CHILD_COW, false,
                                 errp)) {
                ret = -EINVAL;
                goto fail;
            }
        }
    } else if (bpath && !s->all_allocated) {
        if (!open_from_header(bs, s->h.backing_fmt, bpath, "backing",
                              BDRV_CHILD_COW, errp)) {
            ret = -EINVAL;
            goto fail;
        }
    }
    if (s->h.backing_name) {
        g_strlcpy(bs->backing_file, s->h.backing_name,
                  sizeof(bs->backing_file));
        g_strlcpy(bs->backing_format, s->h.backing_fmt,
                  sizeof(bs->backing_format));
    }

    int64_t size = bdrv_getlength(s->image->bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Could not get image file size");
        ret = (int)size;
        goto fail;
    }
    if (add_cow_bitmap_bytes((uint64_t)size, s->cluster_bits) >
        ADD_COW_MAX_BITMAP_BYTES) {
        error_setg(errp, "add-cow: image too large for its cluster size");
        ret = -EFBIG;
        goto fail;
    }
    resize_cache(s, add_cow_clusters((uint64_t)size, s->cluster_bits));
    bs->total_bytes = size;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;
    s->plain_name = mname[0] && strncmp(mname, "json:", 5) &&
                    !(o->has_image && o->image) && !o->has_backing;
    if (s->plain_name) {
        g_strlcpy(bs->filename, mname, sizeof(bs->filename));
    }
    return 0;

fail:
    addcow_free_state(s);
    return ret;
}

static void addcow_close(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    /* The core flushed before closing; this catches blocks dirtied by
     * anything that bypassed the request path. */
    if (in_coroutine() && bdrv_is_writable(bs) && s->blocks) {
        write_back(bs, 0, s->nblocks ? s->nblocks - 1 : 0);
    }
    addcow_free_state(s);
}

/* ---- reads ---- */

/* Read [off, off+len) of the backing file into qiov at qoff; zeroes past
 * its end or without one. */
static int coroutine_fn read_backing(BlockDriverState *bs, int64_t off,
                                     int64_t len, IOVector *qiov, size_t qoff)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t n = 0;
    if (bs->backing && !s->all_allocated) {
        int64_t blen = bdrv_getlength(bs->backing->bs);
        if (blen < 0) {
            return (int)blen;
        }
        n = off < blen ? MIN(len, blen - off) : 0;
    }
    if (n > 0) {
        IOVector sub;
        qiov_init(&sub, 4);
        qiov_concat(&sub, qiov, qoff, (size_t)n);
        int ret = bdrv_co_preadv(bs->backing, off, n, &sub, 0);
        qiov_destroy(&sub);
        if (ret < 0) {
            return ret;
        }
    }
    if (n < len) {
        qiov_memset(qiov, qoff + (size_t)n, 0, (size_t)(len - n));
    }
    return 0;
}

static int coroutine_fn read_image(BlockDriverState *bs, int64_t off,
                                   int64_t len, IOVector *qiov, size_t qoff)
{
    BDRVAddCowState *s = bs->opaque;
    IOVector sub;
    qiov_init(&sub, 4);
    qiov_concat(&sub, qiov, qoff, (size_t)len);
    int ret = bdrv_co_preadv(s->image, off, len, &sub, 0);
    qiov_destroy(&sub);
    return ret;
}

/* Length of the run of clusters starting at `off` that share the bit of
 * off's cluster, capped at `end`.  Blocks must be loaded. */
static int64_t run_length(BDRVAddCowState *s, int64_t off, int64_t end,
                          bool *valid)
{
    uint64_t c = (uint64_t)off >> s->cluster_bits;
    *valid = get_bit(s, c);
    int64_t pos = (int64_t)((c + 1) << s->cluster_bits);
    while (pos < end && get_bit(s, (uint64_t)pos >> s->cluster_bits) == *valid) {
        pos += (int64_t)s->cluster_size;
    }
    return MIN(pos, end) - off;
}

static int coroutine_fn addcow_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, IOVector *qiov,
                                      BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    if (s->all_allocated) {
        return bdrv_co_preadv(s->image, offset, bytes, qiov, 0);
    }
    if (bytes == 0) {
        return 0;
    }
    int64_t end = offset + bytes;
    int ret = load_range(bs, (uint64_t)offset >> s->cluster_bits,
                         (uint64_t)(end - 1) >> s->cluster_bits);
    if (ret < 0) {
        return ret;
    }
    int64_t pos = offset;
    while (pos < end) {
        bool valid;
        int64_t n = run_length(s, pos, end, &valid);
        size_t qoff = (size_t)(pos - offset);
        ret = valid ? read_image(bs, pos, n, qiov, qoff)
                    : read_backing(bs, pos, n, qiov, qoff);
        if (ret < 0) {
            return ret;
        }
        pos += n;
    }
    return 0;
}

/* ---- writes ---- */

static bool range_valid(BDRVAddCowState *s, uint64_t c0, uint64_t c1)
{
    for (uint64_t c = c0; c <= c1; c++) {
        if (!get_bit(s, c)) {
            return false;
        }
    }
    return true;
}

/* The guest part of a write: data from qiov, or zeroes (qiov NULL). */
static int coroutine_fn write_data(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    if (qiov) {
        return bdrv_co_pwritev(s->image, offset, bytes, qiov,
                               flags & BDRV_REQ_FUA);
    }
    return bdrv_co_pwrite_zeroes(s->image, offset, bytes,
                                 flags & (BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA));
}

/* Copy [off, off+len) from the backing file into the image file. */
static int coroutine_fn cow_fill(BlockDriverState *bs, int64_t off,
                                 int64_t len)
{
    BDRVAddCowState *s = bs->opaque;
    if (len <= 0) {
        return 0;
    }
    void *buf = blk_memalign(4096, (size_t)len);
    IOVector q;
    qiov_init_buf(&q, buf, (size_t)len);
    int ret = read_backing(bs, off, len, &q, 0);
    if (ret == 0) {
        ret = bdrv_co_pwritev(s->image, off, len, &q, 0);
    }
    qiov_destroy(&q);
    blk_vfree(buf);
    return ret;
}

static int coroutine_fn addcow_write(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, IOVector *qiov,
                                     BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    if (s->all_allocated || bytes == 0) {
        return write_data(bs, offset, bytes, qiov, flags);
    }
    uint64_t c0 = (uint64_t)offset >> s->cluster_bits;
    uint64_t c1 = (uint64_t)(offset + bytes - 1) >> s->cluster_bits;
    int ret;

again:
    ret = load_range(bs, c0, c1);
    if (ret < 0) {
        return ret;
    }
    if (range_valid(s, c0, c1)) {
        /* Already valid: no flush, no metadata. */
        return write_data(bs, offset, bytes, qiov, flags);
    }
    AddCowAlloc *a;
    LIST_FOREACH (a, &s->allocs, next) {
        if (a->c0 <= c1 && c0 <= a->c1) {
            co_queue_wait(&a->waiters, NULL);
            goto again;
        }
    }
    AddCowAlloc me = { .c0 = c0, .c1 = c1 };
    co_queue_init(&me.waiters);
    LIST_INSERT_HEAD(&s->allocs, &me, next);

    /* 1. Partial first/last clusters not yet valid: the rest of the
     * cluster comes from the backing file (zeroes past its end). */
    int64_t cstart = (int64_t)(c0 << s->cluster_bits);
    int64_t end = offset + bytes;
    int64_t cend = MIN((int64_t)((c1 + 1) << s->cluster_bits),
                       bs->total_bytes);
    ret = 0;
    if (!get_bit(s, c0) && offset > cstart) {
        ret = cow_fill(bs, cstart, offset - cstart);
    }
    if (ret == 0 && !get_bit(s, c1) && end < cend) {
        ret = cow_fill(bs, end, cend - end);
    }
    /* 2. The guest data. */
    if (ret == 0) {
        ret = write_data(bs, offset, bytes, qiov, flags & ~BDRV_REQ_FUA);
    }
    /* 3. Durable before any bit says so. */
    if (ret == 0) {
        ret = bdrv_co_flush(s->image->bs);
    }
    /* 4. The bits, and their bitmap blocks. */
    if (ret == 0 && c1 < s->nclusters) {
        for (uint64_t c = c0; c <= c1; c++) {
            set_bit(s, c);
        }
        ret = write_back(bs, block_of(s, c0), block_of(s, c1));
        if (ret == 0 && (flags & BDRV_REQ_FUA)) {
            ret = bdrv_co_flush(bs->file->bs);
        }
    }
    LIST_REMOVE(&me, next);
    co_queue_restart_all(&me.waiters);
    return ret;
}

static int coroutine_fn addcow_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       BdrvRequestFlags flags)
{
    return addcow_write(bs, offset, bytes, qiov, flags);
}

static int coroutine_fn addcow_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    /* A cluster not yet valid becomes valid with zeroes in the image
     * file, its bit set once they are durable (same path as writes). */
    return addcow_write(bs, offset, bytes, NULL, flags);
}

static int coroutine_fn addcow_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    /* Bits are never cleared (a clear bit would expose the backing file
     * again).  Only whole valid clusters are passed on to the image
     * file; a discarded cluster stays valid with whatever it reads. */
    if (s->all_allocated) {
        return bdrv_co_pdiscard(s->image, offset, bytes);
    }
    int64_t start = ACOW_ROUND_UP(offset, (int64_t)s->cluster_size);
    int64_t end = offset + bytes == bs->total_bytes
                      ? bs->total_bytes
                      : ACOW_ROUND_DOWN(offset + bytes, (int64_t)s->cluster_size);
    if (start >= end) {
        return 0;
    }
    int ret = load_range(bs, (uint64_t)start >> s->cluster_bits,
                         (uint64_t)(end - 1) >> s->cluster_bits);
    if (ret < 0) {
        return ret;
    }
    int64_t pos = start;
    while (pos < end) {
        bool valid;
        int64_t n = run_length(s, pos, end, &valid);
        if (valid) {
            ret = bdrv_co_pdiscard(s->image, pos, n);
            if (ret < 0 && ret != -ENOTSUP) {
                return ret;
            }
        }
        pos += n;
    }
    return 0;
}

/* ---- flush ---- */

static int coroutine_fn addcow_flush_to_os(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    if (!s->nblocks || s->all_allocated) {
        return 0;
    }
    /* Order: image file, bitmap blocks, metadata file.  Bits in memory
     * already name durable data, but a flush must also cover writes to
     * valid clusters. */
    int ret = bdrv_co_flush(s->image->bs);
    if (ret == 0) {
        ret = write_back(bs, 0, s->nblocks - 1);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    return ret;
}

/* ---- block status ---- */

static int coroutine_fn addcow_block_status(BlockDriverState *bs,
                                            bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum,
                                            int64_t *map,
                                            BlockDriverState **file)
{
    BDRVAddCowState *s = bs->opaque;
    bool valid = true;
    if (s->all_allocated) {
        *pnum = bytes;
    } else {
        int ret = load_range(bs, (uint64_t)offset >> s->cluster_bits,
                             (uint64_t)(offset + bytes - 1) >> s->cluster_bits);
        if (ret < 0) {
            return ret;
        }
        *pnum = run_length(s, offset, offset + bytes, &valid);
    }
    if (!valid) {
        return 0;
    }
    *map = offset;
    *file = s->image->bs;
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID | BDRV_BLOCK_RECURSE;
}

/* ---- truncate ---- */

static int coroutine_fn addcow_truncate(BlockDriverState *bs, int64_t offset,
                                        bool exact, PreallocMode prealloc,
                                        BdrvRequestFlags flags, GError **errp)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t old = bs->total_bytes;
    int ret;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
    if (add_cow_bitmap_bytes((uint64_t)offset, s->cluster_bits) >
        ADD_COW_MAX_BITMAP_BYTES) {
        error_setg(errp, "add-cow: image too large for its cluster size");
        return -EFBIG;
    }
    uint64_t newc = add_cow_clusters((uint64_t)offset, s->cluster_bits);
    int64_t meta_len =
        (int64_t)(s->h.header_size +
                  add_cow_bitmap_bytes((uint64_t)offset, s->cluster_bits));
    int64_t old_meta =
        (int64_t)(s->h.header_size +
                  add_cow_bitmap_bytes((uint64_t)old, s->cluster_bits));

    if (offset < old) {
        /* Clear the bits past the new end first, durably, so a later
         * grow cannot revive them. */
        if (!s->all_allocated && newc < s->nclusters) {
            ret = load_range(bs, newc, s->nclusters - 1);
            if (ret < 0) {
                goto io_err;
            }
            uint64_t oldc = s->nclusters;
            s->nclusters = newc;
            for (uint64_t bi = block_of(s, newc); bi < s->nblocks; bi++) {
                mask_tail(s, bi);
            }
            s->nclusters = oldc;
            ret = write_back(bs, block_of(s, newc), s->nblocks - 1);
            if (ret == 0) {
                ret = bdrv_co_flush(bs->file->bs);
            }
            if (ret < 0) {
                goto io_err;
            }
        }
        ret = bdrv_co_truncate(s->image, offset, exact, prealloc, 0, errp);
        if (ret < 0) {
            return ret;
        }
        resize_cache(s, newc);
        bs->total_bytes = offset;
        if (!s->all_allocated) {
            ret = bdrv_co_truncate(bs->file, meta_len, false,
                                   PREALLOC_MODE_OFF, 0, errp);
        }
        return ret;
    }

    /* Growing: stale bits in the last block and past the old bitmap are
     * dropped (the block is masked on load; the file is cut first). */
    if (!s->all_allocated) {
        if (s->nclusters) {
            ret = load_range(bs, s->nclusters - 1, s->nclusters - 1);
            if (ret == 0) {
                ret = write_back(bs, s->nblocks - 1, s->nblocks - 1);
            }
            if (ret < 0) {
                goto io_err;
            }
        }
        int64_t flen = bdrv_getlength(bs->file->bs);
        if (flen > old_meta) {
            ret = bdrv_co_truncate(bs->file, old_meta, false,
                                   PREALLOC_MODE_OFF, 0, errp);
            if (ret < 0) {
                return ret;
            }
        }
        ret = bdrv_co_truncate(bs->file, meta_len, false, PREALLOC_MODE_OFF,
                               0, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = bdrv_co_truncate(s->image, offset, exact, prealloc, 0, errp);
    if (ret < 0) {
        return ret;
    }
    resize_cache(s, newc);
    bs->total_bytes = offset;
    /* The new area must read as zeroes, not as a longer backing file. */
    if (!s->all_allocated && bs->backing) {
        int64_t blen = bdrv_getlength(bs->backing->bs);
        if (blen > old) {
            int64_t zend = MIN(blen, offset);
            ret = addcow_write(bs, old, zend - old, NULL, 0);
            if (ret < 0) {
                goto io_err;
            }
        }
    }
    return 0;

io_err:
    error_setg_errno(errp, -ret, "add-cow: could not update the bitmap");
    return ret;
}

/* ---- backing file change (block-stream, block-commit) ---- */

/* Does [a, a+alen) overlap [b, b+blen)? */
static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
                           uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* A place for a name of `len` bytes in the header that overlaps neither
 * name the header names now (0: none).  The starts of the free gaps are
 * 76 and the end of each live name. */
static uint32_t free_name_slot(const AddCowHeader *h, uint32_t len)
{
    uint32_t cand[3] = {
        ADD_COW_HEADER_STRUCT,
        h->image_name_off + h->image_name_len,
        h->backing_name_off ? h->backing_name_off + h->backing_name_len : 0,
    };
    for (int i = 0; i < 3; i++) {
        uint64_t off = cand[i];
        if (off < ADD_COW_HEADER_STRUCT || off > (uint64_t)h->header_size - 2 ||
            off + len > h->header_size) {
            continue;
        }
        if (ranges_overlap(off, len, h->image_name_off, h->image_name_len) ||
            (h->backing_name_off &&
             ranges_overlap(off, len, h->backing_name_off,
                            h->backing_name_len))) {
            continue;
        }
        return (uint32_t)off;
    }
    return 0;
}

/* Without a backing file a clear bit reads zeroes: make those clusters
 * valid with zeroes in the image file (the allocating write path), so
 * every bit is 1 and the image file alone is the disk (standalone).  The
 * guest sees the same zeroes before and after. */
static int coroutine_fn fill_invalid_with_zeroes(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    if (s->all_allocated || bs->backing || !s->nclusters) {
        return 0;
    }
    int ret = load_range(bs, 0, s->nclusters - 1);
    int64_t pos = 0;
    while (ret == 0 && pos < bs->total_bytes) {
        bool valid;
        int64_t n = run_length(s, pos, bs->total_bytes, &valid);
        if (!valid) {
            /* may unmap: still reads zeroes, and a sparse image file
             * stays sparse */
            ret = addcow_write(bs, pos, n, NULL, BDRV_REQ_MAY_UNMAP);
        }
        pos += n;
    }
    return ret;
}

/*
 * Record a new backing file (NULL: none) in the header, crash-safely
 * (docs/specs/add-cow.md, "Changing the backing file"): the new name goes
 * to bytes of the header no field names yet, is flushed, and only then
 * the 76-byte fixed part (inside the first sector, written in one
 * request) switches to it and is flushed; the old name's bytes are zeroed
 * last.  A crash leaves the old or the new header, at worst with stray
 * bytes outside the names (a `check` warning).
 */
static int coroutine_fn addcow_change_backing_file(BlockDriverState *bs,
                                                   const char *backing_file,
                                                   const char *backing_fmt)
{
    BDRVAddCowState *s = bs->opaque;
    if (backing_file && !*backing_file) {
        backing_file = NULL;
    }
    if (!backing_file) {
        if (backing_fmt) {
            return -EINVAL; /* a format without a file means nothing */
        }
    } else {
        if (!backing_fmt || !*backing_fmt) {
            /* the header needs one (never probed at open) */
            if (!bs->backing || !bs->backing->bs->drv) {
                return -EINVAL;
            }
            backing_fmt = bs->backing->bs->drv->format_name;
        }
        if (strlen(backing_file) > ADD_COW_MAX_NAME ||
            strlen(backing_fmt) >= ADD_COW_FMT_LEN ||
            !usable_format(backing_fmt)) {
            /* includes add-cow: open would refuse a header naming it */
            return -ENOTSUP;
        }
        g_autofree char *path =
            add_cow_resolve(bs->file->bs->filename, backing_file);
        if (same_path(path, s->image_path) ||
            same_path(path, bs->file->bs->filename)) {
            return -EINVAL;
        }
    }
    if (!bdrv_is_writable(bs)) {
        return -EACCES;
    }
    int ret = 0;
    if (!backing_file) {
        ret = fill_invalid_with_zeroes(bs);
        if (ret < 0) {
            return ret;
        }
    }

    g_autofree uint8_t *buf = NULL;
    co_mutex_lock(&s->hdr_lock);
    AddCowHeader nh = s->h; /* names borrowed from s->h */
    uint32_t blen = backing_file ? (uint32_t)strlen(backing_file) : 0;
    uint32_t boff = 0;
    memset(nh.backing_fmt, 0, sizeof(nh.backing_fmt));
    if (backing_file) {
        boff = free_name_slot(&s->h, blen);
        if (!boff) {
            ret = -ENOSPC; /* no room next to the names in use */
            goto out;
        }
        g_strlcpy(nh.backing_fmt, backing_fmt, sizeof(nh.backing_fmt));
        ret = bdrv_co_pwrite(bs->file, boff, blen, backing_file, 0);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            goto out;
        }
    }
    nh.backing_name_off = boff;
    nh.backing_name_len = blen;
    nh.backing_name = (char *)backing_file;
    buf = add_cow_header_encode(&nh);
    ret = bdrv_co_pwrite(bs->file, 0, ADD_COW_HEADER_STRUCT, buf, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        /* the fixed part may or may not have reached the disk: either
         * header is valid, and the node keeps the old state */
        goto out;
    }
    if (s->h.backing_name_off) {
        /* unreferenced now; a failure only leaves stray bytes */
        g_autofree uint8_t *z = g_malloc0(s->h.backing_name_len);
        bdrv_co_pwrite(bs->file, s->h.backing_name_off,
                       s->h.backing_name_len, z, 0);
    }
    g_free(s->h.backing_name);
    s->h.backing_name = backing_file ? g_strdup(backing_file) : NULL;
    s->h.backing_name_off = boff;
    s->h.backing_name_len = blen;
    memcpy(s->h.backing_fmt, nh.backing_fmt, sizeof(s->h.backing_fmt));
    g_strlcpy(bs->backing_file, backing_file ? backing_file : "",
              sizeof(bs->backing_file));
    g_strlcpy(bs->backing_format, backing_file ? s->h.backing_fmt : "",
              sizeof(bs->backing_format));
out:
    co_mutex_unlock(&s->hdr_lock);
    return ret;
}

/* ---- reopen ---- */

/*
 * Nothing of add-cow's own can change: its options are the children
 * (`file`, `image`, `backing`), which the generic layer reopens or
 * replaces.  Going read-only, the generic flush has already written the
 * dirty bitmap blocks; prepare writes them once more so nothing is left
 * that only a writable node could write.  Going read-write needs nothing:
 * blocks dirtied while read-only (stray bits masked on load) are written
 * with the next write-back.
 */
static int coroutine_fn addcow_reopen_prepare(BDRVReopenState *state,
                                              GError **errp)
{
    BlockDriverState *bs = state->bs;
    BDRVAddCowState *s = bs->opaque;
    if (state->read_only && bdrv_is_writable(bs) && s->nblocks &&
        !s->all_allocated) {
        int ret = write_back(bs, 0, s->nblocks - 1);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write the add-cow bitmap");
            return ret;
        }
    }
    return 0;
}

static void addcow_reopen_commit(BDRVReopenState *state)
{
    (void)state;
}

static void addcow_reopen_abort(BDRVReopenState *state)
{
    (void)state;
}

/* ---- info ---- */

static int coroutine_fn addcow_get_info(BlockDriverState *bs, ImageInfo *info,
                                        GError **errp)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t valid = s->nclusters;
    if (!s->all_allocated && s->nclusters) {
        int ret = load_range(bs, 0, s->nclusters - 1);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read the add-cow bitmap");
            return ret;
        }
        valid = 0;
        for (uint64_t c = 0; c < s->nclusters; c++) {
            valid += get_bit(s, c);
        }
    }
    info->has_cluster_size = true;
    info->cluster_size = (int64_t)s->cluster_size;
    info->has_dirty_flag = true;
    info->dirty_flag = false;

    ImageInfoSpecificAddCow *a = g_new0(ImageInfoSpecificAddCow, 1);
    a->image_file = g_strdup(s->h.image_name);
    a->image_format = g_strdup(s->h.image_fmt);
    a->cluster_bits = s->cluster_bits;
    a->valid_clusters = (int64_t)valid;
    a->total_clusters = (int64_t)s->nclusters;
    a->all_allocated = s->all_allocated;
    a->standalone = s->all_allocated || valid == s->nclusters;
    ImageInfoSpecific *spec = g_new0(ImageInfoSpecific, 1);
    spec->type = IMAGE_INFO_SPECIFIC_KIND_ADD_COW;
    spec->u.add_cow.data = a;
    if (info->has_format_specific) {
        qapi_free_ImageInfoSpecific(info->format_specific);
    }
    info->has_format_specific = true;
    info->format_specific = spec;
    return 0;
}

static int64_t coroutine_fn addcow_allocated_size(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t a = bdrv_co_get_allocated_file_size(bs->file->bs);
    int64_t b = bdrv_co_get_allocated_file_size(s->image->bs);
    if (a < 0) {
        return a;
    }
    return b < 0 ? b : a + b;
}

static void addcow_own_filename(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    if (s->plain_name && bs->file) {
        g_strlcpy(bs->filename, bs->file->bs->filename, sizeof(bs->filename));
    }
}

/* The defaults, plus: growing the image writes zeroes over the part of
 * the new area a longer backing file would otherwise show, so a parent
 * that resizes needs write on the image file too. */
static void addcow_child_perm(BlockDriverState *bs, BdrvChild *c,
                              BdrvChildRole role, uint64_t perm,
                              uint64_t shared, uint64_t *nperm,
                              uint64_t *nshared)
{
    bdrv_default_perms(bs, c, role, perm, shared, nperm, nshared);
    if ((role & BDRV_CHILD_DATA) && (perm & BLK_PERM_RESIZE) &&
        bdrv_is_writable(bs)) {
        *nperm |= BLK_PERM_WRITE;
    }
}

const BlockDriver bdrv_add_cow = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "add-cow",
    .driver = BLOCKDEV_DRIVER_ADD_COW,
    .instance_size = sizeof(BDRVAddCowState),
    .is_format = true,
    .supports_backing = true,
    .bdrv_open = addcow_open,
    .bdrv_close = addcow_close,
    .bdrv_co_preadv = addcow_preadv,
    .bdrv_co_pwritev = addcow_pwritev,
    .bdrv_co_pwrite_zeroes = addcow_pwrite_zeroes,
    .bdrv_co_pdiscard = addcow_pdiscard,
    .bdrv_co_flush_to_os = addcow_flush_to_os,
    .bdrv_co_block_status = addcow_block_status,
    .bdrv_co_truncate = addcow_truncate,
    .bdrv_co_get_info = addcow_get_info,
    .bdrv_co_get_allocated_file_size = addcow_allocated_size,
    .bdrv_co_create = add_cow_co_create,
    .bdrv_child_perm = addcow_child_perm,
    .bdrv_own_filename = addcow_own_filename,
    .bdrv_co_change_backing_file = addcow_change_backing_file,
    .bdrv_reopen_prepare = addcow_reopen_prepare,
    .bdrv_reopen_commit = addcow_reopen_commit,
    .bdrv_reopen_abort = addcow_reopen_abort,
};
