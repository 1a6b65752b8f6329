# SPDX-License-Identifier: MIT
"""Upstream resilience through the real binary: retries with backoff and a budget, the deadline,
replays and idempotency, balancing policies, passive health, circuit breakers with quota, the admin
override and fallbacks — against scripted misbehaving origins on loopback."""

import json
import threading
import time

from harness import (SLOW, Client, Env, Origin, Sluice, check, conf_block, eq, free_port, http_get,
                     sha256_hex, test, wait_until)


class Setup:
    """Origins behind one sluice, with the conf text built from the parts given."""

    def __init__(self, upstream="", route="", servers=None, origins=1, origin_args=(), extra="", workers=1,
                 fallback_origins=0):
        self.origins = [Origin(args=origin_args[i] if i < len(origin_args) else ()) for i in range(origins)]
        self.fallbacks = [Origin() for _ in range(fallback_origins)]
        self.port = free_port()
        self.admin_port = free_port()
        lines = servers if servers is not None else ["server %s;" % o.addr for o in self.origins]
        conf = ("workers %d;\nerror_log stderr info;\n" % workers
                + conf_block("admin", "listen 127.0.0.1:%d;" % self.admin_port)
                + conf_block("upstream u", "\n".join(lines) + "\n" + upstream)
                + (conf_block("upstream f", "\n".join("server %s;" % o.addr for o in self.fallbacks))
                   if self.fallbacks else "")
                + extra
                + conf_block("server", "listen 127.0.0.1:%d;\n" % self.port
                             + conf_block("route /", "upstream u;\n" + route)))
        self.sluice = Sluice(conf, ports=[self.port], admin_port=self.admin_port)

    def get(self, target, headers=()):
        with Client(self.port, timeout=20 * SLOW) as c:
            return c.request("GET", target, headers=headers)

    def request(self, method, target, headers=(), body=None):
        with Client(self.port, timeout=20 * SLOW) as c:
            return c.request(method, target, headers=headers, body=body)

    def stats(self):
        return self.sluice.stats()

    def route(self):
        return next(iter(self.stats()["routes"].values()))

    def server(self, origin):
        return self.stats()["upstreams"]["u"]["servers"][origin.addr]

    def admin_post(self, target):
        with Client(self.admin_port) as c:
            return c.request("POST", target)


def origin_requests(o):
    """Requests the origin served, not counting these queries."""
    o.queries = getattr(o, "queries", 0) + 1
    return o.count()["requests"] - o.queries


@test
def retries_a_503_until_success_with_backoff():
    s = Setup(upstream="retry 3 on=503 backoff=50ms..200ms;")
    t0 = time.monotonic()
    r = s.get("/hello?fail=2&key=a")
    took = time.monotonic() - t0
    eq(r.status, 200, "status after two failures")
    eq(origin_requests(s.origins[0]), 3, "origin requests")
    # full jitter: each wait is within [0, min(cap, base * 2^n)] -> at most 50 + 100 ms
    check(took < 0.15 * SLOW + 0.5, "two retries took %.3fs" % took)
    eq(s.route()["retries"]["done"], 2, "retries counted")


@test
def the_last_real_response_is_passed_on_when_tries_run_out():
    s = Setup(upstream="retry 2 on=503 backoff=1ms..5ms;")
    r = s.get("/hello?fail=10&key=b")
    eq(r.status, 503, "status")
    check("injected failure 3/10" in r.text, "the last try's own body, got %r" % r.text)
    eq(origin_requests(s.origins[0]), 3, "origin requests")


@test
def no_response_at_all_gives_a_502_that_names_the_cause():
    dead = free_port()
    s = Setup(servers=["server 127.0.0.1:%d;" % dead], upstream="retry 2 on=connect backoff=1ms..5ms;")
    r = s.get("/hello")
    eq(r.status, 502, "status")
    check("connect failed" in r.text and "connection refused" in r.text and "try 3" in r.text,
          "body names cause and tries: %r" % r.text)


@test
def a_refused_server_is_skipped_for_another():
    dead = free_port()
    live = [Origin(), Origin()]
    s = Setup(servers=["server 127.0.0.1:%d;" % dead] + ["server %s;" % o.addr for o in live], origins=0,
              upstream="balance round_robin; retry 1 on=connect backoff=1ms..5ms; fail_timeout 30s;")
    codes = [s.get("/hello").status for _ in range(20)]
    eq(codes, [200] * 20, "every request answered")
    st = s.stats()["upstreams"]["u"]["servers"]
    eq(st["127.0.0.1:%d" % dead]["passive_down"], True, "the dead server is marked down")
    eq(sum(origin_requests(o) for o in live), 20, "the live servers served everything")


@test
def a_post_that_reached_the_upstream_is_never_sent_twice():
    s = Setup(upstream="retry 3 on=503,timeout,reset backoff=1ms..5ms;")
    r = s.request("POST", "/sink?fail=5&key=c", body=b"x" * 100)
    eq(r.status, 503, "the origin's own 503")
    eq(origin_requests(s.origins[0]), 1, "origin saw the POST once")
    eq(s.route()["retries"]["unsafe"], 1, "the refused retry is counted")
    r = s.request("POST", "/sink?reset=1", body=b"y" * 100)
    eq(r.status, 502, "reset after the POST reached it")
    eq(origin_requests(s.origins[0]), 2, "still one try per POST")


@test
def a_post_is_retried_when_it_never_reached_the_upstream():
    dead = free_port()
    live = Origin()
    s = Setup(servers=["server 127.0.0.1:%d;" % dead, "server %s;" % live.addr], origins=0,
              upstream="balance round_robin; max_fails 0; retry 1 on=connect backoff=1ms..5ms;")
    body = b"payload" * 50
    for _ in range(4):
        r = s.request("POST", "/sink", body=body)
        eq(r.status, 200, "status")
        eq(r.json()["sha256"], sha256_hex(body), "body arrived whole")
    eq(origin_requests(live), 4, "one POST per request at the live server")


@test
def retry_non_idempotent_replays_the_body_with_one_idempotency_key():
    s = Setup(upstream="retry 2 on=503 backoff=1ms..5ms;", route="retry_non_idempotent on;")
    body = b"0123456789" * 300
    r = s.request("POST", "/echo?fail=1&key=d", body=body)
    eq(r.status, 200, "status after the replay")
    echo = r.json()
    eq(echo["body_sha256"], sha256_hex(body), "the replayed body")
    keys = [v for n, v in echo["headers"] if n.lower() == "idempotency-key"]
    eq(len(keys), 1, "one Idempotency-Key")
    check(keys[0].startswith("sluice-") and len(keys[0]) == 39, "generated key %r" % keys[0])
    r = s.request("POST", "/echo?fail=1&key=e", headers=[("Idempotency-Key", "client-key-1")], body=b"z")
    keys = [v for n, v in r.json()["headers"] if n.lower() == "idempotency-key"]
    eq(keys, ["client-key-1"], "the client's key is kept")
    eq(origin_requests(s.origins[0]), 4, "two tries each")


@test
def a_body_too_large_to_keep_is_not_replayed_and_that_is_counted():
    s = Setup(upstream="retry 2 on=503 backoff=1ms..5ms; retry_body_max 1k;", route="retry_non_idempotent on;")
    r = s.request("POST", "/sink?fail=1&key=f", body=b"b" * 4096)
    eq(r.status, 503, "no replay: the origin's 503")
    eq(origin_requests(s.origins[0]), 1, "one try")
    eq(s.route()["retries"]["unreplayable"], 1, "counted")
    r = s.request("POST", "/sink?fail=1&key=g", body=b"b" * 512)
    eq(r.status, 200, "a small body is replayed")


@test
def the_deadline_bounds_every_try_together():
    s = Setup(upstream="header_timeout 200ms; retry 5 on=timeout backoff=1ms..5ms;", route="deadline 700ms;")
    t0 = time.monotonic()
    r = s.get("/hello?hang=1")
    took = time.monotonic() - t0
    eq(r.status, 504, "status")
    check("deadline" in r.text or "header timeout" in r.text, "body names the cause: %r" % r.text)
    check(0.6 <= took < 1.2 * SLOW, "answered after %.3fs" % took)
    n = origin_requests(s.origins[0])
    check(3 <= n <= 5, "tries within the deadline: %d" % n)


@test
def retry_after_is_honoured_within_the_deadline():
    s = Setup(upstream="retry 2 on=503 backoff=1ms..5ms;", route="deadline 5s;")
    t0 = time.monotonic()
    r = s.get("/hello?fail=1&key=h&header=Retry-After:1")
    took = time.monotonic() - t0
    eq(r.status, 200, "status")
    check(took >= 0.95, "waited for Retry-After: %.3fs" % took)
    # a Retry-After past the deadline is not waited for: the client gets it
    s2 = Setup(upstream="retry 2 on=503 backoff=1ms..5ms;", route="deadline 2s;")
    t0 = time.monotonic()
    r = s2.get("/hello?fail=1&key=i&header=Retry-After:30")
    eq(r.status, 503, "passed on")
    eq(r.header("Retry-After"), "30", "with the server's Retry-After")
    check(time.monotonic() - t0 < 1 * SLOW, "at once")


@test
def the_retry_budget_holds_under_a_total_outage():
    s = Setup(upstream="retry 3 on=503 backoff=1ms..2ms; retry_budget 10% min=1/s;")
    n = 200
    for _ in range(n):
        eq(s.get("/status/503").status, 503, "status")
    got = origin_requests(s.origins[0])
    # first tries + at most max(1/s * 10 s window, 10% of them)
    check(got <= n + max(10, n // 10) + 1, "origin requests %d for %d client requests" % (got, n))
    check(s.route()["retries"]["budget_exhausted"] > 0, "the budget refused retries")


@test
def a_breaker_opens_fails_fast_then_probes_and_closes():
    s = Setup(upstream="breaker failures=3 ratio=0% open=1s half_open=1; retry 0;")
    for _ in range(3):
        eq(s.get("/status/500").status, 500, "failures pass through")
    before = origin_requests(s.origins[0])
    t0 = time.monotonic()
    r = s.get("/hello")
    eq(r.status, 503, "fail fast while open")
    check(time.monotonic() - t0 < 0.2 * SLOW, "at once")
    check(r.header("Retry-After") in ("1", "2"), "Retry-After %r" % r.header("Retry-After"))
    check("circuit breaker is open" in r.text, "body: %r" % r.text)
    eq(origin_requests(s.origins[0]), before, "the upstream was not touched")
    eq(s.server(s.origins[0])["breaker"]["state"], "open", "state in /stats")
    time.sleep(1.1)
    eq(s.server(s.origins[0])["breaker"]["state"], "half_open", "half-open after the open period")
    eq(s.get("/hello").status, 200, "the probe goes through")
    b = s.server(s.origins[0])["breaker"]
    eq(b["state"], "closed", "closed after a good probe")
    eq((b["opened"], b["half_opened"], b["closed"]), (1, 1, 1), "transitions counted")
    check("breaker" in s.sluice.log() and "closed -> open" in s.sluice.log(), "transitions logged")


@test
def a_failed_probe_reopens_for_longer():
    s = Setup(upstream="breaker failures=2 ratio=0% open=500ms max_open=10s half_open=1; retry 0;")
    for _ in range(2):
        s.get("/status/502")
    time.sleep(0.6)
    eq(s.get("/status/502").status, 502, "the probe fails")
    b = s.server(s.origins[0])["breaker"]
    eq(b["state"], "open", "reopened")
    check(700 <= b["retry_in_ms"] <= 1000, "open twice as long: %d ms left" % b["retry_in_ms"])


@test
def a_429_with_a_reset_time_holds_the_server_in_quota():
    s = Setup(upstream="breaker failures=5; retry 0;")
    r = s.get("/status/429?header=Retry-After:1")
    eq(r.status, 429, "passed on")
    b = s.server(s.origins[0])["breaker"]
    eq(b["state"], "quota", "quota state")
    before = origin_requests(s.origins[0])
    r = s.get("/hello")
    eq(r.status, 503, "held while in quota")
    eq(origin_requests(s.origins[0]), before, "not touched")
    time.sleep(1.1)
    eq(s.get("/hello").status, 200, "closed without probes after the reset")
    eq(s.server(s.origins[0])["breaker"]["state"], "closed", "closed")
    # OpenAI's form of the reset time
    s.get("/status/429?header=x-ratelimit-reset-requests:2s")
    eq(s.server(s.origins[0])["breaker"]["state"], "quota", "quota from x-ratelimit-reset-requests")


@test
def a_429_without_a_reset_time_is_a_failure():
    s = Setup(upstream="breaker failures=2 ratio=0%; retry 0;")
    s.get("/status/429")
    eq(s.server(s.origins[0])["breaker"]["state"], "closed", "one failure")
    s.get("/status/429")
    eq(s.server(s.origins[0])["breaker"]["state"], "open", "two failures open it")


@test
def the_admin_forces_a_breaker_open_and_closed():
    s = Setup(upstream="breaker on;")
    key = "u/" + s.origins[0].addr
    r = s.admin_post("/breaker?server=%s&state=open" % key)
    eq(r.status, 200, "force open")
    eq(s.get("/hello").status, 503, "refused while forced open")
    r = s.admin_post("/breaker?server=%s&state=closed" % key)
    eq(r.status, 200, "force closed")
    for _ in range(8):
        s.get("/status/500")
    eq(s.server(s.origins[0])["breaker"]["state"], "closed", "forced closed stays closed")
    eq(s.admin_post("/breaker?server=%s&state=auto" % key).status, 200, "release")
    eq(s.admin_post("/breaker?server=nope&state=open").status, 404, "unknown server")
    eq(s.admin_post("/breaker?server=%s&state=maybe" % key).status, 400, "bad state")


@test
def while_every_server_is_open_the_fallback_upstream_answers():
    s = Setup(upstream="breaker on;", route="fallback f;", fallback_origins=1)
    s.admin_post("/breaker?server=u/%s&state=open" % s.origins[0].addr)
    r = s.get("/hello")
    eq(r.status, 200, "answered by the fallback")
    eq(origin_requests(s.fallbacks[0]), 1, "fallback origin served it")
    eq(origin_requests(s.origins[0]), 0, "primary untouched")


@test
def while_every_server_is_open_a_cached_route_serves_stale():
    s = Setup(upstream="breaker on;", route="cache main;", extra=conf_block("cache main", "memory 8m;"))
    # max-age=2: the origin's Date has whole seconds, so a response can arrive
    # up to a second old; with max-age=1 it could be stale (and not stored) at once
    eq(s.get("/hello?cc=max-age%3D2").status, 200, "filled")
    time.sleep(2.2)
    s.admin_post("/breaker?server=u/%s&state=open" % s.origins[0].addr)
    r = s.get("/hello?cc=max-age%3D2")
    eq(r.status, 200, "stale answer (%r %r)" % (r.text, r.header("Cache-Status")))
    check("breaker-open" in (r.header("Cache-Status") or ""), "Cache-Status %r" % r.header("Cache-Status"))


@test
def health_checks_take_a_failing_server_out_and_bring_it_back():
    a, b = Origin(), Origin()
    s = Setup(servers=["server %s;" % a.addr, "server %s;" % b.addr], origins=0,
              upstream="balance round_robin; health_check /status/200 interval=100ms timeout=200ms rise=2 fall=2;")
    a.proc.signal(__import__("signal").SIGSTOP)
    try:
        wait_until(lambda: s.stats()["upstreams"]["u"]["servers"][a.addr]["health"] == "down", 5 * SLOW,
                   what="the stopped server marked down")
        # counted by sluice: the origin's own count includes the health checks
        served = lambda: s.stats()["servers"]["u/" + b.addr]["requests"]
        before = served()
        for _ in range(10):
            eq(s.get("/hello").status, 200, "answered by the healthy server")
        eq(served() - before, 10, "all to the healthy one")
    finally:
        a.proc.signal(__import__("signal").SIGCONT)
    wait_until(lambda: s.stats()["upstreams"]["u"]["servers"][a.addr]["health"] == "up", 5 * SLOW,
               what="the server back up")


def p99_of(setup, n, threads=4):
    lat = []
    lock = threading.Lock()

    def run():
        with Client(setup.port, timeout=20 * SLOW) as c:
            for _ in range(n // threads):
                t0 = time.monotonic()
                eq(c.get("/hello").status, 200, "status")
                with lock:
                    lat.append(time.monotonic() - t0)
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    lat.sort()
    return lat[int(len(lat) * 0.99) - 1]


@test(timeout=60)
def p2c_gives_the_best_p99_with_one_slow_server():
    results = {}
    for policy in ("round_robin", "least_conn", "p2c"):
        s = Setup(origins=3, origin_args=[("-d", "60")], upstream="balance %s;" % policy)
        p99_of(s, 20)  # warm-up: every server gets latency samples
        results[policy] = p99_of(s, 200)
    print("  # p99 ms: " + ", ".join("%s %.1f" % (k, v * 1000) for k, v in results.items()))
    check(results["p2c"] < results["round_robin"], "p2c p99 below round robin: %r" % results)
    check(results["p2c"] < 0.05, "p2c p99 stays off the slow server: %r" % results)


@test(timeout=120)
def with_22_percent_random_failures_clients_see_over_99_5_percent_success_within_the_budget():
    s = Setup(origins=2, upstream="retry 4 on=503 backoff=1ms..10ms; retry_budget 35% min=5/s;", workers=2)
    n, threads = 2000, 8
    ok = [0]
    lock = threading.Lock()

    def run():
        good = 0
        with Client(s.port, timeout=20 * SLOW) as c:
            for _ in range(n // threads):
                if c.get("/hello?failp=22").status == 200:
                    good += 1
        with lock:
            ok[0] += good
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    upstream = sum(origin_requests(o) for o in s.origins)
    success = ok[0] / n
    extra = upstream / n - 1
    print("  # %d requests: %.2f%% success, upstream load +%.1f%% (budget 35%%)" % (n, success * 100, extra * 100))
    check(success >= 0.995, "success %.4f" % success)
    check(extra <= 0.35, "extra upstream load %.3f" % extra)


@test
def breaker_and_retry_figures_are_in_metrics():
    s = Setup(upstream="breaker failures=2 ratio=0% open=5s; retry 1 on=503 backoff=1ms..2ms;")
    s.get("/status/503")
    s.get("/status/503")
    text = http_get(s.admin_port, "/metrics").text
    server = 'upstream="u",server="%s"' % s.origins[0].addr
    check('sluice_breaker_state{%s,state="open"} 1' % server in text, "open state in /metrics")
    check('sluice_breaker_transitions_total{%s,state="open"} 1' % server in text, "transition counted")
    check('sluice_upstream_server_up{%s} 1' % server in text, "health up")
    check(any(l.startswith("sluice_route_retries_total{") and not l.endswith(" 0") for l in text.splitlines()),
          "retries counted per route")


@test
def the_access_log_carries_retries_and_the_breaker_state():
    log = __import__("harness").tmp_path("access.log")
    s = Setup(upstream="breaker on; retry 2 on=503 backoff=1ms..2ms;", extra="access_log %s json;\n" % log)
    eq(s.get("/hello?fail=2&key=al").status, 200, "status")

    def line():
        try:
            with open(log) as f:
                lines = [json.loads(l) for l in f if l.strip()]
            return lines[-1] if lines else None
        except FileNotFoundError:
            return None
    rec = wait_until(line, 5 * SLOW, what="an access log line")
    eq((rec["status"], rec["retries"], rec["breaker"], rec["limit"]), (200, 2, "closed", None), "the record")
