/*
 * blockdev-create: a job (type "create", manual dismiss as in QEMU) that
 * runs the driver's bdrv_co_create in its coroutine.  Progress goes from
 * 0/1 to 1/1.
 */
#include "block/block_int.h"
#include "block/jobs/job.h"
#include "qapi/qapi-commands.h"
#include "util/error.h"

typedef struct BlockdevCreateJob {
    Job common;
    const BlockDriver *drv;
    BlockdevCreateOptions *opts;
} BlockdevCreateJob;

static int coroutine_fn blockdev_create_run(Job *job, GError **errp)
{
    BlockdevCreateJob *s = (BlockdevCreateJob *)job;
    int ret;

    job_progress_set_remaining(job, 1);
    ret = s->drv->bdrv_co_create(s->opts, errp);
    job_progress_update(job, 1);
    qapi_free_BlockdevCreateOptions(s->opts);
    s->opts = NULL;
    return ret;
}

static void blockdev_create_free(Job *job)
{
    BlockdevCreateJob *s = (BlockdevCreateJob *)job;
    qapi_free_BlockdevCreateOptions(s->opts);
    s->opts = NULL;
}

static const JobDriver blockdev_create_job_driver = {
    .instance_size = sizeof(BlockdevCreateJob),
    .job_type = JOB_TYPE_CREATE,
    .run = blockdev_create_run,
    .free = blockdev_create_free,
};

void qmp_blockdev_create(q_obj_blockdev_create_arg *arg, GError **errp)
{
    BlockdevCreateOptions *options = arg->options;
    const BlockDriver *drv = bdrv_find_driver(options->driver);

    if (!drv) {
        error_setg(errp, "Block driver '%s' not found or not supported",
                   BlockdevDriver_str(options->driver));
        return;
    }
    if (!drv->bdrv_co_create) {
        error_setg(errp, "Driver does not support blockdev-create");
        return;
    }
    BlockdevCreateJob *s = job_create(arg->job_id, &blockdev_create_job_driver,
                                      NULL, JOB_DEFAULT | JOB_MANUAL_DISMISS,
                                      NULL, NULL, errp);
    if (!s) {
        return;
    }
    s->drv = drv;
    s->opts = qapi_BlockdevCreateOptions_clone(options);
    job_start(&s->common);
}
