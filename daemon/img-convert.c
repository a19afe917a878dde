/*
 * blockd-img convert: qemu-img 7.2's "convert".  The source's block status
 * decides what is copied: zero areas are skipped on a fresh target (it
 * reads as zeroes already) and written as zeroes otherwise, data is read
 * and written (zero blocks within it detected at the -S granularity), and
 * with -B only the source's top layer is copied.  Several coroutines
 * (-m) each take the next chunk, read it, and write it: in order unless
 * -W lets writes complete out of order.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "daemon/img.h"
#include "util/coroutine.h"
#include "util/error.h"
#include "util/iov.h"

#define IO_BUF_SIZE (2 * 1024 * 1024)
#define SECTOR 512
#define MAX_SPARSE (16 * 1024 * 1024) /* qemu-img's limit for -S */

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
    OPTION_SALVAGE,
    OPTION_TARGET_IS_ZERO,
};

typedef enum { CHUNK_DATA, CHUNK_ZERO, CHUNK_BACKING } ChunkStatus;

typedef struct ConvertState {
    ImgImage *src;
    const char **src_names;
    int64_t *src_sizes;
    int nsrc;
    int64_t total;
    ImgImage dst;

    bool compressed, target_has_backing, has_zero_init, wr_in_order;
    bool salvage, progress, quiet;
    int64_t min_sparse;
    int64_t cluster_size; /* compressed: chunks are whole clusters */

    CoMutex lock;        /* taking the next chunk (block status yields) */
    int64_t next_offset; /* where the next chunk starts */
    int64_t wait_offset; /* in-order writes: the next to be written */
    CoQueue wait_q;
    int running;
    Coroutine *main_co;
    int ret;

    /* -p: percent of the bytes to copy (qemu-img counts data chunks, and
     * zero chunks too when sparse detection is off) */
    double progress_last;
    int64_t alloc_bytes, done_bytes;
} ConvertState;

static void progress_print(ConvertState *s, double cur)
{
    if (!s->progress) {
        return;
    }
    if (cur == 0 || cur >= 100 || cur > s->progress_last + 1.0) {
        s->progress_last = cur;
        printf("    (%3.2f/100%%)\r", cur);
        fflush(stdout);
    }
}

/* The source holding `offset` and the offset within it. */
static int find_src(ConvertState *s, int64_t offset, int64_t *local)
{
    for (int i = 0; i < s->nsrc; i++) {
        if (offset < s->src_sizes[i]) {
            *local = offset;
            return i;
        }
        offset -= s->src_sizes[i];
    }
    *local = 0;
    return -1;
}

/* The status and length of the chunk at `offset` (under s->lock). */
static int coroutine_fn next_chunk(ConvertState *s, int64_t offset,
                                   int64_t *len, ChunkStatus *st)
{
    int64_t local;
    int i = find_src(s, offset, &local);
    int64_t avail = s->src_sizes[i] - local;
    int64_t want = MIN(avail, IO_BUF_SIZE);

    if (s->compressed) {
        /* A whole cluster (of the output), the source's status over all of
         * it: a compressed cluster is written in one go. */
        want = MIN(s->cluster_size - offset % s->cluster_size,
                   s->total - offset);
        want = MIN(want, avail);
    }
    BlockDriverState *bs = s->src[i].bs;
    int64_t pnum = 0;
    int ret = s->target_has_backing
                  ? bdrv_co_block_status(bs, local, want, &pnum, NULL, NULL)
                  : bdrv_co_block_status_above(bs, NULL, local, want, &pnum,
                                               NULL, NULL);
    if (ret < 0 || pnum <= 0) {
        if (ret >= 0) {
            ret = -EIO;
        }
        img_error("error while reading block status at offset %" PRId64
                  ": %s",
                  offset, g_strerror(-ret));
        if (!s->salvage) {
            return ret;
        }
        /* Salvaging: read it as data, sector by sector. */
        *len = MIN(SECTOR - offset % SECTOR, avail);
        *st = CHUNK_DATA;
        return 0;
    }
    if (s->compressed && pnum < want) {
        *len = want; /* mixed: read the cluster (holes read as zeroes) */
        *st = CHUNK_DATA;
        return 0;
    }
    *len = pnum;
    if (ret & BDRV_BLOCK_ZERO) {
        /* -S 0: zeroes are written as data (fully allocated output) */
        *st = s->min_sparse ? CHUNK_ZERO : CHUNK_DATA;
    } else if (ret & BDRV_BLOCK_DATA) {
        *st = CHUNK_DATA;
    } else {
        *st = s->target_has_backing ? CHUNK_BACKING : CHUNK_DATA;
    }
    return 0;
}

/* Read a chunk; with --salvage unreadable sectors become zeroes. */
static int coroutine_fn read_chunk(ConvertState *s, int64_t offset,
                                   int64_t len, uint8_t *buf)
{
    int64_t local;
    int i = find_src(s, offset, &local);
    int ret = blk_co_pread(s->src[i].blk, local, len, buf, 0);

    if (ret >= 0 || !s->salvage) {
        if (ret < 0 && s->ret == 0) {
            /* once: other coroutines stop at the first error */
            img_error("error while reading at byte %" PRId64 ": %s", offset,
                      g_strerror(-ret));
        }
        return ret;
    }
    for (int64_t done = 0; done < len;) {
        int64_t n = MIN(SECTOR - (offset + done) % SECTOR, len - done);
        ret = blk_co_pread(s->src[i].blk, local + done, n, buf + done, 0);
        if (ret < 0) {
            img_error("warning: error while reading offset %" PRId64 ": %s",
                      offset + done, g_strerror(-ret));
            memset(buf + done, 0, n);
        }
        done += n;
    }
    return 0;
}

static int coroutine_fn write_zero(ConvertState *s, int64_t offset,
                                   int64_t len)
{
    if (s->has_zero_init) {
        return 0;
    }
    /* -S 0 asks for a fully allocated output: no holes. */
    return blk_co_pwrite_zeroes(s->dst.blk, offset, len,
                                s->min_sparse ? BDRV_REQ_MAY_UNMAP : 0);
}

/* Write data, leaving runs of zero blocks (min_sparse) sparse. */
static int coroutine_fn write_data(ConvertState *s, int64_t offset,
                                   int64_t len, uint8_t *buf)
{
    if (s->compressed) {
        if (buffer_is_zero(buf, len)) {
            return write_zero(s, offset, len);
        }
        return blk_co_pwrite(s->dst.blk, offset, len, buf,
                             BDRV_REQ_WRITE_COMPRESSED);
    }
    if (!s->min_sparse) {
        return blk_co_pwrite(s->dst.blk, offset, len, buf, 0);
    }
    int64_t pos = 0;
    while (pos < len) {
        /* A run of blocks of the same kind, aligned to min_sparse. */
        int64_t blk_end = MIN(len, pos + s->min_sparse -
                                       (offset + pos) % s->min_sparse);
        bool zero = buffer_is_zero(buf + pos, blk_end - pos);
        int64_t end = blk_end;
        while (end < len) {
            int64_t e2 = MIN(len, end + s->min_sparse);
            if ((bool)buffer_is_zero(buf + end, e2 - end) != zero) {
                break;
            }
            end = e2;
        }
        int ret = zero ? write_zero(s, offset + pos, end - pos)
                       : blk_co_pwrite(s->dst.blk, offset + pos, end - pos,
                                       buf + pos, 0);
        if (ret < 0) {
            return ret;
        }
        pos = end;
    }
    return 0;
}

static void coroutine_fn convert_worker(void *opaque)
{
    ConvertState *s = opaque;
    uint8_t *buf = blk_memalign(4096, IO_BUF_SIZE);

    while (s->ret == 0) {
        int64_t offset, len;
        ChunkStatus st;
        int ret;

        co_mutex_lock(&s->lock);
        offset = s->next_offset;
        if (offset >= s->total) {
            co_mutex_unlock(&s->lock);
            break;
        }
        ret = next_chunk(s, offset, &len, &st);
        if (ret < 0) {
            s->ret = ret;
            co_mutex_unlock(&s->lock);
            break;
        }
        s->next_offset = offset + len;
        co_mutex_unlock(&s->lock);

        if (st == CHUNK_DATA) {
            ret = read_chunk(s, offset, len, buf);
            if (ret < 0) {
                s->ret = ret;
                break;
            }
        }
        if (s->wr_in_order) {
            while (s->wait_offset != offset && s->ret == 0) {
                co_queue_wait(&s->wait_q, NULL);
            }
            if (s->ret) {
                break;
            }
        }
        switch (st) {
        case CHUNK_DATA:
            ret = write_data(s, offset, len, buf);
            break;
        case CHUNK_ZERO:
            ret = write_zero(s, offset, len);
            break;
        default:
            ret = 0; /* the target's backing file provides it */
            break;
        }
        if (ret < 0) {
            if (s->ret == 0) {
                img_error("error while writing at byte %" PRId64 ": %s",
                          offset, g_strerror(-ret));
            }
            s->ret = ret;
            break;
        }
        if (s->progress && s->alloc_bytes > 0 &&
            (st == CHUNK_DATA || (!s->min_sparse && st == CHUNK_ZERO))) {
            s->done_bytes += len;
            progress_print(s, (double)s->done_bytes * 100 /
                                  (double)s->alloc_bytes);
        }
        if (s->wr_in_order) {
            s->wait_offset = offset + len;
            co_queue_restart_all(&s->wait_q);
        }
    }
    /* Anyone waiting for a write that will never come must see s->ret. */
    co_queue_restart_all(&s->wait_q);
    blk_vfree(buf);
    if (--s->running == 0) {
        coroutine_wake(s->main_co);
    }
}

static int coroutine_fn do_copy(ConvertState *s, int ncoroutines)
{
    co_mutex_init(&s->lock);
    co_queue_init(&s->wait_q);
    s->main_co = coroutine_self();
    if (s->progress) {
        /* What there is to copy, for the percentages (as qemu-img). */
        for (int64_t off = 0; off < s->total;) {
            int64_t len;
            ChunkStatus st;
            int ret = next_chunk(s, off, &len, &st);
            if (ret < 0) {
                return ret;
            }
            if (st == CHUNK_DATA || (!s->min_sparse && st == CHUNK_ZERO)) {
                s->alloc_bytes += len;
            }
            off += len;
        }
    }
    s->running = ncoroutines;
    for (int i = 0; i < ncoroutines; i++) {
        coroutine_enter(coroutine_create(convert_worker, s));
    }
    while (s->running > 0) {
        coroutine_yield();
    }
    if (s->ret == 0) {
        s->ret = blk_co_flush(s->dst.blk);
        if (s->ret < 0) {
            img_error("error while flushing: %s", g_strerror(-s->ret));
        }
    }
    return s->ret;
}

/* -o text into name -> value (",," is a literal comma). */
static bool parse_opts(const char *text, GHashTable *t)
{
    const char *p = text;

    while (p && *p) {
        GString *kv = g_string_new(NULL);
        while (*p && !(*p == ',' && p[1] != ',')) {
            if (*p == ',') {
                p++;
            }
            g_string_append_c(kv, *p++);
        }
        if (*p == ',') {
            p++;
        }
        char *eq = strchr(kv->str, '=');
        if (!eq) {
            img_error("Invalid parameter '%s'", kv->str);
            g_string_free(kv, TRUE);
            return false;
        }
        *eq = 0;
        g_hash_table_insert(t, g_strdup(kv->str), g_strdup(eq + 1));
        g_string_free(kv, TRUE);
    }
    return true;
}

/* -l snapshot.id=ID,snapshot.name=NAME (qemu-img's snapshot options). */
static bool parse_snapshot_param(const char *param, char **id, char **name)
{
    const char *p = param;
    while (*p) {
        g_autofree char *key = NULL, *value = NULL;
        img_opt_next(&p, false, &key, &value);
        if (!strcmp(key, "snapshot.id")) {
            g_free(*id);
            *id = g_steal_pointer(&value);
        } else if (!strcmp(key, "snapshot.name")) {
            g_free(*name);
            *name = g_steal_pointer(&value);
        } else {
            img_error("Invalid parameter '%s'", key);
            img_error("Failed in parsing snapshot param '%s'", param);
            return false;
        }
    }
    return true;
}

/*
 * Make the source read the snapshot -l names: by snapshot.id and/or
 * snapshot.name, or a bare word as an id first and then as a name
 * (qemu-img's bdrv_snapshot_load_tmp_by_id_or_name).
 */
static int coroutine_fn load_snapshot(BlockDriverState *bs,
                                      const char *param, const char *id,
                                      const char *name)
{
    g_autoptr(GError) err = NULL;
    int ret;
    if (!bs->drv || bs->drv->driver != BLOCKDEV_DRIVER_QCOW2) {
        img_error("Failed to load snapshot: Block format '%s' used by device "
                  "'' does not support temporarily loading internal "
                  "snapshots", bdrv_get_format_name(bs));
        return -ENOTSUP;
    }
    if (id || name) {
        ret = qcow2_snapshot_load_tmp(bs, id, name, &err);
    } else {
        ret = qcow2_snapshot_load_tmp(bs, param, NULL, &err);
        if (ret == -ENOENT) {
            g_clear_error(&err);
            ret = qcow2_snapshot_load_tmp(bs, NULL, param, &err);
        }
    }
    if (ret < 0) {
        img_error("Failed to load snapshot: %s", err->message);
    }
    return ret;
}

static int coroutine_fn create_target(ConvertState *s, const char *out_fmt,
                                      const char *options,
                                      const char *out_filename,
                                      const char *backing,
                                      const char *backing_fmt)
{
    const ImgFormat *f = img_find_format(out_fmt);
    if (!f) {
        img_error("Unknown file format '%s'", out_fmt);
        return -1;
    }
    bool has_backing = false;
    for (const ImgCreateOpt *o = f->create_opts; o->name; o++) {
        has_backing |= !strcmp(o->name, "backing_file");
    }
    if (backing && !has_backing) {
        img_error("Backing file not supported for file format '%s'", out_fmt);
        return -1;
    }
    if (backing_fmt && !has_backing) {
        img_error("Backing file format not supported for file format '%s'",
                  out_fmt);
        return -1;
    }
    if (backing_fmt && !backing) {
        img_error("%s: error while converting %s: Backing format cannot be "
                  "used without backing file",
                  out_filename, out_fmt);
        return -1;
    }
    GHashTable *t = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          g_free);
    if (options && !parse_opts(options, t)) {
        g_hash_table_unref(t);
        return -1;
    }
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, t);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        bool known = false;
        for (const ImgCreateOpt *o = f->create_opts; o->name; o++) {
            known |= !strcmp(o->name, k);
        }
        if (!known) {
            img_error("Invalid parameter '%s'", (char *)k);
            g_hash_table_unref(t);
            return -1;
        }
    }
    if (backing && !backing_fmt) {
        img_error("Use of backing file requires explicit backing format");
        g_hash_table_unref(t);
        return -1;
    }
    ImgCreateArgs a = {
        .filename = out_filename,
        .size = (uint64_t)s->total,
        .opts = t,
        .backing_file = backing,
        .backing_fmt = backing_fmt,
    };
    GError *err = NULL;
    int ret = f->create(&a, &err);
    g_hash_table_unref(t);
    if (ret < 0) {
        img_error("%s: error while converting %s: %s", out_filename, out_fmt,
                  err ? err->message : g_strerror(-ret));
        g_clear_error(&err);
        return -1;
    }
    return 0;
}

int img_cmd_convert(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "salvage", no_argument, NULL, OPTION_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPTION_TARGET_IS_ZERO },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *out_fmt = NULL, *out_baseimg = NULL;
    const char *backing_fmt = NULL, *snapshot_param = NULL;
    g_autofree char *options = NULL;
    bool skip_create = false, force_share = false, target_is_zero = false;
    int ncoroutines = 8;
    ConvertState s = { .min_sparse = 8 * SECTOR, .wr_in_order = true };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                            long_options, NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " convert [-c] [-p] [-q] [-n] [-f fmt] "
                   "[-O output_fmt] [-B backing_file [-F backing_fmt]] "
                   "[-o options] [-S sparse_size] [-m num_coroutines] [-W] "
                   "[--salvage] [-U] filename [filename2 [...]] "
                   "output_filename\n");
            return EXIT_SUCCESS;
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'B':
            out_baseimg = optarg;
            break;
        case 'F':
            backing_fmt = optarg;
            break;
        case 'C':
            img_error("Copy offloading (-C) is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        case 'c':
            s.compressed = true;
            break;
        case 'o':
            img_opts_append(&options, optarg);
            break;
        case 'l':
            snapshot_param = optarg;
            break;
        case 'S': {
            int64_t sval = img_cvtnum("buffer size for sparse output", optarg);
            if (sval < 0 || (sval & (SECTOR - 1)) ||
                sval > MAX_SPARSE) {
                if (sval >= 0) {
                    img_error("Invalid buffer size for sparse output "
                              "specified. Valid sizes are multiples of %d "
                              "up to %d. Select 0 to disable sparse "
                              "detection (fully allocates output).",
                              SECTOR, MAX_SPARSE);
                }
                return EXIT_FAILURE;
            }
            s.min_sparse = sval;
            break;
        }
        case 'p':
            s.progress = true;
            break;
        case 't':
        case 'T':
        case 'r':
            break; /* cache modes and rate limit: accepted */
        case 'q':
            s.quiet = true;
            break;
        case 'n':
            skip_create = true;
            break;
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || v < 1 || v > 16) {
                img_error("Invalid number of coroutines. Allowed number of "
                          "coroutines is between 1 and 16");
                return EXIT_FAILURE;
            }
            ncoroutines = (int)v;
            break;
        }
        case 'W':
            s.wr_in_order = false;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_SALVAGE:
            s.salvage = true;
            break;
        case OPTION_TARGET_IS_ZERO:
            target_is_zero = true;
            break;
        case OPTION_IMAGE_OPTS:
            img_error("--image-opts is not supported by " IMG_PROG
                      " convert");
            return EXIT_FAILURE;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }
    if (s.quiet) {
        s.progress = false;
    }
    if (!out_fmt) {
        out_fmt = "raw";
    }
    if (s.wr_in_order == false && s.compressed) {
        /* qemu-img accepts it; compressed clusters are still whole. */
    }
    if (target_is_zero && !skip_create) {
        img_error("--target-is-zero requires use of -n flag");
        return EXIT_FAILURE;
    }
    s.nsrc = argc - optind - 1;
    if (s.nsrc < 1) {
        img_error("Must specify image file name");
        return EXIT_FAILURE;
    }
    if (out_baseimg && skip_create) {
        /* qemu-img: the existing target's backing is what it is. */
    }
    if (s.compressed && strcmp(out_fmt, "qcow2")) {
        img_error("Compression not supported for this file format");
        return EXIT_FAILURE;
    }
    const char *out_filename = argv[argc - 1];
    if (snapshot_param && s.nsrc > 1) {
        img_error("No support for concatenating multiple snapshot");
        return EXIT_FAILURE;
    }
    g_autofree char *snap_id = NULL, *snap_name = NULL;
    if (snapshot_param && strchr(snapshot_param, '=') &&
        !parse_snapshot_param(snapshot_param, &snap_id, &snap_name)) {
        return EXIT_FAILURE;
    }

    s.src = g_new0(ImgImage, s.nsrc);
    s.src_names = (const char **)&argv[optind];
    s.src_sizes = g_new0(int64_t, s.nsrc);
    int ret = -1;
    int opened = 0;
    GError *err = NULL;

    progress_print(&s, 0);
    for (int i = 0; i < s.nsrc; i++) {
        if (!img_open_chain(&s.src[i], s.src_names[i], fmt,
                            BLK_PERM_CONSISTENT_READ, force_share, &err)) {
            img_error("%s", err->message);
            g_clear_error(&err);
            goto out;
        }
        opened++;
        if (snapshot_param &&
            load_snapshot(s.src[i].bs, snapshot_param, snap_id, snap_name) < 0) {
            goto out;
        }
        s.src_sizes[i] = blk_getlength(s.src[i].blk);
        if (s.src_sizes[i] < 0) {
            img_error("Could not get size of %s: %s", s.src_names[i],
                      g_strerror((int)-s.src_sizes[i]));
            goto out;
        }
        s.total += s.src_sizes[i];
    }

    if (!skip_create &&
        create_target(&s, out_fmt, options, out_filename, out_baseimg,
                      backing_fmt) < 0) {
        goto out;
    }
    /*
     * With -B the target is opened over its backing file: without it the
     * format could leave a zeroed cluster unallocated ("reads as zero"),
     * and the backing file would show through.
     */
    if (!img_open_target(&s.dst, out_filename, out_fmt, out_baseimg != NULL,
                         &err)) {
        img_error("%s", err->message);
        g_clear_error(&err);
        goto out;
    }
    if (skip_create) {
        int64_t dsize = blk_getlength(s.dst.blk);
        if (dsize < 0 || dsize < s.total) {
            img_error("output file is smaller than input file");
            goto out;
        }
    }
    s.target_has_backing = out_baseimg != NULL;
    /* A target we just made reads as zeroes (both formats we create do),
     * unless it has a backing file showing through. */
    s.has_zero_init = s.min_sparse &&
                      ((!skip_create && !s.target_has_backing) ||
                       target_is_zero);
    if (s.compressed) {
        int64_t cs = 0;
        bool dirty;
        if (bdrv_co_get_bdi(s.dst.bs, &cs, &dirty, NULL) < 0 || cs <= 0) {
            img_error("Compression not supported for this file format");
            goto out;
        }
        s.cluster_size = cs;
        if (cs > IO_BUF_SIZE) {
            img_error("Cluster size too large for compression");
            goto out;
        }
    }

    ret = do_copy(&s, ncoroutines);
    if (ret == 0) {
        progress_print(&s, 100);
    }

out:
    if (s.progress) {
        printf("\n");
    }
    fflush(stdout);
    if (s.dst.blk) {
        img_close(&s.dst);
    }
    for (int i = 0; i < opened; i++) {
        img_close(&s.src[i]);
    }
    g_free(s.src);
    g_free(s.src_sizes);
    return ret ? EXIT_FAILURE : EXIT_SUCCESS;
}
