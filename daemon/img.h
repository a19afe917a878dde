/*
 * blockd-img internals: the command table, format table and the helpers
 * the commands share.  Messages and output follow qemu-img 7.2 word for
 * word, with "blockd-img" for the program name.
 */
#ifndef DAEMON_IMG_H
#define DAEMON_IMG_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

#define IMG_PROG "blockd-img"

/* "blockd-img: <message>" on stderr. */
void img_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* The same plus the "Try ... --help" line, then exit 1 (qemu-img's
 * error_exit, for usage errors). */
void img_error_exit(const char *fmt, ...) G_GNUC_PRINTF(1, 2)
    G_GNUC_NORETURN;
/* getopt's '?' and ':' results, as qemu-img words them (exit 1). */
void img_bad_option(int c, char **argv) G_GNUC_NORETURN;

/*
 * QEMU's qemu_strtosz(): decimal (with an optional fraction when a suffix
 * follows) or hex, suffixes b/k/M/G/T/P/E (either case), bytes by
 * default.  0, -EINVAL (syntax) or -ERANGE.
 */
int img_strtosz(const char *s, uint64_t *out);
/* qemu-img's cvtnum("image size", ...): prints its errors, -1 on error. */
int64_t img_cvtnum(const char *name, const char *value);
/* "1 MiB", "0.977 KiB": QEMU's size_to_str(). */
char *img_size_to_str(uint64_t val);
/* QEMU's bdrv_snapshot_dump() (info, snapshot -l): NULL prints the header. */
void img_dump_snapshot(const SnapshotInfo *sn);

/* qemu-img's warning for a probed raw image opened for writing. */
void img_warn_probed_raw(const char *filename);

/* QEMU's pretty JSON (4-space indent, QDict member order). */
char *img_json_pretty(JsonNode *node);

/*
 * The next entry of an -o list at *p, moving *p past it and its comma:
 * "name=value" (",," in a value is a literal comma) or a bare "name",
 * which is name=on, or with no_prefix "noNAME" is NAME=off (create's
 * QemuOpts).  The caller frees name and value.
 */
void img_opt_next(const char **p, bool no_prefix, char **name,
                  char **value);
/* Whether an -o list asks for help ("help" or "?" as an element). */
bool img_opts_want_help(const char *opts);
/* -o given again: qemu-img joins the lists with ','. */
void img_opts_append(char **options, const char *arg);

/* ---- formats ---- */

typedef enum ImgOptType {
    IMG_OPT_STRING,
    IMG_OPT_BOOL,
    IMG_OPT_SIZE,
    IMG_OPT_NUMBER,
} ImgOptType;

/* One -o option of a format's create, in the order qemu-img prints them. */
typedef struct ImgCreateOpt {
    const char *name;
    ImgOptType type;
    const char *help;
    const char *def; /* printed when not given (NULL: not printed) */
    bool protocol;   /* the file protocol's (listed only with a filename) */
} ImgCreateOpt;

/* Parsed -o values, keyed by option name (strings as given). */
typedef struct ImgCreateArgs {
    const char *filename;
    uint64_t size;
    GHashTable *opts;         /* name -> value */
    const char *backing_file; /* -b */
    const char *backing_fmt;  /* -F */
} ImgCreateArgs;

typedef struct ImgFormat {
    const char *name;
    /* Score for the first bytes of an image (0: not this format). */
    int (*probe)(const uint8_t *buf, size_t len);
    const ImgCreateOpt *create_opts; /* NULL-name terminated */
    /* Create the image; -errno with errp set. */
    int coroutine_fn (*create)(const ImgCreateArgs *a, GError **errp);
} ImgFormat;

/* NULL if blockd-img does not know the format. */
const ImgFormat *img_find_format(const char *name);
/* The format of an image file by its content (raw if nothing else
 * matches); NULL with errp set if the file cannot be read. */
const char *coroutine_fn img_probe(const char *filename, bool force_share,
                                   GError **errp);

/*
 * Open an image for a command, as qemu-img does: without its backing file
 * (each command follows chains itself), read-only unless `perm` has
 * BLK_PERM_WRITE, through a backend holding `perm` (0 for metadata-only
 * commands such as info, like QEMU's BDRV_O_NO_IO) and sharing
 * everything.  `fmt` NULL probes.  Errors come as qemu-img's "Could not
 * open ..." messages.  Close with img_close().
 */
typedef struct ImgImage {
    BlockBackend *blk;
    BlockDriverState *bs;
    const char *format; /* static */
    bool backing_off;   /* we opened it with "backing": null */
} ImgImage;
bool coroutine_fn img_open(ImgImage *img, const char *filename,
                           const char *fmt, uint64_t perm, bool force_share,
                           GError **errp);
/* The same without the "Could not open '<filename>': " prefix (backing
 * files, whose errors QEMU reports as they come). */
bool coroutine_fn img_open_bare(ImgImage *img, const char *filename,
                                const char *fmt, uint64_t perm,
                                bool force_share, GError **errp);
/* --image-opts: `optstr` is keyval text ("driver=qcow2,file.filename=x"). */
bool coroutine_fn img_open_image_opts(ImgImage *img, const char *optstr,
                                      const char *fmt, uint64_t perm,
                                      bool force_share, GError **errp);
/* An output image (convert): writable, "discard": "unmap" so that zeroes
 * may become holes as with qemu-img, with its backing chain or without. */
bool coroutine_fn img_open_target(ImgImage *img, const char *filename,
                                  const char *fmt, bool backing,
                                  GError **errp);
void img_close(ImgImage *img);
/* img_open() with the backing chain the image records (daemon/img-chain.c):
 * for commands that read guest-visible content (map, compare, convert). */
bool coroutine_fn img_open_chain(ImgImage *img, const char *filename,
                                 const char *fmt, uint64_t perm,
                                 bool force_share, GError **errp);
/* A command's image: `filename` is --image-opts text (image_opts) or a
 * file name, opened with its backing chain (chain: img_open_chain) or
 * without (img_open).  A failure is printed as qemu-img prints it. */
bool coroutine_fn img_open_for_cmd(ImgImage *img, const char *filename,
                                   const char *fmt, bool image_opts,
                                   bool chain, uint64_t perm,
                                   bool force_share);
/* An output image (convert): writable, "discard": "unmap" so that zeroes
 * may become holes as with qemu-img, with its backing chain or without. */
bool coroutine_fn img_open_target(ImgImage *img, const char *filename,
                                  const char *fmt, bool backing,
                                  GError **errp);

/* ---- commands: argv[0] is the command name; return the exit status ---- */
int img_cmd_create(int argc, char **argv);
int img_cmd_info(int argc, char **argv);
/* check (daemon/img-add-cow.c: add-cow is the format it checks) */
int img_cmd_check(int argc, char **argv);
/* check of a qcow2 image (daemon/img-check.c); fix: 1 leaks, 3 all;
 * repair_bitmaps (--repair-bitmaps, with fix 3): bitmaps a crash left in
 * use are rewritten as fully dirty */
int coroutine_fn img_check_qcow2(const char *filename, int fix, bool json,
                                 bool quiet, bool force_share,
                                 bool repair_bitmaps);
int img_cmd_map(int argc, char **argv);
int img_cmd_compare(int argc, char **argv);
int img_cmd_resize(int argc, char **argv);
int img_cmd_convert(int argc, char **argv);
int img_cmd_rebase(int argc, char **argv);
int img_cmd_commit(int argc, char **argv);
int img_cmd_amend(int argc, char **argv); /* daemon/img-amend.c */
int img_cmd_bitmap(int argc, char **argv);
int img_cmd_snapshot(int argc, char **argv); /* daemon/img-snapshot.c */

/* add-cow's entry in the format table (daemon/img-add-cow.c) */
int img_add_cow_probe(const uint8_t *buf, size_t len);
extern const ImgCreateOpt img_add_cow_create_opts[];
int coroutine_fn img_add_cow_create(const ImgCreateArgs *a, GError **errp);

#endif
