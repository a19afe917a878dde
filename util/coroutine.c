/*
 * Stackful coroutines: mmap'd stacks with a guard page, a pool of finished
 * coroutines whose stacks are reused, and a switch that is a plain
 * _setjmp/_longjmp register swap (no signal mask, so no system call).
 *
 * A new stack is entered once (a few instructions of inline asm that move
 * the stack pointer, or makecontext/swapcontext on other architectures);
 * the trampoline saves a jmp_buf on it and jumps straight back, so every
 * later switch, including re-use of a pooled stack for a new coroutine, is
 * a longjmp.
 *
 * Under AddressSanitizer every switch is announced with
 * __sanitizer_start_switch_fiber/__sanitizer_finish_switch_fiber so that
 * ASan knows which stack is live.
 *
 * All state is per thread: coroutines live in the loop thread, but worker
 * threads may still ask in_coroutine() and must get false.
 */

/* __longjmp_chk (fortified longjmp) rejects jumps between stacks. */
#undef _FORTIFY_SOURCE

#include "util/coroutine.h"
#include "util/aio.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
/* Define CO_USE_UCONTEXT to test the portable stack start on x86-64. */
#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(CO_USE_UCONTEXT)
#define CO_ASM_START 1
#else
#include <ucontext.h>
#endif
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define CO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CO_ASAN 1
#endif
#endif

#ifdef CO_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

/* Usable stack size; the guard page comes on top of it. */
#define CO_STACK_SIZE (1u << 20)
/* Finished coroutines kept for re-use; beyond this their stacks are freed. */
#define CO_POOL_MAX 128

/* What a switch tells the coroutine it lands in. */
enum {
    CO_ACTION_ENTER = 1,
    CO_ACTION_YIELD = 2,
    CO_ACTION_TERMINATE = 3,
    CO_ACTION_DESTROY = 4, /* ASan only: release the fiber for good */
};

struct Coroutine {
    CoroutineEntry *entry;
    void *opaque;
    /* Who entered us and gets control back on yield; NULL while not
     * running (a running coroutine, or one in a caller chain, has one). */
    Coroutine *caller;
    jmp_buf env;

    /* The mapping: guard page at map_base, usable stack above it. */
    void *map_base;
    size_t map_size;
    void *stack_base; /* lowest usable address */
    size_t stack_size;

    /* Ready list (coroutine_wake) membership. */
    bool scheduled;
    Coroutine *ready_next;
    /* Pool free list. */
    Coroutine *pool_next;

#ifdef CO_ASAN
    void *fake_stack_save;
#endif
};

/* The thread's original context; never entered with coroutine_enter. */
static __thread Coroutine leader;
/* The running coroutine; NULL stands for `leader`. */
static __thread Coroutine *current;

static __thread Coroutine *pool_head;
static __thread unsigned pool_free_count;
static __thread unsigned pool_allocated; /* live + pooled stacks */

/* Ready list, drained by a GSource on the default main context. */
static __thread Coroutine *ready_head;
static __thread Coroutine *ready_tail;
static __thread GSource *ready_source;

/* Hand-off from coroutine_create() to the trampoline's first run. */
static __thread jmp_buf *tramp_return;

static Coroutine *co_self_or_leader(void)
{
    return current ? current : &leader;
}

/* Programming errors only: never reachable from client input. */
static G_NORETURN void co_die(const char *msg)
{
    fprintf(stderr, "blockd: coroutine: %s\n", msg);
    abort();
}

/* ---- AddressSanitizer fiber annotations ---- */

#ifdef CO_ASAN
/* The coroutine a switch came from: used to learn the leader's stack. */
static __thread Coroutine *asan_switch_from;

static void co_asan_start(Coroutine *from, Coroutine *to, bool terminating)
{
    asan_switch_from = from;
    /* A NULL save slot tells ASan to free the fiber's fake stack: only for
     * the last switch out of a stack that co_free() is about to unmap. */
    if (terminating) {
        from->fake_stack_save = NULL;
    }
    __sanitizer_start_switch_fiber(terminating ? NULL : &from->fake_stack_save,
                                   to->stack_base, to->stack_size);
}

static void co_asan_finish(Coroutine *self)
{
    const void *bottom_old;
    size_t size_old;

    __sanitizer_finish_switch_fiber(self->fake_stack_save, &bottom_old,
                                    &size_old);
    /* ASan reports the stack we left; the leader's is learnt that way
     * before anything ever switches back to it. */
    if (asan_switch_from == &leader && !leader.stack_base) {
        leader.stack_base = (void *)bottom_old;
        leader.stack_size = size_old;
    }
}
#else
static inline void co_asan_start(Coroutine *from, Coroutine *to,
                                 bool terminating)
{
}
static inline void co_asan_finish(Coroutine *self)
{
}
#endif

/*
 * Leave `from` for `to`, delivering `action`; returns the action that
 * later resumes `from`.  The caller has already set `current`.
 */
static int co_switch(Coroutine *from, Coroutine *to, int action,
                     bool terminating)
{
    int ret = _setjmp(from->env);

    if (ret == 0) {
        co_asan_start(from, to, terminating);
        _longjmp(to->env, action);
    }
    co_asan_finish(from);
    return ret;
}

/* ---- stacks and the trampoline ---- */

/*
 * First run on a new stack: save a jmp_buf here and jump straight back to
 * co_alloc(); every later arrival is a _longjmp to that jmp_buf.
 */
static void co_trampoline_body(Coroutine *co)
{
    jmp_buf *ret_env = tramp_return;

#ifdef CO_ASAN
    /* Learn the creator's stack so that the jump back can be announced. */
    const void *creator_bottom;
    size_t creator_size;

    __sanitizer_finish_switch_fiber(NULL, &creator_bottom, &creator_size);
    if (asan_switch_from == &leader && !leader.stack_base) {
        leader.stack_base = (void *)creator_bottom;
        leader.stack_size = creator_size;
    }
    if (!_setjmp(co->env)) {
        asan_switch_from = co;
        __sanitizer_start_switch_fiber(&co->fake_stack_save, creator_bottom,
                                       creator_size);
        _longjmp(*ret_env, 1);
    }
    co_asan_finish(co);
#else
    if (!_setjmp(co->env)) {
        _longjmp(*ret_env, 1);
    }
#endif

    /* Entered for real.  Each lap of the loop is one coroutine's life; a
     * pooled stack resumes at the switch below for its next one. */
    for (;;) {
        Coroutine *caller;

        co->entry(co->opaque);

        caller = co->caller;
        co->caller = NULL;
        current = caller == &leader ? NULL : caller;
        /* Not a final switch: a pooled stack comes back here, and (under
         * ASan) its frames still live on its fake stack. */
        if (co_switch(co, caller, CO_ACTION_TERMINATE, false) ==
            CO_ACTION_DESTROY) {
            /* co_free() under ASan: leave for good, so ASan may free
             * this fiber's fake stack. */
            caller = co->caller;
            co->caller = NULL;
            current = caller == &leader ? NULL : caller;
            co_switch(co, caller, CO_ACTION_TERMINATE, true);
            co_die("destroyed coroutine resumed");
        }
    }
}

#ifdef CO_ASM_START
/*
 * Point the stack pointer at `top` and call fn(arg) there; fn never
 * returns.  Used instead of makecontext/swapcontext because it needs no
 * signal-mask system call and ASan fully supports it (ASan only warns that
 * swapcontext may give false positives).
 */
static void co_trampoline_ptr(void *arg)
{
    co_trampoline_body(arg);
}

static __attribute__((noinline, noreturn)) void
co_start_on_stack(void *top, void (*fn)(void *), void *arg)
{
#if defined(__x86_64__)
    /* `top` is 16-byte aligned, as the ABI wants it before a call. */
    __asm__ volatile("mov %0, %%rsp\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "call *%1\n\t"
                     "ud2\n\t"
                     :
                     : "r"(top), "r"(fn), "D"(arg)
                     : "memory");
#else
    register void *x0 __asm__("x0") = arg;

    __asm__ volatile("mov sp, %0\n\t"
                     "mov x29, xzr\n\t"
                     "mov x30, xzr\n\t"
                     "blr %1\n\t"
                     "brk #0\n\t"
                     :
                     : "r"(top), "r"(fn), "r"(x0)
                     : "memory", "x29", "x30");
#endif
    __builtin_unreachable();
}

static void co_start(Coroutine *co)
{
    /* Highest address of the stack, rounded down to 16 bytes. */
    uintptr_t top = ((uintptr_t)co->stack_base + co->stack_size) &
                    ~(uintptr_t)15;

    co_start_on_stack((void *)top, co_trampoline_ptr, co);
}
#else
static void co_trampoline_ints(unsigned int hi, unsigned int lo)
{
    co_trampoline_body((Coroutine *)(uintptr_t)((uint64_t)hi << 32 | lo));
}

/* Portable fallback: makecontext/swapcontext, once per stack. */
static void co_start(Coroutine *co)
{
    ucontext_t uc, old_uc;
    uint64_t p = (uintptr_t)co;

    if (getcontext(&uc) < 0) {
        co_die("getcontext failed");
    }
    uc.uc_link = NULL;
    uc.uc_stack.ss_sp = co->stack_base;
    uc.uc_stack.ss_size = co->stack_size;
    uc.uc_stack.ss_flags = 0;
    /* makecontext passes ints: split the pointer. */
    makecontext(&uc, (void (*)(void))co_trampoline_ints, 2,
                (unsigned int)(p >> 32), (unsigned int)p);
    swapcontext(&old_uc, &uc);
}
#endif

static Coroutine *co_alloc(void)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t guard = page > 0 ? (size_t)page : 4096;
    Coroutine *co = g_new0(Coroutine, 1);
    jmp_buf ret_env;

    co->map_size = CO_STACK_SIZE + guard;
    co->map_base = mmap(NULL, co->map_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
                            MAP_STACK,
                        -1, 0);
    if (co->map_base == MAP_FAILED) {
        co_die("cannot allocate a coroutine stack");
    }
    /* The stack grows down: the guard sits at the low end. */
    if (mprotect(co->map_base, guard, PROT_NONE) < 0) {
        co_die("cannot protect a coroutine guard page");
    }
    co->stack_base = (char *)co->map_base + guard;
    co->stack_size = CO_STACK_SIZE;

    tramp_return = &ret_env;
    if (!_setjmp(ret_env)) {
#ifdef CO_ASAN
        asan_switch_from = co_self_or_leader();
        __sanitizer_start_switch_fiber(&asan_switch_from->fake_stack_save,
                                       co->stack_base, co->stack_size);
#endif
        co_start(co);
        /* Not reached: the trampoline longjmps to ret_env. */
        co_die("coroutine trampoline returned");
    }
#ifdef CO_ASAN
    co_asan_finish(co_self_or_leader());
#endif
    tramp_return = NULL;
    pool_allocated++;
    return co;
}

static void co_free(Coroutine *co)
{
#ifdef CO_ASAN
    /* Visit the stack one last time so that ASan releases its fake stack;
     * without ASan there is nothing on it worth visiting. */
    Coroutine *self = co_self_or_leader();

    co->caller = self;
    current = co;
    co_switch(self, co, CO_ACTION_DESTROY, false);
#endif
    munmap(co->map_base, co->map_size);
    g_free(co);
    pool_allocated--;
}

/* A terminated coroutine: keep its stack for the next one, or free it. */
static void co_release(Coroutine *co)
{
    co->entry = NULL;
    co->opaque = NULL;
    if (pool_free_count < CO_POOL_MAX) {
        co->pool_next = pool_head;
        pool_head = co;
        pool_free_count++;
    } else {
        co_free(co);
    }
}

/* ---- public API ---- */

Coroutine *coroutine_create(CoroutineEntry *entry, void *opaque)
{
    Coroutine *co = pool_head;

    if (co) {
        pool_head = co->pool_next;
        pool_free_count--;
        co->pool_next = NULL;
    } else {
        co = co_alloc();
    }
    co->entry = entry;
    co->opaque = opaque;
    co->caller = NULL;
    co->scheduled = false;
    co->ready_next = NULL;
    return co;
}

void coroutine_enter(Coroutine *co)
{
    Coroutine *self = co_self_or_leader();
    int ret;

    if (!co->entry) {
        co_die("entering a terminated coroutine");
    }
    if (co->caller || co == self) {
        co_die("entering a coroutine that is already running");
    }
    if (co->scheduled) {
        co_die("entering a coroutine that is scheduled by coroutine_wake");
    }
    co->caller = self;
    current = co;
    ret = co_switch(self, co, CO_ACTION_ENTER, false);
    /* Back here once `co` yielded or finished; whoever switched to us
     * already made us current again. */
    if (ret == CO_ACTION_TERMINATE) {
        co_release(co);
    }
}

void coroutine_fn coroutine_yield(void)
{
    Coroutine *self = current;
    Coroutine *caller;

    if (!self) {
        co_die("coroutine_yield outside coroutine context");
    }
    caller = self->caller;
    self->caller = NULL;
    current = caller == &leader ? NULL : caller;
    co_switch(self, caller, CO_ACTION_YIELD, false);
}

Coroutine *coroutine_self(void)
{
    return current;
}

bool in_coroutine(void)
{
    return current != NULL;
}

unsigned coroutine_pool_size(void)
{
    return pool_allocated;
}

/* ---- ready list ---- */

static gboolean ready_prepare(GSource *source, gint *timeout)
{
    *timeout = -1;
    return ready_head != NULL;
}

static gboolean ready_check(GSource *source)
{
    return ready_head != NULL;
}

static gboolean ready_dispatch(GSource *source, GSourceFunc cb, gpointer data)
{
    /* Run only what was ready when we started: coroutines woken while we
     * drain wait for the next iteration, so other sources get a turn. */
    Coroutine *co = ready_head;

    ready_head = ready_tail = NULL;
    while (co) {
        Coroutine *next = co->ready_next;

        co->ready_next = NULL;
        co->scheduled = false;
        coroutine_enter(co);
        co = next;
    }
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs ready_funcs = {
    .prepare = ready_prepare,
    .check = ready_check,
    .dispatch = ready_dispatch,
};

void coroutine_wake(Coroutine *co)
{
    if (co->scheduled) {
        /* Two wakes for one wait would resume it at the wrong point. */
        co_die("coroutine_wake: coroutine is already scheduled");
    }
    if (!co->entry) {
        co_die("coroutine_wake: coroutine has terminated");
    }
    if (!ready_source) {
        ready_source = g_source_new(&ready_funcs, sizeof(GSource));
        g_source_set_priority(ready_source, G_PRIORITY_DEFAULT);
        g_source_set_name(ready_source, "coroutine-ready");
        /* A nested loop run from non-coroutine code that we dispatch must
         * still see wakes (our own snapshot is detached, so no conflict). */
        g_source_set_can_recurse(ready_source, TRUE);
        g_source_attach(ready_source, NULL);
    }
    co->scheduled = true;
    co->ready_next = NULL;
    if (ready_tail) {
        ready_tail->ready_next = co;
    } else {
        ready_head = co;
    }
    ready_tail = co;
    /* No g_main_context_wakeup(): we are in the loop thread, whose next
     * prepare sees the list; a wakeup would cost a write() per wake. */
}

/* ---- run_sync ---- */

typedef struct RunSync {
    CoroutineEntry *entry;
    void *opaque;
    bool done;
} RunSync;

static void coroutine_fn run_sync_entry(void *opaque)
{
    RunSync *rs = opaque;

    rs->entry(rs->opaque);
    rs->done = true;
}

void coroutine_run_sync(CoroutineEntry *entry, void *opaque)
{
    RunSync rs = { .entry = entry, .opaque = opaque, .done = false };

    if (in_coroutine()) {
        co_die("coroutine_run_sync called from coroutine context");
    }
    coroutine_enter(coroutine_create(run_sync_entry, &rs));
    while (!rs.done) {
        aio_poll(true);
    }
}
