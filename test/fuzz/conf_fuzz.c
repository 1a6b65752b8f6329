/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the conf parser (lexer, includes refused by path,
 * directive table, checks).  Every input is loaded as a conf text; a valid
 * one is printed too (`sluice -t`), which walks every field it built.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (sink == NULL)
        sink = fopen("/dev/null", "w");
    /* includes would read whatever files the glob finds: not the parser's input */
    if (size > 64 * 1024 || memmem(data, size, "include", 7) != NULL)
        return 0;
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    struct conf *c = conf_load_string(text, "fuzz.conf", sink);
    if (c != NULL) {
        conf_print(c, sink);
        conf_unref(c);
    }
    free(text);
    return 0;
}
