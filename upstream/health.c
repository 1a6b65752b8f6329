/* SPDX-License-Identifier: MIT */
#include "upstream/health.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/strbuf.h"

/* "HTTP/1.1 200": all of the status line a check needs. */
#define STATUS_PREFIX 12

struct hc_target {
    struct health_checks *hc;
    const struct conf_health_check *conf;
    struct upstream_target *target;
    char *request;
    size_t request_len;
    uv_timer_t timer; /* the check's timeout */
    uv_tcp_t tcp;     /* initialised per check, closed at its end */
    uv_connect_t connect;
    uv_write_t write;
    char line[16];
    size_t line_len;
    bool is_in_flight;            /* tcp is open or closing */
    bool is_done;                 /* the check in flight has its verdict */
    unsigned successes, failures; /* in a row */
    const char *last_error;
};

struct hc_group {
    struct health_checks *hc;
    uv_timer_t timer; /* every interval_ms */
    struct hc_target *targets;
    size_t ntargets;
};

struct health_checks {
    uv_loop_t *loop;
    struct hc_group *groups;
    size_t ngroups;
    struct hc_target *targets;
    size_t ntargets;
    int open_handles;
    bool is_stopping;
};

static void release_handle(struct health_checks *hc)
{
    if (--hc->open_handles > 0 || !hc->is_stopping)
        return;
    for (size_t i = 0; i < hc->ntargets; i++)
        free(hc->targets[i].request);
    free(hc->targets);
    free(hc->groups);
    free(hc);
}

static void record(struct hc_target *t, bool ok)
{
    struct upstream_server *srv = t->target->srv;
    bool is_down = atomic_load(&srv->health_down);
    if (ok) {
        t->failures = 0;
        t->successes++;
        if (is_down && t->successes >= t->conf->rise) {
            atomic_store(&srv->health_down, false);
            log_info("health", "%s is up: %u checks of %s passed", srv->key, t->successes, t->conf->path);
        }
    } else {
        t->successes = 0;
        t->failures++;
        if (!is_down && t->failures >= t->conf->fall) {
            atomic_store(&srv->health_down, true);
            log_warn("health", "%s is down: %u checks of %s failed, last: %s", srv->key, t->failures,
                     t->conf->path, t->last_error);
        }
    }
}

static void on_tcp_closed(uv_handle_t *h)
{
    struct hc_target *t = h->data;
    t->is_in_flight = false;
    release_handle(t->hc);
}

/* The verdict of the check in flight: counted once, then the connection goes. */
static void finish(struct hc_target *t, bool ok, const char *error)
{
    if (t->is_done)
        return;
    t->is_done = true;
    uv_timer_stop(&t->timer);
    uv_close((uv_handle_t *)&t->tcp, on_tcp_closed);
    t->last_error = error;
    record(t, ok);
}

static void on_timeout(uv_timer_t *timer)
{
    finish(timer->data, false, "timed out");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct hc_target *t = h->data;
    *buf = uv_buf_init(t->line + t->line_len, (unsigned)(sizeof(t->line) - t->line_len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct hc_target *t = s->data;
    if (nread < 0) {
        finish(t, false, nread == UV_EOF ? "closed before a status line" : uv_strerror((int)nread));
        return;
    }
    t->line_len += (size_t)nread;
    if (t->line_len < STATUS_PREFIX)
        return;
    const char *l = t->line;
    bool is_http = memcmp(l, "HTTP/1.", 7) == 0 && l[8] == ' ' && l[9] >= '1' && l[9] <= '5' &&
                   l[10] >= '0' && l[10] <= '9' && l[11] >= '0' && l[11] <= '9';
    if (!is_http)
        finish(t, false, "not an HTTP/1 response");
    else if (l[9] == '2' || l[9] == '3')
        finish(t, true, NULL);
    else
        finish(t, false, l[9] == '4' ? "status 4xx" : l[9] == '5' ? "status 5xx" : "status 1xx");
}

static void on_write(uv_write_t *req, int status)
{
    if (status < 0 && status != UV_ECANCELED)
        finish(req->data, false, uv_strerror(status));
}

static void on_connect(uv_connect_t *req, int status)
{
    struct hc_target *t = req->data;
    if (status == UV_ECANCELED || t->is_done)
        return;
    if (status < 0) {
        finish(t, false, uv_strerror(status));
        return;
    }
    uv_buf_t buf = uv_buf_init(t->request, (unsigned)t->request_len);
    int r = uv_write(&t->write, (uv_stream_t *)&t->tcp, &buf, 1, on_write);
    if (r == 0)
        r = uv_read_start((uv_stream_t *)&t->tcp, on_alloc, on_read);
    if (r < 0)
        finish(t, false, uv_strerror(r));
}

static void check_start(struct hc_target *t)
{
    struct health_checks *hc = t->hc;
    if (uv_tcp_init(hc->loop, &t->tcp) < 0) {
        t->last_error = "no socket";
        record(t, false);
        return;
    }
    hc->open_handles++;
    t->is_in_flight = true;
    t->is_done = false;
    t->line_len = 0;
    t->tcp.data = t;
    t->connect.data = t;
    t->write.data = t;
    int r = uv_tcp_connect(&t->connect, &t->tcp, (const struct sockaddr *)&t->target->addr, on_connect);
    if (r < 0) {
        finish(t, false, uv_strerror(r));
        return;
    }
    uv_timer_start(&t->timer, on_timeout, t->conf->timeout_ms, 0);
}

static void on_interval(uv_timer_t *timer)
{
    struct hc_group *g = timer->data;
    for (size_t i = 0; i < g->ntargets; i++) {
        if (!g->targets[i].is_in_flight)
            check_start(&g->targets[i]);
    }
}

static bool is_checked(const struct upstream_target *t)
{
    return !t->conf->tls;
}

struct health_checks *health_start(uv_loop_t *loop, struct upstream_group *groups, size_t ngroups)
{
    size_t ng = 0, nt = 0;
    for (size_t i = 0; i < ngroups; i++) {
        bool has_checks = groups[i].conf->health.path != NULL;
        for (size_t j = 0; j < groups[i].ntargets; j++) {
            /* a flag nobody will check again must not keep a server out; a
             * checked server keeps its state across a reload until its own
             * checks move it */
            if (!has_checks || !is_checked(&groups[i].targets[j]))
                atomic_store(&groups[i].targets[j].srv->health_down, false);
            else
                nt++;
        }
        ng += has_checks;
    }
    if (nt == 0)
        return NULL;
    struct health_checks *hc = calloc(1, sizeof(*hc));
    struct hc_group *gs = calloc(ng, sizeof(*gs));
    struct hc_target *ts = calloc(nt, sizeof(*ts));
    if (hc == NULL || gs == NULL || ts == NULL)
        abort();
    *hc = (struct health_checks){.loop = loop, .groups = gs, .targets = ts};
    for (size_t i = 0; i < ngroups; i++) {
        const struct conf_health_check *conf = &groups[i].conf->health;
        if (conf->path == NULL)
            continue;
        struct hc_group *g = &gs[hc->ngroups];
        g->hc = hc;
        g->targets = &ts[hc->ntargets];
        for (size_t j = 0; j < groups[i].ntargets; j++) {
            struct upstream_target *target = &groups[i].targets[j];
            if (!is_checked(target))
                continue;
            struct hc_target *t = &ts[hc->ntargets++];
            g->ntargets++;
            t->hc = hc;
            t->conf = conf;
            t->target = target;
            struct strbuf sb;
            strbuf_init(&sb);
            strbuf_printf(
                &sb, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-health\r\nConnection: close\r\n\r\n",
                conf->path, target->conf->name);
            t->request_len = sb.len;
            t->request = strbuf_release(&sb);
            uv_timer_init(loop, &t->timer);
            t->timer.data = t;
            hc->open_handles++;
        }
        if (g->ntargets == 0)
            continue;
        uv_timer_init(loop, &g->timer);
        g->timer.data = g;
        hc->open_handles++;
        uv_timer_start(&g->timer, on_interval, 0, conf->interval_ms);
        hc->ngroups++;
    }
    return hc;
}

static void on_group_timer_closed(uv_handle_t *h)
{
    release_handle(((struct hc_group *)h->data)->hc);
}

static void on_target_timer_closed(uv_handle_t *h)
{
    release_handle(((struct hc_target *)h->data)->hc);
}

void health_stop(struct health_checks *hc)
{
    if (hc == NULL)
        return;
    hc->is_stopping = true;
    for (size_t i = 0; i < hc->ngroups; i++)
        uv_close((uv_handle_t *)&hc->groups[i].timer, on_group_timer_closed);
    for (size_t i = 0; i < hc->ntargets; i++) {
        struct hc_target *t = &hc->targets[i];
        uv_close((uv_handle_t *)&t->timer, on_target_timer_closed);
        if (t->is_in_flight && !t->is_done) {
            t->is_done = true;
            uv_close((uv_handle_t *)&t->tcp, on_tcp_closed);
        }
    }
}
