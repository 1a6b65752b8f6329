/* SPDX-License-Identifier: MIT */
/*
 * retry: the pure parts of the retry loop — a retry budget per upstream,
 * full-jitter backoff, a cheap random source, and the parsing of the headers
 * by which a server says when to come back (Retry-After, x-ratelimit-reset*).
 *
 * Design: the budget keeps RETRY_BUDGET_BUCKETS one-second buckets of first
 * tries and retries; a retry is allowed while the retries in the window stay
 * under max(min_per_s * window, pct% of the first tries), so retries can never
 * multiply the load on a failing upstream by more than 1 + pct%.
 *
 * Threading: a budget is shared by every worker.  Counting a first try, on
 * every request, is one atomic add (the mutex only when a bucket turns over,
 * once a second); deciding a retry takes the mutex.  retry_random keeps its
 * state per thread; the rest is pure.
 */
#ifndef SLUICE_RETRY_H
#define SLUICE_RETRY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RETRY_BUDGET_BUCKETS 10 /* seconds in the window */

/* Embeddable; the fields are private. */
struct retry_budget {
    pthread_mutex_t _lock;
    struct {
        _Atomic uint64_t second; /* now_ms / 1000 + 1 when last reset; 0 = never used */
        _Atomic uint32_t requests, retries;
    } _buckets[RETRY_BUDGET_BUCKETS];
};

void retry_budget_init(struct retry_budget *b);
void retry_budget_dispose(struct retry_budget *b);

/* Counts a first try at now_ms (monotonic). */
void retry_budget_request(struct retry_budget *b, uint64_t now_ms);

/* May a retry be made now?  True when the retries in the window are fewer
 * than max(min_per_s * RETRY_BUDGET_BUCKETS, pct% of the first tries in the
 * window); the retry is then counted.  False: not counted. */
bool retry_budget_take(struct retry_budget *b, unsigned pct, unsigned min_per_s, uint64_t now_ms);

/* First tries and retries in the window as of now_ms (for stats and tests). */
void retry_budget_counts(struct retry_budget *b, uint64_t now_ms, uint64_t *requests, uint64_t *retries);

/* Full jitter (AWS architecture blog): uniform in [0, min(cap_ms, base_ms *
 * 2^attempt)] drawn from rnd; attempt 0 is the first retry.  Never overflows,
 * whatever attempt is. */
uint64_t backoff_full_jitter(uint64_t base_ms, uint64_t cap_ms, unsigned attempt, uint64_t rnd);

/* A fast, non-cryptographic random number (xorshift64* per thread, seeded
 * from the clock and the thread).  Any thread. */
uint64_t retry_random(void);

/* A Retry-After value (RFC 9110 10.2.3): delta-seconds or an HTTP-date, as
 * milliseconds from now_wall_ms (wall clock, ms since the epoch), >= 0 (a date
 * in the past is 0); -1 when the value is neither. */
int64_t retry_after_ms(const char *value, size_t len, int64_t now_wall_ms);

/* An x-ratelimit-reset* value in the forms seen in the wild: a Go-style
 * duration ("1s", "6m0s", "20ms", "1h2m3.5s", as OpenAI sends), plain seconds
 * ("30", "1.5": a delta), or a unix time in seconds (a number above 1e9) or
 * in milliseconds (above 1e12) — as milliseconds from now_wall_ms, >= 0; -1
 * when invalid. */
int64_t ratelimit_reset_ms(const char *value, size_t len, int64_t now_wall_ms);

#endif
