/*
 * Sparse chunked bitmap with summaries (see hbitmap.h for the costs).
 *
 * Invariants: counts[c] is the number of set bits of chunk c; chunks[c]
 * is NULL iff counts[c] == 0, HB_FULL only for a full-width chunk whose
 * bits are all set, else an allocated array of HB_WORDS words whose bits
 * past the bitmap's size are clear.  summary `dirty` has bit c set iff
 * counts[c] > 0, `notfull` iff counts[c] < chunk_bits(c); their upper
 * level has a bit per lower word, set iff that word is non-zero.  Bits
 * past nchunks are clear in both levels.
 */
#include "util/hbitmap.h"

#include <glib.h>
#include <string.h>

#define HB_WORDS (HBITMAP_CHUNK_BITS / 64)
#define WORDS(nbits) (((nbits) + 63) / 64)

/* Marker for an all-set chunk; never dereferenced as a chunk. */
static uint64_t hb_full_marker;
#define HB_FULL (&hb_full_marker)

typedef struct Summary {
    uint64_t *l1; /* a bit per chunk */
    uint64_t *l0; /* a bit per l1 word: the word is non-zero */
} Summary;

struct HBitmap {
    uint64_t size;
    uint64_t count;
    uint64_t nchunks;
    uint64_t **chunks;
    uint32_t *counts;
    Summary dirty;
    Summary notfull;
};

static uint64_t chunk_bits(const HBitmap *hb, uint64_t c)
{
    uint64_t base = c << HBITMAP_CHUNK_SHIFT;
    return MIN(HBITMAP_CHUNK_BITS, hb->size - base);
}

/* ---- summaries ---- */

static void sum_alloc(Summary *s, uint64_t nchunks)
{
    uint64_t n1 = MAX(WORDS(nchunks), 1);
    s->l1 = g_new0(uint64_t, n1);
    s->l0 = g_new0(uint64_t, MAX(WORDS(n1), 1));
}

static void sum_free(Summary *s)
{
    g_free(s->l1);
    g_free(s->l0);
}

static void sum_assign(Summary *s, uint64_t c, bool v)
{
    uint64_t w = c >> 6, bit = UINT64_C(1) << (c & 63);
    uint64_t old = s->l1[w];
    uint64_t nw = v ? (old | bit) : (old & ~bit);
    if (nw == old) {
        return;
    }
    s->l1[w] = nw;
    uint64_t lbit = UINT64_C(1) << (w & 63);
    if (nw) {
        s->l0[w >> 6] |= lbit;
    } else {
        s->l0[w >> 6] &= ~lbit;
    }
}

/* First chunk >= c whose bit is set in s, or nchunks. */
static uint64_t sum_next(const Summary *s, uint64_t nchunks, uint64_t c)
{
    if (c >= nchunks) {
        return nchunks;
    }
    uint64_t w = c >> 6;
    uint64_t x = s->l1[w] & (~UINT64_C(0) << (c & 63));
    if (!x) {
        uint64_t n1 = WORDS(nchunks);
        uint64_t j = w + 1;
        for (;;) {
            if (j >= n1) {
                return nchunks;
            }
            uint64_t y = s->l0[j >> 6] & (~UINT64_C(0) << (j & 63));
            if (y) {
                j = (j & ~UINT64_C(63)) + (uint64_t)__builtin_ctzll(y);
                break;
            }
            j = (j | 63) + 1;
        }
        w = j;
        x = s->l1[w];
    }
    uint64_t r = (w << 6) + (uint64_t)__builtin_ctzll(x);
    return MIN(r, nchunks);
}

static void summary_update(HBitmap *hb, uint64_t c)
{
    uint32_t n = hb->counts[c];
    sum_assign(&hb->dirty, c, n != 0);
    sum_assign(&hb->notfull, c, n < chunk_bits(hb, c));
}

/* Rebuild both summaries from counts[] (after a resize). */
static void summary_rebuild(HBitmap *hb)
{
    sum_free(&hb->dirty);
    sum_free(&hb->notfull);
    sum_alloc(&hb->dirty, hb->nchunks);
    sum_alloc(&hb->notfull, hb->nchunks);
    for (uint64_t c = 0; c < hb->nchunks; c++) {
        summary_update(hb, c);
    }
}

/* ---- chunks ---- */

static void chunk_drop(HBitmap *hb, uint64_t c)
{
    if (hb->chunks[c] != HB_FULL) {
        g_free(hb->chunks[c]);
    }
    hb->chunks[c] = NULL;
}

/* Storage for chunk c that may be modified bit by bit. */
static uint64_t *chunk_materialise(HBitmap *hb, uint64_t c)
{
    uint64_t *p = hb->chunks[c];
    if (!p) {
        p = g_new0(uint64_t, HB_WORDS);
    } else if (p == HB_FULL) {
        p = g_new(uint64_t, HB_WORDS);
        memset(p, 0xff, HB_WORDS * sizeof(uint64_t));
    }
    hb->chunks[c] = p;
    return p;
}

/* Put chunk c in its canonical form after its count changed. */
static void chunk_normalise(HBitmap *hb, uint64_t c)
{
    if (hb->counts[c] == 0) {
        chunk_drop(hb, c);
    } else if (hb->counts[c] == HBITMAP_CHUNK_BITS &&
               hb->chunks[c] != HB_FULL) {
        g_free(hb->chunks[c]);
        hb->chunks[c] = HB_FULL;
    }
    summary_update(hb, c);
}

static uint64_t chunk_word(const HBitmap *hb, uint64_t c, uint64_t w)
{
    const uint64_t *p = hb->chunks[c];
    if (!p) {
        return 0;
    }
    if (p == HB_FULL) {
        return ~UINT64_C(0);
    }
    return p[w];
}

static uint64_t range_mask(uint64_t lo, uint64_t hi) /* bits [lo, hi) of a word */
{
    uint64_t m = ~UINT64_C(0) << lo;
    if (hi < 64) {
        m &= (UINT64_C(1) << hi) - 1;
    }
    return m;
}

/* Set (or clear) bits [off, off + n) of p; returns how many changed. */
static uint64_t bits_assign(uint64_t *p, uint64_t off, uint64_t n, bool set)
{
    uint64_t changed = 0, end = off + n;
    while (off < end) {
        uint64_t w = off >> 6, lo = off & 63;
        uint64_t hi = MIN((uint64_t)64, lo + (end - off));
        uint64_t m = range_mask(lo, hi);
        if (set) {
            changed += (uint64_t)__builtin_popcountll(~p[w] & m);
            p[w] |= m;
        } else {
            changed += (uint64_t)__builtin_popcountll(p[w] & m);
            p[w] &= ~m;
        }
        off += hi - lo;
    }
    return changed;
}

/* ---- public ---- */

HBitmap *hbitmap_new(uint64_t nbits)
{
    HBitmap *hb = g_new0(HBitmap, 1);
    nbits = MIN(nbits, HBITMAP_MAX_BITS);
    hb->size = nbits;
    hb->nchunks = (nbits + HBITMAP_CHUNK_BITS - 1) >> HBITMAP_CHUNK_SHIFT;
    hb->chunks = g_new0(uint64_t *, MAX(hb->nchunks, 1));
    hb->counts = g_new0(uint32_t, MAX(hb->nchunks, 1));
    sum_alloc(&hb->dirty, hb->nchunks);
    sum_alloc(&hb->notfull, hb->nchunks);
    /* Every chunk starts not full: set the first nchunks bits. */
    uint64_t full_words = hb->nchunks / 64;
    memset(hb->notfull.l1, 0xff, full_words * sizeof(uint64_t));
    if (hb->nchunks % 64) {
        hb->notfull.l1[full_words] = range_mask(0, hb->nchunks % 64);
    }
    uint64_t n1 = WORDS(hb->nchunks);
    memset(hb->notfull.l0, 0xff, n1 / 64 * sizeof(uint64_t));
    if (n1 % 64) {
        hb->notfull.l0[n1 / 64] = range_mask(0, n1 % 64);
    }
    return hb;
}

void hbitmap_free(HBitmap *hb)
{
    if (!hb) {
        return;
    }
    for (uint64_t c = sum_next(&hb->dirty, hb->nchunks, 0); c < hb->nchunks;
         c = sum_next(&hb->dirty, hb->nchunks, c + 1)) {
        chunk_drop(hb, c);
    }
    g_free(hb->chunks);
    g_free(hb->counts);
    sum_free(&hb->dirty);
    sum_free(&hb->notfull);
    g_free(hb);
}

HBitmap *hbitmap_copy(const HBitmap *hb)
{
    HBitmap *n = hbitmap_new(hb->size);
    hbitmap_merge(n, hb);
    return n;
}

uint64_t hbitmap_size(const HBitmap *hb)
{
    return hb->size;
}

uint64_t hbitmap_count(const HBitmap *hb)
{
    return hb->count;
}

bool hbitmap_get(const HBitmap *hb, uint64_t bit)
{
    if (bit >= hb->size) {
        return false;
    }
    uint64_t c = bit >> HBITMAP_CHUNK_SHIFT;
    uint64_t off = bit & (HBITMAP_CHUNK_BITS - 1);
    return (chunk_word(hb, c, off >> 6) >> (off & 63)) & 1;
}

static void assign_range(HBitmap *hb, uint64_t start, uint64_t count,
                         bool set)
{
    if (start >= hb->size) {
        return;
    }
    uint64_t end = count > hb->size - start ? hb->size : start + count;
    while (start < end) {
        uint64_t c = start >> HBITMAP_CHUNK_SHIFT;
        uint64_t cb = chunk_bits(hb, c);
        uint64_t off = start - (c << HBITMAP_CHUNK_SHIFT);
        uint64_t n = MIN(end - start, cb - off);
        start += n;
        uint32_t before = hb->counts[c];
        if (set ? before == cb : before == 0) {
            continue; /* nothing to change: no allocation, no summary */
        }
        if (n == cb) {
            /* the whole chunk */
            chunk_drop(hb, c);
            hb->counts[c] = set ? (uint32_t)cb : 0;
            if (set) {
                if (cb == HBITMAP_CHUNK_BITS) {
                    hb->chunks[c] = HB_FULL;
                } else {
                    hb->chunks[c] = g_new0(uint64_t, HB_WORDS);
                    bits_assign(hb->chunks[c], 0, cb, true);
                }
            }
        } else {
            uint64_t *p = chunk_materialise(hb, c);
            uint64_t ch = bits_assign(p, off, n, set);
            if (ch == 0) {
                continue; /* the common re-write of a dirty granule */
            }
            uint32_t after =
                set ? before + (uint32_t)ch : before - (uint32_t)ch;
            hb->counts[c] = after;
            hb->count = set ? hb->count + ch : hb->count - ch;
            /* Summaries and storage change only when a chunk stops or
             * starts being empty or full: skip their cache lines. */
            if (before != 0 && after != 0 && before != cb && after != cb) {
                continue;
            }
            chunk_normalise(hb, c);
            continue;
        }
        if (set) {
            hb->count += hb->counts[c] - before;
        } else {
            hb->count -= before - hb->counts[c];
        }
        chunk_normalise(hb, c);
    }
}

void hbitmap_set(HBitmap *hb, uint64_t start, uint64_t count)
{
    assign_range(hb, start, count, true);
}

void hbitmap_reset(HBitmap *hb, uint64_t start, uint64_t count)
{
    assign_range(hb, start, count, false);
}

void hbitmap_reset_all(HBitmap *hb)
{
    assign_range(hb, 0, hb->size, false);
}

/* First bit in chunk c at or after bit `from` (absolute) whose value is
 * `want`, below `end`; -1 if none. */
static int64_t chunk_find(const HBitmap *hb, uint64_t c, uint64_t from,
                          uint64_t end, bool want)
{
    uint64_t base = c << HBITMAP_CHUNK_SHIFT;
    uint64_t cend = MIN(end, base + chunk_bits(hb, c));
    const uint64_t *p = hb->chunks[c];
    if (!p || p == HB_FULL) {
        bool v = p == HB_FULL;
        return v == want && from < cend ? (int64_t)from : -1;
    }
    while (from < cend) {
        uint64_t w = (from - base) >> 6;
        uint64_t x = want ? p[w] : ~p[w];
        x &= ~UINT64_C(0) << (from & 63);
        if (x) {
            uint64_t r = base + (w << 6) + (uint64_t)__builtin_ctzll(x);
            return r < cend ? (int64_t)r : -1;
        }
        from = base + ((w + 1) << 6);
    }
    return -1;
}

static int64_t find_bit(const HBitmap *hb, uint64_t start, uint64_t count,
                        bool want)
{
    if (start >= hb->size || count == 0) {
        return -1;
    }
    uint64_t end = count > hb->size - start ? hb->size : start + count;
    const Summary *s = want ? &hb->dirty : &hb->notfull;
    uint64_t c = start >> HBITMAP_CHUNK_SHIFT;
    for (;;) {
        c = sum_next(s, hb->nchunks, c);
        if (c >= hb->nchunks) {
            return -1;
        }
        uint64_t base = c << HBITMAP_CHUNK_SHIFT;
        uint64_t from = MAX(start, base);
        if (from >= end) {
            return -1;
        }
        int64_t r = chunk_find(hb, c, from, end, want);
        if (r >= 0) {
            return r;
        }
        c++;
    }
}

int64_t hbitmap_next_dirty(const HBitmap *hb, uint64_t start, uint64_t count)
{
    return find_bit(hb, start, count, true);
}

int64_t hbitmap_next_clean(const HBitmap *hb, uint64_t start, uint64_t count)
{
    return find_bit(hb, start, count, false);
}

bool hbitmap_next_dirty_area(const HBitmap *hb, uint64_t start, uint64_t count,
                             uint64_t *area_start, uint64_t *area_count)
{
    int64_t d = hbitmap_next_dirty(hb, start, count);
    if (d < 0) {
        return false;
    }
    uint64_t end = count > hb->size - start ? hb->size : start + count;
    int64_t cl = hbitmap_next_clean(hb, (uint64_t)d, end - (uint64_t)d);
    *area_start = (uint64_t)d;
    *area_count = (cl < 0 ? end : (uint64_t)cl) - (uint64_t)d;
    return true;
}

bool hbitmap_merge(HBitmap *dst, const HBitmap *src)
{
    if (dst->size != src->size) {
        return false;
    }
    if (dst == src) {
        return true;
    }
    for (uint64_t c = sum_next(&src->dirty, src->nchunks, 0); c < src->nchunks;
         c = sum_next(&src->dirty, src->nchunks, c + 1)) {
        uint64_t cb = chunk_bits(dst, c);
        uint32_t before = dst->counts[c];
        const uint64_t *sp = src->chunks[c];
        if (before == cb) {
            continue;
        }
        if (sp == HB_FULL) {
            assign_range(dst, c << HBITMAP_CHUNK_SHIFT, cb, true);
            continue;
        }
        uint64_t *dp = dst->chunks[c];
        if (!dp) {
            dp = g_new(uint64_t, HB_WORDS);
            memcpy(dp, sp, HB_WORDS * sizeof(uint64_t));
            dst->chunks[c] = dp;
            dst->counts[c] = src->counts[c];
        } else {
            /* dp is allocated: it is neither empty nor full */
            uint64_t added = 0;
            for (uint64_t w = 0; w < HB_WORDS; w++) {
                added += (uint64_t)__builtin_popcountll(sp[w] & ~dp[w]);
                dp[w] |= sp[w];
            }
            dst->counts[c] = before + (uint32_t)added;
        }
        dst->count += dst->counts[c] - before;
        chunk_normalise(dst, c);
    }
    return true;
}

void hbitmap_truncate(HBitmap *hb, uint64_t nbits)
{
    nbits = MIN(nbits, HBITMAP_MAX_BITS);
    if (nbits == hb->size) {
        return;
    }
    if (nbits < hb->size) {
        assign_range(hb, nbits, hb->size - nbits, false);
    }
    uint64_t old_n = hb->nchunks;
    uint64_t new_n = (nbits + HBITMAP_CHUNK_BITS - 1) >> HBITMAP_CHUNK_SHIFT;
    /* Chunks past new_n are all clear (and NULL) after the reset above. */
    hb->chunks = g_renew(uint64_t *, hb->chunks, MAX(new_n, 1));
    hb->counts = g_renew(uint32_t, hb->counts, MAX(new_n, 1));
    for (uint64_t c = old_n; c < new_n; c++) {
        hb->chunks[c] = NULL;
        hb->counts[c] = 0;
    }
    hb->nchunks = new_n;
    hb->size = nbits;
    /* A formerly partial last chunk may now be full-width and full. */
    if (old_n && old_n - 1 < new_n) {
        uint64_t c = old_n - 1;
        if (hb->counts[c] == HBITMAP_CHUNK_BITS &&
            hb->chunks[c] != HB_FULL) {
            g_free(hb->chunks[c]);
            hb->chunks[c] = HB_FULL;
        }
    }
    /* The new last chunk must not be the full-width marker if partial. */
    if (new_n && chunk_bits(hb, new_n - 1) < HBITMAP_CHUNK_BITS &&
        hb->chunks[new_n - 1] == HB_FULL) {
        uint64_t *p = g_new0(uint64_t, HB_WORDS);
        bits_assign(p, 0, chunk_bits(hb, new_n - 1), true);
        hb->chunks[new_n - 1] = p;
    }
    summary_rebuild(hb);
}

static uint64_t get_word(const HBitmap *hb, uint64_t widx)
{
    uint64_t c = widx / HB_WORDS;
    return chunk_word(hb, c, widx % HB_WORDS);
}

bool hbitmap_serialize(const HBitmap *hb, uint64_t start, uint64_t count,
                       uint8_t *buf)
{
    if (start % 64) {
        return false;
    }
    uint64_t nbytes = (count + 7) / 8;
    for (uint64_t i = 0; i < nbytes; i += 8) {
        uint64_t bit = start + i * 8;
        uint64_t v = bit < hb->size ? get_word(hb, bit / 64) : 0;
        uint64_t left = count - i * 8;
        if (left < 64) {
            v &= range_mask(0, left);
        }
        for (uint64_t b = 0; b < 8 && i + b < nbytes; b++) {
            buf[i + b] = (uint8_t)(v >> (8 * b));
        }
    }
    return true;
}

bool hbitmap_deserialize(HBitmap *hb, uint64_t start, uint64_t count,
                         const uint8_t *buf)
{
    if (start % 64) {
        return false;
    }
    if (start >= hb->size) {
        return true;
    }
    count = MIN(count, hb->size - start);
    uint64_t nbytes = (count + 7) / 8;
    for (uint64_t i = 0; i < nbytes; i += 8) {
        uint64_t bit = start + i * 8;
        uint64_t v = 0;
        for (uint64_t b = 0; b < 8 && i + b < nbytes; b++) {
            v |= (uint64_t)buf[i + b] << (8 * b);
        }
        uint64_t m = range_mask(0, MIN((uint64_t)64, count - i * 8));
        v &= m;
        uint64_t c = bit >> HBITMAP_CHUNK_SHIFT;
        uint64_t w = (bit & (HBITMAP_CHUNK_BITS - 1)) >> 6;
        uint64_t old = chunk_word(hb, c, w);
        uint64_t nw = (old & ~m) | v;
        if (nw == old) {
            continue;
        }
        uint64_t *p = chunk_materialise(hb, c);
        p[w] = nw;
        int64_t d = (int64_t)__builtin_popcountll(nw) -
                    (int64_t)__builtin_popcountll(old);
        hb->counts[c] = (uint32_t)((int64_t)hb->counts[c] + d);
        hb->count = (uint64_t)((int64_t)hb->count + d);
        chunk_normalise(hb, c);
    }
    return true;
}

char *hbitmap_sha256(const HBitmap *hb)
{
    static const uint64_t zeroes[HB_WORDS];
    static uint64_t ones[HB_WORDS];
    if (!ones[0]) {
        memset(ones, 0xff, sizeof(ones));
    }
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    uint64_t words = MAX(WORDS(hb->size), 1);
    uint64_t le[HB_WORDS];
    for (uint64_t c = 0; c * HB_WORDS < words; c++) {
        uint64_t n = MIN((uint64_t)HB_WORDS, words - c * HB_WORDS);
        const uint64_t *p = c < hb->nchunks ? hb->chunks[c] : NULL;
        const uint64_t *data = !p ? zeroes : p == HB_FULL ? ones : p;
        if (G_BYTE_ORDER != G_LITTLE_ENDIAN && data == p) {
            for (uint64_t w = 0; w < n; w++) {
                le[w] = GUINT64_TO_LE(p[w]);
            }
            data = le;
        }
        g_checksum_update(ck, (const guchar *)data,
                          (gssize)(n * sizeof(uint64_t)));
    }
    char *r = g_strdup(g_checksum_get_string(ck));
    g_checksum_free(ck);
    return r;
}
