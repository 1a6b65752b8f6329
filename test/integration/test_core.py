# SPDX-License-Identifier: MIT
"""The core proxy: HTTP/1.1 semantics, streaming in bounded memory, upstream failures, limits, header
rules, stats, reload and drain.  These assert the contract of CONF.md and the brief, not whatever the
binary does today."""

import hashlib
import os
import re
import subprocess
import time

from harness import (GiB, KiB, MiB, SLOW, SLUICE_BIN, Client, Env, IncompleteResponse, PatternChecker,
                     TestFailure, basic_conf, build_request, check, chunked, conf_block, eq, free_port,
                     http_get, port_open, sha256_hex, shared, test, tmp_path, wait_until)

PROCESS_TIME = re.compile(r"^\d+(\.\d+)?ms$")


def core_conf(env):
    """Server A (env.port): limits small enough to test, fault routes.  Server B: renamed process-time
    header and a single route.  Server C: process_time_header off."""
    env.dead_port = free_port()
    b_port, c_port = env.extra_ports
    return ("workers 2;\nerror_log stderr info;\nshutdown_timeout 5s;\n"
            + conf_block("admin", "listen 127.0.0.1:%d;" % env.admin_port)
            + conf_block("upstream origin", "server %s;\nkeepalive 16;" % env.origin.addr)
            + conf_block("upstream dead", "server 127.0.0.1:%d;\nconnect_timeout 1s;" % env.dead_port)
            + conf_block("upstream impatient", "server %s;\nheader_timeout 1s;" % env.origin.addr)
            + conf_block("server", "\n".join([
                "listen 127.0.0.1:%d;" % env.port,
                "max_uri_size 2k; max_header_size 8k; max_headers 50; max_body_size 1m;",
                conf_block("route /", "upstream origin;"),
                conf_block("route /dead/", "upstream dead;"),
                conf_block("route /impatient/", "upstream impatient;")]))
            + conf_block("server", "listen 127.0.0.1:%d;\nprocess_time_header X-Elapsed;\n%s"
                         % (b_port, conf_block("route /only/", "upstream origin;")))
            + conf_block("server", "listen 127.0.0.1:%d;\nprocess_time_header off;\n%s"
                         % (c_port, conf_block("route /", "upstream origin;"))))


def core():
    return shared("core", lambda: Env(core_conf, extra_ports=2))


def route_stats(stats, port, prefix="/"):
    """The routes entry "<server>/<prefix>" of the server listening on port."""
    found = [v for k, v in stats["routes"].items() if k == "127.0.0.1:%d%s" % (port, prefix)]
    check(len(found) == 1, "one route stats entry for port %d prefix %s in %s" % (port, prefix,
                                                                                   list(stats["routes"])))
    return found[0]


def server_stats(stats, origin):
    key = "origin/" + origin.addr
    check(key in stats["servers"], "servers[%r] in /stats (have %s)" % (key, list(stats["servers"])))
    return stats["servers"][key]


def expect_process_time(r, name="X-Process-Time"):
    v = r.header(name)
    check(v is not None and PROCESS_TIME.match(v), "%s: <float>ms on a %d response, got %r" % (name, r.status, v))


def origin_conn(r):
    """The origin connection serial a response came over (X-Origin-Conn, which must pass through)."""
    v = r.header("X-Origin-Conn")
    check(v is not None, "X-Origin-Conn passed through (headers %s)" % r.headers)
    return v


def wait_origin_requests(e, n):
    """Polls the origin until n requests reached it since its last reset (the polls not counted)."""
    polls = [0]

    def arrived():
        polls[0] += 1
        return e.origin.count()["requests"] - polls[0] >= n
    wait_until(arrived, 5, what="%d request(s) to reach the origin" % n)


def origin_headers(echo):
    """Header names the origin saw (lowercase) -> list of values."""
    out = {}
    for n, v in echo["headers"]:
        out.setdefault(n.lower(), []).append(v)
    return out


# ---------------------------------------------------------------- plain proxying

@test
def get_through_proxy():
    e = core()
    r = e.get("/hello")
    eq(r.status, 200, "status")
    eq(r.body, b"hello from the sluice demo origin\n", "body")
    eq(r.header("Cache-Control"), "public, max-age=60", "origin Cache-Control passes through")
    check(r.has_header("X-Origin-Conn"), "origin headers pass through")
    expect_process_time(r)


@test
def keepalive_reuse_on_one_client_connection():
    e = Env()
    e.origin.reset()
    conns = set()
    with e.client() as c:
        for i in range(50):
            r = c.get("/hello?i=%d" % i)
            eq(r.status, 200, "status of request %d" % i)
            conns.add(origin_conn(r))
    cnt = e.origin.count()
    check(len(conns) <= 2, "50 requests used %d upstream connections" % len(conns))
    check(cnt["connections"] - 1 <= 2, "origin accepted %d connections" % (cnt["connections"] - 1))
    eq(cnt["requests"], 51, "requests reaching the origin (50 + this /count)")


@test
def upstream_pool_reused_across_client_connections():
    e = Env()
    e.get("/hello")
    s0 = server_stats(e.sluice.stats(), e.origin)
    e.origin.reset()
    conns = set()
    for i in range(20):
        with e.client() as c:
            r = c.get("/hello?c=%d" % i)
            eq(r.status, 200, "status")
            conns.add(origin_conn(r))
    check(len(conns) <= 2, "20 client connections used %d upstream connections" % len(conns))
    check(e.origin.count()["connections"] - 1 <= 2, "origin saw new connections")
    s1 = wait_until(lambda: (lambda s: s if s["pool_reuse"] - s0["pool_reuse"] >= 18 else None)(
        server_stats(e.sluice.stats(), e.origin)), 3, what="pool_reuse to count the reuses")
    check(s1["pool_new"] <= 2, "pool_new %d" % s1["pool_new"])


@test
def pipelined_requests_answer_in_order():
    e = core()
    with e.client() as c:
        c.send(build_request("GET", "/slow?ms=300", [("X-Request-Id", "p1")])
               + build_request("GET", "/echo?x=2", [("X-Request-Id", "p2")])
               + build_request("GET", "/hello", [("X-Request-Id", "p3")]))
        rs = [c.read_response() for _ in range(3)]
        eq([r.header("X-Request-Id") for r in rs], ["p1", "p2", "p3"], "order")
        eq([r.status for r in rs], [200, 200, 200], "statuses")
        eq(rs[0].text, "slept 300 ms\n", "first body")
        eq(rs[1].json()["target"], "/echo?x=2", "second body")
        eq(rs[2].body, b"hello from the sluice demo origin\n", "third body")


@test
def chunked_request_body_to_sink():
    e = core()
    data = os.urandom(200 * KiB)
    cuts = [0, 1, 101, 4197, 74197, len(data)]
    pieces = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    body = chunked(pieces).replace(b"\r\n", b";ext=1\r\n", 1)  # a chunk extension on the first size line
    with e.client() as c:
        r = c.request("POST", "/sink", headers=[("Transfer-Encoding", "chunked")], body=body)
        eq(r.status, 200, "status")
        eq(r.json(), {"length": len(data), "sha256": sha256_hex(data)}, "what the origin received")
        eq(c.get("/hello").status, 200, "connection usable after a chunked body")


@test
def chunked_and_sized_response_bodies():
    e = core()
    with e.client() as c:
        for target in ("/bytes?n=300001&chunked=1", "/bytes?n=300001"):
            chk = PatternChecker()
            r = c.request("GET", target, sink=chk)
            eq(r.status, 200, target + " status")
            eq(chk.offset, 300001, target + " body length")


@test
def a_304_with_content_length_has_no_body():
    e = core()
    with e.client() as c:
        r = c.request("GET", "/status/304?header=Content-Length:10")
        eq((r.status, r.body), (304, b""), "304 without body")
        eq(c.get("/hello").status, 200, "the next request on the connection is answered")


@test
def close_delimited_upstream_body_is_rechunked():
    e = core()
    with e.client() as c:
        r = c.get("/bytes?n=100000&eof=1")
        eq(r.status, 200, "status")
        eq(len(r.body), 100000, "whole body")
        eq(r.header("Transfer-Encoding"), "chunked", "re-framed for the client")
        eq(c.get("/hello").status, 200, "the client connection stays usable")


@test
def content_length_upload():
    e = core()
    data = os.urandom(100 * KiB)
    with e.client() as c:
        j = c.request("POST", "/echo", body=data).json()
    eq((j["body_length"], j["body_sha256"]), (len(data), sha256_hex(data)), "body at the origin")
    eq(j["method"], "POST", "method")


# ---------------------------------------------------------------- streaming and memory

def rss_sampler(proc):
    box = {"peak": proc.rss_kb()}

    def sample():
        box["peak"] = max(box["peak"], proc.rss_kb())
    return box, sample


@test(timeout=150)
def download_1gib_in_bounded_memory():
    e = Env()
    eq(e.get("/hello").status, 200, "warm-up")
    rss0 = e.sluice.rss_kb()
    box, sample = rss_sampler(e.sluice)
    chk = PatternChecker()

    def sink(piece):
        before = chk.offset
        chk(piece)
        if before // (32 * MiB) != chk.offset // (32 * MiB):
            sample()
    with e.client(timeout=30) as c:
        r = c.request("GET", "/bytes?n=%d" % GiB, sink=sink)
    eq(r.status, 200, "status")
    eq(chk.offset, GiB, "bytes received")
    growth = box["peak"] - rss0
    check(growth < 64 * 1024, "sluice RSS grew by %d KiB during a 1 GiB download" % growth)


@test(timeout=150)
def upload_1gib_in_bounded_memory():
    e = Env(lambda env: basic_conf(env, server="max_body_size 0;"))
    eq(e.get("/hello").status, 200, "warm-up")
    rss0 = e.sluice.rss_kb()
    box, sample = rss_sampler(e.sluice)
    block = os.urandom(MiB)
    h = hashlib.sha256()
    with e.client(timeout=30) as c:
        c.send(build_request("POST", "/sink", [("Content-Length", str(GiB))]))
        for i in range(GiB // MiB):
            c.send(block)
            h.update(block)
            if i % 32 == 0:
                sample()
        r = c.read_response()
    eq(r.status, 200, "status")
    eq(r.json(), {"length": GiB, "sha256": h.hexdigest()}, "what the origin received")
    growth = box["peak"] - rss0
    check(growth < 64 * 1024, "sluice RSS grew by %d KiB during a 1 GiB upload" % growth)


@test
def sse_events_arrive_as_sent():
    e = core()
    with e.client() as c:
        t0 = time.monotonic()
        c.send(build_request("GET", "/stream?n=5&ms=200"))
        r = c.read_head()
        eq(r.status, 200, "status")
        eq(r.header("Content-Type"), "text/event-stream", "content type")
        buf, times = b"", []
        for piece in c.iter_body(r):
            buf += piece
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                eq(ev, b"data: event %d" % (len(times) + 1), "event text")
                times.append(time.monotonic() - t0)
    eq(len(times), 5, "events")
    for i, t in enumerate(times):
        want = times[0] + 0.2 * i
        check(abs(t - want) < 0.12 * SLOW, "event %d at %.3fs, expected ~%.3fs (times %s)"
              % (i + 1, t, want, ["%.3f" % x for x in times]))
    check(times[0] < 0.3 * SLOW, "first event after %.3fs" % times[0])


@test(timeout=60)
def slow_client_keeps_memory_bounded():
    e = Env()
    eq(e.get("/hello").status, 200, "warm-up")
    rss0 = e.sluice.rss_kb()
    n = 100 * MiB
    with Client(e.port, rcvbuf=64 * KiB, timeout=30) as c:
        c.send(build_request("GET", "/bytes?n=%d" % n))
        deadline = time.monotonic() + 2
        peak = rss0
        while time.monotonic() < deadline:
            peak = max(peak, e.sluice.rss_kb())
            time.sleep(0.1)
        check(peak - rss0 < 32 * 1024, "sluice RSS grew by %d KiB while the client did not read" % (peak - rss0))
        chk = PatternChecker()
        r = c.read_response(sink=chk)
        eq((r.status, chk.offset), (200, n), "the whole body once the client reads again")


# ---------------------------------------------------------------- upstream failures

@test
def upstream_refused_is_502_naming_the_cause():
    e = core()
    r = e.get("/dead/x")
    eq(r.status, 502, "status")
    check("refused" in r.text.lower(), "body names the cause: %r" % r.text)
    expect_process_time(r)


@test
def upstream_hang_is_504_after_header_timeout():
    e = core()
    t0 = time.monotonic()
    r = e.get("/impatient/x?hang=1")
    took = time.monotonic() - t0
    eq(r.status, 504, "status")
    check(0.9 <= took <= 2.0 * SLOW, "504 after %.2fs with header_timeout 1s" % took)


@test
def truncated_upstream_body_is_never_completed():
    e = core()
    for target, full in (("/bytes?n=1000000&close=body", 1000000), ("/hello?close=body", 34)):
        with e.client() as c:
            c.send(build_request("GET", target))
            r = c.read_head()
            if r.status != 200:
                check(r.status == 502, "%s: 200 then cut, or 502; got %d" % (target, r.status))
                continue
            got = 0
            try:
                for piece in c.iter_body(r):
                    got += len(piece)
            except (IncompleteResponse, ConnectionResetError):
                check(got < full, "cut short")
                continue
            raise TestFailure("%s: a complete-looking response (%d bytes) although the origin sent half" % (
                target, got))


# ---------------------------------------------------------------- client errors and limits

MALFORMED = [
    ("garbage request line", b"GARBAGE\r\n\r\n"),
    ("header without colon", b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
    ("Content-Length with Transfer-Encoding",
     b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two different Content-Length",
     b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("bad chunk size", b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("obs-fold", b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n"),
    ("empty header name", b"GET /hello HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n"),
    ("bare LF", b"GET /hello HTTP/1.1\nHost: x\n\n"),
    ("control character in a value", b"GET /hello HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n"),
    ("two Host headers", b"GET /hello HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
    ("absolute-form target disagreeing with Host", b"GET http://evil/hello HTTP/1.1\r\nHost: x\r\n\r\n"),
]


@test
def unsupported_transfer_coding_and_version_are_refused():
    e = core()
    with e.client() as c:
        c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        eq(c.read_response().status, 501, "a coding before chunked would be dropped upstream: refused")
        check(c.closed_by_peer(), "closed after the 501")
    with e.client() as c:
        c.send(b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n")
        eq(c.read_response().status, 505, "HTTP/2.0 in an HTTP/1 request line")


@test
def malformed_requests_get_400_and_close():
    e = core()
    for what, raw in MALFORMED:
        with e.client() as c:
            c.send(raw)
            r = c.read_response()
            eq(r.status, 400, what)
            expect_process_time(r)
            check(c.closed_by_peer(), "%s: connection closed after the 400" % what)
    eq(e.get("/hello").status, 200, "still serving")


@test
def oversize_uri_is_414():
    e = core()
    with e.client() as c:
        r = c.get("/hello?" + "a" * 3000)
        eq(r.status, 414, "status with max_uri_size 2k")
        expect_process_time(r)
    eq(e.get("/hello?" + "a" * 1500).status, 200, "under the limit")


@test
def too_many_or_too_large_headers_are_431():
    e = core()
    with e.client() as c:
        eq(c.get("/hello", headers=[("X-H%d" % i, "v") for i in range(60)]).status, 431, "60 headers, max 50")
    with e.client() as c:
        eq(c.get("/hello", headers=[("X-Big", "b" * 10000)]).status, 431, "10 KB header, max 8k")
    eq(e.get("/hello", headers=[("X-H%d" % i, "v") for i in range(40)]).status, 200, "40 headers")


@test
def body_over_max_body_size_is_413():
    e = core()
    with e.client() as c:
        c.send(build_request("POST", "/sink", [("Content-Length", str(2 * MiB))]))
        r = c.read_response()
        eq(r.status, 413, "declared length over max_body_size 1m")
        expect_process_time(r)
    with e.client() as c:
        c.send(build_request("POST", "/sink", [("Transfer-Encoding", "chunked")]))
        try:
            for _ in range(20):
                c.send(b"%x\r\n" % (64 * KiB) + b"z" * (64 * KiB) + b"\r\n")
        except OSError:
            pass  # sluice may answer and close before we are done
        eq(c.read_response().status, 413, "chunked body growing over max_body_size")
    with e.client() as c:
        eq(c.request("POST", "/sink", body=b"y" * (MiB - 10)).status, 200, "just under the limit")


@test
def expect_100_continue():
    e = core()
    with e.client(timeout=5) as c:
        c.send(build_request("POST", "/sink", [("Expect", "100-continue"), ("Content-Length", "1000")]))
        h = c.read_head()
        eq(h.status, 100, "interim status before the body is sent")
        c.send(b"e" * 1000)
        r = c.read_response()
        eq(r.status, 200, "final status")
        eq(r.json()["length"], 1000, "body at the origin")


@test
def head_204_304_have_no_body():
    e = core()
    with e.client() as c:
        r = c.request("HEAD", "/hello")
        eq((r.status, r.body), (200, b""), "HEAD")
        eq(r.header("Content-Length"), "34", "HEAD keeps Content-Length")
        for target, code in (("/status/204", 204), ("/status/304", 304), ("/hello?status=304", 304)):
            r = c.get(target)
            eq((r.status, r.body), (code, b""), target)
            check(r.header("Transfer-Encoding") is None, "%s: no Transfer-Encoding" % target)
        r = c.get("/hello")
        eq((r.status, r.body), (200, b"hello from the sluice demo origin\n"), "connection still in sync")


@test
def interim_1xx_then_final_response():
    e = core()
    with e.client() as c:
        r = c.get("/hello?interim=1")
        eq(r.status, 200, "final status")
        eq(r.body, b"hello from the sluice demo origin\n", "final body intact")
        check(all(100 <= i.status < 200 for i in r.interim), "only 1xx before the final response")
        eq(c.get("/hello").status, 200, "connection in sync after a 1xx")


# ---------------------------------------------------------------- header rules

@test
def hop_by_hop_headers_are_stripped_both_ways():
    e = core()
    with e.client() as c:
        r = c.get("/echo", headers=[("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"),
                                    ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                                    ("X-Keep", "yes")])
        seen = origin_headers(r.json())
        for name in ("x-hop", "keep-alive", "proxy-connection"):
            check(name not in seen, "request header %s reached the origin" % name)
        check("x-hop" not in ",".join(seen.get("connection", [])).lower(), "Connection token forwarded")
        eq(seen.get("x-keep"), ["yes"], "end-to-end header forwarded")

        r = c.get("/hello?header=Connection:X-Resp-Hop&header=X-Resp-Hop:1&header=Keep-Alive:timeout%3D9"
                  "&header=Proxy-Connection:close&header=X-Normal:1")
        eq(r.status, 200, "status")
        check(r.header("X-Resp-Hop") is None, "response header named in Connection was forwarded")
        check("timeout=9" not in r.header_all("Keep-Alive"), "origin Keep-Alive forwarded")
        check(r.header("Proxy-Connection") is None, "Proxy-Connection forwarded")
        check("x-resp-hop" not in ",".join(r.header_all("Connection")).lower(), "Connection token forwarded")
        eq(r.header("X-Normal"), "1", "end-to-end response header")
        eq(c.get("/hello").status, 200, "client connection kept")


@test
def forwarded_headers_and_via():
    e = core()
    r = e.get("/echo")
    seen = origin_headers(r.json())
    eq(seen.get("x-forwarded-for"), ["127.0.0.1"], "X-Forwarded-For")
    eq(seen.get("x-forwarded-proto"), ["http"], "X-Forwarded-Proto")
    eq(seen.get("x-forwarded-host"), ["sluice.test"], "X-Forwarded-Host")
    check(any("sluice" in v for v in seen.get("via", [])), "Via at the origin: %r" % seen.get("via"))
    check("sluice" in (r.header("Via") or ""), "Via in the response: %r" % r.header("Via"))
    seen = origin_headers(e.get("/echo", headers=[("X-Forwarded-For", "10.1.2.3")]).json())
    eq(seen.get("x-forwarded-for"), ["10.1.2.3, 127.0.0.1"], "X-Forwarded-For appended")


@test
def header_rewrites_with_env_substitution():
    route = "\n".join(['set_header X-Api-Key "${SLUICE_TEST_KEY}";',
                       "set_header X-Added static;",
                       "remove_header X-Remove-Me;",
                       'set_response_header X-Served-By "sluice-${SLUICE_TEST_NODE}";',
                       "remove_response_header X-Origin-Secret;"])
    e = Env(lambda env: basic_conf(env, route=route), env={"SLUICE_TEST_KEY": "k-123", "SLUICE_TEST_NODE": "n1"})
    with e.client() as c:
        r = c.get("/echo?header=X-Origin-Secret:s3", headers=[("X-Api-Key", "from-client"), ("X-Remove-Me", "1")])
        seen = origin_headers(r.json())
        eq(seen.get("x-api-key"), ["k-123"], "set_header replaces with the env value")
        eq(seen.get("x-added"), ["static"], "set_header adds")
        check("x-remove-me" not in seen, "remove_header")
        eq(r.header_all("X-Served-By"), ["sluice-n1"], "set_response_header")
        check(r.header("X-Origin-Secret") is None, "remove_response_header")
        r = c.get("/hello?header=X-Served-By:origin")
        eq(r.header_all("X-Served-By"), ["sluice-n1"], "set_response_header replaces the origin's value")


@test
def process_time_header_on_every_response():
    e = core()
    for target in ("/hello", "/nowhere", "/status/500", "/dead/x"):
        expect_process_time(e.get(target))
    b_port, _ = e.extra_ports
    r = e.get("/not-routed", port=b_port)
    eq(r.status, 404, "no route matches")
    expect_process_time(r, "X-Elapsed")


@test
def process_time_header_renamed_and_off():
    e = core()
    b_port, c_port = e.extra_ports
    r = e.get("/only/x", port=b_port)
    expect_process_time(r, "X-Elapsed")
    check(r.header("X-Process-Time") is None, "renamed header replaces X-Process-Time")
    r = e.get("/hello", port=c_port)
    eq(r.status, 200, "status")
    check(r.header("X-Process-Time") is None, "process_time_header off")


# ---------------------------------------------------------------- admin

@test
def stats_counters_move():
    e = core()
    s0 = e.sluice.stats()
    for key in ("uptime_s", "workers", "conf_generation", "process", "routes", "servers"):
        check(key in s0, "/stats has %s" % key)
    eq(s0["workers"], 2, "workers")
    r0 = route_stats(s0, e.port)
    p0 = server_stats(s0, e.origin)
    with e.client() as c:
        for _ in range(5):
            eq(c.get("/hello").status, 200, "status")

    def moved():
        s = e.sluice.stats()
        return s if route_stats(s, e.port)["requests"] - r0["requests"] >= 5 else None
    s1 = wait_until(moved, 3, what="route requests to count 5 more")
    r1 = route_stats(s1, e.port)
    eq(r1["requests"] - r0["requests"], 5, "requests delta")
    eq(r1["responses"].get("2xx", 0) - r0["responses"].get("2xx", 0), 5, "2xx delta")
    check(r1["bytes_out"] - r0["bytes_out"] >= 5 * 34, "bytes_out moved")
    check(r1["bytes_in"] > r0["bytes_in"], "bytes_in moved")
    for k in ("p50", "p95", "p99", "max", "mean"):
        check(isinstance(r1["latency_ms"].get(k), (int, float)), "latency_ms.%s is a number" % k)
    for k in ("active", "errors"):
        check(k in r1, "route stats has %s" % k)
    p1 = server_stats(s1, e.origin)
    check(p1["pool_reuse"] - p0["pool_reuse"] >= 4, "pool_reuse moved by %d" % (p1["pool_reuse"] - p0["pool_reuse"]))


@test
def admin_health():
    e = core()
    eq(http_get(e.admin_port, "/health").status, 200, "GET /health")


# ---------------------------------------------------------------- upgrade

@test
def websocket_upgrade_tunnels_both_ways():
    e = core()
    with e.client() as c:
        c.send(build_request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                            ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        eq(r.status, 101, "status")
        eq(r.header("Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept key from the origin")
        c.send(b"ping-1")
        eq(c.read_exact(6), b"ping-1", "small echo")
        data = os.urandom(256 * KiB)
        c.send(data)
        eq(c.read_exact(len(data)), data, "256 KiB echo")


# ---------------------------------------------------------------- pooled connection edge cases

@test
def idle_pooled_connection_closed_by_origin_is_transparent():
    e = Env(origin_idle_ms=300)
    with e.client() as c:
        for i in range(3):
            r = c.get("/hello?round=%d" % i)
            eq(r.status, 200, "round %d" % i)
            time.sleep(0.6)  # the origin drops the idle pooled connection meanwhile


@test
def stale_pooled_connection_retries_get_but_not_post():
    """close=next: the origin answers, then drops the connection when the next request arrives on it
    (the keep-alive race).  A GET is retried on a new connection; a POST is not (RFC 9110 9.2.2)."""
    e = Env()
    with e.client() as c:
        first = c.get("/hello?close=next")
        eq(first.status, 200, "priming request")
        r = c.get("/hello")
        eq(r.status, 200, "GET on the dropped pooled connection")
        check(origin_conn(r) != origin_conn(first), "the GET was answered on a new upstream connection")
        eq(c.get("/hello?close=next").status, 200, "priming request")
        e.origin.reset()
        r = c.request("POST", "/echo", body=b"p" * 100)
        eq(r.status, 502, "POST on the dropped pooled connection")
    eq(e.origin.count()["requests"], 2, "the POST reached the origin once (plus this /count)")


@test
def post_closed_by_origin_is_502_and_sent_once():
    e = Env()
    eq(e.get("/hello").status, 200, "a pooled connection exists")
    e.origin.reset()
    with e.client() as c:
        r = c.request("POST", "/echo?close=head", body=b"p" * 100)
    eq(r.status, 502, "status")
    eq(e.origin.count()["requests"], 2, "the POST reached the origin once (plus this /count)")


# ---------------------------------------------------------------- signals and conf check

@test
def sighup_reload_keeps_inflight_and_applies_new_conf():
    e = Env()
    gen0 = e.sluice.stats()["conf_generation"]
    e.origin.reset()
    with e.client() as slow:
        slow.send(build_request("GET", "/slow?ms=1500"))
        wait_origin_requests(e, 1)
        e.sluice.reload(basic_conf(e, route='set_response_header X-Gen "2";'))
        r = wait_until(lambda: (lambda r: r if r.header("X-Gen") == "2" else None)(e.get("/hello")), 5,
                       what="a response with the new conf")
        eq(r.status, 200, "status after reload")
        r = slow.read_response()
        eq((r.status, r.text), (200, "slept 1500 ms\n"), "in-flight request completed")
        check(r.header("X-Gen") is None, "the in-flight request kept the conf it started with")
    check(e.sluice.stats()["conf_generation"] > gen0, "conf_generation moved")


@test
def sighup_with_invalid_conf_keeps_the_old_one():
    e = Env()
    gen0 = e.sluice.stats()["conf_generation"]
    e.sluice.reload("workers 2;\nserver {\n    listen 127.0.0.1:%d;\n    route / { upstream nosuch; }\n}\n" % e.port)
    wait_until(lambda: e.sluice.conf_path + ":4:" in e.sluice.log(), 5, what="the conf error (file:4:) in the log")
    check(e.sluice.alive(), "still running")
    eq(e.sluice.stats()["conf_generation"], gen0, "conf_generation unchanged")
    eq(e.get("/hello").status, 200, "still serving with the old conf")
    e.sluice.reload(basic_conf(e, route='set_response_header X-Gen "3";'))
    wait_until(lambda: e.get("/hello").header("X-Gen") == "3", 5, what="a later valid reload")


@test
def sigterm_drains_then_exits_0():
    e = Env()
    e.origin.reset()
    with e.client() as slow:
        slow.send(build_request("GET", "/slow?ms=1000"))
        wait_origin_requests(e, 1)
        e.sluice.proc.signal(15)
        wait_until(lambda: not port_open(e.port), 2 * SLOW, what="the listener to close")
        r = slow.read_response()
        eq((r.status, r.text), (200, "slept 1000 ms\n"), "in-flight request completed")
    eq(e.sluice.proc.wait(10 * SLOW), 0, "exit status")


@test
def check_mode_reports_file_and_line():
    e_port, a_port, o_port = free_port(), free_port(), free_port()
    good = tmp_path("good.conf")
    with open(good, "w") as f:
        f.write("workers 1;\nadmin { listen 127.0.0.1:%d; }\nupstream o { server 127.0.0.1:%d; }\n"
                "server {\n    listen 127.0.0.1:%d;\n    route / { upstream o; }\n}\n" % (a_port, o_port, e_port))
    bad = tmp_path("bad.conf")
    with open(bad, "w") as f:
        f.write("workers 1;\nupstream o { server 127.0.0.1:%d; }\nno_such_directive 1;\n" % o_port)
    p = subprocess.run([SLUICE_BIN, "-t", "-c", good], capture_output=True, timeout=10)
    eq(p.returncode, 0, "sluice -t on a good conf (output %r)" % (p.stdout + p.stderr)[-300:])
    p = subprocess.run([SLUICE_BIN, "-t", "-c", bad], capture_output=True, timeout=10)
    eq(p.returncode, 1, "sluice -t on a bad conf")
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    check(bad + ":3:" in out, "error names %s:3: — got %r" % (bad, out[-300:]))
    check(not port_open(e_port), "-t starts nothing")
    # TLS certificate files are read at load: a missing one is a conf error, never a plain-text listener
    tls = tmp_path("tls.conf")
    with open(tls, "w") as f:
        f.write("upstream o { server 127.0.0.1:%d tls; }\n"
                "server { listen 127.0.0.1:%d tls cert=c.pem key=k.pem; route / { upstream o; } }\n" % (o_port, e_port))
    for argv in ([SLUICE_BIN, "-t", "-c", tls], [SLUICE_BIN, "-c", tls]):
        p = subprocess.run(argv, capture_output=True, timeout=10)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        eq(p.returncode, 1, "%s on a tls conf" % " ".join(argv[1:]))
        want = "%s:2: listen 127.0.0.1:%d: cannot load certificate %s: No such file or directory" % (
            tls, e_port, os.path.join(os.path.dirname(tls), "c.pem"))
        check(want in out, "listen refused: %r" % out)
