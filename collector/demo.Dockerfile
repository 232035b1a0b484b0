# The otel-dbperf demo shop as a service for docker-compose (build context: the repo root).
FROM python:3.11-slim
COPY . /src
RUN pip install --no-cache-dir "/src[demo]"
ENV SHOP_DB_URL=sqlite:////app/shop.db \
    OTEL_SERVICE_NAME=dbperf-demo-shop
WORKDIR /app
# seed the searched table at build time (400k rows)
RUN python -m otel_dbperf.report.demo.shop 400000
# the shop lives in site-packages: name it as application code
CMD ["sh", "-c", "DEMO=$(python -c 'import os, otel_dbperf.report.demo as d; print(os.path.dirname(d.__file__))') && DBPERF_APP_PATHS=$DEMO exec opentelemetry-instrument gunicorn -b 0.0.0.0:8000 -w 2 --chdir $DEMO shop:app"]
