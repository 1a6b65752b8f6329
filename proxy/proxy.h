/* SPDX-License-Identifier: MIT */
/*
 * proxy: the process — main thread, workers, listeners, the HTTP/1 server
 * side of each connection, the request lifecycle and the admin endpoints.
 *
 * Threads: the main thread runs a control loop (signals, conf reload, DNS
 * for upstream names).  Each worker runs one uv_loop with its own
 * SO_REUSEPORT listening sockets (the main thread creates and binds them so a
 * bind error rejects a reload), its own upstream pool and buffers.  The main
 * thread talks to a worker only through worker_post (mutex-protected queue +
 * uv_async_send).
 *
 * Generations: a loaded conf plus what the proxy derives from it (upstream
 * groups with resolved addresses, per-route state) form a refcounted struct
 * proxy_gen.  A request pins the generation it started with; a reload
 * publishes a new one to every worker.
 */
#ifndef SLUICE_PROXY_H
#define SLUICE_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/list.h"
#include "conf/conf.h"
#include "limit/limit.h"
#include "stats/stats.h"
#include "upstream/upstream.h"

#define SLUICE_VERSION "0.1.0"

struct cache;
struct tlsgen;

struct route_rt {
    char *name; /* stats key: "<server name or listen>/<prefix>" */
    struct stats_set *stats;
    struct upstream_group *group;
    struct upstream_group *fallback; /* `fallback`: while every server of group is open, or NULL */
    struct cache *store; /* the route's cache store, NULL when it does not cache */
    /* admission control (issue 5, limited.c) */
    bool has_admission;                       /* any of the below: limited_begin runs */
    struct limit *limits[LIMIT_ROUTE_MAX];    /* the route's `limit`s, in conf order */
    const struct conf_limit *limit_confs[LIMIT_ROUTE_MAX];
    size_t nlimits;
    struct limit_inflight *inflight[2];       /* the route's max_inflight, then its upstream's */
    size_t ninflight;
};

struct proxy_gen {
    atomic_uint refs;
    struct conf *conf;
    struct upstream_group *groups; /* parallel to conf->upstreams */
    struct route_rt *routes;
    size_t nroutes;
    struct tlsgen *tls; /* certificates and TLS contexts of this conf, NULL without TLS */
};

struct proxy_gen *proxy_gen_ref(struct proxy_gen *g);
void proxy_gen_unref(struct proxy_gen *g);

enum worker_msg_type { WORKER_MSG_GEN, WORKER_MSG_DRAIN, WORKER_MSG_STOP };

/* A listening socket handed to a worker: fd already bound and listening. */
struct listen_fd {
    char *addr_text;
    int fd;
    bool is_admin;
};

struct worker_msg {
    enum worker_msg_type type;
    struct proxy_gen *gen; /* GEN: a ref for the worker */
    struct listen_fd *fds; /* GEN: sockets to start accepting on (the worker owns them) */
    size_t nfds;
    struct list link;
};

struct listener {
    uv_tcp_t tcp;
    struct worker *w;
    char *addr_text;
    bool is_admin;
    struct list link;
};

struct worker {
    unsigned id;
    uv_loop_t loop;
    uv_async_t async;
    pthread_t thread;
    pthread_mutex_t lock;
    struct list inbox;
    struct proxy_gen *gen;
    struct list listeners;
    struct list conns;
    unsigned nconns;
    struct list woken; /* connections a cache fill woke (under lock) */
    struct list limit_woken; /* queued connections given an in-flight slot (under lock; limited.c) */
    struct redis_conn *redis; /* the cache's second tier, when the conf has redis */
    char *redis_url;
    struct upstream_pool *pool;
    struct stats_counters *proc; /* this worker's slot of the "process" set */
    /* observability (obs.c, issue 6) */
    uv_timer_t obs_timer;  /* hands buffered access log lines to the writer */
    uint64_t obs_serial;   /* generated X-Request-Id values */
    bool is_draining;
    bool is_stopping;
    bool is_inbox_closed; /* under lock: the async handle is closing, posts are dropped */
};

/* Process-wide facts the admin endpoint reports. */
struct proxy_info {
    uint64_t started_ms; /* uv_hrtime at start, in ms */
    unsigned nworkers;
    atomic_uint generation;
    atomic_uint reloads_ok;
    atomic_uint reloads_failed;
    atomic_uint connections; /* client connections open, all workers */
    unsigned max_connections;
    uv_async_t *worker_exited; /* main loop's: a worker's loop has ended */
    atomic_uint workers_exited;
};
extern struct proxy_info proxy_info;

/* worker.c */
void worker_init(struct worker *w, unsigned id);
int worker_start(struct worker *w);
void worker_post(struct worker *w, struct worker_msg *msg);
/* Queues a connection of w on one of w's woken lists (link, once: *is_queued
 * says it is there) and wakes w's loop.  Any thread; under w->lock. */
void worker_wake(struct worker *w, struct list *woken, struct list *link, bool *is_queued);
/* A socket bound to addr with SO_REUSEPORT and listening, or a negative errno. */
int listen_socket_open(const struct sockaddr *addr, socklen_t len);

/* http.c: the HTTP/1 server side */
void conn_accept(struct listener *l);
/* Closes idle connections now and the others after their current response,
 * or every connection at once when force is set. */
void conn_close_all(struct worker *w, bool force);
/* Ends the worker's loop once it is draining and has no connection left. */
void worker_maybe_stop(struct worker *w);

/* admin.c: answers an admin request; writes status, content type and body. */
struct strbuf;
int admin_handle(struct worker *w, const char *method, const char *path, const char *auth_header,
                 struct strbuf *body, const char **content_type);
/* proxy/dashboard.html, embedded by the Makefile: the /dashboard page,
 * self-contained (no external asset). */
extern const char admin_dashboard_html[];

#endif
