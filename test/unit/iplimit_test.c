/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdio.h>

#include "proxy/iplimit.h"
#include "test/unit/test.h"

TEST(limit_per_address)
{
    ASSERT(iplimit_acquire("10.0.0.1", 2));
    ASSERT(iplimit_acquire("10.0.0.1", 2));
    ASSERT(!iplimit_acquire("10.0.0.1", 2));
    ASSERT(iplimit_acquire("10.0.0.2", 2)); /* another address has its own count */
    iplimit_release("10.0.0.1");
    ASSERT(iplimit_acquire("10.0.0.1", 2));
    ASSERT(!iplimit_acquire("10.0.0.1", 2));
    /* a lower limit after a reload applies to the slots already held */
    ASSERT(!iplimit_acquire("10.0.0.1", 1));
    iplimit_release("10.0.0.1");
    iplimit_release("10.0.0.1");
    iplimit_release("10.0.0.2");
    ASSERT(iplimit_acquire("10.0.0.1", 1));
    iplimit_release("10.0.0.1");
}

TEST(zero_limit_takes_nothing)
{
    ASSERT(!iplimit_acquire("::1", 0));
}

static void *churn(void *arg)
{
    char addr[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(addr, sizeof(addr), "192.0.2.%d", i % 200);
        if (iplimit_acquire(addr, 1000000))
            iplimit_release(addr);
    }
    return arg;
}

/* Many threads and addresses: every entry goes away with its last slot (ASan
 * would report one that leaked), and counts stay exact. */
TEST(threads_and_many_addresses)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, churn, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    char addr[32];
    for (int i = 0; i < 200; i++) {
        snprintf(addr, sizeof(addr), "192.0.2.%d", i);
        ASSERT(iplimit_acquire(addr, 1));
        ASSERT(!iplimit_acquire(addr, 1));
        iplimit_release(addr);
    }
}

TEST_MAIN()
