/*
 * The `file` protocol driver's image creation, for blockd-img and
 * blockdev-create.
 */
#ifndef BLOCK_DRIVERS_FILE_POSIX_H
#define BLOCK_DRIVERS_FILE_POSIX_H

#include <glib.h>
#include <stdint.h>

#include "qapi/qapi-types.h"

/*
 * Create (or truncate to empty, then size) a regular file of `size` bytes
 * with the given preallocation (off, falloc, full; metadata is refused as
 * QEMU does).  The file is locked as QEMU does while it is being created,
 * so an image another process has open is not destroyed.  Blocking: call
 * from a tool's main or a worker thread, or through the driver's
 * bdrv_co_create from a coroutine.
 */
int file_create(const char *filename, int64_t size, PreallocMode prealloc,
                GError **errp);

#endif
