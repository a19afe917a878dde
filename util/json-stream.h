/*
 * Streaming JSON framing for QMP: bytes go in as they arrive from a
 * socket (split reads, pipelined messages, garbage); complete top-level
 * JSON values come out, each parsed with json-glib.
 *
 * The splitter tracks string/escape state and {}/[] depth only; json-glib
 * does the parsing of each framed message.  A message that fails to parse,
 * exceeds `max_size` bytes or `max_depth` nesting produces an error
 * callback; the splitter then resynchronises (after an oversized message it
 * discards input until the depth returns to 0, or at a newline when it is
 * outside any value) and goes on.
 */
#ifndef UTIL_JSON_STREAM_H
#define UTIL_JSON_STREAM_H

#include <glib.h>
#include <json-glib/json-glib.h>

typedef struct JsonStream JsonStream;

/* QEMU's nesting limit: QMP clients may rely on it. */
#define JSON_STREAM_DEFAULT_DEPTH 1024

/* `msg` is owned by the callee; `err` is owned by the caller. */
typedef void JsonStreamMessage(void *opaque, JsonNode *msg);
typedef void JsonStreamError(void *opaque, const GError *err);

JsonStream *json_stream_new(size_t max_size, int max_depth,
                            JsonStreamMessage *on_msg,
                            JsonStreamError *on_err, void *opaque);
void json_stream_feed(JsonStream *s, const char *buf, size_t len);
/* Input ended; an unfinished value is reported as an error. */
void json_stream_flush(JsonStream *s);
void json_stream_free(JsonStream *s);

/*
 * Parse one complete JSON text (a command-line argument, a file) with the
 * same lexer and messages as QMP input: "JSON parse error, ...", or
 * "Expecting at most one JSON value" when more follows.  NULL with *errp
 * set on error.
 */
JsonNode *json_parse_text(const char *text, size_t len, GError **errp);

/* Serialise compactly (no newlines), as QMP replies are sent. */
char *json_to_string_compact(JsonNode *node);

/*
 * The member names of `obj` in the order QMP writes them (QEMU's dict
 * order; the dispatcher checks request members in this order too, so the
 * first error reported is the one QEMU reports).  NULL-terminated; free
 * the array with g_free (the names belong to obj).
 */
const char **json_object_qmp_members(JsonObject *obj);

/*
 * Append `str` as a JSON string the way QEMU writes it (QMP and qemu-img
 * alike): UTF-8 validated (a bad byte becomes U+FFFD), everything outside
 * printable ASCII escaped as \uXXXX (surrogate pairs above U+FFFF).
 */
void json_put_string(GString *out, const char *str);

/*
 * Append a JSON_NODE_VALUE node (integer, double, boolean, string; any
 * other type as null) as QEMU prints scalars: doubles with %.17g in the C
 * locale, except integers beyond INT64_MAX that the lexer read, which are
 * echoed as written.
 */
void json_put_scalar(GString *out, JsonNode *node);

#endif
