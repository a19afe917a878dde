/*
 * The protocol's own commands: negotiation, version, the command list,
 * and quit.
 */
#include <string.h>

#include "monitor/monitor.h"
#include "qapi/qapi-commands.h"
#include "qapi/qapi-types.h"
#include "util/error.h"
#include "util/runstate.h"

/*
 * Negotiation state is per session and the dispatcher keeps it: it
 * special-cases this command (refusal when already negotiated, the state
 * change and the "oob" capability on success).  The generated wrapper
 * has validated `enable` by the time we get here: nothing is left to do.
 */
void qmp_qmp_capabilities(q_obj_qmp_capabilities_arg *arg, GError **errp)
{
}

VersionInfo *qmp_query_version(GError **errp)
{
    VersionInfo *info = g_new0(VersionInfo, 1);
    int major, minor, micro;
    const char *package;

    monitor_get_version(&major, &minor, &micro, &package);
    info->qemu = g_new0(VersionTriple, 1);
    info->qemu->major = major;
    info->qemu->minor = minor;
    info->qemu->micro = micro;
    info->package = g_strdup(package);
    return info;
}

CommandInfoList *qmp_query_commands(GError **errp)
{
    CommandInfoList *head = NULL;

    /* Prepending lists the table backwards, as QEMU lists its commands. */
    for (const QmpCommand *c = qmp_commands; c->name; c++) {
        CommandInfoList *e = g_new0(CommandInfoList, 1);

        e->value = g_new0(CommandInfo, 1);
        e->value->name = g_strdup(c->name);
        e->next = head;
        head = e;
    }
    return head;
}

/* query-qmp-schema is generated with its data (qapi-introspect.c). */

void qmp_quit(GError **errp)
{
    /* The reply goes out first; the daemon's loop then shuts down. */
    runstate_request_shutdown("host-qmp-quit");
}
