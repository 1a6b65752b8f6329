/* SPDX-License-Identifier: MIT */
/*
 * iplimit: how many client connections each client address holds open, for
 * max_connections_per_ip.  Process-wide (every worker's connections from one
 * address count together), sharded by address hash, each shard with its own
 * mutex; an entry exists only while its address has a connection, so memory
 * is bounded by the open connections.  Used only when the limit is set: with
 * no limit, accept never reaches here.
 *
 * Threading: any thread.
 */
#ifndef SLUICE_PROXY_IPLIMIT_H
#define SLUICE_PROXY_IPLIMIT_H

#include <stdbool.h>

/* Takes a slot for addr (its numeric text) if it holds fewer than limit:
 * true when taken.  False also when memory runs out (fail closed). */
bool iplimit_acquire(const char *addr, unsigned limit);
/* Gives back a slot taken by iplimit_acquire. */
void iplimit_release(const char *addr);

#endif
