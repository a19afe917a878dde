/*
 * keyval_parse(): results compared as compact JSON text, errors compared
 * with the messages qemu-storage-daemon 7.2 prints for the same input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "util/keyval.h"

static char *to_json(JsonNode *node)
{
    JsonGenerator *gen = json_generator_new();
    json_generator_set_root(gen, node);
    char *s = json_generator_to_data(gen, NULL);
    g_object_unref(gen);
    return s;
}

/* Parse and compare with the expected compact JSON. */
static void check_ok(const char *params, const char *implied,
                     const char *expect)
{
    GError *err = NULL;
    JsonNode *node = keyval_parse(params, implied, &err);

    if (!node) {
        fail_msg("'%s' failed: %s", params, err->message);
    }
    assert_null(err);
    char *got = to_json(node);
    if (strcmp(got, expect) != 0) {
        fail_msg("'%s': got %s, expected %s", params, got, expect);
    }
    g_free(got);
    json_node_unref(node);
}

static void check_err(const char *params, const char *implied,
                      const char *expect)
{
    GError *err = NULL;
    JsonNode *node = keyval_parse(params, implied, &err);

    if (node) {
        char *got = to_json(node);
        fail_msg("'%s' parsed as %s, expected error '%s'", params, got,
                 expect);
    }
    assert_non_null(err);
    assert_string_equal(err->message, expect);
    g_error_free(err);
}

static void test_basic(void **state)
{
    check_ok("", NULL, "{}");
    check_ok("a=1", NULL, "{\"a\":\"1\"}");
    check_ok("a=1,b=two", NULL, "{\"a\":\"1\",\"b\":\"two\"}");
    check_ok("a=", NULL, "{\"a\":\"\"}");
    check_ok("a=1,", NULL, "{\"a\":\"1\"}"); /* trailing comma */
    check_ok("a-b_c=x", NULL, "{\"a-b_c\":\"x\"}");
    check_ok("a=x=y", NULL, "{\"a\":\"x=y\"}");
    check_ok("__com.redhat_x=1", NULL, "{\"__com.redhat_x\":\"1\"}");
}

static void test_escape(void **state)
{
    check_ok("a=x,,y", NULL, "{\"a\":\"x,y\"}");
    check_ok("a=x,,", NULL, "{\"a\":\"x,\"}");
    check_ok("a=x,,,", NULL, "{\"a\":\"x,\"}");
    check_ok("a=,,,,,b=2", NULL, "{\"a\":\",,\",\"b\":\"2\"}");
}

static void test_nesting(void **state)
{
    check_ok("driver=qcow2,file.driver=file,file.filename=a.img", NULL,
             "{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
             "\"filename\":\"a.img\"}}");
    check_ok("a.b.c=1,a.b.d=2,a.e=3", NULL,
             "{\"a\":{\"b\":{\"c\":\"1\",\"d\":\"2\"},\"e\":\"3\"}}");
}

static void test_arrays(void **state)
{
    check_ok("a.0=x,a.1=y", NULL, "{\"a\":[\"x\",\"y\"]}");
    check_ok("a.1=y,a.0=x", NULL, "{\"a\":[\"x\",\"y\"]}");
    check_ok("a.0.e=r,a.0.s=1,a.1.e=w", NULL,
             "{\"a\":[{\"e\":\"r\",\"s\":\"1\"},{\"e\":\"w\"}]}");
    check_ok("a.0.0=x", NULL, "{\"a\":[[\"x\"]]}");
    check_ok("a.01=x,a.0=y", NULL, "{\"a\":[\"y\",\"x\"]}");
    check_err("a.1=x", NULL, "Parameter 'a.0' missing");
    check_err("a.0=x,a.2=z", NULL, "Parameter 'a.1' missing");
    check_err("a.b.1=x", NULL, "Parameter 'a.b.0' missing");
    check_err("a.99999999999999999999=x", NULL, "Parameter 'a.0' missing");
    check_err("a.0=x,a.b=y", NULL, "Parameters 'a.*' used inconsistently");
    check_err("a.b.0=x,a.b.c=y", NULL,
              "Parameters 'a.b.*' used inconsistently");
}

static void test_last_wins(void **state)
{
    check_ok("driver=file,driver=raw", NULL, "{\"driver\":\"raw\"}");
    check_ok("a.b=1,c=2,a.b=3", NULL, "{\"a\":{\"b\":\"3\"},\"c\":\"2\"}");
}

static void test_implied(void **state)
{
    check_ok("null-co", "driver", "{\"driver\":\"null-co\"}");
    check_ok("null-co,node-name=a", "driver",
             "{\"driver\":\"null-co\",\"node-name\":\"a\"}");
    check_ok("a.b,x=1", "driver", "{\"driver\":\"a.b\",\"x\":\"1\"}");
    check_ok("driver=raw,x=1", "driver", "{\"driver\":\"raw\",\"x\":\"1\"}");
    /* Only the first element can be bare. */
    check_err("node-name=a,null-co", "driver",
              "Expected '=' after parameter 'null-co'");
    /* No ',,' escape in an implied value: the next element is empty. */
    check_err("null-co,,x,node-name=a", "driver", "Invalid parameter ''");
    check_err(",node-name=a", "driver", "Invalid parameter ''");
    check_err("null-co", NULL, "Expected '=' after parameter 'null-co'");
    check_ok("null-co=x", "driver", "{\"null-co\":\"x\"}");
}

static void test_invalid_keys(void **state)
{
    check_err("=x", NULL, "Invalid parameter ''");
    check_err(",", NULL, "Invalid parameter ''");
    check_err("x.=1", NULL, "Invalid parameter 'x.'");
    check_err(".x=1", NULL, "Invalid parameter '.x'");
    check_err("x..y=1", NULL, "Invalid parameter 'x..y'");
    check_err("1=2", NULL, "Invalid parameter '1'");
    check_err("_x=1", NULL, "Invalid parameter '_x'");
    check_err("fo*o=1", NULL, "Invalid parameter 'fo*o'");
    check_err("b.0x=1", NULL, "Invalid parameter 'b.0x'");
    check_err("a", NULL, "Expected '=' after parameter 'a'");
    check_err("a.b", NULL, "Expected '=' after parameter 'a.b'");
    check_err("a=1,b", NULL, "Expected '=' after parameter 'b'");
}

static void test_inconsistent(void **state)
{
    check_err("foo=2,foo.x=1", NULL,
              "Parameters 'foo.*' used inconsistently");
    check_err("foo.x=2,foo=1", NULL,
              "Parameters 'foo.*' used inconsistently");
    check_err("a.b.c=1,a.b=2", NULL,
              "Parameters 'a.b.*' used inconsistently");
    check_err("a.b=1,a.b.c.d=2", NULL,
              "Parameters 'a.b.*' used inconsistently");
}

static void test_too_long(void **state)
{
    char key[200];
    char params[256];
    char expect[256];

    memset(key, 'k', 127);
    key[127] = '\0';
    g_snprintf(params, sizeof(params), "%s=1", key);
    g_snprintf(expect, sizeof(expect), "{\"%s\":\"1\"}", key);
    check_ok(params, NULL, expect);

    memset(key, 'k', 128);
    key[128] = '\0';
    g_snprintf(params, sizeof(params), "%s=1", key);
    g_snprintf(expect, sizeof(expect), "Parameter '%s' is too long", key);
    check_err(params, NULL, expect);

    g_snprintf(params, sizeof(params), "b.%s=1", key);
    g_snprintf(expect, sizeof(expect),
               "Parameter fragment '%s' is too long", key);
    check_err(params, NULL, expect);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_arrays),
        cmocka_unit_test(test_last_wins),
        cmocka_unit_test(test_implied),
        cmocka_unit_test(test_invalid_keys),
        cmocka_unit_test(test_inconsistent),
        cmocka_unit_test(test_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
