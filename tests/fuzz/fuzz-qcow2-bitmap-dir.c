/*
 * libFuzzer target: the qcow2 bitmaps extension and bitmap directory
 * parsers on arbitrary bytes.  Input: 1 byte cluster_bits (9..21), 8
 * bytes virtual size, 24 bytes extension, then the directory.  Parsed
 * entries are checked for the invariants the loader relies on.
 */
#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "block/drivers/qcow2-bitmap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 + 8 + 24) {
        return 0;
    }
    uint64_t cluster_size = UINT64_C(1) << (9 + data[0] % 13);
    uint64_t vsize;
    memcpy(&vsize, data + 1, 8);
    vsize &= (UINT64_C(1) << 50) - 1; /* up to 1 PiB */
    Qcow2BitmapExt ext;
    GError *err = NULL;
    const uint8_t *dir = data + 33;
    size_t dlen = size - 33;
    if (!qcow2_bitmap_ext_parse(data + 9, 24, cluster_size, &ext, &err)) {
        g_clear_error(&err);
        /* the directory parser alone, with a count from the input */
        ext.nb_bitmaps = data[9];
    }
    Qcow2BitmapEntry *e = qcow2_bitmap_dir_parse(
        dir, dlen, ext.nb_bitmaps, cluster_size, (int64_t)vsize, &err);
    if (!e) {
        if (!err) {
            __builtin_trap(); /* failure without an error */
        }
        g_clear_error(&err);
        return 0;
    }
    for (uint32_t i = 0; i < ext.nb_bitmaps; i++) {
        size_t n = strlen(e[i].name);
        if (n == 0 || n > QCOW2_BME_MAX_NAME_SIZE ||
            e[i].granularity_bits < QCOW2_BME_MIN_GRANULARITY_BITS ||
            e[i].granularity_bits > QCOW2_BME_MAX_GRANULARITY_BITS ||
            e[i].table_offset % cluster_size ||
            e[i].table_size > QCOW2_BME_MAX_TABLE_SIZE ||
            /* an in-use entry may predate an unstored resize */
            (!(e[i].flags & QCOW2_BME_FLAG_IN_USE) &&
             e[i].table_size != qcow2_bitmap_table_entries(
                                    (int64_t)vsize, e[i].granularity_bits,
                                    cluster_size))) {
            __builtin_trap();
        }
    }
    qcow2_bitmap_dir_free(e, ext.nb_bitmaps);
    return 0;
}
