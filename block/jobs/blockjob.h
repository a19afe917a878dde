/*
 * Block jobs: a Job that works on nodes (backup, commit, stream, mirror).
 *
 * A BlockJob adds to Job: the device (the node it was started on) with a
 * BlockBackend for its I/O, the other nodes it involves (each attached as
 * an edge whose drain pauses the job, and through which "which job uses
 * this node" is answered), a speed with a rate limiter, the on-error
 * policies with io-status, and the BLOCK_JOB_* events.  A driver embeds
 * BlockJob first in its own struct and provides a BlockJobDriver.
 */
#ifndef BLOCK_JOBS_BLOCKJOB_H
#define BLOCK_JOBS_BLOCKJOB_H

#include "block/block.h"
#include "block/jobs/job.h"
#include "util/ratelimit.h"

typedef struct BlockJob BlockJob;

typedef struct BlockJobDriver {
    JobDriver job_driver; /* first: a BlockJobDriver is a JobDriver */
    /* block-job-set-speed changed the speed (already in job->speed). */
    void (*set_speed)(BlockJob *job, int64_t speed);
} BlockJobDriver;

/* Slice of the rate limiter: up to speed * 100 ms may go at once. */
#define BLOCK_JOB_SLICE_TIME_NS (100 * 1000 * 1000LL)

struct BlockJob {
    Job job;
    BlockBackend *blk; /* the job's own user of the device node */
    int64_t speed;
    RateLimit limit;
    BlockDeviceIoStatus iostatus;
    GSList *nodes; /* BdrvChild *: every node the job involves */
    GSList *held_edges; /* BdrvChild *: chain edges whose graph-mod
                         * counter the job raised (block_job_hold_chain) */
};

/*
 * Create a block job on `bs` (not started): a BlockBackend with `perm` /
 * `shared_perm` on bs, bs recorded as the job's main node, the speed set.
 * flags are JobCreateFlags.  The BlockBackend's permission conflicts name
 * "block job 'ID'".
 */
void *block_job_create(const char *job_id, const BlockJobDriver *driver,
                       JobTxn *txn, BlockDriverState *bs, uint64_t perm,
                       uint64_t shared_perm, int64_t speed, int flags,
                       JobCompletionFunc *cb, void *opaque, GError **errp);

/* Record another node the job involves, with the permissions the job
 * takes on it (0 / BLK_PERM_ALL for "just watching").  Draining it pauses
 * the job. */
int block_job_add_bdrv(BlockJob *job, const char *name, BlockDriverState *bs,
                       uint64_t perm, uint64_t shared_perm, GError **errp);
/*
 * Graph safety for jobs that work on a backing chain (commit, stream,
 * mirror): raise the graph-mod counter on every edge from `top` down
 * through filtered/COW children to `base` (the edge whose child is base
 * included; base == NULL: to the bottom of the chain), so blockdev-del,
 * blockdev-reopen of `backing`, blockdev-snapshot and other jobs that would
 * detach or replace one of them fail naming this job.  The job releases
 * them (block_job_release_chain) just before its own completion changes
 * the graph, and block_job_remove_all_bdrv releases what is left.
 */
void block_job_hold_chain(BlockJob *job, BlockDriverState *top,
                          BlockDriverState *base);
void block_job_release_chain(BlockJob *job);

/* Drop every node but keep the job (before graph changes at the end). */
void block_job_remove_all_bdrv(BlockJob *job);
bool block_job_has_bdrv(BlockJob *job, BlockDriverState *bs);

/* The (non-internal) block job with this id, or NULL. */
BlockJob *block_job_get(const char *id);
/* Iterate block jobs (internal ones too): NULL to start. */
BlockJob *block_job_next(BlockJob *job);
/* Is `job` a block job?  NULL if not. */
BlockJob *block_job_from_job(Job *job);
/* The first block job that involves bs (for blockdev-del etc. to refuse
 * naming it), or NULL. */
BlockJob *block_job_find_by_node(BlockDriverState *bs);
/* QEMU's op blocker for the graph-changing commands (commit, mirror,
 * backup): true with "Node '...' is busy: block device is in use by block
 * job: TYPE" when a block job uses bs. */
bool block_job_node_busy(BlockDriverState *bs, GError **errp);
bool block_job_is_internal(BlockJob *job);

/* block-job-set-speed: verb check, "Parameter 'speed' expects a
 * non-negative value", then the new rate (waking a sleeping job if the
 * rate went up). */
bool block_job_set_speed(BlockJob *job, int64_t speed, GError **errp);

/* Rate limiting, in the job's coroutine: account bytes processed, then
 * sleep as long as the speed asks (a pause point). */
void block_job_ratelimit_processed_bytes(BlockJob *job, uint64_t n);
void coroutine_fn block_job_ratelimit_sleep(BlockJob *job);

/*
 * An I/O error `error` (positive errno) in the job: what the policy says
 * to do, with io-status and BLOCK_JOB_ERROR.  stop pauses the job (as a
 * user pause; job-resume resets io-status); enospc stops on ENOSPC and
 * reports otherwise; auto behaves as report for jobs.
 */
BlockErrorAction block_job_error_action(BlockJob *job, BlockdevOnError on_err,
                                        bool is_read, int error);
void block_job_iostatus_reset(BlockJob *job);

/* query-block-jobs entry. */
BlockJobInfo *block_job_query(BlockJob *job, GError **errp);

#endif
