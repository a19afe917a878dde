/*
 * Block jobs: nodes, speed, error policies and the BLOCK_JOB_* events on
 * top of the generic Job.
 */
#include "block/jobs/blockjob.h"

#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "qapi/qapi-events.h"
#include "util/aio.h"
#include "util/error.h"

/* ---- which jobs are block jobs ---- */

static void block_job_free(Job *job);
static const JobListener block_job_listener;

BlockJob *block_job_from_job(Job *job)
{
    return job && job->listener == &block_job_listener ? (BlockJob *)job
                                                        : NULL;
}

BlockJob *block_job_next(BlockJob *bjob)
{
    Job *job = bjob ? &bjob->job : NULL;
    while ((job = job_next(job))) {
        if (block_job_from_job(job)) {
            return (BlockJob *)job;
        }
    }
    return NULL;
}

BlockJob *block_job_get(const char *id)
{
    Job *job = job_get(id);
    return block_job_from_job(job);
}

bool block_job_is_internal(BlockJob *job)
{
    return job_is_internal(&job->job);
}

bool block_job_has_bdrv(BlockJob *job, BlockDriverState *bs)
{
    for (GSList *l = job->nodes; l; l = l->next) {
        BdrvChild *c = l->data;
        if (c->bs == bs) {
            return true;
        }
    }
    return false;
}

BlockJob *block_job_find_by_node(BlockDriverState *bs)
{
    for (BlockJob *job = block_job_next(NULL); job;
         job = block_job_next(job)) {
        if (block_job_has_bdrv(job, bs)) {
            return job;
        }
    }
    return NULL;
}

bool block_job_node_busy(BlockDriverState *bs, GError **errp)
{
    BlockJob *job = block_job_find_by_node(bs);
    if (job) {
        error_setg(errp,
                   "Node '%s' is busy: block device is in use by block job: "
                   "%s",
                   bdrv_get_node_name(bs), job_type_str(&job->job));
        return true;
    }
    return false;
}

/* ---- the job's edges: a drain of any of its nodes pauses the job ---- */

static char *child_job_get_parent_desc(BdrvChild *c)
{
    BlockJob *job = c->opaque;
    return g_strdup_printf("%s job '%s'", job_type_str(&job->job),
                           job->job.id ? job->job.id : "");
}

static void child_job_drained_begin(BdrvChild *c)
{
    BlockJob *job = c->opaque;
    job_pause(&job->job);
}

static void child_job_drained_end(BdrvChild *c)
{
    BlockJob *job = c->opaque;
    job_resume(&job->job);
}

static bool child_job_drained_poll(BdrvChild *c)
{
    BlockJob *bjob = c->opaque;
    Job *job = &bjob->job;

    /* A job that is not busy is paused or will reach a pause point before
     * any of its code runs; a finished one issues nothing. */
    if (!job->busy || job_is_completed(job)) {
        return false;
    }
    if (job->driver->drained_poll) {
        return job->driver->drained_poll(job);
    }
    return true;
}

static const BdrvChildClass child_job = {
    .parent_is_bds = false,
    .parent_is_job = true,
    .get_parent_desc = child_job_get_parent_desc,
    .drained_begin = child_job_drained_begin,
    .drained_end = child_job_drained_end,
    .drained_poll = child_job_drained_poll,
};

int block_job_add_bdrv(BlockJob *job, const char *name, BlockDriverState *bs,
                       uint64_t perm, uint64_t shared_perm, GError **errp)
{
    BdrvChild *c = bdrv_root_attach_child(bs, name, &child_job, 0, perm,
                                          shared_perm, job, errp);
    if (!c) {
        return -EPERM;
    }
    /* QEMU blocks every operation on a job's nodes with "block device is
     * in use by block job: TYPE"; the graph-mod counter is our blocker:
     * blockdev-del and graph changes through this node refuse with that
     * text while the job holds it. */
    bdrv_child_graph_mod_inc(c, job_type_str(&job->job));
    job->nodes = g_slist_prepend(job->nodes, c);
    return 0;
}

void block_job_hold_chain(BlockJob *job, BlockDriverState *top,
                          BlockDriverState *base)
{
    for (BlockDriverState *bs = top; bs && bs != base;) {
        BdrvChild *c = bdrv_filter_or_cow_child(bs);
        if (!c) {
            break;
        }
        bdrv_child_graph_mod_inc(c, job_type_str(&job->job));
        job->held_edges = g_slist_prepend(job->held_edges, c);
        bs = c->bs;
    }
}

void block_job_release_chain(BlockJob *job)
{
    for (GSList *l = job->held_edges; l; l = l->next) {
        bdrv_child_graph_mod_dec(l->data);
    }
    g_slist_free(job->held_edges);
    job->held_edges = NULL;
}

void block_job_remove_all_bdrv(BlockJob *job)
{
    block_job_release_chain(job);
    /* Detach in the order attached; an edge being detached may drain its
     * node, which calls back into this job: unlink first. */
    GSList *nodes = g_slist_reverse(job->nodes);
    job->nodes = NULL;
    for (GSList *l = nodes; l; l = l->next) {
        bdrv_child_graph_mod_dec(l->data);
        bdrv_root_unref_child(l->data);
    }
    g_slist_free(nodes);
}

/* ---- events ---- */

static void block_job_on_pending(Job *job)
{
    if (!job_is_internal(job)) {
        qapi_event_send_block_job_pending(job->driver->job_type, job->id);
    }
}

static void block_job_on_ready(Job *job)
{
    BlockJob *bjob = (BlockJob *)job;
    if (!job_is_internal(job)) {
        qapi_event_send_block_job_ready(
            job->driver->job_type, job->id, job->progress_total,
            job->progress_current, bjob->speed);
    }
}

static void block_job_on_finalized(Job *job, bool cancelled)
{
    BlockJob *bjob = (BlockJob *)job;
    if (job_is_internal(job)) {
        return;
    }
    if (cancelled) {
        qapi_event_send_block_job_cancelled(
            job->driver->job_type, job->id, job->progress_total,
            job->progress_current, bjob->speed);
    } else {
        const char *msg = job->ret < 0 ? job_error_str(job) : NULL;
        qapi_event_send_block_job_completed(
            job->driver->job_type, job->id, job->progress_total,
            job->progress_current, bjob->speed, msg != NULL, msg);
    }
}

static void block_job_user_resume(Job *job)
{
    block_job_iostatus_reset((BlockJob *)job);
}

static const JobListener block_job_listener = {
    .on_user_resume = block_job_user_resume,
    .on_free = block_job_free,
    .on_pending = block_job_on_pending,
    .on_ready = block_job_on_ready,
    .on_finalized = block_job_on_finalized,
};

/* ---- creation ---- */

void *block_job_create(const char *job_id, const BlockJobDriver *driver,
                       JobTxn *txn, BlockDriverState *bs, uint64_t perm,
                       uint64_t shared_perm, int64_t speed, int flags,
                       JobCompletionFunc *cb, void *opaque, GError **errp)
{
    if (speed < 0) {
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
        return NULL;
    }
    BlockJob *job = job_create(job_id, &driver->job_driver, txn, flags, cb,
                               opaque, errp);
    if (!job) {
        return NULL;
    }
    job->job.listener = &block_job_listener;
    job->iostatus = BLOCK_DEVICE_IO_STATUS_OK;
    ratelimit_init(&job->limit);

    /* The job watches its main node without taking anything: pausing on
     * drain is all this edge is for.  Its I/O goes through blk. */
    if (block_job_add_bdrv(job, "main node", bs, 0, BLK_PERM_ALL, errp) < 0) {
        goto fail;
    }
    job->blk = blk_new(perm, shared_perm);
    if (blk_insert_bs(job->blk, bs, errp) < 0) {
        goto fail;
    }
    /* The job's own requests must not wait for a drain the job itself is
     * paused for. */
    blk_set_disable_request_queuing(job->blk, true);

    if (!block_job_set_speed(job, speed, errp)) {
        goto fail;
    }
    return job;

fail:
    job_early_fail(&job->job);
    return NULL;
}

/* The last reference to the job is going (after the driver's free). */
static void block_job_free(Job *job)
{
    BlockJob *bjob = (BlockJob *)job;
    block_job_remove_all_bdrv(bjob);
    if (bjob->blk) {
        blk_unref(bjob->blk);
        bjob->blk = NULL;
    }
}

/* ---- speed ---- */

bool block_job_set_speed(BlockJob *job, int64_t speed, GError **errp)
{
    const BlockJobDriver *drv = (const BlockJobDriver *)job->job.driver;
    int64_t old_speed = job->speed;

    if (job_apply_verb(&job->job, JOB_VERB_SET_SPEED, errp) < 0) {
        return false;
    }
    if (speed < 0) {
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
        return false;
    }
    ratelimit_set_speed(&job->limit, (uint64_t)speed, BLOCK_JOB_SLICE_TIME_NS);
    job->speed = speed;
    if (drv->set_speed) {
        drv->set_speed(job, speed);
    }
    if (speed && speed <= old_speed) {
        return true;
    }
    /* Faster (or unlimited) now: cut a rate-limit sleep short. */
    if (job->job.sleep.timer_id) {
        job_enter(&job->job);
    }
    return true;
}

void block_job_ratelimit_processed_bytes(BlockJob *job, uint64_t n)
{
    ratelimit_account(&job->limit, n, clock_ns());
}

void coroutine_fn block_job_ratelimit_sleep(BlockJob *job)
{
    int64_t delay;

    /* Loop: a pause or a speed change may wake the sleep early. */
    do {
        delay = ratelimit_delay(&job->limit, clock_ns());
        job_sleep_ns(&job->job, delay);
    } while (delay > 0 && !job_is_cancelled(&job->job) &&
             ratelimit_delay(&job->limit, clock_ns()) > 0);
}

/* ---- errors ---- */

void block_job_iostatus_reset(BlockJob *job)
{
    if (job->iostatus == BLOCK_DEVICE_IO_STATUS_OK) {
        return;
    }
    job->iostatus = BLOCK_DEVICE_IO_STATUS_OK;
}

BlockErrorAction block_job_error_action(BlockJob *job, BlockdevOnError on_err,
                                        bool is_read, int error)
{
    BlockErrorAction action;

    switch (on_err) {
    case BLOCKDEV_ON_ERROR_ENOSPC:
    case BLOCKDEV_ON_ERROR_AUTO:
        action = error == ENOSPC ? BLOCK_ERROR_ACTION_STOP
                                 : BLOCK_ERROR_ACTION_REPORT;
        break;
    case BLOCKDEV_ON_ERROR_STOP:
        action = BLOCK_ERROR_ACTION_STOP;
        break;
    case BLOCKDEV_ON_ERROR_REPORT:
        action = BLOCK_ERROR_ACTION_REPORT;
        break;
    case BLOCKDEV_ON_ERROR_IGNORE:
    default:
        action = BLOCK_ERROR_ACTION_IGNORE;
        break;
    }
    if (!job_is_internal(&job->job)) {
        qapi_event_send_block_job_error(
            job->job.id, is_read ? IO_OPERATION_TYPE_READ
                                 : IO_OPERATION_TYPE_WRITE,
            action);
    }
    if (action == BLOCK_ERROR_ACTION_STOP) {
        if (!job->job.user_paused) {
            /* Stopped as if by the user: job-resume goes on (and resets
             * io-status through the driver's user_resume). */
            job->job.user_paused = true;
            job_pause(&job->job);
        }
        if (job->iostatus == BLOCK_DEVICE_IO_STATUS_OK) {
            job->iostatus = error == ENOSPC ? BLOCK_DEVICE_IO_STATUS_NOSPACE
                                            : BLOCK_DEVICE_IO_STATUS_FAILED;
        }
    }
    return action;
}

/* ---- query ---- */

BlockJobInfo *block_job_query(BlockJob *job, GError **errp)
{
    if (block_job_is_internal(job)) {
        error_setg(errp, "Cannot query QEMU internal jobs");
        return NULL;
    }
    BlockJobInfo *info = g_new0(BlockJobInfo, 1);
    Job *j = &job->job;
    info->type = g_strdup(job_type_str(j));
    info->device = g_strdup(j->id);
    info->len = j->progress_total;
    info->offset = j->progress_current;
    info->busy = j->busy;
    info->paused = j->pause_count > 0;
    info->speed = job->speed;
    info->io_status = job->iostatus;
    info->ready = job_is_ready(j);
    info->status = j->status;
    info->auto_finalize = j->auto_finalize;
    info->auto_dismiss = j->auto_dismiss;
    const char *err = job_error_str(j);
    if (err) {
        info->has_error = true;
        info->error = g_strdup(err);
    }
    return info;
}
