/*
 * drive-backup as a transaction action (block/qmp-drive-jobs.c): the
 * target image is created and opened, then a backup job is created (not
 * started); commit starts it, abort drops it and with it the target node
 * (the new image file stays, as in QEMU).
 */
#ifndef BLOCK_QMP_DRIVE_JOBS_H
#define BLOCK_QMP_DRIVE_JOBS_H

#include "block/block.h"
#include "block/jobs/job.h"
#include "qapi/qapi-types.h"
#include "util/transaction.h"

int coroutine_fn qmp_drive_backup_action(const DriveBackup *arg, JobTxn *txn,
                                         Transaction *tran, GError **errp);

#endif
