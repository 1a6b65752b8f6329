/* SPDX-License-Identifier: MIT */
/*
 * redis: hiredis async glue for one libuv loop (see redis.h for the design).
 *
 * The states of a connection:
 *   DOWN       no hiredis context; the timer waits out the backoff
 *   CONNECTING a context whose connect is in progress; the timer is its deadline
 *   SELECTING  connected, SELECT db sent; the timer is still the connect deadline
 *   UP         commands accepted; the timer watches the oldest deadline
 *   DETACHING  hiredis is failing the pending callbacks and letting go of the
 *              context; it tells us when it is gone (context_gone)
 * and is_closing once redis_conn_destroy ran: then context_gone closes the
 * timer instead of backing off, and the close callback frees.
 *
 * hiredis 0.14 rules this file relies on: a context whose connect failed is
 * freed by hiredis right after the connect callback (no disconnect
 * callback); one that was connected calls the disconnect callback from
 * inside its free, after every pending reply callback ran with a NULL reply;
 * redisAsyncFree called from a reply callback is deferred until that
 * callback returns; and the connect callback runs outside that protection,
 * so it must never free the context itself.
 *
 * The event hooks are our own rather than hiredis's adapters/libuv.h: the
 * 0.14 adapter drops poll errors.  libuv reports POLLERR (a refused connect,
 * a reset) as an error status without events and stops the handle, and
 * that adapter then returns without telling hiredis, so a refused connect
 * or a reset connection would hang until a deadline.  Here an error is
 * passed on as the events hiredis waits for, and its own read or write
 * finds the error.
 */
#include "common/redis.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "common/list.h"
#include "common/log.h"

enum conn_state { STATE_DOWN, STATE_CONNECTING, STATE_SELECTING, STATE_UP, STATE_DETACHING };

struct redis_conn {
    uv_loop_t *loop;
    uv_timer_t timer;
    redisAsyncContext *ac; /* NULL when hiredis holds no context for us */
    char ip[INET6_ADDRSTRLEN];
    char name[INET6_ADDRSTRLEN + 8]; /* "ip:port" or "[ip]:port", for logs */
    uint16_t port;
    unsigned db;
    uint64_t timeout_ms;
    enum conn_state state;
    bool is_closing;
    bool is_down_logged; /* the current outage was logged: retries stay quiet */
    int fail_status;     /* what pending commands get when hiredis fails them (0: the link broke) */
    uint64_t backoff_ms;
    uint64_t attempts;
    struct list pending; /* struct pending, oldest first */
    size_t ninflight, inflight_bytes;
    atomic_uint_fast64_t commands, errors, timeouts, reconnects;
};

struct pending {
    struct list link;
    struct redis_conn *c;
    uint64_t deadline; /* loop time, ms */
    size_t bytes;
    redis_reply_cb cb;
    void *arg;
};

static void connect_start(struct redis_conn *c);
static void on_timer(uv_timer_t *t);

/* Single writer (the loop thread), so a relaxed load + store is exact. */
static void count(atomic_uint_fast64_t *a)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1, memory_order_relaxed);
}

static uint64_t load(const atomic_uint_fast64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

static void free_data(uv_handle_t *h)
{
    free(h->data);
}

/* ---- hiredis event hooks on a uv_poll_t ---- */

struct poller {
    uv_poll_t handle;
    redisAsyncContext *ac; /* NULL once hiredis let go (the handle is closing) */
    int events;            /* UV_READABLE | UV_WRITABLE that hiredis wants */
};

static void poll_update(struct poller *p);

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct poller *p = h->data;
    bool is_error = status < 0;
    if (is_error)
        events = p->events; /* libuv stopped the handle: let hiredis hit the error itself */
    if (p->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
    if (is_error && p->ac != NULL)
        poll_update(p);
}

static void poll_update(struct poller *p)
{
    if (p->events != 0)
        uv_poll_start(&p->handle, p->events, poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void poll_add_read(void *data)
{
    struct poller *p = data;
    p->events |= UV_READABLE;
    poll_update(p);
}

static void poll_del_read(void *data)
{
    struct poller *p = data;
    p->events &= ~UV_READABLE;
    poll_update(p);
}

static void poll_add_write(void *data)
{
    struct poller *p = data;
    p->events |= UV_WRITABLE;
    poll_update(p);
}

static void poll_del_write(void *data)
{
    struct poller *p = data;
    p->events &= ~UV_WRITABLE;
    poll_update(p);
}

/* hiredis is done with the socket (it closes the fd right after). */
static void poll_cleanup(void *data)
{
    struct poller *p = data;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, free_data);
}

static int poll_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct poller *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    int rc = uv_poll_init(loop, &p->handle, ac->c.fd);
    if (rc != 0) {
        free(p);
        return rc;
    }
    p->handle.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = poll_add_read;
    ac->ev.delRead = poll_del_read;
    ac->ev.addWrite = poll_add_write;
    ac->ev.delWrite = poll_del_write;
    ac->ev.cleanup = poll_cleanup;
    return 0;
}

/* ---- the connection ---- */

/* hiredis has let go of the context: close (when destroyed) or back off. */
static void context_gone(struct redis_conn *c)
{
    assert(list_is_empty(&c->pending));
    c->ac = NULL;
    c->fail_status = 0;
    if (c->is_closing) {
        uv_close((uv_handle_t *)&c->timer, free_data);
        return;
    }
    c->state = STATE_DOWN;
    uv_timer_start(&c->timer, on_timer, c->backoff_ms, 0);
    c->backoff_ms = c->backoff_ms * 2 < REDIS_BACKOFF_MAX_MS ? c->backoff_ms * 2 : REDIS_BACKOFF_MAX_MS;
}

static void log_down(struct redis_conn *c, const char *what, const char *why)
{
    if (c->is_down_logged || c->is_closing) {
        log_debug("redis", "%s: %s: %s", c->name, what, why);
        return;
    }
    c->is_down_logged = true;
    log_warn("redis", "%s: %s: %s; skipping Redis and retrying with backoff", c->name, what, why);
}

/* Fails every pending command with status and drops the context.  From a
 * reply callback hiredis defers the free until the callback returns. */
static void drop(struct redis_conn *c, int status)
{
    redisAsyncContext *ac = c->ac;
    int flags = ac->c.flags;
    c->state = STATE_DETACHING;
    c->fail_status = status;
    uv_timer_stop(&c->timer);
    redisAsyncFree(ac);
    /* a context that never connected gets no disconnect callback: it is
     * gone now (the connect callback, which could defer, never drops) */
    if (!(flags & REDIS_CONNECTED))
        context_gone(c);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);

static int submit(struct redis_conn *c, int argc, const char **argv, const size_t *argvlen, size_t bytes,
                  uint64_t deadline, redis_reply_cb cb, void *arg)
{
    struct pending *p = malloc(sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    *p = (struct pending){.c = c, .deadline = deadline, .bytes = bytes, .cb = cb, .arg = arg};
    if (redisAsyncCommandArgv(c->ac, on_reply, p, argc, argv, argvlen) != REDIS_OK) {
        free(p);
        return -ENOMEM;
    }
    list_push(&c->pending, &p->link);
    c->ninflight++;
    c->inflight_bytes += bytes;
    return 0;
}

static void up(struct redis_conn *c)
{
    c->state = STATE_UP;
    uv_timer_stop(&c->timer);
    if (c->is_down_logged)
        log_info("redis", "%s: connected", c->name);
    c->is_down_logged = false;
}

static void select_done(void *arg, int status, const struct redisReply *reply)
{
    struct redis_conn *c = arg;
    if (status != 0)
        return; /* the connection is being dropped already */
    if (reply->type == REDIS_REPLY_STATUS) {
        up(c);
        return;
    }
    char why[128];
    snprintf(why, sizeof(why), "SELECT %u: %.100s", c->db,
             reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    log_down(c, "cannot use the database", why);
    drop(c, -ECONNRESET);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct pending *p = privdata;
    struct redis_conn *c = p->c;
    const redisReply *reply = r;
    list_remove(&p->link);
    c->ninflight--;
    c->inflight_bytes -= p->bytes;
    int status = 0;
    if (reply == NULL) {
        /* hiredis is tearing the context down: refuse new commands now */
        c->state = STATE_DETACHING;
        status = c->fail_status != 0 ? c->fail_status : -ECONNRESET;
        count(&c->errors);
        if (status == -ETIMEDOUT)
            count(&c->timeouts);
    } else {
        if (reply->type == REDIS_REPLY_ERROR)
            count(&c->errors);
        c->backoff_ms = REDIS_BACKOFF_MIN_MS; /* the server answers: a later loss retries quickly */
    }
    p->cb(p->arg, status, reply);
    free(p);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *c = ac->data;
    if (status != REDIS_OK) {
        log_down(c, "cannot connect", ac->errstr);
        context_gone(c); /* hiredis frees the context when this returns */
        return;
    }
    if (c->db == 0) {
        up(c);
        return;
    }
    /* commands wait for the SELECT reply, or they could run in database 0;
     * the connect deadline still runs and covers it */
    char db[16];
    const char *argv[] = {"SELECT", db};
    size_t argvlen[] = {6, (size_t)snprintf(db, sizeof(db), "%u", c->db)};
    c->state = STATE_SELECTING;
    /* on failure the connect deadline drops the context (never free it here) */
    submit(c, 2, argv, argvlen, 0, 0, select_done, c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *c = ac->data;
    if (status != REDIS_OK && c->fail_status == 0)
        log_down(c, "connection lost", ac->errstr ? ac->errstr : "error");
    context_gone(c);
}

static void on_timer(uv_timer_t *t)
{
    struct redis_conn *c = t->data;
    switch (c->state) {
    case STATE_DOWN:
        connect_start(c);
        break;
    case STATE_CONNECTING:
    case STATE_SELECTING:
        log_down(c, "cannot connect", "timed out");
        drop(c, -ETIMEDOUT);
        break;
    case STATE_UP: {
        /* armed for some earlier command: the oldest now may have time left */
        if (list_is_empty(&c->pending))
            break;
        struct pending *p = LIST_ENTRY(c->pending.next, struct pending, link);
        uint64_t now = uv_now(c->loop);
        if (p->deadline > now) {
            uv_timer_start(&c->timer, on_timer, p->deadline - now, 0);
            break;
        }
        LOG_RATELIMITED(LOG_WARN, "redis", "%s: no reply within %llu ms: reconnecting", c->name,
                        (unsigned long long)c->timeout_ms);
        drop(c, -ETIMEDOUT);
        break;
    }
    case STATE_DETACHING:
        break;
    }
}

static void connect_start(struct redis_conn *c)
{
    if (c->attempts++ > 0)
        count(&c->reconnects);
    redisAsyncContext *ac = redisAsyncConnect(c->ip, c->port);
    if (ac == NULL || ac->err) {
        log_down(c, "cannot connect", ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        context_gone(c);
        return;
    }
    ac->data = c;
    int rc = poll_attach(ac, c->loop);
    if (rc != 0) {
        log_down(c, "cannot connect", uv_strerror(rc));
        redisAsyncFree(ac);
        context_gone(c);
        return;
    }
    redisEnableKeepAlive(&ac->c);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = STATE_CONNECTING;
    uint64_t t = c->timeout_ms > REDIS_CONNECT_TIMEOUT_MIN_MS ? c->timeout_ms : REDIS_CONNECT_TIMEOUT_MIN_MS;
    uv_timer_start(&c->timer, on_timer, t, 0);
}

struct redis_conn *redis_conn_create(uv_loop_t *loop, const char *ip, uint16_t port, unsigned db,
                                     uint64_t timeout_ms)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (ip == NULL || strlen(ip) >= INET6_ADDRSTRLEN || port == 0 || timeout_ms == 0 ||
        (inet_pton(AF_INET, ip, addr) != 1 && inet_pton(AF_INET6, ip, addr) != 1)) {
        errno = EINVAL;
        return NULL;
    }
    struct redis_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    c->loop = loop;
    strcpy(c->ip, ip);
    snprintf(c->name, sizeof(c->name), strchr(ip, ':') != NULL ? "[%s]:%u" : "%s:%u", ip, port);
    c->port = port;
    c->db = db;
    c->timeout_ms = timeout_ms;
    c->backoff_ms = REDIS_BACKOFF_MIN_MS;
    list_init(&c->pending);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    connect_start(c);
    return c;
}

void redis_conn_destroy(struct redis_conn *c)
{
    assert(!c->is_closing);
    c->is_closing = true;
    uv_timer_stop(&c->timer);
    if (c->ac == NULL)
        context_gone(c);
    else if (c->state == STATE_DETACHING)
        c->fail_status = -ECANCELED; /* hiredis is failing them already: the rest learn why */
    else
        drop(c, -ECANCELED);
}

/* Commands whose replies do not pair one to one with requests, which the
 * pending list and its deadlines assume. */
static bool is_unpaired(const char *name, size_t len)
{
    static const char *const names[] = {"subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
                                        "punsubscribe", "sunsubscribe", "monitor"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0)
            return true;
    return false;
}

int redis_command_argv(struct redis_conn *c, int argc, const char **argv, const size_t *argvlen,
                       redis_reply_cb cb, void *arg)
{
    int rc;
    size_t bytes = 0;
    if (argc < 1 || is_unpaired(argv[0], argvlen[0]))
        return -EINVAL;
    for (int i = 0; i < argc; i++)
        bytes += argvlen[i];
    if (c->is_closing)
        rc = -ECANCELED;
    else if (c->state != STATE_UP)
        rc = -ENOTCONN;
    else if (c->ninflight >= REDIS_MAX_INFLIGHT || bytes > REDIS_MAX_INFLIGHT_BYTES - c->inflight_bytes)
        rc = -EBUSY;
    else
        rc = submit(c, argc, argv, argvlen, bytes, uv_now(c->loop) + c->timeout_ms, cb, arg);
    if (rc != 0) {
        count(&c->errors);
        return rc;
    }
    count(&c->commands);
    /* an armed timer is due no later than this deadline (FIFO, one timeout):
     * it re-arms itself for the oldest command when it fires */
    if (!uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, on_timer, c->timeout_ms, 0);
    return 0;
}

bool redis_conn_is_up(const struct redis_conn *c)
{
    return c->state == STATE_UP && !c->is_closing;
}

void redis_conn_get_stats(const struct redis_conn *c, struct redis_stats *out)
{
    out->commands = load(&c->commands);
    out->errors = load(&c->errors);
    out->timeouts = load(&c->timeouts);
    out->reconnects = load(&c->reconnects);
}
