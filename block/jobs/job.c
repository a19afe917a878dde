/*
 * The generic job: QEMU's JobStatus state machine and verb table, pause
 * counting, cancel, completion through transactions of jobs.
 *
 * Everything runs in the main loop thread; the job's work runs in its
 * own coroutine and everything after run() returns (finalization of the
 * transaction) runs from a bottom half or from a QMP command.
 */
#include "block/jobs/job.h"

#include <errno.h>
#include <string.h>

#include "block/block_int.h"
#include "qapi/qapi-events.h"
#include "util/aio.h"
#include "util/error.h"

struct JobTxn {
    LIST_HEAD(, Job) jobs;
    int refcnt;
    bool aborting; /* an abort of the whole transaction is under way */
};

static void job_cancel_async(Job *job, bool force);
static void job_completed(Job *job);

/* ---- the two tables ---- */

enum {
    U = JOB_STATUS_UNDEFINED,
    C = JOB_STATUS_CREATED,
    R = JOB_STATUS_RUNNING,
    P = JOB_STATUS_PAUSED,
    Y = JOB_STATUS_READY,
    S = JOB_STATUS_STANDBY,
    W = JOB_STATUS_WAITING,
    D = JOB_STATUS_PENDING,
    X = JOB_STATUS_ABORTING,
    E = JOB_STATUS_CONCLUDED,
    N = JOB_STATUS_NULL,
};

/* Which status may follow which (rows: from, columns: to). */
static const bool job_transition_table[JOB_STATUS__MAX][JOB_STATUS__MAX] = {
    /*       U  C  R  P  Y  S  W  D  X  E  N */
    [U] = { 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
    [C] = { 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1 },
    [R] = { 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0 },
    [P] = { 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0 },
    [Y] = { 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0 },
    [S] = { 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0 },
    [W] = { 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0 },
    [D] = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0 },
    [X] = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0 },
    [E] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 },
    [N] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

/* Which verb is accepted in which status. */
static const bool job_verb_table[JOB_VERB__MAX][JOB_STATUS__MAX] = {
    /*                          U  C  R  P  Y  S  W  D  X  E  N */
    [JOB_VERB_CANCEL] =       { 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 },
    [JOB_VERB_PAUSE] =        { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_RESUME] =       { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_SET_SPEED] =    { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_COMPLETE] =     { 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_FINALIZE] =     { 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0 },
    [JOB_VERB_DISMISS] =      { 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0 },
};

/* Every job, newest first (the order query-jobs lists them in, as QEMU). */
static GQueue all_jobs = G_QUEUE_INIT;

static void job_state_transition(Job *job, JobStatus s1)
{
    JobStatus s0 = job->status;

    if (!job_transition_table[s0][s1]) {
        /* A bug in this file, never something a client can cause. */
        g_error("job '%s': invalid transition %s -> %s",
                job->id ? job->id : "(internal)", JobStatus_str(s0),
                JobStatus_str(s1));
    }
    job->status = s1;
    if (!job_is_internal(job) && s1 != s0) {
        qapi_event_send_job_status_change(job->id, s1);
    }
}

int job_apply_verb(Job *job, JobVerb verb, GError **errp)
{
    if (job_verb_table[verb][job->status]) {
        return 0;
    }
    error_setg(errp, "Job '%s' in state '%s' cannot accept command verb '%s'",
               job->id ? job->id : "", JobStatus_str(job->status),
               JobVerb_str(verb));
    return -EPERM;
}

/* ---- registry and references ---- */

bool job_is_internal(const Job *job)
{
    return job->id == NULL;
}

const char *job_type_str(const Job *job)
{
    return JobType_str(job->driver->job_type);
}

Job *job_get(const char *id)
{
    for (GList *l = all_jobs.head; l; l = l->next) {
        Job *job = l->data;
        if (job->id && !strcmp(job->id, id)) {
            return job;
        }
    }
    return NULL;
}

Job *job_next(Job *job)
{
    if (!job) {
        return all_jobs.head ? all_jobs.head->data : NULL;
    }
    GList *l = g_queue_find(&all_jobs, job);
    return l && l->next ? l->next->data : NULL;
}

void job_ref(Job *job)
{
    job->refcnt++;
}

void job_unref(Job *job)
{
    if (--job->refcnt > 0) {
        return;
    }
    g_queue_remove(&all_jobs, job);
    if (job->driver->free) {
        job->driver->free(job);
    }
    if (job->listener && job->listener->on_free) {
        job->listener->on_free(job);
    }
    if (job->txn) {
        LIST_REMOVE(job, txn_list);
        job_txn_unref(job->txn);
    }
    if (job->err) {
        g_error_free(job->err);
    }
    g_free(job->id);
    g_free(job);
}

/* ---- transactions ---- */

JobTxn *job_txn_new(void)
{
    JobTxn *txn = g_new0(JobTxn, 1);
    LIST_INIT(&txn->jobs);
    txn->refcnt = 1;
    return txn;
}

static void job_txn_ref(JobTxn *txn)
{
    txn->refcnt++;
}

void job_txn_unref(JobTxn *txn)
{
    if (txn && --txn->refcnt == 0) {
        g_free(txn);
    }
}

void job_txn_add_job(JobTxn *txn, Job *job)
{
    if (job->txn == txn) {
        return;
    }
    if (job->txn) {
        LIST_REMOVE(job, txn_list);
        job_txn_unref(job->txn);
    }
    job->txn = txn;
    LIST_INSERT_HEAD(&txn->jobs, job, txn_list);
    job_txn_ref(txn);
}

/* A concluded job leaves its transaction (so it no longer holds up or
 * takes part in the others' completion). */
static void job_txn_del_job(Job *job)
{
    if (job->txn) {
        LIST_REMOVE(job, txn_list);
        job_txn_unref(job->txn);
        job->txn = NULL;
    }
}

/* Apply fn to every job of job's transaction, stopping at the first
 * non-zero result.  The jobs stay referenced meanwhile, as fn may
 * conclude (and so remove) them. */
static int job_txn_apply(Job *job, int (*fn)(Job *))
{
    JobTxn *txn = job->txn;
    int rc = 0;

    if (!txn) {
        return fn(job);
    }
    job_txn_ref(txn);
    GPtrArray *jobs = g_ptr_array_new();
    Job *j;
    LIST_FOREACH (j, &txn->jobs, txn_list) {
        job_ref(j);
        g_ptr_array_add(jobs, j);
    }
    /* Newest first, as QEMU (the order of the events of a group). */
    for (guint i = 0; i < jobs->len && !rc; i++) {
        rc = fn(jobs->pdata[i]);
    }
    for (guint i = 0; i < jobs->len; i++) {
        job_unref(jobs->pdata[i]);
    }
    g_ptr_array_free(jobs, TRUE);
    job_txn_unref(txn);
    return rc;
}

/* ---- creation ---- */

static bool job_id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

void *job_create(const char *job_id, const JobDriver *driver, JobTxn *txn,
                 int flags, JobCompletionFunc *cb, void *opaque,
                 GError **errp)
{
    if (job_id) {
        if (flags & JOB_INTERNAL) {
            error_setg(errp, "Cannot specify job ID for internal job");
            return NULL;
        }
        if (!job_id_wellformed(job_id)) {
            error_setg(errp, "Invalid job ID '%s'", job_id);
            return NULL;
        }
        if (job_get(job_id)) {
            error_setg(errp, "Job ID '%s' already in use", job_id);
            return NULL;
        }
    } else if (!(flags & JOB_INTERNAL)) {
        error_setg(errp, "An explicit job ID is required");
        return NULL;
    }

    size_t size = driver->instance_size;
    Job *job = g_malloc0(size > sizeof(Job) ? size : sizeof(Job));
    job->id = g_strdup(job_id);
    job->driver = driver;
    job->refcnt = 1;
    job->auto_finalize = !(flags & JOB_MANUAL_FINALIZE);
    job->auto_dismiss = !(flags & JOB_MANUAL_DISMISS);
    job->cb = cb;
    job->cb_opaque = opaque;
    /* Not started yet counts as paused: job_start() drops this one. */
    job->pause_count = 1;
    job->paused = true;
    co_queue_init(&job->completion_waiters);
    g_queue_push_head(&all_jobs, job);

    job_state_transition(job, JOB_STATUS_CREATED);

    if (!txn) {
        txn = job_txn_new();
        job_txn_add_job(txn, job);
        job_txn_unref(txn);
    } else {
        job_txn_add_job(txn, job);
    }
    return job;
}

/* ---- state ---- */

bool job_started(const Job *job)
{
    return job->co != NULL;
}

bool job_is_cancelled(const Job *job)
{
    return job->cancelled && job->force_cancel;
}

bool job_cancel_requested(const Job *job)
{
    return job->cancelled;
}

bool job_is_ready(const Job *job)
{
    return job->status == JOB_STATUS_READY ||
           job->status == JOB_STATUS_STANDBY;
}

bool job_is_completed(const Job *job)
{
    switch (job->status) {
    case JOB_STATUS_WAITING:
    case JOB_STATUS_PENDING:
    case JOB_STATUS_ABORTING:
    case JOB_STATUS_CONCLUDED:
    case JOB_STATUS_NULL:
        return true;
    default:
        return false;
    }
}

bool job_should_pause(const Job *job)
{
    return job->pause_count > 0;
}

const char *job_error_str(const Job *job)
{
    if (!job->ret) {
        return NULL;
    }
    return job->err ? job->err->message : g_strerror(-job->ret);
}

/* ---- progress ---- */

void job_progress_update(Job *job, uint64_t done)
{
    job->progress_current += done;
}

void job_progress_set_remaining(Job *job, uint64_t remaining)
{
    job->progress_total = job->progress_current + remaining;
}

void job_progress_increase_remaining(Job *job, uint64_t delta)
{
    job->progress_total += delta;
}

/* ---- entering and yielding ---- */

static void job_idle(Job *job)
{
    if (job->listener && job->listener->on_idle) {
        job->listener->on_idle(job);
    }
    /* A drain may be waiting for this job to stop. */
    bdrv_wakeup();
}

/* Wake the job's coroutine if it is waiting and `cond` (if given)
 * agrees.  A sleeping job's timer is cancelled. */
static void job_enter_cond(Job *job, bool (*cond)(Job *job))
{
    if (!job_started(job) || job->deferred_to_main_loop || job->busy) {
        return;
    }
    if (cond && !cond(job)) {
        return;
    }
    job->busy = true;
    if (job->sleep.timer_id) {
        co_sleep_wake(&job->sleep);
    } else {
        coroutine_wake(job->co);
    }
}

void job_enter(Job *job)
{
    job_enter_cond(job, NULL);
}

static bool job_timer_not_pending(Job *job)
{
    return job->sleep.timer_id == 0;
}

/* Stop being busy until woken (ns < 0) or until ns have passed. */
static void coroutine_fn job_do_yield(Job *job, int64_t ns)
{
    job->busy = false;
    job_idle(job);
    if (ns >= 0) {
        co_sleep_ns_wakeable(&job->sleep, ns);
    } else {
        coroutine_yield();
    }
    /* Whoever woke us set busy (job_enter_cond); a timer did not. */
    job->busy = true;
}

void coroutine_fn job_pause_point(Job *job)
{
    if (!job_should_pause(job) || job_is_cancelled(job)) {
        return;
    }
    if (job->driver->pause) {
        job->driver->pause(job);
    }
    if (job_should_pause(job) && !job_is_cancelled(job)) {
        JobStatus status = job->status;
        job_state_transition(job, status == JOB_STATUS_READY
                                      ? JOB_STATUS_STANDBY
                                      : JOB_STATUS_PAUSED);
        job->paused = true;
        /* Only a resume or a cancel ends the pause: a wake-up for another
         * reason (a driver's job_enter) finds it still in force. */
        do {
            job_do_yield(job, -1);
        } while (job_should_pause(job) && !job_is_cancelled(job));
        job->paused = false;
        job_state_transition(job, status);
    }
    if (job->driver->resume) {
        job->driver->resume(job);
    }
}

void coroutine_fn job_yield(Job *job)
{
    /* A cancel before we stop being busy would find nobody to wake. */
    if (job_is_cancelled(job)) {
        return;
    }
    if (!job_should_pause(job)) {
        job_do_yield(job, -1);
    }
    job_pause_point(job);
}

void coroutine_fn job_sleep_ns(Job *job, int64_t ns)
{
    if (job_is_cancelled(job)) {
        return;
    }
    if (!job_should_pause(job)) {
        job_do_yield(job, ns);
    }
    job_pause_point(job);
}

/* ---- pause and resume ---- */

void job_pause(Job *job)
{
    job->pause_count++;
    if (!job->paused) {
        job_enter(job);
    }
}

void job_resume(Job *job)
{
    if (job->pause_count <= 0) {
        return;
    }
    if (--job->pause_count) {
        return;
    }
    /* A sleeping job keeps its timer: it goes on when the timer fires. */
    job_enter_cond(job, job_timer_not_pending);
}

bool job_user_paused(const Job *job)
{
    return job->user_paused;
}

void job_user_pause(Job *job, GError **errp)
{
    if (job_apply_verb(job, JOB_VERB_PAUSE, errp) < 0) {
        return;
    }
    if (job->user_paused) {
        error_setg(errp, "Job is already paused");
        return;
    }
    job->user_paused = true;
    job_pause(job);
}

static void job_call_user_resume(Job *job)
{
    if (job->driver->user_resume) {
        job->driver->user_resume(job);
    }
    if (job->listener && job->listener->on_user_resume) {
        job->listener->on_user_resume(job);
    }
}

void job_user_resume(Job *job, GError **errp)
{
    /* This check comes first, as in QEMU: a concluded job that was never
     * paused says so rather than naming its status. */
    if (!job->user_paused) {
        error_setg(errp, "Can't resume a job that was not paused");
        return;
    }
    if (job_apply_verb(job, JOB_VERB_RESUME, errp) < 0) {
        return;
    }
    job_call_user_resume(job);
    job->user_paused = false;
    job_resume(job);
}

/* ---- completion ---- */

static void job_event_pending(Job *job)
{
    if (job->listener && job->listener->on_pending) {
        job->listener->on_pending(job);
    }
}

void job_transition_to_ready(Job *job)
{
    job_state_transition(job, JOB_STATUS_READY);
    if (job->listener && job->listener->on_ready) {
        job->listener->on_ready(job);
    }
}

/* A cancelled job without an error of its own fails with ECANCELED; a
 * failed job goes to aborting. */
static void job_update_rc(Job *job)
{
    if (!job->ret && job_is_cancelled(job)) {
        job->ret = -ECANCELED;
    }
    if (job->ret) {
        if (!job->err) {
            job->err = g_error_new(BLOCKD_ERROR, ERROR_CLASS_GENERIC_ERROR,
                                   "%s", g_strerror(-job->ret));
        }
        job_state_transition(job, JOB_STATUS_ABORTING);
    }
}

static void job_do_dismiss(Job *job)
{
    job->busy = false;
    job->paused = false;
    job->deferred_to_main_loop = true;
    job_txn_del_job(job);
    job_state_transition(job, JOB_STATUS_NULL);
    job_unref(job);
}

void job_early_fail(Job *job)
{
    job_do_dismiss(job);
}

static void job_conclude(Job *job)
{
    job_state_transition(job, JOB_STATUS_CONCLUDED);
    if (job->auto_dismiss || !job_started(job)) {
        job_do_dismiss(job);
    }
}

static int job_finalize_single(Job *job)
{
    /* A late failure (prepare, or an abort of the transaction) counts. */
    job_update_rc(job);
    if (!job->ret) {
        if (job->driver->commit) {
            job->driver->commit(job);
        }
    } else if (job->driver->abort) {
        job->driver->abort(job);
    }
    if (job->driver->clean) {
        job->driver->clean(job);
    }
    if (job->cb) {
        job->cb(job->cb_opaque, job->ret);
    }
    /* Events only for jobs that ran. */
    if (job_started(job) && job->listener && job->listener->on_finalized) {
        job->listener->on_finalized(job, job_is_cancelled(job));
    }
    job_txn_del_job(job);
    job_conclude(job);
    return 0;
}

/* Abort every job of the transaction: cancel (forced) those still
 * running, wait for them, then finalize each as failed. */
static void job_completed_txn_abort(Job *job)
{
    JobTxn *txn = job->txn;
    Job *other;

    if (!txn) {
        job_finalize_single(job);
        return;
    }
    if (txn->aborting) {
        /* Already being aborted by an outer call. */
        return;
    }
    txn->aborting = true;
    job_txn_ref(txn);
    job_ref(job);

    LIST_FOREACH (other, &txn->jobs, txn_list) {
        if (other != job) {
            /* One failure decides the transaction: the others' results
             * no longer matter, so stop them as fast as possible. */
            job_cancel_async(other, true);
        }
    }
    while (!LIST_EMPTY(&txn->jobs)) {
        other = LIST_FIRST(&txn->jobs);
        job_ref(other);
        if (!job_started(other) && !job_is_completed(other)) {
            /* Never ran: nothing to wait for. */
            job_completed(other);
        } else if (!job_is_completed(other)) {
            job_wait_completed(other);
        }
        if (other->txn == txn) {
            job_finalize_single(other);
        }
        job_unref(other);
    }
    job_unref(job);
    job_txn_unref(txn);
}

static int job_prepare(Job *job)
{
    if (job->ret == 0 && job->driver->prepare) {
        GError *err = NULL;
        job->ret = job->driver->prepare(job, &err);
        if (job->ret < 0 && err) {
            if (job->err) {
                g_error_free(job->err);
            }
            job->err = err;
        } else if (err) {
            g_error_free(err);
        }
        job_update_rc(job);
    }
    return job->ret;
}

static int job_needs_finalize(Job *job)
{
    return !job->auto_finalize;
}

static void job_do_finalize(Job *job)
{
    if (job_txn_apply(job, job_prepare)) {
        job_completed_txn_abort(job);
    } else {
        job_txn_apply(job, job_finalize_single);
    }
}

static int job_transition_to_pending(Job *job)
{
    job_state_transition(job, JOB_STATUS_PENDING);
    if (!job->auto_finalize) {
        job_event_pending(job);
    }
    return 0;
}

static void job_completed_txn_success(Job *job)
{
    Job *other;

    job_state_transition(job, JOB_STATUS_WAITING);
    LIST_FOREACH (other, &job->txn->jobs, txn_list) {
        if (!job_is_completed(other)) {
            return;
        }
    }
    job_txn_apply(job, job_transition_to_pending);
    /* Finalize now unless some job of the transaction waits for
     * job-finalize. */
    if (job_txn_apply(job, job_needs_finalize) == 0) {
        job_do_finalize(job);
    }
}

static void job_completed(Job *job)
{
    /* Finalization may conclude and dismiss the job. */
    job_ref(job);
    job_update_rc(job);
    if (job->ret) {
        job_completed_txn_abort(job);
    } else {
        job_completed_txn_success(job);
    }
    co_queue_restart_all(&job->completion_waiters);
    bdrv_wakeup();
    job_unref(job);
}

/* After run() returned: the coroutine is gone; finish in the loop. */
static void job_exit(void *opaque)
{
    Job *job = opaque;

    job->busy = false;
    job_idle(job);
    if (!job_is_completed(job)) {
        job_completed(job);
    }
    job_unref(job);
}

static void coroutine_fn job_co_entry(void *opaque)
{
    Job *job = opaque;
    GError *err = NULL;

    job_pause_point(job);
    job->ret = job->driver->run(job, &err);
    if (job->ret < 0) {
        if (err) {
            job->err = err;
        }
    } else if (err) {
        g_error_free(err);
    }
    job->deferred_to_main_loop = true;
    job->busy = true;
    aio_bh_schedule(job_exit, job);
}

void job_start(Job *job)
{
    if (job_started(job)) {
        return;
    }
    job->co = coroutine_create(job_co_entry, job);
    job->pause_count--;
    job->busy = true;
    job->paused = false;
    job_state_transition(job, JOB_STATUS_RUNNING);
    /* job_exit drops this reference once the coroutine is over. */
    job_ref(job);
    coroutine_wake(job->co);
}

/* ---- cancel ---- */

static void job_cancel_async(Job *job, bool force)
{
    if (job->driver->cancel) {
        force = job->driver->cancel(job, force);
    } else {
        force = true;
    }
    if (job->user_paused) {
        /* A cancelled job must be able to run to its end. */
        job_call_user_resume(job);
        job->user_paused = false;
        if (job->pause_count > 0) {
            job->pause_count--;
        }
    }
    /* A soft cancel of a job that already finished its work is ignored;
     * a forced one is never downgraded by a later soft one. */
    if (force || !job->deferred_to_main_loop) {
        job->cancelled = true;
        job->force_cancel |= force;
    }
}

void job_cancel(Job *job, bool force)
{
    if (job->status == JOB_STATUS_CONCLUDED) {
        job_do_dismiss(job);
        return;
    }
    job_cancel_async(job, force);
    if (!job_started(job)) {
        job_completed(job);
    } else if (job->deferred_to_main_loop) {
        /* run() is over.  Soft cancels were ignored above; a forced one
         * aborts the transaction, now if the job already went through
         * job_exit (waiting, pending), else job_exit will see it. */
        if (job_is_cancelled(job) && job_is_completed(job)) {
            job_completed_txn_abort(job);
        }
    } else {
        job_enter(job);
    }
}

void job_user_cancel(Job *job, bool force, GError **errp)
{
    if (job_apply_verb(job, JOB_VERB_CANCEL, errp) < 0) {
        return;
    }
    job_cancel(job, force);
}

void job_complete(Job *job, GError **errp)
{
    if (job_apply_verb(job, JOB_VERB_COMPLETE, errp) < 0) {
        return;
    }
    if (job_cancel_requested(job) || !job->driver->complete) {
        error_setg(errp, "The active block job '%s' cannot be completed",
                   job->id ? job->id : "");
        return;
    }
    job->driver->complete(job, errp);
}

void job_finalize(Job *job, GError **errp)
{
    if (job_apply_verb(job, JOB_VERB_FINALIZE, errp) < 0) {
        return;
    }
    job_do_finalize(job);
}

void job_dismiss(Job **jobptr, GError **errp)
{
    Job *job = *jobptr;

    if (job_apply_verb(job, JOB_VERB_DISMISS, errp) < 0) {
        return;
    }
    job_do_dismiss(job);
    *jobptr = NULL;
}

/* ---- waiting ---- */

void job_wait_completed(Job *job)
{
    job_ref(job);
    if (in_coroutine()) {
        while (!job_is_completed(job)) {
            job_enter(job);
            co_queue_wait(&job->completion_waiters, NULL);
        }
    } else {
        while (!job_is_completed(job)) {
            job_enter(job);
            aio_poll(true);
        }
    }
    job_unref(job);
}

int job_cancel_sync(Job *job, bool force)
{
    int ret;

    job_ref(job);
    job_cancel(job, force);
    job_wait_completed(job);
    ret = (job_cancel_requested(job) && job->ret == 0) ? -ECANCELED
                                                       : job->ret;
    job_unref(job);
    return ret;
}

void job_cancel_sync_all(void)
{
    Job *job;

    /* Each round concludes (and, if it has auto-dismiss, removes) a job;
     * a concluded job left over is dismissed by the next job_cancel. */
    while ((job = job_next(NULL))) {
        JobStatus before = job->status;
        job_cancel_sync(job, true);
        if (job_next(NULL) == job && job->status == before) {
            /* Held up by something still in flight (an abort of its
             * transaction waiting elsewhere): let it progress. */
            aio_poll(true);
        }
    }
}
