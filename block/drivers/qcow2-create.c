/*
 * qcow2 image creation (blockdev-create, blockd-img create).
 *
 * The empty image is laid out directly: header cluster, refcount table,
 * the refcount blocks counting all of these, then the L1 table sized for
 * the disk.  Preallocation then goes through the driver itself (open the
 * new image and allocate clusters), so it shares the allocation code.
 */
#include <errno.h>

#include "block/drivers/qcow2.h"

static bool valid_params(const Qcow2CreateParams *p, GError **errp)
{
    uint64_t cs = p->cluster_size;
    if (cs < 512 || cs > (1ULL << QCOW2_MAX_CLUSTER_BITS) || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between %d and "
                         "%dk",
                   512, (1 << QCOW2_MAX_CLUSTER_BITS) / 1024);
        return false;
    }
    if (p->version != 2 && p->version != 3) {
        error_setg(errp, "Invalid qcow2 version %d", p->version);
        return false;
    }
    int rb = p->refcount_bits;
    if (rb < 1 || rb > 64 || (rb & (rb - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                         "exceed 64 bits");
        return false;
    }
    if (p->version < 3 && rb != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                         "compatibility level 1.1 or above (use version=v3 or "
                         "greater)");
        return false;
    }
    if (p->version < 3 && p->lazy_refcounts) {
        error_setg(errp, "Lazy refcounts only supported with compatibility "
                         "level 1.1 and above (use version=v3 or greater)");
        return false;
    }
    if (p->size % 512) {
        error_setg(errp, "Image size must be a multiple of 512 bytes");
        return false;
    }
    if (p->backing_fmt && !p->backing_file) {
        error_setg(errp, "Backing format cannot be used without backing file");
        return false;
    }
    if (p->backing_file && strlen(p->backing_file) > QCOW2_MAX_BACKING_NAME) {
        error_setg(errp, "Backing file name too long");
        return false;
    }
    return true;
}

/* Write the empty image's metadata to blk. */
static int coroutine_fn write_layout(BlockBackend *blk,
                                     const Qcow2CreateParams *p,
                                     GError **errp)
{
    BDRVQcow2State st;
    memset(&st, 0, sizeof(st));
    BDRVQcow2State *s = &st;
    s->version = p->version;
    s->cluster_bits = __builtin_ctzll(p->cluster_size);
    s->cluster_size = p->cluster_size;
    s->size = p->size;
    s->refcount_order = __builtin_ctz((unsigned)p->refcount_bits);
    s->compat = p->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
    s->backing_file = (char *)p->backing_file;
    s->backing_format = (char *)p->backing_fmt;

    uint64_t cs = s->cluster_size;
    uint64_t l1_entries = qcow2_size_to_l1(s->cluster_bits, p->size);
    if (l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "The image size is too large for file format "
                         "'qcow2' (try using a larger cluster size)");
        return -EFBIG;
    }
    uint64_t l1_clusters = (l1_entries * 8 + cs - 1) / cs;
    uint64_t per_block = (cs * 8) >> s->refcount_order;
    uint64_t t = 1, b = 1;
    for (int i = 0; i < 64; i++) {
        uint64_t total = 1 + t + b + l1_clusters;
        uint64_t nb = (total + per_block - 1) / per_block;
        uint64_t nt = (nb * 8 + cs - 1) / cs;
        if (nb == b && nt == t) {
            break;
        }
        b = nb;
        t = nt;
    }
    if (t * cs > QCOW2_MAX_REFTABLE_BYTES) {
        error_setg(errp, "The image size is too large for file format "
                         "'qcow2'");
        return -EFBIG;
    }
    uint64_t total = 1 + t + b + l1_clusters;
    s->reftable_offset = cs;
    s->reftable_clusters = (uint32_t)t;
    s->l1_size = (uint32_t)l1_entries;
    s->l1_table_offset = l1_entries ? (1 + t + b) * cs : 0;

    uint8_t *buf = blk_memalign(4096, cs);
    int64_t used = qcow2_build_header(s, buf, cs);
    int ret;
    if (used < 0) {
        error_setg(errp, "Header extensions and backing file name do not fit "
                         "in the first cluster");
        ret = -ENOSPC;
        goto out;
    }
    /* A backend writes only inside the node: make room first. */
    ret = blk_co_truncate(blk, (int64_t)(total * cs), false, PREALLOC_MODE_OFF,
                          0, errp);
    if (ret < 0) {
        goto out;
    }
    ret = blk_co_pwrite(blk, 0, (int64_t)cs, buf, 0);
    if (ret < 0) {
        goto io_err;
    }
    /* refcount table */
    for (uint64_t i = 0; i < t; i++) {
        memset(buf, 0, cs);
        for (uint64_t e = 0; e < cs / 8; e++) {
            uint64_t bi = i * (cs / 8) + e;
            if (bi < b) {
                qcow2_put_be64(buf + e * 8, (1 + t + bi) * cs);
            }
        }
        ret = blk_co_pwrite(blk, (int64_t)((1 + i) * cs), (int64_t)cs, buf, 0);
        if (ret < 0) {
            goto io_err;
        }
    }
    /* refcount blocks: every metadata cluster has refcount 1 */
    for (uint64_t i = 0; i < b; i++) {
        memset(buf, 0, cs);
        for (uint64_t e = 0; e < per_block; e++) {
            uint64_t c = i * per_block + e;
            if (c < total) {
                qcow2_refcount_set(buf, s->refcount_order, e, 1);
            }
        }
        ret = blk_co_pwrite(blk, (int64_t)((1 + t + i) * cs), (int64_t)cs,
                            buf, 0);
        if (ret < 0) {
            goto io_err;
        }
    }
    /* empty L1 table */
    if (l1_clusters) {
        ret = blk_co_pwrite_zeroes(blk, (int64_t)s->l1_table_offset,
                                   (int64_t)(l1_clusters * cs), 0);
        if (ret < 0) {
            goto io_err;
        }
    }
    ret = blk_co_flush(blk);
    if (ret < 0) {
        goto io_err;
    }
    goto out;
io_err:
    error_setg_errno(errp, -ret, "Could not write qcow2 image");
out:
    blk_vfree(buf);
    return ret;
}

int coroutine_fn qcow2_co_create_on_node(BlockDriverState *file,
                                         const Qcow2CreateParams *params,
                                         GError **errp)
{
    Qcow2CreateParams p = *params;
    if (!p.cluster_size) {
        p.cluster_size = 65536;
    }
    if (!p.version) {
        p.version = 3;
    }
    if (!p.refcount_bits) {
        p.refcount_bits = 16;
    }
    if (!valid_params(&p, errp)) {
        return -EINVAL;
    }
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                    BLK_PERM_RESIZE,
                                BLK_PERM_ALL);
    int ret = blk_insert_bs(blk, file, errp);
    if (ret < 0) {
        blk_unref(blk);
        return ret;
    }
    ret = blk_co_truncate(blk, 0, false, PREALLOC_MODE_OFF, 0, errp);
    if (ret == 0) {
        ret = write_layout(blk, &p, errp);
    }
    blk_unref(blk);
    if (ret < 0 || p.preallocation == PREALLOC_MODE_OFF || !p.size) {
        return ret;
    }

    /* Preallocation through the driver: open the new image on the node.
     * For falloc/full, first reserve (an upper bound of) the space it
     * needs with the file's own preallocation, then trim the excess. */
    uint64_t cs = p.cluster_size;
    if (p.preallocation != PREALLOC_MODE_METADATA) {
        uint64_t n_data = (p.size + cs - 1) / cs;
        uint64_t n_l2 = (n_data + cs / 8 - 1) / (cs / 8);
        uint64_t per_block = (cs * 8) / (uint64_t)p.refcount_bits;
        int64_t flen = bdrv_getlength(file);
        uint64_t n = (flen > 0 ? (uint64_t)flen / cs : 0) + n_data + n_l2;
        n += n / per_block + 4;
        blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                          BLK_PERM_RESIZE,
                      BLK_PERM_ALL);
        ret = blk_insert_bs(blk, file, errp);
        if (ret == 0) {
            ret = blk_co_truncate(blk, (int64_t)(n * cs), false,
                                  p.preallocation, 0, errp);
        }
        blk_unref(blk);
        if (ret < 0) {
            return ret;
        }
    }
    BlockdevOptions *o = g_new0(BlockdevOptions, 1);
    o->driver = BLOCKDEV_DRIVER_QCOW2;
    o->u.qcow2.file = g_new0(BlockdevRef, 1);
    o->u.qcow2.file->type = QTYPE_QSTRING;
    o->u.qcow2.file->u.reference = g_strdup(bdrv_get_node_name(file));
    o->u.qcow2.has_backing = true;
    o->u.qcow2.backing = g_new0(BlockdevRefOrNull, 1);
    o->u.qcow2.backing->type = QTYPE_QNULL;
    BlockDriverState *bs = bdrv_co_open(o, errp);
    qapi_free_BlockdevOptions(o);
    if (!bs) {
        return -EIO;
    }
    uint64_t host_end = 0;
    ret = qcow2_preallocate(bs, 0, p.size, true, &host_end);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not preallocate metadata");
    } else {
        ret = bs->drv->bdrv_co_flush_to_os(bs);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not flush the new image");
        }
    }
    if (ret == 0) {
        /* The file ends exactly after the last allocated cluster. */
        BDRVQcow2State *s = bs->opaque;
        int64_t flen = bdrv_getlength(file);
        uint64_t idx = flen > 0 ? ROUND_UP((uint64_t)flen, cs) / cs : 0;
        while (idx > 0) {
            uint64_t rc;
            ret = qcow2_get_refcount(bs, idx - 1, &rc);
            if (ret < 0 || rc) {
                break;
            }
            idx--;
        }
        uint64_t end = MAX(host_end, idx << s->cluster_bits);
        ret = 0;
        if (flen >= 0 && (uint64_t)flen != end) {
            ret = bdrv_co_truncate(bs->file, (int64_t)end, false,
                                   PREALLOC_MODE_OFF, 0, errp);
        }
    }
    bdrv_unref(bs);
    return ret;
}

int coroutine_fn qcow2_co_create_image(const char *filename,
                                       const Qcow2CreateParams *p,
                                       GError **errp)
{
    /* Refuse bad parameters before the file is created or truncated, as
     * qemu-img create does (defaults as in qcow2_co_create_on_node). */
    Qcow2CreateParams checked = *p;
    checked.cluster_size = checked.cluster_size ? checked.cluster_size : 65536;
    checked.version = checked.version ? checked.version : 3;
    checked.refcount_bits = checked.refcount_bits ? checked.refcount_bits : 16;
    if (!valid_params(&checked, errp)) {
        return -EINVAL;
    }
    BlockDriverState *file = bdrv_co_create_empty_file(filename, errp);
    if (!file) {
        return -EIO;
    }
    int ret = qcow2_co_create_on_node(file, p, errp);
    bdrv_unref(file);
    return ret;
}

int coroutine_fn qcow2_co_create(BlockdevCreateOptions *opts, GError **errp)
{
    BlockdevCreateOptionsQcow2 *q = &opts->u.qcow2;
    if (q->has_data_file && q->data_file) {
        error_setg(errp, "External data files are not supported");
        return -ENOTSUP;
    }
    if (q->has_data_file_raw && q->data_file_raw) {
        error_setg(errp, "data-file-raw requires data-file");
        return -EINVAL;
    }
    if (q->has_extended_l2 && q->extended_l2) {
        error_setg(errp, "Extended L2 entries are not supported");
        return -ENOTSUP;
    }
    if (q->has_compression_type &&
        q->compression_type != QCOW2_COMPRESSION_TYPE_ZLIB) {
        error_setg(errp, "Unsupported compression type '%s'",
                   Qcow2CompressionType_str(q->compression_type));
        return -ENOTSUP;
    }
    Qcow2CreateParams p = {
        .size = q->size,
        .cluster_size = q->has_cluster_size ? q->cluster_size : 65536,
        .version = (!q->has_version || q->version == BLOCKDEV_QCOW2_VERSION_V3)
                       ? 3
                       : 2,
        .backing_file = q->has_backing_file ? q->backing_file : NULL,
        .backing_fmt = q->has_backing_fmt ? BlockdevDriver_str(q->backing_fmt)
                                          : NULL,
        .refcount_bits = q->has_refcount_bits ? (int)q->refcount_bits : 16,
        .lazy_refcounts = q->has_lazy_refcounts && q->lazy_refcounts,
        .preallocation =
            q->has_preallocation ? q->preallocation : PREALLOC_MODE_OFF,
    };
    if (q->has_refcount_bits && (q->refcount_bits < 1 || q->refcount_bits > 64)) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                         "exceed 64 bits");
        return -EINVAL;
    }
    if (q->has_cluster_size && q->cluster_size == 0) {
        p.cluster_size = 1; /* rejected by the validation */
    }
    BlockDriverState *file = bdrv_co_open_create_file(q->file, errp);
    if (!file) {
        return -ENOENT;
    }
    int ret = qcow2_co_create_on_node(file, &p, errp);
    bdrv_unref(file);
    return ret;
}
