/* SPDX-License-Identifier: MIT */
/*
 * headers: a parsed HTTP/1 head (request line or status reason, plus fields)
 * and the rewriting of heads between client and upstream.
 *
 * A struct head keeps the text llhttp delivers, in pieces, in one read-block
 * sized store with a size limit and a field-count limit, so a hostile head
 * costs at most its limit.  Requests toward the upstream and responses toward
 * the client are always re-serialised from these parsed fields, never copied
 * as raw bytes: hop-by-hop fields (RFC 9110 7.6.1, including those named in
 * Connection) are dropped and our own framing and forwarding fields added.
 *
 * Threading: plain data, owned by one connection.
 */
#ifndef SLUICE_HEADERS_H
#define SLUICE_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/buf.h"
#include "conf/conf.h"

enum head_part { HEAD_FIRST, HEAD_NAME, HEAD_VALUE };

struct head_field {
    uint32_t name, name_len, value, value_len; /* offsets into the store */
};

struct head {
    struct buf *store;
    uint32_t len, limit;
    struct head_field *fields;
    unsigned n, cap, max;
    int last; /* the enum head_part of the previous piece, or -1 */
    uint32_t first, first_len; /* request target, or response reason phrase */
};

void head_init(struct head *h);
/* Prepares for a new head of at most limit bytes (<= BUF_SIZE) and max fields. */
void head_start(struct head *h, uint32_t limit, unsigned max_fields);
/* Forgets the current head, keeping limits and memory for the next one. */
void head_reset(struct head *h);
void head_dispose(struct head *h);

/* Appends a piece of the request target / reason, a field name or a field
 * value (llhttp may deliver each in several pieces).  0, -ENOSPC past the
 * size limit, -E2BIG past the field limit. */
int head_add(struct head *h, enum head_part part, const char *at, size_t len);

/* Ends the current field: a value piece after it without a new name is an
 * error (llhttp reports an empty name that way). */
void head_field_done(struct head *h);
const char *head_first(const struct head *h);
/* Copies the first field named lname (lowercase) into out, NUL-terminated.  */
bool head_get(const struct head *h, const char *lname, char *out, size_t cap);
/* Every field named lname joined with ", " (RFC 9110 5.3) into out,
 * NUL-terminated and truncated to cap; its length, or -1 when absent. */
int head_get_all(const struct head *h, const char *lname, char *out, size_t cap);
/* Field i's name and value (trailing whitespace trimmed). */
const char *head_field_name(const struct head *h, unsigned i, size_t *len);
const char *head_field_value(const struct head *h, unsigned i, size_t *len);

/* True when the n bytes at p are all token characters (RFC 9110 5.6.2): a
 * field name piece with a space, a control or a separator is refused. */
bool head_token_ok(const char *p, size_t n);

/* Checks the request's Host against RFC 9112 3.2 (exactly one in HTTP/1.1,
 * agreeing with an absolute-form target) and the target form, and writes the
 * host (lowercase, without port) to host.  0, or -1 with a reason for a 400. */
int head_request_host(const struct head *h, bool is_http10, char *host, size_t cap, char *reason,
                      size_t reason_cap);
/* The origin-form target (path and query; absolute-form reduced, "/" when
 * empty) and its length. */
const char *head_target(const struct head *h, size_t *len);
/* The origin-form path of the target (absolute-form reduced) and its length
 * up to the query. */
const char *head_target_path(const struct head *h);
size_t head_path_len(const struct head *h);
bool head_expects_continue(const struct head *h);

struct forward_head {
    const char *method;
    const char *host;      /* for X-Forwarded-Host, and Host when the client sent none (HTTP/1.0) */
    const char *client_ip; /* appended to X-Forwarded-For */
    const char *proto;     /* X-Forwarded-Proto */
    bool via;
    const struct conf_header_op *ops;
    size_t nops;
    bool has_body, chunked, upgrade;
    bool drop_conditional; /* leave out the client's If-* fields (sluice revalidates with its own) */
    const char *extra;     /* complete field lines to add, or NULL */
    const char *request_id; /* X-Request-Id sent instead of the client's, or NULL to pass the client's on */
};

/* Writes the request head for the upstream into dst; its length, or 0 when
 * it does not fit. */
size_t head_build_request(const struct head *h, const struct forward_head *fh, char *dst, size_t cap);

struct reply_head {
    unsigned status;
    const struct conf_header_op *ops;
    size_t nops;
    bool via;
    bool chunked;      /* send Transfer-Encoding: chunked (the body is re-framed) */
    bool upgrade;      /* 101: keep Upgrade, send Connection: upgrade */
    bool close;        /* Connection: close */
    bool keepalive_10; /* Connection: keep-alive for an HTTP/1.0 client */
    bool skip_age;     /* leave out Age (a cache computes its own) */
    bool no_blank;     /* stop before the final blank line (a head stored for later) */
    const char *extra; /* complete header lines to add ("Name: value\r\n"), or NULL */
    bool drop_request_id; /* leave out the upstream's X-Request-Id (extra carries ours) */
};

/* Writes the response head for the client into dst; its length, or 0 when
 * it does not fit. */
size_t head_build_response(const struct head *h, const struct reply_head *rh, char *dst, size_t cap);

/* The numeric text of an address ("127.0.0.1", "::1"). */
void headers_format_ip(const struct sockaddr *sa, char *out, size_t cap);

#endif
