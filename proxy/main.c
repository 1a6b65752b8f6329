/* SPDX-License-Identifier: MIT */
/*
 * main: command line, the control loop (signals, reload, DNS), worker
 * start-up and shutdown.
 *
 * Reload (SIGHUP): load and check the file, resolve upstream names with
 * uv_getaddrinfo on this loop, open sockets for listen addresses that are
 * new (a bind failure rejects the reload), then hand every worker the new
 * generation.  Requests in flight finish on the generation they pinned.
 * Shutdown (SIGTERM/SIGINT): workers stop accepting and finish what is in
 * flight; past shutdown_timeout the rest is closed.  A second signal stops
 * at once.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "common/log.h"
#include "common/tls.h"
#include "proxy/obs.h"
#include "proxy/proxy.h"
#include "upstream/health.h"
#include "proxy/tlsgen.h"

struct proxy_info proxy_info;

struct listen_addr {
    char *text;
    bool is_admin;
};

static struct {
    uv_loop_t loop;
    const char *conf_path; /* NULL: the embedded default */
    struct worker *workers;
    unsigned nworkers;
    struct proxy_gen *gen;
    struct listen_addr *addrs;
    size_t naddrs;
    uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
    uv_async_t worker_exited;
    uv_timer_t drain_timer;
    bool started, draining, reloading;
    int exit_code;
    struct health_checks *health;
    struct tlsgen *loaded_tls; /* of the conf being resolved, for its generation */
} M;

struct proxy_gen *proxy_gen_ref(struct proxy_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

void proxy_gen_unref(struct proxy_gen *g)
{
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < g->nroutes; i++)
        free(g->routes[i].name);
    free(g->routes);
    upstream_groups_free(g->groups, g->conf->nupstreams);
    tlsgen_free(g->tls);
    conf_unref(g->conf);
    free(g);
}

static struct proxy_gen *gen_create(struct conf *conf, struct upstream_group *groups, struct tlsgen *tls)
{
    struct proxy_gen *g = calloc(1, sizeof(*g));
    size_t n = 0;
    for (size_t i = 0; i < conf->nservers; i++)
        n += conf->servers[i].nroutes;
    g->routes = calloc(n ? n : 1, sizeof(*g->routes));
    if (g == NULL || g->routes == NULL)
        abort();
    atomic_init(&g->refs, 1);
    g->conf = conf;
    g->groups = groups;
    g->tls = tls;
    tlsgen_apply(tls, conf, groups);
    for (size_t i = 0; i < conf->nservers; i++) {
        struct conf_server *s = &conf->servers[i];
        const char *sname = s->nnames ? s->names[0] : s->listens[0].text;
        for (size_t j = 0; j < s->nroutes; j++) {
            struct conf_route *r = &s->routes[j];
            struct route_rt *rt = &g->routes[g->nroutes++];
            size_t len = strlen(sname) + r->prefix_len + 1;
            rt->name = malloc(len);
            if (rt->name == NULL)
                abort();
            snprintf(rt->name, len, "%s%s", sname, r->prefix);
            rt->stats = stats_set_get("route", rt->name);
            rt->group = &groups[r->upstream - conf->upstreams];
            rt->fallback = r->fallback ? &groups[r->fallback - conf->upstreams] : NULL;
            if (r->cache != NULL) {
                rt->store = cache_get(r->cache->cache->name, r->cache->cache->memory, r->cache->cache->max_object,
                                      4 * conf->workers);
                if (rt->store == NULL)
                    abort(); /* a few control structures: only failing malloc gets here */
            }
            /* admission control (issue 5): process-wide state found by name */
            for (size_t k = 0; k < r->nlimits; k++) {
                rt->limit_confs[k] = r->limits[k];
                if ((rt->limits[k] = limit_get(r->limits[k])) == NULL)
                    abort();
            }
            rt->nlimits = r->nlimits;
            if (r->max_inflight.max > 0)
                rt->inflight[rt->ninflight++] = limit_inflight_get("route", rt->name, &r->max_inflight);
            if (r->upstream->max_inflight.max > 0)
                rt->inflight[rt->ninflight++] =
                    limit_inflight_get("upstream", r->upstream->name, &r->upstream->max_inflight);
            rt->has_admission = rt->nlimits > 0 || rt->ninflight > 0;
            r->runtime = rt;
        }
    }
    return g;
}

/* ---- listening sockets ---- */

static void add_addr(struct listen_addr *set, size_t *n, const char *text, bool is_admin)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(set[i].text, text) == 0 && set[i].is_admin == is_admin)
            return;
    set[*n].text = strdup(text);
    set[*n].is_admin = is_admin;
    (*n)++;
}

static const struct conf_listen *find_listen(const struct conf *conf, const struct listen_addr *a)
{
    if (a->is_admin)
        return &conf->admin_listen;
    for (size_t i = 0; i < conf->nservers; i++)
        for (size_t j = 0; j < conf->servers[i].nlistens; j++)
            if (strcmp(conf->servers[i].listens[j].text, a->text) == 0)
                return &conf->servers[i].listens[j];
    return NULL;
}

static bool addr_known(const struct listen_addr *a)
{
    for (size_t i = 0; i < M.naddrs; i++)
        if (strcmp(M.addrs[i].text, a->text) == 0 && M.addrs[i].is_admin == a->is_admin)
            return true;
    return false;
}

static void free_addrs(struct listen_addr *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(set[i].text);
    free(set);
}

/* Opens the sockets the new conf needs and the current one lacks, and
 * publishes the generation to every worker.  0, or -1 when a socket could not
 * be bound (nothing is published then). */
static int publish(struct proxy_gen *g)
{
    const struct conf *conf = g->conf;
    size_t cap = 1;
    for (size_t i = 0; i < conf->nservers; i++)
        cap += conf->servers[i].nlistens;
    struct listen_addr *set = calloc(cap, sizeof(*set));
    size_t nset = 0;
    if (set == NULL)
        abort();
    for (size_t i = 0; i < conf->nservers; i++)
        for (size_t j = 0; j < conf->servers[i].nlistens; j++)
            add_addr(set, &nset, conf->servers[i].listens[j].text, false);
    if (conf->admin_enabled)
        add_addr(set, &nset, conf->admin_listen.text, true);

    struct worker_msg **msgs = calloc(M.nworkers, sizeof(*msgs));
    if (msgs == NULL)
        abort();
    for (unsigned w = 0; w < M.nworkers; w++) {
        msgs[w] = calloc(1, sizeof(**msgs));
        msgs[w]->fds = calloc(nset ? nset : 1, sizeof(struct listen_fd));
        if (msgs[w] == NULL || msgs[w]->fds == NULL)
            abort();
        msgs[w]->type = WORKER_MSG_GEN;
    }
    int rc = 0;
    for (size_t i = 0; i < nset && rc == 0; i++) {
        if (addr_known(&set[i]))
            continue;
        const struct conf_listen *ln = find_listen(conf, &set[i]);
        unsigned copies = set[i].is_admin ? 1 : M.nworkers;
        for (unsigned w = 0; w < copies; w++) {
            int fd = listen_socket_open((const struct sockaddr *)&ln->addr, ln->addrlen);
            if (fd < 0) {
                log_error("main", "%s:%d: cannot listen on %s: %s", ln->pos.file ? ln->pos.file : "(default)",
                          ln->pos.line, ln->text, uv_strerror(fd));
                rc = -1;
                break;
            }
            struct worker_msg *m = msgs[w];
            m->fds[m->nfds].fd = fd;
            m->fds[m->nfds].addr_text = strdup(ln->text);
            m->fds[m->nfds].is_admin = set[i].is_admin;
            m->nfds++;
        }
    }
    if (rc == 0)
        rc = obs_publish(conf, M.nworkers); /* access log, slow log, analytics */
    if (rc != 0) {
        for (unsigned w = 0; w < M.nworkers; w++) {
            for (size_t i = 0; i < msgs[w]->nfds; i++) {
                close(msgs[w]->fds[i].fd);
                free(msgs[w]->fds[i].addr_text);
            }
            free(msgs[w]->fds);
            free(msgs[w]);
        }
        free(msgs);
        free_addrs(set, nset);
        return -1;
    }
    for (unsigned w = 0; w < M.nworkers; w++) {
        msgs[w]->gen = proxy_gen_ref(g);
        worker_post(&M.workers[w], msgs[w]);
    }
    free(msgs);
    free_addrs(M.addrs, M.naddrs);
    M.addrs = set;
    M.naddrs = nset;
    /* the checks read the groups of the generation they were started on */
    health_stop(M.health);
    if (M.gen != NULL)
        proxy_gen_unref(M.gen);
    M.gen = g;
    M.health = health_start(&M.loop, g->groups, g->conf->nupstreams);
    atomic_fetch_add(&proxy_info.generation, 1);
    return 0;
}

/* ---- start, reload ---- */

/* Loads the conf and everything it names (certificates, keys, CAs), so a
 * bad file is a conf error at -t, start and reload alike. */
static struct conf *load(FILE *err, struct tlsgen **tls)
{
    struct conf *conf = M.conf_path == NULL ? conf_load_string(conf_embedded_default, "(embedded default)", err)
                                            : conf_load_file(M.conf_path, err);
    if (conf != NULL && tlsgen_create(conf, err, tls) > 0) {
        conf_unref(conf);
        return NULL;
    }
    return conf;
}

static void start_workers(unsigned n)
{
    M.nworkers = n;
    M.workers = calloc(n, sizeof(*M.workers));
    if (M.workers == NULL)
        abort();
    for (unsigned i = 0; i < n; i++) {
        worker_init(&M.workers[i], i);
        int rc = worker_start(&M.workers[i]);
        if (rc != 0) {
            log_error("main", "cannot start worker %u: %s", i, uv_strerror(rc));
            exit(1);
        }
    }
    proxy_info.nworkers = n;
}

static void begin_shutdown(bool force);

static void on_groups(void *arg, struct upstream_group *groups, const char *error)
{
    struct conf *conf = arg;
    struct tlsgen *tls = M.loaded_tls;
    M.loaded_tls = NULL;
    M.reloading = false;
    if (groups == NULL) {
        log_error("main", "%s", error);
        tlsgen_free(tls);
        conf_unref(conf);
        if (!M.started) {
            M.exit_code = 1;
            uv_stop(&M.loop);
        } else {
            atomic_fetch_add(&proxy_info.reloads_failed, 1);
            log_error("main", "reload failed: keeping the running configuration");
        }
        return;
    }
    if (M.draining) {
        upstream_groups_free(groups, conf->nupstreams);
        tlsgen_free(tls);
        conf_unref(conf);
        return;
    }
    struct proxy_gen *g = gen_create(conf, groups, tls);
    if (!M.started)
        start_workers(conf->workers);
    if (publish(g) != 0) {
        proxy_gen_unref(g);
        if (!M.started) {
            M.exit_code = 1;
            M.started = true;
            begin_shutdown(true);
            return;
        }
        atomic_fetch_add(&proxy_info.reloads_failed, 1);
        log_error("main", "reload failed: keeping the running configuration");
        return;
    }
    log_set_level((enum log_level)conf->log_level);
    if (M.started) {
        atomic_fetch_add(&proxy_info.reloads_ok, 1);
        log_info("main", "configuration reloaded (generation %u)", atomic_load(&proxy_info.generation));
    } else {
        M.started = true;
        log_info("main", "sluice %s started: %u worker%s, conf %s", SLUICE_VERSION, M.nworkers,
                 M.nworkers == 1 ? "" : "s", M.conf_path ? M.conf_path : "(embedded default)");
    }
}

static void reload(void)
{
    if (M.reloading || M.draining)
        return;
    log_info("main", "SIGHUP: reloading %s", M.conf_path ? M.conf_path : "(embedded default)");
    struct tlsgen *tls = NULL;
    struct conf *conf = load(stderr, &tls);
    if (conf == NULL) {
        atomic_fetch_add(&proxy_info.reloads_failed, 1);
        log_error("main", "reload failed: keeping the running configuration");
        return;
    }
    if (conf->workers != M.nworkers)
        log_warn("main", "workers %u -> %u takes effect only after a restart", M.nworkers, conf->workers);
    M.reloading = true;
    M.loaded_tls = tls;
    upstream_groups_build(&M.loop, conf, on_groups, conf);
}

/* ---- shutdown ---- */

static void on_drain_timeout(uv_timer_t *t)
{
    log_warn("main", "shutdown_timeout reached: closing the connections still open");
    for (unsigned i = 0; i < M.nworkers; i++) {
        struct worker_msg *m = calloc(1, sizeof(*m));
        if (m == NULL)
            abort();
        m->type = WORKER_MSG_STOP;
        worker_post(&M.workers[i], m);
    }
}

static void begin_shutdown(bool force)
{
    if (M.draining && !force)
        force = true;
    if (!M.draining)
        log_info("main", "shutting down: draining connections");
    M.draining = true;
    health_stop(M.health);
    M.health = NULL;
    if (M.nworkers == 0) {
        uv_stop(&M.loop);
        return;
    }
    if (force) {
        on_drain_timeout(&M.drain_timer);
        return;
    }
    for (unsigned i = 0; i < M.nworkers; i++) {
        struct worker_msg *m = calloc(1, sizeof(*m));
        if (m == NULL)
            abort();
        m->type = WORKER_MSG_DRAIN;
        worker_post(&M.workers[i], m);
    }
    uint64_t timeout = M.gen ? M.gen->conf->shutdown_timeout_ms : 30000;
    uv_timer_start(&M.drain_timer, on_drain_timeout, timeout, 0);
}

static void on_worker_exited(uv_async_t *a)
{
    /* async sends coalesce: count the workers that are really done */
    if (atomic_load(&proxy_info.workers_exited) == M.nworkers && M.draining)
        uv_stop(&M.loop);
}

static void on_signal(uv_signal_t *s, int signum)
{
    if (signum == SIGHUP)
        reload();
    else if (signum == SIGUSR1)
        obs_reopen();
    else
        begin_shutdown(false);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: sluice [-c FILE] [-t] [-v] [-h]\n"
                 "  -c FILE  configuration file (default: the embedded demo configuration)\n"
                 "  -t       check the configuration, print it with every default filled in, and exit\n"
                 "  -v       print the version and exit\n"
                 "  -h       this help\n");
}

int main(int argc, char **argv)
{
    bool test_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c': M.conf_path = optarg; break;
        case 't': test_only = true; break;
        case 'v': printf("sluice %s\n", SLUICE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    tls_global_init();
    struct tlsgen *tls = NULL;
    struct conf *conf = load(stderr, &tls);
    if (conf == NULL) {
        fprintf(stderr, "sluice: configuration %s has errors\n", M.conf_path ? M.conf_path : "(embedded)");
        return 1;
    }
    if (test_only) {
        conf_print(conf, stdout);
        fprintf(stderr, "sluice: configuration %s is valid\n", M.conf_path ? M.conf_path : "(embedded)");
        tlsgen_free(tls);
        conf_unref(conf);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    log_set_level((enum log_level)conf->log_level);
    stats_init(conf->workers);
    proxy_info.started_ms = uv_hrtime() / 1000000;
    proxy_info.max_connections = conf->max_connections;
    uv_loop_init(&M.loop);
    uv_async_init(&M.loop, &M.worker_exited, on_worker_exited);
    proxy_info.worker_exited = &M.worker_exited;
    uv_timer_init(&M.loop, &M.drain_timer);
    uv_signal_init(&M.loop, &M.sig_term);
    uv_signal_init(&M.loop, &M.sig_int);
    uv_signal_init(&M.loop, &M.sig_hup);
    uv_signal_start(&M.sig_term, on_signal, SIGTERM);
    uv_signal_start(&M.sig_int, on_signal, SIGINT);
    uv_signal_start(&M.sig_hup, on_signal, SIGHUP);
    M.loaded_tls = tls;
    uv_signal_init(&M.loop, &M.sig_usr1);
    uv_signal_start(&M.sig_usr1, on_signal, SIGUSR1);
    upstream_groups_build(&M.loop, conf, on_groups, conf);
    uv_run(&M.loop, UV_RUN_DEFAULT);

    for (unsigned i = 0; i < M.nworkers; i++)
        pthread_join(M.workers[i].thread, NULL);
    obs_shutdown();
    free(M.workers);
    if (M.gen != NULL)
        proxy_gen_unref(M.gen);
    free_addrs(M.addrs, M.naddrs);
    uv_close((uv_handle_t *)&M.worker_exited, NULL);
    uv_close((uv_handle_t *)&M.drain_timer, NULL);
    uv_close((uv_handle_t *)&M.sig_term, NULL);
    uv_close((uv_handle_t *)&M.sig_int, NULL);
    uv_close((uv_handle_t *)&M.sig_hup, NULL);
    uv_close((uv_handle_t *)&M.sig_usr1, NULL);
    uv_run(&M.loop, UV_RUN_DEFAULT);
    uv_loop_close(&M.loop);
    cache_shutdown_all();
    limit_shutdown_all();
    if (M.exit_code == 0)
        log_info("main", "stopped");
    return M.exit_code;
}
