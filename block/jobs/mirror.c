/* Placeholder until its owner lands the real implementation (session 2). */
#include "qapi/qapi-commands.h"
#include "util/error.h"

void qmp_blockdev_mirror(q_obj_blockdev_mirror_arg *arg, GError **errp)
{
    (void)arg;
    error_setg(errp, "blockdev-mirror is not implemented yet");
}

#include "block/jobs/mirror.h"

BlockJob *mirror_start_active_commit(const char *job_id, BlockDriverState *bs,
                                     BlockDriverState *base,
                                     int creation_flags, int64_t speed,
                                     BlockdevOnError on_error,
                                     const char *filter_node_name,
                                     bool auto_finalize, bool auto_dismiss,
                                     GError **errp)
{
    (void)job_id; (void)bs; (void)base; (void)creation_flags; (void)speed;
    (void)on_error; (void)filter_node_name; (void)auto_finalize;
    (void)auto_dismiss;
    error_setg(errp, "active commit is not implemented yet");
    return NULL;
}
