/* SPDX-License-Identifier: MIT */
#include "test/fuzz/proxy_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int sluice_main(int argc, char **argv);

#define HEAD_MAX (256 * 1024)
#define IO_TIMEOUT_MS 10000 /* far above every timeout of the conf below: past it, sluice hung */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *answer; /* what the upstream sends, under lock */
static size_t answer_len;
static int sluice_port;

/* poll for input up to ms, through the EINTRs libFuzzer's SIGALRM (-timeout)
 * causes in every thread: > 0 readable, 0 timed out */
static int wait_readable(int fd, int ms)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, ms);
        if (rc >= 0 || errno != EINTR)
            return rc;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int spent = (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        if (spent >= ms)
            return 0;
        ms -= spent;
        t0 = t1;
    }
}

static ssize_t read_retry(int fd, char *buf, size_t cap)
{
    ssize_t n;
    do
        n = read(fd, buf, cap);
    while (n < 0 && errno == EINTR);
    return n;
}
static int admin_port;

/* On a hang: what sluice's /stats says (or that the worker does not answer). */
static void dump_stats(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)admin_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    static const char q[] = "GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || write(fd, q, sizeof(q) - 1) < 0) {
        close(fd);
        return;
    }
    static char out[65536];
    size_t got = 0;
    while (got < sizeof(out) - 1 && wait_readable(fd, 2000) > 0) {
        ssize_t n = read_retry(fd, out + got, sizeof(out) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    fprintf(stderr, "fuzz harness: sluice /stats (%zu bytes): %.*s\n", got, (int)got, out);
}

static void die(const char *what, const char *data, size_t len)
{
    fprintf(stderr, "fuzz harness: %s: %.*s\n", what, (int)(len > 2000 ? 2000 : len), data);
    abort();
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die("listen", strerror(errno), strlen(strerror(errno)));
    *port = ntohs(a.sin_port);
    return fd;
}

static bool is_tchar(unsigned char ch)
{
    return ch > ' ' && ch < 0x7f && strchr("\"(),/:;<=>?@[\\]{}", ch) == NULL;
}

/* "METHOD /origin-form" or "OPTIONS *": one space, no control or space in the target. */
static bool target_ok(const char *l, size_t n)
{
    const char *sp = memchr(l, ' ', n);
    if (sp == NULL || sp == l || sp + 1 == l + n || (sp[1] != '/' && !(sp[1] == '*' && sp + 2 == l + n)))
        return false;
    for (const char *p = sp + 1; p < l + n; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

/* One head (through the blank line) as sluice wrote it: CRLF lines only, a
 * first line, fields "token: value" without controls.  Counts the fields
 * that decide framing. */
static void check_head(const char *h, size_t len, bool is_request)
{
    size_t i = 0, line = 0;
    unsigned hosts = 0, cls = 0, tes = 0;
    while (i < len) {
        const char *eol = memchr(h + i, '\n', len - i);
        if (eol == NULL || eol == h + i || eol[-1] != '\r')
            die("head line not ended by CRLF", h, len);
        size_t n = (size_t)(eol - 1 - (h + i));
        const char *l = h + i;
        if (memchr(l, '\r', n) != NULL)
            die("bare CR in a head", h, len);
        if (n == 0)
            break;
        if (line == 0) {
            if (is_request ? (n < 14 || memcmp(l + n - 9, " HTTP/1.1", 9) != 0 || !target_ok(l, n - 9))
                           : (n < 12 || memcmp(l, "HTTP/1.1 ", 9) != 0))
                die("first line", h, len);
        } else {
            size_t k = 0;
            while (k < n && l[k] != ':')
                if (!is_tchar((unsigned char)l[k++]))
                    die("field name", h, len);
            if (k == 0 || k == n)
                die("field line", h, len);
            for (size_t j = k + 1; j < n; j++)
                if (((unsigned char)l[j] < ' ' && l[j] != '\t') || l[j] == 0x7f)
                    die("control character in a value", h, len);
            hosts += k == 4 && strncasecmp(l, "host", 4) == 0;
            cls += k == 14 && strncasecmp(l, "content-length", 14) == 0;
            tes += k == 17 && strncasecmp(l, "transfer-encoding", 17) == 0;
        }
        line++;
        i = (size_t)(eol + 1 - h);
    }
    if (cls > 1 || (cls && tes) || tes > 1 || (is_request && hosts != 1))
        die("framing fields", h, len);
}

static ssize_t read_head(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        if (wait_readable(fd, IO_TIMEOUT_MS) <= 0)
            return -1;
        ssize_t n = read_retry(fd, buf + got, cap - got);
        if (n <= 0)
            return (ssize_t)got;
        got += (size_t)n;
        if (memmem(buf, got, "\r\n\r\n", 4) != NULL)
            return (ssize_t)got;
    }
    return (ssize_t)got;
}

/* One upstream connection, in its own thread: a connection sluice opens
 * and leaves silent (a pooled one) must not hold up the next. */
static void *upstream_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char *buf = malloc(HEAD_MAX);
    ssize_t n = buf != NULL ? read_head(fd, buf, HEAD_MAX) : -1;
    const char *end = n > 0 ? memmem(buf, (size_t)n, "\r\n\r\n", 4) : NULL;
    if (end != NULL)
        check_head(buf, (size_t)(end + 4 - buf), true);
    if (n > 0) {
        pthread_mutex_lock(&lock);
        if (answer_len > 0 && write(fd, answer, answer_len) < 0) {
            /* sluice gave up on this connection: nothing to check */
        }
        pthread_mutex_unlock(&lock);
    }
    free(buf);
    close(fd);
    return NULL;
}

static void *upstream_main(void *arg)
{
    int lfd = *(int *)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        pthread_t t;
        if (fd >= 0 && pthread_create(&t, NULL, upstream_conn, (void *)(intptr_t)fd) == 0)
            pthread_detach(t);
        else if (fd >= 0)
            close(fd);
    }
    return NULL;
}

static void *sluice_thread(void *arg)
{
    char *argv[] = {"sluice", "-c", arg, NULL};
    exit(sluice_main(3, argv));
}

void fuzz_proxy_start(void)
{
    if (sluice_port != 0)
        return;
    static int up_fd;
    int up_port;
    up_fd = listen_any(&up_port);
    int probe = listen_any(&sluice_port);
    close(probe);
    probe = listen_any(&admin_port);
    close(probe);
    static char path[] = "/tmp/sluice-fuzz-XXXXXX";
    int cfd = mkstemp(path);
    FILE *f = cfd >= 0 ? fdopen(cfd, "w") : NULL;
    if (f == NULL)
        die("conf", path, strlen(path));
    fprintf(f,
            "workers 1;\nerror_log stderr warn;\nadmin { listen 127.0.0.1:%d; }\n"
            "cache c { memory 1m; max_object 64k; }\n"
            "upstream u { server 127.0.0.1:%d; keepalive 4; connect_timeout 1s; header_timeout 2s; "
            "idle_timeout 2s; }\n"
            "server {\n listen 127.0.0.1:%d;\n server_name a.test *.b.test;\n"
            " client_header_timeout 2s; client_body_timeout 2s; keepalive_timeout 2s; send_timeout 2s;\n"
            " max_header_size 4k; max_headers 40; max_uri_size 1k; max_body_size 64k;\n"
            " route / { upstream u; set_header X-Set v; remove_header Cookie; remove_response_header Server; }\n"
            " route /c/ { upstream u; cache c { ttl 10s; stale_if_error 10s; key method,path,header:X-K; } }\n"
            " route /j/ { upstream u; cache c { ttl_from json:data.status done=1m; } }\n"
            "}\n"
            "server {\n listen 127.0.0.1:%d;\n server_name other.test;\n process_time_header off;\n"
            " route /o/ { upstream u; set_response_header X-R r; }\n}\n",
            admin_port, up_port, sluice_port, sluice_port);
    fclose(f);
    pthread_t t;
    pthread_create(&t, NULL, upstream_main, &up_fd);
    pthread_create(&t, NULL, sluice_thread, path);
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sluice_port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
        close(fd);
        if (rc == 0)
            return;
        usleep(10000);
    }
    die("sluice did not start", path, strlen(path));
}

void fuzz_proxy_exchange(const char *req, size_t req_len, const char *resp, size_t resp_len)
{
    pthread_mutex_lock(&lock);
    free(answer);
    answer = malloc(resp_len ? resp_len : 1);
    memcpy(answer, resp, resp_len);
    answer_len = resp_len;
    pthread_mutex_unlock(&lock);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sluice_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        die("connect to sluice", strerror(errno), strlen(strerror(errno)));
    /* sluice may answer and close before reading everything: a reset is fine */
    size_t off = 0;
    while (off < req_len) {
        ssize_t n = send(fd, req + off, req_len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    static char buf[1 << 20];
    size_t got = 0;
    for (;;) {
        if (wait_readable(fd, IO_TIMEOUT_MS) <= 0) {
            fprintf(stderr, "fuzz harness: %zu response bytes so far: %.*s\n", got, (int)(got > 500 ? 500 : got), buf);
            struct sockaddr_in me = {0}, peer = {0};
            socklen_t l1 = sizeof(me), l2 = sizeof(peer);
            int r1 = getsockname(fd, (struct sockaddr *)&me, &l1), r2 = getpeername(fd, (struct sockaddr *)&peer, &l2);
            fprintf(stderr, "fuzz harness: fd %d local %d (%d) peer %d (%d), sluice %d upstream-side?\n", fd,
                    ntohs(me.sin_port), r1, ntohs(peer.sin_port), r2, sluice_port);
            dump_stats();
            die("sluice did not finish the exchange", req, req_len);
        }
        ssize_t n = read_retry(fd, buf + got, sizeof(buf) - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == sizeof(buf))
            got = 0; /* only the first head is checked */
    }
    close(fd);
    const char *end = got > 0 ? memmem(buf, got, "\r\n\r\n", 4) : NULL;
    if (end != NULL && memcmp(buf, "HTTP/1.1 ", 9) == 0)
        check_head(buf, (size_t)(end + 4 - buf), false);
}
