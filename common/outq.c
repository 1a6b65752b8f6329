/* SPDX-License-Identifier: MIT */
#include "common/outq.h"

#include <stdlib.h>
#include <string.h>

#include "common/tls.h"

#define OUTQ_MAX_BUFS 32
#define OUTQ_SCRATCH 1024
#define OUTQ_FREELIST_MAX 256

struct outq_batch {
    uv_write_t req;
    struct outq *q;
    struct outq_batch *next_free;
    unsigned nbufs, nrefs;
    size_t scratch_used;
    uv_buf_t bufs[OUTQ_MAX_BUFS];
    struct outq_ref {
        void (*release)(void *obj);
        void *obj;
    } refs[OUTQ_MAX_BUFS];
    char scratch[OUTQ_SCRATCH];
};

static _Thread_local struct outq_batch *freelist;
static _Thread_local unsigned freelist_len;

static struct outq_batch *batch_get(struct outq *q)
{
    struct outq_batch *b = freelist;
    if (b != NULL) {
        freelist = b->next_free;
        freelist_len--;
    } else if ((b = malloc(sizeof(*b))) == NULL) {
        abort();
    }
    b->q = q;
    b->nbufs = b->nrefs = 0;
    b->scratch_used = 0;
    return b;
}

static void batch_put(struct outq_batch *b)
{
    for (unsigned i = 0; i < b->nrefs; i++)
        b->refs[i].release(b->refs[i].obj);
    b->nrefs = 0;
    if (freelist_len >= OUTQ_FREELIST_MAX) {
        free(b);
        return;
    }
    b->next_free = freelist;
    freelist = b;
    freelist_len++;
}

void outq_thread_cleanup(void)
{
    while (freelist != NULL) {
        struct outq_batch *b = freelist;
        freelist = b->next_free;
        free(b);
    }
    freelist_len = 0;
}

void outq_init(struct outq *q, uv_stream_t *stream, outq_done_cb cb, void *owner)
{
    memset(q, 0, sizeof(*q));
    q->stream = stream;
    q->done_cb = cb;
    q->owner = owner;
}

void outq_dispose(struct outq *q)
{
    if (q->cur != NULL) {
        batch_put(q->cur);
        q->cur = NULL;
    }
}

/* The batch to append to, flushing a full one first (a flush error is kept
 * for the caller's own flush to report: the stream will fail again). */
static struct outq_batch *room(struct outq *q, size_t scratch_needed)
{
    struct outq_batch *b = q->cur;
    if (b != NULL && (b->nbufs == OUTQ_MAX_BUFS || b->scratch_used + scratch_needed > OUTQ_SCRATCH)) {
        outq_flush(q);
        b = NULL;
    }
    if (b == NULL)
        b = q->cur = batch_get(q);
    return b;
}

static void add(struct outq_batch *b, const char *p, size_t len)
{
    /* adjacent pieces (a chunk line right after scratch bytes) merge into one iovec */
    if (b->nbufs > 0) {
        uv_buf_t *last = &b->bufs[b->nbufs - 1];
        if (last->base + last->len == p) {
            last->len += len;
            return;
        }
    }
    b->bufs[b->nbufs++] = uv_buf_init((char *)p, (unsigned)len);
}

static void release_buf(void *obj)
{
    buf_unref(obj);
}

static void ref_buf(void *obj)
{
    buf_ref(obj);
}

void outq_add_held(struct outq *q, const char *p, size_t len, void (*ref)(void *), void (*release)(void *),
                   void *obj)
{
    if (len == 0)
        return;
    struct outq_batch *b = room(q, 0);
    if (b->nrefs == 0 || b->refs[b->nrefs - 1].obj != obj) {
        ref(obj);
        b->refs[b->nrefs++] = (struct outq_ref){release, obj};
    }
    add(b, p, len);
}

void outq_add_ref(struct outq *q, struct buf *blk, const char *p, size_t len)
{
    outq_add_held(q, p, len, ref_buf, release_buf, blk);
}

void outq_add_static(struct outq *q, const char *p, size_t len)
{
    if (len == 0)
        return;
    add(room(q, 0), p, len);
}

void outq_add_copy(struct outq *q, const char *p, size_t len)
{
    if (len == 0)
        return;
    if (len > OUTQ_SCRATCH) {
        /* rare (long local bodies): a block of its own */
        while (len > 0) {
            struct buf *blk = buf_get();
            size_t n = len < BUF_SIZE ? len : BUF_SIZE;
            memcpy(blk->data, p, n);
            outq_add_ref(q, blk, blk->data, n);
            buf_unref(blk);
            p += n;
            len -= n;
        }
        return;
    }
    struct outq_batch *b = room(q, len);
    char *dst = b->scratch + b->scratch_used;
    memcpy(dst, p, len);
    b->scratch_used += len;
    add(b, dst, len);
}

bool outq_has_pending(const struct outq *q)
{
    return q->inflight > 0 || (q->cur != NULL && q->cur->nbufs > 0);
}

size_t outq_backlog(const struct outq *q)
{
    return uv_stream_get_write_queue_size(q->stream);
}

static void on_write(uv_write_t *req, int status)
{
    struct outq_batch *b = req->data;
    struct outq *q = b->q;
    batch_put(b);
    q->inflight--;
    if (q->done_cb != NULL)
        q->done_cb(q, status);
}

/* Writes a batch: at once what the kernel takes, the rest through uv_write. */
static int write_batch(struct outq *q, struct outq_batch *b)
{
    size_t total = 0;
    for (unsigned i = 0; i < b->nbufs; i++)
        total += b->bufs[i].len;
    unsigned first = 0;
    if (q->inflight == 0) {
        int n = uv_try_write(q->stream, b->bufs, b->nbufs);
        if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
            batch_put(b);
            return n;
        }
        size_t done = n > 0 ? (size_t)n : 0;
        if (done == total) {
            batch_put(b);
            return 0;
        }
        while (done >= b->bufs[first].len) {
            done -= b->bufs[first].len;
            first++;
        }
        b->bufs[first].base += done;
        b->bufs[first].len -= done;
    }
    b->req.data = b;
    int rc = uv_write(&b->req, q->stream, b->bufs + first, b->nbufs - first, on_write);
    if (rc != 0) {
        batch_put(b);
        return rc;
    }
    q->inflight++;
    return 0;
}

/* Encrypts the queued pieces, then writes whatever ciphertext is waiting
 * (also a handshake's or an alert's, with nothing queued). */
static int flush_tls(struct outq *q)
{
    struct outq_batch *b = q->cur;
    int rc = 0;
    q->cur = NULL;
    if (b != NULL) {
        for (unsigned i = 0; i < b->nbufs && rc == 0; i++) {
            q->bytes_written += b->bufs[i].len;
            rc = tls_seal(q->tls, b->bufs[i].base, b->bufs[i].len);
        }
        batch_put(b);
    }
    int end = tls_seal_end(q->tls);
    if (rc == 0)
        rc = end;
    struct outq_batch *cb = NULL;
    struct buf *blk;
    size_t len;
    while ((blk = tls_cipher_take(q->tls, &len)) != NULL) {
        if (cb == NULL)
            cb = batch_get(q);
        cb->bufs[cb->nbufs++] = uv_buf_init(blk->data, (unsigned)len);
        cb->refs[cb->nrefs++] = (struct outq_ref){release_buf, blk};
        if (cb->nbufs == OUTQ_MAX_BUFS) {
            int w = write_batch(q, cb);
            cb = NULL;
            if (rc == 0)
                rc = w;
        }
    }
    if (cb != NULL) {
        int w = write_batch(q, cb);
        if (rc == 0)
            rc = w;
    }
    return rc;
}

int outq_flush(struct outq *q)
{
    if (q->tls != NULL)
        return flush_tls(q);
    struct outq_batch *b = q->cur;
    if (b == NULL || b->nbufs == 0)
        return 0;
    q->cur = NULL;
    for (unsigned i = 0; i < b->nbufs; i++)
        q->bytes_written += b->bufs[i].len;
    return write_batch(q, b);
}
