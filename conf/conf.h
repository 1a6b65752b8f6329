/* SPDX-License-Identifier: MIT */
/*
 * conf: the sluice configuration language (see README "Configuration").
 *
 * Design: a lexer that keeps file:line on every token, a first pass that
 * builds a tree of directives and blocks, and a second pass that applies a
 * table of directive rows (name, context, arity, parser, bounds, target) and
 * then checks cross references (unknown upstream names, duplicate routes...).
 * Every problem is reported as "file:line: message" and loading goes on, so
 * one run lists every error.  The result is an immutable, refcounted snapshot:
 * workers pin the snapshot a request started with, SIGHUP publishes a new one.
 *
 * Threading: conf_load* run on the main thread only.  A published snapshot is
 * read-only, so any thread may read it; conf_ref/conf_unref are atomic.
 */
#ifndef SLUICE_CONF_H
#define SLUICE_CONF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

enum conf_log_level { CONF_LOG_ERROR = 0, CONF_LOG_WARN, CONF_LOG_INFO, CONF_LOG_DEBUG };

enum conf_balance { CONF_BALANCE_ROUND_ROBIN = 0, CONF_BALANCE_LEAST_CONN, CONF_BALANCE_P2C };

/* A source position, for runtime messages that point back at the conf. */
struct conf_pos {
    const char *file; /* owned by the snapshot; "(default)" for a built-in default */
    int line;
};

/* "set_header NAME VALUE" (value != NULL) or "remove_header NAME" (value == NULL).
 * ${ENV} is already substituted in value. */
struct conf_header_op {
    char *name;
    char *value;
};

/* ---- admission control (issue 5: rate limits, max_inflight) ---- */

enum conf_limit_scope { CONF_LIMIT_LOCAL = 0, CONF_LIMIT_GLOBAL };
enum conf_limit_on_error { CONF_LIMIT_ERR_LOCAL = 0, CONF_LIMIT_ERR_ALLOW, CONF_LIMIT_ERR_DENY };
enum conf_limit_key_kind { CONF_LIMIT_KEY_IP = 0, CONF_LIMIT_KEY_HEADER, CONF_LIMIT_KEY_QUERY, CONF_LIMIT_KEY_ROUTE };

/* Bounds: limits on one route, parts in one limit's key. */
#define CONF_ROUTE_LIMITS_MAX 8
#define CONF_LIMIT_KEYS_MAX   8

/* One part of a limit's `key a,b`: header names lowercased. */
struct conf_limit_key {
    enum conf_limit_key_kind kind;
    char *name; /* header:NAME / query:NAME; NULL for ip and route */
};

/* `limit NAME { key; rate N/P; burst; scope; on_redis_error; max_keys; headers; }` at top level. */
struct conf_limit {
    char *name;
    struct conf_limit_key *keys; /* default: ip */
    size_t nkeys;
    uint64_t rate;      /* requests per period (required) */
    uint64_t period_ms; /* 1s, 1m, 1h or 1d */
    unsigned burst;     /* requests allowed at once on top of `rate`, default 0 */
    enum conf_limit_scope scope;             /* default local */
    enum conf_limit_on_error on_redis_error; /* default local */
    unsigned max_keys;  /* keys held by the local store, default 100000 */
    bool headers;       /* RateLimit-* on allowed responses, default on */
    struct conf_pos pos;
};

/* `trusted_proxies CIDR...`: peers whose X-Forwarded-For is believed. */
struct conf_cidr {
    unsigned char addr[16]; /* IPv4 in the first 4 bytes */
    unsigned char bits;
    bool is_v6;
};

struct conf_cidrs {
    struct conf_cidr *v;
    size_t n;
};

/* `max_inflight N queue=Q queue_timeout=T` (route or upstream); max 0 = none. */
struct conf_max_inflight {
    unsigned max;
    unsigned queue;            /* waiting requests, default 100; 0 = 503 at once when full */
    uint64_t queue_timeout_ms; /* default 5s */
    struct conf_pos pos;
};

struct conf_listen {
    struct sockaddr_storage addr; /* numeric address, port set */
    socklen_t addrlen;
    char *text; /* "127.0.0.1:8080" as normalised text */
    bool tls;
    char *tls_cert; /* tls cert=FILE key=FILE (PEM) */
    char *tls_key;
    struct conf_pos pos;
};

struct conf_upstream_server {
    char *host; /* as written: a name or a numeric address (IPv6 without its brackets) */
    uint16_t port;
    char *name; /* "host:port", the key in stats */
    unsigned weight; /* default 1 */
    bool backup;
    bool tls;
    struct conf_pos pos;
};

/* A set of HTTP statuses (100..599), for `on=` lists. */
struct conf_status_set {
    uint64_t bits[10];
};
#define CONF_STATUS_HAS(set, st) ((st) < 640 && ((set)->bits[(st) / 64] >> ((st) % 64) & 1))

/* `breaker failures=5 ratio=50% window=30s min=20 open=60s max_open=10m half_open=3 on=...`
 * in an upstream: one breaker per server of the upstream, shared by all workers. */
struct conf_breaker {
    bool enabled;              /* a breaker directive is present */
    unsigned failures;         /* consecutive failures that open it, default 5; 0 = off */
    unsigned ratio_pct;        /* failure share over window that opens it, default 50; 0 = off */
    uint64_t window_ms;        /* default 30s */
    unsigned min_requests;     /* requests in the window before the ratio counts, default 20 */
    uint64_t open_ms;          /* first open period, default 30s */
    uint64_t max_open_ms;      /* open periods double on repeated trips up to this, default 10m */
    unsigned half_open;        /* probes let through, and successes that close it, default 3 */
    struct conf_status_set on; /* statuses that count as failures, default 429,500,502,503,504 */
};

/* Retry conditions (`retry N on=...`). */
enum conf_retry_on {
    CONF_RETRY_CONNECT = 1u << 0, /* connect refused / failed / timed out */
    CONF_RETRY_TIMEOUT = 1u << 1, /* header timeout */
    CONF_RETRY_RESET = 1u << 2,   /* closed or reset before a complete response head */
};

struct conf_retry {
    unsigned tries;            /* retries after the first try, default 0 (none) */
    unsigned on;               /* enum conf_retry_on bits */
    struct conf_status_set on_status; /* statuses retried */
    uint64_t backoff_base_ms;  /* default 100ms */
    uint64_t backoff_cap_ms;   /* default 2s */
    uint64_t body_max;         /* request bodies kept for replay up to this size, default 64k */
    unsigned budget_pct;       /* `retry_budget P% min=N/s`: default 20 */
    unsigned budget_min_per_s; /* default 10 */
};

/* `health_check PATH interval= timeout= rise= fall=` */
struct conf_health_check {
    char *path; /* NULL: no active checks */
    uint64_t interval_ms; /* default 5s */
    uint64_t timeout_ms;  /* default 2s */
    unsigned rise;        /* successes that bring a down server back, default 2 */
    unsigned fall;        /* failures that take it down, default 3 */
};

#define CONF_MAX_UPSTREAM_SERVERS 1024

struct conf_upstream {
    char *name;
    struct conf_upstream_server *servers;
    size_t nservers;
    enum conf_balance balance;      /* default p2c */
    unsigned keepalive;             /* idle connections kept per server per worker, default 64; 0 = none */
    uint64_t keepalive_timeout_ms;  /* idle pooled connection lifetime, default 60s */
    uint64_t connect_timeout_ms;    /* default 5s */
    uint64_t header_timeout_ms;     /* request sent -> response head complete, default 60s */
    uint64_t idle_timeout_ms;       /* max silence while a response body streams, default 60s */
    unsigned max_fails;             /* passive health: failures in a row that mark a server down, default 1 */
    uint64_t fail_timeout_ms;       /* ...and for how long, default 10s */
    struct conf_retry retry;
    struct conf_breaker breaker;
    struct conf_health_check health;
    struct conf_max_inflight max_inflight; /* issue 5: shared by every route using this upstream */
    struct conf_pos pos;
    /* TLS to the servers marked `tls` (README "TLS") */
    bool tls_verify;  /* check the chain and the host name, default on */
    char *tls_ca;     /* trusted CAs (PEM file); NULL = the system store */
    char *tls_cert;   /* client certificate chain (PEM), with tls_key; NULL = none */
    char *tls_key;
    char *tls_sni;    /* SNI and the name verified; NULL = the server's host when it is a name */
};

/* `cache NAME { memory; max_object; }` at top level: one store per name,
 * shared by every worker and kept across reloads while the name stays. */
struct conf_cache {
    char *name;
    uint64_t memory;     /* byte budget of the in-memory tier, default 256m */
    uint64_t max_object; /* largest response stored, default 8m (<= memory / 8) */
    struct conf_pos pos;
    bool redis;          /* `redis on`: a second tier in the top-level redis, default off */
};

/* `redis redis://HOST[:PORT][/DB] { timeout D; }` at top level: the Redis
 * every instance shares (cache second tier). */
struct conf_redis {
    char *url;           /* normalised: "redis://127.0.0.1:6379/0", "redis://[::1]:6379/0" */
    char *host;          /* numeric IPv4 or IPv6 (no brackets); "localhost" is resolved at load */
    uint16_t port;       /* default 6379 */
    unsigned db;         /* default 0 */
    uint64_t timeout_ms; /* each command's deadline, default 50ms */
    struct conf_pos pos;
};

/* `ttl_status 404=30s 5xx=0 ...`: a status or a class (NXX) and a TTL (0 = never store). */
struct conf_ttl_status {
    unsigned lo, hi; /* 404..404, 500..599 */
    uint64_t ttl_ms;
};

/* `ttl_from json:data.status completed=1h processing=10s ...` */
struct conf_ttl_value {
    char *value;
    uint64_t ttl_ms;
};

/* Methods a route caches: bit (1 << llhttp method number). */
#define CONF_CACHE_METHOD_BIT(m) (1u << (m))

/* The `cache NAME { ... }` (or bare `cache NAME;`) inside a route. */
struct conf_route_cache {
    struct conf_cache *cache;     /* resolved reference into conf->caches */
    uint32_t methods;             /* default GET and HEAD */
    bool has_ttl;                 /* `ttl D` */
    uint64_t ttl_ms;              /* used when the origin gives no freshness */
    bool ttl_override;            /* `ttl D override`: the route's TTL wins over the origin's headers */
    struct conf_ttl_status *ttl_status; /* `ttl_status`, in conf order, first match wins */
    size_t nttl_status;
    char *ttl_header;             /* `ttl_from header:NAME`: seconds, or a duration with unit */
    char *ttl_json_path;          /* `ttl_from json:a.b.c` (dot path into objects) */
    struct conf_ttl_value *ttl_json_values; /* value=ttl pairs; a value not listed is not stored */
    size_t nttl_json_values;
    uint64_t stale_while_revalidate_ms; /* default 0: only what the origin allows */
    uint64_t stale_if_error_ms;         /* default 0: only what the origin allows */
    uint64_t max_stale_ms;              /* cap on any staleness served, default 1d */
    char **key_headers;           /* `key method,host,path,query,body,header:X-Api-Key,...`: extra request headers */
    size_t nkey_headers;
    bool key_body;                /* SHA-256 of the request body in the key (POST caching) */
    uint64_t key_body_max;        /* `key_body_max SIZE`: larger bodies are not cached, default 1m */
    bool key_query_sorted;        /* `query_sort on` */
    char **key_query_ignore;      /* `query_ignore utm_source utm_medium ...` */
    size_t nkey_query_ignore;
    struct conf_pos pos;
};

struct conf_route {
    char *prefix; /* "/v1/chat/completions" */
    size_t prefix_len;
    struct conf_upstream *upstream; /* resolved reference into conf->upstreams */
    struct conf_header_op *req_ops; /* set_header / remove_header, in conf order */
    size_t nreq_ops;
    struct conf_header_op *resp_ops; /* set_response_header / remove_response_header */
    size_t nresp_ops;
    uint64_t websocket_idle_timeout_ms; /* idle timeout of an upgraded tunnel, default 300s */
    struct conf_route_cache *cache; /* NULL: the route never caches */
    uint64_t deadline_ms;           /* all tries of a request together, default 0 = none */
    struct conf_upstream *fallback; /* `fallback NAME`: used while every server of upstream is open */
    bool retry_non_idempotent;      /* retry POST/PATCH after they reached the upstream, with an Idempotency-Key */
    /* issue 5: admission control */
    struct conf_limit **limits; /* `limit NAME;` in conf order, into conf->limits */
    size_t nlimits;
    struct conf_max_inflight max_inflight;
    bool server_timing;     /* effective: the route's own `server_timing`, else its server's (issue 6) */
    bool has_server_timing; /* the route sets it itself */
    void *runtime; /* left NULL by conf; the proxy hangs its per-route state here */
    struct conf_pos pos;
};

/* `analytics postgresql://USER@HOST:PORT/DB { batch; flush; queue; }` at top
 * level: request rows into PostgreSQL (issue 6). */
struct conf_analytics {
    char *url;          /* as written (libpq URI or key=value conninfo) */
    char *hostaddr;     /* numeric host libpq connects to ("localhost" resolved at load) */
    unsigned batch;     /* rows per COPY, default 1000 */
    uint64_t flush_ms;  /* a partial batch is written after this long, default 500ms */
    unsigned queue;     /* rows waiting, all workers together; more are dropped, default 100000 */
    struct conf_pos pos;
};

struct conf_server {
    struct conf_listen *listens;
    size_t nlistens;
    char **names; /* server_name values, lowercased; none = matches any host */
    size_t nnames;
    char *process_time_header;      /* default "X-Process-Time"; NULL when "off" */
    uint64_t client_header_timeout_ms; /* first byte -> headers complete, default 10s */
    uint64_t client_body_timeout_ms;   /* max silence while reading a request body, default 30s */
    uint64_t keepalive_timeout_ms;     /* idle client connection between requests, default 75s */
    uint64_t send_timeout_ms;          /* max time a write to the client may stall, default 60s */
    uint64_t max_header_size;          /* request line + headers, default 16k -> 431 / 414 */
    unsigned max_headers;              /* default 100 -> 431 */
    uint64_t max_uri_size;             /* default 8k -> 414 */
    uint64_t max_body_size;            /* default 10m -> 413; 0 = unlimited */
    bool via;                          /* add Via both ways, default on */
    struct conf_cidrs trusted_proxies; /* issue 5: none here = the top-level list */
    bool server_timing;                /* Server-Timing response header, default off (issue 6) */
    bool server_timing_any;            /* it or one of its routes has server_timing on */
    struct conf_route *routes;         /* sorted by prefix length, longest first */
    size_t nroutes;
    struct conf_pos pos;
};

struct conf {
    atomic_uint refs;
    unsigned generation; /* set by the caller that publishes it */
    char *path;          /* file it came from, "(embedded)" for the built-in default */

    unsigned workers;  /* "auto" is resolved to the number of CPUs at load */
    enum conf_log_level log_level; /* error_log stderr LEVEL; default info */

    bool admin_enabled;         /* an admin block, or the default 127.0.0.1:9901 */
    struct conf_listen admin_listen;
    char *admin_token;          /* NULL = no token required */

    uint64_t shutdown_timeout_ms; /* drain deadline on SIGTERM, default 30s */
    unsigned max_connections;     /* per process, default 100000 */
    unsigned max_connections_per_ip; /* per client address, whole process; default 0 = no limit */

    struct conf_upstream *upstreams;
    size_t nupstreams;
    struct conf_cache *caches;
    size_t ncaches;
    struct conf_redis *redis; /* NULL without a redis directive */
    /* issue 5: admission control */
    struct conf_limit *limits;
    size_t nlimits;
    struct conf_cidrs trusted_proxies; /* none: X-Forwarded-For is never believed */
    struct conf_server *servers;
    size_t nservers;

    /* observability (issue 6) */
    char *access_log;               /* a file, "stdout", or NULL: off (the default) */
    uint64_t access_log_buffer;     /* bytes of lines waiting for the writer, default 1m; more are dropped */
    char *slow_log;                 /* "stderr" (default), "stdout", a file, or NULL: off */
    uint64_t slow_log_threshold_ms; /* requests at least this long go to the slow log, default 1s */
    struct conf_analytics *analytics; /* NULL without an analytics directive */

    char **_files; /* private: every file read; conf_pos.file points into these */
    size_t _nfiles;
};

/* Loads and checks a conf file.  Every error is printed to err as
 * "file:line: message\n" (several per run; "file: message" for a problem
 * with a whole file); returns NULL if there was any.  err may be NULL to
 * only count them.  The returned snapshot has refs == 1. */
struct conf *conf_load_file(const char *path, FILE *err);

/* The same from memory; name is what error messages print as the file. */
struct conf *conf_load_string(const char *text, const char *name, FILE *err);

/* Prints the effective configuration (every default filled in) in conf syntax,
 * so that the output loads again to the same snapshot. */
void conf_print(const struct conf *conf, FILE *out);

struct conf *conf_ref(struct conf *conf);
void conf_unref(struct conf *conf); /* frees on the last unref */

/* The conf `sluice` runs with when no -c is given: the bundled demo origin on
 * 127.0.0.1:8081 behind a listener on 127.0.0.1:8080. */
extern const char conf_embedded_default[];

#endif
