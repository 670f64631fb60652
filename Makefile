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
EXAMPLES  = mlp_fashion mlp_explicit spirals custom_layer
TEST_SRC  = $(wildcard tests/test_*.cpp) tests/main.cpp
BENCH_SRC = $(wildcard bench/bench_*.cpp)

# Packages `make deps` installs: a compiler, xsimd, GoogleTest, Google
# Benchmark, zlib, and the Fashion-MNIST files the demo trains on.
DEPS_PKGS = g++ make libxsimd-dev libgtest-dev libbenchmark-dev zlib1g-dev dataset-fashion-mnist
FASHION   = /usr/share/datasets/fashion-mnist

.PHONY: all lib examples test test-san demo deps bench bench-peers help clean

all: lib examples

help:
	@echo "make           library object and examples into $(BUILD)/"
	@echo "make demo      install what is missing, train the MLP on Fashion-MNIST (spirals without it)"
	@echo "make test      install what is missing, build and run the test suite"
	@echo "make test-san  the test suite under AddressSanitizer + UBSan"
	@echo "make bench     Google Benchmark programs in bench/"
	@echo "make bench-peers  nn beside OpenBLAS (GEMM) and PyTorch (MLP epoch), one thread each;"
	@echo "               RATIO lines, ratio > 1 = nn better (GFLOP/s: ours/peer, s: peer/ours)"
	@echo "make deps      apt-get install $(DEPS_PKGS)"

lib: $(BUILD)/nn_impl.o

$(BUILD)/nn_impl.o: $(LIB_SRC) $(LIB_DEPS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS_ALL) $(LIBFLAGS) -c $(LIB_SRC) -o $@

examples: $(addprefix $(BUILD)/,$(EXAMPLES))

$(BUILD)/%: examples/%.cpp examples/common.hpp examples/alloc_counter.hpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $< $(BUILD)/nn_impl.o -o $@ $(LIBS)

$(BUILD)/nn_tests: $(TEST_SRC) $(wildcard tests/*.inc) $(wildcard tests/*.hpp) examples/alloc_counter.hpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $(TEST_SRC) $(BUILD)/nn_impl.o -o $@ -lgtest $(LIBS)

# Each run ends with the line "N passed, M failed" and fails on any failure.
test: deps
	@$(MAKE) --no-print-directory $(BUILD)/nn_tests
	./$(BUILD)/nn_tests

SAN = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
test-san: deps
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/san OPT="$(SAN)" $(BUILD)/san/nn_tests
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./$(BUILD)/san/nn_tests

demo: deps
	@$(MAKE) --no-print-directory $(BUILD)/mlp_fashion $(BUILD)/spirals
	@if [ -f $(FASHION)/train-images-idx3-ubyte.gz ] || [ -f $(FASHION)/train-images-idx3-ubyte ]; then \
	  ./$(BUILD)/mlp_fashion --data $(FASHION); \
	else \
	  echo "Fashion-MNIST is not installed in $(FASHION): training the built-in spirals instead"; \
	  ./$(BUILD)/spirals; \
	fi

bench: $(addprefix $(BUILD)/,$(notdir $(BENCH_SRC:.cpp=)))
	@for b in $^; do echo "== $$b"; ./$$b; done

$(BUILD)/bench_%: bench/bench_%.cpp $(BUILD)/nn_impl.o
	$(CXX) $(CXXFLAGS_ALL) $< $(BUILD)/nn_impl.o -o $@ -lbenchmark $(LIBS)

# Side by side with the peers, in one run (bench/peers.sh): nn::gemm_f32 vs
# OpenBLAS cblas_sgemm, and an MLP training epoch vs PyTorch CPU. Every result
# is a line "RATIO work=... ours=... peer=... peer_value=... unit=... ratio=...",
# ratio > 1 meaning nn is better: ours / peer for GFLOP/s, peer / ours for
# seconds. A missing peer (libopenblas-dev, python3-torch, the data set) is
# skipped with a message. Manual: `make deps` does not install the peers.
# HAVE_OPENBLAS is expanded (one test link) only by this recipe.
HAVE_OPENBLAS = $(shell printf '\043include <cblas.h>\nint main() { openblas_set_num_threads(1); }\n' | \
  $(CXX) -x c++ - -o /dev/null -lopenblas >/dev/null 2>&1 && echo 1)

bench-peers:
	@$(MAKE) --no-print-directory $(BUILD)/mlp_fashion
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

clean:
	rm -rf $(BUILD) dist
