/* SPDX-License-Identifier: MIT */
/*
 * tier: the Redis second tier — entries to and from blobs, and the SET and
 * GET round trips that share them between sluice instances (cache.h says
 * how keys and Vary work).
 *
 * Blob layout, version 1, integers little-endian:
 *   "SLC", version, kind          kind 'E': an entry, 'V': a Vary index
 *   'V': str key, str vary
 *   'E': u16 status, u8 flags, u8 ttl source,
 *        i64 request_time_ms, response_time_ms, date, last_modified,
 *            fresh_ms, initial_age_ms, swr_ms, sie_ms,
 *        u32 url_off, url_len,
 *        str key, vary, vary_key, [etag when flagged], tags, head,
 *        u64 body_len, then the body (the stored pieces, joined)
 *   str: u32 length and the bytes, no NUL inside (they become C strings)
 * The reader trusts nothing: each length is checked against what is left
 * before it is used, each value against its range (so policy arithmetic on
 * a hostile time cannot overflow), and the blob must end where the body
 * does.  An entry is rebuilt the way the store frees one (see
 * cache_entry_release): one allocation for the struct, its piece array,
 * strings and head, and each body piece malloc'ed on its own.
 *
 * Gets read with GETRANGE 0..CACHE_TIER_BLOB_MAX, so a huge value written
 * by anyone cannot make us buffer more than that.
 *
 * Threading: blobs and stats from any thread; put and get on the
 * connection's loop thread.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "cache/cache_int.h"
#include "common/log.h"
#include "common/redis.h"

#define BLOB_VERSION 1
#define BLOB_HEAD    5 /* "SLC", version, kind */
#define KIND_ENTRY   'E'
#define KIND_VARY    'V'

#define FLAG_CHUNKED         0x1u
#define FLAG_ETAG            0x2u
#define FLAG_MUST_REVALIDATE 0x4u
#define FLAG_NO_CACHE        0x8u
#define FLAGS_KNOWN          0xfu

/* Times and durations past this (ms, or s for dates: about 2,000 years)
 * are refused. */
#define TIME_MAX (INT64_C(1) << 46)

#define KEY_PREFIX    "sluice:"
#define REDIS_KEY_LEN (sizeof(KEY_PREFIX) - 1 + 64)

static struct {
    atomic_uint_fast64_t puts, put_errors, gets, hits, misses, get_errors, bad_blobs;
} stats;

static void count(atomic_uint_fast64_t *a)
{
    atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
}

/* ---- writing ---- */

struct writer {
    char *p;
};

static void put_uint(struct writer *w, uint64_t v, int nbytes)
{
    for (int i = 0; i < nbytes; i++)
        *w->p++ = (char)(v >> (8 * i));
}

static void put_bytes(struct writer *w, const char *s, size_t n)
{
    if (n > 0)
        memcpy(w->p, s, n);
    w->p += n;
}

static void put_str(struct writer *w, const char *s)
{
    size_t n = strlen(s);
    put_uint(w, n, 4);
    put_bytes(w, s, n);
}

static void put_head(struct writer *w, int kind)
{
    put_bytes(w, "SLC", 3);
    put_uint(w, BLOB_VERSION, 1);
    put_uint(w, (uint64_t)kind, 1);
}

static const char *or_empty(const char *s)
{
    return s != NULL ? s : "";
}

/* Sizes are summed in 64 bits and checked against CACHE_TIER_BLOB_MAX before
 * anything is allocated. */
static char *blob_alloc(uint64_t size, size_t *len)
{
    if (size > CACHE_TIER_BLOB_MAX) {
        errno = EFBIG;
        return NULL;
    }
    char *b = malloc((size_t)size);
    if (b == NULL)
        errno = ENOMEM;
    *len = (size_t)size;
    return b;
}

char *cache_entry_to_blob(const struct cache_entry *e, size_t *len)
{
    const char *vary = or_empty(e->vary), *vary_key = or_empty(e->vary_key), *tags = or_empty(e->tags);
    uint64_t body_len = 0;
    for (size_t i = 0; i < e->nbody; i++)
        body_len += e->body[i].len;
    /* the strs: key, vary, vary_key, etag when there is one, tags, head */
    uint64_t size = BLOB_HEAD + 2 + 1 + 1 + 8 * 8 + 4 * 2 + 4 * (e->etag != NULL ? 6 : 5) +
                    (uint64_t)e->key_len + strlen(vary) + strlen(vary_key) + strlen(or_empty(e->etag)) +
                    strlen(tags) + e->head_len + 8 + body_len;
    char *blob = blob_alloc(size, len);
    if (blob == NULL)
        return NULL;
    unsigned flags = (e->is_chunked ? FLAG_CHUNKED : 0) | (e->etag != NULL ? FLAG_ETAG : 0) |
                     (e->ttl.must_revalidate ? FLAG_MUST_REVALIDATE : 0) |
                     (e->ttl.no_cache ? FLAG_NO_CACHE : 0);
    const int64_t times[] = {e->request_time_ms, e->response_time_ms,   e->date,       e->last_modified,
                             e->ttl.fresh_ms,    e->ttl.initial_age_ms, e->ttl.swr_ms, e->ttl.sie_ms};
    struct writer w = {blob};
    put_head(&w, KIND_ENTRY);
    put_uint(&w, e->status, 2);
    put_uint(&w, flags, 1);
    put_uint(&w, (uint64_t)e->ttl.source, 1);
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++)
        put_uint(&w, (uint64_t)times[i], 8);
    put_uint(&w, e->url_off, 4);
    put_uint(&w, e->url_len, 4);
    put_uint(&w, e->key_len, 4);
    put_bytes(&w, e->key, e->key_len);
    put_str(&w, vary);
    put_str(&w, vary_key);
    if (e->etag != NULL)
        put_str(&w, e->etag);
    put_str(&w, tags);
    put_uint(&w, e->head_len, 4);
    put_bytes(&w, e->head, e->head_len);
    put_uint(&w, body_len, 8);
    for (size_t i = 0; i < e->nbody; i++)
        put_bytes(&w, e->body[i].data, e->body[i].len);
    assert((size_t)(w.p - blob) == *len);
    return blob;
}

/* The Vary index stored under the primary key of a varying response. */
static char *vary_index_blob(const struct cache_entry *e, size_t *len)
{
    const char *vary = or_empty(e->vary);
    char *blob = blob_alloc(BLOB_HEAD + 4 + (uint64_t)e->key_len + 4 + strlen(vary), len);
    if (blob == NULL)
        return NULL;
    struct writer w = {blob};
    put_head(&w, KIND_VARY);
    put_uint(&w, e->key_len, 4);
    put_bytes(&w, e->key, e->key_len);
    put_str(&w, vary);
    return blob;
}

/* ---- reading ---- */

struct reader {
    const unsigned char *p;
    size_t left;
    bool is_bad;
};

static uint64_t get_uint(struct reader *r, size_t nbytes)
{
    uint64_t v = 0;
    if (r->left < nbytes) {
        r->is_bad = true;
        return 0;
    }
    for (size_t i = 0; i < nbytes; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += nbytes;
    r->left -= nbytes;
    return v;
}

/* A time or duration within lo .. TIME_MAX. */
static int64_t get_time(struct reader *r, int64_t lo)
{
    uint64_t u = get_uint(r, 8);
    int64_t v = u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
    if (v < lo || v > TIME_MAX)
        r->is_bad = true;
    return v;
}

/* A str: its bytes in place (*len of them), none of them NUL. */
static const char *get_str(struct reader *r, size_t *len)
{
    uint64_t n = get_uint(r, 4);
    if (r->is_bad || n > r->left || memchr(r->p, '\0', (size_t)n) != NULL) {
        r->is_bad = true;
        *len = 0;
        return "";
    }
    const char *s = (const char *)r->p;
    r->p += n;
    r->left -= (size_t)n;
    *len = (size_t)n;
    return s;
}

/* The kind of a blob of our version, or -1. */
static int get_kind(struct reader *r)
{
    if (r->left < BLOB_HEAD || memcmp(r->p, "SLC", 3) != 0 || r->p[3] != BLOB_VERSION) {
        r->is_bad = true;
        return -1;
    }
    int kind = r->p[4];
    r->p += BLOB_HEAD;
    r->left -= BLOB_HEAD;
    return kind;
}

/* A str in one piece of the entry's allocation, NUL-terminated. */
static char *copy(char **p, const char *s, size_t n)
{
    char *d = *p;
    memcpy(d, s, n);
    d[n] = '\0';
    *p += n + 1;
    return d;
}

struct blob_entry {
    struct cache_entry meta; /* everything but the strings, head and body */
    const char *key, *vary, *vary_key, *etag, *tags, *head, *body;
    size_t key_len, vary_len, vary_key_len, etag_len, tags_len, head_len, body_len;
};

static bool parse_entry(struct reader *r, struct blob_entry *b)
{
    struct cache_entry *m = &b->meta;
    if (get_kind(r) != KIND_ENTRY)
        return false;
    m->status = (unsigned)get_uint(r, 2);
    unsigned flags = (unsigned)get_uint(r, 1);
    unsigned source = (unsigned)get_uint(r, 1);
    m->request_time_ms = get_time(r, 0);
    m->response_time_ms = get_time(r, 0);
    m->date = get_time(r, -1);
    m->last_modified = get_time(r, -1);
    m->ttl.fresh_ms = get_time(r, 0);
    m->ttl.initial_age_ms = get_time(r, 0);
    m->ttl.swr_ms = get_time(r, 0);
    m->ttl.sie_ms = get_time(r, 0);
    m->url_off = (size_t)get_uint(r, 4);
    m->url_len = (size_t)get_uint(r, 4);
    b->key = get_str(r, &b->key_len);
    b->vary = get_str(r, &b->vary_len);
    b->vary_key = get_str(r, &b->vary_key_len);
    b->etag = (flags & FLAG_ETAG) ? get_str(r, &b->etag_len) : NULL;
    b->tags = get_str(r, &b->tags_len);
    b->head = get_str(r, &b->head_len);
    uint64_t body_len = get_uint(r, 8);
    if (r->is_bad || body_len != r->left || (flags & ~FLAGS_KNOWN) != 0 || source > CACHE_TTL_HEURISTIC ||
        m->status < 100 || m->status > 999 || b->key_len == 0 || m->url_off > b->key_len ||
        m->url_len > b->key_len - m->url_off || m->request_time_ms > m->response_time_ms || b->head_len < 5 ||
        memcmp(b->head, "HTTP/", 5) != 0)
        return false;
    b->body = (const char *)r->p;
    b->body_len = (size_t)body_len;
    m->is_chunked = (flags & FLAG_CHUNKED) != 0;
    m->ttl.source = (enum cache_ttl_source)source;
    m->ttl.must_revalidate = (flags & FLAG_MUST_REVALIDATE) != 0;
    m->ttl.no_cache = (flags & FLAG_NO_CACHE) != 0;
    return true;
}

static struct cache_entry *entry_build(const struct blob_entry *b)
{
    size_t nb = b->body_len == 0 ? 0 : (b->body_len - 1) / CACHE_BLOCK_MAX + 1;
    size_t size = sizeof(struct cache_entry) + nb * sizeof(struct cache_piece) + b->key_len + 1 +
                  b->vary_len + 1 + b->vary_key_len + 1 + (b->etag != NULL ? b->etag_len + 1 : 0) +
                  b->tags_len + 1 + b->head_len + 1;
    struct cache_entry *e = malloc(size);
    if (e == NULL)
        return NULL;
    *e = b->meta;
    struct cache_piece *pieces = (struct cache_piece *)(e + 1);
    for (size_t k = 0, off = 0; k < nb; k++) {
        size_t n = b->body_len - off < CACHE_BLOCK_MAX ? b->body_len - off : CACHE_BLOCK_MAX;
        char *d = malloc(n);
        if (d == NULL) {
            while (k > 0)
                free((char *)pieces[--k].data);
            free(e);
            return NULL;
        }
        memcpy(d, b->body + off, n);
        pieces[k] = (struct cache_piece){d, n};
        off += n;
    }
    char *p = (char *)(pieces + nb);
    e->key = copy(&p, b->key, b->key_len);
    e->key_len = b->key_len;
    e->hash = cache_hash(e->key, e->key_len);
    e->vary = copy(&p, b->vary, b->vary_len);
    e->vary_key = copy(&p, b->vary_key, b->vary_key_len);
    e->etag = b->etag != NULL ? copy(&p, b->etag, b->etag_len) : NULL;
    e->tags = copy(&p, b->tags, b->tags_len);
    e->head = copy(&p, b->head, b->head_len);
    e->head_len = b->head_len;
    e->body = pieces;
    e->nbody = nb;
    e->body_len = b->body_len;
    e->bytes = size + b->body_len;
    atomic_init(&e->_refs, 1);
    atomic_init(&e->_freq, 0);
    list_init(&e->_qlink);
    e->_blocks = pieces;
    return e;
}

struct cache_entry *cache_entry_from_blob(const char *blob, size_t len)
{
    struct reader r = {(const unsigned char *)blob, len, false};
    struct blob_entry b = {0};
    if (blob == NULL || !parse_entry(&r, &b)) {
        errno = EBADMSG;
        return NULL;
    }
    struct cache_entry *e = entry_build(&b);
    if (e == NULL)
        errno = ENOMEM;
    return e;
}

/* ---- Redis keys ---- */

/* "sluice:" + the hex SHA-256 of the primary key, or, with a vary_key, of
 * the key's length (8 bytes), the key and the vary_key: the length keeps
 * (key, vary_key) pairs from running into each other.  out has
 * REDIS_KEY_LEN + 1 bytes. */
static int redis_key(const char *key, size_t len, const char *vary_key, size_t vk_len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE], n[8];
    unsigned int mdlen = 0;
    for (int i = 0; i < 8; i++)
        n[i] = (unsigned char)((uint64_t)len >> (8 * i));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool is_ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
                 (vary_key == NULL || EVP_DigestUpdate(ctx, n, sizeof(n)) == 1) &&
                 EVP_DigestUpdate(ctx, key, len) == 1 &&
                 (vary_key == NULL || EVP_DigestUpdate(ctx, vary_key, vk_len) == 1) &&
                 EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (!is_ok)
        return -ENOMEM;
    char *o = out + sizeof(KEY_PREFIX) - 1;
    memcpy(out, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    for (unsigned i = 0; i < mdlen; i++) {
        *o++ = hex[md[i] >> 4];
        *o++ = hex[md[i] & 15];
    }
    *o = '\0';
    return 0;
}

/* ---- put ---- */

static void put_done(void *arg, int status, const struct redisReply *reply)
{
    if (status == 0 && reply->type != REDIS_REPLY_ERROR)
        return;
    count(&stats.put_errors);
    LOG_RATELIMITED(LOG_WARN, "cache", "redis tier: a write failed: %s",
                    status != 0 ? uv_strerror(status) : reply->str);
}

static int set(struct redis_conn *r, const char *key, const char *blob, size_t len, const char *px)
{
    const char *argv[] = {"SET", key, blob, "PX", px};
    size_t lens[] = {3, REDIS_KEY_LEN, len, 2, strlen(px)};
    return redis_command_argv(r, 5, argv, lens, put_done, NULL);
}

int cache_tier_put(struct redis_conn *r, const struct cache_entry *e, int64_t ttl_ms)
{
    if (ttl_ms <= 0)
        return -EINVAL;
    size_t len, ilen;
    char *blob = cache_entry_to_blob(e, &len), *index = NULL;
    char key[REDIS_KEY_LEN + 1], px[24];
    int rc = blob == NULL ? -errno : 0;
    snprintf(px, sizeof(px), "%lld", (long long)ttl_ms);
    const char *vary_key = or_empty(e->vary_key);
    if (rc == 0 && or_empty(e->vary)[0] == '\0') {
        rc = redis_key(e->key, e->key_len, NULL, 0, key);
        if (rc == 0)
            rc = set(r, key, blob, len, px);
    } else if (rc == 0) {
        /* the variant first: whoever reads the index then finds it */
        rc = redis_key(e->key, e->key_len, vary_key, strlen(vary_key), key);
        if (rc == 0)
            rc = set(r, key, blob, len, px);
        if (rc == 0)
            rc = (index = vary_index_blob(e, &ilen)) != NULL ? 0 : -errno;
        if (rc == 0)
            rc = redis_key(e->key, e->key_len, NULL, 0, key);
        if (rc == 0)
            rc = set(r, key, index, ilen, px);
    }
    free(blob);
    free(index);
    count(rc == 0 ? &stats.puts : &stats.put_errors);
    return rc;
}

/* ---- get ---- */

struct tier_get {
    struct redis_conn *r;
    cache_header_get_cb get_header;
    void *arg;
    cache_tier_get_cb cb;
    void *cbarg;
    bool is_variant; /* the second round trip, for a varying response */
    size_t key_len;
    char key[];
};

static void get_done(void *arg, int status, const struct redisReply *reply);

static int send_get(struct tier_get *g, const char *key)
{
    char end[16];
    const char *argv[] = {"GETRANGE", key, "0", end};
    size_t lens[] = {8, REDIS_KEY_LEN, 1, (size_t)snprintf(end, sizeof(end), "%u", CACHE_TIER_BLOB_MAX)};
    return redis_command_argv(g->r, 4, argv, lens, get_done, g);
}

static void finish(struct tier_get *g, int status, struct cache_entry *e)
{
    if (status == -EBADMSG) {
        count(&stats.bad_blobs);
        LOG_RATELIMITED(LOG_WARN, "cache", "redis tier: ignored a malformed entry");
    }
    count(status < 0 ? &stats.get_errors : e != NULL ? &stats.hits : &stats.misses);
    g->cb(g->cbarg, status, e);
    free(g);
}

/* The index of a varying response: read the request's variant. */
static void get_variant(struct tier_get *g, struct reader *r)
{
    size_t key_len, vary_len;
    const char *key = get_str(r, &key_len), *vary = get_str(r, &vary_len);
    char vary_list[CACHE_VARY_KEY_MAX], vary_key[CACHE_VARY_KEY_MAX], rkey[REDIS_KEY_LEN + 1];
    if (r->is_bad || r->left != 0 || vary_len == 0 || vary_len >= sizeof(vary_list)) {
        finish(g, -EBADMSG, NULL);
        return;
    }
    if (key_len != g->key_len || memcmp(key, g->key, key_len) != 0 || g->get_header == NULL) {
        finish(g, 0, NULL);
        return;
    }
    memcpy(vary_list, vary, vary_len);
    vary_list[vary_len] = '\0';
    size_t n = cache_vary_key(vary_list, g->get_header, g->arg, vary_key, sizeof(vary_key));
    if (n == 0) {
        finish(g, 0, NULL); /* the request's fields do not fit a key: it cannot match */
        return;
    }
    int rc = redis_key(g->key, g->key_len, vary_key, n, rkey);
    g->is_variant = true;
    if (rc == 0)
        rc = send_get(g, rkey);
    if (rc != 0)
        finish(g, rc, NULL);
}

static void get_done(void *arg, int status, const struct redisReply *reply)
{
    struct tier_get *g = arg;
    if (status != 0) {
        finish(g, status, NULL);
        return;
    }
    /* GETRANGE of a missing key is "" */
    if (reply->type == REDIS_REPLY_NIL || (reply->type == REDIS_REPLY_STRING && reply->len == 0)) {
        finish(g, 0, NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        LOG_RATELIMITED(LOG_WARN, "cache", "redis tier: unexpected reply %s",
                        reply->type == REDIS_REPLY_ERROR ? reply->str : "type");
        finish(g, -EPROTO, NULL);
        return;
    }
    if (reply->len > CACHE_TIER_BLOB_MAX) {
        finish(g, -EFBIG, NULL);
        return;
    }
    struct reader r = {(const unsigned char *)reply->str, reply->len, false};
    int kind = get_kind(&r);
    if (kind == KIND_VARY && !g->is_variant) {
        get_variant(g, &r);
        return;
    }
    struct cache_entry *e = kind == KIND_ENTRY ? cache_entry_from_blob(reply->str, reply->len) : NULL;
    if (e == NULL) {
        finish(g, kind == KIND_ENTRY && errno == ENOMEM ? -ENOMEM : -EBADMSG, NULL);
        return;
    }
    /* the digest names the key; the blob must say the same, and vary */
    if (e->key_len != g->key_len || memcmp(e->key, g->key, g->key_len) != 0 ||
        !cache_vary_matches(e->vary, e->vary_key, g->get_header, g->arg)) {
        cache_entry_release(e);
        e = NULL;
    }
    finish(g, 0, e);
}

int cache_tier_get(struct redis_conn *r, const char *key, size_t len, cache_header_get_cb get_header,
                   void *arg, cache_tier_get_cb cb, void *cbarg)
{
    char rkey[REDIS_KEY_LEN + 1];
    struct tier_get *g = malloc(sizeof(*g) + len);
    int rc = g != NULL ? redis_key(key, len, NULL, 0, rkey) : -ENOMEM;
    if (rc == 0) {
        *g = (struct tier_get){r, get_header, arg, cb, cbarg, false, len};
        memcpy(g->key, key, len);
        rc = send_get(g, rkey);
    }
    if (rc != 0) {
        free(g);
        count(&stats.get_errors);
        return rc;
    }
    count(&stats.gets);
    return 0;
}

void cache_tier_get_stats(struct cache_tier_stats *out)
{
    out->puts = atomic_load_explicit(&stats.puts, memory_order_relaxed);
    out->put_errors = atomic_load_explicit(&stats.put_errors, memory_order_relaxed);
    out->gets = atomic_load_explicit(&stats.gets, memory_order_relaxed);
    out->hits = atomic_load_explicit(&stats.hits, memory_order_relaxed);
    out->misses = atomic_load_explicit(&stats.misses, memory_order_relaxed);
    out->get_errors = atomic_load_explicit(&stats.get_errors, memory_order_relaxed);
    out->bad_blobs = atomic_load_explicit(&stats.bad_blobs, memory_order_relaxed);
}
