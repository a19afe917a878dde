/*
 * block-commit's (and block-stream's) lookup of a chain's image by file
 * name, bdrv_find_backing_image(): a chain top -> mid -> base of format
 * nodes over real files, whose headers name their backing files
 * relatively, absolutely, through a symbolic link or with a protocol.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/block_int.h"
#include "test-helpers.h"

/* A format with a `file` and a backing child and no I/O of its own: the
 * lookup only looks at names and edges. */
static const BlockDriver test_fmt = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "test-fmt",
    .is_format = true,
    .supports_backing = true,
};

typedef struct Chain {
    char *dir;
    BlockDriverState *base, *mid, *top; /* format nodes */
} Chain;

static char *path_in(const Chain *c, const char *name)
{
    return g_build_filename(c->dir, name, NULL);
}

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

/* A format node over the file `name` of the chain's directory, whose
 * header names `backing_name` (NULL: none) and whose backing child is
 * `backing`. */
static BlockDriverState *layer(Chain *c, const char *name,
                               const char *backing_name,
                               BlockDriverState *backing)
{
    g_autofree char *path = path_in(c, name);
    touch(path);
    g_autofree char *opts =
        g_strdup_printf("driver=file,filename=%s,read-only=on", path);
    BlockDriverState *file = test_open_node(opts);
    GError *err = NULL;
    BlockDriverState *bs = bdrv_new_open_driver(&test_fmt, NULL, 0, &err);
    assert_null(err);
    assert_non_null(bdrv_attach_child(bs, file, "file",
                                      BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY,
                                      &err));
    assert_null(err);
    bdrv_unref(file); /* the edge holds it */
    if (backing_name) {
        g_strlcpy(bs->backing_file, backing_name, sizeof(bs->backing_file));
    }
    if (backing) {
        assert_non_null(
            bdrv_attach_child(bs, backing, "backing", BDRV_CHILD_COW, &err));
        assert_null(err);
    }
    bdrv_refresh_filename(bs);
    return bs;
}

static int setup(void **state)
{
    Chain *c = g_new0(Chain, 1);
    GError *err = NULL;
    c->dir = test_tmpdir_new("test-commit", &err);
    assert_non_null(c->dir);
    g_autofree char *mid_abs = path_in(c, "mid.img");
    g_autofree char *link = path_in(c, "link-mid.img");
    c->base = layer(c, "base.img", NULL, NULL);
    /* mid's header names base relatively, top's names mid absolutely */
    c->mid = layer(c, "mid.img", "base.img", c->base);
    c->top = layer(c, "top.img", mid_abs, c->mid);
    assert_int_equal(symlink("mid.img", link), 0);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    Chain *c = *state;
    /* top holds mid holds base through the edges */
    bdrv_unref(c->top);
    bdrv_unref(c->mid);
    bdrv_unref(c->base);
    test_tmpdir_remove(c->dir);
    g_free(c->dir);
    g_free(c);
    return 0;
}

static void test_absolute_and_relative(void **state)
{
    Chain *c = *state;
    g_autofree char *mid_abs = path_in(c, "mid.img");
    g_autofree char *base_abs = path_in(c, "base.img");
    /* relative names are taken from the directory of the layer whose
     * header is compared, absolute ones as they are */
    assert_ptr_equal(bdrv_find_backing_image(c->top, "mid.img"), c->mid);
    assert_ptr_equal(bdrv_find_backing_image(c->top, mid_abs), c->mid);
    assert_ptr_equal(bdrv_find_backing_image(c->top, "base.img"), c->base);
    assert_ptr_equal(bdrv_find_backing_image(c->top, base_abs), c->base);
    assert_ptr_equal(bdrv_find_backing_image(c->mid, "base.img"), c->base);
}

static void test_canonical(void **state)
{
    Chain *c = *state;
    g_autofree char *dotted = g_strdup_printf("%s/./sub/../base.img", c->dir);
    g_autofree char *sub = path_in(c, "sub");
    assert_int_equal(mkdir(sub, 0700), 0);
    /* both sides are canonicalised: "." and "..", symbolic links */
    assert_ptr_equal(bdrv_find_backing_image(c->top, dotted), c->base);
    assert_ptr_equal(bdrv_find_backing_image(c->top, "link-mid.img"),
                     c->mid);
    assert_ptr_equal(bdrv_find_backing_image(c->top, "./mid.img"), c->mid);
    rmdir(sub);
}

static void test_not_found(void **state)
{
    Chain *c = *state;
    /* the node the search starts at is never an answer, nor anything
     * above it, nor a name that is not in the chain */
    assert_null(bdrv_find_backing_image(c->top, "top.img"));
    assert_null(bdrv_find_backing_image(c->mid, "mid.img"));
    assert_null(bdrv_find_backing_image(c->mid, "top.img"));
    assert_null(bdrv_find_backing_image(c->top, "nonexistent.img"));
    assert_null(bdrv_find_backing_image(c->base, "base.img"));
    assert_null(bdrv_find_backing_image(c->top, NULL));
    assert_null(bdrv_find_backing_image(NULL, "mid.img"));
}

static void test_protocol(void **state)
{
    Chain *c = *state;
    /* a header naming a protocol is compared as a string */
    char saved[sizeof(c->mid->backing_file)];
    memcpy(saved, c->mid->backing_file, sizeof(saved));
    g_strlcpy(c->mid->backing_file, "nbd:unix:/tmp/x.sock:exportname=b",
              sizeof(c->mid->backing_file));
    assert_ptr_equal(
        bdrv_find_backing_image(c->top, "nbd:unix:/tmp/x.sock:exportname=b"),
        c->base);
    assert_null(bdrv_find_backing_image(c->top, "base.img"));
    assert_null(bdrv_find_backing_image(c->top, "nbd:unix:/tmp/y.sock"));
    memcpy(c->mid->backing_file, saved, sizeof(saved));
}

int main(void)
{
    test_aio_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_absolute_and_relative, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_canonical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protocol, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
