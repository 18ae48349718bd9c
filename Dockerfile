FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DISPATCHER_LOG_FORMAT=json \
    DISPATCHER_METRICS_DIR=/var/lib/dispatcher/metrics
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
COPY channels ./channels
COPY workers ./workers
COPY templates ./templates
RUN pip install --no-cache-dir . && useradd --system dispatcher \
    && install -d -o dispatcher /var/lib/dispatcher/metrics /var/lib/dispatcher/witness
USER dispatcher
EXPOSE 8000
CMD ["dispatcher", "serve", "--host", "0.0.0.0"]
