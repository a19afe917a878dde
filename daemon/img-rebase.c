/*
 * blockd-img rebase: qemu-img 7.2's "rebase".  Safe mode first copies into
 * the image every unallocated area where the old and the new backing file
 * differ (so the guest-visible content stays the same), then records the
 * new backing file; -u only records it.
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
#define SECTOR 512

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
};

/* qemu-img's progress: float percentages, printed on 1% steps. */
typedef struct Progress {
    bool on;
    float current, last;
} Progress;

static void progress_add(Progress *p, float delta, bool absolute)
{
    if (!p->on) {
        return;
    }
    /* Chunks smaller than assumed would pass 100%: held there (and
     * printed again, as qemu-img does). */
    p->current = absolute ? delta : MIN(p->current + delta, 100.0f);
    if (p->current > p->last + 1.0f || p->current < p->last - 1.0f ||
        p->current == 0 || p->current == 100) {
        p->last = p->current;
        printf("    (%3.2f/100%%)\r", p->current);
        fflush(stdout);
    }
}

/*
 * Record the new backing file in the image header.  qcow2 is the only
 * format blockd-img rebases (QEMU's bdrv_change_backing_file()): its
 * driver checks the name and writes the header.
 */
static int coroutine_fn change_backing(BlockDriverState *bs,
                                       const char *file, const char *fmt)
{
    if (!bs->drv || strcmp(bs->drv->format_name, "qcow2") ||
        !bs->drv->bdrv_co_change_backing_file) {
        return -ENOTSUP;
    }
    /* no backing file: no format either (qemu-img ignores -F then) */
    return bs->drv->bdrv_co_change_backing_file(bs, file, file ? fmt : NULL);
}

/* Copy what the backing file change would alter into the image. */
static int coroutine_fn copy_differences(ImgImage *img, ImgImage *newb,
                                         Progress *p)
{
    BdrvChild *old = img->bs->backing;
    int64_t size = blk_getlength(img->blk);
    int64_t old_size = old ? bdrv_getlength(old->bs) : 0;
    int64_t new_size = newb->blk ? blk_getlength(newb->blk) : 0;
    if (size < 0 || old_size < 0 || new_size < 0) {
        img_error("Could not get size of images");
        return -1;
    }
    uint8_t *buf_old = blk_memalign(4096, IO_BUF_SIZE);
    uint8_t *buf_new = blk_memalign(4096, IO_BUF_SIZE);
    float local = size ? 100.0f / (float)(size / MIN(size, IO_BUF_SIZE))
                       : 100.0f;
    int ret = 0;

    for (int64_t offset = 0, n; offset < size; offset += n) {
        n = MIN(IO_BUF_SIZE, size - offset);
        ret = bdrv_co_is_allocated(img->bs, offset, n, &n);
        if (ret < 0) {
            img_error("error while reading image metadata: %s",
                      g_strerror(-ret));
            goto out;
        }
        if (n <= 0) {
            ret = -EIO;
            img_error("error while reading image metadata: %s",
                      g_strerror(-ret));
            goto out;
        }
        if (ret) {
            continue; /* the image's own data hides both backing files */
        }
        bool old_zero = false;
        if (offset >= old_size) {
            memset(buf_old, 0, n);
            old_zero = true;
        } else {
            n = MIN(n, old_size - offset);
            ret = bdrv_co_pread(old, offset, n, buf_old, 0);
            if (ret < 0) {
                img_error("error while reading from old backing file");
                goto out;
            }
        }
        if (offset >= new_size) {
            memset(buf_new, 0, n);
        } else {
            n = MIN(n, new_size - offset);
            ret = blk_co_pread(newb->blk, offset, n, buf_new, 0);
            if (ret < 0) {
                img_error("error while reading from new backing file");
                goto out;
            }
        }
        /* Runs of sectors that differ (or not), written as they were. */
        for (int64_t w = 0; w < n;) {
            int64_t len = MIN(SECTOR, n - w);
            bool differ = memcmp(buf_old + w, buf_new + w, len) != 0;
            int64_t end = w + len;
            while (end < n) {
                int64_t l2 = MIN(SECTOR, n - end);
                if ((memcmp(buf_old + end, buf_new + end, l2) != 0) !=
                    differ) {
                    break;
                }
                end += l2;
            }
            if (differ) {
                ret = old_zero ? blk_co_pwrite_zeroes(img->blk, offset + w,
                                                      end - w, 0)
                               : blk_co_pwrite(img->blk, offset + w, end - w,
                                               buf_old + w, 0);
                if (ret < 0) {
                    img_error("Error while writing to COW image: %s",
                              g_strerror(-ret));
                    goto out;
                }
            }
            w = end;
        }
        progress_add(p, local, false);
    }
    ret = 0;
out:
    blk_vfree(buf_old);
    blk_vfree(buf_new);
    return ret < 0 ? -1 : 0;
}

/* The new backing file as the image will find it: relative names are
 * relative to the image's directory. */
static char *backing_path(const char *image, const char *name)
{
    if (g_path_is_absolute(name) || !strchr(image, '/')) {
        return g_strdup(name);
    }
    g_autofree char *dir = g_path_get_dirname(image);
    return g_build_filename(dir, name, NULL);
}

int img_cmd_rebase(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *out_base = NULL, *out_basefmt = NULL;
    bool unsafe = false, quiet = false, force_share = false;
    Progress p = { 0 };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " rebase [-U] [-q] [-f fmt] [-p] [-u] "
                   "-b backing_file [-F backing_fmt] filename\n");
            return EXIT_SUCCESS;
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            out_basefmt = optarg;
            break;
        case 'b':
            out_base = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            p.on = true;
            break;
        case 't':
        case 'T':
            break; /* cache modes: accepted */
        case 'q':
            quiet = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_IMAGE_OPTS:
            img_error("--image-opts is not supported by " IMG_PROG " rebase");
            return EXIT_FAILURE;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }
    if (quiet) {
        p.on = false;
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    if (!unsafe && !out_base) {
        img_error_exit("Must specify backing file (-b) or use unsafe mode "
                       "(-u)");
    }
    const char *filename = argv[optind];
    if (out_base && !*out_base) {
        out_base = NULL; /* -b "": no backing file any more */
    }

    progress_add(&p, 0, true);
    ImgImage img = { 0 }, newb = { 0 };
    GError *err = NULL;
    int ret = -1;
    uint64_t perm = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;
    bool ok = unsafe ? img_open(&img, filename, fmt, perm, false, &err)
                     : img_open_chain(&img, filename, fmt, perm, false, &err);
    if (!ok) {
        img_error("%s", err->message);
        g_clear_error(&err);
        goto out;
    }

    if (!unsafe) {
        if (out_base) {
            g_autofree char *path = backing_path(filename, out_base);
            if (!img_open_chain(&newb, path, out_basefmt,
                                BLK_PERM_CONSISTENT_READ, force_share,
                                &err)) {
                /* The backing file's own message, without our
                 * "Could not open '<path>': " in front. */
                g_autofree char *pre =
                    g_strdup_printf("Could not open '%s': ", path);
                const char *msg = err->message;
                if (g_str_has_prefix(msg, pre)) {
                    msg += strlen(pre);
                }
                img_error("Could not open new backing file '%s': %s",
                          out_base, msg);
                g_clear_error(&err);
                goto out;
            }
        }
        if (copy_differences(&img, &newb, &p) < 0) {
            goto out;
        }
    }

    if (out_base && !out_basefmt) {
        img_error("Could not change the backing file to '%s': backing "
                  "format must be specified",
                  out_base);
        goto out;
    }
    /* The copied data is on disk before the header points elsewhere. */
    ret = blk_co_flush(img.blk);
    if (ret < 0) {
        img_error("Could not flush the image: %s", g_strerror(-ret));
        goto out;
    }
    ret = change_backing(img.bs, out_base, out_basefmt);
    if (ret == -ENOSPC) {
        img_error("Could not change the backing file to '%s': No space left "
                  "in the file header",
                  out_base ? out_base : "");
    } else if (ret < 0) {
        img_error("Could not change the backing file to '%s': %s",
                  out_base ? out_base : "", g_strerror(-ret));
    }
    if (ret == 0) {
        ret = blk_co_flush(img.blk);
    }
    if (ret == 0) {
        progress_add(&p, 100, true);
    }
out:
    if (p.on) {
        printf("\n");
    }
    fflush(stdout);
    if (newb.blk) {
        img_close(&newb);
    }
    if (img.blk) {
        img_close(&img);
    }
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
