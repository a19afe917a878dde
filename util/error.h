/*
 * Errors: GError with one domain whose codes are QMP's error classes.
 *
 * Every fallible call takes `GError **errp` last.  The error code is the
 * QMP error class a client will see; most errors are GenericError.
 */
#ifndef UTIL_ERROR_H
#define UTIL_ERROR_H

#include <glib.h>
#include <stdbool.h>

/* The QMP error classes, in the order of QEMU's QapiErrorClass. */
typedef enum ErrorClass {
    ERROR_CLASS_GENERIC_ERROR,
    ERROR_CLASS_COMMAND_NOT_FOUND,
    ERROR_CLASS_DEVICE_NOT_ACTIVE,
    ERROR_CLASS_DEVICE_NOT_FOUND,
    ERROR_CLASS_KVM_MISSING_CAP,
    ERROR_CLASS__MAX,
} ErrorClass;

#define BLOCKD_ERROR (blockd_error_quark())
GQuark blockd_error_quark(void);

/* "GenericError", "CommandNotFound", ... ; "GenericError" for foreign domains */
const char *error_class_name(const GError *err);

/* Set *errp (if errp is non-NULL) to a new GenericError. */
void error_setg(GError **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Same, with an explicit class. */
void error_set(GError **errp, ErrorClass cls, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
/* GenericError whose message ends in ": strerror(os_errno)". */
void error_setg_errno(GError **errp, int os_errno, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
/* Prefix an existing error's message (no-op when errp or *errp is NULL). */
void error_prepend(GError **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Move local_err into *errp (frees it when errp is NULL). */
void error_propagate(GError **errp, GError *local_err);

/* Print "blockd: <message>" to stderr. */
void error_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void warn_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

#endif
