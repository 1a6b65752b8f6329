/* SPDX-License-Identifier: MIT */
/*
 * A request's header fields for cache tests: a {name, value} list ending in
 * {NULL, NULL}, and the cache_header_get_cb that reads it.
 */
#ifndef SLUICE_TEST_HDR_STUB_H
#define SLUICE_TEST_HDR_STUB_H

#include <string.h>

struct hdr {
    const char *name, *value;
};

static int get_hdr(void *arg, const char *lname, char *out, size_t cap)
{
    for (const struct hdr *h = arg; h != NULL && h->name != NULL; h++) {
        if (strcmp(h->name, lname) == 0) {
            size_t n = strlen(h->value) < cap ? strlen(h->value) : cap - 1;
            memcpy(out, h->value, n);
            out[n] = '\0';
            return (int)n;
        }
    }
    return -1;
}

#endif
