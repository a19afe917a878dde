/*
 * The QMP stream splitter: framing across arbitrary read boundaries,
 * pipelining, error recovery, limits, and the reply serialiser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/json-stream.h"

/* Each event as text: "M:<compact json>" or "E:<message>". */
typedef struct Events {
    GPtrArray *ev;
} Events;

static void on_msg(void *opaque, JsonNode *msg)
{
    Events *e = opaque;
    char *txt = json_to_string_compact(msg);

    g_ptr_array_add(e->ev, g_strconcat("M:", txt, NULL));
    g_free(txt);
    json_node_unref(msg);
}

static void on_err(void *opaque, const GError *err)
{
    Events *e = opaque;

    g_ptr_array_add(e->ev, g_strconcat("E:", err->message, NULL));
}

static Events *events_new(void)
{
    Events *e = g_new0(Events, 1);

    e->ev = g_ptr_array_new_with_free_func(g_free);
    return e;
}

static void events_free(Events *e)
{
    g_ptr_array_free(e->ev, TRUE);
    g_free(e);
}

/* Feed `in` in chunks given by `cuts` (sorted offsets), then flush. */
static Events *run_cuts(const char *in, size_t len, const size_t *cuts,
                        int ncuts, size_t max_size, int max_depth)
{
    Events *e = events_new();
    JsonStream *s = json_stream_new(max_size, max_depth, on_msg, on_err, e);
    size_t pos = 0;

    for (int i = 0; i < ncuts; i++) {
        json_stream_feed(s, in + pos, cuts[i] - pos);
        pos = cuts[i];
    }
    json_stream_feed(s, in + pos, len - pos);
    json_stream_flush(s);
    json_stream_free(s);
    return e;
}

static Events *run(const char *in)
{
    return run_cuts(in, strlen(in), NULL, 0, 0, 0);
}

static void assert_events(Events *e, const char *const *expect)
{
    guint n = 0;

    while (expect[n]) {
        assert_true(n < e->ev->len);
        assert_string_equal(g_ptr_array_index(e->ev, n), expect[n]);
        n++;
    }
    assert_int_equal(e->ev->len, n);
}

static void check(const char *in, const char *const *expect)
{
    Events *e = run(in);

    assert_events(e, expect);
    events_free(e);
}

static void test_pipelined(void **state)
{
    (void)state;
    check("{\"execute\":\"a\"}{\"execute\":\"b\"}\n{\"execute\":\n\"c\",\n"
          "\"id\": 1}",
          (const char *const[]){ "M:{\"execute\": \"a\"}",
                                 "M:{\"execute\": \"b\"}",
                                 "M:{\"execute\": \"c\", \"id\": 1}", NULL });
}

static const char *const split_input =
    "{\"execute\": \"x\", \"arguments\": {\"s\": \"}{][\\\"\\\\\", "
    "\"l\": [1, -2.5e3, true, null, {}]}}  [\"\\u00e9\"]\n"
    "{'q': 'it\\'s \"quoted\"'} 12345 @ {\"ok\": 1}";

/* Splitting the input at any byte boundary changes nothing. */
static void test_every_split(void **state)
{
    size_t len = strlen(split_input);
    Events *ref = run_cuts(split_input, len, NULL, 0, 0, 0);

    (void)state;
    assert_true(ref->ev->len == 6);
    assert_string_equal(g_ptr_array_index(ref->ev, 0),
                        "M:{\"execute\": \"x\", \"arguments\": {\"s\": "
                        "\"}{][\\\"\\\\\", \"l\": [1, -2500, true, null, "
                        "{}]}}");
    assert_string_equal(g_ptr_array_index(ref->ev, 1), "M:[\"\\u00E9\"]");
    assert_string_equal(g_ptr_array_index(ref->ev, 2),
                        "M:{\"q\": \"it's \\\"quoted\\\"\"}");
    assert_string_equal(g_ptr_array_index(ref->ev, 3), "M:12345");
    assert_string_equal(g_ptr_array_index(ref->ev, 4),
                        "E:JSON parse error, stray '@'");
    assert_string_equal(g_ptr_array_index(ref->ev, 5), "M:{\"ok\": 1}");

    for (size_t cut = 1; cut < len; cut++) {
        Events *e = run_cuts(split_input, len, &cut, 1, 0, 0);

        assert_int_equal(e->ev->len, ref->ev->len);
        for (guint i = 0; i < e->ev->len; i++) {
            assert_string_equal(g_ptr_array_index(e->ev, i),
                                g_ptr_array_index(ref->ev, i));
        }
        events_free(e);
    }

    /* One byte at a time. */
    {
        size_t *cuts = g_new(size_t, len);
        Events *e;

        for (size_t i = 0; i < len - 1; i++) {
            cuts[i] = i + 1;
        }
        e = run_cuts(split_input, len, cuts, len - 1, 0, 0);
        assert_int_equal(e->ev->len, ref->ev->len);
        for (guint i = 0; i < e->ev->len; i++) {
            assert_string_equal(g_ptr_array_index(e->ev, i),
                                g_ptr_array_index(ref->ev, i));
        }
        events_free(e);
        g_free(cuts);
    }
    events_free(ref);
}

static void test_strings(void **state)
{
    (void)state;
    /* Braces, brackets and escaped quotes inside strings do not count. */
    check("{\"a\": \"{{{[[[\\\"}\"}",
          (const char *const[]){ "M:{\"a\": \"{{{[[[\\\"}\"}", NULL });
    /* Surrogate pairs decode; a lone surrogate is an error. */
    check("[\"\\ud83d\\ude00\", \"\\/\"]",
          (const char *const[]){ "M:[\"\\uD83D\\uDE00\", \"/\"]", NULL });
    check("[\"\\ud800\"] [1]",
          (const char *const[]){ "E:JSON parse error, \\ud800 is not a "
                                 "valid Unicode character",
                                 "M:[1]", NULL });
    check("[\"\\u0000\"]",
          (const char *const[]){ "E:JSON parse error, \\u0000 is not "
                                 "supported", NULL });
    check("[\"a\\x\"]",
          (const char *const[]){ "E:JSON parse error, invalid escape "
                                 "sequence in string", NULL });
    check("[\"\x80\"]",
          (const char *const[]){ "E:JSON parse error, invalid UTF-8 "
                                 "sequence in string", NULL });
    /* Bytes that are never UTF-8 are lexical errors, as in QEMU. */
    check("[\"x\xff\"]\n[1]",
          (const char *const[]){ "E:JSON parse error, stray '\"x\xff'",
                                 "E:JSON parse error, expecting value",
                                 "M:[1]", NULL });
    /* A short or non-hex \u escape. */
    check("[\"\\u12\"] [\"\\uzzzz\"]",
          (const char *const[]){ "E:JSON parse error, \\u12\" is not a "
                                 "valid Unicode character",
                                 "E:JSON parse error, \\uzzzz is not a "
                                 "valid Unicode character", NULL });
}

static void test_garbage_recovery(void **state)
{
    (void)state;
    /* A raw control character ends the string: an error, then resync. */
    check("{\"id\": \"a\tb\"}\n{\"id\": 2}",
          (const char *const[]){ "E:JSON parse error, stray '\"a\t'",
                                 "E:JSON parse error, expecting value",
                                 "M:{\"id\": 2}", NULL });
    check("}\n{\"x\": 1} junk [2]",
          (const char *const[]){ "E:JSON parse error, expecting value",
                                 "M:{\"x\": 1}",
                                 "E:JSON parse error, invalid keyword 'junk'",
                                 "M:[2]", NULL });
    check("{\"a\": xyz} {\"a\":1,} {\"a\" 1} [1 2] {\"a\":1 \"b\":2} {1:2} "
          "{\"a\":1,\"a\":2} {\"a\":[}] {\"b\":01} [3]",
          (const char *const[]){
              "E:JSON parse error, invalid keyword 'xyz'",
              "E:JSON parse error, expecting value",
              "E:JSON parse error, missing : in object pair",
              "E:JSON parse error, expected separator in list",
              "E:JSON parse error, expected separator in dict",
              "E:JSON parse error, key is not a string in object",
              "E:JSON parse error, duplicate key",
              "E:JSON parse error, expecting value",
              "E:JSON parse error, stray '01'",
              "E:JSON parse error, expecting value",
              "M:[3]", NULL });
    /* Numbers and keywords lexed as QEMU does. */
    check("[-} [1.} [.5] [+1] [True] [-1.5e+3, 0, -0.25E-2, 1e5] [tru]",
          (const char *const[]){
              "E:JSON parse error, stray '-}'",
              "E:JSON parse error, stray '1.}'",
              "E:JSON parse error, stray '.'",
              "E:JSON parse error, expecting value",
              "E:JSON parse error, stray '+'",
              "E:JSON parse error, expecting value",
              "E:JSON parse error, stray 'T'",
              "E:JSON parse error, expecting value",
              "M:[-1500, 0, -0.0025000000000000001, 100000]",
              "E:JSON parse error, invalid keyword 'tru'", NULL });
    /* An unclosed value waits for more input (here: until the end). */
    check("{\"a\": ",
          (const char *const[]){ "E:JSON parse error, premature EOI",
                                 NULL });
}

static void test_size_limit(void **state)
{
    GString *big = g_string_new("{\"data\": \"");
    Events *e;

    (void)state;
    for (int i = 0; i < 100000; i++) {
        g_string_append(big, "xxxxxxxxx}");
    }
    g_string_append(big, "\", \"more\": [[[{}]]]}{\"after\": true}");
    e = run_cuts(big->str, big->len, NULL, 0, 4096, 0);
    assert_events(e, (const char *const[]){
                         "E:JSON message size limit exceeded",
                         "M:{\"after\": true}", NULL });
    events_free(e);

    /* Exactly at the limit is fine. */
    e = run_cuts("{\"a\": 12}", 9, NULL, 0, 9, 0);
    assert_events(e, (const char *const[]){ "M:{\"a\": 12}", NULL });
    events_free(e);
    e = run_cuts("{\"a\": 123}", 10, NULL, 0, 9, 0);
    assert_events(e, (const char *const[]){
                         "E:JSON message size limit exceeded",
                         NULL });
    events_free(e);
    g_string_free(big, TRUE);
}

static void test_depth_limit(void **state)
{
    GString *in = g_string_new(NULL);
    Events *e;

    (void)state;
    /* 1024 levels are fine with the default limit (QEMU's). */
    for (int i = 0; i < 1023; i++) {
        g_string_append(in, "[");
    }
    g_string_append(in, "{}");
    for (int i = 0; i < 1023; i++) {
        g_string_append(in, "]");
    }
    e = run(in->str);
    assert_int_equal(e->ev->len, 1);
    assert_true(g_str_has_prefix(g_ptr_array_index(e->ev, 0), "M:[[[["));
    events_free(e);

    /* 1025 are not; the rest of that value is skipped. */
    g_string_truncate(in, 0);
    for (int i = 0; i < 3000; i++) {
        g_string_append(in, i % 2 ? "[" : "{\"k\":");
    }
    for (int i = 2999; i >= 0; i--) {
        g_string_append(in, i % 2 ? "]" : "}");
    }
    g_string_append(in, " {\"next\": 1}");
    e = run(in->str);
    assert_events(e, (const char *const[]){
                         "E:JSON nesting depth limit exceeded",
                         "M:{\"next\": 1}", NULL });
    events_free(e);
    /* A smaller configured limit. */
    e = run_cuts("[[[1]]] [[[[1]]]] 7", 19, NULL, 0, 0, 3);
    assert_events(e, (const char *const[]){
                         "M:[[[1]]]", "E:JSON nesting depth limit exceeded",
                         "M:7", NULL });
    events_free(e);
    g_string_free(in, TRUE);
}

static void test_flush(void **state)
{
    Events *e = events_new();
    JsonStream *s = json_stream_new(0, 0, on_msg, on_err, e);

    (void)state;
    /* A top-level number is only complete when something follows it. */
    json_stream_feed(s, "42", 2);
    assert_int_equal(e->ev->len, 0);
    json_stream_flush(s);
    assert_events(e, (const char *const[]){ "M:42", NULL });
    /* The stream is usable after a flush. */
    json_stream_feed(s, "[true]", 6);
    assert_int_equal(e->ev->len, 2);
    json_stream_free(s);
    events_free(e);
}

static void test_numbers(void **state)
{
    (void)state;
    /*
     * Beyond int64 stays a large number instead of wrapping, echoed exactly
     * up to UINT64_MAX as QEMU does; beyond that it is a double.  (A
     * double equal to one of the last literals seen prints as that
     * literal: 2^64 would print as a recent 18446744073709551615.)
     */
    check("[9223372036854775807, 12345678901234567890, -0.0, 1.5, "
          "18446744073709551615, 123456789012345678901, "
          "-9223372036854775809, 1e19]",
          (const char *const[]){ "M:[9223372036854775807, "
                                 "12345678901234567890, -0, 1.5, "
                                 "18446744073709551615, "
                                 "1.2345678901234568e+20, "
                                 "-9.2233720368547758e+18, 1e+19]", NULL });
}

static void test_serialise(void **state)
{
    JsonObject *o = json_object_new();
    JsonObject *v = json_object_new();
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    char *txt;

    (void)state;
    /* QEMU's member order (its hash-bucket order), whatever we insert. */
    json_object_set_int_member(v, "major", 7);
    json_object_set_int_member(v, "minor", 2);
    json_object_set_int_member(v, "micro", 0);
    json_object_set_object_member(o, "return", v);
    json_object_set_string_member(o, "id", "\x01\xc3\xa9\xf0\x9f\x98\x80\"");
    json_node_take_object(n, o);
    txt = json_to_string_compact(n);
    assert_string_equal(txt, "{\"return\": {\"micro\": 0, \"minor\": 2, "
                             "\"major\": 7}, \"id\": "
                             "\"\\u0001\\u00E9\\uD83D\\uDE00\\\"\"}");
    g_free(txt);
    json_node_unref(n);
}

static void check_text(const char *text, const char *expect)
{
    GError *err = NULL;
    JsonNode *n = json_parse_text(text, strlen(text), &err);

    if (g_str_has_prefix(expect, "M:")) {
        char *txt;

        assert_non_null(n);
        assert_null(err);
        txt = json_to_string_compact(n);
        assert_string_equal(txt, expect + 2);
        g_free(txt);
        json_node_unref(n);
    } else {
        assert_null(n);
        assert_non_null(err);
        assert_string_equal(err->message, expect + 2);
        g_error_free(err);
    }
}

/* One complete text, as the command line's JSON arguments are parsed. */
static void test_parse_text(void **state)
{
    (void)state;
    check_text(" {'driver': 'null-co', \"size\": 512} ",
               "M:{\"driver\": \"null-co\", \"size\": 512}");
    check_text("{\"driver\":", "E:JSON parse error, premature EOI");
    check_text("{\"driver\": xyz}",
               "E:JSON parse error, invalid keyword 'xyz'");
    check_text("{\"a\": 1,}", "E:JSON parse error, expecting value");
    check_text("{\"a\": 1} {}", "E:Expecting at most one JSON value");
    check_text("{\"a\": 1}}", "E:Expecting at most one JSON value");
    check_text("42", "M:42");
    check_text("  ", "E:Expecting a JSON value");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_garbage_recovery),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_flush),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_serialise),
        cmocka_unit_test(test_parse_text),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
