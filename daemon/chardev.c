/*
 * --chardev for the daemon: a registry of listening sockets that monitors
 * take by id.
 *
 * The syntax is QemuOpts' (what qemu-storage-daemon uses for --chardev),
 * not keyval: options are flat, the first bare word is the backend, a
 * later bare word "foo" means foo=on and "nofoo" foo=off (deprecated, with
 * QEMU's warning), and the last of repeated options wins.  Option names are
 * checked against QEMU's full chardev option list so a typo gets "Invalid
 * parameter" while a real QEMU option we do not implement gets an honest
 * "not supported".
 */
#include "daemon/chardev.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/co-socket.h"
#include "util/error.h"

typedef struct Chardev {
    char *id;
    int fd;          /* listening socket; -1 once taken */
    char *unix_path; /* absolute, removed at cleanup; NULL for TCP */
} Chardev;

static GPtrArray *chardevs; /* of Chardev * */

typedef enum OptKind { OPT_STR, OPT_BOOL, OPT_NUM } OptKind;

typedef struct OptDesc {
    const char *name;
    OptKind kind;
    bool supported; /* for the socket backend */
} OptDesc;

/* QEMU 7.2's qemu_chardev_opts, and whether our socket backend has it. */
static const OptDesc chardev_opts[] = {
    { "backend", OPT_STR, true },    { "path", OPT_STR, true },
    { "host", OPT_STR, true },       { "port", OPT_STR, true },
    { "fd", OPT_STR, false },        { "local", OPT_BOOL, false },
    { "localaddr", OPT_STR, false }, { "localport", OPT_STR, false },
    { "to", OPT_NUM, false },        { "ipv4", OPT_BOOL, true },
    { "ipv6", OPT_BOOL, true },      { "wait", OPT_BOOL, true },
    { "server", OPT_BOOL, true },    { "delay", OPT_BOOL, true },
    { "nodelay", OPT_BOOL, true },   { "reconnect", OPT_NUM, false },
    { "telnet", OPT_BOOL, false },   { "tn3270", OPT_BOOL, false },
    { "websocket", OPT_BOOL, false }, { "width", OPT_NUM, false },
    { "height", OPT_NUM, false },    { "cols", OPT_NUM, false },
    { "rows", OPT_NUM, false },      { "mux", OPT_BOOL, false },
    { "signal", OPT_BOOL, false },   { "name", OPT_STR, false },
    { "debug", OPT_NUM, false },     { "size", OPT_NUM, false },
    { "chardev", OPT_STR, false },   { "append", OPT_BOOL, false },
    { "logfile", OPT_STR, false },   { "logappend", OPT_BOOL, false },
    { "tight", OPT_BOOL, false },    { "abstract", OPT_BOOL, false },
    { "tls-creds", OPT_STR, false }, { "tls-authz", OPT_STR, false },
};

/* Backends QEMU knows; only "socket" is implemented here. */
static const char *const known_backends[] = {
    "null", "socket", "udp", "msmouse", "wctablet", "memory", "ringbuf",
    "file", "pipe", "pty", "stdio", "serial", "tty", "parallel", "parport",
    "braille", "spicevmc", "spiceport", "qemu-vdagent", "dbus", "testdev",
};

static const OptDesc *find_opt(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(chardev_opts); i++) {
        if (!strcmp(chardev_opts[i].name, name)) {
            return &chardev_opts[i];
        }
    }
    return NULL;
}

/* QemuOpts accepts these spellings for booleans. */
static bool parse_bool(const char *name, const char *v, bool *out,
                       GError **errp)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") ||
        !strcmp(v, "y")) {
        *out = true;
        return true;
    }
    if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") ||
        !strcmp(v, "n")) {
        *out = false;
        return true;
    }
    error_setg(errp, "Parameter '%s' expects 'on' or 'off'", name);
    return false;
}

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static bool id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

/* A value up to an unescaped ',' (",," is a literal comma). */
static const char *get_value(const char *p, char **out)
{
    GString *s = g_string_new(NULL);

    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                break;
            }
            p++;
        }
        g_string_append_c(s, *p++);
    }
    *out = g_string_free(s, FALSE);
    return p;
}

/*
 * Split "backend,key=val,flag,noflag" into a table (last value wins).
 * Returns NULL with errp set on an unknown option or a bad boolean.
 */
static GHashTable *parse_opts(const char *params, const char *loc,
                              GError **errp)
{
    GHashTable *t = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          g_free);
    const char *p = params;
    bool first = true;

    while (*p) {
        size_t len = strcspn(p, "=,");
        char *name, *value;

        if (p[len] != '=') {
            if (first) {
                name = g_strdup("backend");
                p = get_value(p, &value);
            } else {
                const char *prefix = "";
                if (len >= 2 && !strncmp(p, "no", 2)) {
                    name = g_strndup(p + 2, len - 2);
                    value = g_strdup("off");
                    prefix = "no";
                } else {
                    name = g_strndup(p, len);
                    value = g_strdup("on");
                }
                p += len;
                fprintf(stderr,
                        "blockd: %s: warning: short-form boolean option "
                        "'%s%s' deprecated\n",
                        loc, prefix, name);
                if (!strcmp(name, "delay")) {
                    fprintf(stderr, "Please use nodelay=%s instead\n",
                            prefix[0] ? "on" : "off");
                } else {
                    fprintf(stderr, "Please use %s=%s instead\n", name,
                            value);
                }
            }
        } else {
            name = g_strndup(p, len);
            p = get_value(p + len + 1, &value);
        }
        if (*p == ',') {
            p++;
        }
        first = false;

        if (strcmp(name, "id") != 0) {
            const OptDesc *d = find_opt(name);
            GError *err = NULL;
            bool b;
            if (!d) {
                error_setg(&err, "Invalid parameter '%s'", name);
            } else if (d->kind == OPT_BOOL) {
                parse_bool(name, value, &b, &err);
            }
            if (err) {
                error_propagate(errp, err);
                g_free(name);
                g_free(value);
                g_hash_table_unref(t);
                return NULL;
            }
        }
        g_hash_table_replace(t, name, value);
    }
    return t;
}

static Chardev *chardev_find(const char *id)
{
    for (guint i = 0; chardevs && i < chardevs->len; i++) {
        Chardev *c = g_ptr_array_index(chardevs, i);
        if (!strcmp(c->id, id)) {
            return c;
        }
    }
    return NULL;
}

static bool opt_bool(GHashTable *t, const char *name, bool dflt)
{
    const char *v = g_hash_table_lookup(t, name);
    bool b = dflt;

    if (v) {
        parse_bool(name, v, &b, NULL); /* validated while parsing */
    }
    return b;
}

/*
 * server=on,wait=on: QEMU does not go on until a client has connected.
 * Waiting for the socket to become readable (a pending connection)
 * without accepting keeps that order while leaving the connection for the
 * monitor to accept.
 */
static void wait_for_client(int fd, const char *loc, const char *desc)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };

    fprintf(stderr,
            "blockd: %s: info: QEMU waiting for connection on: "
            "disconnected:%s,server=on\n",
            loc, desc);
    while (poll(&pfd, 1, -1) < 0 && errno == EINTR) {
        /* retry */
    }
}

bool chardev_add(const char *opts, const char *loc, GError **errp)
{
    g_autoptr(GHashTable) t = parse_opts(opts, loc, errp);
    if (!t) {
        return false;
    }

    const char *id = g_hash_table_lookup(t, "id");
    if (id && !id_wellformed(id)) {
        error_setg(errp, "Parameter 'id' expects an identifier\n"
                         "Identifiers consist of letters, digits, "
                         "'-', '.', '_', starting with a letter.");
        return false;
    }
    if (!id) {
        error_setg(errp, "chardev: no id specified");
        return false;
    }
    const char *backend = g_hash_table_lookup(t, "backend");
    if (!backend) {
        error_setg(errp, "chardev: \"%s\" missing backend", id);
        return false;
    }
    if (strcmp(backend, "socket") != 0) {
        for (size_t i = 0; i < G_N_ELEMENTS(known_backends); i++) {
            if (!strcmp(backend, known_backends[i])) {
                error_setg(errp,
                           "chardev backend '%s' is not supported by "
                           "blockd (only 'socket' is)",
                           backend);
                return false;
            }
        }
        error_setg(errp, "'%s' is not a valid char driver name", backend);
        return false;
    }
    if (chardev_find(id)) {
        error_setg(errp, "Duplicate ID '%s' for chardev", id);
        return false;
    }

    /* Options QEMU has for sockets that this daemon does not implement. */
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, t);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const OptDesc *d = find_opt(k);
        if (d && !d->supported) {
            error_setg(errp,
                       "chardev option '%s' is not supported by blockd",
                       (const char *)k);
            return false;
        }
    }

    const char *path = g_hash_table_lookup(t, "path");
    const char *host = g_hash_table_lookup(t, "host");
    const char *port = g_hash_table_lookup(t, "port");
    if (path && host) {
        error_setg(errp,
                   "None or one of 'path', 'fd' or 'host' option required.");
        return false;
    }
    if (!path && !host && !port) {
        error_setg(errp, "Unable to parse FD number ");
        return false;
    }
    if (!path && !port) {
        error_setg(errp, "chardev: socket: no port given");
        return false;
    }
    if (!opt_bool(t, "server", false)) {
        error_setg(errp, "chardev '%s': only server=on sockets are "
                         "supported by blockd",
                   id);
        return false;
    }

    int fd;
    g_autofree char *desc = NULL;
    if (path) {
        fd = sock_listen_unix(path, 0600, errp);
        desc = g_strdup_printf("unix:%s", path);
    } else {
        fd = sock_listen_inet(host, port, errp);
        desc = g_strdup_printf("tcp:%s:%s", host ? host : "", port);
    }
    if (fd < 0) {
        return false;
    }
    if (opt_bool(t, "wait", true)) {
        wait_for_client(fd, loc, desc);
    }

    Chardev *c = g_new0(Chardev, 1);
    c->id = g_strdup(id);
    c->fd = fd;
    /* Absolute, since --daemonize changes directory to / after setup. */
    c->unix_path = path ? g_canonicalize_filename(path, NULL) : NULL;
    if (!chardevs) {
        chardevs = g_ptr_array_new();
    }
    g_ptr_array_add(chardevs, c);
    return true;
}

int chardev_take_listener(const char *id, GError **errp)
{
    Chardev *c = chardev_find(id);

    if (!c) {
        error_setg(errp, "chardev \"%s\" not found", id);
        return -1;
    }
    if (c->fd < 0) {
        error_setg(errp, "Device '%s' is in use", id);
        return -1;
    }
    int fd = c->fd;
    c->fd = -1;
    return fd;
}

void chardev_cleanup(void)
{
    for (guint i = 0; chardevs && i < chardevs->len; i++) {
        Chardev *c = g_ptr_array_index(chardevs, i);
        if (c->fd >= 0) {
            close(c->fd);
        }
        if (c->unix_path) {
            unlink(c->unix_path);
        }
        g_free(c->unix_path);
        g_free(c->id);
        g_free(c);
    }
    if (chardevs) {
        g_ptr_array_free(chardevs, TRUE);
        chardevs = NULL;
    }
}
