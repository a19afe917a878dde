/*
 * Tests for the `file` protocol driver through the real block layer:
 * I/O (io_uring and aio=threads, O_DIRECT), zeroes and discard, block
 * status over holes, truncate and preallocation, creation, open errors,
 * and the OFD locks, also against qemu-io when it is installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <glib.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/drivers/file-posix.h"
#include "tests/unit/test-helpers.h"
#include "util/aio.h"

static char *tmpdir;
static char *img;

/* ---- helpers ---- */

/* Open, or NULL with *errp set. */
static BlockDriverState *try_open(GError **errp, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
static BlockDriverState *try_open(GError **errp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *opts = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    BlockDriverState *bs = test_try_open(opts, errp);
    g_free(opts);
    if (bs) {
        bdrv_set_monitor_owned(bs); /* bdrv_close_all() frees it */
    }
    return bs;
}

static BlockDriverState *open_file(const char *extra)
{
    GError *err = NULL;
    BlockDriverState *bs = try_open(&err, "driver=file,filename=%s%s%s", img,
                                    *extra ? "," : "", extra);
    if (!bs) {
        fail_msg("open: %s", err->message);
    }
    return bs;
}

static int do_req(BlockBackend *blk, TestOp op, int64_t offset, int64_t bytes,
                  void *buf, BdrvRequestFlags flags)
{
    TestReq r = {.blk = blk,
                 .op = op,
                 .offset = offset,
                 .bytes = bytes,
                 .buf = buf,
                 .flags = flags};
    return test_req_run(&r);
}

static int do_status(BlockBackend *blk, int64_t offset, int64_t bytes,
                     int64_t *pnum)
{
    TestReq r = {.blk = blk,
                 .op = TEST_OP_BDRV_STATUS,
                 .offset = offset,
                 .bytes = bytes};
    test_req_run(&r);
    *pnum = r.pnum;
    return r.ret;
}

static int do_truncate(BlockBackend *blk, int64_t size, PreallocMode p,
                       GError **errp)
{
    TestReq r = {.blk = blk,
                 .op = TEST_OP_TRUNCATE,
                 .offset = size,
                 .exact = true,
                 .prealloc = p};
    test_req_run(&r);
    if (r.err) {
        g_propagate_error(errp, r.err);
    }
    return r.ret;
}

static void make_file(int64_t size)
{
    int fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, size), 0);
    close(fd);
}

static void pattern(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(seed + i * 7 + (i >> 8));
    }
}

static int64_t file_size(void)
{
    struct stat st;
    assert_int_equal(stat(img, &st), 0);
    return st.st_size;
}

static int64_t file_blocks(void)
{
    struct stat st;
    assert_int_equal(stat(img, &st), 0);
    return st.st_blocks * 512;
}

static int teardown(void **state)
{
    bdrv_close_all();
    unlink(img);
    return 0;
}

/* ---- I/O ---- */

static void rw_test(const char *extra)
{
    enum { SZ = 1 << 20 };
    make_file(SZ);
    BlockDriverState *bs = open_file(extra);
    BlockBackend *blk = test_rw_resize_blk(bs);
    uint8_t *w = blk_memalign(4096, SZ), *r = blk_memalign(4096, SZ);

    assert_int_equal(blk_getlength(blk), SZ);
    pattern(w, SZ, 3);
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, SZ, w, 0), 0);
    /* Unaligned, in the middle (RMW under O_DIRECT). */
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 1000, 3333, w + 77, 0), 0);
    memmove(w + 1000, w + 77, 3333);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);
    memset(r, 0, SZ);
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, SZ, r, 0), 0);
    assert_memory_equal(r, w, SZ);

    /* The bytes are really in the file. */
    int fd = open(img, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, r, SZ, 0), SZ);
    close(fd);
    assert_memory_equal(r, w, SZ);

    blk_unref(blk);
    blk_vfree(w);
    blk_vfree(r);
}

static void test_rw_io_uring(void **state)
{
    rw_test("");
}

static void test_rw_threads(void **state)
{
    rw_test("aio=threads");
}

static void test_rw_direct(void **state)
{
    rw_test("cache.direct=on");
    make_file(4096);
    BlockDriverState *bs = open_file("cache.direct=on,aio=native");
    assert_true(bs->bl.request_alignment >= 512);
    assert_true(bs->bl.min_mem_alignment >= 512);

    /* A file ending off the alignment: the tail reads as zeroes. */
    int fd = open(img, O_WRONLY | O_TRUNC);
    uint8_t data[1000], r[2048];
    pattern(data, sizeof(data), 11);
    assert_int_equal(write(fd, data, sizeof(data)), sizeof(data));
    close(fd);
    bs = open_file("cache.direct=on,node-name=unaligned");
    BlockBackend *blk = test_rw_resize_blk(bs);
    int64_t len = blk_getlength(blk);
    assert_true(len >= 1000 && len <= 4096);
    memset(r, 0xcc, sizeof(r));
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, len, r, 0), 0);
    assert_memory_equal(r, data, sizeof(data));
    assert_true(buffer_is_zero(r + 1000, len - 1000));
    /* Unaligned request over the end through the bounce path. */
    memset(r, 0xcc, sizeof(r));
    assert_int_equal(do_req(blk, TEST_OP_READ, 999, len - 999, r, 0), 0);
    assert_int_equal(r[0], data[999]);
    assert_true(buffer_is_zero(r + 1, len - 1000));
    blk_unref(blk);
}

static void test_rw_readonly(void **state)
{
    make_file(65536);
    BlockDriverState *bs = open_file("read-only=on");
    GError *err = NULL;
    BlockBackend *blk =
        test_new_blk(bs, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, &err);
    assert_non_null(blk);
    uint8_t buf[512];
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, 512, buf, 0), 0);
    assert_true(buffer_is_zero(buf, 512));
    blk_unref(blk);
    /* Writing is not possible at all. */
    blk = test_new_blk(bs, BLK_PERM_WRITE, BLK_PERM_ALL, &err);
    assert_null(blk);
    assert_non_null(err);
    g_clear_error(&err);
}

/* Vectors longer than IOV_MAX go down in several system calls. */
typedef struct VecReq {
    BlockBackend *blk;
    IOVector *q;
    bool write;
    int ret;
} VecReq;

static void coroutine_fn vec_co(void *opaque)
{
    VecReq *v = opaque;
    v->ret = v->write ? blk_co_pwritev(v->blk, 0, v->q->size, v->q, 0)
                      : blk_co_preadv(v->blk, 0, v->q->size, v->q, 0);
}

static void test_long_vector(void **state)
{
    enum { N = 2500, PIECE = 100 };
    make_file(N * PIECE);
    BlockDriverState *bs = open_file("");
    BlockBackend *blk = test_rw_resize_blk(bs);
    /* Pieces with gaps between them so they cannot merge. */
    uint8_t *wmem = g_malloc(N * (PIECE + 1));
    uint8_t *rmem = g_malloc0(N * (PIECE + 1));
    IOVector wq, rq;
    qiov_init(&wq, N);
    qiov_init(&rq, N);
    pattern(wmem, N * (PIECE + 1), 4);
    for (int i = 0; i < N; i++) {
        qiov_add(&wq, wmem + i * (PIECE + 1), PIECE);
        qiov_add(&rq, rmem + i * (PIECE + 1), PIECE);
    }
    assert_int_equal(wq.niov, N);
    VecReq v = { blk, &wq, true, -1 };
    coroutine_run_sync(vec_co, &v);
    assert_int_equal(v.ret, 0);
    v = (VecReq){ blk, &rq, false, -1 };
    coroutine_run_sync(vec_co, &v);
    assert_int_equal(v.ret, 0);
    for (int i = 0; i < N; i++) {
        assert_memory_equal(rmem + i * (PIECE + 1), wmem + i * (PIECE + 1),
                            PIECE);
    }
    qiov_destroy(&wq);
    qiov_destroy(&rq);
    g_free(wmem);
    g_free(rmem);
    blk_unref(blk);
}

/* A format node writing past the protocol node's end grows it. */
static void test_write_extends(void **state)
{
    make_file(4096);
    BlockDriverState *bs = open_file("");
    BlockBackend *blk = test_rw_resize_blk(bs);
    uint8_t buf[8192];
    pattern(buf, sizeof(buf), 9);
    /* As a parent node does, through the edge (a BlockBackend refuses
     * requests past the end). */
    assert_int_equal(do_req(blk, TEST_OP_CHILD_WRITE, 8192, 8192, buf, 0), 0);
    assert_int_equal(file_size(), 16384);
    assert_int_equal(bs->total_bytes, 16384);
    uint8_t r[8192];
    assert_int_equal(do_req(blk, TEST_OP_READ, 8192, 8192, r, 0), 0);
    assert_memory_equal(r, buf, sizeof(buf));
    blk_unref(blk);
}

/*
 * Under O_DIRECT a write past the end grows the file ahead of the data
 * (ext4 serialises writes that extend the file); the node's length is the
 * data's end, and closing cuts the file back to it.
 */
static void test_write_extends_direct(void **state)
{
    make_file(4096);
    BlockDriverState *bs = open_file("cache.direct=on");
    BlockBackend *blk = test_rw_resize_blk(bs);
    uint8_t buf[8192], r[8192];
    pattern(buf, sizeof(buf), 5);
    assert_int_equal(do_req(blk, TEST_OP_CHILD_WRITE, 8192, 8192, buf, 0), 0);
    assert_int_equal(bs->total_bytes, 16384);
    assert_int_equal(blk_getlength(blk), 16384);
    assert_true(file_size() >= 16384);
    assert_int_equal(do_req(blk, TEST_OP_READ, 8192, 8192, r, 0), 0);
    assert_memory_equal(r, buf, sizeof(buf));
    /* A resize starts from the data's end, not the space ahead of it. */
    assert_int_equal(do_truncate(blk, 24576, PREALLOC_MODE_FALLOC, NULL), 0);
    assert_int_equal(file_size(), 24576);
    assert_int_equal(do_req(blk, TEST_OP_CHILD_WRITE, 24576, 8192, buf, 0),
                     0);
    assert_int_equal(bs->total_bytes, 32768);
    blk_unref(blk);
    bdrv_close_all();
    assert_int_equal(file_size(), 32768);
}

/* ---- zeroes, discard, block status ---- */

static void test_zeroes_and_status(void **state)
{
    enum { SZ = 4 << 20, MB = 1 << 20 };
    make_file(0);
    BlockDriverState *bs = open_file("discard=unmap");
    BlockBackend *blk = test_rw_resize_blk(bs);
    uint8_t *buf = g_malloc(SZ);
    int64_t pnum;
    int ret;

    pattern(buf, SZ, 1);
    assert_int_equal(do_truncate(blk, SZ, PREALLOC_MODE_OFF, NULL), 0);
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, SZ, buf, 0), 0);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL, 0), 0);

    /* Zero without unmap: allocated, reads zero. */
    assert_int_equal(do_req(blk, TEST_OP_ZERO, MB, MB, NULL, 0), 0);
    /* Zero with unmap: a hole. */
    int64_t before = file_blocks();
    assert_int_equal(
        do_req(blk, TEST_OP_ZERO, 2 * MB, MB, NULL, BDRV_REQ_MAY_UNMAP), 0);
    assert_true(file_blocks() <= before - MB);
    assert_int_equal(file_size(), SZ);

    uint8_t *r = g_malloc(SZ);
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, SZ, r, 0), 0);
    assert_memory_equal(r, buf, MB);
    assert_true(buffer_is_zero(r + MB, 2 * MB));
    assert_memory_equal(r + 3 * MB, buf + 3 * MB, MB);

    /* Status: data, then the hole reads as zero, then data. */
    ret = do_status(blk, 0, SZ, &pnum);
    assert_true(ret >= 0);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_true(ret & BDRV_BLOCK_ALLOCATED);
    assert_true(pnum >= MB && pnum <= 2 * MB);
    ret = do_status(blk, 2 * MB, SZ - 2 * MB, &pnum);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_false(ret & BDRV_BLOCK_DATA);
    assert_true(ret & BDRV_BLOCK_ALLOCATED);
    assert_int_equal(pnum, MB);
    ret = do_status(blk, 3 * MB, MB, &pnum);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_int_equal(pnum, MB);

    /* Discard punches a hole too. */
    assert_int_equal(do_req(blk, TEST_OP_DISCARD, 0, MB, NULL, 0), 0);
    ret = do_status(blk, 0, MB, &pnum);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_int_equal(pnum, MB);

    /* Zeroes past the end grow the file. */
    assert_int_equal(
        do_req(blk, TEST_OP_CHILD_ZERO, SZ, MB, NULL, BDRV_REQ_MAY_UNMAP), 0);
    assert_int_equal(file_size(), SZ + MB);
    assert_int_equal(blk_getlength(blk), SZ + MB);

    blk_unref(blk);
    g_free(buf);
    g_free(r);
}

static void test_discard_ignored(void **state)
{
    enum { MB = 1 << 20 };
    make_file(MB);
    BlockDriverState *bs = open_file(""); /* discard=ignore */
    BlockBackend *blk = test_rw_resize_blk(bs);
    uint8_t *buf = g_malloc(MB);
    pattern(buf, MB, 5);
    assert_int_equal(do_req(blk, TEST_OP_WRITE, 0, MB, buf, 0), 0);
    assert_int_equal(do_req(blk, TEST_OP_DISCARD, 0, MB, NULL, 0), 0);
    uint8_t *r = g_malloc(MB);
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, MB, r, 0), 0);
    assert_memory_equal(r, buf, MB);
    /* Without discard=unmap, MAY_UNMAP zeroes stay allocated. */
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 0, MB, NULL, BDRV_REQ_MAY_UNMAP),
                     0);
    assert_true(file_blocks() >= MB);
    assert_int_equal(do_req(blk, TEST_OP_READ, 0, MB, r, 0), 0);
    assert_true(buffer_is_zero(r, MB));
    blk_unref(blk);
    g_free(buf);
    g_free(r);
}

/* ---- truncate, preallocation, creation ---- */

static void test_truncate(void **state)
{
    enum { MB = 1 << 20 };
    make_file(MB);
    BlockDriverState *bs = open_file("");
    BlockBackend *blk = test_rw_resize_blk(bs);
    GError *err = NULL;

    assert_int_equal(do_truncate(blk, 2 * MB, PREALLOC_MODE_FALLOC, NULL), 0);
    assert_int_equal(file_size(), 2 * MB);
    assert_true(file_blocks() >= MB);
    assert_int_equal(do_truncate(blk, 3 * MB, PREALLOC_MODE_FULL, NULL), 0);
    assert_int_equal(file_size(), 3 * MB);
    assert_true(file_blocks() >= 2 * MB);
    assert_int_equal(blk_getlength(blk), 3 * MB);

    assert_true(do_truncate(blk, MB, PREALLOC_MODE_FALLOC, &err) < 0);
    assert_string_equal(err->message,
                        "Cannot use preallocation for shrinking files");
    g_clear_error(&err);
    assert_true(do_truncate(blk, 4 * MB, PREALLOC_MODE_METADATA, &err) < 0);
    assert_string_equal(err->message,
                        "Unsupported preallocation mode: metadata");
    g_clear_error(&err);

    assert_int_equal(do_truncate(blk, 1000, PREALLOC_MODE_OFF, NULL), 0);
    assert_int_equal(file_size(), 1000);
    assert_int_equal(bs->total_bytes, 1000);
    blk_unref(blk);

    /* Full preallocation under O_DIRECT from and to unaligned sizes. */
    bs = open_file("cache.direct=on,node-name=direct");
    blk = test_rw_resize_blk(bs);
    assert_int_equal(do_truncate(blk, 3 * MB + 1000, PREALLOC_MODE_FULL,
                                 NULL), 0);
    assert_int_equal(file_size(), 3 * MB + 1000);
    assert_true(file_blocks() >= 3 * MB);
    blk_unref(blk);
}

static void test_create(void **state)
{
    GError *err = NULL;

    assert_int_equal(file_create(img, 1 << 20, PREALLOC_MODE_OFF, &err), 0);
    assert_int_equal(file_size(), 1 << 20);
    assert_int_equal(file_blocks(), 0);
    assert_int_equal(file_create(img, 1 << 20, PREALLOC_MODE_FULL, &err), 0);
    assert_true(file_blocks() >= 1 << 20);
    /* Re-creating truncates first. */
    assert_int_equal(file_create(img, 4096, PREALLOC_MODE_FALLOC, &err), 0);
    assert_int_equal(file_size(), 4096);
    assert_true(file_create(img, 4096, PREALLOC_MODE_METADATA, &err) < 0);
    assert_string_equal(err->message,
                        "Unsupported preallocation mode: metadata");
    g_clear_error(&err);
    char *bad = g_strdup_printf("%s/no/such/dir", tmpdir);
    assert_true(file_create(bad, 4096, PREALLOC_MODE_OFF, &err) < 0);
    char *want = g_strdup_printf("Could not create '%s': No such file or "
                                 "directory", bad);
    assert_string_equal(err->message, want);
    g_free(want);
    g_clear_error(&err);
    g_free(bad);

    /* An image in use by a writer that refuses resizes (as formats do) is
     * not destroyed. */
    make_file(8192);
    BlockDriverState *bs = open_file("");
    BlockBackend *blk =
        test_new_blk(bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                     BLK_PERM_ALL & ~BLK_PERM_RESIZE, &err);
    assert_non_null(blk);
    assert_true(file_create(img, 4096, PREALLOC_MODE_OFF, &err) < 0);
    assert_string_equal(err->message, "Failed to get \"resize\" lock");
    g_clear_error(&err);
    assert_int_equal(file_size(), 8192);
    blk_unref(blk);
}

static void test_open_errors(void **state)
{
    GError *err = NULL;
    char *missing = g_strdup_printf("%s/missing", tmpdir);

    assert_null(try_open(&err, "driver=file,filename=%s", missing));
    char *want = g_strdup_printf("Could not open '%s': No such file or "
                                 "directory", missing);
    assert_string_equal(err->message, want);
    g_clear_error(&err);
    g_free(want);

    assert_null(try_open(&err, "driver=file,filename=%s", tmpdir));
    want = g_strdup_printf("Could not open '%s': Is a directory", tmpdir);
    assert_string_equal(err->message, want);
    g_clear_error(&err);
    g_free(want);

    assert_null(try_open(&err, "driver=file,filename=/dev/null"));
    assert_string_equal(err->message, "'file' driver requires '/dev/null' "
                                      "to be a regular file");
    g_clear_error(&err);

    make_file(4096);
    assert_null(try_open(&err, "driver=file,filename=%s,aio=native", img));
    assert_string_equal(err->message,
                        "aio=native was specified, but it requires "
                        "cache.direct=on, which was not specified.");
    g_clear_error(&err);
    assert_null(try_open(&err, "driver=file,filename=%s,pr-manager=x", img));
    assert_string_equal(err->message,
                        "No persistent reservation manager with id 'x'");
    g_clear_error(&err);
    g_free(missing);
}

/* ---- locks ---- */

/* Whether another description holds a lock on `byte` of img. */
static bool byte_locked(int byte)
{
    int fd = open(img, O_RDONLY);
    assert_true(fd >= 0);
    struct flock fl = { .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
                        .l_type = F_WRLCK };
    assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
    close(fd);
    return fl.l_type != F_UNLCK;
}

static void test_lock_bytes(void **state)
{
    make_file(65536);
    BlockDriverState *bs = open_file("");
    GError *err = NULL;

    /* No users: no locks. */
    for (int b = 100; b < 104; b++) {
        assert_false(byte_locked(b));
        assert_false(byte_locked(b + 100));
    }
    /* read+write, sharing everything but resize. */
    BlockBackend *blk =
        test_new_blk(bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                     BLK_PERM_ALL & ~BLK_PERM_RESIZE, &err);
    assert_non_null(blk);
    assert_true(byte_locked(100));
    assert_true(byte_locked(101));
    assert_false(byte_locked(102));
    assert_false(byte_locked(103));
    assert_false(byte_locked(200));
    assert_false(byte_locked(201));
    assert_false(byte_locked(202));
    assert_true(byte_locked(203));

    /* Relaxing drops them. */
    assert_int_equal(blk_set_perm(blk, BLK_PERM_CONSISTENT_READ,
                                  BLK_PERM_ALL, &err), 0);
    assert_true(byte_locked(100));
    assert_false(byte_locked(101));
    assert_false(byte_locked(203));

    /* A second node on the same file is another description: a writer
     * that does not share writes conflicts with nothing yet... */
    BlockDriverState *bs2 = try_open(&err, "driver=file,filename=%s,"
                                     "node-name=other", img);
    assert_non_null(bs2);
    BlockBackend *blk2 =
        test_new_blk(bs2, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                     BLK_PERM_CONSISTENT_READ, &err);
    assert_non_null(blk2);
    /* ...but now the first may not take write back. */
    assert_true(blk_set_perm(blk, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                             BLK_PERM_ALL, &err) < 0);
    assert_string_equal(err->message, "Failed to get \"write\" lock");
    g_clear_error(&err);
    /* The failed attempt left the old locks as they were. */
    assert_true(byte_locked(100));
    blk_unref(blk2);
    assert_false(byte_locked(201));

    /* Refusing to share what someone holds. */
    blk2 = test_new_blk(bs2, BLK_PERM_CONSISTENT_READ,
                        BLK_PERM_ALL & ~BLK_PERM_CONSISTENT_READ, &err);
    assert_null(blk2);
    assert_string_equal(err->message,
                        "Failed to get shared \"consistent read\" lock");
    g_clear_error(&err);
    assert_false(byte_locked(200));

    /* locking=off takes and checks nothing. */
    BlockDriverState *bs3 = try_open(&err, "driver=file,filename=%s,"
                                     "node-name=nolock,locking=off", img);
    assert_non_null(bs3);
    blk_unref(blk);
    BlockBackend *blk3 = test_new_blk(bs3, BLK_PERM_ALL, 0, &err);
    assert_non_null(blk3);
    for (int b = 100; b < 104; b++) {
        assert_false(byte_locked(b));
        assert_false(byte_locked(b + 100));
    }
    blk_unref(blk3);
}

/* Run qemu-io on img; its exit status and stderr. */
static int run_qemu_io(const char *cmd, bool readonly, char **err_out)
{
    const char *argv[] = { "qemu-io", "-f", "raw", "-c", cmd,
                           readonly ? "-r" : img, readonly ? img : NULL,
                           NULL };
    int status = -1;
    GError *err = NULL;
    char *out = NULL;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, &out, err_out, &status, &err)) {
        g_error_free(err);
        return -1;
    }
    g_free(out);
    return status;
}

/* qemu-storage-daemon exporting img writable through a raw node (which
 * refuses to share resize on its file child). */
static GPid start_qsd(const char *sock, int *stderr_fd)
{
    char *bd1 = g_strdup_printf("driver=file,node-name=f,filename=%s", img);
    char *nbd = g_strdup_printf("addr.type=unix,addr.path=%s", sock);
    const char *argv[] = {
        "qemu-storage-daemon", "--blockdev", bd1,
        "--blockdev", "driver=raw,node-name=r,file=f",
        "--nbd-server", nbd,
        "--export", "type=nbd,id=e,node-name=r,writable=on", NULL,
    };
    GPid pid = 0;
    GError *err = NULL;
    if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                  G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                                  NULL, NULL, &pid, NULL, NULL, stderr_fd,
                                  &err)) {
        g_error_free(err);
        pid = 0;
    }
    g_free(bd1);
    g_free(nbd);
    return pid;
}

static void stop_qsd(GPid pid)
{
    int status;
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    g_spawn_close_pid(pid);
}

static void test_lock_vs_qsd(void **state)
{
    char *qsd = g_find_program_in_path("qemu-storage-daemon");
    if (!qsd) {
        skip();
    }
    g_free(qsd);
    make_file(65536);
    char *sock = g_strdup_printf("%s/qsd.sock", tmpdir);
    int errfd = -1;
    GError *err = NULL;

    GPid pid = start_qsd(sock, &errfd);
    assert_true(pid > 0);
    /* Up when its NBD socket exists. */
    for (int i = 0; i < 500 && !g_file_test(sock, G_FILE_TEST_EXISTS); i++) {
        g_usleep(10 * 1000);
    }
    assert_true(g_file_test(sock, G_FILE_TEST_EXISTS));

    BlockDriverState *bs = open_file("");
    /* A format-like user wanting resize: qsd refuses to share it. */
    BlockBackend *blk = test_new_blk(
        bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE,
        BLK_PERM_ALL & ~BLK_PERM_RESIZE, &err);
    assert_null(blk);
    assert_string_equal(err->message, "Failed to get \"resize\" lock");
    g_clear_error(&err);
    /* Refusing to share writes while qsd writes. */
    blk = test_new_blk(bs, BLK_PERM_CONSISTENT_READ, BLK_PERM_CONSISTENT_READ,
                       &err);
    assert_null(blk);
    assert_string_equal(err->message, "Failed to get shared \"write\" lock");
    g_clear_error(&err);
    /* A writer that shares like qsd's export does is fine. */
    blk = test_new_blk(bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                       BLK_PERM_ALL, &err);
    assert_non_null(blk);
    blk_unref(blk);
    stop_qsd(pid);
    close(errfd);
    unlink(sock);

    /* The other way round: we hold writes exclusively, qsd cannot start. */
    blk = test_new_blk(bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                       BLK_PERM_CONSISTENT_READ, &err);
    assert_non_null(blk);
    pid = start_qsd(sock, &errfd);
    assert_true(pid > 0);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    g_spawn_close_pid(pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    char msg[4096];
    ssize_t n = read(errfd, msg, sizeof(msg) - 1);
    assert_true(n > 0);
    msg[n] = 0;
    close(errfd);
    assert_non_null(strstr(msg, "Failed to get \"write\" lock"));
    blk_unref(blk);
    g_free(sock);
}

static void test_lock_vs_qemu(void **state)
{
    char *qemu_io = g_find_program_in_path("qemu-io");
    if (!qemu_io) {
        skip();
    }
    g_free(qemu_io);
    make_file(65536);
    BlockDriverState *bs = open_file("");
    GError *err = NULL;
    char *out = NULL;

    /* We write and refuse to share writes: qemu-io cannot open for
     * writing, but can read. */
    BlockBackend *blk =
        test_new_blk(bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                     BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED, &err);
    assert_non_null(blk);
    int st = run_qemu_io("read 0 512", false, &out);
    assert_int_not_equal(st, 0);
    assert_non_null(strstr(out, "Failed to get \"write\" lock"));
    assert_non_null(strstr(out, "Is another process using the image"));
    g_free(out);
    st = run_qemu_io("read 0 512", true, &out);
    assert_int_equal(st, 0);
    g_free(out);
    blk_unref(blk);

    /* Now we only read, sharing nothing but reads: qemu-io's writer is
     * refused, its reader welcome. */
    blk = test_new_blk(bs, BLK_PERM_CONSISTENT_READ, BLK_PERM_CONSISTENT_READ,
                       &err);
    assert_non_null(blk);
    st = run_qemu_io("write 0 512", false, &out);
    assert_int_not_equal(st, 0);
    assert_non_null(strstr(out, "Failed to get \"write\" lock"));
    g_free(out);
    blk_unref(blk);

    /* Nobody: qemu-io writes. */
    st = run_qemu_io("write 0 512", false, &out);
    assert_int_equal(st, 0);
    g_free(out);
}

int main(void)
{
    GError *err = NULL;

    test_aio_init();
    tmpdir = test_tmpdir_new("test-file", &err);
    if (!tmpdir) {
        fprintf(stderr, "%s\n", err->message);
        return 1;
    }
    img = g_strdup_printf("%s/img", tmpdir);
#define T(fn) cmocka_unit_test_teardown(fn, teardown)
    const struct CMUnitTest tests[] = {
        T(test_rw_io_uring),
        T(test_rw_threads),
        T(test_rw_direct),
        T(test_rw_readonly),
        T(test_long_vector),
        T(test_write_extends),
        T(test_write_extends_direct),
        T(test_zeroes_and_status),
        T(test_discard_ignored),
        T(test_truncate),
        T(test_create),
        T(test_open_errors),
        T(test_lock_bytes),
        T(test_lock_vs_qemu),
        T(test_lock_vs_qsd),
    };
    int fails = cmocka_run_group_tests(tests, NULL, NULL);
    test_tmpdir_remove(tmpdir);
    g_free(tmpdir);
    g_free(img);
    return fails;
}
