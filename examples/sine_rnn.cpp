// examples/sine_rnn.cpp — a recurrent network forecasts the next value of a
// noisy sine wave: the Keras style (nn::Model) on sequences.
//
// Every sequence is a sine of its own frequency and phase plus Gaussian noise:
//     v_t = sin(2 pi f t + phi) + noise * N(0, 1),   f ~ U(0.03, 0.12) cycles/step
// The input is a window v_0 .. v_{T-1}, a (T, 1) sample; the target is v_T.
//
//     LSTM(1 -> 32), last state only (return_sequences = false)   (T, 1) -> (32)
//     Dense(32 -> 1)                                               (32)   -> (1)
//     loss MSE, Adam 3e-3, batch 32
//
// To judge the test MSE it prints two yardsticks: persistence (predict that
// the next value equals the last one seen, the usual forecasting baseline)
// and the noise floor noise^2 (what even the true sine scores, since v_T
// carries fresh noise no model can foresee). A network that learned the
// waves lands far below persistence and near the floor.
//
//   build/sine_rnn [--cell lstm|gru] [--epochs 25] [--batch 32] [--seed 0]
//                  [--noise 0.05] [--window 24] [--threads T] [--verbose 0|1|2]
#include <cmath>
#include <cstring>

#include "common.hpp"

// Removes "--name value" from argv (so parse_args sees only the common
// flags) and returns the value, or nullptr when the flag is absent.
static const char* take_flag(int& argc, char** argv, const char* name) {
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], name) != 0) continue;
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s: %s needs a value\n", argv[0], name);
            std::exit(2);
        }
        const char* v = argv[i + 1];
        for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
        argc -= 2;
        return v;
    }
    return nullptr;
}

// n sequences of T + 1 values: the first T are the sample, the last the target.
static void make_waves(nn::Dataset* d, int n, int T, float noise, uint64_t seed) {
    nn::Rng rng(seed);
    d->sample = nn::make_shape({T, 1});
    d->n = (size_t)n;
    d->f32.assign((size_t)n * (size_t)T, 0.0f);
    d->targets.assign((size_t)n, 0.0f);
    d->target_size = 1;
    d->num_classes = 0;
    const float two_pi = 6.28318530718f;
    for (int i = 0; i < n; ++i) {
        const float f = rng.uniform(0.03f, 0.12f), phi = rng.uniform(0.0f, two_pi);
        for (int t = 0; t <= T; ++t) {
            const float v = std::sin(two_pi * f * (float)t + phi) + noise * rng.normal();
            if (t < T) d->f32[(size_t)i * T + t] = v;
            else d->targets[(size_t)i] = v;
        }
    }
}

// Mean squared error of "the next value is the last value seen".
static double persistence_mse(const nn::Dataset& d) {
    const int T = d.sample.dim[0];
    double s = 0;
    for (size_t i = 0; i < d.n; ++i) {
        const double e = (double)d.f32[i * (size_t)T + (size_t)(T - 1)] - (double)d.targets[i];
        s += e * e;
    }
    return s / (double)d.n;
}

int main(int argc, char** argv) {
    const char* cell_flag = take_flag(argc, argv, "--cell");
    const char* noise_flag = take_flag(argc, argv, "--noise");
    const char* window_flag = take_flag(argc, argv, "--window");
    ExampleArgs args = parse_args(argc, argv, /*accepts_init=*/true);
    const bool gru = cell_flag && !std::strcmp(cell_flag, "gru");
    if (cell_flag && !gru && std::strcmp(cell_flag, "lstm") != 0) {
        std::fprintf(stderr, "%s: --cell takes lstm or gru, got '%s'\n", argv[0], cell_flag);
        return 2;
    }
    const float noise = noise_flag ? std::strtof(noise_flag, nullptr) : 0.05f;
    const int T = window_flag ? std::atoi(window_flag) : 24;
    if (!(noise >= 0.0f && noise < 10.0f) || T < 2 || T > 10000) {
        std::fprintf(stderr, "%s: --noise must be in [0, 10) and --window in [2, 10000]\n", argv[0]);
        return 2;
    }
    const int epochs = args.epochs ? args.epochs : 25;
    const int batch = args.batch ? args.batch : 32;
    const int hidden = 32;

    nn::Dataset train, test;
    make_waves(&train, 4000, T, noise, args.seed + 1);
    make_waves(&test, 1000, T, noise, args.seed + 2);
    std::printf("noisy sine waves: %zu training and %zu test windows of %d steps, noise %.3f\n", train.n,
                test.n, T, (double)noise);

    nn::Model model;
    model.set_input(nn::make_shape({T, 1}));
    if (gru) model.add(nn::GRU(1, hidden, 1, /*return_sequences=*/false));
    else model.add(nn::LSTM(1, hidden, 1, /*return_sequences=*/false));
    model.add(nn::Dense(1));  // the forecast
    nn::CompileOptions co;
    co.loss = nn::MSE();
    co.metric = nn::Metric::None;
    co.optimizer = nn::Adam(3e-3f);
    StepAllocCounter allocs;
    nn::Status st = compile_and_fit(model, co, train, args, epochs, batch, &allocs);
    if (!st) return fail(st);

    nn::EvalResult r;
    if (!(st = model.evaluate(test, &r))) return fail(st);
    const double baseline = persistence_mse(test), floor = (double)noise * (double)noise;

    // A few forecasts beside the truth.
    float pred[4];
    const nn::Tensor first = nn::tensor_view(test.f32.data(), {4, T, 1});
    if (!(st = model.predict(first, nn::tensor_view(pred, {4, 1})))) return fail(st);
    for (int i = 0; i < 4; ++i)
        std::printf("  window %d: last values %+.3f %+.3f %+.3f -> forecast %+.3f, next value %+.3f\n", i,
                    (double)test.f32[(size_t)i * T + T - 3], (double)test.f32[(size_t)i * T + T - 2],
                    (double)test.f32[(size_t)i * T + T - 1], (double)pred[i], (double)test.targets[(size_t)i]);
    std::printf("test MSE %.5f; persistence baseline %.5f (%.1fx worse); noise floor %.5f\n", r.loss, baseline,
                r.loss > 0 ? baseline / r.loss : 0.0, floor);
    std::printf("RESULT example=sine_rnn cell=%s epochs=%d seconds_per_epoch=%.3f test_mse=%.5f baseline_mse=%.5f "
                "noise_mse=%.5f arena_bytes=%zu heap_allocs_per_step=%g\n",
                gru ? "gru" : "lstm", epochs, mean_epoch_seconds(model.history), r.loss, baseline, floor,
                model.arena_needed, allocs.per_step());
    return 0;
}
