"""The ``hyperpy`` command's entry point: the shim's hot calls by hand, the rest to click.

containerd's runc shim runs ``hyperpy --root R --log L --log-format json VERB ...`` for
every state, start, kill, delete, ``ps --format json`` and ``events --stats`` of every
container: a process each, whose cost is mostly the interpreter's start and its imports.
This module owns recognising exactly those calls, with runc's spellings of their flags
(:func:`parse`), and running them through :class:`hyperpy.runtime.Runtime` (its verbs in
:mod:`hyperpy.verbs`) with nothing but the standard library's lean part imported. Any
other call (another verb or flag, ``--help``, ``--debug``, ``--``, a missing or extra
argument) goes unchanged to the click CLI
(:mod:`hyperpy.cli`), which owns the full command line; both run the same operations and
report errors the same way (:func:`hyperpy.log.report`), so the output and exit code of a
call do not depend on which path took it.

The venv's ``hyperpy`` launcher (:mod:`hyperpy.launcher`) starts Python with ``-ES``;
site is then set up only before falling back to click.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing's import costs the hot verbs
if TYPE_CHECKING:
    from hyperpy.runtime import Runtime

GLOBAL_VALUES = {"--root", "--log", "--log-format"}
GLOBAL_FLAGS = {"--systemd-cgroup"}  # accepted; no hot verb depends on it
# verb -> (flags, options taking a value, fewest and most positional arguments)
VERBS: dict[str, tuple[dict[str, str], dict[str, str], int, int]] = {
    "state": ({}, {}, 1, 1),
    "start": ({}, {}, 1, 1),
    "kill": ({"--all": "all", "-a": "all"}, {}, 1, 2),
    "delete": ({"--force": "force", "-f": "force"}, {}, 1, 1),
    "ps": ({}, {"--format": "format", "-f": "format"}, 1, sys.maxsize),
    "events": ({"--stats": "stats"}, {}, 1, 1),
}
# What a hot call must ask for (anything else: click's table, a stream of events).
REQUIRED = {"ps": ("format", "json"), "events": ("stats", True)}


def parse(argv: list[str]) -> dict | None:
    """The call as a dict (``verb``, ``args``, the global and the verb's options), or None
    when it is not one this module runs exactly as the click CLI would."""
    call: dict = {"--root": "/run/hyperpy", "--log": None, "--log-format": "text"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name in GLOBAL_FLAGS and not eq:
            i += 1
            continue
        if name not in GLOBAL_VALUES:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        call[name] = value
        i += 1
    if i >= len(argv) or argv[i] not in VERBS or call["--log-format"] not in ("text", "json"):
        return None
    verb = call["verb"] = argv[i]
    flags, values, least, most = VERBS[verb]
    args: list[str] = []
    rest = argv[i + 1 :]
    j = 0
    while j < len(rest):
        arg = rest[j]
        if not arg.startswith("-") or arg == "-":
            args.append(arg)
        elif arg in flags:
            call[flags[arg]] = True
        else:
            name, eq, value = arg.partition("=")
            if name not in values or (eq and not name.startswith("--")):
                return None  # unknown, --, -fjson, -f=json: click's to parse
            if not eq:
                if j + 1 >= len(rest):
                    return None
                value = rest[j + 1]
                j += 1
            call[values[name]] = value
        j += 1
    if not least <= len(args) <= most:
        return None
    want = REQUIRED.get(verb)
    if want is not None and call.get(want[0]) != want[1]:
        return None
    call["args"] = args
    return call


def run(call: dict) -> int:
    """Run a parsed hot call; its exit code."""
    from hyperpy import verbs
    from hyperpy.errors import HyperpyError
    from hyperpy.runtime import Runtime

    log_file, log_format = call["--log"], call["--log-format"]

    def setup_logging() -> None:
        from hyperpy import log

        log.setup(log_file, log_format, False)

    verbs.before_logging.append(setup_logging)
    rt = Runtime(os.path.abspath(call["--root"]))
    try:
        out = _dispatch(rt, call["verb"], call["args"][0], call)
    except HyperpyError as exc:
        from hyperpy import log

        verbs.before_logging.clear()
        setup_logging()
        log.report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - outside the tree: still a line in --log
        from hyperpy import log

        verbs.before_logging.clear()
        setup_logging()
        log.report_unexpected(exc, call["verb"])
        return 1
    if out is not None:
        print(out)
    return 0


def _dispatch(rt: Runtime, verb: str, cid: str, call: dict) -> str | None:
    import json

    if verb == "state":
        return json.dumps(rt.state(cid), indent=2)
    if verb == "start":
        rt.start(cid)
    elif verb == "kill":
        from hyperpy.verbs.flags import parse_signal

        args = call["args"]
        rt.kill(cid, parse_signal(args[1] if len(args) > 1 else "SIGTERM"), call.get("all", False))
    elif verb == "delete":
        rt.delete(cid, call.get("force", False))
    elif verb == "ps":
        return json.dumps(rt.ps(cid, guest=False)[0])
    elif verb == "events":
        return json.dumps({"type": "stats", "id": cid, "data": rt.stats(cid)["stats"]})
    return None


def fallback() -> None:
    """The click CLI, with site set up first when the launcher started Python without it."""
    from hyperpy.launcher import with_site

    with_site()
    from hyperpy.cli import main as cli_main

    cli_main()


def main() -> None:
    call = parse(sys.argv[1:])
    if call is not None and call["--log"]:
        try:  # as click's path, whose log handler opens it at once
            open(call["--log"], "a").close()
        except OSError:
            call = None  # click's path fails on it as it always has
    if call is None:
        fallback()
        return
    sys.exit(run(call))


if __name__ == "__main__":
    main()
