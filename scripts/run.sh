#!/usr/bin/env bash
# Builds physmemd and runs it on the embedded default target (no config file needed).
# Extra arguments go to physmemd, e.g. `bash scripts/run.sh --target=i386 --mem_mb=2048`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
ninja -C build -j"$(nproc)" physmemd
exec ./build/physmemd "$@"
