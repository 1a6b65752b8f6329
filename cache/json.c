/* SPDX-License-Identifier: MIT */
/*
 * cache/json.c: just enough JSON (RFC 8259) for `ttl_from json:a.b.c` — find
 * the scalar at a dot path of object keys in a response body.
 *
 * Design: one forward pass, no recursion and no allocation.  Open containers
 * live on a fixed stack (CACHE_JSON_MAX_DEPTH); a container is "on the path"
 * when it is an object reached through the path's keys so far, and since
 * arrays never are, the on-path objects are exactly the bottom of the stack:
 * the key expected inside the top one is segment number depth - 1.  The
 * whole document is checked, so a truncated or malformed body matches
 * nothing.  Duplicate keys: the last wins, as in most JSON readers.  Bytes
 * above 0x7f inside strings are taken as they are (not checked as UTF-8).
 * Thread-safe: no state outside the call.
 */
#include <stdbool.h>
#include <string.h>

#include "cache/cache_int.h"

#define PATH_MAX_SEGMENTS 16

/* A decoded string: up to cap - 1 bytes of text kept, and whether more
 * would have followed. */
struct jstr {
    char *buf;
    size_t cap, len;
    bool is_cut;
};

static void jstr_put(struct jstr *o, const char *s, size_t n)
{
    if (!o)
        return;
    if (o->len + n >= o->cap) {
        o->is_cut = true;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s[*i]; -1 when they are not. */
static long read_u4(const char *s, size_t len, size_t *i)
{
    if (len - *i < 4)
        return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(s[*i + (size_t)k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    *i += 4;
    return v;
}

static void put_utf8(struct jstr *o, unsigned long cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | cp >> 6), b[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | cp >> 12), b[1] = (char)(0x80 | (cp >> 6 & 0x3f)),
        b[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (char)(0xf0 | cp >> 18), b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3f)), b[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    jstr_put(o, b, n);
}

/* A string whose opening quote is at s[*i]: checks it, decodes it into o (if
 * not NULL) and moves *i past the closing quote. */
static bool scan_string(const char *s, size_t len, size_t *i, struct jstr *o)
{
    size_t k = *i + 1;
    while (k < len) {
        unsigned char c = (unsigned char)s[k];
        if (c == '"') {
            *i = k + 1;
            return true;
        }
        if (c < 0x20) /* control characters must be escaped */
            return false;
        if (c != '\\') {
            size_t run = k;
            while (k < len && s[k] != '"' && s[k] != '\\' && (unsigned char)s[k] >= 0x20)
                k++;
            jstr_put(o, s + run, k - run);
            continue;
        }
        if (++k >= len)
            return false;
        const char *simple = strchr("\"\\/bfnrt", s[k]);
        if (s[k] && simple) {
            static const char decoded[] = "\"\\/\b\f\n\r\t";
            jstr_put(o, &decoded[simple - "\"\\/bfnrt"], 1);
            k++;
            continue;
        }
        if (s[k] != 'u')
            return false;
        k++;
        long cp = read_u4(s, len, &k);
        if (cp < 0 || (cp >= 0xdc00 && cp <= 0xdfff)) /* a lone low surrogate */
            return false;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            /* a high surrogate must be followed by \u and a low one */
            if (len - k < 2 || s[k] != '\\' || s[k + 1] != 'u')
                return false;
            k += 2;
            long lo = read_u4(s, len, &k);
            if (lo < 0xdc00 || lo > 0xdfff)
                return false;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        put_utf8(o, (unsigned long)cp);
    }
    return false;
}

static size_t skip_digits(const char *s, size_t len, size_t k)
{
    while (k < len && s[k] >= '0' && s[k] <= '9')
        k++;
    return k;
}

/* A number, true, false or null at s[*i]: its literal text goes to o. */
static bool scan_scalar(const char *s, size_t len, size_t *i, struct jstr *o)
{
    size_t k = *i;
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t wl = strlen(words[w]);
        if (len - k >= wl && memcmp(s + k, words[w], wl) == 0) {
            jstr_put(o, s + k, wl);
            *i = k + wl;
            return true;
        }
    }
    /* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
    if (k < len && s[k] == '-')
        k++;
    if (k >= len || s[k] < '0' || s[k] > '9')
        return false;
    k = s[k] == '0' ? k + 1 : skip_digits(s, len, k);
    if (k < len && s[k] == '.') {
        size_t d = skip_digits(s, len, k + 1);
        if (d == k + 1)
            return false;
        k = d;
    }
    if (k < len && (s[k] == 'e' || s[k] == 'E')) {
        k++;
        if (k < len && (s[k] == '+' || s[k] == '-'))
            k++;
        size_t d = skip_digits(s, len, k);
        if (d == k)
            return false;
        k = d;
    }
    jstr_put(o, s + *i, k - *i);
    *i = k;
    return true;
}

static size_t skip_ws(const char *s, size_t len, size_t k)
{
    while (k < len && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r'))
        k++;
    return k;
}

/* What the next value is to the path. */
enum role { ROLE_NONE, ROLE_DESCEND, ROLE_TARGET };

int cache_json_find(const char *doc, size_t len, const char *path, char *out, size_t cap)
{
    const char *seg[PATH_MAX_SEGMENTS];
    size_t seglen[PATH_MAX_SEGMENTS], nseg = 0;
    if (!doc || !path || !*path || !out || cap == 0)
        return -1;
    for (const char *p = path;; p++) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (l == 0 || nseg == PATH_MAX_SEGMENTS)
            return -1;
        seg[nseg] = p, seglen[nseg++] = l;
        if (!dot)
            break;
        p = dot;
    }

    char stack[CACHE_JSON_MAX_DEPTH]; /* '{' or '[' */
    size_t depth = 0, onpath = 0;     /* onpath: on-path objects, the stack's bottom */
    char key[256];
    int found = -1;
    enum role role = ROLE_DESCEND; /* the root value */
    size_t i = skip_ws(doc, len, 0);

    for (;;) {
        /* a value */
        if (i >= len)
            return -1;
        if (doc[i] == '{' || doc[i] == '[') {
            if (depth == CACHE_JSON_MAX_DEPTH)
                return -1;
            if (doc[i] == '{' && role == ROLE_DESCEND && onpath == depth)
                onpath++;
            if (role == ROLE_TARGET) /* the path names a container: no scalar */
                found = -1;
            stack[depth++] = doc[i];
            i = skip_ws(doc, len, i + 1);
            if (i < len && (doc[i] == '}' || doc[i] == ']')) {
                if (doc[i] != (stack[depth - 1] == '{' ? '}' : ']'))
                    return -1;
                goto close;
            }
        } else {
            struct jstr o = {out, cap, 0, false};
            struct jstr *op = role == ROLE_TARGET ? &o : NULL;
            if (!(doc[i] == '"' ? scan_string(doc, len, &i, op) : scan_scalar(doc, len, &i, op)))
                return -1;
            if (op) {
                out[o.len] = '\0';
                found = o.is_cut ? -1 : (int)o.len;
            }
            goto after_value;
        }
        /* inside a container, before a member or an element */
    member:
        role = ROLE_NONE;
        if (stack[depth - 1] == '{') {
            if (i >= len || doc[i] != '"')
                return -1;
            struct jstr k = {key, sizeof(key), 0, false};
            bool is_on = onpath == depth;
            if (!scan_string(doc, len, &i, is_on ? &k : NULL))
                return -1;
            if (is_on && !k.is_cut && k.len == seglen[depth - 1] && memcmp(key, seg[depth - 1], k.len) == 0)
                role = depth == nseg ? ROLE_TARGET : ROLE_DESCEND;
            i = skip_ws(doc, len, i);
            if (i >= len || doc[i] != ':')
                return -1;
            i++;
        }
        i = skip_ws(doc, len, i);
        continue;

    after_value:
        i = skip_ws(doc, len, i);
        if (depth == 0)
            /* the document ends after its one value */
            return i == len ? found : -1;
        if (i < len && doc[i] == ',') {
            i = skip_ws(doc, len, i + 1);
            goto member;
        }
        if (i >= len || doc[i] != (stack[depth - 1] == '{' ? '}' : ']'))
            return -1;
    close:
        if (onpath == depth)
            onpath--;
        depth--;
        i++;
        goto after_value;
    }
}
