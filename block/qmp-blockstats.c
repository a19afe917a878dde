/*
 * query-blockstats, as qemu-storage-daemon 7.2 answers it.
 *
 * Without query-nodes QEMU lists its named BlockBackends (guest drives);
 * a storage daemon has none (exports and jobs use anonymous ones), so
 * the answer is [].  With query-nodes: true, one entry per node in the
 * order the nodes were created (oldest first, unlike
 * query-named-block-nodes), each with its file/data child as `parent`.
 */
#include "block/accounting.h"
#include "block/block.h"
#include "qapi/qapi-commands.h"

BlockStatsList *qmp_query_blockstats(q_obj_query_blockstats_arg *arg,
                                     GError **errp)
{
    (void)errp;
    BlockStatsList *head = NULL, **tail = &head;
    if (!arg || !arg->has_query_nodes || !arg->query_nodes) {
        return NULL;
    }
    for (BlockDriverState *bs = bdrv_next_node(NULL); bs;
         bs = bdrv_next_node(bs)) {
        QAPI_LIST_APPEND(tail, bdrv_acct_query_node(bs));
    }
    return head;
}
