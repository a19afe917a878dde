/*
 * blockdev-reopen: give existing nodes new options, as one transaction.
 *
 * Each entry of the command names a node and re-specifies it completely
 * (options left out go back to their defaults, as in QEMU 7.2).  Children
 * the node opened itself (inline options, or a backing file from the
 * image header) are reopened with it and inherit its generic options.
 * Everything is checked before anything changes:
 *
 *   1. queue: the named nodes and their inherited children, with the new
 *      generic state (read-only, cache, discard, detect-zeroes);
 *   2. flush every queued node;
 *   3. prepare each node: generic checks, options that may not be reset,
 *      the driver's prepare, `backing`/`file` changes (cycles, implicit
 *      filters, edges a job holds), options that may not change;
 *   4. permissions: every node takes the union of its old and new
 *      permissions and the intersection of what it shares (old and new
 *      child edges both attached, each node as writable as it is before or
 *      after), so anything that would conflict fails here;
 *   5. commit: drivers commit, the new state and edges become current,
 *      the old edges go, and permissions drop to the new ones.  That
 *      only relaxes, so it cannot fail; a lock error is logged.
 *
 * A failure in 1-4 undoes what was done and leaves every node as it was.
 * The messages are QEMU's (docs/reopen.md).
 */
#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

/* block.c: the permissions `parent` needs on edge c. */
void bdrv_child_perm_of(BlockDriverState *parent, BdrvChild *c,
                        uint64_t *nperm, uint64_t *nshared);

/* One `backing` or `file` edge the reopen replaces. */
typedef struct ChildChange {
    const char *name;
    BdrvChild *old;           /* the edge now (NULL: none) */
    BlockDriverState *new_bs; /* the new child (NULL: none) */
    BdrvChildRole role;
    BdrvChild *new_edge; /* attached in the permission stage */
    bool old_unlinked;   /* old is out of the parent's children list */
    bool old_off_child;  /* ... and out of its child's parents list */
} ChildChange;

/* Put a replaced edge back in its parent's children list (and its
 * child's parents list). */
static void relink_old(BlockDriverState *bs, ChildChange *ch)
{
    if (ch->old_unlinked) {
        LIST_INSERT_HEAD(&bs->children, ch->old, next);
        ch->old_unlinked = false;
    }
    if (ch->old_off_child) {
        LIST_INSERT_HEAD(&ch->old->bs->parents, ch->old, next_parent);
        ch->old_off_child = false;
    }
}

typedef struct ReopenEntry {
    BDRVReopenState state;
    BlockdevOptions *options; /* owned; state.options points here */
    JsonNode *json;           /* options as given (not flattened) */
    JsonObject *flat;         /* flattened, inherited children removed */
    bool auto_read_only, direct, no_flush, unmap;
    /* a child named again by its node-name: reopened with the options it
     * has (QEMU's keep_old_opts: no "backing is missing" check) */
    bool keep_old;
    /* children named by node-name that go with this node: their entry in
     * its options stays as it was (inline or from the image header), so
     * they still go with it next time, as QEMU's inherits_from */
    GPtrArray *kept_children; /* of const char * (edge names) */
    bool prepared; /* the driver's prepare succeeded */
    ChildChange changes[2];
    int nchanges;
    /* the node before the permission stage */
    bool old_read_only;
    int old_flags;
} ReopenEntry;

/* ---- options as QEMU's flattened QDict ---- */

/* "a": {"b": 1} -> "a.b": 1; lists -> "a.0", as qdict_flatten(). */
static void flatten_into(JsonObject *dst, const char *prefix, JsonNode *node)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        JsonObject *o = json_node_get_object(node);
        GList *members = json_object_get_members(o);
        for (GList *l = members; l; l = l->next) {
            g_autofree char *key =
                prefix ? g_strdup_printf("%s.%s", prefix, (char *)l->data)
                       : g_strdup(l->data);
            flatten_into(dst, key, json_object_get_member(o, l->data));
        }
        g_list_free(members);
    } else if (JSON_NODE_HOLDS_ARRAY(node) && prefix) {
        JsonArray *a = json_node_get_array(node);
        for (guint i = 0; i < json_array_get_length(a); i++) {
            g_autofree char *key = g_strdup_printf("%s.%u", prefix, i);
            flatten_into(dst, key, json_array_get_element(a, i));
        }
    } else if (prefix) {
        json_object_set_member(dst, prefix, json_node_copy(node));
    }
}

static JsonObject *flatten(JsonNode *node)
{
    JsonObject *flat = json_object_new();
    flatten_into(flat, NULL, node);
    return flat;
}

/* Drop `name` and "name.*" (a child's options). */
static void drop_child_keys(JsonObject *flat, const char *name)
{
    size_t n = strlen(name);
    GList *members = json_object_get_members(flat);
    for (GList *l = members; l; l = l->next) {
        const char *k = l->data;
        if (!strncmp(k, name, n) && (k[n] == 0 || k[n] == '.')) {
            json_object_remove_member(flat, k);
        }
    }
    g_list_free(members);
}

/*
 * QEMU walks its option QDict in hash-table order (512 buckets, tdb hash,
 * newest first within a bucket), which decides which option an error
 * names when several are wrong; the same order here.
 */
static unsigned qdict_bucket(const char *key)
{
    unsigned value = 0x238F13AF * (unsigned)strlen(key);
    for (unsigned i = 0; key[i]; i++) {
        value = value + (((const unsigned char *)key)[i] << (i * 5 % 24));
    }
    return (1103515243 * value + 12345) % 512;
}

static gint bucket_cmp(gconstpointer a, gconstpointer b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    unsigned bx = qdict_bucket(x), by = qdict_bucket(y);
    return bx < by ? -1 : bx > by ? 1 : 0;
}

/* The keys of flat in QEMU's iteration order (borrowed strings). */
static GPtrArray *qdict_order(JsonObject *flat)
{
    GPtrArray *keys = g_ptr_array_new();
    GList *members = json_object_get_members(flat);
    /* newest first within a bucket: insert in reverse, sort stably */
    for (GList *l = g_list_last(members); l; l = l->prev) {
        g_ptr_array_add(keys, l->data);
    }
    g_list_free(members);
    g_ptr_array_sort(keys, bucket_cmp); /* a stable merge sort in glib */
    return keys;
}

/* key is one of list's names or below one ("overlap-check.template"). */
static bool key_in(const char *key, const char *const *list)
{
    for (; list && *list; list++) {
        size_t n = strlen(*list);
        if (!strncmp(key, *list, n) && (key[n] == 0 || key[n] == '.')) {
            return true;
        }
    }
    return false;
}

/* Generic options the block layer applies on reopen (QEMU's
 * bdrv_runtime_opts it consumes); they are never compared. */
static const char *const generic_reopen_opts[] = {
    "read-only", "auto-read-only", "cache.direct", "cache.no-flush",
    "discard", "detect-zeroes", NULL,
};
/* Generic options that may be left out (QEMU's common_options). */
static const char *const generic_mutable_opts[] = {
    "node-name", "discard", "cache.direct", "cache.no-flush",
    "read-only", "auto-read-only", "detect-zeroes", NULL,
};

/* The node's current options as QEMU keeps them: without its children's
 * (which live in the children) and without "backing": null (a flag). */
static JsonObject *old_flat_options(BlockDriverState *bs)
{
    JsonNode *j = qapi_BlockdevOptions_to_json(bs->options);
    JsonObject *flat = j ? flatten(j) : json_object_new();
    if (j) {
        json_node_unref(j);
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        drop_child_keys(flat, c->name);
    }
    JsonNode *b = json_object_get_member(flat, "backing");
    if (b && JSON_NODE_HOLDS_NULL(b)) {
        json_object_remove_member(flat, "backing");
    }
    return flat;
}

/* ---- the queue ---- */

/* Members of `from` that `into` lacks, one level down for objects. */
static void join_members(JsonObject *into, JsonObject *from, int depth)
{
    GList *members = json_object_get_members(from);
    for (GList *l = members; l; l = l->next) {
        const char *k = l->data;
        JsonNode *v = json_object_get_member(from, k);
        JsonNode *mine = json_object_get_member(into, k);
        if (!mine) {
            json_object_set_member(into, k, json_node_copy(v));
        } else if (depth == 0 && JSON_NODE_HOLDS_OBJECT(mine) &&
                   JSON_NODE_HOLDS_OBJECT(v)) {
            join_members(json_node_get_object(mine),
                         json_node_get_object(v), depth + 1);
        }
    }
    g_list_free(members);
}

/* opts with what `earlier` gave and opts does not; NULL if that does
 * not parse (then opts alone counts). */
static BlockdevOptions *join_options(const BlockdevOptions *opts,
                                     JsonNode *earlier)
{
    JsonNode *j = qapi_BlockdevOptions_to_json(opts);
    /* deep: the join must not write into opts' own members */
    g_autofree char *text = json_to_string(j, FALSE);
    JsonNode *deep = json_from_string(text, NULL);
    json_node_unref(j);
    if (!deep) {
        return NULL;
    }
    join_members(json_node_get_object(deep), json_node_get_object(earlier),
                 0);
    BlockdevOptions *joined = qapi_BlockdevOptions_from_json(deep, false,
                                                             NULL);
    json_node_unref(deep);
    return joined;
}

static ReopenEntry *find_entry(GPtrArray *q, BlockDriverState *bs)
{
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        if (e->state.bs == bs) {
            return e;
        }
    }
    return NULL;
}

static void entry_free(gpointer p)
{
    ReopenEntry *e = p;
    for (int i = 0; i < e->nchanges; i++) {
        bdrv_unref(e->changes[i].new_bs);
    }
    bdrv_unref(e->state.bs);
    if (e->kept_children) {
        g_ptr_array_free(e->kept_children, TRUE);
    }
    qapi_free_BlockdevOptions(e->options);
    if (e->json) {
        json_node_unref(e->json);
    }
    if (e->flat) {
        json_object_unref(e->flat);
    }
    g_free(e);
}

/*
 * Whether bs opened child c itself, so that c is reopened with it
 * (QEMU's inherits_from): its options were given inline, or it came from
 * the image header.  Nodes of their own (blockdev-add) and job filters
 * are not.
 */
static bool child_inherits(BlockDriverState *bs, BdrvChild *c)
{
    if (c->bs->monitor_owned || c->bs->implicit || !bs->options) {
        return false;
    }
    JsonNode *j = qapi_BlockdevOptions_to_json(bs->options);
    JsonNode *m = json_object_get_member(json_node_get_object(j), c->name);
    bool inherits = !m || JSON_NODE_HOLDS_OBJECT(m);
    json_node_unref(j);
    return inherits;
}

/*
 * Queue bs with its new options `opts` (taken).  parent: the entry bs
 * inherits from (NULL for a node the command names); c: its edge.
 */
static void queue_node(GPtrArray *q, BlockDriverState *bs,
                       BlockdevOptions *opts, ReopenEntry *parent,
                       BdrvChild *edge, bool keep_old)
{
    ReopenEntry *e = find_entry(q, bs);
    if (e) {
        /* named again (or named after being queued as a child): the
         * latest options win, and what only the earlier entry gave
         * stays (QEMU joins the explicit options) */
        BlockdevOptions *joined = join_options(opts, e->json);
        if (joined) {
            qapi_free_BlockdevOptions(opts);
            opts = joined;
        }
        qapi_free_BlockdevOptions(e->options);
        json_node_unref(e->json);
        json_object_unref(e->flat);
        if (e->kept_children) {
            g_ptr_array_set_size(e->kept_children, 0);
        }
    } else {
        e = g_new0(ReopenEntry, 1);
        e->state.bs = bs;
        /* held until the command ends: it yields (flushes, the drivers'
         * I/O), and another monitor may try to delete nodes meanwhile */
        bdrv_ref(bs);
        g_ptr_array_add(q, e);
    }
    e->options = opts;
    e->state.options = opts;
    e->keep_old = keep_old;
    e->json = qapi_BlockdevOptions_to_json(opts);
    e->flat = flatten(e->json);

    /* Generic state: given, else inherited, else the default (QEMU's
     * bdrv_reopen_queue_child and bdrv_inherited_options). */
    bool cow = edge && (edge->role & BDRV_CHILD_COW);
    bool ro = parent ? (cow ? true : parent->state.read_only) : false;
    bool auto_ro = parent ? (cow ? false : parent->auto_read_only) : false;
    bool direct = parent ? parent->direct : false;
    bool no_flush = parent ? parent->no_flush : false;
    /* discard: a child defaults to unmap; a named node keeps its mode */
    bool unmap = parent ? true : !!(bs->open_flags & BDRV_O_UNMAP);
    if (opts->has_read_only) {
        ro = opts->read_only;
    }
    if (opts->has_auto_read_only) {
        auto_ro = opts->auto_read_only;
    }
    if (opts->has_cache && opts->cache) {
        if (opts->cache->has_direct) {
            direct = opts->cache->direct;
        }
        if (opts->cache->has_no_flush) {
            no_flush = opts->cache->no_flush;
        }
    }
    if (opts->has_discard) {
        unmap = opts->discard == BLOCKDEV_DISCARD_OPTIONS_UNMAP;
    }
    e->auto_read_only = auto_ro;
    e->direct = direct;
    e->no_flush = no_flush;
    e->unmap = unmap;
    e->state.read_only = ro;
    e->state.open_flags =
        (ro ? 0 : BDRV_O_RDWR) | (direct ? BDRV_O_NOCACHE : 0) |
        (no_flush ? BDRV_O_NO_FLUSH : 0) | (unmap ? BDRV_O_UNMAP : 0) |
        (auto_ro ? BDRV_O_AUTO_RDONLY : 0) |
        (bs->open_flags & (BDRV_O_FORCE_SHARE | BDRV_O_INACTIVE));
    e->state.detect_zeroes = opts->has_detect_zeroes
                                 ? opts->detect_zeroes
                                 : BLOCKDEV_DETECT_ZEROES_OPTIONS_OFF;

    /* Children bs opened itself go with it, with the options given for
     * them inline, or their own if the reference names them again. */
    JsonObject *given = json_node_get_object(e->json);
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (!child_inherits(bs, c)) {
            continue;
        }
        JsonNode *m = json_object_get_member(given, c->name);
        BlockdevOptions *copts = NULL;
        bool child_keep_old = false;
        if (!m || JSON_NODE_HOLDS_NULL(m)) {
            continue; /* detached, or "backing is missing" for bs */
        } else if (JSON_NODE_HOLDS_VALUE(m)) {
            if (g_strcmp0(json_node_get_string(m), c->bs->node_name)) {
                continue; /* replaced by another node */
            }
            copts = qapi_BlockdevOptions_clone(c->bs->options);
            child_keep_old = true;
            if (!e->kept_children) {
                e->kept_children = g_ptr_array_new();
            }
            g_ptr_array_add(e->kept_children, c->name);
        } else {
            copts = qapi_BlockdevOptions_from_json(m, false, NULL);
            drop_child_keys(e->flat, c->name);
        }
        if (copts) {
            queue_node(q, c->bs, copts, e, c, child_keep_old);
        }
    }
}

/* ---- prepare ---- */

/*
 * Whether `target` is `from` or below it, with the child changes of the
 * entries prepared so far in place: QEMU changes the graph as it prepares
 * each node, so a later entry sees the links an earlier one set.
 */
static bool reaches(GPtrArray *q, BlockDriverState *from,
                    BlockDriverState *target, GHashTable *seen)
{
    if (from == target) {
        return true;
    }
    if (!g_hash_table_add(seen, from)) {
        return false;
    }
    ReopenEntry *e = find_entry(q, from);
    int n = e ? e->nchanges : 0;
    BdrvChild *c;
    LIST_FOREACH (c, &from->children, next) {
        bool replaced = false;
        for (int i = 0; i < n; i++) {
            replaced |= e->changes[i].old == c;
        }
        if (!replaced && reaches(q, c->bs, target, seen)) {
            return true;
        }
    }
    for (int i = 0; i < n; i++) {
        if (e->changes[i].new_bs &&
            reaches(q, e->changes[i].new_bs, target, seen)) {
            return true;
        }
    }
    return false;
}

/* A `backing` or `file` option naming a different node (QEMU's
 * bdrv_reopen_parse_file_or_backing). */
static int parse_child_option(GPtrArray *q, ReopenEntry *e, const char *name,
                              GError **errp)
{
    BlockDriverState *bs = e->state.bs;
    bool is_backing = !strcmp(name, "backing");
    JsonNode *v = json_object_get_member(json_node_get_object(e->json), name);
    if (!v || JSON_NODE_HOLDS_OBJECT(v)) {
        return 0; /* inline options: the same child, reopened */
    }
    BdrvChild *old = is_backing ? bs->backing : bs->file;
    BlockDriverState *old_bs = old ? old->bs : NULL;
    BlockDriverState *new_bs = NULL;
    if (JSON_NODE_HOLDS_VALUE(v)) {
        const char *ref = json_node_get_string(v);
        new_bs = bdrv_lookup_bs(NULL, ref, errp);
        if (!new_bs) {
            return -EINVAL;
        }
        /* new_bs below bs, or bs itself, in the graph as the entries
         * prepared so far leave it */
        GHashTable *seen = g_hash_table_new(NULL, NULL);
        bool cycle = reaches(q, new_bs, bs, seen);
        g_hash_table_destroy(seen);
        if (cycle) {
            error_setg(errp,
                       "Making '%s' a %s child of '%s' would create a cycle",
                       ref, name, bs->node_name);
            return -EINVAL;
        }
    }
    if (old_bs == new_bs) {
        return 0;
    }
    if (old_bs) {
        /* naming the node below a job's implicit filter changes nothing */
        BlockDriverState *below = old_bs;
        while (below && below->implicit) {
            BdrvChild *f = bdrv_filter_or_cow_child(below);
            below = f ? f->bs : NULL;
        }
        if (below == new_bs) {
            return 0;
        }
        if (old_bs->implicit) {
            error_setg(errp, "Cannot replace implicit %s child of %s", name,
                       bs->node_name);
            return -EPERM;
        }
    }
    if (bs->drv->is_filter && !old_bs) {
        error_setg(errp,
                   "'%s' is a %s filter node that does not support a %s "
                   "child",
                   bs->node_name, bs->drv->format_name, name);
        return -EINVAL;
    }
    /* An edge a job holds is QEMU's frozen link. */
    if (old && !bdrv_child_graph_mod_check(old, NULL)) {
        error_setg(errp, "Cannot change frozen '%s' link from '%s' to '%s'",
                   old->name, bs->node_name, old_bs->node_name);
        return -EPERM;
    }
    if (is_backing && !bs->drv->is_filter && !bs->drv->supports_backing) {
        error_setg(errp,
                   "Driver '%s' of node '%s' does not support backing files",
                   bs->drv->format_name, bs->node_name);
        return -EINVAL;
    }
    ChildChange *ch = &e->changes[e->nchanges++];
    ch->name = is_backing ? "backing" : "file";
    ch->old = old;
    ch->new_bs = new_bs;
    if (new_bs) {
        bdrv_ref(new_bs); /* dropped with the entry */
    }
    if (old) {
        ch->role = old->role;
    } else if (bs->drv->is_filter) {
        ch->role = BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY;
    } else {
        ch->role = is_backing ? BDRV_CHILD_COW : BDRV_CHILD_IMAGE |
                                                     BDRV_CHILD_PRIMARY;
    }
    return 0;
}

/* Whether bs has a child named `name` that is the node `ref`. */
static bool names_current_child(BlockDriverState *bs, const char *name,
                                JsonNode *v)
{
    if (!JSON_NODE_HOLDS_VALUE(v) ||
        json_node_get_value_type(v) != G_TYPE_STRING) {
        return false;
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        if (!strcmp(c->name, name)) {
            return !strcmp(c->bs->node_name, json_node_get_string(v));
        }
    }
    return false;
}

/* QEMU's bdrv_reopen_prepare, in its order of checks. */
static int coroutine_fn prepare_entry(GPtrArray *q, ReopenEntry *e,
                                      GError **errp)
{
    BlockDriverState *bs = e->state.bs;
    const BlockDriver *drv = bs->drv;
    int ret;

    if (e->state.detect_zeroes == BLOCKDEV_DETECT_ZEROES_OPTIONS_UNMAP &&
        !(e->state.open_flags & BDRV_O_UNMAP)) {
        error_setg(errp, "setting detect-zeroes to unmap is not allowed "
                         "without setting discard operation to unmap");
        return -EINVAL;
    }
    if (!drv->bdrv_reopen_prepare) {
        error_setg(errp,
                   "Block format '%s' used by node '%s' does not support "
                   "reopening files",
                   drv->format_name, bs->node_name);
        return -ENOTSUP;
    }

    /* An option left out goes back to its default, if it may. */
    JsonObject *old = old_flat_options(bs);
    GPtrArray *keys = qdict_order(old);
    ret = 0;
    for (guint i = 0; i < keys->len; i++) {
        const char *k = keys->pdata[i];
        if (!json_object_has_member(e->flat, k) &&
            !key_in(k, generic_mutable_opts) && !key_in(k, drv->mutable_opts)) {
            error_setg(errp,
                       "Option '%s' cannot be reset to its default value", k);
            ret = -EINVAL;
            break;
        }
    }
    g_ptr_array_free(keys, TRUE);
    if (ret < 0) {
        json_object_unref(old);
        return ret;
    }

    ret = drv->bdrv_reopen_prepare(&e->state, errp);
    if (ret < 0) {
        json_object_unref(old);
        return ret;
    }
    e->prepared = true;

    /* A node with a backing file must say what becomes of it. */
    if (drv->supports_backing && !e->keep_old &&
        !json_object_has_member(json_node_get_object(e->json), "backing") &&
        (bs->backing || bs->backing_file[0])) {
        error_setg(errp, "backing is missing for '%s'", bs->node_name);
        ret = -EINVAL;
        goto fail;
    }
    ret = parse_child_option(q, e, "backing", errp);
    if (ret == 0) {
        ret = parse_child_option(q, e, "file", errp);
    }
    if (ret < 0) {
        goto fail;
    }

    /* Everything else must be what it was. */
    keys = qdict_order(e->flat);
    for (guint i = 0; i < keys->len && ret == 0; i++) {
        const char *k = keys->pdata[i];
        JsonNode *v = json_object_get_member(e->flat, k);
        if (key_in(k, generic_reopen_opts) || key_in(k, drv->reopen_opts) ||
            !strcmp(k, "backing") || !strcmp(k, "file") ||
            names_current_child(bs, k, v)) {
            continue;
        }
        JsonNode *ov = json_object_get_member(old, k);
        /* QEMU re-reads force-share as a string, which never equals the
         * boolean it was opened with: it can never be given. */
        if (!strcmp(k, "force-share") || !ov || !json_node_equal(v, ov)) {
            error_setg(errp, "Cannot change the option '%s'", k);
            ret = -EINVAL;
        }
    }
    g_ptr_array_free(keys, TRUE);
    if (ret < 0) {
        goto fail;
    }
    json_object_unref(old);
    return 0;

fail:
    json_object_unref(old);
    for (int i = 0; i < e->nchanges; i++) {
        bdrv_unref(e->changes[i].new_bs);
    }
    e->nchanges = 0;
    if (drv->bdrv_reopen_abort) {
        drv->bdrv_reopen_abort(&e->state);
    }
    e->prepared = false;
    return ret;
}

/* ---- permissions ---- */

/* Queued nodes, every one after the queued nodes above it, so each
 * refresh starts from parents that are already up to date. */
static bool is_below(BlockDriverState *top, BlockDriverState *bs)
{
    BdrvChild *c;
    LIST_FOREACH (c, &top->children, next) {
        if (c->bs == bs || is_below(c->bs, bs)) {
            return true;
        }
    }
    return false;
}

static GPtrArray *parents_first(GPtrArray *q)
{
    GPtrArray *order = g_ptr_array_new();
    /* (not g_ptr_array_copy: that would take q's free function too) */
    GPtrArray *left = g_ptr_array_new();
    for (guint i = 0; i < q->len; i++) {
        g_ptr_array_add(left, q->pdata[i]);
    }
    while (left->len > 0) {
        for (guint i = 0; i < left->len; i++) {
            ReopenEntry *e = left->pdata[i];
            bool has_parent_left = false;
            for (guint j = 0; j < left->len && !has_parent_left; j++) {
                ReopenEntry *p = left->pdata[j];
                has_parent_left = p != e && is_below(p->state.bs, e->state.bs);
            }
            if (!has_parent_left) {
                g_ptr_array_add(order, e);
                g_ptr_array_remove_index(left, i);
                break;
            }
        }
    }
    g_ptr_array_free(left, TRUE);
    return order;
}

/* Refresh the permissions of the queued nodes' subtrees, parents first. */
static int refresh_all(GPtrArray *order, GError **errp)
{
    for (guint i = 0; i < order->len; i++) {
        ReopenEntry *e = order->pdata[i];
        int ret = bdrv_refresh_perms(e->state.bs, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * A node that becomes read-only must not keep a writer (QEMU's check with
 * the same words).  The writers are its parents as they will be: a queued
 * parent node asks with its new read-only state.
 */
static int check_no_writer(GPtrArray *q, ReopenEntry *e, GError **errp)
{
    BlockDriverState *bs = e->state.bs;
    if (!e->state.read_only || bs->read_only) {
        return 0;
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        uint64_t perm = c->perm, shared;
        bool replaced = false;
        if (c->klass->parent_is_bds) {
            BlockDriverState *p = c->opaque;
            ReopenEntry *pe = find_entry(q, p);
            for (int i = 0; pe && i < pe->nchanges; i++) {
                replaced |= pe->changes[i].old == c;
            }
            if (pe && !replaced) {
                bool ro = p->read_only;
                p->read_only = pe->state.read_only;
                bdrv_child_perm_of(p, c, &perm, &shared);
                p->read_only = ro;
            }
        }
        if (!replaced && (perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED))) {
            error_setg(errp,
                       "Read-only block node '%s' cannot support read-write "
                       "users",
                       bs->node_name);
            return -EPERM;
        }
    }
    return 0;
}

/* Detach the edges attached for the new children (abort). */
static void drop_new_edges(GPtrArray *q)
{
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        for (int j = 0; j < e->nchanges; j++) {
            ChildChange *ch = &e->changes[j];
            if (ch->new_edge) {
                BlockDriverState *bs = e->state.bs;
                /* bdrv_attach_child made it the node's backing/file */
                if (!strcmp(ch->name, "backing")) {
                    bs->backing = ch->new_edge;
                } else {
                    bs->file = ch->new_edge;
                }
                bdrv_unref_child(bs, ch->new_edge);
                if (!strcmp(ch->name, "backing")) {
                    bs->backing = ch->old;
                } else {
                    bs->file = ch->old;
                }
                ch->new_edge = NULL;
            }
        }
    }
}

/* Back to the old flags and permissions (relaxing: errors are logged). */
static void perm_stage_undo(GPtrArray *q, GPtrArray *order)
{
    drop_new_edges(q);
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        for (int j = 0; j < e->nchanges; j++) {
            relink_old(e->state.bs, &e->changes[j]);
        }
    }
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        e->state.bs->read_only = e->old_read_only;
        e->state.bs->open_flags = e->old_flags;
    }
    g_autoptr(GError) err = NULL;
    if (refresh_all(order, &err) < 0) {
        warn_report("Restoring permissions after a failed reopen: %s",
                    err->message);
    }
}

/* Whether target is from or below it with the old and the new links
 * both in place (the graph of the permission stage). */
static bool union_reaches(GPtrArray *q, BlockDriverState *from,
                          BlockDriverState *target, GHashTable *seen)
{
    if (from == target) {
        return true;
    }
    if (!g_hash_table_add(seen, from)) {
        return false;
    }
    BdrvChild *c;
    LIST_FOREACH (c, &from->children, next) {
        if (union_reaches(q, c->bs, target, seen)) {
            return true;
        }
    }
    ReopenEntry *e = find_entry(q, from);
    for (int i = 0; e && i < e->nchanges; i++) {
        if (e->changes[i].new_bs &&
            union_reaches(q, e->changes[i].new_bs, target, seen)) {
            return true;
        }
    }
    return false;
}

/*
 * The union stage: each node writable if it is before or after, the new
 * child edges attached next to the old ones.  Every edge then asks for
 * what it asks before and after, and shares only what it shares in both.
 */
static int perm_stage(GPtrArray *q, GPtrArray *order, GError **errp)
{
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        e->old_read_only = e->state.bs->read_only;
        e->old_flags = e->state.bs->open_flags;
    }
    for (guint i = 0; i < order->len; i++) {
        int ret = check_no_writer(q, order->pdata[i], errp);
        if (ret < 0) {
            return ret;
        }
    }
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        BlockDriverState *bs = e->state.bs;
        bs->read_only = e->old_read_only && e->state.read_only;
        if (!bs->read_only) {
            bs->open_flags |= BDRV_O_RDWR;
        }
    }
    /* The replaced edges leave their parents' lists of children (so the
     * new links are checked against the graph as it will be, as QEMU
     * does) but stay with their children, which keep what they hold. */
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        for (int j = 0; j < e->nchanges; j++) {
            ChildChange *ch = &e->changes[j];
            /* A new link that closes a loop with the old one (the two
             * nodes swap places): the old edge goes at once, or the
             * graph would be a cycle while both exist.  Its child only
             * loses a parent: that relaxes. */
            if (ch->old) {
                GHashTable *seen = g_hash_table_new(NULL, NULL);
                ch->old_off_child =
                    union_reaches(q, ch->old->bs, e->state.bs, seen);
                g_hash_table_destroy(seen);
            }
        }
    }
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        for (int j = 0; j < e->nchanges; j++) {
            ChildChange *ch = &e->changes[j];
            if (ch->old) {
                LIST_REMOVE(ch->old, next);
                ch->old_unlinked = true;
            }
            if (ch->old_off_child) {
                LIST_REMOVE(ch->old, next_parent);
            }
        }
    }
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        BlockDriverState *bs = e->state.bs;
        for (int j = 0; j < e->nchanges; j++) {
            ChildChange *ch = &e->changes[j];
            if (!ch->new_bs) {
                continue;
            }
            ch->new_edge =
                bdrv_attach_child(bs, ch->new_bs, ch->name, ch->role, errp);
            /* the old edge stays the node's backing/file until commit */
            if (!strcmp(ch->name, "backing")) {
                bs->backing = ch->old;
            } else {
                bs->file = ch->old;
            }
            if (!ch->new_edge) {
                perm_stage_undo(q, order);
                return -EPERM;
            }
        }
    }
    int ret = refresh_all(order, errp);
    if (ret < 0) {
        perm_stage_undo(q, order);
    }
    return ret;
}

/* ---- commit ---- */

/* The new options keep the old entries of the children named by
 * node-name that went with the node (see kept_children). */
static void keep_child_entries(ReopenEntry *e)
{
    BlockDriverState *bs = e->state.bs;
    if (!e->kept_children || !e->kept_children->len || !bs->options) {
        return;
    }
    JsonNode *nj = qapi_BlockdevOptions_to_json(e->options);
    JsonNode *oj = qapi_BlockdevOptions_to_json(bs->options);
    JsonObject *no = json_node_get_object(nj);
    JsonObject *oo = json_node_get_object(oj);
    for (guint i = 0; i < e->kept_children->len; i++) {
        const char *name = e->kept_children->pdata[i];
        JsonNode *m = json_object_get_member(oo, name);
        if (m) {
            json_object_set_member(no, name, json_node_copy(m));
        } else {
            json_object_remove_member(no, name);
        }
    }
    BlockdevOptions *kept = qapi_BlockdevOptions_from_json(nj, false, NULL);
    if (kept) {
        qapi_free_BlockdevOptions(e->options);
        e->options = kept;
        e->state.options = kept;
    }
    json_node_unref(nj);
    json_node_unref(oj);
}

static void coroutine_fn commit_all(GPtrArray *q, GPtrArray *order)
{
    /* Children before parents, as QEMU (qcow2 writes to its file). */
    for (guint i = q->len; i-- > 0;) {
        ReopenEntry *e = q->pdata[i];
        if (e->state.bs->drv->bdrv_reopen_commit) {
            e->state.bs->drv->bdrv_reopen_commit(&e->state);
        }
    }
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        BlockDriverState *bs = e->state.bs;
        bs->read_only = e->state.read_only;
        bs->open_flags = e->state.open_flags;
        bs->detect_zeroes = e->state.detect_zeroes;
        keep_child_entries(e);
        qapi_free_BlockdevOptions(bs->options);
        bs->options = e->options;
        e->options = NULL;
        e->state.options = bs->options;
        for (int j = 0; j < e->nchanges; j++) {
            ChildChange *ch = &e->changes[j];
            bool is_backing = !strcmp(ch->name, "backing");
            if (ch->old) {
                /* checked in prepare: no job holds it */
                relink_old(bs, ch);
                bdrv_unref_child(bs, ch->old);
            }
            if (is_backing) {
                bs->backing = ch->new_edge;
            } else {
                bs->file = ch->new_edge;
            }
            ch->old = NULL;
            /* A node whose size follows its file's (raw) takes the new
             * file's, as QEMU's, which asks the file each time. */
            if (ch->new_edge && bs->drv->bdrv_child_resized) {
                int64_t before = bs->total_bytes;
                bs->drv->bdrv_child_resized(bs, ch->new_edge);
                if (bs->total_bytes != before) {
                    bdrv_parent_cb_resize(bs);
                }
            }
        }
    }
    /* Names follow options and children (json:{...}); QEMU computes them
     * when asked, ours are kept: recompute the reopened nodes' and every
     * node's above them, children first. */
    for (guint i = order->len; i-- > 0;) {
        ReopenEntry *e = order->pdata[i];
        bdrv_refresh_filenames_up(e->state.bs);
    }
    /* Limits may follow a new descriptor or child: children first. */
    for (guint i = order->len; i-- > 0;) {
        ReopenEntry *e = order->pdata[i];
        bdrv_refresh_limits(e->state.bs, NULL);
    }
    /* Only relaxing from here: a failure (a lock the file layer could not
     * drop) is logged and the wider permissions stay. */
    g_autoptr(GError) err = NULL;
    if (refresh_all(order, &err) < 0) {
        warn_report("Dropping permissions after reopen failed: %s",
                    err->message);
    }
    for (guint i = q->len; i-- > 0;) {
        ReopenEntry *e = q->pdata[i];
        if (e->state.bs->drv->bdrv_reopen_commit_post) {
            e->state.bs->drv->bdrv_reopen_commit_post(&e->state);
        }
    }
}

/* ---- the command ---- */

static void abort_prepared(GPtrArray *q)
{
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        if (e->prepared && e->state.bs->drv->bdrv_reopen_abort) {
            e->state.bs->drv->bdrv_reopen_abort(&e->state);
        }
        e->prepared = false;
    }
}

static int coroutine_fn reopen_multiple(GPtrArray *q, GError **errp)
{
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = q->pdata[i];
        int ret = bdrv_co_flush(e->state.bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Error flushing drive");
            return ret;
        }
    }
    for (guint i = 0; i < q->len; i++) {
        int ret = prepare_entry(q, q->pdata[i], errp);
        if (ret < 0) {
            abort_prepared(q);
            return ret;
        }
    }
    GPtrArray *order = parents_first(q);
    int ret = perm_stage(q, order, errp);
    if (ret < 0) {
        abort_prepared(q);
    } else {
        commit_all(q, order);
    }
    g_ptr_array_free(order, TRUE);
    return ret;
}

/* One reopen at a time: each runs in its monitor's coroutine and yields
 * for I/O, and two transactions over the same nodes must not interleave. */
static CoMutex reopen_lock;
static bool reopen_lock_ready;

void qmp_blockdev_reopen(q_obj_blockdev_reopen_arg *arg, GError **errp)
{
    if (!reopen_lock_ready) {
        co_mutex_init(&reopen_lock);
        reopen_lock_ready = true;
    }
    co_mutex_lock(&reopen_lock);
    /* Nothing may change the graph or issue requests meanwhile. */
    bdrv_drain_all_begin();
    GPtrArray *q = g_ptr_array_new_with_free_func(entry_free);
    bool ok = true;
    for (BlockdevOptionsList *l = arg->options; l && ok; l = l->next) {
        BlockdevOptions *o = l->value;
        if (!o->has_node_name) {
            error_setg(errp, "node-name not specified");
            ok = false;
            break;
        }
        BlockDriverState *bs = bdrv_find_node(o->node_name);
        if (!bs) {
            error_setg(errp, "Failed to find node with node-name='%s'",
                       o->node_name);
            ok = false;
            break;
        }
        queue_node(q, bs, qapi_BlockdevOptions_clone(o), NULL, NULL, false);
    }
    /* (qemu-storage-daemon 7.2 asserts on an empty list; nothing to do) */
    if (ok && q->len > 0) {
        reopen_multiple(q, errp);
    }
    g_ptr_array_free(q, TRUE);
    bdrv_drain_all_end();
    co_mutex_unlock(&reopen_lock);
}

/*
 * QEMU's bdrv_reopen_set_read_only() (block-stream and block-commit make a
 * read-only node writable for the job and read-only again afterwards): a
 * blockdev-reopen of bs with the options it has, read-only as asked, and
 * its children as they are now (backing by node name; inline children
 * reopen with it and inherit).  Same logic as block-commit's own helper.
 */
int coroutine_fn bdrv_co_reopen_set_read_only(BlockDriverState *bs,
                                              bool read_only, GError **errp)
{
    if (!bs->options || !bs->node_name[0]) {
        error_setg(errp, "Node '%s' cannot be reopened", bs->node_name);
        return -ENOTSUP;
    }
    if (!bs->options->has_node_name) {
        /* A node opened from a header got a generated name: its options
         * record it now, so the reopen (which must name the node) does
         * not take it for a change of name. */
        bs->options->has_node_name = true;
        g_free(bs->options->node_name);
        bs->options->node_name = g_strdup(bs->node_name);
    }
    JsonNode *n = qapi_BlockdevOptions_to_json(bs->options);
    if (!n || !JSON_NODE_HOLDS_OBJECT(n)) {
        if (n) {
            json_node_unref(n);
        }
        error_setg(errp, "Node '%s' cannot be reopened", bs->node_name);
        return -ENOTSUP;
    }
    JsonObject *o = json_node_get_object(n);
    json_object_set_boolean_member(o, "read-only", read_only);
    json_object_set_string_member(o, "node-name", bs->node_name);
    BdrvChild *c;
    LIST_FOREACH (c, &bs->children, next) {
        JsonNode *m = json_object_has_member(o, c->name)
                          ? json_object_get_member(o, c->name)
                          : NULL;
        if (c == bs->backing || !m || !JSON_NODE_HOLDS_OBJECT(m)) {
            json_object_set_string_member(o, c->name,
                                          bdrv_get_node_name(c->bs));
        }
    }
    if (!bs->backing && json_object_has_member(o, "backing")) {
        /* the backing node the options name may be gone (block-stream
         * without base): none, as now */
        json_object_set_null_member(o, "backing");
    }
    GError *err = NULL;
    BlockdevOptions *opts = qapi_BlockdevOptions_from_json(n, false, &err);
    json_node_unref(n);
    if (opts) {
        BlockdevOptionsList l = {.next = NULL, .value = opts};
        q_obj_blockdev_reopen_arg arg = {.options = &l};
        qmp_blockdev_reopen(&arg, &err);
        qapi_free_BlockdevOptions(opts);
    }
    if (err) {
        error_propagate(errp, err);
        return -EINVAL;
    }
    return 0;
}
