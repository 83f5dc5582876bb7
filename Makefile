# pksync: one source tree, two builds of the C core (Lua 5.4 and LuaJIT 2.1).
#
#   make            build build/54/pksync/core.so and build/jit/pksync/core.so
#                   (and pksync/testing.so beside each: test-only bindings)
#   make test       install Debian deps, build, run the busted suite on both runtimes
#   make deps       install the Debian packages and the browser test's chromium and
#                   playwright-core (into build/node); skipped when present
#   make bench      benchmarks (see bench/README.md)
#   make demo       the two-site demo
#   make install    both builds, the Lua modules and bin/pksync under
#                   $(DESTDIR)$(PREFIX) (PREFIX=/usr/local); make uninstall
#
# LUA_INCDIR / LUAJIT_INCDIR / PREFIX may be overridden.

CC            ?= cc
LUA_INCDIR    ?= /usr/include/lua5.4
LUAJIT_INCDIR ?= /usr/include/luajit-2.1
PG_INCDIR     ?= $(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
PREFIX        ?= /usr/local

WARN    = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
OPT    ?= -O2 -g
CFLAGS_ALL = -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden \
             $(WARN) $(OPT) -I$(PG_INCDIR) $(EXTRA_CFLAGS)
LIBS    = -lcurl -lpq -lcrypto $(EXTRA_LDFLAGS)

SRCS    = $(wildcard src/*.c)
HDRS    = $(wildcard src/*.h)
OBJS54  = $(SRCS:src/%.c=build/obj54/%.o)
OBJSJIT = $(SRCS:src/%.c=build/objjit/%.o)

CORE54  = build/54/pksync/core.so
COREJIT = build/jit/pksync/core.so

# pksync.testing: bindings the specs use to drive the row converter directly
# (src/testing/); linked against the core's objects, never installed.
TESTING_SRCS = $(wildcard src/testing/*.c)
TESTING54    = build/54/pksync/testing.so
TESTINGJIT   = build/jit/pksync/testing.so

.PHONY: all deps test test-54 test-jit bench demo clean install uninstall check-asan check-valgrind fuzz faults load

all: $(CORE54) $(COREJIT) $(TESTING54) $(TESTINGJIT)

# V=1 shows the full compiler command lines.
Q = $(if $(V),,@)

build/obj54/%.o: src/%.c $(HDRS)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC    $@")
	$(Q)$(CC) $(CFLAGS_ALL) -I$(LUA_INCDIR) -c $< -o $@

build/objjit/%.o: src/%.c $(HDRS)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC    $@")
	$(Q)$(CC) $(CFLAGS_ALL) -I$(LUAJIT_INCDIR) -c $< -o $@

$(CORE54): $(OBJS54)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  LINK  $@")
	$(Q)$(CC) -shared -o $@ $^ $(LIBS)

$(COREJIT): $(OBJSJIT)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  LINK  $@")
	$(Q)$(CC) -shared -o $@ $^ $(LIBS)

build/obj54/testing/%.o: src/testing/%.c $(HDRS)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC    $@")
	$(Q)$(CC) $(CFLAGS_ALL) -I$(LUA_INCDIR) -c $< -o $@

build/objjit/testing/%.o: src/testing/%.c $(HDRS)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC    $@")
	$(Q)$(CC) $(CFLAGS_ALL) -I$(LUAJIT_INCDIR) -c $< -o $@

$(TESTING54): $(TESTING_SRCS:src/testing/%.c=build/obj54/testing/%.o) $(OBJS54)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  LINK  $@")
	$(Q)$(CC) -shared -o $@ $^ $(LIBS)

$(TESTINGJIT): $(TESTING_SRCS:src/testing/%.c=build/objjit/testing/%.o) $(OBJSJIT)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  LINK  $@")
	$(Q)$(CC) -shared -o $@ $^ $(LIBS)

deps:
	@scripts/deps.sh
	@scripts/browser-deps.sh

# The suite runs once per runtime inside one throwaway PostgreSQL cluster,
# then the hardening subset that fits CI (scripts/test-all.sh).
test: deps
	@$(MAKE) --no-print-directory -j2 all
	@scripts/test-all.sh

test-54 test-jit: all
	@scripts/testenv.sh scripts/run-specs.sh $(@:test-%=%)

clean:
	rm -rf build

# Both builds and the command under $(DESTDIR)$(PREFIX): Lua 5.4 finds the
# modules in share/lua/5.4 and the core in lib/lua/5.4, LuaJIT (and nginx's
# lua module) in share/lua/5.1 and lib/lua/5.1. pksync.testing stays behind.
LUA_MODULES = $(wildcard lua/pksync/*.lua)
ADMIN_FILES = $(wildcard lua/pksync/admin/*)
INSTALL_DIRS = bin lib/lua/5.4/pksync lib/lua/5.1/pksync share/lua/5.4/pksync share/lua/5.1/pksync \
               share/lua/5.4/pksync/admin share/lua/5.1/pksync/admin

install: $(CORE54) $(COREJIT)
	install -d $(INSTALL_DIRS:%=$(DESTDIR)$(PREFIX)/%)
	install -m 0755 $(CORE54) $(DESTDIR)$(PREFIX)/lib/lua/5.4/pksync/core.so
	install -m 0755 $(COREJIT) $(DESTDIR)$(PREFIX)/lib/lua/5.1/pksync/core.so
	install -m 0644 $(LUA_MODULES) $(DESTDIR)$(PREFIX)/share/lua/5.4/pksync/
	install -m 0644 $(LUA_MODULES) $(DESTDIR)$(PREFIX)/share/lua/5.1/pksync/
	install -m 0644 $(ADMIN_FILES) $(DESTDIR)$(PREFIX)/share/lua/5.4/pksync/admin/
	install -m 0644 $(ADMIN_FILES) $(DESTDIR)$(PREFIX)/share/lua/5.1/pksync/admin/
	install -m 0755 bin/pksync $(DESTDIR)$(PREFIX)/bin/pksync

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/pksync
	rm -rf $(DESTDIR)$(PREFIX)/lib/lua/5.4/pksync $(DESTDIR)$(PREFIX)/lib/lua/5.1/pksync
	rm -rf $(DESTDIR)$(PREFIX)/share/lua/5.4/pksync $(DESTDIR)$(PREFIX)/share/lua/5.1/pksync

# Import speed against COPY and per-row INSERT baselines, same run, same data.
BENCH_ROWS ?= 1000000
bench: deps
	@$(MAKE) --no-print-directory -j2 all
	@scripts/testenv.sh lua5.4 bench/bench.lua $(BENCH_ROWS)

# The main job: two sites on loopback, a connection, a sync under a policy,
# and a proof that the data arrived; everything started is stopped again.
demo: deps
	@$(MAKE) --no-print-directory -j2 all
	@scripts/testenv.sh lua5.4 scripts/demo.lua

# ---- hardening (see README "Reliability and security") -----------------
# The C core under AddressSanitizer + UndefinedBehaviorSanitizer, the whole
# busted suite on Lua 5.4 against it.
check-asan: deps
	@scripts/check-asan.sh

# The same under valgrind memcheck (slow; SPECS= narrows it).
check-valgrind: deps
	@$(MAKE) --no-print-directory -j2 all
	@scripts/check-valgrind.sh $(SPECS)

# libFuzzer targets (clang) for FUZZ_SECONDS each; fuzz/corpus holds the seeds.
FUZZ_SECONDS ?= 60
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

# Fault injection and hostile input against real servers.
faults: deps
	@$(MAKE) --no-print-directory -j2 all
	@scripts/testenv.sh scripts/run-specs.sh 54 -- spec/faults_spec.lua spec/security_spec.lua

# N receivers pulling concurrently from one nginx sender.
LOAD_RECEIVERS ?= 8
load: deps
	@$(MAKE) --no-print-directory -j2 all
	@scripts/testenv.sh lua5.4 scripts/load.lua $(LOAD_RECEIVERS)
