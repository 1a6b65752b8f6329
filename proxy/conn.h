/* SPDX-License-Identifier: MIT */
/*
 * conn: a client connection and its current request, shared by the files of
 * the proxy that drive a request (http.c: HTTP/1 and forwarding; cached.c:
 * answering from and filling the cache).  Private to proxy/.
 */
#ifndef SLUICE_PROXY_CONN_H
#define SLUICE_PROXY_CONN_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cache/cache.h"
#include "common/buf.h"
#include "common/outq.h"
#include "common/strbuf.h"
#include "common/tls.h"
#include "proxy/headers.h"
#include "proxy/proxy.h"

#define OBS_REQUEST_ID_MAX 128

enum conn_state {
    CS_IDLE,    /* between requests */
    CS_HEAD,    /* reading a request head */
    CS_WAIT,    /* head complete, connecting upstream */
    CS_BODY,    /* reading a body the cache key needs, before the lookup */
    CS_FORWARD, /* request sent or streaming; response awaited or streaming */
    CS_LOCAL,   /* a response made here is being written */
    CS_TUNNEL,  /* after a 101: raw bytes both ways */
    CS_LINGER,  /* closing: write side shut, draining what the client still sends */
    CS_QUEUED,  /* waiting for a max_inflight slot (limited.c): read only to notice the client leaving */
};

enum timer_kind { TK_NONE, TK_IDLE, TK_HEAD, TK_BODY, TK_SEND, TK_LINGER, TK_TUNNEL, TK_RETRY, TK_QUEUE };

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    int open_handles;
    struct worker *w;
    struct listener *l;
    struct list link;
    llhttp_t parser;
    struct outq out;
    enum conn_state state;
    enum timer_kind timer_kind;
    uint64_t timer_due;   /* uv_now() when the current kind's time is up */
    uint64_t timer_armed; /* when the uv timer fires, <= timer_due while armed */
    char peer[64];

    /* received, not parsed yet */
    struct buf *pend;
    size_t pend_off, pend_len;
    struct buf *parsing; /* the block llhttp is reading now */

    bool is_reading;
    bool is_closing;
    bool want_close;     /* close once the current response is written */
    bool client_eof;
    bool read_paused_bp; /* reading stopped by backpressure from the upstream side */
    bool in_parse;
    const char *value_end;     /* where the next piece of a header value must start, to spot obs-fold */
    bool is_dispatched; /* the current request was routed */

    /* the generation of the current (or last) request: pinned while the
     * connection lives, refreshed when a request begins */
    struct proxy_gen *gen;

    /* current request */
    const struct conf_server *srv;
    const struct conf_route *route;
    struct route_rt *rt;
    struct stats_counters *rstats;
    uint64_t t_start;
    struct head rq;
    int err_status; /* a limit hit in a parser callback */
    const char *err_reason;
    unsigned method;
    unsigned char http_major, http_minor;
    bool rq_keepalive, rq_has_body, rq_chunked, rq_expect, rq_upgrade, rq_body_done, rq_trailers;
    uint64_t rq_body_bytes, bytes_in;
    char host[256];

    /* upstream exchange */
    struct upstream_target *target;
    struct upstream_conn *uc;
    llhttp_t rparser;
    struct head rs;
    struct buf *up_parsing;
    unsigned status;
    bool rs_started, rs_head_sent, rs_done, rs_interim, rs_upgrade, rs_trailers;
    bool rs_chunk_out;  /* client gets chunked encoding */
    bool rs_rechunk;    /* upstream body is close-delimited: each read becomes a chunk */
    bool up_read_paused_bp;
    bool up_reused, retried;
    uint64_t t_sent;
    uint64_t bytes_out_start;

    /* cache (cached.c); rc == NULL when the request does not use the cache */
    const struct conf_route_cache *rc;
    struct cache *store;
    struct cache_request_facts rqf;
    char *key; /* a buffer of CACHE_KEY_MAX bytes, kept for the connection */
    size_t key_len, url_off, url_len;
    uint64_t key_hash;
    struct cache_entry *entry; /* a stored response being revalidated */
    enum cache_use use;
    struct cache_fill *fill;   /* this request's response goes into the cache */
    struct cache_fill *join;   /* this request is answered by another's fill */
    struct cache_waiter waiter;
    struct list wake_link; /* in the worker's woken list (under its lock) */
    bool is_wake_queued;
    bool join_head_sent;
    size_t join_off;
    const char *x_cache;      /* X-Cache value of this response */
    const char *cache_detail; /* Cache-Status parameters */
    bool fill_on;             /* body bytes go into the fill */
    bool rs_swallow;          /* the upstream answer is dropped: a stale entry answers */
    bool rs_revalidated;      /* the upstream said 304 to our validators */
    bool invalidate;          /* unsafe method: purge the URL after a non-error answer */
    struct cache_response_facts rsf;
    struct cache_ttl ttl;
    int64_t t_sent_wall_ms;
    int64_t t_head_wall_ms; /* the response head arrived: the response_time of RFC 9111 4.2.3 */
    struct held_body *held; /* a request body kept whole: for its hash (cache key) and for replays */

    /* tries: balancing, retries, deadline (issue 4) */
    struct upstream_group *group; /* the route's upstream, or its fallback */
    unsigned tries;               /* tries started for this request */
    uint64_t tried;               /* targets of group tried: a bit per index */
    uint64_t t_deadline;          /* uv_hrtime() when the route's deadline passes, 0 = none */
    uint64_t retry_delay_ms;      /* the wait before the next try */
    bool try_open;                /* the current try's outcome is not reported yet */
    enum breaker_admit admit;     /* how the current try's server breaker let it through */
    bool rs_retry;                /* this response is kept aside: another try follows */
    bool keep_body;               /* body bytes going upstream are also copied into held */
    bool body_unkept;             /* body bytes went upstream without a copy: no replay */
    bool has_saved;               /* saved_rs holds the last response retried */
    unsigned saved_status;
    struct head saved_rs;
    struct strbuf saved_body;
    char idem_key[48];            /* Idempotency-Key sent on every try, "" when none is added */

    /* admission control (limited.c, issue 5) */
    struct limit_waiter lwait;    /* in the queue of rt->inflight[lstage] while is_lqueued */
    struct list lwake_link;       /* in the worker's limit_woken list (under its lock) */
    bool is_lwake_queued;
    bool is_lqueued;
    unsigned lstage;              /* in-flight slots held: rt->inflight[0 .. lstage) */
    struct limit_key lkeys[LIMIT_ROUTE_MAX];
    struct limit_result lbest;    /* the most restrictive result that shows headers */
    bool has_lbest;
    char extra_lines[320];        /* RateLimit-* / Retry-After lines for this response */
    size_t extra_len;

    /* TLS listener (README "TLS"): reads are decrypted before conn_on_read,
     * c->out encrypts; NULL on a plain connection */
    struct tls *tls;

    /* observability (obs.c, issue 6): set when the request is dispatched if
     * the conf has an access log, analytics or server_timing; else untouched */
    bool obs_on;
    char request_id[OBS_REQUEST_ID_MAX + 1]; /* X-Request-Id, "" when obs_on is false */
    uint64_t t_dispatch;  /* head parsed and routed (uv_hrtime) */
    uint64_t t_forward;   /* going upstream (after the cache lookup) */
    uint64_t t_connected; /* a new upstream connection is up; 0 when a pooled one was taken */
    uint64_t t_head;      /* the upstream response head is parsed (always set: also feeds stats) */
    /* Per-request facts other features fill for the access log and analytics.
     * Reset with the request; the defaults mean "not involved":
     *   breaker - state of the breaker the request met: "closed", "open",
     *             "half_open" (issue 4), or NULL
     *   limit   - rate-limit decision: "allow", "reject", "inflight" ... (issue 5),
     *             or NULL
     * They must point to static strings: the log line is formatted later.
     * (Retries come from `tries` and `retried`.) */
    const char *breaker;
    const char *limit;

    /* hostile input: head syntax llhttp 8 lets through, per-IP limit */
    bool head_cr;                 /* the last request head byte parsed was CR */
    const char *rs_value_end;     /* like value_end, for obs-fold in upstream heads */
    bool ip_counted;              /* holds a max_connections_per_ip slot */
    bool pipeline_wait;           /* answers not read by the client: the next request waits */
};

/* A request body held whole.  Refcounted: the request holds one reference,
 * every write batch that sends it (the first try, a replay) another. */
struct held_body {
    unsigned refs;
    size_t len, cap;
    char data[];
};
struct held_body *held_new(size_t cap);
/* Appends, growing up to max bytes; false when it would pass max (or no memory). */
bool held_append(struct held_body **h, const char *p, size_t len, size_t max);
void held_release(void *h);

#define CACHE_KEY_MAX 16384

/* http.c, for cached.c */
/* Writes the decimal digits of v backwards ending at end; returns the start
 * (by hand: on every response, where printf showed in profiles). */
char *put_uint_rev(char *end, uint64_t v);
bool client_is_http11(const struct conn *c);
int process_time_line(const struct conn *c, char *dst, size_t cap);
void count_status(struct conn *c, unsigned status);
void req_done(struct conn *c);
void req_forward(struct conn *c);
void conn_abort(struct conn *c, enum stats_error why);
/* open_handles counts the closes (and the async operations, like a Redis
 * get) the connection waits for; the last one frees it. */
void conn_unref(struct conn *c);
void respond_error(struct conn *c, unsigned status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* cached.c */
/* The request's route caches: look it up.  True when the request was
 * answered (a hit) or joined a fill; false when it must go upstream (as the
 * filler, a revalidation, or a bypass). */
bool cached_begin(struct conn *c);
/* The upstream response head is parsed: decide whether it is stored; may set
 * rs_swallow or rs_revalidated.  Writes the X-Cache / Cache-Status lines into
 * lines (returns their length). */
size_t cached_response_head(struct conn *c, char *lines, size_t cap);
/* Body bytes (already framed for the client) also go into the fill. */
void cached_body(struct conn *c, const char *p, size_t len);
/* The upstream response is complete: publish the fill, or answer from the
 * entry after a 304 or a swallowed error.  True when the client was
 * answered here. */
bool cached_response_done(struct conn *c);
/* The upstream failed before a head reached the client: true when a stale
 * entry answered instead (stale-if-error). */
bool cached_upstream_failed(struct conn *c);
/* Every server of the upstream is open: true when a stale entry (within
 * max_stale) answered. */
bool cached_upstream_unavailable(struct conn *c);
/* Extra request lines for a revalidation (If-None-Match / If-Modified-Since),
 * or NULL. */
const char *cached_request_extra(struct conn *c, char *buf, size_t cap);
/* The client drained: a joiner sends more. */
void cached_client_drained(struct conn *c);
/* Drops what the request holds of the cache (aborting an unfinished fill). */
void cached_release(struct conn *c);
/* The body held for the key is complete: hash, look up, answer or forward. */
void cached_body_complete(struct conn *c);
/* Copies request body bytes being held; false when they do not fit. */
bool cached_hold(struct conn *c, const char *p, size_t len);
/* Runs the joiners woken by fills (worker thread). */
void cached_run_woken(struct worker *w);

/* http.c, for limited.c */
/* The rest of dispatch once the request is admitted: cache, then upstream. */
void req_proceed(struct conn *c);
void req_timer_set(struct conn *c, enum timer_kind kind, uint64_t ms);

/* limited.c: admission control (issue 5) */
/* The route has limits or max_inflight: check them.  True when the request
 * was answered (429, 503) or waits (Redis, the queue); it then goes on by
 * req_proceed itself. */
bool limited_begin(struct conn *c);
/* The request is over or the connection closes: leave the queue, give back
 * the in-flight slots. */
void limited_done(struct conn *c);
/* TK_QUEUE fired: the wait in the queue is over. */
void limited_timeout(struct conn *c);
/* Runs the queued requests that got a slot (worker thread). */
void limited_run_woken(struct worker *w);


#endif
