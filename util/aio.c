/*
 * The event loop's file I/O: one io_uring driven from a GSource on the
 * default GMainContext.
 *
 * A coroutine that wants I/O takes an SQE, stores a pointer to its
 * on-stack AioReq in the user data and yields.  SQEs are not submitted
 * immediately: the source's prepare step, which GLib runs before it
 * sleeps in poll(), submits everything queued during the iteration with
 * one io_uring_submit().  The ring signals a registered eventfd when
 * completions arrive; dispatch reaps them and re-enters the coroutines.
 *
 * Without a ring (old kernel, seccomp), or for operations the kernel's
 * ring does not know, the same calls run the system call on a worker
 * thread (thread_pool_co_run) or wait for readiness with a GLib fd source.
 */
#include "util/aio.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <liburing.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "util/error.h"

#define AIO_RING_ENTRIES 256

/* One request waiting for its completion, on the waiting coroutine's
 * stack. */
typedef struct AioReq {
    Coroutine *co;
    int64_t ret;
    bool done;
} AioReq;

static struct {
    bool initialized;
    bool have_ring;
    struct io_uring ring;
    unsigned cq_entries;
    /* SQEs handed to the kernel whose completion we have not reaped:
     * kept below the CQ size so completions never overflow. */
    unsigned inflight;
    int efd;
    GSource *source;
    gpointer efd_tag;
    /* Coroutines waiting for SQ/CQ space. */
    GQueue sq_waiters;
    bool op_supported[IORING_OP_LAST];
    AioStats stats;
    bool warned_submit;
} aio;

/* ---- submission and completion ---- */

static void aio_submit_pending(void)
{
    unsigned ready = io_uring_sq_ready(&aio.ring);
    int ret;

    if (ready == 0) {
        return;
    }
    do {
        ret = io_uring_submit(&aio.ring);
        aio.stats.submit_calls++;
    } while (ret == -EINTR);
    if (ret < 0) {
        /* -EAGAIN/-EBUSY: kernel short of resources or completions to
         * reap; the SQEs stay queued and are retried next iteration. */
        if (!aio.warned_submit && ret != -EAGAIN && ret != -EBUSY) {
            warn_report("io_uring_submit: %s", g_strerror(-ret));
            aio.warned_submit = true;
        }
        return;
    }
}

static gboolean aio_source_prepare(GSource *source, gint *timeout)
{
    *timeout = -1;
    aio_submit_pending();
    if (io_uring_sq_ready(&aio.ring) > 0) {
        /* Submission failed for lack of resources: retry soon. */
        *timeout = 1;
    }
    return io_uring_cq_ready(&aio.ring) > 0;
}

static gboolean aio_source_check(GSource *source)
{
    GIOCondition revents = g_source_query_unix_fd(source, aio.efd_tag);

    return (revents & G_IO_IN) || io_uring_cq_ready(&aio.ring) > 0;
}

static bool aio_have_space(void)
{
    return aio.inflight < aio.cq_entries &&
           io_uring_sq_space_left(&aio.ring) > 0;
}

static void aio_reap(void)
{
    struct io_uring_cqe *cqe;

    /* One completion at a time: the coroutine we enter may queue new
     * SQEs, so nothing about the ring is cached across the enter. */
    while (io_uring_peek_cqe(&aio.ring, &cqe) == 0) {
        AioReq *req = io_uring_cqe_get_data(cqe);
        int res = cqe->res;

        io_uring_cqe_seen(&aio.ring, cqe);
        aio.stats.completed++;
        aio.inflight--;
        if (req) {
            req->ret = res;
            req->done = true;
            coroutine_enter(req->co);
        }
    }
    while (!g_queue_is_empty(&aio.sq_waiters) && aio_have_space()) {
        coroutine_enter(g_queue_pop_head(&aio.sq_waiters));
    }
}

static gboolean aio_source_dispatch(GSource *source, GSourceFunc callback,
                                    gpointer user_data)
{
    uint64_t v;

    /* Clear the eventfd before reaping so a completion posted while we
     * reap leaves it readable and wakes the next poll(). */
    if (read(aio.efd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
        warn_report("aio: reading eventfd: %s", g_strerror(errno));
    }
    aio_reap();
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs aio_source_funcs = {
    .prepare = aio_source_prepare,
    .check = aio_source_check,
    .dispatch = aio_source_dispatch,
};

/* Take an SQE for the running coroutine, waiting for space if needed. */
static struct io_uring_sqe *coroutine_fn aio_get_sqe(void)
{
    for (;;) {
        struct io_uring_sqe *sqe = NULL;

        if (aio.inflight < aio.cq_entries) {
            sqe = io_uring_get_sqe(&aio.ring);
            if (!sqe) {
                /* SQ full: send what we have and try again. */
                aio_submit_pending();
                sqe = io_uring_get_sqe(&aio.ring);
            }
        }
        if (sqe) {
            aio.inflight++;
            aio.stats.submitted++;
            return sqe;
        }
        g_queue_push_tail(&aio.sq_waiters, coroutine_self());
        coroutine_yield();
    }
}

static int64_t coroutine_fn aio_wait_req(struct io_uring_sqe *sqe)
{
    AioReq req = { .co = coroutine_self() };

    io_uring_sqe_set_data(sqe, &req);
    while (!req.done) {
        coroutine_yield();
    }
    return req.ret;
}

/* ---- set-up ---- */

static bool aio_ring_init(void)
{
    struct io_uring_params p = { 0 };
    struct io_uring_probe *probe;
    int ret;

    if (g_getenv("BLOCKD_AIO_FORCE_THREADS")) {
        return false; /* for testing the fallback */
    }
    ret = io_uring_queue_init_params(AIO_RING_ENTRIES, &aio.ring, &p);
    if (ret < 0) {
        warn_report("io_uring unavailable (%s); using worker threads",
                    g_strerror(-ret));
        return false;
    }
    aio.cq_entries = p.cq_entries;

    probe = io_uring_get_probe_ring(&aio.ring);
    for (int op = 0; op < IORING_OP_LAST; op++) {
        aio.op_supported[op] = probe ? io_uring_opcode_supported(probe, op)
                                     : op <= IORING_OP_POLL_ADD;
    }
    if (probe) {
        io_uring_free_probe(probe);
    }
    if (!aio.op_supported[IORING_OP_READV] ||
        !aio.op_supported[IORING_OP_WRITEV]) {
        io_uring_queue_exit(&aio.ring);
        return false;
    }

    aio.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (aio.efd < 0) {
        warn_report("eventfd: %s; using worker threads", g_strerror(errno));
        io_uring_queue_exit(&aio.ring);
        return false;
    }
    ret = io_uring_register_eventfd(&aio.ring, aio.efd);
    if (ret < 0) {
        warn_report("io_uring_register_eventfd: %s; using worker threads",
                    g_strerror(-ret));
        close(aio.efd);
        io_uring_queue_exit(&aio.ring);
        return false;
    }

    aio.source = g_source_new(&aio_source_funcs, sizeof(GSource));
    g_source_set_name(aio.source, "blockd-io_uring");
    g_source_set_priority(aio.source, G_PRIORITY_DEFAULT);
    /* Nested loop iterations (drain from a callback) must still submit
     * and reap, or they would wait forever for our completions. */
    g_source_set_can_recurse(aio.source, TRUE);
    aio.efd_tag = g_source_add_unix_fd(aio.source, aio.efd, G_IO_IN);
    g_source_attach(aio.source, g_main_context_default());
    return true;
}

bool aio_init(GError **errp)
{
    if (aio.initialized) {
        return true;
    }
    g_queue_init(&aio.sq_waiters);
    aio.have_ring = aio_ring_init();
    if (!aio.have_ring && !thread_pool_init(errp)) {
        return false;
    }
    aio.initialized = true;
    return true;
}

void aio_cleanup(void)
{
    if (!aio.initialized) {
        return;
    }
    if (aio.have_ring) {
        g_source_destroy(aio.source);
        g_source_unref(aio.source);
        aio.source = NULL;
        io_uring_unregister_eventfd(&aio.ring);
        io_uring_queue_exit(&aio.ring);
        close(aio.efd);
        aio.efd = -1;
    }
    g_queue_clear(&aio.sq_waiters);
    memset(&aio.stats, 0, sizeof(aio.stats));
    aio.inflight = 0;
    aio.have_ring = false;
    aio.initialized = false;
}

void aio_get_stats(AioStats *out)
{
    *out = aio.stats;
}

/* ---- the system calls, for worker threads and non-coroutine callers ---- */

typedef struct AioSyncOp {
    int op; /* IORING_OP_* */
    int fd;
    const struct iovec *iov;
    int iovcnt;
    int64_t offset;
    int64_t len;
    int mode;
    bool datasync;
    int64_t ret;
} AioSyncOp;

static int64_t aio_do_sync(AioSyncOp *o)
{
    ssize_t r;

    switch (o->op) {
    case IORING_OP_READV:
        do {
            r = preadv(o->fd, o->iov, o->iovcnt, o->offset);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : r;
    case IORING_OP_WRITEV:
        do {
            r = pwritev(o->fd, o->iov, o->iovcnt, o->offset);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : r;
    case IORING_OP_FSYNC:
        r = o->datasync ? fdatasync(o->fd) : fsync(o->fd);
        return r < 0 ? -errno : 0;
    case IORING_OP_FALLOCATE:
        r = fallocate(o->fd, o->mode, o->offset, o->len);
        return r < 0 ? -errno : 0;
    default:
        return -ENOSYS;
    }
}

/* A worker's view of it: the int result of a ThreadPoolFunc cannot hold a
 * 64-bit byte count, so the result travels in the struct. */
static int aio_sync_worker(void *opaque)
{
    AioSyncOp *o = opaque;

    o->ret = aio_do_sync(o);
    return 0;
}

/* Run on a worker thread when the ring cannot do `op`; synchronously when
 * not in a coroutine (start-up code, tools). */
static bool aio_use_ring(int op)
{
    if (!aio.initialized) {
        aio_init(NULL);
    }
    return in_coroutine() && aio.have_ring && aio.op_supported[op];
}

static int64_t coroutine_fn aio_run_sync_op(AioSyncOp *o)
{
    if (in_coroutine()) {
        thread_pool_co_run(aio_sync_worker, o);
        return o->ret;
    }
    return aio_do_sync(o);
}

/* ---- the public I/O calls ---- */

int64_t coroutine_fn aio_co_preadv(int fd, const struct iovec *iov, int iovcnt,
                                   int64_t offset)
{
    if (aio_use_ring(IORING_OP_READV)) {
        struct io_uring_sqe *sqe = aio_get_sqe();
        io_uring_prep_readv(sqe, fd, iov, iovcnt, offset);
        return aio_wait_req(sqe);
    }
    AioSyncOp o = { .op = IORING_OP_READV, .fd = fd, .iov = iov,
                    .iovcnt = iovcnt, .offset = offset };
    return aio_run_sync_op(&o);
}

int64_t coroutine_fn aio_co_pwritev(int fd, const struct iovec *iov,
                                    int iovcnt, int64_t offset)
{
    if (aio_use_ring(IORING_OP_WRITEV)) {
        struct io_uring_sqe *sqe = aio_get_sqe();
        io_uring_prep_writev(sqe, fd, iov, iovcnt, offset);
        return aio_wait_req(sqe);
    }
    AioSyncOp o = { .op = IORING_OP_WRITEV, .fd = fd, .iov = iov,
                    .iovcnt = iovcnt, .offset = offset };
    return aio_run_sync_op(&o);
}

int coroutine_fn aio_co_fsync(int fd, bool datasync)
{
    if (aio_use_ring(IORING_OP_FSYNC)) {
        struct io_uring_sqe *sqe = aio_get_sqe();
        io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
        return aio_wait_req(sqe);
    }
    AioSyncOp o = { .op = IORING_OP_FSYNC, .fd = fd, .datasync = datasync };
    return aio_run_sync_op(&o);
}

int coroutine_fn aio_co_fallocate(int fd, int mode, int64_t offset,
                                  int64_t len)
{
    if (aio_use_ring(IORING_OP_FALLOCATE)) {
        struct io_uring_sqe *sqe = aio_get_sqe();
        io_uring_prep_fallocate(sqe, fd, mode, offset, len);
        return aio_wait_req(sqe);
    }
    AioSyncOp o = { .op = IORING_OP_FALLOCATE, .fd = fd, .mode = mode,
                    .offset = offset, .len = len };
    return aio_run_sync_op(&o);
}

/* Readiness without a ring: a GLib fd source that re-enters us. */
typedef struct AioPollWait {
    Coroutine *co;
    bool done;
} AioPollWait;

static gboolean aio_poll_wait_cb(gint fd, GIOCondition cond, gpointer opaque)
{
    AioPollWait *w = opaque;

    w->done = true;
    coroutine_enter(w->co);
    return G_SOURCE_REMOVE;
}

int coroutine_fn aio_co_poll(int fd, short events)
{
    if (aio_use_ring(IORING_OP_POLL_ADD)) {
        struct io_uring_sqe *sqe = aio_get_sqe();
        io_uring_prep_poll_add(sqe, fd, events);
        int64_t ret = aio_wait_req(sqe);
        /* The result is the revents mask; errors and hang-ups are left
         * for the following read or write to report. */
        return ret < 0 ? (int)ret : 0;
    }
    if (!in_coroutine()) {
        struct pollfd pfd = { .fd = fd, .events = events };
        int r;
        do {
            r = poll(&pfd, 1, -1);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
    }

    GIOCondition cond = G_IO_HUP | G_IO_ERR;
    if (events & POLLIN) {
        cond |= G_IO_IN;
    }
    if (events & POLLOUT) {
        cond |= G_IO_OUT;
    }
    AioPollWait w = { .co = coroutine_self() };
    GSource *src = g_unix_fd_source_new(fd, cond);
    g_source_set_callback(src, (GSourceFunc)(void (*)(void))aio_poll_wait_cb,
                          &w, NULL);
    g_source_attach(src, g_main_context_default());
    while (!w.done) {
        coroutine_yield();
    }
    g_source_destroy(src);
    g_source_unref(src);
    return 0;
}

/* ---- bottom halves, clock, loop ---- */

typedef struct AioBh {
    AioCallback *cb;
    void *opaque;
} AioBh;

static gboolean aio_bh_run(gpointer data)
{
    AioBh *bh = data;

    bh->cb(bh->opaque);
    return G_SOURCE_REMOVE;
}

void aio_bh_schedule(AioCallback *cb, void *opaque)
{
    AioBh *bh = g_new(AioBh, 1);
    bh->cb = cb;
    bh->opaque = opaque;

    GSource *src = g_idle_source_new();
    g_source_set_priority(src, G_PRIORITY_DEFAULT);
    g_source_set_callback(src, aio_bh_run, bh, g_free);
    g_source_attach(src, g_main_context_default());
    g_source_unref(src);
}

int64_t clock_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static unsigned poll_depth;

bool aio_poll(bool blocking)
{
    poll_depth++;
    bool progress = g_main_context_iteration(NULL, blocking);
    poll_depth--;
    return progress;
}

bool aio_poll_nested(void)
{
    return poll_depth > 1;
}
