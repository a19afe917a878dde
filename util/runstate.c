/*
 * Process-wide run state.  A shutdown request only sets a flag and wakes
 * the main loop: the daemon's loop checks the flag between iterations and
 * does the orderly teardown itself, so a request made from inside a QMP
 * command or a signal source never tears down what is calling it.
 */
#include "util/runstate.h"

#include <glib.h>

static const char *shutdown_reason;

void runstate_request_shutdown(const char *reason)
{
    if (!shutdown_reason) {
        /* The first request's reason is the one reported. */
        shutdown_reason = reason ? reason : "host-qmp-quit";
    }
    g_main_context_wakeup(g_main_context_default());
}

const char *runstate_shutdown_requested(void)
{
    return shutdown_reason;
}
