/*
 * blockd-img snapshot: qemu-img 7.2's internal snapshot editor.
 *
 *   snapshot [--object objectdef] [--image-opts] [-U] [-q]
 *            [-l | -a snapshot | -c snapshot | -d snapshot] filename
 *
 * The image is opened without its backing file (read-only for -l); the
 * snapshots live in a qcow2 node (block/drivers/qcow2-snapshot.c), found
 * below a raw node as QEMU's snapshot fallback does.  As in qemu-img, -c
 * does not check for an existing name, -a takes an id first, then a name,
 * -d a name only, and the messages and exit status (1 on error) are
 * qemu-img's.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "block/qmp-snapshot-internal.h"
#include "daemon/img.h"
#include "util/error.h"

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
};

typedef enum SnapshotAction {
    SNAPSHOT_NONE,
    SNAPSHOT_LIST,
    SNAPSHOT_APPLY,
    SNAPSHOT_CREATE,
    SNAPSHOT_DELETE,
} SnapshotAction;

#define SYNTAX                                                                 \
    "snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a "        \
    "snapshot | -c snapshot | -d snapshot] filename"

/* qemu-img's find_snapshot_by_id_or_name(): an id first, then a name. */
static int find_id_or_name(BDRVQcow2State *s, const char *id_or_name)
{
    int idx = qcow2_snapshot_find(s->snapshots, s->nb_snapshots, id_or_name,
                                  NULL);
    if (idx < 0) {
        idx = qcow2_snapshot_find(s->snapshots, s->nb_snapshots, NULL,
                                  id_or_name);
    }
    return idx;
}

static int coroutine_fn run_snapshot(SnapshotAction action, const char *name,
                                     const char *filename, bool image_opts,
                                     bool force_share)
{
    ImgImage img;
    uint64_t perm = BLK_PERM_CONSISTENT_READ;
    if (action != SNAPSHOT_LIST) {
        perm |= BLK_PERM_WRITE;
    }
    if (force_share && action != SNAPSHOT_LIST) {
        img_error("Could not open '%s': force-share=on can only be used "
                  "with read-only images",
                  filename);
        return EXIT_FAILURE;
    }
    if (!img_open_for_cmd(&img, filename, NULL, image_opts, false, perm,
                          force_share)) {
        return EXIT_FAILURE;
    }
    bool probed_raw = !image_opts && !strcmp(img.format, "raw");
    if (probed_raw && action != SNAPSHOT_LIST) {
        img_warn_probed_raw(filename);
    }
    BlockDriverState *target = qmp_internal_snapshot_node(img.bs);
    BDRVQcow2State *s = target ? target->opaque : NULL;
    int ret = 0;
    GError *err = NULL;

    switch (action) {
    case SNAPSHOT_LIST:
        if (s && s->nb_snapshots) {
            printf("Snapshot list:\n");
            img_dump_snapshot(NULL);
            printf("\n");
            for (uint32_t i = 0; i < s->nb_snapshots; i++) {
                SnapshotInfo *si = qcow2_snapshot_info(&s->snapshots[i]);
                img_dump_snapshot(si);
                qapi_free_SnapshotInfo(si);
                printf("\n");
            }
        }
        break;
    case SNAPSHOT_CREATE: {
        if (!target) {
            ret = -ENOTSUP;
        } else {
            /* qemu-img's QEMUSnapshotInfo: a 256-byte name, no vm clock,
             * icount 0 */
            Qcow2Snapshot sn = { 0 };
            sn.name = g_strndup(name, 255);
            int64_t rt = g_get_real_time();
            sn.date_sec = (uint32_t)(rt / G_USEC_PER_SEC);
            sn.date_nsec = (uint32_t)((rt % G_USEC_PER_SEC) * 1000);
            sn.has_icount = true;
            sn.icount = 0;
            ret = qcow2_snapshot_create(target, &sn, NULL);
            g_free(sn.name);
        }
        if (ret < 0) {
            img_error("Could not create snapshot '%s': %d (%s)", name, ret,
                      g_strerror(-ret));
        }
        break;
    }
    case SNAPSHOT_APPLY:
        if (probed_raw) {
            /* QEMU reopens the image on its way to the fallback */
            img_warn_probed_raw(filename);
        }
        if (img.bs->dirty_bitmaps || (target && target->dirty_bitmaps)) {
            /* QEMU's bdrv_snapshot_goto(): the bitmaps would not match */
            img_error("Could not apply snapshot '%s': Device has active "
                      "dirty bitmaps",
                      name);
            ret = -EBUSY;
            break;
        }
        if (!target) {
            img_error("Could not apply snapshot '%s': Block driver does not "
                      "support snapshots",
                      name);
            ret = -ENOTSUP;
            break;
        }
        ret = find_id_or_name(s, name);
        if (ret >= 0) {
            ret = qcow2_snapshot_goto(target, ret, &err);
        } else {
            ret = -ENOENT;
        }
        if (ret < 0) {
            img_error("Could not apply snapshot '%s': Failed to load "
                      "snapshot: %s",
                      name, g_strerror(-ret));
        }
        break;
    case SNAPSHOT_DELETE: {
        /* qemu-img's bdrv_snapshot_find(): names only */
        int idx = s ? qcow2_snapshot_find(s->snapshots, s->nb_snapshots,
                                          NULL, name)
                    : -1;
        if (idx < 0) {
            img_error("Could not delete snapshot '%s': snapshot not found",
                      name);
            ret = -ENOENT;
            break;
        }
        g_autofree char *id = g_strdup(s->snapshots[idx].id_str);
        ret = qcow2_snapshot_delete(target, id, NULL, &err);
        if (ret < 0) {
            img_error("Could not delete snapshot '%s': %s", name,
                      err ? err->message : g_strerror(-ret));
        }
        break;
    }
    case SNAPSHOT_NONE:
        break;
    }
    if (err) {
        g_error_free(err);
    }
    img_close(&img);
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

int img_cmd_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    SnapshotAction action = SNAPSHOT_NONE;
    const char *name = NULL;
    bool image_opts = false, force_share = false;
    int c;

    while ((c = getopt_long(argc, argv, ":la:c:d:hqU", long_options, NULL)) !=
           -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            printf("Usage: " IMG_PROG " " SYNTAX "\n");
            return EXIT_SUCCESS;
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action != SNAPSHOT_NONE) {
                img_error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c == 'l'   ? SNAPSHOT_LIST
                     : c == 'a' ? SNAPSHOT_APPLY
                     : c == 'c' ? SNAPSHOT_CREATE
                                : SNAPSHOT_DELETE;
            name = optarg;
            break;
        case 'q':
            break; /* nothing is printed but the list and errors */
        case 'U':
            force_share = true;
            break;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    /* no action: qemu-img opens the image read-write and does nothing */
    return run_snapshot(action, name, argv[optind], image_opts, force_share);
}
