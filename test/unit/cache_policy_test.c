/* SPDX-License-Identifier: MIT */
/*
 * cache policy: HTTP dates, Cache-Control, facts, the store / TTL decision,
 * ttl_from json, and how an entry may answer a request.  Time is moved by
 * hand: every decision takes `now` as an argument.
 */
#include <llhttp.h>

#include "cache/cache.h"
#include "cache/cache_int.h"

#include "test/unit/test.h"

#define SEC 1000
#define T0  (INT64_C(1700000000) * SEC) /* Tue, 14 Nov 2023 22:13:20 GMT */

static char *mk_date(int64_t secs)
{
    static char buf[8][30];
    static int n;
    char *b = buf[n++ % 8];
    cache_date_format(secs, b);
    return b;
}

/* A route as `cache main;` gives it (CONF.md defaults). */
static struct conf_route_cache route(void)
{
    struct conf_route_cache p = {0};
    p.methods = CONF_CACHE_METHOD_BIT(HTTP_GET) | CONF_CACHE_METHOD_BIT(HTTP_HEAD);
    p.max_stale_ms = 86400 * SEC;
    return p;
}

static struct cache_request_facts req(unsigned method, const char *const *fields)
{
    struct cache_request_facts f;
    cache_request_facts_init(&f, method);
    for (size_t i = 0; fields && fields[i]; i += 2)
        cache_request_facts_add(&f, fields[i], strlen(fields[i]), fields[i + 1], strlen(fields[i + 1]));
    return f;
}

static struct cache_response_facts resp_h(unsigned status, const char *ttl_header, const char *const *fields)
{
    struct cache_response_facts f;
    cache_response_facts_init(&f, status, ttl_header);
    for (size_t i = 0; fields && fields[i]; i += 2)
        cache_response_facts_add(&f, fields[i], strlen(fields[i]), fields[i + 1], strlen(fields[i + 1]));
    return f;
}

static struct cache_response_facts resp(unsigned status, const char *const *fields)
{
    return resp_h(status, NULL, fields);
}

#define F(...) ((const char *const[]){__VA_ARGS__, NULL})

/* The store decision for a GET with the given response, received at T0 with
 * no delay. */
static bool store(const struct conf_route_cache *p, const struct cache_response_facts *rs,
                  struct cache_ttl *t)
{
    struct cache_request_facts rq = req(HTTP_GET, NULL);
    return cache_decide_store(p, &rq, rs, T0, T0, t);
}

static struct cache_cc cc_of(const char *v)
{
    struct cache_cc cc;
    cache_cc_init(&cc);
    cache_cc_parse(&cc, v, strlen(v));
    return cc;
}

/* An entry stored at T0 with the given ttl, as the store would publish it. */
static struct cache_entry entry(const struct cache_ttl *t)
{
    struct cache_entry e;
    memset(&e, 0, sizeof(e));
    e.status = 200;
    e.request_time_ms = e.response_time_ms = T0;
    e.ttl = *t;
    e.date = T0 / SEC;
    e.last_modified = -1;
    return e;
}

static struct cache_entry entry_fresh(int64_t fresh_s)
{
    struct cache_ttl t = {.source = CACHE_TTL_ORIGIN, .fresh_ms = fresh_s * SEC};
    return entry(&t);
}

/* ==== dates ==== */

TEST(date_three_formats)
{
    ASSERT_EQ(cache_date_parse("Sun, 06 Nov 1994 08:49:37 GMT", 29), 784111777);
    ASSERT_EQ(cache_date_parse("Sunday, 06-Nov-94 08:49:37 GMT", 30), 784111777);
    ASSERT_EQ(cache_date_parse("Sun Nov  6 08:49:37 1994", 24), 784111777);
    ASSERT_EQ(cache_date_parse("Sun Nov 06 08:49:37 1994", 24), 784111777);
    /* surrounding whitespace, wrong case of names */
    ASSERT_EQ(cache_date_parse("  Sun, 06 Nov 1994 08:49:37 GMT ", 32), 784111777);
    ASSERT_EQ(cache_date_parse("THU, 18 AUG 2050 02:01:18 gmt", 29), 2544400878);
    /* the length given counts, not the NUL */
    ASSERT_EQ(cache_date_parse("Sun, 06 Nov 1994 08:49:37 GMTxyz", 29), 784111777);
}

TEST(date_edges)
{
    ASSERT_EQ(cache_date_parse("Thu, 01 Jan 1970 00:00:00 GMT", 29), 0);
    ASSERT_EQ(cache_date_parse("Thu, 29 Feb 2024 12:00:00 GMT", 29), 1709208000);
    ASSERT_EQ(cache_date_parse("Fri, 31 Dec 9999 23:59:59 GMT", 29), INT64_C(253402300799));
    /* before the epoch: a time in the past, not "invalid" */
    ASSERT_EQ(cache_date_parse("Mon, 01 Jan 1900 00:00:00 GMT", 29), 0);
    /* RFC 850 two-digit years: more than 50 years ahead is the past century */
    ASSERT_EQ(cache_date_parse("Thursday, 01-Jan-70 00:00:00 GMT", 32) / 86400 / 365 > 50, 1);
    ASSERT_EQ(cache_date_parse("Friday, 01-Jan-99 00:00:00 GMT", 30), 915148800);
}

TEST(date_invalid)
{
    static const char *const bad[] = {
        "0",
        "",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
        "Thu, 30 Feb 2024 02:01:18 GMT",
        "Thu, 29 Feb 2023 02:01:18 GMT",
        "Thu, 00 Jan 2024 02:01:18 GMT",
        "Thu, 18 Aug 2050 24:01:18 GMT",
        "Thu, 18 Aug 2050 23:60:18 GMT",
        "Xyz, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18 Foo 2050 02:01:18 GMT",
        "Thu, 1a Aug 2050 02:01:18 GMT",
        "Sunday, 06-Nov-94 08:49:37 UTC",
        "Sunxyz, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 94  ",
        "Sun Nov x6 08:49:37 1994",
        "Sun Nov  6 08:49:37 199x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cache_date_parse(bad[i], strlen(bad[i])) != -1)
            TEST_FAIL("accepted \"%s\"", bad[i]);
    ASSERT_EQ(cache_date_parse(NULL, 0), -1);
}

TEST(date_format_round_trip)
{
    char b[30];
    ASSERT_EQ(cache_date_format(784111777, b), 29);
    ASSERT_STR_EQ(b, "Sun, 06 Nov 1994 08:49:37 GMT");
    cache_date_format(0, b);
    ASSERT_STR_EQ(b, "Thu, 01 Jan 1970 00:00:00 GMT");
    cache_date_format(-5, b);
    ASSERT_STR_EQ(b, "Thu, 01 Jan 1970 00:00:00 GMT");
    cache_date_format(INT64_MAX, b);
    ASSERT_STR_EQ(b, "Fri, 31 Dec 9999 23:59:59 GMT");
    for (int64_t t = 0; t < INT64_C(4102444800); t += 7777777) {
        cache_date_format(t, b);
        ASSERT_EQ(cache_date_parse(b, 29), t);
    }
}

/* ==== Cache-Control ==== */

TEST(cc_basic_directives)
{
    struct cache_cc cc =
        cc_of("max-age=60, s-maxage=30, no-cache, no-store, private, public, must-revalidate, "
              "proxy-revalidate, only-if-cached, immutable, stale-while-revalidate=5, "
              "stale-if-error=7, max-stale=9, min-fresh=11");
    ASSERT_EQ(cc.max_age, 60);
    ASSERT_EQ(cc.s_maxage, 30);
    ASSERT_EQ(cc.stale_while_revalidate, 5);
    ASSERT_EQ(cc.stale_if_error, 7);
    ASSERT_EQ(cc.max_stale, 9);
    ASSERT_EQ(cc.min_fresh, 11);
    ASSERT(cc.no_cache && cc.no_store && cc.is_private && cc.is_public && cc.must_revalidate);
    ASSERT(cc.proxy_revalidate && cc.only_if_cached && cc.immutable);
    ASSERT(!cc.no_cache_fields && !cc.private_fields && !cc.is_invalid);

    cc = cc_of("");
    ASSERT_EQ(cc.max_age, CACHE_CC_ABSENT);
    ASSERT_EQ(cc.max_stale, CACHE_CC_ABSENT);
    ASSERT(!cc.no_cache && !cc.is_invalid);
}

TEST(cc_case_spaces_commas_unknown)
{
    struct cache_cc cc = cc_of("  ,,MaX-AgE=3600 ,\t foo, bar=\"x,y\", NO-CACHE ,,");
    ASSERT_EQ(cc.max_age, 3600);
    ASSERT(cc.no_cache);
    ASSERT(!cc.is_invalid);
    cc = cc_of("foobar, max-age=3600");
    ASSERT_EQ(cc.max_age, 3600);
}

TEST(cc_quoted_values)
{
    struct cache_cc cc = cc_of("max-age=\"3600\"");
    ASSERT_EQ(cc.max_age, 3600);
    ASSERT(!cc.is_invalid);
    /* "max-age" inside a quoted string is not a directive */
    cc = cc_of("extension=\"max-age=100\", max-age=1");
    ASSERT_EQ(cc.max_age, 1);
    ASSERT(!cc.is_invalid);
    cc = cc_of("max-age=1, extension=\"max-age=100\"");
    ASSERT_EQ(cc.max_age, 1);
    cc = cc_of("extension=\"a\\\"max-age=100\", max-age=\"1\"");
    ASSERT_EQ(cc.max_age, 1);
    ASSERT(!cc.is_invalid);
    /* single quotes are not quotes */
    cc = cc_of("max-age='3600'");
    ASSERT(cc.is_invalid);
    /* unterminated quote swallows the rest */
    cc = cc_of("ext=\"abc, max-age=5");
    ASSERT_EQ(cc.max_age, CACHE_CC_ABSENT);
    ASSERT(!cc.is_invalid);
    cc = cc_of("max-age=\"5");
    ASSERT(cc.is_invalid);
    /* qualified no-cache / private */
    cc = cc_of("no-cache=\"Set-Cookie, X-A\", private=\"X-B\"");
    ASSERT(cc.no_cache_fields && !cc.no_cache);
    ASSERT(cc.private_fields && !cc.is_private);
    cc = cc_of("no-cache=x-a");
    ASSERT(cc.no_cache_fields && !cc.no_cache);
}

TEST(cc_invalid_freshness)
{
    static const char *const bad[] = {
        "max-age=a100", "max-age=100a", "max-age=-100", "max-age=3600.0", "max-age=",     "max-age",
        "max-age =100", "max-age= 100", "max-age=1 2",  "s-maxage=x",     "max-age=\"\"", "max-age=1;x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cache_cc cc = cc_of(bad[i]);
        if (!cc.is_invalid)
            TEST_FAIL("\"%s\" not invalid", bad[i]);
    }
    /* leading zeros are fine */
    struct cache_cc cc = cc_of("max-age=003600");
    ASSERT_EQ(cc.max_age, 3600);
    ASSERT(!cc.is_invalid);
}

TEST(cc_duplicates)
{
    struct cache_cc cc = cc_of("max-age=1800, max-age=1");
    ASSERT(cc.is_invalid);
    cc = cc_of("max-age=60, max-age=60");
    ASSERT(!cc.is_invalid);
    ASSERT_EQ(cc.max_age, 60);
    /* several field lines add up, contradictions included */
    cache_cc_init(&cc);
    cache_cc_parse(&cc, "max-age=1800", 12);
    cache_cc_parse(&cc, "max-age=1", 9);
    ASSERT(cc.is_invalid);
    cache_cc_init(&cc);
    cache_cc_parse(&cc, "s-maxage=10", 11);
    cache_cc_parse(&cc, "no-store", 8);
    ASSERT_EQ(cc.s_maxage, 10);
    ASSERT(cc.no_store);
    /* other delta directives: the first readable one counts */
    cc = cc_of("stale-if-error=x, stale-if-error=5, stale-if-error=9");
    ASSERT_EQ(cc.stale_if_error, 5);
}

TEST(cc_huge_values_clamp)
{
    struct cache_cc cc = cc_of("max-age=2147483648");
    ASSERT_EQ(cc.max_age, CACHE_DELTA_MAX);
    cc = cc_of("max-age=99999999999999999999999999999999, stale-while-revalidate=99999999999999999999");
    ASSERT_EQ(cc.max_age, CACHE_DELTA_MAX);
    ASSERT_EQ(cc.stale_while_revalidate, CACHE_DELTA_MAX);
    ASSERT(!cc.is_invalid);
    /* max-stale without a value: any staleness */
    cc = cc_of("max-stale");
    ASSERT_EQ(cc.max_stale, CACHE_DELTA_MAX);
    cc = cc_of("max-stale=bad");
    ASSERT_EQ(cc.max_stale, CACHE_CC_ABSENT);
}

TEST(cc_malformed_restrictive_counts)
{
    struct cache_cc cc = cc_of("no-store junk, public x");
    ASSERT(cc.no_store);
    ASSERT(!cc.is_public);
    cc = cc_of("=5, ,= , \"q\", max-age=7");
    ASSERT_EQ(cc.max_age, 7);
    ASSERT(!cc.is_invalid);
}

TEST(cc_parse_never_reads_past_len)
{
    /* every prefix of a tricky value parses without reading beyond it */
    const char *v = "ext=\"a\\\"b,max-age=1\", max-age=\"2\", private=\"x\", no-cache";
    size_t n = strlen(v);
    for (size_t l = 0; l <= n; l++) {
        char *copy = malloc(l ? l : 1);
        memcpy(copy, v, l);
        struct cache_cc cc;
        cache_cc_init(&cc);
        cache_cc_parse(&cc, copy, l);
        free(copy);
    }
}

TEST(parsers_noise_never_crash)
{
    /* random field values through every parser, each in an exact-size heap
     * copy so ASan sees any read past the end */
    static const char alphabet[] = "\"\\,=; \tmax-agesMAXnocht-0123456789W/*:GMTSunNovJan+luic";
    static const char *const names[] = {"Cache-Control",
                                        "Pragma",
                                        "Date",
                                        "Expires",
                                        "Last-Modified",
                                        "Age",
                                        "Vary",
                                        "Surrogate-Key",
                                        "Cache-Tag",
                                        "If-None-Match",
                                        "If-Modified-Since",
                                        "X-TTL",
                                        "Surrogate-Control"};
    uint64_t r = 0x9e3779b97f4a7c15;
    for (int iter = 0; iter < 100000; iter++) {
        char buf[96];
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t len = r % sizeof(buf);
        for (size_t i = 0; i < len; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            buf[i] = iter & 1 ? (char)r : alphabet[r % (sizeof(alphabet) - 1)];
        }
        char *v = malloc(len ? len : 1);
        memcpy(v, buf, len);
        const char *name = names[iter % 13];
        struct cache_response_facts rs;
        cache_response_facts_init(&rs, 200, "x-ttl");
        cache_response_facts_add(&rs, name, strlen(name), v, len);
        cache_response_facts_add(&rs, name, strlen(name), v, len);
        struct cache_request_facts rq;
        cache_request_facts_init(&rq, HTTP_GET);
        cache_request_facts_add(&rq, name, strlen(name), v, len);
        ASSERT(cache_date_parse(v, len) >= -1);
        struct conf_route_cache p = route();
        p.ttl_header = "x-ttl";
        struct cache_ttl t;
        if (cache_decide_store(&p, &rq, &rs, T0, T0, &t)) {
            ASSERT(t.fresh_ms >= 0 && t.fresh_ms <= CACHE_DELTA_MAX * SEC);
            struct cache_entry e = entry(&t);
            e.etag = v[0] == '"' ? "\"a\"" : NULL;
            cache_decide_use(&p, &e, &rq, T0 + (int64_t)(r % 100000));
            cache_not_modified(&e, &rq);
        }
        ASSERT(strlen(rs.vary) < sizeof(rs.vary) && strlen(rs.tags) < sizeof(rs.tags));
        free(v);
    }
}

/* ==== facts ==== */

TEST(request_facts)
{
    struct cache_request_facts f =
        req(HTTP_GET, F("Cache-Control", "max-age=0", "PRAGMA", "no-cache", "Authorization", "Bearer x",
                        "If-None-Match", "\"a\"", "if-none-match", "W/\"b\"", "If-Modified-Since",
                        "Sun, 06 Nov 1994 08:49:37 GMT"));
    ASSERT(f.has_cc);
    ASSERT_EQ(f.cc.max_age, 0);
    ASSERT(f.pragma_no_cache);
    ASSERT(f.has_authorization);
    ASSERT(f.has_conditional);
    ASSERT_STR_EQ(f.if_none_match, "\"a\", W/\"b\"");
    ASSERT_EQ(f.if_modified_since, 784111777);

    f = req(HTTP_GET, F("If-Range", "x"));
    ASSERT(f.has_conditional);
    ASSERT_EQ(f.if_modified_since, -1);
    f = req(HTTP_GET, F("Pragma", "foo, No-Cache"));
    ASSERT(f.pragma_no_cache && !f.has_cc);
    f = req(HTTP_GET, F("Pragma", "no-cache-please"));
    ASSERT(!f.pragma_no_cache);
}

TEST(request_facts_if_none_match_bounded)
{
    char big[2000];
    memset(big, 'a', sizeof(big) - 1);
    big[0] = '"';
    big[sizeof(big) - 2] = '"';
    big[sizeof(big) - 1] = '\0';
    struct cache_request_facts f = req(HTTP_GET, F("If-None-Match", "\"x\"", "If-None-Match", big));
    ASSERT_EQ(strlen(f.if_none_match), sizeof(f.if_none_match) - 1);
    /* the cut tag has no closing quote: it never matches */
    struct cache_entry e = entry_fresh(60);
    e.etag = big;
    ASSERT(!cache_not_modified(&e, &f));
    e.etag = "\"x\"";
    ASSERT(cache_not_modified(&e, &f));
}

TEST(response_facts)
{
    struct cache_response_facts f =
        resp_h(200, "X-TTL",
               F("Date", "Sun, 06 Nov 1994 08:49:37 GMT", "Expires", "Sun, 06 Nov 1994 09:49:37 GMT",
                 "Expires", "Sun, 06 Nov 1994 10:49:37 GMT", "Last-Modified", "Sat, 05 Nov 1994 08:49:37 GMT",
                 "Age", "12", "ETag", "\"v1\"", "Set-Cookie", "a=b", "Content-Range", "bytes 0-1/2", "x-ttl",
                 "  5m ", "Cache-Control", "max-age=5", "Cache-Control", "public", "Pragma", "no-cache"));
    ASSERT_EQ(f.status, 200);
    ASSERT_EQ(f.date, 784111777);
    ASSERT(f.has_expires);
    ASSERT_EQ(f.expires, 784111777 + 3600); /* the first Expires */
    ASSERT_EQ(f.last_modified, 784111777 - 86400);
    ASSERT_EQ(f.age, 12);
    ASSERT(f.has_etag && f.has_set_cookie && f.has_content_range && f.has_cc && f.pragma_no_cache);
    ASSERT_EQ(f.cc.max_age, 5);
    ASSERT(f.cc.is_public);
    ASSERT_STR_EQ(f.ttl_header, "5m");

    f = resp(200, F("Expires", "0", "Last-Modified", "garbage", "Date", "nope"));
    ASSERT(f.has_expires);
    ASSERT_EQ(f.expires, 0);
    ASSERT_EQ(f.last_modified, -1);
    ASSERT_EQ(f.date, -1);
    ASSERT_STR_EQ(f.ttl_header, "");
}

TEST(response_facts_age_parsing)
{
    /* anything but one plain delta-seconds counts as 2^31 s: stale */
    const int64_t M = CACHE_DELTA_MAX;
    static const struct {
        const char *v1, *v2;
        int64_t want;
    } cases[] = {
        {"abc", NULL, M},
        {"-7200", NULL, M},
        {"7200.0", NULL, M},
        {"7200,0", NULL, M},
        {"0,7200", NULL, M},
        {"0, 0", NULL, M},
        {" 15 ", NULL, 15},
        {"7200", "0", M},
        {"0", "0", M},
        {"7200;foo=bar", NULL, M},
        {"", NULL, M},
        {"0", NULL, 0},
        {"99999999999999", NULL, M},
        {"003", NULL, 3},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cache_response_facts f;
        cache_response_facts_init(&f, 200, NULL);
        cache_response_facts_add(&f, "Age", 3, cases[i].v1, strlen(cases[i].v1));
        if (cases[i].v2)
            cache_response_facts_add(&f, "age", 3, cases[i].v2, strlen(cases[i].v2));
        if (f.age != cases[i].want)
            TEST_FAIL("Age \"%s\": %lld, want %lld", cases[i].v1, (long long)f.age, (long long)cases[i].want);
    }
}

TEST(response_facts_vary_normalised)
{
    struct cache_response_facts f = resp(
        200, F("Vary", "User-Agent, accept-encoding", "VARY", " Accept-Encoding ,X-B,, x-a", "Vary", ""));
    ASSERT_STR_EQ(f.vary, "accept-encoding,user-agent,x-a,x-b");
    ASSERT(!f.vary_star);
    f = resp(200, F("Vary", "Accept, *"));
    ASSERT(f.vary_star);
    /* too many names to hold: treated as Vary: * */
    char many[1024] = "";
    for (int i = 0; i < 40; i++)
        sprintf(many + strlen(many), "%sx-h%d", i ? "," : "", i);
    f = resp(200, F("Vary", many));
    ASSERT(f.vary_star);
    char longname[400];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    f = resp(200, F("Vary", longname));
    ASSERT(f.vary_star);
}

TEST(response_facts_tags)
{
    struct cache_response_facts f =
        resp(200, F("Surrogate-Key", "  a b  c ", "Cache-Tag", "c,d , e", "surrogate-key", "a f"));
    ASSERT_STR_EQ(f.tags, "a b c d e f");
    /* bounded: a tag that does not fit is dropped whole */
    char big[600];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    f = resp(200, F("Surrogate-Key", "one", "Surrogate-Key", big, "Surrogate-Key", "two"));
    ASSERT_STR_EQ(f.tags, "one two");
}

/* ==== store decision: vetoes ==== */

TEST(store_plain_max_age)
{
    struct conf_route_cache p = route();
    struct cache_response_facts rs = resp(200, F("Cache-Control", "max-age=60"));
    struct cache_ttl t;
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 60 * SEC);
    ASSERT_EQ(t.initial_age_ms, 0);
    ASSERT(!t.must_revalidate && !t.no_cache && !t.needs_json);
}

TEST(store_vetoes)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_response_facts rs;
    static const char *const vetoes[] = {"no-store", "private", "private=\"x-a\"", "max-age=60, no-store"};
    for (size_t i = 0; i < 4; i++) {
        rs = resp(200, F("Cache-Control", "max-age=60", "Cache-Control", vetoes[i]));
        if (store(&p, &rs, &t))
            TEST_FAIL("stored with %s", vetoes[i]);
        ASSERT_EQ(t.source, CACHE_TTL_NONE);
    }
    rs = resp(200, F("Cache-Control", "max-age=60", "Vary", "*"));
    ASSERT(!store(&p, &rs, &t));
    rs = resp(206, F("Cache-Control", "max-age=60"));
    ASSERT(!store(&p, &rs, &t));
    /* Content-Range means nothing on a 200: stored */
    rs = resp(200, F("Cache-Control", "max-age=60", "Content-Range", "bytes 0-1/10"));
    ASSERT(store(&p, &rs, &t));
    rs = resp(304, F("Cache-Control", "max-age=60"));
    ASSERT(!store(&p, &rs, &t));
    rs = resp(101, F("Cache-Control", "max-age=60"));
    ASSERT(!store(&p, &rs, &t));
    ASSERT(!cache_decide_store(NULL, &(struct cache_request_facts){0}, &rs, T0, T0, &t));

    /* request no-store */
    rs = resp(200, F("Cache-Control", "max-age=60"));
    struct cache_request_facts rq = req(HTTP_GET, F("Cache-Control", "no-store"));
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    /* request Pragma does not veto storing */
    rq = req(HTTP_GET, F("Pragma", "no-cache"));
    ASSERT(cache_decide_store(&p, &rq, &rs, T0, T0, &t));
}

TEST(store_methods)
{
    struct conf_route_cache p = route();
    struct cache_response_facts rs = resp(200, F("Cache-Control", "max-age=60"));
    struct cache_ttl t;
    struct cache_request_facts rq = req(HTTP_HEAD, NULL);
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t)); /* HEAD never creates an entry */
    rq = req(HTTP_POST, NULL);
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    p.methods |= CONF_CACHE_METHOD_BIT(HTTP_POST);
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t)); /* not keyed on the body */
    p.key_body = true;
    ASSERT(cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    rq = req(HTTP_PUT, NULL);
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    p.methods = CONF_CACHE_METHOD_BIT(HTTP_POST);
    rq = req(HTTP_GET, NULL);
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    rq = req(200, NULL); /* out of the mask's range */
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
}

TEST(store_authorization)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_request_facts rq = req(HTTP_GET, F("Authorization", "Bearer x"));
    struct cache_response_facts rs = resp(200, F("Cache-Control", "max-age=60"));
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    static const char *const allow[] = {"max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"};
    for (size_t i = 0; i < 3; i++) {
        rs = resp(200, F("Cache-Control", allow[i]));
        if (!cache_decide_store(&p, &rq, &rs, T0, T0, &t))
            TEST_FAIL("not stored with %s", allow[i]);
    }
    rs = resp(200, F("Cache-Control", "max-age=60, proxy-revalidate"));
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    /* a route keyed on Authorization keeps users apart: stored */
    char *hdrs[] = {"X-Api-Key", "AUTHORIZATION"};
    p.key_headers = hdrs;
    p.nkey_headers = 2;
    rs = resp(200, F("Cache-Control", "max-age=60"));
    ASSERT(cache_decide_store(&p, &rq, &rs, T0, T0, &t));
}

TEST(store_set_cookie)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_response_facts rs = resp(200, F("Set-Cookie", "a=b", "Cache-Control", "max-age=60"));
    ASSERT(store(&p, &rs, &t)); /* the origin said so explicitly */
    p.has_ttl = true;
    p.ttl_ms = 600 * SEC;
    rs = resp(200, F("Set-Cookie", "a=b", "ETag", "\"x\""));
    ASSERT(!store(&p, &rs, &t)); /* never on a route TTL */
    rs = resp(200, F("Set-Cookie", "a=b", "Cache-Control", "max-age=0", "ETag", "\"x\""));
    ASSERT(!store(&p, &rs, &t));
    rs = resp(200, F("Set-Cookie", "a=b", "Cache-Control", "public"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ROUTE);
}

/* ==== freshness lifetime ==== */

TEST(store_s_maxage_over_max_age)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_response_facts rs = resp(200, F("Cache-Control", "max-age=3600, s-maxage=1"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 1 * SEC);
    rs = resp(200, F("Cache-Control", "max-age=1, s-maxage=3600"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 3600 * SEC);
    ASSERT(t.must_revalidate); /* s-maxage implies proxy-revalidate */
    rs = resp(200, F("Cache-Control", "max-age=3600", "Cache-Control", "s-maxage=1", "ETag", "\"e\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 1 * SEC);
}

TEST(store_expires)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    int64_t now = T0 / SEC;
    struct cache_response_facts rs = resp(200, F("Date", mk_date(now), "Expires", mk_date(now + 100)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 100 * SEC);
    /* Expires - Date, not Expires - now: the origin's clock is 50 s behind */
    rs = resp(200, F("Date", mk_date(now - 50), "Expires", mk_date(now + 50)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 100 * SEC);
    ASSERT_EQ(t.initial_age_ms, 50 * SEC);
    /* no Date: response time */
    rs = resp(200, F("Expires", mk_date(now + 30)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 30 * SEC);
    /* max-age beats Expires, even an invalid one */
    rs = resp(200, F("Expires", "0", "Cache-Control", "max-age=3600", "Date", mk_date(now)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 3600 * SEC);
    rs = resp(200, F("Expires", mk_date(now + 10000), "Cache-Control", "max-age=0", "ETag", "\"a\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 0);
    /* invalid or past Expires: stale (stored only with a validator) */
    rs = resp(200, F("Expires", "0", "ETag", "\"a\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 0);
    rs = resp(200, F("Expires", "0", "Last-Modified", mk_date(now - 100000)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 0); /* explicit expiry: no heuristic */
    rs = resp(200, F("Expires", mk_date(now - 10)));
    ASSERT(!store(&p, &rs, &t));
}

TEST(store_invalid_cc_is_stale)
{
    struct conf_route_cache p = route();
    p.has_ttl = true;
    p.ttl_ms = 600 * SEC;
    struct cache_ttl t;
    int64_t now = T0 / SEC;
    /* invalid freshness is explicit: no route TTL, no heuristic */
    struct cache_response_facts rs =
        resp(200, F("Cache-Control", "max-age=1800, max-age=1", "Last-Modified", mk_date(now - 100000)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 0);
    rs = resp(200, F("Cache-Control", "max-age=a100"));
    ASSERT(!store(&p, &rs, &t));
}

TEST(store_age_calculation)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_request_facts rq = req(HTTP_GET, NULL);
    int64_t now = T0 / SEC;
    /* corrected_age_value = Age + response_delay */
    struct cache_response_facts rs = resp(200, F("Cache-Control", "max-age=600", "Age", "100"));
    ASSERT(cache_decide_store(&p, &rq, &rs, T0 - 2 * SEC, T0, &t));
    ASSERT_EQ(t.initial_age_ms, 102 * SEC);
    /* apparent_age = response_time - Date, when larger */
    rs = resp(200, F("Cache-Control", "max-age=600", "Age", "10", "Date", mk_date(now - 300)));
    ASSERT(cache_decide_store(&p, &rq, &rs, T0 - 2 * SEC, T0, &t));
    ASSERT_EQ(t.initial_age_ms, 300 * SEC);
    /* a Date in the future gives no negative age */
    rs = resp(200, F("Cache-Control", "max-age=600", "Date", mk_date(now + 300)));
    ASSERT(cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    ASSERT_EQ(t.initial_age_ms, 0);
    /* Age past max-age: stale at once; no validator, not stored */
    rs = resp(200, F("Cache-Control", "max-age=10", "Age", "15", "Date", mk_date(now)));
    ASSERT(!cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    /* an unreadable Age makes it stale, even with the longest max-age */
    rs = resp(200, F("Cache-Control", "max-age=99999999999", "Age", "abc", "ETag", "\"e\""));
    ASSERT(cache_decide_store(&p, &rq, &rs, T0, T0, &t));
    struct cache_entry e = entry(&t);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_REVALIDATE);
    ASSERT_EQ(cache_entry_age(&e, T0), CACHE_DELTA_MAX);
}

TEST(store_heuristic)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    int64_t now = T0 / SEC;
    struct cache_response_facts rs =
        resp(200, F("Date", mk_date(now), "Last-Modified", mk_date(now - 10000)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_HEURISTIC);
    ASSERT_EQ(t.fresh_ms, 1000 * SEC);
    /* at most a day */
    rs = resp(200, F("Date", mk_date(now), "Last-Modified", mk_date(now - 100 * 86400)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 86400 * SEC);
    /* no Date: from the response time */
    rs = resp(404, F("Last-Modified", mk_date(now - 1000)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 100 * SEC);
    /* Last-Modified in the future: 0, still stored for its validator */
    rs = resp(200, F("Date", mk_date(now), "Last-Modified", mk_date(now + 1000)));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 0);
    /* only heuristically cacheable statuses, unless public */
    static const unsigned yes[] = {200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 451, 501};
    static const unsigned no[] = {201, 302, 303, 307, 400, 403, 500, 502, 503, 299, 599};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        rs = resp(yes[i], F("Last-Modified", mk_date(now - 1000)));
        if (!store(&p, &rs, &t) || t.fresh_ms != 100 * SEC)
            TEST_FAIL("status %u not heuristically cached", yes[i]);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        rs = resp(no[i], F("Last-Modified", mk_date(now - 1000)));
        if (store(&p, &rs, &t))
            TEST_FAIL("status %u heuristically cached", no[i]);
        rs = resp(no[i], F("Last-Modified", mk_date(now - 1000), "Cache-Control", "public"));
        if (!store(&p, &rs, &t) || t.fresh_ms != 100 * SEC)
            TEST_FAIL("public status %u not cached", no[i]);
    }
    /* no freshness, no validator: nothing to store */
    rs = resp(200, NULL);
    ASSERT(!store(&p, &rs, &t));
    /* an ETag alone: stored stale, for revalidation */
    rs = resp(200, F("ETag", "\"a\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_HEURISTIC);
    ASSERT_EQ(t.fresh_ms, 0);
}

TEST(store_any_status_with_explicit_freshness)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    static const unsigned st[] = {200, 203, 204, 299, 301, 302, 303, 307, 308,
                                  400, 404, 410, 499, 500, 502, 503, 504, 599};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        struct cache_response_facts rs = resp(st[i], F("Cache-Control", "max-age=100000"));
        if (!store(&p, &rs, &t) || t.fresh_ms != 100000 * SEC)
            TEST_FAIL("status %u with max-age not stored", st[i]);
    }
}

TEST(store_no_cache_and_pragma)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_response_facts rs = resp(200, F("Cache-Control", "max-age=60, no-cache"));
    ASSERT(store(&p, &rs, &t));
    ASSERT(t.no_cache);
    ASSERT_EQ(t.swr_ms, 0);
    rs = resp(200, F("Cache-Control", "max-age=60, no-cache=\"set-cookie\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT(t.no_cache);
    /* response Pragma: no-cache counts only without Cache-Control */
    rs = resp(200, F("Pragma", "no-cache", "Expires", mk_date(T0 / SEC + 60)));
    ASSERT(store(&p, &rs, &t));
    ASSERT(t.no_cache);
    rs = resp(200, F("Pragma", "no-cache", "Cache-Control", "max-age=60"));
    ASSERT(store(&p, &rs, &t));
    ASSERT(!t.no_cache);
}

TEST(store_must_understand)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_response_facts rs = resp(599, F("Cache-Control", "max-age=3600, must-understand"));
    ASSERT(!store(&p, &rs, &t)); /* a status we do not know */
    rs = resp(599, F("Cache-Control", "max-age=3600"));
    ASSERT(store(&p, &rs, &t));
    /* a status we know: must-understand overrides the no-store sent for older caches */
    rs = resp(200, F("Cache-Control", "max-age=3600, must-understand, no-store"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 3600 * SEC);
    rs = resp(429, F("Cache-Control", "max-age=5, MUST-UNDERSTAND"));
    ASSERT(store(&p, &rs, &t));
}

TEST(store_surrogate_control)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    int64_t now = T0 / SEC;
    struct cache_response_facts rs = resp(200, F("Surrogate-Control", "max-age=3600"));
    ASSERT(rs.has_sc);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 3600 * SEC);
    /* it beats Cache-Control and Expires, both ways */
    rs = resp(200, F("Cache-Control", "max-age=3600", "Surrogate-Control", "max-age=1"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 1 * SEC);
    rs = resp(200, F("Cache-Control", "max-age=1, s-maxage=1", "Surrogate-Control", "MaX-aGe=3600"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 3600 * SEC);
    rs = resp(200, F("Surrogate-Control", "max-age=0", "Expires", mk_date(now + 10000), "ETag", "\"e\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 0);
    /* its lifetime overrides Cache-Control: no-store; its no-store always holds */
    rs = resp(200, F("Cache-Control", "no-store", "Surrogate-Control", "max-age=10000"));
    ASSERT(store(&p, &rs, &t));
    rs = resp(200, F("Cache-Control", "max-age=10000", "Surrogate-Control", "no-store"));
    ASSERT(!store(&p, &rs, &t));
    rs = resp(200, F("Cache-Control", "no-store", "Surrogate-Control", "foo"));
    ASSERT(rs.has_sc);
    ASSERT(!store(&p, &rs, &t));
    /* an extension alone leaves Cache-Control in charge */
    rs = resp(200, F("Cache-Control", "max-age=60", "Surrogate-Control", "foobar"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 60 * SEC);
    /* malformed: stale */
    rs = resp(200, F("Cache-Control", "max-age=100", "Surrogate-Control", "max-age =100", "ETag", "\"e\""));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 0);
    /* targeting: ours (any case), another device's, a ";" inside quotes */
    rs = resp(200, F("Surrogate-Control", "max-age=30;Sluice"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 30 * SEC);
    rs = resp(200, F("Surrogate-Control", "max-age=3600;not-for-you", "Age", "7200"));
    ASSERT(!rs.has_sc);
    ASSERT(!store(&p, &rs, &t));
    rs = resp(200,
              F("Surrogate-Control", "content=\"ESI/1.0;x, y\";other, max-age=7 ; sluice , no-store;other"));
    ASSERT(rs.has_sc);
    ASSERT_EQ(rs.sc.max_age, 7);
    ASSERT(!rs.sc.no_store);
    /* max-age=N+M: M more seconds stale if the origin fails */
    rs = resp(200, F("Surrogate-Control", "max-age=60+600"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 60 * SEC);
    ASSERT_EQ(t.sie_ms, 600 * SEC);
    rs = resp(200, F("Surrogate-Control", "max-age=60+x"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 60 * SEC);
    ASSERT_EQ(t.sie_ms, 0);
    /* Age still counts against it */
    rs = resp(200, F("Surrogate-Control", "max-age=3600", "Age", "7200", "Date", mk_date(now)));
    ASSERT(!store(&p, &rs, &t));
}

/* ==== precedence of TTL sources ==== */

TEST(ttl_precedence)
{
    struct conf_route_cache p = route();
    struct conf_ttl_status sts[] = {{404, 404, 30 * SEC}, {200, 299, 77 * SEC}};
    struct conf_ttl_value jv[] = {{"done", 3600 * SEC}};
    int64_t now = T0 / SEC;
    const char *const *all =
        F("Cache-Control", "max-age=60", "X-TTL", "90", "Last-Modified", mk_date(now - 1000));
    const char *const *no_origin = F("X-TTL", "90", "Last-Modified", mk_date(now - 1000));
    const char *const *lm_only = F("Last-Modified", mk_date(now - 1000));
    struct cache_ttl t;
    struct cache_response_facts rs;

    /* heuristic alone */
    rs = resp_h(200, "x-ttl", lm_only);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_HEURISTIC);
    /* route ttl beats the heuristic */
    p.has_ttl = true;
    p.ttl_ms = 10 * SEC;
    rs = resp_h(200, "x-ttl", lm_only);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ROUTE);
    ASSERT_EQ(t.fresh_ms, 10 * SEC);
    /* ttl_status beats the route ttl */
    p.ttl_status = sts;
    p.nttl_status = 2;
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_STATUS);
    ASSERT_EQ(t.fresh_ms, 77 * SEC);
    /* the origin beats ttl_status */
    rs = resp_h(200, "x-ttl", all);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 60 * SEC);
    /* ttl_from header beats the origin */
    p.ttl_header = "X-TTL";
    rs = resp_h(200, p.ttl_header, all);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_HEADER);
    ASSERT_EQ(t.fresh_ms, 90 * SEC);
    /* ttl_from json beats the header (decided from the body) */
    p.ttl_json_path = "status";
    p.ttl_json_values = jv;
    p.nttl_json_values = 1;
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_JSON);
    ASSERT(t.needs_json);
    /* the override beats everything */
    p.ttl_override = true;
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ROUTE_OVERRIDE);
    ASSERT_EQ(t.fresh_ms, 10 * SEC);
    ASSERT(!t.needs_json);
    /* without the origin's headers the header still wins over status */
    p.ttl_override = false;
    p.ttl_json_path = NULL;
    rs = resp_h(200, p.ttl_header, no_origin);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_HEADER);
}

TEST(ttl_route_rules_need_default_cacheable_status)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct conf_ttl_value jv[] = {{"done", 3600 * SEC}};
    p.has_ttl = true;
    p.ttl_ms = 600 * SEC;
    p.ttl_override = true;
    /* a 500 is not made to stick by a route default; its own max-age counts */
    struct cache_response_facts rs = resp(500, F("Cache-Control", "max-age=5"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
    ASSERT_EQ(t.fresh_ms, 5 * SEC);
    rs = resp(500, NULL);
    ASSERT(!store(&p, &rs, &t));
    p.ttl_override = false;
    rs = resp(302, NULL);
    ASSERT(!store(&p, &rs, &t));
    p.ttl_json_path = "a";
    p.ttl_json_values = jv;
    p.nttl_json_values = 1;
    rs = resp(502, NULL);
    ASSERT(!store(&p, &rs, &t));
    rs = resp(404, NULL);
    ASSERT(store(&p, &rs, &t));
    ASSERT(t.needs_json);
}

TEST(ttl_status_ranges_and_zero)
{
    struct conf_route_cache p = route();
    struct conf_ttl_status sts[] = {{404, 404, 30 * SEC}, {400, 499, 5 * SEC}, {500, 599, 0}};
    p.ttl_status = sts;
    p.nttl_status = 3;
    struct cache_ttl t;
    struct cache_response_facts rs = resp(404, NULL);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.fresh_ms, 30 * SEC); /* first match in conf order */
    rs = resp(403, NULL);
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_STATUS);
    ASSERT_EQ(t.fresh_ms, 5 * SEC);
    rs = resp(503, NULL);
    ASSERT(!store(&p, &rs, &t));
    /* 0 is a veto even against the origin's own max-age */
    rs = resp(503, F("Cache-Control", "max-age=60"));
    ASSERT(!store(&p, &rs, &t));
    rs = resp(302, NULL);
    ASSERT(!store(&p, &rs, &t));
}

TEST(ttl_from_header_values)
{
    struct conf_route_cache p = route();
    p.ttl_header = "X-Cache-TTL";
    static const struct {
        const char *v;
        int64_t ms; /* -1: falls through, -2: not stored */
    } cases[] = {
        {"10", 10 * SEC},
        {"10s", 10 * SEC},
        {"5m", 300 * SEC},
        {"1h", 3600 * SEC},
        {"2d", 2 * 86400 * SEC},
        {"250ms", 250},
        {"007", 7 * SEC},
        {"0", -2},
        {"0s", -2},
        {"abc", -1},
        {"-5", -1},
        {"1.5h", -1},
        {"10 s", -1},
        {"5x", -1},
        {"", -1},
        {"99999999999999999999h", CACHE_DELTA_MAX * SEC},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cache_response_facts rs =
            resp_h(200, p.ttl_header, F("x-cache-ttl", cases[i].v, "ETag", "\"e\""));
        struct cache_ttl t;
        bool ok = store(&p, &rs, &t);
        if (cases[i].ms == -2
                ? ok
                : !ok || (cases[i].ms == -1 ? t.source != CACHE_TTL_HEURISTIC
                                            : t.source != CACHE_TTL_HEADER || t.fresh_ms != cases[i].ms))
            TEST_FAIL("X-Cache-TTL \"%s\": ok %d source %d fresh %lld", cases[i].v, ok, t.source,
                      (long long)t.fresh_ms);
    }
    /* an absent header falls through to the origin */
    struct cache_response_facts rs = resp_h(200, p.ttl_header, F("Cache-Control", "max-age=9"));
    struct cache_ttl t;
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.source, CACHE_TTL_ORIGIN);
}

TEST(route_rules_replace_no_cache_but_not_vetoes)
{
    struct conf_route_cache p = route();
    p.has_ttl = true;
    p.ttl_override = true;
    p.ttl_ms = 60 * SEC;
    struct cache_ttl t;
    struct cache_response_facts rs = resp(200, F("Cache-Control", "no-cache, max-age=0"));
    ASSERT(store(&p, &rs, &t));
    ASSERT(!t.no_cache);
    ASSERT_EQ(t.fresh_ms, 60 * SEC);
    rs = resp(200, F("Cache-Control", "private"));
    ASSERT(!store(&p, &rs, &t));
    rs = resp(200, F("Cache-Control", "no-store"));
    ASSERT(!store(&p, &rs, &t));
}

TEST(stale_windows_at_store)
{
    struct conf_route_cache p = route();
    struct cache_ttl t;
    struct cache_response_facts rs =
        resp(200, F("Cache-Control", "max-age=10, stale-while-revalidate=30, stale-if-error=600"));
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.swr_ms, 30 * SEC);
    ASSERT_EQ(t.sie_ms, 600 * SEC);
    /* the route's windows when larger, all capped by max_stale */
    p.stale_while_revalidate_ms = 60 * SEC;
    p.stale_if_error_ms = 10 * SEC;
    p.max_stale_ms = 300 * SEC;
    ASSERT(store(&p, &rs, &t));
    ASSERT_EQ(t.swr_ms, 60 * SEC);
    ASSERT_EQ(t.sie_ms, 300 * SEC);
    /* none with must-revalidate, proxy-revalidate, s-maxage or no-cache */
    static const char *const forbid[] = {"must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"};
    for (size_t i = 0; i < 4; i++) {
        rs = resp(200, F("Cache-Control", "max-age=10, stale-while-revalidate=30, stale-if-error=600",
                         "Cache-Control", forbid[i]));
        ASSERT(store(&p, &rs, &t));
        if (t.swr_ms || t.sie_ms)
            TEST_FAIL("stale window with %s", forbid[i]);
    }
    /* a 0-lifetime response without validators is kept for its stale window */
    rs = resp(200, F("Cache-Control", "max-age=0, stale-if-error=60"));
    ASSERT(store(&p, &rs, &t));
}

/* ==== ttl_from json ==== */

TEST(json_find_basics)
{
    char out[64];
    const char *doc = "{\"data\": {\"status\": \"completed\", \"n\": 12.5e3, \"ok\": true, \"z\": null}}";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data.status", out, sizeof(out)), 9);
    ASSERT_STR_EQ(out, "completed");
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data.n", out, sizeof(out)), 6);
    ASSERT_STR_EQ(out, "12.5e3");
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data.ok", out, sizeof(out)), 4);
    ASSERT_STR_EQ(out, "true");
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data.z", out, sizeof(out)), 4);
    ASSERT_STR_EQ(out, "null");
    /* missing, or naming a container */
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data.missing", out, sizeof(out)), -1);
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data", out, sizeof(out)), -1);
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "status", out, sizeof(out)), -1);
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data.status.x", out, sizeof(out)), -1);
    /* bad paths */
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "", out, sizeof(out)), -1);
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "data..status", out, sizeof(out)), -1);
    ASSERT_EQ(cache_json_find(doc, strlen(doc), ".data", out, sizeof(out)), -1);
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", out, sizeof(out)), -1);
    /* a root scalar has no path */
    ASSERT_EQ(cache_json_find("\"x\"", 3, "a", out, sizeof(out)), -1);
}

TEST(json_find_escapes)
{
    char out[64];
    const char *doc = "{\"st\\u0061tus\": \"a\\\"b\\\\c\\/d\\n\\u00e9\\ud83d\\ude00\"}";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "status", out, sizeof(out)), 14);
    ASSERT_STR_EQ(out, "a\"b\\c/d\n\xc3\xa9\xf0\x9f\x98\x80");
    /* bad escapes and lone surrogates are not JSON */
    static const char *const bad[] = {
        "{\"s\": \"\\x\"}",
        "{\"s\": \"\\u12\"}",
        "{\"s\": \"\\ud83d\"}",
        "{\"s\": \"\\ude00\"}",
        "{\"s\": \"\\ud83d\\u0041\"}",
        "{\"s\": \"a\tb\"}",
        "{\"s\": \"\\",
        "{\"s\": \"abc",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cache_json_find(bad[i], strlen(bad[i]), "s", out, sizeof(out)) != -1)
            TEST_FAIL("accepted %s", bad[i]);
}

TEST(json_find_nested_arrays_and_skipping)
{
    char out[64];
    const char *doc = "[1]";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "a", out, sizeof(out)), -1);
    /* keys of the path inside arrays do not count; later keys still do */
    doc = "{\"a\": [{\"b\": \"no\"}, [[{\"b\": 1}]], {}], \"x\": {\"b\": \"no\"}, "
          "\"a2\": {}, \"a\": {\"q\": [], \"b\": \"yes\"}}";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "a.b", out, sizeof(out)), 3);
    ASSERT_STR_EQ(out, "yes");
    /* duplicate keys: the last wins */
    doc = "{\"s\": \"first\", \"s\": \"last\"}";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "s", out, sizeof(out)), 4);
    ASSERT_STR_EQ(out, "last");
    doc = "{\"s\": \"first\", \"s\": {\"x\": 1}}";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "s", out, sizeof(out)), -1);
    /* whitespace everywhere */
    doc = " \r\n\t{ \"a\" : { \"b\" : false } } \n";
    ASSERT_EQ(cache_json_find(doc, strlen(doc), "a.b", out, sizeof(out)), 5);
}

TEST(json_find_invalid_and_truncated)
{
    char out[64];
    const char *doc = "{\"data\": {\"status\": \"completed\"}, \"more\": [1, 2, {\"x\": \"y\"}]}";
    size_t n = strlen(doc);
    ASSERT_EQ(cache_json_find(doc, n, "data.status", out, sizeof(out)), 9);
    /* every truncation is rejected, even after the value was seen */
    for (size_t l = 0; l < n; l++) {
        char *copy = malloc(l ? l : 1);
        memcpy(copy, doc, l);
        if (cache_json_find(copy, l, "data.status", out, sizeof(out)) != -1)
            TEST_FAIL("accepted a truncation at %zu", l);
        free(copy);
    }
    static const char *const bad[] = {
        "",
        "{",
        "{\"a\":}",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "[1,]",
        "{a:1}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":1e}",
        "{\"a\":-}",
        "{\"a\":tru}",
        "{\"a\":1}x",
        "{\"a\":1}}",
        "[}",
        "{]",
        "{\"a\":1 2}",
        "{\"a\":[1 2]}",
        "nul",
        "{\"a\":\"x\"]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cache_json_find(bad[i], strlen(bad[i]), "a", out, sizeof(out)) != -1)
            TEST_FAIL("accepted %s", bad[i]);
    static const char *const good[] = {"{\"a\":-0.5E+10}", "{\"a\":0}", "{\"a\":-12e-3}", "{\"a\":[]}"};
    ASSERT_EQ(cache_json_find(good[0], strlen(good[0]), "a", out, sizeof(out)), 8);
    ASSERT_STR_EQ(out, "-0.5E+10");
    ASSERT_EQ(cache_json_find(good[1], strlen(good[1]), "a", out, sizeof(out)), 1);
    ASSERT_EQ(cache_json_find(good[2], strlen(good[2]), "a", out, sizeof(out)), 6);
    ASSERT_EQ(cache_json_find(good[3], strlen(good[3]), "a", out, sizeof(out)), -1);
    /* a NUL inside the document is not JSON whitespace */
    ASSERT_EQ(cache_json_find("{\"a\":1}\0", 8, "a", out, sizeof(out)), -1);
}

TEST(json_find_deep_nesting_and_huge_values)
{
    char out[64];
    size_t n = 100000;
    char *doc = malloc(2 * n + 16);
    /* far too deep: rejected, not followed */
    memset(doc, '[', n);
    memset(doc + n, ']', n);
    ASSERT_EQ(cache_json_find(doc, 2 * n, "a", out, sizeof(out)), -1);
    /* deep but within the limit */
    size_t d = CACHE_JSON_MAX_DEPTH - 2, k = 0;
    k += (size_t)sprintf(doc + k, "{\"a\":");
    for (size_t i = 0; i < d; i++)
        doc[k++] = '[';
    for (size_t i = 0; i < d; i++)
        doc[k++] = ']';
    k += (size_t)sprintf(doc + k, ",\"b\":7}");
    ASSERT_EQ(cache_json_find(doc, k, "b", out, sizeof(out)), 1);
    /* a huge number: literal text does not fit, so it matches nothing */
    k = (size_t)sprintf(doc, "{\"a\":");
    memset(doc + k, '9', 5000);
    k += 5000;
    doc[k++] = '}';
    ASSERT_EQ(cache_json_find(doc, k, "a", out, sizeof(out)), -1);
    char big[6000];
    ASSERT_EQ(cache_json_find(doc, k, "a", big, sizeof(big)), 5000);
    free(doc);
}

TEST(json_find_noise_never_crashes)
{
    /* random bytes and random mutations of a valid document */
    const char *seed =
        "{\"data\":{\"status\":\"done\",\"l\":[1,{\"x\":\"\\u00e9\"},[true,null]],\"n\":-1.5e3}}";
    size_t sl = strlen(seed);
    char buf[256], out[32];
    uint64_t r = 0x12345678;
    for (int iter = 0; iter < 200000; iter++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t len = iter & 1 ? r % sizeof(buf) : sl;
        if (iter & 1) {
            for (size_t i = 0; i < len; i++) {
                r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                buf[i] = "{}[]\":,.\\u0123456789abcdeEf-+ tnrl"[r % 35];
            }
        } else {
            memcpy(buf, seed, sl);
            buf[r % sl] = (char)(r >> 16);
            buf[(r >> 24) % sl] = (char)(r >> 32);
        }
        char *copy = malloc(len ? len : 1);
        memcpy(copy, buf, len);
        int n = cache_json_find(copy, len, "data.status", out, sizeof(out));
        ASSERT(n >= -1 && n < (int)sizeof(out));
        free(copy);
    }
}

TEST(decide_json)
{
    struct conf_route_cache p = route();
    struct conf_ttl_value jv[] = {
        {"completed", 3600 * SEC}, {"processing", 10 * SEC}, {"1", 5 * SEC}, {"failed", 0}};
    p.ttl_json_path = "data.status";
    p.ttl_json_values = jv;
    p.nttl_json_values = 4;
#define J(s) cache_decide_json(&p, s, strlen(s))
    ASSERT_EQ(J("{\"data\":{\"status\":\"completed\"}}"), 3600 * SEC);
    ASSERT_EQ(J("{\"data\":{\"status\":\"processing\"}}"), 10 * SEC);
    ASSERT_EQ(J("{\"data\":{\"status\":\"pending\"}}"), -1); /* not listed */
    ASSERT_EQ(J("{\"data\":{\"status\":\"failed\"}}"), -1);  /* 0: never */
    ASSERT_EQ(J("{\"data\":{\"status\":1}}"), 5 * SEC);      /* numbers as their literal text */
    ASSERT_EQ(J("{\"data\":{\"status\":\"Completed\"}}"), -1);
    ASSERT_EQ(J("{\"data\":{\"status\":\"complet\\u0065d\"}}"), 3600 * SEC);
    ASSERT_EQ(J("{\"data\":{}}"), -1);
    ASSERT_EQ(J("not json"), -1);
    ASSERT_EQ(J("{\"data\":{\"status\":\"completed\"}"), -1); /* truncated */
#undef J
    /* too large to inspect */
    size_t big = CACHE_JSON_MAX_SCAN + 1;
    char *doc = malloc(big);
    memset(doc, ' ', big);
    memcpy(doc, "{\"data\":{\"status\":\"completed\"}}", 31);
    ASSERT_EQ(cache_decide_json(&p, doc, big), -1);
    ASSERT_EQ(cache_decide_json(&p, doc, big - 1), 3600 * SEC);
    free(doc);
    p.ttl_json_path = NULL;
    ASSERT_EQ(cache_decide_json(&p, "{}", 2), -1);
    ASSERT_EQ(cache_decide_json(NULL, "{}", 2), -1);
}

/* ==== use decisions ==== */

TEST(use_fresh_then_stale)
{
    struct conf_route_cache p = route();
    struct cache_request_facts rq = req(HTTP_GET, NULL);
    struct cache_entry e = entry_fresh(60);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_FRESH);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 59999), CACHE_USE_FRESH);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 60000), CACHE_USE_REVALIDATE);
    /* initial age counts */
    e.ttl.initial_age_ms = 50 * SEC;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 9 * SEC), CACHE_USE_FRESH);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 10 * SEC), CACHE_USE_REVALIDATE);
    /* a clock going backwards does not make it younger than stored */
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 - 100 * SEC), CACHE_USE_FRESH);
    /* zero lifetime: always revalidated */
    e = entry_fresh(0);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_REVALIDATE);
    ASSERT_EQ(cache_decide_use(NULL, &e, &rq, T0), CACHE_USE_REVALIDATE);
}

TEST(use_no_cache)
{
    struct conf_route_cache p = route();
    struct cache_entry e = entry_fresh(60);
    struct cache_request_facts rq = req(HTTP_GET, F("Cache-Control", "no-cache"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_REVALIDATE);
    rq = req(HTTP_GET, F("Pragma", "no-cache"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_REVALIDATE);
    /* Pragma is ignored when Cache-Control is there (RFC 9111 5.4) */
    rq = req(HTTP_GET, F("Pragma", "no-cache", "Cache-Control", "max-stale=5"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_FRESH);
    /* an entry stored with no-cache: revalidated, never served stale */
    e.ttl.no_cache = true;
    e.ttl.sie_ms = 600 * SEC;
    rq = req(HTTP_GET, NULL);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_REVALIDATE);
    p.stale_if_error_ms = 600 * SEC;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 61 * SEC), CACHE_USE_REVALIDATE);
}

TEST(use_request_max_age_min_fresh)
{
    struct conf_route_cache p = route();
    struct cache_entry e = entry_fresh(3600);
    e.ttl.initial_age_ms = 1800 * SEC;
    struct cache_request_facts rq = req(HTTP_GET, F("Cache-Control", "max-age=600"));
    /* fresh, but older than the client accepts: ask, serve it if the origin fails */
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_STALE_IF_ERROR_ONLY);
    rq = req(HTTP_GET, F("Cache-Control", "max-age=1800"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_FRESH);
    rq = req(HTTP_GET, F("Cache-Control", "max-age=0"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_STALE_IF_ERROR_ONLY);
    rq = req(HTTP_GET, F("Cache-Control", "min-fresh=1800"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_FRESH);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 1), CACHE_USE_STALE_IF_ERROR_ONLY);
    rq = req(HTTP_GET, F("Cache-Control", "min-fresh=2000"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_STALE_IF_ERROR_ONLY);
    /* the client's max-age also stops stale-while-revalidate */
    e = entry_fresh(10);
    e.ttl.swr_ms = 600 * SEC;
    rq = req(HTTP_GET, F("Cache-Control", "max-age=5"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 20 * SEC), CACHE_USE_REVALIDATE);
    rq = req(HTTP_GET, NULL);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 20 * SEC), CACHE_USE_STALE_SWR);
}

TEST(use_request_max_stale)
{
    struct conf_route_cache p = route();
    struct cache_entry e = entry_fresh(1);
    struct cache_request_facts rq = req(HTTP_GET, F("Cache-Control", "max-stale=1000"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 500 * SEC), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 1001 * SEC), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 1002 * SEC), CACHE_USE_REVALIDATE);
    /* without a value: any staleness, up to the route's max_stale */
    rq = req(HTTP_GET, F("Cache-Control", "max-stale"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 80000 * SEC), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 90000 * SEC), CACHE_USE_REVALIDATE);
    /* never past must-revalidate */
    e.ttl.must_revalidate = true;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 5 * SEC), CACHE_USE_REVALIDATE);
    /* combined with a client max-age that the entry exceeds */
    e = entry_fresh(1500);
    e.ttl.initial_age_ms = 2000 * SEC;
    rq = req(HTTP_GET, F("Cache-Control", "max-stale=1000"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_STALE_SWR);
    rq = req(HTTP_GET, F("Cache-Control", "max-stale=1000, max-age=100"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_REVALIDATE);
}

TEST(use_swr_and_sie_windows)
{
    struct conf_route_cache p = route();
    struct cache_request_facts rq = req(HTTP_GET, NULL);
    struct cache_ttl t = {
        .source = CACHE_TTL_ORIGIN, .fresh_ms = 10 * SEC, .swr_ms = 30 * SEC, .sie_ms = 300 * SEC};
    struct cache_entry e = entry(&t);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 9 * SEC), CACHE_USE_FRESH);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 10 * SEC), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 39999), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 40 * SEC), CACHE_USE_STALE_IF_ERROR_ONLY);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 309999), CACHE_USE_STALE_IF_ERROR_ONLY);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 310 * SEC), CACHE_USE_REVALIDATE);
    /* the route's current windows apply to entries stored earlier */
    p.stale_while_revalidate_ms = 100 * SEC;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 100 * SEC), CACHE_USE_STALE_SWR);
    /* ... and its max_stale caps every window, the entry's included */
    p.max_stale_ms = 20 * SEC;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 29 * SEC), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 30 * SEC), CACHE_USE_REVALIDATE);
    p.max_stale_ms = 0;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 10 * SEC), CACHE_USE_REVALIDATE);
    /* a request's own stale-if-error */
    p = route();
    e = entry_fresh(10);
    rq = req(HTTP_GET, F("Cache-Control", "stale-if-error=60"));
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 30 * SEC), CACHE_USE_STALE_IF_ERROR_ONLY);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 70 * SEC), CACHE_USE_REVALIDATE);
    /* route windows alone (origin said nothing) */
    p.stale_if_error_ms = 600 * SEC;
    rq = req(HTTP_GET, NULL);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 300 * SEC), CACHE_USE_STALE_IF_ERROR_ONLY);
    /* must-revalidate forbids both */
    e.ttl.must_revalidate = true;
    e.ttl.swr_ms = 600 * SEC;
    p.stale_while_revalidate_ms = 600 * SEC;
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 11 * SEC), CACHE_USE_REVALIDATE);
}

TEST(use_from_store_decision)
{
    /* end to end: store decision, then use at moving times */
    struct conf_route_cache p = route();
    struct cache_request_facts rq = req(HTTP_GET, NULL);
    struct cache_response_facts rs =
        resp(200, F("Cache-Control", "max-age=2, stale-while-revalidate=5", "Age", "1"));
    struct cache_ttl t;
    ASSERT(cache_decide_store(&p, &rq, &rs, T0 - 100, T0, &t));
    struct cache_entry e = entry(&t);
    ASSERT_EQ(cache_entry_age(&e, T0), 1);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 800), CACHE_USE_FRESH);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 900), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 5899), CACHE_USE_STALE_SWR);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0 + 5900), CACHE_USE_REVALIDATE);
    /* a HEAD request uses the GET entry the same way */
    rq = req(HTTP_HEAD, NULL);
    ASSERT_EQ(cache_decide_use(&p, &e, &rq, T0), CACHE_USE_FRESH);
}

TEST(entry_age)
{
    struct cache_entry e = entry_fresh(60);
    ASSERT_EQ(cache_entry_age(&e, T0), 0);
    ASSERT_EQ(cache_entry_age(&e, T0 + 999), 0);
    ASSERT_EQ(cache_entry_age(&e, T0 + 1000), 1);
    ASSERT_EQ(cache_entry_age(&e, T0 + 61500), 61);
    e.ttl.initial_age_ms = 1500;
    ASSERT_EQ(cache_entry_age(&e, T0 + 600), 2);
    ASSERT_EQ(cache_entry_age(&e, T0 - 5000), 1);
    e.ttl.initial_age_ms = CACHE_DELTA_MAX * 2000;
    ASSERT_EQ(cache_entry_age(&e, T0), CACHE_DELTA_MAX);
}

/* ==== conditional requests ==== */

TEST(not_modified_etag)
{
    struct cache_entry e = entry_fresh(60);
    e.etag = "\"abc\"";
    static const struct {
        const char *inm;
        bool want;
    } cases[] = {
        {"\"abc\"", true},
        {"W/\"abc\"", true},
        {"\"x\", \"abc\"", true},
        {"  \"x\" ,W/\"abc\" ", true},
        {"*", true},
        {"\"abcd\"", false},
        {" * ", true},
        {"*x", false},
        {"abc", false},
        {"\"ab\"c\"", false},
        {"W/\"x\", junk, \"abc\"", true},
        {"\"ABC\"", false},
        {"\"abc", false},
        {",,,", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cache_request_facts rq = req(HTTP_GET, F("If-None-Match", cases[i].inm));
        if (cache_not_modified(&e, &rq) != cases[i].want)
            TEST_FAIL("If-None-Match %s vs %s", cases[i].inm, e.etag);
    }
    /* a weak stored tag compares weakly too */
    e.etag = "W/\"abc\"";
    struct cache_request_facts rq = req(HTTP_GET, F("If-None-Match", "\"abc\""));
    ASSERT(cache_not_modified(&e, &rq));
    /* no stored tag: only "*" */
    e.etag = NULL;
    ASSERT(!cache_not_modified(&e, &rq));
    rq = req(HTTP_GET, F("If-None-Match", "*"));
    ASSERT(cache_not_modified(&e, &rq));
    /* GET and HEAD only; 2xx entries only */
    e.etag = "\"abc\"";
    rq = req(HTTP_HEAD, F("If-None-Match", "\"abc\""));
    ASSERT(cache_not_modified(&e, &rq));
    rq = req(HTTP_POST, F("If-None-Match", "\"abc\""));
    ASSERT(!cache_not_modified(&e, &rq));
    rq = req(HTTP_GET, F("If-None-Match", "\"abc\""));
    e.status = 404;
    ASSERT(!cache_not_modified(&e, &rq));
}

TEST(not_modified_date)
{
    struct cache_entry e = entry_fresh(60);
    int64_t now = T0 / SEC;
    e.last_modified = now - 100;
    struct cache_request_facts rq = req(HTTP_GET, F("If-Modified-Since", mk_date(now - 100)));
    ASSERT(cache_not_modified(&e, &rq));
    rq = req(HTTP_GET, F("If-Modified-Since", mk_date(now - 101)));
    ASSERT(!cache_not_modified(&e, &rq));
    rq = req(HTTP_GET, F("If-Modified-Since", mk_date(now)));
    ASSERT(cache_not_modified(&e, &rq));
    /* no Last-Modified: the entry's Date */
    e.last_modified = -1;
    ASSERT(cache_not_modified(&e, &rq));
    rq = req(HTTP_GET, F("If-Modified-Since", mk_date(now - 1)));
    ASSERT(!cache_not_modified(&e, &rq));
    /* If-None-Match wins over If-Modified-Since */
    e.etag = "\"a\"";
    rq = req(HTTP_GET, F("If-Modified-Since", mk_date(now), "If-None-Match", "\"b\""));
    ASSERT(!cache_not_modified(&e, &rq));
    /* an invalid date is no condition */
    rq = req(HTTP_GET, F("If-Modified-Since", "yesterday"));
    ASSERT(!cache_not_modified(&e, &rq));
    rq = req(HTTP_GET, NULL);
    ASSERT(!cache_not_modified(&e, &rq));
}

TEST_MAIN()
