/*
 * Unit tests for the blkdebug driver: which requests inject-error rules
 * fail (event, state, iotype, sector, errno, once), the set-state machine,
 * rules from a config file, option checks, the limits it imposes on the
 * core (align, max-transfer, write-zero and discard limits, checked
 * request by request on the image below), and child permissions.
 *
 * The image is an in-memory driver registered in place of null-aio that
 * records every request it receives.
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
#include "tests/unit/test-helpers.h"
#include "util/aio.h"

/* ---- the in-memory image ---- */

enum { R_READ, R_WRITE, R_ZERO, R_DISCARD };

typedef struct Rec {
    int type;
    int64_t offset, bytes;
} Rec;

static struct {
    GArray *log; /* of Rec */
    uint8_t *mem;
} md;

typedef struct MemState {
    uint8_t *buf;
} MemState;

#define MEM_SIZE (1024 * 1024)

static void rec(int type, int64_t offset, int64_t bytes)
{
    Rec r = {type, offset, bytes};
    g_array_append_val(md.log, r);
}

static int coroutine_fn md_open(BlockDriverState *bs,
                                const BlockdevOptions *opts, GError **errp)
{
    MemState *s = bs->opaque;
    bs->total_bytes = MEM_SIZE;
    s->buf = g_malloc0(MEM_SIZE);
    md.mem = s->buf;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;
    return 0;
}

static void md_close(BlockDriverState *bs)
{
    MemState *s = bs->opaque;
    g_free(s->buf);
    md.mem = NULL;
}

static int coroutine_fn md_preadv(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, IOVector *qiov,
                                  BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    rec(R_READ, offset, bytes);
    test_mem_read(bs, s->buf, offset, bytes, qiov);
    return 0;
}

static int coroutine_fn md_pwritev(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    rec(R_WRITE, offset, bytes);
    return test_mem_write(bs, s->buf, offset, bytes, qiov);
}

static int coroutine_fn md_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    rec(R_ZERO, offset, bytes);
    memset(s->buf + offset, 0, bytes);
    return 0;
}

static int coroutine_fn md_pdiscard(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes)
{
    MemState *s = bs->opaque;
    rec(R_DISCARD, offset, bytes);
    memset(s->buf + offset, 0, bytes);
    return 0;
}

static int coroutine_fn md_flush(BlockDriverState *bs)
{
    return 0;
}

static const BlockDriver memdrv = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "null-aio",
    .driver = BLOCKDEV_DRIVER_NULL_AIO,
    .instance_size = sizeof(MemState),
    .bdrv_open = md_open,
    .bdrv_close = md_close,
    .bdrv_co_preadv = md_preadv,
    .bdrv_co_pwritev = md_pwritev,
    .bdrv_co_pwrite_zeroes = md_pwrite_zeroes,
    .bdrv_co_pdiscard = md_pdiscard,
    .bdrv_co_flush_to_disk = md_flush,
};

/* ---- helpers ---- */

static int do_req(BlockBackend *blk, TestOp op, int64_t offset, int64_t bytes,
                  void *buf)
{
    /* zero writes may unmap, as the image allows (discard=unmap) */
    TestReq r = {.blk = blk,
                 .op = op,
                 .offset = offset,
                 .bytes = bytes,
                 .buf = buf,
                 .flags = op == TEST_OP_ZERO ? BDRV_REQ_MAY_UNMAP : 0};
    return test_req_run(&r);
}

static int write_pat(BlockBackend *blk, int64_t offset, int64_t bytes, int pat)
{
    void *buf = g_malloc(bytes);
    memset(buf, pat, bytes);
    int ret = do_req(blk, TEST_OP_WRITE, offset, bytes, buf);
    g_free(buf);
    return ret;
}

static int read_buf(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    void *buf = g_malloc(bytes);
    int ret = do_req(blk, TEST_OP_READ, offset, bytes, buf);
    g_free(buf);
    return ret;
}

static bool mem_is(int64_t offset, int64_t bytes, int pat)
{
    for (int64_t i = 0; i < bytes; i++) {
        if (md.mem[offset + i] != pat) {
            return false;
        }
    }
    return true;
}

static void close_all(BlockBackend *blk, BlockDriverState *bs)
{
    blk_unref(blk);
    bdrv_unref(bs);
}

static int setup(void **state)
{
    md.log = g_array_new(FALSE, FALSE, sizeof(Rec));
    bdrv_register_test_driver(&memdrv);
    return 0;
}

static int teardown(void **state)
{
    bdrv_unregister_test_driver(&memdrv);
    g_array_free(md.log, TRUE);
    md.log = NULL;
    return 0;
}

#define IMG "image.driver=null-aio,image.node-name=mem,image.discard=unmap"

/* ---- rules ---- */

/* The third write fails: two set-state rules count writes, the inject
 * rule waits for state 3; `once` lets the fourth write through. */
static void test_nth_write(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                        "set-state.0.event=pwritev,set-state.0.state=1,"
                        "set-state.0.new_state=2,"
                        "set-state.1.event=pwritev,set-state.1.state=2,"
                        "set-state.1.new_state=3,"
                        "inject-error.0.event=pwritev,inject-error.0.state=3,"
                        "inject-error.0.once=on");
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(write_pat(blk, 0, 4096, 1), 0);
    assert_int_equal(write_pat(blk, 4096, 4096, 2), 0);
    assert_int_equal(write_pat(blk, 8192, 4096, 3), -EIO);
    assert_true(mem_is(8192, 4096, 0)); /* nothing reached the image */
    assert_int_equal(write_pat(blk, 8192, 4096, 4), 0);
    assert_int_equal(write_pat(blk, 12288, 4096, 5), 0);
    assert_true(mem_is(0, 4096, 1));
    assert_true(mem_is(4096, 4096, 2));
    assert_true(mem_is(8192, 4096, 4));
    assert_true(mem_is(12288, 4096, 5));
    close_all(blk, bs);
}

/* Without `once` the rule fails every matching request; the iotype keeps
 * reads working. */
static void test_not_once_and_iotype(void **state)
{
    BlockDriverState *bs = test_open_owned(
        "driver=blkdebug,node-name=dbg," IMG ","
        "inject-error.0.event=pwritev,inject-error.0.iotype=write");
    BlockBackend *blk = test_rw_blk(bs);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(write_pat(blk, 0, 512, 7), -EIO);
    }
    assert_int_equal(read_buf(blk, 0, 4096), 0);
    /* The rule stays active after the failed writes: still no read
     * failure, since it is for writes only; zero writes are not writes. */
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 0, 4096, NULL), 0);
    assert_true(mem_is(0, 512, 0));
    close_all(blk, bs);
}

/* Without an iotype a rule matches reads too, once it is active.  A
 * negative errno counts as its magnitude. */
static void test_default_iotype(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                        "inject-error.0.event=pwritev,inject-error.0.errno=-5");
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(read_buf(blk, 0, 512), 0); /* not active yet */
    assert_int_equal(write_pat(blk, 0, 512, 1), -EIO);
    assert_int_equal(read_buf(blk, 0, 512), -EIO);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL),
                     0); /* nothing new */
    /* Block status is only failed when asked for by iotype. */
    assert_true(do_req(blk, TEST_OP_STATUS, 0, 512, NULL) >= 0);
    close_all(blk, bs);
}

/* `sector` (512-byte units) limits a rule to requests covering it. */
static void test_sector(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                        "inject-error.0.event=pwritev,inject-error.0.sector=8,"
                        "inject-error.0.errno=28");
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(write_pat(blk, 0, 4096, 1), 0);        /* 0..7 */
    assert_int_equal(write_pat(blk, 4608, 4096, 1), 0);     /* 9..16 */
    assert_int_equal(write_pat(blk, 4096, 512, 2), -ENOSPC); /* 8 */
    assert_int_equal(write_pat(blk, 0, 8192, 2), -ENOSPC);  /* 0..15 */
    assert_int_equal(read_buf(blk, 4096, 512), -ENOSPC);    /* active */
    assert_int_equal(read_buf(blk, 0, 4096), 0);
    assert_true(mem_is(4096, 512, 0));
    close_all(blk, bs);
}

/* errno=0 activates but never fails; state 0 means any state. */
static void test_errno_zero_and_any_state(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                        "inject-error.0.event=pwritev,inject-error.0.errno=0,"
                        "inject-error.0.iotype=write");
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(write_pat(blk, 0, 512, 1), 0);
    assert_int_equal(write_pat(blk, 0, 512, 1), 0);
    close_all(blk, bs);

    bs = test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                         "set-state.0.event=pwritev,set-state.0.new_state=7,"
                         "inject-error.0.event=pwritev,inject-error.0.state=0,"
                         "inject-error.0.iotype=write,inject-error.0.once=on,"
                         "inject-error.1.event=pwritev,inject-error.1.state=7,"
                         "inject-error.1.iotype=write,inject-error.1.errno=1,"
                         "inject-error.1.once=on");
    blk = test_rw_blk(bs);
    /* state 1: only the any-state rule */
    assert_int_equal(write_pat(blk, 0, 512, 1), -EIO);
    /* state 7 now: the state-7 rule */
    assert_int_equal(write_pat(blk, 0, 512, 1), -EPERM);
    assert_int_equal(write_pat(blk, 0, 512, 1), 0);
    close_all(blk, bs);
}

/* An event that activates a rule forgets rules activated before; a rule
 * raised directly on the node via bdrv_debug_event acts the same. */
static void test_active_reset(void **state)
{
    BlockDriverState *bs = test_open_owned(
        "driver=blkdebug,node-name=dbg," IMG ","
        "inject-error.0.event=l1_update,inject-error.0.iotype=read,"
        "inject-error.1.event=l2_update,inject-error.1.iotype=write");
    BlockBackend *blk = test_rw_blk(bs);
    BdrvChild *root = blk_root(blk);
    assert_int_equal(read_buf(blk, 0, 512), 0);
    bdrv_debug_event(root, BLKDBG_L1_UPDATE);
    assert_int_equal(read_buf(blk, 0, 512), -EIO);
    assert_int_equal(write_pat(blk, 0, 512, 1), 0);
    bdrv_debug_event(root, BLKDBG_L2_UPDATE);
    assert_int_equal(read_buf(blk, 0, 512), 0);
    assert_int_equal(write_pat(blk, 0, 512, 1), -EIO);
    /* an event without rules changes nothing */
    bdrv_debug_event(root, BLKDBG_CLUSTER_ALLOC);
    assert_int_equal(write_pat(blk, 0, 512, 1), -EIO);
    /* out-of-range events are ignored */
    bdrv_debug_event(root, (BlkdebugEvent)BLKDBG__MAX);
    bdrv_debug_event(root, (BlkdebugEvent)-1);
    close_all(blk, bs);
}

/* The open raises "none" once in state 1: its rules act from the start. */
static void test_none_event(void **state)
{
    BlockDriverState *bs =
        test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                        "inject-error.0.event=none,inject-error.0.iotype=read,"
                        "inject-error.0.once=on,"
                        "inject-error.1.event=pwritev,inject-error.1.state=2,"
                        "inject-error.1.iotype=write,"
                        "set-state.0.event=none,set-state.0.new_state=2");
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(read_buf(blk, 0, 512), -EIO);
    assert_int_equal(read_buf(blk, 0, 512), 0);
    assert_int_equal(write_pat(blk, 0, 512, 1), -EIO); /* state 2 */
    close_all(blk, bs);

    /* a "none" rule for another state never acts */
    bs = test_open_owned("driver=blkdebug,node-name=dbg," IMG ","
                         "inject-error.0.event=none,inject-error.0.state=2");
    blk = test_rw_blk(bs);
    assert_int_equal(read_buf(blk, 0, 512), 0);
    close_all(blk, bs);
}

/* Flush rules (through raw, which raises flush_to_disk on blkdebug), and
 * block-status, discard and write-zeroes iotypes. */
static void test_other_iotypes(void **state)
{
    BlockDriverState *bs = test_open_owned(
        "driver=raw,node-name=fmt,file.driver=blkdebug,file.node-name=dbg,"
        "file.image.driver=null-aio,"
        "file.inject-error.0.event=flush_to_disk,"
        "file.inject-error.0.iotype=flush,file.inject-error.0.once=on,"
        "file.inject-error.0.immediately=on");
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL),
                     0); /* nothing new */
    assert_int_equal(write_pat(blk, 0, 512, 1), 0);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL), -EIO);
    assert_int_equal(do_req(blk, TEST_OP_FLUSH, 0, 0, NULL), 0);
    close_all(blk, bs);

    /* pwritev_done comes after every write, pwritev_zero before zero
     * writes (and makes the rules of pwritev_done inactive until then) */
    bs = test_open_owned("driver=blkdebug,node-name=dbg,discard=unmap," IMG ","
                         "inject-error.0.event=pwritev_done,"
                         "inject-error.0.iotype=block-status,"
                         "inject-error.1.event=pwritev_done,"
                         "inject-error.1.iotype=discard,inject-error.1.once=on,"
                         "inject-error.2.event=pwritev_zero,"
                         "inject-error.2.iotype=write-zeroes,"
                         "inject-error.2.once=on");
    blk = test_rw_blk(bs);
    assert_true(do_req(blk, TEST_OP_STATUS, 0, 4096, NULL) >= 0);
    assert_int_equal(write_pat(blk, 0, 4096, 1), 0);
    assert_int_equal(do_req(blk, TEST_OP_STATUS, 0, 4096, NULL), -EIO);
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 0, 4096, NULL), -EIO);
    assert_true(mem_is(0, 4096, 1));
    assert_int_equal(do_req(blk, TEST_OP_DISCARD, 0, 4096, NULL), -EIO);
    assert_true(mem_is(0, 4096, 1));
    assert_int_equal(do_req(blk, TEST_OP_DISCARD, 0, 4096, NULL), 0);
    assert_true(mem_is(0, 4096, 0));
    assert_int_equal(do_req(blk, TEST_OP_STATUS, 0, 4096, NULL), -EIO);
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 0, 4096, NULL), 0);
    close_all(blk, bs);
}

/* ---- limits ---- */

static void check_log(uint64_t align, int64_t max_rw, int64_t zalign,
                      int64_t max_zero)
{
    for (guint i = 0; i < md.log->len; i++) {
        Rec *r = &g_array_index(md.log, Rec, i);
        if (r->type == R_READ || r->type == R_WRITE) {
            assert_int_equal(r->offset % align, 0);
            assert_int_equal(r->bytes % align, 0);
            if (max_rw) {
                assert_true(r->bytes <= max_rw);
            }
        } else if (r->type == R_ZERO) {
            assert_int_equal(r->offset % zalign, 0);
            assert_int_equal(r->bytes % zalign, 0);
            if (max_zero) {
                assert_true(r->bytes <= max_zero);
            }
        }
    }
}

static void test_align(void **state)
{
    BlockDriverState *bs = test_open_owned(
        "driver=blkdebug,node-name=dbg," IMG ",align=4096,max-transfer=8192,"
        "opt-write-zero=16384,max-write-zero=32768,"
        "opt-discard=8192,max-discard=16384,discard=unmap");
    assert_int_equal(bs->bl.request_alignment, 4096);
    assert_int_equal(bs->bl.max_transfer, 8192);
    assert_int_equal(bs->bl.pwrite_zeroes_alignment, 16384);
    assert_int_equal(bs->bl.max_pwrite_zeroes, 32768);
    assert_int_equal(bs->bl.pdiscard_alignment, 8192);
    assert_int_equal(bs->bl.max_pdiscard, 16384);
    BlockBackend *blk = test_rw_blk(bs);

    /* unaligned write: read-modify-write of whole 4k blocks */
    assert_int_equal(write_pat(blk, 512, 1024, 9), 0);
    assert_true(mem_is(0, 512, 0));
    assert_true(mem_is(512, 1024, 9));
    assert_true(mem_is(1536, 4096 - 1536, 0));
    /* a large write is split at max-transfer */
    g_array_set_size(md.log, 0);
    assert_int_equal(write_pat(blk, 65536, 65536, 3), 0);
    assert_int_equal(md.log->len, 8);
    assert_true(mem_is(65536, 65536, 3));
    /* unaligned read */
    assert_int_equal(read_buf(blk, 100, 10000), 0);
    check_log(4096, 8192, 16384, 32768);

    /* zeroes: the 16k-aligned middle by write_zeroes in pieces of at
     * most 32k, the ends below opt-write-zero by writing zeroed buffers */
    assert_int_equal(write_pat(blk, 0, 131072, 3), 0);
    g_array_set_size(md.log, 0);
    assert_int_equal(do_req(blk, TEST_OP_ZERO, 4096, 131072 - 8192, NULL), 0);
    assert_true(mem_is(0, 4096, 3));
    assert_true(mem_is(4096, 131072 - 8192, 0));
    assert_true(mem_is(131072 - 4096, 4096, 3));
    check_log(4096, 8192, 16384, 32768);
    int zeroes = 0, writes = 0;
    int64_t zeroed = 0;
    for (guint i = 0; i < md.log->len; i++) {
        Rec *r = &g_array_index(md.log, Rec, i);
        zeroes += r->type == R_ZERO;
        writes += r->type == R_WRITE;
        zeroed += r->type == R_ZERO ? r->bytes : 0;
    }
    assert_int_equal(zeroes, 3);        /* 16k..112k */
    assert_int_equal(zeroed, 98304);
    assert_int_equal(writes, 4);        /* 4k..16k and 112k..124k */

    /* discard: pieces aligned to 8k, at most 16k */
    g_array_set_size(md.log, 0);
    write_pat(blk, 0, 65536, 5);
    g_array_set_size(md.log, 0);
    assert_int_equal(do_req(blk, TEST_OP_DISCARD, 4096, 49152, NULL), 0);
    for (guint i = 0; i < md.log->len; i++) {
        Rec *r = &g_array_index(md.log, Rec, i);
        assert_int_equal(r->type, R_DISCARD);
        assert_int_equal(r->offset % 4096, 0);
        assert_true(r->bytes <= 16384);
        if (r->bytes >= 8192) {
            assert_int_equal(r->offset % 8192, 0);
            assert_int_equal(r->bytes % 8192, 0);
        }
    }
    assert_true(mem_is(4096, 49152, 0));
    assert_true(mem_is(0, 4096, 5));
    assert_true(mem_is(53248, 65536 - 53248, 5));
    close_all(blk, bs);
}

/* Requests that break the limits, handed to the driver directly (the
 * core never does this): refused with EIO, never passed on. */
typedef struct DirectCo {
    BlockDriverState *bs;
    int rd_misaligned, rd_too_big, rd_ok, zero_cross, zero_small,
        zero_misaligned, zero_too_big, disc_misaligned;
} DirectCo;

static void coroutine_fn direct_co(void *opaque)
{
    DirectCo *c = opaque;
    BlockDriverState *bs = c->bs;
    const BlockDriver *drv = bs->drv;
    uint8_t *buf = g_malloc0(65536);
    IOVector q;
    qiov_init_buf(&q, buf, 512);
    c->rd_misaligned = drv->bdrv_co_preadv(bs, 512, 512, &q, 0);
    qiov_init_buf(&q, buf, 16384);
    c->rd_too_big = drv->bdrv_co_preadv(bs, 0, 16384, &q, 0);
    qiov_init_buf(&q, buf, 8192);
    c->rd_ok = drv->bdrv_co_preadv(bs, 4096, 8192, &q, 0);
    c->zero_cross = drv->bdrv_co_pwrite_zeroes(bs, 12288, 8192, 0);
    c->zero_small = drv->bdrv_co_pwrite_zeroes(bs, 4096, 12288, 0);
    c->zero_misaligned = drv->bdrv_co_pwrite_zeroes(bs, 4096, 16384, 0);
    c->zero_too_big = drv->bdrv_co_pwrite_zeroes(bs, 0, 65536, 0);
    c->disc_misaligned = drv->bdrv_co_pdiscard(bs, 4096, 16384);
    g_free(buf);
}

static void test_limits_enforced(void **state)
{
    BlockDriverState *bs = test_open_owned(
        "driver=blkdebug,node-name=dbg," IMG ",align=4096,max-transfer=8192,"
        "opt-write-zero=16384,max-write-zero=32768,opt-discard=8192,"
        "discard=unmap");
    /* the image child needs write for the zero and discard calls */
    BlockBackend *blk = test_rw_blk(bs);
    DirectCo c = {.bs = bs};
    g_array_set_size(md.log, 0);
    coroutine_run_sync(direct_co, &c);
    assert_int_equal(c.rd_misaligned, -EIO);
    assert_int_equal(c.rd_too_big, -EIO);
    assert_int_equal(c.rd_ok, 0);
    assert_int_equal(c.zero_cross, -EIO);     /* 12k..20k crosses 16k */
    assert_int_equal(c.zero_small, -ENOTSUP); /* ends on 16k: fallback */
    assert_int_equal(c.zero_misaligned, -EIO);
    assert_int_equal(c.zero_too_big, -EIO);
    assert_int_equal(c.disc_misaligned, -EIO);
    /* only the good read reached the image */
    assert_int_equal(md.log->len, 1);
    close_all(blk, bs);
}

static void test_bad_options(void **state)
{
    static const struct {
        const char *opts;
        const char *msg;
    } cases[] = {
        {"align=3", "Cannot meet constraints with align 3"},
        {"align=-512", "Parameter 'align' expects a non-negative number "
                       "below 2^64"},
        {"align=4096,max-transfer=6144",
         "Cannot meet constraints with max-transfer 6144"},
        {"max-transfer=2147483647",
         "Cannot meet constraints with max-transfer 2147483647"},
        {"align=512,opt-write-zero=1000",
         "Cannot meet constraints with opt-write-zero 1000"},
        {"opt-write-zero=4096,max-write-zero=6144",
         "Cannot meet constraints with max-write-zero 6144"},
        {"opt-discard=4096,max-discard=2048",
         "Cannot meet constraints with max-discard 2048"},
        {"inject-error.0.event=nope",
         "Parameter 'event' does not accept value 'nope'"},
        {"config=/nonexistent/blkdebug.cfg",
         "Could not read blkdebug config file: No such file or directory"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *opts = g_strdup_printf(
            "driver=blkdebug,node-name=dbg," IMG ",%s", cases[i].opts);
        g_autofree char *msg = test_open_error(opts);
        if (strcmp(msg, cases[i].msg)) {
            fail_msg("%s: got '%s', want '%s'", cases[i].opts, msg,
                     cases[i].msg);
        }
    }
    /* nothing was left behind */
    assert_null(bdrv_find_node("dbg"));
    assert_null(bdrv_find_node("mem"));
}

/* ---- config file ---- */

static char *write_config(const char *text)
{
    char *path = g_strdup("/tmp/test-blkdebug-XXXXXX");
    int fd = g_mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_config_file(void **state)
{
    char *cfg = write_config("# fail the second write to sector 16\n"
                             "\n"
                             "[set-state]\n"
                             "event = \"pwritev\"\n"
                             "state = \"1\"\n"
                             "new_state = \"2\"\n"
                             "[inject-error]\n"
                             "  event = \"pwritev\"\n"
                             "state = \"2\"\n"
                             "sector = \"16\"\n"
                             "errno = \"28\"\n"
                             "once = \"on\"\n");
    g_autofree char *opts = g_strdup_printf(
        "driver=blkdebug,node-name=dbg," IMG ",config=%s", cfg);
    BlockDriverState *bs = test_open_owned(opts);
    BlockBackend *blk = test_rw_blk(bs);
    assert_int_equal(write_pat(blk, 8192, 512, 1), 0);       /* state 1 */
    assert_int_equal(write_pat(blk, 0, 4096, 1), 0);         /* no sector */
    assert_int_equal(write_pat(blk, 8192, 512, 2), -ENOSPC); /* once */
    assert_int_equal(write_pat(blk, 8192, 512, 3), 0);
    assert_true(mem_is(8192, 512, 3));
    close_all(blk, bs);
    unlink(cfg);
    g_free(cfg);

    static const struct {
        const char *text;
        const char *msg; /* after "<file>:" */
    } bad[] = {
        {"[foo]\n", "1: There is no option group 'foo'"},
        {"event = \"pwritev\"\n", "1: no group defined"},
        {"[inject-error]\nnew_state = \"2\"\n",
         "2: Invalid parameter 'new_state'"},
        {"[inject-error]\nevent pwritev\n", "2: parse error"},
        {"[set-state]\nstate = \"1\"\n", "1: Missing event name for rule"},
        {"[inject-error]\nevent = \"nope\"\n",
         "1: Parameter 'event' does not accept value 'nope'"},
        {"[inject-error]\nevent = \"pwritev\"\nonce = \"maybe\"\n",
         "1: Parameter 'once' expects 'on' or 'off'"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        char *path = write_config(bad[i].text);
        g_autofree char *o = g_strdup_printf(
            "driver=blkdebug,node-name=dbg," IMG ",config=%s", path);
        g_autofree char *msg = test_open_error(o);
        g_autofree char *want = g_strdup_printf("%s:%s", path, bad[i].msg);
        if (strcmp(msg, want)) {
            fail_msg("got '%s', want '%s'", msg, want);
        }
        unlink(path);
        g_free(path);
    }
}

/* ---- permissions ---- */

static void test_child_perms(void **state)
{
    BlockDriverState *mem = test_open_owned("driver=null-aio,node-name=mem");
    BlockDriverState *bs =
        test_open_owned("driver=blkdebug,node-name=dbg,"
                        "image=mem,unshare-child-perms.0=write,"
                        "take-child-perms.0=resize");
    BdrvChild *c = LIST_FIRST(&bs->children);
    assert_non_null(c);
    assert_string_equal(c->name, "image");
    assert_true(c->perm & BLK_PERM_RESIZE);
    assert_false(c->shared_perm & BLK_PERM_WRITE);
    /* another writer on the image is refused */
    BlockBackend *w = blk_new(BLK_PERM_WRITE, BLK_PERM_ALL);
    GError *err = NULL;
    assert_true(blk_insert_bs(w, mem, &err) < 0);
    assert_non_null(err);
    g_clear_error(&err);
    blk_unref(w);
    /* a reader is fine */
    BlockBackend *r = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_int_equal(blk_insert_bs(r, mem, NULL), 0);
    blk_unref(r);
    /* it is a filter: size and reads pass through */
    assert_int_equal(bdrv_getlength(bs), MEM_SIZE);
    assert_ptr_equal(bdrv_skip_filters(bs), mem);
    bdrv_unref(bs);
    bdrv_unref(mem);
}

int main(void)
{
    test_aio_init();
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_nth_write),
        T(test_not_once_and_iotype),
        T(test_default_iotype),
        T(test_sector),
        T(test_errno_zero_and_any_state),
        T(test_active_reset),
        T(test_none_event),
        T(test_other_iotypes),
        T(test_align),
        T(test_limits_enforced),
        T(test_bad_options),
        T(test_config_file),
        T(test_child_perms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
