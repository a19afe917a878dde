/*
 * An in-memory test format for the job and filter unit tests (test-cor,
 * test-mirror): registered in the qcow2 slot, 16 clusters of 64 KiB with
 * an allocation flag each over a null-co file, an optional backing child
 * named by node-name, and one gate shared by all its nodes that holds
 * reads of the backing file or writes in the driver (per node, by flag)
 * until the test opens it.  Requests that must meet in a window the
 * block layer would otherwise close at once are made to wait there.
 */
#ifndef TESTS_UNIT_TEST_MEMFMT_H
#define TESTS_UNIT_TEST_MEMFMT_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block_int.h"

#define TEST_MEM_CS (64 * 1024)
#define TEST_MEM_NCL 16
#define TEST_MEM_SIZE ((int64_t)TEST_MEM_CS * TEST_MEM_NCL)

typedef struct TestMemFmt {
    uint8_t mem[TEST_MEM_SIZE];
    bool alloc[TEST_MEM_NCL];
    int data_writes, zero_writes; /* requests that reached the driver */
    bool gate_backing_reads;      /* hold reads that go to the backing file */
    bool gate_writes;             /* hold writes before they land */
} TestMemFmt;

/* The driver (bdrv_register_test_driver it in main). */
extern const BlockDriver test_memfmt_driver;

/* A node `name` of test_memfmt over a null-co file, with the node
 * `backing` (NULL: none) as its backing child; owned by the monitor. */
BlockDriverState *test_memfmt_open(const char *name, const char *backing);
/* The node's state. */
TestMemFmt *test_memfmt(BlockDriverState *bs);
/* Clusters [first, first+n) of bs hold byte v (allocated). */
void test_memfmt_fill(BlockDriverState *bs, int first, int n, uint8_t v);

/* The gate: open with no waiters (each test's set-up), close, open
 * (waking the waiters), and how many requests wait at it. */
void test_gate_reset(void);
void test_gate_close(void);
void test_gate_open(void);
int test_gate_waiting(void);

/* The part of a test format's open that test-memfmt and test-graph-mod
 * share: the `file` child from the qcow2 options, and `backing` when it
 * names a node (all these tests use).  0 or -EINVAL with *errp set. */
int coroutine_fn test_fmt_open_children(BlockDriverState *bs,
                                        const BlockdevOptions *opts,
                                        GError **errp);

#endif
