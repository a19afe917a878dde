/*
 * blockd-img and add-cow: the create options and creator for the format
 * table, and the `check` command (add-cow is the format blockd-img can
 * check; others get qemu-img's "does not support checks").
 *
 * add-cow is never detected by probing (docs/specs/add-cow.md: a guest
 * could forge the magic on a raw disk and name host paths); `-f add-cow`
 * is needed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/add-cow.h"
#include "daemon/img.h"

int img_add_cow_probe(const uint8_t *buf, size_t len)
{
    return 0;
}

const ImgCreateOpt img_add_cow_create_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", IMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", IMG_OPT_STRING, "Image format of the base image", NULL },
    { "image_file", IMG_OPT_STRING, "File name of the image (data) file",
      NULL },
    { "image_fmt", IMG_OPT_STRING, "Image format of the image file", NULL },
    { "cluster_size", IMG_OPT_SIZE, "add-cow cluster size", "65536" },
    { NULL, 0, NULL, NULL, false },
};

int coroutine_fn img_add_cow_create(const ImgCreateArgs *a, GError **errp)
{
    AddCowCreateParams p = {
        .has_size = true,
        .size = a->size,
        .image_file = g_hash_table_lookup(a->opts, "image_file"),
        .image_fmt = g_hash_table_lookup(a->opts, "image_fmt"),
        .backing_file = a->backing_file,
        .backing_fmt = a->backing_fmt,
    };
    const char *v = g_hash_table_lookup(a->opts, "cluster_size");
    if (v) {
        img_strtosz(v, &p.cluster_size); /* validated when parsing -o */
        if (!p.cluster_size) {
            p.cluster_size = 1; /* refused by the creator */
        }
    }
    if (!p.image_file) {
        error_setg(errp, "add-cow: image_file is required");
        return -EINVAL;
    }
    return add_cow_co_create_image(a->filename, &p, errp);
}

/* ---- check ---- */

typedef struct CheckResult {
    int errors;
    int warnings;
} CheckResult;

static void G_GNUC_PRINTF(2, 3) report(int *counter, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    (*counter)++;
}

static BlockBackend *coroutine_fn open_plain(const char *filename,
                                             const char *fmt, GError **errp)
{
    g_autofree char *esc = NULL;
    GString *g = g_string_new(NULL);
    for (const char *p = filename; *p; p++) {
        g_string_append_c(g, *p);
        if (*p == ',') {
            g_string_append_c(g, ',');
        }
    }
    esc = g_string_free(g, FALSE);
    g_autofree char *kv =
        fmt ? g_strdup_printf("driver=%s,read-only=on,force-share=on,"
                              "file.driver=file,file.filename=%s",
                              fmt, esc)
            : g_strdup_printf("driver=file,read-only=on,force-share=on,"
                              "filename=%s",
                              esc);
    BlockDriverState *bs = bdrv_co_open_keyval(kv, errp);
    if (!bs) {
        return NULL;
    }
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    if (blk_insert_bs(blk, bs, errp) < 0) {
        blk_unref(blk);
        bdrv_unref(bs);
        return NULL;
    }
    bdrv_unref(bs);
    return blk;
}

/* Returns the exit status: 0 clean, 2 errors found, 1 check failed. */
static int coroutine_fn check_add_cow(const char *filename)
{
    CheckResult r = { 0, 0 };
    GError *err = NULL;
    AddCowHeader h;
    int status = 1;
    BlockBackend *blk = open_plain(filename, NULL, &err);
    uint8_t *bitmap = NULL;
    g_autofree uint8_t *hbuf = NULL;
    g_autofree char *ipath = NULL;
    g_autofree char *bpath = NULL;

    memset(&h, 0, sizeof(h));
    if (!blk) {
        img_error("Could not open '%s': %s", filename, err->message);
        g_error_free(err);
        return 1;
    }
    int64_t flen = blk_getlength(blk);
    uint8_t fixed[ADD_COW_HEADER_STRUCT] = { 0 };
    if (flen < ADD_COW_HEADER_STRUCT ||
        blk_co_pread(blk, 0, sizeof(fixed), fixed, 0) < 0) {
        report(&r.errors, "ERROR header: the file is too short or unreadable");
        goto done;
    }
    if (!add_cow_header_parse_fixed(fixed, &h, &err)) {
        report(&r.errors, "ERROR header: %s", err->message);
        g_clear_error(&err);
        goto done;
    }
    if ((uint64_t)flen < h.header_size) {
        report(&r.errors, "ERROR header: the file (%" PRId64 " bytes) is "
                          "shorter than header_size %" PRIu32,
               flen, h.header_size);
        goto done;
    }
    hbuf = g_malloc(h.header_size);
    if (blk_co_pread(blk, 0, h.header_size, hbuf, 0) < 0 ||
        !add_cow_header_parse_names(hbuf, h.header_size, &h, &err)) {
        report(&r.errors, "ERROR header: %s",
               err ? err->message : "could not read the header");
        g_clear_error(&err);
        goto done;
    }
    uint32_t want_hs = MAX(4096u, 1u << h.cluster_bits);
    if (h.header_size != want_hs) {
        report(&r.warnings, "Warning: header_size is %" PRIu32 ", writers "
                            "use %" PRIu32, h.header_size, want_hs);
    }
    if (h.compat_features & ~ADD_COW_COMPAT_ALL_ALLOCATED) {
        report(&r.warnings, "Warning: unknown compatible features 0x%" PRIx64,
               (uint64_t)(h.compat_features & ~ADD_COW_COMPAT_ALL_ALLOCATED));
    }
    /* Bytes in the header that are neither fields nor names must be 0. */
    for (uint32_t i = ADD_COW_HEADER_STRUCT; i < h.header_size; i++) {
        bool in_b = h.backing_name_off && i >= h.backing_name_off &&
                    i - h.backing_name_off < h.backing_name_len;
        bool in_i = i >= h.image_name_off &&
                    i - h.image_name_off < h.image_name_len;
        if (!in_b && !in_i && hbuf[i]) {
            report(&r.warnings, "Warning: non-zero byte at header offset "
                                "%" PRIu32 " outside the names", i);
            break;
        }
    }

    ipath = add_cow_resolve(filename, h.image_name);
    bpath = h.backing_name ? add_cow_resolve(filename, h.backing_name) : NULL;
    if (bpath && !strcmp(bpath, ipath)) {
        report(&r.errors, "ERROR header: the image file and the backing "
                          "file are the same file");
    }
    BlockBackend *iblk = open_plain(ipath, h.image_fmt, &err);
    if (!iblk) {
        img_error("Could not open image file '%s': %s", ipath, err->message);
        g_error_free(err);
        r.errors = -1;
        goto done;
    }
    int64_t size = blk_getlength(iblk);
    blk_unref(iblk);
    if (size < 0) {
        img_error("Could not get the size of '%s'", ipath);
        r.errors = -1;
        goto done;
    }
    uint64_t nclusters = add_cow_clusters((uint64_t)size, h.cluster_bits);
    uint64_t want = add_cow_bitmap_bytes((uint64_t)size, h.cluster_bits);
    uint64_t have = (uint64_t)flen - h.header_size;
    printf("Image file: %s (%s, %" PRId64 " bytes, %" PRIu64 " clusters of "
           "%u bytes)\n",
           ipath, h.image_fmt, size, nclusters, 1u << h.cluster_bits);
    if (h.compat_features & ADD_COW_COMPAT_ALL_ALLOCATED) {
        printf("All clusters are allocated (ALL_ALLOCATED): the image file "
               "can be used alone.\n");
        goto done;
    }
    if (have < want) {
        report(&r.errors, "ERROR bitmap: %" PRIu64 " bytes, the image size "
                          "needs %" PRIu64,
               have, want);
    } else if (have > want) {
        report(&r.warnings, "Warning: the bitmap area is %" PRIu64 " bytes, "
                            "%" PRIu64 " needed",
               have, want);
    }
    if (have > ADD_COW_MAX_BITMAP_BYTES) {
        report(&r.errors, "ERROR bitmap: too large to check");
        goto done;
    }
    bitmap = g_malloc0(have ? have : 1);
    if (have && blk_co_pread(blk, h.header_size, (int64_t)have, bitmap, 0) < 0) {
        img_error("Could not read the bitmap");
        r.errors = -1;
        goto done;
    }
    uint64_t valid = 0, beyond = 0;
    for (uint64_t i = 0; i < have; i++) {
        for (int b = 0; b < 8; b++) {
            if (!(bitmap[i] & (1u << b))) {
                continue;
            }
            if (i * 8 + (uint64_t)b < nclusters) {
                valid++;
            } else {
                beyond++;
            }
        }
    }
    if (beyond) {
        report(&r.errors, "ERROR bitmap: %" PRIu64 " bits set beyond the end "
                          "of the image",
               beyond);
    }
    printf("%" PRIu64 "/%" PRIu64 " clusters valid in the image file\n", valid,
           nclusters);
    if (valid == nclusters) {
        printf("Every cluster is valid: the image file can be used alone.\n");
    }

done:
    g_free(bitmap);
    blk_unref(blk);
    if (r.errors < 0) {
        status = 1;
    } else if (r.errors) {
        printf("\n%d errors were found on the image.\n"
               "Data may be corrupted, or further writes to the image may "
               "corrupt it.\n",
               r.errors);
        status = 2;
    } else {
        printf("No errors were found on the image.\n");
        status = 0;
    }
    add_cow_header_clear(&h);
    return status;
}

int img_cmd_check(int argc, char **argv)
{
    enum { OPTION_OUTPUT = 256, OPTION_REPAIR_BITMAPS };
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { "repair-bitmaps", no_argument, NULL, OPTION_REPAIR_BITMAPS },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL;
    int fix = 0;
    bool repair_bitmaps = false; /* blockd's own, qcow2 with -r all */
    bool json = false, quiet = false, force_share = false;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_options, NULL)) !=
           -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("check [-f fmt] [--output=ofmt] [-r [leaks | all]] "
                   "[--repair-bitmaps] [-q] [-U] filename\n");
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                fix = 1; /* QCOW2_FIX_LEAKS */
            } else if (!strcmp(optarg, "all")) {
                fix = 3; /* QCOW2_FIX_LEAKS | QCOW2_FIX_ERRORS */
            } else {
                img_error_exit("Unknown option value for -r "
                               "(expecting 'leaks' or 'all'): %s",
                               optarg);
            }
            break;
        case OPTION_OUTPUT:
            if (!strcmp(optarg, "json")) {
                json = true;
            } else if (strcmp(optarg, "human") != 0) {
                img_error("--output must be used with human or json as "
                          "argument.");
                return 1;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            force_share = true;
            break;
        case 'T':
            break;
        case OPTION_REPAIR_BITMAPS:
            repair_bitmaps = true;
            break;
        }
    }
    if (repair_bitmaps && fix != 3) {
        img_error("--repair-bitmaps requires -r all");
        return 1;
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    const char *filename = argv[optind];
    if (!fmt) {
        GError *err = NULL;
        fmt = img_probe(filename, true, &err);
        if (!fmt) {
            img_error("Could not open '%s': %s", filename, err->message);
            g_error_free(err);
            return 1;
        }
    }
    /* Each format with a checker has its hook here. */
    if (!strcmp(fmt, "qcow2")) {
        return img_check_qcow2(filename, fix, json, quiet, force_share,
                               repair_bitmaps);
    }
    if (strcmp(fmt, "add-cow") != 0) {
        if (!img_find_format(fmt)) {
            img_error("Unknown driver '%s'", fmt);
            return 1;
        }
        img_error("This image format does not support checks");
        return 63;
    }
    if (json || fix || repair_bitmaps) {
        img_error("add-cow supports neither --output=json nor -r in check");
        return 1;
    }
    return check_add_cow(filename);
}
