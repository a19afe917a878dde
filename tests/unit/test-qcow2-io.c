/*
 * qcow2 through the real block layer, checked against QEMU's tools:
 * images qemu-img/qemu-io write (compressed, zero clusters, backing chains
 * of different sizes, 512 B and 2 MiB clusters, refcount widths 1 and 64,
 * v2, internal snapshots) must read exactly as `qemu-img convert -O raw`
 * reads them; images blockd writes (random, concurrent, partial-cluster,
 * with backing files, zeroes, discards, compressed) must pass
 * `qemu-img check` without errors or leaks and `qemu-img compare` equal to
 * the expected content.  Skipped when qemu-img is not installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <glib.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/drivers/qcow2.h"
#include "util/aio.h"

static char tmpdir[64];
static bool have_qemu;

static int sh(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autofree char *full = g_strdup_printf("cd %s && (%s)", tmpdir, cmd);
    char *argv[] = { "/bin/sh", "-c", full, NULL };
    int status = -1;
    g_autofree char *out = NULL, *err = NULL;
    g_spawn_sync(NULL, argv, NULL, 0, NULL, NULL, &out, &err, &status, NULL);
    if (!g_spawn_check_wait_status(status, NULL)) {
        fprintf(stderr, "command failed: %s\n%s%s", cmd, out ? out : "",
                err ? err : "");
        return 1;
    }
    return 0;
}

static char *path(const char *name)
{
    return g_strdup_printf("%s/%s", tmpdir, name);
}

/* ---- coroutine plumbing ---- */

typedef struct Ctx {
    const char *image;
    const char *extra;
    const char *raw; /* expected content */
    BlockDriverState *bs;
    BlockBackend *blk;
    GError *err;
    int ret;
} Ctx;

static void coroutine_fn open_co(void *opaque)
{
    Ctx *c = opaque;
    g_autofree char *opts = g_strdup_printf(
        "driver=qcow2,file.driver=file,file.filename=%s/%s%s%s", tmpdir,
        c->image, c->extra && *c->extra ? "," : "", c->extra ? c->extra : "");
    c->bs = bdrv_co_open_keyval(opts, &c->err);
}

static BlockBackend *open_blk(Ctx *c, bool writable)
{
    c->err = NULL;
    coroutine_run_sync(open_co, c);
    if (!c->bs) {
        fail_msg("open %s: %s", c->image, c->err->message);
    }
    uint64_t perm = BLK_PERM_CONSISTENT_READ |
                    (writable ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0);
    c->blk = blk_new(perm, BLK_PERM_ALL);
    GError *err = NULL;
    if (blk_insert_bs(c->blk, c->bs, &err) < 0) {
        fail_msg("insert: %s", err->message);
    }
    bdrv_unref(c->bs); /* the backend holds it */
    return c->blk;
}

static void close_blk(Ctx *c)
{
    blk_unref(c->blk);
    c->blk = NULL;
    c->bs = NULL;
}

static void coroutine_fn compare_co(void *opaque)
{
    Ctx *c = opaque;
    g_autofree char *rp = path(c->raw);
    gchar *raw;
    gsize rlen;
    if (!g_file_get_contents(rp, &raw, &rlen, NULL)) {
        c->ret = -1;
        return;
    }
    int64_t len = blk_getlength(c->blk);
    c->ret = 0;
    if (len != (int64_t)rlen) {
        fprintf(stderr, "%s: length %" PRId64 " != %zu\n", c->image, len,
                (size_t)rlen);
        c->ret = -1;
    }
    size_t chunk = 3 * 65536 + 4096; /* crosses clusters unevenly */
    uint8_t *buf = g_malloc(chunk);
    for (int64_t off = 0; c->ret == 0 && off < len; off += (int64_t)chunk) {
        size_t n = MIN(chunk, (size_t)(len - off));
        int r = blk_co_pread(c->blk, off, (int64_t)n, buf, 0);
        if (r < 0) {
            fprintf(stderr, "%s: read at %" PRId64 ": %s\n", c->image, off,
                    g_strerror(-r));
            c->ret = r;
            break;
        }
        if (memcmp(buf, raw + off, n)) {
            for (size_t i = 0; i < n; i++) {
                if (buf[i] != (uint8_t)raw[off + i]) {
                    fprintf(stderr, "%s: differs at %" PRId64 "\n", c->image,
                            off + (int64_t)i);
                    break;
                }
            }
            c->ret = -1;
        }
    }
    g_free(buf);
    g_free(raw);
}

/* blockd reads `image` exactly as qemu-img converts it to raw. */
static void check_reads_like_qemu(const char *image, const char *extra)
{
    g_autofree char *raw = g_strdup_printf("%s.raw", image);
    assert_int_equal(sh("qemu-img convert -O raw %s %s", image, raw), 0);
    Ctx c = { .image = image, .extra = extra, .raw = raw };
    open_blk(&c, false);
    coroutine_run_sync(compare_co, &c);
    close_blk(&c);
    assert_int_equal(c.ret, 0);
}

static void test_read_corpus(void **state)
{
    if (!have_qemu) {
        skip();
    }
    /* zero clusters, partial clusters, data */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 plain.qcow2 64M && "
           "qemu-io -c 'write -P 0xaa 0 1M' -c 'write -P 0xbb 5M 100k' "
           "-c 'write -z 512k 64k' -c 'write -z 10M 4M' "
           "-c 'write -P 0xcc 63M 1M' plain.qcow2 >/dev/null"),
        0);
    check_reads_like_qemu("plain.qcow2", NULL);

    /* compressed */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 src.qcow2 8M && "
           "qemu-io -c 'write -P 0x11 0 3M' -c 'write -P 0x22 3M 17k' "
           "-c 'write -P 0x33 6M 1M' src.qcow2 >/dev/null && "
           "head -c 1M /dev/urandom > rnd && "
           "qemu-io -f qcow2 -c 'write -P 0x44 4M 512' src.qcow2 >/dev/null && "
           "qemu-img convert -c -O qcow2 src.qcow2 comp.qcow2"),
        0);
    check_reads_like_qemu("comp.qcow2", NULL);

    /* backing chain, top larger than base, COW inside qemu */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 base.qcow2 16M && "
           "qemu-io -c 'write -P 0x55 0 16M' base.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 32M && "
           "qemu-io -c 'write -P 0x66 4k 4k' -c 'write -z 1M 64k' "
           "-c 'write -P 0x77 20M 8k' top.qcow2 >/dev/null"),
        0);
    check_reads_like_qemu("top.qcow2", NULL);
    /* backing over raw without a format: probed */
    assert_int_equal(
        sh("head -c 4M /dev/urandom > base.raw && "
           "qemu-img create -q -f qcow2 -b base.raw -F raw topraw.qcow2 4M && "
           "qemu-io -c 'write -P 0x12 100k 3k' topraw.qcow2 >/dev/null"),
        0);
    check_reads_like_qemu("topraw.qcow2", NULL);

    /* cluster sizes, refcount widths, v2 */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 4M && "
           "qemu-io -c 'write -P 0x1 1000 300k' -c 'write -z 2M 4k' "
           "c512.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -o cluster_size=2M c2m.qcow2 16M && "
           "qemu-io -c 'write -P 0x2 3M 5M' c2m.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -o refcount_bits=1 r1.qcow2 8M && "
           "qemu-io -c 'write -P 0x3 0 2M' r1.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -o refcount_bits=64 r64.qcow2 8M && "
           "qemu-io -c 'write -P 0x4 1M 2M' r64.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 8M && "
           "qemu-io -c 'write -P 0x5 1M 2M' -c 'write -z 0 64k' "
           "v2.qcow2 >/dev/null"),
        0);
    check_reads_like_qemu("c512.qcow2", NULL);
    check_reads_like_qemu("c2m.qcow2", NULL);
    check_reads_like_qemu("r1.qcow2", NULL);
    check_reads_like_qemu("r64.qcow2", NULL);
    check_reads_like_qemu("v2.qcow2", NULL);

    /* internal snapshots */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 snap.qcow2 8M && "
           "qemu-io -c 'write -P 0x6 0 2M' snap.qcow2 >/dev/null && "
           "qemu-img snapshot -c s1 snap.qcow2 && "
           "qemu-io -c 'write -P 0x7 1M 2M' snap.qcow2 >/dev/null"),
        0);
    check_reads_like_qemu("snap.qcow2", NULL);
}

/* ---- writes ---- */

typedef struct WriteJob {
    Ctx *c;
    uint8_t *ref; /* expected content */
    int64_t len;
    unsigned seed;
    int nops;
    int *pending;
    int ret;
    bool compressed;
} WriteJob;

static void coroutine_fn write_job(void *opaque)
{
    WriteJob *j = opaque;
    GRand *r = g_rand_new_with_seed(j->seed);
    uint8_t *buf = g_malloc(256 * 1024);
    for (int i = 0; i < j->nops && j->ret == 0; i++) {
        int kind = g_rand_int_range(r, 0, 10);
        int64_t len = g_rand_int_range(r, 1, 200 * 1024);
        int64_t off = g_rand_int_range(r, 0, (gint32)(j->len - len));
        if (kind < 7) {
            memset(buf, g_rand_int_range(r, 1, 255), (size_t)len);
            buf[0] = (uint8_t)i;
            j->ret = blk_co_pwrite(j->c->blk, off, len, buf, 0);
            memcpy(j->ref + off, buf, (size_t)len);
        } else if (kind < 9) {
            j->ret = blk_co_pwrite_zeroes(j->c->blk, off, len,
                                          kind == 8 ? BDRV_REQ_MAY_UNMAP : 0);
            memset(j->ref + off, 0, (size_t)len);
        } else {
            j->ret = blk_co_flush(j->c->blk);
        }
        if (j->ret < 0) {
            fprintf(stderr, "op %d kind %d at %" PRId64 "+%" PRId64 ": %s\n", i,
                    kind, off, len, g_strerror(-j->ret));
        }
    }
    g_free(buf);
    g_rand_free(r);
    (*j->pending)--;
}

static void write_file(const char *name, const void *data, size_t len)
{
    g_autofree char *p = path(name);
    assert_true(g_file_set_contents(p, data, (gssize)len, NULL));
}

static void check_image(const char *image, const char *refraw)
{
    assert_int_equal(sh("qemu-img check %s", image), 0);
    assert_int_equal(sh("qemu-img check %s | grep -q 'No errors were found'",
                        image),
                     0);
    assert_int_equal(sh("qemu-img compare -q -f qcow2 -F raw %s %s", image,
                        refraw),
                     0);
}

/* Sequential random ops (one coroutine), then many in parallel. */
static void run_writes(const char *image, const char *extra, int64_t len,
                       uint8_t *ref, int jobs, int nops)
{
    Ctx c = { .image = image, .extra = extra };
    open_blk(&c, true);
    int pending = jobs;
    WriteJob *j = g_new0(WriteJob, jobs);
    for (int i = 0; i < jobs; i++) {
        j[i] = (WriteJob){ .c = &c,
                           .ref = ref,
                           .len = len,
                           .seed = 1234u + (unsigned)i,
                           .nops = nops,
                           .pending = &pending };
    }
    for (int i = 0; i < jobs; i++) {
        coroutine_enter(coroutine_create(write_job, &j[i]));
    }
    AIO_WAIT_WHILE(pending > 0);
    for (int i = 0; i < jobs; i++) {
        assert_int_equal(j[i].ret, 0);
    }
    g_free(j);
    close_blk(&c);
}

static void test_write_random(void **state)
{
    if (!have_qemu) {
        skip();
    }
    const int64_t len = 32 * 1024 * 1024;
    /* with a backing file shorter than the image */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 wbase.qcow2 20M && "
           "qemu-io -c 'write -P 0x5a 0 20M' wbase.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -b wbase.qcow2 -F qcow2 w.qcow2 32M"),
        0);
    uint8_t *ref = g_malloc0(len);
    memset(ref, 0x5a, 20 * 1024 * 1024);
    run_writes("w.qcow2", NULL, len, ref, 1, 400);
    write_file("w.ref", ref, len);
    check_image("w.qcow2", "w.ref");

    /* again on the now allocated image (in-place writes, COPIED) */
    run_writes("w.qcow2", NULL, len, ref, 1, 200);
    write_file("w.ref", ref, len);
    check_image("w.qcow2", "w.ref");

    /* tiny caches: evictions of dirty tables in every order */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -o cluster_size=4k -b wbase.qcow2 "
           "-F qcow2 tiny.qcow2 32M && qemu-io -c 'write -P 0x21 0 3M' "
           "tiny.qcow2 >/dev/null && qemu-img snapshot -c s tiny.qcow2"),
        0);
    memset(ref, 0x5a, 20 * 1024 * 1024);
    memset(ref + 20 * 1024 * 1024, 0, len - 20 * 1024 * 1024);
    memset(ref, 0x21, 3 * 1024 * 1024);
    run_writes("tiny.qcow2", "l2-cache-size=8192,refcount-cache-size=16384",
               len, ref, 1, 600);
    write_file("tiny.ref", ref, len);
    check_image("tiny.qcow2", "tiny.ref");

    /* 512-byte clusters with 1-bit refcounts (table growth), no backing */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 "
           "small.qcow2 32M"),
        0);
    memset(ref, 0, len);
    run_writes("small.qcow2", NULL, len, ref, 1, 300);
    write_file("small.ref", ref, len);
    check_image("small.qcow2", "small.ref");
    g_free(ref);
}

typedef struct ParJob {
    Ctx *c;
    int64_t off;
    int64_t len;
    uint8_t pattern;
    int *pending;
    int ret;
} ParJob;

static void coroutine_fn par_job(void *opaque)
{
    ParJob *p = opaque;
    uint8_t *buf = g_malloc(p->len);
    memset(buf, p->pattern, p->len);
    p->ret = blk_co_pwrite(p->c->blk, p->off, p->len, buf, 0);
    g_free(buf);
    (*p->pending)--;
}

/* Many concurrent writes, some overlapping the same clusters. */
static void test_write_concurrent(void **state)
{
    if (!have_qemu) {
        skip();
    }
    const int64_t len = 16 * 1024 * 1024;
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 cbase.qcow2 16M && "
           "qemu-io -c 'write -P 0x99 0 16M' cbase.qcow2 >/dev/null && "
           "qemu-img create -q -f qcow2 -b cbase.qcow2 -F qcow2 conc.qcow2 16M"),
        0);
    uint8_t *ref = g_malloc(len);
    memset(ref, 0x99, len);
    Ctx c = { .image = "conc.qcow2" };
    open_blk(&c, true);
    enum { N = 256 };
    ParJob jobs[N];
    int pending = N;
    GRand *r = g_rand_new_with_seed(77);
    for (int i = 0; i < N; i++) {
        /* disjoint 4k pieces, many within the same 64k cluster */
        int64_t slot = g_rand_int_range(r, 0, (gint32)(len / 4096));
        jobs[i] = (ParJob){ &c, slot * 4096 + 100, 3000, (uint8_t)(i + 1),
                            &pending, 0 };
    }
    /* later jobs win where pieces collide: make them disjoint */
    GHashTable *seen = g_hash_table_new(g_int64_hash, g_int64_equal);
    for (int i = 0; i < N; i++) {
        while (g_hash_table_contains(seen, &jobs[i].off)) {
            jobs[i].off += 4096;
            if (jobs[i].off + jobs[i].len > len) {
                jobs[i].off = 100;
            }
        }
        g_hash_table_add(seen, &jobs[i].off);
        memset(ref + jobs[i].off, jobs[i].pattern, jobs[i].len);
    }
    for (int i = 0; i < N; i++) {
        coroutine_enter(coroutine_create(par_job, &jobs[i]));
    }
    AIO_WAIT_WHILE(pending > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].ret, 0);
    }
    g_hash_table_destroy(seen);
    g_rand_free(r);
    close_blk(&c);
    write_file("conc.ref", ref, len);
    check_image("conc.qcow2", "conc.ref");
    g_free(ref);
}

/* ---- creation, compressed writes, discard, truncate ---- */

typedef struct CreateCo {
    const char *file;
    Qcow2CreateParams p;
    GError *err;
    int ret;
} CreateCo;

static void coroutine_fn create_co(void *opaque)
{
    CreateCo *cc = opaque;
    g_autofree char *p = path(cc->file);
    cc->ret = qcow2_co_create_image(p, &cc->p, &cc->err);
}

static void create_image(const char *file, Qcow2CreateParams p)
{
    CreateCo cc = { .file = file, .p = p };
    coroutine_run_sync(create_co, &cc);
    if (cc.ret < 0) {
        fail_msg("create %s: %s", file, cc.err ? cc.err->message : "?");
    }
}

static void test_create(void **state)
{
    if (!have_qemu) {
        skip();
    }
    struct {
        const char *name;
        Qcow2CreateParams p;
    } cases[] = {
        { "cr-default.qcow2", { .size = 64 << 20 } },
        { "cr-v2.qcow2", { .size = 10 << 20, .version = 2 } },
        { "cr-512.qcow2",
          { .size = 256 << 20, .cluster_size = 512, .refcount_bits = 64 } },
        { "cr-2m.qcow2", { .size = 100 << 20, .cluster_size = 2 << 20 } },
        { "cr-r1.qcow2", { .size = 8 << 20, .refcount_bits = 1,
                           .lazy_refcounts = true } },
        { "cr-meta.qcow2",
          { .size = 16 << 20, .preallocation = PREALLOC_MODE_METADATA } },
        { "cr-falloc.qcow2",
          { .size = 16 << 20, .preallocation = PREALLOC_MODE_FALLOC } },
        { "cr-full.qcow2",
          { .size = 8 << 20, .preallocation = PREALLOC_MODE_FULL } },
        { "cr-back.qcow2",
          { .size = 32 << 20, .backing_file = "base.qcow2",
            .backing_fmt = "qcow2" } },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        create_image(cases[i].name, cases[i].p);
        assert_int_equal(sh("qemu-img check %s | grep -q 'No errors'",
                            cases[i].name),
                         0);
        if (!cases[i].p.backing_file) {
            g_autofree char *z = g_strdup_printf("%s.zero", cases[i].name);
            assert_int_equal(sh("truncate -s %" PRIu64 " %s && qemu-img "
                                "compare -q -f qcow2 -F raw %s %s",
                                cases[i].p.size, z, cases[i].name, z),
                             0);
        }
    }
    assert_int_equal(sh("qemu-img info cr-v2.qcow2 | grep -q 'compat: 0.10'"),
                     0);
    assert_int_equal(sh("qemu-img info cr-r1.qcow2 | grep -q "
                        "'lazy refcounts: true'"),
                     0);
    assert_int_equal(sh("qemu-img check cr-meta.qcow2 | grep -q "
                        "'256/256 = 100.00%% allocated'"),
                     0);
    assert_int_equal(sh("qemu-img check cr-falloc.qcow2 | grep -q "
                        "'256/256 = 100.00%% allocated' && "
                        "test $(du -k cr-falloc.qcow2 | cut -f1) -gt 16000 && "
                        "test $(stat -c %%s cr-falloc.qcow2) -eq "
                        "$(qemu-img check cr-falloc.qcow2 | sed -n "
                        "'s/Image end offset: //p')"),
                     0);
    /* write to the created image and check it */
    const int64_t len = 64 << 20;
    uint8_t *ref = g_malloc0(len);
    run_writes("cr-default.qcow2", NULL, len, ref, 1, 200);
    write_file("cr.ref", ref, len);
    check_image("cr-default.qcow2", "cr.ref");
    g_free(ref);
}

typedef struct MiscCo {
    Ctx *c;
    int ret;
} MiscCo;

static void coroutine_fn compressed_co(void *opaque)
{
    MiscCo *m = opaque;
    uint8_t *buf = g_malloc(65536);
    m->ret = 0;
    for (int i = 0; i < 64 && m->ret == 0; i++) {
        for (int k = 0; k < 65536; k++) {
            buf[k] = (uint8_t)((k / (i + 1)) ^ i);
        }
        if (i % 7 == 3) {
            for (int k = 0; k < 65536; k++) {
                buf[k] = (uint8_t)g_random_int(); /* incompressible */
            }
        }
        m->ret = blk_co_pwrite(m->c->blk, (int64_t)i * 65536, 65536, buf,
                               BDRV_REQ_WRITE_COMPRESSED);
        g_autofree char *p = path("compw.ref");
        FILE *f = fopen(p, i ? "r+b" : "wb");
        fseek(f, (long)i * 65536, SEEK_SET);
        fwrite(buf, 1, 65536, f);
        fclose(f);
    }
    g_free(buf);
}

static void coroutine_fn discard_co(void *opaque)
{
    MiscCo *m = opaque;
    m->ret = blk_co_pdiscard(m->c->blk, 65536, 10 * 65536);
    if (m->ret == 0) {
        m->ret = blk_co_pdiscard(m->c->blk, 20 * 65536 + 1000, 3 * 65536);
    }
}

static void test_compressed_discard(void **state)
{
    if (!have_qemu) {
        skip();
    }
    assert_int_equal(sh("qemu-img create -q -f qcow2 compw.qcow2 4M"), 0);
    Ctx c = { .image = "compw.qcow2" };
    open_blk(&c, true);
    MiscCo m = { &c, 0 };
    coroutine_run_sync(compressed_co, &m);
    assert_int_equal(m.ret, 0);
    close_blk(&c);
    assert_int_equal(sh("truncate -s 4M compw.ref"), 0);
    check_image("compw.qcow2", "compw.ref");
    assert_int_equal(sh("qemu-img check compw.qcow2 | "
                        "grep -q '[1-9][0-9.]*%% compressed clusters'"),
                     0);

    /* discard: clusters freed, content zero, no leaks */
    c.extra = "discard=unmap";
    open_blk(&c, true);
    coroutine_run_sync(discard_co, &m);
    assert_int_equal(m.ret, 0);
    close_blk(&c);
    assert_int_equal(
        sh("dd if=/dev/zero of=compw.ref bs=65536 seek=1 count=10 "
           "conv=notrunc status=none && "
           "dd if=/dev/zero of=compw.ref bs=65536 seek=21 count=2 "
           "conv=notrunc status=none"),
        0);
    check_image("compw.qcow2", "compw.ref");
}

static void coroutine_fn truncate_co(void *opaque)
{
    MiscCo *m = opaque;
    GError *err = NULL;
    m->ret = blk_co_truncate(m->c->blk, 3ll << 30, false, PREALLOC_MODE_OFF,
                             0, &err);
    if (m->ret == 0) {
        uint8_t b[4096];
        memset(b, 0xab, sizeof(b));
        m->ret = blk_co_pwrite(m->c->blk, (3ll << 30) - 4096, 4096, b, 0);
    }
    if (m->ret == 0) {
        /* shrinking over allocated data is refused */
        int r = blk_co_truncate(m->c->blk, 1 << 20, false, PREALLOC_MODE_OFF,
                                0, &err);
        m->ret = r < 0 ? 0 : -1;
        g_clear_error(&err);
    }
    g_clear_error(&err);
}

static void test_truncate(void **state)
{
    if (!have_qemu) {
        skip();
    }
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=4k "
                        "tr.qcow2 1M"),
                     0);
    Ctx c = { .image = "tr.qcow2" };
    open_blk(&c, true);
    MiscCo m = { &c, 0 };
    coroutine_run_sync(truncate_co, &m);
    assert_int_equal(m.ret, 0);
    close_blk(&c);
    assert_int_equal(sh("qemu-img check tr.qcow2 | grep -q 'No errors'"), 0);
    assert_int_equal(sh("qemu-img info tr.qcow2 | grep -q 'virtual size: 3 "
                        "GiB'"),
                     0);
    assert_int_equal(sh("qemu-io -c 'read -P 0xab 3221221376 4096' tr.qcow2 "
                        "| grep -q 'read 4096'"),
                     0);
}

/* Open errors on damaged headers never crash and say why. */
static void test_bad_headers(void **state)
{
    if (!have_qemu) {
        skip();
    }
    struct {
        const char *patch; /* printf for dd: offset and bytes */
        const char *expect;
    } cases[] = {
        { "printf '\\000\\000\\000\\100' | dd of=%s bs=1 seek=20 conv=notrunc "
          "status=none",
          "cluster size" },
        { "printf '\\000\\000\\000\\011' | dd of=%s bs=1 seek=96 conv=notrunc "
          "status=none",
          "64 bits" },
        { "printf '\\020\\000\\000\\000' | dd of=%s bs=1 seek=36 conv=notrunc "
          "status=none",
          "L1" },
        { "printf '\\200\\000\\000\\000\\000\\000\\000\\000' | dd of=%s bs=1 "
          "seek=72 conv=notrunc status=none",
          "Unsupported qcow2 feature(s)" },
        { "printf '\\000\\000\\000\\000\\000\\000\\000\\002' | dd of=%s bs=1 "
          "seek=72 conv=notrunc status=none",
          "corrupt" },
        { "printf '\\000\\000\\020\\000\\000\\000\\000\\000' | dd of=%s bs=1 "
          "seek=48 conv=notrunc status=none",
          "reference count table" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *name = g_strdup_printf("bad%zu.qcow2", i);
        assert_int_equal(sh("qemu-img create -q -f qcow2 %s 16M", name), 0);
        g_autofree char *cmd = g_strdup_printf(cases[i].patch, name);
        assert_int_equal(sh("%s", cmd), 0);
        Ctx c = { .image = name };
        coroutine_run_sync(open_co, &c);
        if (c.bs) {
            fail_msg("%s opened", name);
        }
        if (!strcasestr(c.err->message, cases[i].expect)) {
            fail_msg("%s: '%s' lacks '%s'", name, c.err->message,
                     cases[i].expect);
        }
        g_clear_error(&c.err);
    }
    /* the corrupt image opens read-only */
    Ctx c = { .image = "bad4.qcow2", .extra = "read-only=on" };
    coroutine_run_sync(open_co, &c);
    assert_non_null(c.bs);
    bdrv_unref(c.bs);
}

/* Writes to an image with an internal snapshot copy shared clusters and
 * L2 tables; the snapshot keeps its content and the refcounts add up. */
static void test_snapshot_cow(void **state)
{
    if (!have_qemu) {
        skip();
    }
    const int64_t len = 16 * 1024 * 1024;
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 sn.qcow2 16M && "
           "qemu-io -c 'write -P 0x31 0 6M' -c 'write -c -P 0x32 8M 64k' "
           "-c 'write -z 9M 64k' sn.qcow2 >/dev/null && "
           "qemu-img snapshot -c s1 sn.qcow2 && "
           "qemu-img convert -O raw sn.qcow2 sn.s1.raw && "
           "cp sn.s1.raw sn.ref"),
        0);
    g_autofree char *refp = path("sn.ref");
    gchar *ref;
    gsize rlen;
    assert_true(g_file_get_contents(refp, &ref, &rlen, NULL));
    assert_int_equal((int64_t)rlen, len);
    run_writes("sn.qcow2", NULL, len, (uint8_t *)ref, 1, 300);
    write_file("sn.ref", ref, len);
    g_free(ref);
    check_image("sn.qcow2", "sn.ref");
    /* the snapshot still reads as it was */
    assert_int_equal(sh("cp sn.qcow2 sn2.qcow2 && qemu-img snapshot -a s1 "
                        "sn2.qcow2 && qemu-img compare -q -f qcow2 -F raw "
                        "sn2.qcow2 sn.s1.raw && qemu-img check sn2.qcow2 | "
                        "grep -q 'No errors'"),
                     0);
    /* blockd reads an image whose active layer shares nothing anymore */
    check_reads_like_qemu("sn.qcow2", NULL);
}

static void coroutine_fn corrupt_write_co(void *opaque)
{
    MiscCo *m = opaque;
    uint8_t b[4096];
    memset(b, 0xee, sizeof(b));
    m->ret = blk_co_pwrite(m->c->blk, 0, 4096, b, 0);
}

/* An image left dirty by a crash with lazy refcounts: opening it writable
 * rebuilds the refcounts; data and snapshot survive. */
static void test_dirty_rebuild(void **state)
{
    if (!have_qemu) {
        skip();
    }
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4k "
           "lz.qcow2 64M && qemu-io -c 'write -P 3 0 1M' "
           "-c 'write -P 4 10M 300k' -c 'write -z 20M 64k' lz.qcow2 "
           ">/dev/null && qemu-img snapshot -c s lz.qcow2 && "
           "(qemu-io -c 'write -P 5 512k 1M' -c 'write -c -P 6 30M 64k' "
           "-c 'write -P 6 40M 2M' -c abort lz.qcow2 >/dev/null 2>&1; true) && "
           "qemu-img info --output=json lz.qcow2 | grep -q '\"dirty-flag\": "
           "true' && qemu-img convert -O raw lz.qcow2 lz.ref && "
           "cp lz.qcow2 lz-s.qcow2 && qemu-img snapshot -a s lz-s.qcow2 && "
           "qemu-img convert -O raw lz-s.qcow2 lz-s.ref"),
        0);
    /* read-only: opens as it is */
    Ctx c = { .image = "lz.qcow2", .extra = "read-only=on" };
    coroutine_run_sync(open_co, &c);
    assert_non_null(c.bs);
    bdrv_unref(c.bs);
    /* writable: rebuilt, clean, same content, snapshot intact */
    const int64_t len = 64 * 1024 * 1024;
    g_autofree char *refp = path("lz.ref");
    gchar *ref;
    gsize rlen;
    assert_true(g_file_get_contents(refp, &ref, &rlen, NULL));
    run_writes("lz.qcow2", NULL, len, (uint8_t *)ref, 1, 100);
    write_file("lz.ref", ref, len);
    g_free(ref);
    check_image("lz.qcow2", "lz.ref");
    assert_int_equal(sh("qemu-img info --output=json lz.qcow2 | grep -q "
                        "'\"dirty-flag\": false' && "
                        "qemu-img snapshot -a s lz.qcow2 && qemu-img compare "
                        "-q -f qcow2 -F raw lz.qcow2 lz-s.ref"),
                     0);
}

static void coroutine_fn corrupt_read_co(void *opaque)
{
    MiscCo *m = opaque;
    uint8_t b[4096];
    m->ret = blk_co_pread(m->c->blk, 0, 4096, b, 0);
}

/* A damaged L2 entry pointing at the refcount table: the write is refused,
 * the image marked corrupt, the metadata untouched, no crash. */
static void test_corruption(void **state)
{
    if (!have_qemu) {
        skip();
    }
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 cor.qcow2 1M && "
           "qemu-io -c 'write -P 0x11 0 64k' cor.qcow2 >/dev/null && "
           "qemu-img map --output=json cor.qcow2 | grep -q '\"offset\": "
           "327680' && "
           "printf '\\200\\000\\000\\000\\000\\001\\000\\000' | dd of=cor.qcow2 "
           "bs=1 seek=262144 conv=notrunc status=none && "
           "dd if=cor.qcow2 of=cor.reftable bs=65536 skip=1 count=1 "
           "status=none"),
        0);
    Ctx c = { .image = "cor.qcow2" };
    open_blk(&c, true);
    MiscCo m = { &c, 0 };
    coroutine_run_sync(corrupt_write_co, &m);
    assert_int_equal(m.ret, -EIO);
    /* further writes fail too */
    coroutine_run_sync(corrupt_write_co, &m);
    assert_true(m.ret < 0);
    close_blk(&c);
    assert_int_equal(sh("qemu-img info cor.qcow2 | grep -q 'corrupt: true'"),
                     0);
    assert_int_equal(sh("dd if=cor.qcow2 bs=65536 skip=1 count=1 status=none "
                        "| cmp -s - cor.reftable"),
                     0);
    /* read-only open still works; read/write open is refused */
    c.extra = "read-only=on";
    coroutine_run_sync(open_co, &c);
    assert_non_null(c.bs);
    bdrv_unref(c.bs);
    c.extra = NULL;
    c.bs = NULL;
    coroutine_run_sync(open_co, &c);
    assert_null(c.bs);
    assert_non_null(strstr(c.err->message, "corrupt"));
    g_clear_error(&c.err);

    /* an L2 entry pointing beyond the end of the file: reads fail, the
     * image is marked corrupt */
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 cor2.qcow2 1M && "
           "qemu-io -c 'write -P 0x11 0 64k' cor2.qcow2 >/dev/null && "
           "printf '\\200\\000\\000\\000\\020\\000\\000\\000' | "
           "dd of=cor2.qcow2 bs=1 seek=262144 conv=notrunc status=none"),
        0);
    Ctx c2 = { .image = "cor2.qcow2" };
    open_blk(&c2, true);
    MiscCo m2 = { &c2, 0 };
    coroutine_run_sync(corrupt_read_co, &m2);
    assert_int_equal(m2.ret, -EIO);
    close_blk(&c2);
    assert_int_equal(sh("qemu-img info cor2.qcow2 | grep -q 'corrupt: true'"),
                     0);
}

int main(void)
{
    GError *err = NULL;
    if (!aio_init(&err)) {
        fprintf(stderr, "aio_init: %s\n", err->message);
        return 1;
    }
    g_strlcpy(tmpdir, "/tmp/test-qcow2-XXXXXX", sizeof(tmpdir));
    if (!g_mkdtemp(tmpdir)) {
        return 1;
    }
    g_autofree char *qimg = g_find_program_in_path("qemu-img");
    g_autofree char *qio = g_find_program_in_path("qemu-io");
    have_qemu = qimg && qio;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_corpus),
        cmocka_unit_test(test_write_random),
        cmocka_unit_test(test_write_concurrent),
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_compressed_discard),
        cmocka_unit_test(test_truncate),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_corruption),
        cmocka_unit_test(test_snapshot_cow),
        cmocka_unit_test(test_dirty_rebuild),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    bdrv_close_all();
    if (ret == 0) {
        sh("rm -rf %s", tmpdir);
    }
    return ret;
}
