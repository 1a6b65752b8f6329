/* SPDX-License-Identifier: MIT */
#include "breaker/breaker.h"

#include <pthread.h>

#include "test/unit/test.h"

static struct conf_breaker conf_default(void)
{
    struct conf_breaker c = {
        .enabled = true,
        .failures = 5,
        .ratio_pct = 50,
        .window_ms = 30000,
        .min_requests = 20,
        .open_ms = 1000,
        .max_open_ms = 5000,
        .half_open = 3,
    };
    return c;
}

/* n requests admitted and reported at now with outcome out; returns how many
 * were admitted. */
static int run(struct breaker *b, const struct conf_breaker *c, uint64_t now, int n, enum breaker_outcome out)
{
    int admitted = 0;
    for (int i = 0; i < n; i++) {
        enum breaker_admit how = breaker_admit(b, c, now, NULL);
        if (how == BREAKER_DENY)
            continue;
        admitted++;
        breaker_report(b, c, now, how, out, NULL);
    }
    return admitted;
}

TEST(disabled_always_passes)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.enabled = false;
    ASSERT_EQ(run(&b, &c, 0, 100, BREAKER_FAILURE), 100);
    ASSERT_EQ(breaker_state(&b, 0), BREAKER_CLOSED);
    breaker_dispose(&b);
}

TEST(consecutive_failures_open)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.ratio_pct = 0;
    ASSERT_EQ(run(&b, &c, 10, 4, BREAKER_FAILURE), 4);
    ASSERT_EQ(breaker_state(&b, 10), BREAKER_CLOSED);
    /* a success resets the run */
    run(&b, &c, 10, 1, BREAKER_SUCCESS);
    run(&b, &c, 10, 4, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 10), BREAKER_CLOSED);
    struct breaker_transition tr;
    enum breaker_admit how = breaker_admit(&b, &c, 10, &tr);
    ASSERT_EQ(how, BREAKER_PASS);
    ASSERT(!tr.changed);
    breaker_report(&b, &c, 10, how, BREAKER_FAILURE, &tr);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.from, BREAKER_CLOSED);
    ASSERT_EQ(tr.to, BREAKER_OPEN);
    ASSERT_EQ(breaker_state(&b, 10), BREAKER_OPEN);
    ASSERT_EQ(breaker_admit(&b, &c, 11, NULL), BREAKER_DENY);
    ASSERT_EQ(breaker_wait_ms(&b, 11), 999);
    struct breaker_counts n;
    breaker_counts(&b, &n);
    ASSERT_EQ(n.opened, 1);
    ASSERT_EQ(n.rejected, 1);
    ASSERT_EQ(n.state_changes, 1);
    breaker_dispose(&b);
}

TEST(ratio_needs_min_requests)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.failures = 0;
    /* alternate: 50% failures, but only 19 requests */
    for (int i = 0; i < 19; i++)
        run(&b, &c, 100, 1, i % 2 ? BREAKER_SUCCESS : BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 100), BREAKER_CLOSED);
    unsigned r, f;
    breaker_window(&b, &c, 100, &r, &f);
    ASSERT_EQ(r, 19);
    ASSERT_EQ(f, 10);
    /* the 20th is a success: 10/20 = 50% but the check runs on failures only */
    run(&b, &c, 100, 1, BREAKER_SUCCESS);
    ASSERT_EQ(breaker_state(&b, 100), BREAKER_CLOSED);
    run(&b, &c, 100, 1, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 100), BREAKER_OPEN);
    breaker_dispose(&b);
}

TEST(ratio_below_threshold_stays_closed)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.failures = 0;
    /* 1 failure in 3: 33% < 50% */
    for (int i = 0; i < 300; i++)
        run(&b, &c, 100, 1, i % 3 ? BREAKER_SUCCESS : BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 100), BREAKER_CLOSED);
    breaker_dispose(&b);
}

TEST(window_slides)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.failures = 0;
    /* 15 failures early in the window, then nothing for a full window */
    run(&b, &c, 1000, 15, BREAKER_FAILURE);
    unsigned r, f;
    breaker_window(&b, &c, 1000, &r, &f);
    ASSERT_EQ(r, 15);
    breaker_window(&b, &c, 1000 + 27000, &r, &f);
    ASSERT_EQ(r, 15); /* still inside (10 buckets of 3 s) */
    breaker_window(&b, &c, 1000 + 31000, &r, &f);
    ASSERT_EQ(r, 0);
    /* the old failures are gone: 5 fresh failures + 15 successes = 25% */
    run(&b, &c, 40000, 15, BREAKER_SUCCESS);
    run(&b, &c, 40000, 5, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 40000), BREAKER_CLOSED);
    /* whereas they would have opened it inside the window */
    struct breaker b2;
    breaker_init(&b2);
    run(&b2, &c, 1000, 15, BREAKER_FAILURE);
    run(&b2, &c, 20000, 15, BREAKER_SUCCESS);
    ASSERT_EQ(breaker_state(&b2, 20000), BREAKER_CLOSED);
    run(&b2, &c, 20000, 1, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b2, 20000), BREAKER_OPEN);
    breaker_dispose(&b);
    breaker_dispose(&b2);
}

/* Opens b at now with c.failures failures. */
static void trip_at(struct breaker *b, const struct conf_breaker *c, uint64_t now)
{
    run(b, c, now, (int)c->failures, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(b, now), BREAKER_OPEN);
}

TEST(half_open_limits_probes_and_closes)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    trip_at(&b, &c, 0);
    ASSERT_EQ(breaker_admit(&b, &c, 999, NULL), BREAKER_DENY);
    ASSERT_EQ(breaker_state(&b, 1000), BREAKER_HALF_OPEN);
    struct breaker_transition tr;
    ASSERT_EQ(breaker_admit(&b, &c, 1000, &tr), BREAKER_PROBE);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.from, BREAKER_OPEN);
    ASSERT_EQ(tr.to, BREAKER_HALF_OPEN);
    ASSERT_EQ(breaker_admit(&b, &c, 1000, NULL), BREAKER_PROBE);
    ASSERT_EQ(breaker_admit(&b, &c, 1000, NULL), BREAKER_PROBE);
    ASSERT_EQ(breaker_admit(&b, &c, 1000, NULL), BREAKER_DENY); /* 3 in flight */
    ASSERT_EQ(breaker_wait_ms(&b, 1000), 0);
    breaker_report(&b, &c, 1001, BREAKER_PROBE, BREAKER_SUCCESS, NULL);
    /* a slot is free again, but successes so far: 1 */
    ASSERT_EQ(breaker_admit(&b, &c, 1001, NULL), BREAKER_PROBE);
    breaker_report(&b, &c, 1002, BREAKER_PROBE, BREAKER_SUCCESS, NULL);
    ASSERT_EQ(breaker_state(&b, 1002), BREAKER_HALF_OPEN);
    breaker_report(&b, &c, 1003, BREAKER_PROBE, BREAKER_SUCCESS, &tr);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.to, BREAKER_CLOSED);
    ASSERT_EQ(breaker_admit(&b, &c, 1003, NULL), BREAKER_PASS);
    /* the last probe reports after the close: no effect */
    breaker_report(&b, &c, 1004, BREAKER_PROBE, BREAKER_FAILURE, NULL);
    ASSERT_EQ(breaker_state(&b, 1004), BREAKER_CLOSED);
    struct breaker_counts n;
    breaker_counts(&b, &n);
    ASSERT_EQ(n.opened, 1);
    ASSERT_EQ(n.half_opened, 1);
    ASSERT_EQ(n.closed, 1);
    ASSERT_EQ(n.rejected, 2);
    breaker_dispose(&b);
}

TEST(probe_failure_reopens_and_period_doubles_to_cap)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default(); /* open 1 s, max 5 s */
    trip_at(&b, &c, 0);
    uint64_t now = 0, expect[] = {1000, 2000, 4000, 5000, 5000};
    for (int i = 0; i < 5; i++) {
        ASSERT_EQ(breaker_wait_ms(&b, now), expect[i]);
        now += expect[i];
        ASSERT_EQ(breaker_admit(&b, &c, now, NULL), BREAKER_PROBE);
        struct breaker_transition tr;
        breaker_report(&b, &c, now, BREAKER_PROBE, BREAKER_FAILURE, &tr);
        ASSERT(tr.changed);
        ASSERT_EQ(tr.from, BREAKER_HALF_OPEN);
        ASSERT_EQ(tr.to, BREAKER_OPEN);
    }
    struct breaker_counts n;
    breaker_counts(&b, &n);
    ASSERT_EQ(n.opened, 6);
    ASSERT_EQ(n.half_opened, 5);
    breaker_dispose(&b);
}

/* Closes an open b through c.half_open successful probes at now. */
static void close_at(struct breaker *b, const struct conf_breaker *c, uint64_t now)
{
    for (unsigned i = 0; i < c->half_open; i++) {
        ASSERT_EQ(breaker_admit(b, c, now, NULL), BREAKER_PROBE);
        breaker_report(b, c, now, BREAKER_PROBE, BREAKER_SUCCESS, NULL);
    }
    ASSERT_EQ(breaker_state(b, now), BREAKER_CLOSED);
}

TEST(period_resets_after_a_lasting_close)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    trip_at(&b, &c, 0);
    /* reopen once: 2 s */
    ASSERT_EQ(breaker_admit(&b, &c, 1000, NULL), BREAKER_PROBE);
    breaker_report(&b, &c, 1000, BREAKER_PROBE, BREAKER_FAILURE, NULL);
    ASSERT_EQ(breaker_wait_ms(&b, 1000), 2000);
    close_at(&b, &c, 3000);
    /* trips again 1 s after closing: flapping, the period keeps doubling */
    trip_at(&b, &c, 4000);
    ASSERT_EQ(breaker_wait_ms(&b, 4000), 4000);
    close_at(&b, &c, 8000);
    /* closed for 4 s (the last period): back to open_ms */
    trip_at(&b, &c, 12000);
    ASSERT_EQ(breaker_wait_ms(&b, 12000), 1000);
    breaker_dispose(&b);
}

TEST(quota_with_reset_time)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    struct breaker_transition tr;
    breaker_quota(&b, &c, 100, 5100, &tr);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.to, BREAKER_QUOTA);
    ASSERT_EQ(breaker_state(&b, 100), BREAKER_QUOTA);
    ASSERT_EQ(breaker_wait_ms(&b, 1100), 4000);
    ASSERT_EQ(breaker_admit(&b, &c, 5099, NULL), BREAKER_DENY);
    /* a shorter quota does not cut it */
    breaker_quota(&b, &c, 200, 3000, NULL);
    ASSERT_EQ(breaker_wait_ms(&b, 1100), 4000);
    ASSERT_EQ(breaker_state(&b, 5100), BREAKER_CLOSED);
    /* then closed at once, no probes */
    ASSERT_EQ(breaker_admit(&b, &c, 5100, &tr), BREAKER_PASS);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.from, BREAKER_QUOTA);
    ASSERT_EQ(tr.to, BREAKER_CLOSED);
    struct breaker_counts n;
    breaker_counts(&b, &n);
    ASSERT_EQ(n.quota, 1);
    ASSERT_EQ(n.half_opened, 0);
    ASSERT_EQ(n.closed, 1);
    /* a reset time already past: nothing (the caller counts the 429 as a failure) */
    breaker_quota(&b, &c, 6000, 6000, &tr);
    ASSERT(!tr.changed);
    ASSERT_EQ(breaker_state(&b, 6000), BREAKER_CLOSED);
    /* a reset years away is cut to max_open (5 s) */
    breaker_quota(&b, &c, 7000, UINT64_C(1) << 60, &tr);
    ASSERT(tr.changed);
    ASSERT_EQ(breaker_wait_ms(&b, 7000), 5000);
    /* disabled: no quota either */
    struct breaker b2;
    breaker_init(&b2);
    c.enabled = false;
    breaker_quota(&b2, &c, 0, 1000, &tr);
    ASSERT(!tr.changed);
    ASSERT_EQ(breaker_state(&b2, 0), BREAKER_CLOSED);
    breaker_dispose(&b2);
    breaker_dispose(&b);
}

TEST(quota_while_open_waits_for_the_later)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    trip_at(&b, &c, 0);
    breaker_quota(&b, &c, 10, 30000, NULL); /* cut to 10 + 5000 */
    ASSERT_EQ(breaker_state(&b, 2000), BREAKER_QUOTA);
    ASSERT_EQ(breaker_admit(&b, &c, 2000, NULL), BREAKER_DENY);
    ASSERT_EQ(breaker_admit(&b, &c, 5009, NULL), BREAKER_DENY);
    ASSERT_EQ(breaker_admit(&b, &c, 5010, NULL), BREAKER_PASS);
    breaker_dispose(&b);
}

TEST(force_open_closed_auto)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    struct breaker_transition tr;
    breaker_force(&b, BREAKER_FORCE_OPEN, 0, &tr);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.to, BREAKER_OPEN);
    ASSERT_EQ(breaker_forced(&b), BREAKER_FORCE_OPEN);
    /* stays open long past any period */
    ASSERT_EQ(breaker_admit(&b, &c, 1000000, NULL), BREAKER_DENY);
    ASSERT_EQ(breaker_state(&b, 1000000), BREAKER_OPEN);
    ASSERT_EQ(breaker_wait_ms(&b, 1000000), 0);
    breaker_force(&b, BREAKER_FORCE_CLOSED, 1000000, NULL);
    /* failures do not open it, quotas do not apply */
    ASSERT_EQ(run(&b, &c, 1000000, 100, BREAKER_FAILURE), 100);
    breaker_quota(&b, &c, 1000000, 2000000, NULL);
    ASSERT_EQ(breaker_state(&b, 1000000), BREAKER_CLOSED);
    breaker_force(&b, BREAKER_AUTO, 1000000, NULL);
    ASSERT_EQ(breaker_forced(&b), BREAKER_AUTO);
    ASSERT_EQ(breaker_state(&b, 1000000), BREAKER_CLOSED);
    /* back to automatic, with a clean slate */
    run(&b, &c, 1000000, 4, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 1000000), BREAKER_CLOSED);
    run(&b, &c, 1000000, 1, BREAKER_FAILURE);
    ASSERT_EQ(breaker_state(&b, 1000000), BREAKER_OPEN);
    ASSERT_EQ(breaker_wait_ms(&b, 1000000), 1000);
    /* release while open: closed */
    breaker_force(&b, BREAKER_AUTO, 1000001, &tr);
    ASSERT(tr.changed);
    ASSERT_EQ(tr.to, BREAKER_CLOSED);
    breaker_dispose(&b);
}

TEST(cancel_frees_a_probe_slot)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.half_open = 1;
    trip_at(&b, &c, 0);
    ASSERT_EQ(breaker_admit(&b, &c, 1000, NULL), BREAKER_PROBE);
    ASSERT_EQ(breaker_admit(&b, &c, 1000, NULL), BREAKER_DENY);
    breaker_report(&b, &c, 1001, BREAKER_PROBE, BREAKER_CANCEL, NULL);
    ASSERT_EQ(breaker_state(&b, 1001), BREAKER_HALF_OPEN);
    ASSERT_EQ(breaker_admit(&b, &c, 1001, NULL), BREAKER_PROBE);
    breaker_report(&b, &c, 1002, BREAKER_PROBE, BREAKER_SUCCESS, NULL);
    ASSERT_EQ(breaker_state(&b, 1002), BREAKER_CLOSED);
    /* a cancelled pass counts nothing */
    enum breaker_admit how = breaker_admit(&b, &c, 1003, NULL);
    breaker_report(&b, &c, 1003, how, BREAKER_CANCEL, NULL);
    unsigned r, f;
    breaker_window(&b, &c, 1003, &r, &f);
    ASSERT_EQ(r, 0);
    breaker_dispose(&b);
}

TEST(state_names)
{
    ASSERT_STR_EQ(breaker_state_name(BREAKER_CLOSED), "closed");
    ASSERT_STR_EQ(breaker_state_name(BREAKER_OPEN), "open");
    ASSERT_STR_EQ(breaker_state_name(BREAKER_HALF_OPEN), "half_open");
    ASSERT_STR_EQ(breaker_state_name(BREAKER_QUOTA), "quota");
}

/* ---- concurrency ---- */

#define THREADS 4
#define ROUNDS  50000

struct worker {
    struct breaker *b;
    const struct conf_breaker *c;
    uint64_t passed, denied, probes, opened_seen;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    for (uint64_t i = 0; i < ROUNDS; i++) {
        /* time moves with the rounds, so every state is visited */
        uint64_t now = i / 4;
        struct breaker_transition tr = {0};
        enum breaker_admit how = breaker_admit(w->b, w->c, now, &tr);
        if (how == BREAKER_DENY) {
            w->denied++;
            continue;
        }
        if (how == BREAKER_PROBE)
            w->probes++;
        else
            w->passed++;
        breaker_report(w->b, w->c, now, how, i % 7 < 3 ? BREAKER_FAILURE : BREAKER_SUCCESS, &tr);
        if (tr.changed && tr.to == BREAKER_OPEN)
            w->opened_seen++;
    }
    return NULL;
}

TEST(concurrent_use_loses_no_counts)
{
    struct breaker b;
    breaker_init(&b);
    struct conf_breaker c = conf_default();
    c.open_ms = 20;
    c.max_open_ms = 80;
    c.window_ms = 100;
    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){&b, &c, 0, 0, 0, 0};
        ASSERT_EQ(pthread_create(&th[i], NULL, hammer, &w[i]), 0);
    }
    uint64_t denied = 0, opened = 0, total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        denied += w[i].denied;
        opened += w[i].opened_seen;
        total += w[i].passed + w[i].probes + w[i].denied;
    }
    ASSERT_EQ(total, (uint64_t)THREADS * ROUNDS);
    struct breaker_counts n;
    breaker_counts(&b, &n);
    ASSERT_EQ(n.rejected, denied);
    ASSERT_EQ(n.opened, opened);
    ASSERT_GT(n.opened, 0);
    ASSERT_EQ(n.state_changes, n.opened + n.half_opened + n.closed + n.quota);
    breaker_dispose(&b);
}

TEST_MAIN()
