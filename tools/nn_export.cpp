// nn-export — a model file as a C header for firmware: const float arrays
// and a layer table, no file system and no heap needed to use them.
//
//     nn-export model.safetensors out.h [--name prefix]
//
// Loads the model with nn::load_model (the architecture from the file's
// "nn.architecture" metadata, max_batch 1) and writes out.h (atomically:
// out.h.tmp, then renamed) holding, for a prefix P (default: out.h's file
// name without extension, made a C identifier):
//
//   static const float P_<tensor>[] = {...};   every parameter and buffer,
//       <tensor> the file's tensor name with '.' as '_' ("0.weight" ->
//       P_0_weight), values as %.9g (exact float32 round trip), nn's (and
//       PyTorch's) layouts: Dense weight [out, in], Conv2D [out, in/groups,
//       kh, kw], recurrent weight_ih_lk [G*hidden, in] and so on;
//   static const nn_fw_param P_params_<i>[]    each layer's parameters;
//   static const nn_fw_layer P_layers[]        one entry per layer of the
//       model: kind, per-sample input and output shapes, activation, Dense,
//       Conv2D / pooling (padding resolved: Same is written as numbers),
//       BatchNorm and recurrent sizes, and its parameters;
//   static const nn_fw_model P_model           the input shape, the sizes a
//       runtime needs for static buffers, and the layer table;
//   #define P_INPUT_SIZE, P_OUTPUT_SIZE, P_MAX_ACTIVATION, P_N_LAYERS
//       (upper case) as compile-time constants for those buffers.
//
// The nn_fw_* types are defined once (guarded) so that several generated
// headers can be included together. The header is C99 and C++ alike.
// examples/firmware_infer.cpp walks the table with plain loops.
//
// Exit status: 0 written; 1 the model could not be loaded or written; 2 usage.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "nn.hpp"

namespace {

void usage(const char* prog) {
    std::fprintf(stderr,
                 "usage: %s model.safetensors out.h [--name prefix]\n"
                 "  writes a C header of const float arrays (P_<tensor>) and a layer table\n"
                 "  (P_layers, P_model) for prefix P (default: out.h's base name)\n",
                 prog);
}

// A C identifier from s: letters, digits and '_' kept, anything else '_',
// and a leading '_' when it would start with a digit.
std::string c_ident(const std::string& s) {
    std::string r;
    for (char c : s) r += std::isalnum((unsigned char)c) ? c : '_';
    if (r.empty() || std::isdigit((unsigned char)r[0])) r = "_" + r;
    return r;
}

// The array for tensor `tn` ("0.weight" -> P_0_weight).
std::string array_ident(const std::string& prefix, const std::string& tn) {
    std::string r = prefix + "_";
    for (char c : tn) r += std::isalnum((unsigned char)c) ? c : '_';
    return r;
}

const char* base_name(const char* path) {
    const char* s = std::strrchr(path, '/');
    return s ? s + 1 : path;
}

std::string upper(std::string s) {
    for (char& c : s) c = (char)std::toupper((unsigned char)c);
    return s;
}

// A float literal that reads back as exactly v.
std::string flit(float v) {
    char b[48];
    std::snprintf(b, sizeof b, "%.9g", (double)v);
    std::string s = b;
    if (s.find_first_of(".e") == std::string::npos) s += ".0";
    return s + "f";
}

std::string shape_init(const nn::Shape& s) {
    std::string r = "{";
    for (int d = 0; d < nn::kMaxDims; ++d) r += (d ? ", " : "") + std::to_string(d < s.ndim ? s.dim[d] : 0);
    return r + "}";
}

// The file's tensor name for a layer's parameter (nn::save's rule).
std::string tensor_name(const nn::Layer& L, int index, const char* param) {
    return (L.user_named ? std::string(L.name) : std::to_string(index)) + "." + param;
}

const char* kind_macro(nn::LayerKind k) {
    switch (k) {
        case nn::LayerKind::Dense: return "NN_FW_DENSE";
        case nn::LayerKind::Activation: return "NN_FW_ACTIVATION";
        case nn::LayerKind::Dropout: return "NN_FW_DROPOUT";
        case nn::LayerKind::Flatten: return "NN_FW_FLATTEN";
        case nn::LayerKind::Custom: return "NN_FW_CUSTOM";
        case nn::LayerKind::Conv2D: return "NN_FW_CONV2D";
        case nn::LayerKind::MaxPool2D: return "NN_FW_MAXPOOL2D";
        case nn::LayerKind::AvgPool2D: return "NN_FW_AVGPOOL2D";
        case nn::LayerKind::GlobalAvgPool: return "NN_FW_GLOBALAVGPOOL";
        case nn::LayerKind::BatchNorm: return "NN_FW_BATCHNORM";
        case nn::LayerKind::Recurrent: return "NN_FW_RECURRENT";
        case nn::LayerKind::Embedding: return "NN_FW_EMBEDDING";
    }
    return "?";
}

// The shared types; the enum values are nn's (LayerKind, Act, RnnCell).
const char* kTypes = R"(#ifndef NN_FW_TYPES_DEFINED
#define NN_FW_TYPES_DEFINED
/* Layer kinds (nn::LayerKind). */
enum {
    NN_FW_DENSE = 0,         /* y = act(W x + b) per row; on (T, in) samples per step */
    NN_FW_ACTIVATION = 1,    /* act elementwise; Softmax over the whole sample */
    NN_FW_DROPOUT = 2,       /* identity at inference */
    NN_FW_FLATTEN = 3,       /* identity on the data */
    NN_FW_CUSTOM = 4,
    NN_FW_CONV2D = 5,        /* (C, H, W) samples, zero padding */
    NN_FW_MAXPOOL2D = 6,     /* padding never wins the max */
    NN_FW_AVGPOOL2D = 7,     /* count_include_pad picks the divisor */
    NN_FW_GLOBALAVGPOOL = 8, /* (C, H, W) -> (C) */
    NN_FW_BATCHNORM = 9,     /* eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias */
    NN_FW_RECURRENT = 10,    /* PyTorch's RNN/LSTM/GRU equations, batch first */
    NN_FW_EMBEDDING = 11     /* token ids (as floats) -> rows of weight */
};
/* Activations (nn::Act). Dense's Softmax is over its units. */
enum { NN_FW_ACT_NONE = 0, NN_FW_ACT_RELU = 1, NN_FW_ACT_LEAKY_RELU = 2, NN_FW_ACT_SIGMOID = 3,
       NN_FW_ACT_TANH = 4, NN_FW_ACT_SOFTMAX = 5 };
/* Recurrent cells (nn::RnnCell); gates in PyTorch's order. */
enum { NN_FW_RNN_TANH = 0, NN_FW_RNN_RELU = 1, NN_FW_LSTM = 2, NN_FW_GRU = 3 };

typedef struct nn_fw_param {
    const char* name;    /* "weight", "bias", "running_mean", "weight_ih_l0", ... */
    const float* data;
    int ndim;
    int shape[4];
    unsigned long size;  /* elements */
} nn_fw_param;

typedef struct nn_fw_layer {
    int kind;                 /* NN_FW_DENSE, ... */
    const char* type;         /* "Dense", "ReLU", "Conv2D", ... */
    int in_ndim, in_shape[4];   /* per sample, batch excluded */
    int out_ndim, out_shape[4];
    int act;                  /* NN_FW_ACT_*: Dense's fused one or an Activation layer's */
    float slope;              /* LeakyReLU */
    int in_features, units;   /* Dense */
    int in_channels, out_channels, groups;                       /* Conv2D (BatchNorm: in_channels) */
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;    /* Conv2D, pooling */
    int dilation_h, dilation_w;
    int count_include_pad;    /* AvgPool2D */
    float eps;                /* BatchNorm */
    int affine;               /* BatchNorm: weight and bias come first */
    float rate;               /* Dropout (unused at inference) */
    int cell, input_size, hidden_size, num_layers, return_sequences;  /* Recurrent */
    int num_embeddings, embedding_dim;                                /* Embedding */
    int n_params;
    const nn_fw_param* params;  /* nn's order: weight, bias, ... (null when none) */
} nn_fw_layer;

typedef struct nn_fw_model {
    const char* name;
    int input_ndim, input_shape[4];  /* per sample */
    unsigned long input_size;        /* floats per sample in */
    unsigned long output_size;       /* floats per sample out */
    unsigned long max_activation;    /* largest per-sample tensor between layers */
    unsigned long param_count;
    int n_layers;
    const nn_fw_layer* layers;
} nn_fw_model;

#if defined(__GNUC__)
#define NN_FW_UNUSED __attribute__((unused))
#else
#define NN_FW_UNUSED
#endif
#endif /* NN_FW_TYPES_DEFINED */
)";

}  // namespace

int main(int argc, char** argv) {
    const char* in_path = nullptr;
    const char* out_path = nullptr;
    std::string prefix;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--name")) {
            if (i + 1 >= argc) {
                usage(argv[0]);
                return 2;
            }
            prefix = argv[++i];
        } else if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
            usage(argv[0]);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            std::fprintf(stderr, "%s: unknown option %s\n", argv[0], argv[i]);
            usage(argv[0]);
            return 2;
        } else if (!in_path) {
            in_path = argv[i];
        } else if (!out_path) {
            out_path = argv[i];
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (!in_path || !out_path) {
        usage(argv[0]);
        return 2;
    }
    if (prefix.empty()) {
        std::string base = out_path;
        const size_t slash = base.find_last_of('/');
        if (slash != std::string::npos) base = base.substr(slash + 1);
        const size_t dot = base.find('.');
        if (dot != std::string::npos) base = base.substr(0, dot);
        prefix = base;
    }
    if (c_ident(prefix) != prefix) {
        std::fprintf(stderr, "%s: --name \"%s\" is not a C identifier (letters, digits, '_'; not a digit first)\n",
                     argv[0], prefix.c_str());
        return 2;
    }

    nn::CompileOptions co;
    co.max_batch = 1;
    nn::Model m;
    nn::Status st = nn::load_model(in_path, co, &m);
    if (!st) {
        std::fprintf(stderr, "nn-export: %s\n", st.message());
        return 1;
    }

    std::string h;
    char b[512];
    const std::string P = prefix, PU = upper(prefix);
    std::snprintf(b, sizeof b,
                  "/* %s — generated by nn-export from %s; do not edit.\n"
                  " * %d layers, %zu parameters (%zu bytes of float32). The arrays use nn's\n"
                  " * (PyTorch's) layouts; tools/nn_export.cpp describes the tables. */\n",
                  base_name(out_path), base_name(in_path), m.size(), m.param_count(false), m.param_count(false) * sizeof(float));
    h += b;
    const std::string guard = PU + "_NN_FW_H";
    h += "#ifndef " + guard + "\n#define " + guard + "\n\n";
    h += kTypes;

    // The architecture the file carried, for the reader.
    nn::SafeTensors f;
    if ((st = nn::safetensors_load(in_path, &f)) && f.meta("nn.architecture")) {
        h += "\n/* Architecture (nn.architecture):\n";
        std::string a = f.meta("nn.architecture");
        size_t p = 0;
        while (p < a.size()) {
            size_t e = a.find('\n', p);
            if (e == std::string::npos) e = a.size();
            std::string line = a.substr(p, e - p);
            for (size_t k; (k = line.find("*/")) != std::string::npos;) line.replace(k, 2, "* /");
            if (!line.empty()) h += " *   " + line + "\n";
            p = e + 1;
        }
        h += " */\n";
    }

    // Parameters.
    std::set<std::string> idents;
    h += "\n/* Parameters. */\n";
    for (int i = 0; i < m.size(); ++i) {
        const nn::Layer& L = m.layers[(size_t)i];
        for (int k = 0; k < L.n_params; ++k) {
            const nn::Tensor& t = L.params[k];
            const std::string tn = tensor_name(L, i, L.param_name[k]);
            const std::string id = array_ident(P, tn);
            if (!idents.insert(id).second) {
                std::fprintf(stderr, "nn-export: tensors of %s map to the same C name %s; rename a layer\n", in_path,
                             id.c_str());
                return 1;
            }
            char sb[64];
            const size_t n = t.numel();
            std::snprintf(b, sizeof b, "/* \"%s\" %s */\nstatic const float %s[%zu] = {", tn.c_str(),
                          nn::shape_str(t.shape, sb, sizeof sb), id.c_str(), n);
            h += b;
            for (size_t j = 0; j < n; ++j) {
                if (!std::isfinite(t.data[j])) {
                    std::fprintf(stderr, "nn-export: %s: tensor \"%s\" holds %g at index %zu; not exported\n", in_path,
                                 tn.c_str(), (double)t.data[j], j);
                    return 1;
                }
                h += j % 8 == 0 ? "\n    " : " ";
                h += flit(t.data[j]);
                if (j + 1 < n) h += ",";
            }
            h += "\n};\n";
        }
    }

    // Per-layer parameter lists.
    h += "\n/* Each layer's parameters, in nn's order. */\n";
    for (int i = 0; i < m.size(); ++i) {
        const nn::Layer& L = m.layers[(size_t)i];
        if (!L.n_params) continue;
        h += "static const nn_fw_param " + P + "_params_" + std::to_string(i) + "[" + std::to_string(L.n_params) +
             "] = {\n";
        for (int k = 0; k < L.n_params; ++k) {
            const std::string tn = tensor_name(L, i, L.param_name[k]);
            const std::string id = array_ident(P, tn);
            std::snprintf(b, sizeof b, "    {\"%s\", %s, %d, %s, %zuUL},\n", L.param_name[k], id.c_str(),
                          L.params[k].shape.ndim, shape_init(L.params[k].shape).c_str(), L.params[k].numel());
            h += b;
        }
        h += "};\n";
    }

    // The layer table.
    size_t max_act = m.input.numel();
    h += "\n/* The layers, in order. Fields as nn_fw_layer: kind, type, in_ndim, in_shape, out_ndim, out_shape;\n"
         " * act, slope, in_features, units; in_channels, out_channels, groups, kernel_h, kernel_w,\n"
         " * stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, count_include_pad; eps, affine,\n"
         " * rate, cell, input_size, hidden_size, num_layers, return_sequences, num_embeddings,\n"
         " * embedding_dim, n_params, params. Fields that do not apply to a kind are 0. */\n"
         "static const nn_fw_layer " + P + "_layers[" + std::to_string(m.size()) +
         "] = {\n";
    for (int i = 0; i < m.size(); ++i) {
        const nn::Layer& L = m.layers[(size_t)i];
        if (L.kind == nn::LayerKind::Custom) {
            std::fprintf(stderr, "nn-export: layer %d \"%s\" is a custom layer: no firmware description\n", i, L.name);
            return 1;
        }
        max_act = std::max(max_act, L.out_shape.numel());
        const nn::Shape& in = L.in_shape;
        const nn::LayerKind K = L.kind;
        const bool dense = K == nn::LayerKind::Dense, conv = K == nn::LayerKind::Conv2D;
        const bool pool = K == nn::LayerKind::MaxPool2D || K == nn::LayerKind::AvgPool2D;
        const bool bn = K == nn::LayerKind::BatchNorm, rnn = K == nn::LayerKind::Recurrent;
        const bool emb = K == nn::LayerKind::Embedding;
        const bool has_act = dense || K == nn::LayerKind::Activation;
        // Padding as numbers: Same pads dilation * (kernel - 1) / 2 a side.
        int ph = L.padding.h, pw = L.padding.w;
        if (conv && L.padding.mode == nn::PadMode::Same)
            ph = L.dilation.h * (L.kernel.h - 1) / 2, pw = L.dilation.w * (L.kernel.w - 1) / 2;
        if (conv && L.padding.mode == nn::PadMode::Valid) ph = pw = 0;
        const bool win = conv || pool;  // has a window
        const std::string params = L.n_params ? P + "_params_" + std::to_string(i) : std::string("0");
        std::snprintf(b, sizeof b,
                      "    {%s, \"%s\", %d, %s, %d, %s,\n"
                      "     %d, %s, %d, %d,\n"
                      "     %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d,\n",
                      kind_macro(K), L.type_name(), in.ndim, shape_init(in).c_str(), L.out_shape.ndim,
                      shape_init(L.out_shape).c_str(), has_act ? (int)L.act : 0,
                      flit(has_act ? L.leaky_slope : 0.0f).c_str(), dense ? in.dim[in.ndim - 1] : 0,
                      dense ? L.units : 0, conv || bn ? in.dim[0] : 0, conv ? L.out_channels : 0, conv ? L.groups : 0,
                      win ? L.kernel.h : 0, win ? L.kernel.w : 0, win ? L.stride.h : 0, win ? L.stride.w : 0,
                      win ? ph : 0, win ? pw : 0, conv ? L.dilation.h : 0, conv ? L.dilation.w : 0,
                      K == nn::LayerKind::AvgPool2D && L.count_include_pad ? 1 : 0);
        h += b;
        std::snprintf(b, sizeof b, "     %s, %d, %s, %d, %d, %d, %d, %d, %d, %d, %d, %s},  /* %d */\n",
                      flit(bn ? L.eps : 0.0f).c_str(), bn && L.affine ? 1 : 0,
                      flit(K == nn::LayerKind::Dropout ? L.rate : 0.0f).c_str(), rnn ? (int)L.cell : 0,
                      rnn ? in.dim[in.ndim - 1] : 0, rnn ? L.hidden_size : 0, rnn ? L.num_layers : 0,
                      rnn && L.return_sequences ? 1 : 0, emb ? L.num_embeddings : 0, emb ? L.embedding_dim : 0,
                      L.n_params, params.c_str(), i);
        h += b;
    }
    h += "};\n";

    const nn::Shape out = m.output_shape();
    std::snprintf(b, sizeof b,
                  "\nstatic const nn_fw_model %s_model NN_FW_UNUSED = {\n"
                  "    \"%s\", %d, %s, %zuUL, %zuUL, %zuUL, %zuUL, %d, %s_layers};\n\n"
                  "#define %s_INPUT_SIZE %zu\n#define %s_OUTPUT_SIZE %zu\n#define %s_MAX_ACTIVATION %zu\n"
                  "#define %s_N_LAYERS %d\n\n#endif /* %s */\n",
                  P.c_str(), P.c_str(), m.input.ndim, shape_init(m.input).c_str(), m.input.numel(), out.numel(), max_act,
                  m.param_count(false), m.size(), P.c_str(), PU.c_str(), m.input.numel(), PU.c_str(), out.numel(),
                  PU.c_str(), max_act, PU.c_str(), m.size(), guard.c_str());
    h += b;

    // Atomically, as nn writes its files.
    const std::string tmp = std::string(out_path) + ".tmp";
    FILE* fo = std::fopen(tmp.c_str(), "wb");
    if (!fo) {
        std::fprintf(stderr, "nn-export: cannot create %s: %s\n", tmp.c_str(), std::strerror(errno));
        return 1;
    }
    bool ok = std::fwrite(h.data(), 1, h.size(), fo) == h.size();
    ok = std::fflush(fo) == 0 && ok;
    ok = std::fclose(fo) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), out_path) != 0) {
        std::fprintf(stderr, "nn-export: writing %s failed: %s\n", out_path, std::strerror(errno));
        std::remove(tmp.c_str());
        return 1;
    }
    std::printf("nn-export: %s -> %s (prefix %s, %d layers, %zu parameters)\n", in_path, out_path, P.c_str(), m.size(),
                m.param_count(false));
    return 0;
}
