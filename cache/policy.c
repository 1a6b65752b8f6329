/* SPDX-License-Identifier: MIT */
/*
 * cache/policy.c: the pure half of the cache — HTTP dates, Cache-Control,
 * the facts gathered from request and response fields, and the decisions
 * taken on them: whether and how long to store (RFC 9111 3 and 4.2 for a
 * shared cache, then the route's dynamic TTLs), and how a stored entry may
 * answer a request now (RFC 9111 4.2.4, 5.2, RFC 5861).
 *
 * Nothing here allocates, locks or reads the clock (except the century of
 * RFC 850 two-digit years): time comes in as an argument, so tests move it by
 * hand.  Every function may be called from any thread.
 */
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cache/cache.h"
#include "cache/cache_int.h"

#define MS_PER_DAY (INT64_C(86400) * 1000)

static bool name_is(const char *name, size_t nlen, const char *lit)
{
    size_t l = strlen(lit);
    return nlen == l && strncasecmp(name, lit, l) == 0;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* A conf duration as a signed lifetime, clamped like delta-seconds. */
static int64_t conf_ms(uint64_t ms)
{
    return ms > (uint64_t)CACHE_DELTA_MAX * 1000 ? CACHE_DELTA_MAX * 1000 : (int64_t)ms;
}

static void trim(const char **s, size_t *len)
{
    while (*len && cache_is_ows(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && cache_is_ows((*s)[*len - 1]))
        (*len)--;
}

/* delta-seconds (RFC 9111 1.2.2): digits only, clamped to 2^31. */
static bool parse_delta(const char *s, size_t len, int64_t *out)
{
    if (len == 0)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = min64(v * 10 + (s[i] - '0'), CACHE_DELTA_MAX);
    }
    *out = v;
    return true;
}

/* ==== HTTP dates (RFC 9110 5.6.7) ==== */

static const char day_names[7][10] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                      "Thursday", "Friday", "Saturday"};
static const char month_names[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Names are matched case-insensitively although the grammar is
 * case-sensitive: a date in the wrong case still means that date, and
 * reading it is safer than treating an Expires as already past. */
static bool is_short_day(const char *s)
{
    for (int i = 0; i < 7; i++)
        if (strncasecmp(s, day_names[i], 3) == 0)
            return true;
    return false;
}

static bool is_long_day(const char *s, size_t len)
{
    for (int i = 0; i < 7; i++)
        if (name_is(s, len, day_names[i]))
            return true;
    return false;
}

static int month_of(const char *s)
{
    for (int i = 0; i < 12; i++)
        if (strncasecmp(s, month_names[i], 3) == 0)
            return i + 1;
    return 0;
}

static bool digits(const char *s, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* "HH:MM:SS" */
static bool parse_time(const char *s, int *hh, int *mm, int *ss)
{
    return s[2] == ':' && s[5] == ':' && digits(s, 2, hh) && digits(s + 3, 2, mm) && digits(s + 6, 2, ss);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date: shift the year to
 * start in March so the leap day is last, then count whole 400-year eras. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int64_t make_time(int64_t y, int mon, int d, int hh, int mm, int ss)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mon < 1 || mon > 12 || d < 1 || d > mdays[mon - 1] + (mon == 2 && is_leap(y)))
        return -1;
    if (hh > 23 || mm > 59 || ss > 60) /* 60: a leap second */
        return -1;
    int64_t t = days_from_civil(y, mon, d) * 86400 + hh * 3600 + mm * 60 + ss;
    /* Before the epoch is still a time in the past; 0 keeps -1 for "invalid". */
    return t < 0 ? 0 : t;
}

/* RFC 9110 5.6.7: a two-digit year more than 50 years ahead is the most
 * recent past year with those digits. */
static int64_t rfc850_year(int yy)
{
    time_t now = time(NULL);
    struct tm tm;
    int64_t cur = gmtime_r(&now, &tm) ? tm.tm_year + 1900 : 2000;
    int64_t y = cur - cur % 100 + yy;
    if (y > cur + 50)
        y -= 100;
    return y;
}

int64_t cache_date_parse(const char *s, size_t len)
{
    int d, y, hh, mm, ss, mon;
    if (!s)
        return -1;
    trim(&s, &len);
    /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
    if (len == 29 && s[3] == ',' && s[4] == ' ' && s[7] == ' ' && s[11] == ' ' && s[16] == ' ' &&
        s[25] == ' ') {
        if (!is_short_day(s) || !digits(s + 5, 2, &d) || !(mon = month_of(s + 8)) || !digits(s + 12, 4, &y) ||
            !parse_time(s + 17, &hh, &mm, &ss) || strncasecmp(s + 26, "GMT", 3) != 0)
            return -1;
        return make_time(y, mon, d, hh, mm, ss);
    }
    /* asctime: "Sun Nov  6 08:49:37 1994" (day is two digits or SP digit) */
    if (len == 24 && s[3] == ' ' && s[7] == ' ' && s[10] == ' ' && s[19] == ' ') {
        if (!is_short_day(s) || !(mon = month_of(s + 4)) || !digits(s + 20, 4, &y) ||
            !parse_time(s + 11, &hh, &mm, &ss))
            return -1;
        if (s[8] == ' ' ? !digits(s + 9, 1, &d) : !digits(s + 8, 2, &d))
            return -1;
        return make_time(y, mon, d, hh, mm, ss);
    }
    /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" */
    const char *comma = memchr(s, ',', len);
    if (comma && (size_t)(s + len - comma) == 24) {
        const char *p = comma + 1;
        if (!is_long_day(s, (size_t)(comma - s)) || p[0] != ' ' || p[3] != '-' || p[7] != '-' ||
            p[10] != ' ' || p[19] != ' ' || !digits(p + 1, 2, &d) || !(mon = month_of(p + 4)) ||
            !digits(p + 8, 2, &y) || !parse_time(p + 11, &hh, &mm, &ss) || strncasecmp(p + 20, "GMT", 3) != 0)
            return -1;
        return make_time(rfc850_year(y), mon, d, hh, mm, ss);
    }
    return -1;
}

size_t cache_date_format(int64_t secs, char *out)
{
    /* 9999-12-31T23:59:59Z: the last time with a four-digit year */
    secs = min64(max64(secs, 0), INT64_C(253402300799));
    int64_t days = secs / 86400, rem = secs % 86400, y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    /* 1970-01-01 was a Thursday */
    const char *wd = day_names[(days + 4) % 7];
    out[0] = wd[0], out[1] = wd[1], out[2] = wd[2];
    out[3] = ',', out[4] = ' ';
    out[5] = (char)('0' + d / 10), out[6] = (char)('0' + d % 10), out[7] = ' ';
    memcpy(out + 8, month_names[m - 1], 3);
    out[11] = ' ';
    for (int i = 3; i >= 0; i--, y /= 10)
        out[12 + i] = (char)('0' + y % 10);
    int hms[3] = {(int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60)};
    for (int i = 0; i < 3; i++) {
        out[16 + 3 * i] = i ? ':' : ' ';
        out[17 + 3 * i] = (char)('0' + hms[i] / 10);
        out[18 + 3 * i] = (char)('0' + hms[i] % 10);
    }
    memcpy(out + 25, " GMT", 5);
    return 29;
}

/* ==== Cache-Control (RFC 9111 5.2) ==== */

void cache_cc_init(struct cache_cc *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->stale_while_revalidate = cc->stale_if_error = CACHE_CC_ABSENT;
    cc->max_stale = cc->min_fresh = CACHE_CC_ABSENT;
}

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A directive of one Cache-Control element.  is_ok is false when the element
 * was malformed (a space before "=", an unterminated quote, junk after the
 * value): its argument is then unusable. */
struct cc_directive {
    const char *name, *val;
    size_t nlen, vlen;
    bool has_val, is_ok;
};

/* A freshness directive (RFC 9111 4.2.1): a duplicate with another value,
 * or one we cannot read, makes the response stale rather than guessed at. */
static void set_freshness(struct cache_cc *cc, int64_t *field, const struct cc_directive *d)
{
    int64_t v;
    if (!d->is_ok || !d->has_val || !parse_delta(d->val, d->vlen, &v))
        cc->is_invalid = true;
    else if (*field != CACHE_CC_ABSENT && *field != v)
        cc->is_invalid = true;
    else
        *field = v;
}

/* Any other delta-seconds argument: the first readable one counts, a bad one
 * is ignored (it only ever widens what may be served). */
static void set_delta(int64_t *field, const struct cc_directive *d)
{
    int64_t v;
    if (d->is_ok && d->has_val && *field == CACHE_CC_ABSENT && parse_delta(d->val, d->vlen, &v))
        *field = v;
}

static void cc_apply(struct cache_cc *cc, const struct cc_directive *d)
{
    const char *n = d->name;
    size_t l = d->nlen;
    if (name_is(n, l, "max-age"))
        set_freshness(cc, &cc->max_age, d);
    else if (name_is(n, l, "s-maxage"))
        set_freshness(cc, &cc->s_maxage, d);
    else if (name_is(n, l, "stale-while-revalidate"))
        set_delta(&cc->stale_while_revalidate, d);
    else if (name_is(n, l, "stale-if-error"))
        set_delta(&cc->stale_if_error, d);
    else if (name_is(n, l, "min-fresh"))
        set_delta(&cc->min_fresh, d);
    else if (name_is(n, l, "max-stale")) {
        /* No argument: any staleness is acceptable (RFC 9111 5.2.1.2). */
        if (!d->has_val && d->is_ok && cc->max_stale == CACHE_CC_ABSENT)
            cc->max_stale = CACHE_DELTA_MAX;
        else
            set_delta(&cc->max_stale, d);
    }
    /* Restrictive directives count even when malformed: erring towards not
     * reusing is safe, the other way round is not. */
    else if (name_is(n, l, "no-cache")) {
        if (d->has_val && d->is_ok)
            cc->no_cache_fields = true;
        else
            cc->no_cache = true;
    } else if (name_is(n, l, "private")) {
        if (d->has_val && d->is_ok)
            cc->private_fields = true;
        else
            cc->is_private = true;
    } else if (name_is(n, l, "no-store"))
        cc->no_store = true;
    else if (name_is(n, l, "must-revalidate"))
        cc->must_revalidate = true;
    else if (name_is(n, l, "proxy-revalidate"))
        cc->proxy_revalidate = true;
    else if (name_is(n, l, "only-if-cached"))
        cc->only_if_cached = true;
    else if (name_is(n, l, "must-understand"))
        cc->must_understand = true;
    else if (name_is(n, l, "public"))
        cc->is_public |= d->is_ok;
    else if (name_is(n, l, "immutable"))
        cc->immutable |= d->is_ok;
    /* anything else is an extension we do not know: ignored (RFC 9111 5.2.3) */
}

/* The closing quote of a quoted-string whose opening quote is at s[i-1], or
 * len when it is unterminated. */
static size_t skip_quoted(const char *s, size_t len, size_t i)
{
    for (; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i;
    }
    return len;
}

void cache_cc_parse(struct cache_cc *cc, const char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (v[i] == ',' || cache_is_ows(v[i])) {
            i++;
            continue;
        }
        struct cc_directive d = {.name = v + i, .is_ok = true};
        while (i < len && is_tchar((unsigned char)v[i]))
            i++;
        d.nlen = (size_t)(v + i - d.name);
        d.is_ok = d.nlen > 0;
        if (d.is_ok && i < len && v[i] == '=') {
            d.has_val = true;
            i++;
            if (i < len && v[i] == '"') {
                /* quoted-string: RFC 9111 5.2 asks recipients to accept it
                 * even where the token form is expected */
                d.val = v + i + 1;
                i = skip_quoted(v, len, i + 1);
                d.vlen = (size_t)(v + i - d.val);
                if (i == len)
                    d.is_ok = false;
                else
                    i++;
            } else {
                d.val = v + i;
                while (i < len && is_tchar((unsigned char)v[i]))
                    i++;
                d.vlen = (size_t)(v + i - d.val);
            }
        }
        while (i < len && cache_is_ows(v[i]))
            i++;
        if (i < len && v[i] != ',') {
            /* junk: skip to the next comma outside a quoted-string */
            d.is_ok = false;
            while (i < len && v[i] != ',') {
                if (v[i] == '"')
                    i = skip_quoted(v, len, i + 1);
                i++;
            }
        }
        if (d.nlen)
            cc_apply(cc, &d);
    }
}

/* ==== facts ==== */

/* The next element of a comma-separated list from *i, trimmed (possibly
 * empty); false at the end. */
static bool next_element(const char *v, size_t len, size_t *i, const char **e, size_t *el)
{
    if (*i >= len)
        return false;
    const char *comma = memchr(v + *i, ',', len - *i);
    size_t end = comma ? (size_t)(comma - v) : len;
    *e = v + *i;
    *el = end - *i;
    trim(e, el);
    *i = end + 1;
    return true;
}

/* Whether a comma-separated list holds the token tok (case-insensitive). */
static bool list_has(const char *v, size_t len, const char *tok)
{
    size_t i = 0, el;
    const char *e;
    while (next_element(v, len, &i, &e, &el))
        if (name_is(e, el, tok))
            return true;
    return false;
}

void cache_request_facts_init(struct cache_request_facts *f, unsigned method)
{
    memset(f, 0, sizeof(*f));
    f->method = method;
    cache_cc_init(&f->cc);
    f->if_modified_since = -1;
}

void cache_request_facts_add(struct cache_request_facts *f, const char *name, size_t nlen, const char *value,
                             size_t vlen)
{
    if (!value)
        value = "", vlen = 0;
    if (name_is(name, nlen, "cache-control")) {
        f->has_cc = true;
        cache_cc_parse(&f->cc, value, vlen);
    } else if (name_is(name, nlen, "pragma")) {
        f->pragma_no_cache |= list_has(value, vlen, "no-cache");
    } else if (name_is(name, nlen, "authorization")) {
        f->has_authorization = true;
    } else if (name_is(name, nlen, "if-none-match")) {
        f->has_conditional = true;
        /* Several lines join as one list.  A value cut short ends inside an
         * entity-tag without its closing quote, which never matches. */
        size_t used = strlen(f->if_none_match), room = sizeof(f->if_none_match) - 1 - used;
        if (used && room >= 2) {
            memcpy(f->if_none_match + used, ", ", 2);
            used += 2, room -= 2;
        }
        size_t n = min64((int64_t)vlen, (int64_t)room);
        memcpy(f->if_none_match + used, value, n);
        f->if_none_match[used + n] = '\0';
    } else if (name_is(name, nlen, "if-modified-since")) {
        f->has_conditional = true;
        if (f->if_modified_since < 0)
            f->if_modified_since = cache_date_parse(value, vlen);
    } else if (name_is(name, nlen, "if-match") || name_is(name, nlen, "if-unmodified-since") ||
               name_is(name, nlen, "if-range")) {
        f->has_conditional = true;
    }
}

void cache_response_facts_init(struct cache_response_facts *f, unsigned status, const char *ttl_header)
{
    memset(f, 0, sizeof(*f));
    f->status = status;
    cache_cc_init(&f->cc);
    cache_cc_init(&f->sc);
    f->date = f->expires = f->last_modified = f->age = -1;
    f->ttl_header_name = ttl_header;
}

#define VARY_NAMES_MAX 32

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Merges a Vary field line into f->vary: lowercase names, sorted, no
 * duplicates, so equal lists compare equal whatever their order or case.
 * A list we cannot hold is treated as Vary: * (never stored), the one safe
 * way to fail. */
static void add_vary(struct cache_response_facts *f, const char *v, size_t len)
{
    char names[VARY_NAMES_MAX][sizeof(f->vary)];
    const char *sorted[VARY_NAMES_MAX];
    size_t n = 0, i = 0, el;
    const char *all = f->vary, *e;
    size_t alen = strlen(f->vary);
    /* first the names already there, then the new line */
    for (int pass = 0; pass < 2; pass++, all = v, alen = len, i = 0) {
        while (next_element(all, alen, &i, &e, &el)) {
            if (el == 0)
                continue;
            if (el == 1 && e[0] == '*') {
                f->vary_star = true;
                continue;
            }
            if (n == VARY_NAMES_MAX || el >= sizeof(names[0])) {
                f->vary_star = true;
                return;
            }
            for (size_t k = 0; k < el; k++)
                names[n][k] = (char)((e[k] >= 'A' && e[k] <= 'Z') ? e[k] + 32 : e[k]);
            names[n][el] = '\0';
            sorted[n] = names[n];
            n++;
        }
    }
    qsort(sorted, n, sizeof(sorted[0]), cmp_name);
    char out[sizeof(f->vary)];
    size_t used = 0;
    for (size_t k = 0; k < n; k++) {
        if (k && strcmp(sorted[k], sorted[k - 1]) == 0)
            continue;
        size_t l = strlen(sorted[k]);
        if (used + (used > 0) + l >= sizeof(out)) {
            f->vary_star = true;
            return;
        }
        if (used)
            out[used++] = ',';
        memcpy(out + used, sorted[k], l);
        used += l;
    }
    out[used] = '\0';
    memcpy(f->vary, out, used + 1);
}

/* Surrogate-Key is space separated, Cache-Tag comma separated: both land in
 * f->tags space separated, without duplicates.  A tag that does not fit is
 * dropped whole rather than cut into a different tag. */
static void add_tags(struct cache_response_facts *f, const char *v, size_t len)
{
    size_t used = strlen(f->tags), i = 0;
    while (i < len) {
        while (i < len && (v[i] == ',' || cache_is_ows(v[i])))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',' && !cache_is_ows(v[i]))
            i++;
        size_t l = i - s;
        if (l == 0)
            continue;
        bool dup = false;
        for (const char *t = f->tags; *t && !dup;) {
            size_t tl = strcspn(t, " ");
            dup = tl == l && memcmp(t, v + s, l) == 0;
            t += tl + (t[tl] == ' ');
        }
        if (dup || used + (used > 0) + l >= sizeof(f->tags))
            continue;
        if (used)
            f->tags[used++] = ' ';
        memcpy(f->tags + used, v + s, l);
        used += l;
        f->tags[used] = '\0';
    }
}

/* Surrogate-Control (W3C Edge Architecture 1.0): Cache-Control syntax, but
 * each directive may end in ";device-token" to target one surrogate.  Ours
 * (untargeted, or ";sluice") go to f->sc; "max-age=N+M" is a lifetime of N
 * that may be served stale M more seconds when the origin fails. */
static void add_surrogate_control(struct cache_response_facts *f, const char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* one element: up to the next comma outside a quoted-string */
        size_t s = i, semi = len;
        while (i < len && v[i] != ',') {
            if (v[i] == '"')
                i = skip_quoted(v, len, i + 1);
            else if (v[i] == ';' && semi == len)
                semi = i;
            if (i < len)
                i++;
        }
        size_t end = i++;
        const char *e = v + s;
        size_t el = (semi < end ? semi : end) - s;
        if (semi < end) {
            const char *t = v + semi + 1;
            size_t tl = end - semi - 1;
            trim(&t, &tl);
            if (!name_is(t, tl, CACHE_SURROGATE_TOKEN))
                continue;
        }
        trim(&e, &el);
        if (el == 0)
            continue;
        f->has_sc = true;
        const char *plus = memchr(e, '+', el);
        int64_t m;
        if (plus && el > 8 && strncasecmp(e, "max-age=", 8) == 0) {
            if (parse_delta(plus + 1, (size_t)(e + el - plus - 1), &m) &&
                f->sc.stale_if_error == CACHE_CC_ABSENT)
                f->sc.stale_if_error = m;
            el = (size_t)(plus - e);
        }
        cache_cc_parse(&f->sc, e, el);
    }
}

void cache_response_facts_add(struct cache_response_facts *f, const char *name, size_t nlen,
                              const char *value, size_t vlen)
{
    if (!value)
        value = "", vlen = 0;
    if (f->ttl_header_name && name_is(name, nlen, f->ttl_header_name) && !f->ttl_header[0]) {
        const char *t = value;
        size_t tl = vlen;
        trim(&t, &tl);
        /* too long to be a TTL: left absent, so the next rule decides */
        if (tl < sizeof(f->ttl_header)) {
            memcpy(f->ttl_header, t, tl);
            f->ttl_header[tl] = '\0';
        }
    }
    if (name_is(name, nlen, "cache-control")) {
        f->has_cc = true;
        cache_cc_parse(&f->cc, value, vlen);
    } else if (name_is(name, nlen, "pragma")) {
        f->pragma_no_cache |= list_has(value, vlen, "no-cache");
    } else if (name_is(name, nlen, "date")) {
        if (f->date < 0)
            f->date = cache_date_parse(value, vlen);
    } else if (name_is(name, nlen, "expires")) {
        /* RFC 9111 4.2.1: the first of several is used; RFC 9111 5.3: an
         * invalid date (e.g. "0") is a time in the past. */
        if (!f->has_expires) {
            f->has_expires = true;
            f->expires = max64(cache_date_parse(value, vlen), 0);
        }
    } else if (name_is(name, nlen, "last-modified")) {
        if (f->last_modified < 0)
            f->last_modified = cache_date_parse(value, vlen);
    } else if (name_is(name, nlen, "age")) {
        /* RFC 9111 5.1 lets a cache ignore an Age it cannot read; we count it
         * as 2^31 s instead, so the response is stale and gets revalidated:
         * an Age that is not one plain delta-seconds (negative, fractional,
         * with parameters, a list, several lines) says someone upstream
         * cached it, and guessing it young could serve it too old. */
        const char *e = value;
        size_t el = vlen;
        trim(&e, &el);
        int64_t a;
        f->age = f->age < 0 && parse_delta(e, el, &a) ? a : CACHE_DELTA_MAX;
    } else if (name_is(name, nlen, "etag")) {
        f->has_etag = true;
    } else if (name_is(name, nlen, "set-cookie")) {
        f->has_set_cookie = true;
    } else if (name_is(name, nlen, "vary")) {
        add_vary(f, value, vlen);
    } else if (name_is(name, nlen, "surrogate-key") || name_is(name, nlen, "cache-tag")) {
        add_tags(f, value, vlen);
    } else if (name_is(name, nlen, "content-range")) {
        f->has_content_range = true;
    } else if (name_is(name, nlen, "surrogate-control")) {
        add_surrogate_control(f, value, vlen);
    }
}

/* ==== TTL and use decisions ==== */

/* RFC 9110 15.1: statuses heuristically cacheable — storable without
 * explicit freshness — plus 451 (RFC 7725 3).  206 is left out on purpose:
 * we never store partial content.  Route TTLs (`ttl`, `ttl ... override`,
 * `ttl_from json`) apply to these only, so a route default never makes a
 * 500 or a 302 stick; an operator who wants those cached says so with
 * ttl_status. */
static bool status_is_default_cacheable(unsigned s)
{
    static const unsigned codes[] = {200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 451, 501};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (codes[i] == s)
            return true;
    return false;
}

/* RFC 9111 5.2.2.3 must-understand: the final statuses whose caching rules
 * we know (RFC 9110 15, RFC 6585, RFC 7725). */
static bool status_is_understood(unsigned s)
{
    return (s >= 200 && s <= 206) || (s >= 300 && s <= 308 && s != 306) || (s >= 400 && s <= 417) ||
           s == 421 || s == 422 || s == 426 || s == 428 || s == 429 || s == 431 || s == 451 ||
           (s >= 500 && s <= 505) || s == 511;
}

static bool route_has_header(const struct conf_route_cache *p, const char *lname)
{
    for (size_t i = 0; i < p->nkey_headers; i++)
        if (strcasecmp(p->key_headers[i], lname) == 0)
            return true;
    return false;
}

/* A `ttl_from header:` value: delta-seconds, or a number with a unit (ms,
 * s, m, h, d).  -1 when it is neither. */
static int64_t parse_ttl_value(const char *s)
{
    size_t n = strspn(s, "0123456789");
    int64_t v;
    if (!parse_delta(s, n, &v))
        return -1;
    const char *u = s + n;
    int64_t mult = strcmp(u, "ms") == 0         ? 1
                   : strcmp(u, "s") == 0 || !*u ? 1000
                   : strcmp(u, "m") == 0        ? 60 * 1000
                   : strcmp(u, "h") == 0        ? 3600 * 1000
                   : strcmp(u, "d") == 0        ? MS_PER_DAY
                                                : 0;
    if (!mult)
        return -1;
    /* clamp like delta-seconds: 2^31 s (v <= 2^31 and mult <= 86400000 cannot overflow) */
    return min64(v * mult, CACHE_DELTA_MAX * 1000);
}

/* A stale window: the larger of the origin's (or the entry's) and the
 * route's, never past the route's max_stale. */
static int64_t stale_window(const struct conf_route_cache *p, int64_t origin_ms, uint64_t route_ms)
{
    if (!p)
        return origin_ms;
    return min64(max64(origin_ms, conf_ms(route_ms)), conf_ms(p->max_stale_ms));
}

/* The origin's explicit freshness lifetime (Surrogate-Control max-age, then
 * RFC 9111 4.2.1 for a shared cache: s-maxage, max-age, Expires - Date), or
 * -1 when it gives none.  An invalid directive is explicit: stale. */
static int64_t origin_lifetime(const struct cache_response_facts *rs, bool sc_fresh, int64_t date_ms)
{
    /* a surrogate follows Surrogate-Control first (Edge Architecture 1.0) */
    if (sc_fresh)
        return rs->sc.is_invalid ? 0 : rs->sc.max_age * 1000;
    if (rs->cc.is_invalid)
        return 0;
    if (rs->cc.s_maxage != CACHE_CC_ABSENT)
        return rs->cc.s_maxage * 1000;
    if (rs->cc.max_age != CACHE_CC_ABSENT)
        return rs->cc.max_age * 1000;
    if (rs->has_expires)
        return rs->expires ? max64(rs->expires * 1000 - date_ms, 0) : 0;
    return -1;
}

bool cache_decide_store(const struct conf_route_cache *p, const struct cache_request_facts *rq,
                        const struct cache_response_facts *rs, int64_t request_time_ms,
                        int64_t response_time_ms, struct cache_ttl *out)
{
    memset(out, 0, sizeof(*out));
    if (!p)
        return false;

    /* ---- vetoes, whatever the TTL rule ---- */
    /* A HEAD response has no body to store; HEAD is served from GET's entry. */
    if (rq->method == HTTP_HEAD || rq->method >= 32 || !(p->methods & CONF_CACHE_METHOD_BIT(rq->method)))
        return false;
    /* Another method (POST) is cacheable only keyed on its body: otherwise
     * two different requests would share one answer. */
    if (rq->method != HTTP_GET && !p->key_body)
        return false;
    /* RFC 9111 3: a final status; never 206 (we do not combine ranges) nor
     * 304 (it updates an entry, it is not one).  Content-Range on any other
     * status has no meaning (RFC 9110 14.4): the response is whole. */
    if (rs->status < 200 || rs->status > 999 || rs->status == 206 || rs->status == 304)
        return false;
    /* Surrogate-Control's own lifetime overrides Cache-Control's no-store, as
     * must-understand does for a status we know (RFC 9111 5.2.2.3); a status
     * we do not know with must-understand is never stored. */
    bool sc_fresh = rs->has_sc && (rs->sc.max_age != CACHE_CC_ABSENT || rs->sc.is_invalid);
    if (rs->cc.must_understand && !status_is_understood(rs->status))
        return false;
    if (rq->cc.no_store || rs->sc.no_store || (rs->cc.no_store && !sc_fresh && !rs->cc.must_understand))
        return false;
    /* private="F" asks us to drop F; we store heads whole, so we drop it all. */
    if (rs->cc.is_private || rs->cc.private_fields || rs->vary_star)
        return false;
    /* RFC 9111 3.5, unless the route keys on Authorization: then every
     * user has entries of their own and nothing is shared. */
    bool origin_shares = rs->cc.is_public || rs->cc.s_maxage != CACHE_CC_ABSENT || rs->cc.must_revalidate;
    if (rq->has_authorization && !origin_shares && !route_has_header(p, "authorization"))
        return false;

    /* ---- age (RFC 9111 4.2.3) ---- */
    int64_t date_ms = rs->date >= 0 ? rs->date * 1000 : response_time_ms;
    int64_t apparent_age = max64(0, response_time_ms - date_ms);
    int64_t response_delay = max64(0, response_time_ms - request_time_ms);
    int64_t corrected_age_value = (rs->age >= 0 ? rs->age * 1000 : 0) + response_delay;
    out->initial_age_ms = max64(apparent_age, corrected_age_value);

    int64_t origin = origin_lifetime(rs, sc_fresh, date_ms);
    /* Set-Cookie does not forbid storing (RFC 9111 7.3), but a cookie is
     * usually one user's session: only the origin's own explicit, positive
     * freshness (or public) may share it, never a TTL the route or a
     * heuristic made up, nor an entry revalidated on every use whose stored
     * cookie would go out with each 304. */
    if (rs->has_set_cookie && origin <= 0 && !rs->cc.is_public)
        return false;
    /* ttl_status N=0 is a veto ("5xx never"), not a lifetime: it holds
     * whatever rule would otherwise give the TTL. */
    const struct conf_ttl_status *st = NULL;
    for (size_t i = 0; i < p->nttl_status && !st; i++)
        if (rs->status >= p->ttl_status[i].lo && rs->status <= p->ttl_status[i].hi)
            st = &p->ttl_status[i];
    if (st && st->ttl_ms == 0)
        return false;
    bool route_default = status_is_default_cacheable(rs->status);
    out->no_cache = rs->cc.no_cache || rs->cc.no_cache_fields || (!rs->has_cc && rs->pragma_no_cache);
    int64_t hdr = p->ttl_header && rs->ttl_header[0] ? parse_ttl_value(rs->ttl_header) : -1;

    /* ---- the lifetime: the first rule that applies wins ---- */
    if (p->has_ttl && p->ttl_override && route_default) {
        out->source = CACHE_TTL_ROUTE_OVERRIDE;
        out->fresh_ms = conf_ms(p->ttl_ms);
    } else if (p->ttl_json_path && route_default) {
        out->source = CACHE_TTL_JSON;
        out->needs_json = true;
    } else if (hdr >= 0) {
        if (hdr == 0) /* like ttl_status 0: "do not store" */
            return false;
        out->source = CACHE_TTL_HEADER;
        out->fresh_ms = hdr;
    } else if (origin >= 0) {
        out->source = CACHE_TTL_ORIGIN;
        out->fresh_ms = origin;
    } else if (st) {
        out->source = CACHE_TTL_STATUS;
        out->fresh_ms = conf_ms(st->ttl_ms);
    } else if (p->has_ttl && route_default) {
        out->source = CACHE_TTL_ROUTE;
        out->fresh_ms = conf_ms(p->ttl_ms);
    } else if (route_default || rs->cc.is_public) {
        /* RFC 9111 4.2.2: 10 % of the time since Last-Modified, at most a
         * day.  Without Last-Modified the response may still be stored (it
         * is heuristically cacheable) but is stale at once. */
        out->source = CACHE_TTL_HEURISTIC;
        if (rs->last_modified >= 0)
            out->fresh_ms = min64(max64(date_ms - rs->last_modified * 1000, 0) / 10, MS_PER_DAY);
    } else {
        /* RFC 9111 3: no explicit freshness and not heuristically cacheable */
        return false;
    }
    /* The route's own rules above the origin's replace its freshness, no-cache
     * included: that is what an operator overrides an origin for. */
    if (out->source == CACHE_TTL_ROUTE_OVERRIDE || out->source == CACHE_TTL_JSON ||
        out->source == CACHE_TTL_HEADER)
        out->no_cache = false;

    /* ---- stale windows (RFC 9111 4.2.4, RFC 5861) ---- */
    out->must_revalidate =
        rs->cc.must_revalidate || rs->cc.proxy_revalidate || rs->cc.s_maxage != CACHE_CC_ABSENT;
    if (!out->must_revalidate && !out->no_cache) {
        int64_t swr =
            rs->cc.stale_while_revalidate != CACHE_CC_ABSENT ? rs->cc.stale_while_revalidate * 1000 : 0;
        int64_t sie = max64(rs->cc.stale_if_error, rs->sc.stale_if_error) * 1000; /* -1 when neither */
        out->swr_ms = stale_window(p, swr, p->stale_while_revalidate_ms);
        out->sie_ms = stale_window(p, max64(sie, 0), p->stale_if_error_ms);
    }

    /* An entry that is stale at once, has no validator and may never be
     * served stale would cost memory and answer nothing. */
    if (!out->needs_json && out->fresh_ms <= out->initial_age_ms && !rs->has_etag && rs->last_modified < 0 &&
        out->swr_ms == 0 && out->sie_ms == 0)
        return false;
    return true;
}

int64_t cache_decide_json(const struct conf_route_cache *p, const char *body, size_t len)
{
    char val[256];
    if (!p || !p->ttl_json_path || len > CACHE_JSON_MAX_SCAN)
        return -1;
    if (cache_json_find(body, len, p->ttl_json_path, val, sizeof(val)) < 0)
        return -1;
    for (size_t i = 0; i < p->nttl_json_values; i++)
        if (strcmp(p->ttl_json_values[i].value, val) == 0)
            /* 0 is "never", as in ttl_status */
            return p->ttl_json_values[i].ttl_ms ? conf_ms(p->ttl_json_values[i].ttl_ms) : -1;
    return -1;
}

static int64_t current_age_ms(const struct cache_entry *e, int64_t now_ms)
{
    return e->ttl.initial_age_ms + max64(0, now_ms - e->response_time_ms);
}

enum cache_use cache_decide_use(const struct conf_route_cache *p, const struct cache_entry *e,
                                const struct cache_request_facts *rq, int64_t now_ms)
{
    /* RFC 9111 5.2.2.4 and 5.2.1.4 (Pragma only without Cache-Control, 5.4):
     * validate first; no-cache also forbids serving it stale. */
    if (e->ttl.no_cache || rq->cc.no_cache || (!rq->has_cc && rq->pragma_no_cache))
        return CACHE_USE_REVALIDATE;
    int64_t age = current_age_ms(e, now_ms), lifetime = e->ttl.fresh_ms;
    int64_t staleness = age - lifetime; /* fresh while < 0 (RFC 9111 4.2) */
    /* RFC 9111 5.2.1.1 and 5.2.1.3: what this client accepts. */
    bool client_ok = (rq->cc.max_age == CACHE_CC_ABSENT || age <= rq->cc.max_age * 1000) &&
                     (rq->cc.min_fresh == CACHE_CC_ABSENT || lifetime - age >= rq->cc.min_fresh * 1000);
    if (staleness < 0)
        /* Fresh but not fresh enough for the client: ask, and if the origin
         * fails this still-fresh response is a fine answer. */
        return client_ok ? CACHE_USE_FRESH : CACHE_USE_STALE_IF_ERROR_ONLY;
    /* RFC 9111 4.2.4: no stale with must-revalidate, proxy-revalidate or
     * s-maxage, whatever the client or the route allow. */
    if (e->ttl.must_revalidate)
        return CACHE_USE_REVALIDATE;
    if (p && staleness > conf_ms(p->max_stale_ms))
        return CACHE_USE_REVALIDATE;
    /* max-stale: the client accepts it stale (RFC 9111 5.2.1.2); we still
     * refresh it behind its back. */
    if (client_ok && rq->cc.max_stale != CACHE_CC_ABSENT && staleness <= rq->cc.max_stale * 1000)
        return CACHE_USE_STALE_SWR;
    if (client_ok && staleness < stale_window(p, e->ttl.swr_ms, p ? p->stale_while_revalidate_ms : 0))
        return CACHE_USE_STALE_SWR;
    /* RFC 5861 4: stale-if-error from the response, the route, or the
     * request itself. */
    int64_t sie = e->ttl.sie_ms;
    if (rq->cc.stale_if_error != CACHE_CC_ABSENT)
        sie = max64(sie, rq->cc.stale_if_error * 1000);
    if (staleness < stale_window(p, sie, p ? p->stale_if_error_ms : 0))
        return CACHE_USE_STALE_IF_ERROR_ONLY;
    return CACHE_USE_REVALIDATE;
}

int64_t cache_entry_age(const struct cache_entry *e, int64_t now_ms)
{
    /* RFC 9111 5.1: an Age past 2^31 is sent as 2^31 */
    return min64(current_age_ms(e, now_ms) / 1000, CACHE_DELTA_MAX);
}

/* An entity-tag's opaque part (quotes included) and whether it was weak;
 * *i moves past it.  false when the element is not an entity-tag. */
static bool next_etag(const char *s, size_t len, size_t *i, const char **tag, size_t *tlen)
{
    size_t k = *i;
    if (k + 1 < len && s[k] == 'W' && s[k + 1] == '/')
        k += 2;
    if (k >= len || s[k] != '"')
        return false;
    const char *end = memchr(s + k + 1, '"', len - k - 1);
    if (!end)
        return false;
    *tag = s + k;
    *tlen = (size_t)(end + 1 - *tag);
    *i = (size_t)(end + 1 - s);
    return true;
}

/* Whether If-None-Match list matches the entry's etag (NULL: none) by the
 * weak comparison of RFC 9110 8.8.3.2 (opaque tags equal, W/ or not);
 * "*" matches any.  Elements that are not entity-tags are skipped. */
static bool etag_in_list(const char *etag, const char *list)
{
    size_t llen = strlen(list), i = 0, j = 0, etl = 0, ltl;
    const char *et = NULL, *lt;
    if (etag) {
        size_t elen = strlen(etag);
        while (j < elen && cache_is_ows(etag[j]))
            j++;
        if (!next_etag(etag, elen, &j, &et, &etl))
            et = NULL;
    }
    while (i < llen) {
        while (i < llen && (list[i] == ',' || cache_is_ows(list[i])))
            i++;
        if (i < llen && list[i] == '*' && (i + 1 == llen || list[i + 1] == ',' || cache_is_ows(list[i + 1])))
            return true;
        if (i < llen && next_etag(list, llen, &i, &lt, &ltl)) {
            if (et && ltl == etl && memcmp(lt, et, etl) == 0)
                return true;
        } else {
            while (i < llen && list[i] != ',')
                i++;
        }
    }
    return false;
}

bool cache_not_modified(const struct cache_entry *e, const struct cache_request_facts *rq)
{
    /* RFC 9110 13.1.2 and 13.1.3: 304 answers GET and HEAD only, and
     * preconditions apply to a 2xx answer only (13.2.1). */
    if ((rq->method != HTTP_GET && rq->method != HTTP_HEAD) || e->status < 200 || e->status > 299)
        return false;
    if (rq->if_none_match[0])
        return etag_in_list(e->etag, rq->if_none_match);
    /* If-Modified-Since counts only without If-None-Match (RFC 9110 13.1.3). */
    if (rq->if_modified_since < 0)
        return false;
    int64_t lm = e->last_modified >= 0 ? e->last_modified : e->date;
    return lm >= 0 && lm <= rq->if_modified_since;
}
