/* SPDX-License-Identifier: MIT */
/*
 * cache_int.h: declarations shared by the cache module's .c files.  No other
 * module includes it.
 */
#ifndef SLUICE_CACHE_INT_H
#define SLUICE_CACHE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"
#include "common/list.h"

/* ==== the store and fills (store.c, fill.c) ==== */

/* A request's secondary key for a Vary list fits here, or the request
 * matches no entry that varies on it. */
#define CACHE_VARY_KEY_MAX 4096

/* Which S3-FIFO queue an entry is on (cache_entry._queue). */
enum cache_queue { CACHE_QUEUE_NONE = 0, CACHE_QUEUE_SMALL, CACHE_QUEUE_MAIN };

/* One slot of a shard's ghost table: a recently evicted key hash and the
 * ghost sequence number it was evicted at (0: empty). */
struct cache_ghost_slot {
    uint64_t hash, seq;
};

/* A shard: everything below is guarded by lock, except the counters, which
 * are written under it and read without it (relaxed atomics). */
struct cache_shard {
    _Alignas(64) pthread_mutex_t lock;
    uint64_t budget;              /* bytes */
    struct cache_entry **buckets; /* chains through _hnext, newest first */
    size_t mask;                  /* buckets - 1 */
    size_t nentries;
    struct list small, main; /* S3-FIFO queues through _qlink, oldest first */
    uint64_t small_bytes, main_bytes;
    size_t main_count;
    struct cache_ghost_slot *ghost; /* direct-mapped, ghost_mask + 1 slots */
    size_t ghost_mask;
    uint64_t ghost_seq; /* evictions into the ghost so far */
    struct list fills;  /* running fills, through cache_fill.link */
    atomic_uint_fast64_t objects, bytes, inserts, evictions, purged;
};

struct cache {
    struct list link; /* in the process-wide registry */
    char *name;
    unsigned nshards, shard_shift;
    _Atomic uint64_t memory, max_object;
    atomic_uint_fast64_t fills_aborted;
    struct cache_shard *shards;
};

/* Fill body blocks grow from 1 KiB to 64 KiB, so a small response costs one
 * small block and a large one few pieces. */
#define CACHE_BLOCK_MIN  1024
#define CACHE_BLOCK_MAX  (64 * 1024)
#define CACHE_BLOCK_GROW 6 /* blocks 0..5 double from BLOCK_MIN; every later one is BLOCK_MAX */

struct cache_fill {
    struct cache *c;
    struct cache_shard *s;
    struct list link; /* in s->fills while is_registered (both under s->lock) */
    bool is_registered;
    atomic_uint refs;
    _Atomic int state;    /* enum cache_fill_state */
    pthread_mutex_t lock; /* guards waiters and the end of RUNNING */
    struct list waiters;
    uint64_t hash;
    char *key;
    size_t key_len;
    size_t url_off, url_len;
    bool is_cancelled; /* a purge matched it: what it got may predate the purge (under s->lock) */
    uint64_t limit; /* head + body bytes allowed */
    /* written by the filler before head is published, read-only after */
    char *vary, *vary_key; /* from cache_fill_set_vary, NULL when not given */
    bool is_vary_unknown;  /* the head has a Vary field but set_vary was not called */
    bool is_chunked;
    size_t head_len;
    _Atomic(char *) head;
    /* body: blocks[k] is written before len grows past it */
    char **blocks;
    size_t nblocks; /* slots in blocks: enough for limit */
    atomic_size_t len;
    struct cache_entry *entry; /* once finished: owns the blocks; the fill holds a ref */
};

struct cache_shard *cache_shard_of(struct cache *c, uint64_t hash);
bool cache_entry_is_key(const struct cache_entry *e, uint64_t hash, const char *key, size_t len);
/* Whether a request's headers give vary_key for the Vary list vary. */
bool cache_vary_matches(const char *vary, const char *vary_key, cache_header_get_cb get_header, void *arg);

/* Links e under s->lock, replacing the entry of the same key and vary_key
 * and evicting as needed; one of the caller's refs becomes the store's.
 * Unlinked entries go to victims, for cache_release_victims once the lock
 * is dropped.  -E2BIG when e can never fit the shard (no ref taken). */
int cache_shard_insert_locked(struct cache_shard *s, struct cache_entry *e, struct list *victims);
void cache_release_victims(struct list *victims);

/* The running fill of a key, under s->lock, or NULL. */
struct cache_fill *cache_fill_find_locked(struct cache_shard *s, uint64_t hash, const char *key, size_t len);
/* Takes f off its shard and drops the registry's ref (shutdown only). */
void cache_fill_drop_registry(struct cache_fill *f);

/* ==== policy (policy.c, key.c, json.c) ==== */

/* The largest delta-seconds we keep: RFC 9111 1.2.2 says to use 2^31 for
 * anything larger. */
#define CACHE_DELTA_MAX INT64_C(2147483648)

/* ttl_from json: bodies larger than this are not inspected (not stored), so
 * one response costs a loop thread at most about a millisecond. */
#define CACHE_JSON_MAX_SCAN (1024 * 1024)
/* Nesting deeper than this is rejected rather than followed. */
#define CACHE_JSON_MAX_DEPTH 64

/* The scalar at the dot path (object keys only) of the JSON document doc:
 * a string's unescaped text, or the literal text of a number, true, false or
 * null, NUL-terminated in out.  Returns its length, or -1 when doc is not
 * valid JSON, the path is missing or names an object or array, or the value
 * does not fit in cap.  One pass over at most len bytes, no recursion. */
int cache_json_find(const char *doc, size_t len, const char *path, char *out, size_t cap);

static inline bool cache_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

#endif
