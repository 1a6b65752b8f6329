/* SPDX-License-Identifier: MIT */
#include "breaker/retry.h"

#include <pthread.h>

#include "test/unit/test.h"

#define S(lit) lit, sizeof(lit) - 1

TEST(budget_min_floor)
{
    struct retry_budget b;
    retry_budget_init(&b);
    /* no first tries at all: the floor of 2/s over 10 s allows 20 */
    int taken = 0;
    for (int i = 0; i < 100; i++)
        taken += retry_budget_take(&b, 20, 2, 5000);
    ASSERT_EQ(taken, 20);
    uint64_t req, ret;
    retry_budget_counts(&b, 5000, &req, &ret);
    ASSERT_EQ(req, 0);
    ASSERT_EQ(ret, 20);
    retry_budget_dispose(&b);
}

TEST(budget_percentage)
{
    struct retry_budget b;
    retry_budget_init(&b);
    /* 1000 first tries spread over 5 s: 20% = 200 retries, above the floor of 10 */
    for (int i = 0; i < 1000; i++)
        retry_budget_request(&b, (uint64_t)i * 5);
    int taken = 0;
    for (int i = 0; i < 1000; i++)
        taken += retry_budget_take(&b, 20, 1, 5000);
    ASSERT_EQ(taken, 200);
    /* each further first try earns a fifth of a retry */
    for (int i = 0; i < 10; i++)
        retry_budget_request(&b, 5000);
    taken = 0;
    for (int i = 0; i < 10; i++)
        taken += retry_budget_take(&b, 20, 1, 5000);
    ASSERT_EQ(taken, 2);
    retry_budget_dispose(&b);
}

TEST(budget_window_expiry)
{
    struct retry_budget b;
    retry_budget_init(&b);
    for (int i = 0; i < 100; i++)
        retry_budget_request(&b, 0);
    int taken = 0;
    for (int i = 0; i < 100; i++)
        taken += retry_budget_take(&b, 50, 0, 999);
    ASSERT_EQ(taken, 50);
    /* still in the window 9 s later */
    ASSERT(!retry_budget_take(&b, 50, 0, 9999));
    /* 10 s later the second 0 has left: nothing counted, nothing allowed (no floor) */
    uint64_t req, ret;
    retry_budget_counts(&b, 10000, &req, &ret);
    ASSERT_EQ(req, 0);
    ASSERT_EQ(ret, 0);
    ASSERT(!retry_budget_take(&b, 50, 0, 10000));
    /* and a long silence then the same bucket index again: reset, not reused */
    retry_budget_request(&b, 100000);
    retry_budget_request(&b, 100000);
    retry_budget_counts(&b, 100000, &req, &ret);
    ASSERT_EQ(req, 2);
    ASSERT(retry_budget_take(&b, 50, 0, 100000));
    ASSERT(!retry_budget_take(&b, 50, 0, 100000));
    retry_budget_dispose(&b);
}

TEST(backoff_bounds)
{
    uint64_t seen_max[6] = {0};
    for (int i = 0; i < 100000; i++) {
        for (unsigned a = 0; a < 6; a++) {
            uint64_t d = backoff_full_jitter(100, 2000, a, retry_random());
            uint64_t ceiling = 100u << a < 2000 ? 100u << a : 2000;
            ASSERT_LE(d, ceiling);
            if (d > seen_max[a])
                seen_max[a] = d;
        }
    }
    /* the samples reach near the top of each range: it is not stuck low */
    for (unsigned a = 0; a < 6; a++) {
        uint64_t ceiling = 100u << a < 2000 ? 100u << a : 2000;
        ASSERT_GE(seen_max[a], ceiling * 9 / 10);
    }
    ASSERT_EQ(backoff_full_jitter(100, 2000, 0, 100), 100);
    ASSERT_EQ(backoff_full_jitter(100, 2000, 0, 101), 0);
    /* huge attempts and bases stay under the cap */
    for (unsigned a = 60; a < 70; a++)
        ASSERT_LE(backoff_full_jitter(100, 2000, a, UINT64_MAX - 1), 2000);
    ASSERT_LE(backoff_full_jitter(UINT64_MAX / 2, 5000, 3, retry_random()), 5000);
    ASSERT_EQ(backoff_full_jitter(0, 5000, 10, 12345), 0);
    ASSERT_EQ(backoff_full_jitter(1, UINT64_MAX, 200, 42), 42);
}

static void *draw(void *arg)
{
    uint64_t *out = arg;
    for (int i = 0; i < 4; i++)
        out[i] = retry_random();
    return NULL;
}

TEST(random_differs_per_thread)
{
    uint64_t a[4], b[4];
    pthread_t t1, t2;
    pthread_create(&t1, NULL, draw, a);
    pthread_create(&t2, NULL, draw, b);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ASSERT(memcmp(a, b, sizeof(a)) != 0);
    ASSERT_NE(a[0], a[1]);
}

TEST(retry_after_delta_seconds)
{
    ASSERT_EQ(retry_after_ms(S("120"), 0), 120000);
    ASSERT_EQ(retry_after_ms(S(" 0 "), 0), 0);
    ASSERT_EQ(retry_after_ms(S("99999999999999999999999"), 0), INT64_MAX / 4);
    ASSERT_EQ(retry_after_ms(S("-5"), 0), -1);
    ASSERT_EQ(retry_after_ms(S("1.5"), 0), -1);
    ASSERT_EQ(retry_after_ms(S("12abc"), 0), -1);
    ASSERT_EQ(retry_after_ms(S(""), 0), -1);
    ASSERT_EQ(retry_after_ms(NULL, 0, 0), -1);
}

TEST(retry_after_http_date)
{
    /* Sun, 06 Nov 1994 08:49:37 GMT = 784111777 */
    int64_t now = INT64_C(784111777) * 1000 - 30500;
    ASSERT_EQ(retry_after_ms(S("Sun, 06 Nov 1994 08:49:37 GMT"), now), 30500);
    /* the obsolete forms are accepted too (RFC 9110 5.6.7) */
    ASSERT_EQ(retry_after_ms(S("Sunday, 06-Nov-94 08:49:37 GMT"), now), 30500);
    ASSERT_EQ(retry_after_ms(S("Sun Nov  6 08:49:37 1994"), now), 30500);
    /* in the past: now */
    ASSERT_EQ(retry_after_ms(S("Sun, 06 Nov 1994 08:49:37 GMT"), now + 60000), 0);
    ASSERT_EQ(retry_after_ms(S("Sun, 06 Nov 1994 08:49:37 UTC"), now), -1);
    ASSERT_EQ(retry_after_ms(S("Sun, 36 Nov 1994 08:49:37 GMT"), now), -1);
    ASSERT_EQ(retry_after_ms(S("tomorrow"), now), -1);
}

TEST(ratelimit_reset_durations)
{
    ASSERT_EQ(ratelimit_reset_ms(S("1s"), 0), 1000);
    ASSERT_EQ(ratelimit_reset_ms(S("6m0s"), 0), 360000);
    ASSERT_EQ(ratelimit_reset_ms(S("20ms"), 0), 20);
    ASSERT_EQ(ratelimit_reset_ms(S("1h2m3.5s"), 0), 3723500);
    ASSERT_EQ(ratelimit_reset_ms(S("0.25s"), 0), 250);
    ASSERT_EQ(ratelimit_reset_ms(S("2h"), 0), 7200000);
    ASSERT_EQ(ratelimit_reset_ms(S("1m30s500ms"), 0), 90500);
    ASSERT_EQ(ratelimit_reset_ms(S("1x"), 0), -1);
    ASSERT_EQ(ratelimit_reset_ms(S("1s2"), 0), -1);
    ASSERT_EQ(ratelimit_reset_ms(S("s"), 0), -1);
    ASSERT_EQ(ratelimit_reset_ms(S("-1s"), 0), -1);
    ASSERT_EQ(ratelimit_reset_ms(S("99999999999999999999h"), 0), INT64_MAX / 4);
}

TEST(ratelimit_reset_numbers)
{
    int64_t now = INT64_C(1700000000) * 1000;
    ASSERT_EQ(ratelimit_reset_ms(S("30"), now), 30000);
    ASSERT_EQ(ratelimit_reset_ms(S(" 1.5 "), now), 1500);
    ASSERT_EQ(ratelimit_reset_ms(S("0"), now), 0);
    /* unix times */
    ASSERT_EQ(ratelimit_reset_ms(S("1700000042"), now), 42000);
    ASSERT_EQ(ratelimit_reset_ms(S("1700000000.5"), now), 500);
    ASSERT_EQ(ratelimit_reset_ms(S("1600000000"), now), 0);
    ASSERT_EQ(ratelimit_reset_ms(S("1700000001500"), now), 1500);
    ASSERT_EQ(ratelimit_reset_ms(S(""), now), -1);
    ASSERT_EQ(ratelimit_reset_ms(S("."), now), -1);
    ASSERT_EQ(ratelimit_reset_ms(S("abc"), now), -1);
    ASSERT_EQ(ratelimit_reset_ms(NULL, 0, now), -1);
}

TEST_MAIN()
