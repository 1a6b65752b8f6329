/* SPDX-License-Identifier: MIT */
/*
 * limit: GCRA arithmetic with time moved by hand, the local key table
 * (exactness, bounded keys, expiry, refunds, reloads), in-flight queues, and
 * the limit directives of the conf.
 */
#include "limit/limit.c"

#include <pthread.h>

#include "test/unit/test.h"

#define MS 1000000ull /* ns */

static struct conf *load(const char *text, char **err)
{
    size_t len = 0;
    FILE *f = open_memstream(err, &len);
    struct conf *conf = conf_load_string(text, "t.conf", f);
    fclose(f);
    return conf;
}

static struct conf_limit climit(const char *name, uint64_t rate, uint64_t period_ms, unsigned burst,
                                unsigned max_keys)
{
    return (struct conf_limit){.name = (char *)name, .rate = rate, .period_ms = period_ms, .burst = burst,
                               .max_keys = max_keys, .headers = true};
}

static struct limit_key key_of(struct limit *l, const char *s)
{
    struct limit_key k;
    const char *parts[] = {s};
    size_t lens[] = {strlen(s)};
    limit_key_make(l, parts, lens, 1, &k);
    return k;
}

TEST(gcra_allows_capacity_at_once_then_one_per_interval)
{
    uint64_t tat = 0, t = 10; /* 100/s in ms */
    struct limit_result r;
    for (int i = 0; i < 100; i++) {
        ASSERT(limit_gcra(&tat, 1000, t, 100, &r));
        ASSERT_EQ(r.remaining, 99 - i);
    }
    ASSERT(!limit_gcra(&tat, 1000, t, 100, &r));
    ASSERT_EQ(r.retry_ms, 10);
    ASSERT_EQ(r.remaining, 0);
    ASSERT_EQ(r.reset_ms, 1000);
    ASSERT(!limit_gcra(&tat, 1009, t, 100, &r));
    ASSERT_EQ(r.retry_ms, 1);
    ASSERT(limit_gcra(&tat, 1010, t, 100, &r));
    ASSERT(!limit_gcra(&tat, 1010, t, 100, &r));
    /* idle for a full period: the whole capacity is back */
    for (int i = 0; i < 100; i++)
        ASSERT(limit_gcra(&tat, 3000, t, 100, &r));
    ASSERT(!limit_gcra(&tat, 3000, t, 100, &r));
}

TEST(gcra_capacity_one_is_a_strict_interval)
{
    uint64_t tat = 0;
    struct limit_result r;
    ASSERT(limit_gcra(&tat, 100, 50, 1, &r));
    ASSERT_EQ(r.remaining, 0);
    ASSERT(!limit_gcra(&tat, 149, 50, 1, &r));
    ASSERT(limit_gcra(&tat, 150, 50, 1, &r));
}

TEST(store_is_per_key_and_counts)
{
    struct conf_limit cl = climit("t1", 3, 60000, 1, 1000);
    struct limit *l = limit_get(&cl);
    struct limit_key a = key_of(l, "a"), b = key_of(l, "b");
    struct limit_result r;
    for (int i = 0; i < 4; i++) {
        limit_check(l, &a, 1 * MS, false, &r);
        ASSERT(r.is_allowed);
        ASSERT_EQ(r.limit, 4);
    }
    limit_check(l, &a, 1 * MS, false, &r);
    ASSERT(!r.is_allowed);
    ASSERT_EQ(r.retry_ms, 20000);
    limit_check(l, &b, 1 * MS, false, &r);
    ASSERT(r.is_allowed);
    limit_refund(l, &b);
    limit_check(l, &b, 1 * MS, false, &r);
    ASSERT_EQ(r.remaining, 3); /* the refund gave the first one back */
    limit_shutdown_all();
}

TEST(keys_hash_parts_unambiguously)
{
    struct conf_limit cl = climit("t2", 1, 1000, 0, 100);
    struct limit *l = limit_get(&cl);
    struct limit_key x, y;
    const char *p1[] = {"ab", "c"}, *p2[] = {"a", "bc"};
    size_t l1[] = {2, 1}, l2[] = {1, 2};
    limit_key_make(l, p1, l1, 2, &x);
    limit_key_make(l, p2, l2, 2, &y);
    ASSERT(memcmp(x.b, y.b, sizeof(x.b)) != 0);
    struct conf_limit other = climit("t3", 1, 1000, 0, 100);
    struct limit *m = limit_get(&other);
    struct limit_key z;
    limit_key_make(m, p1, l1, 2, &z);
    ASSERT(memcmp(x.b, z.b, sizeof(x.b)) != 0); /* the limit's name is part of the key */
    limit_shutdown_all();
}

TEST(store_memory_is_bounded_and_idle_keys_expire)
{
    struct conf_limit cl = climit("t4", 1, 1000, 0, 256);
    struct limit *l = limit_get(&cl);
    struct limit_result r;
    char name[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(name, sizeof(name), "k%d", i);
        struct limit_key k = key_of(l, name);
        limit_check(l, &k, 5 * MS, false, &r);
        ASSERT(r.is_allowed);
    }
    size_t n = 0;
    for (unsigned i = 0; i < l->nshards; i++) {
        ASSERT(l->shards[i].n <= l->shards[i].max);
        n += l->shards[i].n;
    }
    ASSERT(n <= 256);
    ASSERT(n >= 200);
    /* a second later every TAT is in the past: a sweep frees them all */
    limit_sweep(l, 5 * MS + 1000 * MS);
    n = 0;
    for (unsigned i = 0; i < l->nshards; i++)
        n += l->shards[i].n;
    ASSERT_EQ(n, 0);
    limit_shutdown_all();
}

TEST(reload_keeps_state_while_the_rate_stays)
{
    struct conf_limit cl = climit("t5", 1, 3600000, 0, 100);
    struct limit *l = limit_get(&cl);
    struct limit_key k = key_of(l, "x");
    struct limit_result r;
    limit_check(l, &k, 1 * MS, false, &r);
    ASSERT(r.is_allowed);
    ASSERT(limit_get(&cl) == l);
    limit_check(l, &k, 2 * MS, false, &r);
    ASSERT(!r.is_allowed);
    struct conf_limit faster = climit("t5", 2, 3600000, 0, 100);
    ASSERT(limit_get(&faster) == l);
    limit_check(l, &k, 3 * MS, false, &r);
    ASSERT(r.is_allowed); /* another rate starts afresh */
    ASSERT_EQ(r.limit, 2);
    limit_shutdown_all();
}

struct racer {
    struct limit *l;
    int allowed;
};

static void *race(void *arg)
{
    struct racer *rc = arg;
    struct limit_key k = key_of(rc->l, "shared");
    struct limit_result r;
    for (int i = 0; i < 5000; i++) {
        limit_check(rc->l, &k, 7 * MS, false, &r);
        rc->allowed += r.is_allowed;
    }
    return NULL;
}

TEST(store_is_exact_under_threads)
{
    struct conf_limit cl = climit("t6", 1000, 3600000, 0, 100);
    struct limit *l = limit_get(&cl);
    struct racer rs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        rs[i] = (struct racer){l, 0};
        pthread_create(&th[i], NULL, race, &rs[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += rs[i].allowed;
    }
    ASSERT_EQ(total, 1000);
    limit_shutdown_all();
}

static int woken;

static void on_wake(struct limit_waiter *w)
{
    woken = (int)(intptr_t)w->owner;
}

TEST(inflight_queue_is_fifo_bounded_and_cancellable)
{
    struct conf_max_inflight m = {.max = 1, .queue = 2, .queue_timeout_ms = 100};
    struct limit_inflight *li = limit_inflight_get("route", "x", &m);
    struct limit_waiter w1 = {.wake = on_wake, .owner = (void *)1}, w2 = {.wake = on_wake, .owner = (void *)2},
                        w3 = {.wake = on_wake, .owner = (void *)3}, w4 = {.wake = on_wake, .owner = (void *)4};
    ASSERT_EQ(limit_inflight_acquire(li, &w1), LIMIT_ADMITTED);
    ASSERT_EQ(limit_inflight_acquire(li, &w2), LIMIT_QUEUED);
    ASSERT_EQ(limit_inflight_acquire(li, &w3), LIMIT_QUEUED);
    ASSERT_EQ(limit_inflight_acquire(li, &w4), LIMIT_FULL);
    limit_inflight_done(li); /* w1 ends: w2 gets the slot */
    ASSERT_EQ(woken, 2);
    ASSERT(limit_inflight_cancel(li, &w2, false)); /* granted already: the caller holds it */
    ASSERT(!limit_inflight_cancel(li, &w3, true)); /* still queued: it leaves */
    ASSERT_EQ(li->nqueued, 0);
    ASSERT_EQ(li->timeouts, 1);
    limit_inflight_done(li); /* w2's slot */
    ASSERT_EQ(li->inflight, 0);
    ASSERT_EQ(limit_inflight_acquire(li, &w4), LIMIT_ADMITTED);
    limit_inflight_done(li);
    limit_shutdown_all();
}

TEST(conf_limit_directives)
{
    char *err = NULL;
    struct conf *c = load("redis redis://127.0.0.1:6379;\n"
                          "trusted_proxies 10.0.0.0/8 ::1;\n"
                          "limit per_key { key header:X-Api-Key,ip; rate 100/m; burst 20; scope global; "
                          "on_redis_error deny; max_keys 500; headers off; }\n"
                          "limit hourly { rate 1000/h; }\n"
                          "upstream u { server 127.0.0.1:81; max_inflight 10; }\n"
                          "server { listen 127.0.0.1:8080; trusted_proxies 127.0.0.1;\n"
                          "  route / { upstream u; limit per_key; limit hourly; max_inflight 25 queue=7 "
                          "queue_timeout=2s; } }\n",
                          &err);
    ASSERT_STR_EQ(err, "");
    free(err);
    ASSERT(c != NULL);
    ASSERT_EQ(c->nlimits, 2);
    const struct conf_limit *l = &c->limits[0];
    ASSERT_EQ(l->nkeys, 2);
    ASSERT_EQ(l->keys[0].kind, CONF_LIMIT_KEY_HEADER);
    ASSERT_STR_EQ(l->keys[0].name, "x-api-key");
    ASSERT_EQ(l->keys[1].kind, CONF_LIMIT_KEY_IP);
    ASSERT_EQ(l->rate, 100);
    ASSERT_EQ(l->period_ms, 60000);
    ASSERT_EQ(l->burst, 20);
    ASSERT_EQ(l->scope, CONF_LIMIT_GLOBAL);
    ASSERT_EQ(l->on_redis_error, CONF_LIMIT_ERR_DENY);
    ASSERT_EQ(l->max_keys, 500);
    ASSERT(!l->headers);
    const struct conf_limit *h = &c->limits[1];
    ASSERT_EQ(h->nkeys, 1);
    ASSERT_EQ(h->keys[0].kind, CONF_LIMIT_KEY_IP);
    ASSERT_EQ(h->max_keys, 100000);
    ASSERT_EQ(h->scope, CONF_LIMIT_LOCAL);
    ASSERT(h->headers);
    ASSERT_EQ(c->trusted_proxies.n, 2);
    ASSERT_EQ(c->trusted_proxies.v[0].bits, 8);
    ASSERT_EQ(c->trusted_proxies.v[1].bits, 128);
    const struct conf_route *r = &c->servers[0].routes[0];
    ASSERT_EQ(r->nlimits, 2);
    ASSERT(r->limits[1] == h);
    ASSERT_EQ(r->max_inflight.max, 25);
    ASSERT_EQ(r->max_inflight.queue, 7);
    ASSERT_EQ(r->max_inflight.queue_timeout_ms, 2000);
    ASSERT_EQ(c->upstreams[0].max_inflight.max, 10);
    ASSERT_EQ(c->upstreams[0].max_inflight.queue, 100);
    ASSERT_EQ(c->upstreams[0].max_inflight.queue_timeout_ms, 5000);
    /* what -t prints loads again to the same text */
    char *p1 = NULL, *p2 = NULL, *err2 = NULL;
    size_t n1 = 0, n2 = 0;
    FILE *f = open_memstream(&p1, &n1);
    conf_print(c, f);
    fclose(f);
    struct conf *again = load(p1, &err2);
    ASSERT_STR_EQ(err2, "");
    f = open_memstream(&p2, &n2);
    conf_print(again, f);
    fclose(f);
    ASSERT_STR_EQ(p1, p2);
    free(p1);
    free(p2);
    free(err2);
    conf_unref(again);
    conf_unref(c);
}

#define BASE "upstream u { server 127.0.0.1:81; }\n"

TEST(conf_limit_errors)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {BASE "limit a { key ip; }\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: limit \"a\" has no rate (rate N/s, N/m, N/h or N/d)\n"},
        {BASE "limit a { rate 10; }\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: rate: invalid rate \"10\" (expected N/s, N/m, N/h or N/d)\n"},
        {BASE "limit a { rate 0/s; }\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: rate: 0 is out of range (1..1000000000)\n"},
        {BASE "limit a { rate 1/s; key cookie:x; }\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: key: invalid part \"cookie:x\" (expected ip, route, header:NAME or query:NAME)\n"},
        {BASE "limit a { rate 1/s; scope global; }\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: scope global: limit \"a\" needs a top-level redis directive (redis redis://HOST:PORT;)\n"},
        {BASE "limit a { rate 1/s; on_redis_error maybe; }\n"
              "server { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: on_redis_error: invalid value \"maybe\" (expected local, allow or deny)\n"},
        {BASE "server { listen 127.0.0.1:8080; route / { upstream u; limit nope; } }\n",
         "t.conf:2: unknown limit \"nope\"\n"},
        {BASE "limit a { rate 1/s; }\nserver { listen 127.0.0.1:8080; route / { upstream u; limit a; limit a; } }\n",
         "t.conf:3: limit \"a\" is repeated in this route\n"},
        {BASE "server { listen 127.0.0.1:8080; route / { upstream u; max_inflight 5 queue=-1; } }\n",
         "t.conf:2: max_inflight queue: invalid number \"-1\": expected a number\n"},
        {BASE "server { listen 127.0.0.1:8080; route / { upstream u; max_inflight 5 wait=1s; } }\n",
         "t.conf:2: max_inflight: invalid option \"wait=1s\" (expected queue=N or queue_timeout=D)\n"},
        {BASE "trusted_proxies 10.0.0.0/33;\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:2: trusted_proxies: invalid address \"10.0.0.0/33\" (expected IP or IP/BITS)\n"},
        {BASE "limit a { rate 1/s; }\nlimit a { rate 2/s; }\nserver { listen 127.0.0.1:8080; route / { upstream u; } }\n",
         "t.conf:3: limit \"a\" is repeated (first at t.conf:2)\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *err = NULL;
        struct conf *c = load(cases[i].text, &err);
        ASSERT(c == NULL);
        ASSERT_STR_EQ(err, cases[i].want);
        free(err);
    }
}

TEST_MAIN()
