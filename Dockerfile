# cxrexplain: TorchServe (Java 17 frontend) + the explanation handlers, GPU used when run with --gpus all.
# torch==2.14.1 from PyPI is a CUDA build that bundles its CUDA libraries, so a plain Debian base serves both
# CPU and GPU hosts (the host needs the NVIDIA driver and the container toolkit for --gpus all).
#
#   docker build -t cxrexplain .                       # trains the small demo models and builds their archives
#   docker build --build-arg DEMO=0 -t cxrexplain .    # no demo: mount your own archives at /srv/model_store
#   docker run --gpus all -p 8080:8080 -p 7070:7070 -p 8082:8082 cxrexplain
#
# Ports: 8080 REST inference, 7070 gRPC inference, 8082 Prometheus metrics (no token needed);
# management (8081/7071) stays on the container's loopback. Tokens: key_file.json in /srv/run (docker exec).
FROM python:3.11-slim-bookworm

ARG DEMO=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 serve
WORKDIR /srv
COPY --chown=serve:serve . /srv
RUN pip install --no-cache-dir -e '.[serve]' && pip install --no-cache-dir './client[dicom]'

USER serve
RUN if [ "$DEMO" = "1" ]; then python -m cxrexplain_lab.train_demo --out .cache/demo-weights --size 96 \
    && cxrexplain-export export/demo_recipe.yaml --store model_store; fi

EXPOSE 8080 7070 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD python -m export.healthcheck --run-dir /srv/run || exit 1
CMD ["python", "-m", "export.launcher", "start", "--foreground", "--host", "0.0.0.0", \
     "--store", "/srv/model_store", "--run-dir", "/srv/run"]
