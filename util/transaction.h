/*
 * A transaction: a list of actions, each registered by a prepare step
 * that already did its work and knows how to undo it.  Commit runs every
 * action's commit in registration order; abort runs every abort in
 * reverse order; both then run every clean.  Used by permission updates,
 * graph changes and QMP's `transaction`.
 */
#ifndef UTIL_TRANSACTION_H
#define UTIL_TRANSACTION_H

typedef struct TransactionActionDrv {
    void (*commit)(void *opaque);
    void (*abort)(void *opaque);
    void (*clean)(void *opaque);
} TransactionActionDrv;

typedef struct Transaction Transaction;

Transaction *tran_new(void);
void tran_add(Transaction *tran, const TransactionActionDrv *drv,
              void *opaque);
/* Each of these frees the transaction. */
void tran_commit(Transaction *tran);
void tran_abort(Transaction *tran);
/* ret < 0 ? abort : commit */
void tran_finalize(Transaction *tran, int ret);

#endif
