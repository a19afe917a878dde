/*
 * aio-bench: random reads through aio_co_preadv from `depth` coroutines,
 * to compare with `fio --ioengine=io_uring` at the same depth.
 *
 *   aio-bench FILE [depth=32] [seconds=3] [bs=4096] [direct=1]
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/aio.h"
#include "util/iov.h"

static int fd;
static int64_t file_blocks;
static size_t bsize;
static int64_t deadline;
static uint64_t ops;
static unsigned running;

static void coroutine_fn worker(void *opaque)
{
    GRand *rnd = g_rand_new_with_seed(GPOINTER_TO_UINT(opaque));
    void *buf = blk_memalign(4096, bsize);
    struct iovec iov = { buf, bsize };

    while (clock_ns() < deadline) {
        int64_t off = (int64_t)g_rand_int_range(rnd, 0, file_blocks) * bsize;
        if (aio_co_preadv(fd, &iov, 1, off) != (int64_t)bsize) {
            fprintf(stderr, "read failed\n");
            exit(1);
        }
        ops++;
    }
    blk_vfree(buf);
    g_rand_free(rnd);
    running--;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [depth] [seconds] [bs] [direct]\n",
                argv[0]);
        return 1;
    }
    unsigned depth = argc > 2 ? atoi(argv[2]) : 32;
    int secs = argc > 3 ? atoi(argv[3]) : 3;
    bsize = argc > 4 ? atoi(argv[4]) : 4096;
    int direct = argc > 5 ? atoi(argv[5]) : 1;
    struct stat st;

    fd = open(argv[1], O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < (off_t)bsize) {
        perror(argv[1]);
        return 1;
    }
    file_blocks = st.st_size / bsize;
    if (!aio_init(NULL)) {
        return 1;
    }
    AioStats a, b;
    aio_get_stats(&a);
    int64_t start = clock_ns();
    deadline = start + (int64_t)secs * 1000000000;
    running = depth;
    for (unsigned i = 0; i < depth; i++) {
        coroutine_enter(coroutine_create(worker, GUINT_TO_POINTER(i + 1)));
    }
    AIO_WAIT_WHILE(running > 0);
    double el = (clock_ns() - start) / 1e9;
    aio_get_stats(&b);
    printf("depth %u bs %zu: %.0f IOPS, %.1f MiB/s, %.2f SQEs per submit\n",
           depth, bsize, ops / el, ops * bsize / el / 1048576,
           (double)(b.submitted - a.submitted) /
               (double)MAX(1, b.submit_calls - a.submit_calls));
    return 0;
}
