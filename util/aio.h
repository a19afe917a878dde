/*
 * The event loop: GLib's default GMainContext drives sockets, timers and
 * bottom halves; one io_uring does all file I/O.  The ring's completion
 * eventfd is a GSource; submissions queued during a loop iteration are sent
 * in one io_uring_submit() from the source's prepare step, so requests
 * issued together are batched.
 *
 * Everything here runs in the single loop thread, except
 * thread_pool_co_run()'s worker function.
 */
#ifndef UTIL_AIO_H
#define UTIL_AIO_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/coroutine.h"

/* Set up the ring on the default main context.  Idempotent. */
bool aio_init(GError **errp);
/* Tear it down (all requests must be complete). */
void aio_cleanup(void);

/*
 * File I/O from coroutine context.  Each submits one SQE and yields until
 * its completion.  Return the io_uring result: bytes transferred (>= 0) or
 * -errno.  Short transfers are returned as such; callers loop.  iovcnt is
 * at most IOV_MAX.  Outside coroutine context they run the system call
 * synchronously.
 */
int64_t coroutine_fn aio_co_preadv(int fd, const struct iovec *iov, int iovcnt,
                                   int64_t offset);
int64_t coroutine_fn aio_co_pwritev(int fd, const struct iovec *iov,
                                    int iovcnt, int64_t offset);
int coroutine_fn aio_co_fsync(int fd, bool datasync);
int coroutine_fn aio_co_fallocate(int fd, int mode, int64_t offset,
                                  int64_t len);
/* Wait until `fd` is readable (POLLIN) / writable (POLLOUT); 0 or -errno.
 * Hang-ups and errors also end the wait (with 0).  To wake a coroutine
 * waiting on a socket, shutdown() the socket: close() alone does not end
 * the wait. */
int coroutine_fn aio_co_poll(int fd, short events);

/*
 * Run fn(opaque) on a worker thread and yield until it returns; the
 * result is fn's.  For anything that may block (stat on NFS, big
 * compressions, copy_file_range).
 */
typedef int ThreadPoolFunc(void *opaque);
int coroutine_fn thread_pool_co_run(ThreadPoolFunc *fn, void *opaque);
/* Create the worker pool now (it is otherwise created on first use);
 * aio_init() calls it when it falls back to threads.  Idempotent. */
bool thread_pool_init(GError **errp);

/* A one-shot callback run from the loop soon (default priority). */
typedef void AioCallback(void *opaque);
void aio_bh_schedule(AioCallback *cb, void *opaque);

/* Monotonic clock in nanoseconds. */
int64_t clock_ns(void);

/* Run one loop iteration; returns whether anything was dispatched. */
bool aio_poll(bool blocking);
/*
 * Whether a nested loop is running: an aio_poll() called from inside what
 * another aio_poll() dispatched (a synchronous wait in the middle of some
 * operation: a job's completion, a drain, coroutine_run_sync).  Work that
 * must not start in the middle of someone else's operation (a QMP
 * command) waits until it is false.
 */
bool aio_poll_nested(void);
/* Iterate the loop while `cond` holds.  Not from coroutine context. */
#define AIO_WAIT_WHILE(cond)                                                   \
    do {                                                                       \
        while (cond) {                                                         \
            aio_poll(true);                                                    \
        }                                                                      \
    } while (0)

/* Counters for tests and benchmarks. */
typedef struct AioStats {
    uint64_t submitted;   /* SQEs */
    uint64_t submit_calls; /* io_uring_submit() calls */
    uint64_t completed;
} AioStats;
void aio_get_stats(AioStats *out);

#endif
