/*
 * blockd-img create: qemu-img 7.2's "create" (its bdrv_img_create()
 * checks, in the same order, and its "Formatting ..." line), with the
 * image written by the format's creator from the format table.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/img.h"
#include "util/error.h"

enum { OPTION_OBJECT = 256 };

static const ImgCreateOpt *find_opt(const ImgFormat *f, const char *name)
{
    for (const ImgCreateOpt *o = f->create_opts; o->name; o++) {
        if (!strcmp(o->name, name)) {
            return o;
        }
    }
    return NULL;
}

static const char *type_name(ImgOptType t)
{
    switch (t) {
    case IMG_OPT_BOOL:
        return "bool (on/off)";
    case IMG_OPT_NUMBER:
        return "num";
    case IMG_OPT_SIZE:
        return "size";
    default:
        return "str";
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* qemu-img's print_block_option_help(): sorted "  name=<type> - help". */
static int print_option_help(const char *filename, const char *fmt)
{
    const ImgFormat *f = img_find_format(fmt);
    if (!f) {
        img_error("Unknown file format '%s'", fmt);
        return EXIT_FAILURE;
    }
    GPtrArray *lines = g_ptr_array_new_with_free_func(g_free);
    for (const ImgCreateOpt *o = f->create_opts; o->name; o++) {
        if (o->protocol && !filename) {
            continue;
        }
        GString *s = g_string_new(NULL);
        g_string_append_printf(s, "  %s=<%s>", o->name, type_name(o->type));
        if (o->help) {
            if (s->len < 24) {
                g_string_append_printf(s, "%*s", (int)(24 - s->len), "");
            }
            g_string_append_printf(s, " - %s", o->help);
        }
        g_ptr_array_add(lines, g_string_free(s, FALSE));
    }
    qsort(lines->pdata, lines->len, sizeof(char *), cmp_str);
    if (filename) {
        printf("Supported options:\n");
    } else {
        printf("Supported %s options:\n", fmt);
    }
    for (guint i = 0; i < lines->len; i++) {
        printf("%s\n", (char *)g_ptr_array_index(lines, i));
    }
    if (!filename) {
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    }
    g_ptr_array_unref(lines);
    return EXIT_SUCCESS;
}

static bool validate(const ImgCreateOpt *o, const char *v, GError **errp)
{
    uint64_t n;
    char *end;

    switch (o->type) {
    case IMG_OPT_BOOL:
        if (strcmp(v, "on") && strcmp(v, "off") && strcmp(v, "yes") &&
            strcmp(v, "no") && strcmp(v, "true") && strcmp(v, "false") &&
            strcmp(v, "y") && strcmp(v, "n")) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'", o->name);
            return false;
        }
        return true;
    case IMG_OPT_NUMBER:
        errno = 0;
        n = g_ascii_strtoull(v, &end, 0);
        if (!*v || *end || strchr(v, '-')) {
            error_setg(errp, "Parameter '%s' expects a number", o->name);
            return false;
        }
        if (errno == ERANGE) {
            error_setg(errp, "Value '%s' is too large for parameter '%s'", v,
                       o->name);
            return false;
        }
        return true;
    case IMG_OPT_SIZE: {
        int ret = img_strtosz(v, &n);
        if (ret == -ERANGE) {
            error_setg(errp, "Value '%s' is out of range for parameter '%s'",
                       v, o->name);
            return false;
        }
        if (ret < 0) {
            error_setg(errp,
                       "Parameter '%s' expects a non-negative number below "
                       "2^64\nOptional suffix k, M, G, T, P or E means kilo-, "
                       "mega-, giga-, tera-, peta-\nand exabytes, "
                       "respectively.",
                       o->name);
            return false;
        }
        return true;
    }
    default:
        return true;
    }
}

/* QemuOpts' parse of -o: flat key=value, bare "key" = on, last wins. */
static bool parse_create_opts(const ImgFormat *f, const char *params,
                              GHashTable *t, GError **errp)
{
    const char *p = params;

    while (*p) {
        char *name, *value;

        img_opt_next(&p, true, &name, &value);
        if (!strcmp(name, "id")) {
            g_free(name);
            g_free(value);
            continue;
        }
        const ImgCreateOpt *o = find_opt(f, name);
        if (!o) {
            error_setg(errp, "Invalid parameter '%s'", name);
        }
        if (!o || !validate(o, value, errp)) {
            g_free(name);
            g_free(value);
            return false;
        }
        g_hash_table_replace(t, name, value);
    }
    return true;
}

/* QEMU's path_combine() for a backing file name relative to the image. */
static char *full_backing_name(const char *filename, const char *backing)
{
    const char *slash = strrchr(filename, '/');

    if (backing[0] == '/' || !slash) {
        return g_strdup(backing);
    }
    return g_strdup_printf("%.*s%s", (int)(slash - filename + 1), filename,
                           backing);
}

/* The "Formatting ..." line: every option given or with a default. */
static void print_formatting(const char *filename, const ImgFormat *f,
                             GHashTable *t)
{
    printf("Formatting '%s', fmt=%s ", filename, f->name);
    const char *sep = "";
    for (const ImgCreateOpt *o = f->create_opts; o->name; o++) {
        const char *v = g_hash_table_lookup(t, o->name);
        const char *shown = v ? v : o->def;
        if (!shown) {
            continue;
        }
        printf("%s%s=", sep, o->name);
        if (o->type == IMG_OPT_STRING) {
            for (const char *c = shown; *c; c++) {
                if (*c == ',') {
                    putchar(',');
                }
                putchar(*c);
            }
        } else if ((o->type == IMG_OPT_SIZE || o->type == IMG_OPT_NUMBER) &&
                   v) {
            uint64_t n = 0;
            if (o->type == IMG_OPT_SIZE) {
                img_strtosz(v, &n);
            } else {
                n = g_ascii_strtoull(v, NULL, 0);
            }
            printf("%" PRIu64, n);
        } else {
            printf("%s", shown);
        }
        sep = " ";
    }
    printf("\n");
    fflush(stdout);
}

typedef struct CreateArgs {
    const char *filename;
    const char *fmt;
    const char *base_filename;
    const char *base_fmt;
    const char *options;
    int64_t img_size; /* -1: not given */
    bool no_backing;  /* -u */
    bool quiet;
} CreateArgs;

/* Checks in bdrv_img_create()'s order; the error is prefixed by the
 * caller with the image name. */
static bool coroutine_fn img_create(const CreateArgs *c, GError **errp)
{
    const ImgFormat *f = img_find_format(c->fmt);
    if (!f) {
        error_setg(errp, "Unknown file format '%s'", c->fmt);
        return false;
    }

    g_autoptr(GHashTable) t = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                    g_free, g_free);
    if (c->options && !parse_create_opts(f, c->options, t, errp)) {
        return false;
    }
    if (!g_hash_table_lookup(t, "size")) {
        if (c->img_size >= 0) {
            g_hash_table_replace(t, g_strdup("size"),
                                 g_strdup_printf("%" PRId64, c->img_size));
        }
    } else if (c->img_size >= 0) {
        error_setg(errp, "The image size must be specified only once");
        return false;
    }
    if (c->base_filename) {
        if (!find_opt(f, "backing_file")) {
            error_setg(errp,
                       "Backing file not supported for file format '%s'",
                       f->name);
            return false;
        }
        g_hash_table_replace(t, g_strdup("backing_file"),
                             g_strdup(c->base_filename));
    }
    if (c->base_fmt) {
        if (!find_opt(f, "backing_fmt")) {
            error_setg(errp,
                       "Backing file format not supported for file format "
                       "'%s'",
                       f->name);
            return false;
        }
        g_hash_table_replace(t, g_strdup("backing_fmt"),
                             g_strdup(c->base_fmt));
    }

    const char *backing_file = g_hash_table_lookup(t, "backing_file");
    const char *backing_fmt = g_hash_table_lookup(t, "backing_fmt");
    if (backing_file) {
        if (!strcmp(c->filename, backing_file)) {
            error_setg(errp, "Error: Trying to create an image with the "
                             "same filename as the backing file");
            return false;
        }
        if (!backing_file[0]) {
            error_setg(errp, "Expected backing file name, got empty string");
            return false;
        }
    }

    int64_t size = -1;
    const char *sz = g_hash_table_lookup(t, "size");
    if (sz) {
        uint64_t v = 0;
        img_strtosz(sz, &v);
        if (v > INT64_MAX) {
            error_setg(errp, "The image size is too large for file format "
                             "'%s'",
                       f->name);
            return false;
        }
        size = (int64_t)v;
    }

    if (backing_file && !c->no_backing) {
        g_autofree char *full = full_backing_name(c->filename, backing_file);
        ImgImage b;
        GError *err = NULL;

        /* Metadata only, sharing everything: the backing file may be in
         * use (QEMU opens it with force-share and no I/O). */
        if (!img_open_bare(&b, full, backing_fmt, 0, true, &err)) {
            error_setg(errp, "%s\nCould not open backing image.",
                       err->message);
            g_error_free(err);
            return false;
        }
        if (!backing_fmt) {
            error_setg(errp, "Backing file specified without backing format"
                             "\nDetected format of %s.",
                       b.format);
            img_close(&b);
            return false;
        }
        if (size == -1) {
            size = bdrv_getlength(b.bs);
            if (size < 0) {
                error_setg_errno(errp, (int)-size, "Could not get size of '%s'",
                                 backing_file);
                img_close(&b);
                return false;
            }
            g_hash_table_replace(t, g_strdup("size"),
                                 g_strdup_printf("%" PRId64, size));
        }
        img_close(&b);
    } else if (backing_file && !backing_fmt) {
        error_setg(errp, "Backing file specified without backing format");
        return false;
    }

    if (size == -1) {
        error_setg(errp, "Image creation needs a size parameter");
        return false;
    }
    if (!c->quiet) {
        print_formatting(c->filename, f, t);
    }

    ImgCreateArgs a = {
        .filename = c->filename,
        .size = (uint64_t)size,
        .opts = t,
        .backing_file = backing_file,
        .backing_fmt = backing_fmt,
    };
    GError *err = NULL;
    int ret = f->create(&a, &err);
    if (ret == -EFBIG) {
        /* QEMU's message: clearer than the protocol's "File too large". */
        g_clear_error(&err);
        error_setg(errp, "The image size is too large for file format '%s'%s",
                   f->name,
                   find_opt(f, "cluster_size")
                       ? " (try using a larger cluster size)"
                       : "");
        return false;
    }
    if (ret < 0) {
        if (!err) {
            error_setg_errno(&err, -ret, "Could not create image");
        }
        error_propagate(errp, err);
        return false;
    }
    return true;
}

int img_cmd_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    CreateArgs c = { .fmt = "raw", .img_size = -1 };
    g_autofree char *options = NULL;
    int opt;

    while ((opt = getopt_long(argc, argv, ":F:b:f:ho:qu", long_options,
                              NULL)) != -1) {
        switch (opt) {
        case ':':
        case '?':
            img_bad_option(opt, argv);
        case 'h':
            printf("Usage: " IMG_PROG " create [-q] [-f fmt] [-b backing_file "
                   "[-F backing_fmt]] [-u] [-o options] filename [size]\n");
            return EXIT_SUCCESS;
        case 'F':
            c.base_fmt = optarg;
            break;
        case 'b':
            c.base_filename = optarg;
            break;
        case 'f':
            c.fmt = optarg;
            break;
        case 'o':
            img_opts_append(&options, optarg);
            break;
        case 'q':
            c.quiet = true;
            break;
        case 'u':
            c.no_backing = true;
            break;
        case OPTION_OBJECT:
            img_error("--object is not supported by " IMG_PROG);
            return EXIT_FAILURE;
        }
    }

    c.filename = optind < argc ? argv[optind] : NULL;
    if (options && img_opts_want_help(options)) {
        return print_option_help(c.filename, c.fmt);
    }
    if (optind >= argc) {
        img_error_exit("Expecting image file name");
    }
    optind++;
    if (optind < argc) {
        c.img_size = img_cvtnum("image size", argv[optind++]);
        if (c.img_size < 0) {
            return EXIT_FAILURE;
        }
    }
    if (optind != argc) {
        img_error_exit("Unexpected argument: %s", argv[optind]);
    }
    c.options = options;

    GError *err = NULL;
    if (!img_create(&c, &err)) {
        if (strstr(err->message, "\nDetected format of ")) {
            /* QEMU's hint for this one has no final newline. */
            fflush(stdout);
            fprintf(stderr, IMG_PROG ": %s: %s", c.filename, err->message);
        } else {
            img_error("%s: %s", c.filename, err->message);
        }
        g_error_free(err);
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
