/* SPDX-License-Identifier: MIT */
/*
 * analytics: the per-worker rings and the PostgreSQL thread.
 *
 * Rings: head (consumer) and tail (producer) are free-running counters; a
 * slot is written before tail is released and read before head is
 * released, so neither side ever sees the other's half-written slot.
 *
 * The connection is a small state machine on the thread's loop:
 *   DOWN --backoff timer--> CONNECTING --PQconnectPoll OK--> MIGRATING
 *   --migration done--> IDLE --rows--> COPY (COPY sent, data, end, result)
 *   --done--> IDLE.  Any error: close, DOWN, backoff.
 * libpq may change its socket while connecting, so the uv_poll follows
 * PQsocket; poll handles are heap objects freed in their close callback.
 */
#include "stats/analytics.h"

#include <libpq-fe.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/log.h"
#include "common/strbuf.h"
#include "stats/stats.h"

/* scripts/analytics.sql, embedded by the Makefile */
extern const char analytics_sql[];

#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  5000
#define CONNECT_TIMEOUT_MS 5000
#define COPY_TIMEOUT_MS 10000
#define SHUTDOWN_FLUSH_MS 2000
#define KEY_CACHE 256

struct row {
    int64_t time_ms;
    uint64_t total_us;
    int64_t upstream_us;
    uint32_t status, retries;
    char method[16];
    char cache[16];
    char client[48];
    char request_id[65]; /* longer ids (clients may send up to 128 bytes) are cut */
    char route[64];
    char upstream[64];
    uint16_t path_len;
    char path[200];
};

struct ring {
    _Atomic uint64_t head; /* consumer */
    char pad1[56];
    _Atomic uint64_t tail; /* producer */
    char pad2[56];
    struct row *rows;
} __attribute__((aligned(64)));

enum pg_state { PG_DOWN, PG_CONNECTING, PG_MIGRATING, PG_IDLE, PG_COPY };

struct pgpoll {
    uv_poll_t h;
    struct analytics *a;
};

struct analytics {
    char *url, *hostaddr;
    unsigned batch, queue;
    uint64_t flush_ms;
    unsigned nworkers;
    size_t ring_cap;
    struct ring *rings;
    unsigned char salt[16];
    struct key_slot {
        char ip[48];
        char key[17];
    } keys[KEY_CACHE]; /* client_key's cache (the analytics thread's) */

    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wake;       /* a ring reached a batch, or stop */
    uv_timer_t flush_timer;
    uv_timer_t conn_timer; /* backoff, connect and COPY deadlines */
    _Atomic bool stop;
    _Atomic bool up;

    enum pg_state state;
    PGconn *pg;
    struct pgpoll *poll;
    int poll_fd;
    uint64_t backoff_ms;
    struct strbuf copy;     /* the batch being sent */
    size_t copy_rows;
    bool copy_data_sent;    /* PQputCopyData/End done, waiting for the result */
    bool want_write;        /* PQflush said more is queued */
    uint64_t stop_deadline; /* loop time after which shutdown gives up */

    struct stats_global rows, dropped, lost, batches, connects, errors;
};

/* ---- producer ---- */

static void copy_str(char *dst, size_t cap, const char *src)
{
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void analytics_push(struct analytics *a, unsigned w, const struct reqlog_record *r)
{
    struct ring *ring = &a->rings[w];
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_acquire);
    if (tail - head >= a->ring_cap) {
        stats_global_add(&a->dropped, 1);
        return;
    }
    struct row *row = &ring->rows[tail % a->ring_cap];
    row->time_ms = r->time_ms;
    row->total_us = r->total_us;
    row->upstream_us = r->upstream_us;
    row->status = r->status;
    row->retries = r->retries;
    copy_str(row->method, sizeof(row->method), r->method);
    copy_str(row->cache, sizeof(row->cache), r->cache);
    copy_str(row->client, sizeof(row->client), r->client);
    copy_str(row->request_id, sizeof(row->request_id), r->request_id);
    copy_str(row->route, sizeof(row->route), r->route);
    copy_str(row->upstream, sizeof(row->upstream), r->upstream);
    size_t pl = r->path_len < sizeof(row->path) ? r->path_len : sizeof(row->path);
    memcpy(row->path, r->path, pl);
    row->path_len = (uint16_t)pl;
    atomic_store_explicit(&ring->tail, tail + 1, memory_order_release);
    /* one wake-up when this ring alone has a batch; the timer does the rest */
    if (tail + 1 - head == a->batch)
        uv_async_send(&a->wake);
}

/* ---- COPY binary ----
 *
 * The binary COPY format (PostgreSQL docs, "COPY", Binary Format): cheaper
 * than text on both sides (no number or timestamp parsing in the server, no
 * escaping here).  Each field is a big-endian int32 length (-1: NULL) and
 * its bytes; timestamptz is int64 microseconds since 2000-01-01 UTC, float8
 * an IEEE double, integers big-endian. */

#define PG_EPOCH_US 946684800000000LL /* 2000-01-01 in Unix microseconds */
#define COPY_FIELDS 12

static const char copy_header[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0"; /* signature, flags, extension */

static void put_be(struct strbuf *sb, uint64_t v, unsigned bytes)
{
    char b[8];
    for (unsigned i = 0; i < bytes; i++)
        b[i] = (char)(v >> (8 * (bytes - 1 - i)));
    strbuf_append(sb, b, bytes);
}

static void put_field(struct strbuf *sb, const char *s, size_t len, bool empty_is_null)
{
    if (empty_is_null && len == 0) {
        put_be(sb, UINT32_MAX, 4);
        return;
    }
    put_be(sb, len, 4);
    strbuf_append(sb, s, len);
}

static void put_int4(struct strbuf *sb, uint32_t v)
{
    put_be(sb, 4, 4);
    put_be(sb, v, 4);
}

static void put_ms(struct strbuf *sb, uint64_t us)
{
    double ms = (double)us / 1000.0;
    uint64_t bits;
    memcpy(&bits, &ms, sizeof(bits));
    put_be(sb, 8, 4);
    put_be(sb, bits, 8);
}

/* The client key of an IP: a salted SHA-256, 64 bits of it in hex.  Hashing
 * costs more than the rest of a row, and clients repeat: a small
 * direct-mapped cache keeps the last keys (this thread only). */
static const char *client_key(struct analytics *a, const char *ip)
{
    size_t len = strlen(ip);
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)ip[i]) * 16777619u;
    struct key_slot *k = &a->keys[h % KEY_CACHE];
    if (strcmp(k->ip, ip) == 0 && k->key[0] != '\0')
        return k->key;
    unsigned char in[sizeof(a->salt) + sizeof(k->ip)], md[SHA256_DIGEST_LENGTH];
    memcpy(in, a->salt, sizeof(a->salt));
    memcpy(in + sizeof(a->salt), ip, len);
    SHA256(in, sizeof(a->salt) + len, md);
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 8; i++) {
        k->key[2 * i] = hex[md[i] >> 4];
        k->key[2 * i + 1] = hex[md[i] & 15];
    }
    k->key[16] = '\0';
    memcpy(k->ip, ip, len + 1);
    return k->key;
}

static void format_row(struct analytics *a, struct strbuf *sb, const struct row *r)
{
    put_be(sb, COPY_FIELDS, 2);
    put_be(sb, 8, 4);
    put_be(sb, (uint64_t)(r->time_ms * 1000 - PG_EPOCH_US), 8);
    put_field(sb, r->route, strlen(r->route), true);
    put_field(sb, r->method, strlen(r->method), true);
    put_field(sb, r->path, r->path_len, false);
    put_int4(sb, r->status);
    put_ms(sb, r->total_us);
    if (r->upstream_us >= 0)
        put_ms(sb, (uint64_t)r->upstream_us);
    else
        put_be(sb, UINT32_MAX, 4);
    put_field(sb, r->cache, strlen(r->cache), true);
    put_field(sb, r->upstream, strlen(r->upstream), true);
    put_int4(sb, r->retries);
    put_field(sb, client_key(a, r->client), 16, false);
    put_field(sb, r->request_id, strlen(r->request_id), true);
}

/* Takes up to `batch` rows from the rings (round robin) into a->copy. */
static size_t take_rows(struct analytics *a)
{
    /* each ring's indexes are read and published once per batch, not per
     * row: they are the cache lines the workers share with this thread */
    size_t taken = 0;
    for (unsigned w = 0; w < a->nworkers && taken < a->batch; w++) {
        struct ring *ring = &a->rings[w];
        uint64_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
        uint64_t n = tail - head;
        if (n > a->batch - taken)
            n = a->batch - taken;
        for (uint64_t i = 0; i < n; i++)
            format_row(a, &a->copy, &ring->rows[(head + i) % a->ring_cap]);
        atomic_store_explicit(&ring->head, head + n, memory_order_release);
        taken += n;
    }
    return taken;
}

static size_t rows_waiting(struct analytics *a)
{
    size_t n = 0;
    for (unsigned w = 0; w < a->nworkers; w++)
        n += atomic_load_explicit(&a->rings[w].tail, memory_order_acquire) -
             atomic_load_explicit(&a->rings[w].head, memory_order_relaxed);
    return n;
}

/* Rows taken but not written when the connection fails or the process stops. */
static void drop_rows(struct analytics *a, struct stats_global *why, size_t n)
{
    if (n > 0)
        stats_global_add(why, n);
}

/* ---- the connection ---- */

static void on_poll(uv_poll_t *h, int status, int events);
static void connect_start(struct analytics *a);
static void try_flush(struct analytics *a, bool partial);

static void on_poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static void poll_drop(struct analytics *a)
{
    if (a->poll == NULL)
        return;
    uv_poll_stop(&a->poll->h);
    uv_close((uv_handle_t *)&a->poll->h, on_poll_closed);
    a->poll = NULL;
    a->poll_fd = -1;
}

/* Watches the connection's current socket for events. */
static void poll_set(struct analytics *a, int events)
{
    int fd = PQsocket(a->pg);
    if (a->poll != NULL && a->poll_fd != fd)
        poll_drop(a);
    if (a->poll == NULL) {
        struct pgpoll *p = calloc(1, sizeof(*p));
        if (p == NULL)
            abort();
        p->a = a;
        p->h.data = p;
        if (uv_poll_init_socket(&a->loop, &p->h, fd) != 0) {
            free(p);
            return;
        }
        a->poll = p;
        a->poll_fd = fd;
    }
    uv_poll_start(&a->poll->h, events, on_poll);
}

static void on_conn_timer(uv_timer_t *t);

/* libpq prints notices (and errors it did not expect) to stderr by default:
 * they go through the log instead, at debug level. */
static void on_notice(void *arg, const char *message)
{
    log_debug("analytics", "PostgreSQL: %.*s", (int)strcspn(message, "\n"), message);
}

static void conn_fail(struct analytics *a, const char *what)
{
    const char *msg = a->pg != NULL ? PQerrorMessage(a->pg) : "out of memory";
    if (a->state != PG_DOWN)
        LOG_RATELIMITED(LOG_WARN, "analytics", "%s: %.*s", what, (int)strcspn(msg, "\n"),
                        msg[0] ? msg : "connection lost");
    stats_global_add(&a->errors, 1);
    drop_rows(a, &a->lost, a->copy_rows);
    a->copy_rows = 0;
    a->copy.len = 0;
    poll_drop(a);
    if (a->pg != NULL)
        PQfinish(a->pg);
    a->pg = NULL;
    a->state = PG_DOWN;
    atomic_store(&a->up, false);
    if (atomic_load(&a->stop))
        return;
    uv_timer_start(&a->conn_timer, on_conn_timer, a->backoff_ms, 0);
    a->backoff_ms = a->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : a->backoff_ms * 2;
}

static void on_conn_timer(uv_timer_t *t)
{
    struct analytics *a = t->data;
    if (a->state == PG_DOWN)
        connect_start(a);
    else if (a->state == PG_CONNECTING)
        conn_fail(a, "connect timed out");
    else if (a->state == PG_COPY || a->state == PG_MIGRATING)
        conn_fail(a, "PostgreSQL too slow");
}

static void connect_start(struct analytics *a)
{
    const char *keys[] = {"dbname", "hostaddr", "application_name", NULL};
    const char *vals[] = {a->url, a->hostaddr, "sluice", NULL};
    a->pg = PQconnectStartParams(keys, vals, 1);
    if (a->pg == NULL || PQstatus(a->pg) == CONNECTION_BAD) {
        conn_fail(a, "connect");
        return;
    }
    PQsetnonblocking(a->pg, 1);
    PQsetNoticeProcessor(a->pg, on_notice, a);
    a->state = PG_CONNECTING;
    uv_timer_start(&a->conn_timer, on_conn_timer, CONNECT_TIMEOUT_MS, 0);
    poll_set(a, UV_WRITABLE);
}

/* Flushes libpq's output buffer; watches for writable while it is not empty. */
static bool flush_out(struct analytics *a)
{
    int rc = PQflush(a->pg);
    if (rc < 0) {
        conn_fail(a, "send");
        return false;
    }
    a->want_write = rc == 1;
    poll_set(a, UV_READABLE | (a->want_write ? UV_WRITABLE : 0));
    return true;
}

static void connect_poll(struct analytics *a)
{
    switch (PQconnectPoll(a->pg)) {
    case PGRES_POLLING_READING: poll_set(a, UV_READABLE); return;
    case PGRES_POLLING_WRITING: poll_set(a, UV_WRITABLE); return;
    case PGRES_POLLING_OK: break;
    default: conn_fail(a, "connect"); return;
    }
    stats_global_add(&a->connects, 1);
    a->state = PG_MIGRATING;
    uv_timer_start(&a->conn_timer, on_conn_timer, COPY_TIMEOUT_MS, 0);
    if (!PQsendQuery(a->pg, analytics_sql)) {
        conn_fail(a, "migration");
        return;
    }
    flush_out(a);
}

static void copy_start(struct analytics *a)
{
    a->copy.len = 0;
    strbuf_append(&a->copy, copy_header, sizeof(copy_header) - 1);
    a->copy_rows = take_rows(a);
    if (a->copy_rows == 0)
        return;
    put_be(&a->copy, UINT16_MAX, 2); /* trailer */
    a->state = PG_COPY;
    a->copy_data_sent = false;
    uv_timer_start(&a->conn_timer, on_conn_timer, COPY_TIMEOUT_MS, 0);
    if (!PQsendQuery(a->pg, "COPY sluice_requests (time, route, method, path, status, duration_ms, upstream_ms, "
                            "cache_status, upstream_server, retries, client_key, request_id) FROM STDIN "
                            "WITH (FORMAT binary)")) {
        conn_fail(a, "COPY");
        return;
    }
    flush_out(a);
}

/* PQputCopyData in nonblocking mode may refuse (0) while libpq's buffer is
 * full: then it is tried again when the socket is writable. */
static void copy_send(struct analytics *a)
{
    int rc = PQputCopyData(a->pg, a->copy.data, (int)a->copy.len);
    if (rc == 0) {
        a->want_write = true;
        poll_set(a, UV_READABLE | UV_WRITABLE);
        return;
    }
    if (rc < 0 || PQputCopyEnd(a->pg, NULL) < 0) {
        conn_fail(a, "COPY data");
        return;
    }
    a->copy_data_sent = true;
    flush_out(a);
}

/* Reads every result that is complete. */
static void read_results(struct analytics *a)
{
    if (!PQconsumeInput(a->pg)) {
        conn_fail(a, "receive");
        return;
    }
    while (a->pg != NULL && !PQisBusy(a->pg)) {
        PGresult *res = PQgetResult(a->pg);
        if (res == NULL) {
            /* the command is over */
            if (a->state == PG_MIGRATING) {
                a->state = PG_IDLE;
                a->backoff_ms = BACKOFF_MIN_MS;
                atomic_store(&a->up, true);
                log_info("analytics", "connected to PostgreSQL, table sluice_requests ready");
            } else if (a->state == PG_COPY) {
                stats_global_add(&a->rows, a->copy_rows);
                stats_global_add(&a->batches, 1);
                a->copy_rows = 0;
                a->state = PG_IDLE;
            }
            uv_timer_stop(&a->conn_timer);
            try_flush(a, false);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_COPY_IN && a->state == PG_COPY && !a->copy_data_sent) {
            copy_send(a);
            /* refused for now: the writable event sends it */
            if (a->pg == NULL || !a->copy_data_sent)
                return;
        } else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            conn_fail(a, a->state == PG_MIGRATING ? "migration" : "COPY");
            return;
        }
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct analytics *a = ((struct pgpoll *)h->data)->a;
    if (a->poll == NULL || &a->poll->h != h)
        return;
    if (a->state == PG_CONNECTING) {
        connect_poll(a);
        return;
    }
    if (status < 0) {
        conn_fail(a, "socket");
        return;
    }
    if ((events & UV_WRITABLE) && a->state == PG_COPY && !a->copy_data_sent && a->want_write) {
        copy_send(a);
        if (a->pg == NULL)
            return;
    } else if (events & UV_WRITABLE) {
        if (!flush_out(a))
            return;
    }
    if (events & UV_READABLE)
        read_results(a);
}

/* Starts a COPY when idle and a full batch waits, or any row at all when
 * partial (the flush timer, shutdown): a COPY is a transaction, so small ones
 * cost the server far more per row. */
static void try_flush(struct analytics *a, bool partial)
{
    if (a->state == PG_IDLE && (partial || atomic_load(&a->stop) || rows_waiting(a) >= a->batch))
        copy_start(a);
    if (atomic_load(&a->stop) && (a->state != PG_COPY || uv_now(&a->loop) > a->stop_deadline) &&
        (a->state != PG_IDLE || rows_waiting(a) == 0)) {
        /* shutting down: whatever could not be written in time is lost */
        uv_stop(&a->loop);
    }
}

static void on_flush_timer(uv_timer_t *t)
{
    try_flush(t->data, true);
}

static void on_wake(uv_async_t *h)
{
    struct analytics *a = h->data;
    if (atomic_load(&a->stop) && a->stop_deadline == 0) {
        a->stop_deadline = uv_now(&a->loop) + SHUTDOWN_FLUSH_MS;
        uv_timer_start(&a->flush_timer, on_flush_timer, 50, 50);
    }
    try_flush(a, false);
}

static void *thread_main(void *arg)
{
    struct analytics *a = arg;
    log_set_thread_worker(-1);
    connect_start(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    size_t left = rows_waiting(a) + a->copy_rows;
    a->copy_rows = 0;
    drop_rows(a, &a->lost, left);
    poll_drop(a);
    if (a->pg != NULL)
        PQfinish(a->pg);
    a->pg = NULL;
    uv_close((uv_handle_t *)&a->wake, NULL);
    uv_close((uv_handle_t *)&a->flush_timer, NULL);
    uv_close((uv_handle_t *)&a->conn_timer, NULL);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    uv_loop_close(&a->loop);
    return NULL;
}

/* ---- API ---- */

static void reg(struct stats_global *g, const char *name, const char *help)
{
    g->name = name;
    g->help = help;
    stats_global_register(g);
}

struct analytics *analytics_create(const struct conf_analytics *conf, unsigned nworkers)
{
    struct analytics *a = calloc(1, sizeof(*a));
    if (a == NULL)
        abort();
    a->url = strdup(conf->url);
    a->hostaddr = strdup(conf->hostaddr);
    a->batch = conf->batch;
    a->queue = conf->queue;
    a->flush_ms = conf->flush_ms;
    a->nworkers = nworkers ? nworkers : 1;
    a->ring_cap = conf->queue / a->nworkers;
    if (a->ring_cap < 16)
        a->ring_cap = 16;
    a->rings = aligned_alloc(64, sizeof(struct ring) * a->nworkers);
    if (a->url == NULL || a->hostaddr == NULL || a->rings == NULL)
        abort();
    memset(a->rings, 0, sizeof(struct ring) * a->nworkers);
    for (unsigned w = 0; w < a->nworkers; w++) {
        /* calloc: pages are only touched as the ring fills */
        a->rings[w].rows = calloc(a->ring_cap, sizeof(struct row));
        if (a->rings[w].rows == NULL)
            abort();
    }
    if (RAND_bytes(a->salt, sizeof(a->salt)) != 1)
        abort();
    a->poll_fd = -1;
    a->backoff_ms = BACKOFF_MIN_MS;
    strbuf_init(&a->copy);
    reg(&a->rows, "analytics_rows_total", "Rows written to PostgreSQL");
    reg(&a->dropped, "analytics_dropped_total", "Rows dropped because the queue was full");
    reg(&a->lost, "analytics_lost_total", "Rows taken from the queue but lost with a failed batch");
    reg(&a->batches, "analytics_batches_total", "COPY batches written");
    reg(&a->connects, "analytics_connects_total", "Connections to PostgreSQL established");
    reg(&a->errors, "analytics_errors_total", "Connection, migration or COPY failures");
    if (uv_loop_init(&a->loop) != 0)
        abort();
    a->wake.data = a;
    uv_async_init(&a->loop, &a->wake, on_wake);
    uv_timer_init(&a->loop, &a->flush_timer);
    a->flush_timer.data = a;
    uv_timer_start(&a->flush_timer, on_flush_timer, a->flush_ms, a->flush_ms);
    uv_timer_init(&a->loop, &a->conn_timer);
    a->conn_timer.data = a;
    if (pthread_create(&a->thread, NULL, thread_main, a) != 0)
        abort();
    return a;
}

bool analytics_is_for(const struct analytics *a, const struct conf_analytics *c)
{
    return strcmp(a->url, c->url) == 0 && a->batch == c->batch && a->queue == c->queue &&
           a->flush_ms == c->flush_ms;
}

bool analytics_is_up(const struct analytics *a)
{
    return atomic_load(&a->up);
}

void analytics_destroy(struct analytics *a)
{
    if (a == NULL)
        return;
    atomic_store(&a->stop, true);
    uv_async_send(&a->wake);
    pthread_join(a->thread, NULL);
    for (unsigned w = 0; w < a->nworkers; w++)
        free(a->rings[w].rows);
    free(a->rings);
    a->rings = NULL;
    strbuf_dispose(&a->copy);
    /* a itself stays: its counters are registered in stats for the process lifetime */
}
