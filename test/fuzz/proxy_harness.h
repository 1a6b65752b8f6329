/* SPDX-License-Identifier: MIT */
/*
 * The proxy fuzz targets' harness: the real sluice (its main(), compiled as
 * sluice_main) runs in a thread of the fuzzer process on a loopback port, in
 * front of an upstream thread that answers each request with the bytes it is
 * given.  A fuzz input goes through real sockets, the real parser, router,
 * header rewriting and serialisation, the upstream response path and the
 * cache.  Why sockets rather than a socket-free entry point in http.c: the
 * code under test is then exactly what runs in production (parse_pending,
 * dispatch, pools, timers), with no test-only path to keep in step.
 *
 * Checks beyond the sanitizers (abort() = a finding): every request head
 * sluice sends upstream is clean HTTP/1.1 (CRLF lines, token names, one Host,
 * never Content-Length with Transfer-Encoding); every response head it sends
 * the client is too; no exchange hangs.
 */
#ifndef SLUICE_FUZZ_PROXY_HARNESS_H
#define SLUICE_FUZZ_PROXY_HARNESS_H

#include <stddef.h>

/* Starts the upstream thread and sluice once (later calls do nothing). */
void fuzz_proxy_start(void);
/* Sends req to sluice on a new connection, half-closes, reads the answer to
 * EOF.  Every upstream connection meanwhile answers with resp (then closes). */
void fuzz_proxy_exchange(const char *req, size_t req_len, const char *resp, size_t resp_len);

#endif
