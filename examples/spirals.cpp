// examples/spirals.cpp — the built-in data set: three interleaved spirals,
// which no straight line separates. Needs no files: the demo's fallback.
//
//   build/spirals [--epochs 200] [--batch 32] [--seed 0] [--data file.csv]
// With --data, a CSV (label in the last column, no header) replaces the spirals.
#include "common.hpp"

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv);
    const int epochs = args.epochs ? args.epochs : 200;
    const int batch = args.batch ? args.batch : 32;

    nn::Dataset all, test;
    nn::Status st;
    if (args.data) {
        nn::CsvOptions csv;
        if (!(st = nn::load_csv(args.data, csv, &all))) return fail(st);
    } else {
        nn::make_spirals(&all, 300, 3, 0.2f, args.seed + 7);
    }
    if (!(st = nn::split(all, 0.25f, &test))) return fail(st);  // hold out a quarter
    nn::fit_normalization(all, all);
    nn::fit_normalization(test, all);  // the test set uses the training statistics
    std::printf("%s: %zu training and %zu test points, %d classes\n", args.data ? args.data : "spirals", all.n,
                test.n, all.num_classes);

    nn::Model model;
    model.set_input(all.sample);
    model.add(nn::Dense(64, nn::Act::ReLU));
    model.add(nn::Dense(64, nn::Act::ReLU));
    model.add(nn::Dense(all.num_classes));
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-2f);
    co.max_batch = batch;
    co.seed = args.seed;
    if (!(st = model.compile(co))) return fail(st);
    model.summary();

    nn::FitOptions fo;
    fo.epochs = epochs;
    fo.batch_size = batch;
    fo.seed = args.seed;
    fo.verbose = args.verbose == 1 ? 2 : args.verbose;  // many short epochs: a line each
    StepAllocCounter allocs;
    allocs.attach(fo);
    if (!(st = model.fit(all, fo))) return fail(st);

    nn::EvalResult r;
    if (!(st = model.evaluate(test, &r))) return fail(st);
    std::printf("test loss %.4f, test accuracy %.4f\n", r.loss, r.metric);
    print_result("spirals", epochs, mean_epoch_seconds(model.history), r.metric, model.arena_needed,
                 allocs.per_step());
    return 0;
}
