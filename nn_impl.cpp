// nn_impl.cpp — the whole library as one translation unit.
//
// Compile this file once and link it with your program. It includes every
// kernel header from kernels/ (the hot loops, each beside its plain
// reference) and then implements the API declared in nn.hpp, in the order
// the tour in nn.hpp introduces it, one banner per section: core types,
// layers, losses, optimizers, data, the model, gradient checking.
#include "nn.hpp"

#include "kernels/simd.hpp"
#include "kernels/gemm.hpp"
#include "kernels/activation.hpp"
#include "kernels/loss.hpp"
#include "kernels/optim.hpp"
#include "kernels/conv.hpp"
#include "kernels/pool.hpp"
#include "kernels/norm.hpp"
#include "kernels/strided.hpp"
#include "kernels/rnn.hpp"
#include "kernels/convert.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>  // MXCSR: flush denormals during fit
#endif
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
#include <zlib.h>  // gzipped IDX files
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>  // isatty: redraw the progress bar only on a terminal
#define NN_HAVE_ISATTY 1
#endif
#if defined(__linux__)
#include <sys/mman.h>  // madvise: 2 MB pages for large buffers
#endif

namespace nn {

// ===========================================================================
// Core: assertions, Status, checked size arithmetic, Arena, Shape, Tensor, Rng
// ===========================================================================

[[noreturn]] void assert_fail(const char* cond, const char* file, int line) {
    std::fprintf(stderr, "nn: assertion failed: %s (%s:%d)\n", cond, file, line);
    std::abort();
}

Status errorf(const char* fmt, ...) {
    Status s;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(s.msg, sizeof s.msg, fmt, ap);
    va_end(ap);
    if (!s.msg[0]) std::snprintf(s.msg, sizeof s.msg, "nn: unspecified error");
    return s;
}

bool size_mul(size_t a, size_t b, size_t* out) {
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}

bool size_add(size_t a, size_t b, size_t* out) {
    if (b > SIZE_MAX - a) return false;
    *out = a + b;
    return true;
}

// --- Large pages ---------------------------------------------------------------

// Asks Linux to back the 2 MB-aligned part of [p, p + bytes) with 2 MB pages
// (transparent huge pages in "madvise" mode, the default of Debian and
// Raspberry Pi OS). Call it before the memory is first touched: pages fault
// in large from then on. One TLB entry then maps what 512 small pages did,
// which matters for a data set read row by row at random: a shuffled batch
// of Fashion-MNIST otherwise misses the TLB on nearly every row. Elsewhere,
// or when the kernel says no, nothing changes.
static void advise_large_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t kLarge = (uintptr_t)2 << 20;
    const uintptr_t first = ((uintptr_t)p + kLarge - 1) & ~(kLarge - 1);
    const uintptr_t last = ((uintptr_t)p + bytes) & ~(kLarge - 1);
    if (last > first) (void)madvise((void*)first, last - first, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

// Makes room for at least n bytes in v, in a new block advised as above
// before anything is written to it (the old contents are copied over, as a
// vector's own growth would). Data set loaders grow their pixel buffers
// through this.
static void reserve_large_pages(std::vector<uint8_t>* v, size_t n) {
    if (n <= v->capacity()) return;
    std::vector<uint8_t> grown;
    grown.reserve(n);
    advise_large_pages(grown.data(), n);
    grown.assign(v->begin(), v->end());
    v->swap(grown);
}

// --- Arena -----------------------------------------------------------------

Status Arena::reserve(size_t bytes) {
    release();
    size_t rounded;
    if (!size_add(bytes, kArenaAlign - 1, &rounded))
        return errorf("arena: cannot reserve %zu bytes (size overflows)", bytes);
    rounded -= rounded % kArenaAlign;
    if (rounded == 0) rounded = kArenaAlign;
    void* p = std::aligned_alloc(kArenaAlign, rounded);
    if (!p) return errorf("arena: the system refused %zu bytes", rounded);
    base = static_cast<unsigned char*>(p);
    capacity = rounded;
    used = peak = 0;
    owns = true;
    measuring = false;
    return Status{};
}

Status Arena::wrap(void* buffer, size_t bytes) {
    release();
    if (!buffer) return errorf("arena: wrap() was given a null buffer of %zu bytes", bytes);
    uintptr_t p = reinterpret_cast<uintptr_t>(buffer);
    size_t skip = (kArenaAlign - p % kArenaAlign) % kArenaAlign;
    if (bytes < skip) return errorf("arena: buffer of %zu bytes is smaller than its %zu-byte alignment padding", bytes, skip);
    base = static_cast<unsigned char*>(buffer) + skip;
    capacity = bytes - skip;
    used = peak = 0;
    owns = false;
    measuring = false;
    return Status{};
}

void Arena::begin_measure() {
    release();
    measuring = true;
    capacity = SIZE_MAX;
}

void* Arena::alloc(size_t bytes, Status* err, const char* what) {
    size_t start = (used + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
    size_t end;
    bool fits = start >= used && size_add(start, bytes, &end) && end <= capacity;
    if (!fits) {
        if (err && err->ok()) {
            size_t avail = capacity > used ? capacity - used : 0;
            *err = errorf("arena exhausted by %s: requested %zu bytes, available %zu, missing %zu "
                          "(capacity %zu, in use %zu)",
                          what, bytes, avail, bytes > avail ? bytes - avail : 0, capacity, used);
        }
        return nullptr;
    }
    used = end;
    if (used > peak) peak = used;
    if (measuring) return nullptr;
    return base + start;
}

float* Arena::alloc_floats(size_t count, Status* err, const char* what) {
    size_t bytes;
    if (!size_mul(count, sizeof(float), &bytes)) {
        if (err && err->ok()) *err = errorf("arena: %s asks for %zu floats, which overflows size_t", what, count);
        return nullptr;
    }
    return static_cast<float*>(alloc(bytes, err, what));
}

void Arena::release() {
    if (owns && base) std::free(base);
    base = nullptr;
    capacity = used = peak = 0;
    owns = false;
    measuring = false;
}

// --- Shape and Tensor -------------------------------------------------------

size_t Shape::numel() const {
    if (ndim == 0) return 0;
    size_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= (size_t)(dim[i] > 0 ? dim[i] : 0);
    return n;
}

bool Shape::operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
        if (dim[i] != o.dim[i]) return false;
    return true;
}

Shape make_shape(std::initializer_list<int> dims) {
    NN_ASSERT(dims.size() >= 1 && dims.size() <= (size_t)kMaxDims);
    Shape s;
    for (int d : dims) s.dim[s.ndim++] = d;
    return s;
}

const char* shape_str(const Shape& s, char* buf, size_t cap) {
    size_t at = 0;
    at += (size_t)std::snprintf(buf + at, cap - at, "(");
    for (int i = 0; i < s.ndim && at < cap; ++i)
        at += (size_t)std::snprintf(buf + at, cap - at, i ? ", %d" : "%d", s.dim[i]);
    if (at < cap) std::snprintf(buf + at, cap - at, s.ndim == 1 ? ",)" : ")");
    return buf;
}

Shape batched(const Shape& sample, int batch) {
    NN_ASSERT(sample.ndim < kMaxDims);
    Shape s;
    s.ndim = sample.ndim + 1;
    s.dim[0] = batch;
    for (int i = 0; i < sample.ndim; ++i) s.dim[i + 1] = sample.dim[i];
    return s;
}

size_t Tensor::row_size() const {
    return shape.dim[0] > 0 ? numel() / (size_t)shape.dim[0] : 0;
}

Tensor Tensor::reshape(const Shape& s) const {
    NN_ASSERT(s.numel() == numel());
    Tensor t;
    t.data = data;
    t.shape = s;
    return t;
}

Tensor Tensor::reshape(std::initializer_list<int> dims) const { return reshape(make_shape(dims)); }

Tensor Tensor::rows(int begin, int end) const {
    NN_ASSERT(0 <= begin && begin <= end && end <= shape.dim[0]);
    Tensor t;
    t.data = data + (size_t)begin * row_size();
    t.shape = shape;
    t.shape.dim[0] = end - begin;
    return t;
}

Tensor tensor_view(float* data, const Shape& s) {
    Tensor t;
    t.data = data;
    t.shape = s;
    return t;
}

Tensor tensor_view(float* data, std::initializer_list<int> dims) { return tensor_view(data, make_shape(dims)); }

Status tensor_alloc(Arena& a, const Shape& s, Tensor* out, const char* what) {
    Status st;
    out->shape = s;
    out->data = a.alloc_floats(s.numel(), &st, what);
    return st;
}

// --- Rng: PCG32 (O'Neill), a 64-bit state that a checkpoint can store -------

void Rng::seed_with(uint64_t seed) {
    state = 0;
    next_u32();
    state += seed + 0x853c49e6748fea9bULL;
    next_u32();
}

uint32_t Rng::next_u32() {
    uint64_t old = state;
    state = old * 6364136223846793005ULL + 1442695040888963407ULL;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32 - rot) & 31));
}

float Rng::uniform() { return (float)(next_u32() >> 8) * (1.0f / 16777216.0f); }

float Rng::uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }

float Rng::normal() {
    // Box-Muller; u1 in (0, 1] so the log is finite.
    float u1 = 1.0f - uniform();
    float u2 = uniform();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530718f * u2);
}

uint32_t Rng::below(uint32_t n) {
    NN_ASSERT(n > 0);
    uint32_t threshold = (uint32_t)(-n) % n;  // reject the biased low values
    for (;;) {
        uint32_t r = next_u32();
        if (r >= threshold) return r % n;
    }
}

// --- Runtime switches -------------------------------------------------------

static int g_num_threads = 0;  // 0: not yet read from NN_NUM_THREADS

void set_num_threads(int n) { g_num_threads = n < 1 ? 1 : (n > kMaxThreads ? kMaxThreads : n); }

int num_threads() {
    if (g_num_threads == 0) {
        const char* env = std::getenv("NN_NUM_THREADS");
        set_num_threads(env ? std::atoi(env) : 1);
    }
    return g_num_threads;
}

// --- Thread pool ----------------------------------------------------------------
//
// Workers are started once, the first time a job asks for more than one
// thread, and then live as long as the program. A job is a plain function
// called as fn(ctx, ith, nth) on every thread ith < nth: the caller runs
// ith = 0 itself and waits for the rest. Dispatch allocates nothing: the
// job is three words in the pool and a generation counter tells the workers
// there is a new one. Workers spin for a while after each job (training
// steps come back to back, and waking a sleeping thread costs tens of
// microseconds), then sleep on a condition variable.
//
// Floating-point control state (flush-to-zero) is per thread: each job
// carries the caller's, so every thread computes exactly as the caller
// would.
static uint64_t fp_state_read();

struct ThreadPool {
    std::mutex mu;
    std::condition_variable wake;
    // 32 bits: ARMv6 has no 64-bit atomics (they would need libatomic and
    // take a lock). Wrapping is harmless: a worker compares only with the
    // last generation it saw, and no job can start before every worker of
    // the previous one has run it, so a worker could only be fooled by not
    // running at all through exactly 2^32 jobs that leave it out.
    std::atomic<uint32_t> generation{0};
    std::atomic<int> pending{0};
    int workers = 0;  // threads started (ith = 1 .. workers)
    void (*fn)(void*, int, int) = nullptr;
    void* ctx = nullptr;
    int nth = 1;
    uint64_t fp_state = 0;

    // seen: the generation when the worker was started; it waits for the next.
    void worker(int ith, uint32_t seen) {
        for (;;) {
            uint32_t g = generation.load(std::memory_order_acquire);
            for (int spin = 0; g == seen && spin < (1 << 15); ++spin) {
                backoff(spin);
                g = generation.load(std::memory_order_acquire);
            }
            if (g == seen) {
                std::unique_lock<std::mutex> lock(mu);
                wake.wait(lock, [&] { return generation.load(std::memory_order_acquire) != seen; });
                g = generation.load(std::memory_order_acquire);
            }
            seen = g;
            if (ith < nth) {
                const uint64_t saved = fp_state_read();
                if (saved != fp_state) restore_denormals(fp_state);
                fn(ctx, ith, nth);
                if (saved != fp_state) restore_denormals(saved);
            }
            // Every worker answers every job, taking part or not: the next
            // job is written only when no worker can still be reading this
            // one (a late worker would otherwise see the next job's fn and
            // nth with this job's generation, and run it twice).
            pending.fetch_sub(1, std::memory_order_acq_rel);
        }
    }

    // Busy-wait politely: pause first, then give the core away, which
    // matters when there are more threads than cores.
    static void backoff(int spin) {
        if (spin < 512)
            cpu_relax();
        else
            std::this_thread::yield();
    }

    static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#elif defined(__aarch64__) || (defined(__arm__) && __ARM_ARCH >= 7)
        __asm__ __volatile__("yield");
#endif
    }

    void start(int want) {  // at setup only: std::thread allocates
        for (; workers < want; ++workers) {
            std::thread t(&ThreadPool::worker, this, workers + 1,
                          generation.load(std::memory_order_acquire));
            t.detach();
        }
    }

    void run(int n, void (*f)(void*, int, int), void* c) {
        if (n > 1 && workers < n - 1) start(n - 1);
        if (n <= 1) {
            f(c, 0, 1);
            return;
        }
        fn = f;
        ctx = c;
        nth = n;
        fp_state = fp_state_read();
        pending.store(workers, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lock(mu);
            generation.fetch_add(1, std::memory_order_acq_rel);
        }
        wake.notify_all();
        f(c, 0, n);
        for (int spin = 0; pending.load(std::memory_order_acquire) != 0; ++spin) backoff(spin);
    }
};

static ThreadPool& thread_pool() {
    static ThreadPool* pool = new ThreadPool;  // never destroyed: workers outlive main
    return *pool;
}

void parallel_for(int nth, void (*fn)(void* ctx, int ith, int nth), void* ctx) {
    if (nth > kMaxThreads) nth = kMaxThreads;
    thread_pool().run(nth < 1 ? 1 : nth, fn, ctx);
}

void start_threads() {
    if (num_threads() > 1) thread_pool().start(num_threads() - 1);
}

const char* simd_arch() { return simd::arch_name(); }

uint64_t flush_denormals() {
#if defined(__SSE__) || defined(__x86_64__)
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
    return csr;
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ __volatile__("msr fpcr, %0" ::"r"(fpcr | (1ull << 24)));  // FZ
    return fpcr;
#elif defined(__arm__) && defined(__ARM_FP)
    uint32_t fpscr;
    __asm__ __volatile__("vmrs %0, fpscr" : "=r"(fpscr));
    __asm__ __volatile__("vmsr fpscr, %0" ::"r"(fpscr | (1u << 24)));  // FZ
    return fpscr;
#else
    return 0;
#endif
}

static uint64_t fp_state_read() {
#if defined(__SSE__) || defined(__x86_64__)
    return _mm_getcsr();
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    return fpcr;
#elif defined(__arm__) && defined(__ARM_FP)
    uint32_t fpscr;
    __asm__ __volatile__("vmrs %0, fpscr" : "=r"(fpscr));
    return fpscr;
#else
    return 0;
#endif
}

void restore_denormals(uint64_t saved) {
#if defined(__SSE__) || defined(__x86_64__)
    _mm_setcsr((unsigned int)saved);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" ::"r"(saved));
#elif defined(__arm__) && defined(__ARM_FP)
    uint32_t v = (uint32_t)saved;
    __asm__ __volatile__("vmsr fpscr, %0" ::"r"(v));
#else
    (void)saved;
#endif
}
// ===========================================================================
// Layers: constructors, build, forward, backward: a switch on `kind`, and for
// the kinds with large kernels a LayerCode table (see make_layer).
// ===========================================================================

// Forward and backward of the kinds whose kernels are large, reached through
// Layer::code. Only a kind's constructor refers to its table, so a program
// links the kernels of the kinds it constructs and no others (with
// -ffunction-sections and --gc-sections in a static link). The tables are
// defined with forward() below.
struct LayerCode {
    Status (*forward)(Layer& L, float* y, const float* x, int B, Mode mode);
    // dx may be null (no input gradient wanted); parameter gradients are
    // overwritten when overwrite_grads, else accumulated.
    void (*backward)(Layer& L, float* dx, const float* dy, const float* x, const float* y, int B,
                     bool overwrite_grads);
};
static const LayerCode* conv2d_code();
static const LayerCode* maxpool2d_code();
static const LayerCode* avgpool2d_code();
static const LayerCode* global_avgpool_code();
static const LayerCode* batchnorm_code();
static const LayerCode* recurrent_code();
static const LayerCode* embedding_code();

// The kinds forward() reaches through Layer::code.
static bool layer_uses_code(LayerKind kind) {
    switch (kind) {
        case LayerKind::Conv2D:
        case LayerKind::MaxPool2D:
        case LayerKind::AvgPool2D:
        case LayerKind::GlobalAvgPool:
        case LayerKind::BatchNorm:
        case LayerKind::Recurrent:
        case LayerKind::Embedding: return true;
        default: return false;
    }
}

static Layer make_layer(LayerKind kind, Act act) {
    Layer L;
    L.kind = kind;
    L.act = act;
    return L;
}

Layer Dense(int in_features, int units, Act act, bool use_bias) {
    Layer L = make_layer(LayerKind::Dense, act);
    L.in_features = in_features;
    L.units = units;
    L.use_bias = use_bias;
    return L;
}
Layer Dense(int units, Act act) { return Dense(0, units, act, true); }
Layer ReLU() { return make_layer(LayerKind::Activation, Act::ReLU); }
Layer LeakyReLU(float negative_slope) {
    Layer L = make_layer(LayerKind::Activation, Act::LeakyReLU);
    L.leaky_slope = negative_slope;
    return L;
}
Layer Sigmoid() { return make_layer(LayerKind::Activation, Act::Sigmoid); }
Layer Tanh() { return make_layer(LayerKind::Activation, Act::Tanh); }
Layer Softmax() { return make_layer(LayerKind::Activation, Act::Softmax); }
Layer Linear() { return make_layer(LayerKind::Activation, Act::None); }
Layer Dropout(float rate) {
    Layer L = make_layer(LayerKind::Dropout, Act::None);
    L.rate = rate;
    return L;
}
Layer Flatten() { return make_layer(LayerKind::Flatten, Act::None); }
Layer Custom(const CustomLayerOps* ops, void* user) {
    Layer L = make_layer(LayerKind::Custom, Act::None);
    L.custom = ops;
    L.user = user;
    return L;
}

Layer Conv2D(int in_channels, int out_channels, Size2 kernel, Size2 stride, Padding padding, Size2 dilation,
             int groups, bool bias) {
    Layer L = make_layer(LayerKind::Conv2D, Act::None);
    L.in_channels = in_channels;
    L.out_channels = out_channels;
    L.kernel = kernel;
    L.stride = stride;
    L.padding = padding;
    L.dilation = dilation;
    L.groups = groups;
    L.use_bias = bias;
    L.code = conv2d_code();
    return L;
}
static Layer make_pool(LayerKind kind, Size2 kernel, Size2 stride, Size2 padding) {
    Layer L = make_layer(kind, Act::None);
    L.kernel = kernel;
    L.stride = stride.h == 0 && stride.w == 0 ? kernel : stride;
    L.padding = Padding(padding.h, padding.w);
    return L;
}
Layer MaxPool2D(Size2 kernel, Size2 stride, Size2 padding) {
    Layer L = make_pool(LayerKind::MaxPool2D, kernel, stride, padding);
    L.code = maxpool2d_code();
    return L;
}
Layer AvgPool2D(Size2 kernel, Size2 stride, Size2 padding, bool count_include_pad) {
    Layer L = make_pool(LayerKind::AvgPool2D, kernel, stride, padding);
    L.count_include_pad = count_include_pad;
    L.code = avgpool2d_code();
    return L;
}
Layer GlobalAvgPool() {
    Layer L = make_layer(LayerKind::GlobalAvgPool, Act::None);
    L.code = global_avgpool_code();
    return L;
}
static Layer make_batchnorm(int dims, int num_features, float eps, float momentum, bool affine) {
    Layer L = make_layer(LayerKind::BatchNorm, Act::None);
    L.bn_dims = dims;
    L.in_channels = num_features;
    L.eps = eps;
    L.momentum = momentum;
    L.affine = affine;
    L.code = batchnorm_code();
    return L;
}
Layer BatchNorm1d(int num_features, float eps, float momentum, bool affine) {
    return make_batchnorm(1, num_features, eps, momentum, affine);
}
Layer BatchNorm2d(int num_features, float eps, float momentum, bool affine) {
    return make_batchnorm(2, num_features, eps, momentum, affine);
}

static Layer make_recurrent(RnnCell cell, int input_size, int hidden_size, int num_layers, bool return_sequences) {
    Layer L = make_layer(LayerKind::Recurrent, Act::None);
    L.cell = cell;
    L.in_features = input_size;
    L.hidden_size = hidden_size;
    L.num_layers = num_layers;
    L.return_sequences = return_sequences;
    L.code = recurrent_code();
    return L;
}

Layer RNN(int input_size, int hidden_size, int num_layers, bool return_sequences, Act nonlinearity) {
    Layer L = make_recurrent(nonlinearity == Act::ReLU ? RnnCell::RnnReLU : RnnCell::RnnTanh, input_size, hidden_size,
                             num_layers, return_sequences);
    L.act = nonlinearity;  // checked at build: Tanh or ReLU
    return L;
}
Layer LSTM(int input_size, int hidden_size, int num_layers, bool return_sequences) {
    return make_recurrent(RnnCell::LSTM, input_size, hidden_size, num_layers, return_sequences);
}
Layer GRU(int input_size, int hidden_size, int num_layers, bool return_sequences) {
    return make_recurrent(RnnCell::GRU, input_size, hidden_size, num_layers, return_sequences);
}
Layer Embedding(int num_embeddings, int embedding_dim) {
    Layer L = make_layer(LayerKind::Embedding, Act::None);
    L.num_embeddings = num_embeddings;
    L.embedding_dim = embedding_dim;
    L.code = embedding_code();
    return L;
}

const char* act_name(Act a) {
    switch (a) {
        case Act::None: return "Linear";
        case Act::ReLU: return "ReLU";
        case Act::LeakyReLU: return "LeakyReLU";
        case Act::Sigmoid: return "Sigmoid";
        case Act::Tanh: return "Tanh";
        case Act::Softmax: return "Softmax";
    }
    return "?";
}

static const Init kInits[] = {Init::Torch, Init::GlorotUniform, Init::GlorotNormal, Init::HeUniform,
                               Init::HeNormal};

const char* init_name(Init i) {
    switch (i) {
        case Init::Torch: return "torch";
        case Init::GlorotUniform: return "glorot_uniform";
        case Init::GlorotNormal: return "glorot_normal";
        case Init::HeUniform: return "he_uniform";
        case Init::HeNormal: return "he_normal";
    }
    return "?";
}

Status init_from_name(const char* name, Init* out) {
    for (Init i : kInits)
        if (name && std::strcmp(name, init_name(i)) == 0) {
            *out = i;
            return Status{};
        }
    return errorf("unknown initializer \"%s\" (known: torch, glorot_uniform, glorot_normal, he_uniform, he_normal)",
                  name ? name : "(null)");
}

const char* Layer::type_name() const {
    switch (kind) {
        case LayerKind::Dense: return "Dense";
        case LayerKind::Activation: return act_name(act);
        case LayerKind::Dropout: return "Dropout";
        case LayerKind::Flatten: return "Flatten";
        case LayerKind::Custom: return custom && custom->type_name ? custom->type_name : "Custom";
        case LayerKind::Conv2D: return "Conv2D";
        case LayerKind::MaxPool2D: return "MaxPool2D";
        case LayerKind::AvgPool2D: return "AvgPool2D";
        case LayerKind::GlobalAvgPool: return "GlobalAvgPool";
        case LayerKind::BatchNorm: return bn_dims == 2 ? "BatchNorm2d" : "BatchNorm1d";
        case LayerKind::Recurrent:
            return cell == RnnCell::LSTM ? "LSTM" : (cell == RnnCell::GRU ? "GRU" : "RNN");
        case LayerKind::Embedding: return "Embedding";
    }
    return "?";
}

size_t Layer::param_count() const {
    size_t n = 0;
    for (int i = 0; i < n_params; ++i) n += param_shape[i].numel();
    return n;
}

Status declare_param(Layer& self, const char* name, const Shape& shape) {
    if (self.n_params >= kMaxParams)
        return errorf("layer \"%s\": more than %d parameters declared", self.name, kMaxParams);
    if (shape.ndim < 1 || shape.numel() == 0)
        return errorf("layer \"%s\": parameter \"%s\" has an empty shape", self.name, name);
    int i = self.n_params++;
    std::snprintf(self.param_name[i], sizeof self.param_name[i], "%s", name);
    self.param_shape[i] = shape;
    return Status{};
}

// --- Geometry of the image layers -------------------------------------------

// Conv2D's zero padding on each side along one axis (kernel k, dilation d).
static int conv_pad(const Layer& L, int k, int d, int explicit_pad) {
    switch (L.padding.mode) {
        case PadMode::Explicit: return explicit_pad;
        case PadMode::Valid: return 0;
        case PadMode::Same: return d * (k - 1) / 2;
    }
    return 0;
}

// The convolution layer L makes of N samples of shape `in`, or an error
// naming the layer and the numbers.
static Status conv_geometry(const Layer& L, const Shape& in, int N, Conv2dGeom* g) {
    char buf[64];
    const char* nm = L.name;
    if (in.ndim != 3)
        return errorf("Conv2D \"%s\": input shape %s is not (channels, height, width)", nm,
                      shape_str(in, buf, sizeof buf));
    const int C = in.dim[0], H = in.dim[1], W = in.dim[2];
    const Size2 k = L.kernel, st = L.stride, d = L.dilation;
    if (L.in_channels > 0 && L.in_channels != C)
        return errorf("Conv2D \"%s\": input has %d channels, layer expects %d", nm, C, L.in_channels);
    if (L.out_channels < 1) return errorf("Conv2D \"%s\": out_channels must be >= 1 (got %d)", nm, L.out_channels);
    if (k.h < 1 || k.w < 1) return errorf("Conv2D \"%s\": kernel must be at least 1x1 (got %dx%d)", nm, k.h, k.w);
    if (st.h < 1 || st.w < 1) return errorf("Conv2D \"%s\": stride must be >= 1 (got %dx%d)", nm, st.h, st.w);
    if (d.h < 1 || d.w < 1) return errorf("Conv2D \"%s\": dilation must be >= 1 (got %dx%d)", nm, d.h, d.w);
    if (L.padding.mode == PadMode::Explicit && (L.padding.h < 0 || L.padding.w < 0))
        return errorf("Conv2D \"%s\": padding must be >= 0 (got %dx%d)", nm, L.padding.h, L.padding.w);
    if (L.groups < 1) return errorf("Conv2D \"%s\": groups must be >= 1 (got %d)", nm, L.groups);
    if (C % L.groups != 0)
        return errorf("Conv2D \"%s\": in_channels %d is not divisible by groups %d", nm, C, L.groups);
    if (L.out_channels % L.groups != 0)
        return errorf("Conv2D \"%s\": out_channels %d is not divisible by groups %d", nm, L.out_channels, L.groups);
    if (L.padding.mode == PadMode::Same && ((d.h * (k.h - 1)) % 2 != 0 || (d.w * (k.w - 1)) % 2 != 0))
        return errorf("Conv2D \"%s\": padding 'same' for kernel %dx%d with dilation %dx%d needs more padding on "
                      "one side than the other, which Conv2D does not do; give the padding as numbers",
                      nm, k.h, k.w, d.h, d.w);
    Conv2dGeom G{};
    G.N = N, G.C_in = C, G.H = H, G.W = W;
    G.C_out = L.out_channels, G.KH = k.h, G.KW = k.w;
    G.sh = st.h, G.sw = st.w, G.dh = d.h, G.dw = d.w;
    G.ph = conv_pad(L, k.h, d.h, L.padding.h);
    G.pw = conv_pad(L, k.w, d.w, L.padding.w);
    G.groups = L.groups;
    const long long eh = (long long)d.h * (k.h - 1) + 1, ew = (long long)d.w * (k.w - 1) + 1;
    if (eh > (long long)H + 2LL * G.ph || ew > (long long)W + 2LL * G.pw)
        return errorf("Conv2D \"%s\": kernel %dx%d (%lldx%lld with dilation) is larger than the padded input "
                      "%lldx%lld (%dx%d plus padding %d, %d)", nm, k.h, k.w, eh, ew, (long long)H + 2LL * G.ph,
                      (long long)W + 2LL * G.pw, H, W, G.ph, G.pw);
    if (!conv2d_geom_init(G))
        return errorf("Conv2D \"%s\": input %s with %d output channels is too large (a size passes 2^31)", nm,
                      shape_str(in, buf, sizeof buf), L.out_channels);
    *g = G;
    return Status{};
}

// The window of a pooling layer over samples of shape `in`.
static Status pool_geometry(const Layer& L, const Shape& in, PoolGeom* g) {
    char buf[64];
    const char* nm = L.name;
    const char* ty = L.type_name();
    if (in.ndim != 3)
        return errorf("%s \"%s\": input shape %s is not (channels, height, width)", ty, nm,
                      shape_str(in, buf, sizeof buf));
    const Size2 k = L.kernel, st = L.stride;
    const int ph = L.padding.h, pw = L.padding.w, H = in.dim[1], W = in.dim[2];
    if (k.h < 1 || k.w < 1) return errorf("%s \"%s\": kernel must be at least 1x1 (got %dx%d)", ty, nm, k.h, k.w);
    if (st.h < 1 || st.w < 1) return errorf("%s \"%s\": stride must be >= 1 (got %dx%d)", ty, nm, st.h, st.w);
    if (ph < 0 || pw < 0 || ph > k.h / 2 || pw > k.w / 2)
        return errorf("%s \"%s\": padding %dx%d must be between 0 and half the kernel %dx%d", ty, nm, ph, pw, k.h,
                      k.w);
    if ((long long)H + 2LL * ph < k.h || (long long)W + 2LL * pw < k.w)
        return errorf("%s \"%s\": kernel %dx%d is larger than the padded input %dx%d (%dx%d plus padding %d, %d)", ty,
                      nm, k.h, k.w, H + 2 * ph, W + 2 * pw, H, W, ph, pw);
    PoolGeom G{};
    G.kh = k.h, G.kw = k.w, G.sh = st.h, G.sw = st.w, G.ph = ph, G.pw = pw, G.h = H, G.w = W;
    if (!pool2d_geometry(&G))
        return errorf("%s \"%s\": input %s is too large", ty, nm, shape_str(in, buf, sizeof buf));
    *g = G;
    return Status{};
}

// BatchNorm's channels C and values per channel per sample (the plane).
static Status batchnorm_geometry(const Layer& L, const Shape& in, int* C, size_t* plane) {
    char buf[64];
    const char* nm = L.name;
    const char* ty = L.type_name();
    if (L.bn_dims == 2 ? in.ndim != 3 : (in.ndim != 1 && in.ndim != 2))
        return errorf("%s \"%s\": input shape %s is not %s", ty, nm, shape_str(in, buf, sizeof buf),
                      L.bn_dims == 2 ? "(channels, height, width)" : "(features) or (features, length)");
    if (L.in_channels > 0 && L.in_channels != in.dim[0])
        return errorf("%s \"%s\": input has %d channels, layer expects num_features %d", ty, nm, in.dim[0],
                      L.in_channels);
    if (!(L.eps > 0.0f)) return errorf("%s \"%s\": eps must be > 0 (got %g)", ty, nm, (double)L.eps);
    if (!(L.momentum >= 0.0f && L.momentum <= 1.0f))
        return errorf("%s \"%s\": momentum must be in [0, 1] (got %g)", ty, nm, (double)L.momentum);
    *C = in.dim[0];
    *plane = in.numel() / (size_t)in.dim[0];
    return Status{};
}

Status output_shape(const Layer& L, const Shape& in, Shape* out) {
    char buf[64];
    if (in.ndim < 1 || in.numel() == 0)
        return errorf("layer \"%s\" (%s): input shape %s is empty", L.name, L.type_name(),
                      shape_str(in, buf, sizeof buf));
    switch (L.kind) {
        case LayerKind::Dense:  // (in) -> (units), or per step: (T, in) -> (T, units)
            if (in.ndim > 2)
                return errorf("Dense \"%s\": input shape %s is not flat; add Flatten() before it",
                              L.name, shape_str(in, buf, sizeof buf));
            if (L.in_features > 0 && L.in_features != in.dim[in.ndim - 1])
                return errorf("Dense \"%s\": input has %d features, layer expects %d", L.name,
                              in.dim[in.ndim - 1], L.in_features);
            if (L.units < 1) return errorf("Dense \"%s\": units must be >= 1 (got %d)", L.name, L.units);
            if (L.act == Act::LeakyReLU && !(L.leaky_slope >= 0.0f))
                return errorf("Dense \"%s\": leaky slope must be >= 0 (got %g)", L.name, (double)L.leaky_slope);
            *out = in.ndim == 2 ? make_shape({in.dim[0], L.units}) : make_shape({L.units});
            return Status{};
        case LayerKind::Recurrent:
            if (in.ndim != 2)
                return errorf("%s \"%s\": input samples %s are not (steps, features)", L.type_name(), L.name,
                              shape_str(in, buf, sizeof buf));
            if (L.in_features > 0 && L.in_features != in.dim[1])
                return errorf("%s \"%s\": input has %d features per step, layer expects %d", L.type_name(), L.name,
                              in.dim[1], L.in_features);
            if (L.hidden_size < 1)
                return errorf("%s \"%s\": hidden_size must be >= 1 (got %d)", L.type_name(), L.name, L.hidden_size);
            if (L.num_layers < 1 || L.num_layers > kMaxParams / 4)
                return errorf("%s \"%s\": num_layers must be 1 to %d (got %d)", L.type_name(), L.name,
                              kMaxParams / 4, L.num_layers);
            if (L.bptt_window < 0)
                return errorf("%s \"%s\": bptt_window must be >= 0 (got %d)", L.type_name(), L.name, L.bptt_window);
            if ((L.cell == RnnCell::RnnTanh || L.cell == RnnCell::RnnReLU) && L.act != Act::Tanh &&
                L.act != Act::ReLU && L.act != Act::None)
                return errorf("RNN \"%s\": nonlinearity must be Tanh or ReLU (got %s)", L.name, act_name(L.act));
            *out = L.return_sequences ? make_shape({in.dim[0], L.hidden_size}) : make_shape({L.hidden_size});
            return Status{};
        case LayerKind::Embedding:
            if (in.ndim != 1)
                return errorf("Embedding \"%s\": input samples %s are not (steps) of token ids", L.name,
                              shape_str(in, buf, sizeof buf));
            if (L.num_embeddings < 1 || L.embedding_dim < 1)
                return errorf("Embedding \"%s\": num_embeddings %d and embedding_dim %d must be >= 1", L.name,
                              L.num_embeddings, L.embedding_dim);
            *out = make_shape({in.dim[0], L.embedding_dim});
            return Status{};
        case LayerKind::Activation:
            if (L.act == Act::LeakyReLU && !(L.leaky_slope >= 0.0f))
                return errorf("LeakyReLU \"%s\": negative_slope must be >= 0 (got %g)", L.name,
                              (double)L.leaky_slope);
            *out = in;
            return Status{};
        case LayerKind::Dropout:
            if (!(L.rate >= 0.0f && L.rate < 1.0f))
                return errorf("Dropout \"%s\": rate must be in [0, 1) (got %g)", L.name, (double)L.rate);
            *out = in;
            return Status{};
        case LayerKind::Flatten:
            *out = make_shape({(int)in.numel()});
            return Status{};
        case LayerKind::Custom:
            if (!L.custom || !L.custom->forward || !L.custom->backward)
                return errorf("custom layer \"%s\": forward and backward functions are required", L.name);
            if (!L.custom->output_shape) {
                *out = in;
                return Status{};
            }
            return L.custom->output_shape(L, in, out);
        case LayerKind::Conv2D: {
            Conv2dGeom g;
            Status st = conv_geometry(L, in, 1, &g);
            if (st) *out = make_shape({g.C_out, g.OH, g.OW});
            return st;
        }
        case LayerKind::MaxPool2D:
        case LayerKind::AvgPool2D: {
            PoolGeom g;
            Status st = pool_geometry(L, in, &g);
            if (st) *out = make_shape({in.dim[0], g.oh, g.ow});
            return st;
        }
        case LayerKind::GlobalAvgPool:
            if (in.ndim != 3)
                return errorf("GlobalAvgPool \"%s\": input shape %s is not (channels, height, width)", L.name,
                              shape_str(in, buf, sizeof buf));
            *out = make_shape({in.dim[0]});
            return Status{};
        case LayerKind::BatchNorm: {
            int C;
            size_t plane;
            Status st = batchnorm_geometry(L, in, &C, &plane);
            if (st) *out = in;
            return st;
        }
    }
    return errorf("layer \"%s\": unknown kind", L.name);
}

// Dense and Conv2D weights by L.init (nn.hpp lists the schemes). Torch is
// Kaiming-uniform with a = sqrt(5), as torch.nn.Linear and Conv2d: weight and
// bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn in that order.
static void weight_init(Layer& L, Rng& rng) {
    Tensor& w = L.params[0];
    const size_t rows = (size_t)w.shape.dim[0];  // units or out_channels
    const double fan_in = (double)(w.numel() / rows);  // in, or in/groups * kh * kw
    const double receptive = L.kind == LayerKind::Conv2D ? (double)L.kernel.h * L.kernel.w : 1.0;
    const double fan_out = (double)rows * receptive;
    const bool normal = L.init == Init::GlorotNormal || L.init == Init::HeNormal;
    double scale = 0.0;  // the uniform bound, or the normal's standard deviation
    switch (L.init) {
        case Init::Torch: scale = 1.0f / std::sqrt((float)fan_in); break;  // float, as it always was
        case Init::GlorotUniform: scale = std::sqrt(6.0 / (fan_in + fan_out)); break;
        case Init::GlorotNormal: scale = std::sqrt(2.0 / (fan_in + fan_out)); break;
        case Init::HeUniform: scale = std::sqrt(6.0 / fan_in); break;
        case Init::HeNormal: scale = std::sqrt(2.0 / fan_in); break;
    }
    const float s = (float)scale;
    for (size_t i = 0; i < w.numel(); ++i) w.data[i] = normal ? s * rng.normal() : rng.uniform(-s, s);
    if (L.use_bias)
        for (size_t j = 0; j < rows; ++j) L.params[1].data[j] = L.init == Init::Torch ? rng.uniform(-s, s) : 0.0f;
}

// BatchNorm's parameters: [weight, bias,] running_mean, running_var.
static int bn_running(const Layer& L) { return L.affine ? 2 : 0; }

// gamma 1, beta 0, running mean 0, running variance 1 (PyTorch).
static void batchnorm_init(Layer& L) {
    const int C = L.in_channels, r = bn_running(L);
    for (int c = 0; c < C; ++c) {
        if (L.affine) L.params[0].data[c] = 1.0f, L.params[1].data[c] = 0.0f;
        L.params[r].data[c] = 0.0f;
        L.params[r + 1].data[c] = 1.0f;
    }
}

// --- Recurrent layers: sizes -----------------------------------------------------

static int rnn_gates(const Layer& L) {
    return L.cell == RnnCell::LSTM ? 4 : (L.cell == RnnCell::GRU ? 3 : 1);
}

// Where each buffer of a recurrent layer sits in its scratch (offsets in
// floats), for batches up to B. Sequence buffers are feature-major
// (rows, T*B): see kernels/rnn.hpp.
struct RnnLayout {
    size_t xT = 0;              // the input, transposed: (input, T*B)
    size_t G[kMaxParams / 4];   // gates per stacked layer: (G*H, T*B)
    size_t hs[kMaxParams / 4];  // hidden states: (H, T*B)
    size_t cs[kMaxParams / 4];  // LSTM cell states: (H, T*B)
    size_t hn[kMaxParams / 4];  // GRU: W_hn h + b_hn per step, (H, T*B)
    size_t h0T = 0, c0T = 0;    // initial states per layer, (H, B) each
    size_t gh = 0;              // GRU: one step's W_hh h + b_hh, (3H, B)
    size_t bsum = 0;            // RNN/LSTM: b_ih + b_hh, (G*H)
    size_t dG = 0, dGh = 0;     // gate gradients, (G*H, T*B); dGh is dG except for GRU
    size_t dA = 0, dB = 0;      // gradients of a layer's output and input, (max(in, H), T*B)
    size_t dh = 0, dc = 0;      // one step's state gradients, (H, B)
    size_t whhT = 0;            // W_hh transposed, (H, G*H)
    size_t keep = 0;            // (B): 1 for a sample still running at this step, 0 after its end
    size_t tc = 0;              // (B): tanh(c) of one row, LSTM backward
    size_t total = 0;           // 0: the sizes overflow
};

static RnnLayout rnn_layout(const Layer& L, int B) {
    RnnLayout r;
    const size_t T = (size_t)L.in_shape.dim[0], F = (size_t)L.in_features, H = (size_t)L.hidden_size;
    const size_t GH = (size_t)rnn_gates(L) * H, nl = (size_t)L.num_layers, TB = T * (size_t)B;
    const size_t fmax = F > H ? F : H;
    size_t at = 0;
    bool ok = true;
    // Carves n floats, 64-byte aligned, and returns the offset.
    auto take = [&](size_t rows, size_t cols) {
        size_t n = 0;
        ok = ok && size_mul(rows, cols, &n);
        const size_t here = at;
        ok = ok && size_add(at, gemm_round_up(n, 16), &at);
        return here;
    };
    r.xT = take(F, TB);
    for (size_t k = 0; k < nl; ++k) {
        r.G[k] = take(GH, TB);
        r.hs[k] = take(H, TB);
        r.cs[k] = L.cell == RnnCell::LSTM ? take(H, TB) : 0;
        r.hn[k] = L.cell == RnnCell::GRU ? take(H, TB) : 0;
    }
    r.h0T = take(nl * H, (size_t)B);
    r.c0T = L.cell == RnnCell::LSTM ? take(nl * H, (size_t)B) : 0;
    r.gh = L.cell == RnnCell::GRU ? take(GH, (size_t)B) : 0;
    r.bsum = take(GH, 1);
    r.dG = take(GH, TB);
    r.dGh = L.cell == RnnCell::GRU ? take(GH, TB) : r.dG;
    r.dA = take(fmax, TB);
    r.dB = take(fmax, TB);
    r.dh = take(H, (size_t)B);
    r.dc = take(H, (size_t)B);
    r.whhT = take(H, GH);
    r.keep = take((size_t)B, 1);
    r.tc = take((size_t)B, 1);
    r.total = ok ? at : 0;
    return r;
}

// GEMM packing scratch for every GEMM of a recurrent layer at batch B.
static size_t rnn_pack_floats(const Layer& L, const Shape& in, int B) {
    const int T = in.dim[0], H = L.hidden_size, GH = rnn_gates(L) * H, TB = T * B;
    size_t most = 0;
    for (int k = 0; k < L.num_layers; ++k) {
        const int F = k == 0 ? L.in_features : H;
        const int shapes[6][3] = {{GH, TB, F}, {GH, B, H}, {H, B, GH}, {GH, F, TB}, {GH, H, TB}, {F, TB, GH}};
        for (const auto& s : shapes) {
            const size_t f = gemm_pack_floats(s[0], s[1], s[2]);
            most = f > most ? f : most;
        }
    }
    return gemm_round_up(most, 16);
}

// U(-1/sqrt(hidden), 1/sqrt(hidden)) for every weight and bias, as PyTorch.
static void rnn_init(Layer& L, Rng& rng) {
    const float bound = 1.0f / std::sqrt((float)L.hidden_size);
    for (int i = 0; i < L.n_params; ++i)
        for (size_t e = 0; e < L.params[i].numel(); ++e) L.params[i].data[e] = rng.uniform(-bound, bound);
}

// Declares the parameters of a layer on input samples of shape `in`.
static Status declare_layer_params(Layer& b, const Shape& in) {
    Status st;
    switch (b.kind) {
        case LayerKind::Dense:
            b.in_features = in.dim[in.ndim - 1];
            b.n_params = 0;
            st = declare_param(b, "weight", make_shape({b.units, b.in_features}));
            if (st && b.use_bias) st = declare_param(b, "bias", make_shape({b.units}));
            break;
        case LayerKind::Conv2D:
            b.in_channels = in.dim[0];
            b.n_params = 0;
            st = declare_param(b, "weight", make_shape({b.out_channels, b.in_channels / b.groups, b.kernel.h,
                                                        b.kernel.w}));
            if (st && b.use_bias) st = declare_param(b, "bias", make_shape({b.out_channels}));
            break;
        case LayerKind::BatchNorm:
            b.in_channels = in.dim[0];
            b.n_params = 0;
            if (b.affine) st = declare_param(b, "weight", make_shape({b.in_channels}));
            if (st && b.affine) st = declare_param(b, "bias", make_shape({b.in_channels}));
            if (st) st = declare_param(b, "running_mean", make_shape({b.in_channels}));
            if (st) st = declare_param(b, "running_var", make_shape({b.in_channels}));
            if (st) b.buffer[b.n_params - 2] = b.buffer[b.n_params - 1] = true;
            break;
        case LayerKind::Custom:
            if (b.custom->declare) {
                b.n_params = 0;
                st = b.custom->declare(b, in);
            }
            break;
        case LayerKind::Recurrent: {
            b.in_features = in.dim[1];
            b.n_params = 0;
            const int gh = rnn_gates(b) * b.hidden_size;
            char name[32];
            for (int k = 0; k < b.num_layers && st; ++k) {
                const int fin = k == 0 ? b.in_features : b.hidden_size;
                std::snprintf(name, sizeof name, "weight_ih_l%d", k);
                st = declare_param(b, name, make_shape({gh, fin}));
                std::snprintf(name, sizeof name, "weight_hh_l%d", k);
                if (st) st = declare_param(b, name, make_shape({gh, b.hidden_size}));
                std::snprintf(name, sizeof name, "bias_ih_l%d", k);
                if (st) st = declare_param(b, name, make_shape({gh}));
                std::snprintf(name, sizeof name, "bias_hh_l%d", k);
                if (st) st = declare_param(b, name, make_shape({gh}));
            }
            break;
        }
        case LayerKind::Embedding:
            b.n_params = 0;
            st = declare_param(b, "weight", make_shape({b.num_embeddings, b.embedding_dim}));
            break;
        default: break;
    }
    return st;
}

Status build(Layer& L, const Shape& in, int max_batch, Arena& arena, uint64_t seed) {
    if (max_batch < 1) return errorf("layer \"%s\": max_batch must be >= 1 (got %d)", L.name, max_batch);
    Shape out;
    if ((unsigned)L.init > (unsigned)Init::HeNormal)
        return errorf("layer \"%s\": unknown initializer %u", L.name, (unsigned)L.init);
    if (layer_uses_code(L.kind) && !L.code)
        return errorf("layer \"%s\" (%s): made without its constructor (nn::%s(...)), which links its kernels",
                      L.name, L.type_name(), L.type_name());
    if (L.init != Init::Torch && L.kind != LayerKind::Dense && L.kind != LayerKind::Conv2D)
        return errorf("layer \"%s\" (%s): initializer %s applies to Dense and Conv2D only", L.name, L.type_name(),
                      init_name(L.init));
    Status st = output_shape(L, in, &out);
    if (!st) return st;
    Layer b = L;  // built on a copy: L changes only when everything fits
    b.in_shape = in;
    b.out_shape = out;
    b.max_batch = max_batch;
    for (bool& f : b.buffer) f = false;
    if (!(st = declare_layer_params(b, in))) return st;
    const size_t rows_out = (size_t)max_batch * out.numel();
    for (int i = 0; i < b.n_params; ++i) {
        if (st) st = tensor_alloc(arena, b.param_shape[i], &b.params[i], b.name);
        if (st && !b.buffer[i]) st = tensor_alloc(arena, b.param_shape[i], &b.grads[i], b.name);
        if (b.buffer[i]) b.grads[i] = Tensor{};
    }
    if (b.kind == LayerKind::Conv2D) {
        Conv2dGeom g;
        if (!(st = conv_geometry(b, in, max_batch, &g))) return st;
        const size_t col = conv2d_scratch_floats(g), pack = conv2d_pack_floats(g);
        if (!b.pack && !b.pack_shared) {
            b.pack_slots = 1;
            b.pack_stride = pack;
            if (pack) b.pack = arena.alloc_floats(pack, &st, b.name);
        }
        // One col scratch per GEMM slot: the forward pass splits the batch
        // over that many threads (conv_layer_forward).
        size_t floats = 0;
        if (!size_mul(gemm_round_up(col, 16), (size_t)b.pack_slots, &floats))
            return errorf("Conv2D \"%s\": scratch for %d threads overflows", b.name, b.pack_slots);
        if (floats) b.scratch = arena.alloc_floats(floats, &st, b.name);
    }
    if (b.kind == LayerKind::BatchNorm) b.scratch = arena.alloc_floats(2 * (size_t)b.in_channels, &st, b.name);
    if (b.kind == LayerKind::MaxPool2D) {
        size_t bytes = 0;
        if (!size_mul(rows_out, sizeof(int32_t), &bytes))
            return errorf("MaxPool2D \"%s\": %zu argmax indices overflow", b.name, rows_out);
        b.indices = static_cast<int32_t*>(arena.alloc(bytes, &st, b.name));
    }
    if (b.kind == LayerKind::Dense) {
        if (b.act != Act::None) b.scratch = arena.alloc_floats(rows_out, &st, b.name);
        if (b.act == Act::Softmax) b.logits = arena.alloc_floats(rows_out, &st, b.name);
        if (!b.pack && !b.pack_shared) {
            size_t floats = 0;
            b.pack_slots = num_threads();
            b.pack_stride = 0;
            if (!size_mul(gemm_pack_floats(), (size_t)b.pack_slots, &floats))
                return errorf("layer \"%s\": GEMM scratch for %d threads overflows", b.name, b.pack_slots);
            b.pack = arena.alloc_floats(floats, &st, b.name);
        }
    }
    if (b.kind == LayerKind::Dropout) b.mask = arena.alloc_floats(rows_out, &st, b.name);
    if (b.kind == LayerKind::Recurrent) {
        const RnnLayout lay = rnn_layout(b, max_batch);
        if (lay.total == 0) return errorf("%s \"%s\": scratch size overflows", b.type_name(), b.name);
        b.scratch = arena.alloc_floats(lay.total, &st, b.name);
        const size_t states = (size_t)b.num_layers * (size_t)max_batch * (size_t)b.hidden_size;
        if (st) b.hn = arena.alloc_floats(states, &st, b.name);
        if (st && b.cell == RnnCell::LSTM) b.cn = arena.alloc_floats(states, &st, b.name);
        if (st && !b.pack && !b.pack_shared) {
            b.pack_slots = 1;
            b.pack_stride = rnn_pack_floats(b, in, max_batch);
            b.pack = arena.alloc_floats(b.pack_stride, &st, b.name);
        }
    }
    if (!st) return st;
    b.built = true;
    b.rng.seed_with(seed ^ 0x9e3779b97f4a7c15ULL);
    if (!arena.measuring) {
        Rng init_rng(seed);
        if (b.kind == LayerKind::Dense || b.kind == LayerKind::Conv2D) weight_init(b, init_rng);
        if (b.kind == LayerKind::BatchNorm) batchnorm_init(b);
        if (b.kind == LayerKind::Recurrent) rnn_init(b, init_rng);
        if (b.kind == LayerKind::Embedding)
            for (size_t i = 0; i < b.params[0].numel(); ++i) b.params[0].data[i] = init_rng.normal();
        if (b.kind == LayerKind::Custom && b.custom->init) b.custom->init(b, init_rng);
        zero_grad(b);
    }
    L = b;
    return Status{};
}

// x must be (B, in_shape...) with B <= max_batch; y (when given) must hold B
// rows of `row` values: the output in forward, dx (= in_shape) in backward.
static Status check_io(const Layer& L, const Tensor& y, const Tensor& x, const char* what, const Shape& row) {
    if (!L.built) return errorf("layer \"%s\" (%s): %s before build()", L.name, L.type_name(), what);
    int B = x.shape.dim[0];
    if (x.shape.ndim < 2 || B < 1 || x.row_size() != L.in_shape.numel()) {
        char a[64], e[64];
        return errorf("layer \"%s\" (%s): %s got input %s, expects (B, %s) samples of %zu values",
                      L.name, L.type_name(), what, shape_str(x.shape, a, sizeof a),
                      shape_str(L.in_shape, e, sizeof e), L.in_shape.numel());
    }
    if (B > L.max_batch)
        return errorf("layer \"%s\" (%s): batch of %d exceeds the max_batch %d it was built for",
                      L.name, L.type_name(), B, L.max_batch);
    if (y.data && (y.shape.dim[0] != B || y.row_size() != row.numel())) {
        char a[64];
        return errorf("layer \"%s\" (%s): %s tensor %s does not hold %d x %zu values",
                      L.name, L.type_name(), what, shape_str(y.shape, a, sizeof a), B, row.numel());
    }
    return Status{};
}

// act(z) in place on (rows, cols); a Softmax keeps the logits for the fused
// cross-entropy.
static void activation_forward(const Layer& L, float* y, const float* x, size_t rows, size_t cols) {
    const size_t n = rows * cols;
    switch (L.act) {
        case Act::None:
            if (y != x) std::memcpy(y, x, n * sizeof(float));
            break;
        case Act::ReLU: leaky_relu_forward(y, x, 0.0f, n); break;
        case Act::LeakyReLU: leaky_relu_forward(y, x, L.leaky_slope, n); break;
        case Act::Sigmoid: sigmoid_forward(y, x, n); break;
        case Act::Tanh: tanh_forward(y, x, n); break;
        case Act::Softmax: softmax_forward(y, x, rows, cols); break;
    }
}

static void activation_backward(const Layer& L, float* dx, const float* dy, const float* y,
                                size_t rows, size_t cols) {
    const size_t n = rows * cols;
    switch (L.act) {
        case Act::None:
            if (dx != dy) std::memcpy(dx, dy, n * sizeof(float));
            break;
        case Act::ReLU: leaky_relu_backward(dx, dy, y, 0.0f, n); break;
        case Act::LeakyReLU: leaky_relu_backward(dx, dy, y, L.leaky_slope, n); break;
        case Act::Sigmoid: sigmoid_backward(dx, dy, y, n); break;
        case Act::Tanh: tanh_backward(dx, dy, y, n); break;
        case Act::Softmax: softmax_backward(dx, dy, y, rows, cols); break;
    }
}

// Scratch one Dense layer's three GEMMs need at batch B.
static size_t dense_pack_floats(int in, int out, int B) {
    size_t n = gemm_pack_floats(B, out, in);              // forward
    if (gemm_dense_forward_transposed(B, in, out)) {      // forward as y^T = W x^T
        const size_t t = gemm_dense_forward_transposed_floats(B, in, out);
        n = t > n ? t : n;
    }
    size_t w = gemm_pack_floats(out, in, B);              // weight gradient
    size_t d = gemm_pack_floats(B, in, out);              // input gradient
    return n > w ? (n > d ? n : d) : (w > d ? w : d);
}

// One GEMM of a layer, on as many threads as the layer has scratch slots and
// the shape can use (see gemm_share in kernels/gemm.hpp: the result does not
// depend on the thread count).
struct GemmJob {
    float* C;
    const float *A, *B;
    int ldc, lda, ldb, M, N, K;
    bool trans_a, trans_b;
    GemmEpilogue ep;
    float alpha, beta;
    float* pack;
    size_t pack_stride;
};

static void gemm_job_part(void* ctx, int ith, int nth) {
    const GemmJob& j = *static_cast<const GemmJob*>(ctx);
    gemm_f32_part(ith, nth, j.C, j.ldc, j.A, j.lda, j.trans_a, j.B, j.ldb, j.trans_b, j.ep, j.alpha,
                  j.beta, j.pack + (ptrdiff_t)(j.pack_stride * (size_t)ith), j.M, j.N, j.K);
}

static void layer_gemm(const Layer& L, GemmJob j) {
    j.pack = L.pack;
    j.pack_stride = L.pack_stride ? L.pack_stride : gemm_pack_floats();
    int most = num_threads() < L.pack_slots ? num_threads() : L.pack_slots;
    const int nth = gemm_useful_threads(j.M, j.N, j.K, most);
    if (nth <= 1)
        gemm_f32_fused(j.C, j.ldc, j.A, j.lda, j.trans_a, j.B, j.ldb, j.trans_b, j.ep, j.alpha, j.beta,
                       j.pack, j.M, j.N, j.K);
    else
        parallel_for(nth, gemm_job_part, &j);
}

// Sigmoid and tanh as a GEMM epilogue: on each finished tile, in L1.
static void tile_sigmoid(float* c, int ldc, int mr, int nr, const void*) {
    for (int i = 0; i < mr; ++i) sigmoid_forward(c + (ptrdiff_t)i * ldc, c + (ptrdiff_t)i * ldc, (size_t)nr);
}
static void tile_tanh(float* c, int ldc, int mr, int nr, const void*) {
    for (int i = 0; i < mr; ++i) tanh_forward(c + (ptrdiff_t)i * ldc, c + (ptrdiff_t)i * ldc, (size_t)nr);
}

// x is (B, in), W is (out, in), y is (B, out):  y = act(x W^T + b)
// Bias and activation are applied as each output tile is stored (see
// GemmEpilogue); only softmax, which needs whole rows, takes a second pass.
static void dense_forward(Layer& L, float* y, const float* x, int B) {
    const int in = L.in_features, out = L.units;
    const size_t stride = L.pack_stride ? L.pack_stride : gemm_pack_floats();
    if (gemm_dense_forward_transposed(B, in, out) && gemm_dense_forward_transposed_floats(B, in, out) <= stride) {
        // ct = y^T = W x^T: W read in place, only x^T packed; then y = act(ct^T + b)
        // (kernels/gemm.hpp, 4b). ct sits in the first scratch slot, past
        // the packing of every thread's share.
        float* ct = L.pack + gemm_round_up(gemm_pack_floats(out, B, in), 16);
        GemmJob j{};
        j.C = ct, j.ldc = B;
        j.A = L.params[0].data, j.lda = in;
        j.B = x, j.ldb = in, j.trans_b = true;
        j.M = out, j.N = B, j.K = in;
        j.alpha = 1.0f, j.beta = 0.0f;
        layer_gemm(L, j);
        const bool relu = L.act == Act::ReLU || L.act == Act::LeakyReLU;
        float* z = L.act == Act::Softmax ? L.logits : y;
        transpose_bias_act_f32(z, out, ct, B, L.use_bias ? L.params[1].data : nullptr, B, out, relu,
                               L.act == Act::LeakyReLU ? L.leaky_slope : 0.0f);
        const size_t n = (size_t)B * (size_t)out;
        if (L.act == Act::Sigmoid) sigmoid_forward(y, y, n);
        if (L.act == Act::Tanh) tanh_forward(y, y, n);
        if (L.act == Act::Softmax) softmax_forward(y, L.logits, (size_t)B, (size_t)out);
        return;
    }
    GemmJob j{};
    j.C = L.act == Act::Softmax ? L.logits : y;
    j.ldc = out;
    j.A = x;
    j.lda = in;
    j.B = L.params[0].data;
    j.ldb = in;
    j.trans_b = true;
    j.M = B, j.N = out, j.K = in;
    j.alpha = 1.0f, j.beta = 0.0f;
    j.ep.bias = L.use_bias ? L.params[1].data : nullptr;
    switch (L.act) {
        case Act::ReLU: j.ep.relu = true; break;
        case Act::LeakyReLU: j.ep.relu = true, j.ep.slope = L.leaky_slope; break;
        case Act::Sigmoid: j.ep.tile_fn = tile_sigmoid; break;
        case Act::Tanh: j.ep.tile_fn = tile_tanh; break;
        case Act::None:
        case Act::Softmax: break;
    }
    layer_gemm(L, j);
    if (L.act == Act::Softmax) softmax_forward(y, L.logits, (size_t)B, (size_t)out);
}

// dz is (B, out), the gradient before the activation:
// dW += dz^T x, db += sum_rows dz, dx = dz W (when dx is wanted).
// overwrite: dW = ..., db = ... instead (the model's step, whose layers are
// each used once, saves zeroing the gradients and reading them back).
static void dense_backward_z(Layer& L, float* dx, const float* dz, const float* x, int B,
                             bool overwrite = false) {
    const int in = L.in_features, out = L.units;
    GemmJob j{};
    j.C = L.grads[0].data, j.ldc = in;  // (out, in)
    j.A = dz, j.lda = out, j.trans_a = true;
    j.B = x, j.ldb = in;
    j.M = out, j.N = in, j.K = B;
    j.alpha = 1.0f, j.beta = overwrite ? 0.0f : 1.0f;
    layer_gemm(L, j);
    if (L.use_bias) {
        if (overwrite) std::memset(L.grads[1].data, 0, (size_t)out * sizeof(float));
        column_sum_accumulate(L.grads[1].data, dz, (size_t)B, (size_t)out);
    }
    if (dx) {
        GemmJob d{};
        d.C = dx, d.ldc = in;  // (B, in)
        d.A = dz, d.lda = out;
        d.B = L.params[0].data, d.ldb = in;
        d.M = B, d.N = in, d.K = out;
        d.alpha = 1.0f, d.beta = 0.0f;
        layer_gemm(L, d);
    }
}

// Rows of a Dense layer's GEMM: one per sample, or per step of each sample
// when it is time-distributed over (T, in) samples.
static int dense_rows(const Layer& L, int B) {
    return B * (int)(L.in_shape.numel() / (size_t)L.in_features);
}

// --- Recurrent layers: forward and backward through time -------------------------

// C (M x N, ldc) := A (M x K, lda) B (K x N, ldb) + beta C, with A and B
// optionally transposed; the layer's packing scratch.
static void rnn_gemm(const Layer& L, float* C, int ldc, const float* A, int lda, bool ta, const float* B, int ldb,
                     bool tb, int M, int N, int K, float beta) {
    GemmJob j{};
    j.C = C, j.ldc = ldc;
    j.A = A, j.lda = lda, j.trans_a = ta;
    j.B = B, j.ldb = ldb, j.trans_b = tb;
    j.M = M, j.N = N, j.K = K;
    j.alpha = 1.0f, j.beta = beta;
    layer_gemm(L, j);
}

// Which samples still run at step t (kernels/rnn.hpp's keep): null when all do.
static const float* rnn_keep_mask(const Layer& L, float* buf, int t, int B) {
    if (!L.lengths) return nullptr;
    bool all = true;
    for (int b = 0; b < B; ++b) {
        buf[b] = t < L.lengths[b] ? 1.0f : 0.0f;
        all = all && t < L.lengths[b];
    }
    return all ? nullptr : buf;
}

static Status rnn_check_lengths(const Layer& L, int B) {
    const int T = L.in_shape.dim[0];
    if (!L.lengths) return Status{};
    for (int b = 0; b < B; ++b)
        if (L.lengths[b] < 1 || L.lengths[b] > T)
            return errorf("%s \"%s\": length %d of sample %d is outside 1..%d (the sequence has %d steps)",
                          L.type_name(), L.name, (int)L.lengths[b], b, T, T);
    return Status{};
}

// x (B, T, F) -> y (B, T, H) or (B, H); keeps every layer's gates and states
// in scratch for backward, and the final states in hn/cn.
static Status rnn_layer_forward(Layer& L, float* y, const float* x, int B) {
    Status st = rnn_check_lengths(L, B);
    if (!st) return st;
    const RnnLayout lay = rnn_layout(L, L.max_batch);
    float* S = L.scratch;
    const int T = L.in_shape.dim[0], F0 = L.in_features, H = L.hidden_size, G = rnn_gates(L);
    const int GH = G * H, TB = T * B;
    const bool lstm = L.cell == RnnCell::LSTM, gru = L.cell == RnnCell::GRU;
    const bool relu = L.cell == RnnCell::RnnReLU;
    float* keep_buf = S + lay.keep;

    // The input and the initial states, feature-major.
    float* xT = S + lay.xT;
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t)
            for (int f = 0; f < F0; ++f) xT[(size_t)f * TB + (size_t)t * B + b] = x[((size_t)b * T + t) * F0 + f];
    for (int k = 0; k < L.num_layers; ++k)
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < H; ++j) {
                const size_t src = ((size_t)k * B + b) * H + j, dst = ((size_t)k * H + j) * B + b;
                if (L.h0) S[lay.h0T + dst] = L.h0[src];
                if (lstm && L.c0) S[lay.c0T + dst] = L.c0[src];
            }

    // loop over stacked layers k, bottom up
    for (int k = 0; k < L.num_layers; ++k) {
        const int F = k == 0 ? F0 : H;
        const float* in = k == 0 ? xT : S + lay.hs[k - 1];
        const float* Wih = L.params[4 * k].data;
        const float* Whh = L.params[4 * k + 1].data;
        const float* bih = L.params[4 * k + 2].data;
        const float* bhh = L.params[4 * k + 3].data;
        float* Gk = S + lay.G[k];
        float* hs = S + lay.hs[k];
        float* cs = lstm ? S + lay.cs[k] : nullptr;
        const float* h0 = L.h0 ? S + lay.h0T + (size_t)k * H * B : nullptr;
        const float* c0 = lstm && L.c0 ? S + lay.c0T + (size_t)k * H * B : nullptr;

        // All steps' input projections at once: G = W_ih X, plus the biases
        // that do not meet the reset gate (all of them but GRU's b_hn).
        rnn_gemm(L, Gk, TB, Wih, F, false, in, TB, false, GH, TB, F, 0.0f);
        float* bsum = S + lay.bsum;
        for (int g = 0; g < GH; ++g) bsum[g] = bih[g] + (gru ? 0.0f : bhh[g]);
        for (int g = 0; g < GH; ++g) add_scalar_f32(Gk + (size_t)g * TB, bsum[g], (size_t)TB);

        // loop over time steps t: the recurrence
        for (int t = 0; t < T; ++t) {
            const float* keep = rnn_keep_mask(L, keep_buf, t, B);
            const float* hp = t > 0 ? hs + (size_t)(t - 1) * B : h0;
            const float* cp = t > 0 && lstm ? cs + (size_t)(t - 1) * B : c0;
            const size_t ldp = t > 0 ? (size_t)TB : (size_t)B;
            float* Gt = Gk + (size_t)t * B;
            float* ht = hs + (size_t)t * B;
            if (gru) {
                float* gh = S + lay.gh;  // W_hh h_prev + b_hh, (3H, B)
                if (hp) rnn_gemm(L, gh, B, Whh, H, false, hp, (int)ldp, false, GH, B, H, 0.0f);
                else std::memset(gh, 0, (size_t)GH * B * sizeof(float));
                for (int g = 0; g < GH; ++g)
                    for (int b = 0; b < B; ++b) gh[(size_t)g * B + b] += bhh[g];
                gru_cell_forward(ht, TB, Gt, TB, gh, B, S + lay.hn[k] + (size_t)t * B, hp, ldp, keep, H, B);
                continue;
            }
            if (hp) rnn_gemm(L, Gt, TB, Whh, H, false, hp, (int)ldp, false, GH, B, H, 1.0f);
            if (lstm) lstm_cell_forward(ht, cs + (size_t)t * B, TB, Gt, TB, hp, cp, ldp, keep, H, B);
            else rnn_cell_forward(ht, TB, Gt, TB, hp, ldp, relu, keep, H, B);
        }
    }

    // The output, batch-first; steps past a sample's length are 0.
    const float* top = S + lay.hs[L.num_layers - 1];
    for (int b = 0; b < B; ++b) {
        const int len = L.lengths ? L.lengths[b] : T;
        if (L.return_sequences) {
            for (int t = 0; t < T; ++t)
                for (int j = 0; j < H; ++j)
                    y[((size_t)b * T + t) * H + j] = t < len ? top[(size_t)j * TB + (size_t)t * B + b] : 0.0f;
        } else {
            for (int j = 0; j < H; ++j) y[(size_t)b * H + j] = top[(size_t)j * TB + (size_t)(T - 1) * B + b];
        }
    }
    // Final states: the last step's, which ended samples carried forward.
    for (int k = 0; k < L.num_layers; ++k)
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < H; ++j) {
                const size_t col = (size_t)j * TB + (size_t)(T - 1) * B + b;
                L.hn[((size_t)k * B + b) * H + j] = S[lay.hs[k] + col];
                if (lstm) L.cn[((size_t)k * B + b) * H + j] = S[lay.cs[k] + col];
            }
    return Status{};
}

// dy (B, T, H) or (B, H) -> parameter gradients (+=) and dx (B, T, F) when
// dx is not null, by backpropagation through time over what forward kept.
static void rnn_layer_backward(Layer& L, float* dx, const float* dy, int B) {
    const RnnLayout lay = rnn_layout(L, L.max_batch);
    float* S = L.scratch;
    const int T = L.in_shape.dim[0], F0 = L.in_features, H = L.hidden_size, G = rnn_gates(L);
    const int GH = G * H, TB = T * B;
    const bool lstm = L.cell == RnnCell::LSTM, gru = L.cell == RnnCell::GRU;
    const bool relu = L.cell == RnnCell::RnnReLU;
    float* keep_buf = S + lay.keep;
    float* dOut = S + lay.dA;  // dL/d(this layer's output sequence), (H, T*B)
    float* dIn = S + lay.dB;   // dL/d(its input sequence), (F, T*B)
    float* dG = S + lay.dG;
    float* dGh = S + lay.dGh;
    float* dh = S + lay.dh;
    float* dc = S + lay.dc;
    float* whhT = S + lay.whhT;

    // The top layer's output gradient, feature-major; 0 past each length.
    std::memset(dOut, 0, (size_t)H * TB * sizeof(float));
    for (int b = 0; b < B; ++b) {
        const int len = L.lengths ? L.lengths[b] : T;
        if (L.return_sequences) {
            for (int t = 0; t < len; ++t)
                for (int j = 0; j < H; ++j) dOut[(size_t)j * TB + (size_t)t * B + b] = dy[((size_t)b * T + t) * H + j];
        } else {  // the last state is the one at step len - 1 (the steps after it only carried it)
            for (int j = 0; j < H; ++j) dOut[(size_t)j * TB + (size_t)(len - 1) * B + b] = dy[(size_t)b * H + j];
        }
    }

    // loop over stacked layers k, top down
    for (int k = L.num_layers - 1; k >= 0; --k) {
        const int F = k == 0 ? F0 : H;
        const float* in = k == 0 ? S + lay.xT : S + lay.hs[k - 1];
        const float* Wih = L.params[4 * k].data;
        const float* Whh = L.params[4 * k + 1].data;
        const float* Gk = S + lay.G[k];
        const float* hs = S + lay.hs[k];
        const float* cs = lstm ? S + lay.cs[k] : nullptr;
        const float* h0 = L.h0 ? S + lay.h0T + (size_t)k * H * B : nullptr;
        const float* c0 = lstm && L.c0 ? S + lay.c0T + (size_t)k * H * B : nullptr;
        for (int g = 0; g < GH; ++g)  // W_hh^T, so that the step GEMM reads it in place
            for (int j = 0; j < H; ++j) whhT[(size_t)j * GH + g] = Whh[(size_t)g * H + j];
        std::memset(dh, 0, (size_t)H * B * sizeof(float));
        std::memset(dc, 0, (size_t)H * B * sizeof(float));

        // loop over time steps t, last first
        for (int t = T - 1; t >= 0; --t) {
            // Truncation: nothing flows from step t+1 into step t across a window edge.
            if (L.bptt_window > 0 && t < T - 1 && (t + 1) % L.bptt_window == 0) {
                std::memset(dh, 0, (size_t)H * B * sizeof(float));
                std::memset(dc, 0, (size_t)H * B * sizeof(float));
            }
            for (int j = 0; j < H; ++j) add_rows_f32(dh + (size_t)j * B, dOut + (size_t)j * TB + (size_t)t * B, (size_t)B);
            const float* keep = rnn_keep_mask(L, keep_buf, t, B);
            const float* hp = t > 0 ? hs + (size_t)(t - 1) * B : h0;
            const size_t ldp = t > 0 ? (size_t)TB : (size_t)B;
            const size_t col = (size_t)t * B;
            if (lstm) {
                const float* cp = t > 0 ? cs + (size_t)(t - 1) * B : c0;
                lstm_cell_backward(dG + col, TB, dh, dc, Gk + col, cs + col, TB, cp, ldp, keep, S + lay.tc, H, B);
            } else if (gru) {
                gru_cell_backward(dG + col, dGh + col, TB, dh, Gk + col, S + lay.hn[k] + col, TB, hp, ldp, keep, H, B);
            } else {
                rnn_cell_backward(dG + col, TB, dh, hs + col, TB, relu, keep, H, B);
            }
            // dh_{t-1} += W_hh^T dGh_t (ended samples have dGh = 0 and keep dh).
            if (t > 0) rnn_gemm(L, dh, B, whhT, GH, false, dGh + col, TB, false, H, B, GH, 1.0f);
        }

        // The weight and bias gradients, one GEMM each over all steps.
        rnn_gemm(L, L.grads[4 * k].data, F, dG, TB, false, in, TB, true, GH, F, TB, 1.0f);
        if (T > 1) rnn_gemm(L, L.grads[4 * k + 1].data, H, dGh + B, TB, false, hs, TB, true, GH, H, TB - B, 1.0f);
        if (h0) rnn_gemm(L, L.grads[4 * k + 1].data, H, dGh, TB, false, h0, B, true, GH, H, B, 1.0f);
        float* dbih = L.grads[4 * k + 2].data;
        float* dbhh = L.grads[4 * k + 3].data;
        for (int g = 0; g < GH; ++g) {
            dbih[g] += row_sum_f32(dG + (size_t)g * TB, (size_t)TB);
            dbhh[g] += row_sum_f32(dGh + (size_t)g * TB, (size_t)TB);
        }
        // The input's gradient: the layer below's output gradient, or dx.
        if (k > 0 || dx) {
            rnn_gemm(L, dIn, TB, Wih, F, true, dG, TB, false, F, TB, GH, 0.0f);
            float* tmp = dOut;
            dOut = dIn;
            dIn = tmp;
        }
    }
    if (dx)  // dOut now holds dL/dx, feature-major
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < T; ++t)
                for (int f = 0; f < F0; ++f)
                    dx[((size_t)b * T + t) * F0 + f] = dOut[(size_t)f * TB + (size_t)t * B + b];
}

// --- Embedding -----------------------------------------------------------------------

// ids (B, T) -> y (B, T, D): a row of the table per id. Every id is checked
// before anything is written.
static Status embedding_forward(const Layer& L, float* y, const float* ids, int B) {
    const size_t n = (size_t)B * L.in_shape.numel(), D = (size_t)L.embedding_dim;
    const int T = L.in_shape.dim[0];
    for (size_t i = 0; i < n; ++i) {
        const float v = ids[i];
        if (!(v >= 0.0f && v < (float)L.num_embeddings) || v != (float)(int)v)
            return errorf("Embedding \"%s\": token id %g at sample %zu, step %zu is not a whole number in "
                          "[0, %d) (the vocabulary)", L.name, (double)v, i / (size_t)T, i % (size_t)T,
                          L.num_embeddings);
    }
    const float* W = L.params[0].data;
    for (size_t i = 0; i < n; ++i) std::memcpy(y + i * D, W + (size_t)ids[i] * D, D * sizeof(float));
    return Status{};
}

// dW[id] += dy for every id used; the ids themselves take no gradient.
static void embedding_backward(Layer& L, float* dx, const float* dy, const float* ids, int B) {
    const size_t n = (size_t)B * L.in_shape.numel(), D = (size_t)L.embedding_dim;
    float* dW = L.grads[0].data;
    for (size_t i = 0; i < n; ++i) {
        float* row = dW + (size_t)ids[i] * D;
        const float* g = dy + i * D;
        for (size_t d = 0; d < D; ++d) row[d] += g[d];
    }
    if (dx) std::memset(dx, 0, n * sizeof(float));
}

// --- Image layers: geometry from the layer, then one kernel ---------------------

// x (B, C_in, H, W) -> y (B, C_out, OH, OW), by kernels/conv.hpp's path.
// Samples are independent in the forward pass: thread ith of nth takes
// samples [B ith / nth, B (ith + 1) / nth) with its own col scratch and GEMM
// packing slot, and computes each sample exactly as one thread would.
struct ConvForwardJob {
    const Layer* L;
    float* y;
    const float* x;
    Conv2dGeom g;  // for the whole batch
    size_t col_stride, pack_stride;
};

static void conv_forward_part(void* ctx, int ith, int nth) {
    const ConvForwardJob& j = *static_cast<const ConvForwardJob*>(ctx);
    const int n0 = (int)((long long)j.g.N * ith / nth), n1 = (int)((long long)j.g.N * (ith + 1) / nth);
    if (n1 <= n0) return;
    Conv2dGeom g = j.g;
    g.N = n1 - n0;
    const size_t in = (size_t)g.C_in * g.H * g.W, out = (size_t)g.C_out * g.OH * g.OW;
    const Layer& L = *j.L;
    conv2d_forward(j.y + out * (size_t)n0, j.x + in * (size_t)n0, L.params[0].data,
                   L.use_bias ? L.params[1].data : nullptr, g, L.scratch ? L.scratch + j.col_stride * (size_t)ith : nullptr,
                   L.pack ? L.pack + j.pack_stride * (size_t)ith : nullptr);
}

static void conv_layer_forward(Layer& L, float* y, const float* x, int B) {
    ConvForwardJob j{&L, y, x, {}, 0, 0};
    const Status st = conv_geometry(L, L.in_shape, B, &j.g);
    NN_ASSERT(st.ok());  // build checked it
    (void)st;
    j.col_stride = gemm_round_up(conv2d_scratch_floats(j.g), 16);
    j.pack_stride = L.pack_stride;
    int nth = num_threads() < L.pack_slots ? num_threads() : L.pack_slots;
    if (nth > B) nth = B;
    if (nth <= 1)
        conv_forward_part(&j, 0, 1);
    else
        parallel_for(nth, conv_forward_part, &j);
}

// dx = dL/dx (when wanted), dW += ..., db += ... (or = with overwrite).
static void conv_layer_backward(Layer& L, float* dx, const float* dy, const float* x, int B, bool overwrite) {
    Conv2dGeom g;
    const Status st = conv_geometry(L, L.in_shape, B, &g);
    NN_ASSERT(st.ok());
    (void)st;
    if (overwrite) zero_grad(L);
    conv2d_backward(dx, L.grads[0].data, L.use_bias ? L.grads[1].data : nullptr, dy, x, L.params[0].data, g,
                    L.scratch, L.pack);
}

static PoolGeom layer_pool_geometry(const Layer& L) {
    PoolGeom g;
    const Status st = pool_geometry(L, L.in_shape, &g);
    NN_ASSERT(st.ok());
    (void)st;
    return g;
}

// Training normalises with the batch's statistics and updates the running
// ones; eval uses the running ones. The batch's mean and 1/std stay in
// scratch for backward.
static Status batchnorm_layer_forward(Layer& L, float* y, const float* x, int B, Mode mode) {
    const size_t C = (size_t)L.in_channels, plane = L.in_shape.numel() / C;
    const int r = bn_running(L);
    const float* gamma = L.affine ? L.params[0].data : nullptr;
    const float* beta = L.affine ? L.params[1].data : nullptr;
    float *rm = L.params[r].data, *rv = L.params[r + 1].data;
    if (mode == Mode::Eval) {
        batchnorm_forward_eval(y, x, gamma, beta, rm, rv, L.eps, (size_t)B, C, plane);
        return Status{};
    }
    if ((size_t)B * plane < 2)
        return errorf("%s \"%s\": training needs more than one value per channel (got a batch of %d x %zu); "
                      "use batches of 2 or more", L.type_name(), L.name, B, plane);
    batchnorm_forward_train(y, L.scratch, L.scratch + C, rm, rv, x, gamma, beta, L.momentum, L.eps, (size_t)B, C,
                            plane);
    return Status{};
}

static void batchnorm_layer_backward(Layer& L, float* dx, const float* dy, const float* x, int B,
                                     bool overwrite) {
    const size_t C = (size_t)L.in_channels, plane = L.in_shape.numel() / C;
    const int r = bn_running(L);
    const float* gamma = L.affine ? L.params[0].data : nullptr;
    float* dgamma = L.affine ? L.grads[0].data : nullptr;
    float* dbeta = L.affine ? L.grads[1].data : nullptr;
    if (overwrite) zero_grad(L);
    if (L.last_mode == Mode::Train)
        batchnorm_backward_train(dx, dgamma, dbeta, dy, x, L.scratch, L.scratch + C, gamma, (size_t)B, C, plane);
    else
        batchnorm_backward_eval(dx, dgamma, dbeta, L.scratch + C, dy, x, L.params[r].data, L.params[r + 1].data,
                                gamma, L.eps, (size_t)B, C, plane);
}

// --- The LayerCode tables (see make_layer) ---------------------------------

static Status conv2d_code_forward(Layer& L, float* y, const float* x, int B, Mode) {
    conv_layer_forward(L, y, x, B);
    return Status{};
}
static void conv2d_code_backward(Layer& L, float* dx, const float* dy, const float* x, const float*, int B,
                                 bool overwrite_grads) {
    conv_layer_backward(L, dx, dy, x, B, overwrite_grads);
}
static const LayerCode* conv2d_code() {
    static const LayerCode code = {conv2d_code_forward, conv2d_code_backward};
    return &code;
}

static Status maxpool2d_code_forward(Layer& L, float* y, const float* x, int B, Mode) {
    maxpool2d_forward(y, L.indices, x, layer_pool_geometry(L), (size_t)B, (size_t)L.in_shape.dim[0]);
    if (L.relu_after_pool) leaky_relu_forward(y, y, 0.0f, (size_t)B * L.out_shape.numel());
    return Status{};
}
static void maxpool2d_code_backward(Layer& L, float* dx, const float* dy, const float*, const float* y, int B, bool) {
    if (dx)
        maxpool2d_backward(dx, dy, L.indices, layer_pool_geometry(L), (size_t)B, (size_t)L.in_shape.dim[0],
                           L.relu_after_pool ? y : nullptr);
}
static const LayerCode* maxpool2d_code() {
    static const LayerCode code = {maxpool2d_code_forward, maxpool2d_code_backward};
    return &code;
}

static Status avgpool2d_code_forward(Layer& L, float* y, const float* x, int B, Mode) {
    avgpool2d_forward(y, x, layer_pool_geometry(L), L.count_include_pad, (size_t)B, (size_t)L.in_shape.dim[0]);
    return Status{};
}
static void avgpool2d_code_backward(Layer& L, float* dx, const float* dy, const float*, const float*, int B, bool) {
    if (dx)
        avgpool2d_backward(dx, dy, layer_pool_geometry(L), L.count_include_pad, (size_t)B,
                           (size_t)L.in_shape.dim[0]);
}
static const LayerCode* avgpool2d_code() {
    static const LayerCode code = {avgpool2d_code_forward, avgpool2d_code_backward};
    return &code;
}

static size_t layer_plane(const Layer& L) { return (size_t)L.in_shape.dim[1] * (size_t)L.in_shape.dim[2]; }
static Status global_avgpool_code_forward(Layer& L, float* y, const float* x, int B, Mode) {
    global_avgpool_forward(y, x, (size_t)B, (size_t)L.in_shape.dim[0], layer_plane(L));
    return Status{};
}
static void global_avgpool_code_backward(Layer& L, float* dx, const float* dy, const float*, const float*, int B,
                                         bool) {
    if (dx) global_avgpool_backward(dx, dy, (size_t)B, (size_t)L.in_shape.dim[0], layer_plane(L));
}
static const LayerCode* global_avgpool_code() {
    static const LayerCode code = {global_avgpool_code_forward, global_avgpool_code_backward};
    return &code;
}

static Status batchnorm_code_forward(Layer& L, float* y, const float* x, int B, Mode mode) {
    return batchnorm_layer_forward(L, y, x, B, mode);
}
static void batchnorm_code_backward(Layer& L, float* dx, const float* dy, const float* x, const float*, int B,
                                    bool overwrite_grads) {
    batchnorm_layer_backward(L, dx, dy, x, B, overwrite_grads);
}
static const LayerCode* batchnorm_code() {
    static const LayerCode code = {batchnorm_code_forward, batchnorm_code_backward};
    return &code;
}

static Status recurrent_code_forward(Layer& L, float* y, const float* x, int B, Mode) {
    return rnn_layer_forward(L, y, x, B);
}
static void recurrent_code_backward(Layer& L, float* dx, const float* dy, const float*, const float*, int B,
                                    bool overwrite_grads) {
    if (overwrite_grads) zero_grad(L);
    rnn_layer_backward(L, dx, dy, B);
}
static const LayerCode* recurrent_code() {
    static const LayerCode code = {recurrent_code_forward, recurrent_code_backward};
    return &code;
}

static Status embedding_code_forward(Layer& L, float* y, const float* x, int B, Mode) {
    return embedding_forward(L, y, x, B);
}
static void embedding_code_backward(Layer& L, float* dx, const float* dy, const float* x, const float*, int B,
                                    bool overwrite_grads) {
    if (overwrite_grads) zero_grad(L);
    embedding_backward(L, dx, dy, x, B);
}
static const LayerCode* embedding_code() {
    static const LayerCode code = {embedding_code_forward, embedding_code_backward};
    return &code;
}

Status forward(Layer& L, Tensor y, const Tensor& x, Mode mode) {
    Status st = check_io(L, y, x, "forward output", L.out_shape);
    if (!st) return st;
    if (!y.data) return errorf("layer \"%s\": forward needs an output tensor", L.name);
    const int B = x.shape.dim[0];
    const size_t n = x.numel();
    L.last_mode = mode;
    switch (L.kind) {
        case LayerKind::Dense: dense_forward(L, y.data, x.data, dense_rows(L, B)); break;
        case LayerKind::Activation:
            if (L.passthrough) {  // the MaxPool2D after it applies the ReLU
                if (y.data != x.data) std::memcpy(y.data, x.data, n * sizeof(float));
                break;
            }
            activation_forward(L, y.data, x.data, (size_t)B, x.row_size());
            break;
        case LayerKind::Dropout:
            if (mode == Mode::Train && L.rate > 0.0f) {
                const float keep = 1.0f / (1.0f - L.rate);
                for (size_t i = 0; i < n; ++i) L.mask[i] = L.rng.uniform() < L.rate ? 0.0f : keep;
                multiply(y.data, x.data, L.mask, n);
            } else if (y.data != x.data) {
                std::memcpy(y.data, x.data, n * sizeof(float));
            }
            break;
        case LayerKind::Flatten:
            if (y.data != x.data) std::memcpy(y.data, x.data, n * sizeof(float));
            break;
        case LayerKind::Custom: L.custom->forward(L, y, x, mode); break;
        default:  // the kinds with large kernels (layer_uses_code); build checked L.code
            return L.code->forward(L, y.data, x.data, B, mode);
    }
    return Status{};
}

static Status backward_impl(Layer& L, Tensor dx, const Tensor& dy, const Tensor& x, const Tensor& y,
                            bool overwrite_grads) {
    Status st = check_io(L, dx, x, "backward input-gradient", L.in_shape);
    if (!st) return st;
    if (dy.numel() != (size_t)x.shape.dim[0] * L.out_shape.numel())
        return errorf("layer \"%s\" (%s): backward got %zu output gradients, expects %d x %zu", L.name,
                      L.type_name(), dy.numel(), x.shape.dim[0], L.out_shape.numel());
    const int B = x.shape.dim[0];
    const size_t n_out = dy.numel();
    switch (L.kind) {
        case LayerKind::Dense: {
            const int rows = dense_rows(L, B);
            const float* dz = dy.data;
            if (L.act != Act::None) {
                activation_backward(L, L.scratch, dy.data, y.data, (size_t)rows, (size_t)L.units);
                dz = L.scratch;
            }
            dense_backward_z(L, dx.data, dz, x.data, rows, overwrite_grads);
            break;
        }
        case LayerKind::Activation:
            if (L.passthrough) {  // the MaxPool2D after it masked the gradient
                if (dx.data && dx.data != dy.data) std::memcpy(dx.data, dy.data, n_out * sizeof(float));
                break;
            }
            if (dx.data) activation_backward(L, dx.data, dy.data, y.data, (size_t)B, dy.row_size());
            break;
        case LayerKind::Dropout:
            if (!dx.data) break;
            if (L.last_mode == Mode::Train && L.rate > 0.0f)
                multiply(dx.data, dy.data, L.mask, n_out);
            else if (dx.data != dy.data)
                std::memcpy(dx.data, dy.data, n_out * sizeof(float));
            break;
        case LayerKind::Flatten:
            if (dx.data && dx.data != dy.data) std::memcpy(dx.data, dy.data, n_out * sizeof(float));
            break;
        case LayerKind::Custom:
            if (overwrite_grads) zero_grad(L);  // custom layers accumulate
            L.custom->backward(L, dx, dy, x, y);
            break;
        default:  // the kinds with large kernels (layer_uses_code)
            L.code->backward(L, dx.data, dy.data, x.data, y.data, B, overwrite_grads);
            break;
    }
    return Status{};
}

Status backward(Layer& L, Tensor dx, const Tensor& dy, const Tensor& x, const Tensor& y) {
    return backward_impl(L, dx, dy, x, y, false);
}

static Status backward_preact_impl(Layer& L, Tensor dx, const Tensor& dz, const Tensor& x,
                                   bool overwrite_grads) {
    Status st = check_io(L, dx, x, "backward_preact input-gradient", L.in_shape);
    if (!st) return st;
    if (L.kind != LayerKind::Dense)
        return errorf("layer \"%s\" (%s): backward_preact is for Dense layers", L.name, L.type_name());
    dense_backward_z(L, dx.data, dz.data, x.data, dense_rows(L, x.shape.dim[0]), overwrite_grads);
    return Status{};
}

Status backward_preact(Layer& L, Tensor dx, const Tensor& dz, const Tensor& x) {
    return backward_preact_impl(L, dx, dz, x, false);
}

void zero_grad(Layer& L) {
    for (int i = 0; i < L.n_params; ++i)
        if (L.grads[i].data) std::memset(L.grads[i].data, 0, L.grads[i].numel() * sizeof(float));
}

int layer_params(Layer& L, Param* out, int cap) {
    int k = 0;
    for (int i = 0; i < L.n_params && k < cap; ++i, ++k) {
        out[k].name = L.param_name[i];
        out[k].value = L.params[i].data;
        out[k].grad = L.grads[i].data;
        out[k].size = L.params[i].numel();
        out[k].trainable = !L.frozen && !L.buffer[i];
    }
    return k;
}

// Dense and Conv2D weights (Keras's kernel_regularizer).
static bool has_kernel(const Layer& L) { return L.kind == LayerKind::Dense || L.kind == LayerKind::Conv2D; }

float regularization_loss(const Layer& L) {
    if (!has_kernel(L) || (L.l1 == 0.0f && L.l2 == 0.0f) || !L.params[0].data) return 0.0f;
    const Tensor& w = L.params[0];
    double a = 0.0, s = 0.0;
    for (size_t i = 0; i < w.numel(); ++i) {
        a += std::fabs(w.data[i]);
        s += (double)w.data[i] * w.data[i];
    }
    return (float)(L.l1 * a + L.l2 * s);
}

// d/dw (l1 |w| + l2 w^2) = l1 sign(w) + 2 l2 w, added to the weight gradient
void regularization_backward(Layer& L) {
    if (!has_kernel(L) || (L.l1 == 0.0f && L.l2 == 0.0f) || !L.params[0].data) return;
    const Tensor& w = L.params[0];
    float* g = L.grads[0].data;
    const float two_l2 = 2.0f * L.l2, l1 = L.l1;
    for (size_t i = 0; i < w.numel(); ++i) {
        float wi = w.data[i];
        g[i] += l1 * (wi > 0.0f ? 1.0f : (wi < 0.0f ? -1.0f : 0.0f)) + two_l2 * wi;
    }
}
// ===========================================================================
// Losses: checks on the targets, then one kernel from kernels/loss.hpp.
// ===========================================================================

static Loss make_loss(LossKind k) {
    Loss l;
    l.kind = k;
    return l;
}
Loss MSE() { return make_loss(LossKind::MSE); }
Loss MAE() { return make_loss(LossKind::MAE); }
Loss Huber(float delta) {
    Loss l = make_loss(LossKind::Huber);
    l.delta = delta;
    return l;
}
Loss BinaryCrossEntropy() { return make_loss(LossKind::BinaryCrossEntropy); }
Loss BinaryCrossEntropyWithLogits() { return make_loss(LossKind::BinaryCrossEntropyLogits); }
Loss CrossEntropy() { return make_loss(LossKind::CrossEntropy); }
Loss CategoricalCrossEntropy() { return make_loss(LossKind::CategoricalCrossEntropy); }

const char* loss_name(LossKind k) {
    switch (k) {
        case LossKind::MSE: return "mse";
        case LossKind::MAE: return "mae";
        case LossKind::Huber: return "huber";
        case LossKind::BinaryCrossEntropy: return "binary_crossentropy";
        case LossKind::BinaryCrossEntropyLogits: return "binary_crossentropy_with_logits";
        case LossKind::CrossEntropy: return "cross_entropy";
        case LossKind::CategoricalCrossEntropy: return "categorical_crossentropy";
    }
    return "?";
}

static bool loss_takes_labels(LossKind k) {
    return k == LossKind::CrossEntropy || k == LossKind::CategoricalCrossEntropy;
}

static Status check_targets(const Loss& loss, const Tensor& pred, const Target& t) {
    const int rows = pred.shape.dim[0];
    const int cols = (int)pred.row_size();
    if (rows < 1 || cols < 1) return errorf("loss %s: empty prediction", loss_name(loss.kind));
    if (!t.labels && !t.values) return errorf("loss %s: no targets given", loss_name(loss.kind));
    if (t.labels) {
        if (!loss_takes_labels(loss.kind))
            return errorf("loss %s: needs target values shaped like the prediction, not class labels "
                          "(use one_hot, or a cross-entropy loss)", loss_name(loss.kind));
        for (int r = 0; r < rows; ++r)
            if (t.labels[r] < 0 || t.labels[r] >= cols)
                return errorf("loss %s: label %d of sample %d is outside the %d classes the model outputs",
                              loss_name(loss.kind), (int)t.labels[r], r, cols);
    }
    if (loss.kind == LossKind::Huber && !(loss.delta > 0.0f))
        return errorf("loss huber: delta must be > 0 (got %g)", (double)loss.delta);
    return Status{};
}

Status loss_forward_backward(const Loss& loss, Tensor dpred, const Tensor& pred, const Target& t,
                             float* loss_out) {
    Status st = check_targets(loss, pred, t);
    if (!st) return st;
    if (dpred.data && dpred.numel() != pred.numel())
        return errorf("loss %s: gradient tensor holds %zu values, prediction %zu", loss_name(loss.kind),
                      dpred.numel(), pred.numel());
    const size_t rows = (size_t)pred.shape.dim[0], cols = pred.row_size(), n = pred.numel();
    float* dp = dpred.data;
    const float* p = pred.data;
    const float* tv = t.values;
    double value = 0.0;
    switch (loss.kind) {
        case LossKind::MSE: value = mse_loss(dp, p, tv, n); break;
        case LossKind::MAE: value = mae_loss(dp, p, tv, n); break;
        case LossKind::Huber: value = huber_loss(dp, p, tv, loss.delta, n); break;
        case LossKind::BinaryCrossEntropy: value = bce_loss(dp, p, tv, n); break;
        case LossKind::BinaryCrossEntropyLogits: value = bce_logits_loss(dp, p, tv, n); break;
        case LossKind::CrossEntropy:
            value = softmax_xent_loss(dp, nullptr, p, tv, t.values ? nullptr : t.labels, rows, cols);
            break;
        case LossKind::CategoricalCrossEntropy:
            value = categorical_xent_loss(dp, p, tv, t.values ? nullptr : t.labels, rows, cols);
            break;
    }
    *loss_out = (float)value;
    return Status{};
}

Status softmax_cross_entropy(Tensor dz, float* p, const Tensor& z, const Target& t, float* loss_out) {
    Status st = check_targets(CrossEntropy(), z, t);
    if (!st) return st;
    const size_t rows = (size_t)z.shape.dim[0], cols = z.row_size();
    *loss_out = (float)softmax_xent_loss(dz.data, p, z.data, t.values, t.values ? nullptr : t.labels, rows, cols);
    return Status{};
}
// ===========================================================================
// Optimizers: configuration, validation, state carving and the step.
// The update rules themselves are the kernels in kernels/optim.hpp.
//
// State slots per parameter (Optimizer::state[i * kStateSlots + slot]):
//   SGD      0: momentum buffer             (only when momentum != 0)
//   Adagrad  0: sum of squared gradients    (starts at initial_accumulator_value)
//   RMSprop  0: square average  1: gradient average (centered)  2: momentum buffer (momentum > 0)
//   Adam(W)  0: m  1: v  2: max of v        (amsgrad)
// A slot the configuration does not use is null and costs no memory.
// ===========================================================================

OptimConfig SGD(float lr, float momentum, bool nesterov, float weight_decay, float dampening) {
    OptimConfig c;
    c.kind = OptKind::SGD;
    c.lr = lr;
    c.momentum = momentum;
    c.nesterov = nesterov;
    c.weight_decay = weight_decay;
    c.dampening = dampening;
    return c;
}

OptimConfig Adagrad(float lr, float lr_decay, float weight_decay, float initial_accumulator_value,
                    float eps) {
    OptimConfig c;
    c.kind = OptKind::Adagrad;
    c.lr = lr;
    c.lr_decay = lr_decay;
    c.weight_decay = weight_decay;
    c.initial_accumulator_value = initial_accumulator_value;
    c.eps = eps;
    return c;
}

OptimConfig RMSprop(float lr, float alpha, float eps, float weight_decay, float momentum,
                    bool centered) {
    OptimConfig c;
    c.kind = OptKind::RMSprop;
    c.lr = lr;
    c.alpha = alpha;
    c.eps = eps;
    c.weight_decay = weight_decay;
    c.momentum = momentum;
    c.centered = centered;
    return c;
}

OptimConfig Adam(float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad) {
    OptimConfig c;
    c.kind = OptKind::Adam;
    c.lr = lr;
    c.beta1 = beta1;
    c.beta2 = beta2;
    c.eps = eps;
    c.weight_decay = weight_decay;
    c.amsgrad = amsgrad;
    return c;
}

OptimConfig AdamW(float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad) {
    OptimConfig c = Adam(lr, beta1, beta2, eps, weight_decay, amsgrad);
    c.kind = OptKind::AdamW;
    return c;
}

const char* optimizer_name(OptKind k) {
    switch (k) {
        case OptKind::SGD: return "SGD";
        case OptKind::Adagrad: return "Adagrad";
        case OptKind::RMSprop: return "RMSprop";
        case OptKind::Adam: return "Adam";
        case OptKind::AdamW: return "AdamW";
    }
    return "unknown";
}

// "optimizer SGD: lr=-0.1 must be >= 0 and finite"
static Status optim_field_error(const OptimConfig& c, const char* field, double value,
                                const char* rule) {
    return errorf("optimizer %s: %s=%g %s", optimizer_name(c.kind), field, value, rule);
}

// value >= 0 and finite (NaN fails too).
static bool optim_nonneg(float v) { return v >= 0.0f && std::isfinite(v); }

Status validate(const OptimConfig& c) {
    switch (c.kind) {
        case OptKind::SGD: case OptKind::Adagrad: case OptKind::RMSprop:
        case OptKind::Adam: case OptKind::AdamW: break;
        default: return errorf("optimizer: kind=%d is not an optimizer", (int)c.kind);
    }
    const char* nonneg = "must be >= 0 and finite";
    struct Field { const char* name; float value; };
    const Field fields[] = {
        {"lr", c.lr},
        {"momentum", c.momentum},
        {"weight_decay", c.weight_decay},
        {"alpha", c.alpha},
        {"eps", c.eps},
        {"lr_decay", c.lr_decay},
        {"initial_accumulator_value", c.initial_accumulator_value},
        {"decay", c.decay},
        {"clip_norm", c.clip_norm},
        {"eta_min", c.eta_min},
    };
    for (const Field& f : fields)
        if (!optim_nonneg(f.value)) return optim_field_error(c, f.name, f.value, nonneg);
    if (!std::isfinite(c.dampening))
        return optim_field_error(c, "dampening", c.dampening, "must be finite");
    if (!(c.beta1 >= 0.0f && c.beta1 < 1.0f))
        return optim_field_error(c, "beta1", c.beta1, "must be in [0, 1)");
    if (!(c.beta2 >= 0.0f && c.beta2 < 1.0f))
        return optim_field_error(c, "beta2", c.beta2, "must be in [0, 1)");
    if (c.kind == OptKind::SGD && c.nesterov && (c.momentum <= 0.0f || c.dampening != 0.0f))
        return errorf("optimizer SGD: nesterov=true needs momentum > 0 (got momentum=%g) and "
                      "dampening=0 (got dampening=%g)",
                      (double)c.momentum, (double)c.dampening);
    switch (c.schedule) {
        case Schedule::Constant: case Schedule::Step: case Schedule::Exponential:
        case Schedule::Cosine: break;
        default:
            return errorf("optimizer %s: schedule=%d is not a schedule", optimizer_name(c.kind),
                          (int)c.schedule);
    }
    if (c.step_size < 1)
        return optim_field_error(c, "step_size", c.step_size, "must be >= 1 (epochs)");
    if (c.t_max < 1) return optim_field_error(c, "t_max", c.t_max, "must be >= 1 (epochs)");
    if (!(c.gamma > 0.0f && std::isfinite(c.gamma)))
        return optim_field_error(c, "gamma", c.gamma, "must be > 0 and finite");
    return Status{};
}

Status Optimizer::init(const OptimConfig& c, const Param* ps, int n, Arena& arena) {
    Status st = validate(c);
    if (!st) return st;
    const char* name = optimizer_name(c.kind);
    if (n < 0) return errorf("optimizer %s: n=%d parameters (must be >= 0)", name, n);
    if (n > 0 && !ps) return errorf("optimizer %s: parameter list is null but n=%d", name, n);
    for (int i = 0; i < n; ++i) {
        const Param& p = ps[i];
        if (p.size == 0 || arena.measuring) continue;  // a dry run has no buffers yet
        if (!p.value)
            return errorf("optimizer %s: parameter %d (\"%s\", %zu floats) has no value buffer",
                          name, i, p.name ? p.name : "", p.size);
        if (p.trainable && !p.grad)
            return errorf("optimizer %s: parameter %d (\"%s\", %zu floats) has no gradient buffer",
                          name, i, p.name ? p.name : "", p.size);
    }

    // Which state slots this configuration uses (see the table on top).
    bool need[kStateSlots] = {false, false, false};
    const char* slot_name[kStateSlots] = {"", "", ""};
    switch (c.kind) {
        case OptKind::SGD:
            need[0] = c.momentum != 0.0f;
            slot_name[0] = "momentum buffer";
            break;
        case OptKind::Adagrad:
            need[0] = true;
            slot_name[0] = "sum";
            break;
        case OptKind::RMSprop:
            need[0] = true;
            need[1] = c.centered;
            need[2] = c.momentum > 0.0f;
            slot_name[0] = "square average";
            slot_name[1] = "gradient average";
            slot_name[2] = "momentum buffer";
            break;
        case OptKind::Adam:
        case OptKind::AdamW:
            need[0] = need[1] = true;
            need[2] = c.amsgrad;
            slot_name[0] = "m";
            slot_name[1] = "v";
            slot_name[2] = "max v";
            break;
    }

    // Carve. On failure the arena goes back to its mark and *this is untouched.
    // While the arena is measuring, every alloc returns null: count, write nothing.
    const size_t mark = arena.mark();
    const size_t un = (size_t)n;
    size_t bytes_params = 0, bytes_state = 0, bytes_steps = 0;
    if (!size_mul(un, sizeof(Param), &bytes_params) ||
        !size_mul(un, sizeof(float*) * kStateSlots, &bytes_state) ||
        !size_mul(un, sizeof(int64_t), &bytes_steps))
        return errorf("optimizer %s: %d parameters overflow size_t", name, n);
    Status err;
    Param* new_params = static_cast<Param*>(arena.alloc(bytes_params, &err, "optimizer parameter list"));
    float** new_state = err.ok() ? static_cast<float**>(arena.alloc(bytes_state, &err, "optimizer state table")) : nullptr;
    int64_t* new_steps = err.ok() ? static_cast<int64_t*>(arena.alloc(bytes_steps, &err, "optimizer step counts")) : nullptr;
    const bool write = !arena.measuring;
    if (write && err.ok())
        for (size_t k = 0; k < un * kStateSlots; ++k) new_state[k] = nullptr;
    for (int i = 0; i < n && err.ok(); ++i) {
        for (int s = 0; s < kStateSlots && err.ok(); ++s) {
            if (!need[s]) continue;
            char what[96];
            std::snprintf(what, sizeof what, "optimizer %s %s of parameter %d (\"%s\")", name,
                          slot_name[s], i, ps[i].name ? ps[i].name : "");
            float* buf = arena.alloc_floats(ps[i].size, &err, what);
            if (!err.ok() || !write) continue;
            const float fill = c.kind == OptKind::Adagrad ? c.initial_accumulator_value : 0.0f;
            for (size_t j = 0; j < ps[i].size; ++j) buf[j] = fill;
            new_state[(size_t)i * kStateSlots + (size_t)s] = buf;
        }
    }
    if (!err.ok()) {
        arena.reset(mark);
        return err;
    }
    if (write) {
        for (int i = 0; i < n; ++i) {
            new_params[i] = ps[i];
            new_steps[i] = 0;
        }
    }

    cfg = c;
    params = new_params;  // null after a dry run: step() and zero_grad() do nothing
    state = new_state;
    param_steps = new_steps;
    n_params = n;
    steps = 0;
    epoch = 0;
    last_grad_norm = 0;
    return Status{};
}

float Optimizer::current_lr() const {
    double lr = cfg.lr;
    switch (cfg.schedule) {
        case Schedule::Constant: break;
        case Schedule::Step:  // StepLR: lr * gamma^(epoch // step_size)
            lr *= std::pow((double)cfg.gamma, (double)(epoch / (cfg.step_size > 0 ? cfg.step_size : 1)));
            break;
        case Schedule::Exponential:  // ExponentialLR: lr * gamma^epoch
            lr *= std::pow((double)cfg.gamma, (double)epoch);
            break;
        case Schedule::Cosine: {  // CosineAnnealingLR, closed form
            const double pi = 3.14159265358979323846;
            const double t_max = cfg.t_max > 0 ? cfg.t_max : 1;
            lr = cfg.eta_min + (lr - cfg.eta_min) * (1.0 + std::cos(pi * epoch / t_max)) / 2.0;
            break;
        }
    }
    // Keras / nn_mini time decay, over the steps taken so far.
    if (cfg.decay != 0.0f) lr /= 1.0 + (double)cfg.decay * (double)steps;
    return (float)lr;
}

// One thread's share of an optimizer step: for every trainable parameter,
// elements [begin, end) with begin and end on vector boundaries, so each
// element is updated by the same instructions whatever the thread count.
// Whether step() updates p: trainable, with buffers, and not a frozen tape leaf.
static bool steps_param(const Param& p) {
    return p.trainable && p.value && p.grad && (!p.requires_grad || *p.requires_grad);
}

struct OptimStepJob {
    Optimizer* opt;
    float lr;
};

static void optim_step_range(void* ctx, int ith, int nth) {
    const OptimStepJob& job = *static_cast<const OptimStepJob*>(ctx);
    Optimizer& o = *job.opt;
    const OptimConfig& c = o.cfg;
    const float lr = job.lr;
    const size_t W = (size_t)simd::kWidth;
    for (int i = 0; i < o.n_params; ++i) {
        Param& p = o.params[i];
        if (!steps_param(p)) continue;
        const int64_t t = o.param_steps[i];
        const size_t vecs = (p.size + W - 1) / W;
        const size_t begin = vecs * (size_t)ith / (size_t)nth * W;
        size_t end = vecs * (size_t)(ith + 1) / (size_t)nth * W;
        if (end > p.size) end = p.size;
        if (begin >= end) continue;
        const size_t n = end - begin;
        float* val = p.value + begin;
        const float* g = p.grad + begin;
        float** s = o.state + (size_t)i * Optimizer::kStateSlots;
        auto at = [begin](float* b) { return b ? b + begin : nullptr; };
        // Slots follow the configuration init() saw; changing kind, momentum,
        // centered or amsgrad afterwards needs a new init().
        NN_ASSERT(s[0] || (c.kind == OptKind::SGD && c.momentum == 0.0f) || p.size == 0);
        NN_ASSERT(s[1] || (c.kind != OptKind::Adam && c.kind != OptKind::AdamW) || p.size == 0);
        switch (c.kind) {
            case OptKind::SGD:
                sgd_update_f32(val, at(s[0]), g, lr, c.momentum, c.dampening, c.weight_decay,
                               c.nesterov, t == 1, n);
                break;
            case OptKind::Adagrad: {
                const float clr = (float)((double)lr / (1.0 + (double)(t - 1) * (double)c.lr_decay));
                adagrad_update_f32(val, at(s[0]), g, clr, c.eps, c.weight_decay, n);
                break;
            }
            case OptKind::RMSprop:
                rmsprop_update_f32(val, at(s[0]), at(s[1]), at(s[2]), g, lr, c.alpha, c.eps,
                                   c.weight_decay, c.momentum, n);
                break;
            case OptKind::Adam:
            case OptKind::AdamW: {
                const double bc1 = 1.0 - std::pow((double)c.beta1, (double)t);
                const double bc2 = 1.0 - std::pow((double)c.beta2, (double)t);
                adam_update_f32(val, at(s[0]), at(s[1]), at(s[2]), g, lr, c.beta1, c.beta2, c.eps,
                                c.weight_decay, c.kind == OptKind::AdamW, bc1, bc2, n);
                break;
            }
        }
    }
}

// Threads worth using: one per 32k parameters (a few microseconds of
// updates), at most num_threads().
static int optim_useful_threads(const Optimizer& o) {
    size_t total = 0;
    for (int i = 0; i < o.n_params; ++i)
        if (o.params[i].trainable) total += o.params[i].size;
    const size_t t = total / 32768;
    const int most = num_threads();
    return t < 1 ? 1 : (t > (size_t)most ? most : (int)t);
}

void Optimizer::step() {
    if (!params || !state || !param_steps) return;  // not initialised, or a dry run
    const float lr = current_lr();

    // Clip the global L2 norm of the trainable gradients (clip_grad_norm_).
    if (cfg.clip_norm > 0.0f) {
        double ss = 0.0;
        for (int i = 0; i < n_params; ++i) {
            const Param& p = params[i];
            if (steps_param(p)) ss += sum_squares_f32(p.grad, p.size);
        }
        const float total = (float)std::sqrt(ss);
        last_grad_norm = total;
        if (std::isfinite(total)) {  // a NaN/Inf gradient is left for the caller to see
            const float coef = cfg.clip_norm / (total + 1e-6f);
            if (coef < 1.0f)
                for (int i = 0; i < n_params; ++i) {
                    Param& p = params[i];
                    if (steps_param(p)) scale_f32(p.grad, coef, p.size);
                }
        }
    }

    // Every trainable parameter takes its step count first; then the
    // updates, which are elementwise, run on (ith, nth) ranges of each.
    for (int i = 0; i < n_params; ++i) {
        const Param& p = params[i];
        if (steps_param(p)) ++param_steps[i];
    }
    OptimStepJob job{this, lr};
    const int nth = optim_useful_threads(*this);
    if (nth <= 1)
        optim_step_range(&job, 0, 1);
    else
        parallel_for(nth, optim_step_range, &job);
    ++steps;
}

void Optimizer::zero_grad() {
    if (!params) return;
    for (int i = 0; i < n_params; ++i)
        if (params[i].grad && params[i].size) std::memset(params[i].grad, 0, params[i].size * sizeof(float));
}
// ===========================================================================
// Data: IDX and CSV readers, synthetic sets, normalisation, split, gather,
// batch iteration.
//
// Readers build into a local and move it into the caller's object only on
// success, so a failed load leaves the output as it was. Every error names
// the file and the numbers involved. Setup-time code may allocate; gather()
// and BatchIterator::start_epoch/next (the per-step path) do not.
// ===========================================================================

// --- Dataset ---------------------------------------------------------------

int Dataset::target_width() const { return num_classes > 0 ? num_classes : target_size; }

// --- IDX ---------------------------------------------------------------------
//
// Layout (big-endian): 0x00 0x00 <type> <ndim>, then ndim uint32 dimensions,
// then the items, row-major. The data section is kept as stored.

size_t IdxArray::count() const {
    // 0 when there are no dimensions or their product overflows size_t
    // (read_idx never produces either).
    if (ndim <= 0 || ndim > 8) return 0;
    size_t n = 1;
    for (int i = 0; i < ndim; ++i)
        if (!size_mul(n, dims[i], &n)) return 0;
    return n;
}

// Bytes per item of an IDX type code; 0 for codes the format does not define.
static size_t idx_item_size(int type) {
    switch (type) {
        case 0x08: return 1;  // unsigned byte
        case 0x09: return 1;  // signed byte
        case 0x0B: return 2;  // short
        case 0x0C: return 4;  // int
        case 0x0D: return 4;  // float
        case 0x0E: return 8;  // double
        default: return 0;
    }
}

static bool data_ends_with(const char* s, const char* suffix) {
    size_t n = std::strlen(s), m = std::strlen(suffix);
    return n >= m && std::memcmp(s + n - m, suffix, m) == 0;
}

// A file read front to back, either plain (stdio) or through zlib.
// Closes itself; `error` holds the first read error.
struct DataFileSource {
    FILE* f = nullptr;
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
    gzFile g = nullptr;
#endif
    char error[128] = {0};

    DataFileSource() = default;
    DataFileSource(const DataFileSource&) = delete;
    DataFileSource& operator=(const DataFileSource&) = delete;
    ~DataFileSource() { close(); }

    void close() {
        if (f) std::fclose(f);
        f = nullptr;
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
        if (g) gzclose(g);
        g = nullptr;
#endif
    }

    // Reads up to n bytes; fewer means end of file or an error (see `error`).
    size_t read(void* buf, size_t n) {
        unsigned char* p = static_cast<unsigned char*>(buf);
        size_t got = 0;
        if (f) {
            got = std::fread(p, 1, n, f);
            if (got < n && std::ferror(f) && !error[0])
                std::snprintf(error, sizeof error, "read error: %s", std::strerror(errno));
            return got;
        }
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
        while (g && got < n) {
            size_t want = n - got;
            if (want > (1u << 30)) want = 1u << 30;  // gzread takes an unsigned
            int r = gzread(g, p + got, (unsigned)want);
            if (r < 0) {
                int code = 0;
                const char* m = gzerror(g, &code);
                if (!error[0])
                    std::snprintf(error, sizeof error, "gzip error: %s",
                                  code == Z_ERRNO ? std::strerror(errno) : (m ? m : "unknown"));
                break;
            }
            if (r == 0) break;
            got += (size_t)r;
        }
#endif
        return got;
    }
};

static uint32_t idx_be32(const unsigned char* b) {
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | (uint32_t)b[3];
}

Status read_idx(const char* path, IdxArray* out) {
    if (!path) return errorf("read_idx: null path");
    if (!out) return errorf("%s: read_idx was given a null output", path);

    DataFileSource src;
    src.f = std::fopen(path, "rb");
    if (!src.f) return errorf("%s: cannot open: %s", path, std::strerror(errno));

    // Plain or gzipped? The name says .gz, or the first bytes are 1f 8b.
    unsigned char head[4] = {0, 0, 0, 0};
    size_t head_got = src.read(head, 4);
    if (src.error[0]) return errorf("%s: %s", path, src.error);
    bool gz = data_ends_with(path, ".gz") || (head_got >= 2 && head[0] == 0x1f && head[1] == 0x8b);
    long file_size = -1;  // plain files: known up front, checked before reading
    if (gz) {
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
        src.close();
        src.g = gzopen(path, "rb");
        if (!src.g) return errorf("%s: cannot open through zlib: %s", path, std::strerror(errno));
        gzbuffer(src.g, 1u << 17);
        head_got = src.read(head, 4);
        if (src.error[0]) return errorf("%s: %s", path, src.error);
#else
        return errorf("%s: file is gzipped but nn was built without zlib "
                      "(install zlib1g-dev and rebuild, or gunzip the file)",
                      path);
#endif
    } else if (std::fseek(src.f, 0, SEEK_END) == 0) {
        file_size = std::ftell(src.f);  // -1 (unknown) for > 2 GB on 32-bit
        if (std::fseek(src.f, 4, SEEK_SET) != 0) file_size = -1;
        if (file_size < 0) {
            // Could not seek back: start over from the beginning.
            std::clearerr(src.f);
            std::rewind(src.f);
            unsigned char skip[4];
            if (src.read(skip, 4) != head_got) return errorf("%s: cannot re-read the header", path);
        }
    }

    if (head_got < 4)
        return errorf("%s: truncated header: file has %zu bytes, an IDX header needs at least 4",
                      path, head_got);
    if (head[0] != 0 || head[1] != 0)
        return errorf("%s: not an IDX file: magic starts with bytes 0x%02X 0x%02X, expected 0x00 0x00",
                      path, head[0], head[1]);
    IdxArray a;
    a.type = head[2];
    a.ndim = head[3];
    size_t item = idx_item_size(a.type);
    if (item == 0)
        return errorf("%s: unknown IDX data type 0x%02X (known: 0x08 ubyte, 0x09 sbyte, "
                      "0x0B short, 0x0C int, 0x0D float, 0x0E double)",
                      path, (unsigned)a.type);
    if (a.ndim < 1 || a.ndim > 8)
        return errorf("%s: IDX header has %d dimensions, expected 1 to 8", path, a.ndim);

    unsigned char dimbuf[32];
    size_t dim_bytes = 4 * (size_t)a.ndim;
    size_t dims_got = src.read(dimbuf, dim_bytes);
    if (src.error[0]) return errorf("%s: %s", path, src.error);
    if (dims_got < dim_bytes)
        return errorf("%s: truncated header: %d dimensions need %zu bytes, file has %zu",
                      path, a.ndim, 4 + dim_bytes, 4 + dims_got);
    size_t count = 1;
    bool overflow = false;
    for (int i = 0; i < a.ndim; ++i) {
        a.dims[i] = idx_be32(dimbuf + 4 * i);
        if (!size_mul(count, a.dims[i], &count)) overflow = true;
    }
    size_t data_bytes = 0;
    if (!overflow && !size_mul(count, item, &data_bytes)) overflow = true;
    if (overflow) {
        char dims[8 * 12] = {0};
        size_t at = 0;
        for (int i = 0; i < a.ndim && at < sizeof dims; ++i)
            at += (size_t)std::snprintf(dims + at, sizeof dims - at, i ? " x %u" : "%u",
                                        (unsigned)a.dims[i]);
        return errorf("%s: IDX dimensions %s (x %zu bytes per item) overflow size_t", path, dims,
                      item);
    }

    size_t header_bytes = 4 + dim_bytes;
    if (file_size >= 0) {
        size_t have = (size_t)file_size > header_bytes ? (size_t)file_size - header_bytes : 0;
        if (have < data_bytes)
            return errorf("%s: truncated: header promises %zu bytes of data, file has %zu "
                          "(after the %zu-byte header)",
                          path, data_bytes, have, header_bytes);
        if (have > data_bytes)
            return errorf("%s: %zu trailing bytes: header promises %zu bytes of data, file has %zu "
                          "(after the %zu-byte header)",
                          path, have - data_bytes, data_bytes, have, header_bytes);
    }

    // Read the data, growing the buffer with what actually arrives, so a
    // header that lies about a huge size cannot make us allocate it.
    size_t have = 0;
    while (have < data_bytes) {
        size_t want = data_bytes - have;
        size_t step = have < ((size_t)1 << 20) ? ((size_t)1 << 20) : have;
        if (want > step) want = step;
        if (have + want > a.bytes.capacity()) reserve_large_pages(&a.bytes, have + step);
        a.bytes.resize(have + want);
        size_t got = src.read(a.bytes.data() + have, want);
        have += got;
        if (got < want) break;
    }
    if (src.error[0]) return errorf("%s: %s", path, src.error);
    if (have < data_bytes)
        return errorf("%s: truncated: header promises %zu bytes of data, file has %zu "
                      "(after the %zu-byte header)",
                      path, data_bytes, have, header_bytes);
    unsigned char extra;
    if (src.read(&extra, 1) == 1)
        return errorf("%s: trailing bytes after the %zu bytes of data the header promises", path,
                      data_bytes);
    if (src.error[0]) return errorf("%s: %s", path, src.error);

    *out = std::move(a);
    return Status{};
}

Status load_idx(const char* images_path, const char* labels_path, Dataset* out) {
    if (!images_path || !labels_path) return errorf("load_idx: null path");
    if (!out) return errorf("%s: load_idx was given a null output", images_path);
    IdxArray im, lb;
    Status st = read_idx(images_path, &im);
    if (!st) return st;
    st = read_idx(labels_path, &lb);
    if (!st) return st;

    if (im.type != 0x08)
        return errorf("%s: IDX type 0x%02X, but images must be 0x08 (unsigned bytes)", images_path,
                      (unsigned)im.type);
    if (im.ndim != 3)
        return errorf("%s: images have %d dimensions, expected 3 (count, height, width)",
                      images_path, im.ndim);
    if (lb.type != 0x08)
        return errorf("%s: IDX type 0x%02X, but labels must be 0x08 (unsigned bytes)", labels_path,
                      (unsigned)lb.type);
    if (lb.ndim != 1)
        return errorf("%s: labels have %d dimensions, expected 1", labels_path, lb.ndim);
    if (im.dims[0] != lb.dims[0])
        return errorf("count mismatch: %s has %u images but %s has %u labels", images_path,
                      (unsigned)im.dims[0], labels_path, (unsigned)lb.dims[0]);
    if (im.dims[0] == 0) return errorf("%s: holds 0 images", images_path);
    if (im.dims[1] == 0 || im.dims[2] == 0 || im.dims[1] > (uint32_t)INT_MAX ||
        im.dims[2] > (uint32_t)INT_MAX)
        return errorf("%s: image size %u x %u is not usable", images_path, (unsigned)im.dims[1],
                      (unsigned)im.dims[2]);

    Dataset d;
    d.n = im.dims[0];
    d.sample = make_shape({1, (int)im.dims[1], (int)im.dims[2]});
    d.u8 = std::move(im.bytes);
    d.labels.resize(d.n);
    int max_label = 0;
    for (size_t i = 0; i < d.n; ++i) {
        d.labels[i] = lb.bytes[i];
        if (lb.bytes[i] > max_label) max_label = lb.bytes[i];
    }
    d.num_classes = max_label + 1;
    *out = std::move(d);
    return Status{};
}

// dir/base, or dir/base.gz when only that exists; false when neither does.
static bool data_find_file(char* path, size_t cap, const char* dir, const char* base) {
    static const char* const suffixes[2] = {"", ".gz"};
    for (const char* suffix : suffixes) {
        int n = std::snprintf(path, cap, "%s/%s%s", dir, base, suffix);
        if (n < 0 || (size_t)n >= cap) return false;
        FILE* f = std::fopen(path, "rb");
        if (f) {
            std::fclose(f);
            return true;
        }
    }
    return false;
}

static Status load_fashion_part(const char* dir, const char* prefix, Dataset* out) {
    char images_base[64], labels_base[64];
    std::snprintf(images_base, sizeof images_base, "%s-images-idx3-ubyte", prefix);
    std::snprintf(labels_base, sizeof labels_base, "%s-labels-idx1-ubyte", prefix);
    char images[4096], labels[4096];
    if (!data_find_file(images, sizeof images, dir, images_base))
        return errorf("%s: no %s or %s.gz here (is Fashion-MNIST installed in this directory?)", dir,
                      images_base, images_base);
    if (!data_find_file(labels, sizeof labels, dir, labels_base))
        return errorf("%s: no %s or %s.gz here (is Fashion-MNIST installed in this directory?)", dir,
                      labels_base, labels_base);
    Dataset d;
    Status st = load_idx(images, labels, &d);
    if (!st) return st;
    if (d.num_classes > 10)
        return errorf("%s: label %d is outside Fashion-MNIST's 0..9", labels, d.num_classes - 1);
    d.num_classes = 10;
    *out = std::move(d);
    return Status{};
}

Status load_fashion_mnist(const char* dir, Dataset* train, Dataset* test) {
    if (!dir) return errorf("load_fashion_mnist: null directory");
    Dataset tr, te;
    Status st;
    if (train && !(st = load_fashion_part(dir, "train", &tr))) return st;
    if (test && !(st = load_fashion_part(dir, "t10k", &te))) return st;
    if (train) *train = std::move(tr);
    if (test) *test = std::move(te);
    return Status{};
}

// --- CSV -------------------------------------------------------------------

static bool csv_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// Trims blanks and one pair of surrounding double quotes from [*b, *e).
static void csv_trim(const char** b, const char** e) {
    while (*b < *e && csv_space(**b)) ++*b;
    while (*e > *b && csv_space((*e)[-1])) --*e;
    if (*e - *b >= 2 && **b == '"' && (*e)[-1] == '"') {
        ++*b;
        --*e;
        while (*b < *e && csv_space(**b)) ++*b;
        while (*e > *b && csv_space((*e)[-1])) --*e;
    }
}

// End of the cell starting at p (the delimiter, or e). A cell opening with a
// double quote runs to its closing quote ("" inside is an escaped quote).
static const char* csv_cell_end(const char* p, const char* e, char delim) {
    const char* q = p;
    while (q < e && (*q == ' ' || *q == '\t')) ++q;
    if (q < e && *q == '"') {
        for (++q; q < e; ++q) {
            if (*q == '"') {
                if (q + 1 < e && q[1] == '"') {
                    ++q;
                    continue;
                }
                ++q;
                break;
            }
        }
        p = q;
    }
    while (p < e && *p != delim) ++p;
    return p;
}

static size_t csv_count_cells(const char* b, const char* e, char delim) {
    size_t n = 1;
    for (const char* p = csv_cell_end(b, e, delim); p < e; p = csv_cell_end(p + 1, e, delim)) ++n;
    return n;
}

// A decimal number: [+-]digits[.digits][(e|E)[+-]digits], or with the digits
// only after the point. The whole range must be the number (no trailing
// garbage). Locale-independent, unlike strtod. No hex, inf or nan.
static bool csv_parse_number(const char* p, const char* e, double* out) {
    bool neg = false;
    if (p < e && (*p == '+' || *p == '-')) neg = *p++ == '-';
    uint64_t mant = 0;
    int sig = 0;       // significant digits kept in mant (at most 19)
    long exp10 = 0;    // value = mant * 10^exp10
    bool any = false;  // saw at least one mantissa digit
    for (; p < e && *p >= '0' && *p <= '9'; ++p) {
        any = true;
        int d = *p - '0';
        if (mant == 0 && d == 0) continue;  // leading zero
        if (sig < 19) {
            mant = mant * 10 + (uint64_t)d;
            ++sig;
        } else {
            ++exp10;  // digit beyond what we keep: only its magnitude counts
        }
    }
    if (p < e && *p == '.') {
        for (++p; p < e && *p >= '0' && *p <= '9'; ++p) {
            any = true;
            int d = *p - '0';
            if (mant == 0 && d == 0) {
                --exp10;
            } else if (sig < 19) {
                mant = mant * 10 + (uint64_t)d;
                ++sig;
                --exp10;
            }
        }
    }
    if (!any) return false;
    if (p < e && (*p == 'e' || *p == 'E')) {
        ++p;
        bool eneg = false;
        if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= e || *p < '0' || *p > '9') return false;
        long ex = 0;
        for (; p < e && *p >= '0' && *p <= '9'; ++p)
            if (ex < 100000) ex = ex * 10 + (*p - '0');
        exp10 += eneg ? -ex : ex;
    }
    if (p != e) return false;
    static const double pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    double v;
    if (mant == 0) {
        v = 0.0;
    } else if (mant <= ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
        // Both exact in double: one correctly rounded operation.
        v = exp10 >= 0 ? (double)mant * pow10[exp10] : (double)mant / pow10[-exp10];
    } else if (exp10 < -400) {
        v = 0.0;
    } else if (exp10 > 400) {
        v = HUGE_VAL;
    } else {
        v = (double)mant * std::pow(10.0, (double)exp10);
    }
    *out = neg ? -v : v;
    return true;
}

// Reads the whole file; false with errno set when it cannot.
static bool data_read_all(const char* path, std::vector<char>* buf) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    size_t have = 0;
    for (;;) {
        size_t want = have < 65536 ? 65536 : have;
        buf->resize(have + want);
        size_t got = std::fread(buf->data() + have, 1, want, f);
        have += got;
        if (got < want) break;
    }
    bool ok = !std::ferror(f);
    int err = errno;
    std::fclose(f);
    buf->resize(have);
    errno = err;
    return ok;
}

Status load_csv(const char* path, const CsvOptions& opt, Dataset* out) {
    if (!path) return errorf("load_csv: null path");
    if (!out) return errorf("%s: load_csv was given a null output", path);
    const char delim = opt.delimiter;
    if (delim == '"' || delim == '\n' || delim == '\r' || delim == 0)
        return errorf("%s: delimiter 0x%02X cannot separate cells", path, (unsigned)(uint8_t)delim);
    if (opt.label_column < -1)
        return errorf("%s: label_column %d (use -1 for the last column)", path, opt.label_column);

    std::vector<char> text;
    if (!data_read_all(path, &text)) return errorf("%s: cannot read: %s", path, std::strerror(errno));
    const char* p = text.data();
    const char* end = p + text.size();
    if (end - p >= 3 && (uint8_t)p[0] == 0xEF && (uint8_t)p[1] == 0xBB && (uint8_t)p[2] == 0xBF)
        p += 3;  // UTF-8 byte order mark

    size_t ncols = 0;     // cells per row: from the header or the first row
    size_t label_col = 0;
    bool header_pending = opt.header;
    std::vector<float> feats, targets;
    std::vector<int32_t> labels;
    int32_t max_label = -1;
    size_t rows = 0;

    for (size_t line_no = 1; p < end; ++line_no) {
        const char* eol = static_cast<const char*>(std::memchr(p, '\n', (size_t)(end - p)));
        const char* le = eol ? eol : end;
        const char* lb = p;
        p = eol ? eol + 1 : end;
        while (le > lb && le[-1] == '\r') --le;  // \r\n line endings
        bool blank = true;
        for (const char* q = lb; q < le; ++q)
            if (!csv_space(*q)) {
                blank = false;
                break;
            }
        if (blank) continue;

        size_t cells = csv_count_cells(lb, le, delim);
        if (ncols == 0) {
            ncols = cells;
            if (ncols < 2)
                return errorf("%s line %zu: %zu cell, need at least 2 (features and a label)", path,
                              line_no, ncols);
            if (opt.label_column >= 0 && (size_t)opt.label_column >= ncols)
                return errorf("%s: label_column %d, but rows have %zu columns (0..%zu)", path,
                              opt.label_column, ncols, ncols - 1);
            if (ncols - 1 > (size_t)INT_MAX)
                return errorf("%s line %zu: %zu columns is too many", path, line_no, ncols);
            label_col = opt.label_column < 0 ? ncols - 1 : (size_t)opt.label_column;
        } else if (cells != ncols) {
            return errorf("%s line %zu: %zu cells, expected %zu", path, line_no, cells, ncols);
        }
        if (header_pending) {
            header_pending = false;
            continue;
        }

        const char* c = lb;
        for (size_t col = 0; col < ncols; ++col) {
            const char* ce = csv_cell_end(c, le, delim);
            const char* b = c;
            const char* e = ce;
            c = ce < le ? ce + 1 : le;
            csv_trim(&b, &e);
            int shown = e - b > 40 ? 40 : (int)(e - b);
            double v;
            if (b == e)
                return errorf("%s line %zu, column %zu: empty cell", path, line_no, col + 1);
            if (!csv_parse_number(b, e, &v))
                return errorf("%s line %zu, column %zu: '%.*s%s' is not a number", path, line_no,
                              col + 1, shown, b, e - b > 40 ? "..." : "");
            float fv = (float)v;
            if (!std::isfinite(fv))
                return errorf("%s line %zu, column %zu: '%.*s' is out of range for float", path,
                              line_no, col + 1, shown, b);
            if (col != label_col) {
                feats.push_back(fv);
            } else if (opt.classification) {
                if (!(v >= 0 && v <= (double)(INT_MAX - 1) && v == std::floor(v)))
                    return errorf("%s line %zu, column %zu: label '%.*s' is not a non-negative "
                                  "integer",
                                  path, line_no, col + 1, shown, b);
                int32_t l = (int32_t)v;
                labels.push_back(l);
                if (l > max_label) max_label = l;
            } else {
                targets.push_back(fv);
            }
        }
        ++rows;
    }

    if (ncols == 0) return errorf("%s: empty file (no rows)", path);
    if (rows == 0) return errorf("%s: no data rows after the header", path);

    Dataset d;
    d.n = rows;
    d.sample = make_shape({(int)(ncols - 1)});
    d.f32 = std::move(feats);
    if (opt.classification) {
        d.labels = std::move(labels);
        d.num_classes = max_label + 1;
    } else {
        d.targets = std::move(targets);
        d.target_size = 1;
    }
    *out = std::move(d);
    return Status{};
}

// --- Synthetic sets ----------------------------------------------------------

// Shuffles samples of a 2-feature f32 set with labels (Fisher-Yates).
static void data_shuffle_2d(Dataset& d, Rng& rng) {
    for (size_t i = d.n; i > 1; --i) {
        size_t j = rng.below((uint32_t)i);
        size_t k = i - 1;
        float x0 = d.f32[2 * k], x1 = d.f32[2 * k + 1];
        d.f32[2 * k] = d.f32[2 * j];
        d.f32[2 * k + 1] = d.f32[2 * j + 1];
        d.f32[2 * j] = x0;
        d.f32[2 * j + 1] = x1;
        int32_t l = d.labels[k];
        d.labels[k] = d.labels[j];
        d.labels[j] = l;
    }
}

// CS231n's spirals: class j has radius r = linspace(0, 1) and angle
// t = linspace(4j, 4(j+1)) + noise * N(0, 1); the point is (r sin t, r cos t).
void make_spirals(Dataset* out, int points_per_class, int classes, float noise, uint64_t seed) {
    NN_ASSERT(out && points_per_class > 0 && classes > 0);
    NN_ASSERT((uint64_t)points_per_class * (uint64_t)classes <= 0xFFFFFFFFull);
    Rng rng(seed);
    Dataset d;
    d.n = (size_t)points_per_class * (size_t)classes;
    d.sample = make_shape({2});
    d.num_classes = classes;
    d.f32.resize(2 * d.n);
    d.labels.resize(d.n);
    const float denom = points_per_class > 1 ? (float)(points_per_class - 1) : 1.0f;
    size_t at = 0;
    for (int j = 0; j < classes; ++j) {
        for (int i = 0; i < points_per_class; ++i, ++at) {
            float r = (float)i / denom;
            float t = 4.0f * (float)j + 4.0f * (float)i / denom + noise * rng.normal();
            d.f32[2 * at] = r * std::sin(t);
            d.f32[2 * at + 1] = r * std::cos(t);
            d.labels[at] = j;
        }
    }
    data_shuffle_2d(d, rng);
    *out = std::move(d);
}

// sklearn's make_circles: n/2 points on the unit circle (label 0) and the rest
// on a circle of radius `factor` (label 1), evenly spaced in angle, plus
// noise * N(0, 1) on each coordinate.
void make_circles(Dataset* out, int n, float noise, float factor, uint64_t seed) {
    NN_ASSERT(out && n > 0);
    Rng rng(seed);
    Dataset d;
    d.n = (size_t)n;
    d.sample = make_shape({2});
    d.num_classes = 2;
    d.f32.resize(2 * d.n);
    d.labels.resize(d.n);
    const int n_out = n / 2, n_in = n - n / 2;
    const double two_pi = 6.283185307179586;
    for (int i = 0; i < n; ++i) {
        bool inner = i >= n_out;
        int k = inner ? i - n_out : i;
        int m = inner ? n_in : n_out;
        float radius = inner ? factor : 1.0f;
        float a = (float)(two_pi * k / m);
        d.f32[2 * (size_t)i] = radius * std::cos(a) + noise * rng.normal();
        d.f32[2 * (size_t)i + 1] = radius * std::sin(a) + noise * rng.normal();
        d.labels[(size_t)i] = inner ? 1 : 0;
    }
    data_shuffle_2d(d, rng);
    *out = std::move(d);
}

// --- Normalisation, split ---------------------------------------------------

// Features hold n * sample_size items in exactly one of u8 / f32 (or none
// when n is 0), and the targets match n.
static bool data_consistent(const Dataset& d) {
    size_t items;
    if (!size_mul(d.n, d.sample_size(), &items)) return false;
    bool u8 = !d.u8.empty(), f32 = !d.f32.empty();
    if (u8 && f32) return false;
    if (items != (u8 ? d.u8.size() : d.f32.size())) return false;
    if (!d.labels.empty() && d.labels.size() != d.n) return false;
    if (!d.targets.empty()) {
        size_t t;
        if (d.target_size <= 0 || !size_mul(d.n, (size_t)d.target_size, &t) || t != d.targets.size())
            return false;
    }
    return true;
}

void fit_normalization(Dataset& to, const Dataset& from) {
    NN_ASSERT(data_consistent(from));
    const size_t F = from.sample_size(), n = from.n;
    const double scale = from.scale;
    std::vector<double> sum(F, 0.0), sq(F, 0.0);
    // Two passes (mean, then squared deviations) in double: no cancellation.
    for (size_t i = 0; i < n; ++i) {
        if (!from.u8.empty()) {
            const uint8_t* s = from.u8.data() + i * F;
            for (size_t f = 0; f < F; ++f) sum[f] += s[f];
        } else {
            const float* s = from.f32.data() + i * F;
            for (size_t f = 0; f < F; ++f) sum[f] += s[f];
        }
    }
    std::vector<double> mean_raw(F, 0.0);
    for (size_t f = 0; f < F; ++f) mean_raw[f] = n ? sum[f] / (double)n : 0.0;
    for (size_t i = 0; i < n; ++i) {
        if (!from.u8.empty()) {
            const uint8_t* s = from.u8.data() + i * F;
            for (size_t f = 0; f < F; ++f) {
                double dv = s[f] - mean_raw[f];
                sq[f] += dv * dv;
            }
        } else {
            const float* s = from.f32.data() + i * F;
            for (size_t f = 0; f < F; ++f) {
                double dv = s[f] - mean_raw[f];
                sq[f] += dv * dv;
            }
        }
    }
    std::vector<float> mean(F), inv_std(F);
    for (size_t f = 0; f < F; ++f) {
        double sd = n ? std::sqrt(sq[f] / (double)n) * std::fabs(scale) : 0.0;
        mean[f] = (float)(mean_raw[f] * scale);
        inv_std[f] = sd < 1e-8 ? 1.0f : (float)(1.0 / sd);
    }
    to.mean = std::move(mean);
    to.inv_std = std::move(inv_std);
}

// --- CIFAR-10 ----------------------------------------------------------------
//
// The binary version: each file is a run of 3073-byte records, one label
// byte (0..9) and 3072 pixel bytes, the 1024 red values of the 32x32 image
// in row-major order, then the green, then the blue. That is already
// (C, H, W) order, so a record's pixels are copied as they are.

static constexpr size_t kCifarPixels = 3 * 32 * 32;
static constexpr size_t kCifarRecord = 1 + kCifarPixels;

static Status cifar_append(const char* path, std::vector<uint8_t>* pixels, std::vector<int32_t>* labels) {
    std::vector<char> buf;
    if (!data_read_all(path, &buf)) return errorf("%s: cannot read: %s", path, std::strerror(errno));
    if (buf.empty()) return errorf("%s: empty file (a CIFAR-10 batch holds %zu-byte records)", path, kCifarRecord);
    if (buf.size() % kCifarRecord != 0)
        return errorf("%s: %zu bytes is not a whole number of %zu-byte CIFAR-10 records (%zu records and %zu "
                      "bytes over: truncated or not a CIFAR-10 binary batch)",
                      path, buf.size(), kCifarRecord, buf.size() / kCifarRecord, buf.size() % kCifarRecord);
    const size_t n = buf.size() / kCifarRecord;
    // Check every label before keeping anything.
    for (size_t i = 0; i < n; ++i) {
        const unsigned label = (unsigned char)buf[i * kCifarRecord];
        if (label > 9)
            return errorf("%s: record %zu has label %u, CIFAR-10 labels are 0..9", path, i, label);
    }
    const size_t first = labels->size();
    labels->resize(first + n);
    const size_t need = (first + n) * kCifarPixels;
    if (need > pixels->capacity()) reserve_large_pages(pixels, std::max(need, 2 * pixels->capacity()));
    pixels->resize(need);
    for (size_t i = 0; i < n; ++i) {  // i: record
        const char* rec = buf.data() + i * kCifarRecord;
        (*labels)[first + i] = (int32_t)(unsigned char)rec[0];
        std::memcpy(pixels->data() + (first + i) * kCifarPixels, rec + 1, kCifarPixels);
    }
    return Status{};
}

Status load_cifar10_files(const char* const* paths, int count, Dataset* out) {
    if (!out) return errorf("load_cifar10: null output");
    if (count < 1 || !paths) return errorf("load_cifar10: no files given");
    std::vector<uint8_t> pixels;
    std::vector<int32_t> labels;
    for (int i = 0; i < count; ++i) {
        if (!paths[i]) return errorf("load_cifar10: file %d of %d is a null path", i + 1, count);
        Status st = cifar_append(paths[i], &pixels, &labels);
        if (!st) return st;
    }
    Dataset d;
    d.u8 = std::move(pixels);
    d.labels = std::move(labels);
    d.n = d.labels.size();
    d.sample = make_shape({3, 32, 32});
    d.num_classes = 10;
    *out = std::move(d);
    return Status{};
}

Status load_cifar10(const char* dir, Dataset* train, Dataset* test) {
    if (!dir) return errorf("load_cifar10: null directory");
    char names[6][4096];
    const char* train_paths[5];
    for (int i = 0; i < 5; ++i) {
        std::snprintf(names[i], sizeof names[i], "%s/data_batch_%d.bin", dir, i + 1);
        train_paths[i] = names[i];
    }
    std::snprintf(names[5], sizeof names[5], "%s/test_batch.bin", dir);
    const char* test_path = names[5];
    Dataset tr, te;
    Status st;
    if (train && !(st = load_cifar10_files(train_paths, 5, &tr))) return st;
    if (test && !(st = load_cifar10_files(&test_path, 1, &te))) return st;
    if (train) *train = std::move(tr);
    if (test) *test = std::move(te);
    return Status{};
}

// Per-channel mean and standard deviation over every pixel of every sample
// of `from` (samples (C, ...)), in scaled units, written per feature into
// `to` so that gather() normalises each channel as torchvision's Normalize
// does with dataset-wide channel statistics.
void fit_channel_normalization(Dataset& to, const Dataset& from) {
    NN_ASSERT(data_consistent(from));
    const size_t F = from.sample_size(), n = from.n;
    const size_t C = from.sample.ndim > 0 ? (size_t)from.sample.dim[0] : 1;
    const size_t per_channel = C ? F / C : F;
    const double scale = from.scale;
    std::vector<double> sum(C, 0.0), sq(C, 0.0);
    auto value = [&](size_t i, size_t f) -> double {
        return from.u8.empty() ? (double)from.f32[i * F + f] : (double)from.u8[i * F + f];
    };
    // Two passes in double (mean, then squared deviations): no cancellation.
    for (size_t i = 0; i < n; ++i)
        for (size_t f = 0; f < F; ++f) sum[f / per_channel] += value(i, f);
    const double count = (double)n * (double)per_channel;
    std::vector<double> mean_raw(C, 0.0);
    for (size_t c = 0; c < C; ++c) mean_raw[c] = count > 0 ? sum[c] / count : 0.0;
    for (size_t i = 0; i < n; ++i)
        for (size_t f = 0; f < F; ++f) {
            const double d = value(i, f) - mean_raw[f / per_channel];
            sq[f / per_channel] += d * d;
        }
    std::vector<float> mean(F), inv_std(F);
    for (size_t f = 0; f < F; ++f) {
        const size_t c = f / per_channel;
        const double sd = count > 0 ? std::sqrt(sq[c] / count) * std::fabs(scale) : 0.0;
        mean[f] = (float)(mean_raw[c] * scale);
        inv_std[f] = sd < 1e-8 ? 1.0f : (float)(1.0 / sd);
    }
    to.mean = std::move(mean);
    to.inv_std = std::move(inv_std);
}

Status split(Dataset& d, float fraction, Dataset* val) {
    if (!val) return errorf("split: null validation output");
    if (val == &d) return errorf("split: the validation set cannot be the data set itself");
    if (!(fraction > 0.0f && fraction < 1.0f))
        return errorf("split: fraction %g is outside (0, 1)", (double)fraction);
    if (!data_consistent(d))
        return errorf("split: data set of %zu samples has inconsistent features or targets", d.n);
    size_t nv = (size_t)std::llround((double)d.n * (double)fraction);
    if (nv == 0 || nv >= d.n)
        return errorf("split: fraction %g of %zu samples leaves %zu for training and %zu for "
                      "validation; both need at least one",
                      (double)fraction, d.n, d.n - (nv < d.n ? nv : d.n), nv);
    const size_t nt = d.n - nv, F = d.sample_size();

    Dataset v;
    v.sample = d.sample;
    v.n = nv;
    v.scale = d.scale;
    v.mean = d.mean;
    v.inv_std = d.inv_std;
    v.num_classes = d.num_classes;
    v.target_size = d.target_size;
    v.one_hot = d.one_hot;
    if (!d.u8.empty()) v.u8.assign(d.u8.begin() + (ptrdiff_t)(nt * F), d.u8.end());
    if (!d.f32.empty()) v.f32.assign(d.f32.begin() + (ptrdiff_t)(nt * F), d.f32.end());
    if (!d.labels.empty()) v.labels.assign(d.labels.begin() + (ptrdiff_t)nt, d.labels.end());
    if (!d.targets.empty())
        v.targets.assign(d.targets.begin() + (ptrdiff_t)(nt * (size_t)d.target_size),
                         d.targets.end());

    if (!d.u8.empty()) d.u8.resize(nt * F);
    if (!d.f32.empty()) d.f32.resize(nt * F);
    if (!d.labels.empty()) d.labels.resize(nt);
    if (!d.targets.empty()) d.targets.resize(nt * (size_t)d.target_size);
    d.n = nt;
    *val = std::move(v);
    return Status{};
}

// --- gather: the per-step conversion ----------------------------------------

static inline void prefetch_bytes(const char* p, size_t n) {
#if defined(__GNUC__)
    for (size_t off = 0; off < n; off += 64) __builtin_prefetch(p + off);
#else
    (void)p;
    (void)n;
#endif
}

// x is (count, F): x[i*F + f] = (raw * scale - mean[f]) * inv_std[f].
// No allocation: this runs every training step.
void gather(const Dataset& d, const uint32_t* idx, int count, float* x, int32_t* y_labels,
            float* y_values, const uint32_t* next_idx, int next_count) {
    const size_t F = d.sample_size();
    const bool norm = !d.mean.empty();
    NN_ASSERT(!norm || (d.mean.size() == F && d.inv_std.size() == F));
    const float* mean = norm ? d.mean.data() : nullptr;
    const float* inv_std = norm ? d.inv_std.data() : nullptr;
    const bool has_labels = d.num_classes > 0 && !d.labels.empty();
    const size_t C = has_labels ? (size_t)d.num_classes : 0;
    const size_t T = d.target_size > 0 ? (size_t)d.target_size : 0;

    // Shuffled rows are scattered over a data set larger than the caches:
    // ask for a later row while converting this one, so that its misses
    // overlap with work instead of stalling it.
    const size_t row_bytes = F * (d.u8.empty() ? sizeof(float) : 1);
    const char* base = d.u8.empty() ? (const char*)d.f32.data() : (const char*)d.u8.data();
    // The next batch's rows (and labels) are asked for too, one row per row
    // converted: they then come from a nearer cache when their turn comes,
    // instead of stalling that gather (Fashion-MNIST's 47 MB exceed L3).
    constexpr int kAhead = 2;
    for (int i = 0; i < count; ++i) {  // sample i of the batch
        const size_t s = idx[i];
        NN_ASSERT(s < d.n);
        if (x && i + kAhead < count && idx[i + kAhead] < d.n)
            prefetch_bytes(base + (size_t)idx[i + kAhead] * row_bytes, row_bytes);
        if (i < next_count && next_idx[i] < d.n) {
            if (x) prefetch_bytes(base + (size_t)next_idx[i] * row_bytes, row_bytes);
            if (has_labels) prefetch_bytes((const char*)(d.labels.data() + next_idx[i]), 1);
        }
        if (x) {
            if (!d.u8.empty())
                convert_f32(x + (size_t)i * F, d.u8.data() + s * F, d.scale, mean, inv_std, F);
            else
                convert_f32(x + (size_t)i * F, d.f32.data() + s * F, d.scale, mean, inv_std, F);
        }
        if (has_labels) {
            const int32_t label = d.labels[s];
            if (y_labels) y_labels[i] = label;
            if (d.one_hot && y_values) {
                NN_ASSERT(label >= 0 && (size_t)label < C);
                float* row = y_values + (size_t)i * C;
                for (size_t c = 0; c < C; ++c) row[c] = 0.0f;
                row[label] = 1.0f;
            }
        } else if (!d.targets.empty() && y_values) {
            const float* src = d.targets.data() + s * T;
            float* row = y_values + (size_t)i * T;
            for (size_t t = 0; t < T; ++t) row[t] = src[t];
        }
    }
}

// --- BatchIterator -------------------------------------------------------------

Status BatchIterator::init(size_t first, size_t count, int batch_size, bool shuffle_, uint64_t seed,
                           bool drop_last_) {
    if (batch_size <= 0 || count == 0)
        return errorf("batches: batch size %d over %zu samples (need a batch of at least 1 and "
                      "at least one sample)",
                      batch_size, count);
    size_t last;
    if (!size_add(first, count, &last) || last > ((size_t)UINT32_MAX))
        return errorf("batches: samples %zu..%zu do not fit 32-bit indices", first,
                      first + (count - 1));
    if (drop_last_ && count < (size_t)batch_size)
        return errorf("batches: %zu samples make no full batch of %d (drop_last)", count,
                      batch_size);
    order.resize(count);
    for (size_t i = 0; i < count; ++i) order[i] = (uint32_t)(first + i);
    pos = 0;
    batch = batch_size;
    shuffle = shuffle_;
    drop_last = drop_last_;
    rng.seed_with(seed);
    return Status{};
}

void BatchIterator::start_epoch() {
    pos = 0;
    if (!shuffle) return;
    for (size_t i = order.size(); i > 1; --i) {  // Fisher-Yates, from the back
        size_t j = rng.below((uint32_t)i);
        uint32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

int BatchIterator::peek(const uint32_t** idx) const {
    size_t left = order.size() - (pos < order.size() ? pos : order.size());
    if (left == 0 || batch <= 0 || (left < (size_t)batch && drop_last)) return 0;
    if (idx) *idx = order.data() + pos;
    return (int)(left < (size_t)batch ? left : (size_t)batch);
}

int BatchIterator::next(const uint32_t** idx) {
    size_t left = order.size() - (pos < order.size() ? pos : order.size());
    if (left == 0 || batch <= 0) return 0;
    size_t b = (size_t)batch;
    if (left < b) {
        if (drop_last) {
            pos = order.size();
            return 0;
        }
        b = left;
    }
    if (idx) *idx = order.data() + pos;
    pos += b;
    return (int)b;
}

size_t BatchIterator::batches_per_epoch() const {
    if (batch <= 0) return 0;
    size_t b = (size_t)batch;
    return drop_last ? order.size() / b : (order.size() + b - 1) / b;
}
// ===========================================================================
// Model: a sequential list of layers that sizes and carves its own arena.
// ===========================================================================

const char* metric_name(Metric m) {
    switch (m) {
        case Metric::None: return "none";
        case Metric::Accuracy: return "accuracy";
        case Metric::CategoricalAccuracy: return "categorical_accuracy";
        case Metric::BinaryAccuracy: return "binary_accuracy";
        case Metric::RegressionAccuracy: return "regression_accuracy";
    }
    return "?";
}

Model::Model(const char* template_name, std::initializer_list<int> sizes) {
    if (std::strcmp(template_name, "basic") != 0) {
        error = errorf("model: unknown template \"%s\" (known: \"basic\")", template_name);
        return;
    }
    if (sizes.size() < 2) {
        error = errorf("model \"basic\": needs at least 2 sizes (inputs, outputs), got %zu", sizes.size());
        return;
    }
    const int* s = sizes.begin();
    const int n = (int)sizes.size();
    for (int i = 0; i + 1 < n; ++i) add(Dense(s[i], s[i + 1], i + 2 < n ? Act::ReLU : Act::Softmax));
    options.loss = CategoricalCrossEntropy();
    options.optimizer = Adam();
    options.metric = Metric::Accuracy;
}

// "dense", "dense_1", ...: Keras's naming, unique within the model.
static void auto_name(const std::vector<Layer>& layers, Layer& L) {
    char base[20];
    std::snprintf(base, sizeof base, "%s", L.type_name());
    for (char* c = base; *c; ++c) *c = (char)std::tolower((unsigned char)*c);
    int same = 0;
    for (const Layer& o : layers)
        if (std::strncmp(o.name, base, std::strlen(base)) == 0 &&
            (o.name[std::strlen(base)] == 0 || o.name[std::strlen(base)] == '_'))
            ++same;
    if (same == 0)
        std::snprintf(L.name, sizeof L.name, "%s", base);
    else
        std::snprintf(L.name, sizeof L.name, "%s_%d", base, same);
}

Status Model::add(Layer layer) {
    if (!error) return error;
    if (compiled) {
        error = errorf("model: add(\"%s\") after compile(); add every layer first", layer.type_name());
        return error;
    }
    if (!layer.name[0]) auto_name(layers, layer);
    else layer.user_named = true;
    if (layers.empty() && input.ndim == 0) {
        if (layer.kind == LayerKind::Dense && layer.in_features > 0) {
            input = make_shape({layer.in_features});
        } else {
            error = errorf("model: the first layer \"%s\" (%s) needs an input shape: call set_input() "
                           "or give Dense its in_features", layer.name, layer.type_name());
            return error;
        }
    }
    Shape in = layers.empty() ? input : layers.back().out_shape;
    Shape out;
    Status st = nn::output_shape(layer, in, &out);
    if (!st) {
        error = st;
        return st;
    }
    layer.in_shape = in;
    layer.out_shape = out;
    layers.push_back(layer);
    return Status{};
}

Layer* Model::find(const char* name) {
    for (Layer& L : layers)
        if (std::strcmp(L.name, name) == 0) return &L;
    return nullptr;
}

Shape Model::output_shape() const { return layers.empty() ? input : layers.back().out_shape; }

// Everything compile carves, built on the side so a failure changes nothing.
struct ModelCarve {
    std::vector<Layer> layers;
    std::vector<Tensor> acts, dacts;
    Tensor x_buf;
    float* y_values = nullptr;
    int32_t* y_labels = nullptr;
    uint32_t* idx_buf = nullptr;
    Optimizer opt;
};

// Layer i's seed, from the model's through splitmix64's mixing: no layer
// then draws the same numbers as a generator seeded with the model's seed
// itself, as fit's shuffle, a data split or a user's Rng usually are. (With
// seed + i, the first layer's weights were the shuffle's first draws.)
static uint64_t layer_seed(uint64_t seed, int i) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static Status carve_model(const Model& m, const CompileOptions& o, Arena& a, ModelCarve* c) {
    Status st;
    c->layers = m.layers;
    const int n = (int)c->layers.size();
    // One set of GEMM scratch slots (one per thread) for all layers, each
    // slot sized for the largest layer's GEMMs.
    size_t stride = 0;
    Shape in = m.input;
    for (int i = 0; i < n; ++i) {
        const Layer& L = c->layers[i];
        Shape out;
        if (!(st = output_shape(L, in, &out))) return st;
        size_t need = 0;
        if (L.kind == LayerKind::Dense)
            need = dense_pack_floats(in.dim[in.ndim - 1], L.units, o.max_batch * (int)(in.ndim == 2 ? in.dim[0] : 1));
        if (L.kind == LayerKind::Recurrent) {
            Layer probe = L;  // rnn_pack_floats needs the sizes build() derives
            probe.in_features = in.dim[1];
            need = rnn_pack_floats(probe, in, o.max_batch);
        }
        if (L.kind == LayerKind::Conv2D) {
            Conv2dGeom g;
            if (!(st = conv_geometry(L, in, o.max_batch, &g))) return st;
            need = conv2d_pack_floats(g);
        }
        stride = need > stride ? need : stride;
        in = out;
    }
    stride = gemm_round_up(stride, kArenaAlign / sizeof(float));  // every slot 64-byte aligned
    const int slots = num_threads();
    size_t pack_floats = 0;
    if (!size_mul(stride, (size_t)slots, &pack_floats))
        return errorf("model: GEMM scratch for %d threads overflows", slots);
    float* pack = stride ? a.alloc_floats(pack_floats, &st, "gemm packing buffers") : nullptr;
    // ReLU then MaxPool2D: the pooling applies the ReLU to its output, 4x
    // smaller with 2x2 windows, and masks its own gradient; the ReLU layer
    // passes through and its buffers are views (see Layer::passthrough).
    for (int i = 1; i + 1 < n; ++i) {
        Layer& r = c->layers[i];
        Layer& p = c->layers[i + 1];
        const bool fuse = r.kind == LayerKind::Activation && r.act == Act::ReLU && p.kind == LayerKind::MaxPool2D;
        r.passthrough = fuse;
        p.relu_after_pool = fuse;
    }
    in = m.input;
    for (int i = 0; i < n && st; ++i) {
        Layer& L = c->layers[i];
        L.pack = pack;
        L.pack_slots = slots;
        L.pack_stride = stride;
        L.pack_shared = true;
        st = build(L, in, o.max_batch, a, layer_seed(o.seed, i));
        in = L.out_shape;
    }
    if (!st) return st;
    c->acts.resize(n);
    c->dacts.resize(n);
    st = tensor_alloc(a, batched(m.input, o.max_batch), &c->x_buf, "model input batch");
    // Gradients: dacts[i] is live only from layer i + 1's backward, which
    // writes it, to layer i's, which reads it; so two buffers of the largest
    // size, taken in turn, hold them all (half the memory of one per layer,
    // which for a convolutional network is most of the arena).
    // Below the first layer with parameters no gradient is computed (see
    // backward_all); the loss writes the last or, for a fused softmax, the
    // one before.
    int first = 0;
    while (first < n && c->layers[first].n_params == 0) ++first;
    if (first > n - 2) first = n - 2 < 0 ? 0 : n - 2;
    size_t grad_floats = 0;
    for (int i = first; i < n; ++i) {
        const size_t f = batched(c->layers[i].out_shape, o.max_batch).numel();
        grad_floats = f > grad_floats ? f : grad_floats;
    }
    float* grad_buf[2] = {nullptr, nullptr};
    if (st) grad_buf[0] = a.alloc_floats(grad_floats, &st, "layer gradients (ping)");
    if (st) grad_buf[1] = a.alloc_floats(grad_floats, &st, "layer gradients (pong)");
    int turn = 1;
    for (int i = 0; i < n && st; ++i) {
        const Shape s = batched(c->layers[i].out_shape, o.max_batch);
        // Flatten only renames the shape: its output (and its gradient) is a
        // view of its input's buffer, so neither pass copies anything. So
        // for a ReLU whose work the MaxPool2D after it does.
        if (c->layers[i].kind == LayerKind::Flatten || (c->layers[i].passthrough && i > 0)) {
            c->acts[i] = tensor_view(i > 0 ? c->acts[i - 1].data : c->x_buf.data, s);
            if (i > 0) {
                c->dacts[i] = tensor_view(c->dacts[i - 1].data, s);
                continue;
            }
        } else {
            st = tensor_alloc(a, s, &c->acts[i], c->layers[i].name);
        }
        turn ^= 1;  // never the buffer of the layer's input gradient
        c->dacts[i] = tensor_view(i >= first ? grad_buf[turn] : nullptr, s);
    }
    if (!st) return st;
    const size_t width = c->layers.back().out_shape.numel();
    c->y_values = a.alloc_floats((size_t)o.max_batch * width, &st, "model targets");
    c->y_labels = static_cast<int32_t*>(a.alloc((size_t)o.max_batch * sizeof(int32_t), &st, "model labels"));
    c->idx_buf = static_cast<uint32_t*>(a.alloc((size_t)o.max_batch * sizeof(uint32_t), &st, "model indices"));
    if (!st) return st;
    std::vector<Param> params;  // setup only: the optimizer copies it into the arena
    for (Layer& L : c->layers) {
        Param p[kMaxParams];
        int k = layer_params(L, p, kMaxParams);
        for (int j = 0; j < k; ++j) params.push_back(p[j]);
    }
    return c->opt.init(o.optimizer, params.data(), (int)params.size(), a);
}

static Status check_compile_options(const Model& m, const CompileOptions& o) {
    if (!m.error) return m.error;
    if (m.layers.empty()) return errorf("model: compile() with no layers");
    if (o.max_batch < 1) return errorf("model: max_batch must be >= 1 (got %d)", o.max_batch);
    Status st = validate(o.optimizer);
    if (!st) return st;
    // Re-derive every shape: layers may have been edited since add().
    Shape in = m.input;
    for (const Layer& L : m.layers) {
        Shape out;
        st = output_shape(L, in, &out);
        if (!st) return st;
        in = out;
    }
    const size_t width = in.numel();
    const LossKind k = o.loss.kind;
    if ((k == LossKind::CrossEntropy || k == LossKind::CategoricalCrossEntropy) && width < 2)
        return errorf("model: loss %s needs at least 2 outputs, the last layer \"%s\" has %zu",
                      loss_name(k), m.layers.back().name, width);
    return Status{};
}

static Status measure_bytes(const Model& m, const CompileOptions& o, size_t* bytes) {
    Status st = check_compile_options(m, o);
    if (!st) return st;
    Arena probe;
    probe.begin_measure();
    ModelCarve c;
    st = carve_model(m, o, probe, &c);
    if (!st) return st;
    *bytes = probe.peak;
    return Status{};
}

Status Model::measure(const CompileOptions& opt, size_t* bytes) { return measure_bytes(*this, opt, bytes); }

Status Model::compile(const CompileOptions& opt) {
    size_t need = 0;
    Status st = measure_bytes(*this, opt, &need);
    if (!st) return st;
    const Shape out = output_shape();
    if (loss_takes_labels(opt.loss.kind) && out.ndim > 1) {
        char buf[64];
        return errorf("model: loss %s takes one class label per sample, but the model outputs %s per sample; "
                      "for a label per step, run the layers yourself and call softmax_cross_entropy on a "
                      "(B * steps, classes) view", loss_name(opt.loss.kind), shape_str(out, buf, sizeof buf));
    }
    if (opt.arena_buffer) {
        uintptr_t p = reinterpret_cast<uintptr_t>(opt.arena_buffer);
        size_t skip = (kArenaAlign - p % kArenaAlign) % kArenaAlign;
        size_t usable = opt.arena_bytes > skip ? opt.arena_bytes - skip : 0;
        if (usable < need)
            return errorf("model: arena buffer too small for max_batch %d: requested %zu bytes, available %zu, "
                          "missing %zu (buffer %zu bytes, %zu lost to 64-byte alignment)",
                          opt.max_batch, need, usable, need - usable, opt.arena_bytes, skip);
        st = arena.wrap(opt.arena_buffer, opt.arena_bytes);
    } else {
        st = arena.reserve(need);
    }
    if (!st) return st;
    ModelCarve c;
    st = carve_model(*this, opt, arena, &c);
    NN_ASSERT(st.ok());  // the dry run carved the same sizes
    layers = c.layers;
    acts = c.acts;
    dacts = c.dacts;
    x_buf = c.x_buf;
    y_values = c.y_values;
    y_labels = c.y_labels;
    idx_buf = c.idx_buf;
    optimizer = c.opt;
    options = opt;
    arena_needed = need;
    step_count = 0;
    const Layer& last = layers.back();
    // Categorical cross-entropy after a softmax is computed from the logits in
    // one stable step (Dense with a Softmax activation, or a Softmax layer
    // that follows another layer).
    fused_softmax_ce = opt.loss.kind == LossKind::CategoricalCrossEntropy && last.act == Act::Softmax &&
                       (last.kind == LayerKind::Dense || (last.kind == LayerKind::Activation && layers.size() >= 2));
    compiled = true;
    return Status{};
}

// --- Forward, loss, backward -------------------------------------------------

static Tensor batch_rows(const Tensor& t, int B) { return t.rows(0, B); }

static Status forward_all(Model& m, const Tensor& x, Mode mode) {
    const int B = x.shape.dim[0];
    Tensor cur = x;
    for (size_t i = 0; i < m.layers.size(); ++i) {
        Tensor y = batch_rows(m.acts[i], B);
        Status st = forward(m.layers[i], y, cur, mode);
        if (!st) return st;
        cur = y;
    }
    return Status{};
}

// Loss of the last forward pass; when `grad`, also dL/d(output) into dacts
// (for the fused softmax cross-entropy: dL/d(logits), see backward_all).
static Status loss_of_batch(Model& m, int B, const Target& t, bool grad, float* loss_out) {
    const int n = (int)m.layers.size();
    Layer& last = m.layers[n - 1];
    Tensor out = batch_rows(m.acts[n - 1], B);
    Status st;
    if (m.fused_softmax_ce) {
        Tensor z, dz;
        if (last.kind == LayerKind::Dense) {
            z = tensor_view(last.logits, out.shape);
            dz = grad ? batch_rows(m.dacts[n - 1], B) : Tensor{};
        } else {  // a Softmax layer: its input, the previous layer's output, holds the logits
            z = batch_rows(m.acts[n - 2], B);
            dz = grad ? batch_rows(m.dacts[n - 2], B) : Tensor{};
        }
        st = softmax_cross_entropy(dz, nullptr, z, t, loss_out);
    } else {
        Tensor dp = grad ? batch_rows(m.dacts[n - 1], B) : Tensor{};
        st = loss_forward_backward(m.options.loss, dp, out, t, loss_out);
    }
    if (!st) return st;
    for (const Layer& L : m.layers) *loss_out += regularization_loss(L);
    return Status{};
}

// Backward from the loss down to the first layer with parameters: below it
// no gradient is wanted, and that layer's own input gradient is skipped (for
// an MLP behind Flatten this saves a GEMM as large as the first forward).
// Each layer of a sequential model is used once per step, so its parameter
// gradients are written, not accumulated: no zeroing pass is needed.
static Status backward_all(Model& m, const Tensor& x) {
    const int B = x.shape.dim[0];
    const int n = (int)m.layers.size();
    int first = 0;
    while (first < n && m.layers[first].n_params == 0) ++first;
    int i = n - 1;
    if (m.fused_softmax_ce && m.layers[i].kind == LayerKind::Activation) --i;  // dz already in dacts[i]
    for (; i >= first; --i) {
        Layer& L = m.layers[i];
        const Tensor xi = i > 0 ? batch_rows(m.acts[i - 1], B) : x;
        Tensor dx = i > first ? batch_rows(m.dacts[i - 1], B) : Tensor{};
        Tensor dy = batch_rows(m.dacts[i], B);
        Status st;
        if (m.fused_softmax_ce && i == (int)m.layers.size() - 1)
            st = backward_preact_impl(L, dx, dy, xi, true);
        else
            st = backward_impl(L, dx, dy, xi, batch_rows(m.acts[i], B), true);
        if (!st) return st;
        regularization_backward(L);
    }
    return Status{};
}

Status Model::train_step(int B, const Target& t, float* loss_out) {
    if (!compiled) return errorf("model: train_step() before compile()");
    if (B < 1 || B > options.max_batch)
        return errorf("model: batch of %d outside 1..max_batch (%d)", B, options.max_batch);
    mode = Mode::Train;
    Tensor x = batch_rows(x_buf, B);
    Status st = forward_all(*this, x, Mode::Train);
    float loss = 0.0f;
    if (st) st = loss_of_batch(*this, B, t, true, &loss);
    if (!st) return st;
    *loss_out = loss;
    if (!std::isfinite(loss)) return errorf("loss is %g", (double)loss);
    st = backward_all(*this, x);
    if (!st) return st;
    optimizer.step();
    ++step_count;
    return Status{};
}

// --- Targets and metrics -----------------------------------------------------

static Metric resolve_metric(const Model& m, const Dataset& d) {
    Metric k = m.options.metric;
    if (k != Metric::Accuracy) return k;
    const size_t width = m.output_shape().numel();
    const LossKind l = m.options.loss.kind;
    if (l == LossKind::BinaryCrossEntropy || l == LossKind::BinaryCrossEntropyLogits) return Metric::BinaryAccuracy;
    if (d.num_classes > 0) return width > 1 ? Metric::CategoricalAccuracy : Metric::BinaryAccuracy;
    return Metric::RegressionAccuracy;
}

static Status check_dataset(const Model& m, const Dataset& d, const char* what) {
    if (!m.compiled) return errorf("model: %s before compile()", what);
    if (d.n == 0) return errorf("model: %s on an empty data set", what);
    char a[64], b[64];
    if (d.sample_size() != m.input.numel())
        return errorf("model: %s: data samples %s have %zu values, the model input %s has %zu", what,
                      shape_str(d.sample, a, sizeof a), d.sample_size(), shape_str(m.input, b, sizeof b),
                      m.input.numel());
    const size_t width = m.output_shape().numel();
    if (d.num_classes == 0 && d.target_size == 0)
        return errorf("model: %s: the data set has neither labels nor targets", what);
    if (d.num_classes > 0 && width > 1 && (size_t)d.num_classes > width)
        return errorf("model: %s: the data set has %d classes, the model outputs %zu", what, d.num_classes, width);
    if (d.num_classes > 0 && width == 1 && d.num_classes > 2)
        return errorf("model: %s: one output needs binary labels, the data set has %d classes", what,
                      d.num_classes);
    if (d.num_classes == 0 && (size_t)d.target_size != width)
        return errorf("model: %s: targets have %d values per sample, the model outputs %zu", what,
                      d.target_size, width);
    return Status{};
}

// Gathers samples idx[0..B) into the model's buffers and says where the
// targets are, converting labels to the form the loss takes.
static Target load_batch(Model& m, const Dataset& d, const uint32_t* idx, int B,
                         const uint32_t* next_idx = nullptr, int next_B = 0) {
    const size_t width = m.output_shape().numel();
    Target t;
    if (d.num_classes == 0) {
        gather(d, idx, B, m.x_buf.data, nullptr, m.y_values, next_idx, next_B);
        t.values = m.y_values;
        return t;
    }
    // Labelled data (one-hot or not): take the labels, and build one-hot rows
    // at the model's output width where the loss needs values.
    gather(d, idx, B, m.x_buf.data, m.y_labels, nullptr, next_idx, next_B);
    const LossKind l = m.options.loss.kind;
    if (l == LossKind::CrossEntropy || l == LossKind::CategoricalCrossEntropy) {
        t.labels = m.y_labels;
        return t;
    }
    // A loss on values with labelled data: one-hot rows (or the 0/1 label).
    for (int r = 0; r < B; ++r) {
        float* row = m.y_values + (size_t)r * width;
        if (width == 1) {
            row[0] = (float)m.y_labels[r];
        } else {
            for (size_t j = 0; j < width; ++j) row[j] = 0.0f;
            if (m.y_labels[r] >= 0 && (size_t)m.y_labels[r] < width) row[m.y_labels[r]] = 1.0f;
        }
    }
    t.values = m.y_values;
    return t;
}

static int argmax_row(const float* p, size_t n) {
    size_t best = 0;
    for (size_t j = 1; j < n; ++j)
        if (p[j] > p[best]) best = j;
    return (int)best;
}

// Number of samples in the batch the metric counts as right.
static double metric_hits(const Model& m, Metric k, int B, const Target& t, float precision) {
    const Tensor& out = m.acts.back();
    const size_t w = out.row_size();
    const float* p = out.data;
    double hits = 0;
    switch (k) {
        case Metric::None:
        case Metric::Accuracy: return 0;
        case Metric::CategoricalAccuracy:
            for (int r = 0; r < B; ++r) {
                int truth = t.labels ? t.labels[r] : argmax_row(t.values + (size_t)r * w, w);
                hits += argmax_row(p + (size_t)r * w, w) == truth;
            }
            return hits;
        case Metric::BinaryAccuracy: {
            float thr = m.options.binary_threshold;
            if (m.options.loss.kind == LossKind::BinaryCrossEntropyLogits) thr = std::log(thr / (1.0f - thr));
            for (int r = 0; r < B; ++r)
                for (size_t j = 0; j < w; ++j) {
                    float tv = t.values ? t.values[(size_t)r * w + j] : (float)t.labels[r];
                    hits += (p[(size_t)r * w + j] > thr) == (tv > 0.5f);
                }
            return hits / (double)w;
        }
        case Metric::RegressionAccuracy:
            for (int r = 0; r < B; ++r)
                for (size_t j = 0; j < w; ++j)
                    hits += std::fabs(p[(size_t)r * w + j] - t.values[(size_t)r * w + j]) < precision;
            return hits / (double)w;
    }
    return 0;
}

// nn_mini's regression precision: std(targets) / 250.
static float regression_precision(const Model& m, const Dataset& d) {
    if (m.options.regression_precision > 0.0f) return m.options.regression_precision;
    if (d.targets.empty()) return 0.0f;
    double s = 0, s2 = 0;
    for (float v : d.targets) {
        s += v;
        s2 += (double)v * v;
    }
    const double n = (double)d.targets.size();
    const double var = s2 / n - (s / n) * (s / n);
    return (float)(std::sqrt(var > 0 ? var : 0) / 250.0);
}

// Loss and metric over samples [first, first + count) in order, eval mode.
static Status evaluate_range(Model& m, const Dataset& d, size_t first, size_t count, int batch,
                             EvalResult* out) {
    const Metric k = resolve_metric(m, d);
    const float precision = regression_precision(m, d);
    double loss_sum = 0, hits = 0;
    for (size_t s = 0; s < count; s += (size_t)batch) {
        const int B = (int)(count - s < (size_t)batch ? count - s : (size_t)batch);
        for (int r = 0; r < B; ++r) m.idx_buf[r] = (uint32_t)(first + s + (size_t)r);
        Target t = load_batch(m, d, m.idx_buf, B);
        Tensor x = batch_rows(m.x_buf, B);
        Status st = forward_all(m, x, Mode::Eval);
        float loss = 0;
        if (st) st = loss_of_batch(m, B, t, false, &loss);
        if (!st) return st;
        loss_sum += (double)loss * B;
        hits += metric_hits(m, k, B, t, precision);
    }
    out->n = count;
    out->loss = loss_sum / (double)count;
    out->metric = hits / (double)count;
    return Status{};
}

Status Model::evaluate(const Dataset& d, EvalResult* out, int batch_size) {
    Status st = check_dataset(*this, d, "evaluate");
    if (!st) return st;
    if (batch_size < 0 || batch_size > options.max_batch)
        return errorf("model: evaluate batch %d outside 1..max_batch (%d)", batch_size, options.max_batch);
    mode = Mode::Eval;
    return evaluate_range(*this, d, 0, d.n, batch_size ? batch_size : options.max_batch, out);
}

Status Model::predict(const Tensor& x, Tensor out) {
    if (!compiled) return errorf("model: predict() before compile()");
    const size_t in = input.numel(), width = output_shape().numel();
    char a[64];
    if (x.shape.ndim < 1 || x.shape.dim[0] < 1 || x.row_size() != in)
        return errorf("model: predict input %s does not hold samples of %zu values", shape_str(x.shape, a, sizeof a), in);
    const int N = x.shape.dim[0];
    if (!out.data || out.numel() < (size_t)N * width)
        return errorf("model: predict output holds %zu values, needs %d x %zu", out.numel(), N, width);
    mode = Mode::Eval;
    const int mb = options.max_batch;
    for (int s = 0; s < N; s += mb) {
        const int B = N - s < mb ? N - s : mb;
        Tensor xs = tensor_view(x.data + (size_t)s * in, batched(input, B));
        Status st = forward_all(*this, xs, Mode::Eval);
        if (!st) return st;
        std::memcpy(out.data + (size_t)s * width, acts.back().data, (size_t)B * width * sizeof(float));
    }
    return Status{};
}

Status Model::confusion_matrix(const Dataset& d, int64_t* out) {
    Status st = check_dataset(*this, d, "confusion_matrix");
    if (!st) return st;
    const int C = (int)output_shape().numel();
    if (d.num_classes == 0 || C < 2)
        return errorf("model: confusion_matrix needs labelled data and at least 2 outputs (got %d)", C);
    std::memset(out, 0, sizeof(int64_t) * (size_t)C * (size_t)C);
    mode = Mode::Eval;
    const int mb = options.max_batch;
    for (size_t s = 0; s < d.n; s += (size_t)mb) {
        const int B = (int)(d.n - s < (size_t)mb ? d.n - s : (size_t)mb);
        for (int r = 0; r < B; ++r) idx_buf[r] = (uint32_t)(s + (size_t)r);
        gather(d, idx_buf, B, x_buf.data, y_labels, nullptr);
        st = forward_all(*this, batch_rows(x_buf, B), Mode::Eval);
        if (!st) return st;
        for (int r = 0; r < B; ++r) {
            const int pred = argmax_row(acts.back().data + (size_t)r * C, (size_t)C);
            const int truth = y_labels[r];
            if (truth >= 0 && truth < C) ++out[(size_t)truth * C + pred];
        }
    }
    return Status{};
}

// --- Progress, as Keras prints it -------------------------------------------

static double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

static void format_duration(char* buf, size_t cap, double s) {
    if (s >= 3600)
        std::snprintf(buf, cap, "%d:%02d:%02d", (int)(s / 3600), (int)(s / 60) % 60, (int)s % 60);
    else if (s >= 60)
        std::snprintf(buf, cap, "%d:%02d", (int)(s / 60), (int)s % 60);
    else
        std::snprintf(buf, cap, "%ds", (int)(s + 0.5));
}

static void format_per_step(char* buf, size_t cap, double s) {
    if (s >= 1.0)
        std::snprintf(buf, cap, "%.0fs/step", s);
    else if (s >= 1e-3)
        std::snprintf(buf, cap, "%.0fms/step", s * 1e3);
    else
        std::snprintf(buf, cap, "%.0fus/step", s * 1e6);
}

struct Progress {
    FILE* out = stdout;
    bool tty = false;
    int verbose = 1;
    size_t total = 0;
    double start = 0, last_print = 0;
    int last_len = 0;
    const char* metric = "accuracy";
    bool has_metric = true;

    // `final`: the epoch's closing line with time per step (and validation).
    void show(size_t done, double loss, double metric_value, bool final, const EpochStats* e = nullptr) {
        if (verbose != 1) return;
        const double t = now_seconds();
        if (!final && t - last_print < (tty ? 0.1 : 5.0)) return;
        last_print = t;
        char line[320];
        int at = 0;
        const int digits = std::snprintf(nullptr, 0, "%zu", total);
        at += std::snprintf(line + at, sizeof line - at, "%*zu/%zu [", digits, done, total);
        const int width = 30;
        const int filled = total ? (int)(width * done / total) : width;
        for (int i = 0; i < width; ++i)
            line[at++] = i < filled - 1 ? '=' : (i == filled - 1 ? (done < total ? '>' : '=') : '.');
        line[at++] = ']';
        char a[32], b[32];
        const double elapsed = t - start;
        if (final) {
            format_duration(a, sizeof a, elapsed);
            format_per_step(b, sizeof b, done ? elapsed / (double)done : 0.0);
            at += std::snprintf(line + at, sizeof line - at, " %s %s", a, b);
        } else {
            format_duration(a, sizeof a, done ? elapsed / (double)done * (double)(total - done) : 0.0);
            at += std::snprintf(line + at, sizeof line - at, " ETA: %s", a);
        }
        at += std::snprintf(line + at, sizeof line - at, " - loss: %.4f", loss);
        if (has_metric) at += std::snprintf(line + at, sizeof line - at, " - %s: %.4f", metric, metric_value);
        if (e && e->has_val) {
            at += std::snprintf(line + at, sizeof line - at, " - val_loss: %.4f", e->val_loss);
            if (has_metric) at += std::snprintf(line + at, sizeof line - at, " - val_%s: %.4f", metric, e->val_metric);
        }
        if (at > (int)sizeof line - 1) at = (int)sizeof line - 1;
        line[at] = 0;
        if (tty) {
            const int pad = last_len > at ? last_len - at : 0;
            std::fprintf(out, "\r%s%*s", line, pad, "");
            if (final) std::fputc('\n', out);
        } else {
            std::fprintf(out, "%s\n", line);
        }
        last_len = at;
        std::fflush(out);
    }
};

// Checkpoints, with fit's shuffling state (see "Checkpoints" below).
struct FitState {
    int epochs_done = 0;
    const BatchIterator* it = nullptr;
};
static Status write_checkpoint(Model& m, const FitState& fs, const char* path);
static Status read_checkpoint(Model& m, const char* path, BatchIterator* it, int* epochs_done);

Status Model::fit(const Dataset& train, const FitOptions& o) {
    Status st = check_dataset(*this, train, "fit");
    if (!st) return st;
    if (o.epochs < 1) return errorf("model: fit epochs must be >= 1 (got %d)", o.epochs);
    if (o.batch_size < 1 || o.batch_size > options.max_batch)
        return errorf("model: fit batch_size %d outside 1..max_batch (%d given to compile)", o.batch_size,
                      options.max_batch);
    if (!(o.validation_split >= 0.0f && o.validation_split < 1.0f))
        return errorf("model: validation_split must be in [0, 1) (got %g)", (double)o.validation_split);
    if (o.verbose < 0 || o.verbose > 2) return errorf("model: verbose must be 0, 1 or 2 (got %d)", o.verbose);
    if (o.steps_per_epoch < 0)
        return errorf("model: steps_per_epoch must be >= 0 (got %lld)", (long long)o.steps_per_epoch);
    const Dataset* val = o.validation;
    size_t n_train = train.n, val_first = 0, n_val = 0;
    if (val) {
        st = check_dataset(*this, *val, "fit (validation set)");
        if (!st) return st;
        n_val = val->n;
    } else if (o.validation_split > 0.0f) {
        n_val = (size_t)((double)train.n * o.validation_split + 0.5);  // Keras: the last fraction
        if (n_val == 0 || n_val >= train.n)
            return errorf("model: validation_split %g of %zu samples leaves an empty side",
                          (double)o.validation_split, train.n);
        n_train = train.n - n_val;
        val_first = n_train;
        val = &train;
    }
    if (o.checkpoint_path && o.checkpoint_every < 1)
        return errorf("model: fit checkpoint_every must be >= 1 (got %d)", o.checkpoint_every);
    BatchIterator it;
    st = it.init(0, n_train, o.batch_size, o.shuffle, o.seed);
    if (!st) return st;
    int first_epoch = 0;
    if (o.resume_from) {
        st = read_checkpoint(*this, o.resume_from, &it, &first_epoch);
        if (!st) return errorf("model: fit cannot resume: %s", st.message());
        if (first_epoch >= o.epochs)
            return errorf("model: fit resumes from %s after %d epochs; epochs = %d leaves nothing to do", o.resume_from,
                          first_epoch, o.epochs);
    }
    history.epochs.reserve(history.epochs.size() + (size_t)o.epochs);

    const Metric k = resolve_metric(*this, train);
    const float precision = regression_precision(*this, train);
    Progress bar;
    bar.out = o.out ? o.out : stdout;
#ifdef NN_HAVE_ISATTY
    bar.tty = isatty(fileno(bar.out)) != 0;
#endif
    bar.verbose = o.verbose;
    bar.total = it.batches_per_epoch();
    if (o.steps_per_epoch > 0 && (size_t)o.steps_per_epoch < bar.total) bar.total = (size_t)o.steps_per_epoch;
    bar.metric = metric_name(options.metric);
    bar.has_metric = k != Metric::None;
#ifndef NN_NO_FTZ
    const uint64_t fp_state = flush_denormals();
#endif
    for (int e = first_epoch; e < o.epochs && st; ++e) {
        if (o.verbose == 1) std::fprintf(bar.out, "Epoch %d/%d\n", e + 1, o.epochs);
        it.start_epoch();
        bar.start = bar.last_print = now_seconds();
        EpochStats es;
        es.epoch = (int)history.epochs.size() + 1;
        es.lr = optimizer.current_lr();
        double loss_sum = 0, hits = 0;
        size_t seen = 0, step = 0;
        const uint32_t* idx;
        int B;
        while (step < bar.total && (B = it.next(&idx)) > 0) {
            const uint32_t* next_idx = nullptr;  // prefetched while this batch is gathered
            const int next_B = step + 1 < bar.total ? it.peek(&next_idx) : 0;
            Target t = load_batch(*this, train, idx, B, next_idx, next_B);
            float loss = 0;
            st = train_step(B, t, &loss);
            if (!st) {
                if (bar.tty && o.verbose == 1) std::fputc('\n', bar.out);
                st = errorf("model: fit stopped at epoch %d, step %zu of %zu: %s; the weights are those "
                            "from before this step",
                            e + 1, step + 1, bar.total, st.message());
                break;
            }
            ++step;
            if (o.on_batch_end) o.on_batch_end(o.user, e + 1, (int64_t)step, loss);
            loss_sum += (double)loss * B;
            hits += metric_hits(*this, k, B, t, precision);
            seen += (size_t)B;
            bar.show(step, loss_sum / (double)seen, hits / (double)seen, false);
        }
        if (!st) break;
        optimizer.end_epoch();
        es.seconds = now_seconds() - bar.start;
        es.steps = (int64_t)step;
        es.loss = loss_sum / (double)seen;
        es.metric = hits / (double)seen;
        if (val) {
            EvalResult r;
            st = evaluate_range(*this, *val, val_first, n_val, options.max_batch, &r);
            if (!st) break;
            es.has_val = true;
            es.val_loss = r.loss;
            es.val_metric = r.metric;
        }
        history.epochs.push_back(es);
        bar.show(step, es.loss, es.metric, true, &es);
        if (o.verbose == 2) {
            char a[32], b[32];
            format_duration(a, sizeof a, es.seconds);
            format_per_step(b, sizeof b, es.seconds / (double)(step ? step : 1));
            std::fprintf(bar.out, "Epoch %d/%d - %s %s - loss: %.4f", e + 1, o.epochs, a, b, es.loss);
            if (bar.has_metric) std::fprintf(bar.out, " - %s: %.4f", bar.metric, es.metric);
            if (es.has_val) {
                std::fprintf(bar.out, " - val_loss: %.4f", es.val_loss);
                if (bar.has_metric) std::fprintf(bar.out, " - val_%s: %.4f", bar.metric, es.val_metric);
            }
            std::fputc('\n', bar.out);
            std::fflush(bar.out);
        }
        if (o.checkpoint_path && ((e + 1) % o.checkpoint_every == 0 || e + 1 == o.epochs)) {
            FitState fs;
            fs.epochs_done = e + 1;
            fs.it = &it;
            st = write_checkpoint(*this, fs, o.checkpoint_path);
            if (!st) st = errorf("model: fit stopped after epoch %d: %s", e + 1, st.message());
        }
    }
#ifndef NN_NO_FTZ
    restore_denormals(fp_state);
#endif
    mode = Mode::Eval;
    return st;
}

// --- History and summary -----------------------------------------------------

Status History::write_csv(const char* path) const {
    FILE* f = std::fopen(path, "w");
    if (!f) return errorf("history: cannot open \"%s\" for writing: %s", path, std::strerror(errno));
    std::fprintf(f, "epoch,loss,metric,val_loss,val_metric,seconds,lr\n");
    for (const EpochStats& e : epochs) {
        std::fprintf(f, "%d,%.6g,%.6g,", e.epoch, e.loss, e.metric);
        if (e.has_val)
            std::fprintf(f, "%.6g,%.6g,", e.val_loss, e.val_metric);
        else
            std::fprintf(f, ",,");
        std::fprintf(f, "%.6g,%.6g\n", e.seconds, e.lr);
    }
    const bool bad = std::ferror(f) != 0;
    if (std::fclose(f) != 0 || bad) return errorf("history: writing \"%s\" failed: %s", path, std::strerror(errno));
    return Status{};
}

// Parameters of a layer before it is built (Dense knows its own).
// Parameters a layer has, or will have once built (running statistics are
// not trainable).
static size_t planned_params(const Layer& L, bool trainable_only) {
    if (trainable_only && L.frozen) return 0;
    Layer c = L;
    if (!L.built && L.kind != LayerKind::Custom) {
        Shape in = L.in_shape;
        if (in.ndim == 0 && L.kind == LayerKind::Dense) in = make_shape({L.in_features});
        if (in.ndim == 0 || !declare_layer_params(c, in).ok()) return 0;
    }
    size_t n = 0;
    for (int i = 0; i < c.n_params; ++i)
        if (!(trainable_only && c.buffer[i])) n += c.param_shape[i].numel();
    return n;
}

size_t Model::param_count(bool trainable_only) const {
    size_t n = 0;
    for (const Layer& L : layers) n += planned_params(L, trainable_only);
    return n;
}

int Model::n_params(Param* out, int cap) {
    int k = 0;
    for (Layer& L : layers) k += layer_params(L, out + k, cap - k);
    return k;
}

// 1234567 -> "1,234,567"
static const char* thousands(char* buf, size_t cap, unsigned long long v) {
    char tmp[32];
    int n = std::snprintf(tmp, sizeof tmp, "%llu", v);
    size_t at = 0;
    for (int i = 0; i < n && at + 1 < cap; ++i) {
        if (i > 0 && (n - i) % 3 == 0 && at + 1 < cap) buf[at++] = ',';
        buf[at++] = tmp[i];
    }
    buf[at] = 0;
    return buf;
}

void Model::summary(FILE* out) const {
    if (!out) out = stdout;
    const char* rule = "_________________________________________________________________";
    const char* dbl = "=================================================================";
    std::fprintf(out, "Model: \"sequential\"\n%s\n", rule);
    std::fprintf(out, " %-28s %-25s %-10s\n%s\n", "Layer (type)", "Output Shape", "Param #", dbl);
    char name[80], shp[64], num[32];
    for (size_t i = 0; i < layers.size(); ++i) {
        const Layer& L = layers[i];
        std::snprintf(name, sizeof name, "%s (%s)", L.name, L.type_name());
        int at = std::snprintf(shp, sizeof shp, "(None");
        for (int d = 0; d < L.out_shape.ndim && at < (int)sizeof shp; ++d)
            at += std::snprintf(shp + at, sizeof shp - (size_t)at, ", %d", L.out_shape.dim[d]);
        if (at < (int)sizeof shp) std::snprintf(shp + at, sizeof shp - (size_t)at, ")");
        std::fprintf(out, " %-28s %-25s %-10s\n", name, shp, thousands(num, sizeof num, planned_params(L, false)));
    }
    const size_t total = param_count(false), trainable = param_count(true);
    std::fprintf(out, "%s\n", dbl);
    std::fprintf(out, "Total params: %s\n", thousands(num, sizeof num, total));
    std::fprintf(out, "Trainable params: %s\n", thousands(num, sizeof num, trainable));
    std::fprintf(out, "Non-trainable params: %s\n", thousands(num, sizeof num, total - trainable));
    size_t bytes = arena_needed;
    int mb = options.max_batch;
    if (!compiled && !measure_bytes(*this, options, &bytes).ok()) bytes = 0;
    if (bytes)
        std::fprintf(out, "Arena: %s bytes at max batch %d\n", thousands(num, sizeof num, bytes), mb);
    std::fprintf(out, "%s\n", rule);
}
// ===========================================================================
// Files: safetensors reader and writer, model files.
// ===========================================================================

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::F64: return "F64";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::I16: return "I16";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::BOOL: return "BOOL";
    }
    return "?";
}

size_t dtype_size(DType t) {
    switch (t) {
        case DType::F64:
        case DType::I64: return 8;
        case DType::F32:
        case DType::I32: return 4;
        case DType::F16:
        case DType::BF16:
        case DType::I16: return 2;
        case DType::I8:
        case DType::U8:
        case DType::BOOL: return 1;
    }
    return 0;
}

static bool dtype_from_name(const std::string& s, DType* out) {
    static const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64,
                                DType::I32, DType::I16, DType::I8,   DType::U8,  DType::BOOL};
    for (DType t : all)
        if (s == dtype_name(t)) {
            *out = t;
            return true;
        }
    return false;
}

size_t StEntry::numel() const {
    size_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= (size_t)shape[i];
    return n;
}

const StEntry* SafeTensors::find(const char* name) const {
    for (const StEntry& e : entries)
        if (e.name == name) return &e;
    return nullptr;
}

const char* SafeTensors::meta(const char* key) const {
    for (const auto& kv : metadata)
        if (kv.first == key) return kv.second.c_str();
    return nullptr;
}

// --- The header's JSON: a strict reader for exactly the safetensors schema ------

constexpr uint64_t kStMaxHeader = 100ull << 20;  // 100 MB, as the reference implementation
constexpr int kStMaxDims = 8;

// Well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
static bool utf8_valid(const uint8_t* s, size_t n, size_t* bad) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { ++i; continue; }
        else if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
        else { *bad = i; return false; }
        if (i + len > n) { *bad = i; return false; }
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xC0) != 0x80) { *bad = i; return false; }
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        const uint32_t min = len == 2 ? 0x80 : (len == 3 ? 0x800 : 0x10000);
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) { *bad = i; return false; }
        i += len;
    }
    return true;
}

struct StParser {
    const char* s;
    size_t n, i = 0;
    const char* what;
    Status err;

    bool fail(const char* fmt, const char* a = "", const char* b = "") {
        if (err.ok()) {
            char m[200];
            std::snprintf(m, sizeof m, fmt, a, b);
            err = errorf("safetensors %s: %s (header byte %zu)", what, m, i);
        }
        return false;
    }
    void ws() {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
    }
    bool expect(char c) {
        ws();
        if (i < n && s[i] == c) {
            ++i;
            return true;
        }
        char want[2] = {c, 0};
        return fail("invalid JSON: expected '%s'", want);
    }
    bool peek(char c) {
        ws();
        return i < n && s[i] == c;
    }
    static void put_utf8(std::string& o, uint32_t cp) {
        if (cp < 0x80) o += (char)cp;
        else if (cp < 0x800) o += (char)(0xC0 | cp >> 6), o += (char)(0x80 | (cp & 0x3F));
        else if (cp < 0x10000)
            o += (char)(0xE0 | cp >> 12), o += (char)(0x80 | ((cp >> 6) & 0x3F)), o += (char)(0x80 | (cp & 0x3F));
        else
            o += (char)(0xF0 | cp >> 18), o += (char)(0x80 | ((cp >> 12) & 0x3F)),
                o += (char)(0x80 | ((cp >> 6) & 0x3F)), o += (char)(0x80 | (cp & 0x3F));
    }
    bool hex4(uint32_t* v) {
        if (i + 4 > n) return fail("invalid JSON: a \\u escape is cut short");
        *v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s[i++];
            const int d = c >= '0' && c <= '9' ? c - '0' : (c >= 'a' && c <= 'f' ? c - 'a' + 10 : (c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1));
            if (d < 0) return fail("invalid JSON: bad hex digit in a \\u escape");
            *v = *v << 4 | (uint32_t)d;
        }
        return true;
    }
    bool string(std::string* out) {
        if (!expect('"')) return false;
        out->clear();
        while (i < n) {
            const char c = s[i++];
            if (c == '"') return true;
            if ((unsigned char)c < 0x20) return fail("invalid JSON: a control character inside a string");
            if (c != '\\') {
                *out += c;
                continue;
            }
            if (i >= n) break;
            const char e = s[i++];
            switch (e) {
                case '"': *out += '"'; break;
                case '\\': *out += '\\'; break;
                case '/': *out += '/'; break;
                case 'b': *out += '\b'; break;
                case 'f': *out += '\f'; break;
                case 'n': *out += '\n'; break;
                case 'r': *out += '\r'; break;
                case 't': *out += '\t'; break;
                case 'u': {
                    uint32_t cp;
                    if (!hex4(&cp)) return false;
                    if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair
                        uint32_t lo;
                        if (i + 2 > n || s[i] != '\\' || s[i + 1] != 'u')
                            return fail("invalid JSON: a lone high surrogate in a \\u escape");
                        i += 2;
                        if (!hex4(&lo)) return false;
                        if (lo < 0xDC00 || lo > 0xDFFF) return fail("invalid JSON: a bad low surrogate");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        return fail("invalid JSON: a lone low surrogate in a \\u escape");
                    }
                    put_utf8(*out, cp);
                    break;
                }
                default: return fail("invalid JSON: unknown escape in a string");
            }
        }
        return fail("invalid JSON: a string is not closed");
    }
    // A JSON number that must be a whole number in [0, 2^64): else an entry error.
    bool uint(uint64_t* v, const char* field, const char* name) {
        ws();
        const size_t start = i;
        if (i < n && s[i] == '-') ++i;
        while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == 'e' || s[i] == 'E' || s[i] == '+' ||
                         s[i] == '-'))
            ++i;
        if (i == start) {
            // Another JSON value (a string, an array...) is a schema error; anything else bad JSON.
            const bool value = i < n && (s[i] == '"' || s[i] == '[' || s[i] == '{' || s[i] == 't' || s[i] == 'f' ||
                                         s[i] == 'n');
            if (value) return fail("entry \"%s\": \"%s\" must hold whole numbers", name, field);
            return fail("invalid JSON: expected a number in \"%s\" of entry \"%s\"", field, name);
        }
        uint64_t r = 0;
        for (size_t k = start; k < i; ++k) {
            const char c = s[k];
            if (c < '0' || c > '9')
                return fail("entry \"%s\": \"%s\" holds a number that is not a whole number >= 0", name, field);
            if (k > start && s[start] == '0')
                return fail("invalid JSON: a number with a leading zero in entry \"%s\"", name);
            if (r > (UINT64_MAX - (uint64_t)(c - '0')) / 10)
                return fail("entry \"%s\": a number in \"%s\" overflows 64 bits", name, field);
            r = r * 10 + (uint64_t)(c - '0');
        }
        *v = r;
        return true;
    }
    // [u, u, ...] into v (at most cap), count in *len.
    bool uint_array(uint64_t* v, int cap, int* len, const char* field, const char* name) {
        ws();
        if (!(i < n && s[i] == '['))
            return fail("entry \"%s\": \"%s\" must be an array of whole numbers", name, field);
        ++i;
        *len = 0;
        if (peek(']')) {
            ++i;
            return true;
        }
        for (;;) {
            uint64_t x;
            if (!uint(&x, field, name)) return false;
            if (*len >= cap) return fail("entry \"%s\": \"%s\" has too many numbers", name, field);
            v[(*len)++] = x;
            if (peek(',')) {
                ++i;
                continue;
            }
            return expect(']');
        }
    }
};

static bool st_parse_entry(StParser& p, StEntry* e) {
    const char* nm = e->name.c_str();
    p.ws();
    if (!(p.i < p.n && p.s[p.i] == '{')) return p.fail("entry \"%s\": must be an object", nm);
    ++p.i;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    std::string key, val;
    if (p.peek('}')) return p.fail("entry \"%s\": has no dtype, shape or data_offsets", nm);
    for (;;) {
        if (!p.string(&key)) return false;
        if (!p.expect(':')) return false;
        if (key == "dtype") {
            if (have_dtype) return p.fail("duplicate key \"dtype\" in entry \"%s\"", nm);
            have_dtype = true;
            p.ws();
            if (!(p.i < p.n && p.s[p.i] == '"')) return p.fail("entry \"%s\": dtype must be a string", nm);
            if (!p.string(&val)) return false;
            if (!dtype_from_name(val, &e->dtype))
                return p.fail("entry \"%s\": unknown dtype \"%s\"", nm, val.c_str());
        } else if (key == "shape") {
            if (have_shape) return p.fail("duplicate key \"shape\" in entry \"%s\"", nm);
            have_shape = true;
            if (!p.uint_array(e->shape, kStMaxDims, &e->ndim, "shape", nm)) return false;
        } else if (key == "data_offsets") {
            if (have_offsets) return p.fail("duplicate key \"data_offsets\" in entry \"%s\"", nm);
            have_offsets = true;
            uint64_t off[2];
            int len = 0;
            if (!p.uint_array(off, 2, &len, "data_offsets", nm)) return false;
            if (len != 2) return p.fail("entry \"%s\": data_offsets must be [begin, end]", nm);
            e->begin = off[0], e->end = off[1];
        } else {
            return p.fail("entry \"%s\": unknown field \"%s\"", nm, key.c_str());
        }
        if (p.peek(',')) {
            ++p.i;
            continue;
        }
        if (!p.expect('}')) return false;
        break;
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return p.fail("entry \"%s\": needs dtype, shape and data_offsets", nm);
    return true;
}

static bool st_parse_metadata(StParser& p, SafeTensors* out) {
    p.ws();
    if (!(p.i < p.n && p.s[p.i] == '{')) return p.fail("__metadata__ must be an object of strings");
    ++p.i;
    if (p.peek('}')) {
        ++p.i;
        return true;
    }
    std::string key, val;
    for (;;) {
        if (!p.string(&key)) return false;
        if (!p.expect(':')) return false;
        p.ws();
        if (!(p.i < p.n && p.s[p.i] == '"'))
            return p.fail("metadata value of \"%s\" is not a string (safetensors metadata maps strings to strings)",
                          key.c_str());
        if (!p.string(&val)) return false;
        for (const auto& kv : out->metadata)
            if (kv.first == key) return p.fail("duplicate key \"%s\" in __metadata__", key.c_str());
        out->metadata.emplace_back(key, val);
        if (p.peek(',')) {
            ++p.i;
            continue;
        }
        return p.expect('}');
    }
}

// Validates data[0..size) and fills out's entries, metadata and data_start
// (not its bytes).
static Status st_parse(const uint8_t* data, size_t size, const char* what, SafeTensors* out) {
    if (!what) what = "(memory)";
    if (!data && size) return errorf("safetensors %s: no data", what);
    if (size < 8) return errorf("safetensors %s: file is %zu bytes, shorter than 8 bytes (the header length)", what, size);
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; --k) hlen = hlen << 8 | data[k];
    if (hlen > kStMaxHeader)
        return errorf("safetensors %s: header length %llu is over the 100 MB limit", what, (unsigned long long)hlen);
    if (hlen > size - 8)
        return errorf("safetensors %s: header length %llu runs beyond the end of the %zu-byte file", what,
                      (unsigned long long)hlen, size);
    const uint8_t* h = data + 8;
    size_t bad = 0;
    if (!utf8_valid(h, (size_t)hlen, &bad))
        return errorf("safetensors %s: header is not valid UTF-8 (at header byte %zu)", what, bad);
    SafeTensors st;
    StParser p{reinterpret_cast<const char*>(h), (size_t)hlen, 0, what, Status{}};
    std::string key;
    bool have_meta = false;
    if (!p.expect('{')) return p.err;
    if (p.peek('}')) {
        ++p.i;
    } else {
        for (;;) {
            if (!p.string(&key)) return p.err;
            if (!p.expect(':')) return p.err;
            if (key == "__metadata__") {
                if (have_meta) return (p.fail("duplicate key \"__metadata__\""), p.err);
                have_meta = true;
                if (!st_parse_metadata(p, &st)) return p.err;
            } else {
                StEntry e;
                e.name = key;
                if (!st_parse_entry(p, &e)) return p.err;
                st.entries.push_back(std::move(e));
            }
            if (p.peek(',')) {
                ++p.i;
                continue;
            }
            if (!p.expect('}')) return p.err;
            break;
        }
    }
    p.ws();
    if (p.i != p.n) return (p.fail("invalid JSON: text after the header's object"), p.err);

    // Names are unique: sorted, neighbours differ.
    const size_t count = st.entries.size();
    std::vector<uint32_t> order(count);
    for (size_t k = 0; k < count; ++k) order[k] = (uint32_t)k;
    std::sort(order.begin(), order.end(),
              [&](uint32_t a, uint32_t b) { return st.entries[a].name < st.entries[b].name; });
    for (size_t k = 1; k < count; ++k)
        if (st.entries[order[k]].name == st.entries[order[k - 1]].name)
            return errorf("safetensors %s: duplicate key \"%s\" in the header", what,
                          st.entries[order[k]].name.c_str());
    // Sizes: shape x dtype, without overflow, and the offsets that hold them.
    const uint64_t data_size = size - 8 - hlen;
    for (const StEntry& e : st.entries) {
        size_t elems = 1, bytes = 0;
        for (int d = 0; d < e.ndim; ++d)
            if (e.shape[d] > SIZE_MAX || !size_mul(elems, (size_t)e.shape[d], &elems))
                return errorf("safetensors %s: tensor \"%s\": the shape's element count overflows", what, e.name.c_str());
        if (!size_mul(elems, dtype_size(e.dtype), &bytes))
            return errorf("safetensors %s: tensor \"%s\": %zu elements of %s: the byte count overflows", what,
                          e.name.c_str(), elems, dtype_name(e.dtype));
        if (e.end < e.begin)
            return errorf("safetensors %s: tensor \"%s\": data_offsets run backwards [%llu, %llu]", what,
                          e.name.c_str(), (unsigned long long)e.begin, (unsigned long long)e.end);
        if (e.end - e.begin != (uint64_t)bytes)
            return errorf("safetensors %s: tensor \"%s\": data_offsets [%llu, %llu] hold %llu bytes, shape x dtype "
                          "needs %zu", what, e.name.c_str(), (unsigned long long)e.begin, (unsigned long long)e.end,
                          (unsigned long long)(e.end - e.begin), bytes);
        if (e.end > data_size)
            return errorf("safetensors %s: tensor \"%s\": data_offsets end at %llu, beyond the end of the %llu-byte "
                          "data section", what, e.name.c_str(), (unsigned long long)e.end,
                          (unsigned long long)data_size);
    }
    // Coverage: in order of position, each tensor starts where the last ended.
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
        const StEntry &x = st.entries[a], &y = st.entries[b];
        return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
    });
    uint64_t pos = 0;
    const char* prev = "";
    for (uint32_t k : order) {
        const StEntry& e = st.entries[k];
        if (e.begin < pos)
            return errorf("safetensors %s: tensor \"%s\" [%llu, %llu] overlaps tensor \"%s\" (which ends at %llu)",
                          what, e.name.c_str(), (unsigned long long)e.begin, (unsigned long long)e.end, prev,
                          (unsigned long long)pos);
        if (e.begin > pos)
            return errorf("safetensors %s: a gap of %llu bytes before tensor \"%s\" (bytes %llu to %llu are no "
                          "tensor's)", what, (unsigned long long)(e.begin - pos), e.name.c_str(),
                          (unsigned long long)pos, (unsigned long long)e.begin);
        pos = e.end;
        prev = e.name.c_str();
    }
    if (pos != data_size)
        return errorf("safetensors %s: %llu trailing bytes after the last tensor (data section %llu bytes)", what,
                      (unsigned long long)(data_size - pos), (unsigned long long)data_size);
    st.data_start = 8 + (size_t)hlen;
    *out = std::move(st);
    return Status{};
}

Status safetensors_parse(const uint8_t* data, size_t size, const char* what, SafeTensors* out) {
    SafeTensors st;
    Status s = st_parse(data, size, what, &st);
    if (!s) return s;
    st.bytes.assign(data, data + size);
    *out = std::move(st);
    return Status{};
}

static Status read_whole_file(const char* path, std::vector<uint8_t>* out) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return errorf("%s: cannot open: %s", path, std::strerror(errno));
    std::vector<uint8_t> buf;
    // One read of the whole file when its size is known; chunks otherwise (a pipe).
    if (std::fseek(f, 0, SEEK_END) == 0) {
        const long end = std::ftell(f);
        if (end > 0 && std::fseek(f, 0, SEEK_SET) == 0) {
            buf.resize((size_t)end);
            buf.resize(std::fread(buf.data(), 1, buf.size(), f));
        }
        std::fseek(f, (long)buf.size(), SEEK_SET);
    }
    uint8_t chunk[1 << 16];
    size_t got;
    while ((got = std::fread(chunk, 1, sizeof chunk, f)) > 0) buf.insert(buf.end(), chunk, chunk + got);
    const bool err = std::ferror(f) != 0;
    std::fclose(f);
    if (err) return errorf("%s: read error", path);
    *out = std::move(buf);
    return Status{};
}

Status safetensors_load(const char* path, SafeTensors* out) {
    std::vector<uint8_t> bytes;
    Status st = read_whole_file(path, &bytes);
    if (!st) return errorf("safetensors %s", st.message());
    SafeTensors f;
    if (!(st = st_parse(bytes.data(), bytes.size(), path, &f))) return st;
    f.bytes = std::move(bytes);  // parsed in place: no copy of the data
    *out = std::move(f);
    return Status{};
}

// IEEE half to float, subnormals, infinities and NaN included.
// Element k of a packed little-endian array of T (tensor data need not be
// aligned): its raw bits, or its value as a float.
template <typename T>
static inline T st_elem_bits(const uint8_t* p, size_t k) {
    T v;
    std::memcpy(&v, p + sizeof(T) * k, sizeof(T));
    return v;
}
template <typename T>
static inline float st_elem(const uint8_t* p, size_t k) {
    return (float)st_elem_bits<T>(p, k);
}

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31;
    const int exp = (h >> 10) & 0x1F;
    const uint32_t man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: m * 2^-24
            const float v = (float)man * 5.9604644775390625e-8f;
            return sign ? -v : v;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | (uint32_t)(exp - 15 + 127) << 23 | man << 13;
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

Status SafeTensors::to_f32(const StEntry& e, float* out, size_t count) const {
    if (count != e.numel())
        return errorf("safetensors: tensor \"%s\" has %zu elements, asked for %zu", e.name.c_str(), e.numel(), count);
    const uint8_t* p = bytes.data() + data_start + e.begin;
    // Files are little-endian, as are the targets nn builds for.
    if (e.dtype == DType::F32) {
        if (count) std::memcpy(out, p, count * sizeof(float));
        return Status{};
    }
    for (size_t k = 0; k < count; ++k) {
        switch (e.dtype) {
            case DType::F32: out[k] = st_elem<float>(p, k); break;
            case DType::F16: out[k] = half_to_float(st_elem_bits<uint16_t>(p, k)); break;
            case DType::BF16: {
                const uint32_t bits = (uint32_t)st_elem_bits<uint16_t>(p, k) << 16;
                std::memcpy(out + k, &bits, 4);
                break;
            }
            case DType::F64: out[k] = st_elem<double>(p, k); break;
            case DType::I64: out[k] = st_elem<int64_t>(p, k); break;
            case DType::I32: out[k] = st_elem<int32_t>(p, k); break;
            case DType::I16: out[k] = st_elem<int16_t>(p, k); break;
            case DType::I8: out[k] = (float)(int8_t)p[k]; break;
            case DType::U8:
            case DType::BOOL: out[k] = (float)p[k]; break;
        }
    }
    return Status{};
}

// --- Writing ----------------------------------------------------------------------

void StWriter::add_f32(const char* name, const Shape& s, const float* data) {
    Item it;
    it.name = name;
    it.dtype = DType::F32;
    for (int d = 0; d < s.ndim; ++d) it.shape.push_back((uint64_t)s.dim[d]);
    it.data = data;
    it.bytes = s.numel() * sizeof(float);
    items.push_back(std::move(it));
}

void StWriter::add(const char* name, DType t, std::initializer_list<uint64_t> shape, const void* data) {
    Item it;
    it.name = name;
    it.dtype = t;
    it.shape.assign(shape.begin(), shape.end());
    size_t n = 1;
    for (uint64_t d : shape) n *= (size_t)d;
    it.data = data;
    it.bytes = n * dtype_size(t);
    items.push_back(std::move(it));
}

void StWriter::add_meta(const char* key, const char* value) { metadata.emplace_back(key, value); }

static void json_string(std::string& o, const std::string& s) {
    o += '"';
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') o += '\\', o += (char)c;
        else if (c < 0x20) {
            char b[8];
            std::snprintf(b, sizeof b, "\\u%04x", c);
            o += b;
        } else o += (char)c;
    }
    o += '"';
}

static long long g_write_fault_after = -1;  // bytes that may still be written; -1: no fault
void set_write_fault_after(long long bytes) { g_write_fault_after = bytes; }

// fwrite, failing as a full disk would once the test hook's budget is spent.
static bool write_bytes(FILE* f, const void* p, size_t n) {
    if (g_write_fault_after >= 0) {
        if ((long long)n > g_write_fault_after) {
            std::fwrite(p, 1, (size_t)g_write_fault_after, f);
            g_write_fault_after = 0;
            errno = ENOSPC;
            return false;
        }
        g_write_fault_after -= (long long)n;
    }
    return std::fwrite(p, 1, n, f) == n;
}

Status StWriter::write(const char* path) const {
    // The header: metadata first, then the tensors in the order added, packed.
    std::string h = "{";
    bool first = true;
    if (!metadata.empty()) {
        h += "\"__metadata__\":{";
        for (size_t k = 0; k < metadata.size(); ++k) {
            if (k) h += ',';
            json_string(h, metadata[k].first);
            h += ':';
            json_string(h, metadata[k].second);
        }
        h += '}';
        first = false;
    }
    // Refuse what the reader would refuse, before touching the disk.
    size_t bad = 0;
    for (size_t k = 0; k < metadata.size(); ++k) {
        for (size_t m = 0; m < k; ++m)
            if (metadata[m].first == metadata[k].first)
                return errorf("safetensors %s: metadata key \"%s\" is used twice", path, metadata[k].first.c_str());
        const std::string& key = metadata[k].first;
        const std::string& val = metadata[k].second;
        if (!utf8_valid(reinterpret_cast<const uint8_t*>(key.data()), key.size(), &bad) ||
            !utf8_valid(reinterpret_cast<const uint8_t*>(val.data()), val.size(), &bad))
            return errorf("safetensors %s: metadata \"%s\" is not valid UTF-8", path, key.c_str());
    }
    uint64_t off = 0;
    for (size_t k = 0; k < items.size(); ++k) {
        const Item& it = items[k];
        if (!utf8_valid(reinterpret_cast<const uint8_t*>(it.name.data()), it.name.size(), &bad))
            return errorf("safetensors %s: tensor name \"%s\" is not valid UTF-8", path, it.name.c_str());
        size_t elems = 1, need = 0;
        bool fits = it.shape.size() <= (size_t)kStMaxDims;
        for (uint64_t d : it.shape) fits = fits && d <= SIZE_MAX && size_mul(elems, (size_t)d, &elems);
        fits = fits && size_mul(elems, dtype_size(it.dtype), &need);
        if (!fits || need != it.bytes)
            return errorf("safetensors %s: tensor \"%s\" has %zu bytes, its shape x dtype needs %zu", path,
                          it.name.c_str(), it.bytes, need);
        if (it.bytes && !it.data) return errorf("safetensors %s: tensor \"%s\" has no data", path, it.name.c_str());
        for (size_t m = 0; m < k; ++m)
            if (items[m].name == it.name) return errorf("safetensors %s: tensor name \"%s\" is used twice", path, it.name.c_str());
        if (it.name == "__metadata__") return errorf("safetensors %s: \"__metadata__\" cannot name a tensor", path);
        if (!first) h += ',';
        first = false;
        json_string(h, it.name);
        h += ":{\"dtype\":\"";
        h += dtype_name(it.dtype);
        h += "\",\"shape\":[";
        for (size_t d = 0; d < it.shape.size(); ++d) {
            if (d) h += ',';
            h += std::to_string(it.shape[d]);
        }
        h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + it.bytes) + "]}";
        off += it.bytes;
    }
    h += '}';
    while (h.size() % 8) h += ' ';
    uint8_t len[8];
    for (int k = 0; k < 8; ++k) len[k] = (uint8_t)((uint64_t)h.size() >> (8 * k));

    // Atomically: a temporary file beside the target, synced, then renamed.
    std::string tmp = std::string(path) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) return errorf("safetensors %s: cannot create %s: %s", path, tmp.c_str(), std::strerror(errno));
    bool ok = write_bytes(f, len, 8) && write_bytes(f, h.data(), h.size());
    for (size_t k = 0; ok && k < items.size(); ++k)
        ok = items[k].bytes == 0 || write_bytes(f, items[k].data, items[k].bytes);
    int saved_errno = ok ? 0 : (errno ? errno : EIO);
    if (ok && std::fflush(f) != 0) ok = false, saved_errno = errno;
#if defined(__unix__) || defined(__APPLE__)
    if (ok && fsync(fileno(f)) != 0) ok = false, saved_errno = errno;
#endif
    if (std::fclose(f) != 0 && ok) ok = false, saved_errno = errno;
    if (!ok) {
        std::remove(tmp.c_str());
        return errorf("safetensors %s: writing failed (%s); the previous file, if any, is unchanged", path,
                      std::strerror(saved_errno));
    }
    if (std::rename(tmp.c_str(), path) != 0) {
        saved_errno = errno;
        std::remove(tmp.c_str());
        return errorf("safetensors %s: cannot rename %s over it: %s", path, tmp.c_str(), std::strerror(saved_errno));
    }
    return Status{};
}

// --- Model files --------------------------------------------------------------------

// "<index>.<param>" as nn.Sequential's state_dict, or "<name>.<param>".
static std::string st_param_name(const Layer& L, int index, const char* param) {
    return (L.user_named ? std::string(L.name) : std::to_string(index)) + "." + param;
}

static bool arch_name_ok(const char* s) {
    if (!*s) return false;
    for (; *s; ++s)
        if (!(std::isalnum((unsigned char)*s) || *s == '_' || *s == '-' || *s == '.')) return false;
    return true;
}

// The architecture as text, a line per layer: "Kind key=value ...".
static Status arch_write(const Model& m, std::string* out) {
    std::string a = "input";
    for (int d = 0; d < m.input.ndim; ++d) a += (d ? "," : " ") + std::to_string(m.input.dim[d]);
    a += '\n';
    char b[320];
    for (const Layer& L : m.layers) {
        if (L.kind == LayerKind::Custom)
            return errorf("model file: custom layer \"%s\" (%s) has no architecture to save; save its weights and "
                          "rebuild it in code", L.name, L.type_name());
        std::string line = L.kind == LayerKind::Activation ? "Activation" : L.type_name();
        if (L.kind == LayerKind::Recurrent) line = "Recurrent";
        if (L.kind == LayerKind::BatchNorm) line = "BatchNorm";
        if (L.user_named) {
            if (!arch_name_ok(L.name))
                return errorf("model file: layer name \"%s\" may hold only letters, digits, '_', '-' and '.'", L.name);
            line += std::string(" name=") + L.name;
        }
        switch (L.kind) {
            case LayerKind::Dense:
                std::snprintf(b, sizeof b, " in=%d units=%d act=%d slope=%.9g bias=%d l1=%.9g l2=%.9g", L.in_features,
                              L.units, (int)L.act, (double)L.leaky_slope, L.use_bias ? 1 : 0, (double)L.l1, (double)L.l2);
                break;
            case LayerKind::Activation:
                std::snprintf(b, sizeof b, " act=%d slope=%.9g", (int)L.act, (double)L.leaky_slope);
                break;
            case LayerKind::Dropout: std::snprintf(b, sizeof b, " rate=%.9g", (double)L.rate); break;
            case LayerKind::Conv2D:
                std::snprintf(b, sizeof b, " in=%d out=%d k=%d,%d s=%d,%d p=%d,%d pm=%d d=%d,%d g=%d bias=%d",
                              L.in_channels, L.out_channels, L.kernel.h, L.kernel.w, L.stride.h, L.stride.w, L.padding.h,
                              L.padding.w, (int)L.padding.mode, L.dilation.h, L.dilation.w, L.groups, L.use_bias ? 1 : 0);
                break;
            case LayerKind::MaxPool2D:
            case LayerKind::AvgPool2D:
                std::snprintf(b, sizeof b, " k=%d,%d s=%d,%d p=%d,%d cip=%d", L.kernel.h, L.kernel.w, L.stride.h,
                              L.stride.w, L.padding.h, L.padding.w, L.count_include_pad ? 1 : 0);
                break;
            case LayerKind::BatchNorm:
                std::snprintf(b, sizeof b, " dims=%d c=%d eps=%.9g momentum=%.9g affine=%d", L.bn_dims, L.in_channels,
                              (double)L.eps, (double)L.momentum, L.affine ? 1 : 0);
                break;
            case LayerKind::Recurrent:
                std::snprintf(b, sizeof b, " cell=%d in=%d hidden=%d layers=%d seq=%d bptt=%d", (int)L.cell,
                              L.in_features, L.hidden_size, L.num_layers, L.return_sequences ? 1 : 0, L.bptt_window);
                break;
            case LayerKind::Embedding:
                std::snprintf(b, sizeof b, " vocab=%d dim=%d", L.num_embeddings, L.embedding_dim);
                break;
            default: b[0] = 0; break;
        }
        line += b;
        a += line + '\n';
    }
    *out = a;
    return Status{};
}

// Reads "key=v" or "key=v,w" from a line's words.
struct ArchLine {
    std::vector<std::pair<std::string, std::string>> kv;
    const char* get(const char* k) const {
        for (const auto& p : kv)
            if (p.first == k) return p.second.c_str();
        return nullptr;
    }
};

static Status arch_read(const char* text, const char* what, Shape* input, std::vector<Layer>* out) {
    std::vector<Layer> layers;
    const char* p = text;
    int line_no = 0;
    bool have_input = false;
    while (*p) {
        const char* e = std::strchr(p, '\n');
        std::string line(p, e ? (size_t)(e - p) : std::strlen(p));
        p = e ? e + 1 : p + line.size();
        ++line_no;
        if (line.empty()) continue;
        // words
        std::vector<std::string> w;
        size_t i = 0;
        while (i < line.size()) {
            size_t j = line.find(' ', i);
            if (j == std::string::npos) j = line.size();
            if (j > i) w.push_back(line.substr(i, j - i));
            i = j + 1;
        }
        if (!have_input) {
            if (w.size() != 2 || w[0] != "input")
                return errorf("model file %s: architecture line 1 must be \"input d0,d1,...\"", what);
            Shape s;
            const char* q = w[1].c_str();
            while (*q && s.ndim < kMaxDims) {
                s.dim[s.ndim++] = (int)std::strtol(q, (char**)&q, 10);
                if (*q == ',') ++q;
            }
            if (*q || s.ndim < 1 || s.numel() == 0)
                return errorf("model file %s: bad input shape \"%s\"", what, w[1].c_str());
            *input = s;
            have_input = true;
            continue;
        }
        ArchLine al;
        for (size_t k = 1; k < w.size(); ++k) {
            const size_t eq = w[k].find('=');
            if (eq == std::string::npos)
                return errorf("model file %s: architecture line %d: \"%s\" is not key=value", what, line_no, w[k].c_str());
            al.kv.emplace_back(w[k].substr(0, eq), w[k].substr(eq + 1));
        }
        auto num = [&](const char* k, double dflt) {
            const char* v = al.get(k);
            return v ? std::strtod(v, nullptr) : dflt;
        };
        auto pair = [&](const char* k) {
            const char* v = al.get(k);
            Size2 s(0);
            if (v) {
                char* end = nullptr;
                s.h = (int)std::strtol(v, &end, 10);
                s.w = end && *end == ',' ? (int)std::strtol(end + 1, nullptr, 10) : s.h;
            }
            return s;
        };
        const std::string& kind = w[0];
        Layer L;
        if (kind == "Dense") {
            L = Dense((int)num("in", 0), (int)num("units", 0), (Act)(int)num("act", 0), num("bias", 1) != 0);
            L.leaky_slope = (float)num("slope", 0.01);
            L.l1 = (float)num("l1", 0), L.l2 = (float)num("l2", 0);
        } else if (kind == "Activation") {
            L = ReLU();
            L.act = (Act)(int)num("act", 1);
            L.leaky_slope = (float)num("slope", 0.01);
        } else if (kind == "Dropout") {
            L = Dropout((float)num("rate", 0));
        } else if (kind == "Flatten") {
            L = Flatten();
        } else if (kind == "Conv2D") {
            Size2 pd = pair("p");
            Padding pad(pd.h, pd.w);
            pad.mode = (PadMode)(int)num("pm", 0);
            L = Conv2D((int)num("in", 0), (int)num("out", 0), pair("k"), pair("s"), pad, pair("d"), (int)num("g", 1),
                       num("bias", 1) != 0);
        } else if (kind == "MaxPool2D") {
            L = MaxPool2D(pair("k"), pair("s"), pair("p"));
        } else if (kind == "AvgPool2D") {
            L = AvgPool2D(pair("k"), pair("s"), pair("p"), num("cip", 1) != 0);
        } else if (kind == "GlobalAvgPool") {
            L = GlobalAvgPool();
        } else if (kind == "BatchNorm") {
            const int dims = (int)num("dims", 1);
            L = (dims == 2 ? BatchNorm2d : BatchNorm1d)((int)num("c", 0), (float)num("eps", 1e-5),
                                                          (float)num("momentum", 0.1), num("affine", 1) != 0);
        } else if (kind == "Recurrent") {
            L = LSTM((int)num("in", 0), (int)num("hidden", 0), (int)num("layers", 1), num("seq", 1) != 0);
            L.cell = (RnnCell)(int)num("cell", 2);
            L.act = L.cell == RnnCell::RnnReLU ? Act::ReLU : (L.cell == RnnCell::RnnTanh ? Act::Tanh : Act::None);
            L.bptt_window = (int)num("bptt", 0);
        } else if (kind == "Embedding") {
            L = Embedding((int)num("vocab", 0), (int)num("dim", 0));
        } else {
            return errorf("model file %s: architecture line %d: unknown layer kind \"%s\"", what, line_no, kind.c_str());
        }
        if (const char* nm = al.get("name")) {
            std::snprintf(L.name, sizeof L.name, "%s", nm);
        }
        layers.push_back(L);
    }
    if (!have_input) return errorf("model file %s: the architecture is empty", what);
    *out = std::move(layers);
    return Status{};
}

Status save(Model& m, const char* path) {
    if (!m.compiled) return errorf("model file %s: compile the model before saving it", path);
    StWriter w;
    std::vector<std::string> names;
    std::vector<int64_t> counters;  // BatchNorm's num_batches_tracked
    int bn = 0;
    for (const Layer& L : m.layers) bn += L.kind == LayerKind::BatchNorm;
    counters.reserve((size_t)bn);
    for (int i = 0; i < m.size(); ++i) {
        const Layer& L = m.layers[(size_t)i];
        for (int k = 0; k < L.n_params; ++k) {
            const std::string nm = st_param_name(L, i, L.param_name[k]);
            w.add_f32(nm.c_str(), L.params[k].shape, L.params[k].data);
        }
        if (L.kind == LayerKind::BatchNorm) {
            counters.push_back((int64_t)m.step_count);
            const std::string nm = st_param_name(L, i, "num_batches_tracked");
            w.add(nm.c_str(), DType::I64, {}, &counters.back());
        }
    }
    std::string arch;
    Status st = arch_write(m, &arch);
    if (!st) return st;
    w.add_meta("format", "pt");
    w.add_meta("nn.architecture", arch.c_str());
    return w.write(path);
}

// Appends "name (reason)" to a bounded list of problems.
static void note_problem(std::string& list, int* count, const std::string& what) {
    if (++*count <= 4) list += (list.empty() ? "" : "; ") + what;
}

static Status load_weights_from(Model& m, const SafeTensors& f, const char* path, bool checkpoint = false) {
    std::vector<const StEntry*> src;  // every check passes before anything changes
    std::vector<float*> dest;
    std::vector<char> used(f.entries.size(), 0);
    std::string problems;
    int n_problems = 0;
    char b1[64];
    for (int i = 0; i < m.size(); ++i) {
        const Layer& L = m.layers[(size_t)i];
        for (int k = 0; k < L.n_params; ++k) {
            const std::string nm = st_param_name(L, i, L.param_name[k]);
            const StEntry* e = f.find(nm.c_str());
            if (!e) {
                note_problem(problems, &n_problems, "\"" + nm + "\" missing");
                continue;
            }
            used[(size_t)(e - f.entries.data())] = 1;
            const Shape& want = L.params[k].shape;
            bool same = e->ndim == want.ndim;
            for (int d = 0; same && d < want.ndim; ++d) same = e->shape[d] == (uint64_t)want.dim[d];
            if (!same) {
                std::string got = "(";
                for (int d = 0; d < e->ndim; ++d) got += (d ? ", " : "") + std::to_string(e->shape[d]);
                got += e->ndim == 1 ? ",)" : ")";
                note_problem(problems, &n_problems,
                             "\"" + nm + "\" shape " + got + " in the file, " + shape_str(want, b1, sizeof b1) + " in the model");
                continue;
            }
            src.push_back(e);
            dest.push_back(L.params[k].data);
        }
        if (L.kind == LayerKind::BatchNorm)
            if (const StEntry* e = f.find(st_param_name(L, i, "num_batches_tracked").c_str()))
                used[(size_t)(e - f.entries.data())] = 1;
    }
    for (size_t k = 0; k < f.entries.size(); ++k) {
        const std::string& nm = f.entries[k].name;
        const bool state = checkpoint && (nm.compare(0, 10, "optimizer.") == 0 || nm.compare(0, 4, "fit.") == 0);
        if (!used[k] && !state) note_problem(problems, &n_problems, "\"" + nm + "\" unexpected (no such parameter)");
    }
    if (n_problems)
        return errorf("model file %s: %d mismatch%s: %s%s; the model is unchanged", path, n_problems,
                      n_problems > 1 ? "es" : "", problems.c_str(), n_problems > 4 ? "; ..." : "");
    for (size_t k = 0; k < dest.size(); ++k) {
        const Status st = f.to_f32(*src[k], dest[k], src[k]->numel());  // cannot fail: counts match
        NN_ASSERT(st.ok());
        (void)st;
    }
    return Status{};
}

Status load_weights(Model& m, const char* path) {
    if (!m.compiled) return errorf("model file %s: compile the model before loading weights into it", path);
    SafeTensors f;
    Status st = safetensors_load(path, &f);
    if (!st) return st;
    return load_weights_from(m, f, path);
}

Status load_model(const char* path, const CompileOptions& opt, Model* out) {
    if (!out || out->compiled || !out->layers.empty())
        return errorf("model file %s: load_model builds into an empty, uncompiled Model", path);
    SafeTensors f;
    Status st = safetensors_load(path, &f);
    if (!st) return st;
    const char* arch = f.meta("nn.architecture");
    if (!arch) return errorf("model file %s: no \"nn.architecture\" in __metadata__ (not saved by nn::save?)", path);
    Shape input;
    std::vector<Layer> layers;
    if (!(st = arch_read(arch, path, &input, &layers))) return st;
    // *out is emptied again on any error.
    Model& m = *out;
    m.set_input(input);
    for (Layer& L : layers)
        if (!(st = m.add(L))) break;
    if (st) st = m.compile(opt);
    if (st) st = load_weights_from(m, f, path);
    if (!st) {
        m.layers.clear();
        m.error = Status{};
        m.compiled = false;
        m.input = Shape{};
        return errorf("model file %s: %s", path, st.message());
    }
    return Status{};
}

// --- Checkpoints ------------------------------------------------------------------

// The optimizer's parameters are the layers' parameters in order: their names.
static std::vector<std::string> optimizer_param_names(const Model& m) {
    std::vector<std::string> names;
    for (int i = 0; i < m.size(); ++i) {
        const Layer& L = m.layers[(size_t)i];
        for (int k = 0; k < L.n_params; ++k) names.push_back(st_param_name(L, i, L.param_name[k]));
    }
    return names;
}

static Status write_checkpoint(Model& m, const FitState& fs, const char* path) {
    if (!m.compiled) return errorf("checkpoint %s: compile the model first", path);
    const Optimizer& o = m.optimizer;
    const std::vector<std::string> names = optimizer_param_names(m);
    if ((int)names.size() != o.n_params)
        return errorf("checkpoint %s: the optimizer has %d parameters, the layers %zu", path, o.n_params, names.size());
    StWriter w;
    std::vector<int64_t> counters;  // stable storage for the I64 tensors
    counters.reserve(names.size() + m.layers.size());
    std::vector<int32_t> order;
    std::vector<std::string> tnames;  // keeps the names alive for add()
    tnames.reserve(names.size() * (Optimizer::kStateSlots + 1) + m.layers.size() * kMaxParams + 1);
    for (int i = 0; i < m.size(); ++i) {
        const Layer& L = m.layers[(size_t)i];
        for (int k = 0; k < L.n_params; ++k) {
            tnames.push_back(st_param_name(L, i, L.param_name[k]));
            w.add_f32(tnames.back().c_str(), L.params[k].shape, L.params[k].data);
        }
        if (L.kind == LayerKind::BatchNorm) {
            counters.push_back((int64_t)m.step_count);
            tnames.push_back(st_param_name(L, i, "num_batches_tracked"));
            w.add(tnames.back().c_str(), DType::I64, {}, &counters.back());
        }
    }
    for (int i = 0; i < o.n_params; ++i) {
        for (int slot = 0; slot < Optimizer::kStateSlots; ++slot) {
            const float* buf = o.state ? o.state[(size_t)i * Optimizer::kStateSlots + (size_t)slot] : nullptr;
            if (!buf || !o.params[i].size) continue;
            tnames.push_back("optimizer." + names[(size_t)i] + ".state" + std::to_string(slot));
            w.add(tnames.back().c_str(), DType::F32, {(uint64_t)o.params[i].size}, buf);
        }
        counters.push_back((int64_t)o.param_steps[i]);
        tnames.push_back("optimizer." + names[(size_t)i] + ".step");
        w.add(tnames.back().c_str(), DType::I64, {}, &counters.back());
    }
    if (fs.it) {
        order.assign(fs.it->order.begin(), fs.it->order.end());
        if (!order.empty()) w.add("fit.order", DType::I32, {(uint64_t)order.size()}, order.data());
    }
    std::string arch;
    Status st = arch_write(m, &arch);
    if (!st) return st;
    auto meta = [&](const char* k, const std::string& v) { w.add_meta(k, v.c_str()); };
    meta("format", "pt");
    meta("nn.architecture", arch);
    meta("nn.checkpoint", "1");
    meta("nn.optimizer", optimizer_name(o.cfg.kind));
    meta("nn.optimizer.steps", std::to_string(o.steps));
    meta("nn.optimizer.epoch", std::to_string(o.epoch));
    meta("nn.model.steps", std::to_string(m.step_count));
    meta("nn.fit.epochs_done", std::to_string(fs.epochs_done));
    if (fs.it) meta("nn.fit.rng", std::to_string(fs.it->rng.state));
    for (int i = 0; i < m.size(); ++i)
        meta(("nn.rng." + std::to_string(i)).c_str(), std::to_string(m.layers[(size_t)i].rng.state));
    return w.write(path);
}

static bool meta_u64(const SafeTensors& f, const char* key, uint64_t* out) {
    const char* v = f.meta(key);
    if (!v || !*v) return false;
    char* end = nullptr;
    errno = 0;
    const unsigned long long x = std::strtoull(v, &end, 10);
    if (errno || *end) return false;
    *out = x;
    return true;
}

// Restores a checkpoint into m (and fit's iterator when given); on any
// error nothing has changed.
static Status read_checkpoint(Model& m, const char* path, BatchIterator* it, int* epochs_done) {
    if (!m.compiled) return errorf("checkpoint %s: compile the model before restoring into it", path);
    SafeTensors f;
    Status st = safetensors_load(path, &f);
    if (!st) return st;
    if (!f.meta("nn.checkpoint")) return errorf("checkpoint %s: not a checkpoint (no \"nn.checkpoint\" metadata)", path);
    Optimizer& o = m.optimizer;
    const char* kind = f.meta("nn.optimizer");
    if (!kind || std::strcmp(kind, optimizer_name(o.cfg.kind)) != 0)
        return errorf("checkpoint %s: saved with optimizer %s, the model has %s", path, kind ? kind : "(none)",
                      optimizer_name(o.cfg.kind));
    uint64_t steps = 0, epoch = 0, msteps = 0, done = 0, fit_rng = 0;
    if (!meta_u64(f, "nn.optimizer.steps", &steps) || !meta_u64(f, "nn.optimizer.epoch", &epoch) ||
        !meta_u64(f, "nn.model.steps", &msteps) || !meta_u64(f, "nn.fit.epochs_done", &done))
        return errorf("checkpoint %s: step and epoch counters missing or malformed in the metadata", path);
    // Everything is read and checked into these before anything changes.
    const std::vector<std::string> names = optimizer_param_names(m);
    if ((int)names.size() != o.n_params)
        return errorf("checkpoint %s: the optimizer has %d parameters, the layers %zu", path, o.n_params, names.size());
    std::vector<std::vector<float>> state((size_t)o.n_params * Optimizer::kStateSlots);
    std::vector<int64_t> psteps((size_t)o.n_params, 0);
    for (int i = 0; i < o.n_params; ++i) {
        for (int slot = 0; slot < Optimizer::kStateSlots; ++slot) {
            const float* buf = o.state ? o.state[(size_t)i * Optimizer::kStateSlots + (size_t)slot] : nullptr;
            const std::string nm = "optimizer." + names[(size_t)i] + ".state" + std::to_string(slot);
            const StEntry* e = f.find(nm.c_str());
            if (!buf || !o.params[i].size) {
                if (e) return errorf("checkpoint %s: \"%s\" has no place in this optimizer's configuration", path, nm.c_str());
                continue;
            }
            if (!e) return errorf("checkpoint %s: \"%s\" missing", path, nm.c_str());
            if (e->numel() != o.params[i].size)
                return errorf("checkpoint %s: \"%s\" holds %zu values, the parameter %zu", path, nm.c_str(), e->numel(),
                              o.params[i].size);
            std::vector<float>& v = state[(size_t)i * Optimizer::kStateSlots + (size_t)slot];
            v.resize(e->numel());
            if (!(st = f.to_f32(*e, v.data(), v.size()))) return st;
        }
        const std::string sn = "optimizer." + names[(size_t)i] + ".step";
        const StEntry* e = f.find(sn.c_str());
        if (!e || e->dtype != DType::I64 || e->numel() != 1)
            return errorf("checkpoint %s: \"%s\" missing or not one I64", path, sn.c_str());
        std::memcpy(&psteps[(size_t)i], f.bytes.data() + f.data_start + e->begin, 8);
    }
    std::vector<uint64_t> rngs(m.layers.size(), 0);
    for (size_t i = 0; i < m.layers.size(); ++i)
        if (!meta_u64(f, ("nn.rng." + std::to_string(i)).c_str(), &rngs[i]))
            return errorf("checkpoint %s: random-number state of layer %zu missing", path, i);
    std::vector<uint32_t> order;
    if (it) {
        if (!meta_u64(f, "nn.fit.rng", &fit_rng))
            return errorf("checkpoint %s: no shuffling state (\"nn.fit.rng\"): written by save_checkpoint, not by "
                          "fit, so fit cannot resume from it", path);
        const StEntry* e = f.find("fit.order");
        if (!e || e->dtype != DType::I32 || e->numel() != it->order.size())
            return errorf("checkpoint %s: \"fit.order\" missing or not %zu I32 sample indices (a different "
                          "training set or validation split?)", path, it->order.size());
        order.resize(e->numel());
        std::memcpy(order.data(), f.bytes.data() + f.data_start + e->begin, order.size() * 4);
        for (uint32_t x : order)
            if (x >= it->order.size()) return errorf("checkpoint %s: \"fit.order\" holds index %u", path, x);
    }
    if (!(st = load_weights_from(m, f, path, true))) return st;  // checks all, then copies
    for (int i = 0; i < o.n_params; ++i) {
        for (int slot = 0; slot < Optimizer::kStateSlots; ++slot) {
            float* buf = o.state ? o.state[(size_t)i * Optimizer::kStateSlots + (size_t)slot] : nullptr;
            const std::vector<float>& v = state[(size_t)i * Optimizer::kStateSlots + (size_t)slot];
            if (buf && !v.empty()) std::memcpy(buf, v.data(), v.size() * sizeof(float));
        }
        o.param_steps[i] = psteps[(size_t)i];
    }
    o.steps = (int64_t)steps;
    o.epoch = (int)epoch;
    m.step_count = (int64_t)msteps;
    for (size_t i = 0; i < m.layers.size(); ++i) m.layers[i].rng.state = rngs[i];
    if (it) {
        it->rng.state = fit_rng;
        it->order = order;
    }
    if (epochs_done) *epochs_done = (int)done;
    return Status{};
}

Status save_checkpoint(Model& m, const char* path) {
    FitState fs;
    fs.epochs_done = m.optimizer.epoch;
    return write_checkpoint(m, fs, path);
}

Status load_checkpoint(Model& m, const char* path) { return read_checkpoint(m, path, nullptr, nullptr); }

// ===========================================================================
// Gradient check: central differences against the analytic backward.
// ===========================================================================

// L = sum_i y_i r_i for the layer's output y on x, in eval mode.
static double probe_loss(Layer& L, Tensor y, const Tensor& x, const float* r, Mode mode) {
    forward(L, y, x, mode);
    double s = 0;
    for (size_t i = 0; i < y.numel(); ++i) s += (double)y.data[i] * r[i];
    return s;
}

// Compares analytic[i] with the central difference of probe_loss in v[i],
// for up to max_checks evenly spread elements.
static void check_tensor(Layer& L, Tensor y, const Tensor& x, const float* r, Mode mode, float* v,
                         const float* analytic, size_t n, float h, int max_checks, const char* name,
                         GradCheckResult* res) {
    const size_t stride = max_checks > 0 && n > (size_t)max_checks ? n / (size_t)max_checks : 1;
    for (size_t i = 0; i < n; i += stride) {
        const float old = v[i];
        v[i] = old + h;
        const double lp = probe_loss(L, y, x, r, mode);
        v[i] = old - h;
        const double lm = probe_loss(L, y, x, r, mode);
        v[i] = old;
        const double numeric = (lp - lm) / (2.0 * (double)h);
        const double a = analytic[i];
        const double abs_err = std::fabs(a - numeric);
        double scale = std::fabs(a) > std::fabs(numeric) ? std::fabs(a) : std::fabs(numeric);
        if (scale < 1.0) scale = 1.0;
        const double rel = abs_err / scale;
        if (abs_err > res->max_abs_err) res->max_abs_err = abs_err;
        if (rel > res->max_rel_err) {
            res->max_rel_err = rel;
            res->worst = name;
        }
        ++res->checked;
    }
}

Status gradient_check(Layer& L, const Tensor& x, Arena& scratch, GradCheckResult* out, float h, double tol,
                      int max_checks, Mode mode) {
    if (!L.built) return errorf("gradient_check: layer \"%s\" is not built", L.name);
    if (!(h > 0.0f)) return errorf("gradient_check: step h must be > 0 (got %g)", (double)h);
    const int B = x.shape.dim[0];
    const Shape ys = batched(L.out_shape, B);
    const size_t mark = scratch.mark();
    Status st;
    Tensor y, dx;
    st = tensor_alloc(scratch, ys, &y, "gradient_check output");
    float* r = st ? scratch.alloc_floats(ys.numel(), &st, "gradient_check probe") : nullptr;
    if (st) st = tensor_alloc(scratch, x.shape, &dx, "gradient_check input gradient");
    float* saved[kMaxParams] = {nullptr};
    for (int k = 0; k < L.n_params && st; ++k)  // gradients, and the buffers Train mode updates
        saved[k] = scratch.alloc_floats(L.params[k].numel(), &st, "gradient_check saved gradients");
    if (!st || scratch.measuring) {
        scratch.reset(mark);
        return st;
    }
    Rng rng(0x5eed);
    for (size_t i = 0; i < ys.numel(); ++i) r[i] = rng.uniform(-1.0f, 1.0f);
    // The caller's accumulated gradients are put back afterwards.
    for (int k = 0; k < L.n_params; ++k)
        std::memcpy(saved[k], L.buffer[k] ? L.params[k].data : L.grads[k].data,
                    L.params[k].numel() * sizeof(float));
    zero_grad(L);
    st = forward(L, y, x, mode);
    if (st) st = backward(L, dx, tensor_view(r, ys), x, y);
    if (st) {
        GradCheckResult res;
        check_tensor(L, y, x, r, mode, x.data, dx.data, x.numel(), h, max_checks, "input", &res);
        for (int k = 0; k < L.n_params; ++k)
            if (!L.buffer[k])
                check_tensor(L, y, x, r, mode, L.params[k].data, L.grads[k].data, L.params[k].numel(), h,
                             max_checks, L.param_name[k], &res);
        res.passed = res.max_rel_err <= tol;
        *out = res;
    }
    for (int k = 0; k < L.n_params; ++k)
        std::memcpy(L.buffer[k] ? L.params[k].data : L.grads[k].data, saved[k], L.params[k].numel() * sizeof(float));
    scratch.reset(mark);
    return st;
}
// ===========================================================================
// Tape: the dynamic autograd graph. Each operation carves its output (and
// what its backward needs) from the tape's arena and links a node to the
// previous one; backward walks the links from the newest node back, which is
// reverse topological order, since an operation can only take Vars that
// existed before it.
// ===========================================================================

enum class TapeOp : uint8_t {
    Add, Sub, Mul, Div, AddScalar, MulScalar, MatMul, Transpose, Reshape, Slice, Concat, Sum,
    Exp, Log, Pow, Sqrt, Abs, Clamp, LeakyReLU, Sigmoid, Tanh, Softmax, LogSoftmax,
    Dense, Apply, Loss, Custom
};

struct VarData {
    Tensor value, grad;
    Tape* tape = nullptr;
    TapeNode* node = nullptr;  // the operation that made it; null for leaves
    const char* name = "";
    bool requires_grad = false;
    bool leaf = false;
    uint64_t reach_pass = 0;  // the last backward pass that needed its gradient
};

struct TapeNode {
    TapeOp op = TapeOp::Add;
    bool released = false;  // spent by a backward without retain_graph
    TapeNode* prev = nullptr;
    VarData* out = nullptr;
    VarData** in = nullptr;
    int n_in = 0;
    int iarg[4] = {0, 0, 0, 0};  // axes, offsets, flags (per operation)
    float farg[2] = {0, 0};     // scalars (per operation)
    int box[4] = {1, 1, 1, 1};  // the strided loop's index box (kernels/strided.hpp)
    Act act = Act::None;
    Layer* layer = nullptr;
    Loss loss;
    const CustomOp* custom = nullptr;
    void* user = nullptr;
    float* saved = nullptr;  // what backward needs from forward (see each op)
};

static const char* tape_op_name(TapeOp op) {
    switch (op) {
        case TapeOp::Add: return "add";
        case TapeOp::Sub: return "sub";
        case TapeOp::Mul: return "mul";
        case TapeOp::Div: return "div";
        case TapeOp::AddScalar: return "add_scalar";
        case TapeOp::MulScalar: return "mul_scalar";
        case TapeOp::MatMul: return "matmul";
        case TapeOp::Transpose: return "transpose";
        case TapeOp::Reshape: return "reshape";
        case TapeOp::Slice: return "slice";
        case TapeOp::Concat: return "concat";
        case TapeOp::Sum: return "sum";
        case TapeOp::Exp: return "exp";
        case TapeOp::Log: return "log";
        case TapeOp::Pow: return "pow";
        case TapeOp::Sqrt: return "sqrt";
        case TapeOp::Abs: return "abs";
        case TapeOp::Clamp: return "clamp";
        case TapeOp::LeakyReLU: return "leaky_relu";
        case TapeOp::Sigmoid: return "sigmoid";
        case TapeOp::Tanh: return "tanh";
        case TapeOp::Softmax: return "softmax";
        case TapeOp::LogSoftmax: return "log_softmax";
        case TapeOp::Dense: return "dense";
        case TapeOp::Apply: return "apply";
        case TapeOp::Loss: return "loss";
        case TapeOp::Custom: return "custom";
    }
    return "?";
}

// Graph ids are unique across tapes, so a layer applied by two tapes is told
// apart. An unsigned long: lock-free on every target (ARMv6 has no 64-bit
// atomics); on 32-bit targets it wraps after 2^32 graphs, which only matters
// if a layer last applied 2^32 graphs ago is applied again in this one.
static uint64_t next_graph_id() {
    static std::atomic<unsigned long> id{0};
    return (uint64_t)++id;
}

// --- Var accessors --------------------------------------------------------------

static const Tensor kNoTensor{};
static const Shape kNoShape{};

const Tensor& Var::value() const { return p ? p->value : kNoTensor; }
const Tensor& Var::grad() const { return p ? p->grad : kNoTensor; }
const Shape& Var::shape() const { return p ? p->value.shape : kNoShape; }
size_t Var::numel() const { return p ? p->value.numel() : 0; }
float Var::item() const { return p && p->value.data ? p->value.data[0] : 0.0f; }
bool Var::requires_grad() const { return p && p->requires_grad; }
const char* Var::name() const { return p ? p->name : "(empty)"; }
Tape* Var::tape() const { return p ? p->tape : nullptr; }
void Var::set_requires_grad(bool on) const {
    if (!p) return;
    // Only a leaf with a gradient buffer can want a gradient.
    if (!p->leaf)
        p->tape->fail(errorf("tape: set_requires_grad: \"%s\" is the result of an operation; only leaves "
                             "(param, variable, wrap_tensor) can be frozen or unfrozen", p->name));
    else if (on && !p->grad.data)
        p->tape->fail(errorf("tape: set_requires_grad: leaf \"%s\" was made without a gradient buffer "
                             "(a constant); make it with param() or variable(..., true)", p->name));
    else
        p->requires_grad = on;
}
void Var::zero_grad() const {
    if (p && p->grad.data) std::memset(p->grad.data, 0, p->grad.numel() * sizeof(float));
}

Param as_param(const Var& v, const char* name) {
    Param q;
    if (!v.p) return q;
    q.name = name ? name : v.p->name;
    q.value = v.p->value.data;
    q.grad = v.p->grad.data;
    q.size = v.p->value.numel();
    q.trainable = v.p->leaf && v.p->grad.data != nullptr;
    q.requires_grad = &v.p->requires_grad;
    return q;
}

// --- The tape itself ----------------------------------------------------------

Status Tape::reserve(size_t bytes) {
    Status st = arena.reserve(bytes);
    if (st && graph == 0) graph = next_graph_id();
    return st;
}

Status Tape::wrap(void* buffer, size_t bytes) {
    Status st = arena.wrap(buffer, bytes);
    if (st && graph == 0) graph = next_graph_id();
    return st;
}

Var Tape::fail(const Status& st) {
    if (error.ok()) error = st;
    return Var{};
}

TapeMark Tape::mark() const {
    TapeMark m;
    m.arena_used = arena.used;
    m.last = last;
    m.nodes = nodes;
    m.pack = pack;
    m.pack_floats = pack_floats;
    return m;
}

void Tape::reset(const TapeMark& m) {
    arena.reset(m.arena_used);
    last = m.last;
    nodes = m.nodes;
    pack = m.pack;
    pack_floats = m.pack_floats;
    graph = next_graph_id();
    error = Status{};
}

static bool tape_shape_ok(const Shape& s) {
    if (s.ndim < 1 || s.ndim > kMaxDims) return false;
    for (int i = 0; i < s.ndim; ++i)
        if (s.dim[i] < 1) return false;
    return true;
}

// A Var with a value of shape s carved from the arena (contents unset).
static VarData* tape_new_var(Tape& t, const Shape& s, const char* name) {
    char buf[64];
    if (!tape_shape_ok(s)) {
        t.fail(errorf("tape: %s: shape %s is not 1 to %d positive dimensions", name, shape_str(s, buf, sizeof buf),
                      kMaxDims));
        return nullptr;
    }
    if (!t.arena.base)
        t.fail(errorf("tape: %s: the tape has no memory; call reserve(bytes) or wrap(buffer, bytes) first", name));
    if (!t.error.ok()) return nullptr;
    Status st;
    void* mem = t.arena.alloc(sizeof(VarData), &st, name);
    float* data = mem ? t.arena.alloc_floats(s.numel(), &st, name) : nullptr;
    if (!data) {
        t.fail(errorf("tape: %s: %s", name, st.message()));
        return nullptr;
    }
    VarData* v = new (mem) VarData();
    v->value = tensor_view(data, s);
    v->tape = &t;
    v->name = name;
    return v;
}

static float* tape_floats(Tape& t, size_t n, const char* what) {
    Status st;
    float* f = t.arena.alloc_floats(n, &st, what);
    if (!f) t.fail(errorf("tape: %s: %s", what, st.message()));
    return f;
}

static Var tape_leaf(Tape& t, const Shape& s, const float* data, bool wants_grad, const char* name) {
    VarData* v = tape_new_var(t, s, name);
    if (!v) return Var{};
    const size_t n = s.numel();
    if (data) std::memcpy(v->value.data, data, n * sizeof(float));
    else std::memset(v->value.data, 0, n * sizeof(float));
    v->leaf = true;
    if (wants_grad) {
        float* g = tape_floats(t, n, name);
        if (!g) return Var{};
        std::memset(g, 0, n * sizeof(float));
        v->grad = tensor_view(g, s);
        v->requires_grad = true;
    }
    return Var{v};
}

Var Tape::param(const Shape& s, const float* data, const char* name) { return tape_leaf(*this, s, data, true, name); }
Var Tape::variable(const Shape& s, const float* data, bool requires_grad, const char* name) {
    return tape_leaf(*this, s, data, requires_grad, name);
}
Var Tape::constant(const Shape& s, const float* data, const char* name) {
    return tape_leaf(*this, s, data, false, name);
}

Var Tape::wrap_tensor(const Tensor& value, const Tensor& grad, const char* name) {
    char a[64], b[64];
    if (!value.data) return fail(errorf("tape: wrap_tensor \"%s\": the value has no data", name));
    if (grad.data && grad.numel() != value.numel())
        return fail(errorf("tape: wrap_tensor \"%s\": gradient %s does not match value %s", name,
                           shape_str(grad.shape, a, sizeof a), shape_str(value.shape, b, sizeof b)));
    if (!tape_shape_ok(value.shape))
        return fail(errorf("tape: wrap_tensor \"%s\": shape %s is not 1 to %d positive dimensions", name,
                           shape_str(value.shape, a, sizeof a), kMaxDims));
    if (!arena.base)
        return fail(errorf("tape: wrap_tensor \"%s\": the tape has no memory; call reserve(bytes) first", name));
    if (!error.ok()) return Var{};
    Status st;
    void* mem = arena.alloc(sizeof(VarData), &st, name);
    if (!mem) return fail(errorf("tape: wrap_tensor \"%s\": %s", name, st.message()));
    VarData* v = new (mem) VarData();
    v->value = value;
    v->grad = grad.data ? tensor_view(grad.data, value.shape) : Tensor{};
    v->tape = this;
    v->name = name;
    v->leaf = true;
    v->requires_grad = grad.data != nullptr;
    return Var{v};
}

Var Tape::layer_param(Layer& L, int i) {
    if (!L.built) return fail(errorf("tape: layer_param: layer \"%s\" is not built", L.name));
    if (i < 0 || i >= L.n_params)
        return fail(errorf("tape: layer_param: layer \"%s\" has %d parameters, asked for %d", L.name, L.n_params, i));
    Var v = wrap_tensor(L.params[i], L.buffer[i] ? Tensor{} : L.grads[i], L.param_name[i]);
    if (v.p && L.frozen) v.p->requires_grad = false;
    return v;
}

// --- Recording ------------------------------------------------------------------

// The output Var of operation `op` over inputs in[0..n), with a node on the
// tape when gradients are on and some input wants one. Returns null (and
// records the error) when an input is empty or the arena is full.
static VarData* tape_begin(TapeOp op, const VarData* const* in, int n, const Shape& s) {
    Tape& t = *in[0]->tape;
    bool wants = false;
    for (int i = 0; i < n; ++i) wants = wants || in[i]->requires_grad;
    wants = wants && t.grad_enabled;
    VarData* out = tape_new_var(t, s, tape_op_name(op));
    if (!out) return nullptr;
    if (!wants) return out;
    Status st;
    void* mem = t.arena.alloc(sizeof(TapeNode), &st, "tape node");
    VarData** ins = mem ? static_cast<VarData**>(t.arena.alloc(sizeof(VarData*) * (size_t)n, &st, "tape node")) : nullptr;
    if (!ins) {
        t.fail(errorf("tape: %s: %s", tape_op_name(op), st.message()));
        return nullptr;
    }
    TapeNode* node = new (mem) TapeNode();
    node->op = op;
    for (int i = 0; i < n; ++i) ins[i] = const_cast<VarData*>(in[i]);
    node->in = ins;
    node->n_in = n;
    node->out = out;
    node->prev = t.last;
    t.last = node;
    ++t.nodes;
    out->node = node;
    out->requires_grad = true;
    return out;
}

// All inputs present and on one tape, no earlier error: the tape; else null.
static Tape* tape_of(const char* op, std::initializer_list<const Var*> vars) {
    Tape* t = nullptr;
    for (const Var* v : vars) {
        if (!v->p) return nullptr;  // an earlier failure, already recorded
        if (t && v->p->tape != t) {
            t->fail(errorf("tape: %s: operands \"%s\" and \"%s\" live on different tapes", op,
                           (*vars.begin())->p->name, v->p->name));
            return nullptr;
        }
        t = v->p->tape;
    }
    return t && t->error.ok() ? t : nullptr;
}

static int norm_axis(int axis, int ndim) { return axis < 0 ? axis + ndim : axis; }

// A shape's dimensions right-aligned in a box of 4 (leading 1s).
static void pad4(const Shape& s, int n[4]) {
    for (int d = 0; d < 4; ++d) n[d] = 1;
    for (int k = 0; k < s.ndim; ++k) n[4 - s.ndim + k] = s.dim[k];
}

// --- Binary operations with broadcasting ----------------------------------------

static bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out) {
    const int nd = a.ndim > b.ndim ? a.ndim : b.ndim;
    int na[4], nb[4];
    pad4(a, na);
    pad4(b, nb);
    out->ndim = nd;
    for (int k = 0; k < nd; ++k) {
        const int d = 4 - nd + k;
        if (na[d] != nb[d] && na[d] != 1 && nb[d] != 1) return false;
        out->dim[k] = na[d] > nb[d] ? na[d] : nb[d];
    }
    return true;
}

// Strides of operand s inside the broadcast box: 0 along its size-1 dimensions.
static void broadcast_strides(const Shape& s, ptrdiff_t st[4]) {
    int n[4];
    pad4(s, n);
    strided_contiguous(st, n, true);
}

// The box of a binary operation: one long row when no operand broadcasts.
static void binary_box(const Shape& a, const Shape& b, const Shape& y, int box[4], ptrdiff_t sa[4],
                       ptrdiff_t sb[4]) {
    if (a == b) {
        box[0] = box[1] = box[2] = 1;
        box[3] = (int)y.numel();
        for (int d = 0; d < 4; ++d) sa[d] = sb[d] = d == 3 ? 1 : 0;
        return;
    }
    pad4(y, box);
    broadcast_strides(a, sa);
    broadcast_strides(b, sb);
}

static Var binary_op(TapeOp op, const Var& a, const Var& b) {
    Tape* t = tape_of(tape_op_name(op), {&a, &b});
    if (!t) return Var{};
    Shape ys;
    char sa_buf[64], sb_buf[64];
    if (!broadcast_shapes(a.shape(), b.shape(), &ys))
        return t->fail(errorf("tape: %s: shapes %s (\"%s\") and %s (\"%s\") do not broadcast", tape_op_name(op),
                              shape_str(a.shape(), sa_buf, sizeof sa_buf), a.p->name,
                              shape_str(b.shape(), sb_buf, sizeof sb_buf), b.p->name));
    const VarData* in[2] = {a.p, b.p};
    VarData* y = tape_begin(op, in, 2, ys);
    if (!y) return Var{};
    int box[4];
    ptrdiff_t sa[4], sb[4];
    binary_box(a.shape(), b.shape(), ys, box, sa, sb);
    const float *pa = a.p->value.data, *pb = b.p->value.data;
    float* py = y->value.data;
    switch (op) {
        case TapeOp::Add: broadcast_binary(py, pa, sa, pb, sb, box, [](float u, float v) { return u + v; }); break;
        case TapeOp::Sub: broadcast_binary(py, pa, sa, pb, sb, box, [](float u, float v) { return u - v; }); break;
        case TapeOp::Mul: broadcast_binary(py, pa, sa, pb, sb, box, [](float u, float v) { return u * v; }); break;
        case TapeOp::Div: broadcast_binary(py, pa, sa, pb, sb, box, [](float u, float v) { return u / v; }); break;
        default: NN_ASSERT(false);
    }
    return Var{y};
}

Var add(const Var& a, const Var& b) { return binary_op(TapeOp::Add, a, b); }
Var sub(const Var& a, const Var& b) { return binary_op(TapeOp::Sub, a, b); }
Var mul(const Var& a, const Var& b) { return binary_op(TapeOp::Mul, a, b); }
Var div(const Var& a, const Var& b) { return binary_op(TapeOp::Div, a, b); }

// dL/da and dL/db of a binary operation, each summed back to its operand's shape.
static void binary_backward(TapeNode& n, const float* gy) {
    VarData *a = n.in[0], *b = n.in[1];
    int box[4];
    ptrdiff_t sa[4], sb[4];
    binary_box(a->value.shape, b->value.shape, n.out->value.shape, box, sa, sb);
    const float *pa = a->value.data, *pb = b->value.data;
    float* ga = a->requires_grad ? a->grad.data : nullptr;
    float* gb = b->requires_grad ? b->grad.data : nullptr;
    switch (n.op) {
        case TapeOp::Add:
            if (ga) broadcast_binary_grad(ga, sa, gy, pa, sa, pb, sb, box, [](float g, float, float) { return g; });
            if (gb) broadcast_binary_grad(gb, sb, gy, pa, sa, pb, sb, box, [](float g, float, float) { return g; });
            break;
        case TapeOp::Sub:
            if (ga) broadcast_binary_grad(ga, sa, gy, pa, sa, pb, sb, box, [](float g, float, float) { return g; });
            if (gb) broadcast_binary_grad(gb, sb, gy, pa, sa, pb, sb, box, [](float g, float, float) { return -g; });
            break;
        case TapeOp::Mul:
            if (ga) broadcast_binary_grad(ga, sa, gy, pa, sa, pb, sb, box, [](float g, float, float v) { return g * v; });
            if (gb) broadcast_binary_grad(gb, sb, gy, pa, sa, pb, sb, box, [](float g, float u, float) { return g * u; });
            break;
        case TapeOp::Div:
            if (ga) broadcast_binary_grad(ga, sa, gy, pa, sa, pb, sb, box, [](float g, float, float v) { return g / v; });
            if (gb)
                broadcast_binary_grad(gb, sb, gy, pa, sa, pb, sb, box,
                                      [](float g, float u, float v) { return -g * u / (v * v); });
            break;
        default: NN_ASSERT(false);
    }
}

// --- Elementwise operations -----------------------------------------------------

static Var unary_op(TapeOp op, const Var& a, float f0 = 0.0f, float f1 = 0.0f) {
    Tape* t = tape_of(tape_op_name(op), {&a});
    if (!t) return Var{};
    const VarData* in[1] = {a.p};
    VarData* y = tape_begin(op, in, 1, a.shape());
    if (!y) return Var{};
    if (y->node) y->node->farg[0] = f0, y->node->farg[1] = f1;
    const size_t n = a.numel();
    const float* x = a.p->value.data;
    float* o = y->value.data;
    switch (op) {
        case TapeOp::AddScalar: for (size_t i = 0; i < n; ++i) o[i] = x[i] + f0; break;
        case TapeOp::MulScalar: for (size_t i = 0; i < n; ++i) o[i] = x[i] * f0; break;
        case TapeOp::Exp: for (size_t i = 0; i < n; ++i) o[i] = std::exp(x[i]); break;
        case TapeOp::Log: for (size_t i = 0; i < n; ++i) o[i] = std::log(x[i]); break;
        case TapeOp::Pow:
            if (f0 == 2.0f) for (size_t i = 0; i < n; ++i) o[i] = x[i] * x[i];
            else for (size_t i = 0; i < n; ++i) o[i] = std::pow(x[i], f0);
            break;
        case TapeOp::Sqrt: for (size_t i = 0; i < n; ++i) o[i] = std::sqrt(x[i]); break;
        case TapeOp::Abs: for (size_t i = 0; i < n; ++i) o[i] = std::fabs(x[i]); break;
        case TapeOp::Clamp:
            for (size_t i = 0; i < n; ++i) o[i] = x[i] < f0 ? f0 : (x[i] > f1 ? f1 : x[i]);
            break;
        case TapeOp::LeakyReLU: leaky_relu_forward(o, x, f0, n); break;
        case TapeOp::Sigmoid: sigmoid_forward(o, x, n); break;
        case TapeOp::Tanh: tanh_forward(o, x, n); break;
        default: NN_ASSERT(false);
    }
    return Var{y};
}

Var add(const Var& a, float s) { return unary_op(TapeOp::AddScalar, a, s); }
Var mul(const Var& a, float s) { return unary_op(TapeOp::MulScalar, a, s); }
Var neg(const Var& a) { return unary_op(TapeOp::MulScalar, a, -1.0f); }
Var exp(const Var& a) { return unary_op(TapeOp::Exp, a); }
Var log(const Var& a) { return unary_op(TapeOp::Log, a); }
Var pow(const Var& a, float exponent) { return unary_op(TapeOp::Pow, a, exponent); }
Var square(const Var& a) { return unary_op(TapeOp::Pow, a, 2.0f); }
Var sqrt(const Var& a) { return unary_op(TapeOp::Sqrt, a); }
Var abs(const Var& a) { return unary_op(TapeOp::Abs, a); }
Var relu(const Var& a) { return unary_op(TapeOp::LeakyReLU, a, 0.0f); }
Var leaky_relu(const Var& a, float negative_slope) { return unary_op(TapeOp::LeakyReLU, a, negative_slope); }
Var sigmoid(const Var& a) { return unary_op(TapeOp::Sigmoid, a); }
Var tanh(const Var& a) { return unary_op(TapeOp::Tanh, a); }
Var clamp(const Var& a, float lo, float hi) {
    if (!(lo <= hi)) {
        Tape* t = tape_of("clamp", {&a});
        return t ? t->fail(errorf("tape: clamp: lo %g is above hi %g", (double)lo, (double)hi)) : Var{};
    }
    return unary_op(TapeOp::Clamp, a, lo, hi);
}

static void unary_backward(TapeNode& n, const float* gy) {
    VarData* a = n.in[0];
    if (!a->requires_grad) return;
    float* g = a->grad.data;
    const float* x = a->value.data;
    const float* y = n.out->value.data;
    const size_t len = a->value.numel();
    const float f0 = n.farg[0], f1 = n.farg[1];
    switch (n.op) {
        case TapeOp::AddScalar: for (size_t i = 0; i < len; ++i) g[i] += gy[i]; break;
        case TapeOp::MulScalar: for (size_t i = 0; i < len; ++i) g[i] += f0 * gy[i]; break;
        case TapeOp::Exp: for (size_t i = 0; i < len; ++i) g[i] += gy[i] * y[i]; break;
        case TapeOp::Log: for (size_t i = 0; i < len; ++i) g[i] += gy[i] / x[i]; break;
        case TapeOp::Pow:
            if (f0 == 2.0f) for (size_t i = 0; i < len; ++i) g[i] += 2.0f * x[i] * gy[i];
            else for (size_t i = 0; i < len; ++i) g[i] += gy[i] * f0 * std::pow(x[i], f0 - 1.0f);
            break;
        case TapeOp::Sqrt: for (size_t i = 0; i < len; ++i) g[i] += gy[i] * 0.5f / y[i]; break;
        case TapeOp::Abs:
            for (size_t i = 0; i < len; ++i) g[i] += x[i] > 0.0f ? gy[i] : (x[i] < 0.0f ? -gy[i] : 0.0f);
            break;
        case TapeOp::Clamp:
            for (size_t i = 0; i < len; ++i) g[i] += x[i] >= f0 && x[i] <= f1 ? gy[i] : 0.0f;
            break;
        case TapeOp::LeakyReLU:  // by the input's sign, as PyTorch (relu'(0) = 0)
            for (size_t i = 0; i < len; ++i) g[i] += x[i] > 0.0f ? gy[i] : f0 * gy[i];
            break;
        case TapeOp::Sigmoid: for (size_t i = 0; i < len; ++i) g[i] += gy[i] * y[i] * (1.0f - y[i]); break;
        case TapeOp::Tanh: for (size_t i = 0; i < len; ++i) g[i] += gy[i] * (1.0f - y[i] * y[i]); break;
        default: NN_ASSERT(false);
    }
}

// --- Softmax along an axis ------------------------------------------------------

// The axis as (outer, len, inner): element (o, k, i) sits at (o len + k) inner + i.
static void axis_split(const Shape& s, int axis, size_t* outer, size_t* len, size_t* inner) {
    *outer = *inner = 1;
    for (int d = 0; d < axis; ++d) *outer *= (size_t)s.dim[d];
    *len = (size_t)s.dim[axis];
    for (int d = axis + 1; d < s.ndim; ++d) *inner *= (size_t)s.dim[d];
}

static Var softmax_op(TapeOp op, const Var& a, int axis) {
    Tape* t = tape_of(tape_op_name(op), {&a});
    if (!t) return Var{};
    char buf[64];
    const int ax = norm_axis(axis, a.shape().ndim);
    if (ax < 0 || ax >= a.shape().ndim)
        return t->fail(errorf("tape: %s: axis %d is outside %s", tape_op_name(op), axis,
                              shape_str(a.shape(), buf, sizeof buf)));
    const VarData* in[1] = {a.p};
    VarData* y = tape_begin(op, in, 1, a.shape());
    if (!y) return Var{};
    if (y->node) y->node->iarg[0] = ax;
    size_t outer, len, inner;
    axis_split(a.shape(), ax, &outer, &len, &inner);
    const float* x = a.p->value.data;
    float* o = y->value.data;
    if (op == TapeOp::Softmax && inner == 1) {  // rows: the vectorised kernel
        softmax_forward(o, x, outer, len);
        return Var{y};
    }
    for (size_t p = 0; p < outer; ++p)
        for (size_t i = 0; i < inner; ++i) {
            const float* xr = x + p * len * inner + i;
            float* yr = o + p * len * inner + i;
            float m = xr[0];
            for (size_t k = 1; k < len; ++k) m = xr[k * inner] > m ? xr[k * inner] : m;
            double s = 0.0;
            for (size_t k = 0; k < len; ++k) s += std::exp((double)(xr[k * inner] - m));
            if (op == TapeOp::Softmax) {
                const double inv = 1.0 / s;
                for (size_t k = 0; k < len; ++k) yr[k * inner] = (float)(std::exp((double)(xr[k * inner] - m)) * inv);
            } else {
                const float lse = m + (float)std::log(s);
                for (size_t k = 0; k < len; ++k) yr[k * inner] = xr[k * inner] - lse;
            }
        }
    return Var{y};
}

Var softmax(const Var& a, int axis) { return softmax_op(TapeOp::Softmax, a, axis); }
Var log_softmax(const Var& a, int axis) { return softmax_op(TapeOp::LogSoftmax, a, axis); }

// softmax:     dx_k += y_k (dy_k - sum_j dy_j y_j)
// log_softmax: dx_k += dy_k - exp(y_k) sum_j dy_j
static void softmax_op_backward(TapeNode& n, const float* gy) {
    VarData* a = n.in[0];
    if (!a->requires_grad) return;
    size_t outer, len, inner;
    axis_split(a->value.shape, n.iarg[0], &outer, &len, &inner);
    float* g = a->grad.data;
    const float* y = n.out->value.data;
    for (size_t p = 0; p < outer; ++p)
        for (size_t i = 0; i < inner; ++i) {
            const size_t base = p * len * inner + i;
            double s = 0.0;
            if (n.op == TapeOp::Softmax) {
                for (size_t k = 0; k < len; ++k) s += (double)gy[base + k * inner] * y[base + k * inner];
                for (size_t k = 0; k < len; ++k) {
                    const size_t e = base + k * inner;
                    g[e] += y[e] * (gy[e] - (float)s);
                }
            } else {
                for (size_t k = 0; k < len; ++k) s += gy[base + k * inner];
                for (size_t k = 0; k < len; ++k) {
                    const size_t e = base + k * inner;
                    g[e] += gy[e] - std::exp(y[e]) * (float)s;
                }
            }
        }
}

// --- Shape operations -------------------------------------------------------------

Var reshape(const Var& a, const Shape& s0) {
    Tape* t = tape_of("reshape", {&a});
    if (!t) return Var{};
    char b1[64], b2[64];
    Shape s = s0;
    int infer = -1;
    size_t known = 1;
    for (int d = 0; d < s.ndim; ++d) {
        if (s.dim[d] == -1 && infer < 0) infer = d;
        else if (s.dim[d] < 1)
            return t->fail(errorf("tape: reshape: %s to %s: dimension %d is %d", shape_str(a.shape(), b1, sizeof b1),
                                  shape_str(s0, b2, sizeof b2), d, s.dim[d]));
        else known *= (size_t)s.dim[d];
    }
    if (s.ndim < 1 || s.ndim > kMaxDims)
        return t->fail(errorf("tape: reshape: %s to %d dimensions (1 to %d)", shape_str(a.shape(), b1, sizeof b1),
                              s.ndim, kMaxDims));
    if (infer >= 0 && known > 0 && a.numel() % known == 0) s.dim[infer] = (int)(a.numel() / known);
    if (s.numel() != a.numel() || (infer >= 0 && a.numel() % known != 0))
        return t->fail(errorf("tape: reshape: %s (%zu elements) cannot become %s", shape_str(a.shape(), b1, sizeof b1),
                              a.numel(), shape_str(s0, b2, sizeof b2)));
    // The value is a view of the input's: no copy.
    Status st;
    void* mem = t->arena.alloc(sizeof(VarData), &st, "reshape");
    if (!mem) return t->fail(errorf("tape: reshape: %s", st.message()));
    VarData* y = new (mem) VarData();
    y->value = tensor_view(a.p->value.data, s);
    y->tape = t;
    y->name = "reshape";
    if (a.p->requires_grad && t->grad_enabled) {
        void* nm = t->arena.alloc(sizeof(TapeNode), &st, "tape node");
        VarData** ins = nm ? static_cast<VarData**>(t->arena.alloc(sizeof(VarData*), &st, "tape node")) : nullptr;
        if (!ins) return t->fail(errorf("tape: reshape: %s", st.message()));
        TapeNode* node = new (nm) TapeNode();
        node->op = TapeOp::Reshape;
        ins[0] = a.p;
        node->in = ins;
        node->n_in = 1;
        node->out = y;
        node->prev = t->last;
        t->last = node;
        ++t->nodes;
        y->node = node;
        y->requires_grad = true;
    }
    return Var{y};
}

Var reshape(const Var& a, std::initializer_list<int> dims) {
    Shape s;
    s.ndim = (int)dims.size();
    if (dims.size() > (size_t)kMaxDims) s.ndim = kMaxDims + 1;  // reported by the checks
    int k = 0;
    for (int d : dims)
        if (k < kMaxDims) s.dim[k++] = d;
    return reshape(a, s);
}

Var transpose(const Var& a, int dim0, int dim1) {
    Tape* t = tape_of("transpose", {&a});
    if (!t) return Var{};
    char buf[64];
    const int nd = a.shape().ndim;
    const int d0 = norm_axis(dim0, nd), d1 = norm_axis(dim1, nd);
    if (d0 < 0 || d0 >= nd || d1 < 0 || d1 >= nd)
        return t->fail(errorf("tape: transpose: dimensions %d and %d of %s", dim0, dim1,
                              shape_str(a.shape(), buf, sizeof buf)));
    Shape ys = a.shape();
    ys.dim[d0] = a.shape().dim[d1];
    ys.dim[d1] = a.shape().dim[d0];
    const VarData* in[1] = {a.p};
    VarData* y = tape_begin(TapeOp::Transpose, in, 1, ys);
    if (!y) return Var{};
    if (y->node) y->node->iarg[0] = d0, y->node->iarg[1] = d1;
    // Walk y in order; read x through its strides with the two swapped.
    int nx[4], ny[4];
    ptrdiff_t sx[4], sy[4];
    pad4(a.shape(), nx);
    pad4(ys, ny);
    strided_contiguous(sx, nx, false);
    strided_contiguous(sy, ny, false);
    const int p0 = 4 - nd + d0, p1 = 4 - nd + d1;
    const ptrdiff_t tmp = sx[p0];
    sx[p0] = sx[p1];
    sx[p1] = tmp;
    strided_copy(y->value.data, sy, a.p->value.data, sx, ny, 1.0f, false);
    return Var{y};
}

static void transpose_backward(TapeNode& n, const float* gy) {
    VarData* a = n.in[0];
    if (!a->requires_grad) return;
    const int nd = a->value.shape.ndim;
    int nx[4], ny[4];
    ptrdiff_t sx[4], sy[4];
    pad4(a->value.shape, nx);
    pad4(n.out->value.shape, ny);
    strided_contiguous(sx, nx, false);
    strided_contiguous(sy, ny, false);
    const int p0 = 4 - nd + n.iarg[0], p1 = 4 - nd + n.iarg[1];
    const ptrdiff_t tmp = sx[p0];
    sx[p0] = sx[p1];
    sx[p1] = tmp;
    strided_copy(a->grad.data, sx, gy, sy, ny, 1.0f, true);
}

Var slice(const Var& a, int axis, int begin, int end) {
    Tape* t = tape_of("slice", {&a});
    if (!t) return Var{};
    char buf[64];
    const int nd = a.shape().ndim, ax = norm_axis(axis, nd);
    if (ax < 0 || ax >= nd)
        return t->fail(errorf("tape: slice: axis %d is outside %s", axis, shape_str(a.shape(), buf, sizeof buf)));
    const int len = a.shape().dim[ax];
    if (begin < 0 || end > len || begin >= end)
        return t->fail(errorf("tape: slice: [%d, %d) of axis %d of %s (length %d) is empty or out of range", begin,
                              end, axis, shape_str(a.shape(), buf, sizeof buf), len));
    Shape ys = a.shape();
    ys.dim[ax] = end - begin;
    const VarData* in[1] = {a.p};
    VarData* y = tape_begin(TapeOp::Slice, in, 1, ys);
    if (!y) return Var{};
    if (y->node) y->node->iarg[0] = ax, y->node->iarg[1] = begin;
    int nx[4], ny[4];
    ptrdiff_t sx[4], sy[4];
    pad4(a.shape(), nx);
    pad4(ys, ny);
    strided_contiguous(sx, nx, false);
    strided_contiguous(sy, ny, false);
    strided_copy(y->value.data, sy, a.p->value.data + (ptrdiff_t)begin * sx[4 - nd + ax], sx, ny, 1.0f, false);
    return Var{y};
}

static void slice_backward(TapeNode& n, const float* gy) {
    VarData* a = n.in[0];
    if (!a->requires_grad) return;
    const int nd = a->value.shape.ndim;
    int nx[4], ny[4];
    ptrdiff_t sx[4], sy[4];
    pad4(a->value.shape, nx);
    pad4(n.out->value.shape, ny);
    strided_contiguous(sx, nx, false);
    strided_contiguous(sy, ny, false);
    strided_copy(a->grad.data + (ptrdiff_t)n.iarg[1] * sx[4 - nd + n.iarg[0]], sx, gy, sy, ny, 1.0f, true);
}

Var concat(const Var* parts, int n, int axis) {
    if (n < 1 || !parts) return Var{};
    Tape* t = nullptr;
    for (int i = 0; i < n; ++i) {
        if (!parts[i].p) return Var{};
        if (t && parts[i].p->tape != t)
            return t->fail(errorf("tape: concat: part %d lives on another tape", i));
        t = parts[i].p->tape;
    }
    if (!t->error.ok()) return Var{};
    char b1[64], b2[64];
    const Shape& s0 = parts[0].shape();
    const int nd = s0.ndim, ax = norm_axis(axis, nd);
    if (ax < 0 || ax >= nd) return t->fail(errorf("tape: concat: axis %d is outside %s", axis, shape_str(s0, b1, sizeof b1)));
    Shape ys = s0;
    ys.dim[ax] = 0;
    for (int i = 0; i < n; ++i) {
        const Shape& s = parts[i].shape();
        bool same = s.ndim == nd;
        for (int d = 0; same && d < nd; ++d) same = d == ax || s.dim[d] == s0.dim[d];
        if (!same)
            return t->fail(errorf("tape: concat: part %d is %s, part 0 is %s; only axis %d may differ", i,
                                  shape_str(s, b1, sizeof b1), shape_str(s0, b2, sizeof b2), ax));
        ys.dim[ax] += s.dim[ax];
    }
    const VarData* ins[16];
    const VarData** in = ins;
    if (n > 16) {  // a long list: its pointer array from the arena
        Status st;
        in = static_cast<const VarData**>(t->arena.alloc(sizeof(VarData*) * (size_t)n, &st, "concat"));
        if (!in) return t->fail(errorf("tape: concat: %s", st.message()));
    }
    for (int i = 0; i < n; ++i) in[i] = parts[i].p;
    VarData* y = tape_begin(TapeOp::Concat, in, n, ys);
    if (!y) return Var{};
    if (y->node) y->node->iarg[0] = ax;
    int ny[4];
    ptrdiff_t sy[4];
    pad4(ys, ny);
    strided_contiguous(sy, ny, false);
    ptrdiff_t off = 0;
    for (int i = 0; i < n; ++i) {
        int np[4];
        ptrdiff_t sp[4];
        pad4(parts[i].shape(), np);
        strided_contiguous(sp, np, false);
        strided_copy(y->value.data + off * sy[4 - nd + ax], sy, parts[i].p->value.data, sp, np, 1.0f, false);
        off += parts[i].shape().dim[ax];
    }
    return Var{y};
}

Var concat(std::initializer_list<Var> parts, int axis) { return concat(parts.begin(), (int)parts.size(), axis); }

static void concat_backward(TapeNode& n, const float* gy) {
    const Shape& ys = n.out->value.shape;
    const int nd = ys.ndim, ax = n.iarg[0];
    int ny[4];
    ptrdiff_t sy[4];
    pad4(ys, ny);
    strided_contiguous(sy, ny, false);
    ptrdiff_t off = 0;
    for (int i = 0; i < n.n_in; ++i) {
        VarData* p = n.in[i];
        if (p->requires_grad) {
            int np[4];
            ptrdiff_t sp[4];
            pad4(p->value.shape, np);
            strided_contiguous(sp, np, false);
            strided_copy(p->grad.data, sp, gy + off * sy[4 - nd + ax], sy, np, 1.0f, true);
        }
        off += p->value.shape.dim[ax];
    }
}

// --- Reductions -----------------------------------------------------------------

// sum and mean: iarg[0] is the mask of reduced axes, farg[0] the scale
// (1, or 1/count for the mean); the kept shape has 1s on reduced axes.
static Var reduce_op(const Var& a, std::initializer_list<int> axes, bool keepdims, bool is_mean) {
    const char* name = is_mean ? "mean" : "sum";
    Tape* t = tape_of(name, {&a});
    if (!t) return Var{};
    char buf[64];
    const Shape& xs = a.shape();
    const int nd = xs.ndim;
    int mask = 0;
    for (int ax : axes) {
        const int d = norm_axis(ax, nd);
        if (d < 0 || d >= nd)
            return t->fail(errorf("tape: %s: axis %d is outside %s", name, ax, shape_str(xs, buf, sizeof buf)));
        mask |= 1 << d;
    }
    if (axes.size() == 0) mask = (1 << nd) - 1;
    Shape ys;
    size_t count = 1;
    for (int d = 0; d < nd; ++d) {
        const bool r = (mask >> d) & 1;
        if (r) count *= (size_t)xs.dim[d];
        if (!r) ys.dim[ys.ndim++] = xs.dim[d];
        else if (keepdims) ys.dim[ys.ndim++] = 1;
    }
    if (ys.ndim == 0) ys = make_shape({1});
    const VarData* in[1] = {a.p};
    VarData* y = tape_begin(TapeOp::Sum, in, 1, ys);
    if (!y) return Var{};
    const float scale = is_mean ? (float)(1.0 / (double)count) : 1.0f;
    if (y->node) y->node->iarg[0] = mask, y->node->farg[0] = scale;
    // Walk x; y's strides are 0 along the reduced axes, so elements add up.
    Shape keep = xs;
    for (int d = 0; d < nd; ++d)
        if ((mask >> d) & 1) keep.dim[d] = 1;
    int nx[4], nk[4];
    ptrdiff_t sx[4], sk[4];
    pad4(xs, nx);
    pad4(keep, nk);
    strided_contiguous(sx, nx, false);
    strided_contiguous(sk, nk, true);
    std::memset(y->value.data, 0, ys.numel() * sizeof(float));
    strided_copy(y->value.data, sk, a.p->value.data, sx, nx, scale, true);
    return Var{y};
}

Var sum(const Var& a, std::initializer_list<int> axes, bool keepdims) { return reduce_op(a, axes, keepdims, false); }
Var mean(const Var& a, std::initializer_list<int> axes, bool keepdims) { return reduce_op(a, axes, keepdims, true); }

static void reduce_backward(TapeNode& n, const float* gy) {
    VarData* a = n.in[0];
    if (!a->requires_grad) return;
    const Shape& xs = a->value.shape;
    Shape keep = xs;
    for (int d = 0; d < xs.ndim; ++d)
        if ((n.iarg[0] >> d) & 1) keep.dim[d] = 1;
    int nx[4], nk[4];
    ptrdiff_t sx[4], sk[4];
    pad4(xs, nx);
    pad4(keep, nk);
    strided_contiguous(sx, nx, false);
    strided_contiguous(sk, nk, true);
    strided_copy(a->grad.data, sx, gy, sk, nx, n.farg[0], true);
}

// --- GEMM operations ----------------------------------------------------------------

// Packing scratch for the GEMMs of one operation (forward and backward
// shapes, up to three {M, N, K}; M = 0 skips one), shared by the whole
// graph: carved, once for the largest, when an operation first needs more
// than the graph has. That happens in forward, so backward never allocates.
static bool tape_reserve_pack(Tape& t, const int (*mnk)[3], int count) {
    size_t need = 0;
    for (int i = 0; i < count; ++i) {
        const size_t f = mnk[i][0] > 0 ? gemm_pack_floats(mnk[i][0], mnk[i][1], mnk[i][2]) : 0;
        need = f > need ? f : need;
    }
    const int slots = num_threads();
    if (t.pack && need <= t.pack_floats && slots <= t.pack_slots) return true;
    const size_t per = need > t.pack_floats ? need : t.pack_floats;
    size_t total;
    if (!size_mul(per, (size_t)slots, &total)) {
        t.fail(errorf("tape: GEMM scratch of %zu x %d floats overflows", per, slots));
        return false;
    }
    float* p = tape_floats(t, total, "GEMM packing scratch");
    if (!p) return false;
    t.pack = p;
    t.pack_floats = per;
    t.pack_slots = slots;
    return true;
}

// C := alpha op(A) op(B) + beta C (+ epilogue), on the tape's scratch and threads.
static void tape_gemm(Tape& t, GemmJob j) {
    j.pack = t.pack;
    j.pack_stride = t.pack_floats;
    const int most = num_threads() < t.pack_slots ? num_threads() : t.pack_slots;
    const int nth = gemm_useful_threads(j.M, j.N, j.K, most);
    NN_ASSERT(gemm_pack_floats(j.M, j.N, j.K) <= t.pack_floats);
    if (nth <= 1)
        gemm_f32_fused(j.C, j.ldc, j.A, j.lda, j.trans_a, j.B, j.ldb, j.trans_b, j.ep, j.alpha, j.beta, j.pack,
                       j.M, j.N, j.K);
    else
        parallel_for(nth, gemm_job_part, &j);
}

// matmul: iarg = {M, N, K, wanted}; a is (M, K), b is (K, N) once vectors are
// promoted (a row vector on the left, a column vector on the right).
Var matmul(const Var& a, const Var& b) {
    Tape* t = tape_of("matmul", {&a, &b});
    if (!t) return Var{};
    char b1[64], b2[64];
    const Shape &as = a.shape(), &bs = b.shape();
    if (as.ndim > 2 || bs.ndim > 2)
        return t->fail(errorf("tape: matmul: %s x %s: operands must be 1-D or 2-D", shape_str(as, b1, sizeof b1),
                              shape_str(bs, b2, sizeof b2)));
    const int M = as.ndim == 2 ? as.dim[0] : 1, K = as.ndim == 2 ? as.dim[1] : as.dim[0];
    const int Kb = bs.dim[0], N = bs.ndim == 2 ? bs.dim[1] : 1;
    if (K != Kb)
        return t->fail(errorf("tape: matmul: %s (\"%s\") x %s (\"%s\"): inner dimensions %d and %d differ",
                              shape_str(as, b1, sizeof b1), a.p->name, shape_str(bs, b2, sizeof b2), b.p->name, K, Kb));
    Shape ys;
    if (as.ndim == 2 && bs.ndim == 2) ys = make_shape({M, N});
    else if (as.ndim == 2) ys = make_shape({M});
    else if (bs.ndim == 2) ys = make_shape({N});
    else ys = make_shape({1});
    const VarData* in[2] = {a.p, b.p};
    VarData* y = tape_begin(TapeOp::MatMul, in, 2, ys);
    if (!y) return Var{};
    const bool back = y->node != nullptr;
    const int shapes[3][3] = {{M, N, K},
                              {back && a.p->requires_grad ? M : 0, K, N},   // dA = dC B^T
                              {back && b.p->requires_grad ? K : 0, N, M}};  // dB = A^T dC
    if (!tape_reserve_pack(*t, shapes, 3)) return Var{};
    if (back) {  // iarg[3]: which operands wanted a gradient (and scratch) here
        y->node->iarg[0] = M, y->node->iarg[1] = N, y->node->iarg[2] = K;
        y->node->iarg[3] = (a.p->requires_grad ? 1 : 0) | (b.p->requires_grad ? 2 : 0);
    }
    GemmJob j{};
    j.C = y->value.data, j.ldc = N;
    j.A = a.p->value.data, j.lda = K;
    j.B = b.p->value.data, j.ldb = N;
    j.M = M, j.N = N, j.K = K;
    j.alpha = 1.0f, j.beta = 0.0f;
    tape_gemm(*t, j);
    return Var{y};
}

// dA += dC B^T, dB += A^T dC.
static void matmul_backward(Tape& t, TapeNode& n, const float* gy) {
    VarData *a = n.in[0], *b = n.in[1];
    const int M = n.iarg[0], N = n.iarg[1], K = n.iarg[2];
    if (a->requires_grad && (n.iarg[3] & 1)) {
        GemmJob j{};
        j.C = a->grad.data, j.ldc = K;
        j.A = gy, j.lda = N;
        j.B = b->value.data, j.ldb = N, j.trans_b = true;
        j.M = M, j.N = K, j.K = N;
        j.alpha = 1.0f, j.beta = 1.0f;
        tape_gemm(t, j);
    }
    if (b->requires_grad && (n.iarg[3] & 2)) {
        GemmJob j{};
        j.C = b->grad.data, j.ldc = N;
        j.A = a->value.data, j.lda = K, j.trans_a = true;
        j.B = gy, j.ldb = N;
        j.M = K, j.N = N, j.K = M;
        j.alpha = 1.0f, j.beta = 1.0f;
        tape_gemm(t, j);
    }
}

// dense: y = act(x W^T + b) in one fused GEMM. iarg = {B, in, out, wanted}; saved is
// (B, out) room for the gradient before the activation.
Var dense(const Var& x, const Var& W, const Var& b, Act act) {
    const bool has_b = b.p != nullptr;
    Tape* t = has_b ? tape_of("dense", {&x, &W, &b}) : tape_of("dense", {&x, &W});
    if (!t) return Var{};
    char b1[64], b2[64], b3[64];
    const Shape &xs = x.shape(), &ws = W.shape();
    if (xs.ndim != 2 || ws.ndim != 2 || xs.dim[1] != ws.dim[1])
        return t->fail(errorf("tape: dense: input %s (\"%s\") and weight %s (\"%s\"): want (B, in) and (out, in)",
                              shape_str(xs, b1, sizeof b1), x.p->name, shape_str(ws, b2, sizeof b2), W.p->name));
    const int B = xs.dim[0], in = xs.dim[1], out = ws.dim[0];
    if (has_b && (b.shape().ndim != 1 || b.shape().dim[0] != out))
        return t->fail(errorf("tape: dense: bias %s (\"%s\") does not match weight %s: want (%d,)",
                              shape_str(b.shape(), b3, sizeof b3), b.p->name, shape_str(ws, b2, sizeof b2), out));
    const VarData* ins[3] = {x.p, W.p, has_b ? b.p : nullptr};
    VarData* y = tape_begin(TapeOp::Dense, ins, has_b ? 3 : 2, make_shape({B, out}));
    if (!y) return Var{};
    TapeNode* node = y->node;
    const int shapes[3][3] = {{B, out, in},
                              {node && W.p->requires_grad ? out : 0, in, B},  // dW = dz^T x
                              {node && x.p->requires_grad ? B : 0, in, out}};  // dx = dz W
    if (!tape_reserve_pack(*t, shapes, 3)) return Var{};
    if (node) {
        if (act != Act::None && !(node->saved = tape_floats(*t, (size_t)B * (size_t)out, "dense"))) return Var{};
        node->iarg[0] = B, node->iarg[1] = in, node->iarg[2] = out;
        node->iarg[3] = (x.p->requires_grad ? 1 : 0) | (W.p->requires_grad ? 2 : 0);
        node->act = act;
    }
    GemmJob j{};
    j.C = y->value.data, j.ldc = out;
    j.A = x.p->value.data, j.lda = in;
    j.B = W.p->value.data, j.ldb = in, j.trans_b = true;
    j.M = B, j.N = out, j.K = in;
    j.alpha = 1.0f, j.beta = 0.0f;
    j.ep.bias = has_b ? b.p->value.data : nullptr;
    switch (act) {
        case Act::ReLU: j.ep.relu = true; break;
        case Act::LeakyReLU: j.ep.relu = true, j.ep.slope = 0.01f; break;
        case Act::Sigmoid: j.ep.tile_fn = tile_sigmoid; break;
        case Act::Tanh: j.ep.tile_fn = tile_tanh; break;
        case Act::None:
        case Act::Softmax: break;
    }
    tape_gemm(*t, j);
    if (act == Act::Softmax) softmax_forward(y->value.data, y->value.data, (size_t)B, (size_t)out);
    return Var{y};
}

static void dense_op_backward(Tape& t, TapeNode& n, const float* gy) {
    VarData *x = n.in[0], *W = n.in[1], *b = n.n_in > 2 ? n.in[2] : nullptr;
    const int B = n.iarg[0], in = n.iarg[1], out = n.iarg[2];
    const size_t len = (size_t)B * (size_t)out;
    const float* y = n.out->value.data;
    const float* dz = gy;
    if (n.act != Act::None) {  // through the activation, by its output
        switch (n.act) {
            case Act::ReLU: leaky_relu_backward(n.saved, gy, y, 0.0f, len); break;
            case Act::LeakyReLU: leaky_relu_backward(n.saved, gy, y, 0.01f, len); break;
            case Act::Sigmoid: sigmoid_backward(n.saved, gy, y, len); break;
            case Act::Tanh: tanh_backward(n.saved, gy, y, len); break;
            case Act::Softmax: softmax_backward(n.saved, gy, y, (size_t)B, (size_t)out); break;
            case Act::None: break;
        }
        dz = n.saved;
    }
    // A gradient for an operand that was frozen at forward time (no GEMM
    // scratch was reserved for it) is not computed.
    if (W->requires_grad && (n.iarg[3] & 2)) {  // dW += dz^T x
        GemmJob j{};
        j.C = W->grad.data, j.ldc = in;
        j.A = dz, j.lda = out, j.trans_a = true;
        j.B = x->value.data, j.ldb = in;
        j.M = out, j.N = in, j.K = B;
        j.alpha = 1.0f, j.beta = 1.0f;
        tape_gemm(t, j);
    }
    if (b && b->requires_grad) column_sum_accumulate(b->grad.data, dz, (size_t)B, (size_t)out);
    if (x->requires_grad && (n.iarg[3] & 1)) {  // dx += dz W
        GemmJob j{};
        j.C = x->grad.data, j.ldc = in;
        j.A = dz, j.lda = out;
        j.B = W->value.data, j.ldb = in;
        j.M = B, j.N = in, j.K = out;
        j.alpha = 1.0f, j.beta = 1.0f;
        tape_gemm(t, j);
    }
}

// --- Layers on the tape ---------------------------------------------------------

// Layers whose backward reads state their forward left in the layer.
static bool layer_keeps_forward_state(const Layer& L, Mode mode) {
    switch (L.kind) {
        case LayerKind::Dropout: return mode == Mode::Train && L.rate > 0.0f;
        case LayerKind::MaxPool2D:
        case LayerKind::Recurrent:
        case LayerKind::Custom: return true;
        case LayerKind::BatchNorm: return mode == Mode::Train;
        default: return false;
    }
}

static bool layer_has_trainable(const Layer& L) {
    if (L.frozen) return false;
    for (int i = 0; i < L.n_params; ++i)
        if (!L.buffer[i] && L.grads[i].data) return true;
    return false;
}

// apply: saved is room for dx (backward writes it; the tape adds it in).
Var apply(Layer& L, const Var& x) {
    Tape* t = tape_of("apply", {&x});
    if (!t) return Var{};
    char b1[64], b2[64];
    if (!L.built) return t->fail(errorf("tape: apply: layer \"%s\" is not built", L.name));
    const Shape& xs = x.shape();
    const int B = xs.dim[0];
    if (B > L.max_batch || batched(L.in_shape, B) != xs)
        return t->fail(errorf("tape: apply: %s \"%s\" takes (B, %s...) with B <= %d; got %s", L.type_name(), L.name,
                              shape_str(L.in_shape, b1, sizeof b1), L.max_batch, shape_str(xs, b2, sizeof b2)));
    const bool stateful = layer_keeps_forward_state(L, t->mode);
    if (stateful && L.tape_graph == t->graph && t->grad_enabled)
        return t->fail(errorf("tape: apply: %s \"%s\" is already on this graph and keeps state from its forward "
                              "pass for backward; build a second layer to use it twice", L.type_name(), L.name));
    // The layer's parameters want gradients too, not just x.
    const bool wants = t->grad_enabled && (x.p->requires_grad || layer_has_trainable(L));
    const bool saved_rg = x.p->requires_grad;
    if (wants) x.p->requires_grad = true;  // so that tape_begin records a node
    const VarData* in[1] = {x.p};
    VarData* y = tape_begin(TapeOp::Apply, in, 1, batched(L.out_shape, B));
    x.p->requires_grad = saved_rg;
    if (!y) return Var{};
    if (y->node) {
        y->node->layer = &L;
        if (saved_rg && !(y->node->saved = tape_floats(*t, xs.numel(), "apply"))) return Var{};
        if (stateful) L.tape_graph = t->graph;
    }
    Status st = forward(L, y->value, x.p->value, t->mode);
    if (!st) return t->fail(st);
    return Var{y};
}

static Status apply_backward(TapeNode& n, const float* gy) {
    VarData* x = n.in[0];
    Layer& L = *n.layer;
    Tensor dx = x->requires_grad ? tensor_view(n.saved, x->value.shape) : Tensor{};
    Status st = backward(L, dx, tensor_view(const_cast<float*>(gy), n.out->value.shape), x->value, n.out->value);
    if (!st) return st;
    if (x->requires_grad) {
        float* g = x->grad.data;
        const size_t len = x->value.numel();
        for (size_t i = 0; i < len; ++i) g[i] += n.saved[i];
    }
    return Status{};
}

// --- Losses ---------------------------------------------------------------------

// loss: the kernel computes the loss and dL/dpred together; saved keeps
// dL/dpred, which backward scales by the upstream gradient.
static Var loss_op(const Loss& kind, const Var& pred, const Var* target, const int32_t* labels) {
    Tape* t = target ? tape_of("loss", {&pred, target}) : tape_of("loss", {&pred});
    if (!t) return Var{};
    char b1[64], b2[64];
    const Shape& ps = pred.shape();
    if (target && target->shape() != ps)
        return t->fail(errorf("tape: loss %s: target %s (\"%s\") differs from prediction %s (\"%s\")",
                              loss_name(kind.kind), shape_str(target->shape(), b1, sizeof b1), target->p->name,
                              shape_str(ps, b2, sizeof b2), pred.p->name));
    const VarData* in[1] = {pred.p};
    VarData* y = tape_begin(TapeOp::Loss, in, 1, make_shape({1}));
    if (!y) return Var{};
    Target tg;
    if (target) tg.values = target->p->value.data;
    if (labels) {  // copied: the caller's array may not outlive the graph
        Status st;
        int32_t* copy = static_cast<int32_t*>(t->arena.alloc(sizeof(int32_t) * (size_t)ps.dim[0], &st, "labels"));
        if (!copy) return t->fail(errorf("tape: loss: %s", st.message()));
        std::memcpy(copy, labels, sizeof(int32_t) * (size_t)ps.dim[0]);
        tg.labels = copy;
    }
    Tensor dpred;
    if (y->node) {
        y->node->loss = kind;
        float* d = tape_floats(*t, ps.numel(), "loss gradient");
        if (!d) return Var{};
        y->node->saved = d;
        dpred = tensor_view(d, ps);
    }
    float value = 0.0f;
    Status st = loss_forward_backward(kind, dpred, pred.p->value, tg, &value);
    if (!st) return t->fail(errorf("tape: %s", st.message()));
    y->value.data[0] = value;
    return Var{y};
}

Var loss(const Loss& kind, const Var& pred, const Var& target) { return loss_op(kind, pred, &target, nullptr); }

Var cross_entropy(const Var& logits, const int32_t* labels) {
    if (!labels) {
        Tape* t = tape_of("cross_entropy", {&logits});
        return t ? t->fail(errorf("tape: cross_entropy: labels are null")) : Var{};
    }
    return loss_op(CrossEntropy(), logits, nullptr, labels);
}

// --- Custom operations ------------------------------------------------------------

Var custom(const CustomOp& op, const Var* inputs, int n, void* user) {
    if (n < 1 || n > kMaxCustomInputs || !inputs) {
        for (int i = 0; i < n && inputs && i < kMaxCustomInputs; ++i)
            if (inputs[i].p)
                return inputs[i].p->tape->fail(errorf("tape: custom op \"%s\": %d inputs (1 to %d)", op.name, n,
                                                      kMaxCustomInputs));
        return Var{};
    }
    Tape* t = nullptr;
    for (int i = 0; i < n; ++i) {
        if (!inputs[i].p) return Var{};
        t = inputs[i].p->tape;
    }
    if (!t->error.ok()) return Var{};
    if (!op.forward || !op.backward)
        return t->fail(errorf("tape: custom op \"%s\": forward and backward are both required", op.name));
    Shape in_shapes[kMaxCustomInputs];
    Tensor in_values[kMaxCustomInputs];
    const VarData* in[kMaxCustomInputs];
    for (int i = 0; i < n; ++i) {
        in[i] = inputs[i].p;
        in_shapes[i] = inputs[i].shape();
        in_values[i] = inputs[i].p->value;
    }
    Shape ys = in_shapes[0];
    if (op.output_shape) {
        Status st = op.output_shape(in_shapes, n, user, &ys);
        if (!st) return t->fail(errorf("tape: custom op \"%s\": %s", op.name, st.message()));
    }
    VarData* y = tape_begin(TapeOp::Custom, in, n, ys);
    if (!y) return Var{};
    y->name = op.name;
    if (y->node) y->node->custom = &op, y->node->user = user;
    op.forward(y->value, in_values, n, user);
    return Var{y};
}

static void custom_backward(TapeNode& n, const float* gy) {
    Tensor dx[kMaxCustomInputs], in[kMaxCustomInputs];
    for (int i = 0; i < n.n_in; ++i) {
        in[i] = n.in[i]->value;
        dx[i] = n.in[i]->requires_grad ? n.in[i]->grad : Tensor{};
        if (!dx[i].data) dx[i].shape = in[i].shape;
    }
    n.custom->backward(dx, tensor_view(const_cast<float*>(gy), n.out->value.shape), in, n.n_in, n.out->value,
                       n.user);
}

// --- Backward -------------------------------------------------------------------

// One node's contribution to its inputs' gradients (+=).
static Status node_backward(Tape& t, TapeNode& n) {
    const float* gy = n.out->grad.data;
    switch (n.op) {
        case TapeOp::Add:
        case TapeOp::Sub:
        case TapeOp::Mul:
        case TapeOp::Div: binary_backward(n, gy); break;
        case TapeOp::AddScalar:
        case TapeOp::MulScalar:
        case TapeOp::Exp:
        case TapeOp::Log:
        case TapeOp::Pow:
        case TapeOp::Sqrt:
        case TapeOp::Abs:
        case TapeOp::Clamp:
        case TapeOp::LeakyReLU:
        case TapeOp::Sigmoid:
        case TapeOp::Tanh: unary_backward(n, gy); break;
        case TapeOp::Softmax:
        case TapeOp::LogSoftmax: softmax_op_backward(n, gy); break;
        case TapeOp::MatMul: matmul_backward(t, n, gy); break;
        case TapeOp::Transpose: transpose_backward(n, gy); break;
        case TapeOp::Reshape:
            if (n.in[0]->requires_grad) {
                float* g = n.in[0]->grad.data;
                const size_t len = n.out->value.numel();
                for (size_t i = 0; i < len; ++i) g[i] += gy[i];
            }
            break;
        case TapeOp::Slice: slice_backward(n, gy); break;
        case TapeOp::Concat: concat_backward(n, gy); break;
        case TapeOp::Sum: reduce_backward(n, gy); break;
        case TapeOp::Dense: dense_op_backward(t, n, gy); break;
        case TapeOp::Apply: return apply_backward(n, gy);
        case TapeOp::Loss:
            if (n.in[0]->requires_grad) {
                float* g = n.in[0]->grad.data;
                const float s = gy[0];
                const size_t len = n.in[0]->value.numel();
                for (size_t i = 0; i < len; ++i) g[i] += s * n.saved[i];
            }
            break;
        case TapeOp::Custom: custom_backward(n, gy); break;
    }
    return Status{};
}

Status Tape::backward(const Var& root, const Var* upstream, bool retain_graph) {
    if (!error.ok()) return error;
    if (!upstream) return backward(root, static_cast<const float*>(nullptr), retain_graph);
    char b1[64], b2[64];
    if (!upstream->p) return errorf("tape: backward: the upstream gradient is empty");
    if (root.p && upstream->shape() != root.shape())
        return errorf("tape: backward: upstream gradient %s does not match root \"%s\" %s",
                      shape_str(upstream->shape(), b1, sizeof b1), root.p->name, shape_str(root.shape(), b2, sizeof b2));
    return backward(root, upstream->p->value.data, retain_graph);
}

Status Tape::backward(const Var& root, const float* upstream, bool retain_graph) {
    if (!error.ok()) return error;
    char buf[64];
    if (!root.p) return errorf("tape: backward: the root is empty (an operation before it failed)");
    if (root.p->tape != this) return errorf("tape: backward: root \"%s\" lives on another tape", root.p->name);
    VarData* r = root.p;
    if (!r->requires_grad)
        return errorf("tape: backward: root \"%s\" does not require a gradient: no input it depends on wants "
                      "one, or it was computed under NoGrad", r->name);
    if (!upstream && r->value.numel() != 1)
        return errorf("tape: backward: root \"%s\" has shape %s; a non-scalar root needs an upstream gradient of "
                      "that shape", r->name, shape_str(r->value.shape, buf, sizeof buf));

    // 1. Which nodes lead to the root; refuse before writing anything if one
    //    of them was spent by an earlier backward.
    const uint64_t p = ++pass;
    r->reach_pass = p;
    for (TapeNode* n = last; n; n = n->prev) {
        if (n->out->reach_pass != p) continue;
        if (n->released)
            return errorf("tape: backward: the graph through \"%s\" was already differentiated and its buffers "
                          "released; pass retain_graph = true to the first backward to run it again",
                          tape_op_name(n->op));
        for (int i = 0; i < n->n_in; ++i)
            if (n->in[i]->requires_grad) n->in[i]->reach_pass = p;
    }
    // 2. Gradient buffers for the intermediate Vars on the way, zeroed (leaves
    //    keep accumulating). All carving happens here, before any gradient.
    for (TapeNode* n = last; n; n = n->prev) {
        VarData* v = n->out;
        if (v->reach_pass != p) continue;
        if (!v->grad.data) {
            Status st;
            float* g = arena.alloc_floats(v->value.numel(), &st, "gradient");
            if (!g) return errorf("tape: backward: gradient of \"%s\": %s", v->name, st.message());
            v->grad = tensor_view(g, v->value.shape);
        }
        std::memset(v->grad.data, 0, v->value.numel() * sizeof(float));
    }
    // 3. The root's gradient, then every node newest first.
    const size_t rn = r->value.numel();
    for (size_t i = 0; i < rn; ++i) r->grad.data[i] += upstream ? upstream[i] : 1.0f;
    for (TapeNode* n = last; n; n = n->prev) {
        if (n->out->reach_pass != p) continue;
        Status st = node_backward(*this, *n);
        if (!st) return st;
        if (!retain_graph) n->released = true;
    }
    return Status{};
}

// --- Gradient check for tape functions ------------------------------------------------

// sum(f(inputs) * r) in double, recording nothing.
static Status tape_probe(Tape& t, TapeFn f, const Var* inputs, int n, void* user, const float* r, size_t ny,
                         double* out) {
    const TapeMark m = t.mark();
    const uint64_t graph = t.graph;
    Var y;
    {
        NoGrad ng(t);
        y = f(t, inputs, n, user);
    }
    Status st = t.error;
    if (st.ok() && !y.p) st = errorf("gradient_check: the function returned an empty Var");
    if (st.ok() && y.numel() != ny)
        st = errorf("gradient_check: the function's output changed size (%zu, then %zu)", ny, y.numel());
    double s = 0.0;
    if (st.ok())
        for (size_t i = 0; i < ny; ++i) s += (double)y.p->value.data[i] * r[i];
    t.arena.reset(m.arena_used);  // as reset(m), keeping the graph id and error state
    t.last = m.last;
    t.nodes = m.nodes;
    t.pack = m.pack;
    t.pack_floats = m.pack_floats;
    t.graph = graph;
    *out = s;
    return st;
}

Status gradient_check(Tape& t, TapeFn f, const Var* inputs, int n, void* user, GradCheckResult* out, float h,
                      double tol, int max_checks) {
    if (!f || !out || n < 0 || (n > 0 && !inputs)) return errorf("gradient_check: bad arguments");
    if (!(h > 0.0f)) return errorf("gradient_check: step h must be > 0 (got %g)", (double)h);
    if (!t.error.ok()) return t.error;
    for (int i = 0; i < n; ++i)
        if (!inputs[i].p) return errorf("gradient_check: input %d is empty", i);
    const TapeMark m = t.mark();
    Status st;
    // The inputs' gradients as they were, put back at the end.
    float* saved[kMaxCustomInputs * 4] = {nullptr};
    if (n > kMaxCustomInputs * 4) return errorf("gradient_check: %d inputs (at most %d)", n, kMaxCustomInputs * 4);
    for (int i = 0; i < n && st; ++i)
        if (inputs[i].p->requires_grad) {
            saved[i] = t.arena.alloc_floats(inputs[i].numel(), &st, "gradient_check saved gradient");
            if (saved[i]) {
                std::memcpy(saved[i], inputs[i].p->grad.data, inputs[i].numel() * sizeof(float));
                inputs[i].zero_grad();
            }
        }
    Var y = st ? f(t, inputs, n, user) : Var{};
    if (st && !t.error.ok()) st = t.error;
    if (st && !y.p) st = errorf("gradient_check: the function returned an empty Var");
    float* r = st ? t.arena.alloc_floats(y.numel(), &st, "gradient_check probe") : nullptr;
    const size_t ny = y.p ? y.numel() : 0;
    if (st) {
        Rng rng(0x5eed);
        for (size_t i = 0; i < ny; ++i) r[i] = rng.uniform(-1.0f, 1.0f);
        Var rv = t.constant(y.shape(), r, "probe");
        Var L = sum(mul(y, rv));
        st = t.backward(L, static_cast<const float*>(nullptr), true);
    }
    GradCheckResult res;
    for (int i = 0; i < n && st; ++i) {
        VarData* v = inputs[i].p;
        if (!v->requires_grad) continue;
        const size_t len = v->value.numel();
        const size_t stride = max_checks > 0 && len > (size_t)max_checks ? len / (size_t)max_checks : 1;
        for (size_t e = 0; e < len && st; e += stride) {
            const float old = v->value.data[e];
            double lp = 0, lm = 0;
            v->value.data[e] = old + h;
            st = tape_probe(t, f, inputs, n, user, r, ny, &lp);
            v->value.data[e] = old - h;
            if (st) st = tape_probe(t, f, inputs, n, user, r, ny, &lm);
            v->value.data[e] = old;
            const double numeric = (lp - lm) / (2.0 * (double)h), a = v->grad.data[e];
            const double abs_err = std::fabs(a - numeric);
            double scale = std::fabs(a) > std::fabs(numeric) ? std::fabs(a) : std::fabs(numeric);
            if (scale < 1.0) scale = 1.0;
            const double rel = abs_err / scale;
            if (abs_err > res.max_abs_err) res.max_abs_err = abs_err;
            if (rel > res.max_rel_err) res.max_rel_err = rel, res.worst = v->name;
            ++res.checked;
        }
    }
    if (st) {
        res.passed = res.max_rel_err <= tol;
        *out = res;
    }
    for (int i = 0; i < n; ++i)
        if (saved[i]) std::memcpy(inputs[i].p->grad.data, saved[i], inputs[i].numel() * sizeof(float));
    const Status keep = t.error;
    t.reset(m);
    if (!keep.ok() && st.ok()) st = keep;
    return st;
}
}  // namespace nn
