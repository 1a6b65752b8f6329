# SPDX-License-Identifier: MIT
"""TLS: listeners (handshake, keep-alive, bodies, ALPN, SNI, versions, reload of
certificates) and HTTPS upstreams (verification, pooling, client certificates).
Certificates are made at test time with the openssl CLI."""

import json
import os
import socket
import ssl
import subprocess
import time

from harness import (
    Client, Env, MiB, Origin, PatternChecker, SLOW, SLUICE_BIN, Sluice, TestFailure, basic_conf, build_request,
    chunked, check, conf_block, eq, free_port, pattern, sha256_hex, shared, test, tmp_path, wait_until,
)


# ---------------------------------------------------------------- certificates

def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Certs:
    """A CA, certificates it signed (localhost + 127.0.0.1, other.test, a client) and a self-signed one."""

    def __init__(self):
        self.dir = tmp_path("certs")
        os.makedirs(self.dir, exist_ok=True)
        self.ca = self.path("ca.crt")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.path("ca.key"), "-out", self.ca, "-days", "2", "-subj", "/CN=sluice test CA")
        self.server = self.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1")
        self.other = self.issue("other", "other.test", "DNS:other.test,DNS:*.wild.test")
        self.client = self.issue("client", "sluice client", "DNS:client.test")
        self.self_signed = (self.path("self.crt"), self.path("self.key"))
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.self_signed[1], "-out", self.self_signed[0], "-days", "2",
                 "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")

    def path(self, name):
        return os.path.join(self.dir, name)

    def issue(self, name, cn, san, serial=None):
        key, csr, crt, ext = (self.path(name + s) for s in (".key", ".csr", ".crt", ".ext"))
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                 "-out", csr, "-subj", "/CN=" + cn)
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n" % san)
        serial_args = ["-set_serial", str(serial)] if serial is not None else ["-CAcreateserial"]
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.path("ca.key"), *serial_args,
                 "-out", crt, "-days", "2", "-extfile", ext)
        return crt, key


def certs():
    return shared("certs", Certs)


def client_ctx(alpn=None, ca=True):
    ctx = ssl.create_default_context(cafile=certs().ca if ca else None)
    if not ca:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_client(port, sni="localhost", ctx=None, timeout=10):
    """A harness Client whose socket speaks TLS."""
    c = Client(port, timeout=timeout * SLOW)
    c.sock = (ctx or client_ctx()).wrap_socket(c.sock, server_hostname=sni)
    return c


def peer_serial(c):
    return int(c.sock.getpeercert()["serialNumber"], 16)


def peer_cn(c):
    return dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"]


# ---------------------------------------------------------------- TLS listener

def listener_conf(env):
    crt, key = certs().server
    ocrt, okey = certs().other
    tls_port = env.extra_ports[0]
    route = conf_block("route /", "upstream origin;")
    return (basic_conf(env)
            + conf_block("server", "listen 127.0.0.1:%d tls cert=%s key=%s;\nserver_name localhost;\n%s"
                         % (tls_port, crt, key, route))
            + conf_block("server", "listen 127.0.0.1:%d tls cert=%s key=%s;\nserver_name other.test *.wild.test;\n%s"
                         % (tls_port, ocrt, okey, route)))


def listener_env():
    def make():
        certs()
        return Env(listener_conf, extra_ports=1)
    return shared("listener", make)


@test
def get_over_tls_says_https_upstream():
    env = listener_env()
    with tls_client(env.extra_ports[0]) as c:
        r = c.request("GET", "/echo", headers=[("Host", "localhost")])
        eq(r.status, 200, "status")
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        eq(seen.get("x-forwarded-proto"), "https", "X-Forwarded-Proto")
    # the plain listener next to it still says http
    r = env.get("/echo")
    seen = {k.lower(): v for k, v in r.json()["headers"]}
    eq(seen.get("x-forwarded-proto"), "http", "X-Forwarded-Proto on the plain listener")


@test
def keepalive_several_requests_on_one_connection():
    env = listener_env()
    with tls_client(env.extra_ports[0]) as c:
        for i in range(5):
            r = c.request("GET", "/hello?i=%d" % i)
            eq(r.status, 200, "status of request %d" % i)
            check(r.body.startswith(b"hello"), "body %r" % r.body[:40])
        # pipelined: two requests in one write, answered in order
        c.send(build_request("GET", "/echo?n=1") + build_request("GET", "/echo?n=2"))
        eq(c.read_response().json()["target"], "/echo?n=1", "first pipelined answer")
        eq(c.read_response().json()["target"], "/echo?n=2", "second pipelined answer")


@test
def streaming_and_chunked_bodies():
    env = listener_env()
    with tls_client(env.extra_ports[0]) as c:
        r = c.request("GET", "/stream?n=4&ms=20")
        eq(r.status, 200, "stream status")
        eq(r.body.count(b"data:"), 4, "events")
        pieces = [b"a" * 100, b"b" * 70000, b"c" * 5]
        c.send(build_request("POST", "/sink", headers=[("Transfer-Encoding", "chunked")]) + chunked(pieces))
        r = c.read_response()
        eq(r.status, 200, "chunked upload status")
        eq(r.json()["sha256"], sha256_hex(b"".join(pieces)), "upload digest")


@test
def one_mib_both_ways():
    env = listener_env()
    with tls_client(env.extra_ports[0]) as c:
        sink = PatternChecker()
        r = c.request("GET", "/bytes?n=%d" % MiB, sink=sink)
        eq(r.status, 200, "download status")
        eq(sink.offset, MiB, "bytes received")
        body = pattern(7, MiB)
        r = c.request("POST", "/sink", headers=[("Content-Length", str(len(body)))], body=body)
        eq(r.status, 200, "upload status")
        got = r.json()
        eq(got["length"], MiB, "length the origin got")
        eq(got["sha256"], sha256_hex(body), "upload digest")


@test
def alpn_http11_and_h2_only_clients():
    env = listener_env()
    with tls_client(env.extra_ports[0], ctx=client_ctx(["h2", "http/1.1"])) as c:
        eq(c.sock.selected_alpn_protocol(), "http/1.1", "ALPN with h2 and http/1.1 offered")
        eq(c.get("/hello").status, 200, "status")
    with tls_client(env.extra_ports[0], ctx=client_ctx(["h2"])) as c:
        eq(c.sock.selected_alpn_protocol(), None, "ALPN with only h2 offered")
        eq(c.get("/hello").status, 200, "status without ALPN")


@test
def sni_picks_the_certificate():
    env = listener_env()
    port = env.extra_ports[0]
    with tls_client(port, sni="localhost") as c:
        eq(peer_cn(c), "localhost", "certificate for localhost")
    with tls_client(port, sni="other.test") as c:
        eq(peer_cn(c), "other.test", "certificate for other.test")
        r = c.request("GET", "/hello", headers=[("Host", "other.test")])
        eq(r.status, 200, "status on the second server")
    with tls_client(port, sni="x.wild.test") as c:
        eq(peer_cn(c), "other.test", "certificate for a *.wild.test name")
    # an unknown name gets the default (the first server's) certificate
    ctx = client_ctx()
    ctx.check_hostname = False
    with tls_client(port, sni="unknown.test", ctx=ctx) as c:
        eq(peer_cn(c), "localhost", "default certificate")


@test
def old_protocols_refused():
    env = listener_env()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pass
    try:
        with tls_client(env.extra_ports[0], ctx=ctx):
            raise TestFailure("a TLS 1.1 handshake succeeded")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    check(env.alive(), "sluice died")


@test
def plain_http_to_a_tls_port_is_closed():
    env = listener_env()
    s = socket.create_connection(("127.0.0.1", env.extra_ports[0]), timeout=5 * SLOW)
    t0 = time.monotonic()
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    check(time.monotonic() - t0 < 3 * SLOW, "the connection was not closed promptly")
    check(b"HTTP/1.1" not in got, "answered in plain text: %r" % got[:80])
    stats = env.sluice.stats()
    check(stats["process"]["all"]["errors"]["tls"] >= 1, "tls errors not counted: %r" % stats["process"]["all"]["errors"])


@test
def handshake_timeout_is_client_header_timeout():
    env = Env(lambda e: basic_conf(e, server="client_header_timeout 300ms;", listen_port=e.extra_ports[0])
              .replace("listen 127.0.0.1:%d;" % e.extra_ports[0],
                       "listen 127.0.0.1:%d tls cert=%s key=%s;" % ((e.extra_ports[0],) + certs().server))
              + conf_block("server", "listen 127.0.0.1:%d;\nroute / { upstream origin; }" % e.port),
              extra_ports=1)
    s = socket.create_connection(("127.0.0.1", env.extra_ports[0]), timeout=5 * SLOW)
    s.sendall(b"\x16\x03\x01")  # the start of a record, never finished
    t0 = time.monotonic()
    eq(s.recv(100), b"", "the stalled handshake is closed")
    check(time.monotonic() - t0 < 2 * SLOW, "closed after %.2fs" % (time.monotonic() - t0))
    s.close()


@test(timeout=60)
def reload_swaps_the_certificate():
    cs = certs()
    crt, key = cs.issue("reload", "localhost", "DNS:localhost,IP:127.0.0.1", serial=1001)

    def conf(env):
        return basic_conf(env) + conf_block(
            "server", "listen 127.0.0.1:%d tls cert=%s key=%s;\nroute / { upstream origin; }"
            % (env.extra_ports[0], crt, key))
    env = Env(conf, extra_ports=1)
    port = env.extra_ports[0]
    old = tls_client(port)
    eq(peer_serial(old), 1001, "serial before the reload")
    eq(old.get("/hello").status, 200, "request before the reload")
    cs.issue("reload", "localhost", "DNS:localhost,IP:127.0.0.1", serial=2002)
    before = env.sluice.stats()["reloads"]["ok"]
    env.sluice.reload()
    wait_until(lambda: env.sluice.stats()["reloads"]["ok"] > before, 10 * SLOW, what="the reload")
    with tls_client(port) as c:
        eq(peer_serial(c), 2002, "serial after the reload")
        eq(c.get("/hello").status, 200, "request on a new connection")
    eq(old.get("/hello").status, 200, "request on the connection opened before the reload")
    old.close()
    # a reload naming a key that does not match is refused; the running certificate stays
    bad = basic_conf(env) + conf_block(
        "server", "listen 127.0.0.1:%d tls cert=%s key=%s;\nroute / { upstream origin; }"
        % (port, crt, cs.other[1]))
    failed = env.sluice.stats()["reloads"]["failed"]
    env.sluice.reload(bad)
    wait_until(lambda: env.sluice.stats()["reloads"]["failed"] > failed, 10 * SLOW, what="the failed reload")
    with tls_client(port) as c:
        eq(peer_serial(c), 2002, "serial after a refused reload")
    check("does not match certificate" in env.sluice.log(), "no message for the refused reload")


# ---------------------------------------------------------------- HTTPS upstreams

def tls_origin(pair=None, client_ca=None):
    crt, key = pair or certs().server
    args = ["-T", "%s:%s" % (crt, key)]
    if client_ca:
        args += ["-C", client_ca]
    return Origin(args=args)


def upstream_env(upstream_text, origin):
    """sluice with one route to an upstream written out in full (the origin speaks TLS)."""
    port, admin = free_port(), free_port()
    conf = ("workers 1;\n" + conf_block("admin", "listen 127.0.0.1:%d;" % admin)
            + conf_block("upstream origin", upstream_text % {"addr": origin.addr, "port": origin.port})
            + conf_block("server", "listen 127.0.0.1:%d;\nroute / { upstream origin; }" % port))
    return port, Sluice(conf, ports=[port], admin_port=admin)


def get(port, target, headers=()):
    with Client(port, timeout=10 * SLOW) as c:
        return c.request("GET", target, headers=headers)


@test
def https_upstream_verified_and_pooled():
    origin = tls_origin()
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;" % certs().ca, origin)
    for i in range(3):
        r = get(port, "/hello")
        eq(r.status, 200, "status of request %d" % i)
        check("alpn=http/1.1" in r.header("X-Origin-TLS", ""), "ALPN upstream: %r" % r.header("X-Origin-TLS"))
    server = s.stats()["servers"]["origin/" + origin.addr]
    eq(server["pool_new"], 1, "new upstream connections")
    eq(server["pool_reuse"], 2, "pooled reuse")
    eq(server["responses"]["2xx"], 3, "2xx")


@test
def https_upstream_host_without_client_host():
    origin = tls_origin()
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;\ntls_sni localhost;" % certs().ca, origin)
    with Client(port, timeout=10 * SLOW) as c:
        c.send(b"GET /echo HTTP/1.0\r\n\r\n")
        r = c.read_response()
    eq(r.status, 200, "status")
    seen = {k.lower(): v for k, v in r.json()["headers"]}
    eq(seen.get("host"), "localhost:%d" % origin.port, "Host sent upstream")


@test
def https_upstream_session_resumed():
    origin = tls_origin()
    # keepalive 0: every request makes a new connection, which offers the last session
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;\nkeepalive 0;" % certs().ca, origin)
    eq(get(port, "/hello").header("X-Origin-TLS", "").split()[0], "resumed=0", "first connection")

    def resumed():
        return get(port, "/hello").header("X-Origin-TLS", "").split()[0] == "resumed=1"
    wait_until(resumed, 5 * SLOW, what="a resumed session")


@test
def https_upstream_wrong_name_is_502():
    origin = tls_origin()
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;\ntls_sni wrong.example;" % certs().ca, origin)
    r = get(port, "/hello")
    eq(r.status, 502, "status")
    text = r.body.decode()
    check("TLS handshake failed" in text and "hostname mismatch" in text, "body: %r" % text)
    check(("upstream origin/%s" % origin.addr) in text, "body names the server: %r" % text)
    errors = s.stats()["servers"]["origin/" + origin.addr]["errors"]
    eq(errors["tls"], 1, "tls errors")


@test
def https_upstream_untrusted_is_502():
    origin = tls_origin(certs().self_signed)
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;" % certs().ca, origin)
    r = get(port, "/hello")
    eq(r.status, 502, "status")
    check("certificate verify failed" in r.body.decode(), "body: %r" % r.body)
    # the system store does not know it either
    port2, s2 = upstream_env("server %(addr)s tls;", origin)
    eq(get(port2, "/hello").status, 502, "status with the system store")


@test
def https_upstream_verify_off():
    origin = tls_origin(certs().self_signed)
    port, s = upstream_env("server %(addr)s tls;\ntls_verify off;", origin)
    eq(get(port, "/hello").status, 200, "status")


@test
def https_upstream_client_certificate():
    origin = tls_origin(client_ca=certs().ca)
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;" % certs().ca, origin)
    r = get(port, "/hello")
    eq(r.status, 502, "status without a client certificate")
    check("TLS handshake failed" in r.body.decode(), "body: %r" % r.body)
    crt, key = certs().client
    port, s = upstream_env("server %%(addr)s tls;\ntls_ca %s;\ntls_cert %s;\ntls_key %s;"
                           % (certs().ca, crt, key), origin)
    eq(get(port, "/hello").status, 200, "status with a client certificate")


# ---------------------------------------------------------------- conf errors

def check_conf(text):
    path = tmp_path("check.conf")
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([SLUICE_BIN, "-t", "-c", path], capture_output=True, text=True, timeout=30 * SLOW)
    return p.returncode, p.stderr, path


@test
def check_reports_bad_certificate_files():
    crt, key = certs().server
    base = "upstream u { server 127.0.0.1:1; }\n"
    cases = [
        ("server {\n listen 127.0.0.1:1 tls cert=/nonexistent.crt key=%s;\n route / { upstream u; }\n}\n" % key,
         ":3: listen 127.0.0.1:1: cannot load certificate /nonexistent.crt"),
        ("server {\n listen 127.0.0.1:1 tls cert=%s key=/nonexistent.key;\n route / { upstream u; }\n}\n" % crt,
         ":3: listen 127.0.0.1:1: cannot load key /nonexistent.key"),
        ("server {\n listen 127.0.0.1:1 tls cert=%s key=%s;\n route / { upstream u; }\n}\n" % (crt, certs().other[1]),
         ":3: listen 127.0.0.1:1: key %s does not match certificate %s" % (certs().other[1], crt)),
    ]
    for text, want in cases:
        rc, err, path = check_conf(base + text)
        eq(rc, 1, "exit status")
        check((path + want) in err, "expected %r in %r" % (path + want, err))
    rc, err, path = check_conf("upstream u {\n server 127.0.0.1:1 tls;\n tls_ca /nonexistent-ca.pem;\n}\n"
                               "server { listen 127.0.0.1:1; route / { upstream u; } }\n")
    eq(rc, 1, "exit status")
    check((path + ":1: upstream u: cannot load CA file /nonexistent-ca.pem") in err, "stderr: %r" % err)
    rc, err, path = check_conf(base + "server {\n listen 127.0.0.1:1 tls cert=%s key=%s;\n route / { upstream u; }\n}\n"
                               % (crt, key))
    eq(rc, 0, "a good certificate: %s" % err)


@test(timeout=60)
def stale_while_revalidate_refresh_reaches_a_tls_listener():
    """The background refresh is sent by the worker to the listener the request came in on: over TLS here."""
    def conf(env):
        route = conf_block("route /", "upstream origin;\n" + conf_block("cache main", "stale_while_revalidate 30s;"))
        return ("workers 1;\n" + conf_block("admin", "listen 127.0.0.1:%d;" % env.admin_port)
                + conf_block("cache main", "memory 16m;")
                + conf_block("upstream origin", "server %s;" % env.origin.addr)
                + conf_block("server", "listen 127.0.0.1:%d;\nroute /plain { upstream origin; }" % env.port)
                + conf_block("server", "listen 127.0.0.1:%d tls cert=%s key=%s;\n%s"
                             % ((env.extra_ports[0],) + certs().server + (route,))))
    env = Env(conf, extra_ports=1)
    target = "/hello?cc=max-age=1&swr=%d" % time.monotonic_ns()
    start = env.origin.count()["requests"]
    with tls_client(env.extra_ports[0]) as c:
        eq(c.get(target).header("X-Cache"), "MISS", "first answer")
        time.sleep(1.6)
        eq(c.get(target).header("X-Cache"), "STALE", "stale answer")
    polls = [0]

    def refreshed():
        polls[0] += 1
        # each /count is one more origin request; beyond them: the miss and the refresh
        return env.origin.count()["requests"] - start - polls[0] >= 2
    wait_until(refreshed, 5 * SLOW, what="the refresh to reach the origin")


@test
def websocket_tunnel_over_tls_both_sides():
    origin = tls_origin()
    port, admin = free_port(), free_port()
    crt, key = certs().server
    conf = ("workers 1;\n" + conf_block("admin", "listen 127.0.0.1:%d;" % admin)
            + conf_block("upstream origin", "server %s tls;\ntls_ca %s;" % (origin.addr, certs().ca))
            + conf_block("server", "listen 127.0.0.1:%d tls cert=%s key=%s;\nroute / { upstream origin; }"
                         % (port, crt, key)))
    Sluice(conf, ports=[port], admin_port=admin)
    with tls_client(port) as c:
        c.send(build_request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                            ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        eq(r.status, 101, "status")
        c.send(b"ping-1")
        eq(c.read_exact(6), b"ping-1", "small echo")
        data = os.urandom(256 * 1024)
        c.send(data)
        eq(c.read_exact(len(data)), data, "256 KiB echo")
