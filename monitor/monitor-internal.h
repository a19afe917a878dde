/*
 * Shared between the monitor's own files: the per-session protocol state
 * the dispatcher updates, and the broadcast the event code uses.
 */
#ifndef MONITOR_MONITOR_INTERNAL_H
#define MONITOR_MONITOR_INTERNAL_H

#include <glib.h>
#include <json-glib/json-glib.h>

#include "util/coroutine.h"

typedef struct QmpState {
    bool negotiated; /* qmp_capabilities succeeded */
    bool oob;        /* ... with enable: ["oob"] */
} QmpState;

/* qmp_dispatch() with the full session state. */
JsonNode *coroutine_fn qmp_dispatch_state(JsonNode *request, QmpState *st);

/*
 * How the dispatcher runs a command once the envelope is valid.  The
 * default calls cmd->fn; the QMP fuzz target installs one that runs only
 * side-effect-free commands and merely parses the others' arguments.
 * NULL restores the default.
 */
struct QmpCommand;
typedef void QmpCommandRunner(const struct QmpCommand *cmd, JsonNode *args,
                              JsonNode **ret, GError **errp);
void qmp_dispatch_set_runner(QmpCommandRunner *runner);

/* {"error": {"class", "desc"}} for input that never became a request. */
JsonNode *qmp_error_reply(const GError *err);

/* One complete line (text + CRLF) as a session sends it. */
GBytes *qmp_encode_line(JsonNode *msg);

/* Queue `line` on every session that has negotiated capabilities. */
void monitor_broadcast_event(GBytes *line);

/* The greeting object. */
JsonNode *qmp_greeting(void);

#endif
