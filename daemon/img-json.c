/*
 * JSON as qemu-img prints it (qobject_to_json_pretty): four spaces per
 * level, "key": value, members in QDict order (the monitor's order, see
 * json_object_qmp_members()), strings with non-ASCII escaped as \uXXXX.
 */
#include <inttypes.h>
#include <string.h>

#include "daemon/img.h"
#include "util/json-stream.h"

static void newline(GString *out, int indent)
{
    g_string_append_c(out, '\n');
    for (int i = 0; i < indent; i++) {
        g_string_append(out, "    ");
    }
}

static void put_string(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (const char *p = s; *p;) {
        gunichar cp = g_utf8_get_char_validated(p, -1);
        const char *next;

        if (cp == (gunichar)-1 || cp == (gunichar)-2) {
            cp = 0xFFFD; /* invalid UTF-8: the replacement character */
            next = p + 1;
        } else {
            next = g_utf8_next_char(p);
        }
        switch (cp) {
        case '"':
            g_string_append(out, "\\\"");
            break;
        case '\\':
            g_string_append(out, "\\\\");
            break;
        case '\b':
            g_string_append(out, "\\b");
            break;
        case '\f':
            g_string_append(out, "\\f");
            break;
        case '\n':
            g_string_append(out, "\\n");
            break;
        case '\r':
            g_string_append(out, "\\r");
            break;
        case '\t':
            g_string_append(out, "\\t");
            break;
        default:
            if (cp > 0xFFFF) {
                cp -= 0x10000;
                g_string_append_printf(out, "\\u%04X\\u%04X",
                                       0xD800 + (cp >> 10),
                                       0xDC00 + (cp & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                g_string_append_printf(out, "\\u%04X", cp);
            } else {
                g_string_append_c(out, (char)cp);
            }
        }
        p = next;
    }
    g_string_append_c(out, '"');
}

static void put_value(GString *out, JsonNode *node)
{
    switch (json_node_get_value_type(node)) {
    case G_TYPE_INT64:
        g_string_append_printf(out, "%" PRId64, json_node_get_int(node));
        break;
    case G_TYPE_BOOLEAN:
        g_string_append(out, json_node_get_boolean(node) ? "true" : "false");
        break;
    case G_TYPE_DOUBLE:
        /* QEMU prints numbers with 17 significant digits. */
        g_string_append_printf(out, "%.17g", json_node_get_double(node));
        break;
    case G_TYPE_STRING:
        put_string(out, json_node_get_string(node));
        break;
    default:
        g_string_append(out, "null");
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
            put_string(out, names[i]);
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
        put_value(out, node);
    }
}

char *img_json_pretty(JsonNode *node)
{
    GString *out = g_string_new(NULL);

    put_node(out, node, 0);
    return g_string_free(out, FALSE);
}
