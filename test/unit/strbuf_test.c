/* SPDX-License-Identifier: MIT */
#include "common/strbuf.h"

#include "test/unit/test.h"

static char *json(const char *s)
{
    struct strbuf sb;
    strbuf_init(&sb);
    strbuf_json_string(&sb, s);
    return strbuf_release(&sb);
}

#define ASSERT_JSON(in, want)                                                                                \
    do {                                                                                                     \
        char *got_ = json(in);                                                                               \
        ASSERT_STR_EQ(got_, want);                                                                           \
        free(got_);                                                                                          \
    } while (0)

TEST(empty_and_release)
{
    struct strbuf sb;
    strbuf_init(&sb);
    ASSERT(sb.data == NULL);
    ASSERT_EQ(sb.len, 0);
    char *p = strbuf_release(&sb);
    ASSERT_STR_EQ(p, "");
    free(p);
    ASSERT(sb.data == NULL);

    strbuf_append(&sb, "", 0);
    ASSERT(sb.data != NULL);
    ASSERT_STR_EQ(sb.data, "");
    strbuf_dispose(&sb);
    ASSERT(sb.data == NULL);
    ASSERT_EQ(sb.cap, 0);
}

TEST(append_puts_grow)
{
    struct strbuf sb;
    strbuf_init(&sb);
    strbuf_puts(&sb, "ab");
    strbuf_append(&sb, "cdXX", 2);
    ASSERT_STR_EQ(sb.data, "abcd");
    ASSERT_EQ(sb.len, 4);
    for (int i = 0; i < 10000; i++)
        strbuf_append(&sb, "0123456789", 10);
    ASSERT_EQ(sb.len, 100004);
    ASSERT_EQ(strlen(sb.data), 100004);
    ASSERT_GT(sb.cap, sb.len);
    ASSERT(memcmp(sb.data + 100004 - 10, "0123456789", 10) == 0);
    /* Embedded NUL bytes are kept; len counts them. */
    strbuf_append(&sb, "x\0y", 3);
    ASSERT_EQ(sb.len, 100007);
    ASSERT_EQ(sb.data[100005], '\0');
    ASSERT_EQ(sb.data[100006], 'y');
    ASSERT_EQ(sb.data[100007], '\0');
    strbuf_dispose(&sb);
}

TEST(printf_small_and_large)
{
    struct strbuf sb;
    strbuf_init(&sb);
    strbuf_printf(&sb, "%d-%s", 42, "x");
    ASSERT_STR_EQ(sb.data, "42-x");
    /* Longer than the free space: the second vsnprintf pass. */
    char big[5000];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    strbuf_printf(&sb, "[%s]", big);
    ASSERT_EQ(sb.len, 4 + 2 + 4999);
    ASSERT_EQ(sb.data[4], '[');
    ASSERT_EQ(sb.data[sb.len - 1], ']');
    ASSERT_EQ(sb.data[sb.len], '\0');
    strbuf_printf(&sb, "%s", "");
    ASSERT_EQ(sb.len, 4 + 2 + 4999);
    strbuf_dispose(&sb);
}

TEST(json_plain_and_escapes)
{
    ASSERT_JSON("", "\"\"");
    ASSERT_JSON("/api/v1", "\"/api/v1\"");
    ASSERT_JSON("a\"b\\c", "\"a\\\"b\\\\c\"");
    ASSERT_JSON("\n\t\r\b\f", "\"\\u000a\\u0009\\u000d\\u0008\\u000c\"");
    ASSERT_JSON("\x01\x1f x\x7f", "\"\\u0001\\u001f x\x7f\"");
    ASSERT_JSON(NULL, "null");
}

TEST(json_utf8)
{
    /* Valid sequences of 2, 3 and 4 bytes pass through. */
    ASSERT_JSON("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    /* Stray continuation, overlong, surrogate, above U+10FFFF, truncated. */
    ASSERT_JSON("a\x80z", "\"a\\ufffdz\"");
    ASSERT_JSON("\xc0\xaf", "\"\\ufffd\\ufffd\"");
    ASSERT_JSON("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");
    ASSERT_JSON("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
    ASSERT_JSON("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    ASSERT_JSON("x\xe2\x82", "\"x\\ufffd\\ufffd\"");
    ASSERT_JSON("\xf0\x9f\x98", "\"\\ufffd\\ufffd\\ufffd\"");
}

TEST(json_is_valid_for_every_byte)
{
    /* Every single byte and every pair: the result parses as one JSON string. */
    char in[3] = {0};
    struct strbuf all;
    strbuf_init(&all);
    strbuf_puts(&all, "[");
    for (int a = 1; a < 256; a++) {
        for (int b = 0; b < 256; b += 17) {
            in[0] = (char)a;
            in[1] = (char)b;
            if (all.len > 1)
                strbuf_puts(&all, ",");
            strbuf_json_string(&all, in);
        }
    }
    strbuf_puts(&all, "]");
    FILE *py = popen("python3 -c 'import json,sys; "
                     "assert len(json.loads(sys.stdin.buffer.read().decode(\"utf-8\"))) == 255 * 16'",
                     "w");
    ASSERT(py != NULL);
    fwrite(all.data, 1, all.len, py);
    int st = pclose(py);
    ASSERT(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
    strbuf_dispose(&all);
}

TEST_MAIN()
