/*
 * blockd-img compare: qemu-img 7.2's "compare", the guest-visible content
 * of two images (with their backing chains).  Exit status: 0 identical,
 * 1 different, 2 an image cannot be opened, 3 block status failed,
 * 4 a read failed.
 */
#include <getopt.h>
#include <stdarg.h>
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

typedef struct CompareState {
    bool quiet;
    uint8_t *buf1, *buf2;
} CompareState;

static void qprintf(const CompareState *s, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
static void qprintf(const CompareState *s, const char *fmt, ...)
{
    va_list ap;

    if (s->quiet) {
        return;
    }
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

/* Index of the first non-zero byte, -1 if none. */
static int64_t find_nonzero(const uint8_t *buf, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (buf[i]) {
            return i;
        }
    }
    return -1;
}

/* An area present in one image only must read as zeroes: 0, 1 or 4. */
static int coroutine_fn check_empty(CompareState *s, BlockBackend *blk,
                                    int64_t offset, int64_t bytes,
                                    const char *filename)
{
    int ret = blk_co_pread(blk, offset, bytes, s->buf1, 0);
    if (ret < 0) {
        img_error("Error while reading offset %" PRId64 " of %s: %s", offset,
                  filename, g_strerror(-ret));
        return 4;
    }
    int64_t idx = find_nonzero(s->buf1, bytes);
    if (idx >= 0) {
        /* qemu-img names the sector holding the first non-zero byte */
        qprintf(s, "Content mismatch at offset %" PRId64 "!\n",
                offset + idx / 512 * 512);
        return 1;
    }
    return 0;
}

/*
 * Length of the prefix (in 512-byte sectors, as qemu-img counts) whose
 * sectors are all equal; *differ tells whether the first sector differs.
 */
static int64_t same_prefix(const uint8_t *a, const uint8_t *b, int64_t n)
{
    int64_t i = 0;

    while (i < n) {
        int64_t len = MIN(512, n - i);
        if (memcmp(a + i, b + i, len)) {
            return i;
        }
        i += len;
    }
    return n;
}

static int coroutine_fn compare(CompareState *s, ImgImage *img1,
                                ImgImage *img2, const char *filename1,
                                const char *filename2, bool strict)
{
    int64_t size1 = blk_getlength(img1->blk);
    if (size1 < 0) {
        img_error("Can't get size of %s: %s", filename1, g_strerror(-size1));
        return 4;
    }
    int64_t size2 = blk_getlength(img2->blk);
    if (size2 < 0) {
        img_error("Can't get size of %s: %s", filename2, g_strerror(-size2));
        return 4;
    }
    int64_t total = MIN(size1, size2);
    int64_t end = MAX(size1, size2);
    int64_t offset = 0;
    int ret;

    if (strict && size1 != size2) {
        qprintf(s, "Strict mode: Image size mismatch!\n");
        return 1;
    }
    while (offset < total) {
        int64_t pnum1 = 0, pnum2 = 0;
        int st1 = bdrv_co_block_status_above(img1->bs, NULL, offset,
                                             size1 - offset, &pnum1, NULL,
                                             NULL);
        if (st1 < 0 || pnum1 <= 0) {
            img_error("Sector allocation test failed for %s", filename1);
            return 3;
        }
        int st2 = bdrv_co_block_status_above(img2->bs, NULL, offset,
                                             size2 - offset, &pnum2, NULL,
                                             NULL);
        if (st2 < 0 || pnum2 <= 0) {
            img_error("Sector allocation test failed for %s", filename2);
            return 3;
        }
        bool alloc1 = st1 & BDRV_BLOCK_ALLOCATED;
        bool alloc2 = st2 & BDRV_BLOCK_ALLOCATED;
        int64_t chunk = MIN(pnum1, pnum2);
        chunk = MIN(chunk, total - offset);

        if (strict && st1 != st2) {
            qprintf(s, "Strict mode: Offset %" PRId64
                       " block status mismatch!\n",
                    offset);
            return 1;
        }
        if ((st1 & BDRV_BLOCK_ZERO) && (st2 & BDRV_BLOCK_ZERO)) {
            /* both read as zeroes */
        } else if (alloc1 == alloc2) {
            if (alloc1) {
                chunk = MIN(chunk, IO_BUF_SIZE);
                ret = blk_co_pread(img1->blk, offset, chunk, s->buf1, 0);
                if (ret < 0) {
                    img_error("Error while reading offset %" PRId64
                              " of %s: %s",
                              offset, filename1, g_strerror(-ret));
                    return 4;
                }
                ret = blk_co_pread(img2->blk, offset, chunk, s->buf2, 0);
                if (ret < 0) {
                    img_error("Error while reading offset %" PRId64
                              " of %s: %s",
                              offset, filename2, g_strerror(-ret));
                    return 4;
                }
                int64_t same = same_prefix(s->buf1, s->buf2, chunk);
                if (same != chunk) {
                    qprintf(s, "Content mismatch at offset %" PRId64 "!\n",
                            offset + same);
                    return 1;
                }
            }
        } else {
            chunk = MIN(chunk, IO_BUF_SIZE);
            ret = alloc1 ? check_empty(s, img1->blk, offset, chunk, filename1)
                         : check_empty(s, img2->blk, offset, chunk,
                                       filename2);
            if (ret) {
                return ret;
            }
        }
        offset += chunk;
    }

    if (size1 != size2) {
        ImgImage *over = size1 > size2 ? img1 : img2;
        const char *name = size1 > size2 ? filename1 : filename2;

        qprintf(s, "Warning: Image size mismatch!\n");
        while (offset < end) {
            int64_t chunk = 0;
            ret = bdrv_co_block_status_above(over->bs, NULL, offset,
                                             end - offset, &chunk, NULL, NULL);
            if (ret < 0 || chunk <= 0) {
                img_error("Sector allocation test failed for %s", name);
                return 3;
            }
            if ((ret & BDRV_BLOCK_ALLOCATED) && !(ret & BDRV_BLOCK_ZERO)) {
                chunk = MIN(chunk, IO_BUF_SIZE);
                ret = check_empty(s, over->blk, offset, chunk, name);
                if (ret) {
                    return ret;
                }
            }
            offset += chunk;
        }
    }
    qprintf(s, "Images are identical.\n");
    return 0;
}

int img_cmd_compare(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt1 = NULL, *fmt2 = NULL;
    bool force_share = false, strict = false, image_opts = false;
    CompareState s = { 0 };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " compare [-f fmt] [-F fmt] [-p] [-q] "
                   "[-s] [-U] filename1 filename2\n");
            return EXIT_SUCCESS;
        case 'f':
            fmt1 = optarg;
            break;
        case 'F':
            fmt2 = optarg;
            break;
        case 'T':
        case 'p':
            break; /* cache mode and progress: accepted, not shown */
        case 'q':
            s.quiet = true;
            break;
        case 's':
            strict = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }
    if (optind != argc - 2) {
        img_error_exit("Expecting two image file names");
    }
    const char *filename1 = argv[optind], *filename2 = argv[optind + 1];

    ImgImage img1 = { 0 }, img2 = { 0 };
    GError *err = NULL;
    int ret = 2;
    bool ok = image_opts
                  ? img_open_image_opts(&img1, filename1, fmt1,
                                        BLK_PERM_CONSISTENT_READ, force_share,
                                        &err)
                  : img_open_chain(&img1, filename1, fmt1,
                                   BLK_PERM_CONSISTENT_READ, force_share,
                                   &err);
    if (!ok) {
        goto open_err;
    }
    ok = image_opts ? img_open_image_opts(&img2, filename2, fmt2,
                                          BLK_PERM_CONSISTENT_READ,
                                          force_share, &err)
                    : img_open_chain(&img2, filename2, fmt2,
                                     BLK_PERM_CONSISTENT_READ, force_share,
                                     &err);
    if (!ok) {
        goto open_err;
    }
    s.buf1 = blk_memalign(4096, IO_BUF_SIZE);
    s.buf2 = blk_memalign(4096, IO_BUF_SIZE);
    ret = compare(&s, &img1, &img2, filename1, filename2, strict);
    blk_vfree(s.buf1);
    blk_vfree(s.buf2);
    goto out;

open_err:
    if (image_opts) {
        error_prepend(&err, "Could not open '%s': ",
                      img1.blk ? filename2 : filename1);
    }
    img_error("%s", err->message);
    g_error_free(err);
out:
    if (img2.blk) {
        img_close(&img2);
    }
    if (img1.blk) {
        img_close(&img1);
    }
    fflush(stdout);
    return ret;
}
