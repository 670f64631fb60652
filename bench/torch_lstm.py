#!/usr/bin/python3
"""PyTorch CPU side of bench/peers.sh's lstm section: one LSTM training step.

    /usr/bin/python3 bench/torch_lstm.py [--steps 100] [--warmup 10] [--threads 1] [--seed 0]

The work matches BM_LstmTrainStep in bench/bench_rnn.cpp, step for step:
  layer      torch.nn.LSTM(64, 128, batch_first=True), one layer, PyTorch's
             default init; h0 = c0 = 0 (not passed)
  data       x (32, 50, 64) and target (32, 50, 128), uniform in [-1, 1),
             made once; x takes no gradient
  per step   zero_grad, forward, MSE loss (mean over all outputs), backward,
             Adam step (lr 1e-3, default betas and eps)
  timing     --warmup untimed steps, then --steps steps timed one by one;
             the median is reported
Denormals are flushed to zero, as nn's side does (nn::flush_denormals).

Prints one line a script can parse:
    RESULT peer=pytorch work=lstm_step ms_per_step=M seconds_per_step=S ...
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0 or a.threads < 1:
        ap.error("--steps and --threads take whole numbers >= 1, --warmup >= 0")

    # OpenBLAS (under PyTorch's matrix products on Debian) sizes its pool
    # when it loads: set the thread count before importing torch.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(a.threads)
    except RuntimeError:
        pass
    torch.set_flush_denormal(True)
    torch.manual_seed(a.seed)

    B, T, IN, H = 32, 50, 64, 128
    lstm = torch.nn.LSTM(IN, H, num_layers=1, batch_first=True)
    x = torch.rand(B, T, IN) * 2 - 1
    target = torch.rand(B, T, H) * 2 - 1
    opt = torch.optim.Adam(lstm.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        y, _ = lstm(x)
        loss = F.mse_loss(y, target)
        loss.backward()
        opt.step()
        return loss

    lstm.train()
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    loss = loss.item()
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
    print(f"RESULT peer=pytorch work=lstm_step batch={B} seq={T} input={IN} hidden={H} "
          f"ms_per_step={median * 1e3:.3f} seconds_per_step={median:.6f} "
          f"min_ms={times[0] * 1e3:.3f} steps={n} loss={loss:.5f} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
