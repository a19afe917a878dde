/*
 * libFuzzer target for add-cow: the input is a metadata file (header and
 * COW bitmap).  It is opened read-only and read through (data, block
 * status, image info), then read-write and written to (partial-cluster
 * writes, zeroes, discard, flush, grow and shrink).  Whatever the bytes
 * say, nothing may crash, leak or hang; errors are fine.
 *
 * The image and backing children are given as options (null-co nodes),
 * so names in the header never make the target open other files; the
 * header is still parsed and validated in full.  The first input byte
 * picks the image size so bitmaps of different lengths are tried.
 * Seeds: tests/fuzz/corpus/fuzz-add-cow/ (files blockd-img created).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block_int.h"
#include "util/aio.h"

static char meta_path[64];

typedef struct Run {
    bool writable;
    int64_t size;
} Run;

static void coroutine_fn exercise(BlockBackend *blk, bool writable)
{
    static uint8_t buf[70000];
    int64_t len = blk_getlength(blk);
    if (len <= 0) {
        return;
    }
    for (int i = 0; i < 8; i++) {
        int64_t off = (len / 8) * i + i * 511;
        int64_t n = MIN((int64_t)sizeof(buf), len - off);
        if (n > 0) {
            blk_co_pread(blk, off, n, buf, 0);
        }
    }
    int64_t off = 0;
    for (int i = 0; i < 64 && off < len; i++) {
        int64_t pnum = 0;
        if (blk_co_block_status(blk, off, len - off, &pnum) < 0 || pnum <= 0) {
            break;
        }
        off += pnum;
    }
    if (!writable) {
        return;
    }
    memset(buf, 0xa5, sizeof(buf));
    blk_co_pwrite(blk, 0, MIN(len, 4096), buf, 0);
    blk_co_pwrite(blk, len / 2 + 100, MIN(len - len / 2 - 100, 6000), buf, 0);
    blk_co_pwrite_zeroes(blk, len / 3 + 7, MIN(len - len / 3 - 7, 200000), 0);
    blk_co_pdiscard(blk, len / 4, MIN(len - len / 4, 1 << 20));
    blk_co_flush(blk);
    blk_co_truncate(blk, len + 12345 * 512, false, PREALLOC_MODE_OFF, 0, NULL);
    blk_co_pwrite(blk, len, 8192, buf, 0);
    blk_co_truncate(blk, len / 2 & ~511, false, PREALLOC_MODE_OFF, 0, NULL);
    blk_co_pread(blk, 0, MIN(blk_getlength(blk), 65536), buf, 0);
    blk_co_flush(blk);
}

static void coroutine_fn run_co(void *opaque)
{
    Run *r = opaque;
    g_autofree char *opts = g_strdup_printf(
        "driver=add-cow,read-only=%s,file.driver=file,file.filename=%s,"
        "image.driver=null-co,image.size=%" PRId64 ",image.read-zeroes=on,"
        "backing.driver=null-co,backing.size=%" PRId64
        ",backing.read-zeroes=on",
        r->writable ? "off" : "on", meta_path, r->size, r->size / 3 * 2);
    GError *err = NULL;
    BlockDriverState *bs = bdrv_co_open_keyval(opts, &err);
    if (!bs) {
        g_clear_error(&err);
        return;
    }
    uint64_t perm = BLK_PERM_CONSISTENT_READ |
                    (r->writable ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0);
    BlockBackend *blk = blk_new(perm, BLK_PERM_ALL);
    if (blk_insert_bs(blk, bs, &err) == 0) {
        exercise(blk, r->writable);
    }
    g_clear_error(&err);
    ImageInfo *info = bdrv_co_image_info(bs, &err);
    qapi_free_ImageInfo(info);
    g_clear_error(&err);
    blk_unref(blk);
    bdrv_unref(bs);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    GError *err = NULL;
    if (!aio_init(&err)) {
        fprintf(stderr, "aio_init: %s\n", err->message);
        abort();
    }
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(meta_path, sizeof(meta_path), "%s/fuzz-add-cow-%d.acow", dir,
             (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    /* 512 B .. ~64 MiB, in sectors */
    static const int64_t sizes[] = { 512, 4096, 65536 + 512, 1 << 20,
                                     (8 << 20) + 4096, 64 << 20 };
    int64_t img_size = sizes[data[0] % G_N_ELEMENTS(sizes)];
    data++;
    size--;
    for (int pass = 0; pass < 2; pass++) {
        int fd = open(meta_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                      0600);
        if (fd < 0) {
            abort();
        }
        if (size && write(fd, data, size) != (ssize_t)size) {
            abort();
        }
        close(fd);
        Run r = { .writable = pass == 1, .size = img_size };
        coroutine_run_sync(run_co, &r);
    }
    unlink(meta_path);
    return 0;
}
