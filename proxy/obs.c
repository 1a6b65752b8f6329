/* SPDX-License-Identifier: MIT */
/*
 * obs: request ids, Server-Timing, and one record per request for the
 * access log, the slow log and analytics.
 *
 * The sinks are process-wide and created on the main thread when a
 * generation that needs them is published; their pointers are atomics
 * because a worker's flush timer reads them at any time.  Once created they
 * live until obs_shutdown: a reload that turns a log off only stops workers
 * from writing to it (their conf says so); one that names another file
 * retargets the same writer.
 */
#include "proxy/obs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "stats/accesslog.h"
#include "stats/analytics.h"

static _Atomic(struct accesslog *) access_log;
static _Atomic(struct accesslog *) slow_log;
static _Atomic(struct analytics *) analytics;

/* ---- main thread ---- */

static int follow_log(_Atomic(struct accesslog *) *slot, const char *name, const char *target, unsigned nworkers,
                      size_t buffer)
{
    if (target == NULL)
        return 0;
    struct accesslog *log = atomic_load(slot);
    if (log != NULL) {
        accesslog_set_target(log, target);
        return 0;
    }
    log = accesslog_create(name, target, nworkers, buffer);
    if (log == NULL) {
        log_error("obs", "%s %s: %s", name, target, strerror(errno));
        return -1;
    }
    atomic_store(slot, log);
    return 0;
}

int obs_publish(const struct conf *conf, unsigned nworkers)
{
    if (follow_log(&access_log, "access_log", conf->access_log, nworkers, conf->access_log_buffer) != 0)
        return -1;
    /* slow requests are few: a small buffer is plenty */
    if (follow_log(&slow_log, "slow_log", conf->slow_log, nworkers, 256 * 1024) != 0)
        return -1;
    struct analytics *a = atomic_load(&analytics);
    if (conf->analytics != NULL && a == NULL) {
        a = analytics_create(conf->analytics, nworkers);
        atomic_store(&analytics, a);
    } else if (a != NULL && (conf->analytics == NULL || !analytics_is_for(a, conf->analytics))) {
        log_warn("obs", "analytics changes take effect after a restart");
    }
    return 0;
}

void obs_reopen(void)
{
    struct accesslog *log = atomic_load(&access_log);
    if (log != NULL)
        accesslog_reopen(log);
    log = atomic_load(&slow_log);
    if (log != NULL)
        accesslog_reopen(log);
}

void obs_shutdown(void)
{
    accesslog_destroy(atomic_load(&access_log));
    accesslog_destroy(atomic_load(&slow_log));
    analytics_destroy(atomic_load(&analytics));
}

const char *obs_analytics_state(void)
{
    struct analytics *a = atomic_load(&analytics);
    return a == NULL ? "off" : analytics_is_up(a) ? "up" : "down";
}

/* ---- the worker's flush timer ---- */

static void on_flush_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t now = uv_now(&w->loop);
    struct accesslog *log = atomic_load_explicit(&access_log, memory_order_acquire);
    if (log != NULL)
        accesslog_flush(log, w->id, now);
    log = atomic_load_explicit(&slow_log, memory_order_acquire);
    if (log != NULL)
        accesslog_flush(log, w->id, now);
}

void obs_worker_start(struct worker *w)
{
    uv_timer_init(&w->loop, &w->obs_timer);
    w->obs_timer.data = w;
    uv_timer_start(&w->obs_timer, on_flush_timer, ACCESSLOG_FLUSH_MS / 2, ACCESSLOG_FLUSH_MS / 2);
    /* it must not keep a draining worker's loop alive */
    uv_unref((uv_handle_t *)&w->obs_timer);
}

void obs_worker_stop(struct worker *w)
{
    uv_close((uv_handle_t *)&w->obs_timer, NULL);
}

/* ---- per request ---- */

/* RFC 9110 token-ish: visible ASCII, no quotes or backslashes (it is echoed in
 * a header and written in JSON). */
static bool request_id_ok(const char *id, size_t len)
{
    if (len == 0 || len > OBS_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (id[i] <= 0x20 || id[i] >= 0x7f || id[i] == '"' || id[i] == '\\')
            return false;
    return true;
}

void obs_request_begin_(struct conn *c)
{
    struct worker *w = c->w;
    c->obs_on = true;
    c->t_dispatch = uv_hrtime();
    char given[OBS_REQUEST_ID_MAX + 2];
    if (head_get(&c->rq, "x-request-id", given, sizeof(given)) && request_id_ok(given, strlen(given))) {
        memcpy(c->request_id, given, strlen(given) + 1);
        return;
    }
    /* unique without coordination: process start, worker, a per-worker serial */
    w->obs_serial++;
    snprintf(c->request_id, sizeof(c->request_id), "%08llx-%02x-%010llx",
             (unsigned long long)(proxy_info.started_ms & 0xffffffffu), w->id & 0xff,
             (unsigned long long)w->obs_serial);
}

#define ST_PREFIX "Server-Timing: "

static void put_dur(char *dst, size_t cap, size_t *n, const char *name, uint64_t from, uint64_t to)
{
    if (from == 0 || to < from)
        return;
    uint64_t us = (to - from) / 1000;
    int k = snprintf(dst + *n, cap - *n, "%s%s;dur=%llu.%03u", *n > sizeof(ST_PREFIX) - 1 ? ", " : "", name,
                     (unsigned long long)(us / 1000), (unsigned)(us % 1000));
    if (k > 0 && (size_t)k < cap - *n)
        *n += (size_t)k;
}

size_t obs_response_lines(const struct conn *c, char *dst, size_t cap)
{
    if (!c->obs_on)
        return 0;
    size_t n = 0;
    if (c->request_id[0] != '\0') {
        int k = snprintf(dst, cap, "X-Request-Id: %s\r\n", c->request_id);
        if (k < 0 || (size_t)k >= cap)
            return 0;
        n = (size_t)k;
    }
    bool timing = c->route != NULL ? c->route->server_timing : c->srv != NULL && c->srv->server_timing;
    if (!timing)
        return n;
    char st[256] = ST_PREFIX;
    size_t m = strlen(st);
    uint64_t now = uv_hrtime();
    put_dur(st, sizeof(st), &m, "queue", c->t_start, c->t_dispatch);
    if (c->rc != NULL)
        put_dur(st, sizeof(st), &m, "cache", c->t_dispatch, c->t_forward ? c->t_forward : now);
    if (c->t_connected != 0)
        put_dur(st, sizeof(st), &m, "connect", c->t_forward, c->t_connected);
    else if (c->t_forward != 0 && c->up_reused)
        put_dur(st, sizeof(st), &m, "connect", c->t_forward, c->t_forward);
    if (c->t_head != 0)
        put_dur(st, sizeof(st), &m, "upstream", c->t_sent, c->t_head);
    put_dur(st, sizeof(st), &m, "total", c->t_start, now);
    if (n + m + 2 >= cap)
        return n;
    memcpy(dst + n, st, m);
    memcpy(dst + n + m, "\r\n", 3);
    return n + m + 2;
}

void obs_request_end_(struct conn *c, uint64_t total_us)
{
    const struct conf *conf = c->gen->conf;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    struct reqlog_record r = {
        .time_ms = now_ms - (int64_t)(total_us / 1000),
        .request_id = c->request_id[0] ? c->request_id : NULL,
        .client = c->peer,
        .method = c->is_dispatched ? llhttp_method_name(c->method) : NULL,
        .path = c->rq.store ? head_first(&c->rq) : "",
        .path_len = c->rq.store ? c->rq.first_len : 0,
        .route = c->rt != NULL ? c->rt->name : NULL,
        .status = c->status,
        .bytes_in = c->bytes_in,
        .bytes_out = c->out.bytes_written - c->bytes_out_start,
        .total_us = total_us,
        .upstream_us = c->t_head != 0 && c->t_head >= c->t_sent ? (int64_t)((c->t_head - c->t_sent) / 1000) : -1,
        .upstream = c->target != NULL ? c->target->srv->key : NULL,
        .cache = c->rc != NULL ? c->x_cache : NULL,
        .retries = (c->tries > 1 ? c->tries - 1 : 0) + (c->retried ? 1 : 0),
        .breaker = c->breaker,
        .limit = c->limit,
    };
    bool slow = total_us >= conf->slow_log_threshold_ms * 1000;
    char line[ACCESSLOG_LINE_MAX];
    size_t len = 0;
    struct accesslog *log;
    if (slow) {
        if (c->rstats != NULL)
            STATS_INC(c->rstats->slow);
        else
            STATS_INC(c->w->proc->slow);
        if (conf->slow_log != NULL && (log = atomic_load_explicit(&slow_log, memory_order_acquire)) != NULL) {
            len = reqlog_format_json(line, sizeof(line), &r);
            accesslog_write(log, c->w->id, line, len);
        }
    }
    if (!c->obs_on)
        return;
    if (conf->access_log != NULL && (log = atomic_load_explicit(&access_log, memory_order_acquire)) != NULL) {
        if (len == 0)
            len = reqlog_format_json(line, sizeof(line), &r);
        accesslog_write(log, c->w->id, line, len);
    }
    struct analytics *a;
    if (conf->analytics != NULL && (a = atomic_load_explicit(&analytics, memory_order_acquire)) != NULL)
        analytics_push(a, c->w->id, &r);
}
