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
#
# aarch64-musl: the same programs linked statically against musl's C library
# instead of glibc, whose static start-up alone outweighs the 300 KB goal.
# Debian has musl for arm64 (`make deps-musl`) but no C++ library built for
# it, so this links Debian's libstdc++.a for glibc through tools/musl/ (the
# glibc names its headers and archive expect), and first runs
# tools/musl/check.cpp, which checks threads, timed waits and containers work.
# Knobs: BUILD (build), CXX (g++), OPT (-O2), TARGETS (all of them).
# shellcheck disable=SC2086  # compiler commands and flags are word lists
set -eu
cd "$(dirname "$0")/.."
out=${BUILD:-build}/size
cxx=${CXX:-g++}
opt=${OPT:--O2}
targets=${TARGETS:-x86-64-native x86-64 aarch64 aarch64-musl armhf armv6}
flags="-std=c++17 $opt -Wall -Wextra -fno-exceptions -fno-rtti -I."
gc="-ffunction-sections -fdata-sections"

# aarch64-musl: compiles against musl's headers and libstdc++'s, links
# musl's start files and libc.a. Sets $musl_row, or explains the skip.
musl_lib=/usr/lib/aarch64-linux-musl
musl_inc=/usr/include/aarch64-linux-musl
size_musl() {
    c=aarch64-linux-gnu-g++
    if ! command -v $c >/dev/null 2>&1 || [ ! -f $musl_lib/libc.a ]; then
        echo "size: skipping aarch64-musl: needs $c and $musl_lib/libc.a (make deps-musl installs them)"
        return 0
    fi
    d=$out/aarch64-musl
    mkdir -p "$d/inc"
    # xsimd from the host, and the kernel header its NEON check reads.
    [ -d /usr/include/xsimd ] && ln -sfn /usr/include/xsimd "$d/inc/xsimd"
    ln -sfn /usr/aarch64-linux-gnu/include/asm "$d/inc/asm"
    cxxinc=$(echo | $c -x c++ -E -v - 2>&1 | sed -n '/search starts here:/,/End of search list/p' | grep '/c++/')
    inc="-nostdinc"
    for i in $cxxinc; do inc="$inc -isystem $i"; done
    inc="$inc -isystem $($c -print-file-name=include) -isystem $musl_inc -isystem $d/inc"
    inc="$inc -include tools/musl/glibcxx_on_musl.h"
    mc="$c -march=armv8-a $inc"
    start="$musl_lib/crt1.o $musl_lib/crti.o $($c -print-file-name=crtbeginT.o)"
    libs="-Wl,--start-group $($c -print-file-name=libstdc++.a) $($c -print-libgcc-file-name)"
    libs="$libs $($c -print-file-name=libgcc_eh.a) $musl_lib/libc.a -Wl,--end-group"
    libs="$libs $($c -print-file-name=crtend.o) $musl_lib/crtn.o"
    link="$c -static -nostdlib -Wl,--gc-sections"
    echo "size: aarch64-musl: $mc"
    aarch64-linux-gnu-gcc -nostdinc -isystem "$($c -print-file-name=include)" -isystem $musl_inc -std=c11 $opt \
        -Wall -Wextra $gc -c tools/musl/glibcxx_on_musl.c -o "$d/glibcxx_on_musl.o"
    $mc $flags -c nn_impl.cpp -o "$d/nn_impl.o"
    $mc $flags $gc -c nn_impl.cpp -o "$d/nn_impl_gc.o"
    $mc $flags $gc -DNN_SMALL_TERMINATE -c examples/mlp_infer.cpp -o "$d/mlp_infer.o"
    $mc $flags $gc -c tools/musl/check.cpp -o "$d/check.o"
    printf 'int main() { return 0; }\n' > "$d/empty.cpp"
    $mc $flags $gc -c "$d/empty.cpp" -o "$d/empty.o"
    $link $start "$d/mlp_infer.o" "$d/nn_impl_gc.o" "$d/glibcxx_on_musl.o" $libs -o "$d/mlp_infer"
    $link $start "$d/check.o" "$d/glibcxx_on_musl.o" $libs -o "$d/check"
    $link $start "$d/empty.o" "$d/glibcxx_on_musl.o" $libs -o "$d/empty"
    aarch64-linux-gnu-strip "$d/mlp_infer" "$d/check" "$d/empty"
    arch="not run"
    if command -v qemu-aarch64 >/dev/null 2>&1; then
        qemu-aarch64 "$d/check" || { echo "size: aarch64-musl: the libstdc++-on-musl check failed"; exit 1; }
        qemu-aarch64 "$d/mlp_infer" > "$d/mlp_infer.out" || { echo "size: aarch64-musl: mlp_infer failed"; exit 1; }
        # The same predictions as the glibc program, when that one ran.
        if [ -f "$out/aarch64/mlp_infer.out" ]; then
            head -n 4 "$d/mlp_infer.out" > "$d/classes"
            head -n 4 "$out/aarch64/mlp_infer.out" > "$d/classes.glibc"
            cmp -s "$d/classes" "$d/classes.glibc" ||
                { echo "size: aarch64-musl: predictions differ from the glibc program's"; exit 1; }
        fi
        last=$(tail -n 1 "$d/mlp_infer.out")
        arch=${last##* }
    fi
    set -- $(aarch64-linux-gnu-size "$d/nn_impl.o" | tail -n 1)
    musl_row=$(printf '%-14s %8s %6s %5s %9s %11s %9s %11s  %s' aarch64-musl "$1" "$2" "$3" \
        "$(wc -c < "$d/nn_impl.o")" "$(wc -c < "$d/mlp_infer")" "$(wc -c < "$d/empty")" "-" "$arch")
}

rows=""
for t in $targets; do
    if [ "$t" = aarch64-musl ]; then
        musl_row=""
        size_musl
        [ -n "$musl_row" ] && rows="$rows$musl_row
"
        continue
    fi
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
