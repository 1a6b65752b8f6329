/* SPDX-License-Identifier: MIT */
/*
 * redis: one asynchronous Redis connection bound to one libuv loop (the
 * hiredis async API, its socket watched by a uv_poll_t), with the things
 * hiredis 0.14 does not do: per-command timeouts, reconnection and bounds.
 *
 * Design.
 * - hiredis 0.14 has no async timeouts, so every command gets a deadline
 *   (now + timeout) and the connection keeps one uv_timer armed at the
 *   oldest pending deadline (all commands share one timeout and replies
 *   come back in order, so the oldest is the first to expire).  When it
 *   fires, the connection is stuck: every pending command fails with
 *   -ETIMEDOUT and the connection is dropped and made again.  The connect
 *   itself (and the SELECT of a database) is timed the same way.
 * - While the connection is not up (connecting, or waiting to reconnect)
 *   commands are refused at once with -ENOTCONN, never queued: the caller
 *   skips Redis instead of waiting for it.  Reconnects back off
 *   exponentially from 100 ms to 5 s, and go back to 100 ms once the server
 *   answers a command (not merely accepts a connection: a stopped server
 *   whose kernel still accepts keeps backing off).
 * - In-flight commands are capped (REDIS_MAX_INFLIGHT, and their argument
 *   bytes by REDIS_MAX_INFLIGHT_BYTES): past either, -EBUSY.
 * - hiredis connects with a blocking getaddrinfo for host names, so only
 *   numeric addresses are accepted (conf resolves names at load).
 * - The same uv_timer serves the command deadlines, the connect deadline and
 *   the reconnect backoff (the states never overlap), so a connection owns
 *   one timer plus the poll handle of its current socket.
 *
 * Threading: everything runs on the loop's thread, except
 * redis_conn_get_stats, which any thread may call while the connection
 * exists (the counters are relaxed atomics with a single writer).
 */
#ifndef SLUICE_REDIS_H
#define SLUICE_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct redisReply;
struct redis_conn;

/* Commands in flight on one connection; more get -EBUSY. */
#define REDIS_MAX_INFLIGHT 1024
/* Argument bytes of the commands in flight; more get -EBUSY, so a burst of
 * large SETs on a slow link cannot buffer without bound. */
#define REDIS_MAX_INFLIGHT_BYTES (64u << 20)
/* Reconnect backoff: doubles from MIN up to MAX. */
#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 5000
/* The connect (and SELECT) deadline is the command timeout, but never less
 * than this: a handshake costs a round trip more than a command. */
#define REDIS_CONNECT_TIMEOUT_MIN_MS 250

/* Completion of a command, called exactly once on the loop thread, never
 * before redis_command_argv returned.  status is 0 with the reply (which may
 * be a Redis error reply: check reply->type), or a negative errno with reply
 * NULL: -ETIMEDOUT (no reply within the timeout), -ECONNRESET (the
 * connection broke first), -ECANCELED (redis_conn_destroy).  reply is valid
 * only during the call.  The callback may issue commands or destroy the
 * connection. */
typedef void (*redis_reply_cb)(void *arg, int status, const struct redisReply *reply);

/* Counters since creation; commands counts those accepted, errors those that
 * got no reply or an error reply plus those refused (-ENOTCONN, -EBUSY),
 * timeouts those failed with -ETIMEDOUT, reconnects the connection attempts
 * after the first. */
struct redis_stats {
    uint64_t commands, errors, timeouts, reconnects;
};

/* Creates a connection to ip:port (a numeric IPv4 or IPv6 address, never a
 * name) using database db, each command allowed timeout_ms, and starts
 * connecting at once.  Call on loop's thread.  NULL with errno EINVAL (ip
 * not numeric, port or timeout 0) or ENOMEM.  A first connect that fails
 * is not an error: the connection retries with backoff. */
struct redis_conn *redis_conn_create(uv_loop_t *loop, const char *ip, uint16_t port, unsigned db,
                                     uint64_t timeout_ms);

/* Starts tearing c down: every pending command completes with -ECANCELED
 * (before this returns, or, when called from a reply callback, right after
 * that callback returns), and c is freed once hiredis has let go of its
 * context and the timer is closed, in a later loop iteration; the loop must
 * run until then.  Safe from any callback of c.  Call once. */
void redis_conn_destroy(struct redis_conn *c);

/* Sends a command (argv[i] is argvlen[i] bytes; hiredis copies them, so they
 * need not outlive the call).  Returns 0 when accepted: cb then runs exactly
 * once.  Otherwise cb never runs and the result is -ENOTCONN (not connected:
 * connecting or backing off), -ECANCELED (being destroyed), -EBUSY (too much
 * in flight),
 * -EINVAL (argc < 1, or a pub/sub or MONITOR command, whose replies do not
 * pair with requests) or -ENOMEM. */
int redis_command_argv(struct redis_conn *c, int argc, const char **argv, const size_t *argvlen,
                       redis_reply_cb cb, void *arg);

/* Whether commands are accepted now (loop thread). */
bool redis_conn_is_up(const struct redis_conn *c);

/* Any thread, while c exists. */
void redis_conn_get_stats(const struct redis_conn *c, struct redis_stats *out);

#endif
