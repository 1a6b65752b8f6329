/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the request path.  The input is what a client sends on
 * one connection (any number of pipelined requests); it goes through the real
 * sluice (test/fuzz/proxy_harness.h): parse -> route -> header rewrite ->
 * serialise upstream, with every forwarded head checked for clean framing.
 */
#include <stdint.h>

#include "test/fuzz/proxy_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__asan_default_options(void);

/* sluice's threads hold memory across inputs: leaks are the valgrind and
 * ASan integration runs' business, not a per-input check here */
const char *__asan_default_options(void)
{
    return "detect_leaks=0";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok";
    fuzz_proxy_start();
    fuzz_proxy_exchange((const char *)data, size, ok, sizeof(ok) - 1);
    return 0;
}
