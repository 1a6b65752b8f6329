/* SPDX-License-Identifier: MIT */
/*
 * upstream: where requests go — server identities, groups with a balancing
 * pick, and per-worker pools of keep-alive connections.
 *
 * Design: an upstream server ("group/host:port") gets a process-wide identity
 * the first time a conf names it; the identity (id, stats) outlives reloads so
 * counters and pooled connections carry over.  A conf generation builds
 * struct upstream_group values with the resolved addresses.  Each worker owns
 * one struct upstream_pool: idle connections per server id, each still read
 * so that an origin closing it is noticed at once, and closed after
 * keepalive_timeout.
 *
 * Threading: upstream_server_get and upstream_group_build/free run on the
 * main thread; upstream_group_pick may run on any worker; a pool and its
 * connections belong to one worker's loop.
 */
#ifndef SLUICE_UPSTREAM_H
#define SLUICE_UPSTREAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "breaker/breaker.h"
#include "breaker/retry.h"
#include "common/list.h"
#include "common/outq.h"
#include "common/tls.h"
#include "conf/conf.h"
#include "stats/stats.h"

struct upstream_server {
    unsigned id; /* dense, process-wide: indexes the per-worker pools */
    char *key;   /* "group/host:port" */
    struct stats_set *stats;
    atomic_bool health_down; /* set by the active health checks (upstream/health.c) */
    /* shared by every worker, read by the balancing pick */
    atomic_uint inflight;             /* requests using it now */
    _Atomic uint64_t ewma_us;         /* moving average of the time to a response head */
    atomic_uint fails;                /* passive health: failures in a row */
    _Atomic uint64_t down_until_ms;   /* passive health: skipped until then (uv_now-style ms) */
    struct breaker breaker;           /* used when its upstream has a `breaker` */
};

/* Finds or creates the identity of a server (main thread). */
struct upstream_server *upstream_server_get(const char *group, const char *hostport);

struct upstream_target {
    struct upstream_server *srv;
    const struct conf_upstream_server *conf;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    /* TLS (a `tls` server): set by the proxy when it builds a generation */
    SSL_CTX *tls_ctx;            /* NULL: plain */
    const char *tls_sni;         /* NULL: no SNI */
    const char *tls_verify_name; /* NULL: no name check (tls_verify off) */
    const char *tls_host;        /* Host for a request that came without one */
};

struct upstream_group {
    const struct conf_upstream *conf;
    struct upstream_target *targets;
    size_t ntargets;
    atomic_uint next; /* round-robin cursor */
    struct retry_budget budget;
};

/* Resolves the conf's upstream host names with uv_getaddrinfo on loop (the
 * main thread's: never a worker's) and, when all are done, calls cb with an
 * array of conf->nupstreams groups (or NULL and a message naming the host that
 * failed).  cb may run before this returns when every host is numeric. */
typedef void (*upstream_build_cb)(void *arg, struct upstream_group *groups, const char *error);
void upstream_groups_build(uv_loop_t *loop, const struct conf *conf, upstream_build_cb cb, void *arg);
void upstream_groups_free(struct upstream_group *groups, size_t n);

/* Picks a server for a try, by the group's balance policy, among the
 * primaries that are up and not in `tried` (a bit per target index), then
 * the backups; when none is up, one that is down rather than nothing (the
 * try itself tells).  Never one in `excluded` or whose breaker is open or in
 * quota: NULL when that leaves none.  Any thread. */
struct upstream_target *upstream_group_pick(struct upstream_group *g, uint64_t tried, uint64_t excluded,
                                           uint64_t now_ms);

/* What a try taught about its server: passive health and the latency the
 * p2c policy compares.  elapsed_us: request sent -> response head. */
void upstream_server_success(struct upstream_server *s, uint64_t elapsed_us);
void upstream_server_failure(struct upstream_server *s, const struct conf_upstream *cu, uint64_t now_ms);
bool upstream_server_is_down(struct upstream_server *s, uint64_t now_ms);

struct upstream_pool;
struct upstream_conn;

typedef void (*upstream_connect_cb)(struct upstream_conn *uc, int status);
/* Data (nread > 0, in blk, which the callee now owns a ref of) or an error
 * (nread < 0, blk NULL) on a connection with an owner. */
typedef void (*upstream_read_cb)(struct upstream_conn *uc, ssize_t nread, struct buf *blk);

/* A connection to one upstream server, owned by one worker.  While a request
 * uses it (`owner` set) the request drives it and gets its reads through
 * on_read; while idle the pool does.  The socket is read all its life with
 * one callback that dispatches, so handing a connection between pool and
 * request costs no epoll change. */
struct upstream_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    struct outq out; /* requests to the server; done_cb/owner set by the user */
    struct upstream_pool *pool;
    unsigned server_id;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned requests; /* requests sent on it so far: >0 means reused */
    bool is_idle;
    bool is_closing;
    int open_handles;
    bool is_reading;
    void *owner;
    upstream_connect_cb connect_cb;
    upstream_read_cb on_read;
    struct list link; /* in the pool's idle list of its server */
    struct tls *tls;  /* NULL: plain; connect_cb runs once its handshake is done */
};

/* Why a TLS connection failed, or NULL when it did not fail in TLS. */
const char *upstream_conn_tls_error(const struct upstream_conn *uc);

struct upstream_pool *upstream_pool_create(uv_loop_t *loop);
/* Closes every idle connection; the pool frees itself once they are closed
 * (connections still owned by requests must have been closed before). */
void upstream_pool_destroy(struct upstream_pool *pool);

/* An idle connection to target, taken out of the pool (timer stopped), or
 * NULL.  The caller sets owner and on_read. */
struct upstream_conn *upstream_pool_take(struct upstream_pool *pool, const struct upstream_target *t);

/* Starts a new connection to target; cb(uc, status) runs later on the loop,
 * never before this returns (for a TLS target, after the handshake, offering
 * the last session this worker got from that server).  Returns NULL on
 * immediate failure with *err. */
struct upstream_conn *upstream_conn_connect(struct upstream_pool *pool, const struct upstream_target *t,
                                            upstream_connect_cb cb, void *owner, int *err);

/* Gives a connection back after a complete exchange: kept idle for
 * timeout_ms when the server has fewer than max_idle idle connections,
 * else closed.  The caller must have stopped its timer. */
void upstream_pool_put(struct upstream_conn *uc, unsigned max_idle, uint64_t timeout_ms);

/* Reading is on from connect to close; an owner may pause it (backpressure). */
int upstream_conn_read_start(struct upstream_conn *uc);
void upstream_conn_read_stop(struct upstream_conn *uc);

/* Closes and frees (in the close callbacks) a connection not in the pool. */
void upstream_conn_close(struct upstream_conn *uc);

#endif
