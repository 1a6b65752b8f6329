# SPDX-License-Identifier: MIT
"""Hitless reload and drain: a bounded load (keep-alive and new-connection clients, fast and slow requests)
runs across 20 SIGHUPs alternating two confs with zero failed requests and no retry; SIGTERM drains within
shutdown_timeout."""

import signal
import threading
import time

from harness import (SLOW, Client, Env, IncompleteResponse, basic_conf, build_request, check, eq, port_open,
                     test, wait_until)


def gen_conf(env, gen):
    return basic_conf(env, top="shutdown_timeout 2s;", upstream="keepalive 16;",
                      route='set_response_header X-Gen "%s";' % gen)


class Load:
    """Client threads that never retry: every exception or non-200 is a failure.  keepalive=True sends
    every request on one connection (a new one only after the server closed it at a response boundary,
    which the response itself announced with Connection: close); False opens one per request."""

    def __init__(self, env, keepalive, targets):
        self.env = env
        self.keepalive = keepalive
        self.targets = targets
        self.ok = 0
        self.failures = []
        self.gens = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        c = None
        i = 0
        while not self.stop.is_set():
            target = self.targets[i % len(self.targets)]
            i += 1
            try:
                if c is None:
                    c = Client(self.env.port, timeout=10 * SLOW)
                r = c.get(target)
                if r.status != 200:
                    self.failures.append("%s: %d" % (target, r.status))
                else:
                    self.ok += 1
                    self.gens.add(r.header("X-Gen"))
                if not self.keepalive or (r.header("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, IncompleteResponse) as ex:
                self.failures.append("%s: %s: %s" % (target, type(ex).__name__, ex))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    def join(self):
        self.stop.set()
        self.thread.join(30 * SLOW)


@test(timeout=90)
def twenty_reloads_under_load_fail_nothing():
    e = Env(lambda env: gen_conf(env, "A"))
    loads = [Load(e, True, ["/hello", "/slow?ms=150"]), Load(e, True, ["/echo"]),
             Load(e, False, ["/hello", "/slow?ms=100"]), Load(e, False, ["/bytes?n=100000"])]
    try:
        gen = e.sluice.stats()["conf_generation"]
        for i in range(20):
            e.sluice.reload(gen_conf(e, "B" if i % 2 == 0 else "A"))
            wait_until(lambda: e.sluice.stats()["conf_generation"] > gen, 5 * SLOW,
                       what="reload %d to be applied" % (i + 1))
            gen = e.sluice.stats()["conf_generation"]
            time.sleep(0.45)  # about 10 s of load in all
    finally:
        for load in loads:
            load.join()
    stats = e.sluice.stats()
    eq(stats["reloads"]["ok"], 20, "reloads applied")
    total = sum(l.ok for l in loads)
    failures = [f for l in loads for f in l.failures]
    eq(failures[:10], [], "failed requests (of %d)" % (total + len(failures)))
    check(total > 200, "the load ran (%d requests)" % total)
    check({"A", "B"} <= set().union(*(l.gens for l in loads)), "both confs answered")
    print("  # reload test: %d requests across 20 reloads, %d failed" % (total, len(failures)))


@test(timeout=60)
def sigterm_drains_within_shutdown_timeout():
    e = Env(lambda env: gen_conf(env, "A"))
    idle = Client(e.port)
    eq(idle.get("/hello").status, 200, "an idle keep-alive connection")
    finishing = Client(e.port)
    finishing.send(build_request("GET", "/slow?ms=800"))
    stuck = Client(e.port, timeout=20)
    stuck.send(build_request("GET", "/slow?ms=30000"))
    time.sleep(0.2 * SLOW)
    t0 = time.monotonic()
    e.sluice.proc.signal(signal.SIGTERM)
    check(idle.closed_by_peer(1 * SLOW), "the idle connection is closed at once")
    wait_until(lambda: not port_open(e.port), 2 * SLOW, what="the listener to close")
    r = finishing.read_response()
    eq((r.status, r.text), (200, "slept 800 ms\n"), "a request that finishes within the deadline")
    eq(r.header("Connection"), "close", "and its connection closes after it")
    try:
        stuck.read_response()
        raise AssertionError("a 30 s request completed during a 2 s drain")
    except (IncompleteResponse, OSError):
        pass
    code = e.sluice.proc.wait(10 * SLOW)
    took = time.monotonic() - t0
    eq(code, 0, "exit status")
    check(took < 2 + 2 * SLOW, "exited %.1fs after SIGTERM with shutdown_timeout 2s" % took)
    check(took >= 1.5, "waited for the drain (%.1fs)" % took)
