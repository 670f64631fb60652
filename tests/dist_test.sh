#!/bin/sh
# tests/dist_test.sh — the two-file promise: copy only dist/nn.hpp and
# dist/nn_impl.cpp into an empty directory, build the library, every
# example and the test suite against them, and run the suite and an example.
#
# The test files that check kernels include "kernels/X.hpp"; here each of
# those names is a one-line shim that takes the kernels from the pasted
# copy in dist/nn_impl.cpp (its NN_KERNELS_ONLY section), so the suite tests
# exactly the code that ships.
set -eu
CXX=${CXX:-g++}
FLAGS=${FLAGS:--std=c++17 -O2 -march=native -Wall -Wextra}
DEFS=${DEFS:-}
LIBS=${LIBS:--lpthread}
JOBS=${JOBS:-1}
root=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/nn-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lib"
cp "$root/dist/nn.hpp" "$root/dist/nn_impl.cpp" "$work/lib/"
echo "dist test in $work: $(ls "$work/lib" | tr '\n' ' ')"

# The consumer side: examples and tests as a user's project would hold them.
mkdir -p "$work/app/kernels" "$work/app/examples" "$work/app/tests"
cp "$root"/examples/*.cpp "$root"/examples/*.hpp "$work/app/examples/"
cp "$root"/tests/*.cpp "$root"/tests/*.hpp "$root"/tests/*.inc "$work/app/tests/"
for k in "$root"/kernels/*.hpp; do
    printf '#pragma once\n#define NN_KERNELS_ONLY 1\n#include "nn_impl.cpp"\n#undef NN_KERNELS_ONLY\n' \
        > "$work/app/kernels/$(basename "$k")"
done

cd "$work"
# shellcheck disable=SC2086  # FLAGS, DEFS and LIBS are word lists
$CXX $FLAGS $DEFS -fno-exceptions -fno-rtti -Ilib -c lib/nn_impl.cpp -o nn_impl.o
# The examples and the test files, JOBS compilers at a time (xargs fails if
# any of them does).
export CXX FLAGS DEFS LIBS
for ex in app/examples/*.cpp; do echo "$ex $(basename "$ex" .cpp)"; done |
    xargs -n 2 -P "$JOBS" sh -c '$CXX $FLAGS $DEFS -Ilib -Iapp "$0" nn_impl.o -o "$1" $LIBS'
mkdir -p obj
for t in app/tests/*.cpp; do echo "$t obj/$(basename "$t" .cpp).o"; done |
    xargs -n 2 -P "$JOBS" sh -c '$CXX $FLAGS $DEFS -Ilib -Iapp -c "$0" -o "$1"'
# shellcheck disable=SC2086
$CXX $FLAGS obj/*.o nn_impl.o -o nn_tests -lgtest $LIBS
./spirals --epochs 5 --verbose 0 | grep '^RESULT '
./nn_tests
