/* SPDX-License-Identifier: MIT */
/*
 * analytics: request rows into PostgreSQL, never waiting for it.
 *
 * Design: each worker pushes fixed-size rows into its own single-producer
 * ring (the analytics thread is the single consumer), so pushing takes no
 * lock; a full ring drops the row and counts it.  One thread with its own
 * uv loop owns one libpq connection, driven asynchronously: connect with
 * PQconnectStartParams/PQconnectPoll (numeric hostaddr: no DNS), the
 * migration (scripts/analytics.sql, embedded) with PQsendQuery, then batches
 * with binary COPY ... FROM STDIN (PQputCopyData/PQputCopyEnd, nonblocking),
 * the socket watched by a uv_poll.  A batch goes out when `batch` rows wait
 * or every `flush` interval.  PostgreSQL down or slow: rows pile up in the
 * rings and the excess is dropped (counted); the connection is retried with
 * backoff (100 ms doubling to 5 s); a COPY stuck for 10 s is abandoned.
 * The client IP is never stored: client_key is a salted SHA-256 of it,
 * computed on the analytics thread.
 *
 * Threading: create/destroy on the main thread; analytics_push by worker w
 * for its own ring; analytics_is_up from any thread.
 */
#ifndef SLUICE_ANALYTICS_H
#define SLUICE_ANALYTICS_H

#include <stdbool.h>

#include "conf/conf.h"
#include "stats/accesslog.h"

struct analytics;

/* Starts the thread; it connects in the background.  Aborts only when
 * memory or a thread cannot be had. */
struct analytics *analytics_create(const struct conf_analytics *conf, unsigned nworkers);
/* True when c names the same database and settings (a reload keeps it). */
bool analytics_is_for(const struct analytics *a, const struct conf_analytics *c);
/* Worker w: copies the row's fields into its ring, or drops and counts it. */
void analytics_push(struct analytics *a, unsigned w, const struct reqlog_record *r);
/* Connected and the migration applied. */
bool analytics_is_up(const struct analytics *a);
/* Main thread, workers stopped: one last flush (bounded in time), then stop. */
void analytics_destroy(struct analytics *a);

#endif
