/*
 * Unit tests for util/coroutine.c, util/coroutine-lock.c, util/co-sleep.c.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/coroutine.h"

/* ---- helpers ---- */

/* An event log: each step appends a small integer. */
typedef struct Log {
    int ev[256];
    int n;
} Log;

static void log_add(Log *log, int v)
{
    assert_true(log->n < (int)G_N_ELEMENTS(log->ev));
    log->ev[log->n++] = v;
}

static void log_expect(const Log *log, const int *want, int n)
{
    assert_int_equal(log->n, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(log->ev[i], want[i]);
    }
}

/* Let everything else that is ready run, then continue. */
static void coroutine_fn yield_to_loop(void)
{
    coroutine_wake(coroutine_self());
    coroutine_yield();
}

static void run_loop_until(const bool *flag)
{
    while (!*flag) {
        g_main_context_iteration(NULL, TRUE);
    }
}

/* Run the loop while it has ready work (no blocking). */
static void run_loop_idle(void)
{
    while (g_main_context_iteration(NULL, FALSE)) {
    }
}

/* ---- enter / yield / return ---- */

static void coroutine_fn order_entry(void *opaque)
{
    Log *log = opaque;

    assert_true(in_coroutine());
    assert_non_null(coroutine_self());
    log_add(log, 1);
    coroutine_yield();
    log_add(log, 3);
    coroutine_yield();
    log_add(log, 5);
}

static void test_enter_yield_order(void **state)
{
    Log log = { 0 };
    Coroutine *co = coroutine_create(order_entry, &log);

    assert_false(in_coroutine());
    assert_null(coroutine_self());
    coroutine_enter(co);
    log_add(&log, 2);
    coroutine_enter(co);
    log_add(&log, 4);
    coroutine_enter(co); /* runs to completion, back to the pool */
    log_add(&log, 6);
    assert_false(in_coroutine());

    static const int want[] = { 1, 2, 3, 4, 5, 6 };
    log_expect(&log, want, 6);
}

typedef struct Nest {
    Log log;
    Coroutine *outer;
    Coroutine *inner;
} Nest;

static void coroutine_fn nest_inner(void *opaque)
{
    Nest *n = opaque;

    assert_ptr_equal(coroutine_self(), n->inner);
    log_add(&n->log, 2);
    coroutine_yield(); /* back to outer, who entered us */
    assert_ptr_equal(coroutine_self(), n->inner);
    log_add(&n->log, 6);
}

static void coroutine_fn nest_outer(void *opaque)
{
    Nest *n = opaque;

    log_add(&n->log, 1);
    /* Created from inside a coroutine: a fresh stack if the pool is dry. */
    n->inner = coroutine_create(nest_inner, n);
    coroutine_enter(n->inner);
    assert_ptr_equal(coroutine_self(), n->outer);
    log_add(&n->log, 3);
    coroutine_yield(); /* back to main */
    log_add(&n->log, 5);
    coroutine_enter(n->inner); /* inner finishes */
    log_add(&n->log, 7);
}

static void test_nesting(void **state)
{
    Nest n = { 0 };

    n.outer = coroutine_create(nest_outer, &n);
    coroutine_enter(n.outer);
    log_add(&n.log, 4);
    coroutine_enter(n.outer);
    log_add(&n.log, 8);

    static const int want[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    log_expect(&n.log, want, 8);
}

/* A chain three deep, where the innermost yields all the way out step by
 * step, and is later resumed by main (its caller changes). */
typedef struct Chain {
    Log log;
    Coroutine *c;
} Chain;

static void coroutine_fn chain_c(void *opaque)
{
    Chain *ch = opaque;

    log_add(&ch->log, 3);
    coroutine_yield();
    log_add(&ch->log, 7);
}

static void coroutine_fn chain_b(void *opaque)
{
    Chain *ch = opaque;

    log_add(&ch->log, 2);
    ch->c = coroutine_create(chain_c, ch);
    coroutine_enter(ch->c);
    log_add(&ch->log, 4);
}

static void coroutine_fn chain_a(void *opaque)
{
    Chain *ch = opaque;

    log_add(&ch->log, 1);
    coroutine_enter(coroutine_create(chain_b, ch));
    log_add(&ch->log, 5);
}

static void test_chain(void **state)
{
    Chain ch = { 0 };

    coroutine_enter(coroutine_create(chain_a, &ch));
    log_add(&ch.log, 6);
    coroutine_enter(ch.c); /* c's caller is now main */
    log_add(&ch.log, 8);

    static const int want[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    log_expect(&ch.log, want, 8);
}

/* ---- many coroutines, pool ---- */

#define MANY 10000

static void coroutine_fn count_entry(void *opaque)
{
    (*(int *)opaque)++;
}

static void coroutine_fn count_yield_entry(void *opaque)
{
    (*(int *)opaque)++;
    coroutine_yield();
    (*(int *)opaque)++;
}

static void test_many_sequential(void **state)
{
    int count = 0;
    unsigned before;

    /* Warm the pool so the measurement below starts from a steady state. */
    coroutine_enter(coroutine_create(count_entry, &count));
    before = coroutine_pool_size();
    for (int i = 0; i < MANY; i++) {
        coroutine_enter(coroutine_create(count_entry, &count));
    }
    assert_int_equal(count, MANY + 1);
    /* Each finished coroutine's stack was reused by the next one. */
    assert_int_equal(coroutine_pool_size(), before);
}

static void test_many_live(void **state)
{
    Coroutine **cos = g_new(Coroutine *, MANY);
    int count = 0;
    unsigned before = coroutine_pool_size();
    unsigned after;

    for (int i = 0; i < MANY; i++) {
        cos[i] = coroutine_create(count_yield_entry, &count);
        coroutine_enter(cos[i]);
    }
    assert_int_equal(count, MANY);
    /* All alive at once: at least MANY distinct stacks exist. */
    assert_true(coroutine_pool_size() >= MANY);
    for (int i = 0; i < MANY; i++) {
        coroutine_enter(cos[i]);
    }
    assert_int_equal(count, 2 * MANY);
    /* The pool is capped: most stacks were unmapped again. */
    after = coroutine_pool_size();
    assert_true(after < MANY / 2);
    assert_true(after >= 1);

    /* New coroutines come from the pool without new stacks. */
    for (int i = 0; i < 16; i++) {
        cos[i] = coroutine_create(count_yield_entry, &count);
        coroutine_enter(cos[i]);
    }
    assert_true(coroutine_pool_size() == after || after < 16);
    for (int i = 0; i < 16; i++) {
        coroutine_enter(cos[i]);
    }
    (void)before;
    g_free(cos);
}

/* ---- stack depth and guard page ---- */

static __attribute__((noinline)) int use_stack(int depth)
{
    volatile unsigned char buf[1024];

    buf[0] = (unsigned char)depth;
    buf[sizeof(buf) - 1] = (unsigned char)depth;
    if (depth == 0) {
        return buf[0];
    }
    return use_stack(depth - 1) + buf[sizeof(buf) - 1];
}

static void coroutine_fn deep_entry(void *opaque)
{
    /* About 200 KiB of stack (more under ASan's redzones). */
    *(int *)opaque = use_stack(200);
}

static void test_deep_stack(void **state)
{
    int r = -1;

    coroutine_enter(coroutine_create(deep_entry, &r));
    assert_int_equal(r, 200 * 201 / 2);
}

/* Far beyond any coroutine stack; volatile so the compiler cannot see it. */
static volatile int recurse_limit = 1 << 30;

static __attribute__((noinline)) int recurse_forever(int depth)
{
    volatile char buf[4096];

    buf[0] = (char)depth;
    if (depth > recurse_limit) {
        return buf[0];
    }
    return recurse_forever(depth + 1) + buf[0];
}

static void coroutine_fn overflow_entry(void *opaque)
{
    *(int *)opaque = recurse_forever(0);
}

static void test_guard_page(void **state)
{
    pid_t pid = fork();
    int status;

    assert_true(pid >= 0);
    if (pid == 0) {
        int r;

        /* Keep ASan's report of the (expected) overflow out of the log,
         * and let the fault kill us rather than cmocka's handler, which
         * would carry on with the remaining tests in this child. */
        if (!freopen("/dev/null", "w", stderr) ||
            !freopen("/dev/null", "w", stdout)) {
            _exit(3);
        }
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        coroutine_enter(coroutine_create(overflow_entry, &r));
        _exit(0); /* not reached: the guard page stops the recursion */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    /* Killed by SIGSEGV, or (under ASan) exited with its error status. */
    assert_true(WIFSIGNALED(status) ||
                (WIFEXITED(status) && WEXITSTATUS(status) != 0));
}

/* ---- wake ---- */

typedef struct WakeTest {
    Log log;
    Coroutine *sleeper;
    bool done;
} WakeTest;

static void coroutine_fn wake_sleeper(void *opaque)
{
    WakeTest *t = opaque;

    log_add(&t->log, 1);
    coroutine_yield();
    log_add(&t->log, 4);
    t->done = true;
}

static void coroutine_fn wake_waker(void *opaque)
{
    WakeTest *t = opaque;

    log_add(&t->log, 2);
    coroutine_wake(t->sleeper);
    /* Waking only schedules: the sleeper has not run yet. */
    log_add(&t->log, 3);
}

static void test_wake_from_coroutine(void **state)
{
    WakeTest t = { 0 };

    t.sleeper = coroutine_create(wake_sleeper, &t);
    coroutine_enter(t.sleeper);
    coroutine_enter(coroutine_create(wake_waker, &t));
    assert_int_equal(t.log.n, 3);
    run_loop_until(&t.done);

    static const int want[] = { 1, 2, 3, 4 };
    log_expect(&t.log, want, 4);
}

typedef struct RoundRobin {
    Log log;
    int done;
} RoundRobin;

static void coroutine_fn rr_entry(void *opaque)
{
    RoundRobin *rr = opaque;
    int id = rr->log.n; /* 0, 1, 2 in creation order */

    for (int i = 0; i < 3; i++) {
        log_add(&rr->log, id);
        yield_to_loop();
    }
    rr->done++;
}

static void test_wake_fifo(void **state)
{
    RoundRobin rr = { 0 };

    for (int i = 0; i < 3; i++) {
        coroutine_enter(coroutine_create(rr_entry, &rr));
    }
    while (rr.done < 3) {
        g_main_context_iteration(NULL, TRUE);
    }
    /* Wakes are served in FIFO order, so the three interleave. */
    static const int want[] = { 0, 1, 2, 0, 1, 2, 0, 1, 2 };
    log_expect(&rr.log, want, 9);
}

/* A coroutine that yields while nested (its caller is a coroutine) and is
 * later woken from the loop, whose context becomes its caller. */
typedef struct NestedWake {
    Coroutine *inner;
    Log log;
    bool done;
} NestedWake;

static void coroutine_fn nested_wake_inner(void *opaque)
{
    NestedWake *t = opaque;

    log_add(&t->log, 1);
    coroutine_yield(); /* to the outer coroutine */
    log_add(&t->log, 4);
    yield_to_loop();   /* now to the loop */
    log_add(&t->log, 5);
    t->done = true;
}

static void coroutine_fn nested_wake_outer(void *opaque)
{
    NestedWake *t = opaque;

    t->inner = coroutine_create(nested_wake_inner, t);
    coroutine_enter(t->inner);
    log_add(&t->log, 2);
    coroutine_wake(t->inner);
    log_add(&t->log, 3);
    /* The outer coroutine finishes; the inner outlives it. */
}

static void test_wake_nested(void **state)
{
    NestedWake t = { 0 };

    coroutine_enter(coroutine_create(nested_wake_outer, &t));
    run_loop_until(&t.done);
    static const int want[] = { 1, 2, 3, 4, 5 };
    log_expect(&t.log, want, 5);
}

static void coroutine_fn park_entry(void *opaque)
{
    coroutine_yield();
}

/* Waking a coroutine twice for one wait is a bug the library catches. */
static void test_double_wake_detected(void **state)
{
    pid_t pid = fork();
    int status;

    assert_true(pid >= 0);
    if (pid == 0) {
        Coroutine *co;

        if (!freopen("/dev/null", "w", stderr)) {
            _exit(3);
        }
        signal(SIGABRT, SIG_DFL);
        co = coroutine_create(park_entry, NULL);
        coroutine_enter(co);
        coroutine_wake(co);
        coroutine_wake(co); /* aborts */
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

/* ---- run_sync ---- */

static void coroutine_fn run_sync_entry(void *opaque)
{
    int *v = opaque;

    assert_true(in_coroutine());
    yield_to_loop();
    co_sleep_ns(1000 * 1000);
    yield_to_loop();
    *v = 42;
}

typedef struct SyncChildren {
    CoQueue q;
    int started;
    int finished;
} SyncChildren;

static void coroutine_fn sync_child(void *opaque)
{
    SyncChildren *c = opaque;

    c->started++;
    co_queue_wait(&c->q, NULL);
    co_sleep_ns(100 * 1000);
    c->finished++;
}

/* A run_sync entry that fans out to children and waits for them all. */
static void coroutine_fn sync_parent(void *opaque)
{
    SyncChildren *c = opaque;

    co_queue_init(&c->q);
    for (int i = 0; i < 8; i++) {
        coroutine_enter(coroutine_create(sync_child, c));
    }
    assert_int_equal(c->started, 8);
    co_queue_restart_all(&c->q);
    while (c->finished < 8) {
        co_sleep_ns(50 * 1000);
    }
}

static void test_run_sync_children(void **state)
{
    SyncChildren c = { 0 };

    coroutine_run_sync(sync_parent, &c);
    assert_int_equal(c.finished, 8);
}

static void test_run_sync(void **state)
{
    int v = 0;

    coroutine_run_sync(run_sync_entry, &v);
    assert_int_equal(v, 42);
    assert_false(in_coroutine());
}

/* ---- CoMutex ---- */

typedef struct MutexTest {
    CoMutex m;
    int in_cs;
    int max_in_cs;
    int done;
    Log log;
} MutexTest;

typedef struct MutexWorker {
    MutexTest *t;
    int id;
} MutexWorker;

static void coroutine_fn mutex_worker(void *opaque)
{
    MutexWorker *w = opaque;
    MutexTest *t = w->t;

    for (int i = 0; i < 4; i++) {
        co_mutex_lock(&t->m);
        t->in_cs++;
        if (t->in_cs > t->max_in_cs) {
            t->max_in_cs = t->in_cs;
        }
        log_add(&t->log, w->id);
        /* Yield inside the critical section: others must not get in. */
        yield_to_loop();
        if (i & 1) {
            co_sleep_ns(100 * 1000);
        }
        yield_to_loop();
        t->in_cs--;
        co_mutex_unlock(&t->m);
        /* Try to barge straight back in: FIFO hand-off must refuse. */
    }
    t->done++;
}

static void test_mutex_exclusion_fairness(void **state)
{
    MutexTest t = { 0 };
    MutexWorker w[4];

    co_mutex_init(&t.m);
    for (int i = 0; i < 4; i++) {
        w[i] = (MutexWorker){ .t = &t, .id = i };
        coroutine_enter(coroutine_create(mutex_worker, &w[i]));
    }
    while (t.done < 4) {
        g_main_context_iteration(NULL, TRUE);
    }
    assert_int_equal(t.max_in_cs, 1);
    assert_false(t.m.locked);
    assert_true(co_queue_empty(&t.m.queue));
    /* Strict rotation: each unlock hands over to the longest waiter. */
    assert_int_equal(t.log.n, 16);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(t.log.ev[i], i % 4);
    }
}

static void coroutine_fn mutex_uncontended(void *opaque)
{
    CoMutex *m = opaque;

    co_mutex_lock(m);
    assert_true(m->locked);
    assert_ptr_equal(m->holder, coroutine_self());
    co_mutex_unlock(m);
    assert_false(m->locked);
}

static void test_mutex_uncontended(void **state)
{
    CoMutex m;

    co_mutex_init(&m);
    coroutine_enter(coroutine_create(mutex_uncontended, &m));
    assert_false(m.locked);
}

/* ---- CoQueue ---- */

typedef struct QueueTest {
    CoQueue q;
    CoMutex m;
    Log log;
    int woken;
} QueueTest;

typedef struct QueueWorker {
    QueueTest *t;
    int id;
    bool with_mutex;
} QueueWorker;

static void coroutine_fn queue_waiter(void *opaque)
{
    QueueWorker *w = opaque;
    QueueTest *t = w->t;

    if (w->with_mutex) {
        co_mutex_lock(&t->m);
        co_queue_wait(&t->q, &t->m);
        /* The mutex is ours again. */
        assert_ptr_equal(t->m.holder, coroutine_self());
        log_add(&t->log, w->id);
        co_mutex_unlock(&t->m);
    } else {
        co_queue_wait(&t->q, NULL);
        log_add(&t->log, w->id);
    }
    t->woken++;
}

static void test_queue_order(void **state)
{
    QueueTest t = { 0 };
    QueueWorker w[5];

    co_queue_init(&t.q);
    co_mutex_init(&t.m);
    assert_true(co_queue_empty(&t.q));
    assert_false(co_queue_next(&t.q));
    for (int i = 0; i < 5; i++) {
        w[i] = (QueueWorker){ .t = &t, .id = i, .with_mutex = i & 1 };
        coroutine_enter(coroutine_create(queue_waiter, &w[i]));
    }
    assert_false(co_queue_empty(&t.q));
    /* The mutex was released by every waiter. */
    assert_false(t.m.locked);

    /* Wake two, one at a time. */
    assert_true(co_queue_next(&t.q));
    run_loop_idle();
    assert_int_equal(t.woken, 1);
    assert_true(co_queue_next(&t.q));
    run_loop_idle();
    assert_int_equal(t.woken, 2);

    /* And the rest together, still in order. */
    co_queue_restart_all(&t.q);
    assert_true(co_queue_empty(&t.q));
    while (t.woken < 5) {
        g_main_context_iteration(NULL, TRUE);
    }
    static const int want[] = { 0, 1, 2, 3, 4 };
    log_expect(&t.log, want, 5);
}

/* ---- CoRwLock ---- */

typedef struct RwTest {
    CoRwLock l;
    int readers_in;
    int max_readers_in;
    int writers_in;
    bool violation;
    Log log;
    int done;
} RwTest;

typedef struct RwWorker {
    RwTest *t;
    int id;      /* logged on acquisition */
    bool write;
    int hold;    /* loop iterations to hold the lock */
} RwWorker;

static void coroutine_fn rw_worker(void *opaque)
{
    RwWorker *w = opaque;
    RwTest *t = w->t;

    if (w->write) {
        co_rwlock_wrlock(&t->l);
        t->writers_in++;
        if (t->writers_in != 1 || t->readers_in != 0) {
            t->violation = true;
        }
    } else {
        co_rwlock_rdlock(&t->l);
        t->readers_in++;
        if (t->writers_in != 0) {
            t->violation = true;
        }
        if (t->readers_in > t->max_readers_in) {
            t->max_readers_in = t->readers_in;
        }
    }
    log_add(&t->log, w->id);
    for (int i = 0; i < w->hold; i++) {
        yield_to_loop();
    }
    if (w->write) {
        t->writers_in--;
    } else {
        t->readers_in--;
    }
    co_rwlock_unlock(&t->l);
    t->done++;
}

static void test_rwlock_readers_share(void **state)
{
    RwTest t = { 0 };
    RwWorker w[3];

    co_rwlock_init(&t.l);
    for (int i = 0; i < 3; i++) {
        w[i] = (RwWorker){ .t = &t, .id = i, .write = false, .hold = 3 };
        coroutine_enter(coroutine_create(rw_worker, &w[i]));
    }
    /* All three got in without the loop running. */
    assert_int_equal(t.readers_in, 3);
    while (t.done < 3) {
        g_main_context_iteration(NULL, TRUE);
    }
    assert_int_equal(t.max_readers_in, 3);
    assert_false(t.violation);
    assert_int_equal(t.l.readers, 0);
}

static void test_rwlock_writer_not_starved(void **state)
{
    RwTest t = { 0 };
    /* R0 holds; W1 queues; R2 and R3 arrive later and must wait behind W1;
     * W4 comes last and waits for R2/R3. */
    RwWorker w[5] = {
        { .t = &t, .id = 0, .write = false, .hold = 4 },
        { .t = &t, .id = 1, .write = true, .hold = 2 },
        { .t = &t, .id = 2, .write = false, .hold = 2 },
        { .t = &t, .id = 3, .write = false, .hold = 2 },
        { .t = &t, .id = 4, .write = true, .hold = 1 },
    };

    co_rwlock_init(&t.l);
    for (int i = 0; i < 5; i++) {
        coroutine_enter(coroutine_create(rw_worker, &w[i]));
    }
    assert_int_equal(t.readers_in, 1);
    assert_int_equal(t.l.pending_writers, 2);
    while (t.done < 5) {
        g_main_context_iteration(NULL, TRUE);
    }
    assert_false(t.violation);
    /* R2 and R3 were admitted together after W1, before W4. */
    assert_int_equal(t.max_readers_in, 2);
    static const int want[] = { 0, 1, 2, 3, 4 };
    log_expect(&t.log, want, 5);
    assert_int_equal(t.l.pending_writers, 0);
    assert_false(t.l.writer);
}

static void test_rwlock_stress(void **state)
{
    RwTest t = { 0 };
    RwWorker w[40];

    co_rwlock_init(&t.l);
    for (int i = 0; i < 40; i++) {
        w[i] = (RwWorker){ .t = &t, .id = i % 100, .write = (i % 3) == 0,
                           .hold = i % 4 };
        coroutine_enter(coroutine_create(rw_worker, &w[i]));
    }
    while (t.done < 40) {
        g_main_context_iteration(NULL, TRUE);
    }
    assert_false(t.violation);
    assert_int_equal(t.l.readers, 0);
    assert_false(t.l.writer);
    assert_true(co_queue_empty(&t.l.queue));
}

/* ---- sleep ---- */

typedef struct SleepTest {
    int64_t ns;
    int64_t elapsed_us;
    bool done;
    CoSleep w;
} SleepTest;

static void coroutine_fn sleep_entry(void *opaque)
{
    SleepTest *s = opaque;
    gint64 t0 = g_get_monotonic_time();

    co_sleep_ns(s->ns);
    s->elapsed_us = g_get_monotonic_time() - t0;
    s->done = true;
}

static void test_sleep_lower_bound(void **state)
{
    static const int64_t durations[] = { 0, 1000, 250 * 1000,
                                         3 * 1000 * 1000, 20 * 1000 * 1000 };

    for (size_t i = 0; i < G_N_ELEMENTS(durations); i++) {
        SleepTest s = { .ns = durations[i] };

        coroutine_enter(coroutine_create(sleep_entry, &s));
        /* A sleep always goes through the loop, even a zero one. */
        assert_false(s.done);
        run_loop_until(&s.done);
        assert_true(s.elapsed_us * 1000 >= durations[i]);
    }
}

static void coroutine_fn sleep_wakeable_entry(void *opaque)
{
    SleepTest *s = opaque;
    gint64 t0 = g_get_monotonic_time();

    co_sleep_ns_wakeable(&s->w, s->ns);
    s->elapsed_us = g_get_monotonic_time() - t0;
    s->done = true;
}

static void coroutine_fn sleep_waker(void *opaque)
{
    SleepTest *s = opaque;

    co_sleep_ns(2 * 1000 * 1000);
    co_sleep_wake(&s->w);
    /* A second wake is a harmless no-op. */
    co_sleep_wake(&s->w);
}

static void test_sleep_wake(void **state)
{
    /* A minute: if the wake did not cut it short, the test would hang
     * until meson's timeout rather than fail on a tight bound. */
    SleepTest s = { .ns = 60LL * 1000 * 1000 * 1000 };

    coroutine_enter(coroutine_create(sleep_wakeable_entry, &s));
    assert_int_not_equal(s.w.timer_id, 0);
    coroutine_enter(coroutine_create(sleep_waker, &s));
    run_loop_until(&s.done);
    assert_true(s.elapsed_us >= 2000);
    assert_true(s.elapsed_us < 30LL * 1000 * 1000);
    assert_int_equal(s.w.timer_id, 0);
    assert_null(s.w.co);
    /* Waking after the sleep ended does nothing. */
    co_sleep_wake(&s.w);
}

static void test_sleep_wake_from_outside(void **state)
{
    /* The longest sleep there is: the deadline must not overflow. */
    SleepTest s = { .ns = INT64_MAX };

    coroutine_enter(coroutine_create(sleep_wakeable_entry, &s));
    assert_false(s.done);
    co_sleep_wake(&s.w);
    run_loop_until(&s.done);
    assert_true(s.elapsed_us < 30LL * 1000 * 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enter_yield_order),
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_many_sequential),
        cmocka_unit_test(test_many_live),
        cmocka_unit_test(test_deep_stack),
        cmocka_unit_test(test_guard_page),
        cmocka_unit_test(test_wake_from_coroutine),
        cmocka_unit_test(test_wake_fifo),
        cmocka_unit_test(test_wake_nested),
        cmocka_unit_test(test_double_wake_detected),
        cmocka_unit_test(test_run_sync),
        cmocka_unit_test(test_run_sync_children),
        cmocka_unit_test(test_mutex_exclusion_fairness),
        cmocka_unit_test(test_mutex_uncontended),
        cmocka_unit_test(test_queue_order),
        cmocka_unit_test(test_rwlock_readers_share),
        cmocka_unit_test(test_rwlock_writer_not_starved),
        cmocka_unit_test(test_rwlock_stress),
        cmocka_unit_test(test_sleep_lower_bound),
        cmocka_unit_test(test_sleep_wake),
        cmocka_unit_test(test_sleep_wake_from_outside),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
