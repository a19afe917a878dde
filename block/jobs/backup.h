/*
 * blockdev-backup: a job that copies the source, as it was when the job
 * started, to the target.  A copy-before-write filter is inserted above the
 * source for the job's lifetime; its copier (block-copy) is shared by the
 * job's background copy and the filter's copies before guest writes.
 */
#ifndef BLOCK_JOBS_BACKUP_H
#define BLOCK_JOBS_BACKUP_H

#include "block/jobs/blockjob.h"

/*
 * Check the QMP arguments, freeze the sync bitmap (successor), insert the
 * filter and create the job (not started), in `txn` (NULL: its own).
 * Nothing is left behind on failure.
 */
BlockJob *coroutine_fn backup_job_create_qmp(const BlockdevBackup *arg,
                                             JobTxn *txn, GError **errp);
/* Undo a job from backup_job_create_qmp that was never started
 * (transaction abort): bitmap reclaimed, filter removed, job dropped. */
void backup_job_discard_unstarted(BlockJob *job);

/* After job_start() of jobs created in a drained section, before the
 * drain ends: let them reach their first pause point (as QEMU, whose
 * jobs pause there and resume when the drain ends). */
void coroutine_fn backup_let_jobs_start(void);

#endif
