/* SPDX-License-Identifier: MIT */
/* The TLS engine over a socketpair on one loop: both ends are common/tls with
 * outq, certificates are made by the openssl CLI when the binary starts. */
#include "common/tls.h"

#include <sys/socket.h>

#include "common/outq.h"

#include "test.h"

#define PAYLOAD (1024 * 1024 + 12345)

static char dir[] = "/tmp/sluice-tls-test.XXXXXX";

static const char *path(const char *name)
{
    static char buf[4][256];
    static int i;
    char *p = buf[i++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void cleanup(void)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* A CA, a certificate it signed for localhost and 127.0.0.1, and another key. */
__attribute__((constructor)) static void make_certs(void)
{
    if (mkdtemp(dir) == NULL)
        abort();
    atexit(cleanup);
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cd %s && exec >/dev/null 2>&1 && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt "
             "-days 2 -subj /CN=ca && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout s.key -out s.csr "
             "-subj /CN=localhost && "
             "echo subjectAltName=DNS:localhost,IP:127.0.0.1 > s.ext && "
             "openssl x509 -req -in s.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out s.crt -days 2 "
             "-extfile s.ext && "
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key",
             dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "openssl could not make the test certificates\n");
        abort();
    }
    tls_global_init();
}

static char pattern_byte(size_t i)
{
    return (char)('a' + i % 23);
}

struct end {
    uv_pipe_t pipe;
    struct outq out;
    struct tls *tls;
    bool is_server;
    size_t got;        /* plaintext bytes received */
    bool is_eof;
    int err;
    SSL_SESSION *session; /* the client's, from the callback */
};

static struct end server, client;

static void on_session(void *arg, SSL_SESSION *sess)
{
    struct end *e = arg;
    SSL_SESSION_free(e->session);
    e->session = sess;
}

static void finish(struct end *e)
{
    uv_read_stop((uv_stream_t *)&e->pipe);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct end *e = s->data;
    bool was_ready = tls_is_ready(e->tls);
    uv_buf_t plain;
    ssize_t n = tls_read(e->tls, nread, b, &plain);
    if (n < 0) {
        e->is_eof = n == UV_EOF;
        e->err = (int)n;
        if (e->is_eof)
            tls_shutdown(e->tls); /* answer close_notify, so the other end stops too */
        finish(e);
        return;
    }
    if (!e->is_server && !was_ready && tls_is_ready(e->tls)) {
        /* the client sends PAYLOAD bytes in pieces of every size */
        static char buf[70000];
        size_t sent = 0, piece = 1;
        while (sent < PAYLOAD) {
            size_t len = piece < PAYLOAD - sent ? piece : PAYLOAD - sent;
            for (size_t i = 0; i < len; i++)
                buf[i] = pattern_byte(sent + i);
            outq_add_copy(&e->out, buf, len);
            sent += len;
            piece = piece * 3 % 69997 + 1;
        }
        ASSERT_EQ(outq_flush(&e->out), 0);
    }
    if (n == 0)
        return;
    struct buf *blk = (struct buf *)(plain.base - offsetof(struct buf, data));
    ASSERT(n <= BUF_SIZE);
    for (ssize_t i = 0; i < n; i++)
        if (e->is_server && plain.base[i] != pattern_byte(e->got + (size_t)i))
            TEST_FAIL("byte %zu differs\n", e->got + (size_t)i);
    e->got += (size_t)n;
    buf_unref(blk);
    if (!e->is_server && tls_peer_closed(e->tls)) {
        e->is_eof = true;
        tls_shutdown(e->tls);
        finish(e);
    }
    if (e->is_server && e->got == PAYLOAD) {
        outq_add_copy(&e->out, "done", 4);
        ASSERT_EQ(outq_flush(&e->out), 0);
        tls_shutdown(e->tls);
    }
}

/* One connection over a socketpair until both ends stop. */
static void run_pair(SSL_CTX *sctx, SSL_CTX *cctx, const char *verify_name, SSL_SESSION *session)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    struct end *ends[2] = {&server, &client};
    SSL_SESSION *kept = client.session;
    memset(&server, 0, sizeof(server));
    memset(&client, 0, sizeof(client));
    client.session = kept;
    server.is_server = true;
    for (int i = 0; i < 2; i++) {
        struct end *e = ends[i];
        uv_pipe_init(&loop, &e->pipe, 0);
        ASSERT_EQ(uv_pipe_open(&e->pipe, fds[i]), 0);
        e->pipe.data = e;
        outq_init(&e->out, (uv_stream_t *)&e->pipe, NULL, e);
    }
    server.tls = tls_server_create(sctx, &server.out);
    client.tls = tls_client_create(cctx, &client.out, "localhost", verify_name, session, on_session, &client);
    ASSERT(server.tls != NULL && client.tls != NULL);
    for (int i = 0; i < 2; i++)
        ASSERT_EQ(uv_read_start((uv_stream_t *)&ends[i]->pipe, tls_alloc_cb, on_read), 0);
    ASSERT_EQ(tls_handshake_start(client.tls), 0);
    /* the loop ends when both ends stopped reading and the writes are done */
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 2; i++) {
        outq_dispose(&ends[i]->out);
        uv_close((uv_handle_t *)&ends[i]->pipe, NULL);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

static void free_ends(void)
{
    tls_destroy(server.tls);
    tls_destroy(client.tls);
    server.tls = client.tls = NULL;
}

static SSL_CTX *server_ctx(void)
{
    char err[512];
    SSL_CTX *ctx = tls_server_ctx_create(path("s.crt"), path("s.key"), err, sizeof(err));
    if (ctx == NULL)
        TEST_FAIL("%s\n", err);
    return ctx;
}

static SSL_CTX *client_ctx(void)
{
    char err[512];
    SSL_CTX *ctx = tls_client_ctx_create(true, path("ca.crt"), NULL, NULL, err, sizeof(err));
    if (ctx == NULL)
        TEST_FAIL("%s\n", err);
    return ctx;
}

TEST(a_mebibyte_through_and_close_notify)
{
    SSL_CTX *s = server_ctx(), *c = client_ctx();
    run_pair(s, c, "localhost", NULL);
    ASSERT_EQ(server.got, PAYLOAD);
    ASSERT_EQ(client.got, 4);
    ASSERT(client.is_eof); /* close_notify */
    char alpn[16];
    tls_alpn(client.tls, alpn, sizeof(alpn));
    ASSERT_STR_EQ(alpn, "http/1.1");
    ASSERT(!tls_session_reused(client.tls));
    free_ends();
    SSL_CTX_free(s);
    SSL_CTX_free(c);
}

TEST(session_resumed)
{
    SSL_CTX *s = server_ctx(), *c = client_ctx();
    run_pair(s, c, "127.0.0.1", NULL);
    ASSERT(client.session != NULL);
    free_ends();
    run_pair(s, c, "127.0.0.1", client.session);
    ASSERT_EQ(server.got, PAYLOAD);
    ASSERT(tls_session_reused(client.tls));
    free_ends();
    SSL_SESSION_free(client.session);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
}

TEST(hostname_mismatch_named)
{
    SSL_CTX *s = server_ctx(), *c = client_ctx();
    run_pair(s, c, "wrong.example", NULL);
    ASSERT_EQ(client.err, UV_EPROTO);
    ASSERT(tls_error(client.tls) != NULL);
    ASSERT_CONTAINS(tls_error(client.tls), "certificate verify failed: hostname mismatch");
    ASSERT_EQ(server.got, 0);
    free_ends();
    SSL_CTX_free(s);
    SSL_CTX_free(c);
}

TEST(context_errors_name_the_file)
{
    char err[512];
    ASSERT(tls_server_ctx_create(path("none.crt"), path("s.key"), err, sizeof(err)) == NULL);
    ASSERT_CONTAINS(err, "none.crt: No such file or directory");
    ASSERT(tls_server_ctx_create(path("s.crt"), path("other.key"), err, sizeof(err)) == NULL);
    ASSERT_CONTAINS(err, "other.key does not match certificate");
    ASSERT(tls_client_ctx_create(true, path("none.pem"), NULL, NULL, err, sizeof(err)) == NULL);
    ASSERT_CONTAINS(err, "cannot load CA file");
}

TEST_MAIN()
