/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1.1 server side of a client connection and the life of a request
 * through it: parse (llhttp, strict), route, forward to an upstream
 * connection, stream the response back.
 *
 * One request at a time per connection: the parser pauses when a request's
 * head is complete (so nothing of its body is read before there is somewhere
 * to send it) and again when the request is complete (so pipelined requests
 * wait, unparsed, and their answers go out in order).  Bytes received but
 * not parsed yet stay in `pend`, a reference to their read block.
 *
 * Bodies move by reference: a slice of a read block is queued on the other
 * side's outq, one writev per read.  Backpressure: when the receiving side's
 * kernel-refused backlog passes OUT_HIGH_WATER the sending side stops
 * reading; it starts again when the backlog drops under OUT_LOW_WATER.
 *
 * Every state change happens outside llhttp callbacks: callbacks record and
 * pause, the code after llhttp_execute acts.  That keeps frees and re-entry
 * out of the parser.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/outq.h"
#include "common/strbuf.h"
#include "breaker/retry.h"
#include "proxy/conn.h"
#include "proxy/tlsgen.h"
#include "proxy/obs.h"
#include "proxy/iplimit.h"

#define OUT_HIGH_WATER (256 * 1024)
#define OUT_LOW_WATER (64 * 1024)
#define LINGER_MS 2000
/* An upstream head is bounded like a client's, with room to rewrite it. */
#define HEAD_STORE_MAX (BUF_SIZE - 4096)
#define UPSTREAM_MAX_HEADERS 256
/* A response retried is kept (head and body up to this) in case it is the
 * last real answer when the tries run out. */
#define SAVED_BODY_MAX (64 * 1024)

static const llhttp_settings_t request_settings;
static const llhttp_settings_t response_settings;

static void conn_read_start(struct conn *c);
static void conn_read_stop(struct conn *c);
static void conn_close(struct conn *c);
static void parse_pending(struct conn *c);
static void up_detach(struct conn *c, bool reusable);
static void up_read_start(struct conn *c);

/* ---- timers ---- */

static void on_conn_timer(uv_timer_t *t);

/* Every request sets a head timeout and then an idle timeout: restarting
 * the uv timer each time cost two heap updates per request (8% of a cache
 * hit).  So a timer that will fire no later than the new time is left
 * armed; when it fires early, on_conn_timer arms it again for the rest.
 * TK_NONE leaves it armed too: a firing then finds nothing to do. */
static void timer_set(struct conn *c, enum timer_kind kind, uint64_t ms)
{
    c->timer_kind = kind;
    if (kind == TK_NONE)
        return;
    if (ms == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = uv_now(&c->w->loop);
    c->timer_due = now + ms;
    if (uv_is_active((uv_handle_t *)&c->timer) && c->timer_armed <= c->timer_due)
        return;
    c->timer_armed = c->timer_due;
    uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

/* ---- local responses ---- */

static const char *reason_phrase(unsigned status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 501: return "Not Implemented";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static const char *process_time_name(const struct conn *c)
{
    return c->srv != NULL ? c->srv->process_time_header : "X-Process-Time";
}

char *put_uint_rev(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return end;
}

/* "Name: 0.412ms\r\n" — formatted by hand: it is on every response, and
 * printf's floating point showed in profiles. */
int process_time_line(const struct conn *c, char *dst, size_t cap)
{
    const char *name = process_time_name(c);
    if (name == NULL || c->t_start == 0)
        return (int)obs_response_lines(c, dst, cap);
    uint64_t us = (uv_hrtime() - c->t_start) / 1000;
    char num[32], *end = num + sizeof(num);
    char *p = put_uint_rev(end, us % 1000);
    while (end - p < 3)
        *--p = '0';
    *--p = '.';
    p = put_uint_rev(p, us / 1000);
    size_t nl = strlen(name), dl = (size_t)(end - p);
    if (nl + dl + 6 >= cap)
        return 0;
    memcpy(dst, name, nl);
    memcpy(dst + nl, ": ", 2);
    memcpy(dst + nl + 2, p, dl);
    memcpy(dst + nl + 2 + dl, "ms\r\n", 5); /* with the NUL */
    return (int)(nl + dl + 6 + obs_response_lines(c, dst + nl + dl + 6, cap - (nl + dl + 6)));
}

void count_status(struct conn *c, unsigned status)
{
    c->status = status;
    if (c->rstats != NULL)
        STATS_INC(c->rstats->status[status / 100 <= 5 ? status / 100 : 0]);
    else
        STATS_INC(c->w->proc->status[status / 100 <= 5 ? status / 100 : 0]);
}

bool client_is_http11(const struct conn *c)
{
    return c->http_major == 1 && c->http_minor >= 1;
}

/* Writes a complete response made here.  The connection closes after it when
 * asked, or when the request's body was not read (it cannot be skipped). */
static void respond_local(struct conn *c, unsigned status, const char *ctype, const char *body, size_t len,
                          bool close)
{
    if (!c->rq_body_done && c->rq_has_body)
        close = true;
    if (!c->rq_keepalive || c->w->is_draining || c->client_eof)
        close = true;
    c->want_close |= close;
    char head[1024];
    int n = snprintf(head, sizeof(head), "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n", status,
                     reason_phrase(status), ctype, len);
    n += process_time_line(c, head + n, sizeof(head) - n);
    if (c->extra_len > 0 && c->extra_len < sizeof(head) - (size_t)n - 64) {
        memcpy(head + n, c->extra_lines, c->extra_len); /* admission control: RateLimit-*, Retry-After */
        n += (int)c->extra_len;
    }
    n += snprintf(head + n, sizeof(head) - n, "%s\r\n",
                  c->want_close ? "Connection: close\r\n"
                  : (!client_is_http11(c) ? "Connection: keep-alive\r\n" : ""));
    outq_add_copy(&c->out, head, (size_t)n);
    if (c->method != HTTP_HEAD)
        outq_add_copy(&c->out, body, len);
    count_status(c, status);
    c->state = CS_LOCAL;
    c->rs_head_sent = true;
    c->rs_done = true;
    if (outq_flush(&c->out) != 0) {
        conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    req_done(c);
}

void respond_error(struct conn *c, unsigned status, const char *fmt, ...)
{
    char body[512];
    int n = snprintf(body, sizeof(body), "%u %s: ", status, reason_phrase(status));
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(body + n, sizeof(body) - n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(body) - 2)
        n = sizeof(body) - 2;
    body[n++] = '\n';
    respond_local(c, status, "text/plain", body, (size_t)n,
                  status == 400 || (status >= 413 && status < 500 && status != 429) || status == 501 ||
                      status == 505);
}

/* ---- closing ---- */

void conn_unref(struct conn *c)
{
    if (--c->open_handles > 0)
        return;
    struct worker *w = c->w;
    outq_dispose(&c->out);
    tls_destroy(c->tls);
    head_dispose(&c->rq);
    head_dispose(&c->rs);
    head_dispose(&c->saved_rs);
    strbuf_dispose(&c->saved_body);
    free(c->key);
    free(c);
    w->nconns--;
    atomic_fetch_sub_explicit(&proxy_info.connections, 1, memory_order_relaxed);
    STATS_ADD(w->proc->active, -1);
    worker_maybe_stop(w);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void req_release(struct conn *c)
{
    if (c->held != NULL) {
        held_release(c->held);
        c->held = NULL;
    }
    if (c->rstats != NULL) {
        STATS_ADD(c->rstats->active, -1);
        c->rstats = NULL;
    }
}

static void conn_close(struct conn *c)
{
    if (c->is_closing)
        return;
    c->is_closing = true;
    cached_release(c);
    if (c->lstage > 0 || c->is_lqueued)
        limited_done(c);
    if (c->uc != NULL)
        up_detach(c, false);
    if (c->pend != NULL) {
        buf_unref(c->pend);
        c->pend = NULL;
    }
    req_release(c);
    if (c->ip_counted)
        iplimit_release(c->peer);
    proxy_gen_unref(c->gen);
    list_remove(&c->link);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* A broken exchange: the client must not take what it got for a complete
 * response, so the connection closes at once. */
void conn_abort(struct conn *c, enum stats_error why)
{
    if (c->is_dispatched && c->t_start != 0 && !c->is_closing && c->state != CS_LINGER)
        obs_request_end(c, (uv_hrtime() - c->t_start) / 1000);
    if (c->rstats != NULL)
        STATS_INC(c->rstats->errors[why]);
    else
        STATS_INC(c->w->proc->errors[why]);
    if (c->rs_head_sent && !c->rs_done && c->status == 0)
        count_status(c, 0);
    conn_close(c);
}

static void linger_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static _Thread_local char sink[4096];
    *b = uv_buf_init(sink, sizeof(sink));
}

static void linger_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    if (nread < 0)
        conn_close(s->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (c->is_closing)
        return;
    if (status != 0 || c->client_eof) {
        conn_close(c);
        return;
    }
    /* Closing a socket with unread input makes the kernel send a reset, which
     * can destroy the response before the client reads it: read and drop what
     * the client still sends, for a short while. */
    c->state = CS_LINGER;
    timer_set(c, TK_LINGER, LINGER_MS);
    if (uv_read_start((uv_stream_t *)&c->tcp, linger_alloc, linger_read) != 0)
        conn_close(c);
}

/* Closes after everything queued has been written. */
static void conn_close_gracefully(struct conn *c)
{
    if (c->is_closing || c->state == CS_LINGER)
        return;
    c->state = CS_LINGER;
    conn_read_stop(c);
    if (c->pend != NULL) {
        buf_unref(c->pend);
        c->pend = NULL;
    }
    timer_set(c, TK_LINGER, c->srv ? c->srv->send_timeout_ms : 60000);
    if (c->tls != NULL)
        tls_shutdown(c->tls);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

/* ---- the request is over: stats, then the next one or close ---- */

static void req_reset(struct conn *c)
{
    head_reset(&c->rq);
    head_reset(&c->rs);
    c->route = NULL;
    c->rt = NULL;
    c->target = NULL;
    c->err_status = 0;
    c->err_reason = NULL;
    c->t_start = 0;
    c->status = 0;
    c->rq_keepalive = c->rq_has_body = c->rq_chunked = c->rq_expect = c->rq_upgrade = false;
    c->rq_body_done = c->rq_trailers = false;
    c->rq_body_bytes = c->bytes_in = 0;
    c->rs_started = c->rs_head_sent = c->rs_done = c->rs_interim = c->rs_upgrade = c->rs_trailers = false;
    c->rs_chunk_out = c->rs_rechunk = false;
    c->up_reused = c->retried = false;
    c->is_dispatched = false;
    c->group = NULL;
    c->tries = 0;
    c->tried = 0;
    c->t_deadline = 0;
    c->rs_retry = c->keep_body = c->body_unkept = c->has_saved = false;
    head_reset(&c->saved_rs);
    strbuf_dispose(&c->saved_body);
    c->idem_key[0] = '\0';
    c->host[0] = '\0';
    c->extra_len = 0;
    if (c->obs_on) {
        c->obs_on = false;
        c->request_id[0] = '\0';
        c->t_dispatch = c->t_forward = c->t_connected = 0;
    }
    c->t_head = 0;
    c->breaker = c->limit = NULL;
}

void req_done(struct conn *c)
{
    if (c->lstage > 0 || c->is_lqueued)
        limited_done(c);
    uint64_t us = (uv_hrtime() - c->t_start) / 1000;
    obs_request_end(c, us); /* before cached_release: the record reads X-Cache */
    cached_release(c);
    struct stats_counters *rs = c->rstats;
    if (rs != NULL) {
        hist_record(&rs->latency, us);
        STATS_ADD(rs->bytes_in, c->bytes_in);
        STATS_ADD(rs->bytes_out, c->out.bytes_written - c->bytes_out_start);
    }
    req_release(c);
    if (c->uc != NULL)
        up_detach(c, false);
    if (c->want_close || c->w->is_draining || c->client_eof) {
        conn_close_gracefully(c);
        return;
    }
    req_reset(c);
    c->state = CS_IDLE;
    llhttp_resume(&c->parser);
    /* a client that pipelines without reading would pile up answers (cache
     * hits, local ones) here: the next request waits until they drain */
    if (outq_backlog(&c->out) > OUT_HIGH_WATER) {
        c->pipeline_wait = true;
        conn_read_stop(c);
        timer_set(c, TK_SEND, c->srv->send_timeout_ms);
        return;
    }
    timer_set(c, TK_IDLE, c->srv->keepalive_timeout_ms);
    parse_pending(c);
}

/* ---- routing ---- */

/* The length of the name part of a Host value ("[::1]:80" -> "[::1]"). */
static size_t host_name_len(const char *host)
{
    const char *end = host[0] == '[' ? strchr(host, ']') : NULL;
    const char *colon = strchr(end ? end : host, ':');
    return colon ? (size_t)(colon - host) : strlen(host);
}

static bool host_matches(const char *pattern, const char *host)
{
    size_t hl = host_name_len(host);
    if (pattern[0] == '*' && pattern[1] == '.') {
        size_t pl = strlen(pattern + 1);
        return hl > pl && strncmp(host + hl - pl, pattern + 1, pl) == 0;
    }
    return strlen(pattern) == hl && strncmp(pattern, host, hl) == 0;
}

static const struct conf_server *pick_server(const struct conf *conf, const char *addr, const char *host)
{
    const struct conf_server *first = NULL;
    for (size_t i = 0; i < conf->nservers; i++) {
        const struct conf_server *s = &conf->servers[i];
        bool on_addr = false;
        for (size_t j = 0; j < s->nlistens && !on_addr; j++)
            on_addr = strcmp(s->listens[j].text, addr) == 0;
        if (!on_addr)
            continue;
        if (first == NULL)
            first = s;
        for (size_t j = 0; j < s->nnames; j++)
            if (host_matches(s->names[j], host))
                return s;
    }
    return first;
}

static const struct conf_route *pick_route(const struct conf_server *s, const char *path, size_t len)
{
    for (size_t i = 0; i < s->nroutes; i++) {
        const struct conf_route *r = &s->routes[i];
        if (r->prefix_len <= len && memcmp(r->prefix, path, r->prefix_len) == 0)
            return r;
    }
    return NULL;
}

/* ---- forwarding to the upstream ---- */

static void up_on_timer(uv_timer_t *t);
static void up_on_read(struct upstream_conn *uc, ssize_t nread, struct buf *blk);
static void up_on_write_done(struct outq *q, int status);
static void up_send_request(struct conn *c);

static struct stats_counters *server_stats(struct conn *c)
{
    return stats_slot(c->target->srv->stats, c->w->id);
}

static void up_attach(struct conn *c, struct upstream_conn *uc)
{
    c->uc = uc;
    uc->owner = c;
    uc->out.owner = c;
    uc->out.done_cb = up_on_write_done;
    STATS_ADD(server_stats(c)->active, 1);
    atomic_fetch_add_explicit(&c->target->srv->inflight, 1, memory_order_relaxed);
}

static void log_transition(const struct upstream_server *srv, const struct breaker_transition *tr)
{
    if (!tr->changed)
        return;
    LOG_AT(tr->to == BREAKER_CLOSED ? LOG_INFO : LOG_WARN, "breaker", "%s: %s -> %s", srv->key,
            breaker_state_name(tr->from), breaker_state_name(tr->to));
}

/* The verdict on the current try, for its server's breaker: once per try. */
static void try_report(struct conn *c, enum breaker_outcome out)
{
    if (!c->try_open)
        return;
    c->try_open = false;
    const struct conf_breaker *cb = &c->group->conf->breaker;
    struct breaker_transition tr = {0};
    breaker_report(&c->target->srv->breaker, cb, uv_now(&c->w->loop), c->admit, out, &tr);
    log_transition(c->target->srv, &tr);
}

/* Lets go of the upstream connection: back to the pool when the exchange
 * ended cleanly, else closed. */
static void up_detach(struct conn *c, bool reusable)
{
    struct upstream_conn *uc = c->uc;
    c->uc = NULL;
    try_report(c, BREAKER_CANCEL);
    STATS_ADD(server_stats(c)->active, -1);
    atomic_fetch_sub_explicit(&c->target->srv->inflight, 1, memory_order_relaxed);
    if (!reusable)
        uv_timer_stop(&uc->timer); /* upstream_pool_put restarts it otherwise */
    uc->on_read = NULL;
    if (c->up_parsing != NULL) {
        buf_unref(c->up_parsing);
        c->up_parsing = NULL;
    }
    if (reusable) {
        const struct conf_upstream *cu = c->group->conf;
        upstream_pool_put(uc, cu->keepalive, cu->keepalive_timeout_ms);
    } else {
        upstream_conn_close(uc);
    }
}

static const char *upstream_error_text(int err)
{
    switch (err) {
    case UV_ECONNREFUSED: return "connection refused";
    case UV_ETIMEDOUT: return "timed out";
    case UV_ECONNRESET: return "connection reset";
    case UV_EOF: return "connection closed";
    case UV_EHOSTUNREACH: return "host unreachable";
    case UV_ENETUNREACH: return "network unreachable";
    default: return uv_strerror(err);
    }
}

static bool method_is_idempotent(unsigned m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_TRACE || m == HTTP_PUT ||
           m == HTTP_DELETE;
}

/* ---- tries: retries with backoff, the deadline, replays ---- */

/* The condition of `retry on=` a failure falls under (0: never retried). */
static unsigned retry_condition(enum stats_error why)
{
    switch (why) {
    case STATS_ERR_CONNECT:
    case STATS_ERR_CONNECT_TIMEOUT: return CONF_RETRY_CONNECT;
    case STATS_ERR_HEADER_TIMEOUT: return CONF_RETRY_TIMEOUT;
    case STATS_ERR_UPSTREAM_CLOSED:
    case STATS_ERR_BAD_RESPONSE: return CONF_RETRY_RESET;
    default: return 0;
    }
}

/* A per-try timeout cut short by what is left of the deadline. */
static uint64_t try_timeout_ms(const struct conn *c, uint64_t ms)
{
    if (c->t_deadline == 0)
        return ms;
    uint64_t now = uv_hrtime();
    uint64_t left = c->t_deadline > now ? (c->t_deadline - now) / 1000000 + 1 : 1;
    return left < ms ? left : ms;
}

static bool deadline_passed(const struct conn *c)
{
    return c->t_deadline != 0 && uv_hrtime() >= c->t_deadline;
}

/* May the request be tried again after this failure (cond) or this status
 * (cond 0)?  On yes, the budget is charged and retry_delay_ms set: full
 * jitter backoff, or the server's Retry-After when longer.  Every "no" that
 * is not simply "not configured" is counted, so a refused retry is never
 * silent. */
static bool retry_plan(struct conn *c, unsigned cond, unsigned status, int64_t retry_after)
{
    const struct conf_upstream *cu = c->group->conf;
    const struct conf_retry *r = &cu->retry;
    if (c->tries > r->tries || c->rs_head_sent)
        return false;
    if (cond != 0 ? !(r->on & cond) : !CONF_STATUS_HAS(&r->on_status, status))
        return false;
    /* a refused or timed-out connect never reached the upstream: always safe */
    bool reached = cond != CONF_RETRY_CONNECT;
    if (reached && !method_is_idempotent(c->method) && !c->route->retry_non_idempotent) {
        STATS_INC(c->rstats->retry_unsafe);
        return false;
    }
    if (reached && c->rq_has_body && (!c->rq_body_done || c->body_unkept || c->held == NULL)) {
        STATS_INC(c->rstats->retry_unreplayable);
        LOG_RATELIMITED(LOG_INFO, "proxy", "%s: not retried: the request body went upstream without a copy (over "
                        "retry_body_max or not complete)", c->target->srv->key);
        return false;
    }
    uint64_t delay = backoff_full_jitter(r->backoff_base_ms, r->backoff_cap_ms, c->tries - 1, retry_random());
    if (retry_after > 0 && (uint64_t)retry_after > delay) {
        /* without a deadline a wait past the header timeout is not worth it:
         * the client gets the answer with its Retry-After instead */
        if (c->t_deadline == 0 && (uint64_t)retry_after > cu->header_timeout_ms)
            return false;
        delay = (uint64_t)retry_after;
    }
    if (c->t_deadline != 0 && uv_hrtime() + delay * 1000000 >= c->t_deadline) {
        STATS_INC(c->rstats->retry_deadline);
        return false;
    }
    if (!retry_budget_take(&c->group->budget, r->budget_pct, r->budget_min_per_s, uv_now(&c->w->loop))) {
        STATS_INC(c->rstats->retry_budget_exhausted);
        LOG_RATELIMITED(LOG_WARN, "proxy", "upstream %s: retry budget exhausted", cu->name);
        return false;
    }
    c->retry_delay_ms = delay;
    return true;
}

/* The next try starts after the planned wait (the conn's own timer: the
 * request is complete or unread, so no client timer runs meanwhile). */
static void retry_schedule(struct conn *c)
{
    c->state = CS_WAIT;
    STATS_INC(c->rstats->retries);
    timer_set(c, TK_RETRY, c->retry_delay_ms ? c->retry_delay_ms : 1);
}

/* The tries ran out after a response that was kept aside: it is the last
 * real answer, so the client gets it rather than a made-up error. */
static void respond_saved(struct conn *c)
{
    char extra[1024];
    int n = process_time_line(c, extra, sizeof(extra));
    if (c->extra_len > 0 && n + c->extra_len < sizeof(extra) - 64) {
        memcpy(extra + n, c->extra_lines, c->extra_len); /* RateLimit-* (limited.c) */
        n += (int)c->extra_len;
        extra[n] = '\0';
    }
    bool has_length = head_get(&c->saved_rs, "content-length", (char[24]){0}, 24);
    if (!has_length)
        n += snprintf(extra + n, sizeof(extra) - n, "Content-Length: %zu\r\n", c->saved_body.len);
    if (!c->rq_keepalive || c->w->is_draining || c->client_eof || !c->rq_body_done)
        c->want_close = true;
    struct reply_head rh = {
        .status = c->saved_status,
        .ops = c->route->resp_ops,
        .nops = c->route->nresp_ops,
        .via = c->srv->via,
        .close = c->want_close,
        .keepalive_10 = !client_is_http11(c) && !c->want_close,
        .extra = extra,
    };
    struct buf *blk = buf_get();
    size_t len = head_build_response(&c->saved_rs, &rh, blk->data, BUF_SIZE);
    if (len == 0) {
        buf_unref(blk);
        respond_error(c, 502, "upstream %s: the last response was too large to pass on", c->target->srv->key);
        return;
    }
    outq_add_ref(&c->out, blk, blk->data, len);
    buf_unref(blk);
    if (c->method != HTTP_HEAD && c->saved_body.len > 0)
        outq_add_copy(&c->out, c->saved_body.data, c->saved_body.len);
    count_status(c, c->saved_status);
    c->state = CS_LOCAL;
    c->rs_head_sent = c->rs_done = true;
    if (outq_flush(&c->out) != 0) {
        conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    req_done(c);
}

/* The upstream failed before a response head reached the client.  A request
 * sent on a reused keep-alive connection that the origin closed meanwhile is
 * resent once on a new connection when that is safe: idempotent, and no body
 * byte was consumed from the client (this resend is not a try: the server
 * never saw the request).  Else another try when `retry` allows it; else the
 * last real response kept aside, or an error naming the cause. */
static void up_fail(struct conn *c, enum stats_error why, int err)
{
    struct stats_counters *ss = server_stats(c);
    char tls_why[200] = "";
    if (why == STATS_ERR_TLS)
        snprintf(tls_why, sizeof(tls_why), "%s", upstream_conn_tls_error(c->uc));
    bool stale = c->up_reused && !c->rs_started && !c->retried && method_is_idempotent(c->method) &&
                 !c->rq_has_body && (why == STATS_ERR_UPSTREAM_CLOSED);
    if (stale) {
        up_detach(c, false);
        c->retried = true;
        c->tries--;
        STATS_INC(ss->retries_idle);
        req_forward(c);
        return;
    }
    try_report(c, BREAKER_FAILURE);
    if (why != STATS_ERR_DEADLINE)
        upstream_server_failure(c->target->srv, c->group->conf, uv_now(&c->w->loop));
    up_detach(c, false);
    STATS_INC(ss->errors[why]);
    if (c->rstats != NULL)
        STATS_INC(c->rstats->errors[why]);
    const char *name = c->target->srv->key;
    LOG_RATELIMITED(LOG_WARN, "proxy", "upstream %s: %s", name,
                    tls_why[0] ? tls_why : upstream_error_text(err));
    if (!c->rs_head_sent && retry_plan(c, retry_condition(why), 0, 0)) {
        retry_schedule(c);
        return;
    }
    if (c->rc != NULL && cached_upstream_failed(c))
        return;
    if (c->rs_head_sent) {
        conn_abort(c, why);
        return;
    }
    if (c->has_saved) {
        respond_saved(c);
        return;
    }
    switch (why) {
    case STATS_ERR_CONNECT_TIMEOUT:
        respond_error(c, 504, "upstream %s: connect timed out (try %u)", name, c->tries);
        break;
    case STATS_ERR_HEADER_TIMEOUT:
        respond_error(c, 504, "upstream %s: no response head within the header timeout (try %u)", name, c->tries);
        break;
    case STATS_ERR_DEADLINE:
        respond_error(c, 504, "upstream %s: the route's deadline of %" PRIu64 " ms passed (try %u)", name,
                      c->route->deadline_ms, c->tries);
        break;
    case STATS_ERR_BAD_RESPONSE:
        respond_error(c, 502, "upstream %s: malformed response (try %u)", name, c->tries);
        break;
    case STATS_ERR_CONNECT:
        respond_error(c, 502, "upstream %s: connect failed: %s (try %u)", name, upstream_error_text(err), c->tries);
        break;
    case STATS_ERR_TLS:
        respond_error(c, 502, "upstream %s: TLS handshake failed: %s", name, tls_why);
        break;
    default:
        respond_error(c, 502, "upstream %s: %s before a complete response head (try %u)", name,
                      upstream_error_text(err), c->tries);
        break;
    }
    /* the request may not have been read to its end: do not parse its rest */
    if (!c->rq_body_done)
        c->want_close = true;
}

static void up_on_connect(struct upstream_conn *uc, int status)
{
    struct conn *c = uc->owner;
    if (c == NULL)
        return;
    if (status != 0) {
        up_fail(c, upstream_conn_tls_error(uc) != NULL ? STATS_ERR_TLS : STATS_ERR_CONNECT, status);
        return;
    }
    if (c->obs_on)
        c->t_connected = uv_hrtime();
    up_send_request(c);
}

/* The first try of a request: its deadline, its share of the retry budget,
 * and whether its body is copied for replays. */
static void tries_begin(struct conn *c)
{
    c->group = c->rt->group;
    if (c->route->deadline_ms != 0)
        c->t_deadline = c->t_start + c->route->deadline_ms * 1000000;
    const struct conf_retry *r = &c->group->conf->retry;
    if (r->tries == 0)
        return;
    retry_budget_request(&c->group->budget, uv_now(&c->w->loop));
    bool replayable = method_is_idempotent(c->method) || c->route->retry_non_idempotent;
    bool after_send = (r->on & (CONF_RETRY_TIMEOUT | CONF_RETRY_RESET)) != 0;
    for (unsigned i = 0; i < 10 && !after_send; i++)
        after_send = r->on_status.bits[i] != 0;
    if (!replayable || !after_send)
        return;
    if (c->rq_has_body && c->held == NULL) {
        bool sized = (c->parser.flags & F_CONTENT_LENGTH) && !c->rq_chunked;
        c->keep_body = !sized || c->parser.content_length <= r->body_max;
        c->body_unkept = !c->keep_body;
    }
    if (!method_is_idempotent(c->method)) {
        /* the same key on every try lets the upstream drop a duplicate */
        char given[sizeof(c->idem_key)];
        if (!head_get(&c->rq, "idempotency-key", given, sizeof(given))) {
            uint64_t a = retry_random(), b = retry_random();
            snprintf(c->idem_key, sizeof(c->idem_key), "sluice-%016" PRIx64 "%016" PRIx64, a, b);
        }
    }
}

/* Every server of the group is open: a stale answer, else the fallback
 * upstream, else a 503 that says when to come back. */
static bool all_open(struct conn *c, uint64_t now)
{
    if (c->rc != NULL && cached_upstream_unavailable(c))
        return true;
    if (c->rt->fallback != NULL && c->group != c->rt->fallback) {
        c->group = c->rt->fallback;
        c->tried = 0;
        return false;
    }
    uint64_t wait = UINT64_MAX;
    for (size_t i = 0; i < c->group->ntargets; i++) {
        uint64_t w = breaker_wait_ms(&c->group->targets[i].srv->breaker, now);
        wait = w < wait ? w : wait;
    }
    STATS_INC(c->rstats->errors[STATS_ERR_BREAKER_OPEN]);
    c->breaker = "open";
    int n = snprintf(c->extra_lines + c->extra_len, sizeof(c->extra_lines) - c->extra_len, "Retry-After: %" PRIu64 "\r\n",
                     wait == UINT64_MAX ? 1 : (wait + 999) / 1000);
    if (n > 0 && (size_t)n < sizeof(c->extra_lines) - c->extra_len)
        c->extra_len += (size_t)n;
    respond_error(c, 503, "upstream %s: every server's circuit breaker is open", c->group->conf->name);
    return true;
}

void req_forward(struct conn *c)
{
    c->state = CS_WAIT;
    if (c->tries == 0)
        tries_begin(c);
    if (c->obs_on)
        c->t_forward = uv_hrtime();
    uint64_t now = uv_now(&c->w->loop);
    for (;;) {
        struct upstream_group *g = c->group;
        const struct conf_breaker *cb = &g->conf->breaker;
        uint64_t denied = 0;
        c->target = NULL;
        while ((c->target = upstream_group_pick(g, c->tried, denied, now)) != NULL) {
            struct breaker_transition tr = {0};
            c->admit = breaker_admit(&c->target->srv->breaker, cb, now, &tr);
            log_transition(c->target->srv, &tr);
            size_t index = (size_t)(c->target - g->targets);
            if (c->admit != BREAKER_DENY)
                break;
            if (index >= 64) { /* past what the set can hold: as if none were left */
                c->target = NULL;
                break;
            }
            denied |= 1ull << index;
        }
        if (c->target != NULL)
            break;
        if (all_open(c, now))
            return;
    }
    c->try_open = c->group->conf->breaker.enabled;
    if (c->try_open)
        c->breaker = breaker_state_name(breaker_state(&c->target->srv->breaker, now));
    c->tries++;
    if (c->tries > 1)
        STATS_INC(server_stats(c)->retries);
    size_t index = (size_t)(c->target - c->group->targets);
    if (index < 64)
        c->tried |= 1ull << index;
    c->rs_retry = false;
    c->rs_started = false;
    head_reset(&c->rs);
    const struct conf_upstream *cu = c->group->conf;
    struct upstream_conn *uc = c->retried ? NULL : upstream_pool_take(c->w->pool, c->target);
    if (uc != NULL) {
        c->up_reused = true;
        up_attach(c, uc);
        STATS_INC(server_stats(c)->pool_reuse);
        up_send_request(c);
        return;
    }
    c->up_reused = false;
    int err = 0;
    uc = upstream_conn_connect(c->w->pool, c->target, up_on_connect, c, &err);
    if (uc == NULL) {
        try_report(c, BREAKER_FAILURE);
        STATS_INC(server_stats(c)->errors[STATS_ERR_CONNECT]);
        respond_error(c, 502, "upstream %s: connect failed: %s", c->target->srv->key, upstream_error_text(err));
        return;
    }
    up_attach(c, uc);
    STATS_INC(server_stats(c)->pool_new);
    uv_timer_start(&uc->timer, up_on_timer, try_timeout_ms(c, cu->connect_timeout_ms), 0);
}

/* ---- held request bodies ---- */

struct held_body *held_new(size_t cap)
{
    struct held_body *h = malloc(sizeof(*h) + cap);
    if (h != NULL)
        *h = (struct held_body){.refs = 1, .cap = cap};
    return h;
}

bool held_append(struct held_body **hp, const char *p, size_t len, size_t max)
{
    struct held_body *h = *hp;
    size_t have = h != NULL ? h->len : 0;
    if (len > max - have)
        return false;
    if (h == NULL || len > h->cap - h->len) {
        /* only while the body is read, before any batch refers to it */
        size_t cap = h != NULL ? h->cap * 2 : 16384;
        while (cap < have + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        struct held_body *grown = realloc(h, sizeof(*h) + cap);
        if (grown == NULL)
            return false;
        if (h == NULL)
            *grown = (struct held_body){.refs = 1};
        grown->cap = cap;
        *hp = h = grown;
    }
    memcpy(h->data + h->len, p, len);
    h->len += len;
    return true;
}

static void held_ref(void *p)
{
    ((struct held_body *)p)->refs++;
}

void held_release(void *p)
{
    struct held_body *h = p;
    if (--h->refs == 0)
        free(h);
}

static void up_send_request(struct conn *c)
{
    struct upstream_conn *uc = c->uc;
    const struct conf_upstream *cu = c->group->conf;
    struct buf *blk = buf_get();
    char extra[1024];
    const char *validators = c->rc != NULL ? cached_request_extra(c, extra, sizeof(extra)) : NULL;
    if (c->idem_key[0] != '\0') {
        size_t used = validators != NULL ? strlen(extra) : 0;
        snprintf(extra + used, sizeof(extra) - used, "Idempotency-Key: %s\r\n", c->idem_key);
    }
    struct forward_head fh = {
        .drop_conditional = c->entry != NULL,
        .extra = validators != NULL || c->idem_key[0] != '\0' ? extra : NULL,
        .method = llhttp_method_name(c->method),
        .host = c->host[0] ? c->host : (c->target->tls_host ? c->target->tls_host : c->target->conf->name),
        .client_ip = c->peer,
        .proto = c->tls != NULL ? "https" : "http",
        .via = c->srv->via,
        .ops = c->route->req_ops,
        .nops = c->route->nreq_ops,
        .has_body = c->rq_has_body,
        .chunked = c->rq_chunked,
        .upgrade = c->rq_upgrade,
        .request_id = c->request_id[0] ? c->request_id : NULL,
    };
    size_t n = head_build_request(&c->rq, &fh, blk->data, BUF_SIZE);
    if (n == 0) {
        buf_unref(blk);
        up_detach(c, false);
        respond_error(c, 431, "request head too large to forward");
        return;
    }
    outq_add_ref(&uc->out, blk, blk->data, n);
    buf_unref(blk);
    if (c->held != NULL && c->rq_body_done) {
        /* a body read whole before this try: for the cache key, or kept for a replay */
        if (c->rq_chunked && c->held->len > 0) {
            char line[32];
            int len = snprintf(line, sizeof(line), "%zx\r\n", c->held->len);
            outq_add_copy(&uc->out, line, (size_t)len);
        }
        outq_add_held(&uc->out, c->held->data, c->held->len, held_ref, held_release, c->held);
        if (c->rq_chunked)
            outq_add_static(&uc->out, c->held->len > 0 ? "\r\n0\r\n\r\n" : "0\r\n\r\n",
                            c->held->len > 0 ? 7 : 5);
    }
    uc->requests++;
    c->state = CS_FORWARD;
    c->t_sent = uv_hrtime();
    STATS_INC(server_stats(c)->requests);
    llhttp_init(&c->rparser, HTTP_RESPONSE, &response_settings);
    c->rparser.data = c;
    up_read_start(c);
    uv_timer_start(&uc->timer, up_on_timer, try_timeout_ms(c, cu->header_timeout_ms), 0);
    if (c->rq_expect && !c->rq_body_done && client_is_http11(c) && c->pend == NULL) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        outq_add_static(&c->out, cont, sizeof(cont) - 1);
        outq_flush(&c->out);
    }
    /* the body follows from the parser; a complete request keeps it paused
     * until its response is done (pipelined requests wait their turn) */
    if (!c->rq_body_done)
        llhttp_resume(&c->parser);
    if (outq_flush(&uc->out) != 0) {
        up_fail(c, STATS_ERR_UPSTREAM_CLOSED, UV_EPIPE);
        return;
    }
    parse_pending(c);
}

static void up_read_start(struct conn *c)
{
    c->up_read_paused_bp = false;
    c->uc->on_read = up_on_read;
    if (upstream_conn_read_start(c->uc) != 0)
        up_fail(c, STATS_ERR_UPSTREAM_CLOSED, UV_EPIPE);
}

static void up_on_timer(uv_timer_t *t)
{
    struct upstream_conn *uc = t->data;
    struct conn *c = uc->owner;
    if (c == NULL)
        return;
    if (!c->rs_head_sent && deadline_passed(c)) {
        up_fail(c, STATS_ERR_DEADLINE, UV_ETIMEDOUT);
    } else if (c->state == CS_WAIT) {
        up_fail(c, STATS_ERR_CONNECT_TIMEOUT, UV_ETIMEDOUT);
    } else if (!c->rq_body_done && !c->rs_started) {
        /* the upstream cannot answer a request it has not fully received:
         * a slow client is client_body_timeout's business */
        uv_timer_start(&uc->timer, up_on_timer, try_timeout_ms(c, c->group->conf->header_timeout_ms), 0);
    } else if (!c->rs_head_sent)
        up_fail(c, STATS_ERR_HEADER_TIMEOUT, UV_ETIMEDOUT);
    else
        up_fail(c, STATS_ERR_IDLE_TIMEOUT, UV_ETIMEDOUT);
}

/* The request body streams to the upstream: when it cannot keep up, stop
 * reading the client until it has drained. */
static void up_on_write_done(struct outq *q, int status)
{
    struct conn *c = q->owner;
    if (c == NULL || c->is_closing)
        return;
    if (status != 0 && status != UV_ECANCELED) {
        if (c->uc != NULL && !c->rs_done)
            up_fail(c, STATS_ERR_UPSTREAM_CLOSED, status);
        return;
    }
    if (c->read_paused_bp && c->uc != NULL && outq_backlog(&c->uc->out) <= OUT_LOW_WATER) {
        c->read_paused_bp = false;
        if (c->state == CS_TUNNEL)
            conn_read_start(c);
        else
            parse_pending(c);
    }
}

/* ---- the response ---- */

static void resp_write_head(struct conn *c)
{
    c->t_head = uv_hrtime();
    unsigned status = c->rparser.status_code;
    bool no_body = c->method == HTTP_HEAD || status == 204 || status == 304 || (status >= 100 && status < 200);
    bool has_length = (c->rparser.flags & F_CONTENT_LENGTH) != 0;
    bool chunked_in = (c->rparser.flags & F_CHUNKED) != 0;
    if (!no_body && !has_length) {
        if (client_is_http11(c)) {
            c->rs_chunk_out = true;
            c->rs_rechunk = !chunked_in;
        } else {
            /* an HTTP/1.0 client learns the end of the body from the close */
            c->want_close = true;
        }
    }
    if (!c->rq_keepalive || c->w->is_draining || c->client_eof)
        c->want_close = true;
    if (c->rs_upgrade)
        c->want_close = false;
    char extra[1024];
    size_t nextra = c->rc != NULL ? cached_response_head(c, extra, sizeof(extra)) : 0;
    extra[nextra] = '\0';
    if (c->rs_swallow || c->rs_revalidated)
        return; /* a stored response answers once this one is over */
    nextra += (size_t)process_time_line(c, extra + nextra, sizeof(extra) - nextra);
    if (c->extra_len > 0 && nextra + c->extra_len < sizeof(extra))
        memcpy(extra + nextra, c->extra_lines, c->extra_len + 1); /* RateLimit-* (limited.c) */
    const char *ptime = extra;
    struct reply_head rh = {
        .status = status,
        .ops = c->route->resp_ops,
        .nops = c->route->nresp_ops,
        .via = c->srv->via,
        .chunked = c->rs_chunk_out,
        .upgrade = c->rs_upgrade,
        .close = c->want_close,
        .keepalive_10 = !client_is_http11(c) && !c->want_close,
        .extra = ptime,
        .drop_request_id = c->request_id[0] != '\0',
    };
    struct buf *blk = buf_get();
    size_t n = head_build_response(&c->rs, &rh, blk->data, BUF_SIZE);
    if (n > 0)
        outq_add_ref(&c->out, blk, blk->data, n);
    buf_unref(blk);
    c->rs_head_sent = n > 0;
    if (n > 0)
        count_status(c, status);
    hist_record(&server_stats(c)->latency, (c->t_head - c->t_sent) / 1000);
    STATS_INC(server_stats(c)->status[status / 100 <= 5 ? status / 100 : 0]);
}

static int rs_on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    c->rs_started = true;
    head_start(&c->rs, HEAD_STORE_MAX, UPSTREAM_MAX_HEADERS);
    return 0;
}

static int rs_on_status(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    /* reason-phrase: HTAB, SP, VCHAR, obs-text (RFC 9112 4) */
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)at[i] < ' ' && at[i] != '\t') || at[i] == 0x7f)
            return HPE_USER;
    return head_add(&c->rs, HEAD_FIRST, at, len) == 0 ? 0 : HPE_USER;
}

static int rs_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->rs_trailers)
        return 0;
    if (!head_token_ok(at, len))
        return HPE_USER;
    return head_add(&c->rs, HEAD_NAME, at, len) == 0 ? 0 : HPE_USER;
}

static int rs_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->rs_trailers)
        return 0;
    /* obs-fold: never passed on to a client (spotted as in rq_on_header_value) */
    if (c->rs.last == HEAD_VALUE && at != c->rs_value_end)
        return HPE_USER;
    if (memchr(at, '\r', len) != NULL || memchr(at, '\n', len) != NULL)
        return HPE_USER;
    c->rs_value_end = at + len;
    return head_add(&c->rs, HEAD_VALUE, at, len) == 0 ? 0 : HPE_USER;
}

static int rs_on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->rs_trailers)
        return 0;
    return c->rs.last == HEAD_NAME && c->rs.fields[c->rs.n - 1].name_len > 0 ? 0 : HPE_USER;
}

static int rs_on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    head_field_done(&c->rs);
    return 0;
}

static int64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A 429 tells when the quota resets: Retry-After, or the x-ratelimit-reset*
 * fields AI APIs send (the latest of them); -1 when it does not say. */
static int64_t quota_reset_ms(const struct conn *c, int64_t retry_after, int64_t wall)
{
    static const char *const names[] = {"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"};
    int64_t reset = retry_after;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char v[128];
        if (head_get(&c->rs, names[i], v, sizeof(v))) {
            int64_t r = ratelimit_reset_ms(v, strlen(v), wall);
            reset = r > reset ? r : reset;
        }
    }
    return reset;
}

/* A final response head from the current try: its latency for the balancer,
 * its verdict for the breaker, and whether the request is tried again
 * instead (then true: the response is kept aside, not sent). */
static bool try_response(struct conn *c, unsigned status)
{
    struct upstream_server *srv = c->target->srv;
    const struct conf_upstream *cu = c->group->conf;
    upstream_server_success(srv, (uv_hrtime() - c->t_sent) / 1000);
    bool quota = cu->breaker.enabled && status == 429;
    bool retryable = cu->retry.tries > 0 && CONF_STATUS_HAS(&cu->retry.on_status, status);
    int64_t retry_after = -1, wall = 0;
    if (quota || retryable) {
        char v[128];
        wall = wall_now_ms();
        if (head_get(&c->rs, "retry-after", v, sizeof(v)))
            retry_after = retry_after_ms(v, strlen(v), wall);
    }
    if (c->try_open) {
        int64_t reset = quota ? quota_reset_ms(c, retry_after, wall) : -1;
        if (reset > 0) {
            /* a quota signal, not a sick host: held until the reset, then closed without probes */
            uint64_t now = uv_now(&c->w->loop);
            struct breaker_transition tr = {0};
            breaker_quota(&srv->breaker, &cu->breaker, now, now + (uint64_t)reset, &tr);
            log_transition(srv, &tr);
            try_report(c, BREAKER_CANCEL);
        } else {
            try_report(c, CONF_STATUS_HAS(&cu->breaker.on, status) ? BREAKER_FAILURE : BREAKER_SUCCESS);
        }
    }
    return retryable && retry_plan(c, 0, status, retry_after);
}

static int rs_on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    unsigned status = p->status_code;
    /* llhttp takes 1 to 3 digits; RFC 9110 15 wants 3, 1xx to 5xx */
    if (status < 100 || status > 599)
        return -1;
    /* a coding other than chunked would reach the client undecoded once
     * sluice re-frames the body */
    if (p->flags & F_TRANSFER_ENCODING) {
        char te[64];
        if (head_get_all(&c->rs, "transfer-encoding", te, sizeof(te)) < 0 || strcasecmp(te, "chunked") != 0)
            return -1;
    }
    if (status >= 100 && status < 200 && status != 101) {
        c->rs_interim = true;
        return 0;
    }
    if (status == 101) {
        if (!c->rq_upgrade)
            return -1;
        c->rs_upgrade = true;
        try_response(c, status);
        resp_write_head(c);
        return 2;
    }
    bool no_body = c->method == HTTP_HEAD || status == 204 || status == 304;
    if (try_response(c, status)) {
        /* kept (up to SAVED_BODY_MAX) in case it is the last real answer */
        c->rs_retry = true;
        c->has_saved = false;
        c->saved_status = status;
        strbuf_dispose(&c->saved_body);
        return no_body ? 1 : 0;
    }
    resp_write_head(c);
    /* RFC 9112 6.3: these never have a body, whatever Content-Length says
     * (llhttp 8 would wait for one after a 304 that carries it) */
    return no_body ? 1 : 0;
}

static int rs_on_chunk_header(llhttp_t *p)
{
    struct conn *c = p->data;
    if (p->content_length == 0)
        c->rs_trailers = true;
    if (c->rs_chunk_out && !c->rs_rechunk && !c->rs_swallow) {
        char line[32];
        int n = snprintf(line, sizeof(line), "%llx\r\n", (unsigned long long)p->content_length);
        outq_add_copy(&c->out, line, (size_t)n);
        cached_body(c, line, (size_t)n);
    }
    return 0;
}

static int rs_on_chunk_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->rs_chunk_out && !c->rs_rechunk && !c->rs_swallow) {
        outq_add_static(&c->out, "\r\n", 2);
        cached_body(c, "\r\n", 2);
    }
    return 0;
}

static int rs_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->rs_retry) {
        if (len <= SAVED_BODY_MAX - c->saved_body.len)
            strbuf_append(&c->saved_body, at, len);
        else
            c->saved_status = 0; /* too large to keep: forgotten */
        return 0;
    }
    if (c->rs_swallow)
        return 0;
    if (c->rs_rechunk) {
        char line[32];
        int n = snprintf(line, sizeof(line), "%zx\r\n", len);
        outq_add_copy(&c->out, line, (size_t)n);
        cached_body(c, line, (size_t)n);
    }
    outq_add_ref(&c->out, c->up_parsing, at, len);
    cached_body(c, at, len);
    if (c->rs_rechunk) {
        outq_add_static(&c->out, "\r\n", 2);
        cached_body(c, "\r\n", 2);
    }
    return 0;
}

static int rs_on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->rs_interim) {
        unsigned status = p->status_code;
        /* 100 answered Expect, which was not forwarded; other 1xx go to clients that understand them */
        if (status != 100 && client_is_http11(c)) {
            struct reply_head rh = {.status = status, .via = c->srv->via};
            char tmp[4096];
            size_t n = head_build_response(&c->rs, &rh, tmp, sizeof(tmp));
            outq_add_copy(&c->out, tmp, n);
        }
        head_reset(&c->rs);
        c->rs_interim = false;
        c->rs_started = false;
        return 0;
    }
    /* after a 101 llhttp goes on to HPE_PAUSED_UPGRADE: the tunnel starts there */
    if (c->rs_upgrade)
        return 0;
    if (c->rs_chunk_out && c->rs_rechunk && !c->rs_swallow) {
        outq_add_static(&c->out, "0\r\n\r\n", 5);
        cached_body(c, "0\r\n\r\n", 5);
    }
    c->rs_done = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t response_settings = {
    .on_message_begin = rs_on_message_begin,
    .on_status = rs_on_status,
    .on_header_field = rs_on_header_field,
    .on_header_value = rs_on_header_value,
    .on_header_field_complete = rs_on_header_field_complete,
    .on_header_value_complete = rs_on_header_value_complete,
    .on_headers_complete = rs_on_headers_complete,
    .on_chunk_header = rs_on_chunk_header,
    .on_chunk_complete = rs_on_chunk_complete,
    .on_body = rs_on_body,
    .on_message_complete = rs_on_message_complete,
};

static void tunnel_start(struct conn *c, const char *rest, size_t len);

/* After the response is complete: the upstream connection goes back to the
 * pool when nothing is left over and both sides ended cleanly. */
static void resp_finish(struct conn *c, bool leftover)
{
    bool reusable = !leftover && c->rq_body_done && llhttp_should_keep_alive(&c->rparser);
    up_detach(c, reusable);
    if (c->rs_retry) {
        struct head kept = c->saved_rs;
        c->saved_rs = c->rs;
        c->rs = kept;
        head_reset(&c->rs);
        c->has_saved = c->saved_status != 0;
        retry_schedule(c);
        return;
    }
    if (c->rc != NULL && cached_response_done(c))
        return;
    if (outq_flush(&c->out) != 0) {
        conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    if (!c->rq_body_done)
        c->want_close = true;
    req_done(c);
}

static void client_backpressure(struct conn *c)
{
    if (c->uc != NULL && !c->up_read_paused_bp && outq_backlog(&c->out) > OUT_HIGH_WATER) {
        c->up_read_paused_bp = true;
        upstream_conn_read_stop(c->uc);
        uv_timer_stop(&c->uc->timer);
        timer_set(c, TK_SEND, c->srv->send_timeout_ms);
    }
}

static void up_on_read(struct upstream_conn *uc, ssize_t nread, struct buf *blk)
{
    struct conn *c = uc->owner;
    if (nread < 0) {
        if (c->state == CS_TUNNEL) {
            conn_close_gracefully(c);
            return;
        }
        /* a close-delimited body ends here */
        if (nread == UV_EOF && c->rs_head_sent && llhttp_message_needs_eof(&c->rparser)) {
            /* our on_message_complete pauses, so a clean end reads as HPE_PAUSED */
            llhttp_errno_t fin = llhttp_finish(&c->rparser);
            if ((fin == HPE_OK || fin == HPE_PAUSED) && c->rs_done) {
                resp_finish(c, true);
                return;
            }
        }
        /* an alert after the handshake (TLS 1.3: a refused client certificate) */
        up_fail(c, upstream_conn_tls_error(uc) != NULL ? STATS_ERR_TLS : STATS_ERR_UPSTREAM_CLOSED,
                (int)nread);
        return;
    }
    STATS_ADD(server_stats(c)->bytes_in, (uint64_t)nread);
    if (c->state == CS_TUNNEL) {
        outq_add_ref(&c->out, blk, blk->data, (size_t)nread);
        buf_unref(blk);
        timer_set(c, TK_TUNNEL, c->route->websocket_idle_timeout_ms);
        if (outq_flush(&c->out) != 0)
            conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        else
            client_backpressure(c);
        return;
    }
    c->up_parsing = blk;
    c->rs_value_end = blk->data; /* as value_end in parse_pending */
    llhttp_errno_t err = llhttp_execute(&c->rparser, blk->data, (size_t)nread);
    c->up_parsing = NULL;
    if (err == HPE_OK) {
        buf_unref(blk);
        if (!c->rs_head_sent) {
            uv_timer_again(&uc->timer);
            return;
        }
        uv_timer_start(&uc->timer, up_on_timer, c->group->conf->idle_timeout_ms, 0);
        if (outq_flush(&c->out) != 0) {
            conn_abort(c, STATS_ERR_CLIENT_CLOSED);
            return;
        }
        client_backpressure(c);
        return;
    }
    const char *pos = llhttp_get_error_pos(&c->rparser);
    size_t used = pos ? (size_t)(pos - blk->data) : (size_t)nread;
    if (err == HPE_PAUSED && c->rs_done) {
        resp_finish(c, used < (size_t)nread);
        buf_unref(blk);
        return;
    }
    if (err == HPE_PAUSED_UPGRADE && c->rs_upgrade) {
        c->uc->out.done_cb = up_on_write_done;
        outq_add_ref(&c->out, blk, blk->data + used, (size_t)nread - used);
        buf_unref(blk);
        tunnel_start(c, NULL, 0);
        return;
    }
    buf_unref(blk);
    log_debug("proxy", "upstream %s: bad response: %s", c->target->srv->key, llhttp_errno_name(err));
    up_fail(c, STATS_ERR_BAD_RESPONSE, UV_EPROTO);
}

/* Client writes drained below the low mark: the upstream may send again. */
static void client_on_write_done(struct outq *q, int status)
{
    struct conn *c = q->owner;
    if (c->is_closing)
        return;
    if (status != 0) {
        if (status != UV_ECANCELED)
            conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    if (c->up_read_paused_bp && c->uc != NULL && outq_backlog(&c->out) <= OUT_LOW_WATER) {
        c->up_read_paused_bp = false;
        if (upstream_conn_read_start(c->uc) != 0) {
            conn_abort(c, STATS_ERR_UPSTREAM_CLOSED);
            return;
        }
        if (c->state == CS_TUNNEL)
            timer_set(c, TK_TUNNEL, c->route->websocket_idle_timeout_ms);
        else
            uv_timer_start(&c->uc->timer, up_on_timer, c->group->conf->idle_timeout_ms, 0);
        timer_set(c, TK_NONE, 0);
    } else if (c->pipeline_wait && outq_backlog(&c->out) <= OUT_LOW_WATER) {
        c->pipeline_wait = false;
        timer_set(c, TK_IDLE, c->srv->keepalive_timeout_ms);
        parse_pending(c);
        return;
    } else if (c->timer_kind == TK_SEND) {
        timer_set(c, TK_SEND, c->srv->send_timeout_ms); /* progress: the stall clock restarts */
    }
    if (c->join != NULL)
        cached_client_drained(c);
}

/* ---- tunnel (after 101 Switching Protocols) ---- */

static void tunnel_start(struct conn *c, const char *rest, size_t len)
{
    c->state = CS_TUNNEL;
    uv_timer_stop(&c->uc->timer);
    timer_set(c, TK_TUNNEL, c->route->websocket_idle_timeout_ms);
    /* bytes the client sent after its upgrade request belong to the new protocol */
    if (c->pend != NULL) {
        outq_add_ref(&c->uc->out, c->pend, c->pend->data + c->pend_off, c->pend_len);
        buf_unref(c->pend);
        c->pend = NULL;
        outq_flush(&c->uc->out);
    }
    if (outq_flush(&c->out) != 0) {
        conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        return;
    }
    c->rq_body_done = true;
    conn_read_start(c);
}

static void req_dispatch(struct conn *c);

/* ---- the request side ---- */

static const struct conf_server *default_server(struct conn *c)
{
    const struct conf_server *s = pick_server(c->gen->conf, c->l->addr_text, "");
    return s != NULL ? s : &c->gen->conf->servers[0];
}

static int rq_on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->gen != c->w->gen) {
        proxy_gen_unref(c->gen);
        c->gen = proxy_gen_ref(c->w->gen);
    }
    c->srv = default_server(c);
    c->t_start = uv_hrtime();
    c->state = CS_HEAD;
    c->bytes_out_start = c->out.bytes_written;
    timer_set(c, TK_HEAD, c->srv->client_header_timeout_ms);
    const struct conf_server *s = c->srv;
    head_start(&c->rq, s->max_header_size < HEAD_STORE_MAX ? (uint32_t)s->max_header_size : HEAD_STORE_MAX,
               s->max_headers);
    return 0;
}

static int rq_limit(struct conn *c, int status, const char *reason)
{
    c->err_status = status;
    c->err_reason = reason;
    return HPE_USER;
}

static int rq_on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    /* llhttp 8 skips repeated spaces; RFC 9112 3 allows exactly one */
    if (c->rq.first_len == 0 && at - c->parsing->data >= 2 && at[-2] == ' ')
        return rq_limit(c, 400, "more than one space in the request line");
    /* llhttp 8 lets HTAB through; an upstream may split the line there */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)at[i] <= ' ' || at[i] == 0x7f)
            return rq_limit(c, 400, "a control character in the request target");
    if (c->rq.first_len + len > c->srv->max_uri_size)
        return rq_limit(c, 414, "request target longer than max_uri_size");
    if (head_add(&c->rq, HEAD_FIRST, at, len) != 0)
        return rq_limit(c, 414, "request target longer than max_uri_size");
    return 0;
}

static int rq_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->rq_trailers)
        return 0;
    if (!head_token_ok(at, len))
        return rq_limit(c, 400, "invalid character in a header name");
    int rc = head_add(&c->rq, HEAD_NAME, at, len);
    if (rc == -ENOSPC)
        return rq_limit(c, 431, "request head larger than max_header_size");
    if (rc != 0)
        return rq_limit(c, 431, "more header fields than max_headers");
    return 0;
}

static int rq_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->rq_trailers)
        return 0;
    /* obs-fold (RFC 9112 5.2): llhttp joins the folded line to the value,
     * skipping the line break; a value piece that does not start where the
     * previous one ended is such a fold.  Refused: a
     * request toward the upstream must never depend on how it is unfolded. */
    if (c->rq.last == HEAD_VALUE && at != c->value_end)
        return rq_limit(c, 400, "line folding in a header value");
    if (memchr(at, '\r', len) != NULL || memchr(at, '\n', len) != NULL)
        return rq_limit(c, 400, "a line break in a header value");
    c->value_end = at + len;
    int rc = head_add(&c->rq, HEAD_VALUE, at, len);
    if (rc == -EINVAL)
        return rq_limit(c, 400, "header field without a name");
    if (rc != 0)
        return rq_limit(c, 431, "request head larger than max_header_size");
    return 0;
}

static int rq_on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->rq_trailers)
        return 0;
    if (c->rq.last != HEAD_NAME || c->rq.fields[c->rq.n - 1].name_len == 0)
        return rq_limit(c, 400, "header field without a name");
    return 0;
}

static int rq_on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    head_field_done(&c->rq);
    return 0;
}

static int rq_on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->method = p->method;
    c->http_major = p->http_major;
    c->http_minor = p->http_minor;
    c->rq_keepalive = llhttp_should_keep_alive(p);
    c->rq_chunked = (p->flags & F_CHUNKED) != 0;
    c->rq_has_body = c->rq_chunked || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    c->rq_upgrade = p->upgrade && c->method != HTTP_CONNECT;
    if (c->rq_has_body && c->srv->max_body_size && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > c->srv->max_body_size) {
        c->err_status = 413;
        c->err_reason = "request body larger than max_body_size";
    }
    if (c->http_major == 0) {
        c->err_status = 400;
        c->err_reason = "malformed request line";
    } else if (c->http_major != 1) {
        c->err_status = 505;
        c->err_reason = "only HTTP/1.0 and HTTP/1.1 are spoken here";
    }
    /* chunked alone: another coding before it would be dropped on the way
     * upstream (the body is re-framed), so it is refused, not passed on */
    char te[64];
    /* RFC 9112 6.1: framing an HTTP/1.0 peer may not understand is faulty */
    if ((p->flags & F_TRANSFER_ENCODING) && c->http_major == 1 && c->http_minor == 0) {
        c->err_status = 400;
        c->err_reason = "Transfer-Encoding in an HTTP/1.0 request";
    } else if (c->rq_chunked && (!head_get(&c->rq, "transfer-encoding", te, sizeof(te)) || strcasecmp(te, "chunked") != 0)) {
        c->err_status = 501;
        c->err_reason = "transfer codings other than chunked are not supported";
    }
    c->state = CS_WAIT;
    timer_set(c, TK_NONE, 0);
    /* a body must wait for the upstream connection; a bodiless request is
     * dispatched once it is complete (llhttp completes it right away) */
    return c->rq_has_body ? HPE_PAUSED : 0;
}

static int rq_on_chunk_header(llhttp_t *p)
{
    struct conn *c = p->data;
    if (p->content_length == 0)
        c->rq_trailers = true;
    char line[32];
    int n = snprintf(line, sizeof(line), "%llx\r\n", (unsigned long long)p->content_length);
    if (c->uc != NULL)
        outq_add_copy(&c->uc->out, line, (size_t)n);
    return 0;
}

static int rq_on_chunk_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->uc != NULL)
        outq_add_static(&c->uc->out, "\r\n", 2);
    return 0;
}

static int rq_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    c->rq_body_bytes += len;
    if (c->srv->max_body_size && c->rq_body_bytes > c->srv->max_body_size)
        return rq_limit(c, 413, "request body larger than max_body_size");
    if (c->state == CS_BODY)
        return cached_hold(c, at, len) ? 0 : rq_limit(c, 400, "request body longer than its Content-Length");
    if (c->uc != NULL)
        outq_add_ref(&c->uc->out, c->parsing, at, len);
    if (c->keep_body && !held_append(&c->held, at, len, c->group->conf->retry.body_max)) {
        /* past retry_body_max: no replay for this request */
        c->keep_body = false;
        c->body_unkept = true;
        held_release(c->held);
        c->held = NULL;
    }
    return 0;
}

static int rq_on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->rq_body_done = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t request_settings = {
    .on_message_begin = rq_on_message_begin,
    .on_url = rq_on_url,
    .on_header_field = rq_on_header_field,
    .on_header_value = rq_on_header_value,
    .on_header_field_complete = rq_on_header_field_complete,
    .on_header_value_complete = rq_on_header_value_complete,
    .on_headers_complete = rq_on_headers_complete,
    .on_chunk_header = rq_on_chunk_header,
    .on_chunk_complete = rq_on_chunk_complete,
    .on_body = rq_on_body,
    .on_message_complete = rq_on_message_complete,
};

static void req_admin(struct conn *c)
{
    struct strbuf body;
    strbuf_init(&body);
    const char *ctype = "application/json";
    char path[1024];
    size_t plen = c->rq.first_len < sizeof(path) - 1 ? c->rq.first_len : sizeof(path) - 1;
    memcpy(path, head_first(&c->rq), plen);
    path[plen] = '\0';
    char auth[512];
    const char *auth_value = head_get(&c->rq, "authorization", auth, sizeof(auth)) ? auth : NULL;
    int status = admin_handle(c->w, llhttp_method_name(c->method), path, auth_value, &body, &ctype);
    respond_local(c, (unsigned)status, ctype, body.data ? body.data : "", body.len, false);
    strbuf_dispose(&body);
}

/* The request head is complete and the parser paused: decide where it goes. */
static void req_dispatch(struct conn *c)
{
    struct worker *w = c->w;
    c->is_dispatched = true;
    STATS_INC(w->proc->requests);
    char reason[128];
    int host_rc = head_request_host(&c->rq, c->http_minor == 0 && c->http_major == 1, c->host, sizeof(c->host),
                                    reason, sizeof(reason));
    if (host_rc != 0) {
        respond_error(c, 400, "%s", reason);
        return;
    }
    c->srv = pick_server(c->gen->conf, c->l->addr_text, c->host);
    if (c->srv == NULL)
        c->srv = &c->gen->conf->servers[0];
    obs_request_begin(c);
    if (c->err_status) {
        STATS_INC(w->proc->errors[STATS_ERR_BAD_REQUEST]);
        respond_error(c, (unsigned)c->err_status, "%s", c->err_reason);
        return;
    }
    if (c->l->is_admin) {
        req_admin(c);
        return;
    }
    size_t path_len = head_path_len(&c->rq);
    c->route = pick_route(c->srv, head_target_path(&c->rq), path_len);
    if (c->route == NULL) {
        STATS_INC(w->proc->errors[STATS_ERR_NO_ROUTE]);
        respond_error(c, 404, "no route for this path");
        return;
    }
    c->rt = c->route->runtime;
    c->rstats = stats_slot(c->rt->stats, w->id);
    STATS_INC(c->rstats->requests);
    STATS_ADD(c->rstats->active, 1);
    c->rq_expect = head_expects_continue(&c->rq);
    if (c->rq_has_body)
        timer_set(c, TK_BODY, c->srv->client_body_timeout_ms);
    if (c->rt->has_admission && limited_begin(c))
        return;
    req_proceed(c);
}

void req_proceed(struct conn *c)
{
    if (c->route->cache != NULL && cached_begin(c))
        return;
    if (c->rc != NULL && c->rqf.cc.only_if_cached) {
        respond_error(c, 504, "only-if-cached and the cache has no usable response");
        return;
    }
    req_forward(c);
}

/* Reading follows the state: a request head or body is read as it comes;
 * while an upstream is being reached nothing is read (the body has nowhere to
 * go yet); while a response is awaited the socket is read only to notice the
 * client leaving, and bytes of a pipelined request stop it until their turn. */
static void conn_update_reading(struct conn *c)
{
    if (c->is_closing || c->state == CS_LINGER)
        return;
    bool want = c->pend == NULL && !c->read_paused_bp && !c->pipeline_wait && c->state != CS_WAIT &&
                c->state != CS_LOCAL;
    if (want)
        conn_read_start(c);
    else
        conn_read_stop(c);
    bool body_open = (c->state == CS_FORWARD || c->state == CS_BODY) && !c->rq_body_done;
    if (body_open && want)
        timer_set(c, TK_BODY, c->srv->client_body_timeout_ms);
    else if (c->timer_kind == TK_BODY)
        timer_set(c, TK_NONE, 0);
}

static void parse_error(struct conn *c)
{
    STATS_INC(c->w->proc->errors[STATS_ERR_BAD_REQUEST]);
    if (!c->is_dispatched)
        obs_request_begin(c); /* a request all the same: it gets a log line */
    if (c->rs_head_sent) {
        conn_abort(c, STATS_ERR_BAD_REQUEST);
        return;
    }
    /* the upstream saw a request that will never be complete: drop it */
    if (c->uc != NULL)
        up_detach(c, false);
    c->want_close = true;
    if (c->err_status)
        respond_error(c, (unsigned)c->err_status, "%s", c->err_reason);
    else
        respond_error(c, 400, "malformed request: %s", llhttp_get_error_reason(&c->parser));
}

/* llhttp 8 takes a bare LF for a line end; RFC 9112 2.2 lets a recipient do
 * so, but a proxy that does reads lines another server may join: refused. */
static bool head_lines_crlf(struct conn *c, const char *p, size_t n)
{
    const char *lf = memchr(p, '\n', n);
    while (lf != NULL) {
        if (!(lf > p ? lf[-1] == '\r' : c->head_cr))
            return false;
        lf = memchr(lf + 1, '\n', n - (size_t)(lf + 1 - p));
    }
    if (n > 0)
        c->head_cr = p[n - 1] == '\r';
    return true;
}

/* Runs the parser over the pending bytes until they are used up or it
 * pauses.  Never re-entered: a request that completes synchronously inside
 * (a local answer, a pooled upstream) resumes the parser and the loop here
 * simply goes on. */
static void parse_pending(struct conn *c)
{
    if (c->in_parse)
        return;
    c->in_parse = true;
    while (c->pend != NULL && !c->is_closing && c->state != CS_LINGER && !c->pipeline_wait &&
           llhttp_get_errno(&c->parser) == HPE_OK) {
        struct buf *blk = c->pend;
        const char *start = blk->data + c->pend_off;
        bool in_head = c->state == CS_IDLE || c->state == CS_HEAD;
        /* a value cut by the end of the previous bytes goes on exactly here
         * (comparing blocks would not do: a freed block comes back) */
        c->value_end = start;
        c->parsing = blk;
        llhttp_errno_t err = llhttp_execute(&c->parser, start, c->pend_len);
        c->parsing = NULL;
        size_t used = c->pend_len;
        if (err != HPE_OK) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            if (pos != NULL && pos >= start && pos <= start + c->pend_len)
                used = (size_t)(pos - start);
        }
        /* the parser stops at the end of a head (pause), so used covers
         * head bytes only: checked before the request is dispatched */
        if (in_head && !head_lines_crlf(c, start, used) && !c->err_status) {
            c->err_status = 400;
            c->err_reason = "a line of the request head ends in a bare LF";
            err = HPE_USER;
        }
        c->bytes_in += used;
        c->pend_off += used;
        c->pend_len -= used;
        if (c->pend_len == 0) {
            buf_unref(blk);
            c->pend = NULL;
        }
        if (c->uc != NULL && outq_flush(&c->uc->out) != 0) {
            up_fail(c, STATS_ERR_UPSTREAM_CLOSED, UV_EPIPE);
            break;
        }
        if (c->uc != NULL && outq_backlog(&c->uc->out) > OUT_HIGH_WATER)
            c->read_paused_bp = true;
        /* an upgrade the upstream declined: what follows is the next request */
        if (err == HPE_PAUSED_UPGRADE && c->state == CS_IDLE)
            llhttp_resume_after_upgrade(&c->parser);
        if (err == HPE_OK || err == HPE_PAUSED_UPGRADE)
            continue;
        if (err == HPE_PAUSED) {
            /* paused at a complete head: route it; at a complete request: wait */
            if (c->state == CS_WAIT && !c->is_dispatched) {
                req_dispatch(c);
            } else if (c->state == CS_BODY && c->rq_body_done) {
                c->state = CS_WAIT;
                cached_body_complete(c);
            }
            continue;
        }
        parse_error(c);
    }
    c->in_parse = false;
    conn_update_reading(c);
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct buf *blk = buf_get();
    *b = uv_buf_init(blk->data, BUF_SIZE);
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    struct buf *blk = b->base ? (struct buf *)(b->base - offsetof(struct buf, data)) : NULL;
    if (nread <= 0) {
        if (blk)
            buf_unref(blk);
        if (nread == 0)
            return;
        conn_read_stop(c);
        c->client_eof = true;
        if (c->state == CS_IDLE || c->state == CS_TUNNEL) {
            conn_close(c);
            return;
        }
        /* the client left before its request was complete: nothing to answer;
         * a queued one leaves its max_inflight queue (a half-close there is
         * taken for leaving: the place is worth more to the next client) */
        if (!c->rq_body_done || c->state == CS_HEAD || c->state == CS_QUEUED) {
            conn_abort(c, STATS_ERR_CLIENT_CLOSED);
            return;
        }
        /* a half-close after a complete request: answer, then close */
        return;
    }
    if (c->state == CS_TUNNEL) {
        outq_add_ref(&c->uc->out, blk, blk->data, (size_t)nread);
        buf_unref(blk);
        timer_set(c, TK_TUNNEL, c->route->websocket_idle_timeout_ms);
        if (outq_flush(&c->uc->out) != 0) {
            conn_abort(c, STATS_ERR_UPSTREAM_CLOSED);
        } else if (outq_backlog(&c->uc->out) > OUT_HIGH_WATER) {
            c->read_paused_bp = true;
            conn_read_stop(c);
        }
        return;
    }
    if (c->pend != NULL) {
        /* reading stops while bytes wait, so this is a bug: fail safe */
        buf_unref(blk);
        conn_abort(c, STATS_ERR_BAD_REQUEST);
        return;
    }
    c->pend = blk;
    c->pend_off = 0;
    c->pend_len = (size_t)nread;
    parse_pending(c);
}

/* A TLS client's reads: plaintext goes on to conn_on_read, one block per
 * read (see tls.h), so pausing reads still pauses the parser's input. */
static void conn_on_tls_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    uv_buf_t plain = uv_buf_init(NULL, 0);
    ssize_t n = tls_read(c->tls, nread, b, &plain);
    if (n == UV_EPROTO) {
        STATS_INC(c->w->proc->errors[STATS_ERR_TLS]);
        log_debug("proxy", "TLS from %s: %s", c->peer, tls_error(c->tls));
    }
    if (n != 0 && !c->is_closing)
        conn_on_read(s, n, &plain);
    else if (plain.base != NULL)
        buf_unref((struct buf *)(plain.base - offsetof(struct buf, data)));
}

static void conn_read_start(struct conn *c)
{
    if (c->is_reading || c->is_closing)
        return;
    int rc = c->tls != NULL ? uv_read_start((uv_stream_t *)&c->tcp, tls_alloc_cb, conn_on_tls_read)
                            : uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
    if (rc == 0)
        c->is_reading = true;
}

static void conn_read_stop(struct conn *c)
{
    if (!c->is_reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->is_reading = false;
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    uint64_t now = uv_now(&c->w->loop);
    if (c->timer_kind != TK_NONE && c->timer_due > now) {
        c->timer_armed = c->timer_due;
        uv_timer_start(&c->timer, on_conn_timer, c->timer_due - now, 0);
        return;
    }
    switch (c->timer_kind) {
    case TK_IDLE:
    case TK_LINGER:
    case TK_SEND:
    case TK_TUNNEL:
        conn_close(c);
        break;
    case TK_HEAD:
        STATS_INC(c->w->proc->errors[STATS_ERR_BAD_REQUEST]);
        c->want_close = true;
        respond_error(c, 408, "request head not received within client_header_timeout");
        break;
    case TK_BODY:
        if (c->rs_head_sent) {
            conn_abort(c, STATS_ERR_CLIENT_CLOSED);
        } else {
            c->want_close = true;
            respond_error(c, 408, "request body stalled longer than client_body_timeout");
        }
        break;
    case TK_RETRY:
        timer_set(c, TK_NONE, 0);
        req_forward(c);
        break;
    case TK_QUEUE:
        limited_timeout(c);
        break;
    case TK_NONE:
        break;
    }
}

void req_timer_set(struct conn *c, enum timer_kind kind, uint64_t ms)
{
    timer_set(c, kind, ms);
}

void conn_accept(struct listener *l)
{
    struct worker *w = l->w;
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(&w->loop, &c->tcp);
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
        c->open_handles = 1;
        c->tcp.data = c;
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->w = w;
    c->l = l;
    list_init(&c->link);
    list_push(&w->conns, &c->link);
    w->nconns++;
    STATS_ADD(w->proc->active, 1);
    unsigned open = atomic_fetch_add_explicit(&proxy_info.connections, 1, memory_order_relaxed) + 1;
    outq_init(&c->out, (uv_stream_t *)&c->tcp, client_on_write_done, c);
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        headers_format_ip((struct sockaddr *)&ss, c->peer, sizeof(c->peer));
    c->gen = proxy_gen_ref(w->gen);
    c->srv = default_server(c);
    head_init(&c->rq);
    head_init(&c->rs);
    head_init(&c->saved_rs);
    strbuf_init(&c->saved_body);
    llhttp_init(&c->parser, HTTP_REQUEST, &request_settings);
    c->parser.data = c;
    c->state = CS_IDLE;
    SSL_CTX *tls_ctx = tlsgen_listen_ctx(c->gen->tls, l->addr_text);
    if (tls_ctx != NULL && (c->tls = tls_server_create(tls_ctx, &c->out)) == NULL) {
        conn_close(c);
        return;
    }
    /* the admin listener stays reachable when the proxy is full: that is
     * when an operator needs /stats */
    if ((open > proxy_info.max_connections && !l->is_admin) || w->is_draining) {
        LOG_RATELIMITED(LOG_WARN, "proxy", "max_connections (%u) reached: closing new connections",
                        proxy_info.max_connections);
        conn_close(c);
        return;
    }
    unsigned per_ip = c->gen->conf->max_connections_per_ip;
    if (per_ip > 0 && !l->is_admin) {
        c->ip_counted = iplimit_acquire(c->peer, per_ip);
        if (!c->ip_counted) {
            LOG_RATELIMITED(LOG_WARN, "proxy", "max_connections_per_ip (%u) reached by %s: closing", per_ip,
                            c->peer);
            conn_close(c);
            return;
        }
    }
    timer_set(c, TK_IDLE, c->srv->client_header_timeout_ms);
    conn_read_start(c);
}

void conn_close_all(struct worker *w, bool force)
{
    struct list *it = w->conns.next;
    while (it != &w->conns) {
        struct conn *c = LIST_ENTRY(it, struct conn, link);
        it = it->next;
        if (force || (c->state == CS_IDLE && c->pend == NULL))
            conn_close(c);
        else
            c->want_close = true;
    }
}
