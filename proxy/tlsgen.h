/* SPDX-License-Identifier: MIT */
/*
 * tlsgen: the TLS side of a conf generation — certificates and keys loaded
 * into SSL_CTXs at conf load (main thread), owned by the generation, so a
 * reload brings new certificates to new connections while open ones keep
 * theirs (an SSL holds a ref on its context).
 *
 * Per TLS listen address: the context of each server block on it, chosen by
 * SNI against server_name (the first server on the address is the default).
 * Per upstream with `tls` servers: one client context (tls_verify, tls_ca,
 * tls_cert/tls_key), and per server the SNI name, the name verified and the
 * Host for requests that came without one.
 *
 * Threading: create/apply/free on the main thread; lookups on any worker
 * (read-only).
 */
#ifndef SLUICE_TLSGEN_H
#define SLUICE_TLSGEN_H

#include <stdio.h>

#include "common/tls.h"
#include "conf/conf.h"
#include "upstream/upstream.h"

struct tlsgen;

/* Loads every certificate, key and CA file conf names.  0 with *out set (NULL
 * when conf has no TLS at all), or the number of errors, each printed to err
 * as "file:line: message". */
int tlsgen_create(const struct conf *conf, FILE *err, struct tlsgen **out);
void tlsgen_free(struct tlsgen *tg);

/* Sets the TLS fields of the targets of groups (parallel to conf->upstreams). */
void tlsgen_apply(struct tlsgen *tg, const struct conf *conf, struct upstream_group *groups);

/* The default context of a listen address, NULL for a plain one (tg may be
 * NULL). */
SSL_CTX *tlsgen_listen_ctx(const struct tlsgen *tg, const char *addr_text);

/* A client context that trusts anything, for the requests a worker sends to
 * its own TLS listeners (stale-while-revalidate refreshes); NULL without TLS
 * listeners. */
SSL_CTX *tlsgen_loopback_ctx(const struct tlsgen *tg);

#endif
