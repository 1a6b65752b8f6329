/* SPDX-License-Identifier: MIT */
#include "stats/stats.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "test/unit/test.h"

#define NWORKERS   4
#define PER_WORKER 500000

TEST(find_or_create)
{
    stats_init(NWORKERS);
    ASSERT_EQ(stats_nworkers(), NWORKERS);
    struct stats_set *a = stats_set_get("route", "/api/");
    ASSERT(a != NULL);
    ASSERT(stats_set_get("route", "/api/") == a);
    struct stats_set *b = stats_set_get("server", "/api/");
    ASSERT(b != a);
    /* The kind/name boundary is part of the key. */
    ASSERT(stats_set_get("rou", "te/api/") != a);

    /* Enough sets to grow the hash several times; each found again. */
    struct stats_set *sets[2000];
    char name[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        sets[i] = stats_set_get("route", name);
    }
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        ASSERT(stats_set_get("route", name) == sets[i]);
    }
    ASSERT(stats_set_get("route", "/api/") == a);
}

TEST(slots_are_zeroed_and_cache_line_aligned)
{
    stats_init(NWORKERS);
    struct stats_set *s = stats_set_get("process", "all");
    for (unsigned w = 0; w < NWORKERS; w++) {
        struct stats_counters *c = stats_slot(s, w);
        ASSERT_EQ((uintptr_t)c % 64, 0);
        if (w)
            ASSERT_GE((char *)c - (char *)stats_slot(s, w - 1), 64);
    }
    struct stats_total t;
    stats_sum(s, &t);
    ASSERT_EQ(STATS_TOTAL(&t, requests), 0);
    ASSERT_EQ(STATS_TOTAL(&t, active), 0);
    ASSERT_EQ(t.latency.count, 0);
    ASSERT_EQ(hist_quantile(&t.latency, 0.5), 0);
}

TEST(default_one_worker)
{
    ASSERT_EQ(stats_nworkers(), 1);
    struct stats_set *s = stats_set_get("process", "all");
    STATS_INC(stats_slot(s, 0)->requests);
    struct stats_total t;
    stats_sum(s, &t);
    ASSERT_EQ(STATS_TOTAL(&t, requests), 1);
}

TEST(error_names)
{
    for (unsigned i = 0; i < STATS_ERR__COUNT; i++) {
        const char *n = stats_error_names[i];
        ASSERT(n != NULL && *n);
        for (const char *p = n; *p; p++)
            ASSERT((*p >= 'a' && *p <= 'z') || *p == '_');
        for (unsigned j = 0; j < i; j++)
            ASSERT(strcmp(n, stats_error_names[j]) != 0);
    }
    ASSERT_STR_EQ(stats_error_names[STATS_ERR_CONNECT_TIMEOUT], "connect_timeout");
    ASSERT_STR_EQ(stats_error_names[STATS_ERR_NO_ROUTE], "no_route");
}

static struct stats_set *race_set;
static _Atomic bool writers_done;

static void *writer(void *arg)
{
    unsigned w = (unsigned)(uintptr_t)arg;
    struct stats_counters *c = stats_slot(race_set, w);
    for (uint64_t i = 0; i < PER_WORKER; i++) {
        STATS_INC(c->requests);
        STATS_INC(c->status[1 + i % 5]);
        STATS_ADD(c->bytes_in, 3);
        STATS_ADD(c->bytes_out, w + 1);
        STATS_ADD(c->active, 1);
        STATS_INC(c->errors[i % STATS_ERR__COUNT]);
        hist_record(&c->latency, i % 1000);
        STATS_ADD(c->active, -1);
    }
    return NULL;
}

static void *reader(void *arg)
{
    uint64_t *reads = arg;
    uint64_t last = 0;
    struct stats_total t;
    while (!atomic_load(&writers_done)) {
        stats_sum(race_set, &t);
        /* Each slot has one writer, so every slot and hence the sum only grows. */
        ASSERT_GE(STATS_TOTAL(&t, requests), last);
        ASSERT_LE(STATS_TOTAL(&t, requests), (uint64_t)NWORKERS * PER_WORKER);
        ASSERT_LE(STATS_TOTAL(&t, active), NWORKERS);
        last = STATS_TOTAL(&t, requests);
        (*reads)++;
    }
    return NULL;
}

TEST(concurrent_writers_and_reader)
{
    stats_init(NWORKERS);
    race_set = stats_set_get("route", "/");
    pthread_t w[NWORKERS], r;
    uint64_t reads = 0;
    ASSERT_EQ(pthread_create(&r, NULL, reader, &reads), 0);
    for (unsigned i = 0; i < NWORKERS; i++)
        ASSERT_EQ(pthread_create(&w[i], NULL, writer, (void *)(uintptr_t)i), 0);
    for (unsigned i = 0; i < NWORKERS; i++)
        pthread_join(w[i], NULL);
    atomic_store(&writers_done, true);
    pthread_join(r, NULL);
    ASSERT_GT(reads, 0);

    struct stats_total t;
    stats_sum(race_set, &t);
    uint64_t n = (uint64_t)NWORKERS * PER_WORKER;
    ASSERT_EQ(STATS_TOTAL(&t, requests), n);
    ASSERT_EQ(STATS_TOTAL(&t, status[0]), 0);
    for (unsigned s = 1; s <= 5; s++)
        ASSERT_EQ(STATS_TOTAL(&t, status[s]), n / 5);
    ASSERT_EQ(STATS_TOTAL(&t, bytes_in), 3 * n);
    ASSERT_EQ(STATS_TOTAL(&t, bytes_out), (uint64_t)PER_WORKER * (1 + 2 + 3 + 4));
    ASSERT_EQ(STATS_TOTAL(&t, active), 0);
    uint64_t errs = 0;
    for (unsigned e = 0; e < STATS_ERR__COUNT; e++)
        errs += STATS_TOTAL(&t, errors[e]);
    ASSERT_EQ(errs, n);
    ASSERT_EQ(t.latency.count, n);
    ASSERT_EQ(t.latency.max_us, 999);
    ASSERT_EQ(t.latency.sum_us, (uint64_t)NWORKERS * (PER_WORKER / 1000) * (999 * 1000 / 2));
}

/* Runs python3 with `checks` (Python statements, `d` is the parsed JSON) on json; returns its exit status. */
static int python_check(const char *json, const char *checks)
{
    char jpath[] = "/tmp/sluice-stats-json-XXXXXX", ppath[] = "/tmp/sluice-stats-py-XXXXXX";
    int jfd = mkstemp(jpath), pfd = mkstemp(ppath);
    ASSERT(jfd >= 0 && pfd >= 0);
    const char *head = "import json, sys\nd = json.load(open(sys.argv[1], encoding='utf-8'))\n";
    ASSERT_EQ(write(jfd, json, strlen(json)), (ssize_t)strlen(json));
    ASSERT_EQ(write(pfd, head, strlen(head)), (ssize_t)strlen(head));
    ASSERT_EQ(write(pfd, checks, strlen(checks)), (ssize_t)strlen(checks));
    close(jfd);
    close(pfd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "python3 %s %s", ppath, jpath);
    int st = system(cmd);
    unlink(jpath);
    unlink(ppath);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *render(const char *kind)
{
    struct strbuf sb;
    strbuf_init(&sb);
    stats_render_json_kind(&sb, kind);
    return strbuf_release(&sb);
}

TEST(render_json)
{
    stats_init(2);
    struct stats_set *api = stats_set_get("route", "/api/");
    struct stats_set *odd = stats_set_get("route", "we\"ird\\name\n");
    stats_set_get("server", "backend/127.0.0.1:8000");

    struct stats_counters *c0 = stats_slot(api, 0), *c1 = stats_slot(api, 1);
    STATS_ADD(c0->requests, 7);
    STATS_ADD(c1->requests, 3);
    STATS_ADD(c0->status[2], 6);
    STATS_ADD(c1->status[5], 2);
    STATS_ADD(c1->status[0], 1);
    STATS_ADD(c0->bytes_in, 1000);
    STATS_ADD(c1->bytes_out, 5000);
    STATS_ADD(c0->active, 2);
    STATS_ADD(c0->pool_reuse, 4);
    STATS_ADD(c1->pool_new, 5);
    STATS_ADD(c1->retries_idle, 1);
    STATS_ADD(c1->errors[STATS_ERR_HEADER_TIMEOUT], 2);
    /* 1000 samples: 1..1000 ms in steps of 1 ms. */
    for (uint64_t ms = 1; ms <= 1000; ms++)
        hist_record(ms % 2 ? &c0->latency : &c1->latency, ms * 1000);
    STATS_INC(stats_slot(odd, 1)->requests);

    char *json = render("route");
    ASSERT(json[0] == '{');
    ASSERT_CONTAINS(json, "\"we\\\"ird\\\\name\\u000a\":{\"requests\":1,");
    ASSERT_CONTAINS(json, "\"responses\":{\"1xx\":0,\"2xx\":6,\"3xx\":0,\"4xx\":0,\"5xx\":2,\"none\":1}");
    ASSERT_CONTAINS(json, "\"max\":1000.000,\"mean\":500.500}");
    ASSERT_EQ(python_check(json,
                           "assert list(d) == ['/api/', 'we\"ird\\\\name\\n']\n"
                           "a = d['/api/']\n"
                           "assert a['requests'] == 10 and a['bytes_in'] == 1000 and a['bytes_out'] == 5000\n"
                           "assert a['responses'] == {'1xx': 0, '2xx': 6, '3xx': 0, '4xx': 0, '5xx': 2, "
                           "'none': 1}\n"
                           "assert a['active'] == 2 and a['pool_reuse'] == 4 and a['pool_new'] == 5\n"
                           "assert a['retries_idle'] == 1\n"
                           "assert list(a['errors']) == ['connect', 'connect_timeout', 'header_timeout', "
                           "'idle_timeout', 'upstream_closed', 'bad_response', 'client_closed', "
                           "'bad_request', 'no_route', 'deadline', 'breaker_open', 'tls']\n"
                           "assert a['errors']['header_timeout'] == 2 and sum(a['errors'].values()) == 2\n"
                           "l = a['latency_ms']\n"
                           "assert list(l) == ['p50', 'p95', 'p99', 'max', 'mean']\n"
                           "assert 500 <= l['p50'] <= 500 * 1.125, l\n"
                           "assert 950 <= l['p95'] <= 950 * 1.125, l\n"
                           "assert 990 <= l['p99'] <= 1000, l\n"
                           "assert l['max'] == 1000 and l['mean'] == 500.5\n"
                           "w = d['we\"ird\\\\name\\n']\n"
                           "assert w['requests'] == 1 and w['latency_ms']['p50'] == 0\n"),
              0);
    free(json);

    json = render("server");
    ASSERT_EQ(python_check(json, "assert list(d) == ['backend/127.0.0.1:8000']\n"
                                 "assert d['backend/127.0.0.1:8000']['requests'] == 0\n"),
              0);
    free(json);

    json = render("nothing");
    ASSERT_STR_EQ(json, "{}");
    free(json);
}

TEST(render_prometheus)
{
    stats_init(2);
    struct stats_set *a = stats_set_get("route", "we\"ird\\name\n");
    STATS_ADD(stats_slot(a, 0)->requests, 3);
    STATS_ADD(stats_slot(a, 1)->requests, 4);
    STATS_ADD(stats_slot(a, 1)->status[2], 7);
    STATS_ADD(stats_slot(a, 0)->active, -1);
    hist_record(&stats_slot(a, 0)->latency, 50);      /* 50 us */
    hist_record(&stats_slot(a, 1)->latency, 3000);    /* 3 ms */
    hist_record(&stats_slot(a, 1)->latency, 2000000); /* 2 s */
    static struct stats_global g = {.name = "things_total", .help = "Things"};
    stats_global_register(&g);
    stats_global_register(&g); /* twice is once */
    stats_global_add(&g, 5);
    struct strbuf sb;
    strbuf_init(&sb);
    stats_render_prometheus(&sb);
    const char *t = sb.data;
    const char *label = "{route=\"we\\\"ird\\\\name\\n\"";
    char want[256];
    snprintf(want, sizeof(want), "sluice_route_requests_total%s} 7\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_responses_total%s,code=\"2xx\"} 7\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_active%s} -1\n", label);
    ASSERT_CONTAINS(t, want);
    ASSERT_CONTAINS(t, "# TYPE sluice_route_active gauge\n");
    ASSERT_CONTAINS(t, "# TYPE sluice_route_latency_seconds histogram\n");
    /* one HELP per family, even with several rows (codes) in it */
    const char *help = strstr(t, "# HELP sluice_route_responses_total");
    ASSERT(help != NULL && strstr(help + 1, "# HELP sluice_route_responses_total") == NULL);
    snprintf(want, sizeof(want), "sluice_route_latency_seconds_bucket%s,le=\"0.0001\"} 1\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_latency_seconds_bucket%s,le=\"0.005\"} 2\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_latency_seconds_bucket%s,le=\"2.5\"} 3\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_latency_seconds_bucket%s,le=\"+Inf\"} 3\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_latency_seconds_sum%s} 2.00305\n", label);
    ASSERT_CONTAINS(t, want);
    snprintf(want, sizeof(want), "sluice_route_latency_seconds_count%s} 3\n", label);
    ASSERT_CONTAINS(t, want);
    ASSERT_CONTAINS(t, "# TYPE sluice_things_total counter\nsluice_things_total 5\n");
    strbuf_dispose(&sb);
}

TEST(python_check_catches_failures)
{
    /* The JSON checks above would be worthless if a failing check passed.
     * Python's tracebacks for these expected failures are not wanted. */
    int devnull = open("/dev/null", O_WRONLY);
    ASSERT(devnull >= 0 && dup2(devnull, STDERR_FILENO) == STDERR_FILENO);
    ASSERT_NE(python_check("{\"a\": 1}", "assert d['a'] == 2\n"), 0);
    ASSERT_NE(python_check("{\"a\": 1,}", ""), 0);
    ASSERT_EQ(python_check("{\"a\": 1}", "assert d['a'] == 1\n"), 0);
}

static _Atomic bool creator_done;

static void *creator(void *arg)
{
    char name[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof(name), "/r%d", i);
        STATS_INC(stats_slot(stats_set_get("route", name), 0)->requests);
    }
    atomic_store(&creator_done, true);
    return NULL;
}

TEST(render_while_sets_are_created)
{
    stats_init(1);
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, creator, NULL), 0);
    size_t last_len = 0;
    while (!atomic_load(&creator_done)) {
        char *json = render("route");
        size_t len = strlen(json);
        ASSERT(json[0] == '{' && json[len - 1] == '}');
        ASSERT_GE(len, last_len);
        last_len = len;
        free(json);
    }
    pthread_join(th, NULL);
    char *json = render("route");
    ASSERT_EQ(python_check(json, "assert len(d) == 3000 and list(d)[2999] == '/r2999'\n"
                                 "assert all(v['requests'] == 1 for v in d.values())\n"),
              0);
    free(json);
}

TEST_MAIN()
