/*
 * The NBD handshake (fixed newstyle), server side.
 *
 * Every option payload is bounded (NBD_MAX_OPTION_SIZE) before anything is
 * allocated, and parsed through a cursor that never reads past what the
 * client sent; malformed options get NBD_REP_ERR_INVALID and the haggling
 * goes on, as the protocol asks.  Only broken framing (bad magic, unknown
 * client flags, end of stream) or an impossible NBD_OPT_EXPORT_NAME ends
 * the session.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include "block/block_int.h"
#include "block/export/nbd-int.h"
#include "block/export/nbd-proto.h"
#include "util/co-socket.h"

/* handle_option() results besides 1 (transmission), 0 (end), -errno */
#define OPT_CONTINUE 2

/* ---- payload cursor ---- */

typedef struct OptCursor {
    const uint8_t *p;
    size_t left;
} OptCursor;

static bool cur_u16(OptCursor *c, uint16_t *v)
{
    if (c->left < 2) {
        return false;
    }
    *v = nbd_get16(c->p);
    c->p += 2;
    c->left -= 2;
    return true;
}

static bool cur_u32(OptCursor *c, uint32_t *v)
{
    if (c->left < 4) {
        return false;
    }
    *v = nbd_get32(c->p);
    c->p += 4;
    c->left -= 4;
    return true;
}

/* A length-prefixed string: false if truncated, too long, or has a NUL. */
static bool cur_string(OptCursor *c, char **out)
{
    uint32_t len;

    if (!cur_u32(c, &len) || len > c->left || len > NBD_MAX_STRING_SIZE ||
        memchr(c->p, 0, len)) {
        return false;
    }
    *out = g_strndup((const char *)c->p, len);
    c->p += len;
    c->left -= len;
    return true;
}

/* ---- replies ---- */

static int coroutine_fn nbd_opt_reply(NBDClient *client, uint32_t opt,
                                      uint32_t type, const void *data,
                                      size_t len)
{
    uint8_t hdr[20];
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)data, .iov_len = len },
    };

    nbd_put64(hdr, NBD_REP_MAGIC);
    nbd_put32(hdr + 8, opt);
    nbd_put32(hdr + 12, type);
    nbd_put32(hdr + 16, (uint32_t)len);
    return co_sock_writev_full(client->fd, iov, len ? 2 : 1);
}

/* An error reply carrying a message for humans; OPT_CONTINUE or -errno. */
static int coroutine_fn G_GNUC_PRINTF(4, 5)
    nbd_opt_error(NBDClient *client, uint32_t opt, uint32_t type,
                  const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;
    int ret;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (strlen(msg) > NBD_MAX_STRING_SIZE) {
        msg[NBD_MAX_STRING_SIZE] = '\0';
    }
    ret = nbd_opt_reply(client, opt, type, msg, strlen(msg));
    return ret < 0 ? ret : OPT_CONTINUE;
}

static int coroutine_fn nbd_opt_ack(NBDClient *client, uint32_t opt)
{
    int ret = nbd_opt_reply(client, opt, NBD_REP_ACK, NULL, 0);
    return ret < 0 ? ret : OPT_CONTINUE;
}

/* NBD_REP_INFO: 16-bit info type then its payload. */
static int coroutine_fn nbd_send_info(NBDClient *client, uint32_t opt,
                                      uint16_t info, const void *data,
                                      size_t len)
{
    g_autofree uint8_t *buf = g_malloc(2 + len);

    nbd_put16(buf, info);
    memcpy(buf + 2, data, len);
    return nbd_opt_reply(client, opt, NBD_REP_INFO, buf, 2 + len);
}

/* ---- exports and their properties ---- */

static uint16_t nbd_tx_flags(NBDClient *client, BlockExport *exp)
{
    uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                     NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;

    if (exp->writable) {
        flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                 NBD_FLAG_SEND_FAST_ZERO;
    } else {
        flags |= NBD_FLAG_READ_ONLY;
    }
    /*
     * All connections to an export share its one BlockBackend, so a flush
     * or FUA on one covers writes made through the others: multi-conn is
     * safe whenever more than one connection may exist (qsd 7.2 advertises
     * it on the same condition).  Read-only exports always qualify.
     */
    if (!exp->writable || nbd_server_max_connections() != 1) {
        flags |= NBD_FLAG_CAN_MULTI_CONN;
    }
    if (client->structured_reply) {
        flags |= NBD_FLAG_SEND_DF;
    }
    return flags;
}

static uint32_t nbd_export_alignment(BlockExport *exp)
{
    BlockDriverState *bs = blk_bs(exp->blk);
    uint32_t align = bs ? bs->bl.request_alignment : 1;

    return align ? align : 1;
}

void nbd_meta_selection_clear(NBDMetaSelection *m)
{
    g_free(m->export_name);
    g_free(m->bitmaps);
    memset(m, 0, sizeof(*m));
}

/* Enter transmission on exp. */
static void nbd_attach(NBDClient *client, BlockExport *exp, int64_t size)
{
    blk_exp_ref(exp);
    client->exp = exp;
    client->exp_size = size;
    client->tx_flags = nbd_tx_flags(client, exp);
    LIST_INSERT_HEAD(&exp->clients, client, exp_link);
    /* Contexts chosen for another export mean nothing here. */
    if (client->meta.export_name &&
        strcmp(client->meta.export_name, exp->name) != 0) {
        nbd_meta_selection_clear(&client->meta);
    }
}

/* ---- options ---- */

static int coroutine_fn nbd_opt_export_name(NBDClient *client,
                                            const uint8_t *data, size_t len)
{
    g_autofree char *name = NULL;
    BlockExport *exp;
    uint8_t reply[8 + 2 + 124] = { 0 };
    int64_t size;
    int ret;

    /* This option cannot fail politely: a bad name ends the session. */
    if (len > NBD_MAX_STRING_SIZE || memchr(data, 0, len)) {
        return -EINVAL;
    }
    name = g_strndup((const char *)data, len);
    exp = nbd_export_find(name);
    if (!exp) {
        return -ENOENT;
    }
    size = blk_getlength(exp->blk);
    if (size < 0) {
        return (int)size;
    }
    nbd_put64(reply, (uint64_t)size);
    nbd_put16(reply + 8, nbd_tx_flags(client, exp));
    ret = co_sock_write_full(client->fd, reply,
                             client->no_zeroes ? 10 : sizeof(reply));
    if (ret < 0) {
        return ret;
    }
    nbd_attach(client, exp, size);
    return 1;
}

static int coroutine_fn nbd_opt_info_go(NBDClient *client, uint32_t opt,
                                        OptCursor *cur)
{
    g_autofree char *name = NULL;
    bool want_name = false, want_desc = false, want_blocksize = false;
    uint16_t nreq, info = 0;
    BlockExport *exp;
    uint8_t buf[12];
    int64_t size;
    int ret;

    if (!cur_string(cur, &name) || !cur_u16(cur, &nreq) ||
        cur->left != 2 * (size_t)nreq) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                             "malformed export request");
    }
    for (unsigned i = 0; i < nreq; i++) {
        cur_u16(cur, &info);
        switch (info) {
        case NBD_INFO_NAME:
            want_name = true;
            break;
        case NBD_INFO_DESCRIPTION:
            want_desc = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            want_blocksize = true;
            break;
        default:
            break; /* NBD_INFO_EXPORT is always sent; others unknown */
        }
    }

    exp = nbd_export_find(name);
    if (!exp) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_UNKNOWN,
                             "export '%s' not present", name);
    }
    size = blk_getlength(exp->blk);
    if (size < 0) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_PLATFORM,
                             "cannot determine the export's size: %s",
                             g_strerror((int)-size));
    }

    if (want_name) {
        ret = nbd_send_info(client, opt, NBD_INFO_NAME, exp->name,
                            strlen(exp->name));
        if (ret < 0) {
            return ret;
        }
    }
    if (want_desc && exp->description) {
        ret = nbd_send_info(client, opt, NBD_INFO_DESCRIPTION,
                            exp->description, strlen(exp->description));
        if (ret < 0) {
            return ret;
        }
    }

    /*
     * A client that did not ask for block sizes may send any alignment;
     * the block layer copes (read-modify-write), so minimum 1 is honest.
     */
    uint32_t align = nbd_export_alignment(exp);
    uint32_t min = (opt == NBD_OPT_INFO || want_blocksize) ? align : 1;
    nbd_put32(buf, min);
    nbd_put32(buf + 4, MAX(min, (uint32_t)NBD_PREFERRED_BLOCK_SIZE));
    nbd_put32(buf + 8, MAX(min, (uint32_t)NBD_MAX_BUFFER_SIZE));
    ret = nbd_send_info(client, opt, NBD_INFO_BLOCK_SIZE, buf, 12);
    if (ret < 0) {
        return ret;
    }

    nbd_put64(buf, (uint64_t)size);
    nbd_put16(buf + 8, nbd_tx_flags(client, exp));
    ret = nbd_send_info(client, opt, NBD_INFO_EXPORT, buf, 10);
    if (ret < 0) {
        return ret;
    }

    if (opt == NBD_OPT_GO && !want_blocksize && align > 1) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_BLOCK_SIZE_REQD,
                             "request NBD_INFO_BLOCK_SIZE to use this "
                             "export");
    }
    ret = nbd_opt_ack(client, opt);
    if (ret < 0 || opt == NBD_OPT_INFO) {
        return ret;
    }
    nbd_attach(client, exp, size);
    return 1;
}

static int coroutine_fn nbd_opt_list(NBDClient *client, size_t len)
{
    BlockExport *exp = NULL;

    if (len) {
        return nbd_opt_error(client, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                             "NBD_OPT_LIST takes no data");
    }
    while ((exp = blk_exp_next(exp))) {
        if (exp->type != BLOCK_EXPORT_TYPE_NBD || !exp->user_owned) {
            continue;
        }
        size_t nlen = strlen(exp->name);
        size_t dlen = exp->description ? strlen(exp->description) : 0;
        g_autofree uint8_t *buf = g_malloc(4 + nlen + dlen);

        nbd_put32(buf, (uint32_t)nlen);
        memcpy(buf + 4, exp->name, nlen);
        if (dlen) {
            memcpy(buf + 4 + nlen, exp->description, dlen);
        }
        int ret = nbd_opt_reply(client, NBD_OPT_LIST, NBD_REP_SERVER, buf,
                                4 + nlen + dlen);
        if (ret < 0) {
            return ret;
        }
    }
    return nbd_opt_ack(client, NBD_OPT_LIST);
}

/*
 * Match one query against exp's contexts.  In list mode a bare namespace
 * ("base:", "qemu:", "qemu:dirty-bitmap:") selects everything below it.
 * Unknown queries select nothing, which is not an error.
 */
static void nbd_meta_match(BlockExport *exp, const char *q, bool list,
                           NBDMetaSelection *sel)
{
    if (strcmp(q, "base:allocation") == 0 ||
        (list && strcmp(q, "base:") == 0)) {
        sel->base_allocation = true;
    }
    if (exp->allocation_depth &&
        (strcmp(q, "qemu:allocation-depth") == 0 ||
         (list && strcmp(q, "qemu:") == 0))) {
        sel->allocation_depth = true;
    }
    nbd_meta_match_bitmaps(exp, q, list, sel);
}

static int coroutine_fn nbd_opt_meta_context(NBDClient *client, uint32_t opt,
                                             OptCursor *cur)
{
    bool list = opt == NBD_OPT_LIST_META_CONTEXT;
    g_autofree char *name = NULL;
    NBDMetaSelection sel = { 0 };
    uint32_t nqueries;
    BlockExport *exp;
    int ret;

    if (!list) {
        /* The new selection replaces the old even if this one fails. */
        nbd_meta_selection_clear(&client->meta);
    }
    if (!client->structured_reply) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                             "request structured replies first");
    }
    if (!cur_string(cur, &name) || !cur_u32(cur, &nqueries)) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                             "malformed meta context request");
    }
    exp = nbd_export_find(name);
    if (!exp) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_UNKNOWN,
                             "export '%s' not present", name);
    }
    g_autofree bool *sel_bitmaps = g_new0(bool, exp->nr_bitmaps + 1);
    sel.bitmaps = sel_bitmaps;
    sel.nr_bitmaps = exp->nr_bitmaps;
    /* Each query takes at least its 4-byte length: bound the loop by the
     * data actually sent, not by the count the client claims. */
    if (nqueries > cur->left / 4) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                             "malformed meta context request");
    }
    if (nqueries == 0 && list) {
        nbd_meta_match(exp, "base:", true, &sel);
        nbd_meta_match(exp, "qemu:", true, &sel);
    }
    for (uint32_t i = 0; i < nqueries; i++) {
        g_autofree char *q = NULL;

        if (!cur_string(cur, &q)) {
            return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                                 "malformed meta context query");
        }
        nbd_meta_match(exp, q, list, &sel);
    }
    if (cur->left) {
        return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                             "trailing data in meta context request");
    }

    static const struct {
        const char *name;
        uint32_t id;
        size_t flag_offset;
    } contexts[] = {
        { "base:allocation", NBD_META_ID_BASE_ALLOCATION,
          offsetof(NBDMetaSelection, base_allocation) },
        { "qemu:allocation-depth", NBD_META_ID_ALLOCATION_DEPTH,
          offsetof(NBDMetaSelection, allocation_depth) },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(contexts); i++) {
        if (!*(bool *)((char *)&sel + contexts[i].flag_offset)) {
            continue;
        }
        size_t nlen = strlen(contexts[i].name);
        uint8_t buf[4 + 64];

        /* Ids in a list reply are reserved (zero); set gives real ones. */
        nbd_put32(buf, list ? 0 : contexts[i].id);
        memcpy(buf + 4, contexts[i].name, nlen);
        ret = nbd_opt_reply(client, opt, NBD_REP_META_CONTEXT, buf, 4 + nlen);
        if (ret < 0) {
            return ret;
        }
        sel.count++;
    }
    for (unsigned i = 0; i < sel.nr_bitmaps; i++) {
        if (!sel.bitmaps[i]) {
            continue;
        }
        size_t nlen = strlen(exp->bitmap_ctx[i]);
        g_autofree uint8_t *buf = g_malloc(4 + nlen);

        nbd_put32(buf, list ? 0 : NBD_META_ID_DIRTY_BITMAP + i);
        memcpy(buf + 4, exp->bitmap_ctx[i], nlen);
        ret = nbd_opt_reply(client, opt, NBD_REP_META_CONTEXT, buf,
                            (uint32_t)(4 + nlen));
        if (ret < 0) {
            return ret;
        }
        sel.count++;
    }
    if (!list) {
        sel.export_name = g_strdup(exp->name);
        sel.bitmaps = g_steal_pointer(&sel_bitmaps);
        client->meta = sel;
    }
    return nbd_opt_ack(client, opt);
}

static int coroutine_fn nbd_handle_option(NBDClient *client, uint32_t opt,
                                          const uint8_t *data, size_t len)
{
    OptCursor cur = { .p = data, .left = len };

    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return nbd_opt_export_name(client, data, len);
    case NBD_OPT_ABORT:
        /* The client may already be gone: a failed ack is still an end. */
        nbd_opt_reply(client, opt, NBD_REP_ACK, NULL, 0);
        return 0;
    case NBD_OPT_LIST:
        return nbd_opt_list(client, len);
    case NBD_OPT_STARTTLS:
        return nbd_opt_error(client, opt, NBD_REP_ERR_POLICY,
                             "TLS not configured");
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return nbd_opt_info_go(client, opt, &cur);
    case NBD_OPT_STRUCTURED_REPLY:
        if (len) {
            return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                                 "NBD_OPT_STRUCTURED_REPLY takes no data");
        }
        if (client->structured_reply) {
            return nbd_opt_error(client, opt, NBD_REP_ERR_INVALID,
                                 "structured reply already negotiated");
        }
        client->structured_reply = true;
        return nbd_opt_ack(client, opt);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return nbd_opt_meta_context(client, opt, &cur);
    default:
        return nbd_opt_error(client, opt, NBD_REP_ERR_UNSUP,
                             "Unsupported option %" PRIu32, opt);
    }
}

/* Read and drop len bytes of an option we will not store. */
static int coroutine_fn nbd_skip(NBDClient *client, size_t len)
{
    uint8_t buf[4096];

    while (len) {
        size_t n = MIN(len, sizeof(buf));
        int ret = nbd_client_read(client, buf, n);
        if (ret <= 0) {
            return ret < 0 ? ret : -EPIPE;
        }
        len -= n;
    }
    return 0;
}

int coroutine_fn nbd_negotiate(NBDClient *client)
{
    uint8_t buf[18];
    int ret;

    nbd_put64(buf, NBD_MAGIC);
    nbd_put64(buf + 8, NBD_OPTS_MAGIC);
    nbd_put16(buf + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    ret = co_sock_write_full(client->fd, buf, 18);
    if (ret < 0) {
        return ret;
    }
    ret = nbd_client_read(client, buf, 4);
    if (ret <= 0) {
        return ret;
    }
    uint32_t cflags = nbd_get32(buf);
    if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        return -EINVAL;
    }
    client->fixed_newstyle = cflags & NBD_FLAG_C_FIXED_NEWSTYLE;
    client->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    for (;;) {
        uint8_t hdr[16];

        if (client->closing) {
            return -ESHUTDOWN;
        }
        ret = nbd_client_read(client, hdr, sizeof(hdr));
        if (ret <= 0) {
            return ret;
        }
        if (nbd_get64(hdr) != NBD_OPTS_MAGIC) {
            return -EINVAL;
        }
        uint32_t opt = nbd_get32(hdr + 8);
        uint32_t len = nbd_get32(hdr + 12);

        /* Non-fixed newstyle knows only NBD_OPT_EXPORT_NAME. */
        if (!client->fixed_newstyle && opt != NBD_OPT_EXPORT_NAME) {
            return -EINVAL;
        }
        if (len > NBD_MAX_OPTION_SIZE) {
            if (opt == NBD_OPT_EXPORT_NAME || len > NBD_MAX_OPTION_SKIP) {
                return -EINVAL;
            }
            ret = nbd_skip(client, len);
            if (ret < 0) {
                return ret;
            }
            ret = nbd_opt_error(client, opt, NBD_REP_ERR_TOO_BIG,
                                "option payload too large");
            if (ret < 0) {
                return ret;
            }
            continue;
        }

        g_autofree uint8_t *data = g_malloc(len ? len : 1);
        if (len) {
            ret = nbd_client_read(client, data, len);
            if (ret <= 0) {
                return ret < 0 ? ret : -EPIPE;
            }
        }
        ret = nbd_handle_option(client, opt, data, len);
        if (ret != OPT_CONTINUE) {
            return ret;
        }
    }
}
