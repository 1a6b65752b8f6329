/* SPDX-License-Identifier: MIT */
/*
 * obs: the proxy's side of observability (issue 6) - X-Request-Id,
 * Server-Timing, and the per-request record fed to the access log, the slow
 * log and PostgreSQL analytics (stats/accesslog.h, stats/analytics.h).
 *
 * Cost when nothing is configured: obs_request_begin and obs_request_end are
 * one branch each (the conf has no access log, analytics or server_timing,
 * and the request was not slow).  With them on, the record is built once, at
 * the end of the request, and each sink copies what it needs without locks.
 *
 * Threading: obs_publish / obs_reopen / obs_shutdown on the main thread;
 * the rest on the worker that owns the connection.
 */
#ifndef SLUICE_PROXY_OBS_H
#define SLUICE_PROXY_OBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/conn.h"

/* Main thread, before a generation is posted to the workers: opens (or
 * retargets) the access and slow logs and starts analytics the first time
 * the conf has it.  0, or -1 with a message on err when a log cannot be
 * opened (the generation must then not be published). */
int obs_publish(const struct conf *conf, unsigned nworkers);
/* SIGUSR1: reopen the log files (rotation). */
void obs_reopen(void);
/* After the workers have ended: write what is buffered, stop the threads. */
void obs_shutdown(void);

/* A worker's periodic flush of its access log lines (a timer on its loop). */
void obs_worker_start(struct worker *w);
void obs_worker_stop(struct worker *w);

/* /ready's view of analytics: "off", "up" or "down". */
const char *obs_analytics_state(void);

void obs_request_begin_(struct conn *c);
void obs_request_end_(struct conn *c, uint64_t total_us);

/* The request's server is known (c->srv): request id and phase clock.  The
 * admin listener's own traffic (scrapes, the dashboard) is not logged. */
static inline void obs_request_begin(struct conn *c)
{
    const struct conf *conf = c->gen->conf;
    if ((conf->access_log != NULL || conf->analytics != NULL || c->srv->server_timing_any) && !c->l->is_admin)
        obs_request_begin_(c);
}

/* The request is over (answered, or aborted): log and count it. */
static inline void obs_request_end(struct conn *c, uint64_t total_us)
{
    if (c->obs_on || total_us >= c->gen->conf->slow_log_threshold_ms * 1000)
        obs_request_end_(c, total_us);
}

/* Response lines this request adds (X-Request-Id, Server-Timing) into dst;
 * their length (0 when they do not fit). */
size_t obs_response_lines(const struct conn *c, char *dst, size_t cap);

#endif
