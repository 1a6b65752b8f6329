/* SPDX-License-Identifier: MIT */
/*
 * store: the in-memory tier — a process-wide registry of named stores, each
 * split into shards by key hash.
 *
 * Design.
 * - A shard is a mutex, a chained hash table of entries (several variants of
 *   a key chain side by side, newest first), two S3-FIFO queues and a ghost
 *   table, and a byte budget (the store's memory / nshards).  An entry is
 *   charged for its one allocation (struct, strings, head) plus its body
 *   blocks.
 * - S3-FIFO (Yang et al., SOSP 2023): a new entry enters the small queue
 *   (~10 % of the budget) unless its hash is in the ghost, then it enters
 *   main.  Evicting from small moves an entry that was hit since insertion to
 *   main and drops the others, remembering their hash in the ghost; main is a
 *   CLOCK: a hit entry gets a second chance (freq - 1), others go.  One-hit
 *   wonders and scans thus pass through small without flushing main.
 * - The ghost is a direct-mapped table of (hash, sequence) slots: a hash
 *   counts as a ghost while fewer than main's entry count of evictions came
 *   after it, so it needs no FIFO and no deletions; a collision forgets a
 *   ghost, which only costs a second chance.
 * - Entries are refcounted: the store holds one ref while the entry is
 *   linked, every reader one more.  Unlinking (eviction, replacement, purge)
 *   collects entries on a victims list that is released after the shard lock
 *   is dropped, so no free runs under a lock.
 * - The number of shards is the caller's rounded up to a power of two >= 4,
 *   then halved (not below 4) while a shard's budget would be less than twice
 *   max_object, so an object of max_object always fits its shard.  The
 *   count is fixed at creation; a later cache_get changes the budget (a
 *   shrink evicts at once) and max_object.
 *
 * Threading: cache_get and cache_shutdown_all on the main thread (the
 * registry has its own mutex anyway); the rest from any thread.  A shard
 * lock is held only to find, link or unlink; request header callbacks for
 * Vary run under it and must be cheap.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

#define SHARDS_MIN      4
#define SHARDS_MAX      1024
#define BUCKETS_INITIAL 64
#define GHOST_INITIAL   64
/* A key's variants (different Vary values) beyond this push out its oldest,
 * so a client cycling through Accept-Language values cannot grow one chain. */
#define MAX_VARIANTS 16
#define FREQ_MAX     3

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list registry = {&registry, &registry};

static uint64_t counter_load(atomic_uint_fast64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

/* Written under the shard lock, so a plain load + store is exact. */
static void counter_add(atomic_uint_fast64_t *a, int64_t d)
{
    atomic_store_explicit(a, counter_load(a) + (uint64_t)d, memory_order_relaxed);
}

struct cache_shard *cache_shard_of(struct cache *c, uint64_t hash)
{
    /* the top bits pick the shard, the low bits the bucket and ghost slot */
    return &c->shards[hash >> c->shard_shift];
}

bool cache_entry_is_key(const struct cache_entry *e, uint64_t hash, const char *key, size_t len)
{
    return e->hash == hash && e->key_len == len && memcmp(e->key, key, len) == 0;
}

bool cache_vary_matches(const char *vary, const char *vary_key, cache_header_get_cb get_header, void *arg)
{
    if (vary[0] == '\0')
        return true;
    if (get_header == NULL)
        return false;
    char buf[CACHE_VARY_KEY_MAX];
    size_t n = cache_vary_key(vary, get_header, arg, buf, sizeof(buf));
    return n > 0 && n == strlen(vary_key) && memcmp(buf, vary_key, n) == 0;
}

/* ---- entries ---- */

void cache_entry_ref(struct cache_entry *e)
{
    atomic_fetch_add_explicit(&e->_refs, 1, memory_order_relaxed);
}

void cache_entry_release(struct cache_entry *e)
{
    if (e == NULL || atomic_fetch_sub_explicit(&e->_refs, 1, memory_order_acq_rel) != 1)
        return;
    assert(!e->_is_linked);
    /* _blocks: the entry's piece array, whose blocks it took over from its fill */
    struct cache_piece *pieces = e->_blocks;
    for (size_t i = 0; i < e->nbody; i++)
        free((char *)pieces[i].data);
    free(e);
}

void cache_release_victims(struct list *victims)
{
    while (!list_is_empty(victims)) {
        struct cache_entry *e = LIST_ENTRY(victims->next, struct cache_entry, _qlink);
        list_remove(&e->_qlink);
        cache_entry_release(e);
    }
}

/* ---- queues and ghost ---- */

static void queue_push(struct cache_shard *s, struct cache_entry *e, enum cache_queue q)
{
    e->_queue = q;
    if (q == CACHE_QUEUE_SMALL) {
        list_push(&s->small, &e->_qlink);
        s->small_bytes += e->bytes;
    } else {
        list_push(&s->main, &e->_qlink);
        s->main_bytes += e->bytes;
        s->main_count++;
    }
}

static void queue_remove(struct cache_shard *s, struct cache_entry *e)
{
    list_remove(&e->_qlink);
    if (e->_queue == CACHE_QUEUE_SMALL) {
        s->small_bytes -= e->bytes;
    } else {
        s->main_bytes -= e->bytes;
        s->main_count--;
    }
    e->_queue = CACHE_QUEUE_NONE;
}

/* The ghost remembers as many evicted hashes as main holds entries (the
 * paper's sizing), at least a few. */
static uint64_t ghost_window(const struct cache_shard *s)
{
    return s->main_count > GHOST_INITIAL / 2 ? s->main_count : GHOST_INITIAL / 2;
}

static void ghost_add(struct cache_shard *s, uint64_t hash)
{
    struct cache_ghost_slot *g = &s->ghost[hash & s->ghost_mask];
    g->hash = hash;
    g->seq = ++s->ghost_seq;
}

/* Whether hash is a live ghost; forgets it when so (it goes back to main). */
static bool ghost_take(struct cache_shard *s, uint64_t hash)
{
    struct cache_ghost_slot *g = &s->ghost[hash & s->ghost_mask];
    if (g->seq == 0 || g->hash != hash || s->ghost_seq - g->seq >= ghost_window(s))
        return false;
    g->seq = 0;
    return true;
}

/* Keeps the table at twice the window so collisions stay rare; on OOM the
 * ghost just stays smaller. */
static void ghost_grow(struct cache_shard *s)
{
    size_t n = s->ghost_mask + 1;
    if (ghost_window(s) * 2 <= n)
        return;
    struct cache_ghost_slot *g = calloc(n * 2, sizeof(*g));
    if (g == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        struct cache_ghost_slot *o = &s->ghost[i];
        if (o->seq != 0 && s->ghost_seq - o->seq < ghost_window(s))
            g[o->hash & (n * 2 - 1)] = *o;
    }
    free(s->ghost);
    s->ghost = g;
    s->ghost_mask = n * 2 - 1;
}

/* ---- hash table ---- */

static void buckets_grow(struct cache_shard *s)
{
    size_t n = s->mask + 1;
    if (s->nentries <= n)
        return;
    struct cache_entry **b = calloc(n * 2, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < n; i++) {
        /* pushing onto the new heads reverses order, so reverse each old
         * chain first: a key's variants stay newest first */
        struct cache_entry *rev = NULL;
        for (struct cache_entry *e = s->buckets[i], *next; e != NULL; e = next) {
            next = e->_hnext;
            e->_hnext = rev;
            rev = e;
        }
        for (struct cache_entry *e = rev, *next; e != NULL; e = next) {
            next = e->_hnext;
            size_t j = e->hash & (n * 2 - 1);
            e->_hnext = b[j];
            b[j] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->mask = n * 2 - 1;
}

/* Takes e out of the table and its queue; the store's ref moves to victims. */
static void unlink_entry(struct cache_shard *s, struct cache_entry *e, struct list *victims)
{
    struct cache_entry **pp = &s->buckets[e->hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->_hnext;
    *pp = e->_hnext;
    e->_hnext = NULL;
    queue_remove(s, e);
    e->_is_linked = false;
    s->nentries--;
    counter_add(&s->objects, -1);
    counter_add(&s->bytes, -(int64_t)e->bytes);
    list_push(victims, &e->_qlink);
}

static struct cache_entry *queue_head(struct list *q)
{
    return LIST_ENTRY(q->next, struct cache_entry, _qlink);
}

/* Evicts one entry by S3-FIFO; false when the shard is empty. */
static bool evict_one(struct cache_shard *s, struct list *victims)
{
    for (;;) {
        if (!list_is_empty(&s->small) && (s->small_bytes > s->budget / 10 || list_is_empty(&s->main))) {
            struct cache_entry *e = queue_head(&s->small);
            if (atomic_load_explicit(&e->_freq, memory_order_relaxed) > 0) {
                queue_remove(s, e);
                queue_push(s, e, CACHE_QUEUE_MAIN);
                continue;
            }
            unlink_entry(s, e, victims);
            ghost_add(s, e->hash);
            counter_add(&s->evictions, 1);
            return true;
        }
        if (list_is_empty(&s->main))
            return false;
        struct cache_entry *e = queue_head(&s->main);
        unsigned char freq = atomic_load_explicit(&e->_freq, memory_order_relaxed);
        if (freq > 0) {
            atomic_store_explicit(&e->_freq, freq - 1, memory_order_relaxed);
            list_remove(&e->_qlink);
            list_push(&s->main, &e->_qlink);
            continue;
        }
        unlink_entry(s, e, victims);
        counter_add(&s->evictions, 1);
        return true;
    }
}

static void evict_to(struct cache_shard *s, uint64_t target, struct list *victims)
{
    while (s->small_bytes + s->main_bytes > target && evict_one(s, victims))
        ;
}

int cache_shard_insert_locked(struct cache_shard *s, struct cache_entry *e, struct list *victims)
{
    if (e->bytes > s->budget)
        return -E2BIG;
    /* the same key and variant is replaced; past MAX_VARIANTS the oldest
     * variant (last in the newest-first chain) goes */
    struct cache_entry *oldest = NULL, *next;
    size_t nvariants = 0;
    for (struct cache_entry *x = s->buckets[e->hash & s->mask]; x != NULL; x = next) {
        next = x->_hnext;
        if (!cache_entry_is_key(x, e->hash, e->key, e->key_len))
            continue;
        if (strcmp(x->vary_key, e->vary_key) == 0) {
            unlink_entry(s, x, victims);
        } else {
            nvariants++;
            oldest = x;
        }
    }
    if (nvariants >= MAX_VARIANTS)
        unlink_entry(s, oldest, victims);
    evict_to(s, s->budget - e->bytes, victims);
    atomic_store_explicit(&e->_freq, 0, memory_order_relaxed);
    e->_is_linked = true;
    struct cache_entry **b = &s->buckets[e->hash & s->mask];
    e->_hnext = *b;
    *b = e;
    s->nentries++;
    queue_push(s, e, ghost_take(s, e->hash) ? CACHE_QUEUE_MAIN : CACHE_QUEUE_SMALL);
    counter_add(&s->objects, 1);
    counter_add(&s->bytes, (int64_t)e->bytes);
    counter_add(&s->inserts, 1);
    buckets_grow(s);
    ghost_grow(s);
    return 0;
}

/* ---- lookup ---- */

struct cache_entry *cache_lookup(struct cache *c, const struct cache_lookup_req *rq, struct cache_fill **fill)
{
    struct cache_shard *s = cache_shard_of(c, rq->hash);
    struct cache_entry *found = NULL;
    if (fill != NULL)
        *fill = NULL;
    pthread_mutex_lock(&s->lock);
    for (struct cache_entry *e = s->buckets[rq->hash & s->mask]; e != NULL; e = e->_hnext) {
        if (cache_entry_is_key(e, rq->hash, rq->key, rq->key_len) &&
            cache_vary_matches(e->vary, e->vary_key, rq->get_header, rq->arg)) {
            found = e;
            break;
        }
    }
    if (found != NULL) {
        cache_entry_ref(found);
        unsigned char freq = atomic_load_explicit(&found->_freq, memory_order_relaxed);
        if (freq < FREQ_MAX)
            atomic_store_explicit(&found->_freq, freq + 1, memory_order_relaxed);
    }
    if (fill != NULL) {
        struct cache_fill *f = cache_fill_find_locked(s, rq->hash, rq->key, rq->key_len);
        if (f != NULL && cache_fill_matches(f, rq->get_header, rq->arg)) {
            cache_fill_ref(f);
            *fill = f;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

/* ---- registry ---- */

static unsigned shard_count(unsigned want, uint64_t memory, uint64_t max_object)
{
    unsigned n = SHARDS_MIN;
    while (n < want && n < SHARDS_MAX)
        n <<= 1;
    while (n > SHARDS_MIN && memory / n < 2 * max_object)
        n >>= 1;
    return n;
}

static void shard_dispose(struct cache_shard *s)
{
    struct list victims;
    list_init(&victims);
    while (!list_is_empty(&s->small))
        unlink_entry(s, queue_head(&s->small), &victims);
    while (!list_is_empty(&s->main))
        unlink_entry(s, queue_head(&s->main), &victims);
    cache_release_victims(&victims);
    while (!list_is_empty(&s->fills))
        cache_fill_drop_registry(LIST_ENTRY(s->fills.next, struct cache_fill, link));
    free(s->buckets);
    free(s->ghost);
    pthread_mutex_destroy(&s->lock);
}

static int shard_init(struct cache_shard *s, uint64_t budget)
{
    memset(s, 0, sizeof(*s));
    s->buckets = calloc(BUCKETS_INITIAL, sizeof(*s->buckets));
    s->ghost = calloc(GHOST_INITIAL, sizeof(*s->ghost));
    if (s->buckets == NULL || s->ghost == NULL) {
        free(s->buckets);
        free(s->ghost);
        return -ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->budget = budget;
    s->mask = BUCKETS_INITIAL - 1;
    s->ghost_mask = GHOST_INITIAL - 1;
    list_init(&s->small);
    list_init(&s->main);
    list_init(&s->fills);
    return 0;
}

static void store_destroy(struct cache *c, unsigned ninit)
{
    for (unsigned i = 0; i < ninit; i++)
        shard_dispose(&c->shards[i]);
    free(c->shards);
    free(c->name);
    free(c);
}

static struct cache *store_create(const char *name, uint64_t memory, uint64_t max_object, unsigned nshards)
{
    struct cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->nshards = shard_count(nshards, memory, max_object);
    c->shard_shift = 64 - (unsigned)__builtin_ctz(c->nshards);
    atomic_init(&c->memory, memory);
    atomic_init(&c->max_object, max_object);
    c->name = strdup(name);
    c->shards = aligned_alloc(_Alignof(struct cache_shard), c->nshards * sizeof(struct cache_shard));
    if (c->name == NULL || c->shards == NULL) {
        store_destroy(c, 0);
        return NULL;
    }
    for (unsigned i = 0; i < c->nshards; i++) {
        if (shard_init(&c->shards[i], memory / c->nshards) != 0) {
            store_destroy(c, i);
            return NULL;
        }
    }
    return c;
}

/* A shrink evicts at once, so the process is back under its budget when
 * the reload returns rather than whenever each shard next inserts. */
static void store_resize(struct cache *c, uint64_t memory, uint64_t max_object)
{
    atomic_store_explicit(&c->max_object, max_object, memory_order_relaxed);
    atomic_store_explicit(&c->memory, memory, memory_order_relaxed);
    for (unsigned i = 0; i < c->nshards; i++) {
        struct cache_shard *s = &c->shards[i];
        struct list victims;
        list_init(&victims);
        pthread_mutex_lock(&s->lock);
        s->budget = memory / c->nshards;
        evict_to(s, s->budget, &victims);
        pthread_mutex_unlock(&s->lock);
        cache_release_victims(&victims);
    }
}

void cache_foreach(void (*cb)(struct cache *c, const char *name, void *arg), void *arg)
{
    pthread_mutex_lock(&registry_lock);
    for (struct list *l = registry.next; l != &registry; l = l->next) {
        struct cache *c = LIST_ENTRY(l, struct cache, link);
        cb(c, c->name, arg);
    }
    pthread_mutex_unlock(&registry_lock);
}

struct cache *cache_get(const char *name, uint64_t memory, uint64_t max_object, unsigned nshards)
{
    pthread_mutex_lock(&registry_lock);
    struct cache *c = NULL;
    for (struct list *l = registry.next; l != &registry; l = l->next) {
        struct cache *x = LIST_ENTRY(l, struct cache, link);
        if (strcmp(x->name, name) == 0) {
            c = x;
            break;
        }
    }
    if (c != NULL) {
        store_resize(c, memory, max_object);
    } else if ((c = store_create(name, memory, max_object, nshards)) != NULL) {
        list_push(&registry, &c->link);
    }
    pthread_mutex_unlock(&registry_lock);
    return c;
}

void cache_shutdown_all(void)
{
    pthread_mutex_lock(&registry_lock);
    while (!list_is_empty(&registry)) {
        struct cache *c = LIST_ENTRY(registry.next, struct cache, link);
        list_remove(&c->link);
        store_destroy(c, c->nshards);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* ---- purge and stats ---- */

typedef bool (*purge_match_cb)(const struct cache_entry *e, const void *arg, size_t len);
/* Whether a running fill may end up as an entry the purge would remove:
 * then it must not be stored (what it got may predate the purge).  Tags are
 * known only at the end, so tag and full purges cancel every fill. */
typedef bool (*purge_fill_cb)(const struct cache_fill *f, const void *arg, size_t len);

static size_t purge(struct cache *c, purge_match_cb match, purge_fill_cb fill_match, const void *arg, size_t len)
{
    size_t n = 0;
    for (unsigned i = 0; i < c->nshards; i++) {
        struct cache_shard *s = &c->shards[i];
        struct list victims;
        list_init(&victims);
        size_t removed = 0;
        pthread_mutex_lock(&s->lock);
        struct list *queues[2] = {&s->small, &s->main};
        for (int q = 0; q < 2; q++) {
            for (struct list *l = queues[q]->next, *next; l != queues[q]; l = next) {
                next = l->next;
                struct cache_entry *e = LIST_ENTRY(l, struct cache_entry, _qlink);
                if (match(e, arg, len)) {
                    unlink_entry(s, e, &victims);
                    removed++;
                }
            }
        }
        for (struct list *l = s->fills.next; l != &s->fills; l = l->next) {
            struct cache_fill *f = LIST_ENTRY(l, struct cache_fill, link);
            if (fill_match == NULL || fill_match(f, arg, len))
                f->is_cancelled = true;
        }
        counter_add(&s->purged, (int64_t)removed);
        pthread_mutex_unlock(&s->lock);
        cache_release_victims(&victims);
        n += removed;
    }
    return n;
}

static bool fill_match_url(const struct cache_fill *f, const void *url, size_t len)
{
    return f->url_len == 0 || (f->url_len == len && memcmp(f->key + f->url_off, url, len) == 0);
}

static bool fill_match_prefix(const struct cache_fill *f, const void *prefix, size_t len)
{
    return f->url_len == 0 || (f->url_len >= len && memcmp(f->key + f->url_off, prefix, len) == 0);
}

static bool match_url(const struct cache_entry *e, const void *url, size_t len)
{
    return e->url_len == len && memcmp(e->key + e->url_off, url, len) == 0;
}

static bool match_prefix(const struct cache_entry *e, const void *prefix, size_t len)
{
    return e->url_len >= len && memcmp(e->key + e->url_off, prefix, len) == 0;
}

static bool match_tag(const struct cache_entry *e, const void *tag, size_t len)
{
    for (const char *p = e->tags; *p != '\0';) {
        size_t n = strcspn(p, " ");
        if (n == len && memcmp(p, tag, len) == 0)
            return true;
        p += n;
        p += strspn(p, " ");
    }
    return false;
}

static bool match_all(const struct cache_entry *e, const void *arg, size_t len)
{
    return true;
}

size_t cache_purge_url(struct cache *c, const char *url, size_t len)
{
    return purge(c, match_url, fill_match_url, url, len);
}

size_t cache_purge_prefix(struct cache *c, const char *url_prefix, size_t len)
{
    return purge(c, match_prefix, fill_match_prefix, url_prefix, len);
}

size_t cache_purge_tag(struct cache *c, const char *tag)
{
    size_t len = strlen(tag);
    return len == 0 || strchr(tag, ' ') != NULL ? 0 : purge(c, match_tag, NULL, tag, len);
}

size_t cache_purge_all(struct cache *c)
{
    return purge(c, match_all, NULL, NULL, 0);
}

void cache_get_stats(struct cache *c, struct cache_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->memory = atomic_load_explicit(&c->memory, memory_order_relaxed);
    out->max_object = atomic_load_explicit(&c->max_object, memory_order_relaxed);
    out->fills_aborted = counter_load(&c->fills_aborted);
    for (unsigned i = 0; i < c->nshards; i++) {
        struct cache_shard *s = &c->shards[i];
        out->objects += counter_load(&s->objects);
        out->bytes += counter_load(&s->bytes);
        out->inserts += counter_load(&s->inserts);
        out->evictions += counter_load(&s->evictions);
        out->purged += counter_load(&s->purged);
    }
}

/* ==== entries from the Redis tier (cache/tier.c builds them) ==== */

int cache_insert(struct cache *c, struct cache_entry *e)
{
    uint64_t max_object = atomic_load_explicit(&c->max_object, memory_order_relaxed);
    if (e->head_len > max_object || e->body_len > max_object - e->head_len)
        return -E2BIG;
    struct cache_shard *s = cache_shard_of(c, e->hash);
    struct list victims;
    list_init(&victims);
    int rc = 0;
    cache_entry_ref(e); /* the store's */
    pthread_mutex_lock(&s->lock);
    /* a fill may have linked a fresher response while Redis answered: an
     * entry from Redis never replaces a newer one */
    for (struct cache_entry *x = s->buckets[e->hash & s->mask]; x != NULL && rc == 0; x = x->_hnext)
        if (cache_entry_is_key(x, e->hash, e->key, e->key_len) && strcmp(x->vary_key, e->vary_key) == 0 &&
            x->response_time_ms >= e->response_time_ms)
            rc = -EEXIST;
    if (rc == 0)
        rc = cache_shard_insert_locked(s, e, &victims);
    pthread_mutex_unlock(&s->lock);
    if (rc != 0)
        atomic_fetch_sub_explicit(&e->_refs, 1, memory_order_relaxed); /* the store's, never taken */
    cache_release_victims(&victims);
    return rc;
}
