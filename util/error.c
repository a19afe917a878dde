/*
 * Error helpers over GError.  The domain's codes are QMP error classes so
 * the monitor can report {"class": ..., "desc": ...} straight from a GError.
 *
 * Setting an error where one is already set keeps the first one: it is the
 * root cause, and GLib would only warn about the overwrite.
 */
#include "util/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

G_DEFINE_QUARK(blockd-error-quark, blockd_error)

static const char *const class_names[ERROR_CLASS__MAX] = {
    [ERROR_CLASS_GENERIC_ERROR] = "GenericError",
    [ERROR_CLASS_COMMAND_NOT_FOUND] = "CommandNotFound",
    [ERROR_CLASS_DEVICE_NOT_ACTIVE] = "DeviceNotActive",
    [ERROR_CLASS_DEVICE_NOT_FOUND] = "DeviceNotFound",
    [ERROR_CLASS_KVM_MISSING_CAP] = "KVMMissingCap",
};

const char *error_class_name(const GError *err)
{
    if (!err || err->domain != BLOCKD_ERROR || err->code < 0 ||
        err->code >= ERROR_CLASS__MAX) {
        return class_names[ERROR_CLASS_GENERIC_ERROR];
    }
    return class_names[err->code];
}

static void error_vset(GError **errp, ErrorClass cls, const char *suffix,
                       const char *fmt, va_list ap)
{
    char *msg;

    if (!errp || *errp) {
        return;
    }
    msg = g_strdup_vprintf(fmt, ap);
    if (suffix) {
        char *full = g_strconcat(msg, ": ", suffix, NULL);

        g_free(msg);
        msg = full;
    }
    *errp = g_error_new_literal(BLOCKD_ERROR, cls, msg);
    g_free(msg);
}

void error_setg(GError **errp, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    error_vset(errp, ERROR_CLASS_GENERIC_ERROR, NULL, fmt, ap);
    va_end(ap);
}

void error_set(GError **errp, ErrorClass cls, const char *fmt, ...)
{
    va_list ap;

    if (cls < 0 || cls >= ERROR_CLASS__MAX) {
        cls = ERROR_CLASS_GENERIC_ERROR;
    }
    va_start(ap, fmt);
    error_vset(errp, cls, NULL, fmt, ap);
    va_end(ap);
}

void error_setg_errno(GError **errp, int os_errno, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    error_vset(errp, ERROR_CLASS_GENERIC_ERROR, g_strerror(os_errno), fmt,
               ap);
    va_end(ap);
}

void error_prepend(GError **errp, const char *fmt, ...)
{
    va_list ap;
    char *prefix;
    char *msg;

    if (!errp || !*errp) {
        return;
    }
    va_start(ap, fmt);
    prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    msg = g_strconcat(prefix, (*errp)->message, NULL);
    g_free((*errp)->message);
    (*errp)->message = msg;
    g_free(prefix);
}

void error_propagate(GError **errp, GError *local_err)
{
    if (!local_err) {
        return;
    }
    if (errp && !*errp) {
        *errp = local_err;
    } else {
        g_error_free(local_err);
    }
}

static void report_v(const char *prefix, const char *fmt, va_list ap)
{
    char *msg = g_strdup_vprintf(fmt, ap);

    fprintf(stderr, "blockd: %s%s\n", prefix, msg);
    fflush(stderr);
    g_free(msg);
}

void error_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    report_v("", fmt, ap);
    va_end(ap);
}

void warn_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    report_v("warning: ", fmt, ap);
    va_end(ap);
}
