/* SPDX-License-Identifier: MIT */
/*
 * hist: log-linear buckets.  Values 0..15 get a bucket each.  Above that,
 * each power of two [2^k, 2^(k+1)) is split into 8 equal sub-buckets of width
 * 2^(k-3), so a bucket's width is at most 1/8 of any value in it.  With 272
 * buckets the last power covered is k = 35, i.e. everything below 2^36 us
 * (19 hours); larger values clamp into the last bucket, whose upper bound is
 * therefore UINT64_MAX (quantiles are capped at max_us anyway).
 *
 * Threading: hist_record has a single writer, so it uses relaxed load+store
 * instead of read-modify-write; readers see each word tear-free and at worst
 * a record that is half applied (bucket counted, count not yet).
 */
#include "common/hist.h"

#include <string.h>

#define HIST_EXACT     16u /* values below this have a bucket of their own */
#define HIST_SUB_BITS  3u
#define HIST_SUB       (1u << HIST_SUB_BITS)
#define HIST_FIRST_POW 4u /* log2(HIST_EXACT) */

_Static_assert(HIST_BUCKETS == HIST_EXACT + HIST_SUB * (36 - HIST_FIRST_POW),
               "HIST_BUCKETS must cover exactly the powers of two up to 2^36");

unsigned hist_bucket_of(uint64_t us)
{
    if (us < HIST_EXACT)
        return (unsigned)us;
    unsigned k = 63u - (unsigned)__builtin_clzll(us);
    unsigned sub = (unsigned)(us >> (k - HIST_SUB_BITS)) & (HIST_SUB - 1);
    unsigned i = HIST_EXACT + (k - HIST_FIRST_POW) * HIST_SUB + sub;
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

uint64_t hist_bucket_upper(unsigned i)
{
    if (i < HIST_EXACT)
        return i;
    if (i >= HIST_BUCKETS - 1)
        return UINT64_MAX;
    unsigned k = HIST_FIRST_POW + (i - HIST_EXACT) / HIST_SUB;
    uint64_t sub = (i - HIST_EXACT) % HIST_SUB;
    return ((HIST_SUB + sub + 1) << (k - HIST_SUB_BITS)) - 1;
}

static void add_relaxed(_Atomic uint64_t *p, uint64_t n)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n, memory_order_relaxed);
}

void hist_record(struct hist *h, uint64_t us)
{
    add_relaxed(&h->buckets[hist_bucket_of(us)], 1);
    add_relaxed(&h->count, 1);
    add_relaxed(&h->sum_us, us);
    if (us > atomic_load_explicit(&h->max_us, memory_order_relaxed))
        atomic_store_explicit(&h->max_us, us, memory_order_relaxed);
}

void hist_snapshot_clear(struct hist_snapshot *s)
{
    memset(s, 0, sizeof(*s));
}

void hist_merge(struct hist_snapshot *s, const struct hist *h)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        s->buckets[i] += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
    s->count += atomic_load_explicit(&h->count, memory_order_relaxed);
    s->sum_us += atomic_load_explicit(&h->sum_us, memory_order_relaxed);
    uint64_t max = atomic_load_explicit(&h->max_us, memory_order_relaxed);
    if (max > s->max_us)
        s->max_us = max;
}

uint64_t hist_quantile(const struct hist_snapshot *s, double q)
{
    /* The rank is taken against the buckets themselves, not s->count: a
     * snapshot read while a worker records may have the two off by a few. */
    uint64_t total = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        total += s->buckets[i];
    if (total == 0)
        return 0;
    if (!(q > 0)) /* also NaN */
        q = 0;
    if (q > 1)
        q = 1;
    double want = q * (double)total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    if (rank > total)
        rank = total;
    uint64_t seen = 0;
    unsigned i = 0;
    for (; i < HIST_BUCKETS - 1; i++) {
        seen += s->buckets[i];
        if (seen >= rank)
            break;
    }
    uint64_t upper = hist_bucket_upper(i);
    return upper < s->max_us ? upper : s->max_us;
}
