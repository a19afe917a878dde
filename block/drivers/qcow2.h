/*
 * qcow2: the format driver's shared state and internal interfaces.
 *
 * The on-disk format is QEMU's docs/interop/qcow2.txt.  The driver is split
 * by concern: qcow2.c (open/close, header, request entry points),
 * qcow2-cluster.c (L1/L2 mapping and allocation), qcow2-refcount.c
 * (refcounts and cluster allocation), qcow2-cache.c (metadata cache),
 * qcow2-compress.c (deflate), qcow2-create.c (image creation).
 *
 * Locking: one coroutine mutex (s->lock) protects all metadata (caches, L1,
 * refcount table, allocation state).  It is held while metadata is looked
 * up or changed and dropped around guest data I/O, so requests to
 * different clusters overlap; allocating requests to the same clusters are
 * serialised through s->allocs.
 */
#ifndef BLOCK_DRIVERS_QCOW2_H
#define BLOCK_DRIVERS_QCOW2_H

#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <sys/queue.h>

#include "block/block_int.h"

#define QCOW_MAGIC 0x514649fbU /* "QFI\xfb" */

#ifndef ROUND_UP
#define ROUND_UP(n, d) ((((n) + (d) - 1) / (d)) * (d))
#endif

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_REFCOUNT_ORDER 6
/* Limits on tables read from an untrusted header (bytes), as QEMU's. */
#define QCOW2_MAX_L1_BYTES (32 * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES (8 * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_BACKING_NAME 1023
/* Largest host offset an L2 entry can hold (bits 9..55). */
#define QCOW2_MAX_HOST_OFFSET ((1ULL << 56) - 1)

/* Header feature bits. */
#define QCOW2_INCOMPAT_DIRTY (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN                                                   \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE | \
     QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)

/* Header extension types. */
#define QCOW2_EXT_END 0
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857U
#define QCOW2_EXT_BITMAPS 0x23852875U
#define QCOW2_EXT_CRYPTO 0x0537be77U
#define QCOW2_EXT_DATA_FILE 0x44415441U

/* Table entry bits. */
#define QCOW_OFLAG_COPIED (1ULL << 63)
#define QCOW_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW_OFLAG_ZERO (1ULL << 0)
#define L1E_OFFSET_MASK 0x00fffffffffffe00ULL
#define L2E_OFFSET_MASK 0x00fffffffffffe00ULL
#define REFT_OFFSET_MASK 0xfffffffffffffe00ULL
/* Bits that must be zero in a standard L1/L2 entry. */
#define L1E_RESERVED_MASK 0x7f000000000001ffULL
#define L2E_STD_RESERVED_MASK 0x3f000000000001feULL

/* v3 header length we write (104 bytes + compression type + padding). */
#define QCOW2_V3_HEADER_LENGTH 112
#define QCOW2_V2_HEADER_LENGTH 72

typedef enum Qcow2ClusterType {
    QCOW2_CLUSTER_UNALLOCATED,
    QCOW2_CLUSTER_ZERO_PLAIN, /* zero flag, no host cluster */
    QCOW2_CLUSTER_ZERO_ALLOC, /* zero flag with a preallocated host cluster */
    QCOW2_CLUSTER_NORMAL,
    QCOW2_CLUSTER_COMPRESSED,
} Qcow2ClusterType;

/* Metadata areas for the overlap check (bit mask). */
enum {
    QCOW2_OL_MAIN_HEADER = 1 << 0,
    QCOW2_OL_ACTIVE_L1 = 1 << 1,
    QCOW2_OL_ACTIVE_L2 = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE = 1 << 3,
    QCOW2_OL_REFCOUNT_BLOCK = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE = 1 << 5,
    QCOW2_OL_INACTIVE_L1 = 1 << 6,
    QCOW2_OL_INACTIVE_L2 = 1 << 7,
    QCOW2_OL_BITMAP_DIRECTORY = 1 << 8,
    QCOW2_OL_CONSTANT = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 |
                        QCOW2_OL_REFCOUNT_TABLE | QCOW2_OL_SNAPSHOT_TABLE |
                        QCOW2_OL_INACTIVE_L1 | QCOW2_OL_BITMAP_DIRECTORY,
    QCOW2_OL_CACHED = QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 |
                      QCOW2_OL_REFCOUNT_BLOCK,
    QCOW2_OL_ALL = QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2,
};

typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str;
    char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size;
    bool has_icount;
    uint64_t icount;
} Qcow2Snapshot;

/* A header extension kept verbatim (unknown ones, bitmaps, crypto). */
typedef struct Qcow2Extension {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
} Qcow2Extension;

/* An allocating write in flight over guest clusters [start, end) (bytes). */
typedef struct Qcow2InflightAlloc {
    uint64_t start, end;
    CoQueue waiters;
    LIST_ENTRY(Qcow2InflightAlloc) next;
} Qcow2InflightAlloc;

typedef struct Qcow2Cache Qcow2Cache;

typedef struct BDRVQcow2State {
    BlockDriverState *bs;

    /* header */
    int version;
    int cluster_bits;
    uint64_t cluster_size;
    int l2_bits;       /* log2 of entries per L2 table */
    uint64_t l2_size;  /* entries per L2 table */
    uint64_t size;     /* virtual disk size */
    uint32_t l1_size;  /* entries in the active L1 table */
    uint64_t l1_table_offset;
    uint64_t *l1_table; /* host byte order, l1_alloc entries */
    uint32_t l1_alloc;
    int refcount_order;
    int refcount_bits;
    uint64_t refcount_max;
    int refblock_bits; /* log2 of entries per refcount block */
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint64_t reftable_size; /* entries */
    uint64_t *reftable;     /* host byte order */
    uint64_t reftable_used; /* entries up to the last non-empty one */
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size; /* bytes of the table on disk */
    Qcow2Snapshot *snapshots;
    uint64_t incompat, compat, autoclear;
    uint32_t header_length;
    uint8_t compression_type;
    char *backing_file;   /* from the header, or NULL */
    char *backing_format; /* from the extension, or NULL */
    GPtrArray *extensions; /* of Qcow2Extension *, preserved verbatim */
    uint64_t bitmap_dir_offset, bitmap_dir_size; /* for the overlap check */

    /* runtime */
    Qcow2Cache *l2_cache;
    Qcow2Cache *rc_cache;
    CoMutex lock;
    LIST_HEAD(, Qcow2InflightAlloc) allocs;
    uint64_t free_cluster_index; /* no free cluster below this one */
    uint64_t free_byte_offset;   /* packing of compressed clusters */
    /* Host offsets at or above this were beyond the end of the file when
     * allocated and have not been written since: they read as zeroes. */
    uint64_t fresh_start;
    bool writable;
    bool corrupt_fatal; /* corruption detected: no more writes */
    int overlap_check;
    bool discard_passthrough;
    bool lazy_refcounts;
    int64_t cache_clean_interval;
    guint cache_clean_source; /* GLib timeout id, 0: none */
} BDRVQcow2State;

/* ---- small pure helpers (unit-tested) ---- */

static inline uint64_t qcow2_be64(const void *p)
{
    const uint8_t *b = p;
    return ((uint64_t)b[0] << 56) | ((uint64_t)b[1] << 48) |
           ((uint64_t)b[2] << 40) | ((uint64_t)b[3] << 32) |
           ((uint64_t)b[4] << 24) | ((uint64_t)b[5] << 16) |
           ((uint64_t)b[6] << 8) | b[7];
}
static inline uint32_t qcow2_be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
           ((uint32_t)b[2] << 8) | b[3];
}
static inline uint16_t qcow2_be16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)((b[0] << 8) | b[1]);
}
static inline void qcow2_put_be64(void *p, uint64_t v)
{
    uint8_t *b = p;
    for (int i = 7; i >= 0; i--) {
        b[i] = v & 0xff;
        v >>= 8;
    }
}
static inline void qcow2_put_be32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = v >> 24;
    b[1] = v >> 16;
    b[2] = v >> 8;
    b[3] = v;
}
static inline void qcow2_put_be16(void *p, uint16_t v)
{
    uint8_t *b = p;
    b[0] = v >> 8;
    b[1] = v & 0xff;
}

/*
 * Refcount entry `idx` of a refcount block whose entries are 1 << order
 * bits wide.  Sub-byte widths pack entries from the least significant bit
 * of each byte; wider ones are big-endian.
 */
static inline uint64_t qcow2_refcount_get(const void *block, int order,
                                          uint64_t idx)
{
    const uint8_t *b = block;
    switch (order) {
    case 0:
    case 1:
    case 2: {
        int bits = 1 << order;
        int per_byte = 8 / bits;
        int shift = (int)(idx % per_byte) * bits;
        return (b[idx / per_byte] >> shift) & ((1u << bits) - 1);
    }
    case 3:
        return b[idx];
    case 4:
        return qcow2_be16(b + idx * 2);
    case 5:
        return qcow2_be32(b + idx * 4);
    default:
        return qcow2_be64(b + idx * 8);
    }
}

static inline void qcow2_refcount_set(void *block, int order, uint64_t idx,
                                      uint64_t value)
{
    uint8_t *b = block;
    switch (order) {
    case 0:
    case 1:
    case 2: {
        int bits = 1 << order;
        int per_byte = 8 / bits;
        int shift = (int)(idx % per_byte) * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        b[idx / per_byte] =
            (uint8_t)((b[idx / per_byte] & ~mask) | ((value << shift) & mask));
        break;
    }
    case 3:
        b[idx] = (uint8_t)value;
        break;
    case 4:
        qcow2_put_be16(b + idx * 2, (uint16_t)value);
        break;
    case 5:
        qcow2_put_be32(b + idx * 4, (uint32_t)value);
        break;
    default:
        qcow2_put_be64(b + idx * 8, value);
        break;
    }
}

/* The type of an L2 entry (standard cluster descriptors, no subclusters). */
static inline Qcow2ClusterType qcow2_l2_entry_type(uint64_t entry, int version)
{
    if (entry & QCOW_OFLAG_COMPRESSED) {
        return QCOW2_CLUSTER_COMPRESSED;
    }
    if ((entry & QCOW_OFLAG_ZERO) && version >= 3) {
        return (entry & L2E_OFFSET_MASK) ? QCOW2_CLUSTER_ZERO_ALLOC
                                         : QCOW2_CLUSTER_ZERO_PLAIN;
    }
    return (entry & L2E_OFFSET_MASK) ? QCOW2_CLUSTER_NORMAL
                                     : QCOW2_CLUSTER_UNALLOCATED;
}

/*
 * Decode a compressed cluster descriptor: the host byte offset of the
 * compressed data and how many bytes to read (whole 512-byte sectors from
 * the one containing the offset).
 */
static inline void qcow2_compressed_decode(uint64_t entry, int cluster_bits,
                                           uint64_t *host, uint64_t *len)
{
    int x = 62 - (cluster_bits - 8);
    uint64_t off = entry & ((1ULL << x) - 1);
    uint64_t extra = (entry >> x) & ((1ULL << (cluster_bits - 8)) - 1);
    *host = off;
    *len = (extra + 1) * 512 - (off & 511);
}

/* Build the descriptor for `len` compressed bytes at host offset `host`. */
static inline uint64_t qcow2_compressed_encode(uint64_t host, uint64_t len,
                                               int cluster_bits)
{
    int x = 62 - (cluster_bits - 8);
    uint64_t extra = ((host + len - 1) >> 9) - (host >> 9);
    return QCOW_OFLAG_COMPRESSED | (extra << x) | host;
}

static inline uint64_t qcow2_start_of_cluster(const BDRVQcow2State *s,
                                              uint64_t off)
{
    return off & ~(s->cluster_size - 1);
}
static inline uint64_t qcow2_offset_into_cluster(const BDRVQcow2State *s,
                                                 uint64_t off)
{
    return off & (s->cluster_size - 1);
}
static inline uint64_t qcow2_size_to_clusters(const BDRVQcow2State *s,
                                              uint64_t size)
{
    return (size + s->cluster_size - 1) >> s->cluster_bits;
}
/* L1 entries needed for a disk of `size` bytes. */
static inline uint64_t qcow2_size_to_l1(int cluster_bits, uint64_t size)
{
    int shift = cluster_bits + (cluster_bits - 3);
    return (size + (1ULL << shift) - 1) >> shift;
}

/* ---- qcow2.c ---- */
/* Build the first cluster (header, extensions, backing file name) from
 * s into buf (cap bytes, zeroed here); returns the used length or -ENOSPC. */
int64_t qcow2_build_header(BDRVQcow2State *s, uint8_t *buf, size_t cap);
/* Rewrite the header cluster from the in-memory state. */
int coroutine_fn qcow2_update_header(BlockDriverState *bs);
/* Report corruption: mark the image corrupt (header bit), emit
 * BLOCK_IMAGE_CORRUPTED and refuse further writes.  Returns -EIO. */
int qcow2_signal_corruption(BlockDriverState *bs, bool fatal, int64_t offset,
                            int64_t size, const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);
/* Check that writing [offset, offset+size) touches no metadata other than
 * the kinds in `ign`; on overlap signal corruption and return -EIO. */
int qcow2_pre_write_overlap_check(BlockDriverState *bs, int ign,
                                  int64_t offset, int64_t size);

/* ---- qcow2-cache.c ---- */
Qcow2Cache *qcow2_cache_create(BlockDriverState *bs, int entries,
                               size_t table_size, int overlap_ign);
void qcow2_cache_destroy(Qcow2Cache *c);
/* Get the table at `offset` (read it if not cached); takes a reference
 * that qcow2_cache_put() drops. */
int coroutine_fn qcow2_cache_get(BlockDriverState *bs, Qcow2Cache *c,
                                 uint64_t offset, void **table);
/* Same, without reading: the caller fills the whole table. */
int coroutine_fn qcow2_cache_get_empty(BlockDriverState *bs, Qcow2Cache *c,
                                       uint64_t offset, void **table);
void qcow2_cache_put(Qcow2Cache *c, void **table);
void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table);
/* Write back every dirty table of c (after its dependencies). */
int coroutine_fn qcow2_cache_write(BlockDriverState *bs, Qcow2Cache *c);
/* Write back and flush the file. */
int coroutine_fn qcow2_cache_flush(BlockDriverState *bs, Qcow2Cache *c);
/* Tables of c must not reach the disk before those of `dep` (and a flush). */
int coroutine_fn qcow2_cache_set_dependency(BlockDriverState *bs,
                                            Qcow2Cache *c, Qcow2Cache *dep);
/* The file must be flushed before tables of c are written. */
void qcow2_cache_depends_on_flush(Qcow2Cache *c);
/* Forget the table at `offset` (its cluster was freed). */
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
/* Whether `table` lies in the cache; whether the table at offset is cached */
bool qcow2_cache_has_dirty(Qcow2Cache *c);
/* Drop clean tables not used since the last call (cache-clean-interval). */
void qcow2_cache_clean_unused(Qcow2Cache *c);
/* Iterate over cached offsets for the overlap check: nothing needed. */

/* ---- qcow2-refcount.c ---- */
int coroutine_fn qcow2_refcount_init(BlockDriverState *bs, GError **errp);
void qcow2_refcount_close(BlockDriverState *bs);
int coroutine_fn qcow2_get_refcount(BlockDriverState *bs,
                                    uint64_t cluster_index,
                                    uint64_t *refcount);
/* Allocate `size` bytes of contiguous clusters (refcount 1 each); returns
 * the host offset or -errno. */
int64_t coroutine_fn qcow2_alloc_clusters(BlockDriverState *bs, uint64_t size);
/* Allocate `size` bytes (< cluster size) for compressed data, packing
 * several into one host cluster.  Returns the host offset or -errno. */
int64_t coroutine_fn qcow2_alloc_bytes(BlockDriverState *bs, int size);
/* Add `addend` (+1/-1) to the refcount of every cluster touched by
 * [offset, offset+length). */
int coroutine_fn qcow2_update_refcount(BlockDriverState *bs, uint64_t offset,
                                       uint64_t length, int addend);
void coroutine_fn qcow2_free_clusters(BlockDriverState *bs, uint64_t offset,
                                      uint64_t size);
/* Drop the reference an L2 entry holds (normal, allocated zero or
 * compressed cluster). */
void coroutine_fn qcow2_free_any_cluster(BlockDriverState *bs,
                                         uint64_t l2_entry);
/* Recount every cluster from the metadata and rewrite the refcounts (an
 * image left dirty by lazy refcounts).  Open-time only. */
int coroutine_fn qcow2_rebuild_refcounts(BlockDriverState *bs, GError **errp);
/* Whether [offset, offset+size) overlaps a refcount block in use. */
bool qcow2_overlaps_refblock(BDRVQcow2State *s, uint64_t offset,
                             uint64_t size);

/* ---- qcow2-cluster.c ---- */
/*
 * Map guest [offset, offset+*bytes): on return *bytes is shortened to the
 * prefix with the same type (and contiguous host clusters), *host_offset
 * is the host offset of `offset` (NORMAL/ZERO_ALLOC) and *l2_entry the
 * first cluster's L2 entry.  Caller holds s->lock.
 */
int coroutine_fn qcow2_get_host_offset(BlockDriverState *bs, uint64_t offset,
                                       uint64_t *bytes, uint64_t *host_offset,
                                       Qcow2ClusterType *type,
                                       uint64_t *l2_entry);
/* Grow the active L1 table to at least `min_size` entries. */
int coroutine_fn qcow2_grow_l1_table(BlockDriverState *bs, uint64_t min_size);
/* The active L2 table for guest `offset`, allocated (or copied from a shared
 * one) if needed; *table is a cache reference, *index the entry for offset.
 * Caller holds s->lock. */
int coroutine_fn qcow2_get_l2_for_write(BlockDriverState *bs, uint64_t offset,
                                        uint64_t **table, int *index);
/* The guest write path: allocation, copy-on-write, in-place writes. */
int coroutine_fn qcow2_co_pwritev_data(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes, IOVector *qiov,
                                       size_t qiov_offset);
int coroutine_fn qcow2_co_preadv_data(BlockDriverState *bs, uint64_t offset,
                                      uint64_t bytes, IOVector *qiov,
                                      size_t qiov_offset);
/* Zero (zero flag) or discard whole clusters in [offset, offset+bytes). */
int coroutine_fn qcow2_cluster_zeroize(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes, bool may_unmap);
int coroutine_fn qcow2_cluster_discard(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes);
/* Whether any guest cluster at or beyond `offset` is allocated or zero. */
int coroutine_fn qcow2_any_allocated_from(BlockDriverState *bs,
                                          uint64_t offset);
/* Write a compressed cluster (data: one full cluster, or the tail). */
int coroutine_fn qcow2_co_pwrite_compressed(BlockDriverState *bs,
                                            uint64_t offset, uint64_t bytes,
                                            IOVector *qiov);
/* Preallocate host clusters for guest [offset, offset+bytes) (metadata).
 * known_zero: the free space of the file reads as zeroes (a new image),
 * so reused clusters need not be zeroed. */
int coroutine_fn qcow2_preallocate(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes, bool known_zero,
                                   uint64_t *host_end);

/* ---- qcow2-compress.c ---- */
/* Inflate `src` (raw deflate) into exactly `dst_len` bytes of `dst`.
 * Runs on a worker thread.  0 or -EIO. */
int coroutine_fn qcow2_co_decompress(void *dst, size_t dst_len,
                                     const void *src, size_t src_len);
/* Deflate `src` into `dst` (capacity dst_cap); returns the compressed size,
 * -ENOSPC if it does not fit, or -EIO. */
int64_t coroutine_fn qcow2_co_compress(void *dst, size_t dst_cap,
                                       const void *src, size_t src_len);
/* Same, synchronously (tests). */
int qcow2_decompress_buf(void *dst, size_t dst_len, const void *src,
                         size_t src_len);
int64_t qcow2_compress_buf(void *dst, size_t dst_cap, const void *src,
                           size_t src_len);

/* ---- qcow2-create.c ---- */
/* Create a qcow2 image on an open, writable, empty node (blockdev-create
 * and blockd-img create share this). */
typedef struct Qcow2CreateParams {
    uint64_t size;
    uint64_t cluster_size;   /* 0: 64 KiB */
    int version;             /* 2 or 3; 0: 3 */
    const char *backing_file; /* NULL: none */
    const char *backing_fmt;  /* NULL: none */
    int refcount_bits;       /* 0: 16 */
    bool lazy_refcounts;
    PreallocMode preallocation;
} Qcow2CreateParams;
int coroutine_fn qcow2_co_create_on_node(BlockDriverState *file,
                                         const Qcow2CreateParams *p,
                                         GError **errp);
/* blockd-img create: make `filename` (a new file) a qcow2 image. */
int coroutine_fn qcow2_co_create_image(const char *filename,
                                       const Qcow2CreateParams *p,
                                       GError **errp);
int coroutine_fn qcow2_co_create(BlockdevCreateOptions *opts, GError **errp);


/* ---- qcow2-snapshot.c ---- */
/* One snapshot table entry at buf (len bytes available): fills *sn (id_str
 * and name allocated; sn may be NULL) and *disk_size (UINT64_MAX if the
 * entry has none).  Returns the entry's length with its padding, or
 * -EINVAL/-EFBIG. */
int64_t qcow2_snapshot_decode(const uint8_t *buf, size_t len,
                              Qcow2Snapshot *sn, uint64_t *disk_size);
/* Encode sn (24 bytes of extra data, as QEMU writes) into buf, which holds
 * qcow2_snapshot_encoded_size(sn) bytes; returns that size. */
size_t qcow2_snapshot_encoded_size(const Qcow2Snapshot *sn);
size_t qcow2_snapshot_encode(uint8_t *buf, const Qcow2Snapshot *sn,
                             uint64_t disk_size);
/* Free a snapshot list (entries' strings and the array); NULL is fine. */
void qcow2_snapshot_list_free(Qcow2Snapshot *list, uint32_t n);
/* A snapshot as QMP and qemu-img show it (the caller frees it). */
SnapshotInfo *qcow2_snapshot_info(const Qcow2Snapshot *sn);
/* Index of the snapshot matching id and/or name (NULL: any), -1: none. */
int qcow2_snapshot_find(const Qcow2Snapshot *list, uint32_t n,
                        const char *id, const char *name);
/* QEMU's new id: one more than the largest numeric id. */
char *qcow2_snapshot_new_id(const Qcow2Snapshot *list, uint32_t n);
/* Create an internal snapshot of the active state (name, dates, vm clock
 * and icount from *info; id chosen here, returned in *id_out).  -errno. */
int coroutine_fn qcow2_snapshot_create(BlockDriverState *bs,
                                       const Qcow2Snapshot *info,
                                       char **id_out);
/* Delete the snapshot matching id and/or name, with QEMU's messages. */
int coroutine_fn qcow2_snapshot_delete(BlockDriverState *bs, const char *id,
                                       const char *name, GError **errp);
/*
 * QEMU's qcow2_snapshot_load_tmp() (qemu-img convert -l): a read-only
 * node reads the snapshot with this id and/or name (NULL: any) from now
 * on; its L1 table replaces the active one in memory only, the image is
 * not touched.  The node's size stays.  -errno with errp set.
 */
int coroutine_fn qcow2_snapshot_load_tmp(BlockDriverState *bs,
                                         const char *id, const char *name,
                                         GError **errp);
/* Revert the active state to snapshot number idx (its data, virtual size). */
int coroutine_fn qcow2_snapshot_goto(BlockDriverState *bs, int idx,
                                     GError **errp);

/* ---- qcow2-check.c ---- */
/*
 * Consistency check and repair of a qcow2 image file (blockd-img check),
 * with qemu-img's results and messages.  Works on the image file itself
 * (a protocol-level backend), not on an opened qcow2 node, so it also
 * handles images the driver refuses.
 */
enum {
    QCOW2_FIX_LEAKS = 1,
    QCOW2_FIX_ERRORS = 2,
};
typedef struct Qcow2CheckResult {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters, allocated_clusters;
    int64_t fragmented_clusters, compressed_clusters;
} Qcow2CheckResult;
/*
 * Check the qcow2 image in `file` (opened with write and resize
 * permissions when `fix` is non-zero); one pass, as QEMU's driver check.
 * Diagnostics go to stderr.  Returns 0 (results in *res) or -errno: with
 * errp set when the image cannot be checked at all (not qcow2, bad
 * header), or without when the check failed midway (res->check_errors).
 */
int coroutine_fn qcow2_co_check_file(BlockBackend *file, int fix,
                                     Qcow2CheckResult *res, GError **errp);

#endif
