#!/usr/bin/env bash
# The soak test: builds what it needs, then runs tests/soak/soak.py against a real physmemd.
#   bash scripts/soak.sh [seconds] [clients] [threads per client]     (default: 600 s, 4, 4)
# Results: build/soak-<seconds>s/summary.json (machine-readable) and a human summary on stdout;
# exit status 0 when every check passed. docs/soak.md says what it checks. CI runs the 60 s
# version as the ctest Soak.FourClientsForSixtySeconds (label soak).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-600}
CLIENTS=${2:-4}
THREADS=${3:-4}
bash scripts/install-deps.sh
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHYSMEM_WERROR=ON > build.configure.log 2>&1 ||
    { cat build.configure.log; exit 1; }
fi
ninja -C build -j"${JOBS:-$(nproc)}" physmemd physmemctl physmem_soak_client physmem_soak_ledger_check
exec /usr/bin/python3 tests/soak/soak.py --seconds="$SECONDS_TO_RUN" --clients="$CLIENTS" --threads="$THREADS" \
  --physmemd=build/physmemd --client=build/physmem_soak_client --ledger_check=build/physmem_soak_ledger_check \
  --physmemctl=build/physmemctl --out="build/soak-${SECONDS_TO_RUN}s"
