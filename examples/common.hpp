// examples/common.hpp — what every example shares: the command-line flags,
// counting heap allocations per training step, and the closing RESULT line.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "alloc_counter.hpp"
#include "nn.hpp"

struct ExampleArgs {
    int epochs = 0;  // 0: the example's default
    int batch = 0;
    int threads = 0;  // 0: NN_NUM_THREADS, else 1
    long steps = 0;   // > 0: batches per epoch (a short timing run)
    unsigned long long seed = 0;
    const char* data = nullptr;
    int verbose = 1;
    bool init_given = false;  // --init: Dense and Conv2D weights (nn::Init)
    nn::Init init = nn::Init::Torch;
};

inline void example_usage(const char* prog, bool accepts_init) {
    std::fprintf(stderr,
                 "usage: %s [--epochs N] [--batch B] [--threads T] [--steps N] [--data DIR] [--seed S]\n"
                 "          [--verbose 0|1|2]%s\n",
                 prog, accepts_init ? " [--init torch|glorot_uniform|glorot_normal|he_uniform|he_normal]" : "");
}

// Parses the common flags; exits with a message on anything else. --init is
// taken by the examples that pass accepts_init (they call apply_init).
inline ExampleArgs parse_args(int argc, char** argv, bool accepts_init = false) {
    ExampleArgs a;
    for (int i = 1; i < argc; ++i) {
        const char* f = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
        auto need = [&](const char* flag) {
            if (!v) {
                std::fprintf(stderr, "%s: %s needs a value\n", argv[0], flag);
                example_usage(argv[0], accepts_init);
                std::exit(2);
            }
        };
        auto number = [&](const char* flag, long lo) {
            need(flag);
            char* end = nullptr;
            long n = std::strtol(v, &end, 10);
            if (!end || *end || n < lo) {
                std::fprintf(stderr, "%s: %s takes a whole number >= %ld, got '%s'\n", argv[0], flag, lo, v);
                std::exit(2);
            }
            ++i;
            return n;
        };
        if (!std::strcmp(f, "--epochs")) a.epochs = (int)number(f, 1);
        else if (!std::strcmp(f, "--batch")) a.batch = (int)number(f, 1);
        else if (!std::strcmp(f, "--threads")) a.threads = (int)number(f, 1);
        else if (!std::strcmp(f, "--steps")) a.steps = number(f, 1);
        else if (!std::strcmp(f, "--seed")) a.seed = (unsigned long long)number(f, 0);
        else if (!std::strcmp(f, "--verbose")) a.verbose = (int)number(f, 0);
        else if (!std::strcmp(f, "--data")) { need(f); a.data = v; ++i; }
        else if (accepts_init && !std::strcmp(f, "--init")) {
            need(f);
            nn::Status st = nn::init_from_name(v, &a.init);
            if (!st) {
                std::fprintf(stderr, "%s: --init: %s\n", argv[0], st.message());
                std::exit(2);
            }
            a.init_given = true;
            ++i;
        }
        else if (!std::strcmp(f, "--help") || !std::strcmp(f, "-h")) { example_usage(argv[0], accepts_init); std::exit(0); }
        else {
            std::fprintf(stderr, "%s: unknown flag '%s'\n", argv[0], f);
            example_usage(argv[0], accepts_init);
            std::exit(2);
        }
    }
    if (a.threads > 0) nn::set_num_threads(a.threads);
    return a;
}

// --init: every Dense and Conv2D layer of `model` draws its weights that way
// when compiled (the layers' default is PyTorch's initialisation).
inline void apply_init(nn::Model& model, const ExampleArgs& args) {
    if (!args.init_given) return;
    for (nn::Layer& L : model.layers)
        if (L.kind == nn::LayerKind::Dense || L.kind == nn::LayerKind::Conv2D) L.set_init(args.init);
}

// Counts heap allocations between the end of the first training step and the
// end of the last one: every step after setup. Hand it to FitOptions.
struct StepAllocCounter {
    long long at_first = -1, at_last = 0;
    long long steps = 0;
    static void on_batch_end(void* self, int, int64_t, float) {
        StepAllocCounter* c = static_cast<StepAllocCounter*>(self);
        long long now = heap_allocs();
        if (c->at_first < 0) c->at_first = now;
        else ++c->steps;
        c->at_last = now;
    }
    void attach(nn::FitOptions& o) {
        o.on_batch_end = &StepAllocCounter::on_batch_end;
        o.user = this;
    }
    double per_step() const { return steps ? (double)(at_last - at_first) / (double)steps : 0.0; }
};

inline double mean_epoch_seconds(const nn::History& h) {
    double s = 0;
    for (const nn::EpochStats& e : h.epochs) s += e.seconds;
    return h.epochs.empty() ? 0.0 : s / (double)h.epochs.size();
}

inline double mean_epoch_steps(const nn::History& h) {
    double s = 0;
    for (const nn::EpochStats& e : h.epochs) s += (double)e.steps;
    return h.epochs.empty() ? 0.0 : s / (double)h.epochs.size();
}

// The line scripts read (bench/peers.sh). steps_per_epoch > 0 adds it and
// the mean milliseconds per step.
inline void print_result(const char* name, int epochs, double seconds_per_epoch, double test_acc,
                         size_t arena_bytes, double allocs_per_step, double steps_per_epoch = 0) {
    std::printf("RESULT example=%s epochs=%d seconds_per_epoch=%.3f test_acc=%.4f arena_bytes=%zu "
                "heap_allocs_per_step=%g",
                name, epochs, seconds_per_epoch, test_acc, arena_bytes, allocs_per_step);
    if (steps_per_epoch > 0)
        std::printf(" steps_per_epoch=%.0f ms_per_step=%.3f", steps_per_epoch,
                    1000.0 * seconds_per_epoch / steps_per_epoch);
    std::printf("\n");
}

inline int fail(const nn::Status& st) {
    std::fprintf(stderr, "error: %s\n", st.message());
    return 1;
}

// Compiles with `co` (its max_batch and seed taken from the batch and the
// arguments), prints the summary, then fits with the common flags while
// *allocs counts heap allocations per step.
inline nn::Status compile_and_fit(nn::Model& model, nn::CompileOptions co, const nn::Dataset& train,
                                  const ExampleArgs& args, int epochs, int batch, StepAllocCounter* allocs) {
    co.max_batch = batch;
    co.seed = args.seed;
    apply_init(model, args);
    nn::Status st = model.compile(co);
    if (!st) return st;
    model.summary();
    nn::FitOptions fo;
    fo.epochs = epochs;
    fo.batch_size = batch;
    fo.seed = args.seed;
    fo.verbose = args.verbose;
    fo.steps_per_epoch = args.steps;
    allocs->attach(fo);
    return model.fit(train, fo);
}

// What the Keras-style classifiers share after building their model:
// compile with cross-entropy on logits and Adam 1e-3 at the given batch,
// print the summary, fit (counting heap allocations per step), evaluate on
// the test set and print the RESULT line. Returns the exit status.
inline int fit_and_report(nn::Model& model, const nn::Dataset& train, const nn::Dataset& test,
                          const ExampleArgs& args, const char* name, int epochs, int batch) {
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();  // on the logits, with a stable softmax
    co.optimizer = nn::Adam(1e-3f);
    StepAllocCounter allocs;
    nn::Status st = compile_and_fit(model, co, train, args, epochs, batch, &allocs);
    if (!st) return fail(st);

    nn::EvalResult r;
    if (!(st = model.evaluate(test, &r))) return fail(st);
    std::printf("test loss %.4f, test accuracy %.4f\n", r.loss, r.metric);
    print_result(name, epochs, mean_epoch_seconds(model.history), r.metric, model.arena_needed, allocs.per_step(),
                 mean_epoch_steps(model.history));
    return 0;
}
