/* SPDX-License-Identifier: MIT */
/*
 * conf pass 2: the directive table applied to the tree that parse.c built,
 * the checks that need the whole picture, and the snapshot's life (printing,
 * refcount, free).
 *
 * Every directive is one row of `directives`: where it may appear, its
 * arguments and block, the parser that stores it into a field (offset) of
 * the enclosing struct within bounds, the printer that writes it back, and
 * its default written in conf syntax.  Defaults go through the same parsers
 * before a block's own directives, so a default can never be something the
 * parser would refuse, and conf_print walks the same rows, which is what
 * makes print -> load give an equal snapshot.  Checks that would be
 * quadratic (repeated names, listen conflicts) sort instead, so even a
 * hostile file of the largest accepted size loads quickly.
 * Main thread only, except conf_ref/conf_unref.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <llhttp.h>

#include "conf/conf_int.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define MS_SECOND 1000ull
#define MS_MINUTE (60 * MS_SECOND)
#define MS_HOUR   (60 * MS_MINUTE)
#define MS_DAY    (24 * MS_HOUR)
#define KIB       1024ull
#define MIB       (1024 * KIB)
#define GIB       (1024 * MIB)

/* longest TTL or stale window a cache rule may give */
#define MAX_TTL (365 * MS_DAY)

/* listen x server_name pairs the virtual-host check may expand to; far
 * above any real configuration, low enough to bound its memory */
#define MAX_ADDR_USES 1000000

enum ctx {
    CTX_MAIN = 1u << 0,
    CTX_ADMIN = 1u << 1,
    CTX_UPSTREAM = 1u << 2,
    CTX_SERVER = 1u << 3,
    CTX_ROUTE = 1u << 4,
    CTX_CACHE = 1u << 5,      /* top-level cache NAME { }: struct conf_cache */
    CTX_ROUTE_CACHE = 1u << 6, /* a route's cache NAME { }: struct conf_route_cache */
    CTX_REDIS = 1u << 7,       /* redis URL { }: struct conf_redis */
    CTX_LIMIT = 1u << 8,       /* limit NAME { }: struct conf_limit */
    CTX_ANALYTICS = 1u << 9    /* analytics URL { }: struct conf_analytics */
};

struct keyed;

/* Pass 2 state. */
struct build {
    struct conf_loader *ld;
    struct conf *conf;
    struct keyed *upstream_index; /* conf->upstreams sorted by name, made at the first route lookup */
    struct keyed *cache_index;    /* the same for conf->caches */
    struct keyed *limit_index;    /* the same for conf->limits */
    const struct conf_node *root; /* the whole tree, for checks across blocks */
};

struct directive;
typedef void (*directive_parse_cb)(struct build *b, const struct conf_node *n, const struct directive *d,
                                   void *obj);
typedef void (*directive_print_cb)(FILE *out, int indent, const struct directive *d, const void *obj);

/* A number with units: how it is read, printed and explained. */
struct unit {
    const char *suffix;
    uint64_t factor;
};

struct unit_kind {
    const char *what;
    const struct unit *units; /* largest first: printing takes the first that divides */
    size_t nunits;
    bool ignores_case;
    const char *zero;    /* how 0 prints */
    const char *expect;  /* the complaint about text that is no such value */
    const char *missing; /* the complaint about a bare number, NULL if one is fine */
};

/* One row per directive and context.  obj, the parser's and printer's last
 * argument, is the struct of the enclosing block: struct conf for main and
 * admin, then struct conf_upstream, conf_server or conf_route. */
struct directive {
    const char *name;
    unsigned ctx; /* CTX_* where it is allowed */
    enum conf_block_rule block;
    unsigned min_args, max_args; /* not counting the name */
    bool is_multi;               /* may be repeated in one block */
    bool is_early;               /* applied before the other rows of its block (upstreams before routes) */
    directive_parse_cb parse;
    directive_print_cb print; /* NULL: printed by another row (remove_header by set_header) */
    size_t offset;            /* of the target field in obj */
    uint64_t lo, hi;          /* bounds of numbers, sizes and durations */
    const struct unit_kind *kind;
    const char *const *words; /* enum values, NULL-terminated, by value */
    const char *def;          /* the default's arguments in conf syntax, NULL = none */
};

static const struct unit duration_units[] = {
    {"d", MS_DAY}, {"h", MS_HOUR}, {"m", MS_MINUTE}, {"s", MS_SECOND}, {"ms", 1},
};
static const struct unit size_units[] = {{"g", GIB}, {"m", MIB}, {"k", KIB}, {"", 1}};
static const struct unit number_units[] = {{"", 1}};

static const struct unit_kind durations = {
    .what = "duration",
    .units = duration_units,
    .nunits = ARRAY_SIZE(duration_units),
    .zero = "0s",
    .expect = "expected a number and a unit: ms, s, m, h or d",
    .missing = "a unit is required: ms, s, m, h or d",
};
static const struct unit_kind sizes = {
    .what = "size",
    .units = size_units,
    .nunits = ARRAY_SIZE(size_units),
    .ignores_case = true,
    .zero = "0",
    .expect = "expected a number with an optional k, m or g suffix",
};
static const struct unit_kind numbers = {
    .what = "number",
    .units = number_units,
    .nunits = ARRAY_SIZE(number_units),
    .zero = "0",
    .expect = "expected a number",
};

static const char *const on_off[] = {"off", "on", NULL};
static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const balances[] = {"round_robin", "least_conn", "p2c", NULL};
/* methods a route may cache, and their llhttp numbers */
static const char *const cache_method_names[] = {"GET", "HEAD", "POST", NULL};
static const unsigned cache_methods[] = {HTTP_GET, HTTP_HEAD, HTTP_POST};


_Static_assert(sizeof(enum conf_balance) == sizeof(unsigned), "enums are stored as unsigned");
_Static_assert(sizeof(enum conf_log_level) == sizeof(unsigned), "enums are stored as unsigned");

const char conf_embedded_default[] = "# The built-in configuration: sluice's demo origin on 127.0.0.1:8081\n"
                                     "# behind a listener on 127.0.0.1:8080.  `sluice -c FILE` replaces it.\n"
                                     "workers 1;\n"
                                     "admin { listen 127.0.0.1:9901; }\n"
                                     "upstream demo { server 127.0.0.1:8081; }\n"
                                     "server {\n"
                                     "    listen 127.0.0.1:8080;\n"
                                     "    route / { upstream demo; }\n"
                                     "}\n";

static void apply_defaults(struct build *b, unsigned ctx, void *obj);
static void apply_block(struct build *b, unsigned ctx, const struct conf_node *block, void *obj);
static void print_block(FILE *out, int indent, unsigned ctx, const void *obj);

/* --- values --- */

static void *field(void *obj, const struct directive *d)
{
    return (char *)obj + d->offset;
}

static const void *cfield(const void *obj, const struct directive *d)
{
    return (const char *)obj + d->offset;
}

/* Reads s as a kind of value; returns NULL, or why s is not one. */
static const char *unit_value(const char *s, const struct unit_kind *k, uint64_t *out)
{
    const char *p = s;
    uint64_t v = 0;
    bool is_overflow = false;
    if (!isdigit((unsigned char)*p))
        return k->expect;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - digit) / 10)
            is_overflow = true;
        else
            v = v * 10 + digit;
    }
    int (*cmp)(const char *, const char *) = k->ignores_case ? strcasecmp : strcmp;
    for (size_t i = 0; i < k->nunits; i++) {
        if (cmp(p, k->units[i].suffix) != 0)
            continue;
        if (is_overflow || v > UINT64_MAX / k->units[i].factor)
            return "too large";
        *out = v * k->units[i].factor;
        return NULL;
    }
    return *p == '\0' && k->missing ? k->missing : k->expect;
}

static const char *format_value(char buf[32], uint64_t v, const struct unit_kind *k)
{
    if (v == 0)
        return k->zero;
    for (size_t i = 0; i < k->nunits; i++) {
        if (v % k->units[i].factor == 0) {
            snprintf(buf, 32, "%" PRIu64 "%s", v / k->units[i].factor, k->units[i].suffix);
            break;
        }
    }
    return buf;
}

/* Reads text as a kind of value within lo..hi, reporting why not as "label: ...". */
static bool parse_bounded(struct build *b, const struct conf_node *n, const char *label, const char *text,
                          const struct unit_kind *k, uint64_t lo, uint64_t hi, uint64_t *out)
{
    uint64_t v;
    const char *why = unit_value(text, k, &v);
    if (why != NULL) {
        conf_report(b->ld, &n->pos, "%s: invalid %s \"%s\": %s", label, k->what, text, why);
        return false;
    }
    if (v < lo || v > hi) {
        char a[32], z[32];
        conf_report(b->ld, &n->pos, "%s: %s is out of range (%s..%s)", label, text, format_value(a, lo, k),
                    format_value(z, hi, k));
        return false;
    }
    *out = v;
    return true;
}

/* Returns the index of text in words, or reports and returns -1. */
static int choose(struct build *b, const struct conf_node *n, const char *label, const char *text,
                  const char *const *words)
{
    for (int i = 0; words[i] != NULL; i++)
        if (strcmp(text, words[i]) == 0)
            return i;
    char list[256];
    size_t len = 0;
    list[0] = '\0';
    for (int i = 0; words[i] != NULL && len < sizeof(list); i++) {
        const char *sep = i == 0 ? "" : words[i + 1] ? ", " : " or ";
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", sep, words[i]);
    }
    conf_report(b->ld, &n->pos, "%s: invalid value \"%s\" (expected %s)", label, text, list);
    return -1;
}

static bool port_value(const char *s, uint16_t *port)
{
    uint64_t v;
    if (unit_value(s, &numbers, &v) != NULL || v < 1 || v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

/* RFC 9110 token: a header name. */
static bool is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && strchr("!#$%&'*+-.^_`|~", *s) == NULL)
            return false;
    return true;
}

/* RFC 9110 field-value: no control characters but HTAB (so no CR, LF, NUL). */
static bool is_field_value(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* Visible ASCII only: printable characters of a bearer token or a URL path. */
static bool is_visible(const char *s, const char *except)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || strchr(except, c) != NULL)
            return false;
    }
    return true;
}

static bool is_name_char(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_';
}

static bool is_name(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!is_name_char((unsigned char)*s))
            return false;
    return true;
}

/* A host name, or an IPv4 literal (all digits and dots) that inet_pton takes. */
static bool is_host(const char *s)
{
    if (!is_name(s))
        return false;
    if (s[strspn(s, "0123456789.")] != '\0')
        return true;
    struct in_addr a;
    return inet_pton(AF_INET, s, &a) == 1;
}

/* Lowercase already: "example.com", "*.example.com". */
static bool is_server_name(const char *s)
{
    if (strncmp(s, "*.", 2) == 0)
        s += 2;
    return is_name(s) && strlen(s) <= 253 && s[0] != '.' && strstr(s, "..") == NULL;
}

/* --- numbers, sizes, durations, flags, enums --- */

static void parse_u64(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    uint64_t v;
    if (parse_bounded(b, n, n->argv[0], n->argv[1], d->kind, d->lo, d->hi, &v))
        *(uint64_t *)field(obj, d) = v;
}

static void print_u64(FILE *out, int indent, const struct directive *d, const void *obj)
{
    char buf[32];
    fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name,
            format_value(buf, *(const uint64_t *)cfield(obj, d), d->kind));
}

static void parse_unsigned(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    uint64_t v;
    if (parse_bounded(b, n, n->argv[0], n->argv[1], &numbers, d->lo, d->hi, &v))
        *(unsigned *)field(obj, d) = (unsigned)v;
}

static void print_unsigned(FILE *out, int indent, const struct directive *d, const void *obj)
{
    fprintf(out, "%*s%s %u;\n", indent * 4, "", d->name, *(const unsigned *)cfield(obj, d));
}

static void parse_flag(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    int v = choose(b, n, n->argv[0], n->argv[1], on_off);
    if (v >= 0)
        *(bool *)field(obj, d) = v;
}

static void print_flag(FILE *out, int indent, const struct directive *d, const void *obj)
{
    fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name, on_off[*(const bool *)cfield(obj, d)]);
}

static void parse_enum(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    int v = choose(b, n, n->argv[0], n->argv[1], d->words);
    if (v >= 0)
        *(unsigned *)field(obj, d) = (unsigned)v;
}

static void print_enum(FILE *out, int indent, const struct directive *d, const void *obj)
{
    fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name, d->words[*(const unsigned *)cfield(obj, d)]);
}

/* A word as the lexer reads it back: bare when it can be, else quoted. */
static void print_word(FILE *out, const char *s)
{
    bool is_bare = *s != '\0';
    for (const char *p = s; *p && is_bare; p++) {
        unsigned char c = (unsigned char)*p;
        is_bare = c > 0x20 && c != 0x7f && strchr("\";{}#\\$", c) == NULL;
    }
    if (is_bare) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (const char *p = s; *p; p++) {
        if (strchr("\"\\$", *p) != NULL)
            fputc('\\', out);
        fputc(*p, out);
    }
    fputc('"', out);
}

/* "name [arg] {", the rows of ctx for obj, "}": a block as conf_print writes it. */
static void print_nested(FILE *out, int indent, const char *name, const char *arg, unsigned ctx,
                         const void *obj)
{
    fprintf(out, "%*s%s ", indent * 4, "", name);
    if (arg != NULL) {
        print_word(out, arg);
        fputc(' ', out);
    }
    fputs("{\n", out);
    print_block(out, indent + 1, ctx, obj);
    fprintf(out, "%*s}\n", indent * 4, "");
}

/* --- main context --- */

static void parse_workers(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    if (strcmp(n->argv[1], "auto") != 0) {
        parse_unsigned(b, n, d, obj);
        return;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < (long)d->lo)
        cpus = (long)d->lo;
    if (cpus > (long)d->hi)
        cpus = (long)d->hi;
    *(unsigned *)field(obj, d) = (unsigned)cpus;
}

static void parse_error_log(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    if (strcmp(n->argv[1], "stderr") != 0)
        conf_report(b->ld, &n->pos, "error_log: only stderr is supported for now, not \"%s\"", n->argv[1]);
    int level = choose(b, n, n->argv[0], n->argv[2], log_levels);
    if (level >= 0)
        conf->log_level = (enum conf_log_level)level;
}

static void print_error_log(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    fprintf(out, "%*s%s stderr %s;\n", indent * 4, "", d->name, log_levels[conf->log_level]);
}

static void parse_admin(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    if (n->has_block != (n->argc == 1)) {
        conf_report(b->ld, &n->pos, "admin: expected \"admin { ... }\" or \"admin off;\"");
        return;
    }
    if (n->has_block) {
        conf->admin_enabled = true;
        apply_block(b, CTX_ADMIN, n, conf);
        return;
    }
    int on = choose(b, n, n->argv[0], n->argv[1], on_off);
    if (on >= 0)
        conf->admin_enabled = on;
}

static void print_admin(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    if (!conf->admin_enabled) {
        fprintf(out, "%*s%s off;\n", indent * 4, "", d->name);
        return;
    }
    fputc('\n', out);
    print_nested(out, indent, d->name, NULL, CTX_ADMIN, obj);
}

/* "IPv4:PORT", "[IPv6]:PORT", "*:PORT" or "PORT" (0.0.0.0) into l's address and text. */
static bool listen_addr(struct build *b, const struct conf_node *n, const char *text, struct conf_listen *l)
{
    char host[INET6_ADDRSTRLEN + 1] = "0.0.0.0";
    const char *port_text = text;
    bool is_v6 = false;
    const char *colon = strrchr(text, ':');
    if (colon != NULL) {
        const char *h = text;
        size_t hlen = (size_t)(colon - text);
        if (text[0] == '[' && hlen >= 2 && colon[-1] == ']') {
            h++;
            hlen -= 2;
            is_v6 = true;
        }
        if (hlen >= sizeof(host))
            goto bad;
        memcpy(host, h, hlen);
        host[hlen] = '\0';
        if (!is_v6 && strcmp(host, "*") == 0)
            strcpy(host, "0.0.0.0");
        port_text = colon + 1;
    }
    uint16_t port;
    if (!port_value(port_text, &port)) {
        if (colon == NULL)
            goto bad;
        conf_report(b->ld, &n->pos, "%s: invalid port in \"%s\" (1..65535)", n->argv[0], text);
        return false;
    }
    memset(&l->addr, 0, sizeof(l->addr));
    void *bytes;
    if (is_v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        l->addrlen = sizeof(*a);
        bytes = &a->sin6_addr;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&l->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        l->addrlen = sizeof(*a);
        bytes = &a->sin_addr;
    }
    int family = is_v6 ? AF_INET6 : AF_INET;
    if (inet_pton(family, host, bytes) != 1)
        goto bad;
    char canon[INET6_ADDRSTRLEN], buf[INET6_ADDRSTRLEN + 16];
    inet_ntop(family, bytes, canon, sizeof(canon));
    snprintf(buf, sizeof(buf), is_v6 ? "[%s]:%u" : "%s:%u", canon, port);
    l->text = conf_xstrdup(buf);
    return true;
bad:
    conf_report(b->ld, &n->pos,
                "%s: invalid address \"%s\" (expected IPv4:PORT, [IPv6]:PORT, *:PORT or PORT)", n->argv[0],
                text);
    return false;
}

static void parse_admin_listen(struct build *b, const struct conf_node *n, const struct directive *d,
                               void *obj)
{
    struct conf *conf = obj;
    struct conf_listen l = {.pos = n->pos};
    if (!listen_addr(b, n, n->argv[1], &l))
        return;
    free(conf->admin_listen.text);
    conf->admin_listen = l;
}

static void print_admin_listen(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name, conf->admin_listen.text);
}

static void parse_admin_token(struct build *b, const struct conf_node *n, const struct directive *d,
                              void *obj)
{
    struct conf *conf = obj;
    if (!is_visible(n->argv[1], "")) {
        conf_report(b->ld, &n->pos, "token: must be printable ASCII without spaces");
        return;
    }
    free(conf->admin_token);
    conf->admin_token = conf_xstrdup(n->argv[1]);
}

static void print_admin_token(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    if (conf->admin_token == NULL)
        return;
    fprintf(out, "%*s%s ", indent * 4, "", d->name);
    print_word(out, conf->admin_token);
    fputs(";\n", out);
}

/* The first directive called name in n's block, or NULL. */
static const struct conf_node *find_kid(const struct conf_node *n, const char *name)
{
    for (size_t i = 0; i < n->nkids; i++)
        if (strcmp(n->kids[i].argv[0], name) == 0)
            return &n->kids[i];
    return NULL;
}

static bool has_kid(const struct conf_node *n, const char *name)
{
    return find_kid(n, name) != NULL;
}

struct keyed {
    const char *key;
    size_t index;
};

static int cmp_keyed(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

static int cmp_key(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    return strcmp(x->key, y->key);
}

/* The strings at key_offset of an array of n structs of stride bytes, with
 * their indexes, sorted (equal keys in array order). */
static struct keyed *sort_keys(const void *base, size_t n, size_t stride, size_t key_offset)
{
    struct keyed *v = conf_xcalloc(n, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i].key = *(char *const *)((const char *)base + i * stride + key_offset);
        v[i].index = i;
    }
    qsort(v, n, sizeof(*v), cmp_keyed);
    return v;
}

/* For an array of n structs of stride bytes with a string at key_offset:
 * first[i] is the index of the first element with element i's key, or
 * SIZE_MAX when i is that first one.  Sorting keeps this O(n log n). */
static size_t *find_repeats(const void *base, size_t n, size_t stride, size_t key_offset)
{
    struct keyed *v = sort_keys(base, n, stride, key_offset);
    size_t *first = conf_xcalloc(n, sizeof(*first));
    for (size_t i = 0, g = 0; i < n; i++) {
        if (i > 0 && strcmp(v[i].key, v[g].key) == 0) {
            first[v[i].index] = v[g].index;
        } else {
            g = i;
            first[v[i].index] = SIZE_MAX;
        }
    }
    free(v);
    return first;
}

/* Reports every element whose key repeats an earlier one's, at its conf_pos. */
static void report_repeats(struct build *b, const char *what, const void *base, size_t n, size_t stride,
                           size_t key_offset, size_t pos_offset)
{
    size_t *first = find_repeats(base, n, stride, key_offset);
    for (size_t i = 0; i < n; i++) {
        if (first[i] == SIZE_MAX)
            continue;
        const char *elem = (const char *)base + i * stride;
        const struct conf_pos *pos = (const struct conf_pos *)(elem + pos_offset);
        const struct conf_pos *was =
            (const struct conf_pos *)((const char *)base + first[i] * stride + pos_offset);
        conf_report(b->ld, pos, "%s \"%s\" is repeated (first at %s:%d)", what,
                    *(char *const *)(elem + key_offset), was->file, was->line);
    }
    free(first);
}

#define REPORT_REPEATS(b, what, array, n, key)                                                               \
    report_repeats(b, what, array, n, sizeof(*(array)), offsetof(__typeof__(*(array)), key),                 \
                   offsetof(__typeof__(*(array)), pos))

/* Reports, at n, each element of a list given in n whose key repeats an
 * earlier one's as "label: what "key" is repeated"; returns whether any did. */
static bool report_list_repeats(struct build *b, const struct conf_node *n, const char *what,
                                const void *base, size_t count, size_t stride, size_t key_offset)
{
    size_t *first = find_repeats(base, count, stride, key_offset);
    bool has_repeats = false;
    for (size_t i = 0; i < count; i++) {
        if (first[i] == SIZE_MAX)
            continue;
        has_repeats = true;
        conf_report(b->ld, &n->pos, "%s: %s \"%s\" is repeated", n->argv[0], what,
                    *(char *const *)((const char *)base + i * stride + key_offset));
    }
    free(first);
    return has_repeats;
}

/* The index of the element of array whose string at key_offset is name, or
 * SIZE_MAX.  *index sorts the array at the first call, so the array must be
 * complete by then: upstream and cache rows are early, routes see them all. */
static size_t find_named(struct keyed **index, const void *base, size_t n, size_t stride, size_t key_offset,
                         const char *name)
{
    if (n == 0)
        return SIZE_MAX;
    if (*index == NULL)
        *index = sort_keys(base, n, stride, key_offset);
    const struct keyed *hit = bsearch(&(struct keyed){.key = name}, *index, n, sizeof(**index), cmp_key);
    return hit ? hit->index : SIZE_MAX;
}

#define FIND_NAMED(index, array, n, key, name)                                                               \
    find_named(index, array, n, sizeof(*(array)), offsetof(__typeof__(*(array)), key), name)

/* Names of upstreams and caches. */
static void check_name(struct build *b, const struct conf_node *n)
{
    if (!is_name(n->argv[1]))
        conf_report(b->ld, &n->pos, "%s: invalid name \"%s\" (letters, digits, \"_\", \"-\" and \".\")",
                    n->argv[0], n->argv[1]);
}

/* --- upstream --- */

static void parse_upstream(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    const char *name = n->argv[1];
    check_name(b, n);
    struct conf_upstream *u = CONF_PUSH(conf->upstreams, conf->nupstreams);
    u->name = conf_xstrdup(name);
    u->pos = n->pos;
    apply_defaults(b, CTX_UPSTREAM, u);
    apply_block(b, CTX_UPSTREAM, n, u);
    size_t nbackup = 0;
    for (size_t i = 0; i < u->nservers; i++)
        nbackup += u->servers[i].backup;
    if (!has_kid(n, "server"))
        conf_report(b->ld, &n->pos, "upstream \"%s\" has no server", name);
    else if (u->nservers > 0 && nbackup == u->nservers)
        conf_report(b->ld, &n->pos, "upstream \"%s\" has only backup servers", name);
    if ((u->tls_cert == NULL) != (u->tls_key == NULL))
        conf_report(b->ld, &n->pos, "upstream \"%s\": tls_cert and tls_key go together", name);
    REPORT_REPEATS(b, "server", u->servers, u->nservers, name);
    if (u->nservers > CONF_MAX_UPSTREAM_SERVERS) /* the balancing pick keeps its candidates on the stack */
        conf_report(b->ld, &n->pos, "upstream \"%s\" has %zu servers (at most %d)", name, u->nservers,
                    CONF_MAX_UPSTREAM_SERVERS);
}

static void print_upstreams(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    for (size_t i = 0; i < conf->nupstreams; i++) {
        fputc('\n', out);
        print_nested(out, indent, d->name, conf->upstreams[i].name, CTX_UPSTREAM, &conf->upstreams[i]);
    }
}

/* "HOST:PORT" or "[IPv6]:PORT"; *host gets the host without brackets. */
static bool host_port(const char *text, char **host, uint16_t *port, bool *is_v6)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || !port_value(colon + 1, port))
        return false;
    const char *h = text;
    size_t hlen = (size_t)(colon - text);
    *is_v6 = text[0] == '[' && hlen >= 2 && colon[-1] == ']';
    if (*is_v6) {
        h++;
        hlen -= 2;
    }
    char buf[254];
    if (hlen == 0 || hlen >= sizeof(buf))
        return false;
    memcpy(buf, h, hlen);
    buf[hlen] = '\0';
    struct in6_addr a6;
    if (*is_v6 ? inet_pton(AF_INET6, buf, &a6) != 1 : !is_host(buf))
        return false;
    *host = conf_xstrdup(buf);
    return true;
}

static void parse_upstream_server(struct build *b, const struct conf_node *n, const struct directive *d,
                                  void *obj)
{
    struct conf_upstream *u = obj;
    char *host = NULL;
    uint16_t port = 0;
    bool is_v6 = false, is_ok = true, is_backup = false, is_tls = false;
    unsigned weight = 1;
    if (!host_port(n->argv[1], &host, &port, &is_v6)) {
        conf_report(b->ld, &n->pos, "server: invalid address \"%s\" (expected HOST:PORT or [IPv6]:PORT)",
                    n->argv[1]);
        is_ok = false;
    }
    for (size_t i = 2; i < n->argc; i++) {
        const char *a = n->argv[i];
        uint64_t v;
        if (strncmp(a, "weight=", 7) == 0) {
            if (parse_bounded(b, n, "server weight", a + 7, &numbers, 1, 1000, &v))
                weight = (unsigned)v;
            else
                is_ok = false;
        } else if (strcmp(a, "backup") == 0) {
            is_backup = true;
        } else if (strcmp(a, "tls") == 0) {
            is_tls = true;
        } else {
            conf_report(b->ld, &n->pos, "server: unknown parameter \"%s\"", a);
            is_ok = false;
        }
    }
    if (!is_ok) {
        free(host);
        return;
    }
    struct conf_upstream_server *s = CONF_PUSH(u->servers, u->nservers);
    size_t size = strlen(host) + sizeof("[]:65535");
    s->name = conf_xcalloc(1, size);
    snprintf(s->name, size, is_v6 ? "[%s]:%u" : "%s:%u", host, port);
    s->host = host;
    s->port = port;
    s->weight = weight;
    s->backup = is_backup;
    s->tls = is_tls;
    s->pos = n->pos;
}

static void print_upstream_servers(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_upstream *u = obj;
    for (size_t i = 0; i < u->nservers; i++) {
        const struct conf_upstream_server *s = &u->servers[i];
        fprintf(out, "%*s%s %s weight=%u%s%s;\n", indent * 4, "", d->name, s->name, s->weight,
                s->backup ? " backup" : "", s->tls ? " tls" : "");
    }
}


static bool status_spec(const char *s, size_t len, unsigned *lo, unsigned *hi)
{
    if (len != 3 || s[0] < '1' || s[0] > '5')
        return false;
    unsigned hundreds = (unsigned)(s[0] - '0') * 100;
    if (tolower((unsigned char)s[1]) == 'x' && tolower((unsigned char)s[2]) == 'x') {
        *lo = hundreds;
        *hi = hundreds + 99;
        return true;
    }
    if (!isdigit((unsigned char)s[1]) || !isdigit((unsigned char)s[2]))
        return false;
    *lo = *hi = hundreds + (unsigned)(s[1] - '0') * 10 + (unsigned)(s[2] - '0');
    return true;
}

/* "on=connect,timeout,reset,502,5xx": conditions and statuses.  allow_words
 * is false where only statuses make sense (a breaker). */
static bool parse_on_list(struct build *b, const struct conf_node *n, const char *list, bool allow_words,
                          unsigned *words, struct conf_status_set *set)
{
    static const char *const names[] = {"connect", "timeout", "reset", NULL};
    memset(set, 0, sizeof(*set));
    if (words != NULL)
        *words = 0;
    char item[32];
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof(item)) {
            conf_report(b->ld, &n->pos, "%s: invalid on= list \"%s\"", n->argv[0], list);
            return false;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        p += len + (p[len] == ',');
        unsigned lo, hi;
        int w = -1;
        for (int i = 0; allow_words && names[i] != NULL; i++)
            if (strcmp(item, names[i]) == 0)
                w = i;
        if (w >= 0) {
            *words |= 1u << w;
        } else if (status_spec(item, len, &lo, &hi) && lo >= 400) {
            for (unsigned st = lo; st <= hi; st++)
                set->bits[st / 64] |= 1ull << (st % 64);
        } else {
            conf_report(b->ld, &n->pos, "%s: invalid on= item \"%s\" (expected %sa 4xx or 5xx status)", n->argv[0],
                        item, allow_words ? "connect, timeout, reset or " : "");
            return false;
        }
    }
    return true;
}

static void print_on_list(FILE *out, unsigned words, const struct conf_status_set *set)
{
    static const char *const names[] = {"connect", "timeout", "reset"};
    const char *sep = " on=";
    for (unsigned i = 0; i < ARRAY_SIZE(names); i++) {
        if (words & (1u << i)) {
            fprintf(out, "%s%s", sep, names[i]);
            sep = ",";
        }
    }
    for (unsigned st = 400; st < 600; st++) {
        if (CONF_STATUS_HAS(set, st)) {
            fprintf(out, "%s%u", sep, st);
            sep = ",";
        }
    }
}

/* The value after "name=" when a starts with it, else NULL. */
static const char *param(const char *a, const char *name)
{
    size_t len = strlen(name);
    return strncmp(a, name, len) == 0 && a[len] == '=' ? a + len + 1 : NULL;
}

/* "P%" */
static bool parse_percent(struct build *b, const struct conf_node *n, const char *label, const char *text,
                          unsigned *out)
{
    size_t len = strlen(text);
    char num[16];
    uint64_t v;
    if (len < 2 || len >= sizeof(num) || text[len - 1] != '%') {
        conf_report(b->ld, &n->pos, "%s: invalid percentage \"%s\" (expected N%%)", label, text);
        return false;
    }
    memcpy(num, text, len - 1);
    num[len - 1] = '\0';
    if (!parse_bounded(b, n, label, num, &numbers, 0, 100, &v))
        return false;
    *out = (unsigned)v;
    return true;
}

static void parse_retry(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_retry *r = &((struct conf_upstream *)obj)->retry;
    uint64_t v;
    if (parse_bounded(b, n, "retry", n->argv[1], &numbers, 0, 10, &v))
        r->tries = (unsigned)v;
    r->on = CONF_RETRY_CONNECT;
    memset(&r->on_status, 0, sizeof(r->on_status));
    for (size_t i = 2; i < n->argc; i++) {
        const char *a = n->argv[i], *val;
        if ((val = param(a, "on")) != NULL) {
            parse_on_list(b, n, val, true, &r->on, &r->on_status);
        } else if ((val = param(a, "backoff")) != NULL) {
            const char *dots = strstr(val, "..");
            char base[32];
            size_t blen = dots ? (size_t)(dots - val) : 0;
            if (dots == NULL || blen >= sizeof(base)) {
                conf_report(b->ld, &n->pos, "retry: invalid backoff \"%s\" (expected BASE..CAP, e.g. 100ms..2s)",
                            val);
                continue;
            }
            memcpy(base, val, blen);
            base[blen] = '\0';
            uint64_t lo, hi;
            if (!parse_bounded(b, n, "retry backoff", base, &durations, 0, MS_HOUR, &lo) ||
                !parse_bounded(b, n, "retry backoff", dots + 2, &durations, 0, MS_HOUR, &hi))
                continue;
            if (lo > hi) {
                conf_report(b->ld, &n->pos, "retry: backoff base %s is above its cap %s", base, dots + 2);
                continue;
            }
            r->backoff_base_ms = lo;
            r->backoff_cap_ms = hi;
        } else {
            conf_report(b->ld, &n->pos, "retry: unknown parameter \"%s\" (on=, backoff=)", a);
        }
    }
}

static void print_retry(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_retry *r = &((const struct conf_upstream *)obj)->retry;
    char a[32], z[32];
    fprintf(out, "%*sretry %u", indent * 4, "", r->tries);
    print_on_list(out, r->on, &r->on_status);
    fprintf(out, " backoff=%s..%s;\n", format_value(a, r->backoff_base_ms, &durations),
            format_value(z, r->backoff_cap_ms, &durations));
}

static void parse_retry_budget(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_retry *r = &((struct conf_upstream *)obj)->retry;
    parse_percent(b, n, "retry_budget", n->argv[1], &r->budget_pct);
    for (size_t i = 2; i < n->argc; i++) {
        const char *val = param(n->argv[i], "min");
        size_t len = val ? strlen(val) : 0;
        char num[16];
        uint64_t v;
        if (val == NULL || len < 3 || len >= sizeof(num) || strcmp(val + len - 2, "/s") != 0) {
            conf_report(b->ld, &n->pos, "retry_budget: invalid parameter \"%s\" (expected min=N/s)", n->argv[i]);
            continue;
        }
        memcpy(num, val, len - 2);
        num[len - 2] = '\0';
        if (parse_bounded(b, n, "retry_budget min", num, &numbers, 0, 1000000, &v))
            r->budget_min_per_s = (unsigned)v;
    }
}

static void print_retry_budget(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_retry *r = &((const struct conf_upstream *)obj)->retry;
    fprintf(out, "%*sretry_budget %u%% min=%u/s;\n", indent * 4, "", r->budget_pct, r->budget_min_per_s);
}

static void parse_breaker(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_breaker *br = &((struct conf_upstream *)obj)->breaker;
    *br = (struct conf_breaker){
        .enabled = true,
        .failures = 5,
        .ratio_pct = 50,
        .window_ms = 30 * MS_SECOND,
        .min_requests = 20,
        .open_ms = 30 * MS_SECOND,
        .max_open_ms = 10 * MS_MINUTE,
        .half_open = 3,
    };
    static const unsigned default_on[] = {429, 500, 502, 503, 504};
    for (size_t i = 0; i < ARRAY_SIZE(default_on); i++)
        br->on.bits[default_on[i] / 64] |= 1ull << (default_on[i] % 64);
    for (size_t i = 1; i < n->argc; i++) {
        const char *a = n->argv[i], *val;
        uint64_t v;
        if (strcmp(a, "off") == 0 && n->argc == 2) {
            br->enabled = false;
        } else if (strcmp(a, "on") == 0 && n->argc == 2) {
            continue;
        } else if ((val = param(a, "failures")) != NULL) {
            if (parse_bounded(b, n, "breaker failures", val, &numbers, 0, 100000, &v))
                br->failures = (unsigned)v;
        } else if ((val = param(a, "ratio")) != NULL) {
            parse_percent(b, n, "breaker ratio", val, &br->ratio_pct);
        } else if ((val = param(a, "window")) != NULL) {
            parse_bounded(b, n, "breaker window", val, &durations, MS_SECOND / 10, MS_DAY, &br->window_ms);
        } else if ((val = param(a, "min")) != NULL) {
            if (parse_bounded(b, n, "breaker min", val, &numbers, 1, 10000000, &v))
                br->min_requests = (unsigned)v;
        } else if ((val = param(a, "open")) != NULL) {
            parse_bounded(b, n, "breaker open", val, &durations, 1, MS_DAY, &br->open_ms);
        } else if ((val = param(a, "max_open")) != NULL) {
            parse_bounded(b, n, "breaker max_open", val, &durations, 1, 7 * MS_DAY, &br->max_open_ms);
        } else if ((val = param(a, "half_open")) != NULL) {
            if (parse_bounded(b, n, "breaker half_open", val, &numbers, 1, 1000, &v))
                br->half_open = (unsigned)v;
        } else if ((val = param(a, "on")) != NULL) {
            parse_on_list(b, n, val, false, NULL, &br->on);
        } else {
            conf_report(b->ld, &n->pos,
                        "breaker: unknown parameter \"%s\" (failures=, ratio=, window=, min=, open=, max_open=, "
                        "half_open=, on=, or a lone on/off)",
                        a);
        }
    }
    if (br->max_open_ms < br->open_ms)
        conf_report(b->ld, &n->pos, "breaker: max_open is shorter than open");
    if (br->enabled && br->failures == 0 && br->ratio_pct == 0)
        conf_report(b->ld, &n->pos, "breaker: failures=0 and ratio=0%% would never open it (say `breaker off`)");
}

static void print_breaker(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_breaker *br = &((const struct conf_upstream *)obj)->breaker;
    if (!br->enabled) {
        fprintf(out, "%*sbreaker off;\n", indent * 4, "");
        return;
    }
    char w[32], o[32], m[32];
    fprintf(out, "%*sbreaker failures=%u ratio=%u%% window=%s min=%u open=%s max_open=%s half_open=%u", indent * 4,
            "", br->failures, br->ratio_pct, format_value(w, br->window_ms, &durations), br->min_requests,
            format_value(o, br->open_ms, &durations), format_value(m, br->max_open_ms, &durations), br->half_open);
    print_on_list(out, 0, &br->on);
    fputs(";\n", out);
}

static void parse_health_check(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_health_check *h = &((struct conf_upstream *)obj)->health;
    const char *path = n->argv[1];
    if (path[0] != '/' || !is_visible(path, "#")) {
        conf_report(b->ld, &n->pos, "health_check: invalid path \"%s\" (must start with \"/\", no spaces)", path);
        return;
    }
    *h = (struct conf_health_check){.interval_ms = 5 * MS_SECOND, .timeout_ms = 2 * MS_SECOND, .rise = 2, .fall = 3};
    for (size_t i = 2; i < n->argc; i++) {
        const char *a = n->argv[i], *val;
        uint64_t v;
        if ((val = param(a, "interval")) != NULL) {
            parse_bounded(b, n, "health_check interval", val, &durations, 10, MS_DAY, &h->interval_ms);
        } else if ((val = param(a, "timeout")) != NULL) {
            parse_bounded(b, n, "health_check timeout", val, &durations, 1, MS_HOUR, &h->timeout_ms);
        } else if ((val = param(a, "rise")) != NULL) {
            if (parse_bounded(b, n, "health_check rise", val, &numbers, 1, 100, &v))
                h->rise = (unsigned)v;
        } else if ((val = param(a, "fall")) != NULL) {
            if (parse_bounded(b, n, "health_check fall", val, &numbers, 1, 100, &v))
                h->fall = (unsigned)v;
        } else {
            conf_report(b->ld, &n->pos, "health_check: unknown parameter \"%s\" (interval=, timeout=, rise=, fall=)",
                        a);
        }
    }
    h->path = conf_xstrdup(path);
}

static void print_health_check(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_health_check *h = &((const struct conf_upstream *)obj)->health;
    if (h->path == NULL)
        return;
    char i[32], t[32];
    fprintf(out, "%*shealth_check ", indent * 4, "");
    print_word(out, h->path);
    fprintf(out, " interval=%s timeout=%s rise=%u fall=%u;\n", format_value(i, h->interval_ms, &durations),
            format_value(t, h->timeout_ms, &durations), h->rise, h->fall);
}

/* tls_ca / tls_cert / tls_key: a file, relative to the conf file that names it. */
static void parse_tls_file(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    char **dst = field(obj, d);
    if (n->argv[1][0] == '\0') {
        conf_report(b->ld, &n->pos, "%s: empty file name", n->argv[0]);
        return;
    }
    free(*dst);
    *dst = conf_path_resolve(n->pos.file, n->argv[1]);
}

static void parse_tls_sni(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    char **dst = field(obj, d);
    if (!is_host(n->argv[1])) {
        conf_report(b->ld, &n->pos, "tls_sni: invalid host name \"%s\"", n->argv[1]);
        return;
    }
    free(*dst);
    *dst = conf_xstrdup(n->argv[1]);
}

static void print_tls_string(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const char *v = *(char *const *)cfield(obj, d);
    if (v == NULL)
        return;
    fprintf(out, "%*s%s ", indent * 4, "", d->name);
    print_word(out, v);
    fputs(";\n", out);
}

/* --- server --- */

static void parse_listen(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_server *s = obj;
    struct conf_listen l = {.pos = n->pos};
    bool is_ok = listen_addr(b, n, n->argv[1], &l);
    const char *cert = NULL, *key = NULL;
    for (size_t i = 2; i < n->argc; i++) {
        const char *a = n->argv[i];
        if (strcmp(a, "tls") == 0) {
            l.tls = true;
        } else if (strncmp(a, "cert=", 5) == 0) {
            cert = a + 5;
        } else if (strncmp(a, "key=", 4) == 0) {
            key = a + 4;
        } else {
            conf_report(b->ld, &n->pos, "listen: unknown parameter \"%s\"", a);
            is_ok = false;
        }
    }
    if (l.tls && (cert == NULL || *cert == '\0' || key == NULL || *key == '\0')) {
        conf_report(b->ld, &n->pos, "listen: tls needs cert=FILE and key=FILE");
        is_ok = false;
    } else if (!l.tls && (cert != NULL || key != NULL)) {
        conf_report(b->ld, &n->pos, "listen: cert= and key= need tls");
        is_ok = false;
    }
    if (!is_ok) {
        free(l.text);
        return;
    }
    if (l.tls) {
        /* like includes, relative to the file that names them */
        l.tls_cert = conf_path_resolve(n->pos.file, cert);
        l.tls_key = conf_path_resolve(n->pos.file, key);
    }
    *CONF_PUSH(s->listens, s->nlistens) = l;
}

static void print_listens(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_server *s = obj;
    for (size_t i = 0; i < s->nlistens; i++) {
        const struct conf_listen *l = &s->listens[i];
        fprintf(out, "%*s%s %s", indent * 4, "", d->name, l->text);
        if (l->tls) {
            fputs(" tls cert=", out);
            print_word(out, l->tls_cert);
            fputs(" key=", out);
            print_word(out, l->tls_key);
        }
        fputs(";\n", out);
    }
}

static void parse_server_name(struct build *b, const struct conf_node *n, const struct directive *d,
                              void *obj)
{
    struct conf_server *s = obj;
    for (size_t i = 1; i < n->argc; i++) {
        char *name = conf_xstrdup(n->argv[i]);
        for (char *p = name; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (!is_server_name(name)) {
            conf_report(b->ld, &n->pos, "server_name: invalid name \"%s\"", n->argv[i]);
            free(name);
            continue;
        }
        *CONF_PUSH(s->names, s->nnames) = name;
    }
}

static void print_server_names(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_server *s = obj;
    if (s->nnames == 0)
        return;
    fprintf(out, "%*s%s", indent * 4, "", d->name);
    for (size_t i = 0; i < s->nnames; i++)
        fprintf(out, " %s", s->names[i]);
    fputs(";\n", out);
}

static void parse_process_time_header(struct build *b, const struct conf_node *n, const struct directive *d,
                                      void *obj)
{
    struct conf_server *s = obj;
    const char *v = n->argv[1];
    if (strcmp(v, "off") != 0 && !is_token(v)) {
        conf_report(b->ld, &n->pos, "process_time_header: invalid header name \"%s\"", v);
        return;
    }
    free(s->process_time_header);
    s->process_time_header = strcmp(v, "off") == 0 ? NULL : conf_xstrdup(v);
}

static void print_process_time_header(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_server *s = obj;
    fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name,
            s->process_time_header ? s->process_time_header : "off");
}

static int cmp_route(const void *a, const void *b)
{
    const struct conf_route *x = a, *y = b;
    if (x->prefix_len != y->prefix_len)
        return x->prefix_len > y->prefix_len ? -1 : 1;
    return strcmp(x->prefix, y->prefix);
}

static void parse_server(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    struct conf_server *s = CONF_PUSH(conf->servers, conf->nservers);
    s->pos = n->pos;
    apply_defaults(b, CTX_SERVER, s);
    apply_block(b, CTX_SERVER, n, s);
    if (!has_kid(n, "listen"))
        conf_report(b->ld, &n->pos, "server has no listen");
    REPORT_REPEATS(b, "listen", s->listens, s->nlistens, text);
    REPORT_REPEATS(b, "route", s->routes, s->nroutes, prefix);
    size_t *first = find_repeats(s->names, s->nnames, sizeof(*s->names), 0);
    for (size_t i = 0; i < s->nnames; i++)
        if (first[i] != SIZE_MAX)
            conf_report(b->ld, &n->pos, "server_name \"%s\" is repeated in this server", s->names[i]);
    free(first);
    if (s->nroutes > 1)
        qsort(s->routes, s->nroutes, sizeof(*s->routes), cmp_route);
    /* a route without its own server_timing takes the server's, wherever
     * in the block the server's is written */
    s->server_timing_any = s->server_timing;
    for (size_t i = 0; i < s->nroutes; i++) {
        if (!s->routes[i].has_server_timing)
            s->routes[i].server_timing = s->server_timing;
        s->server_timing_any |= s->routes[i].server_timing;
    }
}

static void print_servers(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    for (size_t i = 0; i < conf->nservers; i++) {
        fputc('\n', out);
        print_nested(out, indent, d->name, NULL, CTX_SERVER, &conf->servers[i]);
    }
}

/* --- route --- */

static void parse_route(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_server *s = obj;
    const char *prefix = n->argv[1];
    if (prefix[0] != '/' || !is_visible(prefix, "?#"))
        conf_report(b->ld, &n->pos,
                    "route: invalid prefix \"%s\" (must start with \"/\"; no spaces, \"?\" or \"#\")",
                    prefix);
    struct conf_route *r = CONF_PUSH(s->routes, s->nroutes);
    r->prefix = conf_xstrdup(prefix);
    r->prefix_len = strlen(prefix);
    r->pos = n->pos;
    apply_defaults(b, CTX_ROUTE, r);
    apply_block(b, CTX_ROUTE, n, r);
    if (!has_kid(n, "upstream"))
        conf_report(b->ld, &n->pos, "route \"%s\" has no upstream", prefix);
}

static void print_routes(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_server *s = obj;
    for (size_t i = 0; i < s->nroutes; i++) {
        fputc('\n', out);
        print_nested(out, indent, d->name, s->routes[i].prefix, CTX_ROUTE, &s->routes[i]);
    }
}

/* `upstream NAME` and `fallback NAME`: a reference into conf->upstreams. */
static void parse_upstream_ref(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = b->conf;
    size_t i = FIND_NAMED(&b->upstream_index, conf->upstreams, conf->nupstreams, name, n->argv[1]);
    if (i == SIZE_MAX)
        conf_report(b->ld, &n->pos, "unknown upstream \"%s\"", n->argv[1]);
    else
        *(struct conf_upstream **)field(obj, d) = &conf->upstreams[i];
}

static void print_upstream_ref(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_upstream *u = *(struct conf_upstream *const *)cfield(obj, d);
    if (u != NULL)
        fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name, u->name);
}

/* set_* NAME VALUE or remove_* NAME */
static void header_op(struct build *b, const struct conf_node *n, struct conf_header_op **ops, size_t *nops)
{
    const char *name = n->argv[1], *value = n->argc == 3 ? n->argv[2] : NULL;
    if (!is_token(name)) {
        conf_report(b->ld, &n->pos, "%s: invalid header name \"%s\"", n->argv[0], name);
        return;
    }
    if (value != NULL && !is_field_value(value)) {
        conf_report(b->ld, &n->pos, "%s: the value of %s has a control character (CR, LF...)", n->argv[0],
                    name);
        return;
    }
    struct conf_header_op *op = CONF_PUSH(*ops, *nops);
    op->name = conf_xstrdup(name);
    op->value = value ? conf_xstrdup(value) : NULL;
}

static void parse_request_header(struct build *b, const struct conf_node *n, const struct directive *d,
                                 void *obj)
{
    struct conf_route *r = obj;
    header_op(b, n, &r->req_ops, &r->nreq_ops);
}

static void parse_response_header(struct build *b, const struct conf_node *n, const struct directive *d,
                                  void *obj)
{
    struct conf_route *r = obj;
    header_op(b, n, &r->resp_ops, &r->nresp_ops);
}

static void print_header_ops(FILE *out, int indent, const char *what, const struct conf_header_op *ops,
                             size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%*s%s_%s ", indent * 4, "", ops[i].value ? "set" : "remove", what);
        print_word(out, ops[i].name);
        if (ops[i].value != NULL) {
            fputc(' ', out);
            print_word(out, ops[i].value);
        }
        fputs(";\n", out);
    }
}

static void print_request_headers(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route *r = obj;
    print_header_ops(out, indent, "header", r->req_ops, r->nreq_ops);
}

static void print_response_headers(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route *r = obj;
    print_header_ops(out, indent, "response_header", r->resp_ops, r->nresp_ops);
}

/* --- redis --- */

#define REDIS_DEFAULT_PORT 6379
#define REDIS_MAX_DB       65535

/* "redis://HOST[:PORT][/DB]": HOST is numeric (IPv4, or IPv6 in brackets)
 * or localhost, because hiredis resolves names with a blocking getaddrinfo
 * that must never run on a worker's loop.  Fills r's host, port, db, url;
 * reports and returns false otherwise. */
static bool redis_url(struct build *b, const struct conf_node *n, const char *text, struct conf_redis *r)
{
    static const char scheme[] = "redis://";
    char host[INET6_ADDRSTRLEN + 1];
    size_t hlen;
    bool is_v6 = false;
    if (strncmp(text, scheme, sizeof(scheme) - 1) != 0) {
        conf_report(b->ld, &n->pos, "redis: invalid URL \"%s\" (expected redis://HOST[:PORT][/DB]%s)", text,
                    strncmp(text, "rediss://", 9) == 0 ? "; TLS is not supported" : "");
        return false;
    }
    const char *p = text + sizeof(scheme) - 1;
    if (strchr(p, '@') != NULL) {
        conf_report(b->ld, &n->pos, "redis: a user or password in the URL is not supported");
        return false;
    }
    if (*p == '[') {
        const char *end = strchr(p, ']');
        hlen = end != NULL ? (size_t)(end - p - 1) : sizeof(host);
        if (hlen >= sizeof(host))
            goto bad;
        memcpy(host, p + 1, hlen);
        p = end + 1;
        is_v6 = true;
    } else {
        hlen = strcspn(p, ":/");
        if (hlen >= sizeof(host))
            goto bad_host;
        memcpy(host, p, hlen);
        p += hlen;
    }
    host[hlen] = '\0';
    r->port = REDIS_DEFAULT_PORT;
    if (*p == ':') {
        char port[8];
        size_t plen = strcspn(p + 1, "/");
        if (plen >= sizeof(port))
            goto bad_port;
        memcpy(port, p + 1, plen);
        port[plen] = '\0';
        if (!port_value(port, &r->port))
            goto bad_port;
        p += 1 + plen;
    }
    r->db = 0;
    if (*p == '/' && p[1] != '\0') {
        uint64_t db;
        if (!parse_bounded(b, n, "redis database", p + 1, &numbers, 0, REDIS_MAX_DB, &db))
            return false;
        r->db = (unsigned)db;
    } else if (*p != '\0' && strcmp(p, "/") != 0) {
        goto bad;
    }
    unsigned char addr[sizeof(struct in6_addr)];
    int family = is_v6 ? AF_INET6 : AF_INET;
    if (!is_v6 && strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(family, host, addr) != 1)
        goto bad_host;
    char canon[INET6_ADDRSTRLEN], url[INET6_ADDRSTRLEN + 32];
    inet_ntop(family, addr, canon, sizeof(canon));
    snprintf(url, sizeof(url), is_v6 ? "redis://[%s]:%u/%u" : "redis://%s:%u/%u", canon, r->port, r->db);
    r->host = conf_xstrdup(canon);
    r->url = conf_xstrdup(url);
    return true;
bad:
    conf_report(b->ld, &n->pos, "redis: invalid URL \"%s\" (expected redis://HOST[:PORT][/DB])", text);
    return false;
bad_port:
    conf_report(b->ld, &n->pos, "redis: invalid port in \"%s\" (1..65535)", text);
    return false;
bad_host:
    conf_report(b->ld, &n->pos,
                "redis: invalid host in \"%s\": a numeric IPv4 address, [IPv6] or localhost (names are not "
                "resolved)",
                text);
    return false;
}

static void parse_redis(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    struct conf_redis *r = conf_xcalloc(1, sizeof(*r));
    r->pos = n->pos;
    apply_defaults(b, CTX_REDIS, r);
    if (n->has_block)
        apply_block(b, CTX_REDIS, n, r);
    if (!redis_url(b, n, n->argv[1], r)) {
        free(r);
        return;
    }
    conf->redis = r;
}

static void print_redis(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    if (conf->redis == NULL)
        return;
    fputc('\n', out);
    print_nested(out, indent, d->name, conf->redis->url, CTX_REDIS, conf->redis);
}

/* --- observability: access_log, slow_log, analytics (issue 6) --- */

static void parse_route_server_timing(struct build *b, const struct conf_node *n, const struct directive *d,
                                      void *obj)
{
    struct conf_route *r = obj;
    struct directive flag = *d;
    flag.offset = offsetof(struct conf_route, server_timing);
    parse_flag(b, n, &flag, obj);
    r->has_server_timing = true;
}

static void print_route_server_timing(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route *r = obj;
    if (r->has_server_timing)
        fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name, r->server_timing ? "on" : "off");
}

/* A log destination: "off" (NULL), stdout, stderr (when allowed) or a file path. */
static void parse_log_target(struct build *b, const struct conf_node *n, char **target, bool stderr_ok)
{
    const char *v = n->argv[1];
    free(*target);
    *target = NULL;
    if (strcmp(v, "off") == 0)
        return;
    if (strcmp(v, "stderr") == 0 && !stderr_ok) {
        conf_report(b->ld, &n->pos, "%s: stderr is the error log; give a file or stdout", n->argv[0]);
        return;
    }
    if (v[0] == '\0') {
        conf_report(b->ld, &n->pos, "%s: empty file name", n->argv[0]);
        return;
    }
    *target = conf_xstrdup(v);
}

static void print_log_target(FILE *out, int indent, const char *name, const char *target, const char *suffix)
{
    fprintf(out, "%*s%s ", indent * 4, "", name);
    print_word(out, target != NULL ? target : "off");
    fprintf(out, "%s;\n", target != NULL ? suffix : "");
}

static void parse_access_log(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    if (n->argc == 3 && strcmp(n->argv[2], "json") != 0) {
        conf_report(b->ld, &n->pos, "access_log: unknown format \"%s\" (json is the one there is)", n->argv[2]);
        return;
    }
    parse_log_target(b, n, &conf->access_log, false);
}

static void print_access_log(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    fputc('\n', out);
    print_log_target(out, indent, d->name, conf->access_log, " json");
}

static void parse_slow_log(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    parse_log_target(b, n, &conf->slow_log, true);
}

static void print_slow_log(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    print_log_target(out, indent, d->name, conf->slow_log, "");
}

/* libpq resolves a host name with a blocking getaddrinfo inside
 * PQconnectPoll: only numeric hosts (or localhost, mapped here) are taken,
 * as for redis. */
static void parse_analytics(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    struct conf_analytics *a = conf_xcalloc(1, sizeof(*a));
    a->pos = n->pos;
    apply_defaults(b, CTX_ANALYTICS, a);
    if (n->has_block)
        apply_block(b, CTX_ANALYTICS, n, a);
    const char *url = n->argv[1];
    char *err = NULL;
    PQconninfoOption *opts = NULL;
    if (strncmp(url, "postgresql://", 13) != 0 && strncmp(url, "postgres://", 11) != 0) {
        conf_report(b->ld, &n->pos, "analytics: invalid URL \"%s\" (expected postgresql://USER@HOST:PORT/DB)", url);
        goto fail;
    }
    opts = PQconninfoParse(url, &err);
    if (opts == NULL) {
        conf_report(b->ld, &n->pos, "analytics: invalid URL \"%s\": %s", url, err ? err : "out of memory");
        goto fail;
    }
    const char *host = NULL, *hostaddr = NULL;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    if (hostaddr == NULL)
        hostaddr = host;
    if (hostaddr != NULL && strcmp(hostaddr, "localhost") == 0)
        hostaddr = "127.0.0.1";
    struct in6_addr any;
    if (hostaddr == NULL || (inet_pton(AF_INET, hostaddr, &any) != 1 && inet_pton(AF_INET6, hostaddr, &any) != 1)) {
        conf_report(b->ld, &n->pos,
                    "analytics: the host must be a numeric address or localhost (a name would be resolved "
                    "with a blocking call)");
        goto fail;
    }
    a->url = conf_xstrdup(url);
    a->hostaddr = conf_xstrdup(hostaddr);
    PQconninfoFree(opts);
    conf->analytics = a;
    return;
fail:
    if (opts != NULL)
        PQconninfoFree(opts);
    PQfreemem(err);
    free(a);
}

static void print_analytics(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    if (conf->analytics == NULL)
        return;
    fputc('\n', out);
    print_nested(out, indent, d->name, conf->analytics->url, CTX_ANALYTICS, conf->analytics);
}

/* --- cache (top level) --- */

static void parse_cache(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    check_name(b, n);
    struct conf_cache *c = CONF_PUSH(conf->caches, conf->ncaches);
    c->name = conf_xstrdup(n->argv[1]);
    c->pos = n->pos;
    apply_defaults(b, CTX_CACHE, c);
    if (n->has_block)
        apply_block(b, CTX_CACHE, n, c);
    /* one object may take an eighth of the budget, so a few big ones cannot
     * flush everything else; the default shrinks to fit a small budget */
    uint64_t most = c->memory / 8;
    const struct conf_node *mo = find_kid(n, "max_object");
    if (mo == NULL) {
        if (c->max_object > most)
            c->max_object = most;
    } else if (c->max_object > most) {
        char a[32], m[32], z[32];
        conf_report(b->ld, &mo->pos, "max_object: %s is more than memory / 8 (memory %s, so at most %s)",
                    format_value(a, c->max_object, &sizes), format_value(m, c->memory, &sizes),
                    format_value(z, most, &sizes));
    }
    if (c->redis && !has_kid(b->root, "redis"))
        conf_report(b->ld, &find_kid(n, "redis")->pos,
                    "redis on: cache \"%s\" needs a top-level redis directive (redis redis://HOST:PORT;)",
                    c->name);
}

static void print_caches(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    for (size_t i = 0; i < conf->ncaches; i++) {
        fputc('\n', out);
        print_nested(out, indent, d->name, conf->caches[i].name, CTX_CACHE, &conf->caches[i]);
    }
}

/* --- cache (in a route) --- */

static void strings_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char *xstrndup(const char *s, size_t len)
{
    char *d = conf_xcalloc(1, len + 1);
    memcpy(d, s, len);
    return d;
}

static void route_cache_free(struct conf_route_cache *rc)
{
    if (rc == NULL)
        return;
    free(rc->ttl_status);
    free(rc->ttl_header);
    free(rc->ttl_json_path);
    for (size_t i = 0; i < rc->nttl_json_values; i++)
        free(rc->ttl_json_values[i].value);
    free(rc->ttl_json_values);
    strings_free(rc->key_headers, rc->nkey_headers);
    strings_free(rc->key_query_ignore, rc->nkey_query_ignore);
    free(rc);
}

/* The TTL of a VALUE=TTL pair: a duration, or a bare "0" for "never store". */
static bool pair_ttl(struct build *b, const struct conf_node *n, const char *text, uint64_t *ms)
{
    if (strcmp(text, "0") == 0) {
        *ms = 0;
        return true;
    }
    return parse_bounded(b, n, n->argv[0], text, &durations, 0, MAX_TTL, ms);
}

static void parse_cache_methods(struct build *b, const struct conf_node *n, const struct directive *d,
                                void *obj)
{
    struct conf_route_cache *rc = obj;
    uint32_t mask = 0;
    bool is_ok = true;
    for (size_t i = 1; i < n->argc; i++) {
        int m = choose(b, n, n->argv[0], n->argv[i], cache_method_names);
        if (m < 0)
            is_ok = false;
        else
            mask |= CONF_CACHE_METHOD_BIT(cache_methods[m]);
    }
    if (is_ok)
        rc->methods = mask;
}

static void print_cache_methods(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route_cache *rc = obj;
    fprintf(out, "%*s%s", indent * 4, "", d->name);
    for (size_t i = 0; cache_method_names[i] != NULL; i++)
        if (rc->methods & CONF_CACHE_METHOD_BIT(cache_methods[i]))
            fprintf(out, " %s", cache_method_names[i]);
    fputs(";\n", out);
}

static void parse_cache_ttl(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_route_cache *rc = obj;
    bool is_override = n->argc == 3;
    if (is_override && strcmp(n->argv[2], "override") != 0) {
        conf_report(b->ld, &n->pos, "ttl: unknown parameter \"%s\" (expected override)", n->argv[2]);
        return;
    }
    uint64_t ms;
    if (!parse_bounded(b, n, n->argv[0], n->argv[1], &durations, 1, MAX_TTL, &ms))
        return;
    rc->has_ttl = true;
    rc->ttl_ms = ms;
    rc->ttl_override = is_override;
}

static void print_cache_ttl(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route_cache *rc = obj;
    char buf[32];
    if (rc->has_ttl)
        fprintf(out, "%*s%s %s%s;\n", indent * 4, "", d->name, format_value(buf, rc->ttl_ms, &durations),
                rc->ttl_override ? " override" : "");
}

/* "404" or a class "4xx" (len bytes of s) into the statuses it matches. */

static void parse_ttl_status(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_route_cache *rc = obj;
    /* the first match wins, so an entry whose statuses all match earlier
     * ones never applies: covered_by[s - 100] is the argument that first
     * matches status s (0: none yet) */
    size_t covered_by[500] = {0};
    for (size_t i = 1; i < n->argc; i++) {
        const char *a = n->argv[i], *eq = strchr(a, '=');
        unsigned lo, hi;
        uint64_t ms;
        if (eq == NULL || !status_spec(a, (size_t)(eq - a), &lo, &hi)) {
            conf_report(b->ld, &n->pos,
                        "ttl_status: invalid \"%s\" (expected STATUS=TTL such as 404=30s or 5xx=0)", a);
            continue;
        }
        if (!pair_ttl(b, n, eq + 1, &ms))
            continue;
        size_t by = covered_by[lo - 100];
        bool is_shadowed = true;
        for (unsigned s = lo; s <= hi; s++) {
            is_shadowed &= covered_by[s - 100] != 0;
            if (covered_by[s - 100] != by)
                by = 0;
            if (covered_by[s - 100] == 0)
                covered_by[s - 100] = i;
        }
        if (is_shadowed && by != 0)
            conf_report(b->ld, &n->pos, "ttl_status: \"%s\" never applies: \"%s\" comes first", a,
                        n->argv[by]);
        else if (is_shadowed)
            conf_report(b->ld, &n->pos,
                        "ttl_status: \"%s\" never applies: earlier entries match all its statuses", a);
        else
            *CONF_PUSH(rc->ttl_status, rc->nttl_status) = (struct conf_ttl_status){lo, hi, ms};
    }
}

static void print_ttl_status(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route_cache *rc = obj;
    if (rc->nttl_status == 0)
        return;
    fprintf(out, "%*s%s", indent * 4, "", d->name);
    for (size_t i = 0; i < rc->nttl_status; i++) {
        const struct conf_ttl_status *t = &rc->ttl_status[i];
        char buf[32];
        if (t->lo == t->hi)
            fprintf(out, " %u=%s", t->lo, format_value(buf, t->ttl_ms, &durations));
        else
            fprintf(out, " %uxx=%s", t->lo / 100, format_value(buf, t->ttl_ms, &durations));
    }
    fputs(";\n", out);
}

/* "a.b.c": object keys, none empty. */
static bool is_json_path(const char *s)
{
    return *s != '\0' && *s != '.' && s[strlen(s) - 1] != '.' && strstr(s, "..") == NULL;
}

static void parse_ttl_json(struct build *b, const struct conf_node *n, struct conf_route_cache *rc,
                           const char *path)
{
    if (rc->ttl_json_path != NULL) {
        conf_report(b->ld, &n->pos, "ttl_from: json: is already given (at most one header: and one json:)");
        return;
    }
    if (!is_json_path(path)) {
        conf_report(b->ld, &n->pos,
                    "ttl_from: invalid JSON path \"%s\" (object keys separated by \".\", none empty)", path);
        return;
    }
    if (n->argc < 3) {
        conf_report(b->ld, &n->pos, "ttl_from: json:PATH needs at least one VALUE=TTL pair");
        return;
    }
    struct conf_ttl_value *v = NULL;
    size_t nv = 0;
    bool is_ok = true;
    for (size_t i = 2; i < n->argc; i++) {
        /* the last "=": a quoted value may hold one, a TTL never does */
        const char *a = n->argv[i], *eq = strrchr(a, '=');
        uint64_t ms;
        if (eq == NULL) {
            conf_report(b->ld, &n->pos,
                        "ttl_from: invalid pair \"%s\" (expected VALUE=TTL such as completed=1h)", a);
            is_ok = false;
        } else if (!pair_ttl(b, n, eq + 1, &ms)) {
            is_ok = false;
        } else {
            *CONF_PUSH(v, nv) = (struct conf_ttl_value){xstrndup(a, (size_t)(eq - a)), ms};
        }
    }
    if (report_list_repeats(b, n, "value", v, nv, sizeof(*v), offsetof(struct conf_ttl_value, value)))
        is_ok = false;
    if (!is_ok) {
        for (size_t i = 0; i < nv; i++)
            free(v[i].value);
        free(v);
        return;
    }
    rc->ttl_json_path = conf_xstrdup(path);
    rc->ttl_json_values = v;
    rc->nttl_json_values = nv;
}

static void parse_ttl_from(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_route_cache *rc = obj;
    const char *src = n->argv[1];
    if (strncmp(src, "json:", 5) == 0) {
        parse_ttl_json(b, n, rc, src + 5);
        return;
    }
    if (strncmp(src, "header:", 7) != 0) {
        conf_report(b->ld, &n->pos, "ttl_from: invalid source \"%s\" (expected header:NAME or json:PATH)",
                    src);
        return;
    }
    const char *name = src + 7;
    if (rc->ttl_header != NULL)
        conf_report(b->ld, &n->pos, "ttl_from: header: is already given (at most one header: and one json:)");
    else if (!is_token(name))
        conf_report(b->ld, &n->pos, "ttl_from: invalid header name \"%s\"", name);
    else if (n->argc > 2)
        conf_report(b->ld, &n->pos, "ttl_from: header:NAME takes no VALUE=TTL pairs");
    else
        rc->ttl_header = conf_xstrdup(name);
}

static void print_ttl_from(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route_cache *rc = obj;
    if (rc->ttl_header != NULL) {
        fprintf(out, "%*s%s header:", indent * 4, "", d->name);
        print_word(out, rc->ttl_header);
        fputs(";\n", out);
    }
    if (rc->ttl_json_path == NULL)
        return;
    /* a quoted part joins the bare text next to it: json:"a b.c" is one word */
    fprintf(out, "%*s%s json:", indent * 4, "", d->name);
    print_word(out, rc->ttl_json_path);
    for (size_t i = 0; i < rc->nttl_json_values; i++) {
        char buf[32];
        fputc(' ', out);
        print_word(out, rc->ttl_json_values[i].value);
        fprintf(out, "=%s", format_value(buf, rc->ttl_json_values[i].ttl_ms, &durations));
    }
    fputs(";\n", out);
}

/* Parts that are always in the key: accepted so a `key` line can read in full. */
static const char *const key_fixed_parts[] = {"method", "scheme", "host", "path", "query", NULL};

/* One part of a `key` list: len bytes of s. */
static bool key_part(struct build *b, const struct conf_node *n, const char *s, size_t len,
                     struct conf_route_cache *rc)
{
    char *part = xstrndup(s, len);
    bool is_ok = true;
    if (strncmp(part, "header:", 7) == 0) {
        if (is_token(part + 7)) {
            /* lowercase: requests are looked up by lowercase names */
            for (char *p = part + 7; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            *CONF_PUSH(rc->key_headers, rc->nkey_headers) = conf_xstrdup(part + 7);
        } else {
            conf_report(b->ld, &n->pos, "key: invalid header name \"%s\"", part + 7);
            is_ok = false;
        }
    } else if (strcmp(part, "body") == 0) {
        rc->key_body = true;
    } else {
        size_t i = 0;
        while (key_fixed_parts[i] != NULL && strcmp(part, key_fixed_parts[i]) != 0)
            i++;
        if (key_fixed_parts[i] == NULL) {
            conf_report(b->ld, &n->pos,
                        "key: invalid part \"%s\" (expected method, scheme, host, path, query, body or "
                        "header:NAME)",
                        part);
            is_ok = false;
        }
    }
    free(part);
    return is_ok;
}

static void parse_cache_key(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_route_cache *rc = obj;
    bool is_ok = true;
    for (size_t i = 1; i < n->argc; i++) {
        for (const char *p = n->argv[i];; p++) {
            size_t len = strcspn(p, ",");
            /* "method, path": a comma may end a word when another follows */
            bool is_trailing = *p == '\0' && p != n->argv[i] && i + 1 < n->argc;
            if (len == 0 && !is_trailing) {
                conf_report(b->ld, &n->pos, "key: empty part in \"%s\"", n->argv[i]);
                is_ok = false;
            } else if (len > 0 && !key_part(b, n, p, len, rc)) {
                is_ok = false;
            }
            p += len;
            if (*p == '\0')
                break;
        }
    }
    if (report_list_repeats(b, n, "header", rc->key_headers, rc->nkey_headers, sizeof(*rc->key_headers), 0))
        is_ok = false;
    if (!is_ok) {
        /* nothing half-applied: the snapshot is refused anyway, but stays consistent */
        strings_free(rc->key_headers, rc->nkey_headers);
        rc->key_headers = NULL;
        rc->nkey_headers = 0;
        rc->key_body = false;
    }
}

static void print_cache_key(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route_cache *rc = obj;
    fprintf(out, "%*s%s ", indent * 4, "", d->name);
    for (size_t i = 0; key_fixed_parts[i] != NULL; i++)
        fprintf(out, "%s%s", i ? "," : "", key_fixed_parts[i]);
    if (rc->key_body)
        fputs(",body", out);
    for (size_t i = 0; i < rc->nkey_headers; i++) {
        fputs(",header:", out);
        print_word(out, rc->key_headers[i]);
    }
    fputs(";\n", out);
}

static void parse_query_ignore(struct build *b, const struct conf_node *n, const struct directive *d,
                               void *obj)
{
    struct conf_route_cache *rc = obj;
    for (size_t i = 1; i < n->argc; i++) {
        if (is_visible(n->argv[i], "&=#"))
            *CONF_PUSH(rc->key_query_ignore, rc->nkey_query_ignore) = conf_xstrdup(n->argv[i]);
        else
            conf_report(b->ld, &n->pos, "query_ignore: invalid parameter name \"%s\"", n->argv[i]);
    }
    report_list_repeats(b, n, "parameter", rc->key_query_ignore, rc->nkey_query_ignore,
                        sizeof(*rc->key_query_ignore), 0);
}

static void print_query_ignore(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route_cache *rc = obj;
    if (rc->nkey_query_ignore == 0)
        return;
    fprintf(out, "%*s%s", indent * 4, "", d->name);
    for (size_t i = 0; i < rc->nkey_query_ignore; i++) {
        fputc(' ', out);
        print_word(out, rc->key_query_ignore[i]);
    }
    fputs(";\n", out);
}

/* A stale window past max_stale would be cut short without a word. */
static void check_stale_window(struct build *b, const struct conf_node *n, const char *name, uint64_t ms,
                               uint64_t max_stale_ms)
{
    const struct conf_node *k = find_kid(n, name);
    if (k == NULL || ms <= max_stale_ms)
        return;
    char a[32], z[32];
    conf_report(b->ld, &k->pos, "%s: %s is more than max_stale (%s)", name, format_value(a, ms, &durations),
                format_value(z, max_stale_ms, &durations));
}

static void parse_route_cache(struct build *b, const struct conf_node *n, const struct directive *d,
                              void *obj)
{
    struct conf_route *r = obj;
    struct conf *conf = b->conf;
    struct conf_route_cache *rc = conf_xcalloc(1, sizeof(*rc));
    r->cache = rc;
    rc->pos = n->pos;
    size_t i = FIND_NAMED(&b->cache_index, conf->caches, conf->ncaches, name, n->argv[1]);
    if (i == SIZE_MAX)
        conf_report(b->ld, &n->pos, "unknown cache \"%s\"", n->argv[1]);
    else
        rc->cache = &conf->caches[i];
    apply_defaults(b, CTX_ROUTE_CACHE, rc);
    if (!n->has_block)
        return;
    apply_block(b, CTX_ROUTE_CACHE, n, rc);
    const struct conf_node *methods = find_kid(n, "methods");
    if ((rc->methods & CONF_CACHE_METHOD_BIT(HTTP_POST)) && !rc->key_body)
        conf_report(b->ld, &methods->pos, "methods POST needs the request body in the key (key ... body)");
    check_stale_window(b, n, "stale_while_revalidate", rc->stale_while_revalidate_ms, rc->max_stale_ms);
    check_stale_window(b, n, "stale_if_error", rc->stale_if_error_ms, rc->max_stale_ms);
}

static void print_route_cache(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route *r = obj;
    if (r->cache != NULL)
        print_nested(out, indent, d->name, r->cache->cache->name, CTX_ROUTE_CACHE, r->cache);
}

/* --- admission control (issue 5): limit blocks, trusted_proxies, max_inflight --- */

static const char *const limit_scopes[] = {"local", "global", NULL};
static const char *const limit_on_errors[] = {"local", "allow", "deny", NULL};

static void limit_keys_free(struct conf_limit_key *k, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(k[i].name);
    free(k);
}

static void parse_limit(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf *conf = obj;
    check_name(b, n);
    struct conf_limit *l = CONF_PUSH(conf->limits, conf->nlimits);
    l->name = conf_xstrdup(n->argv[1]);
    l->pos = n->pos;
    apply_defaults(b, CTX_LIMIT, l);
    apply_block(b, CTX_LIMIT, n, l);
    if (!has_kid(n, "rate"))
        conf_report(b->ld, &n->pos, "limit \"%s\" has no rate (rate N/s, N/m, N/h or N/d)", l->name);
    if (l->scope == CONF_LIMIT_GLOBAL && !has_kid(b->root, "redis"))
        conf_report(b->ld, &find_kid(n, "scope")->pos,
                    "scope global: limit \"%s\" needs a top-level redis directive (redis redis://HOST:PORT;)",
                    l->name);
}

static void print_limits(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf *conf = obj;
    for (size_t i = 0; i < conf->nlimits; i++) {
        fputc('\n', out);
        print_nested(out, indent, d->name, conf->limits[i].name, CTX_LIMIT, &conf->limits[i]);
    }
}

/* One part of a limit's key list: len bytes of s. */
static bool limit_key_part(struct build *b, const struct conf_node *n, const char *s, size_t len,
                           struct conf_limit *l)
{
    char *part = xstrndup(s, len);
    struct conf_limit_key k = {0};
    bool is_ok = true;
    if (strcmp(part, "ip") == 0) {
        k.kind = CONF_LIMIT_KEY_IP;
    } else if (strcmp(part, "route") == 0) {
        k.kind = CONF_LIMIT_KEY_ROUTE;
    } else if (strncmp(part, "header:", 7) == 0 && is_token(part + 7)) {
        k.kind = CONF_LIMIT_KEY_HEADER;
        k.name = conf_xstrdup(part + 7);
        for (char *p = k.name; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    } else if (strncmp(part, "query:", 6) == 0 && part[6] != '\0' && is_visible(part + 6, "&=#")) {
        k.kind = CONF_LIMIT_KEY_QUERY;
        k.name = conf_xstrdup(part + 6);
    } else {
        conf_report(b->ld, &n->pos, "key: invalid part \"%s\" (expected ip, route, header:NAME or query:NAME)",
                    part);
        is_ok = false;
    }
    if (is_ok && l->nkeys == CONF_LIMIT_KEYS_MAX) {
        conf_report(b->ld, &n->pos, "key: more than %d parts", CONF_LIMIT_KEYS_MAX);
        is_ok = false;
        free(k.name);
    }
    if (is_ok)
        *CONF_PUSH(l->keys, l->nkeys) = k;
    free(part);
    return is_ok;
}

static void parse_limit_key(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_limit *l = obj;
    limit_keys_free(l->keys, l->nkeys); /* the default's */
    l->keys = NULL;
    l->nkeys = 0;
    for (size_t i = 1; i < n->argc; i++) {
        for (const char *p = n->argv[i];; p++) {
            size_t len = strcspn(p, ",");
            bool is_trailing = *p == '\0' && p != n->argv[i] && i + 1 < n->argc;
            if (len == 0 && !is_trailing)
                conf_report(b->ld, &n->pos, "key: empty part in \"%s\"", n->argv[i]);
            else if (len > 0)
                limit_key_part(b, n, p, len, l);
            p += len;
            if (*p == '\0')
                break;
        }
    }
}

static void print_limit_key(FILE *out, int indent, const struct directive *d, const void *obj)
{
    static const char *const kinds[] = {"ip", "header:", "query:", "route"};
    const struct conf_limit *l = obj;
    fprintf(out, "%*s%s ", indent * 4, "", d->name);
    for (size_t i = 0; i < l->nkeys; i++) {
        fprintf(out, "%s%s", i ? "," : "", kinds[l->keys[i].kind]);
        if (l->keys[i].name != NULL)
            print_word(out, l->keys[i].name);
    }
    fputs(";\n", out);
}

static const struct unit rate_periods[] = {{"d", MS_DAY}, {"h", MS_HOUR}, {"m", MS_MINUTE}, {"s", MS_SECOND}};

/* "rate N/s | N/m | N/h | N/d" */
static void parse_limit_rate(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_limit *l = obj;
    const char *slash = strchr(n->argv[1], '/');
    char num[24];
    size_t len = slash ? (size_t)(slash - n->argv[1]) : 0;
    uint64_t v;
    if (slash == NULL || len == 0 || len >= sizeof(num)) {
        conf_report(b->ld, &n->pos, "rate: invalid rate \"%s\" (expected N/s, N/m, N/h or N/d)", n->argv[1]);
        return;
    }
    memcpy(num, n->argv[1], len);
    num[len] = '\0';
    if (!parse_bounded(b, n, "rate", num, &numbers, 1, 1000000000, &v))
        return;
    for (size_t i = 0; i < ARRAY_SIZE(rate_periods); i++) {
        if (strcmp(slash + 1, rate_periods[i].suffix) == 0) {
            l->rate = v;
            l->period_ms = rate_periods[i].factor;
            return;
        }
    }
    conf_report(b->ld, &n->pos, "rate: invalid period \"%s\" (expected s, m, h or d)", slash + 1);
}

static void print_limit_rate(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_limit *l = obj;
    const char *unit = "s";
    for (size_t i = 0; i < ARRAY_SIZE(rate_periods); i++)
        if (rate_periods[i].factor == l->period_ms)
            unit = rate_periods[i].suffix;
    if (l->rate > 0)
        fprintf(out, "%*s%s %" PRIu64 "/%s;\n", indent * 4, "", d->name, l->rate, unit);
}

static void parse_route_limit(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_route *r = obj;
    struct conf *conf = b->conf;
    size_t i = FIND_NAMED(&b->limit_index, conf->limits, conf->nlimits, name, n->argv[1]);
    if (i == SIZE_MAX) {
        conf_report(b->ld, &n->pos, "unknown limit \"%s\"", n->argv[1]);
        return;
    }
    for (size_t j = 0; j < r->nlimits; j++)
        if (r->limits[j] == &conf->limits[i]) {
            conf_report(b->ld, &n->pos, "limit \"%s\" is repeated in this route", n->argv[1]);
            return;
        }
    if (r->nlimits == CONF_ROUTE_LIMITS_MAX) {
        conf_report(b->ld, &n->pos, "more than %d limits in one route", CONF_ROUTE_LIMITS_MAX);
        return;
    }
    *CONF_PUSH(r->limits, r->nlimits) = &conf->limits[i];
}

static void print_route_limits(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_route *r = obj;
    for (size_t i = 0; i < r->nlimits; i++)
        fprintf(out, "%*s%s %s;\n", indent * 4, "", d->name, r->limits[i]->name);
}

/* "max_inflight N [queue=Q] [queue_timeout=D]" */
static void parse_max_inflight(struct build *b, const struct conf_node *n, const struct directive *d, void *obj)
{
    struct conf_max_inflight *m = field(obj, d);
    uint64_t v, q = 100, t = 5 * MS_SECOND;
    if (!parse_bounded(b, n, "max_inflight", n->argv[1], &numbers, 1, 1000000, &v))
        return;
    for (size_t i = 2; i < n->argc; i++) {
        const char *a = n->argv[i];
        if (strncmp(a, "queue=", 6) == 0) {
            if (!parse_bounded(b, n, "max_inflight queue", a + 6, &numbers, 0, 1000000, &q))
                return;
        } else if (strncmp(a, "queue_timeout=", 14) == 0) {
            if (!parse_bounded(b, n, "max_inflight queue_timeout", a + 14, &durations, 1, MS_HOUR, &t))
                return;
        } else {
            conf_report(b->ld, &n->pos, "max_inflight: invalid option \"%s\" (expected queue=N or queue_timeout=D)",
                        a);
            return;
        }
    }
    *m = (struct conf_max_inflight){(unsigned)v, (unsigned)q, t, n->pos};
}

static void print_max_inflight(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_max_inflight *m = cfield(obj, d);
    char buf[32];
    if (m->max > 0)
        fprintf(out, "%*s%s %u queue=%u queue_timeout=%s;\n", indent * 4, "", d->name, m->max, m->queue,
                format_value(buf, m->queue_timeout_ms, &durations));
}

/* "10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8" */
static bool cidr_value(const char *text, struct conf_cidr *c)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t hlen = slash ? (size_t)(slash - text) : strlen(text);
    if (hlen == 0 || hlen >= sizeof(host))
        return false;
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    memset(c, 0, sizeof(*c));
    c->is_v6 = strchr(host, ':') != NULL;
    if (inet_pton(c->is_v6 ? AF_INET6 : AF_INET, host, c->addr) != 1)
        return false;
    uint64_t most = c->is_v6 ? 128 : 32, bits = most;
    if (slash != NULL && (unit_value(slash + 1, &numbers, &bits) != NULL || bits > most))
        return false;
    c->bits = (unsigned char)bits;
    return true;
}

static void parse_trusted_proxies(struct build *b, const struct conf_node *n, const struct directive *d,
                                  void *obj)
{
    struct conf_cidrs *list = field(obj, d);
    for (size_t i = 1; i < n->argc; i++) {
        struct conf_cidr c;
        if (cidr_value(n->argv[i], &c))
            *CONF_PUSH(list->v, list->n) = c;
        else
            conf_report(b->ld, &n->pos, "trusted_proxies: invalid address \"%s\" (expected IP or IP/BITS)",
                        n->argv[i]);
    }
}

static void print_trusted_proxies(FILE *out, int indent, const struct directive *d, const void *obj)
{
    const struct conf_cidrs *list = cfield(obj, d);
    if (list->n == 0)
        return;
    fprintf(out, "%*s%s", indent * 4, "", d->name);
    for (size_t i = 0; i < list->n; i++) {
        char a[INET6_ADDRSTRLEN];
        inet_ntop(list->v[i].is_v6 ? AF_INET6 : AF_INET, list->v[i].addr, a, sizeof(a));
        fprintf(out, " %s/%u", a, list->v[i].bits);
    }
    fputs(";\n", out);
}

/* --- the table --- */

#define DIR_VALUE(name_, ctx_, parse_, print_, kind_, type, member, lo_, hi_, def_)                          \
    {                                                                                                        \
        .name = name_, .ctx = ctx_, .min_args = 1, .max_args = 1, .parse = parse_, .print = print_,          \
        .offset = offsetof(type, member), .lo = lo_, .hi = hi_, .kind = kind_, .def = def_                   \
    }
#define DIR_DURATION(name, ctx, type, member, lo, hi, def)                                                   \
    DIR_VALUE(name, ctx, parse_u64, print_u64, &durations, type, member, lo, hi, def)
#define DIR_SIZE(name, ctx, type, member, lo, hi, def)                                                       \
    DIR_VALUE(name, ctx, parse_u64, print_u64, &sizes, type, member, lo, hi, def)
#define DIR_NUMBER(name, ctx, type, member, lo, hi, def)                                                     \
    DIR_VALUE(name, ctx, parse_unsigned, print_unsigned, &numbers, type, member, lo, hi, def)
#define DIR_FLAG(name, ctx, type, member, def)                                                               \
    DIR_VALUE(name, ctx, parse_flag, print_flag, NULL, type, member, 0, 1, def)
#define DIR_ENUM(name_, ctx_, type, member, words_, def_)                                                    \
    {                                                                                                        \
        .name = name_, .ctx = ctx_, .min_args = 1, .max_args = 1, .parse = parse_enum, .print = print_enum,  \
        .offset = offsetof(type, member), .words = words_, .def = def_                                       \
    }

enum { ONCE = 0, MULTI = 1 << 0, EARLY = 1 << 1 };

/* A row whose parser finds its own target field. */
#define DIR_CUSTOM(name_, ctx_, block_, min_, max_, flags_, parse_, print_, def_)                            \
    {                                                                                                        \
        .name = name_, .ctx = ctx_, .block = block_, .min_args = min_, .max_args = max_,                     \
        .is_multi = ((flags_)&MULTI) != 0, .is_early = ((flags_)&EARLY) != 0, .parse = parse_,               \
        .print = print_, .def = def_                                                                         \
    }

/* Printing follows this order. */
static const struct directive directives[] = {
    DIR_VALUE("workers", CTX_MAIN, parse_workers, print_unsigned, &numbers, struct conf, workers, 1, 128,
              "auto"),
    DIR_CUSTOM("error_log", CTX_MAIN, CONF_NO_BLOCK, 2, 2, ONCE, parse_error_log, print_error_log,
               "stderr info"),
    DIR_DURATION("shutdown_timeout", CTX_MAIN, struct conf, shutdown_timeout_ms, 0, MS_DAY, "30s"),
    DIR_NUMBER("max_connections", CTX_MAIN, struct conf, max_connections, 1, 10000000, "100000"),
    /* hostile input */
    DIR_NUMBER("max_connections_per_ip", CTX_MAIN, struct conf, max_connections_per_ip, 0, 10000000, "0"),
    DIR_CUSTOM("admin", CTX_MAIN, CONF_BLOCK_OPTIONAL, 0, 1, ONCE, parse_admin, print_admin, "on"),
    DIR_CUSTOM("redis", CTX_MAIN, CONF_BLOCK_OPTIONAL, 1, 1, ONCE, parse_redis, print_redis, NULL),
    DIR_CUSTOM("access_log", CTX_MAIN, CONF_NO_BLOCK, 1, 2, ONCE, parse_access_log, print_access_log, "off"),
    DIR_SIZE("access_log_buffer", CTX_MAIN, struct conf, access_log_buffer, 64 * KIB, GIB, "1m"),
    DIR_CUSTOM("slow_log", CTX_MAIN, CONF_NO_BLOCK, 1, 1, ONCE, parse_slow_log, print_slow_log, "stderr"),
    DIR_DURATION("slow_log_threshold", CTX_MAIN, struct conf, slow_log_threshold_ms, 1, MS_DAY, "1s"),
    DIR_CUSTOM("analytics", CTX_MAIN, CONF_BLOCK_OPTIONAL, 1, 1, ONCE, parse_analytics, print_analytics, NULL),
    DIR_NUMBER("batch", CTX_ANALYTICS, struct conf_analytics, batch, 1, 100000, "1000"),
    DIR_DURATION("flush", CTX_ANALYTICS, struct conf_analytics, flush_ms, 10, 10 * MS_MINUTE, "500ms"),
    DIR_NUMBER("queue", CTX_ANALYTICS, struct conf_analytics, queue, 16, 10000000, "100000"),
    DIR_CUSTOM("upstream", CTX_MAIN, CONF_BLOCK, 1, 1, MULTI | EARLY, parse_upstream, print_upstreams, NULL),
    DIR_CUSTOM("cache", CTX_MAIN, CONF_BLOCK_OPTIONAL, 1, 1, MULTI | EARLY, parse_cache, print_caches, NULL),
    DIR_CUSTOM("server", CTX_MAIN, CONF_BLOCK, 0, 0, MULTI, parse_server, print_servers, NULL),

    DIR_CUSTOM("listen", CTX_ADMIN, CONF_NO_BLOCK, 1, 1, ONCE, parse_admin_listen, print_admin_listen,
               "127.0.0.1:9901"),
    DIR_CUSTOM("token", CTX_ADMIN, CONF_NO_BLOCK, 1, 1, ONCE, parse_admin_token, print_admin_token, NULL),

    DIR_CUSTOM("server", CTX_UPSTREAM, CONF_NO_BLOCK, 1, 4, MULTI, parse_upstream_server,
               print_upstream_servers, NULL),
    DIR_ENUM("balance", CTX_UPSTREAM, struct conf_upstream, balance, balances, "p2c"),
    DIR_NUMBER("keepalive", CTX_UPSTREAM, struct conf_upstream, keepalive, 0, 10000, "64"),
    DIR_DURATION("keepalive_timeout", CTX_UPSTREAM, struct conf_upstream, keepalive_timeout_ms, 1, MS_DAY,
                 "60s"),
    DIR_DURATION("connect_timeout", CTX_UPSTREAM, struct conf_upstream, connect_timeout_ms, 1, MS_DAY, "5s"),
    DIR_DURATION("header_timeout", CTX_UPSTREAM, struct conf_upstream, header_timeout_ms, 1, MS_DAY, "60s"),
    DIR_DURATION("idle_timeout", CTX_UPSTREAM, struct conf_upstream, idle_timeout_ms, 1, MS_DAY, "60s"),
    DIR_NUMBER("max_fails", CTX_UPSTREAM, struct conf_upstream, max_fails, 0, 100000, "1"),
    DIR_DURATION("fail_timeout", CTX_UPSTREAM, struct conf_upstream, fail_timeout_ms, 1, MS_DAY, "10s"),
    DIR_CUSTOM("retry", CTX_UPSTREAM, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_retry, print_retry,
               "1 on=connect backoff=100ms..2s"),
    DIR_SIZE("retry_body_max", CTX_UPSTREAM, struct conf_upstream, retry.body_max, 0, 64 * MIB, "64k"),
    DIR_CUSTOM("retry_budget", CTX_UPSTREAM, CONF_NO_BLOCK, 1, 2, ONCE, parse_retry_budget, print_retry_budget,
               "20% min=10/s"),
    DIR_CUSTOM("breaker", CTX_UPSTREAM, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_breaker, print_breaker,
               "off"),
    DIR_CUSTOM("health_check", CTX_UPSTREAM, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_health_check,
               print_health_check, NULL),
    /* TLS to upstream servers */
    DIR_FLAG("tls_verify", CTX_UPSTREAM, struct conf_upstream, tls_verify, "on"),
    DIR_VALUE("tls_ca", CTX_UPSTREAM, parse_tls_file, print_tls_string, NULL, struct conf_upstream, tls_ca, 0,
              0, NULL),
    DIR_VALUE("tls_cert", CTX_UPSTREAM, parse_tls_file, print_tls_string, NULL, struct conf_upstream, tls_cert,
              0, 0, NULL),
    DIR_VALUE("tls_key", CTX_UPSTREAM, parse_tls_file, print_tls_string, NULL, struct conf_upstream, tls_key, 0,
              0, NULL),
    DIR_VALUE("tls_sni", CTX_UPSTREAM, parse_tls_sni, print_tls_string, NULL, struct conf_upstream, tls_sni, 0,
              0, NULL),

    DIR_SIZE("memory", CTX_CACHE, struct conf_cache, memory, MIB, 1024 * GIB, "256m"),
    DIR_SIZE("max_object", CTX_CACHE, struct conf_cache, max_object, 1, 128 * GIB, "8m"),
    DIR_FLAG("redis", CTX_CACHE, struct conf_cache, redis, "off"),

    DIR_DURATION("timeout", CTX_REDIS, struct conf_redis, timeout_ms, 1, 60 * MS_SECOND, "50ms"),

    DIR_CUSTOM("listen", CTX_SERVER, CONF_NO_BLOCK, 1, 4, MULTI, parse_listen, print_listens, NULL),
    DIR_CUSTOM("server_name", CTX_SERVER, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, MULTI, parse_server_name,
               print_server_names, NULL),
    DIR_CUSTOM("process_time_header", CTX_SERVER, CONF_NO_BLOCK, 1, 1, ONCE, parse_process_time_header,
               print_process_time_header, "X-Process-Time"),
    DIR_DURATION("client_header_timeout", CTX_SERVER, struct conf_server, client_header_timeout_ms, 1, MS_DAY,
                 "10s"),
    DIR_DURATION("client_body_timeout", CTX_SERVER, struct conf_server, client_body_timeout_ms, 1, MS_DAY,
                 "30s"),
    DIR_DURATION("keepalive_timeout", CTX_SERVER, struct conf_server, keepalive_timeout_ms, 0, MS_DAY, "75s"),
    DIR_DURATION("send_timeout", CTX_SERVER, struct conf_server, send_timeout_ms, 1, MS_DAY, "60s"),
    DIR_SIZE("max_header_size", CTX_SERVER, struct conf_server, max_header_size, KIB, MIB, "16k"),
    DIR_NUMBER("max_headers", CTX_SERVER, struct conf_server, max_headers, 1, 10000, "100"),
    DIR_SIZE("max_uri_size", CTX_SERVER, struct conf_server, max_uri_size, 256, MIB, "8k"),
    DIR_SIZE("max_body_size", CTX_SERVER, struct conf_server, max_body_size, 0, UINT64_MAX, "10m"),
    DIR_FLAG("via", CTX_SERVER, struct conf_server, via, "on"),
    DIR_FLAG("server_timing", CTX_SERVER, struct conf_server, server_timing, "off"),
    DIR_CUSTOM("route", CTX_SERVER, CONF_BLOCK, 1, 1, MULTI, parse_route, print_routes, NULL),

    DIR_VALUE("upstream", CTX_ROUTE, parse_upstream_ref, print_upstream_ref, NULL, struct conf_route, upstream, 0, 0,
              NULL),
    DIR_CUSTOM("set_header", CTX_ROUTE, CONF_NO_BLOCK, 2, 2, MULTI, parse_request_header,
               print_request_headers, NULL),
    DIR_CUSTOM("remove_header", CTX_ROUTE, CONF_NO_BLOCK, 1, 1, MULTI, parse_request_header, NULL, NULL),
    DIR_CUSTOM("set_response_header", CTX_ROUTE, CONF_NO_BLOCK, 2, 2, MULTI, parse_response_header,
               print_response_headers, NULL),
    DIR_CUSTOM("remove_response_header", CTX_ROUTE, CONF_NO_BLOCK, 1, 1, MULTI, parse_response_header, NULL,
               NULL),
    DIR_DURATION("websocket_idle_timeout", CTX_ROUTE, struct conf_route, websocket_idle_timeout_ms, 1,
                 7 * MS_DAY, "300s"),
    DIR_CUSTOM("cache", CTX_ROUTE, CONF_BLOCK_OPTIONAL, 1, 1, ONCE, parse_route_cache, print_route_cache,
               NULL),
    DIR_DURATION("deadline", CTX_ROUTE, struct conf_route, deadline_ms, 0, MS_DAY, "0s"),
    DIR_VALUE("fallback", CTX_ROUTE, parse_upstream_ref, print_upstream_ref, NULL, struct conf_route, fallback, 0, 0,
              NULL),
    DIR_FLAG("retry_non_idempotent", CTX_ROUTE, struct conf_route, retry_non_idempotent, "off"),
    DIR_CUSTOM("server_timing", CTX_ROUTE, CONF_NO_BLOCK, 1, 1, ONCE, parse_route_server_timing,
               print_route_server_timing, NULL),

    DIR_CUSTOM("methods", CTX_ROUTE_CACHE, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_cache_methods,
               print_cache_methods, "GET HEAD"),
    DIR_CUSTOM("ttl", CTX_ROUTE_CACHE, CONF_NO_BLOCK, 1, 2, ONCE, parse_cache_ttl, print_cache_ttl, NULL),
    DIR_CUSTOM("ttl_status", CTX_ROUTE_CACHE, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_ttl_status,
               print_ttl_status, NULL),
    DIR_CUSTOM("ttl_from", CTX_ROUTE_CACHE, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, MULTI, parse_ttl_from,
               print_ttl_from, NULL),
    DIR_DURATION("stale_while_revalidate", CTX_ROUTE_CACHE, struct conf_route_cache,
                 stale_while_revalidate_ms, 0, MAX_TTL, "0s"),
    DIR_DURATION("stale_if_error", CTX_ROUTE_CACHE, struct conf_route_cache, stale_if_error_ms, 0, MAX_TTL,
                 "0s"),
    DIR_DURATION("max_stale", CTX_ROUTE_CACHE, struct conf_route_cache, max_stale_ms, 0, MAX_TTL, "1d"),
    DIR_CUSTOM("key", CTX_ROUTE_CACHE, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_cache_key,
               print_cache_key, NULL),
    DIR_SIZE("key_body_max", CTX_ROUTE_CACHE, struct conf_route_cache, key_body_max, 1, 64 * MIB, "1m"),
    DIR_FLAG("query_sort", CTX_ROUTE_CACHE, struct conf_route_cache, key_query_sorted, "off"),
    DIR_CUSTOM("query_ignore", CTX_ROUTE_CACHE, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_query_ignore,
               print_query_ignore, NULL),

    /* issue 5: admission control */
    DIR_CUSTOM("limit", CTX_MAIN, CONF_BLOCK, 1, 1, MULTI | EARLY, parse_limit, print_limits, NULL),
    DIR_CUSTOM("key", CTX_LIMIT, CONF_NO_BLOCK, 1, CONF_ARGS_ANY, ONCE, parse_limit_key, print_limit_key, "ip"),
    DIR_CUSTOM("rate", CTX_LIMIT, CONF_NO_BLOCK, 1, 1, ONCE, parse_limit_rate, print_limit_rate, NULL),
    DIR_NUMBER("burst", CTX_LIMIT, struct conf_limit, burst, 0, 1000000000, "0"),
    DIR_ENUM("scope", CTX_LIMIT, struct conf_limit, scope, limit_scopes, "local"),
    DIR_ENUM("on_redis_error", CTX_LIMIT, struct conf_limit, on_redis_error, limit_on_errors, "local"),
    DIR_NUMBER("max_keys", CTX_LIMIT, struct conf_limit, max_keys, 1, 100000000, "100000"),
    DIR_FLAG("headers", CTX_LIMIT, struct conf_limit, headers, "on"),
    DIR_CUSTOM("limit", CTX_ROUTE, CONF_NO_BLOCK, 1, 1, MULTI, parse_route_limit, print_route_limits, NULL),
    {.name = "max_inflight", .ctx = CTX_ROUTE, .min_args = 1, .max_args = 3, .parse = parse_max_inflight,
     .print = print_max_inflight, .offset = offsetof(struct conf_route, max_inflight)},
    {.name = "max_inflight", .ctx = CTX_UPSTREAM, .min_args = 1, .max_args = 3, .parse = parse_max_inflight,
     .print = print_max_inflight, .offset = offsetof(struct conf_upstream, max_inflight)},
    {.name = "trusted_proxies", .ctx = CTX_MAIN, .min_args = 1, .max_args = CONF_ARGS_ANY,
     .parse = parse_trusted_proxies, .print = print_trusted_proxies, .offset = offsetof(struct conf, trusted_proxies)},
    {.name = "trusted_proxies", .ctx = CTX_SERVER, .min_args = 1, .max_args = CONF_ARGS_ANY,
     .parse = parse_trusted_proxies, .print = print_trusted_proxies,
     .offset = offsetof(struct conf_server, trusted_proxies)},
};

static const struct directive *directive_lookup(const char *name, unsigned ctx)
{
    for (size_t i = 0; i < ARRAY_SIZE(directives); i++)
        if ((directives[i].ctx & ctx) && strcmp(directives[i].name, name) == 0)
            return &directives[i];
    return NULL;
}

static void report_misplaced(struct build *b, const struct conf_node *n)
{
    const char *name = n->argv[0];
    if (directive_lookup(name, ~0u) != NULL)
        conf_report(b->ld, &n->pos, "directive \"%s\" is not allowed here", name);
    else
        conf_report(b->ld, &n->pos, "unknown directive \"%s\"", name);
}

static void apply_defaults(struct build *b, unsigned ctx, void *obj)
{
    for (size_t i = 0; i < ARRAY_SIZE(directives); i++) {
        const struct directive *d = &directives[i];
        if (!(d->ctx & ctx) || d->def == NULL)
            continue;
        char text[64], *argv[4] = {(char *)d->name};
        struct conf_node n = {.argv = argv, .argc = 1, .pos = {CONF_DEFAULT_FILE, 0}};
        snprintf(text, sizeof(text), "%s", d->def);
        char *save = NULL;
        for (char *w = strtok_r(text, " ", &save); w != NULL && n.argc < ARRAY_SIZE(argv);
             w = strtok_r(NULL, " ", &save))
            argv[n.argc++] = w;
        d->parse(b, &n, d, obj);
    }
}

/* Applies the rows of ctx to the directives of block: early rows first, then
 * the others in file order. */
static void apply_block(struct build *b, unsigned ctx, const struct conf_node *block, void *obj)
{
    const struct conf_node *seen[ARRAY_SIZE(directives)] = {0};
    for (int sweep = 0; sweep < 2; sweep++) {
        for (size_t i = 0; i < block->nkids; i++) {
            const struct conf_node *n = &block->kids[i];
            if (n->is_bad)
                continue;
            const struct directive *d = directive_lookup(n->argv[0], ctx);
            if ((d != NULL && d->is_early) != (sweep == 0))
                continue;
            if (d == NULL) {
                report_misplaced(b, n);
                continue;
            }
            if (!conf_check_shape(b->ld, n, d->block, d->min_args, d->max_args))
                continue;
            const struct conf_node **first = &seen[d - directives];
            if (!d->is_multi && *first != NULL) {
                conf_report(b->ld, &n->pos, "directive \"%s\" is repeated (first at %s:%d)", n->argv[0],
                            (*first)->pos.file, (*first)->pos.line);
                continue;
            }
            *first = n;
            d->parse(b, n, d, obj);
        }
    }
}

static void print_block(FILE *out, int indent, unsigned ctx, const void *obj)
{
    for (size_t i = 0; i < ARRAY_SIZE(directives); i++)
        if ((directives[i].ctx & ctx) && directives[i].print != NULL)
            directives[i].print(out, indent, &directives[i], obj);
}

/* --- whole-configuration checks --- */

/* One listen address of a server with one of its names ("" if it has none). */
struct addr_use {
    const char *addr;
    const char *name;
    size_t server;
    const struct conf_listen *l;
    bool is_first_name;
};

static int cmp_addr_use(const void *a, const void *b)
{
    const struct addr_use *x = a, *y = b;
    int c = strcmp(x->addr, y->addr);
    if (c == 0)
        c = strcmp(x->name, y->name);
    return c ? c : (x->server > y->server) - (x->server < y->server);
}

/* Servers may share an address as virtual hosts: then no two of them may
 * claim the same name (or both have none, which would be the same catch-all
 * twice), and all must agree on tls. */
static void check_listens(struct build *b)
{
    struct conf *conf = b->conf;
    size_t n = 0;
    for (size_t i = 0; i < conf->nservers; i++) {
        const struct conf_server *s = &conf->servers[i];
        size_t names = s->nnames ? s->nnames : 1;
        if (s->nlistens > (MAX_ADDR_USES - n) / names) {
            conf_report(b->ld, &s->pos, "too many listen and server_name combinations to check (over %d)",
                        MAX_ADDR_USES);
            return;
        }
        n += s->nlistens * names;
    }
    struct addr_use *v = conf_xcalloc(n, sizeof(*v)), *e = v;
    for (size_t i = 0; i < conf->nservers; i++) {
        const struct conf_server *s = &conf->servers[i];
        for (size_t j = 0; j < s->nlistens; j++)
            for (size_t k = 0; k < (s->nnames ? s->nnames : 1); k++)
                *e++ = (struct addr_use){s->listens[j].text, s->nnames ? s->names[k] : "", i, &s->listens[j],
                                         k == 0};
    }
    qsort(v, n, sizeof(*v), cmp_addr_use);
    for (size_t i = 0, g = 0, r = 0; i < n; i++) {
        if (i == 0 || strcmp(v[i].addr, v[g].addr) != 0) {
            g = r = i;
            continue;
        }
        const struct conf_pos *was = &v[g].l->pos;
        if (v[i].is_first_name && v[i].server != v[g].server && v[i].l->tls != v[g].l->tls)
            conf_report(b->ld, &v[i].l->pos, "listen %s is %s here but %s at %s:%d", v[i].addr,
                        v[i].l->tls ? "tls" : "plain", v[g].l->tls ? "tls" : "plain", was->file, was->line);
        if (strcmp(v[i].name, v[r].name) != 0) {
            r = i;
            continue;
        }
        was = &v[r].l->pos;
        if (v[i].server == v[r].server)
            continue;
        if (v[i].name[0] == '\0')
            conf_report(b->ld, &v[i].l->pos,
                        "listen %s is used by two servers without server_name (the other at %s:%d)",
                        v[i].addr, was->file, was->line);
        else
            conf_report(b->ld, &v[i].l->pos,
                        "server_name \"%s\" on %s is already used by the server at %s:%d", v[i].name,
                        v[i].addr, was->file, was->line);
    }
    free(v);
    if (!conf->admin_enabled)
        return;
    for (size_t i = 0; i < conf->nservers; i++)
        for (size_t j = 0; j < conf->servers[i].nlistens; j++)
            if (strcmp(conf->servers[i].listens[j].text, conf->admin_listen.text) == 0)
                conf_report(b->ld, &conf->servers[i].listens[j].pos,
                            "listen %s is also the admin listen address", conf->admin_listen.text);
}

static void check_conf(struct build *b, const struct conf_node *root)
{
    bool has_server = false;
    for (size_t i = 0; i < root->nkids; i++)
        has_server |= root->kids[i].has_block && strcmp(root->kids[i].argv[0], "server") == 0;
    if (!has_server)
        conf_report(b->ld, &(struct conf_pos){b->ld->files[0], 0}, "no server block");
    REPORT_REPEATS(b, "upstream", b->conf->upstreams, b->conf->nupstreams, name);
    REPORT_REPEATS(b, "cache", b->conf->caches, b->conf->ncaches, name);
    REPORT_REPEATS(b, "limit", b->conf->limits, b->conf->nlimits, name);
    check_listens(b);
}

/* --- the snapshot --- */

static void listen_dispose(struct conf_listen *l)
{
    free(l->text);
    free(l->tls_cert);
    free(l->tls_key);
}

static void header_ops_free(struct conf_header_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ops[i].name);
        free(ops[i].value);
    }
    free(ops);
}

static void server_dispose(struct conf_server *s)
{
    for (size_t i = 0; i < s->nlistens; i++)
        listen_dispose(&s->listens[i]);
    free(s->listens);
    strings_free(s->names, s->nnames);
    free(s->process_time_header);
    free(s->trusted_proxies.v);
    for (size_t i = 0; i < s->nroutes; i++) {
        free(s->routes[i].prefix);
        header_ops_free(s->routes[i].req_ops, s->routes[i].nreq_ops);
        header_ops_free(s->routes[i].resp_ops, s->routes[i].nresp_ops);
        route_cache_free(s->routes[i].cache);
        free(s->routes[i].limits);
    }
    free(s->routes);
}

static void conf_free(struct conf *conf)
{
    if (conf == NULL)
        return;
    for (size_t i = 0; i < conf->nupstreams; i++) {
        struct conf_upstream *u = &conf->upstreams[i];
        for (size_t j = 0; j < u->nservers; j++) {
            free(u->servers[j].host);
            free(u->servers[j].name);
        }
        free(u->servers);
        free(u->name);
        free(u->health.path);
        free(u->tls_ca);
        free(u->tls_cert);
        free(u->tls_key);
        free(u->tls_sni);
    }
    free(conf->upstreams);
    for (size_t i = 0; i < conf->ncaches; i++)
        free(conf->caches[i].name);
    free(conf->caches);
    if (conf->redis != NULL) {
        free(conf->redis->url);
        free(conf->redis->host);
        free(conf->redis);
    }
    for (size_t i = 0; i < conf->nlimits; i++) {
        free(conf->limits[i].name);
        limit_keys_free(conf->limits[i].keys, conf->limits[i].nkeys);
    }
    free(conf->limits);
    free(conf->trusted_proxies.v);
    for (size_t i = 0; i < conf->nservers; i++)
        server_dispose(&conf->servers[i]);
    free(conf->servers);
    listen_dispose(&conf->admin_listen);
    free(conf->admin_token);
    free(conf->access_log);
    free(conf->slow_log);
    if (conf->analytics != NULL) {
        free(conf->analytics->url);
        free(conf->analytics->hostaddr);
        free(conf->analytics);
    }
    free(conf->path);
    for (size_t i = 0; i < conf->_nfiles; i++)
        free(conf->_files[i]);
    free(conf->_files);
    free(conf);
}

/* Pass 2 over the tree pass 1 made from path; frees the loader's state. */
static struct conf *build_conf(struct conf_loader *ld, struct conf_node *root, const char *path)
{
    struct conf *conf = NULL;
    /* no top-level file, or a tree cut short by a bound: pass 2 would only add noise */
    if (ld->nfiles > 0 && !ld->is_stopped) {
        conf = conf_xcalloc(1, sizeof(*conf));
        atomic_init(&conf->refs, 1);
        conf->path = conf_xstrdup(path);
        struct build b = {.ld = ld, .conf = conf, .root = root};
        apply_defaults(&b, CTX_MAIN, conf);
        apply_defaults(&b, CTX_ADMIN, conf);
        apply_block(&b, CTX_MAIN, root, conf);
        check_conf(&b, root);
        free(b.upstream_index);
        free(b.cache_index);
        free(b.limit_index);
        conf->_files = ld->files;
        conf->_nfiles = ld->nfiles;
        ld->files = NULL;
        ld->nfiles = 0;
    }
    if (ld->err != NULL && ld->nerrors > CONF_MAX_SHOWN_ERRORS)
        fprintf(ld->err, "%s: %u more errors not shown\n", path, ld->nerrors - CONF_MAX_SHOWN_ERRORS);
    for (size_t i = 0; i < ld->nfiles; i++)
        free(ld->files[i]);
    free(ld->files);
    strbuf_dispose(&ld->word);
    conf_node_dispose(root);
    if (ld->nerrors > 0) {
        conf_free(conf);
        return NULL;
    }
    return conf;
}

struct conf *conf_load_file(const char *path, FILE *err)
{
    struct conf_loader ld = {.err = err};
    struct conf_node root = {0};
    strbuf_init(&ld.word);
    conf_parse_file(&ld, path, &root);
    return build_conf(&ld, &root, path);
}

struct conf *conf_load_string(const char *text, const char *name, FILE *err)
{
    struct conf_loader ld = {.err = err};
    struct conf_node root = {0};
    strbuf_init(&ld.word);
    conf_parse_string(&ld, text, name, &root);
    return build_conf(&ld, &root, name);
}

void conf_print(const struct conf *conf, FILE *out)
{
    fprintf(out, "# effective configuration\n");
    print_block(out, 0, CTX_MAIN, conf);
}

struct conf *conf_ref(struct conf *conf)
{
    atomic_fetch_add_explicit(&conf->refs, 1, memory_order_relaxed);
    return conf;
}

void conf_unref(struct conf *conf)
{
    if (conf != NULL && atomic_fetch_sub_explicit(&conf->refs, 1, memory_order_acq_rel) == 1)
        conf_free(conf);
}
