/*
 * blockd-img helpers shared by the commands: messages in qemu-img's form
 * and QEMU's size parsing and printing.  Kept apart from main() so unit
 * tests can link them.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/img.h"

/* ---- messages ---- */

static void verror(const char *fmt, va_list ap)
{
    fflush(stdout); /* keep "Formatting ..." before a following error */
    fprintf(stderr, IMG_PROG ": ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void img_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror(fmt, ap);
    va_end(ap);
}

void img_error_exit(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '" IMG_PROG " --help' for more information\n");
    exit(EXIT_FAILURE);
}

void img_bad_option(int c, char **argv)
{
    if (c == ':') {
        img_error_exit("missing argument for option '%s'", argv[optind - 1]);
    }
    img_error_exit("unrecognized option '%s'", argv[optind - 1]);
}

/* ---- numbers ---- */

static int64_t suffix_mul(char c)
{
    switch (c) {
    case 'b':
    case 'B':
        return 1;
    case 'k':
    case 'K':
        return 1LL << 10;
    case 'm':
    case 'M':
        return 1LL << 20;
    case 'g':
    case 'G':
        return 1LL << 30;
    case 't':
    case 'T':
        return 1LL << 40;
    case 'p':
    case 'P':
        return 1LL << 50;
    case 'e':
    case 'E':
        return 1LL << 60;
    default:
        return 0;
    }
}

int img_strtosz(const char *s, uint64_t *out)
{
    const char *p = s;
    char *end;
    uint64_t val;
    uint64_t frac = 0; /* 0.64 fixed point */

    while (g_ascii_isspace(*p)) {
        p++;
    }
    if (*p == '-' || !*p) {
        return -EINVAL;
    }
    errno = 0;
    val = strtoull(p, &end, 10);
    if (end == p) {
        return -EINVAL;
    }
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        /* Hex: no fraction and no suffix. */
        errno = 0;
        val = strtoull(p, &end, 16);
        if (errno == ERANGE) {
            return -ERANGE;
        }
        if (*end == '.' || suffix_mul(*end)) {
            return -EINVAL;
        }
    } else if (*end == '.') {
        const char *f = end;
        char *fend;
        double fraction = strtod(f, &fend);

        if (fend == f) {
            end++; /* "1.k" is 1k: a bare dot */
        } else if (memchr(f, 'e', fend - f) || memchr(f, 'E', fend - f) ||
                   !isfinite(fraction)) {
            return -EINVAL;
        } else {
            frac = (uint64_t)ldexp(fraction, 64);
            end = fend;
        }
    }

    int64_t mul = suffix_mul(*end);
    if (mul > 0) {
        end++;
    } else {
        mul = 1;
    }
    if (*end) {
        return -EINVAL;
    }
    if (mul == 1) {
        if (frac) {
            return -EINVAL; /* a fraction needs a scale */
        }
    } else {
        unsigned __int128 whole = (unsigned __int128)val * (uint64_t)mul;
        unsigned __int128 part = (unsigned __int128)frac * (uint64_t)mul;
        whole += part >> 64;
        whole += ((uint64_t)part) >> 63; /* round 0.5 up */
        if (whole >> 64) {
            return -ERANGE;
        }
        val = (uint64_t)whole;
    }
    *out = val;
    return 0;
}

int64_t img_cvtnum(const char *name, const char *value)
{
    uint64_t res;
    int err = img_strtosz(value, &res);

    if (err < 0 && err != -ERANGE) {
        img_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for",
                  name);
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
        return -1;
    }
    if (err == -ERANGE || res > INT64_MAX) {
        img_error("Invalid %s specified. Must be between 0 and %" PRId64 ".",
                  name, INT64_MAX);
        return -1;
    }
    return (int64_t)res;
}

char *img_size_to_str(uint64_t val)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi",
                                            "Ti", "Pi", "Ei" };
    int i;

    /*
     * The exponent picks the unit so that the number shown is below 1000
     * (1000 KiB is shown as 0.977 MiB), as QEMU does.
     */
    frexp(val / (1000.0 / 1024.0), &i);
    i = (i - 1) / 10;
    if (i < 0) {
        i = 0;
    }
    uint64_t div = 1ULL << (i * 10);
    return g_strdup_printf("%0.3g %sB", (double)val / div, suffixes[i]);
}

void img_warn_probed_raw(const char *filename)
{
    fflush(stdout);
    fprintf(stderr,
            "WARNING: Image format was not specified for '%s' and probing "
            "guessed raw.\n"
            "         Automatically detecting the format is dangerous for "
            "raw images, write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the "
            "restrictions.\n",
            filename);
}

/* ---- -o option lists ---- */

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

void img_opt_next(const char **pp, bool no_prefix, char **name, char **value)
{
    const char *p = *pp;
    size_t len = strcspn(p, "=,");

    if (p[len] != '=') {
        if (no_prefix && len >= 2 && !strncmp(p, "no", 2)) {
            *name = g_strndup(p + 2, len - 2);
            *value = g_strdup("off");
        } else {
            *name = g_strndup(p, len);
            *value = g_strdup("on");
        }
        p += len;
    } else {
        *name = g_strndup(p, len);
        p = get_value(p + len + 1, value);
    }
    if (*p == ',') {
        p++;
    }
    *pp = p;
}

bool img_opts_want_help(const char *opts)
{
    g_auto(GStrv) parts = g_strsplit(opts, ",", -1);
    for (int i = 0; parts[i]; i++) {
        if (!strcmp(parts[i], "help") || !strcmp(parts[i], "?")) {
            return true;
        }
    }
    return false;
}

void img_opts_append(char **options, const char *arg)
{
    char *joined =
        *options ? g_strdup_printf("%s,%s", *options, arg) : g_strdup(arg);
    g_free(*options);
    *options = joined;
}
