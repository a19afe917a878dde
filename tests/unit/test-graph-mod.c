/*
 * Unit tests for the graph-mod counter and the blockdev-reopen
 * transaction: the counter nests and names its holders, and blocks
 * detaching or replacing the edge (set_backing_hd, blockdev-reopen of
 * `backing`) until released; a reopen is all or nothing (a failing node
 * aborts the ones already prepared, nothing changes); during a reopen
 * every node holds the union of its old and new permissions and shares
 * only what both share, and the final switch only relaxes (a failure
 * there is logged, not reported); a later entry sees the links earlier
 * ones set.
 *
 * Two in-memory test drivers stand in for null-co (a leaf that records
 * the permission checks it sees and the reopen hooks called) and qcow2
 * (a format with `file` and `backing` children and the default
 * permissions, so a writable node writes its file).
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
#include "qapi/qapi-commands.h"
#include "tests/unit/test-helpers.h"
#include "tests/unit/test-memfmt.h"

/* ---- a recording leaf (the null-co slot) ---- */

typedef struct LeafLog {
    GString *calls;       /* "prepare(n0) commit(n0) ..." */
    GArray *perms;        /* uint64_t pairs (perm, shared) checked on n0 */
    char *fail_prepare;   /* node-name whose prepare fails */
    bool fail_next_check; /* set by n0's commit: the relaxing check fails */
} LeafLog;

static LeafLog lg;

static void log_reset(void)
{
    if (lg.calls) {
        g_string_free(lg.calls, TRUE);
    }
    if (lg.perms) {
        g_array_free(lg.perms, TRUE);
    }
    g_free(lg.fail_prepare);
    memset(&lg, 0, sizeof(lg));
    lg.calls = g_string_new(NULL);
    lg.perms = g_array_new(FALSE, FALSE, sizeof(uint64_t));
}

static void log_call(const char *what, BlockDriverState *bs)
{
    g_string_append_printf(lg.calls, "%s%s(%s)", lg.calls->len ? " " : "",
                           what, bs->node_name);
}

static int coroutine_fn leaf_open(BlockDriverState *bs,
                                  const BlockdevOptions *opts, GError **errp)
{
    const BlockdevOptionsNull *o = &opts->u.null_co;
    bs->total_bytes = o->has_size ? o->size : 1 << 20;
    g_strlcpy(bs->filename, "leaf", sizeof(bs->filename));
    return 0;
}

static int leaf_check_perm(BlockDriverState *bs, uint64_t perm,
                           uint64_t shared, GError **errp)
{
    if (strcmp(bs->node_name, "n0")) {
        return 0;
    }
    if (lg.fail_next_check) {
        lg.fail_next_check = false;
        error_setg(errp, "Failed to unlock byte 101");
        return -EIO;
    }
    g_array_append_val(lg.perms, perm);
    g_array_append_val(lg.perms, shared);
    return 0;
}

static const char *const leaf_opts[] = {"size", NULL};

static int coroutine_fn leaf_reopen_prepare(BDRVReopenState *state,
                                            GError **errp)
{
    log_call("prepare", state->bs);
    if (!g_strcmp0(lg.fail_prepare, state->bs->node_name)) {
        error_setg(errp, "prepare of '%s' fails", state->bs->node_name);
        return -EIO;
    }
    return 0;
}

static void leaf_reopen_commit(BDRVReopenState *state)
{
    log_call("commit", state->bs);
    if (!strcmp(state->bs->node_name, "n0") && lg.fail_prepare &&
        !strcmp(lg.fail_prepare, "relax")) {
        lg.fail_next_check = true;
    }
}

static void leaf_reopen_abort(BDRVReopenState *state)
{
    log_call("abort", state->bs);
}

static const BlockDriver leafdrv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-co",
    .driver = BLOCKDEV_DRIVER_NULL_CO,
    .bdrv_open = leaf_open,
    .bdrv_check_perm = leaf_check_perm,
    .reopen_opts = leaf_opts,
    .mutable_opts = leaf_opts,
    .bdrv_reopen_prepare = leaf_reopen_prepare,
    .bdrv_reopen_commit = leaf_reopen_commit,
    .bdrv_reopen_abort = leaf_reopen_abort,
};

/* ---- a format with file and backing (the qcow2 slot) ---- */

static int coroutine_fn fmt_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    /* backing: a node-name (or null) is all these tests use */
    int ret = test_fmt_open_children(bs, opts, errp);
    if (ret < 0) {
        return ret;
    }
    bs->total_bytes = bs->file->bs->total_bytes;
    return 0;
}

static int coroutine_fn fmt_reopen_prepare(BDRVReopenState *state,
                                           GError **errp)
{
    log_call("prepare", state->bs);
    return 0;
}

static void fmt_reopen_commit(BDRVReopenState *state)
{
    log_call("commit", state->bs);
}

static void fmt_reopen_abort(BDRVReopenState *state)
{
    log_call("abort", state->bs);
}

static const BlockDriver fmtdrv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "qcow2",
    .driver = BLOCKDEV_DRIVER_QCOW2,
    .is_format = true,
    .supports_backing = true,
    .bdrv_open = fmt_open,
    .bdrv_reopen_prepare = fmt_reopen_prepare,
    .bdrv_reopen_commit = fmt_reopen_commit,
    .bdrv_reopen_abort = fmt_reopen_abort,
};

/* ---- helpers ---- */

typedef struct ReopenCo {
    q_obj_blockdev_reopen_arg arg;
    GError *err;
} ReopenCo;

static void coroutine_fn reopen_co(void *opaque)
{
    ReopenCo *r = opaque;
    qmp_blockdev_reopen(&r->arg, &r->err);
}

/* blockdev-reopen with options as JSON (a list); the error message or
 * NULL (caller frees). */
static char *reopen(const char *json)
{
    GError *err = NULL;
    JsonNode *node = json_from_string(json, &err);
    assert_non_null(node);
    ReopenCo r = {0};
    r.arg.options = qapi_BlockdevOptionsList_from_json(node, false, &err);
    json_node_unref(node);
    if (!r.arg.options) {
        fail_msg("options '%s': %s", json, err->message);
    }
    coroutine_run_sync(reopen_co, &r);
    qapi_free_BlockdevOptionsList(r.arg.options);
    char *msg = r.err ? g_strdup(r.err->message) : NULL;
    g_clear_error(&r.err);
    return msg;
}

static void assert_reopen_ok(const char *json)
{
    char *msg = reopen(json);
    if (msg) {
        fail_msg("reopen '%s': %s", json, msg);
    }
}

static void assert_reopen_fails(const char *json, const char *expected)
{
    char *msg = reopen(json);
    if (!msg) {
        fail_msg("reopen '%s' succeeded", json);
    }
    assert_string_equal(msg, expected);
    g_free(msg);
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

/* The chain t -> m -> b of test formats over leaves tf, mf, bf. */
static void open_chain(void)
{
    test_open_owned("driver=null-co,node-name=bf");
    test_open_owned("driver=null-co,node-name=mf");
    test_open_owned("driver=null-co,node-name=tf");
    test_open_owned("driver=qcow2,node-name=b,file=bf");
    test_open_owned("driver=qcow2,node-name=m,file=mf,backing=b");
    test_open_owned("driver=qcow2,node-name=t,file=tf,backing=m");
}

static int setup(void **state)
{
    log_reset();
    return 0;
}

static int teardown(void **state)
{
    bdrv_close_all();
    assert_null(bdrv_next_node(NULL));
    return 0;
}

/* ---- the counter ---- */

static void test_counter(void **state)
{
    open_chain();
    BlockDriverState *t = bdrv_find_node("t");
    BdrvChild *edge = t->backing;
    GError *err = NULL;

    assert_true(bdrv_child_graph_mod_check(edge, NULL));
    bdrv_child_graph_mod_inc(edge, "commit");
    bdrv_child_graph_mod_inc(edge, "stream");
    bdrv_child_graph_mod_inc(edge, "commit");
    assert_int_equal(edge->graph_mod_count, 3);
    assert_false(bdrv_child_graph_mod_check(edge, &err));
    /* each holder named once */
    assert_string_equal(err->message, "Node 'm' is busy: block device is "
                                      "in use by block job: commit, stream");
    g_clear_error(&err);

    /* nothing detaches or replaces the edge while it is held */
    assert_true(bdrv_set_backing_hd(t, bdrv_find_node("b"), &err) < 0);
    assert_non_null(strstr(err->message, "commit"));
    g_clear_error(&err);
    assert_true(bdrv_set_backing_hd(t, NULL, &err) < 0);
    g_clear_error(&err);
    assert_ptr_equal(t->backing, edge);
    assert_ptr_equal(edge->bs, bdrv_find_node("m"));

    bdrv_child_graph_mod_dec(edge);
    bdrv_child_graph_mod_dec(edge);
    assert_false(bdrv_child_graph_mod_check(edge, NULL));
    bdrv_child_graph_mod_dec(edge);
    assert_true(bdrv_child_graph_mod_check(edge, NULL));
    /* more releases than holds: no effect */
    bdrv_child_graph_mod_dec(edge);
    assert_int_equal(edge->graph_mod_count, 0);
    assert_int_equal(bdrv_set_backing_hd(t, bdrv_find_node("b"), &err), 0);
    assert_ptr_equal(bdrv_backing_bs(t), bdrv_find_node("b"));
}

/* ---- reopen of backing against the counter ---- */

static void test_reopen_frozen(void **state)
{
    open_chain();
    BlockDriverState *t = bdrv_find_node("t");
    BlockDriverState *m = bdrv_find_node("m");
    BdrvChild *tm = t->backing, *mb = m->backing;
    bdrv_child_graph_mod_inc(tm, "commit");
    bdrv_child_graph_mod_inc(mb, "commit");

    /* QEMU's words for a link a job holds */
    assert_reopen_fails("[{\"driver\": \"qcow2\", \"node-name\": \"t\", "
                        "\"file\": \"tf\", \"backing\": \"b\"}]",
                        "Cannot change frozen 'backing' link from 't' to "
                        "'m'");
    assert_reopen_fails("[{\"driver\": \"qcow2\", \"node-name\": \"m\", "
                        "\"file\": \"mf\", \"backing\": null}]",
                        "Cannot change frozen 'backing' link from 'm' to "
                        "'b'");
    /* naming the same node changes nothing: allowed */
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"t\", "
                     "\"file\": \"tf\", \"backing\": \"m\"}]");
    assert_ptr_equal(t->backing, tm);
    assert_int_equal(tm->graph_mod_count, 1);

    /* released: the link may change */
    bdrv_child_graph_mod_dec(tm);
    bdrv_child_graph_mod_dec(mb);
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"t\", "
                     "\"file\": \"tf\", \"backing\": \"b\"}]");
    assert_ptr_equal(bdrv_backing_bs(t), bdrv_find_node("b"));
    /* m lost its only parent edge; b has two now */
    assert_int_equal(count_parents(m), 0);
    assert_int_equal(count_parents(bdrv_find_node("b")), 2);
}

/* ---- all or nothing ---- */

static void test_reopen_all_or_nothing(void **state)
{
    test_open_owned("driver=null-co,node-name=n0");
    test_open_owned("driver=null-co,node-name=n1");
    BlockDriverState *n0 = bdrv_find_node("n0");
    lg.fail_prepare = g_strdup("n1");
    assert_reopen_fails(
        "[{\"driver\": \"null-co\", \"node-name\": \"n0\", "
        "\"read-only\": true, \"detect-zeroes\": \"on\"}, "
        "{\"driver\": \"null-co\", \"node-name\": \"n1\"}]",
        "prepare of 'n1' fails");
    /* n0 was prepared, then aborted; nothing was committed */
    assert_string_equal(lg.calls->str, "prepare(n0) prepare(n1) abort(n0)");
    assert_false(n0->read_only);
    assert_int_equal(n0->detect_zeroes, BLOCKDEV_DETECT_ZEROES_OPTIONS_OFF);

    /* a failure after the drivers' prepare (an option that may not
     * change) aborts them all too */
    g_string_truncate(lg.calls, 0);
    g_clear_pointer(&lg.fail_prepare, g_free);
    assert_reopen_fails(
        "[{\"driver\": \"null-co\", \"node-name\": \"n0\", "
        "\"read-only\": true}, {\"driver\": \"null-co\", "
        "\"node-name\": \"n1\", \"latency-ns\": 5}]",
        "Cannot change the option 'latency-ns'");
    assert_string_equal(lg.calls->str,
                        "prepare(n0) prepare(n1) abort(n1) abort(n0)");
    assert_false(n0->read_only);

    g_string_truncate(lg.calls, 0);
    assert_reopen_ok("[{\"driver\": \"null-co\", \"node-name\": \"n0\", "
                     "\"read-only\": true, \"detect-zeroes\": \"on\"}, "
                     "{\"driver\": \"null-co\", \"node-name\": \"n1\"}]");
    /* committed children first, as QEMU */
    assert_string_equal(lg.calls->str,
                        "prepare(n0) prepare(n1) commit(n1) commit(n0)");
    assert_true(n0->read_only);
    assert_int_equal(n0->detect_zeroes, BLOCKDEV_DETECT_ZEROES_OPTIONS_ON);
}

/* ---- permissions: the union, then only relaxing ---- */

static bool logged(uint64_t perm_bits, bool want)
{
    for (guint i = 0; i + 1 < lg.perms->len; i += 2) {
        uint64_t p = g_array_index(lg.perms, uint64_t, i);
        if (!!(p & perm_bits) == want) {
            return true;
        }
    }
    return false;
}

static void test_reopen_perm_union(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    BlockDriverState *f = test_open_owned("driver=qcow2,node-name=f,file=n0");
    /* a writable format writes its file */
    assert_true(n0->perm & BLK_PERM_WRITE);

    /* read-only: the checks during the reopen still include write (the
     * union), and the last one (the new state) does not */
    g_array_set_size(lg.perms, 0);
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                     "\"file\": \"n0\", \"read-only\": true}, "
                     "{\"driver\": \"null-co\", \"node-name\": \"n0\", "
                     "\"read-only\": true}]");
    assert_true(lg.perms->len >= 4);
    assert_true(g_array_index(lg.perms, uint64_t, 0) & BLK_PERM_WRITE);
    assert_false(g_array_index(lg.perms, uint64_t, lg.perms->len - 2) &
                 BLK_PERM_WRITE);
    assert_false(n0->perm & BLK_PERM_WRITE);
    assert_true(f->read_only && n0->read_only);

    /* read-write again: write is there from the first check on */
    g_array_set_size(lg.perms, 0);
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                     "\"file\": \"n0\"}, {\"driver\": \"null-co\", "
                     "\"node-name\": \"n0\"}]");
    assert_false(logged(BLK_PERM_WRITE, false));
    assert_true(n0->perm & BLK_PERM_WRITE);

    /* the format alone cannot be writable on a read-only leaf */
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                     "\"file\": \"n0\", \"read-only\": true}, "
                     "{\"driver\": \"null-co\", \"node-name\": \"n0\", "
                     "\"read-only\": true}]");
    assert_reopen_fails("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                        "\"file\": \"n0\"}]",
                        "Block node is read-only");
    assert_true(f->read_only);
    assert_false(n0->perm & BLK_PERM_WRITE);

    /* a writer above keeps a node from becoming read-only */
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                     "\"file\": \"n0\"}, {\"driver\": \"null-co\", "
                     "\"node-name\": \"n0\"}]");
    BlockBackend *w = test_rw_blk(f);
    assert_reopen_fails("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                        "\"file\": \"n0\", \"read-only\": true}]",
                        "Read-only block node 'f' cannot support read-write "
                        "users");
    assert_false(f->read_only);
    blk_unref(w);
}

static void test_reopen_relax_failure_logged(void **state)
{
    BlockDriverState *n0 = test_open_owned("driver=null-co,node-name=n0");
    test_open_owned("driver=qcow2,node-name=f,file=n0");
    /* n0's commit arms a failure of the next permission check: the one
     * that drops to the new permissions.  The reopen still succeeds and
     * the node keeps the wider permissions. */
    lg.fail_prepare = g_strdup("relax");
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"f\", "
                     "\"file\": \"n0\", \"read-only\": true}, "
                     "{\"driver\": \"null-co\", \"node-name\": \"n0\", "
                     "\"read-only\": true}]");
    assert_true(n0->read_only);
    assert_false(lg.fail_next_check);
}

/* ---- links within one transaction ---- */

static void test_reopen_links_in_order(void **state)
{
    open_chain();
    BlockDriverState *t = bdrv_find_node("t");
    BlockDriverState *m = bdrv_find_node("m");
    /* t lets go of m, then m goes above t: no cycle at any point */
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"t\", "
                     "\"file\": \"tf\", \"backing\": null}, "
                     "{\"driver\": \"qcow2\", \"node-name\": \"m\", "
                     "\"file\": \"mf\", \"backing\": \"t\"}]");
    assert_null(t->backing);
    assert_ptr_equal(bdrv_backing_bs(m), t);
    /* the other way round is a cycle when m is prepared */
    assert_reopen_fails("[{\"driver\": \"qcow2\", \"node-name\": \"t\", "
                        "\"file\": \"tf\", \"backing\": \"m\"}]",
                        "Making 'm' a backing child of 't' would create a "
                        "cycle");
    assert_null(t->backing);
    /* swap back in one transaction */
    assert_reopen_ok("[{\"driver\": \"qcow2\", \"node-name\": \"m\", "
                     "\"file\": \"mf\", \"backing\": \"b\"}, "
                     "{\"driver\": \"qcow2\", \"node-name\": \"t\", "
                     "\"file\": \"tf\", \"backing\": \"m\"}]");
    assert_ptr_equal(bdrv_backing_bs(t), m);
    assert_ptr_equal(bdrv_backing_bs(m), bdrv_find_node("b"));
    assert_int_equal(count_parents(t), 0);
    assert_int_equal(count_parents(m), 1);
}

int main(void)
{
    test_aio_init();
    bdrv_register_test_driver(&leafdrv);
    bdrv_register_test_driver(&fmtdrv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_frozen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_all_or_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reopen_perm_union, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reopen_relax_failure_logged,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_links_in_order, setup,
                                        teardown),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_unregister_test_driver(&fmtdrv);
    bdrv_unregister_test_driver(&leafdrv);
    log_reset();
    return ret;
}
