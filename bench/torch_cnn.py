#!/usr/bin/python3
"""PyTorch CPU side of `make bench-peers`: the CNNs of examples/lenet_fashion.cpp and examples/convnet_fashion.cpp.

    /usr/bin/python3 bench/torch_cnn.py --model lenet|convnet [--epochs 1] [--steps 0]
                                        [--batch 64] [--threads 1] [--seed 0]
                                        [--data /usr/share/datasets/fashion-mnist]

The work matches what nn's Model::fit does in build/lenet_fashion and
build/convnet_fashion, step for step (and what /work/shared/tools/torch_ref.py,
the reference the issue quotes, times):
  lenet      Conv2d(1,6,5,pad 2) ReLU MaxPool2d(2) Conv2d(6,16,5) ReLU MaxPool2d(2)
             Flatten Linear(400,120) ReLU Linear(120,84) ReLU Linear(84,10)
  convnet    Conv2d(1,32,5,pad 2) ReLU MaxPool2d(2) Conv2d(32,64,5,pad 2) ReLU
             MaxPool2d(2) Flatten Linear(3136,1024) ReLU Dropout(0.4) Linear(1024,10)
             both with PyTorch's default init, logits out
  loss       cross-entropy on the logits; Adam, lr 1e-3, default betas and eps
  data       Fashion-MNIST as (N, 1, 28, 28), pixels / 255, reshuffled every
             epoch, batches of 64 with the last, partial batch kept
             (60000 = 937 * 64 + 32: 938 steps), or only the first --steps
             batches of each epoch when --steps > 0
  per step   forward (train mode: Dropout active), loss, backward, optimizer
             step, and the batch's loss and correct-guess count read back for
             the epoch's running averages
  timing     each epoch's clock starts after its shuffle and stops after its
             last step (as nn's EpochStats::seconds); the test set is scored
             after training, outside any clock.
The whole training set is turned into float32 / 255 once, before training: the
usual way to feed PyTorch, and no per-batch conversion is charged to it.

Prints one line a script can parse, like the nn examples' RESULT lines:
    RESULT peer=pytorch example=lenet_fashion epochs=E steps_per_epoch=S
           seconds_per_epoch=X ms_per_step=Y test_acc=A ... torch=V
seconds_per_epoch is the mean over all epochs (each side counts its first
epoch), ms_per_step the mean over all timed steps (the epochs' clocks summed,
divided by the steps they ran). Exit status 1 with a message on stderr when
the data cannot be read.
"""
import argparse
import gzip
import os
import struct
import sys
import time

# numpy and torch are imported in main(), once the thread count is known.
np = torch = F = None

EXAMPLE = {"lenet": "lenet_fashion", "convnet": "convnet_fashion"}


def read_idx(path):
    """The array stored in an IDX file (gzipped or plain): uint8, big-endian dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, body has {body.size} bytes")
    return body.reshape(shape)


def load_split(data_dir, prefix):
    """(images as float32 (n, 1, 28, 28) in [0, 1], labels as int64 (n,)) of one split."""
    def find(stem):
        for name in (stem + ".gz", stem):
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"{os.path.join(data_dir, stem)}[.gz] is missing")

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{prefix}: images are {images.shape}, expected (n, 28, 28)")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = torch.from_numpy(images.reshape(images.shape[0], 1, 28, 28).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def build_model(name):
    nn = torch.nn
    if name == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )
    return nn.Sequential(  # convnet
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.4),
        nn.Linear(1024, 10),
    )


def train_epoch(model, opt, x, y, batch, max_steps, gen):
    """One pass over (x, y) in a fresh random order, or its first max_steps
    batches (max_steps > 0); returns (seconds, steps, loss, accuracy)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=gen)
    model.train()
    loss_sum = 0.0
    hits = 0
    seen = 0
    steps = 0
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        if max_steps and steps >= max_steps:
            break
        idx = order[start:start + batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * idx.shape[0]
        hits += (logits.argmax(dim=1) == yb).sum().item()
        seen += idx.shape[0]
        steps += 1
    seconds = time.perf_counter() - t0
    return seconds, steps, loss_sum / seen, hits / seen


def test_accuracy(model, x, y, batch=1000):
    model.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            logits = model(x[start:start + batch])
            hits += (logits.argmax(dim=1) == y[start:start + batch]).sum().item()
    return hits / x.shape[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(EXAMPLE), required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0,
                    help="stop each epoch after this many steps (0: the whole epoch)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--verbose", type=int, default=0, help="1: a line per epoch on stderr")
    a = ap.parse_args()
    if a.epochs < 1 or a.batch < 1 or a.threads < 1 or a.steps < 0:
        ap.error("--epochs, --batch and --threads take whole numbers >= 1, --steps >= 0")

    # torch.set_num_threads sizes PyTorch's own pool, but the OpenBLAS under
    # its matrix products (and under numpy) keeps one thread per core unless
    # told otherwise before it loads: a "one thread" run would use them all.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    global np, torch, F
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(a.threads)
    except RuntimeError:  # already set once in this process
        pass
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    try:
        x_train, y_train = load_split(a.data, "train")
        x_test, y_test = load_split(a.data, "t10k")
    except (OSError, ValueError) as e:
        print(f"torch_cnn.py: cannot read Fashion-MNIST: {e}", file=sys.stderr)
        return 1

    model = build_model(a.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    steps = []
    for e in range(a.epochs):
        seconds, n_steps, loss, acc = train_epoch(model, opt, x_train, y_train, a.batch, a.steps, gen)
        times.append(seconds)
        steps.append(n_steps)
        if a.verbose:
            print(f"epoch {e + 1}/{a.epochs}: {seconds:.3f} s, {n_steps} steps "
                  f"({1e3 * seconds / n_steps:.2f} ms/step), loss {loss:.4f}, accuracy {acc:.4f}",
                  file=sys.stderr)
    test_acc = test_accuracy(model, x_test, y_test)
    per_epoch = sum(times) / len(times)
    ms_per_step = 1e3 * sum(times) / sum(steps)
    epoch_list = ",".join(f"{t:.3f}" for t in times)
    print(f"RESULT peer=pytorch example={EXAMPLE[a.model]} epochs={a.epochs} "
          f"steps_per_epoch={steps[0]} seconds_per_epoch={per_epoch:.3f} "
          f"ms_per_step={ms_per_step:.3f} test_acc={test_acc:.4f} "
          f"epoch_seconds={epoch_list} threads={torch.get_num_threads()} torch={torch.__version__}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
