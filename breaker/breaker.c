/* SPDX-License-Identifier: MIT */
#include "breaker/breaker.h"

#include <string.h>

void breaker_init(struct breaker *b)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->_lock, NULL);
    b->_state = BREAKER_CLOSED;
}

void breaker_dispose(struct breaker *b)
{
    pthread_mutex_destroy(&b->_lock);
}

const char *breaker_state_name(enum breaker_state state)
{
    switch (state) {
    case BREAKER_CLOSED:
        return "closed";
    case BREAKER_OPEN:
        return "open";
    case BREAKER_HALF_OPEN:
        return "half_open";
    case BREAKER_QUOTA:
        return "quota";
    }
    return "?";
}

/* ---- everything below runs with b->_lock held ---- */

static uint64_t bucket_width(const struct conf_breaker *conf)
{
    uint64_t w = conf->window_ms / BREAKER_BUCKETS;
    return w ? w : 1;
}

static void window_clear(struct breaker *b)
{
    memset(b->_window, 0, sizeof(b->_window));
}

static void window_add(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms, bool failed)
{
    uint64_t epoch = now_ms / bucket_width(conf);
    unsigned i = (unsigned)(epoch % BREAKER_BUCKETS);
    /* epoch + 1 so that a zeroed bucket never passes for epoch 0 */
    if (b->_window[i].epoch != epoch + 1) {
        b->_window[i].epoch = epoch + 1;
        b->_window[i].requests = 0;
        b->_window[i].failures = 0;
    }
    b->_window[i].requests++;
    b->_window[i].failures += failed;
}

static void window_sum(const struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms,
                       unsigned *requests, unsigned *failures)
{
    uint64_t epoch = now_ms / bucket_width(conf) + 1;
    unsigned r = 0, f = 0;
    for (unsigned i = 0; i < BREAKER_BUCKETS; i++) {
        uint64_t e = b->_window[i].epoch;
        if (e != 0 && e <= epoch && epoch - e < BREAKER_BUCKETS) {
            r += b->_window[i].requests;
            f += b->_window[i].failures;
        }
    }
    *requests = r;
    *failures = f;
}

static void set_state(struct breaker *b, enum breaker_state to, uint64_t now_ms,
                      struct breaker_transition *tr)
{
    if (b->_state == to)
        return;
    if (tr != NULL)
        *tr = (struct breaker_transition){true, b->_state, to};
    b->_state = to;
    b->_counts.state_changes++;
    switch (to) {
    case BREAKER_CLOSED:
        b->_counts.closed++;
        b->_closed_at_ms = now_ms;
        b->_consecutive = 0;
        window_clear(b);
        break;
    case BREAKER_OPEN:
        b->_counts.opened++;
        break;
    case BREAKER_HALF_OPEN:
        b->_counts.half_opened++;
        b->_probes = 0;
        b->_probe_successes = 0;
        break;
    case BREAKER_QUOTA:
        b->_counts.quota++;
        break;
    }
}

/* A trial failed (reopen: the period doubles), or a closed breaker tripped (the
 * period starts over when the close outlasted the last open period: a server
 * that recovered for that long is not flapping). */
static void trip(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms, bool reopen,
                 struct breaker_transition *tr)
{
    uint64_t period = b->_period_ms;
    if (period == 0 || (!reopen && now_ms - b->_closed_at_ms >= period))
        period = conf->open_ms;
    else
        period = period > conf->max_open_ms / 2 ? conf->max_open_ms : period * 2;
    if (period > conf->max_open_ms)
        period = conf->max_open_ms;
    b->_period_ms = period;
    b->_until_ms = now_ms + period;
    set_state(b, BREAKER_OPEN, now_ms, tr);
}

/* The lazy, time-driven changes. */
static void advance(struct breaker *b, uint64_t now_ms, struct breaker_transition *tr)
{
    if (b->_force != BREAKER_AUTO)
        return;
    if (b->_state == BREAKER_OPEN && now_ms >= b->_until_ms)
        set_state(b, BREAKER_HALF_OPEN, now_ms, tr);
    else if (b->_state == BREAKER_QUOTA && now_ms >= b->_until_ms)
        set_state(b, BREAKER_CLOSED, now_ms, tr);
}

/* ---- public ---- */

enum breaker_admit breaker_admit(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms,
                                 struct breaker_transition *tr)
{
    if (!conf->enabled)
        return BREAKER_PASS;
    if (tr != NULL)
        tr->changed = false;
    enum breaker_admit how = BREAKER_DENY;
    pthread_mutex_lock(&b->_lock);
    advance(b, now_ms, tr);
    switch (b->_state) {
    case BREAKER_CLOSED:
        how = BREAKER_PASS;
        break;
    case BREAKER_HALF_OPEN:
        if (b->_probes < (conf->half_open ? conf->half_open : 1)) {
            b->_probes++;
            how = BREAKER_PROBE;
        }
        break;
    case BREAKER_OPEN:
    case BREAKER_QUOTA:
        break;
    }
    if (how == BREAKER_DENY)
        b->_counts.rejected++;
    pthread_mutex_unlock(&b->_lock);
    return how;
}

void breaker_report(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms,
                    enum breaker_admit how, enum breaker_outcome out, struct breaker_transition *tr)
{
    if (!conf->enabled || how == BREAKER_DENY)
        return;
    if (tr != NULL)
        tr->changed = false;
    pthread_mutex_lock(&b->_lock);
    if (how == BREAKER_PROBE && b->_state == BREAKER_HALF_OPEN) {
        /* A probe from an earlier half-open period may land here and free a
         * slot early: that only lets one extra trial through, never a flood. */
        if (b->_probes > 0)
            b->_probes--;
        if (b->_force != BREAKER_AUTO || out == BREAKER_CANCEL)
            goto out;
        if (out == BREAKER_FAILURE) {
            trip(b, conf, now_ms, true, tr);
        } else if (++b->_probe_successes >= (conf->half_open ? conf->half_open : 1)) {
            set_state(b, BREAKER_CLOSED, now_ms, tr);
        }
    } else if (how == BREAKER_PASS && b->_state == BREAKER_CLOSED && b->_force == BREAKER_AUTO &&
               out != BREAKER_CANCEL) {
        bool failed = out == BREAKER_FAILURE;
        window_add(b, conf, now_ms, failed);
        if (!failed) {
            b->_consecutive = 0;
            goto out;
        }
        b->_consecutive++;
        unsigned requests, failures;
        window_sum(b, conf, now_ms, &requests, &failures);
        if ((conf->failures && b->_consecutive >= conf->failures) ||
            (conf->ratio_pct && requests >= conf->min_requests &&
             (uint64_t)failures * 100 >= (uint64_t)conf->ratio_pct * requests))
            trip(b, conf, now_ms, false, tr);
    }
out:
    pthread_mutex_unlock(&b->_lock);
}

void breaker_quota(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms, uint64_t until_ms,
                   struct breaker_transition *tr)
{
    if (tr != NULL)
        tr->changed = false;
    if (!conf->enabled || until_ms <= now_ms)
        return;
    if (until_ms - now_ms > conf->max_open_ms)
        until_ms = now_ms + conf->max_open_ms;
    pthread_mutex_lock(&b->_lock);
    if (b->_force == BREAKER_AUTO) {
        if (b->_state != BREAKER_QUOTA || until_ms > b->_until_ms)
            b->_until_ms = until_ms;
        set_state(b, BREAKER_QUOTA, now_ms, tr);
    }
    pthread_mutex_unlock(&b->_lock);
}

void breaker_force(struct breaker *b, enum breaker_force force, uint64_t now_ms,
                   struct breaker_transition *tr)
{
    if (tr != NULL)
        tr->changed = false;
    pthread_mutex_lock(&b->_lock);
    b->_force = force;
    switch (force) {
    case BREAKER_FORCE_OPEN:
        set_state(b, BREAKER_OPEN, now_ms, tr);
        break;
    case BREAKER_FORCE_CLOSED:
        set_state(b, BREAKER_CLOSED, now_ms, tr);
        break;
    case BREAKER_AUTO:
        set_state(b, BREAKER_CLOSED, now_ms, tr);
        b->_consecutive = 0;
        b->_period_ms = 0;
        window_clear(b);
        break;
    }
    pthread_mutex_unlock(&b->_lock);
}

enum breaker_force breaker_forced(struct breaker *b)
{
    pthread_mutex_lock(&b->_lock);
    enum breaker_force f = b->_force;
    pthread_mutex_unlock(&b->_lock);
    return f;
}

enum breaker_state breaker_state(struct breaker *b, uint64_t now_ms)
{
    pthread_mutex_lock(&b->_lock);
    enum breaker_state s = b->_state;
    if (b->_force == BREAKER_AUTO && now_ms >= b->_until_ms) {
        if (s == BREAKER_OPEN)
            s = BREAKER_HALF_OPEN;
        else if (s == BREAKER_QUOTA)
            s = BREAKER_CLOSED;
    }
    pthread_mutex_unlock(&b->_lock);
    return s;
}

uint64_t breaker_wait_ms(struct breaker *b, uint64_t now_ms)
{
    uint64_t wait = 0;
    pthread_mutex_lock(&b->_lock);
    if (b->_force == BREAKER_AUTO && (b->_state == BREAKER_OPEN || b->_state == BREAKER_QUOTA) &&
        b->_until_ms > now_ms)
        wait = b->_until_ms - now_ms;
    pthread_mutex_unlock(&b->_lock);
    return wait;
}

void breaker_window(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms, unsigned *requests,
                    unsigned *failures)
{
    pthread_mutex_lock(&b->_lock);
    window_sum(b, conf, now_ms, requests, failures);
    pthread_mutex_unlock(&b->_lock);
}

void breaker_counts(struct breaker *b, struct breaker_counts *out)
{
    pthread_mutex_lock(&b->_lock);
    *out = b->_counts;
    pthread_mutex_unlock(&b->_lock);
}
