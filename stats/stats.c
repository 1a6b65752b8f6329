/* SPDX-License-Identifier: MIT */
/*
 * stats: the registry of counter sets.
 *
 * Sets live in a chained hash keyed by (kind, name) for find-or-create, and
 * on a list in creation order for rendering.  One mutex guards both; it is
 * taken only by stats_set_get (conf load) and briefly by the readers (admin
 * page), never on the request path, which touches its own slot through a
 * pointer obtained at load time.  Sets are never freed.
 */
#include "stats/stats.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATS_HASH_MIN 64

struct stats_set {
    struct stats_set *hash_next;
    struct stats_set *order_next;
    char *kind;
    char *name;
    uint64_t hash;
    struct stats_counters *slots; /* stats_nworkers_ entries, cache-line aligned */
};

const char *const stats_error_names[STATS_ERR__COUNT] = {
    [STATS_ERR_CONNECT] = "connect",
    [STATS_ERR_CONNECT_TIMEOUT] = "connect_timeout",
    [STATS_ERR_HEADER_TIMEOUT] = "header_timeout",
    [STATS_ERR_IDLE_TIMEOUT] = "idle_timeout",
    [STATS_ERR_UPSTREAM_CLOSED] = "upstream_closed",
    [STATS_ERR_BAD_RESPONSE] = "bad_response",
    [STATS_ERR_CLIENT_CLOSED] = "client_closed",
    [STATS_ERR_BAD_REQUEST] = "bad_request",
    [STATS_ERR_NO_ROUTE] = "no_route",
    [STATS_ERR_DEADLINE] = "deadline",
    [STATS_ERR_BREAKER_OPEN] = "breaker_open",
    [STATS_ERR_TLS] = "tls",
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stats_set **registry_hash; /* registry_hash_size chains */
static size_t registry_hash_size;
static size_t registry_count;
static struct stats_set *registry_first, *registry_last;
/* Written once by stats_init before any worker exists; 1 if never called. */
static unsigned stats_nworkers_ = 1;

static void *xalloc(void *p)
{
    if (p == NULL) {
        fputs("stats: out of memory\n", stderr);
        abort();
    }
    return p;
}

void stats_init(unsigned nworkers)
{
    pthread_mutex_lock(&registry_lock);
    assert(registry_count == 0 && "stats_init after the first stats_set_get");
    stats_nworkers_ = nworkers ? nworkers : 1;
    pthread_mutex_unlock(&registry_lock);
}

unsigned stats_nworkers(void)
{
    return stats_nworkers_;
}

/* FNV-1a over kind, a NUL separator, then name. */
static uint64_t key_hash(const char *kind, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = kind;; p++) {
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        if (*p == '\0')
            break;
    }
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return h;
}

/* Doubles the chain table once the load factor passes 1; lock held. */
static void grow_hash(void)
{
    size_t size = registry_hash_size ? registry_hash_size * 2 : STATS_HASH_MIN;
    struct stats_set **table = xalloc(calloc(size, sizeof(*table)));
    for (struct stats_set *s = registry_first; s; s = s->order_next) {
        size_t b = s->hash & (size - 1);
        s->hash_next = table[b];
        table[b] = s;
    }
    free(registry_hash);
    registry_hash = table;
    registry_hash_size = size;
}

struct stats_set *stats_set_get(const char *kind, const char *name)
{
    uint64_t h = key_hash(kind, name);
    pthread_mutex_lock(&registry_lock);
    if (registry_hash != NULL) {
        for (struct stats_set *s = registry_hash[h & (registry_hash_size - 1)]; s; s = s->hash_next) {
            if (s->hash == h && strcmp(s->kind, kind) == 0 && strcmp(s->name, name) == 0) {
                pthread_mutex_unlock(&registry_lock);
                return s;
            }
        }
    }

    struct stats_set *set = xalloc(calloc(1, sizeof(*set)));
    set->kind = xalloc(strdup(kind));
    set->name = xalloc(strdup(name));
    set->hash = h;
    /* aligned_alloc wants a size that is a multiple of the alignment, which
     * the aligned(64) struct guarantees; each worker's slot starts a line. */
    size_t bytes = sizeof(struct stats_counters) * stats_nworkers_;
    set->slots = xalloc(aligned_alloc(_Alignof(struct stats_counters), bytes));
    memset(set->slots, 0, bytes);

    if (registry_count + 1 > registry_hash_size)
        grow_hash();
    size_t b = h & (registry_hash_size - 1);
    set->hash_next = registry_hash[b];
    registry_hash[b] = set;
    if (registry_last)
        registry_last->order_next = set;
    else
        registry_first = set;
    registry_last = set;
    registry_count++;
    pthread_mutex_unlock(&registry_lock);
    return set;
}

struct stats_counters *stats_slot(struct stats_set *set, unsigned worker)
{
    assert(worker < stats_nworkers_);
    return &set->slots[worker];
}

static uint64_t ld(const _Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

void stats_sum(struct stats_set *set, struct stats_total *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < stats_nworkers_; w++) {
        const struct stats_counters *c = &set->slots[w];
        out->requests += ld(&c->requests);
        for (unsigned i = 0; i < 6; i++)
            out->status[i] += ld(&c->status[i]);
        out->bytes_in += ld(&c->bytes_in);
        out->bytes_out += ld(&c->bytes_out);
        out->active += atomic_load_explicit(&c->active, memory_order_relaxed);
        out->pool_reuse += ld(&c->pool_reuse);
        out->pool_new += ld(&c->pool_new);
        out->retries_idle += ld(&c->retries_idle);
        out->retries += ld(&c->retries);
        out->retry_budget_exhausted += ld(&c->retry_budget_exhausted);
        out->retry_unreplayable += ld(&c->retry_unreplayable);
        out->retry_unsafe += ld(&c->retry_unsafe);
        out->retry_deadline += ld(&c->retry_deadline);
        out->cache_hit += ld(&c->cache_hit);
        out->cache_miss += ld(&c->cache_miss);
        out->cache_stale += ld(&c->cache_stale);
        out->cache_revalidated += ld(&c->cache_revalidated);
        out->cache_coalesced += ld(&c->cache_coalesced);
        out->cache_redis_hit += ld(&c->cache_redis_hit);
        out->cache_redis_error += ld(&c->cache_redis_error);
        for (unsigned i = 0; i < STATS_ERR__COUNT; i++)
            out->errors[i] += ld(&c->errors[i]);
        hist_merge(&out->latency, &c->latency);
    }
}

/* Microseconds as milliseconds with three decimals, without floating point. */
static void put_ms(struct strbuf *sb, const char *key, uint64_t us)
{
    strbuf_printf(sb, "\"%s\":%" PRIu64 ".%03u", key, us / 1000, (unsigned)(us % 1000));
}

static void render_set(struct strbuf *sb, struct stats_set *set)
{
    struct stats_total t;
    stats_sum(set, &t);
    strbuf_json_string(sb, set->name);
    strbuf_printf(sb,
                  ":{\"requests\":%" PRIu64 ",\"responses\":{\"1xx\":%" PRIu64 ",\"2xx\":%" PRIu64
                  ",\"3xx\":%" PRIu64 ",\"4xx\":%" PRIu64 ",\"5xx\":%" PRIu64 ",\"none\":%" PRIu64 "}",
                  t.requests, t.status[1], t.status[2], t.status[3], t.status[4], t.status[5], t.status[0]);
    strbuf_printf(sb,
                  ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ",\"active\":%" PRId64
                  ",\"pool_reuse\":%" PRIu64 ",\"pool_new\":%" PRIu64 ",\"retries_idle\":%" PRIu64,
                  t.bytes_in, t.bytes_out, t.active, t.pool_reuse, t.pool_new, t.retries_idle);
    strbuf_printf(sb,
                  ",\"retries\":{\"done\":%" PRIu64 ",\"budget_exhausted\":%" PRIu64 ",\"unreplayable\":%" PRIu64
                  ",\"unsafe\":%" PRIu64 ",\"deadline\":%" PRIu64 "}",
                  t.retries, t.retry_budget_exhausted, t.retry_unreplayable, t.retry_unsafe, t.retry_deadline);
    if (t.cache_hit + t.cache_miss + t.cache_stale + t.cache_revalidated + t.cache_coalesced +
            t.cache_redis_hit + t.cache_redis_error >
        0) {
        /* only sets that saw cache traffic carry the block: keeps plain routes short */
        strbuf_printf(sb,
                      ",\"cache\":{\"hit\":%" PRIu64 ",\"miss\":%" PRIu64 ",\"stale\":%" PRIu64
                      ",\"revalidated\":%" PRIu64 ",\"coalesced\":%" PRIu64 ",\"redis_hit\":%" PRIu64
                      ",\"redis_error\":%" PRIu64 "}",
                      t.cache_hit, t.cache_miss, t.cache_stale, t.cache_revalidated, t.cache_coalesced,
                      t.cache_redis_hit, t.cache_redis_error);
    }
    strbuf_puts(sb, ",\"errors\":{");
    for (unsigned i = 0; i < STATS_ERR__COUNT; i++)
        strbuf_printf(sb, "%s\"%s\":%" PRIu64, i ? "," : "", stats_error_names[i], t.errors[i]);
    const struct hist_snapshot *l = &t.latency;
    uint64_t mean = l->count ? (l->sum_us + l->count / 2) / l->count : 0;
    strbuf_puts(sb, "},\"latency_ms\":{");
    put_ms(sb, "p50", hist_quantile(l, 0.50));
    strbuf_puts(sb, ",");
    put_ms(sb, "p95", hist_quantile(l, 0.95));
    strbuf_puts(sb, ",");
    put_ms(sb, "p99", hist_quantile(l, 0.99));
    strbuf_puts(sb, ",");
    put_ms(sb, "max", l->max_us);
    strbuf_puts(sb, ",");
    put_ms(sb, "mean", mean);
    strbuf_puts(sb, "}}");
}

void stats_render_json_kind(struct strbuf *sb, const char *kind)
{
    /* The list only grows at its tail and sets are never freed, so the part
     * up to the tail seen under the lock can be walked without holding it
     * (only the tail's order_next may still change). */
    pthread_mutex_lock(&registry_lock);
    struct stats_set *first = registry_first, *last = registry_last;
    pthread_mutex_unlock(&registry_lock);
    strbuf_puts(sb, "{");
    bool any = false;
    for (struct stats_set *s = first; s; s = s == last ? NULL : s->order_next) {
        if (strcmp(s->kind, kind) != 0)
            continue;
        if (any)
            strbuf_puts(sb, ",");
        any = true;
        render_set(sb, s);
    }
    strbuf_puts(sb, "}");
}
