// examples/char_lm.cpp — a character-level language model: an LSTM reads
// text one byte at a time and learns to predict the next one. The explicit
// style (no Model): we build each layer into one arena, call forward and
// backward ourselves and step Adam by hand.
//
//   ids (B, T) -> Embedding(V, 64) -> (B, T, 64) -> Dropout
//              -> LSTM(64, 128), return_sequences -> (B, T, 128) -> Dropout
//              -> Dense(128, V), time-distributed -> (B, T, V) logits
//   loss: softmax cross-entropy on the (B*T, V) view of the logits
//
// Training reads the text as B parallel streams (stream b is the b-th slice
// of the training text) in consecutive chunks of T characters. The LSTM's
// final states hn/cn of one chunk are handed to the next as h0/c0, so the
// model sees an unbroken history, while the gradient stops at the chunk
// boundary: truncated backpropagation through time.
//
// It reports bits per character (cross-entropy / ln 2) on the last 10 % of
// the text, which it never trains on, beside a unigram baseline: the same
// held-out characters coded with the training text's character frequencies
// (add-one smoothed). Below that, the model has learned more than which
// letters are common. Then it writes a passage, one character at a time,
// sampling each from the softmax at a temperature (lower: safer, duller).
//
// Dropout (0.3) on the embeddings and on the LSTM's outputs keeps the model
// from learning a small text by heart; so does the default stopping rule:
// 90 s of training, or 80 passes over the text if they come first.
//
//   build/char_lm [--data FILE] [--seconds 90] [--steps N | --epochs N]
//                 [--temperature 0.8] [--hidden 128] [--seq 64] [--batch 32]
//                 [--dropout 0.3] [--length 300] [--seed 0] [--threads T]
//                 [--verbose 0|1]
// Any plain-text file will do, e.g. --data /usr/share/common-licenses/GPL-3
// (35 KB, on every Debian system); without --data it trains on a built-in
// passage (the opening of Alice's Adventures in Wonderland).
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"

// Lewis Carroll, Alice's Adventures in Wonderland (1865), chapter I: public domain.
static const char kBuiltinText[] = R"TEXT(Alice was beginning to get very tired of sitting by her sister on the bank,
and of having nothing to do: once or twice she had peeped into the book her sister was reading,
but it had no pictures or conversations in it, "and what is the use of a book," thought
Alice "without pictures or conversations?"

So she was considering in her own mind (as well as she could, for the hot day made her
feel very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth
the trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink
eyes ran close by her.

There was nothing so very remarkable in that; nor did Alice think it so very much out of
the way to hear the Rabbit say to itself, "Oh dear! Oh dear! I shall be late!" (when she
thought it over afterwards, it occurred to her that she ought to have wondered at this,
but at the time it all seemed quite natural); but when the Rabbit actually took a watch
out of its waistcoat-pocket, and looked at it, and then hurried on, Alice started to her
feet, for it flashed across her mind that she had never before seen a rabbit with either
a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran
across the field after it, and fortunately was just in time to see it pop down a large
rabbit-hole under the hedge.

In another moment down went Alice after it, never once considering how in the world she
was to get out again.

The rabbit-hole went straight on like a tunnel for some way, and then dipped suddenly
down, so suddenly that Alice had not a moment to think about stopping herself before she
found herself falling down a very deep well.

Either the well was very deep, or she fell very slowly, for she had plenty of time as she
went down to look about her and to wonder what was going to happen next. First, she tried
to look down and make out what she was coming to, but it was too dark to see anything;
then she looked at the sides of the well, and noticed that they were filled with
cupboards and book-shelves; here and there she saw maps and pictures hung upon pegs. She
took down a jar from one of the shelves as she passed; it was labelled "ORANGE
MARMALADE", but to her great disappointment it was empty: she did not like to drop the
jar for fear of killing somebody underneath, so managed to put it into one of the
cupboards as she fell past it.

"Well!" thought Alice to herself, "after such a fall as this, I shall think nothing of
tumbling down stairs! How brave they'll all think me at home! Why, I wouldn't say
anything about it, even if I fell off the top of the house!" (Which was very likely
true.)

Down, down, down. Would the fall never come to an end? "I wonder how many miles I've
fallen by this time?" she said aloud. "I must be getting somewhere near the centre of the
earth. Let me see: that would be four thousand miles down, I think--" (for, you see,
Alice had learnt several things of this sort in her lessons in the schoolroom, and though
this was not a very good opportunity for showing off her knowledge, as there was no one
to listen to her, still it was good practice to say it over) "--yes, that's about the
right distance--but then I wonder what Latitude or Longitude I've got to?" (Alice had no
idea what Latitude was, or Longitude either, but thought they were nice grand words to
say.)

Presently she began again. "I wonder if I shall fall right through the earth! How funny
it'll seem to come out among the people that walk with their heads downward! The
Antipathies, I think--" (she was rather glad there was no one listening, this time, as it
didn't sound at all the right word) "--but I shall have to ask them what the name of the
country is, you know. Please, Ma'am, is this New Zealand or Australia?" (and she tried to
curtsey as she spoke--fancy curtseying as you're falling through the air! Do you think
you could manage it?) "And what an ignorant little girl she'll think me for asking! No,
it'll never do to ask: perhaps I shall see it written up somewhere."

Down, down, down. There was nothing else to do, so Alice soon began talking again.
"Dinah'll miss me very much to-night, I should think!" (Dinah was the cat.) "I hope
they'll remember her saucer of milk at tea-time. Dinah my dear! I wish you were down here
with me! There are no mice in the air, I'm afraid, but you might catch a bat, and that's
very like a mouse, you know. But do cats eat bats, I wonder?" And here Alice began to get
rather sleepy, and went on saying to herself, in a dreamy sort of way, "Do cats eat bats?
Do cats eat bats?" and sometimes, "Do bats eat cats?" for, you see, as she couldn't
answer either question, it didn't much matter which way she put it. She felt that she was
dozing off, and had just begun to dream that she was walking hand in hand with Dinah, and
saying to her very earnestly, "Now, Dinah, tell me the truth: did you ever eat a bat?"
when suddenly, thump! thump! down she came upon a heap of sticks and dry leaves, and the
fall was over.
)TEXT";

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

static bool read_file(const char* path, std::vector<uint8_t>* out) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->insert(out->end(), buf, buf + n);
    const bool ok = !std::ferror(f);
    std::fclose(f);
    return ok;
}

struct Sizes {
    int V = 0;    // vocabulary: distinct bytes of the text
    int E = 64;   // embedding width
    int H = 128;  // LSTM hidden size
    int B = 32;   // streams per training batch
    int T = 64;   // characters per chunk (the BPTT window)
    float dropout = 0.3f;  // on the embeddings and on the LSTM's outputs
};

// Everything the program carves from its arena: layers, activations, their
// gradients, the carried states and the optimizer. setup() runs twice: once
// on a measuring arena (a dry run that only counts bytes), once for real.
struct Net {
    // Training (and held-out scoring, which runs the same layers at B = 1).
    nn::Layer emb, drop_e, lstm, drop_h, fc;
    nn::Tensor ids;        // (B, T) character ids, as floats
    nn::Tensor e, ed;      // (B, T, E) embeddings, after dropout
    nn::Tensor de, ded;    //           and their gradients
    nn::Tensor h, hd;      // (B, T, H) LSTM outputs, after dropout
    nn::Tensor dh, dhd;    //           and their gradients
    nn::Tensor z, dz;      // (B, T, V) logits and their gradient
    int32_t* labels = nullptr;  // (B * T) next characters
    float* h0 = nullptr;   // (1, B, H) state carried from chunk to chunk
    float* c0 = nullptr;
    nn::Param params[8];
    int n_params = 0;
    nn::Optimizer opt;
    // Generation: the same network for one character at a time (T = 1,
    // batch 1); it gets the trained weights copied in.
    nn::Layer gemb, glstm, gfc;
    nn::Tensor gid, ge, gh, gz;  // (1, 1), (1, 1, E), (1, 1, H), (1, 1, V)
    float* gh0 = nullptr;  // (1, 1, H) state of the one-stream runs
    float* gc0 = nullptr;
};

static nn::Status setup(Net& n, const Sizes& s, nn::Arena& arena, uint64_t seed, const nn::OptimConfig& oc) {
    nn::Status st;
    n.emb = nn::Embedding(s.V, s.E);
    n.drop_e = nn::Dropout(s.dropout);
    n.lstm = nn::LSTM(s.E, s.H, 1, /*return_sequences=*/true);
    n.drop_h = nn::Dropout(s.dropout);
    n.fc = nn::Dense(s.H, s.V);
    std::snprintf(n.emb.name, sizeof n.emb.name, "embedding");
    std::snprintf(n.drop_e.name, sizeof n.drop_e.name, "dropout_e");
    std::snprintf(n.lstm.name, sizeof n.lstm.name, "lstm");
    std::snprintf(n.drop_h.name, sizeof n.drop_h.name, "dropout_h");
    std::snprintf(n.fc.name, sizeof n.fc.name, "logits");
    if (!(st = nn::build(n.emb, nn::make_shape({s.T}), s.B, arena, seed + 1))) return st;
    if (!(st = nn::build(n.drop_e, nn::make_shape({s.T, s.E}), s.B, arena, seed + 2))) return st;
    if (!(st = nn::build(n.lstm, nn::make_shape({s.T, s.E}), s.B, arena, seed + 3))) return st;
    if (!(st = nn::build(n.drop_h, nn::make_shape({s.T, s.H}), s.B, arena, seed + 4))) return st;
    if (!(st = nn::build(n.fc, nn::make_shape({s.T, s.H}), s.B, arena, seed + 5))) return st;

    const struct { nn::Tensor* t; nn::Shape shape; } acts[] = {
        {&n.ids, nn::make_shape({s.B, s.T})},
        {&n.e, nn::make_shape({s.B, s.T, s.E})},  {&n.ed, nn::make_shape({s.B, s.T, s.E})},
        {&n.de, nn::make_shape({s.B, s.T, s.E})}, {&n.ded, nn::make_shape({s.B, s.T, s.E})},
        {&n.h, nn::make_shape({s.B, s.T, s.H})},  {&n.hd, nn::make_shape({s.B, s.T, s.H})},
        {&n.dh, nn::make_shape({s.B, s.T, s.H})}, {&n.dhd, nn::make_shape({s.B, s.T, s.H})},
        {&n.z, nn::make_shape({s.B, s.T, s.V})},  {&n.dz, nn::make_shape({s.B, s.T, s.V})},
        {&n.gid, nn::make_shape({1, 1})},         {&n.ge, nn::make_shape({1, 1, s.E})},
        {&n.gh, nn::make_shape({1, 1, s.H})},     {&n.gz, nn::make_shape({1, 1, s.V})},
    };
    for (const auto& a : acts)
        if (!(st = nn::tensor_alloc(arena, a.shape, a.t))) return st;
    n.labels = static_cast<int32_t*>(arena.alloc(sizeof(int32_t) * (size_t)s.B * (size_t)s.T, &st, "labels"));
    n.h0 = arena.alloc_floats((size_t)s.B * (size_t)s.H, &st, "h0");
    n.c0 = arena.alloc_floats((size_t)s.B * (size_t)s.H, &st, "c0");
    n.gh0 = arena.alloc_floats((size_t)s.H, &st, "generation h0");
    n.gc0 = arena.alloc_floats((size_t)s.H, &st, "generation c0");
    if (!st) return st;

    n.n_params = 0;
    for (nn::Layer* L : {&n.emb, &n.lstm, &n.fc})
        n.n_params += nn::layer_params(*L, n.params + n.n_params, 8 - n.n_params);
    if (!(st = n.opt.init(oc, n.params, n.n_params, arena))) return st;

    // The generation copies. gfc shares fc's GEMM packing buffer.
    n.gemb = nn::Embedding(s.V, s.E);
    n.glstm = nn::LSTM(s.E, s.H, 1, true);
    n.gfc = nn::Dense(s.H, s.V);
    n.gfc.pack = n.fc.pack;
    n.gfc.pack_slots = n.fc.pack_slots;
    if (!(st = nn::build(n.gemb, nn::make_shape({1}), 1, arena))) return st;
    if (!(st = nn::build(n.glstm, nn::make_shape({1, s.E}), 1, arena))) return st;
    if (!(st = nn::build(n.gfc, nn::make_shape({1, s.H}), 1, arena))) return st;
    return st;
}

// Copies the trained parameters into the generation layers (same shapes).
static void copy_params(nn::Layer& to, const nn::Layer& from) {
    for (int i = 0; i < from.n_params; ++i)
        std::memcpy(to.params[i].data, from.params[i].data, from.params[i].numel() * sizeof(float));
}

// Mean bits per character of the model on text[0..n): predicts text[1..n)
// from what comes before, as one stream (batch 1) in chunks of T with the
// state carried on. The last, partial chunk runs with lengths = its size.
static nn::Status heldout_bpc(Net& n, const Sizes& s, const int32_t* text, size_t count, double* bpc) {
    nn::Status st;
    const nn::Tensor ids = n.ids.rows(0, 1), e = n.e.rows(0, 1), h = n.h.rows(0, 1), z = n.z.rows(0, 1);
    const nn::Tensor z2 = z.reshape({s.T, s.V}), dz2 = n.dz.rows(0, 1).reshape({s.T, s.V});
    std::memset(n.gh0, 0, sizeof(float) * (size_t)s.H);
    std::memset(n.gc0, 0, sizeof(float) * (size_t)s.H);
    n.lstm.h0 = n.gh0;
    n.lstm.c0 = n.gc0;
    double nats = 0;
    int32_t len = 0;
    for (size_t p = 0; p + 1 < count; p += (size_t)s.T) {
        len = (int32_t)(count - 1 - p < (size_t)s.T ? count - 1 - p : (size_t)s.T);
        for (int t = 0; t < s.T; ++t) {
            ids.data[t] = t < len ? (float)text[p + (size_t)t] : 0.0f;
            n.labels[t] = t < len ? text[p + (size_t)t + 1] : 0;
        }
        n.lstm.lengths = len < s.T ? &len : nullptr;
        // Dropout is the identity in Eval mode: skipped here.
        if (!(st = nn::forward(n.emb, e, ids, nn::Mode::Eval))) break;
        if (!(st = nn::forward(n.lstm, h, e, nn::Mode::Eval))) break;
        if (!(st = nn::forward(n.fc, z, h, nn::Mode::Eval))) break;
        nn::Target t;
        t.labels = n.labels;
        float loss = 0;  // mean over the chunk's len predictions, in nats
        if (!(st = nn::softmax_cross_entropy(dz2.rows(0, len), nullptr, z2.rows(0, len), t, &loss))) break;
        nats += (double)loss * len;
        std::memcpy(n.gh0, n.lstm.hn, sizeof(float) * (size_t)s.H);
        std::memcpy(n.gc0, n.lstm.cn, sizeof(float) * (size_t)s.H);
    }
    n.lstm.lengths = nullptr;
    n.lstm.h0 = n.h0;  // back to the training streams' state
    n.lstm.c0 = n.c0;
    *bpc = count > 1 ? nats / (double)(count - 1) / std::log(2.0) : 0.0;
    return st;
}

// One step of stateful generation: feeds character `id`, returns the logits
// (gz) of the next one. The state lives in gh0/gc0.
static nn::Status generate_step(Net& n, int32_t id) {
    nn::Status st;
    n.gid.data[0] = (float)id;
    n.glstm.h0 = n.gh0;
    n.glstm.c0 = n.gc0;
    if (!(st = nn::forward(n.gemb, n.ge, n.gid, nn::Mode::Eval))) return st;
    if (!(st = nn::forward(n.glstm, n.gh, n.ge, nn::Mode::Eval))) return st;
    if (!(st = nn::forward(n.gfc, n.gz, n.gh, nn::Mode::Eval))) return st;
    std::memcpy(n.gh0, n.glstm.hn, sizeof(float) * n.gh.numel());  // hn -> h0 of the next step
    std::memcpy(n.gc0, n.glstm.cn, sizeof(float) * n.gh.numel());
    return st;
}

// A character id drawn from softmax(logits / temperature); temperature 0: the argmax.
static int32_t sample(const float* logits, int V, float temperature, nn::Rng& rng, double* scratch) {
    int best = 0;
    for (int v = 1; v < V; ++v)
        if (logits[v] > logits[best]) best = v;
    if (temperature <= 0.0f) return best;
    double total = 0;
    for (int v = 0; v < V; ++v)
        total += scratch[v] = std::exp((double)(logits[v] - logits[best]) / temperature);
    double r = (double)rng.uniform() * total;
    for (int v = 0; v < V; ++v)
        if ((r -= scratch[v]) < 0) return v;
    return best;
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
    const char* f_seconds = take_flag(argc, argv, "--seconds");
    const char* f_temp = take_flag(argc, argv, "--temperature");
    const char* f_hidden = take_flag(argc, argv, "--hidden");
    const char* f_seq = take_flag(argc, argv, "--seq");
    const char* f_length = take_flag(argc, argv, "--length");
    const char* f_dropout = take_flag(argc, argv, "--dropout");
    ExampleArgs args = parse_args(argc, argv);
    const double budget = f_seconds ? std::atof(f_seconds) : 90.0;
    const float temperature = f_temp ? std::strtof(f_temp, nullptr) : 0.8f;
    const int gen_length = f_length ? std::atoi(f_length) : 300;
    Sizes s;
    if (f_hidden) s.H = std::atoi(f_hidden);
    if (f_seq) s.T = std::atoi(f_seq);
    if (args.batch) s.B = args.batch;
    if (f_dropout) s.dropout = std::strtof(f_dropout, nullptr);
    if (!(budget > 0) || !(temperature >= 0.0f) || gen_length < 0 || s.H < 1 || s.H > 4096 || s.T < 2 ||
        s.T > 4096 || !(s.dropout >= 0.0f && s.dropout < 1.0f)) {
        std::fprintf(stderr, "%s: need --seconds > 0, --temperature >= 0, --length >= 0, --hidden in 1..4096, "
                     "--seq in 2..4096, --dropout in [0, 1)\n", argv[0]);
        return 2;
    }

    // 1. The text, its vocabulary and the 90/10 split.
    std::vector<uint8_t> raw;
    if (args.data) {
        if (!read_file(args.data, &raw)) {
            std::fprintf(stderr, "error: cannot read '%s'\n", args.data);
            return 1;
        }
    } else {
        raw.assign(kBuiltinText, kBuiltinText + sizeof kBuiltinText - 1);
    }
    int32_t id_of[256];
    uint8_t byte_of[256];
    for (int c = 0; c < 256; ++c) id_of[c] = -1;
    for (uint8_t c : raw) id_of[c] = 0;  // present
    s.V = 0;
    for (int c = 0; c < 256; ++c)
        if (id_of[c] == 0) {
            byte_of[s.V] = (uint8_t)c;
            id_of[c] = s.V++;
        }
    std::vector<int32_t> text(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) text[i] = id_of[raw[i]];
    const size_t n_train = raw.size() / 10 * 9, n_held = raw.size() - n_train;
    // Fewer streams when the text is short: each should span a few chunks.
    if ((size_t)s.B * 4 * (size_t)(s.T + 1) > n_train) s.B = (int)(n_train / (4 * (size_t)(s.T + 1)));
    if (s.B < 1 || n_held < 2 || s.V < 2) {
        std::fprintf(stderr, "error: %s has %zu bytes: too short for chunks of %d characters\n",
                     args.data ? args.data : "the text", raw.size(), s.T);
        return 1;
    }
    const size_t stream_len = n_train / (size_t)s.B;
    const int chunks_per_epoch = (int)((stream_len - 1) / (size_t)s.T);
    std::printf("%s: %zu bytes, %d distinct; %zu to train on as %d streams of %zu, %zu held out\n",
                args.data ? args.data : "built-in text (Alice, chapter I)", raw.size(), s.V, n_train, s.B,
                stream_len, n_held);

    // Unigram baseline: the held-out characters coded with the training
    // text's frequencies (add-one smoothing: a character never seen in
    // training would otherwise cost infinitely many bits).
    std::vector<double> freq((size_t)s.V, 1.0);
    for (size_t i = 0; i < n_train; ++i) freq[(size_t)text[i]] += 1.0;
    double unigram = 0;
    for (size_t i = n_train + 1; i < raw.size(); ++i)
        unigram -= std::log2(freq[(size_t)text[i]] / ((double)n_train + s.V));
    unigram /= (double)(n_held - 1);

    // 2. Size first, then carve: a dry run counts the bytes, then one block.
    nn::OptimConfig oc = nn::Adam(3e-3f);
    oc.clip_norm = 5.0f;  // exploding gradients are the RNN's classic failure
    nn::Status st;
    nn::Arena arena;
    size_t bytes = 0;
    {
        Net dry;
        arena.begin_measure();
        if (!(st = setup(dry, s, arena, args.seed, oc))) return fail(st);
        bytes = arena.peak;
    }
    if (!(st = arena.reserve(bytes))) return fail(st);
    Net n;
    if (!(st = setup(n, s, arena, args.seed, oc))) return fail(st);
    std::printf("Embedding(%d, %d) -> LSTM(%d, %d) -> Dense(%d, %d): %zu parameters, arena %zu bytes\n", s.V, s.E,
                s.E, s.H, s.H, s.V,
                n.emb.param_count() + n.lstm.param_count() + n.fc.param_count(), arena.used);

    // 3. Train: chunks of T from each stream, state carried between them.
    // By default: 90 s, or 80 passes over the text if that comes first (a
    // short text is learned by heart beyond that, and the held-out score
    // gets worse). --steps or --epochs set the work exactly instead.
    const long max_steps = args.steps;
    const int max_epochs = args.epochs ? args.epochs : (args.steps ? 0 : 80);
    const bool timed = f_seconds || (!args.steps && !args.epochs);
    std::printf("training");
    if (timed) std::printf(" for %.0f s", budget);
    if (max_epochs) std::printf("%s%d epochs", timed ? " or " : " for ", max_epochs);
    if (max_steps) std::printf("%s%ld steps", timed ? " or " : " for ", max_steps);
    std::printf(" (%d streams, chunks of %d characters, %d chunks per epoch, dropout %.2f)\n", s.B, s.T,
                chunks_per_epoch, (double)s.dropout);
    const nn::Tensor z2 = n.z.reshape({s.B * s.T, s.V}), dz2 = n.dz.reshape({s.B * s.T, s.V});
    nn::Rng rng(args.seed + 11);
    const uint64_t fp = nn::flush_denormals();  // as Model::fit does
    double train_seconds = 0, next_report = 5.0, report_nats = 0;
    long long step_allocs = 0;
    long step = 0;
    int report_steps = 0, epoch = 0;
    bool done = false;
    while (!done) {
        std::memset(n.h0, 0, sizeof(float) * (size_t)s.B * (size_t)s.H);  // each epoch starts fresh
        std::memset(n.c0, 0, sizeof(float) * (size_t)s.B * (size_t)s.H);
        n.lstm.h0 = n.h0;
        n.lstm.c0 = n.c0;
        // A random offset per epoch moves the chunk boundaries around.
        const size_t slack = (stream_len - 1) % (size_t)s.T;  // characters the chunks leave over
        const size_t offset = rng.below((uint32_t)slack + 1);
        for (int c = 0; c < chunks_per_epoch && !done; ++c) {
            const auto t0 = std::chrono::steady_clock::now();
            const long long a0 = heap_allocs();
            for (int b = 0; b < s.B; ++b) {
                const int32_t* src = text.data() + (size_t)b * stream_len + offset + (size_t)c * (size_t)s.T;
                for (int t = 0; t < s.T; ++t) {
                    n.ids.data[b * s.T + t] = (float)src[t];
                    n.labels[b * s.T + t] = src[t + 1];
                }
            }
            n.opt.zero_grad();
            if (!(st = nn::forward(n.emb, n.e, n.ids, nn::Mode::Train)) ||
                !(st = nn::forward(n.drop_e, n.ed, n.e, nn::Mode::Train)) ||
                !(st = nn::forward(n.lstm, n.h, n.ed, nn::Mode::Train)) ||
                !(st = nn::forward(n.drop_h, n.hd, n.h, nn::Mode::Train)) ||
                !(st = nn::forward(n.fc, n.z, n.hd, nn::Mode::Train)))  // the Dense runs on every step
                return fail(st);
            nn::Target tg;
            tg.labels = n.labels;
            float loss = 0;
            if (!(st = nn::softmax_cross_entropy(dz2, nullptr, z2, tg, &loss))) return fail(st);
            if (!std::isfinite(loss)) {
                std::fprintf(stderr, "error: the loss is %f at step %ld\n", (double)loss, step);
                return 1;
            }
            if (!(st = nn::backward(n.fc, n.dhd, n.dz, n.hd, n.z)) ||
                !(st = nn::backward(n.drop_h, n.dh, n.dhd, n.h, n.hd)) ||
                !(st = nn::backward(n.lstm, n.ded, n.dh, n.ed, n.h)) ||
                !(st = nn::backward(n.drop_e, n.de, n.ded, n.e, n.ed)) ||
                !(st = nn::backward(n.emb, nn::Tensor{}, n.de, n.ids, n.e)))  // ids take no gradient
                return fail(st);
            n.opt.step();
            // The next chunk continues where this one ended.
            std::memcpy(n.h0, n.lstm.hn, sizeof(float) * (size_t)s.B * (size_t)s.H);
            std::memcpy(n.c0, n.lstm.cn, sizeof(float) * (size_t)s.B * (size_t)s.H);
            if (step > 0) step_allocs += heap_allocs() - a0;  // the first step may set things up
            train_seconds += seconds_since(t0);
            ++step;
            report_nats += loss;
            ++report_steps;
            if ((max_steps && step >= max_steps) || (timed && train_seconds >= budget) ||
                (max_epochs && epoch + 1 >= max_epochs && c + 1 == chunks_per_epoch))
                done = true;
            if (args.verbose && (train_seconds >= next_report || done)) {
                double held = 0;
                if (!(st = heldout_bpc(n, s, text.data() + n_train, n_held, &held))) return fail(st);
                std::printf("  %6.1f s  step %5ld  epoch %3d  train %.3f bpc  held-out %.3f bpc  (unigram %.3f)\n",
                            train_seconds, step, epoch + 1, report_nats / report_steps / std::log(2.0), held,
                            unigram);
                std::fflush(stdout);
                report_nats = 0;
                report_steps = 0;
                while (next_report <= train_seconds) next_report += 5.0;
            }
        }
        ++epoch;
    }
    nn::restore_denormals(fp);

    double held = 0;
    if (!(st = heldout_bpc(n, s, text.data() + n_train, n_held, &held))) return fail(st);
    const double allocs_per_step = step > 1 ? (double)step_allocs / (double)(step - 1) : 0.0;
    const double epochs_done = (double)step / chunks_per_epoch;
    std::printf("trained %ld steps (%.1f epochs) in %.1f s, %.1f ms per step\n", step, epochs_done, train_seconds,
                1000.0 * train_seconds / (double)step);
    std::printf("held-out: %.3f bits per character; unigram baseline %.3f (%.0f%% of it)\n", held, unigram,
                100.0 * held / unigram);

    // 4. Generate: prime the state with the start of the held-out text, then
    // sample one character at a time, each fed back in (B = 1, T = 1).
    copy_params(n.gemb, n.emb);
    copy_params(n.glstm, n.lstm);
    copy_params(n.gfc, n.fc);
    std::memset(n.gh0, 0, sizeof(float) * (size_t)s.H);
    std::memset(n.gc0, 0, sizeof(float) * (size_t)s.H);
    const size_t prime = n_held < 40 ? n_held : 40;
    std::printf("\nsample at temperature %.2f, primed with the held-out text's first %zu characters:\n---\n",
                (double)temperature, prime);
    for (size_t i = 0; i < prime; ++i) {
        std::putchar(raw[n_train + i]);
        if (!(st = generate_step(n, text[n_train + i]))) return fail(st);
    }
    std::vector<double> probs((size_t)s.V);
    nn::Rng sampler(args.seed + 99);
    for (int i = 0; i < gen_length; ++i) {
        const int32_t id = sample(n.gz.data, s.V, temperature, sampler, probs.data());
        std::putchar(byte_of[id]);
        if (!(st = generate_step(n, id))) return fail(st);
    }
    std::printf("\n---\n");
    std::printf("RESULT example=char_lm steps=%ld epochs=%.1f train_seconds=%.1f ms_per_step=%.2f heldout_bpc=%.4f "
                "unigram_bpc=%.4f hidden=%d seq=%d batch=%d arena_bytes=%zu heap_allocs_per_step=%g\n",
                step, epochs_done, train_seconds, 1000.0 * train_seconds / (double)step, held, unigram, s.H, s.T, s.B,
                arena.used, allocs_per_step);
    return 0;
}
