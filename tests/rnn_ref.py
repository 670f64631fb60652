#!/usr/bin/python3
"""PyTorch reference values for tests/test_rnn.cpp.

    /usr/bin/python3 tests/rnn_ref.py > tests/rnn_ref_data.inc

For each cell of CELLS (nn.LSTM, nn.GRU, nn.RNN with tanh), a fixed module
(input 3, hidden 4, 2 stacked layers, batch_first) with weights from
torch.manual_seed, run on a fixed batch of 3 sequences of T = 4 steps with
lengths LENGTHS (unsorted: pack_padded_sequence(enforce_sorted=False)).
Two runs per cell:

  Seq   zero initial states; the loss sum(out * r_seq) over the padded
        output (B, T, H) (pad_packed_sequence writes 0 at padded steps).
  Last  given initial states h0 (and c0); the loss sum(h_n[-1] * r_last)
        over the top layer's final state (B, H): the state at each
        sample's last valid step (what return_sequences=false returns).

Recorded per run: the output, h_n (and c_n), and the gradients of the loss
with respect to the input and every parameter, in state_dict order
(weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l1, ...),
concatenated. Every value is float32; the C++ test reads the same inputs.
"""
import math
import struct

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

INPUT, HIDDEN, LAYERS, BATCH, T = 3, 4, 2, 3, 4
LENGTHS = [4, 2, 3]
CELLS = [("Lstm", "LSTM"), ("Gru", "GRU"), ("Rnn", "RnnTanh")]


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
    if isinstance(t, (list, tuple)):
        vals = list(t)
    else:
        vals = t.detach().reshape(-1).tolist()
    if ctype == "float":
        body = ", ".join(lit(v) for v in vals)
    else:
        body = ", ".join(str(int(v)) for v in vals)
    print("static const %s %s[%d] = {%s};" % (ctype, name, len(vals), body))
    return name


def make(kind, seed):
    torch.manual_seed(seed)
    args = dict(input_size=INPUT, hidden_size=HIDDEN, num_layers=LAYERS, batch_first=True)
    if kind == "LSTM":
        m = torch.nn.LSTM(**args)
    elif kind == "GRU":
        m = torch.nn.GRU(**args)
    else:
        m = torch.nn.RNN(nonlinearity="tanh", **args)
    # Twice PyTorch's initial spread, so that the gates leave their linear range.
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2.0)
    return m


def run(m, x, lengths, h0, c0):
    """Output (B, T, H) padded with zeros, h_n, c_n (or None)."""
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    if isinstance(m, torch.nn.LSTM):
        hc = None if h0 is None else (h0, c0)
        out, (hn, cn) = m(packed, hc)
    else:
        out, hn = m(packed, h0)
        cn = None
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    return out, hn, cn


def grads(m, x):
    g = [x.grad.reshape(-1)]
    pg = [p.grad.reshape(-1) for p in m.state_dict(keep_vars=True).values()]
    return g[0], torch.cat(pg)


def cell_case(pre, kind, seed):
    m = make(kind, seed)
    names = list(m.state_dict().keys())
    expect = []
    for k in range(LAYERS):
        expect += ["weight_ih_l%d" % k, "weight_hh_l%d" % k, "bias_ih_l%d" % k, "bias_hh_l%d" % k]
    assert names == expect, names
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(BATCH, T, INPUT, generator=gen)
    r_seq = torch.rand(BATCH, T, HIDDEN, generator=gen) * 2 - 1
    r_last = torch.rand(BATCH, HIDDEN, generator=gen) * 2 - 1
    h0 = torch.randn(LAYERS, BATCH, HIDDEN, generator=gen) * 0.5
    c0 = torch.randn(LAYERS, BATCH, HIDDEN, generator=gen) * 0.5 if kind == "LSTM" else None
    arr(pre + "X", x)
    arr(pre + "Params", torch.cat([p.detach().reshape(-1) for p in m.state_dict().values()]))
    arr(pre + "RSeq", r_seq)
    arr(pre + "RLast", r_last)
    arr(pre + "H0", h0)
    if c0 is not None:
        arr(pre + "C0", c0)

    # Seq: zero initial states, loss on the whole padded output.
    m.zero_grad()
    xr = x.clone().requires_grad_(True)
    out, hn, cn = run(m, xr, LENGTHS, None, None)
    (out * r_seq).sum().backward()
    dx, dp = grads(m, xr)
    arr(pre + "SeqY", out)
    arr(pre + "SeqHn", hn)
    if cn is not None:
        arr(pre + "SeqCn", cn)
    arr(pre + "SeqDx", dx)
    arr(pre + "SeqDParams", dp)

    # Last: given initial states, loss on the top layer's final state.
    m.zero_grad()
    xr = x.clone().requires_grad_(True)
    out, hn, cn = run(m, xr, LENGTHS, h0, c0)
    (hn[-1] * r_last).sum().backward()
    dx, dp = grads(m, xr)
    arr(pre + "LastY", hn[-1])
    arr(pre + "LastHn", hn)
    if cn is not None:
        arr(pre + "LastCn", cn)
    arr(pre + "LastDx", dx)
    arr(pre + "LastDParams", dp)
    n_params = sum(p.numel() for p in m.parameters())
    return pre, kind, n_params, c0 is not None


def main():
    torch.set_num_threads(1)
    print("// Produced by: /usr/bin/python3 tests/rnn_ref.py > tests/rnn_ref_data.inc")
    print("// torch %s, float32. Generated; do not edit. Included by tests/test_rnn.cpp," % torch.__version__)
    print("// inside namespace rnn_ref, after the RefCase struct.")
    print("constexpr int kInput = %d, kHidden = %d, kLayers = %d, kBatch = %d, kSteps = %d;"
          % (INPUT, HIDDEN, LAYERS, BATCH, T))
    arr("kLengths", LENGTHS, "int32_t")
    rows = [cell_case(pre, kind, 11 + i) for i, (pre, kind) in enumerate(CELLS)]
    print("static const RefCase kRefCases[] = {")
    for pre, kind, n_params, has_c in rows:
        def c(t):
            return pre + t if has_c else "nullptr"
        print("    {\"%s\", nn::RnnCell::%s, %d, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s},"
              % (kind, kind, n_params, pre + "X", pre + "Params", pre + "RSeq", pre + "RLast", pre + "H0", c("C0"),
                 pre + "SeqY", pre + "SeqHn", c("SeqCn"), pre + "SeqDx", pre + "SeqDParams",
                 pre + "LastY", pre + "LastHn", c("LastCn"), pre + "LastDx", pre + "LastDParams"))
    print("};")


if __name__ == "__main__":
    main()
