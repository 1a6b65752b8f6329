/* SPDX-License-Identifier: MIT */
/*
 * buf: fixed-size, refcounted I/O blocks with a per-thread freelist.
 *
 * Reads land in a block handed out by alloc_cb; a body slice then travels by
 * reference from that block to the write that sends it (buf_ref before the
 * write, buf_unref in its callback), so bytes are never copied on the hot
 * path.  Blocks never cross threads: refs are plain integers and the
 * freelist is thread-local, capped so an idle worker gives memory back.
 */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stddef.h>

#define BUF_SIZE (64 * 1024)

struct buf {
    unsigned refs;
    struct buf *next_free;
    char data[BUF_SIZE];
};

/* A block with refs == 1.  Aborts on OOM (a fixed, small size). */
struct buf *buf_get(void);
void buf_ref(struct buf *b);
void buf_unref(struct buf *b);

/* Blocks currently allocated by this process, and those idle in freelists
 * (for /stats). */
size_t buf_allocated(void);

/* Frees this thread's idle blocks; call when a thread ends. */
void buf_thread_cleanup(void);

#endif
