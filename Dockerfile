# syntax=docker/dockerfile:1
#
# One image per service, chosen by build argument (docs/deploy.md):
#
#     docker build --build-arg SERVICE=payment -t sagakit-payment .
#
# SERVICE is one of inventory, payment, shipping, notification, tracker. The image holds
# that service, sagakit and order_contracts, and the third-party packages they need at the
# versions in deploy/requirements/<SERVICE>.txt (pinned and hashed, made by
# deploy/export-requirements.sh), nothing else. It runs as an unprivileged user, with
# SAGAKIT_ENV=production: a broker URL with the guest account is refused.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN case "${SERVICE}" in \
      inventory|payment|shipping|notification|tracker) ;; \
      *) echo "build with --build-arg SERVICE=inventory|payment|shipping|notification|tracker, not '${SERVICE}'" >&2; exit 1 ;; \
    esac
WORKDIR /src

# Third-party packages first (they change least): exactly the locked versions, each file
# checked against its hash, wheels only, so nothing is compiled and nothing is resolved.
COPY deploy/requirements/build.txt deploy/requirements/${SERVICE}.txt deploy/requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: \
      -r deploy/requirements/${SERVICE}.txt \
 && pip install --require-hashes --only-binary=:all: -r deploy/requirements/build.txt

# Then the workspace packages, from source, built with the pinned backend above and
# installed without resolving anything (all they need is already in the venv).
COPY shared/ shared/
COPY contracts/ contracts/
COPY services/${SERVICE}/ services/${SERVICE}/
# ./ prefixes: a bare name would be looked up on the package index instead.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \
      ./shared ./contracts ./services/${SERVICE} \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check


FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE
LABEL org.opencontainers.image.title="sagakit-${SERVICE}" \
      org.opencontainers.image.description="The ${SERVICE} service of the sagakit order saga"

RUN groupadd --system --gid 10001 saga \
 && useradd --system --uid 10001 --gid saga --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin saga \
 && mkdir -p /app/var \
 && chown saga:saga /app/var

COPY --from=build /opt/venv /opt/venv

# SAGAKIT_APP is the factory `faststream run --factory` calls to build the app (it reads the
# settings then): <service>_service.main:create_app.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SAGAKIT_ENV=production \
    SAGAKIT_APP=${SERVICE}_service.main:create_app

# var/ holds the SQLite store when no database URL is given.
WORKDIR /app
USER 10001:10001

# Health (/livez, /readyz) and Prometheus metrics, when <PREFIX>HEALTH_PORT and
# <PREFIX>METRICS_PORT say so (docker-compose.yml sets these ports).
EXPOSE 8080 9100

# exec: faststream is PID 1 and gets SIGTERM itself, for a graceful stop.
CMD ["/bin/sh", "-c", "exec faststream run --factory \"$SAGAKIT_APP\""]
