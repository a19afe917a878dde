# Convenience front end; the build itself is meson + ninja (see ./configure).
#   make            install missing deps, configure build/ if needed, build
#   make run        build and start a demo daemon (scripts/demo.sh)
#   make check      unit tests + iotests against build/
#   make check-asan the same under AddressSanitizer + UBSan (build-asan/)
#   make fuzz       build the libFuzzer targets (build-fuzz/) and run each FUZZ_TIME s
#   make check-crash-long  the crash-torture iotests with CRASH_KILLS kills (default 200)
#   make clean      remove build directories and scratch files

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 60
NINJA      ?= ninja
CRASH_KILLS ?= 200
CRASH_BUILD ?= $(BUILD)

SAN_ENV = ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1 \
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

.PHONY: all deps build run check check-unit check-iotests check-asan check-crash-long fuzz clean

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/build.ninja: | deps
	./configure --builddir=$(BUILD)

build: deps $(BUILD)/build.ninja
	$(NINJA) -C $(BUILD)

run: build
	scripts/demo.sh $(BUILD)

# Both suites run even when the first fails, so one run reports everything.
check: build
	@rc=0; \
	meson test -C $(BUILD) --suite unit --print-errorlogs || rc=1; \
	iotests/check --no-skip --build $(BUILD) || rc=1; \
	exit $$rc

check-unit: build
	meson test -C $(BUILD) --suite unit --print-errorlogs

check-iotests: build
	iotests/check --no-skip --build $(BUILD)

$(ASAN_BUILD)/build.ninja: | deps
	./configure --builddir=$(ASAN_BUILD) --asan

check-asan: deps $(ASAN_BUILD)/build.ninja
	$(NINJA) -C $(ASAN_BUILD)
	@rc=0; \
	$(SAN_ENV) meson test -C $(ASAN_BUILD) --suite unit --print-errorlogs || rc=1; \
	$(SAN_ENV) iotests/check --no-skip --build $(ASAN_BUILD) || rc=1; \
	exit $$rc

# iotests 120 (qcow2, backup in progress) and 123 (add-cow) share
# CRASH_KILLS kills (make check runs them with 20), against CRASH_BUILD
# (CI: the sanitizer build); each scenario's count is collected from
# their summary lines (docs/reliability.md).
check-crash-long: deps $(CRASH_BUILD)/build.ninja
	$(NINJA) -C $(CRASH_BUILD)
	@sum=$$(mktemp); rc=0; \
	$(SAN_ENV) BLOCKD_CRASH_KILLS=$(CRASH_KILLS) BLOCKD_CRASH_SUMMARY=$$sum \
	  iotests/check --no-skip --timeout 1800 --build $(CRASH_BUILD) 120 123 || rc=1; \
	cat $$sum; \
	awk '/ kills survived/ {n += $$2} END {print "crash: " n + 0 " kills survived"}' $$sum; \
	rm -f $$sum; exit $$rc

$(FUZZ_BUILD)/build.ninja: | deps
	./configure --builddir=$(FUZZ_BUILD) --fuzz

fuzz: deps $(FUZZ_BUILD)/build.ninja
	$(NINJA) -C $(FUZZ_BUILD)
	@$(SAN_ENV) scripts/run-fuzz.sh $(FUZZ_BUILD) $(FUZZ_TIME)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) run iotests/scratch
