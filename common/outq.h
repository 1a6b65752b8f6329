/* SPDX-License-Identifier: MIT */
/*
 * outq: ordered output to one libuv stream, batched and zero-copy.
 *
 * Everything queued between two flushes (a response head, body slices that
 * still live in their read blocks, chunk-size lines) goes out in one writev.
 * A flush first tries uv_try_write: on a socket that keeps up, the bytes are
 * gone before it returns and no reference outlives the call.  What the kernel
 * does not take becomes a uv_write that holds refs on the blocks until its
 * callback.  Batches come from a per-thread freelist, so steady traffic
 * allocates nothing.
 *
 * TLS: with `tls` set (tls_server_create / tls_client_create do it), a flush
 * encrypts what was queued (its refs are released at once: the bytes were
 * copied into records) and writes the ciphertext the same way.  A plain outq
 * pays one NULL check.
 *
 * Threading: one loop thread; the stream's owner serialises calls.
 */
#ifndef SLUICE_OUTQ_H
#define SLUICE_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/buf.h"

struct outq;
/* Called after a queued write finished (status 0 or a negative errno,
 * UV_ECANCELED when the stream was closed). */
typedef void (*outq_done_cb)(struct outq *q, int status);

struct outq_batch;
struct tls;

struct outq {
    uv_stream_t *stream;
    outq_done_cb done_cb;
    void *owner;
    struct outq_batch *cur; /* being filled, not yet flushed */
    unsigned inflight;      /* uv_writes not yet completed */
    uint64_t bytes_written; /* accepted by the kernel or queued, for stats */
    struct tls *tls;        /* NULL: plain stream */
};

void outq_init(struct outq *q, uv_stream_t *stream, outq_done_cb cb, void *owner);
/* Drops what was queued but not flushed (writes in flight complete through
 * the stream's close). */
void outq_dispose(struct outq *q);

/* Queues len bytes at p, which lie inside block b (a ref is taken if the bytes
 * must outlive the flush). */
void outq_add_ref(struct outq *q, struct buf *b, const char *p, size_t len);
/* Queues len bytes at p owned by obj: ref(obj) is called if the bytes must
 * outlive the flush, release(obj) when they are written (a cache entry, a
 * fill). */
void outq_add_held(struct outq *q, const char *p, size_t len, void (*ref)(void *), void (*release)(void *),
                   void *obj);
/* Queues bytes that live forever (string literals). */
void outq_add_static(struct outq *q, const char *p, size_t len);
/* Copies a few bytes (chunk-size lines, small local answers) into the batch. */
void outq_add_copy(struct outq *q, const char *p, size_t len);

bool outq_has_pending(const struct outq *q);
/* Bytes waiting in the kernel-refused queue (backpressure signal; ciphertext
 * on a TLS stream, which holds nothing back between flushes). */
size_t outq_backlog(const struct outq *q);
/* Writes what was queued.  0 or a negative errno (then the stream is broken). */
int outq_flush(struct outq *q);

/* Frees this thread's idle batches; call when a thread ends. */
void outq_thread_cleanup(void);

#endif
