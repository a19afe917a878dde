/*
 * Unit tests for block permissions and graph rules: conflicts name both
 * users, a failed update leaves every permission as it was (including the
 * driver's view), read-only nodes refuse writers, relaxing works, nodes
 * with users cannot be deleted, and the graph-mod counter blocks changes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <glib.h>

#include "block/block_int.h"
#include "tests/unit/test-helpers.h"
#include "util/aio.h"

/* ---- helpers ---- */

/* blockdev-del; *msg gets the error message or NULL (caller frees). */
static int del_node(BlockDriverState *bs, char **msg)
{
    GError *err = NULL;
    int ret = test_blockdev_del(bs, &err);
    if (msg) {
        *msg = err ? g_strdup(err->message) : NULL;
    }
    g_clear_error(&err);
    return ret;
}

static BlockBackend *new_blk(BlockDriverState *bs, uint64_t perm,
                             uint64_t shared, const char *desc, char **msg)
{
    BlockBackend *blk = blk_new(perm, shared);
    GError *err = NULL;
    if (desc) {
        blk_set_user_desc(blk, desc);
    }
    if (blk_insert_bs(blk, bs, &err) < 0) {
        if (msg) {
            *msg = g_strdup(err->message);
        }
        g_error_free(err);
        blk_unref(blk);
        return NULL;
    }
    if (msg) {
        *msg = NULL;
    }
    return blk;
}

static int count_parents(BlockDriverState *bs)
{
    int n = 0;
    BdrvChild *c;
    LIST_FOREACH (c, &bs->parents, next_parent) {
        n++;
    }
    return n;
}

/* Delete every monitor-owned node, newest first (test teardown). */
static int teardown(void **state)
{
    bdrv_close_all();
    assert_null(bdrv_next_node(NULL));
    return 0;
}

/* ---- a test driver whose check_perm can fail (stands in for null-aio) */

static struct {
    bool fail_write;
    int checks, sets, aborts;
    uint64_t set_perm;
} pd;

static int coroutine_fn pd_open(BlockDriverState *bs,
                                const BlockdevOptions *opts, GError **errp)
{
    bs->total_bytes =
        opts->u.null_aio.has_size ? opts->u.null_aio.size : 1 << 20;
    return 0;
}

static int pd_check_perm(BlockDriverState *bs, uint64_t perm, uint64_t shared,
                         GError **errp)
{
    pd.checks++;
    if (pd.fail_write && (perm & BLK_PERM_WRITE)) {
        error_setg(errp, "Failed to get \"write\" lock");
        return -EAGAIN;
    }
    return 0;
}

static void pd_set_perm(BlockDriverState *bs, uint64_t perm, uint64_t shared)
{
    pd.sets++;
    pd.set_perm = perm;
}

static void pd_abort(BlockDriverState *bs)
{
    pd.aborts++;
}

static const BlockDriver permdrv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-aio",
    .driver = BLOCKDEV_DRIVER_NULL_AIO,
    .bdrv_open = pd_open,
    .bdrv_check_perm = pd_check_perm,
    .bdrv_set_perm = pd_set_perm,
    .bdrv_abort_perm_update = pd_abort,
};

/* ---- tests ---- */

static void test_perm_names(void **state)
{
    g_autofree char *a = bdrv_perm_names(BLK_PERM_ALL);
    g_autofree char *b = bdrv_perm_names(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    g_autofree char *c = bdrv_perm_names(0);
    assert_string_equal(a, "consistent read, write, write unchanged, resize");
    assert_string_equal(b, "write, resize");
    assert_string_equal(c, "");
}

static void test_two_writers_conflict(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    char *msg;
    BlockBackend *e0 =
        new_blk(n0, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                BLK_PERM_CONSISTENT_READ, "block export 'e0'", &msg);
    assert_non_null(e0);
    BlockBackend *e1 = new_blk(n0, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                               BLK_PERM_ALL, "block export 'e1'", &msg);
    assert_null(e1);
    /* The new user's write is not shared by the existing one. */
    assert_string_equal(
        msg, "Permission conflict on node 'n0': permissions 'write' are both "
             "required by block export 'e1' (uses node 'n0' as 'root' child) "
             "and unshared by block export 'e0' (uses node 'n0' as 'root' "
             "child).");
    g_free(msg);
    assert_int_equal(count_parents(n0), 1);
    assert_int_equal(n0->perm, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);

    /* Unnamed backends are described as QEMU does. */
    BlockBackend *r = new_blk(n0, BLK_PERM_RESIZE, BLK_PERM_ALL, NULL, &msg);
    assert_null(r);
    assert_non_null(strstr(msg, "required by an unnamed block device (uses "
                                "node 'n0' as 'root' child)"));
    assert_non_null(strstr(msg, "permissions 'resize'"));
    g_free(msg);
    blk_unref(e0);
    assert_int_equal(n0->perm, 0);
    assert_int_equal(n0->shared_perm, BLK_PERM_ALL);
}

static void test_node_parent_conflict(void **state)
{
    /* raw with a window: its file edge does not share resize. */
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *r0 =
        test_open_owned("driver=raw,node-name=r0,file=n0,offset=512,size=1024");
    char *msg;
    BlockBackend *b = new_blk(n0, BLK_PERM_RESIZE, BLK_PERM_ALL, NULL, &msg);
    assert_null(b);
    assert_string_equal(
        msg, "Permission conflict on node 'n0': permissions 'resize' are "
             "both required by an unnamed block device (uses node 'n0' as "
             "'root' child) and unshared by node 'r0' (uses node 'n0' as "
             "'file' child).");
    g_free(msg);
    /* nobody reads through r0 yet: a data child needs nothing */
    assert_int_equal(r0->file->perm, 0);
    assert_false(r0->file->shared_perm & BLK_PERM_RESIZE);
}

static void test_abort_restores(void **state)
{
    bdrv_register_test_driver(&permdrv);
    memset(&pd, 0, sizeof(pd));
    BlockDriverState *p0 = test_open_owned("driver=null-aio,node-name=p0");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=p0");
    BlockBackend *reader = new_blk(r0, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                   "block export 'rd'", NULL);
    assert_non_null(reader);
    uint64_t edge_perm = r0->file->perm, edge_shared = r0->file->shared_perm;
    uint64_t p0_perm = p0->perm, p0_shared = p0->shared_perm;
    uint64_t r0_perm = r0->perm, r0_shared = r0->shared_perm;
    int sets = pd.sets;

    /* The driver at the bottom refuses: everything rolls back.  A driver
     * whose check failed has already undone its own state, so it gets
     * neither set_perm nor abort_perm_update (as in QEMU). */
    pd.fail_write = true;
    char *msg;
    BlockBackend *w = new_blk(r0, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                              BLK_PERM_ALL, "block export 'wr'", &msg);
    assert_null(w);
    assert_string_equal(msg, "Failed to get \"write\" lock");
    g_free(msg);
    assert_int_equal(pd.aborts, 0);
    assert_int_equal(pd.sets, sets);
    assert_int_equal(r0->file->perm, edge_perm);
    assert_int_equal(r0->file->shared_perm, edge_shared);
    assert_int_equal(p0->perm, p0_perm);
    assert_int_equal(p0->shared_perm, p0_shared);
    assert_int_equal(r0->perm, r0_perm);
    assert_int_equal(r0->shared_perm, r0_shared);
    assert_int_equal(count_parents(r0), 1);

    /* Changing an existing user's perms fails the same way. */
    GError *err = NULL;
    assert_true(blk_set_perm(reader, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                             BLK_PERM_ALL, &err) < 0);
    g_clear_error(&err);
    uint64_t perm, shared;
    blk_get_perm(reader, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ);
    assert_int_equal(blk_root(reader)->perm, BLK_PERM_CONSISTENT_READ);
    assert_int_equal(r0->file->perm, edge_perm);

    /* Once the driver agrees, the commit reaches it. */
    pd.fail_write = false;
    w = new_blk(r0, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, BLK_PERM_ALL,
                "block export 'wr'", NULL);
    assert_non_null(w);
    assert_true(pd.set_perm & BLK_PERM_WRITE);
    assert_true(r0->file->perm & BLK_PERM_WRITE);
    blk_unref(w);
    assert_false(pd.set_perm & BLK_PERM_WRITE);
    blk_unref(reader);
    bdrv_unregister_test_driver(&permdrv);
}

static void test_read_only(void **state)
{
    BlockDriverState *n0 =
        test_open_owned("driver=null-co,node-name=n0,read-only=on");
    char *msg;
    assert_null(new_blk(n0, BLK_PERM_WRITE, BLK_PERM_ALL, NULL, &msg));
    assert_string_equal(msg, "Block node is read-only");
    g_free(msg);
    /* write-unchanged is a write too */
    assert_null(
        new_blk(n0, BLK_PERM_WRITE_UNCHANGED, BLK_PERM_ALL, NULL, &msg));
    g_free(msg);
    /* a writable raw over it opens (nobody writes yet) ... */
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=n0");
    assert_false(bdrv_is_read_only(r0));
    /* ... but a writer on top fails at the bottom, changing nothing */
    assert_null(new_blk(r0, BLK_PERM_WRITE, BLK_PERM_ALL, NULL, &msg));
    assert_string_equal(msg, "Block node is read-only");
    g_free(msg);
    assert_int_equal(r0->perm, 0);
    assert_int_equal(r0->file->perm, 0);
    /* readers and resizers are fine */
    BlockBackend *b =
        new_blk(r0, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, NULL, NULL);
    assert_non_null(b);
    blk_unref(b);
    /* generic option rules */
    msg = test_open_error("driver=null-co,node-name=x,force-share=on");
    assert_string_equal(msg, "force-share=on can only be used with read-only "
                             "images");
    g_free(msg);
    msg = test_open_error("driver=null-co,node-name=x,detect-zeroes=unmap");
    assert_string_equal(msg, "setting detect-zeroes to unmap is not allowed "
                             "without setting discard operation to unmap");
    g_free(msg);
    /* children inherit read-only */
    BlockDriverState *r1 =
        test_open_owned("driver=raw,node-name=r1,read-only=on,"
                        "file.driver=null-co,file.node-name=c1");
    assert_true(bdrv_is_read_only(r1->file->bs));
}

static void test_force_share(void **state)
{
    BlockDriverState *n0 = test_open_owned(
        "driver=null-co,node-name=n0,read-only=on,force-share=on");
    /* A format above shares everything with others on a force-share
     * node, even write it would normally forbid. */
    test_open_owned("driver=raw,node-name=r0,read-only=on,file=n0,size=4096");
    BdrvChild *c = LIST_FIRST(&n0->parents);
    assert_int_equal(c->shared_perm, BLK_PERM_ALL);
}

static void test_relax(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=n0");
    BlockBackend *w = new_blk(r0, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                              BLK_PERM_CONSISTENT_READ, NULL, NULL);
    assert_non_null(w);
    assert_int_equal(r0->file->perm, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    assert_int_equal(r0->file->shared_perm, BLK_PERM_CONSISTENT_READ);
    char *msg;
    assert_null(new_blk(n0, BLK_PERM_WRITE, BLK_PERM_ALL, NULL, &msg));
    g_free(msg);
    /* Relax the user: the filter edge and node follow. */
    GError *err = NULL;
    assert_int_equal(
        blk_set_perm(w, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, &err), 0);
    assert_int_equal(r0->file->perm, BLK_PERM_CONSISTENT_READ);
    assert_int_equal(r0->file->shared_perm, BLK_PERM_ALL);
    assert_int_equal(n0->perm, BLK_PERM_CONSISTENT_READ);
    BlockBackend *w2 = new_blk(n0, BLK_PERM_WRITE, BLK_PERM_ALL, NULL, NULL);
    assert_non_null(w2);
    blk_unref(w2);
    blk_unref(w);
    assert_int_equal(n0->perm, 0);
}

static void test_default_perms(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *ro =
        test_open_owned("driver=null-co,node-name=ro,read-only=on");
    uint64_t p, s;
    /* a writable format's metadata child: write+resize even unasked */
    bdrv_default_perms(n0, NULL, BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, 0,
                       BLK_PERM_ALL, &p, &s);
    assert_int_equal(p, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                            BLK_PERM_RESIZE);
    assert_int_equal(s, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
    bdrv_default_perms(ro, NULL, BDRV_CHILD_IMAGE, 0, BLK_PERM_ALL, &p, &s);
    assert_int_equal(p, BLK_PERM_CONSISTENT_READ);
    /* backing: only consistent read; others may write only if the parent
     * copes with changing data */
    bdrv_default_perms(n0, NULL, BDRV_CHILD_COW,
                       BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                       BLK_PERM_CONSISTENT_READ, &p, &s);
    assert_int_equal(p, BLK_PERM_CONSISTENT_READ);
    assert_int_equal(s, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
    bdrv_default_perms(n0, NULL, BDRV_CHILD_COW, BLK_PERM_CONSISTENT_READ,
                       BLK_PERM_ALL, &p, &s);
    assert_int_equal(s, BLK_PERM_ALL);
    /* filters pass everything through */
    bdrv_default_perms(n0, NULL, BDRV_CHILD_FILTERED, BLK_PERM_WRITE,
                       BLK_PERM_CONSISTENT_READ, &p, &s);
    assert_int_equal(p, BLK_PERM_WRITE);
    assert_int_equal(s, BLK_PERM_CONSISTENT_READ);
    /* data: writes may grow the file, so resize comes with write */
    bdrv_default_perms(n0, NULL, BDRV_CHILD_DATA, BLK_PERM_WRITE_UNCHANGED,
                       BLK_PERM_ALL, &p, &s);
    assert_int_equal(p, BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE |
                            BLK_PERM_RESIZE);
    assert_false(s & BLK_PERM_RESIZE);
}

static void test_delete_refused(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=n0");
    BlockDriverState *r1 = test_open_owned(
        "driver=raw,node-name=r1,file.driver=null-co,file.node-name=c1");
    char *msg;
    assert_true(del_node(n0, &msg) < 0);
    assert_string_equal(msg, "Block device n0 is in use");
    g_free(msg);
    BlockBackend *b =
        new_blk(r0, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, NULL, NULL);
    assert_true(del_node(r0, &msg) < 0);
    assert_string_equal(msg, "Node r0 is in use");
    g_free(msg);
    assert_true(del_node(r1->file->bs, &msg) < 0);
    assert_string_equal(msg, "Node c1 is not owned by the monitor");
    g_free(msg);
    blk_unref(b);
    assert_int_equal(del_node(r0, NULL), 0);
    assert_null(bdrv_find_node("r0"));
    assert_int_equal(del_node(n0, NULL), 0);
    assert_null(bdrv_find_node("n0"));
    assert_int_equal(del_node(r1, NULL), 0);
    /* the inline child went with its parent */
    assert_null(bdrv_find_node("c1"));
}

static void test_names(void **state)
{
    char *msg;
    test_open_owned("driver=null-co,node-name=n0");
    msg = test_open_error("driver=null-co,node-name=n0");
    assert_string_equal(msg, "Duplicate nodes with node-name='n0'");
    g_free(msg);
    msg = test_open_error("driver=null-co,node-name=1abc");
    assert_string_equal(msg, "Invalid node-name: '1abc'");
    g_free(msg);
    msg = test_open_error(
        "driver=null-co,node-name=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_string_equal(msg, "Node name too long");
    g_free(msg);
    /* an inline child may not take its parent's name */
    msg = test_open_error("driver=raw,node-name=z5,file.driver=null-co,"
                          "file.node-name=z5");
    assert_string_equal(msg, "Duplicate nodes with node-name='z5'");
    g_free(msg);
    assert_null(bdrv_find_node("z5"));
    msg = test_open_error("driver=raw,node-name=z6,file=nonexist");
    assert_string_equal(msg, "Cannot find device='nonexist' nor "
                             "node-name='nonexist'");
    g_free(msg);
    /* generated names for inline children; children register first */
    BlockDriverState *r =
        test_open_owned("driver=raw,node-name=r,file.driver=null-co");
    const char *cn = r->file->bs->node_name;
    assert_true(g_str_has_prefix(cn, "#block"));
    BlockDriverState *first = NULL;
    for (BlockDriverState *bs = bdrv_next_node(NULL); bs;
         bs = bdrv_next_node(bs)) {
        if (bs == r || bs == r->file->bs) {
            first = first ? first : bs;
        }
    }
    assert_ptr_equal(first, r->file->bs);
    assert_string_equal(r->filename, "null-co://");
}

static void test_graph_mod(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *n1 = test_open_owned("driver=null-co,node-name=n1");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=n0");
    BdrvChild *edge = r0->file;
    bdrv_child_graph_mod_inc(edge, "job0");
    GError *err = NULL;
    assert_false(bdrv_child_graph_mod_check(edge, &err));
    assert_string_equal(err->message, "Node 'n0' is busy: block device is in "
                                      "use by block job: job0");
    g_clear_error(&err);
    assert_true(bdrv_replace_node(n0, n1, &err) < 0);
    assert_non_null(strstr(err->message, "job0"));
    g_clear_error(&err);
    assert_ptr_equal(r0->file->bs, n0);
    /* detaching is refused too */
    bdrv_unref_child(r0, edge);
    assert_ptr_equal(r0->file, edge);
    /* blockdev-del of the child names the job */
    char *msg;
    assert_true(del_node(n0, &msg) < 0);
    g_free(msg);

    bdrv_child_graph_mod_dec(edge);
    assert_true(bdrv_child_graph_mod_check(edge, NULL));
    assert_int_equal(bdrv_replace_node(n0, n1, &err), 0);
    assert_null(err);
    assert_ptr_equal(r0->file->bs, n1);
    assert_int_equal(count_parents(n0), 0);
    assert_int_equal(count_parents(n1), 1);
    assert_int_equal(del_node(n0, NULL), 0);
}

static void test_replace_keeps_perms(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *n1 =
        test_open_owned("driver=null-co,node-name=n1,read-only=on");
    BlockDriverState *r0 = test_open_owned("driver=raw,node-name=r0,file=n0");
    BlockBackend *w = new_blk(r0, BLK_PERM_WRITE, BLK_PERM_ALL, NULL, NULL);
    assert_non_null(w);
    GError *err = NULL;
    /* n1 is read-only: the writer cannot move there; nothing changes */
    assert_true(bdrv_replace_node(n0, n1, &err) < 0);
    assert_string_equal(err->message, "Block node is read-only");
    g_clear_error(&err);
    assert_ptr_equal(r0->file->bs, n0);
    assert_int_equal(n0->perm, BLK_PERM_WRITE);
    assert_int_equal(n1->perm, 0);
    assert_int_equal(count_parents(n1), 0);
    blk_unref(w);
}

int main(void)
{
    test_aio_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_perm_names),
        cmocka_unit_test_teardown(test_two_writers_conflict, teardown),
        cmocka_unit_test_teardown(test_node_parent_conflict, teardown),
        cmocka_unit_test_teardown(test_abort_restores, teardown),
        cmocka_unit_test_teardown(test_read_only, teardown),
        cmocka_unit_test_teardown(test_force_share, teardown),
        cmocka_unit_test_teardown(test_relax, teardown),
        cmocka_unit_test_teardown(test_default_perms, teardown),
        cmocka_unit_test_teardown(test_delete_refused, teardown),
        cmocka_unit_test_teardown(test_names, teardown),
        cmocka_unit_test_teardown(test_graph_mod, teardown),
        cmocka_unit_test_teardown(test_replace_keeps_perms, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
