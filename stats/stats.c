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
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

struct stats_set {
    struct stats_set *hash_next;
    struct stats_set *order_next;
    char *kind;
    char *name;
    uint64_t hash;
    struct stats_counters *slots; /* stats_nworkers_ entries, cache-line aligned */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

const char *const stats_error_names[STATS_ERR__COUNT] = {
#define STATS_ERR_NAME_(e, name, help) [STATS_ERR_##e] = #name,
    STATS_ERRORS(STATS_ERR_NAME_)
#undef STATS_ERR_NAME_
};

/* The one description of the counters of a set, read by stats_sum's users:
 * the JSON renderer (group + key), the Prometheus renderer (metric family,
 * label) and the help text.  Rows of one family (same metric) are adjacent,
 * rows of one JSON group too. */
struct stats_field {
    size_t word;        /* index into stats_total.words */
    const char *group;  /* JSON object the key sits in, NULL: the set's own object */
    const char *key;    /* JSON key */
    const char *metric; /* family name after "sluice_<kind>_" */
    const char *label;  /* label pair telling the rows of a family apart, or NULL */
    const char *help;
    bool is_gauge;      /* signed, may go down */
};

#define W_(member) (offsetof(struct stats_counters, member) / sizeof(uint64_t))
#define COUNTER(member, key, metric, help) {W_(member), NULL, key, metric, NULL, help, false}
#define STATUS(i, key) {W_(status[i]), "responses", key, "responses_total", "code=\"" key "\"", \
                        "Responses sent by status class (none: no response sent)", false}
#define CACHE(member, key, help) {W_(member), "cache", key, "cache_" key "_total", NULL, help, false}
#define RETRY(member, key, metric, help) {W_(member), "retries", key, metric, NULL, help, false}
#define ERROR_(e, name, help) {W_(errors[STATS_ERR_##e]), "errors", #name, "errors_total", \
                               "cause=\"" #name "\"", "Failed exchanges by cause", false},

static const struct stats_field fields[] = {
    COUNTER(requests, "requests", "requests_total", "Requests received"),
    STATUS(1, "1xx"),
    STATUS(2, "2xx"),
    STATUS(3, "3xx"),
    STATUS(4, "4xx"),
    STATUS(5, "5xx"),
    STATUS(0, "none"),
    COUNTER(bytes_in, "bytes_in", "received_bytes_total",
            "Bytes received from the client (route) or the upstream (server)"),
    COUNTER(bytes_out, "bytes_out", "sent_bytes_total", "Bytes sent to the client (route) or the upstream (server)"),
    {W_(active), NULL, "active", "active", NULL, "Requests in flight (route) or open connections (server)", true},
    COUNTER(pool_reuse, "pool_reuse", "pool_reuse_total", "Requests sent on a pooled keep-alive connection"),
    COUNTER(pool_new, "pool_new", "pool_new_total", "Requests that needed a new upstream connection"),
    COUNTER(retries_idle, "retries_idle", "retries_idle_total",
            "Idempotent requests resent after a pooled connection died"),
    COUNTER(slow, "slow", "slow_requests_total", "Requests that took longer than slow_log_threshold"),
    CACHE(cache_hit, "hit", "Answered from a stored response"),
    CACHE(cache_miss, "miss", "Went upstream to fill the cache"),
    CACHE(cache_stale, "stale", "Answered stale because the upstream failed"),
    CACHE(cache_revalidated, "revalidated", "Stored responses freshened by a 304"),
    CACHE(cache_coalesced, "coalesced", "Joined another request's fill"),
    CACHE(cache_redis_hit, "redis_hit", "Memory misses found in the Redis tier"),
    CACHE(cache_redis_error, "redis_error", "Redis tier failures, downs or timeouts"),
    RETRY(retries, "done", "retries_total", "Tries after the first (server: tries it received as a retry)"),
    RETRY(retry_budget_exhausted, "budget_exhausted", "retries_budget_exhausted_total",
          "Retries the retry budget refused"),
    RETRY(retry_unreplayable, "unreplayable", "retries_unreplayable_total",
          "Retries refused: the request body sent was not kept"),
    RETRY(retry_unsafe, "unsafe", "retries_unsafe_total",
          "Retries refused: a non-idempotent request had reached the upstream"),
    RETRY(retry_deadline, "deadline", "retries_deadline_total", "Retries refused: the wait would pass the deadline"),
    STATS_ERRORS(ERROR_)
};

/* Groups rendered only when one of their counters is not zero: keeps plain
 * routes short in the JSON. */
static bool group_is_optional(const char *group)
{
    return group != NULL && strcmp(group, "cache") == 0;
}

static struct stats_global *globals_first;

void stats_global_register(struct stats_global *g)
{
    pthread_mutex_lock(&registry_lock);
    struct stats_global **p = &globals_first;
    while (*p != NULL && *p != g)
        p = &(*p)->next;
    if (*p == NULL)
        *p = g;
    pthread_mutex_unlock(&registry_lock);
}


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

void stats_sum(struct stats_set *set, struct stats_total *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < stats_nworkers_; w++) {
        const struct stats_counters *c = &set->slots[w];
        /* every word before the histogram is a 64-bit atomic counter; a
         * gauge's negative contributions wrap and sum right */
        const _Atomic uint64_t *words = (const _Atomic uint64_t *)c;
        for (size_t i = 0; i < STATS_WORDS; i++)
            out->words[i] += atomic_load_explicit(&words[i], memory_order_relaxed);
        hist_merge(&out->latency, &c->latency);
    }
}

/* Microseconds as milliseconds with three decimals, without floating point. */
static void put_ms(struct strbuf *sb, const char *key, uint64_t us)
{
    strbuf_printf(sb, "\"%s\":%" PRIu64 ".%03u", key, us / 1000, (unsigned)(us % 1000));
}

static void put_value(struct strbuf *sb, const struct stats_field *f, uint64_t v)
{
    if (f->is_gauge)
        strbuf_printf(sb, "%" PRId64, (int64_t)v);
    else
        strbuf_printf(sb, "%" PRIu64, v);
}

static void render_set(struct strbuf *sb, struct stats_set *set)
{
    struct stats_total t;
    stats_sum(set, &t);
    strbuf_json_string(sb, set->name);
    strbuf_puts(sb, ":{");
    const char *group = NULL;
    bool first = true, skip = false;
    for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
        const struct stats_field *f = &fields[i];
        bool new_group = f->group != group && (f->group == NULL || group == NULL || strcmp(f->group, group) != 0);
        if (new_group) {
            if (group != NULL && !skip)
                strbuf_puts(sb, "}");
            group = f->group;
            skip = false;
            if (group_is_optional(group)) {
                uint64_t any = 0;
                for (size_t j = i; j < ARRAY_SIZE(fields) && fields[j].group != NULL && strcmp(fields[j].group, group) == 0;
                     j++)
                    any |= t.words[fields[j].word];
                skip = any == 0;
            }
            if (group != NULL && !skip) {
                strbuf_printf(sb, "%s\"%s\":{", first ? "" : ",", group);
                first = true;
            }
        }
        if (skip)
            continue;
        strbuf_printf(sb, "%s\"%s\":", first ? "" : ",", f->key);
        put_value(sb, f, t.words[f->word]);
        first = false;
    }
    if (group != NULL && !skip)
        strbuf_puts(sb, "}");
    const struct hist_snapshot *l = &t.latency;
    uint64_t mean = l->count ? (l->sum_us + l->count / 2) / l->count : 0;
    strbuf_puts(sb, ",\"latency_ms\":{");
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

/* The sets in creation order.  The list only grows at its tail and sets are
 * never freed, so the part up to the tail seen under the lock can be walked
 * without holding it (only the tail's order_next may still change). */
static void registry_span(struct stats_set **first, struct stats_set **last)
{
    pthread_mutex_lock(&registry_lock);
    *first = registry_first;
    *last = registry_last;
    pthread_mutex_unlock(&registry_lock);
}

#define FOR_EACH_SET(s, first, last) for (struct stats_set *s = (first); s; s = s == (last) ? NULL : s->order_next)

void stats_render_json_kind(struct strbuf *sb, const char *kind)
{
    struct stats_set *first, *last;
    registry_span(&first, &last);
    strbuf_puts(sb, "{");
    bool any = false;
    FOR_EACH_SET(s, first, last)
    {
        if (strcmp(s->kind, kind) != 0)
            continue;
        if (any)
            strbuf_puts(sb, ",");
        any = true;
        render_set(sb, s);
    }
    strbuf_puts(sb, "}");
}

void stats_render_json_globals(struct strbuf *sb)
{
    pthread_mutex_lock(&registry_lock);
    strbuf_puts(sb, "{");
    for (struct stats_global *g = globals_first; g != NULL; g = g->next)
        strbuf_printf(sb, "%s\"%s\":%" PRIu64, g == globals_first ? "" : ",", g->name,
                      atomic_load_explicit(&g->value, memory_order_relaxed));
    strbuf_puts(sb, "}");
    pthread_mutex_unlock(&registry_lock);
}

/* ---- Prometheus text format 0.0.4 ---- */

void stats_prom_family(struct strbuf *sb, const char *name, const char *type, const char *help)
{
    strbuf_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void stats_prom_label_value(struct strbuf *sb, const char *value)
{
    strbuf_puts(sb, "\"");
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            strbuf_printf(sb, "\\%c", *p);
        else if (*p == '\n')
            strbuf_puts(sb, "\\n");
        else
            strbuf_append(sb, p, 1);
    }
    strbuf_puts(sb, "\"");
}

/* Histogram bounds in microseconds: sub-millisecond to a minute. */
static const uint64_t prom_bounds_us[] = {100,    250,    500,     1000,    2500,    5000,     10000,
                                          25000,  50000,  100000,  250000,  500000,  1000000,  2500000,
                                          5000000, 10000000, 30000000, 60000000};

/* "0.00025" from 250 us, without floating point formatting surprises. */
static void put_seconds(struct strbuf *sb, uint64_t us)
{
    uint64_t frac = us % 1000000;
    strbuf_printf(sb, "%" PRIu64, us / 1000000);
    if (frac == 0)
        return;
    char digits[8];
    snprintf(digits, sizeof(digits), "%06" PRIu64, frac);
    size_t n = 6;
    while (n > 0 && digits[n - 1] == '0')
        n--;
    strbuf_printf(sb, ".%.*s", (int)n, digits);
}

static void prom_labels(struct strbuf *sb, const char *kind, const char *name, const char *extra)
{
    strbuf_printf(sb, "{%s=", kind);
    stats_prom_label_value(sb, name);
    if (extra != NULL)
        strbuf_printf(sb, ",%s", extra);
    strbuf_puts(sb, "}");
}

static void render_kind_prometheus(struct strbuf *sb, const char *kind, struct stats_set *first,
                                   struct stats_set *last)
{
    size_t nsets = 0;
    FOR_EACH_SET(s, first, last)
    nsets += strcmp(s->kind, kind) == 0;
    if (nsets == 0)
        return;
    struct stats_total *totals = calloc(nsets, sizeof(*totals));
    struct stats_set **sets = calloc(nsets, sizeof(*sets));
    if (totals == NULL || sets == NULL)
        abort();
    size_t n = 0;
    FOR_EACH_SET(s, first, last)
    {
        if (strcmp(s->kind, kind) == 0) {
            sets[n] = s;
            stats_sum(s, &totals[n++]);
        }
    }
    char family[128];
    for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
        const struct stats_field *f = &fields[i];
        snprintf(family, sizeof(family), "sluice_%s_%s", kind, f->metric);
        if (i == 0 || strcmp(fields[i - 1].metric, f->metric) != 0)
            stats_prom_family(sb, family, f->is_gauge ? "gauge" : "counter", f->help);
        for (size_t k = 0; k < n; k++) {
            strbuf_puts(sb, family);
            prom_labels(sb, kind, sets[k]->name, f->label);
            strbuf_puts(sb, " ");
            put_value(sb, f, totals[k].words[f->word]);
            strbuf_puts(sb, "\n");
        }
    }
    snprintf(family, sizeof(family), "sluice_%s_latency_seconds", kind);
    stats_prom_family(sb, family,
                      "histogram", strcmp(kind, "server") == 0 ? "Upstream request sent to response head"
                                                              : "Request first byte to response complete");
    for (size_t k = 0; k < n; k++) {
        const struct hist_snapshot *h = &totals[k].latency;
        /* hist buckets do not align with these bounds: a bucket counts under
         * the first bound at or above its upper end (at most 12.5 % late) */
        uint64_t cum = 0;
        unsigned b = 0;
        for (size_t j = 0; j < ARRAY_SIZE(prom_bounds_us); j++) {
            for (; b < HIST_BUCKETS && hist_bucket_upper(b) <= prom_bounds_us[j]; b++)
                cum += h->buckets[b];
            strbuf_printf(sb, "%s_bucket", family);
            strbuf_printf(sb, "{%s=", kind);
            stats_prom_label_value(sb, sets[k]->name);
            strbuf_puts(sb, ",le=\"");
            put_seconds(sb, prom_bounds_us[j]);
            strbuf_printf(sb, "\"} %" PRIu64 "\n", cum);
        }
        for (; b < HIST_BUCKETS; b++)
            cum += h->buckets[b];
        strbuf_printf(sb, "%s_bucket", family);
        prom_labels(sb, kind, sets[k]->name, "le=\"+Inf\"");
        strbuf_printf(sb, " %" PRIu64 "\n%s_sum", cum, family);
        prom_labels(sb, kind, sets[k]->name, NULL);
        strbuf_puts(sb, " ");
        put_seconds(sb, h->sum_us);
        strbuf_printf(sb, "\n%s_count", family);
        prom_labels(sb, kind, sets[k]->name, NULL);
        /* the +Inf bucket and _count must agree: both from the buckets */
        strbuf_printf(sb, " %" PRIu64 "\n", cum);
    }
    free(totals);
    free(sets);
}

void stats_render_prometheus(struct strbuf *sb)
{
    struct stats_set *first, *last;
    registry_span(&first, &last);
    /* each kind once, in the order kinds first appear */
    FOR_EACH_SET(s, first, last)
    {
        bool seen = false;
        for (struct stats_set *p = first; p != s && !seen; p = p->order_next)
            seen = strcmp(p->kind, s->kind) == 0;
        if (!seen)
            render_kind_prometheus(sb, s->kind, first, last);
    }
    pthread_mutex_lock(&registry_lock);
    char family[128];
    for (struct stats_global *g = globals_first; g != NULL; g = g->next) {
        snprintf(family, sizeof(family), "sluice_%s", g->name);
        stats_prom_family(sb, family, g->is_gauge ? "gauge" : "counter", g->help);
        strbuf_printf(sb, "%s %" PRIu64 "\n", family, atomic_load_explicit(&g->value, memory_order_relaxed));
    }
    pthread_mutex_unlock(&registry_lock);
}
