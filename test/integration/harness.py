#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Integration-test harness of sluice (python3 standard library only).

It starts the real binaries (sluice and the scriptable origin, paths from
SLUICE_BIN / SLUICE_ORIGIN_BIN, default build/release/...) on free loopback
ports, writes their confs, talks raw HTTP/1.1 over sockets and runs the tests.

    python3 test/integration/harness.py [-k SUBSTRING] [test_x.py ...]

With no file it runs every test_*.py next to this file.  A test is a function
decorated with @test; it runs under a per-test timeout and every process it
started is killed when it ends, pass or fail.  Modules may share processes
between their tests with shared(), which are stopped when the module is done.
Output: "ok NAME" or "FAIL NAME: reason" per test, then "N passed, N failed".
"""

import atexit
import glob
import hashlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SLUICE_BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build/release/sluice"))
ORIGIN_BIN = os.environ.get("SLUICE_ORIGIN_BIN", os.path.join(ROOT, "build/release/sluice-origin"))
# Sanitizer builds are several times slower: timing bounds get this factor.
# SLUICE_WRAP: a command that runs sluice (e.g. valgrind with its options), for `make valgrind`
SLUICE_WRAP = os.environ.get("SLUICE_WRAP", "").split()
SLOW = float(os.environ.get("SLUICE_TEST_SLOW", "3" if "asan" in SLUICE_BIN + ORIGIN_BIN else "1"))

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class TestFailure(AssertionError):
    pass


class TestTimeout(Exception):
    pass


def check(cond, msg="check failed"):
    """assert that survives python -O and says what was expected."""
    if not cond:
        raise TestFailure(msg)


def eq(actual, expected, what="value"):
    if actual != expected:
        raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))


# ---------------------------------------------------------------- processes

_run_dir = None
_scopes = [[]]  # stack of process lists: [run-wide, module (shared), test]


def run_dir():
    """A temp directory for this run (confs, logs), removed at exit."""
    global _run_dir
    if _run_dir is None:
        _run_dir = tempfile.mkdtemp(prefix="sluice-it-")
        atexit.register(_at_exit)
    return _run_dir


def _at_exit():
    """Also when the harness is used as a library: no process or temp file outlives the run."""
    for scope in _scopes:
        _stop_all(scope)
    if _run_dir and not os.environ.get("SLUICE_KEEP_TMP"):
        shutil.rmtree(_run_dir, ignore_errors=True)


def tmp_path(name):
    d = tempfile.mkdtemp(dir=run_dir())
    return os.path.join(d, name)


_given_ports = set()


def free_port():
    """A loopback port nobody listens on right now (and not handed out before in this run)."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _given_ports:
            _given_ports.add(port)
            return port
    raise RuntimeError("no free port")


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_port(port, timeout=10, proc=None):
    def ready():
        if proc is not None and not proc.alive():
            raise TestFailure("%s exited with %s before listening on %d:\n%s"
                              % (proc.name, proc.returncode(), port, proc.log_tail()))
        return port_open(port)
    wait_until(ready, timeout, what="port %d" % port)


class Proc:
    """A child process with its stderr in a log file; registered for cleanup in the current scope."""

    def __init__(self, argv, name=None, env=None, stdout=subprocess.DEVNULL):
        self.name = name or os.path.basename(argv[0])
        self.log_path = tmp_path(self.name + ".log")
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=self._log,
                                  env=full_env)
        self.pid = self.p.pid
        _scopes[-1].append(self)

    def alive(self):
        return self.p.poll() is None

    def returncode(self):
        return self.p.poll()

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Exit code, or None if still running after timeout seconds."""
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL if it does not exit in time.  Returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.p.kill()
                self.p.wait()
        if self.p.stdout:
            self.p.stdout.close()
        self._log.close()
        return self.p.returncode


    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=20):
        return "\n".join(self.log().splitlines()[-lines:])

    def rss_kb(self):
        """Resident set size in KiB (VmRSS of /proc/PID/status)."""
        return rss_kb(self.pid)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise TestFailure("no VmRSS for pid %d" % pid)


class Origin:
    """The scriptable origin (test/origin/origin.c) on a free port."""

    def __init__(self, idle_ms=None, args=()):
        last = None
        for _ in range(3):
            self.port = free_port()
            argv = [ORIGIN_BIN, "-p", str(self.port), "-w"] + list(args)
            if idle_ms is not None:
                argv += ["-k", str(idle_ms)]
            self.proc = Proc(argv, name="origin", stdout=subprocess.PIPE)
            if self._wait_ready(10 * SLOW):
                return
            last = self.proc.log_tail()
            self.proc.stop()
        raise TestFailure("origin did not start: %s" % last)

    def _wait_ready(self, timeout):
        fd = self.proc.p.stdout.fileno()
        got = b""
        deadline = time.monotonic() + timeout
        while b"ready\n" not in got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return False
            chunk = os.read(fd, 64)
            if not chunk:
                return False
            got += chunk
        return True

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def alive(self):
        return self.proc.alive()

    def get(self, target, headers=()):
        with Client(self.port) as c:
            return c.request("GET", target, headers=headers)

    def count(self):
        """{"requests", "connections", "open"}; this query itself adds one of each."""
        return self.get("/count").json()

    def reset(self):
        eq(self.get("/reset").status, 200, "origin /reset status")


def conf_block(name, body):
    return "%s {\n%s\n}\n" % (name, "\n".join("    " + l for l in body.strip().splitlines()))


class Sluice:
    """The proxy under test, started on a conf text; waits for the given ports to listen."""

    def __init__(self, conf, ports=(), env=None, admin_port=None):
        self.conf_path = tmp_path("sluice.conf")
        self.admin_port = admin_port
        self.ports = list(ports)
        self.write_conf(conf)
        self.proc = Proc(SLUICE_WRAP + [SLUICE_BIN, "-c", self.conf_path], name="sluice", env=env)
        for p in self.ports + ([admin_port] if admin_port else []):
            wait_port(p, timeout=10 * SLOW, proc=self.proc)

    def write_conf(self, conf):
        with open(self.conf_path, "w") as f:
            f.write(conf)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.alive()

    def rss_kb(self):
        return self.proc.rss_kb()

    def reload(self, conf=None):
        if conf is not None:
            self.write_conf(conf)
        self.proc.signal(signal.SIGHUP)

    def stats(self):
        r = http_get(self.admin_port, "/stats")
        eq(r.status, 200, "GET /stats status")
        return r.json()

    def log(self):
        return self.proc.log()


class Env:
    """One origin behind one sluice: the usual test fixture.

    conf_fn(env) returns the conf text; it can use env.origin.addr, env.port,
    env.admin_port and env.extra_ports (allocated before it is called)."""

    def __init__(self, conf_fn=None, origin_idle_ms=None, extra_ports=0, env=None, workers=2):
        self.origin = Origin(idle_ms=origin_idle_ms)
        self.port = free_port()
        self.admin_port = free_port()
        self.extra_ports = [free_port() for _ in range(extra_ports)]
        self.workers = workers
        conf = (conf_fn or basic_conf)(self)
        self.sluice = Sluice(conf, ports=[self.port] + self.extra_ports, admin_port=self.admin_port, env=env)

    def alive(self):
        return self.origin.alive() and self.sluice.alive()

    def client(self, port=None, timeout=10):
        return Client(port or self.port, timeout=timeout)

    def get(self, target, headers=(), port=None):
        with self.client(port) as c:
            return c.request("GET", target, headers=headers)


def basic_conf(env, upstream="", server="", route="", top="", routes=None, listen_port=None):
    """A conf with one upstream "origin" and one server; extra directives go in as text."""
    routes = routes if routes is not None else [("/", route)]
    route_text = "".join(conf_block("route %s" % prefix, "upstream origin;\n" + body)
                         for prefix, body in routes)
    return ("workers %d;\nerror_log stderr info;\n%s\n" % (env.workers, top)
            + conf_block("admin", "listen 127.0.0.1:%d;" % env.admin_port)
            + conf_block("upstream origin", "server %s;\n%s" % (env.origin.addr, upstream))
            + conf_block("server", "listen 127.0.0.1:%d;\n%s\n%s" % (listen_port or env.port, server, route_text)))


# ---------------------------------------------------------------- HTTP client

class IncompleteResponse(Exception):
    """The peer closed before the message was complete."""

    def __init__(self, msg, received=0):
        super().__init__(msg)
        self.received = received


class Response:
    def __init__(self, version, status, reason, headers):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)] in order
        self.body = b""
        self.interim = []  # 1xx responses that came before this one
        self.body_length = 0

    def header(self, name, default=None):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def has_header(self, name):
        return self.header(name) is not None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise TestFailure("response body is not JSON: %r" % self.body[:200])

    def __repr__(self):
        return "<Response %d %s, %d body bytes>" % (self.status, self.reason, self.body_length)


def build_request(method, target, headers=(), body=None, host="sluice.test"):
    """Request bytes; adds Host and (for a body without Transfer-Encoding) Content-Length."""
    headers = list(headers)
    names = {n.lower() for n, _ in headers}
    if "host" not in names:
        headers.insert(0, ("Host", host))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    head = "%s %s HTTP/1.1\r\n" % (method, target)
    head += "".join("%s: %s\r\n" % (n, v) for n, v in headers) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def chunked(pieces):
    """Encodes an iterable of byte strings in chunked coding, with the last chunk."""
    out = b""
    for p in pieces:
        if p:
            out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n\r\n"


class Client:
    """One client connection with a read buffer: exact bytes out, parsed responses in."""

    def __init__(self, port, host="127.0.0.1", timeout=10, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, size=1 * MiB):
        """Reads more into buf; False at EOF."""
        if self.eof:
            return False
        data = self.sock.recv(size)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_line(self, limit=64 * KiB):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise TestFailure("line longer than %d bytes" % limit)
            if not self._fill():
                raise IncompleteResponse("connection closed in the middle of a head (%d bytes buffered: %r)"
                                         % (len(self.buf), bytes(self.buf[:100])))

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise IncompleteResponse("connection closed: wanted %d bytes, have %d" % (n, len(self.buf)),
                                         len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self):
        """The next response head (1xx included)."""
        line = self.read_line()
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?\r\n$", line)
        if not m:
            raise TestFailure("bad status line %r" % line)
        headers = []
        while True:
            h = self.read_line()
            if h == b"\r\n":
                break
            if b":" not in h or not h.endswith(b"\r\n"):
                raise TestFailure("bad header line %r" % h)
            n, v = h[:-2].split(b":", 1)
            headers.append((n.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
        return Response(m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), headers)

    def iter_body(self, resp, method="GET"):
        """Yields the body of resp in pieces as they arrive (decoded from chunked coding)."""
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header("Content-Length")
        got = 0
        if "chunked" in te:
            try:
                while True:
                    size_line = self.read_line()
                    try:
                        size = int(size_line.split(b";")[0].strip(), 16)
                    except ValueError:
                        raise TestFailure("bad chunk size line %r" % size_line)
                    if size == 0:
                        while self.read_line() != b"\r\n":  # trailers
                            pass
                        return
                    left = size
                    while left:
                        if not self.buf and not self._fill():
                            raise IncompleteResponse("inside a chunk")
                        piece = bytes(self.buf[:left])
                        del self.buf[:len(piece)]
                        left -= len(piece)
                        got += len(piece)
                        yield piece
                    if self.read_exact(2) != b"\r\n":
                        raise TestFailure("chunk not followed by CRLF")
            except IncompleteResponse as e:
                raise IncompleteResponse("connection closed before the last chunk, after %d body bytes (%s)"
                                         % (got, e), got)
        elif cl is not None:
            left = int(cl)
            while left:
                if not self.buf and not self._fill():
                    raise IncompleteResponse("connection closed after %d of %s body bytes" % (got, cl), got)
                piece = bytes(self.buf[:left])
                del self.buf[:len(piece)]
                left -= len(piece)
                got += len(piece)
                yield piece
        else:
            while True:
                if self.buf:
                    piece = bytes(self.buf)
                    self.buf.clear()
                    got += len(piece)
                    yield piece
                if not self._fill():
                    return

    def read_response(self, method="GET", sink=None):
        """The next final response; 1xx ones before it land in resp.interim.  With sink, body pieces
        go to sink(piece) instead of resp.body (resp.body_length counts them either way)."""
        interim = []
        while True:
            resp = self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        if resp.status == 101:
            return resp
        parts = []
        for piece in self.iter_body(resp, method):
            resp.body_length += len(piece)
            if sink:
                sink(piece)
            else:
                parts.append(piece)
        resp.body = b"".join(parts)
        return resp

    def request(self, method, target, headers=(), body=None, sink=None):
        self.send(build_request(method, target, headers, body))
        return self.read_response(method, sink=sink)

    def get(self, target, headers=()):
        return self.request("GET", target, headers)

    def closed_by_peer(self, timeout=2.0):
        """True if the peer closes (EOF or reset) within timeout; buffered unread bytes are dropped."""
        deadline = time.monotonic() + timeout
        old = self.sock.gettimeout()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                try:
                    if not self.sock.recv(65536):
                        return True
                except socket.timeout:
                    return False
                except (ConnectionResetError, BrokenPipeError):
                    return True
        finally:
            self.sock.settimeout(old)


def http_get(port, target, headers=()):
    with Client(port) as c:
        return c.request("GET", target, headers=headers)


PATTERN_PERIOD = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-\n"


def pattern(offset, length):
    """The bytes the origin's /bytes sends at [offset, offset + length)."""
    start = offset % len(PATTERN_PERIOD)
    reps = (start + length) // len(PATTERN_PERIOD) + 1
    return (PATTERN_PERIOD * reps)[start:start + length]


class PatternChecker:
    """A sink for Client.read_response that checks /bytes content and counts it in constant memory."""

    def __init__(self):
        self.offset = 0
        self.block = pattern(0, 2 * MiB + len(PATTERN_PERIOD))

    def __call__(self, piece):
        start = self.offset % len(PATTERN_PERIOD)
        if len(piece) + start <= len(self.block):
            ok = self.block[start:start + len(piece)] == piece
        else:
            ok = pattern(self.offset, len(piece)) == piece
        if not ok:
            raise TestFailure("body differs from the origin's pattern near offset %d" % self.offset)
        self.offset += len(piece)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- runner

_tests = []  # (module name, function, timeout)
_loading = None
_shared = {}


def test(fn=None, *, timeout=30):
    """Registers a test.  @test or @test(timeout=SECONDS); the timeout is scaled by SLUICE_TEST_SLOW."""
    def register(f):
        _tests.append((_loading, f, timeout))
        return f
    return register(fn) if fn is not None else register


def shared(key, factory):
    """A fixture shared by the tests of one module (e.g. an Env); re-created if its processes died."""
    obj = _shared.get(key)
    if obj is not None and (not hasattr(obj, "alive") or obj.alive()):
        return obj
    test_scope = _scopes.pop()  # so its processes land in the module scope
    try:
        obj = factory()
    finally:
        _scopes.append(test_scope)
    _shared[key] = obj
    return obj


def _stop_all(procs, dump=False):
    """Stops procs (newest first).  Returns complaints about the ones that were still running and did not
    exit cleanly on SIGTERM: a sanitizer report at exit shows up here."""
    bad = []
    for p in reversed(procs):
        was_alive = p.alive()
        code = p.stop()
        if was_alive and code != 0:
            bad.append("%s (pid %d) exited with %s when stopped" % (p.name, p.pid, code))
            dump = True
        if dump:
            tail = p.log_tail(15)
            if tail:
                print("  # %s (pid %d) stderr:" % (p.name, p.pid))
                for line in tail.splitlines():
                    print("  #   " + line)
    del procs[:]
    return bad


def _alarm(signum, frame):
    raise TestTimeout()


def _describe(exc):
    tb = traceback.extract_tb(exc.__traceback__)
    where = ""
    for fr in reversed(tb):
        if os.path.basename(fr.filename).startswith("test_"):
            where = " (%s:%d)" % (os.path.basename(fr.filename), fr.lineno)
            break
    if isinstance(exc, TestTimeout):
        return "timed out" + where
    msg = str(exc) or type(exc).__name__
    if not isinstance(exc, TestFailure):
        msg = "%s: %s" % (type(exc).__name__, msg)
    return msg.replace("\n", "\n  # ") + where


def _load(path):
    global _loading
    name = os.path.splitext(os.path.basename(path))[0]
    _loading = name
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _loading = None
    return name


def main(argv):
    selector = None
    files = []
    i = 0
    while i < len(argv):
        if argv[i] == "-k" and i + 1 < len(argv):
            selector = argv[i + 1]
            i += 2
            continue
        files.append(argv[i])
        i += 1
    if not files:
        files = sorted(glob.glob(os.path.join(HERE, "test_*.py")))
    sys.path.insert(0, HERE)
    for exe in (ORIGIN_BIN,):
        if not os.access(exe, os.X_OK):
            print("FAIL setup: %s is missing (build it first)" % exe)
            print("0 passed, 1 failed")
            return 1

    def on_term(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, _alarm)

    passed = failed = 0
    try:
        for path in files:
            try:
                mod = _load(path)
            except Exception as e:
                failed += 1
                print("FAIL %s: cannot load: %s" % (os.path.basename(path), _describe(e)))
                continue
            _scopes.append([])  # module scope: shared fixtures
            for m, fn, timeout in [t for t in _tests if t[0] == mod]:
                name = "%s.%s" % (m, fn.__name__)
                if selector and selector not in name:
                    continue
                _scopes.append([])
                t0 = time.monotonic()
                signal.setitimer(signal.ITIMER_REAL, timeout * SLOW)
                try:
                    fn()
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    elapsed = time.monotonic() - t0
                    bad = _stop_all(_scopes.pop())
                    if bad:
                        failed += 1
                        print("FAIL %s: %s" % (name, "; ".join(bad)))
                    else:
                        passed += 1
                        print("ok %s (%.2fs)" % (name, elapsed))
                except KeyboardInterrupt:
                    raise
                except BaseException as e:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    failed += 1
                    print("FAIL %s: %s" % (name, _describe(e)))
                    _stop_all(_scopes.pop(), dump=True)
                sys.stdout.flush()
            bad = _stop_all(_scopes.pop())
            if bad:
                failed += 1
                print("FAIL %s.shared_fixtures: %s" % (mod, "; ".join(bad)))
            _shared.clear()
    except KeyboardInterrupt:
        print("interrupted")
        failed += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _at_exit()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    import harness  # the module the test files import, so they share its registry

    sys.exit(harness.main(sys.argv[1:]))
