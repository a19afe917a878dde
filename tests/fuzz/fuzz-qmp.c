/*
 * libFuzzer target for the QMP input path: the stream splitter (fed in
 * chunks whose sizes come from the input, so every framing boundary gets
 * exercised), the request envelope checks, negotiation, the generated
 * argument parsers, and the reply serialiser.
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
    GQueue pending; /* of JsonNode *, NULL entries for framing errors */
} FuzzSession;

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
    g_queue_push_tail(&((FuzzSession *)opaque)->pending, msg);
}

static void on_err(void *opaque, const GError *err)
{
    JsonNode *reply = qmp_error_reply(err);
    GBytes *line = qmp_encode_line(reply);

    (void)opaque;
    g_bytes_unref(line);
    json_node_unref(reply);
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
    return 0;
}
