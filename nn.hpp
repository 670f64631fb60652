// nn.hpp — train and run neural networks on small CPUs, in two files.
//
// ---------------------------------------------------------------------------
// A tour in five minutes
// ---------------------------------------------------------------------------
// Copy nn.hpp and nn_impl.cpp into your project and compile nn_impl.cpp once
// (add -I/usr/include for xsimd if you have it; -lz to read gzipped data).
//
// 1. The Keras style: a sequential model that sizes its own memory.
//
//     nn::Dataset train, test;
//     nn::Status st = nn::load_fashion_mnist("/usr/share/datasets/fashion-mnist",
//                                            &train, &test);
//     if (!st) { fprintf(stderr, "%s\n", st.message()); return 1; }
//     train.scale = test.scale = 1.0f / 255;            // uint8 stays uint8
//
//     nn::Model model;
//     model.add(nn::Flatten());
//     model.add(nn::Dense(784, 128, nn::Act::ReLU));
//     model.add(nn::Dense(128, 128, nn::Act::ReLU));
//     model.add(nn::Dense(128, 10));                    // logits
//     nn::CompileOptions co;
//     co.loss = nn::CrossEntropy();                      // fused, stable softmax
//     co.optimizer = nn::Adam(1e-3f);
//     co.max_batch = 64;
//     st = model.compile(co);                            // the one big allocation
//     model.summary();
//     nn::FitOptions fo; fo.epochs = 10; fo.batch_size = 64;
//     st = model.fit(train, fo);                          // progress bar, history
//     nn::EvalResult r; model.evaluate(test, &r);         // r.loss, r.metric
//
// 2. The explicit style (Krikos, llm.c): you call each layer yourself.
//
//     nn::Layer fc = nn::Dense(784, 128, nn::Act::ReLU);
//     nn::build(fc, nn::make_shape({784}), /*max_batch=*/64, arena);
//     nn::forward(fc, h, x, nn::Mode::Train);            // h = relu(x W^T + b)
//     nn::backward(fc, dx, dh, x, h);                    // dW += ..., db += ...
//     ...then an nn::Optimizer steps the parameters you hand it.
//     Backward *accumulates* into parameter gradients; zero_grad() clears them,
//     so a layer used twice sums the gradients of both uses by itself.
//
// 3. Convolutional networks: the same model, NCHW, PyTorch's argument order.
//
//     model.add(nn::Conv2D(1, 32, 5, /*stride=*/1, nn::Same));
//     model.add(nn::ReLU());
//     model.add(nn::MaxPool2D(2));
//     model.add(nn::BatchNorm2d());                    // AvgPool2D, GlobalAvgPool
//     model.add(nn::Flatten());                        // (C, H, W) order
//
// 4. Sequences: RNN, LSTM and GRU with PyTorch's gates and weight names.
//
//     model.add(nn::LSTM(1, 64, /*num_layers=*/1, /*return_sequences=*/false));
//     model.add(nn::Dense(1));                         // next value of a series
//     // Embedding(vocab, dim), and Dense on (T, in) samples applies per step.
//
// 5. The tape style (NNKit, Neograd): operations record themselves as they
//    run and one call differentiates the graph (see "Tape" below).
//
//     nn::Var y = nn::relu(nn::matmul(x, W) + b);
//     nn::Var loss = nn::sum(nn::square(y - target));
//     tape.backward(loss);                             // W.grad(), b.grad()
//     tape.reset(step);                                // graph freed in O(1)
//
// ---------------------------------------------------------------------------
// Memory model
// ---------------------------------------------------------------------------
// All memory comes from an Arena: one 64-byte aligned block, bump allocation,
// mark/reset. Model::compile measures what the model needs for its maximum
// batch (a dry run of the same carving code), then allocates that once, or
// carves a buffer you own (a static array on a board). After compile, fit,
// evaluate and predict make no heap allocation per step. Running out of arena
// is an error naming the bytes requested, available and missing.
//
// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------
// Nothing throws; the library builds with -fno-exceptions -fno-rtti.
// Anything that can fail on input returns an nn::Status whose message names
// the layer, tensor or file and the numbers involved. `if (!st)` tests for
// failure. Model::add records the first error (sticky) and compile reports it.
//
// ---------------------------------------------------------------------------
// Configuration macros (define before including nn.hpp, and when compiling
// nn_impl.cpp)
// ---------------------------------------------------------------------------
// NN_NO_XSIMD      use the plain C++ loops even when xsimd is installed.
// NN_ASSERT(cond)  checks programmer invariants inside kernels; the default
//                  prints the condition and aborts. Define it to your own.
// NN_HAVE_ZLIB     1 to read gzipped IDX files (the Makefile detects zlib).
// NN_NO_FTZ        do not flush denormals to zero during fit.
#ifndef NN_HPP
#define NN_HPP

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#ifndef NN_ASSERT
#define NN_ASSERT(cond)                                                        \
    do {                                                                       \
        if (!(cond)) nn::assert_fail(#cond, __FILE__, __LINE__);               \
    } while (0)
#endif

namespace nn {

[[noreturn]] void assert_fail(const char* cond, const char* file, int line);

// ===========================================================================
// Status: success, or a message saying what went wrong and where.
// ===========================================================================
struct Status {
    char msg[320] = {0};  // empty means success; fixed size: no heap
    bool ok() const { return msg[0] == 0; }
    explicit operator bool() const { return ok(); }
    const char* message() const { return msg[0] ? msg : "ok"; }
};
Status errorf(const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

// Size arithmetic that reports overflow instead of wrapping.
bool size_mul(size_t a, size_t b, size_t* out);
bool size_add(size_t a, size_t b, size_t* out);

// ===========================================================================
// Arena: one aligned block, bump allocation.
// ===========================================================================
constexpr size_t kArenaAlign = 64;

struct Arena {
    unsigned char* base = nullptr;
    size_t capacity = 0;  // bytes usable from base
    size_t used = 0;      // bytes handed out (including alignment padding)
    size_t peak = 0;      // largest `used` seen
    bool owns = false;    // base came from reserve() and is freed by release()
    bool measuring = false;  // dry run: count bytes, hand out nothing

    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena() { release(); }

    Status reserve(size_t bytes);             // allocate the block once
    Status wrap(void* buffer, size_t bytes);  // carve memory the caller owns
    void begin_measure();                     // dry run: alloc only counts
    // 64-byte aligned; on exhaustion returns nullptr and, when err is given,
    // an error naming `what`, the bytes requested, available and missing.
    void* alloc(size_t bytes, Status* err, const char* what = "arena");
    float* alloc_floats(size_t count, Status* err, const char* what = "arena");
    size_t mark() const { return used; }
    void reset(size_t mark_) { used = mark_ <= used ? mark_ : used; }
    size_t available() const { return capacity - used; }
    void release();
};

// ===========================================================================
// Shape and Tensor: float32, up to 4 dimensions, row-major (NCHW), no copy.
// ===========================================================================
constexpr int kMaxDims = 4;

struct Shape {
    int ndim = 0;
    int dim[kMaxDims] = {0, 0, 0, 0};
    size_t numel() const;
    bool operator==(const Shape& o) const;
    bool operator!=(const Shape& o) const { return !(*this == o); }
};
Shape make_shape(std::initializer_list<int> dims);
// "(64, 1, 28, 28)"; writes into buf and returns it.
const char* shape_str(const Shape& s, char* buf, size_t cap);

struct Tensor {
    float* data = nullptr;
    Shape shape;

    size_t numel() const { return shape.numel(); }
    int dim(int i) const { return shape.dim[i]; }
    int batch() const { return shape.dim[0]; }
    size_t row_size() const;  // numel / dim(0): one sample
    float& operator[](size_t i) const { return data[i]; }
    // Views that share data.
    Tensor reshape(std::initializer_list<int> dims) const;
    Tensor reshape(const Shape& s) const;
    Tensor rows(int begin, int end) const;  // slice of dimension 0
};
Tensor tensor_view(float* data, std::initializer_list<int> dims);
Tensor tensor_view(float* data, const Shape& s);
// Shape `s` carved from the arena (contents uninitialised).
Status tensor_alloc(Arena& a, const Shape& s, Tensor* out, const char* what = "tensor");
// Sample shape with a batch dimension in front: (B, s...).
Shape batched(const Shape& sample, int batch);

// ===========================================================================
// Random numbers: small, seedable, state fits in a checkpoint.
// ===========================================================================
struct Rng {
    uint64_t state = 0x853c49e6748fea9bULL;
    explicit Rng(uint64_t seed = 0) { seed_with(seed); }
    void seed_with(uint64_t seed);
    uint32_t next_u32();
    float uniform();                   // [0, 1)
    float uniform(float lo, float hi);  // [lo, hi)
    float normal();                     // N(0, 1)
    uint32_t below(uint32_t n);         // [0, n), unbiased
};

// ===========================================================================
// Layers: one tagged struct, dispatched by `kind` in forward/backward (the
// kinds with large kernels through Layer::code, which their constructors set).
// ===========================================================================
enum class Act : uint8_t { None, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax };
// How build() draws the initial weights of Dense and Conv2D (Layer::init).
// Torch, the default, is PyTorch's: weight and bias ~ U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)). The others are the schemes Keras names, with zero bias:
//   GlorotUniform  U(-a, a), a = sqrt(6 / (fan_in + fan_out))  (Keras's default)
//   GlorotNormal   N(0, 2 / (fan_in + fan_out))
//   HeUniform      U(-a, a), a = sqrt(6 / fan_in)
//   HeNormal       N(0, 2 / fan_in)
// Fans as torch.nn.init counts them: Dense fan_in = in, fan_out = units;
// Conv2D fan_in = in/groups * kh * kw, fan_out = out * kh * kw. The normal
// draws are not truncated (torch.nn.init's xavier_normal_ and
// kaiming_normal_; Keras cuts its draws at 2 standard deviations).
enum class Init : uint8_t { Torch, GlorotUniform, GlorotNormal, HeUniform, HeNormal };
enum class LayerKind : uint8_t {
    Dense, Activation, Dropout, Flatten, Custom,
    Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, BatchNorm,
    Recurrent, Embedding
};
// The cell of a recurrent layer, with PyTorch's equations and gate order:
//   RnnTanh/RnnReLU  h' = act(W_ih x + b_ih + W_hh h + b_hh)
//   LSTM (i, f, g, o) i = s(.), f = s(.), g = tanh(.), o = s(.) of W_i* x + b_i* + W_h* h + b_h*;
//                     c' = f c + i g,  h' = o tanh(c')
//   GRU (r, z, n)     r = s(W_ir x + b_ir + W_hr h + b_hr), z likewise,
//                     n = tanh(W_in x + b_in + r (W_hn h + b_hn)),  h' = (1 - z) n + z h
enum class RnnCell : uint8_t { RnnTanh, RnnReLU, LSTM, GRU };
enum class Mode : uint8_t { Eval, Train };

// Rows x columns of a window, stride, padding or dilation; one number means
// both, as in PyTorch (`5` is 5x5, `{5, 3}` is 5 rows by 3 columns).
struct Size2 {
    int h = 0, w = 0;
    Size2(int both = 0) : h(both), w(both) {}
    Size2(int rows, int cols) : h(rows), w(cols) {}
};
// Conv2D padding: explicit rows/columns of zeros on each side, or Keras's
// modes. Same pads dilation * (kernel - 1) / 2 on each side (output size
// ceil(input / stride)); it needs dilation * (kernel - 1) even. Valid is 0.
enum class PadMode : uint8_t { Explicit, Same, Valid };
struct Padding {
    int h = 0, w = 0;
    PadMode mode = PadMode::Explicit;
    Padding(int both = 0) : h(both), w(both) {}
    Padding(int rows, int cols) : h(rows), w(cols) {}
    Padding(PadMode m) : mode(m) {}
};
constexpr PadMode Same = PadMode::Same;
constexpr PadMode Valid = PadMode::Valid;

constexpr int kMaxParams = 16;  // a recurrent layer: 4 per stacked layer
struct Layer;

// A parameter as an optimizer sees it.
struct Param {
    const char* name = "";  // e.g. "weight"; the owning layer names the rest
    float* value = nullptr;
    float* grad = nullptr;
    size_t size = 0;
    bool trainable = true;
    // A tape leaf's flag (Var::set_requires_grad): while it reads false the
    // optimizer leaves the parameter alone, as PyTorch skips a frozen one.
    const bool* requires_grad = nullptr;
};

// A user-defined layer kind. Fill the functions you need; forward and
// backward are required. Parameters are declared in build through
// declare_param and live in Layer::params like Dense's.
struct CustomLayerOps {
    const char* type_name = "Custom";
    // Output sample shape for input sample shape `in`; return an error for
    // shapes the layer cannot take.
    Status (*output_shape)(const Layer& self, const Shape& in, Shape* out) = nullptr;
    // Declare parameters with declare_param (called once, from build).
    Status (*declare)(Layer& self, const Shape& in) = nullptr;
    // Fill declared parameters with their initial values.
    void (*init)(Layer& self, Rng& rng) = nullptr;
    // y = f(x); x is (B, in...), y is (B, out...).
    void (*forward)(Layer& self, Tensor y, const Tensor& x, Mode mode) = nullptr;
    // dx = dL/dx (write; dx.data may be null when not needed),
    // parameter grads += dL/dparam.
    void (*backward)(Layer& self, Tensor dx, const Tensor& dy, const Tensor& x,
                     const Tensor& y) = nullptr;
};

struct LayerCode;  // nn_impl.cpp: a kind's forward and backward (Layer::code)

struct Layer {
    LayerKind kind = LayerKind::Activation;
    char name[32] = {0};  // "dense", "dense_1", ... when empty at add()
    bool user_named = false;  // the name was given, not made by add(): files use it

    // Activation (its own layer, or fused into Dense's output).
    Act act = Act::None;
    float leaky_slope = 0.01f;

    // Dense: y = act(x W^T + b), weight [units, in_features] as in PyTorch.
    int in_features = 0;  // 0: taken from the previous layer at add()
    int units = 0;
    bool use_bias = true;
    float l1 = 0.0f, l2 = 0.0f;  // weight regularization added to the loss
    Init init = Init::Torch;     // Dense and Conv2D: the initial weights (set_init)

    // Dropout (inverted): zero with probability `rate`, scale by 1/(1-rate).
    float rate = 0.0f;

    // A Dense layer on (T, in) samples applies to each of the T steps
    // (time-distributed), giving (T, units).
    // Conv2D: y = x (*) W + b over (C, H, W) samples, weight
    // [out_channels, in_channels / groups, kh, kw] as in PyTorch.
    // MaxPool2D / AvgPool2D use kernel, stride and padding too.
    int in_channels = 0;  // also BatchNorm's num_features; 0: from the input
    int out_channels = 0;
    Size2 kernel, stride{1}, dilation{1};
    Padding padding;
    int groups = 1;
    bool count_include_pad = true;  // AvgPool2D's divisor (PyTorch's default)

    // BatchNorm (1d on (C) or (C, L) samples, 2d on (C, H, W)): PyTorch's
    // semantics; running_mean and running_var are non-trainable parameters.
    float eps = 1e-5f, momentum = 0.1f;
    bool affine = true;
    int bn_dims = 1;  // 1 or 2: which input shapes the layer accepts

    // Recurrent (RNN, LSTM, GRU): batch-first sequences, samples (T, input)
    // -> (T, hidden) when return_sequences, else the last state (hidden).
    // Parameters per stacked layer k, PyTorch's names and shapes:
    // weight_ih_lk [G*hidden, in], weight_hh_lk [G*hidden, hidden],
    // bias_ih_lk, bias_hh_lk [G*hidden], G = 1, 4 (LSTM) or 3 (GRU).
    RnnCell cell = RnnCell::LSTM;
    int hidden_size = 0;
    int num_layers = 1;
    bool return_sequences = true;
    // Truncated backpropagation through time: the gradient crosses at most
    // into the window it is in (steps [k w, (k + 1) w)); 0: the whole sequence.
    int bptt_window = 0;
    // Set before forward (and keep for backward), or leave null:
    //   lengths  per sample of the batch, 1..T: steps at or after a sample's
    //            length leave its state unchanged, output zeros and take no
    //            gradient (PyTorch's packed sequences). Null: all T.
    //   h0, c0   initial states, (num_layers, B, hidden) as PyTorch. Null: 0.
    const int32_t* lengths = nullptr;
    const float* h0 = nullptr;
    const float* c0 = nullptr;
    // Final states after forward, (num_layers, B, hidden), carved by build:
    // hand them back as h0/c0 to carry the state on (stateful generation).
    float* hn = nullptr;
    float* cn = nullptr;

    // Embedding: token ids (stored as floats, samples (T)) -> (T, dim).
    int num_embeddings = 0;
    int embedding_dim = 0;

    // The forward and backward code of the kinds with large kernels (Conv2D,
    // the pooling layers, BatchNorm, the recurrent layers, Embedding), set by
    // their constructors: a program links the kernels of the kinds it
    // constructs and no others, so a static MLP program carries no
    // convolution code (BENCHMARKS.md, issue 8). Null for the other kinds.
    const LayerCode* code = nullptr;

    // Custom
    const CustomLayerOps* custom = nullptr;
    void* user = nullptr;  // whatever the custom layer needs

    // Parameters: Dense has weight (params[0]) and bias (params[1]).
    int n_params = 0;
    char param_name[kMaxParams][16] = {{0}};
    Shape param_shape[kMaxParams];
    Tensor params[kMaxParams];
    Tensor grads[kMaxParams];   // null for buffers
    bool buffer[kMaxParams] = {false};  // state, not trained (running statistics)
    bool frozen = false;  // excluded from optimizer steps

    // Set by Model::compile when a ReLU layer is followed by a MaxPool2D:
    // the pooling applies the ReLU to its (smaller) output and masks its
    // gradient (relu(max x) = max relu(x), exactly, NaN included), and the
    // ReLU layer passes its input through. Its output buffer is then a view
    // of its input's, holding values before the ReLU.
    bool relu_after_pool = false;  // MaxPool2D
    bool passthrough = false;      // the ReLU layer

    // Set by build().
    Shape in_shape, out_shape;  // per sample
    int max_batch = 0;
    bool built = false;
    // Scratch carved by build(): gradient before the activation (Dense),
    // logits kept for a fused softmax cross-entropy, the dropout mask.
    // Conv2D: conv2d_scratch_floats (im2col and padded planes) per GEMM
    // slot. BatchNorm: the batch's mean and 1/std per channel. MaxPool2D:
    // the argmax of every output (indices).
    float* scratch = nullptr;
    float* logits = nullptr;
    float* mask = nullptr;
    int32_t* indices = nullptr;
    Mode last_mode = Mode::Eval;  // the mode of the last forward (dropout)
    // GEMM packing scratch: pack_slots buffers of pack_stride floats, one
    // per thread (pack_stride 0 means gemm_pack_floats(), enough for any
    // shape). build() carves num_threads() full-size slots when pack is
    // null; Model::compile hands every layer the same slots, sized for the
    // model's largest layer. To share one layer's scratch with another
    // before building it, copy pack and pack_slots.
    float* pack = nullptr;
    int pack_slots = 1;
    size_t pack_stride = 0;
    bool pack_shared = false;  // the model supplies `pack` (also in its dry run)
    Rng rng;  // dropout draws
    uint64_t tape_graph = 0;  // the tape graph that last applied it (nn::apply)

    // model.add(nn::Dense(128, nn::Act::ReLU).set_init(nn::Init::HeUniform));
    Layer& set_init(Init i) { init = i; return *this; }
    Tensor& weight() { return params[0]; }
    Tensor& bias() { return params[1]; }
    Tensor& weight_grad() { return grads[0]; }
    Tensor& bias_grad() { return grads[1]; }
    const char* type_name() const;
    size_t param_count() const;
};

// Constructors, named like their Keras/PyTorch counterparts.
Layer Dense(int in_features, int units, Act act = Act::None, bool use_bias = true);
Layer Dense(int units, Act act = Act::None);  // in_features from the previous layer
Layer ReLU();
Layer LeakyReLU(float negative_slope = 0.01f);
Layer Sigmoid();
Layer Tanh();
Layer Softmax();
Layer Linear();  // identity activation
Layer Dropout(float rate);
Layer Flatten();
Layer Custom(const CustomLayerOps* ops, void* user = nullptr);
// PyTorch's argument order. in_channels 0 takes the input's channel count.
Layer Conv2D(int in_channels, int out_channels, Size2 kernel, Size2 stride = 1, Padding padding = 0,
             Size2 dilation = 1, int groups = 1, bool bias = true);
// stride 0 means the window size (PyTorch's default).
Layer MaxPool2D(Size2 kernel, Size2 stride = 0, Size2 padding = 0);
Layer AvgPool2D(Size2 kernel, Size2 stride = 0, Size2 padding = 0, bool count_include_pad = true);
Layer GlobalAvgPool();  // (C, H, W) -> (C): the mean of each plane
// Recurrent layers, PyTorch's arguments (batch_first); input_size 0 takes the
// input's. Weights ~ U(-1/sqrt(hidden), 1/sqrt(hidden)) as PyTorch. At most
// 4 stacked layers.
Layer RNN(int input_size, int hidden_size, int num_layers = 1, bool return_sequences = true,
          Act nonlinearity = Act::Tanh);
Layer LSTM(int input_size, int hidden_size, int num_layers = 1, bool return_sequences = true);
Layer GRU(int input_size, int hidden_size, int num_layers = 1, bool return_sequences = true);
// weight [num_embeddings, embedding_dim] ~ N(0, 1) as PyTorch. An id outside
// the vocabulary is an error naming the layer, the sample and the step.
Layer Embedding(int num_embeddings, int embedding_dim);
Layer BatchNorm1d(int num_features = 0, float eps = 1e-5f, float momentum = 0.1f, bool affine = true);
Layer BatchNorm2d(int num_features = 0, float eps = 1e-5f, float momentum = 0.1f, bool affine = true);
const char* act_name(Act a);
const char* init_name(Init i);  // "torch", "glorot_uniform", ... (Keras's names)
// The Init named `name` (init_name's spelling); an unknown name is an error
// that lists the known ones.
Status init_from_name(const char* name, Init* out);

// Custom layers call this from their `declare` hook.
Status declare_param(Layer& self, const char* name, const Shape& shape);

// Size a layer for input samples of shape `in` and batches up to max_batch,
// carving its parameters, gradients and scratch from the arena. Parameters
// are initialised as PyTorch does (Dense: U(-1/sqrt(in), 1/sqrt(in))).
Status build(Layer& L, const Shape& in, int max_batch, Arena& arena, uint64_t seed = 0);
Status output_shape(const Layer& L, const Shape& in, Shape* out);

// y = layer(x). x is (B, in...), y is (B, out...) and may not alias x.
// B must not exceed the max_batch the layer was built for.
Status forward(Layer& L, Tensor y, const Tensor& x, Mode mode);
// Given dy = dL/dy, writes dx = dL/dx (skipped when dx.data is null) and adds
// dL/dparam into the layer's grads. x and y are the forward pass's tensors.
Status backward(Layer& L, Tensor dx, const Tensor& dy, const Tensor& x, const Tensor& y);
// As backward, but dy is the gradient with respect to the Dense layer's
// pre-activation (used by the fused softmax cross-entropy).
Status backward_preact(Layer& L, Tensor dx, const Tensor& dz, const Tensor& x);
void zero_grad(Layer& L);
// Parameters of a layer as optimizer entries; returns how many were written.
int layer_params(Layer& L, Param* out, int cap);
// L1/L2 penalty of the layer's weights (added to the loss) and its gradient
// added into the weight gradient.
float regularization_loss(const Layer& L);
void regularization_backward(Layer& L);

// ===========================================================================
// Losses. Each returns the mean loss over the batch and writes dL/dpred.
// ===========================================================================
enum class LossKind : uint8_t {
    MSE,                      // mean over all elements of (p - t)^2
    MAE,                      // mean of |p - t|
    Huber,                    // PyTorch HuberLoss(delta)
    BinaryCrossEntropy,       // on probabilities, clamped as PyTorch (log >= -100)
    BinaryCrossEntropyLogits, // stable: max(z,0) - z t + log(1 + e^-|z|)
    CrossEntropy,             // on logits: stable log-softmax (PyTorch)
    CategoricalCrossEntropy,  // on probabilities (Keras); fused with a
                              // preceding softmax by the model
};
struct Loss {
    LossKind kind = LossKind::CrossEntropy;
    float delta = 1.0f;  // Huber
};
Loss MSE();
Loss MAE();
Loss Huber(float delta = 1.0f);
Loss BinaryCrossEntropy();
Loss BinaryCrossEntropyWithLogits();
Loss CrossEntropy();
Loss CategoricalCrossEntropy();
const char* loss_name(LossKind k);

// Targets for a batch: integer class labels, or dense values shaped like
// the prediction (one-hot rows, regression targets, binary labels).
struct Target {
    const int32_t* labels = nullptr;
    const float* values = nullptr;
};
// pred is (B, C). dpred (may have null data) receives dL/dpred.
Status loss_forward_backward(const Loss& loss, Tensor dpred, const Tensor& pred,
                             const Target& t, float* loss_out);
// Softmax then cross-entropy on the logits z, as one stable step: writes the
// probabilities into p (may be null) and dL/dz = (p - onehot(t)) / B into dz.
Status softmax_cross_entropy(Tensor dz, float* p, const Tensor& z, const Target& t,
                             float* loss_out);

// ===========================================================================
// Optimizers: PyTorch's update rules and defaults.
// ===========================================================================
enum class OptKind : uint8_t { SGD, Adagrad, RMSprop, Adam, AdamW };
enum class Schedule : uint8_t { Constant, Step, Exponential, Cosine };

struct OptimConfig {
    OptKind kind = OptKind::Adam;
    float lr = 1e-3f;
    // SGD
    float momentum = 0.0f, dampening = 0.0f;
    bool nesterov = false;
    // all: L2 penalty added to the gradient (AdamW: decoupled decay)
    float weight_decay = 0.0f;
    // RMSprop
    float alpha = 0.99f;
    bool centered = false;
    // Adam, AdamW
    float beta1 = 0.9f, beta2 = 0.999f;
    bool amsgrad = false;
    float eps = 1e-8f;
    // Adagrad
    float lr_decay = 0.0f;
    float initial_accumulator_value = 0.0f;
    // Learning-rate decay per step, as nn_mini and Keras: lr / (1 + decay * t)
    float decay = 0.0f;
    // Per-epoch schedules (PyTorch's StepLR, ExponentialLR, CosineAnnealingLR)
    Schedule schedule = Schedule::Constant;
    int step_size = 1;       // Step: multiply by gamma every step_size epochs
    float gamma = 0.1f;      // Step, Exponential
    int t_max = 1;           // Cosine: epochs of one half period
    float eta_min = 0.0f;    // Cosine: floor
    // Clip the global L2 norm of all gradients to this (0: off)
    float clip_norm = 0.0f;
};
OptimConfig SGD(float lr = 0.01f, float momentum = 0.0f, bool nesterov = false,
                float weight_decay = 0.0f, float dampening = 0.0f);
OptimConfig Adagrad(float lr = 0.01f, float lr_decay = 0.0f, float weight_decay = 0.0f,
                    float initial_accumulator_value = 0.0f, float eps = 1e-10f);
OptimConfig RMSprop(float lr = 0.01f, float alpha = 0.99f, float eps = 1e-8f,
                    float weight_decay = 0.0f, float momentum = 0.0f, bool centered = false);
OptimConfig Adam(float lr = 1e-3f, float beta1 = 0.9f, float beta2 = 0.999f,
                 float eps = 1e-8f, float weight_decay = 0.0f, bool amsgrad = false);
OptimConfig AdamW(float lr = 1e-3f, float beta1 = 0.9f, float beta2 = 0.999f,
                  float eps = 1e-8f, float weight_decay = 1e-2f, bool amsgrad = false);
const char* optimizer_name(OptKind k);
// Rejects inconsistent settings with a message naming the field and value.
Status validate(const OptimConfig& c);

struct Optimizer {
    OptimConfig cfg;
    Param* params = nullptr;   // carved from the arena
    float** state = nullptr;   // per param: kStateSlots buffers (or null)
    int64_t* param_steps = nullptr;  // per param: steps it took (PyTorch's state["step"])
    int n_params = 0;
    int64_t steps = 0;         // steps taken
    int epoch = 0;             // epochs ended (drives the schedules)
    float last_grad_norm = 0;  // before clipping, when clip_norm > 0

    static constexpr int kStateSlots = 3;
    // Copies the parameter list and carves the optimizer state from arena.
    Status init(const OptimConfig& c, const Param* ps, int n, Arena& arena);
    float current_lr() const;  // the rate the next step will use
    void step();
    void zero_grad();
    void end_epoch() { ++epoch; }
};

// ===========================================================================
// Data: compact storage, converted per batch.
// ===========================================================================
struct Dataset {
    // Features: exactly one of u8 / f32 is non-empty; n samples of `sample`.
    std::vector<uint8_t> u8;
    std::vector<float> f32;
    Shape sample;
    size_t n = 0;
    // Per-batch conversion of feature f: (raw * scale - mean[f]) * inv_std[f]
    // (mean/inv_std empty: no normalisation).
    float scale = 1.0f;
    std::vector<float> mean, inv_std;
    // Targets: class labels (num_classes > 0), or target_size floats each.
    std::vector<int32_t> labels;
    int num_classes = 0;
    std::vector<float> targets;
    int target_size = 0;
    bool one_hot = false;  // gather() also writes labels as one-hot rows

    size_t sample_size() const { return sample.numel(); }
    int target_width() const;  // columns a prediction must have
};

// IDX files (MNIST's format), raw or gzipped (NN_HAVE_ZLIB).
struct IdxArray {
    std::vector<uint8_t> bytes;  // data section, as stored (big-endian items)
    int type = 0;                // 0x08 ubyte, 0x09 sbyte, 0x0B short, ...
    int ndim = 0;
    uint32_t dims[8] = {0};
    size_t count() const;
};
Status read_idx(const char* path, IdxArray* out);
// An images file and a labels file into a classification data set.
Status load_idx(const char* images_path, const char* labels_path, Dataset* out);
// dir/train-images-idx3-ubyte[.gz] etc.; samples shaped (1, 28, 28).
Status load_fashion_mnist(const char* dir, Dataset* train, Dataset* test);

// CIFAR-10, binary version: records of 1 label byte and 3072 pixel bytes
// (red, green, blue planes of 32x32, row-major). Samples are (3, 32, 32)
// uint8. load_cifar10 reads dir/data_batch_1..5.bin and dir/test_batch.bin;
// load_cifar10_files any list of such files into one data set. A file whose
// size is not a whole number of records, or a label over 9, is an error
// naming the file and the numbers; *out is untouched on any error.
Status load_cifar10(const char* dir, Dataset* train, Dataset* test);
Status load_cifar10_files(const char* const* paths, int count, Dataset* out);
// Per-channel mean/std over all pixels of `from` (samples (C, H, W)), stored
// per feature in `to` (to.mean, to.inv_std), in the units after `scale`.
void fit_channel_normalization(Dataset& to, const Dataset& from);

struct CsvOptions {
    bool header = false;      // first row names the columns
    int label_column = -1;    // -1: last column; others are features
    bool classification = true;  // integer labels (else a regression target)
    char delimiter = ',';
};
Status load_csv(const char* path, const CsvOptions& opt, Dataset* out);

// Built-in synthetic sets, the embedded default when no file is given.
void make_spirals(Dataset* out, int points_per_class, int classes, float noise, uint64_t seed);
void make_circles(Dataset* out, int n, float noise, float factor, uint64_t seed);

// Per-feature mean/std from `from` (over its current scaling), stored in `to`.
void fit_normalization(Dataset& to, const Dataset& from);
// Move the last `fraction` of `d` into `val` (copies; call once at setup).
Status split(Dataset& d, float fraction, Dataset* val);

// Converts samples idx[0..count) into x (count, sample...) and writes the
// targets: class labels into y_labels, and into y_values one-hot rows of
// num_classes (when Dataset::one_hot) or the regression targets. Null
// pointers are skipped. `next_idx[0..next_count)`, when given, are the rows
// of the batch after this one: gather asks the caches for them as it goes,
// so that they arrive while the training step runs.
void gather(const Dataset& d, const uint32_t* idx, int count, float* x,
            int32_t* y_labels, float* y_values, const uint32_t* next_idx = nullptr,
            int next_count = 0);

// Shuffled mini-batches of sample indices [first, first + count).
struct BatchIterator {
    std::vector<uint32_t> order;
    size_t pos = 0;
    int batch = 0;
    bool shuffle = true, drop_last = false;
    Rng rng;
    Status init(size_t first, size_t count, int batch_size, bool shuffle, uint64_t seed,
                bool drop_last = false);
    void start_epoch();  // reshuffles
    // Next batch's indices; returns its size (0 at the end of the epoch).
    int next(const uint32_t** idx);
    // The batch that next() will return, without taking it.
    int peek(const uint32_t** idx) const;
    size_t batches_per_epoch() const;
};

// ===========================================================================
// Metrics
// ===========================================================================
enum class Metric : uint8_t {
    None,
    Accuracy,             // categorical or binary, chosen from the loss
    CategoricalAccuracy,  // argmax(pred) == label
    BinaryAccuracy,       // (pred > threshold) == (target > 0.5)
    RegressionAccuracy,   // |pred - t| < precision (nn_mini: std(t) / 250)
};
const char* metric_name(Metric m);

// ===========================================================================
// Model: Keras-like sequential model over the same layers.
// ===========================================================================
struct CompileOptions {
    Loss loss;
    OptimConfig optimizer;
    Metric metric = Metric::Accuracy;
    int max_batch = 32;
    uint64_t seed = 42;          // weight initialisation
    void* arena_buffer = nullptr;  // optional memory you own
    size_t arena_bytes = 0;
    float binary_threshold = 0.5f;
    float regression_precision = 0.0f;  // 0: std(targets)/250 at fit
};

struct FitOptions {
    int epochs = 1;
    int batch_size = 32;
    bool shuffle = true;
    uint64_t seed = 0;
    float validation_split = 0.0f;         // last fraction of the training set
    const Dataset* validation = nullptr;  // or an explicit set
    int64_t steps_per_epoch = 0;           // > 0: end each epoch after that many batches
    int verbose = 1;                       // 0 silent, 1 progress bar, 2 line/epoch
    FILE* out = nullptr;                   // progress stream (stdout)
    // Called after every training step (Keras's on_train_batch_end).
    void (*on_batch_end)(void* user, int epoch, int64_t step, float loss) = nullptr;
    // Checkpoints (safetensors, written atomically): after every
    // checkpoint_every epochs, the model, the optimizer's state, the epochs
    // done and every random-number state (shuffling, dropout) go to
    // checkpoint_path. resume_from continues a run from such a file: the
    // epochs it holds count toward `epochs`, and the result is bit-identical
    // to the run that was never interrupted (same data and options).
    const char* checkpoint_path = nullptr;
    int checkpoint_every = 1;
    const char* resume_from = nullptr;
    void* user = nullptr;
};

struct EpochStats {
    int epoch = 0;
    double loss = 0, metric = 0;
    double val_loss = 0, val_metric = 0;
    bool has_val = false;
    double seconds = 0;
    int64_t steps = 0;  // training steps the epoch took
    double lr = 0;
};
struct History {
    std::vector<EpochStats> epochs;
    Status write_csv(const char* path) const;
};

struct EvalResult {
    double loss = 0, metric = 0;
    size_t n = 0;
};

struct Model {
    std::vector<Layer> layers;
    Shape input;              // per-sample input shape
    Status error;             // first error from add() (sticky)
    bool compiled = false;
    CompileOptions options;
    Optimizer optimizer;
    Arena arena;
    History history;
    size_t arena_needed = 0;  // bytes compile carved
    Mode mode = Mode::Eval;

    // Model's working buffers (carved at compile)
    Tensor x_buf;                    // (max_batch, input...)
    std::vector<Tensor> acts;        // acts[i] = output of layer i
    std::vector<Tensor> dacts;       // dacts[i] = dL/d(input of layer i+1)
    float* y_values = nullptr;
    int32_t* y_labels = nullptr;
    uint32_t* idx_buf = nullptr;     // sample indices for in-order passes
    bool fused_softmax_ce = false;
    int64_t step_count = 0;

    Model() = default;
    // nn_mini's template: "basic" with sizes {784, 128, 128, 10} makes
    // Dense+ReLU hidden layers, a Softmax output, categorical cross-entropy
    // and Adam.
    Model(const char* template_name, std::initializer_list<int> sizes);

    void set_input(const Shape& sample) { input = sample; }
    Status add(Layer layer);
    Layer& layer(int i) { return layers[i]; }
    Layer* find(const char* name);
    int size() const { return (int)layers.size(); }

    Status compile(const CompileOptions& opt);
    Status compile() { return compile(options); }  // the template's settings
    // How many arena bytes compile(opt) would need; no allocation.
    Status measure(const CompileOptions& opt, size_t* bytes);
    Status fit(const Dataset& train, const FitOptions& opt);
    Status evaluate(const Dataset& d, EvalResult* out, int batch_size = 0);
    // x is (N, input...) with any N; out must hold N * output size floats.
    Status predict(const Tensor& x, Tensor out);
    // Per-class counts: out[true * C + predicted], C = number of classes.
    Status confusion_matrix(const Dataset& d, int64_t* out);
    // One optimisation step on a batch already in the model's buffers
    // (x_buf rows, targets); what fit runs per batch. Returns the loss.
    Status train_step(int batch, const Target& t, float* loss_out);
    void train() { mode = Mode::Train; }
    void eval() { mode = Mode::Eval; }
    void summary(FILE* out = nullptr) const;
    Shape output_shape() const;
    int n_params(Param* out, int cap);  // all parameters, in layer order
    size_t param_count(bool trainable_only) const;
};

// ===========================================================================
// Files: safetensors, the PyTorch ecosystem's pickle-free weight format.
// ===========================================================================
// A file is: 8 bytes little-endian N, N bytes of UTF-8 JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
//  "__metadata__": {"key": "value"}}, padded with spaces to a multiple of
// 8, then the data section, every byte of it covered by exactly one tensor.
// The reader checks all of that and rejects anything else with an error
// that names the file, the tensor and the numbers (tests/test_files.cpp has
// one test per rule).
enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

struct StEntry {  // one tensor of a file
    std::string name;
    DType dtype = DType::F32;
    int ndim = 0;
    uint64_t shape[8] = {0};
    uint64_t begin = 0, end = 0;  // byte range in the data section
    size_t numel() const;
};

struct SafeTensors {
    std::vector<uint8_t> bytes;  // the whole file
    size_t data_start = 0;       // 8 + header length
    std::vector<StEntry> entries;  // in the header's order
    std::vector<std::pair<std::string, std::string>> metadata;
    const StEntry* find(const char* name) const;
    const char* meta(const char* key) const;  // null when absent
    // The entry's values as float32: F32 as stored; F16, BF16, F64 and I64
    // converted. count must equal the entry's element count.
    Status to_f32(const StEntry& e, float* out, size_t count) const;
};
// Validates and indexes a file held in memory (copied); `what` names it in errors.
Status safetensors_parse(const uint8_t* data, size_t size, const char* what, SafeTensors* out);
Status safetensors_load(const char* path, SafeTensors* out);

struct StWriter {
    struct Item {
        std::string name;
        DType dtype = DType::F32;
        std::vector<uint64_t> shape;
        const void* data = nullptr;  // must stay valid until write()
        size_t bytes = 0;
    };
    std::vector<Item> items;
    std::vector<std::pair<std::string, std::string>> metadata;
    void add_f32(const char* name, const Shape& s, const float* data);
    void add(const char* name, DType t, std::initializer_list<uint64_t> shape, const void* data);
    void add_meta(const char* key, const char* value);
    // Writes atomically: path.tmp, flushed and synced, renamed over path. On
    // any error (a duplicate name, a full disk) path is left as it was and
    // the message names the file.
    Status write(const char* path) const;
};
// Test hook: the next writes fail once this many bytes have gone to disk,
// as a full disk would (-1: off). Only for testing the atomic write.
void set_write_fault_after(long long bytes);

// A model's file: every parameter and buffer under PyTorch's state_dict
// names ("0.weight", "3.bias", or "<name>.weight" for a layer given a name;
// BatchNorm adds "num_batches_tracked" as I64) and the architecture in
// __metadata__ ("nn.architecture"), so that load_model rebuilds it from the
// file alone. The model must be compiled.
Status save(Model& m, const char* path);
// Loads a file's tensors into a compiled model with the same names and
// shapes; every mismatch (missing, unexpected, wrong shape) is reported by
// tensor name, and on any error the model is left unchanged.
Status load_weights(Model& m, const char* path);
// Rebuilds the layers from the file's architecture, compiles with `opt`,
// then loads the weights.
Status load_model(const char* path, const CompileOptions& opt, Model* out);
// A checkpoint: the model file plus the optimizer's state and step counts
// ("optimizer.<tensor>.state0".., "optimizer.<tensor>.step") and the
// model's random-number states. load_checkpoint restores all of it into a
// compiled model of the same architecture and optimizer, or changes nothing.
// FitOptions::checkpoint_path / resume_from also keep fit's shuffling state.
Status save_checkpoint(Model& m, const char* path);
Status load_checkpoint(Model& m, const char* path);

// ===========================================================================
// Gradient checking: central differences against the analytic backward.
// ===========================================================================
struct GradCheckResult {
    double max_abs_err = 0, max_rel_err = 0;
    int checked = 0;
    const char* worst = "";  // "input", or the parameter's name
    bool passed = false;
};
// Checks dL/dx and dL/dparam of a built layer on input x for the loss
// L = sum(y * r) with a fixed random r. Compares every element (or the first
// max_checks per tensor) with (L(v+h) - L(v-h)) / 2h. `mode` is the mode of
// every forward pass (Train checks BatchNorm with batch statistics).
Status gradient_check(Layer& L, const Tensor& x, Arena& scratch, GradCheckResult* out,
                      float h = 1e-2f, double tol = 2e-2, int max_checks = 64, Mode mode = Mode::Eval);

// ===========================================================================
// Tape: a dynamic autograd graph (the NNKit and Neograd style).
// ===========================================================================
// Operations run as they are called and record themselves on a tape; one
// backward call walks the tape in reverse and accumulates gradients. Every
// node, value and gradient lives in the tape's arena, so the whole graph is
// freed at once by resetting a mark (Neograd's "auto-removal", in O(1)):
//
//     nn::Tape tape;
//     tape.reserve(1 << 20);                        // the one allocation
//     nn::Var W = tape.param(nn::make_shape({2, 3}), w0);   // persistent leaves
//     nn::Var b = tape.param(nn::make_shape({3}), b0);
//     nn::Param p = nn::as_param(W, "W");          // Adam on W only
//     nn::Optimizer adam; adam.init(nn::Adam(0.01f), &p, 1, tape.arena);
//     const nn::TapeMark step = tape.mark();        // what each step frees
//     for (;;) {
//         nn::Var x = tape.constant(nn::make_shape({1, 2}), x0);
//         nn::Var y = nn::relu(nn::matmul(x, W) + b);   // b broadcasts over rows
//         nn::Var loss = nn::sum(nn::square(y - target));
//         adam.zero_grad();
//         tape.backward(loss);                      // W.grad() += dloss/dW
//         adam.step();
//         tape.reset(step);                         // the graph is gone
//     }
//
// Rules:
// - A Var is a handle (one pointer) to a value, a gradient and a flag saying
//   whether a gradient is wanted. Leaves are made by the tape; every other
//   Var by an operation. Handles made after a mark die at reset(mark).
// - No exceptions: the first failing operation (a shape mismatch, a full
//   arena) records its message in tape.error and returns an empty Var
//   (ok() false); operations on empty Vars return empty Vars, and backward
//   reports the error. Check tape.error, or backward's Status, once a step.
// - A scalar is a (1,) tensor. backward(root) needs a scalar root, or an
//   upstream gradient shaped like the root.
// - Gradients accumulate (+=) into leaves across backward calls, as in
//   PyTorch; zero them yourself (Optimizer::zero_grad or Var::zero_grad).
//   The gradient of any Var reached by the last backward is readable too.
// - Binary operations broadcast as NumPy does (shapes aligned on the right,
//   a dimension of 1 stretches); each gradient is summed back to its
//   operand's shape.
// - Operations take negative axes (-1 is the last).
struct Tape;
struct VarData;
struct TapeNode;

struct Var {
    VarData* p = nullptr;

    bool ok() const { return p != nullptr; }
    const Tensor& value() const;
    const Tensor& grad() const;  // null data until a backward reaches it
    const Shape& shape() const;
    size_t numel() const;
    float item() const;  // value[0], for a scalar
    bool requires_grad() const;
    // Freeze (false) or unfreeze (true) a leaf: operations that use a frozen
    // leaf record no gradient for it, and an optimizer skips it. On a
    // non-leaf, or unfreezing a constant, it records an error on the tape.
    void set_requires_grad(bool on) const;
    void zero_grad() const;
    const char* name() const;  // the operation that made it, or the leaf's name
    Tape* tape() const;
};

// Where to reset a tape to; see Tape::mark.
struct TapeMark {
    size_t arena_used = 0;
    TapeNode* last = nullptr;
    size_t nodes = 0;
    float* pack = nullptr;
    size_t pack_floats = 0;
};

// A user-defined operation. forward and backward are required.
struct CustomOp {
    const char* name = "custom";
    // Output shape from the input shapes; an error for shapes it cannot take.
    // Null: the output has the first input's shape.
    Status (*output_shape)(const Shape* in, int n, void* user, Shape* out) = nullptr;
    // y = f(in[0], ..., in[n-1]).
    void (*forward)(Tensor y, const Tensor* in, int n, void* user) = nullptr;
    // dx[i] += dL/d(in[i]) given dy = dL/dy; dx[i].data is null when input i
    // needs no gradient. in and y are the forward's tensors.
    void (*backward)(Tensor* dx, const Tensor& dy, const Tensor* in, int n, const Tensor& y,
                     void* user) = nullptr;
};

struct Tape {
    Arena arena;           // leaves first, then each step's graph
    Status error;          // the first failed operation (sticky until reset)
    Mode mode = Mode::Train;  // what apply() runs layers in
    bool grad_enabled = true;  // false inside a NoGrad scope: nothing recorded
    TapeNode* last = nullptr;  // newest node; each links to the one before
    size_t nodes = 0;          // nodes on the tape now
    uint64_t graph = 0;        // renewed by reset: tells graphs apart
    uint64_t pass = 0;         // backward passes run
    // GEMM packing scratch of the current graph, carved when an operation
    // first needs more (pack_floats per thread slot, pack_slots slots).
    float* pack = nullptr;
    size_t pack_floats = 0;
    int pack_slots = 1;

    Tape() = default;
    Tape(const Tape&) = delete;
    Tape& operator=(const Tape&) = delete;

    // Allocate the arena once, or carve memory you own.
    Status reserve(size_t bytes);
    Status wrap(void* buffer, size_t bytes);

    // Leaves. `data` (may be null: zeros) is copied in. param() wants a
    // gradient; variable() lets you choose; constant() never has one.
    Var param(const Shape& s, const float* data = nullptr, const char* name = "param");
    Var variable(const Shape& s, const float* data, bool requires_grad, const char* name = "var");
    Var constant(const Shape& s, const float* data, const char* name = "const");
    // A leaf over memory that lives elsewhere, not copied: a layer's weight
    // and its gradient buffer (grad may be null: no gradient wanted).
    Var wrap_tensor(const Tensor& value, const Tensor& grad, const char* name = "tensor");
    // A built layer's parameter i as a leaf (Dense: 0 weight, 1 bias): the
    // tape's gradients for it land in the layer's own gradient buffer.
    Var layer_param(Layer& L, int i);

    TapeMark mark() const;
    void reset(const TapeMark& m);  // frees every node and Var made after m
    size_t bytes_since(const TapeMark& m) const { return arena.used - m.arena_used; }

    // dL/dv for every v the root depends on, in reverse order of recording;
    // a Var used k times receives the sum of its k contributions, once each.
    // upstream: the gradient flowing into root (shaped like it); null for a
    // scalar root means 1. Without retain_graph the graph's nodes are spent,
    // and a second backward through them is an error.
    Status backward(const Var& root, const Var* upstream = nullptr, bool retain_graph = false);
    Status backward(const Var& root, const float* upstream, bool retain_graph = false);

    // Record the first error; returns an empty Var for the caller to return.
    Var fail(const Status& st);
};

// Inside this scope the tape records nothing: results have no gradient.
struct NoGrad {
    Tape& tape;
    bool saved;
    explicit NoGrad(Tape& t) : tape(t), saved(t.grad_enabled) { t.grad_enabled = false; }
    ~NoGrad() { tape.grad_enabled = saved; }
    NoGrad(const NoGrad&) = delete;
    NoGrad& operator=(const NoGrad&) = delete;
};

// An optimizer entry for a leaf; the optimizer skips it while it is frozen.
Param as_param(const Var& v, const char* name = nullptr);

// --- Operations ------------------------------------------------------------
// Arithmetic, broadcasting as NumPy.
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var add(const Var& a, float s);
Var mul(const Var& a, float s);
Var neg(const Var& a);
inline Var operator+(const Var& a, const Var& b) { return add(a, b); }
inline Var operator-(const Var& a, const Var& b) { return sub(a, b); }
inline Var operator*(const Var& a, const Var& b) { return mul(a, b); }
inline Var operator/(const Var& a, const Var& b) { return div(a, b); }
inline Var operator+(const Var& a, float s) { return add(a, s); }
inline Var operator+(float s, const Var& a) { return add(a, s); }
inline Var operator-(const Var& a, float s) { return add(a, -s); }
inline Var operator-(float s, const Var& a) { return add(neg(a), s); }
inline Var operator*(const Var& a, float s) { return mul(a, s); }
inline Var operator*(float s, const Var& a) { return mul(a, s); }
inline Var operator/(const Var& a, float s) { return mul(a, 1.0f / s); }
inline Var operator-(const Var& a) { return neg(a); }

// (M, K) x (K, N) -> (M, N) through the GEMM; a 1-D operand is a row (left)
// or a column (right) vector, and its dimension is dropped from the result.
Var matmul(const Var& a, const Var& b);
// Swap two dimensions (a copy).
Var transpose(const Var& a, int dim0 = -2, int dim1 = -1);
// Same elements, another shape (one dimension may be -1: inferred).
Var reshape(const Var& a, std::initializer_list<int> dims);
Var reshape(const Var& a, const Shape& s);
// Elements [begin, end) of one axis.
Var slice(const Var& a, int axis, int begin, int end);
// Joined along an axis; every other dimension must agree.
Var concat(std::initializer_list<Var> parts, int axis = 0);
Var concat(const Var* parts, int n, int axis = 0);

// Reductions over the listed axes (all axes when the list is empty), keeping
// them as size-1 dimensions when keepdims. Reducing every axis gives (1,).
Var sum(const Var& a, std::initializer_list<int> axes = {}, bool keepdims = false);
Var mean(const Var& a, std::initializer_list<int> axes = {}, bool keepdims = false);

// Elementwise.
Var exp(const Var& a);
Var log(const Var& a);
Var pow(const Var& a, float exponent);
Var square(const Var& a);
Var sqrt(const Var& a);
Var abs(const Var& a);     // gradient 0 at 0, as PyTorch
Var clamp(const Var& a, float lo, float hi);  // gradient 1 where lo <= a <= hi
Var relu(const Var& a);
Var leaky_relu(const Var& a, float negative_slope = 0.01f);
Var sigmoid(const Var& a);
Var tanh(const Var& a);
// Along one axis (the last by default), numerically stable.
Var softmax(const Var& a, int axis = -1);
Var log_softmax(const Var& a, int axis = -1);

// Layer kernels. dense: act(x W^T + b) with W (out, in) and b (out) or an
// empty Var, through the fused GEMM (x is (B, in)).
Var dense(const Var& x, const Var& W, const Var& b, Act act = Act::None);
// Any built layer (Conv2D, pooling, BatchNorm, Dropout, Dense, custom...)
// on the tape, in tape.mode. Its parameters take gradients in the layer's
// own buffers; layer_param() makes them Vars. A layer that keeps state from
// forward for backward (pooling indices, dropout mask, batch statistics)
// can be applied once per graph; a second call is an error.
Var apply(Layer& L, const Var& x);

// Losses, each a scalar: the mean over the batch as the Loss kinds define
// it. pred is (B, C); target has pred's shape (it takes no gradient).
Var loss(const Loss& kind, const Var& pred, const Var& target);
// Softmax cross-entropy on logits (B, C) against integer class labels
// (B of them; copied to the tape).
Var cross_entropy(const Var& logits, const int32_t* labels);

// User-defined operation on up to 8 inputs.
constexpr int kMaxCustomInputs = 8;
Var custom(const CustomOp& op, const Var* inputs, int n, void* user = nullptr);

// Checks the gradients a graph built by f gives its inputs against central
// differences, on L = sum(f(inputs) * r) with a fixed random r. f must
// build its result from `inputs` with tape operations (built-in or custom).
// Inputs wanting no gradient are skipped. Their gradients are left as found.
typedef Var (*TapeFn)(Tape& tape, const Var* inputs, int n, void* user);
Status gradient_check(Tape& tape, TapeFn f, const Var* inputs, int n, void* user, GradCheckResult* out,
                      float h = 1e-2f, double tol = 2e-2, int max_checks = 64);

// ===========================================================================
// Runtime switches
// ===========================================================================
// Threads the kernels may use (GEMM, optimizer updates): 1 by default,
// NN_NUM_THREADS in the environment, at most kMaxThreads. Models and layers
// size their per-thread scratch when they are compiled or built, so set
// this first.
constexpr int kMaxThreads = 64;
void set_num_threads(int n);
int num_threads();
// Run fn(ctx, ith, nth) for ith = 0 .. nth-1 on the thread pool (ith = 0 on
// the calling thread) and return when all are done. Workers start on first
// use and are reused; a call allocates nothing. Split work into ranges by
// (ith, nth) so results do not depend on timing.
void parallel_for(int nth, void (*fn)(void* ctx, int ith, int nth), void* ctx);
// Start the pool's workers now (setup), instead of at the first parallel job.
void start_threads();
const char* simd_arch();      // "avx512bw", "neon64", "scalar", ...
// Flush denormals to zero (MXCSR on x86, FPCR on ARM); returns the previous
// state for restore_denormals.
uint64_t flush_denormals();
void restore_denormals(uint64_t saved);

}  // namespace nn

#endif  // NN_HPP
