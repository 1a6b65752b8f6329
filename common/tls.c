/* SPDX-License-Identifier: MIT */
#include "common/tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common/outq.h"

/* TLS 1.3 suites stay OpenSSL's; TLS 1.2 gets forward secrecy and AEAD only. */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
#define TLS_RECORD 16384

static const unsigned char alpn_http11[] = "\x08http/1.1";

/* Ciphertext waiting to be written, in buf blocks. */
struct cipher {
    struct buf *blk;
    size_t len;
};

struct tls {
    SSL *ssl;
    struct outq *out;
    /* the read window: what this read brought and OpenSSL has not taken */
    const char *in;
    size_t in_len;
    /* ciphertext written by OpenSSL, oldest first, not yet taken by outq */
    struct cipher *wq;
    size_t wq_head, wq_n, wq_cap, wq_bytes;
    tls_session_cb session_cb;
    void *session_arg;
    bool is_ready;
    bool is_failed;
    bool is_peer_closed;
    bool has_input; /* a byte came: a close before it is no TLS failure on a listener */
    char err[192];
};

static int ex_index = -1;
static BIO_METHOD *bio_method;

/* Plaintext gathered into full records during one flush (a flush never
 * yields, so one buffer per thread serves every connection). */
static _Thread_local char stage[TLS_RECORD];
static _Thread_local size_t stage_len;
static _Thread_local char scratch[TLS_READ_MAX];

/* The connection's BIO, both ways, instead of memory BIOs: reads come
 * straight from the read buffer (OpenSSL keeps a partial record in its own
 * buffer, released when empty), writes go straight into buf blocks that outq
 * sends, so an idle connection holds no grown buffer and no byte is copied
 * an extra time. */
static int bio_read(BIO *b, char *out, int cap)
{
    struct tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)cap < t->in_len ? (size_t)cap : t->in_len;
    memcpy(out, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static int bio_write(BIO *b, const char *p, int len)
{
    struct tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t left = (size_t)len;
    while (left > 0) {
        struct cipher *last = t->wq_n > 0 ? &t->wq[t->wq_head + t->wq_n - 1] : NULL;
        if (last == NULL || last->len == BUF_SIZE) {
            if (t->wq_head + t->wq_n == t->wq_cap) {
                if (t->wq_head > 0) {
                    memmove(t->wq, t->wq + t->wq_head, t->wq_n * sizeof(*t->wq));
                    t->wq_head = 0;
                } else {
                    size_t cap = t->wq_cap ? t->wq_cap * 2 : 4;
                    struct cipher *wq = realloc(t->wq, cap * sizeof(*wq));
                    if (wq == NULL)
                        return -1;
                    t->wq = wq;
                    t->wq_cap = cap;
                }
            }
            last = &t->wq[t->wq_head + t->wq_n++];
            last->blk = buf_get();
            last->len = 0;
        }
        size_t n = BUF_SIZE - last->len < left ? BUF_SIZE - last->len : left;
        memcpy(last->blk->data + last->len, p, n);
        last->len += n;
        t->wq_bytes += n;
        p += n;
        left -= n;
    }
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (long)t->in_len;
    case BIO_CTRL_WPENDING:
        return (long)t->wq_bytes;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

void tls_global_init(void)
{
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sluice");
    if (bio_method == NULL)
        abort();
    BIO_meth_set_read(bio_method, bio_read);
    BIO_meth_set_write(bio_method, bio_write);
    BIO_meth_set_ctrl(bio_method, bio_ctrl);
    BIO_meth_set_create(bio_method, bio_create);
}

/* The last OpenSSL error as text, and the queue cleared.  A system error
 * anywhere in the queue wins: "No such file or directory" says more than the
 * "system lib" stacked on it. */
static void openssl_reason(char *err, size_t errlen, const char *what)
{
    const char *r = NULL;
    unsigned long e;
    int sys = 0;
    while ((e = ERR_get_error()) != 0) {
        if (ERR_SYSTEM_ERROR(e))
            sys = ERR_GET_REASON(e);
        else
            r = ERR_reason_error_string(e);
    }
    if (sys != 0)
        r = strerror(sys);
    snprintf(err, errlen, "%s%s%s", what, r ? ": " : "", r ? r : "");
}

/* ---- contexts ---- */

/* The key of cert_file; a key for another certificate is named as such
 * (OpenSSL says only "key values mismatch"). */
static int load_key(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *what, size_t cap)
{
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) == 1 &&
        SSL_CTX_check_private_key(ctx) == 1)
        return 0;
    int reason = ERR_GET_REASON(ERR_peek_last_error());
    if (reason == X509_R_KEY_VALUES_MISMATCH || reason == SSL_R_PRIVATE_KEY_MISMATCH) {
        ERR_clear_error();
        snprintf(what, cap, "key %s does not match certificate %s", key_file, cert_file);
    } else {
        snprintf(what, cap, "cannot load key %s", key_file);
    }
    return -1;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg)
{
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = o;
        return SSL_TLSEXT_ERR_OK;
    }
    /* h2 only: go on without ALPN rather than fail the handshake */
    return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *ctx_new(const SSL_METHOD *method, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (ctx == NULL) {
        openssl_reason(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* an idle keep-alive connection gives back its record buffers */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        openssl_reason(err, errlen, "cannot set the TLS 1.2 ciphers");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *tls_server_ctx_create(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = ctx_new(TLS_server_method(), err, errlen);
    if (ctx == NULL)
        return NULL;
    char what[512];
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(what, sizeof(what), "cannot load certificate %s", cert_file);
        goto fail;
    }
    if (load_key(ctx, cert_file, key_file, what, sizeof(what)) != 0)
        goto fail;
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    /* tickets carry the session: no per-process server cache to share or lock */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
fail:
    openssl_reason(err, errlen, what);
    SSL_CTX_free(ctx);
    return NULL;
}

static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct tls *t = SSL_get_ex_data(ssl, ex_index);
    if (t == NULL || t->session_cb == NULL)
        return 0;
    t->session_cb(t->session_arg, sess);
    return 1;
}

SSL_CTX *tls_client_ctx_create(bool verify, const char *ca_file, const char *cert_file, const char *key_file,
                               char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = ctx_new(TLS_client_method(), err, errlen);
    if (ctx == NULL)
        return NULL;
    char what[512];
    if (verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        /* the system store as one file read now: its directory form would be
         * read lazily, during a handshake, on a worker */
        const char *file = ca_file;
        if (file == NULL)
            file = getenv(X509_get_default_cert_file_env());
        if (file == NULL)
            file = X509_get_default_cert_file();
        if (SSL_CTX_load_verify_locations(ctx, file, NULL) != 1) {
            snprintf(what, sizeof(what), "cannot load %s %s", ca_file ? "CA file" : "the system CA store",
                     file);
            goto fail;
        }
    }
    if (cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
            snprintf(what, sizeof(what), "cannot load certificate %s", cert_file);
            goto fail;
        }
        if (load_key(ctx, cert_file, key_file, what, sizeof(what)) != 0)
            goto fail;
    }
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1);
    /* sessions go to the caller (one per upstream server per worker), not to
     * a cache inside the context that every worker would share */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    return ctx;
fail:
    openssl_reason(err, errlen, what);
    SSL_CTX_free(ctx);
    return NULL;
}

static bool sni_matches(const char *pattern, const char *name)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        size_t pl = strlen(pattern + 1), nl = strlen(name);
        return nl > pl && strcasecmp(name + nl - pl, pattern + 1) == 0;
    }
    return strcasecmp(pattern, name) == 0;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    const struct tls_sni *sni = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < sni->n; i++) {
        if (sni_matches(sni->v[i].name, name)) {
            if (sni->v[i].ctx != SSL_get_SSL_CTX(ssl))
                SSL_set_SSL_CTX(ssl, sni->v[i].ctx);
            break;
        }
    }
    /* an unknown name gets the default certificate, as with no SNI */
    return SSL_TLSEXT_ERR_OK;
}

void tls_ctx_set_sni(SSL_CTX *ctx, const struct tls_sni *sni)
{
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, (void *)sni);
}

/* ---- connections ---- */

static struct tls *tls_new(SSL_CTX *ctx, struct outq *out)
{
    struct tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->ssl = SSL_new(ctx);
    BIO *bio = BIO_new(bio_method);
    if (t->ssl == NULL || bio == NULL) {
        SSL_free(t->ssl);
        BIO_free(bio);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    SSL_set_ex_data(t->ssl, ex_index, t);
    t->out = out;
    out->tls = t;
    return t;
}

struct tls *tls_server_create(SSL_CTX *ctx, struct outq *out)
{
    struct tls *t = tls_new(ctx, out);
    if (t != NULL)
        SSL_set_accept_state(t->ssl);
    return t;
}

struct tls *tls_client_create(SSL_CTX *ctx, struct outq *out, const char *sni, const char *verify_name,
                              SSL_SESSION *session, tls_session_cb cb, void *cb_arg)
{
    struct tls *t = tls_new(ctx, out);
    if (t == NULL)
        return NULL;
    SSL_set_connect_state(t->ssl);
    t->session_cb = cb;
    t->session_arg = cb_arg;
    if (sni != NULL)
        SSL_set_tlsext_host_name(t->ssl, sni);
    if (verify_name != NULL) {
        unsigned char addr[16];
        bool is_ip =
            inet_pton(AF_INET, verify_name, addr) == 1 || inet_pton(AF_INET6, verify_name, addr) == 1;
        X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
        if (is_ip)
            X509_VERIFY_PARAM_set1_ip_asc(param, verify_name);
        else
            SSL_set1_host(t->ssl, verify_name);
    }
    if (session != NULL)
        SSL_set_session(t->ssl, session);
    ERR_clear_error();
    return t;
}

void tls_destroy(struct tls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees the BIO */
    for (size_t i = 0; i < t->wq_n; i++)
        buf_unref(t->wq[t->wq_head + i].blk);
    free(t->wq);
    free(t);
}

bool tls_is_ready(const struct tls *t)
{
    return t->is_ready;
}

bool tls_session_reused(const struct tls *t)
{
    return SSL_session_reused(t->ssl) == 1;
}

SSL_CTX *tls_ctx(const struct tls *t)
{
    return SSL_get_SSL_CTX(t->ssl);
}

const char *tls_error(const struct tls *t)
{
    return t->is_failed ? t->err : NULL;
}

void tls_alpn(const struct tls *t, char *dst, size_t cap)
{
    const unsigned char *p;
    unsigned len;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    if (len >= cap)
        len = cap ? (unsigned)cap - 1 : 0;
    if (cap > 0) {
        memcpy(dst, p, len);
        dst[len] = '\0';
    }
}

/* Records why the connection failed: the verify result says more than the
 * error queue ("certificate verify failed" alone names no cause). */
static void fail(struct tls *t, int ssl_error)
{
    t->is_failed = true;
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    long vr = SSL_get_verify_result(t->ssl);
    if (vr != X509_V_OK)
        snprintf(t->err, sizeof(t->err), "%s: %s", r ? r : "certificate verify failed",
                 X509_verify_cert_error_string(vr));
    else if (r != NULL)
        snprintf(t->err, sizeof(t->err), "%s", r);
    else if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN)
        snprintf(t->err, sizeof(t->err), "connection closed during the handshake");
    else
        snprintf(t->err, sizeof(t->err), "TLS error %d", ssl_error);
    ERR_clear_error();
}

int tls_handshake_start(struct tls *t)
{
    int r = SSL_do_handshake(t->ssl);
    int e = SSL_get_error(t->ssl, r);
    if (r != 1 && e != SSL_ERROR_WANT_READ) {
        fail(t, e);
        outq_flush(t->out);
        return UV_EPROTO;
    }
    return outq_flush(t->out);
}

void tls_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    *b = uv_buf_init(scratch, sizeof(scratch));
}

ssize_t tls_read(struct tls *t, ssize_t nread, const uv_buf_t *in, uv_buf_t *plain)
{
    if (t->is_failed)
        return UV_EPROTO;
    if (nread < 0) {
        /* a client that connects and leaves (a port probe) did not fail TLS */
        if (!t->is_ready && (t->has_input || !SSL_is_server(t->ssl))) {
            snprintf(t->err, sizeof(t->err), "connection closed during the handshake");
            t->is_failed = true;
            return UV_EPROTO;
        }
        return nread;
    }
    if (t->is_peer_closed)
        return UV_EOF;
    if (nread == 0)
        return 0;
    t->has_input = true;
    t->in = in->base;
    t->in_len = (size_t)nread;
    ERR_clear_error();
    if (!t->is_ready) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e != SSL_ERROR_WANT_READ)
                fail(t, e);
            t->in_len = 0;
            outq_flush(t->out); /* the next flight, or the alert */
            return t->is_failed ? UV_EPROTO : 0;
        }
        t->is_ready = true;
    }
    struct buf *blk = buf_get();
    size_t n = 0;
    for (;;) {
        if (n == BUF_SIZE) {
            /* cannot happen with reads of TLS_READ_MAX: fail rather than stall */
            snprintf(t->err, sizeof(t->err), "record overflow");
            t->is_failed = true;
            break;
        }
        int r = SSL_read(t->ssl, blk->data + n, (int)(BUF_SIZE - n));
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->is_peer_closed = true;
            break;
        }
        fail(t, e);
        break;
    }
    t->in_len = 0; /* what is left after close_notify or an error is dropped */
    /* a handshake's last flight, session tickets, alerts */
    if (t->wq_bytes > 0)
        outq_flush(t->out);
    if (t->is_failed) {
        buf_unref(blk);
        return UV_EPROTO;
    }
    if (n == 0) {
        buf_unref(blk);
        return t->is_peer_closed ? UV_EOF : 0;
    }
    *plain = uv_buf_init(blk->data, (unsigned)n);
    return (ssize_t)n;
}

bool tls_peer_closed(const struct tls *t)
{
    return t->is_peer_closed;
}

void tls_shutdown(struct tls *t)
{
    if (!t->is_ready || t->is_failed)
        return;
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    outq_flush(t->out);
}

/* ---- encryption for outq ---- */

static int seal_record(struct tls *t, const char *p, size_t len)
{
    ERR_clear_error();
    int r = SSL_write(t->ssl, p, (int)len);
    if (r <= 0) {
        fail(t, SSL_get_error(t->ssl, r));
        return UV_EPROTO;
    }
    return 0;
}

int tls_seal(struct tls *t, const char *p, size_t len)
{
    if (t->is_failed || !t->is_ready)
        return UV_EPROTO;
    while (len > 0) {
        if (stage_len == 0 && len >= TLS_RECORD) {
            /* a full record straight from the caller's bytes */
            if (seal_record(t, p, TLS_RECORD) != 0)
                return UV_EPROTO;
            p += TLS_RECORD;
            len -= TLS_RECORD;
            continue;
        }
        size_t n = TLS_RECORD - stage_len < len ? TLS_RECORD - stage_len : len;
        memcpy(stage + stage_len, p, n);
        stage_len += n;
        p += n;
        len -= n;
        if (stage_len == TLS_RECORD) {
            stage_len = 0;
            if (seal_record(t, stage, TLS_RECORD) != 0)
                return UV_EPROTO;
        }
    }
    return 0;
}

int tls_seal_end(struct tls *t)
{
    size_t n = stage_len;
    stage_len = 0;
    if (n == 0)
        return 0;
    if (t->is_failed)
        return UV_EPROTO;
    return seal_record(t, stage, n);
}

struct buf *tls_cipher_take(struct tls *t, size_t *len)
{
    if (t->wq_n == 0)
        return NULL;
    struct cipher *c = &t->wq[t->wq_head];
    t->wq_head++;
    t->wq_n--;
    if (t->wq_n == 0)
        t->wq_head = 0;
    t->wq_bytes -= c->len;
    *len = c->len;
    return c->blk;
}
