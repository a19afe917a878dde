/*
 * blockd-img resize: qemu-img 7.2's "resize FILE [+|-]SIZE".
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "daemon/img.h"
#include "util/error.h"

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
    OPTION_PREALLOCATION,
    OPTION_SHRINK,
};

int img_cmd_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "preallocation", required_argument, NULL, OPTION_PREALLOCATION },
        { "shrink", no_argument, NULL, OPTION_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL;
    bool quiet = false, shrink = false, image_opts = false;
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    int c;

    /* The size comes off the end first, so getopt never sees "-5M". */
    if (argc < 3) {
        img_error_exit("Not enough arguments");
    }
    const char *size = argv[--argc];

    while ((c = getopt_long(argc, argv, ":f:hq", long_options, NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " resize [-f fmt] [--preallocation=prealloc]"
                   " [-q] [--shrink] filename [+ | -]size\n");
            return EXIT_SUCCESS;
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case OPTION_PREALLOCATION: {
            int p = PreallocMode_parse(optarg);
            if (p < 0 || p >= PREALLOC_MODE__MAX) {
                img_error("Invalid preallocation mode '%s'", optarg);
                return EXIT_FAILURE;
            }
            prealloc = (PreallocMode)p;
            break;
        }
        case OPTION_SHRINK:
            shrink = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting image file name and size");
    }
    const char *filename = argv[optind];

    int relative = 0;
    if (size[0] == '+') {
        relative = 1;
        size++;
    } else if (size[0] == '-') {
        relative = -1;
        size++;
    }
    uint64_t n;
    if (img_strtosz(size, &n) < 0) {
        img_error("Parameter 'size' expects a non-negative number below 2^64\n"
                  "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                  "giga-, tera-, peta-\n"
                  "and exabytes, respectively.");
        return EXIT_FAILURE;
    }

    ImgImage img;
    GError *err = NULL;
    uint64_t perm = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                    BLK_PERM_RESIZE;
    if (!img_open_for_cmd(&img, filename, fmt, image_opts, false, perm,
                          false)) {
        return EXIT_FAILURE;
    }

    if (!fmt && !image_opts && !strcmp(img.format, "raw")) {
        img_warn_probed_raw(filename);
    }

    int ret = -1;
    int64_t current = blk_getlength(img.blk);
    if (current < 0) {
        img_error("Failed to inquire current image length: %s",
                  g_strerror((int)-current));
        goto out;
    }
    /* Sizes past INT64_MAX are negative here, as in qemu-img. */
    int64_t total = relative ? current + (int64_t)n * relative : (int64_t)n;
    if (total <= 0) {
        img_error("New image size must be positive");
        goto out;
    }
    if (total <= current && prealloc != PREALLOC_MODE_OFF) {
        img_error("Preallocation can only be used for growing images");
        goto out;
    }
    if (total < current && !shrink) {
        img_error("Use the --shrink option to perform a shrink operation.");
        img_error("warning: Shrinking an image will delete all data beyond "
                  "the shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        goto out;
    }
    /* The user wants exactly this size afterwards: exact = true. */
    ret = blk_co_truncate(img.blk, total, true, prealloc, 0, &err);
    if (ret < 0) {
        img_error("%s", err ? err->message : g_strerror(-ret));
        g_clear_error(&err);
    } else {
        ret = blk_co_flush(img.blk);
        if (ret < 0) {
            img_error("%s", g_strerror(-ret));
        } else if (!quiet) {
            printf("Image resized.\n");
        }
    }
out:
    fflush(stdout);
    img_close(&img);
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
