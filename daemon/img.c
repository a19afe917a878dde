/*
 * blockd-img: the image tool, a growing subset of qemu-img 7.2 with the
 * same command line, output and exit status (0 success, 1 error).
 *
 * Each command runs as one coroutine on the event loop, so it can use the
 * block layer (which does its I/O through io_uring) directly.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/img.h"
#include "util/aio.h"
#include "util/coroutine.h"

#ifndef BLOCKD_VERSION
#define BLOCKD_VERSION "0.1.0"
#endif

/* ---- commands ---- */

typedef struct ImgCommand {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *syntax;
} ImgCommand;

static const ImgCommand commands[] = {
    { "amend", img_cmd_amend, "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename" },
    { "create", img_cmd_create,
      "create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] "
      "[-o options] filename [size]" },
    { "info", img_cmd_info,
      "info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename" },
    { "check", img_cmd_check,
      "check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] "
      "[--repair-bitmaps] [-U] filename" },
    { "map", img_cmd_map, "map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename" },
    { "compare", img_cmd_compare, "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2" },
    { "resize", img_cmd_resize, "resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size" },
    { "commit", img_cmd_commit, "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename" },
    { "rebase", img_cmd_rebase, "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename" },
    { "bitmap", img_cmd_bitmap, "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap" },
    { "snapshot", img_cmd_snapshot, "snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename" },
    { "convert", img_cmd_convert, "convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename" },
};

static void version(void)
{
    printf(IMG_PROG " version " BLOCKD_VERSION "\n"
           "Image tool of blockd; command line and output of qemu-img 7.2\n");
}

static void help(void)
{
    version();
    printf("usage: " IMG_PROG " [standard options] command [command options]\n"
           "Disk image utility (a qemu-img compatible subset)\n"
           "\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "    '-T', '--trace'      accepted and ignored (no tracing)\n"
           "\n"
           "Command syntax:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        printf("  %s\n", commands[i].syntax);
    }
    printf("\n"
           "Command parameters:\n"
           "  'filename' is a disk image filename\n"
           "  'fmt' is the disk image format (raw or qcow2); it is guessed "
           "automatically\n"
           "    in most cases\n"
           "  'size' is the disk image size in bytes. Optional suffixes\n"
           "    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' "
           "(gigabyte, 1024M),\n"
           "    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' "
           "(exabyte, 1024P)  are\n"
           "    supported. 'b' is ignored.\n"
           "  'output_filename' is the destination disk image filename\n"
           "  'ofmt' is 'human' or 'json'\n"
           "  '-q' use Quiet mode - do not print any output (except errors)\n"
           "  '-U' open the image without taking locks (force share)\n"
           "  '--backing-chain' show information about the whole backing "
           "chain\n"
           "\n"
           "Parameters to bitmap subcommand:\n"
           "  'bitmap' is the name of the bitmap to manipulate, through one "
           "or more\n"
           "       actions from '--add', '--remove', '--clear', '--enable', "
           "'--disable',\n"
           "       or '--merge source'\n"
           "  '-g granularity' sets the granularity for '--add' actions\n"
           "  '-b source' and '-F src_fmt' tell '--merge' actions to find the "
           "source\n"
           "       bitmaps from an alternative file\n"
           "\n"
           "Parameters to snapshot subcommand:\n"
           "  'snapshot' is the name of the snapshot to create, apply or "
           "delete\n"
           "  '-a' applies a snapshot (revert disk to saved state)\n"
           "  '-c' creates a snapshot\n"
           "  '-d' deletes a snapshot\n"
           "  '-l' lists all snapshots in the given image\n"
           "\n"
           "Parameters to check subcommand:\n"
           "  '-r' tries to repair any inconsistencies that are found during "
           "the check.\n"
           "       '-r leaks' repairs only cluster leaks, whereas '-r all' "
           "fixes all\n"
           "       kinds of errors\n"
           "  '--repair-bitmaps' (with '-r all') rewrites persistent bitmaps "
           "left in use\n"
           "       by a crash as fully dirty, instead of leaving them only "
           "removable\n"
           "\n"
           "Supported formats: raw qcow2\n");
}

typedef struct CommandCo {
    const ImgCommand *cmd;
    int argc;
    char **argv;
    int ret;
} CommandCo;

static void coroutine_fn command_co(void *opaque)
{
    CommandCo *c = opaque;

    c->ret = c->cmd->fn(c->argc, c->argv);
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "trace", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    opterr = 0;
    /* '+': the first non-option is the command; its options are its own. */
    while ((c = getopt_long(argc, argv, "+:hVT:", long_options, NULL)) !=
           -1) {
        switch (c) {
        case ':':
        case '?':
            img_bad_option(c, argv);
        case 'h':
            help();
            return EXIT_SUCCESS;
        case 'V':
            version();
            return EXIT_SUCCESS;
        case 'T':
            break; /* tracing is not supported: accepted and ignored */
        }
    }
    if (optind >= argc) {
        img_error_exit("Not enough arguments");
    }

    const char *name = argv[optind];
    const ImgCommand *cmd = NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (!strcmp(commands[i].name, name)) {
            cmd = &commands[i];
        }
    }
    if (!cmd) {
        img_error_exit("Command not found: %s", name);
    }

    GError *err = NULL;
    if (!aio_init(&err)) {
        img_error("%s", err->message);
        g_error_free(err);
        return EXIT_FAILURE;
    }
    /* The command sees argv[0] = its name, as getopt expects. */
    CommandCo co = { .cmd = cmd, .argc = argc - optind, .argv = argv + optind };
    optind = 0;
    coroutine_run_sync(command_co, &co);
    bdrv_close_all();
    aio_cleanup();
    fflush(stdout);
    return co.ret;
}
