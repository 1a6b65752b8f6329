/* SPDX-License-Identifier: MIT */
/*
 * tls: TLS over libuv streams with OpenSSL, for both sides of the proxy.
 *
 * Design: an SSL object over a BIO of our own (memory BIOs would grow to the
 * largest write and stay grown).  The stream carries ciphertext; everything
 * above it (the HTTP parsers, outq's callers) sees plaintext.  Reading: a read
 * lands in a per-thread scratch buffer sized so that the plaintext it
 * completes always fits one struct buf block (TLS_READ_MAX); OpenSSL reads it
 * from there, and SSL_read empties every complete record into one block that
 * goes to the connection's usual read handler.  So nothing decrypted is ever
 * held back: pausing the socket read pauses the plaintext too.  Writing: an
 * outq with a tls encrypts on flush (see outq.h): its pieces are gathered
 * into full 16 KiB records, whose ciphertext OpenSSL writes into buf blocks
 * that go out like any other batch, so outq_backlog still counts the bytes
 * the kernel refused.  Handshakes are driven by the reads; a handshake's own
 * output (and alerts) is flushed through the same outq.
 *
 * Contexts (SSL_CTX) are made on the main thread at conf load (certificates
 * and keys are read there, never on a worker) and are then only read, which
 * OpenSSL allows from any thread.  A struct tls belongs to one loop thread.
 */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "common/buf.h"

struct outq;
struct tls;

/* One read at most: with a partial record (at most 16 KiB + 256 bytes of
 * ciphertext) already inside OpenSSL, what a read completes still fits in one
 * block. */
#define TLS_READ_MAX (BUF_SIZE - 17 * 1024)

/* Once per process, before any other call (main thread). */
void tls_global_init(void);

/* ---- contexts (main thread) ---- */

/* A server context: TLS 1.2 and 1.3 only, TLS 1.2 limited to ECDHE with AEAD
 * ciphers, ALPN http/1.1 (a client that offers only other protocols gets no
 * ALPN, never a failure), session tickets on.  NULL on failure with a reason
 * in err. */
SSL_CTX *tls_server_ctx_create(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* A client context for upstream servers: ALPN http/1.1, peer verification
 * when verify (ca_file NULL = the system store, read now as one file), an optional client
 * certificate.  Sessions are handed to tls_session_cb. */
SSL_CTX *tls_client_ctx_create(bool verify, const char *ca_file, const char *cert_file, const char *key_file,
                               char *err, size_t errlen);

/* Certificates chosen by SNI on one address: name is exact ("a.example") or
 * a suffix ("*.example"), lowercase.  The first context is the default. */
struct tls_sni_entry {
    const char *name;
    SSL_CTX *ctx;
};
struct tls_sni {
    struct tls_sni_entry *v;
    size_t n;
};
/* Makes ctx pick its certificate from sni (which must outlive ctx). */
void tls_ctx_set_sni(SSL_CTX *ctx, const struct tls_sni *sni);

/* ---- connections (one loop thread) ---- */

/* Called with a new session the peer gave a client connection (ownership
 * passes to the callee). */
typedef void (*tls_session_cb)(void *arg, SSL_SESSION *sess);

/* A server-side connection writing through out (out->tls is set). */
struct tls *tls_server_create(SSL_CTX *ctx, struct outq *out);
/* A client-side connection: sni may be NULL; verify_name NULL = no host
 * check (an IP literal is checked as an address); session, if any, is
 * offered for resumption (not taken). */
struct tls *tls_client_create(SSL_CTX *ctx, struct outq *out, const char *sni, const char *verify_name,
                              SSL_SESSION *session, tls_session_cb cb, void *cb_arg);
/* Frees t; the outq must not flush through it afterwards. */
void tls_destroy(struct tls *t);

/* Client: sends the ClientHello.  0 or a negative errno. */
int tls_handshake_start(struct tls *t);
bool tls_is_ready(const struct tls *t);
bool tls_session_reused(const struct tls *t);
SSL_CTX *tls_ctx(const struct tls *t);
/* Why the connection failed ("certificate verify failed: hostname mismatch"),
 * or NULL while it has not. */
const char *tls_error(const struct tls *t);
/* The ALPN protocol agreed, "" if none. */
void tls_alpn(const struct tls *t, char *dst, size_t cap);

/* alloc_cb for a TLS stream: the per-thread scratch, TLS_READ_MAX bytes. */
void tls_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b);
/* Takes one read of the stream (as libuv gave it to a read_cb using
 * tls_alloc_cb).  Returns the plaintext length with *plain set to a struct
 * buf block's data (the caller owns that block's ref), 0 when there is
 * nothing for the caller (a handshake step, a partial record), UV_EOF when
 * the peer closed (close_notify or the socket's EOF), or UV_EPROTO (see
 * tls_error).  May flush the outq (handshake messages, alerts). */
ssize_t tls_read(struct tls *t, ssize_t nread, const uv_buf_t *in, uv_buf_t *plain);

/* The peer sent close_notify (a tls_read that returned its last data may
 * have seen it: the next read reports UV_EOF). */
bool tls_peer_closed(const struct tls *t);
/* Queues close_notify and flushes it. */
void tls_shutdown(struct tls *t);

/* ---- for outq ---- */

/* Encrypts len bytes (gathered into full records until tls_seal_end).
 * 0 or UV_EPROTO. */
int tls_seal(struct tls *t, const char *p, size_t len);
int tls_seal_end(struct tls *t);
/* The next block of ciphertext to write (the caller owns its ref), or NULL. */
struct buf *tls_cipher_take(struct tls *t, size_t *len);

#endif
