"""Which frames are application code, and the first one that issued a query.

A frame walk with ``sys._getframe`` costs a few microseconds; the verdict per
file name is cached. Under async SQLAlchemy the query runs in a child
greenlet, so the walk continues into the parent greenlet's suspended frames.

The same walk notices a SQLAlchemy lazy load on its way: the frame of
lazy loader's ``_load_for_state`` (``sqlalchemy/orm/strategies.py``), recognised by its
code object. Its file gets its own cached verdict, so every other frame costs
the walk nothing more. :meth:`AppCode.walk` notices two more things the same way:

- a template that triggered the query: Django's ``Node.render_annotated``
  (``django/template/base.py``; its node carries the token with its line and the
  template's origin), and a compiled Jinja2 template (its module globals hold
  ``__jinja_template__``, whose debug info maps the Python line to the template
  line; its code's file name is the template's, which is not a ``.py`` file). The
  innermost template frame gives the location; the walk goes on to the first
  application Python frame (the view), kept beside it.
- Django's connection setup: a statement issued while ``BaseDatabaseWrapper.connect``
  (``django/db/backends/base/base.py``) is on the stack (``SELECT set_config(...)``
  for the time zone, ``PRAGMA foreign_keys``) is not one of the request's queries.
- A pool's housekeeping (:data:`_MARKED`): a statement issued while asyncpg's
  ``PoolConnectionHolder.release`` is on the stack (the reset on release, ``SELECT
  pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``, and the ``ROLLBACK`` of a
  connection released in a transaction) is not one of the request's queries either. A callback
  of the application's own (a pool's ``reset=``, ``setup=``, ``init=``) is application code: the
  walk stops there first, and its statements count as the application's.
- One fetch of an asyncpg cursor: contrib's wrapper (``_do_cursor_execute``) makes a span per
  ``__anext__``/``fetch()`` call; its frame's ``instance`` is the cursor, so the processor tells
  the cursor's first fetch (the query) from its later ones.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import sysconfig
from types import CodeType, FrameType
from typing import Any

_MAX_DEPTH = 256
_CACHE_MAX = 100_000
_THIS_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STRATEGIES = "sqlalchemy.orm.strategies"
_LAZY_FILE = 2  # the verdict of SQLAlchemy's strategies.py: not application code, home of the lazy loader
_DJANGO_TEMPLATE_FILE = 3  # django/template/base.py: home of Node.render_annotated
_DJANGO_DB_FILE = 4  # django/db/backends/base/base.py: home of BaseDatabaseWrapper.connect
_TEMPLATE_APP = 5  # not a .py file, under an application path: maybe a compiled Jinja2 template, else app code
_TEMPLATE_LIB = 6  # not a .py file, elsewhere: maybe a compiled Jinja2 template, else not app code
_MARKED_FILE = 7  # a module of _MARKED: home of functions whose frame says what the statement is
_MAX_HOPS = 8  # futures and tasks followed up an await chain
_MAX_CALLBACKS = 16  # done-callbacks of one future looked at
_RUNNER = "runner"  # _awaiter's answer for the task the event loop runs until it completes
_DJANGO_TEMPLATE = "django.template.base"
_DJANGO_DB = "django.db.backends.base.base"
_PY_SUFFIXES = (".py", ".pyw", ".pyc")
#: :meth:`AppCode.walk`'s hint for a statement issued by Django's connection setup or a pool's housekeeping
SETUP = "setup"
#: module -> (qualified name, role) of the functions whose frame on the stack says what the statement is:
#: SETUP, a pool's housekeeping; _CURSOR, contrib's wrapper of one fetch of an asyncpg cursor (its
#: ``instance`` is the cursor); _LOOP, asyncio's event loop running a task's step (the frames below run
#: the loop, they did not call the task; the first one met going down from a task's coroutines: the
#: handle that steps a C task, a Python task's step, else, under uvloop, the runner that runs the loop).
#: Functions missing in a Python version are skipped.
_CURSOR = "cursor"
_LOOP = "loop"
_MARKED = {
    "asyncpg.pool": (("PoolConnectionHolder.release", SETUP),),
    "opentelemetry.instrumentation.asyncpg": (("AsyncPGInstrumentor._do_cursor_execute", _CURSOR),),
    "asyncio.events": (("Handle._run", _LOOP),),
    "asyncio.tasks": (
        ("_PyTask._Task__step", _LOOP),
        ("_PyTask._Task__step_run_and_handle_result", _LOOP),  # 3.12+
    ),
    "asyncio.base_events": (
        ("BaseEventLoop.run_until_complete", _LOOP),
        ("BaseEventLoop.run_forever", _LOOP),
    ),
    "asyncio.runners": (("Runner.run", _LOOP), ("run", _LOOP)),  # Runner: 3.11+
}


#: (file path, line number, qualified function name) of an application frame; for a query a
#: template triggered, (template path, template line, the view's qualified function name,
#: "file:line" of the view's frame)
Location = tuple[Any, ...]
_QUALNAME = "co_qualname" if sys.version_info >= (3, 11) else "co_name"


def location_of(frame: FrameType, hint: Any = None) -> Location:
    """``frame``'s location; with a template ``hint`` from :meth:`AppCode.walk`, the template's
    file and line, and ``frame`` (the view) as its fourth item."""
    code = frame.f_code
    if hint is None or hint.__class__ is not tuple:
        return (code.co_filename, frame.f_lineno, getattr(code, _QUALNAME))
    return (hint[0], hint[1], getattr(code, _QUALNAME), f"{code.co_filename}:{frame.f_lineno}")


def _stdlib_dirs() -> tuple[str, ...]:
    dirs = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.abspath(path) + os.sep)
    return tuple(sorted(dirs))


class AppCode:
    """Classifies code objects as application code by path prefix."""

    def __init__(self, app_paths: tuple[str, ...]) -> None:
        self._prefixes = tuple(os.path.abspath(p).rstrip(os.sep) + os.sep for p in app_paths)
        self._excluded = (_THIS_PACKAGE, *_stdlib_dirs())
        # Keyed by file name: a str caches its hash, a code object does not (hashing one
        # walks its constants on every lookup). True, False or one of the int verdicts above.
        self._cache: dict[str, bool | int] = {}
        self._lazy_code: CodeType | None = None  # the lazy loader's _load_for_state, once SQLAlchemy's ORM is loaded
        self._render_code: CodeType | None = None  # Django's Node.render_annotated, once its templates are loaded
        self._connect_code: CodeType | None = None  # Django's BaseDatabaseWrapper.connect
        # id -> (code object, role) of the _MARKED functions (identity, not hashing), filled per module file
        self._marked: dict[int, tuple[CodeType, str]] = {}

    def is_app(self, code: CodeType) -> bool:
        verdict = self._verdict(code.co_filename)
        return verdict is True or verdict == _TEMPLATE_APP

    def _verdict(self, filename: str) -> bool | int:
        verdict = self._cache.get(filename)
        if verdict is None:
            verdict = self._classify(filename)
            if verdict is False and self._is_lazy_file(filename):
                verdict = _LAZY_FILE
            elif verdict is False and _module_file(_DJANGO_TEMPLATE) == filename:
                verdict = _DJANGO_TEMPLATE_FILE
            elif verdict is False and _module_file(_DJANGO_DB) == filename:
                verdict = _DJANGO_DB_FILE
            elif verdict is False and self._is_marked_file(filename):
                verdict = _MARKED_FILE
            elif filename and filename[0] != "<" and not filename.endswith(_PY_SUFFIXES):
                verdict = _TEMPLATE_APP if verdict else _TEMPLATE_LIB
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[filename] = verdict
        return verdict

    def _is_lazy_file(self, filename: str) -> bool:
        """Whether ``filename`` is the loaded ``sqlalchemy.orm.strategies`` (once per file name)."""
        module = sys.modules.get(_STRATEGIES)
        if module is None or getattr(module, "__file__", None) != filename:
            return False
        self._lazy_code = _lazy_loader_code(module)
        return True

    def _is_marked_file(self, filename: str) -> bool:
        """Whether ``filename`` is a loaded module of :data:`_MARKED` (once per file name); if so its
        functions' code objects are remembered."""
        for name, functions in _MARKED.items():
            module = sys.modules.get(name)
            if module is None or getattr(module, "__file__", None) != filename:
                continue
            for qualname, role in functions:
                code = _code_of(module, qualname)
                if code is not None:
                    self._marked[id(code)] = (code, role)
            return True
        return False

    def _classify(self, filename: str) -> bool:
        """Under an application path, and not under a more specific library location."""
        if not filename or filename[0] == "<":
            return False
        path = os.path.abspath(filename)
        matched = max((p for p in self._prefixes if path.startswith(p)), key=len, default=None)
        if matched is None:
            return False
        if any(path.startswith(ex) and len(ex) > len(matched) for ex in self._excluded):
            return False
        rest = path[len(matched) :]  # e.g. a virtualenv inside the application's folder
        return "site-packages" not in rest and "dist-packages" not in rest

    def find(self, frame: FrameType | None) -> tuple[FrameType | None, FrameType | None]:
        """(the innermost application frame at or above ``frame``, the SQLAlchemy lazy-loader
        frame passed on the way there or None), across greenlets."""
        found, lazy, _, _ = self.walk(frame)
        return found, lazy

    def walk(
        self, frame: FrameType | None, through_loop: bool = False
    ) -> tuple[FrameType | None, FrameType | None, Any, Any]:
        """:meth:`find`, a hint and a cursor. The hint: None; :data:`SETUP` when Django's connection
        setup or a pool's housekeeping issued the statement; ``(template path, template line)``
        when a Django or Jinja2 template triggered it (then the application frame returned is the
        first Python one above the template); or, with no application frame found, the first frame
        of asyncio's event loop met below the running task's frames (the walk stops there, unless
        ``through_loop``: the frames below run the loop, they did not call the task; see
        :meth:`awaited_from`). The cursor: the asyncpg cursor one of whose fetches this is (passed
        on the way to the application frame), else None."""
        cache = self._cache
        glet = None
        lazy = None
        hint: Any = None
        cursor: Any = None
        for _ in range(_MAX_DEPTH):
            if frame is None:
                frame, glet = _parent_greenlet_frame(glet)
                if frame is None:
                    return None, lazy, hint, cursor
            # the hot loop: most frames are a library's, known by their file (a dict subscript costs
            # less than a call of dict.get; a miss, once per file, raises)
            try:
                verdict = cache[frame.f_code.co_filename]
            except KeyError:
                verdict = self._verdict(frame.f_code.co_filename)
            if verdict is False:
                frame = frame.f_back
                continue
            if verdict is True:
                return frame, lazy, hint, cursor
            code = frame.f_code
            if verdict == _LAZY_FILE:
                if lazy is None:
                    if self._lazy_code is None:
                        self._lazy_code = _lazy_loader_code(sys.modules.get(_STRATEGIES))
                    if code is self._lazy_code:
                        lazy = frame
            elif verdict == _DJANGO_TEMPLATE_FILE:
                if hint is None:
                    hint = self._django_template(frame)
            elif verdict == _DJANGO_DB_FILE:
                if self._connect_code is None:
                    self._connect_code = _django_connect_code()
                if code is self._connect_code:
                    hint = SETUP
            elif verdict == _MARKED_FILE:
                marked = self._marked.get(id(code))
                if marked is not None and marked[0] is code:
                    role = marked[1]
                    if role is _LOOP:
                        if not through_loop:
                            return None, lazy, frame if hint is None else hint, cursor
                    elif role is SETUP:
                        hint = SETUP
                    elif cursor is None:
                        cursor = frame.f_locals.get("instance")
            elif verdict in (_TEMPLATE_APP, _TEMPLATE_LIB):
                template = frame.f_globals.get("__jinja_template__")
                if template is not None:
                    if hint is None:
                        hint = _jinja_line(template, code.co_filename, frame.f_lineno)
                elif verdict == _TEMPLATE_APP:
                    return frame, lazy, hint, cursor
            frame = frame.f_back
        return None, lazy, hint, cursor

    def awaited_from(self, loop_frame: FrameType) -> tuple[FrameType | None, Any]:
        """The application frame one await-chain up from the running task, when the walk from the query
        met the event loop (``loop_frame``, see :meth:`walk`) before any application frame: a query
        whose coroutine went straight to ``gather``, a ``TaskGroup`` or ``create_task``. (that frame,
        the task whose suspended coroutines hold it, or :data:`_RUNNER` when it lies below the loop)
        or (None, None).

        From the running task up to ``_MAX_HOPS`` futures, each found in the done-callbacks of the last
        (asyncio's ``_callbacks``, the list ``add_done_callback`` fills): a task's wake-up (that task
        awaits it), ``gather``'s, ``shield``'s and ``wait``'s callbacks (the future they complete), a
        ``TaskGroup``'s (its parent task). For each task on the way, its suspended coroutine chain
        (``get_coro()``, then ``cr_await``) is searched for the innermost application frame. For the task
        the event loop runs until it completes (``run_until_complete``'s callback) the answer is the
        first application frame below the loop. Anything else (a task nothing awaits yet, a callback
        of the application's own, another library's task group): None, never a guess."""
        asyncio = sys.modules.get("asyncio")
        if asyncio is None:
            return None, None
        try:
            future: Any = asyncio.current_task()
        except RuntimeError:  # no event loop runs in this thread
            return None, None
        for _ in range(_MAX_HOPS):
            if future is None:
                break
            awaiter = _awaiter(future, asyncio)
            if awaiter is _RUNNER:
                return self.walk(loop_frame.f_back, through_loop=True)[0], _RUNNER
            if isinstance(awaiter, _task_classes(asyncio)):
                found = self._suspended_app_frame(awaiter)
                if found is not None:
                    return found, awaiter
            future = awaiter
        return None, None

    def _suspended_app_frame(self, task: Any) -> FrameType | None:
        """The innermost application frame of ``task``'s suspended coroutine chain, or None."""
        frames = _suspended_frames(task)
        for frame in reversed(frames):
            verdict = self._verdict(frame.f_code.co_filename)
            if verdict is True or (verdict == _TEMPLATE_APP and "__jinja_template__" not in frame.f_globals):
                return frame
        return None

    def _django_template(self, frame: FrameType) -> tuple[str, int] | None:
        """(template path, line) of the node a Django ``Node.render_annotated`` frame renders, or None."""
        code = frame.f_code
        if self._render_code is None:
            node_class = getattr(sys.modules.get(_DJANGO_TEMPLATE), "Node", None)
            render = getattr(node_class, "render_annotated", None)
            self._render_code = getattr(render, "__code__", None)
        if code is not self._render_code:
            return None
        node = frame.f_locals.get("self")
        token = getattr(node, "token", None)
        origin = getattr(node, "origin", None)
        line = getattr(token, "lineno", None)
        name = getattr(origin, "name", None)
        if not isinstance(line, int) or not isinstance(name, str):
            return None
        return (name, line)

    def stacktrace(self, frame: FrameType | None, max_frames: int, source: bool = False, awaiter: Any = None) -> str:
        """Application frames only, most recent call last, at most ``max_frames``.

        File, line and function of each frame; the source line too only with ``source``
        (``DBPERF_STACKTRACE_SOURCE``): a literal written in the code would go out with it.
        The frames below asyncio's event loop are left out (they run the loop, they did not call
        the task), unless the task is the one the loop runs until it completes. ``awaiter`` is what
        :meth:`awaited_from` answered: a task, whose suspended application frames follow; or
        :data:`_RUNNER`, the frames below the loop follow.
        """
        lines: list[str] = []
        depth = 0
        glet = None
        through_loop: bool | None = True if awaiter is _RUNNER else None  # None: not asked yet
        while depth < _MAX_DEPTH and len(lines) < max_frames:
            if frame is None:
                frame, glet = _parent_greenlet_frame(glet)
                if frame is None:
                    break
            code = frame.f_code
            if self.is_app(code):
                self._trace_line(lines, frame, source)
            elif through_loop is not True and self._is_loop(code):
                if through_loop is None:
                    asyncio = sys.modules.get("asyncio")
                    try:
                        task = asyncio.current_task() if asyncio is not None else None
                    except RuntimeError:
                        task = None
                    through_loop = task is not None and awaiter is None and _awaiter(task, asyncio) is _RUNNER
                if not through_loop:
                    break
            frame = frame.f_back
            depth += 1
        if awaiter is not None and awaiter is not _RUNNER:
            for suspended in reversed(_suspended_frames(awaiter)):
                if len(lines) >= max_frames:
                    break
                if self.is_app(suspended.f_code):
                    self._trace_line(lines, suspended, source)
        if not lines:
            return ""
        lines.reverse()
        return "Traceback (application frames, most recent call last):\n" + "\n".join(lines)

    def _is_loop(self, code: CodeType) -> bool:
        """Whether ``code`` is one of asyncio's functions that run the event loop (role _LOOP)."""
        if self._verdict(code.co_filename) != _MARKED_FILE:
            return False
        marked = self._marked.get(id(code))
        return marked is not None and marked[0] is code and marked[1] is _LOOP

    @staticmethod
    def _trace_line(lines: list[str], frame: FrameType, source: bool) -> None:
        code = frame.f_code
        lineno = frame.f_lineno
        entry = f'  File "{code.co_filename}", line {lineno}, in {code.co_name}'
        text = linecache.getline(code.co_filename, lineno).strip() if source else ""
        lines.append(f"{entry}\n    {text}" if text else entry)


def _suspended_frames(task: Any) -> list[FrameType]:
    """The frames of ``task``'s suspended coroutine chain, outermost first: its coroutine
    (``get_coro()``) and what each awaits (``cr_await``; a generator's ``gi_yieldfrom``), bounded."""
    frames: list[FrameType] = []
    try:
        awaitable = task.get_coro()
    except Exception:  # noqa: BLE001 - not an asyncio task after all
        return frames
    for _ in range(_MAX_DEPTH):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None or frame.__class__ is not FrameType:
            break
        frames.append(frame)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
        if awaitable is None:
            break
    return frames


def _task_classes(asyncio: Any) -> tuple[type, ...]:
    """asyncio's task classes: the C one (``asyncio.Task``) and the pure-Python one."""
    return (asyncio.Task, getattr(asyncio.tasks, "_PyTask", asyncio.Task))


def _awaiter(future: Any, asyncio: Any) -> Any:
    """What waits for ``future``, read from its done-callbacks: a task (its wake-up; a TaskGroup's
    parent task), a future (``gather``'s, ``shield``'s, ``wait``'s, ``wait_for``'s), :data:`_RUNNER`
    (``run_until_complete``'s), or None."""
    callbacks = getattr(future, "_callbacks", None)  # asyncio's list of (callback, context), 3.10-3.14
    if not isinstance(callbacks, list):
        return None
    task_group = getattr(asyncio, "TaskGroup", None)  # 3.11+
    tasks = _task_classes(asyncio)
    futures = (asyncio.Future, *tasks[1:], getattr(asyncio.futures, "_PyFuture", asyncio.Future))
    package = os.path.dirname(getattr(asyncio, "__file__", None) or "?") + os.sep
    for entry in callbacks[:_MAX_CALLBACKS]:
        callback = entry[0] if isinstance(entry, tuple) and entry else entry
        owner = getattr(callback, "__self__", None)
        if owner is not None:
            if isinstance(owner, tasks) and owner is not future:
                return owner  # its wake-up: that task awaits this future
            if task_group is not None and isinstance(owner, task_group):
                parent = getattr(owner, "_parent_task", None)
                if isinstance(parent, tasks):
                    return parent
            continue
        args: tuple[Any, ...] = ()
        if isinstance(callback, functools.partial):
            args = callback.args
            callback = callback.func
        code = getattr(callback, "__code__", None)
        if not isinstance(code, CodeType) or not code.co_filename.startswith(package):
            continue  # only asyncio's own callbacks say what they complete
        if code.co_name == "_run_until_complete_cb":
            return _RUNNER
        for arg in args:
            if isinstance(arg, futures):
                return arg
        closure = getattr(callback, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, closure, strict=False):
            if name in ("outer", "waiter"):
                try:
                    value = cell.cell_contents
                except ValueError:  # not yet set
                    continue
                if isinstance(value, futures):
                    return value
    return None


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    return getattr(module, "__file__", None) if module is not None else None


def _code_of(module: Any, qualname: str) -> CodeType | None:
    """The code object of ``module``'s function ``qualname`` (``Class.method``; under a decorator's
    ``__wrapped__``), or None."""
    function: Any = module
    for part in qualname.split("."):
        function = getattr(function, part, None)
    code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _django_connect_code() -> CodeType | None:
    """The code object of Django's ``BaseDatabaseWrapper.connect`` (under its ``async_unsafe``), or None."""
    wrapper = getattr(sys.modules.get(_DJANGO_DB), "BaseDatabaseWrapper", None)
    function = getattr(wrapper, "connect", None)
    code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _jinja_line(template: Any, filename: str, lineno: int) -> tuple[str, int] | None:
    """(template path, template line) of a compiled Jinja2 template's frame at Python line ``lineno``."""
    try:
        line = template.get_corresponding_lineno(lineno)
    except Exception:  # noqa: BLE001 - a foreign object under that name: no template line
        return None
    name = getattr(template, "filename", None) or filename
    return (name, line) if isinstance(line, int) and isinstance(name, str) else None


def _lazy_loader_code(module: Any) -> CodeType | None:
    """The code object of the lazy loader's ``_load_for_state`` (``LazyLoader`` in SQLAlchemy 1.4 and
    2.0, ``_LazyLoader`` in 2.1), or None."""
    loader = getattr(module, "_LazyLoader", None) or getattr(module, "LazyLoader", None)
    function = getattr(loader, "_load_for_state", None)
    code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
    return code if isinstance(code, CodeType) else None


def lazy_loaded_relationship(frame: FrameType) -> Any:
    """The relationship (``RelationshipProperty``) that the lazy-loader ``frame`` is loading, or None.

    ``frame`` is one :meth:`AppCode.find` returned: its ``self`` is the lazy-loader
    strategy, whose ``parent_property`` is the relationship.
    """
    strategy = frame.f_locals.get("self")
    return getattr(strategy, "parent_property", None)


def _parent_greenlet_frame(glet: Any) -> tuple[FrameType | None, Any]:
    """Hop from ``glet`` (None: the current greenlet) to its parent's suspended frame."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return None, None
    current = greenlet.getcurrent() if glet is None else glet
    parent = getattr(current, "parent", None)
    if parent is None:
        return None, None
    return getattr(parent, "gr_frame", None), parent
