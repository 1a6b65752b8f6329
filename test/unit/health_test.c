/* SPDX-License-Identifier: MIT */
/* Included, not linked, to watch the per-server run counters between checks. */
#include "upstream/health.c"

#include <arpa/inet.h>
#include <stdio.h>

#include "test/unit/test.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

/* The forked cases end with _exit, which skips LeakSanitizer's exit check:
 * ask for it where a case must prove everything was freed. */
static void assert_no_leaks(void)
{
#if defined(__SANITIZE_ADDRESS__)
    ASSERT_EQ(__lsan_do_recoverable_leak_check(), 0);
#endif
}

/* ---- a tiny HTTP responder on the same loop ---- */

enum mode { ANSWER_200, ANSWER_503, CLOSE_AT_ONCE, SILENT };

struct responder {
    uv_tcp_t server;
    enum mode mode;
    int accepted;
    int open_conns;
    char last_request[512];
    uint16_t port;
};

struct rconn {
    uv_tcp_t tcp;
    uv_write_t write;
    struct responder *r;
    char buf[512];
    size_t len;
};

static void rconn_closed(uv_handle_t *h)
{
    struct rconn *c = h->data;
    c->r->open_conns--;
    free(c);
}

static void rconn_written(uv_write_t *req, int status)
{
    struct rconn *c = req->data;
    uv_close((uv_handle_t *)&c->tcp, rconn_closed);
}

static void rconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct rconn *c = h->data;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - 1 - c->len));
}

static void rconn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct rconn *c = s->data;
    if (nread < 0) {
        uv_close((uv_handle_t *)&c->tcp, rconn_closed);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    if (strstr(c->buf, "\r\n\r\n") == NULL)
        return;
    uv_read_stop(s);
    memcpy(c->r->last_request, c->buf, c->len + 1);
    if (c->r->mode == SILENT)
        return;
    static char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    static char bad[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    uv_buf_t out =
        c->r->mode == ANSWER_200 ? uv_buf_init(ok, sizeof(ok) - 1) : uv_buf_init(bad, sizeof(bad) - 1);
    c->write.data = c;
    uv_write(&c->write, s, &out, 1, rconn_written);
}

static void on_accept(uv_stream_t *server, int status)
{
    struct responder *r = server->data;
    struct rconn *c = calloc(1, sizeof(*c));
    ASSERT(c != NULL);
    c->r = r;
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    r->open_conns++;
    ASSERT_EQ(uv_accept(server, (uv_stream_t *)&c->tcp), 0);
    r->accepted++;
    if (r->mode == CLOSE_AT_ONCE)
        uv_close((uv_handle_t *)&c->tcp, rconn_closed);
    else
        uv_read_start((uv_stream_t *)&c->tcp, rconn_alloc, rconn_read);
}

static void responder_start(uv_loop_t *loop, struct responder *r, enum mode mode)
{
    memset(r, 0, sizeof(*r));
    r->mode = mode;
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    ASSERT_EQ(uv_tcp_init(loop, &r->server), 0);
    r->server.data = r;
    ASSERT_EQ(uv_tcp_bind(&r->server, (struct sockaddr *)&sin, 0), 0);
    ASSERT_EQ(uv_listen((uv_stream_t *)&r->server, 16, on_accept), 0);
    struct sockaddr_in bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&r->server, (struct sockaddr *)&bound, &len);
    r->port = ntohs(bound.sin_port);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, h->type == UV_TCP && h->data != NULL && h->data != arg ? rconn_closed : NULL);
}

/* Closes whatever the responder still holds and checks the loop ends empty. */
static void loop_finish(uv_loop_t *loop, struct responder *r)
{
    uv_walk(loop, close_walk, r);
    uv_run(loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(loop), 0);
}

/* ---- one upstream with one server ---- */

struct fixture {
    uv_loop_t loop;
    struct conf_upstream up;
    struct conf_upstream_server sconf;
    struct upstream_target target;
    struct upstream_group group;
    char name[64];
};

/* Sets up f on an already initialised f->loop, for a server on port. */
static void fixture_init(struct fixture *f, const char *group, uint16_t port)
{
    snprintf(f->name, sizeof(f->name), "127.0.0.1:%u", port);
    f->sconf = (struct conf_upstream_server){.host = "127.0.0.1", .port = port, .name = f->name, .weight = 1};
    f->up.name = (char *)group;
    f->up.health = (struct conf_health_check){
        .path = "/healthz", .interval_ms = 10, .timeout_ms = 300, .rise = 2, .fall = 3};
    f->target.srv = upstream_server_get(group, f->name);
    f->target.conf = &f->sconf;
    struct sockaddr_in *sin = (struct sockaddr_in *)&f->target.addr;
    uv_ip4_addr("127.0.0.1", port, sin);
    f->target.addrlen = sizeof(*sin);
    f->group = (struct upstream_group){.conf = &f->up, .targets = &f->target, .ntargets = 1};
}

typedef bool (*pred_cb)(struct hc_target *t);

/* Runs the loop until pred holds (fails after 10 s). */
static void run_until(uv_loop_t *loop, struct hc_target *t, pred_cb pred)
{
    uint64_t deadline = uv_now(loop) + 10000;
    while (!pred(t)) {
        uv_run(loop, UV_RUN_ONCE);
        ASSERT_LT(uv_now(loop), deadline);
    }
}

static unsigned want;
static bool has_failures(struct hc_target *t)
{
    return t->failures >= want;
}
static bool has_successes(struct hc_target *t)
{
    return t->successes >= want;
}
static bool is_mid_check(struct hc_target *t)
{
    return t->is_in_flight && !t->is_done;
}

static bool is_down(struct fixture *f)
{
    return atomic_load(&f->target.srv->health_down);
}

TEST(fall_and_rise_flip_health_down)
{
    static struct fixture f;
    static struct responder r;
    ASSERT_EQ(uv_loop_init(&f.loop), 0);
    responder_start(&f.loop, &r, ANSWER_200);
    fixture_init(&f, "flip", r.port);
    struct health_checks *hc = health_start(&f.loop, &f.group, 1);
    ASSERT(hc != NULL);
    struct hc_target *t = &hc->targets[0];
    want = 3;
    run_until(&f.loop, t, has_successes);
    ASSERT(!is_down(&f));
    char expect[256];
    snprintf(expect, sizeof(expect),
             "GET /healthz HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-health\r\nConnection: close\r\n\r\n",
             f.name);
    ASSERT_STR_EQ(r.last_request, expect);

    r.mode = ANSWER_503;
    for (want = 1; want < 3; want++) {
        run_until(&f.loop, t, has_failures);
        ASSERT_EQ(t->failures, want);
        ASSERT(!is_down(&f));
    }
    run_until(&f.loop, t, has_failures);
    ASSERT(is_down(&f));
    ASSERT_STR_EQ(t->last_error, "status 5xx");

    r.mode = ANSWER_200;
    want = 1;
    run_until(&f.loop, t, has_successes);
    ASSERT_EQ(t->failures, 0);
    ASSERT(is_down(&f)); /* one success is not enough (rise=2) */
    want = 2;
    run_until(&f.loop, t, has_successes);
    ASSERT(!is_down(&f));

    r.mode = CLOSE_AT_ONCE;
    want = 3;
    run_until(&f.loop, t, has_failures);
    ASSERT(is_down(&f));
    /* closed, reset or broken pipe, as the race between our write and its close goes */
    ASSERT(t->last_error != NULL);

    health_stop(hc);
    loop_finish(&f.loop, &r);
}

TEST(nothing_listening_is_a_failure)
{
    static struct fixture f;
    static struct responder r;
    ASSERT_EQ(uv_loop_init(&f.loop), 0);
    /* a port that was just free: bind, note it, close */
    responder_start(&f.loop, &r, ANSWER_200);
    uint16_t port = r.port;
    uv_close((uv_handle_t *)&r.server, NULL);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    fixture_init(&f, "refused", port);
    f.up.health.fall = 2;
    struct health_checks *hc = health_start(&f.loop, &f.group, 1);
    struct hc_target *t = &hc->targets[0];
    want = 1;
    run_until(&f.loop, t, has_failures);
    ASSERT(!is_down(&f));
    ASSERT_CONTAINS(t->last_error, "refused");
    want = 2;
    run_until(&f.loop, t, has_failures);
    ASSERT(is_down(&f));
    health_stop(hc);
    loop_finish(&f.loop, &r);
}

TEST(silence_times_out)
{
    static struct fixture f;
    static struct responder r;
    ASSERT_EQ(uv_loop_init(&f.loop), 0);
    responder_start(&f.loop, &r, SILENT);
    fixture_init(&f, "silent", r.port);
    f.up.health.timeout_ms = 50;
    f.up.health.fall = 1;
    struct health_checks *hc = health_start(&f.loop, &f.group, 1);
    struct hc_target *t = &hc->targets[0];
    uint64_t start = uv_now(&f.loop);
    want = 1;
    run_until(&f.loop, t, has_failures);
    ASSERT_GE(uv_now(&f.loop) - start, 50);
    ASSERT_STR_EQ(t->last_error, "timed out");
    ASSERT(is_down(&f));
    health_stop(hc);
    loop_finish(&f.loop, &r);
}

TEST(stop_with_a_check_in_flight_frees_everything)
{
    static struct fixture f;
    static struct responder r;
    ASSERT_EQ(uv_loop_init(&f.loop), 0);
    responder_start(&f.loop, &r, SILENT);
    fixture_init(&f, "stop", r.port);
    struct health_checks *hc = health_start(&f.loop, &f.group, 1);
    struct hc_target *t = &hc->targets[0];
    run_until(&f.loop, t, is_mid_check);
    /* wait until the request reached the responder: connected and written */
    uint64_t deadline = uv_now(&f.loop) + 10000;
    while (r.last_request[0] == '\0') {
        uv_run(&f.loop, UV_RUN_ONCE);
        ASSERT_LT(uv_now(&f.loop), deadline);
    }
    ASSERT(is_mid_check(t));
    health_stop(hc);
    /* the loop ends with only the responder's handles to close: hc freed
     * itself (asan's leak check says so) and touched nothing after */
    uv_run(&f.loop, UV_RUN_NOWAIT);
    loop_finish(&f.loop, &r);
    ASSERT(!is_down(&f));
    assert_no_leaks();
}

TEST(stop_right_after_start)
{
    static struct fixture f;
    static struct responder r;
    ASSERT_EQ(uv_loop_init(&f.loop), 0);
    responder_start(&f.loop, &r, ANSWER_200);
    fixture_init(&f, "quick", r.port);
    struct health_checks *hc = health_start(&f.loop, &f.group, 1);
    /* one turn: the first check is connecting */
    uv_run(&f.loop, UV_RUN_NOWAIT);
    ASSERT(is_mid_check(&hc->targets[0]));
    health_stop(hc);
    loop_finish(&f.loop, &r);
    assert_no_leaks();
}

TEST(no_health_check_or_tls_only_is_null)
{
    static struct fixture f;
    ASSERT_EQ(uv_loop_init(&f.loop), 0);
    fixture_init(&f, "none", 1);
    atomic_store(&f.target.srv->health_down, true);
    f.up.health.path = NULL;
    ASSERT(health_start(&f.loop, &f.group, 1) == NULL);
    /* nobody would ever clear it again */
    ASSERT(!is_down(&f));
    f.up.health.path = "/healthz";
    f.sconf.tls = true;
    ASSERT(health_start(&f.loop, &f.group, 1) == NULL);
    health_stop(NULL);
    ASSERT_EQ(uv_loop_close(&f.loop), 0);
}

TEST_MAIN()
