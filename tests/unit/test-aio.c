/*
 * Tests for the event loop: io_uring file I/O from coroutines (and the
 * worker-thread fallback), batching, the thread pool, bottom halves,
 * readiness polling and the coroutine socket helpers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine.h"

static char tmpdir[64];

static int make_temp_file(void)
{
    char *path = g_strdup_printf("%s/file-XXXXXX", tmpdir);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    g_free(path);
    return fd;
}

static void fill_pattern(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 9));
    }
}

/* ---- basic read/write/fsync/fallocate ---- */

typedef struct RwState {
    int fd;
    bool done;
} RwState;

static void coroutine_fn rw_entry(void *opaque)
{
    RwState *s = opaque;
    uint8_t wbuf[8192], rbuf[8192];
    struct iovec iov[2];

    fill_pattern(wbuf, sizeof(wbuf), 1);
    /* A two-element vector exercises writev. */
    iov[0] = (struct iovec){ wbuf, 1000 };
    iov[1] = (struct iovec){ wbuf + 1000, sizeof(wbuf) - 1000 };
    assert_int_equal(aio_co_pwritev(s->fd, iov, 2, 4096), sizeof(wbuf));
    assert_int_equal(aio_co_fsync(s->fd, true), 0);
    assert_int_equal(aio_co_fsync(s->fd, false), 0);

    memset(rbuf, 0xaa, sizeof(rbuf));
    iov[0] = (struct iovec){ rbuf, sizeof(rbuf) };
    assert_int_equal(aio_co_preadv(s->fd, iov, 1, 4096), sizeof(rbuf));
    assert_memory_equal(rbuf, wbuf, sizeof(rbuf));

    /* Short read at EOF. */
    assert_int_equal(aio_co_preadv(s->fd, iov, 1, 4096 + 4096),
                     sizeof(rbuf) - 4096);
    /* Past EOF: 0. */
    assert_int_equal(aio_co_preadv(s->fd, iov, 1, 1 << 20), 0);

    /* Punch a hole: reads back zero, size unchanged. */
    assert_int_equal(aio_co_fallocate(s->fd,
                                      FALLOC_FL_PUNCH_HOLE |
                                      FALLOC_FL_KEEP_SIZE, 4096, 4096), 0);
    assert_int_equal(aio_co_preadv(s->fd, iov, 1, 4096), sizeof(rbuf));
    for (int i = 0; i < 4096; i++) {
        assert_int_equal(rbuf[i], 0);
    }
    assert_memory_equal(rbuf + 4096, wbuf + 4096, 4096);

    /* Allocate beyond EOF: the file grows. */
    assert_int_equal(aio_co_fallocate(s->fd, 0, 0, 65536), 0);
    struct stat st;
    assert_int_equal(fstat(s->fd, &st), 0);
    assert_int_equal(st.st_size, 65536);

    /* Errors come back as -errno. */
    assert_int_equal(aio_co_preadv(-1, iov, 1, 0), -EBADF);
    assert_int_equal(aio_co_fsync(-1, true), -EBADF);
    s->done = true;
}

static void test_rw(void **state)
{
    RwState s = { .fd = make_temp_file() };

    coroutine_run_sync(rw_entry, &s);
    assert_true(s.done);
    close(s.fd);
}

/* Outside coroutine context the calls run synchronously. */
static void test_sync_calls(void **state)
{
    int fd = make_temp_file();
    char buf[16] = "hello, world!!!";
    char rbuf[16];
    struct iovec iov = { buf, sizeof(buf) };

    assert_false(in_coroutine());
    assert_int_equal(aio_co_pwritev(fd, &iov, 1, 100), sizeof(buf));
    iov.iov_base = rbuf;
    assert_int_equal(aio_co_preadv(fd, &iov, 1, 100), sizeof(buf));
    assert_memory_equal(buf, rbuf, sizeof(buf));
    assert_int_equal(aio_co_fsync(fd, true), 0);
    assert_int_equal(aio_co_fallocate(fd, 0, 0, 8192), 0);
    assert_int_equal(aio_co_poll(fd, POLLIN), 0);
    close(fd);
}

/* ---- many concurrent requests, batching ---- */

#define NREQ 1200 /* more than the ring's SQ and CQ: exercises waiting */
#define REQSZ 4096

typedef struct ConcState {
    int fd;
    unsigned remaining;
    uint8_t *buf;
} ConcState;

typedef struct ConcReq {
    ConcState *s;
    unsigned idx;
    bool write;
    int64_t ret;
} ConcReq;

static void coroutine_fn conc_entry(void *opaque)
{
    ConcReq *r = opaque;
    struct iovec iov = { r->s->buf + (size_t)r->idx * REQSZ, REQSZ };

    if (r->write) {
        r->ret = aio_co_pwritev(r->s->fd, &iov, 1, (int64_t)r->idx * REQSZ);
    } else {
        r->ret = aio_co_preadv(r->s->fd, &iov, 1, (int64_t)r->idx * REQSZ);
    }
    r->s->remaining--;
}

static void run_concurrent(ConcState *s, ConcReq *reqs, bool write)
{
    s->remaining = NREQ;
    /* All start from outside the loop: every SQE is queued before the
     * loop's prepare step submits. */
    for (unsigned i = 0; i < NREQ; i++) {
        reqs[i] = (ConcReq){ .s = s, .idx = i, .write = write, .ret = -1 };
        coroutine_enter(coroutine_create(conc_entry, &reqs[i]));
    }
    AIO_WAIT_WHILE(s->remaining > 0);
    for (unsigned i = 0; i < NREQ; i++) {
        assert_int_equal(reqs[i].ret, REQSZ);
    }
}

static void test_concurrent(void **state)
{
    ConcState s = { .fd = make_temp_file() };
    ConcReq *reqs = g_new(ConcReq, NREQ);
    uint8_t *expect = g_malloc((size_t)NREQ * REQSZ);
    AioStats before, after;

    s.buf = g_malloc((size_t)NREQ * REQSZ);
    for (unsigned i = 0; i < NREQ; i++) {
        fill_pattern(s.buf + (size_t)i * REQSZ, REQSZ, i);
    }
    memcpy(expect, s.buf, (size_t)NREQ * REQSZ);

    aio_get_stats(&before);
    run_concurrent(&s, reqs, true);
    aio_get_stats(&after);
    if (!g_getenv("BLOCKD_AIO_FORCE_THREADS")) {
        uint64_t sqes = after.submitted - before.submitted;
        uint64_t calls = after.submit_calls - before.submit_calls;
        assert_int_equal(sqes, NREQ);
        assert_int_equal(after.completed - before.completed, NREQ);
        /* Batched: far fewer io_uring_submit() calls than requests. */
        assert_true(calls * 16 <= sqes);
    }

    memset(s.buf, 0, (size_t)NREQ * REQSZ);
    run_concurrent(&s, reqs, false);
    assert_memory_equal(s.buf, expect, (size_t)NREQ * REQSZ);

    g_free(s.buf);
    g_free(expect);
    g_free(reqs);
    close(s.fd);
}

/* Requests issued one by one from one coroutine each see their own result
 * (user data routing). */
static void coroutine_fn sequential_entry(void *opaque)
{
    int fd = *(int *)opaque;
    for (int i = 0; i < 100; i++) {
        uint8_t b[100];
        memset(b, i, sizeof(b));
        struct iovec iov = { b, (size_t)i + 1 };
        assert_int_equal(aio_co_pwritev(fd, &iov, 1, i * 100), i + 1);
    }
    for (int i = 0; i < 100; i++) {
        uint8_t b[100];
        struct iovec iov = { b, (size_t)i + 1 };
        assert_int_equal(aio_co_preadv(fd, &iov, 1, i * 100), i + 1);
        for (int j = 0; j <= i; j++) {
            assert_int_equal(b[j], i);
        }
    }
}

static void test_sequential(void **state)
{
    int fd = make_temp_file();
    coroutine_run_sync(sequential_entry, &fd);
    close(fd);
}

/* ---- thread pool ---- */

typedef struct TpArg {
    int value;
    GThread *ran_on;
} TpArg;

static int tp_fn(void *opaque)
{
    TpArg *a = opaque;
    a->ran_on = g_thread_self();
    g_usleep(100 * 1000);
    return a->value * 2;
}

typedef struct TpState {
    TpArg arg;
    int ret;
    unsigned *remaining;
} TpState;

static void coroutine_fn tp_entry(void *opaque)
{
    TpState *t = opaque;
    t->ret = thread_pool_co_run(tp_fn, &t->arg);
    (*t->remaining)--;
}

static void test_thread_pool(void **state)
{
    enum { N = 8 };
    TpState t[N];
    unsigned remaining = N;
    int64_t start = clock_ns();

    for (int i = 0; i < N; i++) {
        t[i] = (TpState){ .arg = { .value = i + 1 }, .ret = -1,
                          .remaining = &remaining };
        coroutine_enter(coroutine_create(tp_entry, &t[i]));
    }
    AIO_WAIT_WHILE(remaining > 0);
    int64_t elapsed = clock_ns() - start;
    for (int i = 0; i < N; i++) {
        assert_int_equal(t[i].ret, (i + 1) * 2);
        assert_ptr_not_equal(t[i].arg.ran_on, g_thread_self());
    }
    /* Run in parallel: well under N * 100ms. */
    assert_true(elapsed < (int64_t)N * 100 * 1000 * 1000 / 2);

    /* Outside coroutine context it runs inline. */
    TpArg a = { .value = 21 };
    assert_int_equal(thread_pool_co_run(tp_fn, &a), 42);
    assert_ptr_equal(a.ran_on, g_thread_self());
}

/* ---- bottom halves and the clock ---- */

static void bh_cb(void *opaque)
{
    GArray *order = opaque;
    int v = order->len;
    g_array_append_val(order, v);
}

static void test_bh(void **state)
{
    GArray *order = g_array_new(FALSE, FALSE, sizeof(int));

    aio_bh_schedule(bh_cb, order);
    aio_bh_schedule(bh_cb, order);
    aio_bh_schedule(bh_cb, order);
    assert_int_equal(order->len, 0); /* not run synchronously */
    AIO_WAIT_WHILE(order->len < 3);
    /* One-shot: nothing more runs. */
    while (aio_poll(false)) {
    }
    assert_int_equal(order->len, 3);
    g_array_free(order, TRUE);

    int64_t a = clock_ns();
    g_usleep(2000);
    int64_t b = clock_ns();
    assert_true(b - a >= 2000 * 1000);
}

/* ---- readiness ---- */

typedef struct PollState {
    int rfd, wfd;
    int ret;
    bool done;
} PollState;

static void coroutine_fn poll_entry(void *opaque)
{
    PollState *p = opaque;
    p->ret = aio_co_poll(p->rfd, POLLIN);
    p->done = true;
}

static gboolean poll_writer(gpointer opaque)
{
    PollState *p = opaque;
    assert_int_equal(write(p->wfd, "x", 1), 1);
    return G_SOURCE_REMOVE;
}

static void test_poll(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    PollState p = { .rfd = fds[0], .wfd = fds[1], .ret = -1 };

    coroutine_enter(coroutine_create(poll_entry, &p));
    /* Nothing to read: it stays waiting across loop iterations. */
    for (int i = 0; i < 5; i++) {
        aio_poll(false);
    }
    assert_false(p.done);
    g_timeout_add(20, poll_writer, &p);
    AIO_WAIT_WHILE(!p.done);
    assert_int_equal(p.ret, 0);
    close(fds[0]);
    close(fds[1]);
}

/* ---- coroutine sockets ---- */

#define SOCK_BYTES (4 * 1024 * 1024)

typedef struct SockState {
    int fd;
    uint8_t *buf;
    int ret;
    bool done;
} SockState;

/* A slow peer on another thread. */
static gpointer slow_writer_thread(gpointer opaque)
{
    SockState *s = opaque;
    size_t done = 0;
    while (done < SOCK_BYTES) {
        size_t n = MIN((size_t)65536 + 17, SOCK_BYTES - done);
        ssize_t w = write(s->fd, s->buf + done, n);
        g_assert(w > 0);
        done += w;
        g_usleep(500);
    }
    /* Half a record, then hang up: the reader sees -EPIPE. */
    g_assert(write(s->fd, "abc", 3) == 3);
    g_usleep(20 * 1000);
    close(s->fd);
    return NULL;
}

static gpointer slow_reader_thread(gpointer opaque)
{
    SockState *s = opaque;
    size_t done = 0;
    while (done < SOCK_BYTES) {
        ssize_t r = read(s->fd, s->buf + done,
                         MIN((size_t)32768, SOCK_BYTES - done));
        g_assert(r > 0);
        done += r;
        g_usleep(200);
    }
    close(s->fd);
    return NULL;
}

static void coroutine_fn sock_read_entry(void *opaque)
{
    SockState *s = opaque;

    s->ret = co_sock_read_full(s->fd, s->buf, SOCK_BYTES);
    assert_int_equal(s->ret, 1);
    uint8_t rec[8];
    /* End of stream part way through a record. */
    assert_int_equal(co_sock_read_full(s->fd, rec, sizeof(rec)), -EPIPE);
    /* Then clean end of stream. */
    assert_int_equal(co_sock_read_full(s->fd, rec, sizeof(rec)), 0);
    assert_int_equal(co_sock_read_some(s->fd, rec, sizeof(rec)), 0);
    s->done = true;
}

static gboolean count_ticks(gpointer opaque)
{
    (*(unsigned *)opaque)++;
    return G_SOURCE_CONTINUE;
}

static void test_sock_read(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(sock_set_nonblocking(sv[0]), 0);
    assert_true(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);

    SockState w = { .fd = sv[1], .buf = g_malloc(SOCK_BYTES) };
    SockState r = { .fd = sv[0], .buf = g_malloc0(SOCK_BYTES) };
    fill_pattern(w.buf, SOCK_BYTES, 7);

    /* The loop keeps running while the reader waits. */
    unsigned ticks = 0;
    guint tick_id = g_timeout_add(1, count_ticks, &ticks);

    GThread *t = g_thread_new("writer", slow_writer_thread, &w);
    coroutine_enter(coroutine_create(sock_read_entry, &r));
    AIO_WAIT_WHILE(!r.done);
    g_thread_join(t);
    g_source_remove(tick_id);

    assert_memory_equal(r.buf, w.buf, SOCK_BYTES);
    assert_true(ticks > 3);
    close(sv[0]);
    g_free(w.buf);
    g_free(r.buf);
}

static void coroutine_fn sock_write_entry(void *opaque)
{
    SockState *s = opaque;
    /* Many uneven pieces, more than fit in the socket buffer. */
    GArray *iov = g_array_new(FALSE, FALSE, sizeof(struct iovec));
    size_t off = 0;
    for (unsigned i = 0; off < SOCK_BYTES; i++) {
        size_t n = MIN((size_t)(i % 5 == 0 ? 0 : 1 + (i * 977) % 9000),
                       SOCK_BYTES - off);
        struct iovec v = { s->buf + off, n };
        g_array_append_val(iov, v);
        off += n;
    }
    s->ret = co_sock_writev_full(s->fd, (struct iovec *)iov->data, iov->len);
    g_array_free(iov, TRUE);
    s->done = true;
}

static void test_sock_write(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(sock_set_nonblocking(sv[0]), 0);

    SockState w = { .fd = sv[0], .buf = g_malloc(SOCK_BYTES), .ret = -1 };
    SockState r = { .fd = sv[1], .buf = g_malloc0(SOCK_BYTES) };
    fill_pattern(w.buf, SOCK_BYTES, 9);

    GThread *t = g_thread_new("reader", slow_reader_thread, &r);
    coroutine_enter(coroutine_create(sock_write_entry, &w));
    AIO_WAIT_WHILE(!w.done);
    g_thread_join(t);
    assert_int_equal(w.ret, 0);
    assert_memory_equal(r.buf, w.buf, SOCK_BYTES);
    close(sv[0]);
    g_free(w.buf);
    g_free(r.buf);
}

static void coroutine_fn sock_epipe_entry(void *opaque)
{
    SockState *s = opaque;
    s->ret = co_sock_write_full(s->fd, s->buf, SOCK_BYTES);
    s->done = true;
}

static void test_sock_epipe(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(sock_set_nonblocking(sv[0]), 0);
    close(sv[1]);
    /* SIGPIPE stays at its default (fatal) action: MSG_NOSIGNAL must
     * prevent it. */
    signal(SIGPIPE, SIG_DFL);
    SockState w = { .fd = sv[0], .buf = g_malloc0(SOCK_BYTES), .ret = 1 };
    coroutine_run_sync(sock_epipe_entry, &w);
    assert_int_equal(w.ret, -EPIPE);
    close(sv[0]);
    g_free(w.buf);
}

/* shutdown() wakes a reader waiting for data that never comes. */
static void coroutine_fn sock_wait_entry(void *opaque)
{
    SockState *s = opaque;
    uint8_t b[16];
    s->ret = co_sock_read_some(s->fd, b, sizeof(b));
    s->done = true;
}

static gboolean shutdown_later(gpointer opaque)
{
    shutdown(*(int *)opaque, SHUT_RDWR);
    return G_SOURCE_REMOVE;
}

static void test_sock_shutdown_wakes(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(sock_set_nonblocking(sv[0]), 0);
    SockState r = { .fd = sv[0], .ret = -1 };

    coroutine_enter(coroutine_create(sock_wait_entry, &r));
    for (int i = 0; i < 5; i++) {
        aio_poll(false);
    }
    assert_false(r.done);
    g_timeout_add(10, shutdown_later, &sv[0]);
    AIO_WAIT_WHILE(!r.done);
    assert_int_equal(r.ret, 0);
    close(sv[0]);
    close(sv[1]);
}

/* ---- listening sockets ---- */

static void test_listen_unix(void **state)
{
    char *path = g_strdup_printf("%s/sock", tmpdir);
    GError *err = NULL;
    struct stat st;

    int lfd = sock_listen_unix(path, 0600, &err);
    assert_true(lfd >= 0);
    assert_null(err);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    int cfd = sock_connect_unix(path, &err);
    assert_true(cfd >= 0);
    assert_true(fcntl(cfd, F_GETFL) & O_NONBLOCK);
    int afd = accept(lfd, NULL, NULL);
    assert_true(afd >= 0);
    assert_int_equal(write(afd, "hi", 2), 2);
    char b[2];
    struct pollfd pfd = { .fd = cfd, .events = POLLIN };
    assert_int_equal(poll(&pfd, 1, 1000), 1);
    assert_int_equal(read(cfd, b, 2), 2);
    close(afd);
    close(cfd);
    close(lfd);

    /* A stale socket is replaced, with a different mode this time. */
    lfd = sock_listen_unix(path, 0660, &err);
    assert_true(lfd >= 0);
    assert_int_equal(lstat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    close(lfd);
    unlink(path);

    /* Any other file is left alone. */
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    assert_true(fd >= 0);
    close(fd);
    lfd = sock_listen_unix(path, 0600, &err);
    assert_int_equal(lfd, -1);
    assert_non_null(err);
    g_clear_error(&err);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    unlink(path);

    /* Connecting to nothing fails cleanly. */
    assert_int_equal(sock_connect_unix(path, &err), -1);
    assert_non_null(err);
    g_clear_error(&err);

    /* Too long a path. */
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = 0;
    assert_int_equal(sock_listen_unix(longp, 0600, &err), -1);
    assert_non_null(err);
    g_clear_error(&err);
    g_free(path);
}

static void test_listen_inet(void **state)
{
    GError *err = NULL;
    int lfd = sock_listen_inet("127.0.0.1", "0", &err);
    assert_true(lfd >= 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&ss, &sl), 0);
    char port[16];
    g_snprintf(port, sizeof(port), "%u",
               ntohs(((struct sockaddr_in *)&ss)->sin_port));

    /* The port is taken now. */
    assert_int_equal(sock_listen_inet("127.0.0.1", port, &err), -1);
    assert_string_equal(err->message, "Failed to find an available port: "
                                      "Address already in use");
    g_clear_error(&err);
    close(lfd);

    /* SO_REUSEADDR: it can be bound again right away. */
    lfd = sock_listen_inet("127.0.0.1", port, &err);
    assert_true(lfd >= 0);
    close(lfd);

    assert_int_equal(sock_listen_inet("no.such.host.invalid", "1", &err), -1);
    assert_non_null(err);
    g_clear_error(&err);
}

/* ---- set-up ---- */

static int setup_ring(void **state)
{
    g_unsetenv("BLOCKD_AIO_FORCE_THREADS");
    aio_cleanup();
    return aio_init(NULL) ? 0 : -1;
}

static int setup_threads(void **state)
{
    g_setenv("BLOCKD_AIO_FORCE_THREADS", "1", TRUE);
    aio_cleanup();
    return aio_init(NULL) ? 0 : -1;
}

static int teardown(void **state)
{
    aio_cleanup();
    return 0;
}

int main(void)
{
    g_strlcpy(tmpdir, "/tmp/test-aio-XXXXXX", sizeof(tmpdir));
    if (!g_mkdtemp(tmpdir)) {
        return 1;
    }

    const struct CMUnitTest ring_tests[] = {
        cmocka_unit_test(test_rw),
        cmocka_unit_test(test_sync_calls),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_sequential),
        cmocka_unit_test(test_thread_pool),
        cmocka_unit_test(test_bh),
        cmocka_unit_test(test_poll),
        cmocka_unit_test(test_sock_read),
        cmocka_unit_test(test_sock_write),
        cmocka_unit_test(test_sock_epipe),
        cmocka_unit_test(test_sock_shutdown_wakes),
        cmocka_unit_test(test_listen_unix),
        cmocka_unit_test(test_listen_inet),
    };
    /* The same I/O without a ring: worker threads and GLib fd sources. */
    const struct CMUnitTest thread_tests[] = {
        cmocka_unit_test(test_rw),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_sequential),
        cmocka_unit_test(test_poll),
        cmocka_unit_test(test_sock_read),
        cmocka_unit_test(test_sock_write),
        cmocka_unit_test(test_sock_shutdown_wakes),
    };
    int fails = cmocka_run_group_tests_name("io_uring", ring_tests,
                                            setup_ring, teardown);
    fails += cmocka_run_group_tests_name("threads", thread_tests,
                                         setup_threads, teardown);
    rmdir(tmpdir);
    return fails;
}
