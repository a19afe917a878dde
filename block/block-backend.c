/*
 * BlockBackend: a root user of a node (an export, a job, a QMP command
 * that does I/O).  It owns the root edge and its permissions, checks that
 * requests stay inside the node, and holds new requests back while the
 * node is drained.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"

struct BlockBackend {
    int refcnt;
    BdrvChild *root;
    uint64_t perm;
    uint64_t shared_perm;
    char *desc; /* how conflicts name this user */
    const BlockDevOps *dev_ops;
    void *dev_opaque;
    int quiesce_counter;
    unsigned in_flight;
    bool disable_request_queuing;
    int64_t notified_len;    /* size the user last heard of */
    CoQueue queued_requests; /* requests held back while drained */
    TAILQ_ENTRY(BlockBackend) all_link; /* in all_blks */
};

/* Every BlockBackend, oldest first (x-debug-query-block-graph). */
static TAILQ_HEAD(, BlockBackend) all_blks = TAILQ_HEAD_INITIALIZER(all_blks);

BlockBackend *blk_all_next(BlockBackend *prev)
{
    return prev ? TAILQ_NEXT(prev, all_link) : TAILQ_FIRST(&all_blks);
}

BlockBackend *blk_new(uint64_t perm, uint64_t shared_perm)
{
    BlockBackend *blk = g_new0(BlockBackend, 1);
    blk->refcnt = 1;
    blk->perm = perm;
    blk->shared_perm = shared_perm;
    co_queue_init(&blk->queued_requests);
    TAILQ_INSERT_TAIL(&all_blks, blk, all_link);
    return blk;
}

void blk_set_user_desc(BlockBackend *blk, const char *desc)
{
    g_free(blk->desc);
    blk->desc = g_strdup(desc);
}

/* ---- the root edge's parent callbacks ---- */

static char *root_get_parent_desc(BdrvChild *c)
{
    BlockBackend *blk = c->opaque;
    /* QEMU's wording for a backend without a name (every export and job
     * backend in qemu-storage-daemon). */
    return g_strdup(blk->desc ? blk->desc : "an unnamed block device");
}

static void root_drained_begin(BdrvChild *c)
{
    BlockBackend *blk = c->opaque;
    if (++blk->quiesce_counter == 1 && blk->dev_ops &&
        blk->dev_ops->drained_begin) {
        blk->dev_ops->drained_begin(blk->dev_opaque);
    }
}

static void root_drained_end(BdrvChild *c)
{
    BlockBackend *blk = c->opaque;
    if (blk->quiesce_counter <= 0) {
        return;
    }
    if (--blk->quiesce_counter == 0) {
        if (blk->dev_ops && blk->dev_ops->drained_end) {
            blk->dev_ops->drained_end(blk->dev_opaque);
        }
        co_queue_restart_all(&blk->queued_requests);
    }
}

static bool root_drained_poll(BdrvChild *c)
{
    BlockBackend *blk = c->opaque;
    if (blk->in_flight > 0) {
        return true;
    }
    /* BlockDevOps.drained_poll returns true once the user has stopped. */
    if (blk->dev_ops && blk->dev_ops->drained_poll) {
        return !blk->dev_ops->drained_poll(blk->dev_opaque);
    }
    return false;
}

static void root_resize(BdrvChild *c)
{
    BlockBackend *blk = c->opaque;
    /* A resize can reach us by more than one path (the node's own
     * truncate, and its child's); tell the user once per change. */
    int64_t len = bdrv_getlength(c->bs);
    if (len == blk->notified_len) {
        return;
    }
    blk->notified_len = len;
    if (blk->dev_ops && blk->dev_ops->resize) {
        blk->dev_ops->resize(blk->dev_opaque);
    }
}

static const BdrvChildClass child_root = {
    .parent_is_bds = false,
    .get_parent_desc = root_get_parent_desc,
    .drained_begin = root_drained_begin,
    .drained_end = root_drained_end,
    .drained_poll = root_drained_poll,
    .resize = root_resize,
};

int blk_insert_bs(BlockBackend *blk, BlockDriverState *bs, GError **errp)
{
    if (blk->root) {
        error_setg(errp, "The block backend already has a node");
        return -EBUSY;
    }
    BdrvChild *c = bdrv_root_attach_child(
        bs, "root", &child_root, BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
        blk->perm, blk->shared_perm, blk, errp);
    if (!c) {
        return -EPERM;
    }
    blk->root = c;
    blk->notified_len = bdrv_getlength(bs);
    return 0;
}

void blk_remove_bs(BlockBackend *blk)
{
    BdrvChild *c = blk->root;
    if (!c) {
        return;
    }
    BlockDriverState *bs = c->bs;
    bdrv_ref(bs);
    bdrv_drained_begin(bs);
    blk->root = NULL;
    bdrv_root_unref_child(c);
    bdrv_drained_end(bs);
    bdrv_unref(bs);
}

void blk_unref(BlockBackend *blk)
{
    if (!blk || --blk->refcnt > 0) {
        return;
    }
    blk_remove_bs(blk);
    TAILQ_REMOVE(&all_blks, blk, all_link);
    g_free(blk->desc);
    g_free(blk);
}

BlockDriverState *blk_bs(BlockBackend *blk)
{
    return blk->root ? blk->root->bs : NULL;
}

BdrvChild *blk_root(BlockBackend *blk)
{
    return blk->root;
}

int blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared_perm,
                 GError **errp)
{
    if (blk->root) {
        int ret = bdrv_child_try_set_perm(blk->root, perm, shared_perm, errp);
        if (ret < 0) {
            return ret;
        }
    }
    blk->perm = perm;
    blk->shared_perm = shared_perm;
    return 0;
}

void blk_get_perm(BlockBackend *blk, uint64_t *perm, uint64_t *shared)
{
    *perm = blk->perm;
    *shared = blk->shared_perm;
}

void blk_set_disable_request_queuing(BlockBackend *blk, bool disable)
{
    blk->disable_request_queuing = disable;
}

void blk_set_dev_ops(BlockBackend *blk, const BlockDevOps *ops, void *opaque)
{
    blk->dev_ops = ops;
    blk->dev_opaque = opaque;
}

int64_t blk_getlength(BlockBackend *blk)
{
    if (!blk->root) {
        return -ENOMEDIUM;
    }
    return bdrv_getlength(blk->root->bs);
}

bool blk_is_writable(BlockBackend *blk)
{
    return blk->perm & BLK_PERM_WRITE;
}

/* ---- requests ---- */

static void blk_inc_in_flight(BlockBackend *blk)
{
    blk->in_flight++;
}

static void blk_dec_in_flight(BlockBackend *blk)
{
    if (blk->in_flight > 0 && --blk->in_flight == 0) {
        bdrv_wakeup();
    }
}

/* While drained, a new request waits (not counted as in flight, or the
 * drain would wait for it) unless the user asked to bypass the queue. */
static void coroutine_fn blk_wait_while_drained(BlockBackend *blk)
{
    while (blk->quiesce_counter > 0 && !blk->disable_request_queuing) {
        blk_dec_in_flight(blk);
        co_queue_wait(&blk->queued_requests, NULL);
        blk_inc_in_flight(blk);
    }
}

static int blk_check_byte_request(BlockBackend *blk, int64_t offset,
                                  int64_t bytes)
{
    if (!blk->root) {
        return -ENOMEDIUM;
    }
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    int64_t len = blk_getlength(blk);
    if (len < 0) {
        return (int)len;
    }
    /* "Request exceeds image size" */
    if (offset > len || len - offset < bytes) {
        return -EIO;
    }
    return 0;
}

typedef enum { BLK_READ, BLK_WRITE, BLK_ZEROES, BLK_DISCARD } BlkOp;

static int coroutine_fn blk_co_rw(BlockBackend *blk, BlkOp op, int64_t offset,
                                  int64_t bytes, IOVector *qiov,
                                  BdrvRequestFlags flags)
{
    blk_inc_in_flight(blk);
    blk_wait_while_drained(blk);
    int ret = blk_check_byte_request(blk, offset, bytes);
    if (ret == 0) {
        switch (op) {
        case BLK_READ:
            ret = bdrv_co_preadv(blk->root, offset, bytes, qiov, flags);
            break;
        case BLK_WRITE:
            ret = bdrv_co_pwritev(blk->root, offset, bytes, qiov, flags);
            break;
        case BLK_ZEROES:
            ret = bdrv_co_pwrite_zeroes(blk->root, offset, bytes, flags);
            break;
        case BLK_DISCARD:
            ret = bdrv_co_pdiscard(blk->root, offset, bytes);
            break;
        }
    }
    blk_dec_in_flight(blk);
    return ret;
}

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
                               IOVector *qiov, BdrvRequestFlags flags)
{
    return blk_co_rw(blk, BLK_READ, offset, bytes, qiov, flags);
}

int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset,
                                int64_t bytes, IOVector *qiov,
                                BdrvRequestFlags flags)
{
    return blk_co_rw(blk, BLK_WRITE, offset, bytes, qiov, flags);
}

int coroutine_fn blk_co_pread(BlockBackend *blk, int64_t offset, int64_t bytes,
                              void *buf, BdrvRequestFlags flags)
{
    IOVector q;
    if (bytes < 0) {
        return -EIO;
    }
    qiov_init_buf(&q, buf, bytes);
    return blk_co_preadv(blk, offset, bytes, &q, flags);
}

int coroutine_fn blk_co_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
                               const void *buf, BdrvRequestFlags flags)
{
    IOVector q;
    if (bytes < 0) {
        return -EIO;
    }
    qiov_init_buf(&q, (void *)buf, bytes);
    return blk_co_pwritev(blk, offset, bytes, &q, flags);
}

int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags)
{
    return blk_co_rw(blk, BLK_ZEROES, offset, bytes, NULL, flags);
}

int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset,
                                 int64_t bytes)
{
    return blk_co_rw(blk, BLK_DISCARD, offset, bytes, NULL, 0);
}

int coroutine_fn blk_co_flush(BlockBackend *blk)
{
    blk_inc_in_flight(blk);
    blk_wait_while_drained(blk);
    int ret = blk->root ? bdrv_co_flush(blk->root->bs) : -ENOMEDIUM;
    blk_dec_in_flight(blk);
    return ret;
}

int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset, bool exact,
                                 PreallocMode prealloc, BdrvRequestFlags flags,
                                 GError **errp)
{
    if (!blk->root) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    /* Not held back while drained: resizing is done inside a drained
     * section (block_resize) by design. */
    blk_inc_in_flight(blk);
    int ret = bdrv_co_truncate(blk->root, offset, exact, prealloc, flags, errp);
    blk_dec_in_flight(blk);
    return ret;
}

int coroutine_fn blk_co_block_status(BlockBackend *blk, int64_t offset,
                                     int64_t bytes, int64_t *pnum)
{
    *pnum = 0;
    if (!blk->root) {
        return -ENOMEDIUM;
    }
    blk_inc_in_flight(blk);
    blk_wait_while_drained(blk);
    int ret = bdrv_co_block_status_above(blk->root->bs, NULL, offset, bytes,
                                         pnum, NULL, NULL);
    blk_dec_in_flight(blk);
    return ret;
}
