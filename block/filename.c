/*
 * Node filenames as QEMU makes them: a protocol names itself; a node with
 * children takes its protocol child's plain name when opening that name
 * would rebuild the same tree, and otherwise "json:{...}" of the options
 * that decide what it reads, printed in the key order of QEMU's QDict so
 * the text matches qemu-storage-daemon's byte for byte.
 */
#include <string.h>
#include <stdlib.h>

#include "block/block_int.h"

/*
 * QEMU prints an option dictionary in the order of its QDict hash table
 * (512 buckets, tdb hash, newest entry first within a bucket), so the
 * same options produce the same "json:{...}" text as qemu-storage-daemon.
 */
static unsigned qdict_bucket(const char *key)
{
    unsigned value = 0x238F13AF * (unsigned)strlen(key);
    for (unsigned i = 0; key[i]; i++) {
        value = value + (((const unsigned char *)key)[i] << (i * 5 % 24));
    }
    return (1103515243 * value + 12345) % 512;
}

typedef struct OptEntry {
    const char *key;
    unsigned bucket;
    int seq;
} OptEntry;

static int opt_entry_cmp(const void *a, const void *b)
{
    const OptEntry *x = a, *y = b;
    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return y->seq - x->seq; /* later insertion first */
}

static void json_append(GString *out, JsonNode *node);

static void json_append_object(GString *out, JsonObject *obj)
{
    GList *members = json_object_get_members(obj); /* insertion order */
    guint n = g_list_length(members);
    OptEntry *e = g_new0(OptEntry, n ? n : 1);
    int i = 0;
    for (GList *l = members; l; l = l->next, i++) {
        e[i].key = l->data;
        e[i].bucket = qdict_bucket(l->data);
        e[i].seq = i;
    }
    qsort(e, n, sizeof(*e), opt_entry_cmp);
    g_string_append_c(out, '{');
    for (guint k = 0; k < n; k++) {
        g_autofree char *ks = NULL;
        JsonNode *kn = json_node_new(JSON_NODE_VALUE);
        json_node_set_string(kn, e[k].key);
        ks = json_to_string(kn, FALSE);
        json_node_free(kn);
        g_string_append_printf(out, "%s%s: ", k ? ", " : "", ks);
        json_append(out, json_object_get_member(obj, e[k].key));
    }
    g_string_append_c(out, '}');
    g_free(e);
    g_list_free(members);
}

static void json_append(GString *out, JsonNode *node)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        json_append_object(out, json_node_get_object(node));
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *a = json_node_get_array(node);
        g_string_append_c(out, '[');
        for (guint i = 0; i < json_array_get_length(a); i++) {
            if (i) {
                g_string_append(out, ", ");
            }
            json_append(out, json_array_get_element(a, i));
        }
        g_string_append_c(out, ']');
    } else {
        g_autofree char *s = json_to_string(node, FALSE);
        g_string_append(out, s);
    }
}

/* Whether bs's options name its backing child explicitly (a reference,
 * inline options, or null) rather than leaving it to the image header. */
static bool backing_given(BlockDriverState *bs)
{
    if (!bs->options) {
        return false;
    }
    JsonNode *all = qapi_BlockdevOptions_to_json(bs->options);
    bool given = all && JSON_NODE_HOLDS_OBJECT(all) &&
                 json_object_has_member(json_node_get_object(all), "backing");
    if (all) {
        json_node_unref(all);
    }
    return given;
}

/* Whether the backing child differs from what the header would give
 * (QEMU then describes the node with json:{...} naming its backing).  As
 * in QEMU, a backing child given explicitly counts as the header's only
 * if the header names exactly its filename. */
static bool backing_overridden(BlockDriverState *bs)
{
    if (!bs->drv->supports_backing) {
        return false;
    }
    if (!bs->backing) {
        return bs->backing_file[0] != 0;
    }
    if (!backing_given(bs)) {
        return false; /* opened from the header */
    }
    return strcmp(bs->backing_file, bs->backing->bs->filename) != 0;
}

/*
 * A strong option in QEMU's flat form: lists and dictionaries become
 * "key.0.member" entries (QEMU copies them from its flattened options;
 * blkdebug's inject-error and set-state are such options).  Entries are
 * collected in the order QEMU's flattening inserts them (list order;
 * dictionary members in QDict order), which is also their order within
 * a hash bucket of the printed json:{...}, so they are added newest-last
 * in reverse.
 */
static void flatten_collect(GPtrArray *keys, GPtrArray *vals, const char *key,
                            JsonNode *val)
{
    if (JSON_NODE_HOLDS_ARRAY(val)) {
        JsonArray *a = json_node_get_array(val);
        for (guint i = 0; i < json_array_get_length(a); i++) {
            g_autofree char *k = g_strdup_printf("%s.%u", key, i);
            flatten_collect(keys, vals, k, json_array_get_element(a, i));
        }
    } else if (JSON_NODE_HOLDS_OBJECT(val)) {
        JsonObject *o = json_node_get_object(val);
        GList *members = json_object_get_members(o); /* insertion order */
        guint n = g_list_length(members);
        OptEntry *e = g_new0(OptEntry, n ? n : 1);
        int i = 0;
        for (GList *l = members; l; l = l->next, i++) {
            e[i].key = l->data;
            e[i].bucket = qdict_bucket(l->data);
            e[i].seq = i;
        }
        qsort(e, n, sizeof(*e), opt_entry_cmp);
        for (guint m = 0; m < n; m++) {
            g_autofree char *k = g_strdup_printf("%s.%s", key, e[m].key);
            flatten_collect(keys, vals, k,
                            json_object_get_member(o, e[m].key));
        }
        g_free(e);
        g_list_free(members);
    } else {
        g_ptr_array_add(keys, g_strdup(key));
        g_ptr_array_add(vals, val);
    }
}

static void flatten_option(JsonObject *obj, const char *key, JsonNode *val)
{
    if (!JSON_NODE_HOLDS_ARRAY(val) && !JSON_NODE_HOLDS_OBJECT(val)) {
        json_object_set_member(obj, key, json_node_copy(val));
        return;
    }
    GPtrArray *keys = g_ptr_array_new_with_free_func(g_free);
    GPtrArray *vals = g_ptr_array_new();
    flatten_collect(keys, vals, key, val);
    for (guint i = keys->len; i-- > 0;) {
        json_object_set_member(obj, keys->pdata[i],
                               json_node_copy(vals->pdata[i]));
    }
    g_ptr_array_free(keys, TRUE);
    g_ptr_array_free(vals, TRUE);
}

/* The options that decide what bs reads: driver, its strong options as
 * given, and each child's own dictionary.  Caller frees. */
static JsonNode *strong_options(BlockDriverState *bs)
{
    JsonObject *obj = json_object_new();
    json_object_set_string_member(obj, "driver", bs->drv->format_name);
    JsonNode *all =
        bs->options ? qapi_BlockdevOptions_to_json(bs->options) : NULL;
    JsonObject *allo =
        all && JSON_NODE_HOLDS_OBJECT(all) ? json_node_get_object(all) : NULL;
    for (const char *const *k = bs->drv->strong_opts; k && *k; k++) {
        if (allo && json_object_has_member(allo, *k)) {
            flatten_option(obj, *k, json_object_get_member(allo, *k));
        }
    }
    BdrvChild *c;
    GPtrArray *kids = g_ptr_array_new();
    LIST_FOREACH (c, &bs->children, next) {
        g_ptr_array_insert(kids, 0, c); /* attach order */
    }
    bool overridden = backing_overridden(bs);
    for (guint i = 0; i < kids->len; i++) {
        c = kids->pdata[i];
        if ((c->role & BDRV_CHILD_COW) && !overridden) {
            continue; /* the header brings it back by itself */
        }
        json_object_set_member(obj, c->name, strong_options(c->bs));
    }
    if (overridden && !bs->backing) {
        json_object_set_null_member(obj, "backing"); /* forced off */
    }
    g_ptr_array_free(kids, TRUE);
    if (all) {
        json_node_unref(all);
    }
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(n, obj);
    return n;
}

static bool has_strong_options(BlockDriverState *bs)
{
    if (!bs->options || !bs->drv->strong_opts) {
        return false;
    }
    JsonNode *all = qapi_BlockdevOptions_to_json(bs->options);
    bool found = false;
    if (all && JSON_NODE_HOLDS_OBJECT(all)) {
        JsonObject *o = json_node_get_object(all);
        for (const char *const *k = bs->drv->strong_opts; *k; k++) {
            found |= json_object_has_member(o, *k);
        }
    }
    if (all) {
        json_node_unref(all);
    }
    return found;
}

/* Fill bs->filename if the driver did not: a node without options of its
 * own reads what its primary child reads; otherwise json:{...}. */
void bdrv_refresh_filename(BlockDriverState *bs)
{
    if (bs->filename[0]) {
        return;
    }
    BdrvChild *primary = NULL, *c;
    int nchildren = 0;
    LIST_FOREACH (c, &bs->children, next) {
        if (c->role & BDRV_CHILD_COW) {
            continue; /* judged by backing_overridden() */
        }
        nchildren++;
        if (c->role & (BDRV_CHILD_PRIMARY | BDRV_CHILD_FILTERED)) {
            primary = c;
        }
    }
    /* Only a protocol child's plain name will do (or one its driver made
     * itself, like "blkdebug:CONFIG:FILE"): opening that name with this
     * driver must give the same tree (QEMU's rule). */
    if (primary && nchildren == 1 && !has_strong_options(bs) &&
        !backing_overridden(bs) && !bs->drv->is_filter &&
        (LIST_EMPTY(&primary->bs->children) ||
         primary->bs->drv->bdrv_own_filename) &&
        primary->bs->filename[0] &&
        strncmp(primary->bs->filename, "json:", 5)) {
        g_strlcpy(bs->filename, primary->bs->filename, sizeof(bs->filename));
        return;
    }
    if (bs->drv->bdrv_own_filename) {
        bs->drv->bdrv_own_filename(bs);
        if (bs->filename[0]) {
            return;
        }
    }
    JsonNode *n = strong_options(bs);
    GString *s = g_string_new("json:");
    json_append(s, n);
    json_node_unref(n);
    g_strlcpy(bs->filename, s->str, sizeof(bs->filename));
    g_string_free(s, TRUE);
}

/* ---- finding an image of a chain by file name ---- */

/* QEMU's path_has_protocol(): "proto:..." before any '/'. */
static bool has_protocol(const char *path)
{
    return path[strcspn(path, ":/")] == ':';
}

/* The directory (with its trailing '/') that relative backing file names
 * of bs are resolved against: that of the file under its primary
 * children (QEMU's bdrv_dirname), or NULL if there is no plain one. */
static char *node_dirname(BlockDriverState *bs)
{
    while (bs && !LIST_EMPTY(&bs->children)) {
        BdrvChild *c, *primary = NULL;
        LIST_FOREACH (c, &bs->children, next) {
            if (c->role & (BDRV_CHILD_PRIMARY | BDRV_CHILD_FILTERED)) {
                primary = c;
            }
        }
        if (!primary) {
            return NULL;
        }
        bs = primary->bs;
    }
    if (!bs || !bs->filename[0] || !strncmp(bs->filename, "json:", 5) ||
        has_protocol(bs->filename)) {
        return NULL;
    }
    const char *slash = strrchr(bs->filename, '/');
    return g_strndup(bs->filename, slash ? (size_t)(slash - bs->filename) + 1
                                         : 0);
}

/* name made absolute relative to bs's directory (NULL: cannot). */
static char *absolute_to(BlockDriverState *bs, const char *name)
{
    if (name[0] == '/' || has_protocol(name)) {
        return g_strdup(name);
    }
    char *dir = node_dirname(bs);
    if (!dir) {
        return NULL;
    }
    char *full = g_strconcat(dir, name, NULL);
    g_free(dir);
    return full;
}

BlockDriverState *bdrv_find_backing_image(BlockDriverState *bs,
                                          const char *name)
{
    if (!bs || !bs->drv || !name) {
        return NULL;
    }
    bool is_protocol = has_protocol(name);
    /* Filters have no file names of their own: skip them (as QEMU). */
    for (BlockDriverState *curr = bdrv_skip_filters(bs);
         curr && curr->drv && !curr->drv->is_filter && curr->backing;
         curr = bdrv_skip_filters(curr->backing->bs)) {
        BlockDriverState *below = bdrv_skip_filters(curr->backing->bs);
        if (backing_overridden(curr)) {
            /* Only the node's own name can match. */
            if (!strcmp(name, below->filename)) {
                return below;
            }
        } else if (is_protocol || has_protocol(curr->backing_file)) {
            if (!strcmp(name, curr->backing_file)) {
                return below;
            }
            g_autofree char *full = absolute_to(curr, curr->backing_file);
            if (full && !strcmp(name, full)) {
                return below;
            }
        } else {
            /* Canonical absolute paths, relative ones taken from curr's
             * directory. */
            g_autofree char *a = absolute_to(curr, name);
            g_autofree char *b = absolute_to(curr, curr->backing_file);
            g_autofree char *ra = a ? realpath(a, NULL) : NULL;
            g_autofree char *rb = b ? realpath(b, NULL) : NULL;
            if (ra && rb && !strcmp(ra, rb)) {
                return below;
            }
        }
    }
    return NULL;
}

/*
 * QEMU computes names when asked; ours are kept, so after the graph
 * changed they are computed again: an overlay's is json:{...} while its
 * options say "backing": null and it has none, the plain file name once
 * its backing node is the one its header names; a raw node's follows what
 * its file is now; the names above follow theirs.
 */
static void refresh_filenames_up(BlockDriverState *bs, int depth)
{
    if (!LIST_EMPTY(&bs->children)) {
        bs->filename[0] = 0;
        bdrv_refresh_filename(bs);
    }
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        if (c->klass->parent_is_bds && depth < 64) {
            refresh_filenames_up(c->opaque, depth + 1);
        }
    }
}

void bdrv_refresh_filenames_up(BlockDriverState *bs)
{
    refresh_filenames_up(bs, 0);
}
