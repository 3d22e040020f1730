# vlmsh — everything a fresh Debian machine needs is installed by these targets.
SHELL := /bin/bash
VLMSH_HOME ?= $(HOME)/.vlmsh
export VLMSH_HOME
# Python with torch/transformers/llama-cpp-python: only `make bench` and `make fixtures` use it.
VLMSH_VENV ?= $(VLMSH_HOME)/venv
APT_PACKAGES := libopenblas-dev libreadline-dev libjpeg-dev libpng-dev libsqlite3-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN := .build/release/vlmsh
# `make install` puts the one binary in $(DESTDIR)$(PREFIX)/bin; chat templates are compiled in.
PREFIX ?= /usr/local

.PHONY: run test bench bench-large build install uninstall templates deps model fixtures reference-venv fuzz clean

run: deps model build
	$(BIN)

test: deps model
	VLMSH_REQUIRE_MODEL=1 swift test -c release

bench: deps model build reference-venv
	$(VLMSH_VENV)/bin/python bench/bench.py --vlmsh $(BIN) --model $(VLMSH_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf
	$(VLMSH_VENV)/bin/python bench/vision.py --vlmsh $(BIN)
	$(VLMSH_VENV)/bin/python bench/train.py --vlmsh $(BIN) --model $(VLMSH_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf
	@if [ -n "$(BENCH_LARGE)" ]; then $(MAKE) --no-print-directory bench-large; \
	else echo "(BENCH_LARGE=1 make bench, or make bench-large: LoRA at the 1.7B and 7B shapes, and inference beside llama.cpp)"; fi

# Real sizes: random-weight GGUFs at SmolLM2-1.7B's and LLaVA-1.5-7B's shapes, made once into
# $(VLMSH_HOME)/bench (minutes each, 14 GB of disk while a 7B is converted), then LoRA s/step
# and peak RSS at seq 512 with gradient checkpointing (Q4_K_M), and prefill/decode and time to the
# first token beside llama.cpp (Q4_K_M and Q4_0).
bench-large: deps model build reference-venv
	$(VLMSH_VENV)/bin/python bench/large.py --vlmsh $(BIN) --inference
	$(VLMSH_VENV)/bin/python bench/large.py --vlmsh $(BIN) --inference-only --type q4_0

build:
	swift build -c release --product vlmsh

# The models go to the store ($(VLMSH_HOME)) as for `make run`; the binary finds them from anywhere.
install: deps model build
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 755 $(BIN) "$(DESTDIR)$(PREFIX)/bin/vlmsh"

uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/bin/vlmsh"

# Regenerates Sources/VLMTokenizers/BuiltinTemplates.swift after prompts/ changed (a test checks it).
templates:
	scripts/gen-builtin-templates.sh

# System libraries, installed only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The models into $(VLMSH_HOME)/models: SmolLM2-135M-Instruct (Q4_1 GGUF, fetched once) and
# the demo vision-language model built on it (models/vlmsh-demo, the REPL's default).
model:
	@scripts/fetch-model.sh
	@scripts/install-demo.sh

# Regenerates Tests/Fixtures/data with the reference implementations (torch, transformers, PEFT, PIL).
fixtures: reference-venv model build
	$(VLMSH_VENV)/bin/python Tests/Fixtures/generate.py

reference-venv:
	@scripts/reference-venv.sh "$(VLMSH_VENV)"

# libFuzzer over every reader of untrusted input (Tests/Fuzz), FUZZ_SECONDS per target (or
# FUZZ_RUNS executions each), seeded from Tests/Fuzz/corpus; findings land in .fuzz/findings
# (add each to Tests/Fuzz/corpus, where the tests replay it). Leak reports are off: Foundation and
# Dispatch keep allocations for the life of the process. Swift's backtracer is off so that
# libFuzzer itself catches a trap and writes the input.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_TARGETS ?= gguf safetensors torch config tokenizer preprocessor image data script
fuzz: deps
	swift build -c release --product vlmsh-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
	@mkdir -p .fuzz/findings
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p .fuzz/corpus/$$t; \
		echo "== $$t"; start=$$(date +%s); \
		ASAN_OPTIONS=detect_leaks=0 SWIFT_BACKTRACE=enable=no VLMSH_FUZZ_TARGET=$$t .build-fuzz/release/vlmsh-fuzz .fuzz/corpus/$$t Tests/Fuzz/corpus/$$t \
			$(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS),-max_total_time=$(FUZZ_SECONDS)) -timeout=10 -rss_limit_mb=4096 -artifact_prefix=.fuzz/findings/$$t- -print_final_stats=1 \
			2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|artifact_prefix)|Test unit written" || exit 1; \
		echo "seconds: $$(( $$(date +%s) - start ))"; \
	done

clean:
	rm -rf .build .build-fuzz .fuzz
