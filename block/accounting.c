/*
 * Node-level accounting (see accounting.h for what QEMU keeps where, and
 * why a storage daemon reports only wr_highest_offset and the file
 * driver's discard counters).
 */
#include "block/accounting.h"

#include <errno.h>
#include <glib.h>
#include <string.h>

void bdrv_acct_discard_done(BdrvDiscardStats *st, uint64_t bytes, int ret)
{
    if (ret == 0) {
        st->nb_ok++;
        st->bytes_ok += bytes;
    } else {
        st->nb_failed++;
    }
}

BlockStatsSpecific *bdrv_acct_file_specific_stats(const BdrvDiscardStats *st)
{
    BlockStatsSpecific *s = g_new0(BlockStatsSpecific, 1);
    s->driver = BLOCKDEV_DRIVER_FILE;
    s->u.file.discard_nb_ok = st->nb_ok;
    s->u.file.discard_nb_failed = st->nb_failed;
    s->u.file.discard_bytes_ok = st->bytes_ok;
    return s;
}

BdrvChild *bdrv_acct_stats_parent(BlockDriverState *bs)
{
    BdrvChild *c, *primary = NULL, *data = NULL;
    LIST_FOREACH (c, &bs->children, next) {
        if (c->role & BDRV_CHILD_PRIMARY) {
            primary = c;
            break;
        }
    }
    if (primary && (primary->role & (BDRV_CHILD_DATA | BDRV_CHILD_FILTERED))) {
        return primary;
    }
    /* A primary child holding only metadata (qcow2 with a data-file) or
     * none: the data is where the one data child is.  Two of them (no
     * such driver here yet, quorum in QEMU) would be ambiguous. */
    LIST_FOREACH (c, &bs->children, next) {
        if (c->role & BDRV_CHILD_DATA) {
            if (data) {
                return NULL;
            }
            data = c;
        }
    }
    return data;
}

/* The counters of one node, without its children. */
static BlockDeviceStats *node_device_stats(const BlockDriverState *bs)
{
    /* Everything else is a BlockBackend's, fed by device models: zero. */
    BlockDeviceStats *ds = g_new0(BlockDeviceStats, 1);
    ds->wr_highest_offset = (int64_t)bs->wr_highest_offset;
    return ds;
}

BlockStats *bdrv_acct_query_node(BlockDriverState *bs)
{
    BlockStats *s = g_new0(BlockStats, 1);
    if (bs->node_name[0]) {
        s->has_node_name = true;
        s->node_name = g_strdup(bs->node_name);
    }
    s->stats = node_device_stats(bs);
    if (bs->drv && bs->drv->bdrv_get_specific_stats) {
        s->driver_specific = bs->drv->bdrv_get_specific_stats(bs);
        s->has_driver_specific = s->driver_specific != NULL;
    }
    BdrvChild *parent = bdrv_acct_stats_parent(bs);
    if (parent) {
        /* Recursion depth is the graph's depth, which is bounded by what
         * blockdev-add and the jobs build (no cycles). */
        s->has_parent = true;
        s->parent = bdrv_acct_query_node(parent->bs);
    }
    /* `backing` is only filled in for a BlockBackend's tree in QEMU
     * (blk_level); at node level a backing file is its own entry. */
    return s;
}
