/*
 * blockd-img amend: qemu-img 7.2's "amend -o OPTIONS FILE" for qcow2.
 *
 * What can change: compat (0.10/v2 <-> 1.1/v3), lazy_refcounts and size.
 * The other amend options of qemu-img are parsed and checked the same way
 * (same messages); backing_file/backing_fmt may only repeat the current
 * values, and refcount_bits only the current width (changing it is not
 * implemented here and says so).
 *
 * The steps run in qemu-img's order: upgrade first (later options may
 * need v3), then lazy refcounts, size, and the downgrade last.  The
 * downgrade turns v3-only zero clusters into something v2 can read, as
 * QEMU does: a zero cluster without a host cluster becomes unallocated
 * when there is no backing file (the image reads zeroes there anyway) or
 * a freshly zeroed host cluster when there is one; a zero cluster with a
 * host cluster has that cluster zeroed and becomes a normal one.  The
 * header is rewritten last, so a crash before leaves a valid v3 image.
 *
 * This works on the opened qcow2 node through the driver's own metadata
 * functions (block/drivers/qcow2.h), under its lock.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "daemon/img.h"
#include "util/error.h"

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
    OPTION_FORCE,
};

/* ---- -o parsing (QemuOpts rules: key=value, ",," escapes a comma, a bare
 * key means "on", the last value wins) ---- */

typedef enum AmendOptType {
    AMEND_STRING,
    AMEND_BOOL,
    AMEND_SIZE,
    AMEND_NUMBER,
} AmendOptType;

typedef struct AmendOptDesc {
    const char *name;
    AmendOptType type;
    const char *help;
} AmendOptDesc;

/* qcow2's amend options, sorted as qemu-img prints them. */
static const AmendOptDesc amend_opts[] = {
    { "backing_file", AMEND_STRING, "File name of a base image" },
    { "backing_fmt", AMEND_STRING, "Image format of the base image" },
    { "compat", AMEND_STRING,
      "Compatibility level (v2 [0.10] or v3 [1.1])" },
    { "data_file", AMEND_STRING, "File name of an external data file" },
    { "data_file_raw", AMEND_BOOL,
      "The external data file must stay valid as a raw image" },
    { "encrypt.iter-time", AMEND_NUMBER,
      "Time to spend in PBKDF in milliseconds" },
    { "encrypt.keyslot", AMEND_NUMBER,
      "Select a single keyslot to modify explicitly" },
    { "encrypt.new-secret", AMEND_STRING,
      "New secret to set in the matching keyslots. Empty string to erase" },
    { "encrypt.old-secret", AMEND_STRING,
      "Select all keyslots that match this password" },
    { "encrypt.state", AMEND_STRING,
      "Select new state of affected keyslots (active/inactive)" },
    { "lazy_refcounts", AMEND_BOOL, "Postpone refcount updates" },
    { "refcount_bits", AMEND_NUMBER,
      "Width of a reference count entry in bits" },
    { "size", AMEND_SIZE, "Virtual disk size" },
};

/* Options of qcow2 creation that amend refuses with a hint. */
static const char *const create_only_opts[] = {
    "cluster_size", "compression_type", "encrypt.cipher-alg",
    "encrypt.cipher-mode", "encrypt.format", "encrypt.hash-alg",
    "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.key-secret",
    "preallocation", NULL,
};

static const AmendOptDesc *find_desc(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(amend_opts); i++) {
        if (!strcmp(amend_opts[i].name, name)) {
            return &amend_opts[i];
        }
    }
    return NULL;
}

static bool check_value(const AmendOptDesc *d, const char *value,
                        GError **errp)
{
    uint64_t n;

    switch (d->type) {
    case AMEND_BOOL:
        if (strcmp(value, "on") && strcmp(value, "off")) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'", d->name);
            return false;
        }
        return true;
    case AMEND_SIZE:
        if (img_strtosz(value, &n) < 0) {
            error_setg(errp, "Parameter '%s' expects a non-negative number "
                       "below 2^64\nOptional suffix k, M, G, T, P or E means "
                       "kilo-, mega-, giga-, tera-, peta-\nand exabytes, "
                       "respectively.", d->name);
            return false;
        }
        return true;
    case AMEND_NUMBER: {
        char *end;

        errno = 0;
        (void)g_ascii_strtoull(value, &end, 0);
        if (!*value || *end || errno || value[0] == '-') {
            error_setg(errp, "Parameter '%s' expects a number", d->name);
            return false;
        }
        return true;
    }
    default:
        return true;
    }
}

/* name -> value (last wins), after qemu-img's validation. */
static GHashTable *parse_amend_opts(const char *params, GError **errp)
{
    GHashTable *t = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          g_free);
    const char *p = params;

    while (*p) {
        char *name, *value;

        img_opt_next(&p, true, &name, &value);
        const AmendOptDesc *d = find_desc(name);
        if (!d) {
            bool create_only = false;
            for (size_t i = 0; create_only_opts[i]; i++) {
                create_only |= !strcmp(create_only_opts[i], name);
            }
            error_setg(errp, "Invalid parameter '%s'%s", name,
                       create_only ? "\nThis option is only supported for "
                                     "image creation" : "");
        }
        if (!d || !check_value(d, value, errp)) {
            g_free(name);
            g_free(value);
            g_hash_table_unref(t);
            return NULL;
        }
        g_hash_table_replace(t, name, value);
    }
    return t;
}

static void print_amend_help(void)
{
    static const char *const type_names[] = {
        [AMEND_STRING] = "str",
        [AMEND_BOOL] = "bool (on/off)",
        [AMEND_SIZE] = "size",
        [AMEND_NUMBER] = "num",
    };

    printf("Amend options for 'qcow2':\n");
    for (size_t i = 0; i < G_N_ELEMENTS(amend_opts); i++) {
        g_autofree char *lhs = g_strdup_printf("%s=<%s>", amend_opts[i].name,
                                               type_names[amend_opts[i].type]);
        printf("  %-22s - %s\n", lhs, amend_opts[i].help);
    }
}

/* ---- progress (qemu-img's: printed on 0, 100 and steps of > 1 %) ---- */

typedef struct AmendProgress {
    bool on;
    float last;
} AmendProgress;

static void progress_print(AmendProgress *p, float cur)
{
    if (!p->on) {
        return;
    }
    if (cur > 100) {
        cur = 100;
    }
    if (cur > p->last + 1.0f || cur < p->last - 1.0f || cur == 0 ||
        cur == 100) {
        p->last = cur;
        printf("    (%3.2f/100%%)\r", cur);
        fflush(stdout);
    }
}

static void progress_step(AmendProgress *p, uint64_t done, uint64_t total)
{
    progress_print(p, total ? 100.f * (float)done / (float)total : 100.f);
}

/* ---- snapshots: the fields v2/v3 care about, from the table on disk ---- */

typedef struct SnapInfo {
    uint32_t extra_size;
    uint64_t vm_state_size;
    uint64_t disk_size; /* the image size when no such extra field */
} SnapInfo;

static int coroutine_fn read_snap_info(BlockDriverState *bs, SnapInfo **out)
{
    BDRVQcow2State *s = bs->opaque;
    SnapInfo *si = g_new0(SnapInfo, MAX(s->nb_snapshots, 1));
    g_autofree uint8_t *tab = NULL;
    uint64_t pos = 0;
    int ret;

    *out = si;
    if (!s->nb_snapshots) {
        return 0;
    }
    /* The driver checked the table's bounds at open. */
    tab = g_malloc(s->snapshots_size);
    ret = bdrv_co_pread(bs->file, (int64_t)s->snapshots_offset,
                        (int64_t)s->snapshots_size, tab, 0);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const uint8_t *h = tab + pos;
        uint32_t extra = qcow2_be32(h + 36);

        si[i].extra_size = extra;
        si[i].vm_state_size = qcow2_be32(h + 32);
        si[i].disk_size = s->size;
        if (extra >= 8) {
            si[i].vm_state_size = qcow2_be64(h + 40);
        }
        if (extra >= 16) {
            si[i].disk_size = qcow2_be64(h + 48);
        }
        pos = ROUND_UP(pos + 40 + extra + qcow2_be16(h + 12) +
                       qcow2_be16(h + 14), 8);
    }
    return 0;
}

/* ---- downgrade: zero clusters ---- */

/* A zeroed host cluster for one L2 entry of a table with refcount
 * l2_refcount (each L1 table that shares the L2 table holds a reference
 * to the cluster).  Returns the host offset or -errno. */
static int64_t coroutine_fn alloc_zeroed_cluster(BlockDriverState *bs,
                                                 uint64_t l2_refcount)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t off = qcow2_alloc_clusters(bs, s->cluster_size);
    int ret;

    if (off < 0) {
        return off;
    }
    for (uint64_t r = 1; r < l2_refcount; r++) {
        ret = qcow2_update_refcount(bs, (uint64_t)off, s->cluster_size, 1);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, off, (int64_t)s->cluster_size);
    if (ret == 0) {
        ret = bdrv_co_pwrite_zeroes(bs->file, off, (int64_t)s->cluster_size,
                                    0);
    }
    return ret < 0 ? ret : off;
}

/* Rewrite the zero entries of the L2 table at l2_offset (see the top). */
static int coroutine_fn expand_l2(BlockDriverState *bs, uint64_t l2_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l2_refcount, *table;
    bool dirty = false;
    int ret;

    if (qcow2_offset_into_cluster(s, l2_offset)) {
        return qcow2_signal_corruption(bs, true, (int64_t)l2_offset, -1,
                                       "L2 table offset %#" PRIx64
                                       " unaligned", l2_offset);
    }
    ret = qcow2_get_refcount(bs, l2_offset >> s->cluster_bits, &l2_refcount);
    if (ret < 0) {
        return ret;
    }
    if (l2_refcount == 0) {
        return qcow2_signal_corruption(bs, true, (int64_t)l2_offset, -1,
                                       "L2 table at %#" PRIx64
                                       " has refcount 0", l2_offset);
    }
    ret = qcow2_cache_get(bs, s->l2_cache, l2_offset, (void **)&table);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t j = 0; j < s->l2_size && ret == 0; j++) {
        uint64_t entry = qcow2_be64(&table[j]);
        Qcow2ClusterType type = qcow2_l2_entry_type(entry, 3);
        uint64_t host = entry & L2E_OFFSET_MASK, rc = 0;
        int64_t fresh;

        if (type == QCOW2_CLUSTER_ZERO_PLAIN && !s->backing_file) {
            /* Unallocated reads as zeroes without a backing file. */
            qcow2_put_be64(&table[j], 0);
            dirty = true;
            continue;
        }
        if (type == QCOW2_CLUSTER_ZERO_ALLOC) {
            ret = qcow2_get_refcount(bs, host >> s->cluster_bits, &rc);
            if (ret < 0) {
                break;
            }
        }
        if (type == QCOW2_CLUSTER_ZERO_PLAIN ||
            (type == QCOW2_CLUSTER_ZERO_ALLOC && rc > l2_refcount)) {
            /*
             * No host cluster, or one that another table also points to
             * (where it may hold a snapshot's data, which zeroing it in
             * place would destroy): a new zeroed cluster.
             */
            fresh = alloc_zeroed_cluster(bs, l2_refcount);
            if (fresh < 0) {
                ret = (int)fresh;
                break;
            }
            if (type == QCOW2_CLUSTER_ZERO_ALLOC) {
                for (uint64_t r = 0; r < l2_refcount && ret == 0; r++) {
                    ret = qcow2_update_refcount(bs, host, s->cluster_size,
                                                -1);
                }
            }
            host = (uint64_t)fresh;
            rc = l2_refcount;
        } else if (type == QCOW2_CLUSTER_ZERO_ALLOC) {
            ret = qcow2_pre_write_overlap_check(bs, 0, (int64_t)host,
                                                (int64_t)s->cluster_size);
            if (ret == 0) {
                ret = bdrv_co_pwrite_zeroes(bs->file, (int64_t)host,
                                            (int64_t)s->cluster_size, 0);
            }
        } else {
            continue;
        }
        if (ret < 0) {
            break;
        }
        if (!dirty) {
            /* Refcounts and the zeroed data reach the disk before the
             * entries that point to them. */
            ret = qcow2_cache_set_dependency(bs, s->l2_cache, s->rc_cache);
            if (ret < 0) {
                break;
            }
            qcow2_cache_depends_on_flush(s->l2_cache);
            dirty = true;
        }
        qcow2_put_be64(&table[j], host | (rc == 1 ? QCOW_OFLAG_COPIED : 0));
    }
    if (dirty) {
        qcow2_cache_mark_dirty(s->l2_cache, table);
    }
    qcow2_cache_put(s->l2_cache, (void **)&table);
    return ret;
}

/* Every L1 table, active first, then the snapshots'; progress per entry. */
static int coroutine_fn expand_zero_clusters(BlockDriverState *bs,
                                             AmendProgress *p)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t total = s->l1_size, done = 0;
    int ret = 0;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        total += s->snapshots[i].l1_size;
    }
    for (uint32_t i = 0; i < s->l1_size && ret == 0; i++) {
        uint64_t l2 = s->l1_table[i] & L1E_OFFSET_MASK;

        if (l2) {
            ret = expand_l2(bs, l2);
        }
        progress_step(p, ++done, total);
    }
    for (uint32_t n = 0; n < s->nb_snapshots && ret == 0; n++) {
        Qcow2Snapshot *sn = &s->snapshots[n];
        g_autofree uint64_t *l1 = g_new(uint64_t, MAX(sn->l1_size, 1));

        if (sn->l1_size) {
            ret = bdrv_co_pread(bs->file, (int64_t)sn->l1_table_offset,
                                (int64_t)sn->l1_size * 8, l1, 0);
        }
        for (uint32_t i = 0; i < sn->l1_size && ret == 0; i++) {
            uint64_t l2 = qcow2_be64(&l1[i]) & L1E_OFFSET_MASK;

            if (l2) {
                ret = expand_l2(bs, l2);
            }
            progress_step(p, ++done, total);
        }
    }
    if (ret == 0) {
        ret = qcow2_cache_write(bs, s->l2_cache);
    }
    if (ret == 0) {
        ret = qcow2_cache_write(bs, s->rc_cache);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    return ret;
}

/*
 * Rewrite the header, and zero the rest of its cluster as qemu-img does
 * (it writes the whole cluster): a shorter header must not leave the old
 * backing file name or extensions behind it.
 */
static int coroutine_fn amend_write_header(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree uint8_t *buf = g_malloc(s->cluster_size);
    int64_t used = qcow2_build_header(s, buf, s->cluster_size);
    int ret;

    if (used < 0) {
        return (int)used;
    }
    ret = qcow2_update_header(bs);
    used = ROUND_UP(used, 512);
    if (ret == 0 && (uint64_t)used < s->cluster_size) {
        ret = bdrv_co_pwrite_zeroes(bs->file, used,
                                    (int64_t)s->cluster_size - used, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    return ret;
}

/* Write the header as `version` (2 or 3); on failure it stays as it was.
 * Caller holds s->lock. */
static int coroutine_fn set_version(BlockDriverState *bs, int version,
                                    GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int old_version = s->version;
    uint32_t old_length = s->header_length;

    s->version = version;
    s->header_length =
        version == 2 ? QCOW2_V2_HEADER_LENGTH : QCOW2_V3_HEADER_LENGTH;
    int ret = amend_write_header(bs);
    if (ret < 0) {
        s->version = old_version;
        s->header_length = old_length;
        error_setg_errno(errp, -ret, "Failed to update the image header");
    }
    return ret;
}

/* Caller holds s->lock. */
static int coroutine_fn amend_downgrade(BlockDriverState *bs,
                                        AmendProgress *p, GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree SnapInfo *si = NULL;
    int ret;

    if (s->refcount_order != 4) {
        error_setg(errp, "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    ret = read_snap_info(bs, &si);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read the snapshot table");
        return ret;
    }
    /* v2 readers would not know that the extra fields matter. */
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (si[i].vm_state_size > UINT32_MAX || si[i].disk_size != s->size) {
            error_setg(errp, "Internal snapshots prevent downgrade of image");
            return -ENOTSUP;
        }
    }
    /* The driver made a dirty image clean when it opened it for writing. */
    if (s->incompat & ~QCOW2_INCOMPAT_COMPRESSION) {
        error_setg(errp, "Cannot downgrade an image with incompatible "
                   "features 0x%" PRIx64 " set",
                   (uint64_t)(s->incompat & ~QCOW2_INCOMPAT_COMPRESSION));
        return -ENOTSUP;
    }
    /* Compatible and autoclear features may simply be dropped. */
    uint64_t old_compat = s->compat, old_autoclear = s->autoclear;
    s->compat = 0;
    s->autoclear = 0;
    ret = expand_zero_clusters(bs, p);
    if (ret < 0) {
        s->compat = old_compat;
        s->autoclear = old_autoclear;
        error_setg_errno(errp, -ret, "Failed to turn zero into data clusters");
        return ret;
    }
    ret = set_version(bs, 2, errp);
    if (ret < 0) {
        return ret;
    }
    s->lazy_refcounts = false;
    return 0;
}

/* Caller holds s->lock. */
static int coroutine_fn amend_upgrade(BlockDriverState *bs, AmendProgress *p,
                                      GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree SnapInfo *si = NULL;
    int ret;

    progress_step(p, 0, 2);
    ret = read_snap_info(bs, &si);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read the snapshot table");
        return ret;
    }
    /* v3 requires the 64-bit VM state size and the disk size in every
     * snapshot entry; QEMU has written them on v2 images too since 2020. */
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (si[i].extra_size < 16) {
            error_setg(errp, "Cannot upgrade: snapshot '%s' lacks the v3 "
                       "extra data, and rewriting the snapshot table is not "
                       "supported by " IMG_PROG, s->snapshots[i].name);
            return -ENOTSUP;
        }
    }
    progress_step(p, 1, 2);
    ret = set_version(bs, 3, errp);
    if (ret < 0) {
        return ret;
    }
    progress_step(p, 2, 2);
    return 0;
}

/* Caller holds s->lock. */
static int coroutine_fn amend_lazy_refcounts(BlockDriverState *bs, bool on,
                                             GError **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old = s->compat;

    /* Our refcounts are always exact (the driver never leaves the image
     * dirty), so turning lazy refcounts off needs no clean-up first. */
    if (on) {
        s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    } else {
        s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    int ret = amend_write_header(bs);
    if (ret < 0) {
        s->compat = old;
        error_setg_errno(errp, -ret, "Failed to update the image header");
    }
    return ret;
}

typedef struct AmendArgs {
    GHashTable *opts;
    AmendProgress progress;
} AmendArgs;

/* qcow2_amend_options()'s checks and steps, in its order. */
static int coroutine_fn amend_qcow2(ImgImage *img, AmendArgs *a,
                                    GError **errp)
{
    BlockDriverState *bs = img->bs;
    BDRVQcow2State *s = bs->opaque;
    GHashTable *o = a->opts;
    const char *v;
    int old_version = s->version, new_version = s->version;
    uint64_t refcount_bits = (uint64_t)s->refcount_bits;
    bool lazy = !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
    uint64_t new_size = 0;
    int ret = 0;

    if ((v = g_hash_table_lookup(o, "compat"))) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
            new_version = 2;
        } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
            new_version = 3;
        } else {
            error_setg(errp, "Unknown compatibility level %s", v);
            return -EINVAL;
        }
    }
    if ((v = g_hash_table_lookup(o, "size"))) {
        img_strtosz(v, &new_size); /* checked while parsing */
    }
    if (g_hash_table_lookup(o, "data_file")) {
        error_setg(errp, "data-file can only be set for images that use an "
                   "external data file");
        return -EINVAL;
    }
    if ((v = g_hash_table_lookup(o, "data_file_raw")) && !strcmp(v, "on")) {
        error_setg(errp, "data-file-raw cannot be set on existing images");
        return -EINVAL;
    }
    GHashTableIter it;
    gpointer key;
    g_hash_table_iter_init(&it, o);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        if (g_str_has_prefix(key, "encrypt.")) {
            error_setg(errp, "Can't amend encryption options - encryption "
                       "not present");
            return -EINVAL;
        }
    }
    if ((v = g_hash_table_lookup(o, "lazy_refcounts"))) {
        lazy = !strcmp(v, "on");
    }
    if ((v = g_hash_table_lookup(o, "refcount_bits"))) {
        refcount_bits = g_ascii_strtoull(v, NULL, 0);
        if (refcount_bits == 0 || refcount_bits > 64 ||
            (refcount_bits & (refcount_bits - 1))) {
            error_setg(errp, "Refcount width must be a power of two and may "
                       "not exceed 64 bits");
            return -EINVAL;
        }
    }

    co_mutex_lock(&s->lock);
    if (new_version > old_version) {
        ret = amend_upgrade(bs, &a->progress, errp);
    }
    if (ret == 0 && refcount_bits != (uint64_t)s->refcount_bits) {
        if (new_version < 3 && refcount_bits != 16) {
            error_setg(errp, "Refcount widths other than 16 bits require "
                       "compatibility level 1.1 or above (use compat=1.1 "
                       "or greater)");
            ret = -EINVAL;
        } else {
            error_setg(errp, "Changing the refcount width is not supported "
                       "by " IMG_PROG);
            ret = -ENOTSUP;
        }
    }
    const char *bf = g_hash_table_lookup(o, "backing_file");
    const char *bfmt = g_hash_table_lookup(o, "backing_fmt");
    if (ret == 0 && (bf || bfmt) &&
        (g_strcmp0(bf, s->backing_file) || g_strcmp0(bfmt,
                                                     s->backing_format))) {
        error_setg(errp, "Cannot amend the backing file\n"
                   "You can use 'qemu-img rebase' instead.");
        ret = -EINVAL;
    }
    if (ret == 0 && lazy != !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS)) {
        if (lazy && new_version < 3) {
            error_setg(errp, "Lazy refcounts only supported with "
                       "compatibility level 1.1 and above (use compat=1.1 "
                       "or greater)");
            ret = -EINVAL;
        } else {
            ret = amend_lazy_refcounts(bs, lazy, errp);
        }
    }
    co_mutex_unlock(&s->lock);

    if (ret == 0 && new_size) {
        /* Amending sets exactly the given values: exact = true. */
        ret = blk_co_truncate(img->blk, (int64_t)new_size, true,
                              PREALLOC_MODE_OFF, 0, errp);
    }
    if (ret == 0 && new_version < old_version) {
        co_mutex_lock(&s->lock);
        ret = amend_downgrade(bs, &a->progress, errp);
        co_mutex_unlock(&s->lock);
    }
    return ret;
}

int img_cmd_amend(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force", no_argument, NULL, OPTION_FORCE },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = NULL;
    g_autofree char *options = NULL;
    bool quiet = false, progress = false, image_opts = false;
    int c;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", long_options, NULL)) !=
           -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " amend [--image-opts] [-p] [-q] "
                   "[-f fmt] [-t cache] [--force] -o options filename\n");
            return EXIT_SUCCESS;
        case 'o':
            img_opts_append(&options, optarg);
            break;
        case 'f':
            fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_FORCE:
            break; /* only matters for encryption, which we refuse */
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }
    if (!options) {
        img_error_exit("Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
    }
    bool help = img_opts_want_help(options);
    if (fmt && help) {
        /* An explicit format needs no image for the help. */
        if (strcmp(fmt, "qcow2")) {
            img_error("Format driver '%s' does not support option amendment",
                      fmt);
            return EXIT_FAILURE;
        }
        print_amend_help();
        return EXIT_SUCCESS;
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        return EXIT_FAILURE;
    }
    if (cache && strcmp(cache, "none") && strcmp(cache, "writeback") &&
        strcmp(cache, "writethrough") && strcmp(cache, "directsync") &&
        strcmp(cache, "unsafe")) {
        img_error("Invalid cache option: %s", cache);
        return EXIT_FAILURE;
    }
    const char *filename = argv[optind];
    GError *err = NULL;
    AmendArgs a = { .progress = { .on = progress } };

    /* size needs the resize permission; a quick look before the parse
     * proper, which comes after the open as in qemu-img. */
    ImgImage img;
    uint64_t perm = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;
    if (strstr(options, "size")) {
        perm |= BLK_PERM_RESIZE;
    }
    if (!img_open_for_cmd(&img, filename, fmt, image_opts, true, perm,
                          false)) {
        return EXIT_FAILURE;
    }

    int ret = -1;
    if (!fmt && !image_opts && !strcmp(img.format, "raw")) {
        img_warn_probed_raw(filename);
    }
    if (strcmp(img.format, "qcow2")) {
        img_error("Format driver '%s' does not support option amendment",
                  img.format);
        goto out;
    }
    if (help) {
        print_amend_help();
        ret = 0;
        goto out;
    }
    a.opts = parse_amend_opts(options, &err);
    if (!a.opts) {
        img_error("%s", err->message);
        g_clear_error(&err);
        goto out;
    }

    progress_print(&a.progress, 0);
    ret = amend_qcow2(&img, &a, &err);
    progress_print(&a.progress, 100);
    if (ret < 0) {
        fflush(stdout);
        img_error("%s", err ? err->message : g_strerror(-ret));
        g_clear_error(&err);
    }
    if (a.progress.on) {
        printf("\n");
    }
out:
    fflush(stdout);
    img_close(&img);
    if (a.opts) {
        g_hash_table_unref(a.opts);
    }
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
