/*
 * blockd-img's number parsing and printing and its JSON printer, against
 * what QEMU 7.2's qemu_strtosz(), size_to_str() and qemu-img print.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "daemon/img.h"

static void check_sz(const char *s, int ret, uint64_t val)
{
    uint64_t v = 12345;
    int r = img_strtosz(s, &v);

    if (r != ret) {
        fail_msg("'%s': returned %d, expected %d", s, r, ret);
    }
    if (ret == 0 && v != val) {
        fail_msg("'%s': %" PRIu64 ", expected %" PRIu64, s, v, val);
    }
}

static void test_strtosz(void **state)
{
    check_sz("0", 0, 0);
    check_sz("1000", 0, 1000);
    check_sz("1000b", 0, 1000);
    check_sz("1k", 0, 1024);
    check_sz("1K", 0, 1024);
    check_sz("1M", 0, 1 << 20);
    check_sz("2G", 0, 2ULL << 30);
    check_sz("1T", 0, 1ULL << 40);
    check_sz("1P", 0, 1ULL << 50);
    check_sz("1E", 0, 1ULL << 60);
    check_sz("1.5M", 0, 1572864);
    check_sz("1.5k", 0, 1536);
    check_sz("0.5k", 0, 512);
    check_sz("1.k", 0, 1024);
    check_sz("0x10", 0, 16);
    check_sz("15E", 0, 15ULL << 60);
    check_sz("16E", -ERANGE, 0);
    check_sz("18446744073709551616", -ERANGE, 0);
    check_sz("", -EINVAL, 0);
    check_sz("-1", -EINVAL, 0);
    check_sz("1X", -EINVAL, 0);
    check_sz("1.5", -EINVAL, 0);  /* a fraction needs a suffix */
    check_sz("1.5e3k", -EINVAL, 0);
    check_sz("0x10k", -EINVAL, 0); /* hex takes no suffix */
    check_sz("1kk", -EINVAL, 0);
}

static void check_str(uint64_t v, const char *expect)
{
    char *s = img_size_to_str(v);
    assert_string_equal(s, expect);
    g_free(s);
}

static void test_size_to_str(void **state)
{
    check_str(0, "0 B");
    check_str(512, "512 B");
    check_str(1000, "0.977 KiB");
    check_str(1024, "1 KiB");
    check_str(4096, "4 KiB");
    check_str(208896, "204 KiB");
    check_str(1048576, "1 MiB");
    check_str(1572864, "1.5 MiB");
    check_str(67108864, "64 MiB");
    check_str(1ULL << 40, "1 TiB");
}

static void test_json_pretty(void **state)
{
    /* qemu-img info --output=json of a raw file: QDict member order. */
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "filename", "a.raw");
    json_object_set_string_member(o, "format", "raw");
    json_object_set_boolean_member(o, "dirty-flag", false);
    json_object_set_int_member(o, "actual-size", 4096);
    json_object_set_int_member(o, "virtual-size", 2097152);
    JsonArray *a = json_array_new();
    json_array_add_string_element(a, "x\"\n\xc3\xa9");
    json_object_set_array_member(o, "list", a);
    json_object_set_object_member(o, "empty", json_object_new());
    JsonNode *n = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);

    char *s = img_json_pretty(n);
    assert_string_equal(s, "{\n"
                           "    \"list\": [\n"
                           "        \"x\\\"\\n\\u00E9\"\n"
                           "    ],\n"
                           "    \"empty\": {\n"
                           "    },\n"
                           "    \"virtual-size\": 2097152,\n"
                           "    \"filename\": \"a.raw\",\n"
                           "    \"format\": \"raw\",\n"
                           "    \"actual-size\": 4096,\n"
                           "    \"dirty-flag\": false\n"
                           "}");
    g_free(s);
    json_node_unref(n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strtosz),
        cmocka_unit_test(test_size_to_str),
        cmocka_unit_test(test_json_pretty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
