/* SPDX-License-Identifier: MIT */
#include "proxy/tlsgen.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

/* One TLS listen address: the default context and the SNI table its
 * servername callback reads. */
struct tls_site {
    const char *addr;
    SSL_CTX *ctx;
    struct tls_sni sni;
};

struct tlsgen {
    SSL_CTX **owned; /* every context made, freed with the generation */
    size_t nowned;
    struct tls_site *sites;
    size_t nsites;
    SSL_CTX **upstreams; /* parallel to conf->upstreams, NULL without tls servers */
    SSL_CTX *loopback;   /* to our own TLS listeners */
    char **hosts;        /* Host values made by tlsgen_apply */
    size_t nhosts;
};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        abort();
    return p;
}

static bool is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

static struct tls_site *site_of(struct tlsgen *tg, const char *addr)
{
    for (size_t i = 0; i < tg->nsites; i++)
        if (strcmp(tg->sites[i].addr, addr) == 0)
            return &tg->sites[i];
    return NULL;
}

int tlsgen_create(const struct conf *conf, FILE *err, struct tlsgen **out)
{
    size_t nlistens = 0, nnames = 0, nups = 0;
    for (size_t i = 0; i < conf->nservers; i++)
        for (size_t j = 0; j < conf->servers[i].nlistens; j++)
            if (conf->servers[i].listens[j].tls) {
                nlistens++;
                nnames += conf->servers[i].nnames;
            }
    for (size_t i = 0; i < conf->nupstreams; i++)
        for (size_t j = 0; j < conf->upstreams[i].nservers; j++)
            if (conf->upstreams[i].servers[j].tls) {
                nups++;
                break;
            }
    *out = NULL;
    if (nlistens == 0 && nups == 0)
        return 0;
    struct tlsgen *tg = xcalloc(1, sizeof(*tg));
    tg->owned = xcalloc(nlistens + nups + 1, sizeof(*tg->owned));
    tg->sites = xcalloc(nlistens, sizeof(*tg->sites));
    tg->upstreams = xcalloc(conf->nupstreams, sizeof(*tg->upstreams));
    int nerrors = 0;
    char why[768];
    /* servers in conf order: the first on an address is its default */
    for (size_t i = 0; i < conf->nservers; i++) {
        const struct conf_server *s = &conf->servers[i];
        for (size_t j = 0; j < s->nlistens; j++) {
            const struct conf_listen *l = &s->listens[j];
            if (!l->tls)
                continue;
            SSL_CTX *ctx = tls_server_ctx_create(l->tls_cert, l->tls_key, why, sizeof(why));
            if (ctx == NULL) {
                fprintf(err, "%s:%d: listen %s: %s\n", l->pos.file, l->pos.line, l->text, why);
                nerrors++;
                continue;
            }
            tg->owned[tg->nowned++] = ctx;
            struct tls_site *site = site_of(tg, l->text);
            if (site == NULL) {
                site = &tg->sites[tg->nsites++];
                site->addr = l->text;
                site->ctx = ctx;
                /* every name of every server is at most all of them */
                site->sni.v = xcalloc(nnames, sizeof(*site->sni.v));
                tls_ctx_set_sni(ctx, &site->sni);
            }
            for (size_t k = 0; k < s->nnames; k++)
                site->sni.v[site->sni.n++] = (struct tls_sni_entry){s->names[k], ctx};
        }
    }
    if (tg->nsites > 0) {
        tg->loopback = tls_client_ctx_create(false, NULL, NULL, NULL, why, sizeof(why));
        if (tg->loopback == NULL) {
            fprintf(err, "%s: %s\n", conf->path, why);
            nerrors++;
        } else {
            tg->owned[tg->nowned++] = tg->loopback;
        }
    }
    for (size_t i = 0; i < conf->nupstreams; i++) {
        const struct conf_upstream *u = &conf->upstreams[i];
        bool has_tls = false;
        for (size_t j = 0; j < u->nservers; j++)
            has_tls |= u->servers[j].tls;
        if (!has_tls)
            continue;
        SSL_CTX *ctx =
            tls_client_ctx_create(u->tls_verify, u->tls_ca, u->tls_cert, u->tls_key, why, sizeof(why));
        if (ctx == NULL) {
            fprintf(err, "%s:%d: upstream %s: %s\n", u->pos.file, u->pos.line, u->name, why);
            nerrors++;
            continue;
        }
        tg->owned[tg->nowned++] = ctx;
        tg->upstreams[i] = ctx;
    }
    if (nerrors > 0) {
        tlsgen_free(tg);
        return nerrors;
    }
    *out = tg;
    return 0;
}

void tlsgen_free(struct tlsgen *tg)
{
    if (tg == NULL)
        return;
    for (size_t i = 0; i < tg->nowned; i++)
        SSL_CTX_free(tg->owned[i]);
    for (size_t i = 0; i < tg->nsites; i++)
        free(tg->sites[i].sni.v);
    for (size_t i = 0; i < tg->nhosts; i++)
        free(tg->hosts[i]);
    free(tg->hosts);
    free(tg->owned);
    free(tg->sites);
    free(tg->upstreams);
    free(tg);
}

void tlsgen_apply(struct tlsgen *tg, const struct conf *conf, struct upstream_group *groups)
{
    if (tg == NULL)
        return;
    size_t n = 0;
    for (size_t i = 0; i < conf->nupstreams; i++)
        n += groups[i].ntargets;
    tg->hosts = xcalloc(n, sizeof(*tg->hosts));
    for (size_t i = 0; i < conf->nupstreams; i++) {
        const struct conf_upstream *u = &conf->upstreams[i];
        for (size_t j = 0; j < groups[i].ntargets; j++) {
            struct upstream_target *t = &groups[i].targets[j];
            const struct conf_upstream_server *cs = t->conf;
            if (!cs->tls)
                continue;
            const char *name = u->tls_sni != NULL ? u->tls_sni : cs->host;
            t->tls_ctx = tg->upstreams[i];
            t->tls_sni = u->tls_sni != NULL ? u->tls_sni : (is_ip_literal(cs->host) ? NULL : cs->host);
            t->tls_verify_name = u->tls_verify ? name : NULL;
            /* the name the certificate is for, with the port unless it is https's */
            char *host;
            if (cs->port == 443 && strchr(name, ':') == NULL)
                host = strdup(name);
            else if (u->tls_sni == NULL)
                host = strdup(cs->name);
            else if (asprintf(&host, "%s:%u", name, cs->port) < 0)
                host = NULL;
            if (host == NULL)
                abort();
            tg->hosts[tg->nhosts++] = host;
            t->tls_host = host;
        }
    }
}

SSL_CTX *tlsgen_loopback_ctx(const struct tlsgen *tg)
{
    return tg != NULL ? tg->loopback : NULL;
}

SSL_CTX *tlsgen_listen_ctx(const struct tlsgen *tg, const char *addr_text)
{
    if (tg == NULL)
        return NULL;
    for (size_t i = 0; i < tg->nsites; i++)
        if (strcmp(tg->sites[i].addr, addr_text) == 0)
            return tg->sites[i].ctx;
    return NULL;
}
