#!/usr/bin/python3
"""How far the seed moves test accuracy in PyTorch, for the accuracy figures of issues 2 and 4.

usage: torch_seeds.py MODEL EPOCHS INIT NORM SEED
  MODEL  mlp (784-128-128-10, ReLU) or lenet (the lenet_fashion network)
  INIT   torch (PyTorch's default), glorot_uniform or he_uniform; the last two
         with zero bias, as nn's --init
  NORM   none (pixels/255) or std (then minus the training mean, over its std)
Trains with Adam 1e-3, batch 64 (the last batch of an epoch is the remainder,
as nn's fit), one thread, torch.manual_seed(SEED), on Fashion-MNIST from the
Debian package path. Prints: MODEL INIT NORM SEED and the test accuracy after
each epoch. torch_ref.py is the timing reference; this one only varies seeds.
"""
import gzip, struct, sys
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

D = "/usr/share/datasets/fashion-mnist/"

def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    nd = struct.unpack(">I", data[:4])[0] & 0xff
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)

def network(name):
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))

def main():
    name, epochs, init, norm, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    load = lambda f: torch.from_numpy(idx(D + f).astype(np.float32) / 255).unsqueeze(1)
    xtr, xte = load("train-images-idx3-ubyte.gz"), load("t10k-images-idx3-ubyte.gz")
    ytr = torch.from_numpy(idx(D + "train-labels-idx1-ubyte.gz").astype(np.int64))
    yte = torch.from_numpy(idx(D + "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    if norm == "std":
        mu, sd = xtr.mean().item(), xtr.std().item()
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    m = network(name)
    for layer in m.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and init != "torch":
            if init == "he_uniform":
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            elif init == "glorot_uniform":
                nn.init.xavier_uniform_(layer.weight)
            else:
                sys.exit("unknown init " + init)
            nn.init.zeros_(layer.bias)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    n, accs = xtr.shape[0], []
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(n)
        for i in range(0, n, 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(m(xtr[b]), ytr[b]).backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            accs.append((m(xte).argmax(1) == yte).float().mean().item())
    print(name, init, norm, seed, " ".join(f"{a:.4f}" for a in accs), flush=True)

main()
