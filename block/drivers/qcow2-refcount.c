/*
 * qcow2 refcounts: the refcount table, refcount blocks of any width
 * (1..64 bits), cluster allocation and freeing.
 *
 * Crash safety: a new refcount block is written before the table entry that
 * points to it; a grown refcount table is written (with its new blocks) and
 * flushed before the header switches to it, and the old table is freed only
 * afterwards.  Refcount increments are ordered before the references that
 * need them, decrements after the references are gone, through the cache
 * dependencies set here.
 */
#include <errno.h>

#include "block/drivers/qcow2.h"

int coroutine_fn qcow2_refcount_init(BlockDriverState *bs, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t bytes = (uint64_t)s->reftable_clusters << s->cluster_bits;
    s->reftable_size = bytes / 8;
    s->reftable = g_try_malloc(bytes ? bytes : 8);
    if (!s->reftable) {
        /* QEMU's wording for any failure here */
        error_setg_errno(errp, ENOMEM,
                         "Could not initialize refcount handling");
        return -ENOMEM;
    }
    if (bytes) {
        BLKDBG_EVENT(bs->file, BLKDBG_REFTABLE_LOAD);
        int ret = bdrv_co_pread(bs->file, (int64_t)s->reftable_offset,
                                (int64_t)bytes, s->reftable, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret,
                             "Could not initialize refcount handling");
            return ret;
        }
    }
    s->reftable_used = 0;
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        s->reftable[i] = qcow2_be64(&s->reftable[i]);
        if (s->reftable[i]) {
            s->reftable_used = i + 1;
        }
    }
    return 0;
}

void qcow2_refcount_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    g_free(s->reftable);
    s->reftable = NULL;
}

/* The refcount block for `block_index`; *block NULL if there is none. */
static int coroutine_fn get_refblock(BlockDriverState *bs,
                                     uint64_t block_index, void **block)
{
    BDRVQcow2State *s = bs->opaque;
    *block = NULL;
    if (block_index >= s->reftable_size) {
        return 0;
    }
    uint64_t off = s->reftable[block_index] & REFT_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, off)) {
        return qcow2_signal_corruption(
            bs, true, (int64_t)off, -1,
            "Refblock offset %#" PRIx64 " unaligned (reftable index: %#" PRIx64
            ")",
            off, block_index);
    }
    return qcow2_cache_get(bs, s->rc_cache, off, block);
}

int coroutine_fn qcow2_get_refcount(BlockDriverState *bs,
                                    uint64_t cluster_index,
                                    uint64_t *refcount)
{
    BDRVQcow2State *s = bs->opaque;
    void *block;
    int ret = get_refblock(bs, cluster_index >> s->refblock_bits, &block);
    if (ret < 0) {
        return ret;
    }
    if (!block) {
        *refcount = 0;
        return 0;
    }
    *refcount = qcow2_refcount_get(
        block, s->refcount_order,
        cluster_index & ((1ULL << s->refblock_bits) - 1));
    qcow2_cache_put(s->rc_cache, &block);
    return 0;
}

bool qcow2_overlaps_refblock(BDRVQcow2State *s, uint64_t offset,
                             uint64_t size)
{
    for (uint64_t i = 0; i < s->reftable_used; i++) {
        uint64_t b = s->reftable[i] & REFT_OFFSET_MASK;
        if (b && offset < b + s->cluster_size && b < offset + size) {
            return true;
        }
    }
    return false;
}

/* Write table entry `index` of the refcount table to disk. */
static int coroutine_fn write_reftable_entry(BlockDriverState *bs,
                                             uint64_t index)
{
    BDRVQcow2State *s = bs->opaque;
    /* Whole 512-byte sectors, so O_DIRECT files need no read-modify-write. */
    uint64_t first = index & ~63ULL;
    uint64_t n = MIN(64, s->reftable_size - first);
    uint8_t buf[512];
    for (uint64_t i = 0; i < n; i++) {
        qcow2_put_be64(buf + i * 8, s->reftable[first + i]);
    }
    int64_t off = (int64_t)(s->reftable_offset + first * 8);
    int ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_REFCOUNT_TABLE, off,
                                            (int64_t)(n * 8));
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pwrite(bs->file, off, (int64_t)(n * 8), buf, 0);
}

static void note_allocated(BDRVQcow2State *s, uint64_t host, uint64_t size)
{
    if (host + size > s->fresh_start) {
        s->fresh_start = host + size;
    }
}

/*
 * Create refcount block `b` (inside the table) in its own first free
 * cluster `cluster_index`, which it then counts with refcount 1.
 */
static int coroutine_fn create_refblock(BlockDriverState *bs, uint64_t b,
                                        uint64_t cluster_index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t host = cluster_index << s->cluster_bits;
    void *block;
    int ret = qcow2_pre_write_overlap_check(bs, 0, (int64_t)host,
                                            (int64_t)s->cluster_size);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_cache_get_empty(bs, s->rc_cache, host, &block);
    if (ret < 0) {
        return ret;
    }
    memset(block, 0, s->cluster_size);
    qcow2_refcount_set(block, s->refcount_order,
                       cluster_index & ((1ULL << s->refblock_bits) - 1), 1);
    BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC_WRITE);
    ret = bdrv_co_pwrite(bs->file, (int64_t)host, (int64_t)s->cluster_size,
                         block, 0);
    qcow2_cache_put(s->rc_cache, &block);
    if (ret < 0) {
        qcow2_cache_discard(s->rc_cache, host);
        return ret;
    }
    note_allocated(s, host, s->cluster_size);
    s->reftable[b] = host;
    s->reftable_used = MAX(s->reftable_used, b + 1);
    BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC_HOOKUP);
    ret = write_reftable_entry(bs, b);
    if (ret < 0) {
        s->reftable[b] = 0;
        qcow2_cache_discard(s->rc_cache, host);
        return ret;
    }
    return 0;
}

/*
 * The refcount table is too small for cluster `start` (which is beyond
 * what it covers, so every cluster from there on is free).  Write new
 * refcount blocks and a bigger table there, switch the header to it, free
 * the old table.
 */
static int coroutine_fn grow_reftable(BlockDriverState *bs, uint64_t start)
{
    BDRVQcow2State *s = bs->opaque;
    int rb = s->refblock_bits;
    uint64_t first_block = start >> rb;
    uint64_t nblocks = 1, tclusters = 0, new_entries = 0;
    for (int iter = 0; iter < 64; iter++) {
        uint64_t want = MAX(first_block + nblocks,
                            s->reftable_size + s->reftable_size / 2 + 1);
        tclusters = (want * 8 + s->cluster_size - 1) >> s->cluster_bits;
        new_entries = (tclusters << s->cluster_bits) / 8;
        uint64_t last_block = (start + nblocks + tclusters - 1) >> rb;
        uint64_t need = last_block - first_block + 1;
        if (need <= nblocks && last_block < new_entries) {
            break;
        }
        nblocks = MAX(need, nblocks);
    }
    uint64_t table_bytes = tclusters << s->cluster_bits;
    if (table_bytes > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }
    uint64_t total = nblocks + tclusters;
    uint64_t table_index = start + nblocks;
    if (((start + total) << s->cluster_bits) > QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }

    BLKDBG_EVENT(bs->file, BLKDBG_REFTABLE_GROW);
    uint64_t *new_table = g_try_malloc0(table_bytes);
    uint8_t *blk = blk_memalign(4096, s->cluster_size);
    if (!new_table) {
        blk_vfree(blk);
        return -ENOMEM;
    }
    int ret = 0;
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        new_table[i] = s->reftable[i];
    }
    /* The new blocks, each counting the metadata clusters in its range. */
    BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC_WRITE_BLOCKS);
    for (uint64_t k = 0; k < nblocks; k++) {
        uint64_t bidx = first_block + k;
        uint64_t host = (start + k) << s->cluster_bits;
        memset(blk, 0, s->cluster_size);
        for (uint64_t c = start; c < start + total; c++) {
            if ((c >> rb) == bidx) {
                qcow2_refcount_set(blk, s->refcount_order,
                                   c & ((1ULL << rb) - 1), 1);
            }
        }
        ret = qcow2_pre_write_overlap_check(bs, 0, (int64_t)host,
                                            (int64_t)s->cluster_size);
        if (ret == 0) {
            ret = bdrv_co_pwrite(bs->file, (int64_t)host,
                                 (int64_t)s->cluster_size, blk, 0);
        }
        if (ret < 0) {
            goto out;
        }
        new_table[bidx] = host;
    }
    /* The table, big-endian on disk. */
    {
        uint64_t *be = g_malloc(table_bytes);
        for (uint64_t i = 0; i < new_entries; i++) {
            qcow2_put_be64(&be[i], new_table[i]);
        }
        uint64_t host = table_index << s->cluster_bits;
        ret = qcow2_pre_write_overlap_check(bs, 0, (int64_t)host,
                                            (int64_t)table_bytes);
        if (ret == 0) {
            BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC_WRITE_TABLE);
            ret = bdrv_co_pwrite(bs->file, (int64_t)host, (int64_t)table_bytes,
                                 be, 0);
        }
        g_free(be);
        if (ret < 0) {
            goto out;
        }
    }
    /* Everything the new table needs is on disk before the header uses
     * it (pending refcount updates of the old blocks too). */
    ret = qcow2_cache_write(bs, s->rc_cache);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        goto out;
    }
    {
        uint8_t hdr[12];
        uint64_t host = table_index << s->cluster_bits;
        qcow2_put_be64(hdr, host);
        qcow2_put_be32(hdr + 8, (uint32_t)tclusters);
        BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC_SWITCH_TABLE);
        ret = bdrv_co_pwrite(bs->file, 48, sizeof(hdr), hdr, 0);
        if (ret < 0) {
            goto out;
        }
        uint64_t old_off = s->reftable_offset;
        uint64_t old_bytes = (uint64_t)s->reftable_clusters << s->cluster_bits;
        g_free(s->reftable);
        s->reftable = new_table;
        new_table = NULL;
        s->reftable_offset = host;
        s->reftable_clusters = (uint32_t)tclusters;
        s->reftable_size = new_entries;
        s->reftable_used = first_block + nblocks;
        note_allocated(s, start << s->cluster_bits,
                       total << s->cluster_bits);
        if (old_bytes) {
            qcow2_free_clusters(bs, old_off, old_bytes);
        }
    }
out:
    g_free(new_table);
    blk_vfree(blk);
    return ret;
}

/* Make sure cluster `index` is covered by a refcount block.  Returns 1 if
 * metadata was created (the caller restarts its search), 0, or -errno. */
static int coroutine_fn ensure_covered(BlockDriverState *bs, uint64_t index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t b = index >> s->refblock_bits;
    if (b >= s->reftable_size) {
        BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC);
        int ret = grow_reftable(bs, index);
        return ret < 0 ? ret : 1;
    }
    if (s->reftable[b] & REFT_OFFSET_MASK) {
        return 0;
    }
    BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_ALLOC);
    int ret = create_refblock(bs, b, index);
    return ret < 0 ? ret : 1;
}

/* Side effects of cluster `index` dropping to refcount 0. */
static void note_freed(BDRVQcow2State *s, uint64_t index)
{
    uint64_t host = index << s->cluster_bits;
    if (index < s->free_cluster_index) {
        s->free_cluster_index = index;
    }
    if (s->free_byte_offset &&
        qcow2_start_of_cluster(s, s->free_byte_offset) == host) {
        s->free_byte_offset = 0;
    }
    /* A freed L2 table must not be written back over new data. */
    qcow2_cache_discard(s->l2_cache, host);
}

/*
 * Add `addend` to the refcounts of clusters index..index+count-1, which all
 * lie in one refcount block: one cache access for the whole run.  *done is
 * how many were changed (the caller undoes them on failure).
 */
static int coroutine_fn update_run(BlockDriverState *bs, uint64_t index,
                                   uint64_t count, int addend, uint64_t *done)
{
    BDRVQcow2State *s = bs->opaque;
    void *block;
    *done = 0;
    BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_LOAD);
    int ret = get_refblock(bs, index >> s->refblock_bits, &block);
    if (ret < 0) {
        return ret;
    }
    if (!block) {
        return qcow2_signal_corruption(
            bs, true, (int64_t)(index << s->cluster_bits), -1,
            "Refcount update for cluster %#" PRIx64 " without refcount block",
            index << s->cluster_bits);
    }
    uint64_t first = index & ((1ULL << s->refblock_bits) - 1);
    for (uint64_t k = 0; k < count; k++) {
        uint64_t c = index + k;
        uint64_t i = first + k;
        uint64_t rc = qcow2_refcount_get(block, s->refcount_order, i);
        if (addend < 0 && rc < (uint64_t)-addend) {
            qcow2_cache_put(s->rc_cache, &block);
            /* Something referenced a cluster its refcount says is free. */
            return qcow2_signal_corruption(
                bs, true, (int64_t)(c << s->cluster_bits), -1,
                "Cluster %#" PRIx64 " is in use but its refcount is 0",
                c << s->cluster_bits);
        }
        if (addend > 0 && rc + (uint64_t)addend > s->refcount_max) {
            qcow2_cache_put(s->rc_cache, &block);
            error_report("qcow2: refcount of cluster %#" PRIx64
                         " would overflow", c << s->cluster_bits);
            return -EINVAL;
        }
        rc += addend;
        qcow2_refcount_set(block, s->refcount_order, i, rc);
        qcow2_cache_mark_dirty(s->rc_cache, block);
        (*done)++;
        if (rc == 0) {
            note_freed(s, c);
        }
    }
    qcow2_cache_put(s->rc_cache, &block);
    return 0;
}

int coroutine_fn qcow2_update_refcount(BlockDriverState *bs, uint64_t offset,
                                       uint64_t length, int addend)
{
    BDRVQcow2State *s = bs->opaque;
    if (!length) {
        return 0;
    }
    int ret;
    if (addend < 0) {
        ret = qcow2_cache_set_dependency(bs, s->rc_cache, s->l2_cache);
    } else {
        ret = qcow2_cache_set_dependency(bs, s->l2_cache, s->rc_cache);
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t per_block = 1ULL << s->refblock_bits;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + length - 1) >> s->cluster_bits;
    for (uint64_t c = first; c <= last;) {
        uint64_t count = MIN(last - c + 1, per_block - (c & (per_block - 1)));
        uint64_t done;
        ret = update_run(bs, c, count, addend, &done);
        if (ret < 0) {
            /* undo what was done */
            c += done;
            for (uint64_t u = first; u < c;) {
                uint64_t n = MIN(c - u, per_block - (u & (per_block - 1)));
                uint64_t ignored;
                update_run(bs, u, n, -addend, &ignored);
                u += n;
            }
            return ret;
        }
        c += count;
    }
    return 0;
}

/*
 * First run of n free clusters at or after the free-cluster hint.  The
 * entries are read straight out of each refcount block (one cache lookup
 * per block rather than per cluster): allocation is on the write path of
 * every job that fills an image.
 */
static int coroutine_fn find_free(BlockDriverState *bs, uint64_t n,
                                  uint64_t *result)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t limit = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
    uint64_t per_block = 1ULL << s->refblock_bits;
    /* Nothing beyond the end of the file (or what we allocated there) can
     * be in use; a refcount there is damage, and scanning on would take
     * forever on a table full of bogus blocks. */
    int64_t flen = bdrv_getlength(bs->file->bs);
    uint64_t end = MAX(flen > 0 ? (uint64_t)flen : 0, s->fresh_start);
    uint64_t end_index = (end + s->cluster_size - 1) >> s->cluster_bits;
    uint64_t run_start = MAX(s->free_cluster_index, 1);
    uint64_t run_len = 0;
    while (run_len < n) {
        if (run_start + n > limit) {
            return -EFBIG;
        }
        uint64_t cur = run_start + run_len;
        uint64_t i = cur & (per_block - 1);
        void *block;
        int ret = get_refblock(bs, cur >> s->refblock_bits, &block);
        if (ret < 0) {
            return ret;
        }
        if (!block) {
            /* no refcount block: every cluster it would cover is free */
            run_len += MIN(per_block - i, n - run_len);
            continue;
        }
        for (; i < per_block && run_len < n; i++, cur++) {
            if (!qcow2_refcount_get(block, s->refcount_order, i)) {
                run_len++;
                continue;
            }
            if (cur >= end_index) {
                qcow2_cache_put(s->rc_cache, &block);
                return qcow2_signal_corruption(
                    bs, true, (int64_t)(cur << s->cluster_bits), -1,
                    "Cluster %#" PRIx64 " beyond the end of the image "
                    "file has a refcount",
                    cur << s->cluster_bits);
            }
            /* clusters in use right at the hint need no second look */
            if (run_len == 0 && cur == s->free_cluster_index) {
                s->free_cluster_index = cur + 1;
            }
            run_start = cur + 1;
            run_len = 0;
        }
        qcow2_cache_put(s->rc_cache, &block);
    }
    if (run_start + n > limit) {
        return -EFBIG;
    }
    *result = run_start;
    return 0;
}

int64_t coroutine_fn qcow2_alloc_clusters(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t n = qcow2_size_to_clusters(s, size);
    if (!n) {
        return -EINVAL;
    }
    for (int attempts = 0;; attempts++) {
        if (attempts > 1000) {
            return -EIO;
        }
        uint64_t idx = 0;
        int ret = find_free(bs, n, &idx);
        if (ret < 0) {
            return ret;
        }
        bool created = false;
        for (uint64_t c = idx; c < idx + n; c++) {
            /* only the first cluster of each block needs a look */
            if (c != idx && (c & ((1ULL << s->refblock_bits) - 1))) {
                continue;
            }
            ret = ensure_covered(bs, c);
            if (ret < 0) {
                return ret;
            }
            if (ret) {
                created = true;
                break;
            }
        }
        if (created) {
            continue;
        }
        uint64_t host = idx << s->cluster_bits;
        ret = qcow2_update_refcount(bs, host, n << s->cluster_bits, 1);
        if (ret < 0) {
            return ret;
        }
        if (idx == s->free_cluster_index) {
            s->free_cluster_index = idx + n;
        }
        note_allocated(s, host, n << s->cluster_bits);
        return (int64_t)host;
    }
}

int64_t coroutine_fn qcow2_alloc_bytes(BlockDriverState *bs, int size)
{
    BDRVQcow2State *s = bs->opaque;
    g_assert(size > 0 && (uint64_t)size <= s->cluster_size);
    BLKDBG_EVENT(bs->file, BLKDBG_CLUSTER_ALLOC_BYTES);
    uint64_t off = s->free_byte_offset;
    if (off && qcow2_offset_into_cluster(s, off) &&
        qcow2_offset_into_cluster(s, off) + (uint64_t)size <= s->cluster_size) {
        uint64_t rc;
        int ret = qcow2_get_refcount(bs, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc > 0 && rc < s->refcount_max) {
            ret = qcow2_update_refcount(bs, off, 1, 1);
            if (ret < 0) {
                return ret;
            }
            s->free_byte_offset = off + (uint64_t)size;
            if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
                s->free_byte_offset = 0;
            }
            return (int64_t)off;
        }
    }
    int64_t host = qcow2_alloc_clusters(bs, s->cluster_size);
    if (host < 0) {
        return host;
    }
    s->free_byte_offset = (uint64_t)host + (uint64_t)size;
    if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
        s->free_byte_offset = 0;
    }
    return host;
}

void coroutine_fn qcow2_free_clusters(BlockDriverState *bs, uint64_t offset,
                                      uint64_t size)
{
    BLKDBG_EVENT(bs->file, BLKDBG_CLUSTER_FREE);
    int ret = qcow2_update_refcount(bs, offset, size, -1);
    if (ret < 0) {
        /* The cluster leaks; never fatal. */
        warn_report("qcow2: could not free clusters at %#" PRIx64 ": %s",
                    offset, g_strerror(-ret));
    }
}

void coroutine_fn qcow2_free_any_cluster(BlockDriverState *bs,
                                         uint64_t l2_entry)
{
    BDRVQcow2State *s = bs->opaque;
    switch (qcow2_l2_entry_type(l2_entry, s->version)) {
    case QCOW2_CLUSTER_NORMAL:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        qcow2_free_clusters(bs, l2_entry & L2E_OFFSET_MASK, s->cluster_size);
        break;
    case QCOW2_CLUSTER_COMPRESSED: {
        uint64_t host, len;
        qcow2_compressed_decode(l2_entry, s->cluster_bits, &host, &len);
        qcow2_free_clusters(bs, host, len);
        break;
    }
    default:
        break;
    }
}

/* ---- rebuilding refcounts (an image left dirty with lazy refcounts) ---- */

typedef struct Rebuild {
    uint32_t *counts;
    uint64_t nclusters;
} Rebuild;

/* Count one reference to every cluster touched by [off, off+len). */
static int count_range(BlockDriverState *bs, Rebuild *r, uint64_t off,
                       uint64_t len, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (!len) {
        return 0;
    }
    uint64_t first = off >> s->cluster_bits;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    if (last >= r->nclusters || last < first) {
        error_setg(errp, "Cannot rebuild refcounts: metadata points beyond "
                         "the end of the image file (offset %#" PRIx64 ")",
                   off);
        return -EINVAL;
    }
    for (uint64_t c = first; c <= last; c++) {
        if (r->counts[c] == UINT32_MAX) {
            error_setg(errp, "Cannot rebuild refcounts: too many references");
            return -EINVAL;
        }
        r->counts[c]++;
    }
    return 0;
}

/* Count an L1 table, its L2 tables and what they reference. */
static int coroutine_fn count_l1(BlockDriverState *bs, Rebuild *r,
                                 uint64_t l1_offset, uint32_t l1_size,
                                 const uint64_t *active, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = count_range(bs, r, l1_offset, (uint64_t)l1_size * 8, errp);
    if (ret < 0 || !l1_size) {
        return ret;
    }
    uint64_t *l1 = NULL;
    if (!active) {
        l1 = g_try_malloc((size_t)l1_size * 8);
        if (!l1) {
            error_setg(errp, "Cannot rebuild refcounts: out of memory");
            return -ENOMEM;
        }
        ret = bdrv_co_pread(bs->file, (int64_t)l1_offset,
                            (int64_t)l1_size * 8, l1, 0);
        if (ret < 0) {
            g_free(l1);
            error_setg_errno(errp, -ret, "Cannot rebuild refcounts");
            return ret;
        }
        for (uint32_t i = 0; i < l1_size; i++) {
            l1[i] = qcow2_be64(&l1[i]);
        }
        active = l1;
    }
    uint64_t *l2 = g_malloc(s->cluster_size);
    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t l2_off = active[i] & L1E_OFFSET_MASK;
        if (!l2_off) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, l2_off)) {
            error_setg(errp, "Cannot rebuild refcounts: L2 table offset "
                             "%#" PRIx64 " unaligned",
                       l2_off);
            ret = -EINVAL;
            break;
        }
        ret = count_range(bs, r, l2_off, s->cluster_size, errp);
        if (ret < 0) {
            break;
        }
        ret = bdrv_co_pread(bs->file, (int64_t)l2_off,
                            (int64_t)s->cluster_size, l2, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Cannot rebuild refcounts");
            break;
        }
        for (uint64_t j = 0; j < s->l2_size && ret == 0; j++) {
            uint64_t e = qcow2_be64(&l2[j]);
            switch (qcow2_l2_entry_type(e, s->version)) {
            case QCOW2_CLUSTER_NORMAL:
            case QCOW2_CLUSTER_ZERO_ALLOC:
                ret = count_range(bs, r, e & L2E_OFFSET_MASK, s->cluster_size,
                                  errp);
                break;
            case QCOW2_CLUSTER_COMPRESSED: {
                uint64_t host, len;
                qcow2_compressed_decode(e, s->cluster_bits, &host, &len);
                /* the last sector may lie past the end of the file */
                uint64_t end = r->nclusters << s->cluster_bits;
                if (host < end && host + len > end) {
                    len = end - host;
                }
                ret = count_range(bs, r, host, len, errp);
                break;
            }
            default:
                break;
            }
        }
    }
    g_free(l2);
    g_free(l1);
    return ret;
}

int coroutine_fn qcow2_rebuild_refcounts(BlockDriverState *bs, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t flen = bdrv_getlength(bs->file->bs);
    if (flen < 0) {
        error_setg_errno(errp, (int)-flen, "Cannot rebuild refcounts");
        return (int)flen;
    }
    Rebuild r;
    r.nclusters = ROUND_UP((uint64_t)flen, s->cluster_size) >> s->cluster_bits;
    if (r.nclusters > (1ULL << 28)) {
        error_setg(errp, "Cannot rebuild refcounts of an image this large; "
                         "repair it with 'qemu-img check -r all'");
        return -EFBIG;
    }
    r.counts = g_try_new0(uint32_t, r.nclusters ? r.nclusters : 1);
    if (!r.counts) {
        error_setg(errp, "Cannot rebuild refcounts: out of memory");
        return -ENOMEM;
    }
    uint64_t per_block = 1ULL << s->refblock_bits;
    uint64_t nblocks = (r.nclusters + per_block - 1) / per_block;
    int ret = count_range(bs, &r, 0, s->cluster_size, errp);
    if (ret == 0) {
        ret = count_l1(bs, &r, s->l1_table_offset, s->l1_size, s->l1_table,
                       errp);
    }
    if (ret == 0) {
        ret = count_range(bs, &r, s->snapshots_offset, s->snapshots_size,
                          errp);
    }
    for (uint32_t i = 0; ret == 0 && i < s->nb_snapshots; i++) {
        ret = count_l1(bs, &r, s->snapshots[i].l1_table_offset,
                       s->snapshots[i].l1_size, NULL, errp);
    }
    if (ret == 0) {
        ret = count_range(bs, &r, s->reftable_offset,
                          (uint64_t)s->reftable_clusters << s->cluster_bits,
                          errp);
    }
    if (ret == 0 && nblocks > s->reftable_size) {
        error_setg(errp, "Cannot rebuild refcounts: the refcount table is "
                         "too small; repair the image with 'qemu-img check "
                         "-r all'");
        ret = -ENOTSUP;
    }
    /* The existing refcount blocks count themselves... */
    for (uint64_t b = 0; ret == 0 && b < s->reftable_size; b++) {
        uint64_t off = s->reftable[b] & REFT_OFFSET_MASK;
        if (!off) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, off)) {
            error_setg(errp, "Cannot rebuild refcounts: refcount block "
                             "offset %#" PRIx64 " unaligned",
                       off);
            ret = -EINVAL;
            break;
        }
        ret = count_range(bs, &r, off, s->cluster_size, errp);
    }
    /* ...and missing ones go into a free cluster of their own range. */
    for (uint64_t b = 0; ret == 0 && b < nblocks; b++) {
        if (s->reftable[b] & REFT_OFFSET_MASK) {
            continue;
        }
        uint64_t lo = b * per_block, hi = MIN(lo + per_block, r.nclusters);
        bool used = false;
        uint64_t spot = UINT64_MAX;
        for (uint64_t c = lo; c < hi; c++) {
            used |= r.counts[c] != 0;
            if (!r.counts[c] && spot == UINT64_MAX) {
                spot = c;
            }
        }
        if (!used) {
            continue;
        }
        if (spot == UINT64_MAX) {
            error_setg(errp, "Cannot rebuild refcounts: no room for a "
                             "refcount block; repair the image with "
                             "'qemu-img check -r all'");
            ret = -ENOSPC;
            break;
        }
        r.counts[spot] = 1;
        void *blk;
        ret = qcow2_cache_get_empty(bs, s->rc_cache, spot << s->cluster_bits,
                                    &blk);
        if (ret < 0) {
            break;
        }
        memset(blk, 0, s->cluster_size);
        qcow2_cache_mark_dirty(s->rc_cache, blk);
        qcow2_cache_put(s->rc_cache, &blk);
        s->reftable[b] = spot << s->cluster_bits;
        s->reftable_used = MAX(s->reftable_used, b + 1);
    }
    /* Write every count. */
    for (uint64_t b = 0; ret == 0 && b < s->reftable_size; b++) {
        uint64_t off = s->reftable[b] & REFT_OFFSET_MASK;
        if (!off) {
            continue;
        }
        void *blk;
        ret = qcow2_cache_get(bs, s->rc_cache, off, &blk);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Cannot rebuild refcounts");
            break;
        }
        for (uint64_t i = 0; i < per_block; i++) {
            uint64_t c = b * per_block + i;
            uint64_t v = c < r.nclusters ? r.counts[c] : 0;
            if (v > s->refcount_max) {
                error_setg(errp, "Cannot rebuild refcounts: a refcount "
                                 "exceeds the image's refcount width");
                ret = -ERANGE;
                break;
            }
            qcow2_refcount_set(blk, s->refcount_order, i, v);
        }
        qcow2_cache_mark_dirty(s->rc_cache, blk);
        qcow2_cache_put(s->rc_cache, &blk);
    }
    if (ret == 0) {
        ret = qcow2_cache_flush(bs, s->rc_cache);
        for (uint64_t b = 0; ret == 0 && b < s->reftable_size; b++) {
            if ((b & 63) == 0) {
                BLKDBG_EVENT(bs->file, BLKDBG_REFTABLE_UPDATE);
                ret = write_reftable_entry(bs, b);
            }
        }
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Cannot write rebuilt refcounts");
        }
    }
    s->free_cluster_index = 0;
    g_free(r.counts);
    return ret;
}
