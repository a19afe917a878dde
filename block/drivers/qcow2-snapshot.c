/*
 * qcow2 internal snapshots, created and deleted at run time
 * (blockdev-snapshot-internal-sync, blockdev-snapshot-delete-internal-sync,
 * blockd-img snapshot).  The snapshot table format is qcow2.txt's.
 *
 * Refcount model (the one `qemu-img check` verifies): a data cluster's
 * refcount is the number of L1 tables (active and snapshots) that reach it
 * through some L2 table, an L2 table's the number of L1 tables pointing to
 * it.  QCOW_OFLAG_COPIED is set in the active L1/L2 entries exactly where
 * that refcount is 1; the write path copies everything else before
 * writing.
 *
 * Crash safety: whatever is on disk when the process dies, refcounts are
 * never lower than the references that exist (at worst clusters leak).
 * Create: L1 copy written, refcounts raised and flushed, active COPIED
 * flags cleared, new snapshot table written and flushed, header switched,
 * old table freed.  Delete: new table without the entry, header switched,
 * then refcounts dropped, the snapshot's L1 freed and the active COPIED
 * flags set again where a refcount fell back to 1.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/qcow2.h"
#include "util/error.h"

#define SNAP_HEADER_LEN 40
#define SNAP_EXTRA_LEN 24 /* vm_state_size_large, disk_size, icount */

/* ---- table entries (pure, unit-tested) ---- */

int64_t qcow2_snapshot_decode(const uint8_t *buf, size_t len,
                              Qcow2Snapshot *sn, uint64_t *disk_size)
{
    if (len < SNAP_HEADER_LEN) {
        return -EINVAL;
    }
    uint16_t id_len = qcow2_be16(buf + 12), name_len = qcow2_be16(buf + 14);
    uint32_t extra = qcow2_be32(buf + 36);
    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
        return -EFBIG;
    }
    size_t total = SNAP_HEADER_LEN + (size_t)extra + id_len + name_len;
    if (total > len) {
        return -EINVAL;
    }
    const uint8_t *x = buf + SNAP_HEADER_LEN;
    if (sn) {
        memset(sn, 0, sizeof(*sn));
        sn->l1_table_offset = qcow2_be64(buf);
        sn->l1_size = qcow2_be32(buf + 8);
        sn->date_sec = qcow2_be32(buf + 16);
        sn->date_nsec = qcow2_be32(buf + 20);
        sn->vm_clock_nsec = qcow2_be64(buf + 24);
        sn->vm_state_size = qcow2_be32(buf + 32);
        if (extra >= 24) {
            sn->icount = qcow2_be64(x + 16);
            sn->has_icount = sn->icount != UINT64_MAX;
        }
        sn->id_str = g_strndup((const char *)x + extra, id_len);
        sn->name = g_strndup((const char *)x + extra + id_len, name_len);
    }
    if (disk_size) {
        *disk_size = extra >= 16 ? qcow2_be64(x + 8) : UINT64_MAX;
    }
    /* the next entry starts 8-byte aligned (the padding may be missing
     * after the last one) */
    return (int64_t)MIN(ROUND_UP(total, 8), ROUND_UP(len, 8));
}

size_t qcow2_snapshot_encoded_size(const Qcow2Snapshot *sn)
{
    return ROUND_UP(SNAP_HEADER_LEN + SNAP_EXTRA_LEN + strlen(sn->id_str) +
                        strlen(sn->name),
                    8);
}

size_t qcow2_snapshot_encode(uint8_t *buf, const Qcow2Snapshot *sn,
                             uint64_t disk_size)
{
    size_t id_len = strlen(sn->id_str), name_len = strlen(sn->name);
    size_t total = qcow2_snapshot_encoded_size(sn);
    memset(buf, 0, total);
    qcow2_put_be64(buf, sn->l1_table_offset);
    qcow2_put_be32(buf + 8, sn->l1_size);
    qcow2_put_be16(buf + 12, (uint16_t)id_len);
    qcow2_put_be16(buf + 14, (uint16_t)name_len);
    qcow2_put_be32(buf + 16, sn->date_sec);
    qcow2_put_be32(buf + 20, sn->date_nsec);
    qcow2_put_be64(buf + 24, sn->vm_clock_nsec);
    qcow2_put_be32(buf + 32, sn->vm_state_size);
    qcow2_put_be32(buf + 36, SNAP_EXTRA_LEN);
    uint8_t *x = buf + SNAP_HEADER_LEN;
    qcow2_put_be64(x, sn->vm_state_size);
    qcow2_put_be64(x + 8, disk_size);
    qcow2_put_be64(x + 16, sn->has_icount ? sn->icount : UINT64_MAX);
    memcpy(x + SNAP_EXTRA_LEN, sn->id_str, id_len);
    memcpy(x + SNAP_EXTRA_LEN + id_len, sn->name, name_len);
    return total;
}

int qcow2_snapshot_find(const Qcow2Snapshot *list, uint32_t n,
                        const char *id, const char *name)
{
    for (uint32_t i = 0; i < n; i++) {
        if (id && strcmp(list[i].id_str, id)) {
            continue;
        }
        if (name && strcmp(list[i].name, name)) {
            continue;
        }
        if (!id && !name) {
            continue;
        }
        return (int)i;
    }
    return -1;
}

char *qcow2_snapshot_new_id(const Qcow2Snapshot *list, uint32_t n)
{
    unsigned long max = 0;
    for (uint32_t i = 0; i < n; i++) {
        unsigned long v = strtoul(list[i].id_str, NULL, 10);
        if (v > max) {
            max = v;
        }
    }
    return g_strdup_printf("%lu", max + 1);
}

/* ---- on-disk table ---- */

/* The raw bytes of each entry of the current table (unknown extra data is
 * kept verbatim when the table is rewritten). */
static int coroutine_fn read_raw_table(BlockDriverState *bs, GPtrArray **out,
                                       GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    GPtrArray *raw = g_ptr_array_new_with_free_func(
        (GDestroyNotify)g_bytes_unref);
    if (s->nb_snapshots) {
        uint8_t *buf = g_malloc(s->snapshots_size);
        int ret = bdrv_co_pread(bs->file, (int64_t)s->snapshots_offset,
                                (int64_t)s->snapshots_size, buf, 0);
        if (ret < 0) {
            g_free(buf);
            g_ptr_array_unref(raw);
            error_setg_errno(errp, -ret, "Failed to read snapshot table");
            return ret;
        }
        size_t pos = 0;
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            Qcow2Snapshot sn;
            int64_t n = qcow2_snapshot_decode(buf + pos, s->snapshots_size - pos,
                                              &sn, NULL);
            if (n < 0 || strcmp(sn.id_str, s->snapshots[i].id_str) ||
                strcmp(sn.name, s->snapshots[i].name)) {
                if (n >= 0) {
                    g_free(sn.id_str);
                    g_free(sn.name);
                }
                g_free(buf);
                g_ptr_array_unref(raw);
                error_setg(errp, "Snapshot table changed on disk");
                return -EIO;
            }
            g_free(sn.id_str);
            g_free(sn.name);
            size_t len = MIN((size_t)n, s->snapshots_size - pos);
            /* keep the padding: the entry is re-aligned on write */
            uint8_t *e = g_malloc0((size_t)n);
            memcpy(e, buf + pos, len);
            g_ptr_array_add(raw, g_bytes_new_take(e, (size_t)n));
            pos += (size_t)n;
        }
        g_free(buf);
    }
    *out = raw;
    return 0;
}

/* qcow2_alloc_clusters() and the end of what metadata may point into. */
static uint64_t image_end(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t flen = bdrv_getlength(bs->file->bs);
    uint64_t end = flen > 0 ? ROUND_UP((uint64_t)flen, s->cluster_size) : 0;
    return MAX(end, s->fresh_start);
}

/*
 * Clusters a snapshot operation frees are discarded in the file, as QEMU's
 * pass-discard-snapshot (on by default) does; contiguous ones together.
 * Advisory: failures are ignored (and the file node drops discards unless
 * it was opened with discard=unmap).
 */
typedef struct Discards {
    bool on;
    uint64_t start, len;
} Discards;

static void discards_init(BlockDriverState *bs, Discards *dc)
{
    const BlockdevOptions *o = bs->options;
    dc->on = true;
    if (o && o->driver == BLOCKDEV_DRIVER_QCOW2 &&
        o->u.qcow2.has_pass_discard_snapshot) {
        dc->on = o->u.qcow2.pass_discard_snapshot;
    }
    dc->start = dc->len = 0;
}

static void coroutine_fn discards_flush(BlockDriverState *bs, Discards *dc)
{
    if (dc->len) {
        bdrv_co_pdiscard(bs->file, (int64_t)dc->start, (int64_t)dc->len);
    }
    dc->len = 0;
}

/* After a reference to [host, host+len) went: queue the clusters of the
 * range that are free now. */
static void coroutine_fn discards_note(BlockDriverState *bs, Discards *dc,
                                       uint64_t host, uint64_t len)
{
    BDRVQcow2State *s = bs->opaque;
    if (!dc || !dc->on || !len) {
        return;
    }
    uint64_t first = host >> s->cluster_bits;
    uint64_t last = (host + len - 1) >> s->cluster_bits;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t rc = 1;
        if (qcow2_get_refcount(bs, c, &rc) < 0 || rc) {
            continue;
        }
        uint64_t off = c << s->cluster_bits;
        if (dc->len && off == dc->start + dc->len) {
            dc->len += s->cluster_size;
            continue;
        }
        discards_flush(bs, dc);
        dc->start = off;
        dc->len = s->cluster_size;
    }
}

/* qcow2_free_clusters(), then discard what is free now. */
static void coroutine_fn free_and_discard(BlockDriverState *bs,
                                          uint64_t off, uint64_t len)
{
    Discards dc;
    discards_init(bs, &dc);
    qcow2_free_clusters(bs, off, len);
    discards_note(bs, &dc, off, len);
    discards_flush(bs, &dc);
}

/*
 * Write `entries` (GBytes each) as the new snapshot table and switch the
 * header to it; the new in-memory list `list` (n entries) replaces
 * s->snapshots on success (ownership passes), the old table's clusters
 * are freed.  On failure nothing changed in memory; *maybe_switched says
 * the header write itself failed, so the disk may hold either table (the
 * caller then frees nothing either may need).  Caller holds s->lock.
 */
static int coroutine_fn write_table(BlockDriverState *bs, GPtrArray *entries,
                                    Qcow2Snapshot *list, uint32_t n,
                                    bool *maybe_switched)
{
    BDRVQcow2State *s = bs->opaque;
    size_t size = 0;
    for (guint i = 0; i < entries->len; i++) {
        size += g_bytes_get_size(entries->pdata[i]);
    }
    int64_t off = 0;
    int ret;
    if (size > 64 * 1024 * 1024) {
        return -EFBIG; /* QEMU's QCOW_MAX_SNAPSHOTS_SIZE */
    }
    if (size) {
        off = qcow2_alloc_clusters(bs, size);
        if (off < 0) {
            return (int)off;
        }
        uint8_t *buf = g_malloc0(size);
        size_t pos = 0;
        for (guint i = 0; i < entries->len; i++) {
            gsize l;
            const void *d = g_bytes_get_data(entries->pdata[i], &l);
            memcpy(buf + pos, d, l);
            pos += l;
        }
        /* the table's refcounts reach the disk before the table, the
         * table before the header that points to it */
        ret = qcow2_cache_flush(bs, s->rc_cache);
        if (ret == 0) {
            ret = qcow2_pre_write_overlap_check(bs, 0, off, (int64_t)size);
        }
        if (ret == 0) {
            ret = bdrv_co_pwrite(bs->file, off, (int64_t)size, buf, 0);
        }
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        g_free(buf);
        if (ret < 0) {
            qcow2_free_clusters(bs, (uint64_t)off, size);
            return ret;
        }
    }
    uint32_t old_n = s->nb_snapshots;
    uint64_t old_off = s->snapshots_offset, old_size = s->snapshots_size;
    Qcow2Snapshot *old_list = s->snapshots;
    s->nb_snapshots = n;
    s->snapshots_offset = (uint64_t)off;
    s->snapshots_size = size;
    s->snapshots = list;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        /* The header may or may not have reached the disk (a failed
         * flush after the write): both tables stay allocated and the
         * caller keeps what either one needs (leaks at worst). */
        s->nb_snapshots = old_n;
        s->snapshots_offset = old_off;
        s->snapshots_size = old_size;
        s->snapshots = old_list;
        *maybe_switched = true;
        return ret;
    }
    qcow2_snapshot_list_free(old_list, old_n);
    if (old_size) {
        free_and_discard(bs, old_off, old_size);
    }
    return 0;
}

/* ---- walking what an L1 table reaches ---- */

/* A copy of the L2 table at l2_off (through the cache: it may be dirty
 * there).  The image controls the offset: checked. */
static int coroutine_fn load_l2_copy(BlockDriverState *bs, uint64_t l2_off,
                                     uint64_t *copy)
{
    BDRVQcow2State *s = bs->opaque;
    if (qcow2_offset_into_cluster(s, l2_off) ||
        l2_off + s->cluster_size > image_end(bs)) {
        return qcow2_signal_corruption(
            bs, false, (int64_t)l2_off, -1,
            "L2 table offset %#" PRIx64 " invalid", l2_off);
    }
    uint64_t *t;
    int ret = qcow2_cache_get(bs, s->l2_cache, l2_off, (void **)&t);
    if (ret < 0) {
        return ret;
    }
    memcpy(copy, t, s->cluster_size);
    qcow2_cache_put(s->l2_cache, (void **)&t);
    return 0;
}

/*
 * Add `addend` (+1/-1) to the refcount of every L2 table the L1 table
 * `l1` reaches and of every cluster those reach: one update per
 * reference, in a fixed order, at most `limit` of them (the undo of a
 * partial walk replays the same prefix); *done counts those made.
 */
static int coroutine_fn walk_refcounts(BlockDriverState *bs,
                                       const uint64_t *l1, uint32_t l1_size,
                                       int addend, uint64_t limit,
                                       uint64_t *done)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *l2 = g_malloc(s->cluster_size);
    uint64_t end = image_end(bs);
    int ret = 0;
    Discards dc;
    discards_init(bs, &dc);
    dc.on = dc.on && addend < 0;
    *done = 0;
    for (uint32_t i = 0; i < l1_size && *done < limit; i++) {
        uint64_t l2_off = l1[i] & L1E_OFFSET_MASK;
        if (!l2_off) {
            continue;
        }
        ret = load_l2_copy(bs, l2_off, l2);
        if (ret < 0) {
            break;
        }
        for (uint64_t j = 0; j < s->l2_size && *done < limit; j++) {
            uint64_t e = qcow2_be64(&l2[j]);
            uint64_t host, len;
            switch (qcow2_l2_entry_type(e, s->version)) {
            case QCOW2_CLUSTER_NORMAL:
            case QCOW2_CLUSTER_ZERO_ALLOC:
                host = e & L2E_OFFSET_MASK;
                len = s->cluster_size;
                break;
            case QCOW2_CLUSTER_COMPRESSED:
                qcow2_compressed_decode(e, s->cluster_bits, &host, &len);
                break;
            default:
                continue;
            }
            if (host + len > end) {
                ret = qcow2_signal_corruption(
                    bs, false, (int64_t)host, -1,
                    "Cluster %#" PRIx64 " beyond the end of the image file",
                    host);
                break;
            }
            ret = qcow2_update_refcount(bs, host, len, addend);
            if (ret < 0) {
                break;
            }
            discards_note(bs, &dc, host, len);
            (*done)++;
        }
        if (ret < 0 || *done >= limit) {
            break;
        }
        ret = qcow2_update_refcount(bs, l2_off, s->cluster_size, addend);
        if (ret < 0) {
            break;
        }
        discards_note(bs, &dc, l2_off, s->cluster_size);
        (*done)++;
    }
    discards_flush(bs, &dc);
    g_free(l2);
    return ret;
}

/*
 * Set QCOW_OFLAG_COPIED in the active L1/L2 entries exactly where the
 * refcount is 1 (QEMU's update_snapshot_refcount with addend 0).
 */
static int coroutine_fn fix_copied_flags(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    bool l1_changed = false;
    int ret = 0;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2_off = s->l1_table[i] & L1E_OFFSET_MASK;
        uint64_t rc;
        if (!l2_off) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, l2_off) ||
            l2_off + s->cluster_size > image_end(bs)) {
            return qcow2_signal_corruption(
                bs, false, (int64_t)l2_off, -1,
                "L2 table offset %#" PRIx64 " invalid", l2_off);
        }
        uint64_t *t;
        ret = qcow2_cache_get(bs, s->l2_cache, l2_off, (void **)&t);
        if (ret < 0) {
            return ret;
        }
        bool dirty = false;
        for (uint64_t j = 0; j < s->l2_size; j++) {
            uint64_t e = qcow2_be64(&t[j]);
            Qcow2ClusterType type = qcow2_l2_entry_type(e, s->version);
            if (type != QCOW2_CLUSTER_NORMAL &&
                type != QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            }
            ret = qcow2_get_refcount(
                bs, (e & L2E_OFFSET_MASK) >> s->cluster_bits, &rc);
            if (ret < 0) {
                break;
            }
            uint64_t ne = rc == 1 ? e | QCOW_OFLAG_COPIED
                                  : e & ~QCOW_OFLAG_COPIED;
            if (ne != e) {
                qcow2_put_be64(&t[j], ne);
                dirty = true;
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(s->l2_cache, t);
        }
        qcow2_cache_put(s->l2_cache, (void **)&t);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_get_refcount(bs, l2_off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        uint64_t ne = rc == 1 ? s->l1_table[i] | QCOW_OFLAG_COPIED
                              : s->l1_table[i] & ~QCOW_OFLAG_COPIED;
        if (ne != s->l1_table[i]) {
            s->l1_table[i] = ne;
            l1_changed = true;
        }
    }
    /* L2 tables and refcounts on disk before the L1 table */
    ret = qcow2_cache_flush(bs, s->l2_cache);
    if (ret == 0) {
        ret = qcow2_cache_flush(bs, s->rc_cache);
    }
    if (ret < 0 || !l1_changed) {
        return ret;
    }
    size_t bytes = (size_t)s->l1_size * 8;
    uint8_t *buf = g_malloc(bytes);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        qcow2_put_be64(buf + (size_t)i * 8, s->l1_table[i]);
    }
    ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L1,
                                        (int64_t)s->l1_table_offset,
                                        (int64_t)bytes);
    if (ret == 0) {
        ret = bdrv_co_pwrite(bs->file, (int64_t)s->l1_table_offset,
                             (int64_t)bytes, buf, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    g_free(buf);
    return ret;
}

/* Everything cached reaches the disk (the state a snapshot records). */
static int coroutine_fn flush_caches(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = qcow2_cache_flush(bs, s->l2_cache);
    if (ret == 0) {
        ret = qcow2_cache_flush(bs, s->rc_cache);
    }
    return ret;
}

/* ---- create / delete ---- */

static int check_supported(BDRVQcow2State *s, GError **errp)
{
    if (!s->writable) {
        error_setg_errno(errp, EPERM, "Image is read-only");
        return -EPERM;
    }
    if (s->corrupt_fatal || (s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
        error_setg(errp, "Image is corrupt; cannot be modified");
        return -EIO;
    }
    if (s->incompat & (QCOW2_INCOMPAT_EXTL2 | QCOW2_INCOMPAT_DATA_FILE)) {
        error_setg(errp, "Internal snapshots are not supported with this "
                         "image's features");
        return -ENOTSUP;
    }
    return 0;
}

void qcow2_snapshot_list_free(Qcow2Snapshot *list, uint32_t n)
{
    for (uint32_t i = 0; list && i < n; i++) {
        g_free(list[i].id_str);
        g_free(list[i].name);
    }
    g_free(list);
}

static void snapshot_copy(Qcow2Snapshot *dst, const Qcow2Snapshot *src)
{
    *dst = *src;
    dst->id_str = g_strdup(src->id_str);
    dst->name = g_strdup(src->name);
}

int coroutine_fn qcow2_snapshot_create(BlockDriverState *bs,
                                       const Qcow2Snapshot *info,
                                       char **id_out)
{
    BDRVQcow2State *s = bs->opaque;
    GPtrArray *raw = NULL;
    Qcow2Snapshot sn = *info;
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8, done = 0, undone;
    bool refs_taken = false;
    int ret = check_supported(s, NULL);
    if (ret < 0) {
        return ret;
    }
    co_mutex_lock(&s->lock);
    sn.id_str = qcow2_snapshot_new_id(s->snapshots, s->nb_snapshots);
    sn.name = g_strdup(info->name);
    sn.l1_size = s->l1_size;
    sn.l1_table_offset = 0;
    l1_bytes = (uint64_t)s->l1_size * 8;
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        ret = -EFBIG;
        goto out;
    }
    ret = flush_caches(bs);
    if (ret == 0) {
        ret = read_raw_table(bs, &raw, NULL);
    }
    if (ret < 0) {
        goto out;
    }

    /* a copy of the active L1 table (without COPIED: it is not active) */
    if (l1_bytes) {
        int64_t off = qcow2_alloc_clusters(bs, l1_bytes);
        if (off < 0) {
            ret = (int)off;
            goto out;
        }
        sn.l1_table_offset = (uint64_t)off;
        uint8_t *buf = g_malloc(l1_bytes);
        for (uint32_t i = 0; i < s->l1_size; i++) {
            qcow2_put_be64(buf + (size_t)i * 8,
                           s->l1_table[i] & ~QCOW_OFLAG_COPIED);
        }
        ret = qcow2_pre_write_overlap_check(bs, 0, off, (int64_t)l1_bytes);
        if (ret == 0) {
            ret = bdrv_co_pwrite(bs->file, off, (int64_t)l1_bytes, buf, 0);
        }
        g_free(buf);
        if (ret < 0) {
            goto out;
        }
    }

    /* every cluster the active L1 reaches gets one more reference; on
     * disk before anything points to the copy */
    refs_taken = true;
    ret = walk_refcounts(bs, s->l1_table, s->l1_size, 1, UINT64_MAX, &done);
    if (ret == 0) {
        ret = flush_caches(bs);
    }
    if (ret == 0) {
        /* shared now: the next write to any of it copies */
        ret = fix_copied_flags(bs);
    }
    if (ret < 0) {
        goto out;
    }

    /* the new table: the old entries as they were, then this one */
    uint8_t *e = g_malloc(qcow2_snapshot_encoded_size(&sn));
    size_t elen = qcow2_snapshot_encode(e, &sn, (uint64_t)bs->total_bytes);
    g_ptr_array_add(raw, g_bytes_new_take(e, elen));
    uint32_t n = s->nb_snapshots + 1;
    Qcow2Snapshot *list = g_new0(Qcow2Snapshot, n);
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        snapshot_copy(&list[i], &s->snapshots[i]);
    }
    snapshot_copy(&list[n - 1], &sn);
    bool maybe = false;
    ret = write_table(bs, raw, list, n, &maybe);
    if (ret < 0) {
        qcow2_snapshot_list_free(list, n);
        if (maybe) {
            /* the snapshot may exist on disk: keep its L1 and references */
            refs_taken = false;
            sn.l1_table_offset = 0;
        }
        goto out;
    }
    if (id_out) {
        *id_out = g_strdup(sn.id_str);
    }
    /* the snapshot exists */
    refs_taken = false;
    sn.l1_table_offset = 0;

out:
    if (ret < 0 && refs_taken) {
        /* the snapshot never existed: drop the references taken (if this
         * fails too, they leak, which is harmless) */
        walk_refcounts(bs, s->l1_table, s->l1_size, -1, done, &undone);
        fix_copied_flags(bs);
    }
    if (ret < 0 && sn.l1_table_offset && l1_bytes) {
        qcow2_free_clusters(bs, sn.l1_table_offset, l1_bytes);
    }
    if (ret < 0) {
        flush_caches(bs);
    }
    g_free(sn.id_str);
    g_free(sn.name);
    if (raw) {
        g_ptr_array_unref(raw);
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_snapshot_delete(BlockDriverState *bs, const char *id,
                                       const char *name, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int idx = qcow2_snapshot_find(s->snapshots, s->nb_snapshots, id, name);
    if (idx < 0) {
        error_setg(errp, "Can't find the snapshot");
        return -ENOENT;
    }
    if (!s->writable) {
        error_setg_errno(errp, EPERM,
                         "Failed to remove snapshot from snapshot list");
        return -EPERM;
    }
    int ret = check_supported(s, errp);
    if (ret < 0) {
        return ret;
    }
    co_mutex_lock(&s->lock);
    GPtrArray *raw = NULL;
    uint64_t *l1 = NULL;
    /* the table may have changed while waiting for the lock */
    idx = qcow2_snapshot_find(s->snapshots, s->nb_snapshots, id, name);
    if (idx < 0) {
        error_setg(errp, "Can't find the snapshot");
        ret = -ENOENT;
        goto out;
    }
    Qcow2Snapshot sn;
    snapshot_copy(&sn, &s->snapshots[idx]);

    /* the snapshot's L1 table, read before it is forgotten */
    uint64_t l1_bytes = (uint64_t)sn.l1_size * 8;
    if (l1_bytes > QCOW2_MAX_L1_BYTES ||
        (l1_bytes && sn.l1_table_offset + l1_bytes > image_end(bs))) {
        error_setg(errp, "Snapshot L1 table offset invalid");
        ret = -EIO;
        goto out_sn;
    }
    l1 = g_malloc0(l1_bytes + 8);
    if (l1_bytes) {
        ret = bdrv_co_pread(bs->file, (int64_t)sn.l1_table_offset,
                            (int64_t)l1_bytes, l1, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read snapshot L1 table");
            goto out_sn;
        }
        for (uint32_t i = 0; i < sn.l1_size; i++) {
            l1[i] = qcow2_be64(&l1[i]);
        }
    }

    ret = flush_caches(bs);
    if (ret == 0) {
        ret = read_raw_table(bs, &raw, errp);
    }
    if (ret < 0) {
        goto out_sn;
    }
    g_ptr_array_remove_index(raw, (guint)idx);
    uint32_t n = s->nb_snapshots - 1;
    Qcow2Snapshot *list = g_new0(Qcow2Snapshot, n ? n : 1);
    for (uint32_t i = 0, k = 0; i < s->nb_snapshots; i++) {
        if ((int)i != idx) {
            snapshot_copy(&list[k++], &s->snapshots[i]);
        }
    }
    bool maybe = false;
    ret = write_table(bs, raw, list, n, &maybe);
    if (ret < 0) {
        qcow2_snapshot_list_free(list, n);
        error_setg_errno(errp, -ret,
                         "Failed to remove snapshot from snapshot list");
        goto out_sn;
    }

    /* gone from the table: its references can be dropped (a failure from
     * here on leaks clusters, it cannot lose data) */
    uint64_t done;
    int r = walk_refcounts(bs, l1, sn.l1_size, -1, UINT64_MAX, &done);
    if (r == 0 && l1_bytes) {
        free_and_discard(bs, sn.l1_table_offset, l1_bytes);
    }
    int r2 = fix_copied_flags(bs);
    if (r == 0) {
        r = r2;
    }
    if (r == 0) {
        r = flush_caches(bs);
    }
    if (r < 0) {
        warn_report("qcow2: snapshot '%s' deleted, but its clusters could "
                    "not all be freed: %s", sn.name, g_strerror(-r));
    }

out_sn:
    g_free(sn.id_str);
    g_free(sn.name);
out:
    g_free(l1);
    if (raw) {
        g_ptr_array_unref(raw);
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Revert the active state to snapshot `idx` (qemu-img snapshot -a): the
 * clusters the snapshot reaches gain a reference, its L1 table becomes the
 * active one (written in place), then the old active state's references
 * go and the COPIED flags are recomputed.  A crash in between leaks
 * clusters at worst.  The virtual size becomes the snapshot's.
 */
int coroutine_fn qcow2_snapshot_goto(BlockDriverState *bs, int idx,
                                     GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = check_supported(s, errp);
    if (ret < 0) {
        return ret;
    }
    if (idx < 0 || (uint32_t)idx >= s->nb_snapshots) {
        error_setg(errp, "Can't find the snapshot");
        return -ENOENT;
    }
    co_mutex_lock(&s->lock);
    Qcow2Snapshot sn;
    snapshot_copy(&sn, &s->snapshots[idx]);
    uint64_t *sn_l1 = NULL, *old_l1 = NULL;
    uint64_t disk_size = UINT64_MAX;
    uint64_t done = 0, undone;

    /* its disk size, from the raw entry */
    GPtrArray *raw = NULL;
    ret = flush_caches(bs);
    if (ret == 0) {
        ret = read_raw_table(bs, &raw, errp);
    }
    if (ret < 0) {
        goto out;
    }
    gsize elen;
    const uint8_t *e = g_bytes_get_data(raw->pdata[idx], &elen);
    if (qcow2_snapshot_decode(e, elen, NULL, &disk_size) < 0) {
        ret = -EIO;
        goto out;
    }
    if (disk_size == UINT64_MAX) {
        disk_size = s->size; /* v2 entries without extra data */
    }
    uint64_t sn_bytes = (uint64_t)sn.l1_size * 8;
    if (sn_bytes > QCOW2_MAX_L1_BYTES ||
        (sn_bytes && sn.l1_table_offset + sn_bytes > image_end(bs)) ||
        qcow2_size_to_l1(s->cluster_bits, disk_size) > sn.l1_size ||
        disk_size > (uint64_t)INT64_MAX) {
        error_setg(errp, "Snapshot L1 table offset invalid");
        ret = -EIO;
        goto out;
    }
    ret = qcow2_grow_l1_table(bs, sn.l1_size);
    if (ret < 0) {
        goto out;
    }
    uint64_t cur_bytes = (uint64_t)s->l1_size * 8;
    sn_l1 = g_malloc0(cur_bytes + 8);
    if (sn_bytes) {
        ret = bdrv_co_pread(bs->file, (int64_t)sn.l1_table_offset,
                            (int64_t)sn_bytes, sn_l1, 0);
        if (ret < 0) {
            goto out;
        }
        for (uint32_t i = 0; i < sn.l1_size; i++) {
            sn_l1[i] = qcow2_be64(&sn_l1[i]) & ~QCOW_OFLAG_COPIED;
        }
    }

    /* what the snapshot reaches gets the active state's reference */
    ret = walk_refcounts(bs, sn_l1, sn.l1_size, 1, UINT64_MAX, &done);
    if (ret == 0) {
        ret = flush_caches(bs);
    }
    if (ret < 0) {
        walk_refcounts(bs, sn_l1, sn.l1_size, -1, done, &undone);
        goto out;
    }
    uint8_t *buf = g_malloc(cur_bytes ? cur_bytes : 1);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        qcow2_put_be64(buf + (size_t)i * 8, sn_l1[i]);
    }
    ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L1,
                                        (int64_t)s->l1_table_offset,
                                        (int64_t)cur_bytes);
    if (ret == 0 && cur_bytes) {
        ret = bdrv_co_pwrite(bs->file, (int64_t)s->l1_table_offset,
                             (int64_t)cur_bytes, buf, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    g_free(buf);
    if (ret < 0) {
        /* the old table may be partly overwritten: keep every reference
         * (leaks at worst) */
        goto out;
    }
    old_l1 = g_memdup2(s->l1_table, cur_bytes ? cur_bytes : 1);
    memcpy(s->l1_table, sn_l1, cur_bytes);
    /* the old active state loses its references */
    int r = walk_refcounts(bs, old_l1, s->l1_size, -1, UINT64_MAX, &done);
    if (r < 0) {
        warn_report("qcow2: clusters of the old state leak: %s",
                    g_strerror(-r));
    }
    ret = fix_copied_flags(bs);
    if (ret == 0 && disk_size != s->size) {
        s->size = disk_size;
        bs->total_bytes = (int64_t)disk_size;
        ret = qcow2_update_header(bs);
    }
    if (ret == 0) {
        ret = flush_caches(bs);
    }

out:
    g_free(sn_l1);
    g_free(old_l1);
    g_free(sn.id_str);
    g_free(sn.name);
    if (raw) {
        g_ptr_array_unref(raw);
    }
    co_mutex_unlock(&s->lock);
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, -ret, "Failed to load snapshot");
    }
    return ret;
}

int coroutine_fn qcow2_snapshot_load_tmp(BlockDriverState *bs,
                                         const char *id, const char *name,
                                         GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (!bs->read_only) {
        error_setg(errp, "Device is not readonly");
        return -EINVAL;
    }
    int idx = qcow2_snapshot_find(s->snapshots, s->nb_snapshots, id, name);
    if (idx < 0) {
        error_setg(errp, "Can't find snapshot");
        return -ENOENT;
    }
    const Qcow2Snapshot *sn = &s->snapshots[idx];
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    if (bytes > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "Snapshot L1 table too large");
        return -EFBIG;
    }
    if (bytes && (sn->l1_table_offset & (s->cluster_size - 1) ||
                  sn->l1_table_offset + bytes > image_end(bs))) {
        error_setg(errp, "Snapshot L1 table offset invalid");
        return -EINVAL;
    }
    uint64_t *l1 = g_try_malloc0(MAX((size_t)bytes, 8));
    if (!l1) {
        error_setg(errp, "Could not allocate the snapshot's L1 table");
        return -ENOMEM;
    }
    if (bytes) {
        int ret = bdrv_co_pread(bs->file, (int64_t)sn->l1_table_offset,
                                (int64_t)bytes, l1, 0);
        if (ret < 0) {
            g_free(l1);
            error_setg_errno(errp, -ret, "Failed to read l1 table for "
                                         "loading snapshot");
            return ret;
        }
    }
    for (uint32_t i = 0; i < sn->l1_size; i++) {
        l1[i] = qcow2_be64(&l1[i]);
    }
    co_mutex_lock(&s->lock);
    g_free(s->l1_table);
    s->l1_table = l1;
    s->l1_size = sn->l1_size;
    s->l1_alloc = sn->l1_size;
    s->l1_table_offset = sn->l1_table_offset;
    co_mutex_unlock(&s->lock);
    return 0;
}

SnapshotInfo *qcow2_snapshot_info(const Qcow2Snapshot *sn)
{
    SnapshotInfo *si = g_new0(SnapshotInfo, 1);
    si->id = g_strdup(sn->id_str);
    si->name = g_strdup(sn->name);
    si->vm_state_size = sn->vm_state_size;
    si->date_sec = sn->date_sec;
    si->date_nsec = sn->date_nsec;
    si->vm_clock_sec = (int64_t)(sn->vm_clock_nsec / 1000000000ULL);
    si->vm_clock_nsec = (int64_t)(sn->vm_clock_nsec % 1000000000ULL);
    si->has_icount = sn->has_icount;
    si->icount = (int64_t)sn->icount;
    return si;
}
