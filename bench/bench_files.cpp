// bench/bench_files.cpp — what loading a model file costs (issue 7 target:
// the ConvNet's weights, 13 MB, load in under 50 ms).
//
// The ConvNet of examples/convnet_fashion.cpp (3.27 M parameters):
//   Conv2D(1,32,5,same) ReLU MaxPool2D(2) Conv2D(32,64,5,same) ReLU MaxPool2D(2)
//   Flatten Dense(3136,1024,ReLU) Dropout(0.4) Dense(10)
// compiled (max_batch 1) and saved once with nn::save into $TMPDIR (or
// /tmp), then:
//
//   BM_LoadWeights      nn::load_weights into the compiled model: read the
//                       file, validate it, check every name and shape,
//                       convert, copy into the parameters
//   BM_SafetensorsLoad  nn::safetensors_load alone (read and validate)
//   BM_LoadModel        nn::load_model: the above plus rebuilding the layers
//                       from the architecture and compiling (its arena)
//
// The file is read warm (from the page cache, as on the second load after a
// boot); the time is wall-clock. The median of the repetitions is the figure:
//
//   build/bench_files --benchmark_repetitions=9 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

#include "nn.hpp"

namespace {

void check(const nn::Status& st) {
    if (!st) {
        std::fprintf(stderr, "bench_files: %s\n", st.message());
        std::abort();
    }
}

void build_convnet(nn::Model* m) {
    m->set_input(nn::make_shape({1, 28, 28}));
    m->add(nn::Conv2D(1, 32, 5, 1, nn::Same));
    m->add(nn::ReLU());
    m->add(nn::MaxPool2D(2));
    m->add(nn::Conv2D(32, 64, 5, 1, nn::Same));
    m->add(nn::ReLU());
    m->add(nn::MaxPool2D(2));
    m->add(nn::Flatten());
    m->add(nn::Dense(1024, nn::Act::ReLU));
    m->add(nn::Dropout(0.4f));
    m->add(nn::Dense(10));
}

// The saved file and a compiled model to load it into; removed at exit.
struct ConvnetFile {
    nn::Model model;
    nn::CompileOptions co;
    std::string path;
    size_t bytes = 0;

    ConvnetFile() {
        nn::set_num_threads(1);
        co.max_batch = 1;
        build_convnet(&model);
        check(model.compile(co));
        const char* tmp = std::getenv("TMPDIR");
        path = std::string(tmp && *tmp ? tmp : "/tmp") + "/nn_bench_convnet_" + std::to_string((long)getpid()) +
               ".safetensors";
        check(nn::save(model, path.c_str()));
        if (FILE* f = std::fopen(path.c_str(), "rb")) {
            std::fseek(f, 0, SEEK_END);
            bytes = (size_t)std::ftell(f);
            std::fclose(f);
        }
        // The load must restore what was saved: spoil a weight, load, compare.
        float* w = model.layer(7).weight().data;
        const float saved = w[12345];
        w[12345] = saved + 1.0f;
        check(nn::load_weights(model, path.c_str()));
        if (w[12345] != saved) {
            std::fprintf(stderr, "bench_files: load_weights did not restore the saved weight\n");
            std::abort();
        }
    }
    ~ConvnetFile() { std::remove(path.c_str()); }
};

ConvnetFile& file() {
    static ConvnetFile f;
    return f;
}

void report(benchmark::State& state, size_t bytes) {
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)bytes);
    state.counters["file_MB"] = (double)bytes / 1e6;
}

void BM_LoadWeights(benchmark::State& state) {
    ConvnetFile& f = file();
    for (auto _ : state) check(nn::load_weights(f.model, f.path.c_str()));
    report(state, f.bytes);
}
BENCHMARK(BM_LoadWeights)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_SafetensorsLoad(benchmark::State& state) {
    ConvnetFile& f = file();
    for (auto _ : state) {
        nn::SafeTensors st;
        check(nn::safetensors_load(f.path.c_str(), &st));
        benchmark::DoNotOptimize(st.entries.data());
    }
    report(state, f.bytes);
}
BENCHMARK(BM_SafetensorsLoad)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_LoadModel(benchmark::State& state) {
    ConvnetFile& f = file();
    for (auto _ : state) {
        nn::Model m;
        check(nn::load_model(f.path.c_str(), f.co, &m));
        benchmark::DoNotOptimize(m.layers.data());
    }
    report(state, f.bytes);
}
BENCHMARK(BM_LoadModel)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
