/*
 * Token bucket, kept as a debt: each processed byte adds to it, time pays
 * it off at `speed` bytes per second.  A debt within one slice's allowance
 * needs no wait; beyond it the caller waits until the excess is paid.
 * Doubles keep speed * elapsed from overflowing for any int64 speed.
 */
#include "util/ratelimit.h"

#include <stddef.h>

void ratelimit_init(RateLimit *rl)
{
    rl->speed = 0;
    rl->slice_ns = 0;
    rl->debt = 0;
    rl->last_ns = 0;
}

void ratelimit_set_speed(RateLimit *rl, uint64_t speed, int64_t slice_ns)
{
    rl->speed = speed;
    rl->slice_ns = slice_ns > 0 ? slice_ns : 1;
    if (!speed) {
        rl->debt = 0;
    }
}

static void pay(RateLimit *rl, int64_t now_ns)
{
    if (rl->last_ns && now_ns > rl->last_ns && rl->debt > 0) {
        double paid = (double)(now_ns - rl->last_ns) * (double)rl->speed / 1e9;
        rl->debt = paid >= rl->debt ? 0 : rl->debt - paid;
    }
    if (now_ns > rl->last_ns || !rl->last_ns) {
        rl->last_ns = now_ns;
    }
}

void ratelimit_account(RateLimit *rl, uint64_t bytes, int64_t now_ns)
{
    if (!rl->speed) {
        return;
    }
    pay(rl, now_ns);
    rl->debt += (double)bytes;
}

int64_t ratelimit_delay(RateLimit *rl, int64_t now_ns)
{
    if (!rl->speed) {
        return 0;
    }
    pay(rl, now_ns);
    double allowance = (double)rl->speed * (double)rl->slice_ns / 1e9;
    if (rl->debt <= allowance) {
        return 0;
    }
    double ns = (rl->debt - allowance) * 1e9 / (double)rl->speed;
    /* Round up so the wait is never too short; saturate absurd values. */
    if (ns >= 9.2e18) {
        return INT64_MAX;
    }
    int64_t d = (int64_t)ns;
    return d < ns ? d + 1 : d;
}
