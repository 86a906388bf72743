#!/usr/bin/env bash
# Builds physmemd and every user-facing tool (physmemctl, physmem_loadgen), then runs physmemd in
# the foreground on the embedded default target (no config file needed). Extra arguments go to
# physmemd, e.g. `bash scripts/run.sh --target=i386 --mem_mb=2048`.
# As root the daemon listens on /run/physmemd/physmemd.sock; as anyone else on this user's socket
# ($XDG_RUNTIME_DIR/physmemd.sock, or /tmp/physmemd-UID/physmemd.sock), where physmemctl and the
# load generator, started by the same user, look by default (server/default_socket.h).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
ninja -C build -j"$(nproc)" physmemd physmemctl physmem_loadgen physmem_trace
exec ./build/physmemd "$@"
