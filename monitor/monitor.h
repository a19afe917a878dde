/*
 * QMP transport: listening sockets, sessions, framing, dispatch through the
 * generated command table, and events.  Knows nothing of drivers.
 */
#ifndef MONITOR_MONITOR_H
#define MONITOR_MONITOR_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>

typedef struct MonitorLimits {
    size_t max_message_size; /* bytes of one JSON message (default 1 MiB) */
    int max_depth;           /* nesting depth (default and max 1024, as
                                QEMU: clients send ids nested 100 deep) */
    int max_sessions;        /* per listener (default 64) */
} MonitorLimits;

/* Serve QMP on an already listening socket fd (taken over). */
bool monitor_add_listener(int listen_fd, const char *id, GError **errp);
void monitor_set_limits(const MonitorLimits *limits);
/*
 * Hold back QMP commands (true) until released (false): the daemon holds
 * them while it processes its command line, whose --blockdev and --export
 * run the loop (the listener and sessions already exist), so that no
 * command sees a half-built graph, as in qemu-storage-daemon.  Commands
 * received meanwhile wait in their session's queue.
 */
void monitor_hold_commands(bool hold);
/* Close every listener and session. */
void monitor_cleanup(void);

/* Sent in the greeting and by query-version. */
void monitor_get_version(int *major, int *minor, int *micro,
                         const char **package);

/*
 * Implemented here for the generated event senders: add the timestamp
 * and send to every session that has negotiated capabilities.
 */
void qapi_event_emit(const char *name, JsonObject *data);

/*
 * Dispatch one already parsed request object as a QMP session would
 * (used by the session code and the fuzz target).  `negotiated` is the
 * session's state (updated by qmp_capabilities).  Runs the command in
 * the calling coroutine; returns the reply (never NULL).
 */
#include "util/coroutine.h"
JsonNode *coroutine_fn qmp_dispatch(JsonNode *request, bool *negotiated);

#endif
