/*
 * qcow2 consistency check and repair (blockd-img check [-r leaks|all]).
 *
 * The check recounts every reference the metadata makes (header, L1 and L2
 * tables of the active image and of snapshots, the snapshot table, the
 * refcount table and blocks, bitmaps) into one in-memory array, compares it
 * with the refcounts on disk, and verifies the COPIED flags.  Results and
 * messages are qemu-img 7.2's, so scripts see the same verdict.
 *
 * It works on the image file directly: it must handle images whose
 * metadata the driver would refuse, and it reads metadata in large
 * sequential reads (all L2 tables sorted by offset, all refcount blocks)
 * rather than through the driver's caches.
 *
 * Repairs: leaks and refcounts too low are rewritten in place; when the
 * refcount structure itself is broken (refcount 0 on a used cluster, a bad
 * refcount table entry) it is rebuilt from scratch from the counted array,
 * with new blocks and table placed in free clusters of the image, and the
 * caller runs a second pass to confirm.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "block/drivers/qcow2.h"

#define CHECK_FRAG_INFO 1
/* Preload all L2 tables of the active L1 when they fit in this. */
#define L2_PRELOAD_MAX (512ULL * 1024 * 1024)
/* Largest single read when coalescing metadata reads. */
#define MAX_READ (4ULL * 1024 * 1024)

typedef struct Ck {
    BlockBackend *blk;
    int fix;
    Qcow2CheckResult *res;
    uint64_t file_len;

    /* header */
    int version;
    int cluster_bits;
    uint64_t cluster_size;
    uint64_t l2_size; /* entries */
    uint64_t size;
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t *l1; /* host order, as on disk */
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint64_t reftable_size; /* entries */
    uint64_t *reftable;
    int refcount_order;
    uint64_t refcount_max;
    int rb_bits; /* log2 of entries per refcount block */
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;
    uint64_t incompat;
    bool has_bitmaps;
    uint64_t bitmap_dir_offset, bitmap_dir_size;
    uint32_t nb_bitmaps;

    /* The L2 tables of the active L1, by L1 index (NULL: not preloaded). */
    uint8_t *l2_cache;
    uint64_t *l2_cached; /* by L1 index: offset of the table held, 0 none */

    /* counted references, one per host cluster */
    uint64_t *rc;
    uint64_t nb_clusters;
    /* refcounts on disk after compare_refcounts (clusters below disk_n) */
    uint64_t *disk_rc;
    uint64_t disk_n;
    int64_t highest_cluster;
} Ck;

/* ---- I/O: reads beyond the end of the file return zeroes, as a file's ---- */

static int coroutine_fn ck_read(Ck *ck, uint64_t off, uint64_t len, void *buf)
{
    memset(buf, 0, len);
    if (off >= ck->file_len) {
        return 0;
    }
    uint64_t n = MIN(len, ck->file_len - off);
    return blk_co_pread(ck->blk, (int64_t)off, (int64_t)n, buf, 0);
}

static int coroutine_fn ck_write(Ck *ck, uint64_t off, uint64_t len,
                                 const void *buf)
{
    if (off + len > ck->file_len) {
        uint64_t end = ROUND_UP(off + len, ck->cluster_size);
        int ret = blk_co_truncate(ck->blk, (int64_t)end, false,
                                  PREALLOC_MODE_OFF, 0, NULL);
        if (ret < 0) {
            return ret;
        }
        ck->file_len = end;
    }
    return blk_co_pwrite(ck->blk, (int64_t)off, (int64_t)len, buf, 0);
}

static uint64_t size_to_clusters(const Ck *ck, uint64_t size)
{
    return (size + ck->cluster_size - 1) >> ck->cluster_bits;
}

/* ---- the header ---- */

static int coroutine_fn read_header(Ck *ck, GError **errp)
{
    uint8_t h[4096];
    int ret = ck_read(ck, 0, sizeof(h), h);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the image header");
        return ret;
    }
    if (qcow2_be32(h) != QCOW_MAGIC) {
        error_setg(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    ck->version = (int)qcow2_be32(h + 4);
    if (ck->version < 2 || ck->version > 3) {
        error_setg(errp, "Unsupported qcow2 version %d", ck->version);
        return -ENOTSUP;
    }
    ck->cluster_bits = (int)qcow2_be32(h + 20);
    if (ck->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        ck->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "Unsupported cluster size: 2^%d", ck->cluster_bits);
        return -EINVAL;
    }
    ck->cluster_size = 1ULL << ck->cluster_bits;
    ck->l2_size = ck->cluster_size / 8;
    ck->size = qcow2_be64(h + 24);
    ck->l1_size = qcow2_be32(h + 36);
    ck->l1_offset = qcow2_be64(h + 40);
    ck->reftable_offset = qcow2_be64(h + 48);
    ck->reftable_clusters = qcow2_be32(h + 56);
    ck->nb_snapshots = qcow2_be32(h + 60);
    ck->snapshots_offset = qcow2_be64(h + 64);
    ck->refcount_order = 4;
    uint32_t header_length = QCOW2_V2_HEADER_LENGTH;
    if (ck->version >= 3) {
        ck->incompat = qcow2_be64(h + 72);
        uint64_t autoclear = qcow2_be64(h + 88);
        ck->refcount_order = (int)qcow2_be32(h + 96);
        header_length = qcow2_be32(h + 100);
        ck->has_bitmaps = autoclear & QCOW2_AUTOCLEAR_BITMAPS;
        if (ck->incompat & QCOW2_INCOMPAT_DATA_FILE) {
            error_setg(errp, "External data files are not supported");
            return -ENOTSUP;
        }
        if (ck->incompat & QCOW2_INCOMPAT_EXTL2) {
            error_setg(errp, "Extended L2 entries are not supported");
            return -ENOTSUP;
        }
        if (ck->incompat & ~QCOW2_INCOMPAT_KNOWN) {
            error_setg(errp, "Unsupported qcow2 feature(s): 0x%" PRIx64,
                       (uint64_t)(ck->incompat & ~QCOW2_INCOMPAT_KNOWN));
            return -ENOTSUP;
        }
        if (header_length < 104 || header_length > ck->cluster_size) {
            error_setg(errp, "qcow2 header exceeds cluster size");
            return -EINVAL;
        }
    }
    if (ck->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
        error_setg(errp, "Reference count entry width too large; may not "
                         "exceed 64 bits");
        return -EINVAL;
    }
    if (qcow2_be32(h + 32)) {
        error_setg(errp, "Encrypted images are not supported");
        return -ENOTSUP;
    }
    int refcount_bits = 1 << ck->refcount_order;
    ck->refcount_max = refcount_bits == 64 ? UINT64_MAX
                                           : (1ULL << refcount_bits) - 1;
    ck->rb_bits = ck->cluster_bits + 3 - ck->refcount_order;

    if (ck->reftable_clusters == 0 ||
        (uint64_t)ck->reftable_clusters * ck->cluster_size >
            QCOW2_MAX_REFTABLE_BYTES) {
        error_setg(errp, ck->reftable_clusters ? "Reference count table too "
                                                 "large"
                                               : "Image does not contain a "
                                                 "reference count table");
        return -EINVAL;
    }
    if (ck->reftable_offset & (ck->cluster_size - 1)) {
        error_setg(errp, "Invalid reference count table offset");
        return -EINVAL;
    }
    if ((uint64_t)ck->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "Active L1 table too large");
        return -EFBIG;
    }
    if (ck->l1_size && (ck->l1_offset & (ck->cluster_size - 1))) {
        error_setg(errp, "Invalid L1 table offset");
        return -EINVAL;
    }
    if (ck->nb_snapshots > QCOW2_MAX_SNAPSHOTS ||
        (ck->nb_snapshots && (ck->snapshots_offset & (ck->cluster_size - 1)))) {
        error_setg(errp, "Invalid snapshot table");
        return -EINVAL;
    }

    /* Header extensions: only the bitmaps directory matters here. */
    uint64_t off = header_length;
    while (ck->version >= 3 && off + 8 <= MIN(ck->cluster_size, sizeof(h))) {
        uint32_t type = qcow2_be32(h + off);
        uint32_t len = qcow2_be32(h + off + 4);
        off += 8;
        if (type == QCOW2_EXT_END || off + len > sizeof(h)) {
            break;
        }
        if (type == QCOW2_EXT_BITMAPS && len >= 24) {
            ck->nb_bitmaps = qcow2_be32(h + off);
            ck->bitmap_dir_size = qcow2_be64(h + off + 8);
            ck->bitmap_dir_offset = qcow2_be64(h + off + 16);
        }
        off += ROUND_UP((uint64_t)len, 8);
    }
    if (!ck->nb_bitmaps) {
        ck->has_bitmaps = false;
    }

    ck->reftable_size = (uint64_t)ck->reftable_clusters * ck->cluster_size / 8;
    ck->reftable = g_malloc(ck->reftable_size * 8);
    ret = ck_read(ck, ck->reftable_offset, ck->reftable_size * 8,
                  ck->reftable);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the refcount table");
        return ret;
    }
    for (uint64_t i = 0; i < ck->reftable_size; i++) {
        ck->reftable[i] = qcow2_be64(&ck->reftable[i]);
    }
    ck->l1 = g_malloc0(MAX(ck->l1_size, 1) * 8);
    ret = ck_read(ck, ck->l1_offset, (uint64_t)ck->l1_size * 8, ck->l1);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the L1 table");
        return ret;
    }
    for (uint32_t i = 0; i < ck->l1_size; i++) {
        ck->l1[i] = qcow2_be64(&ck->l1[i]);
    }
    return 0;
}

/* ---- counting references ---- */

static void grow_rc(Ck *ck, uint64_t n)
{
    if (n <= ck->nb_clusters) {
        return;
    }
    /* Whole refcount blocks, so the rebuild writes complete blocks. */
    uint64_t per_block = 1ULL << ck->rb_bits;
    n = ROUND_UP(n, per_block);
    ck->rc = g_renew(uint64_t, ck->rc, n);
    memset(ck->rc + ck->nb_clusters, 0, (n - ck->nb_clusters) * 8);
    ck->nb_clusters = n;
}

/* One reference to every cluster touched by [offset, offset+size). */
static void inc_refcounts(Ck *ck, uint64_t offset, uint64_t size)
{
    if (size == 0) {
        return;
    }
    if (offset + size < offset ||
        (int64_t)(offset + size - ck->file_len) >= (int64_t)ck->cluster_size) {
        fprintf(stderr,
                "ERROR: counting reference for region exceeding the end of "
                "the file by one cluster or more: offset 0x%" PRIx64
                " size 0x%" PRIx64 "\n",
                offset, size);
        ck->res->corruptions++;
        return;
    }
    uint64_t first = offset >> ck->cluster_bits;
    uint64_t last = (offset + size - 1) >> ck->cluster_bits;
    grow_rc(ck, last + 1);
    for (uint64_t k = first; k <= last; k++) {
        if (ck->rc[k] >= ck->refcount_max) {
            fprintf(stderr, "ERROR: overflow cluster offset=0x%" PRIx64 "\n",
                    k << ck->cluster_bits);
            ck->res->corruptions++;
            continue;
        }
        ck->rc[k]++;
    }
}

static int cmp_pair(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Read the L2 tables of the active L1 in offset order, merging neighbours
 * (and small gaps) into large reads: the tables of a fragmented image are
 * scattered.  A table that is not preloaded is read on its own later.
 */
static void coroutine_fn preload_l2(Ck *ck)
{
    uint64_t n = 0;
    /* (offset, l1 index) pairs */
    uint64_t *pairs = g_new(uint64_t, 2 * MAX(ck->l1_size, 1));
    for (uint32_t i = 0; i < ck->l1_size; i++) {
        uint64_t o = ck->l1[i] & L1E_OFFSET_MASK;
        if (o && !(o & (ck->cluster_size - 1)) && o < ck->file_len) {
            pairs[2 * n] = o;
            pairs[2 * n + 1] = i;
            n++;
        }
    }
    if (!n || (uint64_t)ck->l1_size * ck->cluster_size > L2_PRELOAD_MAX) {
        g_free(pairs);
        return;
    }
    qsort(pairs, n, 2 * sizeof(uint64_t), cmp_pair);

    uint64_t gap = MAX(ck->cluster_size, 65536);
    ck->l2_cache = g_malloc((uint64_t)ck->l1_size * ck->cluster_size);
    ck->l2_cached = g_new0(uint64_t, ck->l1_size);
    uint8_t *buf = g_malloc(MAX_READ + ck->cluster_size);
    uint64_t i = 0;
    while (i < n) {
        uint64_t start = pairs[2 * i];
        uint64_t j = i + 1;
        while (j < n && pairs[2 * j] <= pairs[2 * (j - 1)] + gap &&
               pairs[2 * j] + ck->cluster_size - start <= MAX_READ) {
            j++;
        }
        uint64_t end = pairs[2 * (j - 1)] + ck->cluster_size;
        if (ck_read(ck, start, end - start, buf) < 0) {
            break; /* the rest is read table by table */
        }
        for (uint64_t k = i; k < j; k++) {
            memcpy(ck->l2_cache + pairs[2 * k + 1] * ck->cluster_size,
                   buf + (pairs[2 * k] - start), ck->cluster_size);
            ck->l2_cached[pairs[2 * k + 1]] = pairs[2 * k];
        }
        i = j;
    }
    g_free(buf);
    g_free(pairs);
}

/* The L2 table at l2_offset (entry l1_index of the active L1 if active). */
static int coroutine_fn load_l2(Ck *ck, bool active, uint32_t l1_index,
                                uint64_t l2_offset, uint8_t *buf)
{
    if (active && ck->l2_cache && l2_offset &&
        ck->l2_cached[l1_index] == l2_offset) {
        memcpy(buf, ck->l2_cache + (uint64_t)l1_index * ck->cluster_size,
               ck->cluster_size);
        return 0;
    }
    return ck_read(ck, l2_offset, ck->cluster_size, buf);
}

/* After writing the active table of L1 entry l1_index: keep the copy. */
static void put_l2_cache(Ck *ck, uint32_t l1_index, const uint8_t *buf)
{
    uint64_t o = ck->l1[l1_index] & L1E_OFFSET_MASK;
    if (ck->l2_cache && o) {
        memcpy(ck->l2_cache + (uint64_t)l1_index * ck->cluster_size, buf,
               ck->cluster_size);
        ck->l2_cached[l1_index] = o;
    }
}

/*
 * -r all: an L2 entry whose host cluster lies beyond the end of the file
 * has no data to recover; make the guest cluster read as zeroes (v3) or
 * unallocated (v2) so that the image is consistent again.  QEMU's check
 * only reports these.  Returns true when the entry was replaced.
 */
static bool coroutine_fn drop_entry_past_eof(Ck *ck, uint64_t l2_offset,
                                             uint8_t *l2, uint64_t i,
                                             uint64_t host, uint64_t len)
{
    if (!(ck->fix & QCOW2_FIX_ERRORS) ||
        (int64_t)(host + len - ck->file_len) < (int64_t)ck->cluster_size) {
        return false;
    }
    uint64_t ne = ck->version >= 3 ? QCOW_OFLAG_ZERO : 0;
    uint8_t be[8];
    qcow2_put_be64(be, ne);
    fprintf(stderr,
            "Repairing L2 entry %" PRIu64 " of the table at 0x%" PRIx64
            ": host offset 0x%" PRIx64 " is beyond the end of the file; "
            "the cluster now reads as zeroes\n",
            i, l2_offset, host);
    if (ck_write(ck, l2_offset + i * 8, 8, be) < 0) {
        ck->res->check_errors++;
        return false;
    }
    qcow2_put_be64(l2 + i * 8, ne);
    ck->res->corruptions_fixed++;
    return true;
}

static int coroutine_fn check_l2(Ck *ck, bool active, uint32_t l1_index,
                                 uint64_t l2_offset, int flags, uint8_t *l2)
{
    Qcow2CheckResult *res = ck->res;
    uint64_t next_contiguous = 0;
    bool dirty = false;

    int ret = load_l2(ck, active, l1_index, l2_offset, l2);
    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error in check_refcounts_l2\n");
        res->check_errors++;
        return ret;
    }
    for (uint64_t i = 0; i < ck->l2_size; i++) {
        uint64_t e = qcow2_be64(l2 + i * 8);
        Qcow2ClusterType type = qcow2_l2_entry_type(e, ck->version);

        if (type != QCOW2_CLUSTER_COMPRESSED && (e & L2E_STD_RESERVED_MASK)) {
            fprintf(stderr,
                    "ERROR found l2 entry with reserved bits set: %" PRIx64
                    "\n",
                    e);
            res->corruptions++;
        }
        switch (type) {
        case QCOW2_CLUSTER_COMPRESSED: {
            int x = 62 - (ck->cluster_bits - 8);
            if (e & QCOW_OFLAG_COPIED) {
                fprintf(stderr,
                        "ERROR: coffset=0x%" PRIx64 ": copied flag must "
                        "never be set for compressed clusters\n",
                        (uint64_t)(e & ((1ULL << x) - 1)));
                e &= ~QCOW_OFLAG_COPIED;
                res->corruptions++;
            }
            uint64_t host, len;
            qcow2_compressed_decode(e, ck->cluster_bits, &host, &len);
            if (drop_entry_past_eof(ck, l2_offset, l2, i, host, len)) {
                dirty = true;
                continue;
            }
            inc_refcounts(ck, host, len);
            if (flags & CHECK_FRAG_INFO) {
                res->allocated_clusters++;
                res->compressed_clusters++;
                /* compressed data is fragmented by nature */
                res->fragmented_clusters++;
            }
            break;
        }
        case QCOW2_CLUSTER_ZERO_ALLOC:
        case QCOW2_CLUSTER_NORMAL: {
            uint64_t offset = e & L2E_OFFSET_MASK;
            if (flags & CHECK_FRAG_INFO) {
                res->allocated_clusters++;
                if (next_contiguous && offset != next_contiguous) {
                    res->fragmented_clusters++;
                }
                next_contiguous = offset + ck->cluster_size;
            }
            if (offset & (ck->cluster_size - 1)) {
                res->corruptions++;
                if (type == QCOW2_CLUSTER_ZERO_ALLOC) {
                    bool fix = ck->fix & QCOW2_FIX_ERRORS;
                    fprintf(stderr,
                            "%s offset=%" PRIx64 ": Preallocated cluster is "
                            "not properly aligned; L2 entry corrupted.\n",
                            fix ? "Repairing" : "ERROR", offset);
                    if (fix) {
                        /* A zero cluster needs no host cluster. */
                        qcow2_put_be64(l2 + i * 8, QCOW_OFLAG_ZERO);
                        uint8_t be[8];
                        qcow2_put_be64(be, QCOW_OFLAG_ZERO);
                        ret = ck_write(ck, l2_offset + i * 8, 8, be);
                        if (ret < 0) {
                            res->check_errors++;
                        } else {
                            res->corruptions--;
                            res->corruptions_fixed++;
                            dirty = true;
                            continue;
                        }
                    }
                } else {
                    /* -r all (QEMU only reports it): the low bits were
                     * damaged, the data is in the cluster they point into;
                     * a clash with another user shows in the refcounts */
                    bool fix = ck->fix & QCOW2_FIX_ERRORS;
                    fprintf(stderr,
                            "%s offset=%" PRIx64 ": Data cluster is not "
                            "properly aligned; L2 entry corrupted.\n",
                            fix ? "Repairing" : "ERROR", offset);
                    if (fix) {
                        uint64_t ne = (e & ~L2E_OFFSET_MASK) |
                                      (offset & ~(ck->cluster_size - 1));
                        uint8_t be[8];
                        qcow2_put_be64(be, ne);
                        if (ck_write(ck, l2_offset + i * 8, 8, be) < 0) {
                            res->check_errors++;
                        } else {
                            qcow2_put_be64(l2 + i * 8, ne);
                            offset = ne & L2E_OFFSET_MASK;
                            res->corruptions--;
                            res->corruptions_fixed++;
                            dirty = true;
                        }
                    }
                }
            }
            if (drop_entry_past_eof(ck, l2_offset, l2, i, offset,
                                    ck->cluster_size)) {
                dirty = true;
                continue;
            }
            inc_refcounts(ck, offset, ck->cluster_size);
            break;
        }
        default:
            break;
        }
    }
    if (dirty && active) {
        put_l2_cache(ck, l1_index, l2);
    }
    return 0;
}

/*
 * Whether a cluster holds something that looks like an L2 table: every
 * entry without reserved bits, pointing to aligned clusters in the file.
 */
static bool plausible_l2(const Ck *ck, const uint8_t *t)
{
    for (uint64_t i = 0; i < ck->l2_size; i++) {
        uint64_t e = qcow2_be64(t + i * 8);
        Qcow2ClusterType type = qcow2_l2_entry_type(e, ck->version);
        if (type == QCOW2_CLUSTER_COMPRESSED) {
            uint64_t host, len;
            qcow2_compressed_decode(e, ck->cluster_bits, &host, &len);
            if (host >= ck->file_len) {
                return false;
            }
        } else if ((e & L2E_STD_RESERVED_MASK) ||
                   ((e & L2E_OFFSET_MASK) &&
                    (((e & L2E_OFFSET_MASK) & (ck->cluster_size - 1)) ||
                     (e & L2E_OFFSET_MASK) >= ck->file_len))) {
            return false;
        }
    }
    return true;
}

/*
 * -r all: an active L1 entry whose L2 offset is not cluster aligned.  If
 * the cluster it points into looks like an L2 table, only the low bits
 * were damaged: point the entry at it; otherwise clear the entry (the
 * guest clusters read as unallocated and the lost tables become leaks).
 * QEMU's check only reports this.  Returns true when repaired.
 */
static bool coroutine_fn repair_l1_entry(Ck *ck, uint32_t i, uint8_t *buf)
{
    uint64_t old = ck->l1[i];
    uint64_t aligned = (old & L1E_OFFSET_MASK) & ~(ck->cluster_size - 1);
    uint64_t ne = 0;
    if (aligned && aligned < ck->file_len &&
        ck_read(ck, aligned, ck->cluster_size, buf) >= 0 &&
        plausible_l2(ck, buf)) {
        ne = (old & ~L1E_OFFSET_MASK & ~L1E_RESERVED_MASK) | aligned;
    }
    fprintf(stderr,
            "Repairing l2_offset=%" PRIx64 ": Table is not cluster aligned; "
            "L1 entry %" PRIu32 " %s\n",
            (uint64_t)(old & L1E_OFFSET_MASK), i,
            ne ? "now points to the cluster containing it" : "cleared");
    uint8_t be[8];
    qcow2_put_be64(be, ne);
    if (ck_write(ck, ck->l1_offset + (uint64_t)i * 8, 8, be) < 0) {
        ck->res->check_errors++;
        return false;
    }
    ck->l1[i] = ne;
    if (ne) {
        put_l2_cache(ck, i, buf);
    }
    ck->res->corruptions_fixed++;
    return true;
}

static int coroutine_fn check_l1(Ck *ck, bool active, uint64_t l1_offset,
                                 uint32_t l1_size, int flags)
{
    Qcow2CheckResult *res = ck->res;
    if (!l1_size) {
        return 0;
    }
    inc_refcounts(ck, l1_offset, (uint64_t)l1_size * 8);

    uint64_t *l1;
    if (active) {
        l1 = ck->l1;
    } else {
        l1 = g_try_malloc((uint64_t)l1_size * 8);
        if (!l1) {
            res->check_errors++;
            return -ENOMEM;
        }
        int ret = ck_read(ck, l1_offset, (uint64_t)l1_size * 8, l1);
        if (ret < 0) {
            fprintf(stderr, "ERROR: I/O error in check_refcounts_l1\n");
            res->check_errors++;
            g_free(l1);
            return ret;
        }
        for (uint32_t i = 0; i < l1_size; i++) {
            l1[i] = qcow2_be64(&l1[i]);
        }
    }
    uint8_t *l2 = g_malloc(ck->cluster_size);
    int ret = 0;
    for (uint32_t i = 0; i < l1_size; i++) {
        if (!l1[i]) {
            continue;
        }
        if (l1[i] & L1E_RESERVED_MASK) {
            fprintf(stderr,
                    "ERROR found L1 entry with reserved bits set: %" PRIx64
                    "\n",
                    l1[i]);
            res->corruptions++;
        }
        if (active && (ck->fix & QCOW2_FIX_ERRORS) &&
            ((l1[i] & L1E_OFFSET_MASK) & (ck->cluster_size - 1)) &&
            repair_l1_entry(ck, i, l2) && !l1[i]) {
            continue;
        }
        uint64_t l2_offset = l1[i] & L1E_OFFSET_MASK;
        inc_refcounts(ck, l2_offset, ck->cluster_size);
        if (l2_offset & (ck->cluster_size - 1)) {
            fprintf(stderr,
                    "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                    "aligned; L1 entry corrupted\n",
                    l2_offset);
            res->corruptions++;
        }
        ret = check_l2(ck, active, i, l2_offset, flags, l2);
        if (ret < 0) {
            break;
        }
    }
    g_free(l2);
    if (!active) {
        g_free(l1);
    }
    return ret;
}

/* The snapshot table: count each snapshot's tables, return its size. */
static int coroutine_fn check_snapshots(Ck *ck)
{
    Qcow2CheckResult *res = ck->res;
    uint64_t off = ck->snapshots_offset;
    uint64_t start = off;
    for (uint32_t n = 0; n < ck->nb_snapshots; n++) {
        uint8_t fixed[40];
        /* entries start 8-aligned; the table ends right after the last */
        off = ROUND_UP(off, 8);
        int ret = ck_read(ck, off, 40, fixed);
        if (ret < 0) {
            res->check_errors++;
            return ret;
        }
        uint64_t l1_off = qcow2_be64(fixed);
        uint32_t l1_size = qcow2_be32(fixed + 8);
        uint16_t id_len = qcow2_be16(fixed + 12);
        uint16_t name_len = qcow2_be16(fixed + 14);
        uint32_t extra = qcow2_be32(fixed + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
            res->check_errors++;
            return -EFBIG;
        }
        char *strs = g_malloc0((uint64_t)id_len + name_len + 2);
        ret = ck_read(ck, off + 40 + extra, id_len, strs);
        if (ret >= 0) {
            ret = ck_read(ck, off + 40 + extra + id_len, name_len,
                          strs + id_len + 1);
        }
        if (ret < 0) {
            g_free(strs);
            res->check_errors++;
            return ret;
        }
        off += 40 + (uint64_t)extra + id_len + name_len;

        if (l1_off & (ck->cluster_size - 1)) {
            fprintf(stderr,
                    "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table "
                    "is not cluster aligned; snapshot table entry corrupted\n",
                    strs, strs + id_len + 1, l1_off);
            res->corruptions++;
        } else if ((uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            fprintf(stderr,
                    "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is "
                    "too large; snapshot table entry corrupted\n",
                    strs, strs + id_len + 1, l1_size);
            res->corruptions++;
        } else {
            ret = check_l1(ck, false, l1_off, l1_size, 0);
        }
        g_free(strs);
        if (ret < 0) {
            return ret;
        }
    }
    ck->snapshots_size = off - start;
    return 0;
}

/*
 * Before anything else, as QEMU's driver reads the snapshot table when it
 * opens the image: an entry with more extra data than the format allows
 * stops the check.  (qemu-img check -r all would drop the extra data;
 * this checker does not.)
 */
static int coroutine_fn read_snapshot_table(Ck *ck)
{
    uint64_t off = ck->snapshots_offset;
    for (uint32_t n = 0; n < ck->nb_snapshots; n++) {
        uint8_t fixed[40];
        off = ROUND_UP(off, 8);
        int ret = ck_read(ck, off, 40, fixed);
        if (ret < 0) {
            ck->res->check_errors++;
            return ret;
        }
        uint32_t extra = qcow2_be32(fixed + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
            fprintf(stderr,
                    "%s: ERROR failed to read the snapshot table: Too much "
                    "extra metadata in snapshot table entry %" PRIu32 "\n"
                    "You can force-remove this extra metadata with "
                    "qemu-img check -r all\n",
                    program_invocation_short_name, n);
            ck->res->check_errors++;
            return -EFBIG;
        }
        off += 40 + (uint64_t)extra + qcow2_be16(fixed + 12) +
               qcow2_be16(fixed + 14);
    }
    return 0;
}

/* Persistent bitmaps: the directory, each bitmap table and its clusters. */
static int coroutine_fn check_bitmaps(Ck *ck)
{
    if (!ck->has_bitmaps || !ck->bitmap_dir_size ||
        ck->bitmap_dir_size > 64 * 1024 * 1024) {
        return 0;
    }
    inc_refcounts(ck, ck->bitmap_dir_offset, ck->bitmap_dir_size);
    uint8_t *dir = g_malloc(ck->bitmap_dir_size);
    int ret = ck_read(ck, ck->bitmap_dir_offset, ck->bitmap_dir_size, dir);
    if (ret < 0) {
        ck->res->check_errors++;
        g_free(dir);
        return ret;
    }
    uint64_t p = 0;
    for (uint32_t n = 0; n < ck->nb_bitmaps && p + 24 <= ck->bitmap_dir_size;
         n++) {
        uint64_t table = qcow2_be64(dir + p);
        uint32_t table_size = qcow2_be32(dir + p + 8);
        uint16_t name_size = qcow2_be16(dir + p + 18);
        uint32_t extra = qcow2_be32(dir + p + 20);
        p += ROUND_UP(24 + (uint64_t)extra + name_size, 8);
        if ((uint64_t)table_size * 8 > 64 * 1024 * 1024) {
            continue;
        }
        inc_refcounts(ck, table, (uint64_t)table_size * 8);
        uint8_t *t = g_malloc0((uint64_t)table_size * 8 + 8);
        ret = ck_read(ck, table, (uint64_t)table_size * 8, t);
        if (ret < 0) {
            ck->res->check_errors++;
            g_free(t);
            break;
        }
        for (uint32_t i = 0; i < table_size; i++) {
            uint64_t o = qcow2_be64(t + i * 8) & 0x00fffffffffffe00ULL;
            if (o) {
                inc_refcounts(ck, o, ck->cluster_size);
            }
        }
        g_free(t);
    }
    g_free(dir);
    return ret < 0 ? ret : 0;
}

/* The refcount blocks: each must be counted exactly once. */
static void check_refblocks(Ck *ck, bool *rebuild)
{
    Qcow2CheckResult *res = ck->res;
    uint64_t file_clusters = size_to_clusters(ck, ck->file_len);
    for (uint64_t i = 0; i < ck->reftable_size; i++) {
        uint64_t offset = ck->reftable[i] & REFT_OFFSET_MASK;
        uint64_t cluster = offset >> ck->cluster_bits;
        if (ck->reftable[i] & ~REFT_OFFSET_MASK) {
            fprintf(stderr,
                    "ERROR refcount table entry %" PRId64 " has reserved "
                    "bits set\n",
                    (int64_t)i);
            res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (offset & (ck->cluster_size - 1)) {
            fprintf(stderr,
                    "ERROR refcount block %" PRId64 " is not cluster aligned; "
                    "refcount table entry corrupted\n",
                    (int64_t)i);
            res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (cluster >= file_clusters) {
            res->corruptions++;
            fprintf(stderr, "%s refcount block %" PRId64 " is outside image\n",
                    (ck->fix & QCOW2_FIX_ERRORS) ? "Repairing" : "ERROR",
                    (int64_t)i);
            /* the rebuild replaces the entry */
            *rebuild = true;
            continue;
        }
        if (offset) {
            inc_refcounts(ck, offset, ck->cluster_size);
            if (ck->rc[cluster] != 1) {
                fprintf(stderr,
                        "ERROR refcount block %" PRId64 " refcount=%" PRIu64
                        "\n",
                        (int64_t)i, ck->rc[cluster]);
                res->corruptions++;
                *rebuild = true;
            }
        }
    }
}

static int coroutine_fn calculate_refcounts(Ck *ck, bool *rebuild)
{
    g_free(ck->rc);
    ck->rc = NULL;
    ck->nb_clusters = 0;
    grow_rc(ck, size_to_clusters(ck, ck->file_len));

    inc_refcounts(ck, 0, ck->cluster_size);
    int ret = check_l1(ck, true, ck->l1_offset, ck->l1_size, CHECK_FRAG_INFO);
    if (ret < 0) {
        return ret;
    }
    ret = check_snapshots(ck);
    if (ret < 0) {
        return ret;
    }
    inc_refcounts(ck, ck->snapshots_offset, ck->snapshots_size);
    inc_refcounts(ck, ck->reftable_offset, ck->reftable_size * 8);
    ret = check_bitmaps(ck);
    if (ret < 0) {
        return ret;
    }
    check_refblocks(ck, rebuild);
    return 0;
}

/* ---- comparing with the refcounts on disk ---- */

/*
 * Compare counted and stored refcounts for clusters [0, n), fixing what
 * `fix` allows (blocks rewritten once each), and remember the stored
 * values for the COPIED check.
 */
static int coroutine_fn compare_refcounts(Ck *ck, int fix, bool *rebuild)
{
    Qcow2CheckResult *res = ck->res;
    uint64_t n = size_to_clusters(ck, ck->file_len);
    uint64_t per_block = 1ULL << ck->rb_bits;
    uint8_t *block = g_malloc(ck->cluster_size);

    grow_rc(ck, n);
    g_free(ck->disk_rc);
    ck->disk_n = n;
    ck->disk_rc = g_new0(uint64_t, MAX(n, 1));
    ck->highest_cluster = 0;
    bool reported = false;

    for (uint64_t r = 0; r * per_block < n; r++) {
        uint64_t rb = r < ck->reftable_size ? ck->reftable[r] & REFT_OFFSET_MASK
                                            : 0;
        bool readable = true, modified = false;
        if (rb && (rb & (ck->cluster_size - 1))) {
            readable = false;
        } else if (rb) {
            if (ck_read(ck, rb, ck->cluster_size, block) < 0) {
                readable = false;
            }
        } else {
            memset(block, 0, ck->cluster_size);
        }
        uint64_t end = MIN(n, (r + 1) * per_block);
        for (uint64_t i = r * per_block; i < end; i++) {
            if (!readable) {
                if (!reported) {
                    /* the driver's corruption report, once per pass */
                    /* worded as QEMU's driver does, read-only or not */
                    fprintf(stderr,
                            "qcow2: %s: Refblock offset %#" PRIx64
                            " unaligned (reftable index: %#" PRIx64 "); "
                            "further %scorruption events will be "
                            "suppressed\n",
                            ck->fix ? "Marking image as corrupt"
                                    : "Image is corrupt",
                            rb, r, ck->fix ? "" : "non-fatal ");
                    reported = true;
                }
                fprintf(stderr,
                        "Can't get refcount for cluster %" PRId64 ": %s\n",
                        (int64_t)i, g_strerror(EIO));
                res->check_errors++;
                continue;
            }
            uint64_t rc1 = qcow2_refcount_get(block, ck->refcount_order,
                                              i - r * per_block);
            uint64_t rc2 = ck->rc[i];
            if (rc1 || rc2) {
                ck->highest_cluster = (int64_t)i;
            }
            ck->disk_rc[i] = rc1;
            if (rc1 == rc2) {
                continue;
            }
            int64_t *fixed = NULL;
            if (rc1 == 0) {
                *rebuild = true;
            } else if (rc1 > rc2 && (fix & QCOW2_FIX_LEAKS)) {
                fixed = &res->leaks_fixed;
            } else if (rc1 < rc2 && (fix & QCOW2_FIX_ERRORS)) {
                fixed = &res->corruptions_fixed;
            }
            fprintf(stderr,
                    "%s cluster %" PRId64 " refcount=%" PRIu64
                    " reference=%" PRIu64 "\n",
                    fixed ? "Repairing" : rc1 < rc2 ? "ERROR" : "Leaked",
                    (int64_t)i, rc1, rc2);
            if (fixed && rc2 <= ck->refcount_max) {
                qcow2_refcount_set(block, ck->refcount_order,
                                   i - r * per_block, rc2);
                ck->disk_rc[i] = rc2;
                modified = true;
                (*fixed)++;
                continue;
            }
            if (rc1 < rc2) {
                res->corruptions++;
            } else {
                res->leaks++;
            }
        }
        if (modified) {
            int ret = ck_write(ck, rb, ck->cluster_size, block);
            if (ret < 0) {
                fprintf(stderr, "ERROR writing refcount block: %s\n",
                        g_strerror(-ret));
                res->check_errors++;
            }
        }
    }
    g_free(block);
    return 0;
}

/* The stored refcount of a cluster (0 beyond the refcount structure). */
static int coroutine_fn disk_refcount(Ck *ck, uint64_t cluster, uint64_t *rc)
{
    uint64_t r = cluster >> ck->rb_bits;
    uint64_t rb = r < ck->reftable_size ? ck->reftable[r] & REFT_OFFSET_MASK : 0;
    *rc = 0;
    if (rb & (ck->cluster_size - 1)) {
        return -EIO;
    }
    if (cluster < ck->disk_n) {
        *rc = ck->disk_rc[cluster];
        return 0;
    }
    if (!rb) {
        return 0;
    }
    uint8_t *block = g_malloc(ck->cluster_size);
    int ret = ck_read(ck, rb, ck->cluster_size, block);
    if (ret >= 0) {
        *rc = qcow2_refcount_get(block, ck->refcount_order,
                                 cluster & ((1ULL << ck->rb_bits) - 1));
    }
    g_free(block);
    return ret < 0 ? ret : 0;
}

/* ---- rebuilding the refcount structure ---- */

/* Take `count` free contiguous clusters of the counted array (refcount 1). */
static uint64_t alloc_clusters(Ck *ck, uint64_t count, uint64_t *first_free)
{
    uint64_t contiguous = 0, cluster;
    bool first_gap = true;
    for (cluster = *first_free; cluster < ck->nb_clusters && contiguous < count;
         cluster++) {
        if (!ck->rc[cluster]) {
            contiguous++;
            if (first_gap) {
                *first_free = cluster;
                first_gap = false;
            }
        } else {
            contiguous = 0;
        }
    }
    if (contiguous < count) {
        /* extend past the end of the array (and the file) */
        grow_rc(ck, cluster + count - contiguous);
        cluster += count - contiguous;
    }
    cluster -= count;
    for (uint64_t i = 0; i < count; i++) {
        ck->rc[cluster + i] = 1;
    }
    return cluster << ck->cluster_bits;
}

/*
 * Write a refcount block for every block range in [first, end) holding a
 * used cluster, allocating it in free clusters.  Returns whether the new
 * table had to grow, or -errno.
 */
static int coroutine_fn write_refblocks(Ck *ck, uint64_t first, uint64_t end,
                                        uint64_t **table, uint64_t *entries)
{
    uint64_t per_block = 1ULL << ck->rb_bits;
    uint64_t first_free = 0;
    bool grown = false;
    uint8_t *block = g_malloc(ck->cluster_size);

    for (uint64_t cluster = first; cluster < end && cluster < ck->nb_clusters;
         cluster++) {
        if (!ck->rc[cluster]) {
            continue;
        }
        uint64_t r = cluster >> ck->rb_bits;
        if (r >= *entries) {
            uint64_t n = ROUND_UP((r + 1) * 8, ck->cluster_size) / 8;
            *table = g_renew(uint64_t, *table, n);
            memset(*table + *entries, 0, (n - *entries) * 8);
            *entries = n;
            grown = true;
        }
        if (!(*table)[r]) {
            (*table)[r] = alloc_clusters(ck, 1, &first_free);
        }
        /* rc may have grown (and moved) in alloc_clusters */
        memset(block, 0, ck->cluster_size);
        for (uint64_t i = 0; i < per_block && r * per_block + i < ck->nb_clusters;
             i++) {
            qcow2_refcount_set(block, ck->refcount_order, i,
                               MIN(ck->rc[r * per_block + i], ck->refcount_max));
        }
        int ret = ck_write(ck, (*table)[r], ck->cluster_size, block);
        if (ret < 0) {
            g_free(block);
            return ret;
        }
        cluster = r * per_block + per_block - 1;
    }
    g_free(block);
    return grown;
}

static int coroutine_fn rebuild_refcounts(Ck *ck)
{
    uint64_t *table = NULL, entries = 0, offset = 0, clusters = 0;
    int ret = write_refblocks(ck, 0, ck->nb_clusters, &table, &entries);
    if (ret < 0) {
        goto out;
    }
    /*
     * Place the table in free space; the clusters it takes change the
     * refcounts of some block (rewritten), which may need a new block and
     * a larger table: repeat until the table stops growing.  Earlier table
     * locations are left as leaks for the second pass to fix.
     */
    do {
        uint64_t first_free = 0;
        clusters = size_to_clusters(ck, entries * 8);
        offset = alloc_clusters(ck, clusters, &first_free);
        uint64_t start = offset >> ck->cluster_bits;
        ret = write_refblocks(ck, start, start + clusters, &table, &entries);
        if (ret < 0) {
            goto out;
        }
    } while (ret > 0);

    uint64_t bytes = clusters * ck->cluster_size;
    uint8_t *be = g_malloc0(bytes);
    for (uint64_t i = 0; i < entries; i++) {
        qcow2_put_be64(be + i * 8, table[i]);
    }
    ret = ck_write(ck, offset, bytes, be);
    g_free(be);
    if (ret < 0) {
        goto out;
    }
    ret = blk_co_flush(ck->blk);
    if (ret < 0) {
        goto out;
    }
    uint8_t hdr[12];
    qcow2_put_be64(hdr, offset);
    qcow2_put_be32(hdr + 8, (uint32_t)clusters);
    ret = ck_write(ck, 48, 12, hdr);
    if (ret >= 0) {
        ret = blk_co_flush(ck->blk);
    }
    if (ret < 0) {
        goto out;
    }
    g_free(ck->reftable);
    ck->reftable = g_renew(uint64_t, table, clusters * ck->cluster_size / 8);
    memset(ck->reftable + entries, 0,
           (clusters * ck->cluster_size / 8 - entries) * 8);
    table = NULL;
    ck->reftable_offset = offset;
    ck->reftable_clusters = (uint32_t)clusters;
    ck->reftable_size = clusters * ck->cluster_size / 8;
    ret = 0;
out:
    g_free(table);
    return ret;
}

/* ---- COPIED flags ---- */

static int coroutine_fn check_oflag_copied(Ck *ck)
{
    Qcow2CheckResult *res = ck->res;
    bool repair;
    if (ck->fix & QCOW2_FIX_ERRORS) {
        repair = true;
    } else if (ck->fix & QCOW2_FIX_LEAKS) {
        /* only when the refcounts are known to be right */
        repair = !res->check_errors && !res->corruptions && !res->leaks;
    } else {
        repair = false;
    }
    uint8_t *l2 = g_malloc(ck->cluster_size);
    int ret = 0;
    for (uint32_t i = 0; i < ck->l1_size; i++) {
        uint64_t l1e = ck->l1[i];
        uint64_t l2_offset = l1e & L1E_OFFSET_MASK;
        uint64_t rc;
        int dirty = 0;
        if (!l2_offset) {
            continue;
        }
        if (disk_refcount(ck, l2_offset >> ck->cluster_bits, &rc) < 0) {
            continue;
        }
        if ((rc == 1) != ((l1e & QCOW_OFLAG_COPIED) != 0)) {
            res->corruptions++;
            fprintf(stderr,
                    "%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%" PRIx64
                    " refcount=%" PRIu64 "\n",
                    repair ? "Repairing" : "ERROR", (int)i, l1e, rc);
            if (repair) {
                uint64_t ne = rc == 1 ? l1e | QCOW_OFLAG_COPIED
                                      : l1e & ~QCOW_OFLAG_COPIED;
                uint8_t be[8];
                qcow2_put_be64(be, ne);
                ret = ck_write(ck, ck->l1_offset + (uint64_t)i * 8, 8, be);
                if (ret < 0) {
                    res->check_errors++;
                    break;
                }
                ck->l1[i] = ne;
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        ret = load_l2(ck, true, i, l2_offset, l2);
        if (ret < 0) {
            fprintf(stderr, "ERROR: Could not read L2 table: %s\n",
                    g_strerror(-ret));
            res->check_errors++;
            break;
        }
        for (uint64_t j = 0; j < ck->l2_size; j++) {
            uint64_t e = qcow2_be64(l2 + j * 8);
            Qcow2ClusterType t = qcow2_l2_entry_type(e, ck->version);
            if (t != QCOW2_CLUSTER_NORMAL && t != QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            }
            if (disk_refcount(ck, (e & L2E_OFFSET_MASK) >> ck->cluster_bits,
                              &rc) < 0) {
                continue;
            }
            if ((rc == 1) != ((e & QCOW_OFLAG_COPIED) != 0)) {
                res->corruptions++;
                fprintf(stderr,
                        "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                        " refcount=%" PRIu64 "\n",
                        repair ? "Repairing" : "ERROR", e, rc);
                if (repair) {
                    qcow2_put_be64(l2 + j * 8, rc == 1
                                                   ? e | QCOW_OFLAG_COPIED
                                                   : e & ~QCOW_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty) {
            ret = ck_write(ck, l2_offset, ck->cluster_size, l2);
            if (ret < 0) {
                fprintf(stderr, "ERROR: Could not write L2 table: %s\n",
                        g_strerror(-ret));
                res->check_errors++;
                break;
            }
            put_l2_cache(ck, i, l2);
            res->corruptions -= dirty;
            res->corruptions_fixed += dirty;
        }
    }
    g_free(l2);
    return ret < 0 ? ret : 0;
}

/* ---- the whole check ---- */

static int coroutine_fn check_refcounts(Ck *ck)
{
    Qcow2CheckResult *res = ck->res;
    bool rebuild = false;
    int ret;

    res->total_clusters = (int64_t)size_to_clusters(ck, ck->size);
    ret = calculate_refcounts(ck, &rebuild);
    if (ret < 0) {
        return ret;
    }
    /* Compare without fixing first; repeat with fixes if worthwhile. */
    Qcow2CheckResult pre = *res;
    compare_refcounts(ck, 0, &rebuild);

    if (rebuild && (ck->fix & QCOW2_FIX_ERRORS)) {
        Qcow2CheckResult old = *res;
        int64_t fresh_leaks = 0;
        fprintf(stderr, "Rebuilding refcount structure\n");
        ret = rebuild_refcounts(ck);
        if (ret < 0) {
            fprintf(stderr, "qcow2: Could not rebuild the refcount structure: "
                            "%s\n",
                    g_strerror(-ret));
            res->check_errors++;
            return ret;
        }
        res->corruptions = 0;
        res->leaks = 0;
        /* The references changed with the new table: count again. */
        rebuild = false;
        res->allocated_clusters = res->fragmented_clusters =
            res->compressed_clusters = 0;
        ret = calculate_refcounts(ck, &rebuild);
        if (ret < 0) {
            return ret;
        }
        if (ck->fix & QCOW2_FIX_LEAKS) {
            /* The old structure is now leaked: free it. */
            Qcow2CheckResult saved = *res;
            *res = (Qcow2CheckResult){ 0 };
            compare_refcounts(ck, QCOW2_FIX_LEAKS, &rebuild);
            if (rebuild) {
                fprintf(stderr,
                        "ERROR rebuilt refcount structure is still broken\n");
            }
            fresh_leaks = res->leaks;
            *res = saved;
        }
        if (res->corruptions < old.corruptions) {
            res->corruptions_fixed += old.corruptions - res->corruptions;
        }
        if (res->leaks < old.leaks) {
            res->leaks_fixed += old.leaks - res->leaks;
        }
        res->leaks += fresh_leaks;
    } else if (ck->fix) {
        if (rebuild) {
            fprintf(stderr, "ERROR need to rebuild refcount structures\n");
            res->check_errors++;
            return -EIO;
        }
        if (res->leaks || res->corruptions) {
            *res = pre;
            compare_refcounts(ck, ck->fix, &rebuild);
        }
    }
    ret = check_oflag_copied(ck);
    if (ret < 0) {
        return ret;
    }
    res->image_end_offset = (ck->highest_cluster + 1) * (int64_t)ck->cluster_size;
    return 0;
}

int coroutine_fn qcow2_co_check_file(BlockBackend *file, int fix,
                                     Qcow2CheckResult *res, GError **errp)
{
    Ck ck = { .blk = file, .fix = fix, .res = res };
    int64_t len = blk_getlength(file);
    int ret;

    *res = (Qcow2CheckResult){ 0 };
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the image size");
        return (int)len;
    }
    ck.file_len = (uint64_t)len;
    ret = read_header(&ck, errp);
    if (ret < 0) {
        goto out;
    }
    if (size_to_clusters(&ck, ck.file_len) > INT32_MAX) {
        res->check_errors++;
        ret = -EFBIG;
        goto out;
    }
    ret = read_snapshot_table(&ck);
    if (ret < 0) {
        goto out;
    }
    preload_l2(&ck);
    ret = check_refcounts(&ck);
    if (ret < 0) {
        goto out;
    }
    if (fix && !res->check_errors && !res->corruptions && ck.version >= 3 &&
        (ck.incompat & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT))) {
        /* consistent now: clear the dirty and corrupt bits */
        uint8_t be[8];
        qcow2_put_be64(be, ck.incompat &
                               ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT));
        ret = blk_co_flush(file);
        if (ret >= 0) {
            ret = ck_write(&ck, 72, 8, be);
        }
    }
    if (ret >= 0 && fix) {
        ret = blk_co_flush(file);
    }
out:
    g_free(ck.l1);
    g_free(ck.reftable);
    g_free(ck.l2_cache);
    g_free(ck.l2_cached);
    g_free(ck.rc);
    g_free(ck.disk_rc);
    return ret;
}
