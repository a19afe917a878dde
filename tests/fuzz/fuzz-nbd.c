/*
 * libFuzzer target for the NBD server: the input is everything a client
 * sends (client flags, options, requests, payloads), fed through one end of
 * a socketpair to a server session on the other.  The session must end
 * (the input ends with end-of-stream) without crashing, leaking, or
 * hanging, whatever the bytes say.
 *
 * Two exports over a null-co node make both phases reachable: "disk"
 * (writable, exporting dirty bitmap "fb") and "ro" (read-only, with
 * qemu:allocation-depth).  The seed
 * corpus (tests/fuzz/corpus/fuzz-nbd/) holds valid handshakes followed by
 * requests, so mutations explore the transmission phase too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "block/dirty-bitmap.h"
#include "block/export/nbd-int.h"
#include "util/aio.h"
#include "util/co-socket.h"

typedef struct Feed {
    int fd;
    const uint8_t *data;
    size_t size;
    bool writer_done;
    bool reader_done;
} Feed;

static void coroutine_fn feed_writer(void *opaque)
{
    Feed *f = opaque;

    /* A write fails only once the server hung up early: that is fine. */
    co_sock_write_full(f->fd, f->data, f->size);
    shutdown(f->fd, SHUT_WR);
    f->writer_done = true;
}

/* Drain the server's replies, or its writes would block and stall it. */
static void coroutine_fn feed_reader(void *opaque)
{
    Feed *f = opaque;
    static uint8_t sink[65536];

    while (co_sock_read_some(f->fd, sink, sizeof(sink)) > 0) {
    }
    f->reader_done = true;
}

static void coroutine_fn setup_co(void *opaque)
{
    static const char *const exports[] = {
        "type=nbd,id=e0,node-name=fz0,name=disk,writable=on,bitmaps.0=fb",
        "type=nbd,id=e1,node-name=fz0,name=ro,description=fuzz,"
        "allocation-depth=on",
    };
    GError *err = NULL;
    BlockDriverState *bs = bdrv_co_open_keyval(
        "driver=null-co,node-name=fz0,size=4194304,read-zeroes=on", &err);

    if (!bs) {
        fprintf(stderr, "fuzz-nbd: %s\n", err->message);
        exit(1);
    }
    bdrv_set_monitor_owned(bs);
    /* a bitmap with some dirty granules, exported by "disk" */
    BdrvDirtyBitmap *bm = bdrv_create_dirty_bitmap(bs, 65536, "fb", &err);
    if (!bm) {
        fprintf(stderr, "fuzz-nbd: %s\n", err->message);
        exit(1);
    }
    bdrv_set_dirty_bitmap(bm, 65536, 3 * 65536);
    bdrv_set_dirty_bitmap(bm, 1024 * 1024, 65536);
    for (size_t i = 0; i < G_N_ELEMENTS(exports); i++) {
        if (!blk_exp_add_keyval(exports[i], &err)) {
            fprintf(stderr, "fuzz-nbd: %s\n", err->message);
            exit(1);
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    GError *err = NULL;
    char dir[] = "/tmp/fuzz-nbd-XXXXXX";

    if (!aio_init(&err) || !mkdtemp(dir)) {
        fprintf(stderr, "fuzz-nbd: cannot initialise\n");
        exit(1);
    }
    /* Exports need a running server; we never connect to its socket. */
    g_autofree char *opts =
        g_strdup_printf("addr.type=unix,addr.path=%s/nbd.sock", dir);
    if (!nbd_server_start_keyval(opts, &err)) {
        fprintf(stderr, "fuzz-nbd: %s\n", err->message);
        exit(1);
    }
    coroutine_run_sync(setup_co, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    Feed f = { .data = data, .size = size };

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 ||
        sock_set_nonblocking(sv[0]) < 0 || sock_set_nonblocking(sv[1]) < 0) {
        abort();
    }
    f.fd = sv[1];
    nbd_client_new(sv[0]); /* the session owns sv[0] */
    coroutine_enter(coroutine_create(feed_reader, &f));
    coroutine_enter(coroutine_create(feed_writer, &f));
    while (!f.writer_done || !f.reader_done || nbd_client_count() > 0) {
        aio_poll(true);
    }
    close(sv[1]);
    return 0;
}
