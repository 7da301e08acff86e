"""The guest side of sandbox.python: runs inside CPython for WASI, in the micro-VM.

Never imported by the host. The host passes this file's text as an argument of
`python -c BOOT` and the boot code executes it as the module `sandbox_guest`. `_boot`
sets everything up (the mailbox, the output streams, the packages), reports the
addresses the host needs on fd 1, and ends the WASI program with os._exit(0): the
interpreter stays initialised in linear memory and the host snapshots it. From then on
each host call of `_serve` (one engine call, one VM exit) handles one request.

The mailbox is a bytearray that never moves. Host to guest: a marshal (version 2)
document at offset 0. Guest to host: its length (u32, little-endian) at offset 0 and a
marshal document at offset 4. Requests:

    (1, key, payload or None, args, kwargs or None)   call a shipped function
    (2, name, args, kwargs or None)                    call a function run() defined
    (3, code, filename)                                run code; the last expression's value
    (4, value)                                         ping: echo
    (5, key, payload)                                  define a shipped function only

Replies: (0, value[, out, err]) or (1, [type, module, message, traceback, exit code],
out, err). A host function call from guest code writes (name, args, kwargs) the same
way and seeks fd 0 (stdin) to HOST_SEEK: the host intercepts that fd_seek and answers
(0, value) or (1, message) at offset 0. (A descriptor of our own would not do: wasi-vfs,
linked into the build, refuses descriptors it did not see opened.) The guest trusts
the host; the host trusts nothing it reads.
Every line of `_serve` is paid on every call, at about a microsecond per bytecode.
"""

import builtins
import io
import linecache
import marshal
import os
import sys
import traceback

CALL, NAME, RUN, PING, DEFINE = 1, 2, 3, 4, 5
HOST_SEEK = 0x5342585048434C4C  # lseek(0, HOST_SEEK): the host-call doorbell
FLUSH_AT = 64 * 1024  # characters of output kept in the guest before they go to the host
TEXT_LIMIT = 64 * 1024  # characters of an error message or traceback sent back
MAX_DEPTH = 100  # nesting of values
RUNTIME_FILE = "<sandbox_guest>"

MAILBOX = bytearray(8)
VIEW = memoryview(MAILBOX)
LENGTH = VIEW[0:4].cast("I")
MAIN = {"__name__": "__main__", "__builtins__": builtins}
DEFINED = {}  # function key -> the function the host shipped
NOMEM = b""  # a reply made at boot, for when no other can be made

_loads = marshal.loads
_dumps = marshal.dumps


# -- the codec ------------------------------------------------------------------------------
# marshal version 2 both ways (see sandbox/python/codec.py): the host reads what the guest
# writes with a parser of its own; the guest trusts what the host writes.

_BASES = (bool, int, float, str, bytes, list, tuple, dict, set, frozenset)
_EXACT = (type(None), bool, int, float, str, bytes)


def plain(value, depth=0):
    """`value` with subclasses replaced by their base types; TypeError for others."""
    t = type(value)
    if t in _EXACT:
        return value
    if depth >= MAX_DEPTH:
        raise ValueError(f"the value is nested deeper than {MAX_DEPTH} levels")
    depth += 1
    if t is list or t is tuple or t is set or t is frozenset:
        return t(plain(v, depth) for v in value)
    if t is dict:
        return {plain(k, depth): plain(v, depth) for k, v in value.items()}
    if t is bytearray or t is memoryview:
        return bytes(value)
    for base in _BASES:
        if isinstance(value, base):
            return plain(base(value), depth - 1)
    raise TypeError(
        f"a value of type {t.__module__}.{t.__qualname__} cannot be sent between sandbox and "
        "host (None, bool, int, float, str, bytes, list, tuple, dict, set and frozenset "
        "can); convert it first"
    )


def dumps(value):
    try:
        return _dumps(value, 2)
    except ValueError:  # a subclass, another type, or too deep: say which
        return _dumps(plain(value), 2)


def _put(data):
    n = len(data)
    if n + 4 > len(VIEW):
        raise ValueError(
            f"the value is {n} bytes encoded, more than the {len(VIEW) - 4} bytes a call can carry"
        )
    VIEW[4 : 4 + n] = data
    LENGTH[0] = n


# -- output ---------------------------------------------------------------------------------


class _Stream(io.TextIOBase):
    """sys.stdout/sys.stderr: text kept in the guest and returned with the reply; past
    FLUSH_AT characters it goes to the host through WASI (fd 1 or 2) at once."""

    def __init__(self, fd, name):
        self._fd = fd
        self._name = name
        self.parts = []
        self._size = 0

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "surrogateescape"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.parts.append(s)
        self._size += len(s)
        if self._size >= FLUSH_AT:
            self.send()
        return len(s)

    def flush(self):
        pass  # the rest goes with the reply

    def send(self):
        data = "".join(self.parts).encode("utf-8", "surrogateescape")
        self.parts.clear()
        self._size = 0
        while data:
            n = os.write(self._fd, data)
            data = data[n:]

    def take(self):
        if not self.parts:
            return ""
        text = "".join(self.parts)
        self.parts.clear()
        self._size = 0
        return text


OUT = _Stream(1, "<stdout>")
ERR = _Stream(2, "<stderr>")


# -- host functions -------------------------------------------------------------------------


class HostFunctionError(Exception):
    """A host function raised (its type and message are in the text), or was not
    registered."""


class _Host:
    """`host.name(*args, **kwargs)` calls the host function registered as `name`."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            return host_call(name, *args, **kwargs)

        call.__name__ = name
        return call


def host_call(name, *args, **kwargs):
    """Calls the host function `name`; raises HostFunctionError if it raised."""
    _put(dumps((name, args, kwargs)))
    os.lseek(0, HOST_SEEK, 0)
    reply = _loads(VIEW)
    if reply[0] != 0:
        raise HostFunctionError(reply[1])
    return reply[1]


host = _Host()


# -- requests -------------------------------------------------------------------------------


class _NotFound(Exception):
    pass


class _Unknown(Exception):
    pass


def _source_lines(filename, first_line, source):
    text = "\n" * (first_line - 1) + source
    lines = text.splitlines(keepends=True)
    linecache.cache[filename] = (len(text), None, lines, filename)
    return text


def _define(key, payload):
    """The function the host shipped: payload = [name, filename, first line, source,
    values, imports ([alias, module, attribute path or None]), helpers (payloads)]."""
    if payload is None:
        raise _Unknown(key)
    ns = {"__name__": "__sandbox__", "__builtins__": builtins}
    _fill(ns, payload)
    fn = DEFINED[key] = ns[payload[0]]
    return fn


def _fill(ns, payload):
    name, filename, first_line, source, values, imports, helpers = payload
    for alias, module, attr in imports:
        __import__(module)
        obj = sys.modules[module]
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        ns[alias] = obj
    ns.update(values)
    for helper in helpers:
        _fill(ns, helper)
    exec(compile(_source_lines(filename, first_line, source), filename, "exec"), ns)


def _run(code, filename):
    """Runs `code` in the main namespace; the value of its last expression, if any."""
    import ast

    text = _source_lines(filename, 1, code)
    tree = ast.parse(text, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), MAIN)
    if last is not None:
        return eval(compile(last, filename, "eval"), MAIN)
    return None


def _other(request):
    op = request[0]
    if op == NAME:
        fn = MAIN.get(request[1])
        if not callable(fn):
            raise _NotFound(request[1])
        return fn(*request[2], **(request[3] or {}))
    if op == RUN:
        return _run(request[1], request[2])
    if op == PING:
        return request[1]
    if op == DEFINE:
        if request[1] not in DEFINED:
            _define(request[1], request[2])
        return None
    raise ValueError(f"unknown request {op!r}")


def _user_traceback(exc):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == RUNTIME_FILE:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return text[-TEXT_LIMIT:]


def _error(exc):
    t = type(exc)
    if t is _NotFound:
        return ["FunctionNotFound", "sandbox", f"no function {exc.args[0]!r} is defined", "", None]
    if t is _Unknown:
        return ["Unknown", "sandbox", exc.args[0], "", None]
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable message>"
    code = None
    if t is SystemExit:
        code = exc.code if exc.code is None or type(exc.code) is int else str(exc.code)
    return [t.__qualname__, t.__module__, message[:TEXT_LIMIT], _user_traceback(exc), code]


def _serve():
    """One request from the mailbox, its reply into the mailbox. Never raises."""
    try:
        request = _loads(VIEW)
        if request[0] == CALL:
            fn = DEFINED.get(request[1]) or _define(request[1], request[2])
            kwargs = request[4]
            result = fn(*request[3], **kwargs) if kwargs else fn(*request[3])
        else:
            result = _other(request)
        reply = (0, result, OUT.take(), ERR.take()) if OUT.parts or ERR.parts else (0, result)
        try:
            data = _dumps(reply, 2)
        except ValueError:
            data = dumps(reply)
        _put(data)
    except BaseException as exc:
        _fail(exc)


def _fail(exc):
    try:
        try:
            error = _error(exc)
        finally:
            del exc
        _put(dumps((1, error, OUT.take(), ERR.take())))
    except BaseException:
        try:
            OUT.take()
            ERR.take()
            _put(NOMEM)
        except BaseException:
            pass


def _boot(argv):
    """argv: mailbox size, a token (hex) to write at the mailbox's start, packages."""
    global MAILBOX, VIEW, LENGTH, NOMEM
    size, token = int(argv[0]), bytes.fromhex(argv[1])
    packages = argv[2].split(",") if len(argv) > 2 and argv[2] else []
    MAILBOX = bytearray(size)
    VIEW = memoryview(MAILBOX)  # an export: the buffer can never move or resize
    LENGTH = VIEW[0:4].cast("I")
    VIEW[: len(token)] = token
    sys.argv[:] = [""]
    if packages:
        sys.path.insert(0, "/packages")
        for name in packages:
            __import__(name)
    NOMEM = dumps((1, ["MemoryError", "builtins", "out of memory in the guest", "", None], "", ""))
    # Warm what requests use, so that it is in the snapshot.
    dumps([1, 2.5, "x", b"y", (1,), {1}, {"a": None}, 1 << 70, float("nan")])
    _define("warm", ["f", "<warm>", 1, "def f(a, b):\n    return a + b\n", {}, [], []])(1, 2)
    DEFINED.clear()
    try:
        raise ValueError("warm")
    except ValueError as exc:
        _error(exc)
    _run("1 + 1", "<warm>")
    linecache.cache.clear()
    sys.stdout, sys.stderr = OUT, ERR
    report = (id(type(_serve)), id(_serve), id(()), id(MAILBOX), id(None))
    os.write(1, ("SBXPY1 " + " ".join(map(str, report)) + "\n").encode())
    os._exit(0)
