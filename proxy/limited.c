/* SPDX-License-Identifier: MIT */
/*
 * limited: admission control on a request (issue 5) — its rate limits, then
 * its in-flight limits, between routing and the cache lookup.  Routes
 * without any never get here (route_rt.has_admission).
 *
 * Rate limits: the request's key per limit (limit_key_make over the key
 * parts), the local limits checked in conf order (a later refusal refunds
 * the earlier ones), then every global limit in one Redis script.  While
 * the script runs the connection waits in CS_WAIT and holds an open_handles
 * count, so it outlives a client that leaves (see on_global).  A refused
 * request gets 429 with Retry-After and RateLimit-*; an allowed one keeps
 * the lines of its most restrictive limit in c->extra_lines for its
 * response.
 *
 * In-flight limits: the route's max_inflight, then its upstream's, each
 * taken in turn.  A request that must wait is CS_QUEUED (still read, so a
 * client leaving is noticed) with TK_QUEUE on its own timer.  A slot handed
 * over by a request finishing on any worker arrives through the limit's
 * wake callback, which only puts the connection on its worker's
 * limit_woken list and signals the worker (the cache-fill wake pattern);
 * the connection leaves that list, under the worker's lock, before it can
 * be freed.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>

#include "common/log.h"
#include "common/redis.h"
#include "proxy/conn.h"

static bool admit(struct conn *c);

/* ---- the key ---- */

static bool cidr_has(const struct conf_cidr *cidr, const unsigned char *a, bool is_v6)
{
    if (cidr->is_v6 != is_v6)
        return false;
    unsigned bits = cidr->bits;
    size_t whole = bits / 8;
    if (memcmp(cidr->addr, a, whole) != 0)
        return false;
    unsigned rest = bits % 8;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (cidr->addr[whole] & mask) == (a[whole] & mask);
}

/* Parses len bytes of s as an address; false when it is none. */
static bool parse_ip(const char *s, size_t len, unsigned char *a, bool *is_v6)
{
    char text[INET6_ADDRSTRLEN];
    if (len == 0 || len >= sizeof(text))
        return false;
    memcpy(text, s, len);
    text[len] = '\0';
    *is_v6 = memchr(s, ':', len) != NULL;
    return inet_pton(*is_v6 ? AF_INET6 : AF_INET, text, a) == 1;
}

static bool is_trusted(const struct conf_cidrs *tp, const char *s, size_t len)
{
    unsigned char a[16];
    bool is_v6;
    if (!parse_ip(s, len, a, &is_v6))
        return false;
    for (size_t i = 0; i < tp->n; i++)
        if (cidr_has(&tp->v[i], a, is_v6))
            return true;
    return false;
}

/* The client's address: the peer's, or, when the peer is a trusted proxy,
 * the rightmost X-Forwarded-For entry that is not one (entries left of an
 * untrusted hop could be made up by the client). */
static const char *client_ip(const struct conn *c, size_t *len)
{
    const struct conf_cidrs *tp = c->srv->trusted_proxies.n > 0 ? &c->srv->trusted_proxies
                                                                 : &c->gen->conf->trusted_proxies;
    const char *ip = c->peer;
    *len = strlen(c->peer);
    if (tp->n == 0 || !is_trusted(tp, ip, *len))
        return ip;
    for (unsigned i = c->rq.n; i-- > 0;) {
        size_t nl, vl;
        const char *name = head_field_name(&c->rq, i, &nl);
        if (nl != 15 || strncasecmp(name, "x-forwarded-for", 15) != 0)
            continue;
        const char *v = head_field_value(&c->rq, i, &vl);
        const char *end = v + vl;
        while (end > v) {
            const char *comma = end;
            while (comma > v && comma[-1] != ',')
                comma--;
            const char *s = comma, *e = end;
            while (s < e && (*s == ' ' || *s == '\t'))
                s++;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            unsigned char a[16];
            bool is_v6;
            if (!parse_ip(s, (size_t)(e - s), a, &is_v6))
                return ip; /* garbage: the last hop we believe */
            ip = s;
            *len = (size_t)(e - s);
            if (!is_trusted(tp, s, *len))
                return ip;
            end = comma > v ? comma - 1 : v;
        }
    }
    return ip;
}

/* The raw value of query parameter name in the target ("" when absent). */
static const char *query_value(const struct conn *c, const char *name, size_t *len)
{
    size_t tl, nl = strlen(name);
    const char *t = head_target(&c->rq, &tl);
    const char *q = memchr(t, '?', tl), *end = t + tl;
    for (const char *p = q ? q + 1 : end; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *next = amp ? amp : end;
        if ((size_t)(next - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            *len = (size_t)(next - p - nl - 1);
            return p + nl + 1;
        }
        p = amp ? amp + 1 : end;
    }
    *len = 0;
    return "";
}

static const char *header_value(const struct conn *c, const char *lname, size_t *len)
{
    size_t ln = strlen(lname);
    for (unsigned i = 0; i < c->rq.n; i++) {
        size_t nl;
        const char *name = head_field_name(&c->rq, i, &nl);
        if (nl == ln && strncasecmp(name, lname, nl) == 0)
            return head_field_value(&c->rq, i, len);
    }
    *len = 0;
    return "";
}

static void make_key(struct conn *c, size_t i)
{
    const struct conf_limit *cl = c->rt->limit_confs[i];
    const char *parts[CONF_LIMIT_KEYS_MAX];
    size_t lens[CONF_LIMIT_KEYS_MAX];
    for (size_t k = 0; k < cl->nkeys; k++) {
        const struct conf_limit_key *key = &cl->keys[k];
        switch (key->kind) {
        case CONF_LIMIT_KEY_IP: parts[k] = client_ip(c, &lens[k]); break;
        case CONF_LIMIT_KEY_HEADER: parts[k] = header_value(c, key->name, &lens[k]); break;
        case CONF_LIMIT_KEY_QUERY: parts[k] = query_value(c, key->name, &lens[k]); break;
        case CONF_LIMIT_KEY_ROUTE:
            parts[k] = c->rt->name;
            lens[k] = strlen(c->rt->name);
            break;
        }
    }
    limit_key_make(c->rt->limits[i], parts, lens, cl->nkeys, &c->lkeys[i]);
}

/* ---- answers ---- */

static void put_lines(struct conn *c, const struct limit_result *r)
{
    uint64_t reset_s = (r->reset_ms + 999) / 1000;
    int n = snprintf(c->extra_lines + c->extra_len, sizeof(c->extra_lines) - c->extra_len,
                     "RateLimit-Limit: %llu\r\nRateLimit-Remaining: %llu\r\nRateLimit-Reset: %llu\r\n"
                     "X-RateLimit-Limit: %llu\r\nX-RateLimit-Remaining: %llu\r\nX-RateLimit-Reset: %llu\r\n",
                     (unsigned long long)r->limit, (unsigned long long)r->remaining, (unsigned long long)reset_s,
                     (unsigned long long)r->limit, (unsigned long long)r->remaining, (unsigned long long)reset_s);
    if (n > 0 && (size_t)n < sizeof(c->extra_lines) - c->extra_len)
        c->extra_len += (size_t)n;
}

static void put_retry_after(struct conn *c, uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    int n = snprintf(c->extra_lines, sizeof(c->extra_lines), "Retry-After: %llu\r\n",
                     (unsigned long long)(s ? s : 1));
    c->extra_len = (size_t)n;
}

static void respond_limited(struct conn *c, size_t i, const struct limit_result *r)
{
    c->limit = "rate_limited";
    put_retry_after(c, r->retry_ms);
    put_lines(c, r);
    respond_error(c, 429, "rate limit \"%s\" exceeded (%llu at once, %llu per %s); retry in %llu ms",
                  limit_name(c->rt->limits[i]), (unsigned long long)r->limit,
                  (unsigned long long)c->rt->limit_confs[i]->rate,
                  c->rt->limit_confs[i]->period_ms == 1000     ? "second"
                  : c->rt->limit_confs[i]->period_ms == 60000  ? "minute"
                  : c->rt->limit_confs[i]->period_ms == 3600000 ? "hour"
                                                                : "day",
                  (unsigned long long)r->retry_ms);
}

/* The lines of the most restrictive limit that shows them, on allowed responses. */
static void keep_best(struct conn *c, size_t i, const struct limit_result *r)
{
    if (!c->rt->limit_confs[i]->headers)
        return;
    if (!c->has_lbest || r->remaining < c->lbest.remaining) {
        c->lbest = *r;
        c->has_lbest = true;
    }
}

/* Refunds the local limits 0..upto that allowed this request. */
static void refund_locals(struct conn *c, size_t upto)
{
    for (size_t i = 0; i < upto; i++)
        if (c->rt->limit_confs[i]->scope == CONF_LIMIT_LOCAL)
            limit_refund(c->rt->limits[i], &c->lkeys[i]);
}

/* ---- rate limits ---- */

/* Rate limits passed: the headers, then the in-flight limits. */
static bool finish_rate(struct conn *c)
{
    if (c->has_lbest)
        put_lines(c, &c->lbest);
    return admit(c);
}

/* A refusal while global limits fall back: every local limit took this
 * request, and so did the global ones before `upto` that fell back to the
 * local store. */
static void refund_fallbacks(struct conn *c, size_t upto)
{
    const struct route_rt *rt = c->rt;
    for (size_t j = 0; j < rt->nlimits; j++)
        if (rt->limit_confs[j]->scope == CONF_LIMIT_LOCAL ||
            (j < upto && rt->limit_confs[j]->on_redis_error == CONF_LIMIT_ERR_LOCAL))
            limit_refund(rt->limits[j], &c->lkeys[j]);
}

/* Redis could not answer: each global limit falls back as configured.
 * True when the request was answered. */
static bool global_failed(struct conn *c, int status)
{
    struct route_rt *rt = c->rt;
    uint64_t now = uv_hrtime();
    LOG_RATELIMITED(LOG_WARN, "limit", "global limits: Redis unavailable (%s): on_redis_error applies",
                    uv_strerror(status));
    for (size_t i = 0; i < rt->nlimits; i++) {
        if (rt->limit_confs[i]->scope != CONF_LIMIT_GLOBAL)
            continue;
        limit_count_redis_error(rt->limits[i]);
        struct limit_result r;
        switch (rt->limit_confs[i]->on_redis_error) {
        case CONF_LIMIT_ERR_LOCAL:
            limit_check(rt->limits[i], &c->lkeys[i], now, true, &r);
            if (!r.is_allowed) {
                refund_fallbacks(c, i);
                respond_limited(c, i, &r);
                return true;
            }
            keep_best(c, i, &r);
            break;
        case CONF_LIMIT_ERR_ALLOW:
            limit_count_fallback(rt->limits[i]);
            break;
        case CONF_LIMIT_ERR_DENY:
            limit_count_fallback(rt->limits[i]);
            refund_fallbacks(c, i);
            c->limit = "redis_deny";
            /* 503, not 429: the client did nothing wrong, sluice cannot tell */
            put_retry_after(c, 1000);
            respond_error(c, 503, "rate limit \"%s\" cannot be checked (its Redis is unavailable)",
                          limit_name(rt->limits[i]));
            return true;
        }
    }
    return false;
}

static void on_global(void *arg, int status, const struct limit_result *res, size_t n)
{
    struct conn *c = arg;
    if (c->is_closing) {
        conn_unref(c);
        return;
    }
    conn_unref(c); /* the connection is open: this only drops the check's count */
    struct route_rt *rt = c->rt;
    if (status != 0) {
        if (global_failed(c, status))
            return;
    } else {
        /* the script commits in all limits or in none */
        bool is_allowed = true;
        for (size_t k = 0; k < n; k++)
            is_allowed &= res[k].is_allowed;
        size_t g = 0, denied = SIZE_MAX;
        const struct limit_result *denied_r = NULL;
        for (size_t i = 0; i < rt->nlimits && g < n; i++) {
            if (rt->limit_confs[i]->scope != CONF_LIMIT_GLOBAL)
                continue;
            const struct limit_result *r = &res[g++];
            limit_count(rt->limits[i], is_allowed);
            if (!r->is_allowed && denied_r == NULL) {
                denied = i;
                denied_r = r;
            }
            keep_best(c, i, r);
        }
        if (denied_r != NULL) {
            refund_locals(c, rt->nlimits);
            respond_limited(c, denied, denied_r);
            return;
        }
    }
    if (!finish_rate(c))
        req_proceed(c);
}

/* ---- in-flight limits ---- */

static void on_granted(struct limit_waiter *wt)
{
    struct conn *c = wt->owner;
    worker_wake(c->w, &c->w->limit_woken, &c->lwake_link, &c->is_lwake_queued);
}

static void unqueue_wake(struct conn *c)
{
    pthread_mutex_lock(&c->w->lock);
    if (c->is_lwake_queued) {
        list_remove(&c->lwake_link);
        c->is_lwake_queued = false;
    }
    pthread_mutex_unlock(&c->w->lock);
}

static void respond_busy(struct conn *c, const char *why)
{
    c->limit = "inflight_rejected";
    put_retry_after(c, 1000);
    respond_error(c, 503, "max_inflight: %s", why);
}

/* Takes the in-flight slots from lstage on: true when the request waits or
 * was answered, false when it holds them all. */
static bool admit(struct conn *c)
{
    struct route_rt *rt = c->rt;
    while (c->lstage < rt->ninflight) {
        struct limit_inflight *li = rt->inflight[c->lstage];
        c->lwait.wake = on_granted;
        c->lwait.owner = c;
        switch (limit_inflight_acquire(li, &c->lwait)) {
        case LIMIT_ADMITTED:
            c->lstage++;
            break;
        case LIMIT_QUEUED:
            c->limit = "queued";
            c->is_lqueued = true;
            c->state = CS_QUEUED;
            req_timer_set(c, TK_QUEUE, limit_inflight_timeout_ms(li));
            return true;
        case LIMIT_FULL:
            respond_busy(c, "too many requests in flight and the queue is full");
            return true;
        }
    }
    return false;
}

/* A queued request got its slot: on to the next limit, then the request. */
static void granted(struct conn *c)
{
    c->is_lqueued = false;
    c->lstage++;
    c->state = CS_WAIT;
    req_timer_set(c, TK_NONE, 0);
    if (c->rq_has_body && !c->rq_body_done)
        req_timer_set(c, TK_BODY, c->srv->client_body_timeout_ms);
    if (!admit(c))
        req_proceed(c);
}

void limited_timeout(struct conn *c)
{
    if (!c->is_lqueued)
        return;
    struct limit_inflight *li = c->rt->inflight[c->lstage];
    if (limit_inflight_cancel(li, &c->lwait, true)) {
        /* handed over just now: the wake is on its way, take it here */
        unqueue_wake(c);
        granted(c);
        return;
    }
    c->is_lqueued = false;
    c->state = CS_WAIT;
    respond_busy(c, "no slot within queue_timeout");
}

void limited_run_woken(struct worker *w)
{
    for (;;) {
        pthread_mutex_lock(&w->lock);
        struct conn *c = NULL;
        if (!list_is_empty(&w->limit_woken)) {
            c = LIST_ENTRY(w->limit_woken.next, struct conn, lwake_link);
            list_remove(&c->lwake_link);
            c->is_lwake_queued = false;
        }
        pthread_mutex_unlock(&w->lock);
        if (c == NULL)
            return;
        if (c->is_lqueued && !c->is_closing)
            granted(c);
    }
}

void limited_done(struct conn *c)
{
    struct route_rt *rt = c->rt;
    if (c->is_lqueued) {
        if (limit_inflight_cancel(rt->inflight[c->lstage], &c->lwait, false))
            c->lstage++; /* handed over meanwhile: ours to give back */
        unqueue_wake(c);
        c->is_lqueued = false;
    }
    while (c->lstage > 0)
        limit_inflight_done(rt->inflight[--c->lstage]);
}

/* ---- the entry point ---- */

bool limited_begin(struct conn *c)
{
    struct route_rt *rt = c->rt;
    bool has_global = false;
    uint64_t now = uv_hrtime();
    c->extra_len = 0;
    c->has_lbest = false;
    c->limit = "allowed";
    for (size_t i = 0; i < rt->nlimits; i++) {
        make_key(c, i);
        if (rt->limit_confs[i]->scope == CONF_LIMIT_GLOBAL) {
            has_global = true;
            continue;
        }
        struct limit_result r;
        limit_check(rt->limits[i], &c->lkeys[i], now, false, &r);
        if (!r.is_allowed) {
            refund_locals(c, i);
            respond_limited(c, i, &r);
            return true;
        }
        keep_best(c, i, &r);
    }
    if (!has_global)
        return finish_rate(c);
    struct limit *ls[LIMIT_ROUTE_MAX];
    struct limit_key ks[LIMIT_ROUTE_MAX];
    size_t n = 0;
    for (size_t i = 0; i < rt->nlimits; i++) {
        if (rt->limit_confs[i]->scope == CONF_LIMIT_GLOBAL) {
            ls[n] = rt->limits[i];
            ks[n++] = c->lkeys[i];
        }
    }
    int rc = c->w->redis != NULL ? limit_redis_check(c->w->redis, ls, ks, n, on_global, c) : -ENOTCONN;
    if (rc != 0)
        return global_failed(c, rc) || finish_rate(c);
    c->open_handles++; /* the connection outlives the check (see on_global) */
    c->state = CS_WAIT;
    return true;
}
