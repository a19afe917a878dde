/*
 * The `file` protocol driver: a regular file accessed through io_uring
 * (or worker threads with aio=threads).
 *
 * Besides I/O it mirrors the node's permissions into OFD byte-range locks
 * at the offsets QEMU uses, so blockd and QEMU processes see each other:
 * a shared (read) lock on byte 100+bit for every permission the node
 * holds, and on byte 200+bit for every permission it does not share.
 * Another process may take a permission only if nobody locks its 200+bit
 * byte, and may refuse to share one only if nobody locks its 100+bit byte.
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/accounting.h"
#include "block/block_int.h"
#include "block/drivers/file-posix.h"
#include "util/aio.h"
#include "util/error.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define LOCK_NBITS 4 /* consistent-read, write, write-unchanged, resize */

static const char *const lock_perm_names[LOCK_NBITS] = {
    "consistent read", "write", "write unchanged", "resize",
};

typedef struct BDRVFileState {
    int fd;
    bool use_threads; /* aio=threads */
    bool use_lock;
    bool o_direct;
    uint32_t request_alignment;
    size_t buf_align;

    /*
     * Locks.  `locked_perm`: bits whose byte 100+bit we hold;
     * `locked_unshared`: bits whose byte 200+bit we hold.  `perm` and
     * `shared` are the committed permissions; check_perm stages
     * new_perm/new_shared until set_perm or abort_perm_update.
     */
    uint64_t locked_perm, locked_unshared;
    uint64_t perm, shared;
    uint64_t new_perm, new_shared;
    /* A blockdev-reopen in progress that needs a new descriptor. */
    struct FileReopenState *reopen;
    /*
     * How far the file really extends when we grew it ahead of the data
     * (see file_grow_ahead); -1 when not known.  bs->total_bytes stays the
     * end of the data, which is what the node reports and what the file is
     * cut back to on close.
     */
    int64_t phys_end;
    /* query-blockstats' driver-specific discard counters */
    BdrvDiscardStats discard_stats;
} BDRVFileState;

/*
 * The descriptor a reopen switches to (another access mode or O_DIRECT),
 * from prepare to commit or abort.  It holds the same locks as the old
 * one from the permission stage on, so the switch loses none.
 */
typedef struct FileReopenState {
    int fd;
    bool o_direct;
    uint32_t request_alignment;
    size_t buf_align;
    uint64_t locked_perm, locked_unshared;
} FileReopenState;

static void file_reopen_lock(BlockDriverState *bs, uint64_t perm,
                             uint64_t unshared, bool unlock);

/* ---- byte-range locks ---- */

static int lock_byte(int fd, int64_t byte, short type)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = type,
    };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Whether another open file description holds a lock on `byte` that
 * conflicts with an exclusive lock (i.e. any lock). 1, 0 or -errno. */
static int lock_byte_taken(int fd, int64_t byte)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = F_WRLCK,
    };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

/*
 * Hold exactly the bytes for (perm_bits, unshared_bits): lock what is
 * missing, and, if `unlock`, release what is no longer wanted.  Only
 * changed bytes are touched.  On error *locked_perm and *locked_unshared say
 * what is held now.
 */
static int apply_lock_bytes(int fd, uint64_t *locked_perm,
                            uint64_t *locked_unshared, uint64_t perm_bits,
                            uint64_t unshared_bits, bool unlock,
                            GError **errp)
{
    for (int i = 0; i < LOCK_NBITS; i++) {
        uint64_t bit = 1ULL << i;
        int ret;

        if ((perm_bits & bit) && !(*locked_perm & bit)) {
            ret = lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to lock byte %d",
                                 LOCK_PERM_BASE + i);
                return ret;
            }
            *locked_perm |= bit;
        } else if (unlock && !(perm_bits & bit) && (*locked_perm & bit)) {
            ret = lock_byte(fd, LOCK_PERM_BASE + i, F_UNLCK);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to unlock byte %d",
                                 LOCK_PERM_BASE + i);
                return ret;
            }
            *locked_perm &= ~bit;
        }
        if ((unshared_bits & bit) && !(*locked_unshared & bit)) {
            ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to lock byte %d",
                                 LOCK_SHARED_BASE + i);
                return ret;
            }
            *locked_unshared |= bit;
        } else if (unlock && !(unshared_bits & bit) &&
                   (*locked_unshared & bit)) {
            ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_UNLCK);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to unlock byte %d",
                                 LOCK_SHARED_BASE + i);
                return ret;
            }
            *locked_unshared &= ~bit;
        }
    }
    return 0;
}

/* Does anyone else's lock forbid holding `perm` while sharing only
 * `shared`?  The messages are QEMU's. */
static int check_lock_bytes(int fd, uint64_t perm, uint64_t shared,
                            GError **errp)
{
    for (int i = 0; i < LOCK_NBITS; i++) {
        uint64_t bit = 1ULL << i;
        int ret;

        if (perm & bit) {
            ret = lock_byte_taken(fd, LOCK_SHARED_BASE + i);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to check byte %d",
                                 LOCK_SHARED_BASE + i);
                return ret;
            }
            if (ret) {
                error_setg(errp, "Failed to get \"%s\" lock",
                           lock_perm_names[i]);
                return -EAGAIN;
            }
        }
        if (!(shared & bit)) {
            ret = lock_byte_taken(fd, LOCK_PERM_BASE + i);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to check byte %d",
                                 LOCK_PERM_BASE + i);
                return ret;
            }
            if (ret) {
                error_setg(errp, "Failed to get shared \"%s\" lock",
                           lock_perm_names[i]);
                return -EAGAIN;
            }
        }
    }
    return 0;
}

static uint64_t unshared_of(uint64_t shared)
{
    return ~shared & BLK_PERM_ALL;
}

/* Go back to the locks for the committed permissions.  Relaxing never
 * fails: errors are logged. */
static void file_relock(BlockDriverState *bs, uint64_t perm, uint64_t shared)
{
    BDRVFileState *s = bs->opaque;
    GError *err = NULL;

    if (apply_lock_bytes(s->fd, &s->locked_perm, &s->locked_unshared, perm,
                         unshared_of(shared), true, &err) < 0) {
        warn_report("%s: %s", bs->filename, err->message);
        g_error_free(err);
    }
}

static bool file_locks_active(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    return s->use_lock && !(bs->open_flags & BDRV_O_INACTIVE);
}

static int file_check_perm(BlockDriverState *bs, uint64_t perm,
                           uint64_t shared, GError **errp)
{
    BDRVFileState *s = bs->opaque;
    int ret;

    s->new_perm = perm;
    s->new_shared = shared;
    if (!file_locks_active(bs)) {
        return 0;
    }
    /*
     * Take the new locks while keeping the old ones (until set_perm we
     * still hold the old permissions), then see whether anyone else
     * conflicts with what we are about to hold.
     */
    /* A reopen's new descriptor must not look like another user to the
     * check: it drops its locks meanwhile (the old one keeps them all). */
    file_reopen_lock(bs, 0, 0, true);
    ret = apply_lock_bytes(s->fd, &s->locked_perm, &s->locked_unshared,
                           s->perm | perm,
                           unshared_of(s->shared) | unshared_of(shared),
                           false, errp);
    if (ret == 0) {
        ret = check_lock_bytes(s->fd, perm, shared, errp);
    }
    if (ret < 0) {
        file_relock(bs, s->perm, s->shared);
        file_reopen_lock(bs, s->perm, unshared_of(s->shared), true);
        return ret;
    }
    file_reopen_lock(bs, s->perm | perm,
                     unshared_of(s->shared) | unshared_of(shared), false);
    return ret;
}

static void file_set_perm(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared)
{
    BDRVFileState *s = bs->opaque;

    s->perm = perm;
    s->shared = shared;
    if (file_locks_active(bs)) {
        file_relock(bs, perm, shared);
        file_reopen_lock(bs, perm, unshared_of(shared), true);
    }
}

static void file_abort_perm_update(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    if (file_locks_active(bs)) {
        file_relock(bs, s->perm, s->shared);
        file_reopen_lock(bs, s->perm, unshared_of(s->shared), true);
    }
}

/* ---- I/O ---- */

typedef struct FileThreadIO {
    int fd;
    bool write;
    const struct iovec *iov;
    int iovcnt;
    int64_t offset;
    int64_t ret;
} FileThreadIO;

static int file_thread_rw(void *opaque)
{
    FileThreadIO *t = opaque;
    ssize_t r;

    do {
        r = t->write ? pwritev(t->fd, t->iov, t->iovcnt, t->offset)
                     : preadv(t->fd, t->iov, t->iovcnt, t->offset);
    } while (r < 0 && errno == EINTR);
    t->ret = r < 0 ? -errno : r;
    return 0;
}

static int64_t coroutine_fn file_rw_once(BDRVFileState *s, bool write,
                                         const struct iovec *iov, int iovcnt,
                                         int64_t offset)
{
    if (s->use_threads) {
        FileThreadIO t = { .fd = s->fd, .write = write, .iov = iov,
                           .iovcnt = iovcnt, .offset = offset };
        thread_pool_co_run(file_thread_rw, &t);
        return t.ret;
    }
    return write ? aio_co_pwritev(s->fd, iov, iovcnt, offset)
                 : aio_co_preadv(s->fd, iov, iovcnt, offset);
}

/*
 * Transfer `bytes` at `offset` from/to the first `bytes` of qiov, looping
 * over short transfers and over vectors longer than IOV_MAX.  A read that
 * meets end of file fills the rest with zeroes.
 */
static int coroutine_fn file_rw_direct(BlockDriverState *bs, bool write,
                                       int64_t offset, int64_t bytes,
                                       IOVector *qiov)
{
    BDRVFileState *s = bs->opaque;
    IOVector work;
    int64_t done = 0;
    int ret = 0;

    /* The common case: one system call for the caller's whole vector,
     * with no copy of it. */
    if (qiov->size == (size_t)bytes && qiov->niov <= IOV_MAX) {
        int64_t r = file_rw_once(s, write, qiov->iov, qiov->niov, offset);
        if (r == bytes) {
            return 0;
        }
        if (r < 0 && r != -EINTR && r != -EAGAIN) {
            return r;
        }
        if (r > 0) {
            done = r;
        }
    }

    qiov_init(&work, qiov->niov);
    qiov_concat(&work, qiov, done, bytes - done);
    if (done > 0 && !write && s->o_direct &&
        (offset + done) % s->request_alignment) {
        /* Short O_DIRECT read ending unaligned: end of file (below). */
        qiov_memset(qiov, done, 0, bytes - done);
        qiov_destroy(&work);
        return 0;
    }

    int first = 0; /* first element of work not yet done */
    while (done < bytes) {
        int cnt = MIN(work.niov - first, IOV_MAX);
        int64_t r = file_rw_once(s, write, &work.iov[first], cnt,
                                 offset + done);
        if (r == -EINTR || r == -EAGAIN) {
            continue;
        }
        if (r < 0) {
            ret = r;
            break;
        }
        if (r == 0) {
            if (write) {
                ret = -EIO; /* a write that makes no progress */
                break;
            }
            /* End of file: the rest reads as zeroes. */
            qiov_memset(qiov, done, 0, bytes - done);
            break;
        }
        done += r;
        if (!write && done < bytes && s->o_direct &&
            (offset + done) % s->request_alignment) {
            /* A short O_DIRECT read ending unaligned is the end of the
             * file; asking again at an unaligned offset would fail. */
            qiov_memset(qiov, done, 0, bytes - done);
            break;
        }
        /* Skip what was transferred. */
        while (r > 0 && first < work.niov) {
            if ((size_t)r >= work.iov[first].iov_len) {
                r -= work.iov[first].iov_len;
                first++;
            } else {
                work.iov[first].iov_base =
                    (char *)work.iov[first].iov_base + r;
                work.iov[first].iov_len -= r;
                r = 0;
            }
        }
    }
    qiov_destroy(&work);
    return ret;
}

/* Whether O_DIRECT can take qiov's first `bytes` as they are: every
 * piece's address and length aligned. */
static bool file_qiov_aligned(BDRVFileState *s, IOVector *qiov,
                              int64_t bytes)
{
    int64_t left = bytes;

    for (int i = 0; i < qiov->niov && left > 0; i++) {
        size_t len = MIN(qiov->iov[i].iov_len, (size_t)left);
        if ((uintptr_t)qiov->iov[i].iov_base % s->buf_align ||
            len % s->request_alignment) {
            return false;
        }
        left -= len;
    }
    return true;
}

/* Bounce buffer size for misaligned vectors under O_DIRECT. */
#define FILE_BOUNCE_MAX (4 * 1024 * 1024)

static int64_t file_current_length(BDRVFileState *s);

/* Step by which a write past the end grows the file ahead of the data. */
#define FILE_GROW_STEP (16 * 1024 * 1024)

/*
 * An O_DIRECT write past the end of a file (a format allocating clusters)
 * makes ext4 take the inode lock exclusively and complete the write
 * synchronously, so a job filling an image writes one request at a time
 * (buffered writes only touch the page cache: they are left alone).
 * Allocating the space ahead in larger steps (fallocate: unwritten
 * extents, which O_DIRECT overwrites under the shared lock) keeps later
 * writes inside the file.  The node's length stays the end of the data;
 * the file is cut back to it on close (file_trim_tail).  After a crash the
 * tail is zeroes past the last cluster: harmless, as with QEMU's
 * `preallocate` filter.  Best effort: failures leave the write to extend
 * the file itself.
 */
static void coroutine_fn file_grow_ahead(BlockDriverState *bs, int64_t end)
{
    BDRVFileState *s = bs->opaque;

    if (end <= bs->total_bytes || (s->phys_end >= 0 && end <= s->phys_end)) {
        return;
    }
    if (s->phys_end < 0) {
        int64_t len = file_current_length(s);
        if (len < 0) {
            return;
        }
        s->phys_end = len;
        if (end <= len) {
            return;
        }
    }
    int64_t target = (end + FILE_GROW_STEP - 1) / FILE_GROW_STEP *
                     FILE_GROW_STEP;
    int64_t from = s->phys_end;
    if (aio_co_fallocate(s->fd, 0, from, target - from) == 0 &&
        target > s->phys_end) {
        s->phys_end = target;
    }
}

/* Cut off what file_grow_ahead allocated past the data (best effort). */
static void file_trim_tail(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    if (s->fd >= 0 && s->phys_end > bs->total_bytes &&
        bs->total_bytes >= 0) {
        if (ftruncate(s->fd, bs->total_bytes) < 0) {
            error_report("file: could not cut '%s' back to %" PRId64
                         " bytes: %s", bs->filename, bs->total_bytes,
                         strerror(errno));
        }
    }
    s->phys_end = -1;
}

static int coroutine_fn file_rw(BlockDriverState *bs, bool write,
                                int64_t offset, int64_t bytes,
                                IOVector *qiov)
{
    BDRVFileState *s = bs->opaque;
    int ret = 0;

    if (bytes <= 0) {
        return 0;
    }
    if ((size_t)bytes > qiov->size) {
        return -EINVAL;
    }
    if (write && s->o_direct && offset + bytes > bs->total_bytes) {
        file_grow_ahead(bs, offset + bytes);
    }
    if (!s->o_direct || file_qiov_aligned(s, qiov, bytes)) {
        ret = file_rw_direct(bs, write, offset, bytes, qiov);
    } else {
        /*
         * The core pads unaligned requests with its own buffers, and
         * callers' buffers may sit anywhere: go through an aligned bounce
         * buffer (offset and bytes are aligned already).
         */
        size_t blen = MIN(bytes, FILE_BOUNCE_MAX);
        blen -= blen % s->request_alignment;
        if (blen == 0) {
            blen = s->request_alignment;
        }
        void *buf = blk_memalign(MAX(s->buf_align, 4096), blen);
        for (int64_t done = 0; done < bytes && ret == 0;) {
            size_t n = MIN((int64_t)blen, bytes - done);
            IOVector bq;
            qiov_init_buf(&bq, buf, n);
            if (write) {
                qiov_to_buf(qiov, done, buf, n);
                ret = file_rw_direct(bs, true, offset + done, n, &bq);
            } else {
                ret = file_rw_direct(bs, false, offset + done, n, &bq);
                if (ret == 0) {
                    qiov_from_buf(qiov, done, buf, n);
                }
            }
            done += n;
        }
        blk_vfree(buf);
    }
    if (ret == 0 && write && offset + bytes > bs->total_bytes) {
        /* A format allocating past our end grows the file. */
        bs->total_bytes = offset + bytes;
    }
    return ret;
}

static int coroutine_fn file_co_preadv(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       BdrvRequestFlags flags)
{
    return file_rw(bs, false, offset, bytes, qiov);
}

static int coroutine_fn file_co_pwritev(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, IOVector *qiov,
                                        BdrvRequestFlags flags)
{
    return file_rw(bs, true, offset, bytes, qiov);
}

static int coroutine_fn file_co_flush_to_disk(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    if (bs->open_flags & BDRV_O_NO_FLUSH) {
        return 0;
    }
    return aio_co_fsync(s->fd, true);
}

static int64_t file_current_length(BDRVFileState *s)
{
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

static int coroutine_fn file_fallocate(BDRVFileState *s, int mode,
                                       int64_t offset, int64_t len)
{
    int ret = aio_co_fallocate(s->fd, mode, offset, len);

    /* Filesystems say "not supported" in several ways. */
    if (ret == -EOPNOTSUPP || ret == -ENOSYS || ret == -EINVAL) {
        return -ENOTSUP;
    }
    return ret;
}

static int coroutine_fn file_co_pwrite_zeroes(BlockDriverState *bs,
                                              int64_t offset, int64_t bytes,
                                              BdrvRequestFlags flags)
{
    BDRVFileState *s = bs->opaque;
    int64_t end = offset + bytes;
    int64_t len;
    int ret;

    if (bytes <= 0) {
        return 0;
    }
    len = file_current_length(s);
    if (len < 0) {
        return len;
    }

    if ((flags & BDRV_REQ_MAY_UNMAP) && (bs->open_flags & BDRV_O_UNMAP)) {
        /* A hole reads as zeroes and frees the space. */
        ret = file_fallocate(s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             offset, bytes);
        if (ret == 0) {
            if (end > len && ftruncate(s->fd, end) < 0) {
                return -errno;
            }
            goto done;
        }
        if (ret != -ENOTSUP) {
            return ret;
        }
    }

    /* Zeroes, allocated, growing the file if needed. */
    ret = file_fallocate(s, FALLOC_FL_ZERO_RANGE, offset, bytes);
    if (ret == 0) {
        goto done;
    }
    if (ret != -ENOTSUP) {
        return ret;
    }

    if (offset >= len) {
        /* Entirely past the end: growing the file makes the zeroes. */
        if (ftruncate(s->fd, end) < 0) {
            return -errno;
        }
        goto done;
    }

    /* No ZERO_RANGE (tmpfs, NFS): a hole, then allocate it again. */
    ret = file_fallocate(s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         offset, MIN(bytes, len - offset));
    if (ret == 0) {
        if (!((flags & BDRV_REQ_MAY_UNMAP) &&
              (bs->open_flags & BDRV_O_UNMAP))) {
            /* Best effort: the data is already zero. */
            file_fallocate(s, 0, offset, MIN(bytes, len - offset));
        }
        if (end > len && ftruncate(s->fd, end) < 0) {
            return -errno;
        }
        goto done;
    }
    return ret; /* -ENOTSUP: the core writes a buffer of zeroes */

done:
    if (end > bs->total_bytes) {
        bs->total_bytes = end;
    }
    return 0;
}

static int coroutine_fn file_co_pdiscard(BlockDriverState *bs,
                                         int64_t offset, int64_t bytes)
{
    BDRVFileState *s = bs->opaque;
    int ret;

    if (!(bs->open_flags & BDRV_O_UNMAP) || bytes <= 0) {
        return 0;
    }
    ret = file_fallocate(s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         offset, bytes);
    /* Counted before -ENOTSUP becomes success: QEMU reports a discard the
     * host could not do as failed. */
    bdrv_acct_discard_done(&s->discard_stats, bytes, ret);
    /* Discard is advisory: a filesystem without holes just keeps data. */
    return ret == -ENOTSUP ? 0 : ret;
}

/* ---- copy offload: copy_file_range(2) between two file nodes ---- */

typedef struct FileCopyRange {
    int src_fd, dst_fd;
    int64_t src_offset, dst_offset, bytes;
    int64_t done; /* bytes copied */
    int ret;
} FileCopyRange;

/* On a worker thread: the kernel may copy less than asked; loop. */
static int file_thread_copy_range(void *opaque)
{
    FileCopyRange *c = opaque;
    c->ret = 0;
    while (c->done < c->bytes) {
        loff_t in = c->src_offset + c->done;
        loff_t out = c->dst_offset + c->done;
        ssize_t r = copy_file_range(c->src_fd, &in, c->dst_fd, &out,
                                    (size_t)(c->bytes - c->done), 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            /* 0: the source ended early (it was checked to hold the
             * range: it shrank under us) */
            c->ret = r < 0 ? -errno : -EIO;
            break;
        }
        c->done += r;
    }
    return 0;
}

/* The source is this file: now find the destination's file. */
static int coroutine_fn file_co_copy_range_from(BlockDriverState *bs,
                                                BdrvChild *src,
                                                int64_t src_offset,
                                                BdrvChild *dst,
                                                int64_t dst_offset,
                                                int64_t bytes)
{
    return bdrv_co_copy_range_to(src, src_offset, dst, dst_offset, bytes);
}

static int coroutine_fn file_co_copy_range_to(BlockDriverState *bs,
                                              BdrvChild *src,
                                              int64_t src_offset,
                                              BdrvChild *dst,
                                              int64_t dst_offset,
                                              int64_t bytes)
{
    if (src->bs->drv != bs->drv) {
        return -ENOTSUP; /* the source is not a file */
    }
    BDRVFileState *ss = src->bs->opaque, *ds = bs->opaque;
    FileCopyRange c = {
        .src_fd = ss->fd, .dst_fd = ds->fd,
        .src_offset = src_offset, .dst_offset = dst_offset, .bytes = bytes,
    };
    /* copy_file_range blocks (io_uring has no such operation) */
    thread_pool_co_run(file_thread_copy_range, &c);
    if (c.ret < 0 && c.done == 0 &&
        (c.ret == -EXDEV || c.ret == -EINVAL || c.ret == -ENOSYS ||
         c.ret == -EOPNOTSUPP || c.ret == -EBADF)) {
        /* this kernel, filesystem pair or open mode cannot: nothing was
         * copied, so the caller may read and write instead */
        return -ENOTSUP;
    }
    return c.ret;
}

static int coroutine_fn file_co_block_status(BlockDriverState *bs,
                                             bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             int64_t *map,
                                             BlockDriverState **file)
{
    BDRVFileState *s = bs->opaque;
    int ret = BDRV_BLOCK_DATA;
    int64_t n = bytes;

    if (want_zero) {
        off_t data = lseek(s->fd, offset, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            /* In a hole that lasts to the end of the file. */
            ret = BDRV_BLOCK_ZERO;
        } else if (data > offset) {
            ret = BDRV_BLOCK_ZERO;
            n = MIN(bytes, (int64_t)data - offset);
        } else if (data == offset) {
            off_t hole = lseek(s->fd, offset, SEEK_HOLE);
            if (hole > offset) {
                n = MIN(bytes, (int64_t)hole - offset);
            }
            /* hole <= offset: the file changed under us; say data. */
        }
        /* Other errors (no SEEK_DATA support): all data. */

        /* With O_DIRECT the answer must stay aligned; a partly-zero
         * block is data. */
        uint32_t align = s->request_alignment;
        if (n < bytes && align > 1 && (offset + n) % align) {
            int64_t aligned_end = ((offset + n) / align + 1) * align;
            n = MIN(bytes, aligned_end - offset);
            ret = BDRV_BLOCK_DATA;
        }
    }
    *pnum = n;
    *map = offset;
    *file = bs;
    /* The end of the node (EOF) is the core's to report. */
    ret |= BDRV_BLOCK_OFFSET_VALID | BDRV_BLOCK_ALLOCATED;
    return ret;
}

/* Write zeroes into [from, to) of the file: preallocation=full. */
static int coroutine_fn file_write_zero_fill(BDRVFileState *s, int64_t from,
                                             int64_t to)
{
    const size_t chunk = 1024 * 1024;
    int64_t align = s->o_direct ? s->request_alignment : 1;
    int64_t astart = (from + align - 1) / align * align;
    int64_t aend = to / align * align;
    int ret = 0;

    if (astart >= aend) {
        astart = aend = to;
    }
    /*
     * O_DIRECT cannot write the partial blocks at either end; they read
     * as zeroes already (the file was extended), so allocating them is
     * enough (best effort: a filesystem without fallocate keeps them
     * sparse).
     */
    if (from < astart) {
        aio_co_fallocate(s->fd, 0, from, astart - from);
    }
    if (aend < to) {
        aio_co_fallocate(s->fd, 0, aend, to - aend);
    }
    from = astart;
    to = aend;

    void *buf = blk_memalign(MAX(s->buf_align, 4096), chunk);
    memset(buf, 0, chunk);
    while (from < to) {
        struct iovec iov = { buf, MIN((int64_t)chunk, to - from) };
        int64_t r = aio_co_pwritev(s->fd, &iov, 1, from);
        if (r < 0) {
            if (r == -EINTR) {
                continue;
            }
            ret = r;
            break;
        }
        if (r == 0) {
            ret = -EIO;
            break;
        }
        from += r;
    }
    blk_vfree(buf);
    return ret;
}

/* Resize the open file: QEMU's rules and messages.  Used by truncate and
 * by creation. */
static int coroutine_fn file_resize(BDRVFileState *s, int64_t offset,
                                    PreallocMode prealloc, GError **errp)
{
    int64_t cur = file_current_length(s);
    int ret;

    if (cur < 0) {
        error_setg_errno(errp, -cur, "Could not get the file size");
        return cur;
    }
    if (prealloc != PREALLOC_MODE_OFF && offset < cur) {
        error_setg(errp, "Cannot use preallocation for shrinking files");
        return -ENOTSUP;
    }
    switch (prealloc) {
    case PREALLOC_MODE_OFF:
        if (ftruncate(s->fd, offset) < 0) {
            ret = -errno;
            error_setg_errno(errp, -ret, "Could not resize file");
            return ret;
        }
        return 0;
    case PREALLOC_MODE_FALLOC:
        if (offset == cur) {
            return 0;
        }
        ret = aio_co_fallocate(s->fd, 0, cur, offset - cur);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not preallocate new data");
            return ret;
        }
        return 0;
    case PREALLOC_MODE_FULL:
        if (ftruncate(s->fd, offset) < 0) {
            ret = -errno;
            error_setg_errno(errp, -ret, "Could not resize file");
            return ret;
        }
        ret = file_write_zero_fill(s, cur, offset);
        if (ret < 0) {
            error_setg_errno(errp, -ret,
                             "Could not write zeros for preallocation");
            return ret;
        }
        return 0;
    default:
        error_setg(errp, "Unsupported preallocation mode: %s",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
}

static int coroutine_fn file_co_truncate(BlockDriverState *bs, int64_t offset,
                                         bool exact, PreallocMode prealloc,
                                         BdrvRequestFlags flags,
                                         GError **errp)
{
    BDRVFileState *s = bs->opaque;
    int ret;

    if (offset < 0) {
        error_setg(errp, "Image size cannot be negative");
        return -EINVAL;
    }
    /* Resizing works from the real end of the data. */
    file_trim_tail(bs);
    ret = file_resize(s, offset, prealloc, errp);
    if (ret == 0) {
        bs->total_bytes = offset;
    }
    return ret;
}

static int64_t coroutine_fn file_co_get_allocated_file_size(
    BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    int64_t size = (int64_t)st.st_blocks * 512;
    /* Space allocated ahead of the data is not the image's yet. */
    if (s->phys_end > bs->total_bytes) {
        size = MAX(0, size - (s->phys_end - bs->total_bytes));
    }
    return size;
}

/* ---- open, limits, close ---- */

/* The smallest O_DIRECT transfer (and buffer alignment) the file takes. */
static void file_probe_alignment(BDRVFileState *s)
{
    static const size_t sizes[] = { 512, 1024, 2048, 4096 };
    void *buf = blk_memalign(8192, 16384);

    s->request_alignment = 4096;
    for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
        if (pread(s->fd, buf, sizes[i], 0) >= 0 || errno != EINVAL) {
            s->request_alignment = sizes[i];
            break;
        }
    }
    s->buf_align = 4096;
    for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
        /* buf + sizes[i] is aligned to sizes[i] but not to 2*sizes[i]. */
        if (pread(s->fd, (char *)buf + sizes[i], s->request_alignment, 0) >=
                0 ||
            errno != EINVAL) {
            s->buf_align = sizes[i];
            break;
        }
    }
    blk_vfree(buf);
}

static bool file_ofd_supported(int fd)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 0,
        .l_type = F_WRLCK,
    };
    return fcntl(fd, F_OFD_GETLK, &fl) == 0;
}

static int coroutine_fn file_open(BlockDriverState *bs,
                                  const BlockdevOptions *opts, GError **errp)
{
    const BlockdevOptionsFile *fo = &opts->u.file;
    BDRVFileState *s = bs->opaque;
    BlockdevAioOptions aio_mode = fo->has_aio ? fo->aio
                                              : BLOCKDEV_AIO_OPTIONS_IO_URING;
    OnOffAuto locking = fo->has_locking ? fo->locking : ON_OFF_AUTO_ON;
    struct stat st;
    int flags;

    s->fd = -1;
    /* Nothing held yet: everything shared, as for a node without users. */
    s->perm = 0;
    s->shared = BLK_PERM_ALL;
    if (!fo->filename[0]) {
        error_setg(errp, "The 'file' block driver requires a file name");
        return -EINVAL;
    }
    if (fo->has_pr_manager) {
        error_setg(errp, "No persistent reservation manager with id '%s'",
                   fo->pr_manager);
        return -EINVAL;
    }
    if (aio_mode == BLOCKDEV_AIO_OPTIONS_NATIVE &&
        !(bs->open_flags & BDRV_O_NOCACHE)) {
        error_setg(errp, "aio=native was specified, but it requires "
                         "cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    s->use_threads = aio_mode == BLOCKDEV_AIO_OPTIONS_THREADS;
    s->o_direct = bs->open_flags & BDRV_O_NOCACHE;
    g_strlcpy(bs->filename, fo->filename, sizeof(bs->filename));

    flags = O_CLOEXEC | (s->o_direct ? O_DIRECT : 0);
    if (bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        flags |= O_RDONLY;
    } else {
        flags |= O_RDWR;
    }
    do {
        s->fd = open(fo->filename, flags);
    } while (s->fd < 0 && errno == EINTR);
    if (s->fd < 0 && (flags & O_RDWR) &&
        (bs->open_flags & BDRV_O_AUTO_RDONLY) &&
        (errno == EACCES || errno == EROFS || errno == EPERM)) {
        /* auto-read-only: settle for what the file allows. */
        flags = (flags & ~O_RDWR) | O_RDONLY;
        s->fd = open(fo->filename, flags);
        if (s->fd >= 0) {
            bs->read_only = true;
            bs->open_flags &= ~BDRV_O_RDWR;
        }
    }
    if (s->fd < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not open '%s'", fo->filename);
        return -err;
    }
    if (fstat(s->fd, &st) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not stat '%s'", fo->filename);
        close(s->fd);
        s->fd = -1;
        return -err;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "'file' driver requires '%s' to be a regular file",
                   fo->filename);
        close(s->fd);
        s->fd = -1;
        return -EINVAL;
    }

    switch (locking) {
    case ON_OFF_AUTO_ON:
        s->use_lock = true;
        break;
    case ON_OFF_AUTO_OFF:
        s->use_lock = false;
        break;
    default:
        s->use_lock = file_ofd_supported(s->fd);
        break;
    }

    if (s->o_direct) {
        file_probe_alignment(s);
    } else {
        s->request_alignment = 1;
        s->buf_align = 1;
    }

    bs->total_bytes = st.st_size;
    s->phys_end = -1;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    return 0;
}

static void file_refresh_limits(BlockDriverState *bs, GError **errp)
{
    BDRVFileState *s = bs->opaque;
    long page = sysconf(_SC_PAGESIZE);

    bs->bl.request_alignment = s->request_alignment;
    bs->bl.min_mem_alignment = s->buf_align;
    bs->bl.opt_mem_alignment = MAX(s->buf_align, page > 0 ? (size_t)page
                                                          : 4096);
}

static void file_close(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    file_trim_tail(bs);
    if (s->fd >= 0) {
        /* Closing the only descriptor of the description drops its
         * locks. */
        close(s->fd);
        s->fd = -1;
    }
}

/* ---- reopen ---- */

/* Give the reopen's new descriptor these lock bytes (none pending: no-op).
 * Errors are logged: the old descriptor still holds every lock until the
 * commit, and after it this one is the node's and relocks as usual. */
static void file_reopen_lock(BlockDriverState *bs, uint64_t perm,
                             uint64_t unshared, bool unlock)
{
    BDRVFileState *s = bs->opaque;
    FileReopenState *rs = s->reopen;
    GError *err = NULL;

    if (!rs || rs->fd < 0 || !file_locks_active(bs)) {
        return;
    }
    if (apply_lock_bytes(rs->fd, &rs->locked_perm, &rs->locked_unshared, perm,
                         unshared, unlock, &err) < 0) {
        warn_report("%s: %s", bs->filename, err->message);
        g_error_free(err);
    }
}

/* The options reopen applies (QEMU's file driver takes these two). */
static const char *const file_reopen_opts[] = {
    "drop-cache", "x-check-cache-dropped", NULL,
};
static const char *const file_mutable_opts[] = {
    "x-check-cache-dropped", NULL,
};

/*
 * A change of read-only or cache.direct needs a descriptor opened the new
 * way: open it now (the old one stays in use until commit); it takes its
 * locks in the permission stage that follows.
 */
static int coroutine_fn file_reopen_prepare(BDRVReopenState *state,
                                            GError **errp)
{
    BlockDriverState *bs = state->bs;
    BDRVFileState *s = bs->opaque;
    const BlockdevOptionsFile *fo = &state->options->u.file;
    bool want_rw = !state->read_only;
    bool want_direct = state->open_flags & BDRV_O_NOCACHE;
    int cur = fcntl(s->fd, F_GETFL);
    struct stat st_old, st_new;

    /* QEMU reads this one back as a string: it never equals the number
     * it was opened with. */
    if (fo->has_aio_max_batch) {
        error_setg(errp, "Cannot change the option 'aio-max-batch'");
        return -EINVAL;
    }
    if (cur >= 0 && ((cur & O_ACCMODE) == O_RDWR) == want_rw &&
        s->o_direct == want_direct) {
        return 0;
    }
    FileReopenState *rs = g_new0(FileReopenState, 1);
    int flags = O_CLOEXEC | (want_direct ? O_DIRECT : 0) |
                (want_rw ? O_RDWR : O_RDONLY);
    do {
        rs->fd = open(bs->filename, flags);
    } while (rs->fd < 0 && errno == EINTR);
    if (rs->fd < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not open '%s'", bs->filename);
        g_free(rs);
        return -err;
    }
    /* The name must still lead to the file the node has open. */
    if (fstat(s->fd, &st_old) < 0 || fstat(rs->fd, &st_new) < 0 ||
        st_old.st_dev != st_new.st_dev || st_old.st_ino != st_new.st_ino) {
        error_setg(errp, "Could not reopen '%s': it is no longer the file "
                         "the node has open",
                   bs->filename);
        close(rs->fd);
        g_free(rs);
        return -ESTALE;
    }
    rs->o_direct = want_direct;
    if (want_direct) {
        BDRVFileState probe = { .fd = rs->fd };
        file_probe_alignment(&probe);
        rs->request_alignment = probe.request_alignment;
        rs->buf_align = probe.buf_align;
    } else {
        rs->request_alignment = 1;
        rs->buf_align = 1;
    }
    s->reopen = rs;
    state->opaque = rs;
    return 0;
}

static void file_reopen_commit(BDRVReopenState *state)
{
    BlockDriverState *bs = state->bs;
    BDRVFileState *s = bs->opaque;
    FileReopenState *rs = state->opaque;

    if (!rs) {
        return;
    }
    /* The new descriptor may be read-only: cut the tail while the old one
     * can. */
    file_trim_tail(bs);
    /* Closing the old descriptor drops its locks; the new one holds them
     * all already. */
    close(s->fd);
    s->fd = rs->fd;
    s->o_direct = rs->o_direct;
    s->request_alignment = rs->request_alignment;
    s->buf_align = rs->buf_align;
    s->locked_perm = rs->locked_perm;
    s->locked_unshared = rs->locked_unshared;
    s->reopen = NULL;
    g_free(rs);
    state->opaque = NULL;
}

static void file_reopen_abort(BDRVReopenState *state)
{
    BDRVFileState *s = state->bs->opaque;
    FileReopenState *rs = state->opaque;

    if (rs) {
        close(rs->fd); /* and its locks with it */
        g_free(rs);
        s->reopen = NULL;
        state->opaque = NULL;
    }
}

/* ---- creation ---- */

typedef struct FileCreateCo {
    const char *filename;
    int64_t size;
    PreallocMode prealloc;
    GError **errp;
    int ret;
} FileCreateCo;

static int coroutine_fn file_create_co(const char *filename, int64_t size,
                                       PreallocMode prealloc, bool nocow,
                                       uint64_t extent_size_hint,
                                       bool explicit_hint, GError **errp)
{
    BDRVFileState s = { .fd = -1, .buf_align = 1, .request_alignment = 1 };
    uint64_t locked_perm = 0, locked_unshared = 0;
    int ret;

    if (size < 0) {
        error_setg(errp, "Image size cannot be negative");
        return -EINVAL;
    }
    if (extent_size_hint > UINT32_MAX) {
        error_setg(errp, "Extent size hint is too large");
        return -EINVAL;
    }
    if (prealloc != PREALLOC_MODE_OFF && prealloc != PREALLOC_MODE_FALLOC &&
        prealloc != PREALLOC_MODE_FULL) {
        /* Before touching an existing file. */
        error_setg(errp, "Unsupported preallocation mode: %s",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
    s.fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s.fd < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not create '%s'", filename);
        return ret;
    }
    /*
     * Lock as a writer that refuses resizes (we promise the size), and
     * make sure nobody else has the image open before destroying its
     * contents.
     */
    ret = apply_lock_bytes(s.fd, &locked_perm, &locked_unshared,
                           BLK_PERM_WRITE | BLK_PERM_RESIZE, BLK_PERM_RESIZE,
                           false, errp);
    if (ret == 0) {
        ret = check_lock_bytes(s.fd, BLK_PERM_WRITE | BLK_PERM_RESIZE,
                               BLK_PERM_ALL & ~BLK_PERM_RESIZE, errp);
    }
    if (ret < 0) {
        goto out;
    }
    ret = file_resize(&s, 0, PREALLOC_MODE_OFF, errp);
    if (ret < 0) {
        goto out;
    }
    if (nocow) {
        /* btrfs: only effective on an empty file; failure is harmless. */
        int attr;
        if (ioctl(s.fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            ioctl(s.fd, FS_IOC_SETFLAGS, &attr);
        }
    }
    if (extent_size_hint) {
        /* XFS allocates in extents of this size; others refuse. */
        struct fsxattr attr;
        int r = ioctl(s.fd, FS_IOC_FSGETXATTR, &attr);
        if (r == 0) {
            attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
            attr.fsx_extsize = extent_size_hint;
            r = ioctl(s.fd, FS_IOC_FSSETXATTR, &attr);
        }
        if (r < 0 && explicit_hint) {
            warn_report("Failed to set extent size hint: %s",
                        g_strerror(errno));
        }
    }
    ret = file_resize(&s, size, prealloc, errp);

out:
    /* Closing drops the locks. */
    if (close(s.fd) < 0 && ret == 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not close the new file");
    }
    return ret;
}

static void coroutine_fn file_create_entry(void *opaque)
{
    FileCreateCo *c = opaque;

    c->ret = file_create_co(c->filename, c->size, c->prealloc, false,
                            1024 * 1024, false, c->errp);
}

int file_create(const char *filename, int64_t size, PreallocMode prealloc,
                GError **errp)
{
    FileCreateCo c = { filename, size, prealloc, errp, -EINPROGRESS };

    if (in_coroutine()) {
        file_create_entry(&c);
    } else {
        coroutine_run_sync(file_create_entry, &c);
    }
    return c.ret;
}

static int coroutine_fn file_co_create(BlockdevCreateOptions *opts,
                                       GError **errp)
{
    BlockdevCreateOptionsFile *fo = &opts->u.file;

    if (fo->size > INT64_MAX) {
        error_setg(errp, "Image size too large");
        return -EINVAL;
    }
    return file_create_co(fo->filename, (int64_t)fo->size,
                          fo->has_preallocation ? fo->preallocation
                                                : PREALLOC_MODE_OFF,
                          fo->has_nocow && fo->nocow,
                          fo->has_extent_size_hint ? fo->extent_size_hint
                                                   : 1024 * 1024,
                          fo->has_extent_size_hint, errp);
}

/* QEMU's file driver answers get_info (so queries show dirty-flag: false)
 * and has "filename" as its one option that decides what it reads (for
 * the json:{...} names of nodes above it).  Added by the block core. */
static int coroutine_fn file_co_get_info(BlockDriverState *bs,
                                         ImageInfo *info, GError **errp)
{
    return 0;
}

static const char *const file_strong_opts[] = { "filename", NULL };

static BlockStatsSpecific *file_get_specific_stats(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;
    return bdrv_acct_file_specific_stats(&s->discard_stats);
}

const BlockDriver bdrv_file = {
    .version = BLOCK_DRIVER_VERSION,
    .strong_opts = file_strong_opts,
    .bdrv_co_get_info = file_co_get_info,
    .bdrv_get_specific_stats = file_get_specific_stats,
    .format_name = "file",
    .driver = BLOCKDEV_DRIVER_FILE,
    .instance_size = sizeof(BDRVFileState),

    .bdrv_open = file_open,
    .bdrv_close = file_close,
    .bdrv_refresh_limits = file_refresh_limits,

    .bdrv_co_preadv = file_co_preadv,
    .bdrv_co_pwritev = file_co_pwritev,
    .bdrv_co_pwrite_zeroes = file_co_pwrite_zeroes,
    .bdrv_co_pdiscard = file_co_pdiscard,
    .bdrv_co_copy_range_from = file_co_copy_range_from,
    .bdrv_co_copy_range_to = file_co_copy_range_to,
    .bdrv_co_flush_to_disk = file_co_flush_to_disk,
    .bdrv_co_block_status = file_co_block_status,
    .bdrv_co_truncate = file_co_truncate,
    .bdrv_co_get_allocated_file_size = file_co_get_allocated_file_size,

    .bdrv_check_perm = file_check_perm,
    .bdrv_set_perm = file_set_perm,
    .bdrv_abort_perm_update = file_abort_perm_update,

    .bdrv_co_create = file_co_create,

    .reopen_opts = file_reopen_opts,
    .mutable_opts = file_mutable_opts,
    .bdrv_reopen_prepare = file_reopen_prepare,
    .bdrv_reopen_commit = file_reopen_commit,
    .bdrv_reopen_abort = file_reopen_abort,
};
