/*
 * The block graph core: the node registry, opening and closing nodes,
 * reference counts, edges (children), and graph changes.
 *
 * Permissions live in perm.c, the request path and drain in io.c.
 */
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "block/block_int.h"
#include "util/aio.h"
#include "util/keyval.h"

/* Every open node, in the order it finished opening (children that a
 * driver opens inline finish before their parent, as in QEMU). */
static GPtrArray *all_nodes;
/* Nodes created by blockdev-add, in creation order. */
static GPtrArray *monitor_nodes;
/* Node names in use: registered nodes and nodes still opening. */
static GHashTable *reserved_names;
/* Nodes opened with a `file` whose generic checks and name wait for that
 * child (node -> user's node-name or NULL). */
static GHashTable *setup_pending;
static int64_t node_seq_counter;
static uint64_t generated_name_counter;

const BdrvDirtyBitmapHooks *bdrv_dirty_bitmap_hooks;

static void registry_init(void)
{
    if (!all_nodes) {
        all_nodes = g_ptr_array_new();
        monitor_nodes = g_ptr_array_new();
        reserved_names =
            g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        setup_pending = g_hash_table_new_full(NULL, NULL, NULL, g_free);
    }
}

/* ---- names and lookup ---- */

BlockDriverState *bdrv_find_node(const char *node_name)
{
    if (!all_nodes || !node_name) {
        return NULL;
    }
    for (guint i = 0; i < all_nodes->len; i++) {
        BlockDriverState *bs = all_nodes->pdata[i];
        if (!strcmp(bs->node_name, node_name)) {
            return bs;
        }
    }
    return NULL;
}

static BlockDriverState *next_in(GPtrArray *arr, BlockDriverState *prev)
{
    if (!arr || arr->len == 0) {
        return NULL;
    }
    if (!prev) {
        return arr->pdata[0];
    }
    guint idx;
    if (!g_ptr_array_find(arr, prev, &idx) || idx + 1 >= arr->len) {
        return NULL;
    }
    return arr->pdata[idx + 1];
}

BlockDriverState *bdrv_next_node(BlockDriverState *prev)
{
    return next_in(all_nodes, prev);
}

BlockDriverState *bdrv_next_monitor_owned(BlockDriverState *prev)
{
    return next_in(monitor_nodes, prev);
}

BlockDriverState *bdrv_lookup_bs(const char *device, const char *node_name,
                                 GError **errp)
{
    /* There are no named BlockBackends (guest devices) in a storage
     * daemon, so `device` never matches. */
    if (node_name) {
        BlockDriverState *bs = bdrv_find_node(node_name);
        if (bs) {
            return bs;
        }
    }
    error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
               device ? device : "", node_name ? node_name : "");
    return NULL;
}

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static bool id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

bool bdrv_node_name_valid(const char *name, GError **errp)
{
    if (!id_wellformed(name)) {
        error_setg(errp, "Invalid node-name: '%s'", name);
        return false;
    }
    if (strlen(name) >= sizeof(((BlockDriverState *)0)->node_name)) {
        error_setg(errp, "Node name too long");
        return false;
    }
    return true;
}

/* Check and reserve a user-given name, in QEMU's order of checks. */
static bool reserve_node_name(const char *name, GError **errp)
{
    if (!id_wellformed(name)) {
        error_setg(errp, "Invalid node-name: '%s'", name);
        return false;
    }
    if (g_hash_table_contains(reserved_names, name)) {
        error_setg(errp, "Duplicate nodes with node-name='%s'", name);
        return false;
    }
    if (strlen(name) >= sizeof(((BlockDriverState *)0)->node_name)) {
        error_setg(errp, "Node name too long");
        return false;
    }
    g_hash_table_add(reserved_names, g_strdup(name));
    return true;
}

/* "#block" + a counter + two random digits, the shape of QEMU's
 * generated ids; the '#' keeps them out of the user's namespace. */
static void generate_node_name(char *buf, size_t len)
{
    do {
        snprintf(buf, len, "#block%" PRIu64 "%02d", generated_name_counter++,
                 g_random_int_range(0, 100));
    } while (g_hash_table_contains(reserved_names, buf));
    g_hash_table_add(reserved_names, g_strdup(buf));
}

const char *bdrv_get_node_name(const BlockDriverState *bs)
{
    return bs->node_name;
}

const char *bdrv_get_format_name(const BlockDriverState *bs)
{
    return bs->drv ? bs->drv->format_name : NULL;
}

bool bdrv_is_read_only(const BlockDriverState *bs)
{
    return bs->read_only;
}

bool bdrv_is_writable(const BlockDriverState *bs)
{
    return !bs->read_only && !(bs->open_flags & BDRV_O_INACTIVE);
}

int64_t bdrv_getlength(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    /* QEMU keeps sizes in sectors, rounding up: a 4097-byte file is a
     * 4608-byte node.  Reads past the real end return zeroes. */
    return (bs->total_bytes + BDRV_SECTOR_SIZE - 1) &
           ~(int64_t)(BDRV_SECTOR_SIZE - 1);
}

int64_t coroutine_fn bdrv_co_get_allocated_file_size(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    if (bs->drv->bdrv_co_get_allocated_file_size) {
        return bs->drv->bdrv_co_get_allocated_file_size(bs);
    }
    if (LIST_EMPTY(&bs->children)) {
        return -ENOTSUP;
    }
    if (bs->drv->is_filter) {
        BdrvChild *f = bdrv_filter_or_cow_child(bs);
        return f ? bdrv_co_get_allocated_file_size(f->bs) : -ENOTSUP;
    }
    /* A format's data lives in its storage children (not its backing). */
    int64_t sum = 0;
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (c->role &
            (BDRV_CHILD_DATA | BDRV_CHILD_METADATA | BDRV_CHILD_FILTERED)) {
            int64_t n = bdrv_co_get_allocated_file_size(c->bs);
            if (n < 0) {
                return n;
            }
            sum += n;
        }
    }
    return sum;
}

/* ---- edges ---- */

BlockDriverState *bdrv_child_bs(const BdrvChild *c)
{
    return c ? c->bs : NULL;
}

BdrvChild *bdrv_filter_or_cow_child(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return NULL;
    }
    if (bs->drv->is_filter) {
        BdrvChild *c;
        LIST_FOREACH (c, &bs->children, next) {
            if (c->role & BDRV_CHILD_FILTERED) {
                return c;
            }
        }
        return bs->file ? bs->file : bs->backing;
    }
    return bs->backing;
}

BlockDriverState *bdrv_backing_bs(BlockDriverState *bs)
{
    return bs && bs->backing ? bs->backing->bs : NULL;
}

BlockDriverState *bdrv_skip_filters(BlockDriverState *bs)
{
    while (bs && bs->drv && bs->drv->is_filter) {
        BdrvChild *c = bdrv_filter_or_cow_child(bs);
        if (!c) {
            break;
        }
        bs = c->bs;
    }
    return bs;
}

BlockDriverState *bdrv_skip_implicit_filters(BlockDriverState *bs)
{
    while (bs && bs->implicit && bs->drv && bs->drv->is_filter) {
        bs = bdrv_child_bs(bdrv_filter_or_cow_child(bs));
    }
    return bs;
}

bool bdrv_chain_contains(BlockDriverState *top, BlockDriverState *bs)
{
    while (top && top != bs) {
        top = bdrv_child_bs(bdrv_filter_or_cow_child(top));
    }
    return top != NULL;
}

const char *bdrv_probe_format(const char *filename)
{
    const char *fmt = "raw";
    int fd = open(filename, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        uint8_t m[4];
        if (pread(fd, m, sizeof(m), 0) == (ssize_t)sizeof(m) &&
            !memcmp(m, "QFI\xfb", 4)) {
            fmt = "qcow2";
        }
        close(fd);
    }
    return fmt;
}

char *bdrv_child_user_desc(const BdrvChild *c)
{
    if (c->klass && c->klass->get_parent_desc) {
        return c->klass->get_parent_desc((BdrvChild *)c);
    }
    return g_strdup("another user");
}

static char *bds_get_parent_desc(BdrvChild *c)
{
    BlockDriverState *parent = c->opaque;
    return g_strdup_printf("node '%s'", parent->node_name);
}

static void bdrv_quiesce(BlockDriverState *bs);
static void bdrv_unquiesce(BlockDriverState *bs);
bool bdrv_drain_poll_node(BlockDriverState *bs);

static void bds_drained_begin(BdrvChild *c)
{
    bdrv_quiesce(c->opaque);
}

static void bds_drained_end(BdrvChild *c)
{
    bdrv_unquiesce(c->opaque);
}

static bool bds_drained_poll(BdrvChild *c)
{
    return bdrv_drain_poll_node(c->opaque);
}

static void bds_resize(BdrvChild *c)
{
    BlockDriverState *parent = c->opaque;
    int64_t old = parent->total_bytes;
    if (parent->drv && parent->drv->bdrv_child_resized) {
        parent->drv->bdrv_child_resized(parent, c);
    }
    if (parent->total_bytes != old) {
        bdrv_parent_cb_resize(parent);
    }
}

static const BdrvChildClass child_of_bds = {
    .parent_is_bds = true,
    .get_parent_desc = bds_get_parent_desc,
    .drained_begin = bds_drained_begin,
    .drained_end = bds_drained_end,
    .drained_poll = bds_drained_poll,
    .resize = bds_resize,
};

void bdrv_parent_cb_resize(BlockDriverState *bs)
{
    BdrvChild *c, *next;
    LIST_FOREACH_SAFE (c, &bs->parents, next_parent, next) {
        if (c->klass->resize) {
            c->klass->resize(c);
        }
    }
}

/*
 * Drain bookkeeping for edges: a parent that is attached below a drained
 * node must see the drain; one that is detached must see its end.
 */
void bdrv_quiesce_parents(BlockDriverState *bs);
void bdrv_unquiesce_parents(BlockDriverState *bs);

static void bdrv_quiesce(BlockDriverState *bs)
{
    bs->quiesce_counter++;
    bdrv_quiesce_parents(bs);
}

static void bdrv_unquiesce(BlockDriverState *bs)
{
    if (bs->quiesce_counter > 0) {
        bs->quiesce_counter--;
        bdrv_unquiesce_parents(bs);
    }
}

void bdrv_quiesce_parents(BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        c->parent_quiesce_counter++;
        if (c->klass->drained_begin) {
            c->klass->drained_begin(c);
        }
    }
}

void bdrv_unquiesce_parents(BlockDriverState *bs)
{
    BdrvChild *c, *next;
    LIST_FOREACH_SAFE (c, &bs->parents, next_parent, next) {
        if (c->parent_quiesce_counter > 0) {
            c->parent_quiesce_counter--;
            if (c->klass->drained_end) {
                c->klass->drained_end(c);
            }
        }
    }
}

static void edge_apply_quiesce(BdrvChild *c)
{
    while (c->parent_quiesce_counter < c->bs->quiesce_counter) {
        c->parent_quiesce_counter++;
        if (c->klass->drained_begin) {
            c->klass->drained_begin(c);
        }
    }
}

static void edge_drop_quiesce(BdrvChild *c)
{
    while (c->parent_quiesce_counter > 0) {
        c->parent_quiesce_counter--;
        if (c->klass->drained_end) {
            c->klass->drained_end(c);
        }
    }
}

/* Whether `needle` is bs or below it. */
static bool bdrv_recurse_has_child(BlockDriverState *bs,
                                   BlockDriverState *needle)
{
    if (bs == needle) {
        return true;
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (bdrv_recurse_has_child(c->bs, needle)) {
            return true;
        }
    }
    return false;
}

static BdrvChild *edge_new(BlockDriverState *child, const char *name,
                           const BdrvChildClass *klass, BdrvChildRole role,
                           uint64_t perm, uint64_t shared, void *opaque)
{
    BdrvChild *c = g_new0(BdrvChild, 1);
    c->bs = child;
    c->name = g_strdup(name);
    c->klass = klass;
    c->role = role;
    c->opaque = opaque;
    c->perm = perm;
    c->shared_perm = shared;
    c->graph_mod_holders = g_ptr_array_new_with_free_func(g_free);
    return c;
}

static void edge_free(BdrvChild *c)
{
    g_ptr_array_unref(c->graph_mod_holders);
    g_free(c->name);
    g_free(c);
}

/* Link c into c->bs's parents (newest first, as QEMU lists them, which
 * decides which user a conflict message names first) and check
 * permissions; on failure unlink again. */
static int edge_link_checked(BdrvChild *c, GError **errp)
{
    LIST_INSERT_HEAD(&c->bs->parents, c, next_parent);
    if (bdrv_refresh_perms(c->bs, errp) < 0) {
        LIST_REMOVE(c, next_parent);
        return -EPERM;
    }
    bdrv_ref(c->bs);
    edge_apply_quiesce(c);
    return 0;
}

BdrvChild *bdrv_root_attach_child(BlockDriverState *child, const char *name,
                                  const BdrvChildClass *klass,
                                  BdrvChildRole role, uint64_t perm,
                                  uint64_t shared, void *opaque, GError **errp)
{
    BdrvChild *c = edge_new(child, name, klass, role, perm, shared, opaque);
    if (edge_link_checked(c, errp) < 0) {
        edge_free(c);
        return NULL;
    }
    return c;
}

/* What a node parent needs of an edge, given its own cumulative perms. */
void bdrv_child_perm_of(BlockDriverState *parent, BdrvChild *c, uint64_t *nperm,
                        uint64_t *nshared)
{
    const BlockDriver *drv = parent->drv;
    if (drv && drv->bdrv_child_perm) {
        drv->bdrv_child_perm(parent, c, c->role, parent->perm,
                             parent->shared_perm, nperm, nshared);
    } else {
        bdrv_default_perms(parent, c, c->role, parent->perm,
                           parent->shared_perm, nperm, nshared);
    }
    if (c->bs->open_flags & BDRV_O_FORCE_SHARE) {
        *nshared = BLK_PERM_ALL;
    }
}

BdrvChild *bdrv_attach_child(BlockDriverState *parent, BlockDriverState *child,
                             const char *name, BdrvChildRole role,
                             GError **errp)
{
    if (bdrv_recurse_has_child(child, parent)) {
        error_setg(errp, "Making '%s' a %s child of '%s' would create a cycle",
                   child->node_name, name, parent->node_name);
        return NULL;
    }
    BdrvChild *c =
        edge_new(child, name, &child_of_bds, role, 0, BLK_PERM_ALL, parent);
    bdrv_child_perm_of(parent, c, &c->perm, &c->shared_perm);
    if (edge_link_checked(c, errp) < 0) {
        edge_free(c);
        return NULL;
    }
    LIST_INSERT_HEAD(&parent->children, c, next);
    if (!strcmp(name, "file")) {
        parent->file = c;
    } else if (!strcmp(name, "backing")) {
        parent->backing = c;
    }
    return c;
}

/* Unlink an edge from its child and drop the reference; permissions of
 * the child are relaxed, which never fails (errors are only logged). */
static void edge_unlink_from_child(BdrvChild *c)
{
    BlockDriverState *child = c->bs;
    edge_drop_quiesce(c);
    LIST_REMOVE(c, next_parent);
    g_autoptr(GError) err = NULL;
    if (bdrv_refresh_perms(child, &err) < 0) {
        warn_report("Dropping permissions on node '%s' failed: %s",
                    child->node_name, err->message);
    }
    c->bs = NULL;
    bdrv_unref(child);
}

void bdrv_root_unref_child(BdrvChild *c)
{
    if (!c) {
        return;
    }
    edge_unlink_from_child(c);
    edge_free(c);
}

static void detach_child(BlockDriverState *parent, BdrvChild *c)
{
    LIST_REMOVE(c, next);
    if (parent->file == c) {
        parent->file = NULL;
    }
    if (parent->backing == c) {
        parent->backing = NULL;
    }
    edge_unlink_from_child(c);
    edge_free(c);
}

void bdrv_unref_child(BlockDriverState *parent, BdrvChild *c)
{
    if (!c) {
        return;
    }
    g_autoptr(GError) err = NULL;
    if (!bdrv_child_graph_mod_check(c, &err)) {
        /* Detaching an edge a job relies on would pull the graph out from
         * under it; refuse and say why. */
        error_report("%s", err->message);
        return;
    }
    detach_child(parent, c);
}

/* ---- graph-mod counters ---- */

void bdrv_child_graph_mod_inc(BdrvChild *c, const char *holder)
{
    c->graph_mod_count++;
    g_ptr_array_add(c->graph_mod_holders, g_strdup(holder ? holder : ""));
}

void bdrv_child_graph_mod_dec(BdrvChild *c)
{
    if (c->graph_mod_count <= 0) {
        return;
    }
    c->graph_mod_count--;
    if (c->graph_mod_holders->len > 0) {
        g_ptr_array_remove_index(c->graph_mod_holders,
                                 c->graph_mod_holders->len - 1);
    }
}

bool bdrv_child_graph_mod_check(const BdrvChild *c, GError **errp)
{
    if (!c || c->graph_mod_count <= 0) {
        return true;
    }
    GString *who = g_string_new(NULL);
    for (guint i = 0; i < c->graph_mod_holders->len; i++) {
        const char *h = c->graph_mod_holders->pdata[i];
        bool dup = false;
        for (guint j = 0; j < i; j++) {
            dup |= !strcmp(h, c->graph_mod_holders->pdata[j]);
        }
        if (!dup) {
            g_string_append_printf(who, "%s%s", who->len ? ", " : "", h);
        }
    }
    error_setg(errp,
               "Node '%s' is busy: block device is in use by block "
               "job: %s",
               c->bs ? c->bs->node_name : "", who->str);
    g_string_free(who, TRUE);
    return false;
}

/* ---- graph changes ---- */

int bdrv_set_backing_hd(BlockDriverState *bs, BlockDriverState *backing_bs,
                        GError **errp)
{
    BdrvChild *old = bs->backing;
    if (old && old->bs == backing_bs) {
        return 0;
    }
    if (!bdrv_child_graph_mod_check(old, errp)) {
        return -EBUSY;
    }
    if (backing_bs && bs->drv && !bs->drv->supports_backing &&
        !bs->drv->is_filter) {
        error_setg(errp,
                   "Driver '%s' of node '%s' does not support backing "
                   "files",
                   bs->drv->format_name, bs->node_name);
        return -ENOTSUP;
    }
    BdrvChildRole role = (bs->drv && bs->drv->is_filter)
                             ? BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY
                             : BDRV_CHILD_COW;
    bdrv_drained_begin(bs);
    BdrvChild *nc = NULL;
    if (backing_bs) {
        /* Attach first: if that fails the old backing stays. */
        if (bdrv_recurse_has_child(backing_bs, bs)) {
            error_setg(errp,
                       "Making '%s' a backing child of '%s' would create a "
                       "cycle",
                       backing_bs->node_name, bs->node_name);
            bdrv_drained_end(bs);
            return -EINVAL;
        }
        nc = edge_new(backing_bs, "backing", &child_of_bds, role, 0,
                      BLK_PERM_ALL, bs);
        bdrv_child_perm_of(bs, nc, &nc->perm, &nc->shared_perm);
        if (edge_link_checked(nc, errp) < 0) {
            edge_free(nc);
            bdrv_drained_end(bs);
            return -EPERM;
        }
    }
    if (old) {
        detach_child(bs, old);
    }
    if (nc) {
        LIST_INSERT_HEAD(&bs->children, nc, next);
        bs->backing = nc;
    }
    bdrv_refresh_limits(bs, NULL);
    bdrv_drained_end(bs);
    return 0;
}

int bdrv_replace_node(BlockDriverState *from, BlockDriverState *to,
                      GError **errp)
{
    if (from == to) {
        return 0;
    }
    GPtrArray *moved = g_ptr_array_new();
    BdrvChild *c;
    /* A parent that is `to` itself (a filter being inserted above or
     * removed from `from`) keeps its edge. */
    LIST_FOREACH (c, &from->parents, next_parent) {
        if (c->klass->parent_is_bds && c->opaque == to) {
            continue;
        }
        /* As QEMU (should_update_child, auto-skip): an edge of a node
         * below `to` stays, moving it would make a cycle (drive-backup
         * sync=none: the target's backing edge to the source, with the
         * target below the filter that takes the source's place). */
        if (c->klass->parent_is_bds && bdrv_recurse_has_child(to, c->opaque)) {
            continue;
        }
        if (!bdrv_child_graph_mod_check(c, errp)) {
            g_ptr_array_free(moved, TRUE);
            return -EBUSY;
        }
        g_ptr_array_add(moved, c);
    }
    bdrv_ref(from);
    bdrv_drained_begin(from);
    bdrv_drained_begin(to);
    for (guint i = 0; i < moved->len; i++) {
        c = moved->pdata[i];
        edge_drop_quiesce(c);
        LIST_REMOVE(c, next_parent);
        c->bs = to;
        LIST_INSERT_HEAD(&to->parents, c, next_parent);
        edge_apply_quiesce(c);
    }
    int ret = bdrv_refresh_perms(to, errp);
    if (ret < 0) {
        for (guint i = 0; i < moved->len; i++) {
            c = moved->pdata[i];
            edge_drop_quiesce(c);
            LIST_REMOVE(c, next_parent);
            c->bs = from;
            LIST_INSERT_HEAD(&from->parents, c, next_parent);
            edge_apply_quiesce(c);
        }
        bdrv_refresh_perms(to, NULL);
    } else {
        for (guint i = 0; i < moved->len; i++) {
            bdrv_ref(to);
        }
        g_autoptr(GError) err = NULL;
        if (bdrv_refresh_perms(from, &err) < 0) {
            warn_report("Dropping permissions on node '%s' failed: %s",
                        from->node_name, err->message);
        }
        for (guint i = 0; i < moved->len; i++) {
            c = moved->pdata[i];
            if (c->klass->parent_is_bds) {
                bdrv_refresh_limits(c->opaque, NULL);
            }
            bdrv_unref(from);
        }
    }
    bdrv_drained_end(to);
    bdrv_drained_end(from);
    bdrv_unref(from);
    g_ptr_array_free(moved, TRUE);
    return ret;
}

/* ---- limits ---- */

static void merge_limits(BlockLimits *dst, const BlockLimits *src)
{
#define MIN_NON_ZERO(a, b) ((a) == 0 ? (b) : ((b) == 0 ? (a) : MIN(a, b)))
    dst->opt_transfer = MAX(dst->opt_transfer, src->opt_transfer);
    dst->max_transfer = MIN_NON_ZERO(dst->max_transfer, src->max_transfer);
    dst->opt_mem_alignment =
        MAX(dst->opt_mem_alignment, src->opt_mem_alignment);
    dst->min_mem_alignment =
        MAX(dst->min_mem_alignment, src->min_mem_alignment);
#undef MIN_NON_ZERO
}

void bdrv_refresh_limits(BlockDriverState *bs, GError **errp)
{
    if (!bs->drv) {
        return;
    }
    memset(&bs->bl, 0, sizeof(bs->bl));
    bs->bl.request_alignment = 1;
    bool have_limits = false;
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (c->role &
            (BDRV_CHILD_DATA | BDRV_CHILD_FILTERED | BDRV_CHILD_COW)) {
            merge_limits(&bs->bl, &c->bs->bl);
            have_limits = true;
        }
    }
    if (!have_limits) {
        /* Safe defaults for protocols that use readv/writev. */
        bs->bl.min_mem_alignment = 512;
        bs->bl.opt_mem_alignment = 4096;
    }
    if (bs->drv->bdrv_refresh_limits) {
        bs->drv->bdrv_refresh_limits(bs, errp);
    }
    uint32_t a = bs->bl.request_alignment;
    if (a == 0 || (a & (a - 1))) {
        bs->bl.request_alignment = 512;
    }
}

/* ---- graph queries ---- */

const char *bdrv_backing_user(BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (c->klass->parent_is_bds && (c->role & BDRV_CHILD_COW)) {
            return ((BlockDriverState *)c->opaque)->node_name;
        }
    }
    return NULL;
}

/* ---- opening ---- */

/* The generic options a child takes from its parent unless it sets them
 * itself (QEMU's bdrv_inherited_options for blockdev-add). */
typedef struct Inherited {
    bool read_only;
    bool auto_read_only;
    bool direct;
    bool no_flush;
    bool force_share;
    bool discard_unmap;
} Inherited;

static Inherited inherited_from(BlockDriverState *parent, BdrvChildRole role)
{
    Inherited in = {0};
    if (!parent) {
        return in;
    }
    in.direct = parent->open_flags & BDRV_O_NOCACHE;
    in.no_flush = parent->open_flags & BDRV_O_NO_FLUSH;
    in.force_share = parent->open_flags & BDRV_O_FORCE_SHARE;
    if (role & BDRV_CHILD_COW) {
        /* backing files are opened read-only by default */
        in.read_only = true;
        in.auto_read_only = false;
    } else {
        in.read_only = parent->read_only;
        in.auto_read_only = parent->open_flags & BDRV_O_AUTO_RDONLY;
        /* Formats send flushes and respect their own discard policy, so
         * the layers below may pass discards on. */
        in.discard_unmap = parent->drv && parent->drv->is_format;
    }
    return in;
}

static void bdrv_free(BlockDriverState *bs)
{
    g_ptr_array_remove(all_nodes, bs);
    if (bs->dirty_bitmaps && bdrv_dirty_bitmap_hooks &&
        bdrv_dirty_bitmap_hooks->release_all) {
        bdrv_dirty_bitmap_hooks->release_all(bs);
    }
    qapi_free_BlockdevOptions(bs->options);
    g_free(bs->opaque);
    g_free(bs);
}

/* Enter bs in the registry (once).  QEMU names a node after opening its
 * `file` but before its backing file, and lists nodes in that order. */
static void registry_add(BlockDriverState *bs)
{
    if (!g_ptr_array_find(all_nodes, bs, NULL)) {
        bs->node_seq = node_seq_counter++;
        g_ptr_array_add(all_nodes, bs);
    }
}

static bool options_have_file(BlockDriverState *bs)
{
    JsonNode *all = qapi_BlockdevOptions_to_json(bs->options);
    bool has = all && JSON_NODE_HOLDS_OBJECT(all) &&
               json_object_has_member(json_node_get_object(all), "file");
    if (all) {
        json_node_unref(all);
    }
    return has;
}

/* The generic option rules, then the node-name (QEMU's order). */
static bool node_setup(BlockDriverState *bs, const char *user_name,
                       GError **errp)
{
    if ((bs->open_flags & BDRV_O_FORCE_SHARE) && !bs->read_only) {
        error_setg(errp,
                   "force-share=on can only be used with read-only images");
        return false;
    }
    if (bs->detect_zeroes == BLOCKDEV_DETECT_ZEROES_OPTIONS_UNMAP &&
        !(bs->open_flags & BDRV_O_UNMAP)) {
        error_setg(errp, "setting detect-zeroes to unmap is not allowed "
                         "without setting discard operation to unmap");
        return false;
    }
    if (user_name) {
        if (!reserve_node_name(user_name, errp)) {
            return false;
        }
        g_strlcpy(bs->node_name, user_name, sizeof(bs->node_name));
    } else {
        generate_node_name(bs->node_name, sizeof(bs->node_name));
    }
    /* Named nodes are listed from here on, as in QEMU: after their file,
     * before their backing file. */
    registry_add(bs);
    return true;
}

/* Undo a failed open: the driver's state (if its open succeeded), the
 * children it attached, the name, the node. */
static void open_failed(BlockDriverState *bs, bool drv_opened)
{
    if (drv_opened && bs->drv->bdrv_close) {
        bs->drv->bdrv_close(bs);
    }
    BdrvChild *c;
    while ((c = LIST_FIRST(&bs->children))) {
        detach_child(bs, c);
    }
    if (!g_hash_table_remove(setup_pending, bs) && bs->node_name[0]) {
        g_hash_table_remove(reserved_names, bs->node_name);
    }
    bdrv_free(bs);
}

/* A node of drv with its state allocated and nothing attached: no
 * permissions taken, all shared, byte-aligned until its limits say more. */
static BlockDriverState *node_alloc(const BlockDriver *drv)
{
    BlockDriverState *bs = g_new0(BlockDriverState, 1);
    bs->drv = drv;
    bs->opaque = g_malloc0(drv->instance_size ? drv->instance_size : 1);
    bs->refcnt = 1;
    LIST_INIT(&bs->children);
    LIST_INIT(&bs->parents);
    LIST_INIT(&bs->tracked_requests);
    co_queue_init(&bs->flush_queue);
    bs->perm = 0;
    bs->shared_perm = BLK_PERM_ALL;
    bs->bl.request_alignment = 1;
    return bs;
}

static BlockDriverState *coroutine_fn
bdrv_open_inherit(const BlockdevOptions *opts, BlockDriverState *parent,
                  BdrvChildRole role, GError **errp)
{
    registry_init();
    const BlockDriver *drv = bdrv_find_driver(opts->driver);
    if (!drv) {
        error_setg(errp, "Unknown driver: '%s'",
                   BlockdevDriver_str(opts->driver));
        return NULL;
    }
    Inherited in = inherited_from(parent, role);
    bool read_only = opts->has_read_only ? opts->read_only : in.read_only;
    bool auto_ro =
        opts->has_auto_read_only ? opts->auto_read_only : in.auto_read_only;
    bool force_share =
        opts->has_force_share ? opts->force_share : in.force_share;
    bool direct = in.direct, no_flush = in.no_flush;
    if (opts->has_cache && opts->cache) {
        if (opts->cache->has_direct) {
            direct = opts->cache->direct;
        }
        if (opts->cache->has_no_flush) {
            no_flush = opts->cache->no_flush;
        }
    }
    bool unmap = opts->has_discard
                     ? opts->discard == BLOCKDEV_DISCARD_OPTIONS_UNMAP
                     : in.discard_unmap;
    BlockdevDetectZeroesOptions dz = opts->has_detect_zeroes
                                         ? opts->detect_zeroes
                                         : BLOCKDEV_DETECT_ZEROES_OPTIONS_OFF;

    BlockDriverState *bs = node_alloc(drv);
    bs->options = qapi_BlockdevOptions_clone(opts);
    bs->read_only = read_only;
    bs->open_flags =
        (read_only ? 0 : BDRV_O_RDWR) | (direct ? BDRV_O_NOCACHE : 0) |
        (no_flush ? BDRV_O_NO_FLUSH : 0) | (unmap ? BDRV_O_UNMAP : 0) |
        (auto_ro ? BDRV_O_AUTO_RDONLY : 0) |
        (force_share ? BDRV_O_FORCE_SHARE : 0);
    bs->detect_zeroes = dz;

    /*
     * QEMU opens a node's `file` before it checks the node's own generic
     * options and name, and both before the driver looks at its options;
     * errors come in that order.  So with a `file` the checks wait for
     * bdrv_open_child("file"), else they run now.
     */
    const char *user_name = opts->has_node_name ? opts->node_name : NULL;
    if (options_have_file(bs)) {
        g_hash_table_insert(setup_pending, bs, g_strdup(user_name));
    } else if (!node_setup(bs, user_name, errp)) {
        bdrv_free(bs);
        return NULL;
    }

    GError *err = NULL;
    int ret = drv->bdrv_open(bs, opts, &err);
    if (ret == 0 && !err) {
        char *pending = NULL;
        if (g_hash_table_steal_extended(setup_pending, bs, NULL,
                                        (gpointer *)&pending)) {
            /* the driver never opened its `file` */
            if (!node_setup(bs, pending, &err)) {
                ret = -EINVAL;
            }
            g_free(pending);
        }
    }
    if (ret < 0 || err) {
        if (!err) {
            error_setg_errno(&err, -ret, "Could not open node '%s'",
                             bs->node_name);
        }
        error_propagate(errp, err);
        open_failed(bs, false);
        return NULL;
    }
    if (bs->total_bytes > BDRV_MAX_LENGTH || bs->total_bytes < 0) {
        error_setg_errno(errp, EFBIG, "Could not refresh total sector count");
        open_failed(bs, true);
        return NULL;
    }
    /* The driver may change its read-only state while opening
     * (auto-read-only falling back). */
    if (bs->read_only) {
        bs->open_flags &= ~BDRV_O_RDWR;
    }
    bdrv_refresh_limits(bs, &err);
    if (!err) {
        /* Child edges were sized while the driver was still setting up. */
        bdrv_refresh_perms(bs, &err);
    }
    if (err) {
        error_propagate(errp, err);
        open_failed(bs, true);
        return NULL;
    }
    /* Protocols name themselves; a node with children is named by the
     * core from them (plain name or json:{...}), whatever it wrote. */
    if (!LIST_EMPTY(&bs->children)) {
        bs->filename[0] = 0;
    }
    bdrv_refresh_filename(bs);
    registry_add(bs);
    return bs;
}

/* A node of a driver that blockdev-add cannot name (a job's filter such as
 * commit_top or mirror_top): QEMU's bdrv_new_open_driver(). */
BlockDriverState *bdrv_new_open_driver(const BlockDriver *drv,
                                       const char *node_name, int flags,
                                       GError **errp)
{
    registry_init();
    BlockDriverState *bs = node_alloc(drv);
    bs->open_flags = flags;
    bs->read_only = !(flags & BDRV_O_RDWR);
    if (!node_setup(bs, node_name, errp)) {
        bdrv_free(bs);
        return NULL;
    }
    return bs;
}

bool bdrv_is_root_node(BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (c->klass->parent_is_bds || c->klass->parent_is_job) {
            return false;
        }
    }
    return true;
}

BlockDriverState *bdrv_lookup_root_bs(const char *device, GError **errp)
{
    BlockDriverState *bs = bdrv_lookup_bs(device, device, errp);
    if (!bs) {
        return NULL;
    }
    if (!bdrv_is_root_node(bs)) {
        error_setg(errp, "Need a root block node");
        return NULL;
    }
    if (!bs->drv) {
        error_setg(errp, "Device has no medium");
        return NULL;
    }
    return bs;
}

BlockDriverState *bdrv_insert_filter(BlockDriverState *filter,
                                     BlockDriverState *bs,
                                     const char *child_name, GError **errp)
{
    if (child_name) {
        if (!bdrv_attach_child(filter, bs, child_name,
                               BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                               errp)) {
            bdrv_unref(filter);
            return NULL;
        }
        bdrv_refresh_limits(filter, NULL);
        bdrv_refresh_filename(filter);
    }
    if (bdrv_replace_node(bs, filter, errp) < 0) {
        bdrv_unref(filter);
        return NULL;
    }
    return filter;
}

void bdrv_remove_filter(BlockDriverState *filter, const char *who)
{
    BdrvChild *c = bdrv_filter_or_cow_child(filter);
    g_autoptr(GError) err = NULL;
    if (c && bdrv_replace_node(filter, c->bs, &err) < 0) {
        warn_report("%s: cannot remove filter '%s': %s", who,
                    filter->node_name, err->message);
    }
}

BlockDriverState *coroutine_fn bdrv_co_open(const BlockdevOptions *opts,
                                            GError **errp)
{
    return bdrv_open_inherit(opts, NULL, 0, errp);
}

BlockDriverState *coroutine_fn bdrv_co_open_json(JsonNode *node, bool keyval,
                                                 GError **errp)
{
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(node, keyval, errp);
    if (!o) {
        return NULL;
    }
    BlockDriverState *bs = bdrv_co_open(o, errp);
    qapi_free_BlockdevOptions(o);
    return bs;
}

JsonObject *bdrv_image_open_options(const char *filename, const char *fmt,
                                    const char *node_name,
                                    BlockDriverState *like, bool no_backing,
                                    GError **errp)
{
    const BlockDriver *drv = bdrv_find_format(fmt);
    if (!drv) {
        error_setg(errp, "Unknown driver '%s'", fmt);
        return NULL;
    }
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "driver", fmt);
    if (node_name) {
        json_object_set_string_member(o, "node-name", node_name);
    }
    if (drv->driver == BLOCKDEV_DRIVER_FILE) {
        json_object_set_string_member(o, "filename", filename);
    } else {
        /* a format over the file (for formats that are not, the open
         * fails with the driver's own complaint about its options) */
        JsonObject *file = json_object_new();
        json_object_set_string_member(file, "driver", "file");
        json_object_set_string_member(file, "filename", filename);
        json_object_set_object_member(o, "file", file);
    }
    if (no_backing && drv->supports_backing) {
        json_object_set_null_member(o, "backing");
    }
    int flags = like->open_flags;
    json_object_set_boolean_member(o, "read-only", !(flags & BDRV_O_RDWR));
    json_object_set_boolean_member(o, "auto-read-only",
                                   flags & BDRV_O_AUTO_RDONLY);
    JsonObject *cache = json_object_new();
    json_object_set_boolean_member(cache, "direct", flags & BDRV_O_NOCACHE);
    json_object_set_boolean_member(cache, "no-flush",
                                   flags & BDRV_O_NO_FLUSH);
    json_object_set_object_member(o, "cache", cache);
    json_object_set_string_member(o, "discard",
                                  flags & BDRV_O_UNMAP ? "unmap" : "ignore");
    return o;
}

BlockDriverState *coroutine_fn bdrv_co_open_object(JsonObject *o,
                                                   GError **errp)
{
    JsonNode *node = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    BlockDriverState *bs = bdrv_co_open_json(node, false, errp);
    json_node_unref(node);
    return bs;
}

BlockDriverState *coroutine_fn bdrv_co_open_keyval(const char *opts,
                                                   GError **errp)
{
    JsonNode *node = keyval_parse(opts, NULL, errp);
    if (!node) {
        return NULL;
    }
    BlockDriverState *bs = bdrv_co_open_json(node, true, errp);
    json_node_unref(node);
    return bs;
}

BlockdevOptions *bdrv_format_on_file_options(const char *fmt,
                                             const char *filename,
                                             GError **errp)
{
    JsonObject *file = json_object_new();
    json_object_set_string_member(file, "driver", "file");
    json_object_set_string_member(file, "filename", filename);
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "driver", fmt);
    json_object_set_object_member(o, "file", file);
    JsonNode *node = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    BlockdevOptions *bo = qapi_BlockdevOptions_from_json(node, false, errp);
    json_node_unref(node);
    return bo;
}

BlockDriverState *coroutine_fn bdrv_co_create_empty_file(const char *filename,
                                                         GError **errp)
{
    const BlockDriver *fdrv = bdrv_find_driver(BLOCKDEV_DRIVER_FILE);
    if (!fdrv || !fdrv->bdrv_co_create) {
        error_setg(errp, "The file driver is not available");
        return NULL;
    }
    BlockdevCreateOptions co;
    memset(&co, 0, sizeof(co));
    co.driver = BLOCKDEV_DRIVER_FILE;
    co.u.file.filename = (char *)filename;
    if (fdrv->bdrv_co_create(&co, errp) < 0) {
        return NULL;
    }
    BlockdevOptions fo;
    memset(&fo, 0, sizeof(fo));
    fo.driver = BLOCKDEV_DRIVER_FILE;
    fo.u.file.filename = (char *)filename;
    return bdrv_co_open(&fo, errp);
}

BlockDriverState *coroutine_fn bdrv_co_open_create_file(
    const BlockdevRef *ref, GError **errp)
{
    if (!ref) {
        error_setg(errp, "Parameter 'file' is missing");
        return NULL;
    }
    if (ref->type != QTYPE_QSTRING) {
        return bdrv_co_open(&ref->u.definition, errp);
    }
    BlockDriverState *bs =
        bdrv_lookup_bs(ref->u.reference, ref->u.reference, errp);
    if (bs) {
        bdrv_ref(bs);
    }
    return bs;
}

/* Once a parent's `file` node exists (before it is attached, as in
 * QEMU, so a permission conflict names the parent), the parent's deferred
 * checks and name. */
static bool file_child_ready(BlockDriverState *parent, const char *name,
                             GError **errp)
{
    char *pending = NULL;
    if (strcmp(name, "file") ||
        !g_hash_table_steal_extended(setup_pending, parent, NULL,
                                     (gpointer *)&pending)) {
        return true;
    }
    bool ok = node_setup(parent, pending, errp);
    g_free(pending);
    return ok;
}

BdrvChild *coroutine_fn bdrv_open_child(BlockDriverState *parent,
                                        const BlockdevRef *ref,
                                        const char *name, BdrvChildRole role,
                                        bool allow_none, GError **errp)
{
    if (!ref || ref->type == QTYPE_QNULL || ref->type == QTYPE_NONE) {
        if (!allow_none) {
            error_setg(errp, "A block device must be specified for \"%s\"",
                       name);
        }
        return NULL;
    }
    BlockDriverState *child;
    if (ref->type == QTYPE_QSTRING) {
        child = bdrv_lookup_bs(ref->u.reference, ref->u.reference, errp);
        if (!child) {
            return NULL;
        }
        bdrv_ref(child);
    } else {
        child = bdrv_open_inherit(&ref->u.definition, parent, role, errp);
        if (!child) {
            return NULL;
        }
    }
    BdrvChild *c = NULL;
    if (file_child_ready(parent, name, errp)) {
        c = bdrv_attach_child(parent, child, name, role, errp);
    }
    bdrv_unref(child); /* the edge holds it now, or an inline one closes */
    return c;
}

/* ---- reference counting and closing ---- */

void bdrv_ref(BlockDriverState *bs)
{
    bs->refcnt++;
}

int coroutine_fn bdrv_co_flush(BlockDriverState *bs);
void bdrv_drain_wait_node(BlockDriverState *bs);

static void coroutine_fn close_co(void *opaque)
{
    BlockDriverState *bs = opaque;
    bdrv_drain_wait_node(bs);
    if (bdrv_co_flush(bs) < 0) {
        warn_report("Failed to flush node '%s' on close", bs->node_name);
    }
    bdrv_drain_wait_node(bs);
    if (bs->drv->bdrv_close) {
        bs->drv->bdrv_close(bs);
    }
    BdrvChild *c;
    while ((c = LIST_FIRST(&bs->children))) {
        detach_child(bs, c);
    }
}

static void bdrv_delete(BlockDriverState *bs)
{
    /* Out of every list first: the name is free again at once, and no
     * iteration finds a half-closed node. */
    g_ptr_array_remove(all_nodes, bs);
    g_ptr_array_remove(monitor_nodes, bs);
    g_hash_table_remove(reserved_names, bs->node_name);
    /* Drivers may do I/O while closing (write back metadata), which needs
     * coroutine context. */
    if (in_coroutine()) {
        close_co(bs);
    } else {
        coroutine_run_sync(close_co, bs);
    }
    bdrv_free(bs);
}

void bdrv_unref(BlockDriverState *bs)
{
    if (!bs) {
        return;
    }
    if (--bs->refcnt == 0) {
        bdrv_delete(bs);
    }
}

void bdrv_set_monitor_owned(BlockDriverState *bs)
{
    registry_init();
    if (!bs->monitor_owned) {
        bs->monitor_owned = true;
        g_ptr_array_add(monitor_nodes, bs);
    }
}

bool bdrv_is_monitor_owned(const BlockDriverState *bs)
{
    return bs->monitor_owned;
}

static bool bdrv_has_blk(BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (!c->klass->parent_is_bds && !c->klass->parent_is_job) {
            return true;
        }
    }
    return false;
}

int coroutine_fn bdrv_co_blockdev_del(BlockDriverState *bs, GError **errp)
{
    if (bdrv_has_blk(bs)) {
        error_setg(errp, "Node %s is in use", bs->node_name);
        return -EBUSY;
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (!bdrv_child_graph_mod_check(c, errp)) {
            return -EBUSY;
        }
    }
    const char *user = bdrv_backing_user(bs);
    if (user) {
        error_setg(errp,
                   "Node '%s' is busy: node is used as backing hd of "
                   "'%s'",
                   bs->node_name, user);
        return -EBUSY;
    }
    if (!bs->monitor_owned) {
        error_setg(errp, "Node %s is not owned by the monitor", bs->node_name);
        return -EINVAL;
    }
    if (bs->refcnt > 1 || !LIST_EMPTY(&bs->parents)) {
        error_setg(errp, "Block device %s is in use", bs->node_name);
        return -EBUSY;
    }
    bs->monitor_owned = false;
    g_ptr_array_remove(monitor_nodes, bs);
    bdrv_unref(bs);
    return 0;
}

void bdrv_close_all(void)
{
    if (!all_nodes) {
        return;
    }
    bdrv_drain_all_begin();
    bdrv_drain_all_end();
    /* Drop the monitor's references, newest first; refcounting then closes
     * every parent before the children it holds. */
    while (monitor_nodes->len > 0) {
        BlockDriverState *bs = monitor_nodes->pdata[monitor_nodes->len - 1];
        g_ptr_array_remove_index(monitor_nodes, monitor_nodes->len - 1);
        bs->monitor_owned = false;
        bdrv_unref(bs);
    }
    if (all_nodes->len > 0) {
        warn_report("%u block node(s) still referenced at exit",
                    all_nodes->len);
    }
}
