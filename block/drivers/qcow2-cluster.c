/*
 * qcow2 cluster mapping: guest offsets through L1/L2 to host clusters,
 * reads, allocating writes with copy-on-write of partial clusters, zero
 * clusters, discard.
 *
 * Write ordering: guest data reaches the file before the L2 entry that
 * points to it is changed (the entry is updated in the cache only after the
 * data write completed, and L2 tables are written back after a flush);
 * refcounts are raised before the reference (cache dependency) and dropped
 * after it is gone.
 */
#include <errno.h>

#include "block/drivers/qcow2.h"

/* Source of zeroes for copy-on-write padding (largest cluster size). */
static uint8_t zero_buf[1 << QCOW2_MAX_CLUSTER_BITS];

/* dst = bytes [off, off+len) of src, without copying data. */
static void slice_init(IOVector *dst, IOVector *src, size_t off, size_t len)
{
    if (src->niov == 1) {
        qiov_init_buf(dst, (uint8_t *)src->iov[0].iov_base + off, len);
    } else {
        qiov_init(dst, src->niov);
        qiov_concat(dst, src, off, len);
    }
}

/* End of what metadata may point into: the file, or what we allocated
 * beyond it and have not written yet. */
static uint64_t image_end(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t flen = bdrv_getlength(bs->file->bs);
    uint64_t end = flen > 0 ? ROUND_UP((uint64_t)flen, s->cluster_size) : 0;
    return MAX(end, s->fresh_start);
}

static int coroutine_fn l2_load(BlockDriverState *bs, uint64_t l1_index,
                                uint64_t l2_offset, uint64_t **table)
{
    BDRVQcow2State *s = bs->opaque;
    if (qcow2_offset_into_cluster(s, l2_offset)) {
        return qcow2_signal_corruption(
            bs, true, (int64_t)l2_offset, -1,
            "L2 table offset %#" PRIx64 " unaligned (L1 index: %#" PRIx64 ")",
            l2_offset, l1_index);
    }
    if (l2_offset + s->cluster_size > image_end(bs)) {
        return qcow2_signal_corruption(
            bs, true, (int64_t)l2_offset, -1,
            "L2 table offset %#" PRIx64 " beyond the end of the image file "
            "(L1 index: %#" PRIx64 ")",
            l2_offset, l1_index);
    }
    return qcow2_cache_get(bs, s->l2_cache, l2_offset, (void **)table);
}

int coroutine_fn qcow2_get_host_offset(BlockDriverState *bs, uint64_t offset,
                                       uint64_t *bytes, uint64_t *host_offset,
                                       Qcow2ClusterType *type,
                                       uint64_t *l2_entry)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t off_in = qcow2_offset_into_cluster(s, offset);
    uint64_t l1_index = offset >> (s->l2_bits + s->cluster_bits);
    uint64_t l2_index = (offset >> s->cluster_bits) & (s->l2_size - 1);
    uint64_t avail = ((s->l2_size - l2_index) << s->cluster_bits) - off_in;
    if (*bytes > avail) {
        *bytes = avail;
    }
    *host_offset = 0;
    *l2_entry = 0;
    *type = QCOW2_CLUSTER_UNALLOCATED;
    if (l1_index >= s->l1_size) {
        return 0;
    }
    uint64_t l2_offset = s->l1_table[l1_index] & L1E_OFFSET_MASK;
    if (!l2_offset) {
        return 0;
    }
    uint64_t *table;
    int ret = l2_load(bs, l1_index, l2_offset, &table);
    if (ret < 0) {
        return ret;
    }
    uint64_t entry = qcow2_be64(&table[l2_index]);
    Qcow2ClusterType t = qcow2_l2_entry_type(entry, s->version);
    uint64_t nb = (off_in + *bytes + s->cluster_size - 1) >> s->cluster_bits;
    uint64_t i = 1;
    switch (t) {
    case QCOW2_CLUSTER_NORMAL:
    case QCOW2_CLUSTER_ZERO_ALLOC: {
        uint64_t host = entry & L2E_OFFSET_MASK;
        if (qcow2_offset_into_cluster(s, host)) {
            qcow2_cache_put(s->l2_cache, (void **)&table);
            return qcow2_signal_corruption(
                bs, true, (int64_t)host, -1,
                "Cluster allocation offset %#" PRIx64
                " unaligned (L2 offset: %#" PRIx64 ", L2 index: %#" PRIx64 ")",
                host, l2_offset, l2_index);
        }
        if (host + s->cluster_size > image_end(bs)) {
            qcow2_cache_put(s->l2_cache, (void **)&table);
            return qcow2_signal_corruption(
                bs, true, (int64_t)host, -1,
                "Data cluster offset %#" PRIx64 " beyond the end of the image "
                "file (L2 offset: %#" PRIx64 ", L2 index: %#" PRIx64 ")",
                host, l2_offset, l2_index);
        }
        *host_offset = host + off_in;
        if (t == QCOW2_CLUSTER_ZERO_ALLOC) {
            break; /* one at a time */
        }
        for (; i < nb; i++) {
            uint64_t e = qcow2_be64(&table[l2_index + i]);
            if (qcow2_l2_entry_type(e, s->version) != t ||
                (e & L2E_OFFSET_MASK) != host + (i << s->cluster_bits) ||
                (e & QCOW_OFLAG_COPIED) != (entry & QCOW_OFLAG_COPIED)) {
                break;
            }
        }
        break;
    }
    case QCOW2_CLUSTER_COMPRESSED:
        break;
    default:
        for (; i < nb; i++) {
            uint64_t e = qcow2_be64(&table[l2_index + i]);
            if (qcow2_l2_entry_type(e, s->version) != t) {
                break;
            }
        }
        break;
    }
    qcow2_cache_put(s->l2_cache, (void **)&table);
    uint64_t len = (i << s->cluster_bits) - off_in;
    if (*bytes > len) {
        *bytes = len;
    }
    *type = t;
    *l2_entry = entry;
    return 0;
}

/* ---- reads ---- */

/* Read guest [offset, offset+bytes) of the backing file into qiov (zeroes
 * beyond its end, or without one). */
static int coroutine_fn read_backing(BlockDriverState *bs, uint64_t offset,
                                     uint64_t bytes, IOVector *qiov,
                                     size_t qoff)
{
    if (!bs->backing) {
        qiov_memset(qiov, qoff, 0, bytes);
        return 0;
    }
    int64_t blen = bdrv_getlength(bs->backing->bs);
    if (blen < 0) {
        return (int)blen;
    }
    uint64_t n = 0;
    if ((uint64_t)blen > offset) {
        n = MIN(bytes, (uint64_t)blen - offset);
    }
    if (n) {
        IOVector sub;
        slice_init(&sub, qiov, qoff, n);
        BLKDBG_EVENT(bs->file, BLKDBG_READ_BACKING_AIO);
        int ret = bdrv_co_preadv(bs->backing, (int64_t)offset, (int64_t)n,
                                 &sub, 0);
        qiov_destroy(&sub);
        if (ret < 0) {
            return ret;
        }
    }
    if (n < bytes) {
        qiov_memset(qiov, qoff + n, 0, bytes - n);
    }
    return 0;
}

/* Decompress the cluster described by `entry` into `out` (cluster size). */
static int coroutine_fn read_compressed_cluster(BlockDriverState *bs,
                                                uint64_t entry, uint8_t *out)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t host, len;
    qcow2_compressed_decode(entry, s->cluster_bits, &host, &len);
    int64_t flen = bdrv_getlength(bs->file->bs);
    if (flen >= 0 && host < (uint64_t)flen && host + len > (uint64_t)flen) {
        len = (uint64_t)flen - host; /* the last sector may be short */
    }
    uint8_t *in = g_try_malloc(len ? len : 1);
    if (!in) {
        return -ENOMEM;
    }
    BLKDBG_EVENT(bs->file, BLKDBG_READ_COMPRESSED);
    int ret = bdrv_co_pread(bs->file, (int64_t)host, (int64_t)len, in, 0);
    if (ret == 0) {
        ret = qcow2_co_decompress(out, s->cluster_size, in, len);
        if (ret < 0) {
            ret = qcow2_signal_corruption(
                bs, false, (int64_t)host, (int64_t)len,
                "Could not decompress cluster data at %#" PRIx64, host);
        }
    }
    g_free(in);
    return ret;
}

int coroutine_fn qcow2_co_preadv_data(BlockDriverState *bs, uint64_t offset,
                                      uint64_t bytes, IOVector *qiov,
                                      size_t qoff)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t *cbuf = NULL;
    int ret = 0;
    while (bytes > 0) {
        uint64_t cur = bytes, host, entry;
        Qcow2ClusterType type;
        co_mutex_lock(&s->lock);
        ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type, &entry);
        co_mutex_unlock(&s->lock);
        if (ret < 0) {
            break;
        }
        switch (type) {
        case QCOW2_CLUSTER_UNALLOCATED:
            ret = read_backing(bs, offset, cur, qiov, qoff);
            break;
        case QCOW2_CLUSTER_ZERO_PLAIN:
        case QCOW2_CLUSTER_ZERO_ALLOC:
            qiov_memset(qiov, qoff, 0, cur);
            break;
        case QCOW2_CLUSTER_NORMAL: {
            IOVector sub;
            slice_init(&sub, qiov, qoff, cur);
            BLKDBG_EVENT(bs->file, BLKDBG_READ_AIO);
            ret = bdrv_co_preadv(bs->file, (int64_t)host, (int64_t)cur, &sub,
                                 0);
            qiov_destroy(&sub);
            break;
        }
        case QCOW2_CLUSTER_COMPRESSED:
            if (!cbuf) {
                cbuf = g_try_malloc(s->cluster_size);
                if (!cbuf) {
                    ret = -ENOMEM;
                    break;
                }
            }
            ret = read_compressed_cluster(bs, entry, cbuf);
            if (ret == 0) {
                qiov_from_buf(qiov, qoff,
                              cbuf + qcow2_offset_into_cluster(s, offset), cur);
            }
            break;
        }
        if (ret < 0) {
            break;
        }
        offset += cur;
        qoff += cur;
        bytes -= cur;
    }
    g_free(cbuf);
    return ret;
}

/* ---- L1/L2 updates ---- */

/* Write the 512-byte part of the active L1 table holding `index`. */
static int coroutine_fn write_l1_entry(BlockDriverState *bs, uint64_t index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t first = index & ~63ULL;
    uint64_t n = MIN(64, (uint64_t)s->l1_size - first);
    uint8_t buf[512];
    for (uint64_t i = 0; i < n; i++) {
        qcow2_put_be64(buf + i * 8, s->l1_table[first + i]);
    }
    int64_t off = (int64_t)(s->l1_table_offset + first * 8);
    int ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L1, off,
                                            (int64_t)(n * 8));
    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, BLKDBG_L1_UPDATE);
    return bdrv_co_pwrite(bs->file, off, (int64_t)(n * 8), buf, 0);
}

int coroutine_fn qcow2_get_l2_for_write(BlockDriverState *bs, uint64_t offset,
                                        uint64_t **table, int *index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1_index = offset >> (s->l2_bits + s->cluster_bits);
    *index = (int)((offset >> s->cluster_bits) & (s->l2_size - 1));
    if (l1_index >= s->l1_size) {
        int ret = qcow2_grow_l1_table(bs, l1_index + 1);
        if (ret < 0) {
            return ret;
        }
    }
    uint64_t l1e = s->l1_table[l1_index];
    uint64_t old = l1e & L1E_OFFSET_MASK;
    if (old && (l1e & QCOW_OFLAG_COPIED)) {
        return l2_load(bs, l1_index, old, table);
    }

    /* A new table, or a private copy of one shared with a snapshot. */
    BLKDBG_EVENT(bs->file, BLKDBG_L2_ALLOC_WRITE);
    int64_t new = qcow2_alloc_clusters(bs, s->cluster_size);
    if (new < 0) {
        return (int)new;
    }
    uint64_t *t;
    int ret;
    if (old) {
        uint64_t *o;
        BLKDBG_EVENT(bs->file, BLKDBG_L2_ALLOC_COW_READ);
        ret = l2_load(bs, l1_index, old, &o);
        if (ret < 0) {
            goto fail_free;
        }
        ret = qcow2_cache_get_empty(bs, s->l2_cache, (uint64_t)new,
                                    (void **)&t);
        if (ret < 0) {
            qcow2_cache_put(s->l2_cache, (void **)&o);
            goto fail_free;
        }
        memcpy(t, o, s->cluster_size);
        qcow2_cache_put(s->l2_cache, (void **)&o);
    } else {
        ret = qcow2_cache_get_empty(bs, s->l2_cache, (uint64_t)new,
                                    (void **)&t);
        if (ret < 0) {
            goto fail_free;
        }
        memset(t, 0, s->cluster_size);
    }
    /* The refcount of the new table reaches the disk before the table,
     * the table before the L1 entry that points to it. */
    ret = qcow2_cache_flush(bs, s->rc_cache);
    if (ret == 0) {
        ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L2, new,
                                            (int64_t)s->cluster_size);
    }
    if (ret == 0) {
        ret = bdrv_co_pwrite(bs->file, new, (int64_t)s->cluster_size, t, 0);
    }
    if (ret < 0) {
        qcow2_cache_put(s->l2_cache, (void **)&t);
        qcow2_cache_discard(s->l2_cache, (uint64_t)new);
        goto fail_free;
    }
    s->l1_table[l1_index] = (uint64_t)new | QCOW_OFLAG_COPIED;
    ret = write_l1_entry(bs, l1_index);
    if (ret < 0) {
        s->l1_table[l1_index] = l1e;
        qcow2_cache_put(s->l2_cache, (void **)&t);
        qcow2_cache_discard(s->l2_cache, (uint64_t)new);
        goto fail_free;
    }
    if (old) {
        qcow2_free_clusters(bs, old, s->cluster_size);
    }
    *table = t;
    return 0;

fail_free:
    qcow2_free_clusters(bs, (uint64_t)new, s->cluster_size);
    return ret;
}

int coroutine_fn qcow2_grow_l1_table(BlockDriverState *bs, uint64_t min_size)
{
    BDRVQcow2State *s = bs->opaque;
    if (min_size <= s->l1_size) {
        return 0;
    }
    if (min_size > QCOW2_MAX_L1_BYTES / 8) {
        return -EFBIG;
    }
    uint64_t bytes = ROUND_UP(min_size * 8, s->cluster_size);
    uint64_t new_size = min_size;
    BLKDBG_EVENT(bs->file, BLKDBG_L1_GROW_ALLOC_TABLE);
    int64_t new = qcow2_alloc_clusters(bs, bytes);
    if (new < 0) {
        return (int)new;
    }
    uint8_t *buf = g_malloc0(bytes);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        qcow2_put_be64(buf + i * 8, s->l1_table[i]);
    }
    BLKDBG_EVENT(bs->file, BLKDBG_L1_GROW_WRITE_TABLE);
    int ret = qcow2_cache_flush(bs, s->rc_cache);
    if (ret == 0) {
        ret = qcow2_pre_write_overlap_check(bs, 0, new, (int64_t)bytes);
    }
    if (ret == 0) {
        ret = bdrv_co_pwrite(bs->file, new, (int64_t)bytes, buf, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret == 0) {
        uint8_t hdr[12];
        qcow2_put_be32(hdr, (uint32_t)new_size);
        qcow2_put_be64(hdr + 4, (uint64_t)new);
        BLKDBG_EVENT(bs->file, BLKDBG_L1_GROW_ACTIVATE_TABLE);
        ret = bdrv_co_pwrite(bs->file, 36, sizeof(hdr), hdr, 0);
    }
    g_free(buf);
    if (ret < 0) {
        qcow2_free_clusters(bs, (uint64_t)new, bytes);
        return ret;
    }
    uint64_t old_off = s->l1_table_offset;
    uint64_t old_bytes = ROUND_UP((uint64_t)s->l1_size * 8, s->cluster_size);
    uint64_t *nt = g_malloc0(bytes);
    memcpy(nt, s->l1_table, (size_t)s->l1_size * 8);
    g_free(s->l1_table);
    s->l1_table = nt;
    s->l1_alloc = (uint32_t)(bytes / 8);
    uint32_t old_size = s->l1_size;
    s->l1_size = (uint32_t)new_size;
    s->l1_table_offset = (uint64_t)new;
    if (old_size) {
        qcow2_free_clusters(bs, old_off, old_bytes);
    }
    return 0;
}

/* ---- in-flight allocations ---- */

/*
 * If an allocating request overlaps guest [start, *end), either shorten
 * the range to stop before it (returns false) or, if it covers `start`,
 * wait for it to finish (returns true: the caller looks again).
 */
static bool coroutine_fn wait_for_allocs(BDRVQcow2State *s, uint64_t start,
                                         uint64_t *end)
{
    Qcow2InflightAlloc *a;
    LIST_FOREACH(a, &s->allocs, next)
    {
        if (a->end <= start || a->start >= *end) {
            continue;
        }
        if (a->start <= start) {
            co_queue_wait(&a->waiters, &s->lock);
            return true;
        }
        *end = a->start;
    }
    return false;
}

static void alloc_done(Qcow2InflightAlloc *a)
{
    LIST_REMOVE(a, next);
    co_queue_restart_all(&a->waiters);
}

/* ---- writes ---- */

/*
 * Fill buf (len bytes) with the current content of guest
 * [guest_off, guest_off+len), which lies in one cluster whose old L2 entry
 * is `entry` of type `type` (host: its old host cluster, if any).
 */
static int coroutine_fn read_cow(BlockDriverState *bs, uint64_t guest_off,
                                 uint64_t len, Qcow2ClusterType type,
                                 uint64_t entry, uint64_t old_host,
                                 uint8_t *buf, uint8_t **cbuf)
{
    BDRVQcow2State *s = bs->opaque;
    IOVector q;
    switch (type) {
    case QCOW2_CLUSTER_UNALLOCATED:
        qiov_init_buf(&q, buf, len);
        BLKDBG_EVENT(bs->file, BLKDBG_COW_READ);
        return read_backing(bs, guest_off, len, &q, 0);
    case QCOW2_CLUSTER_NORMAL:
        BLKDBG_EVENT(bs->file, BLKDBG_COW_READ);
        return bdrv_co_pread(bs->file,
                             (int64_t)(old_host +
                                       qcow2_offset_into_cluster(s, guest_off)),
                             (int64_t)len, buf, 0);
    case QCOW2_CLUSTER_COMPRESSED: {
        if (!*cbuf) {
            *cbuf = g_try_malloc(s->cluster_size);
            if (!*cbuf) {
                return -ENOMEM;
            }
        }
        BLKDBG_EVENT(bs->file, BLKDBG_COW_READ);
        int ret = read_compressed_cluster(bs, entry, *cbuf);
        if (ret == 0) {
            memcpy(buf, *cbuf + qcow2_offset_into_cluster(s, guest_off), len);
        }
        return ret;
    }
    default:
        memset(buf, 0, len);
        return 0;
    }
}

static bool cow_is_zero(BlockDriverState *bs, Qcow2ClusterType type)
{
    return type == QCOW2_CLUSTER_ZERO_PLAIN ||
           type == QCOW2_CLUSTER_ZERO_ALLOC ||
           (type == QCOW2_CLUSTER_UNALLOCATED && !bs->backing);
}

/*
 * Point the L2 entries of guest clusters [gstart, gstart + n clusters) at
 * host clusters from `host` on, dropping the references the old entries
 * held (unless `reuse`: the host cluster is the old one).
 */
static int coroutine_fn link_l2(BlockDriverState *bs, uint64_t gstart,
                                uint64_t n, uint64_t host, bool reuse)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *table;
    int idx;
    int ret = qcow2_get_l2_for_write(bs, gstart, &table, &idx);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_cache_set_dependency(bs, s->l2_cache, s->rc_cache);
    if (ret < 0) {
        qcow2_cache_put(s->l2_cache, (void **)&table);
        return ret;
    }
    qcow2_cache_depends_on_flush(s->l2_cache);
    BLKDBG_EVENT(bs->file, BLKDBG_L2_UPDATE);
    uint64_t old[64];
    uint64_t nold = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t o = qcow2_be64(&table[idx + i]);
        qcow2_put_be64(&table[idx + i],
                       (host + (i << s->cluster_bits)) | QCOW_OFLAG_COPIED);
        if (!reuse) {
            Qcow2ClusterType t = qcow2_l2_entry_type(o, s->version);
            if (t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC ||
                t == QCOW2_CLUSTER_COMPRESSED) {
                if (nold == G_N_ELEMENTS(old)) {
                    qcow2_cache_mark_dirty(s->l2_cache, table);
                    for (uint64_t j = 0; j < nold; j++) {
                        qcow2_free_any_cluster(bs, old[j]);
                    }
                    nold = 0;
                }
                old[nold++] = o;
            }
        }
    }
    qcow2_cache_mark_dirty(s->l2_cache, table);
    qcow2_cache_put(s->l2_cache, (void **)&table);
    for (uint64_t j = 0; j < nold; j++) {
        qcow2_free_any_cluster(bs, old[j]);
    }
    return 0;
}

/* One allocating write: [offset, offset+cur) whose clusters all have the
 * old type/entry described.  Called with s->lock held; returns with it. */
static int coroutine_fn write_allocating(BlockDriverState *bs, uint64_t offset,
                                         uint64_t cur, IOVector *qiov,
                                         size_t qoff, Qcow2ClusterType type,
                                         uint64_t entry, uint64_t old_host)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cstart = qcow2_start_of_cluster(s, offset);
    uint64_t cend = ROUND_UP(offset + cur, s->cluster_size);
    uint64_t n = (cend - cstart) >> s->cluster_bits;
    uint64_t old_cluster = old_host ? qcow2_start_of_cluster(s, old_host) : 0;
    bool reuse = type == QCOW2_CLUSTER_ZERO_ALLOC &&
                 (entry & QCOW_OFLAG_COPIED);
    int64_t host;
    bool fresh = false;
    int ret;

    if (reuse) {
        host = (int64_t)old_cluster;
    } else {
        uint64_t fresh_before = s->fresh_start;
        BLKDBG_EVENT(bs->file, BLKDBG_CLUSTER_ALLOC);
        host = qcow2_alloc_clusters(bs, n << s->cluster_bits);
        if (host < 0) {
            return (int)host;
        }
        fresh = (uint64_t)host >= fresh_before;
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, host,
                                        (int64_t)(n << s->cluster_bits));
    if (ret < 0) {
        if (!reuse) {
            qcow2_free_clusters(bs, (uint64_t)host, n << s->cluster_bits);
        }
        return ret;
    }
    Qcow2InflightAlloc a = { .start = cstart, .end = cend };
    co_queue_init(&a.waiters);
    LIST_INSERT_HEAD(&s->allocs, &a, next);
    co_mutex_unlock(&s->lock);

    uint64_t head = offset - cstart;
    uint64_t tail = cend - (offset + cur);
    bool zero_cow = cow_is_zero(bs, type);
    uint8_t *head_buf = NULL, *tail_buf = NULL, *cbuf = NULL;
    IOVector wq;
    ret = 0;
    if (!zero_cow) {
        if (head) {
            head_buf = blk_memalign(4096, head);
            ret = read_cow(bs, cstart, head, type, entry, old_cluster,
                           head_buf, &cbuf);
        }
        if (ret == 0 && tail) {
            uint64_t tstart = offset + cur;
            uint64_t last = qcow2_start_of_cluster(s, tstart);
            uint64_t last_host =
                old_cluster ? old_cluster + (last - cstart) : 0;
            tail_buf = blk_memalign(4096, tail);
            ret = read_cow(bs, tstart, tail, type, entry, last_host, tail_buf,
                           &cbuf);
        }
    }
    if (ret == 0) {
        if (fresh && zero_cow) {
            /* Beyond the old end of file: the padding is a hole already. */
            slice_init(&wq, qiov, qoff, cur);
            BLKDBG_EVENT(bs->file, BLKDBG_WRITE_AIO);
            ret = bdrv_co_pwritev(bs->file, host + (int64_t)head, (int64_t)cur,
                                  &wq, 0);
        } else {
            qiov_init(&wq, qiov->niov + 2);
            if (head) {
                qiov_add(&wq, head_buf ? head_buf : zero_buf, head);
            }
            qiov_concat(&wq, qiov, qoff, cur);
            if (tail) {
                qiov_add(&wq, tail_buf ? tail_buf : zero_buf, tail);
            }
            BLKDBG_EVENT(bs->file, BLKDBG_WRITE_AIO);
            ret = bdrv_co_pwritev(bs->file, host,
                                  (int64_t)(n << s->cluster_bits), &wq, 0);
        }
        qiov_destroy(&wq);
    }
    blk_vfree(head_buf);
    blk_vfree(tail_buf);
    g_free(cbuf);

    co_mutex_lock(&s->lock);
    if (ret == 0) {
        ret = link_l2(bs, cstart, n, (uint64_t)host, reuse);
    }
    if (ret < 0 && !reuse) {
        qcow2_free_clusters(bs, (uint64_t)host, n << s->cluster_bits);
    }
    alloc_done(&a);
    return ret;
}

int coroutine_fn qcow2_co_pwritev_data(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes, IOVector *qiov,
                                       size_t qoff)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = 0;
    co_mutex_lock(&s->lock);
    while (bytes > 0) {
        if (s->corrupt_fatal) {
            ret = -EIO;
            break;
        }
        uint64_t cur = bytes, host, entry;
        Qcow2ClusterType type;
        ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type, &entry);
        if (ret < 0) {
            break;
        }
        if (type == QCOW2_CLUSTER_NORMAL && (entry & QCOW_OFLAG_COPIED)) {
            /* In place: no metadata changes, but a damaged L2 entry must
             * not make guest data overwrite metadata. */
            ret = qcow2_pre_write_overlap_check(bs, 0, (int64_t)host,
                                                (int64_t)cur);
            if (ret < 0) {
                break;
            }
            co_mutex_unlock(&s->lock);
            IOVector sub;
            slice_init(&sub, qiov, qoff, cur);
            BLKDBG_EVENT(bs->file, BLKDBG_WRITE_AIO);
            ret = bdrv_co_pwritev(bs->file, (int64_t)host, (int64_t)cur, &sub,
                                  0);
            qiov_destroy(&sub);
            co_mutex_lock(&s->lock);
            if (ret < 0) {
                break;
            }
        } else {
            uint64_t cstart = qcow2_start_of_cluster(s, offset);
            uint64_t cend = ROUND_UP(offset + cur, s->cluster_size);
            if (wait_for_allocs(s, cstart, &cend)) {
                continue; /* the mapping may have changed: look again */
            }
            if (offset + cur > cend) {
                cur = cend - offset;
            }
            ret = write_allocating(bs, offset, cur, qiov, qoff, type, entry,
                                   host);
            if (ret < 0) {
                break;
            }
        }
        offset += cur;
        qoff += cur;
        bytes -= cur;
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- zero clusters and discard ---- */

/*
 * Discard in the file the host clusters of `entries` that are now free
 * (contiguous ones together).  Done with s->lock held, so nothing can
 * reuse a cluster before its discard completes.  Failures are ignored:
 * discard is advisory.
 */
static void coroutine_fn pass_discards(BlockDriverState *bs,
                                       const uint64_t *entries, uint64_t n)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t run_start = 0, run_len = 0;
    for (uint64_t i = 0; i <= n; i++) {
        uint64_t host = 0;
        if (i < n) {
            Qcow2ClusterType t = qcow2_l2_entry_type(entries[i], s->version);
            if (t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC) {
                uint64_t rc = 1;
                host = entries[i] & L2E_OFFSET_MASK;
                if (qcow2_get_refcount(bs, host >> s->cluster_bits, &rc) < 0 ||
                    rc != 0) {
                    host = 0;
                }
            }
        }
        if (host && run_len && host == run_start + run_len) {
            run_len += s->cluster_size;
            continue;
        }
        if (run_len) {
            bdrv_co_pdiscard(bs->file, (int64_t)run_start, (int64_t)run_len);
        }
        run_start = host;
        run_len = host ? s->cluster_size : 0;
    }
}

/*
 * Apply `op` to whole guest clusters [offset, offset+bytes) (the end may
 * be the unaligned end of the disk).  Caller holds s->lock.
 */
typedef enum { OP_ZERO, OP_ZERO_UNMAP, OP_DISCARD } ClusterOp;

static int coroutine_fn cluster_op(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes, ClusterOp op)
{
    BDRVQcow2State *s = bs->opaque;
    while (bytes > 0) {
        if (s->corrupt_fatal) {
            return -EIO;
        }
        uint64_t l1_index = offset >> (s->l2_bits + s->cluster_bits);
        uint64_t l2_index = (offset >> s->cluster_bits) & (s->l2_size - 1);
        uint64_t n = MIN(s->l2_size - l2_index,
                         (bytes + s->cluster_size - 1) >> s->cluster_bits);
        uint64_t chunk = MIN(bytes, n << s->cluster_bits);
        uint64_t end = offset + (n << s->cluster_bits);
        if (wait_for_allocs(s, offset, &end)) {
            continue;
        }
        if (end < offset + (n << s->cluster_bits)) {
            n = (end - offset) >> s->cluster_bits;
            chunk = MIN(bytes, n << s->cluster_bits);
        }
        bool have_table = l1_index < s->l1_size &&
                          (s->l1_table[l1_index] & L1E_OFFSET_MASK);
        if (!have_table && (op == OP_DISCARD || !bs->backing)) {
            /* Nothing allocated here and nothing to hide. */
            offset += chunk;
            bytes -= chunk;
            continue;
        }
        uint64_t *table;
        int idx;
        int ret = qcow2_get_l2_for_write(bs, offset, &table, &idx);
        if (ret < 0) {
            return ret;
        }
        uint64_t freed[64];
        uint64_t nfreed = 0;
        bool dirty = false;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t o = qcow2_be64(&table[idx + (int)i]);
            Qcow2ClusterType t = qcow2_l2_entry_type(o, s->version);
            uint64_t nv = o;
            bool drop = false;
            if (op == OP_DISCARD) {
                if (t == QCOW2_CLUSTER_UNALLOCATED ||
                    t == QCOW2_CLUSTER_ZERO_PLAIN) {
                    continue;
                }
                nv = (s->version >= 3 && bs->backing) ? QCOW_OFLAG_ZERO : 0;
                drop = true;
            } else {
                switch (t) {
                case QCOW2_CLUSTER_UNALLOCATED:
                    if (!bs->backing) {
                        continue;
                    }
                    nv = QCOW_OFLAG_ZERO;
                    break;
                case QCOW2_CLUSTER_ZERO_PLAIN:
                    continue;
                case QCOW2_CLUSTER_ZERO_ALLOC:
                    if (op != OP_ZERO_UNMAP) {
                        continue;
                    }
                    nv = QCOW_OFLAG_ZERO;
                    drop = true;
                    break;
                case QCOW2_CLUSTER_NORMAL:
                    if (op == OP_ZERO && (o & QCOW_OFLAG_COPIED)) {
                        nv = o | QCOW_OFLAG_ZERO; /* keep the allocation */
                    } else {
                        nv = QCOW_OFLAG_ZERO;
                        drop = true;
                    }
                    break;
                case QCOW2_CLUSTER_COMPRESSED:
                    nv = QCOW_OFLAG_ZERO;
                    drop = true;
                    break;
                }
            }
            if (!dirty) {
                /* The cleared entries reach the disk before any refcount
                 * they release (set by the free below). */
                dirty = true;
            }
            qcow2_put_be64(&table[idx + (int)i], nv);
            if (drop) {
                if (nfreed == G_N_ELEMENTS(freed)) {
                    qcow2_cache_mark_dirty(s->l2_cache, table);
                    for (uint64_t j = 0; j < nfreed; j++) {
                        qcow2_free_any_cluster(bs, freed[j]);
                    }
                    if (op != OP_ZERO && s->discard_passthrough) {
                        pass_discards(bs, freed, nfreed);
                    }
                    nfreed = 0;
                }
                freed[nfreed++] = o;
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(s->l2_cache, table);
        }
        qcow2_cache_put(s->l2_cache, (void **)&table);
        for (uint64_t j = 0; j < nfreed; j++) {
            qcow2_free_any_cluster(bs, freed[j]);
        }
        if (op != OP_ZERO && s->discard_passthrough) {
            pass_discards(bs, freed, nfreed);
        }
        offset += chunk;
        bytes -= chunk;
    }
    return 0;
}

int coroutine_fn qcow2_cluster_zeroize(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes, bool may_unmap)
{
    BDRVQcow2State *s = bs->opaque;
    co_mutex_lock(&s->lock);
    int ret = cluster_op(bs, offset, bytes, may_unmap ? OP_ZERO_UNMAP : OP_ZERO);
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_cluster_discard(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    co_mutex_lock(&s->lock);
    int ret = cluster_op(bs, offset, bytes, OP_DISCARD);
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_any_allocated_from(BlockDriverState *bs,
                                          uint64_t offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t first = ROUND_UP(offset, s->cluster_size) >> s->cluster_bits;
    int found = 0;
    co_mutex_lock(&s->lock);
    for (uint64_t l1 = first >> s->l2_bits; l1 < s->l1_size && !found; l1++) {
        uint64_t l2_offset = s->l1_table[l1] & L1E_OFFSET_MASK;
        if (!l2_offset) {
            continue;
        }
        uint64_t *table;
        int ret = l2_load(bs, l1, l2_offset, &table);
        if (ret < 0) {
            found = ret;
            break;
        }
        uint64_t i0 = (l1 == (first >> s->l2_bits)) ? (first & (s->l2_size - 1))
                                                     : 0;
        for (uint64_t i = i0; i < s->l2_size; i++) {
            if (qcow2_be64(&table[i])) {
                found = 1;
                break;
            }
        }
        qcow2_cache_put(s->l2_cache, (void **)&table);
    }
    co_mutex_unlock(&s->lock);
    return found;
}

/* ---- compressed writes ---- */

int coroutine_fn qcow2_co_pwrite_compressed(BlockDriverState *bs,
                                            uint64_t offset, uint64_t bytes,
                                            IOVector *qiov)
{
    BDRVQcow2State *s = bs->opaque;
    if (qcow2_offset_into_cluster(s, offset) ||
        (bytes != s->cluster_size && offset + bytes != s->size) ||
        bytes > s->cluster_size) {
        return -EINVAL;
    }
    uint8_t *in = g_malloc0(s->cluster_size);
    uint8_t *out = g_malloc(s->cluster_size);
    qiov_to_buf(qiov, 0, in, bytes);
    int ret;
    int64_t clen = qcow2_co_compress(out, s->cluster_size - 1, in,
                                     s->cluster_size);
    if (clen == -ENOSPC) {
        /* Incompressible: store it as a normal cluster. */
        g_free(in);
        g_free(out);
        return qcow2_co_pwritev_data(bs, offset, bytes, qiov, 0);
    }
    if (clen < 0) {
        ret = (int)clen;
        goto out;
    }
    co_mutex_lock(&s->lock);
    for (;;) {
        uint64_t end = offset + s->cluster_size;
        if (!wait_for_allocs(s, offset, &end)) {
            break;
        }
    }
    if (s->corrupt_fatal) {
        co_mutex_unlock(&s->lock);
        ret = -EIO;
        goto out;
    }
    int64_t host = qcow2_alloc_bytes(bs, (int)clen);
    if (host < 0) {
        co_mutex_unlock(&s->lock);
        ret = (int)host;
        goto out;
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, host, clen);
    if (ret < 0) {
        qcow2_free_clusters(bs, (uint64_t)host, (uint64_t)clen);
        co_mutex_unlock(&s->lock);
        goto out;
    }
    Qcow2InflightAlloc a = { .start = offset, .end = offset + s->cluster_size };
    co_queue_init(&a.waiters);
    LIST_INSERT_HEAD(&s->allocs, &a, next);
    co_mutex_unlock(&s->lock);

    BLKDBG_EVENT(bs->file, BLKDBG_WRITE_COMPRESSED);
    ret = bdrv_co_pwrite(bs->file, host, clen, out, 0);

    co_mutex_lock(&s->lock);
    if (ret == 0) {
        uint64_t *table;
        int idx;
        ret = qcow2_get_l2_for_write(bs, offset, &table, &idx);
        if (ret == 0) {
            ret = qcow2_cache_set_dependency(bs, s->l2_cache, s->rc_cache);
            qcow2_cache_depends_on_flush(s->l2_cache);
            uint64_t o = qcow2_be64(&table[idx]);
            if (ret == 0) {
                BLKDBG_EVENT(bs->file, BLKDBG_L2_UPDATE_COMPRESSED);
                qcow2_put_be64(&table[idx],
                               qcow2_compressed_encode((uint64_t)host,
                                                       (uint64_t)clen,
                                                       s->cluster_bits));
                qcow2_cache_mark_dirty(s->l2_cache, table);
            }
            qcow2_cache_put(s->l2_cache, (void **)&table);
            if (ret == 0) {
                qcow2_free_any_cluster(bs, o);
            }
        }
    }
    if (ret < 0) {
        qcow2_free_clusters(bs, (uint64_t)host, (uint64_t)clen);
    }
    alloc_done(&a);
    co_mutex_unlock(&s->lock);
out:
    g_free(in);
    g_free(out);
    return ret;
}

/* ---- preallocation ---- */

int coroutine_fn qcow2_preallocate(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes, bool known_zero,
                                   uint64_t *host_end)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = 0;
    *host_end = 0;
    co_mutex_lock(&s->lock);
    while (bytes > 0) {
        uint64_t cur = bytes, host, entry;
        Qcow2ClusterType type;
        ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type, &entry);
        if (ret < 0) {
            break;
        }
        uint64_t cstart = qcow2_start_of_cluster(s, offset);
        uint64_t cend = ROUND_UP(offset + cur, s->cluster_size);
        if (type == QCOW2_CLUSTER_UNALLOCATED ||
            type == QCOW2_CLUSTER_ZERO_PLAIN) {
            uint64_t n = (cend - cstart) >> s->cluster_bits;
            uint64_t fresh_before = s->fresh_start;
            int64_t h = qcow2_alloc_clusters(bs, n << s->cluster_bits);
            if (h < 0) {
                ret = (int)h;
                break;
            }
            if ((uint64_t)h < fresh_before && !known_zero) {
                /* Reused space may hold old data; the guest must see
                 * zeroes there. */
                ret = bdrv_co_pwrite_zeroes(bs->file, h,
                                            (int64_t)(n << s->cluster_bits), 0);
                if (ret < 0) {
                    qcow2_free_clusters(bs, (uint64_t)h, n << s->cluster_bits);
                    break;
                }
            }
            ret = link_l2(bs, cstart, n, (uint64_t)h, false);
            if (ret < 0) {
                qcow2_free_clusters(bs, (uint64_t)h, n << s->cluster_bits);
                break;
            }
            *host_end = MAX(*host_end, (uint64_t)h + (n << s->cluster_bits));
        } else if (host) {
            *host_end = MAX(*host_end, qcow2_start_of_cluster(s, host) +
                                           (cend - cstart));
        }
        uint64_t adv = cend - offset;
        if (adv > bytes) {
            adv = bytes;
        }
        offset += adv;
        bytes -= adv;
    }
    co_mutex_unlock(&s->lock);
    return ret;
}
