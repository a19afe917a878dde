/*
 * The NBD server against the real block layer, one protocol exchange at a
 * time: a test plays the client on one end of a socketpair, the server
 * session runs on the other, and the test iterates the event loop while
 * it waits for replies.  Covers the handshake's option handling, request
 * validation and error codes, structured replies, block status, drain
 * (requests held back while drained), many requests in flight, and export
 * deletion with a client attached.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/dirty-bitmap.h"
#include "block/export/nbd-int.h"
#include "block/export/nbd-proto.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"
#include "util/co-socket.h"

#define SIZE (4 * 1024 * 1024)

static BlockDriverState *node;
static char sockdir[] = "/tmp/test-nbd-XXXXXX";

/* ---- the client side ---- */

typedef struct Client {
    int fd;
} Client;

static void c_send(Client *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            aio_poll(true);
            continue;
        }
        assert_true(n > 0);
        p += n;
        len -= n;
    }
}

/* Exactly len bytes, iterating the loop while the server works; false at
 * end of stream. */
static bool c_recv(Client *c, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len) {
        ssize_t n = recv(c->fd, p, len, 0);
        if (n < 0 && errno == EAGAIN) {
            aio_poll(true);
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        len -= n;
    }
    return true;
}

/* Whether the server closed the connection (runs the loop until it did
 * or until a byte arrives). */
static bool c_closed(Client *c)
{
    uint8_t b;
    return !c_recv(c, &b, 1);
}

static Client c_connect(uint32_t cflags)
{
    int sv[2];
    uint8_t buf[18];
    Client c;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(sock_set_nonblocking(sv[0]), 0);
    assert_int_equal(sock_set_nonblocking(sv[1]), 0);
    nbd_client_new(sv[0]);
    c.fd = sv[1];
    assert_true(c_recv(&c, buf, 18));
    assert_true(nbd_get64(buf) == NBD_MAGIC);
    assert_true(nbd_get64(buf + 8) == NBD_OPTS_MAGIC);
    assert_int_equal(nbd_get16(buf + 16),
                     NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    nbd_put32(buf, cflags);
    c_send(&c, buf, 4);
    return c;
}

static void c_close(Client *c)
{
    close(c->fd);
    while (nbd_client_count() > 0) {
        aio_poll(true);
    }
}

static void c_opt(Client *c, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t hdr[16];

    nbd_put64(hdr, NBD_OPTS_MAGIC);
    nbd_put32(hdr + 8, opt);
    nbd_put32(hdr + 12, len);
    c_send(c, hdr, 16);
    if (len) {
        c_send(c, data, len);
    }
}

/* One option reply: returns its type; payload (caller frees) in *data. */
static uint32_t c_reply(Client *c, uint32_t opt, uint8_t **data,
                        uint32_t *len)
{
    uint8_t hdr[20];

    assert_true(c_recv(c, hdr, 20));
    assert_true(nbd_get64(hdr) == NBD_REP_MAGIC);
    assert_int_equal(nbd_get32(hdr + 8), opt);
    *len = nbd_get32(hdr + 16);
    *data = g_malloc(*len + 1);
    assert_true(c_recv(c, *data, *len));
    return nbd_get32(hdr + 12);
}

/* Skip replies until the final one (ACK or error) and return its type. */
static uint32_t c_final(Client *c, uint32_t opt, unsigned *nreplies)
{
    unsigned n = 0;

    for (;;) {
        uint8_t *data;
        uint32_t len, type = c_reply(c, opt, &data, &len);

        g_free(data);
        n++;
        if (type == NBD_REP_ACK || (type & (1U << 31))) {
            if (nreplies) {
                *nreplies = n;
            }
            return type;
        }
    }
}

static size_t put_string(uint8_t *p, const char *s)
{
    nbd_put32(p, (uint32_t)strlen(s));
    memcpy(p + 4, s, strlen(s));
    return 4 + strlen(s);
}

static void c_go(Client *c, const char *name)
{
    uint8_t buf[128];
    size_t n = put_string(buf, name);

    nbd_put16(buf + n, 0);
    c_opt(c, NBD_OPT_GO, buf, (uint32_t)n + 2);
    assert_int_equal(c_final(c, NBD_OPT_GO, NULL), NBD_REP_ACK);
}

static void c_structured(Client *c)
{
    c_opt(c, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    assert_int_equal(c_final(c, NBD_OPT_STRUCTURED_REPLY, NULL), NBD_REP_ACK);
}

static void c_set_meta(Client *c, const char *exp, const char *query)
{
    uint8_t buf[256];
    size_t n = put_string(buf, exp);

    nbd_put32(buf + n, 1);
    n += 4;
    n += put_string(buf + n, query);
    c_opt(c, NBD_OPT_SET_META_CONTEXT, buf, (uint32_t)n);
    assert_int_equal(c_final(c, NBD_OPT_SET_META_CONTEXT, NULL), NBD_REP_ACK);
}

static void c_req(Client *c, uint16_t type, uint16_t flags, uint64_t cookie,
                  uint64_t off, uint32_t len)
{
    uint8_t r[NBD_REQUEST_SIZE];

    nbd_put32(r, NBD_REQUEST_MAGIC);
    nbd_put16(r + 4, flags);
    nbd_put16(r + 6, type);
    nbd_put64(r + 8, cookie);
    nbd_put64(r + 16, off);
    nbd_put32(r + 24, len);
    c_send(c, r, sizeof(r));
}

/* A simple reply: returns the error; checks the cookie. */
static uint32_t c_simple(Client *c, uint64_t cookie)
{
    uint8_t r[NBD_SIMPLE_REPLY_SIZE];

    assert_true(c_recv(c, r, sizeof(r)));
    assert_int_equal(nbd_get32(r), NBD_SIMPLE_REPLY_MAGIC);
    assert_true(nbd_get64(r + 8) == cookie);
    return nbd_get32(r + 4);
}

typedef struct Chunk {
    uint16_t flags, type;
    uint64_t cookie;
    uint32_t len;
    uint8_t *data;
} Chunk;

static Chunk c_chunk(Client *c)
{
    uint8_t r[NBD_STRUCTURED_REPLY_SIZE];
    Chunk ch;

    assert_true(c_recv(c, r, sizeof(r)));
    assert_int_equal(nbd_get32(r), NBD_STRUCTURED_REPLY_MAGIC);
    ch.flags = nbd_get16(r + 4);
    ch.type = nbd_get16(r + 6);
    ch.cookie = nbd_get64(r + 8);
    ch.len = nbd_get32(r + 16);
    ch.data = g_malloc(ch.len + 1);
    assert_true(c_recv(c, ch.data, ch.len));
    return ch;
}

/* The error of a one-chunk structured error reply. */
static uint32_t c_chunk_error(Client *c, uint64_t cookie)
{
    Chunk ch = c_chunk(c);
    uint32_t err;

    assert_true(ch.cookie == cookie);
    assert_int_equal(ch.type, NBD_REPLY_TYPE_ERROR);
    assert_true(ch.flags & NBD_REPLY_FLAG_DONE);
    assert_true(ch.len >= 6);
    err = nbd_get32(ch.data);
    assert_true(nbd_get16(ch.data + 4) <= ch.len - 6);
    g_free(ch.data);
    return err;
}

/* ---- tests ---- */

static void test_options(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    uint8_t buf[256];
    unsigned n;

    c_opt(&c, 99, "junk", 4);
    assert_int_equal(c_final(&c, 99, NULL), NBD_REP_ERR_UNSUP);
    c_opt(&c, NBD_OPT_LIST, NULL, 0);
    assert_int_equal(c_final(&c, NBD_OPT_LIST, &n), NBD_REP_ACK);
    assert_int_equal(n, 5); /* four exports, then the ack */
    c_opt(&c, NBD_OPT_LIST, "x", 1);
    assert_int_equal(c_final(&c, NBD_OPT_LIST, NULL), NBD_REP_ERR_INVALID);
    c_opt(&c, NBD_OPT_STARTTLS, NULL, 0);
    assert_int_equal(c_final(&c, NBD_OPT_STARTTLS, NULL), NBD_REP_ERR_POLICY);

    /* unknown export, truncated and inconsistent INFO requests */
    size_t len = put_string(buf, "nope");
    nbd_put16(buf + len, 0);
    c_opt(&c, NBD_OPT_INFO, buf, (uint32_t)len + 2);
    assert_int_equal(c_final(&c, NBD_OPT_INFO, NULL), NBD_REP_ERR_UNKNOWN);
    nbd_put32(buf, 0xffffffff);
    c_opt(&c, NBD_OPT_INFO, buf, 4);
    assert_int_equal(c_final(&c, NBD_OPT_INFO, NULL), NBD_REP_ERR_INVALID);
    len = put_string(buf, "disk");
    nbd_put16(buf + len, 1000);
    c_opt(&c, NBD_OPT_GO, buf, (uint32_t)len + 2);
    assert_int_equal(c_final(&c, NBD_OPT_GO, NULL), NBD_REP_ERR_INVALID);

    /* meta contexts need structured replies first */
    len = put_string(buf, "disk");
    nbd_put32(buf + len, 0);
    c_opt(&c, NBD_OPT_LIST_META_CONTEXT, buf, (uint32_t)len + 4);
    assert_int_equal(c_final(&c, NBD_OPT_LIST_META_CONTEXT, NULL),
                     NBD_REP_ERR_INVALID);

    /* a big option is skipped, not stored */
    g_autofree uint8_t *big = g_malloc0(NBD_MAX_OPTION_SIZE + 1);
    c_opt(&c, NBD_OPT_GO, big, NBD_MAX_OPTION_SIZE + 1);
    assert_int_equal(c_final(&c, NBD_OPT_GO, NULL), NBD_REP_ERR_TOO_BIG);

    c_structured(&c);
    c_opt(&c, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    assert_int_equal(c_final(&c, NBD_OPT_STRUCTURED_REPLY, NULL),
                     NBD_REP_ERR_INVALID);

    /* listing all contexts of the allocation-depth export */
    len = put_string(buf, "ro");
    nbd_put32(buf + len, 0);
    c_opt(&c, NBD_OPT_LIST_META_CONTEXT, buf, (uint32_t)len + 4);
    assert_int_equal(c_final(&c, NBD_OPT_LIST_META_CONTEXT, &n), NBD_REP_ACK);
    assert_int_equal(n, 3);
    /* a query count larger than the data is refused before looping */
    len = put_string(buf, "ro");
    nbd_put32(buf + len, 0x7fffffff);
    c_opt(&c, NBD_OPT_SET_META_CONTEXT, buf, (uint32_t)len + 4);
    assert_int_equal(c_final(&c, NBD_OPT_SET_META_CONTEXT, NULL),
                     NBD_REP_ERR_INVALID);

    c_opt(&c, NBD_OPT_ABORT, NULL, 0);
    assert_int_equal(c_final(&c, NBD_OPT_ABORT, NULL), NBD_REP_ACK);
    assert_true(c_closed(&c));
    c_close(&c);
}

static void test_bad_handshakes(void **state)
{
    Client c = c_connect(1 << 5); /* unknown client flag */
    assert_true(c_closed(&c));
    c_close(&c);

    c = c_connect(0); /* non-fixed newstyle: only EXPORT_NAME */
    c_opt(&c, NBD_OPT_LIST, NULL, 0);
    assert_true(c_closed(&c));
    c_close(&c);

    c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE);
    c_opt(&c, NBD_OPT_EXPORT_NAME, "nope", 4);
    assert_true(c_closed(&c));
    c_close(&c);

    c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t junk[16] = { 0 };
    c_send(&c, junk, sizeof(junk));
    assert_true(c_closed(&c));
    c_close(&c);
}

static void test_simple_replies(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t reply[8 + 2 + 124];
    uint8_t data[4096];

    c_opt(&c, NBD_OPT_EXPORT_NAME, "ro", 2);
    assert_true(c_recv(&c, reply, sizeof(reply))); /* zeroes included */
    assert_true(nbd_get64(reply) == SIZE);
    uint16_t flags = nbd_get16(reply + 8);
    assert_true(flags & NBD_FLAG_READ_ONLY);
    assert_true(flags & NBD_FLAG_CAN_MULTI_CONN);
    assert_false(flags & NBD_FLAG_SEND_DF);

    c_req(&c, NBD_CMD_READ, 0, 1, 4096, sizeof(data));
    assert_int_equal(c_simple(&c, 1), 0);
    assert_true(c_recv(&c, data, sizeof(data)));
    assert_true(buffer_is_zero(data, sizeof(data)));

    c_req(&c, NBD_CMD_WRITE, 0, 2, 0, 4);
    c_send(&c, "abcd", 4);
    assert_int_equal(c_simple(&c, 2), NBD_EPERM);
    c_req(&c, NBD_CMD_READ, 0, 3, SIZE, 1);
    assert_int_equal(c_simple(&c, 3), NBD_EINVAL);
    c_req(&c, NBD_CMD_READ, NBD_CMD_FLAG_DF, 4, 0, 1);
    assert_int_equal(c_simple(&c, 4), NBD_EINVAL); /* DF not negotiated */
    c_req(&c, NBD_CMD_BLOCK_STATUS, 0, 5, 0, 512);
    assert_int_equal(c_simple(&c, 5), NBD_EINVAL);
    c_req(&c, 42, 0, 6, 0, 0);
    assert_int_equal(c_simple(&c, 6), NBD_EINVAL);
    c_req(&c, NBD_CMD_FLUSH, 0, 7, 0, 0);
    assert_int_equal(c_simple(&c, 7), 0);

    c_req(&c, NBD_CMD_DISC, 0, 8, 0, 0);
    assert_true(c_closed(&c));
    c_close(&c);
}

static void test_structured(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    Chunk ch;

    c_structured(&c);
    c_set_meta(&c, "disk", "base:allocation");
    c_go(&c, "disk");

    /* null-co with read-zeroes reads as a hole */
    c_req(&c, NBD_CMD_READ, 0, 1, 65536, 65536);
    ch = c_chunk(&c);
    assert_int_equal(ch.type, NBD_REPLY_TYPE_OFFSET_HOLE);
    assert_true(ch.flags & NBD_REPLY_FLAG_DONE);
    assert_int_equal(ch.len, 12);
    assert_true(nbd_get64(ch.data) == 65536);
    assert_int_equal(nbd_get32(ch.data + 8), 65536);
    g_free(ch.data);

    /* DF: one data chunk with the zeroes spelled out */
    c_req(&c, NBD_CMD_READ, NBD_CMD_FLAG_DF, 2, 512, 1024);
    ch = c_chunk(&c);
    assert_int_equal(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
    assert_int_equal(ch.len, 8 + 1024);
    assert_true(buffer_is_zero(ch.data + 8, 1024));
    g_free(ch.data);

    c_req(&c, NBD_CMD_BLOCK_STATUS, 0, 3, 0, SIZE);
    ch = c_chunk(&c);
    assert_int_equal(ch.type, NBD_REPLY_TYPE_BLOCK_STATUS);
    assert_true(ch.flags & NBD_REPLY_FLAG_DONE);
    assert_int_equal(ch.len, 12);
    assert_int_equal(nbd_get32(ch.data), NBD_META_ID_BASE_ALLOCATION);
    assert_int_equal(nbd_get32(ch.data + 4), SIZE);
    assert_int_equal(nbd_get32(ch.data + 8), NBD_STATE_HOLE | NBD_STATE_ZERO);
    g_free(ch.data);

    /* errors: too big, beyond the end, bad flags, empty status */
    c_req(&c, NBD_CMD_READ, 0, 4, 0, NBD_MAX_BUFFER_SIZE + 1);
    assert_int_equal(c_chunk_error(&c, 4), NBD_EINVAL);
    c_req(&c, NBD_CMD_READ, NBD_CMD_FLAG_DF, 5, 0, NBD_MAX_BUFFER_SIZE + 1);
    assert_int_equal(c_chunk_error(&c, 5), NBD_EINVAL);
    c_req(&c, NBD_CMD_WRITE, 0, 6, SIZE - 2, 4);
    c_send(&c, "abcd", 4);
    assert_int_equal(c_chunk_error(&c, 6), NBD_ENOSPC);
    c_req(&c, NBD_CMD_TRIM, 0, 7, SIZE, 1);
    assert_int_equal(c_chunk_error(&c, 7), NBD_EINVAL);
    c_req(&c, NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 8, 0, 1);
    assert_int_equal(c_chunk_error(&c, 8), NBD_EINVAL);
    c_req(&c, NBD_CMD_BLOCK_STATUS, 0, 9, 0, 0);
    assert_int_equal(c_chunk_error(&c, 9), NBD_EINVAL);

    /* an oversized write payload is consumed: the stream stays in step */
    c_req(&c, NBD_CMD_WRITE, 0, 10, 0, NBD_MAX_BUFFER_SIZE + 4096);
    g_autofree uint8_t *payload = g_malloc0(NBD_MAX_BUFFER_SIZE + 4096);
    c_send(&c, payload, NBD_MAX_BUFFER_SIZE + 4096);
    assert_int_equal(c_chunk_error(&c, 10), NBD_EINVAL);

    /* successful writes on the writable export */
    /* (successes without data are simple replies, as qsd sends them) */
    c_req(&c, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 11, 0, 4);
    c_send(&c, "abcd", 4);
    assert_int_equal(c_simple(&c, 11), 0);
    c_req(&c, NBD_CMD_WRITE_ZEROES,
          NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 12, 0, 65536);
    assert_int_equal(c_simple(&c, 12), 0);
    /* an empty read is still a structured reply */
    c_req(&c, NBD_CMD_READ, 0, 13, 0, 0);
    ch = c_chunk(&c);
    assert_int_equal(ch.type, NBD_REPLY_TYPE_NONE);
    assert_true((ch.flags & NBD_REPLY_FLAG_DONE) && ch.cookie == 13);
    g_free(ch.data);

    c_close(&c);
}

/* Drained: a request is read but not started until the drain ends. */
static void test_drain(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    uint8_t b;

    c_go(&c, "disk");
    bdrv_drained_begin(node);
    c_req(&c, NBD_CMD_FLUSH, 0, 1, 0, 0);
    for (int i = 0; i < 20; i++) {
        aio_poll(false);
    }
    assert_int_equal(recv(c.fd, &b, 1, MSG_PEEK), -1);
    assert_int_equal(errno, EAGAIN);
    bdrv_drained_end(node);
    assert_int_equal(c_simple(&c, 1), 0);
    c_close(&c);
}

/* Many requests at once on a slow node: all answered, none lost. */
static void test_pipelined(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    bool seen[200] = { false };
    uint8_t data[512];

    c_go(&c, "slow");
    for (unsigned i = 0; i < 200; i++) {
        c_req(&c, NBD_CMD_READ, 0, i, i * 512, 512);
    }
    for (unsigned i = 0; i < 200; i++) {
        uint8_t r[NBD_SIMPLE_REPLY_SIZE];

        assert_true(c_recv(&c, r, sizeof(r)));
        assert_int_equal(nbd_get32(r + 4), 0);
        uint64_t cookie = nbd_get64(r + 8);
        assert_true(cookie < 200 && !seen[cookie]);
        seen[cookie] = true;
        assert_true(c_recv(&c, data, sizeof(data)));
    }
    c_close(&c);
}

/* NBD_CMD_DISC after requests: they are answered, then the server
 * hangs up. */
static void test_disc_answers(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    uint8_t data[512];

    c_go(&c, "slow");
    for (unsigned i = 0; i < 4; i++) {
        c_req(&c, NBD_CMD_READ, 0, i, 0, sizeof(data));
    }
    c_req(&c, NBD_CMD_DISC, 0, 99, 0, 0);
    for (unsigned i = 0; i < 4; i++) {
        uint8_t r[NBD_SIMPLE_REPLY_SIZE];

        assert_true(c_recv(&c, r, sizeof(r)));
        assert_int_equal(nbd_get32(r + 4), 0);
        assert_true(c_recv(&c, data, sizeof(data)));
    }
    assert_true(c_closed(&c));
    c_close(&c);
}

static void coroutine_fn del_co(void *opaque)
{
    q_obj_block_export_del_arg arg = { .id = opaque };
    GError *err = NULL;

    qmp_block_export_del(&arg, &err);
    assert_null(err);
}

/* Big reads queued without reading replies go through the memory budget
 * (at most 64 MiB of buffers in flight): all still get answered. */
static void test_budget(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    const uint32_t len = NBD_MAX_BUFFER_SIZE;
    g_autofree uint8_t *data = g_malloc(len);

    c_go(&c, "big");
    for (unsigned i = 0; i < 6; i++) {
        c_req(&c, NBD_CMD_READ, 0, i, (uint64_t)i * len, len);
    }
    for (unsigned i = 0; i < 6; i++) {
        uint8_t r[NBD_SIMPLE_REPLY_SIZE];

        assert_true(c_recv(&c, r, sizeof(r)));
        assert_int_equal(nbd_get32(r + 4), 0);
        assert_true(c_recv(&c, data, len));
    }
    assert_true(buffer_is_zero(data, len));
    c_close(&c);
}

/* qemu:dirty-bitmap:NAME: listed, selected, extents dirty/clean; the
 * bitmap is busy while exported. */
static void test_bitmap(void **state)
{
    GError *err = NULL;
    BdrvDirtyBitmap *bm = bdrv_create_dirty_bitmap(node, 65536, "b0", &err);
    uint8_t buf[256];
    unsigned n;
    Chunk ch;

    assert_non_null(bm);
    bdrv_set_dirty_bitmap(bm, 65536, 2 * 65536);
    assert_false(blk_exp_add_keyval(
        "type=nbd,id=ebm,node-name=n0,name=bm,bitmaps.0=nope", &err));
    assert_string_equal(err->message, "Bitmap 'nope' is not found");
    g_clear_error(&err);
    /* still recording writes: not for a read-only export */
    assert_false(blk_exp_add_keyval(
        "type=nbd,id=ebm,node-name=n0,name=bm,bitmaps.0=b0", &err));
    assert_string_equal(err->message,
                        "Enabled bitmap 'b0' incompatible with readonly "
                        "export");
    g_clear_error(&err);
    assert_true(blk_exp_add_keyval(
        "type=nbd,id=ebm,node-name=n0,name=bm,writable=on,bitmaps.0=b0",
        &err));
    assert_true(bdrv_dirty_bitmap_busy(bm));

    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    c_structured(&c);
    size_t len = put_string(buf, "bm");
    nbd_put32(buf + len, 1);
    len += 4;
    len += put_string(buf + len, "qemu:");
    c_opt(&c, NBD_OPT_LIST_META_CONTEXT, buf, (uint32_t)len);
    uint8_t *data;
    uint32_t dlen;
    assert_int_equal(c_reply(&c, NBD_OPT_LIST_META_CONTEXT, &data, &dlen),
                     NBD_REP_META_CONTEXT);
    assert_int_equal(dlen, 4 + strlen("qemu:dirty-bitmap:b0"));
    assert_memory_equal(data + 4, "qemu:dirty-bitmap:b0", dlen - 4);
    g_free(data);
    assert_int_equal(c_final(&c, NBD_OPT_LIST_META_CONTEXT, &n), NBD_REP_ACK);
    assert_int_equal(n, 1);

    len = put_string(buf, "bm");
    nbd_put32(buf + len, 2);
    len += 4;
    len += put_string(buf + len, "base:allocation");
    len += put_string(buf + len, "qemu:dirty-bitmap:b0");
    c_opt(&c, NBD_OPT_SET_META_CONTEXT, buf, (uint32_t)len);
    assert_int_equal(c_final(&c, NBD_OPT_SET_META_CONTEXT, &n), NBD_REP_ACK);
    assert_int_equal(n, 3);
    c_go(&c, "bm");

    c_req(&c, NBD_CMD_BLOCK_STATUS, 0, 1, 0, 4 * 65536);
    ch = c_chunk(&c);
    assert_int_equal(nbd_get32(ch.data), NBD_META_ID_BASE_ALLOCATION);
    assert_false(ch.flags & NBD_REPLY_FLAG_DONE);
    g_free(ch.data);
    ch = c_chunk(&c);
    assert_true(ch.flags & NBD_REPLY_FLAG_DONE);
    assert_int_equal(nbd_get32(ch.data), NBD_META_ID_DIRTY_BITMAP);
    assert_int_equal(ch.len, 4 + 3 * 8);
    assert_int_equal(nbd_get32(ch.data + 4), 65536); /* clean */
    assert_int_equal(nbd_get32(ch.data + 8), 0);
    assert_int_equal(nbd_get32(ch.data + 12), 2 * 65536); /* dirty */
    assert_int_equal(nbd_get32(ch.data + 16), 1);
    assert_int_equal(nbd_get32(ch.data + 20), 65536);
    assert_int_equal(nbd_get32(ch.data + 24), 0);
    g_free(ch.data);

    /* REQ_ONE: one descriptor per context */
    c_req(&c, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 2, 65536, 65536 * 3);
    for (int i = 0; i < 2; i++) {
        ch = c_chunk(&c);
        assert_int_equal(ch.len, 12);
        g_free(ch.data);
    }
    c_close(&c);

    coroutine_run_sync(del_co, (void *)"ebm");
    assert_false(bdrv_dirty_bitmap_busy(bm));
    bdrv_release_dirty_bitmap(bm);
}

static void coroutine_fn del_hard_co(void *opaque)
{
    q_obj_block_export_del_arg arg = {
        .id = (char *)"eslow",
        .has_mode = true,
        .mode = BLOCK_EXPORT_REMOVE_MODE_HARD,
    };
    q_obj_block_export_del_arg safe = { .id = (char *)"eslow" };
    GError *err = NULL;

    qmp_block_export_del(&safe, &err);
    assert_non_null(err);
    assert_string_equal(err->message, "export 'eslow' still in use");
    g_clear_error(&err);
    qmp_block_export_del(&arg, &err);
    assert_null(err);
    assert_null(blk_exp_find("eslow"));
}

/* block-export-del hard with requests in flight: the client is cut off,
 * the requests finish, the export goes. */
static void test_delete_hard(void **state)
{
    Client c = c_connect(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);

    c_go(&c, "slow");
    for (unsigned i = 0; i < 8; i++) {
        c_req(&c, NBD_CMD_READ, 0, i, 0, 4096);
    }
    for (int i = 0; i < 5; i++) {
        aio_poll(false);
    }
    coroutine_run_sync(del_hard_co, NULL);
    c_close(&c);
    assert_int_equal(nbd_client_count(), 0);
}

static void coroutine_fn setup_co(void *opaque)
{
    GError *err = NULL;
    BlockDriverState *slow;

    node = bdrv_co_open_keyval(
        "driver=null-co,node-name=n0,size=4194304,read-zeroes=on", &err);
    assert_non_null(node);
    slow = bdrv_co_open_keyval("driver=null-co,node-name=n1,size=4194304,"
                               "read-zeroes=on,latency-ns=2000000",
                               &err);
    assert_non_null(slow);
    BlockDriverState *big = bdrv_co_open_keyval(
        "driver=null-co,node-name=n2,size=268435456,read-zeroes=on", &err);
    assert_non_null(big);
    bdrv_set_monitor_owned(node);
    bdrv_set_monitor_owned(slow);
    bdrv_set_monitor_owned(big);
    assert_true(blk_exp_add_keyval("type=nbd,id=ebig,node-name=n2,name=big",
                                   &err));
    assert_true(blk_exp_add_keyval(
        "type=nbd,id=e0,node-name=n0,name=disk,writable=on", &err));
    assert_true(blk_exp_add_keyval(
        "type=nbd,id=e1,node-name=n0,name=ro,allocation-depth=on", &err));
    assert_true(blk_exp_add_keyval(
        "type=nbd,id=eslow,node-name=n1,name=slow", &err));
}

static int setup(void **state)
{
    GError *err = NULL;

    assert_true(aio_init(&err));
    assert_non_null(mkdtemp(sockdir));
    g_autofree char *opts =
        g_strdup_printf("addr.type=unix,addr.path=%s/nbd.sock", sockdir);
    assert_true(nbd_server_start_keyval(opts, &err));
    coroutine_run_sync(setup_co, NULL);
    return 0;
}

static int teardown(void **state)
{
    blk_exp_close_all();
    assert_false(nbd_server_is_running());
    rmdir(sockdir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_bad_handshakes),
        cmocka_unit_test(test_simple_replies),
        cmocka_unit_test(test_structured),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_disc_answers),
        cmocka_unit_test(test_bitmap),
        cmocka_unit_test(test_delete_hard),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
