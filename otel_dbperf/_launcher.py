"""Loaded by the ``opentelemetry-instrument`` launcher before it starts the app.

The launcher imports every ``opentelemetry_environment_variables`` entry point
to build its command line, in its own process, before ``exec``-ing the
application. Choosing our distro and configurator here makes the choice
deterministic when ``opentelemetry-distro`` is installed too (entry-point order
is otherwise filesystem order). Explicit user settings win.
"""

import os

os.environ.setdefault("OTEL_PYTHON_DISTRO", "otel_dbperf")
os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "otel_dbperf")
