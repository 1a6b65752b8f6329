/* SPDX-License-Identifier: MIT */
/*
 * Workers: one thread, one loop, its own listening sockets and upstream
 * pool.  The main thread reaches a worker only through its inbox (a locked
 * list) and uv_async_send, which coalesces: on_inbox drains every message.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/outq.h"
#include "common/redis.h"
#include "proxy/conn.h"
#include "proxy/obs.h"

int listen_socket_open(const struct sockaddr *addr, socklen_t len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    /* libuv 1.44 has no reuseport flag: each worker binds its own socket to
     * the same address and the kernel spreads new connections over them */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 || bind(fd, addr, len) != 0 ||
        listen(fd, 4096) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

void worker_init(struct worker *w, unsigned id)
{
    memset(w, 0, sizeof(*w));
    w->id = id;
    pthread_mutex_init(&w->lock, NULL);
    list_init(&w->inbox);
    list_init(&w->listeners);
    list_init(&w->conns);
    list_init(&w->woken);
    list_init(&w->limit_woken);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    free(l->addr_text);
    free(l);
}

static void listener_close(struct listener *l)
{
    list_remove(&l->link);
    uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
}

static void close_listeners(struct worker *w)
{
    while (!list_is_empty(&w->listeners))
        listener_close(LIST_ENTRY(w->listeners.next, struct listener, link));
}

static void on_connection(uv_stream_t *s, int status)
{
    struct listener *l = s->data;
    if (status != 0) {
        LOG_RATELIMITED(LOG_WARN, "proxy", "accept on %s: %s", l->addr_text, uv_strerror(status));
        return;
    }
    conn_accept(l);
}

static void listener_open(struct worker *w, struct listen_fd *lf)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        close(lf->fd);
        free(lf->addr_text);
        return;
    }
    l->w = w;
    l->addr_text = lf->addr_text;
    l->is_admin = lf->is_admin;
    l->tcp.data = l;
    uv_tcp_init(&w->loop, &l->tcp);
    list_init(&l->link);
    list_push(&w->listeners, &l->link);
    int rc = uv_tcp_open(&l->tcp, lf->fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (rc != 0) {
        log_error("proxy", "listen on %s: %s", l->addr_text, uv_strerror(rc));
        listener_close(l);
    }
}

static bool gen_listens_on(const struct proxy_gen *g, const struct listener *l, unsigned worker_id)
{
    const struct conf *conf = g->conf;
    if (l->is_admin)
        return worker_id == 0 && conf->admin_enabled && strcmp(conf->admin_listen.text, l->addr_text) == 0;
    for (size_t i = 0; i < conf->nservers; i++)
        for (size_t j = 0; j < conf->servers[i].nlistens; j++)
            if (strcmp(conf->servers[i].listens[j].text, l->addr_text) == 0)
                return true;
    return false;
}

static void redis_drop(struct worker *w)
{
    if (w->redis != NULL)
        redis_conn_destroy(w->redis);
    w->redis = NULL;
    free(w->redis_url);
    w->redis_url = NULL;
}

/* One Redis connection per worker (hiredis contexts belong to one loop),
 * made again only when a reload changes the URL. */
static void redis_follow(struct worker *w, const struct conf_redis *r)
{
    if (r != NULL && w->redis_url != NULL && strcmp(r->url, w->redis_url) == 0)
        return;
    redis_drop(w);
    if (r == NULL)
        return;
    w->redis = redis_conn_create(&w->loop, r->host, r->port, r->db, r->timeout_ms);
    if (w->redis == NULL) {
        log_error("proxy", "%s:%d: redis %s: %s", r->pos.file, r->pos.line, r->url, strerror(errno));
        return;
    }
    w->redis_url = strdup(r->url);
}

void worker_maybe_stop(struct worker *w)
{
    if (!w->is_draining || w->nconns > 0 || w->is_stopping)
        return;
    w->is_stopping = true;
    obs_worker_stop(w);
    redis_drop(w);
    close_listeners(w);
    upstream_pool_destroy(w->pool);
    w->pool = NULL;
    /* the main thread may still post (the drain deadline): it must not
     * reach a closed handle */
    pthread_mutex_lock(&w->lock);
    w->is_inbox_closed = true;
    pthread_mutex_unlock(&w->lock);
    uv_close((uv_handle_t *)&w->async, NULL);
}

static void apply_gen(struct worker *w, struct worker_msg *m)
{
    struct proxy_gen *old = w->gen;
    w->gen = m->gen;
    redis_follow(w, w->gen->conf->redis);
    struct list *it = w->listeners.next;
    while (it != &w->listeners) {
        struct listener *l = LIST_ENTRY(it, struct listener, link);
        it = it->next;
        if (!gen_listens_on(w->gen, l, w->id))
            listener_close(l);
    }
    for (size_t i = 0; i < m->nfds; i++)
        listener_open(w, &m->fds[i]);
    free(m->fds);
    if (old != NULL)
        proxy_gen_unref(old);
}

static void on_inbox(uv_async_t *a)
{
    struct worker *w = a->data;
    struct list msgs;
    list_init(&msgs);
    pthread_mutex_lock(&w->lock);
    if (!list_is_empty(&w->inbox)) {
        msgs = w->inbox;
        msgs.next->prev = &msgs;
        msgs.prev->next = &msgs;
        list_init(&w->inbox);
    }
    pthread_mutex_unlock(&w->lock);
    while (!list_is_empty(&msgs)) {
        struct worker_msg *m = LIST_ENTRY(msgs.next, struct worker_msg, link);
        list_remove(&m->link);
        switch (m->type) {
        case WORKER_MSG_GEN:
            apply_gen(w, m);
            break;
        case WORKER_MSG_DRAIN:
            if (!w->is_draining) {
                w->is_draining = true;
                close_listeners(w);
                conn_close_all(w, false);
            }
            break;
        case WORKER_MSG_STOP:
            w->is_draining = true;
            close_listeners(w);
            conn_close_all(w, true);
            break;
        }
        free(m);
    }
    cached_run_woken(w);
    limited_run_woken(w);
    worker_maybe_stop(w);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    log_set_thread_worker((int)w->id);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->gen != NULL)
        proxy_gen_unref(w->gen);
    w->gen = NULL;
    uv_loop_close(&w->loop);
    buf_thread_cleanup();
    outq_thread_cleanup();
    atomic_fetch_add(&proxy_info.workers_exited, 1);
    uv_async_send(proxy_info.worker_exited);
    return NULL;
}

int worker_start(struct worker *w)
{
    int rc = uv_loop_init(&w->loop);
    if (rc != 0)
        return rc;
    w->async.data = w;
    uv_async_init(&w->loop, &w->async, on_inbox);
    w->pool = upstream_pool_create(&w->loop);
    obs_worker_start(w);
    w->proc = stats_slot(stats_set_get("process", "all"), w->id);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    return rc == 0 ? 0 : -rc;
}

void worker_wake(struct worker *w, struct list *woken, struct list *link, bool *is_queued)
{
    pthread_mutex_lock(&w->lock);
    if (!*is_queued) {
        *is_queued = true;
        list_push(woken, link);
    }
    pthread_mutex_unlock(&w->lock);
    uv_async_send(&w->async);
}

void worker_post(struct worker *w, struct worker_msg *msg)
{
    pthread_mutex_lock(&w->lock);
    if (w->is_inbox_closed) {
        /* a worker that has stopped: nothing left to tell it */
        pthread_mutex_unlock(&w->lock);
        for (size_t i = 0; i < msg->nfds; i++) {
            close(msg->fds[i].fd);
            free(msg->fds[i].addr_text);
        }
        free(msg->fds);
        if (msg->gen != NULL)
            proxy_gen_unref(msg->gen);
        free(msg);
        return;
    }
    list_push(&w->inbox, &msg->link);
    /* sent under the lock, so the handle cannot be closed in between */
    uv_async_send(&w->async);
    pthread_mutex_unlock(&w->lock);
}
