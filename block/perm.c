/*
 * Permissions: each edge carries what its parent holds on the child (perm)
 * and what it lets others hold (shared).  Changing them is a transaction
 * over the child's subtree: every node's cumulative permissions are
 * recomputed from its parents, checked against each other parent, against
 * read-only state and by the driver (the file driver takes its locks
 * there), and passed down to its children; then everything commits or
 * everything is rolled back.
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "util/transaction.h"

/* From block.c: the perms parent needs on edge c. */
void bdrv_child_perm_of(BlockDriverState *parent, BdrvChild *c, uint64_t *nperm,
                        uint64_t *nshared);

char *bdrv_perm_names(uint64_t perm)
{
    static const struct {
        uint64_t bit;
        const char *name;
    } names[] = {
        {BLK_PERM_CONSISTENT_READ, "consistent read"},
        {BLK_PERM_WRITE, "write"},
        {BLK_PERM_WRITE_UNCHANGED, "write unchanged"},
        {BLK_PERM_RESIZE, "resize"},
    };
    GString *s = g_string_new(NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        if (perm & names[i].bit) {
            g_string_append_printf(s, "%s%s", s->len ? ", " : "",
                                   names[i].name);
        }
    }
    return g_string_free(s, FALSE);
}

/* ---- default permissions (QEMU's documented rules) ---- */

/* What a filter passes through; everything else is shared unchanged. */
#define PERM_PASSTHROUGH                                                       \
    (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED |    \
     BLK_PERM_RESIZE)
#define PERM_UNCHANGED (BLK_PERM_ALL & ~PERM_PASSTHROUGH)

void bdrv_filter_default_perms(BlockDriverState *bs, BdrvChild *c,
                               BdrvChildRole role, uint64_t perm,
                               uint64_t shared, uint64_t *nperm,
                               uint64_t *nshared)
{
    *nperm = perm & PERM_PASSTHROUGH;
    *nshared = (shared & PERM_PASSTHROUGH) | PERM_UNCHANGED;
}

static void default_perms_for_cow(BlockDriverState *bs, BdrvChild *c,
                                  BdrvChildRole role, uint64_t perm,
                                  uint64_t shared, uint64_t *nperm,
                                  uint64_t *nshared)
{
    /* A backing file is only read, and only consistently if the parent
     * needs that.  If the parent copes with changing data, others may
     * write and resize it. */
    perm &= BLK_PERM_CONSISTENT_READ;
    shared = (shared & BLK_PERM_WRITE) ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0;
    shared |= BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
    if (bs->open_flags & BDRV_O_INACTIVE) {
        shared |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
    }
    *nperm = perm;
    *nshared = shared;
}

static void default_perms_for_storage(BlockDriverState *bs, BdrvChild *c,
                                      BdrvChildRole role, uint64_t perm,
                                      uint64_t shared, uint64_t *nperm,
                                      uint64_t *nshared)
{
    bdrv_filter_default_perms(bs, c, role, perm, shared, &perm, &shared);
    if (role & BDRV_CHILD_METADATA) {
        /* A format may write its metadata even when nobody writes data,
         * needs it consistent, and cannot let others change it. */
        if (bdrv_is_writable(bs)) {
            perm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
        }
        perm |= BLK_PERM_CONSISTENT_READ;
        shared &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
    if (role & BDRV_CHILD_DATA) {
        /* The format may assume the size (metadata, fixed layouts). */
        shared &= ~BLK_PERM_RESIZE;
        /* Unchanged guest data may still mean changed data-file bytes
         * (copy-on-read into new clusters). */
        if (perm & BLK_PERM_WRITE_UNCHANGED) {
            perm |= BLK_PERM_WRITE;
        }
        /* Writes may extend the data file past its end. */
        if (perm & BLK_PERM_WRITE) {
            perm |= BLK_PERM_RESIZE;
        }
    }
    if (bs->open_flags & BDRV_O_INACTIVE) {
        shared |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
    }
    *nperm = perm;
    *nshared = shared;
}

void bdrv_default_perms(BlockDriverState *bs, BdrvChild *c, BdrvChildRole role,
                        uint64_t perm, uint64_t shared, uint64_t *nperm,
                        uint64_t *nshared)
{
    if (role & BDRV_CHILD_FILTERED) {
        bdrv_filter_default_perms(bs, c, role, perm, shared, nperm, nshared);
    } else if (role & BDRV_CHILD_COW) {
        default_perms_for_cow(bs, c, role, perm, shared, nperm, nshared);
    } else if (role & (BDRV_CHILD_METADATA | BDRV_CHILD_DATA)) {
        default_perms_for_storage(bs, c, role, perm, shared, nperm, nshared);
    } else {
        /* No role we know: pass through like a filter. */
        bdrv_filter_default_perms(bs, c, role, perm, shared, nperm, nshared);
    }
}

/* ---- transaction actions ---- */

typedef struct EdgePermUndo {
    BdrvChild *c;
    uint64_t perm, shared;
} EdgePermUndo;

static void edge_perm_abort(void *opaque)
{
    EdgePermUndo *u = opaque;
    u->c->perm = u->perm;
    u->c->shared_perm = u->shared;
}

static const TransactionActionDrv edge_perm_drv = {
    .abort = edge_perm_abort,
    .clean = g_free,
};

static void edge_set_perm(BdrvChild *c, uint64_t perm, uint64_t shared,
                          Transaction *tran)
{
    EdgePermUndo *u = g_new(EdgePermUndo, 1);
    u->c = c;
    u->perm = c->perm;
    u->shared = c->shared_perm;
    tran_add(tran, &edge_perm_drv, u);
    c->perm = perm;
    c->shared_perm = shared;
}

typedef struct NodePermUndo {
    BlockDriverState *bs;
    uint64_t perm, shared;
    bool drv_checked; /* the driver's check_perm succeeded */
} NodePermUndo;

static void node_perm_commit(void *opaque)
{
    NodePermUndo *u = opaque;
    BlockDriverState *bs = u->bs;
    if (u->drv_checked && bs->drv && bs->drv->bdrv_set_perm) {
        bs->drv->bdrv_set_perm(bs, bs->perm, bs->shared_perm);
    }
}

static void node_perm_abort(void *opaque)
{
    NodePermUndo *u = opaque;
    BlockDriverState *bs = u->bs;
    if (u->drv_checked && bs->drv && bs->drv->bdrv_abort_perm_update) {
        bs->drv->bdrv_abort_perm_update(bs);
    }
    bs->perm = u->perm;
    bs->shared_perm = u->shared;
}

static const TransactionActionDrv node_perm_drv = {
    .commit = node_perm_commit,
    .abort = node_perm_abort,
    .clean = g_free,
};

/* ---- the update ---- */

static void topo_visit(BlockDriverState *bs, GHashTable *seen, GPtrArray *post)
{
    if (g_hash_table_contains(seen, bs)) {
        return;
    }
    g_hash_table_add(seen, bs);
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        topo_visit(c->bs, seen, post);
    }
    g_ptr_array_add(post, bs);
}

/* b may hold its perms only if a lets it; the message is QEMU's. */
static bool a_allows_b(BdrvChild *a, BdrvChild *b, GError **errp)
{
    uint64_t denied = b->perm & ~a->shared_perm;
    if (!denied) {
        return true;
    }
    const char *node = b->bs->node_name;
    g_autofree char *a_user = bdrv_child_user_desc(a);
    g_autofree char *b_user = bdrv_child_user_desc(b);
    g_autofree char *perms = bdrv_perm_names(denied);
    error_setg(errp,
               "Permission conflict on node '%s': permissions '%s' are both "
               "required by %s (uses node '%s' as '%s' child) and unshared "
               "by %s (uses node '%s' as '%s' child).",
               node, perms, b_user, node, b->name, a_user, node, a->name);
    return false;
}

static bool parents_conflict(BlockDriverState *bs, GError **errp)
{
    BdrvChild *a, *b;
    LIST_FOREACH (a, &bs->parents, next_parent) {
        LIST_FOREACH (b, &bs->parents, next_parent) {
            if (a != b && !a_allows_b(a, b, errp)) {
                return true;
            }
        }
    }
    return false;
}

static int node_refresh_perm(BlockDriverState *bs, Transaction *tran,
                             GError **errp)
{
    uint64_t perm = 0, shared = BLK_PERM_ALL;
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        perm |= c->perm;
        shared &= c->shared_perm;
    }
    NodePermUndo *u = g_new0(NodePermUndo, 1);
    u->bs = bs;
    u->perm = bs->perm;
    u->shared = bs->shared_perm;
    tran_add(tran, &node_perm_drv, u);
    bs->perm = perm;
    bs->shared_perm = shared;

    if ((perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED)) &&
        !bdrv_is_writable(bs)) {
        error_setg(errp, "Block node is read-only");
        return -EPERM;
    }
    if (bs->drv && bs->drv->bdrv_check_perm) {
        int ret = bs->drv->bdrv_check_perm(bs, perm, shared, errp);
        if (ret < 0) {
            return ret;
        }
    }
    u->drv_checked = true;

    LIST_FOREACH (c, &bs->children, next) {
        uint64_t cperm, cshared;
        bdrv_child_perm_of(bs, c, &cperm, &cshared);
        edge_set_perm(c, cperm, cshared, tran);
    }
    return 0;
}

static int refresh_perms_tran(BlockDriverState *root, Transaction *tran,
                              GError **errp)
{
    GHashTable *seen = g_hash_table_new(NULL, NULL);
    GPtrArray *post = g_ptr_array_new();
    topo_visit(root, seen, post);
    int ret = 0;
    /* Reverse post-order: every node after all its parents in the set. */
    for (guint i = post->len; i-- > 0;) {
        BlockDriverState *bs = post->pdata[i];
        if (parents_conflict(bs, errp)) {
            ret = -EPERM;
            break;
        }
        ret = node_refresh_perm(bs, tran, errp);
        if (ret < 0) {
            break;
        }
    }
    g_ptr_array_free(post, TRUE);
    g_hash_table_destroy(seen);
    return ret;
}

int bdrv_refresh_perms(BlockDriverState *bs, GError **errp)
{
    Transaction *tran = tran_new();
    int ret = refresh_perms_tran(bs, tran, errp);
    tran_finalize(tran, ret);
    return ret;
}

int bdrv_child_try_set_perm(BdrvChild *c, uint64_t perm, uint64_t shared,
                            GError **errp)
{
    Transaction *tran = tran_new();
    edge_set_perm(c, perm, shared, tran);
    int ret = c->bs ? refresh_perms_tran(c->bs, tran, errp) : 0;
    tran_finalize(tran, ret);
    return ret;
}
