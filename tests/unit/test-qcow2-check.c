/*
 * qcow2_co_check_file(): images made and written by our own driver are
 * clean; a damaged refcount, refcount table entry, COPIED flag or leaked
 * cluster gives the expected counts; repairs leave a clean image, and a
 * rebuilt refcount structure goes into free clusters inside the file.
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
#include <sys/stat.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "util/aio.h"

static char tmpdir[64];

typedef struct Ctx {
    const char *file;
    const char *driver;
    int fix;
    Qcow2CreateParams p;
    Qcow2CheckResult res;
    int ret;
    GError *err;
} Ctx;

static BlockBackend *coroutine_fn open_co(Ctx *c, bool write)
{
    g_autofree char *opts =
        g_strcmp0(c->driver, "qcow2") == 0
            ? g_strdup_printf("driver=qcow2,discard=unmap,file.driver=file,"
                              "file.filename=%s/%s",
                              tmpdir, c->file)
            : g_strdup_printf("driver=file,filename=%s/%s", tmpdir, c->file);
    BlockDriverState *bs = bdrv_co_open_keyval(opts, &c->err);
    if (!bs) {
        return NULL;
    }
    uint64_t perm = BLK_PERM_CONSISTENT_READ |
                    (write ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0);
    BlockBackend *blk = blk_new(perm, BLK_PERM_ALL);
    if (blk_insert_bs(blk, bs, &c->err) < 0) {
        blk_unref(blk);
        bdrv_unref(bs);
        return NULL;
    }
    bdrv_unref(bs);
    return blk;
}

static void coroutine_fn create_write_co(void *opaque)
{
    Ctx *c = opaque;
    g_autofree char *p = g_strdup_printf("%s/%s", tmpdir, c->file);
    c->ret = qcow2_co_create_image(p, &c->p, &c->err);
    if (c->ret < 0) {
        return;
    }
    c->driver = "qcow2";
    BlockBackend *blk = open_co(c, true);
    if (!blk) {
        c->ret = -EIO;
        return;
    }
    /* 8 clusters of data in two runs, one of them later discarded */
    uint8_t *buf = g_malloc(8 * 65536);
    memset(buf, 0x5a, 8 * 65536);
    c->ret = blk_co_pwrite(blk, 0, 4 * 65536, buf, 0);
    if (c->ret >= 0) {
        c->ret = blk_co_pwrite(blk, 1 << 20, 4 * 65536, buf, 0);
    }
    if (c->ret >= 0) {
        c->ret = blk_co_pwrite(blk, 4 << 20, 65536, buf, 0);
    }
    if (c->ret >= 0) {
        c->ret = blk_co_flush(blk);
    }
    g_free(buf);
    blk_unref(blk);
}

static void coroutine_fn discard_co(void *opaque)
{
    Ctx *c = opaque;
    c->driver = "qcow2";
    BlockBackend *blk = open_co(c, true);
    c->ret = blk ? blk_co_pdiscard(blk, 1 << 20, 4 * 65536) : -EIO;
    if (blk) {
        blk_co_flush(blk);
        blk_unref(blk);
    }
}

static void coroutine_fn check_co(void *opaque)
{
    Ctx *c = opaque;
    c->driver = "file";
    BlockBackend *blk = open_co(c, c->fix != 0);
    if (!blk) {
        c->ret = -EIO;
        return;
    }
    c->ret = qcow2_co_check_file(blk, c->fix, &c->res, &c->err);
    blk_unref(blk);
}

static void make(const char *file, int refcount_bits)
{
    Ctx c = { .file = file };
    c.p.size = 16 << 20;
    c.p.cluster_size = 65536;
    c.p.refcount_bits = refcount_bits;
    coroutine_run_sync(create_write_co, &c);
    if (c.ret < 0) {
        fail_msg("make %s: %s", file, c.err ? c.err->message : "I/O error");
    }
}

/* A check that cannot complete: -errno and one internal error. */
static void check_fails(const char *file, int fix)
{
    Ctx c = { .file = file, .fix = fix };
    coroutine_run_sync(check_co, &c);
    assert_true(c.ret < 0);
    assert_null(c.err);
    assert_int_equal(c.res.check_errors, 1);
}

static Qcow2CheckResult check(const char *file, int fix)
{
    Ctx c = { .file = file, .fix = fix };
    coroutine_run_sync(check_co, &c);
    if (c.ret < 0) {
        fail_msg("check %s: %d %s", file, c.ret, c.err ? c.err->message : "");
    }
    return c.res;
}

static void assert_clean(const char *file)
{
    Qcow2CheckResult r = check(file, 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.check_errors, 0);
}

static int fd_of(const char *file)
{
    g_autofree char *p = g_strdup_printf("%s/%s", tmpdir, file);
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    return fd;
}

static uint64_t rd64(int fd, uint64_t off)
{
    uint8_t b[8];
    assert_int_equal(pread(fd, b, 8, (off_t)off), 8);
    return qcow2_be64(b);
}

static void wr64(int fd, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    qcow2_put_be64(b, v);
    assert_int_equal(pwrite(fd, b, 8, (off_t)off), 8);
}

static void wr16(int fd, uint64_t off, uint16_t v)
{
    uint8_t b[2];
    qcow2_put_be16(b, v);
    assert_int_equal(pwrite(fd, b, 2, (off_t)off), 2);
}

/* Offsets of the structures of a fresh 64 KiB-cluster image. */
typedef struct Layout {
    uint64_t l1, rt, l2, rb, data0, file_len;
} Layout;

static Layout layout(int fd)
{
    Layout l;
    l.l1 = rd64(fd, 40);
    l.rt = rd64(fd, 48);
    l.l2 = rd64(fd, l.l1) & L1E_OFFSET_MASK;
    l.rb = rd64(fd, l.rt) & REFT_OFFSET_MASK;
    l.data0 = rd64(fd, l.l2) & L2E_OFFSET_MASK;
    struct stat st;
    fstat(fd, &st);
    l.file_len = (uint64_t)st.st_size;
    return l;
}

static void test_clean(void **state)
{
    (void)state;
    static const int widths[] = { 1, 16, 64 };
    for (size_t i = 0; i < G_N_ELEMENTS(widths); i++) {
        g_autofree char *f = g_strdup_printf("clean%d.qcow2", widths[i]);
        make(f, widths[i]);
        Qcow2CheckResult r = check(f, 0);
        assert_int_equal(r.corruptions + r.leaks + r.check_errors, 0);
        assert_int_equal(r.total_clusters, 256);
        assert_int_equal(r.allocated_clusters, 9);
        assert_int_equal(r.compressed_clusters, 0);
        int fd = fd_of(f);
        Layout l = layout(fd);
        close(fd);
        assert_int_equal(r.image_end_offset, (int64_t)l.file_len);
    }
}

static void test_leak(void **state)
{
    (void)state;
    make("leak.qcow2", 16);
    int fd = fd_of("leak.qcow2");
    Layout l = layout(fd);
    /* one more cluster at the end, counted but unused */
    assert_int_equal(ftruncate(fd, (off_t)(l.file_len + 65536)), 0);
    wr16(fd, l.rb + 2 * (l.file_len >> 16), 1);
    close(fd);
    Qcow2CheckResult r = check("leak.qcow2", 0);
    assert_int_equal(r.leaks, 1);
    assert_int_equal(r.corruptions, 0);
    r = check("leak.qcow2", QCOW2_FIX_LEAKS);
    assert_int_equal(r.leaks_fixed, 1);
    assert_clean("leak.qcow2");
}

static void test_refcount_zero(void **state)
{
    (void)state;
    make("rc0.qcow2", 16);
    int fd = fd_of("rc0.qcow2");
    Layout l = layout(fd);
    wr16(fd, l.rb + 2 * (l.data0 >> 16), 0);
    close(fd);
    Qcow2CheckResult r = check("rc0.qcow2", 0);
    /* the refcount and the COPIED flag that no longer matches it */
    assert_int_equal(r.corruptions, 2);
    /* fixing leaks only: a refcount of 0 needs a rebuild, refused */
    check_fails("rc0.qcow2", QCOW2_FIX_LEAKS);
    r = check("rc0.qcow2", QCOW2_FIX_LEAKS | QCOW2_FIX_ERRORS);
    assert_true(r.corruptions_fixed > 0);
    assert_clean("rc0.qcow2");
}

static void test_copied(void **state)
{
    (void)state;
    make("copied.qcow2", 16);
    int fd = fd_of("copied.qcow2");
    Layout l = layout(fd);
    wr64(fd, l.l2 + 8, rd64(fd, l.l2 + 8) & ~QCOW_OFLAG_COPIED);
    close(fd);
    Qcow2CheckResult r = check("copied.qcow2", 0);
    assert_int_equal(r.corruptions, 1);
    r = check("copied.qcow2", QCOW2_FIX_LEAKS | QCOW2_FIX_ERRORS);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_clean("copied.qcow2");
    fd = fd_of("copied.qcow2");
    assert_true(rd64(fd, l.l2 + 8) & QCOW_OFLAG_COPIED);
    close(fd);
}

static void test_l2_past_eof(void **state)
{
    (void)state;
    make("eof.qcow2", 16);
    int fd = fd_of("eof.qcow2");
    Layout l = layout(fd);
    wr64(fd, l.l2 + 8, QCOW_OFLAG_COPIED | (1ULL << 32));
    close(fd);
    Qcow2CheckResult r = check("eof.qcow2", 0);
    /* the reference past the end, the COPIED flag; its old cluster leaks */
    assert_int_equal(r.corruptions, 2);
    assert_int_equal(r.leaks, 1);
}

/* A rebuild puts the new refcount structure into a hole of the image. */
static void test_rebuild_in_free_space(void **state)
{
    (void)state;
    make("holes.qcow2", 16);
    Ctx c = { .file = "holes.qcow2" };
    coroutine_run_sync(discard_co, &c);
    assert_int_equal(c.ret, 0);
    assert_clean("holes.qcow2");
    int fd = fd_of("holes.qcow2");
    Layout l = layout(fd);
    wr64(fd, l.rt, 0); /* the refcount table loses its only block */
    close(fd);
    Qcow2CheckResult r = check("holes.qcow2", 0);
    assert_true(r.corruptions > 0);
    r = check("holes.qcow2", QCOW2_FIX_LEAKS | QCOW2_FIX_ERRORS);
    assert_true(r.corruptions_fixed > 0);
    assert_clean("holes.qcow2");
    fd = fd_of("holes.qcow2");
    Layout n = layout(fd);
    close(fd);
    assert_true(n.rt + 65536 <= l.file_len);
    assert_true(n.rb + 65536 <= l.file_len);
    assert_int_equal(n.file_len, l.file_len);
}

static void test_not_qcow2(void **state)
{
    (void)state;
    int fd = fd_of("leak.qcow2"); /* any file: overwrite its magic */
    wr64(fd, 0, 0);
    close(fd);
    Ctx c = { .file = "leak.qcow2" };
    coroutine_run_sync(check_co, &c);
    assert_true(c.ret < 0);
    assert_non_null(c.err);
    g_error_free(c.err);
}

int main(void)
{
    GError *err = NULL;
    if (!aio_init(&err)) {
        fprintf(stderr, "aio_init: %s\n", err->message);
        return 1;
    }
    g_strlcpy(tmpdir, "/tmp/test-qcow2-check-XXXXXX", sizeof(tmpdir));
    if (!g_mkdtemp(tmpdir)) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),
        cmocka_unit_test(test_leak),
        cmocka_unit_test(test_refcount_zero),
        cmocka_unit_test(test_copied),
        cmocka_unit_test(test_l2_past_eof),
        cmocka_unit_test(test_rebuild_in_free_space),
        cmocka_unit_test(test_not_qcow2),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_close_all();
    g_autofree char *cmd = g_strdup_printf("rm -rf %s", tmpdir);
    if (ret == 0 && system(cmd) != 0) {
        ret = 1;
    }
    return ret;
}
