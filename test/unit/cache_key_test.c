/* SPDX-License-Identifier: MIT */
/*
 * cache keys: primary keys (method, URL, query normalisation, extra headers,
 * body digest), the 64-bit hash, and Vary secondary keys.
 */
#include <openssl/evp.h>

#include "cache/cache.h"
#include "cache/cache_int.h"

#include "test/unit/test.h"

/* Request fields for the get_header callback: name/value pairs, names
 * lowercase, NULL-terminated. */
struct fields {
    const char *const *kv;
    int calls;
};

static int get_header(void *arg, const char *lname, char *out, size_t cap)
{
    struct fields *f = arg;
    f->calls++;
    for (size_t i = 0; f->kv && f->kv[i]; i += 2) {
        if (strcmp(f->kv[i], lname) != 0)
            continue;
        size_t n = strlen(f->kv[i + 1]);
        if (n >= cap)
            n = cap - 1;
        memcpy(out, f->kv[i + 1], n);
        out[n] = '\0';
        return (int)n;
    }
    return -1;
}

#define F(...) ((const char *const[]){__VA_ARGS__, NULL})

static struct conf_route_cache route(void)
{
    struct conf_route_cache p = {0};
    p.max_stale_ms = 86400000;
    return p;
}

static char keybuf[16384];
static size_t url_off, url_len;

static const char *key_full(const struct conf_route_cache *p, const char *method, const char *host,
                            const char *target, struct fields *f, const unsigned char *body)
{
    struct cache_key_input in = {method, "http", host, target, strlen(target), get_header, f, body};
    url_off = url_len = 0;
    size_t n = cache_key_build(p, &in, keybuf, sizeof(keybuf), &url_off, &url_len);
    if (n == 0)
        return NULL;
    ASSERT_EQ(strlen(keybuf), n);
    return keybuf;
}

static const char *key(const struct conf_route_cache *p, const char *target)
{
    return key_full(p, "GET", "example.com", target, NULL, NULL);
}

TEST(key_basic)
{
    struct conf_route_cache p = route();
    ASSERT_STR_EQ(key(&p, "/a/b?x=1&y=2"), "GET http://example.com/a/b?x=1&y=2");
    ASSERT_EQ(url_off, 4);
    ASSERT_EQ(url_len, strlen("http://example.com/a/b?x=1&y=2"));
    /* HEAD shares GET's key; methods are uppercased, hosts and schemes lowercased */
    ASSERT_STR_EQ(key_full(&p, "HEAD", "example.com", "/", NULL, NULL), "GET http://example.com/");
    ASSERT_STR_EQ(key_full(&p, "head", "Example.COM:8080", "/", NULL, NULL), "GET http://example.com:8080/");
    ASSERT_STR_EQ(key_full(&p, "post", "h", "/", NULL, NULL), "POST http://h/");
    struct cache_key_input in = {"GET", "HTTPS", "h", "/p", 2, NULL, NULL, NULL};
    ASSERT(cache_key_build(&p, &in, keybuf, sizeof(keybuf), NULL, NULL) > 0);
    ASSERT_STR_EQ(keybuf, "GET https://h/p");
    /* percent-encoding and path case are left as they are */
    ASSERT_STR_EQ(key(&p, "/A%2f?q=%41"), "GET http://example.com/A%2f?q=%41");
    /* without sorting or ignoring, the query is kept verbatim */
    ASSERT_STR_EQ(key(&p, "/p?b=2&&a=1&"), "GET http://example.com/p?b=2&&a=1&");
    /* target_len counts, not the NUL */
    struct cache_key_input in2 = {"GET", "http", "h", "/abc?x=1", 4, NULL, NULL, NULL};
    ASSERT(cache_key_build(&p, &in2, keybuf, sizeof(keybuf), NULL, NULL) > 0);
    ASSERT_STR_EQ(keybuf, "GET http://h/abc");
}

TEST(key_query_sorted)
{
    struct conf_route_cache p = route();
    p.key_query_sorted = true;
    ASSERT_STR_EQ(key(&p, "/p?b=2&a=1&c"), "GET http://example.com/p?a=1&b=2&c");
    /* stable: a repeated name keeps its order */
    ASSERT_STR_EQ(key(&p, "/p?z=1&a=3&z=0&a=2&a=1"), "GET http://example.com/p?a=3&a=2&a=1&z=1&z=0");
    /* by name, not by the whole parameter; a name that is a prefix sorts first */
    ASSERT_STR_EQ(key(&p, "/p?ab=1&a=9&a_=0"), "GET http://example.com/p?a=9&a_=0&ab=1");
    /* empty parameters dropped; an empty query disappears */
    ASSERT_STR_EQ(key(&p, "/p?&&b&&a=&"), "GET http://example.com/p?a=&b");
    ASSERT_STR_EQ(key(&p, "/p?"), "GET http://example.com/p");
    ASSERT_STR_EQ(key(&p, "/p"), "GET http://example.com/p");
    /* equal keys whatever the order */
    char a[256];
    strcpy(a, key(&p, "/p?x=1&y=2&w=3"));
    ASSERT_STR_EQ(key(&p, "/p?w=3&y=2&x=1"), a);
}

TEST(key_query_ignore)
{
    struct conf_route_cache p = route();
    char *ign[] = {"utm_source", "utm_medium", "fbclid"};
    p.key_query_ignore = ign;
    p.nkey_query_ignore = 3;
    ASSERT_STR_EQ(key(&p, "/p?utm_source=x&id=7&utm_medium=y&fbclid&utm_sourcex=1"),
                  "GET http://example.com/p?id=7&utm_sourcex=1");
    /* exact, case-sensitive, still percent-encoded names */
    ASSERT_STR_EQ(key(&p, "/p?UTM_SOURCE=1&utm%5Fsource=2"),
                  "GET http://example.com/p?UTM_SOURCE=1&utm%5Fsource=2");
    ASSERT_STR_EQ(key(&p, "/p?utm_source=1"), "GET http://example.com/p");
    p.key_query_sorted = true;
    ASSERT_STR_EQ(key(&p, "/p?z=1&utm_medium=2&a=1"), "GET http://example.com/p?a=1&z=1");
}

TEST(key_query_too_many_params)
{
    struct conf_route_cache p = route();
    p.key_query_sorted = true;
    char t[4096] = "/p?";
    for (int i = 0; i < 200; i++)
        sprintf(t + strlen(t), "p%d=1&", i);
    ASSERT(key(&p, t) == NULL);
    p.key_query_sorted = false;
    ASSERT(key(&p, t) != NULL); /* verbatim needs no parsing */
}

TEST(key_headers)
{
    struct conf_route_cache p = route();
    char *hdrs[] = {"X-Api-Key", "Accept-Language", "X-Absent"};
    p.key_headers = hdrs;
    p.nkey_headers = 3;
    struct fields f = {F("x-api-key", "k1", "accept-language", "en,  fr")};
    ASSERT_STR_EQ(key_full(&p, "GET", "h", "/", &f, NULL),
                  "GET http://h/\nx-api-key:k1\naccept-language:en,  fr\nx-absent");
    ASSERT_EQ(url_len, strlen("http://h/"));
    /* absent differs from empty */
    struct fields g = {F("x-api-key", "k1", "accept-language", "en,  fr", "x-absent", "")};
    ASSERT_STR_EQ(key_full(&p, "GET", "h", "/", &g, NULL),
                  "GET http://h/\nx-api-key:k1\naccept-language:en,  fr\nx-absent:");
}

static void sha_hex(const char *s, char *hex)
{
    unsigned char md[32];
    unsigned int n;
    EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
}

TEST(key_credentials_hashed)
{
    struct conf_route_cache p = route();
    char *hdrs[] = {"Authorization", "cookie"};
    p.key_headers = hdrs;
    p.nkey_headers = 2;
    struct fields f = {F("authorization", "Bearer secret-token", "cookie", "sid=abc")};
    const char *k = key_full(&p, "GET", "h", "/", &f, NULL);
    ASSERT(k != NULL);
    ASSERT(strstr(k, "secret") == NULL);
    ASSERT(strstr(k, "sid=abc") == NULL);
    char h1[65], h2[65], want[512];
    sha_hex("Bearer secret-token", h1);
    sha_hex("sid=abc", h2);
    snprintf(want, sizeof(want), "GET http://h/\nauthorization:%s\ncookie:%s", h1, h2);
    ASSERT_STR_EQ(k, want);
    /* different users, different keys */
    struct fields g = {F("authorization", "Bearer other", "cookie", "sid=abc")};
    ASSERT(strcmp(key_full(&p, "GET", "h", "/", &g, NULL), want) != 0);
}

TEST(key_body_digest)
{
    struct conf_route_cache p = route();
    p.key_body = true;
    unsigned char d[32];
    for (int i = 0; i < 32; i++)
        d[i] = (unsigned char)(i * 7 + 1);
    const char *k = key_full(&p, "POST", "h", "/v1/chat", NULL, d);
    ASSERT_STR_EQ(
        k, "POST http://h/v1/chat\nbody:01080f161d242b323940474e555c636a71787f868d949ba2a9b0b7bec5ccd3da");
    ASSERT_EQ(url_off, 5);
    ASSERT_EQ(url_len, strlen("http://h/v1/chat"));
}

TEST(key_does_not_fit)
{
    struct conf_route_cache p = route();
    struct cache_key_input in = {"GET", "http", "example.com", "/abcdef", 7, NULL, NULL, NULL};
    char small[64];
    size_t need = strlen("GET http://example.com/abcdef");
    ASSERT_EQ(cache_key_build(&p, &in, small, need, NULL, NULL), 0); /* no room for the NUL */
    ASSERT_EQ(cache_key_build(&p, &in, small, need + 1, NULL, NULL), need);
    ASSERT_EQ(cache_key_build(&p, &in, small, 0, NULL, NULL), 0);
    /* a header value that may have been cut makes it uncacheable */
    char *hdrs[] = {"x-big"};
    p.key_headers = hdrs;
    p.nkey_headers = 1;
    char *big = malloc(20000);
    memset(big, 'v', 19999);
    big[19999] = '\0';
    struct fields f = {F("x-big", big)};
    ASSERT(key_full(&p, "GET", "h", "/", &f, NULL) == NULL);
    free(big);
    /* missing parts */
    struct cache_key_input bad = {NULL, "http", "h", "/", 1, NULL, NULL, NULL};
    ASSERT_EQ(cache_key_build(&p, &bad, small, sizeof(small), NULL, NULL), 0);
    ASSERT_EQ(cache_key_build(NULL, &in, small, sizeof(small), NULL, NULL), 0);
}

TEST(key_noise_never_crashes)
{
    /* random targets through the query parser, in exact-size heap copies */
    struct conf_route_cache p = route();
    char *ign[] = {"a", "utm"};
    p.key_query_ignore = ign;
    p.nkey_query_ignore = 2;
    uint64_t r = 0x2545f4914f6cdd1d;
    char out[512];
    for (int iter = 0; iter < 100000; iter++) {
        char buf[200];
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t len = r % sizeof(buf);
        for (size_t i = 0; i < len; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            buf[i] = "?&=abutm/%"[r % 10];
        }
        if (len)
            buf[0] = '/'; /* origin-form, so the path can be found again below */
        char *t = malloc(len ? len : 1);
        memcpy(t, buf, len);
        p.key_query_sorted = iter & 1;
        struct cache_key_input in = {"GET", "http", "h", t, len, NULL, NULL, NULL};
        size_t n = cache_key_build(&p, &in, out, sizeof(out), NULL, NULL);
        ASSERT(n == 0 || n == strlen(out));
        /* normalising twice changes nothing */
        if (n && p.key_query_sorted) {
            char again[512];
            const char *path = out + strlen("GET http://h");
            if (*path) {
                struct cache_key_input in2 = {"GET", "http", "h", path, strlen(path), NULL, NULL, NULL};
                ASSERT(cache_key_build(&p, &in2, again, sizeof(again), NULL, NULL) == n);
                ASSERT_STR_EQ(again, out);
            }
        }
        free(t);
    }
}

TEST(hash_basics)
{
    ASSERT_EQ(cache_hash("abc", 3), cache_hash("abc", 3));
    ASSERT_NE(cache_hash("abc", 3), cache_hash("abd", 3));
    ASSERT_NE(cache_hash("", 0), cache_hash("\0", 1));
    ASSERT_NE(cache_hash("\0", 1), cache_hash("\0\0", 2));
    /* trailing zero bytes are not lost at any length */
    char z[64] = {0};
    for (size_t n = 0; n < 40; n++)
        ASSERT_NE(cache_hash(z, n), cache_hash(z, n + 1));
    /* a stable value: the Redis tier shares hashes between processes */
    uint64_t h = cache_hash("GET http://example.com/", 23);
    ASSERT_EQ(h, cache_hash("GET http://example.com/", 23));
}

TEST(hash_mixing)
{
    /* flipping any one input bit flips about half the output bits */
    char buf[48];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (char)('a' + i % 26);
    for (size_t len = 1; len <= sizeof(buf); len += 7) {
        uint64_t base = cache_hash(buf, len);
        long total = 0;
        for (size_t bit = 0; bit < len * 8; bit++) {
            buf[bit / 8] ^= (char)(1 << (bit % 8));
            int d = __builtin_popcountll(base ^ cache_hash(buf, len));
            buf[bit / 8] ^= (char)(1 << (bit % 8));
            ASSERT_GT(d, 10);
            ASSERT_LT(d, 54);
            total += d;
        }
        long avg100 = total * 100 / (long)(len * 8);
        ASSERT_GT(avg100, 2900);
        ASSERT_LT(avg100, 3500);
    }
    /* sequential keys spread evenly over 64 buckets by their low bits */
    int buckets[64] = {0};
    char k[32];
    for (int i = 0; i < 64000; i++) {
        int n = sprintf(k, "GET http://h/item/%d", i);
        buckets[cache_hash(k, (size_t)n) & 63]++;
    }
    for (int b = 0; b < 64; b++) {
        ASSERT_GT(buckets[b], 850);
        ASSERT_LT(buckets[b], 1150);
    }
}

TEST(vary_key_basic)
{
    struct fields f = {F("accept-encoding", "gzip, deflate", "user-agent", "ua")};
    char out[512];
    size_t n = cache_vary_key("accept-encoding,user-agent", get_header, &f, out, sizeof(out));
    ASSERT_EQ(n, strlen(out));
    ASSERT_STR_EQ(out, "accept-encoding=gzip,deflate\nuser-agent=ua\n");
    /* absent is distinct from empty */
    struct fields g = {F("accept-encoding", "")};
    cache_vary_key("accept-encoding,x-a", get_header, &g, out, sizeof(out));
    ASSERT_STR_EQ(out, "accept-encoding=\nx-a\n");
    /* no Vary: an empty key */
    ASSERT_EQ(cache_vary_key("", get_header, &g, out, sizeof(out)), 0);
    ASSERT_STR_EQ(out, "");
    ASSERT_EQ(cache_vary_key(NULL, get_header, &g, out, sizeof(out)), 0);
    /* no callback: every field absent */
    cache_vary_key("a,b", NULL, NULL, out, sizeof(out));
    ASSERT_STR_EQ(out, "a\nb\n");
}

TEST(vary_key_whitespace_folded)
{
    char a[256], b[256];
    struct fields f1 = {
        F("accept-encoding", "  gzip ,\tdeflate  ,  br ", "accept-language", "en  -  US\t x")};
    struct fields f2 = {F("accept-encoding", "gzip,deflate,br", "accept-language", "en - US x")};
    cache_vary_key("accept-encoding,accept-language", get_header, &f1, a, sizeof(a));
    cache_vary_key("accept-encoding,accept-language", get_header, &f2, b, sizeof(b));
    ASSERT_STR_EQ(a, b);
    ASSERT_STR_EQ(a, "accept-encoding=gzip,deflate,br\naccept-language=en - US x\n");
    /* different values stay different */
    struct fields f3 = {F("accept-encoding", "gzip", "accept-language", "en - US x")};
    cache_vary_key("accept-encoding,accept-language", get_header, &f3, b, sizeof(b));
    ASSERT(strcmp(a, b) != 0);
}

TEST(vary_key_from_response_facts)
{
    /* Vary names normalised by the facts select the same variant whatever
     * their case and order in the response */
    struct cache_response_facts r1, r2;
    cache_response_facts_init(&r1, 200, NULL);
    cache_response_facts_init(&r2, 200, NULL);
    cache_response_facts_add(&r1, "Vary", 4, "User-Agent, Accept-Encoding", 27);
    cache_response_facts_add(&r2, "vary", 4, "accept-encoding", 15);
    cache_response_facts_add(&r2, "vary", 4, "USER-AGENT", 10);
    struct fields f = {F("accept-encoding", "gzip", "user-agent", "x")};
    char a[256], b[256];
    cache_vary_key(r1.vary, get_header, &f, a, sizeof(a));
    cache_vary_key(r2.vary, get_header, &f, b, sizeof(b));
    ASSERT_STR_EQ(a, b);
    ASSERT_STR_EQ(a, "accept-encoding=gzip\nuser-agent=x\n");
}

TEST(vary_key_does_not_fit)
{
    struct fields f = {F("a", "0123456789")};
    char out[64];
    ASSERT_EQ(cache_vary_key("a", get_header, &f, out, 13), 0);
    ASSERT_EQ(cache_vary_key("a", get_header, &f, out, 14), 13);
    char longname[300];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ASSERT_EQ(cache_vary_key(longname, get_header, &f, out, sizeof(out)), 0);
    char *big = malloc(20000);
    memset(big, 'v', 19999);
    big[19999] = '\0';
    struct fields g = {F("a", big)};
    char *huge = malloc(40000);
    ASSERT_EQ(cache_vary_key("a", get_header, &g, huge, 40000), 0);
    free(huge);
    free(big);
}

TEST_MAIN()
