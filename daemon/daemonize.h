/*
 * --daemonize as qemu-storage-daemon does it: fork before any setup (so
 * no thread, ring or socket crosses the fork), the parent waits until the
 * daemon reports that setup finished and exits 0, or 1 if setup failed.
 * Setup errors are printed by the daemon itself while stderr is still the
 * caller's.
 */
#ifndef DAEMON_DAEMONIZE_H
#define DAEMON_DAEMONIZE_H

/* Fork; only the daemon returns (in a new session). */
void daemonize_start(void);
/* Setup is complete: detach stdio, chdir /, release the parent (exit 0). */
void daemonize_ready(void);

#endif
