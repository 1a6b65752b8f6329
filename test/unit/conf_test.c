/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <sys/stat.h>

#include <llhttp.h>

#include "conf/conf.h"

#include "test/unit/test.h"

/* Two lines every error case builds on: an upstream u and a server using it. */
#define BASE                                                                                                 \
    "upstream u { server 127.0.0.1:81; }\n"                                                                  \
    "server { listen 127.0.0.1:8080; route / { upstream u; } }\n"

/* Loads text as "t.conf"; *err gets everything printed. */
static struct conf *load(const char *text, char **err)
{
    size_t len = 0;
    FILE *f = open_memstream(err, &len);
    struct conf *conf = conf_load_string(text, "t.conf", f);
    fclose(f);
    return conf;
}

static struct conf *load_ok(const char *text)
{
    char *err = NULL;
    struct conf *conf = load(text, &err);
    if (conf == NULL || err[0] != '\0')
        TEST_FAIL("unexpected errors:\n%s", err);
    free(err);
    return conf;
}

#define ASSERT_ERRORS(text, want)                                                                            \
    do {                                                                                                     \
        char *err_ = NULL;                                                                                   \
        struct conf *conf_ = load(text, &err_);                                                              \
        ASSERT(conf_ == NULL);                                                                               \
        ASSERT_STR_EQ(err_, want);                                                                           \
        free(err_);                                                                                          \
    } while (0)

/* Each case: a conf and the exact error output it must give. */
struct error_case {
    const char *text;
    const char *want;
};

static void check_error_cases(const struct error_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *err = NULL;
        struct conf *conf = load(cases[i].text, &err);
        if (conf != NULL || strcmp(err, cases[i].want) != 0)
            TEST_FAIL("case %zu:\n%s\nwant: %sgot:  %s", i, cases[i].text, cases[i].want, err);
        free(err);
    }
}

#define CHECK_ERROR_CASES(cases) check_error_cases(cases, sizeof(cases) / sizeof(cases[0]))

#define ASSERT_OPT_STR_EQ(a, b)                                                                              \
    do {                                                                                                     \
        if ((a) != NULL || (b) != NULL)                                                                      \
            ASSERT_STR_EQ(a, b);                                                                             \
    } while (0)

static void assert_listen_equal(const struct conf_listen *a, const struct conf_listen *b)
{
    ASSERT_EQ(a->addrlen, b->addrlen);
    ASSERT(memcmp(&a->addr, &b->addr, a->addrlen) == 0);
    ASSERT_STR_EQ(a->text, b->text);
    ASSERT_EQ(a->tls, b->tls);
    ASSERT_OPT_STR_EQ(a->tls_cert, b->tls_cert);
    ASSERT_OPT_STR_EQ(a->tls_key, b->tls_key);
}

static void assert_ops_equal(const struct conf_header_op *a, size_t na, const struct conf_header_op *b,
                             size_t nb)
{
    ASSERT_EQ(na, nb);
    for (size_t i = 0; i < na; i++) {
        ASSERT_STR_EQ(a[i].name, b[i].name);
        ASSERT_OPT_STR_EQ(a[i].value, b[i].value);
    }
}

static void assert_cache_equal(const struct conf_cache *a, const struct conf_cache *b)
{
    ASSERT_STR_EQ(a->name, b->name);
    ASSERT_EQ(a->memory, b->memory);
    ASSERT_EQ(a->max_object, b->max_object);
    ASSERT_EQ(a->redis, b->redis);
}

static void assert_redis_equal(const struct conf_redis *a, const struct conf_redis *b)
{
    ASSERT_EQ(a == NULL, b == NULL);
    if (a == NULL)
        return;
    ASSERT_STR_EQ(a->url, b->url);
    ASSERT_STR_EQ(a->host, b->host);
    ASSERT_EQ(a->port, b->port);
    ASSERT_EQ(a->db, b->db);
    ASSERT_EQ(a->timeout_ms, b->timeout_ms);
}

static void assert_strings_equal(char *const *a, size_t na, char *const *b, size_t nb)
{
    ASSERT_EQ(na, nb);
    for (size_t i = 0; i < na; i++)
        ASSERT_STR_EQ(a[i], b[i]);
}

static void assert_route_cache_equal(const struct conf_route_cache *a, const struct conf_route_cache *b)
{
    ASSERT_EQ(a == NULL, b == NULL);
    if (a == NULL)
        return;
    assert_cache_equal(a->cache, b->cache);
    ASSERT_EQ(a->methods, b->methods);
    ASSERT_EQ(a->has_ttl, b->has_ttl);
    ASSERT_EQ(a->ttl_ms, b->ttl_ms);
    ASSERT_EQ(a->ttl_override, b->ttl_override);
    ASSERT_EQ(a->nttl_status, b->nttl_status);
    for (size_t i = 0; i < a->nttl_status; i++) {
        ASSERT_EQ(a->ttl_status[i].lo, b->ttl_status[i].lo);
        ASSERT_EQ(a->ttl_status[i].hi, b->ttl_status[i].hi);
        ASSERT_EQ(a->ttl_status[i].ttl_ms, b->ttl_status[i].ttl_ms);
    }
    ASSERT_OPT_STR_EQ(a->ttl_header, b->ttl_header);
    ASSERT_OPT_STR_EQ(a->ttl_json_path, b->ttl_json_path);
    ASSERT_EQ(a->nttl_json_values, b->nttl_json_values);
    for (size_t i = 0; i < a->nttl_json_values; i++) {
        ASSERT_STR_EQ(a->ttl_json_values[i].value, b->ttl_json_values[i].value);
        ASSERT_EQ(a->ttl_json_values[i].ttl_ms, b->ttl_json_values[i].ttl_ms);
    }
    ASSERT_EQ(a->stale_while_revalidate_ms, b->stale_while_revalidate_ms);
    ASSERT_EQ(a->stale_if_error_ms, b->stale_if_error_ms);
    ASSERT_EQ(a->max_stale_ms, b->max_stale_ms);
    assert_strings_equal(a->key_headers, a->nkey_headers, b->key_headers, b->nkey_headers);
    ASSERT_EQ(a->key_body, b->key_body);
    ASSERT_EQ(a->key_body_max, b->key_body_max);
    ASSERT_EQ(a->key_query_sorted, b->key_query_sorted);
    assert_strings_equal(a->key_query_ignore, a->nkey_query_ignore, b->key_query_ignore,
                         b->nkey_query_ignore);
}

/* Every field but positions, path and generation. */
static void assert_conf_equal(const struct conf *a, const struct conf *b)
{
    ASSERT_EQ(a->workers, b->workers);
    ASSERT_EQ(a->log_level, b->log_level);
    ASSERT_EQ(a->admin_enabled, b->admin_enabled);
    assert_listen_equal(&a->admin_listen, &b->admin_listen);
    ASSERT_OPT_STR_EQ(a->admin_token, b->admin_token);
    ASSERT_EQ(a->shutdown_timeout_ms, b->shutdown_timeout_ms);
    ASSERT_EQ(a->max_connections, b->max_connections);
    ASSERT_EQ(a->nupstreams, b->nupstreams);
    for (size_t i = 0; i < a->nupstreams; i++) {
        const struct conf_upstream *x = &a->upstreams[i], *y = &b->upstreams[i];
        ASSERT_STR_EQ(x->name, y->name);
        ASSERT_EQ(x->nservers, y->nservers);
        for (size_t j = 0; j < x->nservers; j++) {
            ASSERT_STR_EQ(x->servers[j].host, y->servers[j].host);
            ASSERT_STR_EQ(x->servers[j].name, y->servers[j].name);
            ASSERT_EQ(x->servers[j].port, y->servers[j].port);
            ASSERT_EQ(x->servers[j].weight, y->servers[j].weight);
            ASSERT_EQ(x->servers[j].backup, y->servers[j].backup);
            ASSERT_EQ(x->servers[j].tls, y->servers[j].tls);
        }
        ASSERT_EQ(x->balance, y->balance);
        ASSERT_EQ(x->keepalive, y->keepalive);
        ASSERT_EQ(x->keepalive_timeout_ms, y->keepalive_timeout_ms);
        ASSERT_EQ(x->connect_timeout_ms, y->connect_timeout_ms);
        ASSERT_EQ(x->header_timeout_ms, y->header_timeout_ms);
        ASSERT_EQ(x->idle_timeout_ms, y->idle_timeout_ms);
        ASSERT_EQ(x->tls_verify, y->tls_verify);
        ASSERT_OPT_STR_EQ(x->tls_ca, y->tls_ca);
        ASSERT_OPT_STR_EQ(x->tls_cert, y->tls_cert);
        ASSERT_OPT_STR_EQ(x->tls_key, y->tls_key);
        ASSERT_OPT_STR_EQ(x->tls_sni, y->tls_sni);
    }
    ASSERT_EQ(a->ncaches, b->ncaches);
    for (size_t i = 0; i < a->ncaches; i++)
        assert_cache_equal(&a->caches[i], &b->caches[i]);
    assert_redis_equal(a->redis, b->redis);
    ASSERT_EQ(a->nservers, b->nservers);
    for (size_t i = 0; i < a->nservers; i++) {
        const struct conf_server *x = &a->servers[i], *y = &b->servers[i];
        ASSERT_EQ(x->nlistens, y->nlistens);
        for (size_t j = 0; j < x->nlistens; j++)
            assert_listen_equal(&x->listens[j], &y->listens[j]);
        ASSERT_EQ(x->nnames, y->nnames);
        for (size_t j = 0; j < x->nnames; j++)
            ASSERT_STR_EQ(x->names[j], y->names[j]);
        ASSERT_OPT_STR_EQ(x->process_time_header, y->process_time_header);
        ASSERT_EQ(x->client_header_timeout_ms, y->client_header_timeout_ms);
        ASSERT_EQ(x->client_body_timeout_ms, y->client_body_timeout_ms);
        ASSERT_EQ(x->keepalive_timeout_ms, y->keepalive_timeout_ms);
        ASSERT_EQ(x->send_timeout_ms, y->send_timeout_ms);
        ASSERT_EQ(x->max_header_size, y->max_header_size);
        ASSERT_EQ(x->max_headers, y->max_headers);
        ASSERT_EQ(x->max_uri_size, y->max_uri_size);
        ASSERT_EQ(x->max_body_size, y->max_body_size);
        ASSERT_EQ(x->via, y->via);
        ASSERT_EQ(x->nroutes, y->nroutes);
        for (size_t j = 0; j < x->nroutes; j++) {
            const struct conf_route *p = &x->routes[j], *q = &y->routes[j];
            ASSERT_STR_EQ(p->prefix, q->prefix);
            ASSERT_EQ(p->prefix_len, q->prefix_len);
            ASSERT_STR_EQ(p->upstream->name, q->upstream->name);
            assert_ops_equal(p->req_ops, p->nreq_ops, q->req_ops, q->nreq_ops);
            assert_ops_equal(p->resp_ops, p->nresp_ops, q->resp_ops, q->nresp_ops);
            ASSERT_EQ(p->websocket_idle_timeout_ms, q->websocket_idle_timeout_ms);
            assert_route_cache_equal(p->cache, q->cache);
        }
    }
}

static char *print_conf(const struct conf *conf)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    conf_print(conf, f);
    fclose(f);
    return buf;
}

/* Prints conf, loads the text again and checks both snapshots are equal and
 * print the same. */
static void assert_round_trip(const struct conf *conf)
{
    char *text = print_conf(conf);
    struct conf *again = load_ok(text);
    assert_conf_equal(conf, again);
    char *text2 = print_conf(again);
    ASSERT_STR_EQ(text2, text);
    free(text);
    free(text2);
    conf_unref(again);
}

/* --- temp files --- */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/conf_test.XXXXXX");
    ASSERT(mkdtemp(tmpdir) != NULL);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void remove_tmpdir(void)
{
    ASSERT_EQ(nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* Writes text to tmpdir/name and returns the full path in a static buffer. */
static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ASSERT(f != NULL);
    fputs(text, f);
    ASSERT_EQ(fclose(f), 0);
    return path;
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *tmp_path(const char *name)
{
    return format("%s/%s", tmpdir, name);
}

static char *load_file_errors(const char *path, struct conf **out)
{
    char *err = NULL;
    size_t len = 0;
    FILE *e = open_memstream(&err, &len);
    struct conf *c = conf_load_file(path, e);
    fclose(e);
    if (out != NULL)
        *out = c;
    else
        conf_unref(c);
    return err;
}

/* asprintf that cannot fail quietly. */
static char *format(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    ASSERT(vasprintf(&s, fmt, ap) > 0);
    va_end(ap);
    return s;
}

/* Loads the file path and checks the exact error output; frees want. */
static void assert_file_errors(const char *path, char *want)
{
    char *err = load_file_errors(path, NULL);
    ASSERT_STR_EQ(err, want);
    free(err);
    free(want);
}

/* --- valid configurations --- */

static const char full_conf[] =
    "# every directive, none at its default\n"
    "workers 4;\n"
    "error_log stderr debug;\n"
    "shutdown_timeout 2m;\n"
    "max_connections 5000;\n"
    "admin {\n"
    "    listen [::1]:9902;\n"
    "    token \"s3cret-token\";\n"
    "}\n"
    "upstream api {\n"
    "    server 10.0.0.5:8000 weight=2;\n"
    "    server Backend.internal:8001 backup;\n"
    "    server [::1]:8443 tls weight=1000;\n"
    "    balance round_robin;\n"
    "    keepalive 10;\n"
    "    keepalive_timeout 30s;\n"
    "    connect_timeout 250ms;\n"
    "    header_timeout 1m;\n"
    "    idle_timeout 1h;\n"
    "}\n"
    "upstream static { server 127.0.0.1:9000; balance round_robin; keepalive 0; }\n"
    "server {\n"
    "    listen 8080;\n"
    "    listen *:8443 tls cert=/etc/s/site.crt key=site.key;\n"
    "    server_name API.Example.com *.example.org;\n"
    "    server_name www.example.org;\n"
    "    process_time_header X-Took;\n"
    "    client_header_timeout 5s;\n"
    "    client_body_timeout 20s;\n"
    "    keepalive_timeout 0s;\n"
    "    send_timeout 1d;\n"
    "    max_header_size 32k;\n"
    "    max_headers 50;\n"
    "    max_uri_size 4K;\n"
    "    max_body_size 0;\n"
    "    via off;\n"
    "    route / { upstream static; }\n"
    "    route /v1/chat {\n"
    "        upstream api;\n"
    "        set_header Authorization \"Bearer ${SLUICE_TEST_KEY}\";\n"
    "        remove_header Cookie;\n"
    "        set_header X-Empty \"\";\n"
    "        set_response_header Cache-Control no-store;\n"
    "        remove_response_header Server;\n"
    "        websocket_idle_timeout 10m;\n"
    "    }\n"
    "    route /v1/ { upstream api; }\n"
    "}\n"
    "server {\n"
    "    listen 8080;\n"
    "    process_time_header off;\n"
    "    route / { upstream api; }\n"
    "}\n";

TEST(full_conf_every_value)
{
    setenv("SLUICE_TEST_KEY", "sk-123", 1);
    struct conf *c = load_ok(full_conf);
    ASSERT_EQ(atomic_load(&c->refs), 1);
    ASSERT_STR_EQ(c->path, "t.conf");
    ASSERT_EQ(c->workers, 4);
    ASSERT_EQ(c->log_level, CONF_LOG_DEBUG);
    ASSERT_EQ(c->shutdown_timeout_ms, 120000);
    ASSERT_EQ(c->max_connections, 5000);
    ASSERT(c->admin_enabled);
    ASSERT_STR_EQ(c->admin_listen.text, "[::1]:9902");
    ASSERT_EQ(c->admin_listen.addr.ss_family, AF_INET6);
    ASSERT_EQ(ntohs(((struct sockaddr_in6 *)&c->admin_listen.addr)->sin6_port), 9902);
    ASSERT_EQ(c->admin_listen.addrlen, sizeof(struct sockaddr_in6));
    ASSERT_EQ(c->admin_listen.pos.line, 7);
    ASSERT_STR_EQ(c->admin_token, "s3cret-token");

    ASSERT_EQ(c->nupstreams, 2);
    const struct conf_upstream *api = &c->upstreams[0];
    ASSERT_STR_EQ(api->name, "api");
    ASSERT_STR_EQ(api->pos.file, "t.conf");
    ASSERT_EQ(api->pos.line, 10);
    ASSERT_EQ(api->nservers, 3);
    ASSERT_STR_EQ(api->servers[0].host, "10.0.0.5");
    ASSERT_EQ(api->servers[0].port, 8000);
    ASSERT_STR_EQ(api->servers[0].name, "10.0.0.5:8000");
    ASSERT_EQ(api->servers[0].weight, 2);
    ASSERT(!api->servers[0].backup && !api->servers[0].tls);
    ASSERT_EQ(api->servers[0].pos.line, 11);
    ASSERT_STR_EQ(api->servers[1].host, "Backend.internal");
    ASSERT_STR_EQ(api->servers[1].name, "Backend.internal:8001");
    ASSERT_EQ(api->servers[1].weight, 1);
    ASSERT(api->servers[1].backup);
    ASSERT_STR_EQ(api->servers[2].host, "::1");
    ASSERT_STR_EQ(api->servers[2].name, "[::1]:8443");
    ASSERT_EQ(api->servers[2].port, 8443);
    ASSERT_EQ(api->servers[2].weight, 1000);
    ASSERT(api->servers[2].tls && !api->servers[2].backup);
    ASSERT_EQ(api->balance, CONF_BALANCE_ROUND_ROBIN);
    ASSERT_EQ(api->keepalive, 10);
    ASSERT_EQ(api->keepalive_timeout_ms, 30000);
    ASSERT_EQ(api->connect_timeout_ms, 250);
    ASSERT_EQ(api->header_timeout_ms, 60000);
    ASSERT_EQ(api->idle_timeout_ms, 3600000);
    ASSERT_EQ(c->upstreams[1].balance, CONF_BALANCE_ROUND_ROBIN);
    ASSERT_EQ(c->upstreams[1].keepalive, 0);

    ASSERT_EQ(c->nservers, 2);
    const struct conf_server *s = &c->servers[0];
    ASSERT_EQ(s->pos.line, 22);
    ASSERT_EQ(s->nlistens, 2);
    ASSERT_STR_EQ(s->listens[0].text, "0.0.0.0:8080");
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&s->listens[0].addr;
    ASSERT_EQ(sin->sin_family, AF_INET);
    ASSERT_EQ(ntohs(sin->sin_port), 8080);
    ASSERT_EQ(sin->sin_addr.s_addr, htonl(INADDR_ANY));
    ASSERT(!s->listens[0].tls);
    ASSERT(s->listens[0].tls_cert == NULL);
    ASSERT_STR_EQ(s->listens[1].text, "0.0.0.0:8443");
    ASSERT(s->listens[1].tls);
    ASSERT_STR_EQ(s->listens[1].tls_cert, "/etc/s/site.crt");
    ASSERT_STR_EQ(s->listens[1].tls_key, "site.key");
    ASSERT_EQ(s->listens[1].pos.line, 24);
    ASSERT_EQ(s->nnames, 3);
    ASSERT_STR_EQ(s->names[0], "api.example.com");
    ASSERT_STR_EQ(s->names[1], "*.example.org");
    ASSERT_STR_EQ(s->names[2], "www.example.org");
    ASSERT_STR_EQ(s->process_time_header, "X-Took");
    ASSERT_EQ(s->client_header_timeout_ms, 5000);
    ASSERT_EQ(s->client_body_timeout_ms, 20000);
    ASSERT_EQ(s->keepalive_timeout_ms, 0);
    ASSERT_EQ(s->send_timeout_ms, 86400000);
    ASSERT_EQ(s->max_header_size, 32768);
    ASSERT_EQ(s->max_headers, 50);
    ASSERT_EQ(s->max_uri_size, 4096);
    ASSERT_EQ(s->max_body_size, 0);
    ASSERT(!s->via);

    /* longest prefix first */
    ASSERT_EQ(s->nroutes, 3);
    ASSERT_STR_EQ(s->routes[0].prefix, "/v1/chat");
    ASSERT_EQ(s->routes[0].prefix_len, 8);
    ASSERT_STR_EQ(s->routes[1].prefix, "/v1/");
    ASSERT_STR_EQ(s->routes[2].prefix, "/");
    const struct conf_route *chat = &s->routes[0];
    ASSERT(chat->upstream == &c->upstreams[0]);
    ASSERT(s->routes[2].upstream == &c->upstreams[1]);
    ASSERT(chat->runtime == NULL);
    ASSERT_EQ(chat->pos.line, 38);
    ASSERT_EQ(chat->nreq_ops, 3);
    ASSERT_STR_EQ(chat->req_ops[0].name, "Authorization");
    ASSERT_STR_EQ(chat->req_ops[0].value, "Bearer sk-123");
    ASSERT_STR_EQ(chat->req_ops[1].name, "Cookie");
    ASSERT(chat->req_ops[1].value == NULL);
    ASSERT_STR_EQ(chat->req_ops[2].name, "X-Empty");
    ASSERT_STR_EQ(chat->req_ops[2].value, "");
    ASSERT_EQ(chat->nresp_ops, 2);
    ASSERT_STR_EQ(chat->resp_ops[0].name, "Cache-Control");
    ASSERT_STR_EQ(chat->resp_ops[0].value, "no-store");
    ASSERT_STR_EQ(chat->resp_ops[1].name, "Server");
    ASSERT(chat->resp_ops[1].value == NULL);
    ASSERT_EQ(chat->websocket_idle_timeout_ms, 600000);
    ASSERT_EQ(s->routes[1].websocket_idle_timeout_ms, 300000);

    ASSERT(c->servers[1].process_time_header == NULL);
    ASSERT_EQ(c->servers[1].nnames, 0);
    conf_unref(c);
}

TEST(defaults)
{
    struct conf *c = load_ok(BASE);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    ASSERT_EQ(c->workers, cpus > 128 ? 128 : cpus);
    ASSERT_EQ(c->log_level, CONF_LOG_INFO);
    ASSERT_EQ(c->shutdown_timeout_ms, 30000);
    ASSERT_EQ(c->max_connections, 100000);
    ASSERT(c->admin_enabled);
    ASSERT_STR_EQ(c->admin_listen.text, "127.0.0.1:9901");
    ASSERT_EQ(c->admin_listen.addr.ss_family, AF_INET);
    ASSERT_EQ(ntohs(((struct sockaddr_in *)&c->admin_listen.addr)->sin_port), 9901);
    ASSERT_STR_EQ(c->admin_listen.pos.file, "(default)");
    ASSERT(c->admin_token == NULL);
    const struct conf_upstream *u = &c->upstreams[0];
    ASSERT_EQ(u->balance, CONF_BALANCE_P2C);
    ASSERT_EQ(u->retry.tries, 1);
    ASSERT_EQ(u->retry.on, CONF_RETRY_CONNECT);
    ASSERT_EQ(u->retry.backoff_base_ms, 100);
    ASSERT_EQ(u->retry.backoff_cap_ms, 2000);
    ASSERT_EQ(u->retry.body_max, 65536);
    ASSERT_EQ(u->retry.budget_pct, 20);
    ASSERT_EQ(u->retry.budget_min_per_s, 10);
    ASSERT(!u->breaker.enabled);
    ASSERT(u->health.path == NULL);
    ASSERT_EQ(u->max_fails, 1);
    ASSERT_EQ(u->fail_timeout_ms, 10000);
    ASSERT_EQ(u->keepalive, 64);
    ASSERT_EQ(u->keepalive_timeout_ms, 60000);
    ASSERT_EQ(u->connect_timeout_ms, 5000);
    ASSERT_EQ(u->header_timeout_ms, 60000);
    ASSERT_EQ(u->idle_timeout_ms, 60000);
    ASSERT_EQ(u->servers[0].weight, 1);
    const struct conf_server *s = &c->servers[0];
    ASSERT_EQ(s->nnames, 0);
    ASSERT_STR_EQ(s->process_time_header, "X-Process-Time");
    ASSERT_EQ(s->client_header_timeout_ms, 10000);
    ASSERT_EQ(s->client_body_timeout_ms, 30000);
    ASSERT_EQ(s->keepalive_timeout_ms, 75000);
    ASSERT_EQ(s->send_timeout_ms, 60000);
    ASSERT_EQ(s->max_header_size, 16384);
    ASSERT_EQ(s->max_headers, 100);
    ASSERT_EQ(s->max_uri_size, 8192);
    ASSERT_EQ(s->max_body_size, 10 << 20);
    ASSERT(s->via);
    ASSERT_EQ(s->routes[0].websocket_idle_timeout_ms, 300000);
    ASSERT_EQ(s->routes[0].nreq_ops, 0);
    ASSERT_EQ(s->routes[0].nresp_ops, 0);
    conf_unref(c);
}

TEST(embedded_default)
{
    struct conf *c = conf_load_string(conf_embedded_default, "(embedded)", stderr);
    ASSERT(c != NULL);
    ASSERT_EQ(c->workers, 1);
    ASSERT(c->admin_enabled);
    ASSERT_STR_EQ(c->admin_listen.text, "127.0.0.1:9901");
    ASSERT_EQ(c->nupstreams, 1);
    ASSERT_STR_EQ(c->upstreams[0].name, "demo");
    ASSERT_STR_EQ(c->upstreams[0].servers[0].name, "127.0.0.1:8081");
    ASSERT_EQ(c->nservers, 1);
    ASSERT_STR_EQ(c->servers[0].listens[0].text, "127.0.0.1:8080");
    ASSERT_STR_EQ(c->servers[0].routes[0].prefix, "/");
    ASSERT(c->servers[0].routes[0].upstream == &c->upstreams[0]);
    conf_unref(c);
}

/* The route of the first server with that prefix; fails the test if none. */
static const struct conf_route *route_named(const struct conf *c, const char *prefix)
{
    for (size_t i = 0; i < c->servers[0].nroutes; i++)
        if (strcmp(c->servers[0].routes[i].prefix, prefix) == 0)
            return &c->servers[0].routes[i];
    TEST_FAIL("no route %s", prefix);
}

TEST(demo_conf_file_loads)
{
    struct conf *c = conf_load_file("conf/sluice.conf", stderr);
    ASSERT(c != NULL);
    ASSERT_STR_EQ(c->servers[0].listens[0].text, "127.0.0.1:8080");
    ASSERT_STR_EQ(c->admin_listen.text, "127.0.0.1:9901");
    bool has_task = false, has_stream = false, has_root = false;
    for (size_t i = 0; i < c->servers[0].nroutes; i++) {
        const struct conf_route *r = &c->servers[0].routes[i];
        ASSERT_STR_EQ(r->upstream->servers[0].name, "127.0.0.1:8081");
        has_task |= strcmp(r->prefix, "/task/") == 0;
        has_stream |= strcmp(r->prefix, "/stream") == 0;
        has_root |= strcmp(r->prefix, "/") == 0;
    }
    ASSERT(has_task && has_stream && has_root);
    ASSERT_EQ(c->ncaches, 1);
    ASSERT_STR_EQ(c->caches[0].name, "main");
    const struct conf_route *hello = route_named(c, "/hello"), *task = route_named(c, "/task/");
    /* plain RFC 9111 caching */
    ASSERT(hello->cache != NULL && hello->cache->cache == &c->caches[0]);
    ASSERT(!hello->cache->has_ttl && hello->cache->ttl_json_path == NULL && hello->cache->nttl_status == 0);
    ASSERT_STR_EQ(task->cache->ttl_json_path, "data.status");
    ASSERT_EQ(task->cache->nttl_json_values, 3);
    ASSERT_STR_EQ(task->cache->ttl_json_values[0].value, "completed");
    ASSERT_EQ(task->cache->ttl_json_values[0].ttl_ms, 3600000);
    ASSERT_GT(task->cache->stale_while_revalidate_ms, 0);
    ASSERT_GT(task->cache->stale_if_error_ms, 0);
    ASSERT(route_named(c, "/stream")->cache == NULL);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(workers_auto_and_admin_off)
{
    struct conf *c = load_ok("workers auto;\nadmin off;\n" BASE);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    ASSERT_EQ(c->workers, cpus > 128 ? 128 : cpus);
    ASSERT(!c->admin_enabled);
    assert_round_trip(c);
    conf_unref(c);
    c = load_ok("admin on;\n" BASE);
    ASSERT(c->admin_enabled);
    conf_unref(c);
    c = load_ok("admin { }\n" BASE);
    ASSERT(c->admin_enabled);
    ASSERT_STR_EQ(c->admin_listen.text, "127.0.0.1:9901");
    conf_unref(c);
}

TEST(listen_address_forms)
{
    struct conf *c = load_ok(BASE "server {\n"
                                  "    listen 81;\n"
                                  "    listen *:82;\n"
                                  "    listen 10.1.2.3:83;\n"
                                  "    listen [::]:84;\n"
                                  "    listen [0:0:0:0:0:0:0:1]:65535;\n"
                                  "}\n");
    const struct conf_server *s = &c->servers[1];
    ASSERT_EQ(s->nlistens, 5);
    ASSERT_STR_EQ(s->listens[0].text, "0.0.0.0:81");
    ASSERT_STR_EQ(s->listens[1].text, "0.0.0.0:82");
    ASSERT_STR_EQ(s->listens[2].text, "10.1.2.3:83");
    const struct sockaddr_in *a = (const struct sockaddr_in *)&s->listens[2].addr;
    ASSERT_EQ(a->sin_addr.s_addr, htonl(0x0a010203));
    ASSERT_EQ(s->listens[2].addrlen, sizeof(struct sockaddr_in));
    ASSERT_STR_EQ(s->listens[3].text, "[::]:84");
    ASSERT_EQ(s->listens[3].addr.ss_family, AF_INET6);
    /* normalised */
    ASSERT_STR_EQ(s->listens[4].text, "[::1]:65535");
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&s->listens[4].addr;
    ASSERT(IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr));
    ASSERT_EQ(ntohs(a6->sin6_port), 65535);
    conf_unref(c);
}

TEST(upstream_server_host_forms)
{
    struct conf *c = load_ok("upstream u {\n"
                             "    server api.openai.com:443 tls;\n"
                             "    server my_host-1:80;\n"
                             "    server 192.168.0.1:1;\n"
                             "    server [2001:db8::1]:8080;\n"
                             "    server localhost:80 weight=7 backup tls;\n"
                             "}\n"
                             "server { listen 8080; route / { upstream u; } }\n");
    const struct conf_upstream *u = &c->upstreams[0];
    ASSERT_EQ(u->nservers, 5);
    ASSERT_STR_EQ(u->servers[0].host, "api.openai.com");
    ASSERT_EQ(u->servers[0].port, 443);
    ASSERT(u->servers[0].tls);
    ASSERT_STR_EQ(u->servers[1].name, "my_host-1:80");
    ASSERT_STR_EQ(u->servers[2].host, "192.168.0.1");
    ASSERT_STR_EQ(u->servers[3].host, "2001:db8::1");
    ASSERT_STR_EQ(u->servers[3].name, "[2001:db8::1]:8080");
    ASSERT_EQ(u->servers[4].weight, 7);
    ASSERT(u->servers[4].backup && u->servers[4].tls);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(upstream_tls_directives)
{
    struct conf *c = load_ok("upstream u {\n"
                             "    server 127.0.0.1:443 tls;\n"
                             "    tls_verify off; tls_ca ca.pem; tls_cert /abs/c.pem; tls_key k.pem;\n"
                             "    tls_sni api.example.com;\n"
                             "}\n"
                             "upstream d { server a.example:443 tls; }\n"
                             "server { listen 8080; route / { upstream u; } route /d { upstream d; } }\n");
    const struct conf_upstream *u = &c->upstreams[0], *d = &c->upstreams[1];
    ASSERT(!u->tls_verify);
    ASSERT_STR_EQ(u->tls_ca, "ca.pem");
    ASSERT_STR_EQ(u->tls_cert, "/abs/c.pem");
    ASSERT_STR_EQ(u->tls_key, "k.pem");
    ASSERT_STR_EQ(u->tls_sni, "api.example.com");
    ASSERT(d->tls_verify);
    ASSERT(d->tls_ca == NULL && d->tls_cert == NULL && d->tls_key == NULL && d->tls_sni == NULL);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(upstream_tls_errors)
{
    static const struct error_case cases[] = {
        {"upstream u { server 127.0.0.1:443 tls; tls_cert c.pem; }\nserver { listen 8080; route / { upstream u; } }\n",
         "t.conf:1: upstream \"u\": tls_cert and tls_key go together\n"},
        {"upstream u { server 127.0.0.1:443 tls; tls_sni \"a b\"; }\nserver { listen 8080; route / { upstream u; } }\n",
         "t.conf:1: tls_sni: invalid host name \"a b\"\n"},
        {"upstream u { server 127.0.0.1:443 tls; tls_verify maybe; }\nserver { listen 8080; route / { upstream u; } }\n",
         "t.conf:1: tls_verify: invalid value \"maybe\" (expected off or on)\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(virtual_hosts_share_an_address)
{
    struct conf *c =
        load_ok(BASE "server { listen 127.0.0.1:8080; server_name a.example; route / { upstream u; } }\n"
                     "server { listen 127.0.0.1:8080; server_name b.example *.a.example; }\n");
    ASSERT_EQ(c->nservers, 3);
    conf_unref(c);
}

TEST(routes_sorted_longest_first)
{
    struct conf *c = load_ok("upstream u { server 127.0.0.1:81; }\n"
                             "server {\n"
                             "    listen 8080;\n"
                             "    route / { upstream u; }\n"
                             "    route /b { upstream u; }\n"
                             "    route /aaa/bbb { upstream u; }\n"
                             "    route /a { upstream u; }\n"
                             "    route /aaa/ { upstream u; }\n"
                             "}\n");
    const struct conf_server *s = &c->servers[0];
    const char *want[] = {"/aaa/bbb", "/aaa/", "/a", "/b", "/"};
    ASSERT_EQ(s->nroutes, 5);
    for (size_t i = 0; i < 5; i++)
        ASSERT_STR_EQ(s->routes[i].prefix, want[i]);
    ASSERT_EQ(s->routes[2].pos.line, 7);
    conf_unref(c);
}

TEST(upstream_defined_after_use)
{
    struct conf *c = load_ok("server { listen 8080; route / { upstream later; } }\n"
                             "upstream later { server 127.0.0.1:81; }\n"
                             "upstream unused { server 127.0.0.1:82; }\n");
    ASSERT(c->servers[0].routes[0].upstream == &c->upstreams[0]);
    ASSERT_STR_EQ(c->servers[0].routes[0].upstream->name, "later");
    conf_unref(c);
}

/* --- lexical details --- */

TEST(comments_quotes_and_line_endings)
{
    struct conf *c = load_ok("# a comment line\r\n"
                             "workers 3; # trailing comment\r\n"
                             "upstream u { server 127.0.0.1:81; }\r\n"
                             "server {\r\n"
                             "\tlisten 8080 tls cert=\"/my dir/a.pem\" \"key=\"/k.pem;\r\n"
                             "    route /ab { upstream u; set_header X-Q \"say \\\"hi\\\" \\\\ \\$HOME "
                             "\\${}\"; set_header X-H a#b; }\n"
                             "    route \"/x\"/y\"\" { upstream u; set_header X \"multi\tline\"; }\n"
                             "}\n");
    ASSERT_EQ(c->workers, 3);
    const struct conf_server *s = &c->servers[0];
    ASSERT_STR_EQ(s->listens[0].tls_cert, "/my dir/a.pem");
    ASSERT_STR_EQ(s->listens[0].tls_key, "/k.pem");
    ASSERT_STR_EQ(s->routes[0].prefix, "/x/y");
    ASSERT_STR_EQ(s->routes[0].req_ops[0].value, "multi\tline");
    ASSERT_STR_EQ(s->routes[1].prefix, "/ab");
    ASSERT_EQ(s->routes[1].pos.line, 6);
    ASSERT_STR_EQ(s->routes[1].req_ops[0].value, "say \"hi\" \\ $HOME ${}");
    ASSERT_STR_EQ(s->routes[1].req_ops[1].value, "a#b");
    assert_round_trip(c);
    conf_unref(c);
}

TEST(quoted_specials_are_plain_text)
{
    /* quoted ";" "{" "}" "#" are text; a variable's value is never expanded again */
    setenv("SLUICE_TEST_DOLLAR", "${NOT_EXPANDED}", 1);
    struct conf *c = load_ok(BASE "server { listen 9000; route /q { upstream u;\n"
                                  "    set_response_header X-Set \";{}#\";\n"
                                  "    set_header X-Dollar \"${SLUICE_TEST_DOLLAR}\"; } }\n");
    const struct conf_route *r = &c->servers[1].routes[0];
    ASSERT_STR_EQ(r->resp_ops[0].value, ";{}#");
    ASSERT_STR_EQ(r->req_ops[0].value, "${NOT_EXPANDED}");
    assert_round_trip(c);
    conf_unref(c);
}

TEST(env_substitution)
{
    setenv("SLUICE_TEST_PORT", "8123", 1);
    setenv("SLUICE_TEST_HOST", "127.0.0.1", 1);
    setenv("SLUICE_TEST_EMPTY", "", 1);
    struct conf *c = load_ok("upstream u { server ${SLUICE_TEST_HOST}:${SLUICE_TEST_PORT}; }\n"
                             "server { listen 1${SLUICE_TEST_PORT}${SLUICE_TEST_EMPTY};\n"
                             "  route / { upstream u; set_header X \"a${SLUICE_TEST_EMPTY}b\"; } }\n");
    ASSERT_STR_EQ(c->upstreams[0].servers[0].name, "127.0.0.1:8123");
    ASSERT_STR_EQ(c->servers[0].listens[0].text, "0.0.0.0:18123");
    conf_unref(c);
}

TEST(env_unset_and_malformed)
{
    unsetenv("SLUICE_TEST_UNSET");
    static const struct error_case cases[] = {
        {BASE "workers ${SLUICE_TEST_UNSET};\n",
         "t.conf:3: environment variable SLUICE_TEST_UNSET is not set\n"},
        {BASE "admin { token \"Bearer-${SLUICE_TEST_UNSET}\"; }\n",
         "t.conf:3: environment variable SLUICE_TEST_UNSET is not set\n"},
        {BASE "workers ${1X};\n", "t.conf:3: invalid variable reference (expected ${NAME})\n"},
        {BASE "workers ${X;\n", "t.conf:3: invalid variable reference (expected ${NAME})\n"},
        {BASE "workers ${};\n", "t.conf:3: invalid variable reference (expected ${NAME})\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(env_in_upstream_name_reported_once)
{
    unsetenv("SLUICE_TEST_UNSET");
    /* the route's upstream directive is dropped, not reported again as missing */
    ASSERT_ERRORS("upstream u { server 127.0.0.1:81; }\n"
                  "server { listen 80; route / {\n"
                  "    upstream ${SLUICE_TEST_UNSET}; } }\n",
                  "t.conf:3: environment variable SLUICE_TEST_UNSET is not set\n");
}

TEST(syntax_errors)
{
    static const struct error_case cases[] = {
        {BASE "workers 2", "t.conf:3: directive \"workers\" is not terminated by \";\"\n"},
        {BASE "}\n", "t.conf:3: unexpected \"}\"\n"},
        {BASE "\n;\n", "t.conf:4: unexpected \";\"\n"},
        {BASE "{ workers 1; }\n", "t.conf:3: unexpected \"{\"\n"},
        {BASE "server {\n    listen 9000;\n", "t.conf:3: block \"server\" is not closed (missing \"}\")\n"},
        {BASE "workers \"1;\n\n", "t.conf:3: unterminated string\n"},
        {BASE "server { listen 9000; route / { upstream \"u; } }\n", "t.conf:3: unterminated string\n"},
        {BASE "error_log stderr \"inf\\o\";\n",
         "t.conf:3: invalid escape in string (use \\\" \\\\ or \\$)\n"},
        {BASE "workers\x01 2;\n", "t.conf:3: invalid character 0x01\n"},
        {BASE "workers 2; \x7f\x02\n", "t.conf:3: invalid character 0x7f\n"},
        {BASE "server { listen 9000; route /x { upstream u; set_header A \"x\x02\"; } }\n",
         "t.conf:3: invalid character 0x02\n"},
        {BASE "server { listen 9000 route / { upstream u; } }\n",
         "t.conf:3: directive \"listen\" does not take a block\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(nul_byte_in_file)
{
    make_tmpdir();
    char *path = tmp_path("nul.conf");
    FILE *f = fopen(path, "w");
    fputs(BASE "workers 2;", f);
    fputc('\0', f);
    fputs("\n", f);
    fclose(f);
    assert_file_errors(path, format("%s:3: invalid character 0x00\n", path));
    free(path);
    remove_tmpdir();
}

TEST(directive_errors)
{
    static const struct error_case cases[] = {
        {BASE "frobnicate 1;\n", "t.conf:3: unknown directive \"frobnicate\"\n"},
        {BASE "listen 80;\n", "t.conf:3: directive \"listen\" is not allowed here\n"},
        {BASE "upstream v { server 1.2.3.4:80; workers 2; }\n",
         "t.conf:3: directive \"workers\" is not allowed here\n"},
        {BASE "server { listen 9000; balance p2c; }\n",
         "t.conf:3: directive \"balance\" is not allowed here\n"},
        {BASE "admin { via on; }\n", "t.conf:3: directive \"via\" is not allowed here\n"},
        {BASE "server { listen 9000; route /a { upstream u; route /b { upstream u; } } }\n",
         "t.conf:3: directive \"route\" is not allowed here\n"},
        {BASE "workers 1 2;\n", "t.conf:3: directive \"workers\" takes 1 argument, got 2\n"},
        {BASE "workers;\n", "t.conf:3: directive \"workers\" takes 1 argument, got 0\n"},
        {BASE "error_log stderr;\n", "t.conf:3: directive \"error_log\" takes 2 arguments, got 1\n"},
        {BASE "server { listen 9000; server_name; }\n",
         "t.conf:3: directive \"server_name\" takes at least 1 argument, got 0\n"},
        {BASE "upstream v { server 1.2.3.4:80 a b c d; }\n",
         "t.conf:3: directive \"server\" takes 1 to 4 arguments, got 5\n"},
        {BASE "workers 1 { }\n", "t.conf:3: directive \"workers\" does not take a block\n"},
        {BASE "server { listen 9000; route /x; }\n", "t.conf:3: directive \"route\" needs a block\n"},
        {BASE "upstream v;\n", "t.conf:3: directive \"upstream\" needs a block\n"},
        {BASE "workers 1;\nworkers 2;\n",
         "t.conf:4: directive \"workers\" is repeated (first at t.conf:3)\n"},
        {BASE "server { listen 9000; route /x { upstream u;\nupstream u; } }\n",
         "t.conf:4: directive \"upstream\" is repeated (first at t.conf:3)\n"},
        {BASE "include a b;\n", "t.conf:3: directive \"include\" takes 1 argument, got 2\n"},
        {BASE "include x { }\n", "t.conf:3: directive \"include\" does not take a block\n"},
        {BASE "admin off { }\n", "t.conf:3: admin: expected \"admin { ... }\" or \"admin off;\"\n"},
        {BASE "admin;\n", "t.conf:3: admin: expected \"admin { ... }\" or \"admin off;\"\n"},
        {BASE "admin maybe;\n", "t.conf:3: admin: invalid value \"maybe\" (expected off or on)\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(value_errors)
{
    static const struct error_case cases[] = {
        {BASE "workers 0;\n", "t.conf:3: workers: 0 is out of range (1..128)\n"},
        {BASE "workers 129;\n", "t.conf:3: workers: 129 is out of range (1..128)\n"},
        {BASE "workers x;\n", "t.conf:3: workers: invalid number \"x\": expected a number\n"},
        {BASE "workers -1;\n", "t.conf:3: workers: invalid number \"-1\": expected a number\n"},
        {BASE "workers 2k;\n", "t.conf:3: workers: invalid number \"2k\": expected a number\n"},
        {BASE "max_connections 0;\n", "t.conf:3: max_connections: 0 is out of range (1..10000000)\n"},
        {BASE "max_connections 99999999999999999999999;\n",
         "t.conf:3: max_connections: invalid number \"99999999999999999999999\": too large\n"},
        {BASE "error_log stderr loud;\n",
         "t.conf:3: error_log: invalid value \"loud\" (expected error, warn, info or debug)\n"},
        {BASE "error_log /var/log/x info;\n",
         "t.conf:3: error_log: only stderr is supported for now, not \"/var/log/x\"\n"},
        {BASE "upstream v { server 1.2.3.4:80; balance random; }\n",
         "t.conf:3: balance: invalid value \"random\" (expected round_robin, least_conn or p2c)\n"},
        {BASE "upstream v { server 1.2.3.4:80; keepalive 10001; }\n",
         "t.conf:3: keepalive: 10001 is out of range (0..10000)\n"},
        {BASE "server { listen 9000; via yes; }\n",
         "t.conf:3: via: invalid value \"yes\" (expected off or on)\n"},
        {BASE "server { listen 9000; max_headers 0; }\n",
         "t.conf:3: max_headers: 0 is out of range (1..10000)\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(durations)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } ok[] = {
        {"0s", 0},        {"0ms", 0},     {"250ms", 250},       {"1s", 1000},
        {"10s", 10000},   {"5m", 300000}, {"1h", 3600000},      {"1d", 86400000},
        {"1500ms", 1500}, {"007s", 7000}, {"86400s", 86400000},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "shutdown_timeout %s;\n" BASE, ok[i].text);
        struct conf *c = load_ok(text);
        ASSERT_EQ(c->shutdown_timeout_ms, ok[i].ms);
        conf_unref(c);
    }
    static const struct error_case bad[] = {
        {BASE "shutdown_timeout 10;\n",
         "t.conf:3: shutdown_timeout: invalid duration \"10\": a unit is required: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout 0;\n",
         "t.conf:3: shutdown_timeout: invalid duration \"0\": a unit is required: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout 10x;\n", "t.conf:3: shutdown_timeout: invalid duration \"10x\": expected a "
                                         "number and a unit: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout 10S;\n", "t.conf:3: shutdown_timeout: invalid duration \"10S\": expected a "
                                         "number and a unit: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout 1h30m;\n", "t.conf:3: shutdown_timeout: invalid duration \"1h30m\": expected "
                                           "a number and a unit: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout -5s;\n", "t.conf:3: shutdown_timeout: invalid duration \"-5s\": expected a "
                                         "number and a unit: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout s;\n", "t.conf:3: shutdown_timeout: invalid duration \"s\": expected a "
                                       "number and a unit: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout \"\";\n", "t.conf:3: shutdown_timeout: invalid duration \"\": expected a "
                                          "number and a unit: ms, s, m, h or d\n"},
        {BASE "shutdown_timeout 18446744073709551616ms;\n",
         "t.conf:3: shutdown_timeout: invalid duration \"18446744073709551616ms\": too large\n"},
        {BASE "shutdown_timeout 213503982335d;\n",
         "t.conf:3: shutdown_timeout: invalid duration \"213503982335d\": too large\n"},
        {BASE "shutdown_timeout 2d;\n", "t.conf:3: shutdown_timeout: 2d is out of range (0s..1d)\n"},
        {BASE "shutdown_timeout 86401s;\n", "t.conf:3: shutdown_timeout: 86401s is out of range (0s..1d)\n"},
        {BASE "upstream v { server 1.2.3.4:80; connect_timeout 0s; }\n",
         "t.conf:3: connect_timeout: 0s is out of range (1ms..1d)\n"},
        {BASE "server { listen 9000; route /x { upstream u; websocket_idle_timeout 8d; } }\n",
         "t.conf:3: websocket_idle_timeout: 8d is out of range (1ms..7d)\n"},
    };
    CHECK_ERROR_CASES(bad);
}

TEST(sizes)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } ok[] = {
        {"0", 0},
        {"512", 512},
        {"64k", 65536},
        {"64K", 65536},
        {"8m", 8 << 20},
        {"1g", 1ull << 30},
        {"1G", 1ull << 30},
        {"16777216g", 1ull << 54},
        {"17179869183g", 17179869183ull << 30},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), BASE "server { listen 9000; max_body_size %s; }\n", ok[i].text);
        struct conf *c = load_ok(text);
        ASSERT_EQ(c->servers[1].max_body_size, ok[i].bytes);
        assert_round_trip(c);
        conf_unref(c);
    }
    static const struct error_case bad[] = {
        {BASE "server { listen 9000; max_body_size 17179869184g; }\n",
         "t.conf:3: max_body_size: invalid size \"17179869184g\": too large\n"},
        {BASE "server { listen 9000; max_body_size 18446744073709551616; }\n",
         "t.conf:3: max_body_size: invalid size \"18446744073709551616\": too large\n"},
        {BASE "server { listen 9000; max_body_size 1x; }\n",
         "t.conf:3: max_body_size: invalid size \"1x\": expected a number with an optional k, m or g "
         "suffix\n"},
        {BASE "server { listen 9000; max_body_size 1kb; }\n",
         "t.conf:3: max_body_size: invalid size \"1kb\": expected a number with an optional k, m or g "
         "suffix\n"},
        {BASE "server { listen 9000; max_body_size -1; }\n",
         "t.conf:3: max_body_size: invalid size \"-1\": expected a number with an optional k, m or g "
         "suffix\n"},
        {BASE "server { listen 9000; max_body_size k; }\n",
         "t.conf:3: max_body_size: invalid size \"k\": expected a number with an optional k, m or g "
         "suffix\n"},
        {BASE "server { listen 9000; max_header_size 512; }\n",
         "t.conf:3: max_header_size: 512 is out of range (1k..1m)\n"},
        {BASE "server { listen 9000; max_header_size 1025k; }\n",
         "t.conf:3: max_header_size: 1025k is out of range (1k..1m)\n"},
        {BASE "server { listen 9000; max_uri_size 100; }\n",
         "t.conf:3: max_uri_size: 100 is out of range (256..1m)\n"},
    };
    CHECK_ERROR_CASES(bad);
}

TEST(admin_errors)
{
    static const struct error_case cases[] = {
        {BASE "admin { listen localhost:1; }\n", "t.conf:3: listen: invalid address \"localhost:1\" "
                                                 "(expected IPv4:PORT, [IPv6]:PORT, *:PORT or PORT)\n"},
        {BASE "admin { listen 127.0.0.1:0; }\n",
         "t.conf:3: listen: invalid port in \"127.0.0.1:0\" (1..65535)\n"},
        {BASE "admin { token \"a b\"; }\n", "t.conf:3: token: must be printable ASCII without spaces\n"},
        {BASE "admin { token \"\"; }\n", "t.conf:3: token: must be printable ASCII without spaces\n"},
        {"admin { listen 127.0.0.1:8080; }\n" BASE,
         "t.conf:3: listen 127.0.0.1:8080 is also the admin listen address\n"},
    };
    CHECK_ERROR_CASES(cases);
    /* the same address is fine once the admin endpoint is off */
    conf_unref(load_ok("admin off;\n"
                       "upstream u { server 127.0.0.1:81; }\n"
                       "server { listen 127.0.0.1:9901; route / { upstream u; } }\n"));
}

TEST(upstream_errors)
{
    static const struct error_case cases[] = {
        {BASE "upstream v { }\n", "t.conf:3: upstream \"v\" has no server\n"},
        {BASE "upstream v { keepalive 1; }\n", "t.conf:3: upstream \"v\" has no server\n"},
        {BASE "upstream v { server 1.2.3.4:80 backup; }\n",
         "t.conf:3: upstream \"v\" has only backup servers\n"},
        {BASE "upstream \"a b\" { server 1.2.3.4:80; }\n",
         "t.conf:3: upstream: invalid name \"a b\" (letters, digits, \"_\", \"-\" and \".\")\n"},
        {BASE "upstream u { server 1.2.3.4:80; }\n",
         "t.conf:3: upstream \"u\" is repeated (first at t.conf:1)\n"},
        {BASE "upstream v { server 1.2.3.4:80;\nserver 1.2.3.4:80 weight=3; }\n",
         "t.conf:4: server \"1.2.3.4:80\" is repeated (first at t.conf:3)\n"},
        {BASE "upstream v { server 1.2.3.4:80 weight=0; }\n",
         "t.conf:3: server weight: 0 is out of range (1..1000)\n"},
        {BASE "upstream v { server 1.2.3.4:80 weight=x; server 1.2.3.5:80; }\n",
         "t.conf:3: server weight: invalid number \"x\": expected a number\n"},
        {BASE "upstream v { server 1.2.3.4:80 fast; server 1.2.3.5:80; }\n",
         "t.conf:3: server: unknown parameter \"fast\"\n"},
    };
    CHECK_ERROR_CASES(cases);
    static const char *const bad_addrs[] = {
        "1.2.3.4",  "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:x",   "300.1.1.1:80", "1.2.3:80",   "::1:80",
        "[::g]:80", "[::1]80",   "[]:80",         "bad!host:80", ":80",          "\"a b:80\"",
    };
    for (size_t i = 0; i < sizeof(bad_addrs) / sizeof(bad_addrs[0]); i++) {
        char text[512], want[256];
        snprintf(text, sizeof(text), BASE "upstream v { server %s; server 1.2.3.5:80; }\n", bad_addrs[i]);
        const char *shown = bad_addrs[i][0] == '"' ? "a b:80" : bad_addrs[i];
        snprintf(want, sizeof(want),
                 "t.conf:3: server: invalid address \"%s\" (expected HOST:PORT or [IPv6]:PORT)\n", shown);
        ASSERT_ERRORS(text, want);
    }
}

TEST(server_errors)
{
    static const struct error_case cases[] = {
        {BASE "server { route / { upstream u; } }\n", "t.conf:3: server has no listen\n"},
        {BASE "server { listen 1.2.3.4; }\n",
         "t.conf:3: listen: invalid address \"1.2.3.4\" (expected IPv4:PORT, [IPv6]:PORT, *:PORT or PORT)\n"},
        {BASE "server { listen host:80; }\n",
         "t.conf:3: listen: invalid address \"host:80\" (expected IPv4:PORT, [IPv6]:PORT, *:PORT or PORT)\n"},
        {BASE "server { listen [::1:80; }\n",
         "t.conf:3: listen: invalid address \"[::1:80\" (expected IPv4:PORT, [IPv6]:PORT, *:PORT or PORT)\n"},
        {BASE "server { listen 1.2.3.4:99999; }\n",
         "t.conf:3: listen: invalid port in \"1.2.3.4:99999\" (1..65535)\n"},
        {BASE "server { listen 0; }\n",
         "t.conf:3: listen: invalid address \"0\" (expected IPv4:PORT, [IPv6]:PORT, *:PORT or PORT)\n"},
        {BASE "server { listen 8443 tls; }\n", "t.conf:3: listen: tls needs cert=FILE and key=FILE\n"},
        {BASE "server { listen 8443 tls cert=a key=; }\n",
         "t.conf:3: listen: tls needs cert=FILE and key=FILE\n"},
        {BASE "server { listen 8443 cert=a key=b; }\n", "t.conf:3: listen: cert= and key= need tls\n"},
        {BASE "server { listen 80 http2; }\n", "t.conf:3: listen: unknown parameter \"http2\"\n"},
        {BASE "server { listen 80;\nlisten 0.0.0.0:80; }\n",
         "t.conf:4: listen \"0.0.0.0:80\" is repeated (first at t.conf:3)\n"},
        {BASE "server { listen 80; server_name a*b.com; }\n",
         "t.conf:3: server_name: invalid name \"a*b.com\"\n"},
        {BASE "server { listen 80; server_name \"\"; }\n", "t.conf:3: server_name: invalid name \"\"\n"},
        {BASE "server { listen 80; server_name a..b; }\n", "t.conf:3: server_name: invalid name \"a..b\"\n"},
        {BASE "server { listen 80; server_name *; }\n", "t.conf:3: server_name: invalid name \"*\"\n"},
        {BASE "server { listen 80; server_name a.com\nA.COM; }\n",
         "t.conf:3: server_name \"a.com\" is repeated in this server\n"},
        {BASE "server { listen 80; process_time_header \"X Took\"; }\n",
         "t.conf:3: process_time_header: invalid header name \"X Took\"\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(route_errors)
{
    static const struct error_case cases[] = {
        {BASE "server { listen 80; route x { upstream u; } }\n",
         "t.conf:3: route: invalid prefix \"x\" (must start with \"/\"; no spaces, \"?\" or \"#\")\n"},
        {BASE "server { listen 80; route \"/a b\" { upstream u; } }\n",
         "t.conf:3: route: invalid prefix \"/a b\" (must start with \"/\"; no spaces, \"?\" or \"#\")\n"},
        {BASE "server { listen 80; route /a?b { upstream u; } }\n",
         "t.conf:3: route: invalid prefix \"/a?b\" (must start with \"/\"; no spaces, \"?\" or \"#\")\n"},
        {BASE "server { listen 80; route /a { } }\n", "t.conf:3: route \"/a\" has no upstream\n"},
        {BASE "server { listen 80; route /a { upstream nope; } }\n", "t.conf:3: unknown upstream \"nope\"\n"},
        {BASE "server { listen 80;\nroute /a { upstream u; }\nroute /a { upstream u; } }\n",
         "t.conf:5: route \"/a\" is repeated (first at t.conf:4)\n"},
        {BASE "server { listen 80; route /a { upstream u; set_header \"Bad Name\" x; } }\n",
         "t.conf:3: set_header: invalid header name \"Bad Name\"\n"},
        {BASE "server { listen 80; route /a { upstream u; set_header X: x; } }\n",
         "t.conf:3: set_header: invalid header name \"X:\"\n"},
        {BASE "server { listen 80; route /a { upstream u; remove_response_header \"\"; } }\n",
         "t.conf:3: remove_response_header: invalid header name \"\"\n"},
        {BASE "server { listen 80; route /a { upstream u; set_header X \"a\nb\"; } }\n",
         "t.conf:3: set_header: the value of X has a control character (CR, LF...)\n"},
        {BASE "server { listen 80; route /a { upstream u; set_response_header X \"a\rb\"; } }\n",
         "t.conf:3: set_response_header: the value of X has a control character (CR, LF...)\n"},
        {BASE "server { listen 80; route /a { upstream u; remove_header; } }\n",
         "t.conf:3: directive \"remove_header\" takes 1 argument, got 0\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(header_value_from_env_checked)
{
    setenv("SLUICE_TEST_CRLF", "a\r\nInjected: 1", 1);
    ASSERT_ERRORS(BASE
                  "server { listen 80; route /a { upstream u; set_header X \"${SLUICE_TEST_CRLF}\"; } }\n",
                  "t.conf:3: set_header: the value of X has a control character (CR, LF...)\n");
}

TEST(semantic_errors)
{
    static const struct error_case cases[] = {
        {"upstream u { server 127.0.0.1:81; }\n", "t.conf: no server block\n"},
        {"", "t.conf: no server block\n"},
        {BASE "server { listen 127.0.0.1:8080; }\n", "t.conf:3: listen 127.0.0.1:8080 is used by two servers "
                                                     "without server_name (the other at t.conf:2)\n"},
        {BASE "server { listen 127.0.0.1:8080; server_name a.com; }\n"
              "server { listen 127.0.0.1:8080; server_name b.com A.com; }\n",
         "t.conf:4: server_name \"a.com\" on 127.0.0.1:8080 is already used by the server at t.conf:3\n"},
        {BASE "server { listen 127.0.0.1:8080 tls cert=c key=k; server_name a.com; }\n",
         "t.conf:3: listen 127.0.0.1:8080 is tls here but plain at t.conf:2\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST(many_errors_in_one_run)
{
    ASSERT_ERRORS(
        "workers 0;\n"
        "bogus;\n"
        "upstream a { server nohost; }\n"
        "server {\n"
        "    listen 80;\n"
        "    max_body_size 1x;\n"
        "    route /x { upstream missing; }\n"
        "    route y { upstream a; }\n"
        "}\n"
        "cache main { memory 1k; }\n"
        "limit main { rate 1/x; }\n",
        /* upstream, cache and limit blocks are applied first, so routes can name any of them */
        "t.conf:3: server: invalid address \"nohost\" (expected HOST:PORT or [IPv6]:PORT)\n"
        "t.conf:10: memory: 1k is out of range (1m..1024g)\n"
        "t.conf:11: rate: invalid period \"x\" (expected s, m, h or d)\n"
        "t.conf:1: workers: 0 is out of range (1..128)\n"
        "t.conf:2: unknown directive \"bogus\"\n"
        "t.conf:6: max_body_size: invalid size \"1x\": expected a number with an optional k, m or g suffix\n"
        "t.conf:7: unknown upstream \"missing\"\n"
        "t.conf:8: route: invalid prefix \"y\" (must start with \"/\"; no spaces, \"?\" or \"#\")\n");
}

TEST(error_output_is_capped)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fputs(BASE, f);
    for (int i = 0; i < 150; i++)
        fputs("bogus;\n", f);
    fclose(f);
    char *err = NULL;
    ASSERT(load(text, &err) == NULL);
    int lines = 0;
    for (const char *p = err; *p; p++)
        lines += *p == '\n';
    ASSERT_EQ(lines, 101);
    ASSERT_CONTAINS(err, "t.conf:102: unknown directive \"bogus\"\n");
    ASSERT(strstr(err, "t.conf:103:") == NULL);
    ASSERT_CONTAINS(err, "t.conf: 50 more errors not shown\n");
    free(err);
    free(text);
}

TEST(err_may_be_null)
{
    ASSERT(conf_load_string("bogus;", "t.conf", NULL) == NULL);
}

/* --- bounds --- */

TEST(word_longer_than_64k)
{
    size_t n = 64 * 1024 + 1;
    char *text = malloc(n + 256);
    int off = sprintf(text, BASE "server { listen 80; server_name ");
    memset(text + off, 'a', n);
    strcpy(text + off + n, "; }\n");
    ASSERT_ERRORS(text, "t.conf:3: word is longer than 64 KiB\n");
    /* exactly 64 KiB is a word like any other: here an invalid name, reported in full */
    memset(text + off, 'a', n);
    text[off + n - 2] = '*';
    strcpy(text + off + n - 1, "; }\n");
    char *err = NULL;
    ASSERT(load(text, &err) == NULL);
    ASSERT_CONTAINS(err, "t.conf:3: server_name: invalid name \"aaaa");
    free(err);
    free(text);
}

TEST(blocks_nested_too_deep)
{
    char text[1024];
    strcpy(text, BASE);
    for (int i = 0; i < 17; i++)
        strcat(text, "a {\n");
    for (int i = 0; i < 17; i++)
        strcat(text, "}\n");
    ASSERT_ERRORS(text,
                  "t.conf:19: blocks are nested more than 16 deep\nt.conf:3: unknown directive \"a\"\n");
    /* 16 is fine for the parser */
    strcpy(text, BASE);
    for (int i = 0; i < 16; i++)
        strcat(text, "a {\n");
    for (int i = 0; i < 16; i++)
        strcat(text, "}\n");
    ASSERT_ERRORS(text, "t.conf:3: unknown directive \"a\"\n");
}

TEST(too_many_words)
{
    size_t n = 1000001;
    char *text = malloc(n * 2 + 64);
    char *p = text;
    for (size_t i = 0; i < n; i++) {
        *p++ = 'a';
        *p++ = i % 1000 == 999 ? '\n' : ' ';
    }
    *p = '\0';
    ASSERT_ERRORS(text, "t.conf:1001: the configuration has more than 1000000 words\n");
    free(text);
}

TEST(listen_name_combinations_bounded)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fputs(BASE "server {\n", f);
    for (int i = 0; i < 1000; i++)
        fprintf(f, "listen 127.0.0.2:%d;\n", 1000 + i);
    fputs("server_name", f);
    for (int i = 0; i < 1001; i++)
        fprintf(f, " h%d", i);
    fputs(";\n}\n", f);
    fclose(f);
    ASSERT_ERRORS(text, "t.conf:3: too many listen and server_name combinations to check (over 1000000)\n");
    free(text);
}

/* Repeats and references are checked by sorting: a big file stays fast. */
TEST(large_conf_loads_fast)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fputs("upstream big {\n", f);
    for (int i = 0; i < CONF_MAX_UPSTREAM_SERVERS; i++)
        fprintf(f, "server h%d:80;\n", i);
    fputs("}\nserver {\nlisten 80;\n", f);
    for (int i = 0; i < 60000; i++)
        fprintf(f, "route /r%d { upstream big; }\n", i);
    fputs("}\n", f);
    fclose(f);
    struct conf *c = load_ok(text);
    ASSERT_EQ(c->upstreams[0].nservers, CONF_MAX_UPSTREAM_SERVERS);
    ASSERT_EQ(c->servers[0].nroutes, 60000);
    ASSERT_STR_EQ(c->servers[0].routes[0].prefix, "/r10000");
    conf_unref(c);
    free(text);
}

TEST(file_larger_than_16m)
{
    make_tmpdir();
    char *path = tmp_path("big.conf");
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    ASSERT(fd >= 0);
    ASSERT_EQ(ftruncate(fd, (16 << 20) + 1), 0);
    close(fd);
    assert_file_errors(path, format("%s: file is larger than 16 MiB\n", path));

    /* included, it is reported where the include is */
    const char *main_path = write_file("main.conf", BASE "include big.conf;\n");
    assert_file_errors(main_path,
                       format("%s/main.conf:3: include \"%s\": file is larger than 16 MiB\n", tmpdir, path));
    free(path);
    remove_tmpdir();
}

TEST(string_larger_than_16m)
{
    size_t n = (16 << 20) + 1;
    char *text = malloc(n + 1);
    memset(text, ' ', n);
    text[n] = '\0';
    ASSERT_ERRORS(text, "t.conf: file is larger than 16 MiB\n");
    free(text);
}

/* --- files and includes --- */

TEST(missing_and_odd_files)
{
    assert_file_errors("/nonexistent/sluice.conf",
                       format("/nonexistent/sluice.conf: No such file or directory\n"));
    make_tmpdir();
    assert_file_errors(tmpdir, format("%s: not a regular file\n", tmpdir));
    remove_tmpdir();
}

TEST(include_files_and_globs)
{
    make_tmpdir();
    const char *dirs[] = {"conf.d", "sub"};
    for (size_t i = 0; i < 2; i++) {
        char *d = tmp_path(dirs[i]);
        ASSERT_EQ(mkdir(d, 0755), 0);
        free(d);
    }
    write_file("upstreams.conf", "upstream u { server 127.0.0.1:81; }\n");
    write_file("conf.d/20-second.conf", "route /b { upstream u; }\n");
    write_file("conf.d/10-first.conf", "route /aa { upstream u; }\n");
    write_file("conf.d/notes.txt", "this is not conf\n");
    write_file("sub/outer.conf", "include inner.conf;\n");
    write_file("sub/inner.conf", "shutdown_timeout 7s;\n");
    const char *path = write_file("main.conf", "include upstreams.conf;\n"
                                               "include sub/outer.conf;\n"
                                               "include nothing/*.conf;\n"
                                               "server {\n"
                                               "    listen 80;\n"
                                               "    include conf.d/*.conf;\n"
                                               "}\n");
    struct conf *c = NULL;
    char *err = load_file_errors(path, &c);
    ASSERT_STR_EQ(err, "");
    free(err);
    ASSERT(c != NULL);
    ASSERT_EQ(c->shutdown_timeout_ms, 7000);
    ASSERT_EQ(c->servers[0].nroutes, 2);
    ASSERT_STR_EQ(c->servers[0].routes[0].prefix, "/aa");
    char *first = tmp_path("conf.d/10-first.conf");
    ASSERT_STR_EQ(c->servers[0].routes[0].pos.file, first);
    ASSERT_EQ(c->servers[0].routes[0].pos.line, 1);
    char *ups = tmp_path("upstreams.conf");
    ASSERT_STR_EQ(c->upstreams[0].pos.file, ups);
    ASSERT_STR_EQ(c->path, path);
    free(first);
    free(ups);
    conf_unref(c);
    remove_tmpdir();
}

TEST(include_errors)
{
    make_tmpdir();
    write_file("self.conf", "include self.conf;\n");
    write_file("bad.conf", "workers 0;\n");
    char *path = tmp_path("main.conf");
    write_file("main.conf", BASE "include missing.conf;\ninclude self.conf;\ninclude bad.conf;\n");
    assert_file_errors(path, format("%s/main.conf:3: include \"%s/missing.conf\": No such file or directory\n"
                                    "%s/self.conf:1: include \"%s/self.conf\": the file includes itself\n"
                                    "%s/bad.conf:1: workers: 0 is out of range (1..128)\n",
                                    tmpdir, tmpdir, tmpdir, tmpdir, tmpdir));
    free(path);
    remove_tmpdir();
}

TEST(include_depth_limit)
{
    make_tmpdir();
    /* f0 includes f1 ... f17: f16 may not include f17 */
    for (int i = 0; i < 18; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "f%d.conf", i);
        snprintf(text, sizeof(text), "include f%d.conf;\n", i + 1);
        write_file(name, i == 17 ? "" : text);
    }
    char *path = tmp_path("f0.conf");
    assert_file_errors(
        path,
        format("%s/f16.conf:1: includes are nested more than 16 deep\n%s: no server block\n", tmpdir, path));
    free(path);
    remove_tmpdir();
}

TEST(include_total_bounds)
{
    make_tmpdir();
    char *dir = tmp_path("many");
    ASSERT_EQ(mkdir(dir, 0755), 0);
    for (int i = 0; i < 1030; i++) {
        char name[64];
        snprintf(name, sizeof(name), "many/%04d.conf", i);
        write_file(name, "");
    }
    const char *path = write_file("main.conf", BASE "include many/*.conf;\n");
    /* main.conf is the first file read: 0000..1022 fill the budget */
    assert_file_errors(path, format("%s/main.conf:3: include \"%s/1023.conf\": more than 1024 files in one "
                                    "configuration\n",
                                    tmpdir, dir));

    char *spaces = malloc(9 << 20);
    memset(spaces, ' ', 9 << 20);
    FILE *f = fopen(write_file("nine.conf", ""), "w");
    ASSERT_EQ(fwrite(spaces, 1, 9 << 20, f), 9 << 20);
    fclose(f);
    free(spaces);
    path = write_file("twice.conf", BASE "include nine.conf;\ninclude nine.conf;\n");
    assert_file_errors(path,
                       format("%s/twice.conf:4: include \"%s/nine.conf\": the configuration files add up "
                              "to more than 16 MiB\n",
                              tmpdir, tmpdir));
    free(dir);
    remove_tmpdir();
}

TEST(include_relative_to_string_name)
{
    make_tmpdir();
    write_file("ups.conf", "upstream u { server 127.0.0.1:81; }\n");
    char *name = tmp_path("virtual.conf");
    char *err = NULL;
    size_t len = 0;
    FILE *e = open_memstream(&err, &len);
    struct conf *c =
        conf_load_string("include ups.conf;\n"
                         "server { listen 8443 tls cert=c.pem key=/abs/k.pem; route / { upstream u; } }\n",
                         name, e);
    fclose(e);
    ASSERT_STR_EQ(err, "");
    ASSERT(c != NULL);
    char *cert = tmp_path("c.pem");
    ASSERT_STR_EQ(c->servers[0].listens[0].tls_cert, cert);
    ASSERT_STR_EQ(c->servers[0].listens[0].tls_key, "/abs/k.pem");
    free(cert);
    free(err);
    free(name);
    conf_unref(c);
    remove_tmpdir();
}

/* --- print --- */

TEST(print_round_trip_full)
{
    setenv("SLUICE_TEST_KEY", "sk-$weird \"quoted\" \\ value;{}#", 1);
    struct conf *c = load_ok(full_conf);
    ASSERT_STR_EQ(c->servers[0].routes[0].req_ops[0].value, "Bearer sk-$weird \"quoted\" \\ value;{}#");
    assert_round_trip(c);
    char *text = print_conf(c);
    ASSERT_CONTAINS(text, "set_header Authorization \"Bearer sk-\\$weird \\\"quoted\\\" \\\\ value;{}#\";\n");
    ASSERT_CONTAINS(text, "listen 0.0.0.0:8443 tls cert=/etc/s/site.crt key=site.key;\n");
    ASSERT_CONTAINS(text, "server [::1]:8443 weight=1000 tls;\n");
    ASSERT_CONTAINS(text, "set_header X-Empty \"\";\n");
    free(text);
    conf_unref(c);
}

TEST(print_exact_output)
{
    struct conf *c = load_ok("workers 2;\n" BASE);
    char *text = print_conf(c);
    ASSERT_STR_EQ(text, "# effective configuration\n"
                        "workers 2;\n"
                        "error_log stderr info;\n"
                        "shutdown_timeout 30s;\n"
                        "max_connections 100000;\n"
                        "max_connections_per_ip 0;\n"
                        "\n"
                        "admin {\n"
                        "    listen 127.0.0.1:9901;\n"
                        "}\n"
                        "\n"
                        "access_log off;\n"
                        "access_log_buffer 1m;\n"
                        "slow_log stderr;\n"
                        "slow_log_threshold 1s;\n"
                        "\n"
                        "upstream u {\n"
                        "    server 127.0.0.1:81 weight=1;\n"
                        "    balance p2c;\n"
                        "    keepalive 64;\n"
                        "    keepalive_timeout 1m;\n"
                        "    connect_timeout 5s;\n"
                        "    header_timeout 1m;\n"
                        "    idle_timeout 1m;\n"
                        "    max_fails 1;\n"
                        "    fail_timeout 10s;\n"
                        "    retry 1 on=connect backoff=100ms..2s;\n"
                        "    retry_body_max 64k;\n"
                        "    retry_budget 20% min=10/s;\n"
                        "    breaker off;\n"
                        "    tls_verify on;\n"
                        "}\n"
                        "\n"
                        "server {\n"
                        "    listen 127.0.0.1:8080;\n"
                        "    process_time_header X-Process-Time;\n"
                        "    client_header_timeout 10s;\n"
                        "    client_body_timeout 30s;\n"
                        "    keepalive_timeout 75s;\n"
                        "    send_timeout 1m;\n"
                        "    max_header_size 16k;\n"
                        "    max_headers 100;\n"
                        "    max_uri_size 8k;\n"
                        "    max_body_size 10m;\n"
                        "    via on;\n"
                        "    server_timing off;\n"
                        "\n"
                        "    route / {\n"
                        "        upstream u;\n"
                        "        websocket_idle_timeout 5m;\n"
                        "        deadline 0s;\n"
                        "        retry_non_idempotent off;\n"
                        "    }\n"
                        "}\n");
    free(text);
    conf_unref(c);
}

TEST(print_round_trip_odd_values)
{
    struct conf *c = load_ok("admin { listen [::]:9999; token \"t0k#n$;{}\"; }\n"
                             "upstream u { server [::1]:81 backup; server h:1; }\n"
                             "server {\n"
                             "    listen [::1]:80;\n"
                             "    listen 81 tls cert=\"/a dir/c\" key=\"k$\";\n"
                             "    server_name *.b.c;\n"
                             "    keepalive_timeout 0s;\n"
                             "    route /a%20b'c { upstream u; remove_header X; set_header Y \"\t\"; }\n"
                             "}\n");
    ASSERT_STR_EQ(c->admin_token, "t0k#n$;{}");
    ASSERT_STR_EQ(c->servers[0].listens[1].tls_key, "k$");
    assert_round_trip(c);
    conf_unref(c);
}

/* --- cache --- */

static const char cache_conf[] =
    "upstream u { server 127.0.0.1:81; }\n"
    "server {\n"
    "    listen 8080;\n"
    "    route /hello { upstream u; cache main; }\n"
    "    route /v1/chat {\n"
    "        upstream u;\n"
    "        cache main {\n"
    "            methods POST GET;\n"
    "            ttl 1h override;\n"
    "            ttl_status 404=30s 5XX=0 200=1h 4xx=5s;\n"
    "            ttl_from header:X-Cache-TTL;\n"
    "            ttl_from json:data.status completed=1h processing=10s \"in progress\"=2s \"\"=1s a=b=0s;\n"
    "            stale_while_revalidate 30s;\n"
    "            stale_if_error 10m;\n"
    "            max_stale 2d;\n"
    "            key method,host,path body header:X-Api-Key \"header:Authorization,query\";\n"
    "            key_body_max 4m;\n"
    "            query_sort on;\n"
    "            query_ignore utm_source utm_medium \"a%20b\";\n"
    "        }\n"
    "    }\n"
    "    route /task/ { upstream u; cache small { ttl 5m; ttl_from json:\"job.the state\" done=1d; } }\n"
    "}\n"
    "# defined after the routes that use them: cache blocks are applied first\n"
    "cache main { memory 512m; max_object 16m; }\n"
    "cache small { memory 1m; }\n"
    "cache unused;\n";

TEST(cache_every_value)
{
    struct conf *c = load_ok(cache_conf);
    ASSERT_EQ(c->ncaches, 3);
    ASSERT_STR_EQ(c->caches[0].name, "main");
    ASSERT_EQ(c->caches[0].memory, 512 << 20);
    ASSERT_EQ(c->caches[0].max_object, 16 << 20);
    ASSERT_EQ(c->caches[0].pos.line, 25);
    /* the default max_object shrinks to an eighth of a small budget */
    ASSERT_STR_EQ(c->caches[1].name, "small");
    ASSERT_EQ(c->caches[1].memory, 1 << 20);
    ASSERT_EQ(c->caches[1].max_object, 128 << 10);
    /* a cache no route uses is fine, with the defaults */
    ASSERT_STR_EQ(c->caches[2].name, "unused");
    ASSERT_EQ(c->caches[2].memory, 256 << 20);
    ASSERT_EQ(c->caches[2].max_object, 8 << 20);

    const struct conf_server *s = &c->servers[0];
    ASSERT_STR_EQ(s->routes[0].prefix, "/v1/chat");
    const struct conf_route_cache *rc = s->routes[0].cache;
    ASSERT(rc != NULL);
    ASSERT(rc->cache == &c->caches[0]);
    ASSERT_EQ(rc->pos.line, 7);
    ASSERT_EQ(rc->methods, CONF_CACHE_METHOD_BIT(HTTP_GET) | CONF_CACHE_METHOD_BIT(HTTP_POST));
    ASSERT_EQ(rc->methods, (1u << 1) | (1u << 3)); /* llhttp's numbers */
    ASSERT(rc->has_ttl && rc->ttl_override);
    ASSERT_EQ(rc->ttl_ms, 3600000);
    ASSERT_EQ(rc->nttl_status, 4);
    static const struct conf_ttl_status want_status[] = {
        {404, 404, 30000}, {500, 599, 0}, {200, 200, 3600000}, {400, 499, 5000}};
    for (size_t i = 0; i < 4; i++) {
        ASSERT_EQ(rc->ttl_status[i].lo, want_status[i].lo);
        ASSERT_EQ(rc->ttl_status[i].hi, want_status[i].hi);
        ASSERT_EQ(rc->ttl_status[i].ttl_ms, want_status[i].ttl_ms);
    }
    ASSERT_STR_EQ(rc->ttl_header, "X-Cache-TTL");
    ASSERT_STR_EQ(rc->ttl_json_path, "data.status");
    ASSERT_EQ(rc->nttl_json_values, 5);
    static const struct {
        const char *value;
        uint64_t ms;
    } want_values[] = {
        {"completed", 3600000}, {"processing", 10000}, {"in progress", 2000}, {"", 1000}, {"a=b", 0}};
    for (size_t i = 0; i < 5; i++) {
        ASSERT_STR_EQ(rc->ttl_json_values[i].value, want_values[i].value);
        ASSERT_EQ(rc->ttl_json_values[i].ttl_ms, want_values[i].ms);
    }
    ASSERT_EQ(rc->stale_while_revalidate_ms, 30000);
    ASSERT_EQ(rc->stale_if_error_ms, 600000);
    ASSERT_EQ(rc->max_stale_ms, 2 * 86400000ull);
    ASSERT(rc->key_body);
    ASSERT_EQ(rc->nkey_headers, 2);
    ASSERT_STR_EQ(rc->key_headers[0], "x-api-key"); /* lowercase: requests are looked up so */
    ASSERT_STR_EQ(rc->key_headers[1], "authorization");
    ASSERT_EQ(rc->key_body_max, 4 << 20);
    ASSERT(rc->key_query_sorted);
    ASSERT_EQ(rc->nkey_query_ignore, 3);
    ASSERT_STR_EQ(rc->key_query_ignore[0], "utm_source");
    ASSERT_STR_EQ(rc->key_query_ignore[2], "a%20b");

    const struct conf_route_cache *task = s->routes[2].cache;
    ASSERT_STR_EQ(s->routes[2].prefix, "/task/");
    ASSERT(task->cache == &c->caches[1]);
    ASSERT(task->has_ttl && !task->ttl_override);
    ASSERT_EQ(task->ttl_ms, 300000);
    ASSERT(task->ttl_header == NULL);
    ASSERT_STR_EQ(task->ttl_json_path, "job.the state");
    ASSERT_EQ(task->nttl_json_values, 1);
    ASSERT_EQ(task->ttl_json_values[0].ttl_ms, 86400000);
    conf_unref(c);
}

/* A conf whose only route caches in "main" with body as its block. */
#define ROUTE_CACHE(body)                                                                                    \
    "cache main;\n"                                                                                          \
    "upstream u { server 127.0.0.1:81; }\n"                                                                  \
    "server { listen 8080; route / { upstream u; cache main { " body " } } }\n"

/* A bare `cache NAME;` is the plain RFC 9111 behaviour. */
TEST(cache_defaults)
{
    struct conf *c =
        load_ok("cache main;\n"
                "upstream u { server 127.0.0.1:81; }\n"
                "server { listen 8080; route / { upstream u; cache main; } route /n { upstream u; } }\n");
    ASSERT_EQ(c->ncaches, 1);
    ASSERT_EQ(c->caches[0].memory, 256 << 20);
    ASSERT_EQ(c->caches[0].max_object, 8 << 20);
    ASSERT_EQ(c->caches[0].pos.line, 1);
    ASSERT(c->servers[0].routes[0].cache == NULL); /* /n: a route without cache never caches */
    const struct conf_route_cache *rc = c->servers[0].routes[1].cache;
    ASSERT(rc->cache == &c->caches[0]);
    ASSERT_EQ(rc->pos.line, 3);
    ASSERT_EQ(rc->methods, CONF_CACHE_METHOD_BIT(HTTP_GET) | CONF_CACHE_METHOD_BIT(HTTP_HEAD));
    ASSERT(!rc->has_ttl && !rc->ttl_override);
    ASSERT_EQ(rc->ttl_ms, 0);
    ASSERT_EQ(rc->nttl_status, 0);
    ASSERT(rc->ttl_status == NULL);
    ASSERT(rc->ttl_header == NULL);
    ASSERT(rc->ttl_json_path == NULL);
    ASSERT_EQ(rc->nttl_json_values, 0);
    ASSERT_EQ(rc->stale_while_revalidate_ms, 0);
    ASSERT_EQ(rc->stale_if_error_ms, 0);
    ASSERT_EQ(rc->max_stale_ms, 86400000);
    ASSERT_EQ(rc->nkey_headers, 0);
    ASSERT(!rc->key_body);
    ASSERT_EQ(rc->key_body_max, 1 << 20);
    ASSERT(!rc->key_query_sorted);
    ASSERT_EQ(rc->nkey_query_ignore, 0);
    conf_unref(c);

    /* an empty block is the same; so is a block that only names the always-present key parts */
    c = load_ok("cache main { }\n"
                "upstream u { server 127.0.0.1:81; }\n"
                "server { listen 8080; route / { upstream u;\n"
                "    cache main { key method scheme,host path,query; } } }\n");
    rc = c->servers[0].routes[0].cache;
    ASSERT_EQ(rc->methods, CONF_CACHE_METHOD_BIT(HTTP_GET) | CONF_CACHE_METHOD_BIT(HTTP_HEAD));
    ASSERT(!rc->key_body);
    ASSERT_EQ(rc->nkey_headers, 0);
    ASSERT_EQ(rc->max_stale_ms, 86400000);
    conf_unref(c);

    /* a comma may end a word when another follows */
    c = load_ok(ROUTE_CACHE("key method, path, header:X-A body;"));
    rc = c->servers[0].routes[0].cache;
    ASSERT(rc->key_body);
    ASSERT_EQ(rc->nkey_headers, 1);
    ASSERT_STR_EQ(rc->key_headers[0], "x-a");
    conf_unref(c);
}

TEST(cache_value_forms)
{
    struct conf *c = load_ok("cache main { memory 1g; max_object 128m; }\n"
                             "upstream u { server 127.0.0.1:81; }\n"
                             "server { listen 8080; route / { upstream u; cache main {\n"
                             "    methods HEAD;\n"
                             "    ttl 365d;\n"
                             "    ttl_status 599=0s 1xx=1ms;\n"
                             "    ttl_from json:a x=365d;\n"
                             "    stale_while_revalidate 365d; stale_if_error 0s; max_stale 365d;\n"
                             "    key header:A,header:B body;\n"
                             "    key_body_max 64m;\n"
                             "    query_sort off;\n"
                             "} } }\n");
    ASSERT_EQ(c->caches[0].memory, 1ull << 30);
    ASSERT_EQ(c->caches[0].max_object, 128 << 20);
    const struct conf_route_cache *rc = c->servers[0].routes[0].cache;
    ASSERT_EQ(rc->methods, CONF_CACHE_METHOD_BIT(HTTP_HEAD));
    ASSERT_EQ(rc->ttl_ms, 365 * 86400000ull);
    ASSERT(!rc->ttl_override);
    ASSERT_EQ(rc->ttl_status[0].lo, 599);
    ASSERT_EQ(rc->ttl_status[0].hi, 599);
    ASSERT_EQ(rc->ttl_status[1].lo, 100);
    ASSERT_EQ(rc->ttl_status[1].hi, 199);
    ASSERT_EQ(rc->ttl_status[1].ttl_ms, 1);
    ASSERT_STR_EQ(rc->ttl_json_path, "a");
    ASSERT_EQ(rc->stale_while_revalidate_ms, 365 * 86400000ull);
    ASSERT_EQ(rc->nkey_headers, 2);
    ASSERT(rc->key_body);
    ASSERT_EQ(rc->key_body_max, 64 << 20);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(cache_errors)
{
    static const struct error_case cases[] = {
        /* top level */
        {BASE "cache main;\ncache main { memory 1m; }\n",
         "t.conf:4: cache \"main\" is repeated (first at t.conf:3)\n"},
        {BASE "cache \"a b\";\n",
         "t.conf:3: cache: invalid name \"a b\" (letters, digits, \"_\", \"-\" and \".\")\n"},
        {BASE "cache;\n", "t.conf:3: directive \"cache\" takes 1 argument, got 0\n"},
        {BASE "cache a b;\n", "t.conf:3: directive \"cache\" takes 1 argument, got 2\n"},
        {BASE "cache main { memory 1023k; }\n", "t.conf:3: memory: 1023k is out of range (1m..1024g)\n"},
        {BASE "cache main { memory 1025g; }\n", "t.conf:3: memory: 1025g is out of range (1m..1024g)\n"},
        {BASE "cache main { memory lots; }\n",
         "t.conf:3: memory: invalid size \"lots\": expected a number with an optional k, m or g suffix\n"},
        {BASE "cache main { max_object 0; }\n", "t.conf:3: max_object: 0 is out of range (1..128g)\n"},
        {BASE "cache main {\n    memory 8m;\n    max_object 2m;\n}\n",
         "t.conf:5: max_object: 2m is more than memory / 8 (memory 8m, so at most 1m)\n"},
        {BASE "cache main { max_object 64m; }\n",
         "t.conf:3: max_object: 64m is more than memory / 8 (memory 256m, so at most 32m)\n"},
        {BASE "cache main { memory 1m; redis on; }\n",
         "t.conf:3: redis on: cache \"main\" needs a top-level redis directive (redis redis://HOST:PORT;)\n"},
        {BASE "cache main { redis yes; }\n",
         "t.conf:3: redis: invalid value \"yes\" (expected off or on)\n"},
        {BASE "cache main { ttl 1h; }\n", "t.conf:3: directive \"ttl\" is not allowed here\n"},
        /* the route's reference */
        {BASE "server { listen 9000; route /a { upstream u; cache nope; } }\n",
         "t.conf:3: unknown cache \"nope\"\n"},
        {BASE "server { listen 9000; route /a { upstream u; cache; } }\n",
         "t.conf:3: directive \"cache\" takes 1 argument, got 0\n"},
        {"cache main;\n" BASE "server { listen 9000; route /a { upstream u; cache main;\ncache main; } }\n",
         "t.conf:5: directive \"cache\" is repeated (first at t.conf:4)\n"},
        {ROUTE_CACHE("memory 1m;"), "t.conf:3: directive \"memory\" is not allowed here\n"},
        {ROUTE_CACHE("cache main;"), "t.conf:3: directive \"cache\" is not allowed here\n"},
        {ROUTE_CACHE("redis on;"), "t.conf:3: directive \"redis\" is not allowed here\n"},
        {BASE "server { listen 9000; route /a { upstream u; ttl 1h; } }\n",
         "t.conf:3: directive \"ttl\" is not allowed here\n"},
        {BASE "server { listen 9000; ttl 1h; }\n", "t.conf:3: directive \"ttl\" is not allowed here\n"},
        /* methods */
        {ROUTE_CACHE("methods PUT;"),
         "t.conf:3: methods: invalid value \"PUT\" (expected GET, HEAD or POST)\n"},
        {ROUTE_CACHE("methods get;"),
         "t.conf:3: methods: invalid value \"get\" (expected GET, HEAD or POST)\n"},
        {ROUTE_CACHE("methods;"), "t.conf:3: directive \"methods\" takes at least 1 argument, got 0\n"},
        {"cache main;\nupstream u { server 127.0.0.1:81; }\n"
         "server { listen 8080; route / { upstream u; cache main {\n  ttl 1h;\n  methods GET POST;\n} } }\n",
         "t.conf:5: methods POST needs the request body in the key (key ... body)\n"},
        {ROUTE_CACHE("methods POST; key method,header:X-A;"),
         "t.conf:3: methods POST needs the request body in the key (key ... body)\n"},
        /* ttl */
        {ROUTE_CACHE("ttl 0s;"), "t.conf:3: ttl: 0s is out of range (1ms..365d)\n"},
        {ROUTE_CACHE("ttl 366d;"), "t.conf:3: ttl: 366d is out of range (1ms..365d)\n"},
        {ROUTE_CACHE("ttl 10;"),
         "t.conf:3: ttl: invalid duration \"10\": a unit is required: ms, s, m, h or d\n"},
        {ROUTE_CACHE("ttl 1h forever;"),
         "t.conf:3: ttl: unknown parameter \"forever\" (expected override)\n"},
        {ROUTE_CACHE("ttl 1h override now;"), "t.conf:3: directive \"ttl\" takes 1 to 2 arguments, got 3\n"},
        {ROUTE_CACHE("ttl 1h; ttl 2h;"), "t.conf:3: directive \"ttl\" is repeated (first at t.conf:3)\n"},
        /* ttl_status */
        {ROUTE_CACHE("ttl_status 404;"),
         "t.conf:3: ttl_status: invalid \"404\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 600=1s;"),
         "t.conf:3: ttl_status: invalid \"600=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 099=1s;"),
         "t.conf:3: ttl_status: invalid \"099=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 6xx=1s;"),
         "t.conf:3: ttl_status: invalid \"6xx=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 40x=1s;"),
         "t.conf:3: ttl_status: invalid \"40x=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 4x=1s;"),
         "t.conf:3: ttl_status: invalid \"4x=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 4040=1s;"),
         "t.conf:3: ttl_status: invalid \"4040=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status =1s;"),
         "t.conf:3: ttl_status: invalid \"=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"},
        {ROUTE_CACHE("ttl_status 404=10;"),
         "t.conf:3: ttl_status: invalid duration \"10\": a unit is required: ms, s, m, h or d\n"},
        {ROUTE_CACHE("ttl_status 404=;"),
         "t.conf:3: ttl_status: invalid duration \"\": expected a number and a unit: ms, s, m, h or d\n"},
        {ROUTE_CACHE("ttl_status 404=366d;"), "t.conf:3: ttl_status: 366d is out of range (0s..365d)\n"},
        {ROUTE_CACHE("ttl_status 404=1s 404=2s;"),
         "t.conf:3: ttl_status: \"404=2s\" never applies: \"404=1s\" comes first\n"},
        {ROUTE_CACHE("ttl_status 4xx=1s 200=0 404=2s;"),
         "t.conf:3: ttl_status: \"404=2s\" never applies: \"4xx=1s\" comes first\n"},
        {ROUTE_CACHE("ttl_status 4xx=1s 4XX=1s;"),
         "t.conf:3: ttl_status: \"4XX=1s\" never applies: \"4xx=1s\" comes first\n"},
        {ROUTE_CACHE("ttl_status;"), "t.conf:3: directive \"ttl_status\" takes at least 1 argument, got 0\n"},
        {ROUTE_CACHE("ttl_status 404=1s; ttl_status 500=1s;"),
         "t.conf:3: directive \"ttl_status\" is repeated (first at t.conf:3)\n"},
        /* ttl_from */
        {ROUTE_CACHE("ttl_from;"), "t.conf:3: directive \"ttl_from\" takes at least 1 argument, got 0\n"},
        {ROUTE_CACHE("ttl_from body:x a=1s;"),
         "t.conf:3: ttl_from: invalid source \"body:x\" (expected header:NAME or json:PATH)\n"},
        {ROUTE_CACHE("ttl_from X-TTL;"),
         "t.conf:3: ttl_from: invalid source \"X-TTL\" (expected header:NAME or json:PATH)\n"},
        {ROUTE_CACHE("ttl_from \"header:a b\";"), "t.conf:3: ttl_from: invalid header name \"a b\"\n"},
        {ROUTE_CACHE("ttl_from header:;"), "t.conf:3: ttl_from: invalid header name \"\"\n"},
        {ROUTE_CACHE("ttl_from header:X a=1s;"),
         "t.conf:3: ttl_from: header:NAME takes no VALUE=TTL pairs\n"},
        {ROUTE_CACHE("ttl_from header:X; ttl_from header:Y;"),
         "t.conf:3: ttl_from: header: is already given (at most one header: and one json:)\n"},
        {ROUTE_CACHE("ttl_from json:a x=1s; ttl_from json:b y=1s;"),
         "t.conf:3: ttl_from: json: is already given (at most one header: and one json:)\n"},
        {ROUTE_CACHE("ttl_from json:a;"),
         "t.conf:3: ttl_from: json:PATH needs at least one VALUE=TTL pair\n"},
        {ROUTE_CACHE("ttl_from json: x=1s;"),
         "t.conf:3: ttl_from: invalid JSON path \"\" (object keys separated by \".\", none empty)\n"},
        {ROUTE_CACHE("ttl_from json:.a x=1s;"),
         "t.conf:3: ttl_from: invalid JSON path \".a\" (object keys separated by \".\", none empty)\n"},
        {ROUTE_CACHE("ttl_from json:a. x=1s;"),
         "t.conf:3: ttl_from: invalid JSON path \"a.\" (object keys separated by \".\", none empty)\n"},
        {ROUTE_CACHE("ttl_from json:a..b x=1s;"),
         "t.conf:3: ttl_from: invalid JSON path \"a..b\" (object keys separated by \".\", none empty)\n"},
        {ROUTE_CACHE("ttl_from json:a done;"),
         "t.conf:3: ttl_from: invalid pair \"done\" (expected VALUE=TTL such as completed=1h)\n"},
        {ROUTE_CACHE("ttl_from json:a done=1x;"), "t.conf:3: ttl_from: invalid duration \"1x\": expected a "
                                                  "number and a unit: ms, s, m, h or d\n"},
        {ROUTE_CACHE("ttl_from json:a done=400d;"), "t.conf:3: ttl_from: 400d is out of range (0s..365d)\n"},
        {ROUTE_CACHE("ttl_from json:a done=1s x=1s done=2s;"),
         "t.conf:3: ttl_from: value \"done\" is repeated\n"},
        /* stale windows */
        {ROUTE_CACHE("stale_while_revalidate 2d;"),
         "t.conf:3: stale_while_revalidate: 2d is more than max_stale (1d)\n"},
        {"cache main;\nupstream u { server 127.0.0.1:81; }\n"
         "server { listen 8080; route / { upstream u; cache main {\n"
         "  stale_if_error 1h;\n  max_stale 30m;\n} } }\n",
         "t.conf:4: stale_if_error: 1h is more than max_stale (30m)\n"},
        {ROUTE_CACHE("stale_if_error 366d;"), "t.conf:3: stale_if_error: 366d is out of range (0s..365d)\n"},
        {ROUTE_CACHE("max_stale 1y;"),
         "t.conf:3: max_stale: invalid duration \"1y\": expected a number and a unit: ms, s, m, h or d\n"},
        /* key */
        {ROUTE_CACHE("key method,,path;"), "t.conf:3: key: empty part in \"method,,path\"\n"},
        {ROUTE_CACHE("key method,;"), "t.conf:3: key: empty part in \"method,\"\n"},
        {ROUTE_CACHE("key path method,;"), "t.conf:3: key: empty part in \"method,\"\n"},
        {ROUTE_CACHE("key ,path;"), "t.conf:3: key: empty part in \",path\"\n"},
        {ROUTE_CACHE("key \",\" path;"), "t.conf:3: key: empty part in \",\"\n"},
        {ROUTE_CACHE("key \"\";"), "t.conf:3: key: empty part in \"\"\n"},
        {ROUTE_CACHE("key method cookie;"),
         "t.conf:3: key: invalid part \"cookie\" (expected method, scheme, "
         "host, path, query, body or header:NAME)\n"},
        {ROUTE_CACHE("key Method;"), "t.conf:3: key: invalid part \"Method\" (expected method, scheme, "
                                     "host, path, query, body or header:NAME)\n"},
        {ROUTE_CACHE("key header:;"), "t.conf:3: key: invalid header name \"\"\n"},
        {ROUTE_CACHE("key \"header:a b\";"), "t.conf:3: key: invalid header name \"a b\"\n"},
        {ROUTE_CACHE("key header:X-A,header:x-a;"), "t.conf:3: key: header \"x-a\" is repeated\n"},
        {ROUTE_CACHE("key;"), "t.conf:3: directive \"key\" takes at least 1 argument, got 0\n"},
        {ROUTE_CACHE("key_body_max 65m;"), "t.conf:3: key_body_max: 65m is out of range (1..64m)\n"},
        {ROUTE_CACHE("key_body_max 0;"), "t.conf:3: key_body_max: 0 is out of range (1..64m)\n"},
        {ROUTE_CACHE("query_sort yes;"),
         "t.conf:3: query_sort: invalid value \"yes\" (expected off or on)\n"},
        {ROUTE_CACHE("query_ignore \"a&b\";"), "t.conf:3: query_ignore: invalid parameter name \"a&b\"\n"},
        {ROUTE_CACHE("query_ignore a=;"), "t.conf:3: query_ignore: invalid parameter name \"a=\"\n"},
        {ROUTE_CACHE("query_ignore \"\";"), "t.conf:3: query_ignore: invalid parameter name \"\"\n"},
        {ROUTE_CACHE("query_ignore a b a;"), "t.conf:3: query_ignore: parameter \"a\" is repeated\n"},
        {ROUTE_CACHE("query_ignore a; query_ignore b;"),
         "t.conf:3: directive \"query_ignore\" is repeated (first at t.conf:3)\n"},
    };
    CHECK_ERROR_CASES(cases);
}

/* An entry can be shadowed by several earlier ones together. */
TEST(cache_ttl_status_shadowed_by_many)
{
    char text[4096] = "cache main;\nupstream u { server 127.0.0.1:81; }\n"
                      "server { listen 8080; route / { upstream u; cache main { ttl_status";
    for (int s = 500; s < 600; s++)
        snprintf(text + strlen(text), sizeof(text) - strlen(text), " %d=1s", s);
    strcat(text, " 5xx=0; } } }\n");
    ASSERT_ERRORS(text,
                  "t.conf:3: ttl_status: \"5xx=0\" never applies: earlier entries match all its statuses\n");
    /* 99 of them leave one status for the class */
    text[strlen(text) - strlen(" 599=1s 5xx=0; } } }\n")] = '\0';
    strcat(text, " 5xx=0; } } }\n");
    struct conf *c = load_ok(text);
    ASSERT_EQ(c->servers[0].routes[0].cache->nttl_status, 100);
    conf_unref(c);
}

/* One run reports every problem of a cache block, and of the reference too. */
TEST(cache_errors_in_one_run)
{
    ASSERT_ERRORS("cache main { memory 2m; max_object 1m; redis on; }\n"
                  "upstream u { server 127.0.0.1:81; }\n"
                  "server { listen 8080; route / { upstream u; cache nope {\n"
                  "    methods POST;\n"
                  "    ttl 0s;\n"
                  "    ttl_status 404=1s 404=1s 700=1s;\n"
                  "    key path,foo header:A,header:a;\n"
                  "    stale_if_error 2d;\n"
                  "} } }\n",
                  "t.conf:1: max_object: 1m is more than memory / 8 (memory 2m, so at most 256k)\n"
                  "t.conf:1: redis on: cache \"main\" needs a top-level redis directive (redis "
                  "redis://HOST:PORT;)\n"
                  "t.conf:3: unknown cache \"nope\"\n"
                  "t.conf:5: ttl: 0s is out of range (1ms..365d)\n"
                  "t.conf:6: ttl_status: \"404=1s\" never applies: \"404=1s\" comes first\n"
                  "t.conf:6: ttl_status: invalid \"700=1s\" (expected STATUS=TTL such as 404=30s or 5xx=0)\n"
                  "t.conf:7: key: invalid part \"foo\" (expected method, scheme, host, path, query, body or "
                  "header:NAME)\n"
                  "t.conf:7: key: header \"a\" is repeated\n"
                  "t.conf:4: methods POST needs the request body in the key (key ... body)\n"
                  "t.conf:8: stale_if_error: 2d is more than max_stale (1d)\n");
}

TEST(cache_print_round_trip)
{
    struct conf *c = load_ok(cache_conf);
    assert_round_trip(c);
    char *text = print_conf(c);
    ASSERT_CONTAINS(text, "\ncache main {\n    memory 512m;\n    max_object 16m;\n    redis off;\n}\n");
    ASSERT_CONTAINS(text, "\ncache small {\n    memory 1m;\n    max_object 128k;\n    redis off;\n}\n");
    ASSERT_CONTAINS(
        text, "    route /v1/chat {\n"
              "        upstream u;\n"
              "        websocket_idle_timeout 5m;\n"
              "        cache main {\n"
              "            methods GET POST;\n"
              "            ttl 1h override;\n"
              "            ttl_status 404=30s 5xx=0s 200=1h 4xx=5s;\n"
              "            ttl_from header:X-Cache-TTL;\n"
              "            ttl_from json:data.status completed=1h processing=10s \"in progress\"=2s "
              "\"\"=1s a=b=0s;\n"
              "            stale_while_revalidate 30s;\n"
              "            stale_if_error 10m;\n"
              "            max_stale 2d;\n"
              "            key method,scheme,host,path,query,body,header:x-api-key,header:authorization;\n"
              "            key_body_max 4m;\n"
              "            query_sort on;\n"
              "            query_ignore utm_source utm_medium a%20b;\n"
              "        }\n"
              "        deadline 0s;\n"
              "        retry_non_idempotent off;\n"
              "    }\n");
    ASSERT_CONTAINS(text, "ttl_from json:\"job.the state\" done=1d;\n");
    free(text);
    conf_unref(c);
}

TEST(cache_print_defaults_exact)
{
    struct conf *c = load_ok("upstream u { server 127.0.0.1:81; }\n"
                             "cache main;\n"
                             "server { listen 127.0.0.1:8080; route / { upstream u; cache main; } }\n");
    char *text = print_conf(c);
    ASSERT_CONTAINS(text, "    breaker off;\n"
                          "    tls_verify on;\n"
                          "}\n"
                          "\n"
                          "cache main {\n"
                          "    memory 256m;\n"
                          "    max_object 8m;\n"
                          "    redis off;\n"
                          "}\n"
                          "\n"
                          "server {\n");
    ASSERT_CONTAINS(text, "    route / {\n"
                          "        upstream u;\n"
                          "        websocket_idle_timeout 5m;\n"
                          "        cache main {\n"
                          "            methods GET HEAD;\n"
                          "            stale_while_revalidate 0s;\n"
                          "            stale_if_error 0s;\n"
                          "            max_stale 1d;\n"
                          "            key method,scheme,host,path,query;\n"
                          "            key_body_max 1m;\n"
                          "            query_sort off;\n"
                          "        }\n"
                          "        deadline 0s;\n"
                          "        retry_non_idempotent off;\n"
                          "    }\n"
                          "}\n");
    assert_round_trip(c);
    free(text);
    conf_unref(c);
}

/* Words that need quoting print quoted and load back the same. */
TEST(cache_print_odd_words)
{
    struct conf *c =
        load_ok(ROUTE_CACHE("ttl_from \"header:X#T$\";"
                            "ttl_from \"json:a b.c#\" \"x y=z\"=1s \"\\${}\"=2s \"\\\"q\\\"\"=3s;"
                            "key \"header:a#b$\";"
                            "query_ignore \"x$\" \"p{q};\";"));
    const struct conf_route_cache *rc = c->servers[0].routes[0].cache;
    ASSERT_STR_EQ(rc->ttl_header, "X#T$");
    ASSERT_STR_EQ(rc->ttl_json_path, "a b.c#");
    ASSERT_STR_EQ(rc->ttl_json_values[0].value, "x y=z");
    ASSERT_STR_EQ(rc->ttl_json_values[1].value, "${}");
    ASSERT_STR_EQ(rc->ttl_json_values[2].value, "\"q\"");
    ASSERT_STR_EQ(rc->key_headers[0], "a#b$");
    ASSERT_STR_EQ(rc->key_query_ignore[1], "p{q};");
    assert_round_trip(c);
    conf_unref(c);
}

/* Many routes naming caches: the lookup sorts, so this stays fast. */
TEST(cache_many_routes_load_fast)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fputs("upstream u { server 127.0.0.1:81; }\nserver {\nlisten 80;\n", f);
    for (int i = 0; i < 30000; i++)
        fprintf(f, "route /r%d { upstream u; cache c%d; }\n", i, i);
    fputs("}\n", f);
    for (int i = 0; i < 30000; i++)
        fprintf(f, "cache c%d { memory 1m; }\n", i);
    fclose(f);
    struct conf *c = load_ok(text);
    ASSERT_EQ(c->ncaches, 30000);
    ASSERT_STR_EQ(c->servers[0].routes[0].prefix, "/r10000");
    ASSERT_STR_EQ(c->servers[0].routes[0].cache->cache->name, "c10000");
    conf_unref(c);
    free(text);
}

/* --- redis --- */

TEST(redis_every_value)
{
    struct conf *c = load_ok("cache main { memory 64m; redis on; }\n"
                             "cache local { redis off; }\n" BASE "redis redis://10.1.2.3:6380/7 {\n"
                             "    timeout 250ms;\n"
                             "}\n");
    const struct conf_redis *r = c->redis;
    ASSERT(r != NULL);
    ASSERT_STR_EQ(r->url, "redis://10.1.2.3:6380/7");
    ASSERT_STR_EQ(r->host, "10.1.2.3");
    ASSERT_EQ(r->port, 6380);
    ASSERT_EQ(r->db, 7);
    ASSERT_EQ(r->timeout_ms, 250);
    ASSERT_EQ(r->pos.line, 5);
    ASSERT(c->caches[0].redis);
    ASSERT(!c->caches[1].redis);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(redis_defaults)
{
    struct conf *c = load_ok(BASE "redis redis://127.0.0.1;\ncache main;\n");
    ASSERT_STR_EQ(c->redis->url, "redis://127.0.0.1:6379/0");
    ASSERT_EQ(c->redis->port, 6379);
    ASSERT_EQ(c->redis->db, 0);
    ASSERT_EQ(c->redis->timeout_ms, 50);
    ASSERT(!c->caches[0].redis);
    conf_unref(c);
    /* without a redis directive there is none */
    c = load_ok(BASE);
    ASSERT(c->redis == NULL);
    conf_unref(c);
}

TEST(redis_url_forms)
{
    static const struct {
        const char *url, *host, *norm;
        uint16_t port;
        unsigned db;
    } cases[] = {
        {"redis://localhost", "127.0.0.1", "redis://127.0.0.1:6379/0", 6379, 0},
        {"redis://localhost:7000/3", "127.0.0.1", "redis://127.0.0.1:7000/3", 7000, 3},
        {"redis://127.0.0.1:6379/", "127.0.0.1", "redis://127.0.0.1:6379/0", 6379, 0},
        {"redis://127.0.0.1/15", "127.0.0.1", "redis://127.0.0.1:6379/15", 6379, 15},
        {"redis://[::1]:6390/2", "::1", "redis://[::1]:6390/2", 6390, 2},
        {"redis://[0:0::1]", "::1", "redis://[::1]:6379/0", 6379, 0},
        {"redis://[fe80::1:2]:1/65535", "fe80::1:2", "redis://[fe80::1:2]:1/65535", 1, 65535},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = format(BASE "redis %s;\n", cases[i].url);
        struct conf *c = load_ok(text);
        ASSERT_STR_EQ(c->redis->host, cases[i].host);
        ASSERT_STR_EQ(c->redis->url, cases[i].norm);
        ASSERT_EQ(c->redis->port, cases[i].port);
        ASSERT_EQ(c->redis->db, cases[i].db);
        assert_round_trip(c);
        conf_unref(c);
        free(text);
    }
}

#define REDIS_HOST_ERROR(url)                                                                                \
    "t.conf:3: redis: invalid host in \"" url "\": a numeric IPv4 address, [IPv6] or localhost (names are "  \
    "not resolved)\n"

TEST(redis_errors)
{
    static const struct error_case cases[] = {
        {BASE "redis cache.internal:6379;\n",
         "t.conf:3: redis: invalid URL \"cache.internal:6379\" (expected redis://HOST[:PORT][/DB])\n"},
        {BASE "redis rediss://10.0.0.1:6380;\n",
         "t.conf:3: redis: invalid URL \"rediss://10.0.0.1:6380\" (expected redis://HOST[:PORT][/DB]; TLS is "
         "not supported)\n"},
        {BASE "redis redis://cache.internal:6379;\n", REDIS_HOST_ERROR("redis://cache.internal:6379")},
        {BASE "redis redis://:6379;\n", REDIS_HOST_ERROR("redis://:6379")},
        {BASE "redis redis://;\n", REDIS_HOST_ERROR("redis://")},
        {BASE "redis redis://1.2.3;\n", REDIS_HOST_ERROR("redis://1.2.3")},
        {BASE "redis redis://[127.0.0.1]:1;\n", REDIS_HOST_ERROR("redis://[127.0.0.1]:1")},
        {BASE "redis redis://[::1:1;\n",
         "t.conf:3: redis: invalid URL \"redis://[::1:1\" (expected redis://HOST[:PORT][/DB])\n"},
        {BASE "redis redis://[::1]x;\n",
         "t.conf:3: redis: invalid URL \"redis://[::1]x\" (expected redis://HOST[:PORT][/DB])\n"},
        {BASE "redis redis://user:pw@10.0.0.1:6379;\n",
         "t.conf:3: redis: a user or password in the URL is not supported\n"},
        {BASE "redis redis://10.0.0.1:0;\n",
         "t.conf:3: redis: invalid port in \"redis://10.0.0.1:0\" (1..65535)\n"},
        {BASE "redis redis://10.0.0.1:65536;\n",
         "t.conf:3: redis: invalid port in \"redis://10.0.0.1:65536\" (1..65535)\n"},
        {BASE "redis redis://10.0.0.1:;\n",
         "t.conf:3: redis: invalid port in \"redis://10.0.0.1:\" (1..65535)\n"},
        {BASE "redis redis://10.0.0.1:123456789;\n",
         "t.conf:3: redis: invalid port in \"redis://10.0.0.1:123456789\" (1..65535)\n"},
        {BASE "redis redis://10.0.0.1/65536;\n",
         "t.conf:3: redis database: 65536 is out of range (0..65535)\n"},
        {BASE "redis redis://10.0.0.1/x;\n",
         "t.conf:3: redis database: invalid number \"x\": expected a number\n"},
        {BASE "redis redis://10.0.0.1/0?timeout=1;\n",
         "t.conf:3: redis database: invalid number \"0?timeout=1\": expected a number\n"},
        {BASE "redis redis://10.0.0.1 { timeout 0s; }\n",
         "t.conf:3: timeout: 0s is out of range (1ms..1m)\n"},
        {BASE "redis redis://10.0.0.1 { timeout 61s; }\n",
         "t.conf:3: timeout: 61s is out of range (1ms..1m)\n"},
        {BASE "redis redis://10.0.0.1 { timeout 5; }\n",
         "t.conf:3: timeout: invalid duration \"5\": a unit is required: ms, s, m, h or d\n"},
        {BASE "redis redis://10.0.0.1 { memory 1m; }\n",
         "t.conf:3: directive \"memory\" is not allowed here\n"},
        {BASE "redis;\n", "t.conf:3: directive \"redis\" takes 1 argument, got 0\n"},
        {BASE "redis redis://10.0.0.1;\nredis redis://10.0.0.2;\n",
         "t.conf:4: directive \"redis\" is repeated (first at t.conf:3)\n"},
        {BASE "server { listen 9000; route /a { upstream u; redis on; } }\n",
         "t.conf:3: directive \"redis\" is not allowed here\n"},
        {BASE "admin { redis redis://10.0.0.1; }\n", "t.conf:3: directive \"redis\" is not allowed here\n"},
        /* a bad top-level redis is reported once, not again for the caches using it */
        {BASE "redis redis://nope;\ncache main { redis on; }\n", REDIS_HOST_ERROR("redis://nope")},
        {BASE "cache a {\n  redis on;\n}\ncache b { redis on; }\n",
         "t.conf:4: redis on: cache \"a\" needs a top-level redis directive (redis redis://HOST:PORT;)\n"
         "t.conf:6: redis on: cache \"b\" needs a top-level redis directive (redis redis://HOST:PORT;)\n"},
    };
    CHECK_ERROR_CASES(cases);
}

/* The redis directive may come after the caches that use it, or from an include. */
TEST(redis_after_its_caches_and_included)
{
    struct conf *c = load_ok("cache main { redis on; }\n" BASE "redis redis://127.0.0.1:6379;\n");
    ASSERT(c->caches[0].redis);
    ASSERT(c->redis != NULL);
    conf_unref(c);

    make_tmpdir();
    write_file("redis.conf", "redis redis://[::1]:6379/1 { timeout 1s; }\n");
    const char *path = write_file("main.conf", "include redis.conf;\ncache main { redis on; }\n" BASE);
    char *err = load_file_errors(path, &c);
    ASSERT_STR_EQ(err, "");
    free(err);
    ASSERT_STR_EQ(c->redis->url, "redis://[::1]:6379/1");
    ASSERT_EQ(c->redis->timeout_ms, 1000);
    conf_unref(c);
    remove_tmpdir();
}

TEST(redis_print_exact)
{
    struct conf *c = load_ok("redis redis://localhost:6379/2;\ncache main { redis on; }\n" BASE);
    char *text = print_conf(c);
    ASSERT_CONTAINS(text, "    listen 127.0.0.1:9901;\n"
                          "}\n"
                          "\n"
                          "redis redis://127.0.0.1:6379/2 {\n"
                          "    timeout 50ms;\n"
                          "}\n"
                          "\n"
                          "access_log off;\n");
    ASSERT_CONTAINS(text, "cache main {\n"
                          "    memory 256m;\n"
                          "    max_object 8m;\n"
                          "    redis on;\n"
                          "}\n");
    assert_round_trip(c);
    free(text);
    conf_unref(c);
}

/* --- observability (issue 6) --- */

TEST(observability_directives)
{
    struct conf *c = load_ok("access_log /var/log/sluice.log json;\naccess_log_buffer 4m;\nslow_log off;\n"
                             "slow_log_threshold 250ms;\n"
                             "analytics postgresql://sluice@localhost:5433/db { batch 10; flush 1s; queue 500; }\n"
                             BASE "server { listen 9001; server_timing on; route / { upstream u; } }\n");
    ASSERT_STR_EQ(c->access_log, "/var/log/sluice.log");
    ASSERT_EQ(c->access_log_buffer, 4u << 20);
    ASSERT(c->slow_log == NULL);
    ASSERT_EQ(c->slow_log_threshold_ms, 250);
    ASSERT(c->analytics != NULL);
    ASSERT_STR_EQ(c->analytics->hostaddr, "127.0.0.1");
    ASSERT_EQ(c->analytics->batch, 10);
    ASSERT_EQ(c->analytics->flush_ms, 1000);
    ASSERT_EQ(c->analytics->queue, 500);
    ASSERT(c->servers[c->nservers - 1].server_timing);
    assert_round_trip(c);
    conf_unref(c);

    /* a route takes the server's server_timing unless it sets its own */
    c = load_ok(BASE "server { listen 9001; route /a { upstream u; server_timing on; } route /b { upstream u; }\n"
                     "         route /c { upstream u; server_timing off; } server_timing on; }\n");
    const struct conf_server *sv = &c->servers[c->nservers - 1];
    ASSERT(sv->server_timing && sv->server_timing_any);
    for (size_t i = 0; i < sv->nroutes; i++)
        ASSERT_EQ(sv->routes[i].server_timing, strcmp(sv->routes[i].prefix, "/c") != 0);
    ASSERT(!c->servers[0].server_timing_any);
    assert_round_trip(c);
    conf_unref(c);
    c = load_ok(BASE "server { listen 9001; route /a { upstream u; server_timing on; } route /b { upstream u; } }\n");
    sv = &c->servers[c->nservers - 1];
    ASSERT(!sv->server_timing && sv->server_timing_any);
    ASSERT(sv->routes[0].server_timing && !sv->routes[1].server_timing);
    assert_round_trip(c);
    conf_unref(c);

    c = load_ok("access_log stdout;\n" BASE);
    ASSERT_STR_EQ(c->access_log, "stdout");
    ASSERT_STR_EQ(c->slow_log, "stderr");
    ASSERT_EQ(c->slow_log_threshold_ms, 1000);
    ASSERT(c->analytics == NULL);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(observability_errors)
{
    static const struct error_case cases[] = {
        {BASE "access_log /x.log csv;\n", "t.conf:3: access_log: unknown format \"csv\" (json is the one there is)\n"},
        {BASE "access_log stderr;\n", "t.conf:3: access_log: stderr is the error log; give a file or stdout\n"},
        {BASE "analytics mysql://x@127.0.0.1/db;\n",
         "t.conf:3: analytics: invalid URL \"mysql://x@127.0.0.1/db\" (expected postgresql://USER@HOST:PORT/DB)\n"},
        {BASE "analytics postgresql://sluice@db.example.com/x;\n",
         "t.conf:3: analytics: the host must be a numeric address or localhost (a name would be resolved with "
         "a blocking call)\n"},
        {BASE "analytics postgresql://127.0.0.1/x { batch 0; }\n", "t.conf:3: batch: 0 is out of range (1..100000)\n"},
        {BASE "slow_log_threshold 0s;\n", "t.conf:3: slow_log_threshold: 0s is out of range (1ms..1d)\n"},
        {BASE "server { listen 9001; server_timing maybe; route / { upstream u; } }\n",
         "t.conf:3: server_timing: invalid value \"maybe\" (expected off or on)\n"},
    };
    CHECK_ERROR_CASES(cases);
}

/* --- lifetime --- */

TEST(refcount)
{
    struct conf *c = load_ok(BASE);
    ASSERT_EQ(atomic_load(&c->refs), 1);
    ASSERT(conf_ref(c) == c);
    ASSERT_EQ(atomic_load(&c->refs), 2);
    conf_unref(c);
    ASSERT_EQ(atomic_load(&c->refs), 1);
    ASSERT_STR_EQ(c->upstreams[0].name, "u");
    conf_unref(c); /* frees: ASan and valgrind check nothing leaks or is freed twice */
    conf_unref(NULL);
}

TEST(resilience_every_value)
{
    struct conf *c = load_ok("upstream u {\n"
                             "    server 127.0.0.1:81; server 127.0.0.1:82 backup;\n"
                             "    balance least_conn; max_fails 3; fail_timeout 30s;\n"
                             "    retry 2 on=connect,timeout,reset,502,503,5xx backoff=50ms..1s;\n"
                             "    retry_body_max 1m;\n"
                             "    retry_budget 10% min=5/s;\n"
                             "    breaker failures=4 ratio=40% window=20s min=10 open=5s max_open=1m half_open=2 "
                             "on=503,429;\n"
                             "    health_check /healthz interval=1s timeout=500ms rise=1 fall=2;\n"
                             "}\n"
                             "upstream f { server 127.0.0.1:83; }\n"
                             "server { listen 127.0.0.1:8080;\n"
                             "  route / { upstream u; deadline 3s; fallback f; retry_non_idempotent on; } }\n");
    const struct conf_upstream *u = &c->upstreams[0];
    ASSERT_EQ(u->balance, CONF_BALANCE_LEAST_CONN);
    ASSERT_EQ(u->max_fails, 3);
    ASSERT_EQ(u->fail_timeout_ms, 30000);
    ASSERT_EQ(u->retry.tries, 2);
    ASSERT_EQ(u->retry.on, CONF_RETRY_CONNECT | CONF_RETRY_TIMEOUT | CONF_RETRY_RESET);
    ASSERT(CONF_STATUS_HAS(&u->retry.on_status, 502));
    ASSERT(CONF_STATUS_HAS(&u->retry.on_status, 599));
    ASSERT(!CONF_STATUS_HAS(&u->retry.on_status, 429));
    ASSERT_EQ(u->retry.backoff_base_ms, 50);
    ASSERT_EQ(u->retry.backoff_cap_ms, 1000);
    ASSERT_EQ(u->retry.body_max, 1048576);
    ASSERT_EQ(u->retry.budget_pct, 10);
    ASSERT_EQ(u->retry.budget_min_per_s, 5);
    ASSERT(u->breaker.enabled);
    ASSERT_EQ(u->breaker.failures, 4);
    ASSERT_EQ(u->breaker.ratio_pct, 40);
    ASSERT_EQ(u->breaker.window_ms, 20000);
    ASSERT_EQ(u->breaker.min_requests, 10);
    ASSERT_EQ(u->breaker.open_ms, 5000);
    ASSERT_EQ(u->breaker.max_open_ms, 60000);
    ASSERT_EQ(u->breaker.half_open, 2);
    ASSERT(CONF_STATUS_HAS(&u->breaker.on, 503));
    ASSERT(CONF_STATUS_HAS(&u->breaker.on, 429));
    ASSERT(!CONF_STATUS_HAS(&u->breaker.on, 500));
    ASSERT_STR_EQ(u->health.path, "/healthz");
    ASSERT_EQ(u->health.interval_ms, 1000);
    ASSERT_EQ(u->health.timeout_ms, 500);
    ASSERT_EQ(u->health.rise, 1);
    ASSERT_EQ(u->health.fall, 2);
    const struct conf_route *r = &c->servers[0].routes[0];
    ASSERT_EQ(r->deadline_ms, 3000);
    ASSERT(r->fallback == &c->upstreams[1]);
    ASSERT(r->retry_non_idempotent);
    assert_round_trip(c);
    conf_unref(c);
}

TEST(breaker_defaults_when_named)
{
    struct conf *c = load_ok("upstream u { server 127.0.0.1:81; breaker on; }\n"
                             "server { listen 127.0.0.1:8080; route / { upstream u; } }\n");
    const struct conf_breaker *b = &c->upstreams[0].breaker;
    ASSERT(b->enabled);
    ASSERT_EQ(b->failures, 5);
    ASSERT_EQ(b->ratio_pct, 50);
    ASSERT_EQ(b->half_open, 3);
    ASSERT(CONF_STATUS_HAS(&b->on, 429) && CONF_STATUS_HAS(&b->on, 500) && CONF_STATUS_HAS(&b->on, 504));
    ASSERT(!CONF_STATUS_HAS(&b->on, 501));
    assert_round_trip(c);
    conf_unref(c);
}

TEST(resilience_errors)
{
    static const struct error_case cases[] = {
        {BASE "upstream v { server 1.2.3.4:80; retry 11; }\n", "t.conf:3: retry: 11 is out of range (0..10)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry 1 on=connect,bogus; }\n",
         "t.conf:3: retry: invalid on= item \"bogus\" (expected connect, timeout, reset or a 4xx or 5xx status)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry 1 on=200; }\n",
         "t.conf:3: retry: invalid on= item \"200\" (expected connect, timeout, reset or a 4xx or 5xx status)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry 1 backoff=2s..1s; }\n",
         "t.conf:3: retry: backoff base 2s is above its cap 1s\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry 1 backoff=2s; }\n",
         "t.conf:3: retry: invalid backoff \"2s\" (expected BASE..CAP, e.g. 100ms..2s)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry 1 tries=3; }\n",
         "t.conf:3: retry: unknown parameter \"tries=3\" (on=, backoff=)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry_budget 20; }\n",
         "t.conf:3: retry_budget: invalid percentage \"20\" (expected N%)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry_budget 120%; }\n",
         "t.conf:3: retry_budget: 120 is out of range (0..100)\n"},
        {BASE "upstream v { server 1.2.3.4:80; retry_budget 20% min=5; }\n",
         "t.conf:3: retry_budget: invalid parameter \"min=5\" (expected min=N/s)\n"},
        {BASE "upstream v { server 1.2.3.4:80; breaker failures=x; }\n",
         "t.conf:3: breaker failures: invalid number \"x\": expected a number\n"},
        {BASE "upstream v { server 1.2.3.4:80; breaker open=1m max_open=10s; }\n",
         "t.conf:3: breaker: max_open is shorter than open\n"},
        {BASE "upstream v { server 1.2.3.4:80; breaker failures=0 ratio=0%; }\n",
         "t.conf:3: breaker: failures=0 and ratio=0% would never open it (say `breaker off`)\n"},
        {BASE "upstream v { server 1.2.3.4:80; breaker on=connect; }\n",
         "t.conf:3: breaker: invalid on= item \"connect\" (expected a 4xx or 5xx status)\n"},
        {BASE "upstream v { server 1.2.3.4:80; breaker speed=1; }\n",
         "t.conf:3: breaker: unknown parameter \"speed=1\" (failures=, ratio=, window=, min=, open=, max_open=, "
         "half_open=, on=, or a lone on/off)\n"},
        {BASE "upstream v { server 1.2.3.4:80; health_check health; }\n",
         "t.conf:3: health_check: invalid path \"health\" (must start with \"/\", no spaces)\n"},
        {BASE "upstream v { server 1.2.3.4:80; health_check /h rise=0; }\n",
         "t.conf:3: health_check rise: 0 is out of range (1..100)\n"},
        {BASE "upstream v { server 1.2.3.4:80; health_check /h every=1s; }\n",
         "t.conf:3: health_check: unknown parameter \"every=1s\" (interval=, timeout=, rise=, fall=)\n"},
        {BASE "server { listen 9000; route / { upstream u; fallback nope; } }\n",
         "t.conf:3: unknown upstream \"nope\"\n"},
        {BASE "server { listen 9000; route / { upstream u; deadline 5; } }\n",
         "t.conf:3: deadline: invalid duration \"5\": a unit is required: ms, s, m, h or d\n"},
    };
    CHECK_ERROR_CASES(cases);
}

TEST_MAIN()
