/* SPDX-License-Identifier: MIT */
#include "stats/accesslog.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "stats/stats.h"
#include "test/unit/test.h"

TEST(json_escape)
{
    char out[64];
    size_t n = reqlog_json_escape(out, sizeof(out), "a\"b\\c\n\x01\x7f\xc3\xa9", 10);
    out[n] = '\0';
    ASSERT_STR_EQ(out, "a\\\"b\\\\c\\u000a\\u0001\\u007f\xc3\xa9");
    /* an escape that does not fit is left out whole, never cut */
    n = reqlog_json_escape(out, 3, "ab\"", 3);
    ASSERT_EQ(n, 2);
    n = reqlog_json_escape(out, 7, "ab\x01", 3);
    ASSERT_EQ(n, 2);
}

TEST(format_line)
{
    struct reqlog_record r = {
        .time_ms = 1700000000123,
        .request_id = "id-1",
        .client = "127.0.0.1",
        .method = "GET",
        .path = "/a?b=\"c\"",
        .path_len = 8,
        .route = "srv/",
        .status = 200,
        .bytes_in = 10,
        .bytes_out = 20,
        .total_us = 1500,
        .upstream_us = -1,
        .cache = "HIT",
        .retries = 2,
        .limit = "allow",
    };
    char line[ACCESSLOG_LINE_MAX];
    size_t n = reqlog_format_json(line, sizeof(line), &r);
    line[n] = '\0';
    ASSERT_STR_EQ(line, "{\"time\":\"2023-11-14T22:13:20.123Z\",\"request_id\":\"id-1\",\"client\":\"127.0.0.1\","
                        "\"method\":\"GET\",\"path\":\"/a?b=\\\"c\\\"\",\"route\":\"srv/\",\"status\":200,"
                        "\"bytes_in\":10,\"bytes_out\":20,\"total_ms\":1.500,\"upstream_ms\":null,"
                        "\"upstream\":null,\"cache\":\"HIT\",\"retries\":2,\"breaker\":null,\"limit\":\"allow\"}\n");
}

TEST(long_path_is_cut_and_the_line_stays_json)
{
    static char path[20000];
    memset(path, '"', sizeof(path));
    struct reqlog_record r = {.time_ms = 0, .path = path, .path_len = sizeof(path), .upstream_us = 5};
    char line[ACCESSLOG_LINE_MAX];
    size_t n = reqlog_format_json(line, sizeof(line), &r);
    ASSERT_LT(n, sizeof(line));
    ASSERT(line[n - 1] == '\n' && line[n - 2] == '}');
    line[n] = '\0';
    ASSERT_CONTAINS(line, "\\\"\",\"route\":null");
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    ASSERT(f != NULL);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

TEST(writer_writes_every_line_in_order_per_worker)
{
    char path[] = "/tmp/sluice-accesslog-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    close(fd);
    struct accesslog *log = accesslog_create("t", path, 2, 1 << 20);
    ASSERT(log != NULL);
    char line[64];
    for (int i = 0; i < 3000; i++) {
        int n = snprintf(line, sizeof(line), "w%d %05d\n", i % 2, i);
        accesslog_write(log, (unsigned)(i % 2), line, (size_t)n);
    }
    accesslog_destroy(log);
    char *text = slurp(path);
    unlink(path);
    int last[2] = {-1, -1}, lines = 0;
    for (char *p = text; *p; p = strchr(p, '\n') + 1) {
        int w, i;
        ASSERT_EQ(sscanf(p, "w%d %d", &w, &i), 2);
        ASSERT_GT(i, last[w]);
        last[w] = i;
        lines++;
    }
    ASSERT_EQ(lines, 3000);
}

static int pipe_rd;

static void *drain(void *arg)
{
    char buf[65536];
    while (read(pipe_rd, buf, sizeof(buf)) > 0)
        ;
    return NULL;
}

TEST(a_stuck_writer_makes_drops_not_waits)
{
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    pipe_rd = p[0];
    char target[64];
    snprintf(target, sizeof(target), "/proc/self/fd/%d", p[1]);
    /* nobody reads the pipe yet: the writer blocks once it is full */
    struct accesslog *log = accesslog_create("stuck", target, 1, 64 * 1024);
    ASSERT(log != NULL);
    char line[200];
    memset(line, 'x', sizeof(line));
    line[sizeof(line) - 1] = '\n';
    for (int i = 0; i < 20000; i++)
        accesslog_write(log, 0, line, sizeof(line)); /* 4 MB: must return at once, dropping */
    struct strbuf sb;
    strbuf_init(&sb);
    stats_render_json_globals(&sb);
    ASSERT_CONTAINS(sb.data, "\"stuck_dropped_total\":");
    ASSERT(strstr(sb.data, "\"stuck_dropped_total\":0,") == NULL);
    strbuf_dispose(&sb);
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, NULL, drain, NULL), 0);
    accesslog_destroy(log);
    close(p[1]);
    pthread_join(t, NULL);
    close(p[0]);
}

TEST_MAIN()
