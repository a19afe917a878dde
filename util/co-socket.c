/*
 * Coroutine I/O on non-blocking stream sockets, and listening/connecting
 * helpers.  A would-block waits in aio_co_poll(), so the loop keeps
 * running while a peer is slow.
 */
#include "util/co-socket.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/aio.h"
#include "util/error.h"

ssize_t coroutine_fn co_sock_read_some(int fd, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -errno;
        }
        int ret = aio_co_poll(fd, POLLIN);
        if (ret < 0) {
            return ret;
        }
    }
}

int coroutine_fn co_sock_read_full(int fd, void *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = co_sock_read_some(fd, (char *)buf + done, len - done);
        if (n < 0) {
            return n;
        }
        if (n == 0) {
            return done == 0 ? 0 : -EPIPE;
        }
        done += n;
    }
    return 1;
}

/* One write attempt: sendmsg for MSG_NOSIGNAL, writev for non-sockets
 * (pipes in tests). */
static ssize_t sock_writev_once(int fd, struct iovec *iov, int iovcnt)
{
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = iovcnt };
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);

    if (n < 0 && errno == ENOTSOCK) {
        n = writev(fd, iov, iovcnt);
    }
    return n;
}

int coroutine_fn co_sock_writev_full(int fd, const struct iovec *iov,
                                     int iovcnt)
{
    struct iovec stack_iov[16];
    struct iovec *v = stack_iov;
    int ret = 0;

    if (iovcnt <= 0) {
        return 0;
    }
    /* A private copy that we can advance over partial writes. */
    if (iovcnt > (int)G_N_ELEMENTS(stack_iov)) {
        v = g_new(struct iovec, iovcnt);
    }
    memcpy(v, iov, iovcnt * sizeof(*v));

    int i = 0;
    while (i < iovcnt) {
        if (v[i].iov_len == 0) {
            i++;
            continue;
        }
        ssize_t n = sock_writev_once(fd, &v[i], MIN(iovcnt - i, IOV_MAX));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ret = aio_co_poll(fd, POLLOUT);
                if (ret < 0) {
                    break;
                }
                continue;
            }
            /* The peer went away: one error for both ways of saying it. */
            ret = (errno == ECONNRESET) ? -EPIPE : -errno;
            break;
        }
        while (n > 0 && i < iovcnt) {
            if ((size_t)n >= v[i].iov_len) {
                n -= v[i].iov_len;
                i++;
            } else {
                v[i].iov_base = (char *)v[i].iov_base + n;
                v[i].iov_len -= n;
                n = 0;
            }
        }
    }
    if (v != stack_iov) {
        g_free(v);
    }
    return ret;
}

int coroutine_fn co_sock_write_full(int fd, const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

    return co_sock_writev_full(fd, &iov, 1);
}

int sock_set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        return -errno;
    }
    fl = fcntl(fd, F_GETFD);
    if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
        return -errno;
    }
    return 0;
}

static bool sock_fill_unix_addr(struct sockaddr_un *sun, const char *path,
                                GError **errp)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun->sun_path)) {
        error_setg(errp, "UNIX socket path '%s' is too long", path);
        return false;
    }
    strcpy(sun->sun_path, path);
    return true;
}

int sock_listen_unix(const char *path, int mode, GError **errp)
{
    struct sockaddr_un sun;
    struct stat st;
    int fd;

    if (!sock_fill_unix_addr(&sun, path, errp)) {
        return -1;
    }
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            error_setg(errp, "Failed to bind socket to %s: File exists and "
                       "is not a socket", path);
            return -1;
        }
        /* A socket left by an earlier run (or in use: the newest wins, as
         * with QEMU). */
        if (unlink(path) < 0 && errno != ENOENT) {
            error_setg_errno(errp, errno, "Failed to unlink socket %s", path);
            return -1;
        }
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Failed to create Unix socket");
        return -1;
    }
    /*
     * On Linux bind() creates the file with the socket inode's mode minus
     * the umask, so restricting the inode first means the path is never
     * more accessible than `mode`; chmod afterwards makes it exact.
     */
    if (fchmod(fd, mode & 07777) < 0) {
        error_setg_errno(errp, errno, "Failed to set socket mode");
        goto fail;
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        error_setg_errno(errp, errno, "Failed to bind socket to %s", path);
        goto fail;
    }
    if (chmod(path, mode & 07777) < 0) {
        error_setg_errno(errp, errno, "Failed to set mode of %s", path);
        unlink(path);
        goto fail;
    }
    if (listen(fd, SOMAXCONN) < 0) {
        error_setg_errno(errp, errno, "Failed to listen on socket");
        unlink(path);
        goto fail;
    }
    return fd;

fail:
    close(fd);
    return -1;
}

int sock_listen_inet(const char *host, const char *port, GError **errp)
{
    struct addrinfo hints = {
        .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
    };
    struct addrinfo *res, *ai;
    int saved_errno = 0;
    int fd = -1;
    int rc;

    if (host && !*host) {
        host = NULL;
    }
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        error_setg(errp, "address resolution failed for %s:%s: %s",
                   host ? host : "", port ? port : "", gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        int on = 1;

        fd = socket(ai->ai_family,
                    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            saved_errno = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
            listen(fd, SOMAXCONN) == 0) {
            break;
        }
        saved_errno = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        /* QEMU's wording (it also tries port ranges). */
        error_setg_errno(errp, saved_errno ? saved_errno : EADDRNOTAVAIL,
                         "Failed to find an available port");
    }
    return fd;
}

int sock_connect_unix(const char *path, GError **errp)
{
    struct sockaddr_un sun;
    int fd, ret;

    if (!sock_fill_unix_addr(&sun, path, errp)) {
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Failed to create socket");
        return -1;
    }
    /* A blocking connect: on a UNIX socket it completes at once. */
    do {
        ret = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        error_setg_errno(errp, errno, "Failed to connect to '%s'", path);
        close(fd);
        return -1;
    }
    ret = sock_set_nonblocking(fd);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to make socket non-blocking");
        close(fd);
        return -1;
    }
    return fd;
}
