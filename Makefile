# Kiln's entry points. `make demo` and `make test` install what is missing,
# build, and run. BUILD_DIR / SAN_DIR may be overridden.
BUILD_DIR ?= build
SAN_DIR ?= build-asan
FUZZ_DIR ?= build-fuzz
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all build deps demo test test-fast test-asan test-store-faults chaos fuzz fuzz-smoke clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)

build: $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

# The main job on embedded defaults: the Fashion-MNIST CNN on 2 local ranks
# (~2 minutes on 2 cores), converting the dataset on first use into data/;
# ends with the test accuracy, then serves the checkpoint (kiln serve) and
# checks its answers on 100 test images. A fresh checkpoint directory each time.
DEMO_DIR ?= $(BUILD_DIR)/demo
demo: deps build
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(BUILD_DIR)/kiln launch -n 2 -- $(BUILD_DIR)/kiln train examples/train/fashion_mnist.toml \
	  --ckpt-dir $(DEMO_DIR)/ckpt --metrics-json $(DEMO_DIR)/metrics.jsonl
	scripts/demo-serve.sh $(BUILD_DIR)/kiln $(DEMO_DIR)/ckpt

# Every test: the full suite, the comm tests again under ASan+UBSan, then
# every parser under libFuzzer for a short smoke run.
test: deps build
	cd $(BUILD_DIR) && ctest --output-on-failure -j 2 --timeout 300
	$(MAKE) test-asan
	$(MAKE) fuzz-smoke

test-fast: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j 2 -L unit

# The 30-trial SIGKILL campaign of checkpoints uploaded to s3rver (the suite
# runs 4 trials of it).
test-store-faults: deps build
	KILN_STORE_FAULT_TRIALS=30 $(BUILD_DIR)/tests/ckpt/kiln_ckpt_store_faults_test

# Under the sanitizers the collective matrix runs on 2, 3 and 4 ranks; the 5-
# and 8-rank cases (the same code paths, ~200 s under ASan on 2 cores) run
# in the plain pass above.
SAN_EXCLUDE ?= world[58]_
test-asan: $(SAN_DIR)/build.ninja
	cmake --build $(SAN_DIR) -j $(JOBS) --target kiln_comm_test kiln_comm_reduce_test kiln_comm_tuning_test kiln_comm_faults_test kiln_store_test
	cd $(SAN_DIR) && ctest --output-on-failure -j 2 --timeout 300 -L sanitize -E '$(SAN_EXCLUDE)'

$(SAN_DIR)/build.ninja:
	cmake -S . -B $(SAN_DIR) -G Ninja -DKILN_SANITIZE="address;undefined" -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

# The chaos campaign (tests/chaos/campaign.sh; needs root for network
# namespaces): CHAOS_TRIALS trials of each fault (worker SIGKILL, worker
# SIGSTOP, node SIGKILL, link down and back, etcd restart), every trial held
# to its detection and recovery bounds and its world size after; prints one
# table (median and worst per fault), also written to $(BUILD_DIR)/chaos.md.
# `make test` runs one trial of each. About a minute a trial on 2 busy cores.
CHAOS_TRIALS ?= 10
chaos: $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS) --target kiln
	bash tests/chaos/campaign.sh $(BUILD_DIR)/kiln --trials $(CHAOS_TRIALS) --table $(BUILD_DIR)/chaos.md
# Every parser of bytes from a socket or a file under libFuzzer with
# ASan+UBSan (clang; fuzz/, docs/security.md): FUZZ_SECONDS each. Its own
# small project (cmake -S fuzz): the fuzz targets and the parsers' own
# translation units, not the whole of Kiln under clang and the sanitizers.
# A finding fails the run and is left in $(FUZZ_DIR)/fuzz-findings/.
FUZZ_SECONDS ?= 60
fuzz: $(FUZZ_DIR)/build.ninja
	@grep -q '^CMAKE_HOME_DIRECTORY:INTERNAL=.*/fuzz$$' $(FUZZ_DIR)/CMakeCache.txt || { \
	  echo "$(FUZZ_DIR) was configured from the top-level directory (an older checkout); reconfiguring"; \
	  rm -rf $(FUZZ_DIR) && CC=clang CXX=clang++ cmake -S fuzz -B $(FUZZ_DIR) -G Ninja; }
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target fuzz_all
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_DIR)

# What `make test` runs: FUZZ_SMOKE_SECONDS per target, enough to replay
# every seed and kept finding under the sanitizers and explore a little
# beyond them (a cold build and 7 x 20 s took 185 s on 2 cores, docs/perf.md;
# 8 s each keeps the whole suite inside CI's 20 minutes; `make fuzz` runs
# longer).
FUZZ_SMOKE_SECONDS ?= 8
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS)

$(FUZZ_DIR)/build.ninja:
	CC=clang CXX=clang++ cmake -S fuzz -B $(FUZZ_DIR) -G Ninja

clean:
	rm -rf $(BUILD_DIR) $(SAN_DIR) $(FUZZ_DIR)
