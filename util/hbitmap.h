/*
 * A large, sparse bitmap with fast range updates, search and counting.
 *
 * Bits are grouped in chunks of HBITMAP_CHUNK_BITS.  A chunk is stored
 * only while it is partly set: an all-clear chunk is a NULL pointer and an
 * all-set (full-width) chunk a shared marker, so a new bitmap of any size
 * costs two small calloc'd arrays and setting or clearing whole chunks
 * never allocates.  Two summaries (a bit per chunk, and a bit per summary
 * word above that) find the next chunk with set bits, or with clear bits,
 * without looking at the others; the number of set bits is kept per chunk
 * and in total, so counting is O(1).
 *
 * Costs, with n the bits a call covers: set/reset O(n/64 + chunks
 * touched), amortised O(1) for the few bits a write touches (a chunk is
 * allocated once, the first time a bit in it is set); next_dirty /
 * next_clean O(distance in chunks / 4096 + 512); merge O(chunks with set
 * bits in the source).  A 64 TiB disk at 64 KiB granularity (2^30 bits)
 * has 32768 chunks: the per-chunk arrays are 384 KiB and lazily touched.
 *
 * Bit indexes are uint64_t; callers keep them below hbitmap_size()
 * (out-of-range parts of a range are ignored).  Not thread-safe.
 */
#ifndef UTIL_HBITMAP_H
#define UTIL_HBITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HBITMAP_CHUNK_SHIFT 15
#define HBITMAP_CHUNK_BITS (UINT64_C(1) << HBITMAP_CHUNK_SHIFT)
/* Largest supported size in bits (2^40: 512 TiB at 512-byte granules). */
#define HBITMAP_MAX_BITS (UINT64_C(1) << 40)

typedef struct HBitmap HBitmap;

/* A bitmap of `nbits` clear bits (nbits <= HBITMAP_MAX_BITS). */
HBitmap *hbitmap_new(uint64_t nbits);
void hbitmap_free(HBitmap *hb);
/* A copy with the same size and bits. */
HBitmap *hbitmap_copy(const HBitmap *hb);

uint64_t hbitmap_size(const HBitmap *hb);
/* Number of set bits. */
uint64_t hbitmap_count(const HBitmap *hb);
bool hbitmap_get(const HBitmap *hb, uint64_t bit);

void hbitmap_set(HBitmap *hb, uint64_t start, uint64_t count);
void hbitmap_reset(HBitmap *hb, uint64_t start, uint64_t count);
void hbitmap_reset_all(HBitmap *hb);

/* First set (next_dirty) or clear (next_clean) bit in [start, start +
 * count), or -1 if there is none. */
int64_t hbitmap_next_dirty(const HBitmap *hb, uint64_t start, uint64_t count);
int64_t hbitmap_next_clean(const HBitmap *hb, uint64_t start, uint64_t count);
/* The first run of set bits inside [start, start + count): its start and
 * length (cut at the end of the range).  false if the range is clear. */
bool hbitmap_next_dirty_area(const HBitmap *hb, uint64_t start, uint64_t count,
                             uint64_t *area_start, uint64_t *area_count);

/* dst |= src.  The sizes must be equal (returns false otherwise, dst
 * unchanged). */
bool hbitmap_merge(HBitmap *dst, const HBitmap *src);

/* Change the size.  Bits beyond a smaller size are dropped; new bits are
 * clear. */
void hbitmap_truncate(HBitmap *hb, uint64_t nbits);

/*
 * Serialised form, as the qcow2 bitmaps extension stores it: bit i of the
 * range is bit (i % 8) of byte i / 8.  `start` must be a multiple of 64
 * (false otherwise).  serialize writes (count + 7) / 8 bytes, padding bits
 * past the range with zeroes; deserialize replaces the range with buf.
 */
bool hbitmap_serialize(const HBitmap *hb, uint64_t start, uint64_t count,
                       uint8_t *buf);
bool hbitmap_deserialize(HBitmap *hb, uint64_t start, uint64_t count,
                         const uint8_t *buf);

/*
 * SHA-256 (lower-case hex, caller frees) of the bitmap as an array of
 * max(1, ceil(size / 64)) little-endian 64-bit words: the bytes QEMU
 * hashes for x-debug-block-dirty-bitmap-sha256 on x86-64.
 */
char *hbitmap_sha256(const HBitmap *hb);

#endif
