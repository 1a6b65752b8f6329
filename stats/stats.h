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
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hist.h"
#include "common/strbuf.h"

/* Error causes: enum value, JSON key / Prometheus label, meaning. */
#define STATS_ERRORS(X)                                                                                    \
    X(CONNECT, connect, "upstream connect refused or failed")                                              \
    X(CONNECT_TIMEOUT, connect_timeout, "upstream connect_timeout")                                        \
    X(HEADER_TIMEOUT, header_timeout, "upstream header_timeout")                                           \
    X(IDLE_TIMEOUT, idle_timeout, "upstream idle_timeout mid-body")                                        \
    X(UPSTREAM_CLOSED, upstream_closed, "upstream closed or reset before a complete response")             \
    X(BAD_RESPONSE, bad_response, "malformed upstream response")                                           \
    X(CLIENT_CLOSED, client_closed, "client went away before the response was complete")                   \
    X(BAD_REQUEST, bad_request, "we answered 400/408/413/414/431")                                         \
    X(NO_ROUTE, no_route, "no route matched: 404")                                                         \
    X(DEADLINE, deadline, "the route's deadline passed before a response head")                            \
    X(BREAKER_OPEN, breaker_open, "every server's breaker was open: answered without trying")              \
    X(TLS, tls, "TLS handshake failed (client side or upstream, e.g. verification)")

enum stats_error {
#define STATS_ERR_ENUM_(e, name, help) STATS_ERR_##e,
    STATS_ERRORS(STATS_ERR_ENUM_)
#undef STATS_ERR_ENUM_
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
    _Atomic uint64_t slow;              /* took longer than slow_log_threshold */
    _Atomic uint64_t errors[STATS_ERR__COUNT];
    /* New counters go above this line, each with a row in stats.c's field
     * table: both renderers (JSON, Prometheus) and stats_sum follow the table. */
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

/* Every 64-bit counter word of a struct stats_counters (they all precede
 * the histogram), summed over the workers; STATS_TOTAL reads one by member. */
#define STATS_WORDS (offsetof(struct stats_counters, latency) / sizeof(uint64_t))
struct stats_total {
    uint64_t words[STATS_WORDS];
    struct hist_snapshot latency;
};
#define STATS_TOTAL(t, member) ((t)->words[offsetof(struct stats_counters, member) / sizeof(uint64_t)])

/* Sums every worker slot of a set (any thread). */
void stats_sum(struct stats_set *set, struct stats_total *out);

/* Process-wide counters and gauges that belong to no set (access log lines,
 * analytics rows, breaker and limiter totals...): the owner keeps the struct
 * in static storage, registers it once on the main thread before workers
 * start, and updates value with atomics from any thread.  Rendered under
 * "counters" in the JSON and as sluice_<name> in Prometheus. */
struct stats_global {
    const char *name; /* [a-z_]+; counters end in _total */
    const char *help;
    bool is_gauge;
    _Atomic uint64_t value;
    struct stats_global *next; /* registry link */
};
void stats_global_register(struct stats_global *g);
static inline void stats_global_add(struct stats_global *g, uint64_t n)
{
    atomic_fetch_add_explicit(&g->value, n, memory_order_relaxed);
}

/* Appends a JSON object {"NAME": {...}, ...} of every set of this kind:
 * requests, responses {"1xx":..,"5xx":..}, bytes_in, bytes_out, active,
 * pool_reuse, pool_new, retries_idle, errors {name: n}, latency_ms {p50, p95, p99, max, mean}. */
void stats_render_json_kind(struct strbuf *sb, const char *kind);
/* Appends {"name": value, ...} of the registered globals. */
void stats_render_json_globals(struct strbuf *sb);

/* Appends every set and global in the Prometheus text exposition format
 * 0.0.4: one family per counter row, named sluice_<kind>_<metric> with a
 * <kind>="<set name>" label, and sluice_<kind>_latency_seconds histograms. */
void stats_render_prometheus(struct strbuf *sb);
/* Prometheus helpers for callers adding their own families (admin.c). */
void stats_prom_family(struct strbuf *sb, const char *name, const char *type, const char *help);
void stats_prom_label_value(struct strbuf *sb, const char *value);

#endif
