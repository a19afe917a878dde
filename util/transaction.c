/*
 * Transactions: prepare steps have already done their work and register
 * how to finish it (commit) or undo it (abort).  Undo runs newest first so
 * that each action sees the state it was prepared against.
 */
#include "util/transaction.h"

#include <glib.h>

typedef struct TransactionAction {
    const TransactionActionDrv *drv;
    void *opaque;
} TransactionAction;

struct Transaction {
    GArray *actions; /* of TransactionAction, in registration order */
};

Transaction *tran_new(void)
{
    Transaction *tran = g_new0(Transaction, 1);

    tran->actions = g_array_new(FALSE, FALSE, sizeof(TransactionAction));
    return tran;
}

void tran_add(Transaction *tran, const TransactionActionDrv *drv,
              void *opaque)
{
    TransactionAction act = { .drv = drv, .opaque = opaque };

    g_array_append_val(tran->actions, act);
}

static void tran_free(Transaction *tran)
{
    g_array_free(tran->actions, TRUE);
    g_free(tran);
}

/* Commit and its cleans run oldest first. */
void tran_commit(Transaction *tran)
{
    guint i;

    for (i = 0; i < tran->actions->len; i++) {
        TransactionAction *a = &g_array_index(tran->actions,
                                              TransactionAction, i);
        if (a->drv->commit) {
            a->drv->commit(a->opaque);
        }
    }
    for (i = 0; i < tran->actions->len; i++) {
        TransactionAction *a = &g_array_index(tran->actions,
                                              TransactionAction, i);
        if (a->drv->clean) {
            a->drv->clean(a->opaque);
        }
    }
    tran_free(tran);
}

/* Abort and its cleans run newest first. */
void tran_abort(Transaction *tran)
{
    guint i;

    for (i = tran->actions->len; i > 0; i--) {
        TransactionAction *a = &g_array_index(tran->actions,
                                              TransactionAction, i - 1);
        if (a->drv->abort) {
            a->drv->abort(a->opaque);
        }
    }
    for (i = tran->actions->len; i > 0; i--) {
        TransactionAction *a = &g_array_index(tran->actions,
                                              TransactionAction, i - 1);
        if (a->drv->clean) {
            a->drv->clean(a->opaque);
        }
    }
    tran_free(tran);
}

void tran_finalize(Transaction *tran, int ret)
{
    if (ret < 0) {
        tran_abort(tran);
    } else {
        tran_commit(tran);
    }
}
