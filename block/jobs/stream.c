/* Placeholder until its owner lands the real implementation (session 2). */
#include "qapi/qapi-commands.h"
#include "util/error.h"

void qmp_block_stream(q_obj_block_stream_arg *arg, GError **errp)
{
    (void)arg;
    error_setg(errp, "block-stream is not implemented yet");
}
