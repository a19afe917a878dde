/* Placeholder until its owner lands the real implementation (session 2). */
#include "qapi/qapi-commands.h"
#include "util/error.h"

void qmp_block_commit(q_obj_block_commit_arg *arg, GError **errp)
{
    (void)arg;
    error_setg(errp, "block-commit is not implemented yet");
}
