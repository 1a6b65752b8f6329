/* SPDX-License-Identifier: MIT */
/*
 * conf pass 1: bytes -> tokens -> a tree of directives.
 *
 * The lexer keeps the line of every token.  A word is a run of bare text and
 * "quoted" parts with no space between them, so cert="/my dir/a.pem" is one
 * word.  ${NAME} is replaced by the environment variable in both parts (an
 * unset one is an error, never ""); inside quotes \" \\ and \$ are the only
 * escapes.  "#" starts a comment where a word could start.
 *
 * The parser makes one conf_node per directive and splices included files
 * into the block that includes them.  It knows no directive but "include":
 * meaning is pass 2's job (conf.c).  Every bound of conf_int.h is enforced
 * here, so pass 2 always gets a tree of bounded size, and a word that was
 * already reported marks its node is_bad so pass 2 does not pile follow-up
 * errors on it.  Main thread only (getenv, glob and blocking reads).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/strbuf.h"
#include "conf/conf_int.h"

#define ENV_NAME_MAX 255

enum tok_kind { TOK_EOF = 0, TOK_WORD, TOK_SEMI, TOK_OPEN, TOK_CLOSE };

struct token {
    enum tok_kind kind;
    int line;
    bool is_bad;      /* already reported; the word is in conf_loader.word */
    bool is_too_long; /* reported once per word */
};

struct lexer {
    struct conf_loader *ld;
    const char *file; /* interned in ld->files */
    const char *p, *end;
    int line;
    bool has_bad_char; /* one "invalid character" report per file is enough */
    bool is_runaway;   /* a string ran to the end of the file: what is open there is its fault */
    bool has_pushed;   /* a "}" or EOF the parser handed back */
    struct token pushed;
};

/* A file being parsed, with the chain of files that include it: an include
 * of a file already on the chain would never end. */
struct open_file {
    dev_t dev;
    ino_t ino;
    bool has_id; /* false for a string */
    int depth;   /* includes above this file */
    const struct open_file *up;
};

struct parser {
    struct conf_loader *ld;
    struct lexer lx;
    const struct open_file *file;
};

static void parse_file(struct conf_loader *ld, const char *path, const struct conf_pos *site,
                       const struct open_file *up, struct conf_node *parent, int depth);

void *conf_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        abort();
    return p;
}

void *conf_xrealloc(void *p, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        abort();
    p = realloc(p, n != 0 && size != 0 ? n * size : 1);
    if (p == NULL)
        abort();
    return p;
}

void *conf_array_push(void *array, size_t *n, size_t size)
{
    size_t i = *n;
    if (i == 0 || (i >= 4 && (i & (i - 1)) == 0))
        array = conf_xrealloc(array, i ? i * 2 : 4, size);
    memset((char *)array + i * size, 0, size);
    *n = i + 1;
    return array;
}

char *conf_xstrdup(const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        abort();
    return d;
}

void conf_report(struct conf_loader *ld, const struct conf_pos *pos, const char *fmt, ...)
{
    ld->nerrors++;
    if (ld->err == NULL || ld->nerrors > CONF_MAX_SHOWN_ERRORS)
        return;
    if (pos->line > 0)
        fprintf(ld->err, "%s:%d: ", pos->file, pos->line);
    else
        fprintf(ld->err, "%s: ", pos->file);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(ld->err, fmt, ap);
    va_end(ap);
    fputc('\n', ld->err);
}

char *conf_path_resolve(const char *base_file, const char *rel)
{
    const char *slash = strrchr(base_file, '/');
    if (rel[0] == '/' || slash == NULL)
        return conf_xstrdup(rel);
    int dirlen = (int)(slash - base_file);
    size_t size = (size_t)dirlen + strlen(rel) + 2;
    char *path = conf_xcalloc(1, size);
    snprintf(path, size, "%.*s/%s", dirlen, base_file, rel);
    return path;
}

void conf_node_dispose(struct conf_node *n)
{
    for (size_t i = 0; i < n->argc; i++)
        free(n->argv[i]);
    free(n->argv);
    for (size_t i = 0; i < n->nkids; i++)
        conf_node_dispose(&n->kids[i]);
    free(n->kids);
}

bool conf_check_shape(struct conf_loader *ld, const struct conf_node *n, enum conf_block_rule block,
                      unsigned min_args, unsigned max_args)
{
    const char *name = n->argv[0];
    size_t got = n->argc - 1;
    if (block == CONF_BLOCK && !n->has_block) {
        conf_report(ld, &n->pos, "directive \"%s\" needs a block", name);
        return false;
    }
    if (block == CONF_NO_BLOCK && n->has_block) {
        conf_report(ld, &n->pos, "directive \"%s\" does not take a block", name);
        return false;
    }
    if (got >= min_args && (max_args == CONF_ARGS_ANY || got <= max_args))
        return true;
    if (min_args == max_args)
        conf_report(ld, &n->pos, "directive \"%s\" takes %u argument%s, got %zu", name, min_args,
                    min_args == 1 ? "" : "s", got);
    else if (max_args == CONF_ARGS_ANY)
        conf_report(ld, &n->pos, "directive \"%s\" takes at least %u argument%s, got %zu", name, min_args,
                    min_args == 1 ? "" : "s", got);
    else
        conf_report(ld, &n->pos, "directive \"%s\" takes %u to %u arguments, got %zu", name, min_args,
                    max_args, got);
    return false;
}

static const char *intern_file(struct conf_loader *ld, const char *path)
{
    ld->files = conf_xrealloc(ld->files, ld->nfiles + 1, sizeof(*ld->files));
    ld->files[ld->nfiles] = conf_xstrdup(path);
    return ld->files[ld->nfiles++];
}

/* --- lexer --- */

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static bool is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

static void bad_char(struct lexer *lx, struct token *t, unsigned char c)
{
    if (t != NULL)
        t->is_bad = true;
    if (lx->has_bad_char)
        return;
    lx->has_bad_char = true;
    conf_report(lx->ld, &(struct conf_pos){lx->file, lx->line}, "invalid character 0x%02x", c);
}

/* Empties the word in place, keeping its memory (strbuf has no truncate);
 * data is never NULL afterwards, so an empty word is "". */
static void word_clear(struct strbuf *w)
{
    strbuf_append(w, "", 0);
    w->len = 0;
    w->data[0] = '\0';
}

static void word_add(struct lexer *lx, struct token *t, char c)
{
    struct strbuf *w = &lx->ld->word;
    if (w->len >= CONF_MAX_TOKEN) {
        if (!t->is_too_long)
            conf_report(lx->ld, &(struct conf_pos){lx->file, t->line}, "word is longer than %u KiB",
                        CONF_MAX_TOKEN >> 10);
        t->is_too_long = t->is_bad = true;
        return;
    }
    strbuf_append(w, &c, 1);
}

/* At "${": appends the variable's value. */
static void lex_env(struct lexer *lx, struct token *t)
{
    const char *name = lx->p + 2, *q = name;
    while (q < lx->end && (isalnum((unsigned char)*q) || *q == '_'))
        q++;
    size_t len = (size_t)(q - name);
    if (len == 0 || len > ENV_NAME_MAX || q == lx->end || *q != '}' || isdigit((unsigned char)*name)) {
        conf_report(lx->ld, &(struct conf_pos){lx->file, lx->line},
                    "invalid variable reference (expected ${NAME})");
        t->is_bad = true;
        /* skip the whole "${...}" when it is closed within the word, so its
         * "}" does not read as the end of a block */
        const char *close = lx->p + 2;
        while (close < lx->end && strchr("}; \t\r\n\"{", *close) == NULL)
            close++;
        lx->p = close < lx->end && *close == '}' ? close + 1 : lx->p + 2;
        return;
    }
    char var[ENV_NAME_MAX + 1];
    memcpy(var, name, len);
    var[len] = '\0';
    lx->p = q + 1;
    const char *value = getenv(var);
    if (value == NULL) {
        conf_report(lx->ld, &(struct conf_pos){lx->file, lx->line}, "environment variable %s is not set",
                    var);
        t->is_bad = true;
        return;
    }
    for (; *value; value++)
        word_add(lx, t, *value);
}

static bool at_env(const struct lexer *lx)
{
    return lx->p[0] == '$' && lx->p + 1 < lx->end && lx->p[1] == '{';
}

/* At a '"': appends the string's contents. */
static void lex_quoted(struct lexer *lx, struct token *t)
{
    int start = lx->line;
    lx->p++;
    for (;;) {
        if (lx->p == lx->end) {
            conf_report(lx->ld, &(struct conf_pos){lx->file, start}, "unterminated string");
            t->is_bad = lx->is_runaway = true;
            return;
        }
        unsigned char c = (unsigned char)*lx->p;
        if (c == '"') {
            lx->p++;
            return;
        }
        if (at_env(lx)) {
            lex_env(lx, t);
            continue;
        }
        lx->p++;
        if (c == '\\') {
            if (lx->p < lx->end && *lx->p != '\0' && strchr("\"\\$", *lx->p) != NULL) {
                word_add(lx, t, *lx->p++);
            } else {
                conf_report(lx->ld, &(struct conf_pos){lx->file, lx->line},
                            "invalid escape in string (use \\\" \\\\ or \\$)");
                t->is_bad = true;
            }
            continue;
        }
        if (c == '\n')
            lx->line++;
        else if (is_ctl(c) && c != '\t' && c != '\r') {
            bad_char(lx, t, c);
            continue;
        }
        word_add(lx, t, (char)c);
    }
}

static void lex_word(struct lexer *lx, struct token *t)
{
    while (lx->p < lx->end) {
        unsigned char c = (unsigned char)*lx->p;
        if (is_space(c) || c == ';' || c == '{' || c == '}')
            return;
        if (c == '"') {
            lex_quoted(lx, t);
            continue;
        }
        if (at_env(lx)) {
            lex_env(lx, t);
            continue;
        }
        lx->p++;
        if (is_ctl(c))
            bad_char(lx, t, c);
        else
            word_add(lx, t, (char)c);
    }
}

static void skip_space(struct lexer *lx)
{
    while (lx->p < lx->end) {
        unsigned char c = (unsigned char)*lx->p;
        if (c == '#') {
            while (lx->p < lx->end && *lx->p != '\n')
                lx->p++;
            continue;
        }
        if (!is_space(c) && !is_ctl(c))
            return;
        lx->p++;
        if (c == '\n')
            lx->line++;
        else if (!is_space(c))
            bad_char(lx, NULL, c);
    }
}

static void lex_next(struct lexer *lx, struct token *t)
{
    struct conf_loader *ld = lx->ld;
    if (lx->has_pushed) {
        *t = lx->pushed;
        lx->has_pushed = false;
        return;
    }
    skip_space(lx);
    *t = (struct token){.kind = TOK_EOF, .line = lx->line};
    if (ld->is_stopped || lx->p == lx->end)
        return;
    switch (*lx->p) {
    case ';':
        t->kind = TOK_SEMI;
        lx->p++;
        return;
    case '{':
        t->kind = TOK_OPEN;
        lx->p++;
        return;
    case '}':
        t->kind = TOK_CLOSE;
        lx->p++;
        return;
    }
    if (++ld->nwords > CONF_MAX_WORDS) {
        conf_report(ld, &(struct conf_pos){lx->file, lx->line}, "the configuration has more than %d words",
                    CONF_MAX_WORDS);
        ld->is_stopped = true;
        return;
    }
    t->kind = TOK_WORD;
    word_clear(&ld->word);
    lex_word(lx, t);
}

/* --- parser --- */

static void node_add_arg(struct conf_node *n, const char *arg)
{
    *CONF_PUSH(n->argv, n->argc) = conf_xstrdup(arg);
}

/* After a '{' that will not be kept: consumes tokens up to its '}'. */
static void skip_block(struct parser *ps)
{
    struct token t;
    for (unsigned open = 1; open > 0;) {
        lex_next(&ps->lx, &t);
        if (t.kind == TOK_EOF)
            return;
        if (t.kind == TOK_OPEN)
            open++;
        else if (t.kind == TOK_CLOSE)
            open--;
    }
}

static void parse_include(struct parser *ps, struct conf_node *parent, const struct conf_node *n, int depth)
{
    if (ps->file->depth >= CONF_MAX_INCLUDE_DEPTH) {
        conf_report(ps->ld, &n->pos, "includes are nested more than %d deep", CONF_MAX_INCLUDE_DEPTH);
        return;
    }
    char *path = conf_path_resolve(n->pos.file, n->argv[1]);
    if (strpbrk(path, "*?[") == NULL) {
        parse_file(ps->ld, path, &n->pos, ps->file, parent, depth);
        free(path);
        return;
    }
    glob_t g;
    memset(&g, 0, sizeof(g));
    int r = glob(path, 0, NULL, &g);
    if (r == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++)
            parse_file(ps->ld, g.gl_pathv[i], &n->pos, ps->file, parent, depth);
    } else if (r != GLOB_NOMATCH) {
        conf_report(ps->ld, &n->pos, "include \"%s\": cannot expand the pattern", path);
    }
    globfree(&g);
    free(path);
}

static bool parse_body(struct parser *ps, struct conf_node *parent, int depth, bool is_block);

static void parse_directive(struct parser *ps, struct conf_node *parent, const struct token *first, int depth)
{
    struct conf_loader *ld = ps->ld;
    struct conf_node n = {.pos = {ps->lx.file, first->line}, .is_bad = first->is_bad};
    node_add_arg(&n, ld->word.data);
    struct token t;
    for (lex_next(&ps->lx, &t); t.kind == TOK_WORD; lex_next(&ps->lx, &t)) {
        node_add_arg(&n, ld->word.data);
        n.is_bad |= t.is_bad;
    }
    bool is_kept = true;
    if (t.kind == TOK_OPEN) {
        n.has_block = true;
        if (depth >= CONF_MAX_DEPTH) {
            conf_report(ld, &(struct conf_pos){ps->lx.file, t.line}, "blocks are nested more than %d deep",
                        CONF_MAX_DEPTH);
            skip_block(ps);
            is_kept = false;
        } else if (!parse_body(ps, &n, depth + 1, true) && !ld->is_stopped && !ps->lx.is_runaway) {
            conf_report(ld, &n.pos, "block \"%s\" is not closed (missing \"}\")", n.argv[0]);
        }
    } else if (t.kind != TOK_SEMI) {
        if (!ld->is_stopped && !ps->lx.is_runaway)
            conf_report(ld, &n.pos, "directive \"%s\" is not terminated by \";\"", n.argv[0]);
        ps->lx.pushed = t;
        ps->lx.has_pushed = true;
    }
    if (strcmp(n.argv[0], "include") == 0) {
        if (conf_check_shape(ld, &n, CONF_NO_BLOCK, 1, 1) && !n.is_bad)
            parse_include(ps, parent, &n, depth);
        is_kept = false;
    }
    if (is_kept)
        *CONF_PUSH(parent->kids, parent->nkids) = n;
    else
        conf_node_dispose(&n);
}

/* Parses directives into parent up to the '}' closing it (returns true) or
 * the end of the file (false).  A file's top level is no block: a '}' there
 * has no '{'. */
static bool parse_body(struct parser *ps, struct conf_node *parent, int depth, bool is_block)
{
    struct token t;
    for (;;) {
        lex_next(&ps->lx, &t);
        struct conf_pos pos = {ps->lx.file, t.line};
        switch (t.kind) {
        case TOK_EOF:
            return false;
        case TOK_CLOSE:
            if (is_block)
                return true;
            conf_report(ps->ld, &pos, "unexpected \"}\"");
            break;
        case TOK_SEMI:
            conf_report(ps->ld, &pos, "unexpected \";\"");
            break;
        case TOK_OPEN:
            conf_report(ps->ld, &pos, "unexpected \"{\"");
            skip_block(ps);
            break;
        case TOK_WORD:
            parse_directive(ps, parent, &t, depth);
            break;
        }
    }
}

static void parse_text(struct conf_loader *ld, const char *file, const char *text, size_t len,
                       const struct open_file *me, struct conf_node *parent, int depth)
{
    struct parser ps = {
        .ld = ld,
        .file = me,
        .lx = {.ld = ld, .file = file, .p = text, .end = text + len, .line = 1},
    };
    parse_body(&ps, parent, depth, false);
}

/* A problem with a whole file: reported where it was included, or as
 * "file: message" for the top-level file. */
static void file_error(struct conf_loader *ld, const struct conf_pos *site, const char *path,
                       const char *what)
{
    if (site != NULL)
        conf_report(ld, site, "include \"%s\": %s", path, what);
    else
        conf_report(ld, &(struct conf_pos){path, 0}, "%s", what);
}

/* Checks the load-wide bounds before len more bytes of a new file are read. */
static bool take_file(struct conf_loader *ld, const char *path, const struct conf_pos *site, size_t len)
{
    if (len > CONF_MAX_FILE_SIZE) {
        file_error(ld, site, path, "file is larger than 16 MiB");
        return false;
    }
    if (ld->nfiles >= CONF_MAX_FILES) {
        file_error(ld, site, path, "more than 1024 files in one configuration");
        ld->is_stopped = true;
        return false;
    }
    if (ld->total_bytes + len > CONF_MAX_FILE_SIZE) {
        file_error(ld, site, path, "the configuration files add up to more than 16 MiB");
        ld->is_stopped = true;
        return false;
    }
    ld->total_bytes += len;
    return true;
}

static void parse_file(struct conf_loader *ld, const char *path, const struct conf_pos *site,
                       const struct open_file *up, struct conf_node *parent, int depth)
{
    char *buf = NULL;
    if (ld->is_stopped)
        return;
    /* O_NONBLOCK: opening a FIFO must not hang the load; regular files ignore it */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        file_error(ld, site, path, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        file_error(ld, site, path, strerror(errno));
        goto out;
    }
    if (S_ISFIFO(st.st_mode) && up == NULL) {
        /* a pipe (sluice -c /dev/stdin): read it to its end, within the same bound */
        struct open_file pipe_me = {.has_id = false};
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0)
            fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        size_t cap = 4096, got = 0;
        buf = conf_xcalloc(1, cap + 1);
        for (;;) {
            if (got == cap) {
                if (cap > CONF_MAX_FILE_SIZE) {
                    file_error(ld, site, path, "file is larger than 16 MiB");
                    goto out;
                }
                cap *= 2;
                buf = conf_xrealloc(buf, 1, cap + 1);
            }
            ssize_t r = read(fd, buf + got, cap - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                file_error(ld, site, path, strerror(errno));
                goto out;
            }
            if (r == 0)
                break;
            got += (size_t)r;
        }
        buf[got] = '\0';
        if (!take_file(ld, path, site, got))
            goto out;
        parse_text(ld, intern_file(ld, path), buf, got, &pipe_me, parent, depth);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        file_error(ld, site, path, "not a regular file");
        goto out;
    }
    struct open_file me = {st.st_dev, st.st_ino, true, up ? up->depth + 1 : 0, up};
    for (const struct open_file *f = up; f != NULL; f = f->up) {
        if (f->has_id && f->dev == me.dev && f->ino == me.ino) {
            file_error(ld, site, path, "the file includes itself");
            goto out;
        }
    }
    size_t size = (size_t)st.st_size;
    if (!take_file(ld, path, site, size))
        goto out;
    buf = conf_xcalloc(1, size + 1);
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            file_error(ld, site, path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    parse_text(ld, intern_file(ld, path), buf, got, &me, parent, depth);
out:
    free(buf);
    close(fd);
}

void conf_parse_file(struct conf_loader *ld, const char *path, struct conf_node *root)
{
    parse_file(ld, path, NULL, NULL, root, 0);
}

void conf_parse_string(struct conf_loader *ld, const char *text, const char *name, struct conf_node *root)
{
    size_t len = strlen(text);
    if (!take_file(ld, name, NULL, len))
        return;
    struct open_file me = {.has_id = false};
    parse_text(ld, intern_file(ld, name), text, len, &me, root, 0);
}
