/*
 * libFuzzer target for the qcow2 driver: the input is an image file.  It is
 * opened read-only and read through (data, block status, image info), then
 * opened read-write and written to (data, zeroes, discard, flush).  Whatever
 * the bytes say, nothing may crash, leak or hang; errors are fine.
 *
 * Backing files named in the header are not opened (backing=null): the
 * input must not make the target touch other files.  Seeds: images made by
 * qemu-img (tests/fuzz/corpus/fuzz-qcow2/).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block_int.h"
#include "util/aio.h"

static char image_path[64];

typedef struct Run {
    bool writable;
    BlockDriverState *bs;
} Run;

static void coroutine_fn exercise(BlockBackend *blk, bool writable)
{
    static uint8_t buf[65536];
    int64_t len = blk_getlength(blk);
    if (len <= 0) {
        return;
    }
    /* Reads at a few offsets spread over the disk. */
    for (int i = 0; i < 8; i++) {
        int64_t off = (len / 8) * i;
        int64_t n = MIN((int64_t)sizeof(buf), len - off);
        if (n > 0) {
            blk_co_pread(blk, off, n, buf, 0);
        }
    }
    /* Block status from the start, a bounded number of extents. */
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
    blk_co_pwrite(blk, len / 2, MIN(len - len / 2, 6000), buf, 0);
    blk_co_pwrite_zeroes(blk, len / 3, MIN(len - len / 3, 200000), 0);
    blk_co_pwrite_zeroes(blk, 0, MIN(len, 70000), BDRV_REQ_MAY_UNMAP);
    blk_co_pdiscard(blk, len / 4, MIN(len - len / 4, 1 << 20));
    blk_co_pwrite(blk, len / 4, MIN(len - len / 4, 65536), buf,
                  BDRV_REQ_WRITE_COMPRESSED);
    blk_co_flush(blk);
}

static void coroutine_fn run_co(void *opaque)
{
    Run *r = opaque;
    g_autofree char *opts = g_strdup_printf(
        "driver=qcow2,backing=null,l2-cache-size=1,refcount-cache-size=1,"
        "cache-clean-interval=0,discard=unmap,read-only=%s,"
        "file.driver=file,file.filename=%s",
        r->writable ? "off" : "on", image_path);
    GError *err = NULL;
    BlockDriverState *bs = bdrv_co_open_keyval(opts, &err);
    if (!bs) {
        g_clear_error(&err);
        return;
    }
    uint64_t perm = BLK_PERM_CONSISTENT_READ |
                    (r->writable ? BLK_PERM_WRITE : 0);
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
    snprintf(image_path, sizeof(image_path), "%s/fuzz-qcow2-%d.img", dir,
             (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int pass = 0; pass < 2; pass++) {
        int fd = open(image_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                      0600);
        if (fd < 0) {
            abort();
        }
        if (size && write(fd, data, size) != (ssize_t)size) {
            abort();
        }
        close(fd);
        Run r = { .writable = pass == 1 };
        coroutine_run_sync(run_co, &r);
    }
    unlink(image_path);
    return 0;
}
