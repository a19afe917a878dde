/*
 * QMP listeners and sessions.
 *
 * Each accepted connection is a session with two coroutines:
 *   - the reader reads bytes, frames them into JSON messages and runs the
 *     requests strictly one after the other (a command may yield on I/O;
 *     the next request waits, as QMP requires replies in order);
 *   - the writer sends the session's output queue (greeting, replies,
 *     events), so a slow client never blocks the loop or other sessions.
 * The reader stops running requests while more than OUT_HIGH bytes of
 * output wait (back-pressure); events still queue, and a client that lets
 * its queue pass OUT_MAX is disconnected.
 *
 * Ending a session: the reader ends at end of input (after answering what
 * was already received) and the writer ends once the queue is sent.  A
 * fatal condition (peer gone, queue over OUT_MAX) marks the session dead
 * and shuts the socket down, which wakes both coroutines out of their
 * waits; output queued afterwards is dropped.  The socket is closed when
 * both coroutines are gone, never while one may still be polling it.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib-unix.h>

#include "monitor/blockd-version.h"
#include "monitor/monitor-internal.h"
#include "monitor/monitor.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/error.h"
#include "util/json-stream.h"

#define READ_CHUNK (64 * 1024)
/*
 * Clients often write a whole batch before reading any reply (QEMU buffers
 * replies without bound), so back-pressure only starts far above what a
 * batch produces.
 */
#define OUT_HIGH (16 * 1024 * 1024)  /* stop running requests above this */
#define OUT_LOW (8 * 1024 * 1024)    /* ... until the queue is down here */
#define OUT_MAX (64 * 1024 * 1024)   /* disconnect beyond this */
#define NESTED_RETRY_NS 1000000     /* 1 ms: a nested loop's usual span */
#define WRITE_BATCH 64               /* queued lines per writev */

typedef struct MonitorListener {
    int fd;
    char *id;
    guint watch;
    int nsessions;
} MonitorListener;

/* A framed request or a framing error, in arrival order. */
typedef struct PendingItem {
    JsonNode *msg;
    GError *err;
} PendingItem;

typedef struct MonitorSession {
    MonitorListener *listener; /* NULL once the listener is gone */
    int fd;
    int refs; /* one per live coroutine */
    QmpState st;
    JsonStream *js;
    GQueue pending; /* of PendingItem */

    GQueue out;     /* of GBytes */
    size_t out_bytes;

    Coroutine *reader, *writer;
    bool writer_idle;  /* writer yielded for lack of output */
    bool reader_held;  /* reader yielded for back-pressure */
    bool reader_done;
    bool dead;
} MonitorSession;

static MonitorLimits limits = {
    .max_message_size = 1024 * 1024,
    .max_depth = JSON_STREAM_DEFAULT_DEPTH,
    .max_sessions = 64,
};
static GList *listeners; /* of MonitorListener */
static GList *sessions;  /* of MonitorSession */

static bool commands_held;

void monitor_hold_commands(bool hold)
{
    commands_held = hold;
}

void monitor_set_limits(const MonitorLimits *l)
{
    limits.max_message_size = l->max_message_size ? l->max_message_size
                                                  : 1024 * 1024;
    /* json-glib parses recursively on a coroutine stack: bounded. */
    limits.max_depth = l->max_depth > 0
                           ? MIN(l->max_depth, JSON_STREAM_DEFAULT_DEPTH)
                           : JSON_STREAM_DEFAULT_DEPTH;
    limits.max_sessions = l->max_sessions > 0 ? l->max_sessions : 64;
}

/*
 * The "qemu" triple is the QMP dialect we speak (qemu-storage-daemon 7.2):
 * management software decides which commands and fields to use from it,
 * so reporting blockd's own 0.x here would make such clients fall back to
 * ancient behaviour or refuse us.  Our own version goes in "package".
 */
void monitor_get_version(int *major, int *minor, int *micro,
                         const char **package)
{
    *major = 7;
    *minor = 2;
    *micro = 0;
    *package = "blockd " BLOCKD_VERSION;
}

JsonNode *qmp_greeting(void)
{
    JsonObject *qemu = json_object_new(), *ver = json_object_new();
    JsonObject *qmp = json_object_new(), *top = json_object_new();
    JsonArray *caps = json_array_new();
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    int major, minor, micro;
    const char *package;

    monitor_get_version(&major, &minor, &micro, &package);
    json_object_set_int_member(qemu, "major", major);
    json_object_set_int_member(qemu, "minor", minor);
    json_object_set_int_member(qemu, "micro", micro);
    json_object_set_object_member(ver, "qemu", qemu);
    json_object_set_string_member(ver, "package", package);
    json_object_set_object_member(qmp, "version", ver);
    json_array_add_string_element(caps, "oob");
    json_object_set_array_member(qmp, "capabilities", caps);
    json_object_set_object_member(top, "QMP", qmp);
    json_node_take_object(n, top);
    return n;
}

/* ---- session lifetime ---- */

static void wake_writer(MonitorSession *s)
{
    if (s->writer_idle) {
        s->writer_idle = false;
        coroutine_wake(s->writer);
    }
}

static void wake_reader(MonitorSession *s)
{
    if (s->reader_held) {
        s->reader_held = false;
        coroutine_wake(s->reader);
    }
}

/* Stop the session for good; both coroutines wind down. */
static void session_kill(MonitorSession *s)
{
    if (s->dead) {
        return;
    }
    s->dead = true;
    /* Wakes a coroutine waiting for the socket to become ready. */
    shutdown(s->fd, SHUT_RDWR);
    wake_writer(s);
    wake_reader(s);
}

static void pending_item_free(PendingItem *it)
{
    if (it->msg) {
        json_node_unref(it->msg);
    }
    if (it->err) {
        g_error_free(it->err);
    }
    g_free(it);
}

static void session_unref(MonitorSession *s)
{
    if (--s->refs > 0) {
        return;
    }
    sessions = g_list_remove(sessions, s);
    if (s->listener) {
        s->listener->nsessions--;
    }
    close(s->fd);
    json_stream_free(s->js);
    g_queue_clear_full(&s->pending, (GDestroyNotify)pending_item_free);
    g_queue_clear_full(&s->out, (GDestroyNotify)g_bytes_unref);
    g_free(s);
}

/* Queue one line for the writer; takes the reference to `line`. */
static void session_send(MonitorSession *s, GBytes *line)
{
    size_t len = g_bytes_get_size(line);

    if (s->dead) {
        g_bytes_unref(line);
        return;
    }
    if (s->out_bytes + len > OUT_MAX) {
        warn_report("QMP client stopped reading (%zu bytes queued): "
                    "disconnecting it", s->out_bytes);
        g_bytes_unref(line);
        session_kill(s);
        return;
    }
    g_queue_push_tail(&s->out, line);
    s->out_bytes += len;
    wake_writer(s);
}

static void session_send_msg(MonitorSession *s, JsonNode *msg)
{
    session_send(s, qmp_encode_line(msg));
    json_node_unref(msg);
}

void monitor_broadcast_event(GBytes *line)
{
    for (GList *l = sessions; l; l = l->next) {
        MonitorSession *s = l->data;

        if (s->st.negotiated && !s->dead) {
            session_send(s, g_bytes_ref(line));
        }
    }
}

/* ---- the writer ---- */

static void coroutine_fn session_writer(void *opaque)
{
    MonitorSession *s = opaque;

    for (;;) {
        struct iovec iov[WRITE_BATCH];
        int n = 0;
        size_t bytes = 0;
        int ret;

        if (s->dead) {
            break;
        }
        if (g_queue_is_empty(&s->out)) {
            if (s->reader_done) {
                break;
            }
            s->writer_idle = true;
            coroutine_yield();
            continue;
        }
        /* Only the writer pops, so the head stays put while we write. */
        for (GList *l = s->out.head; l && n < WRITE_BATCH; l = l->next) {
            gsize len;

            iov[n].iov_base = (void *)g_bytes_get_data(l->data, &len);
            iov[n].iov_len = len;
            bytes += len;
            n++;
        }
        ret = co_sock_writev_full(s->fd, iov, n);
        if (ret < 0) {
            session_kill(s);
            break;
        }
        for (int i = 0; i < n; i++) {
            g_bytes_unref(g_queue_pop_head(&s->out));
        }
        s->out_bytes -= bytes;
        if (s->out_bytes <= OUT_LOW) {
            wake_reader(s);
        }
    }
    session_unref(s);
}

/* ---- the reader ---- */

static void on_stream_msg(void *opaque, JsonNode *msg)
{
    MonitorSession *s = opaque;
    PendingItem *it = g_new0(PendingItem, 1);

    it->msg = msg;
    g_queue_push_tail(&s->pending, it);
}

static void on_stream_err(void *opaque, const GError *err)
{
    MonitorSession *s = opaque;
    PendingItem *it = g_new0(PendingItem, 1);

    it->err = g_error_copy(err);
    g_queue_push_tail(&s->pending, it);
}

/* Run what has been framed, in order. */
static void coroutine_fn session_process(MonitorSession *s)
{
    PendingItem *it;

    while ((it = g_queue_pop_head(&s->pending))) {
        /* Back-pressure: a client that does not read gets no more work. */
        while (!s->dead && s->out_bytes > OUT_HIGH) {
            s->reader_held = true;
            coroutine_yield();
        }
        /* Not during start-up (monitor_hold_commands) nor in the middle
         * of a synchronous operation that a nested loop is waiting for (a
         * job's prepare, a drain): a command run there would change the
         * state under it.  QEMU's monitor is not polled by such waits
         * either. */
        while (!s->dead && (commands_held || aio_poll_nested())) {
            co_sleep_ns(NESTED_RETRY_NS);
        }
        if (!s->dead) {
            if (it->err) {
                session_send_msg(s, qmp_error_reply(it->err));
            } else {
                session_send_msg(s, qmp_dispatch_state(it->msg, &s->st));
            }
        }
        pending_item_free(it);
    }
}

static void coroutine_fn session_reader(void *opaque)
{
    MonitorSession *s = opaque;
    char *buf = g_malloc(READ_CHUNK);

    session_send_msg(s, qmp_greeting());
    while (!s->dead) {
        ssize_t n = co_sock_read_some(s->fd, buf, READ_CHUNK);

        if (n <= 0) {
            break;
        }
        json_stream_feed(s->js, buf, n);
        session_process(s);
    }
    /*
     * End of input: requests already framed have been answered; an
     * unfinished one is dropped without a reply, as QEMU drops it.
     */
    g_free(buf);
    s->reader_done = true;
    wake_writer(s);
    session_unref(s);
}

/* ---- listeners ---- */

static void refuse(int fd, int max)
{
    char *msg = g_strdup_printf("{\"error\": {\"class\": \"GenericError\", "
                                "\"desc\": \"Too many QMP sessions "
                                "(limit %d)\"}}\r\n", max);

    /* Best effort, never waits: the socket is new, its buffer empty. */
    if (send(fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* nothing more to do for a client that is gone already */
    }
    g_free(msg);
    close(fd);
}

static void session_start(MonitorListener *l, int fd)
{
    MonitorSession *s = g_new0(MonitorSession, 1);

    s->listener = l;
    s->fd = fd;
    s->refs = 2;
    s->js = json_stream_new(limits.max_message_size, limits.max_depth,
                            on_stream_msg, on_stream_err, s);
    g_queue_init(&s->pending);
    g_queue_init(&s->out);
    l->nsessions++;
    sessions = g_list_prepend(sessions, s);
    s->writer = coroutine_create(session_writer, s);
    s->reader = coroutine_create(session_reader, s);
    coroutine_enter(s->writer); /* parks itself until there is output */
    coroutine_enter(s->reader);
}

static gboolean listener_ready(gint lfd, GIOCondition cond, gpointer opaque);

static gboolean listener_resume(gpointer opaque)
{
    MonitorListener *l = opaque;

    l->watch = g_unix_fd_add(l->fd, G_IO_IN, listener_ready, l);
    return G_SOURCE_REMOVE;
}

static gboolean listener_ready(gint lfd, GIOCondition cond, gpointer opaque)
{
    MonitorListener *l = opaque;

    /* A bounded batch, so a connection storm cannot starve the loop. */
    for (int i = 0; i < 16; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* The connection stays queued and the socket readable:
                 * back off instead of spinning on it. */
                warn_report("QMP listener %s: accept: %s (pausing)", l->id,
                            g_strerror(errno));
                l->watch = g_timeout_add(200, listener_resume, l);
                return G_SOURCE_REMOVE;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK &&
                errno != ECONNABORTED) {
                warn_report("QMP listener %s: accept: %s", l->id,
                            g_strerror(errno));
            }
            break;
        }
        if (l->nsessions >= limits.max_sessions) {
            refuse(fd, limits.max_sessions);
            continue;
        }
        session_start(l, fd);
    }
    return G_SOURCE_CONTINUE;
}

bool monitor_add_listener(int listen_fd, const char *id, GError **errp)
{
    MonitorListener *l;
    int ret = sock_set_nonblocking(listen_fd);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "QMP listener %s", id ? id : "");
        close(listen_fd);
        return false;
    }
    l = g_new0(MonitorListener, 1);
    l->fd = listen_fd;
    l->id = g_strdup(id ? id : "");
    l->watch = g_unix_fd_add(listen_fd, G_IO_IN, listener_ready, l);
    listeners = g_list_append(listeners, l);
    return true;
}

static gboolean tick(gpointer opaque)
{
    return G_SOURCE_CONTINUE; /* only makes aio_poll() return */
}

/* Iterate the loop until no session is left or the deadline passes. */
static void wait_sessions(int64_t timeout_ns)
{
    int64_t deadline = clock_ns() + timeout_ns;
    guint t = g_timeout_add(50, tick, NULL);

    while (sessions && clock_ns() < deadline) {
        aio_poll(true);
    }
    g_source_remove(t);
}

void monitor_cleanup(void)
{
    for (GList *l = listeners; l; l = l->next) {
        MonitorListener *ml = l->data;

        g_source_remove(ml->watch);
        close(ml->fd);
        g_free(ml->id);
        g_free(ml);
    }
    g_list_free(listeners);
    listeners = NULL;
    for (GList *l = sessions; l; l = l->next) {
        MonitorSession *s = l->data;

        s->listener = NULL;
        /* No more input; what is queued (a quit's reply) still goes out. */
        shutdown(s->fd, SHUT_RD);
    }
    wait_sessions(2 * G_TIME_SPAN_SECOND * 1000);
    for (GList *l = sessions; l; l = l->next) {
        session_kill(l->data);
    }
    wait_sessions(2 * G_TIME_SPAN_SECOND * 1000);
    if (sessions) {
        warn_report("%u QMP session(s) still running a command at exit",
                    g_list_length(sessions));
    }
}
