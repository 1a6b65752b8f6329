/* SPDX-License-Identifier: MIT */
/*
 * conf internals shared by parse.c (pass 1: bytes -> tokens -> a tree of
 * directives, includes spliced in) and conf.c (pass 2: the directive table
 * applied to the tree, semantic checks, printing).  No other module includes
 * this header.
 */
#ifndef SLUICE_CONF_INT_H
#define SLUICE_CONF_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "common/strbuf.h"
#include "conf/conf.h"

/* Input bounds: what one load may read, so a hostile or broken file costs a
 * bounded amount of memory and time. */
#define CONF_MAX_FILE_SIZE     (16u << 20) /* one file, and all files of one load together */
#define CONF_MAX_FILES         1024        /* file reads per load (includes, globs) */
#define CONF_MAX_TOKEN         (64u << 10) /* one word after ${ENV} substitution */
#define CONF_MAX_DEPTH         16          /* blocks inside blocks */
#define CONF_MAX_INCLUDE_DEPTH 16          /* includes inside includes */
#define CONF_MAX_WORDS         1000000     /* words of all files together */
#define CONF_MAX_SHOWN_ERRORS  100         /* printed; the rest are only counted */

/* Position of the values that come from a directive's built-in default. */
#define CONF_DEFAULT_FILE "(default)"

/* One directive: "name arg...;" or "name arg... { kids }". */
struct conf_node {
    char **argv; /* argv[0] is the directive name */
    size_t argc;
    struct conf_node *kids;
    size_t nkids;
    bool has_block;
    bool is_bad; /* a word in it was already reported (bad ${ENV}, too long...): skip it quietly */
    struct conf_pos pos;
};

/* State of one load, shared by both passes. */
struct conf_loader {
    FILE *err; /* NULL = count errors without printing them */
    unsigned nerrors;
    char **files; /* every file read, in order; conf_pos.file points into these */
    size_t nfiles;
    size_t total_bytes;
    size_t nwords;
    bool is_stopped;    /* a load-wide bound was hit: the lexer returns EOF from now on */
    struct strbuf word; /* lexer scratch: the current word */
};

enum conf_block_rule { CONF_NO_BLOCK = 0, CONF_BLOCK, CONF_BLOCK_OPTIONAL };

#define CONF_ARGS_ANY 255u

/* Prints "file:line: message" (or "file: message" when line is 0) and counts it. */
void conf_report(struct conf_loader *ld, const struct conf_pos *pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Pass 1.  Reads a file (or a string named name) and appends its directives
 * to root->kids, following includes.  Problems are reported and parsing goes
 * on; a node whose words were bad is kept with is_bad set. */
void conf_parse_file(struct conf_loader *ld, const char *path, struct conf_node *root);
void conf_parse_string(struct conf_loader *ld, const char *text, const char *name, struct conf_node *root);
void conf_node_dispose(struct conf_node *n);

/* Checks a node's block and argument count (not counting the name); reports
 * and returns false when they do not fit.  max_args may be CONF_ARGS_ANY. */
bool conf_check_shape(struct conf_loader *ld, const struct conf_node *n, enum conf_block_rule block,
                      unsigned min_args, unsigned max_args);

/* rel as seen from the file base_file: absolute paths are kept, relative
 * ones are taken from base_file's directory.  The result is malloc'ed. */
char *conf_path_resolve(const char *base_file, const char *rel);

/* Appends a zeroed element to a heap array of *n elements of size bytes and
 * returns the array, which may have moved.  The capacity doubles at each
 * power of two, so the count alone tells it: appends are amortised O(1). */
void *conf_array_push(void *array, size_t *n, size_t size);
#define CONF_PUSH(array, n) ((array) = conf_array_push((array), &(n), sizeof(*(array))), &(array)[(n)-1])

/* Allocation of small control structures: aborts on OOM. */
void *conf_xcalloc(size_t n, size_t size);
void *conf_xrealloc(void *p, size_t n, size_t size);
char *conf_xstrdup(const char *s);

#endif
