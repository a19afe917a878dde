/*
 * Runtime helpers for the generated QAPI code.  The error wording and the
 * choice between a full dotted path and a bare member name follow what
 * qemu-storage-daemon 7.2 answers (see docs/qapi-codegen.md).
 */
#include "qapi/qapi-util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

static const char *const qtype_names[QTYPE__MAX] = {
    "none", "qnull", "qnum", "qstring", "qdict", "qlist", "qbool",
};

const char *QType_str(QType t)
{
    return (unsigned)t < QTYPE__MAX ? qtype_names[t] : NULL;
}

QType qapi_node_qtype(JsonNode *node)
{
    if (!node) {
        return QTYPE_NONE;
    }
    switch (JSON_NODE_TYPE(node)) {
    case JSON_NODE_OBJECT:
        return QTYPE_QDICT;
    case JSON_NODE_ARRAY:
        return QTYPE_QLIST;
    case JSON_NODE_NULL:
        return QTYPE_QNULL;
    case JSON_NODE_VALUE:
        break;
    }
    switch (json_node_get_value_type(node)) {
    case G_TYPE_STRING:
        return QTYPE_QSTRING;
    case G_TYPE_BOOLEAN:
        return QTYPE_QBOOL;
    case G_TYPE_INT64:
    case G_TYPE_DOUBLE:
        return QTYPE_QNUM;
    default:
        return QTYPE_NONE;
    }
}

bool qapi_node_is_integer(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) &&
           json_node_get_value_type(node) == G_TYPE_INT64;
}

static bool node_is_string(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) &&
           json_node_get_value_type(node) == G_TYPE_STRING;
}

/* QEMU prints a missing name (a list element) as 'null'. */
static const char *bare(const char *name)
{
    return name ? name : "null";
}

/* The top level has no path; QEMU calls it <anonymous>. */
static const char *full(const char *path)
{
    return path && *path ? path : "<anonymous>";
}

char *qapi_path_member(const char *path, const char *name)
{
    if (!path || !*path) {
        return g_strdup(name);
    }
    return g_strdup_printf("%s.%s", path, name);
}

char *qapi_path_index(const char *path, unsigned index)
{
    return g_strdup_printf("%s[%u]", path ? path : "", index);
}

void qapi_error_missing(GError **errp, const char *path, const char *name)
{
    g_autofree char *p = qapi_path_member(path, name);
    error_setg(errp, "Parameter '%s' is missing", p);
}

void qapi_error_type(GError **errp, const char *what, const char *expected)
{
    error_setg(errp, "Invalid parameter type for '%s', expected: %s", what,
               expected);
}

void qapi_error_value(GError **errp, const char *what, const char *expected)
{
    error_setg(errp, "Parameter '%s' expects %s", what, expected);
}

/* ------------------------------------------------------------ objects */

bool qapi_obj_begin(QapiObjIn *in, JsonNode *node, const char *path,
                    GError **errp)
{
    if (!node || !JSON_NODE_HOLDS_OBJECT(node)) {
        qapi_error_type(errp, full(path), "object");
        return false;
    }
    in->obj = json_node_get_object(node);
    in->path = path;
    in->used = g_hash_table_new(g_str_hash, g_str_equal);
    return true;
}

JsonNode *qapi_obj_take(QapiObjIn *in, const char *key)
{
    JsonNode *n = json_object_get_member(in->obj, key);
    if (n) {
        g_hash_table_add(in->used, (gpointer)key);
    }
    return n;
}

JsonNode *qapi_obj_peek(QapiObjIn *in, const char *key)
{
    return json_object_get_member(in->obj, key);
}

bool qapi_obj_check(QapiObjIn *in, GError **errp)
{
    if (g_hash_table_size(in->used) == json_object_get_size(in->obj)) {
        return true;
    }
    /* Report the first stray key in input order. */
    GList *keys = json_object_get_members(in->obj);
    for (GList *l = keys; l; l = l->next) {
        if (!g_hash_table_contains(in->used, l->data)) {
            g_autofree char *p = qapi_path_member(in->path, l->data);
            error_setg(errp, "Parameter '%s' is unexpected", p);
            break;
        }
    }
    g_list_free(keys);
    return false;
}

void qapi_obj_end(QapiObjIn *in)
{
    if (in->used) {
        g_hash_table_destroy(in->used);
        in->used = NULL;
    }
}

bool qapi_list_begin(JsonNode *node, const char *path, JsonArray **arr,
                     GError **errp)
{
    if (!node || !JSON_NODE_HOLDS_ARRAY(node)) {
        qapi_error_type(errp, full(path), "array");
        return false;
    }
    *arr = json_node_get_array(node);
    return true;
}

/* ------------------------------------------------------------ scalars */

bool qapi_str_parse(JsonNode *node, const char *path, const char *name,
                    bool keyval, char **out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (!node_is_string(node)) {
        qapi_error_type(errp, full(path), "string");
        return false;
    }
    *out = g_strdup(json_node_get_string(node));
    return true;
}

/*
 * strtoll/strtoull with base 0 over the whole string, as qemu_strtoi64:
 * leading white space is skipped, trailing characters are an error.
 */
static bool str_to_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end) {
        return false;
    }
    *out = v;
    return true;
}

static bool str_to_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) {
        return false;
    }
    *out = v;
    return true;
}

bool qapi_int_parse(JsonNode *node, const char *path, const char *name,
                    bool keyval, int64_t *out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (keyval && node_is_string(node)) {
        if (!str_to_i64(json_node_get_string(node), out)) {
            qapi_error_value(errp, full(path), "integer");
            return false;
        }
        return true;
    }
    if (!qapi_node_is_integer(node)) {
        qapi_error_type(errp, full(path), "integer");
        return false;
    }
    *out = json_node_get_int(node);
    return true;
}

bool qapi_int64_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, int64_t *out, GError **errp)
{
    (void)name;
    (void)keyval;
    return qapi_int_parse(node, path, name, keyval, out, errp);
}

/* Range failures name only the member, as QEMU's visit_type_intN does. */
static bool int_range(JsonNode *node, const char *path, const char *name,
                      bool keyval, int64_t min, int64_t max, const char *type,
                      int64_t *out, GError **errp)
{
    if (!qapi_int_parse(node, path, name, keyval, out, errp)) {
        return false;
    }
    if (*out < min || *out > max) {
        qapi_error_value(errp, bare(name), type);
        return false;
    }
    return true;
}

bool qapi_int8_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, int8_t *out, GError **errp)
{
    int64_t v;
    if (!int_range(node, path, name, keyval, INT8_MIN, INT8_MAX, "int8_t", &v,
                   errp)) {
        return false;
    }
    *out = (int8_t)v;
    return true;
}

bool qapi_int16_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, int16_t *out, GError **errp)
{
    int64_t v;
    if (!int_range(node, path, name, keyval, INT16_MIN, INT16_MAX, "int16_t",
                   &v, errp)) {
        return false;
    }
    *out = (int16_t)v;
    return true;
}

bool qapi_int32_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, int32_t *out, GError **errp)
{
    int64_t v;
    if (!int_range(node, path, name, keyval, INT32_MIN, INT32_MAX, "int32_t",
                   &v, errp)) {
        return false;
    }
    *out = (int32_t)v;
    return true;
}

/*
 * QEMU accepts a negative integer for an unsigned member and wraps it
 * (backward compatibility); json-glib hands values above INT64_MAX to us
 * already wrapped into negative int64, so the cast restores them.  Any
 * other failure says "expects uint64" with the full path.
 */
bool qapi_uint64_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint64_t *out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (keyval && node_is_string(node)) {
        if (!str_to_u64(json_node_get_string(node), out)) {
            qapi_error_value(errp, full(path), "integer");
            return false;
        }
        return true;
    }
    if (qapi_node_qtype(node) == QTYPE_QNUM && !qapi_node_is_integer(node)) {
        /*
         * The QMP reader turns integers beyond INT64_MAX into doubles (so
         * that json-glib does not wrap them and int64 members reject them,
         * as QEMU does); QEMU takes those up to UINT64_MAX for unsigned
         * members.  Accept values in [2^63, 2^64] (doubles that large are
         * all integral): a double cannot tell 2^64 - 1 from 2^64, so the
         * top end clamps.
         */
        double d = json_node_get_double(node);
        if (d >= 9223372036854775808.0 && d <= 18446744073709551616.0) {
            *out = d >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)d;
            return true;
        }
    }
    if (!qapi_node_is_integer(node)) {
        qapi_error_value(errp, full(path), "uint64");
        return false;
    }
    *out = (uint64_t)json_node_get_int(node);
    return true;
}

static bool uint_range(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint64_t max, const char *type,
                       uint64_t *out, GError **errp)
{
    if (!qapi_uint64_parse(node, path, name, keyval, out, errp)) {
        return false;
    }
    if (*out > max) {
        qapi_error_value(errp, bare(name), type);
        return false;
    }
    return true;
}

bool qapi_uint8_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, uint8_t *out, GError **errp)
{
    uint64_t v;
    if (!uint_range(node, path, name, keyval, UINT8_MAX, "uint8_t", &v,
                    errp)) {
        return false;
    }
    *out = (uint8_t)v;
    return true;
}

bool qapi_uint16_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint16_t *out, GError **errp)
{
    uint64_t v;
    if (!uint_range(node, path, name, keyval, UINT16_MAX, "uint16_t", &v,
                    errp)) {
        return false;
    }
    *out = (uint16_t)v;
    return true;
}

bool qapi_uint32_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint32_t *out, GError **errp)
{
    uint64_t v;
    if (!uint_range(node, path, name, keyval, UINT32_MAX, "uint32_t", &v,
                    errp)) {
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

/*
 * A byte count with an optional binary suffix (B, K, M, G, T, P, E; case
 * does not matter) and, with a suffix other than B, a decimal fraction:
 * "1.5G".  Hex is accepted without fraction or suffix.
 */
bool qapi_strtosz(const char *s, uint64_t *out)
{
    static const char suffixes[] = "BKMGTPE";
    const char *p = s;
    uint64_t whole = 0;
    double frac = 0;
    bool have_frac = false;

    while (g_ascii_isspace(*p)) {
        p++;
    }
    if (!g_ascii_isdigit(*p)) {
        return false;
    }
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        return str_to_u64(p, out);
    }
    for (; g_ascii_isdigit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (whole > (UINT64_MAX - d) / 10) {
            return false;
        }
        whole = whole * 10 + d;
    }
    if (*p == '.') {
        double scale = 0.1;
        p++;
        if (!g_ascii_isdigit(*p)) {
            return false;
        }
        for (; g_ascii_isdigit(*p); p++) {
            frac += (*p - '0') * scale;
            scale /= 10;
        }
        have_frac = true;
    }
    unsigned shift = 0;
    if (*p) {
        const char *sfx = strchr(suffixes, g_ascii_toupper(*p));
        if (!sfx || p[1]) {
            return false;
        }
        shift = 10 * (unsigned)(sfx - suffixes);
    }
    if (have_frac && shift == 0) {
        return false;
    }
    if (shift && whole > (UINT64_MAX >> shift)) {
        return false;
    }
    uint64_t v = whole << shift;
    if (have_frac) {
        double extra = frac * (double)(1ULL << shift);
        if ((double)(UINT64_MAX - v) < extra) {
            return false;
        }
        v += (uint64_t)extra;
    }
    *out = v;
    return true;
}

bool qapi_size_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, uint64_t *out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (keyval && node_is_string(node)) {
        if (!qapi_strtosz(json_node_get_string(node), out)) {
            qapi_error_value(errp, full(path), "size");
            return false;
        }
        return true;
    }
    return qapi_uint64_parse(node, path, name, false, out, errp);
}

bool qapi_str_to_bool(const char *s, bool *out)
{
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") ||
        !strcmp(s, "y")) {
        *out = true;
        return true;
    }
    if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") ||
        !strcmp(s, "n")) {
        *out = false;
        return true;
    }
    return false;
}

bool qapi_bool_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, bool *out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (keyval && node_is_string(node)) {
        if (!qapi_str_to_bool(json_node_get_string(node), out)) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'",
                       full(path));
            return false;
        }
        return true;
    }
    if (!node || !JSON_NODE_HOLDS_VALUE(node) ||
        json_node_get_value_type(node) != G_TYPE_BOOLEAN) {
        qapi_error_type(errp, full(path), "boolean");
        return false;
    }
    *out = json_node_get_boolean(node);
    return true;
}

bool qapi_number_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, double *out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (keyval && node_is_string(node)) {
        const char *s = json_node_get_string(node);
        char *end;
        errno = 0;
        double v = g_ascii_strtod(s, &end);
        if (!*s || *end || errno || !isfinite(v)) {
            qapi_error_value(errp, full(path), "number");
            return false;
        }
        *out = v;
        return true;
    }
    if (qapi_node_qtype(node) != QTYPE_QNUM) {
        qapi_error_type(errp, full(path), "number");
        return false;
    }
    *out = json_node_get_double(node);
    return true;
}

bool qapi_any_parse(JsonNode *node, const char *path, const char *name,
                    bool keyval, JsonNode **out, GError **errp)
{
    (void)name;
    (void)keyval;
    if (!node) {
        qapi_error_type(errp, full(path), "value");
        return false;
    }
    *out = json_node_copy(node);
    return true;
}

bool qapi_null_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, GError **errp)
{
    (void)name;
    (void)keyval;
    if (!node || !JSON_NODE_HOLDS_NULL(node)) {
        qapi_error_type(errp, full(path), "null");
        return false;
    }
    return true;
}

int qapi_enum_lookup(const char *const *lookup, int count, const char *s)
{
    if (!s) {
        return -1;
    }
    for (int i = 0; i < count; i++) {
        if (!strcmp(lookup[i], s)) {
            return i;
        }
    }
    return -1;
}

bool qapi_enum_parse_node(JsonNode *node, const char *path, const char *name,
                          const char *const *lookup, int count, int *out,
                          GError **errp)
{
    if (!node_is_string(node)) {
        qapi_error_type(errp, full(path), "string");
        return false;
    }
    const char *s = json_node_get_string(node);
    int v = qapi_enum_lookup(lookup, count, s);
    if (v < 0) {
        error_setg(errp, "Parameter '%s' does not accept value '%s'",
                   bare(name), s);
        return false;
    }
    *out = v;
    return true;
}

/* ------------------------------------------------------------ builders */

JsonNode *qapi_str_to_json(const char *s)
{
    return json_node_init_string(json_node_alloc(), s ? s : "");
}

JsonNode *qapi_int_to_json(int64_t v)
{
    return json_node_init_int(json_node_alloc(), v);
}

/*
 * json-glib has no unsigned integers: values above INT64_MAX go out as
 * their two's complement, which our parser (and QEMU's, for unsigned
 * members) maps back.
 */
JsonNode *qapi_uint_to_json(uint64_t v)
{
    return json_node_init_int(json_node_alloc(), (int64_t)v);
}

JsonNode *qapi_bool_to_json(bool v)
{
    return json_node_init_boolean(json_node_alloc(), v);
}

JsonNode *qapi_number_to_json(double v)
{
    return json_node_init_double(json_node_alloc(), v);
}

JsonNode *qapi_null_to_json(void)
{
    return json_node_init_null(json_node_alloc());
}

JsonNode *qapi_any_to_json(const JsonNode *v)
{
    return v ? json_node_copy((JsonNode *)v) : qapi_null_to_json();
}

JsonNode *qapi_object_to_json(JsonObject *o)
{
    JsonNode *n = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    return n;
}

JsonNode *qapi_empty_object_node(void)
{
    return qapi_object_to_json(json_object_new());
}

JsonNode *qapi_any_clone(const JsonNode *v)
{
    return v ? json_node_copy((JsonNode *)v) : NULL;
}

void qapi_any_free(JsonNode *v)
{
    if (v) {
        json_node_unref(v);
    }
}

bool qapi_check_no_args(JsonNode *args, GError **errp)
{
    QapiObjIn in;
    if (!args) {
        return true;
    }
    if (!qapi_obj_begin(&in, args, "", errp)) {
        return false;
    }
    bool ok = qapi_obj_check(&in, errp);
    qapi_obj_end(&in);
    return ok;
}
