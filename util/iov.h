/*
 * IOVector: a growable scatter/gather list with its total size, the unit
 * of data in every block request.
 */
#ifndef UTIL_IOV_H
#define UTIL_IOV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct IOVector {
    struct iovec *iov;
    int niov;
    int nalloc; /* -1: iov points at `local`, not owned */
    size_t size;
    struct iovec local;
} IOVector;

void qiov_init(IOVector *q, int alloc_hint);
/* A one-element vector over buf; needs no qiov_destroy(). */
void qiov_init_buf(IOVector *q, void *buf, size_t len);
void qiov_add(IOVector *q, void *base, size_t len);
/* Append the bytes [offset, offset+len) of src (sharing its buffers). */
void qiov_concat(IOVector *dst, const IOVector *src, size_t offset,
                 size_t len);
void qiov_reset(IOVector *q);
void qiov_destroy(IOVector *q);

/* Copies between a vector and a flat buffer; return bytes copied. */
size_t qiov_to_buf(const IOVector *q, size_t offset, void *buf, size_t len);
size_t qiov_from_buf(IOVector *q, size_t offset, const void *buf, size_t len);
size_t qiov_memset(IOVector *q, size_t offset, int c, size_t len);
/* Whether bytes [offset, offset+len) are all zero. */
int qiov_is_zero(const IOVector *q, size_t offset, size_t len);
/* Whether a flat buffer is all zero (fast path for detect-zeroes). */
int buffer_is_zero(const void *buf, size_t len);

/* Page-aligned buffers suitable for O_DIRECT. */
void *blk_memalign(size_t align, size_t size);
void blk_vfree(void *ptr);

#endif
