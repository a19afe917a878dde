/*
 * The NBD transmission phase, server side.
 *
 * The session coroutine is the reader: it reads a request header (and a
 * write's payload), validates it, and hands it to a new coroutine, so up
 * to NBD_MAX_INFLIGHT requests per client run in the block layer at once.
 * Replies are queued per client and sent in batches (see nbd_send_iov):
 * a simple reply, or one structured chunk, is always written whole, while
 * the chunks of one read may interleave with other replies (the protocol
 * allows it).
 *
 * Nothing a client sends is trusted: lengths are checked against the
 * export and NBD_MAX_BUFFER_SIZE before any buffer is allocated, and a
 * request the server cannot honour gets an error reply, not a crash.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "block/block_int.h"
#include "block/export/nbd-int.h"
#include "block/export/nbd-proto.h"
#include "util/co-socket.h"
#include "util/iov.h"

/* Most descriptors in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (512 KiB). */
#define NBD_MAX_EXTENTS (64 * 1024)
/* NBD_CMD_CACHE reads in pieces of this size. */
#define NBD_CACHE_CHUNK (1024 * 1024)

/*
 * One reply, or one structured chunk, waiting in the client's send queue.
 * A request has at most one at a time (it waits until its entry is sent),
 * so the entry lives in the request; its iovecs point into the sending
 * coroutine's stack and buffers, which stay valid because it waits.
 */
struct NBDSendEntry {
    const struct iovec *iov;
    int niov;
    Coroutine *co;
    /* co is yielded waiting for whoever sends the entry to enter it;
     * false while co waits for its own scheduled wake (the leader) or runs */
    bool wake;
    bool done;
    int ret;
    NBDSendEntry *next;
};

typedef struct NBDRequest {
    NBDClient *client;
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t len;
    void *buf;          /* a write's payload */
    uint32_t cost;      /* buffer bytes it holds, for the budget */
    uint32_t error;     /* NBD error found while receiving, 0 if none */
    const char *errmsg; /* static text for that error */
    NBDSendEntry send;  /* its reply (chunk) waiting to be sent */
} NBDRequest;

/* Host errno (positive) to the protocol's error values. */
static uint32_t nbd_errno(int err)
{
    switch (err) {
    case 0:
        return NBD_SUCCESS;
    case EPERM:
    case EROFS:
        return NBD_EPERM;
    case EIO:
        return NBD_EIO;
    case ENOMEM:
        return NBD_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    case EINVAL:
    default:
        return NBD_EINVAL;
    }
}

/* ---- request buffers ---- */

/*
 * Request buffers come from a cache of power-of-two sizes from 4 KiB (a
 * smaller request gets a 4 KiB one) up to NBD_MAX_BUFFER_SIZE; at most
 * NBD_POOL_MAX_BYTES stay cached.  Without it a large buffer costs an
 * mmap, a page fault per page and an munmap per request (which halved
 * large-read throughput), and small ones cost an aligned malloc each plus,
 * once replies are sent in batches and a whole batch of buffers is freed
 * at once, a brk() up and down per batch as the heap top grows and is
 * trimmed.  A cached buffer holds the free list's link in its first bytes.
 */
#define NBD_POOL_MIN_SHIFT 12
#define NBD_POOL_MAX_SHIFT 25 /* NBD_MAX_BUFFER_SIZE */
#define NBD_POOL_MAX_BYTES (64 * 1024 * 1024)

static void *nbd_pool[NBD_POOL_MAX_SHIFT + 1];
static size_t nbd_pool_bytes;

static unsigned nbd_pool_shift(size_t len)
{
    unsigned shift = NBD_POOL_MIN_SHIFT;

    while (((size_t)1 << shift) < len) {
        shift++;
    }
    return shift;
}

static void *nbd_buf_get(size_t len)
{
    if (len > ((size_t)1 << NBD_POOL_MAX_SHIFT)) {
        return blk_memalign(4096, len);
    }
    unsigned shift = nbd_pool_shift(len);
    void *buf = nbd_pool[shift];

    if (buf) {
        memcpy(&nbd_pool[shift], buf, sizeof(void *));
        nbd_pool_bytes -= (size_t)1 << shift;
        return buf;
    }
    return blk_memalign(4096, (size_t)1 << shift);
}

/* len: what was asked of nbd_buf_get() for this buffer */
static void nbd_buf_put(void *buf, size_t len)
{
    if (!buf) {
        return;
    }
    if (len > ((size_t)1 << NBD_POOL_MAX_SHIFT)) {
        blk_vfree(buf);
        return;
    }
    unsigned shift = nbd_pool_shift(len);
    if (nbd_pool_bytes + ((size_t)1 << shift) > NBD_POOL_MAX_BYTES) {
        blk_vfree(buf);
        return;
    }
    memcpy(buf, &nbd_pool[shift], sizeof(void *));
    nbd_pool[shift] = buf;
    nbd_pool_bytes += (size_t)1 << shift;
}

/* ---- sending: replies that complete together go out together ---- */

/* Most iovecs in one sendmsg (below IOV_MAX; a 4 KiB structured read
 * reply takes 3, so 85 replies fit, more than NBD_MAX_INFLIGHT). */
#define NBD_SEND_BATCH_IOV 256

/*
 * Send everything queued, a batch (at most NBD_SEND_BATCH_IOV iovecs, one
 * sendmsg when the socket takes it) at a time, until the queue is empty:
 * entries queued while a batch waits for the socket join the next one.
 * Each entry is written whole and batches go in queue order, so replies
 * never interleave and the chunks of one reply stay in order.
 *
 * After each batch its waiting owners are entered.  An entry is freed once
 * its owner runs, so nothing of a batch is touched after that; the client
 * stays alive while entries are queued (their requests are in flight),
 * and after the last batch it is not touched either: `sending` is cleared
 * first, because the last owner's exit may let the session free it.
 */
static void coroutine_fn nbd_flush(NBDClient *client)
{
    client->sending = true;
    while (client->sendq_head) {
        struct iovec iov[NBD_SEND_BATCH_IOV];
        NBDSendEntry *first = client->sendq_head, *e = first, *d, *next;
        int n = 0, ret;

        /* Whole entries only; the first always fits (at most 3 iovecs). */
        do {
            memcpy(&iov[n], e->iov, e->niov * sizeof(iov[0]));
            n += e->niov;
            client->sendq_len--;
            e = e->next;
        } while (e && n + e->niov <= NBD_SEND_BATCH_IOV);
        client->sendq_head = e;
        if (!e) {
            client->sendq_tail = NULL;
        }
        ret = co_sock_writev_full(client->fd, iov, n);
        /* A failed write breaks the stream: every reply in it failed. */
        for (d = first; d != e; d = d->next) {
            d->ret = ret;
            d->done = true;
        }
        bool last = !client->sendq_head;
        if (last) {
            client->sending = false;
        }
        for (d = first; d != e; d = next) {
            next = d->next;
            /* A leader still waiting for its own wake finds `done` then. */
            if (d->wake) {
                d->wake = false;
                coroutine_enter(d->co);
            }
        }
        if (last) {
            return;
        }
    }
    client->sending = false;
}

static void coroutine_fn nbd_flush_co(void *opaque)
{
    nbd_flush(opaque);
}

/*
 * Flush now unless a flush is running: the reader calls this before it
 * would wait for more requests, so replies that completed while it
 * dispatched the requests it had go out in one sendmsg without waiting
 * for the next loop iteration.  The sending runs in its own coroutine, so
 * a client that does not read its replies never stops the reader.
 */
static void nbd_flush_kick(NBDClient *client)
{
    if (client->sendq_head && !client->sending) {
        coroutine_enter(coroutine_create(nbd_flush_co, client));
    }
}

/* Append e; it leaves the queue (nbd_flush) before its owner returns. */
static void nbd_sendq_push(NBDClient *client, NBDSendEntry *e)
{
    e->next = NULL;
    if (client->sendq_tail) {
        client->sendq_tail->next = e;
    } else {
        client->sendq_head = e;
    }
    client->sendq_tail = e;
    client->sendq_len++;
}

/*
 * Send iov as one unit and wait until it is on the socket (0) or the
 * stream broke (-errno).  Replies are not written at once: the first one
 * queued in a loop iteration (the leader) schedules itself for the next
 * iteration and then sends whatever was queued meanwhile, so all the
 * replies completed in one iteration (a batch of reads served from one
 * read() of requests, or one round of io_uring completions) share one
 * sendmsg instead of one each.  When no other reply can come (every
 * request in flight has queued one, and the reader holds no further
 * request), the reply goes out at once; and the reader flushes before it
 * waits (nbd_flush_kick).
 */
static int coroutine_fn nbd_send_iov(NBDRequest *req, struct iovec *iov,
                                     int niov)
{
    NBDClient *client = req->client;
    NBDSendEntry *e = &req->send;

    *e = (NBDSendEntry){ .iov = iov, .niov = niov, .co = coroutine_self() };
    nbd_sendq_push(client, e);
    if (!client->sending && client->sendq_len == client->nb_inflight &&
        client->rbuf_len - client->rbuf_pos < NBD_REQUEST_SIZE) {
        /* Every request in flight has queued its reply and no other
         * request is buffered: nothing can join the batch, so waiting
         * would only cost a loop iteration (queue depth 1 paid it on
         * every request). */
        nbd_flush(client);
    } else if (!client->sending && !client->send_leader) {
        /* Only our own scheduled wake enters us here (e->wake is false). */
        client->send_leader = e;
        coroutine_wake(e->co);
        coroutine_yield();
        client->send_leader = NULL;
        /* Someone may have sent our entry meanwhile; entries queued after
         * that counted on our flush. */
        if (!client->sending) {
            nbd_flush(client);
        }
    }
    if (!e->done) {
        /* A flush is running (waiting for the socket); it enters us. */
        e->wake = true;
        coroutine_yield();
    }
    return e->ret;
}

static int coroutine_fn nbd_send_simple(NBDRequest *req, uint32_t error,
                                        void *data, size_t len)
{
    uint8_t hdr[NBD_SIMPLE_REPLY_SIZE];
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = data, .iov_len = len },
    };

    nbd_put32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put32(hdr + 4, error);
    nbd_put64(hdr + 8, req->cookie);
    return nbd_send_iov(req, iov, len ? 2 : 1);
}

/* One structured chunk whose payload is p1 followed by p2. */
static int coroutine_fn nbd_send_chunk(NBDRequest *req, uint16_t flags,
                                       uint16_t type, const void *p1,
                                       size_t l1, const void *p2, size_t l2)
{
    uint8_t hdr[NBD_STRUCTURED_REPLY_SIZE];
    struct iovec iov[3] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)p1, .iov_len = l1 },
        { .iov_base = (void *)p2, .iov_len = l2 },
    };

    nbd_put32(hdr, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put16(hdr + 4, flags);
    nbd_put16(hdr + 6, type);
    nbd_put64(hdr + 8, req->cookie);
    nbd_put32(hdr + 16, (uint32_t)(l1 + l2));
    return nbd_send_iov(req, iov, 3);
}

/*
 * The final error for a request: an NBD_REPLY_TYPE_ERROR chunk with a
 * message when structured replies are on (mandatory for reads), else a
 * simple reply.  With has_offset, an error at that offset of a read.
 */
static int coroutine_fn nbd_send_error(NBDRequest *req, uint32_t error,
                                       const char *msg, bool has_offset,
                                       uint64_t offset)
{
    if (!req->client->structured_reply) {
        return nbd_send_simple(req, error, NULL, 0);
    }
    size_t mlen = MIN(strlen(msg), (size_t)NBD_MAX_STRING_SIZE);
    uint8_t head[6], tail[8];

    nbd_put32(head, error);
    nbd_put16(head + 4, (uint16_t)mlen);
    if (!has_offset) {
        return nbd_send_chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                              head, 6, msg, mlen);
    }
    /* message then offset: build it flat */
    g_autofree uint8_t *payload = g_malloc(6 + mlen + 8);
    memcpy(payload, head, 6);
    memcpy(payload + 6, msg, mlen);
    nbd_put64(tail, offset);
    memcpy(payload + 6 + mlen, tail, 8);
    return nbd_send_chunk(req, NBD_REPLY_FLAG_DONE,
                          NBD_REPLY_TYPE_ERROR_OFFSET, payload,
                          6 + mlen + 8, NULL, 0);
}

static int coroutine_fn nbd_send_errno(NBDRequest *req, int ret)
{
    return nbd_send_error(req, nbd_errno(-ret), g_strerror(-ret), false, 0);
}

/*
 * Success without data: a simple reply even with structured replies on
 * (allowed for everything but reads; 4 bytes shorter, and what qsd
 * sends).
 */
static int coroutine_fn nbd_send_ok(NBDRequest *req)
{
    return nbd_send_simple(req, 0, NULL, 0);
}

/* ---- commands ---- */

static int coroutine_fn nbd_send_data_chunk(NBDRequest *req, bool last,
                                            uint64_t offset, void *data,
                                            size_t len)
{
    uint8_t off[8];

    nbd_put64(off, offset);
    return nbd_send_chunk(req, last ? NBD_REPLY_FLAG_DONE : 0,
                          NBD_REPLY_TYPE_OFFSET_DATA, off, 8, data, len);
}

/*
 * Known data: a structured read asks the node which parts of the range are
 * zero (sent as holes).  On a file that is two lseek() calls per read,
 * synchronous, and a third of the time of a 4 KiB read.  So each query
 * asks about the rest of the read's 64 MiB chunk, not just the read, and
 * a data answer is remembered per chunk; reads inside it skip the query.
 * A stale entry only makes a later read send zeroes as data instead of a
 * hole, which the client reads the same, so writes elsewhere need not
 * invalidate it; writes, zeroing and trims through this export do, so
 * that holes they make show as holes again.  (qcow2 answers from its
 * cached L2 table, at most one table's worth of entries per query.)
 */
static NBDDataExtent *nbd_data_slot(BlockExport *exp, uint64_t off)
{
    return &exp->data_known[(off >> NBD_DATA_CHUNK_SHIFT) % NBD_DATA_SLOTS];
}

/* Bytes from off known to be data (0 if unknown). */
static uint64_t nbd_data_known(BlockExport *exp, uint64_t off)
{
    NBDDataExtent *d = nbd_data_slot(exp, off);

    if (d->chunk == off >> NBD_DATA_CHUNK_SHIFT && d->start <= off &&
        off < d->end) {
        return d->end - off;
    }
    return 0;
}

static void nbd_data_learn(BlockExport *exp, uint64_t off, uint64_t len)
{
    NBDDataExtent *d = nbd_data_slot(exp, off);
    uint64_t chunk = off >> NBD_DATA_CHUNK_SHIFT;

    if (d->chunk == chunk && d->start < d->end && off <= d->end &&
        d->start <= off + len) {
        /* Overlapping or adjacent: keep the union. */
        d->start = MIN(d->start, off);
        d->end = MAX(d->end, off + len);
        return;
    }
    *d = (NBDDataExtent){ .chunk = chunk, .start = off, .end = off + len };
}

static void nbd_data_forget(BlockExport *exp, uint64_t off, uint64_t len)
{
    if (!len) {
        return;
    }
    uint64_t first = off >> NBD_DATA_CHUNK_SHIFT;
    uint64_t last = (off + len - 1) >> NBD_DATA_CHUNK_SHIFT;

    /* An extent may reach past its chunk (a read longer than a chunk):
     * also drop the entry of the chunk before. */
    if (first > 0) {
        first--;
    }
    for (uint64_t c = first; c <= last && c - first < NBD_DATA_SLOTS; c++) {
        NBDDataExtent *d = &exp->data_known[c % NBD_DATA_SLOTS];

        if (d->start < off + len && off < d->end) {
            d->start = d->end = 0;
        }
    }
}

static int coroutine_fn nbd_co_read(NBDRequest *req)
{
    NBDClient *client = req->client;
    BlockBackend *blk = client->exp->blk;
    void *buf;
    int ret;

    if (req->len == 0) {
        /* a read's reply is structured whenever structured replies are on */
        if (client->structured_reply) {
            return nbd_send_chunk(req, NBD_REPLY_FLAG_DONE,
                                  NBD_REPLY_TYPE_NONE, NULL, 0, NULL, 0);
        }
        return nbd_send_ok(req);
    }
    /*
     * Zeroed: a driver may legitimately leave a read's buffer untouched
     * (null-co without read-zeroes), and what we send must never be stale
     * heap memory from another request.
     */
    buf = nbd_buf_get(req->len);
    memset(buf, 0, req->len);

    if (!client->structured_reply || (req->flags & NBD_CMD_FLAG_DF)) {
        /* One piece: a simple reply, or a single content chunk. */
        ret = blk_co_pread(blk, req->offset, req->len, buf, 0);
        if (ret < 0) {
            ret = nbd_send_errno(req, ret);
        } else if (client->structured_reply) {
            ret = nbd_send_data_chunk(req, true, req->offset, buf, req->len);
        } else {
            ret = nbd_send_simple(req, 0, buf, req->len);
        }
        nbd_buf_put(buf, req->len);
        return ret;
    }

    /* Sparse: holes become NBD_REPLY_TYPE_OFFSET_HOLE, data is read. */
    uint64_t off = req->offset, end = req->offset + req->len;
    ret = 0;
    while (off < end && ret >= 0) {
        int64_t pnum = (int64_t)nbd_data_known(client->exp, off);
        int st = 0;

        if (!pnum) {
            /* Ask about the rest of the chunk too (see nbd_data_known). */
            uint64_t chunk_end = ((off >> NBD_DATA_CHUNK_SHIFT) + 1)
                                 << NBD_DATA_CHUNK_SHIFT;
            uint64_t want = MIN(MAX(end, chunk_end),
                                (uint64_t)client->exp_size) - off;

            st = blk_co_block_status(blk, off, (int64_t)want, &pnum);
            if (st >= 0 && pnum > 0 && !(st & BDRV_BLOCK_ZERO)) {
                nbd_data_learn(client->exp, off, (uint64_t)pnum);
            }
        }
        if (st < 0) {
            /* As QEMU: a failed query fails the read (the failure may be
             * the metadata read the data would need too). */
            g_autofree char *msg =
                g_strdup_printf("unable to check for holes: %s",
                                g_strerror(-st));
            ret = nbd_send_error(req, nbd_errno(-st), msg, false, 0);
            break;
        }
        if (pnum <= 0) {
            /* Nothing known: read the rest as data. */
            st = 0;
            pnum = end - off;
        }
        pnum = MIN((uint64_t)pnum, end - off);
        bool last = off + pnum == end;

        if (st & BDRV_BLOCK_ZERO) {
            uint8_t hole[12];

            nbd_put64(hole, off);
            nbd_put32(hole + 8, (uint32_t)pnum);
            ret = nbd_send_chunk(req, last ? NBD_REPLY_FLAG_DONE : 0,
                                 NBD_REPLY_TYPE_OFFSET_HOLE, hole, 12, NULL,
                                 0);
        } else {
            void *p = (char *)buf + (off - req->offset);

            ret = blk_co_pread(blk, off, pnum, p, 0);
            if (ret < 0) {
                ret = nbd_send_error(req, nbd_errno(-ret), g_strerror(-ret),
                                     true, off);
                break;
            }
            ret = nbd_send_data_chunk(req, last, off, p, pnum);
        }
        off += pnum;
    }
    nbd_buf_put(buf, req->len);
    return ret;
}

static BdrvRequestFlags nbd_write_flags(NBDRequest *req)
{
    bool fua = (req->flags & NBD_CMD_FLAG_FUA) || req->client->exp->writethrough;
    return fua ? BDRV_REQ_FUA : 0;
}

static int coroutine_fn nbd_co_write_zeroes(NBDRequest *req)
{
    BdrvRequestFlags flags = nbd_write_flags(req);
    int ret;

    if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
        flags |= BDRV_REQ_MAY_UNMAP;
    }
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
        flags |= BDRV_REQ_NO_FALLBACK;
    }
    nbd_data_forget(req->client->exp, req->offset, req->len);
    ret = blk_co_pwrite_zeroes(req->client->exp->blk, req->offset, req->len,
                               flags);
    nbd_data_forget(req->client->exp, req->offset, req->len);
    if (ret == -ENOTSUP && (req->flags & NBD_CMD_FLAG_FAST_ZERO)) {
        return nbd_send_error(req, NBD_ENOTSUP, "fast zeroing not possible",
                              false, 0);
    }
    if (ret == -ENOTSUP) {
        /* ENOTSUP is reserved for fast-zero refusals on the wire. */
        ret = -EIO;
    }
    return ret < 0 ? nbd_send_errno(req, ret) : nbd_send_ok(req);
}

static int coroutine_fn nbd_co_trim(NBDRequest *req)
{
    BlockBackend *blk = req->client->exp->blk;
    nbd_data_forget(req->client->exp, req->offset, req->len);
    int ret = blk_co_pdiscard(blk, req->offset, req->len);
    nbd_data_forget(req->client->exp, req->offset, req->len);

    if (ret == 0 && nbd_write_flags(req)) {
        ret = blk_co_flush(blk);
    }
    return ret < 0 ? nbd_send_errno(req, ret) : nbd_send_ok(req);
}

/* Read the range so that later reads are fast (fills caches below). */
static int coroutine_fn nbd_co_cache(NBDRequest *req)
{
    BlockBackend *blk = req->client->exp->blk;
    uint64_t off = req->offset, end = req->offset + req->len;
    size_t buflen = MIN(req->len, (uint32_t)NBD_CACHE_CHUNK);
    void *buf = req->len ? nbd_buf_get(buflen) : NULL;
    int ret = 0;

    while (off < end && ret >= 0) {
        uint64_t n = MIN(end - off, (uint64_t)NBD_CACHE_CHUNK);
        ret = blk_co_pread(blk, off, n, buf, 0);
        off += n;
    }
    nbd_buf_put(buf, buflen);
    return ret < 0 ? nbd_send_errno(req, ret) : nbd_send_ok(req);
}

/* ---- block status ---- */

typedef struct NBDExtents {
    GArray *desc; /* uint32_t pairs (length, flags), host order */
    unsigned count;
} NBDExtents;

static void nbd_extent_add(NBDExtents *ex, uint64_t len, uint32_t flags)
{
    if (ex->count) {
        uint32_t *last = &g_array_index(ex->desc, uint32_t, 2 * ex->count - 2);
        if (last[1] == flags && (uint64_t)last[0] + len <= UINT32_MAX) {
            last[0] += (uint32_t)len;
            return;
        }
    }
    uint32_t pair[2] = { (uint32_t)len, flags };
    g_array_append_vals(ex->desc, pair, 2);
    ex->count++;
}

/* QEMU's qemu:allocation-depth: 0 unallocated, 1 the top layer, 2 its
 * backing file... */
static int coroutine_fn nbd_alloc_depth(BlockDriverState *bs, int64_t off,
                                        int64_t bytes, int64_t *pnum)
{
    unsigned depth = 1;

    bs = bs ? bdrv_skip_filters(bs) : NULL;
    while (bs) {
        int64_t n = 0;
        int ret = bdrv_co_is_allocated(bs, off, bytes, &n);

        if (ret < 0) {
            return ret;
        }
        if (n <= 0) {
            break;
        }
        if (ret) {
            *pnum = n;
            return depth;
        }
        bytes = n; /* look below only for the unallocated prefix */
        bs = bdrv_backing_bs(bs);
        bs = bs ? bdrv_skip_filters(bs) : NULL;
        depth++;
    }
    *pnum = bytes;
    return 0;
}

/* Collect the extents of one context; 0 or -errno. */
static int coroutine_fn nbd_collect_extents(NBDRequest *req, uint32_t id,
                                            NBDExtents *ex)
{
    BlockBackend *blk = req->client->exp->blk;
    bool one = req->flags & NBD_CMD_FLAG_REQ_ONE;
    uint64_t off = req->offset, left = req->len;

    while (left > 0 && ex->count < NBD_MAX_EXTENTS) {
        int64_t pnum = 0;
        uint32_t flags;
        int st;

        if (id == NBD_META_ID_BASE_ALLOCATION) {
            st = blk_co_block_status(blk, off, left, &pnum);
            if (st < 0) {
                return st;
            }
            flags = (st & BDRV_BLOCK_DATA ? 0 : NBD_STATE_HOLE) |
                    (st & BDRV_BLOCK_ZERO ? NBD_STATE_ZERO : 0);
        } else if (id == NBD_META_ID_ALLOCATION_DEPTH) {
            st = nbd_alloc_depth(blk_bs(blk), off, left, &pnum);
            if (st < 0) {
                return st;
            }
            flags = (uint32_t)st;
        } else {
            st = nbd_bitmap_status(req->client->exp, id, off, left, &pnum);
            if (st < 0) {
                return st;
            }
            flags = (uint32_t)st;
        }
        if (pnum <= 0) {
            break;
        }
        pnum = MIN((uint64_t)pnum, left);
        nbd_extent_add(ex, pnum, flags);
        off += pnum;
        left -= pnum;
        if (one) {
            break;
        }
    }
    return ex->count ? 0 : -EIO;
}

static int coroutine_fn nbd_send_extents(NBDRequest *req, uint32_t id,
                                         NBDExtents *ex, bool last)
{
    size_t len = 4 + 8 * (size_t)ex->count;
    g_autofree uint8_t *buf = g_malloc(len);

    nbd_put32(buf, id);
    for (unsigned i = 0; i < ex->count; i++) {
        nbd_put32(buf + 4 + 8 * i, g_array_index(ex->desc, uint32_t, 2 * i));
        nbd_put32(buf + 8 + 8 * i,
                  g_array_index(ex->desc, uint32_t, 2 * i + 1));
    }
    return nbd_send_chunk(req, last ? NBD_REPLY_FLAG_DONE : 0,
                          NBD_REPLY_TYPE_BLOCK_STATUS, buf, len, NULL, 0);
}

static int coroutine_fn nbd_co_block_status(NBDRequest *req)
{
    NBDMetaSelection *m = &req->client->meta;
    unsigned nbm = MIN(m->nr_bitmaps, req->client->exp->nr_bitmaps);
    g_autofree uint32_t *ids = g_new(uint32_t, 2 + nbm);
    g_autofree NBDExtents *ex = g_new(NBDExtents, 2 + nbm);
    unsigned n = 0;
    int ret = 0;

    if (m->base_allocation) {
        ids[n++] = NBD_META_ID_BASE_ALLOCATION;
    }
    if (m->allocation_depth) {
        ids[n++] = NBD_META_ID_ALLOCATION_DEPTH;
    }
    for (unsigned i = 0; i < nbm; i++) {
        if (m->bitmaps[i]) {
            ids[n++] = NBD_META_ID_DIRTY_BITMAP + i;
        }
    }
    /* Everything is computed before anything is sent, so an error is the
     * whole reply. */
    for (unsigned i = 0; i < n; i++) {
        ex[i].desc = g_array_new(FALSE, FALSE, sizeof(uint32_t));
        ex[i].count = 0;
        if (ret == 0) {
            ret = nbd_collect_extents(req, ids[i], &ex[i]);
        }
    }
    if (ret < 0) {
        ret = nbd_send_errno(req, ret);
    } else {
        for (unsigned i = 0; i < n && ret >= 0; i++) {
            ret = nbd_send_extents(req, ids[i], &ex[i], i == n - 1);
        }
    }
    for (unsigned i = 0; i < n; i++) {
        g_array_free(ex[i].desc, TRUE);
    }
    return ret;
}

static int coroutine_fn nbd_handle_request(NBDRequest *req)
{
    BlockBackend *blk = req->client->exp->blk;
    int ret;

    switch (req->type) {
    case NBD_CMD_READ:
        return nbd_co_read(req);
    case NBD_CMD_WRITE:
        /* detect-zeroes=unmap may turn it into a hole */
        nbd_data_forget(req->client->exp, req->offset, req->len);
        ret = blk_co_pwrite(blk, req->offset, req->len, req->buf,
                            nbd_write_flags(req));
        nbd_data_forget(req->client->exp, req->offset, req->len);
        return ret < 0 ? nbd_send_errno(req, ret) : nbd_send_ok(req);
    case NBD_CMD_FLUSH:
        ret = blk_co_flush(blk);
        return ret < 0 ? nbd_send_errno(req, ret) : nbd_send_ok(req);
    case NBD_CMD_TRIM:
        return nbd_co_trim(req);
    case NBD_CMD_WRITE_ZEROES:
        return nbd_co_write_zeroes(req);
    case NBD_CMD_CACHE:
        return nbd_co_cache(req);
    case NBD_CMD_BLOCK_STATUS:
        return nbd_co_block_status(req);
    default:
        /* nbd_receive_request() rejected everything else */
        return nbd_send_error(req, NBD_EINVAL, "unknown command", false, 0);
    }
}

static void coroutine_fn nbd_request_co(void *opaque)
{
    NBDRequest *req = opaque;
    NBDClient *client = req->client;
    int ret;

    if (req->error) {
        ret = nbd_send_error(req, req->error, req->errmsg, false, 0);
    } else {
        ret = nbd_handle_request(req);
    }
    if (ret < 0) {
        /* The reply could not be sent: the stream is broken. */
        nbd_client_close(client);
    }
    nbd_buf_put(req->buf, req->len);
    client->inflight_bytes -= req->cost;
    g_free(req);
    client->nb_inflight--;
    co_queue_restart_all(&client->reader_wait);
}

/* ---- receiving ---- */

static void req_fail(NBDRequest *req, uint32_t error, const char *msg)
{
    if (!req->error) {
        req->error = error;
        req->errmsg = msg;
    }
}

static int coroutine_fn nbd_discard_payload(NBDClient *client, uint32_t len)
{
    uint8_t buf[16384];

    while (len) {
        uint32_t n = MIN(len, (uint32_t)sizeof(buf));
        int ret = nbd_client_read(client, buf, n);
        if (ret <= 0) {
            return ret < 0 ? ret : -EPIPE;
        }
        len -= n;
    }
    return 0;
}

/*
 * Read what follows the header and decide whether the request is valid.
 * Returns 0 (req->error says whether it is) or -errno when the stream is
 * broken.
 */
static int coroutine_fn nbd_receive_request(NBDClient *client,
                                            NBDRequest *req)
{
    uint16_t valid = NBD_CMD_FLAG_FUA;
    uint64_t size = (uint64_t)client->exp_size;
    int ret;

    /* Payload first: whatever is wrong, the stream must stay in step. */
    if (req->type == NBD_CMD_WRITE) {
        if (req->len > NBD_MAX_BUFFER_SIZE) {
            ret = nbd_discard_payload(client, req->len);
            if (ret < 0) {
                return ret;
            }
            req_fail(req, NBD_EINVAL, "write larger than the maximum "
                                      "block size");
            return 0;
        }
        req->buf = nbd_buf_get(req->len);
        if (req->len) {
            ret = nbd_client_read(client, req->buf, req->len);
            if (ret <= 0) {
                return ret < 0 ? ret : -EPIPE;
            }
        }
    }

    switch (req->type) {
    case NBD_CMD_READ:
        if (client->structured_reply) {
            valid |= NBD_CMD_FLAG_DF;
        }
        if (req->len > NBD_MAX_BUFFER_SIZE) {
            /* EINVAL with or without DF, as qsd: the length breaks the
             * advertised maximum block size, not just fragmentation. */
            req_fail(req, NBD_EINVAL,
                     "read larger than the maximum block size");
        }
        break;
    case NBD_CMD_WRITE_ZEROES:
        valid |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        break;
    case NBD_CMD_BLOCK_STATUS:
        valid |= NBD_CMD_FLAG_REQ_ONE;
        if (!client->structured_reply || client->meta.count == 0) {
            req_fail(req, NBD_EINVAL, "no metadata context negotiated");
        } else if (req->len == 0) {
            req_fail(req, NBD_EINVAL, "empty block status request");
        }
        break;
    case NBD_CMD_WRITE:
    case NBD_CMD_FLUSH:
    case NBD_CMD_TRIM:
    case NBD_CMD_CACHE:
        break;
    default:
        req_fail(req, NBD_EINVAL, "unknown command");
        return 0;
    }
    if (req->flags & ~valid) {
        req_fail(req, NBD_EINVAL, "unsupported command flags");
    }
    if ((req->type == NBD_CMD_WRITE || req->type == NBD_CMD_TRIM ||
         req->type == NBD_CMD_WRITE_ZEROES) &&
        !client->exp->writable) {
        req_fail(req, NBD_EPERM, "export is read-only");
    }
    if (req->type != NBD_CMD_FLUSH &&
        (req->offset > size || req->len > size - req->offset)) {
        bool write = req->type == NBD_CMD_WRITE ||
                     req->type == NBD_CMD_WRITE_ZEROES;
        req_fail(req, write ? NBD_ENOSPC : NBD_EINVAL,
                 "request beyond the end of the export");
    }
    return 0;
}

bool coroutine_fn nbd_transmission(NBDClient *client)
{
    for (;;) {
        uint8_t hdr[NBD_REQUEST_SIZE];
        NBDRequest *req;
        int ret;

        /* About to wait (for a slot, or for input unless a whole header
         * is buffered): send the replies that are ready now. */
        if (client->nb_inflight >= NBD_MAX_INFLIGHT ||
            client->rbuf_len - client->rbuf_pos < NBD_REQUEST_SIZE) {
            nbd_flush_kick(client);
        }
        while (!client->closing && client->nb_inflight >= NBD_MAX_INFLIGHT) {
            co_queue_wait(&client->reader_wait, NULL);
        }
        if (client->closing) {
            return false;
        }
        ret = nbd_client_read(client, hdr, sizeof(hdr));
        if (ret <= 0 || nbd_get32(hdr) != NBD_REQUEST_MAGIC) {
            return false; /* end of stream, error, or garbage: hang up */
        }
        req = g_new0(NBDRequest, 1);
        req->client = client;
        req->flags = nbd_get16(hdr + 4);
        req->type = nbd_get16(hdr + 6);
        req->cookie = nbd_get64(hdr + 8);
        req->offset = nbd_get64(hdr + 16);
        req->len = nbd_get32(hdr + 24);
        if (req->type == NBD_CMD_DISC) {
            g_free(req);
            return true; /* the caller answers requests in flight */
        }
        /*
         * Memory budget: a client that queues big reads and never reads
         * the replies must not make us hold 32 x 32 MiB.  Wait (before a
         * write's payload is allocated) until the request fits; one
         * request alone always fits.
         */
        if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
            req->len <= NBD_MAX_BUFFER_SIZE) {
            req->cost = req->len;
        }
        while (!client->closing && client->nb_inflight > 0 &&
               client->inflight_bytes + req->cost > NBD_MAX_INFLIGHT_BYTES) {
            co_queue_wait(&client->reader_wait, NULL);
        }
        if (client->closing) {
            g_free(req);
            return false;
        }
        ret = nbd_receive_request(client, req);
        /* While drained, hold the request back from the block layer. */
        while (ret == 0 && !client->closing && client->exp->quiesced) {
            co_queue_wait(&client->reader_wait, NULL);
        }
        if (ret < 0 || client->closing) {
            nbd_buf_put(req->buf, req->len);
            g_free(req);
            return false;
        }
        client->nb_inflight++;
        client->inflight_bytes += req->cost;
        coroutine_enter(coroutine_create(nbd_request_co, req));
    }
}

void nbd_export_drained_begin(BlockExport *exp)
{
    exp->quiesced++;
}

void nbd_export_drained_end(BlockExport *exp)
{
    NBDClient *client;

    if (exp->quiesced > 0 && --exp->quiesced == 0) {
        LIST_FOREACH(client, &exp->clients, exp_link) {
            co_queue_restart_all(&client->reader_wait);
        }
    }
}
