"""Helpers shared by the test files (no test file imports another): the in-process pipeline harness,
Chromium, OTLP JSON line builders for the report tests, the Celery worker and the Django site."""
