/*
 * IOVector: scatter/gather lists for block requests, and zero detection.
 */
#include "util/iov.h"

#include <errno.h>
#include <glib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

void qiov_init(IOVector *q, int alloc_hint)
{
    if (alloc_hint < 1) {
        alloc_hint = 1;
    }
    q->iov = g_new(struct iovec, alloc_hint);
    q->niov = 0;
    q->nalloc = alloc_hint;
    q->size = 0;
    q->local.iov_base = NULL;
    q->local.iov_len = 0;
}

void qiov_init_buf(IOVector *q, void *buf, size_t len)
{
    q->local.iov_base = buf;
    q->local.iov_len = len;
    q->iov = &q->local;
    q->niov = 1;
    q->nalloc = -1;
    q->size = len;
}

void qiov_add(IOVector *q, void *base, size_t len)
{
    if (len == 0) {
        return; /* empty elements only cost system-call work */
    }
    if (q->nalloc == -1) {
        /* A buffer vector grows into an owned one. */
        struct iovec *iov = g_new(struct iovec, 4);
        if (q->niov) {
            iov[0] = q->local;
        }
        q->iov = iov;
        q->nalloc = 4;
    }
    if (q->niov > 0) {
        /* Merge with the previous element when contiguous. */
        struct iovec *last = &q->iov[q->niov - 1];
        if ((char *)last->iov_base + last->iov_len == (char *)base) {
            last->iov_len += len;
            q->size += len;
            return;
        }
    }
    if (q->niov == q->nalloc) {
        q->nalloc = q->nalloc * 2 + 1;
        q->iov = g_renew(struct iovec, q->iov, q->nalloc);
    }
    q->iov[q->niov].iov_base = base;
    q->iov[q->niov].iov_len = len;
    q->niov++;
    q->size += len;
}

void qiov_concat(IOVector *dst, const IOVector *src, size_t offset,
                 size_t len)
{
    for (int i = 0; i < src->niov && len > 0; i++) {
        size_t elen = src->iov[i].iov_len;
        if (offset >= elen) {
            offset -= elen;
            continue;
        }
        size_t n = MIN(elen - offset, len);
        qiov_add(dst, (char *)src->iov[i].iov_base + offset, n);
        len -= n;
        offset = 0;
    }
}

void qiov_reset(IOVector *q)
{
    if (q->nalloc == -1) {
        q->local.iov_len = 0;
    }
    q->niov = 0;
    q->size = 0;
}

void qiov_destroy(IOVector *q)
{
    if (q->nalloc != -1) {
        g_free(q->iov);
    }
    memset(q, 0, sizeof(*q));
}

/*
 * Walk [offset, offset+len) of q calling fn on each piece; returns the
 * number of bytes visited (less than len if q is shorter), or stops early
 * when fn returns false.
 */
typedef bool IovWalkFn(void *base, size_t len, size_t done, void *opaque);

static size_t qiov_walk(const IOVector *q, size_t offset, size_t len,
                        IovWalkFn *fn, void *opaque)
{
    size_t done = 0;
    for (int i = 0; i < q->niov && done < len; i++) {
        size_t elen = q->iov[i].iov_len;
        if (offset >= elen) {
            offset -= elen;
            continue;
        }
        size_t n = MIN(elen - offset, len - done);
        if (!fn((char *)q->iov[i].iov_base + offset, n, done, opaque)) {
            return done;
        }
        done += n;
        offset = 0;
    }
    return done;
}

static bool to_buf_fn(void *base, size_t len, size_t done, void *opaque)
{
    memcpy((char *)opaque + done, base, len);
    return true;
}

size_t qiov_to_buf(const IOVector *q, size_t offset, void *buf, size_t len)
{
    return qiov_walk(q, offset, len, to_buf_fn, buf);
}

static bool from_buf_fn(void *base, size_t len, size_t done, void *opaque)
{
    memcpy(base, (const char *)opaque + done, len);
    return true;
}

size_t qiov_from_buf(IOVector *q, size_t offset, const void *buf, size_t len)
{
    return qiov_walk(q, offset, len, from_buf_fn, (void *)buf);
}

static bool memset_fn(void *base, size_t len, size_t done, void *opaque)
{
    memset(base, *(int *)opaque, len);
    return true;
}

size_t qiov_memset(IOVector *q, size_t offset, int c, size_t len)
{
    return qiov_walk(q, offset, len, memset_fn, &c);
}

static bool is_zero_fn(void *base, size_t len, size_t done, void *opaque)
{
    return buffer_is_zero(base, len);
}

int qiov_is_zero(const IOVector *q, size_t offset, size_t len)
{
    /* The walk stops at the first non-zero piece; a range reaching past
     * the vector's end is judged on the bytes it has. */
    size_t n = qiov_walk(q, offset, len, is_zero_fn, NULL);
    size_t avail = q->size > offset ? q->size - offset : 0;
    return n == MIN(len, avail);
}

int buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    const unsigned char *end = p + len;

    /* Most non-zero buffers differ early: look at the first bytes first. */
    for (size_t i = 0; i < 16 && p < end; i++, p++) {
        if (*p) {
            return 0;
        }
    }
    /* Up to word alignment. */
    while (p < end && ((uintptr_t)p & (sizeof(uint64_t) - 1))) {
        if (*p++) {
            return 0;
        }
    }
    /* Eight words at a time, or-ed together so the loop has one branch. */
    while ((size_t)(end - p) >= 8 * sizeof(uint64_t)) {
        const uint64_t *w = (const uint64_t *)(const void *)p;
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) {
            return 0;
        }
        p += 8 * sizeof(uint64_t);
    }
    while ((size_t)(end - p) >= sizeof(uint64_t)) {
        if (*(const uint64_t *)(const void *)p) {
            return 0;
        }
        p += sizeof(uint64_t);
    }
    while (p < end) {
        if (*p++) {
            return 0;
        }
    }
    return 1;
}

void *blk_memalign(size_t align, size_t size)
{
    void *ptr = NULL;

    if (align < sizeof(void *)) {
        align = sizeof(void *);
    }
    if (align & (align - 1)) {
        /* posix_memalign wants a power of two: round up. */
        size_t a = sizeof(void *);
        while (a < align) {
            a <<= 1;
        }
        align = a;
    }
    int ret = posix_memalign(&ptr, align, size ? size : 1);
    if (ret != 0) {
        /* Like g_malloc(): callers do not check for NULL. */
        g_error("blk_memalign: failed to allocate %zu bytes: %s", size,
                g_strerror(ret));
    }
    return ptr;
}

void blk_vfree(void *ptr)
{
    free(ptr);
}
