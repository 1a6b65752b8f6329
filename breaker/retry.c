/* SPDX-License-Identifier: MIT */
#include "breaker/retry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"

/* ---- budget ---- */

void retry_budget_init(struct retry_budget *b)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->_lock, NULL);
}

void retry_budget_dispose(struct retry_budget *b)
{
    pthread_mutex_destroy(&b->_lock);
}

/* The bucket of now_ms, reset when it last served a second that has left the
 * window.  Lock held. */
static unsigned bucket_of(struct retry_budget *b, uint64_t now_ms)
{
    uint64_t second = now_ms / 1000 + 1;
    unsigned i = (unsigned)(second % RETRY_BUDGET_BUCKETS);
    if (b->_buckets[i].second != second) {
        /* counts first: a lock-free adder that sees the new second adds to zeroed counts */
        b->_buckets[i].requests = 0;
        b->_buckets[i].retries = 0;
        b->_buckets[i].second = second;
    }
    return i;
}

static void sum(const struct retry_budget *b, uint64_t now_ms, uint64_t *requests, uint64_t *retries)
{
    uint64_t second = now_ms / 1000 + 1, req = 0, ret = 0;
    for (unsigned i = 0; i < RETRY_BUDGET_BUCKETS; i++) {
        uint64_t s = b->_buckets[i].second;
        if (s != 0 && s <= second && second - s < RETRY_BUDGET_BUCKETS) {
            req += b->_buckets[i].requests;
            ret += b->_buckets[i].retries;
        }
    }
    *requests = req;
    *retries = ret;
}

void retry_budget_request(struct retry_budget *b, uint64_t now_ms)
{
    uint64_t second = now_ms / 1000 + 1;
    unsigned i = (unsigned)(second % RETRY_BUDGET_BUCKETS);
    if (atomic_load_explicit(&b->_buckets[i].second, memory_order_acquire) != second) {
        pthread_mutex_lock(&b->_lock);
        bucket_of(b, now_ms);
        pthread_mutex_unlock(&b->_lock);
    }
    /* an add racing a turnover by a thread whose clock is a second behind may
     * be lost: a budget is a rate, not a ledger */
    atomic_fetch_add_explicit(&b->_buckets[i].requests, 1, memory_order_relaxed);
}

bool retry_budget_take(struct retry_budget *b, unsigned pct, unsigned min_per_s, uint64_t now_ms)
{
    pthread_mutex_lock(&b->_lock);
    uint64_t requests, retries;
    sum(b, now_ms, &requests, &retries);
    uint64_t allowed = (uint64_t)min_per_s * RETRY_BUDGET_BUCKETS;
    uint64_t share = requests * pct / 100;
    if (share > allowed)
        allowed = share;
    bool ok = retries < allowed;
    if (ok)
        b->_buckets[bucket_of(b, now_ms)].retries++;
    pthread_mutex_unlock(&b->_lock);
    return ok;
}

void retry_budget_counts(struct retry_budget *b, uint64_t now_ms, uint64_t *requests, uint64_t *retries)
{
    pthread_mutex_lock(&b->_lock);
    sum(b, now_ms, requests, retries);
    pthread_mutex_unlock(&b->_lock);
}

/* ---- backoff and randomness ---- */

uint64_t backoff_full_jitter(uint64_t base_ms, uint64_t cap_ms, unsigned attempt, uint64_t rnd)
{
    uint64_t ceiling = cap_ms;
    if (attempt < 64 && base_ms <= (cap_ms >> attempt))
        ceiling = base_ms << attempt;
    if (ceiling == UINT64_MAX)
        return rnd;
    return rnd % (ceiling + 1);
}

uint64_t retry_random(void)
{
    static _Thread_local uint64_t state;
    if (state == 0) {
        static atomic_uint_fast64_t seq;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        /* splitmix64 of clock, thread and a process-wide sequence: distinct
         * non-zero seeds even for threads started in the same nanosecond */
        uint64_t z = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)&state ^
                     (atomic_fetch_add(&seq, 1) + 1) * UINT64_C(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        z ^= z >> 31;
        state = z ? z : UINT64_C(0x9e3779b97f4a7c15);
    }
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * UINT64_C(0x2545f4914f6cdd1d);
}

/* ---- Retry-After and rate-limit reset headers ---- */

#define MS_MAX (INT64_MAX / 4) /* a clamp far beyond any real wait, safe to add to a clock */

static void trim(const char **s, size_t *len)
{
    while (*len && (**s == ' ' || **s == '\t'))
        (*s)++, (*len)--;
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A non-negative decimal number with an optional fraction at s[*i], in
 * thousandths (clamped to MS_MAX); false when there is no digit. */
static bool number_milli(const char *s, size_t len, size_t *i, int64_t *out)
{
    int64_t whole = 0, frac = 0;
    size_t start = *i;
    for (; *i < len && is_digit(s[*i]); (*i)++)
        whole = whole > MS_MAX / 10 ? MS_MAX : whole * 10 + (s[*i] - '0');
    bool has_int = *i > start;
    bool has_frac = false;
    if (*i < len && s[*i] == '.') {
        (*i)++;
        for (int scale = 100; *i < len && is_digit(s[*i]); (*i)++, scale /= 10) {
            frac += (s[*i] - '0') * scale;
            has_frac = true;
        }
    }
    if (!has_int && !has_frac)
        return false;
    *out = whole >= MS_MAX / 1000 ? MS_MAX : whole * 1000 + frac;
    return true;
}

static int64_t until_wall(int64_t target_ms, int64_t now_wall_ms)
{
    return target_ms > now_wall_ms ? target_ms - now_wall_ms : 0;
}

int64_t retry_after_ms(const char *value, size_t len, int64_t now_wall_ms)
{
    if (value == NULL)
        return -1;
    trim(&value, &len);
    if (len == 0)
        return -1;
    if (is_digit(value[0])) {
        /* delta-seconds = 1*DIGIT: no sign, no fraction */
        int64_t secs = 0;
        for (size_t i = 0; i < len; i++) {
            if (!is_digit(value[i]))
                return -1;
            secs = secs > MS_MAX / 10 ? MS_MAX : secs * 10 + (value[i] - '0');
        }
        return secs >= MS_MAX / 1000 ? MS_MAX : secs * 1000;
    }
    int64_t secs = cache_date_parse(value, len);
    if (secs < 0)
        return -1;
    return until_wall(secs * 1000, now_wall_ms);
}

int64_t ratelimit_reset_ms(const char *value, size_t len, int64_t now_wall_ms)
{
    if (value == NULL)
        return -1;
    trim(&value, &len);
    size_t i = 0;
    int64_t n;
    if (!number_milli(value, len, &i, &n))
        return -1;
    if (i == len) {
        /* a bare number: seconds from now, or a unix time once it is past 1e9
         * (September 2001), which no sane delta reaches; past 1e12 it can
         * only be a unix time in milliseconds */
        if (n > INT64_C(1000000000000) * 1000)
            return until_wall(n / 1000, now_wall_ms);
        if (n > INT64_C(1000000000) * 1000)
            return until_wall(n, now_wall_ms);
        return n;
    }
    /* a Go time.Duration string: (number unit)+ with units h, m, s, ms */
    int64_t total = 0;
    for (;;) {
        int64_t scale;
        if (i + 1 < len && value[i] == 'm' && value[i + 1] == 's')
            scale = 1, i += 2;
        else if (i < len && value[i] == 'h')
            scale = 3600000, i++;
        else if (i < len && value[i] == 'm')
            scale = 60000, i++;
        else if (i < len && value[i] == 's')
            scale = 1000, i++;
        else
            return -1;
        /* n is in thousandths of the unit */
        int64_t part = n > MS_MAX / scale ? MS_MAX : n * scale / 1000;
        total = total > MS_MAX - part ? MS_MAX : total + part;
        if (i == len)
            return total;
        if (!number_milli(value, len, &i, &n))
            return -1;
    }
}
