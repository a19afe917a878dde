/*
 * Stackful coroutines for the single-threaded event loop.
 *
 * Stacks are pooled and have a guard page; switching is a user-space
 * register swap (no system call).  A coroutine runs until it yields or
 * returns; it is resumed with coroutine_enter() (from outside any coroutine
 * or from its creator) or, from anywhere, with coroutine_wake(), which
 * re-enters it from the event loop.
 *
 * Functions that may yield are marked coroutine_fn and must only be called
 * from coroutine context.
 */
#ifndef UTIL_COROUTINE_H
#define UTIL_COROUTINE_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

#define coroutine_fn /* may yield: call only from coroutine context */

typedef struct Coroutine Coroutine;
typedef void coroutine_fn CoroutineEntry(void *opaque);

/* Create a coroutine; it does not run until entered. */
Coroutine *coroutine_create(CoroutineEntry *entry, void *opaque);
/*
 * Run `co` until it yields or terminates.  May be called from outside any
 * coroutine or from another coroutine (which then waits, like a call).
 * A terminated coroutine's stack returns to the pool.
 */
void coroutine_enter(Coroutine *co);
/* Schedule `co` to be entered from the event loop (safe from anywhere
 * in the loop thread, including from inside a coroutine). */
void coroutine_wake(Coroutine *co);
/* Give control back to whoever entered the current coroutine. */
void coroutine_fn coroutine_yield(void);
/* The running coroutine, or NULL outside coroutine context. */
Coroutine *coroutine_self(void);
bool in_coroutine(void);
/* Number of currently allocated (live + pooled) stacks; for tests. */
unsigned coroutine_pool_size(void);

/*
 * Run entry(opaque) in a new coroutine and iterate the main loop until it
 * returns.  Must be called from outside coroutine context.  From inside a
 * coroutine, call entry directly instead.
 */
void coroutine_run_sync(CoroutineEntry *entry, void *opaque);

/* ---- synchronisation (coroutine-lock.c) ---- */

/* A FIFO of waiting coroutines. */
typedef struct CoQueue {
    GQueue waiters; /* of Coroutine * */
} CoQueue;

void co_queue_init(CoQueue *q);
/* Wait until woken by co_queue_next/restart_all.  If `mutex` is non-NULL it
 * is released while waiting and re-taken before returning. */
struct CoMutex;
void coroutine_fn co_queue_wait(CoQueue *q, struct CoMutex *mutex);
/* Wake the first waiter (scheduled, not run immediately); false if none. */
bool co_queue_next(CoQueue *q);
/* Wake every waiter. */
void co_queue_restart_all(CoQueue *q);
bool co_queue_empty(const CoQueue *q);

/* A mutex between coroutines (FIFO handoff). */
typedef struct CoMutex {
    bool locked;
    Coroutine *holder;
    CoQueue queue;
} CoMutex;

void co_mutex_init(CoMutex *m);
void coroutine_fn co_mutex_lock(CoMutex *m);
void co_mutex_unlock(CoMutex *m);

/* Readers/writer lock (writers are not starved). */
typedef struct CoRwLock {
    int readers;
    bool writer;
    int pending_writers;
    CoQueue queue;
} CoRwLock;

void co_rwlock_init(CoRwLock *l);
void coroutine_fn co_rwlock_rdlock(CoRwLock *l);
void coroutine_fn co_rwlock_wrlock(CoRwLock *l);
void co_rwlock_unlock(CoRwLock *l);

/* Sleep for `ns` nanoseconds on the main loop. */
void coroutine_fn co_sleep_ns(int64_t ns);

/*
 * A sleep that another party can cut short (jobs: pause, cancel, set-speed).
 */
typedef struct CoSleep {
    Coroutine *co;
    unsigned timer_id;
} CoSleep;
void coroutine_fn co_sleep_ns_wakeable(CoSleep *w, int64_t ns);
void co_sleep_wake(CoSleep *w);

#endif
