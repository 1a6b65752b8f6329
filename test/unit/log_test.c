/* SPDX-License-Identifier: MIT */
#include "common/log.c"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>

#include "test/unit/test.h"

static int saved_stderr = -1;
static char capture_path[] = "/tmp/sluice-log-test-XXXXXX";

/* Sends fd 2 to a temporary file until capture_end. */
static void capture_start(void)
{
    int fd = mkstemp(capture_path);
    ASSERT(fd >= 0);
    unlink(capture_path);
    saved_stderr = dup(STDERR_FILENO);
    ASSERT(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
    close(fd);
}

/* Restores fd 2 and returns what was written (malloc'd, NUL-terminated). */
static char *capture_end(size_t *len_out)
{
    off_t size = lseek(STDERR_FILENO, 0, SEEK_END);
    ASSERT(size >= 0);
    char *buf = malloc((size_t)size + 1);
    ASSERT(buf != NULL);
    ASSERT_EQ(pread(STDERR_FILENO, buf, (size_t)size, 0), size);
    buf[size] = '\0';
    ASSERT(dup2(saved_stderr, STDERR_FILENO) == STDERR_FILENO);
    close(saved_stderr);
    if (len_out)
        *len_out = (size_t)size;
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static bool is_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

TEST(line_format)
{
    capture_start();
    time_t before = time(NULL);
    log_info("proxy", "hello %d %s", 42, "world");
    char *out = capture_end(NULL);
    /* 2026-11-23T22:30:01.123Z info [main] proxy: hello 42 world */
    ASSERT_EQ(strlen(out), 24 + strlen(" info [main] proxy: hello 42 world\n"));
    ASSERT(is_digits(out, 4) && out[4] == '-' && is_digits(out + 5, 2) && out[7] == '-');
    ASSERT(is_digits(out + 8, 2) && out[10] == 'T' && is_digits(out + 11, 2) && out[13] == ':');
    ASSERT(is_digits(out + 14, 2) && out[16] == ':' && is_digits(out + 17, 2) && out[19] == '.');
    ASSERT(is_digits(out + 20, 3) && out[23] == 'Z');
    ASSERT_STR_EQ(out + 24, " info [main] proxy: hello 42 world\n");
    struct tm tm = {0};
    ASSERT(strptime(out, "%Y-%m-%dT%H:%M:%S", &tm) != NULL);
    time_t t = timegm(&tm);
    ASSERT_GE(t, before);
    ASSERT_LE(t, before + 2);
    free(out);
}

TEST(worker_id_is_per_thread)
{
    capture_start();
    log_set_thread_worker(3);
    log_error("upstream", "x");
    log_set_thread_worker(-1);
    log_warn(NULL, "y");
    char *out = capture_end(NULL);
    ASSERT_CONTAINS(out, "Z error [w3] upstream: x\n");
    ASSERT_CONTAINS(out, "Z warn [main] -: y\n");
    free(out);
}

static int evaluated;

static int side_effect(void)
{
    return ++evaluated;
}

TEST(level_checked_before_formatting)
{
    ASSERT_EQ(atomic_load(&log_current_level), LOG_INFO);
    capture_start();
    log_debug("t", "debug %d", side_effect());
    ASSERT_EQ(evaluated, 0);
    log_set_level(LOG_WARN);
    log_info("t", "info %d", side_effect());
    log_write(LOG_INFO, "t", "direct info");
    ASSERT_EQ(evaluated, 0);
    log_warn("t", "warn %d", side_effect());
    log_set_level(LOG_DEBUG);
    log_debug("t", "debug %d", side_effect());
    char *out = capture_end(NULL);
    ASSERT_EQ(evaluated, 2);
    ASSERT_EQ(count_lines(out), 2);
    ASSERT_CONTAINS(out, " warn [main] t: warn 1\n");
    ASSERT_CONTAINS(out, " debug [main] t: debug 2\n");
    free(out);
}

TEST(long_lines_truncated)
{
    static char msg[5000];
    memset(msg, 'm', sizeof(msg) - 1);
    capture_start();
    /* 24 bytes of time, 21 of " error [main] proxy: ", one newline. */
    int fits = LOG_LINE_MAX - 24 - 21 - 1;
    log_error("proxy", "%s", msg);
    log_error("proxy", "%.*s", fits, msg);
    log_error("proxy", "%.*s", fits + 1, msg);
    size_t len;
    char *out = capture_end(&len);
    ASSERT_EQ(len, 3 * LOG_LINE_MAX);
    ASSERT_EQ(count_lines(out), 3);
    ASSERT(memcmp(out + LOG_LINE_MAX - 5, "m...\n", 5) == 0);
    ASSERT(memcmp(out + 2 * LOG_LINE_MAX - 5, "mmmm\n", 5) == 0);
    ASSERT(memcmp(out + 3 * LOG_LINE_MAX - 5, "m...\n", 5) == 0);
    free(out);
}

TEST(errno_preserved)
{
    capture_start();
    errno = EAGAIN;
    log_error("t", "x");
    ASSERT_EQ(errno, EAGAIN);
    free(capture_end(NULL));
}

static void *log_many(void *arg)
{
    int id = (int)(intptr_t)arg;
    log_set_thread_worker(id);
    char body[1500];
    memset(body, 'a' + id, sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    for (int i = 0; i < 300; i++)
        log_info("t", "%s", body);
    return NULL;
}

TEST(concurrent_lines_never_interleave)
{
    capture_start();
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, log_many, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *out = capture_end(NULL);
    ASSERT_EQ(count_lines(out), 1200);
    for (char *line = out, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        char *w = strstr(line, "[w");
        ASSERT(w != NULL && w < nl);
        char c = (char)('a' + (w[2] - '0'));
        char *body = strstr(line, "t: ") + 3;
        ASSERT_EQ(nl - body, 1499);
        for (char *p = body; p < nl; p++)
            ASSERT_EQ(*p, c);
    }
    free(out);
}

TEST(time_format_matches_gmtime)
{
    char buf[64];
    struct timespec ts = {0, 0};
    format_time(buf, sizeof(buf), &ts);
    ASSERT_STR_EQ(buf, "1970-01-01T00:00:00.000Z");
    ts = (struct timespec){951782400 + 3600 * 23 + 59 * 60 + 59, 999999999};
    format_time(buf, sizeof(buf), &ts);
    ASSERT_STR_EQ(buf, "2000-02-29T23:59:59.999Z");
    ts = (struct timespec){-1, 5000000};
    format_time(buf, sizeof(buf), &ts);
    ASSERT_STR_EQ(buf, "1969-12-31T23:59:59.005Z");
    /* A sweep over 250 years with an odd step hits every month and leap rule. */
    for (time_t t = 0; t < (time_t)250 * 366 * 86400; t += 86400 * 3 + 3607) {
        struct tm tm;
        char want[64];
        gmtime_r(&t, &tm);
        strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S.000Z", &tm);
        ts = (struct timespec){t, 0};
        format_time(buf, sizeof(buf), &ts);
        ASSERT_STR_EQ(buf, want);
    }
}

TEST(ratelimit_one_per_second_counts_the_rest)
{
    struct log_ratelimit rl = {0};
    uint64_t sup = 99;
    ASSERT_EQ(ratelimit_pass_at(&rl, 5, &sup), 1);
    ASSERT_EQ(sup, 0);
    for (uint64_t t = 5; t < 1005; t += 100)
        ASSERT_EQ(ratelimit_pass_at(&rl, t, &sup), 0);
    ASSERT_EQ(ratelimit_pass_at(&rl, 1004, &sup), 0);
    ASSERT_EQ(ratelimit_pass_at(&rl, 1005, &sup), 1);
    ASSERT_EQ(sup, 11);
    ASSERT_EQ(ratelimit_pass_at(&rl, 2004, &sup), 0);
    /* A stale "now" from a thread that read the clock before another stored
     * a later time must not pass. */
    ASSERT_EQ(ratelimit_pass_at(&rl, 1000, &sup), 0);
    ASSERT_EQ(ratelimit_pass_at(&rl, 50000, &sup), 1);
    ASSERT_EQ(sup, 2);
    ASSERT_EQ(log_ratelimit_pass(&(struct log_ratelimit){0}, &sup), 1);
}

static struct log_ratelimit shared_rl;
static _Atomic uint64_t passes, reported;
static pthread_barrier_t second_barrier;

static void *race(void *arg)
{
    uint64_t sup;
    for (uint64_t t = 1; t <= 10; t++) {
        /* Every thread is inside the same second before any call. */
        pthread_barrier_wait(&second_barrier);
        for (int i = 0; i < 1000; i++) {
            if (ratelimit_pass_at(&shared_rl, t * 1000, &sup)) {
                atomic_fetch_add(&passes, 1);
                atomic_fetch_add(&reported, sup);
            }
        }
    }
    return NULL;
}

TEST(ratelimit_exactly_one_thread_passes)
{
    pthread_t th[4];
    ASSERT_EQ(pthread_barrier_init(&second_barrier, NULL, 4), 0);
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, race, NULL), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&second_barrier);
    /* One pass per second whichever thread claims it, and every other call
     * is either reported by a later pass or still pending. */
    ASSERT_EQ(atomic_load(&passes), 10);
    ASSERT_EQ(atomic_load(&reported) + atomic_load(&shared_rl.suppressed), 40000 - 10);
}

TEST(ratelimited_macro)
{
    capture_start();
    for (int i = 0; i < 5; i++)
        LOG_RATELIMITED(LOG_ERROR, "proxy", "bad thing %d", i);
    char *out = capture_end(NULL);
    ASSERT_EQ(count_lines(out), 1);
    ASSERT_CONTAINS(out, " error [main] proxy: bad thing 0\n");
    free(out);
}

TEST_MAIN()
