/*
 * add-cow: header parsing against every rule of docs/specs/add-cow.md,
 * and the driver through the real block layer against an in-memory model
 * (random and concurrent partial-cluster writes over a raw backing file,
 * an image larger than its backing file, zeroes, discards, resize with
 * stale bits, bits past the end in a crafted file, reopen).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <glib.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/drivers/add-cow.h"
#include "util/aio.h"

static char tmpdir[64];

static char *path(const char *name)
{
    return g_strdup_printf("%s/%s", tmpdir, name);
}

static void write_file(const char *name, const void *buf, size_t len)
{
    g_autofree char *p = path(name);
    assert_true(g_file_set_contents(p, buf, (gssize)len, NULL));
}

static void fill_file(const char *name, size_t len, int byte)
{
    g_autofree uint8_t *b = g_malloc(len ? len : 1);
    memset(b, byte, len);
    write_file(name, b, len);
}

static gsize file_len(const char *name)
{
    g_autofree char *p = path(name);
    g_autofree char *data = NULL;
    gsize len = 0;
    assert_true(g_file_get_contents(p, &data, &len, NULL));
    return len;
}

/* ---- header parsing ---- */

static uint8_t *good_header(AddCowHeader *h)
{
    memset(h, 0, sizeof(*h));
    h->cluster_bits = 16;
    h->header_size = 65536;
    h->backing_name_off = 76;
    h->backing_name_len = 4;
    h->backing_name = (char *)"base";
    h->image_name_off = 80;
    h->image_name_len = 3;
    h->image_name = (char *)"img";
    strcpy(h->backing_fmt, "qcow2");
    strcpy(h->image_fmt, "raw");
    return add_cow_header_encode(h);
}

static bool parse(const uint8_t *buf, size_t len, AddCowHeader *out)
{
    GError *err = NULL;
    bool ok = add_cow_header_parse_fixed(buf, out, &err) &&
              add_cow_header_parse_names(buf, len, out, &err);
    if (!ok) {
        assert_non_null(err);
        assert_non_null(err->message);
        g_error_free(err);
    }
    return ok;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void test_header(void **state)
{
    AddCowHeader h, out;
    g_autofree uint8_t *buf = good_header(&h);
    assert_memory_equal(buf, "ACOW", 4);
    assert_true(parse(buf, h.header_size, &out));
    assert_string_equal(out.backing_name, "base");
    assert_string_equal(out.image_name, "img");
    assert_string_equal(out.backing_fmt, "qcow2");
    assert_string_equal(out.image_fmt, "raw");
    assert_int_equal(out.cluster_bits, 16);
    add_cow_header_clear(&out);

    /* one broken field at a time */
    struct {
        size_t off;
        uint32_t v;
    } bad32[] = {
        { 0, 0x574F4342 },  /* magic */
        { 20, 11 },         /* cluster_bits too small */
        { 20, 22 },         /* too large */
        { 40, 77 },         /* header_size below the names */
        { 40, (1u << 21) + 1 }, /* too large */
        { 4, 75 },          /* backing name inside the fixed part */
        { 4, 0 },           /* off 0 with len != 0 */
        { 8, 0 },           /* len 0 with off != 0 */
        { 12, 0 },          /* image name required */
        { 12, 65535 },      /* off > header_size - 2 */
        { 16, 65536 },      /* past header_size */
        { 16, 0 },          /* empty name */
        { 12, 78 },         /* overlaps the backing name */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad32); i++) {
        g_autofree uint8_t *b = g_memdup2(buf, h.header_size);
        put32(b + bad32[i].off, bad32[i].v);
        assert_false(parse(b, h.header_size, &out));
    }
    /* unknown incompatible feature; unknown compatible one is fine */
    g_autofree uint8_t *b = g_memdup2(buf, h.header_size);
    b[24 + 7] = 0x80;
    assert_false(parse(b, h.header_size, &out));
    memcpy(b, buf, h.header_size);
    b[32 + 3] = 0x10;
    assert_true(parse(b, h.header_size, &out));
    add_cow_header_clear(&out);
    /* NUL inside a name */
    memcpy(b, buf, h.header_size);
    b[81] = 0;
    assert_false(parse(b, h.header_size, &out));
    /* format fields: unterminated, odd characters, garbage after NUL,
     * empty image format, backing format without a backing file */
    memcpy(b, buf, h.header_size);
    memset(b + 60, 'r', 16);
    assert_false(parse(b, h.header_size, &out));
    memcpy(b, buf, h.header_size);
    memcpy(b + 60, "r/w", 3);
    assert_false(parse(b, h.header_size, &out));
    memcpy(b, buf, h.header_size);
    b[60 + 10] = 'x';
    assert_false(parse(b, h.header_size, &out));
    memcpy(b, buf, h.header_size);
    memset(b + 60, 0, 16);
    assert_false(parse(b, h.header_size, &out));
    memcpy(b, buf, h.header_size);
    memset(b + 44, 0, 16);
    assert_false(parse(b, h.header_size, &out)); /* backing without fmt */
    memcpy(b, buf, h.header_size);
    put32(b + 4, 0);
    put32(b + 8, 0);
    assert_false(parse(b, h.header_size, &out)); /* fmt without backing */
    memset(b + 44, 0, 16);
    assert_true(parse(b, h.header_size, &out));
    assert_null(out.backing_name);
    add_cow_header_clear(&out);
    /* a short buffer for the names */
    assert_false(parse(buf, 100, &out));

    /* sizes */
    assert_int_equal(add_cow_clusters(0, 12), 0);
    assert_int_equal(add_cow_clusters(1, 12), 1);
    assert_int_equal(add_cow_clusters(8192, 12), 2);
    assert_int_equal(add_cow_bitmap_bytes(1, 12), 4096);
    assert_int_equal(add_cow_bitmap_bytes((uint64_t)4096 * 8 * 4096, 12),
                     4096);
    assert_int_equal(add_cow_bitmap_bytes((uint64_t)4096 * 8 * 4096 + 1, 12),
                     8192);
    g_autofree char *r1 = add_cow_resolve("/a/b/meta", "img");
    assert_string_equal(r1, "/a/b/img");
    g_autofree char *r2 = add_cow_resolve("/a/b/meta", "/x/img");
    assert_string_equal(r2, "/x/img");
}

/* ---- the driver ---- */

typedef struct Ctx {
    const char *meta;
    BlockDriverState *bs;
    BlockBackend *blk;
    GError *err;
    int ret;
    /* create */
    AddCowCreateParams cp;
} Ctx;

static void coroutine_fn create_co(void *opaque)
{
    Ctx *c = opaque;
    g_autofree char *p = path(c->meta);
    c->ret = add_cow_co_create_image(p, &c->cp, &c->err);
}

static void create(const char *meta, const AddCowCreateParams *cp)
{
    Ctx c = { .meta = meta, .cp = *cp };
    coroutine_run_sync(create_co, &c);
    if (c.ret < 0) {
        fail_msg("create %s: %s", meta, c.err ? c.err->message : "?");
    }
}

static void coroutine_fn open_co(void *opaque)
{
    Ctx *c = opaque;
    g_autofree char *opts = g_strdup_printf(
        "driver=add-cow,file.driver=file,file.filename=%s/%s", tmpdir,
        c->meta);
    c->bs = bdrv_co_open_keyval(opts, &c->err);
}

static bool try_open(Ctx *c)
{
    c->err = NULL;
    coroutine_run_sync(open_co, c);
    if (!c->bs) {
        return false;
    }
    c->blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                         BLK_PERM_RESIZE,
                     BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
    assert_int_equal(blk_insert_bs(c->blk, c->bs, NULL), 0);
    bdrv_unref(c->bs);
    return true;
}

static void open_img(Ctx *c)
{
    if (!try_open(c)) {
        fail_msg("open %s: %s", c->meta, c->err->message);
    }
}

static void close_img(Ctx *c)
{
    blk_unref(c->blk);
    c->blk = NULL;
    c->bs = NULL;
}

typedef struct Req {
    Ctx *c;
    int op; /* 0 read, 1 write, 2 zeroes, 3 discard, 4 flush, 5 truncate */
    int64_t off, len;
    uint8_t *buf;
    int ret;
    int *pending;
} Req;

static void coroutine_fn req_co(void *opaque)
{
    Req *r = opaque;
    BlockBackend *blk = r->c->blk;
    switch (r->op) {
    case 0:
        r->ret = blk_co_pread(blk, r->off, r->len, r->buf, 0);
        break;
    case 1:
        r->ret = blk_co_pwrite(blk, r->off, r->len, r->buf, 0);
        break;
    case 2:
        r->ret = blk_co_pwrite_zeroes(blk, r->off, r->len, 0);
        break;
    case 3:
        r->ret = blk_co_pdiscard(blk, r->off, r->len);
        break;
    case 4:
        r->ret = blk_co_flush(blk);
        break;
    case 5:
        r->ret = blk_co_truncate(blk, r->off, false, PREALLOC_MODE_OFF, 0,
                                 NULL);
        break;
    }
    if (r->pending) {
        (*r->pending)--;
    }
}

static int do_req(Ctx *c, int op, int64_t off, int64_t len, uint8_t *buf)
{
    Req r = { c, op, off, len, buf, 0, NULL };
    coroutine_run_sync(req_co, &r);
    return r.ret;
}

static void check_content(Ctx *c, const uint8_t *model, int64_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);
    assert_int_equal(blk_getlength(c->blk), len);
    assert_int_equal(do_req(c, 0, 0, len, buf), 0);
    for (int64_t i = 0; i < len; i++) {
        if (buf[i] != model[i]) {
            fail_msg("offset %" PRId64 ": %#x, expected %#x", i, buf[i],
                     model[i]);
        }
    }
}

/* Random writes, zeroes and discards vs a model; image 12 MiB over a
 * 5 MiB (+ 1000 bytes) backing file, 4 KiB clusters. */
static void test_random(void **state)
{
    const int64_t size = 12 << 20, blen = (5 << 20) + 1000;
    uint8_t *model = g_malloc0(size);
    fill_file("r-base", (size_t)blen, 0x42);
    memset(model, 0x42, (size_t)blen);
    fill_file("r-img", 0, 0);
    AddCowCreateParams cp = { .has_size = true, .size = size,
                              .image_file = "r-img", .backing_file = "r-base",
                              .backing_fmt = "raw", .cluster_size = 4096 };
    create("r.acow", &cp);
    Ctx c = { .meta = "r.acow" };
    open_img(&c);
    check_content(&c, model, size);
    GRand *r = g_rand_new_with_seed(7);
    g_autofree uint8_t *buf = g_malloc(256 * 1024);
    for (int i = 0; i < 400; i++) {
        int64_t off = g_rand_int_range(r, 0, (gint32)size - 1);
        int64_t want = g_rand_int_range(r, 1, 256 * 1024); /* MIN: once */
        int64_t len = MIN(want, size - off);
        int kind = g_rand_int_range(r, 0, 10);
        if (kind < 7) {
            memset(buf, i & 0xff, (size_t)len);
            assert_int_equal(do_req(&c, 1, off, len, buf), 0);
            memcpy(model + off, buf, (size_t)len);
        } else if (kind < 9) {
            assert_int_equal(do_req(&c, 2, off, len, NULL), 0);
            memset(model + off, 0, (size_t)len);
        } else {
            /* discard: content undefined afterwards; rewrite it */
            assert_int_equal(do_req(&c, 3, off, len, NULL), 0);
            memset(buf, 0x17, (size_t)len);
            assert_int_equal(do_req(&c, 1, off, len, buf), 0);
            memcpy(model + off, buf, (size_t)len);
        }
        if (i % 50 == 0) {
            assert_int_equal(do_req(&c, 4, 0, 0, NULL), 0);
        }
    }
    check_content(&c, model, size);
    close_img(&c);
    /* everything survives close and reopen */
    open_img(&c);
    check_content(&c, model, size);
    close_img(&c);
    g_rand_free(r);
    g_free(model);
}

typedef struct Par {
    Req req;
} Par;

/* Many concurrent writes to different parts of the same clusters: each
 * cluster's copy-on-write happens once and no write is lost. */
static void test_concurrent(void **state)
{
    const int64_t size = 4 << 20;
    uint8_t *model = g_malloc(size);
    fill_file("c-base", (size_t)size, 0x99);
    memset(model, 0x99, (size_t)size);
    fill_file("c-img", 0, 0);
    AddCowCreateParams cp = { .has_size = false, .image_file = "c-img",
                              .backing_file = "c-base", .backing_fmt = "raw",
                              .cluster_size = 65536 };
    fill_file("c-img", (size_t)size, 0xee); /* stale bytes in the image */
    create("c.acow", &cp);
    Ctx c = { .meta = "c.acow" };
    open_img(&c);
    enum { N = 512 };
    Req *reqs = g_new0(Req, N);
    uint8_t *bufs = g_malloc(N * 100);
    int pending = N;
    /* disjoint 100-byte pieces, 8 per 64 KiB cluster area */
    for (int i = 0; i < N; i++) {
        int64_t off = (int64_t)(i % 64) * 65536 + (i / 64) * 8000 + 17;
        memset(bufs + i * 100, (i % 250) + 1, 100);
        memcpy(model + off, bufs + i * 100, 100);
        reqs[i] = (Req){ &c, 1, off, 100, bufs + i * 100, 0, &pending };
    }
    for (int i = 0; i < N; i++) {
        coroutine_enter(coroutine_create(req_co, &reqs[i]));
    }
    AIO_WAIT_WHILE(pending > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(reqs[i].ret, 0);
    }
    check_content(&c, model, size);
    close_img(&c);
    open_img(&c);
    check_content(&c, model, size);
    close_img(&c);
    g_free(reqs);
    g_free(bufs);
    g_free(model);
}

static uint8_t meta_byte(const char *meta, size_t off)
{
    g_autofree char *p = path(meta);
    g_autofree char *data = NULL;
    gsize len = 0;
    assert_true(g_file_get_contents(p, &data, &len, NULL));
    return off < len ? (uint8_t)data[off] : 0;
}

/* Resize: bits past a new end are cleared before the shrink; a grow over
 * a longer backing file reads zeroes; crafted bits past the end are
 * ignored and never revived. */
static void test_resize(void **state)
{
    const int64_t cs = 4096;
    fill_file("t-base", 64 * cs, 0x42);
    fill_file("t-img", 0, 0);
    AddCowCreateParams cp = { .has_size = true, .size = 32 * cs,
                              .image_file = "t-img", .backing_file = "t-base",
                              .backing_fmt = "raw", .cluster_size = cs };
    create("t.acow", &cp);
    Ctx c = { .meta = "t.acow" };
    open_img(&c);
    uint8_t *model = g_malloc(64 * cs);
    memset(model, 0x42, 64 * cs);
    uint8_t buf[100];
    memset(buf, 0x11, sizeof(buf));
    /* cluster 20 valid */
    assert_int_equal(do_req(&c, 1, 20 * cs + 5, 100, buf), 0);
    memcpy(model + 20 * cs + 5, buf, 100);
    assert_int_equal(do_req(&c, 4, 0, 0, NULL), 0);
    assert_int_equal(meta_byte("t.acow", 4096 + 2), 0x10);
    /* shrink to 10.5 clusters: bit 20 cleared on disk */
    assert_int_equal(do_req(&c, 5, 10 * cs + 2048, 0, NULL), 0);
    assert_int_equal(meta_byte("t.acow", 4096 + 2), 0);
    assert_int_equal(file_len("t-img"), 10 * cs + 2048);
    /* grow to 40 clusters: the new area reads zeroes although the
     * backing file has data there */
    assert_int_equal(do_req(&c, 5, 40 * cs, 0, NULL), 0);
    memset(model + 10 * cs + 2048, 0, 30 * cs - 2048);
    check_content(&c, model, 40 * cs);
    close_img(&c);
    open_img(&c);
    check_content(&c, model, 40 * cs);
    close_img(&c);

    /* A crafted file: bits past the end of a 3-cluster image over a
     * 3-cluster backing file are ignored and do not come back. */
    fill_file("s-base", 3 * cs, 0x42);
    fill_file("s-img", 0, 0);
    AddCowCreateParams sp = { .has_size = true, .size = 3 * cs,
                              .image_file = "s-img", .backing_file = "s-base",
                              .backing_fmt = "raw", .cluster_size = cs };
    create("s.acow", &sp);
    {
        g_autofree char *p = path("s.acow");
        int fd = open(p, O_WRONLY);
        assert_true(fd >= 0);
        uint8_t ff = 0xff;
        assert_int_equal(pwrite(fd, &ff, 1, 4096), 1);
        close(fd);
    }
    Ctx s = { .meta = "s.acow" };
    open_img(&s);
    /* clusters 0-2 have their bits set: they read the image (zeroes) */
    memset(model, 0, 3 * cs);
    check_content(&s, model, 3 * cs);
    assert_int_equal(do_req(&s, 4, 0, 0, NULL), 0);
    close_img(&s);
    open_img(&s);
    /* grow: bits 3-7 must not have survived */
    assert_int_equal(do_req(&s, 5, 8 * cs, 0, NULL), 0);
    memset(model, 0, 8 * cs);
    check_content(&s, model, 8 * cs);
    assert_int_equal(do_req(&s, 4, 0, 0, NULL), 0);
    assert_int_equal(meta_byte("s.acow", 4096), 0x07);
    close_img(&s);
    g_free(model);
}

/* Write-zeroes on a cluster not yet valid makes it valid with zeroes;
 * discard never clears a bit. */
static void test_zero_discard(void **state)
{
    const int64_t cs = 65536;
    fill_file("z-base", 4 * cs, 0x42);
    fill_file("z-img", 0, 0);
    AddCowCreateParams cp = { .image_file = "z-img", .backing_file = "z-base",
                              .backing_fmt = "raw", .cluster_size = cs,
                              .has_size = true, .size = 4 * cs };
    create("z.acow", &cp);
    Ctx c = { .meta = "z.acow" };
    open_img(&c);
    assert_int_equal(do_req(&c, 2, cs + 100, 1000, NULL), 0);
    assert_int_equal(do_req(&c, 4, 0, 0, NULL), 0);
    assert_int_equal(meta_byte("z.acow", 65536), 0x02);
    uint8_t *model = g_malloc(4 * cs);
    memset(model, 0x42, 4 * cs);
    memset(model + cs + 100, 0, 1000);
    check_content(&c, model, 4 * cs);
    assert_int_equal(do_req(&c, 3, 0, 4 * cs, NULL), 0);
    assert_int_equal(do_req(&c, 4, 0, 0, NULL), 0);
    assert_int_equal(meta_byte("z.acow", 65536), 0x02);
    /* unwritten clusters still read the backing file */
    g_autofree uint8_t *buf = g_malloc(cs);
    assert_int_equal(do_req(&c, 0, 2 * cs, cs, buf), 0);
    assert_int_equal(buf[0], 0x42);
    assert_int_equal(buf[cs - 1], 0x42);
    close_img(&c);
    g_free(model);
}

/* Open refuses invalid files with an error, never crashes. */
static void test_open_errors(void **state)
{
    fill_file("o-img", 8192, 0);
    AddCowCreateParams cp = { .image_file = "o-img", .cluster_size = 4096 };
    create("o.acow", &cp);
    Ctx c = { .meta = "o.acow" };
    open_img(&c);
    close_img(&c);
    g_autofree char *p = path("o.acow");
    g_autofree char *orig = NULL;
    gsize len;
    assert_true(g_file_get_contents(p, &orig, &len, NULL));
    struct {
        size_t off;
        const char *bytes;
        size_t n;
    } edits[] = {
        { 0, "XCOW", 4 },
        { 20, "\x0b\0\0\0", 4 },
        { 24, "\x01", 1 },
        { 60, "nosuchformat", 12 },
        { 60, "add-cow", 7 },
        { 76, "o.acow", 6 },  /* the image file is the metadata file */
        { 40, "\x00\x40\0\0", 4 }, /* header_size beyond the file */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(edits); i++) {
        g_autofree char *b = g_memdup2(orig, len);
        memcpy(b + edits[i].off, edits[i].bytes, edits[i].n);
        write_file("o2.acow", b, len);
        Ctx e = { .meta = "o2.acow" };
        if (try_open(&e)) {
            fail_msg("edit %zu opened", i);
        }
        assert_non_null(e.err);
        g_error_free(e.err);
    }
    /* truncated files */
    for (size_t n = 0; n < 200; n += 37) {
        write_file("o2.acow", orig, n);
        Ctx e = { .meta = "o2.acow" };
        assert_false(try_open(&e));
        g_error_free(e.err);
    }
}

int main(void)
{
    GError *err = NULL;
    if (!aio_init(&err)) {
        fprintf(stderr, "aio_init: %s\n", err->message);
        return 1;
    }
    g_strlcpy(tmpdir, "/tmp/test-add-cow-XXXXXX", sizeof(tmpdir));
    if (!g_mkdtemp(tmpdir)) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_resize),
        cmocka_unit_test(test_zero_discard),
        cmocka_unit_test(test_open_errors),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_close_all();
    if (ret == 0) {
        g_autofree char *cmd = g_strdup_printf("rm -rf %s", tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", tmpdir);
        }
    }
    aio_cleanup();
    return ret;
}
