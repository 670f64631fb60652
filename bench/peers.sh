#!/bin/sh
# bench/peers.sh — nn against its peers, each pair run side by side in this
# one invocation; `make bench-peers` builds the programs and runs this.
#
#   gemm     $PEERS_GEMM (build/peers_gemm) times nn::gemm_f32 against
#            OpenBLAS cblas_sgemm, one thread each, and prints a RATIO line per
#            shape.
#   mlp      One training epoch of the Fashion-MNIST MLP: build/mlp_fashion
#            against bench/torch_mlp.py, $PEERS_EPOCHS epochs per run,
#            $PEERS_ROUNDS rounds.
#   lenet    One training epoch of LeNet-5 (conv 6 and 16 filters 5x5, max
#            pooling, 120-84-10): build/lenet_fashion against
#            bench/torch_cnn.py --model lenet, $PEERS_LENET_EPOCHS epochs per
#            run, $PEERS_CNN_ROUNDS rounds.
#   convnet  The first $PEERS_CONVNET_STEPS training steps of the ConvNet
#            (conv 32 and 64 filters 5x5, max pooling, 3136-1024-10 with
#            dropout): build/convnet_fashion --steps N against
#            bench/torch_cnn.py --model convnet --steps N, $PEERS_CNN_ROUNDS
#            rounds; the RATIO line compares the seconds for those N steps.
#   lstm     One LSTM training step (LSTM 64 -> 128, batch 32, 50 steps,
#            return_sequences, MSE against a fixed target, forward + backward +
#            Adam 1e-3, one thread): BM_LstmTrainStep of build/bench_rnn
#            (median of $PEERS_LSTM_REPS repetitions) against
#            bench/torch_lstm.py (median of $PEERS_LSTM_STEPS timed steps after
#            10 warm-up steps), $PEERS_LSTM_ROUNDS rounds; the RATIO line
#            compares the medians over the rounds of the seconds per step.
#            It needs PyTorch but no data set.
# The three training comparisons run the same model on both sides (PyTorch's
# default init, cross-entropy on the logits, Adam 1e-3, batch 64, one thread
# each). Each round the two sides alternate which goes first; each run
# reports its mean seconds per epoch, first epoch included on both sides; the
# RATIO line compares the medians over the rounds, and an INFO line gives the
# median test accuracies (and, for the CNNs, milliseconds per step).
#
# Every comparison ends in one line of this form:
#   RATIO work=<name> ours=<v> peer=<name> peer_value=<v> unit=<GFLOP/s|s> ratio=<r>
# ratio > 1 always means nn is better: for a rate (GFLOP/s) it is ours / peer,
# for a time (s) it is peer / ours.
#
# A peer that is not installed is skipped with a message (gemm without
# OpenBLAS; mlp, lenet and convnet without PyTorch or the data set; lstm
# without PyTorch); that is not a failure (exit 0). A program that fails or
# prints no result is (exit 1), and so is a PEERS_ONLY word that names no
# section (exit 2).
#
# Environment (all optional):
#   BUILD          where the nn programs are (build)
#   FASHION        the Fashion-MNIST directory (/usr/share/datasets/fashion-mnist)
#   PEERS_ONLY     the sections to run, from "gemm mlp lenet convnet lstm" (all)
#   PEERS_GEMM     the GEMM program; set it empty to skip the GEMM part
#                  (the Makefile does when OpenBLAS is missing)
#   PEERS_PYTHON   the Python with PyTorch (/usr/bin/python3)
#   PEERS_ROUNDS   rounds of the MLP comparison (3)
#   PEERS_EPOCHS   epochs per MLP run (2)
#   PEERS_CNN_ROUNDS     rounds of the LeNet and ConvNet comparisons (3)
#   PEERS_LENET_EPOCHS   epochs per LeNet run (1)
#   PEERS_CONVNET_STEPS  training steps per ConvNet run (100)
#   PEERS_LSTM_ROUNDS    rounds of the LSTM comparison (3)
#   PEERS_LSTM_REPS      Google Benchmark repetitions per nn run (5)
#   PEERS_LSTM_STEPS     timed steps per PyTorch run (100)
#   PEERS_KEEP_OPENBLAS_ENV  1: pass OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE on
#                  (by default they are unset, so OpenBLAS picks its best kernels)
set -u

BUILD=${BUILD:-build}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}
PEERS_GEMM=${PEERS_GEMM-$BUILD/peers_gemm}
PY=${PEERS_PYTHON:-/usr/bin/python3}
ROUNDS=${PEERS_ROUNDS:-3}
EPOCHS=${PEERS_EPOCHS:-2}
CNN_ROUNDS=${PEERS_CNN_ROUNDS:-3}
LENET_EPOCHS=${PEERS_LENET_EPOCHS:-1}
CONVNET_STEPS=${PEERS_CONVNET_STEPS:-100}
LSTM_ROUNDS=${PEERS_LSTM_ROUNDS:-3}
LSTM_REPS=${PEERS_LSTM_REPS:-5}
LSTM_STEPS=${PEERS_LSTM_STEPS:-100}
SECTIONS="gemm mlp lenet convnet lstm"
ONLY=${PEERS_ONLY:-$SECTIONS}
HERE=$(dirname "$0")

for s in $ONLY; do
    case " $SECTIONS " in
        *" $s "*) ;;
        *) echo "bench/peers.sh: PEERS_ONLY names '$s'; the sections are: $SECTIONS" >&2; exit 2 ;;
    esac
done
# True when section $1 is to run.
want() {
    case " $ONLY " in *" $1 "*) return 0 ;; esac
    return 1
}
if [ "$ONLY" != "$SECTIONS" ]; then
    echo "# PEERS_ONLY: running $ONLY"
fi

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

# The median of a space-separated list of numbers (empty for an empty list).
median() {
    printf '%s\n' "$1" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

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

# Whether PyTorch and the data set are there for the comparison named $1;
# prints why not (and returns 1) when they are not. Checked once.
torch_missing=""
if ! "$PY" -c "import torch, numpy" >/dev/null 2>&1; then
    torch_missing="$PY cannot import torch and numpy (install python3-torch)"
else
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        if [ ! -f "$FASHION/$f.gz" ] && [ ! -f "$FASHION/$f" ]; then
            torch_missing="Fashion-MNIST is not in $FASHION (install dataset-fashion-mnist)"
            break
        fi
    done
fi
torch_ready() {
    if [ -n "$torch_missing" ]; then
        echo "skipped: $1 vs PyTorch: $torch_missing"
        return 1
    fi
}

# The nn program $1 must be built.
need_built() {
    if [ ! -x "$1" ]; then
        echo "bench/peers.sh: $1 is not built (make bench-peers builds it)" >&2
        exit 1
    fi
}

# compare WORK UNIT_TEXT NN_FUNCTION TORCH_FUNCTION ROUNDS [STEPS]
# Runs the two sides ROUNDS times, alternating which goes first, and prints
# the RATIO line for WORK from the medians of their seconds_per_epoch. Sets
# ours, peer, ours_acc, peer_acc, ours_ms, peer_ms (the medians; the _ms ones
# empty when a side prints no ms_per_step), steps (steps_per_epoch, or
# empty) and torch_version for the caller's INFO line. Both sides must agree
# on steps_per_epoch when both report it, and report STEPS when it is
# given: otherwise they did different work.
compare() {
    c_work=$1; c_unit=$2; c_nn=$3; c_pt=$4; c_rounds=$5; c_steps=${6:-}
    nn_s=""; nn_acc=""; nn_ms=""; pt_s=""; pt_acc=""; pt_ms=""; steps=""
    r=1
    while [ "$r" -le "$c_rounds" ]; do
        # $(...) runs in a subshell, so a failing run_side ends only it: check $?.
        if [ $((r % 2)) = 1 ]; then
            a=$($c_nn) || exit 1
            b=$($c_pt) || exit 1
        else
            b=$($c_pt) || exit 1
            a=$($c_nn) || exit 1
        fi
        s1=$(field "$a" seconds_per_epoch); c1=$(field "$a" test_acc); m1=$(field "$a" ms_per_step)
        s2=$(field "$b" seconds_per_epoch); c2=$(field "$b" test_acc); m2=$(field "$b" ms_per_step)
        if [ -z "$s1" ] || [ -z "$s2" ]; then
            echo "bench/peers.sh: $c_work: a RESULT line has no seconds_per_epoch:" >&2
            printf '  %s\n  %s\n' "$a" "$b" >&2
            exit 1
        fi
        n1=$(field "$a" steps_per_epoch); n2=$(field "$b" steps_per_epoch)
        if [ -n "$n1" ] && [ -n "$n2" ] && [ "$n1" != "$n2" ]; then
            echo "bench/peers.sh: $c_work: nn ran $n1 steps per epoch, pytorch $n2: not the same work" >&2
            exit 1
        fi
        if [ -n "$c_steps" ] && { [ "$n1" != "$c_steps" ] || [ "$n2" != "$c_steps" ]; }; then
            echo "bench/peers.sh: $c_work: asked for $c_steps steps; nn reports steps_per_epoch=$n1," \
                 "pytorch $n2" >&2
            exit 1
        fi
        steps=${n1:-$n2}
        per_step1=""; per_step2=""
        [ -n "$m1" ] && per_step1=", $m1 ms/step"
        [ -n "$m2" ] && per_step2=", $m2 ms/step"
        echo "# round $r: nn $s1 $c_unit$per_step1 (test_acc $c1)," \
             "pytorch $s2 $c_unit$per_step2 (test_acc $c2)"
        nn_s="$nn_s $s1"; nn_acc="$nn_acc $c1"; pt_s="$pt_s $s2"; pt_acc="$pt_acc $c2"
        nn_ms="$nn_ms $m1"; pt_ms="$pt_ms $m2"
        r=$((r + 1))
    done
    torch_version=$(field "$b" torch)
    ours=$(median "$nn_s"); peer=$(median "$pt_s")
    ours_acc=$(median "$nn_acc"); peer_acc=$(median "$pt_acc")
    ours_ms=$(median "$nn_ms"); peer_ms=$(median "$pt_ms")
    # unit=s: less is better, so ratio = peer seconds / our seconds (> 1: nn is faster).
    ratio=$(awk -v o="$ours" -v p="$peer" 'BEGIN { printf "%.3f", (o > 0 ? p / o : 0) }')
    echo "RATIO work=$c_work ours=$ours peer=pytorch peer_value=$peer unit=s ratio=$ratio"
}

# ---------------------------------------------------------------- 1. GEMM
if want gemm; then
    if [ -z "$PEERS_GEMM" ]; then
        echo "skipped: gemm vs OpenBLAS: cblas.h / libopenblas not found (install libopenblas-dev)"
    else
        need_built "$PEERS_GEMM"
        "$PEERS_GEMM" || { echo "bench/peers.sh: $PEERS_GEMM failed" >&2; exit 1; }
    fi
fi

# ------------------------------------------------------- 2. MLP training epoch
run_mlp_nn() { run_side "$BUILD/mlp_fashion" --epochs "$EPOCHS" --threads 1 --verbose 0 --data "$FASHION"; }
run_mlp_torch() { run_side "$PY" "$HERE/torch_mlp.py" --epochs "$EPOCHS" --threads 1 --data "$FASHION"; }

if want mlp && torch_ready mlp_epoch; then
    need_built "$BUILD/mlp_fashion"
    echo "# mlp_epoch: 784-128-128-10 ReLU, Adam 1e-3, batch 64, one thread each;" \
         "$ROUNDS rounds of $EPOCHS epochs per side"
    compare mlp_epoch s/epoch run_mlp_nn run_mlp_torch "$ROUNDS"
    echo "INFO work=mlp_epoch ours_test_acc=$ours_acc peer_test_acc=$peer_acc epochs=$EPOCHS" \
         "(median over $ROUNDS rounds; torch $torch_version)"
fi

# ----------------------------------------------------- 3. LeNet training epoch
run_lenet_nn() {
    run_side "$BUILD/lenet_fashion" --epochs "$LENET_EPOCHS" --threads 1 --verbose 0 --data "$FASHION"
}
run_lenet_torch() {
    run_side "$PY" "$HERE/torch_cnn.py" --model lenet --epochs "$LENET_EPOCHS" --threads 1 --data "$FASHION"
}

if want lenet && torch_ready lenet_epoch; then
    need_built "$BUILD/lenet_fashion"
    echo "# lenet_epoch: LeNet-5 (conv 5x5 6, 16; max pool; 400-120-84-10), Adam 1e-3, batch 64," \
         "one thread each; $CNN_ROUNDS rounds of $LENET_EPOCHS epochs per side"
    compare lenet_epoch s/epoch run_lenet_nn run_lenet_torch "$CNN_ROUNDS"
    echo "INFO work=lenet_epoch ours_ms_per_step=$ours_ms peer_ms_per_step=$peer_ms" \
         "ours_test_acc=$ours_acc peer_test_acc=$peer_acc steps_per_epoch=$steps epochs=$LENET_EPOCHS" \
         "(median over $CNN_ROUNDS rounds; torch $torch_version)"
fi

# ------------------------------------------------- 4. ConvNet training steps
run_convnet_nn() {
    run_side "$BUILD/convnet_fashion" --epochs 1 --steps "$CONVNET_STEPS" --threads 1 --verbose 0 --data "$FASHION"
}
run_convnet_torch() {
    run_side "$PY" "$HERE/torch_cnn.py" --model convnet --epochs 1 --steps "$CONVNET_STEPS" --threads 1 \
             --data "$FASHION"
}

convnet_work="convnet_${CONVNET_STEPS}_steps"
if want convnet && torch_ready "$convnet_work"; then
    need_built "$BUILD/convnet_fashion"
    echo "# $convnet_work: ConvNet (conv 5x5 32, 64; max pool; 3136-1024-10, dropout 0.4), Adam 1e-3," \
         "batch 64, one thread each; $CNN_ROUNDS rounds of the first $CONVNET_STEPS steps of an epoch per side"
    # One epoch cut short at CONVNET_STEPS steps: seconds_per_epoch is the
    # seconds for those steps.
    compare "$convnet_work" "s/$CONVNET_STEPS steps" run_convnet_nn run_convnet_torch "$CNN_ROUNDS" \
            "$CONVNET_STEPS"
    echo "INFO work=$convnet_work ours_ms_per_step=$ours_ms peer_ms_per_step=$peer_ms" \
         "ours_test_acc=$ours_acc peer_test_acc=$peer_acc steps=$CONVNET_STEPS" \
         "(median over $CNN_ROUNDS rounds; torch $torch_version)"
fi

# ------------------------------------------------------- 5. LSTM training step
# nn: BM_LstmTrainStep's median over LSTM_REPS repetitions (Google Benchmark
# CSV: name,iterations,real_time,cpu_time,time_unit,...), in seconds.
run_lstm_nn() {
    out=$("$BUILD/bench_rnn" --benchmark_filter='^BM_LstmTrainStep$' --benchmark_repetitions="$LSTM_REPS" \
          --benchmark_report_aggregates_only=true --benchmark_format=csv 2>&1)
    v=$(printf '%s\n' "$out" | awk -F, '$1 == "\"BM_LstmTrainStep_median\"" {
            u = $5; f = (u == "ns") ? 1e-9 : (u == "us") ? 1e-6 : (u == "ms") ? 1e-3 : 1;
            printf "%.6f\n", $3 * f }')
    if [ -z "$v" ]; then
        printf '%s\n' "$out" >&2
        echo "bench/peers.sh: $BUILD/bench_rnn printed no BM_LstmTrainStep_median" >&2
        exit 1
    fi
    echo "RESULT example=bench_rnn work=lstm_step seconds_per_step=$v"
}
# As median(), with 6 decimals also for an even count (seconds per step).
median6() {
    printf '%s\n' "$1" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) exit; printf "%.6f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
run_lstm_torch() {
    run_side "$PY" "$HERE/torch_lstm.py" --steps "$LSTM_STEPS" --threads 1
}

if want lstm; then
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        echo "skipped: lstm_step vs PyTorch: $PY cannot import torch (install python3-torch)"
    else
        need_built "$BUILD/bench_rnn"
        echo "# lstm_step: LSTM(64, 128) batch 32 x 50 steps, return_sequences, MSE, forward + backward +" \
             "Adam 1e-3, one thread each; $LSTM_ROUNDS rounds (nn: median of $LSTM_REPS benchmark" \
             "repetitions, pytorch: median of $LSTM_STEPS steps)"
        nn_s=""; pt_s=""
        r=1
        while [ "$r" -le "$LSTM_ROUNDS" ]; do
            if [ $((r % 2)) = 1 ]; then
                a=$(run_lstm_nn) || exit 1
                b=$(run_lstm_torch) || exit 1
            else
                b=$(run_lstm_torch) || exit 1
                a=$(run_lstm_nn) || exit 1
            fi
            s1=$(field "$a" seconds_per_step); s2=$(field "$b" seconds_per_step)
            if [ -z "$s1" ] || [ -z "$s2" ]; then
                echo "bench/peers.sh: lstm_step: a RESULT line has no seconds_per_step:" >&2
                printf '  %s\n  %s\n' "$a" "$b" >&2
                exit 1
            fi
            echo "# round $r: nn $s1 s/step, pytorch $s2 s/step"
            nn_s="$nn_s $s1"; pt_s="$pt_s $s2"
            r=$((r + 1))
        done
        ours=$(median6 "$nn_s"); peer=$(median6 "$pt_s")
        ratio=$(awk -v o="$ours" -v p="$peer" 'BEGIN { printf "%.3f", (o > 0 ? p / o : 0) }')
        echo "RATIO work=lstm_step ours=$ours peer=pytorch peer_value=$peer unit=s ratio=$ratio"
        echo "INFO work=lstm_step ours_ms_per_step=$(awk -v o="$ours" 'BEGIN { printf "%.3f", o * 1e3 }')" \
             "peer_ms_per_step=$(awk -v p="$peer" 'BEGIN { printf "%.3f", p * 1e3 }')" \
             "(median over $LSTM_ROUNDS rounds; torch $(field "$b" torch))"
    fi
fi
