/* SPDX-License-Identifier: MIT */
/*
 * sluice-origin: the scriptable HTTP/1.1 origin behind the demo (`make run`)
 * and the integration tests.  `sluice-origin -h` lists the endpoints and the
 * fault-injection query parameters.
 *
 * Design: one libuv loop.  A connection owns a fixed read buffer and a strict
 * llhttp parser.  A request is parsed to its end (the body streams through a
 * SHA-256 for /echo and /sink and is otherwise only counted), then the parser
 * is paused and the connection runs one response job: an optional delay, then
 * a buffered answer, an event stream or a byte stream.  Pipelined bytes wait
 * in the read buffer meanwhile and reading stops when it is full, so memory per
 * connection is bounded whatever the peer sends.  Large bodies go out one
 * write at a time (the next chunk is queued from the previous write's
 * callback) straight out of a static pattern buffer: a 1 GiB answer costs one
 * chunk of memory, and a peer that stops reading stops the producer.
 *
 * Threading: single-threaded; everything runs on the default loop.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <llhttp.h>
#include <openssl/evp.h>
#include <uv.h>

#include "common/log.h"
#include "common/outq.h"
#include "common/tls.h"

#define READ_BUF_SIZE     (64 * 1024)
#define MAX_URL           (64 * 1024)
#define MAX_HEADER_BYTES  (128 * 1024)
#define MAX_HEADERS       512
#define MAX_RESPONSE      (1024 * 1024) /* buffered answers (echo of big headers) stay below this */
#define BODY_PREVIEW      4096
#define BYTES_CHUNK       (128 * 1024)
#define PATTERN_PERIOD    64 /* divides BYTES_CHUNK, so any offset maps into the pattern buffer */
#define WRITE_HIGH        (256 * 1024)
#define MAX_EXTRA_HEADERS 16
#define MAX_CONNS         20000
#define TABLE_SLOTS       1024
#define KEY_MAX           128
#define LINGER_MS         2000
#define DEFAULT_IDLE_MS   120000
#define MAX_DELAY_MS      (24ULL * 3600 * 1000)
#define MAX_EVENTS        100000
#define MAX_BYTES         (1ULL << 50)
#define DEFAULT_BYTES     1024
#define DEFAULT_EVENTS    5
#define DEFAULT_EVENT_MS  1000
#define DEFAULT_SLOW_MS   1000
#define TASK_PENDING_MS   2000
#define TASK_PROCESS_MS   6000

static const char usage_text[] =
    "usage: sluice-origin [-p PORT] [-a ADDR] [-k IDLE_MS] [-d DELAY_MS] [-w]\n"
    "  -p PORT     listen port (default 8081)\n"
    "  -a ADDR     listen address (default 127.0.0.1)\n"
    "  -k IDLE_MS  close idle keep-alive connections after IDLE_MS (default 120000)\n"
    "  -d DELAY_MS wait that long before every response head (a slow server)\n"
    "  -w          print \"ready\" on stdout once listening\n"
    "  -T CERT:KEY serve TLS with this certificate and key (PEM)\n"
    "  -C CA       with -T: require a client certificate signed by CA\n"
    "endpoints:\n"
    "  /hello                 a small cacheable text (Cache-Control: public, max-age=60)\n"
    "  /slow?ms=N             answers after N ms\n"
    "  /stream?n=N&ms=M       text/event-stream, N events one every M ms\n"
    "  /task/ID               JSON task: pending (2 s), processing (until 6 s), completed\n"
    "  /echo                  JSON description of the request as received\n"
    "  /bytes?n=N[&chunked=1] N pattern bytes, streamed with backpressure\n"
    "  /sink                  consumes the request body, answers its length and sha256\n"
    "  /status/CODE           that status\n"
    "  /count, /reset         request and connection counters\n"
    "  /ws                    WebSocket upgrade, then echoes every byte\n"
    "every response carries X-Origin-Conn (the connection's serial number) and echoes X-Request-Id;\n"
    "with -T also X-Origin-TLS: resumed=0|1 alpn=PROTOCOL\n"
    "fault injection by query parameters on any path (combinable):\n"
    "  delay=MS               wait before the response head\n"
    "  close=head             close without answering\n"
    "  close=body             announce the whole body, send half of it, close\n"
    "  close=next             answer, then close at the next request on this connection\n"
    "  hang=1                 never answer\n"
    "  status=CODE            answer with that status (200..599)\n"
    "  fail=N&key=K           the first N requests with key K get 503\n"
    "  failp=P                a random P% of requests get 503\n"
    "  reset=1                close with a TCP RST\n"
    "  interim=1              send 103 Early Hints before the response\n"
    "  header=Name:Value      add a response header (repeatable)\n"
    "  cc=VALUE               Cache-Control value\n"
    "  eof=1                  (/bytes, /stream) no length and no chunks: the body ends with the connection\n";

/* A growable byte buffer with a hard size bound.  The first failure sticks in
 * err and later appends do nothing, so a builder checks once at the end. */
struct obuf {
    char *data; /* NUL-terminated once anything was added */
    size_t len;
    size_t cap;
    size_t max;
    int err; /* 0, -E2BIG or -ENOMEM */
};

static void obuf_add(struct obuf *b, const void *p, size_t n)
{
    if (b->err || (n == 0 && b->data))
        return;
    if (n > b->max - b->len) {
        b->err = -E2BIG;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->err = -ENOMEM;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void obuf_puts(struct obuf *b, const char *s)
{
    obuf_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void obuf_printf(struct obuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        if (!b->err)
            b->err = -E2BIG;
        return;
    }
    obuf_add(b, tmp, (size_t)n);
}

/* A JSON string literal of arbitrary bytes: bytes >= 0x80 become \u00XX, so
 * the body preview of a binary upload is still valid JSON. */
static void obuf_json(struct obuf *b, const char *s, size_t n)
{
    obuf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
            continue;
        obuf_add(b, s + run, i - run);
        if (ch == '"' || ch == '\\')
            obuf_printf(b, "\\%c", ch);
        else
            obuf_printf(b, "\\u%04x", ch);
        run = i + 1;
    }
    obuf_add(b, s + run, n - run);
    obuf_add(b, "\"", 1);
}

static void obuf_reset(struct obuf *b)
{
    b->len = 0;
    b->err = 0;
    if (b->data)
        b->data[0] = '\0';
}

static void obuf_dispose(struct obuf *b)
{
    free(b->data);
    *b = (struct obuf){.max = b->max};
}

/* Small string-keyed counters (per-key failure counts, task start times).
 * Bounded: once full, the oldest claimed slot is reused. */
struct slot {
    char key[KEY_MAX + 1];
    uint64_t value;
    bool used;
};

struct table {
    struct slot slots[TABLE_SLOTS];
    size_t evict;
};

/* Returns the slot of key (at most KEY_MAX bytes), claiming one with value 0
 * when the key is new. */
static struct slot *table_get(struct table *t, const char *key)
{
    struct slot *free_slot = NULL;
    for (size_t i = 0; i < TABLE_SLOTS; i++) {
        struct slot *s = &t->slots[i];
        if (s->used && strcmp(s->key, key) == 0)
            return s;
        if (!s->used && !free_slot)
            free_slot = s;
    }
    if (!free_slot) {
        free_slot = &t->slots[t->evict];
        t->evict = (t->evict + 1) % TABLE_SLOTS;
    }
    snprintf(free_slot->key, sizeof free_slot->key, "%s", key);
    free_slot->value = 0;
    free_slot->used = true;
    return free_slot;
}

static void table_clear(struct table *t)
{
    memset(t, 0, sizeof *t);
}

enum endpoint {
    EP_INDEX,
    EP_HELLO,
    EP_SLOW,
    EP_STREAM,
    EP_TASK,
    EP_ECHO,
    EP_BYTES,
    EP_SINK,
    EP_STATUS,
    EP_COUNT,
    EP_RESET,
    EP_WS,
    EP_NOT_FOUND,
};

/* close=next answers normally and then drops the connection at its next
 * request without answering: the stale keep-alive race, made deterministic. */
enum close_mode { CLOSE_NONE = 0, CLOSE_HEAD, CLOSE_BODY, CLOSE_NEXT };

/* Query parameters of one request; the strings point into storage, a
 * percent-decoded copy of the query string. */
struct params {
    char *storage;
    uint64_t delay_ms;
    uint64_t ms;
    uint64_t n;
    bool has_ms;
    bool has_n;
    enum close_mode close;
    bool hang;
    bool reset;
    bool interim;
    bool chunked;
    bool eof; /* no length, no chunks: the body ends when the connection closes */
    int status; /* 0 = the endpoint's own */
    bool has_fail;
    uint64_t fail;
    uint64_t fail_pct;
    const char *key;
    const char *cc;
    const char *headers[MAX_EXTRA_HEADERS]; /* "Name:Value" */
    unsigned nheaders;
};

/* What llhttp told us about the request being parsed. */
struct request {
    struct obuf url;
    struct obuf hdrs; /* "name\0value\0" pairs, in arrival order */
    unsigned nhdrs;
    int limit_status; /* 414 or 431 when a parser callback refused the request */
    uint64_t body_len;
    bool hash_body;
    bool is_head;
    bool keep_alive;
    uint8_t method;
    uint8_t http_major;
    uint8_t http_minor;
    size_t preview_len;
    char preview[BODY_PREVIEW];
};

/* The response being produced. */
struct job {
    struct params p;
    enum endpoint ep;
    int status;
    bool chunked;     /* body in chunked coding */
    bool close_after; /* close once the response is out */
    uint64_t limit;   /* bytes or events to send: all, or half for close=body */
    uint64_t sent;
    uint64_t interval_ms;
};

enum phase {
    PH_READ,    /* parsing requests; the timer is the idle timeout */
    PH_DELAY,   /* waiting before the response head */
    PH_STREAM,  /* sending events, the timer paces them */
    PH_BYTES,   /* sending a pattern body, one write in flight */
    PH_DRAIN,   /* response queued, waiting for the socket to take it before the next request */
    PH_HANG,    /* never answering; input is discarded */
    PH_TUNNEL,  /* upgraded: every byte read is written back */
    PH_CLOSING, /* shutdown(2) queued behind the pending writes */
    PH_LINGER,  /* write side shut, draining input until EOF so the peer gets no RST */
    PH_CLOSED,  /* uv_close called, waiting for the close callbacks */
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    int handles; /* open libuv handles; the conn is freed when it reaches 0 */
    struct conn *prev, *next;
    uint64_t serial;
    enum phase phase;
    bool reading;
    bool read_eof;
    bool in_drive;
    bool drop_next; /* close=next was asked on this connection */
    llhttp_t parser;
    char *rbuf;
    size_t rstart; /* unparsed input is rbuf[rstart, rend) */
    size_t rend;
    struct request req;
    EVP_MD_CTX *sha;
    struct obuf out;
    struct job job;
    struct tls *tls; /* -T: reads are decrypted into rbuf, writes sealed in submit() */
    struct outq tq;  /* the handshake's and close_notify's writes */
};

/* A queued write; copied bytes (or chunk framing) live in data. */
struct wreq {
    uv_write_t req;
    struct conn *c;
    bool is_body;
    struct buf **cipher; /* TLS: the ciphertext blocks being written */
    unsigned ncipher;
    char data[];
};

static struct {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    llhttp_settings_t settings;
    uint64_t idle_ms;
    uint64_t delay_ms; /* -d: before every response */
    uint64_t requests;
    uint64_t accepted;
    uint64_t serial;
    unsigned open;
    struct conn *conns;
    struct table fails;
    struct table tasks;
    char pattern[BYTES_CHUNK + PATTERN_PERIOD];
    SSL_CTX *tls_ctx;
} g;

static void drive(struct conn *c);
static void timer_cb(uv_timer_t *t);

static const char *reason_phrase(int status)
{
    static const struct {
        int status;
        const char *text;
    } phrases[] = {
        {100, "Continue"},
        {101, "Switching Protocols"},
        {103, "Early Hints"},
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {203, "Non-Authoritative Information"},
        {204, "No Content"},
        {206, "Partial Content"},
        {301, "Moved Permanently"},
        {302, "Found"},
        {303, "See Other"},
        {304, "Not Modified"},
        {307, "Temporary Redirect"},
        {308, "Permanent Redirect"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {410, "Gone"},
        {413, "Content Too Large"},
        {414, "URI Too Long"},
        {415, "Unsupported Media Type"},
        {426, "Upgrade Required"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
    };
    for (size_t i = 0; i < sizeof phrases / sizeof phrases[0]; i++)
        if (phrases[i].status == status)
            return phrases[i].text;
    return "Unknown";
}

/* ---- connection lifecycle ---- */

static void free_cb(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles > 0)
        return;
    free(c->job.p.storage);
    obuf_dispose(&c->req.url);
    obuf_dispose(&c->req.hdrs);
    obuf_dispose(&c->out);
    EVP_MD_CTX_free(c->sha);
    outq_dispose(&c->tq);
    tls_destroy(c->tls);
    free(c->rbuf);
    free(c);
}

static void conn_close(struct conn *c)
{
    if (c->phase == PH_CLOSED)
        return;
    c->phase = PH_CLOSED;
    if (c->prev)
        c->prev->next = c->next;
    else
        g.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g.open--;
    uv_close((uv_handle_t *)&c->tcp, free_cb);
    uv_close((uv_handle_t *)&c->timer, free_cb);
}

/* Closes with SO_LINGER 0, so the peer gets an RST instead of a FIN. */
static void conn_reset(struct conn *c)
{
    uv_os_fd_t fd;
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    conn_close(c);
}

static void start_reading(struct conn *c);

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (c->phase != PH_CLOSING)
        return;
    if (status < 0 || c->read_eof) {
        conn_close(c);
        return;
    }
    c->phase = PH_LINGER;
    uv_timer_start(&c->timer, timer_cb, LINGER_MS, 0);
    start_reading(c);
}

/* Closes after the pending writes: shutdown(2) first, then a short lingering
 * read, because closing with unread input would make the kernel send an RST
 * that can destroy the response we just wrote. */
static void conn_finish(struct conn *c)
{
    if (c->phase == PH_CLOSING || c->phase == PH_LINGER || c->phase == PH_CLOSED)
        return;
    c->phase = PH_CLOSING;
    /* A peer that never reads would keep the shutdown pending forever. */
    uv_timer_start(&c->timer, timer_cb, g.idle_ms, 0);
    if (c->tls != NULL)
        tls_shutdown(c->tls);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, shutdown_cb) < 0)
        conn_close(c);
}

static size_t write_queue(struct conn *c)
{
    return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

/* ---- writing ---- */

static void bytes_next(struct conn *c);
static void next_request(struct conn *c);

static void wreq_free(struct wreq *w)
{
    for (unsigned i = 0; i < w->ncipher; i++)
        buf_unref(w->cipher[i]);
    free(w->cipher);
    free(w);
}

static void write_cb(uv_write_t *req, int status)
{
    struct wreq *w = req->data;
    struct conn *c = w->c;
    bool is_body = w->is_body;
    wreq_free(w);
    if (c->phase == PH_CLOSED)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->phase == PH_BYTES && is_body)
        bytes_next(c);
    else if (c->phase == PH_DRAIN && write_queue(c) <= WRITE_HIGH)
        next_request(c);
    else if (c->phase == PH_TUNNEL && !c->reading && write_queue(c) <= WRITE_HIGH / 4)
        start_reading(c);
}

/* Queues bufs; w owns any framing the bufs point to.  On failure the
 * connection is closed and -1 returned: callers stop there. */
/* Encrypts bufs; w then writes and holds the ciphertext blocks. */
static int seal(struct conn *c, struct wreq *w, const uv_buf_t *bufs, unsigned nbufs, uv_buf_t **out)
{
    int rc = 0;
    for (unsigned i = 0; i < nbufs && rc == 0; i++)
        rc = tls_seal(c->tls, bufs[i].base, bufs[i].len);
    int end = tls_seal_end(c->tls);
    if (rc == 0)
        rc = end;
    size_t cap = 0;
    uv_buf_t *v = NULL;
    struct buf *blk;
    size_t len;
    while ((blk = tls_cipher_take(c->tls, &len)) != NULL) {
        if (w->ncipher == cap) {
            cap = cap ? cap * 2 : 8;
            w->cipher = realloc(w->cipher, cap * sizeof(*w->cipher));
            v = realloc(v, cap * sizeof(*v));
            if (w->cipher == NULL || v == NULL)
                abort();
        }
        v[w->ncipher] = uv_buf_init(blk->data, (unsigned)len);
        w->cipher[w->ncipher++] = blk;
    }
    *out = v;
    return rc;
}

static int submit(struct conn *c, struct wreq *w, const uv_buf_t *bufs, unsigned nbufs)
{
    w->c = c;
    w->req.data = w;
    w->cipher = NULL;
    w->ncipher = 0;
    uv_buf_t *sealed = NULL;
    int rc = c->tls != NULL ? seal(c, w, bufs, nbufs, &sealed) : 0;
    if (rc == 0 && sealed != NULL)
        rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, sealed, w->ncipher, write_cb);
    else if (rc == 0)
        rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbufs, write_cb);
    free(sealed);
    if (rc < 0) {
        wreq_free(w);
        conn_close(c);
        return -1;
    }
    return 0;
}

static int send_copy(struct conn *c, const char *data, size_t len)
{
    if (c->phase == PH_CLOSED)
        return -1;
    struct wreq *w = malloc(sizeof *w + len);
    if (!w) {
        conn_close(c);
        return -1;
    }
    w->is_body = false;
    memcpy(w->data, data, len);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    return submit(c, w, &buf, 1);
}

static int send_str(struct conn *c, const char *s)
{
    return send_copy(c, s, strlen(s));
}

/* Queues len bytes of the static pattern, framed as one chunk if chunked. */
static int send_pattern(struct conn *c, const char *src, size_t len, bool chunked)
{
    struct wreq *w = malloc(sizeof *w + 32);
    if (!w) {
        conn_close(c);
        return -1;
    }
    w->is_body = true;
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (chunked) {
        int hl = snprintf(w->data, 24, "%zx\r\n", len);
        bufs[n++] = uv_buf_init(w->data, (unsigned)hl);
    }
    bufs[n++] = uv_buf_init((char *)src, (unsigned)len);
    if (chunked) {
        memcpy(w->data + 24, "\r\n", 2);
        bufs[n++] = uv_buf_init(w->data + 24, 2);
    }
    return submit(c, w, bufs, n);
}

/* ---- response heads ---- */

static const char *req_header(const struct request *r, const char *name)
{
    const char *p = r->hdrs.data;
    for (unsigned i = 0; i < r->nhdrs; i++) {
        const char *v = p + strlen(p) + 1;
        if (strcasecmp(p, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

static bool has_body_status(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

static void add_conn_headers(struct conn *c, struct obuf *o)
{
    obuf_printf(o, "X-Origin-Conn: %" PRIu64 "\r\n", c->serial);
    if (c->tls != NULL) {
        char alpn[32];
        tls_alpn(c->tls, alpn, sizeof(alpn));
        obuf_printf(o, "X-Origin-TLS: resumed=%d alpn=%s\r\n", tls_session_reused(c->tls), alpn[0] ? alpn : "-");
    }
    const char *id = req_header(&c->req, "X-Request-Id");
    if (id) {
        obuf_puts(o, "X-Request-Id: ");
        obuf_puts(o, id);
        obuf_puts(o, "\r\n");
    }
}

/* Status line and the headers every answer carries; the caller adds the
 * framing header and the blank line. */
static void head_begin(struct conn *c, struct obuf *o, int status, const char *ctype, const char *cc)
{
    struct job *j = &c->job;
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);

    obuf_reset(o);
    obuf_printf(o, "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: sluice-origin\r\n", status, reason_phrase(status),
                date);
    add_conn_headers(c, o);
    if (ctype && has_body_status(status))
        obuf_printf(o, "Content-Type: %s\r\n", ctype);
    if (j->p.cc)
        cc = j->p.cc;
    if (cc) {
        obuf_puts(o, "Cache-Control: ");
        obuf_puts(o, cc);
        obuf_puts(o, "\r\n");
    }
    for (unsigned i = 0; i < j->p.nheaders; i++) {
        const char *h = j->p.headers[i];
        const char *colon = strchr(h, ':');
        obuf_add(o, h, (size_t)(colon - h));
        obuf_puts(o, ": ");
        obuf_puts(o, colon + 1 + strspn(colon + 1, " \t"));
        obuf_puts(o, "\r\n");
    }
    if (j->close_after || !c->req.keep_alive)
        obuf_puts(o, "Connection: close\r\n");
    else if (c->req.http_major == 1 && c->req.http_minor == 0)
        obuf_puts(o, "Connection: keep-alive\r\n");
}

/* ---- response completion ---- */

static void job_reset(struct conn *c)
{
    free(c->job.p.storage);
    memset(&c->job, 0, sizeof c->job);
}

/* Back to parsing: the next pipelined request, or waiting for one. */
static void next_request(struct conn *c)
{
    c->phase = PH_READ;
    job_reset(c);
    if (!c->in_drive)
        drive(c);
}

/* The whole response is queued: close, wait for the socket to take it, or go
 * on with the next request. */
static void response_done(struct conn *c)
{
    if (c->phase == PH_CLOSED)
        return;
    /* close=body closes without announcing it, like an origin that crashed mid-body. */
    if (c->job.close_after || c->job.p.close == CLOSE_BODY || !c->req.keep_alive) {
        conn_finish(c);
        return;
    }
    if (write_queue(c) > WRITE_HIGH) {
        c->phase = PH_DRAIN;
        uv_timer_stop(&c->timer);
        return;
    }
    next_request(c);
}

/* A response held in memory: head plus body (or half of it for close=body). */
static void send_buffered(struct conn *c, int status, const char *ctype, const char *cc, const char *body,
                          size_t len)
{
    struct job *j = &c->job;
    bool body_allowed = has_body_status(status);
    struct obuf *o = &c->out;
    head_begin(c, o, status, ctype, cc);
    if (body_allowed)
        obuf_printf(o, "Content-Length: %zu\r\n", len);
    obuf_puts(o, "\r\n");
    if (body_allowed && !c->req.is_head)
        obuf_add(o, body, j->p.close == CLOSE_BODY ? len / 2 : len);
    if (o->err) {
        log_error("origin", "response too large: %s", strerror(-o->err));
        conn_close(c);
        return;
    }
    if (send_copy(c, o->data, o->len) < 0)
        return;
    response_done(c);
}

static void send_text(struct conn *c, int status, const char *text)
{
    send_buffered(c, status, "text/plain; charset=utf-8", NULL, text, strlen(text));
}

/* ---- query parameters ---- */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Percent-decodes s in place ('+' is a space, as in forms). */
static void url_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '+') {
            *w++ = ' ';
        } else if (*r == '%' && hexval(r[1]) >= 0 && hexval(r[2]) >= 0) {
            *w++ = (char)(hexval(r[1]) * 16 + hexval(r[2]));
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        if (v > (max - (uint64_t)(*s - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

static bool parse_status(const char *s, int *out)
{
    uint64_t v;
    if (!parse_u64(s, 599, &v) || v < 200)
        return false;
    *out = (int)v;
    return true;
}

static bool is_tchar(int ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool is_field_value(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 && *s != '\t')
            return false;
    return true;
}

/* "Name:Value" with a token name and a value without control characters. */
static bool valid_extra_header(const char *h)
{
    const char *colon = strchr(h, ':');
    if (!colon || colon == h)
        return false;
    for (const char *p = h; p < colon; p++)
        if (!is_tchar((unsigned char)*p))
            return false;
    return is_field_value(colon + 1);
}

/* Fills p from the raw query (may be NULL).  Returns NULL, or why the query
 * is rejected (the client gets a 400). */
static const char *params_parse(struct params *p, const char *query, size_t qlen)
{
    p->key = "";
    if (!query)
        return NULL;
    p->storage = malloc(qlen + 1);
    if (!p->storage)
        return "out of memory";
    memcpy(p->storage, query, qlen);
    p->storage[qlen] = '\0';

    char *save = NULL;
    for (char *kv = strtok_r(p->storage, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
        char *v = strchr(kv, '=');
        if (v)
            *v++ = '\0';
        else
            v = kv + strlen(kv);
        url_decode(kv);
        url_decode(v);
        if (strcmp(kv, "delay") == 0) {
            if (!parse_u64(v, MAX_DELAY_MS, &p->delay_ms))
                return "bad delay";
        } else if (strcmp(kv, "ms") == 0) {
            if (!parse_u64(v, MAX_DELAY_MS, &p->ms))
                return "bad ms";
            p->has_ms = true;
        } else if (strcmp(kv, "n") == 0) {
            if (!parse_u64(v, MAX_BYTES, &p->n))
                return "bad n";
            p->has_n = true;
        } else if (strcmp(kv, "close") == 0) {
            if (strcmp(v, "head") == 0)
                p->close = CLOSE_HEAD;
            else if (strcmp(v, "body") == 0)
                p->close = CLOSE_BODY;
            else if (strcmp(v, "next") == 0)
                p->close = CLOSE_NEXT;
            else
                return "close must be head, body or next";
        } else if (strcmp(kv, "hang") == 0) {
            p->hang = strcmp(v, "0") != 0;
        } else if (strcmp(kv, "reset") == 0) {
            p->reset = strcmp(v, "0") != 0;
        } else if (strcmp(kv, "interim") == 0) {
            p->interim = strcmp(v, "0") != 0;
        } else if (strcmp(kv, "chunked") == 0) {
            p->chunked = strcmp(v, "0") != 0;
        } else if (strcmp(kv, "eof") == 0) {
            p->eof = strcmp(v, "0") != 0;
        } else if (strcmp(kv, "status") == 0) {
            if (!parse_status(v, &p->status))
                return "status must be 200..599";
        } else if (strcmp(kv, "fail") == 0) {
            if (!parse_u64(v, UINT32_MAX, &p->fail))
                return "bad fail";
            p->has_fail = true;
        } else if (strcmp(kv, "failp") == 0) {
            if (!parse_u64(v, 100, &p->fail_pct))
                return "bad failp";
        } else if (strcmp(kv, "key") == 0) {
            if (strlen(v) > KEY_MAX)
                return "key too long";
            p->key = v;
        } else if (strcmp(kv, "cc") == 0) {
            if (!is_field_value(v))
                return "bad cc";
            p->cc = v;
        } else if (strcmp(kv, "header") == 0) {
            if (p->nheaders == MAX_EXTRA_HEADERS)
                return "too many header parameters";
            if (!valid_extra_header(v))
                return "header must be Name:Value";
            p->headers[p->nheaders++] = v;
        }
    }
    return NULL;
}

/* ---- endpoints ---- */

static enum endpoint classify(const char *path, size_t len)
{
    static const struct {
        const char *path;
        enum endpoint ep;
        bool prefix;
    } routes[] = {
        {"/", EP_INDEX, false},        {"/hello", EP_HELLO, false}, {"/slow", EP_SLOW, false},
        {"/stream", EP_STREAM, false}, {"/task/", EP_TASK, true},   {"/echo", EP_ECHO, false},
        {"/bytes", EP_BYTES, false},   {"/sink", EP_SINK, false},   {"/status/", EP_STATUS, true},
        {"/count", EP_COUNT, false},   {"/reset", EP_RESET, false}, {"/ws", EP_WS, false},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        size_t rl = strlen(routes[i].path);
        if (routes[i].prefix ? (len > rl && memcmp(path, routes[i].path, rl) == 0)
                             : (len == rl && memcmp(path, routes[i].path, rl) == 0))
            return routes[i].ep;
    }
    return EP_NOT_FOUND;
}

static void digest_hex(EVP_MD_CTX *ctx, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    for (unsigned i = 0; i < mdlen && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    hex[64] = '\0';
}

static void body_echo(struct conn *c, struct obuf *b)
{
    struct request *r = &c->req;
    char hex[65];
    digest_hex(c->sha, hex);
    const char *q = memchr(r->url.data, '?', r->url.len);
    obuf_puts(b, "{\"method\":");
    const char *m = llhttp_method_name((llhttp_method_t)r->method);
    obuf_json(b, m, strlen(m));
    obuf_puts(b, ",\"target\":");
    obuf_json(b, r->url.data, r->url.len);
    obuf_puts(b, ",\"path\":");
    obuf_json(b, r->url.data, q ? (size_t)(q - r->url.data) : r->url.len);
    obuf_printf(b, ",\"version\":\"HTTP/%u.%u\",\"headers\":[", r->http_major, r->http_minor);
    const char *p = r->hdrs.data;
    for (unsigned i = 0; i < r->nhdrs; i++) {
        const char *v = p + strlen(p) + 1;
        obuf_puts(b, i ? ",[" : "[");
        obuf_json(b, p, strlen(p));
        obuf_puts(b, ",");
        obuf_json(b, v, strlen(v));
        obuf_puts(b, "]");
        p = v + strlen(v) + 1;
    }
    obuf_printf(b, "],\"body_length\":%" PRIu64 ",\"body_sha256\":\"%s\",\"body\":", r->body_len, hex);
    obuf_json(b, r->preview, r->preview_len);
    obuf_printf(b, ",\"connection\":%" PRIu64 "}\n", c->serial);
}

/* Returns false when the id is not acceptable. */
static bool body_task(const char *id, size_t len, struct obuf *b)
{
    if (len == 0 || len > KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)id[i]) && !strchr("._-", id[i]))
            return false;
    char key[KEY_MAX + 1];
    memcpy(key, id, len);
    key[len] = '\0';
    struct slot *s = table_get(&g.tasks, key);
    uint64_t now = uv_now(g.loop);
    if (!s->value)
        s->value = now ? now : 1; /* the first request for this id starts the task */
    uint64_t age = now - s->value;
    const char *status = age < TASK_PENDING_MS   ? "pending"
                         : age < TASK_PROCESS_MS ? "processing"
                                                 : "completed";
    obuf_printf(b, "{\"id\":\"%s\",\"data\":{\"status\":\"%s\"", key, status);
    if (age >= TASK_PROCESS_MS)
        obuf_printf(b, ",\"result\":\"result of task %s\"", key);
    obuf_puts(b, "}}\n");
    return true;
}

static void respond_simple(struct conn *c)
{
    struct job *j = &c->job;
    struct request *r = &c->req;
    struct obuf body = {.max = MAX_RESPONSE};
    const char *ctype = "text/plain; charset=utf-8";
    const char *cc = NULL;
    int status = 200;
    const char *q = memchr(r->url.data, '?', r->url.len);
    size_t plen = q ? (size_t)(q - r->url.data) : r->url.len;

    switch (j->ep) {
    case EP_INDEX:
        obuf_puts(&body, usage_text);
        break;
    case EP_HELLO:
        obuf_puts(&body, "hello from the sluice demo origin\n");
        cc = "public, max-age=60";
        break;
    case EP_SLOW:
        obuf_printf(&body, "slept %" PRIu64 " ms\n", j->p.ms);
        break;
    case EP_TASK:
        ctype = "application/json";
        if (!body_task(r->url.data + 6, plen - 6, &body)) {
            status = 400;
            ctype = "text/plain; charset=utf-8";
            obuf_puts(&body, "task id must be 1-128 characters of [A-Za-z0-9._-]\n");
        }
        break;
    case EP_ECHO:
        ctype = "application/json";
        body_echo(c, &body);
        break;
    case EP_SINK: {
        char hex[65];
        digest_hex(c->sha, hex);
        ctype = "application/json";
        obuf_printf(&body, "{\"length\":%" PRIu64 ",\"sha256\":\"%s\"}\n", r->body_len, hex);
        break;
    }
    case EP_STATUS: {
        char code[8] = "";
        if (plen - 8 < sizeof code) {
            memcpy(code, r->url.data + 8, plen - 8);
            code[plen - 8] = '\0';
        }
        if (parse_status(code, &status)) {
            obuf_printf(&body, "status %d\n", status);
        } else {
            status = 400;
            obuf_puts(&body, "status must be 200..599\n");
        }
        break;
    }
    case EP_COUNT:
        ctype = "application/json";
        obuf_printf(&body, "{\"requests\":%" PRIu64 ",\"connections\":%" PRIu64 ",\"open\":%u}\n", g.requests,
                    g.accepted, g.open);
        break;
    case EP_RESET:
        g.requests = 0;
        g.accepted = 0;
        table_clear(&g.fails);
        table_clear(&g.tasks);
        ctype = "application/json";
        obuf_puts(&body, "{\"reset\":true}\n");
        break;
    case EP_WS:
        status = 426;
        obuf_puts(&body, "this endpoint needs Upgrade: websocket\n");
        break;
    default:
        status = 404;
        obuf_puts(&body, "not found\n");
        break;
    }
    if (j->p.status)
        status = j->p.status;
    if (body.err) {
        status = 500;
        obuf_dispose(&body);
        obuf_puts(&body, "response too large\n");
    }
    send_buffered(c, status, ctype, cc, body.data, body.len);
    obuf_dispose(&body);
}

/* Sends the head of a streamed body; returns false when no body follows (or
 * the connection failed). */
static bool stream_head(struct conn *c, const char *ctype, const char *cc, uint64_t content_length)
{
    struct job *j = &c->job;
    int status = j->p.status ? j->p.status : 200;
    bool body_allowed = has_body_status(status);
    bool want_chunked = j->ep == EP_STREAM || j->p.chunked || j->p.eof;
    /* HTTP/1.0 has no chunked coding: the body ends with the connection. */
    j->chunked = want_chunked && !j->p.eof && !(c->req.http_major == 1 && c->req.http_minor == 0);
    if (body_allowed && !c->req.is_head && want_chunked && !j->chunked)
        j->close_after = true;

    struct obuf *o = &c->out;
    head_begin(c, o, status, ctype, cc);
    if (body_allowed && j->chunked)
        obuf_puts(o, "Transfer-Encoding: chunked\r\n");
    else if (body_allowed && !want_chunked)
        obuf_printf(o, "Content-Length: %" PRIu64 "\r\n", content_length);
    obuf_puts(o, "\r\n");
    if (o->err) {
        conn_close(c);
        return false;
    }
    if (send_copy(c, o->data, o->len) < 0)
        return false;
    if (!body_allowed || c->req.is_head) {
        response_done(c);
        return false;
    }
    return true;
}

/* End of a streamed body: the last chunk, unless close=body cut it short. */
static void stream_end(struct conn *c)
{
    if (c->job.chunked && c->job.p.close != CLOSE_BODY && send_str(c, "0\r\n\r\n") < 0)
        return;
    response_done(c);
}

static void stream_tick(struct conn *c)
{
    struct job *j = &c->job;
    if (j->sent == j->limit) {
        stream_end(c);
        return;
    }
    /* A peer that does not read gets no more events until it catches up. */
    if (write_queue(c) <= WRITE_HIGH) {
        char ev[96];
        int n = snprintf(ev, sizeof ev, "data: event %" PRIu64 "\n\n", j->sent + 1);
        char framed[128];
        int fl = j->chunked ? snprintf(framed, sizeof framed, "%x\r\n%s\r\n", n, ev)
                            : snprintf(framed, sizeof framed, "%s", ev);
        if (send_copy(c, framed, (size_t)fl) < 0)
            return;
        j->sent++;
        if (j->sent == j->limit) {
            stream_end(c);
            return;
        }
    }
    c->phase = PH_STREAM;
    /* Postponed events wait at least a little, or ms=0 would spin the loop. */
    uint64_t wait = j->interval_ms;
    if (j->sent < j->limit && write_queue(c) > WRITE_HIGH && wait < 10)
        wait = 10;
    uv_timer_start(&c->timer, timer_cb, wait, 0);
}

static void stream_start(struct conn *c)
{
    struct job *j = &c->job;
    uint64_t total = j->p.has_n ? j->p.n : DEFAULT_EVENTS;
    if (total > MAX_EVENTS) {
        send_text(c, 400, "n must be at most 100000 events\n");
        return;
    }
    j->interval_ms = j->p.has_ms ? j->p.ms : DEFAULT_EVENT_MS;
    j->limit = j->p.close == CLOSE_BODY ? total / 2 : total;
    if (stream_head(c, "text/event-stream", "no-cache", 0))
        stream_tick(c);
}

static void bytes_next(struct conn *c)
{
    struct job *j = &c->job;
    if (j->sent == j->limit) {
        stream_end(c);
        return;
    }
    uint64_t left = j->limit - j->sent;
    size_t n = left < BYTES_CHUNK ? (size_t)left : BYTES_CHUNK;
    const char *src = g.pattern + j->sent % PATTERN_PERIOD;
    j->sent += n;
    send_pattern(c, src, n, j->chunked);
}

static void bytes_start(struct conn *c)
{
    struct job *j = &c->job;
    uint64_t total = j->p.has_n ? j->p.n : DEFAULT_BYTES;
    j->limit = j->p.close == CLOSE_BODY ? total / 2 : total;
    if (!stream_head(c, "application/octet-stream", NULL, total))
        return;
    c->phase = PH_BYTES;
    bytes_next(c);
}

/* 101 Switching Protocols, then echo: RFC 6455 4.2.2 accept key. */
static void ws_accept(struct conn *c)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const char *key = req_header(&c->req, "Sec-WebSocket-Key");
    const char *upgrade = req_header(&c->req, "Upgrade");
    if (!key || !upgrade || strcasecmp(upgrade, "websocket") != 0 || strlen(key) > 64) {
        c->job.close_after = true;
        send_text(c, 400, "websocket upgrade needs Upgrade: websocket and Sec-WebSocket-Key\n");
        return;
    }
    char input[64 + sizeof guid];
    int ilen = snprintf(input, sizeof input, "%s%s", key, guid);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    unsigned char accept[64];
    EVP_Digest(input, (size_t)ilen, md, &mdlen, EVP_sha1(), NULL);
    EVP_EncodeBlock(accept, md, (int)mdlen);

    struct obuf *o = &c->out;
    obuf_reset(o);
    obuf_printf(o,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Accept: %s\r\n",
                (const char *)accept);
    add_conn_headers(c, o);
    obuf_puts(o, "\r\n");
    if (o->err || send_copy(c, o->data, o->len) < 0)
        return;
    c->phase = PH_TUNNEL;
    uv_timer_start(&c->timer, timer_cb, g.idle_ms, 0);
    /* Bytes that came with the upgrade request already belong to the tunnel. */
    if (c->rstart < c->rend && send_copy(c, c->rbuf + c->rstart, c->rend - c->rstart) < 0)
        return;
    c->rstart = c->rend = 0;
}

/* After the delay: the fault actions, then the endpoint. */
static void respond(struct conn *c)
{
    struct job *j = &c->job;
    if (j->p.close == CLOSE_HEAD) {
        conn_close(c);
        return;
    }
    if (j->p.reset) {
        conn_reset(c);
        return;
    }
    if (j->p.close == CLOSE_NEXT)
        c->drop_next = true;
    if (j->p.interim && send_str(c, "HTTP/1.1 103 Early Hints\r\nLink: </hello>; rel=preload\r\n\r\n") < 0)
        return;
    if (j->p.has_fail) {
        struct slot *s = table_get(&g.fails, j->p.key);
        if (s->value++ < j->p.fail) {
            char text[64 + KEY_MAX];
            snprintf(text, sizeof text, "injected failure %" PRIu64 "/%" PRIu64 " for key '%s'\n", s->value,
                     j->p.fail, j->p.key);
            send_text(c, 503, text);
            return;
        }
    }
    if (j->p.fail_pct > 0 && (uint64_t)(random() % 100) < j->p.fail_pct) {
        send_text(c, 503, "injected random failure\n");
        return;
    }
    switch (j->ep) {
    case EP_STREAM:
        stream_start(c);
        break;
    case EP_BYTES:
        bytes_start(c);
        break;
    default:
        respond_simple(c);
        break;
    }
}

/* A request was parsed completely (the parser is paused behind it). */
static void dispatch(struct conn *c, bool upgrade)
{
    struct job *j = &c->job;
    struct request *r = &c->req;
    if (c->phase != PH_READ)
        return;
    if (c->drop_next) {
        conn_close(c);
        return;
    }
    job_reset(c);
    const char *q = memchr(r->url.data, '?', r->url.len);
    size_t plen = q ? (size_t)(q - r->url.data) : r->url.len;
    j->ep = classify(r->url.data, plen);
    /* The parser cannot go past an upgrade request it did not switch for. */
    if (upgrade)
        j->close_after = true;
    const char *err = params_parse(&j->p, q ? q + 1 : NULL, q ? r->url.len - plen - 1 : 0);
    if (err) {
        char text[128];
        snprintf(text, sizeof text, "bad query: %s\n", err);
        free(j->p.storage);
        memset(&j->p, 0, sizeof j->p);
        send_text(c, 400, text);
        return;
    }
    if (upgrade && j->ep == EP_WS) {
        ws_accept(c);
        return;
    }
    if (j->p.hang) {
        c->phase = PH_HANG;
        uv_timer_stop(&c->timer);
        c->rstart = c->rend = 0;
        return;
    }
    if (j->ep == EP_SLOW && !j->p.has_ms)
        j->p.ms = DEFAULT_SLOW_MS;
    uint64_t delay = g.delay_ms + j->p.delay_ms + (j->ep == EP_SLOW ? j->p.ms : 0);
    if (delay) {
        c->phase = PH_DELAY;
        uv_timer_start(&c->timer, timer_cb, delay, 0);
        return;
    }
    respond(c);
}

static void parse_failed(struct conn *c, llhttp_errno_t err)
{
    if (c->phase != PH_READ)
        return;
    int status = c->req.limit_status ? c->req.limit_status : 400;
    char text[256];
    snprintf(text, sizeof text, "bad request: %s (%s)\n", llhttp_get_error_reason(&c->parser),
             llhttp_errno_name(err));
    job_reset(c);
    c->job.close_after = true;
    c->req.is_head = false;
    send_text(c, status, text);
}

/* Parses buffered input until it is used up or a response job takes over. */
static void drive(struct conn *c)
{
    c->in_drive = true;
    while (c->phase == PH_READ && c->rstart < c->rend) {
        const char *p = c->rbuf + c->rstart;
        llhttp_errno_t err = llhttp_execute(&c->parser, p, c->rend - c->rstart);
        if (err == HPE_OK) {
            c->rstart = c->rend;
            break;
        }
        if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
            parse_failed(c, err);
            break;
        }
        c->rstart = (size_t)(llhttp_get_error_pos(&c->parser) - c->rbuf);
        if (err == HPE_PAUSED)
            llhttp_resume(&c->parser);
        dispatch(c, err == HPE_PAUSED_UPGRADE);
    }
    c->in_drive = false;
    if (c->rstart == c->rend)
        c->rstart = c->rend = 0;
    switch (c->phase) {
    case PH_READ:
        if (c->read_eof) {
            conn_finish(c);
            return;
        }
        uv_timer_start(&c->timer, timer_cb, g.idle_ms, 0);
        start_reading(c);
        break;
    case PH_DELAY:
    case PH_STREAM:
    case PH_BYTES:
    case PH_DRAIN:
    case PH_HANG:
    case PH_TUNNEL:
        /* Keep reading while there is room: it notices EOF and takes pipelined input. */
        if (c->rend < READ_BUF_SIZE)
            start_reading(c);
        break;
    default:
        break;
    }
}

/* ---- llhttp callbacks ---- */

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    struct request *r = &c->req;
    obuf_reset(&r->url);
    obuf_reset(&r->hdrs);
    r->nhdrs = 0;
    r->limit_status = 0;
    r->body_len = 0;
    r->hash_body = false;
    r->is_head = false;
    r->keep_alive = false;
    r->preview_len = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    obuf_add(&c->req.url, at, n);
    if (c->req.url.err) {
        c->req.limit_status = 414;
        return -1;
    }
    return 0;
}

static int header_add(struct conn *c, const char *at, size_t n)
{
    obuf_add(&c->req.hdrs, at, n);
    if (c->req.hdrs.err) {
        c->req.limit_status = 431;
        return -1;
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    return header_add(p->data, at, n);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    return header_add(p->data, at, n);
}

static int on_header_field_complete(llhttp_t *p)
{
    return header_add(p->data, "", 1);
}

static int on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->req.nhdrs == MAX_HEADERS) {
        c->req.limit_status = 431;
        return -1;
    }
    if (header_add(c, "", 1) < 0)
        return -1;
    c->req.nhdrs++;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct request *r = &c->req;
    g.requests++;
    r->method = p->method;
    r->is_head = p->method == HTTP_HEAD;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    if (!r->url.data)
        obuf_add(&r->url, "", 0);
    const char *q = memchr(r->url.data, '?', r->url.len);
    enum endpoint ep = classify(r->url.data, q ? (size_t)(q - r->url.data) : r->url.len);
    r->hash_body = ep == EP_ECHO || ep == EP_SINK;
    if (r->hash_body && !EVP_DigestInit_ex(c->sha, EVP_sha256(), NULL))
        return -1;
    const char *expect = req_header(r, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && p->http_major == 1 && p->http_minor >= 1 &&
        send_str(c, "HTTP/1.1 100 Continue\r\n\r\n") < 0)
        return -1;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    struct request *r = &c->req;
    r->body_len += n;
    if (!r->hash_body)
        return 0;
    if (!EVP_DigestUpdate(c->sha, at, n))
        return -1;
    size_t take = BODY_PREVIEW - r->preview_len;
    if (take > n)
        take = n;
    memcpy(r->preview + r->preview_len, at, take);
    r->preview_len += take;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->req.keep_alive = llhttp_should_keep_alive(p);
    /* An upgrade makes llhttp stop with HPE_PAUSED_UPGRADE by itself. */
    return p->upgrade ? 0 : HPE_PAUSED;
}

/* ---- reading ---- */

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = h->data;
    if (c->rstart == c->rend) {
        c->rstart = c->rend = 0;
    } else if (c->rstart > 0 && c->rend >= READ_BUF_SIZE) {
        memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
        c->rend -= c->rstart;
        c->rstart = 0;
    }
    *buf = uv_buf_init(c->rbuf + c->rend, (unsigned)(READ_BUF_SIZE - c->rend));
}

static void stop_reading(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void on_eof(struct conn *c)
{
    c->read_eof = true;
    switch (c->phase) {
    case PH_READ:
    case PH_TUNNEL:
        conn_finish(c);
        break;
    case PH_HANG:
    case PH_LINGER:
        conn_close(c);
        break;
    default:
        /* A job in progress finishes; drive() closes once the input is used up. */
        break;
    }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        stop_reading(c);
        return;
    }
    if (nread < 0) {
        stop_reading(c);
        if (nread == UV_EOF)
            on_eof(c);
        else
            conn_close(c);
        return;
    }
    switch (c->phase) {
    case PH_READ:
        c->rend += (size_t)nread;
        drive(c);
        break;
    case PH_TUNNEL:
        uv_timer_start(&c->timer, timer_cb, g.idle_ms, 0);
        if (send_copy(c, buf->base, (size_t)nread) == 0 && write_queue(c) > WRITE_HIGH)
            stop_reading(c);
        break;
    case PH_HANG:
    case PH_CLOSING:
    case PH_LINGER:
    case PH_CLOSED:
        break; /* input is dropped: rend does not move */
    default:
        c->rend += (size_t)nread;
        if (c->rend >= READ_BUF_SIZE)
            stop_reading(c);
        break;
    }
}

/* TLS: a read is at most one block of plaintext, and reading goes on only
 * while rend < READ_BUF_SIZE, so it fits the block of room a TLS rbuf has
 * beyond READ_BUF_SIZE. */
static void read_cb_tls(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    uv_buf_t plain = uv_buf_init(NULL, 0);
    ssize_t n = tls_read(c->tls, nread, buf, &plain);
    if (n == 0)
        return;
    if (n < 0) {
        if (n == UV_EPROTO)
            log_debug("origin", "TLS: %s", tls_error(c->tls));
        read_cb(s, n, &plain);
        return;
    }
    struct buf *blk = (struct buf *)(plain.base - offsetof(struct buf, data));
    if (c->rstart == c->rend) {
        c->rstart = c->rend = 0;
    } else if (c->rstart > 0) {
        memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
        c->rend -= c->rstart;
        c->rstart = 0;
    }
    memcpy(c->rbuf + c->rend, plain.base, (size_t)n);
    buf_unref(blk);
    uv_buf_t in = uv_buf_init(c->rbuf + c->rend, (unsigned)n);
    read_cb(s, n, &in);
}

static void start_reading(struct conn *c)
{
    if (c->reading || c->read_eof)
        return;
    int rc = c->tls != NULL ? uv_read_start((uv_stream_t *)&c->tcp, tls_alloc_cb, read_cb_tls)
                            : uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (rc == 0)
        c->reading = true;
}

static void timer_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    switch (c->phase) {
    case PH_DELAY:
        respond(c);
        break;
    case PH_STREAM:
        stream_tick(c);
        break;
    case PH_READ:
    case PH_TUNNEL:
    case PH_CLOSING:
    case PH_LINGER:
        conn_close(c);
        break;
    default:
        break;
    }
}

/* ---- listener ---- */

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        LOG_RATELIMITED(LOG_WARN, "origin", "accept: %s", uv_strerror(status));
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    char *rbuf = malloc(g.tls_ctx != NULL ? READ_BUF_SIZE + BUF_SIZE : READ_BUF_SIZE);
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    if (!c || !rbuf || !sha) {
        /* Accept and drop it, or libuv would report the same connection again at once. */
        LOG_RATELIMITED(LOG_ERROR, "origin", "out of memory for a connection");
        free(c);
        free(rbuf);
        EVP_MD_CTX_free(sha);
        uv_tcp_t *tmp = malloc(sizeof *tmp);
        if (tmp && uv_tcp_init(g.loop, tmp) == 0) {
            uv_accept(server, (uv_stream_t *)tmp);
            uv_close((uv_handle_t *)tmp, free_handle);
        } else {
            free(tmp);
        }
        return;
    }
    c->rbuf = rbuf;
    c->sha = sha;
    c->req.url.max = MAX_URL;
    c->req.hdrs.max = MAX_HEADER_BYTES;
    c->out.max = MAX_RESPONSE + MAX_HEADER_BYTES;
    uv_tcp_init(g.loop, &c->tcp);
    uv_timer_init(g.loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = g.conns;
    if (g.conns)
        g.conns->prev = c;
    g.conns = c;
    g.open++;
    c->phase = PH_READ;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || g.open > MAX_CONNS) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (g.tls_ctx != NULL) {
        outq_init(&c->tq, (uv_stream_t *)&c->tcp, NULL, NULL);
        c->tls = tls_server_create(g.tls_ctx, &c->tq);
        if (c->tls == NULL) {
            conn_close(c);
            return;
        }
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &g.settings);
    c->parser.data = c;
    c->serial = ++g.serial;
    g.accepted++;
    uv_timer_start(&c->timer, timer_cb, g.idle_ms, 0);
    start_reading(c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    if (uv_is_closing((uv_handle_t *)&g.listener))
        return;
    log_info("origin", "signal %d: exiting", signum);
    uv_close((uv_handle_t *)&g.listener, NULL);
    uv_close((uv_handle_t *)&g.sigterm, NULL);
    uv_close((uv_handle_t *)&g.sigint, NULL);
    while (g.conns)
        conn_close(g.conns);
}

static int listen_on(const char *addr, int port)
{
    struct sockaddr_storage ss;
    int rc = strchr(addr, ':') ? uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss)
                               : uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss);
    if (rc < 0) {
        fprintf(stderr, "sluice-origin: bad address %s: %s\n", addr, uv_strerror(rc));
        return rc;
    }
    uv_tcp_init(g.loop, &g.listener);
    rc = uv_tcp_bind(&g.listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&g.listener, 1024, on_connection);
    if (rc < 0)
        fprintf(stderr, "sluice-origin: listen on %s:%d: %s\n", addr, port, uv_strerror(rc));
    return rc;
}

static int setup_tls(const char *pair, const char *client_ca)
{
    const char *colon = strchr(pair, ':');
    if (colon == NULL) {
        fprintf(stderr, "sluice-origin: -T wants CERT:KEY\n");
        return -1;
    }
    char cert[4096];
    snprintf(cert, sizeof(cert), "%.*s", (int)(colon - pair), pair);
    char err[1024];
    tls_global_init();
    g.tls_ctx = tls_server_ctx_create(cert, colon + 1, err, sizeof(err));
    if (g.tls_ctx == NULL) {
        fprintf(stderr, "sluice-origin: %s\n", err);
        return -1;
    }
    if (client_ca != NULL) {
        if (SSL_CTX_load_verify_locations(g.tls_ctx, client_ca, NULL) != 1) {
            fprintf(stderr, "sluice-origin: cannot load CA %s\n", client_ca);
            return -1;
        }
        SSL_CTX_set_verify(g.tls_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    uint64_t port = 8081;
    bool say_ready = false;
    const char *tls_pair = NULL, *client_ca = NULL;
    g.idle_ms = DEFAULT_IDLE_MS;
    int opt;
    while ((opt = getopt(argc, argv, "p:a:k:d:T:C:wh")) != -1) {
        switch (opt) {
        case 'p':
            if (!parse_u64(optarg, 65535, &port)) {
                fprintf(stderr, "sluice-origin: bad port %s\n", optarg);
                return 2;
            }
            break;
        case 'a':
            addr = optarg;
            break;
        case 'k':
            if (!parse_u64(optarg, MAX_DELAY_MS, &g.idle_ms) || g.idle_ms == 0) {
                fprintf(stderr, "sluice-origin: bad idle timeout %s\n", optarg);
                return 2;
            }
            break;
        case 'd':
            if (!parse_u64(optarg, MAX_DELAY_MS, &g.delay_ms)) {
                fprintf(stderr, "sluice-origin: bad delay %s\n", optarg);
                return 2;
            }
            break;
        case 'w':
            say_ready = true;
            break;
        case 'T':
            tls_pair = optarg;
            break;
        case 'C':
            client_ca = optarg;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            fputs(usage_text, stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fputs(usage_text, stderr);
        return 2;
    }

    if (tls_pair != NULL && setup_tls(tls_pair, client_ca) != 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    g.loop = uv_default_loop();
    llhttp_settings_init(&g.settings);
    g.settings.on_message_begin = on_message_begin;
    g.settings.on_url = on_url;
    g.settings.on_header_field = on_header_field;
    g.settings.on_header_field_complete = on_header_field_complete;
    g.settings.on_header_value = on_header_value;
    g.settings.on_header_value_complete = on_header_value_complete;
    g.settings.on_headers_complete = on_headers_complete;
    g.settings.on_body = on_body;
    g.settings.on_message_complete = on_message_complete;

    static const char period[PATTERN_PERIOD + 1] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-\n";
    for (size_t i = 0; i < sizeof g.pattern; i++)
        g.pattern[i] = period[i % PATTERN_PERIOD];

    if (listen_on(addr, (int)port) < 0)
        return 1;
    uv_signal_init(g.loop, &g.sigterm);
    uv_signal_init(g.loop, &g.sigint);
    uv_signal_start(&g.sigterm, on_signal, SIGTERM);
    uv_signal_start(&g.sigint, on_signal, SIGINT);
    log_info("origin", "listening on %s:%d", addr, (int)port);
    if (say_ready) {
        printf("ready\n");
        fflush(stdout);
    }
    uv_run(g.loop, UV_RUN_DEFAULT);
    uv_loop_close(g.loop);
    return 0;
}
