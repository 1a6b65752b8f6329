/* SPDX-License-Identifier: MIT */
/*
 * breaker: the circuit breaker of one upstream server, shared by every worker.
 *
 * Design: CLOSED lets everything through and watches outcomes: it opens after
 * `failures` failures in a row, or when failures reach `ratio_pct` of the
 * requests in a sliding window (BREAKER_BUCKETS time buckets over window_ms)
 * holding at least `min_requests`.  OPEN refuses everything for the open
 * period, which doubles each time a half-open trial fails (up to max_open_ms)
 * and falls back to open_ms once a close has lasted as long as the last open
 * period.  When the period ends the breaker is HALF_OPEN: `half_open` probes
 * may be in flight at once; that many successes close it, any probe failure
 * reopens it.  A 429 with a known reset time puts it in QUOTA until that time,
 * after which it closes with no probes.  The admin may force it open or closed
 * until released.
 *
 * Time is always passed in (monotonic milliseconds), so tests drive it by hand.
 * Transitions happen inside breaker_admit / breaker_report / breaker_quota /
 * breaker_force and are handed back through an optional struct
 * breaker_transition so the caller can log them with the server's name.
 *
 * Threading: every function may be called from any thread.  A mutex per
 * breaker guards the state; it is held for a few arithmetic operations only.
 * With a disabled conf, breaker_admit and breaker_report take no lock.
 */
#ifndef SLUICE_BREAKER_H
#define SLUICE_BREAKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf/conf.h"

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN, BREAKER_QUOTA };
enum breaker_admit { BREAKER_PASS = 0, BREAKER_PROBE, BREAKER_DENY };
enum breaker_outcome {
    BREAKER_SUCCESS = 0,
    BREAKER_FAILURE,
    BREAKER_CANCEL, /* no verdict (the client left): only frees a probe slot */
};
enum breaker_force { BREAKER_AUTO = 0, BREAKER_FORCE_OPEN, BREAKER_FORCE_CLOSED };

struct breaker_counts {
    uint64_t opened;      /* entries into OPEN (first trips and reopens) */
    uint64_t half_opened; /* entries into HALF_OPEN */
    uint64_t closed;      /* entries into CLOSED (after half-open, quota, force) */
    uint64_t quota;       /* entries into QUOTA */
    uint64_t rejected;    /* admissions refused */
    uint64_t state_changes;
};

/* A state change, for the caller's log line. */
struct breaker_transition {
    bool changed;
    enum breaker_state from, to;
};

#define BREAKER_BUCKETS 10

/* Embeddable; the fields are private. */
struct breaker {
    pthread_mutex_t _lock;
    enum breaker_state _state;
    enum breaker_force _force;
    unsigned _consecutive;     /* failures in a row while closed */
    unsigned _probes;          /* probes in flight while half-open */
    unsigned _probe_successes; /* successful probes in this half-open period */
    uint64_t _until_ms;        /* end of the OPEN or QUOTA period */
    uint64_t _period_ms;       /* length of the last open period; 0 before the first trip */
    uint64_t _closed_at_ms;    /* when it last closed */
    struct {
        uint64_t epoch; /* now / bucket width when the bucket was last reset */
        uint32_t requests, failures;
    } _window[BREAKER_BUCKETS];
    struct breaker_counts _counts;
};

/* Initialises b closed, with empty counts. */
void breaker_init(struct breaker *b);
void breaker_dispose(struct breaker *b);

/* May a request go to the server now?  PASS: yes, as a normal request; PROBE:
 * yes, as one of the half-open trials (the caller must report it, with
 * BREAKER_CANCEL if it ends without a verdict, or the slot stays taken);
 * DENY: no, fail fast (counted in `rejected`).  An OPEN breaker whose period
 * ended turns HALF_OPEN here, a QUOTA one whose reset time passed turns CLOSED;
 * tr (may be NULL) receives that change.  conf->enabled false: PASS, no lock. */
enum breaker_admit breaker_admit(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms,
                                 struct breaker_transition *tr);

/* The outcome of a request admitted with `how` (the value breaker_admit
 * returned; never call it for DENY).  A failure is a connect error, a timeout
 * or a status in conf->on, as the caller classifies it.  Outcomes of requests
 * admitted under a state the breaker has since left do not move it.  tr (may be
 * NULL) receives a state change. */
void breaker_report(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms,
                    enum breaker_admit how, enum breaker_outcome out, struct breaker_transition *tr);

/* A 429 with a reset time: QUOTA until until_ms, cut to now_ms +
 * conf->max_open_ms so that a bogus or far reset (a daily quota, a header
 * off by 1000x) costs one request per max_open period rather than the server
 * for good; a QUOTA already running keeps the later end.  until_ms <= now_ms
 * does nothing: the caller then reports the 429 as a plain outcome instead.
 * Ignored while forced or with a disabled conf. */
void breaker_quota(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms, uint64_t until_ms,
                   struct breaker_transition *tr);

/* Admin override.  FORCE_OPEN refuses and FORCE_CLOSED passes everything
 * until BREAKER_AUTO, which restarts the breaker CLOSED with an empty window
 * and the open period back at its start. */
void breaker_force(struct breaker *b, enum breaker_force force, uint64_t now_ms,
                   struct breaker_transition *tr);
enum breaker_force breaker_forced(struct breaker *b);

/* The state as of now_ms, without changing anything: an OPEN breaker whose
 * period ended reads HALF_OPEN and a QUOTA one past its reset reads CLOSED
 * (the change itself, with its count and log, happens at the next admit). */
enum breaker_state breaker_state(struct breaker *b, uint64_t now_ms);

/* Milliseconds until the server may be tried again (OPEN or QUOTA), for a
 * Retry-After; 0 when it may be tried now or the time is unknown (forced). */
uint64_t breaker_wait_ms(struct breaker *b, uint64_t now_ms);

/* Requests and failures counted in the window as of now_ms (closed state). */
void breaker_window(struct breaker *b, const struct conf_breaker *conf, uint64_t now_ms, unsigned *requests,
                    unsigned *failures);

/* "closed", "open", "half_open", "quota". */
const char *breaker_state_name(enum breaker_state state);

void breaker_counts(struct breaker *b, struct breaker_counts *out);

#endif
