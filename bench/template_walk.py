"""The frame walk's cost when a template triggers the query (information, CPU time, noisy).

Times ``AppCode.walk`` from inside a callable that a template calls (the way a lazy load runs
inside a ``{% for %}``): through Django's template engine, through Jinja2, and from a plain
Python loop of the same depth, each from an application frame (a function in a temporary
directory given as the application path).

    python bench/template_walk.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

from otel_dbperf._pipeline.location import AppCode

N = 20_000
APP = Path(tempfile.mkdtemp(prefix="dbperf-walk-"))
(APP / "view.py").write_text("def render(fn, probe):\n    return fn(probe)  # the view: the first application frame\n")
(APP / "page.html").write_text("{% for i in items %}{{ probe }}{% endfor %}\n")  # Django calls callables
(APP / "page.jinja").write_text("{% for i in items %}{{ probe() }}{% endfor %}\n")
sys.path.insert(0, str(APP))
import view  # noqa: E402

app = AppCode((str(APP),))
results: dict[str, list[float]] = {}
depths: dict[str, int] = {}
baseline: dict[str, list[float]] = {}
hints: dict[str, object] = {}


def measure(name: str) -> str:
    frame = sys._getframe(1)  # the caller of the probe: template or library code
    found, _, hints[name] = app.walk(frame)  # classifies the files once
    assert found is not None and found.f_code.co_filename == view.__file__, found
    times = timeit.repeat(lambda: app.walk(frame), number=N, repeat=5)
    results[name] = [t / N * 1e6 for t in times]
    depth, f = 0, frame
    while f is not None and f.f_code.co_filename != view.__file__:
        depth, f = depth + 1, f.f_back
    depths[name] = depth
    # the same stack walked without template recognition (every file's verdict plain "not app")
    blind = AppCode((str(APP),))
    blind._cache = {k: (v if v is True else False) for k, v in app._cache.items()}  # noqa: SLF001
    times = timeit.repeat(lambda: blind.walk(frame), number=N, repeat=5)
    baseline[name] = [t / N * 1e6 for t in times]
    return ""


def plain(probe):  # noqa: ANN001, ANN201 - library-like code between the view and the query
    return [probe() for _ in range(1)]


def django_page(probe):  # noqa: ANN001, ANN201
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}])
        django.setup()
    from django.template import Context, Engine

    engine = Engine(dirs=[str(APP)])
    return engine.get_template("page.html").render(Context({"items": [1], "probe": probe}))


def jinja_page(probe):  # noqa: ANN001, ANN201
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(APP)))
    return env.get_template("page.jinja").render(items=[1], probe=probe)


view.render(plain, lambda: measure("plain Python"))
view.render(django_page, lambda: measure("Django template"))
view.render(jinja_page, lambda: measure("Jinja2 template"))
for name, per_call in results.items():
    hint = hints[name]
    where = f"  location {os.path.basename(hint[0])}:{hint[1]}" if isinstance(hint, tuple) else ""
    print(
        f"{name:16s} {depths[name]:3d} frames: walk median {statistics.median(per_call):.2f} us"
        f" (min {min(per_call):.2f}), without template recognition {statistics.median(baseline[name]):.2f} us"
        f" (min {min(baseline[name]):.2f}){where}"
    )
print(f"(application path {APP}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
