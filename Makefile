# sluice — one non-recursive Makefile.  Variants build into build/<variant>/:
#   make            release build (build/release/sluice)
#   make asan       AddressSanitizer + UBSan build (build/asan/sluice)
#   make run        install what is missing, build, start the demo origin + sluice
#   make test       install, build both variants, run every test on each
#   make bench      the shared side-by-side benchmark against nginx/HAProxy/Varnish
#   make valgrind   the integration suites with sluice under valgrind
#   make fuzz       every libFuzzer target for FUZZ_SECONDS (default 60) each
#   make soak       a bounded mixed load with RSS sampled (SOAK_SECONDS, default 600)
VARIANT ?= release
B := build/$(VARIANT)

CC ?= cc
WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wundef \
        -Wno-unused-parameter -Wno-missing-field-initializers
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -g -fno-omit-frame-pointer -pthread -I. -I/usr/share/include/llhttp
ifeq ($(VARIANT),asan)
OPT := -O1 -fsanitize=address,undefined -fno-sanitize-recover=all
else ifeq ($(VARIANT),fuzz)
# libFuzzer needs clang; every object gets coverage, the targets link the fuzzer's main
CC := clang
OPT := -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
else
OPT := -O2
endif
PKGS := libuv hiredis openssl libpq
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS_ALL := $(BASE_CFLAGS) $(OPT) $(WARN) $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS_ALL := $(OPT) -pthread $(LDFLAGS)
LIBS := $(PKG_LIBS) -lm

MODULES := common conf stats cache breaker upstream limit proxy
LIB_SRC := $(filter-out proxy/main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIB_OBJ := $(LIB_SRC:%.c=$(B)/%.o) $(B)/gen/analytics_sql.o $(B)/gen/dashboard_html.o
LLHTTP_SRC := $(wildcard /usr/share/llhttp/*.c)
LLHTTP_OBJ := $(patsubst /usr/share/llhttp/%.c,$(B)/llhttp/%.o,$(LLHTTP_SRC))
UNIT_SRC := $(wildcard test/unit/*_test.c)
UNIT_BIN := $(UNIT_SRC:test/unit/%.c=$(B)/test/%)

all: $(B)/sluice $(B)/sluice-origin $(UNIT_BIN)

$(B)/sluice: $(B)/proxy/main.o $(B)/libsluice.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/sluice-origin: $(B)/test/origin/origin.o $(B)/libsluice.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/libsluice.a: $(LIB_OBJ) $(LLHTTP_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/test/%: $(B)/test/unit/%.o $(B)/libsluice.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

# Text files embedded in the binary as C strings: the analytics migration
# and the dashboard page.  (No "??" in them: C11 trigraphs.)
define EMBED
	@mkdir -p $(dir $@)
	{ echo 'extern const char $(1)[];'; echo 'const char $(1)[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$$/\\n"/' $<; echo ';'; } > $@
endef
$(B)/gen/analytics_sql.c: scripts/analytics.sql
	$(call EMBED,analytics_sql)
$(B)/gen/dashboard_html.c: proxy/dashboard.html
	$(call EMBED,admin_dashboard_html)

$(B)/gen/%.o: $(B)/gen/%.c
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

# llhttp is generated code: its own relaxed flags, never under our -Werror.
$(B)/llhttp/%.o: /usr/share/llhttp/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -g $(OPT) -I/usr/share/include/llhttp -w -c -o $@ $<

asan:
	$(MAKE) VARIANT=asan all

deps:
	scripts/deps

run: deps
	$(MAKE) all
	scripts/run-demo

test: deps
	$(MAKE) all
	$(MAKE) VARIANT=asan all
	$(MAKE) VARIANT=fuzz fuzzers
	scripts/test-all

# One normal pass of the integration suites with sluice under valgrind: any
# error or definite leak makes sluice exit non-zero, which fails the test.
valgrind: all
	SLUICE_TEST_SLOW=8 SLUICE_WRAP="valgrind -q --error-exitcode=99 --leak-check=full \
	  --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect" \
	  python3 test/integration/harness.py test/integration/test_core.py test/integration/test_cache.py \
	  test/integration/test_hostile.py

unit: all
	scripts/test-all --unit-only

bench: deps all
	CANDIDATE=scripts/candidate ../shared/bench/run SCENARIOS=$${SCENARIOS:-pass hit}

clean:
	rm -rf build

# ---- fuzzing: test/fuzz/<name>_fuzz.c, seeds in test/fuzz/<name>/ ----
# The proxy targets run the real main() as sluice_main in a thread.
FUZZ_SRC := $(wildcard test/fuzz/*_fuzz.c)
FUZZ_BIN := $(FUZZ_SRC:test/fuzz/%.c=$(B)/fuzz/%)
FUZZ_SECONDS ?= 60

fuzzers: $(FUZZ_BIN)

$(B)/proxy/main_embedded.o: proxy/main.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Dmain=sluice_main -Wno-missing-prototypes -c -o $@ $<

$(B)/fuzz/%: $(B)/test/fuzz/%.o $(B)/test/fuzz/proxy_harness.o $(B)/proxy/main_embedded.o $(B)/libsluice.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $^ $(LIBS)

fuzz: deps
	$(MAKE) VARIANT=fuzz fuzzers
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz

soak: deps all
	SOAK_SECONDS=$${SOAK_SECONDS:-600} scripts/soak

.PHONY: all asan deps run test unit bench clean valgrind fuzz fuzzers soak
.SECONDARY:

-include $(shell find build -name '*.d' 2>/dev/null)
