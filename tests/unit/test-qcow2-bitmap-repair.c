/*
 * qcow2 bitmaps for blockd-img: the info list (the directory as stored,
 * flags from disk) and the offline repair of bitmaps a crash left in use
 * (qcow2_bitmaps_repair_in_use): fully dirty "all ones" tables sized for
 * the image, in-use cleared, other flags and names kept, bitmaps stored
 * cleanly untouched, a read-only node refused; qemu-img check clean after.
 */
#include <errno.h>
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

#define VSIZE (64 * 1024 * 1024)

typedef struct Ctx {
    const char *img;
    bool read_only;
    BlockDriverState *bs;
    BlockBackend *blk;
    GPtrArray *names;
    Qcow2BitmapInfoList *info;
    GError *err;
    int ret;
} Ctx;

static void coroutine_fn open_co(void *opaque)
{
    Ctx *c = opaque;
    g_autofree char *o = g_strdup_printf(
        "driver=qcow2,read-only=%s,file.driver=file,file.filename=%s",
        c->read_only ? "on" : "off", c->img);
    c->bs = bdrv_co_open_keyval(o, &c->err);
}

static void open_img(Ctx *c, bool read_only)
{
    c->err = NULL;
    c->read_only = read_only;
    coroutine_run_sync(open_co, c);
    if (!c->bs) {
        fail_msg("open %s: %s", c->img, c->err->message);
    }
    uint64_t perm = BLK_PERM_CONSISTENT_READ;
    if (!read_only) {
        perm |= BLK_PERM_WRITE;
    }
    c->blk = blk_new(perm, BLK_PERM_ALL);
    GError *err = NULL;
    assert_int_equal(blk_insert_bs(c->blk, c->bs, &err), 0);
    bdrv_unref(c->bs);
}

static void close_img(Ctx *c)
{
    blk_unref(c->blk);
    c->blk = NULL;
    c->bs = NULL;
}

static void coroutine_fn repair_co(void *opaque)
{
    Ctx *c = opaque;
    c->ret = qcow2_bitmaps_repair_in_use(c->bs, c->names, &c->err);
}

static void coroutine_fn info_co(void *opaque)
{
    Ctx *c = opaque;
    c->ret = qcow2_bitmaps_get_info(c->bs, &c->info, &c->err);
}

static void coroutine_fn write_co(void *opaque)
{
    Ctx *c = opaque;
    static uint8_t buf[65536];
    memset(buf, 0x5a, sizeof(buf));
    c->ret = blk_co_pwrite(c->blk, 1024 * 1024, sizeof(buf), buf, 0);
    if (c->ret == 0) {
        /* metadata on disk (a flush does not store bitmaps: they stay in
         * use), so the copy below differs from a clean image only there */
        c->ret = blk_co_flush(c->blk);
    }
}

/* "name:flag,flag name:..." of the info list, for one comparison. */
static char *info_str(Ctx *c)
{
    c->info = NULL;
    c->err = NULL;
    coroutine_run_sync(info_co, c);
    assert_int_equal(c->ret, 0);
    GString *s = g_string_new("");
    for (Qcow2BitmapInfoList *l = c->info; l; l = l->next) {
        g_string_append_printf(s, "%s%s/%u:", s->len ? " " : "",
                               l->value->name, l->value->granularity);
        for (Qcow2BitmapInfoFlagsList *f = l->value->flags; f; f = f->next) {
            g_string_append_printf(s, "%s%s", f == l->value->flags ? "" : ",",
                                   Qcow2BitmapInfoFlags_str(f->value));
        }
    }
    qapi_free_Qcow2BitmapInfoList(c->info);
    c->info = NULL;
    return g_string_free(s, FALSE);
}

static void run_cmd(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void run_cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    assert_int_equal(system(cmd), 0);
}

static void test_repair(void **state)
{
    if (!g_file_test("/usr/bin/qemu-img", G_FILE_TEST_IS_EXECUTABLE)) {
        skip();
    }
    g_autofree char *dir = g_dir_make_tmp("test-qcow2-bm-repair-XXXXXX", NULL);
    g_autofree char *live = g_build_filename(dir, "live.qcow2", NULL);
    g_autofree char *img = g_build_filename(dir, "crashed.qcow2", NULL);
    /* 4 KiB clusters: "off" (512 B granules) needs 4 table entries */
    run_cmd("qemu-img create -q -f qcow2 -o cluster_size=4k %s 64M && "
            "qemu-img bitmap --add %s on && "
            "qemu-img bitmap --add -g 512 --disable %s off",
            live, live, live);

    /* Open writable (both marked in use on disk), write, and copy the
     * file as it is: the copy is the image a crash leaves. */
    Ctx c = { .img = live };
    open_img(&c, false);
    coroutine_run_sync(write_co, &c);
    assert_int_equal(c.ret, 0);
    g_autofree char *s = info_str(&c);
    assert_string_equal(s, "on/4096:in-use,auto off/512:in-use");
    gchar *buf;
    gsize len;
    assert_true(g_file_get_contents(live, &buf, &len, NULL));
    assert_true(g_file_set_contents(img, buf, (gssize)len, NULL));
    g_free(buf);
    close_img(&c);

    /* the crashed copy: both inconsistent; a bitmap added now (stored
     * cleanly on close) must survive the repair untouched */
    c = (Ctx){ .img = img };
    open_img(&c, false);
    assert_true(bdrv_dirty_bitmap_inconsistent(
        bdrv_find_dirty_bitmap(c.bs, "on")));
    GError *err = NULL;
    BdrvDirtyBitmap *keep = bdrv_create_dirty_bitmap(c.bs, 65536, "keep",
                                                     &err);
    assert_non_null(keep);
    bdrv_dirty_bitmap_set_persistence(keep, true);
    bdrv_set_dirty_bitmap(keep, 0, 65536);
    close_img(&c);

    /* a read-only node cannot be repaired */
    open_img(&c, true);
    c.err = NULL;
    coroutine_run_sync(repair_co, &c);
    assert_int_equal(c.ret, -EACCES);
    g_clear_error(&c.err);
    close_img(&c);

    open_img(&c, false);
    g_free(s);
    s = info_str(&c);
    /* keep: loaded now, so in use; the other two: in use since the crash */
    assert_string_equal(s, "on/4096:in-use,auto off/512:in-use "
                           "keep/65536:in-use,auto");
    c.names = g_ptr_array_new_with_free_func(g_free);
    c.err = NULL;
    coroutine_run_sync(repair_co, &c);
    if (c.ret < 0) {
        fail_msg("repair: %s", c.err->message);
    }
    assert_int_equal(c.ret, 2);
    assert_int_equal(c.names->len, 2);
    assert_string_equal(g_ptr_array_index(c.names, 0), "on");
    assert_string_equal(g_ptr_array_index(c.names, 1), "off");
    g_ptr_array_unref(c.names);
    c.names = NULL;
    g_free(s);
    s = info_str(&c);
    assert_string_equal(s, "on/4096:auto off/512: keep/65536:in-use,auto");
    close_img(&c);
    run_cmd("qemu-img check -q %s", img);

    /* reloaded: fully dirty, recording as before; keep kept its bits */
    open_img(&c, true);
    BdrvDirtyBitmap *on = bdrv_find_dirty_bitmap(c.bs, "on");
    BdrvDirtyBitmap *off = bdrv_find_dirty_bitmap(c.bs, "off");
    keep = bdrv_find_dirty_bitmap(c.bs, "keep");
    assert_non_null(on);
    assert_non_null(off);
    assert_non_null(keep);
    assert_false(bdrv_dirty_bitmap_inconsistent(on));
    assert_false(bdrv_dirty_bitmap_inconsistent(off));
    assert_int_equal(bdrv_dirty_bitmap_count(on), VSIZE);
    assert_int_equal(bdrv_dirty_bitmap_count(off), VSIZE);
    assert_true(bdrv_dirty_bitmap_enabled(on));
    assert_false(bdrv_dirty_bitmap_enabled(off));
    assert_int_equal(bdrv_dirty_bitmap_count(keep), 65536);
    g_free(s);
    s = info_str(&c);
    assert_string_equal(s, "on/4096:auto off/512: keep/65536:auto");
    /* nothing left to repair (and the node is read-only anyway) */
    close_img(&c);
    open_img(&c, false);
    c.err = NULL;
    coroutine_run_sync(repair_co, &c);
    assert_int_equal(c.ret, 0);
    close_img(&c);
    run_cmd("qemu-img check -q %s", img);

    unlink(img);
    unlink(live);
    rmdir(dir);
}

/* An image without bitmaps lists none and has nothing to repair. */
static void test_no_bitmaps(void **state)
{
    if (!g_file_test("/usr/bin/qemu-img", G_FILE_TEST_IS_EXECUTABLE)) {
        skip();
    }
    g_autofree char *dir = g_dir_make_tmp("test-qcow2-bm-repair-XXXXXX", NULL);
    g_autofree char *img = g_build_filename(dir, "plain.qcow2", NULL);
    run_cmd("qemu-img create -q -f qcow2 %s 1M", img);
    Ctx c = { .img = img };
    open_img(&c, false);
    g_autofree char *s = info_str(&c);
    assert_string_equal(s, "");
    c.err = NULL;
    coroutine_run_sync(repair_co, &c);
    assert_int_equal(c.ret, 0);
    close_img(&c);
    run_cmd("qemu-img check -q %s", img);
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
        cmocka_unit_test(test_repair),
        cmocka_unit_test(test_no_bitmaps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
