/*
 * Runtime helpers for the code qapi/gen.py generates: JSON input cursors,
 * the builtin scalar parsers and builders, and the error messages QEMU's
 * QObject input visitor produces (same wording, same dotted paths), so a
 * client sees the same refusal from blockd as from qemu-storage-daemon.
 *
 * Conventions of the parse functions:
 *   path  - full dotted path of the value ("" for the top level), used by
 *           "missing", "unexpected" and "invalid type" messages;
 *   name  - the bare member name (NULL for list elements and the top),
 *           used where QEMU reports only the member name ("does not accept
 *           value", integer range, alternate type): NULL prints as 'null';
 *   keyval- the value comes from a command-line key=value string: scalars
 *           arrive as strings and are converted.
 * They return false with *errp set, leaving *out untouched or freeable.
 */
#ifndef QAPI_QAPI_UTIL_H
#define QAPI_QAPI_UTIL_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <stdint.h>

/* The JSON type of a value, as QEMU names them (alternates use this). */
typedef enum QType {
    QTYPE_NONE,
    QTYPE_QNULL,
    QTYPE_QNUM,
    QTYPE_QSTRING,
    QTYPE_QDICT,
    QTYPE_QLIST,
    QTYPE_QBOOL,
    QTYPE__MAX,
} QType;

const char *QType_str(QType t);
QType qapi_node_qtype(JsonNode *node);      /* QTYPE_NONE for NULL */
bool qapi_node_is_integer(JsonNode *node);  /* a JSON number w/o fraction */

/* Reading the members of one JSON object. */
typedef struct QapiObjIn {
    JsonObject *obj;
    const char *path;
    GHashTable *used; /* keys taken so far */
} QapiObjIn;

/* Type error "expected: object" unless node is an object. */
bool qapi_obj_begin(QapiObjIn *in, JsonNode *node, const char *path,
                    GError **errp);
/* The member named key (marked as used), or NULL when absent. */
JsonNode *qapi_obj_take(QapiObjIn *in, const char *key);
/* The member named key without marking it (for discriminators). */
JsonNode *qapi_obj_peek(QapiObjIn *in, const char *key);
/* Fails with "Parameter 'path.key' is unexpected" for an unused key. */
bool qapi_obj_check(QapiObjIn *in, GError **errp);
/* Release the cursor (always, after begin succeeded). */
void qapi_obj_end(QapiObjIn *in);

/* "a" + "b" -> "a.b"; "" + "b" -> "b" */
char *qapi_path_member(const char *path, const char *name);
/* "a" + 3 -> "a[3]" */
char *qapi_path_index(const char *path, unsigned index);

void qapi_error_missing(GError **errp, const char *path, const char *name);
/* "Invalid parameter type for 'what', expected: expected" */
void qapi_error_type(GError **errp, const char *what, const char *expected);
/* "Parameter 'what' expects expected" */
void qapi_error_value(GError **errp, const char *what, const char *expected);

/* Type error "expected: array" unless node is an array. */
bool qapi_list_begin(JsonNode *node, const char *path, JsonArray **arr,
                     GError **errp);

/* Builtin parsers: one per QAPI builtin type. */
bool qapi_str_parse(JsonNode *node, const char *path, const char *name,
                    bool keyval, char **out, GError **errp);
bool qapi_int_parse(JsonNode *node, const char *path, const char *name,
                    bool keyval, int64_t *out, GError **errp);
bool qapi_int64_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, int64_t *out, GError **errp);
bool qapi_int8_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, int8_t *out, GError **errp);
bool qapi_int16_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, int16_t *out, GError **errp);
bool qapi_int32_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, int32_t *out, GError **errp);
bool qapi_uint8_parse(JsonNode *node, const char *path, const char *name,
                      bool keyval, uint8_t *out, GError **errp);
bool qapi_uint16_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint16_t *out, GError **errp);
bool qapi_uint32_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint32_t *out, GError **errp);
bool qapi_uint64_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, uint64_t *out, GError **errp);
bool qapi_size_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, uint64_t *out, GError **errp);
bool qapi_bool_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, bool *out, GError **errp);
bool qapi_number_parse(JsonNode *node, const char *path, const char *name,
                       bool keyval, double *out, GError **errp);
bool qapi_any_parse(JsonNode *node, const char *path, const char *name,
                    bool keyval, JsonNode **out, GError **errp);
bool qapi_null_parse(JsonNode *node, const char *path, const char *name,
                     bool keyval, GError **errp);
/* An enum value: a string that is one of lookup[0..count-1]. */
bool qapi_enum_parse_node(JsonNode *node, const char *path, const char *name,
                          const char *const *lookup, int count, int *out,
                          GError **errp);
/* Index of s in lookup, or -1. */
int qapi_enum_lookup(const char *const *lookup, int count, const char *s);

/* Converters used on keyval strings (exposed for tests and the CLI). */
bool qapi_strtosz(const char *s, uint64_t *out);
bool qapi_str_to_bool(const char *s, bool *out);

/* Builders. */
JsonNode *qapi_str_to_json(const char *s);  /* NULL -> "" */
JsonNode *qapi_int_to_json(int64_t v);
JsonNode *qapi_uint_to_json(uint64_t v);
JsonNode *qapi_bool_to_json(bool v);
JsonNode *qapi_number_to_json(double v);
JsonNode *qapi_any_to_json(const JsonNode *v); /* deep copy; NULL -> null */
JsonNode *qapi_null_to_json(void);
JsonNode *qapi_object_to_json(JsonObject *o); /* takes the reference */
JsonNode *qapi_empty_object_node(void);
JsonNode *qapi_any_clone(const JsonNode *v);  /* NULL-safe deep copy */
void qapi_any_free(JsonNode *v);               /* NULL-safe */

/*
 * Building TList values: prepend to a list, or append through a tail
 * pointer that starts as &head:
 *     BlockExportInfoList *head = NULL, **tail = &head;
 *     QAPI_LIST_APPEND(tail, info);
 */
#define QAPI_LIST_PREPEND(list, element)                      \
    do {                                                      \
        __typeof__(list) qapi_new_ = g_malloc0(sizeof(*(list))); \
        qapi_new_->value = (element);                         \
        qapi_new_->next = (list);                             \
        (list) = qapi_new_;                                   \
    } while (0)

#define QAPI_LIST_APPEND(tail, element)                       \
    do {                                                      \
        *(tail) = g_malloc0(sizeof(**(tail)));                \
        (*(tail))->value = (element);                         \
        (tail) = &(*(tail))->next;                            \
    } while (0)

/* Commands without 'data': args must be NULL or an empty object. */
bool qapi_check_no_args(JsonNode *args, GError **errp);

#endif
