/*
 * Generic background jobs: QEMU's job model (qapi/job.json).
 *
 * A job is a coroutine on the main loop plus a status from the JobStatus
 * state machine.  Which status may follow which, and which QMP verb is
 * allowed in which status, are two tables of data in job.c; one checker
 * (job_apply_verb) writes every refusal.
 *
 * Life of a job:
 *   job_create()            undefined -> created
 *   job_start()             created -> running; driver->run() in a coroutine
 *   run returns             (bottom half) running -> waiting: the job
 *                           waits for the other jobs of its transaction
 *   all jobs of the txn     waiting -> pending (BLOCK_JOB_PENDING); with
 *   have finished             auto-finalize, or on job-finalize:
 *                           prepare() of every job, then commit() (or, if
 *                           one failed, abort() of all), clean(), and
 *                           pending -> concluded (BLOCK_JOB_COMPLETED or
 *                           _CANCELLED)
 *   auto-dismiss or         concluded -> null; the job is gone
 *     job-dismiss
 * A failure (run or prepare returning < 0) or a cancel goes through
 * aborting instead and aborts every job of the transaction.
 *
 * Pausing is counted: a user pause (job-pause) and internal pauses
 * (drains of the nodes a block job uses) each add one; the job stops at
 * its next pause point (job_pause_point, job_sleep_ns, job_yield) while
 * the count is non-zero, showing paused (standby if it was ready).
 *
 * A driver embeds Job as its first member (or BlockJob, which embeds Job)
 * and provides a JobDriver table; see docs/jobs.md.
 */
#ifndef BLOCK_JOBS_JOB_H
#define BLOCK_JOBS_JOB_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "qapi/qapi-types.h"
#include "util/coroutine.h"

typedef struct Job Job;
typedef struct JobTxn JobTxn;

typedef struct JobDriver {
    size_t instance_size; /* of the driver's struct embedding Job */
    JobType job_type;

    /* The job's work, in its coroutine.  Call job_pause_point() (or
     * job_sleep_ns()/job_yield()) between steps and return early when
     * job_is_cancelled().  0 on success, -errno with *errp set on
     * failure. */
    int coroutine_fn (*run)(Job *job, GError **errp);

    /* At a pause point, before the job stops / after it goes on (e.g. to
     * quiesce workers).  Optional. */
    void coroutine_fn (*pause)(Job *job);
    void coroutine_fn (*resume)(Job *job);
    /* job-resume of a user-paused job (e.g. reset io-status).  Optional. */
    void (*user_resume)(Job *job);

    /* job-complete of a ready job (mirror, active commit).  NULL: the job
     * cannot be completed ("The active block job 'x' cannot be
     * completed"). */
    void (*complete)(Job *job, GError **errp);

    /* Cancel requested.  Returns the effective force (a job that can
     * stop softly, like mirror after ready, may turn force=false into a
     * normal completion).  NULL: every cancel is forced. */
    bool (*cancel)(Job *job, bool force);

    /*
     * Finalization, in the main loop, for all jobs of a transaction
     * together: prepare() may still fail (and then every job aborts);
     * after it exactly one of commit() and abort() runs, then clean().
     * All optional.
     */
    int (*prepare)(Job *job, GError **errp);
    void (*commit)(Job *job);
    void (*abort)(Job *job);
    void (*clean)(Job *job);

    /* While a drain waits: true if the job may still issue requests even
     * though it is not busy.  Optional (block jobs). */
    bool (*drained_poll)(Job *job);

    /* The last reference is going: free what the driver owns. */
    void (*free)(Job *job);
} JobDriver;

typedef enum JobCreateFlags {
    JOB_DEFAULT = 0,
    JOB_INTERNAL = 1 << 0,        /* no id, no events, not in queries */
    JOB_MANUAL_FINALIZE = 1 << 1, /* auto-finalize: false */
    JOB_MANUAL_DISMISS = 1 << 2,  /* auto-dismiss: false */
} JobCreateFlags;

/* Called once the job's result is final (before it concludes). */
typedef void JobCompletionFunc(void *opaque, int ret);

/* Hooks for a layer above Job (blockjob.c sends BLOCK_JOB_* events). */
typedef struct JobListener {
    void (*on_pending)(Job *job);
    void (*on_ready)(Job *job);
    /* at conclusion of a started job: cancelled or completed */
    void (*on_finalized)(Job *job, bool cancelled);
    /* the job stopped being busy (pause, sleep, end of run) */
    void (*on_idle)(Job *job);
    /* a user pause ends (job-resume, or a cancel of a paused job) */
    void (*on_user_resume)(Job *job);
    /* the last reference is going, after the driver's free */
    void (*on_free)(Job *job);
} JobListener;

struct Job {
    char *id; /* NULL for internal jobs */
    const JobDriver *driver;
    const JobListener *listener;
    JobStatus status;
    int refcnt;

    Coroutine *co;       /* non-NULL once started */
    CoSleep sleep;       /* the timer of job_sleep_ns */
    bool busy;           /* running (or about to), not waiting */
    bool paused;         /* stopped at a pause point */
    int pause_count;     /* user pause + internal pauses */
    bool user_paused;
    bool cancelled;      /* cancel requested */
    bool force_cancel;   /* ... and forced: the job's result is dropped */
    bool deferred_to_main_loop; /* run() returned */
    bool auto_finalize;
    bool auto_dismiss;

    int ret;     /* 0, or -errno once failed or cancelled */
    GError *err; /* the failure's message, when ret < 0 */

    int64_t progress_current;
    int64_t progress_total;

    JobCompletionFunc *cb;
    void *cb_opaque;

    JobTxn *txn;
    LIST_ENTRY(Job) txn_list;
    CoQueue completion_waiters; /* coroutines in job_wait_completed */
};

/* ---- creation ---- */

/*
 * Create a job of driver->instance_size bytes (zeroed, Job first) in
 * status created.  `txn` NULL: the job gets a transaction of its own;
 * otherwise it joins txn (job_txn_add_job).  The id must be well formed
 * (a letter, then letters, digits, '-', '.', '_') and unused.
 */
void *job_create(const char *job_id, const JobDriver *driver, JobTxn *txn,
                 int flags, JobCompletionFunc *cb, void *opaque,
                 GError **errp);
/* Drop a job that was created but cannot be started (its driver's setup
 * failed): created -> null, without prepare/abort/clean. */
void job_early_fail(Job *job);
/* Enter the coroutine: created -> running. */
void job_start(Job *job);

void job_ref(Job *job);
void job_unref(Job *job);

/* ---- transactions of jobs (grouped completion) ---- */

JobTxn *job_txn_new(void);
void job_txn_unref(JobTxn *txn);
/* Move a not yet started job into txn (for `transaction` with
 * completion-mode grouped). */
void job_txn_add_job(JobTxn *txn, Job *job);

/* ---- the registry ---- */

/* A job by id (internal jobs have none). */
Job *job_get(const char *id);
/* Iterate all jobs (internal ones too), newest first: NULL to start. */
Job *job_next(Job *job);
bool job_is_internal(const Job *job);
const char *job_type_str(const Job *job);

/* ---- the verbs, as QMP sees them ---- */

/* Refuse `verb` in the job's status: "Job 'x' in state 's' cannot
 * accept command verb 'v'".  0 if allowed, -EPERM with *errp set. */
int job_apply_verb(Job *job, JobVerb verb, GError **errp);

void job_user_pause(Job *job, GError **errp);
bool job_user_paused(const Job *job);
void job_user_resume(Job *job, GError **errp);
/* job-cancel (force true), block-job-cancel (force as given). */
void job_user_cancel(Job *job, bool force, GError **errp);
void job_complete(Job *job, GError **errp);
void job_finalize(Job *job, GError **errp);
/* Takes the job's reference: *jobptr is NULL afterwards. */
void job_dismiss(Job **jobptr, GError **errp);

/* ---- internal control (drains, transactions, shutdown) ---- */

void job_pause(Job *job);  /* one more pause; the job stops at its next
                            * pause point */
void job_resume(Job *job); /* one less */
void job_cancel(Job *job, bool force);
/* Cancel and wait until the job has concluded (it is dismissed if it
 * has auto-dismiss).  Returns its result (-ECANCELED if cancelled with
 * no other error).  Works in and outside coroutine context. */
int job_cancel_sync(Job *job, bool force);
/* Shutdown: force-cancel every job, wait for each, dismiss them all. */
void job_cancel_sync_all(void);
/* Wait (yielding or polling the loop) until the job has run to
 * completion (waiting, pending, aborting, concluded or null). */
void job_wait_completed(Job *job);

/* ---- state ---- */

bool job_is_cancelled(const Job *job);        /* forced cancel */
bool job_cancel_requested(const Job *job);
bool job_is_completed(const Job *job);        /* run() is over */
bool job_is_ready(const Job *job);            /* ready or standby */
bool job_started(const Job *job);
bool job_should_pause(const Job *job);

/* ---- for drivers, in the job's coroutine ---- */

/* Stop here while paused (the status shows paused/standby). */
void coroutine_fn job_pause_point(Job *job);
/* Sleep ns (woken early by cancel, pause, set-speed), then a pause
 * point.  Returns at once if cancelled. */
void coroutine_fn job_sleep_ns(Job *job, int64_t ns);
/* Wait until job_enter(), then a pause point. */
void coroutine_fn job_yield(Job *job);
/* Wake the job if it is waiting in job_yield/job_sleep_ns. */
void job_enter(Job *job);
/* running -> ready (BLOCK_JOB_READY); for jobs that need job-complete. */
void job_transition_to_ready(Job *job);

void job_progress_update(Job *job, uint64_t done);
void job_progress_set_remaining(Job *job, uint64_t remaining);
void job_progress_increase_remaining(Job *job, uint64_t delta);

/* The error string of a failed job (query-jobs' `error`), or NULL. */
const char *job_error_str(const Job *job);

#endif
