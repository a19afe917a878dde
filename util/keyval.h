/*
 * keyval: "driver=qcow2,node-name=x,file.driver=file,file.filename=a.img"
 * into nested JSON objects (dotted keys nest; ",," escapes a comma in a
 * value).  All scalar values come out as JSON strings; the QAPI parsers
 * accept strings for numbers and booleans when told the input is keyval.
 *
 * Keys that are all digits at one level make that level an array
 * ("inject-error.0.event=...") and must cover 0..n-1 without gaps.  A key
 * that is both a value and an object, and an empty or invalid key are
 * errors.  A key given twice: the last value wins, as in
 * qemu-storage-daemon 7.2 ("driver=file,driver=raw" is a raw node).
 *
 * `implied_key`, if non-NULL, names the key of a first element with no '='
 * (e.g. "socket" for "--chardev socket,id=x").
 */
#ifndef UTIL_KEYVAL_H
#define UTIL_KEYVAL_H

#include <glib.h>
#include <json-glib/json-glib.h>

JsonNode *keyval_parse(const char *params, const char *implied_key,
                       GError **errp);

#endif
