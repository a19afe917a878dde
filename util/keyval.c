/*
 * keyval: QEMU's KEY=VALUE,... command-line syntax, parsed into JSON.
 *
 * Grammar (as qemu-storage-daemon 7.2 accepts it):
 *
 *   key-vals     = [ key-val { ',' key-val } [ ',' ] ]
 *   key-val      = key '=' val
 *   key          = fragment { '.' fragment }
 *   fragment     = qapi-name | index        (index never first)
 *   qapi-name    = [ '__' [A-Za-z0-9.-]+ '_' ] [A-Za-z] [A-Za-z0-9_-]*
 *   index        = [0-9]+
 *   val          = { [^,] | ',,' }
 *
 * With an implied key, the first element may be a bare value (up to the
 * first ',' or '=', no ',,' escape), meaning implied-key=value.
 *
 * Semantics: every key is a path from the root object to a string leaf.
 * A level whose keys are all indexes becomes an array; its indexes must
 * cover 0..n-1.  A path used both as a leaf and as an inner node, or a
 * level mixing indexes and names, is an error.  When the same leaf is
 * given twice the last value wins (qemu-storage-daemon does the same:
 * "driver=file,driver=raw" opens a raw node).
 *
 * Error messages are QEMU's, word for word, since users and scripts see
 * them.
 */
#include "util/keyval.h"

#include <limits.h>
#include <string.h>

#include "util/error.h"

/* QEMU keeps fragments in a 128-byte buffer: 127 characters at most. */
#define KEYVAL_FRAGMENT_MAX 127

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_alpha(c) || is_digit(c);
}

/*
 * Length of the QAPI name at the start of s, or 0 if there is none.  A
 * downstream-extension prefix "__RFQDN_" may contain dots, which is why
 * this is scanned on the raw text rather than on '.'-split fragments.
 */
static size_t qapi_name_len(const char *s)
{
    const char *p = s;

    if (*p == '_') {
        p++;
        if (*p != '_') {
            return 0;
        }
        p++;
        while (is_alnum(*p) || *p == '-' || *p == '.') {
            p++;
        }
        if (*p != '_') {
            return 0;
        }
        p++;
    }
    if (!is_alpha(*p)) {
        return 0;
    }
    p++;
    while (is_alnum(*p) || *p == '-' || *p == '_') {
        p++;
    }
    return p - s;
}

static size_t index_len(const char *s)
{
    size_t n = 0;

    while (is_digit(s[n])) {
        n++;
    }
    return n;
}

/* The array index a member name denotes, or -1 if it is not all digits.
 * Huge numbers saturate at INT_MAX (they can never be gap-free anyway). */
static int key_to_index(const char *key)
{
    long long v = 0;

    if (!*key) {
        return -1;
    }
    for (const char *p = key; *p; p++) {
        if (!is_digit(*p)) {
            return -1;
        }
        if (v < INT_MAX) {
            v = v * 10 + (*p - '0');
        }
    }
    return v > INT_MAX ? INT_MAX : (int)v;
}

/*
 * Make cur[name] an object (value == NULL) or the string `value`.  An
 * existing member of the other kind is the inconsistency QEMU reports
 * with the key up to key_cursor.  Returns the member's object when asked
 * for one, cur itself when a string was stored, NULL on error.
 */
static JsonObject *put_member(JsonObject *cur, const char *name,
                              const char *value, const char *key,
                              const char *key_cursor, GError **errp)
{
    JsonNode *old = json_object_get_member(cur, name);

    if (old) {
        bool want_object = value == NULL;
        bool is_object = JSON_NODE_HOLDS_OBJECT(old);

        if (want_object != is_object) {
            error_setg(errp, "Parameters '%.*s.*' used inconsistently",
                       (int)(key_cursor - key), key);
            return NULL;
        }
        if (want_object) {
            return json_node_get_object(old);
        }
    }
    if (value) {
        json_object_set_string_member(cur, name, value);
        return cur;
    }
    JsonObject *obj = json_object_new();
    json_object_set_object_member(cur, name, obj); /* takes the reference */
    return obj;
}

/*
 * Parse the key-val at params into root.  Returns where the next one
 * starts (possibly at the terminating NUL), or NULL with errp set.
 */
static const char *parse_one(JsonObject *root, const char *params,
                             const char *implied_key, GError **errp)
{
    const char *key = params;
    const char *val_end = NULL;
    size_t len = strcspn(params, "=,");

    if (implied_key && len && params[len] != '=') {
        key = implied_key;
        val_end = params + len;
        len = strlen(implied_key);
    }
    const char *key_end = key + len;

    /*
     * Walk the fragments.  `cur` is the object the previous fragment
     * (held in `frag`) belongs to; it is only descended into once we know
     * another fragment follows.
     */
    JsonObject *cur = root;
    char frag[KEYVAL_FRAGMENT_MAX + 1];
    const char *s = key;

    for (;;) {
        size_t flen = (s != key && is_digit(*s)) ? index_len(s)
                                                   : qapi_name_len(s);

        if (!flen || s + flen > key_end ||
            (s + flen < key_end && s[flen] != '.')) {
            error_setg(errp, "Invalid parameter '%.*s'",
                       (int)(key_end - key), key);
            return NULL;
        }
        if (flen > KEYVAL_FRAGMENT_MAX) {
            bool partial = s != key || s + flen != key_end;
            error_setg(errp, "Parameter%s '%.*s' is too long",
                       partial ? " fragment" : "", (int)flen, s);
            return NULL;
        }
        if (s != key) {
            cur = put_member(cur, frag, NULL, key, s - 1, errp);
            if (!cur) {
                return NULL;
            }
        }
        memcpy(frag, s, flen);
        frag[flen] = '\0';
        s += flen;
        if (*s != '.' || s >= key_end) {
            break;
        }
        s++;
    }

    GString *val = g_string_new(NULL);
    if (val_end) {
        /* The implied value: no ',,' escape (QEMU 7.2 behaves the same). */
        g_string_append_len(val, params, val_end - params);
        s = val_end;
        if (*s == ',') {
            s++;
        }
    } else {
        if (*s != '=') {
            error_setg(errp, "Expected '=' after parameter '%.*s'",
                       (int)(s - key), key);
            g_string_free(val, TRUE);
            return NULL;
        }
        s++;
        for (;;) {
            if (!*s) {
                break;
            }
            if (*s == ',') {
                s++;
                if (*s != ',') {
                    break;
                }
            }
            g_string_append_c(val, *s++);
        }
    }

    JsonObject *ok = put_member(cur, frag, val->str, key, key_end, errp);
    g_string_free(val, TRUE);
    return ok ? s : NULL;
}

/* "a.b." for the path [a, b] (path holds fragments root first). */
static char *path_prefix(GPtrArray *path)
{
    GString *s = g_string_new(NULL);

    for (guint i = 0; i < path->len; i++) {
        g_string_append(s, g_ptr_array_index(path, i));
        g_string_append_c(s, '.');
    }
    return g_string_free(s, FALSE);
}

static JsonNode *listify(JsonObject *obj, GPtrArray *path, GError **errp);

/*
 * Turn every object below obj whose members are all indexes into an
 * array, depth first.  Returns a new reference to obj's replacement (an
 * array node) or to an object node holding obj, or NULL with errp set.
 */
static JsonNode *listify(JsonObject *obj, GPtrArray *path, GError **errp)
{
    bool has_index = false, has_name = false;
    /*
     * Copies of the names in insertion order: replacing a member below
     * frees the object's own copy of its name.
     */
    GList *members = json_object_get_members(obj);
    for (GList *l = members; l; l = l->next) {
        l->data = g_strdup(l->data);
    }

    for (GList *l = members; l; l = l->next) {
        const char *name = l->data;
        JsonNode *child = json_object_get_member(obj, name);

        if (key_to_index(name) >= 0) {
            has_index = true;
        } else {
            has_name = true;
        }
        if (!JSON_NODE_HOLDS_OBJECT(child)) {
            continue;
        }
        g_ptr_array_add(path, (gpointer)name);
        JsonNode *repl = listify(json_node_get_object(child), path, errp);
        g_ptr_array_remove_index(path, path->len - 1);
        if (!repl) {
            g_list_free_full(members, g_free);
            return NULL;
        }
        if (JSON_NODE_HOLDS_ARRAY(repl)) {
            /* Replacing keeps the member's position in the object. */
            json_object_set_member(obj, name, repl);
        } else {
            json_node_unref(repl);
        }
    }

    if (has_index && has_name) {
        g_autofree char *prefix = path_prefix(path);
        error_setg(errp, "Parameters '%s*' used inconsistently", prefix);
        g_list_free_full(members, g_free);
        return NULL;
    }
    if (!has_index) {
        g_list_free_full(members, g_free);
        return json_node_init_object(json_node_alloc(), obj); /* refs obj */
    }

    /*
     * n members can only be gap-free if every index is below n; any
     * index at or above n means some index below it is missing, and the
     * smallest missing one is what QEMU reports.
     */
    guint n = g_list_length(members);
    JsonNode **elt = g_new0(JsonNode *, n);
    int max_index = -1;
    for (GList *l = members; l; l = l->next) {
        int idx = key_to_index(l->data);
        if (idx > max_index) {
            max_index = idx;
        }
        if ((guint)idx < n) {
            /* "0" and "00" name the same element: the later one wins. */
            elt[idx] = json_object_get_member(obj, l->data);
        }
    }
    g_list_free_full(members, g_free);

    JsonArray *arr = json_array_sized_new(n);
    for (int i = 0; i <= max_index; i++) {
        if ((guint)i >= n || !elt[i]) {
            g_autofree char *prefix = path_prefix(path);
            error_setg(errp, "Parameter '%s%d' missing", prefix, i);
            json_array_unref(arr);
            g_free(elt);
            return NULL;
        }
        json_array_add_element(arr, json_node_ref(elt[i]));
    }
    g_free(elt);
    JsonNode *node = json_node_init_array(json_node_alloc(), arr);
    json_array_unref(arr); /* the node took its own reference */
    return node;
}

JsonNode *keyval_parse(const char *params, const char *implied_key,
                       GError **errp)
{
    JsonObject *root = json_object_new();
    const char *s = params;

    while (*s) {
        s = parse_one(root, s, implied_key, errp);
        if (!s) {
            json_object_unref(root);
            return NULL;
        }
        implied_key = NULL;
    }

    GPtrArray *path = g_ptr_array_new();
    JsonNode *node = listify(root, path, errp);
    g_ptr_array_free(path, TRUE);
    json_object_unref(root); /* node (if any) holds its own reference */
    return node;
}
