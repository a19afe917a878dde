/*
 * libFuzzer target for the QMP input path: the stream splitter (fed in
 * chunks whose sizes come from the input, so every framing boundary gets
 * exercised), the request envelope checks, negotiation, the generated
 * argument parsers, the reply serialiser, and json_parse_text().  Oracle:
 * the framing events must be the same as when the bytes come in one piece.
 *
 * Only commands without effects outside the process run for real
 * (qmp_capabilities and query-*); every other command only has its
 * arguments parsed by the generated parser, so the fuzzer cannot create
 * files, listen on sockets or exit.
 *
 * Input layout: byte 0 chooses the session's initial state (bit 0:
 * already negotiated, bit 1: oob enabled) and seeds the chunk sizes; the
 * rest is the byte stream a client would send.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz-qmp-table.h"
#include "monitor/monitor-internal.h"
#include "monitor/monitor.h"
#include "qapi/qapi-commands.h"
#include "util/coroutine.h"
#include "util/json-stream.h"

typedef struct FuzzSession {
    QmpState st;
    GQueue pending; /* of JsonNode * */
    GPtrArray *trace; /* every framing event as text, for the oracle */
} FuzzSession;

/*
 * json-glib's own writer, not ours: ours prints recently seen big integer
 * literals, which would differ between the two runs.
 */
static void trace_msg(GPtrArray *trace, JsonNode *msg)
{
    JsonGenerator *gen = json_generator_new();

    json_generator_set_root(gen, msg);
    g_ptr_array_add(trace, json_generator_to_data(gen, NULL));
    g_object_unref(gen);
}

static void trace_err(GPtrArray *trace, const GError *err)
{
    g_ptr_array_add(trace, g_strconcat("error: ", err->message, NULL));
}

static bool side_effect_free(const char *name)
{
    return !strcmp(name, "qmp_capabilities") ||
           g_str_has_prefix(name, "query-");
}

static void fuzz_runner(const QmpCommand *cmd, JsonNode *args,
                        JsonNode **ret, GError **errp)
{
    if (side_effect_free(cmd->name)) {
        cmd->fn(args, ret, errp);
        return;
    }
    for (int i = 0; fuzz_arg_parsers[i].name; i++) {
        if (!strcmp(fuzz_arg_parsers[i].name, cmd->name)) {
            fuzz_arg_parsers[i].parse(args, errp);
            return;
        }
    }
}

static void on_msg(void *opaque, JsonNode *msg)
{
    FuzzSession *fs = opaque;

    trace_msg(fs->trace, msg);
    g_queue_push_tail(&fs->pending, msg);
}

static void on_err(void *opaque, const GError *err)
{
    FuzzSession *fs = opaque;
    JsonNode *reply = qmp_error_reply(err);
    GBytes *line = qmp_encode_line(reply);

    trace_err(fs->trace, err);
    g_bytes_unref(line);
    json_node_unref(reply);
}

/* The same bytes in one piece, for the oracle. */
static void whole_msg(void *opaque, JsonNode *msg)
{
    trace_msg(opaque, msg);
    json_node_unref(msg);
}

static void whole_err(void *opaque, const GError *err)
{
    trace_err(opaque, err);
}

typedef struct DispatchArgs {
    FuzzSession *fs;
    JsonNode *msg;
} DispatchArgs;

static void coroutine_fn dispatch_co(void *opaque)
{
    DispatchArgs *d = opaque;
    JsonNode *reply = qmp_dispatch_state(d->msg, &d->fs->st);
    GBytes *line = qmp_encode_line(reply); /* exercises the serialiser */

    g_bytes_unref(line);
    json_node_unref(reply);
}

static void run_pending(FuzzSession *fs)
{
    JsonNode *msg;

    while ((msg = g_queue_pop_head(&fs->pending))) {
        DispatchArgs d = { .fs = fs, .msg = msg };

        coroutine_run_sync(dispatch_co, &d);
        json_node_unref(msg);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzSession fs = { 0 };
    JsonStream *js;
    uint32_t rng;
    size_t pos = 1;

    if (size < 1) {
        return 0;
    }
    qmp_dispatch_set_runner(fuzz_runner);
    fs.st.negotiated = data[0] & 1;
    fs.st.oob = (data[0] & 2) && fs.st.negotiated;
    g_queue_init(&fs.pending);
    fs.trace = g_ptr_array_new_with_free_func(g_free);
    rng = 0x9e3779b9u ^ data[0];
    /* Small limits reach the limit paths with small inputs. */
    js = json_stream_new(4096, 16, on_msg, on_err, &fs);

    while (pos < size) {
        size_t chunk;

        rng = rng * 1103515245u + 12345u;
        chunk = 1 + (rng >> 16) % 64;
        if (chunk > size - pos) {
            chunk = size - pos;
        }
        json_stream_feed(js, (const char *)data + pos, chunk);
        pos += chunk;
        run_pending(&fs);
    }
    json_stream_flush(js);
    run_pending(&fs);
    json_stream_free(js);

    /* Oracle: framing must not depend on how the bytes were split. */
    {
        GPtrArray *whole = g_ptr_array_new_with_free_func(g_free);

        js = json_stream_new(4096, 16, whole_msg, whole_err, whole);
        json_stream_feed(js, (const char *)data + 1, size - 1);
        json_stream_flush(js);
        json_stream_free(js);
        if (whole->len != fs.trace->len) {
            __builtin_trap();
        }
        for (guint i = 0; i < whole->len; i++) {
            if (strcmp(whole->pdata[i], fs.trace->pdata[i]) != 0) {
                __builtin_trap();
            }
        }
        g_ptr_array_free(whole, TRUE);
    }
    g_ptr_array_free(fs.trace, TRUE);

    /* The command-line path over the same bytes. */
    {
        GError *err = NULL;
        JsonNode *n = json_parse_text((const char *)data + 1, size - 1, &err);

        if (n) {
            json_node_unref(n);
        }
        g_clear_error(&err);
    }
    return 0;
}
