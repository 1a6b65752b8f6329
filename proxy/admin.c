/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoints, served by worker 0 on the admin listener:
 * GET /health, GET /stats.  Counters are read from every worker's slots with
 * relaxed loads (stats.h), so answering never stops a worker.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/strbuf.h"
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
    strbuf_puts(sb, "}\n");
}

static bool token_ok(const struct conf *conf, const char *auth)
{
    if (conf->admin_token == NULL)
        return true;
    if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0)
        return false;
    const char *given = auth + 7;
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
    if (!token_ok(w->gen->conf, auth)) {
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
    strbuf_puts(body, "{\"error\":\"not found\",\"endpoints\":[\"/health\",\"/stats\"]}\n");
    return 404;
not_allowed:
    strbuf_puts(body, "{\"error\":\"method not allowed\"}\n");
    return 405;
}
