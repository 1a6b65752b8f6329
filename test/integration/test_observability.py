# SPDX-License-Identifier: MIT
"""Observability through the real binary: /metrics parsed by promtool, the admin token, /ready, the JSON
access log (values, X-Request-Id, SIGUSR1 reopen), the slow log, Server-Timing, and analytics rows in a
real PostgreSQL on loopback that the test stops and restarts under load."""

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from harness import (SLOW, Client, Env, Proc, basic_conf, check, conf_block, eq, free_port, http_get, port_open,
                     run_dir, shared, test, tmp_path, wait_until)


# ---------------------------------------------------------------- helpers

def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def wait_lines(path, n, timeout=5):
    return wait_until(lambda: (lambda ls: ls if len(ls) >= n else None)(read_lines(path)), timeout * SLOW,
                      what="%d lines in %s" % (n, path))


def metrics(env, headers=()):
    r = http_get(env.admin_port, "/metrics", headers)
    eq(r.status, 200, "GET /metrics status")
    check(r.header("Content-Type", "").startswith("text/plain; version=0.0.4"), r.header("Content-Type"))
    return r.body.decode()


def sample(text, name, labels):
    """The value of the sample `name{labels}` (labels: the exact text between the braces)."""
    want = "%s{%s} " % (name, labels) if labels else name + " "
    for line in text.splitlines():
        if line.startswith(want):
            return float(line[len(want):])
    raise AssertionError("no sample %s{%s}" % (name, labels))


class PgProc(Proc):
    """postgres stops at once on SIGINT (fast shutdown); SIGTERM would wait for its clients."""

    def stop(self, timeout=10):
        self.signal(signal.SIGINT)
        self.wait(timeout)
        return super().stop(timeout)


class Postgres:
    """A private PostgreSQL (initdb in a temp dir) on a free loopback port that can be stopped and
    started again; as root it runs as the postgres user, which it insists on."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        check(bins, "PostgreSQL is installed (scripts/deps)")
        self.bin = os.path.dirname(bins[-1])
        self.prefix = []
        if os.getuid() == 0:
            self.prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        # inside the run's temp dir (removed at exit), which the postgres user must be able to cross
        os.chmod(run_dir(), 0o711)
        self.dir = tempfile.mkdtemp(prefix="pg-", dir=run_dir())
        os.chmod(self.dir, 0o755)
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        subprocess.run(self.prefix + [self.bin + "/initdb", "-D", self.dir + "/data", "-U", "sluice",
                                      "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = None
        self.start()
        wait_until(lambda: subprocess.run(self.prefix + [self.bin + "/createdb", "-h", "127.0.0.1", "-p",
                                                         str(self.port), "-U", "sluice", "sluice"],
                                          stderr=subprocess.DEVNULL).returncode == 0, 20 * SLOW,
                   what="createdb")
        self.url = "postgresql://sluice@127.0.0.1:%d/sluice" % self.port

    def start(self):
        self.proc = PgProc(self.prefix + [self.bin + "/postgres", "-D", self.dir + "/data", "-k", self.dir, "-p",
                                        str(self.port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                         name="postgres")
        wait_until(lambda: port_open(self.port), 20 * SLOW, what="postgres listening")

    def stop(self):
        self.proc.signal(signal.SIGINT)
        check(self.proc.wait(20 * SLOW) is not None, "postgres stopped")

    def alive(self):
        return self.proc.alive()

    def query(self, sql):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "sluice", "-d", "sluice",
                              "-At", "-F", "\t", "-c", sql], capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise AssertionError("psql: %s" % out.stderr.strip())
        return [l.split("\t") for l in out.stdout.splitlines()]

    def count(self):
        try:
            return int(self.query("SELECT count(*) FROM sluice_requests")[0][0])
        except AssertionError:
            return -1


def postgres():
    pg = shared("postgres", Postgres)
    if not pg.alive():
        pg.start()
    return pg


# ---------------------------------------------------------------- /metrics, token, /ready

def obs_env(top="", server="", route="", upstream="", routes=()):
    return Env(lambda env: basic_conf(env, top=top, server=server, route=route, upstream=upstream,
                                      routes=[("/", route), ("/hello", "cache main;")] + list(routes))
               .replace("upstream origin {", conf_block("cache main", "memory 8m;") + "upstream origin {"))


@test
def metrics_parse_with_promtool_and_carry_the_counts():
    promtool = shutil.which("promtool")
    check(promtool is not None, "promtool is installed (Debian package prometheus, scripts/deps)")
    env = obs_env()
    for _ in range(3):
        eq(env.get("/echo").status, 200)
    eq(env.get("/status/503").status, 503)
    eq(env.get("/hello").status, 200)
    eq(env.get("/hello").header("X-Cache"), "HIT")
    text = metrics(env)
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    eq(out.returncode, 0, "promtool check metrics exit status (%s)" % (out.stdout + out.stderr).strip())
    route = 'route="127.0.0.1:%d/"' % env.port
    eq(sample(text, "sluice_route_requests_total", route), 4)
    eq(sample(text, "sluice_route_responses_total", route + ',code="2xx"'), 3)
    eq(sample(text, "sluice_route_responses_total", route + ',code="5xx"'), 1)
    croute = 'route="127.0.0.1:%d/hello"' % env.port
    eq(sample(text, "sluice_route_cache_hit_total", croute), 1)
    eq(sample(text, "sluice_route_cache_miss_total", croute), 1)
    # a latency histogram from 100 us to a minute, cumulative, +Inf == _count
    buckets = [l for l in text.splitlines() if l.startswith("sluice_route_latency_seconds_bucket{" + route)]
    check('le="0.0001"' in buckets[0] and 'le="60"' in buckets[-2] and 'le="+Inf"' in buckets[-1], buckets)
    values = [float(l.rsplit(" ", 1)[1]) for l in buckets]
    eq(values, sorted(values), "cumulative buckets")
    eq(values[-1], 4, "+Inf bucket")
    eq(sample(text, "sluice_route_latency_seconds_count", route), 4)
    check(0 < sample(text, "sluice_route_latency_seconds_sum", route) < 10)
    check(sample(text, "sluice_server_requests_total", 'server="origin/%s"' % env.origin.addr) >= 5)
    check(sample(text, "sluice_cache_objects", 'cache="main"') >= 1)
    check(sample(text, "sluice_resident_memory_bytes", None) > 1e6)
    eq(sample(text, "sluice_conf_generation", None), 1)


@test
def admin_token_guards_every_endpoint():
    env = Env(lambda env: basic_conf(env).replace("listen 127.0.0.1:%d;" % env.admin_port,
                                                  "listen 127.0.0.1:%d;\n    token s3cret;" % env.admin_port))
    for path in ("/metrics", "/stats", "/ready", "/dashboard"):
        eq(http_get(env.admin_port, path).status, 401, path + " without a token")
        eq(http_get(env.admin_port, path, [("Authorization", "Bearer wrong")]).status, 401, path + " wrong token")
        eq(http_get(env.admin_port, path, [("Authorization", "Bearer s3cret")]).status, 200, path + " right token")


@test
def ready_reports_listeners_and_dependencies():
    env = Env()
    r = http_get(env.admin_port, "/ready")
    eq(r.status, 200)
    d = r.json()
    eq(d["status"], "ready")
    eq(d["analytics"], "off")
    eq(d["redis"], "off")
    check(d["listeners"] >= 1, d)
    eq(list(d["upstreams"]), ["origin"])
    eq(d["upstreams"]["origin"], {"servers": 1, "available": 1, "down": 0, "breaker_open": 0})
    eq(d["degraded"], False)
    # a breaker forced open leaves the upstream with nothing to send to
    with Client(env.admin_port) as c:
        eq(c.request("POST", "/breaker?server=origin/%s&state=open" % env.origin.addr).status, 200)
    d = http_get(env.admin_port, "/ready").json()
    eq((d["status"], d["degraded"], d["upstreams"]["origin"]["breaker_open"]), ("ready", True, 1))


# ---------------------------------------------------------------- access log, slow log, Server-Timing

@test
def access_log_lines_carry_the_request():
    log = tmp_path("access.log")
    env = obs_env(top="access_log %s json;" % log)
    r = env.get("/echo?x=1", headers=[("X-Request-Id", "client-id-42")])
    eq(r.status, 200)
    eq(r.header("X-Request-Id"), "client-id-42", "id echoed to the client")
    sent = dict((n.lower(), v) for n, v in r.json()["headers"])
    eq(sent.get("x-request-id"), "client-id-42", "id sent upstream")
    r2 = env.get("/echo", headers=[("X-Request-Id", "bad id with spaces")])
    gen = r2.header("X-Request-Id")
    check(gen and gen != "bad id with spaces" and " " not in gen, gen)
    eq(dict((n.lower(), v) for n, v in r2.json()["headers"]).get("x-request-id"), gen, "generated id sent upstream")
    eq(env.get("/status/404").status, 404)
    eq(env.get("/hello").status, 200)
    eq(env.get("/hello").status, 200)
    lines = wait_lines(log, 5)
    by_id = {l["request_id"]: l for l in lines}
    a = by_id["client-id-42"]
    eq(a["method"], "GET")
    eq(a["path"], "/echo?x=1")
    eq(a["status"], 200)
    eq(a["client"], "127.0.0.1")
    eq(a["route"], "127.0.0.1:%d/" % env.port)
    eq(a["upstream"], "origin/" + env.origin.addr)
    eq(a["cache"], None)
    eq(a["retries"], 0)
    eq(a["breaker"], None)
    eq(a["limit"], None)
    check(a["bytes_in"] > 20 and a["bytes_out"] > len(r.body), a)
    check(0 <= a["upstream_ms"] <= a["total_ms"] < 5000, a)
    check(a["time"].endswith("Z") and abs(time.time() - time.mktime(time.strptime(a["time"][:19], "%Y-%m-%dT%H:%M:%S"))
                                          + time.timezone) < 60, a["time"])
    check(gen in by_id, "generated id logged")
    eq([l["status"] for l in lines if l["path"] == "/status/404"], [404])
    # workers write their own chunks: lines of different connections need not be in order
    hello = {l["cache"]: l for l in lines if l["path"] == "/hello"}
    eq(sorted(hello), ["HIT", "MISS"])
    eq(hello["HIT"]["upstream"], None, "a hit has no upstream")
    eq(hello["MISS"]["upstream"], "origin/" + env.origin.addr)
    st = env.sluice.stats()["counters"]
    check(st["access_log_lines_total"] >= 5 and st["access_log_dropped_total"] == 0, st)


@test
def sigusr1_reopens_the_access_log():
    log = tmp_path("access.log")
    env = obs_env(top="access_log %s json;" % log)
    eq(env.get("/hello", headers=[("X-Request-Id", "before")]).status, 200)
    wait_lines(log, 1)
    os.rename(log, log + ".1")
    env.sluice.proc.signal(signal.SIGUSR1)
    wait_until(lambda: os.path.exists(log), 5 * SLOW, what="a new access log file")
    eq(env.get("/hello", headers=[("X-Request-Id", "after")]).status, 200)
    eq([l["request_id"] for l in wait_lines(log, 1)], ["after"])
    eq([l["request_id"] for l in read_lines(log + ".1")], ["before"])


@test(timeout=60)
def access_log_follows_reloads():
    env = Env()
    eq(env.get("/hello").status, 200)
    log1, log2 = tmp_path("one.log"), tmp_path("two.log")

    def reload_to(top, generation):
        env.sluice.reload(basic_conf(env, top=top))
        wait_until(lambda: env.sluice.stats()["conf_generation"] == generation, 10 * SLOW, what="reload applied")
    reload_to("access_log %s json;" % log1, 2)
    eq(env.get("/hello", headers=[("X-Request-Id", "to-one")]).status, 200)
    eq([l["request_id"] for l in wait_lines(log1, 1)], ["to-one"])
    reload_to("access_log %s json;" % log2, 3)
    eq(env.get("/hello", headers=[("X-Request-Id", "to-two")]).status, 200)
    eq([l["request_id"] for l in wait_lines(log2, 1)], ["to-two"])
    reload_to("access_log off;", 4)
    eq(env.get("/hello", headers=[("X-Request-Id", "nowhere")]).status, 200)
    time.sleep(0.6 * SLOW)
    eq([l["request_id"] for l in read_lines(log1)], ["to-one"])
    eq([l["request_id"] for l in read_lines(log2)], ["to-two"])


@test
def slow_requests_go_to_the_slow_log():
    slow = tmp_path("slow.log")
    env = obs_env(top="slow_log %s;\nslow_log_threshold 150ms;" % slow)
    eq(env.get("/slow?ms=300").status, 200)
    eq(env.get("/hello").status, 200)
    lines = wait_lines(slow, 1)
    time.sleep(0.5)
    lines = read_lines(slow)
    eq([l["path"] for l in lines], ["/slow?ms=300"])
    check(lines[0]["total_ms"] >= 300, lines[0])
    eq(env.sluice.stats()["routes"]["127.0.0.1:%d/" % env.port]["slow"], 1)


@test
def server_timing_lists_the_phases():
    env = obs_env(server="server_timing on;")
    r = env.get("/slow?ms=50")
    st = r.header("Server-Timing")
    check(st is not None, "Server-Timing present")
    phases = dict((p.split(";dur=")[0].strip(), float(p.split(";dur=")[1])) for p in st.split(","))
    check({"queue", "connect", "upstream", "total"} <= set(phases), phases)
    # the origin's 50 ms timer runs on its loop's cached clock: it may fire a little early by ours
    check(phases["upstream"] >= 45 and phases["total"] >= phases["upstream"], phases)
    check(r.header("X-Request-Id"), "an id comes with it")
    off = Env()
    check(off.get("/hello").header("Server-Timing") is None, "off by default")
    check(off.get("/hello").header("X-Request-Id") is None, "no id when nothing observes")
    # per route: on for /echo only
    routed = Env(lambda env: basic_conf(env, routes=[("/", ""), ("/echo", "server_timing on;")]))
    check(routed.get("/echo").header("Server-Timing") is not None, "on for the route that asks")
    check(routed.get("/hello").header("Server-Timing") is None, "off for the others")


# ---------------------------------------------------------------- analytics in PostgreSQL

def analytics_conf(pg, queue=100000):
    return lambda env: basic_conf(env, top="analytics %s { batch 50; flush 100ms; queue %d; }" % (pg.url, queue))


@test(timeout=90)
def analytics_rows_arrive_with_their_values():
    pg = postgres()
    env = Env(analytics_conf(pg))
    wait_until(lambda: http_get(env.admin_port, "/ready").json()["analytics"] == "up", 20 * SLOW,
               what="analytics up")
    before = pg.count()
    for i in range(20):
        eq(env.get("/echo?n=%d" % i, headers=[("X-Request-Id", "row-%d" % i)]).status, 200)
    eq(env.get("/status/502").status, 502)
    wait_until(lambda: pg.count() >= before + 21, 10 * SLOW, what="21 rows in sluice_requests")
    rows = pg.query("SELECT route, method, path, status, duration_ms, upstream_ms, cache_status, upstream_server, "
                    "retries, client_key, request_id, extract(epoch from now() - time) FROM sluice_requests "
                    "WHERE request_id = 'row-7'")
    eq(len(rows), 1)
    route, method, path, status, dur, up, cache, server, retries, key, rid, age = rows[0]
    eq((route, method, path, status, cache, server, retries, rid),
       ("127.0.0.1:%d/" % env.port, "GET", "/echo?n=7", "200", "", "origin/" + env.origin.addr, "0", "row-7"))
    check(0 <= float(up) <= float(dur) < 5000, (up, dur))
    check(len(key) == 16 and key != "127.0.0.1" and all(c in "0123456789abcdef" for c in key), key)
    check(0 <= float(age) < 60, age)
    eq(pg.query("SELECT count(*) FROM sluice_requests WHERE status = 502 AND path = '/status/502'")[0][0], "1")
    idx = {r[0] for r in pg.query("SELECT indexname FROM pg_indexes WHERE tablename = 'sluice_requests'")}
    check({"sluice_requests_time_idx", "sluice_requests_route_time_idx"} <= idx, idx)
    c = env.sluice.stats()["counters"]
    check(c["analytics_rows_total"] >= 21 and c["analytics_dropped_total"] == 0, c)
    # scripts/report reads the table back
    out = subprocess.run([os.path.join(os.path.dirname(__file__), "../../scripts/report"), pg.url],
                         capture_output=True, text=True, timeout=30)
    eq(out.returncode, 0, "scripts/report exit status: " + out.stderr)
    check("127.0.0.1:%d/" % env.port in out.stdout and "p99" in out.stdout, out.stdout)


def load(port, seconds, counts, stop, path="/hello"):
    """One keep-alive client hammering path until stop is set; counts[0] ok, counts[1] failed."""
    from harness import Client
    end = time.monotonic() + seconds
    c = None
    while time.monotonic() < end and not stop.is_set():
        try:
            if c is None:
                c = Client(port, timeout=5)
            r = c.get(path)
            counts[0 if r.status == 200 else 1] += 1
        except Exception:
            counts[1] += 1
            c = None


def rate(port, seconds):
    counts = [0, 0]
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(port, seconds, counts, stop)) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts[0] / (time.monotonic() - t0), counts[1]


@test(timeout=150)
def postgres_down_mid_load_drops_rows_not_requests():
    pg = postgres()
    env = Env(analytics_conf(pg, queue=200))
    wait_until(lambda: http_get(env.admin_port, "/ready").json()["analytics"] == "up", 20 * SLOW,
               what="analytics up")
    up_rate, up_fail = rate(env.port, 2)
    eq(up_fail, 0, "failed requests with PostgreSQL up")
    wait_until(lambda: env.sluice.stats()["counters"]["analytics_rows_total"] > 0, 10 * SLOW, what="rows written")
    pg.stop()
    down_rate, down_fail = rate(env.port, 2)
    eq(down_fail, 0, "failed requests with PostgreSQL down")
    c = env.sluice.stats()["counters"]
    check(c["analytics_dropped_total"] > 0, "rows dropped and counted while down: %r" % c)
    eq(http_get(env.admin_port, "/ready").json()["analytics"], "down")
    # the proxy does not wait for the database: the rate holds (loose bound: a shared 2-core machine)
    check(down_rate > 0.5 * up_rate, "rate up %.0f/s, down %.0f/s" % (up_rate, down_rate))
    pg.start()
    wait_until(lambda: http_get(env.admin_port, "/ready").json()["analytics"] == "up", 20 * SLOW,
               what="analytics reconnected")
    before = pg.count()
    for i in range(10):
        eq(env.get("/hello", headers=[("X-Request-Id", "back-%d" % i)]).status, 200)
    wait_until(lambda: pg.query("SELECT count(*) FROM sluice_requests WHERE request_id LIKE 'back-%'")[0][0] == "10",
               10 * SLOW, what="rows flowing again")
    check(pg.count() >= before + 10)
    check(env.sluice.stats()["counters"]["analytics_connects_total"] >= 2)


# ---------------------------------------------------------------- the dashboard in a real browser

class WebDriver:
    """Headless Chromium driven through chromedriver's W3C WebDriver API (plain HTTP + JSON)."""

    def __init__(self):
        exe = shutil.which("chromedriver")
        check(exe is not None and shutil.which("chromium") is not None,
              "chromium and chromium-driver are installed (scripts/deps)")
        self.port = free_port()
        self.proc = Proc([exe, "--port=%d" % self.port], name="chromedriver")
        wait_until(lambda: port_open(self.port), 20 * SLOW, what="chromedriver listening")
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--user-data-dir=" + tempfile.mkdtemp(dir=os.path.dirname(tmp_path("x")))]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method, path, body=None):
        import urllib.request
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60 * SLOW) as r:
            return json.loads(r.read())["value"]

    def open(self, url):
        self._call("POST", "/session/%s/url" % self.session, {"url": url})

    def js(self, script):
        return self._call("POST", "/session/%s/execute/sync" % self.session, {"script": script, "args": []})

    def quit(self):
        try:
            self._call("DELETE", "/session/%s" % self.session)
        finally:
            self.proc.stop()


FIGURES = """
function cells(sel) {
  return Array.prototype.map.call(document.querySelectorAll(sel + " tbody tr"), function (tr) {
    function t(c) { var e = tr.querySelector("." + c); return e ? e.textContent : null; }
    var lines = tr.querySelectorAll("svg polyline");
    return {name: tr.getAttribute("data-name"), rate: t("rate"), p50: t("p50"), p95: t("p95"), p99: t("p99"),
            hit: t("hit"), ok: t("s2x"), bars: tr.querySelectorAll(".bar").length, lines: lines.length,
            points: lines.length ? lines[2].getAttribute("points").split(" ").length : 0};
  });
}
return {polls: Number(document.body.getAttribute("data-polls") || 0), error: document.getElementById("error").textContent,
        routes: cells("#routes"), servers: cells("#servers"),
        breakers: Array.prototype.map.call(document.querySelectorAll("#servers tbody td.breaker"),
                                           function (td) { return td.textContent; }),
        limited: Array.prototype.map.call(document.querySelectorAll("#limits tbody .limited"),
                                          function (e) { return Number(e.textContent); }),
        inflight: document.querySelectorAll("#inflight tbody tr").length,
        counters: document.querySelectorAll("#counters tbody tr").length};
"""


@test(timeout=120)
def dashboard_renders_live_figures_in_chromium():
    log = tmp_path("access.log")
    env = obs_env(top="access_log %s json;\nlimit tight { key ip; rate 1/m; }" % log, upstream="breaker on;",
                  routes=[("/limited", "limit tight;\nmax_inflight 50;")])
    stop = threading.Event()
    counts = [0, 0]
    worker = threading.Thread(target=load, args=(env.port, 60, counts, stop, "/echo"))
    cached = threading.Thread(target=lambda: [env.get("/hello") for _ in range(200) if not stop.is_set()])

    def limited():
        while not stop.is_set():
            env.get("/limited")
            time.sleep(0.05)
    rejected = threading.Thread(target=limited)
    worker.start()
    cached.start()
    rejected.start()
    browser = WebDriver()
    try:
        browser.open("http://127.0.0.1:%d/dashboard" % env.admin_port)
        route = "127.0.0.1:%d/" % env.port

        def rendered():
            f = browser.js(FIGURES)
            rows = {r["name"]: r for r in f["routes"]}
            r = rows.get(route)
            if (f["polls"] >= 4 and r and float(r["rate"]) > 0 and r["points"] >= 3 and f["limited"]
                    and max(f["limited"]) > 0):
                return f
            return None
        try:
            f = wait_until(rendered, 30 * SLOW, interval=0.5, what="the dashboard showing live figures")
        except Exception:
            print("  # last figures: %r" % browser.js(FIGURES))
            raise
    finally:
        stop.set()
        worker.join()
        cached.join()
        rejected.join()
        browser.quit()
    eq(f["error"], "", "no fetch error on the page")
    rows = {r["name"]: r for r in f["routes"]}
    r = rows[route]
    check(int(r["ok"]) > 0 and r["bars"] >= 1 and r["lines"] == 3, r)
    check(0 <= float(r["p50"]) <= float(r["p95"]) <= float(r["p99"]) < 5000, r)
    hit = rows[route + "hello"]["hit"]
    check(hit.endswith("%") and float(hit.split()[0]) > 50, "cache hit ratio %r" % hit)
    servers = {s["name"]: s for s in f["servers"]}
    s = servers["origin/" + env.origin.addr]
    check(float(s["rate"]) >= 0 and s["lines"] == 3 and float(s["p99"]) >= float(s["p50"]), s)
    check(f["counters"] >= 4, "access log counters listed")
    check("closed" in f["breakers"], "breaker states shown: %r" % f["breakers"])
    check(f["inflight"] >= 1, "max_inflight rows shown")
    eq(counts[1], 0, "failed requests under load")
