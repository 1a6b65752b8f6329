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
#include "proxy/headers.h"
#include "proxy/proxy.h"

enum conn_state {
    CS_IDLE,    /* between requests */
    CS_HEAD,    /* reading a request head */
    CS_WAIT,    /* head complete, connecting upstream */
    CS_BODY,    /* reading a body the cache key needs, before the lookup */
    CS_FORWARD, /* request sent or streaming; response awaited or streaming */
    CS_LOCAL,   /* a response made here is being written */
    CS_TUNNEL,  /* after a 101: raw bytes both ways */
    CS_LINGER,  /* closing: write side shut, draining what the client still sends */
};

enum timer_kind { TK_NONE, TK_IDLE, TK_HEAD, TK_BODY, TK_SEND, TK_LINGER, TK_TUNNEL };

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
    char *held;  /* a request body kept for its hash and for replay upstream */
    size_t held_len, held_cap;

    /* hostile input: head syntax llhttp 8 lets through, per-IP limit */
    bool head_cr;                 /* the last request head byte parsed was CR */
    const char *rs_value_end;     /* like value_end, for obs-fold in upstream heads */
    bool ip_counted;              /* holds a max_connections_per_ip slot */
    bool pipeline_wait;           /* answers not read by the client: the next request waits */
};

#define CACHE_KEY_MAX 16384

/* http.c, for cached.c */
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


#endif
