/*
 * blockd-img commit: qemu-img 7.2's "commit" into the image's backing file.
 * Everything the top image holds itself (data and zero clusters) is
 * written into the backing file, which grows if the top is larger; then
 * the top is emptied (discarded) unless -d or -b is given.  Only the
 * immediate backing file can be the base.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "daemon/img.h"
#include "util/error.h"
#include "util/iov.h"

#define IO_BUF_SIZE (2 * 1024 * 1024)

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
};

/* The backing file as the image finds it (relative to its directory). */
static char *backing_path(const char *image, const char *name)
{
    if (g_path_is_absolute(name) || !strchr(image, '/')) {
        return g_strdup(name);
    }
    g_autofree char *dir = g_path_get_dirname(image);
    return g_build_filename(dir, name, NULL);
}

/* Whether two names reach the same file. */
static bool same_file(const char *a, const char *b)
{
    g_autofree char *ra = realpath(a, NULL);
    g_autofree char *rb = realpath(b, NULL);
    return ra && rb ? !strcmp(ra, rb) : !strcmp(a, b);
}

static int coroutine_fn copy_down(ImgImage *top, ImgImage *base)
{
    int64_t size = blk_getlength(top->blk);
    int64_t base_size = blk_getlength(base->blk);
    GError *err = NULL;
    int ret;

    if (size < 0 || base_size < 0) {
        img_error("Could not get the image sizes");
        return -1;
    }
    if (base_size < size) {
        ret = blk_co_truncate(base->blk, size, false, PREALLOC_MODE_OFF, 0,
                              &err);
        if (ret < 0) {
            img_error("Could not resize the backing file: %s",
                      err ? err->message : g_strerror(-ret));
            g_clear_error(&err);
            return -1;
        }
    }
    uint8_t *buf = blk_memalign(4096, IO_BUF_SIZE);
    ret = 0;
    for (int64_t offset = 0, pnum; offset < size; offset += pnum) {
        pnum = 0;
        ret = bdrv_co_block_status(top->bs, offset,
                                   MIN(IO_BUF_SIZE, size - offset), &pnum,
                                   NULL, NULL);
        if (ret >= 0 && pnum <= 0) {
            ret = -EIO;
        }
        if (ret < 0) {
            img_error("Block job failed: %s", g_strerror(-ret));
            break;
        }
        if (!(ret & BDRV_BLOCK_ALLOCATED)) {
            ret = 0;
            continue; /* the backing file's content already */
        }
        if (ret & BDRV_BLOCK_ZERO) {
            ret = blk_co_pwrite_zeroes(base->blk, offset, pnum, 0);
        } else {
            ret = blk_co_pread(top->blk, offset, pnum, buf, 0);
            if (ret >= 0) {
                ret = blk_co_pwrite(base->blk, offset, pnum, buf, 0);
            }
        }
        if (ret < 0) {
            img_error("Block job failed: %s", g_strerror(-ret));
            break;
        }
    }
    blk_vfree(buf);
    if (ret >= 0) {
        ret = blk_co_flush(base->blk);
        if (ret < 0) {
            img_error("Block job failed: %s", g_strerror(-ret));
        }
    }
    return ret < 0 ? -1 : 0;
}

int img_cmd_commit(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *base_name = NULL;
    bool quiet = false, drop = false;
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", long_options,
                            NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " commit [-q] [-f fmt] [-b base] [-d] "
                   "filename\n");
            return EXIT_SUCCESS;
        case 'f':
            fmt = optarg;
            break;
        case 'b':
            base_name = optarg;
            drop = true; /* -b implies -d */
            break;
        case 'd':
            drop = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 't':
        case 'p':
        case 'r':
            break; /* cache mode, progress, rate limit: accepted */
        case OPTION_IMAGE_OPTS:
            img_error("--image-opts is not supported by " IMG_PROG " commit");
            return EXIT_FAILURE;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    const char *filename = argv[optind];

    ImgImage top = { 0 }, base = { 0 };
    GError *err = NULL;
    char *path = NULL;
    int ret = -1;
    if (!img_open_target(&top, filename, fmt, false, &err)) {
        img_error("%s", err->message);
        g_clear_error(&err);
        return EXIT_FAILURE;
    }
    if (!top.bs->backing_file[0]) {
        img_error("Image does not have a backing file");
        goto out;
    }
    path = backing_path(filename, top.bs->backing_file);
    if (base_name && !same_file(base_name, path)) {
        img_error("Did not find '%s' in the backing chain of '%s'", base_name,
                  filename);
        goto out;
    }
    if (!img_open_chain(&base, path,
                        top.bs->backing_format[0] ? top.bs->backing_format
                                                  : NULL,
                        BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                            BLK_PERM_RESIZE,
                        false, &err)) {
        img_error("%s", err->message);
        g_clear_error(&err);
        goto out;
    }
    if (copy_down(&top, &base) < 0) {
        goto out;
    }
    if (!drop) {
        /* Empty the top: its clusters are in the backing file now. */
        int64_t size = blk_getlength(top.blk);
        int r = size < 0 ? (int)size : blk_co_pdiscard(top.blk, 0, size);
        if (r == 0) {
            r = blk_co_flush(top.blk);
        }
        if (r < 0 && r != -ENOTSUP) {
            img_error("Block job failed: %s", g_strerror(-r));
            goto out;
        }
    }
    ret = 0;
    if (!quiet) {
        printf("Image committed.\n");
    }
out:
    fflush(stdout);
    g_free(path);
    if (base.blk) {
        img_close(&base);
    }
    img_close(&top);
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
