#!/usr/bin/env bash
# abi3 against per-version builds of the compiled core, on benchmarks/replay.py (x86_64, 3.11).
# Run scripts/build_wheels.sh first (it leaves the tools and the x86_64 abi3 wheel). Builds,
# from the same sdist, a cp311-cp311 wheel with the same compiler (zig, glibc 2.17) and one
# with the host's gcc (what `pip install .` makes here), installs each build into its own
# venv with the pinned test requirements, and runs the benchmark's in-process measurement
# (the compiled core required) for each build in turn, and the pure twin for reference,
# ROUNDS times, keeping the median.
# Usage: bash scripts/bench_abi3.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROUNDS=${1:-3}
SCRATCH=${LAMBDA_WORKFLOW_WHEEL_SCRATCH:-$REPO/.wheel-build}
TOOLPY=$SCRATCH/tools/bin/python
export ZIG_GLOBAL_CACHE_DIR=$SCRATCH/zig-cache ZIG_LOCAL_CACHE_DIR=$SCRATCH/zig-cache
export PIP_DISABLE_PIP_VERSION_CHECK=1
SDIST=$(ls "$REPO"/dist/lambda_workflow-*.tar.gz)
ABI3=$(ls "$REPO"/dist/lambda_workflow-*-cp311-abi3-*x86_64.whl)
OUT=$SCRATCH/bench && rm -rf "$OUT" && mkdir -p "$OUT/raw"
PY311=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -V | tail -1)
[ -x "$TOOLPY" ] && [ -n "$PY311" ] || { echo "run scripts/build_wheels.sh first" >&2; exit 1; }

build() {  # build NAME VAR=VALUE...: a cp311-cp311 wheel from the sdist into $OUT/NAME
  local tree=$OUT/src-$1; local name=$1; shift
  mkdir -p "$tree" "$OUT/$name"
  tar -xzf "$SDIST" -C "$tree" --strip-components=1
  (cd "$tree" && env LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 "$@" "$TOOLPY" -m build --no-isolation \
    --wheel --outdir "$OUT/$name") >"$OUT/build-$name.log" 2>&1
}
ZCC=$SCRATCH/bin/zcc-x86_64
build zig-cp311 CC="$ZCC" LDSHARED="$ZCC -shared -s"
build gcc-cp311
mkdir -p "$OUT/abi3" && cp "$ABI3" "$OUT/abi3/"

for name in abi3 zig-cp311 gcc-cp311; do
  whl=$(ls "$OUT/$name"/*.whl)
  echo "$name: $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)"
  "$PY311" -m venv "$OUT/venv-$name"
  "$OUT/venv-$name/bin/pip" install -q -r scripts/wheel-test-requirements.txt "$whl" \
    2> >(grep -v "is ignored: it is neither" >&2)
done

for round in $(seq "$ROUNDS"); do
  for name in abi3 zig-cp311 gcc-cp311 py; do
    echo "round $round: $name"
    if [ $name = py ]; then  # the pure twin, for reference (in the abi3 venv)
      select=(LAMBDA_WORKFLOW_NO_EXTENSIONS=1) venv=$OUT/venv-abi3
    else
      select=(LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1) venv=$OUT/venv-$name
    fi
    (cd /tmp && env "${select[@]}" "$venv/bin/python" "$REPO/benchmarks/replay.py" \
      --inside 10,100,1000,10000) >"$OUT/$name-$round.json"
  done
done

"$TOOLPY" - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
names = ("abi3", "zig-cp311", "gcc-cp311", "py")
runs = {n: [json.loads((out / f"{n}-{r}.json").read_text()) for r in range(1, rounds + 1)]
        for n in names}
for n in names:
    assert all(r["implementation"] == ("py" if n == "py" else "c") for r in runs[n]), n

def med(n, *path):
    values = []
    for r in runs[n]:
        v = r
        for p in path:
            v = v[p]
        values.append(v)
    return statistics.median(values)

print(f"\nmedian of {rounds} rounds; microseconds per call (activation: ms per activation)")
print(f"| measure | N | {' | '.join(names)} | abi3 / zig-cp311 | py / abi3 | py / zig-cp311 |")
print("|---|--:|" + "--:|" * (len(names) + 3))
rows = []
for n in ("10", "100", "1000", "10000"):
    for shape in ("sequential", "gather10", "floor"):
        rows.append((f"replay {shape}", n, ("replay", n, shape), 1e6))
    rows.append(("record", n, ("record", n), 1e6))
    if n != "10000":
        rows.append(("activation", n, ("activation", n), 1e3))
for label, n, path, scale in rows:
    vals = [med(name, *path) * scale for name in names]
    print(f"| {label} | {n} | " + " | ".join(f"{v:.2f}" for v in vals)
          + f" | {vals[0] / vals[1]:.2f} | {vals[3] / vals[0]:.2f} | {vals[3] / vals[1]:.2f} |")
EOF
