#!/usr/bin/python3
"""PyTorch reference values for tests/test_pool_norm.cpp.

    /usr/bin/python3 tests/pool_norm_ref.py > tests/pool_norm_ref_data.inc

Pooling: for each case of POOL_CASES, an input x and an upstream gradient dy
(from sin formulas, quantised to multiples of 1/4 so that windows hold equal
maxima and the tie rule is exercised), and torch's outputs and input
gradients for nn.MaxPool2d (with return_indices), nn.AvgPool2d with
count_include_pad=True (the default) and with count_include_pad=False.

Batch norm: for each case of BN_CASES, nn.BatchNorm1d / BatchNorm2d
(eps 1e-5, momentum 0.1) in training mode runs STEPS forward passes on
different inputs; the running statistics after every step, the last step's
output, and dx, dgamma, dbeta for an upstream gradient dy through the last
step are recorded. Then, in eval mode, the output and gradients for one more
input. Every value is float32; the C++ test reads the same inputs.
"""
import math
import struct

import torch

STEPS = 3


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def lit(x):
    x = f32(x)
    if math.isnan(x) or math.isinf(x):
        raise ValueError(x)
    s = "%.9g" % x
    if "e" not in s and "." not in s:
        s += ".0"
    return s + "f"


def arr(name, t, ctype="float"):
    vals = t.detach().reshape(-1).tolist()
    if ctype == "float":
        body = ", ".join(lit(v) for v in vals)
    else:
        body = ", ".join(str(int(v)) for v in vals)
    print("static const %s %s[%d] = {%s};" % (ctype, name, len(vals), body))
    return name


def wave(shape, seed, scale=1.0, quant=None):
    n = 1
    for s in shape:
        n *= s
    v = [scale * math.sin(0.37 * i * (1 + 0.1 * seed) + 1.3 * seed) + 0.5 * math.cos(0.11 * i + seed) for i in range(n)]
    if quant:
        v = [round(x * quant) / quant for x in v]
    return torch.tensor(v, dtype=torch.float32).reshape(shape)


# (N, C, H, W, k, s, p)
POOL_CASES = [
    (2, 3, 5, 7, 3, 2, 1),
    (1, 2, 7, 5, 2, 1, 0),
    (3, 1, 4, 4, 2, 2, 0),
    (1, 2, 3, 3, 3, 1, 1),
    (2, 1, 1, 3, 2, 1, 1),
    (1, 1, 6, 6, 3, 3, 1),
    (1, 1, 28, 28, 2, 2, 0),
    (1, 1, 5, 5, 2, 2, 1),
]

# (N, C, L-shape, affine, offset): L-shape () is BatchNorm1d on (N, C)
BN_CASES = [
    (3, 4, (5, 5), True, 3.0),
    (5, 37, (), True, 2.0),
    (1, 3, (3, 3), False, 50.0),
    (2, 3, (7,), True, -1.0),
    (4, 2, (4, 5), False, 0.5),
]


def pool_cases():
    names = []
    for ci, (N, C, H, W, k, s, p) in enumerate(POOL_CASES):
        x = wave((N, C, H, W), ci + 1, quant=4)
        pre = "kPool%d" % ci
        arr(pre + "X", x)
        mp = torch.nn.MaxPool2d(k, s, p, return_indices=True)
        xr = x.clone().requires_grad_(True)
        y, idx = mp(xr)
        dy = wave(tuple(y.shape), ci + 11)
        y.backward(dy)
        OH, OW = y.shape[2], y.shape[3]
        arr(pre + "Dy", dy)
        arr(pre + "MaxY", y)
        arr(pre + "MaxIdx", idx, "int32_t")
        arr(pre + "MaxDx", xr.grad)
        for tag, cip in (("Avg", True), ("AvgX", False)):
            xr = x.clone().requires_grad_(True)
            y = torch.nn.AvgPool2d(k, s, p, count_include_pad=cip)(xr)
            y.backward(dy)
            arr(pre + tag + "Y", y)
            arr(pre + tag + "Dx", xr.grad)
        names.append((N, C, H, W, k, s, p, OH, OW, pre))
    print("static const PoolCase kPoolCases[] = {")
    for N, C, H, W, k, s, p, OH, OW, pre in names:
        print("    {%d, %d, %d, %d, %d, %d, %d, %d, %d, %s},"
              % (N, C, H, W, k, s, p, OH, OW,
                 ", ".join(pre + t for t in ("X", "Dy", "MaxY", "MaxIdx", "MaxDx", "AvgY", "AvgDx", "AvgXY", "AvgXDx"))))
    print("};")


def bn_cases():
    rows = []
    for ci, (N, C, lshape, affine, offset) in enumerate(BN_CASES):
        L = 1
        for d in lshape:
            L *= d
        shape = (N, C) + lshape
        if len(lshape) == 2:
            bn = torch.nn.BatchNorm2d(C, eps=1e-5, momentum=0.1, affine=affine)
        else:
            bn = torch.nn.BatchNorm1d(C, eps=1e-5, momentum=0.1, affine=affine)
        pre = "kBn%d" % ci
        if affine:
            with torch.no_grad():
                bn.weight.copy_(torch.tensor([f32(1.0 + 0.3 * math.sin(c + 1.0)) for c in range(C)]))
                bn.bias.copy_(torch.tensor([f32(0.2 * math.cos(2.0 * c)) for c in range(C)]))
            arr(pre + "Gamma", bn.weight)
            arr(pre + "Beta", bn.bias)
        # per-channel offsets and spreads, so channels differ in mean and variance
        chan_off = torch.tensor([offset * (1 + 0.5 * c) for c in range(C)], dtype=torch.float32)
        chan_scl = torch.tensor([0.5 + 0.25 * (c % 3) for c in range(C)], dtype=torch.float32)
        bshape = (1, C) + (1,) * len(lshape)
        xs, rms, rvs = [], [], []
        bn.train()
        for step in range(STEPS):
            x = (wave(shape, 20 + 3 * ci + step) * chan_scl.reshape(bshape) + chan_off.reshape(bshape)).float()
            xs.append(x)
            xr = x.clone().requires_grad_(True)
            y = bn(xr)
            rms.append(bn.running_mean.clone())
            rvs.append(bn.running_var.clone())
        dy = wave(shape, 40 + ci)
        y.backward(dy)
        arr(pre + "X", torch.stack(xs))
        arr(pre + "RunMean", torch.stack(rms))
        arr(pre + "RunVar", torch.stack(rvs))
        arr(pre + "Y", y)
        arr(pre + "Dy", dy)
        arr(pre + "Dx", xr.grad)
        if affine:
            arr(pre + "DGamma", bn.weight.grad)
            arr(pre + "DBeta", bn.bias.grad)
            bn.weight.grad = None
            bn.bias.grad = None
        bn.eval()
        xe = (wave(shape, 60 + ci) * chan_scl.reshape(bshape) + chan_off.reshape(bshape)).float()
        xr = xe.clone().requires_grad_(True)
        ye = bn(xr)
        ye.backward(dy)
        arr(pre + "XEval", xe)
        arr(pre + "YEval", ye)
        arr(pre + "DxEval", xr.grad)
        if affine:
            arr(pre + "DGammaEval", bn.weight.grad)
            arr(pre + "DBetaEval", bn.bias.grad)
        rows.append((N, C, L, affine, pre))
    print("static const BnCase kBnCases[] = {")
    for N, C, L, affine, pre in rows:
        def opt(t):
            return pre + t if affine else "nullptr"
        print("    {%d, %d, %d, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s},"
              % (N, C, L, opt("Gamma"), opt("Beta"), pre + "X", pre + "RunMean", pre + "RunVar", pre + "Y",
                 pre + "Dy", pre + "Dx", opt("DGamma"), opt("DBeta"), pre + "XEval", pre + "YEval", pre + "DxEval",
                 opt("DGammaEval"), opt("DBetaEval"), "true" if affine else "false"))
    print("};")


def main():
    torch.set_num_threads(1)
    print("// Produced by: /usr/bin/python3 tests/pool_norm_ref.py > tests/pool_norm_ref_data.inc")
    print("// torch %s, float32. Generated; do not edit. Included by tests/test_pool_norm.cpp," % torch.__version__)
    print("// inside namespace pool_norm_ref, after the PoolCase and BnCase structs.")
    print("constexpr int kSteps = %d;" % STEPS)
    pool_cases()
    bn_cases()


if __name__ == "__main__":
    main()
