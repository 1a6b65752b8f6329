/* SPDX-License-Identifier: MIT */
/*
 * log: the error log.  One line per event: time, level, worker, module, text.
 * The level is checked before anything is formatted.  Messages caused by
 * traffic go through LOG_RATELIMITED, which lets a call site speak at most
 * once a second and reports how many lines it held back.
 * Thread-safe: each line is formatted into a local buffer and written with
 * one write(2) to stderr (small, so it never meaningfully blocks).
 */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdatomic.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern _Atomic int log_current_level;

/* The worker id printed on lines from this thread; -1 (the default) prints "main". */
void log_set_thread_worker(int worker_id);
void log_set_level(enum log_level level);

void log_write(enum log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_enabled(level) ((int)(level) <= atomic_load_explicit(&log_current_level, memory_order_relaxed))
#define LOG_AT(level, module, ...)                                                                         \
    do {                                                                                                   \
        if (log_enabled(level))                                                                            \
            log_write(level, module, __VA_ARGS__);                                                         \
    } while (0)
#define log_error(module, ...) LOG_AT(LOG_ERROR, module, __VA_ARGS__)
#define log_warn(module, ...)  LOG_AT(LOG_WARN, module, __VA_ARGS__)
#define log_info(module, ...)  LOG_AT(LOG_INFO, module, __VA_ARGS__)
#define log_debug(module, ...) LOG_AT(LOG_DEBUG, module, __VA_ARGS__)

/* Per call site state for LOG_RATELIMITED. */
struct log_ratelimit {
    _Atomic uint64_t last_ms;
    _Atomic uint64_t suppressed;
};

/* Returns 1 when the site may log now; then *suppressed is the number of
 * lines held back since the last one. */
int log_ratelimit_pass(struct log_ratelimit *rl, uint64_t *suppressed);

#define LOG_RATELIMITED(level, module, fmt, ...)                                                           \
    do {                                                                                                   \
        static struct log_ratelimit log_rl_;                                                               \
        uint64_t log_sup_;                                                                                 \
        if (log_enabled(level) && log_ratelimit_pass(&log_rl_, &log_sup_)) {                               \
            if (log_sup_)                                                                                  \
                log_write(level, module, fmt " (%llu similar suppressed)", ##__VA_ARGS__,                  \
                          (unsigned long long)log_sup_);                                                   \
            else                                                                                           \
                log_write(level, module, fmt, ##__VA_ARGS__);                                              \
        }                                                                                                  \
    } while (0)

#endif
