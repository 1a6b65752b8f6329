/* SPDX-License-Identifier: MIT */
/*
 * health: active health checks of upstream servers.
 *
 * Design: for every upstream whose conf has a `health_check PATH`, a repeating
 * timer starts, every interval_ms, one check per server that has none in
 * flight: a fresh TCP connection, `GET PATH` with `Connection: close`, and the
 * status line of the answer.  A 2xx or 3xx within timeout_ms is a success;
 * anything else (refused, reset, timeout, another status, a closed connection)
 * is a failure.  `fall` failures in a row set the server's health_down, `rise`
 * successes in a row clear it; both changes are logged.  Servers start up.
 * At most one check per server is in flight, so memory is bounded by the
 * number of servers.  TLS servers are not checked yet.
 *
 * Threading: everything runs on the one loop given to health_start (the
 * control loop, never a worker's); health_down is an atomic that workers read.
 */
#ifndef SLUICE_UPSTREAM_HEALTH_H
#define SLUICE_UPSTREAM_HEALTH_H

#include <stddef.h>
#include <uv.h>

#include "upstream/upstream.h"

struct health_checks;

/* Starts checking the servers of groups (ngroups of them), which must stay
 * alive until health_stop.  The first round starts on the next loop turn.
 * A checked server keeps the health_down it had (a reload does not bring a
 * down server back before `rise` successes); servers nobody checks (no
 * health_check, or TLS) get it cleared, since nothing else ever would.  The
 * conf must have interval_ms, timeout_ms, rise and fall > 0.  Returns NULL
 * (nothing to free) when no server is checked. */
struct health_checks *health_start(uv_loop_t *loop, struct upstream_group *groups, size_t ngroups);

/* Stops the timers and abandons the checks in flight (their result is not
 * counted); the memory is freed once the loop has run the close callbacks.
 * NULL is a no-op.  On the loop's thread. */
void health_stop(struct health_checks *hc);

#endif
