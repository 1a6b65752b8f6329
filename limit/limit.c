/* SPDX-License-Identifier: MIT */
/*
 * limit: the local GCRA store and the in-flight limits (see limit.h).
 */
#include "limit/limit.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* A shard holds at least this many keys before the store is split further. */
#define SHARD_MIN_KEYS 64
/* Expired keys dropped from an LRU tail per check. */
#define SWEEP_PER_CHECK 2

struct entry {
    struct entry *hnext;
    struct list lru; /* most recently used first */
    struct limit_key key;
    uint64_t tat; /* ns, CLOCK_MONOTONIC */
};

struct shard {
    pthread_mutex_t lock;
    struct entry **buckets; /* nbuckets chains, a power of two */
    size_t nbuckets;
    struct list lru;
    size_t n, max;
    uint64_t allowed, limited, evictions, fallbacks; /* under lock */
} __attribute__((aligned(64)));

struct limit {
    struct list link; /* in the registry */
    char *name;
    uint64_t rate, period_ms, burst;
    uint64_t t_ns; /* emission interval */
    uint64_t cap;  /* rate + burst */
    unsigned nshards;
    struct shard *shards;
    atomic_uint_fast64_t global_allowed, global_limited, redis_errors;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list registry = {&registry, &registry};
static struct list inflight_registry = {&inflight_registry, &inflight_registry};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL)
        abort(); /* control structures sized by the conf */
    return p;
}

bool limit_gcra(uint64_t *tat, uint64_t now, uint64_t t, uint64_t cap, struct limit_result *r)
{
    uint64_t base = *tat > now ? *tat : now;
    uint64_t next = base + t;
    uint64_t window = cap * t;
    r->limit = cap;
    if (next - now > window) {
        r->is_allowed = false;
        r->remaining = 0;
        r->retry_ms = next - now - window;
        r->reset_ms = base - now;
        return false;
    }
    *tat = next;
    r->is_allowed = true;
    r->remaining = (window - (next - now)) / t;
    r->reset_ms = next - now;
    r->retry_ms = 0;
    return true;
}

static uint64_t ns_to_ms_up(uint64_t ns)
{
    return (ns + 999999) / 1000000;
}

/* ---- the store ---- */

static void shard_clear(struct shard *s)
{
    while (!list_is_empty(&s->lru)) {
        struct entry *e = LIST_ENTRY(s->lru.next, struct entry, lru);
        list_remove(&e->lru);
        free(e);
    }
    memset(s->buckets, 0, s->nbuckets * sizeof(*s->buckets));
    s->n = 0;
}

static void set_params(struct limit *l, const struct conf_limit *cl)
{
    l->rate = cl->rate;
    l->period_ms = cl->period_ms;
    l->burst = cl->burst;
    l->t_ns = cl->period_ms * 1000000 / cl->rate;
    if (l->t_ns == 0)
        l->t_ns = 1;
    l->cap = cl->rate + cl->burst;
}

static void set_max_keys(struct limit *l, unsigned max_keys)
{
    for (unsigned i = 0; i < l->nshards; i++) {
        struct shard *s = &l->shards[i];
        pthread_mutex_lock(&s->lock);
        s->max = max_keys / l->nshards;
        if (s->max == 0)
            s->max = 1;
        pthread_mutex_unlock(&s->lock);
    }
}

static struct limit *limit_create(const struct conf_limit *cl)
{
    struct limit *l = xcalloc(1, sizeof(*l));
    l->name = strdup(cl->name);
    if (l->name == NULL)
        abort();
    set_params(l, cl);
    unsigned n = LIMIT_SHARDS_MAX;
    while (n > 1 && cl->max_keys / n < SHARD_MIN_KEYS)
        n /= 2;
    l->nshards = n;
    l->shards = aligned_alloc(_Alignof(struct shard), sizeof(struct shard) * n);
    if (l->shards == NULL)
        abort();
    memset(l->shards, 0, sizeof(struct shard) * n);
    size_t per = cl->max_keys / n ? cl->max_keys / n : 1;
    size_t nb = 16;
    while (nb < per && nb < (1u << 20))
        nb *= 2;
    for (unsigned i = 0; i < n; i++) {
        struct shard *s = &l->shards[i];
        pthread_mutex_init(&s->lock, NULL);
        list_init(&s->lru);
        s->nbuckets = nb;
        s->buckets = xcalloc(nb, sizeof(*s->buckets));
    }
    set_max_keys(l, cl->max_keys);
    return l;
}

struct limit *limit_get(const struct conf_limit *cl)
{
    pthread_mutex_lock(&registry_lock);
    struct limit *l = NULL;
    for (struct list *it = registry.next; it != &registry; it = it->next) {
        struct limit *x = LIST_ENTRY(it, struct limit, link);
        if (strcmp(x->name, cl->name) == 0) {
            l = x;
            break;
        }
    }
    if (l == NULL) {
        l = limit_create(cl);
        list_push(&registry, &l->link);
    } else if (l->rate != cl->rate || l->period_ms != cl->period_ms || l->burst != cl->burst) {
        /* another rate: the stored TATs mean something else now.  Checks
         * read the parameters under their shard's lock, so all are held
         * while they change. */
        for (unsigned i = 0; i < l->nshards; i++)
            pthread_mutex_lock(&l->shards[i].lock);
        for (unsigned i = 0; i < l->nshards; i++)
            shard_clear(&l->shards[i]);
        set_params(l, cl);
        for (unsigned i = 0; i < l->nshards; i++)
            pthread_mutex_unlock(&l->shards[i].lock);
        set_max_keys(l, cl->max_keys);
    } else {
        set_max_keys(l, cl->max_keys);
    }
    pthread_mutex_unlock(&registry_lock);
    return l;
}

const char *limit_name(const struct limit *l)
{
    return l->name;
}

/* The parameters change under every shard lock (limit_get), so one is enough to read them. */
uint64_t limit_interval_us(struct limit *l)
{
    pthread_mutex_lock(&l->shards[0].lock);
    uint64_t us = l->period_ms * 1000 / l->rate;
    pthread_mutex_unlock(&l->shards[0].lock);
    return us ? us : 1;
}

uint64_t limit_capacity(struct limit *l)
{
    pthread_mutex_lock(&l->shards[0].lock);
    uint64_t cap = l->cap;
    pthread_mutex_unlock(&l->shards[0].lock);
    return cap;
}

void limit_key_make(const struct limit *l, const char *const *parts, const size_t *lens, size_t n,
                    struct limit_key *out)
{
    /* name NUL, then each part as a 4-byte length and its bytes; a part too
     * long for the buffer goes in as its own SHA-256 (still unambiguous: the
     * length says which) */
    unsigned char buf[9216], md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    size_t len = strlen(l->name) + 1;
    memcpy(buf, l->name, len);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)parts[i];
        size_t pl = lens[i];
        unsigned char sub[EVP_MAX_MD_SIZE];
        if (pl > 1024) {
            unsigned sl = 0;
            EVP_Digest(p, pl, sub, &sl, EVP_sha256(), NULL);
            p = sub;
            pl = sl;
        }
        if (len + 4 + pl > sizeof(buf))
            break; /* CONF_LIMIT_KEYS_MAX parts of at most 1 KiB fit after any sane name */
        uint32_t l32 = (uint32_t)lens[i];
        memcpy(buf + len, &l32, 4);
        memcpy(buf + len + 4, p, pl);
        len += 4 + pl;
    }
    EVP_Digest(buf, len, md, &mdlen, EVP_sha256(), NULL);
    memcpy(out->b, md, sizeof(out->b));
}

static uint64_t key_word(const struct limit_key *k, unsigned i)
{
    uint64_t v;
    memcpy(&v, k->b + 8 * i, 8);
    return v;
}

static struct shard *shard_of(struct limit *l, const struct limit_key *k)
{
    return &l->shards[key_word(k, 1) % l->nshards];
}

static struct entry **chain_of(struct shard *s, const struct limit_key *k)
{
    return &s->buckets[key_word(k, 0) & (s->nbuckets - 1)];
}

static void unlink_entry(struct shard *s, struct entry *e)
{
    for (struct entry **pp = chain_of(s, &e->key); *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == e) {
            *pp = e->hnext;
            break;
        }
    }
    list_remove(&e->lru);
    s->n--;
}

/* Drops up to max expired entries from the LRU tail; lock held. */
static void sweep_tail(struct shard *s, uint64_t now, size_t max)
{
    while (max-- > 0 && !list_is_empty(&s->lru)) {
        struct entry *e = LIST_ENTRY(s->lru.prev, struct entry, lru);
        if (e->tat > now)
            return;
        unlink_entry(s, e);
        free(e);
    }
}

/* The entry of k, made (and linked first in the LRU) when missing; lock held. */
static struct entry *find_or_add(struct shard *s, const struct limit_key *k, uint64_t now)
{
    struct entry **chain = chain_of(s, k);
    for (struct entry *e = *chain; e != NULL; e = e->hnext) {
        if (memcmp(e->key.b, k->b, sizeof(k->b)) == 0) {
            list_remove(&e->lru);
            list_push(s->lru.next, &e->lru); /* after the head: first */
            return e;
        }
    }
    struct entry *e = NULL;
    while (s->n >= s->max) {
        /* full: the least recently used entry goes (mostly an expired one) */
        struct entry *old = LIST_ENTRY(s->lru.prev, struct entry, lru);
        if (old->tat > now)
            s->evictions++;
        unlink_entry(s, old);
        free(e);
        e = old;
    }
    if (e == NULL && (e = malloc(sizeof(*e))) == NULL)
        return NULL;
    e->key = *k;
    e->tat = 0;
    e->hnext = *chain;
    *chain = e;
    list_init(&e->lru);
    list_push(s->lru.next, &e->lru);
    s->n++;
    return e;
}

void limit_check(struct limit *l, const struct limit_key *k, uint64_t now_ns, bool is_fallback,
                 struct limit_result *out)
{
    struct shard *s = shard_of(l, k);
    pthread_mutex_lock(&s->lock);
    sweep_tail(s, now_ns, SWEEP_PER_CHECK);
    struct entry *e = find_or_add(s, k, now_ns);
    uint64_t scratch = 0; /* out of memory: judged as a fresh key, not stored */
    limit_gcra(e != NULL ? &e->tat : &scratch, now_ns, l->t_ns, l->cap, out);
    if (out->is_allowed)
        s->allowed++;
    else
        s->limited++;
    s->fallbacks += is_fallback;
    pthread_mutex_unlock(&s->lock);
    out->reset_ms = ns_to_ms_up(out->reset_ms);
    out->retry_ms = ns_to_ms_up(out->retry_ms);
}

void limit_refund(struct limit *l, const struct limit_key *k)
{
    struct shard *s = shard_of(l, k);
    pthread_mutex_lock(&s->lock);
    for (struct entry *e = *chain_of(s, k); e != NULL; e = e->hnext) {
        if (memcmp(e->key.b, k->b, sizeof(k->b)) == 0) {
            e->tat = e->tat > l->t_ns ? e->tat - l->t_ns : 0;
            break;
        }
    }
    s->allowed--;
    s->limited++;
    pthread_mutex_unlock(&s->lock);
}

void limit_count(struct limit *l, bool is_allowed)
{
    atomic_fetch_add_explicit(is_allowed ? &l->global_allowed : &l->global_limited, 1, memory_order_relaxed);
}

void limit_count_redis_error(struct limit *l)
{
    atomic_fetch_add_explicit(&l->redis_errors, 1, memory_order_relaxed);
}

void limit_count_fallback(struct limit *l)
{
    struct shard *s = &l->shards[0];
    pthread_mutex_lock(&s->lock);
    s->fallbacks++;
    pthread_mutex_unlock(&s->lock);
}

void limit_sweep(struct limit *l, uint64_t now_ns)
{
    for (unsigned i = 0; i < l->nshards; i++) {
        pthread_mutex_lock(&l->shards[i].lock);
        sweep_tail(&l->shards[i], now_ns, SIZE_MAX);
        pthread_mutex_unlock(&l->shards[i].lock);
    }
}

void limit_foreach(void (*cb)(const struct limit_totals *t, void *arg), void *arg, uint64_t now_ns)
{
    pthread_mutex_lock(&registry_lock);
    for (struct list *it = registry.next; it != &registry; it = it->next) {
        struct limit *l = LIST_ENTRY(it, struct limit, link);
        struct limit_totals t = {
            .name = l->name,
            .allowed = atomic_load_explicit(&l->global_allowed, memory_order_relaxed),
            .limited = atomic_load_explicit(&l->global_limited, memory_order_relaxed),
            .redis_errors = atomic_load_explicit(&l->redis_errors, memory_order_relaxed),
        };
        for (unsigned i = 0; i < l->nshards; i++) {
            struct shard *s = &l->shards[i];
            pthread_mutex_lock(&s->lock);
            sweep_tail(s, now_ns, SIZE_MAX);
            t.allowed += s->allowed;
            t.limited += s->limited;
            t.keys += s->n;
            t.max_keys += s->max;
            t.evictions += s->evictions;
            t.fallbacks += s->fallbacks;
            pthread_mutex_unlock(&s->lock);
        }
        cb(&t, arg);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* ---- in-flight limits ---- */

struct limit_inflight {
    struct list link; /* in inflight_registry */
    char *name;
    pthread_mutex_t lock;
    unsigned max, queue_max;
    uint64_t timeout_ms;
    unsigned inflight, nqueued;
    struct list queue; /* struct limit_waiter, oldest first */
    uint64_t admitted, rejected, timeouts;
};

struct limit_inflight *limit_inflight_get(const char *kind, const char *base, const struct conf_max_inflight *m)
{
    size_t len = strlen(kind) + strlen(base) + 2;
    char *name = malloc(len);
    if (name == NULL)
        abort();
    snprintf(name, len, "%s %s", kind, base);
    pthread_mutex_lock(&registry_lock);
    struct limit_inflight *li = NULL;
    for (struct list *it = inflight_registry.next; it != &inflight_registry; it = it->next) {
        struct limit_inflight *x = LIST_ENTRY(it, struct limit_inflight, link);
        if (strcmp(x->name, name) == 0) {
            li = x;
            break;
        }
    }
    if (li == NULL) {
        li = xcalloc(1, sizeof(*li));
        li->name = name;
        name = NULL;
        pthread_mutex_init(&li->lock, NULL);
        list_init(&li->queue);
        list_push(&inflight_registry, &li->link);
    }
    pthread_mutex_lock(&li->lock);
    li->max = m->max;
    li->queue_max = m->queue;
    li->timeout_ms = m->queue_timeout_ms;
    pthread_mutex_unlock(&li->lock);
    pthread_mutex_unlock(&registry_lock);
    free(name);
    return li;
}

enum limit_admit limit_inflight_acquire(struct limit_inflight *li, struct limit_waiter *w)
{
    enum limit_admit r;
    pthread_mutex_lock(&li->lock);
    /* FIFO: nobody passes a queue that is not empty */
    if (li->inflight < li->max && li->nqueued == 0) {
        li->inflight++;
        li->admitted++;
        r = LIMIT_ADMITTED;
    } else if (li->nqueued < li->queue_max) {
        list_init(&w->link);
        list_push(&li->queue, &w->link);
        li->nqueued++;
        r = LIMIT_QUEUED;
    } else {
        li->rejected++;
        r = LIMIT_FULL;
    }
    pthread_mutex_unlock(&li->lock);
    return r;
}

bool limit_inflight_cancel(struct limit_inflight *li, struct limit_waiter *w, bool is_timeout)
{
    pthread_mutex_lock(&li->lock);
    /* a granted waiter was unlinked (self-linked) by limit_inflight_done */
    bool is_granted = list_is_empty(&w->link);
    if (!is_granted) {
        list_remove(&w->link);
        li->nqueued--;
        if (is_timeout) {
            li->timeouts++;
            li->rejected++;
        }
    }
    pthread_mutex_unlock(&li->lock);
    return is_granted;
}

void limit_inflight_done(struct limit_inflight *li)
{
    pthread_mutex_lock(&li->lock);
    /* a lowered max (reload) lets the count drain below it before handing over */
    if (!list_is_empty(&li->queue) && li->inflight <= li->max) {
        struct limit_waiter *w = LIST_ENTRY(li->queue.next, struct limit_waiter, link);
        list_remove(&w->link);
        li->nqueued--;
        li->admitted++;
        w->wake(w);
    } else {
        li->inflight--;
    }
    pthread_mutex_unlock(&li->lock);
}

uint64_t limit_inflight_timeout_ms(const struct limit_inflight *li)
{
    return li->timeout_ms;
}

void limit_inflight_foreach(void (*cb)(const struct limit_inflight_totals *t, void *arg), void *arg)
{
    pthread_mutex_lock(&registry_lock);
    for (struct list *it = inflight_registry.next; it != &inflight_registry; it = it->next) {
        struct limit_inflight *li = LIST_ENTRY(it, struct limit_inflight, link);
        pthread_mutex_lock(&li->lock);
        struct limit_inflight_totals t = {li->name,     li->max,      li->queue_max, li->inflight,
                                          li->nqueued,  li->admitted, li->rejected,  li->timeouts};
        pthread_mutex_unlock(&li->lock);
        cb(&t, arg);
    }
    pthread_mutex_unlock(&registry_lock);
}

void limit_shutdown_all(void)
{
    pthread_mutex_lock(&registry_lock);
    while (!list_is_empty(&registry)) {
        struct limit *l = LIST_ENTRY(registry.next, struct limit, link);
        list_remove(&l->link);
        for (unsigned i = 0; i < l->nshards; i++) {
            shard_clear(&l->shards[i]);
            free(l->shards[i].buckets);
            pthread_mutex_destroy(&l->shards[i].lock);
        }
        free(l->shards);
        free(l->name);
        free(l);
    }
    while (!list_is_empty(&inflight_registry)) {
        struct limit_inflight *li = LIST_ENTRY(inflight_registry.next, struct limit_inflight, link);
        list_remove(&li->link);
        pthread_mutex_destroy(&li->lock);
        free(li->name);
        free(li);
    }
    pthread_mutex_unlock(&registry_lock);
}
