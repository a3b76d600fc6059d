# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    := $(VENV)/.data-installed
SERVER  := $(VENV)/.server-installed

.PHONY: llama-server demo demo-kd demo-mtt demo-lm demo-online demo-unify demo-socratic bench-socratic bench-socratic-gsm test test-fast lint bench bench-llm bench-online bench-unify data clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, pinned: this wheel is on local disk; a bare `torch` would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

data: $(DATA)

$(DATA): $(STAMP) scripts/install_data.sh
	PIP=$(BIN)/pip scripts/install_data.sh
	touch $(DATA)

# the flagship: SmolLM2-135M pruned by activation importance and distilled (~4 min on 2 cores)
demo: $(STAMP) data
	$(BIN)/distill minitron --config configs/minitron/demo.yaml

demo-kd: $(STAMP) data
	$(BIN)/distill kd --config configs/kd/demo.yaml

demo-mtt: $(STAMP) data
	$(BIN)/distill mtt --config configs/mtt/demo.yaml

demo-lm: $(STAMP) data
	$(BIN)/distill lm --config configs/lm/demo.yaml

demo-online: $(STAMP) data
	$(BIN)/distill online --config configs/online/demo.yaml

demo-unify: $(STAMP) data
	$(BIN)/distill unify --config configs/unify/demo.yaml

demo-socratic: $(STAMP) data
	$(BIN)/distill socratic --config configs/socratic/demo.yaml

# a real OpenAI-compatible teacher server for the tests: llama.cpp, built from source (~10 min on 2 cores).
# Built for any x86-64 CPU with AVX2 (GGML_NATIVE=OFF), not the build machine's own: a -march=native build
# used AMX/AVX-512 instructions that this kind of VM advertises but traps on (invalid opcode). The wheel is
# kept in a cache of its own (pip's cache would hand out an older native build), so a fresh venv is quick.
LLAMA_WHEELS ?= $(HOME)/.cache/distill/wheels/llama-cpp-python-0.3.36-portable
$(SERVER): $(STAMP)
	ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DGGML_NATIVE=OFF" \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) llama-cpp-python==0.3.36
	$(BIN)/pip install -q --no-cache-dir --find-links $(LLAMA_WHEELS) 'llama-cpp-python[server]==0.3.36'
	touch $(SERVER)

# llama.cpp's own server, for the LLM benchmarks' --server-bin: 1.33x llama-cpp-python's answers/s on 2 cores, and
# parallel slots where there is compute for them (benchmarks/results/teacher_servers.md). Built from the llama.cpp
# that llama-cpp-python 0.3.36 vendors, for any x86-64 CPU with AVX2 like the wheel above (~7 min on 2 cores).
# Optional: no test needs it.
LLAMA_SERVER_BIN ?= $(HOME)/.cache/distill/bin/llama-server-0.3.36
llama-server: $(LLAMA_SERVER_BIN)
$(LLAMA_SERVER_BIN): $(STAMP)
	d=$$(mktemp -d) && $(BIN)/pip download -q --no-deps --no-binary :all: -d $$d llama-cpp-python==0.3.36 && \
	tar xzf $$d/llama_cpp_python-0.3.36.tar.gz -C $$d && src=$$d/llama_cpp_python-0.3.36/vendor/llama.cpp && \
	cmake -S $$src -B $$src/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
		-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null && \
	cmake --build $$src/build --target llama-server -j2 >/dev/null && \
	mkdir -p $(dir $(LLAMA_SERVER_BIN)) && cp $$src/build/bin/llama-server $(LLAMA_SERVER_BIN) && rm -rf $$d

# the fast tests first, so that a plain slip fails in a minute; then the rest (together: the whole suite)
test: $(STAMP) data $(SERVER)
	$(BIN)/python -m pytest -q -m "not slow and not bundled"
	$(BIN)/python -m pytest -q -m "slow or bundled"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not bundled"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/distill

bench: $(STAMP) data
	$(BIN)/python benchmarks/kd_fmnist.py
	$(BIN)/python benchmarks/chunked_kl.py
	$(BIN)/python benchmarks/mtt_fmnist.py

bench-llm: $(STAMP) data $(SERVER)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/llm_kd_throughput.py
	$(BIN)/python benchmarks/minitron_smollm2.py
	$(BIN)/python benchmarks/topk_cache.py
	$(BIN)/python benchmarks/weaklabel_rt.py

bench-online: $(STAMP) data
	$(BIN)/python benchmarks/online_titan.py

bench-unify: $(STAMP) data
	$(BIN)/python benchmarks/unify_text.py

# generated problems with gold decompositions, no teacher server: several hours, resumable by run
bench-socratic: $(STAMP) data
	$(BIN)/python benchmarks/socratic_decoding.py
	$(BIN)/python benchmarks/socratic_arith.py

# Qwen2.5-Coder-0.5B teacher (fetched from PyPI once, hash-pinned) served by llama.cpp; about 1.5 hours
bench-socratic-gsm: $(STAMP) data $(SERVER)
	$(BIN)/python benchmarks/socratic_gsm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
