/* SPDX-License-Identifier: MIT */
/*
 * stats: counters and latency histograms for routes, upstream servers and the
 * process, read by the admin endpoint.
 *
 * Design: a process-wide registry of named counter sets ("route" "/api/",
 * "server" "backend/127.0.0.1:8000", "process" "all").  A set is found or
 * created by name on the main thread when a conf is loaded, so its counters
 * survive SIGHUP reloads; sets are never freed (their number is bounded by the
 * names ever configured).  Each set holds one struct stats_counters per
 * worker, cache-line aligned: a worker is the single writer of its own slot
 * (STATS_ADD: relaxed load + store, no lock, no RMW), readers on any thread sum
 * the slots with relaxed loads.
 */
#ifndef SLUICE_STATS_H
#define SLUICE_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/hist.h"
#include "common/strbuf.h"

enum stats_error {
    STATS_ERR_CONNECT = 0,     /* upstream connect refused or failed */
    STATS_ERR_CONNECT_TIMEOUT, /* upstream connect_timeout */
    STATS_ERR_HEADER_TIMEOUT,  /* upstream header_timeout */
    STATS_ERR_IDLE_TIMEOUT,    /* upstream idle_timeout mid-body */
    STATS_ERR_UPSTREAM_CLOSED, /* upstream closed or reset before a complete response */
    STATS_ERR_BAD_RESPONSE,    /* malformed upstream response */
    STATS_ERR_CLIENT_CLOSED,   /* client went away before the response was complete */
    STATS_ERR_BAD_REQUEST,     /* we answered 400/408/413/414/431 */
    STATS_ERR_NO_ROUTE,        /* no route matched: 404 */
    STATS_ERR_DEADLINE,        /* the route's deadline passed before a response head */
    STATS_ERR_BREAKER_OPEN,    /* every server's breaker was open: answered without trying */
    STATS_ERR_TLS,             /* TLS handshake failed (client side or upstream, e.g. verification) */
    STATS_ERR__COUNT
};

/* Names used as JSON keys, indexed by enum stats_error. */
extern const char *const stats_error_names[STATS_ERR__COUNT];

struct stats_counters {
    _Atomic uint64_t requests;
    _Atomic uint64_t status[6]; /* [0]: no status sent; [1..5]: 1xx..5xx */
    _Atomic uint64_t bytes_in;  /* from the client (route) or the upstream (server) */
    _Atomic uint64_t bytes_out; /* to the client (route) or the upstream (server) */
    _Atomic int64_t active;     /* gauge: requests in flight / open connections */
    _Atomic uint64_t pool_reuse; /* requests sent on a pooled keep-alive connection */
    _Atomic uint64_t pool_new;   /* requests that needed a new connection */
    _Atomic uint64_t retries_idle; /* idempotent requests resent after a pooled connection died */
    _Atomic uint64_t retries;                /* tries after the first (route; server: tries it received as a retry) */
    _Atomic uint64_t retry_budget_exhausted; /* a retry the retry budget refused */
    _Atomic uint64_t retry_unreplayable;     /* a retry refused: the body sent was not kept (too large) */
    _Atomic uint64_t retry_unsafe;           /* a retry refused: a non-idempotent request that reached the upstream */
    _Atomic uint64_t retry_deadline;         /* a retry refused: the wait would pass the deadline */
    _Atomic uint64_t cache_hit;         /* answered from a stored response (fresh, or stale-while-revalidate) */
    _Atomic uint64_t cache_miss;        /* went upstream to fill the cache */
    _Atomic uint64_t cache_stale;       /* answered stale because the upstream failed (stale-if-error) */
    _Atomic uint64_t cache_revalidated; /* a stored response freshened by a 304 */
    _Atomic uint64_t cache_coalesced;   /* joined another request's fill instead of going upstream */
    _Atomic uint64_t cache_redis_hit;   /* a memory miss found in the Redis tier */
    _Atomic uint64_t cache_redis_error; /* the Redis tier failed, was down or slow: the origin answered */
    _Atomic uint64_t errors[STATS_ERR__COUNT];
    struct hist latency; /* route: first byte -> response complete; server: request sent -> head */
} __attribute__((aligned(64)));

#define STATS_ADD(field, n)                                                                                \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),            \
                          memory_order_relaxed)
#define STATS_INC(field) STATS_ADD(field, 1)

struct stats_set;

/* Sets the number of worker slots each set holds.  Call once, before the
 * first stats_set_get. */
void stats_init(unsigned nworkers);
unsigned stats_nworkers(void);

/* Finds or creates the set (kind, name).  Main thread (or under any single
 * thread at a time); returned pointers stay valid for the process lifetime. */
struct stats_set *stats_set_get(const char *kind, const char *name);

/* The slot of one worker: only that worker writes it. */
struct stats_counters *stats_slot(struct stats_set *set, unsigned worker);

/* Sums every worker slot of a set (any thread). */
struct stats_total {
    uint64_t requests, status[6], bytes_in, bytes_out, pool_reuse, pool_new, retries_idle;
    uint64_t retries, retry_budget_exhausted, retry_unreplayable, retry_unsafe, retry_deadline;
    uint64_t cache_hit, cache_miss, cache_stale, cache_revalidated, cache_coalesced, cache_redis_hit,
        cache_redis_error;
    int64_t active;
    uint64_t errors[STATS_ERR__COUNT];
    struct hist_snapshot latency;
};
void stats_sum(struct stats_set *set, struct stats_total *out);

/* Appends a JSON object {"NAME": {...}, ...} of every set of this kind:
 * requests, responses {"1xx":..,"5xx":..}, bytes_in, bytes_out, active,
 * pool_reuse, pool_new, retries_idle, errors {name: n}, latency_ms {p50, p95, p99, max, mean}. */
void stats_render_json_kind(struct strbuf *sb, const char *kind);

#endif
