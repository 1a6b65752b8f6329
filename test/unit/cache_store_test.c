/* SPDX-License-Identifier: MIT */
/* The in-memory store and fills: insert, lookup, replace, variants, S3-FIFO
 * eviction and budgets, refs, purge, fills across threads, cache_get. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "cache/cache_int.h"
#include "test/unit/hdr_stub.h"
#include "test.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

/* ---- helpers ---- */

/* FNV-1a then a murmur finaliser: the store takes the hash from the caller,
 * and cache_hash belongs to key.c. */
static uint64_t hash_of(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}


/* Two requests that differ in Accept-Encoding. */
static const struct hdr gzip[] = {{"accept-encoding", "gzip"}, {NULL, NULL}};
static const struct hdr br[] = {{"accept-encoding", "br"}, {NULL, NULL}};

struct obj {
    const char *key;
    uint64_t hash; /* 0: hash_of(key) */
    const char *vary;
    const struct hdr *hdrs; /* the filler's request, for its vary key */
    const char *tags;
    const char *body;
    size_t body_len; /* 0: strlen(body) */
    const char *head;
};

static uint64_t obj_hash(const struct obj *o)
{
    return o->hash != 0 ? o->hash : hash_of(o->key);
}

static struct cache_lookup_req req_of(const char *key, uint64_t hash, const struct hdr *hdrs)
{
    return (struct cache_lookup_req){.key = key,
                                     .key_len = strlen(key),
                                     .hash = hash != 0 ? hash : hash_of(key),
                                     .get_header = get_hdr,
                                     .arg = (void *)hdrs};
}

/* Stores o through a fill as the proxy does; returns cache_fill_finish's result. */
static int put(struct cache *c, const struct obj *o)
{
    struct cache_lookup_req rq = req_of(o->key, obj_hash(o), o->hdrs);
    struct cache_fill *existing = NULL;
    struct cache_fill *f = cache_fill_start(c, &rq, &existing);
    ASSERT(f != NULL);
    ASSERT(existing == NULL);
    char vk[CACHE_VARY_KEY_MAX] = "";
    const char *vary = o->vary != NULL ? o->vary : "";
    if (vary[0] != '\0')
        ASSERT(cache_vary_key(vary, get_hdr, (void *)o->hdrs, vk, sizeof(vk)) > 0);
    const char *head = o->head != NULL ? o->head : "HTTP/1.1 200 OK\r\nContent-Type: text/plain";
    ASSERT_EQ(cache_fill_set_head(f, head, strlen(head), false), 0);
    const char *body = o->body != NULL ? o->body : "";
    size_t len = o->body_len != 0 ? o->body_len : strlen(body);
    if (len > 0)
        ASSERT_EQ(cache_fill_append(f, body, len), 0);
    const char *url = strchr(o->key, ' ');
    url = url != NULL ? url + 1 : o->key;
    struct cache_entry meta = {
        .url_off = (size_t)(url - o->key),
        .url_len = strcspn(url, "\n"),
        .vary = (char *)vary,
        .vary_key = vk,
        .status = 200,
        .date = -1,
        .last_modified = -1,
        .tags = (char *)o->tags,
    };
    int rc = cache_fill_finish(f, &meta);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_DONE);
    cache_fill_release(f);
    return rc;
}

static struct cache_entry *get(struct cache *c, const char *key, uint64_t hash, const struct hdr *hdrs)
{
    struct cache_lookup_req rq = req_of(key, hash, hdrs);
    return cache_lookup(c, &rq, NULL);
}

/* The body of an entry as one string (test bodies are small). */
static const char *body_of(const struct cache_entry *e)
{
    static char out[1 << 20];
    size_t n = 0;
    for (size_t i = 0; i < e->nbody; i++) {
        memcpy(out + n, e->body[i].data, e->body[i].len);
        n += e->body[i].len;
    }
    out[n] = '\0';
    return out;
}

static bool present(struct cache *c, const char *key, uint64_t hash)
{
    struct cache_entry *e = get(c, key, hash, NULL);
    cache_entry_release(e);
    return e != NULL;
}

/* Frees every store; under ASan, also proves nothing leaked (the harness
 * ends each case with _exit, which skips LeakSanitizer). */
static void finish_clean(void)
{
    cache_shutdown_all();
#if defined(__SANITIZE_ADDRESS__)
    ASSERT_EQ(__lsan_do_recoverable_leak_check(), 0);
#endif
}

static struct cache_stats stats_of(struct cache *c)
{
    struct cache_stats st;
    cache_get_stats(c, &st);
    return st;
}

/* ---- store ---- */

TEST(insert_lookup_and_miss)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    ASSERT(c != NULL);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/a", .body = "hello", .tags = "x y"}), 0);
    struct cache_entry *e = get(c, "GET http://h/a", 0, NULL);
    ASSERT(e != NULL);
    ASSERT_STR_EQ(body_of(e), "hello");
    ASSERT_EQ(e->body_len, 5);
    ASSERT_EQ(e->head_len, strlen("HTTP/1.1 200 OK\r\nContent-Type: text/plain"));
    ASSERT_EQ(memcmp(e->head, "HTTP/1.1 200 OK\r\n", 17), 0);
    ASSERT_STR_EQ(e->tags, "x y");
    ASSERT_EQ(e->url_off, 4);
    ASSERT_EQ(e->url_len, 10);
    ASSERT_EQ(e->status, 200);
    ASSERT(e->etag == NULL);
    ASSERT(e->_is_linked);
    ASSERT_EQ(e->_queue, CACHE_QUEUE_SMALL);
    ASSERT_EQ(e->_freq, 1); /* the lookup counted */
    cache_entry_release(e);
    ASSERT(get(c, "GET http://h/b", 0, NULL) == NULL);
    /* same hash, other key: no confusion */
    ASSERT(get(c, "GET http://h/b", hash_of("GET http://h/a"), NULL) == NULL);
    struct cache_stats st = stats_of(c);
    ASSERT_EQ(st.objects, 1);
    ASSERT_EQ(st.inserts, 1);
    ASSERT_EQ(st.memory, 1 << 20);
    ASSERT_EQ(st.max_object, 64 << 10);
    ASSERT_GT(st.bytes, sizeof(struct cache_entry) + CACHE_BLOCK_MIN);
    finish_clean();
}

TEST(empty_body_and_large_body_pieces)
{
    struct cache *c = cache_get("t", 8 << 20, 1 << 20, 4);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/empty"}), 0);
    struct cache_entry *e = get(c, "GET http://h/empty", 0, NULL);
    ASSERT(e != NULL);
    ASSERT_EQ(e->nbody, 0);
    ASSERT_EQ(e->body_len, 0);
    cache_entry_release(e);

    static char big[300000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + i % 26);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/big", .body = big, .body_len = sizeof(big)}), 0);
    e = get(c, "GET http://h/big", 0, NULL);
    ASSERT(e != NULL);
    ASSERT_EQ(e->body_len, sizeof(big));
    /* 1+2+4+8+16+32 KiB then 64 KiB blocks: 63 KiB + 4 x 64 KiB covers 300000 */
    ASSERT_EQ(e->nbody, 10);
    size_t off = 0;
    for (size_t i = 0; i < e->nbody; i++) {
        ASSERT_EQ(memcmp(e->body[i].data, big + off, e->body[i].len), 0);
        off += e->body[i].len;
    }
    ASSERT_EQ(off, sizeof(big));
    cache_entry_release(e);
    finish_clean();
}

TEST(newer_entry_replaces_older_and_old_ref_stays_valid)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/a", .body = "one"}), 0);
    struct cache_entry *old = get(c, "GET http://h/a", 0, NULL);
    ASSERT(old != NULL);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/a", .body = "two"}), 0);
    ASSERT(!old->_is_linked);
    ASSERT_STR_EQ(body_of(old), "one"); /* our ref keeps the bytes */
    struct cache_entry *e = get(c, "GET http://h/a", 0, NULL);
    ASSERT_STR_EQ(body_of(e), "two");
    cache_entry_release(e);
    cache_entry_release(old);
    ASSERT_EQ(stats_of(c).objects, 1);
    ASSERT_EQ(stats_of(c).inserts, 2);
    finish_clean();
}

TEST(variants_by_vary)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    const struct hdr none[] = {{NULL, NULL}};
    const char *k = "GET http://h/v";
    ASSERT_EQ(put(c, &(struct obj){.key = k, .vary = "accept-encoding", .hdrs = gzip, .body = "G"}), 0);
    ASSERT_EQ(put(c, &(struct obj){.key = k, .vary = "accept-encoding", .hdrs = br, .body = "B"}), 0);
    ASSERT_EQ(stats_of(c).objects, 2);
    struct cache_entry *e = get(c, k, 0, gzip);
    ASSERT(e != NULL);
    ASSERT_STR_EQ(body_of(e), "G");
    cache_entry_release(e);
    e = get(c, k, 0, br);
    ASSERT(e != NULL);
    ASSERT_STR_EQ(body_of(e), "B");
    cache_entry_release(e);
    ASSERT(get(c, k, 0, none) == NULL);
    ASSERT(get(c, k, 0, NULL) == NULL); /* no header callback: only Vary-less entries */

    /* a newer gzip response replaces the gzip one only */
    ASSERT_EQ(put(c, &(struct obj){.key = k, .vary = "accept-encoding", .hdrs = gzip, .body = "G2"}), 0);
    ASSERT_EQ(stats_of(c).objects, 2);
    e = get(c, k, 0, gzip);
    ASSERT_STR_EQ(body_of(e), "G2");
    cache_entry_release(e);

    /* a newer response without Vary matches everyone, and being newest wins */
    ASSERT_EQ(put(c, &(struct obj){.key = k, .body = "plain"}), 0);
    e = get(c, k, 0, br);
    ASSERT_STR_EQ(body_of(e), "plain");
    cache_entry_release(e);
    finish_clean();
}

TEST(variants_per_key_are_bounded)
{
    struct cache *c = cache_get("t", 4 << 20, 64 << 10, 4);
    char v[16];
    for (int i = 0; i < 40; i++) {
        snprintf(v, sizeof(v), "l%d", i);
        const struct hdr h[] = {{"accept-language", v}, {NULL, NULL}};
        ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/lang", .vary = "accept-language", .hdrs = h}), 0);
    }
    ASSERT_EQ(stats_of(c).objects, 16);
    const struct hdr newest[] = {{"accept-language", "l39"}, {NULL, NULL}};
    const struct hdr oldest[] = {{"accept-language", "l0"}, {NULL, NULL}};
    struct cache_entry *e = get(c, "GET http://h/lang", 0, newest);
    ASSERT(e != NULL);
    cache_entry_release(e);
    ASSERT(get(c, "GET http://h/lang", 0, oldest) == NULL);
    finish_clean();
}

/* The charge of one small entry with a key of klen bytes. */
static uint64_t entry_charge(size_t klen)
{
    struct cache *c = cache_get("probe", 1 << 20, 4096, 4);
    char key[64];
    snprintf(key, sizeof(key), "%-*s", (int)klen, "GET http://h/probe");
    ASSERT_EQ(put(c, &(struct obj){.key = key, .body = "x"}), 0);
    uint64_t n = stats_of(c).bytes;
    cache_purge_all(c);
    return n;
}

TEST(flood_of_distinct_keys_stays_within_budget)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    static char body[700];
    memset(body, 'b', sizeof(body));
    char key[64];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "GET http://h/flood/%d", i);
        ASSERT_EQ(put(c, &(struct obj){.key = key, .body = body, .body_len = sizeof(body)}), 0);
        if (i % 97 == 0) {
            for (unsigned s = 0; s < c->nshards; s++)
                ASSERT_LE(atomic_load(&c->shards[s].bytes), c->shards[s].budget);
        }
    }
    struct cache_stats st = stats_of(c);
    ASSERT_LE(st.bytes, 1 << 20);
    ASSERT_GT(st.bytes, (1 << 20) * 8 / 10); /* and it is used */
    ASSERT_EQ(st.inserts, 20000);
    ASSERT_EQ(st.objects + st.evictions, 20000);
    /* the newest is there, the first long gone */
    ASSERT(present(c, "GET http://h/flood/19999", 0));
    ASSERT(!present(c, "GET http://h/flood/0", 0));
    finish_clean();
}

/* Keys forced into shard 0 (hash < 2^62 with 4 shards) and a shard budget of
 * ten entries: small holds one entry, main nine. */
static char *key_n(int i)
{
    static char keys[8][32];
    static int next;
    char *k = keys[next++ % 8];
    snprintf(k, 32, "GET http://h/s/%04d", i);
    return k;
}

TEST(s3fifo_hit_entry_survives_a_flood_and_ghost_goes_to_main)
{
    uint64_t charge = entry_charge(strlen(key_n(0)));
    struct cache *c = cache_get("t", 4 * 10 * charge + 4 * (charge / 2), 256, 4);
    ASSERT_EQ(c->nshards, 4);
    struct cache_shard *s = &c->shards[0];
    ASSERT_EQ(put(c, &(struct obj){.key = key_n(0), .hash = 1000, .body = "x"}), 0);
    ASSERT(present(c, key_n(0), 1000)); /* hit once: freq 1 */
    for (int i = 1; i <= 50; i++)
        ASSERT_EQ(put(c, &(struct obj){.key = key_n(i), .hash = 1000 + (uint64_t)i, .body = "x"}), 0);
    ASSERT_EQ(s->nentries, 10);
    /* key 0 was moved to main instead of being evicted */
    struct cache_entry *e = get(c, key_n(0), 1000, NULL);
    ASSERT(e != NULL);
    ASSERT_EQ(e->_queue, CACHE_QUEUE_MAIN);
    cache_entry_release(e);
    /* FIFO: the nine newest one-hit entries remain */
    for (int i = 1; i <= 41; i++)
        ASSERT(!present(c, key_n(i), 1000 + (uint64_t)i));
    for (int i = 42; i <= 50; i++)
        ASSERT(present(c, key_n(i), 1000 + (uint64_t)i));
    /* key 30 was dropped from small recently: it is a ghost and comes back into main */
    ASSERT_EQ(put(c, &(struct obj){.key = key_n(30), .hash = 1030, .body = "x"}), 0);
    e = get(c, key_n(30), 1030, NULL);
    ASSERT(e != NULL);
    ASSERT_EQ(e->_queue, CACHE_QUEUE_MAIN);
    cache_entry_release(e);
    /* a new key goes to small */
    ASSERT_EQ(put(c, &(struct obj){.key = key_n(99), .hash = 1099, .body = "x"}), 0);
    e = get(c, key_n(99), 1099, NULL);
    ASSERT_EQ(e->_queue, CACHE_QUEUE_SMALL);
    cache_entry_release(e);
    ASSERT_LE(atomic_load(&s->bytes), s->budget);
    finish_clean();
}

TEST(s3fifo_main_gives_second_chances)
{
    uint64_t charge = entry_charge(strlen(key_n(0)));
    struct cache *c = cache_get("t", 4 * 10 * charge + 4 * (charge / 2), 256, 4);
    struct cache_shard *s = &c->shards[0];
    /* nine entries hit once each, keys 0 and 1 three times */
    for (int i = 0; i < 9; i++) {
        ASSERT_EQ(put(c, &(struct obj){.key = key_n(i), .hash = 2000 + (uint64_t)i, .body = "x"}), 0);
        for (int k = 0; k < (i < 2 ? 3 : 1); k++)
            ASSERT(present(c, key_n(i), 2000 + (uint64_t)i));
    }
    /* entries hit once flood main through small while keys 0 and 1 stay in
     * use: the CLOCK passes over them (freq - 1) and evicts the others */
    for (int i = 200; i < 230; i++) {
        ASSERT_EQ(put(c, &(struct obj){.key = key_n(i), .hash = 2000 + (uint64_t)i, .body = "x"}), 0);
        ASSERT(present(c, key_n(i), 2000 + (uint64_t)i));
        if (i % 4 == 0) {
            ASSERT(present(c, key_n(0), 2000));
            ASSERT(present(c, key_n(1), 2001));
        }
    }
    ASSERT_EQ(s->main_count + 2, s->nentries);
    ASSERT_LE(atomic_load(&s->bytes), s->budget);
    ASSERT(present(c, key_n(0), 2000));
    ASSERT(present(c, key_n(1), 2001));
    for (int i = 2; i < 9; i++)
        ASSERT(!present(c, key_n(i), 2000 + (uint64_t)i));
    finish_clean();
}

TEST(entry_too_large_for_its_shard_is_refused_but_fill_is_done)
{
    struct cache *c = cache_get("t", 4 * 4096, 64 << 10, 4);
    ASSERT_EQ(c->nshards, 4);
    static char body[3500]; /* fits max_object, but its blocks (7 KiB) not the shard */
    memset(body, 'z', sizeof(body));
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/big", .body = body, .body_len = sizeof(body)}),
              -E2BIG);
    ASSERT(!present(c, "GET http://h/big", 0));
    ASSERT_EQ(stats_of(c).objects, 0);
    finish_clean();
}

TEST(refs_keep_evicted_and_purged_entries_alive)
{
    struct cache *c = cache_get("t", 4 * 8192, 1024, 4);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/keep", .body = "kept bytes"}), 0);
    struct cache_entry *e = get(c, "GET http://h/keep", 0, NULL);
    ASSERT(e != NULL);
    char key[64];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "GET http://h/other/%d", i);
        ASSERT_EQ(put(c, &(struct obj){.key = key, .body = "o"}), 0);
    }
    cache_purge_all(c);
    ASSERT(!e->_is_linked);
    ASSERT_STR_EQ(body_of(e), "kept bytes");
    ASSERT_EQ(memcmp(e->head, "HTTP/1.1 200", 12), 0);
    ASSERT_EQ(stats_of(c).objects, 0);
    cache_entry_release(e);
    finish_clean();
}

TEST(purge_by_url_prefix_tag_and_all)
{
    struct cache *c = cache_get("t", 4 << 20, 64 << 10, 4);
    ASSERT_EQ(
        put(c,
            &(struct obj){.key = "GET http://h/a", .vary = "accept-encoding", .hdrs = gzip, .tags = "t1 t2"}),
        0);
    ASSERT_EQ(
        put(c, &(struct obj){.key = "GET http://h/a", .vary = "accept-encoding", .hdrs = br, .tags = "t2"}),
        0);
    ASSERT_EQ(put(c, &(struct obj){.key = "POST http://h/a\nbody:abcd", .tags = "t22"}), 0);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/ab", .tags = "t3  t2"}), 0);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/b/1"}), 0);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://h/b/2", .tags = "t1"}), 0);
    ASSERT_EQ(put(c, &(struct obj){.key = "GET http://g/b/3"}), 0);
    ASSERT_EQ(stats_of(c).objects, 7);

    ASSERT_EQ(cache_purge_url(c, "http://h/a", 10), 3); /* both variants and the POST */
    ASSERT_EQ(cache_purge_url(c, "http://h/a", 10), 0);
    ASSERT(present(c, "GET http://h/ab", 0));
    ASSERT_EQ(cache_purge_tag(c, "t2"), 1); /* /ab; t22 is another tag */
    ASSERT_EQ(cache_purge_tag(c, ""), 0);
    ASSERT_EQ(cache_purge_tag(c, "t1 t2"), 0);
    ASSERT_EQ(cache_purge_prefix(c, "http://h/b/", 11), 2);
    ASSERT(present(c, "GET http://g/b/3", 0));
    ASSERT_EQ(cache_purge_all(c), 1);
    struct cache_stats st = stats_of(c);
    ASSERT_EQ(st.objects, 0);
    ASSERT_EQ(st.bytes, 0);
    ASSERT_EQ(st.purged, 7);
    finish_clean();
}

TEST(cache_get_registry_rounding_and_resize)
{
    struct cache *a = cache_get("a", 64 << 20, 1 << 20, 5);
    ASSERT(a != NULL);
    ASSERT_EQ(a->nshards, 8);
    ASSERT_EQ(a->shards[0].budget, (64 << 20) / 8);
    ASSERT_EQ((uintptr_t)&a->shards[1] % 64, 0);
    struct cache *b =
        cache_get("b", 64 << 20, 8 << 20, 64); /* 64 MiB / 8 MiB: 4 shards keep 2 x max_object */
    ASSERT_EQ(b->nshards, 4);
    ASSERT_EQ(cache_get("c", 1 << 30, 1 << 20, 1)->nshards, 4);
    ASSERT_EQ(cache_get("d", 1 << 30, 1 << 10, 100000)->nshards, 1024);

    char key[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "GET http://h/%d", i);
        ASSERT_EQ(put(a, &(struct obj){.key = key, .body = "body"}), 0);
    }
    ASSERT_EQ(stats_of(a).objects, 2000);
    /* same name: same store, new budget; a shrink evicts now */
    ASSERT(cache_get("a", 256 << 10, 4096, 32) == a);
    ASSERT_EQ(a->nshards, 8);
    struct cache_stats st = stats_of(a);
    ASSERT_LE(st.bytes, 256 << 10);
    ASSERT_LT(st.objects, 2000);
    ASSERT_EQ(st.memory, 256 << 10);
    ASSERT_EQ(st.max_object, 4096);
    finish_clean();
}

/* ---- fills ---- */

struct joiner {
    struct cache_waiter w;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int wakes;
};

static void joiner_wake(struct cache_waiter *w)
{
    struct joiner *j = w->owner;
    pthread_mutex_lock(&j->lock);
    j->wakes++;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

static void joiner_init(struct joiner *j)
{
    memset(j, 0, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    j->w.wake = joiner_wake;
    j->w.owner = j;
}

/* Waits for a wake after `seen` of them; returns the new count. */
static int joiner_wait(struct joiner *j, int seen)
{
    pthread_mutex_lock(&j->lock);
    while (j->wakes == seen)
        pthread_cond_wait(&j->cond, &j->lock);
    int n = j->wakes;
    pthread_mutex_unlock(&j->lock);
    return n;
}

static int joiner_wakes(struct joiner *j)
{
    pthread_mutex_lock(&j->lock);
    int n = j->wakes;
    pthread_mutex_unlock(&j->lock);
    return n;
}

static struct cache_entry plain_meta(void)
{
    return (struct cache_entry){.url_off = 4, .url_len = 10, .status = 200, .date = -1, .last_modified = -1};
}

static struct cache_fill *fill_with_head(struct cache *c, const struct cache_lookup_req *rq, const char *head)
{
    struct cache_fill *ex;
    struct cache_fill *f = cache_fill_start(c, rq, &ex);
    ASSERT(f != NULL);
    ASSERT_EQ(cache_fill_set_head(f, head, strlen(head), false), 0);
    return f;
}

/* Finishes f expecting rc: the fill is done for its joiners, yet nothing is stored. */
static void finish_unstored(struct cache *c, const struct cache_lookup_req *rq, struct cache_fill *f, int rc)
{
    struct cache_entry meta = plain_meta();
    ASSERT_EQ(cache_fill_finish(f, &meta), rc);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_DONE);
    cache_fill_release(f);
    ASSERT(cache_lookup(c, rq, NULL) == NULL);
}

TEST(fill_start_registers_one_fill_per_key)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    struct cache_lookup_req rq = req_of("GET http://h/f", 0, NULL);
    struct cache_fill *ex = NULL, *ex2 = NULL, *lf = NULL;
    struct cache_fill *f = cache_fill_start(c, &rq, &ex);
    ASSERT(f != NULL);
    ASSERT(ex == NULL);
    ASSERT(cache_fill_start(c, &rq, &ex2) == NULL);
    ASSERT(ex2 == f);
    ASSERT(cache_lookup(c, &rq, &lf) == NULL);
    ASSERT(lf == f);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_RUNNING);
    size_t hl;
    bool ch;
    ASSERT(cache_fill_head(f, &hl, &ch) == NULL);
    const char *p;
    ASSERT_EQ(cache_fill_read(f, 0, &p), 0);
    ASSERT_EQ(cache_fill_append(f, "x", 1), -EINVAL); /* no head yet */

    struct joiner j;
    joiner_init(&j);
    cache_fill_watch(f, &j.w);
    ASSERT_EQ(cache_fill_set_head(f, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 43, true), 0);
    ASSERT_EQ(joiner_wakes(&j), 1);
    ASSERT_STR_EQ(cache_fill_head(f, &hl, &ch), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked");
    ASSERT_EQ(hl, 43);
    ASSERT(ch);
    ASSERT_EQ(cache_fill_set_head(f, "x", 1, false), -EINVAL);
    ASSERT_EQ(cache_fill_append(f, "5\r\nhello\r\n", 10), 0);
    ASSERT_EQ(joiner_wakes(&j), 2);
    ASSERT_EQ(cache_fill_read(f, 0, &p), 10);
    ASSERT_EQ(memcmp(p, "5\r\nhello\r\n", 10), 0);
    ASSERT_EQ(cache_fill_read(f, 3, &p), 7);
    ASSERT_EQ(cache_fill_append(f, "0\r\n\r\n", 5), 0);
    struct cache_entry meta = plain_meta();
    ASSERT_EQ(cache_fill_finish(f, &meta), 0);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_DONE);
    ASSERT_EQ(joiner_wakes(&j), 4);
    ASSERT_EQ(cache_fill_finish(f, &meta), -EINVAL);
    cache_fill_abort(f); /* no-op once ended */
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_DONE);
    ASSERT_EQ(stats_of(c).fills_aborted, 0);
    cache_fill_unwatch(f, &j.w);
    /* the fill's bytes stay readable through the joiners' refs */
    ASSERT_EQ(cache_fill_read(f, 0, &p), 15);
    ASSERT_EQ(memcmp(p, "5\r\nhello\r\n0\r\n\r\n", 15), 0);

    /* the entry replaced the fill: a lookup sees it and no fill */
    struct cache_entry *e = cache_lookup(c, &rq, &lf);
    ASSERT(e != NULL);
    ASSERT(lf == NULL);
    ASSERT(e->is_chunked);
    ASSERT_STR_EQ(body_of(e), "5\r\nhello\r\n0\r\n\r\n");
    ASSERT(e->body[0].data == p); /* taken over, not copied */
    cache_entry_release(e);
    cache_fill_release(ex2);
    cache_fill_release(lf == NULL ? f : lf);
    /* once the fill ended, a new one can start */
    struct cache_fill *g = cache_fill_start(c, &rq, &ex);
    ASSERT(g != NULL);
    cache_fill_abort(g);
    cache_fill_release(g);
    finish_clean();
}

TEST(fill_abort_wakes_and_unregisters)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    struct cache_lookup_req rq = req_of("GET http://h/ab", 0, NULL);
    struct cache_fill *ex = NULL, *lf = NULL;
    struct cache_fill *f = cache_fill_start(c, &rq, &ex);
    ASSERT(cache_lookup(c, &rq, &lf) == NULL);
    ASSERT(lf == f);
    struct joiner j;
    joiner_init(&j);
    cache_fill_watch(lf, &j.w);
    ASSERT_EQ(cache_fill_set_head(f, "HTTP/1.1 200 OK", 15, false), 0);
    ASSERT_EQ(cache_fill_append(f, "abc", 3), 0);
    cache_fill_abort(f);
    ASSERT_EQ(cache_fill_state(lf), CACHE_FILL_ABORTED);
    ASSERT_EQ(joiner_wakes(&j), 3);
    ASSERT_EQ(cache_fill_append(f, "d", 1), -EINVAL);
    ASSERT_EQ(cache_fill_finish(f, &(struct cache_entry){0}), -EINVAL);
    cache_fill_release(f); /* the filler leaves; the joiner still reads */
    const char *p;
    ASSERT_EQ(cache_fill_read(lf, 0, &p), 3);
    ASSERT_EQ(memcmp(p, "abc", 3), 0);
    ASSERT(cache_lookup(c, &rq, &ex) == NULL);
    ASSERT(ex == NULL);
    cache_fill_unwatch(lf, &j.w);
    cache_fill_release(lf);
    ASSERT_EQ(stats_of(c).fills_aborted, 1);
    ASSERT_EQ(stats_of(c).objects, 0);
    finish_clean();
}

TEST(fill_past_max_object_aborts)
{
    struct cache *c = cache_get("t", 1 << 20, 4000, 4);
    struct cache_lookup_req rq = req_of("GET http://h/big", 0, NULL);
    struct cache_fill *ex;
    struct cache_fill *f = cache_fill_start(c, &rq, &ex);
    struct joiner j;
    joiner_init(&j);
    cache_fill_watch(f, &j.w);
    ASSERT_EQ(cache_fill_set_head(f, "HTTP/1.1 200 OK", 15, false), 0);
    static char chunk[1000];
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(cache_fill_append(f, chunk, sizeof(chunk)), 0);
    ASSERT_EQ(cache_fill_append(f, chunk, 985), 0); /* 15 + 3985 = max_object exactly */
    ASSERT_EQ(cache_fill_append(f, chunk, 1), -EFBIG);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_ABORTED);
    ASSERT_EQ(joiner_wakes(&j), 6);
    cache_fill_unwatch(f, &j.w);
    cache_fill_release(f);

    /* a head alone past max_object */
    f = cache_fill_start(c, &rq, &ex);
    static char head[5000];
    memset(head, 'h', sizeof(head));
    ASSERT_EQ(cache_fill_set_head(f, head, sizeof(head), false), -EFBIG);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_ABORTED);
    cache_fill_release(f);

    /* finish without a head aborts */
    f = cache_fill_start(c, &rq, &ex);
    struct cache_entry meta = plain_meta();
    ASSERT_EQ(cache_fill_finish(f, &meta), -EINVAL);
    ASSERT_EQ(cache_fill_state(f), CACHE_FILL_ABORTED);
    cache_fill_release(f);
    ASSERT_EQ(stats_of(c).fills_aborted, 3);
    finish_clean();
}

TEST(fill_vary_matching)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    struct cache_lookup_req rq = req_of("GET http://h/vf", 0, gzip);
    struct cache_lookup_req rq_br = req_of("GET http://h/vf", 0, br);
    struct cache_fill *ex, *lf;
    struct cache_fill *f = cache_fill_start(c, &rq, &ex);
    char vk[256];
    ASSERT_GT(cache_vary_key("accept-encoding", get_hdr, (void *)gzip, vk, sizeof(vk)), 0);
    ASSERT_EQ(cache_fill_set_vary(f, "accept-encoding", vk), 0);
    ASSERT(cache_fill_matches(f, get_hdr, (void *)br)); /* no head yet: unknown */
    const char *head = "HTTP/1.1 200 OK\r\nVary: Accept-Encoding";
    ASSERT_EQ(cache_fill_set_head(f, head, strlen(head), false), 0);
    ASSERT_EQ(cache_fill_set_vary(f, "x", "y"), -EINVAL);
    ASSERT(cache_fill_matches(f, get_hdr, (void *)gzip));
    ASSERT(!cache_fill_matches(f, get_hdr, (void *)br));
    /* lookups only hand out the fill to its own variant once the head is known */
    ASSERT(cache_lookup(c, &rq_br, &lf) == NULL);
    ASSERT(lf == NULL);
    ASSERT(cache_lookup(c, &rq, &lf) == NULL);
    ASSERT(lf == f);
    cache_fill_release(lf);
    struct cache_entry meta = plain_meta(); /* vary from set_vary */
    ASSERT_EQ(cache_fill_finish(f, &meta), 0);
    cache_fill_release(f);
    struct cache_entry *e = cache_lookup(c, &rq, NULL);
    ASSERT(e != NULL);
    ASSERT_STR_EQ(e->vary, "accept-encoding");
    cache_entry_release(e);
    ASSERT(cache_lookup(c, &rq_br, NULL) == NULL);

    /* a head with Vary but no set_vary: no joiner matches, and nothing is stored */
    struct cache_lookup_req rq2 = req_of("GET http://h/vf2", 0, gzip);
    f = fill_with_head(c, &rq2, "HTTP/1.1 200 OK\r\nX: 1\r\nvary: accept-encoding");
    ASSERT(!cache_fill_matches(f, get_hdr, (void *)gzip));
    finish_unstored(c, &rq2, f, -EINVAL);
    finish_clean();
}

TEST(purge_during_fill_keeps_its_result_out)
{
    struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
    struct cache_lookup_req rq = req_of("GET http://h/p", 0, NULL);
    struct cache_fill *f = fill_with_head(c, &rq, "HTTP/1.1 200 OK");
    ASSERT_EQ(cache_purge_url(c, "http://h/p", 10), 0);
    finish_unstored(c, &rq, f, -ECANCELED);
    finish_clean();
}

TEST(filler_leaving_without_finish_asserts)
{
    pid_t pid = fork();
    if (pid == 0) {
        struct cache *c = cache_get("t", 1 << 20, 64 << 10, 4);
        struct cache_lookup_req rq = req_of("GET http://h/lost", 0, NULL);
        struct cache_fill *ex;
        struct cache_fill *f = cache_fill_start(c, &rq, &ex);
        close(2); /* the expected assertion message */
        cache_fill_release(f);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    ASSERT(WIFSIGNALED(status));
    ASSERT_EQ(WTERMSIG(status), SIGABRT);
}

/* The filler streams a body while joiners on other threads read it as it
 * grows, woken through their waiters. */
#define STREAM_LEN (1000 * 1000 + 7)

struct stream {
    struct cache *c;
    struct cache_fill *f;
    struct joiner j;
    size_t got;
    bool saw_done;
};

static char stream_byte(size_t i)
{
    return (char)(i * 131 + i / 977);
}

static void *filler_main(void *arg)
{
    struct stream *st = arg;
    static char buf[10000];
    size_t off = 0;
    unsigned seed = 7;
    ASSERT_EQ(cache_fill_set_head(st->f, "HTTP/1.1 200 OK", 15, false), 0);
    while (off < STREAM_LEN) {
        seed = seed * 1103515245 + 12345;
        size_t n = 1 + (seed >> 8) % sizeof(buf);
        if (n > STREAM_LEN - off)
            n = STREAM_LEN - off;
        for (size_t i = 0; i < n; i++)
            buf[i] = stream_byte(off + i);
        ASSERT_EQ(cache_fill_append(st->f, buf, n), 0);
        off += n;
        if (seed % 7 == 0)
            sched_yield();
    }
    struct cache_entry meta = plain_meta();
    ASSERT_EQ(cache_fill_finish(st->f, &meta), 0);
    cache_fill_release(st->f);
    return NULL;
}

static void *joiner_main(void *arg)
{
    struct stream *st = arg;
    struct cache_lookup_req rq = req_of("GET http://h/stream", 0, NULL);
    struct cache_fill *f = NULL;
    struct cache_entry *e = cache_lookup(st->c, &rq, &f);
    ASSERT(e == NULL);
    ASSERT(f != NULL);
    joiner_init(&st->j);
    cache_fill_watch(f, &st->j.w);
    int seen = 0;
    for (;;) {
        /* read the state before the bytes: DONE then means every byte is readable */
        enum cache_fill_state state = cache_fill_state(f);
        ASSERT(state != CACHE_FILL_ABORTED);
        const char *p;
        size_t n;
        while ((n = cache_fill_read(f, st->got, &p)) > 0) {
            for (size_t i = 0; i < n; i++)
                if (p[i] != stream_byte(st->got + i))
                    TEST_FAIL("byte %zu differs", st->got + i);
            st->got += n;
        }
        if (state == CACHE_FILL_DONE)
            break;
        seen = joiner_wait(&st->j, seen);
    }
    st->saw_done = true;
    cache_fill_unwatch(f, &st->j.w);
    cache_fill_release(f);
    return NULL;
}

TEST(fill_streams_to_joiners_on_other_threads)
{
    struct cache *c = cache_get("t", 16 << 20, 2 << 20, 4);
    struct cache_lookup_req rq = req_of("GET http://h/stream", 0, NULL);
    struct cache_fill *ex;
    struct stream filler = {.c = c};
    filler.f = cache_fill_start(c, &rq, &ex);
    ASSERT(filler.f != NULL);
    struct stream joiners[3];
    pthread_t jt[3], ft;
    for (int i = 0; i < 3; i++) {
        joiners[i] = (struct stream){.c = c};
        ASSERT_EQ(pthread_create(&jt[i], NULL, joiner_main, &joiners[i]), 0);
    }
    /* let the joiners find the fill before any byte exists (the test would
     * pass either way; this is the interesting interleaving) */
    usleep(20000);
    ASSERT_EQ(pthread_create(&ft, NULL, filler_main, &filler), 0);
    pthread_join(ft, NULL);
    for (int i = 0; i < 3; i++) {
        pthread_join(jt[i], NULL);
        ASSERT(joiners[i].saw_done);
        ASSERT_EQ(joiners[i].got, STREAM_LEN);
        ASSERT_GT(joiners[i].j.wakes, 1);
    }
    struct cache_entry *e = cache_lookup(c, &rq, NULL);
    ASSERT(e != NULL);
    ASSERT_EQ(e->body_len, STREAM_LEN);
    size_t off = 0;
    for (size_t i = 0; i < e->nbody; i++)
        for (size_t k = 0; k < e->body[i].len; k++, off++)
            ASSERT_EQ(e->body[i].data[k], stream_byte(off));
    cache_entry_release(e);
    finish_clean();
}

/* Several threads look up, fill and join on a shared key set under a tight
 * budget; run with a TSan build of store.c + fill.c for the races. */
#define MIX_THREADS 4
#define MIX_KEYS    500
#define MIX_OPS     20000

static void *mix_main(void *arg)
{
    struct cache *c = arg;
    unsigned seed = (unsigned)(uintptr_t)pthread_self();
    char key[64];
    static const char body[300] = "mixed body";
    for (int i = 0; i < MIX_OPS; i++) {
        seed = seed * 1103515245 + 12345;
        snprintf(key, sizeof(key), "GET http://h/mix/%u", (seed >> 8) % MIX_KEYS);
        struct cache_lookup_req rq = req_of(key, 0, NULL);
        struct cache_fill *f = NULL;
        struct cache_entry *e = cache_lookup(c, &rq, &f);
        if (e != NULL) {
            ASSERT_EQ(e->body_len, sizeof(body));
            ASSERT_EQ(memcmp(e->body[0].data, "mixed body", 10), 0);
            cache_entry_release(e);
        }
        if (f != NULL) {
            const char *p;
            (void)cache_fill_read(f, 0, &p);
            cache_fill_release(f);
            continue;
        }
        if (e != NULL)
            continue;
        struct cache_fill *ex = NULL;
        f = cache_fill_start(c, &rq, &ex);
        if (f == NULL) {
            ASSERT(ex != NULL);
            cache_fill_release(ex);
            continue;
        }
        ASSERT_EQ(cache_fill_set_head(f, "HTTP/1.1 200 OK", 15, false), 0);
        ASSERT_EQ(cache_fill_append(f, body, sizeof(body)), 0);
        if (seed % 11 == 0) {
            cache_fill_abort(f);
        } else {
            struct cache_entry meta = plain_meta();
            int rc = cache_fill_finish(f, &meta);
            ASSERT(rc == 0 || rc == -ECANCELED);
        }
        cache_fill_release(f);
        if (seed % 997 == 0)
            cache_purge_prefix(c, "http://h/mix/1", 14);
    }
    return NULL;
}

TEST(concurrent_lookups_fills_and_purges)
{
    struct cache *c = cache_get("t", 64 << 10, 4096, 4);
    pthread_t t[MIX_THREADS];
    for (int i = 0; i < MIX_THREADS; i++)
        ASSERT_EQ(pthread_create(&t[i], NULL, mix_main, c), 0);
    for (int i = 0; i < MIX_THREADS; i++)
        pthread_join(t[i], NULL);
    struct cache_stats st = stats_of(c);
    ASSERT_LE(st.bytes, 64 << 10);
    ASSERT_GT(st.inserts, 0);
    ASSERT_GT(st.evictions, 0);
    size_t linked = 0;
    for (unsigned i = 0; i < c->nshards; i++) {
        ASSERT(list_is_empty(&c->shards[i].fills));
        linked += c->shards[i].nentries;
    }
    ASSERT_EQ(linked, st.objects);
    finish_clean();
}

TEST_MAIN()
