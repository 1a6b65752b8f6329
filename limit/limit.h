/* SPDX-License-Identifier: MIT */
/*
 * limit: admission control — rate limits (GCRA, local or global through
 * Redis) and in-flight limits with a bounded FIFO queue.
 *
 * Rate limits.  `rate N/P; burst B` lets N requests through per period P on
 * average and up to N + B at once: GCRA with an emission interval T = P / N
 * and a capacity of N + B, so a key's whole state is one time, its TAT
 * (theoretical arrival time).  A request at `now` is allowed when
 * max(TAT, now) + T - now <= (N + B) * T, which then becomes the new TAT.
 * - Local: one store per conf limit for the whole process, shared by every
 *   worker (exact: a key is only read and written under its shard's lock).
 *   The store is sharded by key hash; each shard has a chained hash, an LRU
 *   list and at most max_keys / shards entries.  A new key in a full shard
 *   takes the least recently used entry's place: usually an idle key whose
 *   TAT is in the past, which holds no information (a fresh key has the same
 *   state); otherwise the least recently used live key is forgotten (it
 *   gets its full quota back: the bound on memory wins).  Every check also
 *   drops up to two expired keys from the LRU tail, so idle keys go away.
 * - Global: limit_redis.c runs one Lua script (EVALSHA, EVAL on NOSCRIPT)
 *   that checks every global limit of a request atomically against the
 *   Redis server's own clock and commits only when all allow.
 * - Keys are a SHA-256 (truncated to 128 bits) of the limit name and the
 *   key parts, so header values (Authorization) are never stored in clear,
 *   in memory or in Redis, and collisions do not matter.
 * - Limits are found by name (limit_get) and kept across reloads; a change of
 *   rate or burst starts the limit afresh.
 *
 * In-flight limits.  A process-wide counter and FIFO per route or upstream:
 * limit_inflight_acquire admits, queues (a bounded list of waiters, in
 * arrival order across workers) or refuses; limit_inflight_done hands the
 * slot to the oldest waiter and calls its wake callback, under the limit's
 * lock, so a waiter that cancels concurrently sees either "still queued" or
 * "granted" and never a half-done wake.
 *
 * Threading: limit_get, limit_inflight_get and limit_shutdown_all on the
 * main thread (they lock a registry anyway); everything else from any
 * thread.
 */
#ifndef SLUICE_LIMIT_H
#define SLUICE_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"
#include "conf/conf.h"

struct redis_conn;

/* At most this many limits on one route (conf refuses more). */
#define LIMIT_ROUTE_MAX CONF_ROUTE_LIMITS_MAX
/* Shards of a local store at most (fewer for a small max_keys). */
#define LIMIT_SHARDS_MAX 64

struct limit;

struct limit_key {
    unsigned char b[16];
};

/* What a check decided; times in milliseconds, rounded up. */
struct limit_result {
    bool is_allowed;
    uint64_t limit;     /* capacity: rate + burst */
    uint64_t remaining; /* requests still allowed at once after this one */
    uint64_t reset_ms;  /* until the full capacity is back */
    uint64_t retry_ms;  /* denied: until one request would pass */
};

/* The GCRA step on one TAT (any time unit: now, t the emission interval).
 * Allowed: *tat advances and the result says so; denied: *tat is left.
 * Times in r are in the same unit as now. */
bool limit_gcra(uint64_t *tat, uint64_t now, uint64_t t, uint64_t cap, struct limit_result *r);

/* Finds (by name) or creates the process-wide state of a conf limit; a
 * changed rate or burst resets it, a changed max_keys applies to later
 * inserts.  NULL only on ENOMEM.  Never freed before limit_shutdown_all. */
struct limit *limit_get(const struct conf_limit *cl);
const char *limit_name(const struct limit *l);
/* The emission interval (µs) and capacity the global script uses. */
uint64_t limit_interval_us(struct limit *l);
uint64_t limit_capacity(struct limit *l);

/* The key of a request: parts[i] is lens[i] bytes. */
void limit_key_make(const struct limit *l, const char *const *parts, const size_t *lens, size_t n,
                    struct limit_key *out);

/* Checks one request against the local store at now_ns (CLOCK_MONOTONIC,
 * uv_hrtime) and counts it.  With is_fallback, it is also counted as a Redis
 * fallback. */
void limit_check(struct limit *l, const struct limit_key *k, uint64_t now_ns, bool is_fallback,
                 struct limit_result *out);
/* Gives back one request an earlier limit_check allowed (a later limit of
 * the same request refused it). */
void limit_refund(struct limit *l, const struct limit_key *k);

/* Counters kept for global limits (any thread). */
void limit_count(struct limit *l, bool is_allowed);
void limit_count_redis_error(struct limit *l);
void limit_count_fallback(struct limit *l);

/* Drops expired keys from every shard's LRU tail (reading stats does it). */
void limit_sweep(struct limit *l, uint64_t now_ns);

/* What the admin endpoints show of a limit (JSON and Prometheus alike). */
struct limit_totals {
    const char *name;
    uint64_t allowed, limited, keys, max_keys, evictions, redis_errors, fallbacks;
};
/* Calls cb for every limit, in creation order (expired keys are dropped first). */
void limit_foreach(void (*cb)(const struct limit_totals *t, void *arg), void *arg, uint64_t now_ns);

/* ---- global limits (limit_redis.c) ---- */

/* Completion of limit_redis_check, exactly once, on the connection's loop,
 * never before limit_redis_check returned: status 0 with one result per
 * limit (the request was committed in all of them, or in none when any
 * refused), or a negative errno (Redis down, slow, or an error reply). */
typedef void (*limit_redis_cb)(void *arg, int status, const struct limit_result *results, size_t n);

/* Runs the GCRA script for n (<= LIMIT_ROUTE_MAX) global limits and their
 * keys.  0: cb will run; else a negative errno and cb never runs. */
int limit_redis_check(struct redis_conn *r, struct limit *const *ls, const struct limit_key *keys, size_t n,
                      limit_redis_cb cb, void *arg);

/* ---- in-flight limits ---- */

struct limit_inflight;

struct limit_waiter {
    struct list link;
    void (*wake)(struct limit_waiter *w); /* granted: called under the limit's lock, from any thread */
    void *owner;
};

enum limit_admit { LIMIT_ADMITTED, LIMIT_QUEUED, LIMIT_FULL };

/* Finds (by kind and name: "route" and its stats name, or "upstream" and
 * its name) or creates the in-flight limit, named "KIND NAME" in stats; the
 * values of m apply from now on.  Never freed before limit_shutdown_all. */
struct limit_inflight *limit_inflight_get(const char *kind, const char *name, const struct conf_max_inflight *m);
/* Takes a slot (ADMITTED), queues w (QUEUED: w->wake runs once a slot is
 * handed over; the caller must then hold and later release it) or refuses
 * (FULL: the queue is full). */
enum limit_admit limit_inflight_acquire(struct limit_inflight *li, struct limit_waiter *w);
/* Leaves the queue: false when w was still waiting (it is out now); true
 * when a slot was handed to w already (the caller holds it: release it). */
bool limit_inflight_cancel(struct limit_inflight *li, struct limit_waiter *w, bool is_timeout);
/* Releases a slot: the oldest waiter gets it, or the count drops. */
void limit_inflight_done(struct limit_inflight *li);
uint64_t limit_inflight_timeout_ms(const struct limit_inflight *li);
struct limit_inflight_totals {
    const char *name; /* "route NAME" or "upstream NAME" */
    unsigned max, queue_max, inflight, queued;
    uint64_t admitted, rejected, timeouts;
};
void limit_inflight_foreach(void (*cb)(const struct limit_inflight_totals *t, void *arg), void *arg);

/* Frees every limit and in-flight limit (at exit, no worker left). */
void limit_shutdown_all(void);

#endif
