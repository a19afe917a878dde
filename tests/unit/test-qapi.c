/*
 * Unit tests for the generated QAPI code: strict parsing with QEMU's
 * messages and paths, keyval input, unions, alternates, lists, building,
 * cloning, enums, events and the introspection data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qapi/qapi-commands.h"
#include "qapi/qapi-events.h"
#include "qapi/qapi-introspect.h"
#include "qapi/qapi-types.h"
#include "util/keyval.h"

static JsonNode *J(const char *text)
{
    GError *err = NULL;
    JsonNode *n = json_from_string(text, &err);
    if (!n) {
        fail_msg("bad test JSON %s: %s", text, err->message);
    }
    return n;
}

static char *to_text(JsonNode *n)
{
    char *s = json_to_string(n, FALSE);
    json_node_unref(n);
    return s;
}

/* Parse text as BlockdevOptions and expect failure with message msg. */
static void expect_blockdev_error(const char *text, bool keyval,
                                  const char *msg)
{
    GError *err = NULL;
    JsonNode *n = J(text);
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(n, keyval, &err);
    json_node_unref(n);
    if (o) {
        qapi_free_BlockdevOptions(o);
        fail_msg("%s: parsed, expected \"%s\"", text, msg);
    }
    assert_non_null(err);
    if (strcmp(err->message, msg)) {
        fail_msg("%s:\n  got      \"%s\"\n  expected \"%s\"", text,
                 err->message, msg);
    }
    g_error_free(err);
}

static BlockdevOptions *parse_blockdev(const char *text, bool keyval)
{
    GError *err = NULL;
    JsonNode *n = J(text);
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(n, keyval, &err);
    json_node_unref(n);
    if (!o) {
        fail_msg("%s: %s", text, err->message);
    }
    return o;
}

/* ------------------------------------------------------------------ */

static void test_parse_file(void **state)
{
    BlockdevOptions *o = parse_blockdev(
        "{\"driver\":\"file\",\"node-name\":\"f0\",\"filename\":\"/a.img\","
        "\"cache\":{\"direct\":true},\"read-only\":false,"
        "\"aio\":\"io_uring\",\"locking\":\"off\",\"aio-max-batch\":7,"
        "\"detect-zeroes\":\"unmap\",\"discard\":\"unmap\"}", false);
    assert_int_equal(o->driver, BLOCKDEV_DRIVER_FILE);
    assert_true(o->has_node_name);
    assert_string_equal(o->node_name, "f0");
    assert_string_equal(o->u.file.filename, "/a.img");
    assert_true(o->has_cache);
    assert_true(o->cache->has_direct);
    assert_true(o->cache->direct);
    assert_false(o->cache->has_no_flush);
    assert_true(o->has_read_only);
    assert_false(o->read_only);
    assert_false(o->has_force_share);
    assert_true(o->u.file.has_aio);
    assert_int_equal(o->u.file.aio, BLOCKDEV_AIO_OPTIONS_IO_URING);
    assert_int_equal(o->u.file.locking, ON_OFF_AUTO_OFF);
    assert_int_equal(o->u.file.aio_max_batch, 7);
    assert_int_equal(o->detect_zeroes, BLOCKDEV_DETECT_ZEROES_OPTIONS_UNMAP);
    assert_int_equal(o->discard, BLOCKDEV_DISCARD_OPTIONS_UNMAP);
    assert_false(o->u.file.has_pr_manager);
    assert_null(o->u.file.pr_manager);
    qapi_free_BlockdevOptions(o);
}

static void test_parse_nested_ref(void **state)
{
    BlockdevOptions *o = parse_blockdev(
        "{\"driver\":\"raw\",\"node-name\":\"r\",\"offset\":512,"
        "\"file\":{\"driver\":\"raw\",\"file\":\"base\"}}", false);
    assert_int_equal(o->driver, BLOCKDEV_DRIVER_RAW);
    assert_true(o->u.raw.has_offset);
    assert_int_equal(o->u.raw.offset, 512);
    assert_false(o->u.raw.has_size);
    BlockdevRef *f = o->u.raw.file;
    assert_int_equal(f->type, QTYPE_QDICT);
    assert_int_equal(f->u.definition.driver, BLOCKDEV_DRIVER_RAW);
    assert_int_equal(f->u.definition.u.raw.file->type, QTYPE_QSTRING);
    assert_string_equal(f->u.definition.u.raw.file->u.reference, "base");
    qapi_free_BlockdevOptions(o);
}

static void test_null_driver(void **state)
{
    BlockdevOptions *o = parse_blockdev(
        "{\"driver\":\"null-co\",\"size\":1048576,\"read-zeroes\":true,"
        "\"latency-ns\":-1}", false);
    assert_int_equal(o->driver, BLOCKDEV_DRIVER_NULL_CO);
    assert_int_equal(o->u.null_co.size, 1048576);
    assert_true(o->u.null_co.read_zeroes);
    /* QEMU accepts negative numbers for unsigned members and wraps them. */
    assert_true(o->u.null_co.latency_ns == UINT64_MAX);
    qapi_free_BlockdevOptions(o);
}

/* Every error kind, with the wording qemu-storage-daemon 7.2 uses. */
static void test_errors(void **state)
{
    expect_blockdev_error("{\"node-name\":\"x\"}", false,
                          "Parameter 'driver' is missing");
    expect_blockdev_error("{\"driver\":\"file\",\"node-name\":\"x\"}", false,
                          "Parameter 'filename' is missing");
    expect_blockdev_error("{\"driver\":\"raw\",\"file\":{\"driver\":\"file\"}}",
                          false, "Parameter 'file.filename' is missing");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"foo\":1}", false,
        "Parameter 'foo' is unexpected");
    expect_blockdev_error(
        "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"a\","
        "\"bar\":1}}", false, "Parameter 'file.bar' is unexpected");
    /* a member of another variant is unexpected */
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"offset\":0}", false,
        "Parameter 'offset' is unexpected");
    /* missing members are reported before stray ones */
    expect_blockdev_error("{\"driver\":\"file\",\"foo\":1}", false,
                          "Parameter 'filename' is missing");
    expect_blockdev_error("{\"driver\":\"foo\"}", false,
                          "Parameter 'driver' does not accept value 'foo'");
    expect_blockdev_error("{\"driver\":5}", false,
                          "Invalid parameter type for 'driver', expected: "
                          "string");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"aio-max-batch\":\"1\"}",
        false,
        "Invalid parameter type for 'aio-max-batch', expected: integer");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"aio-max-batch\":1.5}",
        false,
        "Invalid parameter type for 'aio-max-batch', expected: integer");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"read-only\":1}", false,
        "Invalid parameter type for 'read-only', expected: boolean");
    expect_blockdev_error("{\"driver\":\"file\",\"filename\":\"a\",\"cache\":1}",
                          false,
                          "Invalid parameter type for 'cache', expected: "
                          "object");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"cache\":{\"direct\":3}}",
        false,
        "Invalid parameter type for 'cache.direct', expected: boolean");
    expect_blockdev_error(
        "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":5}}",
        false, "Invalid parameter type for 'file.filename', expected: string");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":null}", false,
        "Invalid parameter type for 'filename', expected: string");
    expect_blockdev_error(
        "{\"driver\":\"file\",\"filename\":\"a\",\"discard\":\"foo\"}", false,
        "Parameter 'discard' does not accept value 'foo'");
    /* alternates name the bare member and the alternate type */
    expect_blockdev_error("{\"driver\":\"raw\",\"file\":5}", false,
                          "Invalid parameter type for 'file', expected: "
                          "BlockdevRef");
    expect_blockdev_error("{\"driver\":\"raw\",\"file\":null}", false,
                          "Invalid parameter type for 'file', expected: "
                          "BlockdevRef");
    expect_blockdev_error(
        "{\"driver\":\"raw\",\"file\":{\"driver\":\"raw\",\"file\":[]}}", false,
        "Invalid parameter type for 'file', expected: BlockdevRef");
    /* enum values, too, name only the member */
    expect_blockdev_error(
        "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"a\","
        "\"aio\":\"x\"}}", false, "Parameter 'aio' does not accept value 'x'");
    /* uint64: any failure says "expects uint64" with the full path */
    expect_blockdev_error("{\"driver\":\"null-co\",\"latency-ns\":\"5\"}", false,
                          "Parameter 'latency-ns' expects uint64");
    expect_blockdev_error("{\"driver\":\"null-co\",\"latency-ns\":1.0}", false,
                          "Parameter 'latency-ns' expects uint64");
    expect_blockdev_error("[]", false,
                          "Invalid parameter type for '<anonymous>', "
                          "expected: object");
}

/* Ranges of the sized integer types (QEMU names the bare member). */
static void test_int_ranges(void **state)
{
    GError *err = NULL;
    JsonNode *n = J("{\"addr\":{\"type\":\"inet\",\"data\":{\"host\":\"h\","
                    "\"port\":\"1\",\"to\":70000}}}");
    q_obj_nbd_server_start_arg *a =
        qapi_q_obj_nbd_server_start_arg_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(a);
    assert_string_equal(err->message, "Parameter 'to' expects uint16_t");
    g_clear_error(&err);

    n = J("{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"/s\"}},"
          "\"max-connections\":5000000000}");
    a = qapi_q_obj_nbd_server_start_arg_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(a);
    assert_string_equal(err->message,
                        "Parameter 'max-connections' expects uint32_t");
    g_clear_error(&err);

    n = J("{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"/s\"}},"
          "\"max-connections\":4294967295}");
    a = qapi_q_obj_nbd_server_start_arg_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(a);
    assert_true(a->has_max_connections);
    assert_true(a->max_connections == UINT32_MAX);
    assert_int_equal(a->addr->type, SOCKET_ADDRESS_TYPE_UNIX);
    assert_string_equal(a->addr->u.q_unix.data->path, "/s");
    qapi_free_q_obj_nbd_server_start_arg(a);

    /* size: uint64 */
    n = J("{\"driver\":\"file\",\"filename\":\"a\",\"size\":-1}");
    BlockdevCreateOptions *c = qapi_BlockdevCreateOptions_from_json(n, false,
                                                                    &err);
    json_node_unref(n);
    assert_non_null(c);
    assert_true(c->u.file.size == UINT64_MAX);
    qapi_free_BlockdevCreateOptions(c);
    /* the QMP reader hands integers beyond int64 over as doubles */
    n = J("{\"driver\":\"file\",\"filename\":\"a\","
          "\"size\":18446744073709551615.0}");
    c = qapi_BlockdevCreateOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(c);
    assert_true(c->u.file.size == UINT64_MAX);
    qapi_free_BlockdevCreateOptions(c);
    n = J("{\"driver\":\"file\",\"filename\":\"a\","
          "\"size\":9223372036854775808.0}");
    c = qapi_BlockdevCreateOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(c);
    assert_true(c->u.file.size == 1ULL << 63);
    qapi_free_BlockdevCreateOptions(c);
    n = J("{\"driver\":\"file\",\"filename\":\"a\",\"size\":1e20}");
    c = qapi_BlockdevCreateOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(c);
    assert_string_equal(err->message, "Parameter 'size' expects uint64");
    g_clear_error(&err);
    n = J("{\"size\":9223372036854775808.0}");
    q_obj_block_resize_arg *r = qapi_q_obj_block_resize_arg_from_json(n, false,
                                                                      &err);
    json_node_unref(n);
    assert_null(r);
    assert_string_equal(err->message,
                        "Invalid parameter type for 'size', expected: integer");
    g_clear_error(&err);

    n = J("{\"driver\":\"file\",\"filename\":\"a\",\"size\":\"1G\"}");
    c = qapi_BlockdevCreateOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(c);
    assert_string_equal(err->message, "Parameter 'size' expects uint64");
    g_clear_error(&err);
}

static void test_union_wrappers(void **state)
{
    GError *err = NULL;
    JsonNode *n = J("{\"type\":\"unix\",\"path\":\"x\"}");
    SocketAddressLegacy *l = qapi_SocketAddressLegacy_from_json(n, false,
                                                                &err);
    json_node_unref(n);
    assert_null(l);
    assert_string_equal(err->message, "Parameter 'data' is missing");
    g_clear_error(&err);

    n = J("{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":5}}}");
    q_obj_nbd_server_start_arg *a =
        qapi_q_obj_nbd_server_start_arg_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(a);
    assert_string_equal(err->message,
                        "Invalid parameter type for 'addr.data.path', "
                        "expected: string");
    g_clear_error(&err);

    n = J("{\"type\":\"inet\",\"host\":\"localhost\",\"port\":\"10809\","
          "\"ipv4\":true}");
    SocketAddress *s = qapi_SocketAddress_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(s);
    assert_int_equal(s->type, SOCKET_ADDRESS_TYPE_INET);
    assert_string_equal(s->u.inet.host, "localhost");
    assert_string_equal(s->u.inet.port, "10809");
    assert_true(s->u.inet.has_ipv4 && s->u.inet.ipv4);
    qapi_free_SocketAddress(s);

    n = J("{\"id\":\"e\",\"node-name\":\"n\",\"name\":\"x\"}");
    BlockExportOptions *e = qapi_BlockExportOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(e);
    assert_string_equal(err->message, "Parameter 'type' is missing");
    g_clear_error(&err);
}

static void test_alternates(void **state)
{
    GError *err = NULL;
    JsonNode *n = J("null");
    BlockdevRefOrNull *r = qapi_BlockdevRefOrNull_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(r);
    assert_int_equal(r->type, QTYPE_QNULL);
    char *s = to_text(qapi_BlockdevRefOrNull_to_json(r));
    assert_string_equal(s, "null");
    g_free(s);
    qapi_free_BlockdevRefOrNull(r);

    n = J("\"node0\"");
    r = qapi_BlockdevRefOrNull_from_json(n, false, &err);
    json_node_unref(n);
    assert_int_equal(r->type, QTYPE_QSTRING);
    assert_string_equal(r->u.reference, "node0");
    qapi_free_BlockdevRefOrNull(r);

    n = J("{\"driver\":\"null-aio\"}");
    r = qapi_BlockdevRefOrNull_from_json(n, false, &err);
    json_node_unref(n);
    assert_int_equal(r->type, QTYPE_QDICT);
    assert_int_equal(r->u.definition.driver, BLOCKDEV_DRIVER_NULL_AIO);
    qapi_free_BlockdevRefOrNull(r);

    n = J("true");
    r = qapi_BlockdevRefOrNull_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(r);
    assert_string_equal(err->message,
                        "Invalid parameter type for 'null', expected: "
                        "BlockdevRefOrNull");
    g_clear_error(&err);

    /* an object branch reports its own errors with the path */
    n = J("{\"driver\":\"raw\",\"file\":{\"driver\":\"nope\"}}");
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(o);
    assert_string_equal(err->message,
                        "Parameter 'driver' does not accept value 'nope'");
    g_clear_error(&err);
}

static void test_lists(void **state)
{
    GError *err = NULL;
    JsonNode *n = J("{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"n\","
                    "\"bitmaps\":[\"b1\",{\"node\":\"n2\",\"name\":\"b2\"}]}");
    BlockExportOptions *e = qapi_BlockExportOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(e);
    assert_int_equal(e->type, BLOCK_EXPORT_TYPE_NBD);
    assert_true(e->u.nbd.has_bitmaps);
    BlockDirtyBitmapOrStrList *l = e->u.nbd.bitmaps;
    assert_int_equal(l->value->type, QTYPE_QSTRING);
    assert_string_equal(l->value->u.local, "b1");
    assert_int_equal(l->next->value->type, QTYPE_QDICT);
    assert_string_equal(l->next->value->u.external.node, "n2");
    assert_string_equal(l->next->value->u.external.name, "b2");
    assert_null(l->next->next);
    qapi_free_BlockExportOptions(e);

    /* list elements have no name: QEMU prints 'null' */
    n = J("{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"n\","
          "\"bitmaps\":[\"a\",5]}");
    e = qapi_BlockExportOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(e);
    assert_string_equal(err->message,
                        "Invalid parameter type for 'null', expected: "
                        "BlockDirtyBitmapOrStr");
    g_clear_error(&err);

    n = J("{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"n\","
          "\"bitmaps\":[{\"node\":\"a\",\"name\":\"b\",\"x\":1}]}");
    e = qapi_BlockExportOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(e);
    assert_string_equal(err->message, "Parameter 'bitmaps[0].x' is unexpected");
    g_clear_error(&err);

    n = J("{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"n\","
          "\"bitmaps\":{}}");
    e = qapi_BlockExportOptions_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(e);
    assert_string_equal(err->message,
                        "Invalid parameter type for 'bitmaps', expected: "
                        "array");
    g_clear_error(&err);

    n = J("{\"enable\":[\"oob\",\"bad\"]}");
    q_obj_qmp_capabilities_arg *c =
        qapi_q_obj_qmp_capabilities_arg_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(c);
    assert_string_equal(err->message,
                        "Parameter 'null' does not accept value 'bad'");
    g_clear_error(&err);

    n = J("{\"enable\":[]}");
    c = qapi_q_obj_qmp_capabilities_arg_from_json(n, false, &err);
    json_node_unref(n);
    assert_non_null(c);
    assert_true(c->has_enable);
    assert_null(c->enable); /* the empty list */
    qapi_free_q_obj_qmp_capabilities_arg(c);

    strList *built = NULL, **tail = &built;
    QAPI_LIST_APPEND(tail, g_strdup("a"));
    QAPI_LIST_APPEND(tail, g_strdup("b"));
    QAPI_LIST_PREPEND(built, g_strdup("z"));
    char *text = to_text(qapi_strList_to_json(built));
    assert_string_equal(text, "[\"z\",\"a\",\"b\"]");
    g_free(text);
    qapi_free_strList(built);
    text = to_text(qapi_strList_to_json(NULL));
    assert_string_equal(text, "[]");
    g_free(text);

    n = J("[\"a\",\"b\",5]");
    strList *sl = qapi_strList_from_json(n, false, &err);
    json_node_unref(n);
    assert_null(sl);
    assert_string_equal(err->message,
                        "Invalid parameter type for '[2]', expected: string");
    g_clear_error(&err);
}

static void test_keyval(void **state)
{
    BlockdevOptions *o = parse_blockdev(
        "{\"driver\":\"null-co\",\"size\":\"0x100000\",\"read-zeroes\":\"on\","
        "\"latency-ns\":\"10\",\"read-only\":\"yes\",\"force-share\":\"false\","
        "\"cache\":{\"no-flush\":\"off\"}}", true);
    assert_int_equal(o->u.null_co.size, 0x100000);
    assert_true(o->u.null_co.read_zeroes);
    assert_true(o->u.null_co.latency_ns == 10);
    assert_true(o->read_only);
    assert_false(o->force_share);
    assert_true(o->cache->has_no_flush);
    assert_false(o->cache->no_flush);
    qapi_free_BlockdevOptions(o);

    expect_blockdev_error("{\"driver\":\"null-co\",\"read-zeroes\":\"maybe\"}",
                          true,
                          "Parameter 'read-zeroes' expects 'on' or 'off'");
    expect_blockdev_error("{\"driver\":\"null-co\",\"size\":\"12x\"}", true,
                          "Parameter 'size' expects integer");
    expect_blockdev_error("{\"driver\":\"null-co\",\"size\":\"\"}", true,
                          "Parameter 'size' expects integer");
    expect_blockdev_error("{\"driver\":\"null-co\",\"size\":\"5 \"}", true,
                          "Parameter 'size' expects integer");
    o = parse_blockdev("{\"driver\":\"null-co\",\"size\":\" 5\"}", true);
    assert_int_equal(o->u.null_co.size, 5);
    qapi_free_BlockdevOptions(o);
    expect_blockdev_error("{\"driver\":\"raw\",\"file\":{\"driver\":\"null-co\","
                          "\"latency-ns\":\"x\"}}", true,
                          "Parameter 'file.latency-ns' expects integer");
    /* the string branch of an alternate takes a keyval string */
    o = parse_blockdev("{\"driver\":\"raw\",\"file\":\"on\"}", true);
    assert_int_equal(o->u.raw.file->type, QTYPE_QSTRING);
    assert_string_equal(o->u.raw.file->u.reference, "on");
    qapi_free_BlockdevOptions(o);
    o = parse_blockdev("{\"driver\":\"raw\",\"file\":{\"driver\":\"file\","
                       "\"filename\":\"a\",\"aio-max-batch\":\"32\"}}", true);
    assert_int_equal(o->u.raw.file->type, QTYPE_QDICT);
    assert_int_equal(o->u.raw.file->u.definition.u.file.aio_max_batch, 32);
    qapi_free_BlockdevOptions(o);

    /* size suffixes */
    GError *err = NULL;
    JsonNode *n = J("{\"driver\":\"file\",\"filename\":\"a\",\"size\":\"1.5G\","
                    "\"extent-size-hint\":\"64k\"}");
    BlockdevCreateOptions *c = qapi_BlockdevCreateOptions_from_json(n, true,
                                                                    &err);
    json_node_unref(n);
    assert_non_null(c);
    assert_true(c->u.file.size == 1536ULL << 20);
    assert_true(c->u.file.extent_size_hint == 64 << 10);
    qapi_free_BlockdevCreateOptions(c);
    n = J("{\"driver\":\"file\",\"filename\":\"a\",\"size\":\"1Q\"}");
    c = qapi_BlockdevCreateOptions_from_json(n, true, &err);
    json_node_unref(n);
    assert_null(c);
    assert_string_equal(err->message, "Parameter 'size' expects size");
    g_clear_error(&err);

    uint64_t v;
    assert_true(qapi_strtosz("0", &v) && v == 0);
    assert_true(qapi_strtosz("512", &v) && v == 512);
    assert_true(qapi_strtosz("4k", &v) && v == 4096);
    assert_true(qapi_strtosz("2M", &v) && v == 2 << 20);
    assert_true(qapi_strtosz("1T", &v) && v == 1ULL << 40);
    assert_true(qapi_strtosz("1P", &v) && v == 1ULL << 50);
    assert_true(qapi_strtosz("1E", &v) && v == 1ULL << 60);
    assert_true(qapi_strtosz("16E", &v) == false);
    assert_true(qapi_strtosz("1.5", &v) == false);
    assert_true(qapi_strtosz("-1", &v) == false);
    assert_true(qapi_strtosz("k", &v) == false);
    assert_true(qapi_strtosz("1kk", &v) == false);
}

/* Command-line strings through util/keyval into the parsers. */
static void test_keyval_cli(void **state)
{
    GError *err = NULL;
    JsonNode *n = keyval_parse("driver=raw,node-name=r,file.driver=file,"
                               "file.filename=/x,,y,file.aio=io_uring,"
                               "offset=512,read-only=on", NULL, &err);
    assert_non_null(n);
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(n, true, &err);
    json_node_unref(n);
    if (!o) {
        fail_msg("%s", err->message);
    }
    assert_int_equal(o->driver, BLOCKDEV_DRIVER_RAW);
    assert_string_equal(o->node_name, "r");
    assert_true(o->read_only);
    assert_int_equal(o->u.raw.offset, 512);
    assert_int_equal(o->u.raw.file->type, QTYPE_QDICT);
    assert_string_equal(o->u.raw.file->u.definition.u.file.filename, "/x,y");
    assert_int_equal(o->u.raw.file->u.definition.u.file.aio,
                     BLOCKDEV_AIO_OPTIONS_IO_URING);
    qapi_free_BlockdevOptions(o);

    n = keyval_parse("type=nbd,id=e,node-name=n,name=disk,writable=on,"
                     "bitmaps.0=b1,bitmaps.1.node=n2,bitmaps.1.name=b2",
                     NULL, &err);
    assert_non_null(n);
    BlockExportOptions *e = qapi_BlockExportOptions_from_json(n, true, &err);
    json_node_unref(n);
    if (!e) {
        fail_msg("%s", err->message);
    }
    assert_true(e->writable);
    assert_string_equal(e->u.nbd.name, "disk");
    assert_string_equal(e->u.nbd.bitmaps->value->u.local, "b1");
    assert_string_equal(e->u.nbd.bitmaps->next->value->u.external.name, "b2");
    qapi_free_BlockExportOptions(e);

    n = keyval_parse("addr.type=unix,addr.path=/p,max-connections=4", NULL,
                     &err);
    assert_non_null(n);
    NbdServerOptions *s = qapi_NbdServerOptions_from_json(n, true, &err);
    json_node_unref(n);
    if (!s) {
        fail_msg("%s", err->message);
    }
    assert_int_equal(s->addr->type, SOCKET_ADDRESS_TYPE_UNIX);
    assert_string_equal(s->addr->u.q_unix.path, "/p");
    assert_int_equal(s->max_connections, 4);
    qapi_free_NbdServerOptions(s);

    n = keyval_parse("addr.type=inet,addr.host=h,addr.port=1,"
                     "max-connections=99999999999", NULL, &err);
    s = qapi_NbdServerOptions_from_json(n, true, &err);
    json_node_unref(n);
    assert_null(s);
    assert_string_equal(err->message,
                        "Parameter 'max-connections' expects uint32_t");
    g_clear_error(&err);
}

/* to_json(from_json(x)) == x for canonical input, and clones are deep. */
static void test_round_trip_and_clone(void **state)
{
    static const char *const text =
        "{\"driver\":\"raw\",\"node-name\":\"top\",\"cache\":{\"direct\":true,"
        "\"no-flush\":false},\"file\":{\"driver\":\"file\","
        "\"filename\":\"/img\",\"locking\":\"auto\","
        "\"x-check-cache-dropped\":true},\"offset\":4096}";
    BlockdevOptions *o = parse_blockdev(text, false);
    char *out = to_text(qapi_BlockdevOptions_to_json(o));
    assert_string_equal(out, text);
    g_free(out);

    BlockdevOptions *c = qapi_BlockdevOptions_clone(o);
    assert_ptr_not_equal(c->node_name, o->node_name);
    assert_ptr_not_equal(c->cache, o->cache);
    assert_ptr_not_equal(c->u.raw.file, o->u.raw.file);
    assert_ptr_not_equal(c->u.raw.file->u.definition.u.file.filename,
                         o->u.raw.file->u.definition.u.file.filename);
    qapi_free_BlockdevOptions(o);
    out = to_text(qapi_BlockdevOptions_to_json(c));
    assert_string_equal(out, text);
    g_free(out);
    qapi_free_BlockdevOptions(c);

    /* uint64 above INT64_MAX survives the trip */
    BlockdevOptionsNull nul = { .has_latency_ns = true,
                                .latency_ns = UINT64_MAX - 1 };
    JsonObject *obj = json_object_new();
    qapi_BlockdevOptionsNull_members_to_json(&nul, obj);
    JsonNode *n = qapi_object_to_json(obj);
    GError *err = NULL;
    BlockdevOptionsNull *back = qapi_BlockdevOptionsNull_from_json(n, false,
                                                                   &err);
    json_node_unref(n);
    assert_non_null(back);
    assert_true(back->latency_ns == UINT64_MAX - 1);
    qapi_free_BlockdevOptionsNull(back);

    /* a list of structs with an 'any' member */
    n = J("[{\"name\":\"a\",\"type\":\"int\",\"default\":null},"
          "{\"name\":\"b\",\"type\":\"str\",\"default\":{\"x\":[1,2]},"
          "\"features\":[\"deprecated\"]}]");
    SchemaInfoObjectMemberList *ml =
        qapi_SchemaInfoObjectMemberList_from_json(n, false, &err);
    assert_non_null(ml);
    assert_true(ml->value->has_q_default);
    assert_true(JSON_NODE_HOLDS_NULL(ml->value->q_default));
    SchemaInfoObjectMemberList *ml2 = qapi_SchemaInfoObjectMemberList_clone(ml);
    qapi_free_SchemaInfoObjectMemberList(ml);
    char *a = to_text(qapi_SchemaInfoObjectMemberList_to_json(ml2));
    char *b = to_text(n);
    assert_string_equal(a, b);
    g_free(a);
    g_free(b);
    assert_string_equal(ml2->next->value->features->value, "deprecated");
    qapi_free_SchemaInfoObjectMemberList(ml2);
    qapi_free_BlockdevOptions(NULL);
    assert_null(qapi_BlockdevOptions_clone(NULL));
}

static void test_enums(void **state)
{
    assert_string_equal(BlockdevDriver_str(BLOCKDEV_DRIVER_NULL_CO),
                        "null-co");
    assert_int_equal(BlockdevDriver_parse("raw"), BLOCKDEV_DRIVER_RAW);
    assert_int_equal(BlockdevDriver_parse("qcow9"), -1);
    assert_int_equal(BlockdevDriver_parse(NULL), -1);
    assert_null(BlockdevDriver_str(BLOCKDEV_DRIVER__MAX));
    assert_int_equal(ON_OFF_AUTO_AUTO, 0);
    assert_string_equal(OnOffAuto_str(ON_OFF_AUTO_OFF), "off");
    assert_string_equal(BlkdebugEvent_str(BLKDBG_L1_GROW_ALLOC_TABLE),
                        "l1_grow_alloc_table");
    assert_int_equal(BlkdebugEvent_parse("cluster_alloc_space"),
                     BLKDBG_CLUSTER_ALLOC_SPACE);
    assert_int_equal(BLKDBG__MAX, 48);
    assert_string_equal(QMPCapability_str(QMP_CAPABILITY_OOB), "oob");
    assert_string_equal(Qcow2CompressionType_str(QCOW2_COMPRESSION_TYPE_ZSTD),
                        "zstd");
    assert_string_equal(BlockExportRemoveMode_str(BLOCK_EXPORT_REMOVE_MODE_HARD),
                        "hard");
    assert_string_equal(ShutdownCause_str(SHUTDOWN_CAUSE_HOST_QMP_QUIT),
                        "host-qmp-quit");
    assert_string_equal(QType_str(QTYPE_QDICT), "qdict");
}

/* ------------------------------------------------------------ events */

static char *last_event_name;
static char *last_event_data;

void qapi_event_emit(const char *name, JsonObject *data)
{
    g_free(last_event_name);
    g_free(last_event_data);
    last_event_name = g_strdup(name);
    last_event_data = NULL;
    if (data) {
        JsonNode *n = json_node_init_object(json_node_alloc(), data);
        last_event_data = json_to_string(n, FALSE);
        json_node_unref(n);
    }
}

static void test_events(void **state)
{
    qapi_event_send_block_export_deleted("exp0");
    assert_string_equal(last_event_name, "BLOCK_EXPORT_DELETED");
    assert_string_equal(last_event_data, "{\"id\":\"exp0\"}");

    qapi_event_send_block_image_corrupted("", true, "n0", "bad L2", true, 65536,
                                          false, 0, true);
    assert_string_equal(last_event_name, "BLOCK_IMAGE_CORRUPTED");
    assert_string_equal(last_event_data,
                        "{\"device\":\"\",\"node-name\":\"n0\",\"msg\":"
                        "\"bad L2\",\"offset\":65536,\"fatal\":true}");

    qapi_event_send_block_io_error("", false, NULL, IO_OPERATION_TYPE_WRITE,
                                   BLOCK_ERROR_ACTION_REPORT, true, true,
                                   "No space left on device");
    assert_string_equal(last_event_data,
                        "{\"device\":\"\",\"operation\":\"write\",\"action\":"
                        "\"report\",\"nospace\":true,\"reason\":"
                        "\"No space left on device\"}");
    qapi_event_send_shutdown(false, SHUTDOWN_CAUSE_HOST_SIGNAL);
    assert_string_equal(last_event_data,
                        "{\"guest\":false,\"reason\":\"host-signal\"}");
    g_clear_pointer(&last_event_name, g_free);
    g_clear_pointer(&last_event_data, g_free);
}

/* ------------------------------------------------------------ schema */

static const SchemaInfo *find_entry(SchemaInfoList *l, const char *name)
{
    for (; l; l = l->next) {
        if (!strcmp(l->value->name, name)) {
            return l->value;
        }
    }
    return NULL;
}

static void test_introspection(void **state)
{
    GError *err = NULL;
    /* the handler parses the text through the generated SchemaInfo code */
    SchemaInfoList *schema = qmp_query_qmp_schema(&err);
    if (!schema) {
        fail_msg("%s", err->message);
    }
    static const char *const commands[] = {
        "qmp_capabilities", "query-version", "query-commands", "quit",
        "query-qmp-schema", "query-block", "query-named-block-nodes",
        "block_resize", "blockdev-add", "blockdev-del", "nbd-server-start",
        "nbd-server-stop", "block-export-add", "block-export-del",
        "query-block-exports",
    };
    size_t ncmd = 0;
    for (SchemaInfoList *l = schema; l; l = l->next) {
        ncmd += l->value->meta_type == SCHEMA_META_TYPE_COMMAND;
    }
    /* later issues add commands: the foundation's must all be there */
    assert_true(ncmd >= G_N_ELEMENTS(commands));
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        const SchemaInfo *e = find_entry(schema, commands[i]);
        if (!e || e->meta_type != SCHEMA_META_TYPE_COMMAND) {
            fail_msg("command %s not in the schema", commands[i]);
        }
        assert_non_null(find_entry(schema, e->u.command.arg_type));
        assert_non_null(find_entry(schema, e->u.command.ret_type));
    }
    /* every type referred to is listed */
    for (SchemaInfoList *l = schema; l; l = l->next) {
        const SchemaInfo *e = l->value;
        switch (e->meta_type) {
        case SCHEMA_META_TYPE_OBJECT:
            for (SchemaInfoObjectMemberList *m = e->u.object.members; m;
                 m = m->next) {
                assert_non_null(find_entry(schema, m->value->type));
            }
            for (SchemaInfoObjectVariantList *v = e->u.object.variants; v;
                 v = v->next) {
                assert_non_null(find_entry(schema, v->value->type));
            }
            break;
        case SCHEMA_META_TYPE_ARRAY:
            assert_non_null(find_entry(schema, e->u.array.element_type));
            break;
        case SCHEMA_META_TYPE_EVENT:
            assert_non_null(find_entry(schema, e->u.event.arg_type));
            break;
        case SCHEMA_META_TYPE_ALTERNATE:
            for (SchemaInfoAlternateMemberList *m = e->u.alternate.members; m;
                 m = m->next) {
                assert_non_null(find_entry(schema, m->value->type));
            }
            break;
        default:
            break;
        }
    }
    const SchemaInfo *e = find_entry(schema, "BLOCK_EXPORT_DELETED");
    assert_non_null(e);
    assert_int_equal(e->meta_type, SCHEMA_META_TYPE_EVENT);
    e = find_entry(schema, "blockdev-add");
    e = find_entry(schema, e->u.command.arg_type);
    assert_int_equal(e->meta_type, SCHEMA_META_TYPE_OBJECT);
    assert_true(e->u.object.has_tag);
    assert_string_equal(e->u.object.tag, "driver");
    e = find_entry(schema, "size");
    assert_null(e); /* all integer types show as 'int' */
    e = find_entry(schema, "int");
    assert_int_equal(e->u.builtin.json_type, QAPI_JSON_TYPE_INT);
    qapi_free_SchemaInfoList(schema);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_file),
        cmocka_unit_test(test_parse_nested_ref),
        cmocka_unit_test(test_null_driver),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_int_ranges),
        cmocka_unit_test(test_union_wrappers),
        cmocka_unit_test(test_alternates),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_keyval),
        cmocka_unit_test(test_keyval_cli),
        cmocka_unit_test(test_round_trip_and_clone),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_introspection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
