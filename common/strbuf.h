/* SPDX-License-Identifier: MIT */
/*
 * strbuf: a growable byte string for building text off the hot path
 * (admin/stats pages, conf printing).  Always NUL-terminated.
 * Allocation failure aborts (these are small control structures).
 */
#ifndef SLUICE_STRBUF_H
#define SLUICE_STRBUF_H

#include <stddef.h>

struct strbuf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
};

void strbuf_init(struct strbuf *sb);
void strbuf_dispose(struct strbuf *sb);
void strbuf_append(struct strbuf *sb, const char *data, size_t len);
void strbuf_puts(struct strbuf *sb, const char *s);
void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included, escaping as RFC 8259 requires. */
void strbuf_json_string(struct strbuf *sb, const char *s);
/* Hands the buffer to the caller (free() it) and resets sb. */
char *strbuf_release(struct strbuf *sb);

#endif
