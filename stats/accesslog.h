/* SPDX-License-Identifier: MIT */
/*
 * accesslog: JSON request lines written without blocking a worker.
 *
 * Design: a struct accesslog is one destination (the access log, the slow
 * log).  Each worker formats a line into its own current 64 KiB chunk, with
 * no lock.  A full chunk (or one older than ACCESSLOG_FLUSH_MS, handed over
 * by accesslog_flush from a worker timer) goes to the writer thread under one
 * mutex taken once per chunk, never per line.  The writer thread owns the
 * file descriptor: it opens, writes and reopens (SIGUSR1) the file, so no
 * file I/O ever runs on a loop thread.  Memory is bounded: each worker may
 * hold at most buffer / workers bytes of chunks (at least two); when the
 * writer lags and none is free, the line is dropped and counted.
 *
 * Threading: accesslog_create/reopen/destroy on the main thread;
 * accesslog_write and accesslog_flush by worker w only for its own slot.
 */
#ifndef SLUICE_ACCESSLOG_H
#define SLUICE_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ACCESSLOG_CHUNK    (64 * 1024)
#define ACCESSLOG_LINE_MAX 4096 /* a longer line has its path and request id cut */
#define ACCESSLOG_FLUSH_MS 200

/* One finished request: what the access log, the slow log and analytics
 * record.  Plain data borrowed from the connection for the time of the
 * call; NULL strings are written as null. */
struct reqlog_record {
    int64_t time_ms;        /* wall clock of the request's first byte, ms since the epoch */
    const char *request_id;
    const char *client;     /* client IP */
    const char *method;
    const char *path;       /* the request target as received, path_len bytes */
    size_t path_len;
    const char *route;      /* stats name of the route, NULL when none matched */
    unsigned status;        /* 0: no response was sent */
    uint64_t bytes_in, bytes_out;
    uint64_t total_us;      /* first byte -> response complete */
    int64_t upstream_us;    /* request sent -> upstream response head; -1: no upstream answer */
    const char *upstream;   /* upstream server key ("group/host:port"), NULL: none */
    const char *cache;      /* X-Cache value (HIT, MISS...), NULL: the route does not cache */
    unsigned retries;
    const char *breaker;    /* breaker state met, NULL: no breaker */
    const char *limit;      /* rate limit decision, NULL: no limit */
};

/* Formats r as one JSON line (with its '\n') into dst; returns its length
 * (< cap; a line that would not fit has its path shortened).  cap must be at
 * least 1024. */
size_t reqlog_format_json(char *dst, size_t cap, const struct reqlog_record *r);

/* Appends src[0..len) JSON-escaped (no quotes) into dst, at most cap bytes;
 * returns bytes written.  Stops before an escape that would not fit. */
size_t reqlog_json_escape(char *dst, size_t cap, const char *src, size_t len);

struct accesslog;

/* Opens target ("stdout", "stderr" or a file path, appended to, created
 * 0644) and starts the writer thread.  name labels its counters
 * (sluice_<name>_lines_total...).  NULL with errno set when the file cannot be
 * opened. */
struct accesslog *accesslog_create(const char *name, const char *target, unsigned nworkers, size_t buffer_bytes);
/* A reload naming another target: the writer thread switches to it (opening
 * it there) after writing what is buffered.  Main thread. */
void accesslog_set_target(struct accesslog *log, const char *target);
/* Asks the writer thread to reopen the file (log rotation); stdout and
 * stderr are left alone.  Any thread, async-signal-safe it is not. */
void accesslog_reopen(struct accesslog *log);
/* Worker w: appends a line (already formatted, ending with '\n').  Drops it
 * and counts the drop when the worker's share of the buffer is used up. */
void accesslog_write(struct accesslog *log, unsigned w, const char *line, size_t len);
/* Worker w: hands its partial chunk to the writer if it is older than
 * ACCESSLOG_FLUSH_MS (now_ms: the loop's clock). */
void accesslog_flush(struct accesslog *log, unsigned w, uint64_t now_ms);
/* Main thread, once no worker writes any more: writes what is buffered,
 * stops the writer thread and frees the log. */
void accesslog_destroy(struct accesslog *log);

#endif
