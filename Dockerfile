# The backend as a small, non-root container image (docs/deploy.md).
#
#   docker build -t stripe-app-backend .          (or: podman build --format docker ...)
#   docker run -p 8000:8000 -v app-data:/data --env-file app.env stripe-app-backend
#
# SQLite lives in the /data volume; for several replicas set DATABASE_URL to PostgreSQL
# (deploy/compose.yaml). Any command runs in the image: `docker run ... stripe-app-backend migrate`.
# BASE may name another Debian-based image with python3 (3.11+) and its venv module.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md run.py ./
COPY cli cli
COPY service service
COPY jobs jobs
COPY models models
COPY example_app example_app
# service/openapi.yaml (`run.py openapi`) is a link to the document the docs keep.
COPY docs/openapi.yaml docs/openapi.yaml
# A virtual environment, so that the runtime stage copies one folder and nothing else.
RUN python3 -m venv /opt/app \
 && /opt/app/bin/pip install --no-cache-dir --disable-pip-version-check 'setuptools<81' \
 && /opt/app/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/app/bin/pip uninstall -y -q pip setuptools \
 && find /opt/app -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin app \
 && mkdir -p /data && chown app:app /data && chmod 0700 /data
COPY --from=build /opt/app /opt/app
ENV PATH=/opt/app/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:////data/app.db
VOLUME ["/data"]
WORKDIR /data
USER app:app
EXPOSE 8000
# No curl in a slim image: the health check is a few lines of the image's own Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "run"]
CMD ["serve"]
