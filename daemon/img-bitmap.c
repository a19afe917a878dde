/*
 * blockd-img bitmap: qemu-img 7.2's offline persistent-bitmap editor.
 *
 *   bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
 *           --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY]
 *           [--object ...] [--image-opts | -f FMT] FILENAME BITMAP
 *
 * The image is opened read-write without its backing file, the actions
 * run in the order given through the same block-dirty-bitmap-* actions
 * QMP uses (so the checks and messages are the daemon's, which are
 * QEMU's), and closing the image stores the bitmaps.  As in qemu-img, the
 * first failing action ends the command with status 1, and the actions
 * before it are kept (they are stored on close like any other change).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "daemon/img.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
    OPTION_ADD,
    OPTION_REMOVE,
    OPTION_CLEAR,
    OPTION_ENABLE,
    OPTION_DISABLE,
    OPTION_MERGE,
};

typedef enum BitmapOp {
    BITMAP_ADD,
    BITMAP_REMOVE,
    BITMAP_CLEAR,
    BITMAP_ENABLE,
    BITMAP_DISABLE,
    BITMAP_MERGE,
} BitmapOp;

/* the word qemu-img uses for each in "Operation %s on bitmap ..." */
static const char *const op_names[] = {
    [BITMAP_ADD] = "add",         [BITMAP_REMOVE] = "remove",
    [BITMAP_CLEAR] = "clear",     [BITMAP_ENABLE] = "enable",
    [BITMAP_DISABLE] = "disable", [BITMAP_MERGE] = "merge",
};

typedef struct BitmapAction {
    BitmapOp op;
    const char *src; /* --merge: the source bitmap */
} BitmapAction;

typedef struct BitmapArgs {
    GArray *actions; /* BitmapAction, in command-line order */
    const char *fmt, *src_filename, *src_fmt;
    const char *filename, *bitmap;
    int64_t granularity; /* 0: the default */
    bool image_opts;
} BitmapArgs;

#define SYNTAX                                                                 \
    "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | "        \
    "--disable)... [-b source_file [-F source_fmt]] [-g granularity] "         \
    "[--object objectdef] [--image-opts | -f fmt] filename bitmap"

/*
 * An inconsistent bitmap is refused by every action but remove.  qemu-img
 * prints QEMU's hint under the error; the block layer's check (shared
 * with the daemon, where the hint only goes to the log) has no way to
 * hand a hint back, so the tool finds these bitmaps first and words the
 * refusal itself.  The message is the check's.
 */
static bool refuse_inconsistent(const BdrvDirtyBitmap *bm, BitmapOp op,
                                const char *bitmap)
{
    if (!bm || !bdrv_dirty_bitmap_inconsistent(bm)) {
        return false;
    }
    img_error("Operation %s on bitmap %s failed: Bitmap '%s' is inconsistent "
              "and cannot be used",
              op_names[op], bitmap, bdrv_dirty_bitmap_name(bm));
    fprintf(stderr,
            "Try block-dirty-bitmap-remove to delete this bitmap from disk\n");
    return true;
}

/* One action; false after printing why it failed. */
static bool coroutine_fn run_action(const BitmapArgs *a,
                                    const BitmapAction *act,
                                    BlockDriverState *bs,
                                    BlockDriverState *src_bs)
{
    GError *err = NULL;
    BlockDirtyBitmap target = { .node = bs->node_name,
                                .name = (char *)a->bitmap };
    BdrvDirtyBitmap *bm = bdrv_find_dirty_bitmap(bs, a->bitmap);

    switch (act->op) {
    case BITMAP_ADD: {
        /* qemu-img passes -g as QMP's uint32 granularity: a value of
         * 4 GiB or more is cut to its low 32 bits, and 0 (the cut
         * included) means the default, as there. */
        BlockDirtyBitmapAdd add = {
            .node = bs->node_name,
            .name = (char *)a->bitmap,
            .has_granularity = a->granularity != 0,
            .granularity = (uint32_t)a->granularity,
            .has_persistent = true,
            .persistent = true,
        };
        qmp_block_dirty_bitmap_add(&add, &err);
        break;
    }
    case BITMAP_REMOVE:
        qmp_block_dirty_bitmap_remove(&target, &err);
        break;
    case BITMAP_CLEAR:
        if (refuse_inconsistent(bm, act->op, a->bitmap)) {
            return false;
        }
        qmp_block_dirty_bitmap_clear(&target, &err);
        break;
    case BITMAP_ENABLE:
    case BITMAP_DISABLE:
        if (refuse_inconsistent(bm, act->op, a->bitmap)) {
            return false;
        }
        if (act->op == BITMAP_ENABLE) {
            qmp_block_dirty_bitmap_enable(&target, &err);
        } else {
            qmp_block_dirty_bitmap_disable(&target, &err);
        }
        break;
    case BITMAP_MERGE: {
        /* QEMU checks the target, then looks the source up and checks it */
        if (refuse_inconsistent(bm, act->op, a->bitmap)) {
            return false;
        }
        if (bm && refuse_inconsistent(bdrv_find_dirty_bitmap(src_bs, act->src),
                                      act->op, a->bitmap)) {
            return false;
        }
        BlockDirtyBitmapOrStr src = {
            .type = QTYPE_QDICT,
            .u.external = { .node = src_bs->node_name,
                            .name = (char *)act->src },
        };
        BlockDirtyBitmapOrStrList list = { .value = &src };
        BlockDirtyBitmapMerge merge = { .node = bs->node_name,
                                        .target = (char *)a->bitmap,
                                        .bitmaps = &list };
        qmp_block_dirty_bitmap_merge(&merge, &err);
        break;
    }
    }
    if (err) {
        img_error("Operation %s on bitmap %s failed: %s", op_names[act->op],
                  a->bitmap, err->message);
        g_error_free(err);
        return false;
    }
    return true;
}

static int coroutine_fn run_bitmap(const BitmapArgs *a)
{
    ImgImage img, src = { 0 };
    GError *err = NULL;
    int ret = EXIT_FAILURE;
    /* writable, like qemu-img's BDRV_O_RDWR (no resize) */
    uint64_t perm = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;

    if (!img_open_for_cmd(&img, a->filename, a->image_opts ? NULL : a->fmt,
                          a->image_opts, false, perm, false)) {
        return EXIT_FAILURE;
    }
    if (!a->fmt && !a->image_opts && !strcmp(img.format, "raw")) {
        img_warn_probed_raw(a->filename);
    }
    BlockDriverState *src_bs = img.bs;
    if (a->src_filename) {
        /* read-only: its bitmaps load readonly, which a merge source may be */
        if (!img_open(&src, a->src_filename, a->src_fmt,
                      BLK_PERM_CONSISTENT_READ, false, &err)) {
            img_error("%s", err->message);
            g_error_free(err);
            goto out;
        }
        src_bs = src.bs;
    }
    for (guint i = 0; i < a->actions->len; i++) {
        if (!run_action(a, &g_array_index(a->actions, BitmapAction, i),
                        img.bs, src_bs)) {
            goto out;
        }
    }
    ret = EXIT_SUCCESS;
out:
    if (src.blk) {
        img_close(&src);
    }
    img_close(&img); /* stores the bitmaps */
    return ret;
}

int img_cmd_bitmap(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "add", no_argument, NULL, OPTION_ADD },
        { "remove", no_argument, NULL, OPTION_REMOVE },
        { "clear", no_argument, NULL, OPTION_CLEAR },
        { "enable", no_argument, NULL, OPTION_ENABLE },
        { "disable", no_argument, NULL, OPTION_DISABLE },
        { "merge", required_argument, NULL, OPTION_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    BitmapArgs a = { .actions = g_array_new(FALSE, TRUE,
                                            sizeof(BitmapAction)) };
    bool add = false, merge = false;
    int ret = EXIT_FAILURE;
    int c;

    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", long_options, NULL)) !=
           -1) {
        BitmapAction act = { 0 };
        switch (c) {
        case ':':
        case '?':
            g_array_free(a.actions, TRUE);
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " " SYNTAX "\n");
            ret = EXIT_SUCCESS;
            goto out;
        case 'b':
            a.src_filename = optarg;
            break;
        case 'f':
            a.fmt = optarg;
            break;
        case 'F':
            a.src_fmt = optarg;
            break;
        case 'g':
            a.granularity = img_cvtnum("granularity", optarg);
            if (a.granularity < 0) {
                goto out;
            }
            break;
        case OPTION_ADD:
        case OPTION_REMOVE:
        case OPTION_CLEAR:
        case OPTION_ENABLE:
        case OPTION_DISABLE:
        case OPTION_MERGE:
            act.op = (BitmapOp)(c - OPTION_ADD);
            if (c == OPTION_MERGE) {
                act.src = optarg;
                merge = true;
            }
            add |= c == OPTION_ADD;
            g_array_append_val(a.actions, act);
            break;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            goto out;
        case OPTION_IMAGE_OPTS:
            a.image_opts = true;
            break;
        }
    }

    /* qemu-img's checks, in its order (plain errors, status 1) */
    if (a.actions->len == 0) {
        img_error("Need at least one of --add, --remove, --clear, --enable, "
                  "--disable, or --merge");
        goto out;
    }
    if (a.granularity && !add) {
        img_error("granularity only supported with --add");
        goto out;
    }
    if (a.src_fmt && !a.src_filename) {
        img_error("-F only supported with -b");
        goto out;
    }
    if (a.src_filename && !merge) {
        img_error("Merge bitmap source file only supported with --merge");
        goto out;
    }
    if (optind != argc - 2) {
        img_error("Expecting filename and bitmap name");
        goto out;
    }
    if (a.image_opts && a.fmt) {
        img_error("--image-opts and --format are mutually exclusive");
        goto out;
    }
    a.filename = argv[optind];
    a.bitmap = argv[optind + 1];
    ret = run_bitmap(&a);
out:
    g_array_free(a.actions, TRUE);
    return ret;
}
