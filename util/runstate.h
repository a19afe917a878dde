/* Process-wide run state: shutdown requests from QMP `quit` and signals. */
#ifndef UTIL_RUNSTATE_H
#define UTIL_RUNSTATE_H

#include <stdbool.h>

/* Ask the daemon's main loop to shut down; `reason` as in the SHUTDOWN
 * event's ShutdownCause ("host-qmp-quit", "host-signal"). */
void runstate_request_shutdown(const char *reason);
/* The pending request's reason, or NULL. */
const char *runstate_shutdown_requested(void);

#endif
