# syntax=docker/dockerfile:1
# One image for every AdaSpec role: the command picks it (`serve coordinator | verify | draft | http`).
#
# GPU image (the default): torch from PyPI, whose Linux x86_64 wheels are the CUDA builds (Triton included).
# CPU image, a few GB smaller, for laptops and CI (docs/deployment.md):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t adaspec:0.1.0 .
# Models are not in the image: they are mounted read-only at /models.
FROM python:3.12-slim

ARG TORCH_INDEX_URL=https://pypi.org/simple
# The torch the README's quick start names.
ARG TORCH_SPEC=torch==2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ADASPEC_MODELS_DIR=/models \
    HF_HUB_OFFLINE=1

# torch first, in a layer of its own: it is most of the image and changes least.
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"

# The project from a bind mount, so that its sources and build files do not stay in a layer.
RUN --mount=type=bind,target=/src,rw pip install /src

RUN useradd --create-home --uid 10001 adaspec
USER 10001
WORKDIR /home/adaspec

# coordinator, verify, draft (gRPC), HTTP API
EXPOSE 50051 50061 50071 8000
# What every service drains on: NOT_SERVING, finish what is running (--grace-s), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["adaspec"]
CMD ["--help"]
