/* SPDX-License-Identifier: MIT */
/*
 * cache: the HTTP cache — keys, freshness and TTL policy (RFC 9111 shared
 * cache rules plus the route's dynamic TTLs), the in-memory store, and the
 * fills that let many clients share one upstream response.
 *
 * Design.
 * - Policy (cache/policy.c, cache/key.c) is pure: functions of parsed header
 *   facts, the route's conf and `now` given as an argument, so tests move time
 *   by hand.  Time is wall-clock milliseconds since the epoch (int64_t).
 * - The store (cache/store.c) is one per `cache NAME` block for the whole
 *   process, split into power-of-two shards by key hash, each with its own
 *   mutex, byte budget (memory / nshards) and S3-FIFO eviction (small FIFO,
 *   main FIFO, ghost FIFO of evicted hashes), padded to a cache line.  A lock
 *   is held only to find, link or unlink; never for I/O.
 * - Entries are immutable once published and refcounted with atomics: a
 *   reader keeps its ref while it sends, eviction only unlinks, the last
 *   cache_entry_release frees.  An entry holds the response ready to send: a
 *   head (status line and fields, no Age, ending before the blank line) and a
 *   body framed as stored (Content-Length bytes, or chunked with the
 *   origin's chunk boundaries so a replayed SSE stream keeps its events).
 * - A fill is a response on its way into the cache.  The first miss for a key
 *   starts it; later misses on any worker join it and send the bytes as they
 *   arrive, not after.  The filler appends to immutable blocks and publishes
 *   the length with a release store; readers load it with acquire and read
 *   below it without a lock.  Joiners are woken through their own callback
 *   (the proxy posts to the joiner's worker).  A fill that fails, grows past
 *   max_object or turns out uncacheable is aborted: joiners are woken at once
 *   and go upstream themselves.
 *
 * Threading: cache_get on the main thread; everything else from any worker.
 */
#ifndef SLUICE_CACHE_H
#define SLUICE_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"
#include "conf/conf.h"

/* ==== HTTP dates, Cache-Control ==== */

/* Seconds since the epoch of an HTTP-date (IMF-fixdate, RFC 850, asctime;
 * RFC 9110 5.6.7), or -1 when it is not one. */
int64_t cache_date_parse(const char *s, size_t len);
/* Writes the IMF-fixdate of secs ("Sun, 06 Nov 1994 08:49:37 GMT") and a NUL
 * into out (30 bytes); returns 29. */
size_t cache_date_format(int64_t secs, char *out);

#define CACHE_CC_ABSENT (-1)

/* Cache-Control directives of one message (RFC 9111 5.2).  Durations in
 * seconds; CACHE_CC_ABSENT when not given.  Several field lines add up. */
struct cache_cc {
    int64_t max_age, s_maxage, stale_while_revalidate, stale_if_error, max_stale, min_fresh;
    bool no_store, no_cache, is_private, is_public, must_revalidate, proxy_revalidate, only_if_cached, immutable;
    bool no_cache_fields; /* no-cache="Field": a shared cache must not reuse without revalidation anyway */
    bool private_fields;  /* private="Field" */
    bool is_invalid;      /* a duplicated or malformed freshness directive: treat as stale (RFC 9111 4.2.1) */
    bool must_understand; /* RFC 9111 5.2.2.3 */
};

void cache_cc_init(struct cache_cc *cc);
void cache_cc_parse(struct cache_cc *cc, const char *value, size_t len);

/* What the cache needs to know of a request, gathered field by field. */
struct cache_request_facts {
    unsigned method; /* llhttp enum http_method */
    struct cache_cc cc;
    bool has_cc;
    bool pragma_no_cache;
    bool has_authorization;
    bool has_conditional; /* If-None-Match / If-Modified-Since / If-Match / If-Unmodified-Since / If-Range */
    int64_t if_modified_since; /* seconds, -1 */
    char if_none_match[512];   /* raw value (truncated), "" when absent */
};

/* What the cache needs to know of a response. */
struct cache_response_facts {
    unsigned status;
    struct cache_cc cc;
    bool has_cc;
    bool pragma_no_cache;
    int64_t date;          /* seconds, -1 */
    int64_t expires;       /* seconds; -1 absent; 0 when present but invalid (already expired) */
    bool has_expires;
    int64_t last_modified; /* seconds, -1 */
    int64_t age;           /* Age value in seconds, -1 absent, 2^31 when unreadable or repeated */
    bool has_etag;
    bool has_set_cookie;
    bool vary_star;        /* Vary: * never matches */
    char vary[256];        /* normalised list: lowercase names, comma separated, sorted; "" when none */
    const char *ttl_header_name; /* the route's ttl_from header name (not owned), NULL */
    char ttl_header[64];   /* value of the route's ttl_from header, "" when absent */
    char tags[512];        /* Surrogate-Key / Cache-Tag values, space separated */
    bool has_content_range;
    /* Surrogate-Control (W3C Edge Architecture 1.0) directives meant for us:
     * untargeted, or targeted at CACHE_SURROGATE_TOKEN.  A lifetime there
     * (max-age=N[+M]) replaces the Cache-Control one and its no-store. */
    struct cache_cc sc;
    bool has_sc;
};

/* Our Surrogate-Control device token: the proxy announces it upstream as
 * `Surrogate-Capability: sluice="Surrogate/1.0"`, and directives an origin
 * targets with ";sluice" are ours. */
#define CACHE_SURROGATE_TOKEN "sluice"

void cache_request_facts_init(struct cache_request_facts *f, unsigned method);
void cache_request_facts_add(struct cache_request_facts *f, const char *name, size_t nlen, const char *value,
                             size_t vlen);
/* ttl_header: the route's `ttl_from header:NAME` field name, or NULL. */
void cache_response_facts_init(struct cache_response_facts *f, unsigned status, const char *ttl_header);
void cache_response_facts_add(struct cache_response_facts *f, const char *name, size_t nlen, const char *value,
                              size_t vlen);

/* ==== keys ==== */

/* Request header lookup for keys and Vary: copies the value (several field
 * lines joined with ", ") into out, NUL-terminated; returns its length, or -1
 * when the request has no such field. */
typedef int (*cache_header_get_cb)(void *arg, const char *lname, char *out, size_t cap);

struct cache_key_input {
    const char *method;  /* "GET" */
    const char *scheme;  /* "http" */
    const char *host;    /* lowercase, with port if the client sent one */
    const char *target;  /* origin-form path and query */
    size_t target_len;
    cache_header_get_cb get_header;
    void *arg;
    const unsigned char *body_sha256; /* 32 bytes when the route keys on the body, else NULL */
};

/* Builds the primary key: "METHOD scheme://host/path?query" (query sorted and
 * ignored parameters dropped as the route says; HEAD shares GET's key) then,
 * per `key` header, "\n" name ":" value (Authorization and Cookie values as
 * SHA-256 hex, never in clear), then "\nbody:" + hex digest.  *url_off and
 * *url_len locate "scheme://host/path?query" inside it (for purge by URL).
 * Returns the length, or 0 when it does not fit in cap. */
size_t cache_key_build(const struct conf_route_cache *p, const struct cache_key_input *in, char *out, size_t cap,
                       size_t *url_off, size_t *url_len);
uint64_t cache_hash(const char *data, size_t len);

/* The secondary key of a request for a response's Vary list (names as in
 * cache_response_facts.vary): "name=value\n..." with values normalised
 * (whitespace folded).  Returns the length or 0 when it does not fit. */
size_t cache_vary_key(const char *vary, cache_header_get_cb get_header, void *arg, char *out, size_t cap);

/* ==== TTL and use decisions ==== */

enum cache_ttl_source {
    CACHE_TTL_NONE = 0,  /* not stored */
    CACHE_TTL_ROUTE_OVERRIDE, /* `ttl D override` */
    CACHE_TTL_JSON,      /* `ttl_from json:` */
    CACHE_TTL_HEADER,    /* `ttl_from header:` */
    CACHE_TTL_ORIGIN,    /* s-maxage / max-age / Expires */
    CACHE_TTL_STATUS,    /* `ttl_status` */
    CACHE_TTL_ROUTE,     /* `ttl D` when the origin says nothing */
    CACHE_TTL_HEURISTIC, /* RFC 9111 4.2.2: 10 % of Date - Last-Modified, at most 1 day */
};

struct cache_ttl {
    enum cache_ttl_source source;
    int64_t fresh_ms;        /* freshness lifetime */
    int64_t initial_age_ms;  /* corrected_initial_age (RFC 9111 4.2.3) */
    int64_t swr_ms;          /* stale-while-revalidate window past freshness */
    int64_t sie_ms;          /* stale-if-error window past freshness */
    bool must_revalidate;    /* must-revalidate, proxy-revalidate or s-maxage: never serve stale */
    bool no_cache;           /* stored but revalidated before every use */
    bool needs_json;         /* the decision waits for the body: call cache_decide_json */
};

/* Whether and how long to store a response (RFC 9111 3 and 4.2 for a shared
 * cache, then the route's dynamic TTLs).  Order of precedence, first that
 * applies wins: route `ttl override`; `ttl_from json` (decided later, from
 * the body); `ttl_from header`; the origin's s-maxage / max-age / Expires;
 * `ttl_status`; route `ttl`; heuristic freshness.  Whatever the rule, a
 * response is never stored when: the method is not one the route caches,
 * the request or response says no-store, the response is private, Vary: *,
 * partial (206; Content-Range means nothing on other statuses, RFC 9110
 * 14.4), or the request had Authorization without
 * public / s-maxage / must-revalidate in the response (RFC 9111 3.5).
 * Details (cache/policy.c says why): the route rules (`ttl`, override, json)
 * apply to heuristically cacheable statuses only; a matching `ttl_status
 * N=0` vetoes like no-store; Set-Cookie needs the origin's own positive
 * freshness or public; Surrogate-Control max-age comes before the origin's
 * Cache-Control and overrides its no-store, as must-understand does.
 * Returns false when it must not be stored. */
bool cache_decide_store(const struct conf_route_cache *p, const struct cache_request_facts *rq,
                        const struct cache_response_facts *rs, int64_t request_time_ms, int64_t response_time_ms,
                        struct cache_ttl *out);

/* The `ttl_from json:` decision once the body is complete: the TTL of the
 * value found at the route's path, or -1 (do not store) when the body is not
 * JSON, the path is missing or the value is not listed.  Scans at most
 * len bytes once (bounded CPU). */
int64_t cache_decide_json(const struct conf_route_cache *p, const char *body, size_t len);

struct cache_entry;

enum cache_use {
    CACHE_USE_FRESH,       /* serve it */
    CACHE_USE_STALE_SWR,   /* serve it, and revalidate in the background once */
    CACHE_USE_REVALIDATE,  /* ask the origin (conditionally when it has validators) */
    CACHE_USE_STALE_IF_ERROR_ONLY, /* revalidate; serve it only if the origin fails */
};

/* How an entry may answer this request now (RFC 9111 4, 4.2.4, 5.2.1 and
 * RFC 5861), with the route's stale windows capped by its max_stale. */
enum cache_use cache_decide_use(const struct conf_route_cache *p, const struct cache_entry *e,
                                const struct cache_request_facts *rq, int64_t now_ms);

/* Age to send, in whole seconds (RFC 9111 4.2.3 current_age). */
int64_t cache_entry_age(const struct cache_entry *e, int64_t now_ms);

/* Whether the client's own conditional request is satisfied by the entry
 * (If-None-Match weak comparison, else If-Modified-Since against
 * Last-Modified or the entry's Date): answer 304 from the cache. */
bool cache_not_modified(const struct cache_entry *e, const struct cache_request_facts *rq);

/* ==== the store ==== */

/* One piece of a stored body. */
struct cache_piece {
    const char *data;
    size_t len;
};

struct cache_entry {
    /* read-only once published */
    uint64_t hash;
    char *key;
    size_t key_len;
    size_t url_off, url_len; /* inside key */
    char *vary;              /* the response's Vary list, "" for none */
    char *vary_key;          /* the request's cache_vary_key at store time */
    unsigned status;
    int64_t request_time_ms, response_time_ms;
    struct cache_ttl ttl;
    int64_t date;          /* seconds: Date of the response, or response time */
    int64_t last_modified; /* seconds, -1 */
    char *etag;            /* NULL when none */
    char *tags;            /* space separated, "" for none */
    const char *head;      /* "HTTP/1.1 200 OK\r\nName: value\r\n..." without Age and the final CRLF */
    size_t head_len;
    const struct cache_piece *body;
    size_t nbody;
    size_t body_len;
    bool is_chunked;   /* body carries chunked framing (Transfer-Encoding: chunked in head) */
    size_t bytes;      /* memory charged to the store */

    /* store-private */
    atomic_uint _refs;
    atomic_uchar _freq;
    unsigned char _queue;
    bool _is_linked;
    struct cache_entry *_hnext;
    struct list _qlink;
    void *_blocks;
};

struct cache;

/* Finds or creates the store named name (main thread); a reload may change
 * its budget (shrinking evicts at once) and max_object.  Stores live for the
 * process.  nshards (4 x workers) is rounded up to a power of two >= 4, then
 * halved (not below 4) while a shard's budget (memory / nshards) would be
 * under 2 x max_object; it is fixed at creation.  NULL on ENOMEM. */
struct cache *cache_get(const char *name, uint64_t memory, uint64_t max_object, unsigned nshards);
/* Frees every store and the entries and fills they hold (at exit, once no
 * worker runs, so leak checkers see nothing). */
void cache_shutdown_all(void);

/* A request as the store sees it. */
struct cache_lookup_req {
    const char *key;
    size_t key_len;
    size_t url_off, url_len; /* the URL inside key, so a purge can cancel a matching fill */
    uint64_t hash;
    cache_header_get_cb get_header; /* for Vary */
    void *arg;
};

struct cache_fill;

/* The newest entry of the key whose Vary matches the request (a ref for the
 * caller), else NULL; *fill gets a ref to a fill in progress for the same
 * key and variant, if any (may be set with or without an entry). */
struct cache_entry *cache_lookup(struct cache *c, const struct cache_lookup_req *rq, struct cache_fill **fill);
void cache_entry_ref(struct cache_entry *e);
void cache_entry_release(struct cache_entry *e);

/* ==== fills ==== */

/* A joiner: wake() is called from the filler's thread (or any thread that
 * aborts) each time there is news — more bytes, the end, or an abort.
 * Calls coalesce: the joiner reads the state when it runs. */
struct cache_waiter {
    void (*wake)(struct cache_waiter *w);
    void *owner;
    struct list _link;
};

enum cache_fill_state { CACHE_FILL_RUNNING, CACHE_FILL_DONE, CACHE_FILL_ABORTED };

/* Starts the fill for a key (and the request's variant); NULL when one runs
 * already for that key — then *existing gets a ref to it to join — or on
 * ENOMEM (*existing NULL).  The filler holds a ref, and must call
 * cache_fill_finish or cache_fill_abort before it releases it. */
struct cache_fill *cache_fill_start(struct cache *c, const struct cache_lookup_req *rq,
                                    struct cache_fill **existing);

/* The filler gives the response's Vary list (as cache_response_facts.vary)
 * and its own request's cache_vary_key for it, before cache_fill_set_head,
 * when the response has Vary.  A fill whose head has a Vary field without
 * this matches no joiner (cache_fill_matches).  -EINVAL after the head. */
int cache_fill_set_vary(struct cache_fill *f, const char *vary, const char *vary_key);

/* The filler publishes the head as the cache will serve it (status line and
 * end-to-end fields, framing included, no Age, no final CRLF) once it knows
 * the response may be stored; joiners can start sending then. */
int cache_fill_set_head(struct cache_fill *f, const char *head, size_t len, bool is_chunked);
/* Appends body bytes (framed as in the head).  -EFBIG past max_object (or
 * the shard's budget), -ENOMEM: the fill is aborted (joiners woken).
 * -EINVAL before the head or once ended. */
int cache_fill_append(struct cache_fill *f, const char *data, size_t len);
/* Publishes the entry (replacing older ones of the same key and variant) and
 * wakes joiners.  meta carries everything of struct cache_entry but the
 * bytes (url_off/url_len, vary, vary_key, times, ttl, validators, tags; key
 * and hash are the fill's; NULL vary/vary_key take cache_fill_set_vary's).
 * The fill ends DONE whenever it had a head, even when the entry is not
 * stored (joiners have every byte): then -E2BIG (larger than the shard),
 * -ECANCELED (a purge ran meanwhile), -ENOMEM or -EINVAL (Vary unknown).
 * Without a head: aborted, -EINVAL. */
int cache_fill_finish(struct cache_fill *f, const struct cache_entry *meta);
/* Ends a running fill as ABORTED and wakes joiners; no-op once ended. */
void cache_fill_abort(struct cache_fill *f);

enum cache_fill_state cache_fill_state(struct cache_fill *f);
/* The head once set (NULL before), and whether the body is chunked. */
const char *cache_fill_head(struct cache_fill *f, size_t *len, bool *is_chunked);
/* Bytes of body available from off: a pointer to a contiguous run and its
 * length (0 when none yet).  The bytes stay valid while the caller holds its
 * fill ref. */
size_t cache_fill_read(struct cache_fill *f, size_t off, const char **data);
/* Whether the response being filled is the request's variant: false once
 * the head is set when its Vary selects another variant (the joiner goes
 * upstream itself); true before the head (ask again once it is set). */
bool cache_fill_matches(struct cache_fill *f, cache_header_get_cb get_header, void *arg);

/* Joins / leaves (a waiter must leave before it is freed).  News from
 * before watch is not signalled: read the state after watching.  wake() runs
 * under the fill's mutex: it must be cheap and must not call into the fill;
 * once unwatch returns, it no longer runs for w. */
void cache_fill_watch(struct cache_fill *f, struct cache_waiter *w);
void cache_fill_unwatch(struct cache_fill *f, struct cache_waiter *w);
void cache_fill_ref(struct cache_fill *f);
void cache_fill_release(struct cache_fill *f);

/* ==== purge and stats ==== */

/* Each returns the number of entries removed. */
size_t cache_purge_url(struct cache *c, const char *url, size_t len); /* every method and variant of one URL */
size_t cache_purge_prefix(struct cache *c, const char *url_prefix, size_t len);
size_t cache_purge_tag(struct cache *c, const char *tag);
size_t cache_purge_all(struct cache *c);

struct cache_stats {
    uint64_t objects, bytes, memory, max_object;
    uint64_t inserts, evictions, purged, fills_aborted;
};
void cache_get_stats(struct cache *c, struct cache_stats *out);

/* Calls cb for every store (any thread; stores are never freed while the
 * process runs, so cb may keep using c). */
void cache_foreach(void (*cb)(struct cache *c, const char *name, void *arg), void *arg);

/* ==== the Redis second tier (cache/tier.c; cache_insert in cache/store.c) ====
 *
 * Several sluice instances share entries through Redis.  An entry travels as
 * one binary blob (magic, version byte, then every field with its length;
 * parsing checks each length against what is left, so a malformed blob is
 * rejected, never trusted).  Redis keys are "sluice:" + the hex SHA-256 of
 * the primary key, so their size is bounded whatever the URL.  A response
 * without Vary is stored there directly.  One with Vary stores there a small
 * index naming its Vary list, and the entry under "sluice:" + the hex
 * SHA-256 of the primary key and the variant's vary_key; a get reads the
 * index, builds the request's vary_key and reads the variant (two round
 * trips, for varying responses only).  The newest Vary list of a key wins.
 * Calls complete as common/redis.h says; the counters are process-wide. */

struct redis_conn;

/* Blobs larger than this are neither written nor read (GETRANGE bounds
 * what a read may bring in, whatever another instance wrote). */
#define CACHE_TIER_BLOB_MAX (64u << 20)

/* The blob of e: malloc'ed, *len bytes; NULL with errno ENOMEM, or EFBIG
 * past CACHE_TIER_BLOB_MAX. */
char *cache_entry_to_blob(const struct cache_entry *e, size_t *len);

/* A new unlinked entry (refs 1: the caller's, freed by cache_entry_release,
 * or given to the store with cache_insert) from a blob; NULL with errno
 * EBADMSG when the blob is not one cache_entry_to_blob wrote (truncated,
 * another version, a length past the end, bytes left over, a field out of
 * range) or ENOMEM.  Any thread. */
struct cache_entry *cache_entry_from_blob(const char *blob, size_t len);

/* Links an entry from cache_entry_from_blob into the memory store, replacing
 * the entry of the same key and variant, unless that one is at least as
 * new (response time): then -EEXIST.  -E2BIG when larger than max_object or
 * the shard.  The store takes its own ref: the caller keeps its ref either
 * way.  Any thread. */
int cache_insert(struct cache *c, struct cache_entry *e);

/* Writes e to Redis for ttl_ms (SET ... PX): fire-and-forget, the outcome is
 * counted.  0 when sent; -EINVAL (ttl_ms <= 0), -EFBIG, -ENOMEM, or the
 * connection's refusal (-ENOTCONN, -EBUSY...).  On r's loop thread. */
int cache_tier_put(struct redis_conn *r, const struct cache_entry *e, int64_t ttl_ms);

/* The answer to cache_tier_get: status 0 with e, a hit (a new entry as from
 * cache_entry_from_blob: the callee owns its ref); status 0 with e NULL, a
 * miss (absent, expired, or another variant); status < 0, the tier failed
 * (-ETIMEDOUT, -ECONNRESET, -ECANCELED from the connection, -EBADMSG a blob
 * that does not parse, -EPROTO an unexpected reply, -EFBIG, -ENOMEM). */
typedef void (*cache_tier_get_cb)(void *cbarg, int status, struct cache_entry *e);

/* Looks up the primary key (len bytes) in Redis.  get_header(arg) gives the
 * request's fields for Vary; it is called from the reply, so it and arg must
 * stay valid until cb runs.  0 when sent: cb then runs exactly once on r's
 * loop thread, never before this returns, within the connection's timeout
 * per round trip (there is no cancel; redis_conn_destroy completes it with
 * -ECANCELED).  Otherwise cb never runs: -ENOTCONN, -EBUSY, -ENOMEM. */
int cache_tier_get(struct redis_conn *r, const char *key, size_t len, cache_header_get_cb get_header,
                   void *arg, cache_tier_get_cb cb, void *cbarg);

struct cache_tier_stats {
    uint64_t puts, put_errors; /* entries sent; those refused or failed */
    uint64_t gets, hits, misses, get_errors;
    uint64_t bad_blobs; /* blobs rejected by the parser (also in get_errors) */
};
void cache_tier_get_stats(struct cache_tier_stats *out);

#endif
