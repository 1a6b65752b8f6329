/* SPDX-License-Identifier: MIT */
/*
 * cache/key.c: cache keys — the primary key of a request (method, URL, the
 * route's extra headers and body digest), its 64-bit hash, and the
 * secondary key of a request for a response's Vary list.
 *
 * Keys are built into the caller's buffer, never allocated; anything that
 * does not fit makes the request uncacheable (0), the one safe failure.
 * Credentials (Authorization, Cookie) enter a key only as a SHA-256 digest,
 * so a key printed in a log or listed in Redis never leaks them.
 * Thread-safe: no state outside the call.
 */
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

#include "cache/cache.h"
#include "cache/cache_int.h"

/* Longest request field value we read into a key. */
#define KEY_VALUE_MAX 8192
/* Most query parameters we sort or filter; more makes the request
 * uncacheable rather than the sort costly. */
#define KEY_QUERY_MAX 128

/* An output buffer that remembers it overflowed; one byte is kept for NUL. */
struct out {
    char *p;
    size_t cap, len;
    bool is_full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->is_full || o->cap == 0 || n > o->cap - 1 - o->len) {
        o->is_full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_case(struct out *o, const char *s, size_t n, bool upper)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 32);
        else if (!upper && c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        put(o, &c, 1);
    }
}

static void put_hex(struct out *o, const unsigned char *d, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        char b[2] = {hex[d[i] >> 4], hex[d[i] & 15]};
        put(o, b, 2);
    }
}

/* Terminates and returns the length, or 0 when something did not fit. */
static size_t finish(struct out *o)
{
    if (o->is_full)
        return 0;
    o->p[o->len] = '\0';
    return o->len;
}

/* A request field: its length, 0..KEY_VALUE_MAX-2, or -1 when absent or -2
 * when it may have been cut (a key on a cut value could match a different
 * request). */
static int get_value(cache_header_get_cb get, void *arg, const char *lname, char *buf)
{
    if (!get)
        return -1;
    int n = get(arg, lname, buf, KEY_VALUE_MAX);
    if (n < 0)
        return -1;
    return n >= KEY_VALUE_MAX - 1 ? -2 : n;
}

/* One query parameter: the text between '&'s, and its name's length. */
struct param {
    const char *s;
    size_t len, nlen;
};

static int cmp_param_name(const struct param *a, const struct param *b)
{
    size_t n = a->nlen < b->nlen ? a->nlen : b->nlen;
    int c = memcmp(a->s, b->s, n);
    return c ? c : (a->nlen > b->nlen) - (a->nlen < b->nlen);
}

static bool is_ignored(const struct conf_route_cache *p, const struct param *q)
{
    for (size_t i = 0; i < p->nkey_query_ignore; i++)
        if (strlen(p->key_query_ignore[i]) == q->nlen && memcmp(p->key_query_ignore[i], q->s, q->nlen) == 0)
            return true;
    return false;
}

/* The query as the route keys it: parameters named in query_ignore dropped
 * (exact, still percent-encoded names), empty ones too, then sorted by name
 * (stable, so repeated names keep their order) when query_sort is on.
 * Percent-encoding is left alone: decoding could merge distinct URLs. */
static bool put_query(struct out *o, const struct conf_route_cache *p, const char *q, size_t len)
{
    if (!p->key_query_sorted && p->nkey_query_ignore == 0) {
        put(o, "?", 1);
        put(o, q, len);
        return true;
    }
    struct param ps[KEY_QUERY_MAX];
    size_t n = 0, i = 0;
    while (i <= len) {
        size_t s = i;
        while (i < len && q[i] != '&')
            i++;
        struct param x = {q + s, i - s, 0};
        const char *eq = memchr(x.s, '=', x.len);
        x.nlen = eq ? (size_t)(eq - x.s) : x.len;
        i++;
        if (x.len == 0 || is_ignored(p, &x))
            continue;
        if (n == KEY_QUERY_MAX)
            return false;
        ps[n++] = x;
    }
    /* insertion sort: stable, and n is small */
    for (size_t a = 1; p->key_query_sorted && a < n; a++) {
        struct param x = ps[a];
        size_t b = a;
        for (; b > 0 && cmp_param_name(&ps[b - 1], &x) > 0; b--)
            ps[b] = ps[b - 1];
        ps[b] = x;
    }
    for (size_t k = 0; k < n; k++) {
        put(o, k ? "&" : "?", 1);
        put(o, ps[k].s, ps[k].len);
    }
    return true;
}

static bool sha256(const char *data, size_t len, unsigned char md[32])
{
    unsigned int mdlen = 0;
    return EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen == 32;
}

size_t cache_key_build(const struct conf_route_cache *p, const struct cache_key_input *in, char *out,
                       size_t cap, size_t *url_off, size_t *url_len)
{
    struct out o = {out, cap, 0, false};
    if (!p || !in->method || !in->scheme || !in->host || !in->target)
        return 0;
    /* HEAD is answered from GET's entry (RFC 9110 9.3.2: same fields). */
    if (strcasecmp(in->method, "HEAD") == 0)
        put_str(&o, "GET");
    else
        put_case(&o, in->method, strlen(in->method), true);
    put(&o, " ", 1);
    size_t off = o.len;
    put_case(&o, in->scheme, strlen(in->scheme), false);
    put(&o, "://", 3);
    put_case(&o, in->host, strlen(in->host), false);
    const char *qm = memchr(in->target, '?', in->target_len);
    size_t plen = qm ? (size_t)(qm - in->target) : in->target_len;
    put(&o, in->target, plen);
    if (qm && !put_query(&o, p, qm + 1, in->target_len - plen - 1))
        return 0;
    size_t ulen = o.len - off;

    char val[KEY_VALUE_MAX], lname[64];
    for (size_t i = 0; i < p->nkey_headers; i++) {
        size_t nl = strlen(p->key_headers[i]);
        if (nl >= sizeof(lname))
            return 0;
        struct out ln = {lname, sizeof(lname), 0, false};
        put_case(&ln, p->key_headers[i], nl, false);
        finish(&ln);
        put(&o, "\n", 1);
        put(&o, lname, nl);
        /* absent: the name alone, so it differs from an empty value */
        int n = get_value(in->get_header, in->arg, lname, val);
        if (n == -2)
            return 0;
        if (n < 0)
            continue;
        put(&o, ":", 1);
        if (strcmp(lname, "authorization") == 0 || strcmp(lname, "cookie") == 0) {
            unsigned char md[32];
            if (!sha256(val, (size_t)n, md))
                return 0;
            put_hex(&o, md, sizeof(md));
        } else {
            put(&o, val, (size_t)n);
        }
    }
    if (in->body_sha256) {
        put_str(&o, "\nbody:");
        put_hex(&o, in->body_sha256, 32);
    }
    size_t len = finish(&o);
    if (len) {
        if (url_off)
            *url_off = off;
        if (url_len)
            *url_len = ulen;
    }
    return len;
}

/* A 64-bit hash in the wyhash manner: 16 input bytes per 64x64->128-bit
 * multiply, whose halves are folded together, then a final fold.  Fast and
 * well mixed; not keyed, so not a defence against chosen collisions: the
 * store compares whole keys. */
#define H_K0 UINT64_C(0x9e3779b97f4a7c15)
#define H_K1 UINT64_C(0xd6e8feb86659fd93)
#define H_K2 UINT64_C(0xa0761d6478bd642f)
#define H_K3 UINT64_C(0xe7037ed1a0b428db)

static uint64_t fold(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* n (0..8) bytes little-endian, whatever the host order, so a hash is the
 * same on every machine sharing a Redis tier. */
static uint64_t load(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = v << 8 | p[i - 1];
    return v;
}

uint64_t cache_hash(const char *data, size_t len)
{
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h = H_K0 ^ fold(len ^ H_K1, H_K2);
    size_t n = len;
    for (; n >= 16; n -= 16, p += 16)
        h = fold(load(p, 8) ^ H_K1, load(p + 8, 8) ^ h);
    uint64_t a = load(p, n < 8 ? n : 8), b = n > 8 ? load(p + 8, n - 8) : 0;
    h = fold(a ^ H_K2, b ^ h ^ H_K3);
    return fold(h ^ H_K0, h ^ H_K1 ^ len);
}

/* A field value with whitespace folded (RFC 9111 4.1 lets a cache normalise
 * it): trimmed, runs of SP/HTAB made one SP, and none next to a comma, so
 * "gzip,deflate" and "gzip , deflate" select the same variant. */
static void put_folded(struct out *o, const char *v, size_t len)
{
    size_t i = 0;
    bool space = false;
    char prev = ',';
    while (i < len) {
        char c = v[i++];
        if (cache_is_ows(c)) {
            space = true;
            continue;
        }
        if (space && prev != ',' && c != ',')
            put(o, " ", 1);
        space = false;
        put(o, &c, 1);
        prev = c;
    }
}

size_t cache_vary_key(const char *vary, cache_header_get_cb get_header, void *arg, char *out, size_t cap)
{
    struct out o = {out, cap, 0, false};
    char val[KEY_VALUE_MAX], name[256];
    const char *s = vary ? vary : "";
    while (*s) {
        size_t l = strcspn(s, ",");
        if (l >= sizeof(name))
            return 0;
        memcpy(name, s, l);
        name[l] = '\0';
        s += l + (s[l] == ',');
        if (l == 0)
            continue;
        put(&o, name, l);
        /* absent: "name" alone, distinct from an empty value "name=" */
        int n = get_value(get_header, arg, name, val);
        if (n == -2)
            return 0;
        if (n >= 0) {
            put(&o, "=", 1);
            put_folded(&o, val, (size_t)n);
        }
        put(&o, "\n", 1);
    }
    return finish(&o);
}
