/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the upstream response path.  The input is what the
 * upstream answers (then it closes); the first byte picks the client's
 * request (method and route: plain, cached, JSON TTL, HTTP/1.0), so the
 * response parser, 1xx handling, re-framing, header rewriting and cache
 * storing all see it.  The head sluice sends the client is checked.
 */
#include <stdint.h>
#include <stdio.h>

#include "test/fuzz/proxy_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__asan_default_options(void);

const char *__asan_default_options(void)
{
    return "detect_leaks=0";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* method and path prefix, then the rest of the head after the serial */
    static const char *const forms[][2] = {
        {"GET /p/", " HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"},
        {"HEAD /p/", " HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"},
        {"GET /c/", " HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"},
        {"GET /j/", " HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"},
        {"POST /p/", " HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"},
        {"GET /o/", " HTTP/1.0\r\nHost: other.test\r\n\r\n"},
        {"GET /ws/", " HTTP/1.1\r\nHost: a.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"},
        {"GET /c/", " HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nCache-Control: max-age=0\r\n\r\n"},
    };
    static unsigned serial;
    if (size == 0)
        return 0;
    fuzz_proxy_start();
    char req[256];
    /* a new URL each time, or the cache would answer instead of the upstream */
    const char *const *f = forms[data[0] % 8];
    int n = snprintf(req, sizeof(req), "%s%u%s", f[0], serial++, f[1]);
    fuzz_proxy_exchange(req, (size_t)n, (const char *)data + 1, size - 1);
    return 0;
}
