# fuzz/fuzz.mk — libFuzzer targets for the file readers (issue 7), included
# from the Makefile.
#
# make fuzz-deps   installs clang and its runtime (libFuzzer, the sanitizers)
#                  the way `make deps` installs its list
# make fuzz        builds fuzz/fuzz_<target>.cpp for each of FUZZ_TARGETS with
#                  clang -fsanitize=fuzzer,address,undefined (the library too,
#                  with the same flags), writes seed corpora of valid files
#                  (fuzz/make_seeds.cpp), then runs each target for
#                  FUZZ_SECONDS and prints its runs and executions per second.
#                  Any crash, sanitizer report, leak, timeout or failed check
#                  fails the target; its input is kept under
#                  $(BUILD)/fuzz/artifacts/<target>/ (replay it with
#                  `$(BUILD)/fuzz/fuzz_<target> <file>`).
# Knobs: FUZZ_SECONDS (60), FUZZ_TARGETS, FUZZ_CXX (clang++), FUZZ_RSS_MB.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safetensors idx csv cifar
FUZZ_CXX     ?= clang++
FUZZ_RSS_MB  ?= 2048
FUZZ_DIR      = $(BUILD)/fuzz
FUZZ_PKGS     = clang libclang-rt-dev
# UBSan findings abort (count as crashes) instead of printing and going on.
FUZZ_FLAGS    = $(STD) -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=undefined $(WARN) $(DEFS) -I.

.PHONY: fuzz fuzz-deps fuzz-build
fuzz-deps:
	@$(MAKE) --no-print-directory deps DEPS_PKGS="$(FUZZ_PKGS)"

fuzz-build: $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS)) $(FUZZ_DIR)/make_seeds

# The library as the fuzz targets see it: instrumented, still without
# exceptions or RTTI (UBSan's vptr check needs RTTI and is left out there).
$(FUZZ_DIR)/nn_impl.o: $(LIB_SRC) $(LIB_DEPS)
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_FLAGS) $(LIBFLAGS) -c $(LIB_SRC) -o $@

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.cpp fuzz/fuzz_common.hpp nn.hpp $(FUZZ_DIR)/nn_impl.o
	$(FUZZ_CXX) $(FUZZ_FLAGS) $< $(FUZZ_DIR)/nn_impl.o -o $@ $(LIBS)

$(FUZZ_DIR)/make_seeds: fuzz/make_seeds.cpp
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(STD) -O1 $(WARN) $(DEFS) $< -o $@ $(LIBS)

# One target after another; new inputs found go to $(FUZZ_DIR)/corpus/<target>
# (kept between runs), the seeds are regenerated each time. CIFAR-10 records
# are 3073 bytes, so its inputs may reach two records and a half.
fuzz: fuzz-build
	@rm -rf $(FUZZ_DIR)/seeds && $(FUZZ_DIR)/make_seeds $(FUZZ_DIR)/seeds
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/seeds/$$t $(FUZZ_DIR)/artifacts/$$t; \
	  log=$(FUZZ_DIR)/$$t.log; \
	  if [ $$t = cifar ]; then len=8192; else len=4096; fi; \
	  dict=""; [ -f fuzz/$$t.dict ] && dict="-dict=fuzz/$$t.dict"; \
	  $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=$$len -timeout=10 \
	    -rss_limit_mb=$(FUZZ_RSS_MB) -print_final_stats=1 $$dict \
	    -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t/ \
	    $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/seeds/$$t >$$log 2>&1; rc=$$?; \
	  runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
	  eps=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log); \
	  cov=$$(grep -o 'cov: [0-9]*' $$log | tail -n 1); \
	  if [ $$rc = 0 ]; then \
	    echo "fuzz $$t: $$runs runs in $(FUZZ_SECONDS) s, $$eps exec/s, $$cov, no crash"; \
	  else \
	    tail -n 40 $$log; \
	    echo "fuzz $$t: FAILED (exit status $$rc) after $${runs:-?} runs; log $$log, input in $(FUZZ_DIR)/artifacts/$$t/"; \
	    fail=1; \
	  fi; \
	done; exit $$fail
