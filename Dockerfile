# bids-auton2n BIDS-App image (CPU).
#   docker build -t bids-auton2n .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out bids-auton2n /bids /out participant
# CUDA variant: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# (any CUDA wheel index of torch 2.13.0) and run with `docker run --gpus all ... --device cuda`.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/auton2n \
    NUMBA_CACHE_DIR=/tmp/numba_cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/tmp/templateflow \
    BIDS_AUTON2N_CONTAINER=docker

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY . /src/bids-auton2n
RUN pip install /src/bids-auton2n && rm -rf /src/bids-auton2n \
    && useradd --create-home --home-dir /home/auton2n --uid 1000 auton2n

USER auton2n
WORKDIR /home/auton2n
# Caches live under /tmp, so the image also runs read-only (Singularity/Apptainer).
ENTRYPOINT ["bids_auton2n"]
CMD ["--help"]
