/* SPDX-License-Identifier: MIT */
#include <errno.h>

#include "proxy/headers.h"
#include "test/unit/test.h"

/* Loads "Name: value" pairs into a head the way llhttp delivers them, each
 * piece split in two to exercise reassembly. */
static void load(struct head *h, const char *target, const char *const *fields)
{
    head_init(h);
    head_start(h, 16384, 100);
    size_t tl = strlen(target);
    ASSERT_EQ(head_add(h, HEAD_FIRST, target, tl / 2), 0);
    ASSERT_EQ(head_add(h, HEAD_FIRST, target + tl / 2, tl - tl / 2), 0);
    for (; *fields != NULL; fields += 2) {
        size_t nl = strlen(fields[0]), vl = strlen(fields[1]);
        ASSERT_EQ(head_add(h, HEAD_NAME, fields[0], nl / 2), 0);
        ASSERT_EQ(head_add(h, HEAD_NAME, fields[0] + nl / 2, nl - nl / 2), 0);
        if (vl > 0) {
            ASSERT_EQ(head_add(h, HEAD_VALUE, fields[1], vl / 2 + 1), 0);
            if (vl > vl / 2 + 1)
                ASSERT_EQ(head_add(h, HEAD_VALUE, fields[1] + vl / 2 + 1, vl - vl / 2 - 1), 0);
        }
    }
}

static size_t build_req(struct head *h, char *out, size_t cap, const struct conf_header_op *ops, size_t nops)
{
    struct forward_head fh = {.method = "GET", .host = "example.com", .client_ip = "10.1.2.3", .proto = "http",
                              .via = true, .ops = ops, .nops = nops};
    size_t n = head_build_request(h, &fh, out, cap - 1);
    out[n] = '\0';
    return n;
}

TEST(reassembles_pieces_and_gets_values)
{
    struct head h;
    load(&h, "/a/b?x=1", (const char *const[]){"Host", "example.com", "X-Thing", "abc  ", NULL});
    ASSERT_EQ(h.n, 2);
    char v[64];
    ASSERT(head_get(&h, "x-thing", v, sizeof(v)));
    ASSERT_STR_EQ(v, "abc");
    ASSERT(!head_get(&h, "absent", v, sizeof(v)));
    ASSERT_EQ(head_path_len(&h), 4);
    head_dispose(&h);
}

TEST(size_and_count_limits)
{
    struct head h;
    head_init(&h);
    head_start(&h, 10, 1);
    ASSERT_EQ(head_add(&h, HEAD_NAME, "abc", 3), 0);
    ASSERT_EQ(head_add(&h, HEAD_VALUE, "defg", 4), 0);
    ASSERT_EQ(head_add(&h, HEAD_NAME, "x", 1), -E2BIG);
    ASSERT_EQ(head_add(&h, HEAD_VALUE, "0123456789", 10), -ENOSPC);
    head_dispose(&h);
}

TEST(request_drops_hop_by_hop_and_connection_named)
{
    struct head h;
    load(&h, "/p", (const char *const[]){"Host", "example.com", "Connection", "keep-alive, X-Secret",
                                         "Keep-Alive", "timeout=5", "X-Secret", "s", "TE", "trailers",
                                         "Proxy-Connection", "x", "Upgrade", "h2c", "Expect", "100-continue",
                                         "Accept", "*/*", NULL});
    char out[4096];
    ASSERT_GT(build_req(&h, out, sizeof(out), NULL, 0), 0);
    ASSERT(strncmp(out, "GET /p HTTP/1.1\r\nHost: example.com\r\n", 36) == 0);
    ASSERT_CONTAINS(out, "Accept: */*\r\n");
    ASSERT(strstr(out, "X-Secret") == NULL);
    ASSERT(strstr(out, "Keep-Alive") == NULL);
    ASSERT(strstr(out, "TE:") == NULL);
    ASSERT(strstr(out, "Upgrade") == NULL);
    ASSERT(strstr(out, "Expect") == NULL);
    ASSERT(strstr(out, "Connection") == NULL);
    ASSERT_CONTAINS(out, "X-Forwarded-For: 10.1.2.3\r\n");
    ASSERT_CONTAINS(out, "X-Forwarded-Proto: http\r\n");
    ASSERT_CONTAINS(out, "X-Forwarded-Host: example.com\r\n");
    ASSERT_CONTAINS(out, "Via: 1.1 sluice\r\n");
    ASSERT(strcmp(out + strlen(out) - 4, "\r\n\r\n") == 0);
    head_dispose(&h);
}

TEST(request_appends_forwarded_for_and_overrides_proto)
{
    struct head h;
    load(&h, "/", (const char *const[]){"Host", "example.com", "X-Forwarded-For", "1.1.1.1", "X-Forwarded-Proto",
                                        "https", NULL});
    char out[4096];
    build_req(&h, out, sizeof(out), NULL, 0);
    ASSERT_CONTAINS(out, "X-Forwarded-For: 1.1.1.1, 10.1.2.3\r\n");
    ASSERT(strstr(out, "https") == NULL);
    head_dispose(&h);
}

TEST(request_header_ops_set_and_remove)
{
    struct head h;
    load(&h, "/", (const char *const[]){"Host", "example.com", "Authorization", "client", "Cookie", "c=1", NULL});
    struct conf_header_op ops[] = {{"Authorization", "Bearer server-key"}, {"cookie", NULL}, {"Host", "api.up"}};
    char out[4096];
    build_req(&h, out, sizeof(out), ops, 3);
    ASSERT_CONTAINS(out, "Authorization: Bearer server-key\r\n");
    ASSERT(strstr(out, "client") == NULL);
    ASSERT(strstr(out, "c=1") == NULL);
    ASSERT_CONTAINS(out, "Host: api.up\r\n");
    ASSERT(strstr(out, "\r\nHost: example.com") == NULL);
    head_dispose(&h);
}

TEST(request_too_large_for_buffer)
{
    struct head h;
    load(&h, "/", (const char *const[]){"Host", "example.com", NULL});
    char out[32];
    struct forward_head fh = {.method = "GET", .host = "example.com", .client_ip = "1.2.3.4", .proto = "http"};
    ASSERT_EQ(head_build_request(&h, &fh, out, sizeof(out)), 0);
    head_dispose(&h);
}

TEST(host_rules)
{
    struct head h;
    char host[256], reason[128];
    load(&h, "/", (const char *const[]){"Host", "Example.COM:8080", NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), 0);
    ASSERT_STR_EQ(host, "example.com:8080");
    head_dispose(&h);

    load(&h, "/", (const char *const[]){"Host", "a", "Host", "b", NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), -1);
    ASSERT_STR_EQ(reason, "more than one Host header");
    head_dispose(&h);

    load(&h, "/", (const char *const[]){NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), -1);
    ASSERT_STR_EQ(reason, "missing Host header");
    ASSERT_EQ(head_request_host(&h, true, host, sizeof(host), reason, sizeof(reason)), 0);
    head_dispose(&h);

    load(&h, "/", (const char *const[]){"Host", "a b", NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), -1);
    ASSERT_STR_EQ(reason, "invalid Host header");
    head_dispose(&h);

    load(&h, "http://other.com/x", (const char *const[]){"Host", "example.com", NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), -1);
    ASSERT_STR_EQ(reason, "Host header disagrees with the absolute-form target");
    head_dispose(&h);

    load(&h, "example.com:80", (const char *const[]){"Host", "example.com", NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), -1);
    ASSERT_STR_EQ(reason, "invalid request target");
    head_dispose(&h);
}

TEST(absolute_form_becomes_origin_form)
{
    struct head h;
    char host[256], reason[128], out[4096];
    load(&h, "http://Example.com/x/y?q=1", (const char *const[]){"Host", "example.com", NULL});
    ASSERT_EQ(head_request_host(&h, false, host, sizeof(host), reason, sizeof(reason)), 0);
    ASSERT_EQ(head_path_len(&h), 4);
    build_req(&h, out, sizeof(out), NULL, 0);
    ASSERT(strncmp(out, "GET /x/y?q=1 HTTP/1.1\r\n", 23) == 0);
    head_dispose(&h);

    load(&h, "http://example.com?q", (const char *const[]){NULL});
    ASSERT_EQ(head_request_host(&h, true, host, sizeof(host), reason, sizeof(reason)), 0);
    ASSERT_STR_EQ(host, "example.com");
    build_req(&h, out, sizeof(out), NULL, 0);
    ASSERT(strncmp(out, "GET /?q HTTP/1.1\r\n", 18) == 0);
    head_dispose(&h);
}

TEST(response_strips_hop_by_hop_and_reframes)
{
    struct head h;
    load(&h, "OK", (const char *const[]){"Content-Type", "text/plain", "Transfer-Encoding", "chunked",
                                        "Connection", "close, X-Hop", "X-Hop", "1", "Keep-Alive", "x",
                                        "Server", "origin", NULL});
    struct conf_header_op ops[] = {{"Server", NULL}, {"X-Added", "yes"}};
    struct reply_head rh = {.status = 200, .ops = ops, .nops = 2, .via = true, .chunked = true,
                            .extra = "X-Process-Time: 0.100ms\r\n"};
    char out[4096];
    size_t n = head_build_response(&h, &rh, out, sizeof(out) - 1);
    out[n] = '\0';
    ASSERT(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    ASSERT_CONTAINS(out, "Content-Type: text/plain\r\n");
    ASSERT_CONTAINS(out, "Transfer-Encoding: chunked\r\n");
    ASSERT_CONTAINS(out, "X-Added: yes\r\n");
    ASSERT_CONTAINS(out, "X-Process-Time: 0.100ms\r\n");
    ASSERT(strstr(out, "X-Hop") == NULL);
    ASSERT(strstr(out, "Server") == NULL);
    ASSERT(strstr(out, "Connection") == NULL);
    ASSERT(strstr(out, "Keep-Alive") == NULL);
    head_dispose(&h);
}

TEST(response_upgrade_keeps_upgrade)
{
    struct head h;
    load(&h, "Switching Protocols", (const char *const[]){"Upgrade", "websocket", "Connection", "Upgrade", NULL});
    struct reply_head rh = {.status = 101, .upgrade = true};
    char out[4096];
    size_t n = head_build_response(&h, &rh, out, sizeof(out) - 1);
    out[n] = '\0';
    ASSERT_CONTAINS(out, "Upgrade: websocket\r\n");
    ASSERT_CONTAINS(out, "Connection: upgrade\r\n");
    head_dispose(&h);
}

TEST(request_id_replaces_the_clients_both_ways)
{
    struct head h;
    load(&h, "/x", (const char *const[]){"X-Request-Id", "from-client", "Accept", "*/*", NULL});
    struct forward_head fh = {.method = "GET", .host = "example.com", .client_ip = "10.1.2.3", .proto = "http",
                              .request_id = "ours-1"};
    char out[4096];
    size_t n = head_build_request(&h, &fh, out, sizeof(out) - 1);
    out[n] = '\0';
    ASSERT_CONTAINS(out, "X-Request-Id: ours-1\r\n");
    ASSERT(strstr(out, "from-client") == NULL);
    ASSERT_CONTAINS(out, "Accept: */*\r\n");
    /* without an id of ours the client's passes through */
    fh.request_id = NULL;
    n = head_build_request(&h, &fh, out, sizeof(out) - 1);
    out[n] = '\0';
    ASSERT_CONTAINS(out, "X-Request-Id: from-client\r\n");
    head_dispose(&h);

    load(&h, "OK", (const char *const[]){"X-Request-Id", "upstream-echo", "Content-Length", "0", NULL});
    struct reply_head rh = {.status = 200, .drop_request_id = true, .extra = "X-Request-Id: ours-1\r\n"};
    n = head_build_response(&h, &rh, out, sizeof(out) - 1);
    out[n] = '\0';
    ASSERT_CONTAINS(out, "X-Request-Id: ours-1\r\n");
    ASSERT(strstr(out, "upstream-echo") == NULL);
    head_dispose(&h);
}

TEST_MAIN()
