# One image for every role of the platform (deploy/README.md): `mlops ...` commands, the code location server
# (`dagster code-server start`), `dagster-webserver`, `dagster-daemon run` and the prediction service
# (`mlops serve --host 0.0.0.0`). The role is the command; the data directory is the volume /data.
#
#   podman build -t mlops-assets .            (or docker build; --build-arg BASE_IMAGE=... for another base)
#   podman run --rm -v "$PWD/data:/data" mlops-assets mlops replay --through 2013-03
#
# Health checks are per role, so they are in deploy/compose.yaml, not here (an image has one HEALTHCHECK).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# libgomp1: LightGBM's OpenMP runtime (slim images lack it); tini: a PID 1 that forwards SIGTERM and reaps the run
# workers the code server starts.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

WORKDIR /app
# The dependencies first, from pyproject.toml alone (no dev extras): a change of the source reuses this layer.
COPY pyproject.toml ./
RUN python -c 'import tomllib; \
      print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the project. Installed in place (editable) at /app: `mlops home` reads the instance settings dagster.yaml /
# dagster.postgres.yaml beside pyproject.toml, which a site-packages install would leave behind.
COPY . .
RUN pip install --no-deps --editable . \
 && python -m compileall -q mlops_assets \
 && chmod 0755 deploy/entrypoint.sh

ARG UID=10001
RUN useradd --uid "${UID}" --user-group --create-home --home-dir /home/mlops mlops \
 && mkdir -p /data \
 && chown mlops:mlops /data
# matplotlib's font cache made here, in a folder of the image the runtime user owns: a fresh container's first report
# plot scans no fonts, and a running container writes nothing outside /data (it wrote ~/.cache/matplotlib)
ENV MPLCONFIGDIR=/opt/matplotlib
RUN python -c "import matplotlib.font_manager" \
 && chown -R mlops:mlops /opt/matplotlib
# MLOPS_IN_IMAGE: hints say what to run in the image (it has no Makefile)
ENV MLOPS_DATA_DIR=/data \
    DAGSTER_HOME=/data/dagster_home \
    MLOPS_IN_IMAGE=1
VOLUME /data
USER mlops
# 3000 dagster-webserver, 4000 the code location server, 8000 mlops serve
EXPOSE 3000 4000 8000
ENTRYPOINT ["tini", "--", "/app/deploy/entrypoint.sh"]
CMD ["mlops", "--help"]
