/*
 * Block exports (block-export-add/del) and the NBD server.
 */
#ifndef BLOCK_EXPORT_EXPORT_H
#define BLOCK_EXPORT_EXPORT_H

#include "block/block.h"

typedef struct BlockExport BlockExport;

/* Find an export by id (NULL if none). */
BlockExport *blk_exp_find(const char *id);
/* Remove every export and stop the NBD server (shutdown). */
void blk_exp_close_all(void);

/* The command-line forms (--nbd-server, --export), parsed as keyval. */
bool nbd_server_start_keyval(const char *opts, GError **errp);
bool blk_exp_add_keyval(const char *opts, GError **errp);

#endif
