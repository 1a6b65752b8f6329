/* SPDX-License-Identifier: MIT */
/* The Redis second tier: entry blobs (round trip, malformed and fuzzed
 * input), cache_insert into the memory store, and put / get through a real
 * redis-server, with Vary, expiry, bad values and Redis down or stopped. */
#include <errno.h>
#include <openssl/evp.h>

#include "cache/cache_int.h"
#include "test/unit/hdr_stub.h"
#include "common/redis.h"
#include "test/unit/redis_server.h"

/* ---- entries ---- */


static const struct hdr gzip[] = {{"accept-encoding", "gzip"}, {NULL, NULL}};
static const struct hdr br[] = {{"accept-encoding", "br"}, {NULL, NULL}};
static const struct hdr identity[] = {{"accept-encoding", "identity"}, {NULL, NULL}};

#define KEY "GET http://example.com/a?x=1\nx-api-key:k1"

/* An entry as a fill would publish it (only what the blob carries). */
struct sample {
    struct cache_entry e;
    struct cache_piece pieces[4];
    char vary_key[CACHE_VARY_KEY_MAX];
};

static void sample_init(struct sample *s, const char *const *pieces, size_t n)
{
    memset(s, 0, sizeof(*s));
    struct cache_entry *e = &s->e;
    e->key = KEY;
    e->key_len = strlen(KEY);
    e->hash = cache_hash(e->key, e->key_len);
    e->url_off = 4;
    e->url_len = strlen("http://example.com/a?x=1");
    e->vary = "";
    e->vary_key = "";
    e->status = 200;
    e->request_time_ms = 1700000000000;
    e->response_time_ms = 1700000000120;
    e->ttl = (struct cache_ttl){.source = CACHE_TTL_ORIGIN,
                                .fresh_ms = 60000,
                                .initial_age_ms = 3000,
                                .swr_ms = 10000,
                                .sie_ms = 600000,
                                .must_revalidate = true};
    e->date = 1699999999;
    e->last_modified = -1;
    e->etag = "\"v1\"";
    e->tags = "t1 t2";
    e->head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"v1\"";
    e->head_len = strlen(e->head);
    for (size_t i = 0; i < n; i++) {
        s->pieces[i] = (struct cache_piece){pieces[i], strlen(pieces[i])};
        e->body_len += s->pieces[i].len;
    }
    e->body = s->pieces;
    e->nbody = n;
}

static void sample_vary(struct sample *s, const struct hdr *hdrs)
{
    s->e.vary = "accept-encoding";
    ASSERT_GT(cache_vary_key(s->e.vary, get_hdr, (void *)hdrs, s->vary_key, sizeof(s->vary_key)), 0);
    s->e.vary_key = s->vary_key;
}

static char *body_of(const struct cache_entry *e)
{
    char *b = malloc(e->body_len + 1), *p = b;
    for (size_t i = 0; i < e->nbody; i++) {
        memcpy(p, e->body[i].data, e->body[i].len);
        p += e->body[i].len;
    }
    ASSERT_EQ((size_t)(p - b), e->body_len);
    *p = '\0';
    return b;
}

static void assert_entry_equal(const struct cache_entry *a, const struct cache_entry *b)
{
    ASSERT_EQ(a->key_len, b->key_len);
    ASSERT(memcmp(a->key, b->key, a->key_len) == 0);
    ASSERT_EQ(a->hash, b->hash);
    ASSERT_EQ(a->url_off, b->url_off);
    ASSERT_EQ(a->url_len, b->url_len);
    ASSERT_STR_EQ(a->vary, b->vary);
    ASSERT_STR_EQ(a->vary_key, b->vary_key);
    ASSERT_EQ(a->status, b->status);
    ASSERT_EQ(a->request_time_ms, b->request_time_ms);
    ASSERT_EQ(a->response_time_ms, b->response_time_ms);
    ASSERT_EQ(a->ttl.source, b->ttl.source);
    ASSERT_EQ(a->ttl.fresh_ms, b->ttl.fresh_ms);
    ASSERT_EQ(a->ttl.initial_age_ms, b->ttl.initial_age_ms);
    ASSERT_EQ(a->ttl.swr_ms, b->ttl.swr_ms);
    ASSERT_EQ(a->ttl.sie_ms, b->ttl.sie_ms);
    ASSERT_EQ(a->ttl.must_revalidate, b->ttl.must_revalidate);
    ASSERT_EQ(a->ttl.no_cache, b->ttl.no_cache);
    ASSERT_EQ(a->date, b->date);
    ASSERT_EQ(a->last_modified, b->last_modified);
    ASSERT_EQ(a->etag == NULL, b->etag == NULL);
    if (a->etag != NULL)
        ASSERT_STR_EQ(a->etag, b->etag);
    ASSERT_STR_EQ(a->tags, b->tags);
    ASSERT_EQ(a->head_len, b->head_len);
    ASSERT(memcmp(a->head, b->head, a->head_len) == 0);
    ASSERT_EQ(b->head[b->head_len], '\0');
    ASSERT_EQ(a->is_chunked, b->is_chunked);
    ASSERT_EQ(a->body_len, b->body_len);
    char *x = body_of(a), *y = body_of(b);
    ASSERT(memcmp(x, y, a->body_len) == 0);
    free(x);
    free(y);
}

/* Blob of s, parsed back, must equal s; returns the parsed entry's bytes charge. */
static void assert_round_trip(const struct cache_entry *e)
{
    size_t len;
    char *blob = cache_entry_to_blob(e, &len);
    ASSERT(blob != NULL);
    struct cache_entry *back = cache_entry_from_blob(blob, len);
    ASSERT(back != NULL);
    assert_entry_equal(e, back);
    ASSERT_EQ(atomic_load(&back->_refs), 1);
    ASSERT(!back->_is_linked);
    ASSERT_GE(back->bytes, back->body_len + back->head_len + back->key_len);
    for (size_t i = 0; i < back->nbody; i++)
        ASSERT_LE(back->body[i].len, CACHE_BLOCK_MAX);
    cache_entry_release(back);
    free(blob);
}

TEST(blob_round_trip)
{
    struct sample s;
    static const char *const three[] = {"hello, ", "", "world"};
    sample_init(&s, three, 3);
    assert_round_trip(&s.e);

    /* chunked, with the origin's chunk boundaries inside the pieces */
    static const char *const chunks[] = {"5\r\nhello\r\n", "6\r\n world\r\n", "0\r\n\r\n"};
    sample_init(&s, chunks, 3);
    s.e.is_chunked = true;
    s.e.etag = NULL;
    s.e.ttl = (struct cache_ttl){.source = CACHE_TTL_JSON, .fresh_ms = 10000, .no_cache = true};
    s.e.head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked";
    s.e.head_len = strlen(s.e.head);
    assert_round_trip(&s.e);

    /* vary, no body, no tags, Last-Modified */
    sample_init(&s, NULL, 0);
    sample_vary(&s, gzip);
    s.e.tags = "";
    s.e.last_modified = 1600000000;
    s.e.status = 204;
    assert_round_trip(&s.e);

    /* a body of several 64 KiB pieces */
    size_t big = 3 * CACHE_BLOCK_MAX + 17;
    char *body = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        body[i] = (char)('a' + i % 26);
    body[big] = '\0';
    const char *one[] = {body};
    sample_init(&s, one, 1);
    assert_round_trip(&s.e);
    size_t len;
    char *blob = cache_entry_to_blob(&s.e, &len);
    struct cache_entry *e = cache_entry_from_blob(blob, len);
    ASSERT_EQ(e->nbody, 4);
    ASSERT_EQ(e->body[3].len, 17);
    cache_entry_release(e);
    free(blob);
    free(body);
}

TEST(blob_too_large)
{
    struct sample s;
    sample_init(&s, NULL, 0);
    s.pieces[0] = (struct cache_piece){"x", CACHE_TIER_BLOB_MAX}; /* never read: refused on size */
    s.e.nbody = 1;
    s.e.body_len = CACHE_TIER_BLOB_MAX;
    size_t len;
    errno = 0;
    ASSERT(cache_entry_to_blob(&s.e, &len) == NULL);
    ASSERT_EQ(errno, EFBIG);
}

static void assert_rejected(const char *blob, size_t len)
{
    errno = 0;
    struct cache_entry *e = cache_entry_from_blob(blob, len);
    if (e != NULL)
        TEST_FAIL("a malformed blob of %zu bytes was accepted", len);
    ASSERT_EQ(errno, EBADMSG);
}

/* Offsets in the sample's blob (see the layout in cache/tier.c). */
#define OFF_VERSION 3
#define OFF_KIND    4
#define OFF_STATUS  5
#define OFF_FLAGS   7
#define OFF_SOURCE  8
#define OFF_TIMES   9
#define OFF_URL     (OFF_TIMES + 8 * 8)
#define OFF_KEY     (OFF_URL + 8)

static void put_le(char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (char)(v >> (8 * i));
}

TEST(blob_rejects_malformed)
{
    struct sample s;
    static const char *const two[] = {"abc", "def"};
    sample_init(&s, two, 2);
    size_t len;
    char *blob = cache_entry_to_blob(&s.e, &len);
    char *b = malloc(len + 1);

    /* every truncation, and one byte too many */
    for (size_t n = 0; n < len; n++)
        assert_rejected(blob, n);
    memcpy(b, blob, len);
    b[len] = 'x';
    assert_rejected(b, len + 1);
    assert_rejected(NULL, 0);

    struct {
        size_t off;
        uint64_t value;
        int width;
    } edits[] = {
        {0, 'X', 1},         /* magic */
        {OFF_VERSION, 2, 1}, /* a version we do not know */
        {OFF_VERSION, 0, 1},
        {OFF_KIND, 'V', 1}, /* an index is not an entry */
        {OFF_KIND, 'Z', 1},
        {OFF_STATUS, 99, 2},
        {OFF_STATUS, 1000, 2},
        {OFF_FLAGS, 0x10, 1}, /* unknown flag */
        {OFF_SOURCE, CACHE_TTL_HEURISTIC + 1, 1},
        {OFF_TIMES, (uint64_t)-5, 8},         /* request time before the epoch */
        {OFF_TIMES, (uint64_t)1 << 62, 8},    /* past TIME_MAX */
        {OFF_TIMES, 1800000000000, 8},        /* request after response */
        {OFF_TIMES + 8 * 2, (uint64_t)-2, 8}, /* Date below -1 */
        {OFF_TIMES + 8 * 4, (uint64_t)-1, 8}, /* negative freshness */
        {OFF_TIMES + 8 * 7, INT64_MAX, 8},    /* stale-if-error that would overflow */
        {OFF_URL, 1000, 4},                   /* URL past the key */
        {OFF_URL + 4, 1000, 4},
        {OFF_KEY, 0, 4},          /* empty key */
        {OFF_KEY, 0xffffffff, 4}, /* lengths past the end */
        {OFF_KEY, len, 4},
        {OFF_KEY + 4 + strlen(KEY), 1u << 31, 4}, /* vary */
        {len - 6 - 8, 7, 8},                      /* body length short */
        {len - 6 - 8, 5, 8},                      /* body length long */
        {len - 6 - 8, UINT64_MAX, 8},
        {OFF_KEY + 4 + 3, 0, 1}, /* a NUL inside the key */
    };
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
        memcpy(b, blob, len);
        put_le(b + edits[i].off, edits[i].value, edits[i].width);
        assert_rejected(b, len);
    }
    /* the head must be a status line */
    s.e.head = "HTTX/1.1 200 OK";
    s.e.head_len = strlen(s.e.head);
    free(blob);
    blob = cache_entry_to_blob(&s.e, &len);
    assert_rejected(blob, len);
    free(blob);
    free(b);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* What an accepted entry must hold, however odd its bytes. */
static void assert_sane(const struct cache_entry *e)
{
    ASSERT_EQ(strlen(e->key), e->key_len);
    ASSERT_EQ(strlen(e->head), e->head_len);
    ASSERT(strlen(e->vary) + strlen(e->vary_key) + strlen(e->tags) < (1u << 31));
    ASSERT_LE(e->url_off + e->url_len, e->key_len);
    size_t sum = 0;
    for (size_t i = 0; i < e->nbody; i++)
        sum += e->body[i].len;
    ASSERT_EQ(sum, e->body_len);
    /* and it serialises back to a blob that parses */
    size_t len;
    char *blob = cache_entry_to_blob(e, &len);
    struct cache_entry *again = cache_entry_from_blob(blob, len);
    ASSERT(again != NULL);
    assert_entry_equal(e, again);
    cache_entry_release(again);
    free(blob);
}

TEST(blob_fuzz)
{
    struct sample s[3];
    static const char *const p1[] = {"0123456789", "abcdef"};
    static const char *const p2[] = {"3\r\nabc\r\n", "0\r\n\r\n"};
    sample_init(&s[0], p1, 2);
    sample_init(&s[1], p2, 2);
    s[1].e.is_chunked = true;
    sample_init(&s[2], NULL, 0);
    sample_vary(&s[2], br);
    char *blobs[3];
    size_t lens[3];
    for (int i = 0; i < 3; i++)
        blobs[i] = cache_entry_to_blob(&s[i].e, &lens[i]);
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 5000; iter++) {
        int which = (int)(rng() % 3);
        size_t len = lens[which];
        char *b = malloc(len + 16);
        memcpy(b, blobs[which], len);
        int nmut = 1 + (int)(rng() % 4);
        for (int m = 0; m < nmut && len > 0; m++) {
            size_t at = rng() % len;
            switch (rng() % 5) {
            case 0:
                b[at] = (char)rng();
                break;
            case 1:
                b[at] ^= (char)(1u << (rng() % 8));
                break;
            case 2:
                len = at; /* truncate */
                break;
            case 3:
                if (at + 4 <= len)
                    put_le(b + at, rng() % 2 ? rng() : rng() % 64, 4); /* a plausible or wild length */
                break;
            default:
                memmove(b + at + 1, b + at, len - at); /* insert a byte */
                b[at] = (char)rng();
                len++;
                break;
            }
        }
        struct cache_entry *e = cache_entry_from_blob(b, len);
        if (e != NULL) {
            accepted++;
            assert_sane(e);
            cache_entry_release(e);
        } else {
            ASSERT_EQ(errno, EBADMSG);
            rejected++;
        }
        free(b);
    }
    /* most mutations break the blob; some land in bytes any value fits */
    ASSERT_GT(rejected, 3000);
    ASSERT_GT(accepted, 50);
    for (int i = 0; i < 3; i++)
        free(blobs[i]);
}

/* ---- cache_insert ---- */

static struct cache_entry *entry_from(const struct cache_entry *e)
{
    size_t len;
    char *blob = cache_entry_to_blob(e, &len);
    struct cache_entry *back = cache_entry_from_blob(blob, len);
    ASSERT(back != NULL);
    free(blob);
    return back;
}

static struct cache_entry *lookup(struct cache *c, const struct hdr *hdrs)
{
    struct cache_lookup_req rq = {.key = KEY,
                                  .key_len = strlen(KEY),
                                  .hash = cache_hash(KEY, strlen(KEY)),
                                  .get_header = get_hdr,
                                  .arg = (void *)hdrs};
    return cache_lookup(c, &rq, NULL);
}

TEST(insert_into_the_store)
{
    struct cache *c = cache_get("tier", 8 << 20, 1 << 20, 4);
    struct sample s;
    static const char *const body[] = {"v1 body"};
    sample_init(&s, body, 1);
    struct cache_entry *e1 = entry_from(&s.e);
    ASSERT_EQ(cache_insert(c, e1), 0);
    ASSERT_EQ(atomic_load(&e1->_refs), 2); /* ours and the store's */
    struct cache_entry *hit = lookup(c, NULL);
    ASSERT(hit == e1);
    cache_entry_release(hit);

    /* an older copy never replaces it, the same one neither */
    s.e.response_time_ms -= 1000;
    s.e.request_time_ms -= 1000;
    struct cache_entry *older = entry_from(&s.e);
    ASSERT_EQ(cache_insert(c, older), -EEXIST);
    ASSERT_EQ(atomic_load(&older->_refs), 1);
    cache_entry_release(older);
    struct cache_entry *same = entry_from(e1);
    ASSERT_EQ(cache_insert(c, same), -EEXIST);
    cache_entry_release(same);

    /* a newer one does */
    s.e.response_time_ms += 5000;
    s.e.request_time_ms += 5000;
    struct cache_entry *newer = entry_from(&s.e);
    ASSERT_EQ(cache_insert(c, newer), 0);
    hit = lookup(c, NULL);
    ASSERT(hit == newer);
    cache_entry_release(hit);
    ASSERT_EQ(atomic_load(&e1->_refs), 1); /* unlinked: only ours */
    cache_entry_release(e1);
    cache_entry_release(newer);

    /* variants sit side by side */
    struct sample v;
    sample_init(&v, body, 1);
    sample_vary(&v, gzip);
    struct cache_entry *g = entry_from(&v.e);
    sample_vary(&v, br);
    struct cache_entry *b = entry_from(&v.e);
    ASSERT_EQ(cache_insert(c, g), 0);
    ASSERT_EQ(cache_insert(c, b), 0);
    hit = lookup(c, gzip);
    ASSERT(hit == g);
    cache_entry_release(hit);
    hit = lookup(c, br);
    ASSERT(hit == b);
    cache_entry_release(hit);
    cache_entry_release(g);
    cache_entry_release(b);

    /* larger than max_object */
    size_t big = (1 << 20) + 1;
    char *data = calloc(1, big + 1);
    memset(data, 'x', big);
    const char *one[] = {data};
    sample_init(&s, one, 1);
    struct cache_entry *huge = entry_from(&s.e);
    ASSERT_EQ(cache_insert(c, huge), -E2BIG);
    ASSERT_EQ(atomic_load(&huge->_refs), 1);
    cache_entry_release(huge);
    free(data);

    struct cache_stats st;
    cache_get_stats(c, &st);
    ASSERT_EQ(st.objects, 3);
    cache_shutdown_all();
}

/* ---- through Redis ---- */

struct got {
    int calls;
    int status;
    struct cache_entry *e;
};

static void got_cb(void *arg, int status, struct cache_entry *e)
{
    struct got *g = arg;
    g->calls++;
    g->status = status;
    g->e = e;
}

static bool got_done(void *arg)
{
    return ((struct got *)arg)->calls > 0;
}

static bool conn_up(void *arg)
{
    return redis_conn_is_up(arg);
}

static bool conn_down(void *arg)
{
    return !redis_conn_is_up(arg);
}

struct fixture {
    struct test_loop t;
    struct redis_server srv;
    struct redis_conn *r;
};

static void setup(struct fixture *f)
{
    test_loop_init(&f->t);
    redis_server_start(&f->srv);
    f->r = redis_conn_create(&f->t.loop, "127.0.0.1", f->srv.port, 0, 1000);
    ASSERT(test_loop_run_until(&f->t, conn_up, f->r, 2000));
}

static void teardown(struct fixture *f)
{
    redis_conn_destroy(f->r);
    test_loop_close(&f->t);
    redis_server_stop(&f->srv);
}

static void pong(void *arg, int status, const struct redisReply *reply)
{
    ASSERT_EQ(status, 0);
    *(bool *)arg = true;
}

static bool is_true(void *arg)
{
    return *(bool *)arg;
}

/* Waits for the writes in flight: replies come in order, so a PING sent
 * after them answers after them. */
static void flush(struct fixture *f)
{
    bool done = false;
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    ASSERT_EQ(redis_command_argv(f->r, 1, argv, lens, pong, &done), 0);
    ASSERT(test_loop_run_until(&f->t, is_true, &done, 2000));
}

static struct got get(struct fixture *f, const struct hdr *hdrs)
{
    struct got g = {0};
    ASSERT_EQ(cache_tier_get(f->r, KEY, strlen(KEY), get_hdr, (void *)hdrs, got_cb, &g), 0);
    ASSERT_EQ(g.calls, 0);
    ASSERT(test_loop_run_until(&f->t, got_done, &g, 2000));
    ASSERT_EQ(g.calls, 1);
    return g;
}

/* "sluice:" + hex SHA-256 of the primary key (the documented format). */
static void primary_key(char out[72])
{
    unsigned char md[32];
    unsigned int n = 0;
    ASSERT_EQ(EVP_Digest(KEY, strlen(KEY), md, &n, EVP_sha256(), NULL), 1);
    strcpy(out, "sluice:");
    for (unsigned i = 0; i < n; i++)
        sprintf(out + 7 + 2 * i, "%02x", md[i]);
}

TEST(put_then_get_with_expiry)
{
    struct fixture f;
    setup(&f);
    struct got g = get(&f, NULL);
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e == NULL); /* nothing there yet */

    struct sample s;
    static const char *const body[] = {"shared ", "between ", "instances"};
    sample_init(&s, body, 3);
    ASSERT_EQ(cache_tier_put(f.r, &s.e, 400), 0);
    flush(&f);
    char key[72];
    primary_key(key);
    redisReply *r = redis_server_command(&f.srv, "PTTL %s", key);
    ASSERT_GT(r->integer, 0);
    ASSERT_LE(r->integer, 400);
    freeReplyObject(r);

    g = get(&f, NULL);
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e != NULL);
    assert_entry_equal(&s.e, g.e);
    ASSERT_EQ(g.e->hash, cache_hash(KEY, strlen(KEY)));
    ASSERT_EQ(atomic_load(&g.e->_refs), 1);
    cache_entry_release(g.e);

    /* another key is a miss */
    struct got other = {0};
    ASSERT_EQ(cache_tier_get(f.r, "GET http://example.com/b", 24, NULL, NULL, got_cb, &other), 0);
    ASSERT(test_loop_run_until(&f.t, got_done, &other, 2000));
    ASSERT_EQ(other.status, 0);
    ASSERT(other.e == NULL);

    /* Redis expires it (PX) */
    test_loop_run_for(&f.t, 500);
    g = get(&f, NULL);
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e == NULL);

    ASSERT_EQ(cache_tier_put(f.r, &s.e, 0), -EINVAL);
    teardown(&f);
}

TEST(vary_variants_through_redis)
{
    struct fixture f;
    setup(&f);
    struct sample a, b;
    static const char *const gz[] = {"gzip bytes"};
    static const char *const brotli[] = {"br bytes"};
    sample_init(&a, gz, 1);
    sample_vary(&a, gzip);
    sample_init(&b, brotli, 1);
    sample_vary(&b, br);
    ASSERT_EQ(cache_tier_put(f.r, &a.e, 60000), 0);
    ASSERT_EQ(cache_tier_put(f.r, &b.e, 60000), 0);
    flush(&f);

    struct got g = get(&f, gzip);
    ASSERT(g.e != NULL);
    assert_entry_equal(&a.e, g.e);
    cache_entry_release(g.e);
    g = get(&f, br);
    ASSERT(g.e != NULL);
    assert_entry_equal(&b.e, g.e);
    cache_entry_release(g.e);
    g = get(&f, identity);
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e == NULL);
    g = get(&f, NULL); /* no Accept-Encoding at all: a variant of its own */
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e == NULL);

    /* the index under the primary key, and one key per variant, all bounded */
    redisReply *r = redis_server_command(&f.srv, "KEYS sluice:*");
    ASSERT_EQ(r->elements, 3);
    for (size_t i = 0; i < r->elements; i++)
        ASSERT_EQ(r->element[i]->len, 7 + 64);
    freeReplyObject(r);

    /* the response stops varying: the primary key holds the entry again */
    struct sample plain;
    sample_init(&plain, gz, 1);
    plain.e.response_time_ms += 1;
    ASSERT_EQ(cache_tier_put(f.r, &plain.e, 60000), 0);
    flush(&f);
    g = get(&f, br);
    ASSERT(g.e != NULL);
    assert_entry_equal(&plain.e, g.e);
    cache_entry_release(g.e);

    struct cache_tier_stats st;
    cache_tier_get_stats(&st);
    ASSERT_EQ(st.puts, 3);
    ASSERT_EQ(st.put_errors, 0);
    ASSERT_EQ(st.gets, 5);
    ASSERT_EQ(st.hits, 3);
    ASSERT_EQ(st.misses, 2);
    teardown(&f);
}

/* Whatever sits under our key, a get never trusts it. */
TEST(bad_values_in_redis)
{
    struct fixture f;
    setup(&f);
    char key[72];
    primary_key(key);
    redisReply *r = redis_server_command(&f.srv, "SET %s %b", key,
                                         "SLC\x01"
                                         "Egarbage",
                                         (size_t)12);
    freeReplyObject(r);
    struct got g = get(&f, NULL);
    ASSERT_EQ(g.status, -EBADMSG);
    ASSERT(g.e == NULL);

    /* an index whose key is not ours is a miss; a broken one an error */
    r = redis_server_command(&f.srv, "SET %s %b", key, "SLC\x01V\x03\0\0\0abc\x01\0\0\0x", (size_t)17);
    freeReplyObject(r);
    g = get(&f, gzip);
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e == NULL);
    r = redis_server_command(&f.srv, "SET %s %b", key, "SLC\x01V\x03\0\0\0abc", (size_t)12);
    freeReplyObject(r);
    g = get(&f, gzip);
    ASSERT_EQ(g.status, -EBADMSG);

    /* a blob of another key (as if the digest collided) is a miss */
    struct sample s;
    sample_init(&s, NULL, 0);
    s.e.key = "GET http://example.com/other";
    s.e.key_len = strlen(s.e.key);
    s.e.url_len = 10;
    size_t len;
    char *blob = cache_entry_to_blob(&s.e, &len);
    r = redis_server_command(&f.srv, "SET %s %b", key, blob, len);
    freeReplyObject(r);
    free(blob);
    g = get(&f, NULL);
    ASSERT_EQ(g.status, 0);
    ASSERT(g.e == NULL);

    /* not a string */
    freeReplyObject(redis_server_command(&f.srv, "DEL %s", key));
    freeReplyObject(redis_server_command(&f.srv, "LPUSH %s x", key));
    g = get(&f, NULL);
    ASSERT_EQ(g.status, -EPROTO);

    struct cache_tier_stats st;
    cache_tier_get_stats(&st);
    ASSERT_EQ(st.bad_blobs, 2);
    ASSERT_EQ(st.get_errors, 3);
    teardown(&f);
}

/* Stops the server and sends a get, which stays pending; returns when. */
static uint64_t get_stopped(struct fixture *f, struct got *g)
{
    kill(f->srv.pid, SIGSTOP);
    *g = (struct got){0};
    uv_update_time(&f->t.loop);
    uint64_t start = uv_now(&f->t.loop);
    ASSERT_EQ(cache_tier_get(f->r, KEY, strlen(KEY), NULL, NULL, got_cb, g), 0);
    return start;
}

/* Redis down: calls are refused at once and counted; stopped: the get
 * completes with -ETIMEDOUT within the timeout. */
TEST(redis_down_or_stopped)
{
    struct fixture f;
    setup(&f);
    struct sample s;
    sample_init(&s, NULL, 0);
    struct got g;
    uint64_t start = get_stopped(&f, &g);
    ASSERT(test_loop_run_until(&f.t, got_done, &g, 3000));
    ASSERT_EQ(g.status, -ETIMEDOUT);
    ASSERT_LT(uv_now(&f.t.loop) - start, 1300);
    kill(f.srv.pid, SIGCONT);

    redis_server_kill(&f.srv);
    ASSERT(test_loop_run_until(&f.t, conn_down, f.r, 2000));
    g = (struct got){0};
    ASSERT_EQ(cache_tier_get(f.r, KEY, strlen(KEY), NULL, NULL, got_cb, &g), -ENOTCONN);
    ASSERT_EQ(cache_tier_put(f.r, &s.e, 1000), -ENOTCONN);
    test_loop_run_for(&f.t, 20);
    ASSERT_EQ(g.calls, 0);
    struct cache_tier_stats st;
    cache_tier_get_stats(&st);
    ASSERT_EQ(st.get_errors, 2);
    ASSERT_EQ(st.put_errors, 1);
    teardown(&f);
}

/* A get in flight when the connection is destroyed completes with -ECANCELED. */
TEST(get_cancelled_by_destroy)
{
    struct fixture f;
    setup(&f);
    struct got g;
    get_stopped(&f, &g);
    test_loop_run_for(&f.t, 20);
    redis_conn_destroy(f.r);
    ASSERT_EQ(g.calls, 1);
    ASSERT_EQ(g.status, -ECANCELED);
    test_loop_close(&f.t);
    kill(f.srv.pid, SIGCONT);
    redis_server_stop(&f.srv);
}

TEST_MAIN()
