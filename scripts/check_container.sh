#!/usr/bin/env bash
# Build the Docker image and run it the ways users do; print (and optionally record) a table.
#
#   sudo bash scripts/check_container.sh [--record docs/container-check.md] [--keep]
#                                        [--image NAME] [--no-build]
#
# --no-build runs the cases on an existing image NAME (a rerun after a fix applied to it).
# The containers run at the niceness of dockerd, not of this script: on a shared machine
# start dockerd under nice.
#
# Needs a running Docker engine and root (it chowns folders to an arbitrary uid). Not part of
# the test suite: it builds a ~2 GB image (minutes) and runs the app seven times.
#
# Base image: python:3.11-slim when it can be pulled; otherwise (no registry access) a
# stand-in of that name is built with debootstrap from Debian bookworm, whose python3 is
# 3.11, made to behave like the official image (python/pip on PATH, pip may install).
# torch: the build's TORCH_INDEX is a local index served from this machine's pip, so the
# wheel pip would install here (torch==2.13.0, CPU) is the one the image gets.
#
# Cases (every run with --network none: the app needs no network):
#   1 root default, output folder created by Docker (root-owned)      -> 0, files owned by root
#   2 -u 12345:12345 (no passwd entry), output folder owned by 12345   -> 0, files owned by 12345
#   3 -u 12345:12345, root-owned output folder                         -> 73, one-line error
#   4 --read-only --tmpfs /tmp -u 12345:12345, no -w                   -> 0 (work dir in /tmp)
#   5 --read-only without a tmpfs                                      -> 73, one-line error
#   6 group level, -u 12345:12345 on the folder of case 2              -> 0
#   7 rerun of case 2 with the same work dir: resumes                  -> 0, identical images
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RECORD=""
KEEP=0
BUILD=1
IMAGE=bids-auton2n:check
WORK=${CHECK_WORK:-/tmp/bids_auton2n-container-check}
while [ $# -gt 0 ]; do
    case "$1" in
        --record) RECORD=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --image) IMAGE=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "unknown option $1" >&2; exit 64 ;;
    esac
done
docker info >/dev/null 2>&1 || { echo "no Docker engine (start dockerd)" >&2; exit 69; }
mkdir -p "$WORK"
log() { echo "[check_container] $*" >&2; }

if [ "$BUILD" = 1 ]; then
# ---- base image ------------------------------------------------------------------------
if ! docker image inspect python:3.11-slim >/dev/null 2>&1 \
        && ! docker pull python:3.11-slim >/dev/null 2>&1; then
    log "python:3.11-slim cannot be pulled: building a stand-in from Debian bookworm"
    command -v debootstrap >/dev/null || { echo "apt-get install debootstrap" >&2; exit 69; }
    ROOTFS=$WORK/rootfs
    rm -rf "$ROOTFS"
    nice -n 10 debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
        bookworm "$ROOTFS" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1
    # As in the official image: python and pip on PATH, pip allowed to install system-wide.
    ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
    rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
    # The CA bundle of this machine, whose network may intercept TLS (an image pulled here
    # would need the same to reach PyPI); Debian's pip reads this file.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - python:3.11-slim >/dev/null
    rm -rf "$ROOTFS"
    BASE="stand-in (debootstrap bookworm, $(docker run --rm python:3.11-slim python --version))"
elif [ "$(docker run --rm --network none python:3.11-slim readlink /usr/local/bin/python)" \
        = /usr/bin/python3 ]; then  # the stand-in of an earlier run (the official links python3)
    BASE="stand-in (debootstrap bookworm, $(docker run --rm python:3.11-slim python --version))"
else
    BASE="python:3.11-slim ($(docker run --rm python:3.11-slim python --version))"
fi
log "base: $BASE"

# ---- local index serving this machine's torch wheel (and its dependencies) --------------
INDEX=$WORK/index
if [ ! -d "$INDEX/simple/torch" ]; then
    rm -rf "$INDEX" && mkdir -p "$INDEX/wheels"
    python3 -m pip download -q --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$INDEX/wheels" torch==2.13.0
    python3 - "$INDEX" <<'EOF'
import re, sys
from pathlib import Path
index = Path(sys.argv[1])
for wheel in sorted((index / "wheels").glob("*.whl")):
    project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    page = index / "simple" / project / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    links = page.read_text() if page.exists() else ""
    page.write_text(links + f'<a href="../../wheels/{wheel.name}">{wheel.name}</a><br>\n')
EOF
fi
# A fixed port keeps the TORCH_INDEX build argument, hence Docker's cached torch layer, from
# one run to the next; any free port when it is taken.
PORT=$(python3 -c "import socket; s=socket.socket()
try: s.bind(('127.0.0.1', ${CHECK_INDEX_PORT:-8731}))
except OSError: s.bind(('127.0.0.1', 0))
print(s.getsockname()[1])")
python3 -m http.server --bind 127.0.0.1 --directory "$INDEX" "$PORT" >"$WORK/index.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 1

# ---- image ---------------------------------------------------------------------------------
log "building $IMAGE"
start=$(date +%s)
nice -n 10 docker build --network host --build-arg "TORCH_INDEX=http://127.0.0.1:$PORT/simple" \
    -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
BUILD_S=$(( $(date +%s) - start ))
else
    BASE="not rebuilt (--no-build), image $IMAGE of $(docker image inspect "$IMAGE" --format '{{.Created}}' | cut -c1-16)"
    BUILD_S=-
fi
SIZE=$(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')
TORCH=$(docker run --rm --network none --entrypoint python "$IMAGE" -c \
    "import torch; print(torch.__version__)")
log "built in ${BUILD_S}s, $SIZE, torch $TORCH"

# ---- data: two participants, one T1w each, made by the image itself ---------------------
DATA=$WORK/data
rm -rf "$DATA" && mkdir -p "$DATA"
docker run --rm --network none -v "$DATA":/data --entrypoint python "$IMAGE" -c "
from bids_auton2n.cli.demo import make_demo_dataset
make_demo_dataset('/data/bids', images=(('01', None, None, 'T1w', 3.0),
                                        ('02', None, None, 'T1w', 5.0)))"
chmod -R a+rX "$DATA"

RESULTS=()
FAILED=0
run_case() {  # name, expected exit code, expected owner uid (or -), docker args...
    local name=$1 expect=$2 owner=$3; shift 3
    local out=$WORK/run-${#RESULTS[@]}.log
    local begin
    begin=$(date +%s)
    set +e
    nice -n 10 docker run --rm --network none "$@" >"$out" 2>&1
    local code=$?
    set -e
    local seconds=$(( $(date +%s) - begin ))
    local verdict=PASS note=""
    [ "$code" = "$expect" ] || verdict=FAIL
    if [ "$owner" != "-" ]; then
        local found
        found=$(find "$OUTDIR" -name '*_desc-denoised_T1w.nii.gz' -printf '%U\n' | sort -u | tr '\n' ' ')
        note="derivatives owned by uid ${found:-none}"
        [ "$found" = "$owner " ] || verdict=FAIL
    fi
    if [ "$expect" != 0 ]; then
        note="$(grep -v '^$' "$out" | tail -1 | cut -c1-220)"
        # The app first says what the run does (one line), then the error: one line of its
        # own, no traceback.
        if grep -q Traceback "$out" || [ "$(grep -c . "$out")" -gt 2 ] \
                || [[ "$note" != bids_auton2n:* ]]; then
            verdict=FAIL; note="not one line: $note"
        fi
    fi
    [ "$verdict" = PASS ] || { FAILED=1; tail -20 "$out" >&2; }
    local shown="$*"   # the table names the check's folder $WORK, not this machine's path
    RESULTS+=("| $name | \`docker run --network none ${shown//$WORK/\$WORK}\` | $code (expected $expect) | ${seconds} s | $verdict | $note |")
    log "$verdict $name: exit $code (${seconds}s) $note"
}

APP=("$IMAGE" /bids /out participant --nprocs 2 --omp-nthreads 1)

OUTDIR=$WORK/out-root; rm -rf "$OUTDIR"   # docker creates it: root-owned
run_case "root (image default), output folder created by Docker" 0 0 \
    -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out "${APP[@]}"

OUTDIR=$WORK/out-user; rm -rf "$OUTDIR" "$WORK/work-user"
mkdir -p "$OUTDIR" "$WORK/work-user" && chown 12345:12345 "$OUTDIR" "$WORK/work-user"
run_case "uid 12345 without passwd entry, own output folder" 0 12345 \
    -u 12345:12345 -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out -v "$WORK/work-user":/work \
    "${APP[@]}" -w /work

OUTDIR=$WORK/out-root
run_case "uid 12345, root-owned output folder" 73 - \
    -u 12345:12345 -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out "${APP[@]}"

OUTDIR=$WORK/out-ro; rm -rf "$OUTDIR"; mkdir -p "$OUTDIR" && chown 12345:12345 "$OUTDIR"
run_case "read-only root, tmpfs /tmp, uid 12345, no -w" 0 12345 \
    --read-only --tmpfs /tmp -u 12345:12345 -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out "${APP[@]}"

run_case "read-only root without a tmpfs" 73 - \
    --read-only -u 12345:12345 -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out "${APP[@]}"

OUTDIR=$WORK/out-user
run_case "group level, uid 12345" 0 - \
    -u 12345:12345 -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out -v "$WORK/work-user":/work \
    "$IMAGE" /bids /out group -w /work

before=$(cd "$OUTDIR" && find . -name '*.nii.gz' -exec sha256sum {} + | sort)
run_case "rerun with the same work dir (resume)" 0 12345 \
    -u 12345:12345 -v "$DATA/bids":/bids:ro -v "$OUTDIR":/out -v "$WORK/work-user":/work \
    "${APP[@]}" -w /work
after=$(cd "$OUTDIR" && find . -name '*.nii.gz' -exec sha256sum {} + | sort)
n_images=$(printf '%s' "$after" | grep -c . || true)
if [ "$before" != "$after" ] || [ "$n_images" -lt 2 ]; then  # no images is no evidence
    FAILED=1; RESULTS+=("| rerun gives byte-identical images | sha256 of every .nii.gz before/after | | | FAIL | $n_images files |")
else
    RESULTS+=("| rerun gives byte-identical images | sha256 of every .nii.gz before/after | | | PASS | $n_images files |")
fi

{
    echo "Container check ($(date -u +%Y-%m-%d), \`bash scripts/check_container.sh\`, $(uname -m), Docker $(docker version --format '{{.Server.Version}}'))"
    echo
    echo "Base image: $BASE. Image: $SIZE, torch $TORCH, built in ${BUILD_S} s (nice 10, shared machine)."
    echo "Data: two generated participants, one 40x48x40 T1w each; times are whole \`docker run\`s on a shared 2-core machine, not performance figures."
    echo
    echo "| case | command | exit code | time | result | notes |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${RESULTS[@]}"
} | tee "$WORK/results.md"
[ -n "$RECORD" ] && cp "$WORK/results.md" "$RECORD"
[ "$KEEP" = 1 ] || rm -rf "$DATA" "$WORK"/out-* "$WORK"/work-*
exit $FAILED
