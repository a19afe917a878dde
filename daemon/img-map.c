/*
 * blockd-img map: qemu-img 7.2's "map", the allocation of an image and
 * its backing chain as runs of equal status, human or JSON.
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
    OPTION_OUTPUT = 256,
    OPTION_START_OFFSET,
    OPTION_MAX_LENGTH,
    OPTION_OBJECT,
    OPTION_IMAGE_OPTS,
};

typedef struct MapEntry {
    int64_t start;
    int64_t length;
    int64_t depth;
    int64_t offset;
    bool present, zero, data, has_offset;
    const char *filename; /* NULL: none */
} MapEntry;

/* Status of the first layer of the chain that decides the content. */
static int coroutine_fn get_status(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, MapEntry *e)
{
    int64_t depth = 0, map = 0, pnum = 0;
    BlockDriverState *file = NULL;
    int ret;

    for (;;) {
        bs = bdrv_skip_filters(bs);
        ret = bdrv_co_block_status(bs, offset, bytes, &pnum, &map, &file);
        if (ret < 0) {
            return ret;
        }
        if (pnum <= 0) {
            return -EIO; /* no progress: never loop forever */
        }
        bytes = pnum;
        if (ret & (BDRV_BLOCK_ZERO | BDRV_BLOCK_DATA)) {
            break;
        }
        bs = bdrv_backing_bs(bs);
        if (!bs) {
            ret = 0;
            break;
        }
        depth++;
    }
    bool has_offset = ret & BDRV_BLOCK_OFFSET_VALID;
    *e = (MapEntry){
        .start = offset,
        .length = bytes,
        .depth = depth,
        .offset = has_offset ? map : 0,
        .present = ret & BDRV_BLOCK_ALLOCATED,
        .zero = ret & BDRV_BLOCK_ZERO,
        .data = ret & BDRV_BLOCK_DATA,
        .has_offset = has_offset,
        .filename = file && has_offset ? file->filename : NULL,
    };
    return 0;
}

static bool mergeable(const MapEntry *a, const MapEntry *b)
{
    if (a->length == 0 || a->zero != b->zero || a->data != b->data ||
        a->depth != b->depth || a->present != b->present ||
        !a->filename != !b->filename || a->has_offset != b->has_offset) {
        return false;
    }
    if (a->filename && strcmp(a->filename, b->filename)) {
        return false;
    }
    return !a->has_offset || a->offset + a->length == b->offset;
}

static int dump_entry(bool json, const MapEntry *e, bool more)
{
    if (!json) {
        if (e->data && !e->has_offset) {
            img_error("File contains external, encrypted or compressed "
                      "clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                   (uint64_t)e->start, (uint64_t)e->length,
                   (uint64_t)e->offset, e->filename ? e->filename : "");
        }
        return 0;
    }
    printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", "
           "\"depth\": %" PRId64 ", \"present\": %s, \"zero\": %s, "
           "\"data\": %s",
           e->start, e->length, e->depth, e->present ? "true" : "false",
           e->zero ? "true" : "false", e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" PRId64, e->offset);
    }
    putchar('}');
    if (more) {
        puts(",");
    }
    return 0;
}

static int64_t cvt_offset(const char *what, const char *v)
{
    uint64_t n;
    int err = img_strtosz(v, &n);

    if (err < 0 && err != -ERANGE) {
        img_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for",
                  what);
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
        return -1;
    }
    if (err == -ERANGE || n > INT64_MAX) {
        img_error("Invalid %s specified. Must be between 0 and %" PRId64 ".",
                  what, INT64_MAX);
        return -1;
    }
    return (int64_t)n;
}

int img_cmd_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, OPTION_START_OFFSET },
        { "max-length", required_argument, NULL, OPTION_MAX_LENGTH },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *output = NULL;
    bool force_share = false, image_opts = false;
    int64_t start = 0, max_length = -1;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_options, NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " map [-f fmt] [--output=ofmt] "
                   "[--start-offset=offset] [--max-length=len] [-U] "
                   "filename\n");
            return EXIT_SUCCESS;
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case OPTION_START_OFFSET:
            start = cvt_offset("start offset", optarg);
            if (start < 0) {
                return EXIT_FAILURE;
            }
            break;
        case OPTION_MAX_LENGTH:
            max_length = cvt_offset("max length", optarg);
            if (max_length < 0) {
                return EXIT_FAILURE;
            }
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
        img_error_exit("Expecting one image file name");
    }
    const char *filename = argv[optind];
    bool json;
    if (!output || !strcmp(output, "human")) {
        json = false;
    } else if (!strcmp(output, "json")) {
        json = true;
    } else {
        img_error("--output must be used with human or json as argument.");
        return EXIT_FAILURE;
    }

    ImgImage img;
    if (!img_open_for_cmd(&img, filename, fmt, image_opts, true, 0,
                          force_share)) {
        return EXIT_FAILURE;
    }

    if (json) {
        putchar('[');
    } else {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    }

    int64_t length = blk_getlength(img.blk);
    int ret = 0;
    if (length < 0) {
        img_error("Failed to get size for '%s'", filename);
        img_close(&img);
        return EXIT_FAILURE;
    }
    if (max_length != -1 && start + max_length < length) {
        length = start + max_length;
    }

    MapEntry curr = { .start = start }, next;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;
        ret = get_status(img.bs, offset, length - offset, &next);
        if (ret < 0) {
            img_error("Could not read file metadata: %s", g_strerror(-ret));
            goto out;
        }
        if (mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && dump_entry(json, &curr, true) < 0) {
            ret = -1;
            goto out;
        }
        curr = next;
    }
    ret = dump_entry(json, &curr, false);
    if (json) {
        puts("]");
    }
out:
    fflush(stdout);
    img_close(&img);
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
