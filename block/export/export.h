/*
 * Block exports (block-export-add/del) and the NBD server.
 *
 * An export is a root user (BlockBackend) of a node that makes it
 * reachable from outside; the only export type is NBD.  Exports live until
 * deleted with block-export-del (or nbd-server-stop, or shutdown) and the
 * last client has gone; then BLOCK_EXPORT_DELETED is sent.
 */
#ifndef BLOCK_EXPORT_EXPORT_H
#define BLOCK_EXPORT_EXPORT_H

#include "block/block.h"

typedef struct BlockExport BlockExport;

/* Find an export by id (NULL if none). */
BlockExport *blk_exp_find(const char *id);
/* Remove every export and stop the NBD server (shutdown).  Not from
 * coroutine context: iterates the loop until every client has gone. */
void blk_exp_close_all(void);

/* block-export-add with QAPI options; the export is owned by the list. */
BlockExport *blk_exp_add(BlockExportOptions *opts, GError **errp);

/* The command-line forms (--nbd-server, --export), parsed as keyval. */
bool nbd_server_start_keyval(const char *opts, GError **errp);
bool blk_exp_add_keyval(const char *opts, GError **errp);

/* nbd-server-start with the flat SocketAddress form. */
/* tls_creds/tls_authz may be NULL; max_connections 0 is unlimited. */
bool nbd_server_start(const SocketAddress *addr, const char *tls_creds,
                      const char *tls_authz, uint32_t max_connections,
                      GError **errp);
bool nbd_server_is_running(void);

#endif
