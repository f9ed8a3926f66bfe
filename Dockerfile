# bids-auton2n BIDS-App image (CPU).
#   docker build -t bids-auton2n .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out bids-auton2n /bids /out participant
# Files come out owned by root, as with fMRIPrep's and MRIQC's images; to own them, run as
# yourself on an output folder you created: docker run --rm -u $(id -u):$(id -g) ...
# Any uid works (no passwd entry needed), and so does a read-only root file system given a
# writable /tmp: docker run --read-only --tmpfs /tmp ... (see docs/singularity.md).
# CUDA variant: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# (any CUDA wheel index of torch 2.13.0) and run with `docker run --gpus all ... --device cuda`.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# HOME is shared by every uid (world-writable, sticky, like /tmp); where it is read-only the
# app moves its caches (numba, matplotlib, TemplateFlow) to $TMPDIR by itself.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/auton2n \
    BIDS_AUTON2N_CONTAINER=docker

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY . /src/bids-auton2n
RUN pip install /src/bids-auton2n && rm -rf /src/bids-auton2n \
    && mkdir -p -m 1777 /home/auton2n

# Compile the numba kernels once, into the package's __pycache__, which every uid may use
# (a run on a read-only root compiles them again, in $TMPDIR: ~10-30 s per job). 0777, not
# 1777: a uid that needs a new signature (other dtypes, another CPU) rewrites root's index
# files, which a sticky folder forbids (EPERM, every image failed); the folder lives in the
# container's own layer, so nothing is shared between containers.
RUN python -c "import numpy as np; from bids_auton2n.denoise.pipeline import denoise_array; \
g = np.indices((32, 32, 32)) - 15.5; ball = 100.0 * (np.sqrt((g ** 2).sum(0)) < 12); \
noise = np.random.default_rng(0).normal(0, 3, ball.shape); \
denoise_array(np.abs(ball + noise).astype(np.float32), tta=False)" \
    && chmod 0777 "$(python -c 'import os, bids_auton2n.denoise as d; \
print(os.path.join(os.path.dirname(d.__file__), "__pycache__"))')"

WORKDIR /home/auton2n
ENTRYPOINT ["bids_auton2n"]
CMD ["--help"]
