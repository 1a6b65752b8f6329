# SPDX-License-Identifier: MIT
"""Timeouts and process limits through the real binary: slow and silent clients, clients that stop
reading, an upstream that stalls mid-body, the admin token and max_connections."""

import socket
import time

from harness import SLOW, Env, check, conf_block, eq, shared, test, wait_until


def limits_conf(env):
    return ("workers 1;\nerror_log stderr info;\nmax_connections 6;\n"
            + conf_block("admin", "listen 127.0.0.1:%d;\ntoken s3cret;" % env.admin_port)
            + conf_block("upstream origin", "server %s;\nidle_timeout 500ms;" % env.origin.addr)
            + conf_block("server", "\n".join([
                "listen 127.0.0.1:%d;" % env.port,
                "client_header_timeout 500ms; client_body_timeout 500ms; keepalive_timeout 500ms; send_timeout 1s;",
                conf_block("route /", "upstream origin;")])))


def env():
    return shared("limits", lambda: Env(limits_conf, workers=1))


def closed_within(c, seconds):
    """True when the peer closes the connection within seconds (data before the close is read)."""
    c.settimeout(seconds)
    try:
        while True:
            if not c.sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@test
def slow_request_head_gets_408():
    e = env()
    with e.client() as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.time()
        r = c.read_response()
        eq(r.status, 408, "status")
        took = time.time() - start
        check(0.3 < took < 2 * SLOW, "after client_header_timeout (%.2fs)" % took)
        check(c.closed_by_peer(), "connection closed")


@test
def stalled_request_body_gets_408():
    e = env()
    with e.client() as c:
        c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        r = c.read_response()
        eq(r.status, 408, "status")
        check(c.closed_by_peer(), "connection closed")


@test
def idle_keepalive_connection_is_closed():
    e = env()
    with e.client() as c:
        eq(c.get("/hello").status, 200, "first request")
        check(closed_within(c, 2 * SLOW), "closed after keepalive_timeout")


@test
def upstream_stalling_mid_body_closes_the_client_connection():
    e = env()
    with e.client() as c:
        c.send(b"GET /stream?n=3&ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_head()
        eq(r.status, 200, "the head arrives")
        start = time.time()
        check(closed_within(c, 3 * SLOW), "cut after the upstream idle_timeout")
        check(time.time() - start < 1.4 * SLOW, "before the next event was due (%.2fs)" % (time.time() - start))


def open_connections(e):
    with e.client(port=e.admin_port) as c:
        return c.request("GET", "/stats", headers=[("Authorization", "Bearer s3cret")]).json()["connections"]


@test
def client_that_stops_reading_is_dropped_after_send_timeout():
    e = env()
    s = socket.create_connection(("127.0.0.1", e.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /bytes?n=200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    eq(open_connections(e), 2, "the reader and the stats request")
    # backpressure stops the upstream; with no write progress for send_timeout (1 s) the
    # connection goes (what the kernel still holds may yet trickle out)
    wait_until(lambda: open_connections(e) == 1, 4 * SLOW, interval=0.2, what="the stalled client dropped")
    s.close()
    eq(e.get("/hello").status, 200, "still serving")


@test
def admin_needs_its_token():
    e = env()
    with e.client(port=e.admin_port) as c:
        eq(c.get("/stats").status, 401, "no token")
    with e.client(port=e.admin_port) as c:
        eq(c.request("GET", "/stats", headers=[("Authorization", "Bearer wrong")]).status, 401, "wrong token")
    with e.client(port=e.admin_port) as c:
        r = c.request("GET", "/stats", headers=[("Authorization", "Bearer s3cret")])
        eq(r.status, 200, "right token")
        check("routes" in r.json(), "the stats document")


@test
def max_connections_refuses_the_one_too_many():
    # its own instance: the shared one closes silent connections after 500 ms
    e = Env(lambda env: limits_conf(env).replace("client_header_timeout 500ms;", "client_header_timeout 30s;"),
            workers=1)
    time.sleep(0.3)  # the start-up probes' connections are gone
    held = [e.client() for _ in range(6)]
    try:
        for c in held:
            eq(c.get("/hello").status, 200, "a connection within the limit")  # and it stays open
        extra = socket.create_connection(("127.0.0.1", e.port))
        extra.settimeout(2)
        try:
            extra.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            data = extra.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        eq(data, b"", "the connection over max_connections is closed unanswered")
        extra.close()
        eq(open_connections(e), 7, "the admin listener still answers when the proxy is full")
    finally:
        for c in held:
            c.close()
    time.sleep(0.3)
    eq(e.get("/hello").status, 200, "served again once connections are free")
