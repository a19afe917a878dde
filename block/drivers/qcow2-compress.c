/*
 * qcow2 compressed clusters: raw deflate (zlib, window bits -12), as the
 * format specifies for compression type 0.  The work runs on the worker
 * thread pool so the event loop never stalls on a big cluster.
 */
#include <errno.h>
#include <zlib.h>

#include "block/drivers/qcow2.h"
#include "util/aio.h"

int qcow2_decompress_buf(void *dst, size_t dst_len, const void *src,
                         size_t src_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        return -EIO;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int zr = inflate(&z, Z_FINISH);
    /* The stored length is rounded up to whole sectors, so trailing bytes
     * after the end of the stream are normal; the output must be full. */
    int ret = ((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) &&
               z.avail_out == 0)
                  ? 0
                  : -EIO;
    inflateEnd(&z);
    return ret;
}

int64_t qcow2_compress_buf(void *dst, size_t dst_cap, const void *src,
                           size_t src_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return -EIO;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_cap;
    int zr = deflate(&z, Z_FINISH);
    int64_t ret;
    if (zr == Z_STREAM_END) {
        ret = (int64_t)(dst_cap - z.avail_out);
    } else if (zr == Z_OK || zr == Z_BUF_ERROR) {
        ret = -ENOSPC; /* did not fit */
    } else {
        ret = -EIO;
    }
    deflateEnd(&z);
    return ret;
}

typedef struct CompressJob {
    void *dst;
    size_t dst_len;
    const void *src;
    size_t src_len;
    int64_t result;
    bool compress;
} CompressJob;

static int compress_worker(void *opaque)
{
    CompressJob *j = opaque;
    if (j->compress) {
        j->result = qcow2_compress_buf(j->dst, j->dst_len, j->src, j->src_len);
    } else {
        j->result =
            qcow2_decompress_buf(j->dst, j->dst_len, j->src, j->src_len);
    }
    return 0;
}

int coroutine_fn qcow2_co_decompress(void *dst, size_t dst_len,
                                     const void *src, size_t src_len)
{
    CompressJob j = { dst, dst_len, src, src_len, 0, false };
    thread_pool_co_run(compress_worker, &j);
    return (int)j.result;
}

int64_t coroutine_fn qcow2_co_compress(void *dst, size_t dst_cap,
                                       const void *src, size_t src_len)
{
    CompressJob j = { dst, dst_cap, src, src_len, 0, true };
    thread_pool_co_run(compress_worker, &j);
    return j.result;
}
