/*
 * Streaming JSON framing for QMP.
 *
 * QMP input is a stream of JSON values with no delimiters, so a lexer must
 * find where each value ends.  This one follows the rules a QMP client
 * observes from QEMU: a value ends when its braces and its brackets are
 * both balanced (they are counted separately, so "{[}" waits for "]"); a
 * scalar at the top level is a value of its own; single-quoted strings are
 * accepted.  Lexical errors (a stray character, a control character inside
 * a string) are reported at once, the current value is dropped, and input
 * is skipped up to the next structural or control character (a newline,
 * typically).  Grammar errors are remembered and reported when the value
 * is complete, so one bad message costs one error reply.
 *
 * Each complete value is rewritten into plain JSON (double quotes, \u
 * escapes decoded to UTF-8, integers beyond int64 made floating point so
 * json-glib does not wrap them) and handed to json-glib, which builds the
 * tree.  Grammar is checked here first because json-glib is lenient (it
 * takes "01", "\x", raw tabs, duplicate keys) and its messages differ from
 * the ones QMP clients see.
 */
#include "util/json-stream.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

typedef enum LexState {
    LEX_VALUE,    /* between tokens */
    LEX_STRING,   /* inside a string */
    LEX_ESCAPE,   /* after a backslash */
    LEX_UNICODE,  /* collecting the hex digits of \uXXXX */
    LEX_KEYWORD,  /* [a-z]+: true, false, null or an error */
    LEX_NUMBER,   /* see NumState */
    LEX_RECOVER,  /* after a lexical error: skip to a sync character */
} LexState;

/* Where the innermost container's grammar stands. */
typedef enum GramState {
    G_OBJ_KEY_OR_END, /* after '{' */
    G_OBJ_KEY,        /* after ',' in an object */
    G_OBJ_COLON,
    G_OBJ_VALUE,
    G_OBJ_COMMA_OR_END,
    G_ARR_VALUE_OR_END, /* after '[' */
    G_ARR_VALUE,        /* after ',' in an array */
    G_ARR_COMMA_OR_END,
} GramState;

typedef enum TokKind { TOK_STRING, TOK_SCALAR, TOK_OPEN } TokKind;

/* Where a number stands: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)? */
typedef enum NumState {
    N_MINUS,
    N_ZERO,
    N_INT,
    N_DOT,
    N_FRAC,
    N_EXP,
    N_EXP_SIGN,
    N_EXP_DIGITS,
} NumState;

struct JsonStream {
    size_t max_size;
    int max_depth;
    JsonStreamMessage *on_msg;
    JsonStreamError *on_err;
    void *opaque;
    JsonParser *parser;

    LexState lex;
    bool in_msg;      /* inside a value (something consumed) */
    bool discarding;  /* over a limit: consume without keeping */
    size_t raw_len;   /* input bytes of the current value */
    long braces, brackets;

    GString *buf;     /* the current value, rewritten as plain JSON */
    char *deferred;   /* first grammar error of the current value */
    size_t nkeys;     /* object keys seen, to detect duplicates */
    bool nonascii;

    GByteArray *gram; /* GramState per open container */

    /* string state */
    char quote;
    size_t str_start; /* offset in buf of the string's opening quote */
    char uhex[5];
    int nhex;
    unsigned high;    /* pending high surrogate, 0 if none */
    char high_txt[5];

    GString *word;    /* the keyword or number being lexed */
    NumState num;
};

JsonStream *json_stream_new(size_t max_size, int max_depth,
                            JsonStreamMessage *on_msg,
                            JsonStreamError *on_err, void *opaque)
{
    JsonStream *s = g_new0(JsonStream, 1);

    s->max_size = max_size ? max_size : 1024 * 1024;
    s->max_depth = max_depth > 0 ? max_depth : JSON_STREAM_DEFAULT_DEPTH;
    s->on_msg = on_msg;
    s->on_err = on_err;
    s->opaque = opaque;
    s->parser = json_parser_new_immutable();
    s->buf = g_string_new(NULL);
    s->word = g_string_new(NULL);
    s->gram = g_byte_array_new();
    s->lex = LEX_VALUE;
    return s;
}

void json_stream_free(JsonStream *s)
{
    if (!s) {
        return;
    }
    g_object_unref(s->parser);
    g_string_free(s->buf, TRUE);
    g_string_free(s->word, TRUE);
    g_byte_array_free(s->gram, TRUE);
    g_free(s->deferred);
    g_free(s);
}

static void reset_msg(JsonStream *s)
{
    s->in_msg = false;
    s->discarding = false;
    s->raw_len = 0;
    s->braces = s->brackets = 0;
    g_string_truncate(s->buf, 0);
    g_string_truncate(s->word, 0);
    g_clear_pointer(&s->deferred, g_free);
    s->nkeys = 0;
    s->nonascii = false;
    g_byte_array_set_size(s->gram, 0);
    s->high = 0;
    s->nhex = 0;
}

static void report(JsonStream *s, const char *msg)
{
    GError *err = NULL;

    error_setg(&err, "%s", msg);
    s->on_err(s->opaque, err);
    g_error_free(err);
}

/* Remember the first grammar error of this value. */
static void defer_error(JsonStream *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void defer_error(JsonStream *s, const char *fmt, ...)
{
    va_list ap;

    if (s->deferred || s->discarding) {
        return;
    }
    va_start(ap, fmt);
    s->deferred = g_strdup_vprintf(fmt, ap);
    va_end(ap);
}

/* A lexical error: report now, drop the value, skip to a sync point. */
static void lex_error(JsonStream *s, const char *token, size_t len)
{
    bool quiet = s->discarding;

    if (!quiet) {
        char *msg = g_strdup_printf("JSON parse error, stray '%.*s'",
                                    (int)MIN(len, 64), token);
        report(s, msg);
        g_free(msg);
    }
    reset_msg(s);
    s->lex = LEX_RECOVER;
}

static size_t count_members(JsonNode *node)
{
    size_t n = 0;

    if (JSON_NODE_HOLDS_OBJECT(node)) {
        JsonObject *o = json_node_get_object(node);
        GList *vals = json_object_get_values(o);

        n = json_object_get_size(o);
        for (GList *l = vals; l; l = l->next) {
            n += count_members(l->data);
        }
        g_list_free(vals);
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *a = json_node_get_array(node);
        guint len = json_array_get_length(a);

        for (guint i = 0; i < len; i++) {
            n += count_members(json_array_get_element(a, i));
        }
    }
    return n;
}

static void finish_msg(JsonStream *s)
{
    GError *perr = NULL;
    JsonNode *root;

    if (s->discarding) {
        reset_msg(s);
        return;
    }
    if (!s->deferred && s->nonascii &&
        !g_utf8_validate(s->buf->str, s->buf->len, NULL)) {
        defer_error(s, "JSON parse error, invalid UTF-8 sequence in string");
    }
    if (s->deferred) {
        char *msg = g_steal_pointer(&s->deferred);

        reset_msg(s);
        report(s, msg);
        g_free(msg);
        return;
    }
    if (!json_parser_load_from_data(s->parser, s->buf->str, s->buf->len,
                                    &perr)) {
        /* Not expected after our own grammar check; report it anyway. */
        char *msg = g_strdup_printf("JSON parse error, %s", perr->message);

        g_error_free(perr);
        reset_msg(s);
        report(s, msg);
        g_free(msg);
        return;
    }
    root = json_parser_steal_root(s->parser);
    if (!root) {
        reset_msg(s);
        report(s, "JSON parse error, expecting value");
        return;
    }
    if (count_members(root) != s->nkeys) {
        json_node_unref(root);
        reset_msg(s);
        report(s, "JSON parse error, duplicate key");
        return;
    }
    reset_msg(s);
    s->on_msg(s->opaque, root);
}

static bool msg_complete(JsonStream *s)
{
    return (s->braces == 0 && s->brackets == 0) || s->braces < 0 ||
           s->brackets < 0;
}

/* The grammar step for a value starting (kind) in the current container. */
static void gram_value(JsonStream *s, TokKind kind)
{
    guint8 *top;

    if (s->deferred || s->discarding || s->gram->len == 0) {
        return;
    }
    top = &s->gram->data[s->gram->len - 1];
    switch ((GramState)*top) {
    case G_OBJ_KEY_OR_END:
    case G_OBJ_KEY:
        if (kind != TOK_STRING) {
            defer_error(s, "JSON parse error, key is not a string in object");
            return;
        }
        s->nkeys++;
        *top = G_OBJ_COLON;
        break;
    case G_OBJ_COLON:
        defer_error(s, "JSON parse error, missing : in object pair");
        break;
    case G_OBJ_VALUE:
        *top = G_OBJ_COMMA_OR_END;
        break;
    case G_OBJ_COMMA_OR_END:
        defer_error(s, "JSON parse error, expected separator in dict");
        break;
    case G_ARR_VALUE_OR_END:
    case G_ARR_VALUE:
        *top = G_ARR_COMMA_OR_END;
        break;
    case G_ARR_COMMA_OR_END:
        defer_error(s, "JSON parse error, expected separator in list");
        break;
    }
}

/* Grammar for ':' ',' '}' ']'. */
static void gram_punct(JsonStream *s, char c)
{
    GramState st;

    if (s->deferred || s->discarding) {
        return;
    }
    if (s->gram->len == 0) {
        defer_error(s, "JSON parse error, expecting value");
        return;
    }
    st = s->gram->data[s->gram->len - 1];
    switch (c) {
    case ':':
        if (st == G_OBJ_COLON) {
            s->gram->data[s->gram->len - 1] = G_OBJ_VALUE;
            return;
        }
        break;
    case ',':
        if (st == G_OBJ_COMMA_OR_END) {
            s->gram->data[s->gram->len - 1] = G_OBJ_KEY;
            return;
        }
        if (st == G_ARR_COMMA_OR_END) {
            s->gram->data[s->gram->len - 1] = G_ARR_VALUE;
            return;
        }
        break;
    case '}':
        if (st == G_OBJ_KEY_OR_END || st == G_OBJ_COMMA_OR_END) {
            g_byte_array_set_size(s->gram, s->gram->len - 1);
            return;
        }
        break;
    case ']':
        if (st == G_ARR_VALUE_OR_END || st == G_ARR_COMMA_OR_END) {
            g_byte_array_set_size(s->gram, s->gram->len - 1);
            return;
        }
        break;
    }
    if (st == G_OBJ_COLON) {
        defer_error(s, "JSON parse error, missing : in object pair");
    } else if (st == G_OBJ_COMMA_OR_END) {
        defer_error(s, "JSON parse error, expected separator in dict");
    } else if (st == G_ARR_COMMA_OR_END) {
        defer_error(s, "JSON parse error, expected separator in list");
    } else {
        defer_error(s, "JSON parse error, expecting value");
    }
}

static void append(JsonStream *s, const char *p, size_t len)
{
    if (!s->discarding) {
        g_string_append_len(s->buf, p, len);
    }
}

/* Count raw bytes against the size limit; false once over it. */
static bool account(JsonStream *s, size_t n)
{
    s->raw_len += n;
    if (!s->discarding && s->raw_len > s->max_size) {
        report(s, "JSON message size limit exceeded");
        /* Keep lexing (strings, depth) but keep nothing. */
        g_string_truncate(s->buf, 0);
        g_clear_pointer(&s->deferred, g_free);
        s->discarding = true;
        return false;
    }
    return true;
}

/* The state after c, or -1 when c does not continue the number. */
static int num_next(NumState st, unsigned char c)
{
    bool digit = g_ascii_isdigit(c);
    bool exp = c == 'e' || c == 'E';

    switch (st) {
    case N_MINUS:
        return c == '0' ? N_ZERO : digit ? N_INT : -1;
    case N_ZERO:
        return c == '.' ? N_DOT : exp ? N_EXP : -1;
    case N_INT:
        return digit ? N_INT : c == '.' ? N_DOT : exp ? N_EXP : -1;
    case N_DOT:
        return digit ? N_FRAC : -1;
    case N_FRAC:
        return digit ? N_FRAC : exp ? N_EXP : -1;
    case N_EXP:
        return c == '+' || c == '-' ? N_EXP_SIGN : digit ? N_EXP_DIGITS : -1;
    case N_EXP_SIGN:
    case N_EXP_DIGITS:
        return digit ? N_EXP_DIGITS : -1;
    }
    return -1;
}

static bool num_complete(NumState st)
{
    return st == N_ZERO || st == N_INT || st == N_FRAC || st == N_EXP_DIGITS;
}

/* A scalar ended; at the top level it is a message of its own. */
static void scalar_done(JsonStream *s)
{
    g_string_truncate(s->word, 0);
    s->lex = LEX_VALUE;
    if (s->braces == 0 && s->brackets == 0) {
        finish_msg(s);
    }
}

static void finish_keyword(JsonStream *s)
{
    const char *w = s->word->str;

    gram_value(s, TOK_SCALAR);
    if (!strcmp(w, "true") || !strcmp(w, "false") || !strcmp(w, "null")) {
        append(s, w, s->word->len);
    } else {
        defer_error(s, "JSON parse error, invalid keyword '%.64s'", w);
    }
    scalar_done(s);
}

/*
 * QEMU keeps integers up to UINT64_MAX exact and echoes them so (a
 * request's "id": 12345678901234567890).  json-glib has no unsigned 64-bit
 * numbers, so those beyond int64 become doubles; we remember the literal
 * of each such double and print the literal when that double is written.
 * A small ring is enough: a reply is built right after its request.
 */
#define BIG_LITERALS 64

static struct {
    uint64_t bits;
    char text[21];
} big_literals[BIG_LITERALS];
static unsigned big_literal_next;

static void big_literal_note(const char *w)
{
    guint64 v;
    double d;

    errno = 0;
    v = g_ascii_strtoull(w, NULL, 10);
    if (w[0] == '-' || errno == ERANGE || strlen(w) > 20) {
        return; /* beyond uint64: a plain double for QEMU too */
    }
    (void)v;
    d = g_ascii_strtod(w, NULL);
    memcpy(&big_literals[big_literal_next].bits, &d, sizeof(d));
    g_strlcpy(big_literals[big_literal_next].text, w,
              sizeof(big_literals[0].text));
    big_literal_next = (big_literal_next + 1) % BIG_LITERALS;
}

static const char *big_literal_find(double d)
{
    uint64_t bits;

    if (!(d >= 9223372036854775808.0 && d <= 18446744073709551616.0)) {
        return NULL;
    }
    memcpy(&bits, &d, sizeof(d));
    for (unsigned i = 0; i < BIG_LITERALS; i++) {
        if (big_literals[i].text[0] && big_literals[i].bits == bits) {
            return big_literals[i].text;
        }
    }
    return NULL;
}

static void finish_number(JsonStream *s)
{
    const char *w = s->word->str;

    gram_value(s, TOK_SCALAR);
    append(s, w, s->word->len);
    if (!strpbrk(w, ".eE")) {
        errno = 0;
        g_ascii_strtoll(w, NULL, 10);
        if (errno == ERANGE) {
            /* Beyond int64: json-glib would wrap it; keep the magnitude. */
            append(s, ".0", 2);
            if (!s->discarding) {
                big_literal_note(w);
            }
        }
    }
    scalar_done(s);
}

static void word_append(JsonStream *s, unsigned char c)
{
    account(s, 1);
    if (!s->discarding) {
        g_string_append_c(s->word, c);
    }
}

/*
 * A keyword or number continues with c, or ends.  Returns true when c
 * was consumed.
 */
static bool word_char(JsonStream *s, unsigned char c)
{
    if (s->lex == LEX_KEYWORD) {
        if (c >= 'a' && c <= 'z') {
            word_append(s, c);
            return true;
        }
        finish_keyword(s);
        return false;
    }
    {
        int next = num_next(s->num, c);

        if (next >= 0) {
            s->num = next;
            word_append(s, c);
            return true;
        }
        if (num_complete(s->num) && !(s->num == N_ZERO && g_ascii_isdigit(c))) {
            finish_number(s);
            return false;
        }
        /* "-}", "1.x", "01": the offending character is part of the error */
        {
            g_autofree char *tok = g_strdup_printf("%.63s%c", s->word->str, c);

            account(s, 1);
            g_string_truncate(s->word, 0);
            lex_error(s, tok, strlen(tok));
        }
        return true;
    }
}

static int hexval(char c)
{
    return g_ascii_xdigit_value(c);
}

static void append_unichar(JsonStream *s, gunichar cp)
{
    char tmp[8];

    if (cp < 0x20 || cp == '"' || cp == '\\') {
        snprintf(tmp, sizeof(tmp), "\\u%04X", (unsigned)cp);
        append(s, tmp, 6);
    } else {
        int n = g_unichar_to_utf8(cp, tmp);

        append(s, tmp, n);
    }
}

/* A complete \uXXXX escape. */
static void finish_unicode(JsonStream *s)
{
    unsigned cp = 0;

    for (int i = 0; i < 4; i++) {
        cp = cp * 16 + hexval(s->uhex[i]);
    }
    s->lex = LEX_STRING;
    if (s->high) {
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
            append_unichar(s, 0x10000 + ((s->high - 0xD800) << 10) +
                                  (cp - 0xDC00));
            s->high = 0;
            return;
        }
        defer_error(s, "JSON parse error, \\u%s is not a valid Unicode "
                    "character", s->high_txt);
        s->high = 0;
    }
    if (cp == 0) {
        defer_error(s, "JSON parse error, \\u0000 is not supported");
    } else if (cp >= 0xD800 && cp <= 0xDBFF) {
        s->high = cp;
        memcpy(s->high_txt, s->uhex, 5);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        defer_error(s, "JSON parse error, \\u%s is not a valid Unicode "
                    "character", s->uhex);
    } else {
        append_unichar(s, cp);
    }
}

/* A high surrogate must be followed at once by a low one. */
static void check_lone_high(JsonStream *s)
{
    if (s->high) {
        defer_error(s, "JSON parse error, \\u%s is not a valid Unicode "
                    "character", s->high_txt);
        s->high = 0;
    }
}

static void string_char(JsonStream *s, const char *p)
{
    unsigned char c = *p;

    switch (s->lex) {
    case LEX_UNICODE:
        if (c == (unsigned char)s->quote || c == '\\' || c < 0x20 ||
            c >= 0xFE) {
            /* Cut short: QEMU names what it got, a closing quote too. */
            if (c == (unsigned char)s->quote) {
                s->uhex[s->nhex++] = c;
            }
            s->uhex[s->nhex] = '\0';
            defer_error(s, "JSON parse error, \\u%s is not a valid Unicode "
                        "character", s->uhex);
            s->lex = LEX_STRING;
            string_char(s, p); /* c is an ordinary character again */
            return;
        }
        s->uhex[s->nhex++] = c;
        if (s->nhex == 4) {
            s->uhex[4] = '\0';
            if (strspn(s->uhex, "0123456789abcdefABCDEF") == 4) {
                finish_unicode(s);
            } else {
                defer_error(s, "JSON parse error, \\u%s is not a valid "
                            "Unicode character", s->uhex);
                s->lex = LEX_STRING;
            }
        }
        return;
    case LEX_ESCAPE:
        s->lex = LEX_STRING;
        if (c == 'u') {
            s->lex = LEX_UNICODE;
            s->nhex = 0;
            return;
        }
        check_lone_high(s);
        switch (c) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't': {
            char esc[2] = { '\\', c };

            append(s, esc, 2);
            return;
        }
        case '\'':
            append(s, "'", 1);
            return;
        default:
            if (c < 0x20 || c >= 0xFE) {
                break; /* the lexical error below */
            }
            defer_error(s, "JSON parse error, invalid escape sequence in "
                        "string");
            return;
        }
        break;
    default:
        break;
    }

    if (c < 0x20 || c >= 0xFE) {
        /* Raw control characters (and bytes never in UTF-8) end a string:
         * QEMU's lexer rejects them. */
        size_t start = MIN(s->str_start, s->buf->len);
        g_autofree char *tok = g_strdup_printf(
            "%.*s%c", (int)MIN(s->buf->len - start, 63),
            s->buf->str + start, c);

        lex_error(s, tok, strlen(tok));
        return;
    }
    if (c == '\\') {
        s->lex = LEX_ESCAPE;
        return;
    }
    check_lone_high(s);
    if (c == (unsigned char)s->quote) {
        append(s, "\"", 1);
        s->lex = LEX_VALUE;
        gram_value(s, TOK_STRING);
        if (s->braces == 0 && s->brackets == 0) {
            finish_msg(s);
        }
        return;
    }
    if (c == '"') {
        append(s, "\\\"", 2); /* inside a single-quoted string */
        return;
    }
    if (c >= 0x80) {
        s->nonascii = true;
    }
    append(s, p, 1);
}

static void structural(JsonStream *s, char c)
{
    switch (c) {
    case '{':
    case '[':
        gram_value(s, TOK_OPEN);
        if (c == '{') {
            s->braces++;
        } else {
            s->brackets++;
        }
        if (s->braces + s->brackets > s->max_depth && !s->discarding) {
            /* QEMU's words for its own (1024) limit. */
            report(s, "JSON nesting depth limit exceeded");
            g_string_truncate(s->buf, 0);
            g_clear_pointer(&s->deferred, g_free);
            s->discarding = true;
        }
        if (!s->discarding) {
            guint8 st = c == '{' ? G_OBJ_KEY_OR_END : G_ARR_VALUE_OR_END;

            g_byte_array_append(s->gram, &st, 1);
        }
        append(s, &c, 1);
        return;
    case '}':
    case ']':
        gram_punct(s, c);
        if (c == '}') {
            s->braces--;
        } else {
            s->brackets--;
        }
        append(s, &c, 1);
        if (msg_complete(s)) {
            finish_msg(s);
        }
        return;
    default: /* ':' ',' */
        gram_punct(s, c);
        append(s, &c, 1);
        if (msg_complete(s)) {
            finish_msg(s);
        }
        return;
    }
}

static void feed_byte(JsonStream *s, const char *p)
{
    unsigned char c = *p;

    if (s->lex == LEX_RECOVER) {
        if (c >= 0x20 && !strchr("{}[],:", c)) {
            return;
        }
        s->lex = LEX_VALUE;
        if (c < 0x20) {
            return;
        }
    }
    if (s->lex == LEX_KEYWORD || s->lex == LEX_NUMBER) {
        if (word_char(s, c)) {
            return;
        }
        /* c starts the next token */
    }
    if (s->lex != LEX_VALUE) {
        account(s, 1);
        string_char(s, p);
        return;
    }

    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        if (s->in_msg) {
            account(s, 1);
        }
        return;
    }
    s->in_msg = true;
    account(s, 1);
    if (c == '"' || c == '\'') {
        s->lex = LEX_STRING;
        s->quote = c;
        s->str_start = s->buf->len;
        s->high = 0;
        append(s, "\"", 1);
        return;
    }
    if (strchr("{}[],:", c) && c != '\0') {
        structural(s, c);
        return;
    }
    if (c >= 'a' && c <= 'z') {
        s->lex = LEX_KEYWORD;
    } else if (c == '-' || g_ascii_isdigit(c)) {
        s->lex = LEX_NUMBER;
        s->num = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
    }
    if (s->lex != LEX_VALUE) {
        if (!s->discarding) {
            g_string_append_c(s->word, c);
        }
        return;
    }
    {
        char tok[2] = { c, 0 };

        lex_error(s, tok, 1);
    }
}

void json_stream_feed(JsonStream *s, const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        feed_byte(s, buf + i);
    }
}

void json_stream_flush(JsonStream *s)
{
    /* A top-level scalar ends with the input. */
    if (s->lex == LEX_KEYWORD) {
        finish_keyword(s);
    } else if (s->lex == LEX_NUMBER && num_complete(s->num)) {
        finish_number(s);
    }
    if (s->lex == LEX_RECOVER) {
        s->lex = LEX_VALUE;
    }
    if (s->in_msg) {
        bool quiet = s->discarding;

        reset_msg(s);
        if (!quiet) {
            report(s, "JSON parse error, premature EOI");
        }
    }
    s->lex = LEX_VALUE;
}

/* ---- one complete text ---- */

typedef struct ParseText {
    JsonNode *value;
    GError *err;
} ParseText;

static void text_msg(void *opaque, JsonNode *msg)
{
    ParseText *pt = opaque;

    if (!pt->value && !pt->err) {
        pt->value = msg;
        return;
    }
    json_node_unref(msg);
    if (!pt->err) {
        error_setg(&pt->err, "Expecting at most one JSON value");
    }
}

static void text_err(void *opaque, const GError *err)
{
    ParseText *pt = opaque;

    if (pt->err) {
        return;
    }
    if (pt->value) {
        error_setg(&pt->err, "Expecting at most one JSON value");
    } else {
        pt->err = g_error_copy(err);
    }
}

JsonNode *json_parse_text(const char *text, size_t len, GError **errp)
{
    ParseText pt = { 0 };
    /* No size limit for a text we hold already; QEMU's nesting limit. */
    JsonStream *s = json_stream_new(len + 1, JSON_STREAM_DEFAULT_DEPTH,
                                    text_msg, text_err, &pt);

    json_stream_feed(s, text, len);
    json_stream_flush(s);
    json_stream_free(s);
    if (!pt.err && !pt.value) {
        error_setg(&pt.err, "Expecting a JSON value");
    }
    if (pt.err) {
        if (pt.value) {
            json_node_unref(pt.value);
        }
        g_propagate_error(errp, pt.err);
        return NULL;
    }
    return pt.value;
}

/* ---- serialisation ---- */

/*
 * QEMU keeps a QMP object's members in a 512-bucket hash table and writes
 * them in bucket order (later insertions first within a bucket).  Clients
 * must not care, but people diff transcripts, so we write members in the
 * same order.  The hash is the classic TDB string hash.
 */
static unsigned member_bucket(const char *name)
{
    size_t len = strlen(name);
    uint32_t v = (uint32_t)(0x238F13AFu * (uint32_t)len);

    for (size_t i = 0; i < len; i++) {
        v += (uint32_t)(unsigned char)name[i] << (i * 5 % 24);
    }
    return (uint32_t)(1103515243u * v + 12345u) % 512;
}

typedef struct MemberRef {
    unsigned bucket;
    unsigned index;
    const char *name;
} MemberRef;

static int member_cmp(const void *a, const void *b)
{
    const MemberRef *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return x->index > y->index ? -1 : x->index < y->index;
}

void json_put_string(GString *out, const char *str)
{
    const char *p = str;

    g_string_append_c(out, '"');
    while (*p) {
        gunichar cp = g_utf8_get_char_validated(p, -1);
        const char *next;

        if (cp == (gunichar)-1 || cp == (gunichar)-2) {
            cp = 0xFFFD; /* not UTF-8: substitute, skip one byte */
            next = p + 1;
        } else {
            next = g_utf8_next_char(p);
        }
        switch (cp) {
        case '"':
            g_string_append(out, "\\\"");
            break;
        case '\\':
            g_string_append(out, "\\\\");
            break;
        case '\b':
            g_string_append(out, "\\b");
            break;
        case '\f':
            g_string_append(out, "\\f");
            break;
        case '\n':
            g_string_append(out, "\\n");
            break;
        case '\r':
            g_string_append(out, "\\r");
            break;
        case '\t':
            g_string_append(out, "\\t");
            break;
        default:
            if (cp > 0xFFFF) {
                cp -= 0x10000;
                g_string_append_printf(out, "\\u%04X\\u%04X",
                                       0xD800 + (cp >> 10),
                                       0xDC00 + (cp & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                g_string_append_printf(out, "\\u%04X", cp);
            } else {
                g_string_append_c(out, (char)cp);
            }
        }
        p = next;
    }
    g_string_append_c(out, '"');
}

void json_put_scalar(GString *out, JsonNode *node)
{
    GType t = json_node_get_value_type(node);

    if (t == G_TYPE_INT64) {
        g_string_append_printf(out, "%" PRId64, json_node_get_int(node));
    } else if (t == G_TYPE_DOUBLE) {
        char tmp[G_ASCII_DTOSTR_BUF_SIZE];
        double d = json_node_get_double(node);
        const char *lit = big_literal_find(d);

        /* %.17g as QEMU prints, in the C locale whatever LC_NUMERIC. */
        g_string_append(
            out, lit ? lit : g_ascii_formatd(tmp, sizeof(tmp), "%.17g", d));
    } else if (t == G_TYPE_BOOLEAN) {
        g_string_append(out, json_node_get_boolean(node) ? "true" : "false");
    } else if (t == G_TYPE_STRING) {
        json_put_string(out, json_node_get_string(node));
    } else {
        g_string_append(out, "null");
    }
}

static void put_node(GString *out, JsonNode *node);

const char **json_object_qmp_members(JsonObject *obj)
{
    GList *names = json_object_get_members(obj); /* insertion order */
    guint n = g_list_length(names), i = 0;
    MemberRef *refs = g_new(MemberRef, n ? n : 1);
    const char **res = g_new(const char *, n + 1);

    for (GList *l = names; l; l = l->next, i++) {
        refs[i].name = l->data;
        refs[i].index = i;
        refs[i].bucket = member_bucket(l->data);
    }
    g_list_free(names);
    qsort(refs, n, sizeof(*refs), member_cmp);
    for (i = 0; i < n; i++) {
        res[i] = refs[i].name;
    }
    res[n] = NULL;
    g_free(refs);
    return res;
}

static void put_object(GString *out, JsonObject *obj)
{
    const char **names = json_object_qmp_members(obj);

    g_string_append_c(out, '{');
    for (int i = 0; names[i]; i++) {
        if (i) {
            g_string_append(out, ", ");
        }
        json_put_string(out, names[i]);
        g_string_append(out, ": ");
        put_node(out, json_object_get_member(obj, names[i]));
    }
    g_string_append_c(out, '}');
    g_free(names);
}

static void put_node(GString *out, JsonNode *node)
{
    if (!node) {
        g_string_append(out, "null");
        return;
    }
    switch (json_node_get_node_type(node)) {
    case JSON_NODE_OBJECT:
        put_object(out, json_node_get_object(node));
        break;
    case JSON_NODE_ARRAY: {
        JsonArray *a = json_node_get_array(node);
        guint len = json_array_get_length(a);

        g_string_append_c(out, '[');
        for (guint i = 0; i < len; i++) {
            if (i) {
                g_string_append(out, ", ");
            }
            put_node(out, json_array_get_element(a, i));
        }
        g_string_append_c(out, ']');
        break;
    }
    case JSON_NODE_NULL:
        g_string_append(out, "null");
        break;
    case JSON_NODE_VALUE:
        json_put_scalar(out, node);
        break;
    }
}

char *json_to_string_compact(JsonNode *node)
{
    GString *out = g_string_new(NULL);

    put_node(out, node);
    return g_string_free(out, FALSE);
}
