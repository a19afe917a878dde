/*
 * --pidfile: the file holds our pid and an exclusive lock for as long as
 * we run, so a second daemon given the same file refuses to start.
 */
#ifndef DAEMON_PIDFILE_H
#define DAEMON_PIDFILE_H

#include <glib.h>
#include <stdbool.h>

bool pidfile_create(const char *path, GError **errp);
/* Remove the file (clean exit); no-op if none was created. */
void pidfile_remove(void);

#endif
