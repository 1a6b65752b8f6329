# SPDX-License-Identifier: MIT
"""The scriptable origin itself (test/origin/origin.c): the other suites rely on every behaviour here."""

import os
import time

from harness import (ORIGIN_BIN, SLOW, Client, IncompleteResponse, KiB, MiB, Origin, PatternChecker, Proc,
                     TestFailure, build_request, check, chunked, eq, sha256_hex, shared, test, wait_until)


def origin():
    return shared("origin", Origin)


@test
def hello_and_connection_headers():
    o = origin()
    with Client(o.port) as c:
        r = c.get("/hello", headers=[("X-Request-Id", "rid-1")])
        eq(r.status, 200, "status")
        eq(r.body, b"hello from the sluice demo origin\n", "body")
        eq(r.header("Cache-Control"), "public, max-age=60", "Cache-Control")
        eq(r.header("X-Request-Id"), "rid-1", "echoed X-Request-Id")
        conn = r.header("X-Origin-Conn")
        check(conn and conn.isdigit(), "X-Origin-Conn is a serial number: %r" % conn)
        r2 = c.get("/hello")
        eq(r2.header("X-Origin-Conn"), conn, "same connection serial on keep-alive")
        eq(r2.header("X-Request-Id"), None, "no X-Request-Id when the request has none")
    with Client(o.port) as c:
        check(c.get("/hello").header("X-Origin-Conn") != conn, "a new connection gets a new serial")


@test
def pipelining_answers_in_order():
    o = origin()
    with Client(o.port) as c:
        c.send(build_request("GET", "/slow?ms=300", [("X-Request-Id", "a")])
               + build_request("POST", "/echo", [("X-Request-Id", "b")], body=b"xyz")
               + build_request("GET", "/hello", [("X-Request-Id", "c")]))
        t0 = time.monotonic()
        rs = [c.read_response() for _ in range(3)]
        eq([r.header("X-Request-Id") for r in rs], ["a", "b", "c"], "response order")
        eq(rs[0].text, "slept 300 ms\n", "slow body")
        eq(rs[1].json()["body"], "xyz", "echoed body")
        check(time.monotonic() - t0 >= 0.29, "the slow answer came first")


@test
def echo_describes_the_request():
    o = origin()
    body = os.urandom(10000)
    with Client(o.port) as c:
        r = c.request("PUT", "/echo?a=1&b=%20", headers=[("X-One", "1"), ("x-two", "two words"),
                                                          ("X-One", "again"), ("Empty", "")], body=body)
    eq(r.status, 200, "status")
    eq(r.header("Content-Type"), "application/json", "content type")
    j = r.json()
    eq(j["method"], "PUT", "method")
    eq(j["target"], "/echo?a=1&b=%20", "target")
    eq(j["path"], "/echo", "path")
    eq(j["version"], "HTTP/1.1", "version")
    eq(j["headers"], [["Host", "sluice.test"], ["X-One", "1"], ["x-two", "two words"], ["X-One", "again"],
                      ["Empty", ""], ["Content-Length", "10000"]], "headers in order")
    eq(j["body_length"], 10000, "body length")
    eq(j["body_sha256"], sha256_hex(body), "body sha256")
    eq(j["body"], body[:4096].decode("latin-1"), "body preview")


@test
def sink_content_length_and_chunked():
    o = origin()
    data = os.urandom(3 * MiB + 17)
    with Client(o.port) as c:
        r = c.request("POST", "/sink", body=data)
        eq(r.json(), {"length": len(data), "sha256": sha256_hex(data)}, "content-length upload")
        pieces = [data[i:i + 70000] for i in range(0, len(data), 70000)]
        r = c.request("POST", "/sink", headers=[("Transfer-Encoding", "chunked")], body=chunked(pieces))
        eq(r.json(), {"length": len(data), "sha256": sha256_hex(data)}, "chunked upload")
        r = c.request("POST", "/sink", body=b"")
        eq(r.json()["length"], 0, "empty body")


@test
def bytes_content_length_and_chunked():
    o = origin()
    with Client(o.port) as c:
        for target in ("/bytes?n=1000003", "/bytes?n=1000003&chunked=1"):
            chk = PatternChecker()
            r = c.request("GET", target, sink=chk)
            eq(chk.offset, 1000003, target + " length")
            if "chunked" in target:
                eq(r.header("Transfer-Encoding"), "chunked", "chunked coding")
            else:
                eq(r.header("Content-Length"), "1000003", "Content-Length")
        r = c.request("HEAD", "/bytes?n=5000")
        eq((r.status, r.header("Content-Length"), r.body), (200, "5000", b""), "HEAD /bytes")
        eq(c.get("/bytes?n=0").body, b"", "n=0")


@test(timeout=60)
def bytes_large_in_constant_memory():
    o = Origin()
    rss0 = o.proc.rss_kb()
    peak = rss0
    chk = PatternChecker()
    with Client(o.port) as c:
        c.send(build_request("GET", "/bytes?n=%d" % (256 * MiB)))
        r = c.read_head()
        for piece in c.iter_body(r):
            before = chk.offset
            chk(piece)
            if before // (32 * MiB) != chk.offset // (32 * MiB):
                peak = max(peak, o.proc.rss_kb())
    eq(chk.offset, 256 * MiB, "body length")
    check(peak - rss0 < 16 * 1024, "origin RSS grew by %d KiB serving 256 MiB" % (peak - rss0))
    # A reader that stops: the origin must stop producing, not buffer.
    with Client(o.port, rcvbuf=64 * KiB) as c:
        c.send(build_request("GET", "/bytes?n=%d" % (512 * MiB)))
        time.sleep(1)
        grown = o.proc.rss_kb() - rss0
        check(grown < 16 * 1024, "origin RSS grew by %d KiB with a stalled reader" % grown)


@test
def stream_events_are_paced():
    o = origin()
    with Client(o.port) as c:
        c.send(build_request("GET", "/stream?n=4&ms=150"))
        t0 = time.monotonic()
        r = c.read_head()
        eq(r.header("Content-Type"), "text/event-stream", "content type")
        got, times = b"", []
        for piece in c.iter_body(r):
            got += piece
            times.append(time.monotonic() - t0)
        eq(got, b"".join(b"data: event %d\n\n" % i for i in range(1, 5)), "events")
        check(times[0] < 0.1 * SLOW, "first event at once (%.3fs)" % times[0])
        check(times[-1] >= 0.44, "last event after 3 intervals (%.3fs)" % times[-1])


@test(timeout=40)
def task_goes_pending_processing_completed():
    o = origin()
    tid = "t%d" % time.monotonic_ns()
    t0 = time.monotonic()
    eq(o.get("/task/" + tid).json(), {"id": tid, "data": {"status": "pending"}}, "first poll")
    wait_until(lambda: o.get("/task/" + tid).json()["data"]["status"] == "processing", 3, 0.1, "processing")
    check(time.monotonic() - t0 >= 1.9, "pending lasts 2 s")
    j = wait_until(lambda: (lambda j: j if j["data"]["status"] == "completed" else None)(
        o.get("/task/" + tid).json()), 6, 0.2, "completed")
    check(time.monotonic() - t0 >= 5.9, "processing lasts until 6 s")
    eq(j["data"]["result"], "result of task " + tid, "result")
    eq(o.get("/task/bad%20id").status, 400, "invalid id")


@test
def status_codes_and_bodiless_responses():
    o = origin()
    with Client(o.port) as c:
        r = c.get("/status/418")
        eq((r.status, r.text), (418, "status 418\n"), "/status/418")
        for code in (204, 304):
            r = c.get("/status/%d" % code)
            eq((r.status, r.body, r.header("Content-Length")), (code, b"", None), "/status/%d" % code)
        r = c.request("HEAD", "/hello")
        eq((r.status, r.header("Content-Length"), r.body), (200, "34", b""), "HEAD")
        eq(c.get("/hello").status, 200, "connection still in sync")
        eq(c.get("/nowhere").status, 404, "unknown path")
        eq(c.get("/status/99").status, 400, "bad code")
        eq(c.get("/hello?status=503").status, 503, "status= override")


@test
def count_and_reset():
    o = Origin()
    o.reset()
    with Client(o.port) as c:
        for _ in range(5):
            c.get("/hello")
    eq(o.count(), {"requests": 6, "connections": 2, "open": 1}, "counters")
    o.reset()
    eq(o.count()["requests"], 1, "requests after reset")


@test
def fault_delay_status_headers():
    o = origin()
    with Client(o.port) as c:
        t0 = time.monotonic()
        r = c.get("/hello?delay=300&status=202&header=X-A:1&header=X-B:%20two&cc=no-store")
        check(time.monotonic() - t0 >= 0.29, "delay")
        eq(r.status, 202, "status")
        eq((r.header("X-A"), r.header("X-B"), r.header("Cache-Control")), ("1", "two", "no-store"), "headers")
        eq(c.get("/hello?header=Bad%0D%0AX:1").status, 400, "CR/LF in header= is refused")
        eq(c.get("/hello?delay=x").status, 400, "bad delay")


@test
def fault_fail_per_key():
    o = origin()
    key = "k%d" % time.monotonic_ns()
    got = [o.get("/hello?fail=2&key=" + key).status for _ in range(3)]
    eq(got, [503, 503, 200], "fail=2 statuses")
    eq(o.get("/hello?fail=1&key=" + key + "x").status, 503, "another key has its own counter")


@test
def fault_close_head_and_body_and_reset():
    o = origin()
    with Client(o.port) as c:
        c.send(build_request("GET", "/hello?close=head"))
        check(c.closed_by_peer(), "close=head closes")
        check(not c.buf, "without answering")
    for target, cl in (("/bytes?n=100000&close=body", 100000), ("/hello?close=body", 34)):
        with Client(o.port) as c:
            c.send(build_request("GET", target))
            r = c.read_head()
            eq(r.header("Content-Length"), str(cl), "announced length")
            eq(r.header("Connection"), None, "the cut is not announced")
            try:
                got = sum(len(p) for p in c.iter_body(r))
            except IncompleteResponse as e:
                eq(e.received, cl // 2, "%s: bytes before the close" % target)
            else:
                raise TestFailure("complete body for %s (%d bytes)" % (target, got))
    with Client(o.port) as c:
        c.send(build_request("GET", "/stream?n=4&ms=10&close=body"))
        r = c.read_head()
        try:
            got = b"".join(c.iter_body(r))
        except IncompleteResponse as e:
            eq(e.received, len(b"data: event 1\n\ndata: event 2\n\n"), "events before the close")
        else:
            raise TestFailure("stream complete despite close=body: %r" % got)
    with Client(o.port) as c:
        c.send(build_request("GET", "/hello?reset=1"))
        try:
            data = c.sock.recv(100)
            raise TestFailure("expected a reset, got %r" % data)
        except ConnectionResetError:
            pass


@test
def fault_close_next_drops_the_following_request():
    o = Origin()
    o.reset()
    with Client(o.port) as c:
        r = c.get("/hello?close=next")
        eq((r.status, r.header("Connection")), (200, None), "answered as keep-alive")
        c.send(build_request("GET", "/hello"))
        check(c.closed_by_peer(), "the next request is dropped")
        check(not c.buf, "without an answer")
    eq(o.count()["requests"], 3, "both requests were read")


@test
def fault_hang_keeps_the_connection():
    o = origin()
    with Client(o.port) as c:
        c.send(build_request("GET", "/hello?hang=1"))
        check(not c.closed_by_peer(0.5), "hang=1 neither answers nor closes")
        check(not c.buf, "no bytes")
    eq(o.get("/hello").status, 200, "others are served meanwhile")


@test
def interim_and_expect_continue():
    o = origin()
    with Client(o.port) as c:
        r = c.get("/hello?interim=1")
        eq([i.status for i in r.interim], [103], "interim responses")
        eq(r.status, 200, "final")
        c.send(build_request("POST", "/sink", [("Expect", "100-continue"), ("Content-Length", "5")]))
        eq(c.read_head().status, 100, "100 Continue before the body")
        c.send(b"hello")
        eq(c.read_response().json()["length"], 5, "final answer")


@test
def websocket_upgrade_echoes():
    o = origin()
    with Client(o.port) as c:
        c.send(build_request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                            ("Sec-WebSocket-Version", "13")]) + b"early")
        r = c.read_response()
        eq(r.status, 101, "status")
        eq(r.header("Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 accept key")
        eq(c.read_exact(5), b"early", "bytes sent with the upgrade are echoed")
        data = os.urandom(300 * KiB)
        c.send(data)
        eq(c.read_exact(len(data)), data, "echo")
    eq(o.get("/ws").status, 426, "plain GET /ws")


@test
def malformed_requests_get_400_and_close():
    o = origin()
    cases = [b"GARBAGE\r\n\r\n",
             b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
             b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
             b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
             os.urandom(3000).replace(b"\n", b"x")]
    for raw in cases:
        with Client(o.port) as c:
            c.send(raw)
            r = c.read_response()
            eq(r.status, 400, "status for %r" % raw[:40])
            check(c.closed_by_peer(), "closed after 400")
    with Client(o.port) as c:
        c.send(b"GET /" + b"a" * (70 * KiB) + b" HTTP/1.1\r\n\r\n")
        eq(c.read_response().status, 414, "long URL")
    with Client(o.port) as c:
        c.send(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(600)) + b"\r\n")
        eq(c.read_response().status, 431, "many headers")
    eq(o.get("/hello").status, 200, "still serving")


@test
def idle_keepalive_timeout_and_sigterm():
    o = Origin(idle_ms=200)
    with Client(o.port) as c:
        eq(c.get("/hello").status, 200, "first request")
        t0 = time.monotonic()
        check(c.closed_by_peer(2), "idle connection closed")
        check(time.monotonic() - t0 >= 0.15, "not before the idle timeout")
    with Client(o.port) as c:
        c.send(b"GET /hel")  # a half-sent request is idle too
        check(c.closed_by_peer(2), "half request closed")
    o.proc.signal(15)
    eq(o.proc.wait(5), 0, "exit status on SIGTERM")


@test
def cli_errors():
    for argv in (["-p", "99999"], ["-k", "x"], ["-a", "not-an-address"], ["extra"]):
        p = Proc([ORIGIN_BIN] + argv, name="origin-cli")
        code = p.wait(5)
        check(code not in (0, None), "%s exits non-zero (got %r)" % (argv, code))
