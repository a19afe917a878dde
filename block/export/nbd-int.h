/*
 * Internals shared by the export and NBD server files: the export and
 * client structures and the functions that pass them between phases.
 *
 * Lifetimes:
 * - An export holds one reference for the export list (dropped when its
 *   deletion is requested) and one per attached client.  At zero it is
 *   removed, its BlockBackend released and BLOCK_EXPORT_DELETED sent.
 * - A client is owned by its session coroutine, which negotiates, reads
 *   requests, and on the way out waits for its in-flight requests before
 *   freeing the client.  Others only ask it to close (nbd_client_close).
 */
#ifndef BLOCK_EXPORT_NBD_INT_H
#define BLOCK_EXPORT_NBD_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "block/dirty-bitmap.h"
#include "block/export/export.h"
#include "util/coroutine.h"

typedef struct NBDClient NBDClient;

/*
 * A range of an export known to hold data (block status said neither zero
 * nor an error), so a structured read inside it needs no block-status
 * query: one per 64 MiB chunk of the export, direct-mapped (nbd-requests.c).
 */
#define NBD_DATA_CHUNK_SHIFT 26
#define NBD_DATA_SLOTS 64
typedef struct NBDDataExtent {
    uint64_t chunk;      /* offset >> NBD_DATA_CHUNK_SHIFT of `start` */
    uint64_t start, end; /* empty when start == end */
} NBDDataExtent;
typedef struct NBDSendEntry NBDSendEntry; /* nbd-requests.c */

struct BlockExport {
    char *id;
    BlockExportType type;
    BlockBackend *blk;
    int refcount;
    /* false once deletion was requested: shown as "shutting-down" */
    bool user_owned;

    /* NBD */
    char *name;
    char *description;
    bool writable;
    bool writethrough;
    bool allocation_depth;
    /* exported dirty bitmaps (busy while exported) and their context
     * names, "qemu:dirty-bitmap:NAME" (nbd-bitmap.c) */
    BdrvDirtyBitmap **bitmaps;
    char **bitmap_ctx;
    unsigned nr_bitmaps;
    int quiesced;                   /* drained_begin nesting */
    NBDDataExtent data_known[NBD_DATA_SLOTS];
    LIST_HEAD(, NBDClient) clients; /* attached (transmission phase) */
    LIST_ENTRY(BlockExport) next;
};

/* The meta contexts a client selected with NBD_OPT_SET_META_CONTEXT. */
typedef struct NBDMetaSelection {
    char *export_name; /* the export they were negotiated for */
    bool base_allocation;
    bool allocation_depth;
    /* qemu:dirty-bitmap:NAME: one flag per bitmap of the export it was
     * negotiated for (context id NBD_META_ID_DIRTY_BITMAP + index) */
    bool *bitmaps;
    unsigned nr_bitmaps;
    unsigned count; /* number of selected contexts */
} NBDMetaSelection;

struct NBDClient {
    int fd;
    bool closing;

    /* negotiated */
    bool fixed_newstyle;
    bool no_zeroes;
    bool structured_reply;
    NBDMetaSelection meta;
    BlockExport *exp; /* set (and referenced) on entering transmission */
    uint16_t tx_flags;
    int64_t exp_size;

    /* transmission */
    unsigned nb_inflight;
    uint64_t inflight_bytes; /* read/write buffers those requests hold */
    CoQueue reader_wait; /* the session waits here for slots, drain end,
                            and (on exit) for in-flight requests */
    /* replies waiting to be sent, in order (nbd-requests.c batches them) */
    NBDSendEntry *sendq_head, *sendq_tail;
    unsigned sendq_len;
    NBDSendEntry *send_leader; /* queued first; flushes next iteration */
    bool sending;              /* a flush is writing (maybe waiting) */

    /* input buffer: many small requests arrive in one read() */
    uint8_t *rbuf;
    size_t rbuf_pos, rbuf_len;

    LIST_ENTRY(NBDClient) exp_link;
    LIST_ENTRY(NBDClient) all_link;
};

/* Most requests a client may have in flight; the reader stops reading
 * while this many are being served. */
#define NBD_MAX_INFLIGHT 32
/* ...and at most this many bytes of read/write buffers (one request of
 * any valid size is always admitted). */
#define NBD_MAX_INFLIGHT_BYTES (64 * 1024 * 1024)

/* ---- export.c ---- */
void blk_exp_ref(BlockExport *exp);
void blk_exp_unref(BlockExport *exp);
/* Start deleting: close clients (hard) and drop the list's reference. */
void blk_exp_request_shutdown(BlockExport *exp);
/* Iterate exports, newest first: pass NULL to start. */
BlockExport *blk_exp_next(BlockExport *prev);
/* The NBD export a client may select by name (NULL if none or going). */
BlockExport *nbd_export_find(const char *name);
/* Wait (yielding, or iterating the loop outside coroutines) until no
 * export is left that `pred` accepts. */
void blk_exp_wait_gone(bool (*pred)(BlockExport *exp, void *opaque),
                       void *opaque);

/* ---- nbd-server.c ---- */
/* Start serving a connected socket (taken over) as a new client. */
NBDClient *nbd_client_new(int fd);
/*
 * Read exactly len bytes from the client, through its input buffer (every
 * read of a client's socket must go through here).  As co_sock_read_full:
 * 1, 0 at end of stream before the first byte, -EPIPE part way, -errno.
 */
int coroutine_fn nbd_client_read(NBDClient *client, void *buf, size_t len);
/* Ask a client to go away: shut the socket and wake its session. */
void nbd_client_close(NBDClient *client);
/* Stop listening and close every client (nbd-server-stop, shutdown);
 * no-op when not running. */
void nbd_server_stop_all(void);
/* The server's max-connections (0: unlimited, or no server). */
uint32_t nbd_server_max_connections(void);
/* Number of live clients (all phases); for tests and the fuzz target. */
unsigned nbd_client_count(void);

/* ---- nbd-negotiate.c ---- */
/*
 * Run the handshake.  Returns 1 when the client entered transmission
 * (client->exp is set and referenced), 0 when the client ended the
 * session cleanly (NBD_OPT_ABORT or end of stream), -errno to drop it.
 */
int coroutine_fn nbd_negotiate(NBDClient *client);
void nbd_meta_selection_clear(NBDMetaSelection *m);

/* ---- nbd-bitmap.c ---- */
/* block-export-add's `bitmaps`: look up and check each, then mark them
 * busy; qemu-storage-daemon's messages. */
bool nbd_export_bitmaps_init(BlockExport *exp,
                             const BlockDirtyBitmapOrStrList *list,
                             GError **errp);
void nbd_export_bitmaps_release(BlockExport *exp);
/* Select the export's bitmaps that meta-context query q names. */
void nbd_meta_match_bitmaps(BlockExport *exp, const char *q, bool list,
                            NBDMetaSelection *sel);
/* Status of context `id` at off: flags (NBD_STATE_DIRTY or 0) for *pnum
 * bytes (<= bytes), or -errno. */
int nbd_bitmap_status(BlockExport *exp, uint32_t id, uint64_t off,
                      uint64_t bytes, int64_t *pnum);

/* ---- nbd-requests.c ---- */
/* Serve requests until disconnect; returns when the reader stops (the
 * caller then waits for in-flight requests): true for NBD_CMD_DISC. */
bool coroutine_fn nbd_transmission(NBDClient *client);
/* Drain callbacks: readers stop dispatching while the export is drained. */
void nbd_export_drained_begin(BlockExport *exp);
void nbd_export_drained_end(BlockExport *exp);

#endif
