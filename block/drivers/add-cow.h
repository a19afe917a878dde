/*
 * add-cow: a raw (or any format) image file plus a separate metadata file
 * holding a header and a copy-on-write bitmap, one bit per cluster.  The
 * layout is in docs/specs/add-cow.md.  This header is shared by the
 * driver, blockd-img (create/info/check) and the fuzz target.
 */
#ifndef BLOCK_DRIVERS_ADD_COW_H
#define BLOCK_DRIVERS_ADD_COW_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

#define ADD_COW_MAGIC 0x574F4341u /* "ACOW" read as little-endian u32 */
#define ADD_COW_HEADER_STRUCT 76  /* fixed part; names follow */
#define ADD_COW_MIN_CLUSTER_BITS 12
#define ADD_COW_MAX_CLUSTER_BITS 21
#define ADD_COW_DEFAULT_CLUSTER_BITS 16
/* Largest header_size accepted on read (the names must fit inside). */
#define ADD_COW_MAX_HEADER_SIZE (1u << 21)
#define ADD_COW_FMT_LEN 16
/* A stored name is at most this long (a path). */
#define ADD_COW_MAX_NAME 4095
/* compat_features bit 0: every cluster is valid, the bitmap and the
 * backing file are ignored.  blockd treats it as mandatory. */
#define ADD_COW_COMPAT_ALL_ALLOCATED (1ull << 0)
/* incompatible features blockd knows: none */
#define ADD_COW_FEATURES_KNOWN ((uint64_t)0)
/* Bitmap memory blockd is willing to hold for one image (1 bit per
 * cluster: 512 MiB covers 16 TiB at 4 KiB clusters). */
#define ADD_COW_MAX_BITMAP_BYTES (UINT64_C(1) << 29)

typedef struct AddCowHeader {
    uint32_t backing_name_off, backing_name_len;
    uint32_t image_name_off, image_name_len;
    uint32_t cluster_bits;
    uint64_t features;
    uint64_t compat_features;
    uint32_t header_size;
    char backing_fmt[ADD_COW_FMT_LEN]; /* NUL-terminated; "" = none */
    char image_fmt[ADD_COW_FMT_LEN];   /* NUL-terminated, non-empty */
    char *backing_name;                /* NULL: no backing file */
    char *image_name;
} AddCowHeader;

/*
 * Validate the fixed 76 bytes (magic, features, cluster_bits,
 * header_size, the name offsets/lengths against header_size, format
 * fields).  On success the caller reads header_size bytes and calls
 * add_cow_header_parse_names().
 */
bool add_cow_header_parse_fixed(const uint8_t *buf, AddCowHeader *h,
                                GError **errp);
/* Extract the names from the first h->header_size bytes of the file. */
bool add_cow_header_parse_names(const uint8_t *buf, size_t len,
                                AddCowHeader *h, GError **errp);
void add_cow_header_clear(AddCowHeader *h);
/* Serialise: a zero-filled buffer of h->header_size bytes. */
uint8_t *add_cow_header_encode(const AddCowHeader *h);

/* Clusters of an image of `size` bytes and the bitmap's length on disk
 * (ceil(clusters / 8) rounded up to the cluster size). */
uint64_t add_cow_clusters(uint64_t size, uint32_t cluster_bits);
uint64_t add_cow_bitmap_bytes(uint64_t size, uint32_t cluster_bits);

/* `name` from the header, relative to the metadata file's directory
 * (unless absolute or the metadata file has no plain name). */
char *add_cow_resolve(const char *meta_filename, const char *name);

typedef struct AddCowCreateParams {
    bool has_size;
    uint64_t size;           /* !has_size: the image file's length */
    const char *image_file;  /* required, must exist */
    const char *image_fmt;   /* NULL: raw */
    const char *backing_file; /* NULL: none (ALL_ALLOCATED is set) */
    const char *backing_fmt;  /* NULL: probed once (qcow2 or raw) */
    uint64_t cluster_size;    /* 0: 64 KiB */
} AddCowCreateParams;

/* Write a new add-cow header and empty bitmap to `meta`, whose file name
 * (for relative names) is meta->filename, and size the image file. */
int coroutine_fn add_cow_co_create_on_node(BlockDriverState *meta,
                                           const AddCowCreateParams *p,
                                           GError **errp);
/* blockd-img create: create `filename` and make it an add-cow file. */
int coroutine_fn add_cow_co_create_image(const char *filename,
                                         const AddCowCreateParams *p,
                                         GError **errp);
/* BlockDriver.bdrv_co_create (blockdev-create). */
int coroutine_fn add_cow_co_create(BlockdevCreateOptions *opts,
                                   GError **errp);

#endif
