# syntax=docker/dockerfile:1
#
# Skipper's images. The role is the command's argument:
#   docker run IMAGE --role=api        (or trainer, server, all; default: all)
# Settings come from SKIPPER_* environment variables (see config/skipper.yaml).
#
# Targets (docs/deploy.md gives their sizes):
#   runtime (the default, last stage): every role, TensorFlow included.
#   api:     the api role alone, without TensorFlow or Keras (the api never loads a model):
#            docker build --target api -t skipper-api .
#
# Dependencies: pyproject.toml lists what is installed, requirements.lock (the same
# constraints file CI installs with) pins the versions, so the image runs exactly the
# dependency set the tests ran against.
#
# BASE_IMAGE: any Debian-based image whose `python` is 3.11 (default python:3.11-slim; the image
# test builds from a local debootstrap of Debian bookworm). Behind a private index or a proxy with
# its own CA, pass pip's configuration and the CA bundle as build secrets (never stored in a layer):
#   docker build --secret id=pipconf,src=pip.conf --secret id=pipca,src=ca.crt .
# where pip.conf may say `cert = /run/secrets/pipca`.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# builder-base: an empty venv and the dependency lists, what both builders start from
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder-base

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_CONFIG_FILE=/run/secrets/pipconf

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
COPY pyproject.toml requirements.lock ./

# ---------------------------------------------------------------------------------------
# builder: resolve and install the runtime dependencies into a self-contained venv
# ---------------------------------------------------------------------------------------
FROM builder-base AS builder

# The [project] dependencies first, every version pinned by the lock: their own layer, rebuilt
# only when pyproject.toml or the lock change.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.in \
 && pip install --require-virtualenv -r requirements.in -c requirements.lock
# Then Skipper itself, installed as a wheel (not editable), as `pip install .` does anywhere:
# its default config ships inside the package, so nothing of the source tree is needed at run time.
COPY setup.py README.md ./
COPY config/ config/
COPY skipper/ skipper/
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    pip install --require-virtualenv --no-deps . \
 && pip check

# ---------------------------------------------------------------------------------------
# api-builder: the same venv without TensorFlow, Keras and scikit-learn (training and serving only)
# ---------------------------------------------------------------------------------------
FROM builder-base AS api-builder

RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith(('tensorflow', 'keras', 'scikit-learn'))))" > requirements.in \
 && pip install --require-virtualenv -r requirements.in -c requirements.lock
COPY setup.py README.md ./
COPY config/ config/
COPY skipper/ skipper/
# pip check may only miss what was left out on purpose.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    pip install --require-virtualenv --no-deps . \
 && { pip check || true; } | grep -v -E '^skipper [^ ]+ requires (tensorflow-cpu|keras|scikit-learn),' | { ! grep -v '^No broken'; }

# ---------------------------------------------------------------------------------------
# runtime-base: what every runtime image shares (user, environment, entrypoint, probes)
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime-base

LABEL org.opencontainers.image.title="skipper" \
      org.opencontainers.image.description="Skipper ML workflow engine: one image, role chosen by --role" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    SKIPPER_HOST=0.0.0.0 \
    SKIPPER_PORT=8000 \
    SKIPPER_DATA_DIR=/var/lib/skipper

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 skipper \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/skipper --no-create-home --shell /usr/sbin/nologin skipper \
 && mkdir -p /var/lib/skipper \
 && chown 10001:10001 /var/lib/skipper

WORKDIR /var/lib/skipper

USER 10001:10001

EXPOSE 8000

# Liveness of the process; Kubernetes uses its own probes (health and ready) instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/v1/skipper/health' % os.environ.get('SKIPPER_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["python", "-m", "skipper"]

# ---------------------------------------------------------------------------------------
# api: the api role's image, without TensorFlow (docker build --target api)
# ---------------------------------------------------------------------------------------
FROM runtime-base AS api

LABEL org.opencontainers.image.description="Skipper ML workflow engine: the api role, without TensorFlow"

# pip byte-compiled everything it installed: the root filesystem is read-only at run time.
COPY --from=api-builder /opt/venv /opt/venv

CMD ["--role=api"]

# ---------------------------------------------------------------------------------------
# runtime: every role; the venv (dependencies and the installed package), nothing else
# ---------------------------------------------------------------------------------------
FROM runtime-base AS runtime

# pip byte-compiled everything it installed: the root filesystem is read-only at run time.
COPY --from=builder /opt/venv /opt/venv

CMD ["--role=all"]
