/*
 * A token bucket in bytes per second, for jobs' `speed`.
 *
 * The caller accounts what it processed and asks how long to wait before
 * going on.  Up to one slice's worth of bytes (speed * slice) may be
 * processed at once without waiting, so a job doing large chunks still
 * averages `speed`: copying `len` bytes takes about len / speed seconds.
 * speed 0 means unlimited.
 */
#ifndef UTIL_RATELIMIT_H
#define UTIL_RATELIMIT_H

#include <stdint.h>

typedef struct RateLimit {
    uint64_t speed;    /* bytes per second; 0: unlimited */
    int64_t slice_ns;  /* burst allowance, as time at `speed` */
    double debt;       /* bytes processed and not yet paid for by time */
    int64_t last_ns;   /* when debt was last brought up to date */
} RateLimit;

void ratelimit_init(RateLimit *rl);
/* Change the rate; what was already accounted keeps its debt. */
void ratelimit_set_speed(RateLimit *rl, uint64_t speed, int64_t slice_ns);
/* `bytes` were processed at time now_ns. */
void ratelimit_account(RateLimit *rl, uint64_t bytes, int64_t now_ns);
/* Nanoseconds to wait from now_ns before processing more (0: none). */
int64_t ratelimit_delay(RateLimit *rl, int64_t now_ns);

#endif
