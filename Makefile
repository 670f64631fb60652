# nn — build, test, demo. `make help` lists the targets.
#
# Knobs (override on the command line, e.g. `make CXX=clang++ ARCH=`):
#   CXX      the compiler (g++)
#   ARCH     target flags; -march=native builds for this machine's vector unit
#   SIMD     set to 0 to build the plain loops (defines NN_NO_XSIMD)
#   BUILD    output directory (build)

CXX      ?= g++
ARCH     ?= -march=native
BUILD    ?= build
SIMD     ?= 1
OPT      ?= -O2
STD       = -std=c++17
WARN      = -Wall -Wextra
# The library itself builds without exceptions or RTTI, as on a board.
LIBFLAGS  = -fno-exceptions -fno-rtti

# (\043 is '#': make 4.3 would keep a backslash before a literal one.)
HAVE_XSIMD := $(shell printf '\043include <xsimd/xsimd.hpp>\n' | $(CXX) $(STD) -x c++ -E - >/dev/null 2>&1 && echo 1)
HAVE_ZLIB  := $(shell printf '\043include <zlib.h>\n' | $(CXX) -x c++ -E - >/dev/null 2>&1 && echo 1)

DEFS :=
LIBS := -lpthread
ifeq ($(HAVE_ZLIB),1)
  DEFS += -DNN_HAVE_ZLIB=1
  LIBS += -lz
endif
ifneq ($(SIMD),1)
  DEFS += -DNN_NO_XSIMD
endif

CXXFLAGS_ALL = $(STD) $(OPT) $(ARCH) $(WARN) $(DEFS) -I. $(EXTRA)

LIB_SRC   = nn_impl.cpp
LIB_DEPS  = nn.hpp $(wildcard kernels/*.hpp)
EXAMPLES  = mlp_fashion mlp_explicit spirals custom_layer lenet_fashion convnet_fashion cifar_cnn autograd_nnkit autograd_circles sine_rnn char_lm firmware_infer
TEST_SRC  = $(wildcard tests/test_*.cpp) tests/main.cpp
BENCH_SRC = $(wildcard bench/bench_*.cpp)

# Packages `make deps` installs: a compiler, xsimd, GoogleTest, Google
# Benchmark, zlib, and the Fashion-MNIST files the demo trains on.
DEPS_PKGS = g++ make libxsimd-dev libgtest-dev libbenchmark-dev zlib1g-dev dataset-fashion-mnist
FASHION   = /usr/share/datasets/fashion-mnist

.PHONY: all lib examples test test-san demo deps bench bench-peers dist test-dist help clean

all: lib examples $(BUILD)/nn-export

help:
	@echo "make           library object and examples into $(BUILD)/"
	@echo "make demo      install what is missing, train the MLP on Fashion-MNIST (spirals without it)"
	@echo "make test      install what is missing, build and run the test suite"
	@echo "make test-san  the test suite under AddressSanitizer + UBSan"
	@echo "make bench     Google Benchmark programs in bench/"
	@echo "make bench-peers  nn beside OpenBLAS (GEMM) and PyTorch (MLP epoch, LeNet epoch, 100 ConvNet"
	@echo "               steps, an LSTM step), one thread each; RATIO lines, ratio > 1 = nn better (GFLOP/s:"
	@echo "               ours/peer, s: peer/ours); PEERS_ONLY=\"gemm mlp lenet convnet lstm\" picks sections"
	@echo "make dist      dist/nn.hpp + dist/nn_impl.cpp, the two drop-in files"
	@echo "make test-dist build the examples and the suite from only those two files"
	@echo "make test-arm  the suite for arm64, armhf (NEON) and armv6 (scalar) under qemu-user"
	@echo "               (test-arm64, test-armhf, test-armv6; installs cross compilers via deps-arm)"
	@echo "make size      object and static-program sizes per target into $(BUILD)/size/ (tools/size.sh)"
	@echo "make deps-musl musl for arm64 (adds the arm64 dpkg architecture), for make size's aarch64-musl row"
	@echo "make fuzz      libFuzzer on the safetensors, IDX, CSV and CIFAR readers, FUZZ_SECONDS each"
	@echo "               (make fuzz-deps installs clang and its runtime)"
	@echo "make firmware-header  regenerate examples/firmware_mlp.hpp with build/nn-export"
	@echo "make deps      apt-get install $(DEPS_PKGS)"

lib: $(BUILD)/nn_impl.o

$(BUILD)/nn_impl.o: $(LIB_SRC) $(LIB_DEPS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS_ALL) $(LIBFLAGS) -c $(LIB_SRC) -o $@

examples: $(addprefix $(BUILD)/,$(EXAMPLES))

$(BUILD)/%: examples/%.cpp examples/common.hpp examples/alloc_counter.hpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $< $(BUILD)/nn_impl.o -o $@ $(LIBS)

$(BUILD)/firmware_infer: examples/firmware_mlp.hpp

# nn-export: a model file into a C header of const arrays and a layer table
# (examples/firmware_infer.cpp runs one with no file system and no heap).
$(BUILD)/nn-export: tools/nn_export.cpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $< $(BUILD)/nn_impl.o -o $@ $(LIBS)

$(BUILD)/firmware_model: tools/firmware_model.cpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $< $(BUILD)/nn_impl.o -o $@ $(LIBS)

# Regenerates the checked-in examples/firmware_mlp.hpp (seeded: the same bytes).
.PHONY: firmware-header
firmware-header: $(BUILD)/nn-export $(BUILD)/firmware_model
	$(abspath $(BUILD))/firmware_model $(BUILD)/firmware_mlp.safetensors
	$(abspath $(BUILD))/nn-export $(BUILD)/firmware_mlp.safetensors examples/firmware_mlp.hpp --name firmware_mlp

# One object per test file, so that `make -j2 test` compiles two at a time.
TEST_HDRS = $(wildcard tests/*.inc) $(wildcard tests/*.hpp) examples/alloc_counter.hpp $(LIB_DEPS)
TEST_OBJ  = $(patsubst tests/%.cpp,$(BUILD)/tests/%.o,$(TEST_SRC))

$(BUILD)/tests/%.o: tests/%.cpp $(TEST_HDRS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_ALL) -c $< -o $@

$(BUILD)/nn_tests: $(TEST_OBJ) $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $(TEST_OBJ) $(BUILD)/nn_impl.o -o $@ -lgtest $(LIBS)

# Each run ends with the line "N passed, M failed" and fails on any failure.
test: deps
	@$(MAKE) --no-print-directory $(BUILD)/nn_tests
	$(abspath $(BUILD))/nn_tests

SAN = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
test-san: deps
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/san OPT="$(SAN)" $(BUILD)/san/nn_tests
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(abspath $(BUILD))/san/nn_tests

demo: deps
	@$(MAKE) --no-print-directory $(BUILD)/mlp_fashion $(BUILD)/spirals
	@if [ -f $(FASHION)/train-images-idx3-ubyte.gz ] || [ -f $(FASHION)/train-images-idx3-ubyte ]; then \
	  $(abspath $(BUILD))/mlp_fashion --data $(FASHION); \
	else \
	  echo "Fashion-MNIST is not installed in $(FASHION): training the built-in spirals instead"; \
	  $(abspath $(BUILD))/spirals; \
	fi

bench: $(addprefix $(BUILD)/,$(notdir $(BENCH_SRC:.cpp=)))
	@for b in $^; do echo "== $$b"; ./$$b; done

$(BUILD)/bench_%: bench/bench_%.cpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $< $(BUILD)/nn_impl.o -o $@ -lbenchmark $(LIBS)

# Side by side with the peers, in one run (bench/peers.sh): nn::gemm_f32 vs
# OpenBLAS cblas_sgemm, and vs PyTorch CPU an MLP training epoch, a LeNet
# epoch, 100 ConvNet steps and an LSTM step (PEERS_ONLY="gemm mlp lenet convnet lstm" runs only
# the sections it names; bench/peers.sh lists its other knobs). Every result
# is a line "RATIO work=... ours=... peer=... peer_value=... unit=... ratio=...",
# ratio > 1 meaning nn is better: ours / peer for GFLOP/s, peer / ours for
# seconds. A missing peer (libopenblas-dev, python3-torch, the data set) is
# skipped with a message. Manual: `make deps` does not install the peers.
# HAVE_OPENBLAS is expanded (one test link) only by this recipe.
HAVE_OPENBLAS = $(shell printf '\043include <cblas.h>\nint main() { openblas_set_num_threads(1); }\n' | \
  $(CXX) -x c++ - -o /dev/null -lopenblas >/dev/null 2>&1 && echo 1)

bench-peers:
	@$(MAKE) --no-print-directory $(BUILD)/mlp_fashion $(BUILD)/lenet_fashion $(BUILD)/convnet_fashion $(BUILD)/bench_rnn
	@if [ "$(HAVE_OPENBLAS)" = 1 ]; then \
	  $(MAKE) --no-print-directory $(BUILD)/peers_gemm || exit 1; gemm=$(BUILD)/peers_gemm; \
	else gemm=""; fi; \
	BUILD=$(BUILD) FASHION=$(FASHION) PEERS_GEMM="$$gemm" sh bench/peers.sh

$(BUILD)/peers_gemm: bench/peers_gemm.cpp $(LIB_DEPS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS_ALL) $< -o $@ -lopenblas

# Installs only what is missing; uses sudo when not root; offline afterwards.
deps:
	@missing=""; for p in $(DEPS_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# The two drop-in files (tools/amalgamate.sh): dist/nn.hpp and dist/nn_impl.cpp
# with every kernels/*.hpp pasted in. dist/ is committed; CI regenerates it
# and fails if it differs. test-dist builds the examples and the suite from
# a directory holding only those two files (tests/dist_test.sh).
dist: nn.hpp nn_impl.cpp $(wildcard kernels/*.hpp) tools/amalgamate.sh
	@sh tools/amalgamate.sh dist

# JOBS: compilers run at once (CI passes 2).
JOBS ?= 1
test-dist:
	CXX="$(CXX)" FLAGS="$(STD) $(OPT) $(ARCH) $(WARN) $(EXTRA)" DEFS="$(DEFS)" LIBS="$(LIBS)" JOBS="$(JOBS)" \
	  sh tests/dist_test.sh

# Fuzzing the file readers with libFuzzer (clang): fuzz/fuzz.mk.
include fuzz/fuzz.mk

clean:
	rm -rf $(BUILD)

# ---- ARM cross builds, run under qemu-user (issue 8) -------------------------
# make test-arm64   AArch64, NEON (xsimd arm64+neon)
# make test-armhf   32-bit ARMv7-A hard-float with NEON (xsimd arm32+neon)
# make test-armv6   ARMv6 with VFP and no NEON: xsimd has no architecture, so
#                   NN_SIMD is 0 and the plain loops run
# Each builds GoogleTest from /usr/src/googletest (once), the library with the
# board flags (-fno-exceptions -fno-rtti) and the tests into $(BUILD)/<arch>/,
# links dynamically and runs the suite under qemu-user with -L set to the cross
# sysroot the compiler package installs. (Not -static: tests/test_alloc.cpp
# replaces malloc and free, which collides with glibc's static malloc.o.) The
# host zlib is x86 only, so these build without NN_HAVE_ZLIB. The run fails
# unless the program exits 0 and its last line says "N passed, 0 failed".
ARM_PKGS  = g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user libgtest-dev libxsimd-dev
GTEST_DIR = /usr/src/googletest/googletest
ARM_OPT  ?= -O2

# $(1) arch, $(2) compiler and target flags, $(3) qemu command
define ARM_TEST
$(BUILD)/$(1)/gtest-all.o:
	@mkdir -p $$(@D)
	$(2) $(STD) $(ARM_OPT) -I$(GTEST_DIR)/include -I$(GTEST_DIR) -c $(GTEST_DIR)/src/gtest-all.cc -o $$@

$(BUILD)/$(1)/nn_impl.o: $(LIB_SRC) $(LIB_DEPS)
	@mkdir -p $$(@D)
	$(2) $(STD) $(ARM_OPT) $(WARN) $(LIBFLAGS) -I. -c $(LIB_SRC) -o $$@

$(BUILD)/$(1)/tests/%.o: tests/%.cpp $(TEST_HDRS)
	@mkdir -p $$(@D)
	$(2) $(STD) $(ARM_OPT) $(WARN) -I. -I$(GTEST_DIR)/include -c $$< -o $$@

$(BUILD)/$(1)/nn_tests: $(patsubst tests/%.cpp,$(BUILD)/$(1)/tests/%.o,$(TEST_SRC)) $(BUILD)/$(1)/nn_impl.o $(BUILD)/$(1)/gtest-all.o
	$(2) $(STD) $(ARM_OPT) $(WARN) $(patsubst tests/%.cpp,$(BUILD)/$(1)/tests/%.o,$(TEST_SRC)) $(BUILD)/$(1)/nn_impl.o $(BUILD)/$(1)/gtest-all.o -o $$@ -lpthread

test-$(1): deps-arm
	@$$(MAKE) --no-print-directory $(BUILD)/$(1)/nn_tests
	@log=$(BUILD)/$(1)/nn_tests.log; \
	{ $(3) $(abspath $(BUILD))/$(1)/nn_tests; echo $$$$? > $$$$log.rc; } | tee $$$$log; \
	rc=$$$$(cat $$$$log.rc); last=$$$$(tail -n 1 $$$$log); \
	echo "$$$$last" | grep -Eq '^[0-9]+ passed, 0 failed' && [ "$$$$rc" = 0 ] || \
	{ echo "test-$(1): FAILED (exit status $$$$rc, last line: $$$$last)"; exit 1; }
endef

$(eval $(call ARM_TEST,arm64,aarch64-linux-gnu-g++ -march=armv8-a,qemu-aarch64 -L /usr/aarch64-linux-gnu))
$(eval $(call ARM_TEST,armhf,arm-linux-gnueabihf-g++ -march=armv7-a -mfpu=neon -mfloat-abi=hard -Wno-psabi,qemu-arm -L /usr/arm-linux-gnueabihf))
$(eval $(call ARM_TEST,armv6,arm-linux-gnueabihf-g++ -march=armv6 -mfpu=vfp -mfloat-abi=hard -marm -Wno-psabi,qemu-arm -L /usr/arm-linux-gnueabihf))

.PHONY: test-arm test-arm64 test-armhf test-armv6 deps-arm deps-musl
test-arm: test-arm64 test-armhf test-armv6

# The cross compilers and qemu, installed as `make deps` installs its list.
deps-arm:
	@$(MAKE) --no-print-directory deps DEPS_PKGS="$(ARM_PKGS)"

# Debian's musl C library for arm64, for `make size`'s aarch64-musl row. It
# adds arm64 to dpkg's architectures, from which packages install only when
# named, as musl-dev:arm64 is here.
deps-musl: deps-arm
	@if [ ! -f /usr/lib/aarch64-linux-musl/libc.a ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  dpkg --print-foreign-architectures | grep -qx arm64 || $$SUDO dpkg --add-architecture arm64; \
	  echo "make deps-musl: installing musl-dev:arm64"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q musl-dev:arm64; \
	fi

# Flash budgets (issue 8, BENCHMARKS.md): nn_impl.o at -O2 and the stripped,
# statically linked examples/mlp_infer for x86-64 (native and generic),
# aarch64 (with glibc, and with musl when `make deps-musl` installed it),
# armhf and armv6 into $(BUILD)/size/<target>/, then a table. A target whose
# compiler or C library is missing is skipped with a message.
.PHONY: size
size:
	BUILD=$(BUILD) CXX="$(CXX)" OPT="$(OPT)" sh tools/size.sh
