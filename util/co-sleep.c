/*
 * Coroutine sleeps on the GLib main loop.
 *
 * The timer is a bare GSource with a ready time at microsecond precision
 * (g_timeout_add only has milliseconds).  A sleep that is woken early has
 * its timer destroyed, so exactly one of "timer fired" and "woken" resumes
 * the coroutine.
 */
#include "util/coroutine.h"

#include <stdio.h>
#include <stdlib.h>

static gboolean sleep_dispatch(GSource *source, GSourceFunc cb,
                               gpointer data)
{
    return cb(data);
}

static GSourceFuncs sleep_funcs = {
    .dispatch = sleep_dispatch,
};

static gboolean sleep_timer_cb(gpointer opaque)
{
    CoSleep *w = opaque;
    Coroutine *co = w->co;

    /* The source is destroyed by returning G_SOURCE_REMOVE. */
    w->timer_id = 0;
    coroutine_enter(co);
    return G_SOURCE_REMOVE;
}

void coroutine_fn co_sleep_ns_wakeable(CoSleep *w, int64_t ns)
{
    Coroutine *self = coroutine_self();
    GSource *src;
    gint64 us, now, ready;

    if (!self) {
        fprintf(stderr, "blockd: co_sleep outside coroutine context\n");
        abort();
    }
    /* Round up so the sleep is never shorter than asked; saturate rather
     * than overflow for absurd durations (a rate limit's delay, say). */
    us = ns > 0 ? ns / 1000 + (ns % 1000 != 0) : 0;
    now = g_get_monotonic_time();
    ready = us > G_MAXINT64 - now ? G_MAXINT64 : now + us;

    src = g_source_new(&sleep_funcs, sizeof(GSource));
    g_source_set_name(src, "co-sleep");
    g_source_set_priority(src, G_PRIORITY_DEFAULT);
    g_source_set_callback(src, sleep_timer_cb, w, NULL);
    g_source_set_ready_time(src, ready);
    w->co = self;
    w->timer_id = g_source_attach(src, NULL);
    g_source_unref(src);

    coroutine_yield();

    w->co = NULL;
    w->timer_id = 0;
}

void co_sleep_wake(CoSleep *w)
{
    /* timer_id != 0 exactly while the coroutine sleeps and nobody has
     * resumed it yet; otherwise this is a no-op. */
    if (w->timer_id) {
        Coroutine *co = w->co;

        g_source_remove(w->timer_id);
        w->timer_id = 0;
        coroutine_wake(co);
    }
}

void coroutine_fn co_sleep_ns(int64_t ns)
{
    CoSleep w = { 0 };

    co_sleep_ns_wakeable(&w, ns);
}
