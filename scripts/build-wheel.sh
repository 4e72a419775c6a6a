#!/usr/bin/env bash
# Builds the coalesce wheel: the `coalesce` command, the coalesce_torch package and
# libcoalesce.so inside it, so `pip install <wheel>` needs no Rust toolchain.
#
#   scripts/build-wheel.sh [maturin build options...]   -> $CARGO_TARGET_DIR/wheels/*.whl
#
# CARGO_TARGET_DIR (default target) is where cargo and maturin build. The wheel is tagged
# manylinux for the glibc of the building machine (build on an old distro or in a manylinux
# container for a wheel that installs everywhere).
#
# maturin comes from $MATURIN, the PATH, or is installed from PyPI into $target/wheel-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
export CARGO_TARGET_DIR=$target

cargo build --release -p coalesce-capi
cp "$target/release/libcoalesce.so" python/coalesce_torch/libcoalesce.so
# The release profile keeps line tables for profiling; the wheel does not need them.
if command -v strip >/dev/null; then
    strip --strip-debug python/coalesce_torch/libcoalesce.so
fi

maturin=${MATURIN:-}
if [[ -z "$maturin" ]]; then
    if command -v maturin >/dev/null; then
        maturin=maturin
    else
        if [[ ! -x "$target/wheel-tools/bin/maturin" ]]; then
            python3 -m venv "$target/wheel-tools"
            "$target/wheel-tools/bin/pip" install --quiet "maturin>=1.5,<2"
        fi
        maturin=$target/wheel-tools/bin/maturin
    fi
fi
"$maturin" build --release --out "$target/wheels" "$@"
