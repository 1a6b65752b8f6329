/* SPDX-License-Identifier: MIT */
/*
 * accesslog: per-worker chunks, one writer thread per destination.
 *
 * A worker owns its `cur` chunk outright.  Chunks move to the writer's queue
 * and back to the worker's free list under log->lock, once per chunk.  The
 * writer takes the whole queue, writes it with the lock released, then gives
 * the chunks back.  Reopen and retarget requests are flags the writer acts on
 * between batches.  Counters are stats globals; `lines` is added by the
 * writer per chunk, `dropped` by a worker only when it drops.
 */
#include "stats/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "stats/stats.h"

struct chunk {
    struct chunk *next;
    unsigned owner;
    unsigned lines;
    size_t len;
    char data[ACCESSLOG_CHUNK];
};

struct slot {
    struct chunk *cur;       /* the worker's own: no lock */
    uint64_t cur_since_ms;   /* loop time of cur's first line */
    struct chunk *free;      /* under log->lock */
    unsigned nchunks;        /* allocated for this worker, under log->lock */
} __attribute__((aligned(64)));

struct accesslog {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    struct chunk *queue, *queue_tail; /* full chunks for the writer */
    bool reopen, stop;
    char *target;      /* under lock; the writer compares it with its open one */
    unsigned max_chunks; /* per worker */
    unsigned nworkers;
    struct slot *slots;
    struct stats_global lines, dropped, write_errors, reopens;
    char names[4][64];
};

/* ---- formatting ---- */

size_t reqlog_json_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f) {
            if (n + 1 > cap)
                break;
            dst[n++] = (char)ch;
        } else if (ch == '"' || ch == '\\') {
            if (n + 2 > cap)
                break;
            dst[n++] = '\\';
            dst[n++] = (char)ch;
        } else {
            /* control bytes, DEL; bytes >= 0x80 pass as they are (paths are
             * bytes, not text: a reader must accept what the client sent) */
            if (n + 6 > cap)
                break;
            memcpy(dst + n, "\\u00", 4);
            dst[n + 4] = hex[ch >> 4];
            dst[n + 5] = hex[ch & 15];
            n += 6;
        }
    }
    return n;
}

struct out {
    char *p, *end;
};

static void put(struct out *o, const char *s, size_t len)
{
    if (len > (size_t)(o->end - o->p))
        len = (size_t)(o->end - o->p);
    memcpy(o->p, s, len);
    o->p += len;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* "key":"escaped" or "key":null; the value is cut to at most max bytes of output. */
static void put_str(struct out *o, const char *key, const char *s, size_t len, size_t max)
{
    puts_(o, key);
    if (s == NULL) {
        puts_(o, "null");
        return;
    }
    size_t room = (size_t)(o->end - o->p);
    if (room < 2)
        return;
    room -= 2;
    if (room > max)
        room = max;
    *o->p++ = '"';
    o->p += reqlog_json_escape(o->p, room, s, len);
    *o->p++ = '"';
}

/* Decimal digits of v, written backwards ending at end; returns the start.
 * By hand: this runs once per field per request, printf showed in profiles. */
static char *dec_rev(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return end;
}

static void put_u64(struct out *o, const char *key, uint64_t v)
{
    char num[24], *end = num + sizeof(num);
    char *p = dec_rev(end, v);
    puts_(o, key);
    put(o, p, (size_t)(end - p));
}

/* Microseconds as milliseconds with three decimals. */
static void put_ms(struct out *o, const char *key, uint64_t us)
{
    char num[32], *end = num + sizeof(num);
    char *p = dec_rev(end, us % 1000);
    while (end - p < 3)
        *--p = '0';
    *--p = '.';
    p = dec_rev(p, us / 1000);
    puts_(o, key);
    put(o, p, (size_t)(end - p));
}

static _Thread_local struct {
    int64_t sec;
    char text[32]; /* "2026-11-24T00:40:11" */
} time_cache;

size_t reqlog_format_json(char *dst, size_t cap, const struct reqlog_record *r)
{
    /* the fixed fields need well under 700 bytes; the path gets the rest */
    struct out o = {dst, dst + cap - 2};
    int64_t sec = r->time_ms / 1000;
    if (sec != time_cache.sec || time_cache.text[0] == '\0') {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(time_cache.text, sizeof(time_cache.text), "%Y-%m-%dT%H:%M:%S", &tm);
        time_cache.sec = sec;
    }
    char ms[8] = {'.', (char)('0' + r->time_ms / 100 % 10), (char)('0' + r->time_ms / 10 % 10),
                  (char)('0' + r->time_ms % 10), 'Z', '"'};
    puts_(&o, "{\"time\":\"");
    puts_(&o, time_cache.text);
    put(&o, ms, 6);
    put_str(&o, ",\"request_id\":", r->request_id, r->request_id ? strlen(r->request_id) : 0, 300);
    put_str(&o, ",\"client\":", r->client, r->client ? strlen(r->client) : 0, 100);
    put_str(&o, ",\"method\":", r->method, r->method ? strlen(r->method) : 0, 40);
    size_t path_room = cap > 1024 ? cap - 1024 : 0;
    put_str(&o, ",\"path\":", r->path, r->path_len, path_room);
    put_str(&o, ",\"route\":", r->route, r->route ? strlen(r->route) : 0, 200);
    put_u64(&o, ",\"status\":", r->status);
    put_u64(&o, ",\"bytes_in\":", r->bytes_in);
    put_u64(&o, ",\"bytes_out\":", r->bytes_out);
    put_ms(&o, ",\"total_ms\":", r->total_us);
    if (r->upstream_us >= 0) {
        put_ms(&o, ",\"upstream_ms\":", (uint64_t)r->upstream_us);
    } else {
        puts_(&o, ",\"upstream_ms\":null");
    }
    put_str(&o, ",\"upstream\":", r->upstream, r->upstream ? strlen(r->upstream) : 0, 200);
    put_str(&o, ",\"cache\":", r->cache, r->cache ? strlen(r->cache) : 0, 20);
    put_u64(&o, ",\"retries\":", r->retries);
    put_str(&o, ",\"breaker\":", r->breaker, r->breaker ? strlen(r->breaker) : 0, 20);
    put_str(&o, ",\"limit\":", r->limit, r->limit ? strlen(r->limit) : 0, 40);
    /* two bytes were kept back for these */
    o.end += 2;
    put(&o, "}\n", 2);
    return (size_t)(o.p - dst);
}

/* ---- the writer thread ---- */

static int open_target(const char *target)
{
    if (strcmp(target, "stdout") == 0)
        return STDOUT_FILENO;
    if (strcmp(target, "stderr") == 0)
        return STDERR_FILENO;
    return open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static void close_target(int fd)
{
    if (fd > STDERR_FILENO)
        close(fd);
}

static bool write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

struct writer_state {
    int fd;
    char *open_target; /* what fd is */
};

/* Lock held on entry and exit; released around the open. */
static void switch_target(struct accesslog *log, struct writer_state *ws, bool force)
{
    if (!force && strcmp(log->target, ws->open_target) == 0)
        return;
    char *want = strdup(log->target);
    if (want == NULL)
        return;
    pthread_mutex_unlock(&log->lock);
    int fd = open_target(want);
    if (fd < 0) {
        LOG_RATELIMITED(LOG_ERROR, "accesslog", "cannot open %s: %s (keeping the old file)", want,
                        strerror(errno));
        free(want);
    } else {
        close_target(ws->fd);
        ws->fd = fd;
        free(ws->open_target);
        ws->open_target = want;
        stats_global_add(&log->reopens, 1);
    }
    pthread_mutex_lock(&log->lock);
}

static void *writer_main(void *arg)
{
    struct accesslog *log = arg;
    struct writer_state ws = {.fd = -1};
    pthread_mutex_lock(&log->lock);
    ws.open_target = strdup(log->target);
    ws.fd = open_target(log->target); /* accesslog_create checked it opens */
    for (;;) {
        while (log->queue == NULL && !log->reopen && !log->stop && strcmp(log->target, ws.open_target) == 0)
            pthread_cond_wait(&log->wake, &log->lock);
        struct chunk *batch = log->queue;
        log->queue = log->queue_tail = NULL;
        bool stop = log->stop;
        pthread_mutex_unlock(&log->lock);

        for (struct chunk *c = batch; c != NULL; c = c->next) {
            if (ws.fd >= 0 && write_all(ws.fd, c->data, c->len))
                stats_global_add(&log->lines, c->lines);
            else
                stats_global_add(&log->write_errors, c->lines);
        }

        pthread_mutex_lock(&log->lock);
        while (batch != NULL) {
            struct chunk *c = batch;
            batch = c->next;
            c->len = 0;
            c->lines = 0;
            c->next = log->slots[c->owner].free;
            log->slots[c->owner].free = c;
        }
        if (stop && log->queue == NULL)
            break;
        /* rotation: the file was moved away, the same name opens a new one */
        bool reopen = log->reopen;
        log->reopen = false;
        switch_target(log, &ws, reopen && strcmp(ws.open_target, "stdout") != 0 &&
                                    strcmp(ws.open_target, "stderr") != 0);
    }
    pthread_mutex_unlock(&log->lock);
    close_target(ws.fd);
    free(ws.open_target);
    return NULL;
}

/* ---- the API ---- */

static void register_global(struct accesslog *log, struct stats_global *g, int i, const char *name,
                            const char *what, const char *help)
{
    snprintf(log->names[i], sizeof(log->names[i]), "%s_%s", name, what);
    g->name = log->names[i];
    g->help = help;
    stats_global_register(g);
}

struct accesslog *accesslog_create(const char *name, const char *target, unsigned nworkers, size_t buffer_bytes)
{
    int fd = open_target(target);
    if (fd < 0)
        return NULL;
    close_target(fd);
    struct accesslog *log = calloc(1, sizeof(*log));
    if (log == NULL)
        return NULL;
    log->nworkers = nworkers ? nworkers : 1;
    log->slots = aligned_alloc(64, sizeof(struct slot) * log->nworkers);
    log->target = strdup(target);
    if (log->slots == NULL || log->target == NULL)
        abort();
    memset(log->slots, 0, sizeof(struct slot) * log->nworkers);
    size_t per = buffer_bytes / log->nworkers / ACCESSLOG_CHUNK;
    log->max_chunks = per < 2 ? 2 : (unsigned)per;
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->wake, NULL);
    register_global(log, &log->lines, 0, name, "lines_total", "Lines written");
    register_global(log, &log->dropped, 1, name, "dropped_total",
                    "Lines dropped because the writer lagged and the buffer was full");
    register_global(log, &log->write_errors, 2, name, "write_errors_total", "Lines lost to write errors");
    register_global(log, &log->reopens, 3, name, "reopens_total", "Files (re)opened after start");
    if (pthread_create(&log->thread, NULL, writer_main, log) != 0)
        abort();
    return log;
}

void accesslog_set_target(struct accesslog *log, const char *target)
{
    pthread_mutex_lock(&log->lock);
    if (strcmp(log->target, target) != 0) {
        char *t = strdup(target);
        if (t != NULL) {
            free(log->target);
            log->target = t;
            pthread_cond_signal(&log->wake);
        }
    }
    pthread_mutex_unlock(&log->lock);
}

void accesslog_reopen(struct accesslog *log)
{
    pthread_mutex_lock(&log->lock);
    log->reopen = true;
    pthread_cond_signal(&log->wake);
    pthread_mutex_unlock(&log->lock);
}

/* Queues the worker's current chunk for the writer; lock held. */
static void hand_over(struct accesslog *log, struct slot *s)
{
    struct chunk *c = s->cur;
    s->cur = NULL;
    c->next = NULL;
    if (log->queue_tail != NULL)
        log->queue_tail->next = c;
    else
        log->queue = c;
    log->queue_tail = c;
    pthread_cond_signal(&log->wake);
}

void accesslog_write(struct accesslog *log, unsigned w, const char *line, size_t len)
{
    struct slot *s = &log->slots[w];
    if (s->cur == NULL || s->cur->len + len > ACCESSLOG_CHUNK) {
        pthread_mutex_lock(&log->lock);
        if (s->cur != NULL)
            hand_over(log, s);
        struct chunk *c = s->free;
        if (c != NULL) {
            s->free = c->next;
        } else if (s->nchunks < log->max_chunks && (c = malloc(sizeof(*c))) != NULL) {
            c->owner = w;
            c->len = 0;
            c->lines = 0;
            s->nchunks++;
        }
        pthread_mutex_unlock(&log->lock);
        if (c == NULL) {
            stats_global_add(&log->dropped, 1);
            return;
        }
        s->cur = c;
        s->cur_since_ms = 0;
    }
    if (s->cur->len == 0)
        s->cur_since_ms = 0;
    memcpy(s->cur->data + s->cur->len, line, len);
    s->cur->len += len;
    s->cur->lines++;
}

void accesslog_flush(struct accesslog *log, unsigned w, uint64_t now_ms)
{
    struct slot *s = &log->slots[w];
    if (s->cur == NULL || s->cur->len == 0)
        return;
    /* the first flush tick that sees lines stamps them; the next one past
     * ACCESSLOG_FLUSH_MS sends them: no clock read per line */
    if (s->cur_since_ms == 0) {
        s->cur_since_ms = now_ms;
        return;
    }
    if (now_ms - s->cur_since_ms < ACCESSLOG_FLUSH_MS)
        return;
    pthread_mutex_lock(&log->lock);
    hand_over(log, s);
    pthread_mutex_unlock(&log->lock);
}

void accesslog_destroy(struct accesslog *log)
{
    if (log == NULL)
        return;
    pthread_mutex_lock(&log->lock);
    for (unsigned w = 0; w < log->nworkers; w++)
        if (log->slots[w].cur != NULL && log->slots[w].cur->len > 0)
            hand_over(log, &log->slots[w]);
    log->stop = true;
    pthread_cond_signal(&log->wake);
    pthread_mutex_unlock(&log->lock);
    pthread_join(log->thread, NULL);
    for (unsigned w = 0; w < log->nworkers; w++) {
        free(log->slots[w].cur);
        while (log->slots[w].free != NULL) {
            struct chunk *c = log->slots[w].free;
            log->slots[w].free = c->next;
            free(c);
        }
    }
    /* the counters stay registered in stats: the log lives as long as the process */
    free(log->slots);
    free(log->target);
    pthread_cond_destroy(&log->wake);
    pthread_mutex_destroy(&log->lock);
}
