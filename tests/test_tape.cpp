// tests/test_tape.cpp — the dynamic autograd tape (issue 6): every operation
// against a double-precision reference, the tape against the layer path,
// errors, custom operations, NoGrad and frozen leaves, mark/reset.
//
// How the operation tests work (the same method as test_layers.cpp): each
// case holds the operation written again in double, over plain arrays with
// NumPy's broadcasting and reductions (the DT helpers below). The tape runs
// the operation on float inputs; its value is compared with the reference on
// the same inputs, then the tape differentiates L = sum(op(inputs) * r) for a
// fixed random r and each input's gradient is compared with central
// differences of that L on the double reference (h = 1e-6: truncation ~h^2,
// rounding ~1e-16 / h, both far below the tolerance). What is left is float
// versus double over a handful of terms: values within 1e-5 and gradients
// within 1e-4 of the largest reference magnitude in the tensor, while a wrong
// formula (a lost factor, a gradient summed to the wrong axis, a missing
// term) is off by O(1). Inputs are kept >= 0.05 away from kinks (abs, clamp,
// relu, MAE, Huber), where the derivative is not defined.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn.hpp"
#include "tests/layer_check.hpp"

namespace {

using layer_check::contains;
using layer_check::DVec;
using layer_check::FVec;
using layer_check::uniform_vec;
using nn::Act;
using nn::Var;

constexpr double kFd = 1e-6;        // central-difference step on the double reference
constexpr double kValTol = 1e-5;    // float forward vs double, relative to the tensor's max |ref|
constexpr double kGradTol = 1e-4;   // float gradient vs double central differences, likewise
constexpr double kTwinTol = 1e-6;   // tape vs layer path: the same kernels on the same floats
constexpr size_t kTapeBytes = 4u << 20;
// One built layer: its parameters and scratch, GEMM packing for every thread
// included (about 1.5 MB a thread with AVX-512).
inline size_t layer_bytes() { return ((size_t)nn::num_threads() * 2 + 2) << 20; }

// ===========================================================================
// Double-precision reference tensors (row-major, NumPy semantics)
// ===========================================================================
using Dims = std::vector<int>;

size_t count(const Dims& d) {
    size_t n = 1;
    for (int x : d) n *= (size_t)x;
    return n;
}

struct DT {
    Dims dims;
    DVec v;
};
using Ins = std::vector<DT>;

DT zeros(const Dims& d) { return DT{d, DVec(count(d), 0.0)}; }
Dims dims_of(const nn::Shape& s) { return Dims(s.dim, s.dim + s.ndim); }
nn::Shape shape_of(const Dims& d) {
    nn::Shape s;
    s.ndim = (int)d.size();
    for (size_t i = 0; i < d.size(); ++i) s.dim[i] = d[i];
    return s;
}
std::string dims_str(const Dims& d) {
    std::string s = "(";
    for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + ")";
}
int axis_of(int axis, size_t ndim) { return axis < 0 ? axis + (int)ndim : axis; }

// Flat index <-> multi-index.
void unravel(size_t flat, const Dims& d, int* idx) {
    for (int k = (int)d.size() - 1; k >= 0; --k) {
        idx[k] = (int)(flat % (size_t)d[k]);
        flat /= (size_t)d[k];
    }
}
size_t ravel(const int* idx, const Dims& d) {
    size_t f = 0;
    for (size_t k = 0; k < d.size(); ++k) f = f * (size_t)d[k] + (size_t)idx[k];
    return f;
}

// A tensor as (outer, n, inner) around one axis: element (o, j, i) is at
// (o * n + j) * inner + i.
struct Around {
    size_t outer = 1, n = 1, inner = 1;
};
Around around(const Dims& d, int axis) {
    Around a;
    for (int k = 0; k < (int)d.size(); ++k) {
        if (k < axis) a.outer *= (size_t)d[k];
        else if (k == axis) a.n = (size_t)d[k];
        else a.inner *= (size_t)d[k];
    }
    return a;
}

DT map(const DT& a, const std::function<double(double)>& f) {
    DT y = a;
    for (double& e : y.v) e = f(e);
    return y;
}

// Elementwise with NumPy broadcasting: shapes aligned on the right, a
// dimension of 1 stretches.
DT zip(const DT& a, const DT& b, const std::function<double(double, double)>& f) {
    const size_t nd = std::max(a.dims.size(), b.dims.size());
    Dims da(nd, 1), db(nd, 1), dy(nd, 1);
    for (size_t k = 0; k < a.dims.size(); ++k) da[nd - a.dims.size() + k] = a.dims[k];
    for (size_t k = 0; k < b.dims.size(); ++k) db[nd - b.dims.size() + k] = b.dims[k];
    for (size_t k = 0; k < nd; ++k) {
        if (da[k] != db[k] && da[k] != 1 && db[k] != 1) {
            ADD_FAILURE() << "reference: cannot broadcast " << dims_str(a.dims) << " with " << dims_str(b.dims);
            return DT{};
        }
        dy[k] = std::max(da[k], db[k]);
    }
    DT y = zeros(dy);
    int idx[nn::kMaxDims + 4], ia[nn::kMaxDims + 4], ib[nn::kMaxDims + 4];
    for (size_t i = 0; i < y.v.size(); ++i) {
        unravel(i, dy, idx);
        for (size_t k = 0; k < nd; ++k) {
            ia[k] = da[k] == 1 ? 0 : idx[k];
            ib[k] = db[k] == 1 ? 0 : idx[k];
        }
        y.v[i] = f(a.v[ravel(ia, da)], b.v[ravel(ib, db)]);
    }
    return y;
}
DT operator+(const DT& a, const DT& b) { return zip(a, b, [](double x, double y) { return x + y; }); }
DT operator-(const DT& a, const DT& b) { return zip(a, b, [](double x, double y) { return x - y; }); }
DT operator*(const DT& a, const DT& b) { return zip(a, b, [](double x, double y) { return x * y; }); }
DT operator/(const DT& a, const DT& b) { return zip(a, b, [](double x, double y) { return x / y; }); }
DT operator+(const DT& a, double s) { return map(a, [s](double x) { return x + s; }); }
DT operator*(const DT& a, double s) { return map(a, [s](double x) { return x * s; }); }

// (M, K) x (K, N); a 1-D left operand is a row, a 1-D right one a column,
// and its dimension is dropped from the result.
DT matmul_d(const DT& a, const DT& b) {
    const bool av = a.dims.size() == 1, bv = b.dims.size() == 1;
    const int M = av ? 1 : a.dims[0], K = av ? a.dims[0] : a.dims[1], N = bv ? 1 : b.dims[1];
    DT y = zeros(av && !bv ? Dims{N} : !av && bv ? Dims{M} : Dims{M, N});
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += a.v[(size_t)i * K + k] * b.v[(size_t)k * N + j];
            y.v[(size_t)i * N + j] = s;
        }
    return y;
}

DT transpose_d(const DT& a, int d0, int d1) {
    d0 = axis_of(d0, a.dims.size());
    d1 = axis_of(d1, a.dims.size());
    Dims dy = a.dims;
    std::swap(dy[(size_t)d0], dy[(size_t)d1]);
    DT y = zeros(dy);
    int idx[nn::kMaxDims];
    for (size_t f = 0; f < a.v.size(); ++f) {
        unravel(f, a.dims, idx);
        std::swap(idx[d0], idx[d1]);
        y.v[ravel(idx, dy)] = a.v[f];
    }
    return y;
}

DT reshape_d(const DT& a, Dims d) {
    size_t known = 1;
    for (int x : d)
        if (x != -1) known *= (size_t)x;
    for (int& x : d)
        if (x == -1) x = (int)(a.v.size() / known);
    return DT{d, a.v};
}

DT slice_d(const DT& a, int axis, int begin, int end) {
    axis = axis_of(axis, a.dims.size());
    const Around s = around(a.dims, axis);
    Dims dy = a.dims;
    dy[(size_t)axis] = end - begin;
    DT y = zeros(dy);
    const size_t m = (size_t)(end - begin);
    for (size_t o = 0; o < s.outer; ++o)
        for (size_t j = 0; j < m; ++j)
            for (size_t i = 0; i < s.inner; ++i)
                y.v[(o * m + j) * s.inner + i] = a.v[(o * s.n + (size_t)begin + j) * s.inner + i];
    return y;
}

DT concat_d(const Ins& parts, int axis) {
    axis = axis_of(axis, parts[0].dims.size());
    Dims dy = parts[0].dims;
    dy[(size_t)axis] = 0;
    for (const DT& p : parts) dy[(size_t)axis] += p.dims[(size_t)axis];
    DT y = zeros(dy);
    const Around t = around(dy, axis);
    size_t at = 0;  // where along the axis this part starts
    for (const DT& p : parts) {
        const Around s = around(p.dims, axis);
        for (size_t o = 0; o < s.outer; ++o)
            for (size_t j = 0; j < s.n; ++j)
                for (size_t i = 0; i < s.inner; ++i)
                    y.v[(o * t.n + at + j) * t.inner + i] = p.v[(o * s.n + j) * s.inner + i];
        at += s.n;
    }
    return y;
}

// sum or mean over `axes` (all when empty); reducing every axis without
// keepdims gives (1,).
DT reduce_d(const DT& a, Dims axes, bool keepdims, bool mean) {
    const size_t nd = a.dims.size();
    std::vector<bool> red(nd, axes.empty());
    for (int ax : axes) red[(size_t)axis_of(ax, nd)] = true;
    Dims kd = a.dims;
    double reduced = 1;
    for (size_t k = 0; k < nd; ++k)
        if (red[k]) {
            reduced *= kd[k];
            kd[k] = 1;
        }
    DT y = zeros(kd);
    int idx[nn::kMaxDims];
    for (size_t f = 0; f < a.v.size(); ++f) {
        unravel(f, a.dims, idx);
        for (size_t k = 0; k < nd; ++k)
            if (red[k]) idx[k] = 0;
        y.v[ravel(idx, kd)] += a.v[f];
    }
    if (mean)
        for (double& e : y.v) e /= reduced;
    if (!keepdims) {
        Dims d;
        for (size_t k = 0; k < nd; ++k)
            if (!red[k]) d.push_back(kd[k]);
        y.dims = d.empty() ? Dims{1} : d;
    }
    return y;
}
DT sum_d(const DT& a, Dims axes = {}, bool keepdims = false) { return reduce_d(a, axes, keepdims, false); }
DT mean_d(const DT& a, Dims axes = {}, bool keepdims = false) { return reduce_d(a, axes, keepdims, true); }

DT softmax_d(const DT& a, int axis, bool log) {
    axis = axis_of(axis, a.dims.size());
    const Around s = around(a.dims, axis);
    DT y = a;
    for (size_t o = 0; o < s.outer; ++o)
        for (size_t i = 0; i < s.inner; ++i) {
            auto at = [&](size_t j) { return (o * s.n + j) * s.inner + i; };
            double m = a.v[at(0)];
            for (size_t j = 1; j < s.n; ++j) m = std::max(m, a.v[at(j)]);
            double z = 0;
            for (size_t j = 0; j < s.n; ++j) z += std::exp(a.v[at(j)] - m);
            for (size_t j = 0; j < s.n; ++j)
                y.v[at(j)] = log ? a.v[at(j)] - m - std::log(z) : std::exp(a.v[at(j)] - m) / z;
        }
    return y;
}

double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

DT act_d(const DT& z, Act act) {
    switch (act) {
        case Act::ReLU: return map(z, [](double x) { return x > 0 ? x : 0.0; });
        case Act::Sigmoid: return map(z, sigmoid_d);
        case Act::Tanh: return map(z, [](double x) { return std::tanh(x); });
        default: return z;
    }
}

// x W^T + b: x (B, in), W (out, in), b (out) or none.
DT dense_pre_d(const DT& x, const DT& W, const DT* b) {
    DT z = matmul_d(x, transpose_d(W, 0, 1));
    return b ? z + *b : z;
}

DT scalar(double v) { return DT{{1}, {v}}; }

// The Loss kinds' definitions: a mean over all elements, or over rows for
// the cross-entropies. p and t are (B, C).
DT mse_d(const DT& p, const DT& t) { return mean_d(map(p - t, [](double d) { return d * d; })); }
DT mae_d(const DT& p, const DT& t) { return mean_d(map(p - t, [](double d) { return std::fabs(d); })); }
DT huber_d(const DT& p, const DT& t, double delta) {
    return mean_d(map(p - t, [delta](double d) {
        const double a = std::fabs(d);
        return a <= delta ? 0.5 * d * d : delta * (a - 0.5 * delta);
    }));
}
DT bce_d(const DT& p, const DT& t) {
    return mean_d(zip(p, t, [](double pi, double ti) { return -(ti * std::log(pi) + (1 - ti) * std::log(1 - pi)); }));
}
DT bce_logits_d(const DT& z, const DT& t) {
    return mean_d(zip(z, t, [](double zi, double ti) {
        return -(ti * std::log(sigmoid_d(zi)) + (1 - ti) * std::log(1 - sigmoid_d(zi)));
    }));
}
DT softmax_xent_d(const DT& z, const DT& onehot) {
    const DT prod = softmax_d(z, -1, true) * onehot;
    return scalar(-sum_d(prod).v[0] / z.dims[0]);
}
DT onehot_d(const int32_t* labels, int rows, int cols) {
    DT t = zeros({rows, cols});
    for (int r = 0; r < rows; ++r) t.v[(size_t)r * cols + labels[r]] = 1.0;
    return t;
}

// ===========================================================================
// Comparing float results with references
// ===========================================================================

// Every |got - ref| within tol times the largest |ref| of the tensor (1e-6
// when the reference is all zeros); NaN fails.
::testing::AssertionResult close_to(const float* got, const DVec& ref, double tol) {
    if (!got) return ::testing::AssertionFailure() << "no data (null pointer)";
    double scale = 1e-6;
    for (double r : ref) scale = std::max(scale, std::fabs(r));
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double e = std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - ref[i]) / scale;
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    if (worst <= tol) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "worst at [" << at << "] of " << ref.size() << ": got " << got[at]
                                         << ", reference " << ref[at] << "; error " << worst
                                         << " of the tensor's max |ref| " << scale << " > tol " << tol;
}
::testing::AssertionResult close_to(const float* got, const float* want, size_t n, double tol) {
    return close_to(got, DVec(want, want + n), tol);
}

// ===========================================================================
// The operation check
// ===========================================================================
using Gen = std::function<float(nn::Rng&)>;
Gen U(float lo, float hi) {
    return [lo, hi](nn::Rng& r) { return r.uniform(lo, hi); };
}
// lo <= |v| < hi with a random sign: away from 0.
Gen Away(float lo, float hi) {
    return [lo, hi](nn::Rng& r) {
        const float m = r.uniform(lo, hi);
        return r.uniform() < 0.5f ? -m : m;
    };
}

struct In {
    Dims dims;
    Gen gen = U(-1.0f, 1.0f);
    bool grad = true;     // a param() leaf; false: a constant()
    bool frozen = false;  // with grad false: a param() frozen by set_requires_grad(false)
};
In cst(Dims dims, Gen gen = U(-1.0f, 1.0f)) { return In{std::move(dims), std::move(gen), false}; }
In frozen(Dims dims, Gen gen = U(-1.0f, 1.0f)) { return In{std::move(dims), std::move(gen), false, true}; }

using Vars = std::vector<Var>;
struct OpCase {
    std::string what;
    std::vector<In> in;
    std::function<Var(const Vars&)> tape;
    std::function<DT(const Ins&)> ref;
    // Redraw the inputs until this holds (keeps them away from kinks).
    std::function<bool(const Ins&)> accept = nullptr;
};

// The value of op(inputs) and the gradient of sum(op(inputs) * r) with
// respect to every param() input, against the double reference.
void check_op(const OpCase& c, uint64_t seed) {
    SCOPED_TRACE(c.what);
    nn::Rng rng(seed);
    std::vector<FVec> xs;
    Ins xd;
    for (int attempt = 0;; ++attempt) {
        ASSERT_LT(attempt, 200) << "no inputs found that the case accepts";
        xs.clear();
        xd.clear();
        for (const In& in : c.in) {
            FVec v(count(in.dims));
            for (float& e : v) e = in.gen(rng);
            xd.push_back(DT{in.dims, DVec(v.begin(), v.end())});
            xs.push_back(std::move(v));
        }
        if (!c.accept || c.accept(xd)) break;
    }
    nn::Tape tape;
    nn::Status st = tape.reserve(kTapeBytes);
    ASSERT_TRUE(st.ok()) << st.message();
    Vars vars;
    for (size_t k = 0; k < c.in.size(); ++k) {
        const nn::Shape s = shape_of(c.in[k].dims);
        vars.push_back(c.in[k].grad || c.in[k].frozen ? tape.param(s, xs[k].data()) : tape.constant(s, xs[k].data()));
        if (c.in[k].frozen) {
            vars[k].zero_grad();
            vars[k].set_requires_grad(false);
        }
    }
    const Var y = c.tape(vars);
    ASSERT_TRUE(y.ok()) << tape.error.message();
    const DT yr = c.ref(xd);
    ASSERT_EQ(dims_str(dims_of(y.shape())), dims_str(yr.dims)) << "output shape";
    EXPECT_TRUE(close_to(y.value().data, yr.v, kValTol)) << "forward value";

    const FVec r = uniform_vec(yr.v.size(), rng, -1.0f, 1.0f);
    const Var L = nn::sum(y * tape.constant(y.shape(), r.data()));
    ASSERT_TRUE(L.ok()) << tape.error.message();
    ASSERT_EQ(L.numel(), 1u);
    st = tape.backward(L);
    ASSERT_TRUE(st.ok()) << st.message();

    auto probe = [&](const Ins& x) {
        const DT yv = c.ref(x);
        double s = 0;
        for (size_t i = 0; i < yv.v.size(); ++i) s += yv.v[i] * r[i];
        return s;
    };
    for (size_t k = 0; k < c.in.size(); ++k) {
        if (!c.in[k].grad) {
            EXPECT_FALSE(vars[k].requires_grad()) << "input " << k << " wants no gradient";
            const nn::Tensor& g = vars[k].grad();
            for (size_t i = 0; g.data && i < g.numel(); ++i)
                ASSERT_EQ(g[i], 0.0f) << "input " << k << " wants no gradient but got one at " << i;
            continue;
        }
        DVec num(xd[k].v.size());
        for (size_t i = 0; i < num.size(); ++i) {
            const double old = xd[k].v[i];
            xd[k].v[i] = old + kFd;
            const double lp = probe(xd);
            xd[k].v[i] = old - kFd;
            const double lm = probe(xd);
            xd[k].v[i] = old;
            num[i] = (lp - lm) / (2 * kFd);
        }
        EXPECT_TRUE(close_to(vars[k].grad().data, num, kGradTol)) << "gradient of input " << k << " "
                                                                  << dims_str(c.in[k].dims);
    }
}

void check_ops(const std::vector<OpCase>& cases, uint64_t seed) {
    for (const OpCase& c : cases) check_op(c, seed++);
}

// ===========================================================================
// 1. Every operation against the double reference
// ===========================================================================

TEST(TapeGrad, BroadcastArithmetic) {
    const Gen den = Away(0.5f, 2.0f);  // divisors away from 0
    check_ops(
        {
            {"add (3,1,4) + (2,1) -> (3,2,4)", {In{{3, 1, 4}}, In{{2, 1}}},
             [](const Vars& v) { return v[0] + v[1]; }, [](const Ins& x) { return x[0] + x[1]; }},
            {"add (2,1) + (3,1,4): the other direction", {In{{2, 1}}, In{{3, 1, 4}}},
             [](const Vars& v) { return nn::add(v[0], v[1]); }, [](const Ins& x) { return x[0] + x[1]; }},
            {"add (2,3) + (2,3): same shape", {In{{2, 3}}, In{{2, 3}}},
             [](const Vars& v) { return v[0] + v[1]; }, [](const Ins& x) { return x[0] + x[1]; }},
            {"add (2,3,1,5) + (4,1) -> (2,3,4,5)", {In{{2, 3, 1, 5}}, In{{4, 1}}},
             [](const Vars& v) { return v[0] + v[1]; }, [](const Ins& x) { return x[0] + x[1]; }},
            {"sub (3,4) - (4,)", {In{{3, 4}}, In{{4}}}, [](const Vars& v) { return v[0] - v[1]; },
             [](const Ins& x) { return x[0] - x[1]; }},
            {"sub (4,) - (3,4)", {In{{4}}, In{{3, 4}}}, [](const Vars& v) { return nn::sub(v[0], v[1]); },
             [](const Ins& x) { return x[0] - x[1]; }},
            {"sub (2,3,4) - (2,1,4)", {In{{2, 3, 4}}, In{{2, 1, 4}}}, [](const Vars& v) { return v[0] - v[1]; },
             [](const Ins& x) { return x[0] - x[1]; }},
            {"mul (4,) * (3,4)", {In{{4}}, In{{3, 4}}}, [](const Vars& v) { return v[0] * v[1]; },
             [](const Ins& x) { return x[0] * x[1]; }},
            {"mul (3,4) * (4,)", {In{{3, 4}}, In{{4}}}, [](const Vars& v) { return nn::mul(v[0], v[1]); },
             [](const Ins& x) { return x[0] * x[1]; }},
            {"mul (2,3,4) * (1,): scalar-shaped", {In{{2, 3, 4}}, In{{1}}}, [](const Vars& v) { return v[0] * v[1]; },
             [](const Ins& x) { return x[0] * x[1]; }},
            {"mul (1,) * (2,3,4)", {In{{1}}, In{{2, 3, 4}}}, [](const Vars& v) { return v[0] * v[1]; },
             [](const Ins& x) { return x[0] * x[1]; }},
            {"mul (3,1) * (1,4) -> (3,4): both stretch", {In{{3, 1}}, In{{1, 4}}},
             [](const Vars& v) { return v[0] * v[1]; }, [](const Ins& x) { return x[0] * x[1]; }},
            {"div (3,4) / (3,1)", {In{{3, 4}}, In{{3, 1}, den}}, [](const Vars& v) { return v[0] / v[1]; },
             [](const Ins& x) { return x[0] / x[1]; }},
            {"div (3,1) / (3,4)", {In{{3, 1}}, In{{3, 4}, den}}, [](const Vars& v) { return nn::div(v[0], v[1]); },
             [](const Ins& x) { return x[0] / x[1]; }},
            {"div (2,3) / (1,)", {In{{2, 3}}, In{{1}, den}}, [](const Vars& v) { return v[0] / v[1]; },
             [](const Ins& x) { return x[0] / x[1]; }},
            {"div (2,3) / (2,3)", {In{{2, 3}}, In{{2, 3}, den}}, [](const Vars& v) { return v[0] / v[1]; },
             [](const Ins& x) { return x[0] / x[1]; }},
            {"mul with a constant operand (3,4) * const (4,)", {In{{3, 4}}, cst({4})},
             [](const Vars& v) { return v[0] * v[1]; }, [](const Ins& x) { return x[0] * x[1]; }},
            {"div by a frozen param (3,4) / frozen (3,1)", {In{{3, 4}}, frozen({3, 1}, den)},
             [](const Vars& v) { return v[0] / v[1]; }, [](const Ins& x) { return x[0] / x[1]; }},
        },
        100);
}

TEST(TapeGrad, ScalarArithmeticAndNeg) {
    check_ops(
        {
            {"add(a, 2.5)", {In{{3, 4}}}, [](const Vars& v) { return nn::add(v[0], 2.5f); },
             [](const Ins& x) { return x[0] + 2.5; }},
            {"mul(a, -1.75)", {In{{3, 4}}}, [](const Vars& v) { return nn::mul(v[0], -1.75f); },
             [](const Ins& x) { return x[0] * -1.75; }},
            {"neg(a)", {In{{2, 3, 2}}}, [](const Vars& v) { return nn::neg(v[0]); },
             [](const Ins& x) { return x[0] * -1.0; }},
            {"operators: 3 - a, a - 0.5, a / 4, 2 * a + 1, -a", {In{{5}}},
             [](const Vars& v) { return (3.0f - v[0]) * (v[0] - 0.5f) + v[0] / 4.0f + (2.0f * v[0] + 1.0f) * (-v[0]); },
             [](const Ins& x) {
                 const DT& a = x[0];
                 return (a * -1.0 + 3.0) * (a + -0.5) + a * 0.25 + (a * 2.0 + 1.0) * (a * -1.0);
             }},
        },
        200);
}

TEST(TapeGrad, Matmul) {
    check_ops(
        {
            {"(3,4) x (4,5)", {In{{3, 4}}, In{{4, 5}}}, [](const Vars& v) { return nn::matmul(v[0], v[1]); },
             [](const Ins& x) { return matmul_d(x[0], x[1]); }},
            {"(7,13) x (13,10): odd sizes", {In{{7, 13}}, In{{13, 10}}},
             [](const Vars& v) { return nn::matmul(v[0], v[1]); }, [](const Ins& x) { return matmul_d(x[0], x[1]); }},
            {"(4,) x (4,5) -> (5,)", {In{{4}}, In{{4, 5}}}, [](const Vars& v) { return nn::matmul(v[0], v[1]); },
             [](const Ins& x) { return matmul_d(x[0], x[1]); }},
            {"(3,4) x (4,) -> (3,)", {In{{3, 4}}, In{{4}}}, [](const Vars& v) { return nn::matmul(v[0], v[1]); },
             [](const Ins& x) { return matmul_d(x[0], x[1]); }},
            {"(1,6) x (6,2)", {In{{1, 6}}, In{{6, 2}}}, [](const Vars& v) { return nn::matmul(v[0], v[1]); },
             [](const Ins& x) { return matmul_d(x[0], x[1]); }},
            {"constant (3,4) x param (4,2)", {cst({3, 4}), In{{4, 2}}},
             [](const Vars& v) { return nn::matmul(v[0], v[1]); }, [](const Ins& x) { return matmul_d(x[0], x[1]); }},
        },
        300);
}

TEST(TapeGrad, TransposeAndReshape) {
    check_ops(
        {
            {"transpose (3,5)", {In{{3, 5}}}, [](const Vars& v) { return nn::transpose(v[0]); },
             [](const Ins& x) { return transpose_d(x[0], 0, 1); }},
            {"transpose (2,3,4) axes 0, 2", {In{{2, 3, 4}}}, [](const Vars& v) { return nn::transpose(v[0], 0, 2); },
             [](const Ins& x) { return transpose_d(x[0], 0, 2); }},
            {"transpose (2,3,4) default (-2, -1)", {In{{2, 3, 4}}}, [](const Vars& v) { return nn::transpose(v[0]); },
             [](const Ins& x) { return transpose_d(x[0], 1, 2); }},
            {"transpose (2,3,4,5) axes 1, 3", {In{{2, 3, 4, 5}}},
             [](const Vars& v) { return nn::transpose(v[0], 1, 3); },
             [](const Ins& x) { return transpose_d(x[0], 1, 3); }},
            {"transpose (2,3,4,5) axes -4, -2", {In{{2, 3, 4, 5}}},
             [](const Vars& v) { return nn::transpose(v[0], -4, -2); },
             [](const Ins& x) { return transpose_d(x[0], 0, 2); }},
            {"reshape (2,3,4) -> (4,-1)", {In{{2, 3, 4}}}, [](const Vars& v) { return nn::reshape(v[0], {4, -1}); },
             [](const Ins& x) { return reshape_d(x[0], {4, 6}); }},
            {"reshape (2,3,4) -> (24,), then * (24,)", {In{{2, 3, 4}}, In{{24}}},
             [](const Vars& v) { return nn::reshape(v[0], {24}) * v[1]; },
             [](const Ins& x) { return reshape_d(x[0], {24}) * x[1]; }},
            {"reshape (6,4) -> (2,-1,3,2) as a Shape", {In{{6, 4}}},
             [](const Vars& v) { return nn::reshape(v[0], nn::make_shape({2, 2, 3, 2})); },
             [](const Ins& x) { return reshape_d(x[0], {2, 2, 3, 2}); }},
            {"reshape of x and of x^2: both gradients add up in x", {In{{2, 3, 4}}},
             [](const Vars& v) {
                 const Var r = nn::reshape(v[0], {24});  // recorded first, so differentiated last
                 const Var q = nn::reshape(nn::square(v[0]), {-1});
                 return r * q;
             },
             [](const Ins& x) { return reshape_d(x[0], {24}) * reshape_d(x[0] * x[0], {24}); }},
            {"reshape (2,3,4) -> (-1, 2, 2), then transpose", {In{{2, 3, 4}}},
             [](const Vars& v) { return nn::transpose(nn::reshape(v[0], {-1, 2, 2}), 0, 1); },
             [](const Ins& x) { return transpose_d(reshape_d(x[0], {6, 2, 2}), 0, 1); }},
        },
        400);
}

TEST(TapeGrad, SliceAndConcat) {
    check_ops(
        {
            {"slice (3,4,5) axis 0 [1,3)", {In{{3, 4, 5}}}, [](const Vars& v) { return nn::slice(v[0], 0, 1, 3); },
             [](const Ins& x) { return slice_d(x[0], 0, 1, 3); }},
            {"slice (3,4,5) axis 1 [0,2)", {In{{3, 4, 5}}}, [](const Vars& v) { return nn::slice(v[0], 1, 0, 2); },
             [](const Ins& x) { return slice_d(x[0], 1, 0, 2); }},
            {"slice (3,4,5) axis 2 [2,5)", {In{{3, 4, 5}}}, [](const Vars& v) { return nn::slice(v[0], 2, 2, 5); },
             [](const Ins& x) { return slice_d(x[0], 2, 2, 5); }},
            {"slice (3,4,5) axis -1 [1,2)", {In{{3, 4, 5}}}, [](const Vars& v) { return nn::slice(v[0], -1, 1, 2); },
             [](const Ins& x) { return slice_d(x[0], 2, 1, 2); }},
            {"slice (2,3,2,4) axis 3 [1,3)", {In{{2, 3, 2, 4}}},
             [](const Vars& v) { return nn::slice(v[0], 3, 1, 3); },
             [](const Ins& x) { return slice_d(x[0], 3, 1, 3); }},
            {"two slices of the same Var", {In{{4, 3}}},
             [](const Vars& v) { return nn::slice(v[0], 0, 0, 2) * nn::slice(v[0], 0, 1, 3); },
             [](const Ins& x) { return slice_d(x[0], 0, 0, 2) * slice_d(x[0], 0, 1, 3); }},
            {"concat axis 0: (2,3,4) (1,3,4) (3,3,4)", {In{{2, 3, 4}}, In{{1, 3, 4}}, In{{3, 3, 4}}},
             [](const Vars& v) { return nn::concat({v[0], v[1], v[2]}, 0); },
             [](const Ins& x) { return concat_d(x, 0); }},
            {"concat axis 1: (2,1,4) (2,3,4) (2,2,4)", {In{{2, 1, 4}}, In{{2, 3, 4}}, In{{2, 2, 4}}},
             [](const Vars& v) { return nn::concat({v[0], v[1], v[2]}, 1); },
             [](const Ins& x) { return concat_d(x, 1); }},
            {"concat axis 2: (2,3,1) (2,3,2) (2,3,4)", {In{{2, 3, 1}}, In{{2, 3, 2}}, In{{2, 3, 4}}},
             [](const Vars& v) { return nn::concat({v[0], v[1], v[2]}, 2); },
             [](const Ins& x) { return concat_d(x, 2); }},
            {"concat axis -1 from an array, a constant in the middle", {In{{3, 2}}, cst({3, 1}), In{{3, 3}}},
             [](const Vars& v) { return nn::concat(v.data(), 3, -1); },
             [](const Ins& x) { return concat_d(x, 1); }},
        },
        500);
}

TEST(TapeGrad, SumAndMean) {
    const Dims d4{2, 3, 4, 5}, d3{3, 4, 5};
    check_ops(
        {
            {"sum (2,3,4,5) axis 0", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {0}); },
             [](const Ins& x) { return sum_d(x[0], {0}); }},
            {"sum (2,3,4,5) axis 1", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {1}); },
             [](const Ins& x) { return sum_d(x[0], {1}); }},
            {"sum (2,3,4,5) axis 2 keepdims", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {2}, true); },
             [](const Ins& x) { return sum_d(x[0], {2}, true); }},
            {"sum (2,3,4,5) axis 3", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {3}); },
             [](const Ins& x) { return sum_d(x[0], {3}); }},
            {"sum (2,3,4,5) axis -1 keepdims", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {-1}, true); },
             [](const Ins& x) { return sum_d(x[0], {3}, true); }},
            {"sum (2,3,4,5) axes 1, 3", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {1, 3}); },
             [](const Ins& x) { return sum_d(x[0], {1, 3}); }},
            {"sum (2,3,4,5) axes 0, 2 keepdims", {In{d4}}, [](const Vars& v) { return nn::sum(v[0], {0, 2}, true); },
             [](const Ins& x) { return sum_d(x[0], {0, 2}, true); }},
            {"sum (3,4,5) all", {In{d3}}, [](const Vars& v) { return nn::sum(v[0]); },
             [](const Ins& x) { return sum_d(x[0]); }},
            {"sum (3,4,5) all keepdims", {In{d3}}, [](const Vars& v) { return nn::sum(v[0], {}, true); },
             [](const Ins& x) { return sum_d(x[0], {}, true); }},
            {"mean (3,4,5) axis 0", {In{d3}}, [](const Vars& v) { return nn::mean(v[0], {0}); },
             [](const Ins& x) { return mean_d(x[0], {0}); }},
            {"mean (3,4,5) axis 1 keepdims", {In{d3}}, [](const Vars& v) { return nn::mean(v[0], {1}, true); },
             [](const Ins& x) { return mean_d(x[0], {1}, true); }},
            {"mean (3,4,5) axis 2", {In{d3}}, [](const Vars& v) { return nn::mean(v[0], {2}); },
             [](const Ins& x) { return mean_d(x[0], {2}); }},
            {"mean (2,3,4,5) axis 1 keepdims", {In{d4}}, [](const Vars& v) { return nn::mean(v[0], {1}, true); },
             [](const Ins& x) { return mean_d(x[0], {1}, true); }},
            {"mean (2,3,4,5) axes 2, 3 (spatial)", {In{d4}}, [](const Vars& v) { return nn::mean(v[0], {2, 3}); },
             [](const Ins& x) { return mean_d(x[0], {2, 3}); }},
            {"mean (3,4,5) axes 0, -1 keepdims", {In{d3}}, [](const Vars& v) { return nn::mean(v[0], {0, -1}, true); },
             [](const Ins& x) { return mean_d(x[0], {0, 2}, true); }},
            {"mean (2,3,4,5) all", {In{d4}}, [](const Vars& v) { return nn::mean(v[0]); },
             [](const Ins& x) { return mean_d(x[0]); }},
            {"mean (3,4,5) all keepdims", {In{d3}}, [](const Vars& v) { return nn::mean(v[0], {}, true); },
             [](const Ins& x) { return mean_d(x[0], {}, true); }},
        },
        600);
}

TEST(TapeGrad, ElementwiseMath) {
    const Dims d{3, 5};
    const Gen pos = U(0.2f, 3.0f);
    // clamp(-0.5, 0.5): values >= 0.05 from both bounds, on both sides.
    auto off_bounds = [](const Ins& x) {
        for (double e : x[0].v)
            if (std::fabs(e - 0.5) < 0.05 || std::fabs(e + 0.5) < 0.05) return false;
        return true;
    };
    check_ops(
        {
            {"exp", {In{d, U(-2.0f, 2.0f)}}, [](const Vars& v) { return nn::exp(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::exp(e); }); }},
            {"log (positive)", {In{d, pos}}, [](const Vars& v) { return nn::log(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::log(e); }); }},
            {"pow 3", {In{d, pos}}, [](const Vars& v) { return nn::pow(v[0], 3.0f); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::pow(e, 3.0); }); }},
            {"pow 0.5", {In{d, pos}}, [](const Vars& v) { return nn::pow(v[0], 0.5f); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::pow(e, 0.5); }); }},
            {"pow -1.5", {In{d, U(0.5f, 2.0f)}}, [](const Vars& v) { return nn::pow(v[0], -1.5f); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::pow(e, -1.5); }); }},
            {"square", {In{d, U(-2.0f, 2.0f)}}, [](const Vars& v) { return nn::square(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return e * e; }); }},
            {"sqrt (positive)", {In{d, pos}}, [](const Vars& v) { return nn::sqrt(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::sqrt(e); }); }},
            {"abs (|x| >= 0.05)", {In{d, Away(0.05f, 2.0f)}}, [](const Vars& v) { return nn::abs(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::fabs(e); }); }},
            {"clamp(-0.5, 0.5) (>= 0.05 from both bounds)", {In{d, U(-1.2f, 1.2f)}},
             [](const Vars& v) { return nn::clamp(v[0], -0.5f, 0.5f); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::min(0.5, std::max(-0.5, e)); }); },
             off_bounds},
        },
        700);
}

TEST(TapeGrad, Activations) {
    const Dims d{4, 6};
    check_ops(
        {
            {"relu (|x| >= 0.05)", {In{d, Away(0.05f, 2.0f)}}, [](const Vars& v) { return nn::relu(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return e > 0 ? e : 0.0; }); }},
            {"leaky_relu default slope", {In{d, Away(0.05f, 2.0f)}},
             [](const Vars& v) { return nn::leaky_relu(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return e > 0 ? e : 0.01 * e; }); }},
            {"leaky_relu slope 0.2", {In{d, Away(0.05f, 2.0f)}},
             [](const Vars& v) { return nn::leaky_relu(v[0], 0.2f); },
             [](const Ins& x) { return map(x[0], [](double e) { return e > 0 ? e : (double)0.2f * e; }); }},
            {"sigmoid", {In{d, U(-4.0f, 4.0f)}}, [](const Vars& v) { return nn::sigmoid(v[0]); },
             [](const Ins& x) { return map(x[0], sigmoid_d); }},
            {"tanh", {In{d, U(-3.0f, 3.0f)}}, [](const Vars& v) { return nn::tanh(v[0]); },
             [](const Ins& x) { return map(x[0], [](double e) { return std::tanh(e); }); }},
        },
        800);
}

TEST(TapeGrad, SoftmaxAndLogSoftmax) {
    const Dims d{3, 4, 5};
    const Gen g = U(-3.0f, 3.0f);
    check_ops(
        {
            {"softmax axis -1 (default)", {In{d, g}}, [](const Vars& v) { return nn::softmax(v[0]); },
             [](const Ins& x) { return softmax_d(x[0], -1, false); }},
            {"softmax axis 0", {In{d, g}}, [](const Vars& v) { return nn::softmax(v[0], 0); },
             [](const Ins& x) { return softmax_d(x[0], 0, false); }},
            {"softmax axis 1", {In{d, g}}, [](const Vars& v) { return nn::softmax(v[0], 1); },
             [](const Ins& x) { return softmax_d(x[0], 1, false); }},
            {"softmax (4,6) axis 1", {In{{4, 6}, g}}, [](const Vars& v) { return nn::softmax(v[0], 1); },
             [](const Ins& x) { return softmax_d(x[0], 1, false); }},
            {"log_softmax axis -1 (default)", {In{d, g}}, [](const Vars& v) { return nn::log_softmax(v[0]); },
             [](const Ins& x) { return softmax_d(x[0], -1, true); }},
            {"log_softmax axis 0", {In{d, g}}, [](const Vars& v) { return nn::log_softmax(v[0], 0); },
             [](const Ins& x) { return softmax_d(x[0], 0, true); }},
            {"log_softmax axis 1", {In{d, g}}, [](const Vars& v) { return nn::log_softmax(v[0], 1); },
             [](const Ins& x) { return softmax_d(x[0], 1, true); }},
            {"log_softmax large logits (4,3) + 60", {In{{4, 3}, U(57.0f, 63.0f)}},
             [](const Vars& v) { return nn::log_softmax(v[0], -1); },
             [](const Ins& x) { return softmax_d(x[0], -1, true); }},
        },
        900);
}

// Pre-activations >= 0.05 from 0, for the ReLU cases.
bool dense_away_from_kink(const Ins& x) {
    const DT z = dense_pre_d(x[0], x[1], x.size() > 2 ? &x[2] : nullptr);
    for (double e : z.v)
        if (std::fabs(e) < 0.05) return false;
    return true;
}

TEST(TapeGrad, Dense) {
    const Dims dx{4, 5}, dw{3, 5}, db{3};
    std::vector<OpCase> cases;
    const Act acts[] = {Act::None, Act::ReLU, Act::Sigmoid, Act::Tanh};
    for (Act a : acts) {
        cases.push_back({std::string("dense ") + nn::act_name(a), {In{dx}, In{dw}, In{db}},
                         [a](const Vars& v) { return nn::dense(v[0], v[1], v[2], a); },
                         [a](const Ins& x) { return act_d(dense_pre_d(x[0], x[1], &x[2]), a); },
                         a == Act::ReLU ? dense_away_from_kink : nullptr});
        cases.push_back({std::string("dense without bias (empty Var) ") + nn::act_name(a), {In{dx}, In{dw}},
                         [a](const Vars& v) { return nn::dense(v[0], v[1], Var(), a); },
                         [a](const Ins& x) { return act_d(dense_pre_d(x[0], x[1], nullptr), a); },
                         a == Act::ReLU ? dense_away_from_kink : nullptr});
    }
    cases.push_back({"dense, constant input, (9,17) x (11,17)^T", {cst({9, 17}), In{{11, 17}}, In{{11}}},
                     [](const Vars& v) { return nn::dense(v[0], v[1], v[2], Act::Tanh); },
                     [](const Ins& x) { return act_d(dense_pre_d(x[0], x[1], &x[2]), Act::Tanh); }});
    check_ops(cases, 1000);
}

TEST(TapeGrad, Losses) {
    const Dims d{4, 3};
    // Targets are constants: a loss takes no gradient for its target.
    auto mae_away = [](const Ins& x) {
        for (size_t i = 0; i < x[0].v.size(); ++i)
            if (std::fabs(x[0].v[i] - x[1].v[i]) < 0.05) return false;
        return true;
    };
    const double delta = 0.5;
    auto huber_away = [delta](const Ins& x) {  // |d| >= 0.05 from delta; both sides present
        int inner = 0, outer = 0;
        for (size_t i = 0; i < x[0].v.size(); ++i) {
            const double a = std::fabs(x[0].v[i] - x[1].v[i]);
            if (std::fabs(a - delta) < 0.05) return false;
            (a < delta ? inner : outer)++;
        }
        return inner > 0 && outer > 0;
    };
    static const float onehot[12] = {0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0};
    auto next = std::make_shared<int>(0);
    const Gen onehot_gen = [next](nn::Rng&) { return onehot[(*next)++ % 12]; };  // the rows above
    check_ops(
        {
            {"MSE", {In{d}, cst(d)}, [](const Vars& v) { return nn::loss(nn::MSE(), v[0], v[1]); },
             [](const Ins& x) { return mse_d(x[0], x[1]); }},
            {"MAE (|p - t| >= 0.05)", {In{d}, cst(d)}, [](const Vars& v) { return nn::loss(nn::MAE(), v[0], v[1]); },
             [](const Ins& x) { return mae_d(x[0], x[1]); }, mae_away},
            {"Huber(0.5), both sides of delta", {In{d, U(-1.5f, 1.5f)}, cst(d, U(-0.5f, 0.5f))},
             [](const Vars& v) { return nn::loss(nn::Huber(0.5f), v[0], v[1]); },
             [delta](const Ins& x) { return huber_d(x[0], x[1], delta); }, huber_away},
            {"BinaryCrossEntropy, soft targets", {In{d, U(0.05f, 0.95f)}, cst(d, U(0.0f, 1.0f))},
             [](const Vars& v) { return nn::loss(nn::BinaryCrossEntropy(), v[0], v[1]); },
             [](const Ins& x) { return bce_d(x[0], x[1]); }},
            {"BinaryCrossEntropyWithLogits", {In{d, U(-4.0f, 4.0f)}, cst(d, U(0.0f, 1.0f))},
             [](const Vars& v) { return nn::loss(nn::BinaryCrossEntropyWithLogits(), v[0], v[1]); },
             [](const Ins& x) { return bce_logits_d(x[0], x[1]); }},
            {"CrossEntropy, one-hot targets", {In{d, U(-3.0f, 3.0f)}, cst(d, onehot_gen)},
             [](const Vars& v) { return nn::loss(nn::CrossEntropy(), v[0], v[1]); },
             [](const Ins& x) { return softmax_xent_d(x[0], x[1]); }},
        },
        1100);
}

TEST(TapeGrad, CrossEntropyWithLabels) {
    static const int32_t labels[5] = {2, 0, 3, 3, 1};
    check_ops(
        {
            {"cross_entropy (5,4) logits, int labels", {In{{5, 4}, U(-3.0f, 3.0f)}},
             [](const Vars& v) { return nn::cross_entropy(v[0], labels); },
             [](const Ins& x) { return softmax_xent_d(x[0], onehot_d(labels, 5, 4)); }},
            {"cross_entropy of dense logits", {cst({5, 6}), In{{4, 6}}, In{{4}}},
             [](const Vars& v) { return nn::cross_entropy(nn::dense(v[0], v[1], v[2]), labels); },
             [](const Ins& x) { return softmax_xent_d(dense_pre_d(x[0], x[1], &x[2]), onehot_d(labels, 5, 4)); }},
        },
        1200);
}

// A composite: a small attention-like block through many operations at once.
TEST(TapeGrad, CompositeGraph) {
    check_ops(
        {
            {"softmax(q k^T / 2) v, then mean of squares", {In{{3, 4}}, In{{5, 4}}, In{{5, 2}}},
             [](const Vars& v) {
                 const Var s = nn::softmax(nn::matmul(v[0], nn::transpose(v[1])) / 2.0f, -1);
                 return nn::mean(nn::square(nn::matmul(s, v[2])), {0}, true);
             },
             [](const Ins& x) {
                 const DT s = softmax_d(matmul_d(x[0], transpose_d(x[1], 0, 1)) * 0.5, -1, false);
                 return mean_d(map(matmul_d(s, x[2]), [](double e) { return e * e; }), {0}, true);
             }},
        },
        1300);
}

// ===========================================================================
// apply(Layer&, x): the tape against the layer path on a twin layer
// ===========================================================================

// Builds `proto` twice with the same parameters; runs the layer path
// (forward, backward with upstream r) on one and the tape (apply, then
// backward of sum(y * r)) on the other, and compares outputs, input
// gradients, parameter gradients and buffers (running statistics).
void check_apply(const nn::Layer& proto, const nn::Shape& sample, int B, uint64_t seed, float lo = -1.0f,
                 float hi = 1.0f) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(2 * layer_bytes()).ok());
    nn::Layer T = proto, A = proto;  // T: layer path, A: tape
    nn::Status st = nn::build(T, sample, B, arena, seed);
    ASSERT_TRUE(st.ok()) << st.message();
    st = nn::build(A, sample, B, arena, seed);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::Rng rng(seed);
    for (int k = 0; k < A.n_params; ++k) {
        ASSERT_EQ(A.params[k].numel(), T.params[k].numel());
        if (!A.buffer[k])  // random parameters (BatchNorm's gamma and beta start at 1 and 0)
            for (size_t i = 0; i < A.params[k].numel(); ++i) A.params[k][i] = rng.uniform(-1.0f, 1.0f);
        std::memcpy(T.params[k].data, A.params[k].data, A.params[k].numel() * sizeof(float));
    }
    const size_t n_in = (size_t)B * sample.numel(), n_out = (size_t)B * T.out_shape.numel();
    const FVec x = uniform_vec(n_in, rng, lo, hi), r = uniform_vec(n_out, rng, -1.0f, 1.0f);

    // Layer path.
    FVec xl = x, y(n_out), dx(n_in), rl = r;
    const nn::Tensor xt = nn::tensor_view(xl.data(), nn::batched(sample, B));
    const nn::Tensor yt = nn::tensor_view(y.data(), nn::batched(T.out_shape, B));
    nn::zero_grad(T);
    st = nn::forward(T, yt, xt, nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    st = nn::backward(T, nn::tensor_view(dx.data(), nn::batched(sample, B)),
                      nn::tensor_view(rl.data(), nn::batched(T.out_shape, B)), xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();

    // Tape.
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    tape.mode = nn::Mode::Train;
    nn::zero_grad(A);
    const Var X = tape.param(nn::batched(sample, B), x.data(), "x");
    const Var Y = nn::apply(A, X);
    ASSERT_TRUE(Y.ok()) << tape.error.message();
    ASSERT_EQ(Y.shape(), nn::batched(T.out_shape, B));
    const Var L = nn::sum(Y * tape.constant(Y.shape(), r.data()));
    st = tape.backward(L);
    ASSERT_TRUE(st.ok()) << st.message();

    EXPECT_TRUE(close_to(Y.value().data, y.data(), n_out, kTwinTol)) << "output";
    EXPECT_TRUE(close_to(X.grad().data, dx.data(), n_in, kTwinTol)) << "input gradient";
    for (int k = 0; k < A.n_params; ++k) {
        SCOPED_TRACE(A.param_name[k]);
        const size_t n = A.params[k].numel();
        if (A.buffer[k]) {  // running statistics: both took one training step
            EXPECT_TRUE(close_to(A.params[k].data, T.params[k].data, n, kTwinTol)) << "buffer";
            continue;
        }
        EXPECT_TRUE(close_to(A.grads[k].data, T.grads[k].data, n, kTwinTol)) << "parameter gradient";
        bool any = false;
        for (size_t i = 0; i < n; ++i) any = any || T.grads[k][i] != 0.0f;
        EXPECT_TRUE(any) << "the layer path gave a nonzero gradient to compare with";
    }
}

TEST(TapeGrad, ApplyConv2DMatchesLayerPath) {
    check_apply(nn::Conv2D(2, 3, 3, 1, 1), nn::make_shape({2, 5, 5}), 2, 21);
    check_apply(nn::Conv2D(4, 4, 3, 2, 1, 1, 2), nn::make_shape({4, 6, 5}), 3, 22);  // stride 2, groups 2
}

TEST(TapeGrad, ApplyPoolingMatchesLayerPath) {
    check_apply(nn::MaxPool2D(2), nn::make_shape({3, 4, 6}), 2, 23);
    check_apply(nn::AvgPool2D(3, 2, 1), nn::make_shape({2, 5, 5}), 2, 24);
}

TEST(TapeGrad, ApplyBatchNorm2dTrainMatchesLayerPath) {
    check_apply(nn::BatchNorm2d(3), nn::make_shape({3, 4, 4}), 3, 25, -2.0f, 3.0f);
}

TEST(TapeGrad, ApplyDenseMatchesLayerPath) {
    check_apply(nn::Dense(5, 4, Act::Tanh), nn::make_shape({5}), 3, 26);
    check_apply(nn::Dense(7, 3, Act::None, /*use_bias=*/false), nn::make_shape({7}), 4, 27);
}

// The parameter Vars of an applied layer are its own buffers.
TEST(TapeGrad, ApplyLayerParamIsTheLayersGradient) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(layer_bytes()).ok());
    nn::Layer L = nn::Dense(3, 2);
    const nn::Status st = nn::build(L, nn::make_shape({3}), 4, arena, 5);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::zero_grad(L);
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var W = tape.layer_param(L, 0), b = tape.layer_param(L, 1);
    ASSERT_TRUE(W.ok() && b.ok()) << tape.error.message();
    EXPECT_EQ(W.value().data, L.params[0].data);
    EXPECT_EQ(W.shape(), nn::make_shape({2, 3}));
    EXPECT_EQ(b.shape(), nn::make_shape({2}));
    const float x0[6] = {1, 2, 3, -1, 0.5f, 2};
    const Var x = tape.constant(nn::make_shape({2, 3}), x0);
    ASSERT_TRUE(tape.backward(nn::sum(nn::apply(L, x))).ok()) << tape.error.message();
    EXPECT_EQ(W.grad().data, L.grads[0].data);
    // d sum(x W^T + b) / dW[o][k] = sum over rows of x[.][k]; / db[o] = rows.
    for (int o = 0; o < 2; ++o) {
        for (int k = 0; k < 3; ++k) EXPECT_FLOAT_EQ(L.grads[0][(size_t)o * 3 + k], x0[k] + x0[3 + k]);
        EXPECT_FLOAT_EQ(L.grads[1][(size_t)o], 2.0f);
    }
}

// ===========================================================================
// 2. A Var used several times gets the sum of its contributions
// ===========================================================================

TEST(TapeGrad, VarUsedThreeTimes) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(31);
    const FVec x0 = uniform_vec(6, rng, -1.5f, 1.5f), a0 = uniform_vec(6, rng, -1.0f, 1.0f);
    const nn::Shape s = nn::make_shape({2, 3});
    const Var x = tape.param(s, x0.data(), "x");
    const Var a = tape.constant(s, a0.data());
    {  // y = x * x * x + x: dy/dx = 3 x^2 + 1
        ASSERT_TRUE(tape.backward(nn::sum(x * x * x + x)).ok()) << tape.error.message();
        DVec want(6);
        for (size_t i = 0; i < 6; ++i) want[i] = 3.0 * x0[i] * x0[i] + 1.0;
        EXPECT_TRUE(close_to(x.grad().data, want, 1e-6)) << "x*x*x + x";
    }
    x.zero_grad();
    {  // sum(x a) + sum(x x) + sum(exp(x)): a + 2 x + exp(x)
        ASSERT_TRUE(tape.backward(nn::sum(x * a) + nn::sum(x * x) + nn::sum(nn::exp(x))).ok());
        DVec want(6);
        for (size_t i = 0; i < 6; ++i) want[i] = a0[i] + 2.0 * x0[i] + std::exp((double)x0[i]);
        EXPECT_TRUE(close_to(x.grad().data, want, 1e-6)) << "sum(x a) + sum(x x) + sum(exp x)";
    }
    x.zero_grad();
    {  // an intermediate used three times: h = sigmoid(x), y = h h + h
        const Var h = nn::sigmoid(x);
        ASSERT_TRUE(tape.backward(nn::sum(h * h + h)).ok());
        DVec want(6);
        for (size_t i = 0; i < 6; ++i) {
            const double hv = sigmoid_d(x0[i]);
            want[i] = (2 * hv + 1) * hv * (1 - hv);
        }
        EXPECT_TRUE(close_to(x.grad().data, want, 1e-6)) << "h*h + h";
    }
}

// ===========================================================================
// 3. The tape and the layer path give the same MLP gradients
// ===========================================================================

TEST(TapeGrad, MlpMatchesLayerPath) {
    const int B = 5, F = 6, H = 8, C = 4;
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(4 * layer_bytes()).ok());
    nn::Layer L1 = nn::Dense(F, H, Act::ReLU), L2 = nn::Dense(H, C);  // layer path
    nn::Layer T1 = L1, T2 = L2;                                          // tape
    nn::Layer* layers[4] = {&L1, &L2, &T1, &T2};
    for (int i = 0; i < 4; ++i) {
        const nn::Status st = nn::build(*layers[i], nn::make_shape({i % 2 ? H : F}), B, arena, 41 + i % 2);
        ASSERT_TRUE(st.ok()) << st.message();
    }
    for (int k = 0; k < 2; ++k) {
        ASSERT_EQ(0, std::memcmp(L1.params[k].data, T1.params[k].data, L1.params[k].numel() * sizeof(float)));
        ASSERT_EQ(0, std::memcmp(L2.params[k].data, T2.params[k].data, L2.params[k].numel() * sizeof(float)));
    }
    nn::Rng rng(43);
    FVec x = uniform_vec((size_t)B * F, rng, -2.0f, 2.0f);
    const int32_t labels[B] = {1, 3, 0, 2, 3};

    // Layer path: forward, fused softmax cross-entropy, backward.
    FVec h((size_t)B * H), z((size_t)B * C), dz((size_t)B * C), dh((size_t)B * H), dx((size_t)B * F);
    const nn::Tensor xt = nn::tensor_view(x.data(), {B, F}), ht = nn::tensor_view(h.data(), {B, H}),
                     zt = nn::tensor_view(z.data(), {B, C});
    nn::zero_grad(L1);
    nn::zero_grad(L2);
    ASSERT_TRUE(nn::forward(L1, ht, xt, nn::Mode::Train).ok());
    ASSERT_TRUE(nn::forward(L2, zt, ht, nn::Mode::Train).ok());
    nn::Target t;
    t.labels = labels;
    float loss_layers = 0;
    ASSERT_TRUE(nn::softmax_cross_entropy(nn::tensor_view(dz.data(), {B, C}), nullptr, zt, t, &loss_layers).ok());
    ASSERT_TRUE(nn::backward(L2, nn::tensor_view(dh.data(), {B, H}), nn::tensor_view(dz.data(), {B, C}), ht, zt).ok());
    ASSERT_TRUE(nn::backward(L1, nn::tensor_view(dx.data(), {B, F}), nn::tensor_view(dh.data(), {B, H}), xt, ht).ok());

    // Tape: the twin layers' parameters as leaves, dense + cross_entropy.
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::zero_grad(T1);
    nn::zero_grad(T2);
    const Var W1 = tape.layer_param(T1, 0), b1 = tape.layer_param(T1, 1);
    const Var W2 = tape.layer_param(T2, 0), b2 = tape.layer_param(T2, 1);
    const Var X = tape.param(nn::make_shape({B, F}), x.data(), "x");
    const Var loss = nn::cross_entropy(nn::dense(nn::dense(X, W1, b1, Act::ReLU), W2, b2), labels);
    ASSERT_TRUE(loss.ok()) << tape.error.message();
    nn::Status st = tape.backward(loss);
    ASSERT_TRUE(st.ok()) << st.message();

    EXPECT_NEAR(loss.item(), loss_layers, 1e-6 * std::max(1.0f, std::fabs(loss_layers)));
    const double tol = 1e-5;
    EXPECT_TRUE(close_to(T1.grads[0].data, L1.grads[0].data, L1.grads[0].numel(), tol)) << "W1";
    EXPECT_TRUE(close_to(T1.grads[1].data, L1.grads[1].data, L1.grads[1].numel(), tol)) << "b1";
    EXPECT_TRUE(close_to(T2.grads[0].data, L2.grads[0].data, L2.grads[0].numel(), tol)) << "W2";
    EXPECT_TRUE(close_to(T2.grads[1].data, L2.grads[1].data, L2.grads[1].numel(), tol)) << "b2";
    EXPECT_TRUE(close_to(X.grad().data, dx.data(), dx.size(), tol)) << "x";

    // The same network from unfused operations: relu(x W1^T + b1) ...
    nn::zero_grad(T1);
    nn::zero_grad(T2);
    const Var h2 = nn::relu(nn::matmul(X, nn::transpose(W1)) + b1);
    const Var z2 = nn::matmul(h2, nn::transpose(W2)) + b2;
    // ... against one-hot targets through log_softmax, sum and mean.
    FVec onehot((size_t)B * C, 0.0f);
    for (int i = 0; i < B; ++i) onehot[(size_t)i * C + labels[i]] = 1.0f;
    const Var Toh = tape.constant(nn::make_shape({B, C}), onehot.data());
    const Var loss3 = nn::mean(nn::neg(nn::sum(nn::log_softmax(z2) * Toh, {1})));
    ASSERT_TRUE(loss3.ok()) << tape.error.message();
    st = tape.backward(loss3);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_NEAR(loss3.item(), loss_layers, 1e-5 * std::max(1.0f, std::fabs(loss_layers)));
    EXPECT_TRUE(close_to(T1.grads[0].data, L1.grads[0].data, L1.grads[0].numel(), tol)) << "W1, unfused";
    EXPECT_TRUE(close_to(T1.grads[1].data, L1.grads[1].data, L1.grads[1].numel(), tol)) << "b1, unfused";
    EXPECT_TRUE(close_to(T2.grads[0].data, L2.grads[0].data, L2.grads[0].numel(), tol)) << "W2, unfused";
    EXPECT_TRUE(close_to(T2.grads[1].data, L2.grads[1].data, L2.grads[1].numel(), tol)) << "b2, unfused";
}

// ===========================================================================
// 4. Errors: a message that names what is wrong, and nothing lost
// ===========================================================================

// Overload helpers: backward(root, nullptr, ...) would be ambiguous.
nn::Status backward_retained(nn::Tape& tape, const Var& root) {
    return tape.backward(root, static_cast<const Var*>(nullptr), /*retain_graph=*/true);
}

TEST(TapeErrors, BackwardTwiceNeedsRetainGraph) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const float x0[6] = {0.5f, -1.25f, 2.0f, 0.75f, -0.3f, 1.1f};
    const Var x = tape.param(nn::make_shape({2, 3}), x0, "x");
    const Var L = nn::sum(nn::tanh(x) * x);
    ASSERT_TRUE(tape.backward(L).ok());
    const FVec g1(x.grad().data, x.grad().data + 6);
    nn::Status st = tape.backward(L);
    EXPECT_FALSE(st.ok()) << "a second backward through a spent graph";
    EXPECT_TRUE(contains(st, "retain_graph")) << st.message();
    EXPECT_EQ(FVec(x.grad().data, x.grad().data + 6), g1) << "the failed backward changed no gradient";

    // retain_graph keeps the graph: each backward adds the same gradient.
    // x is used once here, so each pass adds one term per element and the
    // sums are exact: g + g = 2g, 2g + g = round(3g).
    x.zero_grad();
    const float c0[6] = {1.5f, -0.5f, 2.0f, 0.25f, -1.0f, 0.75f};
    const Var L2 = nn::sum(nn::tanh(x) * tape.constant(nn::make_shape({2, 3}), c0));
    DVec want(6);
    for (size_t i = 0; i < 6; ++i) want[i] = c0[i] * (1 - std::pow(std::tanh((double)x0[i]), 2));
    st = backward_retained(tape, L2);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_TRUE(close_to(x.grad().data, want, kValTol));
    const FVec g2(x.grad().data, x.grad().data + 6);
    st = backward_retained(tape, L2);
    ASSERT_TRUE(st.ok()) << st.message();
    for (int i = 0; i < 6; ++i) EXPECT_EQ(x.grad()[(size_t)i], 2.0f * g2[(size_t)i]) << "exactly doubled at " << i;
    st = tape.backward(L2);  // retained until now: works once more, then spent
    ASSERT_TRUE(st.ok()) << st.message();
    for (int i = 0; i < 6; ++i) EXPECT_EQ(x.grad()[(size_t)i], 3.0f * g2[(size_t)i]) << "three times at " << i;
    st = tape.backward(L2);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "retain_graph")) << st.message();
}

TEST(TapeErrors, BroadcastMismatchPropagatesAnEmptyVar) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var a = tape.param(nn::make_shape({3, 4}), nullptr, "a");
    const Var b = tape.param(nn::make_shape({2, 4}), nullptr, "b");
    const nn::TapeMark m = tape.mark();
    ASSERT_TRUE(tape.error.ok());
    const Var c = a + b;
    EXPECT_FALSE(c.ok()) << "(3, 4) + (2, 4) does not broadcast";
    EXPECT_FALSE(tape.error.ok());
    EXPECT_TRUE(contains(tape.error, "(3, 4)") && contains(tape.error, "(2, 4)")) << tape.error.message();
    // Operations on the empty Var give empty Vars, without a new message.
    const Var d = nn::exp(c);
    const Var e = nn::sum(d * a);
    EXPECT_FALSE(d.ok());
    EXPECT_FALSE(e.ok());
    EXPECT_FALSE(nn::matmul(a, c).ok());
    EXPECT_FALSE(nn::concat({a, c, a}, 0).ok());
    EXPECT_FALSE(nn::loss(nn::MSE(), c, a).ok());
    // The first error stays: a later, different failure does not replace it.
    EXPECT_FALSE(nn::matmul(a, a).ok());
    EXPECT_TRUE(contains(tape.error, "(2, 4)")) << "sticky: " << tape.error.message();
    nn::Status st = tape.backward(e);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "(3, 4)") && contains(st, "(2, 4)")) << st.message();
    // Reset to the mark clears the error; the leaves still work.
    tape.reset(m);
    EXPECT_TRUE(tape.error.ok()) << tape.error.message();
    const Var ok = nn::sum(a * a);
    EXPECT_TRUE(ok.ok());
    EXPECT_TRUE(tape.backward(ok).ok());
}

TEST(TapeErrors, NonScalarRootNeedsAnUpstreamGradient) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(51);
    const FVec x0 = uniform_vec(12, rng, -2.0f, 2.0f), r = uniform_vec(12, rng, -1.0f, 1.0f);
    const nn::Shape s = nn::make_shape({3, 4});
    const Var x = tape.param(s, x0.data(), "x");
    // d/dx of sum(r * tanh(x) x) = r (tanh x + x (1 - tanh^2 x)), in double.
    DVec want(12);
    for (size_t i = 0; i < 12; ++i) {
        const double t = std::tanh((double)x0[i]);
        want[i] = r[i] * (t + x0[i] * (1 - t * t));
    }
    {
        const Var y = nn::tanh(x) * x;
        nn::Status st = tape.backward(y);
        EXPECT_FALSE(st.ok()) << "a (3, 4) root without an upstream gradient";
        EXPECT_TRUE(contains(st, "scalar")) << st.message();
        st = tape.backward(y, r.data());  // the graph is not spent by the failure
        ASSERT_TRUE(st.ok()) << st.message();
        EXPECT_TRUE(close_to(x.grad().data, want, kValTol)) << "upstream as floats";
    }
    x.zero_grad();
    {
        const Var y = nn::tanh(x) * x;
        const Var R = tape.constant(s, r.data());
        nn::Status st = tape.backward(y, &R);
        ASSERT_TRUE(st.ok()) << st.message();
        EXPECT_TRUE(close_to(x.grad().data, want, kValTol)) << "upstream as a Var";
    }
    {
        const Var y = nn::tanh(x) * x;
        const Var R = tape.constant(nn::make_shape({4, 3}), r.data());
        const nn::Status st = tape.backward(y, &R);
        EXPECT_FALSE(st.ok()) << "an upstream gradient of another shape";
        EXPECT_TRUE(contains(st, "(4, 3)")) << st.message();
    }
}

TEST(TapeErrors, MatmulInnerDimensionMismatch) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var a = tape.param(nn::make_shape({3, 4}), nullptr, "a");
    const Var b = tape.param(nn::make_shape({5, 2}), nullptr, "b");
    EXPECT_FALSE(nn::matmul(a, b).ok());
    EXPECT_TRUE(contains(tape.error, "matmul")) << tape.error.message();
    EXPECT_TRUE(contains(tape.error, "(3, 4)") && contains(tape.error, "(5, 2)")) << tape.error.message();

    nn::Tape t2;
    ASSERT_TRUE(t2.reserve(kTapeBytes).ok());
    const Var v = t2.param(nn::make_shape({3}), nullptr, "v");
    const Var w = t2.param(nn::make_shape({4, 2}), nullptr, "w");
    EXPECT_FALSE(nn::matmul(v, w).ok()) << "(3,) x (4, 2)";
    EXPECT_TRUE(contains(t2.error, "matmul")) << t2.error.message();
}

TEST(TapeErrors, ReshapeWithAnotherElementCount) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var a = tape.param(nn::make_shape({2, 3}), nullptr, "a");
    const nn::TapeMark m = tape.mark();
    EXPECT_FALSE(nn::reshape(a, {4, 2}).ok());
    EXPECT_TRUE(contains(tape.error, "reshape")) << tape.error.message();
    EXPECT_TRUE(contains(tape.error, "(2, 3)")) << tape.error.message();
    tape.reset(m);
    EXPECT_FALSE(nn::reshape(a, {4, -1}).ok()) << "6 elements do not fill rows of 4";
    EXPECT_TRUE(contains(tape.error, "reshape")) << tape.error.message();
    tape.reset(m);
    EXPECT_FALSE(nn::reshape(a, {-1, -1}).ok()) << "two inferred dimensions";
    EXPECT_TRUE(contains(tape.error, "reshape")) << tape.error.message();
    tape.reset(m);
    EXPECT_TRUE(nn::reshape(a, {3, -1}).ok());
}

TEST(TapeErrors, SliceAndConcatOutOfRange) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var a = tape.param(nn::make_shape({3, 4}), nullptr, "a");
    const nn::TapeMark m = tape.mark();
    EXPECT_FALSE(nn::slice(a, 1, 2, 6).ok()) << "[2, 6) of 4";
    EXPECT_TRUE(contains(tape.error, "slice")) << tape.error.message();
    tape.reset(m);
    EXPECT_FALSE(nn::slice(a, 0, -1, 2).ok()) << "negative begin";
    EXPECT_TRUE(contains(tape.error, "slice")) << tape.error.message();
    tape.reset(m);
    EXPECT_FALSE(nn::slice(a, 2, 0, 1).ok()) << "axis 2 of a 2-D tensor";
    EXPECT_TRUE(contains(tape.error, "slice")) << tape.error.message();
    tape.reset(m);
    const Var b = tape.param(nn::make_shape({2, 5}), nullptr, "b");
    EXPECT_FALSE(nn::concat({a, b}, 0).ok()) << "(3, 4) and (2, 5) along axis 0";
    EXPECT_TRUE(contains(tape.error, "concat")) << tape.error.message();
    tape.reset(m);
    EXPECT_FALSE(nn::sum(a, {2}).ok()) << "axis 2 of a 2-D tensor";
    EXPECT_FALSE(tape.error.ok());
    tape.reset(m);
    EXPECT_FALSE(nn::softmax(a, 2).ok()) << "axis 2 of a 2-D tensor";
    EXPECT_FALSE(tape.error.ok());
}

// A tiny arena: recording runs out of memory with an error naming the bytes,
// never a crash or a heap allocation.
TEST(TapeErrors, ArenaExhaustionNamesTheBytes) {
    nn::Tape tape;
    nn::Status st = tape.reserve(16u << 10);
    ASSERT_TRUE(st.ok()) << st.message();
    const Var x = tape.param(nn::make_shape({16, 16}), nullptr, "x");
    ASSERT_TRUE(x.ok()) << tape.error.message();
    Var y = x;
    int ops = 0;
    for (; ops < 1000 && y.ok(); ++ops) y = nn::exp(y) * x;
    EXPECT_FALSE(y.ok()) << "16 KB should not hold 2000 (16, 16) results";
    EXPECT_FALSE(tape.error.ok());
    EXPECT_TRUE(contains(tape.error, "bytes")) << tape.error.message();
    EXPECT_LE(tape.arena.used, tape.arena.capacity);
    st = tape.backward(nn::sum(y));
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "bytes")) << st.message();
}

// A layer that keeps state for its backward (pooling indices) is applied
// once per graph.
TEST(TapeErrors, ApplyTwiceInOneGraph) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(layer_bytes()).ok());
    nn::Layer pool = nn::MaxPool2D(2);
    std::snprintf(pool.name, sizeof pool.name, "%s", "pool7");
    ASSERT_TRUE(nn::build(pool, nn::make_shape({1, 4, 4}), 2, arena).ok());
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var x = tape.param(nn::make_shape({2, 1, 4, 4}), nullptr, "x");
    const nn::TapeMark m = tape.mark();
    EXPECT_TRUE(nn::apply(pool, x).ok()) << tape.error.message();
    EXPECT_FALSE(nn::apply(pool, x).ok()) << "a second application in the same graph";
    EXPECT_TRUE(contains(tape.error, "pool7")) << tape.error.message();
    tape.reset(m);  // a new graph
    EXPECT_TRUE(nn::apply(pool, x).ok()) << tape.error.message();
}

// ===========================================================================
// 5. Custom operations, and the public gradient check
// ===========================================================================

// y = x^2 * w, elementwise: dx = 2 x w dy, dw = x^2 dy.
void sqmul_forward(nn::Tensor y, const nn::Tensor* in, int, void*) {
    for (size_t i = 0; i < y.numel(); ++i) y[i] = in[0][i] * in[0][i] * in[1][i];
}
void sqmul_backward(nn::Tensor* dx, const nn::Tensor& dy, const nn::Tensor* in, int, const nn::Tensor&, void*) {
    for (size_t i = 0; i < dy.numel(); ++i) {
        if (dx[0].data) dx[0][i] += 2.0f * in[0][i] * in[1][i] * dy[i];
        if (dx[1].data) dx[1][i] += in[0][i] * in[0][i] * dy[i];
    }
}
// The same with a deliberate mistake: dx forgets the factor 2.
void sqmul_backward_wrong(nn::Tensor* dx, const nn::Tensor& dy, const nn::Tensor* in, int, const nn::Tensor&,
                          void*) {
    for (size_t i = 0; i < dy.numel(); ++i) {
        if (dx[0].data) dx[0][i] += in[0][i] * in[1][i] * dy[i];
        if (dx[1].data) dx[1][i] += in[0][i] * in[0][i] * dy[i];
    }
}
nn::CustomOp sqmul_op(bool wrong) {
    nn::CustomOp op;
    op.name = "sqmul";
    op.forward = sqmul_forward;
    op.backward = wrong ? sqmul_backward_wrong : sqmul_backward;
    return op;
}
Var custom_fn(nn::Tape&, const Var* in, int n, void* user) {
    return nn::custom(*static_cast<const nn::CustomOp*>(user), in, n);
}

TEST(Tape, CustomOpPassesTheGradientCheck) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(61);
    const FVec x0 = uniform_vec(12, rng, -1.5f, 1.5f), w0 = uniform_vec(12, rng, -1.0f, 1.0f);
    const Var in[2] = {tape.param(nn::make_shape({3, 4}), x0.data(), "x"),
                       tape.param(nn::make_shape({3, 4}), w0.data(), "w")};
    const nn::CustomOp op = sqmul_op(false);
    // Gradients the inputs hold before the check are left as found.
    ASSERT_TRUE(tape.backward(nn::sum(in[0] * in[1])).ok());
    const FVec gx(in[0].grad().data, in[0].grad().data + 12), gw(in[1].grad().data, in[1].grad().data + 12);
    nn::GradCheckResult res;
    const nn::Status st = nn::gradient_check(tape, custom_fn, in, 2, (void*)&op, &res);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_TRUE(res.passed) << "max rel err " << res.max_rel_err << " at " << res.worst;
    EXPECT_EQ(res.checked, 24) << "12 elements of each input";
    EXPECT_LT(res.max_rel_err, 2e-2);
    EXPECT_EQ(FVec(in[0].grad().data, in[0].grad().data + 12), gx);
    EXPECT_EQ(FVec(in[1].grad().data, in[1].grad().data + 12), gw);
    EXPECT_TRUE(tape.error.ok()) << tape.error.message();
}

TEST(Tape, GradientCheckCatchesAWrongCustomBackward) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(62);
    const FVec x0 = uniform_vec(12, rng, -1.5f, 1.5f), w0 = uniform_vec(12, rng, 0.5f, 1.0f);
    const Var in[2] = {tape.param(nn::make_shape({3, 4}), x0.data(), "x"),
                       tape.param(nn::make_shape({3, 4}), w0.data(), "w")};
    const nn::CustomOp op = sqmul_op(true);
    nn::GradCheckResult res;
    const nn::Status st = nn::gradient_check(tape, custom_fn, in, 2, (void*)&op, &res);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_FALSE(res.passed) << "dx off by a factor of 2 went unnoticed";
    EXPECT_GT(res.max_rel_err, 0.3);
}

// Built-in operations through the same public check, with an input that
// wants no gradient (skipped).
Var softmax_mix_fn(nn::Tape&, const Var* in, int, void*) { return nn::log_softmax(nn::matmul(in[0], in[1]) * in[2], 0); }

TEST(Tape, GradientCheckOnBuiltInOperations) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(63);
    const FVec a0 = uniform_vec(6, rng, -1, 1), b0 = uniform_vec(8, rng, -1, 1), c0 = uniform_vec(4, rng, -1, 1);
    const Var in[3] = {tape.param(nn::make_shape({3, 2}), a0.data(), "a"),
                       tape.param(nn::make_shape({2, 4}), b0.data(), "b"),
                       tape.constant(nn::make_shape({4}), c0.data(), "c")};
    nn::GradCheckResult res;
    const nn::Status st = nn::gradient_check(tape, softmax_mix_fn, in, 3, nullptr, &res);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_TRUE(res.passed) << "max rel err " << res.max_rel_err << " at " << res.worst;
    EXPECT_EQ(res.checked, 14) << "a and b; the constant c is skipped";
}

// y_b = sum_j softplus(x_bj) w_j: a custom op with its own output shape;
// records whether it was asked for w's gradient.
struct RowSoftplusUser {
    int backward_calls = 0, null_dw = 0;
};
nn::Status rowsp_shape(const nn::Shape* in, int n, void*, nn::Shape* out) {
    if (n != 2 || in[0].ndim != 2 || in[1].ndim != 1 || in[1].dim[0] != in[0].dim[1])
        return nn::errorf("rowsp: wants x (B, C) and w (C)");
    *out = nn::make_shape({in[0].dim[0]});
    return nn::Status{};
}
float softplus_f(float v) { return v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); }
void rowsp_forward(nn::Tensor y, const nn::Tensor* in, int, void*) {
    const int B = in[0].dim(0), C = in[0].dim(1);
    for (int b = 0; b < B; ++b) {
        float s = 0;
        for (int j = 0; j < C; ++j) s += softplus_f(in[0][(size_t)b * C + j]) * in[1][(size_t)j];
        y[(size_t)b] = s;
    }
}
void rowsp_backward(nn::Tensor* dx, const nn::Tensor& dy, const nn::Tensor* in, int, const nn::Tensor&, void* user) {
    RowSoftplusUser* u = static_cast<RowSoftplusUser*>(user);
    ++u->backward_calls;
    if (!dx[1].data) ++u->null_dw;
    const int B = in[0].dim(0), C = in[0].dim(1);
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < C; ++j) {
            const float v = in[0][(size_t)b * C + j];
            if (dx[0].data) dx[0][(size_t)b * C + j] += dy[(size_t)b] * in[1][(size_t)j] / (1.0f + std::exp(-v));
            if (dx[1].data) dx[1][(size_t)j] += dy[(size_t)b] * softplus_f(v);
        }
}

TEST(TapeGrad, CustomOpAgainstDoubleReference) {
    static RowSoftplusUser user;
    static nn::CustomOp op;
    op.name = "rowsp";
    op.output_shape = rowsp_shape;
    op.forward = rowsp_forward;
    op.backward = rowsp_backward;
    auto ref = [](const Ins& x) {
        DT y = zeros({x[0].dims[0]});
        const int C = x[0].dims[1];
        for (int b = 0; b < x[0].dims[0]; ++b)
            for (int j = 0; j < C; ++j) y.v[(size_t)b] += std::log1p(std::exp(x[0].v[(size_t)b * C + j])) * x[1].v[(size_t)j];
        return y;
    };
    user = RowSoftplusUser{};
    check_ops({{"rowsp, both inputs want gradients", {In{{4, 5}, U(-3, 3)}, In{{5}}},
                [](const Vars& v) { return nn::custom(op, v.data(), 2, &user); }, ref}},
              1400);
    EXPECT_EQ(user.backward_calls, 1);
    EXPECT_EQ(user.null_dw, 0);
    user = RowSoftplusUser{};
    check_ops({{"rowsp, w a frozen param", {In{{4, 5}, U(-3, 3)}, frozen({5})},
                [](const Vars& v) { return nn::custom(op, v.data(), 2, &user); }, ref}},
              1401);
    EXPECT_EQ(user.backward_calls, 1);
    EXPECT_EQ(user.null_dw, 1) << "dx[1].data is null for an input that wants no gradient";

    // The output_shape hook's error reaches tape.error.
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const Var in[2] = {tape.param(nn::make_shape({4, 5}), nullptr), tape.param(nn::make_shape({4}), nullptr)};
    EXPECT_FALSE(nn::custom(op, in, 2, &user).ok());
    EXPECT_TRUE(contains(tape.error, "rowsp")) << tape.error.message();
}

// ===========================================================================
// 6. NoGrad and frozen leaves
// ===========================================================================

TEST(Tape, NoGradRecordsNothing) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const float x0[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    const Var x = tape.param(nn::make_shape({4}), x0, "x");
    ASSERT_TRUE(x.requires_grad());
    const size_t nodes = tape.nodes;
    Var y;
    {
        nn::NoGrad ng(tape);
        EXPECT_FALSE(tape.grad_enabled);
        y = nn::sum(x * x + 1.0f);
        EXPECT_EQ(tape.nodes, nodes) << "no node recorded inside NoGrad";
    }
    EXPECT_TRUE(tape.grad_enabled) << "restored at the end of the scope";
    ASSERT_TRUE(y.ok()) << tape.error.message();
    EXPECT_FALSE(y.requires_grad());
    EXPECT_FLOAT_EQ(y.item(), 1 + 4 + 0.25f + 9 + 4);
    // Recording resumes after the scope.
    const Var z = nn::sum(x * x);
    EXPECT_GT(tape.nodes, nodes);
    EXPECT_TRUE(z.requires_grad());
    ASSERT_TRUE(tape.backward(z).ok());
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(x.grad()[(size_t)i], 2 * x0[i]);
}

TEST(Tape, FrozenLeafGetsNoGradientAndTheOptimizerSkipsIt) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    const float a0[3] = {0.5f, -1.0f, 2.0f}, b0[3] = {0.25f, 0.5f, -0.75f}, x0[3] = {1.0f, 2.0f, -1.5f};
    const Var A = tape.param(nn::make_shape({3}), a0, "A");
    const Var B = tape.param(nn::make_shape({3}), b0, "B");
    A.set_requires_grad(false);
    EXPECT_FALSE(A.requires_grad());
    nn::Param ps[2] = {nn::as_param(A, "A"), nn::as_param(B, "B")};
    // Weight decay moves a parameter even where its gradient is 0: only
    // skipping it keeps the frozen leaf where it is.
    const float wd = 0.5f;
    nn::Optimizer sgd;
    ASSERT_TRUE(sgd.init(nn::SGD(0.1f, 0.0f, false, wd), ps, 2, tape.arena).ok());
    const nn::TapeMark m = tape.mark();
    // L = sum((A x + B)^2): dL/dA = 2 (A x + B) x, dL/dB = 2 (A x + B);
    // SGD: p -= 0.1 (dL/dp + wd p).
    auto step = [&](bool check_frozen) {
        sgd.zero_grad();
        const Var X = tape.constant(nn::make_shape({3}), x0);
        const Var Ax = A * X;
        if (check_frozen) {
            EXPECT_FALSE(Ax.requires_grad()) << "frozen leaf times a constant";
        }
        ASSERT_TRUE(tape.backward(nn::sum(nn::square(Ax + B))).ok()) << tape.error.message();
        if (check_frozen && A.grad().data) {
            for (int i = 0; i < 3; ++i) EXPECT_EQ(A.grad()[(size_t)i], 0.0f) << "frozen leaf got a gradient";
        }
        sgd.step();
        tape.reset(m);
    };
    float a[3], b[3];
    std::memcpy(a, A.value().data, sizeof a);
    std::memcpy(b, B.value().data, sizeof b);
    step(true);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(A.value()[(size_t)i], a0[i]) << "the frozen leaf moved";
        const double r = (double)a[i] * x0[i] + b[i];
        EXPECT_NEAR(B.value()[(size_t)i], b[i] - 0.1 * (2 * r + wd * b[i]), 1e-6) << "B takes an SGD step";
    }
    // Unfrozen, A trains again.
    A.set_requires_grad(true);
    EXPECT_TRUE(A.requires_grad());
    std::memcpy(a, A.value().data, sizeof a);
    std::memcpy(b, B.value().data, sizeof b);
    step(false);
    for (int i = 0; i < 3; ++i) {
        const double r = (double)a[i] * x0[i] + b[i];
        EXPECT_NEAR(A.value()[(size_t)i], a[i] - 0.1 * (2 * r * x0[i] + wd * a[i]), 1e-6) << "A trains again";
        EXPECT_NEAR(B.value()[(size_t)i], b[i] - 0.1 * (2 * r + wd * b[i]), 1e-6);
    }
}

// ===========================================================================
// 7. mark / reset
// ===========================================================================

TEST(Tape, ResetReturnsToTheMark) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(71);
    const FVec w0 = uniform_vec(12, rng, -1, 1);
    const Var W = tape.param(nn::make_shape({4, 3}), w0.data(), "W");
    const nn::TapeMark m = tape.mark();
    const size_t nodes = tape.nodes, used = tape.arena.used;
    EXPECT_EQ(m.arena_used, used);
    const FVec x0 = uniform_vec(8, rng, -1, 1);
    const Var x = tape.constant(nn::make_shape({2, 4}), x0.data());
    const Var y = nn::matmul(x, W);
    const Var L = nn::sum(nn::square(y));
    ASSERT_TRUE(tape.backward(L).ok());
    EXPECT_GT(tape.nodes, nodes);
    EXPECT_GT(tape.arena.used, used);
    // The gradient of an intermediate reached by backward is readable: 2 y.
    ASSERT_NE(y.grad().data, nullptr);
    for (size_t i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(y.grad()[i], 2 * y.value()[i]);
    tape.reset(m);
    EXPECT_EQ(tape.nodes, nodes);
    EXPECT_EQ(tape.arena.used, used);
    EXPECT_EQ(tape.last, m.last);
    EXPECT_EQ(tape.bytes_since(m), 0u);
    // The leaf and its gradient survive.
    EXPECT_EQ(FVec(W.value().data, W.value().data + 12), w0);
    ASSERT_NE(W.grad().data, nullptr);
}

TEST(Tape, EveryStepUsesTheSameMemory) {
    nn::Tape tape;
    ASSERT_TRUE(tape.reserve(kTapeBytes).ok());
    nn::Rng rng(72);
    const FVec w0 = uniform_vec(15, rng, -1, 1), b0 = uniform_vec(3, rng, -1, 1);
    const Var W = tape.param(nn::make_shape({3, 5}), w0.data(), "W");
    const Var b = tape.param(nn::make_shape({3}), b0.data(), "b");
    const nn::TapeMark m = tape.mark();
    const int32_t labels[4] = {0, 2, 1, 2};
    size_t bytes[6] = {0};
    size_t nodes[6] = {0};
    for (int s = 0; s < 6; ++s) {
        const FVec x0 = uniform_vec(20, rng, -1, 1);
        const Var x = tape.constant(nn::make_shape({4, 5}), x0.data());
        const Var h = nn::tanh(nn::dense(x, W, b));
        const Var L = nn::cross_entropy(h, labels) + nn::mean(nn::square(nn::slice(h, 1, 0, 2)));
        ASSERT_TRUE(tape.backward(L).ok()) << tape.error.message();
        bytes[s] = tape.bytes_since(m);
        nodes[s] = tape.nodes;
        tape.reset(m);
        EXPECT_EQ(tape.arena.used, m.arena_used);
    }
    EXPECT_GT(bytes[0], 0u);
    for (int s = 1; s < 6; ++s) {
        EXPECT_EQ(bytes[s], bytes[0]) << "step " << s;
        EXPECT_EQ(nodes[s], nodes[0]) << "step " << s;
    }
}

}  // namespace
