/* SPDX-License-Identifier: MIT */
#include "common/hist.h"

#include "test/unit/test.h"

static struct hist h;

static struct hist_snapshot snapshot_of(const struct hist *one)
{
    struct hist_snapshot s;
    hist_snapshot_clear(&s);
    hist_merge(&s, one);
    return s;
}

TEST(bucket_bounds_are_contiguous_and_monotonic)
{
    ASSERT_EQ(hist_bucket_of(0), 0);
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        uint64_t up = hist_bucket_upper(i);
        ASSERT_EQ(hist_bucket_of(up), i);
        if (i > 0) {
            uint64_t lo = hist_bucket_upper(i - 1) + 1;
            ASSERT(lo <= up); /* not ASSERT_LE: the last upper bound is UINT64_MAX */
            ASSERT_EQ(hist_bucket_of(lo), i);
            ASSERT_EQ(hist_bucket_of(lo - 1), i - 1);
            /* The width of a bucket is at most 1/8 of its lower bound. */
            if (lo >= 16 && i < HIST_BUCKETS - 1)
                ASSERT_LE((up - lo + 1) * 8, lo);
        }
    }
    for (uint64_t v = 0; v < 100000; v++)
        ASSERT_LE(hist_bucket_of(v), hist_bucket_of(v + 1));
}

TEST(exact_below_16)
{
    for (unsigned v = 0; v < 16; v++) {
        ASSERT_EQ(hist_bucket_of(v), v);
        ASSERT_EQ(hist_bucket_upper(v), v);
    }
    ASSERT_EQ(hist_bucket_of(16), 16);
    ASSERT_EQ(hist_bucket_of(17), 16);
    ASSERT_EQ(hist_bucket_of(18), 17);
}

TEST(covers_2_pow_36_and_clamps_beyond)
{
    uint64_t top = (1ull << 36) - 1;
    ASSERT_EQ(hist_bucket_of(top), HIST_BUCKETS - 1);
    ASSERT_LT(hist_bucket_of(top - (1ull << 32)), HIST_BUCKETS - 1);
    ASSERT_EQ(hist_bucket_of(1ull << 36), HIST_BUCKETS - 1);
    ASSERT_EQ(hist_bucket_of(UINT64_MAX), HIST_BUCKETS - 1);
    ASSERT(hist_bucket_upper(HIST_BUCKETS - 1) == UINT64_MAX);
    ASSERT(hist_bucket_upper(HIST_BUCKETS - 2) == top - (1ull << 32));

    hist_record(&h, UINT64_MAX / 4);
    struct hist_snapshot s = snapshot_of(&h);
    ASSERT(hist_quantile(&s, 0.5) == UINT64_MAX / 4);
}

TEST(empty)
{
    struct hist_snapshot s = snapshot_of(&h);
    ASSERT_EQ(s.count, 0);
    ASSERT_EQ(s.max_us, 0);
    ASSERT_EQ(hist_quantile(&s, 0.0), 0);
    ASSERT_EQ(hist_quantile(&s, 0.5), 0);
    ASSERT_EQ(hist_quantile(&s, 1.0), 0);
}

static void assert_close(uint64_t got, uint64_t want)
{
    /* got is a bucket's upper bound: at or above the true value, at most 12.5 % over. */
    if (got < want || (double)got > (double)want * 1.125)
        TEST_FAIL("quantile %llu not within 12.5%% above %llu", (unsigned long long)got,
                  (unsigned long long)want);
}

TEST(quantiles_uniform)
{
    for (uint64_t v = 1; v <= 100000; v++)
        hist_record(&h, v);
    struct hist_snapshot s = snapshot_of(&h);
    ASSERT_EQ(s.count, 100000);
    ASSERT_EQ(s.sum_us, 100000ull * 100001 / 2);
    ASSERT_EQ(s.max_us, 100000);
    assert_close(hist_quantile(&s, 0.5), 50000);
    assert_close(hist_quantile(&s, 0.95), 95000);
    assert_close(hist_quantile(&s, 0.99), 99000);
    ASSERT_EQ(hist_quantile(&s, 1.0), 100000);
    ASSERT_EQ(hist_quantile(&s, 0.0), 1);
    ASSERT_EQ(hist_quantile(&s, 0.00001), 1);
    /* Out-of-range q is clamped. */
    ASSERT_EQ(hist_quantile(&s, 7.0), 100000);
    ASSERT_EQ(hist_quantile(&s, -1.0), 1);
}

TEST(quantiles_exact_small_values)
{
    /* 90 x 3 us, 10 x 12 us: every value is in an exact bucket. */
    for (int i = 0; i < 90; i++)
        hist_record(&h, 3);
    for (int i = 0; i < 10; i++)
        hist_record(&h, 12);
    struct hist_snapshot s = snapshot_of(&h);
    ASSERT_EQ(hist_quantile(&s, 0.5), 3);
    ASSERT_EQ(hist_quantile(&s, 0.9), 3); /* rank 90 is the last 3 */
    ASSERT_EQ(hist_quantile(&s, 0.91), 12);
    ASSERT_EQ(hist_quantile(&s, 0.99), 12);
}

TEST(quantiles_geometric_and_capped_at_max)
{
    /* Values spread over many powers of two: 1000 each of 2^k + 3 for k = 4..30. */
    for (unsigned k = 4; k <= 30; k++)
        for (int i = 0; i < 1000; i++)
            hist_record(&h, (1ull << k) + 3);
    struct hist_snapshot s = snapshot_of(&h);
    for (unsigned k = 4; k <= 30; k++) {
        /* Rank (k-3)*1000 is the last sample equal to 2^k + 3. */
        double q = (double)((k - 3) * 1000) / (double)s.count;
        uint64_t got = hist_quantile(&s, q);
        if (k == 30)
            ASSERT_EQ(got, (1ull << 30) + 3); /* capped at max */
        else
            assert_close(got, (1ull << k) + 3);
    }
}

TEST(merge_several)
{
    static struct hist parts[4];
    uint64_t total = 0, sum = 0;
    for (unsigned p = 0; p < 4; p++) {
        for (uint64_t v = 0; v < 1000 * (p + 1); v++) {
            uint64_t x = v * (p + 1) * 37 % 5000000;
            hist_record(&parts[p], x);
            total++;
            sum += x;
        }
    }
    struct hist_snapshot s;
    hist_snapshot_clear(&s);
    for (unsigned p = 0; p < 4; p++)
        hist_merge(&s, &parts[p]);
    ASSERT_EQ(s.count, total);
    ASSERT_EQ(s.sum_us, sum);
    uint64_t buckets = 0, max = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        buckets += s.buckets[i];
    for (unsigned p = 0; p < 4; p++) {
        uint64_t m = atomic_load(&parts[p].max_us);
        max = m > max ? m : max;
    }
    ASSERT_EQ(buckets, total);
    ASSERT_EQ(s.max_us, max);
    ASSERT_EQ(hist_quantile(&s, 1.0), max);

    /* Merging one histogram's parts equals recording everything in one. */
    static struct hist all;
    for (unsigned p = 0; p < 4; p++)
        for (uint64_t v = 0; v < 1000 * (p + 1); v++)
            hist_record(&all, v * (p + 1) * 37 % 5000000);
    struct hist_snapshot one = snapshot_of(&all);
    ASSERT(memcmp(&one, &s, sizeof(s)) == 0);
}

TEST_MAIN()
