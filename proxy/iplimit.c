/* SPDX-License-Identifier: MIT */
#include "proxy/iplimit.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SHARDS 16
#define BUCKETS 256 /* per shard: chains stay short up to tens of thousands of addresses */
#define ADDR_MAX 64

struct ip_entry {
    struct ip_entry *next;
    unsigned count;
    char addr[ADDR_MAX];
};

/* padded so two shards' locks never share a cache line */
struct ip_shard {
    pthread_mutex_t lock;
    struct ip_entry *buckets[BUCKETS];
} __attribute__((aligned(64)));

static struct ip_shard shards[SHARDS] = {
#define S {.lock = PTHREAD_MUTEX_INITIALIZER}
    S, S, S, S, S, S, S, S, S, S, S, S, S, S, S, S,
#undef S
};

static uint32_t addr_hash(const char *addr)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *addr; addr++)
        h = (h ^ (unsigned char)*addr) * 16777619u;
    return h;
}

static struct ip_entry **find(struct ip_shard *s, const char *addr, uint32_t h)
{
    struct ip_entry **pp = &s->buckets[(h / SHARDS) % BUCKETS];
    while (*pp != NULL && strcmp((*pp)->addr, addr) != 0)
        pp = &(*pp)->next;
    return pp;
}

bool iplimit_acquire(const char *addr, unsigned limit)
{
    uint32_t h = addr_hash(addr);
    struct ip_shard *s = &shards[h % SHARDS];
    bool ok = false;
    pthread_mutex_lock(&s->lock);
    struct ip_entry **pp = find(s, addr, h);
    if (*pp != NULL) {
        ok = (*pp)->count < limit;
        if (ok)
            (*pp)->count++;
    } else if (limit > 0) {
        struct ip_entry *e = calloc(1, sizeof(*e));
        if (e != NULL) {
            strncpy(e->addr, addr, ADDR_MAX - 1);
            e->count = 1;
            *pp = e;
            ok = true;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

void iplimit_release(const char *addr)
{
    uint32_t h = addr_hash(addr);
    struct ip_shard *s = &shards[h % SHARDS];
    pthread_mutex_lock(&s->lock);
    struct ip_entry **pp = find(s, addr, h);
    struct ip_entry *e = *pp;
    if (e != NULL && --e->count == 0) {
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&s->lock);
}
