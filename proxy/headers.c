/* SPDX-License-Identifier: MIT */
#include "proxy/headers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEAD_NONE (-1)

void head_init(struct head *h)
{
    memset(h, 0, sizeof(*h));
    h->last = HEAD_NONE;
}

void head_start(struct head *h, uint32_t limit, unsigned max_fields)
{
    head_reset(h);
    h->limit = limit < BUF_SIZE ? limit : BUF_SIZE;
    h->max = max_fields;
}

void head_reset(struct head *h)
{
    h->len = 0;
    h->n = 0;
    h->first = h->first_len = 0;
    h->last = HEAD_NONE;
    if (h->store != NULL) {
        buf_unref(h->store);
        h->store = NULL;
    }
}

void head_dispose(struct head *h)
{
    head_reset(h);
    free(h->fields);
    h->fields = NULL;
    h->cap = 0;
}

int head_add(struct head *h, enum head_part part, const char *at, size_t len)
{
    if (h->store == NULL) {
        if (h->limit == 0)
            h->limit = BUF_SIZE;
        h->store = buf_get();
    }
    if (len > h->limit - h->len)
        return -ENOSPC;
    if (part == HEAD_NAME && h->last != HEAD_NAME) {
        if (h->n >= h->max && h->max != 0)
            return -E2BIG;
        if (h->n == h->cap) {
            unsigned cap = h->cap ? h->cap * 2 : 32;
            struct head_field *f = realloc(h->fields, cap * sizeof(*f));
            if (f == NULL)
                return -ENOMEM;
            h->fields = f;
            h->cap = cap;
        }
        h->fields[h->n++] = (struct head_field){.name = h->len};
    } else if (part == HEAD_VALUE && h->last != HEAD_VALUE) {
        /* a value belongs to the name just before it: never to an earlier field */
        if (h->n == 0 || h->last != HEAD_NAME)
            return -EINVAL;
        h->fields[h->n - 1].value = h->len;
    } else if (part == HEAD_FIRST && h->last != HEAD_FIRST) {
        h->first = h->len;
    }
    memcpy(h->store->data + h->len, at, len);
    h->len += (uint32_t)len;
    switch (part) {
    case HEAD_FIRST: h->first_len += (uint32_t)len; break;
    case HEAD_NAME: h->fields[h->n - 1].name_len += (uint32_t)len; break;
    case HEAD_VALUE: h->fields[h->n - 1].value_len += (uint32_t)len; break;
    }
    h->last = part;
    return 0;
}

void head_field_done(struct head *h)
{
    h->last = HEAD_NONE;
}

const char *head_first(const struct head *h)
{
    return h->store ? h->store->data + h->first : "";
}

static const char *field_name(const struct head *h, const struct head_field *f)
{
    return h->store->data + f->name;
}

/* The value without the trailing whitespace a sender may leave (RFC 9110 5.5). */
static size_t value_len(const struct head *h, const struct head_field *f)
{
    size_t n = f->value_len;
    const char *v = h->store->data + f->value;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n;
}

static bool name_is(const struct head *h, const struct head_field *f, const char *lname, size_t llen)
{
    return f->name_len == llen && strncasecmp(field_name(h, f), lname, llen) == 0;
}

#define NAME_IS(h, f, lit) name_is(h, f, lit, sizeof(lit) - 1)

bool head_get(const struct head *h, const char *lname, char *out, size_t cap)
{
    size_t llen = strlen(lname);
    for (unsigned i = 0; i < h->n; i++) {
        const struct head_field *f = &h->fields[i];
        if (!name_is(h, f, lname, llen))
            continue;
        size_t n = value_len(h, f);
        if (n >= cap)
            n = cap - 1;
        memcpy(out, h->store->data + f->value, n);
        out[n] = '\0';
        return true;
    }
    return false;
}

int head_get_all(const struct head *h, const char *lname, char *out, size_t cap)
{
    size_t llen = strlen(lname), n = 0;
    bool found = false;
    out[0] = '\0';
    for (unsigned i = 0; i < h->n; i++) {
        const struct head_field *f = &h->fields[i];
        if (!name_is(h, f, lname, llen))
            continue;
        size_t vl = value_len(h, f);
        const char *sep = found ? ", " : "";
        size_t sl = strlen(sep);
        if (n + sl + vl >= cap)
            break;
        memcpy(out + n, sep, sl);
        memcpy(out + n + sl, h->store->data + f->value, vl);
        n += sl + vl;
        out[n] = '\0';
        found = true;
    }
    return found ? (int)n : -1;
}

const char *head_field_name(const struct head *h, unsigned i, size_t *len)
{
    *len = h->fields[i].name_len;
    return field_name(h, &h->fields[i]);
}

const char *head_field_value(const struct head *h, unsigned i, size_t *len)
{
    *len = value_len(h, &h->fields[i]);
    return h->store->data + h->fields[i].value;
}

/* RFC 9110 5.6.2 tchar, as a table: this runs over every field name */
static const bool tchar[256] = {
    ['!'] = true, ['#'] = true, ['$'] = true, ['%'] = true, ['&'] = true, ['\''] = true, ['*'] = true,
    ['+'] = true, ['-'] = true, ['.'] = true, ['^'] = true, ['_'] = true, ['`'] = true, ['|'] = true,
    ['~'] = true, ['0' ... '9'] = true, ['A' ... 'Z'] = true, ['a' ... 'z'] = true,
};

bool head_token_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)p[i]])
            return false;
    return true;
}

/* ---- the request target ---- */

/* Length of "http://" or "https://" at the start of t, else 0. */
static size_t scheme_len(const char *t, size_t len)
{
    if (len >= 7 && strncasecmp(t, "http://", 7) == 0)
        return 7;
    if (len >= 8 && strncasecmp(t, "https://", 8) == 0)
        return 8;
    return 0;
}

/* For an absolute-form target: the authority's offset and length. */
static bool target_authority(const struct head *h, size_t *off, size_t *len)
{
    const char *t = head_first(h);
    size_t s = scheme_len(t, h->first_len);
    if (s == 0)
        return false;
    size_t e = s;
    while (e < h->first_len && t[e] != '/' && t[e] != '?')
        e++;
    *off = s;
    *len = e - s;
    return true;
}

/* What follows the authority of an absolute-form target, or the whole
 * origin-form target. */
static const char *target_rest(const struct head *h, size_t *len)
{
    size_t off, alen;
    if (!target_authority(h, &off, &alen)) {
        *len = h->first_len;
        return head_first(h);
    }
    *len = h->first_len - off - alen;
    return head_first(h) + off + alen;
}

const char *head_target(const struct head *h, size_t *len)
{
    const char *rest = target_rest(h, len);
    if (*len == 0) {
        *len = 1;
        return "/";
    }
    return rest;
}

const char *head_target_path(const struct head *h)
{
    size_t len;
    const char *rest = target_rest(h, &len);
    return len == 0 || rest[0] == '?' ? "/" : rest;
}

size_t head_path_len(const struct head *h)
{
    size_t len;
    const char *rest = target_rest(h, &len);
    if (len == 0 || rest[0] == '?')
        return 1;
    size_t i = 0;
    while (i < len && rest[i] != '?')
        i++;
    return i;
}

static bool host_chars_ok(const char *v, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '-' || ch == ':' || ch == '_' || ch == '[' || ch == ']';
        if (!ok)
            return false;
    }
    return true;
}

static void copy_lower(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = (src[i] >= 'A' && src[i] <= 'Z') ? (char)(src[i] + 32) : src[i];
    dst[n] = '\0';
}

int head_request_host(const struct head *h, bool is_http10, char *host, size_t cap, char *reason, size_t rcap)
{
    const char *t = head_first(h);
    size_t aoff = 0, alen = 0;
    bool absolute = target_authority(h, &aoff, &alen);
    host[0] = '\0';
    if (!absolute && !(h->first_len > 0 && t[0] == '/') && !(h->first_len == 1 && t[0] == '*')) {
        snprintf(reason, rcap, "invalid request target");
        return -1;
    }
    const struct head_field *found = NULL;
    for (unsigned i = 0; i < h->n; i++) {
        if (!NAME_IS(h, &h->fields[i], "host"))
            continue;
        if (found != NULL) {
            snprintf(reason, rcap, "more than one Host header");
            return -1;
        }
        found = &h->fields[i];
    }
    if (found == NULL && !is_http10) {
        snprintf(reason, rcap, "missing Host header");
        return -1;
    }
    if (found != NULL) {
        const char *v = h->store->data + found->value;
        size_t n = value_len(h, found);
        if (!host_chars_ok(v, n) || n >= cap) {
            snprintf(reason, rcap, "invalid Host header");
            return -1;
        }
        if (absolute && (alen != n || strncasecmp(v, t + aoff, n) != 0)) {
            snprintf(reason, rcap, "Host header disagrees with the absolute-form target");
            return -1;
        }
        copy_lower(host, cap, v, n);
        return 0;
    }
    if (absolute) {
        if (!host_chars_ok(t + aoff, alen) || alen >= cap) {
            snprintf(reason, rcap, "invalid authority in the request target");
            return -1;
        }
        copy_lower(host, cap, t + aoff, alen);
    }
    return 0;
}

bool head_expects_continue(const struct head *h)
{
    for (unsigned i = 0; i < h->n; i++) {
        const struct head_field *f = &h->fields[i];
        if (NAME_IS(h, f, "expect") && value_len(h, f) == 12 &&
            strncasecmp(h->store->data + f->value, "100-continue", 12) == 0)
            return true;
    }
    return false;
}

/* ---- serialisation ---- */

struct writer {
    char *p;
    size_t len, cap;
    bool overflow;
};

static void put(struct writer *w, const char *s, size_t n)
{
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void puts_(struct writer *w, const char *s)
{
    put(w, s, strlen(s));
}

static void put_field(struct writer *w, const char *name, size_t nlen, const char *value, size_t vlen)
{
    put(w, name, nlen);
    put(w, ": ", 2);
    put(w, value, vlen);
    put(w, "\r\n", 2);
}

/* Field names listed in the message's Connection fields (RFC 9110 7.6.1):
 * they are hop-by-hop too.  A bounded number; more are simply all dropped
 * by the caller's check on the Connection field itself. */
#define CONN_TOKENS_MAX 16
struct conn_tokens {
    const char *p[CONN_TOKENS_MAX];
    size_t len[CONN_TOKENS_MAX];
    unsigned n;
};

static void collect_connection_tokens(const struct head *h, struct conn_tokens *ct)
{
    ct->n = 0;
    for (unsigned i = 0; i < h->n; i++) {
        const struct head_field *f = &h->fields[i];
        if (!NAME_IS(h, f, "connection"))
            continue;
        const char *v = h->store->data + f->value;
        size_t n = value_len(h, f), j = 0;
        while (j < n && ct->n < CONN_TOKENS_MAX) {
            while (j < n && (v[j] == ' ' || v[j] == '\t' || v[j] == ','))
                j++;
            size_t s = j;
            while (j < n && v[j] != ',' && v[j] != ' ' && v[j] != '\t')
                j++;
            if (j > s) {
                ct->p[ct->n] = v + s;
                ct->len[ct->n++] = j - s;
            }
        }
    }
}

static bool named_in(const struct head *h, const struct head_field *f, const struct conn_tokens *ct)
{
    /* framing and Host are never hop-by-hop, whatever Connection says:
     * dropping Content-Length would let a body be read as the next message */
    if (NAME_IS(h, f, "content-length") || NAME_IS(h, f, "host"))
        return false;
    for (unsigned i = 0; i < ct->n; i++)
        if (f->name_len == ct->len[i] && strncasecmp(field_name(h, f), ct->p[i], ct->len[i]) == 0)
            return true;
    return false;
}

static bool named_in_ops(const struct head *h, const struct head_field *f, const struct conf_header_op *ops,
                         size_t nops)
{
    for (size_t i = 0; i < nops; i++)
        if (name_is(h, f, ops[i].name, strlen(ops[i].name)))
            return true;
    return false;
}

/* RFC 9110 7.6.1 plus the framing fields we always regenerate. */
static bool is_hop_by_hop(const struct head *h, const struct head_field *f)
{
    return NAME_IS(h, f, "connection") || NAME_IS(h, f, "keep-alive") || NAME_IS(h, f, "proxy-connection") ||
           NAME_IS(h, f, "te") || NAME_IS(h, f, "trailer") || NAME_IS(h, f, "transfer-encoding") ||
           NAME_IS(h, f, "upgrade");
}

static const struct conf_header_op *find_op(const struct conf_header_op *ops, size_t nops, const char *lname)
{
    for (size_t i = 0; i < nops; i++)
        if (strcasecmp(ops[i].name, lname) == 0)
            return &ops[i];
    return NULL;
}

static void put_ops(struct writer *w, const struct conf_header_op *ops, size_t nops, const char *skip)
{
    for (size_t i = 0; i < nops; i++)
        if (ops[i].value != NULL && (skip == NULL || strcasecmp(ops[i].name, skip) != 0))
            put_field(w, ops[i].name, strlen(ops[i].name), ops[i].value, strlen(ops[i].value));
}

size_t head_build_request(const struct head *h, const struct forward_head *fh, char *dst, size_t cap)
{
    struct writer w = {.p = dst, .cap = cap};
    puts_(&w, fh->method);
    put(&w, " ", 1);
    size_t tlen;
    const char *target = target_rest(h, &tlen);
    if (tlen == 0 || target[0] == '?')
        put(&w, "/", 1);
    put(&w, target, tlen);
    puts_(&w, " HTTP/1.1\r\n");

    const struct conf_header_op *host_op = find_op(fh->ops, fh->nops, "host");
    if (host_op == NULL)
        put_field(&w, "Host", 4, fh->host, strlen(fh->host));
    else if (host_op->value != NULL)
        put_field(&w, "Host", 4, host_op->value, strlen(host_op->value));

    struct conn_tokens ct;
    collect_connection_tokens(h, &ct);
    const struct head_field *xff = NULL;
    const struct head_field *upgrade = NULL;
    for (unsigned i = 0; i < h->n; i++) {
        const struct head_field *f = &h->fields[i];
        if (NAME_IS(h, f, "upgrade"))
            upgrade = f;
        if (fh->drop_conditional && (NAME_IS(h, f, "if-none-match") || NAME_IS(h, f, "if-modified-since") ||
                                     NAME_IS(h, f, "if-match") || NAME_IS(h, f, "if-unmodified-since") ||
                                     NAME_IS(h, f, "if-range")))
            continue;
        if (is_hop_by_hop(h, f) || NAME_IS(h, f, "host") || NAME_IS(h, f, "expect") ||
            NAME_IS(h, f, "x-forwarded-proto") || NAME_IS(h, f, "x-forwarded-host") ||
            (fh->request_id != NULL && NAME_IS(h, f, "x-request-id")) ||
            (fh->chunked && NAME_IS(h, f, "content-length")) || named_in(h, f, &ct) ||
            named_in_ops(h, f, fh->ops, fh->nops))
            continue;
        if (NAME_IS(h, f, "x-forwarded-for")) {
            xff = f;
            continue;
        }
        put_field(&w, field_name(h, f), f->name_len, h->store->data + f->value, value_len(h, f));
    }
    if (find_op(fh->ops, fh->nops, "x-forwarded-for") == NULL) {
        puts_(&w, "X-Forwarded-For: ");
        if (xff != NULL) {
            put(&w, h->store->data + xff->value, value_len(h, xff));
            put(&w, ", ", 2);
        }
        puts_(&w, fh->client_ip);
        put(&w, "\r\n", 2);
    }
    if (find_op(fh->ops, fh->nops, "x-forwarded-proto") == NULL)
        put_field(&w, "X-Forwarded-Proto", 17, fh->proto, strlen(fh->proto));
    if (fh->host[0] != '\0' && find_op(fh->ops, fh->nops, "x-forwarded-host") == NULL)
        put_field(&w, "X-Forwarded-Host", 16, fh->host, strlen(fh->host));
    if (fh->via)
        puts_(&w, "Via: 1.1 sluice\r\n");
    put_ops(&w, fh->ops, fh->nops, "host");
    if (fh->request_id != NULL)
        put_field(&w, "X-Request-Id", 12, fh->request_id, strlen(fh->request_id));
    if (fh->extra != NULL)
        puts_(&w, fh->extra);
    if (fh->chunked)
        puts_(&w, "Transfer-Encoding: chunked\r\n");
    if (fh->upgrade && upgrade != NULL) {
        puts_(&w, "Connection: upgrade\r\n");
        put_field(&w, "Upgrade", 7, h->store->data + upgrade->value, value_len(h, upgrade));
    }
    put(&w, "\r\n", 2);
    return w.overflow ? 0 : w.len;
}

size_t head_build_response(const struct head *h, const struct reply_head *rh, char *dst, size_t cap)
{
    struct writer w = {.p = dst, .cap = cap};
    char line[64];
    int n = snprintf(line, sizeof(line), "HTTP/1.1 %03u ", rh->status);
    put(&w, line, (size_t)n);
    if (h->store != NULL)
        put(&w, head_first(h), h->first_len);
    put(&w, "\r\n", 2);
    struct conn_tokens ct = {.n = 0};
    if (h->store != NULL)
        collect_connection_tokens(h, &ct);
    for (unsigned i = 0; i < h->n; i++) {
        const struct head_field *f = &h->fields[i];
        if (rh->upgrade && NAME_IS(h, f, "upgrade")) {
            put_field(&w, field_name(h, f), f->name_len, h->store->data + f->value, value_len(h, f));
            continue;
        }
        if (is_hop_by_hop(h, f) || named_in(h, f, &ct) || named_in_ops(h, f, rh->ops, rh->nops) ||
            (rh->chunked && NAME_IS(h, f, "content-length")) || (rh->skip_age && NAME_IS(h, f, "age")) ||
            (rh->drop_request_id && NAME_IS(h, f, "x-request-id")))
            continue;
        put_field(&w, field_name(h, f), f->name_len, h->store->data + f->value, value_len(h, f));
    }
    if (rh->via)
        puts_(&w, "Via: 1.1 sluice\r\n");
    put_ops(&w, rh->ops, rh->nops, NULL);
    if (rh->extra != NULL)
        puts_(&w, rh->extra);
    if (rh->chunked)
        puts_(&w, "Transfer-Encoding: chunked\r\n");
    if (rh->upgrade)
        puts_(&w, "Connection: upgrade\r\n");
    else if (rh->close)
        puts_(&w, "Connection: close\r\n");
    else if (rh->keepalive_10)
        puts_(&w, "Connection: keep-alive\r\n");
    if (!rh->no_blank)
        put(&w, "\r\n", 2);
    return w.overflow ? 0 : w.len;
}

void headers_format_ip(const struct sockaddr *sa, char *out, size_t cap)
{
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
    else
        snprintf(out, cap, "unknown");
}
