/*
 * QMP handlers for the NBD server and block exports.  Messages and the
 * order of checks follow qemu-storage-daemon 7.2.
 */
#include <string.h>

#include "block/export/nbd-int.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

void qmp_nbd_server_start(q_obj_nbd_server_start_arg *arg, GError **errp)
{
    SocketAddressLegacy *legacy = arg->addr;
    SocketAddress flat = { .type = legacy->type };

    /* The legacy form wraps each variant in {"data": ...}. */
    switch (legacy->type) {
    case SOCKET_ADDRESS_TYPE_INET:
        flat.u.inet = *legacy->u.inet.data;
        break;
    case SOCKET_ADDRESS_TYPE_UNIX:
        flat.u.q_unix = *legacy->u.q_unix.data;
        break;
    case SOCKET_ADDRESS_TYPE_VSOCK:
        flat.u.vsock = *legacy->u.vsock.data;
        break;
    case SOCKET_ADDRESS_TYPE_FD:
        flat.u.fd = *legacy->u.fd.data;
        break;
    default:
        error_setg(errp, "Invalid socket address type");
        return;
    }
    /* flat borrows legacy's strings: nothing to free */
    nbd_server_start(&flat, arg->has_tls_creds ? arg->tls_creds : NULL,
                     arg->has_tls_authz ? arg->tls_authz : NULL,
                     arg->has_max_connections ? arg->max_connections : 0,
                     errp);
}

static bool exp_is_nbd(BlockExport *exp, void *opaque)
{
    return exp->type == BLOCK_EXPORT_TYPE_NBD;
}

void qmp_nbd_server_stop(GError **errp)
{
    BlockExport *exp, *nx;

    if (!nbd_server_is_running()) {
        error_setg(errp, "NBD server not running");
        return;
    }
    /* As qsd: every NBD export goes with the server, clients cut off. */
    for (exp = blk_exp_next(NULL); exp; exp = nx) {
        nx = blk_exp_next(exp);
        if (exp->type == BLOCK_EXPORT_TYPE_NBD) {
            blk_exp_request_shutdown(exp);
        }
    }
    nbd_server_stop_all();
    blk_exp_wait_gone(exp_is_nbd, NULL);
}

void qmp_block_export_add(BlockExportOptions *arg, GError **errp)
{
    blk_exp_add(arg, errp);
}

/* The export being deleted: same id and already shutting down (a new
 * export with that id would be user-owned). */
static bool exp_deleting(BlockExport *exp, void *opaque)
{
    return !exp->user_owned && strcmp(exp->id, opaque) == 0;
}

void qmp_block_export_del(q_obj_block_export_del_arg *arg, GError **errp)
{
    BlockExportRemoveMode mode =
        arg->has_mode ? arg->mode : BLOCK_EXPORT_REMOVE_MODE_SAFE;
    BlockExport *exp = blk_exp_find(arg->id);

    if (!exp) {
        error_setg(errp, "Export '%s' is not found", arg->id);
        return;
    }
    if (!exp->user_owned) {
        error_setg(errp, "Export '%s' is already shutting down", arg->id);
        return;
    }
    if (mode == BLOCK_EXPORT_REMOVE_MODE_SAFE && !LIST_EMPTY(&exp->clients)) {
        error_setg(errp, "export '%s' still in use", arg->id);
        return;
    }
    blk_exp_request_shutdown(exp);
    /*
     * Hard mode cut the clients off; wait for their requests to finish so
     * that BLOCK_EXPORT_DELETED comes before our reply, as with qsd.
     */
    blk_exp_wait_gone(exp_deleting, arg->id);
}

BlockExportInfoList *qmp_query_block_exports(GError **errp)
{
    BlockExportInfoList *head = NULL, **tail = &head;
    BlockExport *exp = NULL;

    while ((exp = blk_exp_next(exp))) {
        BlockExportInfo *info = g_new0(BlockExportInfo, 1);
        BlockDriverState *bs = blk_bs(exp->blk);

        info->id = g_strdup(exp->id);
        info->type = exp->type;
        info->node_name = g_strdup(bs ? bdrv_get_node_name(bs) : "");
        info->shutting_down = !exp->user_owned;
        *tail = g_new0(BlockExportInfoList, 1);
        (*tail)->value = info;
        tail = &(*tail)->next;
    }
    return head;
}
