/*
 * NBD wire protocol: constants and big-endian field helpers.
 *
 * Values are those of the NBD protocol document (doc/proto.md of the
 * NetworkBlockDevice/nbd project).  Everything on the wire is big-endian;
 * messages are built and parsed byte by byte with the helpers below so
 * that no packed structs or alignment assumptions are needed.
 */
#ifndef BLOCK_EXPORT_NBD_PROTO_H
#define BLOCK_EXPORT_NBD_PROTO_H

#include <stdint.h>

/* ---- handshake ---- */
#define NBD_MAGIC 0x4e42444d41474943ULL       /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC 0x49484156454f5054ULL  /* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x0003e889045565a9ULL   /* option replies */

/* Handshake flags (server -> client, 16 bits). */
#define NBD_FLAG_FIXED_NEWSTYLE (1 << 0)
#define NBD_FLAG_NO_ZEROES (1 << 1)

/* Client flags (client -> server, 32 bits). */
#define NBD_FLAG_C_FIXED_NEWSTYLE (1 << 0)
#define NBD_FLAG_C_NO_ZEROES (1 << 1)

/* Transmission flags (16 bits). */
#define NBD_FLAG_HAS_FLAGS (1 << 0)
#define NBD_FLAG_READ_ONLY (1 << 1)
#define NBD_FLAG_SEND_FLUSH (1 << 2)
#define NBD_FLAG_SEND_FUA (1 << 3)
#define NBD_FLAG_ROTATIONAL (1 << 4)
#define NBD_FLAG_SEND_TRIM (1 << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1 << 6)
#define NBD_FLAG_SEND_DF (1 << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1 << 8)
#define NBD_FLAG_SEND_RESIZE (1 << 9)
#define NBD_FLAG_SEND_CACHE (1 << 10)
#define NBD_FLAG_SEND_FAST_ZERO (1 << 11)

/* Options. */
#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT 2
#define NBD_OPT_LIST 3
#define NBD_OPT_STARTTLS 5
#define NBD_OPT_INFO 6
#define NBD_OPT_GO 7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT 10
#define NBD_OPT_EXTENDED_HEADERS 11

/* Option replies. */
#define NBD_REP_ACK 1
#define NBD_REP_SERVER 2
#define NBD_REP_INFO 3
#define NBD_REP_META_CONTEXT 4
#define NBD_REP_ERR(v) ((1U << 31) | (v))
#define NBD_REP_ERR_UNSUP NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG NBD_REP_ERR(9)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT 0
#define NBD_INFO_NAME 1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE 3

/* ---- transmission ---- */
#define NBD_REQUEST_MAGIC 0x25609513U
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698U
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efU

#define NBD_REQUEST_SIZE 28
#define NBD_SIMPLE_REPLY_SIZE 16
#define NBD_STRUCTURED_REPLY_SIZE 20

/* Commands. */
#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_CACHE 5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

/* Command flags. */
#define NBD_CMD_FLAG_FUA (1 << 0)
#define NBD_CMD_FLAG_NO_HOLE (1 << 1)
#define NBD_CMD_FLAG_DF (1 << 2)
#define NBD_CMD_FLAG_REQ_ONE (1 << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1 << 4)

/* Structured reply flags and chunk types. */
#define NBD_REPLY_FLAG_DONE (1 << 0)
#define NBD_REPLY_TYPE_NONE 0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR ((1 << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1 << 15) + 2)

/* base:allocation flags. */
#define NBD_STATE_HOLE (1 << 0)
#define NBD_STATE_ZERO (1 << 1)

/* Error values carried on the wire (not the host's errno values). */
#define NBD_SUCCESS 0
#define NBD_EPERM 1
#define NBD_EIO 5
#define NBD_ENOMEM 12
#define NBD_EINVAL 22
#define NBD_ENOSPC 28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP 95
#define NBD_ESHUTDOWN 108

/* ---- limits ---- */
/* Strings (export names, descriptions, queries) per the spec. */
#define NBD_MAX_STRING_SIZE 4096
/* Largest READ/WRITE payload we accept: advertised as maximum block size. */
#define NBD_MAX_BUFFER_SIZE (32 * 1024 * 1024)
/* Preferred block size advertised in NBD_INFO_BLOCK_SIZE. */
#define NBD_PREFERRED_BLOCK_SIZE 4096
/*
 * Largest option payload we read.  Enough for any sane GO/INFO or
 * meta-context query list (a name plus many queries); bigger ones are
 * skipped without being stored and answered with NBD_REP_ERR_TOO_BIG.
 */
#define NBD_MAX_OPTION_SIZE (64 * 1024)
/* Options whose payload is bigger than this are a denial-of-service
 * attempt: the connection is dropped instead of skipping the data. */
#define NBD_MAX_OPTION_SKIP NBD_MAX_BUFFER_SIZE

/* Meta-context ids we hand out (stable per export). */
#define NBD_META_ID_BASE_ALLOCATION 0
#define NBD_META_ID_ALLOCATION_DEPTH 1
#define NBD_META_ID_DIRTY_BITMAP 2 /* + index of the bitmap */

/* ---- big-endian helpers ---- */
static inline void nbd_put16(uint8_t *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v;
}

static inline void nbd_put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static inline void nbd_put64(uint8_t *p, uint64_t v)
{
    nbd_put32(p, v >> 32);
    nbd_put32(p + 4, (uint32_t)v);
}

static inline uint16_t nbd_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t nbd_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t nbd_get64(const uint8_t *p)
{
    return (uint64_t)nbd_get32(p) << 32 | nbd_get32(p + 4);
}

#endif
