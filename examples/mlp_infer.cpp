// mlp_infer.cpp — inference only, as on a board: the 784-128-128-10 MLP,
// compiled into a static buffer, run on a deterministic input.
//
// No data set, no training: it is the program `make size` links statically
// to measure what a deployed model costs in flash (BENCHMARKS.md, issue 8).
// The weights are the seeded initialisation; a real program would load
// trained ones. Prints the predicted class of each input row.
#include <cstdio>
#include <cstdlib>

#include "nn.hpp"

#if defined(__GLIBCXX__) && defined(NN_SMALL_TERMINATE)
// Size trick for static links (`make size` defines NN_SMALL_TERMINATE):
// libstdc++'s default terminate handler prints the demangled type of the
// exception, which links its C++ demangler (about 47 KB on aarch64) into
// every static program that uses std::thread or operator new. The library
// never throws, so a handler that just aborts loses nothing.
namespace __gnu_cxx {
void __verbose_terminate_handler() { std::abort(); }
}  // namespace __gnu_cxx
#endif

namespace {
constexpr int kBatch = 4;  // rows per predict call (the model's max_batch)
// The arena in static memory (.bss), not on the heap (only the model's small
// layer lists are std::vectors). Model::measure gives the bytes it needs:
// 1.2 to 1.4 MB by target for parameters, gradients, activations and GEMM
// packing (plain SGD adds no optimizer state). compile fails with the byte
// counts if the buffer is too small.
alignas(64) unsigned char g_arena[1536 * 1024];
float g_x[kBatch * 784];
float g_y[kBatch * 10];
}  // namespace

int main() {
    nn::Model model;
    model.set_input(nn::make_shape({1, 28, 28}));
    model.add(nn::Flatten());
    model.add(nn::Dense(128, nn::Act::ReLU));
    model.add(nn::Dense(128, nn::Act::ReLU));
    model.add(nn::Dense(10));
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::SGD();  // plain SGD keeps no state: no optimizer bytes
    co.max_batch = kBatch;
    co.arena_buffer = g_arena;
    co.arena_bytes = sizeof g_arena;
    nn::Status st = model.compile(co);
    if (!st) {
        std::fprintf(stderr, "%s\n", st.message());
        return 1;
    }
    // A deterministic input: a different smooth pattern per row.
    for (int r = 0; r < kBatch; ++r)
        for (int i = 0; i < 784; ++i) g_x[r * 784 + i] = (float)((i * (r + 3) + 7 * r) % 256) / 255.0f;
    st = model.predict(nn::tensor_view(g_x, {kBatch, 1, 28, 28}), nn::tensor_view(g_y, {kBatch, 10}));
    if (!st) {
        std::fprintf(stderr, "%s\n", st.message());
        return 1;
    }
    for (int r = 0; r < kBatch; ++r) {
        int best = 0;
        for (int c = 1; c < 10; ++c)
            if (g_y[r * 10 + c] > g_y[r * 10 + best]) best = c;
        std::printf("row %d: class %d\n", r, best);
    }
    std::printf("arena %zu bytes, simd %s\n", model.arena_needed, nn::simd_arch());
    return 0;
}
