/*
 * blockd-img info: qemu-img 7.2's "info" with its human and JSON output.
 *
 * Like qemu-img, each image of a chain is opened on its own (without its
 * backing file) and described by the block layer's ImageInfo; the chain
 * is followed through the backing file names the images record.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/block_int.h"
#include "daemon/img.h"
#include "util/error.h"
#include "util/json-stream.h"

enum {
    OPTION_OUTPUT = 256,
    OPTION_BACKING_CHAIN,
    OPTION_OBJECT,
    OPTION_IMAGE_OPTS,
};

/* ---- human output ---- */

static void dump_node(int indent, JsonNode *node);

static bool is_composite(JsonNode *n)
{
    return JSON_NODE_HOLDS_OBJECT(n) || JSON_NODE_HOLDS_ARRAY(n);
}

static void dump_scalar(JsonNode *n)
{
    if (JSON_NODE_HOLDS_NULL(n)) {
        return;
    }
    switch (json_node_get_value_type(n)) {
    case G_TYPE_INT64:
        printf("%" PRId64, json_node_get_int(n));
        break;
    case G_TYPE_BOOLEAN:
        printf("%s", json_node_get_boolean(n) ? "true" : "false");
        break;
    case G_TYPE_DOUBLE:
        printf("%.17g", json_node_get_double(n));
        break;
    case G_TYPE_STRING:
        printf("%s", json_node_get_string(n));
        break;
    default:
        break;
    }
}

/* QEMU's dump_qdict(): "key: value", '-' shown as ' ' in keys. */
static void dump_object(int indent, JsonObject *obj)
{
    const char **names = json_object_qmp_members(obj);

    for (int i = 0; names[i]; i++) {
        JsonNode *v = json_object_get_member(obj, names[i]);
        bool composite = is_composite(v);
        char *key = g_strdup(names[i]);

        g_strdelimit(key, "-", ' ');
        printf("%*s%s:%c", indent * 4, "", key, composite ? '\n' : ' ');
        dump_node(indent + 1, v);
        if (!composite) {
            printf("\n");
        }
        g_free(key);
    }
    g_free(names);
}

static void dump_array(int indent, JsonArray *arr)
{
    guint n = json_array_get_length(arr);

    for (guint i = 0; i < n; i++) {
        JsonNode *v = json_array_get_element(arr, i);
        bool composite = is_composite(v);

        printf("%*s[%u]:%c", indent * 4, "", i, composite ? '\n' : ' ');
        dump_node(indent + 1, v);
        if (!composite) {
            printf("\n");
        }
    }
}

static void dump_node(int indent, JsonNode *node)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        dump_object(indent, json_node_get_object(node));
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        dump_array(indent, json_node_get_array(node));
    } else {
        dump_scalar(node);
    }
}

void img_dump_snapshot(const SnapshotInfo *sn)
{
    if (!sn) {
        printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
               "VM CLOCK", "ICOUNT");
        return;
    }
    char date[64] = "";
    time_t t = (time_t)sn->date_sec;
    struct tm tm;
    if (localtime_r(&t, &tm)) {
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    }
    uint64_t clock_ns = (uint64_t)sn->vm_clock_sec * 1000000000ULL +
                        (uint64_t)sn->vm_clock_nsec;
    uint64_t secs = clock_ns / 1000000000ULL;
    char clock[128];
    snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((clock_ns / 1000000) % 1000));
    char icount[32] = "";
    if (sn->has_icount) {
        snprintf(icount, sizeof(icount), "%" PRId64, sn->icount);
    }
    g_autofree char *size = img_size_to_str((uint64_t)sn->vm_state_size);
    printf("%-9s %-16s %8s%20s%13s%11s", sn->id, sn->name, size, date, clock,
           icount);
}

/* QEMU's bdrv_image_info_dump(). */
static void dump_human(const ImageInfo *info)
{
    g_autofree char *vsize = img_size_to_str((uint64_t)info->virtual_size);
    g_autofree char *dsize =
        info->has_actual_size ? img_size_to_str((uint64_t)info->actual_size)
                              : g_strdup("unavailable");

    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRId64 " bytes)\n"
           "disk size: %s\n",
           info->filename, info->format, vsize, info->virtual_size, dsize);
    if (info->has_encrypted && info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->has_cluster_size) {
        printf("cluster_size: %" PRId64 "\n", info->cluster_size);
    }
    if (info->has_dirty_flag && info->dirty_flag) {
        printf("cleanly shut down: no\n");
    }
    if (info->has_backing_filename) {
        printf("backing file: %s", info->backing_filename);
        if (!info->has_full_backing_filename) {
            printf(" (cannot determine actual path)");
        } else if (strcmp(info->backing_filename,
                          info->full_backing_filename) != 0) {
            printf(" (actual path: %s)", info->full_backing_filename);
        }
        printf("\n");
    }
    if (info->has_backing_filename_format) {
        printf("backing file format: %s\n", info->backing_filename_format);
    }
    if (info->has_snapshots) {
        printf("Snapshot list:\n");
        img_dump_snapshot(NULL);
        printf("\n");
        for (SnapshotInfoList *e = info->snapshots; e; e = e->next) {
            img_dump_snapshot(e->value);
            printf("\n");
        }
    }
    if (info->has_format_specific && info->format_specific) {
        JsonNode *spec = qapi_ImageInfoSpecific_to_json(info->format_specific);
        JsonNode *data = NULL;
        if (JSON_NODE_HOLDS_OBJECT(spec)) {
            data = json_object_get_member(json_node_get_object(spec), "data");
        }
        printf("Format specific information:\n");
        if (data) {
            dump_node(1, data);
        }
        json_node_unref(spec);
    }
}

/* ---- collecting the chain ---- */

typedef struct InfoArgs {
    const char *filename;
    const char *fmt;
    bool chain;
    bool force_share;
    bool image_opts;
} InfoArgs;

/* The list of ImageInfo, top first; NULL after printing an error. */
static GPtrArray *coroutine_fn collect(const InfoArgs *a)
{
    GPtrArray *list = g_ptr_array_new_with_free_func(
        (GDestroyNotify)qapi_free_ImageInfo);
    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                             NULL);
    char *filename = g_strdup(a->filename);
    char *fmt = g_strdup(a->fmt);
    bool image_opts = a->image_opts;

    while (filename) {
        if (g_hash_table_contains(seen, filename)) {
            img_error("Backing file '%s' creates an infinite loop.",
                      filename);
            goto err;
        }
        g_hash_table_add(seen, g_strdup(filename));

        ImgImage img;
        GError *err = NULL;
        if (!img_open_for_cmd(&img, filename, fmt, image_opts, false, 0,
                              a->force_share)) {
            goto err;
        }
        ImageInfo *info = bdrv_co_image_info(img.bs, &err);
        /*
         * Opening without the backing file ("backing": null) makes the
         * block layer describe the node as json:{...}, as QEMU does for
         * such a blockdev-add; qemu-img (BDRV_O_NO_BACKING) shows the name
         * of the image file instead.
         */
        BlockDriverState *file = img.bs->file ? img.bs->file->bs : NULL;
        g_autofree char *plain = g_strdup(
            file && !g_str_has_prefix(file->filename, "json:") ? file->filename
                                                               : filename);
        bool backing_off = img.backing_off;
        img_close(&img);
        if (!info) {
            img_error("%s", err->message);
            g_error_free(err);
            goto err;
        }
        if (info && backing_off && g_str_has_prefix(info->filename, "json:") &&
            !g_str_has_prefix(plain, "json:")) {
            g_free(info->filename);
            info->filename = g_strdup(plain);
        }
        g_ptr_array_add(list, info);
        image_opts = false; /* only the top image is given as options */

        g_clear_pointer(&filename, g_free);
        g_clear_pointer(&fmt, g_free);
        if (a->chain) {
            if (info->has_full_backing_filename) {
                filename = g_strdup(info->full_backing_filename);
            } else if (info->has_backing_filename) {
                img_error("Could not determine absolute backing filename, "
                          "but backing filename '%s' present",
                          info->backing_filename);
                goto err;
            }
            if (info->has_backing_filename_format) {
                fmt = g_strdup(info->backing_filename_format);
            }
        }
    }
    g_hash_table_unref(seen);
    return list;

err:
    g_free(filename);
    g_free(fmt);
    g_hash_table_unref(seen);
    g_ptr_array_unref(list);
    return NULL;
}

static void print_json(GPtrArray *list, bool chain)
{
    JsonNode *node;

    if (chain) {
        JsonArray *arr = json_array_new();
        for (guint i = 0; i < list->len; i++) {
            json_array_add_element(
                arr, qapi_ImageInfo_to_json(g_ptr_array_index(list, i)));
        }
        node = json_node_init_array(json_node_alloc(), arr);
        json_array_unref(arr);
    } else {
        node = qapi_ImageInfo_to_json(g_ptr_array_index(list, 0));
    }
    g_autofree char *text = img_json_pretty(node);
    printf("%s\n", text);
    json_node_unref(node);
}

static void usage_info(void)
{
    printf("Usage: " IMG_PROG " info [-f fmt] [--output=ofmt] "
           "[--backing-chain] [-U] filename\n");
}

int img_cmd_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "backing-chain", no_argument, NULL, OPTION_BACKING_CHAIN },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    InfoArgs a = { 0 };
    const char *output = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_options, NULL)) != -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            usage_info();
            return EXIT_SUCCESS;
        case 'f':
            a.fmt = optarg;
            break;
        case 'U':
            a.force_share = true;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case OPTION_BACKING_CHAIN:
            a.chain = true;
            break;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        case OPTION_IMAGE_OPTS:
            a.image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    a.filename = argv[optind];

    bool json;
    if (output && !strcmp(output, "json")) {
        json = true;
    } else if (!output || !strcmp(output, "human")) {
        json = false;
    } else {
        img_error("--output must be used with human or json as argument.");
        return EXIT_FAILURE;
    }

    GPtrArray *list = collect(&a);
    if (!list) {
        return EXIT_FAILURE;
    }
    if (json) {
        print_json(list, a.chain);
    } else {
        for (guint i = 0; i < list->len; i++) {
            if (i) {
                printf("\n");
            }
            dump_human(g_ptr_array_index(list, i));
        }
    }
    g_ptr_array_unref(list);
    return EXIT_SUCCESS;
}
