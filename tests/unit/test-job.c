/*
 * The job core with a test job type: the verb table in every status (and
 * the refusal text), the transitions and events of the auto and manual
 * finalize/dismiss paths, failures, pause/resume at pause points, cancel
 * while paused, ready/complete/standby, transactions (one failure aborts
 * all; success waits for all), block jobs (drain pauses them, set-speed,
 * error policies, events, which job uses a node), the rate limiter's
 * arithmetic and its effect on a job, and cancel-all at shutdown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "block/block_int.h"
#include "tests/unit/test-helpers.h"
#include "block/jobs/blockjob.h"
#include "block/jobs/job.h"
#include "qapi/qapi-commands.h"
#include "util/aio.h"
#include "util/error.h"
#include "util/ratelimit.h"

/* ---- events: recorded as "NAME id status" lines ---- */

static GPtrArray *events;

void qapi_event_emit(const char *name, JsonObject *data)
{
    GString *s = g_string_new(name);
    if (data) {
        const char *keys[] = { "id", "device", "status", "action",
                               "operation", "error" };
        for (size_t i = 0; i < G_N_ELEMENTS(keys); i++) {
            if (json_object_has_member(data, keys[i])) {
                g_string_append_printf(
                    s, " %s", json_object_get_string_member(data, keys[i]));
            }
        }
    }
    g_ptr_array_add(events, g_string_free(s, FALSE));
}

static void events_reset(void)
{
    if (events) {
        g_ptr_array_free(events, TRUE);
    }
    events = g_ptr_array_new_with_free_func(g_free);
}

/* Compare the recorded events with a NULL-terminated list, then forget
 * them. */
static void expect_events(const char *first, ...)
{
    va_list ap;
    GPtrArray *want = g_ptr_array_new();
    va_start(ap, first);
    for (const char *e = first; e; e = va_arg(ap, const char *)) {
        g_ptr_array_add(want, (char *)e);
    }
    va_end(ap);
    bool same = want->len == events->len;
    for (guint i = 0; same && i < want->len; i++) {
        same = !strcmp(want->pdata[i], events->pdata[i]);
    }
    if (!same) {
        for (guint i = 0; i < events->len; i++) {
            fprintf(stderr, "  got  %s\n", (char *)events->pdata[i]);
        }
        for (guint i = 0; i < want->len; i++) {
            fprintf(stderr, "  want %s\n", (char *)want->pdata[i]);
        }
        fail_msg("event sequence differs");
    }
    g_ptr_array_free(want, TRUE);
    events_reset();
}

/* ---- the test job ---- */

typedef struct TestJob {
    BlockJob b; /* plain jobs use only b.job */
    int steps;
    int fail_at;       /* step that fails with EIO (-1: none) */
    int64_t step_ns;   /* sleep per step (0: a bare pause point) */
    uint64_t step_bytes; /* rate-limited bytes per step (block jobs) */
    bool want_ready;   /* go ready after the steps, wait for complete */
    bool should_complete;
    int prepare_ret;
    int runs, prepares, commits, aborts, cleans, frees;
    BlockdevOnError on_error;
    int error_at;      /* step that meets an I/O error (policy applies) */
} TestJob;

static TestJob freed_copy; /* counters survive the job in a copy */

static int coroutine_fn test_run(Job *job, GError **errp)
{
    TestJob *t = (TestJob *)job;
    bool is_block = block_job_from_job(job) != NULL;

    t->runs++;
    job_progress_set_remaining(job, t->steps);
    for (int i = 0; i < t->steps; i++) {
        if (job_is_cancelled(job)) {
            return -ECANCELED;
        }
        if (i == t->fail_at) {
            error_setg(errp, "injected failure at step %d", i);
            return -EIO;
        }
        if (is_block && i == t->error_at) {
            BlockErrorAction a = block_job_error_action(&t->b, t->on_error,
                                                        false, ENOSPC);
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                return -ENOSPC;
            }
            /* stop: the job is paused now; the pause point below holds
             * it until resumed, then the step is retried. */
            t->error_at = -1;
        }
        if (is_block && t->step_bytes) {
            block_job_ratelimit_processed_bytes(&t->b, t->step_bytes);
            block_job_ratelimit_sleep(&t->b);
        }
        if (t->step_ns) {
            job_sleep_ns(job, t->step_ns);
        } else {
            job_pause_point(job);
        }
        job_progress_update(job, 1);
    }
    if (t->want_ready) {
        job_transition_to_ready(job);
        while (!t->should_complete && !job_is_cancelled(job)) {
            job_yield(job);
        }
    }
    return 0;
}

static void test_complete(Job *job, GError **errp)
{
    TestJob *t = (TestJob *)job;
    t->should_complete = true;
    job_enter(job);
}

static int test_prepare(Job *job, GError **errp)
{
    TestJob *t = (TestJob *)job;
    t->prepares++;
    if (t->prepare_ret < 0) {
        error_setg(errp, "prepare failed");
    }
    return t->prepare_ret;
}

static void test_commit(Job *job)
{
    ((TestJob *)job)->commits++;
}

static void test_abort(Job *job)
{
    ((TestJob *)job)->aborts++;
}

static void test_clean(Job *job)
{
    ((TestJob *)job)->cleans++;
}

static void tjob_free(Job *job)
{
    TestJob *t = (TestJob *)job;
    t->frees++;
    freed_copy = *t;
}

static const JobDriver test_job_driver = {
    .instance_size = sizeof(TestJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = test_run,
    .complete = test_complete,
    .prepare = test_prepare,
    .commit = test_commit,
    .abort = test_abort,
    .clean = test_clean,
    .free = tjob_free,
};

static const BlockJobDriver test_block_job_driver = {
    .job_driver = {
        .instance_size = sizeof(TestJob),
        .job_type = JOB_TYPE_BACKUP,
        .run = test_run,
        .complete = test_complete,
        .prepare = test_prepare,
        .commit = test_commit,
        .abort = test_abort,
        .clean = test_clean,
        .free = tjob_free,
    },
};

static TestJob *new_job(const char *id, JobTxn *txn, int flags, int steps)
{
    GError *err = NULL;
    TestJob *t = job_create(id, &test_job_driver, txn, flags, NULL, NULL,
                            &err);
    if (!t) {
        fail_msg("job_create: %s", err->message);
    }
    t->steps = steps;
    t->fail_at = -1;
    t->error_at = -1;
    return t;
}

/* Run the loop until cond holds (or fail after 10 s). */
#define WAIT_FOR(cond)                                                         \
    do {                                                                       \
        int64_t deadline_ = clock_ns() + 10 * 1000000000LL;                    \
        while (!(cond)) {                                                      \
            if (clock_ns() > deadline_) {                                      \
                fail_msg("timed out waiting for %s", #cond);                   \
            }                                                                  \
            aio_poll(true);                                                    \
        }                                                                      \
    } while (0)

/* Let the loop run whatever is ready now. */
static void settle(void)
{
    for (int i = 0; i < 50; i++) {
        aio_poll(false);
    }
}

/* ---- the verb table ---- */

static void test_verb_table(void **state)
{
    /* The table from QEMU's job model: verbs by status. */
    static const char *allowed[JOB_VERB__MAX] = {
        [JOB_VERB_CANCEL] = ("created running paused ready standby waiting "
                             "pending"),
        [JOB_VERB_PAUSE] = "created running paused ready standby",
        [JOB_VERB_RESUME] = "created running paused ready standby",
        [JOB_VERB_SET_SPEED] = "created running paused ready standby",
        [JOB_VERB_COMPLETE] = "ready standby",
        [JOB_VERB_FINALIZE] = "pending",
        [JOB_VERB_DISMISS] = "concluded",
    };
    events_reset();
    TestJob *t = new_job("tbl", NULL, JOB_DEFAULT, 1);
    Job *job = &t->b.job;
    JobStatus real = job->status;

    for (int v = 0; v < JOB_VERB__MAX; v++) {
        g_auto(GStrv) ok = g_strsplit(allowed[v], " ", -1);
        for (int s = 0; s < JOB_STATUS__MAX; s++) {
            GError *err = NULL;
            job->status = s;
            bool want = g_strv_contains((const char *const *)ok,
                                        JobStatus_str(s));
            int ret = job_apply_verb(job, v, &err);
            if (want) {
                assert_int_equal(ret, 0);
                assert_null(err);
            } else {
                assert_true(ret < 0);
                g_autofree char *msg = g_strdup_printf(
                    "Job 'tbl' in state '%s' cannot accept command verb "
                    "'%s'",
                    JobStatus_str(s), JobVerb_str(v));
                assert_string_equal(err->message, msg);
                assert_int_equal(err->code, ERROR_CLASS_GENERIC_ERROR);
                g_error_free(err);
            }
        }
    }
    job->status = real;
    /* Never started: a cancel concludes and removes it at once. */
    job_cancel(job, true);
    assert_null(job_get("tbl"));
    expect_events("JOB_STATUS_CHANGE tbl created",
                  "JOB_STATUS_CHANGE tbl aborting",
                  "JOB_STATUS_CHANGE tbl concluded",
                  "JOB_STATUS_CHANGE tbl null", NULL);
    assert_int_equal(freed_copy.runs, 0);
    assert_int_equal(freed_copy.aborts, 1);
}

static void test_create_errors(void **state)
{
    GError *err = NULL;
    events_reset();
    const char *bad[] = { "", "1x", "a b", "x/y", "_a" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        assert_null(job_create(bad[i], &test_job_driver, NULL, 0, NULL, NULL,
                               &err));
        g_autofree char *msg = g_strdup_printf("Invalid job ID '%s'", bad[i]);
        assert_string_equal(err->message, msg);
        g_clear_error(&err);
    }
    assert_null(job_create(NULL, &test_job_driver, NULL, 0, NULL, NULL,
                           &err));
    assert_string_equal(err->message, "An explicit job ID is required");
    g_clear_error(&err);
    assert_null(job_create("x", &test_job_driver, NULL, JOB_INTERNAL, NULL,
                           NULL, &err));
    assert_string_equal(err->message,
                        "Cannot specify job ID for internal job");
    g_clear_error(&err);

    TestJob *t = new_job("A-b.c_9", NULL, 0, 1);
    assert_null(job_create("A-b.c_9", &test_job_driver, NULL, 0, NULL, NULL,
                           &err));
    assert_string_equal(err->message, "Job ID 'A-b.c_9' already in use");
    g_clear_error(&err);
    job_early_fail(&t->b.job);
    assert_null(job_get("A-b.c_9"));
    expect_events("JOB_STATUS_CHANGE A-b.c_9 created",
                  "JOB_STATUS_CHANGE A-b.c_9 null", NULL);
    assert_int_equal(freed_copy.aborts, 0);
    assert_int_equal(freed_copy.cleans, 0);
}

/* ---- lifecycles ---- */

static void test_auto_lifecycle(void **state)
{
    events_reset();
    TestJob *t = new_job("j", NULL, JOB_DEFAULT, 3);
    job_start(&t->b.job);
    assert_int_equal(t->b.job.status, JOB_STATUS_RUNNING);
    WAIT_FOR(job_get("j") == NULL);
    expect_events("JOB_STATUS_CHANGE j created", "JOB_STATUS_CHANGE j running",
                  "JOB_STATUS_CHANGE j waiting", "JOB_STATUS_CHANGE j pending",
                  "JOB_STATUS_CHANGE j concluded", "JOB_STATUS_CHANGE j null",
                  NULL);
    assert_int_equal(freed_copy.runs, 1);
    assert_int_equal(freed_copy.prepares, 1);
    assert_int_equal(freed_copy.commits, 1);
    assert_int_equal(freed_copy.aborts, 0);
    assert_int_equal(freed_copy.cleans, 1);
    assert_int_equal(freed_copy.b.job.progress_current, 3);
    assert_int_equal(freed_copy.b.job.progress_total, 3);
}

static void test_manual_finalize_dismiss(void **state)
{
    GError *err = NULL;
    events_reset();
    TestJob *t = new_job("m", NULL, JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS,
                         2);
    Job *job = &t->b.job;
    job_start(job);
    WAIT_FOR(job->status == JOB_STATUS_PENDING);
    settle();
    assert_int_equal(job->status, JOB_STATUS_PENDING);
    assert_int_equal(t->prepares, 0);

    /* pending: only finalize and cancel */
    job_user_pause(job, &err);
    assert_string_equal(err->message, "Job 'm' in state 'pending' cannot "
                                      "accept command verb 'pause'");
    g_clear_error(&err);
    job_dismiss(&job, &err);
    assert_non_null(err);
    g_clear_error(&err);
    job_complete(job, &err);
    assert_non_null(err);
    g_clear_error(&err);

    job_finalize(job, &err);
    assert_null(err);
    assert_int_equal(job->status, JOB_STATUS_CONCLUDED);
    assert_int_equal(t->commits, 1);
    job_finalize(job, &err);
    assert_string_equal(err->message, "Job 'm' in state 'concluded' cannot "
                                      "accept command verb 'finalize'");
    g_clear_error(&err);
    job_user_resume(job, &err);
    assert_string_equal(err->message,
                        "Can't resume a job that was not paused");
    g_clear_error(&err);

    job_dismiss(&job, &err);
    assert_null(err);
    assert_null(job);
    assert_null(job_get("m"));
    expect_events("JOB_STATUS_CHANGE m created", "JOB_STATUS_CHANGE m running",
                  "JOB_STATUS_CHANGE m waiting", "JOB_STATUS_CHANGE m pending",
                  "JOB_STATUS_CHANGE m concluded", "JOB_STATUS_CHANGE m null",
                  NULL);
}

static void test_failure(void **state)
{
    GError *err = NULL;
    events_reset();
    TestJob *t = new_job("f", NULL, JOB_MANUAL_DISMISS, 5);
    t->fail_at = 2;
    Job *job = &t->b.job;
    job_start(job);
    WAIT_FOR(job->status == JOB_STATUS_CONCLUDED);
    assert_int_equal(job->ret, -EIO);
    assert_string_equal(job_error_str(job), "injected failure at step 2");
    assert_int_equal(t->prepares, 0);
    assert_int_equal(t->aborts, 1);
    assert_int_equal(t->commits, 0);
    assert_int_equal(t->cleans, 1);
    assert_int_equal(job->progress_current, 2);

    JobInfoList *l = qmp_query_jobs(&err);
    assert_non_null(l);
    assert_string_equal(l->value->id, "f");
    assert_true(l->value->has_error);
    assert_string_equal(l->value->error, "injected failure at step 2");
    assert_null(l->next);
    qapi_free_JobInfoList(l);

    job_dismiss(&job, &err);
    assert_null(err);
    expect_events("JOB_STATUS_CHANGE f created", "JOB_STATUS_CHANGE f running",
                  "JOB_STATUS_CHANGE f aborting",
                  "JOB_STATUS_CHANGE f concluded", "JOB_STATUS_CHANGE f null",
                  NULL);
}

static void test_prepare_failure(void **state)
{
    events_reset();
    TestJob *t = new_job("p", NULL, JOB_DEFAULT, 1);
    t->prepare_ret = -EINVAL;
    job_start(&t->b.job);
    WAIT_FOR(job_get("p") == NULL);
    assert_int_equal(freed_copy.prepares, 1);
    assert_int_equal(freed_copy.commits, 0);
    assert_int_equal(freed_copy.aborts, 1);
    expect_events("JOB_STATUS_CHANGE p created", "JOB_STATUS_CHANGE p running",
                  "JOB_STATUS_CHANGE p waiting", "JOB_STATUS_CHANGE p pending",
                  "JOB_STATUS_CHANGE p aborting",
                  "JOB_STATUS_CHANGE p concluded", "JOB_STATUS_CHANGE p null",
                  NULL);
}

/* ---- pause, resume, cancel ---- */

static void test_pause_resume_cancel(void **state)
{
    GError *err = NULL;
    events_reset();
    TestJob *t = new_job("pp", NULL, JOB_MANUAL_DISMISS, 1000000);
    t->step_ns = 1000 * 1000; /* 1 ms per step */
    Job *job = &t->b.job;
    job_start(job);
    WAIT_FOR(job->progress_current >= 2);

    job_user_pause(job, &err);
    assert_null(err);
    job_user_pause(job, &err);
    assert_string_equal(err->message, "Job is already paused");
    g_clear_error(&err);
    WAIT_FOR(job->status == JOB_STATUS_PAUSED);
    assert_true(job->paused);
    assert_false(job->busy);
    int64_t at = job->progress_current;
    settle();
    assert_int_equal(job->progress_current, at);

    /* An internal pause on top: resume by the user does not run it. */
    job_pause(job);
    job_user_resume(job, &err);
    assert_null(err);
    settle();
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    assert_int_equal(job->progress_current, at);
    job_resume(job);
    WAIT_FOR(job->status == JOB_STATUS_RUNNING &&
             job->progress_current > at);

    /* Cancel while paused: the job wakes, sees it and aborts. */
    job_user_pause(job, &err);
    assert_null(err);
    WAIT_FOR(job->status == JOB_STATUS_PAUSED);
    job_user_cancel(job, true, &err);
    assert_null(err);
    WAIT_FOR(job->status == JOB_STATUS_CONCLUDED);
    assert_int_equal(job->ret, -ECANCELED);
    assert_string_equal(job_error_str(job), g_strerror(ECANCELED));
    assert_int_equal(t->aborts, 1);
    job_dismiss(&job, &err);
    assert_null(err);
    expect_events("JOB_STATUS_CHANGE pp created",
                  "JOB_STATUS_CHANGE pp running",
                  "JOB_STATUS_CHANGE pp paused",
                  "JOB_STATUS_CHANGE pp running",
                  "JOB_STATUS_CHANGE pp paused",
                  "JOB_STATUS_CHANGE pp running",
                  "JOB_STATUS_CHANGE pp aborting",
                  "JOB_STATUS_CHANGE pp concluded",
                  "JOB_STATUS_CHANGE pp null", NULL);
}

static void test_pause_before_start(void **state)
{
    GError *err = NULL;
    events_reset();
    TestJob *t = new_job("ps", NULL, JOB_DEFAULT, 2);
    Job *job = &t->b.job;
    job_user_pause(job, &err); /* allowed in created */
    assert_null(err);
    job_start(job);
    WAIT_FOR(job->status == JOB_STATUS_PAUSED);
    assert_int_equal(t->runs, 0); /* stopped at the first pause point */
    job_user_resume(job, &err);
    assert_null(err);
    WAIT_FOR(job_get("ps") == NULL);
    assert_int_equal(freed_copy.commits, 1);
    expect_events("JOB_STATUS_CHANGE ps created",
                  "JOB_STATUS_CHANGE ps running",
                  "JOB_STATUS_CHANGE ps paused",
                  "JOB_STATUS_CHANGE ps running",
                  "JOB_STATUS_CHANGE ps waiting",
                  "JOB_STATUS_CHANGE ps pending",
                  "JOB_STATUS_CHANGE ps concluded",
                  "JOB_STATUS_CHANGE ps null", NULL);
}

static void test_ready_complete(void **state)
{
    GError *err = NULL;
    events_reset();
    TestJob *t = new_job("r", NULL, JOB_DEFAULT, 1);
    t->want_ready = true;
    Job *job = &t->b.job;
    job_complete(job, &err); /* created */
    assert_non_null(err);
    g_clear_error(&err);
    job_start(job);
    WAIT_FOR(job->status == JOB_STATUS_READY);
    settle();
    assert_int_equal(job->status, JOB_STATUS_READY);
    assert_true(job_is_ready(job));

    job_user_pause(job, &err);
    assert_null(err);
    WAIT_FOR(job->status == JOB_STATUS_STANDBY);
    /* complete is accepted in standby; the job finishes once resumed */
    job_complete(job, &err);
    assert_null(err);
    settle();
    assert_int_equal(job->status, JOB_STATUS_STANDBY);
    job_user_resume(job, &err);
    assert_null(err);
    WAIT_FOR(job_get("r") == NULL);
    assert_int_equal(freed_copy.commits, 1);
    expect_events("JOB_STATUS_CHANGE r created", "JOB_STATUS_CHANGE r running",
                  "JOB_STATUS_CHANGE r ready", "JOB_STATUS_CHANGE r standby",
                  "JOB_STATUS_CHANGE r ready", "JOB_STATUS_CHANGE r waiting",
                  "JOB_STATUS_CHANGE r pending",
                  "JOB_STATUS_CHANGE r concluded", "JOB_STATUS_CHANGE r null",
                  NULL);

    /* a job without .complete cannot be completed */
    static const JobDriver no_complete = {
        .instance_size = sizeof(TestJob),
        .job_type = JOB_TYPE_MIRROR,
        .run = test_run,
        .free = tjob_free,
    };
    TestJob *n = job_create("nc", &no_complete, NULL, 0, NULL, NULL, &err);
    assert_non_null(n);
    n->steps = 0;
    n->fail_at = n->error_at = -1;
    n->want_ready = true;
    job_start(&n->b.job);
    WAIT_FOR(n->b.job.status == JOB_STATUS_READY);
    job_complete(&n->b.job, &err);
    assert_string_equal(err->message,
                        "The active block job 'nc' cannot be completed");
    g_clear_error(&err);
    job_user_cancel(&n->b.job, true, &err);
    assert_null(err);
    WAIT_FOR(job_get("nc") == NULL);
    events_reset();
}

/* ---- transactions ---- */

static void test_txn_abort(void **state)
{
    events_reset();
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("ta", txn, JOB_MANUAL_DISMISS, 1000000);
    a->step_ns = 1000 * 1000;
    TestJob *b = new_job("tb", txn, JOB_MANUAL_DISMISS, 3);
    b->fail_at = 1;
    job_txn_unref(txn);
    job_start(&a->b.job);
    job_start(&b->b.job);
    WAIT_FOR(a->b.job.status == JOB_STATUS_CONCLUDED &&
             b->b.job.status == JOB_STATUS_CONCLUDED);
    assert_int_equal(a->aborts, 1);
    assert_int_equal(b->aborts, 1);
    assert_int_equal(a->commits + b->commits, 0);
    assert_int_equal(a->prepares + b->prepares, 0);
    assert_int_equal(a->b.job.ret, -ECANCELED);
    assert_int_equal(b->b.job.ret, -EIO);

    GError *err = NULL;
    Job *j = &a->b.job;
    job_dismiss(&j, &err);
    assert_null(err);
    j = &b->b.job;
    job_dismiss(&j, &err);
    assert_null(err);
    events_reset();
}

static void test_txn_success_waits(void **state)
{
    events_reset();
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("sa", txn, JOB_DEFAULT, 1);
    TestJob *b = new_job("sb", txn, JOB_DEFAULT, 30);
    b->step_ns = 1000 * 1000;
    job_txn_unref(txn);
    job_start(&a->b.job);
    job_start(&b->b.job);
    WAIT_FOR(a->b.job.status == JOB_STATUS_WAITING);
    settle();
    /* a waits for b */
    assert_int_equal(a->b.job.status, JOB_STATUS_WAITING);
    assert_int_equal(a->prepares, 0);
    WAIT_FOR(job_get("sa") == NULL && job_get("sb") == NULL);
    /* both went to pending before either concluded */
    int pend_a = -1, pend_b = -1, conc_a = -1, conc_b = -1;
    for (guint i = 0; i < events->len; i++) {
        const char *e = events->pdata[i];
        if (!strcmp(e, "JOB_STATUS_CHANGE sa pending")) pend_a = i;
        if (!strcmp(e, "JOB_STATUS_CHANGE sb pending")) pend_b = i;
        if (!strcmp(e, "JOB_STATUS_CHANGE sa concluded")) conc_a = i;
        if (!strcmp(e, "JOB_STATUS_CHANGE sb concluded")) conc_b = i;
    }
    assert_true(pend_a >= 0 && pend_b >= 0 && conc_a >= 0 && conc_b >= 0);
    assert_true(pend_a < conc_a && pend_a < conc_b);
    assert_true(pend_b < conc_a && pend_b < conc_b);
    events_reset();
}

static void test_txn_manual_finalize_cancel(void **state)
{
    GError *err = NULL;
    events_reset();
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("ma", txn, JOB_MANUAL_FINALIZE, 1);
    TestJob *b = new_job("mb", txn, JOB_DEFAULT, 1);
    job_txn_unref(txn);
    job_start(&a->b.job);
    job_start(&b->b.job);
    /* one job with manual finalize holds the whole transaction */
    WAIT_FOR(a->b.job.status == JOB_STATUS_PENDING &&
             b->b.job.status == JOB_STATUS_PENDING);
    settle();
    assert_int_equal(b->b.job.status, JOB_STATUS_PENDING);
    /* cancel (forced) in pending aborts both */
    job_user_cancel(&b->b.job, true, &err);
    assert_null(err);
    assert_null(job_get("ma"));
    assert_null(job_get("mb"));
    events_reset();
}

typedef struct CancelCo {
    Job *job;
    GError *err;
} CancelCo;

static void coroutine_fn cancel_co(void *opaque)
{
    CancelCo *cc = opaque;
    job_user_cancel(cc->job, true, &cc->err);
}

/* A QMP command (a coroutine) cancels a waiting job whose partner still
 * runs: the abort waits for the partner by yielding, not by polling. */
static void test_txn_cancel_from_coroutine(void **state)
{
    events_reset();
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("wa", txn, JOB_DEFAULT, 1);
    TestJob *b = new_job("wb", txn, JOB_DEFAULT, 1000000);
    b->step_ns = 1000 * 1000;
    job_txn_unref(txn);
    job_start(&a->b.job);
    job_start(&b->b.job);
    WAIT_FOR(a->b.job.status == JOB_STATUS_WAITING);
    CancelCo cc = { .job = &a->b.job };
    coroutine_run_sync(cancel_co, &cc);
    assert_null(cc.err);
    assert_null(job_get("wa"));
    assert_null(job_get("wb"));
    /* both aborted, in transaction order (newest first, as QEMU): the
     * running one is waited for and finalized before the waiting one */
    expect_events("JOB_STATUS_CHANGE wa created",
                  "JOB_STATUS_CHANGE wb created",
                  "JOB_STATUS_CHANGE wa running",
                  "JOB_STATUS_CHANGE wb running",
                  "JOB_STATUS_CHANGE wa waiting",
                  "JOB_STATUS_CHANGE wb aborting",
                  "JOB_STATUS_CHANGE wb concluded",
                  "JOB_STATUS_CHANGE wb null",
                  "JOB_STATUS_CHANGE wa aborting",
                  "JOB_STATUS_CHANGE wa concluded",
                  "JOB_STATUS_CHANGE wa null", NULL);
}

/* ---- block jobs ---- */

static TestJob *new_block_job(const char *id, BlockDriverState *bs,
                              int flags, int steps, int64_t speed)
{
    GError *err = NULL;
    TestJob *t = block_job_create(id, &test_block_job_driver, NULL, bs,
                                  BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                  speed, flags, NULL, NULL, &err);
    if (!t) {
        fail_msg("block_job_create: %s", err->message);
    }
    t->steps = steps;
    t->fail_at = -1;
    t->error_at = -1;
    return t;
}

static void test_block_job(void **state)
{
    GError *err = NULL;
    events_reset();
    BlockDriverState *bs =
        test_open_node("driver=null-co,node-name=n0,size=1048576");
    BlockDriverState *other = test_open_node("driver=null-co,node-name=n1");

    assert_null(block_job_create("bj", &test_block_job_driver, NULL, bs, 0,
                                 BLK_PERM_ALL, -1, 0, NULL, NULL, &err));
    assert_string_equal(err->message,
                        "Parameter 'speed' expects a non-negative value");
    g_clear_error(&err);

    TestJob *t = new_block_job("bj", bs, JOB_MANUAL_FINALIZE, 1000000, 0);
    t->step_ns = 1000 * 1000;
    BlockJob *bjob = &t->b;
    assert_ptr_equal(block_job_find_by_node(bs), bjob);
    assert_null(block_job_find_by_node(other));
    assert_int_equal(block_job_add_bdrv(bjob, "other", other, 0, BLK_PERM_ALL,
                                        &err), 0);
    assert_ptr_equal(block_job_find_by_node(other), bjob);
    assert_ptr_equal(block_job_get("bj"), bjob);
    /* the job's nodes refuse blockdev-del: the main node has the job's
     * BlockBackend, the other one the job's blocker */
    GError *del_err = NULL;
    assert_true(test_blockdev_del(bs, &del_err) < 0);
    assert_string_equal(del_err->message, "Node n0 is in use");
    g_clear_error(&del_err);
    assert_true(test_blockdev_del(other, &del_err) < 0);
    assert_string_equal(del_err->message,
                        "Node 'n1' is busy: block device is in use by block "
                        "job: backup");
    g_clear_error(&del_err);
    job_start(&bjob->job);
    WAIT_FOR(bjob->job.progress_current >= 2);

    /* draining a node the job involves pauses it */
    bdrv_drained_begin(other);
    assert_int_equal(bjob->job.status, JOB_STATUS_PAUSED);
    assert_false(bjob->job.busy);
    BlockJobInfoList *l = qmp_query_block_jobs(&err);
    assert_non_null(l);
    assert_string_equal(l->value->device, "bj");
    assert_string_equal(l->value->type, "backup");
    assert_true(l->value->paused);
    assert_int_equal(l->value->status, JOB_STATUS_PAUSED);
    assert_int_equal(l->value->io_status, BLOCK_DEVICE_IO_STATUS_OK);
    assert_false(l->value->auto_finalize);
    assert_true(l->value->auto_dismiss);
    qapi_free_BlockJobInfoList(l);
    bdrv_drained_end(other);
    WAIT_FOR(bjob->job.status == JOB_STATUS_RUNNING);

    /* set-speed */
    assert_false(block_job_set_speed(bjob, -5, &err));
    assert_string_equal(err->message,
                        "Parameter 'speed' expects a non-negative value");
    g_clear_error(&err);
    assert_true(block_job_set_speed(bjob, 12345, &err));
    assert_int_equal(bjob->speed, 12345);

    /* block-job-cancel of a user-paused job needs force */
    q_obj_block_job_pause_arg pa = { .device = (char *)"bj" };
    qmp_block_job_pause(&pa, &err);
    assert_null(err);
    WAIT_FOR(bjob->job.status == JOB_STATUS_PAUSED);
    q_obj_block_job_cancel_arg ca = { .device = (char *)"bj" };
    qmp_block_job_cancel(&ca, &err);
    assert_string_equal(err->message,
                        "The block job for device 'bj' is currently paused");
    g_clear_error(&err);
    q_obj_block_job_cancel_arg unknown = { .device = (char *)"zz" };
    qmp_block_job_cancel(&unknown, &err);
    assert_string_equal(err->message, "Block job 'zz' not found");
    assert_int_equal(err->code, ERROR_CLASS_DEVICE_NOT_ACTIVE);
    g_clear_error(&err);
    ca.has_force = ca.force = true;
    qmp_block_job_cancel(&ca, &err);
    assert_null(err);
    WAIT_FOR(job_get("bj") == NULL);
    assert_int_equal(freed_copy.aborts, 1);
    /* the nodes are free again */
    assert_null(block_job_find_by_node(bs));
    assert_null(block_job_find_by_node(other));
    expect_events("JOB_STATUS_CHANGE bj created",
                  "JOB_STATUS_CHANGE bj running",
                  "JOB_STATUS_CHANGE bj paused",
                  "JOB_STATUS_CHANGE bj running",
                  "JOB_STATUS_CHANGE bj paused",
                  "JOB_STATUS_CHANGE bj running",
                  "JOB_STATUS_CHANGE bj aborting",
                  "BLOCK_JOB_CANCELLED bj",
                  "JOB_STATUS_CHANGE bj concluded",
                  "JOB_STATUS_CHANGE bj null", NULL);

    /* completion events; manual finalize sends BLOCK_JOB_PENDING */
    t = new_block_job("bk", bs, JOB_MANUAL_FINALIZE, 2, 0);
    job_start(&t->b.job);
    WAIT_FOR(t->b.job.status == JOB_STATUS_PENDING);
    q_obj_block_job_finalize_arg fa = { .id = (char *)"bk" };
    qmp_block_job_finalize(&fa, &err);
    assert_null(err);
    assert_null(job_get("bk"));
    expect_events("JOB_STATUS_CHANGE bk created",
                  "JOB_STATUS_CHANGE bk running",
                  "JOB_STATUS_CHANGE bk waiting",
                  "JOB_STATUS_CHANGE bk pending", "BLOCK_JOB_PENDING bk",
                  "BLOCK_JOB_COMPLETED bk", "JOB_STATUS_CHANGE bk concluded",
                  "JOB_STATUS_CHANGE bk null", NULL);

    bdrv_unref(bs);
    bdrv_unref(other);
}

/* Block jobs: BLOCK_JOB_READY, and a group with manual finalize sends
 * BLOCK_JOB_PENDING for each and finalizes both on one job-finalize. */
static void test_block_job_ready_group(void **state)
{
    GError *err = NULL;
    events_reset();
    BlockDriverState *bs = test_open_node("driver=null-co,node-name=g0");
    JobTxn *txn = job_txn_new();
    TestJob *a = block_job_create("ga", &test_block_job_driver, txn, bs, 0,
                                  BLK_PERM_ALL, 0, JOB_MANUAL_FINALIZE, NULL,
                                  NULL, &err);
    TestJob *b = block_job_create("gb", &test_block_job_driver, txn, bs, 0,
                                  BLK_PERM_ALL, 0, JOB_MANUAL_FINALIZE, NULL,
                                  NULL, &err);
    assert_non_null(a);
    assert_non_null(b);
    job_txn_unref(txn);
    a->steps = 1;
    b->steps = 2;
    a->fail_at = b->fail_at = a->error_at = b->error_at = -1;
    b->want_ready = true;
    job_start(&a->b.job);
    job_start(&b->b.job);
    WAIT_FOR(b->b.job.status == JOB_STATUS_READY &&
             a->b.job.status == JOB_STATUS_WAITING);
    q_obj_block_job_complete_arg ca = { .device = (char *)"gb" };
    qmp_block_job_complete(&ca, &err);
    assert_null(err);
    WAIT_FOR(b->b.job.status == JOB_STATUS_PENDING);
    assert_int_equal(a->b.job.status, JOB_STATUS_PENDING);
    q_obj_job_finalize_arg fa = { .id = (char *)"gb" };
    qmp_job_finalize(&fa, &err);
    assert_null(err);
    assert_null(job_get("ga"));
    assert_null(job_get("gb"));
    /* (ga's waiting may come before or after gb's ready) */
    for (guint i = 0; i < events->len; i++) {
        if (!strcmp(events->pdata[i], "JOB_STATUS_CHANGE ga waiting")) {
            g_ptr_array_remove_index(events, i);
            break;
        }
    }
    expect_events("JOB_STATUS_CHANGE ga created",
                  "JOB_STATUS_CHANGE gb created",
                  "JOB_STATUS_CHANGE ga running",
                  "JOB_STATUS_CHANGE gb running",
                  "JOB_STATUS_CHANGE gb ready", "BLOCK_JOB_READY gb",
                  "JOB_STATUS_CHANGE gb waiting",
                  /* newest first, as QEMU */
                  "JOB_STATUS_CHANGE gb pending", "BLOCK_JOB_PENDING gb",
                  "JOB_STATUS_CHANGE ga pending", "BLOCK_JOB_PENDING ga",
                  "BLOCK_JOB_COMPLETED gb", "JOB_STATUS_CHANGE gb concluded",
                  "JOB_STATUS_CHANGE gb null",
                  "BLOCK_JOB_COMPLETED ga", "JOB_STATUS_CHANGE ga concluded",
                  "JOB_STATUS_CHANGE ga null", NULL);
    bdrv_unref(bs);
}

static void test_block_job_errors(void **state)
{
    GError *err = NULL;
    events_reset();
    BlockDriverState *bs = test_open_node("driver=null-co,node-name=e0");

    /* stop: the job pauses with io-status nospace until resumed */
    TestJob *t = new_block_job("es", bs, JOB_DEFAULT, 4, 0);
    t->error_at = 1;
    t->on_error = BLOCKDEV_ON_ERROR_STOP;
    job_start(&t->b.job);
    WAIT_FOR(t->b.job.status == JOB_STATUS_PAUSED);
    assert_int_equal(t->b.iostatus, BLOCK_DEVICE_IO_STATUS_NOSPACE);
    assert_true(job_user_paused(&t->b.job));
    job_user_resume(&t->b.job, &err);
    assert_null(err);
    assert_int_equal(t->b.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    WAIT_FOR(job_get("es") == NULL);
    assert_int_equal(freed_copy.commits, 1);
    expect_events("JOB_STATUS_CHANGE es created",
                  "JOB_STATUS_CHANGE es running",
                  "BLOCK_JOB_ERROR es stop write",
                  "JOB_STATUS_CHANGE es paused",
                  "JOB_STATUS_CHANGE es running",
                  "JOB_STATUS_CHANGE es waiting",
                  "JOB_STATUS_CHANGE es pending", "BLOCK_JOB_COMPLETED es",
                  "JOB_STATUS_CHANGE es concluded",
                  "JOB_STATUS_CHANGE es null", NULL);

    /* report: the job fails with the error in BLOCK_JOB_COMPLETED */
    t = new_block_job("er", bs, JOB_DEFAULT, 4, 0);
    t->error_at = 1;
    t->on_error = BLOCKDEV_ON_ERROR_REPORT;
    job_start(&t->b.job);
    WAIT_FOR(job_get("er") == NULL);
    assert_int_equal(freed_copy.aborts, 1);
    expect_events("JOB_STATUS_CHANGE er created",
                  "JOB_STATUS_CHANGE er running",
                  "BLOCK_JOB_ERROR er report write",
                  "JOB_STATUS_CHANGE er aborting",
                  "BLOCK_JOB_COMPLETED er No space left on device",
                  "JOB_STATUS_CHANGE er concluded",
                  "JOB_STATUS_CHANGE er null", NULL);

    /* enospc stops on ENOSPC; other errors are reported */
    TestJob *x = new_block_job("ex", bs, JOB_DEFAULT, 1, 0);
    assert_int_equal(block_job_error_action(&x->b, BLOCKDEV_ON_ERROR_ENOSPC,
                                            true, EIO),
                     BLOCK_ERROR_ACTION_REPORT);
    assert_int_equal(block_job_error_action(&x->b, BLOCKDEV_ON_ERROR_IGNORE,
                                            true, EIO),
                     BLOCK_ERROR_ACTION_IGNORE);
    assert_int_equal(x->b.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    assert_int_equal(block_job_error_action(&x->b, BLOCKDEV_ON_ERROR_ENOSPC,
                                            true, ENOSPC),
                     BLOCK_ERROR_ACTION_STOP);
    assert_int_equal(x->b.iostatus, BLOCK_DEVICE_IO_STATUS_NOSPACE);
    assert_int_equal(block_job_error_action(&x->b, BLOCKDEV_ON_ERROR_STOP,
                                            true, EIO),
                     BLOCK_ERROR_ACTION_STOP);
    /* the first error stays */
    assert_int_equal(x->b.iostatus, BLOCK_DEVICE_IO_STATUS_NOSPACE);
    job_cancel(&x->b.job, true);
    assert_null(job_get("ex"));
    events_reset();
    bdrv_unref(bs);
}

/* ---- rate limiting ---- */

static void test_ratelimit_math(void **state)
{
    RateLimit rl;
    const int64_t s = 1000000000LL;
    ratelimit_init(&rl);
    ratelimit_account(&rl, 1 << 30, 1);
    assert_int_equal(ratelimit_delay(&rl, 1), 0); /* unlimited */

    ratelimit_set_speed(&rl, 1000000, s / 10); /* 1 MB/s, 100 ms slice */
    int64_t t = 5 * s;
    ratelimit_account(&rl, 100000, t); /* within the slice: no wait */
    assert_int_equal(ratelimit_delay(&rl, t), 0);
    ratelimit_account(&rl, 1000000, t); /* 1.1 MB owed, 0.1 MB free */
    assert_int_equal(ratelimit_delay(&rl, t), s);
    /* half a second later, half of it is paid */
    assert_int_equal(ratelimit_delay(&rl, t + s / 2), s / 2);
    assert_int_equal(ratelimit_delay(&rl, t + s), 0);
    /* a long idle time does not bank credit beyond the slice */
    ratelimit_account(&rl, 2100000, t + 100 * s);
    assert_int_equal(ratelimit_delay(&rl, t + 100 * s), 2 * s);

    /* huge speeds and sizes do not overflow */
    ratelimit_set_speed(&rl, INT64_MAX, s / 10);
    ratelimit_account(&rl, UINT64_MAX / 2, t + 200 * s);
    assert_true(ratelimit_delay(&rl, t + 200 * s) >= 0);
    ratelimit_set_speed(&rl, 1, s / 10);
    ratelimit_account(&rl, UINT64_MAX, t + 300 * s);
    assert_int_equal(ratelimit_delay(&rl, t + 300 * s), INT64_MAX);
    ratelimit_set_speed(&rl, 0, s / 10);
    assert_int_equal(ratelimit_delay(&rl, t + 300 * s), 0);
}

static void test_ratelimit_job(void **state)
{
    events_reset();
    BlockDriverState *bs = test_open_node("driver=null-co,node-name=r0");
    /* 20 steps of 64 KiB at 4 MiB/s: 1.25 MiB, less the 0.4 MiB slice
     * allowance -> about 0.2 s */
    TestJob *t = new_block_job("rl", bs, JOB_DEFAULT, 20, 4 << 20);
    t->step_bytes = 64 << 10;
    int64_t start = clock_ns();
    job_start(&t->b.job);
    WAIT_FOR(job_get("rl") == NULL);
    int64_t took = clock_ns() - start;
    assert_true(took >= 180 * 1000 * 1000LL);
    assert_true(took < 2000 * 1000 * 1000LL);

    /* raising the speed wakes a sleeping job at once */
    t = new_block_job("rl2", bs, JOB_DEFAULT, 3, 1024);
    t->step_bytes = 1 << 20; /* ~1000 s at 1 KiB/s */
    job_start(&t->b.job);
    WAIT_FOR(t->b.job.sleep.timer_id != 0);
    start = clock_ns();
    GError *err = NULL;
    assert_true(block_job_set_speed(&t->b, 0, &err));
    WAIT_FOR(job_get("rl2") == NULL);
    assert_true(clock_ns() - start < 1000 * 1000 * 1000LL);
    events_reset();
    bdrv_unref(bs);
}

/* ---- shutdown ---- */

static void test_cancel_sync_all(void **state)
{
    events_reset();
    TestJob *a = new_job("c1", NULL, JOB_MANUAL_DISMISS, 1000000);
    a->step_ns = 1000 * 1000;
    TestJob *b = new_job("c2", NULL, JOB_MANUAL_FINALIZE, 1);
    TestJob *c = new_job("c3", NULL, JOB_DEFAULT, 1000000); /* not started */
    (void)c;
    TestJob *d = new_job("c4", NULL, JOB_MANUAL_DISMISS, 1);
    GError *err = NULL;
    job_start(&a->b.job);
    job_start(&b->b.job);
    job_start(&d->b.job);
    job_user_pause(&a->b.job, &err);
    assert_null(err);
    WAIT_FOR(b->b.job.status == JOB_STATUS_PENDING &&
             d->b.job.status == JOB_STATUS_CONCLUDED &&
             a->b.job.status == JOB_STATUS_PAUSED);
    job_cancel_sync_all();
    assert_null(job_next(NULL));
    events_reset();
}

int main(void)
{
    test_aio_init();
    events_reset();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verb_table),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_auto_lifecycle),
        cmocka_unit_test(test_manual_finalize_dismiss),
        cmocka_unit_test(test_failure),
        cmocka_unit_test(test_prepare_failure),
        cmocka_unit_test(test_pause_resume_cancel),
        cmocka_unit_test(test_pause_before_start),
        cmocka_unit_test(test_ready_complete),
        cmocka_unit_test(test_txn_abort),
        cmocka_unit_test(test_txn_success_waits),
        cmocka_unit_test(test_txn_manual_finalize_cancel),
        cmocka_unit_test(test_txn_cancel_from_coroutine),
        cmocka_unit_test(test_block_job_ready_group),
        cmocka_unit_test(test_block_job),
        cmocka_unit_test(test_block_job_errors),
        cmocka_unit_test(test_ratelimit_math),
        cmocka_unit_test(test_ratelimit_job),
        cmocka_unit_test(test_cancel_sync_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
