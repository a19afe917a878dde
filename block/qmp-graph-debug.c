/*
 * x-debug-query-block-graph: the whole graph as qemu-storage-daemon 7.2
 * reports it.  Three kinds of vertices: BlockBackends (root users: exports
 * and other internal users), block jobs, and nodes; edges are BdrvChild
 * links with the permissions held and shared on them.
 *
 * The shape follows QEMU's walk so that ids and order come out the same
 * for the same graph: backends (oldest first), then jobs (newest first),
 * then nodes (oldest first); an id is handed out the first time a vertex
 * is met (as a parent, or as the child of an edge), starting at 1, and
 * both lists are built by prepending, so they come out newest first.
 *
 * A job's own BlockBackend is left out: QEMU's jobs have none (they reach
 * their main node through the "main node" edge, which we have too, and
 * which shows the permissions the job holds there through either).
 */
#include <string.h>

#include "block/block_int.h"
#include "block/jobs/blockjob.h"
#include "qapi/qapi-commands.h"

typedef struct GraphBuilder {
    GHashTable *ids; /* vertex pointer -> id */
    XDbgBlockGraph *graph;
} GraphBuilder;

static uint64_t vertex_id(GraphBuilder *gb, const void *vertex)
{
    gpointer v = g_hash_table_lookup(gb->ids, vertex);
    if (v) {
        return GPOINTER_TO_SIZE(v);
    }
    uint64_t id = g_hash_table_size(gb->ids) + 1;
    g_hash_table_insert(gb->ids, (gpointer)vertex, GSIZE_TO_POINTER(id));
    return id;
}

static void add_vertex(GraphBuilder *gb, const void *vertex,
                       XDbgBlockGraphNodeType type, const char *name)
{
    XDbgBlockGraphNode *n = g_new0(XDbgBlockGraphNode, 1);
    n->id = vertex_id(gb, vertex);
    n->type = type;
    n->name = g_strdup(name ? name : "");
    XDbgBlockGraphNodeList *l = g_new0(XDbgBlockGraphNodeList, 1);
    l->value = n;
    l->next = gb->graph->nodes;
    gb->graph->nodes = l;
}

/* QEMU lists the permission bits from the highest down. */
static BlockPermissionList *perm_list(uint64_t perm)
{
    static const struct {
        uint64_t bit;
        BlockPermission name;
    } bits[] = {
        {BLK_PERM_CONSISTENT_READ, BLOCK_PERMISSION_CONSISTENT_READ},
        {BLK_PERM_WRITE, BLOCK_PERMISSION_WRITE},
        {BLK_PERM_WRITE_UNCHANGED, BLOCK_PERMISSION_WRITE_UNCHANGED},
        {BLK_PERM_RESIZE, BLOCK_PERMISSION_RESIZE},
    };
    BlockPermissionList *head = NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(bits); i++) {
        if (perm & bits[i].bit) {
            BlockPermissionList *l = g_new0(BlockPermissionList, 1);
            l->value = bits[i].name;
            l->next = head;
            head = l;
        }
    }
    return head;
}

static void add_edge_perm(GraphBuilder *gb, const void *parent,
                          const BdrvChild *c, uint64_t perm, uint64_t shared)
{
    XDbgBlockGraphEdge *e = g_new0(XDbgBlockGraphEdge, 1);
    e->parent = vertex_id(gb, parent);
    e->child = vertex_id(gb, c->bs);
    e->name = g_strdup(c->name ? c->name : "");
    e->perm = perm_list(perm);
    e->shared_perm = perm_list(shared);
    XDbgBlockGraphEdgeList *l = g_new0(XDbgBlockGraphEdgeList, 1);
    l->value = e;
    l->next = gb->graph->edges;
    gb->graph->edges = l;
}

static void add_edge(GraphBuilder *gb, const void *parent, const BdrvChild *c)
{
    add_edge_perm(gb, parent, c, c->perm, c->shared_perm);
}

/*
 * A job's "main node" edge.  Our jobs do their I/O on the main node
 * through their own BlockBackend (left out of the dump), QEMU's through
 * this edge: show what the job holds on its main node by both, as one.
 */
static void add_job_edge(GraphBuilder *gb, BlockJob *job, const BdrvChild *c)
{
    uint64_t perm = c->perm, shared = c->shared_perm;
    BdrvChild *root = job->blk ? blk_root(job->blk) : NULL;
    if (root && root->bs == c->bs && c->name &&
        strcmp(c->name, "main node") == 0) {
        perm |= root->perm;
        shared &= root->shared_perm;
    }
    add_edge_perm(gb, job, c, perm, shared);
}

static bool is_job_backend(BlockBackend *blk)
{
    for (BlockJob *job = block_job_next(NULL); job;
         job = block_job_next(job)) {
        if (job->blk == blk) {
            return true;
        }
    }
    return false;
}

XDbgBlockGraph *qmp_x_debug_query_block_graph(GError **errp)
{
    GraphBuilder gb = {
        .ids = g_hash_table_new(g_direct_hash, g_direct_equal),
        .graph = g_new0(XDbgBlockGraph, 1),
    };
    (void)errp;

    for (BlockBackend *blk = blk_all_next(NULL); blk;
         blk = blk_all_next(blk)) {
        if (is_job_backend(blk)) {
            continue;
        }
        /* qemu-storage-daemon has no named backends or devices */
        add_vertex(&gb, blk, X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_BACKEND, "");
        if (blk_root(blk)) {
            add_edge(&gb, blk, blk_root(blk));
        }
    }
    for (BlockJob *job = block_job_next(NULL); job;
         job = block_job_next(job)) {
        add_vertex(&gb, job, X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_JOB,
                   job->job.id);
        /* job->nodes is newest first, as QEMU's */
        for (GSList *l = job->nodes; l; l = l->next) {
            add_job_edge(&gb, job, l->data);
        }
    }
    for (BlockDriverState *bs = bdrv_next_node(NULL); bs;
         bs = bdrv_next_node(bs)) {
        add_vertex(&gb, bs, X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_DRIVER,
                   bdrv_get_node_name(bs));
        BdrvChild *c;
        LIST_FOREACH (c, &bs->children, next) {
            add_edge(&gb, bs, c);
        }
    }
    g_hash_table_destroy(gb.ids);
    return gb.graph;
}
