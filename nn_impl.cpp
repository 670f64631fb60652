// nn_impl.cpp — the whole library as one translation unit.
//
// Compile this file once and link it with your program. It includes every
// kernel header from kernels/ (the hot loops, each beside its plain
// reference) and then implements the API declared in nn.hpp, in the order
// the tour in nn.hpp introduces it: core types, layers, losses, optimizers,
// data, the model, gradient checking.
#include "nn.hpp"

#include "kernels/simd.hpp"
#include "kernels/gemm.hpp"
#include "kernels/activation.hpp"
#include "kernels/loss.hpp"
#include "kernels/optim.hpp"

#include "parts/prelude.inc"

namespace nn {
#include "parts/core.inc"
#include "parts/layers.inc"
#include "parts/loss.inc"
#include "parts/optim.inc"
#include "parts/data.inc"
#include "parts/model.inc"
#include "parts/gradcheck.inc"
}  // namespace nn
