/*
 * Coroutine micro-benchmarks:
 *   switch:   enter + yield round trips of one coroutine (2 switches each)
 *   lifecycle: create + enter + terminate with a warm pool
 *   wake:     coroutine_wake + loop dispatch round trips
 *
 * Usage: coroutine-bench [round-trips]   (default 10,000,000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "util/coroutine.h"

static double now_s(void)
{
    return g_get_monotonic_time() / 1e6;
}

static void coroutine_fn switch_entry(void *opaque)
{
    long *n = opaque;

    for (;;) {
        (*n)++;
        coroutine_yield();
    }
}

static void coroutine_fn empty_entry(void *opaque)
{
    (*(long *)opaque)++;
}

static void coroutine_fn wake_entry(void *opaque)
{
    long *left = opaque;

    while (--*left > 0) {
        coroutine_wake(coroutine_self());
        coroutine_yield();
    }
}

static long os_context_switches(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_nvcsw + ru.ru_nivcsw;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 10 * 1000 * 1000;
    long n = 0;
    double t0, dt;
    Coroutine *co;

    if (iters <= 0) {
        fprintf(stderr, "usage: %s [round-trips]\n", argv[0]);
        return 2;
    }

    /* Round trips into one long-lived coroutine. */
    co = coroutine_create(switch_entry, &n);
    coroutine_enter(co); /* first entry off the clock */
    n = 0;
    t0 = now_s();
    for (long i = 0; i < iters; i++) {
        coroutine_enter(co);
    }
    dt = now_s() - t0;
    if (n != iters) {
        fprintf(stderr, "switch: count mismatch %ld != %ld\n", n, iters);
        return 1;
    }
    printf("switch:    %ld enter+yield round trips in %.3f s: "
           "%.1f M round trips/s, %.1f ns per switch\n",
           iters, dt, iters / dt / 1e6, dt * 1e9 / (2.0 * iters));
    /* `co` stays suspended forever: its stack is simply not reused. */

    /* Creation and termination with a warm pool. */
    n = 0;
    coroutine_enter(coroutine_create(empty_entry, &n));
    t0 = now_s();
    for (long i = 0; i < iters; i++) {
        coroutine_enter(coroutine_create(empty_entry, &n));
    }
    dt = now_s() - t0;
    printf("lifecycle: %ld create+enter+terminate in %.3f s: "
           "%.1f M/s, %.1f ns each (pool size %u)\n",
           iters, dt, iters / dt / 1e6, dt * 1e9 / iters,
           coroutine_pool_size());

    /* Scheduled wake-ups through the GLib main loop. */
    {
        long wakes = iters / 10 > 0 ? iters / 10 : 1;
        long left = wakes;
        long cs0 = os_context_switches();

        t0 = now_s();
        coroutine_enter(coroutine_create(wake_entry, &left));
        while (left > 0) {
            g_main_context_iteration(NULL, TRUE);
        }
        dt = now_s() - t0;
        printf("wake:      %ld wake+dispatch round trips in %.3f s: "
               "%.2f M/s, %.1f ns each (%ld OS context switches)\n",
               wakes, dt, wakes / dt / 1e6, dt * 1e9 / wakes,
               os_context_switches() - cs0);
    }
    return 0;
}
