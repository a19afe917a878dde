/*
 * qcow2 bitmap directory parser: a directory qemu-img wrote, hand-made
 * directories, and each check on its own (every field of an entry comes
 * from the image).  And the driver on a writable image: in use on disk
 * while open, stored on close (qemu-img check clean), bits kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <glib.h>

#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "block/drivers/qcow2-bitmap.h"
#include "util/aio.h"

#define CS 65536
#define VSIZE (64 * 1024 * 1024)

static void put32(uint8_t *p, uint32_t v)
{
    v = GUINT32_TO_BE(v);
    memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
    v = GUINT64_TO_BE(v);
    memcpy(p, &v, 8);
}

/* Append one directory entry. */
static void entry(GByteArray *d, uint64_t toff, uint32_t tsize,
                  uint32_t flags, uint8_t type, uint8_t gbits,
                  const char *name, uint32_t extra)
{
    size_t n = strlen(name);
    size_t sz = (24 + extra + n + 7) & ~(size_t)7;
    uint8_t *p = g_malloc0(sz);
    put64(p, toff);
    put32(p + 8, tsize);
    put32(p + 12, flags);
    p[16] = type;
    p[17] = gbits;
    p[18] = (uint8_t)(n >> 8);
    p[19] = (uint8_t)n;
    put32(p + 20, extra);
    memcpy(p + 24 + extra, name, n);
    g_byte_array_append(d, p, (guint)sz);
    g_free(p);
}

static Qcow2BitmapEntry *parse(GByteArray *d, uint32_t nb, GError **err)
{
    return qcow2_bitmap_dir_parse(d->data, d->len, nb, CS, VSIZE, err);
}

static void expect_error(GByteArray *d, uint32_t nb, const char *part)
{
    GError *err = NULL;
    assert_null(parse(d, nb, &err));
    assert_non_null(err);
    if (!strstr(err->message, part)) {
        fail_msg("'%s' does not contain '%s'", err->message, part);
    }
    g_error_free(err);
}

static void test_valid(void **state)
{
    GByteArray *d = g_byte_array_new();
    entry(d, 3 * CS, 1, QCOW2_BME_FLAG_AUTO, 1, 16, "a", 0);
    entry(d, 4 * CS, 1, 0, 1, 9, "second-name", 0);
    entry(d, 5 * CS, 1, QCOW2_BME_FLAG_IN_USE | 4, 1, 20, "x", 5);
    GError *err = NULL;
    Qcow2BitmapEntry *e = parse(d, 3, &err);
    assert_non_null(e);
    assert_string_equal(e[1].name, "second-name");
    assert_int_equal(e[1].granularity_bits, 9);
    assert_int_equal(e[2].flags, QCOW2_BME_FLAG_IN_USE | 4);
    qcow2_bitmap_dir_free(e, 3);
    /* fewer entries than the bytes hold */
    expect_error(d, 2, "does not match");
    expect_error(d, 4, "truncated");
    g_byte_array_free(d, TRUE);
}

static void test_each_check(void **state)
{
    struct {
        uint64_t toff;
        uint32_t tsize, flags;
        uint8_t type, gbits;
        const char *name;
        uint32_t extra;
        const char *err;
    } cases[] = {
        { 3 * CS, 1, 0, 2, 16, "t", 0, "unknown type" },
        { 3 * CS, 1, 0, 1, 8, "g", 0, "granularity" },
        { 3 * CS, 1, 0, 1, 32, "g", 0, "granularity" },
        { 3 * CS, 1, 8, 1, 16, "f", 0, "reserved flags" },
        { 3 * CS, 1, 0, 1, 16, "x", 4, "extra data" },
        { 3 * CS + 512, 1, 0, 1, 16, "o", 0, "bitmap table" },
        { 0, 1, 0, 1, 16, "o", 0, "bitmap table" },
        { 3 * CS, 2, 0, 1, 16, "s", 0, "bitmap table" },
        { 3 * CS, 0, 0, 1, 16, "s", 0, "bitmap table" },
        { 3 * CS, 1, 0, 1, 16, "", 0, "name length" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        GByteArray *d = g_byte_array_new();
        entry(d, cases[i].toff, cases[i].tsize, cases[i].flags, cases[i].type,
              cases[i].gbits, cases[i].name, cases[i].extra);
        expect_error(d, 1, cases[i].err);
        g_byte_array_free(d, TRUE);
    }
    /* 512-byte granules of 64 MiB: 131072 bits, one 64 KiB cluster */
    GByteArray *d = g_byte_array_new();
    entry(d, 3 * CS, 1, 0, 1, 9, "fine", 0);
    GError *err = NULL;
    Qcow2BitmapEntry *e = parse(d, 1, &err);
    assert_non_null(e);
    qcow2_bitmap_dir_free(e, 1);
    g_byte_array_free(d, TRUE);

    /* an in-use entry may have the table size of the image before a
     * resize that was never stored; it loads inconsistent, unread */
    d = g_byte_array_new();
    entry(d, 3 * CS, 2, QCOW2_BME_FLAG_IN_USE, 1, 16, "resized", 0);
    e = parse(d, 1, &err);
    assert_non_null(e);
    assert_int_equal(e[0].table_size, 2);
    qcow2_bitmap_dir_free(e, 1);
    g_byte_array_free(d, TRUE);

    /* duplicate names, name with a NUL, non-zero padding */
    d = g_byte_array_new();
    entry(d, 3 * CS, 1, 0, 1, 16, "dup", 0);
    entry(d, 4 * CS, 1, 0, 1, 16, "dup", 0);
    expect_error(d, 2, "Duplicate");
    g_byte_array_free(d, TRUE);
    d = g_byte_array_new();
    entry(d, 3 * CS, 1, 0, 1, 16, "ab", 0);
    d->data[24] = 0;
    expect_error(d, 1, "invalid name");
    d->data[24] = 'a';
    d->data[27] = 1; /* padding after "ab" */
    expect_error(d, 1, "padding");
    g_byte_array_free(d, TRUE);
    /* a name_size pointing past the end */
    d = g_byte_array_new();
    entry(d, 3 * CS, 1, 0, 1, 16, "n", 0);
    d->data[18] = 0x03;
    expect_error(d, 1, "truncated");
    g_byte_array_free(d, TRUE);
}

static void test_ext(void **state)
{
    uint8_t x[24] = { 0 };
    Qcow2BitmapExt ext;
    GError *err = NULL;
    put32(x, 2);
    put64(x + 8, 64);
    put64(x + 16, 5 * CS);
    assert_true(qcow2_bitmap_ext_parse(x, 24, CS, &ext, &err));
    assert_int_equal(ext.nb_bitmaps, 2);
    assert_false(qcow2_bitmap_ext_parse(x, 23, CS, &ext, &err));
    g_clear_error(&err);
    put32(x + 4, 1);
    assert_false(qcow2_bitmap_ext_parse(x, 24, CS, &ext, &err));
    assert_string_equal(err->message, "bitmaps_ext: reserved32 is not zero");
    g_clear_error(&err);
    put32(x + 4, 0);
    put32(x, 0);
    assert_false(qcow2_bitmap_ext_parse(x, 24, CS, &ext, &err));
    g_clear_error(&err);
    put32(x, 65536);
    assert_false(qcow2_bitmap_ext_parse(x, 24, CS, &ext, &err));
    g_clear_error(&err);
    put32(x, 1);
    put64(x + 16, 5 * CS + 8);
    assert_false(qcow2_bitmap_ext_parse(x, 24, CS, &ext, &err));
    g_clear_error(&err);
    put64(x + 16, 5 * CS);
    put64(x + 8, UINT64_C(1) << 40);
    assert_false(qcow2_bitmap_ext_parse(x, 24, CS, &ext, &err));
    g_clear_error(&err);
}

/* The directory of an image qemu-img wrote. */
static void test_qemu_img(void **state)
{
    if (!g_file_test("/usr/bin/qemu-img", G_FILE_TEST_IS_EXECUTABLE)) {
        skip();
    }
    g_autofree char *dir = g_dir_make_tmp("test-qcow2-bitmap-XXXXXX", NULL);
    g_autofree char *img = g_build_filename(dir, "b.qcow2", NULL);
    g_autofree char *cmd = g_strdup_printf(
        "qemu-img create -q -f qcow2 %s 64M && "
        "qemu-img bitmap --add %s one && "
        "qemu-img bitmap --add -g 512 --disable %s two",
        img, img, img);
    assert_int_equal(system(cmd), 0);
    gchar *buf;
    gsize len;
    assert_true(g_file_get_contents(img, &buf, &len, NULL));
    uint32_t hlen = GUINT32_FROM_BE(*(uint32_t *)(buf + 100));
    size_t pos = hlen;
    Qcow2BitmapExt ext = { 0 };
    bool found = false;
    while (pos + 8 <= len) {
        uint32_t type = GUINT32_FROM_BE(*(uint32_t *)(buf + pos));
        uint32_t elen = GUINT32_FROM_BE(*(uint32_t *)(buf + pos + 4));
        if (type == 0) {
            break;
        }
        if (type == 0x23852875) {
            GError *err = NULL;
            assert_true(qcow2_bitmap_ext_parse((uint8_t *)buf + pos + 8, elen,
                                               CS, &ext, &err));
            found = true;
        }
        pos += 8 + ((elen + 7) & ~7u);
    }
    assert_true(found);
    assert_int_equal(ext.nb_bitmaps, 2);
    assert_true(ext.dir_offset + ext.dir_size <= len);
    GError *err = NULL;
    Qcow2BitmapEntry *e = qcow2_bitmap_dir_parse(
        (uint8_t *)buf + ext.dir_offset, ext.dir_size, 2, CS, VSIZE, &err);
    assert_non_null(e);
    assert_string_equal(e[0].name, "one");
    assert_int_equal(e[0].granularity_bits, 16);
    assert_int_equal(e[0].flags, QCOW2_BME_FLAG_AUTO);
    assert_string_equal(e[1].name, "two");
    assert_int_equal(e[1].granularity_bits, 9);
    assert_int_equal(e[1].flags, 0);
    assert_int_equal(e[1].table_size, 1);
    qcow2_bitmap_dir_free(e, 2);
    g_free(buf);
    unlink(img);
    rmdir(dir);
}

/* ---- the driver, writable ---- */

/* The bitmaps extension and directory of the image file at `img`;
 * NULL if it has none (or the autoclear bit is clear). */
static Qcow2BitmapEntry *read_image_dir(const char *img, uint32_t *nb)
{
    gchar *buf;
    gsize len;
    assert_true(g_file_get_contents(img, &buf, &len, NULL));
    uint64_t autoclear = GUINT64_FROM_BE(*(uint64_t *)(buf + 88));
    uint32_t hlen = GUINT32_FROM_BE(*(uint32_t *)(buf + 100));
    Qcow2BitmapEntry *e = NULL;
    *nb = 0;
    for (size_t pos = hlen; (autoclear & 1) && pos + 8 <= len;) {
        uint32_t type = GUINT32_FROM_BE(*(uint32_t *)(buf + pos));
        uint32_t elen = GUINT32_FROM_BE(*(uint32_t *)(buf + pos + 4));
        if (type == 0) {
            break;
        }
        if (type == 0x23852875) {
            Qcow2BitmapExt ext;
            GError *err = NULL;
            assert_true(qcow2_bitmap_ext_parse((uint8_t *)buf + pos + 8, elen,
                                               CS, &ext, &err));
            assert_true(ext.dir_offset + ext.dir_size <= len);
            e = qcow2_bitmap_dir_parse((uint8_t *)buf + ext.dir_offset,
                                       ext.dir_size, ext.nb_bitmaps, CS,
                                       VSIZE, &err);
            assert_non_null(e);
            *nb = ext.nb_bitmaps;
        }
        pos += 8 + ((elen + 7) & ~7u);
    }
    g_free(buf);
    return e;
}

typedef struct RwCtx {
    const char *img;
    BlockDriverState *bs;
    BlockBackend *blk;
    GError *err;
    int ret;
} RwCtx;

static void coroutine_fn rw_open_co(void *opaque)
{
    RwCtx *c = opaque;
    g_autofree char *o = g_strdup_printf(
        "driver=qcow2,file.driver=file,file.filename=%s", c->img);
    c->bs = bdrv_co_open_keyval(o, &c->err);
}

static void rw_open(RwCtx *c)
{
    c->err = NULL;
    coroutine_run_sync(rw_open_co, c);
    if (!c->bs) {
        fail_msg("open %s: %s", c->img, c->err->message);
    }
    c->blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, BLK_PERM_ALL);
    GError *err = NULL;
    assert_int_equal(blk_insert_bs(c->blk, c->bs, &err), 0);
    bdrv_unref(c->bs);
}

static void coroutine_fn rw_write_co(void *opaque)
{
    RwCtx *c = opaque;
    static uint8_t buf[4096];
    memset(buf, 0xa5, sizeof(buf));
    c->ret = blk_co_pwrite(c->blk, 5 * 1024 * 1024, sizeof(buf), buf, 0);
    if (c->ret == 0) {
        c->ret = blk_co_pwrite(c->blk, VSIZE - 512, 512, buf, 0);
    }
}

static void coroutine_fn rw_remove_co(void *opaque)
{
    RwCtx *c = opaque;
    c->ret = c->bs->drv->bdrv_co_remove_persistent_dirty_bitmap(c->bs, "new",
                                                                &c->err);
}

static void test_rw_store(void **state)
{
    if (!g_file_test("/usr/bin/qemu-img", G_FILE_TEST_IS_EXECUTABLE)) {
        skip();
    }
    g_autofree char *dir = g_dir_make_tmp("test-qcow2-bitmap-XXXXXX", NULL);
    g_autofree char *img = g_build_filename(dir, "rw.qcow2", NULL);
    g_autofree char *cmd = g_strdup_printf(
        "qemu-img create -q -f qcow2 %s 64M && "
        "qemu-img bitmap --add %s old",
        img, img);
    assert_int_equal(system(cmd), 0);

    RwCtx c = { .img = img };
    rw_open(&c);
    BdrvDirtyBitmap *old = bdrv_find_dirty_bitmap(c.bs, "old");
    assert_non_null(old);
    assert_true(bdrv_dirty_bitmap_persistent(old));
    assert_false(bdrv_dirty_bitmap_readonly(old));
    assert_false(bdrv_dirty_bitmap_inconsistent(old));
    /* in use on disk before any write */
    uint32_t nb;
    Qcow2BitmapEntry *e = read_image_dir(img, &nb);
    assert_int_equal(nb, 1);
    assert_int_equal(e[0].flags, QCOW2_BME_FLAG_IN_USE | QCOW2_BME_FLAG_AUTO);
    qcow2_bitmap_dir_free(e, nb);

    GError *err = NULL;
    BdrvDirtyBitmap *n = bdrv_create_dirty_bitmap(c.bs, 512, "new", &err);
    assert_non_null(n);
    bdrv_dirty_bitmap_set_persistence(n, true);
    bdrv_disable_dirty_bitmap(n);
    bdrv_set_dirty_bitmap(n, 0, VSIZE); /* all ones: every cluster */
    coroutine_run_sync(rw_write_co, &c);
    assert_int_equal(c.ret, 0);
    assert_int_equal(bdrv_dirty_bitmap_count(old), 2 * 65536);
    blk_unref(c.blk);

    /* stored: no in-use, flags, new one appended; no leak, no error */
    e = read_image_dir(img, &nb);
    assert_int_equal(nb, 2);
    assert_string_equal(e[0].name, "old");
    assert_int_equal(e[0].flags, QCOW2_BME_FLAG_AUTO);
    assert_string_equal(e[1].name, "new");
    assert_int_equal(e[1].flags, 0);
    assert_int_equal(e[1].granularity_bits, 9);
    qcow2_bitmap_dir_free(e, nb);
    g_free(cmd);
    cmd = g_strdup_printf("qemu-img check -q %s", img);
    assert_int_equal(system(cmd), 0);

    /* reloaded with the same bits; removal deletes it from the image */
    rw_open(&c);
    old = bdrv_find_dirty_bitmap(c.bs, "old");
    n = bdrv_find_dirty_bitmap(c.bs, "new");
    assert_non_null(old);
    assert_non_null(n);
    assert_int_equal(bdrv_dirty_bitmap_count(old), 2 * 65536);
    assert_true(bdrv_dirty_bitmap_get(old, 5 * 1024 * 1024));
    assert_true(bdrv_dirty_bitmap_get(old, VSIZE - 1));
    assert_false(bdrv_dirty_bitmap_get(old, 0));
    assert_int_equal(bdrv_dirty_bitmap_count(n), VSIZE);
    assert_false(bdrv_dirty_bitmap_enabled(n));
    c.err = NULL;
    coroutine_run_sync(rw_remove_co, &c);
    assert_int_equal(c.ret, 0);
    bdrv_release_dirty_bitmap(n);
    e = read_image_dir(img, &nb);
    assert_int_equal(nb, 1);
    assert_string_equal(e[0].name, "old");
    assert_int_equal(e[0].flags, QCOW2_BME_FLAG_IN_USE | QCOW2_BME_FLAG_AUTO);
    qcow2_bitmap_dir_free(e, nb);
    blk_unref(c.blk);
    g_free(cmd);
    cmd = g_strdup_printf("qemu-img check -q %s", img);
    assert_int_equal(system(cmd), 0);
    unlink(img);
    rmdir(dir);
}

int main(void)
{
    GError *aerr = NULL;
    if (!aio_init(&aerr)) {
        fprintf(stderr, "aio_init: %s\n", aerr->message);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_each_check),
        cmocka_unit_test(test_ext),
        cmocka_unit_test(test_qemu_img),
        cmocka_unit_test(test_rw_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
