/*
 * blockd: the storage daemon.  Its command line is qemu-storage-daemon
 * 7.2's: options are processed in the order given (a --blockdev must come
 * before the --export that uses it), each failing with
 * "blockd: <option> <argument>: <message>" and exit status 1.
 *
 * Like qemu-storage-daemon, the command line is read twice: a first pass
 * handles --help, --version, --daemonize, --pidfile and syntax errors
 * before anything is created; the second pass builds the daemon.
 */
#include <errno.h>
#include <getopt.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block.h"
#include "block/block_int.h"
#include "block/export/export.h"
#include "block/jobs/job.h"
#include "daemon/chardev.h"
#include "daemon/daemonize.h"
#include "daemon/pidfile.h"
#include "monitor/monitor.h"
#include "qapi/qapi-commands.h"
#include "qapi/qapi-types.h"
#include "util/aio.h"
#include "util/error.h"
#include "util/json-stream.h"
#include "util/keyval.h"
#include "util/runstate.h"

#ifndef BLOCKD_VERSION
#define BLOCKD_VERSION "0.1.0"
#endif

enum {
    OPTION_BLOCKDEV = 256,
    OPTION_CHARDEV,
    OPTION_DAEMONIZE,
    OPTION_EXPORT,
    OPTION_MONITOR,
    OPTION_NBD_SERVER,
    OPTION_OBJECT,
    OPTION_PIDFILE,
};

static const struct option long_options[] = {
    { "blockdev", required_argument, NULL, OPTION_BLOCKDEV },
    { "chardev", required_argument, NULL, OPTION_CHARDEV },
    { "daemonize", no_argument, NULL, OPTION_DAEMONIZE },
    { "export", required_argument, NULL, OPTION_EXPORT },
    { "help", no_argument, NULL, 'h' },
    { "monitor", required_argument, NULL, OPTION_MONITOR },
    { "nbd-server", required_argument, NULL, OPTION_NBD_SERVER },
    { "object", required_argument, NULL, OPTION_OBJECT },
    { "pidfile", required_argument, NULL, OPTION_PIDFILE },
    { "trace", required_argument, NULL, 'T' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

/* '-': non-options come back in order as 1; ':': we print the errors. */
static const char short_options[] = "-:hT:V";

static bool opt_daemonize;
static const char *opt_pidfile;

static void help(void)
{
    printf(
"Usage: blockd [options]\n"
"Block storage daemon (qemu-storage-daemon compatible)\n"
"\n"
"  -h, --help             display this help and exit\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                         accepted for compatibility; tracing is not\n"
"                         supported and the option is ignored\n"
"  -V, --version          output version information and exit\n"
"\n"
"  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]\n"
"             [,cache.direct=on|off][,cache.no-flush=on|off]\n"
"             [,read-only=on|off][,auto-read-only=on|off]\n"
"             [,force-share=on|off][,detect-zeroes=on|off|unmap]\n"
"             [,driver specific parameters...]\n"
"                         configure a block backend (or a JSON object)\n"
"\n"
"  --chardev socket,id=<id>,path=<path>,server=on[,wait=on|off]\n"
"  --chardev socket,id=<id>[,host=<host>],port=<port>,server=on\n"
"            [,wait=on|off]\n"
"                         a listening socket for a QMP monitor\n"
"\n"
"  --daemonize            daemonize the process, and have the parent exit\n"
"                         once startup is complete\n"
"\n"
"  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]\n"
"           [,writable=on|off][,bitmap=<name>]\n"
"                         export the specified block node over NBD\n"
"                         (requires --nbd-server)\n"
"\n"
"  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]\n"
"                         configure a QMP monitor\n"
"\n"
"  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>\n"
"               [,max-connections=<n>]\n"
"  --nbd-server addr.type=unix,addr.path=<path>[,max-connections=<n>]\n"
"                         start an NBD server for exporting block nodes\n"
"\n"
"  --object <type>[,<property>=<value>...]\n"
"                         no object types are supported yet\n"
"\n"
"  --pidfile <path>       write process ID to a file after startup\n"
"\n");
}

static void version(void)
{
    printf("blockd version " BLOCKD_VERSION "\n"
           "Speaks the QMP of qemu-storage-daemon 7.2 (block subset)\n");
}

/* The option and argument as the user typed them, for error messages. */
static char *option_location(char **argv)
{
    if (optarg && optind >= 2 && optarg == argv[optind - 1]) {
        return g_strdup_printf("%s %s", argv[optind - 2], argv[optind - 1]);
    }
    return g_strdup(argv[optind - 1]);
}

/* Print getopt's complaint in glibc's words, with our program name. */
static void report_getopt_error(int c, char **argv)
{
    const char *arg = argv[optind - 1];

    if (c == ':') {
        if (optopt >= 256 || optopt == 0) {
            error_report("option '%s' requires an argument", arg);
        } else {
            error_report("option requires an argument -- '%c'", optopt);
        }
    } else if (optopt >= 256) {
        error_report("option '%.*s' doesn't allow an argument",
                     (int)strcspn(arg, "="), arg);
    } else if (optopt) {
        error_report("invalid option -- '%c'", optopt);
    } else {
        error_report("unrecognized option '%s'", arg);
    }
}

static void shutdown_all(void);

/* A setup step failed: undo what exists (flushing any opened image) and
 * exit as qemu-storage-daemon does. */
static void G_GNUC_NORETURN fail(const char *loc, GError *err)
{
    error_report("%s: %s", loc, err->message);
    g_error_free(err);
    shutdown_all();
    exit(EXIT_FAILURE);
}

/* ---- argument parsing: keyval, or JSON when it starts with '{' ---- */

/*
 * QEMU's keyval treats a bare "help" or "?" element as a request for help
 * (only some options answer it; ours do not).  It is reported only when
 * the rest of the argument parses, and an element it replaces at the
 * start takes the implied key with it.  True, with errp set, if `arg`
 * asks for help or is malformed around it.
 */
static bool keyval_wants_help(const char *arg, const char *implied_key,
                              GError **errp)
{
    GString *rest = g_string_new(NULL);
    bool help = false, help_first = false, first = true;
    const char *p = arg;

    while (*p) {
        size_t len = strcspn(p, "=,");
        const char *end;

        if (len && p[len] != '=') {
            if ((len == 4 && !strncmp(p, "help", 4)) ||
                (len == 1 && *p == '?')) {
                help = true;
                help_first |= first;
                first = false;
                p += len;
                if (*p == ',') {
                    p++;
                }
                continue;
            }
            end = p + len; /* a bare value: no ",," escape */
        } else {
            end = p + len + (p[len] == '=');
            while (*end && !(end[0] == ',' && end[1] != ',')) {
                end += end[0] == ',' ? 2 : 1;
            }
        }
        g_string_append_len(rest, p, end - p);
        p = end;
        if (*p == ',') {
            g_string_append_c(rest, ',');
            p++;
        }
        first = false;
    }
    if (help) {
        JsonNode *node = keyval_parse(rest->str,
                                      help_first ? NULL : implied_key, errp);
        if (node) {
            json_node_unref(node);
            error_setg(errp, "Help is not available for this option");
        }
    }
    g_string_free(rest, TRUE);
    return help;
}

static JsonNode *parse_arg(const char *arg, const char *implied_key,
                           bool *keyval, GError **errp)
{
    if (arg[0] != '{') {
        *keyval = true;
        if (keyval_wants_help(arg, implied_key, errp)) {
            return NULL;
        }
        return keyval_parse(arg, implied_key, errp);
    }
    *keyval = false;
    /* QEMU's JSON parser and messages ("JSON parse error, ...", "Expecting
     * at most one JSON value"). */
    return json_parse_text(arg, strlen(arg), errp);
}

/* ---- --blockdev, --export, --nbd-server: run as QMP handlers do ---- */

typedef struct SetupCo {
    const char *arg;
    GError *err;
} SetupCo;

/*
 * The image file a --blockdev names: its own "filename", or that of the
 * first child given inline or by reference.  For the hint QEMU prints
 * under a lock conflict (the file driver's error carries no file name).
 */
static const char *options_filename(JsonObject *o, int depth)
{
    JsonNode *fn = json_object_get_member(o, "filename");
    if (fn && JSON_NODE_HOLDS_VALUE(fn) &&
        json_node_get_value_type(fn) == G_TYPE_STRING) {
        return json_node_get_string(fn);
    }
    if (depth > 16) {
        return NULL;
    }
    GList *names = json_object_get_members(o);
    const char *found = NULL;
    for (GList *l = names; l && !found; l = l->next) {
        JsonNode *v = json_object_get_member(o, l->data);
        if (JSON_NODE_HOLDS_OBJECT(v)) {
            found = options_filename(json_node_get_object(v), depth + 1);
        } else if (JSON_NODE_HOLDS_VALUE(v) &&
                   json_node_get_value_type(v) == G_TYPE_STRING &&
                   strcmp(l->data, "driver") && strcmp(l->data, "node-name")) {
            BlockDriverState *bs = bdrv_find_node(json_node_get_string(v));
            if (bs) {
                found = bdrv_skip_filters(bs)->filename;
            }
        }
    }
    g_list_free(names);
    return found && *found ? found : NULL;
}

static void add_lock_hint(GError *err, JsonNode *options)
{
    if (!err || !strstr(err->message, "Failed to get ") ||
        !g_str_has_suffix(err->message, " lock") ||
        !JSON_NODE_HOLDS_OBJECT(options)) {
        return;
    }
    const char *file = options_filename(json_node_get_object(options), 0);
    if (file) {
        char *msg = g_strdup_printf("%s\nIs another process using the "
                                    "image [%s]?",
                                    err->message, file);
        g_free(err->message);
        err->message = msg;
    }
}

static void coroutine_fn blockdev_co(void *opaque)
{
    SetupCo *s = opaque;
    bool keyval;
    JsonNode *node = parse_arg(s->arg, "driver", &keyval, &s->err);

    if (!node) {
        return;
    }
    BlockdevOptions *opts = qapi_BlockdevOptions_from_json(node, keyval,
                                                           &s->err);
    if (opts) {
        qmp_blockdev_add(opts, &s->err);
        qapi_free_BlockdevOptions(opts);
        add_lock_hint(s->err, node);
    }
    json_node_unref(node);
}

static void coroutine_fn export_co(void *opaque)
{
    SetupCo *s = opaque;

    if (s->arg[0] != '{') {
        if (!keyval_wants_help(s->arg, "type", &s->err)) {
            blk_exp_add_keyval(s->arg, &s->err);
        }
        return;
    }
    bool keyval;
    JsonNode *node = parse_arg(s->arg, "type", &keyval, &s->err);
    if (!node) {
        return;
    }
    BlockExportOptions *opts =
        qapi_BlockExportOptions_from_json(node, false, &s->err);
    json_node_unref(node);
    if (opts) {
        blk_exp_add(opts, &s->err);
        qapi_free_BlockExportOptions(opts);
    }
}

static void coroutine_fn nbd_server_co(void *opaque)
{
    SetupCo *s = opaque;

    if (s->arg[0] != '{') {
        if (!keyval_wants_help(s->arg, NULL, &s->err)) {
            nbd_server_start_keyval(s->arg, &s->err);
        }
        return;
    }
    bool keyval;
    JsonNode *node = parse_arg(s->arg, NULL, &keyval, &s->err);
    if (!node) {
        return;
    }
    NbdServerOptions *o = qapi_NbdServerOptions_from_json(node, false,
                                                          &s->err);
    json_node_unref(node);
    if (o) {
        nbd_server_start(o->addr, o->has_tls_creds ? o->tls_creds : NULL,
                         o->has_tls_authz ? o->tls_authz : NULL,
                         o->has_max_connections ? o->max_connections : 0,
                         &s->err);
        qapi_free_NbdServerOptions(o);
    }
}

static void run_setup(CoroutineEntry *fn, const char *arg, const char *loc)
{
    SetupCo s = { .arg = arg };

    coroutine_run_sync(fn, &s);
    if (s.err) {
        fail(loc, s.err);
    }
}

/* ---- --monitor (MonitorOptions: id, mode, pretty, chardev) ---- */

/* A string member; *out NULL if absent.  JSON input must be a string. */
static bool member_str(JsonObject *o, const char *name, const char **out,
                       GError **errp)
{
    JsonNode *n = json_object_get_member(o, name);

    *out = NULL;
    if (!n) {
        return true;
    }
    if (!JSON_NODE_HOLDS_VALUE(n) ||
        json_node_get_value_type(n) != G_TYPE_STRING) {
        error_setg(errp, "Invalid parameter type for '%s', expected: string",
                   name);
        return false;
    }
    *out = json_node_get_string(n);
    return true;
}

static bool add_monitor(const char *arg, GError **errp)
{
    bool keyval;
    g_autoptr(JsonNode) node = parse_arg(arg, "chardev", &keyval, errp);
    if (!node) {
        return false;
    }
    JsonObject *o = json_node_get_object(node);
    const char *id, *mode, *chardev;

    /* Members in the schema's order, then unknown ones: QEMU's order. */
    if (!member_str(o, "id", &id, errp) ||
        !member_str(o, "mode", &mode, errp)) {
        return false;
    }
    if (mode && strcmp(mode, "readline") != 0 && strcmp(mode, "control")) {
        error_setg(errp, "Parameter 'mode' does not accept value '%s'", mode);
        return false;
    }
    JsonNode *pretty = json_object_get_member(o, "pretty");
    if (pretty) {
        bool ok;
        if (keyval) {
            const char *v = json_node_get_string(pretty);
            ok = v && (!strcmp(v, "on") || !strcmp(v, "off"));
            if (!ok) {
                error_setg(errp, "Parameter 'pretty' expects 'on' or 'off'");
            }
        } else {
            ok = JSON_NODE_HOLDS_VALUE(pretty) &&
                 json_node_get_value_type(pretty) == G_TYPE_BOOLEAN;
            if (!ok) {
                error_setg(errp, "Invalid parameter type for 'pretty', "
                                 "expected: boolean");
            }
        }
        if (!ok) {
            return false;
        }
        /* Accepted; replies stay compact (still valid QMP for clients). */
    }
    if (!member_str(o, "chardev", &chardev, errp)) {
        return false;
    }
    if (!chardev) {
        error_setg(errp, "Parameter 'chardev' is missing");
        return false;
    }
    GList *names = json_object_get_members(o);
    for (GList *l = names; l; l = l->next) {
        const char *n = l->data;
        if (strcmp(n, "id") && strcmp(n, "mode") && strcmp(n, "pretty") &&
            strcmp(n, "chardev")) {
            error_setg(errp, "Parameter '%s' is unexpected", n);
            g_list_free(names);
            return false;
        }
    }
    g_list_free(names);
    if (mode && !strcmp(mode, "readline")) {
        error_setg(errp, "Only QMP is supported");
        return false;
    }

    int fd = chardev_take_listener(chardev, errp);
    if (fd < 0) {
        return false;
    }
    return monitor_add_listener(fd, id ? id : chardev, errp);
}

/* ---- --object ---- */

/* QEMU 7.2's ObjectType values: known, but not implemented here. */
static const char *const qom_types[] = {
    "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus",
    "can-host-socketcan", "colo-compare", "cryptodev-backend",
    "cryptodev-backend-builtin", "cryptodev-vhost-user", "dbus-vmstate",
    "filter-buffer", "filter-dump", "filter-mirror", "filter-redirector",
    "filter-replay", "filter-rewriter", "input-barrier", "input-linux",
    "iothread", "main-loop", "memory-backend-epc", "memory-backend-file",
    "memory-backend-memfd", "memory-backend-ram", "pef-guest",
    "pr-manager-helper", "qtest", "rng-builtin", "rng-egd", "rng-random",
    "secret", "secret_keyring", "sev-guest", "thread-context",
    "s390-pv-guest", "throttle-group", "tls-creds-anon", "tls-creds-psk",
    "tls-creds-x509", "tls-cipher-suites", "x-remote-object",
    "x-vfio-user-server",
};

static bool add_object(const char *arg, GError **errp)
{
    if (!strcmp(arg, "help") || !strcmp(arg, "?")) {
        printf("List of user creatable objects:\n");
        exit(EXIT_SUCCESS);
    }
    bool keyval;
    g_autoptr(JsonNode) node = parse_arg(arg, "qom-type", &keyval, errp);
    if (!node) {
        return false;
    }
    const char *type;
    if (!member_str(json_node_get_object(node), "qom-type", &type, errp)) {
        return false;
    }
    if (!type) {
        error_setg(errp, "Parameter 'qom-type' is missing");
        return false;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(qom_types); i++) {
        if (!strcmp(type, qom_types[i])) {
            /* No QOM objects (secrets, iothreads, TLS credentials) exist
             * here: refuse honestly rather than accept and ignore. */
            error_setg(errp, "Unsupported object type '%s'", type);
            return false;
        }
    }
    error_setg(errp, "Parameter 'qom-type' does not accept value '%s'", type);
    return false;
}

/* ---- the two passes ---- */

static void process_options(int argc, char **argv, bool pre_init)
{
    int c;

    optind = 0; /* full re-initialisation of glibc's getopt */
    opterr = 0;
    while ((c = getopt_long(argc, argv, short_options, long_options,
                            NULL)) != -1) {
        bool early = c == '?' || c == ':' || c == 'h' || c == 'V' ||
                     c == OPTION_DAEMONIZE || c == OPTION_PIDFILE;
        if (early != pre_init) {
            continue;
        }

        g_autofree char *loc = option_location(argv);
        GError *err = NULL;

        switch (c) {
        case '?':
        case ':':
            report_getopt_error(c, argv);
            exit(EXIT_FAILURE);
        case 'h':
            help();
            exit(EXIT_SUCCESS);
        case 'V':
            version();
            exit(EXIT_SUCCESS);
        case 'T':
            fprintf(stderr,
                    "blockd: %s: warning: tracing is not supported; "
                    "option ignored\n",
                    loc);
            break;
        case OPTION_DAEMONIZE:
            opt_daemonize = true;
            break;
        case OPTION_PIDFILE:
            opt_pidfile = optarg;
            break;
        case OPTION_BLOCKDEV:
            run_setup(blockdev_co, optarg, loc);
            break;
        case OPTION_CHARDEV:
            if (!chardev_add(optarg, loc, &err)) {
                fail(loc, err);
            }
            break;
        case OPTION_EXPORT:
            run_setup(export_co, optarg, loc);
            break;
        case OPTION_MONITOR:
            if (!add_monitor(optarg, &err)) {
                fail(loc, err);
            }
            break;
        case OPTION_NBD_SERVER:
            run_setup(nbd_server_co, optarg, loc);
            break;
        case OPTION_OBJECT:
            if (!add_object(optarg, &err)) {
                fail(loc, err);
            }
            break;
        case 1:
            error_setg(&err, "Unexpected argument");
            fail(optarg, err);
        default:
            error_report("internal error: unhandled option %d", c);
            exit(EXIT_FAILURE);
        }
    }
}

static gboolean on_signal(gpointer opaque)
{
    runstate_request_shutdown("host-signal");
    return G_SOURCE_CONTINUE;
}

/*
 * qemu-storage-daemon's order: exports first (they use nodes), then the
 * nodes (flushed and closed), then the monitors, which by then have sent
 * the replies and events of everything above.
 */
static void shutdown_all(void)
{
    blk_exp_close_all();
    job_cancel_sync_all(); /* jobs use nodes too: stop them before closing */
    bdrv_close_all();
    monitor_cleanup();
    chardev_cleanup();
    pidfile_remove();
}

int main(int argc, char **argv)
{
    GError *err = NULL;

    signal(SIGPIPE, SIG_IGN);
    process_options(argc, argv, true);
    if (opt_daemonize) {
        daemonize_start();
    }
    if (!aio_init(&err)) {
        error_report("%s", err->message);
        g_error_free(err);
        return EXIT_FAILURE;
    }
    guint sig_sources[] = {
        g_unix_signal_add(SIGTERM, on_signal, NULL),
        g_unix_signal_add(SIGINT, on_signal, NULL),
        g_unix_signal_add(SIGHUP, on_signal, NULL),
    };

    monitor_hold_commands(true);
    process_options(argc, argv, false);

    /* After everything exists and before anyone is served, as QEMU does:
     * a pid file means "ready". */
    if (opt_pidfile && !pidfile_create(opt_pidfile, &err)) {
        error_report("cannot create PID file: %s", err->message);
        g_error_free(err);
        shutdown_all();
        return EXIT_FAILURE;
    }
    daemonize_ready();

    monitor_hold_commands(false);
    while (!runstate_shutdown_requested()) {
        aio_poll(true);
    }

    shutdown_all();
    for (size_t i = 0; i < G_N_ELEMENTS(sig_sources); i++) {
        g_source_remove(sig_sources[i]);
    }
    aio_cleanup();
    return EXIT_SUCCESS;
}
