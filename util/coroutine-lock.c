/*
 * Coroutine synchronisation: CoQueue, CoMutex, CoRwLock.
 *
 * Everything runs in the loop thread, so there is no atomicity to worry
 * about; what matters is order.  Waiters are always resumed through
 * coroutine_wake() (from the loop, not from inside the waker), and locks
 * are handed over to the next waiter on unlock, so a coroutine that did
 * not wait can never barge in ahead of one that did.
 */
#include "util/coroutine.h"

#include <stdio.h>
#include <stdlib.h>

/* Programming errors only: never reachable from client input. */
static G_NORETURN void lock_die(const char *msg)
{
    fprintf(stderr, "blockd: coroutine lock: %s\n", msg);
    abort();
}

static Coroutine *lock_self(const char *what)
{
    Coroutine *self = coroutine_self();

    if (!self) {
        lock_die(what);
    }
    return self;
}

/* ---- CoQueue ---- */

void co_queue_init(CoQueue *q)
{
    g_queue_init(&q->waiters);
}

void coroutine_fn co_queue_wait(CoQueue *q, CoMutex *mutex)
{
    Coroutine *self = lock_self("co_queue_wait outside coroutine context");

    g_queue_push_tail(&q->waiters, self);
    if (mutex) {
        co_mutex_unlock(mutex);
    }
    coroutine_yield();
    if (mutex) {
        co_mutex_lock(mutex);
    }
}

bool co_queue_next(CoQueue *q)
{
    Coroutine *co = g_queue_pop_head(&q->waiters);

    if (!co) {
        return false;
    }
    coroutine_wake(co);
    return true;
}

void co_queue_restart_all(CoQueue *q)
{
    while (co_queue_next(q)) {
        /* each waiter is scheduled in FIFO order */
    }
}

bool co_queue_empty(const CoQueue *q)
{
    return q->waiters.head == NULL;
}

/* ---- CoMutex ---- */

void co_mutex_init(CoMutex *m)
{
    m->locked = false;
    m->holder = NULL;
    co_queue_init(&m->queue);
}

void coroutine_fn co_mutex_lock(CoMutex *m)
{
    Coroutine *self = coroutine_self();

    if (!m->locked) {
        m->locked = true;
        m->holder = self;
        return;
    }
    if (!self) {
        lock_die("contended co_mutex_lock outside coroutine context");
    }
    if (m->holder == self) {
        lock_die("co_mutex_lock: recursive lock would deadlock");
    }
    g_queue_push_tail(&m->queue.waiters, self);
    coroutine_yield();
    /* co_mutex_unlock() handed the lock to us before waking us. */
    if (!m->locked || m->holder != self) {
        lock_die("co_mutex_lock: woken without ownership");
    }
}

void co_mutex_unlock(CoMutex *m)
{
    Coroutine *next;

    if (!m->locked) {
        lock_die("co_mutex_unlock of an unlocked mutex");
    }
    next = g_queue_pop_head(&m->queue.waiters);
    if (next) {
        /* Hand-off: the mutex stays locked, now owned by the next waiter. */
        m->holder = next;
        coroutine_wake(next);
    } else {
        m->locked = false;
        m->holder = NULL;
    }
}

/* ---- CoRwLock ---- */

/*
 * The queue holds RwWaiter records (on the waiters' stacks) in arrival
 * order.  A newcomer waits whenever anyone is queued, so a queued writer
 * holds back later readers; on release the head of the queue is granted:
 * one writer, or every reader up to the next writer.  Neither side starves.
 */
typedef struct RwWaiter {
    Coroutine *co;
    bool write;
} RwWaiter;

void co_rwlock_init(CoRwLock *l)
{
    l->readers = 0;
    l->writer = false;
    l->pending_writers = 0;
    co_queue_init(&l->queue);
}

/* Grant the lock to as many queued waiters as may now hold it. */
static void rwlock_grant(CoRwLock *l)
{
    RwWaiter *w;

    while (!l->writer && (w = g_queue_peek_head(&l->queue.waiters))) {
        if (w->write) {
            if (l->readers > 0) {
                return;
            }
            g_queue_pop_head(&l->queue.waiters);
            l->pending_writers--;
            l->writer = true;
            coroutine_wake(w->co);
            return;
        }
        g_queue_pop_head(&l->queue.waiters);
        l->readers++;
        coroutine_wake(w->co);
    }
}

static void coroutine_fn rwlock_wait(CoRwLock *l, bool write)
{
    RwWaiter w = {
        .co = lock_self("contended co_rwlock lock outside coroutine context"),
        .write = write,
    };

    if (write) {
        l->pending_writers++;
    }
    g_queue_push_tail(&l->queue.waiters, &w);
    coroutine_yield();
    /* rwlock_grant() already counted us as a holder. */
}

void coroutine_fn co_rwlock_rdlock(CoRwLock *l)
{
    if (!l->writer && g_queue_is_empty(&l->queue.waiters)) {
        l->readers++;
        return;
    }
    rwlock_wait(l, false);
}

void coroutine_fn co_rwlock_wrlock(CoRwLock *l)
{
    if (!l->writer && l->readers == 0 &&
        g_queue_is_empty(&l->queue.waiters)) {
        l->writer = true;
        return;
    }
    rwlock_wait(l, true);
}

void co_rwlock_unlock(CoRwLock *l)
{
    if (l->writer) {
        l->writer = false;
    } else if (l->readers > 0) {
        l->readers--;
    } else {
        lock_die("co_rwlock_unlock of an unlocked lock");
    }
    rwlock_grant(l);
}
