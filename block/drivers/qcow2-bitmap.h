/*
 * qcow2 persistent dirty bitmaps (the bitmaps extension of the qcow2
 * spec): parsing the extension and the bitmap directory, and loading the
 * bitmaps of an image opened read-only.
 *
 * The parsers are pure functions over untrusted bytes, with the spec's and
 * QEMU's limits (unit test and fuzz target).  Read-only opens load the
 * bitmaps readonly; writable opens mark them in use on disk and store
 * them back on clean close.  As in QEMU, bitmaps are not stored on flush:
 * a daemon killed after a flush leaves them in use (inconsistent).
 */
#ifndef BLOCK_DRIVERS_QCOW2_BITMAP_H
#define BLOCK_DRIVERS_QCOW2_BITMAP_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qapi/qapi-types.h"
#include "util/coroutine.h"

typedef struct BlockDriverState BlockDriverState;

#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024 * QCOW2_MAX_BITMAPS)
#define QCOW2_BME_FLAG_IN_USE (1U << 0)
#define QCOW2_BME_FLAG_AUTO (1U << 1)
#define QCOW2_BME_FLAG_EXTRA_DATA_COMPATIBLE (1U << 2)
#define QCOW2_BME_MIN_GRANULARITY_BITS 9
#define QCOW2_BME_MAX_GRANULARITY_BITS 31
#define QCOW2_BME_MAX_NAME_SIZE 1023
#define QCOW2_BME_MAX_TABLE_SIZE 0x8000000

typedef struct Qcow2BitmapExt {
    uint32_t nb_bitmaps;
    uint64_t dir_size;
    uint64_t dir_offset;
} Qcow2BitmapExt;

typedef struct Qcow2BitmapEntry {
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t flags;
    uint8_t type;
    uint8_t granularity_bits;
    char *name;
} Qcow2BitmapEntry;

/* The 24-byte header extension; checks the counts, sizes and alignment. */
bool qcow2_bitmap_ext_parse(const uint8_t *data, size_t len,
                            uint64_t cluster_size, Qcow2BitmapExt *ext,
                            GError **errp);
/*
 * The directory: exactly ext->nb_bitmaps entries filling exactly `len`
 * bytes.  Each entry is checked against the image (cluster size, virtual
 * size): type, granularity, flags, name, table size and alignment, unique
 * names.  Returns an array of nb_bitmaps entries (free with
 * qcow2_bitmap_dir_free) or NULL.
 */
Qcow2BitmapEntry *qcow2_bitmap_dir_parse(const uint8_t *buf, size_t len,
                                         uint32_t nb_bitmaps,
                                         uint64_t cluster_size,
                                         int64_t virtual_size, GError **errp);
void qcow2_bitmap_dir_free(Qcow2BitmapEntry *e, uint32_t nb_bitmaps);

/* Granules of a bitmap and the bitmap-table entries covering them. */
uint64_t qcow2_bitmap_table_entries(int64_t virtual_size,
                                    uint8_t granularity_bits,
                                    uint64_t cluster_size);

/*
 * Open: create the node's stored bitmaps (its driver state must be open).
 * Read-only image: readonly bitmaps.  Writable: each bitmap that was
 * stored cleanly is loaded and marked in-use on disk (directory rewritten
 * and flushed) before this returns, so before any write.  An entry
 * already in use loads inconsistent (no data read) and stays as it is on
 * disk until removed.  No-op without a valid bitmaps extension.
 */
int coroutine_fn qcow2_bitmaps_load(BlockDriverState *bs, GError **errp);
/*
 * Clean close: write every persistent, consistent bitmap (data clusters,
 * table, a new directory without in-use, then the header, then free the
 * old clusters).  A crash at any point leaves an openable image: the old
 * directory (bitmaps in use: inconsistent) or the new one; at worst
 * clusters leak.
 */
int coroutine_fn qcow2_bitmaps_store(BlockDriverState *bs, GError **errp);
/* BlockDriver hooks (QEMU's checks and messages). */
bool coroutine_fn qcow2_co_can_store_new_dirty_bitmap(BlockDriverState *bs,
                                                      const char *name,
                                                      uint32_t granularity,
                                                      GError **errp);
int coroutine_fn qcow2_co_remove_persistent_dirty_bitmap(BlockDriverState *bs,
                                                         const char *name,
                                                         GError **errp);
/* Before a resize: every persistent bitmap must be resizable (not
 * inconsistent, busy or readonly).  -ENOTSUP with the error otherwise. */
int qcow2_bitmaps_truncate_check(BlockDriverState *bs, GError **errp);

/*
 * The bitmaps the image stores, as its directory says now (in directory
 * order, flags as on disk), for ImageInfoSpecificQCow2's "bitmaps", as
 * QEMU reports them in query-named-block-nodes and qemu-img info.  *list
 * stays NULL when the image has no bitmaps.  0 or -errno with errp set.
 */
int coroutine_fn qcow2_bitmaps_get_info(BlockDriverState *bs,
                                        Qcow2BitmapInfoList **list,
                                        GError **errp);
/*
 * Offline repair (blockd-img check --repair-bitmaps) of an image opened
 * writable: every bitmap that was not stored cleanly (in use on disk and
 * loaded inconsistent) is rewritten as fully dirty (each bitmap table
 * entry "all ones", no data clusters) and its in-use flag cleared, the
 * rest of its entry (name, granularity, auto) kept.  Its table is sized
 * for the current virtual size.  The next incremental backup from such a
 * bitmap copies everything, but the bitmap chain goes on.  Crash-safe as
 * the store.  The in-memory bitmaps stay inconsistent: close the node
 * (nothing more is written for them) and reopen to use them.  Appends the
 * repaired names to `names` (may be NULL); returns how many or -errno.
 */
int coroutine_fn qcow2_bitmaps_repair_in_use(BlockDriverState *bs,
                                             GPtrArray *names, GError **errp);

/*
 * Reopen read-write (blockdev-reopen): every loaded, consistent persistent
 * bitmap is marked in use on disk (directory rewritten in place and
 * flushed, before any write) and made writable, as at a writable open.
 * Also used to undo a reopen read-only that stored the bitmaps but then
 * failed.  0 or -errno with errp set (the bitmaps then stay readonly).
 */
int coroutine_fn qcow2_bitmaps_reopen_rw(BlockDriverState *bs, GError **errp);

#endif
