/*
 * The in-memory test format of the job and filter unit tests (see
 * test-memfmt.h).
 */
#include <errno.h>
#include <string.h>

#include <glib.h>

#include "tests/unit/test-helpers.h"
#include "tests/unit/test-memfmt.h"
#include "util/aio.h"

#define CS TEST_MEM_CS

/* ---- the gate ---- */

static CoQueue gate;
static bool gate_closed;
static int gate_waiting;

static void coroutine_fn gate_pass(void)
{
    while (gate_closed) {
        gate_waiting++;
        co_queue_wait(&gate, NULL);
        gate_waiting--;
    }
}

void test_gate_reset(void)
{
    co_queue_init(&gate);
    gate_closed = false;
    gate_waiting = 0;
}

void test_gate_close(void)
{
    gate_closed = true;
}

void test_gate_open(void)
{
    gate_closed = false;
    co_queue_restart_all(&gate);
}

int test_gate_waiting(void)
{
    return gate_waiting;
}

/* ---- the driver ---- */

int coroutine_fn test_fmt_open_children(BlockDriverState *bs,
                                        const BlockdevOptions *opts,
                                        GError **errp)
{
    const BlockdevOptionsQcow2 *o = &opts->u.qcow2;
    if (!bdrv_open_child(bs, o->file, "file",
                         BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false, errp)) {
        return -EINVAL;
    }
    if (o->has_backing && o->backing->type == QTYPE_QSTRING) {
        BlockDriverState *b =
            bdrv_lookup_bs(NULL, o->backing->u.reference, errp);
        if (!b ||
            !bdrv_attach_child(bs, b, "backing", BDRV_CHILD_COW, errp)) {
            return -EINVAL;
        }
    }
    return 0;
}

static int coroutine_fn fmt_open(BlockDriverState *bs,
                                 const BlockdevOptions *opts, GError **errp)
{
    int ret = test_fmt_open_children(bs, opts, errp);
    if (ret < 0) {
        return ret;
    }
    bs->total_bytes = TEST_MEM_SIZE;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;
    return 0;
}

/* The run of clusters from offset with the same allocation, cut to
 * bytes. */
static int64_t run_len(TestMemFmt *s, int64_t offset, int64_t bytes, bool *a)
{
    *a = s->alloc[offset / CS];
    int64_t end = offset;
    while (end < offset + bytes && s->alloc[end / CS] == *a) {
        end = (end / CS + 1) * CS;
    }
    return MIN(end, offset + bytes) - offset;
}

static int coroutine_fn fmt_preadv(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, IOVector *qiov,
                                   BdrvRequestFlags flags)
{
    TestMemFmt *s = bs->opaque;
    size_t qoff = 0;
    while (bytes > 0) {
        bool a;
        int64_t n = run_len(s, offset, bytes, &a);
        if (a) {
            qiov_from_buf(qiov, qoff, s->mem + offset, (size_t)n);
        } else if (bs->backing) {
            if (s->gate_backing_reads) {
                gate_pass();
            }
            IOVector part;
            qiov_init(&part, qiov->niov);
            qiov_concat(&part, qiov, qoff, (size_t)n);
            int ret = bdrv_co_preadv(bs->backing, offset, n, &part, 0);
            qiov_destroy(&part);
            if (ret < 0) {
                return ret;
            }
        } else {
            qiov_memset(qiov, qoff, 0, (size_t)n);
        }
        offset += n;
        qoff += (size_t)n;
        bytes -= n;
    }
    return 0;
}

static void mark_alloc(TestMemFmt *s, int64_t offset, int64_t bytes)
{
    for (int64_t c = offset / CS; c * CS < offset + bytes; c++) {
        s->alloc[c] = true;
    }
}

static int coroutine_fn fmt_pwritev(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, IOVector *qiov,
                                    BdrvRequestFlags flags)
{
    TestMemFmt *s = bs->opaque;
    /* copied before the gate: a copy in flight has its data already */
    uint8_t *tmp = g_malloc((size_t)bytes);
    qiov_to_buf(qiov, 0, tmp, (size_t)bytes);
    if (s->gate_writes) {
        gate_pass();
    }
    memcpy(s->mem + offset, tmp, (size_t)bytes);
    g_free(tmp);
    mark_alloc(s, offset, bytes);
    s->data_writes++;
    return 0;
}

static int coroutine_fn fmt_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                          int64_t bytes,
                                          BdrvRequestFlags flags)
{
    TestMemFmt *s = bs->opaque;
    if (s->gate_writes) {
        gate_pass();
    }
    memset(s->mem + offset, 0, (size_t)bytes);
    mark_alloc(s, offset, bytes);
    s->zero_writes++;
    return 0;
}

static int coroutine_fn fmt_block_status(BlockDriverState *bs, bool want_zero,
                                         int64_t offset, int64_t bytes,
                                         int64_t *pnum, int64_t *map,
                                         BlockDriverState **file)
{
    bool a;
    *pnum = run_len(bs->opaque, offset, bytes, &a);
    return a ? BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED : 0;
}

static int coroutine_fn fmt_get_info(BlockDriverState *bs, ImageInfo *info,
                                     GError **errp)
{
    info->has_cluster_size = true;
    info->cluster_size = CS;
    return 0;
}

const BlockDriver test_memfmt_driver = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "qcow2",
    .driver = BLOCKDEV_DRIVER_QCOW2,
    .instance_size = sizeof(TestMemFmt),
    .is_format = true,
    .supports_backing = true,
    .bdrv_open = fmt_open,
    .bdrv_co_preadv = fmt_preadv,
    .bdrv_co_pwritev = fmt_pwritev,
    .bdrv_co_pwrite_zeroes = fmt_pwrite_zeroes,
    .bdrv_co_block_status = fmt_block_status,
    .bdrv_co_get_info = fmt_get_info,
};

/* ---- helpers ---- */

#define FILE_OPTS "file.driver=null-co,file.size=1048576"

BlockDriverState *test_memfmt_open(const char *name, const char *backing)
{
    g_autofree char *opts =
        backing ? g_strdup_printf("driver=qcow2,node-name=%s,backing=%s,"
                                  FILE_OPTS, name, backing)
                : g_strdup_printf("driver=qcow2,node-name=%s," FILE_OPTS,
                                  name);
    return test_open_owned(opts);
}

TestMemFmt *test_memfmt(BlockDriverState *bs)
{
    return bs->opaque;
}

void test_memfmt_fill(BlockDriverState *bs, int first, int n, uint8_t v)
{
    TestMemFmt *s = bs->opaque;
    memset(s->mem + (int64_t)first * CS, v, (size_t)n * CS);
    for (int c = first; c < first + n; c++) {
        s->alloc[c] = true;
    }
}
