#!/usr/bin/python3
"""PyTorch <-> nn model files: the round trip of issue 7 (tests/test_interop.cpp).

    torch_interop.py export DIR   PyTorch models -> DIR/<model>.safetensors,
                                  DIR/<model>_input.bin, DIR/<model>_output.bin
    torch_interop.py check DIR    DIR/<model>_nn.safetensors (written by nn::save)
                                  into PyTorch, run on DIR/<model>_input.bin, compared
                                  with DIR/<model>_nn_output.bin (nn's outputs)

Models (<model> is mlp, lenet, lstm, gru), each the nn::Model a test builds, with its
layer indices, which name the tensors as nn.Sequential's state_dict does:

    mlp    input (784)        0 Dense(784,128,ReLU) 1 Dense(128,128,ReLU) 2 Dense(128,10)
    lenet  input (1,28,28)    0 Conv2D(1,6,5,pad 2) 1 ReLU 2 MaxPool2D(2)
                              3 Conv2D(6,16,5) 4 ReLU 5 MaxPool2D(2) 6 Flatten
                              7 Dense(400,120,ReLU) 8 Dense(120,84,ReLU) 9 Dense(84,10)
    lstm   input (10,4)       0 LSTM(4,32, last state) 1 Dense(32,3)
    gru    input (10,4)       0 GRU(4,32, 2 layers, last state) 1 Dense(32,3)

A Dense with a fused activation is one nn layer, so here it is one module (a
Linear that applies its activation) and keeps one index. The .bin files are
raw little-endian float32, batch first; the batch size is the file size over
the sample size.

safetensors is written and read here with struct and json (the `safetensors`
package is not needed): 8 bytes little-endian header length N, N bytes of
JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{...}} padded with spaces to a multiple of 8, then the data section.

Exit status: 0 on success; 1 when a difference exceeds TOLERANCE or a file is
missing or wrong; 2 on bad usage.
"""
import json
import os
import struct
import sys

import numpy as np
import torch
from torch import nn

TOLERANCE = 1e-5
MODELS = ("mlp", "lenet", "lstm", "gru")
LSTM_T, LSTM_F, LSTM_H, LSTM_OUT = 10, 4, 32, 3
BATCH = 8


class Dense(nn.Linear):
    """nn::Dense: y = act(x W^T + b), one layer (one state_dict index)."""

    def __init__(self, in_features, out_features, relu=False):
        super().__init__(in_features, out_features)
        self.relu = relu

    def forward(self, x):
        y = super().forward(x)
        return torch.relu(y) if self.relu else y


class LastStateLSTM(nn.LSTM):
    """nn::LSTM(return_sequences=false): batch-first, the last step's hidden state."""

    def __init__(self, input_size, hidden_size, num_layers=1):
        super().__init__(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x):
        out, _ = super().forward(x)
        return out[:, -1, :]


class LastStateGRU(nn.GRU):
    """nn::GRU(return_sequences=false): batch-first, the last step's hidden state."""

    def __init__(self, input_size, hidden_size, num_layers=1):
        super().__init__(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x):
        out, _ = super().forward(x)
        return out[:, -1, :]


# nn's architecture text (nn_impl.cpp arch_write): "input d0,d1,..." then a
# line per layer, "Kind key=value ...". Enum values: Act None 0, ReLU 1;
# PadMode Explicit 0; RnnCell LSTM 2, GRU 3.
SLOPE = "%.9g" % float(np.float32(0.01))  # LeakyReLU slope, unused here


def arch_dense(i, o, relu):
    return "Dense in=%d units=%d act=%d slope=%s bias=1 l1=0 l2=0" % (i, o, 1 if relu else 0, SLOPE)


def arch_conv(i, o, k, pad):
    return "Conv2D in=%d out=%d k=%d,%d s=1,1 p=%d,%d pm=0 d=1,1 g=1 bias=1" % (i, o, k, k, pad, pad)


ARCH_RELU = "Activation act=1 slope=" + SLOPE
ARCH_POOL2 = "MaxPool2D k=2,2 s=2,2 p=0,0 cip=1"


def build(name):
    """(module, sample shape, architecture text) of a model."""
    if name == "mlp":
        m = nn.Sequential(Dense(784, 128, True), Dense(128, 128, True), Dense(128, 10))
        arch = ["input 784", arch_dense(784, 128, True), arch_dense(128, 128, True), arch_dense(128, 10, False)]
        return m, (784,), arch
    if name == "lenet":
        m = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            Dense(400, 120, True), Dense(120, 84, True), Dense(84, 10))
        arch = ["input 1,28,28", arch_conv(1, 6, 5, 2), ARCH_RELU, ARCH_POOL2, arch_conv(6, 16, 5, 0), ARCH_RELU,
                ARCH_POOL2, "Flatten", arch_dense(400, 120, True), arch_dense(120, 84, True),
                arch_dense(84, 10, False)]
        return m, (1, 28, 28), arch
    if name == "lstm":
        m = nn.Sequential(LastStateLSTM(LSTM_F, LSTM_H), Dense(LSTM_H, LSTM_OUT))
        arch = ["input %d,%d" % (LSTM_T, LSTM_F),
                "Recurrent cell=2 in=%d hidden=%d layers=1 seq=0 bptt=0" % (LSTM_F, LSTM_H),
                arch_dense(LSTM_H, LSTM_OUT, False)]
        return m, (LSTM_T, LSTM_F), arch
    if name == "gru":  # two stacked layers: weight_ih_l1 and friends too
        m = nn.Sequential(LastStateGRU(LSTM_F, LSTM_H, 2), Dense(LSTM_H, LSTM_OUT))
        arch = ["input %d,%d" % (LSTM_T, LSTM_F),
                "Recurrent cell=3 in=%d hidden=%d layers=2 seq=0 bptt=0" % (LSTM_F, LSTM_H),
                arch_dense(LSTM_H, LSTM_OUT, False)]
        return m, (LSTM_T, LSTM_F), arch
    raise ValueError(name)


def make_input(name, sample, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH,) + sample
    if name in ("lstm", "gru"):
        return torch.randn(shape, generator=g, dtype=torch.float32)
    return torch.rand(shape, generator=g, dtype=torch.float32)  # image-like, [0, 1)


# --- safetensors, directly -------------------------------------------------------

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float64): "F64"}


def st_write(path, tensors, metadata):
    """tensors: list of (name, numpy array); metadata: dict of str -> str."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": NP_TO_ST[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = dict(metadata)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def st_read(path):
    """{name: float32 numpy array}, metadata. Checks the layout it relies on."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("%s: %d bytes, shorter than the 8-byte header length" % (path, len(data)))
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("%s: header length %d runs past the end (%d bytes)" % (path, n, len(data)))
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n:]
    meta = header.pop("__metadata__", {})
    out, covered = {}, 0
    for name, e in header.items():
        dt, shape, (b, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
        if not 0 <= b <= end <= len(body):
            raise ValueError("%s: tensor %s: data_offsets [%d, %d] outside the data section (%d bytes)"
                             % (path, name, b, end, len(body)))
        raw = bytes(body[b:end])
        if dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in DTYPES:
            a = np.frombuffer(raw, dtype=np.dtype(DTYPES[dt]).newbyteorder("<"))
        else:
            raise ValueError("%s: tensor %s: dtype %s not handled here" % (path, name, dt))
        if a.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError("%s: tensor %s: %d values for shape %s" % (path, name, a.size, shape))
        out[name] = a.reshape(shape)
        covered += end - b
    if covered != len(body):
        raise ValueError("%s: tensors cover %d of the %d data bytes" % (path, covered, len(body)))
    return out, meta


def read_f32(path):
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype="<f4")


# --- subcommands -------------------------------------------------------------------

SEEDS = {"mlp": 1, "lenet": 2, "lstm": 3, "gru": 4}


def export(d):
    os.makedirs(d, exist_ok=True)
    for name in MODELS:
        torch.manual_seed(SEEDS[name])
        model, sample, arch = build(name)
        model.eval()
        x = make_input(name, sample, 100 + SEEDS[name])
        with torch.no_grad():
            y = model(x)
        tensors = [(k, v.detach().cpu().numpy()) for k, v in model.state_dict().items()]
        st_write(os.path.join(d, name + ".safetensors"), tensors,
                 {"format": "pt", "nn.architecture": "\n".join(arch) + "\n"})
        x.numpy().astype("<f4").tofile(os.path.join(d, name + "_input.bin"))
        y.numpy().astype("<f4").tofile(os.path.join(d, name + "_output.bin"))
        print("export %s: %d tensors, input %s, output %s" % (name, len(tensors), tuple(x.shape), tuple(y.shape)))
    return 0


def check(d):
    worst_status = 0
    for name in MODELS:
        path = os.path.join(d, name + "_nn.safetensors")
        try:
            tensors, _ = st_read(path)
            model, sample, _ = build(name)
            want = model.state_dict()
            missing = sorted(set(want) - set(tensors))
            unexpected = sorted(set(tensors) - set(want))
            if missing or unexpected:
                raise ValueError("%s: missing %s, unexpected %s" % (path, missing, unexpected))
            sd = {}
            for k, v in want.items():
                t = tensors[k]
                if tuple(t.shape) != tuple(v.shape):
                    raise ValueError("%s: %s has shape %s, PyTorch wants %s" % (path, k, t.shape, tuple(v.shape)))
                sd[k] = torch.from_numpy(np.array(t, dtype=np.float32))
            model.load_state_dict(sd, strict=True)
            model.eval()
            xs = read_f32(os.path.join(d, name + "_input.bin"))
            per = int(np.prod(sample))
            if xs.size == 0 or xs.size % per:
                raise ValueError("%s_input.bin: %d floats, not whole samples of %d" % (name, xs.size, per))
            x = torch.from_numpy(xs.copy()).reshape((-1,) + sample)
            with torch.no_grad():
                y = model(x).numpy().reshape(-1)
            ref = read_f32(os.path.join(d, name + "_nn_output.bin"))
            if ref.size != y.size:
                raise ValueError("%s_nn_output.bin: %d floats, PyTorch gives %d" % (name, ref.size, y.size))
            diff = float(np.max(np.abs(ref.astype(np.float64) - y.astype(np.float64))))
            ok = diff <= TOLERANCE and np.all(np.isfinite(y))
            print("check %s: max abs diff %.3g over %d outputs (tolerance %g) %s"
                  % (name, diff, y.size, TOLERANCE, "ok" if ok else "FAILED"))
            if not ok:
                worst_status = 1
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            print("check %s: FAILED: %s" % (name, e))
            worst_status = 1
    return worst_status


def main(argv):
    if len(argv) != 3 or argv[1] not in ("export", "check"):
        sys.stderr.write("usage: %s export DIR | check DIR\n" % argv[0])
        return 2
    torch.set_num_threads(1)
    return export(argv[2]) if argv[1] == "export" else check(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
