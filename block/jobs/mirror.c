/* Placeholder until its owner lands the real implementation (session 2). */
#include "qapi/qapi-commands.h"
#include "util/error.h"

void qmp_blockdev_mirror(q_obj_blockdev_mirror_arg *arg, GError **errp)
{
    (void)arg;
    error_setg(errp, "blockdev-mirror is not implemented yet");
}
