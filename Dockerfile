# One image for every steadfast process; local/docker-compose.yml picks the command:
#   steadfast-api | steadfast-relay | steadfast-consumer | steadfast-scheduler
#   steadfast-warehouse | steadfast-migrate
# Logs are JSON on stdout (ECS names); Filebeat reads them from Docker's log files.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/steadfast
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY retry ./retry
COPY outbox ./outbox
COPY migrations ./migrations
COPY local ./local
# A regular (not editable) install: the runtime stage gets the venv and nothing of /src.
RUN /opt/steadfast/bin/pip install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/steadfast/bin:$PATH \
    STEADFAST_HOST=0.0.0.0
RUN useradd --create-home --home-dir /home/steadfast --uid 10001 --user-group steadfast
COPY --from=build /opt/steadfast /opt/steadfast
# faust keeps a small data directory in the working directory: the user's home is writable.
WORKDIR /home/steadfast
USER steadfast
# API, warehouse mock, and the metrics endpoint of relay/consumer/scheduler.
EXPOSE 8000 8081 9100
CMD ["steadfast-api"]
