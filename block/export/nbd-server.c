/*
 * The NBD server: one listening socket, accepting connections (up to
 * max-connections), and one session coroutine per client that runs the
 * handshake and then the transmission phase.
 *
 * Accepting is a GLib fd watch rather than a coroutine so that stopping
 * the server is just removing the watch and closing the socket.
 */
#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "block/export/nbd-int.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/error.h"
#include "util/keyval.h"

typedef struct NBDServer {
    int listen_fd;
    guint watch;       /* accept watch; 0 while paused at the limit */
    char *unix_path;   /* removed on stop */
    uint32_t max_connections; /* 0: unlimited */
} NBDServer;

static NBDServer *server;
/* Every live client, negotiating or transmitting, with or without server. */
static LIST_HEAD(, NBDClient) all_clients = LIST_HEAD_INITIALIZER(all_clients);
static unsigned nb_clients;

bool nbd_server_is_running(void)
{
    return server != NULL;
}

uint32_t nbd_server_max_connections(void)
{
    return server ? server->max_connections : 0;
}

unsigned nbd_client_count(void)
{
    return nb_clients;
}

/* ---- clients ---- */

static void nbd_server_update_watch(void);

/* Size of a client's input buffer; payloads at least half as big are
 * read straight into their own buffer instead. */
#define NBD_RBUF_SIZE (64 * 1024)

int coroutine_fn nbd_client_read(NBDClient *client, void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t done = 0;

    while (done < len) {
        size_t avail = client->rbuf_len - client->rbuf_pos;
        ssize_t n;

        if (avail) {
            size_t k = MIN(avail, len - done);

            memcpy(p + done, client->rbuf + client->rbuf_pos, k);
            client->rbuf_pos += k;
            done += k;
            continue;
        }
        client->rbuf_pos = client->rbuf_len = 0;
        if (len - done >= NBD_RBUF_SIZE / 2) {
            n = co_sock_read_some(client->fd, p + done, len - done);
            if (n > 0) {
                done += n;
                continue;
            }
        } else {
            n = co_sock_read_some(client->fd, client->rbuf, NBD_RBUF_SIZE);
            if (n > 0) {
                client->rbuf_len = n;
                continue;
            }
        }
        if (n < 0) {
            return (int)n;
        }
        return done ? -EPIPE : 0;
    }
    return 1;
}

void nbd_client_close(NBDClient *client)
{
    if (client->closing) {
        return;
    }
    client->closing = true;
    /* Wakes the reader (end of stream) and fails pending sends; the fd
     * itself stays open until the session has finished with it. */
    shutdown(client->fd, SHUT_RDWR);
    co_queue_restart_all(&client->reader_wait);
}

static void coroutine_fn nbd_client_session(void *opaque)
{
    NBDClient *client = opaque;
    int ret = nbd_negotiate(client);
    bool soft = false;

    if (ret > 0 && !client->closing) {
        soft = nbd_transmission(client);
    }
    /*
     * NBD_CMD_DISC (a soft disconnect): outstanding requests are handled
     * and answered before the socket closes.  Anything else: cut the
     * connection now; running requests finish, their replies fail.
     */
    if (!soft) {
        nbd_client_close(client);
    }
    /* Requests still running hold pointers to us and to the export. */
    while (client->nb_inflight > 0) {
        co_queue_wait(&client->reader_wait, NULL);
    }
    nbd_client_close(client);
    if (client->exp) {
        BlockExport *exp = client->exp;

        LIST_REMOVE(client, exp_link);
        client->exp = NULL;
        blk_exp_unref(exp);
    }
    LIST_REMOVE(client, all_link);
    nb_clients--;
    close(client->fd);
    nbd_meta_selection_clear(&client->meta);
    g_free(client->rbuf);
    g_free(client);
    nbd_server_update_watch();
}

NBDClient *nbd_client_new(int fd)
{
    NBDClient *client = g_new0(NBDClient, 1);

    client->fd = fd;
    client->rbuf = g_malloc(NBD_RBUF_SIZE);
    co_queue_init(&client->reader_wait);
    LIST_INSERT_HEAD(&all_clients, client, all_link);
    nb_clients++;
    coroutine_enter(coroutine_create(nbd_client_session, client));
    return client;
}

/* ---- listening ---- */

static gboolean nbd_accept_cb(int fd, GIOCondition cond, gpointer opaque)
{
    for (;;) {
        if (server->max_connections &&
            nb_clients >= server->max_connections) {
            /* Pending connections wait in the backlog until one leaves. */
            server->watch = 0;
            return G_SOURCE_REMOVE;
        }
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                warn_report("NBD server: accept failed: %s",
                            g_strerror(errno));
            }
            return G_SOURCE_CONTINUE;
        }
        nbd_client_new(cfd);
    }
}

static void nbd_server_update_watch(void)
{
    if (!server || server->watch) {
        return;
    }
    if (server->max_connections && nb_clients >= server->max_connections) {
        return;
    }
    server->watch = g_unix_fd_add(server->listen_fd, G_IO_IN, nbd_accept_cb,
                                  NULL);
}

bool nbd_server_start(const SocketAddress *addr, const char *tls_creds,
                      const char *tls_authz, uint32_t max_connections,
                      GError **errp)
{
    int fd;

    if (server) {
        error_setg(errp, "NBD server already running");
        return false;
    }
    /* We have no TLS and no QOM objects: no credentials can exist. */
    if (tls_creds) {
        error_setg(errp, "No TLS credentials with id '%s'", tls_creds);
        return false;
    }
    /* tls-authz only matters with TLS; qsd accepts and ignores it. */
    (void)tls_authz;
    switch (addr->type) {
    case SOCKET_ADDRESS_TYPE_UNIX:
        fd = sock_listen_unix(addr->u.q_unix.path, 0600, errp);
        break;
    case SOCKET_ADDRESS_TYPE_INET:
        fd = sock_listen_inet(addr->u.inet.host, addr->u.inet.port, errp);
        break;
    case SOCKET_ADDRESS_TYPE_FD:
        /* qsd's wording: there is no fd passing outside a QEMU monitor */
        error_setg(errp, "only QEMU supports file descriptor passing");
        return false;
    default:
        error_setg(errp, "NBD server: address type '%s' is not supported",
                   SocketAddressType_str(addr->type));
        return false;
    }
    if (fd < 0) {
        return false;
    }
    server = g_new0(NBDServer, 1);
    server->listen_fd = fd;
    server->max_connections = max_connections;
    if (addr->type == SOCKET_ADDRESS_TYPE_UNIX) {
        server->unix_path = g_strdup(addr->u.q_unix.path);
    }
    nbd_server_update_watch();
    return true;
}

void nbd_server_stop_all(void)
{
    NBDClient *client;

    if (server) {
        if (server->watch) {
            g_source_remove(server->watch);
        }
        close(server->listen_fd);
        if (server->unix_path) {
            unlink(server->unix_path);
        }
        g_free(server->unix_path);
        g_clear_pointer(&server, g_free);
    }
    LIST_FOREACH(client, &all_clients, all_link) {
        nbd_client_close(client);
    }
}

bool nbd_server_start_keyval(const char *opts, GError **errp)
{
    JsonNode *node = keyval_parse(opts, NULL, errp);
    NbdServerOptions *o;
    bool ok;

    if (!node) {
        return false;
    }
    o = qapi_NbdServerOptions_from_json(node, true, errp);
    json_node_unref(node);
    if (!o) {
        return false;
    }
    ok = nbd_server_start(o->addr, o->has_tls_creds ? o->tls_creds : NULL,
                          o->has_tls_authz ? o->tls_authz : NULL,
                          o->has_max_connections ? o->max_connections : 0,
                          errp);
    qapi_free_NbdServerOptions(o);
    return ok;
}
