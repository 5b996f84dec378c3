# Kiln's entry points. `make demo` and `make test` install what is missing,
# build, and run. BUILD_DIR / SAN_DIR may be overridden.
BUILD_DIR ?= build
SAN_DIR ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all build deps demo test test-fast test-asan test-store-faults clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)

build: $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

# The main job on embedded defaults: the Fashion-MNIST CNN on 2 local ranks
# (~2 minutes on 2 cores), converting the dataset on first use into data/;
# ends with the test accuracy. A fresh checkpoint directory each time.
DEMO_DIR ?= $(BUILD_DIR)/demo
demo: deps build
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(BUILD_DIR)/kiln launch -n 2 -- $(BUILD_DIR)/kiln train examples/train/fashion_mnist.toml \
	  --ckpt-dir $(DEMO_DIR)/ckpt --metrics-json $(DEMO_DIR)/metrics.jsonl

# Every test: the full suite, then the comm tests again under ASan+UBSan.
test: deps build
	cd $(BUILD_DIR) && ctest --output-on-failure -j 2 --timeout 300
	$(MAKE) test-asan

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
	cmake --build $(SAN_DIR) -j $(JOBS) --target kiln_comm_test kiln_comm_faults_test kiln_store_test
	cd $(SAN_DIR) && ctest --output-on-failure -j 2 --timeout 300 -L sanitize -E '$(SAN_EXCLUDE)'

$(SAN_DIR)/build.ninja:
	cmake -S . -B $(SAN_DIR) -G Ninja -DKILN_SANITIZE="address;undefined" -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

clean:
	rm -rf $(BUILD_DIR) $(SAN_DIR)
