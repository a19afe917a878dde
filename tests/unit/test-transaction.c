/*
 * Unit tests for util/transaction.c: commit runs in registration order,
 * abort in reverse, clean after either, and the transaction is freed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <glib.h>

#include "util/transaction.h"

typedef struct Trace {
    GString *s;
} Trace;

typedef struct Action {
    Trace *trace;
    char name;
} Action;

static void act_commit(void *opaque)
{
    Action *a = opaque;

    g_string_append_printf(a->trace->s, "C%c ", a->name);
}

static void act_abort(void *opaque)
{
    Action *a = opaque;

    g_string_append_printf(a->trace->s, "A%c ", a->name);
}

static void act_clean(void *opaque)
{
    Action *a = opaque;

    g_string_append_printf(a->trace->s, "X%c ", a->name);
}

static const TransactionActionDrv full_drv = {
    .commit = act_commit,
    .abort = act_abort,
    .clean = act_clean,
};

/* An action with only an undo step, as most prepare steps have. */
static const TransactionActionDrv abort_only_drv = {
    .abort = act_abort,
};

static Transaction *build(Trace *t, Action *acts, int n)
{
    Transaction *tran = tran_new();

    for (int i = 0; i < n; i++) {
        acts[i] = (Action){ .trace = t, .name = (char)('a' + i) };
        tran_add(tran, i == 1 ? &abort_only_drv : &full_drv, &acts[i]);
    }
    return tran;
}

static void test_commit_order(void **state)
{
    Trace t = { g_string_new("") };
    Action acts[3];

    tran_commit(build(&t, acts, 3));
    assert_string_equal(t.s->str, "Ca Cc Xa Xc ");
    g_string_free(t.s, TRUE);
}

static void test_abort_order(void **state)
{
    Trace t = { g_string_new("") };
    Action acts[3];

    tran_abort(build(&t, acts, 3));
    assert_string_equal(t.s->str, "Ac Ab Aa Xc Xa ");
    g_string_free(t.s, TRUE);
}

static void test_finalize(void **state)
{
    Trace t = { g_string_new("") };
    Action acts[2];

    tran_finalize(build(&t, acts, 2), 0);
    assert_string_equal(t.s->str, "Ca Xa ");
    g_string_truncate(t.s, 0);
    tran_finalize(build(&t, acts, 2), -22);
    assert_string_equal(t.s->str, "Ab Aa Xa ");
    g_string_truncate(t.s, 0);
    tran_finalize(build(&t, acts, 2), 5);
    assert_string_equal(t.s->str, "Ca Xa ");
    g_string_free(t.s, TRUE);
}

static void test_empty(void **state)
{
    /* Nothing registered: both ends are no-ops that still free. */
    tran_commit(tran_new());
    tran_abort(tran_new());
    tran_finalize(tran_new(), -1);
}

static void test_many(void **state)
{
    Trace t = { g_string_new("") };
    Action *acts = g_new(Action, 1000);
    Transaction *tran = tran_new();
    int commits;

    for (int i = 0; i < 1000; i++) {
        acts[i] = (Action){ .trace = &t, .name = 'z' };
        tran_add(tran, &full_drv, &acts[i]);
    }
    tran_commit(tran);
    /* 1000 commits and 1000 cleans, commits first. */
    assert_int_equal(t.s->len, 2000 * 3);
    commits = 0;
    for (gsize i = 0; i < t.s->len; i += 3) {
        if (t.s->str[i] == 'C') {
            assert_int_equal(i / 3, commits);
            commits++;
        }
    }
    assert_int_equal(commits, 1000);
    g_free(acts);
    g_string_free(t.s, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_order),
        cmocka_unit_test(test_abort_order),
        cmocka_unit_test(test_finalize),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_many),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
