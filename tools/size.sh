#!/bin/sh
# tools/size.sh — `make size`: what the library costs in flash, per target.
#
# For each target whose compiler is installed (a missing one is skipped with a
# message), into $BUILD/size/<target>/:
#   nn_impl.o     the library at -O2 with the board flags (-fno-exceptions
#                 -fno-rtti), as `make` builds it: size text/data/bss, file bytes
#   mlp_infer     examples/mlp_infer.cpp (784-128-128-10 MLP, predict only)
#                 linked -static against nn_impl.cpp compiled with
#                 -ffunction-sections -fdata-sections, -Wl,--gc-sections, with
#                 NN_SMALL_TERMINATE (see the example), stripped
#   empty         `int main() { return 0; }` linked the same way, stripped: the
#                 floor that static glibc and the C++ start-up cost by themselves
#   mlp_infer.dyn the same program linked dynamically (libstdc++.so and libc.so
#                 on the board), stripped
# The static program then runs (natively, or under qemu-user) and must print its
# predictions; the table shows the vector architecture it reported.
# Knobs: BUILD (build), CXX (g++), OPT (-O2), TARGETS (all of them).
# shellcheck disable=SC2086  # compiler commands and flags are word lists
set -eu
cd "$(dirname "$0")/.."
out=${BUILD:-build}/size
cxx=${CXX:-g++}
opt=${OPT:--O2}
targets=${TARGETS:-x86-64-native x86-64 aarch64 armhf armv6}
flags="-std=c++17 $opt -Wall -Wextra -fno-exceptions -fno-rtti -I."
gc="-ffunction-sections -fdata-sections"

rows=""
for t in $targets; do
    case $t in
        x86-64-native) c="$cxx -march=native"; tool=""; run="" ;;
        x86-64)        c="$cxx -march=x86-64"; tool=""; run="" ;;
        aarch64)       c="aarch64-linux-gnu-g++ -march=armv8-a"; tool=aarch64-linux-gnu-; run=qemu-aarch64 ;;
        armhf)         c="arm-linux-gnueabihf-g++ -march=armv7-a -mfpu=neon -mfloat-abi=hard"
                       tool=arm-linux-gnueabihf-; run=qemu-arm ;;
        armv6)         c="arm-linux-gnueabihf-g++ -march=armv6 -mfpu=vfp -mfloat-abi=hard -marm"
                       tool=arm-linux-gnueabihf-; run=qemu-arm ;;
        *) echo "size: unknown target $t"; exit 1 ;;
    esac
    cc=${c%% *}
    # GCC's note that std::vector iterators are passed differently since GCC
    # 7.1 on 32-bit ARM is about mixing objects across that version, not a defect.
    case $t in arm*) c="$c -Wno-psabi" ;; esac
    if ! command -v "$cc" >/dev/null 2>&1; then
        echo "size: skipping $t: $cc is not installed (make deps-arm installs the ARM compilers)"
        continue
    fi
    d=$out/$t
    mkdir -p "$d"
    echo "size: $t: $c"
    $c $flags -c nn_impl.cpp -o "$d/nn_impl.o"
    $c $flags $gc -c nn_impl.cpp -o "$d/nn_impl_gc.o"
    $c $flags $gc -DNN_SMALL_TERMINATE examples/mlp_infer.cpp "$d/nn_impl_gc.o" \
        -static -Wl,--gc-sections -o "$d/mlp_infer" -lpthread
    $c $flags $gc -DNN_SMALL_TERMINATE examples/mlp_infer.cpp "$d/nn_impl_gc.o" \
        -Wl,--gc-sections -o "$d/mlp_infer.dyn" -lpthread
    printf 'int main() { return 0; }\n' > "$d/empty.cpp"
    $c $flags $gc "$d/empty.cpp" -static -Wl,--gc-sections -o "$d/empty"
    ${tool}strip "$d/mlp_infer" "$d/mlp_infer.dyn" "$d/empty"
    arch="not run"
    if [ -z "$run" ] || command -v "$run" >/dev/null 2>&1; then
        case $d in /*) prog=$d/mlp_infer ;; *) prog=./$d/mlp_infer ;; esac
        $run "$prog" > "$d/mlp_infer.out" || { echo "size: $t: mlp_infer failed"; exit 1; }
        last=$(tail -n 1 "$d/mlp_infer.out")
        arch=${last##* }
    fi
    sizes=$(${tool}size "$d/nn_impl.o" | tail -n 1)
    set -- $sizes  # text data bss dec hex file
    rows="$rows$(printf '%-14s %8s %6s %5s %9s %11s %9s %11s  %s' "$t" "$1" "$2" "$3" \
        "$(wc -c < "$d/nn_impl.o")" "$(wc -c < "$d/mlp_infer")" "$(wc -c < "$d/empty")" \
        "$(wc -c < "$d/mlp_infer.dyn")" "$arch")
"
done

echo
echo "nn_impl.o at $opt; programs stripped, bytes (static: -static -Wl,--gc-sections)"
printf '%-14s %8s %6s %5s %9s %11s %9s %11s  %s\n' target text data bss "file" \
    "mlp_infer" "empty" "mlp_infer" simd
printf '%-14s %8s %6s %5s %9s %11s %9s %11s  %s\n' "" "" "" "" "" static static dynamic ""
printf '%s' "$rows"
