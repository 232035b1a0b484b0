"""The class-level SQLAlchemy listeners and the instrumentation fix-ups."""
