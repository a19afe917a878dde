/*
 * The daemon's --chardev: only what a QMP monitor needs, a listening
 * socket (UNIX path, or TCP host/port).  Parsed with QemuOpts' flat rules
 * (not keyval), as qemu-storage-daemon parses --chardev.
 */
#ifndef DAEMON_CHARDEV_H
#define DAEMON_CHARDEV_H

#include <glib.h>
#include <stdbool.h>

/* Create the chardev described by `opts` ("socket,id=c0,path=...").
 * `loc` ("--chardev ...") prefixes warnings and the wait=on notice. */
bool chardev_add(const char *opts, const char *loc, GError **errp);
/* Hand the listening fd of chardev `id` to its one user (a monitor). */
int chardev_take_listener(const char *id, GError **errp);
/* Close what no user took and remove UNIX socket files. */
void chardev_cleanup(void);

#endif
