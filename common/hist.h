/* SPDX-License-Identifier: MIT */
/*
 * hist: a fixed-bucket latency histogram in microseconds, log-linear
 * (exact below 16 us, then 8 sub-buckets per power of two: relative error
 * under 12.5 %), from 0 to beyond an hour.  Recording is an index computation
 * and one increment.  Each worker owns its histograms (single writer, relaxed
 * atomics), a reader merges them with hist_merge and asks for quantiles.
 */
#ifndef SLUICE_HIST_H
#define SLUICE_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#define HIST_BUCKETS 272

struct hist {
    _Atomic uint64_t buckets[HIST_BUCKETS];
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
    _Atomic uint64_t max_us;
};

/* A plain copy for merging and reading. */
struct hist_snapshot {
    uint64_t buckets[HIST_BUCKETS];
    uint64_t count;
    uint64_t sum_us;
    uint64_t max_us;
};

unsigned hist_bucket_of(uint64_t us);
/* The largest value that falls in bucket i (its inclusive upper bound). */
uint64_t hist_bucket_upper(unsigned i);

/* Single writer only (the owning worker). */
void hist_record(struct hist *h, uint64_t us);

void hist_snapshot_clear(struct hist_snapshot *s);
/* Adds h (read with relaxed loads, from any thread) into s. */
void hist_merge(struct hist_snapshot *s, const struct hist *h);
/* The value at quantile q (0..1): the upper bound of the bucket holding it,
 * capped at max_us.  0 when the histogram is empty. */
uint64_t hist_quantile(const struct hist_snapshot *s, double q);

#endif
