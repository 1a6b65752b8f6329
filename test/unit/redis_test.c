/* SPDX-License-Identifier: MIT */
#include "common/redis.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "test/unit/redis_server.h"

/* What a command's callback saw. */
struct result {
    int calls;
    int status;
    int type; /* REDIS_REPLY_*, 0 without a reply */
    char str[256];
    size_t len;
    long long integer;
    uint64_t at; /* loop time of the completion */
    uv_loop_t *loop;
};

static void record(void *arg, int status, const struct redisReply *reply)
{
    struct result *r = arg;
    r->calls++;
    r->status = status;
    r->at = uv_now(r->loop);
    if (reply != NULL) {
        r->type = reply->type;
        r->integer = reply->integer;
        r->len = reply->len;
        if (reply->str != NULL)
            memcpy(r->str, reply->str, reply->len < sizeof(r->str) ? reply->len : sizeof(r->str));
    }
}

static bool is_done(void *arg)
{
    return ((struct result *)arg)->calls > 0;
}

static bool is_up(void *arg)
{
    return redis_conn_is_up(arg);
}

/* Sends argv (NUL-terminated strings, NULL-terminated list). */
static int send_argv(struct redis_conn *c, struct result *r, const char *const *argv)
{
    size_t lens[16];
    int argc = 0;
    for (; argv[argc] != NULL; argc++)
        lens[argc] = strlen(argv[argc]);
    return redis_command_argv(c, argc, (const char **)argv, lens, record, r);
}

#define SEND(c, r, ...) send_argv(c, r, (const char *const[]){__VA_ARGS__, NULL})

struct fixture {
    struct test_loop t;
    struct redis_server srv;
    struct redis_conn *c;
};

static void setup(struct fixture *f, unsigned db, uint64_t timeout_ms)
{
    test_loop_init(&f->t);
    redis_server_start(&f->srv);
    f->c = redis_conn_create(&f->t.loop, "127.0.0.1", f->srv.port, db, timeout_ms);
    ASSERT(f->c != NULL);
    ASSERT(test_loop_run_until(&f->t, is_up, f->c, 2000));
}

static void teardown(struct fixture *f)
{
    if (f->c != NULL)
        redis_conn_destroy(f->c);
    test_loop_close(&f->t);
    redis_server_stop(&f->srv);
}

/* Sends and waits up to ms for the reply. */
static struct result call(struct fixture *f, uint64_t ms, const char *const *argv)
{
    struct result r = {.loop = &f->t.loop};
    ASSERT_EQ(send_argv(f->c, &r, argv), 0);
    ASSERT(test_loop_run_until(&f->t, is_done, &r, ms));
    ASSERT_EQ(r.calls, 1);
    return r;
}

#define CALL(f, ...) call(f, 2000, (const char *const[]){__VA_ARGS__, NULL})

/* The connection comes up within ms and answers a PING. */
static void assert_comes_up(struct fixture *f, uint64_t ms)
{
    ASSERT(test_loop_run_until(&f->t, is_up, f->c, ms));
    struct result r = CALL(f, "PING");
    ASSERT_EQ(r.status, 0);
    ASSERT_STR_EQ(r.str, "PONG");
}

TEST(create_rejects_bad_arguments)
{
    struct test_loop t;
    test_loop_init(&t);
    const char *bad[] = {"localhost", "redis.example.com", "127.0.0.1:6379", "", "1.2.3", "::1%lo x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        errno = 0;
        ASSERT(redis_conn_create(&t.loop, bad[i], 6379, 0, 50) == NULL);
        ASSERT_EQ(errno, EINVAL);
    }
    ASSERT(redis_conn_create(&t.loop, "127.0.0.1", 0, 0, 50) == NULL);
    ASSERT(redis_conn_create(&t.loop, "127.0.0.1", 6379, 0, 0) == NULL);
    test_loop_close(&t);
}

TEST(commands_round_trip)
{
    struct fixture f;
    setup(&f, 0, 1000);
    struct result r = CALL(&f, "PING");
    ASSERT_EQ(r.status, 0);
    ASSERT_EQ(r.type, REDIS_REPLY_STATUS);
    ASSERT_STR_EQ(r.str, "PONG");

    /* binary values, NUL bytes included, go through argvlen untouched */
    const char value[] = {'a', 0, 'b', '\r', '\n', (char)0xff};
    const char *argv[] = {"SET", "k", value};
    size_t lens[] = {3, 1, sizeof(value)};
    struct result set = {.loop = &f.t.loop};
    ASSERT_EQ(redis_command_argv(f.c, 3, argv, lens, record, &set), 0);
    ASSERT_EQ(set.calls, 0); /* never before the call returns */
    ASSERT(test_loop_run_until(&f.t, is_done, &set, 2000));
    ASSERT_EQ(set.type, REDIS_REPLY_STATUS);
    r = CALL(&f, "GET", "k");
    ASSERT_EQ(r.type, REDIS_REPLY_STRING);
    ASSERT_EQ(r.len, sizeof(value));
    ASSERT(memcmp(r.str, value, sizeof(value)) == 0);
    r = CALL(&f, "GET", "missing");
    ASSERT_EQ(r.status, 0);
    ASSERT_EQ(r.type, REDIS_REPLY_NIL);

    /* an error reply is a reply: status 0, counted as an error */
    r = CALL(&f, "INCR", "k");
    ASSERT_EQ(r.status, 0);
    ASSERT_EQ(r.type, REDIS_REPLY_ERROR);
    ASSERT_CONTAINS(r.str, "not an integer");
    struct redis_stats st;
    redis_conn_get_stats(f.c, &st);
    ASSERT_EQ(st.commands, 5);
    ASSERT_EQ(st.errors, 1);
    ASSERT_EQ(st.timeouts, 0);
    ASSERT_EQ(st.reconnects, 0);
    teardown(&f);
}

/* Many commands in flight complete in order, each once. */
static int pipelined_next;
static void in_order(void *arg, int status, const struct redisReply *reply)
{
    long long i = (long long)(intptr_t)arg;
    ASSERT_EQ(status, 0);
    ASSERT_EQ(reply->type, REDIS_REPLY_INTEGER);
    ASSERT_EQ(reply->integer, i + 1);
    ASSERT_EQ(pipelined_next, i);
    pipelined_next++;
}

static bool all_in_order(void *arg)
{
    return pipelined_next == 1000;
}

TEST(pipelined_commands_complete_in_order)
{
    struct fixture f;
    setup(&f, 0, 2000);
    const char *argv[] = {"INCR", "n"};
    size_t lens[] = {4, 1};
    for (intptr_t i = 0; i < 1000; i++)
        ASSERT_EQ(redis_command_argv(f.c, 2, argv, lens, in_order, (void *)i), 0);
    ASSERT(test_loop_run_until(&f.t, all_in_order, NULL, 3000));
    teardown(&f);
}

/* A callback may send the next command. */
struct chain {
    struct redis_conn *c;
    int left;
};

static void chain_next(void *arg, int status, const struct redisReply *reply)
{
    struct chain *ch = arg;
    ASSERT_EQ(status, 0);
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    if (--ch->left > 0)
        ASSERT_EQ(redis_command_argv(ch->c, 1, argv, lens, chain_next, ch), 0);
}

static bool chain_done(void *arg)
{
    return ((struct chain *)arg)->left == 0;
}

TEST(callback_sends_the_next_command)
{
    struct fixture f;
    setup(&f, 0, 1000);
    struct chain ch = {f.c, 100};
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    ASSERT_EQ(redis_command_argv(f.c, 1, argv, lens, chain_next, &ch), 0);
    ASSERT(test_loop_run_until(&f.t, chain_done, &ch, 3000));
    teardown(&f);
}

TEST(database_is_selected)
{
    struct fixture f;
    setup(&f, 3, 1000);
    struct result r = CALL(&f, "SET", "in3", "yes");
    ASSERT_EQ(r.type, REDIS_REPLY_STATUS);
    redisReply *rep = redis_server_command(&f.srv, "EXISTS in3"); /* database 0 */
    ASSERT_EQ(rep->integer, 0);
    freeReplyObject(rep);
    redisContext *rc = redis_server_client(&f.srv);
    freeReplyObject(redisCommand(rc, "SELECT 3"));
    rep = redisCommand(rc, "GET in3");
    ASSERT_STR_EQ(rep->str, "yes");
    freeReplyObject(rep);
    redisFree(rc);
    teardown(&f);
}

/* A database the server refuses: never up, commands refused, no crash. */
TEST(database_refused_stays_down)
{
    struct test_loop t;
    struct redis_server srv;
    test_loop_init(&t);
    redis_server_start(&srv);
    struct redis_conn *c = redis_conn_create(&t.loop, "127.0.0.1", srv.port, 100000, 100);
    ASSERT(c != NULL);
    test_loop_run_for(&t, 400);
    ASSERT(!redis_conn_is_up(c));
    struct result r = {.loop = &t.loop};
    ASSERT_EQ(SEND(c, &r, "PING"), -ENOTCONN);
    struct redis_stats st;
    redis_conn_get_stats(c, &st);
    ASSERT_GE(st.reconnects, 1);
    redis_conn_destroy(c);
    test_loop_close(&t);
    redis_server_stop(&srv);
    ASSERT_EQ(r.calls, 0);
}

TEST(refused_while_connecting)
{
    struct fixture f;
    test_loop_init(&f.t);
    redis_server_start(&f.srv);
    f.c = redis_conn_create(&f.t.loop, "127.0.0.1", f.srv.port, 0, 100);
    struct result r = {.loop = &f.t.loop};
    ASSERT_EQ(SEND(f.c, &r, "PING"), -ENOTCONN);
    assert_comes_up(&f, 2000);
    teardown(&f);
}

TEST(rejects_unpaired_and_empty_commands)
{
    struct fixture f;
    setup(&f, 0, 1000);
    struct result r = {.loop = &f.t.loop};
    ASSERT_EQ(SEND(f.c, &r, "SUBSCRIBE", "ch"), -EINVAL);
    ASSERT_EQ(SEND(f.c, &r, "psubscribe", "c*"), -EINVAL);
    ASSERT_EQ(SEND(f.c, &r, "MONITOR"), -EINVAL);
    ASSERT_EQ(redis_command_argv(f.c, 0, NULL, NULL, record, &r), -EINVAL);
    ASSERT_EQ(r.calls, 0);
    r = CALL(&f, "PING");
    ASSERT_EQ(r.status, 0);
    teardown(&f);
}

/* In-flight commands and bytes are capped; the cap frees up as replies come. */
static int capped_done;
static void count_done(void *arg, int status, const struct redisReply *reply)
{
    ASSERT_EQ(status, 0);
    capped_done++;
}

static bool all_capped_done(void *arg)
{
    return capped_done == REDIS_MAX_INFLIGHT;
}

TEST(inflight_is_capped)
{
    struct fixture f;
    setup(&f, 0, 3000);
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    for (int i = 0; i < REDIS_MAX_INFLIGHT; i++)
        ASSERT_EQ(redis_command_argv(f.c, 1, argv, lens, count_done, NULL), 0);
    ASSERT_EQ(redis_command_argv(f.c, 1, argv, lens, count_done, NULL), -EBUSY);
    ASSERT(test_loop_run_until(&f.t, all_capped_done, NULL, 3000));
    struct result r = CALL(&f, "PING");
    ASSERT_EQ(r.status, 0);

    size_t big = REDIS_MAX_INFLIGHT_BYTES + 1;
    char *value = calloc(1, big);
    const char *set[] = {"SET", "big", value};
    size_t set_lens[] = {3, 3, big};
    ASSERT_EQ(redis_command_argv(f.c, 3, set, set_lens, record, &r), -EBUSY);
    free(value);
    struct redis_stats st;
    redis_conn_get_stats(f.c, &st);
    ASSERT_EQ(st.errors, 2); /* the refusals */
    teardown(&f);
}

/* A stopped server: the command fails with -ETIMEDOUT at its deadline, the
 * connection is made again, and it works once the server runs again. */
TEST(timeout_then_recovers)
{
    struct fixture f;
    setup(&f, 0, 100);
    kill(f.srv.pid, SIGSTOP);
    struct result r1 = {.loop = &f.t.loop}, r2 = {.loop = &f.t.loop};
    uv_update_time(&f.t.loop);
    uint64_t start = uv_now(&f.t.loop);
    ASSERT_EQ(SEND(f.c, &r1, "PING"), 0);
    ASSERT_EQ(SEND(f.c, &r2, "GET", "x"), 0);
    ASSERT(test_loop_run_until(&f.t, is_done, &r2, 2000));
    ASSERT_EQ(r1.status, -ETIMEDOUT);
    ASSERT_EQ(r2.status, -ETIMEDOUT);
    ASSERT_EQ(r1.calls, 1);
    ASSERT_GE(r1.at - start, 100);
    ASSERT_LT(r1.at - start, 250);
    struct redis_stats st;
    redis_conn_get_stats(f.c, &st);
    ASSERT_EQ(st.timeouts, 2);
    ASSERT_EQ(st.errors, 2);

    kill(f.srv.pid, SIGCONT);
    bool is_ok = false;
    for (int i = 0; i < 100 && !is_ok; i++) {
        struct result r = {.loop = &f.t.loop};
        if (!test_loop_run_until(&f.t, is_up, f.c, 1000) || SEND(f.c, &r, "PING") != 0)
            continue;
        ASSERT(test_loop_run_until(&f.t, is_done, &r, 1000));
        is_ok = r.status == 0;
    }
    ASSERT(is_ok);
    redis_conn_get_stats(f.c, &st);
    ASSERT_GE(st.reconnects, 1);
    teardown(&f);
}

/* Killed: the command in flight fails at once, new ones are refused with
 * -ENOTCONN, and a restarted server is found again. */
TEST(killed_then_restarted)
{
    struct fixture f;
    setup(&f, 0, 3000);
    struct result blocked = {.loop = &f.t.loop};
    ASSERT_EQ(SEND(f.c, &blocked, "BLPOP", "nothing", "10"), 0);
    test_loop_run_for(&f.t, 50);
    ASSERT_EQ(blocked.calls, 0);
    uv_update_time(&f.t.loop);
    uint64_t start = uv_now(&f.t.loop);
    redis_server_kill(&f.srv);
    ASSERT(test_loop_run_until(&f.t, is_done, &blocked, 1000));
    ASSERT_EQ(blocked.status, -ECONNRESET);
    ASSERT_LT(blocked.at - start, 200);
    ASSERT(!redis_conn_is_up(f.c));
    struct result r = {.loop = &f.t.loop};
    ASSERT_EQ(SEND(f.c, &r, "PING"), -ENOTCONN);

    /* retries back off while it is gone */
    test_loop_run_for(&f.t, 400);
    ASSERT(!redis_conn_is_up(f.c));
    struct redis_stats st;
    redis_conn_get_stats(f.c, &st);
    ASSERT_GE(st.reconnects, 2);
    ASSERT_LE(st.reconnects, 4);

    redis_server_run(&f.srv);
    assert_comes_up(&f, 3000);
    teardown(&f);
}

/* No server at all: down from the start, then up once one appears. */
TEST(no_server_then_server)
{
    struct fixture f;
    test_loop_init(&f.t);
    snprintf(f.srv.dir, sizeof(f.srv.dir), "/tmp/sluice-redis.XXXXXX");
    ASSERT(mkdtemp(f.srv.dir) != NULL);
    f.srv.port = redis_server_free_port();
    f.srv.pid = 0;
    /* a long timeout: a refused connect must be seen as refused, at once,
     * not when the connect deadline ends it */
    f.c = redis_conn_create(&f.t.loop, "127.0.0.1", f.srv.port, 0, 3000);
    ASSERT(f.c != NULL);
    test_loop_run_for(&f.t, 400);
    ASSERT(!redis_conn_is_up(f.c));
    struct redis_stats st;
    redis_conn_get_stats(f.c, &st);
    ASSERT_GE(st.reconnects, 2);
    struct result r = {.loop = &f.t.loop};
    ASSERT_EQ(SEND(f.c, &r, "PING"), -ENOTCONN);
    redis_server_run(&f.srv);
    assert_comes_up(&f, 2000);
    teardown(&f);
}

TEST(ipv6_loopback)
{
    struct test_loop t;
    test_loop_init(&t);
    /* nothing listens on [::1] here: the address is accepted, the connect
     * fails and is retried without a crash */
    struct redis_conn *c = redis_conn_create(&t.loop, "::1", redis_server_free_port(), 0, 100);
    ASSERT(c != NULL);
    test_loop_run_for(&t, 150);
    ASSERT(!redis_conn_is_up(c));
    redis_conn_destroy(c);
    test_loop_close(&t);
}

/* Destroy completes what is pending with -ECANCELED before it returns. */
TEST(destroy_cancels_pending)
{
    struct fixture f;
    setup(&f, 0, 3000);
    struct result a = {.loop = &f.t.loop}, b = {.loop = &f.t.loop};
    ASSERT_EQ(SEND(f.c, &a, "BLPOP", "nothing", "10"), 0);
    ASSERT_EQ(SEND(f.c, &b, "PING"), 0);
    test_loop_run_for(&f.t, 30);
    redis_conn_destroy(f.c);
    f.c = NULL;
    ASSERT_EQ(a.calls, 1);
    ASSERT_EQ(a.status, -ECANCELED);
    ASSERT_EQ(b.calls, 1);
    ASSERT_EQ(b.status, -ECANCELED);
    teardown(&f);
}

/* Destroy from a reply callback: the rest still complete exactly once. */
struct destroyer {
    struct redis_conn *c;
    struct result *others;
    int nothers;
};

static void destroy_in_callback(void *arg, int status, const struct redisReply *reply)
{
    struct destroyer *d = arg;
    ASSERT_EQ(status, 0);
    redis_conn_destroy(d->c);
    /* a command sent now is refused, never queued */
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    ASSERT_EQ(redis_command_argv(d->c, 1, argv, lens, record, &d->others[0]), -ECANCELED);
    for (int i = 0; i < d->nothers; i++)
        ASSERT_EQ(d->others[i].calls, 0);
}

static bool others_done(void *arg)
{
    struct destroyer *d = arg;
    for (int i = 0; i < d->nothers; i++)
        if (d->others[i].calls == 0)
            return false;
    return true;
}

TEST(destroy_from_a_callback)
{
    struct fixture f;
    setup(&f, 0, 3000);
    struct result others[3];
    struct destroyer d = {f.c, others, 3};
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    ASSERT_EQ(redis_command_argv(f.c, 1, argv, lens, destroy_in_callback, &d), 0);
    for (int i = 0; i < 3; i++) {
        others[i] = (struct result){.loop = &f.t.loop};
        ASSERT_EQ(SEND(f.c, &others[i], "BLPOP", "nothing", "10"), 0);
    }
    ASSERT(test_loop_run_until(&f.t, others_done, &d, 1000));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(others[i].calls, 1);
        ASSERT_EQ(others[i].status, -ECANCELED);
    }
    f.c = NULL;
    teardown(&f);
}

/* Destroyed while connecting or backing off: nothing to complete, and the
 * loop closes clean. */
TEST(destroy_while_connecting_or_down)
{
    struct test_loop t;
    test_loop_init(&t);
    struct redis_server srv;
    redis_server_start(&srv);
    struct redis_conn *c = redis_conn_create(&t.loop, "127.0.0.1", srv.port, 0, 100);
    redis_conn_destroy(c);
    c = redis_conn_create(&t.loop, "127.0.0.1", redis_server_free_port(), 0, 100);
    test_loop_run_for(&t, 50);
    ASSERT(!redis_conn_is_up(c));
    redis_conn_destroy(c);
    test_loop_close(&t);
    redis_server_stop(&srv);
}

/* The counters are read from another thread while the loop runs. */
struct reader {
    struct redis_conn *c;
    atomic_bool stop;
    uint64_t last;
};

static void *read_stats(void *arg)
{
    struct reader *rd = arg;
    while (!atomic_load(&rd->stop)) {
        struct redis_stats st;
        redis_conn_get_stats(rd->c, &st);
        ASSERT_GE(st.commands, rd->last);
        rd->last = st.commands;
    }
    return NULL;
}

TEST(stats_from_another_thread)
{
    struct fixture f;
    setup(&f, 0, 2000);
    struct reader rd = {.c = f.c};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, read_stats, &rd), 0);
    pipelined_next = 0;
    const char *argv[] = {"INCR", "n"};
    size_t lens[] = {4, 1};
    for (intptr_t i = 0; i < 1000; i++)
        ASSERT_EQ(redis_command_argv(f.c, 2, argv, lens, in_order, (void *)i), 0);
    ASSERT(test_loop_run_until(&f.t, all_in_order, NULL, 3000));
    atomic_store(&rd.stop, true);
    pthread_join(th, NULL);
    ASSERT_LE(rd.last, 1000);
    teardown(&f);
}

TEST_MAIN()
