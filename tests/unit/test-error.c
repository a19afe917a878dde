/*
 * Unit tests for util/error.c.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/error.h"

static void test_setg(void **state)
{
    GError *err = NULL;

    error_setg(&err, "node '%s' not found", "drive0");
    assert_non_null(err);
    assert_true(err->domain == BLOCKD_ERROR);
    assert_int_equal(err->code, ERROR_CLASS_GENERIC_ERROR);
    assert_string_equal(err->message, "node 'drive0' not found");
    assert_string_equal(error_class_name(err), "GenericError");

    /* A second error does not replace the first (the root cause). */
    error_setg(&err, "later");
    assert_string_equal(err->message, "node 'drive0' not found");
    g_error_free(err);

    /* NULL errp: ignored. */
    error_setg(NULL, "nobody listens");
}

static void test_classes(void **state)
{
    static const struct {
        ErrorClass cls;
        const char *name;
    } classes[] = {
        { ERROR_CLASS_GENERIC_ERROR, "GenericError" },
        { ERROR_CLASS_COMMAND_NOT_FOUND, "CommandNotFound" },
        { ERROR_CLASS_DEVICE_NOT_ACTIVE, "DeviceNotActive" },
        { ERROR_CLASS_DEVICE_NOT_FOUND, "DeviceNotFound" },
        { ERROR_CLASS_KVM_MISSING_CAP, "KVMMissingCap" },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(classes); i++) {
        GError *err = NULL;

        error_set(&err, classes[i].cls, "x%d", (int)i);
        assert_int_equal(err->code, classes[i].cls);
        assert_string_equal(error_class_name(err), classes[i].name);
        g_error_free(err);
    }
}

static void test_foreign_domain(void **state)
{
    GError *err = g_error_new(G_FILE_ERROR, G_FILE_ERROR_NOENT, "gone");

    assert_string_equal(error_class_name(err), "GenericError");
    g_error_free(err);

    /* An out-of-range code in our domain is also GenericError. */
    err = g_error_new_literal(BLOCKD_ERROR, 999, "odd");
    assert_string_equal(error_class_name(err), "GenericError");
    g_error_free(err);
}

static void test_errno(void **state)
{
    GError *err = NULL;
    char *want = g_strdup_printf("Could not open 'x': %s", g_strerror(ENOENT));

    error_setg_errno(&err, ENOENT, "Could not open '%s'", "x");
    assert_string_equal(err->message, want);
    assert_int_equal(err->code, ERROR_CLASS_GENERIC_ERROR);
    g_free(want);
    g_error_free(err);
}

static void test_prepend_propagate(void **state)
{
    GError *local = NULL;
    GError *err = NULL;

    error_prepend(NULL, "ignored: ");
    error_prepend(&err, "ignored: "); /* no error: no-op */
    assert_null(err);

    error_set(&local, ERROR_CLASS_DEVICE_NOT_FOUND, "no such device");
    error_prepend(&local, "%s: ", "blockdev-del");
    assert_string_equal(local->message, "blockdev-del: no such device");
    assert_int_equal(local->code, ERROR_CLASS_DEVICE_NOT_FOUND);

    error_propagate(&err, local);
    assert_ptr_equal(err, local);

    /* Propagating onto a set error drops the new one (leak-free). */
    local = NULL;
    error_setg(&local, "second");
    error_propagate(&err, local);
    assert_string_equal(err->message, "blockdev-del: no such device");

    /* NULL errp frees; NULL local_err is a no-op. */
    local = NULL;
    error_setg(&local, "dropped");
    error_propagate(NULL, local);
    error_propagate(&err, NULL);
    assert_non_null(err);
    g_error_free(err);
}

/* Capture what error_report/warn_report write to stderr. */
static char *capture_stderr(void (*fn)(void))
{
    char path[] = "/tmp/test-error-XXXXXX";
    int fd = mkstemp(path);
    int saved = dup(STDERR_FILENO);
    char *out = NULL;

    assert_true(fd >= 0 && saved >= 0);
    fflush(stderr);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    fn();
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(fd);
    assert_true(g_file_get_contents(path, &out, NULL, NULL));
    unlink(path);
    return out;
}

static void do_reports(void)
{
    error_report("cannot open %s", "disk.img");
    warn_report("slow %d", 3);
}

static void test_report(void **state)
{
    char *out = capture_stderr(do_reports);

    assert_string_equal(out, "blockd: cannot open disk.img\n"
                             "blockd: warning: slow 3\n");
    g_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_setg),
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_foreign_domain),
        cmocka_unit_test(test_errno),
        cmocka_unit_test(test_prepend_propagate),
        cmocka_unit_test(test_report),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
