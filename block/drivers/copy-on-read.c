/*
 * copy-on-read filter (see copy-on-read.h).  Semantics as QEMU 7.2's:
 * without `bottom`, every read range that `file` (the top) does not
 * allocate itself is copied into it (data from the backing chain, and
 * zeroes where no layer has anything); with `bottom`, only ranges that a
 * layer between the top's backing and bottom (included) allocates.
 * Writes, write-zeroes, discards and flushes pass through unchanged.
 *
 * A copy reads whole clusters of the top into a bounce buffer and writes
 * them back with BDRV_REQ_WRITE_UNCHANGED (zero buffers as write-zeroes,
 * so the top gets zero clusters, as QEMU does).  A copy must not overtake
 * a guest write of the same cluster (it would write stale data over it),
 * so the filter serialises its own requests: a copy waits for every older
 * overlapping request, a write for every older overlapping copy.
 * BDRV_REQ_PREFETCH (block-stream) copies without returning data.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/copy-on-read.h"
#include "util/error.h"

/* Largest piece copied through one bounce buffer. */
#define COR_MAX_BOUNCE (1 * 1024 * 1024)
/* Bounce buffers kept for reuse (as many as block-stream has copies in
 * flight): a fresh one per copy costs a mapping and its page faults. */
#define COR_BOUNCE_POOL 4

/* A request of the filter that copies or writes, for serialisation. */
typedef struct CorReq {
    int64_t start, end;
    bool is_copy;
    CoQueue waiters;
} CorReq;

typedef struct BDRVCorState {
    BlockDriverState *bottom; /* referenced; NULL: the whole chain */
    char *holder;             /* who holds the chain (in error messages) */
    GSList *held;             /* BdrvChild *: edges whose counter we raised */
    int64_t cluster_size;     /* of the top: copy granularity (0: none) */
    GQueue reqs;              /* CorReq *, oldest first */
    /* see bdrv_cor_filter_set_read_hook() */
    BdrvCorReadHook *read_hook;
    void *read_hook_opaque;
    /* free COR_MAX_BOUNCE buffers, bounce_pooled of them */
    GSList *bounce_pool;
    unsigned bounce_pooled;
} BDRVCorState;

/* ---- chain holding: the layers down to bottom must stay put ---- */

static void cor_hold_chain(BlockDriverState *bs)
{
    BDRVCorState *s = bs->opaque;
    if (!s->bottom) {
        return; /* as QEMU: nothing to keep in place without a bottom */
    }
    for (BlockDriverState *p = bs; p;) {
        BdrvChild *c = bdrv_filter_or_cow_child(p);
        if (!c) {
            break;
        }
        bdrv_child_graph_mod_inc(c, s->holder);
        s->held = g_slist_prepend(s->held, c);
        if (c->bs == s->bottom) {
            break;
        }
        p = c->bs;
    }
}

static void cor_release_chain(BlockDriverState *bs)
{
    BDRVCorState *s = bs->opaque;
    for (GSList *l = s->held; l; l = l->next) {
        bdrv_child_graph_mod_dec(l->data);
    }
    g_slist_free(s->held);
    s->held = NULL;
}

/* ---- open / close ---- */

static void cor_close(BlockDriverState *bs);

static int coroutine_fn cor_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    BDRVCorState *s = bs->opaque;
    const BlockdevOptionsCor *o = &opts->u.copy_on_read;
    int ret = -EINVAL;

    g_queue_init(&s->reqs);
    s->holder = g_strdup("copy-on-read");
    bs->file = bdrv_open_child(bs, o->file, "file",
                               BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                               false, errp);
    if (!bs->file) {
        goto fail;
    }
    BlockDriverState *top = bs->file->bs;
    int64_t len = bdrv_getlength(top);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the image size");
        ret = (int)len;
        goto fail;
    }
    bs->total_bytes = len;
    bs->supported_write_flags =
        BDRV_REQ_WRITE_UNCHANGED | (BDRV_REQ_FUA & top->supported_write_flags);
    bs->supported_zero_flags =
        BDRV_REQ_WRITE_UNCHANGED |
        ((BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK) &
         top->supported_zero_flags);

    if (o->has_bottom) {
        BlockDriverState *bottom = bdrv_find_node(o->bottom);
        if (!bottom) {
            error_setg(errp, "Bottom node '%s' not found", o->bottom);
            goto fail;
        }
        if (!bottom->drv) {
            error_setg(errp, "Bottom node '%s' not opened", o->bottom);
            goto fail;
        }
        if (bottom->drv->is_filter) {
            error_setg(errp, "Bottom node '%s' is a filter", o->bottom);
            goto fail;
        }
        bdrv_ref(bottom);
        s->bottom = bottom;
    }

    int64_t cs = 0;
    bool dirty;
    if (bdrv_co_get_bdi(top, &cs, &dirty, NULL) < 0 || cs < 0 ||
        (cs & (cs - 1))) {
        cs = 0; /* no clusters to round to */
    }
    s->cluster_size = cs;
    cor_hold_chain(bs);
    return 0;

fail:
    /* The core does not close a node whose open failed. */
    cor_close(bs);
    return ret;
}

static void cor_close(BlockDriverState *bs)
{
    BDRVCorState *s = bs->opaque;
    /* The core detaches our children next: they must be free to go. */
    cor_release_chain(bs);
    if (s->bottom) {
        bdrv_unref(s->bottom);
        s->bottom = NULL;
    }
    g_free(s->holder);
    s->holder = NULL;
    g_slist_free_full(s->bounce_pool, blk_vfree);
    s->bounce_pool = NULL;
    s->bounce_pooled = 0;
}

/* ---- serialisation of copies against writes ---- */

static void coroutine_fn req_begin(BDRVCorState *s, CorReq *r, int64_t start,
                                   int64_t end, bool is_copy)
{
    r->start = start;
    r->end = end;
    r->is_copy = is_copy;
    co_queue_init(&r->waiters);
    /* Only requests older than us can make us wait: no cycles. */
    for (;;) {
        CorReq *busy = NULL;
        for (GList *l = s->reqs.head; l; l = l->next) {
            CorReq *o = l->data;
            if ((is_copy || o->is_copy) && o->start < end && start < o->end) {
                busy = o;
                break;
            }
        }
        if (!busy) {
            break;
        }
        co_queue_wait(&busy->waiters, NULL);
    }
    g_queue_push_tail(&s->reqs, r);
}

static void req_end(BDRVCorState *s, CorReq *r)
{
    g_queue_remove(&s->reqs, r);
    co_queue_restart_all(&r->waiters);
}

/* ---- reads ---- */

/* The node below which the copy stops (exclusive), or NULL for the whole
 * chain.  A bottom that is not below the top (QEMU lets it be the top
 * itself) does not limit anything. */
static BlockDriverState *cor_limit(BDRVCorState *s, BlockDriverState *top)
{
    if (!s->bottom) {
        return NULL;
    }
    for (BlockDriverState *p = bdrv_child_bs(bdrv_filter_or_cow_child(top)); p;
         p = bdrv_child_bs(bdrv_filter_or_cow_child(p))) {
        if (p == s->bottom) {
            return bdrv_child_bs(bdrv_filter_or_cow_child(p));
        }
    }
    return NULL;
}

static void *bounce_get(BDRVCorState *s)
{
    if (s->bounce_pool) {
        void *b = s->bounce_pool->data;
        s->bounce_pool = g_slist_delete_link(s->bounce_pool, s->bounce_pool);
        s->bounce_pooled--;
        return b;
    }
    return blk_memalign(4096, COR_MAX_BOUNCE);
}

static void bounce_put(BDRVCorState *s, void *b)
{
    if (!b) {
        return;
    }
    if (s->bounce_pooled >= COR_BOUNCE_POOL) {
        blk_vfree(b);
        return;
    }
    s->bounce_pool = g_slist_prepend(s->bounce_pool, b);
    s->bounce_pooled++;
}

/*
 * Copy [offset, offset+bytes) of the top into itself where it is not
 * allocated there, a whole number of clusters, and fill the matching part
 * of qiov (from qoff) unless prefetching.
 */
static int coroutine_fn cor_copy(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, IOVector *qiov, size_t qoff,
                                 BdrvRequestFlags flags)
{
    BDRVCorState *s = bs->opaque;
    BdrvChild *file = bs->file;
    BlockDriverState *top = file->bs;
    bool prefetch = flags & BDRV_REQ_PREFETCH;
    int64_t cs = s->cluster_size;
    int64_t start = cs ? offset / cs * cs : offset;
    int64_t end = offset + bytes;
    if (cs) {
        end = (end + cs - 1) / cs * cs;
    }
    int64_t len = bdrv_getlength(top);
    if (len < 0) {
        return (int)len;
    }
    end = MIN(end, len);
    CorReq req;
    void *bounce = NULL;
    int ret = 0;

    req_begin(s, &req, start, end, true);
    for (int64_t pos = start; pos < end;) {
        int64_t pnum;
        int64_t want = MIN(end - pos, (int64_t)COR_MAX_BOUNCE);
        int alloc = bdrv_co_is_allocated(top, pos, want, &pnum);
        if (alloc < 0 || pnum <= 0) {
            /* As QEMU: an unknown status is copied (a real error shows
             * again in the read). */
            alloc = 0;
            pnum = want;
        }
        pnum = MIN(pnum, want);
        /* the part of [pos, pos+pnum) the caller asked for */
        int64_t ustart = MAX(pos, offset);
        int64_t uend = MIN(pos + pnum, offset + bytes);

        if (alloc) {
            if (!prefetch && uend > ustart) {
                IOVector part;
                qiov_init(&part, qiov->niov);
                qiov_concat(&part, qiov, qoff + (size_t)(ustart - offset),
                            (size_t)(uend - ustart));
                ret = bdrv_co_preadv(file, ustart, uend - ustart, &part, 0);
                qiov_destroy(&part);
            }
        } else {
            if (!bounce) {
                bounce = bounce_get(s);
            }
            if (prefetch && s->read_hook) {
                s->read_hook(s->read_hook_opaque, pos, pnum, false);
            }
            ret = bdrv_co_pread(file, pos, pnum, bounce, 0);
            if (ret == 0 && prefetch && s->read_hook &&
                !s->read_hook(s->read_hook_opaque, pos, pnum, true)) {
                ret = -ECANCELED; /* the job takes this range again */
            }
            if (ret == 0) {
                BLKDBG_EVENT(file, BLKDBG_COR_WRITE);
                if (top->drv->bdrv_co_pwrite_zeroes &&
                    buffer_is_zero(bounce, (size_t)pnum)) {
                    ret = bdrv_co_pwrite_zeroes(file, pos, pnum,
                                                BDRV_REQ_WRITE_UNCHANGED);
                } else {
                    ret = bdrv_co_pwrite(file, pos, pnum, bounce,
                                         BDRV_REQ_WRITE_UNCHANGED);
                }
            }
            if (ret == 0 && !prefetch && uend > ustart) {
                qiov_from_buf(qiov, qoff + (size_t)(ustart - offset),
                              (char *)bounce + (ustart - pos),
                              (size_t)(uend - ustart));
            }
        }
        if (ret < 0) {
            break;
        }
        pos += pnum;
    }
    req_end(s, &req);
    bounce_put(s, bounce);
    return ret;
}

static int coroutine_fn cor_co_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, IOVector *qiov,
                                      BdrvRequestFlags flags)
{
    BDRVCorState *s = bs->opaque;
    BdrvChild *file = bs->file;
    BlockDriverState *top = file->bs;
    BlockDriverState *limit = cor_limit(s, top);
    BlockDriverState *below = bdrv_child_bs(bdrv_filter_or_cow_child(top));
    bool prefetch = flags & BDRV_REQ_PREFETCH;
    size_t qoff = 0;

    flags &= ~BDRV_REQ_PREFETCH;
    while (bytes > 0) {
        int64_t n;
        bool copy;
        int ret = bdrv_co_is_allocated(top, offset, bytes, &n);
        if (ret < 0 || n <= 0) {
            ret = -1; /* unknown: copy, as QEMU */
            n = bytes;
        }
        n = MIN(n, bytes);
        if (ret == 1) {
            copy = false;
        } else if (!s->bottom) {
            copy = true;
        } else if (ret < 0) {
            copy = true;
        } else if (!below) {
            copy = false;
        } else {
            int64_t m;
            int st = bdrv_co_block_status_above(below, limit, offset, n, &m,
                                                NULL, NULL);
            if (st < 0 || m <= 0) {
                copy = true;
            } else {
                copy = st & BDRV_BLOCK_ALLOCATED;
                n = MIN(m, n);
            }
        }

        if (copy) {
            ret = cor_copy(bs, offset, n, qiov, qoff,
                           flags | (prefetch ? BDRV_REQ_PREFETCH : 0));
        } else if (!prefetch) {
            IOVector part;
            qiov_init(&part, qiov->niov);
            qiov_concat(&part, qiov, qoff, (size_t)n);
            ret = bdrv_co_preadv(file, offset, n, &part, flags);
            qiov_destroy(&part);
        } else {
            ret = 0;
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += (size_t)n;
        bytes -= n;
    }
    return 0;
}

void bdrv_cor_filter_set_read_hook(BlockDriverState *cor, BdrvCorReadHook *fn,
                                   void *opaque)
{
    BDRVCorState *s = cor->opaque;
    s->read_hook = fn;
    s->read_hook_opaque = fn ? opaque : NULL;
}

/* ---- writes: pass through, in order with the copies ---- */

static int coroutine_fn cor_co_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       BdrvRequestFlags flags)
{
    BDRVCorState *s = bs->opaque;
    CorReq req;
    req_begin(s, &req, offset, offset + bytes, false);
    int ret = bdrv_co_pwritev(bs->file, offset, bytes, qiov, flags);
    req_end(s, &req);
    return ret;
}

static int coroutine_fn cor_co_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    BDRVCorState *s = bs->opaque;
    CorReq req;
    req_begin(s, &req, offset, offset + bytes, false);
    int ret = bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
    req_end(s, &req);
    return ret;
}

static int coroutine_fn cor_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    BDRVCorState *s = bs->opaque;
    CorReq req;
    req_begin(s, &req, offset, offset + bytes, false);
    int ret = bdrv_co_pdiscard(bs->file, offset, bytes);
    req_end(s, &req);
    return ret;
}

/* ---- permissions ---- */

static void cor_child_perm(BlockDriverState *bs, BdrvChild *c,
                           BdrvChildRole role, uint64_t perm, uint64_t shared,
                           uint64_t *nperm, uint64_t *nshared)
{
    /* What the parents want and share, passed down... */
    bdrv_filter_default_perms(bs, c, role, perm, shared, nperm, nshared);
    /* ...plus writing unchanged data for the copies (not on an inactive
     * node, which cannot give it). */
    if (!(bs->open_flags & BDRV_O_INACTIVE)) {
        *nperm |= BLK_PERM_WRITE_UNCHANGED;
    }
}

const BlockDriver bdrv_cor = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "copy-on-read",
    .driver = BLOCKDEV_DRIVER_COPY_ON_READ,
    .instance_size = sizeof(BDRVCorState),
    .is_filter = true,
    .bdrv_open = cor_open,
    .bdrv_close = cor_close,
    .bdrv_co_preadv = cor_co_preadv,
    .bdrv_co_pwritev = cor_co_pwritev,
    .bdrv_co_pwrite_zeroes = cor_co_pwrite_zeroes,
    .bdrv_co_pdiscard = cor_co_pdiscard,
    .bdrv_child_perm = cor_child_perm,
};

/* ---- insertion by block-stream ---- */

BlockDriverState *coroutine_fn bdrv_cor_filter_append(
    BlockDriverState *top, BlockDriverState *bottom,
    const char *filter_node_name, const char *holder, GError **errp)
{
    if (filter_node_name && bdrv_find_node(filter_node_name)) {
        error_setg(errp,
                   "Could not create node: Duplicate nodes with node-name='%s'",
                   filter_node_name);
        return NULL;
    }
    BlockdevOptions *opts = g_new0(BlockdevOptions, 1);
    opts->driver = BLOCKDEV_DRIVER_COPY_ON_READ;
    if (filter_node_name) {
        opts->has_node_name = true;
        opts->node_name = g_strdup(filter_node_name);
    }
    BlockdevOptionsCor *o = &opts->u.copy_on_read;
    o->file = g_new0(BlockdevRef, 1);
    o->file->type = QTYPE_QSTRING;
    o->file->u.reference = g_strdup(bdrv_get_node_name(top));
    if (bottom) {
        o->has_bottom = true;
        o->bottom = g_strdup(bdrv_get_node_name(bottom));
    }
    GError *err = NULL;
    BlockDriverState *cor = bdrv_co_open(opts, &err);
    qapi_free_BlockdevOptions(opts);
    if (!cor) {
        error_propagate(errp, err);
        error_prepend(errp, "Could not create node: ");
        return NULL;
    }
    cor->implicit = !filter_node_name;
    if (cor->implicit) {
        /* As QEMU: an implicit node is named like its only child. */
        g_strlcpy(cor->filename, top->filename, sizeof(cor->filename));
    }
    if (holder) {
        BDRVCorState *s = cor->opaque;
        cor_release_chain(cor);
        g_free(s->holder);
        s->holder = g_strdup(holder);
        cor_hold_chain(cor);
    }
    return bdrv_insert_filter(cor, top, NULL, errp);
}

void bdrv_cor_filter_drop(BlockDriverState *cor)
{
    bdrv_ref(cor);
    bdrv_drained_begin(cor);
    /* The chain is free again before anything moves. */
    cor_release_chain(cor);
    bdrv_remove_filter(cor, "copy-on-read");
    bdrv_drained_end(cor);
    bdrv_unref(cor);
    bdrv_unref(cor);
}
