/* SPDX-License-Identifier: MIT */
/*
 * A tiny unit-test harness: TEST(name) defines a case, the runner (test_main)
 * forks each case into its own process with a timeout, so a crash or a hang
 * fails that case alone.  ASSERT_* print file:line and both values.
 * The last line printed is "N passed, N failed" (the form CI counts).
 */
#ifndef SLUICE_TEST_H
#define SLUICE_TEST_H

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct test_case {
    const char *name;
    void (*fn)(void);
};

#define TEST_MAX 512
static struct test_case test_cases[TEST_MAX];
static int test_ncases;

#define TEST(name)                                                                                         \
    static void test_##name(void);                                                                         \
    __attribute__((constructor)) static void test_register_##name(void)                                    \
    {                                                                                                      \
        if (test_ncases < TEST_MAX)                                                                        \
            test_cases[test_ncases++] = (struct test_case){#name, test_##name};                            \
    }                                                                                                      \
    static void test_##name(void)

#define TEST_FAIL(...)                                                                                     \
    do {                                                                                                   \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                                    \
        fprintf(stderr, __VA_ARGS__);                                                                      \
        fputc('\n', stderr);                                                                               \
        exit(1);                                                                                           \
    } while (0)

#define ASSERT(cond)                                                                                       \
    do {                                                                                                   \
        if (!(cond))                                                                                       \
            TEST_FAIL("assertion failed: %s", #cond);                                                      \
    } while (0)

#define ASSERT_INT_OP(a, op, b)                                                                            \
    do {                                                                                                   \
        long long test_a_ = (long long)(a), test_b_ = (long long)(b);                                      \
        if (!(test_a_ op test_b_))                                                                         \
            TEST_FAIL("%s %s %s: %lld vs %lld", #a, #op, #b, test_a_, test_b_);                            \
    } while (0)

#define ASSERT_EQ(a, b) ASSERT_INT_OP(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_OP(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_INT_OP(a, <, b)
#define ASSERT_LE(a, b) ASSERT_INT_OP(a, <=, b)
#define ASSERT_GT(a, b) ASSERT_INT_OP(a, >, b)
#define ASSERT_GE(a, b) ASSERT_INT_OP(a, >=, b)

#define ASSERT_STR_EQ(a, b)                                                                                \
    do {                                                                                                   \
        const char *test_a_ = (a), *test_b_ = (b);                                                         \
        if (test_a_ == NULL || test_b_ == NULL || strcmp(test_a_, test_b_) != 0)                           \
            TEST_FAIL("%s == %s: \"%s\" vs \"%s\"", #a, #b, test_a_ ? test_a_ : "(null)",                  \
                      test_b_ ? test_b_ : "(null)");                                                       \
    } while (0)

#define ASSERT_CONTAINS(hay, needle)                                                                       \
    do {                                                                                                   \
        const char *test_h_ = (hay), *test_n_ = (needle);                                                  \
        if (test_h_ == NULL || strstr(test_h_, test_n_) == NULL)                                           \
            TEST_FAIL("%s does not contain \"%s\": \"%s\"", #hay, test_n_, test_h_ ? test_h_ : "(null)");  \
    } while (0)

/* Runs every case (or those named on the command line), each in a child with
 * a 20 s alarm. */
static int test_main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < test_ncases; i++) {
        if (argc > 1) {
            int wanted = 0;
            for (int a = 1; a < argc; a++)
                wanted |= strcmp(argv[a], test_cases[i].name) == 0;
            if (!wanted)
                continue;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            test_cases[i].fn();
            fflush(NULL);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            passed++;
            printf("ok   %s\n", test_cases[i].name);
        } else {
            failed++;
            if (WIFSIGNALED(status))
                printf("FAIL %s (signal %d)\n", test_cases[i].name, WTERMSIG(status));
            else
                printf("FAIL %s\n", test_cases[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#define TEST_MAIN()                                                                                        \
    int main(int argc, char **argv)                                                                        \
    {                                                                                                      \
        return test_main(argc, argv);                                                                      \
    }

#endif
