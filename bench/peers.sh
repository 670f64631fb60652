#!/bin/sh
# bench/peers.sh — nn against its peers, each pair run side by side in this
# one invocation; `make bench-peers` builds the programs and runs this.
#
#   1. GEMM: $PEERS_GEMM (build/peers_gemm) times nn::gemm_f32 against
#      OpenBLAS cblas_sgemm, one thread each, and prints a RATIO line per shape.
#   2. One training epoch of the Fashion-MNIST MLP: build/mlp_fashion against
#      bench/torch_mlp.py (PyTorch CPU, one thread), $PEERS_EPOCHS epochs per
#      run, $PEERS_ROUNDS rounds; the two alternate which goes first each round.
#      Each run reports its mean seconds per epoch (first epoch included on both
#      sides); the RATIO line compares the medians over the rounds.
#
# Every comparison ends in one line of this form:
#   RATIO work=<name> ours=<v> peer=<name> peer_value=<v> unit=<GFLOP/s|s> ratio=<r>
# ratio > 1 always means nn is better: for a rate (GFLOP/s) it is ours / peer,
# for a time (s) it is peer / ours.
#
# A peer that is not installed is skipped with a message; that is not a
# failure (exit 0). A program that fails or prints no result is (exit 1).
#
# Environment (all optional):
#   BUILD          where the nn programs are (build)
#   FASHION        the Fashion-MNIST directory (/usr/share/datasets/fashion-mnist)
#   PEERS_GEMM     the GEMM program; set it empty to skip the GEMM part
#                  (the Makefile does when OpenBLAS is missing)
#   PEERS_PYTHON   the Python with PyTorch (/usr/bin/python3)
#   PEERS_ROUNDS   rounds of the MLP comparison (3)
#   PEERS_EPOCHS   epochs per MLP run (2)
#   PEERS_KEEP_OPENBLAS_ENV  1: pass OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE on
#                  (by default they are unset, so OpenBLAS picks its best kernels)
set -u

BUILD=${BUILD:-build}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}
PEERS_GEMM=${PEERS_GEMM-$BUILD/peers_gemm}
PY=${PEERS_PYTHON:-/usr/bin/python3}
ROUNDS=${PEERS_ROUNDS:-3}
EPOCHS=${PEERS_EPOCHS:-2}
HERE=$(dirname "$0")

# Both peers run on OpenBLAS (PyTorch's Debian build does its matrix products
# through it), which picks its kernels for the CPU it finds unless
# OPENBLAS_CORETYPE names others. A core type older than the CPU (Haswell's
# AVX2 kernels on an AVX-512 machine) can halve the peer's speed, so the
# peers run with OpenBLAS's own choice: OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are removed from their environment unless
# PEERS_KEEP_OPENBLAS_ENV=1.
if [ "${PEERS_KEEP_OPENBLAS_ENV:-0}" != 1 ]; then
    if [ -n "${OPENBLAS_CORETYPE:-}${OPENBLAS_L2_SIZE:-}" ]; then
        echo "# note: unsetting OPENBLAS_CORETYPE='${OPENBLAS_CORETYPE:-}' OPENBLAS_L2_SIZE='${OPENBLAS_L2_SIZE:-}'" \
             "so that OpenBLAS picks its kernels for this CPU (PEERS_KEEP_OPENBLAS_ENV=1 keeps them)"
    fi
    unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
elif [ -n "${OPENBLAS_CORETYPE:-}" ]; then
    echo "# note: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE is kept: OpenBLAS runs those kernels, not the ones" \
         "it would pick for this CPU"
fi

# The value of key in a line of key=value words.
field() {
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# The median of a space-separated list of numbers.
median() {
    printf '%s\n' "$1" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- 1. GEMM
if [ -z "$PEERS_GEMM" ]; then
    echo "skipped: gemm vs OpenBLAS: cblas.h / libopenblas not found (install libopenblas-dev)"
elif [ ! -x "$PEERS_GEMM" ]; then
    echo "bench/peers.sh: $PEERS_GEMM is not built (make bench-peers builds it)" >&2
    exit 1
else
    "$PEERS_GEMM" || { echo "bench/peers.sh: $PEERS_GEMM failed" >&2; exit 1; }
fi

# ------------------------------------------------------- 2. MLP training epoch
if ! "$PY" -c "import torch, numpy" >/dev/null 2>&1; then
    echo "skipped: mlp_epoch vs PyTorch: $PY cannot import torch and numpy (install python3-torch)"
    exit 0
fi
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -f "$FASHION/$f.gz" ] && [ ! -f "$FASHION/$f" ]; then
        echo "skipped: mlp_epoch vs PyTorch: Fashion-MNIST is not in $FASHION (install dataset-fashion-mnist)"
        exit 0
    fi
done

# Runs one side (the command and its arguments) and prints its RESULT line;
# stops the script if there is none.
run_side() {
    out=$("$@" 2>&1)
    line=$(printf '%s\n' "$out" | grep '^RESULT ' | tail -n 1)
    if [ -z "$line" ]; then
        printf '%s\n' "$out" >&2
        echo "bench/peers.sh: $* printed no RESULT line" >&2
        exit 1
    fi
    printf '%s\n' "$line"
}
run_nn() { run_side "$BUILD/mlp_fashion" --epochs "$EPOCHS" --threads 1 --verbose 0 --data "$FASHION"; }
run_torch() { run_side "$PY" "$HERE/torch_mlp.py" --epochs "$EPOCHS" --threads 1 --data "$FASHION"; }

echo "# mlp_epoch: 784-128-128-10 ReLU, Adam 1e-3, batch 64, one thread each;" \
     "$ROUNDS rounds of $EPOCHS epochs per side"
nn_s=""; nn_acc=""; pt_s=""; pt_acc=""
r=1
while [ "$r" -le "$ROUNDS" ]; do
    # $(...) runs in a subshell, so a failing run_* ends only it: check $?.
    if [ $((r % 2)) = 1 ]; then
        a=$(run_nn) || exit 1
        b=$(run_torch) || exit 1
    else
        b=$(run_torch) || exit 1
        a=$(run_nn) || exit 1
    fi
    s1=$(field "$a" seconds_per_epoch); c1=$(field "$a" test_acc)
    s2=$(field "$b" seconds_per_epoch); c2=$(field "$b" test_acc)
    echo "# round $r: nn $s1 s/epoch (test_acc $c1), pytorch $s2 s/epoch (test_acc $c2)"
    nn_s="$nn_s $s1"; nn_acc="$nn_acc $c1"; pt_s="$pt_s $s2"; pt_acc="$pt_acc $c2"
    r=$((r + 1))
done
torch_version=$(field "$b" torch)

ours=$(median "$nn_s"); peer=$(median "$pt_s")
ours_acc=$(median "$nn_acc"); peer_acc=$(median "$pt_acc")
# unit=s: less is better, so ratio = peer seconds / our seconds (> 1: nn is faster).
ratio=$(awk -v o="$ours" -v p="$peer" 'BEGIN { printf "%.3f", (o > 0 ? p / o : 0) }')
echo "RATIO work=mlp_epoch ours=$ours peer=pytorch peer_value=$peer unit=s ratio=$ratio"
echo "INFO work=mlp_epoch ours_test_acc=$ours_acc peer_test_acc=$peer_acc epochs=$EPOCHS" \
     "(median over $ROUNDS rounds; torch $torch_version)"
