/*
 * The pid file, locked with a POSIX write lock (fcntl F_SETLK) as QEMU
 * does, so a QEMU process and blockd given the same file exclude each
 * other too.  The lock lives as long as the descriptor, i.e. the process.
 */
#include "daemon/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/error.h"

static int pid_fd = -1;
static char *pid_path; /* absolute: --daemonize moves us to / */

static bool write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        buf += n;
        len -= n;
    }
    return true;
}

bool pidfile_create(const char *path, GError **errp)
{
    int fd;

    /*
     * Lock, then check that the name still refers to the file we locked:
     * a daemon exiting at the same time may have unlinked it after our
     * open, and a lock on an unlinked file protects nothing.
     */
    for (;;) {
        struct stat locked, named;
        struct flock lock = {
            .l_type = F_WRLCK,
            .l_whence = SEEK_SET,
            .l_start = 0,
            .l_len = 0,
        };

        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            error_setg_errno(errp, errno, "Could not create '%s'", path);
            return false;
        }
        if (fstat(fd, &locked) < 0) {
            error_setg_errno(errp, errno, "Cannot stat file");
            close(fd);
            return false;
        }
        if (fcntl(fd, F_SETLK, &lock) < 0) {
            error_setg_errno(errp, errno, "Cannot lock pid file");
            close(fd);
            return false;
        }
        if (stat(path, &named) == 0 && named.st_dev == locked.st_dev &&
            named.st_ino == locked.st_ino) {
            break;
        }
        close(fd); /* replaced or removed under us: try again */
    }

    char buf[32];
    int len = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0) {
        error_setg_errno(errp, errno, "Failed to truncate pid file");
        goto fail;
    }
    if (!write_all(fd, buf, len)) {
        error_setg(errp, "Failed to write pid file");
        goto fail;
    }
    pid_fd = fd;
    pid_path = g_canonicalize_filename(path, NULL);
    return true;

fail:
    unlink(path);
    close(fd);
    return false;
}

void pidfile_remove(void)
{
    if (pid_fd < 0) {
        return;
    }
    /* Unlink while still holding the lock, so no one locks the old file. */
    unlink(pid_path);
    close(pid_fd);
    pid_fd = -1;
    g_free(pid_path);
    pid_path = NULL;
}
