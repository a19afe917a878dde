/*
 * Unit tests for the request path: alignment and read-modify-write
 * against a shadow buffer, serialisation of concurrent overlapping
 * unaligned writes, write-zeroes fallback, detect-zeroes, splitting at
 * max_transfer, flush skipping, drain, bounds, block status, resize, and
 * the node queries.
 *
 * Most tests run on an in-memory test driver registered in place of
 * null-aio (bdrv_register_test_driver), which checks that every request
 * it sees is aligned and can sleep inside requests to force interleaving.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <glib.h>

#include "block/block_int.h"
#include "tests/unit/test-helpers.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"

/* ---- the in-memory test driver ---- */

static struct {
    uint32_t align;
    int64_t max_transfer;
    int64_t pwz_align;  /* pwrite_zeroes_alignment */
    bool zeroes;        /* implements write_zeroes */
    int64_t latency_ns; /* sleep inside each read and write */
    int misaligned;     /* requests that broke the alignment contract */
    int64_t max_seen;   /* largest request */
    int reads, writes, zero_calls, flushes;
} md;

typedef struct MemState {
    uint8_t *buf;
} MemState;

static uint8_t *md_mem; /* the last opened node's memory */

static void md_reset(uint32_t align)
{
    memset(&md, 0, sizeof(md));
    md.align = align;
}

static int coroutine_fn md_open(BlockDriverState *bs,
                                const BlockdevOptions *opts, GError **errp)
{
    MemState *s = bs->opaque;
    bs->total_bytes = opts->u.null_aio.has_size ? opts->u.null_aio.size : 65536;
    s->buf = g_malloc0(bs->total_bytes);
    md_mem = s->buf;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;
    return 0;
}

static GString *close_log; /* "flush:m0 close:m0 ..." */

static void md_close(BlockDriverState *bs)
{
    MemState *s = bs->opaque;
    if (close_log) {
        g_string_append_printf(close_log, "close:%s ", bs->node_name);
    }
    g_free(s->buf);
}

static void md_limits(BlockDriverState *bs, GError **errp)
{
    bs->bl.request_alignment = md.align;
    bs->bl.max_transfer = md.max_transfer;
    bs->bl.pwrite_zeroes_alignment = md.pwz_align;
}

static void md_check(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    if (offset % md.align || bytes % md.align) {
        md.misaligned++;
    }
    md.max_seen = MAX(md.max_seen, bytes);
}

static int coroutine_fn md_preadv(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, IOVector *qiov,
                                  BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    md_check(bs, offset, bytes);
    md.reads++;
    if (md.latency_ns) {
        co_sleep_ns(md.latency_ns);
    }
    test_mem_read(bs, s->buf, offset, bytes, qiov);
    return 0;
}

static int coroutine_fn md_pwritev(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    md_check(bs, offset, bytes);
    md.writes++;
    if (md.latency_ns) {
        co_sleep_ns(md.latency_ns);
    }
    return test_mem_write(bs, s->buf, offset, bytes, qiov);
}

static int coroutine_fn md_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    if (!md.zeroes) {
        return -ENOTSUP;
    }
    md_check(bs, offset, bytes);
    md.zero_calls++;
    memset(s->buf + offset, 0, bytes);
    return 0;
}

static int coroutine_fn md_flush(BlockDriverState *bs)
{
    md.flushes++;
    if (close_log) {
        g_string_append_printf(close_log, "flush:%s ", bs->node_name);
    }
    return 0;
}

static int coroutine_fn md_truncate(BlockDriverState *bs, int64_t offset,
                                    bool exact, PreallocMode prealloc,
                                    BdrvRequestFlags flags, GError **errp)
{
    MemState *s = bs->opaque;
    s->buf = g_realloc(s->buf, offset);
    if (offset > bs->total_bytes) {
        memset(s->buf + bs->total_bytes, 0, offset - bs->total_bytes);
    }
    md_mem = s->buf;
    bs->total_bytes = offset;
    return 0;
}

static const BlockDriver memdrv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-aio",
    .driver = BLOCKDEV_DRIVER_NULL_AIO,
    .instance_size = sizeof(MemState),
    .bdrv_open = md_open,
    .bdrv_close = md_close,
    .bdrv_refresh_limits = md_limits,
    .bdrv_co_preadv = md_preadv,
    .bdrv_co_pwritev = md_pwritev,
    .bdrv_co_pwrite_zeroes = md_pwrite_zeroes,
    .bdrv_co_flush_to_disk = md_flush,
    .bdrv_co_truncate = md_truncate,
};

/* ---- helpers ---- */

static int do_req(BlockBackend *blk, TestOp op, int64_t offset, int64_t bytes,
                  void *buf, BdrvRequestFlags flags)
{
    TestReq r = {blk, op, offset, bytes, buf, flags, 0, false};
    return test_req_run(&r);
}

/* Start a request that runs concurrently; poll until r->done. */
static void start_req(TestReq *r)
{
    r->done = false;
    coroutine_enter(coroutine_create(test_req_co, r));
}

static void fill_random(uint8_t *p, size_t n, GRand *rnd)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = g_rand_int(rnd) & 0xff;
    }
}

static const BlockDriver cowdrv; /* below */

static int teardown(void **state)
{
    bdrv_close_all();
    bdrv_unregister_test_driver(&memdrv);
    bdrv_unregister_test_driver(&cowdrv);
    assert_null(bdrv_next_node(NULL));
    return 0;
}

/* Drop every node (between phases of one test). */
static void blockdev_del_all(void)
{
    bdrv_close_all();
}

static int setup_memdrv(void **state)
{
    bdrv_register_test_driver(&memdrv);
    return 0;
}

/* ---- alignment ---- */

static void rmw_patterns(uint32_t align, const char *opts, int64_t shift)
{
    md_reset(align);
    BlockDriverState *bs = test_open_owned(opts);
    BlockBackend *blk = test_rw_blk(bs);
    int64_t size = blk_getlength(blk);
    uint8_t *shadow = g_malloc0(size + shift);
    GRand *rnd = g_rand_new_with_seed(align);
    static const int64_t offs[] = {0,    1,    7,    511,  512,  513,
                                   1000, 4095, 4096, 4097, 8191, 12000};
    static const int64_t lens[] = {1,    2,    511,  512,  513,
                                   4095, 4096, 4097, 8192, 12291};
    uint8_t *buf = g_malloc(16384);
    uint8_t *rbuf = g_malloc(16384);

    memcpy(shadow, md_mem, size + shift);
    for (size_t i = 0; i < G_N_ELEMENTS(offs); i++) {
        for (size_t j = 0; j < G_N_ELEMENTS(lens); j++) {
            int64_t off = offs[i], len = lens[j];
            if (off + len > size) {
                continue;
            }
            fill_random(buf, len, rnd);
            assert_int_equal(do_req(blk, TEST_OP_WRITE, off, len, buf, 0), 0);
            memcpy(shadow + shift + off, buf, len);
            assert_memory_equal(md_mem, shadow, size + shift);
            memset(rbuf, 0xa5, len);
            assert_int_equal(do_req(blk, TEST_OP_READ, off, len, rbuf, 0), 0);
            assert_memory_equal(rbuf, shadow + shift + off, len);
        }
    }
    assert_int_equal(md.misaligned, 0);
    g_free(buf);
    g_free(rbuf);
    g_free(shadow);
    g_rand_free(rnd);
    blk_unref(blk);
}

static void test_rmw_512(void **state)
{
    rmw_patterns(512, "driver=null-aio,node-name=m0,size=65536", 0);
}

static void test_rmw_4096(void **state)
{
    rmw_patterns(4096, "driver=null-aio,node-name=m0,size=65536", 0);
}

static void test_rmw_through_raw_window(void **state)
{
    /* raw itself is byte-granular; its child (shifted by 1) does the RMW */
    rmw_patterns(4096,
                 "driver=raw,node-name=r0,offset=1,size=32768,"
                 "file.driver=null-aio,file.size=65536",
                 1);
}

static void test_read_past_end_zero(void **state)
{
    md_reset(4096);
    /* 5000 bytes: the node is 5120 long (sectors), the driver sees whole
     * 4096 blocks, the tail past the data reads as zero. */
    BlockDriverState *bs =
        test_open_owned("driver=null-aio,node-name=m0,size=5000");
    assert_int_equal(bdrv_getlength(bs), 5120);
    memset(md_mem, 0x11, 5000);
    BlockBackend *blk = test_rw_blk(bs);
    uint8_t buf[300];
    assert_int_equal(do_req(blk, TEST_OP_READ, 4900, 220, buf, 0), 0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(buf[i], 0x11);
    }
    for (int i = 100; i < 220; i++) {
        assert_int_equal(buf[i], 0);
    }
    /* bounds are the BlockBackend's */
    assert_int_equal(do_req(blk, TEST_OP_READ, 5000, 121, buf, 0), -EIO);
    assert_int_equal(do_req(blk, TEST_OP_READ, -1, 1, buf, 0), -EIO);
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 5120, 1, buf, 0), -EIO);
    assert_int_equal(md.misaligned, 0);
    blk_unref(blk);
}

static void test_rmw_file_direct(void **state)
{
    /* raw over the real file driver with O_DIRECT: the file node has a
     * request alignment of 512 or more, and unaligned requests from above
     * must reach the disk intact. */
    char path[] = "/tmp/test-block-io-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    enum { SIZE = 256 * 1024 };
    assert_int_equal(ftruncate(fd, SIZE), 0);
    g_autofree char *opts = g_strdup_printf(
        "driver=raw,node-name=rf,file.driver=file,file.filename=%s,"
        "file.cache.direct=on",
        path);
    GError *err = NULL;
    BlockDriverState *bs = test_try_open(opts, &err);
    if (!bs) {
        /* a file system without O_DIRECT (tmpfs) */
        g_error_free(err);
        close(fd);
        unlink(path);
        skip();
    }
    bdrv_set_monitor_owned(bs);
    BlockDriverState *f = bs->file->bs;
    assert_true(f->bl.request_alignment >= 512);
    BlockBackend *blk = test_rw_blk(bs);
    uint8_t *shadow = g_malloc0(SIZE), *buf = g_malloc(20000),
            *rbuf = g_malloc(20000), *disk = g_malloc(SIZE);
    GRand *rnd = g_rand_new_with_seed(42);
    static const int64_t offs[] = {0, 1, 511, 513, 4095, 4097, 65535};
    static const int64_t lens[] = {1, 100, 511, 512, 4097, 12289};
    for (size_t i = 0; i < G_N_ELEMENTS(offs); i++) {
        for (size_t j = 0; j < G_N_ELEMENTS(lens); j++) {
            fill_random(buf, lens[j], rnd);
            assert_int_equal(
                do_req(blk, TEST_OP_WRITE, offs[i], lens[j], buf, 0), 0);
            memcpy(shadow + offs[i], buf, lens[j]);
            assert_int_equal(
                do_req(blk, TEST_OP_READ, offs[i], lens[j], rbuf, 0), 0);
            assert_memory_equal(rbuf, shadow + offs[i], lens[j]);
        }
    }
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);
    assert_int_equal(pread(fd, disk, SIZE, 0), SIZE);
    assert_memory_equal(disk, shadow, SIZE);
    /* zeroes at unaligned edges */
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 3, 9000, NULL, 0), 0);
    memset(shadow + 3, 0, 9000);
    assert_int_equal(pread(fd, disk, SIZE, 0), SIZE);
    assert_memory_equal(disk, shadow, SIZE);
    g_rand_free(rnd);
    g_free(shadow);
    g_free(buf);
    g_free(rbuf);
    g_free(disk);
    blk_unref(blk);
    close(fd);
    unlink(path);
}

/* ---- serialisation ---- */

static void test_concurrent_rmw(void **state)
{
    enum { N = 8, LEN = 300, BASE = 4000 };
    md_reset(4096);
    md.latency_ns = 2 * 1000 * 1000;
    BlockDriverState *bs =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockBackend *blk = test_rw_blk(bs);
    uint8_t shadow[65536];
    static uint8_t bufs[N][LEN];
    TestReq reqs[N];

    memset(shadow, 0, sizeof(shadow));
    for (int i = 0; i < N; i++) {
        memset(bufs[i], 'a' + i, LEN);
        reqs[i] = (TestReq){blk, TEST_OP_WRITE, BASE + i * 97, LEN, bufs[i], 0,
                            0,   false};
        memcpy(shadow + BASE + i * 97, bufs[i], LEN);
    }
    for (int i = 0; i < N; i++) {
        start_req(&reqs[i]); /* each yields inside the driver */
    }
    for (int i = 0; i < N; i++) {
        while (!reqs[i].done) {
            aio_poll(true);
        }
        assert_int_equal(reqs[i].ret, 0);
    }
    /* Applied in issue order with no lost update. */
    assert_memory_equal(md_mem, shadow, sizeof(shadow));
    assert_int_equal(md.misaligned, 0);
    assert_null(LIST_FIRST(&bs->tracked_requests));
    assert_int_equal(bs->serialising_in_flight, 0);

    /* An aligned reader overlapping a running RMW sees all of it. */
    TestReq w = {blk, TEST_OP_WRITE, 4096 + 10, 100, bufs[0], 0, 0, false};
    uint8_t rbuf[4096];
    TestReq r = {blk, TEST_OP_READ, 4096, 4096, rbuf, 0, 0, false};
    start_req(&w);
    start_req(&r);
    while (!w.done || !r.done) {
        aio_poll(true);
    }
    assert_memory_equal(rbuf + 10, bufs[0], 100);
    blk_unref(blk);
}

/* ---- write zeroes ---- */

static void test_write_zeroes_fallback(void **state)
{
    md_reset(512);
    md.max_transfer = 8192; /* fallback writes must respect it */
    BlockDriverState *bs =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockBackend *blk = test_rw_blk(bs);
    memset(md_mem, 0xff, 65536);

    assert_int_equal(do_req(blk, TEST_OP_ZERO, 1000, 30000, NULL, 0), 0);
    for (int i = 0; i < 65536; i++) {
        assert_int_equal(md_mem[i], (i >= 1000 && i < 31000) ? 0 : 0xff);
    }
    assert_int_equal(md.zero_calls, 0);
    assert_true(md.writes > 0);
    assert_true(md.max_seen <= 8192);
    assert_int_equal(md.misaligned, 0);

    /* pieces split at the zero alignment: a small head, a big middle */
    md.pwz_align = 4096;
    blk_unref(blk);
    blockdev_del_all();
    bs = test_open_owned("driver=null-aio,node-name=m1,size=65536");
    blk = test_rw_blk(bs);
    memset(md_mem, 0xff, 65536);
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 1024, 40960, NULL, 0), 0);
    for (int i = 0; i < 65536; i++) {
        assert_int_equal(md_mem[i], (i >= 1024 && i < 41984) ? 0 : 0xff);
    }
    assert_int_equal(md.misaligned, 0);
    memset(md_mem, 0xff, 65536);

    /* NO_FALLBACK: refuse rather than write zeroes slowly */
    assert_int_equal(
        do_req(blk, TEST_OP_ZERO, 32768, 4096, NULL, BDRV_REQ_NO_FALLBACK),
        -ENOTSUP);
    assert_int_equal(
        do_req(blk, TEST_OP_ZERO, 32769, 4096, NULL, BDRV_REQ_NO_FALLBACK),
        -ENOTSUP);
    assert_int_equal(md_mem[32768], 0xff);

    /* with driver support the driver does it, no data writes */
    md.zeroes = true;
    int writes = md.writes;
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 32768, 8192, NULL, 0), 0);
    assert_int_equal(md.writes, writes);
    assert_true(md.zero_calls > 0);
    assert_int_equal(md_mem[32768], 0);
    assert_int_equal(md_mem[32768 + 8192], 0xff);
    blk_unref(blk);
}

static void test_detect_zeroes(void **state)
{
    md_reset(512);
    md.zeroes = true;
    BlockDriverState *bs = test_open_owned(
        "driver=null-aio,node-name=m0,size=65536,detect-zeroes=on");
    BlockBackend *blk = test_rw_blk(bs);
    memset(md_mem, 0xff, 65536);
    uint8_t zero[4096] = {0};
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 4096, 4096, zero, 0), 0);
    assert_int_equal(md.zero_calls, 1);
    assert_int_equal(md.writes, 0);
    assert_int_equal(md_mem[4096], 0);
    uint8_t one[4096];
    memset(one, 1, sizeof(one));
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 4096, 4096, one, 0), 0);
    assert_int_equal(md.writes, 1);
    blk_unref(blk);
}

/* ---- splitting, flush ---- */

static void test_max_transfer(void **state)
{
    md_reset(512);
    md.max_transfer = 4096;
    BlockDriverState *bs =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockBackend *blk = test_rw_blk(bs);
    uint8_t buf[20000], rbuf[20000];
    GRand *rnd = g_rand_new_with_seed(7);
    fill_random(buf, sizeof(buf), rnd);
    g_rand_free(rnd);
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 100, sizeof(buf), buf, 0), 0);
    assert_true(md.max_seen <= 4096);
    assert_true(md.writes >= 5);
    assert_memory_equal(md_mem + 100, buf, sizeof(buf));
    assert_int_equal(do_req(blk, TEST_OP_READ, 100, sizeof(rbuf), rbuf, 0), 0);
    assert_memory_equal(rbuf, buf, sizeof(buf));
    assert_int_equal(md.misaligned, 0);
    blk_unref(blk);
}

static void test_flush(void **state)
{
    md_reset(512);
    BlockDriverState *bs = test_open_owned(
        "driver=raw,node-name=r0,file.driver=null-aio,file.size=65536");
    BlockBackend *blk = test_rw_blk(bs);
    uint8_t buf[512] = {1};
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);
    int base = md.flushes;
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, 512, buf, 0), 0);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);
    assert_int_equal(md.flushes, base + 1);
    /* nothing new: skipped */
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);
    assert_int_equal(md.flushes, base + 1);
    /* FUA on a driver without it is a write plus a flush */
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, 512, buf, BDRV_REQ_FUA), 0);
    assert_int_equal(md.flushes, base + 2);
    blk_unref(blk);
}

static void test_cache_no_flush(void **state)
{
    md_reset(512);
    BlockDriverState *bs = test_open_owned(
        "driver=null-aio,node-name=m0,size=65536,cache.no-flush=on");
    BlockBackend *blk = test_rw_blk(bs);
    uint8_t buf[512] = {1};
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, 512, buf, 0), 0);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);
    assert_int_equal(md.flushes, 0);
    blk_unref(blk);
}

static void test_close_all(void **state)
{
    md_reset(512);
    /* two formats over one memory node, plus an unrelated one */
    test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockDriverState *a = test_open_owned("driver=raw,node-name=a,file=m0");
    test_open_owned("driver=raw,node-name=b,file=m0,size=4096");
    test_open_owned("driver=null-aio,node-name=m1,size=65536");
    BlockBackend *blk = test_rw_blk(a);
    uint8_t buf[512] = {9};
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, 512, buf, 0), 0);
    blk_unref(blk);
    close_log = g_string_new(NULL);
    bdrv_close_all();
    /* the written node is flushed before it closes; m0 outlives both
     * raw nodes that use it; nothing is left */
    const char *log = close_log->str;
    const char *fl = strstr(log, "flush:m0");
    const char *cl = strstr(log, "close:m0");
    assert_non_null(fl);
    assert_non_null(cl);
    assert_true(fl < cl);
    assert_non_null(strstr(log, "close:m1"));
    assert_null(bdrv_next_node(NULL));
    assert_null(bdrv_find_node("a"));
    g_string_free(close_log, TRUE);
    close_log = NULL;
}

static void test_inherited_options(void **state)
{
    md_reset(512);
    BlockDriverState *r = test_open_owned(
        "driver=raw,node-name=r,read-only=on,cache.direct=on,"
        "cache.no-flush=on,file.driver=null-aio,file.size=65536");
    BlockDriverState *f = r->file->bs;
    assert_true(bdrv_is_read_only(f));
    assert_true(f->open_flags & BDRV_O_NOCACHE);
    assert_true(f->open_flags & BDRV_O_NO_FLUSH);
    /* a format's file child may pass discards down by default */
    assert_true(f->open_flags & BDRV_O_UNMAP);
    assert_false(r->open_flags & BDRV_O_UNMAP);
    /* a child's own setting wins */
    BlockDriverState *r2 = test_open_owned(
        "driver=raw,node-name=r2,read-only=on,file.driver=null-aio,"
        "file.size=65536,file.read-only=off,file.discard=ignore");
    assert_false(bdrv_is_read_only(r2->file->bs));
    assert_false(r2->file->bs->open_flags & BDRV_O_UNMAP);
}

/* ---- permissions on the request path ---- */

typedef struct TruncCo {
    BlockBackend *blk;
    int64_t size;
    GError *err;
    int ret;
} TruncCo;

static void coroutine_fn trunc_co(void *opaque)
{
    TruncCo *t = opaque;
    t->ret =
        blk_co_truncate(t->blk, t->size, false, PREALLOC_MODE_OFF, 0, &t->err);
}

static void test_request_perms(void **state)
{
    md_reset(512);
    BlockDriverState *bs =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockBackend *ro = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_int_equal(blk_insert_bs(ro, bs, NULL), 0);
    uint8_t buf[512] = {0};
    assert_int_equal(do_req(ro, TEST_OP_WRITE, 0, 512, buf, 0), -EPERM);
    assert_int_equal(do_req(ro, TEST_OP_ZERO, 0, 512, NULL, 0), -EPERM);
    assert_int_equal(do_req(ro, TEST_OP_DISCARD, 0, 512, NULL, 0), -EPERM);
    assert_int_equal(do_req(ro, TEST_OP_READ, 0, 512, buf, 0), 0);
    assert_int_equal(md.writes, 0);
    /* truncate needs the resize permission on the edge */
    TruncCo t = {ro, 4096, NULL, 0};
    coroutine_run_sync(trunc_co, &t);
    assert_int_equal(t.ret, -EPERM);
    assert_string_equal(t.err->message,
                        "Node 'm0' may not be resized by this user");
    g_clear_error(&t.err);
    assert_int_equal(bdrv_getlength(bs), 65536);
    blk_unref(ro);
}

/* ---- drain ---- */

static void test_drain(void **state)
{
    md_reset(512);
    md.latency_ns = 30 * 1000 * 1000;
    BlockDriverState *m0 =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=m0");
    BlockBackend *blk = test_rw_blk(r0);
    uint8_t buf[512] = {7};
    TestReq w1 = {blk, TEST_OP_WRITE, 0, 512, buf, 0, 0, false};
    start_req(&w1);
    assert_false(w1.done);
    assert_int_equal(m0->in_flight, 1);

    /* Draining the bottom node waits for the request above it. */
    bdrv_drained_begin(m0);
    assert_true(w1.done);
    assert_int_equal(w1.ret, 0);
    assert_int_equal(m0->in_flight, 0);
    assert_int_equal(r0->in_flight, 0);
    assert_int_equal(r0->quiesce_counter, 1);

    /* New requests from the backend wait until the drain ends. */
    TestReq w2 = {blk, TEST_OP_WRITE, 512, 512, buf, 0, 0, false};
    start_req(&w2);
    int64_t until = clock_ns() + 80 * 1000 * 1000;
    while (clock_ns() < until) {
        aio_poll(false);
        g_usleep(1000);
    }
    assert_false(w2.done);
    assert_int_equal(md.writes, 1);
    bdrv_drained_end(m0);
    assert_int_equal(r0->quiesce_counter, 0);
    while (!w2.done) {
        aio_poll(true);
    }
    assert_int_equal(w2.ret, 0);
    assert_int_equal(md.writes, 2);
    blk_unref(blk);
}

typedef struct DrainCo {
    BlockDriverState *bs;
    TestReq *req;
    bool req_done_at_drain;
    bool done;
} DrainCo;

static void coroutine_fn drain_co(void *opaque)
{
    DrainCo *d = opaque;
    bdrv_drained_begin(d->bs);
    d->req_done_at_drain = d->req->done;
    bdrv_drained_end(d->bs);
    d->done = true;
}

static void test_drain_in_coroutine(void **state)
{
    md_reset(512);
    md.latency_ns = 20 * 1000 * 1000;
    BlockDriverState *m0 =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockBackend *blk = test_rw_blk(m0);
    uint8_t buf[512];
    TestReq r = {blk, TEST_OP_READ, 0, 512, buf, 0, 0, false};
    start_req(&r);
    DrainCo d = {.bs = m0, .req = &r};
    coroutine_enter(coroutine_create(drain_co, &d));
    while (!d.done) {
        aio_poll(true);
    }
    assert_true(d.req_done_at_drain);
    blk_unref(blk);
}

/* ---- block status (real null-co and raw) ---- */

typedef struct BsCo {
    BlockDriverState *bs;
    int64_t offset, bytes, pnum, map;
    BlockDriverState *file;
    int ret;
} BsCo;

static void coroutine_fn bs_co(void *opaque)
{
    BsCo *b = opaque;
    b->ret = bdrv_co_block_status_above(b->bs, NULL, b->offset, b->bytes,
                                        &b->pnum, &b->map, &b->file);
}

static void test_block_status(void **state)
{
    BlockDriverState *z = test_open_owned(
        "driver=null-co,node-name=z,size=1048576,read-zeroes=on");
    BsCo b = {.bs = z, .offset = 0, .bytes = 1 << 30};
    coroutine_run_sync(bs_co, &b);
    assert_int_equal(b.ret, BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID |
                                BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_EOF);
    assert_int_equal(b.pnum, 1048576);
    assert_ptr_equal(b.file, z);

    BlockDriverState *r =
        test_open_owned("driver=raw,node-name=r,file=z,offset=4096");
    b = (BsCo){.bs = r, .offset = 512, .bytes = 4096};
    coroutine_run_sync(bs_co, &b);
    assert_int_equal(b.ret, BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID |
                                BDRV_BLOCK_ALLOCATED);
    assert_int_equal(b.pnum, 4096);
    assert_int_equal(b.map, 4096 + 512);
    b = (BsCo){.bs = r, .offset = 1048576 - 4096 - 10, .bytes = 100};
    coroutine_run_sync(bs_co, &b);
    assert_int_equal(b.pnum, 10);
    assert_true(b.ret & BDRV_BLOCK_EOF);
    b = (BsCo){.bs = r, .offset = 1048576, .bytes = 100};
    coroutine_run_sync(bs_co, &b);
    assert_int_equal(b.pnum, 0);
    assert_int_equal(b.ret, BDRV_BLOCK_EOF);

    /* without read-zeroes nothing is allocated */
    BlockDriverState *n =
        test_open_owned("driver=null-co,node-name=n,size=65536");
    b = (BsCo){.bs = n, .offset = 0, .bytes = 65536};
    coroutine_run_sync(bs_co, &b);
    assert_int_equal(b.ret, BDRV_BLOCK_OFFSET_VALID | BDRV_BLOCK_EOF);

    /* reads of null-co without read-zeroes leave the buffer alone */
    BlockBackend *blk = test_rw_blk(n);
    uint8_t buf[512];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, 512, buf, 0), 0);
    assert_int_equal(buf[0], 0x5a);
    blk_unref(blk);
}

/* ---- backing chains: a copy-on-write test driver ---- */

#define COW_CLUSTER 4096

typedef struct CowState {
    uint8_t *buf;
    bool *alloc; /* per cluster */
} CowState;

static int coroutine_fn cow_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    CowState *s = bs->opaque;
    bs->total_bytes = opts->u.null_aio.size;
    s->buf = g_malloc0(bs->total_bytes);
    s->alloc = g_new0(bool, bs->total_bytes / COW_CLUSTER + 1);
    return 0;
}

static void cow_close(BlockDriverState *bs)
{
    CowState *s = bs->opaque;
    g_free(s->buf);
    g_free(s->alloc);
}

static int coroutine_fn cow_pwritev(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, IOVector *qiov,
                                    BdrvRequestFlags flags)
{
    CowState *s = bs->opaque;
    qiov_to_buf(qiov, 0, s->buf + offset, bytes);
    for (int64_t c = offset / COW_CLUSTER;
         c <= (offset + bytes - 1) / COW_CLUSTER; c++) {
        s->alloc[c] = true;
    }
    return 0;
}

static int coroutine_fn cow_status(BlockDriverState *bs, bool want_zero,
                                   int64_t offset, int64_t bytes, int64_t *pnum,
                                   int64_t *map, BlockDriverState **file)
{
    CowState *s = bs->opaque;
    bool a = s->alloc[offset / COW_CLUSTER];
    int64_t end = offset;
    while (end < offset + bytes && s->alloc[end / COW_CLUSTER] == a) {
        end = (end / COW_CLUSTER + 1) * COW_CLUSTER;
    }
    *pnum = MIN(end, offset + bytes) - offset;
    *map = offset;
    *file = bs;
    return a ? BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID : 0;
}

static const BlockDriver cowdrv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-aio",
    .driver = BLOCKDEV_DRIVER_NULL_AIO,
    .instance_size = sizeof(CowState),
    .supports_backing = true,
    .bdrv_open = cow_open,
    .bdrv_close = cow_close,
    .bdrv_co_pwritev = cow_pwritev,
    .bdrv_co_block_status = cow_status,
};

typedef struct BsaCo {
    BlockDriverState *bs, *base;
    int64_t offset, bytes, pnum;
    BlockDriverState *file;
    int ret;
} BsaCo;

static void coroutine_fn bsa_co(void *opaque)
{
    BsaCo *b = opaque;
    int64_t map;
    b->ret = bdrv_co_block_status_above(b->bs, b->base, b->offset, b->bytes,
                                        &b->pnum, &map, &b->file);
}

static int status_above(BlockDriverState *bs, BlockDriverState *base,
                        int64_t offset, int64_t bytes, int64_t *pnum,
                        BlockDriverState **file)
{
    BsaCo b = {bs, base, offset, bytes, 0, NULL, 0};
    coroutine_run_sync(bsa_co, &b);
    *pnum = b.pnum;
    if (file) {
        *file = b.file;
    }
    return b.ret;
}

static void test_backing_chain(void **state)
{
    bdrv_register_test_driver(&cowdrv);
    BlockDriverState *base =
        test_open_owned("driver=null-aio,node-name=base,size=32768");
    BlockDriverState *top =
        test_open_owned("driver=null-aio,node-name=top,size=65536");
    GError *err = NULL;
    assert_int_equal(bdrv_set_backing_hd(top, base, &err), 0);
    assert_ptr_equal(bdrv_backing_bs(top), base);
    assert_true(top->backing->role & BDRV_CHILD_COW);
    assert_ptr_equal(bdrv_filter_or_cow_child(top), top->backing);
    /* a cycle is refused */
    assert_true(bdrv_set_backing_hd(base, top, &err) < 0);
    assert_string_equal(err->message, "Making 'top' a backing child of "
                                      "'base' would create a cycle");
    g_clear_error(&err);

    BlockBackend *bt = test_rw_blk(top), *bb = test_rw_blk(base);
    uint8_t buf[4096];
    memset(buf, 1, sizeof(buf));
    assert_int_equal(do_req(bt, TEST_OP_WRITE, 0, 4096, buf, 0), 0);
    assert_int_equal(do_req(bb, TEST_OP_WRITE, 8192, 4096, buf, 0), 0);

    int64_t pnum;
    BlockDriverState *file;
    int ret = status_above(top, NULL, 0, 65536, &pnum, &file);
    assert_int_equal(ret, BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED |
                              BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 4096);
    assert_ptr_equal(file, top);
    /* unallocated everywhere: the bottom (no backing) reads zero */
    ret = status_above(top, NULL, 4096, 65536, &pnum, &file);
    assert_int_equal(ret, BDRV_BLOCK_ZERO);
    assert_int_equal(pnum, 4096);
    /* allocated in the backing file */
    ret = status_above(top, NULL, 8192, 4096, &pnum, &file);
    assert_int_equal(ret, BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED |
                              BDRV_BLOCK_OFFSET_VALID);
    assert_ptr_equal(file, base);
    /* past the shorter backing file's end: zeroes */
    ret = status_above(top, NULL, 32768, 65536, &pnum, &file);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_true(ret & BDRV_BLOCK_EOF);
    assert_int_equal(pnum, 32768);
    /* with base given, the backing layer is not consulted */
    ret = status_above(top, base, 8192, 4096, &pnum, &file);
    assert_false(ret & BDRV_BLOCK_ALLOCATED);
    /* query: the nested form shows the chain, the flat form not */
    BlockDeviceInfo *info = bdrv_block_device_info(top, false, &err);
    assert_non_null(info);
    assert_int_equal(info->backing_file_depth, 1);
    assert_true(info->image->has_backing_image);
    assert_string_equal(info->image->backing_image->format, "null-aio");
    qapi_free_BlockDeviceInfo(info);
    info = bdrv_block_device_info(top, true, &err);
    assert_int_equal(info->backing_file_depth, 0);
    assert_false(info->image->has_backing_image);
    qapi_free_BlockDeviceInfo(info);

    /* a job holding the edge blocks changing it */
    bdrv_child_graph_mod_inc(top->backing, "stream");
    assert_true(bdrv_set_backing_hd(top, NULL, &err) < 0);
    assert_string_equal(err->message, "Node 'base' is busy: block device is "
                                      "in use by block job: stream");
    g_clear_error(&err);
    assert_ptr_equal(bdrv_backing_bs(top), base);
    bdrv_child_graph_mod_dec(top->backing);
    assert_int_equal(bdrv_set_backing_hd(top, NULL, &err), 0);
    assert_null(top->backing);
    ret = status_above(top, NULL, 8192, 4096, &pnum, &file);
    assert_int_equal(ret, BDRV_BLOCK_ZERO);
    blk_unref(bt);
    blk_unref(bb);
    bdrv_unregister_test_driver(&cowdrv);
}

/* bdrv_replace_node(from, to) leaves a parent edge of a node below `to`
 * where it is, as QEMU's auto-skip: moving it would make a cycle (a
 * drive-backup sync=none target whose backing node is the source, below
 * the filter that takes the source's place). */
static void test_replace_node_skips_cycle(void **state)
{
    bdrv_register_test_driver(&cowdrv);
    BlockDriverState *src =
        test_open_owned("driver=null-aio,node-name=src,size=65536");
    BlockDriverState *tgt =
        test_open_owned("driver=null-aio,node-name=tgt,size=65536");
    BlockDriverState *top =
        test_open_owned("driver=null-aio,node-name=top,size=65536");
    GError *err = NULL;
    assert_int_equal(bdrv_set_backing_hd(tgt, src, &err), 0);
    assert_int_equal(bdrv_set_backing_hd(top, tgt, &err), 0);
    BlockBackend *blk = test_rw_blk(src);
    assert_int_equal(bdrv_replace_node(src, top, &err), 0);
    assert_null(err);
    /* the user moved, the backing edge below `top` stayed */
    assert_ptr_equal(blk_bs(blk), top);
    assert_ptr_equal(bdrv_backing_bs(tgt), src);
    assert_ptr_equal(bdrv_backing_bs(top), tgt);
    blk_unref(blk);
    assert_int_equal(bdrv_set_backing_hd(top, NULL, &err), 0);
    assert_int_equal(bdrv_set_backing_hd(tgt, NULL, &err), 0);
    bdrv_unregister_test_driver(&cowdrv);
}

static void test_disable_queuing(void **state)
{
    md_reset(512);
    BlockDriverState *m0 =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockBackend *blk = test_rw_blk(m0);
    blk_set_disable_request_queuing(blk, true);
    uint8_t buf[512] = {3};
    bdrv_drained_begin(m0);
    /* a job's own I/O goes through while drained */
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, 512, buf, 0), 0);
    assert_int_equal(md_mem[0], 3);
    bdrv_drained_end(m0);
    blk_unref(blk);
}

/* ---- block_resize and queries through the QMP handlers ---- */

typedef struct ResizeCo {
    const char *node;
    int64_t size;
    GError *err;
} ResizeCo;

static void coroutine_fn resize_co(void *opaque)
{
    ResizeCo *r = opaque;
    q_obj_block_resize_arg arg = {0};
    arg.has_node_name = true;
    arg.node_name = (char *)r->node;
    arg.size = r->size;
    qmp_block_resize(&arg, &r->err);
}

static char *resize(const char *node, int64_t size)
{
    ResizeCo r = {node, size, NULL};
    coroutine_run_sync(resize_co, &r);
    char *msg = r.err ? g_strdup(r.err->message) : NULL;
    g_clear_error(&r.err);
    return msg;
}

static int resized_calls;
static void dev_resize(void *opaque)
{
    resized_calls++;
}

static void test_resize(void **state)
{
    md_reset(512);
    /* a fixed window: cannot resize, and forbids resizing its file */
    test_open_owned("driver=null-aio,node-name=m1,size=65536");
    test_open_owned("driver=raw,node-name=r1,file=m1,size=4096");
    char *msg = resize("r1", 8192);
    assert_string_equal(msg, "Cannot resize fixed-size raw disks");
    g_free(msg);
    msg = resize("m1", 8192);
    assert_string_equal(msg, "Permission conflict on node 'm1': permissions "
                             "'resize' are both required by an unnamed block "
                             "device (uses node 'm1' as 'root' child) and "
                             "unshared by node 'r1' (uses node 'm1' as 'file' "
                             "child).");
    g_free(msg);

    BlockDriverState *m0 =
        test_open_owned("driver=null-aio,node-name=m0,size=65536");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=m0");
    BlockBackend *reader = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    static const BlockDevOps ops = {.resize = dev_resize};
    blk_set_dev_ops(reader, &ops, NULL);
    assert_int_equal(blk_insert_bs(reader, r0, NULL), 0);
    msg = resize("r0", -1);
    assert_string_equal(msg, "Parameter 'size' expects a >0 size");
    g_free(msg);
    msg = resize("nope", 1);
    assert_string_equal(msg, "Cannot find device='' nor node-name='nope'");
    g_free(msg);

    resized_calls = 0;
    assert_null(resize("r0", 131072));
    assert_int_equal(bdrv_getlength(r0), 131072);
    assert_int_equal(bdrv_getlength(m0), 131072);
    assert_int_equal(blk_getlength(reader), 131072);
    assert_int_equal(resized_calls, 1);
    assert_null(resize("r0", 4096)); /* shrink */
    assert_int_equal(bdrv_getlength(r0), 4096);
    assert_int_equal(resized_calls, 2);
    /* resizing the file directly shows through raw, as in QEMU */
    assert_null(resize("m0", 8192));
    assert_int_equal(bdrv_getlength(m0), 8192);
    assert_int_equal(bdrv_getlength(r0), 8192);
    assert_int_equal(resized_calls, 3);
    blk_unref(reader);

    test_open_owned("driver=null-co,node-name=ro,read-only=on");
    msg = resize("ro", 4096);
    assert_string_equal(msg, "Image is read-only");
    g_free(msg);
    test_open_owned("driver=null-co,node-name=nc");
    msg = resize("nc", 4096);
    assert_string_equal(msg, "Image format driver does not support resize");
    g_free(msg);
}

typedef struct QueryCo {
    bool flat;
    BlockDeviceInfoList *list;
    GError *err;
} QueryCo;

static void coroutine_fn query_co(void *opaque)
{
    QueryCo *q = opaque;
    q_obj_query_named_block_nodes_arg arg = {.has_flat = true, .flat = q->flat};
    q->list = qmp_query_named_block_nodes(&arg, &q->err);
}

/* qemu-storage-daemon 7.2's answer for these nodes, field by field. */
static const char *expected_json =
    "[{\"iops_rd\": 0, \"detect_zeroes\": \"off\", \"image\": "
    "{\"virtual-size\": 1024, \"filename\": \"json:{\\\"offset\\\": 512, "
    "\\\"driver\\\": \\\"raw\\\", \\\"size\\\": 1024, \\\"file\\\": "
    "{\\\"driver\\\": \\\"null-co\\\"}}\", \"format\": \"raw\", "
    "\"actual-size\": 0}, \"iops_wr\": 0, \"ro\": false, \"node-name\": "
    "\"fmt2\", \"backing_file_depth\": 0, \"drv\": \"raw\", \"iops\": 0, "
    "\"bps_wr\": 0, \"write_threshold\": 0, \"encrypted\": false, \"bps\": "
    "0, \"bps_rd\": 0, \"cache\": {\"no-flush\": false, \"direct\": false, "
    "\"writeback\": true}, \"file\": \"json:{\\\"offset\\\": 512, "
    "\\\"driver\\\": \\\"raw\\\", \\\"size\\\": 1024, \\\"file\\\": "
    "{\\\"driver\\\": \\\"null-co\\\"}}\"},"
    " {\"iops_rd\": 0, \"detect_zeroes\": \"on\", \"image\": "
    "{\"virtual-size\": 4096, \"filename\": \"json:{\\\"read-zeroes\\\": "
    "true, \\\"driver\\\": \\\"null-co\\\", \\\"size\\\": 4096}\", "
    "\"format\": \"null-co\", \"actual-size\": 0}, \"iops_wr\": 0, \"ro\": "
    "true, \"node-name\": \"n2\", \"backing_file_depth\": 0, \"drv\": "
    "\"null-co\", \"iops\": 0, \"bps_wr\": 0, \"write_threshold\": 0, "
    "\"encrypted\": false, \"bps\": 0, \"bps_rd\": 0, \"cache\": "
    "{\"no-flush\": true, \"direct\": true, \"writeback\": true}, \"file\": "
    "\"json:{\\\"read-zeroes\\\": true, \\\"driver\\\": \\\"null-co\\\", "
    "\\\"size\\\": 4096}\"},"
    " {\"iops_rd\": 0, \"detect_zeroes\": \"off\", \"image\": "
    "{\"virtual-size\": 1073741824, \"filename\": \"null-co://\", "
    "\"format\": \"null-co\", \"actual-size\": 0}, \"iops_wr\": 0, \"ro\": "
    "false, \"node-name\": \"n0\", \"backing_file_depth\": 0, \"drv\": "
    "\"null-co\", \"iops\": 0, \"bps_wr\": 0, \"write_threshold\": 0, "
    "\"encrypted\": false, \"bps\": 0, \"bps_rd\": 0, \"cache\": "
    "{\"no-flush\": false, \"direct\": false, \"writeback\": true}, "
    "\"file\": \"null-co://\"}]";

static void test_query(void **state)
{
    test_open_owned("driver=null-co,node-name=n0,latency-ns=5");
    test_open_owned("driver=null-co,node-name=n2,read-only=on,size=4096,"
                    "read-zeroes=on,cache.direct=on,cache.no-flush=on,"
                    "detect-zeroes=on");
    test_open_owned("driver=raw,node-name=fmt2,offset=512,size=1024,"
                    "file.driver=null-co,file.node-name=inner");
    BlockDriverState *inner = bdrv_find_node("inner");
    /* drop the inline child from the listing by comparing without it */
    for (int flat = 0; flat <= 1; flat++) {
        QueryCo q = {.flat = flat};
        coroutine_run_sync(query_co, &q);
        assert_null(q.err);
        JsonNode *got = qapi_BlockDeviceInfoList_to_json(q.list);
        JsonArray *ga = json_node_get_array(got);
        /* newest first: fmt2, inner (child registers before parent, so it
         * comes after it in the reversed list), n2, n0 */
        assert_int_equal(json_array_get_length(ga), 4);
        JsonObject *o1 = json_array_get_object_element(ga, 1);
        assert_string_equal(json_object_get_string_member(o1, "node-name"),
                            inner->node_name);
        json_array_remove_element(ga, 1);
        JsonNode *want = json_from_string(expected_json, NULL);
        if (!json_node_equal(got, want)) {
            g_autofree char *s = json_to_string(got, FALSE);
            fail_msg("got %s", s);
        }
        json_node_unref(want);
        json_node_unref(got);
        qapi_free_BlockDeviceInfoList(q.list);
    }
    assert_null(qmp_query_block(NULL));
}

int main(void)
{
    test_aio_init();
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_memdrv, teardown)
    const struct CMUnitTest tests[] = {
        T(test_rmw_512),
        T(test_rmw_4096),
        T(test_rmw_through_raw_window),
        T(test_read_past_end_zero),
        T(test_rmw_file_direct),
        T(test_concurrent_rmw),
        T(test_write_zeroes_fallback),
        T(test_detect_zeroes),
        T(test_max_transfer),
        T(test_flush),
        T(test_cache_no_flush),
        T(test_close_all),
        T(test_inherited_options),
        T(test_request_perms),
        T(test_drain),
        T(test_drain_in_coroutine),
        T(test_block_status),
        T(test_backing_chain),
        T(test_replace_node_skips_cycle),
        T(test_disable_queuing),
        T(test_resize),
        T(test_query),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
