/*
 * blockdev-mirror and active commit: one engine (mirror.c).
 *
 * A hidden `mirror_top` filter is inserted above the source for the job's
 * lifetime.  It records every guest write in a dirty bitmap (or, with
 * copy-mode write-blocking once the job is ready, writes it to the target
 * too).  The job copies whatever is dirty until nothing is, emits
 * BLOCK_JOB_READY, and keeps the target in sync until job-complete
 * (parents of the source, or of `replaces`, move to the target) or
 * job-cancel (nothing in the graph changes but the filter going away).
 *
 * Active commit is the same job with the target being `base` (a node of
 * the source's own backing chain) and job type "commit".
 */
#ifndef BLOCK_JOBS_MIRROR_H
#define BLOCK_JOBS_MIRROR_H

#include "block/jobs/blockjob.h"

/*
 * Active commit (block-commit whose top is the active layer `bs`): mirror
 * bs and every layer above `base` into base.  Creates and starts the job
 * (type "commit").  On job-complete every parent of bs uses base instead,
 * dropping the intermediate layers; a cancel while ready leaves the
 * original chain as it was.  `creation_flags` are JobCreateFlags.
 * Checks and messages as qemu-storage-daemon 7.2's active commit (the
 * caller has already made block-commit's own checks: base is below bs,
 * etc.).  Returns the (started) job, or NULL with *errp set and nothing
 * left behind.  Coroutine context (a QMP handler): it asks the target's
 * cluster size and changes the graph.
 */
BlockJob *coroutine_fn mirror_start_active_commit(const char *job_id, BlockDriverState *bs,
                                     BlockDriverState *base,
                                     int creation_flags, int64_t speed,
                                     BlockdevOnError on_error,
                                     const char *filter_node_name,
                                     bool auto_finalize, bool auto_dismiss,
                                     GError **errp);

/*
 * What happens to the target's backing chain when the job ends without
 * failing (QEMU's BlockMirrorBackingMode): blockdev-mirror leaves it;
 * drive-mirror with mode=absolute-paths gives the target the source's
 * backing node (sync=top; the source itself for sync=none), as its new
 * image names it.  (QEMU's third mode, opening the backing file a
 * mode=existing target names only at the end, is not here: drive-mirror
 * opens such a target with its backing chain.)
 */
typedef enum MirrorBackingMode {
    MIRROR_LEAVE_BACKING_CHAIN,
    MIRROR_SOURCE_BACKING_CHAIN,
} MirrorBackingMode;

/*
 * blockdev-mirror's checks and job start with the target node given
 * (arg->target is ignored): drive-mirror opens its target itself.
 */
void coroutine_fn mirror_start_qmp(q_obj_blockdev_mirror_arg *arg,
                                   BlockDriverState *target,
                                   MirrorBackingMode backing_mode,
                                   GError **errp);

#endif
