/*
 * Worker threads for calls that may block (stat on NFS, compression,
 * copy_file_range, and file I/O when there is no io_uring).
 *
 * The coroutine hands a request to a GThreadPool and yields.  The worker
 * runs the function, then attaches an idle source to the loop's context
 * (g_source_attach is thread-safe and wakes the loop); that source re-enters
 * the coroutine in the loop thread.  g_main_context_invoke() is not used:
 * when no thread owns the context it would run the callback right in the
 * worker.
 */
#include "util/aio.h"

#include "util/error.h"

#define THREAD_POOL_MAX_THREADS 64

typedef struct ThreadPoolReq {
    ThreadPoolFunc *fn;
    void *opaque;
    int ret;
    Coroutine *co;
    bool done;
} ThreadPoolReq;

static GThreadPool *thread_pool;
static GMutex thread_pool_lock; /* creation only */

static gboolean thread_pool_complete(gpointer data)
{
    ThreadPoolReq *req = data;

    req->done = true;
    coroutine_enter(req->co);
    return G_SOURCE_REMOVE;
}

static void thread_pool_worker(gpointer data, gpointer user_data)
{
    ThreadPoolReq *req = data;
    GSource *src;

    req->ret = req->fn(req->opaque);

    /* The context's lock orders the write of ret before the loop's read. */
    src = g_idle_source_new();
    g_source_set_priority(src, G_PRIORITY_DEFAULT);
    g_source_set_callback(src, thread_pool_complete, req, NULL);
    g_source_attach(src, g_main_context_default());
    g_source_unref(src);
}

bool thread_pool_init(GError **errp)
{
    bool ok = true;

    g_mutex_lock(&thread_pool_lock);
    if (!thread_pool) {
        thread_pool = g_thread_pool_new(thread_pool_worker, NULL,
                                        THREAD_POOL_MAX_THREADS, FALSE, errp);
        ok = thread_pool != NULL;
    }
    g_mutex_unlock(&thread_pool_lock);
    return ok;
}

int coroutine_fn thread_pool_co_run(ThreadPoolFunc *fn, void *opaque)
{
    GError *err = NULL;

    if (!in_coroutine()) {
        /* Start-up code and tools: nothing else to run meanwhile. */
        return fn(opaque);
    }
    if (!thread_pool_init(&err)) {
        warn_report("thread pool: %s; running in the loop thread",
                    err->message);
        g_error_free(err);
        return fn(opaque);
    }

    ThreadPoolReq req = {
        .fn = fn,
        .opaque = opaque,
        .co = coroutine_self(),
    };
    if (!g_thread_pool_push(thread_pool, &req, &err)) {
        /* No thread could be started: still do the work. */
        warn_report("thread pool: %s; running in the loop thread",
                    err->message);
        g_error_free(err);
        return fn(opaque);
    }
    while (!req.done) {
        coroutine_yield();
    }
    return req.ret;
}
