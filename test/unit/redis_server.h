/* SPDX-License-Identifier: MIT */
/*
 * What the Redis tests share: a real redis-server, started on a free
 * loopback port with a temp dir, no persistence, and killed with the test
 * process (PDEATHSIG), so a failed or timed-out case leaves nothing behind;
 * and a libuv loop run in slices until a condition holds or time is up.
 * Blocking calls are fine here: this is test code, never a loop thread.
 */
#ifndef SLUICE_TEST_REDIS_SERVER_H
#define SLUICE_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "test/unit/test.h"

struct redis_server {
    pid_t pid;
    uint16_t port;
    char dir[64];
};

static uint16_t redis_server_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    ASSERT(fd >= 0);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ASSERT_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A blocking client for checks; NULL when the server does not answer. */
static redisContext *redis_server_client(const struct redis_server *s)
{
    struct timeval tv = {1, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (rc == NULL || rc->err) {
        redisFree(rc);
        return NULL;
    }
    redisSetTimeout(rc, tv);
    return rc;
}

static void redis_server_wait_ready(const struct redis_server *s)
{
    for (int i = 0; i < 500; i++) {
        redisContext *rc = redis_server_client(s);
        redisReply *r = rc ? redisCommand(rc, "PING") : NULL;
        bool is_ready = r != NULL && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        redisFree(rc);
        if (is_ready)
            return;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    TEST_FAIL("redis-server on port %u did not answer", s->port);
}

/* Starts (or, with s->port and s->dir set, restarts) the server. */
static void redis_server_run(struct redis_server *s)
{
    char port[8], log[96];
    snprintf(port, sizeof(port), "%u", s->port);
    snprintf(log, sizeof(log), "%s/redis.log", s->dir);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", s->dir, "--logfile", log, (char *)NULL);
        fprintf(stderr, "cannot run redis-server\n");
        _exit(127);
    }
    s->pid = pid;
    redis_server_wait_ready(s);
}

static void redis_server_start(struct redis_server *s)
{
    snprintf(s->dir, sizeof(s->dir), "/tmp/sluice-redis.XXXXXX");
    ASSERT(mkdtemp(s->dir) != NULL);
    s->port = redis_server_free_port();
    redis_server_run(s);
}

/* SIGKILL, as a crash or an OOM kill would. */
static void redis_server_kill(struct redis_server *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

static void redis_server_stop(struct redis_server *s)
{
    char log[96];
    redis_server_kill(s);
    snprintf(log, sizeof(log), "%s/redis.log", s->dir);
    unlink(log);
    rmdir(s->dir);
}

/* Runs a command on a fresh blocking connection; the reply is the caller's
 * (freeReplyObject). */
static redisReply *redis_server_command(const struct redis_server *s, const char *fmt, ...)
{
    redisContext *rc = redis_server_client(s);
    ASSERT(rc != NULL);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    redisFree(rc);
    ASSERT(r != NULL);
    return r;
}

/* ---- the loop ---- */

struct test_loop {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps uv_run(UV_RUN_ONCE) returning every few ms */
};

static void test_loop_tick(uv_timer_t *t)
{
}

static void test_loop_init(struct test_loop *t)
{
    ASSERT_EQ(uv_loop_init(&t->loop), 0);
    uv_timer_init(&t->loop, &t->tick);
    uv_timer_start(&t->tick, test_loop_tick, 2, 2);
}

/* Runs the loop until done(arg) or ms have passed; returns done(arg). */
static bool test_loop_run_until(struct test_loop *t, bool (*done)(void *), void *arg, uint64_t ms)
{
    uv_update_time(&t->loop);
    uint64_t end = uv_now(&t->loop) + ms;
    while (!done(arg) && uv_now(&t->loop) < end)
        uv_run(&t->loop, UV_RUN_ONCE);
    return done(arg);
}

static bool test_loop_never(void *arg)
{
    return false;
}

/* Runs the loop for ms. */
static void test_loop_run_for(struct test_loop *t, uint64_t ms)
{
    test_loop_run_until(t, test_loop_never, NULL, ms);
}

/* Closes the tick, lets every other handle finish closing (within a second)
 * and checks the loop closes clean: nothing left open or leaked. */
static void test_loop_close(struct test_loop *t)
{
    uv_close((uv_handle_t *)&t->tick, NULL);
    for (int i = 0; i < 1000 && uv_run(&t->loop, UV_RUN_NOWAIT) != 0; i++)
        nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
    ASSERT_EQ(uv_loop_close(&t->loop), 0);
}

#endif
