/*
 * The block layer's public API: nodes, edges, permissions, requests.
 *
 * A node (BlockDriverState) is an instance of a driver.  An edge (BdrvChild)
 * connects a parent (another node, or a BlockBackend for root users such as
 * exports and jobs) to a child node, and carries the permissions the parent
 * holds on the child and those it lets others have.
 *
 * I/O returns 0 (or bytes, where said) on success and -errno on failure;
 * everything else reports through GError.  Request functions are
 * coroutine_fn.
 */
#ifndef BLOCK_BLOCK_H
#define BLOCK_BLOCK_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "qapi/qapi-types.h"
#include "util/coroutine.h"
#include "util/iov.h"

typedef struct BlockDriver BlockDriver;
typedef struct BlockDriverState BlockDriverState;
typedef struct BdrvChild BdrvChild;
typedef struct BdrvChildClass BdrvChildClass;
typedef struct BlockBackend BlockBackend;

#define BDRV_SECTOR_BITS 9
#define BDRV_SECTOR_SIZE (1ULL << BDRV_SECTOR_BITS)
/* Largest request the generic layer passes down in one piece. */
#define BDRV_REQUEST_MAX_BYTES (INT32_MAX & ~(int64_t)(4096 - 1))
/* Largest node size: INT64_MAX rounded down to QEMU's largest alignment
 * (1 GiB), the same limit and error texts as qemu-storage-daemon. */
#define BDRV_MAX_LENGTH (INT64_MAX & ~((INT64_C(1) << 30) - 1))

/* ---- permissions (bit numbers are the file-lock offsets' bits) ---- */
enum {
    BLK_PERM_CONSISTENT_READ = 1 << 0,
    BLK_PERM_WRITE = 1 << 1,
    BLK_PERM_WRITE_UNCHANGED = 1 << 2,
    BLK_PERM_RESIZE = 1 << 3,
    BLK_PERM_ALL = 0xf,
};
/* "consistent read, write" etc., for messages; caller frees. */
char *bdrv_perm_names(uint64_t perm);

/* ---- open flags (bs->open_flags) ---- */
enum {
    BDRV_O_RDWR = 1 << 0,
    BDRV_O_NOCACHE = 1 << 1,  /* cache.direct: O_DIRECT */
    BDRV_O_NO_FLUSH = 1 << 2, /* cache.no-flush */
    BDRV_O_UNMAP = 1 << 3,    /* discard=unmap */
    BDRV_O_AUTO_RDONLY = 1 << 4,
    BDRV_O_FORCE_SHARE = 1 << 5,
    BDRV_O_INACTIVE = 1 << 6,
};

/* ---- request flags ---- */
typedef enum BdrvRequestFlags {
    BDRV_REQ_ZERO_WRITE = 1 << 0,       /* internal: a write of zeroes */
    BDRV_REQ_MAY_UNMAP = 1 << 1,        /* zeroes may be a hole */
    BDRV_REQ_FUA = 1 << 2,              /* on stable storage on completion */
    BDRV_REQ_NO_FALLBACK = 1 << 3,      /* fail (-ENOTSUP) rather than
                                           write zeroes slowly */
    BDRV_REQ_WRITE_COMPRESSED = 1 << 4, /* compressed cluster write */
    BDRV_REQ_SERIALISING = 1 << 5,      /* wait for overlapping requests */
    BDRV_REQ_WRITE_UNCHANGED = 1 << 6,  /* same data (copy-on-read) */
    BDRV_REQ_PREFETCH = 1 << 7,         /* copy-on-read without returning
                                           data */
    BDRV_REQ_NO_WAIT = 1 << 8,
    BDRV_REQ_MASK = (1 << 9) - 1,
} BdrvRequestFlags;

/* ---- block status bits ---- */
enum {
    BDRV_BLOCK_DATA = 1 << 0,         /* reads come from this layer's file */
    BDRV_BLOCK_ZERO = 1 << 1,         /* reads as zero */
    BDRV_BLOCK_OFFSET_VALID = 1 << 2, /* *map is the offset in *file */
    BDRV_BLOCK_ALLOCATED = 1 << 3,    /* this layer decides the content */
    BDRV_BLOCK_EOF = 1 << 4,          /* range reaches the end of the node */
    BDRV_BLOCK_RECURSE = 1 << 5,      /* ask *file for precise zero info */
};

/* ---- the node registry ---- */

/* Find a node by node-name (NULL if none). */
BlockDriverState *bdrv_find_node(const char *node_name);
/* Iterate all nodes in creation order: pass NULL to start. */
BlockDriverState *bdrv_next_node(BlockDriverState *prev);
/* Nodes that blockdev-add created (monitor-owned), in creation order. */
BlockDriverState *bdrv_next_monitor_owned(BlockDriverState *prev);
/* A node by node-name, or the GenericError "Cannot find device='%s' nor
 * node-name='%s'" as qemu-storage-daemon 7.2 words and classes it (absent
 * arguments print as ''; there are no named devices here). */
BlockDriverState *bdrv_lookup_bs(const char *device, const char *node_name,
                                 GError **errp);
/* QEMU's bdrv_is_root_node(): nothing but BlockBackends (exports, no
 * node or job) above bs. */
bool bdrv_is_root_node(BlockDriverState *bs);
/* The node a job or snapshot command names as `device` (QEMU's
 * qmp_get_root_bs): found by node name, a root node ("Need a root block
 * node"), with a driver ("Device has no medium"). */
BlockDriverState *bdrv_lookup_root_bs(const char *device, GError **errp);
/* node-name rules: <=31 chars, starts with a letter, [A-Za-z0-9-._]. */
bool bdrv_node_name_valid(const char *name, GError **errp);
const char *bdrv_get_node_name(const BlockDriverState *bs);
const char *bdrv_get_format_name(const BlockDriverState *bs);

/* ---- opening and closing ---- */

/*
 * Open a node tree from blockdev-add options.  Children given inline are
 * opened recursively (with generated node names "#blockNNN" if they have
 * none); children given by reference must exist.  The returned node has
 * one reference, owned by the caller.
 */
BlockDriverState *coroutine_fn bdrv_co_open(const BlockdevOptions *opts,
                                            GError **errp);
#include <json-glib/json-glib.h>
/*
 * Options to open an image named by its file name as QEMU's
 * bdrv_open(filename, {driver: fmt, node-name}, flags of `like`) does
 * (snapshot overlays, drive-backup/drive-mirror targets): the format over
 * a `file` node (or the file node itself for fmt "file"), with like's
 * read-only, auto-read-only, cache and discard settings; no_backing
 * leaves the backing file the header names unopened.  Callers may
 * override members before opening it with bdrv_co_open_object().  NULL
 * with "Unknown driver" if fmt is not a driver.
 */
JsonObject *bdrv_image_open_options(const char *filename, const char *fmt,
                                    const char *node_name,
                                    BlockDriverState *like, bool no_backing,
                                    GError **errp);
/* bdrv_co_open_json() of an options object (which it releases). */
BlockDriverState *coroutine_fn bdrv_co_open_object(JsonObject *o,
                                                   GError **errp);
/* bdrv_co_open(), from options as JSON (keyval: scalars may be strings);
 * the node is not consumed. */
BlockDriverState *coroutine_fn bdrv_co_open_json(JsonNode *node, bool keyval,
                                                 GError **errp);
/* {driver: fmt, file: {driver: file, filename}}: how an image names its
 * children (backing file, data file) in its header. */
BlockdevOptions *bdrv_format_on_file_options(const char *fmt,
                                             const char *filename,
                                             GError **errp);
/* bdrv_co_open(), from keyval text ("driver=raw,file.driver=file,...") */
BlockDriverState *coroutine_fn bdrv_co_open_keyval(const char *opts,
                                                   GError **errp);
/* Create (or truncate to 0) `filename` and open it as a `file` node, with
 * a reference for the caller: where image creation writes its format. */
BlockDriverState *coroutine_fn bdrv_co_create_empty_file(const char *filename,
                                                         GError **errp);
/* The node a blockdev-create `file` member names (a node-name) or
 * describes (inline options), with a reference for the caller; a
 * missing member is an error. */
BlockDriverState *coroutine_fn bdrv_co_open_create_file(
    const BlockdevRef *ref, GError **errp);
void bdrv_ref(BlockDriverState *bs);
/* Drop a reference; at zero the node is drained, flushed, detached from
 * its children and closed. */
void bdrv_unref(BlockDriverState *bs);

/* blockdev-add / blockdev-del semantics (monitor ownership). */
void bdrv_set_monitor_owned(BlockDriverState *bs);
bool bdrv_is_monitor_owned(const BlockDriverState *bs);
/* Fails if bs is not monitor-owned or has parents/users; names them. */
int coroutine_fn bdrv_co_blockdev_del(BlockDriverState *bs, GError **errp);
/* Flush and close every node (shutdown). */
void bdrv_close_all(void);

bool bdrv_is_read_only(const BlockDriverState *bs);
/* QEMU's bdrv_reopen_set_read_only(): blockdev-reopen bs with its own
 * options but `read-only` as given (block/reopen.c). */
int coroutine_fn bdrv_co_reopen_set_read_only(BlockDriverState *bs,
                                              bool read_only, GError **errp);
int64_t bdrv_getlength(BlockDriverState *bs);
int64_t coroutine_fn bdrv_co_get_allocated_file_size(BlockDriverState *bs);

/* ---- edges and graph ---- */

BlockDriverState *bdrv_child_bs(const BdrvChild *c);
/* The filtered child (for filters) or the backing child (for formats). */
BdrvChild *bdrv_filter_or_cow_child(BlockDriverState *bs);
BlockDriverState *bdrv_backing_bs(BlockDriverState *bs);
/* Skip implicit filters: the first node below bs that is not a filter. */
BlockDriverState *bdrv_skip_filters(BlockDriverState *bs);
/* QEMU's bdrv_skip_implicit_filters: past the filters a job inserted
 * without a name of the user's. */
BlockDriverState *bdrv_skip_implicit_filters(BlockDriverState *bs);
/* QEMU's bdrv_chain_contains: `bs` is top or below it through filtered
 * and backing (COW) children. */
bool bdrv_chain_contains(BlockDriverState *top, BlockDriverState *bs);
/* The format of an image named without one where blockd probes (a
 * backing file in a header, an existing target): "qcow2" by its magic,
 * else "raw". */
const char *bdrv_probe_format(const char *filename);
/* If bs is the backing file of a node, that node's name (the newest such
 * parent), else NULL.  QEMU refuses most operations on backing nodes
 * (blockdev-del, block_resize) naming it. */
const char *bdrv_backing_user(BlockDriverState *bs);
/* Description of the user of an edge: "node 'fmt0'", "block export 'e0'",
 * "block job 'job0'"; caller frees. */
char *bdrv_child_user_desc(const BdrvChild *c);

/*
 * Graph-mod counter.  While an edge's count is non-zero it must not be
 * detached or replaced; the failing operation names the holder.
 */
void bdrv_child_graph_mod_inc(BdrvChild *c, const char *holder);
void bdrv_child_graph_mod_dec(BdrvChild *c);
bool bdrv_child_graph_mod_check(const BdrvChild *c, GError **errp);

/* ---- requests (io.c) ---- */

int coroutine_fn bdrv_co_preadv(BdrvChild *child, int64_t offset,
                                int64_t bytes, IOVector *qiov,
                                BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwritev(BdrvChild *child, int64_t offset,
                                 int64_t bytes, IOVector *qiov,
                                 BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pread(BdrvChild *child, int64_t offset,
                               int64_t bytes, void *buf,
                               BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwrite(BdrvChild *child, int64_t offset,
                                int64_t bytes, const void *buf,
                                BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwrite_zeroes(BdrvChild *child, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pdiscard(BdrvChild *child, int64_t offset,
                                  int64_t bytes);
/*
 * Copy [src_offset, +bytes) of src's node to dst_offset of dst's node
 * without the data passing through us (copy_file_range(2) where both
 * ends come down to files through nodes that can map the range: raw,
 * file).  -ENOTSUP when a node on either side cannot (then read and
 * write instead); nothing else is tried.  The range must be aligned to
 * both nodes' request alignment and lie within both nodes.  The
 * destination is written as by bdrv_co_pwritev (permission, dirty
 * bitmaps, serialisation).
 */
int coroutine_fn bdrv_co_copy_range(BdrvChild *src, int64_t src_offset,
                                    BdrvChild *dst, int64_t dst_offset,
                                    int64_t bytes);
/* The two halves, for drivers passing the request on (block_int.h). */
int coroutine_fn bdrv_co_copy_range_from(BdrvChild *src, int64_t src_offset,
                                         BdrvChild *dst, int64_t dst_offset,
                                         int64_t bytes);
int coroutine_fn bdrv_co_copy_range_to(BdrvChild *src, int64_t src_offset,
                                       BdrvChild *dst, int64_t dst_offset,
                                       int64_t bytes);
int coroutine_fn bdrv_co_flush(BlockDriverState *bs);
int coroutine_fn bdrv_co_truncate(BdrvChild *child, int64_t offset,
                                  bool exact, PreallocMode prealloc,
                                  BdrvRequestFlags flags, GError **errp);
/*
 * Status of [offset, offset+bytes) in bs alone: returns BDRV_BLOCK_* bits
 * for a prefix of *pnum bytes (> 0 unless at EOF), or -errno.  If map/file
 * are non-NULL and the result has OFFSET_VALID, *map is the offset in
 * *file.
 */
int coroutine_fn bdrv_co_block_status(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum,
                                      int64_t *map, BlockDriverState **file);
/* Same over the backing chain from bs down to (not including) base. */
int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs,
                                            BlockDriverState *base,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockDriverState **file);
/* 1 if allocated in bs itself, 0 if not (for *pnum bytes), -errno. */
int coroutine_fn bdrv_co_is_allocated(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum);

/*
 * Drain: stop new requests from BlockBackends above bs (they wait) and
 * wait until no request is in flight in bs or in any node above it (as in
 * QEMU; requests bs sends to its children are counted in bs itself).
 * Nests.  Callable from a coroutine (yields) or from outside one (polls
 * the loop).
 */
void bdrv_drained_begin(BlockDriverState *bs);
void bdrv_drained_end(BlockDriverState *bs);
void bdrv_drain_all_begin(void);
void bdrv_drain_all_end(void);

/* ---- block backends (root users) ---- */

/* A user that will hold `perm` and allow others `shared_perm`. */
BlockBackend *blk_new(uint64_t perm, uint64_t shared_perm);
/* Name the user in permission conflicts ("block export 'e0'").  */
void blk_set_user_desc(BlockBackend *blk, const char *desc);
int blk_insert_bs(BlockBackend *blk, BlockDriverState *bs, GError **errp);
void blk_remove_bs(BlockBackend *blk);
void blk_unref(BlockBackend *blk);
BlockDriverState *blk_bs(BlockBackend *blk);
BdrvChild *blk_root(BlockBackend *blk);
int blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared_perm,
                 GError **errp);
void blk_get_perm(BlockBackend *blk, uint64_t *perm, uint64_t *shared);
/* Do not queue requests while drained (jobs issuing their own I/O). */
void blk_set_disable_request_queuing(BlockBackend *blk, bool disable);
/* Iterate every BlockBackend, oldest first: pass NULL to start. */
BlockBackend *blk_all_next(BlockBackend *prev);

/* Callbacks for the user (an export) when the graph acts on it. */
typedef struct BlockDevOps {
    void (*drained_begin)(void *opaque);
    void (*drained_end)(void *opaque);
    /* true if the user has stopped issuing requests */
    bool (*drained_poll)(void *opaque);
    void (*resize)(void *opaque);
} BlockDevOps;
void blk_set_dev_ops(BlockBackend *blk, const BlockDevOps *ops,
                     void *opaque);

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset,
                               int64_t bytes, IOVector *qiov,
                               BdrvRequestFlags flags);
int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset,
                                int64_t bytes, IOVector *qiov,
                                BdrvRequestFlags flags);
int coroutine_fn blk_co_pread(BlockBackend *blk, int64_t offset,
                              int64_t bytes, void *buf,
                              BdrvRequestFlags flags);
int coroutine_fn blk_co_pwrite(BlockBackend *blk, int64_t offset,
                               int64_t bytes, const void *buf,
                               BdrvRequestFlags flags);
int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags);
int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset,
                                 int64_t bytes);
int coroutine_fn blk_co_flush(BlockBackend *blk);
int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset,
                                 bool exact, PreallocMode prealloc,
                                 BdrvRequestFlags flags, GError **errp);
int coroutine_fn blk_co_block_status(BlockBackend *blk, int64_t offset,
                                     int64_t bytes, int64_t *pnum);
int64_t blk_getlength(BlockBackend *blk);
bool blk_is_writable(BlockBackend *blk);

/* ---- fault-injection events (blkdebug) ---- */
/* Tell the driver of `child`'s node that `event` happened (no-op unless
 * it is blkdebug). */
void bdrv_debug_event(BdrvChild *child, BlkdebugEvent event);
#define BLKDBG_EVENT(child, evt)                                               \
    do {                                                                       \
        if (child) {                                                           \
            bdrv_debug_event(child, evt);                                      \
        }                                                                      \
    } while (0)

/* ---- queries (qmp-block.c) ---- */
BlockDeviceInfo *bdrv_block_device_info(BlockDriverState *bs, bool flat,
                                        GError **errp);
ImageInfo *coroutine_fn bdrv_co_image_info(BlockDriverState *bs,
                                           GError **errp);

#endif
