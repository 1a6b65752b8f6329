# SPDX-License-Identifier: MIT
"""Hostile input: request smuggling variants, malformed and greedy clients, upstream faults
(raw scripted responses), hop-by-hop rules, stale pooled connections, pipelining after a malformed
request, max_connections_per_ip.  Each case asserts the exact outcome: the status the client gets,
whether the connection closes, and what the origin saw (nothing, or one clean request)."""

import select
import socket
import threading
import time

from harness import (KiB, MiB, SLOW, Client, Env, IncompleteResponse, TestFailure, basic_conf, check,
                     Sluice, conf_block, eq, free_port, shared, test, wait_until)


# ---------------------------------------------------------------- a raw, scripted origin

class RawOrigin:
    """An origin in a thread that answers each request with a script chosen by its path:
    /raw/NAME -> SCRIPTS[NAME], a list of steps ("send", bytes) | ("close",) | ("reset",) |
    ("sleep", seconds) | ("hang",).  A script that ends without closing keeps the connection for the
    next request.  Every request head (and its body, framed by Content-Length or chunked) is recorded
    raw in self.requests, so a test can assert what reached the origin byte for byte."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.requests = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def alive(self):
        return not self.stopping

    def reset(self):
        with self.lock:
            self.requests = []

    def seen(self):
        with self.lock:
            return list(self.requests)

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    @staticmethod
    def _read_request(s, buf):
        """One request (head + body) from s; (raw bytes, rest) or (None, rest) at EOF."""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return None, buf
            buf += d
        i = buf.index(b"\r\n\r\n") + 4
        head, buf = buf[:i], buf[i:]
        lower = head.lower()
        body = b""
        if b"\r\ntransfer-encoding: chunked" in lower:
            while True:
                while b"\r\n0\r\n\r\n" not in b"\r\n" + body + buf:
                    d = s.recv(65536)
                    if not d:
                        return head + body + buf, b""
                    buf += d
                j = (b"\r\n" + buf).index(b"\r\n0\r\n\r\n") + 5
                body, buf = buf[:j], buf[j:]
                break
        else:
            n = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            while len(buf) < n:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
            body, buf = buf[:n], buf[n:]
        return head + body, buf

    def _serve(self, s):
        buf = b""
        try:
            while True:
                req, buf = self._read_request(s, buf)
                if req is None:
                    return
                with self.lock:
                    self.requests.append(req)
                target = req.split(b" ", 2)[1].decode("latin-1")
                name = target.split("/raw/", 1)[1].split("?")[0] if "/raw/" in target else "ok"
                for step in self.scripts[name]:
                    if step[0] == "send":
                        s.sendall(step[1])
                    elif step[0] == "sleep":
                        time.sleep(step[1])
                    elif step[0] == "hang":
                        time.sleep(3600)
                    elif step[0] == "reset":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        return
                    elif step[0] == "close":
                        return
        except OSError:
            return
        finally:
            s.close()


def ok_response(body=b"ok", extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


SCRIPTS = {
    "ok": [("send", ok_response())],
    "reset_before_head": [("reset",)],
    "close_before_head": [("close",)],
    "close_mid_head": [("send", b"HTTP/1.1 200 OK\r\nContent-Le"), ("close",)],
    "close_mid_body": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"), ("close",)],
    "close_mid_chunk": [("send", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01234"),
                        ("close",)],
    "reset_mid_body": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"), ("sleep", 0.1),
                       ("reset",)],
    "bad_status_letters": [("send", b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")],
    "bad_status_short": [("send", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n")],
    "bad_status_long": [("send", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")],
    "bad_status_version": [("send", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n")],
    "bad_status_garbage": [("send", b"SSH-2.0-OpenSSH\r\n\r\n")],
    "bad_status_09": [("send", b"<html>hello</html>"), ("close",)],
    "dup_cl_differ": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")],
    "dup_cl_same": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")],
    "cl_list": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nabc")],
    "negative_cl": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc")],
    "plus_cl": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc")],
    "huge_cl": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nabc")],
    "cl_and_te": [("send", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\nabc\r\n0\r\n\r\n")],
    "te_gzip_chunked": [("send", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                 b"3\r\nabc\r\n0\r\n\r\n")],
    "te_gzip_only": [("send", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"), ("close",)],
    "bad_chunk_size": [("send", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")],
    "bare_lf": [("send", b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc")],
    "obs_fold": [("send", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 3\r\n\r\nabc")],
    "ctl_in_value": [("send", b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 3\r\n\r\nabc")],
    "nul_in_value": [("send", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 3\r\n\r\nabc")],
    "nul_in_reason": [("send", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 3\r\n\r\nabc")],
    "empty_name": [("send", b"HTTP/1.1 200 OK\r\n: v\r\nContent-Length: 3\r\n\r\nabc")],
    "space_before_colon": [("send", b"HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc")],
    "huge_head": [("send", b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * (200 * KiB) + b"\r\n"
                           b"Content-Length: 3\r\n\r\nabc")],
    "many_headers": [("send", b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(400))
                              + b"Content-Length: 3\r\n\r\nabc")],
    "interims": [("send", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                          b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"),
                 ("send", ok_response(b"final"))],
    "unasked_101": [("send", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
                             b"raw bytes")],
    "extra_after_body": [("send", ok_response(b"abc") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSMUGG")],
    "body_on_204": [("send", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nSMUGG")],
    "conn_names_cl": [("send", b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc")],
    "conn_names_te": [("send", b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")],
    "close_after": [("send", ok_response(b"abc", b"Connection: close\r\n")), ("close",)],
    "hang": [("hang",)],
    "slow_head": [("send", b"HTTP/1.1 200 OK\r\n"), ("hang",)],
}


def raw_conf(env):
    return basic_conf(env, upstream="header_timeout 1s; idle_timeout 1s; keepalive 8;",
                      server="max_header_size 8k; max_headers 50; max_body_size 1m;\n"
                             "client_header_timeout 2s; client_body_timeout 2s;")


class RawEnv:
    """sluice in front of a RawOrigin (env.raw, also env.origin for basic_conf)."""

    def __init__(self):
        self.raw = self.origin = RawOrigin(SCRIPTS)
        self.port = free_port()
        self.admin_port = free_port()
        self.extra_ports = []
        self.workers = 2
        self.sluice = Sluice(raw_conf(self), ports=[self.port], admin_port=self.admin_port)

    def alive(self):
        return self.sluice.alive()

    def client(self, port=None, timeout=10):
        return Client(port or self.port, timeout=timeout)


def env():
    return shared("hostile", RawEnv)


def send_raw(e, data, wait_close=True):
    """Sends data on a new connection; returns (response or None, closed after it)."""
    with e.client() as c:
        c.send(data)
        try:
            r = c.read_response()
        except IncompleteResponse:
            return None, True
        return r, wait_close and c.closed_by_peer(2 * SLOW)


def refused(what, data, status=400):
    """The request gets status, the connection closes, and the origin saw nothing."""
    e = env()
    e.raw.reset()
    r, closed = send_raw(e, data)
    check(r is not None, "%s: no response" % what)
    eq(r.status, status, what)
    check(closed, "%s: connection closed after the %d" % (what, status))
    time.sleep(0.05 * SLOW)  # a request that did go upstream would be recorded by now
    eq(e.raw.seen(), [], "%s: what reached the origin" % what)


# ---------------------------------------------------------------- request smuggling

SMUGGLING = [
    ("CL then TE", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n\r\n"),
    ("TE then CL", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                   b"0\r\n\r\n"),
    ("CL 0 with TE", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\n"),
    ("two different CL", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    ("two equal CL", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
    ("CL list", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd"),
    ("CL negative", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nabcd"),
    ("CL plus sign", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd"),
    ("CL hex", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0x4\r\n\r\nabcd"),
    ("CL two numbers", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4 4\r\n\r\nabcd"),
    ("CL overflow", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\nabcd"),
    ("CL empty", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\nabcd"),
    ("TE chunked twice", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("TE chunked not last", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("TE split over two lines",
     b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"),
    ("TE xchunked", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("TE chunked with vertical tab", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\n\r\n"
                                     b"0\r\n\r\n"),
    ("TE name with space before colon", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
                                        b"0\r\n\r\n"),
    ("CL name with space before colon", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd"),
    ("TE in HTTP/1.0", b"POST /x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("TE identity", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nabcd"),
    ("bare LF in the request line", b"GET /x HTTP/1.1\nHost: x\r\n\r\n"),
    ("bare LF ending a header", b"GET /x HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n"),
    ("bare LF ending the head", b"GET /x HTTP/1.1\r\nHost: x\r\n\n"),
    ("bare CR in a header", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"),
    ("obs-fold with a space", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
    ("obs-fold with a tab", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n"),
    ("fold before the first header", b"GET /x HTTP/1.1\r\n Host: x\r\n\r\n"),
    ("control character in a name", b"GET /x HTTP/1.1\r\nHost: x\r\nX\x01A: b\r\n\r\n"),
    ("space in a name", b"GET /x HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n"),
    ("NUL in a value", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    ("DEL in a value", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n"),
    ("ESC in a value", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n"),
    ("two Host headers", b"GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
    ("two Host headers, same value", b"GET /x HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n"),
    ("no Host in HTTP/1.1", b"GET /x HTTP/1.1\r\nX-A: b\r\n\r\n"),
    ("Host with a space", b"GET /x HTTP/1.1\r\nHost: x y\r\n\r\n"),
    ("Host with userinfo", b"GET /x HTTP/1.1\r\nHost: user@x\r\n\r\n"),
    ("Host with a slash", b"GET /x HTTP/1.1\r\nHost: x/y\r\n\r\n"),
    ("absolute-form host disagrees", b"GET http://evil/x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("absolute-form with userinfo", b"GET http://x@evil/x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("target not starting with a slash", b"GET x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("target with a control character", b"GET /x\x01y HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("target with a tab (found by request_fuzz)", b"GET /x\ty HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("target ending in a tab", b"GET /x\t HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("two spaces in the request line", b"GET  /x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("lowercase method", b"get /x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("no version", b"GET /x\r\nHost: x\r\n\r\n"),
    ("HTTP/0.9 request", b"GET /x\r\n\r\n"),
    ("version 1.2", b"GET /x HTTP/1.2\r\nHost: x\r\n\r\n"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n"),
]


# A bad chunk is only seen after the head went upstream (bodies stream): the origin may get the head and
# the chunks before the bad one, never a complete request, and its connection is closed.
BAD_CHUNKS = [
    ("chunk size not hex", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n"
                           b"0\r\n\r\n"),
    ("chunk size negative", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-4\r\nabcd\r\n"
                            b"0\r\n\r\n"),
    ("chunk size overflow", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"10000000000000000000004\r\nabcd\r\n0\r\n\r\n"),
    ("chunk size with 0x", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n"
                           b"0\r\n\r\n"),
    ("chunk data longer than its size", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        b"4\r\nabcdef\r\n0\r\n\r\n"),
    ("chunk size ended by bare LF", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"4\nabcd\r\n0\r\n\r\n"),
]


@test(timeout=60)
def smuggling_variants_get_400_close_and_reach_nothing():
    e = env()
    bad = []
    for what, raw in SMUGGLING:
        try:
            refused(what, raw, 400)
        except TestFailure as ex:
            bad.append(str(ex))
    eq(bad, [], "refused request cases that were not")


@test(timeout=60)
def bad_chunks_get_400_and_never_a_complete_request_upstream():
    e = env()
    bad = []
    for what, raw in BAD_CHUNKS:
        e.raw.reset()
        r, closed = send_raw(e, raw)
        if r is None or r.status != 400 or not closed:
            bad.append("%s: %r closed=%s" % (what, r, closed))
            continue
        time.sleep(0.1 * SLOW)  # the origin records an incomplete request at its EOF
        for seen in e.raw.seen():
            if seen.endswith(b"0\r\n\r\n") or b"\r\n\r\nGET" in seen:
                bad.append("%s: a complete request reached the origin: %r" % (what, seen))
    eq(bad, [], "bad chunk cases")


UNSUPPORTED = [
    ("TE gzip, chunked", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("HTTP/2 request line", b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("CONNECT", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 400),
]


@test
def unsupported_requests_get_their_status_and_reach_nothing():
    for what, raw, status in UNSUPPORTED:
        refused(what, raw, status)


@test
def accepted_framing_reaches_the_origin_once_and_clean():
    e = env()
    cases = [
        # (what, raw request, the body the origin must get)
        ("CL with leading zeros", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 004\r\n\r\nabcd", b"abcd"),
        ("chunked with an extension", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"4;ext=1\r\nabcd\r\n0\r\n\r\n", b"4\r\nabcd\r\n0\r\n\r\n"),
        ("chunked with trailers", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"4\r\nabcd\r\n0\r\nX-Trailer: t\r\n\r\n", b"4\r\nabcd\r\n0\r\n\r\n"),
        ("absolute-form agreeing with Host", b"GET http://X/abs?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", b""),
        ("TE Chunked in capitals", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n"
                                   b"4\r\nabcd\r\n0\r\n\r\n", b"4\r\nabcd\r\n0\r\n\r\n"),
    ]
    for what, raw, body in cases:
        e.raw.reset()
        r, _ = send_raw(e, raw, wait_close=False)
        check(r is not None, "%s: no response" % what)
        eq(r.status, 200, what)
        seen = e.raw.seen()
        eq(len(seen), 1, "%s: requests at the origin" % what)
        head, _, got = seen[0].partition(b"\r\n\r\n")
        eq(got, body, "%s: body at the origin" % what)
        check(b"ext=" not in head and b"X-Trailer" not in head, "%s: no client framing detail in the head" % what)
        check(head.split(b" ")[1].startswith(b"/"), "%s: origin-form target upstream: %r" % (what, head[:60]))


@test
def a_body_that_looks_like_a_request_stays_a_body():
    e = env()
    e.raw.reset()
    inner = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    with e.client() as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
        eq(c.read_response().status, 200, "the POST")
        eq(c.get("/y").status, 200, "the next request")
    seen = e.raw.seen()
    eq(len(seen), 2, "requests at the origin")
    check(seen[0].endswith(inner), "the smuggled-looking bytes arrived as the POST's body")
    check(seen[1].startswith(b"GET /y "), "then the client's second request")


@test
def connection_cannot_name_framing_or_host_fields():
    """A client listing Content-Length / Transfer-Encoding / Host in Connection must not make sluice drop
    them: the body would reach the upstream unframed and be read as a second request."""
    e = env()
    for conn, req in [
        ("Content-Length", b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: %d\r\n"
                           b"\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("Transfer-Encoding", b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n%x\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"\r\n0\r\n\r\n"),
    ]:
        e.raw.reset()
        inner = len(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        r, _ = send_raw(e, req % inner, wait_close=False)
        check(r is not None, "Connection: %s: no response" % conn)
        eq(r.status, 200, "Connection: %s" % conn)
        time.sleep(0.2 * SLOW)
        seen = e.raw.seen()
        eq(len(seen), 1, "Connection: %s: requests at the origin %r" % (conn, seen))
        check(not seen[0].startswith(b"GET /smuggled"), "smuggled request reached the origin")
    e.raw.reset()
    with e.client() as c:
        r = c.request("GET", "/x", headers=[("Connection", "Host, X-Forwarded-For")])
        eq(r.status, 200, "Connection: Host")
    seen = e.raw.seen()
    check(b"\r\nHost: sluice.test\r\n" in seen[0], "Host still sent: %r" % seen[0])


@test
def pipelining_after_a_malformed_request():
    e = env()
    e.raw.reset()
    with e.client() as c:
        c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"
               b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        eq(c.read_response().status, 200, "the good request before")
        eq(c.read_response().status, 400, "the malformed one")
        check(c.closed_by_peer(2 * SLOW), "closed after the 400: /c is never read")
    seen = e.raw.seen()
    eq([s.split(b" ")[1] for s in seen], [b"/a"], "requests at the origin")


@test
def declined_upgrade_then_the_next_request():
    """Found by request_fuzz: the parser stayed in upgrade mode after a non-101 answer and the connection
    hung with the client's next bytes unread."""
    e = env()
    with e.client() as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
               b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        eq(c.read_response().status, 200, "the upgrade request answered without switching")
        eq(c.read_response().status, 200, "the request after it")
    with e.client() as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw")
        eq(c.read_response().status, 200, "declined upgrade")
        eq(c.read_response().status, 400, "the bytes after it are a (bad) next request")
        check(c.closed_by_peer(2 * SLOW), "closed")


@test
def header_values_cut_by_read_boundaries_are_not_folds():
    """A value split across two reads was taken for obs-fold when the second read landed in the recycled
    block of the first (a 400 in the middle of a pipelined stream; found by the non-reading flood test)."""
    e = shared("local-only", lambda: Env(lambda env: basic_conf(env, routes=[("/only/", "")])))
    n = 2000
    reqs = b"".join(b"GET /v%d HTTP/1.1\r\nHost: x\r\nX-Long: %s\r\n\r\n" % (i, b"v" * (1000 + i % 977))
                    for i in range(n))
    with e.client() as c:
        sender = threading.Thread(target=c.send, args=(reqs,), daemon=True)
        sender.start()
        for i in range(n):
            eq(c.read_response().status, 404, "response %d (a local answer: no route)" % i)
        sender.join(10)


@test
def pipelined_flood_is_answered_in_order():
    e = env()
    e.raw.reset()
    n = 300
    with e.client() as c:
        c.send(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
        for i in range(n):
            eq(c.read_response().status, 200, "response %d" % i)
    eq([s.split(b" ")[1] for s in e.raw.seen()], [b"/p%d" % i for i in range(n)], "origin order")


# ---------------------------------------------------------------- upstream faults

UPSTREAM_502 = ["reset_before_head", "close_before_head", "close_mid_head", "bad_status_letters",
                "bad_status_short", "bad_status_long", "bad_status_version", "bad_status_garbage", "bad_status_09",
                "dup_cl_differ", "dup_cl_same", "cl_list", "negative_cl", "plus_cl", "huge_cl", "cl_and_te", "te_gzip_chunked",
                "te_gzip_only", "bare_lf", "obs_fold", "ctl_in_value", "nul_in_value", "nul_in_reason", "empty_name", "space_before_colon",
                "huge_head", "many_headers", "unasked_101"]


@test(timeout=60)
def malformed_or_broken_upstream_responses_are_502():
    e = env()
    bad = []
    for name in UPSTREAM_502:
        with e.client() as c:
            try:
                r = c.get("/raw/" + name)
                if r.status != 502:
                    bad.append("%s: %d %r" % (name, r.status, r.body[:50]))
                elif b"SMUGG" in r.body or b"raw bytes" in r.body:
                    bad.append("%s: upstream bytes leaked" % name)
                # the client connection stays usable: the fault was the upstream's
                elif c.get("/raw/ok").status != 200:
                    bad.append("%s: client connection unusable after" % name)
            except (IncompleteResponse, OSError, TestFailure) as ex:
                bad.append("%s: %s" % (name, ex))
    eq(bad, [], "upstream faults that did not give a clean 502")


@test
def upstream_hang_is_504_and_slow_head_too():
    e = env()
    for name in ("hang", "slow_head"):
        t0 = time.monotonic()
        r, _ = send_raw(e, b"GET /raw/%s HTTP/1.1\r\nHost: x\r\n\r\n" % name.encode())
        eq(r.status if r else None, 504, name)
        check(time.monotonic() - t0 < 5 * SLOW, "%s: answered near header_timeout" % name)


@test
def upstream_cut_mid_body_never_looks_complete():
    e = env()
    for name in ("close_mid_body", "close_mid_chunk", "reset_mid_body"):
        with e.client() as c:
            c.send(b"GET /raw/%s HTTP/1.1\r\nHost: x\r\n\r\n" % name.encode())
            r = c.read_head()
            eq(r.status, 200, name)
            try:
                for _ in c.iter_body(r):
                    pass
            except (IncompleteResponse, ConnectionResetError):
                continue
            raise TestFailure("%s: the client got a complete-looking body" % name)


@test
def interim_responses_then_the_final_one():
    e = env()
    with e.client() as c:
        r = c.get("/raw/interims")
        eq(r.status, 200, "final")
        eq(r.body, b"final", "body")
        eq([i.status for i in r.interim], [102, 103], "interim responses passed (100 is sluice's own)")
        eq(c.get("/raw/ok").status, 200, "in sync after")


@test
def upstream_extra_bytes_are_never_a_second_response():
    e = env()
    with e.client() as c:
        r = c.get("/raw/extra_after_body")
        eq((r.status, r.body), (200, b"abc"), "the response as framed")
        r = c.get("/raw/ok")
        eq((r.status, r.body), (200, b"ok"), "the next response is the origin's answer, not the extra bytes")
        r = c.get("/raw/body_on_204")
        eq((r.status, r.body), (204, b""), "204")
        r = c.get("/raw/ok")
        eq((r.status, r.body), (200, b"ok"), "in sync after a 204 with bytes")


@test
def response_connection_cannot_name_framing_fields():
    e = env()
    with e.client() as c:
        r = c.get("/raw/conn_names_cl")
        eq((r.status, r.body), (200, b"abc"), "Connection: Content-Length")
        r = c.get("/raw/conn_names_te")
        eq((r.status, r.body), (200, b"abc"), "Connection: Transfer-Encoding")
        r = c.get("/raw/ok")
        eq((r.status, r.body), (200, b"ok"), "in sync after")


@test
def upstream_connection_close_is_not_reused():
    e = env()
    before = e.raw.connections
    with e.client() as c:
        for i in range(3):
            r = c.get("/raw/close_after")
            eq((r.status, r.body), (200, b"abc"), "request %d" % i)
    # the first may use a pooled connection; each after it needs a new one
    check(e.raw.connections >= before + 2, "a new upstream connection after each close")


@test
def head_response_with_a_body_does_not_desync():
    e = env()
    with e.client() as c:
        c.send(b"HEAD /raw/extra_after_body HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response("HEAD")
        eq(r.status, 200, "HEAD")
        r = c.get("/raw/ok")
        eq((r.status, r.body), (200, b"ok"), "next response")


# ---------------------------------------------------------------- slow and greedy clients

@test
def slowloris_head_gets_408_although_bytes_trickle():
    e = env()
    with e.client() as c:
        t0 = time.monotonic()
        c.send(b"GET /x HTTP/1.1\r\n")
        for i in range(100):
            if select.select([c.sock], [], [], 0.1)[0]:
                break
            c.send(b"X-%d: v\r\n" % i)
        r = c.read_response()
        eq(r.status, 408, "status")
        check(time.monotonic() - t0 < 4 * SLOW, "408 at client_header_timeout (2s), not per byte")


@test
def slow_body_gets_408_and_origin_request_dropped():
    e = env()
    with e.client() as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        r = c.read_response()
        eq(r.status, 408, "stalled body")
        check(c.closed_by_peer(), "closed")


@test(timeout=60)
def pipelining_client_that_never_reads_stays_bounded():
    """Local answers (here 404s; cache hits alike) to a client that pipelines and never reads used to pile up
    without bound: the next request now waits until the answers drain."""
    e = Env(lambda env: basic_conf(env, routes=[("/only/", "")]))
    rss0 = e.sluice.rss_kb()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", e.port))
    s.settimeout(0.2)
    burst = b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3 * SLOW:
        try:
            sent += s.send(burst)
        except socket.timeout:
            pass
    grown = e.sluice.rss_kb() - rss0
    answered = e.sluice.stats()["process"]["all"]["requests"]
    check(grown < 16 * 1024, "RSS grew %d KiB for a client that does not read" % grown)
    check(answered * len(burst) // 1000 < sent, "sluice stopped reading requests (%d answered)" % answered)
    # it reads again once the client does: the answers come in order
    s.settimeout(10)
    c = Client.__new__(Client)
    c.sock, c.buf, c.eof = s, bytearray(), False
    for i in range(answered + 50):
        eq(c.read_response().status, 404, "answer %d" % i)
    s.close()


# ---------------------------------------------------------------- max_connections_per_ip

def per_ip_conf(env):
    return basic_conf(env, top="max_connections_per_ip 3;")


@test
def max_connections_per_ip_refuses_the_fourth():
    e = Env(per_ip_conf)

    def probes_gone():
        with Client(e.admin_port) as a:
            return a.get("/stats").json()["connections"] <= 1
    wait_until(probes_gone, 5 * SLOW, what="the start-up probes' connections to close")
    clients = [e.client() for _ in range(3)]
    for c in clients:
        eq(c.get("/hello").status, 200, "within the limit")
    extra = e.client()
    check(extra.closed_by_peer(2 * SLOW), "the 4th connection from 127.0.0.1 is closed")
    extra.close()
    clients[0].close()

    def fourth_ok():
        try:
            with e.client() as c:
                return c.get("/hello").status == 200
        except (OSError, IncompleteResponse):
            return False
    wait_until(fourth_ok, 5 * SLOW, what="a slot freed by a close")
    for c in clients[1:]:
        eq(c.get("/hello").status, 200, "the others kept")
        c.close()
    # the admin listener is not counted
    with Client(e.admin_port) as a:
        eq(a.get("/health").status, 200, "admin reachable")
