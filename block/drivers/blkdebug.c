/*
 * blkdebug: a filter over its `image` child that fails chosen requests,
 * so tests can make exactly the step they want go wrong (as QEMU's
 * blkdebug driver, option for option).
 *
 * Model:
 * - The node has a state number, 1 after open.
 * - Drivers above raise events on their child edge (BLKDBG_EVENT); when
 *   this node is that child, every rule for the event whose `state` is 0
 *   (any) or the current state acts: an inject-error rule becomes
 *   *active*, a set-state rule picks the next state.  States change after
 *   all rules of the event ran, so they all see the same state.  An event
 *   that activates at least one inject-error rule first forgets the rules
 *   activated by earlier events.
 * - Each request checks the active rules: the first one whose iotype
 *   covers the request and whose `sector` (512-byte unit, -1 any) falls
 *   inside it fails the request with -errno.  `once` deletes the rule
 *   after that; without `immediately` the failure first goes once round
 *   the event loop, as a real device's error would.
 * - align / max-transfer / opt-write-zero / max-write-zero / opt-discard /
 *   max-discard become the node's limits, so the core must split and
 *   align requests for it; a request that breaks them fails with -EIO
 *   (QEMU asserts): blkdebug is there to catch such bugs.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "block/block_int.h"

enum { ACTION_INJECT_ERROR, ACTION_SET_STATE };

/* What a rule without `iotype` affects (block-status only on request). */
#define IOTYPE_DEFAULT_MASK                                                    \
    ((1u << BLKDEBUG_IO_TYPE_READ) | (1u << BLKDEBUG_IO_TYPE_WRITE) |          \
     (1u << BLKDEBUG_IO_TYPE_WRITE_ZEROES) |                                   \
     (1u << BLKDEBUG_IO_TYPE_DISCARD) | (1u << BLKDEBUG_IO_TYPE_FLUSH))

typedef struct BlkdebugRule {
    BlkdebugEvent event;
    int action;
    int64_t state; /* 0: any state */
    /* inject-error */
    int error;             /* positive errno; 0 never fails anything */
    bool once;
    bool immediately;
    bool any_offset;       /* sector -1 */
    bool no_offset;        /* a sector no request can cover */
    uint64_t offset;       /* byte offset of `sector` */
    unsigned iotype_mask;  /* 1 << BlkdebugIOType */
    /* set-state */
    int64_t new_state;
} BlkdebugRule;

typedef struct BlkdebugState {
    BdrvChild *image;
    int64_t state;
    /* Rules per event, newest first (as QEMU keeps them). */
    GList *rules[BLKDBG__MAX];
    /* Active inject-error rules, in the order they are checked. */
    GList *active;
    uint64_t align, max_transfer;
    uint64_t opt_write_zero, max_write_zero;
    uint64_t opt_discard, max_discard;
    uint64_t take_perms, unshare_perms;
} BlkdebugState;

/* ---- rules ---- */

static void rule_remove(BlkdebugState *s, BlkdebugRule *r)
{
    s->rules[r->event] = g_list_remove(s->rules[r->event], r);
    s->active = g_list_remove(s->active, r);
    g_free(r);
}

static int add_inject_rule(BlkdebugState *s,
                           const BlkdebugInjectErrorOptions *o, GError **errp)
{
    if ((int)o->event < 0 || o->event >= BLKDBG__MAX) {
        error_setg(errp, "Invalid event name");
        return -EINVAL;
    }
    BlkdebugRule *r = g_new0(BlkdebugRule, 1);
    r->event = o->event;
    r->action = ACTION_INJECT_ERROR;
    r->state = o->has_state ? o->state : 0;
    /* QEMU takes any number here; a negative one would make a request
     * "succeed" without doing anything, so its magnitude is used. */
    int64_t err = o->has_q_errno ? o->q_errno : EIO;
    err = err < 0 ? (err == INT64_MIN ? INT64_MAX : -err) : err;
    r->error = (int)MIN(err, (int64_t)INT_MAX);
    r->once = o->has_once && o->once;
    r->immediately = o->has_immediately && o->immediately;
    int64_t sector = o->has_sector ? o->sector : -1;
    if (sector == -1) {
        r->any_offset = true;
    } else if (sector < 0 || sector > INT64_MAX / (int64_t)BDRV_SECTOR_SIZE) {
        r->no_offset = true; /* QEMU's unsigned offset is past any end */
    } else {
        r->offset = (uint64_t)sector * BDRV_SECTOR_SIZE;
    }
    r->iotype_mask = o->has_iotype ? 1u << o->iotype : IOTYPE_DEFAULT_MASK;
    s->rules[r->event] = g_list_prepend(s->rules[r->event], r);
    return 0;
}

static int add_set_state_rule(BlkdebugState *s,
                              const BlkdebugSetStateOptions *o, GError **errp)
{
    if ((int)o->event < 0 || o->event >= BLKDBG__MAX) {
        error_setg(errp, "Invalid event name");
        return -EINVAL;
    }
    BlkdebugRule *r = g_new0(BlkdebugRule, 1);
    r->event = o->event;
    r->action = ACTION_SET_STATE;
    r->state = o->has_state ? o->state : 0;
    r->new_state = o->new_state;
    s->rules[r->event] = g_list_prepend(s->rules[r->event], r);
    return 0;
}

static void free_rules(BlkdebugState *s)
{
    for (int i = 0; i < BLKDBG__MAX; i++) {
        g_list_free_full(s->rules[i], g_free);
        s->rules[i] = NULL;
    }
    g_list_free(s->active);
    s->active = NULL;
}

/* ---- the legacy config file ---- */

/*
 * QEMU's ini-like format: "[inject-error]" or "[set-state]" starts a
 * rule, `key = "value"` lines give its options, blank lines and lines
 * starting with '#' are skipped.  Each section is turned into the QAPI
 * structure (values as keyval strings) so both ways share one parser.
 */
typedef struct ConfigSection {
    bool is_inject;
    JsonObject *opts;
    int line;
} ConfigSection;

static bool config_key_valid(bool is_inject, const char *key)
{
    static const char *const inject_keys[] = {
        "event", "state", "iotype", "errno", "sector", "once",
        "immediately", NULL,
    };
    static const char *const set_state_keys[] = {
        "event", "state", "new_state", NULL,
    };
    for (const char *const *k = is_inject ? inject_keys : set_state_keys; *k;
         k++) {
        if (!strcmp(*k, key)) {
            return true;
        }
    }
    return false;
}

static int config_add_section(BlkdebugState *s, const char *fname,
                              ConfigSection *sec, GError **errp)
{
    if (!json_object_has_member(sec->opts, "event")) {
        error_setg(errp, "%s:%d: Missing event name for rule", fname,
                   sec->line);
        return -EINVAL;
    }
    JsonNode *node = json_node_new(JSON_NODE_OBJECT);
    json_node_set_object(node, sec->opts);
    GError *err = NULL;
    int ret = -EINVAL;
    if (sec->is_inject) {
        BlkdebugInjectErrorOptions *o =
            qapi_BlkdebugInjectErrorOptions_from_json(node, true, &err);
        if (o) {
            ret = add_inject_rule(s, o, &err);
        }
        qapi_free_BlkdebugInjectErrorOptions(o);
    } else {
        BlkdebugSetStateOptions *o =
            qapi_BlkdebugSetStateOptions_from_json(node, true, &err);
        if (o) {
            ret = add_set_state_rule(s, o, &err);
        }
        qapi_free_BlkdebugSetStateOptions(o);
    }
    json_node_unref(node);
    if (err) {
        error_propagate(errp, err);
        error_prepend(errp, "%s:%d: ", fname, sec->line);
        return -EINVAL;
    }
    return ret;
}

static int read_config(BlkdebugState *s, const char *fname, GError **errp)
{
    FILE *f = fopen(fname, "r");
    if (!f) {
        error_setg_errno(errp, errno, "Could not read blkdebug config file");
        return -errno;
    }
    /* Sections are parsed in full before any rule is added, so that all
     * inject-error rules come before all set-state rules (QEMU's order). */
    GPtrArray *inject = g_ptr_array_new();
    GPtrArray *setst = g_ptr_array_new();
    ConfigSection *cur = NULL;
    char line[1024];
    int lno = 0;
    int ret = 0;

    while (fgets(line, sizeof(line), f)) {
        lno++;
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            error_setg(errp, "%s:%d: line too long", fname, lno);
            ret = -EINVAL;
            goto out;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = 0;
        }
        const char *p = line;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        if (!*p || *p == '#') {
            continue;
        }
        if (*p == '[') {
            const char *end = strchr(p, ']');
            if (!end) {
                error_setg(errp, "%s:%d: parse error", fname, lno);
                ret = -EINVAL;
                goto out;
            }
            g_autofree char *group = g_strndup(p + 1, end - p - 1);
            bool is_inject = !strcmp(group, "inject-error");
            if (!is_inject && strcmp(group, "set-state")) {
                error_setg(errp, "%s:%d: There is no option group '%s'",
                           fname, lno, group);
                ret = -EINVAL;
                goto out;
            }
            cur = g_new0(ConfigSection, 1);
            cur->is_inject = is_inject;
            cur->opts = json_object_new();
            cur->line = lno;
            g_ptr_array_add(is_inject ? inject : setst, cur);
            continue;
        }
        /* key = "value" */
        const char *eq = strchr(p, '=');
        const char *q1 = eq ? strchr(eq, '"') : NULL;
        const char *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
        if (!eq || !q1 || !q2) {
            error_setg(errp, "%s:%d: parse error", fname, lno);
            ret = -EINVAL;
            goto out;
        }
        const char *kend = eq;
        while (kend > p && (kend[-1] == ' ' || kend[-1] == '\t')) {
            kend--;
        }
        g_autofree char *key = g_strndup(p, kend - p);
        g_autofree char *value = g_strndup(q1 + 1, q2 - q1 - 1);
        if (!cur) {
            error_setg(errp, "%s:%d: no group defined", fname, lno);
            ret = -EINVAL;
            goto out;
        }
        if (!*key || !config_key_valid(cur->is_inject, key)) {
            error_setg(errp, "%s:%d: Invalid parameter '%s'", fname, lno,
                       key);
            ret = -EINVAL;
            goto out;
        }
        json_object_set_string_member(cur->opts, key, value);
    }
    if (ferror(f)) {
        error_setg(errp, "Could not read blkdebug config file");
        ret = -EIO;
        goto out;
    }
    for (guint i = 0; i < inject->len && ret == 0; i++) {
        ret = config_add_section(s, fname, inject->pdata[i], errp);
    }
    for (guint i = 0; i < setst->len && ret == 0; i++) {
        ret = config_add_section(s, fname, setst->pdata[i], errp);
    }
out:
    for (int k = 0; k < 2; k++) {
        GPtrArray *a = k ? setst : inject;
        for (guint i = 0; i < a->len; i++) {
            ConfigSection *sec = a->pdata[i];
            json_object_unref(sec->opts);
            g_free(sec);
        }
        g_ptr_array_free(a, TRUE);
    }
    fclose(f);
    return ret;
}

/* ---- events and checks ---- */

static void blkdebug_debug_event(BlockDriverState *bs, BlkdebugEvent event)
{
    BlkdebugState *s = bs->opaque;
    if ((int)event < 0 || event >= BLKDBG__MAX) {
        return;
    }
    int64_t new_state = s->state;
    bool injected = false;
    GList *next;
    for (GList *l = s->rules[event]; l; l = next) {
        next = l->next;
        BlkdebugRule *r = l->data;
        if (r->state && r->state != s->state) {
            continue;
        }
        if (r->action == ACTION_SET_STATE) {
            new_state = r->new_state;
            continue;
        }
        if (!injected) {
            /* The first rule of this event replaces what earlier events
             * activated. */
            g_list_free(s->active);
            s->active = NULL;
            injected = true;
        }
        s->active = g_list_prepend(s->active, r);
    }
    s->state = new_state;
}

/* 0, or the -errno the first matching active rule injects. */
static int coroutine_fn rule_check(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes, BlkdebugIOType iotype)
{
    BlkdebugState *s = bs->opaque;
    BlkdebugRule *rule = NULL;
    for (GList *l = s->active; l; l = l->next) {
        BlkdebugRule *r = l->data;
        if (!(r->iotype_mask & (1u << iotype))) {
            continue;
        }
        if (r->any_offset ||
            (!r->no_offset && bytes && r->offset >= offset &&
             r->offset - offset < bytes)) {
            rule = r;
            break;
        }
    }
    if (!rule || !rule->error) {
        return 0;
    }
    int error = rule->error;
    bool immediately = rule->immediately;
    if (rule->once) {
        rule_remove(s, rule);
    }
    if (!immediately) {
        /* Complete from the event loop rather than inside the caller. */
        coroutine_wake(coroutine_self());
        coroutine_yield();
    }
    return -error;
}

/* The core guarantees alignment and size limits; a request breaking them
 * is a bug in a layer above, reported as an I/O error. */
static bool rw_ok(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    uint64_t a = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    if (offset < 0 || bytes < 0 || (uint64_t)offset % a ||
        (uint64_t)bytes % a) {
        return false;
    }
    return !bs->bl.max_transfer || bytes <= bs->bl.max_transfer;
}

static bool is_aligned(uint64_t n, uint64_t a)
{
    return a == 0 || n % a == 0;
}

static uint64_t div_round_up(uint64_t n, uint64_t a)
{
    return n / a + (n % a != 0);
}

/* ---- requests ---- */

static int coroutine_fn blkdebug_preadv(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, IOVector *qiov,
                                        BdrvRequestFlags flags)
{
    BlkdebugState *s = bs->opaque;
    if (!rw_ok(bs, offset, bytes)) {
        return -EIO;
    }
    int err = rule_check(bs, offset, bytes, BLKDEBUG_IO_TYPE_READ);
    if (err) {
        return err;
    }
    return bdrv_co_preadv(s->image, offset, bytes, qiov, flags);
}

static int coroutine_fn blkdebug_pwritev(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, IOVector *qiov,
                                         BdrvRequestFlags flags)
{
    BlkdebugState *s = bs->opaque;
    if (!rw_ok(bs, offset, bytes)) {
        return -EIO;
    }
    int err = rule_check(bs, offset, bytes, BLKDEBUG_IO_TYPE_WRITE);
    if (err) {
        return err;
    }
    return bdrv_co_pwritev(s->image, offset, bytes, qiov, flags);
}

static int coroutine_fn blkdebug_pwrite_zeroes(BlockDriverState *bs,
                                               int64_t offset, int64_t bytes,
                                               BdrvRequestFlags flags)
{
    BlkdebugState *s = bs->opaque;
    uint64_t align = MAX((uint64_t)bs->bl.request_alignment,
                         (uint64_t)bs->bl.pwrite_zeroes_alignment);
    align = align ? align : 1;
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    /* Pieces smaller than the preferred alignment go the slow way (the
     * core writes zeroed buffers), so tests exercise that fallback; such
     * a piece may not straddle an alignment boundary. */
    if ((uint64_t)bytes < align) {
        if (!is_aligned(offset, align) && !is_aligned(offset + bytes, align) &&
            div_round_up(offset, align) != div_round_up(offset + bytes, align)) {
            return -EIO;
        }
        return -ENOTSUP;
    }
    if (!is_aligned(offset, align) || !is_aligned(bytes, align) ||
        (bs->bl.max_pwrite_zeroes && bytes > bs->bl.max_pwrite_zeroes)) {
        return -EIO;
    }
    int err = rule_check(bs, offset, bytes, BLKDEBUG_IO_TYPE_WRITE_ZEROES);
    if (err) {
        return err;
    }
    return bdrv_co_pwrite_zeroes(s->image, offset, bytes, flags);
}

static int coroutine_fn blkdebug_pdiscard(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes)
{
    BlkdebugState *s = bs->opaque;
    uint64_t align = bs->bl.pdiscard_alignment;
    uint64_t ra = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if ((uint64_t)bytes < ra) {
        if (align && !is_aligned(offset, align) &&
            !is_aligned(offset + bytes, align) &&
            div_round_up(offset, align) != div_round_up(offset + bytes, align)) {
            return -EIO;
        }
        return -ENOTSUP;
    }
    if (!is_aligned(offset, ra) || !is_aligned(bytes, ra)) {
        return -EIO;
    }
    if (align && (uint64_t)bytes >= align &&
        (!is_aligned(offset, align) || !is_aligned(bytes, align))) {
        return -EIO;
    }
    if (bs->bl.max_pdiscard && bytes > bs->bl.max_pdiscard) {
        return -EIO;
    }
    int err = rule_check(bs, offset, bytes, BLKDEBUG_IO_TYPE_DISCARD);
    if (err) {
        return err;
    }
    return bdrv_co_pdiscard(s->image, offset, bytes);
}

/* The core has flushed the image child already; this is where a flush
 * rule fails the flush (QEMU checks it at the same step). */
static int coroutine_fn blkdebug_flush_to_disk(BlockDriverState *bs)
{
    return rule_check(bs, 0, 0, BLKDEBUG_IO_TYPE_FLUSH);
}

static int coroutine_fn blkdebug_block_status(BlockDriverState *bs,
                                              bool want_zero, int64_t offset,
                                              int64_t bytes, int64_t *pnum,
                                              int64_t *map,
                                              BlockDriverState **file)
{
    BlkdebugState *s = bs->opaque;
    (void)want_zero;
    if (!rw_ok(bs, offset, 0) || bytes < 0) {
        return -EIO;
    }
    int err = rule_check(bs, offset, bytes, BLKDEBUG_IO_TYPE_BLOCK_STATUS);
    if (err) {
        return err;
    }
    int ret = bdrv_co_block_status(s->image->bs, offset, bytes, pnum, map,
                                   file);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        *pnum = bytes; /* the image ends early: zeroes, as the core reads */
        return BDRV_BLOCK_ZERO;
    }
    return ret & ~BDRV_BLOCK_EOF; /* the core sets our own EOF */
}

/* QEMU treats blkdebug as a protocol of unknown allocation. */
static int64_t coroutine_fn blkdebug_allocated_size(BlockDriverState *bs)
{
    (void)bs;
    return -ENOTSUP;
}

/* What the image knows about itself (dirty flag, cluster size) is what
 * queries show for this node, as for any filter in QEMU. */
static int coroutine_fn blkdebug_get_info(BlockDriverState *bs,
                                          ImageInfo *info, GError **errp)
{
    BlkdebugState *s = bs->opaque;
    BlockDriverState *child = s->image ? s->image->bs : NULL;
    if (!child || !child->drv || !child->drv->bdrv_co_get_info) {
        return -ENOTSUP;
    }
    /* Only what QEMU's bdrv_get_info carries; format-specific data of the
     * image is not this node's. */
    ImageInfo tmp = { 0 };
    int ret = child->drv->bdrv_co_get_info(child, &tmp, errp);
    if (ret >= 0) {
        info->has_cluster_size = tmp.has_cluster_size;
        info->cluster_size = tmp.cluster_size;
        if (tmp.has_dirty_flag) {
            info->has_dirty_flag = true;
            info->dirty_flag = tmp.dirty_flag;
        }
    }
    qapi_free_ImageInfo_members(&tmp);
    return ret;
}

/* ---- open, limits, permissions ---- */

static int check_limit(const char *name, int64_t value, uint64_t align,
                       uint64_t *out, GError **errp)
{
    if (value < 0) {
        error_setg(errp, "Parameter '%s' expects a non-negative number "
                         "below 2^64", name);
        return -EINVAL;
    }
    if (value && ((uint64_t)value >= INT_MAX || (uint64_t)value % align)) {
        error_setg(errp, "Cannot meet constraints with %s %" PRIu64, name,
                   (uint64_t)value);
        return -EINVAL;
    }
    *out = (uint64_t)value;
    return 0;
}

static uint64_t perm_mask(const BlockPermissionList *l)
{
    uint64_t m = 0;
    for (; l; l = l->next) {
        if ((int)l->value >= 0 && l->value < BLOCK_PERMISSION__MAX) {
            m |= 1ull << l->value; /* enum order is the bit order */
        }
    }
    return m;
}

static int coroutine_fn blkdebug_open(BlockDriverState *bs,
                                      const BlockdevOptions *opts,
                                      GError **errp)
{
    BlkdebugState *s = bs->opaque;
    const BlockdevOptionsBlkdebug *o = &opts->u.blkdebug;
    int ret;

    /* QEMU gets an empty list as an option nobody consumes. */
    static const struct {
        const char *name;
        size_t has_off;
        size_t list_off;
    } lists[] = {
#define LIST_OPT(n, m)                                                         \
    {n, offsetof(BlockdevOptionsBlkdebug, has_##m),                            \
     offsetof(BlockdevOptionsBlkdebug, m)}
        LIST_OPT("inject-error", inject_error),
        LIST_OPT("set-state", set_state),
        LIST_OPT("take-child-perms", take_child_perms),
        LIST_OPT("unshare-child-perms", unshare_child_perms),
#undef LIST_OPT
    };
    for (size_t i = 0; i < G_N_ELEMENTS(lists); i++) {
        const char *base = (const char *)o;
        if (*(const bool *)(base + lists[i].has_off) &&
            !*(void *const *)(base + lists[i].list_off)) {
            error_setg(errp, "Block protocol 'blkdebug' doesn't support the "
                             "option '%s'", lists[i].name);
            return -EINVAL;
        }
    }

    /* Rules first: a bad rule should not open the image at all. */
    if (o->has_config && o->config) {
        ret = read_config(s, o->config, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    for (const BlkdebugInjectErrorOptionsList *l = o->inject_error; l;
         l = l->next) {
        ret = add_inject_rule(s, l->value, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    for (const BlkdebugSetStateOptionsList *l = o->set_state; l;
         l = l->next) {
        ret = add_set_state_rule(s, l->value, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    s->state = 1;
    s->take_perms = perm_mask(o->take_child_perms);
    s->unshare_perms = perm_mask(o->unshare_child_perms);

    s->image = bdrv_open_child(bs, o->image, "image",
                               BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                               false, errp);
    if (!s->image) {
        ret = -EINVAL;
        goto fail;
    }
    BlockDriverState *child = s->image->bs;
    bs->supported_write_flags =
        BDRV_REQ_WRITE_UNCHANGED | (child->supported_write_flags & BDRV_REQ_FUA);
    bs->supported_zero_flags =
        BDRV_REQ_WRITE_UNCHANGED |
        (child->supported_zero_flags &
         (BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK));

    int64_t align = o->has_align ? o->align : 0;
    if (align < 0) {
        error_setg(errp, "Parameter 'align' expects a non-negative number "
                         "below 2^64");
        ret = -EINVAL;
        goto fail;
    }
    if (align && (align >= INT_MAX || (align & (align - 1)))) {
        error_setg(errp, "Cannot meet constraints with align %" PRIu64,
                   (uint64_t)align);
        ret = -EINVAL;
        goto fail;
    }
    s->align = (uint64_t)align;
    uint64_t a = MAX(s->align, (uint64_t)child->bl.request_alignment);
    a = a ? a : 1;
    if ((ret = check_limit("max-transfer",
                           o->has_max_transfer ? o->max_transfer : 0, a,
                           &s->max_transfer, errp)) < 0 ||
        (ret = check_limit("opt-write-zero",
                           o->has_opt_write_zero ? o->opt_write_zero : 0, a,
                           &s->opt_write_zero, errp)) < 0 ||
        (ret = check_limit("max-write-zero",
                           o->has_max_write_zero ? o->max_write_zero : 0,
                           MAX(s->opt_write_zero, a), &s->max_write_zero,
                           errp)) < 0 ||
        (ret = check_limit("opt-discard",
                           o->has_opt_discard ? o->opt_discard : 0, a,
                           &s->opt_discard, errp)) < 0 ||
        (ret = check_limit("max-discard",
                           o->has_max_discard ? o->max_discard : 0,
                           MAX(s->opt_discard, a), &s->max_discard,
                           errp)) < 0) {
        goto fail;
    }

    int64_t len = bdrv_getlength(child);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the image size");
        ret = (int)len;
        goto fail;
    }
    /* Kept from here on, as QEMU does: a resize through this node updates
     * it, one done directly on the image below does not (there is no
     * bdrv_child_resized on purpose). */
    bs->total_bytes = len;
    /* Rules for the event "none" act from the start: the open raises it
     * once, in state 1 (so a set-state rule for it picks the first state
     * requests see). */
    blkdebug_debug_event(bs, BLKDBG_NONE);
    return 0;

fail:
    /* The core detaches a child opened before the failure. */
    free_rules(s);
    return ret;
}

static void blkdebug_close(BlockDriverState *bs)
{
    free_rules(bs->opaque);
}

static void blkdebug_refresh_limits(BlockDriverState *bs, GError **errp)
{
    BlkdebugState *s = bs->opaque;
    (void)errp;
    if (s->align) {
        bs->bl.request_alignment = (uint32_t)s->align;
    }
    if (s->max_transfer) {
        bs->bl.max_transfer = (int64_t)s->max_transfer;
    }
    if (s->opt_write_zero) {
        bs->bl.pwrite_zeroes_alignment = (int64_t)s->opt_write_zero;
    }
    if (s->max_write_zero) {
        bs->bl.max_pwrite_zeroes = (int64_t)s->max_write_zero;
    }
    if (s->opt_discard) {
        bs->bl.pdiscard_alignment = (int64_t)s->opt_discard;
    }
    if (s->max_discard) {
        bs->bl.max_pdiscard = (int64_t)s->max_discard;
    }
}

static void blkdebug_child_perm(BlockDriverState *bs, BdrvChild *c,
                                BdrvChildRole role, uint64_t perm,
                                uint64_t shared, uint64_t *nperm,
                                uint64_t *nshared)
{
    BlkdebugState *s = bs->opaque;
    bdrv_default_perms(bs, c, role, perm, shared, nperm, nshared);
    /* Tests use these to provoke permission conflicts on the image. */
    *nperm |= s->take_perms;
    *nshared &= ~s->unshare_perms;
}

/* QEMU names a node without rules or limits "blkdebug:CONFIG:FILE" when
 * its image has a plain name; otherwise the core builds json:{...}. */
static void blkdebug_own_filename(BlockDriverState *bs)
{
    BlkdebugState *s = bs->opaque;
    if (!bs->options || !s->image) {
        return;
    }
    const BlockdevOptionsBlkdebug *o = &bs->options->u.blkdebug;
    const char *child = s->image->bs->filename;
    if (!child[0] || !strncmp(child, "json:", 5)) {
        return;
    }
    if (o->inject_error || o->set_state || o->has_align ||
        o->has_max_transfer || o->has_opt_write_zero ||
        o->has_max_write_zero || o->has_opt_discard || o->has_max_discard) {
        return;
    }
    g_autofree char *name = g_strdup_printf(
        "blkdebug:%s:%s", o->has_config && o->config ? o->config : "", child);
    if (strlen(name) < sizeof(bs->filename)) {
        g_strlcpy(bs->filename, name, sizeof(bs->filename));
    }
}

static const char *const blkdebug_strong_opts[] = {
    "config", "inject-error", "set-state", "align", "max-transfer",
    "opt-write-zero", "max-write-zero", "opt-discard", "max-discard", NULL,
};

/* blockdev-reopen: only the generic options (read-only, ...) may change;
 * the rules and limits stay as opened ("Cannot change the option", as
 * QEMU's blkdebug). */
static int coroutine_fn blkdebug_reopen_prepare(BDRVReopenState *state,
                                                GError **errp)
{
    (void)state;
    (void)errp;
    return 0;
}

const BlockDriver bdrv_blkdebug = {
    .version = BLOCK_DRIVER_VERSION,
    .format_name = "blkdebug",
    .driver = BLOCKDEV_DRIVER_BLKDEBUG,
    .instance_size = sizeof(BlkdebugState),
    .is_filter = true,
    .bdrv_open = blkdebug_open,
    .bdrv_close = blkdebug_close,
    .bdrv_refresh_limits = blkdebug_refresh_limits,
    .bdrv_co_preadv = blkdebug_preadv,
    .bdrv_co_pwritev = blkdebug_pwritev,
    .bdrv_co_pwrite_zeroes = blkdebug_pwrite_zeroes,
    .bdrv_co_pdiscard = blkdebug_pdiscard,
    .bdrv_co_flush_to_disk = blkdebug_flush_to_disk,
    .bdrv_co_block_status = blkdebug_block_status,
    .bdrv_child_perm = blkdebug_child_perm,
    .bdrv_co_get_allocated_file_size = blkdebug_allocated_size,
    .bdrv_co_get_info = blkdebug_get_info,
    .bdrv_debug_event = blkdebug_debug_event,
    .strong_opts = blkdebug_strong_opts,
    .bdrv_reopen_prepare = blkdebug_reopen_prepare,
    .bdrv_own_filename = blkdebug_own_filename,
};
