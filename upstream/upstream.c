/* SPDX-License-Identifier: MIT */
#include "upstream/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"

/* ---- process-wide server identities ---- */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct upstream_server **registry;
static unsigned registry_len, registry_cap;

struct upstream_server *upstream_server_get(const char *group, const char *hostport)
{
    char key[512];
    snprintf(key, sizeof(key), "%s/%s", group, hostport);
    pthread_mutex_lock(&registry_lock);
    struct upstream_server *s = NULL;
    for (unsigned i = 0; i < registry_len; i++) {
        if (strcmp(registry[i]->key, key) == 0) {
            s = registry[i];
            goto out;
        }
    }
    if (registry_len == registry_cap) {
        registry_cap = registry_cap ? registry_cap * 2 : 16;
        registry = realloc(registry, registry_cap * sizeof(*registry));
        if (registry == NULL)
            abort();
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->key = strdup(key)) == NULL)
        abort();
    s->id = registry_len;
    s->stats = stats_set_get("server", key);
    breaker_init(&s->breaker);
    registry[registry_len++] = s;
out:
    pthread_mutex_unlock(&registry_lock);
    return s;
}

/* ---- groups: resolution and balancing ---- */

struct build {
    upstream_build_cb cb;
    void *arg;
    const struct conf *conf;
    struct upstream_group *groups;
    unsigned pending;
    char error[256];
};

struct resolve {
    uv_getaddrinfo_t req;
    struct build *build;
    struct upstream_target *target;
};

static void build_finish(struct build *b)
{
    if (b->error[0]) {
        upstream_groups_free(b->groups, b->conf->nupstreams);
        b->cb(b->arg, NULL, b->error);
    } else {
        b->cb(b->arg, b->groups, NULL);
    }
    free(b);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct resolve *r = req->data;
    struct build *b = r->build;
    const struct conf_upstream_server *cs = r->target->conf;
    if (status != 0 || res == NULL) {
        if (!b->error[0])
            snprintf(b->error, sizeof(b->error), "%s:%d: cannot resolve upstream host \"%s\": %s",
                     cs->pos.file, cs->pos.line, cs->host, uv_strerror(status ? status : UV_EAI_NONAME));
    } else {
        memcpy(&r->target->addr, res->ai_addr, res->ai_addrlen);
        r->target->addrlen = res->ai_addrlen;
        if (res->ai_family == AF_INET)
            ((struct sockaddr_in *)&r->target->addr)->sin_port = htons(cs->port);
        else
            ((struct sockaddr_in6 *)&r->target->addr)->sin6_port = htons(cs->port);
    }
    uv_freeaddrinfo(res);
    free(r);
    if (--b->pending == 0)
        build_finish(b);
}

static bool parse_numeric(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof(*a6);
        return true;
    }
    return false;
}

void upstream_groups_build(uv_loop_t *loop, const struct conf *conf, upstream_build_cb cb, void *arg)
{
    struct build *b = calloc(1, sizeof(*b));
    struct upstream_group *groups = calloc(conf->nupstreams ? conf->nupstreams : 1, sizeof(*groups));
    if (b == NULL || groups == NULL)
        abort();
    b->cb = cb;
    b->arg = arg;
    b->conf = conf;
    b->groups = groups;
    b->pending = 1; /* held until every lookup is started */
    for (size_t i = 0; i < conf->nupstreams; i++) {
        const struct conf_upstream *cu = &conf->upstreams[i];
        struct upstream_group *g = &groups[i];
        g->conf = cu;
        retry_budget_init(&g->budget);
        g->ntargets = cu->nservers;
        g->targets = calloc(cu->nservers, sizeof(*g->targets));
        if (g->targets == NULL)
            abort();
        for (size_t j = 0; j < cu->nservers; j++) {
            const struct conf_upstream_server *cs = &cu->servers[j];
            struct upstream_target *t = &g->targets[j];
            t->conf = cs;
            t->srv = upstream_server_get(cu->name, cs->name);
            if (parse_numeric(cs->host, cs->port, &t->addr, &t->addrlen))
                continue;
            struct resolve *r = calloc(1, sizeof(*r));
            if (r == NULL)
                abort();
            r->build = b;
            r->target = t;
            r->req.data = r;
            struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
            int err = uv_getaddrinfo(loop, &r->req, on_resolved, cs->host, NULL, &hints);
            if (err != 0) {
                snprintf(b->error, sizeof(b->error), "%s:%d: cannot resolve upstream host \"%s\": %s",
                         cs->pos.file, cs->pos.line, cs->host, uv_strerror(err));
                free(r);
                continue;
            }
            b->pending++;
        }
    }
    if (--b->pending == 0)
        build_finish(b);
}

void upstream_groups_free(struct upstream_group *groups, size_t n)
{
    if (groups == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(groups[i].targets);
        retry_budget_dispose(&groups[i].budget);
    }
    free(groups);
}

bool upstream_server_is_down(struct upstream_server *s, uint64_t now_ms)
{
    return atomic_load_explicit(&s->health_down, memory_order_relaxed) ||
           atomic_load_explicit(&s->down_until_ms, memory_order_relaxed) > now_ms;
}

void upstream_server_success(struct upstream_server *s, uint64_t elapsed_us)
{
    /* a racing update may be lost: an average does not need every sample */
    uint64_t old = atomic_load_explicit(&s->ewma_us, memory_order_relaxed);
    uint64_t ewma = old == 0 ? elapsed_us : old - old / 4 + elapsed_us / 4;
    atomic_store_explicit(&s->ewma_us, ewma ? ewma : 1, memory_order_relaxed);
    /* only write the shared line when there is something to clear */
    if (atomic_load_explicit(&s->fails, memory_order_relaxed) != 0)
        atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
}

void upstream_server_failure(struct upstream_server *s, const struct conf_upstream *cu, uint64_t now_ms)
{
    if (cu->max_fails == 0)
        return;
    unsigned n = atomic_fetch_add_explicit(&s->fails, 1, memory_order_relaxed) + 1;
    if (n < cu->max_fails)
        return;
    atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
    atomic_store_explicit(&s->down_until_ms, now_ms + cu->fail_timeout_ms, memory_order_relaxed);
    LOG_RATELIMITED(LOG_WARN, "upstream", "%s: %u failure(s) in a row: skipped for %" PRIu64 " ms", s->key, n,
                    cu->fail_timeout_ms);
}

static uint64_t pick_random(void)
{
    static _Thread_local uint64_t x;
    if (x == 0)
        x = uv_hrtime() ^ (uint64_t)(uintptr_t)&x;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

static unsigned weight_of(const struct upstream_target *t)
{
    return t->conf->weight ? t->conf->weight : 1;
}

/* p2c: the lower expected wait, latency times queue, per unit of weight.  A
 * server with no sample yet scores as the fastest, so it gets tried. */
static bool p2c_better(const struct upstream_target *a, const struct upstream_target *b)
{
    uint64_t la = atomic_load_explicit(&a->srv->ewma_us, memory_order_relaxed) + 1;
    uint64_t lb = atomic_load_explicit(&b->srv->ewma_us, memory_order_relaxed) + 1;
    uint64_t qa = atomic_load_explicit(&a->srv->inflight, memory_order_relaxed) + 1;
    uint64_t qb = atomic_load_explicit(&b->srv->inflight, memory_order_relaxed) + 1;
    /* la*qa/wa < lb*qb/wb without division; latencies are capped so the products fit */
    la = la < (1ull << 40) ? la : (1ull << 40);
    lb = lb < (1ull << 40) ? lb : (1ull << 40);
    return (unsigned __int128)la * qa * weight_of(b) < (unsigned __int128)lb * qb * weight_of(a);
}

static struct upstream_target *pick_among(struct upstream_group *g, struct upstream_target **cand, size_t n)
{
    if (n == 1)
        return cand[0];
    switch (g->conf->balance) {
    case CONF_BALANCE_P2C: {
        size_t i = pick_random() % n, j = pick_random() % (n - 1);
        if (j >= i)
            j++;
        return p2c_better(cand[j], cand[i]) ? cand[j] : cand[i];
    }
    case CONF_BALANCE_LEAST_CONN: {
        /* start at a rotating place so ties spread */
        size_t start = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed) % n;
        struct upstream_target *best = NULL;
        uint64_t best_q = 0, best_w = 1;
        for (size_t k = 0; k < n; k++) {
            struct upstream_target *t = cand[(start + k) % n];
            uint64_t q = atomic_load_explicit(&t->srv->inflight, memory_order_relaxed);
            if (best == NULL || q * best_w < best_q * weight_of(t)) {
                best = t;
                best_q = q;
                best_w = weight_of(t);
            }
        }
        return best;
    }
    case CONF_BALANCE_ROUND_ROBIN:
    default: {
        unsigned total = 0;
        for (size_t k = 0; k < n; k++)
            total += weight_of(cand[k]);
        unsigned slot = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed) % total;
        for (size_t k = 0; k < n; k++) {
            if (slot < weight_of(cand[k]))
                return cand[k];
            slot -= weight_of(cand[k]);
        }
        return cand[0];
    }
    }
}


static bool breaker_refuses(const struct upstream_group *g, struct upstream_target *t, uint64_t now_ms)
{
    if (!g->conf->breaker.enabled)
        return false;
    enum breaker_state st = breaker_state(&t->srv->breaker, now_ms);
    return st == BREAKER_OPEN || st == BREAKER_QUOTA;
}

struct upstream_target *upstream_group_pick(struct upstream_group *g, uint64_t tried, uint64_t excluded,
                                           uint64_t now_ms)
{
    struct upstream_target *cand[CONF_MAX_UPSTREAM_SERVERS];
    size_t n = g->ntargets;
    /* the strictest pass that leaves a candidate wins: untried primaries that
     * are up, untried backups that are up, tried ones that are up, any */
    for (int pass = 0; pass < 4; pass++) {
        size_t nc = 0;
        for (size_t i = 0; i < n; i++) {
            struct upstream_target *t = &g->targets[i];
            /* the sets have a bit for each of the first 64 servers */
            if ((i < 64 && ((excluded >> i) & 1)) || breaker_refuses(g, t, now_ms))
                continue;
            bool is_tried = i < 64 && ((tried >> i) & 1);
            bool is_down = pass < 3 && upstream_server_is_down(t->srv, now_ms);
            if (is_down || (pass < 2 && is_tried) || (pass == 0 && t->conf->backup) ||
                (pass == 1 && !t->conf->backup))
                continue;
            cand[nc++] = t;
        }
        if (nc > 0)
            return pick_among(g, cand, nc);
    }
    return NULL;
}

/* ---- per-worker connection pools ---- */

/* The last session a server gave this worker, and the context it was made
 * with (held, so that a session is never offered under another conf's
 * verification settings). */
struct pool_session {
    SSL_SESSION *sess;
    SSL_CTX *ctx;
};

struct upstream_pool {
    uv_loop_t *loop;
    struct list *idle; /* per server id */
    unsigned *nidle;
    struct pool_session *sessions; /* per server id */
    unsigned nservers;
    unsigned live; /* connections not yet freed */
    bool is_destroyed;
};

struct upstream_pool *upstream_pool_create(uv_loop_t *loop)
{
    struct upstream_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        abort();
    p->loop = loop;
    return p;
}

static void pool_grow(struct upstream_pool *p, unsigned id)
{
    if (id < p->nservers)
        return;
    unsigned n = id + 16;
    p->idle = realloc(p->idle, n * sizeof(*p->idle));
    p->nidle = realloc(p->nidle, n * sizeof(*p->nidle));
    p->sessions = realloc(p->sessions, n * sizeof(*p->sessions));
    if (p->idle == NULL || p->nidle == NULL || p->sessions == NULL)
        abort();
    /* realloc moved the list heads: relink the idle entries to their new head */
    for (unsigned i = 0; i < p->nservers; i++) {
        if (p->nidle[i] == 0) {
            list_init(&p->idle[i]);
            continue;
        }
        p->idle[i].next->prev = &p->idle[i];
        p->idle[i].prev->next = &p->idle[i];
    }
    for (unsigned i = p->nservers; i < n; i++) {
        list_init(&p->idle[i]);
        p->nidle[i] = 0;
        p->sessions[i] = (struct pool_session){0};
    }
    p->nservers = n;
}

static void pool_maybe_free(struct upstream_pool *p)
{
    if (p->is_destroyed && p->live == 0) {
        for (unsigned i = 0; i < p->nservers; i++) {
            SSL_SESSION_free(p->sessions[i].sess);
            SSL_CTX_free(p->sessions[i].ctx);
        }
        free(p->sessions);
        free(p->idle);
        free(p->nidle);
        free(p);
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    struct upstream_conn *uc = h->data;
    if (--uc->open_handles > 0)
        return;
    struct upstream_pool *p = uc->pool;
    outq_dispose(&uc->out);
    tls_destroy(uc->tls);
    free(uc);
    p->live--;
    pool_maybe_free(p);
}

static void unlink_idle(struct upstream_conn *uc)
{
    if (!uc->is_idle)
        return;
    list_remove(&uc->link);
    uc->pool->nidle[uc->server_id]--;
    uc->is_idle = false;
}

void upstream_conn_close(struct upstream_conn *uc)
{
    if (uc->is_closing)
        return;
    uc->is_closing = true;
    unlink_idle(uc);
    uc->owner = NULL;
    uc->out.owner = NULL;
    uc->out.done_cb = NULL;
    if (uc->tls != NULL)
        tls_shutdown(uc->tls);
    uv_close((uv_handle_t *)&uc->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&uc->timer, on_conn_closed);
}

void upstream_pool_destroy(struct upstream_pool *p)
{
    p->is_destroyed = true;
    for (unsigned i = 0; i < p->nservers; i++)
        while (!list_is_empty(&p->idle[i]))
            upstream_conn_close(LIST_ENTRY(p->idle[i].next, struct upstream_conn, link));
    pool_maybe_free(p);
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct buf *blk = buf_get();
    *b = uv_buf_init(blk->data, BUF_SIZE);
}

/* An idle connection must not receive anything: data or EOF means the origin
 * closed it (or broke the protocol), so it can never be reused. */
static void dispatch(struct upstream_conn *uc, ssize_t nread, struct buf *blk)
{
    if (uc->owner != NULL && uc->on_read != NULL) {
        uc->on_read(uc, nread, blk);
        return;
    }
    if (blk != NULL)
        buf_unref(blk);
    upstream_conn_close(uc);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct upstream_conn *uc = s->data;
    struct buf *blk = b->base ? (struct buf *)(b->base - offsetof(struct buf, data)) : NULL;
    if (nread == 0 || (nread < 0 && blk != NULL)) {
        if (blk != NULL)
            buf_unref(blk);
        blk = NULL;
        if (nread == 0)
            return;
    }
    dispatch(uc, nread, blk);
}

/* Ciphertext in; the handshake's end is the connect callback; plaintext goes
 * where plain reads go.  Session tickets and the like yield nothing, so an
 * idle connection is closed only by data or the peer's close. */
static void conn_read_tls(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct upstream_conn *uc = s->data;
    bool was_ready = tls_is_ready(uc->tls);
    uv_buf_t plain;
    ssize_t n = tls_read(uc->tls, nread, b, &plain);
    if (!was_ready) {
        if (n < 0 || tls_is_ready(uc->tls))
            uc->connect_cb(uc, n < 0 ? (int)n : 0);
        if (n <= 0 || uc->is_closing)
            return;
    }
    if (n == 0)
        return;
    dispatch(uc, n, n > 0 ? (struct buf *)(plain.base - offsetof(struct buf, data)) : NULL);
}

int upstream_conn_read_start(struct upstream_conn *uc)
{
    if (uc->is_reading)
        return 0;
    int rc = uc->tls != NULL ? uv_read_start((uv_stream_t *)&uc->tcp, tls_alloc_cb, conn_read_tls)
                             : uv_read_start((uv_stream_t *)&uc->tcp, conn_alloc, conn_read);
    uc->is_reading = rc == 0;
    return rc;
}

void upstream_conn_read_stop(struct upstream_conn *uc)
{
    if (!uc->is_reading)
        return;
    uv_read_stop((uv_stream_t *)&uc->tcp);
    uc->is_reading = false;
}

static void idle_timeout(uv_timer_t *t)
{
    upstream_conn_close(t->data);
}

struct upstream_conn *upstream_pool_take(struct upstream_pool *p, const struct upstream_target *t)
{
    unsigned id = t->srv->id;
    if (id >= p->nservers || p->nidle[id] == 0)
        return NULL;
    /* the most recently used connection first: it is the least likely to have
     * been closed by the origin's own idle timeout */
    struct list *it;
    for (it = p->idle[id].prev; it != &p->idle[id]; it = it->prev) {
        struct upstream_conn *uc = LIST_ENTRY(it, struct upstream_conn, link);
        if (uc->addrlen != t->addrlen || memcmp(&uc->addr, &t->addr, t->addrlen) != 0 ||
            (uc->tls != NULL) != (t->tls_ctx != NULL))
            continue;
        unlink_idle(uc);
        uv_timer_stop(&uc->timer);
        return uc;
    }
    return NULL;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct upstream_conn *uc = req->data;
    if (uc->is_closing)
        return;
    if (status == 0 && uc->tls != NULL) {
        status = upstream_conn_read_start(uc);
        if (status == 0)
            status = tls_handshake_start(uc->tls);
        if (status == 0)
            return; /* connect_cb once the handshake is done */
    }
    uc->connect_cb(uc, status);
}

const char *upstream_conn_tls_error(const struct upstream_conn *uc)
{
    return uc->tls != NULL ? tls_error(uc->tls) : NULL;
}

static void on_session(void *arg, SSL_SESSION *sess)
{
    struct upstream_conn *uc = arg;
    struct upstream_pool *p = uc->pool;
    pool_grow(p, uc->server_id);
    struct pool_session *ps = &p->sessions[uc->server_id];
    SSL_SESSION_free(ps->sess);
    SSL_CTX_free(ps->ctx);
    ps->sess = sess;
    ps->ctx = tls_ctx(uc->tls);
    SSL_CTX_up_ref(ps->ctx);
}

static int tls_start(struct upstream_conn *uc, const struct upstream_target *t)
{
    struct upstream_pool *p = uc->pool;
    SSL_SESSION *sess = NULL;
    if (uc->server_id < p->nservers && p->sessions[uc->server_id].ctx == t->tls_ctx)
        sess = p->sessions[uc->server_id].sess;
    uc->tls = tls_client_create(t->tls_ctx, &uc->out, t->tls_sni, t->tls_verify_name, sess, on_session, uc);
    return uc->tls != NULL ? 0 : UV_ENOMEM;
}

struct upstream_conn *upstream_conn_connect(struct upstream_pool *p, const struct upstream_target *t,
                                            upstream_connect_cb cb, void *owner, int *err)
{
    struct upstream_conn *uc = calloc(1, sizeof(*uc));
    if (uc == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    uc->pool = p;
    uc->server_id = t->srv->id;
    memcpy(&uc->addr, &t->addr, t->addrlen);
    uc->addrlen = t->addrlen;
    uc->owner = owner;
    uc->connect_cb = cb;
    list_init(&uc->link);
    uv_tcp_init(p->loop, &uc->tcp);
    uv_timer_init(p->loop, &uc->timer);
    uc->tcp.data = uc;
    uc->timer.data = uc;
    uc->connect_req.data = uc;
    outq_init(&uc->out, (uv_stream_t *)&uc->tcp, NULL, NULL);
    uc->open_handles = 2;
    p->live++;
    uv_tcp_nodelay(&uc->tcp, 1);
    int rc = t->tls_ctx != NULL ? tls_start(uc, t) : 0;
    if (rc != 0) {
        *err = rc;
        upstream_conn_close(uc);
        return NULL;
    }
    rc = uv_tcp_connect(&uc->connect_req, &uc->tcp, (const struct sockaddr *)&t->addr, on_connect);
    if (rc != 0) {
        *err = rc;
        upstream_conn_close(uc);
        return NULL;
    }
    return uc;
}

void upstream_pool_put(struct upstream_conn *uc, unsigned max_idle, uint64_t timeout_ms)
{
    struct upstream_pool *p = uc->pool;
    uc->owner = NULL;
    uc->out.owner = NULL;
    uc->out.done_cb = NULL;
    if (p->is_destroyed || uc->out.inflight > 0 || max_idle == 0 || timeout_ms == 0) {
        upstream_conn_close(uc);
        return;
    }
    pool_grow(p, uc->server_id);
    if (p->nidle[uc->server_id] >= max_idle) {
        upstream_conn_close(uc);
        return;
    }
    uc->on_read = NULL;
    if (upstream_conn_read_start(uc) != 0) {
        upstream_conn_close(uc);
        return;
    }
    uv_timer_start(&uc->timer, idle_timeout, timeout_ms, 0);
    list_push(&p->idle[uc->server_id], &uc->link);
    p->nidle[uc->server_id]++;
    uc->is_idle = true;
}
