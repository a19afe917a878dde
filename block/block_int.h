/*
 * The block layer's internals: what a driver implements and the node and
 * edge structures.  Drivers include this; other users include block.h.
 */
#ifndef BLOCK_BLOCK_INT_H
#define BLOCK_BLOCK_INT_H

#include <limits.h>
#include <sys/queue.h>

#include "block/block.h"
#include "util/error.h"

/* glibc's <sys/queue.h> lacks the _SAFE iterators. */
#ifndef LIST_FOREACH_SAFE
#define LIST_FOREACH_SAFE(var, head, field, tvar)                              \
    for ((var) = LIST_FIRST(head); (var) && ((tvar) = LIST_NEXT(var, field), 1); \
         (var) = (tvar))
#endif

typedef struct BDRVReopenState BDRVReopenState;

/* Version of the BlockDriver layout, so it can grow without breaking
 * drivers written against an older one (checked at registration). */
#define BLOCK_DRIVER_VERSION 1

/*
 * Edge roles, combined as bit flags.  DATA: the child holds guest data;
 * METADATA: it holds the parent's metadata; FILTERED: the parent passes
 * requests through to it; COW: it is a backing file; PRIMARY: the child a
 * driver reads its own structure from (a format's `file`, a filter's
 * child).
 */
typedef enum BdrvChildRole {
    BDRV_CHILD_DATA = 1 << 0,
    BDRV_CHILD_METADATA = 1 << 1,
    BDRV_CHILD_FILTERED = 1 << 2,
    BDRV_CHILD_COW = 1 << 3,
    BDRV_CHILD_PRIMARY = 1 << 4,
    BDRV_CHILD_IMAGE = BDRV_CHILD_DATA | BDRV_CHILD_METADATA,
} BdrvChildRole;

typedef struct BlockLimits {
    /* Every request to the driver is aligned to this (power of two).  The
     * generic layer does read-modify-write for unaligned writes. */
    uint32_t request_alignment;
    /* Largest request the driver takes (0: BDRV_REQUEST_MAX_BYTES). */
    int64_t max_transfer;
    int64_t opt_transfer;
    /* Alignment for write-zeroes/discard to take effect (0: any). */
    int64_t pwrite_zeroes_alignment;
    int64_t pdiscard_alignment;
    int64_t max_pwrite_zeroes;
    int64_t max_pdiscard;
    /* Memory alignment of buffers (O_DIRECT needs 512 or 4096). */
    size_t min_mem_alignment;
    size_t opt_mem_alignment;
} BlockLimits;

/*
 * A driver.  Every callback is optional unless marked required; when one is
 * NULL the core does the generic thing described.  Callbacks marked
 * coroutine_fn are called in coroutine context.
 */
struct BlockDriver {
    int version;             /* BLOCK_DRIVER_VERSION */
    const char *format_name; /* the QAPI BlockdevDriver value, e.g. "raw" */
    BlockdevDriver driver;   /* the same as the enum */
    size_t instance_size;    /* bs->opaque is zeroed memory of this size */
    /* A filter passes requests to one child (bs->file or bs->backing),
     * unchanged; block status and allocation look through it. */
    bool is_filter;
    /* A format: it has a `file` child holding its image. */
    bool is_format;
    /* Whether the driver has a backing child (qcow2, add-cow). */
    bool supports_backing;

    /*
     * Required.  Open the node from its options (opts->u.<driver>).  The
     * core has already applied the generic options (read-only, cache,
     * discard, detect-zeroes, node-name) to bs.  The driver opens its
     * children with bdrv_open_child() and sets bs->total_bytes.  A
     * protocol (no children) sets bs->filename; for nodes with children
     * the core sets it afterwards, as QEMU would (see strong_opts).
     */
    int coroutine_fn (*bdrv_open)(BlockDriverState *bs,
                                  const BlockdevOptions *opts, GError **errp);
    /* Release driver state; children are detached by the core afterwards.
     * Called in coroutine context after a drain and a flush, so a driver
     * may still write metadata to its children here. */
    void (*bdrv_close)(BlockDriverState *bs);
    /* Set bs->bl from the children's limits and the driver's needs. The
     * default takes request_alignment etc. from the primary child. */
    void (*bdrv_refresh_limits)(BlockDriverState *bs, GError **errp);

    /* Requests.  offset/bytes are aligned to bs->bl.request_alignment and
     * within max_transfer.  Return 0 or -errno.  NULL: filters pass through
     * to their filtered child; others get -ENOTSUP. */
    int coroutine_fn (*bdrv_co_preadv)(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       BdrvRequestFlags flags);
    int coroutine_fn (*bdrv_co_pwritev)(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, IOVector *qiov,
                                        BdrvRequestFlags flags);
    /* -ENOTSUP makes the core write a buffer of zeroes (unless
     * BDRV_REQ_NO_FALLBACK). */
    int coroutine_fn (*bdrv_co_pwrite_zeroes)(BlockDriverState *bs,
                                              int64_t offset, int64_t bytes,
                                              BdrvRequestFlags flags);
    int coroutine_fn (*bdrv_co_pdiscard)(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes);
    /*
     * copy_file_range through the graph (bdrv_co_copy_range in block.h).
     * _from is called on the source side: the node maps the source range
     * into its child and calls bdrv_co_copy_range_from() on it (raw), or,
     * once the source is a file it can name, turns to the destination
     * with bdrv_co_copy_range_to() (file).  _to does the same on the
     * destination side; `file` copies between the two files.  NULL:
     * -ENOTSUP, and the caller reads and writes instead.
     */
    int coroutine_fn (*bdrv_co_copy_range_from)(BlockDriverState *bs,
                                                BdrvChild *src,
                                                int64_t src_offset,
                                                BdrvChild *dst,
                                                int64_t dst_offset,
                                                int64_t bytes);
    int coroutine_fn (*bdrv_co_copy_range_to)(BlockDriverState *bs,
                                              BdrvChild *src,
                                              int64_t src_offset,
                                              BdrvChild *dst,
                                              int64_t dst_offset,
                                              int64_t bytes);
    /* Flush the driver's own caches into its children (the core then
     * flushes the children), then, for protocol drivers, to disk. */
    int coroutine_fn (*bdrv_co_flush_to_os)(BlockDriverState *bs);
    int coroutine_fn (*bdrv_co_flush_to_disk)(BlockDriverState *bs);
    /*
     * Block status of bs alone for [offset, offset+bytes): return
     * BDRV_BLOCK_* bits for *pnum bytes; with OFFSET_VALID set *map and
     * *file.  `want_zero`: precise zero information is worth extra work.
     * NULL: protocols report DATA|ALLOCATED; filters pass through.
     */
    int coroutine_fn (*bdrv_co_block_status)(BlockDriverState *bs,
                                             bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             int64_t *map,
                                             BlockDriverState **file);
    int coroutine_fn (*bdrv_co_truncate)(BlockDriverState *bs, int64_t offset,
                                         bool exact, PreallocMode prealloc,
                                         BdrvRequestFlags flags,
                                         GError **errp);
    int64_t coroutine_fn (*bdrv_co_get_allocated_file_size)(
        BlockDriverState *bs);
    /* Fill driver-specific image info (cluster-size, format-specific...).
     * Returning >= 0 also makes queries report dirty-flag (false unless
     * set), as QEMU does for drivers with get_info (file, raw, qcow2;
     * null-co has none).  -ENOTSUP: no info. */
    int coroutine_fn (*bdrv_co_get_info)(BlockDriverState *bs,
                                         ImageInfo *info, GError **errp);
    /* query-blockstats' driver-specific statistics of the node (a new
     * object the caller frees); NULL, or no callback: there are none. */
    BlockStatsSpecific *(*bdrv_get_specific_stats)(BlockDriverState *bs);

    /*
     * Permissions.  child_perm: given what the parents of bs want of bs
     * (perm, shared), what bs needs of child c.  NULL: the generic rules
     * of bdrv_default_perms().
     */
    void (*bdrv_child_perm)(BlockDriverState *bs, BdrvChild *c,
                            BdrvChildRole role, uint64_t perm,
                            uint64_t shared, uint64_t *nperm,
                            uint64_t *nshared);
    /* Node-level: can bs take (perm, shared)?  The file driver takes its
     * locks here.  After a successful check exactly one of set_perm /
     * abort_perm_update follows; a check that fails must leave the
     * driver's state as it was (neither is called). */
    int (*bdrv_check_perm)(BlockDriverState *bs, uint64_t perm,
                           uint64_t shared, GError **errp);
    void (*bdrv_set_perm)(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared);
    void (*bdrv_abort_perm_update)(BlockDriverState *bs);

    /* Fault injection hook (blkdebug). */
    void (*bdrv_debug_event)(BlockDriverState *bs, BlkdebugEvent event);

    /* blockdev-create for this driver: runs in a job's coroutine. */
    int coroutine_fn (*bdrv_co_create)(BlockdevCreateOptions *opts,
                                       GError **errp);

    /* ---- added after the first layout (still version 1) ---- */
    /*
     * QAPI member names of the driver's options that change what the node
     * reads (QEMU's "strong" options: "filename" for file, "offset" and
     * "size" for raw...).  Used to build "json:{...}" filenames when the
     * driver leaves bs->filename empty.  NULL-terminated; NULL: none.
     */
    const char *const *strong_opts;
    /* A child's size changed (the child was resized by another user);
     * update bs->total_bytes if it derives from it.  Parents of bs are
     * notified by the core afterwards.  (QEMU's raw follows its file;
     * a filter like blkdebug keeps its size.) */
    void (*bdrv_child_resized)(BlockDriverState *bs, BdrvChild *c);
    /* Name the node (QEMU's bdrv_refresh_filename hook, e.g. blkdebug's
     * "blkdebug:CONFIG:FILE"): called when the core's own rules would
     * give json:{...}; fill bs->filename, or leave it empty for json. */
    void (*bdrv_own_filename)(BlockDriverState *bs);
    /*
     * Persistent dirty bitmaps (contract in block/dirty-bitmap.h).  A
     * driver that stores them loads them in bdrv_open and writes them back
     * in bdrv_close (and on flush).  can_store: may a new persistent bitmap
     * be added (NULL: "Can't store persistent bitmaps to NODE: Operation
     * not supported").  remove: delete a stored bitmap from the image
     * (block-dirty-bitmap-remove of a persistent bitmap); NULL: nothing is
     * stored, nothing to do.
     */
    bool coroutine_fn (*bdrv_co_can_store_new_dirty_bitmap)(
        BlockDriverState *bs, const char *name, uint32_t granularity,
        GError **errp);
    int coroutine_fn (*bdrv_co_remove_persistent_dirty_bitmap)(
        BlockDriverState *bs, const char *name, GError **errp);
    /*
     * Record a new backing file name and format in the image header
     * (QEMU's bdrv_change_backing_file), after block-stream or
     * block-commit changed the node's backing child: NULL backing_file
     * means none (and then backing_fmt is NULL too); NULL backing_fmt
     * means no format is recorded.  On success the driver also updates
     * bs->backing_file and bs->backing_format; on failure (-errno) the
     * image and the node are as they were.  NULL: the format cannot
     * record one (callers treat that as -ENOTSUP).
     */
    int coroutine_fn (*bdrv_co_change_backing_file)(BlockDriverState *bs,
                                                    const char *backing_file,
                                                    const char *backing_fmt);

    /* ---- added after the first layout (still version 1): reopen ---- */
    /*
     * blockdev-reopen (block/reopen.c, docs/reopen.md).  A driver without
     * bdrv_reopen_prepare cannot be reopened ("Block format ... does not
     * support reopening files", as QEMU).
     *
     * reopen_opts: the driver's option names (dotted for nested members;
     * a name also covers "name.*") that prepare applies, so they may
     * differ from the open options; any other option must be unchanged
     * ("Cannot change the option '...'").  mutable_opts: the options
     * that may be left out of the new options (reset to their default;
     * QEMU's mutable_opts).  Both NULL-terminated; NULL: none.
     *
     * prepare (coroutine context, every node drained): check the new
     * options in `state` and get ready (may do I/O: flush, store bitmaps,
     * open a new fd), keeping what commit or abort needs in
     * state->opaque.  The node still has its old state and permissions.
     * commit: make the new state current; cannot fail.  abort: undo
     * prepare.  Exactly one of them follows a successful prepare.
     * commit_post (coroutine context): after every node of the
     * transaction committed and the permissions were relaxed (qcow2 marks
     * its bitmaps in use when it became writable); failures are logged.
     */
    const char *const *reopen_opts;
    const char *const *mutable_opts;
    int coroutine_fn (*bdrv_reopen_prepare)(BDRVReopenState *state,
                                            GError **errp);
    void (*bdrv_reopen_commit)(BDRVReopenState *state);
    void coroutine_fn (*bdrv_reopen_commit_post)(BDRVReopenState *state);
    void (*bdrv_reopen_abort)(BDRVReopenState *state);
};

/* One node's new state in a blockdev-reopen transaction (block/reopen.c):
 * what the driver's reopen hooks see. */
struct BDRVReopenState {
    BlockDriverState *bs;
    const BlockdevOptions *options; /* the node's new options */
    bool read_only;                 /* new read-only state */
    int open_flags;                 /* new BDRV_O_* flags */
    BlockdevDetectZeroesOptions detect_zeroes;
    void *opaque; /* the driver's, from prepare to commit/abort */
};

/* Drivers are listed once, in block/drivers.c. */
const BlockDriver *bdrv_find_driver(BlockdevDriver drv);
const BlockDriver *bdrv_find_format(const char *format_name);

/* How a parent of an edge behaves (a node, or a BlockBackend). */
struct BdrvChildClass {
    bool parent_is_bds;
    /* The parent is a block job watching the node (block/jobs/blockjob.c):
     * not a BlockBackend, so blockdev-del reports the job's blocker. */
    bool parent_is_job;
    char *(*get_parent_desc)(BdrvChild *c);
    void (*drained_begin)(BdrvChild *c);
    void (*drained_end)(BdrvChild *c);
    /* true while the parent still has requests it may issue */
    bool (*drained_poll)(BdrvChild *c);
    void (*resize)(BdrvChild *c);
};

struct BdrvChild {
    BlockDriverState *bs; /* the child node */
    char *name;           /* "file", "backing", "image", "target", "root" */
    const BdrvChildClass *klass;
    BdrvChildRole role;
    void *opaque; /* the parent: BlockDriverState * or BlockBackend * */
    uint64_t perm;
    uint64_t shared_perm;
    /* While non-zero nothing may detach or replace this edge; the holders
     * (job ids) are named in the error. */
    int graph_mod_count;
    GPtrArray *graph_mod_holders; /* of char * */
    /* how many drained_begin calls this edge passed on to the parent */
    int parent_quiesce_counter;
    LIST_ENTRY(BdrvChild) next;        /* in parent's children */
    LIST_ENTRY(BdrvChild) next_parent; /* in child's parents */
};

/* A request in flight, for serialisation of overlapping RMW. */
typedef struct BdrvTrackedRequest {
    BlockDriverState *bs;
    int64_t offset, bytes;
    bool is_write;
    bool serialising;
    int64_t overlap_offset, overlap_bytes; /* aligned extent when serialising */
    Coroutine *co;
    CoQueue wait_queue; /* requests waiting for this one */
    LIST_ENTRY(BdrvTrackedRequest) list;
} BdrvTrackedRequest;

struct BlockDriverState {
    const BlockDriver *drv;
    void *opaque;
    char node_name[32];
    /* What the node reads: the file name for protocols, the image's file
     * name for formats ("json:{...}" when there is no single file). */
    char filename[PATH_MAX];
    /* Backing file name and format from the image header (formats). */
    char backing_file[PATH_MAX];
    char backing_format[32];
    BlockdevOptions *options; /* as opened (deep copy) */

    int open_flags; /* BDRV_O_* */
    bool read_only;
    bool implicit; /* inserted by a job, hidden from queries */
    BlockdevDetectZeroesOptions detect_zeroes;
    bool encrypted;

    int refcnt;
    bool monitor_owned;

    LIST_HEAD(, BdrvChild) children;
    LIST_HEAD(, BdrvChild) parents;
    BdrvChild *file;    /* the child named "file", if any */
    BdrvChild *backing; /* the backing child, if any */

    BlockLimits bl;
    int64_t total_bytes; /* virtual size, kept by the driver */
    /* supported request flags of the driver */
    BdrvRequestFlags supported_write_flags;
    BdrvRequestFlags supported_zero_flags;

    /* cumulative permissions from all parents */
    uint64_t perm;
    uint64_t shared_perm;

    unsigned in_flight;
    int quiesce_counter;
    LIST_HEAD(, BdrvTrackedRequest) tracked_requests;
    unsigned serialising_in_flight;
    /* coroutines waiting for in_flight to reach 0 (drain) */
    CoQueue flush_queue;
    bool active_flush_req;
    unsigned write_gen, flushed_gen; /* skip flushes with nothing new */

    /* dirty bitmaps (dirty-bitmap.c, later issue) */
    GList *dirty_bitmaps;

    uint64_t write_threshold_offset;
    int64_t node_seq; /* creation order */
    /* The end of the highest write issued to this node (accounting.h). */
    uint64_t wr_highest_offset;
};

/* Generic options parsing, child opening, and permission helpers. */

/*
 * Open the child `name` of `parent` from a reference (inline options or a
 * node-name).  With allow_none a missing ref (NULL) returns NULL without
 * error.  The edge's permissions are computed from parent's driver.
 */
BdrvChild *coroutine_fn bdrv_open_child(BlockDriverState *parent,
                                        const BlockdevRef *ref,
                                        const char *name, BdrvChildRole role,
                                        bool allow_none, GError **errp);
/*
 * A new node of `drv` without options and without children (QEMU's
 * bdrv_new_open_driver), for filters that jobs insert and blockdev-add
 * cannot create (commit_top, mirror_top): drv need not be in the driver
 * table and its bdrv_open is not called.  node_name NULL: a generated
 * name.  flags: BDRV_O_*, read-only unless BDRV_O_RDWR.  The caller
 * attaches children (bdrv_attach_child), sets total_bytes and owns the
 * one reference.  Errors as blockdev-add's node-name checks.
 */
BlockDriverState *bdrv_new_open_driver(const BlockDriver *drv,
                                       const char *node_name, int flags,
                                       GError **errp);
/* Attach an existing node as a child (takes a new reference on child). */
BdrvChild *bdrv_attach_child(BlockDriverState *parent,
                             BlockDriverState *child, const char *name,
                             BdrvChildRole role, GError **errp);
/* Detach and drop the reference; relaxing permissions never fails. */
void bdrv_unref_child(BlockDriverState *parent, BdrvChild *c);
/* Set bs's backing child to backing_bs (NULL: none), checking graph-mod
 * counters and permissions; on failure nothing changes. */
int bdrv_set_backing_hd(BlockDriverState *bs, BlockDriverState *backing_bs,
                        GError **errp);
/* Move every parent of `from` (except those in `except`) to `to`. */
int bdrv_replace_node(BlockDriverState *from, BlockDriverState *to,
                      GError **errp);
/*
 * Put `filter` in bs's place: every parent of bs moves to it.  child_name
 * non-NULL ("file", "backing"): bs is first attached as the filter's
 * primary filtered child of that name and the filter's limits and name
 * are refreshed (a filter from bdrv_new_open_driver); NULL: the filter
 * was opened over bs already.  Takes over the caller's reference to
 * filter: returns it, or NULL after dropping it.
 */
BlockDriverState *bdrv_insert_filter(BlockDriverState *filter,
                                     BlockDriverState *bs,
                                     const char *child_name, GError **errp);
/*
 * Take `filter` out again: its parents go back to the node it filters
 * (bdrv_filter_or_cow_child).  A failure is only warned about, prefixed
 * with `who`: the callers are tearing down and can do no better.
 */
void bdrv_remove_filter(BlockDriverState *filter, const char *who);

/* Recompute permissions of bs's subtree from its parents: a transaction. */
int bdrv_refresh_perms(BlockDriverState *bs, GError **errp);
/* Change one edge's permissions (a transaction over the child's subtree).
 * On conflict the error names both users. */
int bdrv_child_try_set_perm(BdrvChild *c, uint64_t perm, uint64_t shared,
                            GError **errp);
/* Generic per-role permissions (formats, filters, backing). */
void bdrv_default_perms(BlockDriverState *bs, BdrvChild *c,
                        BdrvChildRole role, uint64_t perm, uint64_t shared,
                        uint64_t *nperm, uint64_t *nshared);
void bdrv_filter_default_perms(BlockDriverState *bs, BdrvChild *c,
                               BdrvChildRole role, uint64_t perm,
                               uint64_t shared, uint64_t *nperm,
                               uint64_t *nshared);

/* Whether bs is writable (not read-only, opened RDWR). */
bool bdrv_is_writable(const BlockDriverState *bs);
/* Refresh bs->bl (after open or a graph change).  As in QEMU, the
 * children's transfer and memory limits are merged, but request_alignment
 * is not inherited (a child aligns its own requests); it starts at 1 and a
 * driver's bdrv_refresh_limits may raise it. */
void bdrv_refresh_limits(BlockDriverState *bs, GError **errp);

/*
 * Attach `child` under a non-node parent (a BlockBackend, a job) as edge
 * `name` with the given class and permissions; takes a reference on child.
 * Fails (nothing changed) on a permission conflict.
 */
BdrvChild *bdrv_root_attach_child(BlockDriverState *child, const char *name,
                                  const BdrvChildClass *klass,
                                  BdrvChildRole role, uint64_t perm,
                                  uint64_t shared, void *opaque,
                                  GError **errp);
/* Detach an edge made by bdrv_root_attach_child and drop its reference. */
void bdrv_root_unref_child(BdrvChild *c);

/* Requests a driver issues outside a request on bs (background metadata
 * writes, timers) count themselves so drain waits for them. */
void bdrv_inc_in_flight(BlockDriverState *bs);
void bdrv_dec_in_flight(BlockDriverState *bs);
/* Something drain polls for changed (an export stopped issuing
 * requests...): re-evaluate waiting drains. */
void bdrv_wakeup(void);

/* Set bs->filename from its children and options (filename.c), for a
 * node whose driver left it empty. */
void bdrv_refresh_filename(BlockDriverState *bs);
/* A node's name depends on its children: after a graph change, compute it
 * again for bs (unless it has no children: a protocol names itself) and
 * for every node above it. */
void bdrv_refresh_filenames_up(BlockDriverState *bs);

/*
 * The image of bs's backing chain that `name` (a file name, as the
 * deprecated `top`/`base` arguments of block-commit and block-stream give
 * it) designates, or NULL: QEMU's bdrv_find_backing_image().  Compared
 * with each layer's backing file name from its header (relative names
 * resolved against that layer's directory, both canonicalised), or, for
 * a layer whose backing node was given explicitly and differs from its
 * header, with that node's filename.  bs itself is never returned.
 */
BlockDriverState *bdrv_find_backing_image(BlockDriverState *bs,
                                          const char *name);

/* QEMU's bdrv_get_info(): bs's cluster size (0: none) and dirty flag,
 * looking through filters without a get_info of their own; -ENOTSUP if
 * nobody knows. */
int coroutine_fn bdrv_co_get_bdi(BlockDriverState *bs, int64_t *cluster_size,
                                 bool *dirty, GError **errp);

/* Tell the parents of bs that its size changed (after a truncate). */
void bdrv_parent_cb_resize(BlockDriverState *bs);

/*
 * Hooks the dirty-bitmap module installs when it is first used (NULL
 * until then), so the request path and queries need not link it.
 */
typedef struct BdrvDirtyBitmapHooks {
    /* a write/zero/discard touched [offset, offset+bytes) of bs */
    void (*set_dirty)(BlockDriverState *bs, int64_t offset, int64_t bytes);
    /* query-named-block-nodes' dirty-bitmaps */
    BlockDirtyInfoList *(*query)(BlockDriverState *bs);
    /* the node's size changed to `bytes` (resize every bitmap) */
    void (*truncate)(BlockDriverState *bs, int64_t bytes);
    /* the node is being freed: free its bitmaps */
    void (*release_all)(BlockDriverState *bs);
} BdrvDirtyBitmapHooks;
extern const BdrvDirtyBitmapHooks *bdrv_dirty_bitmap_hooks;

/*
 * Unit tests only: make `drv` the driver for its BlockdevDriver value
 * (and format name), in front of the built-in table, until unregistered.
 */
void bdrv_register_test_driver(const BlockDriver *drv);
void bdrv_unregister_test_driver(const BlockDriver *drv);

#endif
