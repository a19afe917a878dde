/*
 * The one table of block drivers.  A new driver is one `extern` line and
 * one table entry here.  The references are strong on purpose: drivers
 * live in a static library, and only a real reference makes the linker
 * pull a driver's object into a program.
 */
#include <string.h>

#include "block/block_int.h"

extern const BlockDriver bdrv_file;
extern const BlockDriver bdrv_raw;
extern const BlockDriver bdrv_null_co;
extern const BlockDriver bdrv_null_aio;
extern const BlockDriver bdrv_qcow2;
extern const BlockDriver bdrv_blkdebug;
extern const BlockDriver bdrv_add_cow;
extern const BlockDriver bdrv_cbw;
extern const BlockDriver bdrv_snapshot_access;
extern const BlockDriver bdrv_cor;

static const BlockDriver *const driver_table[] = {
    &bdrv_file,     &bdrv_raw,   &bdrv_null_co,
    &bdrv_null_aio, &bdrv_qcow2, &bdrv_blkdebug,
    &bdrv_add_cow,
    &bdrv_cbw,
    &bdrv_snapshot_access,
    &bdrv_cor,
};

/* Drivers registered by unit tests; searched before the table so a test
 * can stand in for a real driver of the same BlockdevDriver value. */
static GPtrArray *test_drivers;

void bdrv_register_test_driver(const BlockDriver *drv)
{
    if (!test_drivers) {
        test_drivers = g_ptr_array_new();
    }
    g_ptr_array_insert(test_drivers, 0, (gpointer)drv);
}

void bdrv_unregister_test_driver(const BlockDriver *drv)
{
    if (test_drivers) {
        g_ptr_array_remove(test_drivers, (gpointer)drv);
    }
}

static bool driver_usable(const BlockDriver *drv)
{
    return drv && drv->version == BLOCK_DRIVER_VERSION && drv->bdrv_open;
}

const BlockDriver *bdrv_find_driver(BlockdevDriver d)
{
    if (test_drivers) {
        for (guint i = 0; i < test_drivers->len; i++) {
            const BlockDriver *drv = test_drivers->pdata[i];
            if (drv->driver == d && driver_usable(drv)) {
                return drv;
            }
        }
    }
    for (size_t i = 0; i < G_N_ELEMENTS(driver_table); i++) {
        const BlockDriver *drv = driver_table[i];
        if (driver_usable(drv) && drv->driver == d) {
            return drv;
        }
    }
    return NULL;
}

const BlockDriver *bdrv_find_format(const char *format_name)
{
    if (!format_name) {
        return NULL;
    }
    if (test_drivers) {
        for (guint i = 0; i < test_drivers->len; i++) {
            const BlockDriver *drv = test_drivers->pdata[i];
            if (driver_usable(drv) && !strcmp(drv->format_name, format_name)) {
                return drv;
            }
        }
    }
    for (size_t i = 0; i < G_N_ELEMENTS(driver_table); i++) {
        const BlockDriver *drv = driver_table[i];
        if (driver_usable(drv) && !strcmp(drv->format_name, format_name)) {
            return drv;
        }
    }
    return NULL;
}
