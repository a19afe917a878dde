/*
 * qcow2 metadata cache: L2 tables and refcount blocks, write-back.
 *
 * All callers hold s->lock, so the cache needs no locking of its own; a
 * reference count per entry keeps a table that a caller is working on from
 * being evicted while the same caller loads another one.
 *
 * Ordering: a cache may depend on another (L2 tables that reference newly
 * allocated clusters depend on the refcount blocks that count them; refcount
 * blocks that drop a reference depend on the L2 tables that no longer hold
 * it).  Before any table of a dependent cache is written, the other cache is
 * written and the file flushed, so the image on disk never references a
 * cluster whose refcount is not yet raised, nor frees one still referenced.
 */
#include <errno.h>

#include "block/drivers/qcow2.h"

typedef struct Qcow2CacheEntry {
    uint64_t offset; /* 0: free slot */
    bool dirty;
    int ref;
    uint64_t lru;
} Qcow2CacheEntry;

struct Qcow2Cache {
    Qcow2CacheEntry *entries;
    uint8_t *tables;
    int size;
    size_t table_size;
    int overlap_ign;
    GHashTable *index; /* offset -> slot + 1 */
    uint64_t lru_counter;
    uint64_t clean_mark; /* lru value at the last clean pass */
    Qcow2Cache *depends;
    bool depends_on_flush;
    int ndirty;
    int *free_slots; /* stack of never-used or released slots */
    int nfree;
};

static inline void *slot_table(Qcow2Cache *c, int i)
{
    return c->tables + (size_t)i * c->table_size;
}

static int table_slot(Qcow2Cache *c, void *table)
{
    ptrdiff_t d = (uint8_t *)table - c->tables;
    g_assert(d >= 0 && (size_t)d % c->table_size == 0);
    int i = (int)((size_t)d / c->table_size);
    g_assert(i < c->size);
    return i;
}

Qcow2Cache *qcow2_cache_create(BlockDriverState *bs, int entries,
                               size_t table_size, int overlap_ign)
{
    Qcow2Cache *c = g_new0(Qcow2Cache, 1);
    c->size = entries;
    c->table_size = table_size;
    c->overlap_ign = overlap_ign;
    c->entries = g_new0(Qcow2CacheEntry, entries);
    c->tables = blk_memalign(4096, (size_t)entries * table_size);
    c->index = g_hash_table_new(g_int64_hash, g_int64_equal);
    c->free_slots = g_new(int, entries);
    for (int i = 0; i < entries; i++) {
        c->free_slots[i] = entries - 1 - i;
    }
    c->nfree = entries;
    return c;
}

void qcow2_cache_destroy(Qcow2Cache *c)
{
    if (!c) {
        return;
    }
    g_hash_table_destroy(c->index);
    g_free(c->free_slots);
    blk_vfree(c->tables);
    g_free(c->entries);
    g_free(c);
}

static int coroutine_fn entry_write(BlockDriverState *bs, Qcow2Cache *c,
                                    int i)
{
    Qcow2CacheEntry *e = &c->entries[i];
    if (!e->dirty) {
        return 0;
    }
    int ret;
    if (c->depends) {
        Qcow2Cache *dep = c->depends;
        c->depends = NULL;
        ret = qcow2_cache_flush(bs, dep);
        if (ret < 0) {
            c->depends = dep;
            return ret;
        }
        c->depends_on_flush = false;
    } else if (c->depends_on_flush) {
        ret = bdrv_co_flush(bs->file->bs);
        if (ret < 0) {
            return ret;
        }
        c->depends_on_flush = false;
    }
    if (!e->dirty) {
        return 0; /* written meanwhile (a dependency cycle came back here) */
    }
    ret = qcow2_pre_write_overlap_check(bs, c->overlap_ign, (int64_t)e->offset,
                                        (int64_t)c->table_size);
    if (ret < 0) {
        return ret;
    }
    {
        /* QEMU names the write-back of a cached table after its kind. */
        BDRVQcow2State *s = bs->opaque;
        if (c == s->rc_cache) {
            BLKDBG_EVENT(bs->file, BLKDBG_REFBLOCK_UPDATE_PART);
        } else if (c == s->l2_cache) {
            BLKDBG_EVENT(bs->file, BLKDBG_L2_UPDATE);
        }
    }
    ret = bdrv_co_pwrite(bs->file, (int64_t)e->offset,
                         (int64_t)c->table_size, slot_table(c, i), 0);
    if (ret < 0) {
        return ret;
    }
    e->dirty = false;
    c->ndirty--;
    return 0;
}

int coroutine_fn qcow2_cache_write(BlockDriverState *bs, Qcow2Cache *c)
{
    int result = 0;
    for (int i = 0; i < c->size && c->ndirty > 0; i++) {
        int ret = entry_write(bs, c, i);
        if (ret < 0 && result != -ENOSPC) {
            result = ret;
        }
    }
    if (c->ndirty == 0) {
        /* Nothing of c is pending, so nothing needs ordering: dropping
         * the dependency keeps the two caches from waiting on each other
         * in a cycle. */
        c->depends = NULL;
        c->depends_on_flush = false;
    }
    return result;
}

int coroutine_fn qcow2_cache_flush(BlockDriverState *bs, Qcow2Cache *c)
{
    int ret = qcow2_cache_write(bs, c);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    return ret;
}

int coroutine_fn qcow2_cache_set_dependency(BlockDriverState *bs,
                                            Qcow2Cache *c, Qcow2Cache *dep)
{
    int ret;
    if (c->depends == dep) {
        return 0;
    }
    /* A cycle (dep waiting for c) is broken by writing dep out now. */
    if (dep->depends) {
        ret = qcow2_cache_flush(bs, dep);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->depends && c->depends != dep) {
        ret = qcow2_cache_flush(bs, c);
        if (ret < 0) {
            return ret;
        }
    }
    c->depends = dep;
    return 0;
}

void qcow2_cache_depends_on_flush(Qcow2Cache *c)
{
    c->depends_on_flush = true;
}

bool qcow2_cache_has_dirty(Qcow2Cache *c)
{
    return c->ndirty > 0;
}

/* Find a slot for a new table: a free one, else the least recently used
 * unreferenced one (written back first if dirty). */
static int coroutine_fn find_victim(BlockDriverState *bs, Qcow2Cache *c)
{
    while (c->nfree > 0) {
        int i = c->free_slots[--c->nfree];
        if (!c->entries[i].offset && !c->entries[i].ref) {
            return i;
        }
    }
    for (;;) {
        int best = -1;
        for (int i = 0; i < c->size; i++) {
            Qcow2CacheEntry *e = &c->entries[i];
            if (e->ref) {
                continue;
            }
            if (!e->offset) {
                return i;
            }
            if (best < 0 || e->lru < c->entries[best].lru) {
                best = i;
            }
        }
        if (best < 0) {
            return -ENOSPC; /* every table referenced: a driver bug */
        }
        Qcow2CacheEntry *e = &c->entries[best];
        if (e->dirty) {
            /* Writing may yield (and a dependency flush may touch this
             * cache); re-check the slot afterwards. */
            e->ref++;
            int ret = entry_write(bs, c, best);
            e->ref--;
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        g_hash_table_remove(c->index, &e->offset);
        e->offset = 0;
        return best;
    }
}

static int coroutine_fn cache_do_get(BlockDriverState *bs, Qcow2Cache *c,
                                     uint64_t offset, void **table,
                                     bool read_from_disk)
{
    g_assert(offset != 0);
    for (;;) {
        gpointer v = g_hash_table_lookup(c->index, &offset);
        if (v) {
            int i = GPOINTER_TO_INT(v) - 1;
            c->entries[i].ref++;
            c->entries[i].lru = ++c->lru_counter;
            *table = slot_table(c, i);
            return 0;
        }
        int i = find_victim(bs, c);
        if (i < 0) {
            return i;
        }
        /* find_victim may have yielded; another coroutine cannot have
         * loaded `offset` meanwhile because s->lock is held, but be safe. */
        if (g_hash_table_lookup(c->index, &offset)) {
            continue;
        }
        Qcow2CacheEntry *e = &c->entries[i];
        e->ref = 1;
        if (read_from_disk) {
            if (c == ((BDRVQcow2State *)bs->opaque)->l2_cache) {
                BLKDBG_EVENT(bs->file, BLKDBG_L2_LOAD);
            }
            int ret = bdrv_co_pread(bs->file, (int64_t)offset,
                                    (int64_t)c->table_size, slot_table(c, i),
                                    0);
            if (ret < 0) {
                e->ref = 0;
                return ret;
            }
        }
        e->offset = offset;
        e->dirty = false;
        e->lru = ++c->lru_counter;
        g_hash_table_insert(c->index, &e->offset, GINT_TO_POINTER(i + 1));
        *table = slot_table(c, i);
        return 0;
    }
}

int coroutine_fn qcow2_cache_get(BlockDriverState *bs, Qcow2Cache *c,
                                 uint64_t offset, void **table)
{
    return cache_do_get(bs, c, offset, table, true);
}

int coroutine_fn qcow2_cache_get_empty(BlockDriverState *bs, Qcow2Cache *c,
                                       uint64_t offset, void **table)
{
    return cache_do_get(bs, c, offset, table, false);
}

void qcow2_cache_put(Qcow2Cache *c, void **table)
{
    int i = table_slot(c, *table);
    g_assert(c->entries[i].ref > 0);
    c->entries[i].ref--;
    *table = NULL;
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table)
{
    int i = table_slot(c, table);
    if (!c->entries[i].dirty) {
        c->entries[i].dirty = true;
        c->ndirty++;
    }
}

void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    gpointer v = g_hash_table_lookup(c->index, &offset);
    if (!v) {
        return;
    }
    int i = GPOINTER_TO_INT(v) - 1;
    Qcow2CacheEntry *e = &c->entries[i];
    if (e->ref) {
        return; /* in use; it is written back or reused normally */
    }
    g_hash_table_remove(c->index, &e->offset);
    if (e->dirty) {
        c->ndirty--;
    }
    e->offset = 0;
    e->dirty = false;
    c->free_slots[c->nfree++] = i;
}

void qcow2_cache_clean_unused(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];
        if (e->offset && !e->ref && !e->dirty && e->lru <= c->clean_mark) {
            g_hash_table_remove(c->index, &e->offset);
            e->offset = 0;
            c->free_slots[c->nfree++] = i;
        }
    }
    c->clean_mark = c->lru_counter;
}
