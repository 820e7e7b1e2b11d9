# syntax=docker/dockerfile:1
#
# One image for every Skipper role. The role is the command's argument:
#   docker run IMAGE --role=api        (or trainer, server, all; default: all)
# Settings come from SKIPPER_* environment variables (see config/skipper.yaml).
#
# Dependencies: pyproject.toml lists what is installed, requirements.lock (the same
# constraints file CI installs with) pins the versions, so the image runs exactly the
# dependency set the tests ran against.

# ---------------------------------------------------------------------------------------
# builder: resolve and install the runtime dependencies into a self-contained venv
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
COPY pyproject.toml requirements.lock ./
# The [project] dependencies first, every version pinned by the lock: their own layer, rebuilt
# only when pyproject.toml or the lock change.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.in \
 && pip install --require-virtualenv -r requirements.in -c requirements.lock
# Then Skipper itself, installed as a wheel (not editable), as `pip install .` does anywhere:
# its default config ships inside the package, so nothing of the source tree is needed at run time.
COPY setup.py README.md ./
COPY config/ config/
COPY skipper/ skipper/
RUN pip install --require-virtualenv --no-deps . \
 && pip check

# ---------------------------------------------------------------------------------------
# runtime: the venv (dependencies and the installed package); nothing else
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

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

# pip byte-compiled everything it installed: the root filesystem is read-only at run time.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /var/lib/skipper

USER 10001:10001

EXPOSE 8000

# Liveness of the process; Kubernetes uses its own probes (health and ready) instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/v1/skipper/health' % os.environ.get('SKIPPER_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["python", "-m", "skipper"]
CMD ["--role=all"]
