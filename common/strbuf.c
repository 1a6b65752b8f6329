/* SPDX-License-Identifier: MIT */
/*
 * strbuf: growable NUL-terminated text.  The capacity doubles, so appends are
 * amortised O(1); sizes are checked for overflow before any arithmetic.
 * Not thread-safe: one owner at a time.
 */
#include "common/strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STRBUF_MIN_CAP 64

static void die_oom(size_t want)
{
    fprintf(stderr, "strbuf: out of memory (%zu bytes)\n", want);
    abort();
}

/* Makes room for `extra` more bytes plus the NUL. */
static void reserve(struct strbuf *sb, size_t extra)
{
    if (extra > SIZE_MAX - 1 - sb->len)
        die_oom(SIZE_MAX);
    size_t need = sb->len + extra + 1;
    if (sb->data != NULL && need <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : STRBUF_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(sb->data, cap);
    if (p == NULL)
        die_oom(cap);
    if (sb->data == NULL)
        p[0] = '\0';
    sb->data = p;
    sb->cap = cap;
}

void strbuf_init(struct strbuf *sb)
{
    sb->data = NULL;
    sb->len = 0;
    sb->cap = 0;
}

void strbuf_dispose(struct strbuf *sb)
{
    free(sb->data);
    strbuf_init(sb);
}

void strbuf_append(struct strbuf *sb, const char *data, size_t len)
{
    reserve(sb, len);
    if (len)
        memcpy(sb->data + sb->len, data, len);
    sb->len += len;
    sb->data[sb->len] = '\0';
}

void strbuf_puts(struct strbuf *sb, const char *s)
{
    strbuf_append(sb, s, strlen(s));
}

void strbuf_printf(struct strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    reserve(sb, 0);
    int n = vsnprintf(sb->data + sb->len, sb->cap - sb->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        /* Only an invalid format gets here; leave the buffer as it was. */
        sb->data[sb->len] = '\0';
        va_end(ap2);
        return;
    }
    if ((size_t)n >= sb->cap - sb->len) {
        reserve(sb, (size_t)n);
        vsnprintf(sb->data + sb->len, sb->cap - sb->len, fmt, ap2);
    }
    va_end(ap2);
    sb->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF) starting at s, or 0 if there is none. */
static size_t utf8_seq_len(const unsigned char *s)
{
    unsigned char c = s[0];
    if (c >= 0xc2 && c <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80)
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

void strbuf_json_string(struct strbuf *sb, const char *s)
{
    if (s == NULL) {
        strbuf_puts(sb, "null");
        return;
    }
    strbuf_append(sb, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        /* Copy the longest run that needs no escaping in one go. */
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        strbuf_append(sb, (const char *)run, (size_t)(p - run));
        if (*p == '\0')
            break;
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            strbuf_append(sb, esc, 2);
            p++;
        } else if (*p < 0x20) {
            strbuf_printf(sb, "\\u%04x", *p);
            p++;
        } else {
            /* JSON text must be UTF-8 (RFC 8259 section 8.1): a byte that does
             * not start a valid sequence becomes U+FFFD, never raw output.
             * The checks stop at the first mismatch, so a NUL ends them. */
            size_t n = utf8_seq_len(p);
            if (n) {
                strbuf_append(sb, (const char *)p, n);
                p += n;
            } else {
                strbuf_puts(sb, "\\ufffd");
                p++;
            }
        }
    }
    strbuf_append(sb, "\"", 1);
}

char *strbuf_release(struct strbuf *sb)
{
    reserve(sb, 0);
    char *p = sb->data;
    strbuf_init(sb);
    return p;
}
