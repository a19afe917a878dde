/*
 * The QMP monitor over real sockets: greeting, negotiation, envelope
 * errors with QEMU's wording, ordering with commands that yield, events,
 * the session cap, back-pressure, clients leaving mid-command, quit.
 *
 * The test links the monitor with its own command table (the generated
 * table needs every handler of the daemon): the protocol commands run
 * through the real handlers of monitor/qmp-cmds-core.c, plus a few test
 * commands that sleep, return big replies, or allow OOB.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "monitor/monitor.h"
#include "qapi/qapi-commands.h"
#include "qapi/qapi-types.h"
#include "qapi/qapi-util.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine.h"
#include "util/runstate.h"

/* ---- the command table ---- */

static int sleeps_done;

static void m_caps(JsonNode *args, JsonNode **ret, GError **errp)
{
    JsonNode *empty = args ? NULL : qapi_empty_object_node();
    q_obj_qmp_capabilities_arg *a =
        qapi_q_obj_qmp_capabilities_arg_from_json(args ? args : empty,
                                                  false, errp);

    if (empty) {
        json_node_unref(empty);
    }
    if (!a) {
        return;
    }
    qmp_qmp_capabilities(a, errp);
    qapi_free_q_obj_qmp_capabilities_arg(a);
    *ret = qapi_empty_object_node();
}

static void m_version(JsonNode *args, JsonNode **ret, GError **errp)
{
    VersionInfo *v;

    if (!qapi_check_no_args(args, errp)) {
        return;
    }
    v = qmp_query_version(errp);
    *ret = qapi_VersionInfo_to_json(v);
    qapi_free_VersionInfo(v);
}

static void m_commands(JsonNode *args, JsonNode **ret, GError **errp)
{
    CommandInfoList *l;

    if (!qapi_check_no_args(args, errp)) {
        return;
    }
    l = qmp_query_commands(errp);
    *ret = qapi_CommandInfoList_to_json(l);
    qapi_free_CommandInfoList(l);
}

static void m_quit(JsonNode *args, JsonNode **ret, GError **errp)
{
    if (qapi_check_no_args(args, errp)) {
        qmp_quit(errp);
    }
}

/* Yields for 50 ms: the next request must wait for it. */
static void m_sleep(JsonNode *args, JsonNode **ret, GError **errp)
{
    co_sleep_ns(50 * 1000 * 1000);
    sleeps_done++;
    *ret = qapi_str_to_json("slept");
}

/* A 256 KiB reply, to fill a client's socket and our queue. */
static void m_big(JsonNode *args, JsonNode **ret, GError **errp)
{
    char *s = g_malloc(256 * 1024 + 1);

    memset(s, 'x', 256 * 1024);
    s[256 * 1024] = '\0';
    *ret = qapi_str_to_json(s);
    g_free(s);
}

static void m_oob(JsonNode *args, JsonNode **ret, GError **errp)
{
    *ret = qapi_str_to_json("oob");
}

const QmpCommand qmp_commands[] = {
    { "qmp_capabilities", m_caps, false },
    { "query-version", m_version, false },
    { "query-commands", m_commands, false },
    { "quit", m_quit, false },
    { "test-sleep", m_sleep, false },
    { "test-big", m_big, false },
    { "test-oob", m_oob, true },
    { NULL, NULL, false },
};

const QmpCommand *qmp_find_command(const char *name)
{
    for (const QmpCommand *c = qmp_commands; c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

/* ---- a blocking-free test client driven alongside the loop ---- */

static char sock_path[256];

typedef struct Client {
    int fd;
    GString *in;
} Client;

static Client *client_new(void)
{
    GError *err = NULL;
    Client *c = g_new0(Client, 1);

    c->fd = sock_connect_unix(sock_path, &err);
    assert_non_null(c);
    assert_true(c->fd >= 0);
    assert_int_equal(sock_set_nonblocking(c->fd), 0);
    c->in = g_string_new(NULL);
    return c;
}

static void client_free(Client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    g_string_free(c->in, TRUE);
    g_free(c);
}

static void client_send(Client *c, const char *s)
{
    size_t len = strlen(s), done = 0;

    while (done < len) {
        ssize_t n = send(c->fd, s + done, len - done, MSG_NOSIGNAL);

        if (n < 0 && errno == EAGAIN) {
            aio_poll(false);
            continue;
        }
        assert_true(n > 0);
        done += n;
    }
}

/* Pull what is available; false at end of stream. */
static bool client_pull(Client *c)
{
    char buf[65536];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

    if (n > 0) {
        g_string_append_len(c->in, buf, n);
    }
    return n != 0;
}

/* The next line without its CRLF (which must be there), or NULL at EOF. */
static char *client_line(Client *c)
{
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;

    for (;;) {
        char *nl = memchr(c->in->str, '\n', c->in->len);

        if (nl) {
            size_t len = nl - c->in->str;
            char *line;

            assert_true(len > 0 && c->in->str[len - 1] == '\r');
            line = g_strndup(c->in->str, len - 1);
            g_string_erase(c->in, 0, len + 1);
            return line;
        }
        if (!client_pull(c)) {
            return NULL;
        }
        aio_poll(false);
        if (g_get_monotonic_time() > deadline) {
            fail_msg("timeout waiting for a reply");
        }
        g_usleep(200);
    }
}

static void expect(Client *c, const char *line)
{
    char *got = client_line(c);

    assert_non_null(got);
    assert_string_equal(got, line);
    g_free(got);
}

static void run_loop_ms(int ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;

    while (g_get_monotonic_time() < end) {
        aio_poll(false);
        g_usleep(200);
    }
}

static const char *greeting =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": %d, \"minor\": %d, "
    "\"major\": %d}, \"package\": \"%s\"}, \"capabilities\": "
    "[\"oob\"]}}";

static char *greeting_text(void)
{
    int ma, mi, mc;
    const char *pkg;

    monitor_get_version(&ma, &mi, &mc, &pkg);
    return g_strdup_printf(greeting, mc, mi, ma, pkg);
}

static Client *client_greeted(void)
{
    Client *c = client_new();
    char *g = greeting_text();

    expect(c, g);
    g_free(g);
    return c;
}

static Client *client_negotiated(void)
{
    Client *c = client_greeted();

    client_send(c, "{\"execute\": \"qmp_capabilities\"}");
    expect(c, "{\"return\": {}}");
    return c;
}

/* ---- tests ---- */

static void test_protocol(void **state)
{
    Client *c = client_greeted();
    char *ver;
    int ma, mi, mc;
    const char *pkg;

    (void)state;
    monitor_get_version(&ma, &mi, &mc, &pkg);
    ver = g_strdup_printf("{\"return\": {\"qemu\": {\"micro\": %d, "
                          "\"minor\": %d, \"major\": %d}, \"package\": "
                          "\"%s\"}, \"id\": 9}", mc, mi, ma, pkg);

    client_send(c, "{\"execute\": \"query-version\"}\n");
    expect(c, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": "
              "\"Expecting capabilities negotiation with "
              "'qmp_capabilities'\"}}");
    client_send(c, "{\"execute\": \"nosuch\", \"id\": 1}");
    expect(c, "{\"id\": 1, \"error\": {\"class\": \"CommandNotFound\", "
              "\"desc\": \"Expecting capabilities negotiation with "
              "'qmp_capabilities'\"}}");
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"arguments\": "
                   "{\"enable\": [\"bogus\"]}}");
    {
        char *l = client_line(c);

        assert_non_null(strstr(l, "\"GenericError\""));
        g_free(l);
    }
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"id\": \"n\"}");
    expect(c, "{\"return\": {}, \"id\": \"n\"}");
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"id\": 2}");
    expect(c, "{\"id\": 2, \"error\": {\"class\": \"CommandNotFound\", "
              "\"desc\": \"Capabilities negotiation is already complete, "
              "command ignored\"}}");
    client_send(c, "{\"execute\": \"foo\", \"id\": 3}");
    expect(c, "{\"id\": 3, \"error\": {\"class\": \"CommandNotFound\", "
              "\"desc\": \"The command foo has not been found\"}}");
    client_send(c, "[1, 2]\n\"str\"\n{\"id\": 4}\n{\"execute\": 1, "
                   "\"id\": 5}\n");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP "
              "input must be a JSON object\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP "
              "input must be a JSON object\"}}");
    expect(c, "{\"id\": 4, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input lacks member 'execute'\"}}");
    expect(c, "{\"id\": 5, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input member 'execute' must be a string\"}}");
    client_send(c, "{\"execute\": \"query-version\", \"exec-oob\": "
                   "\"query-version\", \"id\": 6}");
    expect(c, "{\"id\": 6, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input member 'exec-oob' is unexpected\"}}");
    client_send(c, "{\"execute\": \"query-version\", \"arguments\": [], "
                   "\"id\": 7}{\"execute\": \"query-version\", \"foo\": 1, "
                   "\"id\": 8}");
    expect(c, "{\"id\": 7, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input member 'arguments' must be an "
              "object\"}}");
    expect(c, "{\"id\": 8, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input member 'foo' is unexpected\"}}");
    client_send(c, "{\"execute\": \"query-version\", \"id\": 9,\n"
                   "\"arguments\": {}}");
    expect(c, ver);
    client_send(c, "{\"execute\": \"query-version\", \"arguments\": "
                   "{\"x\": 1}, \"id\": 10}");
    expect(c, "{\"id\": 10, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"Parameter 'x' is unexpected\"}}");
    client_send(c, "}\n{\"a\": xyz}\n@");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON "
              "parse error, expecting value\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON "
              "parse error, invalid keyword 'xyz'\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON "
              "parse error, stray '@'\"}}");
    /* Byte by byte. */
    {
        const char *req = "{'execute':\n'query-commands', 'id': [null]}";

        for (const char *p = req; *p; p++) {
            char one[2] = { *p, 0 };

            client_send(c, one);
            run_loop_ms(1);
        }
        expect(c, "{\"return\": [{\"name\": \"test-oob\"}, {\"name\": "
                  "\"test-big\"}, {\"name\": \"test-sleep\"}, {\"name\": "
                  "\"quit\"}, {\"name\": \"query-commands\"}, {\"name\": "
                  "\"query-version\"}, {\"name\": \"qmp_capabilities\"}], "
                  "\"id\": [null]}");
    }
    g_free(ver);
    client_free(c);
}

static void test_oob(void **state)
{
    Client *c = client_greeted();

    (void)state;
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"arguments\": "
                   "{\"enable\": [\"oob\"]}}");
    expect(c, "{\"return\": {}}");
    client_send(c, "{\"exec-oob\": \"query-version\", \"id\": 1}");
    expect(c, "{\"id\": 1, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"The command query-version does not support "
              "OOB\"}}");
    client_send(c, "{\"exec-oob\": \"test-oob\", \"execute\": \"test-oob\", "
                   "\"id\": 2}");
    expect(c, "{\"id\": 2, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input member 'execute' clashes with "
              "'exec-oob'\"}}");
    client_send(c, "{\"exec-oob\": \"test-oob\", \"id\": 3}");
    expect(c, "{\"return\": \"oob\", \"id\": 3}");
    client_send(c, "{\"exec-oob\": \"qmp_capabilities\", \"id\": 4}");
    expect(c, "{\"id\": 4, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"The command qmp_capabilities does not support "
              "OOB\"}}");
    client_free(c);
}

/* Requests are answered in order even when one of them yields. */
static void test_ordering(void **state)
{
    Client *a = client_negotiated();
    Client *b = client_negotiated();
    int before = sleeps_done;

    (void)state;
    client_send(a, "{\"execute\": \"test-sleep\", \"id\": 1}"
                   "{\"execute\": \"test-oob\", \"id\": 2}");
    /* While a's command sleeps, b is served. */
    client_send(b, "{\"execute\": \"test-oob\", \"id\": \"b\"}");
    expect(b, "{\"return\": \"oob\", \"id\": \"b\"}");
    assert_int_equal(sleeps_done, before);
    expect(a, "{\"return\": \"slept\", \"id\": 1}");
    expect(a, "{\"return\": \"oob\", \"id\": 2}");
    client_free(a);
    client_free(b);
}

static void test_events(void **state)
{
    Client *neg = client_negotiated();
    Client *raw = client_greeted();
    JsonObject *data = json_object_new();
    char *line;

    (void)state;
    json_object_set_string_member(data, "id", "job0");
    json_object_set_string_member(data, "status", "running");
    qapi_event_emit("JOB_STATUS_CHANGE", data);
    json_object_unref(data); /* the data is only borrowed */
    qapi_event_emit("RESUME", NULL);

    line = client_line(neg);
    assert_true(g_str_has_prefix(line, "{\"timestamp\": {\"seconds\": "));
    assert_non_null(strstr(line, "\"microseconds\": "));
    assert_true(g_str_has_suffix(line, "}, \"event\": \"JOB_STATUS_CHANGE\", "
                                       "\"data\": {\"status\": \"running\", "
                                       "\"id\": \"job0\"}}"));
    g_free(line);
    line = client_line(neg);
    assert_true(g_str_has_suffix(line, "}, \"event\": \"RESUME\"}"));
    g_free(line);
    /* Not negotiated: no events; the next line is a reply. */
    client_send(raw, "{\"execute\": \"query-version\", \"id\": 1}");
    line = client_line(raw);
    assert_true(g_str_has_prefix(line, "{\"id\": 1, \"error\""));
    g_free(line);
    client_free(neg);
    client_free(raw);
}

/* A client that does not read does not hold up anyone else. */
static void test_slow_reader(void **state)
{
    Client *slow = client_negotiated();
    Client *fast = client_negotiated();
    GString *req = g_string_new(NULL);
    int n = 100; /* 25 MiB of replies: over the back-pressure mark */

    (void)state;
    for (int i = 0; i < n; i++) {
        g_string_append_printf(req, "{\"execute\": \"test-big\", \"id\": "
                                    "%d}", i);
    }
    client_send(slow, req->str);
    run_loop_ms(100);
    for (int i = 0; i < 5; i++) {
        client_send(fast, "{\"execute\": \"test-oob\"}");
        expect(fast, "{\"return\": \"oob\"}");
    }
    for (int i = 0; i < n; i++) {
        char *line = client_line(slow);
        char *tail = g_strdup_printf("\"id\": %d}", i);

        assert_non_null(line);
        assert_true(strlen(line) > 256 * 1024);
        assert_true(g_str_has_suffix(line, tail));
        g_free(tail);
        g_free(line);
    }
    g_string_free(req, TRUE);
    client_free(slow);
    client_free(fast);
}

/* A client that never reads while events pile up is disconnected. */
static void test_event_flood(void **state)
{
    Client *c = client_negotiated();
    Client *other = client_negotiated();
    JsonObject *data = json_object_new();
    char *blob = g_malloc(1024 * 1024 + 1);
    size_t got = 0;
    char *line;
    int lines = 0;

    (void)state;
    memset(blob, 'e', 1024 * 1024);
    blob[1024 * 1024] = '\0';
    json_object_set_string_member(data, "blob", blob);
    for (int i = 0; i < 100; i++) { /* 100 MiB: over the 64 MiB cap */
        qapi_event_emit("TEST_FLOOD", data);
        /* The other client reads and keeps up. */
        line = client_line(other);
        assert_non_null(strstr(line, "TEST_FLOOD"));
        g_free(line);
    }
    json_object_unref(data);
    g_free(blob);
    /*
     * c gets what its socket buffer took before the cap (possibly only
     * part of a line), then end of stream.
     */
    while ((line = client_line(c))) {
        got += strlen(line);
        lines++;
        g_free(line);
    }
    assert_true(lines < 100);
    assert_true(got <= 65 * 1024 * 1024);
    /* The other session is unaffected. */
    client_send(other, "{\"execute\": \"test-oob\"}");
    expect(other, "{\"return\": \"oob\"}");
    client_free(c);
    client_free(other);
}

/*
 * A client that leaves mid-command: the command completes, the reply is
 * dropped, the session goes away (its slot is free again) and nothing
 * leaks (ASan).
 */
static void test_disconnect_mid_command(void **state)
{
    MonitorLimits lim = { .max_sessions = 1 };
    Client *c, *d;
    int before = sleeps_done;
    char *line;

    (void)state;
    run_loop_ms(200); /* let earlier tests' sessions go */
    monitor_set_limits(&lim);
    c = client_negotiated();
    client_send(c, "{\"execute\": \"test-sleep\"}{\"execute\": "
                   "\"test-sleep\"}");
    run_loop_ms(10);
    close(c->fd);
    c->fd = -1;

    /* The cap holds while the session is still busy. */
    d = client_new();
    line = client_line(d);
    assert_string_equal(line, "{\"error\": {\"class\": \"GenericError\", "
                              "\"desc\": \"Too many QMP sessions (limit "
                              "1)\"}}");
    g_free(line);
    assert_null(client_line(d));
    client_free(d);

    while (sleeps_done < before + 1) {
        run_loop_ms(5);
    }
    run_loop_ms(200);
    /* Requests already received still run, in order; then it is gone. */
    assert_true(sleeps_done >= before + 1);
    d = client_greeted();
    client_free(d);
    client_free(c);
    lim.max_sessions = 0;
    monitor_set_limits(&lim);
}

static void test_limits(void **state)
{
    MonitorLimits lim = { .max_message_size = 1000, .max_depth = 4 };
    Client *c;
    GString *big = g_string_new("{\"execute\": \"query-version\", "
                                "\"arguments\": {\"x\": \"");

    (void)state;
    monitor_set_limits(&lim); /* applies to new sessions */
    c = client_negotiated();
    for (int i = 0; i < 100000; i++) {
        g_string_append(big, "0123456789");
    }
    g_string_append(big, "\"}}{\"execute\": \"test-oob\", \"id\": 1}"
                         "[[[[[[]]]]]]{\"execute\": \"test-oob\", \"id\": 2}");
    client_send(c, big->str);
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON "
              "message size limit exceeded\"}}");
    expect(c, "{\"return\": \"oob\", \"id\": 1}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON "
              "nesting depth limit exceeded\"}}");
    expect(c, "{\"return\": \"oob\", \"id\": 2}");
    client_free(c);
    g_string_free(big, TRUE);
    lim.max_message_size = 0;
    lim.max_depth = 0;
    monitor_set_limits(&lim);
}

static void test_quit(void **state)
{
    Client *c = client_negotiated();

    (void)state;
    assert_null(runstate_shutdown_requested());
    client_send(c, "{\"execute\": \"quit\", \"id\": \"q\"}");
    expect(c, "{\"return\": {}, \"id\": \"q\"}");
    assert_string_equal(runstate_shutdown_requested(), "host-qmp-quit");
    client_free(c);
}

static int setup(void **state)
{
    GError *err = NULL;
    char *dir = g_dir_make_tmp("test-qmp-XXXXXX", &err);
    int fd;

    (void)state;
    assert_non_null(dir);
    assert_true(aio_init(&err));
    snprintf(sock_path, sizeof(sock_path), "%s/qmp.sock", dir);
    g_free(dir);
    fd = sock_listen_unix(sock_path, 0600, &err);
    assert_true(fd >= 0);
    assert_true(monitor_add_listener(fd, "test", &err));
    return 0;
}

static int teardown(void **state)
{
    char *dir = g_path_get_dirname(sock_path);

    (void)state;
    monitor_cleanup();
    unlink(sock_path);
    rmdir(dir);
    g_free(dir);
    aio_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol),
        cmocka_unit_test(test_oob),
        cmocka_unit_test(test_ordering),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_slow_reader),
        cmocka_unit_test(test_event_flood),
        cmocka_unit_test(test_disconnect_mid_command),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_quit),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
