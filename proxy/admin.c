/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoints, served by worker 0 on the admin listener:
 * GET /health, /ready, /stats, /metrics (Prometheus), /dashboard.  Counters are read from every worker's slots with
 * relaxed loads (stats.h), so answering never stops a worker.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "common/redis.h"
#include "proxy/obs.h"
#include "proxy/proxy.h"

/* procfs is answered from kernel memory, never from a disk: reading it does
 * not stall the loop the way file I/O could. */
static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

struct cache_render {
    struct strbuf *sb;
    bool *first;
};

static void render_cache(struct cache *c, const char *name, void *arg)
{
    struct cache_render *r = arg;
    struct cache_stats st;
    cache_get_stats(c, &st);
    strbuf_puts(r->sb, *r->first ? "" : ",");
    *r->first = false;
    strbuf_json_string(r->sb, name);
    strbuf_printf(r->sb,
                  ":{\"objects\":%llu,\"bytes\":%llu,\"memory\":%llu,\"max_object\":%llu,\"inserts\":%llu,"
                  "\"evictions\":%llu,\"purged\":%llu,\"fills_aborted\":%llu}",
                  (unsigned long long)st.objects, (unsigned long long)st.bytes, (unsigned long long)st.memory,
                  (unsigned long long)st.max_object, (unsigned long long)st.inserts,
                  (unsigned long long)st.evictions, (unsigned long long)st.purged,
                  (unsigned long long)st.fills_aborted);
}

/* ---- purge: POST /cache/purge?url=U | prefix=P | tag=T | all=1 [&cache=NAME] ---- */

struct purge_req {
    const char *cache; /* NULL: every store */
    char kind;         /* 'u'rl, 'p'refix, 't'ag, 'a'll */
    char value[2048];
    size_t removed;
};

static void purge_one(struct cache *c, const char *name, void *arg)
{
    struct purge_req *p = arg;
    if (p->cache != NULL && strcmp(p->cache, name) != 0)
        return;
    switch (p->kind) {
    case 'u': p->removed += cache_purge_url(c, p->value, strlen(p->value)); break;
    case 'p': p->removed += cache_purge_prefix(c, p->value, strlen(p->value)); break;
    case 't': p->removed += cache_purge_tag(c, p->value); break;
    default: p->removed += cache_purge_all(c); break;
    }
}

static int hexval(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                             : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* The percent-decoded value of query parameter name, or false. */
static bool query_param(const char *query, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = query; p != NULL && *p != '\0'; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, name, nl) != 0 || p[nl] != '=')
            continue;
        size_t n = 0;
        for (const char *v = p + nl + 1; *v != '\0' && *v != '&' && n + 1 < cap; v++) {
            if (*v == '%' && hexval(v[1]) >= 0 && hexval(v[2]) >= 0) {
                out[n++] = (char)(hexval(v[1]) * 16 + hexval(v[2]));
                v += 2;
            } else {
                out[n++] = *v == '+' ? ' ' : *v;
            }
        }
        out[n] = '\0';
        return true;
    }
    return false;
}

static int handle_purge(const char *query, struct strbuf *body)
{
    struct purge_req p = {.kind = 0};
    char cache_name[256];
    if (query_param(query, "cache", cache_name, sizeof(cache_name)))
        p.cache = cache_name;
    if (query_param(query, "url", p.value, sizeof(p.value)))
        p.kind = 'u';
    else if (query_param(query, "prefix", p.value, sizeof(p.value)))
        p.kind = 'p';
    else if (query_param(query, "tag", p.value, sizeof(p.value)))
        p.kind = 't';
    else if (query_param(query, "all", p.value, sizeof(p.value)))
        p.kind = 'a';
    if (p.kind == 0 || (p.kind != 'a' && p.value[0] == '\0')) {
        strbuf_puts(body, "{\"error\":\"give one of url=, prefix=, tag= or all=1 (and optionally cache=NAME)\"}\n");
        return 400;
    }
    cache_foreach(purge_one, &p);
    strbuf_printf(body, "{\"removed\":%zu}\n", p.removed);
    return 200;
}

/* ---- limits: one snapshot each, rendered as JSON or Prometheus ---- */

struct limit_render {
    struct strbuf *sb;
    bool first;
    int family; /* Prometheus: the family being written */
};

static void limit_json(const struct limit_totals *t, void *arg)
{
    struct limit_render *r = arg;
    strbuf_puts(r->sb, r->first ? "" : ",");
    r->first = false;
    strbuf_json_string(r->sb, t->name);
    strbuf_printf(r->sb,
                  ":{\"allowed\":%llu,\"limited\":%llu,\"keys\":%llu,\"max_keys\":%llu,\"evictions\":%llu,"
                  "\"redis_errors\":%llu,\"fallbacks\":%llu}",
                  (unsigned long long)t->allowed, (unsigned long long)t->limited, (unsigned long long)t->keys,
                  (unsigned long long)t->max_keys, (unsigned long long)t->evictions,
                  (unsigned long long)t->redis_errors, (unsigned long long)t->fallbacks);
}

static void inflight_json(const struct limit_inflight_totals *t, void *arg)
{
    struct limit_render *r = arg;
    strbuf_puts(r->sb, r->first ? "" : ",");
    r->first = false;
    strbuf_json_string(r->sb, t->name);
    strbuf_printf(r->sb,
                  ":{\"max\":%u,\"queue\":%u,\"inflight\":%u,\"queued\":%u,\"admitted\":%llu,\"rejected\":%llu,"
                  "\"timeouts\":%llu}",
                  t->max, t->queue_max, t->inflight, t->queued, (unsigned long long)t->admitted,
                  (unsigned long long)t->rejected, (unsigned long long)t->timeouts);
}

static const struct {
    const char *name, *type, *help, *label;
    size_t offset;
} limit_families[] = {
    {"sluice_limit_requests_total", "counter", "Requests checked by a rate limit, by decision", "decision=\"allowed\"",
     offsetof(struct limit_totals, allowed)},
    {"sluice_limit_requests_total", NULL, NULL, "decision=\"limited\"", offsetof(struct limit_totals, limited)},
    {"sluice_limit_keys", "gauge", "Keys a limit holds now", NULL, offsetof(struct limit_totals, keys)},
    {"sluice_limit_max_keys", "gauge", "Keys a limit may hold", NULL, offsetof(struct limit_totals, max_keys)},
    {"sluice_limit_evictions_total", "counter", "Live keys forgotten to stay within max_keys", NULL,
     offsetof(struct limit_totals, evictions)},
    {"sluice_limit_redis_errors_total", "counter", "Global checks Redis could not answer", NULL,
     offsetof(struct limit_totals, redis_errors)},
    {"sluice_limit_fallbacks_total", "counter", "Checks decided by on_redis_error", NULL,
     offsetof(struct limit_totals, fallbacks)},
};

static void limit_prom(const struct limit_totals *t, void *arg)
{
    struct limit_render *r = arg;
    const char *label = limit_families[r->family].label;
    strbuf_printf(r->sb, "%s{limit=", limit_families[r->family].name);
    stats_prom_label_value(r->sb, t->name);
    strbuf_printf(r->sb, "%s%s} %llu\n", label ? "," : "", label ? label : "",
                  (unsigned long long)*(const uint64_t *)((const char *)t + limit_families[r->family].offset));
}

static const struct {
    const char *name, *type, *help;
    bool is_count; /* a uint64_t count, else an unsigned gauge */
    size_t offset;
} inflight_families[] = {
    {"sluice_inflight_max", "gauge", "max_inflight: requests allowed in flight", false,
     offsetof(struct limit_inflight_totals, max)},
    {"sluice_inflight", "gauge", "max_inflight: requests in flight now", false,
     offsetof(struct limit_inflight_totals, inflight)},
    {"sluice_inflight_queued", "gauge", "max_inflight: requests waiting now", false,
     offsetof(struct limit_inflight_totals, queued)},
    {"sluice_inflight_admitted_total", "counter", "max_inflight: requests let through", true,
     offsetof(struct limit_inflight_totals, admitted)},
    {"sluice_inflight_rejected_total", "counter", "max_inflight: requests refused with a full queue", true,
     offsetof(struct limit_inflight_totals, rejected)},
    {"sluice_inflight_timeouts_total", "counter", "max_inflight: requests that waited past queue_timeout", true,
     offsetof(struct limit_inflight_totals, timeouts)},
};

static void inflight_prom(const struct limit_inflight_totals *t, void *arg)
{
    struct limit_render *r = arg;
    const char *p = (const char *)t + inflight_families[r->family].offset;
    unsigned long long v = inflight_families[r->family].is_count ? *(const uint64_t *)p : *(const unsigned *)p;
    strbuf_printf(r->sb, "%s{name=", inflight_families[r->family].name);
    stats_prom_label_value(r->sb, t->name);
    strbuf_printf(r->sb, "} %llu\n", v);
}

static void render_limits_prom(struct strbuf *sb)
{
    struct limit_render r = {.sb = sb};
    uint64_t now = uv_hrtime();
    for (r.family = 0; r.family < (int)(sizeof(limit_families) / sizeof(limit_families[0])); r.family++) {
        if (limit_families[r.family].type != NULL)
            stats_prom_family(sb, limit_families[r.family].name, limit_families[r.family].type,
                              limit_families[r.family].help);
        limit_foreach(limit_prom, &r, now);
    }
    for (r.family = 0; r.family < (int)(sizeof(inflight_families) / sizeof(inflight_families[0])); r.family++) {
        stats_prom_family(sb, inflight_families[r.family].name, inflight_families[r.family].type,
                          inflight_families[r.family].help);
        limit_inflight_foreach(inflight_prom, &r);
    }
}

/* ---- upstream servers: health, balancing and breakers ---- */

static const char *const breaker_states[] = {"closed", "open", "half_open", "quota"};

static void prom_server_labels(struct strbuf *sb, const struct upstream_group *g, const struct upstream_target *t)
{
    strbuf_puts(sb, "{upstream=");
    stats_prom_label_value(sb, g->conf->name);
    strbuf_puts(sb, ",server=");
    stats_prom_label_value(sb, t->conf->name);
}

/* Families with one sample per server (or per server and state), written a
 * family at a time as the format asks. */
static void render_upstreams_prom(struct worker *w, struct strbuf *sb)
{
    const struct proxy_gen *gen = w->gen;
    uint64_t now = uv_now(&w->loop);
    static const char *const families[][3] = {
        {"sluice_upstream_server_up", "gauge", "1 when neither health checks nor passive health take it out"},
        {"sluice_upstream_server_inflight", "gauge", "Requests using the server now, all workers"},
        {"sluice_upstream_server_latency_ewma_seconds", "gauge", "Moving average of the time to a response head"},
        {"sluice_breaker_state", "gauge", "1 for the breaker's current state"},
        {"sluice_breaker_transitions_total", "counter", "Breaker state changes, by the state entered"},
        {"sluice_breaker_rejected_total", "counter", "Requests a breaker refused"},
    };
    for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
        stats_prom_family(sb, families[f][0], families[f][1], families[f][2]);
        for (size_t i = 0; i < gen->conf->nupstreams; i++) {
            const struct upstream_group *g = &gen->groups[i];
            for (size_t j = 0; j < g->ntargets; j++) {
                const struct upstream_target *t = &g->targets[j];
                struct upstream_server *srv = t->srv;
                struct breaker_counts bc;
                breaker_counts(&srv->breaker, &bc);
                enum breaker_state st = breaker_state(&srv->breaker, now);
                const uint64_t transitions[] = {bc.closed, bc.opened, bc.half_opened, bc.quota};
                switch (f) {
                case 0:
                case 1:
                case 2:
                    strbuf_puts(sb, families[f][0]);
                    prom_server_labels(sb, g, t);
                    if (f == 0)
                        strbuf_printf(sb, "} %d\n", upstream_server_is_down(srv, now) ? 0 : 1);
                    else if (f == 1)
                        strbuf_printf(sb, "} %u\n", atomic_load(&srv->inflight));
                    else
                        strbuf_printf(sb, "} %.6f\n", (double)atomic_load(&srv->ewma_us) / 1e6);
                    break;
                case 3:
                case 4:
                    for (int s = 0; s < 4; s++) {
                        strbuf_puts(sb, families[f][0]);
                        prom_server_labels(sb, g, t);
                        strbuf_printf(sb, ",state=\"%s\"} %llu\n", breaker_states[s],
                                      f == 3 ? (unsigned long long)(st == (enum breaker_state)s)
                                             : (unsigned long long)transitions[s]);
                    }
                    break;
                default:
                    strbuf_puts(sb, families[f][0]);
                    prom_server_labels(sb, g, t);
                    strbuf_printf(sb, "} %llu\n", (unsigned long long)bc.rejected);
                    break;
                }
            }
        }
    }
}

/* Balancing, health and breaker state of the servers of the running conf. */
static void render_upstreams(struct worker *w, struct strbuf *sb)
{
    static const char *const balances[] = {"round_robin", "least_conn", "p2c"};
    const struct proxy_gen *gen = w->gen;
    uint64_t now = uv_now(&w->loop);
    strbuf_puts(sb, "{");
    for (size_t i = 0; i < gen->conf->nupstreams; i++) {
        struct upstream_group *g = &gen->groups[i];
        const struct conf_breaker *cb = &g->conf->breaker;
        uint64_t first_tries, retries;
        retry_budget_counts(&g->budget, now, &first_tries, &retries);
        strbuf_puts(sb, i ? "," : "");
        strbuf_json_string(sb, g->conf->name);
        strbuf_printf(sb,
                      ":{\"balance\":\"%s\",\"breaker\":%s,\"retry_budget\":{\"window_s\":%d,\"requests\":%llu,"
                      "\"retries\":%llu},\"servers\":{",
                      balances[g->conf->balance], cb->enabled ? "true" : "false", RETRY_BUDGET_BUCKETS,
                      (unsigned long long)first_tries, (unsigned long long)retries);
        for (size_t j = 0; j < g->ntargets; j++) {
            struct upstream_server *srv = g->targets[j].srv;
            struct breaker_counts bc;
            breaker_counts(&srv->breaker, &bc);
            unsigned wreq = 0, wfail = 0;
            if (cb->enabled)
                breaker_window(&srv->breaker, cb, now, &wreq, &wfail);
            enum breaker_force forced = breaker_forced(&srv->breaker);
            strbuf_puts(sb, j ? "," : "");
            strbuf_json_string(sb, g->targets[j].conf->name);
            strbuf_printf(
                sb,
                ":{\"key\":\"%s/%s\",\"backup\":%s,\"weight\":%u,\"health\":\"%s\",\"passive_down\":%s,"
                "\"inflight\":%u,\"ewma_ms\":%.3f,\"breaker\":{\"state\":\"%s\",\"forced\":\"%s\",\"retry_in_ms\":%llu,"
                "\"window\":{\"requests\":%u,\"failures\":%u},\"opened\":%llu,\"half_opened\":%llu,\"closed\":%llu,"
                "\"quota\":%llu,\"rejected\":%llu}}",
                g->conf->name, g->targets[j].conf->name, g->targets[j].conf->backup ? "true" : "false",
                g->targets[j].conf->weight, atomic_load(&srv->health_down) ? "down" : "up",
                atomic_load(&srv->down_until_ms) > now ? "true" : "false", atomic_load(&srv->inflight),
                (double)atomic_load(&srv->ewma_us) / 1000.0,
                breaker_state_name(cb->enabled || forced != BREAKER_AUTO ? breaker_state(&srv->breaker, now)
                                                                          : BREAKER_CLOSED),
                forced == BREAKER_FORCE_OPEN ? "open" : forced == BREAKER_FORCE_CLOSED ? "closed" : "auto",
                (unsigned long long)breaker_wait_ms(&srv->breaker, now), wreq, wfail,
                (unsigned long long)bc.opened, (unsigned long long)bc.half_opened, (unsigned long long)bc.closed,
                (unsigned long long)bc.quota, (unsigned long long)bc.rejected);
        }
        strbuf_puts(sb, "}}");
    }
    strbuf_puts(sb, "}");
}

/* ---- POST /breaker?server=GROUP/HOST:PORT&state=open|closed|auto ---- */

static int handle_breaker(struct worker *w, const char *query, struct strbuf *body)
{
    static const char *const states[] = {"auto", "open", "closed"};
    char key[512], state[16];
    int force = -1;
    if (query_param(query, "state", state, sizeof(state)))
        for (int i = 0; i < 3; i++)
            if (strcmp(state, states[i]) == 0)
                force = i;
    if (!query_param(query, "server", key, sizeof(key)) || force < 0) {
        strbuf_puts(body, "{\"error\":\"give server=UPSTREAM/HOST:PORT and state=open, closed or auto\"}\n");
        return 400;
    }
    const struct proxy_gen *gen = w->gen;
    for (size_t i = 0; i < gen->conf->nupstreams; i++) {
        struct upstream_group *g = &gen->groups[i];
        for (size_t j = 0; j < g->ntargets; j++) {
            struct upstream_server *srv = g->targets[j].srv;
            if (strcmp(srv->key, key) != 0)
                continue;
            struct breaker_transition tr = {0};
            breaker_force(&srv->breaker, (enum breaker_force)force, uv_now(&w->loop), &tr);
            log_warn("admin", "breaker of %s forced %s", srv->key, states[force]);
            strbuf_printf(body, "{\"server\":\"%s\",\"forced\":\"%s\",\"state\":\"%s\"}\n", srv->key, states[force],
                          breaker_state_name(breaker_state(&srv->breaker, uv_now(&w->loop))));
            return 200;
        }
    }
    strbuf_puts(body, "{\"error\":\"no such server (see /stats upstreams: UPSTREAM/HOST:PORT)\"}\n");
    return 404;
}

static void render_stats(struct worker *w, struct strbuf *sb)
{
    uint64_t uptime_ms = uv_hrtime() / 1000000 - proxy_info.started_ms;
    strbuf_printf(sb,
                  "{\"version\":\"%s\",\"uptime_s\":%.3f,\"workers\":%u,\"conf_generation\":%u,"
                  "\"reloads\":{\"ok\":%u,\"failed\":%u},\"connections\":%u,"
                  "\"memory\":{\"rss_bytes\":%ld,\"io_buffers\":%zu,\"io_buffer_bytes\":%zu},",
                  SLUICE_VERSION, (double)uptime_ms / 1000.0, proxy_info.nworkers,
                  atomic_load(&proxy_info.generation), atomic_load(&proxy_info.reloads_ok),
                  atomic_load(&proxy_info.reloads_failed), atomic_load(&proxy_info.connections), rss_bytes(),
                  buf_allocated(), buf_allocated() * sizeof(struct buf));
    strbuf_puts(sb, "\"process\":");
    stats_render_json_kind(sb, "process");
    strbuf_puts(sb, ",\"routes\":");
    stats_render_json_kind(sb, "route");
    strbuf_puts(sb, ",\"servers\":");
    stats_render_json_kind(sb, "server");
    strbuf_puts(sb, ",\"upstreams\":");
    render_upstreams(w, sb);
    strbuf_puts(sb, ",\"caches\":{");
    bool first = true;
    struct cache_render r = {sb, &first};
    cache_foreach(render_cache, &r);
    struct cache_tier_stats ts;
    cache_tier_get_stats(&ts);
    strbuf_puts(sb, "},\"limits\":"); /* admission control (issue 5) */
    struct limit_render lr = {.sb = sb, .first = true};
    strbuf_puts(sb, "{");
    limit_foreach(limit_json, &lr, uv_hrtime());
    strbuf_puts(sb, "},\"max_inflight\":{");
    lr.first = true;
    limit_inflight_foreach(inflight_json, &lr);
    strbuf_puts(sb, "}");
    strbuf_printf(sb,
                  ",\"redis_tier\":{\"puts\":%llu,\"put_errors\":%llu,\"gets\":%llu,\"hits\":%llu,\"misses\":%llu,"
                  "\"get_errors\":%llu,\"bad_blobs\":%llu}",
                  (unsigned long long)ts.puts, (unsigned long long)ts.put_errors, (unsigned long long)ts.gets,
                  (unsigned long long)ts.hits, (unsigned long long)ts.misses, (unsigned long long)ts.get_errors,
                  (unsigned long long)ts.bad_blobs);
    strbuf_puts(sb, ",\"counters\":");
    stats_render_json_globals(sb);
    strbuf_puts(sb, "}\n");
}

/* ---- GET /metrics: the Prometheus text format ---- */

static void prom_gauge(struct strbuf *sb, const char *name, const char *type, const char *help, double v)
{
    stats_prom_family(sb, name, type, help);
    strbuf_printf(sb, "%s %.17g\n", name, v);
}

struct prom_caches {
    struct strbuf *sb;
    int pass; /* which family is being written */
};

static const struct {
    const char *name, *type, *help;
    size_t offset;
} cache_families[] = {
    {"sluice_cache_objects", "gauge", "Entries in the store", offsetof(struct cache_stats, objects)},
    {"sluice_cache_bytes", "gauge", "Bytes the entries take", offsetof(struct cache_stats, bytes)},
    {"sluice_cache_memory_bytes", "gauge", "The store's byte budget", offsetof(struct cache_stats, memory)},
    {"sluice_cache_inserts_total", "counter", "Entries stored", offsetof(struct cache_stats, inserts)},
    {"sluice_cache_evictions_total", "counter", "Entries evicted", offsetof(struct cache_stats, evictions)},
    {"sluice_cache_purged_total", "counter", "Entries purged", offsetof(struct cache_stats, purged)},
    {"sluice_cache_fills_aborted_total", "counter", "Fills given up", offsetof(struct cache_stats, fills_aborted)},
};

static void prom_cache(struct cache *c, const char *name, void *arg)
{
    struct prom_caches *p = arg;
    struct cache_stats st;
    cache_get_stats(c, &st);
    strbuf_printf(p->sb, "%s{cache=", cache_families[p->pass].name);
    stats_prom_label_value(p->sb, name);
    strbuf_printf(p->sb, "} %llu\n",
                  (unsigned long long)*(const uint64_t *)((const char *)&st + cache_families[p->pass].offset));
}

static void render_metrics(struct worker *w, struct strbuf *sb)
{
    uint64_t uptime_ms = uv_hrtime() / 1000000 - proxy_info.started_ms;
    prom_gauge(sb, "sluice_uptime_seconds", "gauge", "Time since start", (double)uptime_ms / 1000.0);
    prom_gauge(sb, "sluice_workers", "gauge", "Worker threads", proxy_info.nworkers);
    prom_gauge(sb, "sluice_conf_generation", "gauge", "Configurations published since start",
               atomic_load(&proxy_info.generation));
    stats_prom_family(sb, "sluice_reloads_total", "counter", "Configuration reloads by result");
    strbuf_printf(sb, "sluice_reloads_total{result=\"ok\"} %u\nsluice_reloads_total{result=\"failed\"} %u\n",
                  atomic_load(&proxy_info.reloads_ok), atomic_load(&proxy_info.reloads_failed));
    prom_gauge(sb, "sluice_connections", "gauge", "Client connections open", atomic_load(&proxy_info.connections));
    prom_gauge(sb, "sluice_resident_memory_bytes", "gauge", "Resident set size", (double)rss_bytes());
    prom_gauge(sb, "sluice_io_buffer_bytes", "gauge", "Bytes in 64 KiB I/O blocks",
               (double)(buf_allocated() * sizeof(struct buf)));
    struct prom_caches pc = {sb, 0};
    for (pc.pass = 0; pc.pass < (int)(sizeof(cache_families) / sizeof(cache_families[0])); pc.pass++) {
        stats_prom_family(sb, cache_families[pc.pass].name, cache_families[pc.pass].type,
                          cache_families[pc.pass].help);
        cache_foreach(prom_cache, &pc);
    }
    struct cache_tier_stats ts;
    cache_tier_get_stats(&ts);
    stats_prom_family(sb, "sluice_redis_tier_operations_total", "counter", "Redis tier operations by result");
    strbuf_printf(sb,
                  "sluice_redis_tier_operations_total{op=\"put\",result=\"ok\"} %llu\n"
                  "sluice_redis_tier_operations_total{op=\"put\",result=\"error\"} %llu\n"
                  "sluice_redis_tier_operations_total{op=\"get\",result=\"hit\"} %llu\n"
                  "sluice_redis_tier_operations_total{op=\"get\",result=\"miss\"} %llu\n"
                  "sluice_redis_tier_operations_total{op=\"get\",result=\"error\"} %llu\n",
                  (unsigned long long)(ts.puts - ts.put_errors), (unsigned long long)ts.put_errors,
                  (unsigned long long)ts.hits, (unsigned long long)ts.misses, (unsigned long long)ts.get_errors);
    render_upstreams_prom(w, sb);
    render_limits_prom(sb);
    stats_render_prometheus(sb);
}

/* ---- GET /ready ---- */

static int render_ready(struct worker *w, struct strbuf *sb)
{
    const struct conf *conf = w->gen->conf;
    unsigned listeners = 0;
    for (struct list *it = w->listeners.next; it != &w->listeners; it = it->next)
        listeners++;
    const char *redis = conf->redis == NULL ? "off" : w->redis != NULL && redis_conn_is_up(w->redis) ? "up" : "down";
    bool ready = !w->is_draining && listeners > 0;
    strbuf_printf(sb, "{\"status\":\"%s\",\"listeners\":%u,\"upstreams\":{", w->is_draining ? "draining"
                  : ready ? "ready" : "not_ready", listeners);
    /* an upstream with no server to send to makes the instance degraded, not
     * unready: every instance sees the same upstream, so taking this one out
     * of a load balancer would not help */
    bool degraded = false;
    uint64_t now = uv_now(&w->loop);
    for (size_t i = 0; i < conf->nupstreams; i++) {
        const struct upstream_group *g = &w->gen->groups[i];
        unsigned down = 0, open = 0;
        for (size_t j = 0; j < g->ntargets; j++) {
            struct upstream_server *srv = g->targets[j].srv;
            enum breaker_state st = breaker_state(&srv->breaker, now);
            if (upstream_server_is_down(srv, now))
                down++;
            else if ((g->conf->breaker.enabled || breaker_forced(&srv->breaker) != BREAKER_AUTO) &&
                     (st == BREAKER_OPEN || st == BREAKER_QUOTA))
                open++;
        }
        unsigned available = (unsigned)g->ntargets - down - open;
        degraded |= available == 0;
        strbuf_puts(sb, i ? "," : "");
        strbuf_json_string(sb, conf->upstreams[i].name);
        strbuf_printf(sb, ":{\"servers\":%zu,\"available\":%u,\"down\":%u,\"breaker_open\":%u}", g->ntargets,
                      available, down, open);
    }
    strbuf_printf(sb, "},\"degraded\":%s,\"redis\":\"%s\",\"analytics\":\"%s\"}\n", degraded ? "true" : "false",
                  redis, obs_analytics_state());
    return ready ? 200 : 503;
}

/* The bearer token from Authorization, or from ?token= (a browser opening
 * /dashboard cannot send a header; the page passes it on to /stats). */
static bool token_ok(const struct conf *conf, const char *auth, const char *path)
{
    if (conf->admin_token == NULL)
        return true;
    char from_query[256];
    const char *q = strchr(path, '?');
    const char *given;
    if (auth != NULL && strncasecmp(auth, "Bearer ", 7) == 0)
        given = auth + 7;
    else if (q != NULL && query_param(q + 1, "token", from_query, sizeof(from_query)))
        given = from_query;
    else
        return false;
    size_t a = strlen(given), b = strlen(conf->admin_token);
    /* compare in time independent of where the first difference is */
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < a && i < b; i++)
        diff |= (unsigned char)(given[i] ^ conf->admin_token[i]);
    return diff == 0;
}

int admin_handle(struct worker *w, const char *method, const char *path, const char *auth, struct strbuf *body,
                 const char **content_type)
{
    *content_type = "application/json";
    if (!token_ok(w->gen->conf, auth, path)) {
        strbuf_puts(body, "{\"error\":\"missing or wrong bearer token\"}\n");
        return 401;
    }
    size_t plen = strcspn(path, "?");
    bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (plen == 7 && strncmp(path, "/health", 7) == 0) {
        if (!is_get)
            goto not_allowed;
        strbuf_printf(body, "{\"status\":\"%s\"}\n", w->is_draining ? "draining" : "ok");
        return 200;
    }
    if (plen == 6 && strncmp(path, "/stats", 6) == 0) {
        if (!is_get)
            goto not_allowed;
        render_stats(w, body);
        return 200;
    }
    if (plen == 6 && strncmp(path, "/ready", 6) == 0) {
        if (!is_get)
            goto not_allowed;
        return render_ready(w, body);
    }
    if (plen == 10 && strncmp(path, "/dashboard", 10) == 0) {
        if (!is_get)
            goto not_allowed;
        *content_type = "text/html; charset=utf-8";
        strbuf_puts(body, admin_dashboard_html);
        return 200;
    }
    if (plen == 8 && strncmp(path, "/metrics", 8) == 0) {
        if (!is_get)
            goto not_allowed;
        *content_type = "text/plain; version=0.0.4; charset=utf-8";
        render_metrics(w, body);
        return 200;
    }
    if (plen == 12 && strncmp(path, "/cache/purge", 12) == 0) {
        if (strcmp(method, "POST") != 0 && strcmp(method, "PURGE") != 0)
            goto not_allowed;
        return handle_purge(path[plen] == '?' ? path + plen + 1 : "", body);
    }
    if (plen == 8 && strncmp(path, "/breaker", 8) == 0) {
        if (strcmp(method, "POST") != 0)
            goto not_allowed;
        return handle_breaker(w, path[plen] == '?' ? path + plen + 1 : "", body);
    }
    strbuf_puts(body, "{\"error\":\"not found\",\"endpoints\":[\"/health\",\"/ready\",\"/stats\",\"/metrics\",\"/dashboard\","
                      "\"/cache/purge\",\"/breaker\"]}\n");
    return 404;
not_allowed:
    strbuf_puts(body, "{\"error\":\"method not allowed\"}\n");
    return 405;
}
