/* SPDX-License-Identifier: MIT */
/* S3-FIFO against LRU on skewed traffic: a Zipf(1.0) workload over equal-size
 * objects with a cache of 10 % of the key space, then the same with a scan
 * of one-time keys mixed in.  Both hit ratios are printed; the store must do
 * at least as well as LRU. */
#include "cache/cache_int.h"
#include "test.h"

#if defined(__SANITIZE_ADDRESS__)
#define ZIPF_KEYS     20000 /* ASan is ~10x slower: a smaller run keeps the case under a few seconds */
#define ZIPF_REQUESTS 120000
#else
#define ZIPF_KEYS     100000
#define ZIPF_REQUESTS 1000000
#endif
#define OBJ_BODY 200

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    /* xorshift64*: deterministic, so both policies see the same trace */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double *zipf_cdf;

static void zipf_init(void)
{
    zipf_cdf = malloc(ZIPF_KEYS * sizeof(*zipf_cdf));
    ASSERT(zipf_cdf != NULL);
    double sum = 0;
    for (int k = 0; k < ZIPF_KEYS; k++)
        zipf_cdf[k] = sum += 1.0 / (k + 1);
    for (int k = 0; k < ZIPF_KEYS; k++)
        zipf_cdf[k] /= sum;
}

/* A key rank drawn from Zipf(1.0). */
static int zipf_next(void)
{
    double u = (double)(rng_next() >> 11) / (double)(1ull << 53);
    int lo = 0, hi = ZIPF_KEYS - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The request trace: Zipf ranks, and with scan_every > 0 every scan_every-th
 * request is the next key of a sequential scan over keys never seen again. */
static int *trace_build(int scan_every)
{
    int *t = malloc(ZIPF_REQUESTS * sizeof(*t));
    ASSERT(t != NULL);
    rng_state = 0x9e3779b97f4a7c15ull;
    int scan = ZIPF_KEYS;
    for (int i = 0; i < ZIPF_REQUESTS; i++)
        t[i] = scan_every > 0 && i % scan_every == scan_every - 1 ? scan++ : zipf_next();
    return t;
}

/* ---- the LRU baseline, counted in objects ---- */

struct lru {
    int *prev, *next; /* by key id; head/tail sentinel at index n */
    bool *in;
    int n, cap, size;
};

static void lru_init(struct lru *l, int nkeys, int cap)
{
    l->n = nkeys;
    l->cap = cap;
    l->size = 0;
    l->prev = malloc((nkeys + 1) * sizeof(int));
    l->next = malloc((nkeys + 1) * sizeof(int));
    l->in = calloc(nkeys, sizeof(bool));
    ASSERT(l->prev && l->next && l->in);
    l->prev[nkeys] = l->next[nkeys] = nkeys;
}

static void lru_unlink(struct lru *l, int k)
{
    l->next[l->prev[k]] = l->next[k];
    l->prev[l->next[k]] = l->prev[k];
}

static void lru_push_front(struct lru *l, int k)
{
    l->next[k] = l->next[l->n];
    l->prev[k] = l->n;
    l->prev[l->next[l->n]] = k;
    l->next[l->n] = k;
}

/* true on a hit; a miss inserts k, evicting the least recently used */
static bool lru_access(struct lru *l, int k)
{
    if (l->in[k]) {
        lru_unlink(l, k);
        lru_push_front(l, k);
        return true;
    }
    if (l->size == l->cap) {
        int victim = l->prev[l->n];
        lru_unlink(l, victim);
        l->in[victim] = false;
        l->size--;
    }
    lru_push_front(l, k);
    l->in[k] = true;
    l->size++;
    return false;
}

static void lru_free(struct lru *l)
{
    free(l->prev);
    free(l->next);
    free(l->in);
}

/* ---- the store ---- */

static uint64_t key_hash(int k)
{
    uint64_t h = (uint64_t)k + 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

static void key_of(int k, char *out, size_t cap)
{
    snprintf(out, cap, "GET http://h/obj/%08d", k);
}

static void store_put(struct cache *c, const struct cache_lookup_req *rq)
{
    static const char body[OBJ_BODY];
    struct cache_fill *ex = NULL;
    struct cache_fill *f = cache_fill_start(c, rq, &ex);
    ASSERT(f != NULL);
    ASSERT_EQ(cache_fill_set_head(f, "HTTP/1.1 200 OK", 15, false), 0);
    ASSERT_EQ(cache_fill_append(f, body, sizeof(body)), 0);
    struct cache_entry meta = {.status = 200, .date = -1, .last_modified = -1};
    ASSERT_EQ(cache_fill_finish(f, &meta), 0);
    cache_fill_release(f);
}

/* true on a hit; a miss stores the object */
static bool store_access(struct cache *c, int k)
{
    char key[64];
    key_of(k, key, sizeof(key));
    struct cache_lookup_req rq = {.key = key, .key_len = strlen(key), .hash = key_hash(k)};
    struct cache_entry *e = cache_lookup(c, &rq, NULL);
    if (e != NULL) {
        cache_entry_release(e);
        return true;
    }
    store_put(c, &rq);
    return false;
}

/* Every object costs the same: measure it on a scratch store. */
static uint64_t object_charge(void)
{
    struct cache *c = cache_get("probe", 1 << 20, 4096, 4);
    ASSERT(!store_access(c, 0));
    struct cache_stats st;
    cache_get_stats(c, &st);
    cache_purge_all(c);
    return st.bytes;
}

struct ratios {
    double s3fifo, lru;
};

static struct ratios run(const char *name, int scan_every)
{
    zipf_init();
    int *trace = trace_build(scan_every);
    int cap = ZIPF_KEYS / 10;
    struct cache *c = cache_get(name, (uint64_t)cap * object_charge(), 4096, 4);
    ASSERT_EQ(c->nshards, 4);
    struct lru lru;
    lru_init(&lru, ZIPF_KEYS + 2 * ZIPF_REQUESTS, cap);
    long s3_hits = 0, lru_hits = 0, zipf_requests = 0;
    /* the first pass warms both caches; only the second is counted */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < ZIPF_REQUESTS; i++) {
            bool s3 = store_access(c, trace[i]);
            bool l = lru_access(&lru, trace[i]);
            if (pass == 1 && trace[i] < ZIPF_KEYS) {
                zipf_requests++;
                s3_hits += s3;
                lru_hits += l;
            }
        }
        if (scan_every > 0)
            for (int i = 0; i < ZIPF_REQUESTS; i++)
                if (trace[i] >= ZIPF_KEYS)
                    trace[i] += ZIPF_REQUESTS; /* the next pass scans other keys */
    }
    struct cache_stats st;
    cache_get_stats(c, &st);
    ASSERT_LE(st.bytes, st.memory);
    struct ratios r = {(double)s3_hits / zipf_requests, (double)lru_hits / zipf_requests};
    printf("%s: %d keys, %d requests, cache %d objects: S3-FIFO hit ratio %.4f, LRU %.4f (%+.2f points)\n",
           name, ZIPF_KEYS, ZIPF_REQUESTS, cap, r.s3fifo, r.lru, (r.s3fifo - r.lru) * 100);
    lru_free(&lru);
    free(trace);
    free(zipf_cdf);
    cache_shutdown_all();
    return r;
}

TEST(zipf_s3fifo_beats_lru)
{
    struct ratios r = run("zipf", 0);
    ASSERT(r.s3fifo >= r.lru);
}

TEST(zipf_with_scan_s3fifo_beats_lru)
{
    struct ratios r = run("zipf+scan", 4);
    ASSERT(r.s3fifo >= r.lru);
}

TEST_MAIN()
