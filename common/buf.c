/* SPDX-License-Identifier: MIT */
#include "common/buf.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>

/* 64 idle blocks (4 MiB) per thread cover a busy worker's working set; beyond
 * that, freeing keeps an idle process small after a burst. */
#define BUF_FREELIST_MAX 64

static _Thread_local struct buf *freelist;
static _Thread_local unsigned freelist_len;
static atomic_size_t allocated;

struct buf *buf_get(void)
{
    struct buf *b = freelist;
    if (b != NULL) {
        freelist = b->next_free;
        freelist_len--;
    } else {
        b = malloc(sizeof(*b));
        if (b == NULL)
            abort();
        atomic_fetch_add_explicit(&allocated, 1, memory_order_relaxed);
    }
    b->refs = 1;
    b->next_free = NULL;
    return b;
}

void buf_ref(struct buf *b)
{
    b->refs++;
}

void buf_unref(struct buf *b)
{
    assert(b->refs > 0);
    if (--b->refs > 0)
        return;
    if (freelist_len < BUF_FREELIST_MAX) {
        b->next_free = freelist;
        freelist = b;
        freelist_len++;
        return;
    }
    atomic_fetch_sub_explicit(&allocated, 1, memory_order_relaxed);
    free(b);
}

size_t buf_allocated(void)
{
    return atomic_load_explicit(&allocated, memory_order_relaxed);
}

void buf_thread_cleanup(void)
{
    while (freelist != NULL) {
        struct buf *b = freelist;
        freelist = b->next_free;
        free(b);
        atomic_fetch_sub_explicit(&allocated, 1, memory_order_relaxed);
    }
    freelist_len = 0;
}
