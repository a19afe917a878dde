/*
 * Double fork: the first child starts a new session, the grandchild (not
 * a session leader, so it can never acquire a controlling terminal) is
 * the daemon.  A pipe from the daemon to the original parent carries one
 * status byte; end of file without it means setup failed.
 */
#include "daemon/daemonize.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int ready_fd = -1;

void daemonize_start(void)
{
    int fds[2];

    if (pipe2(fds, O_CLOEXEC) < 0) {
        fprintf(stderr, "blockd: cannot create pipe: %s\n", strerror(errno));
        exit(EXIT_FAILURE);
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "blockd: cannot fork: %s\n", strerror(errno));
        exit(EXIT_FAILURE);
    }
    if (pid > 0) {
        uint8_t status = 1;
        ssize_t n;

        close(fds[1]);
        do {
            n = read(fds[0], &status, 1);
        } while (n < 0 && errno == EINTR);
        _exit(n == 1 && status == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
    }

    close(fds[0]);
    ready_fd = fds[1];
    setsid();
    pid = fork();
    if (pid < 0) {
        exit(EXIT_FAILURE);
    }
    if (pid > 0) {
        _exit(EXIT_SUCCESS);
    }
    umask(027);
    signal(SIGTSTP, SIG_IGN);
    signal(SIGTTOU, SIG_IGN);
    signal(SIGTTIN, SIG_IGN);
}

void daemonize_ready(void)
{
    uint8_t status = 0;
    ssize_t n;

    if (ready_fd < 0) {
        return;
    }
    if (chdir("/") < 0) {
        fprintf(stderr, "blockd: not able to chdir to /: %s\n",
                strerror(errno));
        exit(EXIT_FAILURE);
    }
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        exit(EXIT_FAILURE);
    }
    fflush(stdout);
    fflush(stderr);
    dup2(fd, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    do {
        n = write(ready_fd, &status, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
        exit(EXIT_FAILURE);
    }
    close(ready_fd);
    ready_fd = -1;
}
