/* SPDX-License-Identifier: MIT */
/*
 * limit_redis: global limits — one Lua script checks every global limit of
 * a request in one round trip (see limit.h).
 *
 * The script reads the server's clock (TIME), so instances whose clocks
 * disagree still share one timeline, runs GCRA on each key (a TAT in
 * microseconds stored as a plain integer with a PX expiry at the TAT, after
 * which the key holds nothing a fresh key would not), and writes the new
 * TATs only when every limit allows: a request refused by one limit costs
 * nothing in the others.  It is run by its SHA-1 (EVALSHA); a server that
 * does not know it yet answers NOSCRIPT and gets it once with EVAL, which
 * also caches it there for every later EVALSHA of every instance.
 *
 * Threading: the redis connection's loop thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "common/log.h"
#include "common/redis.h"
#include "limit/limit.h"

#define KEY_PREFIX "sluice:limit:"

static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local out, tats, ok = {}, {}, 1\n"
    "for i = 1, #KEYS do\n"
    "  local iv, cap = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])\n"
    "  local tat = tonumber(redis.call('GET', KEYS[i])) or 0\n"
    "  if tat < now then tat = now end\n"
    "  local nxt, win = tat + iv, cap * iv\n"
    "  if nxt - now > win then\n"
    "    ok = 0\n"
    "    out[3 * i - 2], out[3 * i - 1], out[3 * i] = 0, tat - now, nxt - now - win\n"
    "  else\n"
    "    tats[i] = nxt\n"
    "    out[3 * i - 2], out[3 * i - 1], out[3 * i] = math.floor((win - (nxt - now)) / iv), nxt - now, 0\n"
    "  end\n"
    "end\n"
    "if ok == 1 then\n"
    "  for i = 1, #KEYS do\n"
    "    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)\n"
    "  end\n"
    "end\n"
    "table.insert(out, 1, ok)\n"
    "return out\n";

static pthread_once_t sha_once = PTHREAD_ONCE_INIT;
static char script_sha[41];

static void sha_init(void)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_Digest(script, sizeof(script) - 1, md, &len, EVP_sha1(), NULL);
    for (unsigned i = 0; i < 20; i++)
        snprintf(script_sha + 2 * i, 3, "%02x", md[i]);
}

/* EVALSHA|EVAL, script, numkeys, keys, then interval and capacity per key. */
#define ARGS_MAX (3 + 3 * LIMIT_ROUTE_MAX)
#define KEY_MAX  (sizeof(KEY_PREFIX) + 256 + 33)

struct check {
    limit_redis_cb cb;
    void *arg;
    struct redis_conn *r;
    size_t n;
    bool is_retry; /* sent again with EVAL after NOSCRIPT */
    int argc;
    const char *argv[ARGS_MAX];
    size_t argvlen[ARGS_MAX];
    char keys[LIMIT_ROUTE_MAX][KEY_MAX];
    char nums[LIMIT_ROUTE_MAX * 2 + 1][24];
};

static uint64_t us_to_ms_up(long long us)
{
    return us <= 0 ? 0 : ((uint64_t)us + 999) / 1000;
}

static void on_reply(void *arg, int status, const struct redisReply *reply)
{
    struct check *ck = arg;
    struct limit_result res[LIMIT_ROUTE_MAX];
    if (status == 0 && reply->type == REDIS_REPLY_ERROR && !ck->is_retry &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        ck->is_retry = true;
        ck->argv[0] = "EVAL";
        ck->argvlen[0] = 4;
        ck->argv[1] = script;
        ck->argvlen[1] = sizeof(script) - 1;
        status = redis_command_argv(ck->r, ck->argc, ck->argv, ck->argvlen, on_reply, ck);
        if (status == 0)
            return;
    } else if (status == 0 && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 + 3 * ck->n)) {
        LOG_RATELIMITED(LOG_WARN, "limit", "redis: unexpected answer to the limit script: %.100s",
                        reply->type == REDIS_REPLY_ERROR ? reply->str : "not an array of the right size");
        status = -EPROTO;
    }
    if (status != 0) {
        ck->cb(ck->arg, status, NULL, 0);
        free(ck);
        return;
    }
    bool is_allowed = reply->element[0]->integer == 1;
    for (size_t i = 0; i < ck->n; i++) {
        redisReply *const *e = reply->element + 1 + 3 * i;
        res[i] = (struct limit_result){
            .is_allowed = is_allowed || e[2]->integer == 0,
            .limit = strtoull(ck->nums[2 * i + 2], NULL, 10),
            .remaining = e[0]->integer > 0 ? (uint64_t)e[0]->integer : 0,
            .reset_ms = us_to_ms_up(e[1]->integer),
            .retry_ms = us_to_ms_up(e[2]->integer),
        };
    }
    ck->cb(ck->arg, 0, res, ck->n);
    free(ck);
}

int limit_redis_check(struct redis_conn *r, struct limit *const *ls, const struct limit_key *keys, size_t n,
                      limit_redis_cb cb, void *arg)
{
    if (n == 0 || n > LIMIT_ROUTE_MAX)
        return -EINVAL;
    pthread_once(&sha_once, sha_init);
    struct check *ck = malloc(sizeof(*ck));
    if (ck == NULL)
        return -ENOMEM;
    ck->cb = cb;
    ck->arg = arg;
    ck->r = r;
    ck->n = n;
    ck->is_retry = false;
    int a = 0;
    ck->argv[a] = "EVALSHA";
    ck->argvlen[a++] = 7;
    ck->argv[a] = script_sha;
    ck->argvlen[a++] = 40;
    ck->argvlen[a] = (size_t)snprintf(ck->nums[0], sizeof(ck->nums[0]), "%zu", n);
    ck->argv[a++] = ck->nums[0];
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(ck->keys[i], KEY_MAX, KEY_PREFIX "%.256s:", limit_name(ls[i]));
        for (size_t j = 0; j < sizeof(keys[i].b); j++)
            len += snprintf(ck->keys[i] + len, KEY_MAX - (size_t)len, "%02x", keys[i].b[j]);
        ck->argv[a] = ck->keys[i];
        ck->argvlen[a++] = (size_t)len;
    }
    for (size_t i = 0; i < n; i++) {
        char *iv = ck->nums[2 * i + 1], *cap = ck->nums[2 * i + 2];
        ck->argvlen[a] = (size_t)snprintf(iv, 24, "%llu", (unsigned long long)limit_interval_us(ls[i]));
        ck->argv[a++] = iv;
        ck->argvlen[a] = (size_t)snprintf(cap, 24, "%llu", (unsigned long long)limit_capacity(ls[i]));
        ck->argv[a++] = cap;
    }
    ck->argc = a;
    int rc = redis_command_argv(r, a, ck->argv, ck->argvlen, on_reply, ck);
    if (rc != 0)
        free(ck);
    return rc;
}
