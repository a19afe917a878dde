/*
 * blockd-img check for qcow2: runs the checker on the image file, repeats
 * it without repairs after a repair ("Double checking the fixed image
 * now..."), and prints the result as qemu-img 7.2 does (human or JSON)
 * with its exit status: 0 clean, 1 check failed, 2 corruptions, 3 leaks.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "block/drivers/qcow2-bitmap.h"
#include "block/drivers/qcow2.h"
#include "daemon/img.h"

static void dump_human(const Qcow2CheckResult *c, bool quiet)
{
    if (quiet) {
        return;
    }
    if (c->corruptions == 0 && c->leaks == 0 && c->check_errors == 0) {
        printf("No errors were found on the image.\n");
    } else {
        if (c->corruptions) {
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n",
                   c->corruptions);
        }
        if (c->leaks) {
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   c->leaks);
        }
        if (c->check_errors) {
            printf("\n%" PRId64 " internal errors have occurred during the "
                   "check.\n",
                   c->check_errors);
        }
    }
    if (c->total_clusters != 0 && c->allocated_clusters != 0) {
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               c->allocated_clusters, c->total_clusters,
               c->allocated_clusters * 100.0 / c->total_clusters,
               c->fragmented_clusters * 100.0 / c->allocated_clusters,
               c->compressed_clusters * 100.0 / c->allocated_clusters);
    }
    if (c->image_end_offset) {
        printf("Image end offset: %" PRId64 "\n", c->image_end_offset);
    }
}

/* ImageCheck: optional members only when non-zero, as qemu-img sets them. */
static void dump_json(const Qcow2CheckResult *c, const char *filename,
                      bool quiet, int64_t bitmaps_repaired)
{
    if (quiet) {
        return;
    }
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "filename", filename);
    json_object_set_string_member(o, "format", "qcow2");
    json_object_set_int_member(o, "check-errors", c->check_errors);
    const struct {
        const char *name;
        int64_t v;
    } opt[] = {
        { "image-end-offset", c->image_end_offset },
        { "corruptions", c->corruptions },
        { "leaks", c->leaks },
        { "corruptions-fixed", c->corruptions_fixed },
        { "leaks-fixed", c->leaks_fixed },
        { "total-clusters", c->total_clusters },
        { "allocated-clusters", c->allocated_clusters },
        { "fragmented-clusters", c->fragmented_clusters },
        { "compressed-clusters", c->compressed_clusters },
        /* blockd's own (--repair-bitmaps): not in QEMU's ImageCheck */
        { "bitmaps-repaired", bitmaps_repaired },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(opt); i++) {
        if (opt[i].v) {
            json_object_set_int_member(o, opt[i].name, opt[i].v);
        }
    }
    JsonNode *node = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    g_autofree char *text = img_json_pretty(node);
    json_node_unref(node);
    printf("%s\n", text);
}

/*
 * qemu-img opens the image with its backing chain before checking it, so
 * a missing backing file fails the check.  Damage in the image itself is
 * left to the checker (the driver may refuse what the check reports).
 */
static bool coroutine_fn backing_chain_opens(ImgImage *file,
                                             const char *filename,
                                             bool force_share)
{
    uint8_t h[16];
    if (blk_getlength(file->blk) < (int64_t)sizeof(h) ||
        blk_co_pread(file->blk, 0, sizeof(h), h, 0) < 0 ||
        qcow2_be32(h) != QCOW_MAGIC || qcow2_be64(h + 8) == 0) {
        return true;
    }
    ImgImage chain;
    GError *err = NULL;
    if (img_open_chain(&chain, filename, "qcow2", 0, force_share, &err)) {
        img_close(&chain);
        return true;
    }
    bool backing = strstr(err->message, "backing file") != NULL;
    if (backing) {
        img_error("%s", err->message);
    }
    g_error_free(err);
    return !backing;
}

/*
 * --repair-bitmaps: open the (checked, sound) image through the qcow2
 * driver and rewrite each bitmap a crash left in use as fully dirty (see
 * qcow2_bitmaps_repair_in_use).  Returns how many, or -1 after printing
 * why it could not.
 */
static int coroutine_fn repair_bitmaps(const char *filename, bool force_share,
                                       GPtrArray *names)
{
    ImgImage img;
    GError *err = NULL;
    /* A writable open rewrites every stored bitmap on close: only when
     * there is something to repair (a read-only open loads the bitmaps
     * left in use as inconsistent, and writes nothing). */
    if (!img_open(&img, filename, "qcow2", BLK_PERM_CONSISTENT_READ,
                  force_share, &err)) {
        img_error("Could not repair bitmaps: %s", err->message);
        g_error_free(err);
        return -1;
    }
    bool any = false;
    for (GList *l = img.bs->dirty_bitmaps; l; l = l->next) {
        any |= bdrv_dirty_bitmap_inconsistent(l->data);
    }
    img_close(&img);
    if (!any) {
        return 0;
    }
    if (!img_open(&img, filename, "qcow2",
                  BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, force_share,
                  &err)) {
        img_error("Could not repair bitmaps: %s", err->message);
        g_error_free(err);
        return -1;
    }
    int n = qcow2_bitmaps_repair_in_use(img.bs, names, &err);
    img_close(&img);
    if (n < 0) {
        img_error("Could not repair bitmaps: %s", err->message);
        g_error_free(err);
        return -1;
    }
    return n;
}

int coroutine_fn img_check_qcow2(const char *filename, int fix, bool json,
                                 bool quiet, bool force_share,
                                 bool repair_bitmaps_opt)
{
    g_autoptr(GPtrArray) bitmaps = g_ptr_array_new_with_free_func(g_free);
    bool bitmaps_failed = false;
    ImgImage img;
    GError *err = NULL;
    Qcow2CheckResult res;
    uint64_t perm = BLK_PERM_CONSISTENT_READ;
    int ret;

    if (fix) {
        perm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
    }
    if (!img_open(&img, filename, "file", perm, force_share, &err)) {
        img_error("%s", err->message);
        g_error_free(err);
        return 1;
    }
    if (!backing_chain_opens(&img, filename, force_share)) {
        img_close(&img);
        return 1;
    }
    ret = qcow2_co_check_file(img.blk, fix, &res, &err);
    if (ret < 0 && err) {
        img_error("Could not open '%s': %s", filename, err->message);
        g_error_free(err);
        img_close(&img);
        return 1;
    }
    if (ret == 0 && (res.corruptions_fixed || res.leaks_fixed)) {
        int64_t leaks_fixed = res.leaks_fixed;
        int64_t corruptions_fixed = res.corruptions_fixed;
        if (!json && !quiet) {
            printf("The following inconsistencies were found and repaired:\n"
                   "\n"
                   "    %" PRId64 " leaked clusters\n"
                   "    %" PRId64 " corruptions\n"
                   "\n"
                   "Double checking the fixed image now...\n",
                   leaks_fixed, corruptions_fixed);
        }
        /* stdout stays buffered, as qemu-img's: the second pass's
         * messages on stderr come first when both go to one pipe */
        ret = qcow2_co_check_file(img.blk, 0, &res, &err);
        if (ret < 0 && err) {
            img_error("%s", err->message);
            g_error_free(err);
            err = NULL;
        }
        res.leaks_fixed = leaks_fixed;
        res.corruptions_fixed = corruptions_fixed;
    }
    if (repair_bitmaps_opt && ret == 0 && !res.corruptions &&
        !res.check_errors) {
        /* the file is sound now: the driver may allocate in it */
        img_close(&img);
        int n = repair_bitmaps(filename, force_share, bitmaps);
        bitmaps_failed = n < 0;
        if (n > 0) {
            /* report the image as it is after the new tables */
            GError *err2 = NULL;
            int64_t leaks_fixed = res.leaks_fixed;
            int64_t corruptions_fixed = res.corruptions_fixed;
            if (!img_open(&img, filename, "file", BLK_PERM_CONSISTENT_READ,
                          force_share, &err2)) {
                img_error("%s", err2->message);
                g_error_free(err2);
                return 1;
            }
            ret = qcow2_co_check_file(img.blk, 0, &res, &err2);
            if (ret < 0 && err2) {
                img_error("%s", err2->message);
                g_error_free(err2);
            }
            res.leaks_fixed = leaks_fixed;
            res.corruptions_fixed = corruptions_fixed;
        }
    } else if (repair_bitmaps_opt && ret == 0) {
        img_error("Bitmaps not repaired: the image has errors");
        bitmaps_failed = true;
    }
    img_close(&img);
    if (ret == 0 && !json && !quiet) {
        for (guint i = 0; i < bitmaps->len; i++) {
            printf("Bitmap '%s' was not stored cleanly: rewritten as fully "
                   "dirty\n",
                   (const char *)g_ptr_array_index(bitmaps, i));
        }
    }
    if (ret == 0) {
        if (json) {
            dump_json(&res, filename, quiet, (int64_t)bitmaps->len);
        } else {
            dump_human(&res, quiet);
        }
    }
    if (ret < 0 || res.check_errors) {
        /* not img_error(): stdout stays buffered behind stderr, as in
         * qemu-img, so the pipe sees the same order */
        if (ret < 0) {
            fprintf(stderr, IMG_PROG ": Check failed: %s\n", g_strerror(-ret));
        } else {
            fprintf(stderr, IMG_PROG ": Check failed\n");
        }
        return 1;
    }
    if (res.corruptions) {
        return 2;
    }
    if (bitmaps_failed) {
        return 1;
    }
    return res.leaks ? 3 : 0;
}
