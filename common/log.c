/* SPDX-License-Identifier: MIT */
/*
 * log: each line is built in a stack buffer and handed to one write(2) on
 * stderr.  Lines stay below PIPE_BUF, so lines from different threads never
 * interleave even when stderr is a pipe; longer messages are cut and end in
 * "...".  The timestamp is converted from the epoch by hand because glibc's
 * gmtime_r takes a process-wide lock.
 *
 * Rate limiting keeps two atomics per call site: the time of the last line
 * that went out and the number held back since.  A thread that finds the
 * second elapsed claims it with a compare-and-swap, so exactly one thread
 * speaks per site per second without any lock.
 */
#include "common/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX     2048
#define LOG_RATELIMIT_MS 1000

_Atomic int log_current_level = LOG_INFO;

static _Thread_local int log_worker = -1;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_thread_worker(int worker_id)
{
    log_worker = worker_id;
}

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&log_current_level, (int)level, memory_order_relaxed);
}

/* Civil date from days since 1970-01-01 (H. Hinnant's days_from_civil inverse). */
static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

/* Writes "2026-11-23T22:30:01.123Z" into buf; returns its length. */
static int format_time(char *buf, size_t size, const struct timespec *ts)
{
    int64_t secs = ts->tv_sec;
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    int y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    return snprintf(buf, size, "%04d-%02u-%02uT%02u:%02u:%02u.%03uZ", y, mo, d, (unsigned)(rem / 3600),
                    (unsigned)(rem / 60 % 60), (unsigned)(rem % 60), (unsigned)(ts->tv_nsec / 1000000));
}

static void write_all_once(const char *buf, size_t len)
{
    ssize_t n;
    do
        n = write(STDERR_FILENO, buf, len);
    while (n < 0 && errno == EINTR);
}

void log_write(enum log_level level, const char *module, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    int saved_errno = errno; /* callers often log right before using errno */
    char line[LOG_LINE_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    size_t len = (size_t)format_time(line, sizeof(line), &ts);

    char worker[16];
    if (log_worker < 0)
        snprintf(worker, sizeof(worker), "main");
    else
        snprintf(worker, sizeof(worker), "w%d", log_worker);
    unsigned li = (unsigned)level < 4 ? (unsigned)level : LOG_DEBUG;
    /* The module is a short literal; the bound keeps the prefix far below the line size. */
    len += (size_t)snprintf(line + len, sizeof(line) - len, " %s [%s] %.64s: ", level_names[li], worker,
                            module ? module : "-");

    /* Room is kept for the newline; if the message does not fit, its tail
     * is replaced by "...". */
    size_t room = sizeof(line) - 1 - len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + len, room + 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > room) {
        memcpy(line + sizeof(line) - 4, "...", 3);
        len = sizeof(line) - 1;
    } else {
        len += (size_t)n;
    }
    line[len++] = '\n';
    write_all_once(line, len);
    errno = saved_errno;
}

/* The rate limit decision at time now_ms (never 0, so a zeroed site passes). */
static int ratelimit_pass_at(struct log_ratelimit *rl, uint64_t now_ms, uint64_t *suppressed)
{
    uint64_t last = atomic_load_explicit(&rl->last_ms, memory_order_relaxed);
    /* Another thread may have stored a time later than ours: compare by
     * addition so that never underflows into a pass. */
    if ((last == 0 || now_ms >= last + LOG_RATELIMIT_MS) &&
        atomic_compare_exchange_strong_explicit(&rl->last_ms, &last, now_ms, memory_order_relaxed,
                                                memory_order_relaxed)) {
        *suppressed = atomic_exchange_explicit(&rl->suppressed, 0, memory_order_relaxed);
        return 1;
    }
    atomic_fetch_add_explicit(&rl->suppressed, 1, memory_order_relaxed);
    *suppressed = 0;
    return 0;
}

int log_ratelimit_pass(struct log_ratelimit *rl, uint64_t *suppressed)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 + 1;
    return ratelimit_pass_at(rl, now_ms, suppressed);
}
