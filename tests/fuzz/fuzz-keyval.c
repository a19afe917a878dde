/*
 * libFuzzer target for keyval_parse(): any byte string, with and without
 * an implied key, must either parse into a JSON object whose leaves are
 * strings or fail with an error; never both, never neither, no leaks.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "util/keyval.h"

static void check_tree(JsonNode *node)
{
    switch (JSON_NODE_TYPE(node)) {
    case JSON_NODE_OBJECT: {
        JsonObject *obj = json_node_get_object(node);
        GList *members = json_object_get_values(obj);
        for (GList *l = members; l; l = l->next) {
            check_tree(l->data);
        }
        g_list_free(members);
        break;
    }
    case JSON_NODE_ARRAY: {
        JsonArray *arr = json_node_get_array(node);
        guint n = json_array_get_length(arr);
        if (n == 0) {
            __builtin_trap(); /* keyval cannot denote an empty array */
        }
        for (guint i = 0; i < n; i++) {
            check_tree(json_array_get_element(arr, i));
        }
        break;
    }
    case JSON_NODE_VALUE:
        if (json_node_get_value_type(node) != G_TYPE_STRING) {
            __builtin_trap();
        }
        break;
    default:
        __builtin_trap();
    }
}

static void run(const char *params, const char *implied)
{
    GError *err = NULL;
    JsonNode *node = keyval_parse(params, implied, &err);

    if (!node == !err) {
        __builtin_trap();
    }
    if (node) {
        if (!JSON_NODE_HOLDS_OBJECT(node)) {
            __builtin_trap();
        }
        check_tree(node);
        json_node_unref(node);
    } else {
        g_error_free(err);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *params = g_strndup((const char *)data, size); /* stops at NUL */

    run(params, NULL);
    run(params, "driver");
    g_free(params);
    return 0;
}
