/*
 * Coroutine-friendly I/O on non-blocking stream sockets (QMP sessions, NBD
 * clients).  Waiting uses aio_co_poll(), so a slow peer never blocks the
 * loop.
 */
#ifndef UTIL_CO_SOCKET_H
#define UTIL_CO_SOCKET_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "util/coroutine.h"

/* Up to len bytes: >0 read, 0 at end of stream, -errno on error. */
ssize_t coroutine_fn co_sock_read_some(int fd, void *buf, size_t len);
/* Exactly len bytes: 1 on success, 0 on end of stream before the first
 * byte, -EPIPE on end of stream part way, -errno on error. */
int coroutine_fn co_sock_read_full(int fd, void *buf, size_t len);
/* All of iov: 0 or -errno (-EPIPE when the peer went away).  Never raises
 * SIGPIPE (MSG_NOSIGNAL). */
int coroutine_fn co_sock_writev_full(int fd, const struct iovec *iov,
                                     int iovcnt);
int coroutine_fn co_sock_write_full(int fd, const void *buf, size_t len);

/* Make fd non-blocking and close-on-exec; 0 or -errno. */
int sock_set_nonblocking(int fd);

/*
 * Listening sockets.  `path` mode: a UNIX socket created with `mode`
 * (e.g. 0600); an existing socket at path is replaced, any other existing
 * file is refused.  inet: host/port, SO_REUSEADDR, IPv4 or IPv6.
 * Return the listening fd or -1 with errp set.
 */
#include <glib.h>
int sock_listen_unix(const char *path, int mode, GError **errp);
int sock_listen_inet(const char *host, const char *port, GError **errp);
/* Connect to a UNIX socket: a non-blocking, close-on-exec fd, or -1. */
int sock_connect_unix(const char *path, GError **errp);

#endif
