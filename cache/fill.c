/* SPDX-License-Identifier: MIT */
/*
 * fill: a response on its way into the store, shared as it streams with the
 * requests that joined it.
 *
 * Design.
 * - One fill per key (not per variant: a joiner cannot know the variant
 *   before the response head).  Running fills are registered on their
 *   shard; the registry holds a ref while the fill runs, the filler and each
 *   joiner one more, and the last release frees it.  Once the head is set,
 *   cache_fill_matches tells a joiner whether the response's Vary selects
 *   it; when not, it goes upstream itself.
 * - The body goes into malloc'd blocks (they cross threads, so not the
 *   per-thread buf freelist) that grow from CACHE_BLOCK_MIN to
 *   CACHE_BLOCK_MAX.  The block pointer array is sized for max_object when
 *   the fill starts, so it never moves under a reader.  The filler copies
 *   bytes into the blocks, then publishes the new length with a release
 *   store; readers load it with acquire and read below it without a lock.
 *   Written bytes never change, so a run handed to a reader stays valid
 *   while it holds a ref.
 * - Finishing builds the entry around the fill's blocks (the body is not
 *   copied), links it and takes the fill off its shard in one critical
 *   section, so a lookup sees either the fill or the entry.  The entry then
 *   owns the blocks; the fill keeps a ref to it while joiners still read.
 * - Waiters are woken under the fill's mutex.  Calling wake() outside it
 *   would need a copy of the list, and a waiter that unwatched meanwhile
 *   could be freed before its wake ran; under the lock, once unwatch returns
 *   no wake names the waiter.  Hence wake() must be cheap (queue + async
 *   send) and must not call back into the fill.
 *
 * Threading: the filler (one thread at a time) calls set_vary, set_head,
 * append, finish and abort; anyone holding a ref calls the rest.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/cache_int.h"

/* refs counts the filler's and joiners' refs, plus this while the fill is
 * registered: one atomic, yet a release can tell whether the registry's is
 * the only ref left. */
#define REGISTRY_REF (1u << 30)

/* Body bytes held by blocks 0 .. CACHE_BLOCK_GROW - 1. */
#define GROW_END ((size_t)CACHE_BLOCK_MIN * ((1u << CACHE_BLOCK_GROW) - 1))

static size_t block_size(size_t k)
{
    return k < CACHE_BLOCK_GROW ? (size_t)CACHE_BLOCK_MIN << k : CACHE_BLOCK_MAX;
}

/* The block holding body offset off, and where that block starts. */
static size_t block_index(size_t off, size_t *start)
{
    if (off < GROW_END) {
        size_t k = (size_t)(63 - __builtin_clzll(off / CACHE_BLOCK_MIN + 1));
        *start = (size_t)CACHE_BLOCK_MIN * (((size_t)1 << k) - 1);
        return k;
    }
    size_t k = CACHE_BLOCK_GROW + (off - GROW_END) / CACHE_BLOCK_MAX;
    *start = GROW_END + (k - CACHE_BLOCK_GROW) * CACHE_BLOCK_MAX;
    return k;
}

static void fill_free(struct cache_fill *f)
{
    if (f->entry != NULL) {
        cache_entry_release(f->entry);
    } else {
        for (size_t k = 0; k < f->nblocks; k++)
            free(f->blocks[k]);
    }
    free(f->blocks);
    free(f->key);
    free(f->vary);
    free(f->vary_key);
    free(atomic_load_explicit(&f->head, memory_order_relaxed));
    pthread_mutex_destroy(&f->lock);
    free(f);
}

static void fill_drop(struct cache_fill *f, unsigned n)
{
    if (atomic_fetch_sub_explicit(&f->refs, n, memory_order_acq_rel) == n)
        fill_free(f);
}

void cache_fill_ref(struct cache_fill *f)
{
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
}

void cache_fill_release(struct cache_fill *f)
{
    unsigned old = atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel);
    /* Only the registry's ref left: the filler went away without finish or
     * abort (those unregister first), and joiners would wait forever. */
    assert(old != REGISTRY_REF + 1);
    if (old == 1)
        fill_free(f);
}

/* Under s->lock: takes f off its shard; true when this call did, and so now
 * owns the registry's ref. */
static bool unregister_locked(struct cache_fill *f)
{
    if (!f->is_registered)
        return false;
    list_remove(&f->link);
    f->is_registered = false;
    return true;
}

void cache_fill_drop_registry(struct cache_fill *f)
{
    if (unregister_locked(f))
        fill_drop(f, REGISTRY_REF);
}

struct cache_fill *cache_fill_find_locked(struct cache_shard *s, uint64_t hash, const char *key, size_t len)
{
    for (struct list *l = s->fills.next; l != &s->fills; l = l->next) {
        struct cache_fill *f = LIST_ENTRY(l, struct cache_fill, link);
        if (f->hash == hash && f->key_len == len && memcmp(f->key, key, len) == 0)
            return f;
    }
    return NULL;
}

static void wake_locked(struct cache_fill *f)
{
    for (struct list *l = f->waiters.next, *next; l != &f->waiters; l = next) {
        next = l->next;
        struct cache_waiter *w = LIST_ENTRY(l, struct cache_waiter, _link);
        w->wake(w);
    }
}

static void wake_all(struct cache_fill *f)
{
    pthread_mutex_lock(&f->lock);
    wake_locked(f);
    pthread_mutex_unlock(&f->lock);
}

/* Moves a running fill to its end state and wakes everyone; false when it
 * had ended already. */
static bool fill_end(struct cache_fill *f, enum cache_fill_state state)
{
    pthread_mutex_lock(&f->lock);
    bool was_running = atomic_load_explicit(&f->state, memory_order_relaxed) == CACHE_FILL_RUNNING;
    if (was_running) {
        atomic_store_explicit(&f->state, state, memory_order_release);
        wake_locked(f);
    }
    pthread_mutex_unlock(&f->lock);
    return was_running;
}

static struct cache_fill *fill_create(struct cache *c, struct cache_shard *s,
                                      const struct cache_lookup_req *rq)
{
    uint64_t max_object = atomic_load_explicit(&c->max_object, memory_order_relaxed);
    if (max_object == 0 || max_object > SIZE_MAX / 2)
        return NULL;
    struct cache_fill *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    size_t start;
    f->nblocks = block_index((size_t)max_object - 1, &start) + 1;
    f->blocks = calloc(f->nblocks, sizeof(*f->blocks));
    f->key = malloc(rq->key_len ? rq->key_len : 1);
    if (f->blocks == NULL || f->key == NULL) {
        free(f->blocks);
        free(f->key);
        free(f);
        return NULL;
    }
    memcpy(f->key, rq->key, rq->key_len);
    f->key_len = rq->key_len;
    f->hash = rq->hash;
    f->c = c;
    f->s = s;
    f->limit = max_object;
    f->url_off = rq->url_off;
    f->url_len = rq->url_len;
    atomic_init(&f->refs, REGISTRY_REF + 1); /* the registry's and the filler's */
    atomic_init(&f->state, CACHE_FILL_RUNNING);
    atomic_init(&f->head, NULL);
    atomic_init(&f->len, 0);
    pthread_mutex_init(&f->lock, NULL);
    list_init(&f->waiters);
    list_init(&f->link);
    return f;
}

struct cache_fill *cache_fill_start(struct cache *c, const struct cache_lookup_req *rq,
                                    struct cache_fill **existing)
{
    struct cache_shard *s = cache_shard_of(c, rq->hash);
    /* allocated before the lock: joiners normally come through cache_lookup,
     * so a fill built in vain here is rare */
    struct cache_fill *f = fill_create(c, s, rq);
    pthread_mutex_lock(&s->lock);
    struct cache_fill *x = cache_fill_find_locked(s, rq->hash, rq->key, rq->key_len);
    if (x != NULL) {
        cache_fill_ref(x);
    } else if (f != NULL) {
        if (f->limit > s->budget)
            f->limit = s->budget; /* the entry could never be linked */
        list_push(&s->fills, &f->link);
        f->is_registered = true;
    }
    pthread_mutex_unlock(&s->lock);
    *existing = x;
    if (x != NULL && f != NULL) {
        fill_free(f);
        f = NULL;
    }
    return f;
}

enum cache_fill_state cache_fill_state(struct cache_fill *f)
{
    return atomic_load_explicit(&f->state, memory_order_acquire);
}

int cache_fill_set_vary(struct cache_fill *f, const char *vary, const char *vary_key)
{
    if (atomic_load_explicit(&f->head, memory_order_relaxed) != NULL || f->vary != NULL)
        return -EINVAL;
    f->vary = strdup(vary);
    f->vary_key = strdup(vary_key);
    if (f->vary == NULL || f->vary_key == NULL) {
        free(f->vary);
        free(f->vary_key);
        f->vary = f->vary_key = NULL;
        return -ENOMEM;
    }
    return 0;
}

static bool head_has_vary(const char *head, size_t len)
{
    for (const char *p = head, *end = head + len; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            return false;
        p = eol + 1;
        if ((size_t)(end - p) >= 5 && strncasecmp(p, "vary:", 5) == 0)
            return true;
    }
    return false;
}

int cache_fill_set_head(struct cache_fill *f, const char *head, size_t len, bool is_chunked)
{
    if (cache_fill_state(f) != CACHE_FILL_RUNNING || atomic_load_explicit(&f->head, memory_order_relaxed))
        return -EINVAL;
    if (len > f->limit) {
        cache_fill_abort(f);
        return -EFBIG;
    }
    char *h = malloc(len + 1);
    if (h == NULL) {
        cache_fill_abort(f);
        return -ENOMEM;
    }
    memcpy(h, head, len);
    h[len] = '\0';
    f->head_len = len;
    f->is_chunked = is_chunked;
    /* without the filler's Vary list and variant, a joiner cannot be told
     * whether the response is its own: then no joiner matches */
    f->is_vary_unknown = f->vary == NULL && head_has_vary(h, len);
    atomic_store_explicit(&f->head, h, memory_order_release);
    wake_all(f);
    return 0;
}

const char *cache_fill_head(struct cache_fill *f, size_t *len, bool *is_chunked)
{
    const char *h = atomic_load_explicit(&f->head, memory_order_acquire);
    if (h != NULL) {
        *len = f->head_len;
        *is_chunked = f->is_chunked;
    }
    return h;
}

bool cache_fill_matches(struct cache_fill *f, cache_header_get_cb get_header, void *arg)
{
    if (atomic_load_explicit(&f->head, memory_order_acquire) == NULL)
        return true;
    if (f->is_vary_unknown)
        return false;
    return f->vary == NULL || cache_vary_matches(f->vary, f->vary_key, get_header, arg);
}

int cache_fill_append(struct cache_fill *f, const char *data, size_t len)
{
    if (cache_fill_state(f) != CACHE_FILL_RUNNING ||
        atomic_load_explicit(&f->head, memory_order_relaxed) == NULL)
        return -EINVAL;
    size_t cur = atomic_load_explicit(&f->len, memory_order_relaxed);
    if (len > f->limit - f->head_len - cur) {
        cache_fill_abort(f);
        return -EFBIG;
    }
    if (len == 0)
        return 0;
    while (len > 0) {
        size_t start, k = block_index(cur, &start);
        assert(k < f->nblocks);
        if (f->blocks[k] == NULL && (f->blocks[k] = malloc(block_size(k))) == NULL) {
            cache_fill_abort(f);
            return -ENOMEM;
        }
        size_t n = start + block_size(k) - cur;
        if (n > len)
            n = len;
        memcpy(f->blocks[k] + (cur - start), data, n);
        cur += n;
        data += n;
        len -= n;
    }
    atomic_store_explicit(&f->len, cur, memory_order_release);
    wake_all(f);
    return 0;
}

size_t cache_fill_read(struct cache_fill *f, size_t off, const char **data)
{
    size_t len = atomic_load_explicit(&f->len, memory_order_acquire);
    *data = NULL;
    if (off >= len)
        return 0;
    size_t start, k = block_index(off, &start);
    size_t end = start + block_size(k);
    if (end > len)
        end = len;
    *data = f->blocks[k] + (off - start);
    return end - off;
}

static char *put(char **p, const char *s, size_t n)
{
    char *d = *p;
    memcpy(d, s, n);
    d[n] = '\0';
    *p += n + 1;
    return d;
}

/* The entry for a fill whose body is complete, built around its blocks:
 * one allocation for the struct, the piece array, the strings and the head.
 * Two refs: the fill's and the store's. */
static struct cache_entry *entry_build(struct cache_fill *f, const struct cache_entry *meta, const char *vary,
                                       const char *vary_key)
{
    size_t len = atomic_load_explicit(&f->len, memory_order_relaxed), start;
    size_t nb = len > 0 ? block_index(len - 1, &start) + 1 : 0;
    const char *tags = meta->tags != NULL ? meta->tags : "";
    size_t vary_n = strlen(vary), vk_n = strlen(vary_key), tags_n = strlen(tags);
    size_t etag_n = meta->etag != NULL ? strlen(meta->etag) : 0;
    size_t size = sizeof(struct cache_entry) + nb * sizeof(struct cache_piece) + f->key_len + 1 + vary_n + 1 +
                  vk_n + 1 + tags_n + 1 + (meta->etag != NULL ? etag_n + 1 : 0) + f->head_len + 1;
    struct cache_entry *e = malloc(size);
    if (e == NULL)
        return NULL;
    memset(e, 0, sizeof(*e));
    struct cache_piece *pieces = (struct cache_piece *)(e + 1);
    char *p = (char *)(pieces + nb);
    e->hash = f->hash;
    e->key = put(&p, f->key, f->key_len);
    e->key_len = f->key_len;
    if (meta->url_off <= f->key_len && meta->url_len <= f->key_len - meta->url_off) {
        e->url_off = meta->url_off;
        e->url_len = meta->url_len;
    }
    e->vary = put(&p, vary, vary_n);
    e->vary_key = put(&p, vary_key, vk_n);
    e->status = meta->status;
    e->request_time_ms = meta->request_time_ms;
    e->response_time_ms = meta->response_time_ms;
    e->ttl = meta->ttl;
    e->date = meta->date;
    e->last_modified = meta->last_modified;
    e->etag = meta->etag != NULL ? put(&p, meta->etag, etag_n) : NULL;
    e->tags = put(&p, tags, tags_n);
    e->head = put(&p, atomic_load_explicit(&f->head, memory_order_relaxed), f->head_len);
    e->head_len = f->head_len;
    e->bytes = size;
    for (size_t k = 0, off = 0; k < nb; k++) {
        pieces[k].data = f->blocks[k];
        pieces[k].len = len - off < block_size(k) ? len - off : block_size(k);
        off += pieces[k].len;
        e->bytes += block_size(k);
    }
    e->body = pieces;
    e->nbody = nb;
    e->body_len = len;
    e->is_chunked = f->is_chunked;
    atomic_init(&e->_refs, 2);
    atomic_init(&e->_freq, 0);
    list_init(&e->_qlink);
    e->_blocks = pieces;
    return e;
}

int cache_fill_finish(struct cache_fill *f, const struct cache_entry *meta)
{
    if (cache_fill_state(f) != CACHE_FILL_RUNNING)
        return -EINVAL;
    if (atomic_load_explicit(&f->head, memory_order_relaxed) == NULL) {
        cache_fill_abort(f);
        return -EINVAL;
    }
    const char *vary = meta->vary != NULL ? meta->vary : f->vary != NULL ? f->vary : "";
    const char *vary_key = meta->vary_key != NULL ? meta->vary_key : f->vary_key != NULL ? f->vary_key : "";
    struct cache_entry *e = NULL;
    int rc = -EINVAL;
    /* a head with Vary but no list from anyone would be served to every variant */
    if (vary[0] != '\0' || !f->is_vary_unknown) {
        e = entry_build(f, meta, vary, vary_key);
        rc = e != NULL ? 0 : -ENOMEM;
    }
    struct cache_shard *s = f->s;
    struct list victims;
    list_init(&victims);
    pthread_mutex_lock(&s->lock);
    bool owned = unregister_locked(f);
    if (e != NULL) {
        /* a purge that began after this fill did may have removed what the
         * origin sent us before it: do not bring it back */
        if (f->is_cancelled)
            rc = -ECANCELED;
        else
            rc = cache_shard_insert_locked(s, e, &victims);
        if (rc != 0)
            atomic_fetch_sub_explicit(&e->_refs, 1, memory_order_relaxed); /* the store's, never taken */
    }
    pthread_mutex_unlock(&s->lock);
    cache_release_victims(&victims);
    f->entry = e;
    fill_end(f, CACHE_FILL_DONE);
    if (owned)
        fill_drop(f, REGISTRY_REF);
    return rc;
}

void cache_fill_abort(struct cache_fill *f)
{
    struct cache_shard *s = f->s;
    pthread_mutex_lock(&s->lock);
    bool owned = unregister_locked(f);
    pthread_mutex_unlock(&s->lock);
    /* taken off the shard first, so a woken joiner that retries starts a
     * fresh fill instead of finding this one */
    if (fill_end(f, CACHE_FILL_ABORTED))
        atomic_fetch_add_explicit(&f->c->fills_aborted, 1, memory_order_relaxed);
    if (owned)
        fill_drop(f, REGISTRY_REF);
}

void cache_fill_watch(struct cache_fill *f, struct cache_waiter *w)
{
    pthread_mutex_lock(&f->lock);
    list_push(&f->waiters, &w->_link);
    pthread_mutex_unlock(&f->lock);
}

void cache_fill_unwatch(struct cache_fill *f, struct cache_waiter *w)
{
    pthread_mutex_lock(&f->lock);
    list_remove(&w->_link);
    pthread_mutex_unlock(&f->lock);
}
