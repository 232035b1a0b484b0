# otel-dbperf dbmonitor (docs/database.md): the database server's side, one container per server.
# The DSN comes from a file (DBPERF_DBMONITOR_DSN_FILE), never from the image or the command line.
FROM python:3.11-slim
COPY . /src
RUN pip install --no-cache-dir "/src[dbmonitor]"
USER 65534
CMD ["otel-dbperf", "dbmonitor"]
