/*
 * QMP commands for jobs: the generic job-* verbs and queries, and the
 * block-job-* forms, with qemu-storage-daemon 7.2's lookups and messages
 * (an unknown id is GenericError "Job not found" for job-*, and
 * DeviceNotActive "Block job 'x' not found" for block-job-*).
 */
#include <string.h>

#include "block/jobs/blockjob.h"
#include "block/jobs/job.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

static Job *find_job(const char *id, GError **errp)
{
    Job *job = job_get(id);
    if (!job) {
        error_setg(errp, "Job not found");
    }
    return job;
}

static BlockJob *find_block_job(const char *id, GError **errp)
{
    BlockJob *job = block_job_get(id);
    if (!job) {
        error_set(errp, ERROR_CLASS_DEVICE_NOT_ACTIVE,
                  "Block job '%s' not found", id);
    }
    return job;
}

/* ---- job-* ---- */

void qmp_job_pause(q_obj_job_pause_arg *arg, GError **errp)
{
    Job *job = find_job(arg->id, errp);
    if (job) {
        job_user_pause(job, errp);
    }
}

void qmp_job_resume(q_obj_job_resume_arg *arg, GError **errp)
{
    Job *job = find_job(arg->id, errp);
    if (job) {
        job_user_resume(job, errp);
    }
}

void qmp_job_cancel(q_obj_job_cancel_arg *arg, GError **errp)
{
    Job *job = find_job(arg->id, errp);
    if (job) {
        /* job-cancel always forces: a ready mirror is not completed. */
        job_user_cancel(job, true, errp);
    }
}

void qmp_job_complete(q_obj_job_complete_arg *arg, GError **errp)
{
    Job *job = find_job(arg->id, errp);
    if (job) {
        job_complete(job, errp);
    }
}

void qmp_job_finalize(q_obj_job_finalize_arg *arg, GError **errp)
{
    Job *job = find_job(arg->id, errp);
    if (job) {
        /* Finalizing may dismiss it. */
        job_ref(job);
        job_finalize(job, errp);
        job_unref(job);
    }
}

void qmp_job_dismiss(q_obj_job_dismiss_arg *arg, GError **errp)
{
    Job *job = find_job(arg->id, errp);
    if (job) {
        job_dismiss(&job, errp);
    }
}

JobInfoList *qmp_query_jobs(GError **errp)
{
    JobInfoList *head = NULL, **tail = &head;

    for (Job *job = job_next(NULL); job; job = job_next(job)) {
        if (job_is_internal(job)) {
            continue;
        }
        JobInfo *info = g_new0(JobInfo, 1);
        info->id = g_strdup(job->id);
        info->type = job->driver->job_type;
        info->status = job->status;
        info->current_progress = job->progress_current;
        info->total_progress = job->progress_total;
        const char *err = job_error_str(job);
        if (err) {
            info->has_error = true;
            info->error = g_strdup(err);
        }
        QAPI_LIST_APPEND(tail, info);
    }
    return head;
}

/* ---- block-job-* ---- */

BlockJobInfoList *qmp_query_block_jobs(GError **errp)
{
    BlockJobInfoList *head = NULL, **tail = &head;

    for (BlockJob *job = block_job_next(NULL); job;
         job = block_job_next(job)) {
        if (block_job_is_internal(job)) {
            continue;
        }
        BlockJobInfo *info = block_job_query(job, errp);
        if (!info) {
            qapi_free_BlockJobInfoList(head);
            return NULL;
        }
        QAPI_LIST_APPEND(tail, info);
    }
    return head;
}

void qmp_block_job_set_speed(q_obj_block_job_set_speed_arg *arg,
                             GError **errp)
{
    BlockJob *job = find_block_job(arg->device, errp);
    if (job) {
        block_job_set_speed(job, arg->speed, errp);
    }
}

void qmp_block_job_cancel(q_obj_block_job_cancel_arg *arg, GError **errp)
{
    BlockJob *job = find_block_job(arg->device, errp);
    bool force = arg->has_force && arg->force;

    if (!job) {
        return;
    }
    if (job_user_paused(&job->job) && !force) {
        error_setg(errp, "The block job for device '%s' is currently paused",
                   arg->device);
        return;
    }
    job_user_cancel(&job->job, force, errp);
}

void qmp_block_job_pause(q_obj_block_job_pause_arg *arg, GError **errp)
{
    BlockJob *job = find_block_job(arg->device, errp);
    if (job) {
        job_user_pause(&job->job, errp);
    }
}

void qmp_block_job_resume(q_obj_block_job_resume_arg *arg, GError **errp)
{
    BlockJob *job = find_block_job(arg->device, errp);
    if (job) {
        job_user_resume(&job->job, errp);
    }
}

void qmp_block_job_complete(q_obj_block_job_complete_arg *arg, GError **errp)
{
    BlockJob *job = find_block_job(arg->device, errp);
    if (job) {
        job_complete(&job->job, errp);
    }
}

void qmp_block_job_finalize(q_obj_block_job_finalize_arg *arg, GError **errp)
{
    BlockJob *job = find_block_job(arg->id, errp);
    if (job) {
        job_ref(&job->job);
        job_finalize(&job->job, errp);
        job_unref(&job->job);
    }
}

void qmp_block_job_dismiss(q_obj_block_job_dismiss_arg *arg, GError **errp)
{
    BlockJob *bjob = find_block_job(arg->id, errp);
    if (bjob) {
        Job *job = &bjob->job;
        job_dismiss(&job, errp);
    }
}
