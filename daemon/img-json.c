/*
 * JSON as qemu-img prints it (qobject_to_json_pretty): four spaces per
 * level, "key": value, members in QDict order (the monitor's order, see
 * json_object_qmp_members()), strings with non-ASCII escaped as \uXXXX.
 */
#include "daemon/img.h"
#include "util/json-stream.h"

static void newline(GString *out, int indent)
{
    g_string_append_c(out, '\n');
    for (int i = 0; i < indent; i++) {
        g_string_append(out, "    ");
    }
}

static void put_node(GString *out, JsonNode *node, int indent)
{
    if (!node || JSON_NODE_HOLDS_NULL(node)) {
        g_string_append(out, "null");
        return;
    }
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        JsonObject *obj = json_node_get_object(node);
        const char **names = json_object_qmp_members(obj);

        g_string_append_c(out, '{');
        for (int i = 0; names[i]; i++) {
            if (i) {
                g_string_append_c(out, ',');
            }
            newline(out, indent + 1);
            json_put_string(out, names[i]);
            g_string_append(out, ": ");
            put_node(out, json_object_get_member(obj, names[i]), indent + 1);
        }
        newline(out, indent);
        g_string_append_c(out, '}');
        g_free(names);
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *arr = json_node_get_array(node);
        guint n = json_array_get_length(arr);

        g_string_append_c(out, '[');
        for (guint i = 0; i < n; i++) {
            if (i) {
                g_string_append_c(out, ',');
            }
            newline(out, indent + 1);
            put_node(out, json_array_get_element(arr, i), indent + 1);
        }
        newline(out, indent);
        g_string_append_c(out, ']');
    } else {
        json_put_scalar(out, node);
    }
}

char *img_json_pretty(JsonNode *node)
{
    GString *out = g_string_new(NULL);

    put_node(out, node, 0);
    return g_string_free(out, FALSE);
}
