/*
 * The generic block export lifecycle: creation from QAPI options (checks
 * in the order qemu-storage-daemon makes them, so the same bad input gets
 * the same error), the export list, references, and deletion with its
 * BLOCK_EXPORT_DELETED event.
 */
#include <string.h>

#include "block/block_int.h"
#include "block/export/nbd-int.h"
#include "block/export/nbd-proto.h"
#include "qapi/qapi-events.h"
#include "util/aio.h"
#include "util/error.h"
#include "util/keyval.h"

/* Newest first, as query-block-exports lists them. */
static LIST_HEAD(, BlockExport) exports = LIST_HEAD_INITIALIZER(exports);
/* Waiters for an export to disappear (block-export-del hard, stop). */
static CoQueue gone_queue = { G_QUEUE_INIT };

BlockExport *blk_exp_find(const char *id)
{
    BlockExport *exp;

    LIST_FOREACH(exp, &exports, next) {
        if (strcmp(exp->id, id) == 0) {
            return exp;
        }
    }
    return NULL;
}

BlockExport *blk_exp_next(BlockExport *prev)
{
    return prev ? LIST_NEXT(prev, next) : LIST_FIRST(&exports);
}

BlockExport *nbd_export_find(const char *name)
{
    BlockExport *exp;

    LIST_FOREACH(exp, &exports, next) {
        if (exp->type == BLOCK_EXPORT_TYPE_NBD && exp->user_owned &&
            strcmp(exp->name, name) == 0) {
            return exp;
        }
    }
    return NULL;
}

void blk_exp_ref(BlockExport *exp)
{
    exp->refcount++;
}

static void blk_exp_free(BlockExport *exp)
{
    nbd_export_bitmaps_release(exp);
    g_free(exp->id);
    g_free(exp->name);
    g_free(exp->description);
    g_free(exp);
}

void blk_exp_unref(BlockExport *exp)
{
    if (--exp->refcount > 0) {
        return;
    }
    LIST_REMOVE(exp, next);
    /* No more drain callbacks: releasing the node may drain it. */
    blk_set_dev_ops(exp->blk, NULL, NULL);
    blk_unref(exp->blk);
    exp->blk = NULL;
    qapi_event_send_block_export_deleted(exp->id);
    blk_exp_free(exp);
    co_queue_restart_all(&gone_queue);
}

void blk_exp_request_shutdown(BlockExport *exp)
{
    NBDClient *client;

    if (!exp->user_owned) {
        return;
    }
    exp->user_owned = false;
    /* Keep exp alive while we walk its clients: closing may finish one. */
    blk_exp_ref(exp);
    /* Closing only shuts the socket; clients leave the list later. */
    LIST_FOREACH(client, &exp->clients, exp_link) {
        nbd_client_close(client);
    }
    blk_exp_unref(exp); /* ours */
    blk_exp_unref(exp); /* the list's */
}

void blk_exp_wait_gone(bool (*pred)(BlockExport *exp, void *opaque),
                       void *opaque)
{
    for (;;) {
        BlockExport *exp;
        bool found = false;

        LIST_FOREACH(exp, &exports, next) {
            if (pred(exp, opaque)) {
                found = true;
                break;
            }
        }
        if (!found) {
            return;
        }
        if (in_coroutine()) {
            co_queue_wait(&gone_queue, NULL);
        } else {
            aio_poll(true);
        }
    }
}

/* ---- drain callbacks ---- */

static void exp_drained_begin(void *opaque)
{
    nbd_export_drained_begin(opaque);
}

static void exp_drained_end(void *opaque)
{
    nbd_export_drained_end(opaque);
}

/*
 * Our readers check the quiesce count before dispatching every request,
 * so once drained_begin has run no new request reaches the BlockBackend;
 * requests already in flight are the block layer's to wait for.
 */
static bool exp_drained_poll(void *opaque)
{
    return true;
}

static const BlockDevOps nbd_export_dev_ops = {
    .drained_begin = exp_drained_begin,
    .drained_end = exp_drained_end,
    .drained_poll = exp_drained_poll,
};

/* ---- creation ---- */

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static bool exp_id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

/* The NBD-specific part of block-export-add. */
static bool nbd_export_setup(BlockExport *exp, BlockExportOptionsNbd *nbd,
                             const char *node_name, GError **errp)
{
    const char *name = nbd->has_name ? nbd->name : node_name;
    uint64_t perm, shared;

    if (!nbd_server_is_running()) {
        error_setg(errp, "NBD server not running");
        return false;
    }
    if (strlen(name) > NBD_MAX_STRING_SIZE) {
        error_setg(errp, "export name '%s' too long", name);
        return false;
    }
    if (nbd->has_description &&
        strlen(nbd->description) > NBD_MAX_STRING_SIZE) {
        error_setg(errp, "description '%s' too long", nbd->description);
        return false;
    }
    if (nbd_export_find(name)) {
        error_setg(errp, "NBD server already has export named '%s'", name);
        return false;
    }
    int64_t size = blk_getlength(exp->blk);
    if (size < 0) {
        error_setg_errno(errp, (int)-size,
                         "Failed to determine the NBD export's length");
        return false;
    }
    /* The size is announced to clients: do not let anyone resize. */
    blk_get_perm(exp->blk, &perm, &shared);
    if (blk_set_perm(exp->blk, perm, shared & ~(uint64_t)BLK_PERM_RESIZE,
                     errp) < 0) {
        return false;
    }
    if (nbd->has_bitmaps &&
        !nbd_export_bitmaps_init(exp, nbd->bitmaps, errp)) {
        return false;
    }
    exp->name = g_strdup(name);
    exp->description = nbd->has_description ? g_strdup(nbd->description)
                                            : NULL;
    exp->allocation_depth = nbd->has_allocation_depth &&
                            nbd->allocation_depth;
    return true;
}

BlockExport *blk_exp_add(BlockExportOptions *opts, GError **errp)
{
    BlockDriverState *bs;
    BlockExport *exp;
    uint64_t perm;

    if (opts->type != BLOCK_EXPORT_TYPE_NBD) {
        error_setg(errp, "No driver found for the requested export type");
        return NULL;
    }
    if (!exp_id_wellformed(opts->id)) {
        error_setg(errp, "Invalid block export id");
        return NULL;
    }
    if (blk_exp_find(opts->id)) {
        error_setg(errp, "Block export id '%s' is already in use", opts->id);
        return NULL;
    }
    bs = bdrv_lookup_bs(NULL, opts->node_name, errp);
    if (!bs) {
        return NULL;
    }
    bool writable = opts->has_writable && opts->writable;
    if (writable && bdrv_is_read_only(bs)) {
        error_setg(errp, "Cannot export read-only node as writable");
        return NULL;
    }

    exp = g_new0(BlockExport, 1);
    exp->id = g_strdup(opts->id);
    exp->type = opts->type;
    exp->writable = writable;
    exp->writethrough = opts->has_writethrough && opts->writethrough;
    exp->user_owned = true;
    exp->refcount = 1;
    LIST_INIT(&exp->clients);

    perm = BLK_PERM_CONSISTENT_READ | (writable ? BLK_PERM_WRITE : 0);
    /* No user description: qsd names exports in permission conflicts as
     * "an unnamed block device", and so do we. */
    exp->blk = blk_new(perm, BLK_PERM_ALL);
    if (blk_insert_bs(exp->blk, bs, errp) < 0) {
        goto fail;
    }
    if (!nbd_export_setup(exp, &opts->u.nbd, opts->node_name, errp)) {
        goto fail;
    }
    blk_set_dev_ops(exp->blk, &nbd_export_dev_ops, exp);
    LIST_INSERT_HEAD(&exports, exp, next);
    return exp;

fail:
    blk_unref(exp->blk);
    blk_exp_free(exp);
    return NULL;
}

bool blk_exp_add_keyval(const char *opts, GError **errp)
{
    JsonNode *node = keyval_parse(opts, "type", errp);
    BlockExportOptions *o;
    bool ok;

    if (!node) {
        return false;
    }
    o = qapi_BlockExportOptions_from_json(node, true, errp);
    json_node_unref(node);
    if (!o) {
        return false;
    }
    ok = blk_exp_add(o, errp) != NULL;
    qapi_free_BlockExportOptions(o);
    return ok;
}

static bool exp_any(BlockExport *exp, void *opaque)
{
    return true;
}

void blk_exp_close_all(void)
{
    BlockExport *exp, *nx;

    for (exp = LIST_FIRST(&exports); exp; exp = nx) {
        nx = LIST_NEXT(exp, next);
        blk_exp_request_shutdown(exp);
    }
    nbd_server_stop_all();
    blk_exp_wait_gone(exp_any, NULL);
    while (nbd_client_count() > 0) {
        aio_poll(true);
    }
}
