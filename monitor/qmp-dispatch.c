/*
 * One QMP request in, one reply out: validation of the request envelope,
 * capability negotiation state, lookup in the generated command table,
 * and the reply envelope.  Argument validation belongs to the generated
 * wrappers, so every command rejects bad arguments the same way.
 */
#include <string.h>

#include "monitor/monitor-internal.h"
#include "monitor/monitor.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"
#include "util/json-stream.h"

static void run_command(const QmpCommand *cmd, JsonNode *args,
                        JsonNode **ret, GError **errp)
{
    cmd->fn(args, ret, errp);
}

static QmpCommandRunner *runner = run_command;

void qmp_dispatch_set_runner(QmpCommandRunner *r)
{
    runner = r ? r : run_command;
}

static JsonNode *error_node(const GError *err)
{
    JsonObject *e = json_object_new();
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);

    json_object_set_string_member(e, "class", error_class_name(err));
    json_object_set_string_member(e, "desc", err->message);
    json_node_take_object(n, e);
    return n;
}

static JsonNode *reply(JsonNode *ret, const GError *err, JsonNode *id)
{
    JsonObject *o = json_object_new();
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);

    if (err) {
        json_object_set_member(o, "error", error_node(err));
    } else {
        json_object_set_member(o, "return", ret);
    }
    if (id) {
        json_object_set_member(o, "id", json_node_copy(id));
    }
    json_node_take_object(n, o);
    return n;
}

JsonNode *qmp_error_reply(const GError *err)
{
    return reply(NULL, err, NULL);
}

/* Did a successful qmp_capabilities ask for "oob"? */
static bool wants_oob(JsonNode *args)
{
    JsonNode *en;
    JsonArray *a;

    if (!args || !JSON_NODE_HOLDS_OBJECT(args)) {
        return false;
    }
    en = json_object_get_member(json_node_get_object(args), "enable");
    if (!en || !JSON_NODE_HOLDS_ARRAY(en)) {
        return false;
    }
    a = json_node_get_array(en);
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonNode *e = json_array_get_element(a, i);

        if (JSON_NODE_HOLDS_VALUE(e) &&
            json_node_get_value_type(e) == G_TYPE_STRING &&
            !strcmp(json_node_get_string(e), "oob")) {
            return true;
        }
    }
    return false;
}

static bool is_string(JsonNode *n)
{
    return JSON_NODE_HOLDS_VALUE(n) &&
           json_node_get_value_type(n) == G_TYPE_STRING;
}

/*
 * Check the envelope.  Members are checked in QEMU's dict order so that
 * with several faults the same one is reported.
 */
static bool check_envelope(JsonObject *obj, const QmpState *st,
                           const char **name, bool *oob, JsonNode **args,
                           GError **errp)
{
    const char **members = json_object_qmp_members(obj);
    const char *exec = NULL, *exec_oob = NULL;
    bool ok = false;

    *args = NULL;
    for (int i = 0; members[i]; i++) {
        const char *m = members[i];
        JsonNode *v = json_object_get_member(obj, m);

        if (!strcmp(m, "execute")) {
            if (!is_string(v)) {
                error_setg(errp, "QMP input member 'execute' must be a "
                           "string");
                goto out;
            }
            exec = json_node_get_string(v);
        } else if (!strcmp(m, "exec-oob") && st->oob) {
            if (!is_string(v)) {
                error_setg(errp, "QMP input member 'exec-oob' must be a "
                           "string");
                goto out;
            }
            exec_oob = json_node_get_string(v);
        } else if (!strcmp(m, "arguments")) {
            if (!JSON_NODE_HOLDS_OBJECT(v)) {
                error_setg(errp, "QMP input member 'arguments' must be an "
                           "object");
                goto out;
            }
            *args = v;
        } else if (strcmp(m, "id") != 0) {
            error_setg(errp, "QMP input member '%s' is unexpected", m);
            goto out;
        }
    }
    if (exec && exec_oob) {
        error_setg(errp, "QMP input member 'execute' clashes with "
                   "'exec-oob'");
        goto out;
    }
    if (!exec && !exec_oob) {
        error_setg(errp, "QMP input lacks member 'execute'");
        goto out;
    }
    *name = exec ? exec : exec_oob;
    *oob = exec_oob != NULL;
    ok = true;
out:
    g_free(members);
    return ok;
}

JsonNode *coroutine_fn qmp_dispatch_state(JsonNode *request, QmpState *st)
{
    GError *err = NULL;
    JsonObject *obj;
    JsonNode *id, *args = NULL, *ret = NULL, *res;
    const QmpCommand *cmd;
    const char *name;
    bool oob;
    bool is_caps;

    if (!request || !JSON_NODE_HOLDS_OBJECT(request)) {
        error_setg(&err, "QMP input must be a JSON object");
        res = reply(NULL, err, NULL);
        g_error_free(err);
        return res;
    }
    obj = json_node_get_object(request);
    /* Keep our own reference: a command may yield, the id must survive. */
    json_object_ref(obj);
    id = json_object_get_member(obj, "id");

    if (!check_envelope(obj, st, &name, &oob, &args, &err)) {
        goto done;
    }
    cmd = qmp_find_command(name);
    is_caps = !strcmp(name, "qmp_capabilities");
    if (!st->negotiated && (!cmd || !is_caps)) {
        error_set(&err, ERROR_CLASS_COMMAND_NOT_FOUND,
                  "Expecting capabilities negotiation with "
                  "'qmp_capabilities'");
        goto done;
    }
    if (!cmd) {
        error_set(&err, ERROR_CLASS_COMMAND_NOT_FOUND,
                  "The command %s has not been found", name);
        goto done;
    }
    if (oob && !cmd->allow_oob) {
        error_setg(&err, "The command %s does not support OOB", name);
        goto done;
    }
    if (st->negotiated && is_caps) {
        error_set(&err, ERROR_CLASS_COMMAND_NOT_FOUND,
                  "Capabilities negotiation is already complete, command "
                  "ignored");
        goto done;
    }

    runner(cmd, args, &ret, &err);
    if (err) {
        if (ret) {
            json_node_unref(ret);
            ret = NULL;
        }
    } else {
        if (!ret) {
            /* Commands without a return value reply with {}. */
            ret = json_node_new(JSON_NODE_OBJECT);
            json_node_take_object(ret, json_object_new());
        }
        if (is_caps) {
            st->negotiated = true;
            st->oob = wants_oob(args);
        }
    }

done:
    res = reply(ret, err, id);
    if (err) {
        g_error_free(err);
    }
    json_object_unref(obj);
    return res;
}

JsonNode *coroutine_fn qmp_dispatch(JsonNode *request, bool *negotiated)
{
    QmpState st = { .negotiated = *negotiated, .oob = false };
    JsonNode *res = qmp_dispatch_state(request, &st);

    *negotiated = st.negotiated;
    return res;
}

GBytes *qmp_encode_line(JsonNode *msg)
{
    char *txt = json_to_string_compact(msg);
    size_t len = strlen(txt);
    char *line = g_realloc(txt, len + 3);

    /* QEMU ends every line it sends with CRLF. */
    memcpy(line + len, "\r\n", 3);
    return g_bytes_new_take(line, len + 2);
}
