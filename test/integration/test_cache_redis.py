# SPDX-License-Identifier: MIT
"""The cache's Redis tier through the real binary: two sluice instances share entries through a real
redis-server on loopback, and Redis going away (and coming back) never stops the proxy from serving."""

import os
import shutil
import signal
import time

from harness import Env, Proc, Sluice, check, conf_block, eq, free_port, port_open, test, tmp_path, wait_until


class Redis:
    """A private redis-server on a free loopback port (no persistence)."""

    def __init__(self, port=None):
        exe = shutil.which("redis-server")
        check(exe is not None, "redis-server is installed (scripts/deps)")
        self.port = port or free_port()
        self.dir = tmp_path("redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = Proc([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", self.dir], name="redis")
        wait_until(lambda: port_open(self.port), 10, what="redis-server listening")

    def kill(self):
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(5)


def conf_for(env, redis_port, port, admin_port):
    return ("workers 2;\nerror_log stderr info;\n"
            + "redis redis://127.0.0.1:%d { timeout 100ms; }\n" % redis_port
            + conf_block("admin", "listen 127.0.0.1:%d;" % admin_port)
            + conf_block("cache main", "memory 16m;\nredis on;")
            + conf_block("upstream origin", "server %s;" % env.origin.addr)
            + conf_block("server", "listen 127.0.0.1:%d;\n%s" % (port, conf_block("route /", "upstream origin;\ncache main;"))))


class Pair:
    """One origin, one Redis, sluice A (env.sluice) and sluice B sharing the Redis."""

    def __init__(self):
        self.redis = Redis()
        self.a = Env(lambda env: conf_for(env, self.redis.port, env.port, env.admin_port))
        self.b_port, self.b_admin = free_port(), free_port()
        self.b = Sluice(conf_for(self.a, self.redis.port, self.b_port, self.b_admin), ports=[self.b_port],
                        admin_port=self.b_admin)

    def get(self, which, target):
        with self.a.client(self.a.port if which == "a" else self.b_port) as c:
            return c.request("GET", target)

    def origin_requests(self):
        return self.a.origin.count()["requests"] - 1


def route_cache(stats):
    return next(iter(stats["routes"].values())).get("cache", {})


@test
def two_instances_share_entries_through_redis():
    p = Pair()
    before = p.origin_requests()
    r1 = p.get("a", "/hello?shared=1")
    eq(r1.header("X-Cache"), "MISS", "A fetches from the origin")
    time.sleep(0.3)  # the write to Redis is fire-and-forget
    r2 = p.get("b", "/hello?shared=1")
    eq(r2.header("X-Cache"), "HIT", "B answers from Redis")
    eq(r2.body, r1.body, "same body")
    # minus one: the count query that took `before`
    eq(p.origin_requests() - before - 1, 1, "one origin request for both instances")
    check(route_cache(p.b.stats()).get("redis_hit", 0) >= 1, "B counts the Redis hit: %s" % route_cache(p.b.stats()))
    check(p.b.stats()["redis_tier"]["hits"] >= 1, "redis_tier stats")


@test
def redis_down_means_the_origin_answers_and_the_tier_comes_back():
    p = Pair()
    p.redis.kill()
    start = time.time()
    r = p.get("a", "/hello?down=1")
    eq(r.status, 200, "served while Redis is down")
    check(time.time() - start < 1.0, "without waiting on Redis (%.3fs)" % (time.time() - start))
    eq(p.get("a", "/hello?down=1").header("X-Cache"), "HIT", "the memory tier still works")
    check(route_cache(p.a.sluice.stats()).get("redis_error", 0) >= 1, "Redis errors counted: %s" % route_cache(p.a.sluice.stats()))
    # Redis returns on the same port: the workers reconnect (backoff up to 5 s) and share again
    p.redis = Redis(port=p.redis.port)

    def shared_again():
        t = "/hello?back=%f" % time.time()
        p.get("a", t)
        time.sleep(0.1)
        return p.get("b", t).header("X-Cache") == "HIT"

    wait_until(shared_again, 15, interval=0.3, what="the tier works again after Redis came back")
