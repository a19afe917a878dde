/*
 * The request path: every read, write, zero-write, discard, flush,
 * truncate and block-status query on an edge passes here once, so drivers
 * see only aligned, bounded, permitted requests.
 *
 * - alignment: requests are widened to bs->bl.request_alignment; unaligned
 *   writes become read-modify-write with bounce buffers for head and tail,
 *   and are serialised against overlapping requests while they run;
 * - splitting at max_transfer;
 * - detect-zeroes, write-zeroes fallback, FUA emulation, flush ordering;
 * - in-flight counting and drain.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/accounting.h"
#include "block/write-threshold.h"
#include "util/aio.h"

#define ROUND_DOWN(n, a) ((n) & ~((int64_t)(a)-1))
#define ROUND_UP(n, a) ROUND_DOWN((n) + (a)-1, a)
#define MIN_NON_ZERO(a, b) ((a) == 0 ? (b) : ((b) == 0 ? (a) : MIN(a, b)))

/* Zero-write fallback buffer size. */
#define ZERO_BOUNCE_MAX (1 << 20)

/* ---- in-flight and drain waiting ---- */

/* Drains waiting in coroutines sleep here; anything that may end a drain
 * wakes them all to re-evaluate (drain is rare, so this stays simple). */
static GSList *drain_sleepers; /* of CoSleep * */
static unsigned drain_pollers; /* drains polling outside coroutines */

static void noop_bh(void *opaque)
{
}

void bdrv_wakeup(void)
{
    for (GSList *l = drain_sleepers; l; l = l->next) {
        co_sleep_wake(l->data);
    }
    if (drain_pollers) {
        aio_bh_schedule(noop_bh, NULL); /* kick a blocking aio_poll() */
    }
}

void bdrv_inc_in_flight(BlockDriverState *bs)
{
    bs->in_flight++;
}

void bdrv_dec_in_flight(BlockDriverState *bs)
{
    if (bs->in_flight > 0 && --bs->in_flight == 0) {
        bdrv_wakeup();
    }
}

/* Wait until cond(opaque) is false: yield in a coroutine, run the loop
 * outside one.  The periodic wake in coroutines is a safety net for
 * state changes nobody signalled. */
static void drain_wait(bool (*cond)(void *), void *opaque)
{
    if (in_coroutine()) {
        CoSleep w = {0};
        while (cond(opaque)) {
            drain_sleepers = g_slist_prepend(drain_sleepers, &w);
            co_sleep_ns_wakeable(&w, 10 * 1000 * 1000);
            drain_sleepers = g_slist_remove(drain_sleepers, &w);
        }
    } else {
        drain_pollers++;
        while (cond(opaque)) {
            aio_poll(true);
        }
        drain_pollers--;
    }
}

/* Busy: bs has requests in flight, or a parent may still issue some. */
bool bdrv_drain_poll_node(BlockDriverState *bs)
{
    if (bs->in_flight > 0) {
        return true;
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (c->klass->drained_poll && c->klass->drained_poll(c)) {
            return true;
        }
    }
    return false;
}

static bool drain_cond_node(void *opaque)
{
    return bdrv_drain_poll_node(opaque);
}

/* For close: wait for the node's own requests only. */
static bool in_flight_cond(void *opaque)
{
    BlockDriverState *bs = opaque;
    return bs->in_flight > 0;
}

void bdrv_drain_wait_node(BlockDriverState *bs)
{
    drain_wait(in_flight_cond, bs);
}

void bdrv_quiesce_parents(BlockDriverState *bs);
void bdrv_unquiesce_parents(BlockDriverState *bs);

void bdrv_drained_begin(BlockDriverState *bs)
{
    bs->quiesce_counter++;
    bdrv_quiesce_parents(bs);
    drain_wait(drain_cond_node, bs);
}

void bdrv_drained_end(BlockDriverState *bs)
{
    if (bs->quiesce_counter <= 0) {
        return;
    }
    bs->quiesce_counter--;
    bdrv_unquiesce_parents(bs);
}

/* Nodes drained by each bdrv_drain_all_begin, innermost last. */
static GPtrArray *drain_all_stack;

static bool drain_all_cond(void *opaque)
{
    GPtrArray *nodes = opaque;
    for (guint i = 0; i < nodes->len; i++) {
        if (bdrv_drain_poll_node(nodes->pdata[i])) {
            return true;
        }
    }
    return false;
}

void bdrv_drain_all_begin(void)
{
    if (!drain_all_stack) {
        drain_all_stack = g_ptr_array_new();
    }
    GPtrArray *nodes = g_ptr_array_new();
    for (BlockDriverState *bs = bdrv_next_node(NULL); bs;
         bs = bdrv_next_node(bs)) {
        bdrv_ref(bs);
        g_ptr_array_add(nodes, bs);
        bs->quiesce_counter++;
        bdrv_quiesce_parents(bs);
    }
    g_ptr_array_add(drain_all_stack, nodes);
    drain_wait(drain_all_cond, nodes);
}

void bdrv_drain_all_end(void)
{
    if (!drain_all_stack || drain_all_stack->len == 0) {
        return;
    }
    GPtrArray *nodes = drain_all_stack->pdata[drain_all_stack->len - 1];
    g_ptr_array_remove_index(drain_all_stack, drain_all_stack->len - 1);
    for (guint i = 0; i < nodes->len; i++) {
        BlockDriverState *bs = nodes->pdata[i];
        bdrv_drained_end(bs);
    }
    for (guint i = 0; i < nodes->len; i++) {
        bdrv_unref(nodes->pdata[i]);
    }
    g_ptr_array_free(nodes, TRUE);
}

/* ---- tracked requests and serialisation ---- */

static void tracked_begin(BdrvTrackedRequest *req, BlockDriverState *bs,
                          int64_t offset, int64_t bytes, bool is_write)
{
    memset(req, 0, sizeof(*req));
    req->bs = bs;
    req->offset = offset;
    req->bytes = bytes;
    req->is_write = is_write;
    req->overlap_offset = offset;
    req->overlap_bytes = bytes;
    req->co = coroutine_self();
    co_queue_init(&req->wait_queue);
    /* Append: a request only ever waits for requests older than itself,
     * so waits cannot form a cycle. */
    BdrvTrackedRequest *last = LIST_FIRST(&bs->tracked_requests);
    if (!last) {
        LIST_INSERT_HEAD(&bs->tracked_requests, req, list);
    } else {
        while (LIST_NEXT(last, list)) {
            last = LIST_NEXT(last, list);
        }
        LIST_INSERT_AFTER(last, req, list);
    }
}

static void tracked_end(BdrvTrackedRequest *req)
{
    if (req->serialising) {
        req->bs->serialising_in_flight--;
    }
    LIST_REMOVE(req, list);
    co_queue_restart_all(&req->wait_queue);
}

static void mark_serialising(BdrvTrackedRequest *req, uint64_t align)
{
    int64_t start = ROUND_DOWN(req->offset, align);
    int64_t end = ROUND_UP(req->offset + req->bytes, align);
    if (!req->serialising) {
        req->serialising = true;
        req->bs->serialising_in_flight++;
    }
    req->overlap_offset = MIN(req->overlap_offset, start);
    req->overlap_bytes = MAX(req->overlap_offset + req->overlap_bytes, end) -
                         req->overlap_offset;
}

static bool overlaps(const BdrvTrackedRequest *a, const BdrvTrackedRequest *b)
{
    return a->overlap_offset < b->overlap_offset + b->overlap_bytes &&
           b->overlap_offset < a->overlap_offset + a->overlap_bytes;
}

/* Wait for every older overlapping request where either side serialises. */
static void coroutine_fn wait_serialising(BdrvTrackedRequest *req)
{
    BlockDriverState *bs = req->bs;
    bool retry;
    if (!req->serialising && bs->serialising_in_flight == 0) {
        return;
    }
    do {
        retry = false;
        BdrvTrackedRequest *o;
        LIST_FOREACH (o, &bs->tracked_requests, list) {
            if (o == req) {
                break; /* only older requests */
            }
            if ((req->serialising || o->serialising) && overlaps(req, o)) {
                co_queue_wait(&o->wait_queue, NULL);
                retry = true;
                break;
            }
        }
    } while (retry);
}

/* ---- checks ---- */

static int check_request(int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (bytes > BDRV_MAX_LENGTH || offset > BDRV_MAX_LENGTH - bytes) {
        return -EIO;
    }
    return 0;
}

static bool may_write(BdrvChild *child, BdrvRequestFlags flags)
{
    if (child->perm & BLK_PERM_WRITE) {
        return true;
    }
    return (flags & BDRV_REQ_WRITE_UNCHANGED) &&
           (child->perm & BLK_PERM_WRITE_UNCHANGED);
}

static uint32_t req_align(BlockDriverState *bs)
{
    uint32_t a = bs->bl.request_alignment;
    return a ? a : 1;
}

static int64_t max_transfer(BlockDriverState *bs, uint32_t align)
{
    int64_t mt =
        MIN_NON_ZERO(bs->bl.max_transfer, (int64_t)BDRV_REQUEST_MAX_BYTES);
    mt = MIN(mt, (int64_t)BDRV_REQUEST_MAX_BYTES);
    mt = ROUND_DOWN(mt, align);
    return mt > 0 ? mt : align;
}

static size_t mem_align(BlockDriverState *bs)
{
    size_t a = bs->bl.opt_mem_alignment;
    return a >= sizeof(void *) ? a : 4096;
}

/* ---- fault-injection events (blkdebug) ---- */

/* As QEMU: write-path events are raised on the node being written, flush
 * events on the primary child of the node being flushed. */
static void debug_event_bs(BlockDriverState *bs, BlkdebugEvent event)
{
    if (bs->drv && bs->drv->bdrv_debug_event) {
        bs->drv->bdrv_debug_event(bs, event);
    }
}

static BdrvChild *primary_child(BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (c->role & BDRV_CHILD_PRIMARY) {
            return c;
        }
    }
    return NULL;
}

/* ---- driver calls (filters without a callback pass through) ---- */

static BdrvChild *passthrough_child(BlockDriverState *bs)
{
    return bs->drv->is_filter ? bdrv_filter_or_cow_child(bs) : NULL;
}

static int coroutine_fn drv_preadv(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    if (bs->drv->bdrv_co_preadv) {
        return bs->drv->bdrv_co_preadv(bs, offset, bytes, qiov, flags);
    }
    BdrvChild *f = passthrough_child(bs);
    return f ? bdrv_co_preadv(f, offset, bytes, qiov, flags) : -ENOTSUP;
}

static int coroutine_fn drv_pwritev(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, IOVector *qiov,
                                    BdrvRequestFlags flags)
{
    if (bs->drv->bdrv_co_pwritev) {
        return bs->drv->bdrv_co_pwritev(bs, offset, bytes, qiov, flags);
    }
    BdrvChild *f = passthrough_child(bs);
    return f ? bdrv_co_pwritev(f, offset, bytes, qiov, flags) : -ENOTSUP;
}

/* Run fn over [offset, offset+bytes) in pieces of at most `max`, each
 * with the matching slice of qiov (starting at qoff). */
typedef int coroutine_fn DrvRw(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, IOVector *qiov,
                               BdrvRequestFlags flags);

static int coroutine_fn split_rw(DrvRw *fn, BlockDriverState *bs,
                                 int64_t offset, int64_t bytes, IOVector *qiov,
                                 size_t qoff, int64_t max,
                                 BdrvRequestFlags flags)
{
    if (bytes <= max && qoff == 0 && qiov->size == (size_t)bytes) {
        return fn(bs, offset, bytes, qiov, flags);
    }
    while (bytes > 0) {
        int64_t n = MIN(bytes, max);
        IOVector sub;
        qiov_init(&sub, qiov->niov);
        qiov_concat(&sub, qiov, qoff, n);
        int ret = fn(bs, offset, n, &sub, flags);
        qiov_destroy(&sub);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}

/* ---- reads ---- */

/* [offset, offset+bytes) aligned; reads past the end return zeroes. */
static int coroutine_fn aligned_preadv(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, uint32_t align,
                                       IOVector *qiov, size_t qoff,
                                       BdrvRequestFlags flags)
{
    int64_t total = bdrv_getlength(bs);
    if (total < 0) {
        return (int)total;
    }
    int64_t max_bytes = ROUND_UP(MAX(0, total - offset), align);
    int64_t n = MIN(bytes, max_bytes);
    flags &= ~(BDRV_REQ_SERIALISING | BDRV_REQ_NO_WAIT);
    if (n > 0) {
        int ret = split_rw(drv_preadv, bs, offset, n, qiov, qoff,
                           max_transfer(bs, align), flags);
        if (ret < 0) {
            return ret;
        }
    }
    if (bytes > n) {
        qiov_memset(qiov, qoff + n, 0, bytes - n);
    }
    return 0;
}

int coroutine_fn bdrv_co_preadv(BdrvChild *child, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags)
{
    BlockDriverState *bs = child ? child->bs : NULL;
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    int ret = check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (!qiov || qiov->size < (size_t)bytes) {
        return -EINVAL;
    }
    if (bytes == 0) {
        return 0;
    }
    uint32_t align = req_align(bs);
    int64_t head = offset & (align - 1);
    int64_t end = offset + bytes;
    int64_t tail_pad = ROUND_UP(end, align) - end;
    BdrvTrackedRequest req;

    bdrv_inc_in_flight(bs);
    tracked_begin(&req, bs, offset, bytes, false);
    if (flags & BDRV_REQ_SERIALISING) {
        mark_serialising(&req, align);
    }
    wait_serialising(&req);
    if (head || tail_pad) {
        size_t ma = mem_align(bs);
        void *hbuf = head ? blk_memalign(ma, head) : NULL;
        void *tbuf = tail_pad ? blk_memalign(ma, tail_pad) : NULL;
        IOVector lq;
        qiov_init(&lq, qiov->niov + 2);
        if (head) {
            qiov_add(&lq, hbuf, head);
        }
        qiov_concat(&lq, qiov, 0, bytes);
        if (tail_pad) {
            qiov_add(&lq, tbuf, tail_pad);
        }
        ret = aligned_preadv(bs, offset - head, bytes + head + tail_pad, align,
                             &lq, 0, flags);
        qiov_destroy(&lq);
        blk_vfree(hbuf);
        blk_vfree(tbuf);
    } else {
        ret = aligned_preadv(bs, offset, bytes, align, qiov, 0, flags);
    }
    tracked_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

int coroutine_fn bdrv_co_pread(BdrvChild *child, int64_t offset, int64_t bytes,
                               void *buf, BdrvRequestFlags flags)
{
    IOVector q;
    if (bytes < 0) {
        return -EIO;
    }
    qiov_init_buf(&q, buf, bytes);
    return bdrv_co_preadv(child, offset, bytes, &q, flags);
}

/* ---- writes ---- */

/* Mark the node's enabled dirty bitmaps: also after a failed request,
 * which may have changed part of the range. */
static void mark_dirty(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    if (bs->dirty_bitmaps && bdrv_dirty_bitmap_hooks &&
        bdrv_dirty_bitmap_hooks->set_dirty) {
        bdrv_dirty_bitmap_hooks->set_dirty(bs, offset, bytes);
    }
}

/* The node's size changed: its dirty bitmaps follow. */
static void resize_dirty(BlockDriverState *bs)
{
    if (bs->dirty_bitmaps && bdrv_dirty_bitmap_hooks &&
        bdrv_dirty_bitmap_hooks->truncate) {
        bdrv_dirty_bitmap_hooks->truncate(bs, bs->total_bytes);
    }
}

static void write_done(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    bs->write_gen++;
    mark_dirty(bs, offset, bytes);
}

/* Zeroes on an aligned range, through the driver's write_zeroes where it
 * can, else by writing zeroed buffers. */
static int coroutine_fn do_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, BdrvRequestFlags flags)
{
    uint32_t align = req_align(bs);
    int64_t zalign =
        MAX((int64_t)bs->bl.pwrite_zeroes_alignment, (int64_t)align);
    int64_t max_wz = MIN_NON_ZERO(bs->bl.max_pwrite_zeroes, (int64_t)INT_MAX);
    max_wz = MAX(ROUND_DOWN(max_wz, zalign), zalign);
    int64_t max_write = max_transfer(bs, align);
    bool need_flush = false;
    void *buf = NULL;
    /* Big enough for every fallback write of this request. */
    size_t buf_len = MIN(MIN(bytes, max_write), (int64_t)ZERO_BOUNCE_MAX);
    int ret = 0;

    if (zalign & (zalign - 1)) {
        zalign = align; /* not a power of two: do not fragment by it */
    }
    int64_t head = offset % zalign;
    int64_t tail = (offset + bytes) % zalign;

    while (bytes > 0 && ret == 0) {
        int64_t num = bytes;
        /* Pieces that end on zalign boundaries where possible, so the
         * driver can take the middle in one go. */
        if (head) {
            num = MIN(bytes, zalign - head);
            head = (head + num) % zalign;
        } else if (tail && num > zalign) {
            num -= tail;
        }
        num = MIN(num, max_wz);

        ret = -ENOTSUP;
        if (bs->drv->bdrv_co_pwrite_zeroes) {
            ret = bs->drv->bdrv_co_pwrite_zeroes(
                bs, offset, num, flags & bs->supported_zero_flags);
            if (ret != -ENOTSUP && (flags & BDRV_REQ_FUA) &&
                !(bs->supported_zero_flags & BDRV_REQ_FUA)) {
                need_flush = true;
            }
        } else if (passthrough_child(bs)) {
            ret = bdrv_co_pwrite_zeroes(passthrough_child(bs), offset, num,
                                        flags);
        }
        if (ret == -ENOTSUP && !(flags & BDRV_REQ_NO_FALLBACK)) {
            /* Fall back to writing a buffer of zeroes. */
            BdrvRequestFlags wflags = flags & BDRV_REQ_FUA;
            if ((wflags & BDRV_REQ_FUA) &&
                !(bs->supported_write_flags & BDRV_REQ_FUA)) {
                wflags &= ~BDRV_REQ_FUA;
                need_flush = true;
            }
            int64_t done = 0;
            ret = 0;
            while (done < num && ret == 0) {
                int64_t n = MIN(num - done, MIN(max_write, ZERO_BOUNCE_MAX));
                if (!buf) {
                    buf = blk_memalign(mem_align(bs), buf_len);
                    memset(buf, 0, buf_len);
                }
                IOVector q;
                qiov_init_buf(&q, buf, n);
                ret = drv_pwritev(bs, offset + done, n, &q, wflags);
                done += n;
            }
        }
        offset += num;
        bytes -= num;
    }
    blk_vfree(buf);
    if (ret == 0 && need_flush) {
        ret = bdrv_co_flush(bs);
    }
    return ret;
}

/* An aligned write (data or zeroes) with the request already tracked. */
static int coroutine_fn aligned_pwritev(BdrvChild *child, int64_t offset,
                                        int64_t bytes, uint32_t align,
                                        IOVector *qiov, size_t qoff,
                                        BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    int ret;
    bdrv_write_threshold_check_child(child, offset, bytes, flags);
    if (!(flags & BDRV_REQ_ZERO_WRITE) &&
        bs->detect_zeroes != BLOCKDEV_DETECT_ZEROES_OPTIONS_OFF &&
        bs->drv->bdrv_co_pwrite_zeroes && qiov &&
        qiov_is_zero(qiov, qoff, bytes)) {
        flags |= BDRV_REQ_ZERO_WRITE;
        if (bs->detect_zeroes == BLOCKDEV_DETECT_ZEROES_OPTIONS_UNMAP &&
            (bs->open_flags & BDRV_O_UNMAP)) {
            flags |= BDRV_REQ_MAY_UNMAP;
        }
    }
    if (flags & BDRV_REQ_ZERO_WRITE) {
        debug_event_bs(bs, BLKDBG_PWRITEV_ZERO);
        ret = do_pwrite_zeroes(bs, offset, bytes, flags);
    } else {
        BdrvRequestFlags dflags = flags & bs->supported_write_flags;
        bool emulate_fua = (flags & BDRV_REQ_FUA) && !(dflags & BDRV_REQ_FUA);
        debug_event_bs(bs, BLKDBG_PWRITEV);
        ret = split_rw(drv_pwritev, bs, offset, bytes, qiov, qoff,
                       max_transfer(bs, align), dflags);
        if (ret == 0 && emulate_fua) {
            ret = bdrv_co_flush(bs);
        }
    }
    debug_event_bs(bs, BLKDBG_PWRITEV_DONE);
    bdrv_acct_write_done(bs, offset, bytes); /* failed ones too, as QEMU */
    if (ret == 0) {
        write_done(bs, offset, bytes);
    } else {
        mark_dirty(bs, offset, bytes);
    }
    return ret;
}

/* Read the aligned block at `aoff` for a read-modify-write. */
static int coroutine_fn rmw_read(BlockDriverState *bs, int64_t aoff,
                                 uint32_t align, void **buf)
{
    *buf = blk_memalign(mem_align(bs), align);
    IOVector q;
    qiov_init_buf(&q, *buf, align);
    return aligned_preadv(bs, aoff, align, align, &q, 0, 0);
}

/* Zeroes over an unaligned range: head and tail blocks by RMW. */
static int coroutine_fn unaligned_zeroes(BdrvChild *child, int64_t offset,
                                         int64_t bytes, uint32_t align,
                                         BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    int64_t end = offset + bytes;
    int ret;
    BdrvRequestFlags wflags = flags & BDRV_REQ_FUA;

    if (offset & (align - 1)) {
        int64_t aoff = ROUND_DOWN(offset, align);
        int64_t n = MIN(end, aoff + align) - offset;
        void *buf;
        debug_event_bs(bs, BLKDBG_PWRITEV_RMW_HEAD);
        ret = rmw_read(bs, aoff, align, &buf);
        debug_event_bs(bs, BLKDBG_PWRITEV_RMW_AFTER_HEAD);
        if (ret == 0) {
            memset((char *)buf + (offset - aoff), 0, n);
            IOVector q;
            qiov_init_buf(&q, buf, align);
            ret = aligned_pwritev(child, aoff, align, align, &q, 0, wflags);
        }
        blk_vfree(buf);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    int64_t mid = ROUND_DOWN(bytes, align);
    if (mid > 0) {
        ret = aligned_pwritev(child, offset, mid, align, NULL, 0, flags);
        if (ret < 0) {
            return ret;
        }
        offset += mid;
        bytes -= mid;
    }
    if (bytes > 0) {
        void *buf;
        debug_event_bs(bs, BLKDBG_PWRITEV_RMW_TAIL);
        ret = rmw_read(bs, offset, align, &buf);
        debug_event_bs(bs, BLKDBG_PWRITEV_RMW_AFTER_TAIL);
        if (ret == 0) {
            memset(buf, 0, bytes);
            IOVector q;
            qiov_init_buf(&q, buf, align);
            ret = aligned_pwritev(child, offset, align, align, &q, 0, wflags);
        }
        blk_vfree(buf);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int coroutine_fn pwritev_common(BdrvChild *child, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       BdrvRequestFlags flags)
{
    BlockDriverState *bs = child ? child->bs : NULL;
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    int ret = check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (!may_write(child, flags) || !bdrv_is_writable(bs)) {
        return -EPERM;
    }
    if (!(flags & BDRV_REQ_ZERO_WRITE) &&
        (!qiov || qiov->size < (size_t)bytes)) {
        return -EINVAL;
    }
    if (bytes == 0) {
        return 0;
    }
    uint32_t align = req_align(bs);
    int64_t head = offset & (align - 1);
    int64_t end = offset + bytes;
    int64_t tail_pad = ROUND_UP(end, align) - end;
    BdrvTrackedRequest req;

    if ((head || tail_pad) && (flags & BDRV_REQ_ZERO_WRITE) &&
        (flags & BDRV_REQ_NO_FALLBACK)) {
        return -ENOTSUP; /* the head/tail would need slow writes */
    }
    if (end > bdrv_getlength(bs) && !(child->perm & BLK_PERM_RESIZE)) {
        /* Writing past the end grows the node: that is a resize. */
        return -EPERM;
    }

    bdrv_inc_in_flight(bs);
    tracked_begin(&req, bs, offset, bytes, true);
    if (head || tail_pad || (flags & BDRV_REQ_SERIALISING)) {
        /* Nobody may touch the blocks we read back and rewrite. */
        mark_serialising(&req, align);
    }
    wait_serialising(&req);

    if (flags & BDRV_REQ_ZERO_WRITE) {
        if (head || tail_pad) {
            ret = unaligned_zeroes(child, offset, bytes, align, flags);
        } else {
            ret = aligned_pwritev(child, offset, bytes, align, NULL, 0, flags);
        }
    } else if (head || tail_pad) {
        int64_t aoff = offset - head;
        int64_t tstart = ROUND_UP(end, align) - align;
        void *hbuf = NULL, *tbuf = NULL;
        ret = 0;
        if (head) {
            debug_event_bs(bs, BLKDBG_PWRITEV_RMW_HEAD);
            ret = rmw_read(bs, aoff, align, &hbuf);
            debug_event_bs(bs, BLKDBG_PWRITEV_RMW_AFTER_HEAD);
        }
        if (ret == 0 && tail_pad) {
            if (hbuf && tstart == aoff) {
                tbuf = hbuf; /* head and tail share one block */
            } else {
                debug_event_bs(bs, BLKDBG_PWRITEV_RMW_TAIL);
                ret = rmw_read(bs, tstart, align, &tbuf);
                debug_event_bs(bs, BLKDBG_PWRITEV_RMW_AFTER_TAIL);
            }
        }
        if (ret == 0) {
            IOVector lq;
            qiov_init(&lq, qiov->niov + 2);
            if (head) {
                qiov_add(&lq, hbuf, head);
            }
            qiov_concat(&lq, qiov, 0, bytes);
            if (tail_pad) {
                qiov_add(&lq, (char *)tbuf + (align - tail_pad), tail_pad);
            }
            ret = aligned_pwritev(child, aoff, bytes + head + tail_pad, align,
                                  &lq, 0, flags);
            qiov_destroy(&lq);
        }
        if (tbuf != hbuf) {
            blk_vfree(tbuf);
        }
        blk_vfree(hbuf);
    } else {
        ret = aligned_pwritev(child, offset, bytes, align, qiov, 0, flags);
    }

    if (ret == 0 && end > bs->total_bytes) {
        bs->total_bytes = end; /* the write grew the node */
        resize_dirty(bs);
        mark_dirty(bs, offset, bytes); /* the part past the old end */
    }
    tracked_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

int coroutine_fn bdrv_co_pwritev(BdrvChild *child, int64_t offset,
                                 int64_t bytes, IOVector *qiov,
                                 BdrvRequestFlags flags)
{
    return pwritev_common(child, offset, bytes, qiov, flags);
}

int coroutine_fn bdrv_co_pwrite(BdrvChild *child, int64_t offset, int64_t bytes,
                                const void *buf, BdrvRequestFlags flags)
{
    IOVector q;
    if (bytes < 0) {
        return -EIO;
    }
    qiov_init_buf(&q, (void *)buf, bytes);
    return bdrv_co_pwritev(child, offset, bytes, &q, flags);
}

int coroutine_fn bdrv_co_pwrite_zeroes(BdrvChild *child, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags)
{
    if (child && child->bs && !(child->bs->open_flags & BDRV_O_UNMAP)) {
        flags &= ~BDRV_REQ_MAY_UNMAP; /* discard=ignore */
    }
    return pwritev_common(child, offset, bytes, NULL,
                          flags | BDRV_REQ_ZERO_WRITE);
}

/* ---- discard ---- */

int coroutine_fn bdrv_co_pdiscard(BdrvChild *child, int64_t offset,
                                  int64_t bytes)
{
    BlockDriverState *bs = child ? child->bs : NULL;
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    int ret = check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (!(child->perm & BLK_PERM_WRITE) || !bdrv_is_writable(bs)) {
        return -EPERM;
    }
    /* Discard is advisory: with discard=ignore, or a driver that cannot,
     * it succeeds doing nothing. */
    if (!(bs->open_flags & BDRV_O_UNMAP)) {
        return 0;
    }
    BdrvChild *pass = bs->drv->bdrv_co_pdiscard ? NULL : passthrough_child(bs);
    if (!bs->drv->bdrv_co_pdiscard && !pass) {
        return 0;
    }
    /* The whole request, before the trimming below (as QEMU). */
    bdrv_write_threshold_check(bs, offset, bytes);
    uint32_t align = req_align(bs);
    /* Unaligned slivers at either end are left alone (but the bitmaps
     * see the whole request, as QEMU's do). */
    int64_t start = ROUND_UP(offset, align);
    int64_t end = ROUND_DOWN(offset + bytes, align);
    if (end <= start) {
        mark_dirty(bs, offset, bytes);
        return 0;
    }
    int64_t dalign = MAX((int64_t)bs->bl.pdiscard_alignment, (int64_t)align);
    if (dalign & (dalign - 1)) {
        dalign = align;
    }
    int64_t max = MIN_NON_ZERO(bs->bl.max_pdiscard, (int64_t)INT_MAX);
    max = MAX(ROUND_DOWN(max, dalign), dalign);
    BdrvTrackedRequest req;

    bdrv_inc_in_flight(bs);
    tracked_begin(&req, bs, start, end - start, true);
    wait_serialising(&req);
    ret = 0;
    for (int64_t off = start; off < end && ret == 0;) {
        int64_t num = end - off;
        if (off % dalign) {
            num = MIN(num, dalign - off % dalign);
        } else if (num > dalign && (end % dalign)) {
            num -= end % dalign;
        }
        num = MIN(num, max);
        if (pass) {
            ret = bdrv_co_pdiscard(pass, off, num);
        } else {
            ret = bs->drv->bdrv_co_pdiscard(bs, off, num);
        }
        if (ret == -ENOTSUP) {
            ret = 0;
        }
        off += num;
    }
    if (ret == 0) {
        write_done(bs, start, 0);
    }
    mark_dirty(bs, offset, bytes);
    tracked_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---- flush ---- */

/* ---- copy offload ---- */

/* One side of a copy: a node, a range inside it, aligned to its request
 * alignment (offload has no read-modify-write). */
static int copy_range_check(BdrvChild *c, int64_t offset, int64_t bytes)
{
    BlockDriverState *bs = c ? c->bs : NULL;
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    int ret = check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    int64_t align = req_align(bs);
    if ((offset | bytes) & (align - 1)) {
        return -ENOTSUP;
    }
    int64_t len = bdrv_getlength(bs);
    if (len < 0 || offset + bytes > len) {
        return -ENOTSUP; /* no growing through offload */
    }
    return 0;
}

int coroutine_fn bdrv_co_copy_range_from(BdrvChild *src, int64_t src_offset,
                                         BdrvChild *dst, int64_t dst_offset,
                                         int64_t bytes)
{
    int ret = copy_range_check(src, src_offset, bytes);
    if (ret < 0) {
        return ret;
    }
    BlockDriverState *bs = src->bs;
    if (!bs->drv->bdrv_co_copy_range_from) {
        return -ENOTSUP;
    }
    if (bytes == 0) {
        return 0;
    }
    /* a read of bs: waits for serialising writes over the range */
    BdrvTrackedRequest req;
    bdrv_inc_in_flight(bs);
    tracked_begin(&req, bs, src_offset, bytes, false);
    wait_serialising(&req);
    ret = bs->drv->bdrv_co_copy_range_from(bs, src, src_offset, dst,
                                           dst_offset, bytes);
    tracked_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

int coroutine_fn bdrv_co_copy_range_to(BdrvChild *src, int64_t src_offset,
                                       BdrvChild *dst, int64_t dst_offset,
                                       int64_t bytes)
{
    int ret = copy_range_check(dst, dst_offset, bytes);
    if (ret < 0) {
        return ret;
    }
    BlockDriverState *bs = dst->bs;
    if (!may_write(dst, 0) || !bdrv_is_writable(bs)) {
        return -EPERM;
    }
    /* detect-zeroes would have to look at the data */
    if (!bs->drv->bdrv_co_copy_range_to ||
        bs->detect_zeroes != BLOCKDEV_DETECT_ZEROES_OPTIONS_OFF) {
        return -ENOTSUP;
    }
    if (bytes == 0) {
        return 0;
    }
    /* a write of bs, as bdrv_co_pwritev's aligned case */
    BdrvTrackedRequest req;
    bdrv_inc_in_flight(bs);
    tracked_begin(&req, bs, dst_offset, bytes, true);
    wait_serialising(&req);
    bdrv_write_threshold_check(bs, dst_offset, bytes);
    ret = bs->drv->bdrv_co_copy_range_to(bs, src, src_offset, dst,
                                         dst_offset, bytes);
    bdrv_acct_write_done(bs, dst_offset, bytes);
    if (ret == 0) {
        write_done(bs, dst_offset, bytes);
    } else if (ret != -ENOTSUP) {
        mark_dirty(bs, dst_offset, bytes); /* part may have been written */
    }
    tracked_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

int coroutine_fn bdrv_co_copy_range(BdrvChild *src, int64_t src_offset,
                                    BdrvChild *dst, int64_t dst_offset,
                                    int64_t bytes)
{
    return bdrv_co_copy_range_from(src, src_offset, dst, dst_offset, bytes);
}

int coroutine_fn bdrv_co_flush(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return 0;
    }
    bdrv_inc_in_flight(bs);
    unsigned current_gen = bs->write_gen;
    /* One flush at a time per node; a flush that started after ours
     * covers our writes too, so waiting for it is enough. */
    while (bs->active_flush_req) {
        co_queue_wait(&bs->flush_queue, NULL);
    }
    bs->active_flush_req = true;
    int ret = 0;

    /* 1. This node's caches into its children (even with no-flush). */
    BLKDBG_EVENT(primary_child(bs), BLKDBG_FLUSH_TO_OS);
    if (bs->drv->bdrv_co_flush_to_os) {
        ret = bs->drv->bdrv_co_flush_to_os(bs);
        if (ret < 0) {
            goto out;
        }
    }
    /* Raised before the children are flushed, so that a flush rule it
     * activates on a blkdebug child fails this very flush (as in QEMU,
     * where the children are flushed last). */
    bool to_disk = !(bs->open_flags & BDRV_O_NO_FLUSH) &&
                   bs->flushed_gen != current_gen;
    if (to_disk) {
        BLKDBG_EVENT(primary_child(bs), BLKDBG_FLUSH_TO_DISK);
    }
    /* 2. The children, so everything below is stable first. */
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (c->perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED)) {
            int r = bdrv_co_flush(c->bs);
            if (ret == 0) {
                ret = r;
            }
        }
    }
    if (ret < 0) {
        goto out;
    }
    /* 3. This node to disk, unless cache.no-flush or nothing new. */
    if (to_disk && bs->drv->bdrv_co_flush_to_disk) {
        ret = bs->drv->bdrv_co_flush_to_disk(bs);
    }
out:
    if (ret == 0) {
        bs->flushed_gen = current_gen;
    }
    bs->active_flush_req = false;
    co_queue_next(&bs->flush_queue);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---- truncate ---- */

int coroutine_fn bdrv_co_truncate(BdrvChild *child, int64_t offset, bool exact,
                                  PreallocMode prealloc, BdrvRequestFlags flags,
                                  GError **errp)
{
    BlockDriverState *bs = child ? child->bs : NULL;
    if (!bs || !bs->drv) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    if (offset < 0) {
        error_setg(errp, "Image size cannot be negative");
        return -EINVAL;
    }
    if (offset > BDRV_MAX_LENGTH) {
        error_setg(errp,
                   "offset(%" G_GINT64_FORMAT
                   ") exceeds maximum(%" G_GINT64_FORMAT ")",
                   offset, (int64_t)BDRV_MAX_LENGTH);
        return -EFBIG;
    }
    int64_t old_size = bdrv_getlength(bs);
    if (old_size < 0) {
        error_setg_errno(errp, (int)-old_size, "Failed to get old image size");
        return (int)old_size;
    }
    if (bdrv_is_read_only(bs)) {
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    if (!(child->perm & BLK_PERM_RESIZE)) {
        error_setg(errp, "Node '%s' may not be resized by this user",
                   bs->node_name);
        return -EPERM;
    }
    int64_t new_bytes = offset > old_size ? offset - old_size : 0;
    BdrvTrackedRequest req;
    bdrv_inc_in_flight(bs);
    tracked_begin(&req, bs, offset - new_bytes, new_bytes, true);
    if (new_bytes) {
        /* Nothing may read the new area before it is set up. */
        mark_serialising(&req, 1);
    }
    wait_serialising(&req);

    /* A long enough backing file would show through a grown area. */
    BdrvChild *backing = bs->backing;
    if (new_bytes && backing && bdrv_getlength(backing->bs) > old_size) {
        flags |= BDRV_REQ_ZERO_WRITE;
    }
    int ret;
    BdrvChild *filtered = passthrough_child(bs);
    if (bs->drv->bdrv_co_truncate) {
        ret =
            bs->drv->bdrv_co_truncate(bs, offset, exact, prealloc, flags, errp);
    } else if (filtered) {
        ret = bdrv_co_truncate(filtered, offset, exact, prealloc, flags, errp);
        if (ret == 0) {
            bs->total_bytes = filtered->bs->total_bytes;
        }
    } else {
        error_setg(errp, "Image format driver does not support resize");
        ret = -ENOTSUP;
    }
    if (ret == 0) {
        bs->write_gen++;
        resize_dirty(bs);
        bdrv_parent_cb_resize(bs);
    }
    tracked_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---- block status ---- */

int coroutine_fn bdrv_co_block_status(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum,
                                      int64_t *map, BlockDriverState **file)
{
    int64_t local_map = 0;
    BlockDriverState *local_file = NULL;
    int ret;

    *pnum = 0;
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    int64_t total = bdrv_getlength(bs);
    if (total < 0) {
        return (int)total;
    }
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    if (offset >= total) {
        return BDRV_BLOCK_EOF;
    }
    bytes = MIN(bytes, total - offset);
    if (bytes == 0) {
        return 0;
    }

    bdrv_inc_in_flight(bs);
    if (!bs->drv->bdrv_co_block_status) {
        BdrvChild *f = passthrough_child(bs);
        if (f) {
            ret = bdrv_co_block_status(f->bs, offset, bytes, pnum, &local_map,
                                       &local_file);
        } else {
            *pnum = bytes;
            ret = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
            if (LIST_EMPTY(&bs->children)) {
                /* a protocol: the data is here, at the same offset */
                ret |= BDRV_BLOCK_OFFSET_VALID;
                local_map = offset;
                local_file = bs;
            }
        }
        goto out;
    }

    /* The driver sees whole alignment units. */
    uint32_t align = req_align(bs);
    int64_t aoff = ROUND_DOWN(offset, align);
    int64_t abytes = ROUND_UP(offset + bytes, align) - aoff;
    ret = bs->drv->bdrv_co_block_status(bs, true, aoff, abytes, pnum,
                                        &local_map, &local_file);
    if (ret < 0) {
        *pnum = 0;
        goto out;
    }
    if (*pnum <= offset - aoff) {
        /* A driver that made no progress past our start: report the
         * smallest unit so callers still advance. */
        *pnum = MIN(bytes, (int64_t)align - (offset - aoff));
    } else {
        *pnum -= offset - aoff;
    }
    if (*pnum > bytes) {
        *pnum = bytes;
    }
    if (ret & BDRV_BLOCK_OFFSET_VALID) {
        local_map += offset - aoff;
    }

    if (ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)) {
        ret |= BDRV_BLOCK_ALLOCATED;
    } else if (bs->drv->supports_backing) {
        BlockDriverState *cow = bdrv_backing_bs(bs);
        if (!cow) {
            ret |= BDRV_BLOCK_ZERO; /* nothing below: reads as zero */
        } else {
            int64_t size2 = bdrv_getlength(cow);
            if (size2 >= 0 && offset >= size2) {
                ret |= BDRV_BLOCK_ZERO; /* past the backing file's end */
            }
        }
    }

    /* Ask the file for precise zero information where the driver said
     * "data, but look below". */
    if ((ret & BDRV_BLOCK_RECURSE) && local_file && local_file != bs &&
        (ret & BDRV_BLOCK_DATA) && !(ret & BDRV_BLOCK_ZERO) &&
        (ret & BDRV_BLOCK_OFFSET_VALID)) {
        int64_t file_pnum;
        int ret2 = bdrv_co_block_status(local_file, local_map, *pnum,
                                        &file_pnum, NULL, NULL);
        if (ret2 >= 0) {
            if ((ret2 & BDRV_BLOCK_EOF) &&
                (!file_pnum || (ret2 & BDRV_BLOCK_ZERO))) {
                ret |= BDRV_BLOCK_ZERO; /* past the file's end */
            } else {
                *pnum = file_pnum;
                ret |= (ret2 & BDRV_BLOCK_ZERO);
            }
        }
    }
    ret &= ~BDRV_BLOCK_RECURSE;

out:
    bdrv_dec_in_flight(bs);
    if (ret >= 0 && offset + *pnum == total) {
        ret |= BDRV_BLOCK_EOF;
    }
    if (map) {
        *map = local_map;
    }
    if (file) {
        *file = local_file;
    }
    return ret;
}

int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs,
                                            BlockDriverState *base,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockDriverState **file)
{
    if (bs == base) {
        *pnum = bytes;
        return 0;
    }
    int ret = bdrv_co_block_status(bs, offset, bytes, pnum, map, file);
    if (ret < 0 || *pnum == 0 || (ret & BDRV_BLOCK_ALLOCATED)) {
        return ret;
    }
    int64_t eof = (ret & BDRV_BLOCK_EOF) ? offset + *pnum : -1;
    bytes = MIN(bytes, *pnum);
    for (BlockDriverState *p = bdrv_child_bs(bdrv_filter_or_cow_child(bs));
         p && p != base; p = bdrv_child_bs(bdrv_filter_or_cow_child(p))) {
        ret = bdrv_co_block_status(p, offset, bytes, pnum, map, file);
        if (ret < 0) {
            return ret;
        }
        if (*pnum == 0) {
            /* This layer is shorter than the one above that deferred to
             * it: the zeroes past its end belong to it. */
            *pnum = bytes;
            if (file) {
                *file = p;
            }
            ret = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
            break;
        }
        if (ret & BDRV_BLOCK_ALLOCATED) {
            /* EOF of a lower layer is not EOF of the top. */
            ret &= ~BDRV_BLOCK_EOF;
            break;
        }
        bytes = *pnum;
    }
    if (offset + *pnum == eof) {
        ret |= BDRV_BLOCK_EOF;
    }
    return ret;
}

int coroutine_fn bdrv_co_is_allocated(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum)
{
    int64_t dummy;
    int ret = bdrv_co_block_status(bs, offset, bytes, pnum ? pnum : &dummy,
                                   NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    return !!(ret & BDRV_BLOCK_ALLOCATED);
}

/* ---- fault injection ---- */

void bdrv_debug_event(BdrvChild *child, BlkdebugEvent event)
{
    BlockDriverState *bs = child ? child->bs : NULL;
    if (bs && bs->drv && bs->drv->bdrv_debug_event) {
        bs->drv->bdrv_debug_event(bs, event);
    }
}
