/*
 * Unit tests for the copy-on-read filter (block/drivers/copy-on-read.c):
 * what a read copies into the top (whole clusters, zero buffers as
 * write-zeroes, with bottom only the layers down to bottom), PREFETCH,
 * and the ordering of copies with writes through the filter: a write that
 * arrives while a copy is between its read and its write waits (or the
 * copy would write old data over it), and a copy that arrives while a
 * write is in flight waits and then finds the cluster allocated.
 *
 * The in-memory test format of test-memfmt.h stands in for the images;
 * its gate holds reads of the backing file or writes in the driver until
 * the test opens it.
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
#include "tests/unit/test-memfmt.h"
#include "util/aio.h"

#define CS TEST_MEM_CS
#define NCL TEST_MEM_NCL
#define SZ TEST_MEM_SIZE

static void assert_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != v) {
            fail_msg("byte %zu is 0x%02x, not 0x%02x", i, p[i], v);
        }
    }
}

static void poll_until(const bool *done)
{
    for (int i = 0; i < 100000 && !*done; i++) {
        aio_poll(true);
    }
    assert_true(*done);
}

/* base <- top, and a copy-on-read filter "cor" over top; a backend on
 * the filter.  *top is the node copies go into. */
static BlockBackend *cor_over_top(BlockDriverState **base,
                                  BlockDriverState **top)
{
    *base = test_memfmt_open("base", NULL);
    *top = test_memfmt_open("top", "base");
    return test_rw_blk(
        test_open_owned("driver=copy-on-read,node-name=cor,file=top"));
}

/* Start r and let it run until it waits at the gate, alone. */
static void start_until_gate(TestReq *r)
{
    coroutine_enter(coroutine_create(test_req_co, r));
    for (int i = 0; i < 1000 && test_gate_waiting() == 0; i++) {
        aio_poll(false);
    }
    assert_int_equal(test_gate_waiting(), 1);
}

/* Start r, which must wait behind the request held at the gate. */
static void start_blocked(TestReq *r)
{
    coroutine_enter(coroutine_create(test_req_co, r));
    for (int i = 0; i < 100; i++) {
        aio_poll(false);
    }
    assert_false(r->done);
}

static int setup(void **state)
{
    test_gate_reset();
    return 0;
}

static int teardown(void **state)
{
    bdrv_close_all();
    return 0;
}

/* ---- tests ---- */

/* Without bottom: every cluster the top lacks is copied, whole; a
 * cluster of zeroes goes in as write-zeroes. */
static void test_copies_whole_clusters(void **state)
{
    BlockDriverState *base, *top;
    BlockBackend *blk = cor_over_top(&base, &top);
    test_memfmt_fill(base, 0, 4, 0xaa);
    test_memfmt_fill(base, 8, 1, 0x00);

    uint8_t *buf = g_malloc(4 * CS);
    TestReq r = {blk, TEST_OP_READ, 0, 4 * CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 4 * CS, 0xaa);
    for (int c = 0; c < 4; c++) {
        assert_true(test_memfmt(top)->alloc[c]);
    }
    assert_bytes(test_memfmt(top)->mem, 4 * CS, 0xaa);
    assert_int_equal(test_memfmt(top)->zero_writes, 0);

    /* a few bytes in the middle of cluster 5 copy all of it (zeroes:
     * nothing below has it, and without bottom that is copied too) */
    r = (TestReq){blk, TEST_OP_READ, 5 * CS + 100, 200, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 200, 0);
    assert_true(test_memfmt(top)->alloc[5]);
    assert_false(test_memfmt(top)->alloc[4]);
    assert_false(test_memfmt(top)->alloc[6]);
    assert_int_equal(test_memfmt(top)->zero_writes, 1);

    /* base's cluster of zero bytes: a write-zeroes, not data */
    int data_before = test_memfmt(top)->data_writes;
    r = (TestReq){blk, TEST_OP_READ, 8 * CS, CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_true(test_memfmt(top)->alloc[8]);
    assert_int_equal(test_memfmt(top)->zero_writes, 2);
    assert_int_equal(test_memfmt(top)->data_writes, data_before);

    /* allocated in top now: read, not copied again */
    int writes = test_memfmt(top)->data_writes + test_memfmt(top)->zero_writes;
    r = (TestReq){blk, TEST_OP_READ, 0, 4 * CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_int_equal(test_memfmt(top)->data_writes +
                         test_memfmt(top)->zero_writes,
                     writes);
    g_free(buf);
    blk_unref(blk);
}

/* With bottom=mid: mid's data is copied, base's is not. */
static void test_bottom(void **state)
{
    BlockDriverState *base = test_memfmt_open("base", NULL);
    BlockDriverState *mid = test_memfmt_open("mid", "base");
    BlockDriverState *top = test_memfmt_open("top", "mid");
    BlockDriverState *cor = test_open_owned(
        "driver=copy-on-read,node-name=cor,file=top,bottom=mid");
    test_memfmt_fill(base, 0, 4, 0xaa);
    test_memfmt_fill(mid, 2, 4, 0xbb);
    BlockBackend *blk = test_rw_blk(cor);

    uint8_t *buf = g_malloc(8 * CS);
    TestReq r = {blk, TEST_OP_READ, 0, 8 * CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 2 * CS, 0xaa);
    assert_bytes(buf + 2 * CS, 4 * CS, 0xbb);
    assert_bytes(buf + 6 * CS, 2 * CS, 0);
    bool want[8] = {false, false, true, true, true, true, false, false};
    for (int c = 0; c < 8; c++) {
        assert_int_equal(test_memfmt(top)->alloc[c], want[c]);
    }
    assert_false(test_memfmt(mid)->alloc[0]); /* nothing else changed below */
    g_free(buf);
    blk_unref(blk);
}

/* PREFETCH copies without filling the caller's buffer. */
static void test_prefetch(void **state)
{
    BlockDriverState *base, *top;
    BlockBackend *blk = cor_over_top(&base, &top);
    test_memfmt_fill(base, 0, 2, 0xaa);
    uint8_t *buf = g_malloc(2 * CS);
    memset(buf, 0x55, 2 * CS);
    TestReq r = {blk, TEST_OP_READ, 0, 2 * CS, buf, BDRV_REQ_PREFETCH, 0,
                 false};
    assert_int_equal(test_req_run(&r), 0);
    assert_bytes(buf, 2 * CS, 0x55);
    assert_true(test_memfmt(top)->alloc[0] && test_memfmt(top)->alloc[1]);
    assert_bytes(test_memfmt(top)->mem, 2 * CS, 0xaa);
    g_free(buf);
    blk_unref(blk);
}

/* A write that comes while a copy of its cluster has read the old data
 * but not written it yet waits: the copy cannot write the old data over
 * the new. */
static void test_write_waits_for_copy(void **state)
{
    BlockDriverState *base, *top;
    BlockBackend *blk = cor_over_top(&base, &top);
    test_memfmt_fill(base, 0, 1, 0xaa);

    uint8_t *rbuf = g_malloc(CS), *wbuf = g_malloc(CS);
    memset(wbuf, 0xbb, CS);
    test_memfmt(top)->gate_backing_reads = true;
    test_gate_close();
    TestReq r = {blk, TEST_OP_READ, 0, CS, rbuf, 0, 0, false};
    start_until_gate(&r); /* the copy's read is held */

    TestReq w = {blk, TEST_OP_WRITE, 0, CS, wbuf, 0, 0, false};
    start_blocked(&w);
    assert_false(test_memfmt(top)->alloc[0]);

    test_gate_open();
    poll_until(&r.done);
    poll_until(&w.done);
    assert_int_equal(r.ret, 0);
    assert_int_equal(w.ret, 0);
    assert_bytes(rbuf, CS, 0xaa);        /* the reader saw the old data */
    assert_bytes(test_memfmt(top)->mem, CS, 0xbb); /* and the write came last */
    g_free(rbuf);
    g_free(wbuf);
    blk_unref(blk);
}

/* A copy that comes while a write of its cluster is in flight waits for
 * it, then finds the cluster allocated and copies nothing. */
static void test_copy_waits_for_write(void **state)
{
    BlockDriverState *base, *top;
    BlockBackend *blk = cor_over_top(&base, &top);
    test_memfmt_fill(base, 0, 1, 0xaa);

    uint8_t *rbuf = g_malloc(CS), *wbuf = g_malloc(CS);
    memset(wbuf, 0xbb, CS);
    test_memfmt(top)->gate_writes = true;
    test_gate_close();
    TestReq w = {blk, TEST_OP_WRITE, 0, CS, wbuf, 0, 0, false};
    start_until_gate(&w); /* the write is held in the driver */

    TestReq r = {blk, TEST_OP_READ, 0, CS, rbuf, 0, 0, false};
    start_blocked(&r);
    assert_int_equal(test_gate_waiting(), 1); /* the copy did not get as far */

    test_gate_open();
    poll_until(&w.done);
    poll_until(&r.done);
    assert_int_equal(r.ret, 0);
    assert_bytes(rbuf, CS, 0xbb);
    assert_bytes(test_memfmt(top)->mem, CS, 0xbb);
    assert_int_equal(test_memfmt(top)->data_writes, 1); /* only the guest's */
    g_free(rbuf);
    g_free(wbuf);
    blk_unref(blk);
}

/* Open errors, and a bottom that is not below the top limits nothing. */
static void test_open_errors(void **state)
{
    BlockDriverState *base = test_memfmt_open("base", NULL);
    BlockDriverState *top = test_memfmt_open("top", "base");
    test_memfmt_fill(base, 0, 1, 0xaa);
    char *msg = test_open_error(
        "driver=copy-on-read,node-name=c0,file=top,bottom=nosuch");
    assert_string_equal(msg, "Bottom node 'nosuch' not found");
    g_free(msg);
    BlockDriverState *c1 =
        test_open_owned("driver=copy-on-read,node-name=c1,file=base");
    msg = test_open_error("driver=copy-on-read,node-name=c0,file=top,"
                          "bottom=c1");
    assert_string_equal(msg, "Bottom node 'c1' is a filter");
    g_free(msg);
    (void)c1;

    BlockDriverState *cor = test_open_owned(
        "driver=copy-on-read,node-name=cor,file=top,bottom=top");
    BlockBackend *blk = test_rw_blk(cor);
    uint8_t *buf = g_malloc(CS);
    TestReq r = {blk, TEST_OP_READ, 0, CS, buf, 0, 0, false};
    assert_int_equal(test_req_run(&r), 0);
    assert_true(test_memfmt(top)->alloc[0]);
    g_free(buf);
    blk_unref(blk);
}

int main(void)
{
    test_aio_init();
    bdrv_register_test_driver(&test_memfmt_driver);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_copies_whole_clusters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bottom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefetch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_waits_for_copy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_copy_waits_for_write, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_unregister_test_driver(&test_memfmt_driver);
    return ret;
}
