/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the JSON TTL extractor (cache/json.c) behind
 * `ttl_from json:PATH`.  The input's first line is the dot path, the rest the
 * body, so the fuzzer explores both.  Checks: no crash or sanitizer report,
 * and a match is NUL-terminated within the output buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    size_t plen = nl != NULL ? (size_t)(nl - (const char *)data) : 0;
    if (plen > 256)
        return 0;
    char path[257];
    memcpy(path, data, plen);
    path[plen] = '\0';
    size_t off = nl != NULL ? plen + 1 : 0;
    /* a copy of exactly the body's size, so ASan sees any read past it */
    char *doc = malloc(size - off + 1);
    if (doc == NULL)
        return 0;
    memcpy(doc, data + off, size - off);
    char out[64];
    int n = cache_json_find(doc, size - off, path[0] ? path : "data.status", out, sizeof(out));
    if (n >= 0 && memchr(out, '\0', sizeof(out)) == NULL)
        abort();
    free(doc);
    return 0;
}
