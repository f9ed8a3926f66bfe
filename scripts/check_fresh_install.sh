#!/usr/bin/env bash
# Reproduce the Dockerfile's install steps outside Docker, then run the README's demo.
#
# Docker cannot run everywhere (e.g. on the machines this project is developed on), so this
# script repeats what the Dockerfile does, in the same order and with the same pins, in a
# brand-new virtual environment with no system site packages:
#
#   1. the Dockerfile's ENV (cache dirs for numba / matplotlib / TemplateFlow, container tag),
#      pointed at a fresh temporary folder and a fresh HOME;
#   2. pip install torch==${TORCH_VERSION} (the Dockerfile's pin; from TORCH_INDEX when set,
#      otherwise from pip's configured indexes, so a local CPU wheel is used when present);
#   3. a copy of the source tree as `COPY .` would make it (honouring .dockerignore's intent:
#      the files git tracks or would track) and a regular, non-editable `pip install` of it;
#   4. the README's demo command, `bids_auton2n-demo <dir>`, run from outside the source tree
#      (without network where `unshare -rn` works), then checks that the derivatives,
#      sidecars, reports (with their offline layout) and group table exist.
#
# Usage: scripts/check_fresh_install.sh [WORKDIR]   (about 3 minutes with a local PyPI mirror)
#   WORKDIR (default: a new mktemp -d folder) receives venv/, src/, home/, demo/ and
#   install.log; it is kept afterwards for inspection. Exit code 0 when every check passed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${1:-$(mktemp -d -t auton2n-fresh-XXXXXX)}"
mkdir -p "${WORKDIR}"
WORKDIR="$(cd "${WORKDIR}" && pwd)"
PYTHON="${PYTHON:-python3}"

# The Dockerfile's pin, read from it so the two cannot drift apart.
TORCH_VERSION="$(sed -n 's/^ARG TORCH_VERSION=//p' "${REPO}/Dockerfile")"
[ -n "${TORCH_VERSION}" ] || { echo "no ARG TORCH_VERSION in ${REPO}/Dockerfile" >&2; exit 2; }

log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

start=$(date +%s)
log "work dir: ${WORKDIR}; python: $(${PYTHON} --version 2>&1); torch pin: ${TORCH_VERSION}"

# 1. Environment of the Dockerfile (ENV block), with /tmp paths moved under WORKDIR.
export PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
export HOME="${WORKDIR}/home"
export NUMBA_CACHE_DIR="${WORKDIR}/tmp/numba_cache"
export MPLCONFIGDIR="${WORKDIR}/tmp/matplotlib"
export TEMPLATEFLOW_HOME="${WORKDIR}/tmp/templateflow"
export BIDS_AUTON2N_CONTAINER=docker
unset PYTHONPATH
mkdir -p "${HOME}"

"${PYTHON}" -m venv "${WORKDIR}/venv"   # no --system-site-packages: nothing leaks in
# shellcheck disable=SC1091
source "${WORKDIR}/venv/bin/activate"
python -c 'import sys; assert sys.prefix != sys.base_prefix, "not in the venv"'
python -m pip install -q --upgrade pip

# 2. RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
log "pip install torch==${TORCH_VERSION}"
if [ -n "${TORCH_INDEX:-}" ]; then
    python -m pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
else
    python -m pip install "torch==${TORCH_VERSION}"
fi

# 3. COPY . /src/bids-auton2n && RUN pip install /src/bids-auton2n
log "copy source tree and pip install it (non-editable)"
mkdir -p "${WORKDIR}/src"
(cd "${REPO}" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -T - -cf -) | tar -xf - -C "${WORKDIR}/src"
python -m pip install "${WORKDIR}/src" 2>&1 | tee "${WORKDIR}/install.log"
rm -rf "${WORKDIR}/src"
# setuptools warns (and will one day fail) when a folder with package data is not a package
if grep -q "BuildBackendWarning" "${WORKDIR}/install.log"; then
    fail "setuptools warned while building the package (see ${WORKDIR}/install.log)"
fi
python -m pip freeze > "${WORKDIR}/pip-freeze.txt"
installed=$(date +%s)
log "installed in $((installed - start)) s; $(wc -l < "${WORKDIR}/pip-freeze.txt") packages"

# The cache dirs the Dockerfile names must be the ones the libraries use.
python - <<'EOF'
import os
import numba.core.config as numba_config
import matplotlib
assert numba_config.CACHE_DIR == os.environ["NUMBA_CACHE_DIR"], numba_config.CACHE_DIR
assert matplotlib.get_configdir() == os.environ["MPLCONFIGDIR"], matplotlib.get_configdir()
EOF

# 4. README's demo command, from a folder outside the source tree.
log "bids_auton2n-demo ${WORKDIR}/demo"
cd "${WORKDIR}"
bids_auton2n --version
# The app needs no network at run time (offline HPC nodes): where an unprivileged network
# namespace can be made, the demo runs without any network interface.
offline=()
if unshare -rn true 2>/dev/null; then
    offline=(unshare -rn)
    log "the demo runs without network (unshare -rn)"
fi
if ! "${offline[@]}" bids_auton2n-demo "${WORKDIR}/demo" 2>&1 | tee "${WORKDIR}/demo.log"; then
    fail "the demo failed (see ${WORKDIR}/demo.log)"
fi
demo_done=$(date +%s)
log "demo finished in $((demo_done - installed)) s"
# Visible progress from the start: images done / total with the elapsed time.
grep -q '^\[0:00:00\] 0/5 images denoised' "${WORKDIR}/demo.log" \
    || fail "the demo printed no progress line at its start"
grep -q '^\[[0-9:]*\] 5/5 images denoised' "${WORKDIR}/demo.log" \
    || fail "the demo's progress never reached 5/5 images"

out="${WORKDIR}/demo/out"
n_images=$(find "${WORKDIR}/demo/bids" -name '*_T[12]w.nii.gz' | wc -l)
n_denoised=$(find "${out}" -name '*_desc-denoised_T[12]w.nii.gz' | wc -l)
n_sidecars=$(find "${out}" -name '*_desc-denoised_T[12]w.json' | wc -l)
[ "${n_images}" -gt 0 ] || fail "the demo wrote no input images"
[ "${n_denoised}" -eq "${n_images}" ] || fail "${n_denoised} denoised images for ${n_images} inputs"
[ "${n_sidecars}" -eq "${n_images}" ] || fail "${n_sidecars} sidecars for ${n_images} inputs"
for f in dataset_description.json sub-01.html sub-02.html group_denoising.html \
         group_denoising.tsv logs/CITATION.md; do
    [ -s "${out}/${f}" ] || fail "missing or empty: ${out}/${f}"
done
[ -n "$(find "${out}/sub-01/figures" -name '*.svg' -print -quit)" ] || fail "no figures for sub-01"
grep -q 'id="auton2n-offline-style"' "${out}/sub-01.html" \
    || fail "sub-01.html lacks the offline layout (package data missing?)"
n_rows=$(($(wc -l < "${out}/group_denoising.tsv") - 1))
[ "${n_rows}" -eq "${n_images}" ] || fail "group table has ${n_rows} rows for ${n_images} images"
[ -n "$(ls -A "${NUMBA_CACHE_DIR}" 2>/dev/null)" ] || fail "numba cache not written to NUMBA_CACHE_DIR"

log "OK: ${n_images} images denoised, reports and group table written;" \
    "install $((installed - start)) s, demo $((demo_done - installed)) s," \
    "total $((demo_done - start)) s"
