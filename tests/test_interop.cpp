// PyTorch interop (issue 7): the MLP, LeNet, an LSTM and a 2-layer GRU model go from
// PyTorch to nn and from nn to PyTorch through safetensors model files, and
// both frameworks must give the same outputs within 1e-5.
//
// tools/torch_interop.py does the PyTorch side, run twice in all (one
// `export`, one `check`; importing torch takes a second or two each):
//   export DIR  writes DIR/<model>.safetensors (state_dict names plus
//               nn.architecture), DIR/<model>_input.bin and PyTorch's
//               DIR/<model>_output.bin;
//   check DIR   loads DIR/<model>_nn.safetensors (nn::save's) into PyTorch,
//               runs DIR/<model>_input.bin and compares with nn's
//               DIR/<model>_nn_output.bin, exiting non-zero past 1e-5.
// The tests skip with a message when /usr/bin/python3 (or $NN_PYTHON)
// cannot import torch.
// The script is found under $NN_ROOT, else the working directory or one of
// its parents (make test runs from the repository root), else the test
// binary's directory or one of its parents.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "nn.hpp"

namespace {

constexpr double kTolerance = 1e-5;  // issue 7: max absolute difference
const char* const kModels[] = {"mlp", "lenet", "lstm", "gru"};

bool file_exists(const std::string& p) {
    struct stat sb;
    return ::stat(p.c_str(), &sb) == 0;
}

bool is_root(const std::string& dir) {
    return file_exists(dir + "/tools/torch_interop.py") && file_exists(dir + "/nn.hpp");
}

// dir, then its parents up to "/".
std::string find_up(std::string dir) {
    while (!dir.empty()) {
        if (is_root(dir)) return dir;
        const size_t slash = dir.find_last_of('/');
        if (slash == std::string::npos || dir == "/") break;
        dir = slash == 0 ? "/" : dir.substr(0, slash);
    }
    return "";
}

std::string repo_root() {
    if (const char* env = std::getenv("NN_ROOT"))
        if (*env && is_root(env)) return env;
    char buf[4096];
    if (::getcwd(buf, sizeof buf)) {
        const std::string r = find_up(buf);
        if (!r.empty()) return r;
    }
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = 0;
        std::string exe(buf);
        const size_t slash = exe.find_last_of('/');
        if (slash != std::string::npos) return find_up(exe.substr(0, slash));
    }
    return "";
}

// The interpreter: $NN_PYTHON, else /usr/bin/python3 (where Debian's
// python3-torch installs).
std::string python() {
    const char* env = std::getenv("NN_PYTHON");
    return env && *env ? env : "/usr/bin/python3";
}

std::string quote(const std::string& s) {  // for /bin/sh
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Exit status of a shell command (-1 when it did not exit normally).
int run(const std::string& cmd) {
    const int w = std::system(cmd.c_str());
    return w != -1 && WIFEXITED(w) ? WEXITSTATUS(w) : -1;
}

std::string read_text(const std::string& path) {
    std::string s;
    if (FILE* f = std::fopen(path.c_str(), "rb")) {
        char b[4096];
        size_t n;
        while ((n = std::fread(b, 1, sizeof b, f)) > 0) s.append(b, n);
        std::fclose(f);
    }
    return s;
}

bool read_f32(const std::string& path, std::vector<float>* out) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    out->clear();
    float b[1024];
    size_t n;
    while ((n = std::fread(b, sizeof(float), 1024, f)) > 0) out->insert(out->end(), b, b + n);
    const bool ok = !std::ferror(f);
    std::fclose(f);
    return ok;  // little-endian hosts: the raw bytes are the floats
}

bool write_f32(const std::string& path, const float* p, size_t n) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    const bool ok = std::fwrite(p, sizeof(float), n, f) == n;
    return std::fclose(f) == 0 && ok;
}

// The nn models the script mirrors; layer indices name the tensors.
void build_model(const std::string& name, nn::Model* m) {
    if (name == "mlp") {
        m->set_input(nn::make_shape({784}));
        m->add(nn::Dense(784, 128, nn::Act::ReLU));  // 0
        m->add(nn::Dense(128, 128, nn::Act::ReLU));  // 1
        m->add(nn::Dense(128, 10));                  // 2
    } else if (name == "lenet") {
        m->set_input(nn::make_shape({1, 28, 28}));
        m->add(nn::Conv2D(1, 6, 5, 1, 2));            // 0
        m->add(nn::ReLU());                           // 1
        m->add(nn::MaxPool2D(2));                     // 2
        m->add(nn::Conv2D(6, 16, 5));                 // 3
        m->add(nn::ReLU());                           // 4
        m->add(nn::MaxPool2D(2));                     // 5
        m->add(nn::Flatten());                        // 6
        m->add(nn::Dense(400, 120, nn::Act::ReLU));   // 7
        m->add(nn::Dense(120, 84, nn::Act::ReLU));    // 8
        m->add(nn::Dense(84, 10));                    // 9
    } else if (name == "lstm") {  // T = 10 steps of 4 features, hidden 32, 3 outputs
        m->set_input(nn::make_shape({10, 4}));
        m->add(nn::LSTM(4, 32, 1, /*return_sequences=*/false));  // 0
        m->add(nn::Dense(32, 3));                                 // 1
    } else {  // gru: the same sizes, two stacked layers
        m->set_input(nn::make_shape({10, 4}));
        m->add(nn::GRU(4, 32, 2, /*return_sequences=*/false));   // 0
        m->add(nn::Dense(32, 3));                                 // 1
    }
}

const int kLayers[] = {3, 10, 2, 2};
const nn::LayerKind kFirstKind[] = {nn::LayerKind::Dense, nn::LayerKind::Conv2D, nn::LayerKind::Recurrent,
                                     nn::LayerKind::Recurrent};

double max_abs_diff(const float* a, const float* b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; ++i) {
        const double e = std::fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e;  // NaN propagates as the worst
    }
    return d;
}

double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::fmax(m, std::fabs((double)x));
    return m;
}

class Interop : public ::testing::Test {
  protected:
    static std::string root_, dir_, export_log_, skip_;
    static int export_rc_;

    // One export for the whole suite (PyTorch's import is the slow part).
    static void SetUpTestSuite() {
        if (run(quote(python()) + " -c 'import torch' >/dev/null 2>&1") != 0) {
            skip_ = python() + " cannot import torch (apt-get install python3-torch to run the interop tests)";
            return;
        }
        root_ = repo_root();
        if (root_.empty()) {
            skip_ = "tools/torch_interop.py not found: run from the repository or set NN_ROOT";
            return;
        }
        const char* tmp = std::getenv("TMPDIR");
        std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/nn_interop_XXXXXX";
        std::vector<char> t(tmpl.begin(), tmpl.end());
        t.push_back(0);
        if (!::mkdtemp(t.data())) {
            skip_ = "cannot create a temporary directory from " + tmpl;
            return;
        }
        dir_ = t.data();
        export_rc_ = run(quote(python()) + " " + quote(root_ + "/tools/torch_interop.py") + " export " + quote(dir_) +
                         " >" + quote(dir_ + "/export.log") + " 2>&1");
        export_log_ = read_text(dir_ + "/export.log");
    }
    static void TearDownTestSuite() {
        if (dir_.empty()) return;
        if (std::getenv("NN_KEEP_INTEROP")) {
            std::printf("[interop] files kept in %s\n", dir_.c_str());
            return;
        }
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    void SetUp() override {
        if (!skip_.empty()) GTEST_SKIP() << skip_;
        ASSERT_EQ(export_rc_, 0) << "torch_interop.py export failed:\n" << export_log_;
    }
    static std::string path(const std::string& name) { return dir_ + "/" + name; }

    // PyTorch -> nn: load_model rebuilds the model from the file alone and
    // predicts PyTorch's outputs on the stored input.
    static void from_pytorch(int which) {
        const std::string name = kModels[which];
        std::vector<float> x, want;
        ASSERT_TRUE(read_f32(path(name + "_input.bin"), &x)) << path(name + "_input.bin");
        ASSERT_TRUE(read_f32(path(name + "_output.bin"), &want)) << path(name + "_output.bin");

        // The batch size from the file, the sample shape from a probe model.
        nn::Model probe;
        build_model(name, &probe);
        const size_t per = probe.input.numel();
        ASSERT_TRUE(!x.empty() && x.size() % per == 0) << x.size() << " floats, samples of " << per;
        const int N = (int)(x.size() / per);

        nn::CompileOptions co;
        co.max_batch = N;
        nn::Model m;
        nn::Status st = nn::load_model(path(name + ".safetensors").c_str(), co, &m);
        ASSERT_TRUE(st.ok()) << st.message();
        ASSERT_EQ(m.size(), kLayers[which]);
        EXPECT_EQ(m.layer(0).kind, kFirstKind[which]);
        EXPECT_TRUE(m.input == probe.input);
        const size_t width = m.output_shape().numel();
        ASSERT_EQ(want.size(), (size_t)N * width);

        std::vector<float> y(want.size(), NAN);
        st = m.predict(nn::tensor_view(x.data(), nn::batched(m.input, N)), nn::tensor_view(y.data(), {N, (int)width}));
        ASSERT_TRUE(st.ok()) << st.message();
        const double d = max_abs_diff(y.data(), want.data(), y.size());
        std::printf("[interop] PyTorch -> nn  %-5s max |diff| %.3g over %zu outputs (|y| up to %.3g)\n", name.c_str(),
                    d, y.size(), max_abs(want));
        RecordProperty("max_abs_diff_" + name, std::to_string(d));
        EXPECT_GT(max_abs(want), 1e-3) << "PyTorch's outputs are all near zero: the comparison would prove little";
        EXPECT_LE(d, kTolerance) << name << ": nn's outputs differ from PyTorch's";
    }
};
std::string Interop::root_, Interop::dir_, Interop::export_log_, Interop::skip_;
int Interop::export_rc_ = -1;

TEST_F(Interop, MlpFromPyTorch) { from_pytorch(0); }
TEST_F(Interop, LeNetFromPyTorch) { from_pytorch(1); }
TEST_F(Interop, LstmFromPyTorch) { from_pytorch(2); }
TEST_F(Interop, GruFromPyTorch) { from_pytorch(3); }

// nn -> PyTorch: each model built by nn with its own seed, trained a few SGD
// steps, saved with nn::save beside its outputs on the stored input; the
// script loads the files into PyTorch and compares.
TEST_F(Interop, NnToPyTorch) {
    for (int which = 0; which < 4; ++which) {
        const std::string name = kModels[which];
        SCOPED_TRACE(name);
        std::vector<float> x;
        ASSERT_TRUE(read_f32(path(name + "_input.bin"), &x));
        nn::Model m;
        build_model(name, &m);
        const size_t per = m.input.numel();
        ASSERT_TRUE(!x.empty() && x.size() % per == 0);
        const int N = (int)(x.size() / per);
        nn::CompileOptions co;
        co.max_batch = N;
        co.seed = 1000 + (uint64_t)which;  // not the script's weights
        co.optimizer = nn::SGD(0.05f);
        co.loss = which >= 2 ? nn::MSE() : nn::CrossEntropy();
        nn::Status st = m.compile(co);
        ASSERT_TRUE(st.ok()) << st.message();

        // A few training steps on the stored input: random labels, or
        // random regression targets for the LSTM.
        const size_t width = m.output_shape().numel();
        nn::Rng rng(77);
        std::vector<int32_t> labels((size_t)N);
        std::vector<float> targets((size_t)N * width);
        for (auto& l : labels) l = (int32_t)rng.below((uint32_t)width);
        for (auto& t : targets) t = rng.uniform(-1, 1);
        nn::Target tgt;
        if (which >= 2) tgt.values = targets.data();
        else tgt.labels = labels.data();
        std::memcpy(m.x_buf.data, x.data(), x.size() * sizeof(float));
        float loss = 0;
        for (int step = 0; step < 3; ++step) {
            st = m.train_step(N, tgt, &loss);
            ASSERT_TRUE(st.ok()) << st.message();
        }

        std::vector<float> y((size_t)N * width, NAN);
        st = m.predict(nn::tensor_view(x.data(), nn::batched(m.input, N)), nn::tensor_view(y.data(), {N, (int)width}));
        ASSERT_TRUE(st.ok()) << st.message();
        EXPECT_GT(max_abs(y), 1e-3) << "nn's outputs are all near zero: the comparison would prove little";
        st = nn::save(m, path(name + "_nn.safetensors").c_str());
        ASSERT_TRUE(st.ok()) << st.message();
        ASSERT_TRUE(write_f32(path(name + "_nn_output.bin"), y.data(), y.size()));
    }
    const int rc = run(quote(python()) + " " + quote(root_ + "/tools/torch_interop.py") + " check " + quote(dir_) +
                       " >" + quote(path("check.log")) + " 2>&1");
    const std::string log = read_text(path("check.log"));
    std::printf("%s", log.c_str());  // "check <model>: max abs diff ..." per model
    RecordProperty("check_log", log);
    EXPECT_EQ(rc, 0) << "torch_interop.py check failed:\n" << log;
    for (const char* name : kModels)
        EXPECT_NE(log.find(std::string("check ") + name + ": max abs diff"), std::string::npos)
            << "no result for " << name << " in:\n" << log;
}

}  // namespace
