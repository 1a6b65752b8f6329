/* SPDX-License-Identifier: MIT */
/*
 * cached: a request on a caching route — the lookup, answering from an entry
 * (a hit is the entry's ready head, a few per-response lines and the stored
 * body pieces, queued by reference into one writev), joining another
 * request's fill, feeding a fill, revalidating, serving stale on error.
 *
 * A joiner is woken from the filler's thread: the wake callback only queues
 * the connection on its own worker's `woken` list and signals the worker's
 * async; the worker then pumps it.  A connection leaves the fill (unwatch)
 * before it leaves the list, so no wake can name a freed connection.
 */
#include <errno.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "common/log.h"
#include "proxy/conn.h"
#include "proxy/tlsgen.h"

#define OUT_HIGH_WATER (256 * 1024)

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int rq_header(void *arg, const char *lname, char *out, size_t cap)
{
    const struct conn *c = arg;
    return head_get_all(&c->rq, lname, out, cap);
}

static void entry_ref(void *e)
{
    cache_entry_ref(e);
}

static void entry_release(void *e)
{
    cache_entry_release(e);
}

static void fill_ref(void *f)
{
    cache_fill_ref(f);
}

static void fill_release(void *f)
{
    cache_fill_release(f);
}

/* The per-response lines after a stored head: Age, X-Cache, Cache-Status,
 * Via, X-Process-Time, connection handling, and the blank line. */
/* Header lines put together by memcpy: they are on every hit, where
 * snprintf took a sixth of the instructions. */
struct lines {
    char *p;
    size_t n, cap;
};

static void lines_add(struct lines *l, const char *s, size_t len)
{
    if (len > l->cap - l->n) {
        l->n = l->cap; /* cut short, like snprintf */
        return;
    }
    memcpy(l->p + l->n, s, len);
    l->n += len;
}

#define LINES_LIT(l, s) lines_add(l, s, sizeof(s) - 1)

static size_t response_lines(struct conn *c, int64_t age, char *out, size_t cap)
{
    if (!c->rq_keepalive || c->w->is_draining || c->client_eof)
        c->want_close = true;
    struct lines l = {out, 0, cap};
    if (age >= 0) {
        char num[24], *end = num + sizeof(num);
        char *p = put_uint_rev(end, (uint64_t)age);
        LINES_LIT(&l, "Age: ");
        lines_add(&l, p, (size_t)(end - p));
        LINES_LIT(&l, "\r\n");
    }
    LINES_LIT(&l, "X-Cache: ");
    lines_add(&l, c->x_cache, strlen(c->x_cache));
    LINES_LIT(&l, "\r\nCache-Status: sluice; ");
    lines_add(&l, c->cache_detail, strlen(c->cache_detail));
    LINES_LIT(&l, "\r\n");
    if (c->srv->via)
        LINES_LIT(&l, "Via: 1.1 sluice\r\n");
    if (l.n < l.cap)
        l.n += (size_t)process_time_line(c, out + l.n, cap - l.n);
    if (c->extra_len > 0 && l.n + c->extra_len < cap - 64)
        lines_add(&l, c->extra_lines, c->extra_len); /* RateLimit-* (limited.c) */
    if (c->want_close)
        LINES_LIT(&l, "Connection: close\r\n");
    else if (!client_is_http11(c))
        LINES_LIT(&l, "Connection: keep-alive\r\n");
    LINES_LIT(&l, "\r\n");
    return l.n;
}

static unsigned head_status(const char *head)
{
    return (unsigned)atoi(head + 9);
}

/* A 304 made from a stored head: its status line replaced, its framing
 * fields left out (RFC 9110 15.4.5). */
static void queue_not_modified(struct conn *c, const char *head, size_t head_len)
{
    outq_add_static(&c->out, "HTTP/1.1 304 Not Modified\r\n", 27);
    const char *p = memchr(head, '\n', head_len);
    const char *end = head + head_len;
    for (p = p ? p + 1 : end; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        if (strncasecmp(p, "content-length:", 15) != 0 && strncasecmp(p, "transfer-encoding:", 18) != 0)
            outq_add_copy(&c->out, p, (size_t)(next - p));
        p = next;
    }
}

/* Answers the request from e (with head instead of e's own when given: a
 * head just freshened by a 304) and ends it. */
static void serve(struct conn *c, struct cache_entry *e, const char *head, size_t head_len, bool not_modified)
{
    char lines[768];
    size_t n = response_lines(c, head ? 0 : cache_entry_age(e, wall_ms()), lines, sizeof(lines));
    unsigned status = not_modified ? 304 : e->status;
    if (not_modified)
        queue_not_modified(c, head ? head : e->head, head ? head_len : e->head_len);
    else if (head != NULL)
        outq_add_copy(&c->out, head, head_len);
    else
        outq_add_held(&c->out, e->head, e->head_len, entry_ref, entry_release, e);
    outq_add_copy(&c->out, lines, n);
    if (!not_modified && c->method != HTTP_HEAD)
        for (size_t i = 0; i < e->nbody; i++)
            outq_add_held(&c->out, e->body[i].data, e->body[i].len, entry_ref, entry_release, e);
    count_status(c, status);
    c->rs_head_sent = true;
    c->rs_done = true;
    c->state = CS_LOCAL;
    if (outq_flush(&c->out) != 0) {
        conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    req_done(c);
}

static void serve_entry(struct conn *c, struct cache_entry *e, bool not_modified)
{
    serve(c, e, NULL, 0, not_modified);
}

/* ---- joining a fill ---- */

static void on_wake(struct cache_waiter *wt)
{
    struct conn *c = wt->owner;
    worker_wake(c->w, &c->w->woken, &c->wake_link, &c->is_wake_queued);
}

static void leave_join(struct conn *c)
{
    if (c->join == NULL)
        return;
    cache_fill_unwatch(c->join, &c->waiter);
    pthread_mutex_lock(&c->w->lock);
    if (c->is_wake_queued) {
        list_remove(&c->wake_link);
        c->is_wake_queued = false;
    }
    pthread_mutex_unlock(&c->w->lock);
    cache_fill_release(c->join);
    c->join = NULL;
}

static void join_pump(struct conn *c)
{
    struct cache_fill *f = c->join;
    enum cache_fill_state st = cache_fill_state(f);
    if (st == CACHE_FILL_ABORTED) {
        leave_join(c);
        if (c->join_head_sent) {
            conn_abort(c, STATS_ERR_UPSTREAM_CLOSED);
            return;
        }
        /* the filler got nothing storable: this request goes upstream itself */
        c->x_cache = "MISS";
        c->cache_detail = "fwd=uri-miss";
        req_forward(c);
        return;
    }
    if (!c->join_head_sent) {
        size_t hlen;
        bool chunked;
        const char *head = cache_fill_head(f, &hlen, &chunked);
        if (head == NULL) {
            if (st == CACHE_FILL_DONE) {
                /* finished without a head cannot happen; treat as a failed fill */
                leave_join(c);
                req_forward(c);
            }
            return;
        }
        if ((chunked && !client_is_http11(c)) || !cache_fill_matches(f, rq_header, c)) {
            leave_join(c);
            c->x_cache = "MISS";
            c->cache_detail = "fwd=uri-miss";
            req_forward(c);
            return;
        }
        char lines[768];
        size_t n = response_lines(c, 0, lines, sizeof(lines));
        outq_add_held(&c->out, head, hlen, fill_ref, fill_release, f);
        outq_add_copy(&c->out, lines, n);
        count_status(c, head_status(head));
        c->rs_head_sent = true;
        c->join_head_sent = true;
        if (c->method == HTTP_HEAD) {
            leave_join(c);
            c->rs_done = true;
            if (outq_flush(&c->out) != 0)
                conn_abort(c, STATS_ERR_CLIENT_CLOSED);
            else
                req_done(c);
            return;
        }
    }
    const char *p;
    size_t n;
    while (outq_backlog(&c->out) <= OUT_HIGH_WATER && (n = cache_fill_read(f, c->join_off, &p)) > 0) {
        outq_add_held(&c->out, p, n, fill_ref, fill_release, f);
        c->join_off += n;
    }
    if (outq_flush(&c->out) != 0) {
        conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    if (st == CACHE_FILL_DONE && cache_fill_read(f, c->join_off, &p) == 0) {
        leave_join(c);
        c->rs_done = true;
        req_done(c);
    }
}

static void join(struct conn *c, struct cache_fill *f)
{
    c->join = f;
    c->join_off = 0;
    c->join_head_sent = false;
    c->x_cache = "HIT";
    c->cache_detail = "fwd=uri-miss; collapsed";
    c->waiter.wake = on_wake;
    c->waiter.owner = c;
    c->state = CS_LOCAL;
    cache_fill_watch(f, &c->waiter);
    join_pump(c);
}

void cached_run_woken(struct worker *w)
{
    for (;;) {
        pthread_mutex_lock(&w->lock);
        struct conn *c = NULL;
        if (!list_is_empty(&w->woken)) {
            c = LIST_ENTRY(w->woken.next, struct conn, wake_link);
            list_remove(&c->wake_link);
            c->is_wake_queued = false;
        }
        pthread_mutex_unlock(&w->lock);
        if (c == NULL)
            return;
        if (c->join != NULL && !c->is_closing)
            join_pump(c);
    }
}

void cached_client_drained(struct conn *c)
{
    if (c->join != NULL && c->join_head_sent)
        join_pump(c);
}

/* ---- background refresh (stale-while-revalidate) ----
 *
 * The stale entry was served; the refresh is the same request sent again by
 * the worker to the listener it came in on, with Cache-Control: max-age=0,
 * so it takes the ordinary path: routing, a fill (which later stale hits
 * see, so they start no second refresh), a conditional request when there
 * are validators, the stored response replaced.  The answer is discarded. */

#define REFRESH_TIMEOUT_MS 60000

struct refresh {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_write_t write_req;
    int open_handles;
    struct outq out;  /* TLS listener: the request goes through it, encrypted */
    struct tls *tls;  /* NULL: plain listener */
    size_t len;
    char data[]; /* the request */
};

static void refresh_closed(uv_handle_t *h)
{
    struct refresh *r = h->data;
    if (--r->open_handles > 0)
        return;
    outq_dispose(&r->out);
    tls_destroy(r->tls);
    free(r);
}

static void refresh_close(struct refresh *r)
{
    if (!uv_is_closing((uv_handle_t *)&r->tcp)) {
        uv_close((uv_handle_t *)&r->tcp, refresh_closed);
        uv_close((uv_handle_t *)&r->timer, refresh_closed);
    }
}

static void refresh_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static _Thread_local char sink[16384];
    *b = uv_buf_init(sink, sizeof(sink));
}

static void refresh_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    if (nread < 0)
        refresh_close(s->data);
}

static void refresh_written(uv_write_t *req, int status)
{
    struct refresh *r = req->data;
    if (status != 0 || uv_read_start((uv_stream_t *)&r->tcp, refresh_alloc, refresh_read) != 0)
        refresh_close(r);
}

/* A TLS listener: the request goes once the handshake is done; what comes
 * back is dropped like the plain answer. */
static void refresh_read_tls(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct refresh *r = s->data;
    bool was_ready = tls_is_ready(r->tls);
    uv_buf_t plain;
    ssize_t n = tls_read(r->tls, nread, b, &plain);
    if (n < 0) {
        refresh_close(r);
        return;
    }
    if (n > 0)
        buf_unref((struct buf *)(plain.base - offsetof(struct buf, data)));
    if (!was_ready && tls_is_ready(r->tls)) {
        outq_add_copy(&r->out, r->data, r->len);
        if (outq_flush(&r->out) != 0)
            refresh_close(r);
    }
}

static void refresh_connected(uv_connect_t *req, int status)
{
    struct refresh *r = req->data;
    if (status != 0) {
        refresh_close(r);
        return;
    }
    if (r->tls != NULL) {
        if (uv_read_start((uv_stream_t *)&r->tcp, tls_alloc_cb, refresh_read_tls) != 0 ||
            tls_handshake_start(r->tls) != 0)
            refresh_close(r);
        return;
    }
    uv_buf_t b = uv_buf_init(r->data, (unsigned)r->len);
    r->write_req.data = r;
    if (uv_write(&r->write_req, (uv_stream_t *)&r->tcp, &b, 1, refresh_written) != 0)
        refresh_close(r);
}

static void refresh_timeout(uv_timer_t *t)
{
    refresh_close(t->data);
}

static bool is_refresh_dropped(const char *name, size_t len)
{
    static const char *const drop[] = {"connection", "keep-alive", "cache-control", "pragma", "if-none-match",
                                       "if-modified-since", "if-match", "if-unmodified-since", "if-range",
                                       "content-length", "transfer-encoding", "expect", "te", "upgrade"};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (strlen(drop[i]) == len && strncasecmp(drop[i], name, len) == 0)
            return true;
    return false;
}

static void refresh_start(struct conn *c)
{
    struct sockaddr_storage local;
    int alen = sizeof(local);
    if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&local, &alen) != 0)
        return;
    size_t tlen;
    const char *target = head_target(&c->rq, &tlen);
    struct refresh *r = malloc(sizeof(*r) + c->rq.len + tlen + 256);
    if (r == NULL)
        return;
    size_t cap = c->rq.len + tlen + 256, n = 0;
    n += (size_t)snprintf(r->data + n, cap - n, "GET %.*s HTTP/1.1\r\n", (int)tlen, target);
    for (unsigned i = 0; i < c->rq.n; i++) {
        size_t nl, vl;
        const char *name = head_field_name(&c->rq, i, &nl);
        const char *value = head_field_value(&c->rq, i, &vl);
        if (!is_refresh_dropped(name, nl) && n + nl + vl + 4 < cap)
            n += (size_t)snprintf(r->data + n, cap - n, "%.*s: %.*s\r\n", (int)nl, name, (int)vl, value);
    }
    n += (size_t)snprintf(r->data + n, cap - n, "Cache-Control: max-age=0\r\nConnection: close\r\n\r\n");
    r->len = n;
    uv_tcp_init(&c->w->loop, &r->tcp);
    uv_timer_init(&c->w->loop, &r->timer);
    r->tcp.data = r->timer.data = r->connect_req.data = r;
    r->open_handles = 2;
    outq_init(&r->out, (uv_stream_t *)&r->tcp, NULL, r);
    r->tls = NULL;
    SSL_CTX *loopback = c->tls != NULL ? tlsgen_loopback_ctx(c->gen->tls) : NULL;
    if (loopback != NULL &&
        (r->tls = tls_client_create(loopback, &r->out, NULL, NULL, NULL, NULL, NULL)) == NULL) {
        refresh_close(r);
        return;
    }
    uv_timer_start(&r->timer, refresh_timeout, REFRESH_TIMEOUT_MS, 0);
    if (uv_tcp_connect(&r->connect_req, &r->tcp, (const struct sockaddr *)&local, refresh_connected) != 0)
        refresh_close(r);
}

/* ---- lookup ---- */

/* RFC 9110 9.2.1: only these are safe; any other method (extensions
 * included) may change the resource. */
static bool method_is_unsafe(unsigned m)
{
    return m != HTTP_GET && m != HTTP_HEAD && m != HTTP_OPTIONS && m != HTTP_TRACE;
}

static void bypass(struct conn *c, const char *detail)
{
    c->x_cache = "BYPASS";
    c->cache_detail = detail;
}

/* Builds the request's key into c->key; false when it cannot be (too long,
 * no memory).  body_sha256: the digest of a held body, or NULL. */
static bool build_key(struct conn *c, const unsigned char *body_sha256)
{
    if (c->key == NULL && (c->key = malloc(CACHE_KEY_MAX)) == NULL)
        return false;
    size_t tlen;
    const char *target = head_target(&c->rq, &tlen);
    struct cache_key_input in = {
        .method = llhttp_method_name(c->method),
        .scheme = "http",
        .host = c->host,
        .target = target,
        .target_len = tlen,
        .get_header = rq_header,
        .arg = c,
        .body_sha256 = body_sha256,
    };
    c->key_len = cache_key_build(c->rc, &in, c->key, CACHE_KEY_MAX, &c->url_off, &c->url_len);
    return c->key_len > 0;
}

static bool lookup(struct conn *c, const unsigned char *body_sha256);

bool cached_begin(struct conn *c)
{
    const struct conf_route_cache *rc = c->route->cache;
    c->rc = rc;
    c->store = c->rt->store;
    bool is_head = c->method == HTTP_HEAD;
    bool cacheable = (rc->methods & CONF_CACHE_METHOD_BIT(c->method)) ||
                     (is_head && (rc->methods & CONF_CACHE_METHOD_BIT(HTTP_GET)));
    if (!cacheable) {
        /* an unsafe method needs the URL to invalidate it afterwards */
        if (method_is_unsafe(c->method) && build_key(c, NULL))
            c->invalidate = true;
        bypass(c, "fwd=method");
        return false;
    }
    if (rc->key_body && c->rq_has_body) {
        /* the body is part of the key: read it whole first (a Content-Length
         * within key_body_max; anything else goes upstream uncached) */
        bool sized = (c->parser.flags & F_CONTENT_LENGTH) && !c->rq_chunked;
        if (!sized || c->parser.content_length > rc->key_body_max ||
            (c->held = held_new(c->parser.content_length)) == NULL) {
            bypass(c, "fwd=bypass; detail=body-too-large");
            return false;
        }
        c->state = CS_BODY;
        if (c->rq_expect && client_is_http11(c))
            outq_add_static(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        llhttp_resume(&c->parser);
        return true;
    }
    return lookup(c, NULL);
}

bool cached_hold(struct conn *c, const char *p, size_t len)
{
    return held_append(&c->held, p, len, c->held->cap);
}

void cached_body_complete(struct conn *c)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(c->held->data, c->held->len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        bypass(c, "fwd=bypass; detail=digest");
        req_forward(c);
        return;
    }
    if (!lookup(c, md))
        req_forward(c);
}

static struct cache_lookup_req lookup_req(struct conn *c)
{
    return (struct cache_lookup_req){c->key, c->key_len, c->url_off, c->url_len, c->key_hash, rq_header, c};
}

static bool decide(struct conn *c, struct cache_entry *e, struct cache_fill *fill);

/* The second tier answered a memory miss: an entry found there joins the
 * memory store and is used like one found there; a miss or a failure (Redis
 * down, slow: -ETIMEDOUT) falls through to the origin at once. */
static void on_tier(void *arg, int status, struct cache_entry *e)
{
    struct conn *c = arg;
    if (c->is_closing) {
        if (e != NULL)
            cache_entry_release(e);
        conn_unref(c);
        return;
    }
    conn_unref(c); /* the connection is open: this only drops the get's count */
    if (status < 0) {
        STATS_INC(c->rstats->cache_redis_error);
    } else if (e != NULL) {
        STATS_INC(c->rstats->cache_redis_hit);
        cache_insert(c->store, e);
    }
    if (!decide(c, e, NULL)) {
        if (c->rqf.cc.only_if_cached)
            respond_error(c, 504, "only-if-cached and the cache has no usable response");
        else
            req_forward(c);
    }
}

static bool tier_get(struct conn *c)
{
    struct redis_conn *r = c->w->redis;
    if (!c->rc->cache->redis || r == NULL || c->rqf.cc.no_store)
        return false;
    int rc = cache_tier_get(r, c->key, c->key_len, rq_header, c, on_tier, c);
    if (rc != 0) {
        STATS_INC(c->rstats->cache_redis_error);
        return false;
    }
    c->open_handles++; /* the connection outlives the get (see on_tier) */
    c->state = CS_WAIT;
    return true;
}

/* Looks the request up (its head, and the body digest when the route keys
 * on it): true when answered, joined, or waiting for the second tier. */
static bool lookup(struct conn *c, const unsigned char *body_sha256)
{
    cache_request_facts_init(&c->rqf, c->method);
    for (unsigned i = 0; i < c->rq.n; i++) {
        size_t nl, vl;
        const char *name = head_field_name(&c->rq, i, &nl);
        const char *value = head_field_value(&c->rq, i, &vl);
        cache_request_facts_add(&c->rqf, name, nl, value, vl);
    }
    if (!build_key(c, body_sha256)) {
        bypass(c, "fwd=bypass; detail=key-too-long");
        return false;
    }
    c->key_hash = cache_hash(c->key, c->key_len);
    struct cache_lookup_req lr = lookup_req(c);
    struct cache_fill *fill = NULL;
    struct cache_entry *e = cache_lookup(c->store, &lr, &fill);
    if (e == NULL && fill == NULL && tier_get(c))
        return true;
    return decide(c, e, fill);
}

/* What the lookup found (e, fill: refs the caller gives up) decides: a hit
 * answers, a fill is joined, else the request goes upstream (the filler, a
 * revalidation, a bypass).  True when the request was answered or joined. */
static bool decide(struct conn *c, struct cache_entry *e, struct cache_fill *fill)
{
    const struct conf_route_cache *rc = c->rc;
    bool is_head = c->method == HTTP_HEAD;
    struct cache_lookup_req lr = lookup_req(c);
    int64_t now = wall_ms();
    if (e != NULL && e->is_chunked && !client_is_http11(c)) {
        cache_entry_release(e);
        e = NULL;
    }
    if (e != NULL) {
        c->use = cache_decide_use(rc, e, &c->rqf, now);
        if (c->use == CACHE_USE_FRESH || c->use == CACHE_USE_STALE_SWR) {
            bool refreshing = fill != NULL;
            if (fill != NULL)
                cache_fill_release(fill);
            bool stale = c->use == CACHE_USE_STALE_SWR;
            c->x_cache = stale ? "STALE" : "HIT";
            c->cache_detail = stale ? "hit; fwd=stale; detail=stale-while-revalidate" : "hit";
            STATS_INC(c->rstats->cache_hit);
            /* no fill running for the key: nobody refreshes it yet (the head is
             * still in c->rq until req_done, so refresh before serving) */
            if (stale && !refreshing && c->held == NULL)
                refresh_start(c);
            serve_entry(c, e, cache_not_modified(e, &c->rqf));
            cache_entry_release(e);
            return true;
        }
        c->entry = e; /* kept to revalidate, or to answer if the origin fails */
    }
    if (c->rqf.cc.only_if_cached) {
        if (fill != NULL)
            cache_fill_release(fill);
        c->x_cache = "MISS";
        c->cache_detail = "fwd=miss; detail=only-if-cached";
        return false; /* answered 504 by the caller's check below */
    }
    if (fill != NULL) {
        if (c->entry != NULL) {
            cache_entry_release(c->entry);
            c->entry = NULL;
        }
        STATS_INC(c->rstats->cache_coalesced);
        join(c, fill);
        return true;
    }
    if (is_head || c->rqf.cc.no_store) {
        bypass(c, is_head ? "fwd=uri-miss" : "fwd=request");
        c->x_cache = c->entry ? "EXPIRED" : "MISS";
        return false;
    }
    struct cache_fill *existing = NULL;
    c->fill = cache_fill_start(c->store, &lr, &existing);
    if (c->fill == NULL && existing != NULL) {
        if (c->entry != NULL) {
            cache_entry_release(c->entry);
            c->entry = NULL;
        }
        STATS_INC(c->rstats->cache_coalesced);
        join(c, existing);
        return true;
    }
    STATS_INC(c->rstats->cache_miss);
    c->x_cache = c->entry ? "EXPIRED" : "MISS";
    c->cache_detail = c->entry ? "fwd=stale" : "fwd=uri-miss";
    return false;
}

const char *cached_request_extra(struct conn *c, char *buf, size_t cap)
{
    /* tells the origin sluice acts on Surrogate-Control (Edge Architecture 1.0) */
    c->t_sent_wall_ms = wall_ms();
    int n = snprintf(buf, cap, "Surrogate-Capability: %s=\"Surrogate/1.0\"\r\n", CACHE_SURROGATE_TOKEN);
    if (c->entry == NULL)
        return buf;
    if (c->entry->etag != NULL)
        n += snprintf(buf + n, cap - n, "If-None-Match: %s\r\n", c->entry->etag);
    if (c->entry->last_modified >= 0) {
        char date[32];
        cache_date_format(c->entry->last_modified, date);
        n += snprintf(buf + n, cap - n, "If-Modified-Since: %s\r\n", date);
    }
    return (size_t)n < cap ? buf : NULL;
}

/* ---- the upstream response ---- */

/* The URL a Location or Content-Location value names, in the form keys use
 * ("http://host/path"), when it is on this request's host (RFC 9111 4.4:
 * only same-origin URIs are invalidated). */
static size_t same_origin_url(const struct conn *c, const char *v, char *out, size_t cap)
{
    int n;
    if (v[0] == '/') {
        n = snprintf(out, cap, "http://%s%s", c->host, v);
    } else {
        size_t hl = strlen(c->host);
        if (strncasecmp(v, "http://", 7) != 0 || strncasecmp(v + 7, c->host, hl) != 0 ||
            (v[7 + hl] != '/' && v[7 + hl] != '\0'))
            return 0;
        n = snprintf(out, cap, "http://%s%s", c->host, v[7 + hl] ? v + 7 + hl : "/");
    }
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* RFC 9111 4.4: a non-error response to an unsafe request invalidates the
 * target URI and the same-origin Location and Content-Location URIs. */
static void invalidate(struct conn *c)
{
    cache_purge_url(c->store, c->key + c->url_off, c->url_len);
    static const char *const fields[] = {"location", "content-location"};
    for (size_t i = 0; i < 2; i++) {
        char v[2048], url[2300];
        size_t n;
        if (head_get(&c->rs, fields[i], v, sizeof(v)) && (n = same_origin_url(c, v, url, sizeof(url))) > 0)
            cache_purge_url(c->store, url, n);
    }
}

static void fill_abort(struct conn *c)
{
    if (c->fill == NULL)
        return;
    cache_fill_abort(c->fill);
    cache_fill_release(c->fill);
    c->fill = NULL;
    c->fill_on = false;
}

static bool may_serve_stale_on_error(const struct conn *c)
{
    return c->entry != NULL && c->use == CACHE_USE_STALE_IF_ERROR_ONLY;
}

size_t cached_response_head(struct conn *c, char *lines, size_t cap)
{
    unsigned status = c->rparser.status_code;
    if (c->t_sent_wall_ms == 0)
        c->t_sent_wall_ms = wall_ms();
    if (c->invalidate && status < 400 && c->store != NULL)
        invalidate(c);
    if (c->rc == NULL)
        return 0;
    if (c->entry != NULL && status == 304) {
        c->rs_revalidated = true;
        return 0;
    }
    if (may_serve_stale_on_error(c) && status >= 500) {
        c->rs_swallow = true;
        fill_abort(c);
        return 0;
    }
    cache_response_facts_init(&c->rsf, status, c->rc->ttl_header);
    for (unsigned i = 0; i < c->rs.n; i++) {
        size_t nl, vl;
        const char *name = head_field_name(&c->rs, i, &nl);
        const char *value = head_field_value(&c->rs, i, &vl);
        cache_response_facts_add(&c->rsf, name, nl, value, vl);
    }
    bool no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
    bool framing_matches =
        no_body || c->rs_chunk_out || (c->rparser.flags & F_CONTENT_LENGTH) || c->method == HTTP_HEAD;
    c->t_head_wall_ms = wall_ms();
    bool store = c->fill != NULL && framing_matches &&
                 cache_decide_store(c->rc, &c->rqf, &c->rsf, c->t_sent_wall_ms, c->t_head_wall_ms, &c->ttl);
    if (store && c->rsf.vary[0] != '\0') {
        /* joiners must know the variant before they take this response */
        char vary_key[2048];
        size_t vk = cache_vary_key(c->rsf.vary, rq_header, c, vary_key, sizeof(vary_key));
        store = vk > 0 && cache_fill_set_vary(c->fill, c->rsf.vary, vary_key) == 0;
    }
    if (store) {
        struct reply_head rh = {
            .status = status,
            .ops = c->route->resp_ops,
            .nops = c->route->nresp_ops,
            .chunked = c->rs_chunk_out,
            .skip_age = true,
            .no_blank = true,
            .drop_request_id = true, /* an id belongs to one request, never to a stored response */
        };
        struct buf *blk = buf_get();
        size_t n = head_build_response(&c->rs, &rh, blk->data, BUF_SIZE);
        store = n > 0 && cache_fill_set_head(c->fill, blk->data, n, c->rs_chunk_out) == 0;
        buf_unref(blk);
    }
    if (store) {
        c->fill_on = true;
    } else {
        fill_abort(c);
    }
    if (c->entry != NULL) {
        cache_entry_release(c->entry);
        c->entry = NULL;
    }
    int n = snprintf(lines, cap, "X-Cache: %s\r\nCache-Status: sluice; %s%s\r\n", c->x_cache, c->cache_detail,
                     store ? "; stored" : "");
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

void cached_body(struct conn *c, const char *p, size_t len)
{
    if (!c->fill_on)
        return;
    if (cache_fill_append(c->fill, p, len) != 0) {
        c->fill_on = false;
        cache_fill_release(c->fill);
        c->fill = NULL;
    }
}

static void publish_as(struct conn *c, unsigned status, const char *etag_value);

/* The body of a fill as one string for `ttl_from json` (a copy: such bodies
 * are small task descriptions, and max_object bounds them). */
static char *fill_body_copy(struct cache_fill *f, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *out = malloc(cap);
    const char *p;
    size_t k;
    while (out != NULL && (k = cache_fill_read(f, n, &p)) > 0) {
        if (n + k > cap) {
            while (n + k > cap)
                cap *= 2;
            char *grown = realloc(out, cap);
            if (grown == NULL) {
                free(out);
                return NULL;
            }
            out = grown;
        }
        memcpy(out + n, p, k);
        n += k;
    }
    *len = n;
    return out;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* Shares the entry just stored with the other instances, for as long as it
 * may serve: fresh, then its stale windows. */
static void tier_put(struct conn *c)
{
    struct cache_lookup_req lr = lookup_req(c);
    struct cache_entry *e = cache_lookup(c->store, &lr, NULL);
    if (e == NULL)
        return;
    int64_t ttl = e->ttl.fresh_ms - e->ttl.initial_age_ms +
                  max64(max64(e->ttl.swr_ms, e->ttl.sie_ms),
                        (int64_t)max64(c->rc->stale_while_revalidate_ms, c->rc->stale_if_error_ms));
    if (ttl > 0 && cache_tier_put(c->w->redis, e, ttl) != 0)
        STATS_INC(c->rstats->cache_redis_error);
    cache_entry_release(e);
}

static void publish_as(struct conn *c, unsigned status, const char *etag_value)
{
    struct cache_fill *f = c->fill;
    if (c->ttl.needs_json) {
        size_t len = 0;
        char *body = fill_body_copy(f, &len);
        int64_t ttl = body ? cache_decide_json(c->rc, body, len) : -1;
        free(body);
        if (ttl < 0) {
            fill_abort(c);
            return;
        }
        c->ttl.fresh_ms = ttl;
        c->ttl.needs_json = false;
    }
    char vary_key[2048] = "";
    if (c->rsf.vary[0] != '\0')
        cache_vary_key(c->rsf.vary, rq_header, c, vary_key, sizeof(vary_key));
    struct cache_entry meta = {
        .hash = c->key_hash,
        .key = c->key,
        .key_len = c->key_len,
        .url_off = c->url_off,
        .url_len = c->url_len,
        .vary = c->rsf.vary,
        .vary_key = vary_key,
        .status = status,
        .request_time_ms = c->t_sent_wall_ms,
        .response_time_ms = c->t_head_wall_ms,
        .ttl = c->ttl,
        /* without a Date the response time stands in (RFC 9110 6.6.1: a recipient may add one) */
        .date = c->rsf.date >= 0 ? c->rsf.date : c->t_head_wall_ms / 1000,
        .last_modified = c->rsf.last_modified,
        .etag = (char *)etag_value,
        .tags = c->rsf.tags,
    };
    int rc = cache_fill_finish(f, &meta);
    if (rc != 0)
        cache_fill_abort(f);
    cache_fill_release(f);
    c->fill = NULL;
    c->fill_on = false;
    if (rc == 0 && c->rc->cache->redis && c->w->redis != NULL)
        tier_put(c);
}

/* Fields a 304 does not replace in the stored head (RFC 9111 3.2): framing,
 * hop-by-hop, Age (recomputed), and what describes the stored bytes
 * themselves (their coding, digest and the validator they were chosen by). */
static bool keeps_stored(const char *name, size_t len)
{
    static const char *const keep[] = {"content-length", "transfer-encoding", "connection", "keep-alive",
                                       "proxy-connection", "te", "trailer", "upgrade", "age",
                                       "content-encoding", "content-md5", "etag", "content-range"};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
        if (strlen(keep[i]) == len && strncasecmp(keep[i], name, len) == 0)
            return true;
    return false;
}

static bool rs_has_field(const struct conn *c, const char *name, size_t len)
{
    for (unsigned i = 0; i < c->rs.n; i++) {
        size_t nl;
        const char *n = head_field_name(&c->rs, i, &nl);
        if (nl == len && strncasecmp(n, name, len) == 0)
            return true;
    }
    return false;
}

/* The stored head with the 304's fields in place of its own (RFC 9111
 * 4.3.4), into out; its length or 0 when it does not fit. */
static size_t merge_304(const struct conn *c, const struct cache_entry *e, char *out, size_t cap)
{
    size_t n = 0;
    const char *p = e->head, *end = e->head + e->head_len;
    bool first = true;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        const char *colon = first ? NULL : memchr(p, ':', (size_t)(next - p));
        bool replaced = colon && !keeps_stored(p, (size_t)(colon - p)) && rs_has_field(c, p, (size_t)(colon - p));
        if (!replaced) {
            if (n + (size_t)(next - p) > cap)
                return 0;
            memcpy(out + n, p, (size_t)(next - p));
            n += (size_t)(next - p);
        }
        first = false;
        p = next;
    }
    for (unsigned i = 0; i < c->rs.n; i++) {
        size_t nl, vl;
        const char *name = head_field_name(&c->rs, i, &nl);
        const char *value = head_field_value(&c->rs, i, &vl);
        if (keeps_stored(name, nl))
            continue;
        int k = snprintf(out + n, cap - n, "%.*s: %.*s\r\n", (int)nl, name, (int)vl, value);
        if (k < 0 || (size_t)k >= cap - n)
            return 0;
        n += (size_t)k;
    }
    return n;
}

/* Stores the freshened response as a new entry (the body copied from the old
 * one) when this request holds the key's fill. */
static void store_refreshed(struct conn *c, const struct cache_entry *e, const char *head, size_t len)
{
    if (c->fill == NULL)
        return;
    struct cache_response_facts f;
    cache_response_facts_init(&f, e->status, c->rc->ttl_header);
    const char *p = memchr(head, '\n', len), *end = head + len;
    for (p = p ? p + 1 : end; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        const char *colon = memchr(p, ':', (size_t)(next - p));
        if (colon != NULL) {
            const char *v = colon + 1;
            while (v < next && (*v == ' ' || *v == '\t'))
                v++;
            size_t vl = (size_t)(next - v);
            while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
                vl--;
            cache_response_facts_add(&f, p, (size_t)(colon - p), v, vl);
        }
        p = next;
    }
    c->t_head_wall_ms = wall_ms();
    if (!cache_decide_store(c->rc, &c->rqf, &f, c->t_sent_wall_ms, c->t_head_wall_ms, &c->ttl) || c->ttl.needs_json ||
        cache_fill_set_head(c->fill, head, len, e->is_chunked) != 0) {
        fill_abort(c);
        return;
    }
    for (size_t i = 0; i < e->nbody && c->fill != NULL; i++)
        if (cache_fill_append(c->fill, e->body[i].data, e->body[i].len) != 0) {
            cache_fill_release(c->fill);
            c->fill = NULL;
        }
    if (c->fill == NULL)
        return;
    c->rsf = f;
    c->fill_on = true;
    publish_as(c, e->status, e->etag);
}

/* The origin failed (an error status, refused, timed out): the stored
 * response answers instead (RFC 5861 stale-if-error). */
static void serve_stale_on_error(struct conn *c, const char *detail)
{
    struct cache_entry *e = c->entry;
    c->entry = NULL;
    c->x_cache = "STALE";
    c->cache_detail = detail;
    STATS_INC(c->rstats->cache_stale);
    serve_entry(c, e, false);
    cache_entry_release(e);
}

bool cached_response_done(struct conn *c)
{
    if (c->rs_revalidated) {
        struct cache_entry *e = c->entry;
        c->entry = NULL;
        c->x_cache = "REVALIDATED";
        c->cache_detail = "hit; fwd=stale; fwd-status=304";
        STATS_INC(c->rstats->cache_revalidated);
        struct buf *blk = buf_get();
        size_t len = merge_304(c, e, blk->data, BUF_SIZE);
        if (len > 0)
            store_refreshed(c, e, blk->data, len);
        else
            fill_abort(c);
        serve(c, e, len > 0 ? blk->data : NULL, len, cache_not_modified(e, &c->rqf));
        buf_unref(blk);
        cache_entry_release(e);
        return true;
    }
    if (c->rs_swallow) {
        serve_stale_on_error(c, "hit; fwd=stale; detail=stale-if-error");
        return true;
    }
    if (c->fill_on) {
        char etag[512];
        bool has_etag = head_get(&c->rs, "etag", etag, sizeof(etag));
        publish_as(c, c->rparser.status_code, has_etag ? etag : NULL);
    }
    return false;
}

bool cached_upstream_failed(struct conn *c)
{
    fill_abort(c);
    if (!may_serve_stale_on_error(c) || c->rs_head_sent)
        return false;
    serve_stale_on_error(c, "hit; fwd=stale; detail=stale-if-error");
    return true;
}

bool cached_upstream_unavailable(struct conn *c)
{
    fill_abort(c);
    const struct cache_entry *e = c->entry;
    if (e == NULL || c->rs_head_sent || e->ttl.no_cache || e->ttl.must_revalidate)
        return false;
    /* a stale answer beats none while the upstream is known to be down, up to
     * the route's max_stale */
    int64_t staleness = cache_entry_age(e, wall_ms()) * 1000 - e->ttl.fresh_ms;
    if (staleness > (int64_t)c->rc->max_stale_ms)
        return false;
    serve_stale_on_error(c, "hit; fwd=stale; detail=breaker-open");
    return true;
}

void cached_release(struct conn *c)
{
    leave_join(c);
    fill_abort(c);
    if (c->entry != NULL) {
        cache_entry_release(c->entry);
        c->entry = NULL;
    }
    c->rc = NULL;
    c->store = NULL;
    c->x_cache = NULL;
    c->rs_swallow = c->rs_revalidated = c->invalidate = false;
    c->t_sent_wall_ms = 0;
    c->t_head_wall_ms = 0;
}
