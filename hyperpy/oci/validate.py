"""Load a bundle's config.json and check it: shapes by JSON Schema, then what a schema cannot say.

Reading (regular files only, size and nesting limits) is :mod:`hyperpy.oci.document`'s.

Every problem is a ``SpecError`` carrying the file path and the RFC 6901 JSON pointer of the bad
value (``/process/args/0``); for a missing member the pointer names the member itself.
"""

from __future__ import annotations

import json
import os
from typing import Any, NoReturn

from agent.tables import CAPS as KNOWN_CAPS
from agent.tables import RLIMITS as KNOWN_RLIMITS
from hyperpy.errors import SpecError, UsageError
from hyperpy.oci import document

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config-schema.json")

CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
HOOK_KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

_TYPE_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}

_validator: Any = None


def pointer(*parts: str | int) -> str:
    """The RFC 6901 JSON pointer of a path of member names and array indexes."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _fail(path: str, message: str, *parts: str | int) -> NoReturn:
    raise SpecError(message, pointer(*parts), path)


def _show(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_bundle(bundle: str, systemd_cgroup: bool = False) -> dict:
    """Read, parse and validate ``<bundle>/config.json``; return the parsed spec."""
    if not os.path.isdir(bundle):
        what = "is not a directory" if os.path.exists(bundle) else "does not exist"
        raise UsageError(
            f"--bundle {bundle!r} {what}: pass the bundle directory that holds config.json "
            "(the default is the current directory)"
        )
    path = os.path.join(bundle, "config.json")
    if not os.path.lexists(path):
        raise SpecError(
            f"no config.json in bundle {bundle}: write one with `hyperpy spec --bundle {bundle}` "
            "or pass the right --bundle",
            "",
            path,
        )
    try:
        spec = document.load(path)
    except document.DocumentError as exc:
        raise SpecError(str(exc), exc.pointer, path) from None
    validate_spec(spec, path, systemd_cgroup=systemd_cgroup)
    return spec


def validate_spec(spec: dict, path: str = "config.json", systemd_cgroup: bool = False) -> None:
    """Check ``spec`` (read from ``path``) for ``create``; raise SpecError at the first problem.

    Relative paths in the spec (``root.path``) are resolved against the directory of ``path``.
    """
    _check_schema(spec, path)
    _check_version(spec, path)
    _check_root(spec, path)
    _check_process(spec, path)
    _check_mounts(spec, path)
    _check_hooks(spec, path)
    _check_linux(spec, path, systemd_cgroup)


# --- schema --------------------------------------------------------------------------------


def _get_validator() -> Any:
    global _validator
    if _validator is None:
        import jsonschema

        with open(SCHEMA_PATH) as f:
            schema = json.load(f)
        _validator = jsonschema.Draft202012Validator(schema)
    return _validator


def _path_key(parts: Any) -> list[tuple[int, int | str]]:
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in parts]


def _check_schema(spec: object, path: str) -> None:
    errors = list(_get_validator().iter_errors(spec))
    if not errors:
        return
    import jsonschema

    errors.sort(key=lambda e: _path_key(e.absolute_path))
    first = [e for e in errors if list(e.absolute_path) == list(errors[0].absolute_path)]
    err = jsonschema.exceptions.best_match(first)
    parts = list(err.absolute_path)
    if err.validator == "required":
        missing = next((m for m in err.validator_value if m not in err.instance), "?")
        parts.append(missing)
        sub = (err.schema.get("properties") or {}).get(missing) or {}
        message = f"required member {_show(missing)} is missing: add {_describe(sub)}"
    else:
        message = f"found {_show(err.instance)}, expected {_expected(err)}"
    if len(errors) > 1:
        more = len(errors) - 1
        message += f" (and {more} more schema problem{'s' if more > 1 else ''})"
    raise SpecError(message, pointer(*parts), path)


def _describe(schema: dict) -> str:
    """What a (sub)schema wants, in words, following local ``$ref``s."""
    while "$ref" in schema:
        schema = _get_validator().schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if "description" in schema:
        return str(schema["description"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, str):
        return _TYPE_NAMES.get(kind, kind)
    return "a value"


def _expected(err: Any) -> str:
    kind, value, schema = err.validator, err.validator_value, err.schema
    desc = schema.get("description", "")
    if kind == "type":
        types = [value] if isinstance(value, str) else list(value)
        text = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    elif kind == "enum":
        text = "one of " + ", ".join(json.dumps(v) for v in value)
    elif kind == "minimum":
        text = f"a value >= {value}"
    elif kind == "maximum":
        text = f"a value <= {value}"
    elif kind == "pattern":
        text = desc or f"a string matching {value}"
    elif kind == "minLength" and value == 1:
        text = "a non-empty string"
    elif kind == "minItems":
        text = f"at least {value} item(s)"
    else:
        text = err.message
    if desc and desc not in text:
        text += f" ({desc})"
    return text


# --- semantics -----------------------------------------------------------------------------


def _check_version(spec: dict, path: str) -> None:
    version = spec["ociVersion"]
    major = version.split(".", 1)[0]
    if major != "1" or "." not in version:
        _fail(
            path,
            f"found ociVersion {_show(version)}, expected a 1.x runtime-spec version such as "
            '"1.1.0" (hyperpy implements runtime-spec 1.x)',
            "ociVersion",
        )


def _check_root(spec: dict, path: str) -> None:
    root = spec.get("root")
    if root is None:
        _fail(
            path,
            'the container has no root filesystem: add "root": {"path": "rootfs"}',
            "root",
        )
    bundle = os.path.dirname(os.path.abspath(path))
    rootfs = os.path.join(bundle, root["path"])
    if not os.path.isdir(rootfs):
        what = "is not a directory" if os.path.exists(rootfs) else "does not exist"
        _fail(
            path,
            f"found {_show(root['path'])}, but {rootfs} {what}; expected the rootfs directory "
            "(relative to the bundle or absolute): create it or fix the path",
            "root",
            "path",
        )


def _check_process(spec: dict, path: str) -> None:
    process = spec.get("process")
    if process is None:
        _fail(
            path,
            'there is no process to run: add "process" with at least "args" and "cwd"',
            "process",
        )
    if not process.get("args"):
        found = "an empty array" if "args" in process else "no args"
        _fail(
            path,
            f'found {found}, expected the command to run, e.g. "args": ["sh"]',
            "process",
            "args",
        )
    if not process["cwd"].startswith("/"):
        _fail(
            path,
            f"found {_show(process['cwd'])}, expected an absolute path inside the container "
            '(e.g. "/")',
            "process",
            "cwd",
        )
    caps = process.get("capabilities") or {}
    for kind in CAPABILITY_SETS:
        for i, name in enumerate(caps.get(kind) or []):
            if name not in KNOWN_CAPS:
                hint = ""
                if "CAP_" + name.upper() in KNOWN_CAPS:
                    hint = f" (did you mean {_show('CAP_' + name.upper())}?)"
                elif name.upper() in KNOWN_CAPS:
                    hint = f" (did you mean {_show(name.upper())}?)"
                _fail(
                    path,
                    f"found unknown capability {_show(name)}{hint}, expected a Linux capability "
                    "name CAP_CHOWN ... CAP_CHECKPOINT_RESTORE",
                    "process",
                    "capabilities",
                    kind,
                    i,
                )
    seen: set[str] = set()
    for i, rl in enumerate(process.get("rlimits") or []):
        kind = rl["type"]
        if kind not in KNOWN_RLIMITS:
            _fail(
                path,
                f"found unknown rlimit {_show(kind)}, expected one of " + ", ".join(KNOWN_RLIMITS),
                "process",
                "rlimits",
                i,
                "type",
            )
        if kind in seen:
            _fail(
                path,
                f"found {kind} a second time; each rlimit type may appear once",
                "process",
                "rlimits",
                i,
                "type",
            )
        seen.add(kind)
        if rl["soft"] > rl["hard"]:
            _fail(
                path,
                f"found soft limit {rl['soft']} above hard limit {rl['hard']} for {kind}, "
                "expected soft <= hard",
                "process",
                "rlimits",
                i,
                "soft",
            )


def _check_mounts(spec: dict, path: str) -> None:
    for i, m in enumerate(spec.get("mounts") or []):
        if not m["destination"].startswith("/"):
            _fail(
                path,
                f"found {_show(m['destination'])}, expected an absolute path inside the container "
                f"(e.g. {_show('/' + m['destination'])})",
                "mounts",
                i,
                "destination",
            )
        if os.path.normpath(m["destination"]) in ("/", "//"):
            _fail(
                path,
                f"found {_show(m['destination'])}, the container's root: a mount cannot replace "
                "it; set the root filesystem with /root/path, and mount below / (e.g. /data)",
                "mounts",
                i,
                "destination",
            )


def _check_hooks(spec: dict, path: str) -> None:
    hooks = spec.get("hooks") or {}
    for kind in HOOK_KINDS:
        for i, hook in enumerate(hooks.get(kind) or []):
            if not hook["path"].startswith("/"):
                _fail(
                    path,
                    f"found {_show(hook['path'])}, expected the absolute path of the hook "
                    "executable on the host",
                    "hooks",
                    kind,
                    i,
                    "path",
                )


def _check_linux(spec: dict, path: str, systemd_cgroup: bool) -> None:
    linux = spec.get("linux") or {}
    namespaces: dict[str, dict] = {}
    for i, ns in enumerate(linux.get("namespaces") or []):
        if ns["type"] in namespaces:
            _fail(
                path,
                f"found namespace type {_show(ns['type'])} a second time; "
                "each type may appear once",
                "linux",
                "namespaces",
                i,
                "type",
            )
        namespaces[ns["type"]] = ns
        if "path" in ns and not ns["path"].startswith("/"):
            _fail(
                path,
                f"found {_show(ns['path'])}, expected an absolute path such as /proc/PID/ns/"
                f"{ns['type']} (or no path, for a new namespace)",
                "linux",
                "namespaces",
                i,
                "path",
            )
    for field in ("hostname", "domainname"):
        if spec.get(field) and "uts" not in namespaces:
            _fail(
                path,
                f"found {field} {_show(spec[field])} without a uts namespace: add "
                '{"type": "uts"} to /linux/namespaces or remove the ' + field,
                field,
            )
    _check_user_mappings(linux, namespaces, path)
    for key in linux.get("sysctl") or {}:
        if not key.strip():
            _fail(
                path,
                f"found sysctl key {_show(key)}, expected a sysctl name such as "
                '"net.ipv4.ip_forward"',
                "linux",
                "sysctl",
                key,
            )
    if "cgroupsPath" in linux:
        _check_cgroups_path(linux["cgroupsPath"], systemd_cgroup, path)
    for i, dev in enumerate(linux.get("devices") or []):
        if not dev["path"].startswith("/"):
            _fail(
                path,
                f"found {_show(dev['path'])}, expected the absolute path of the device inside the "
                "container (e.g. /dev/fuse)",
                "linux",
                "devices",
                i,
                "path",
            )
        if dev["type"] != "p":
            for field in ("major", "minor"):
                if field not in dev:
                    _fail(
                        path,
                        f"device {dev['path']} of type {_show(dev['type'])} has no {field} number: "
                        f"add {_show(field)}",
                        "linux",
                        "devices",
                        i,
                        field,
                    )
    if linux.get("seccomp") is not None:
        _check_seccomp(linux["seccomp"], path)


def _check_user_mappings(linux: dict, namespaces: dict[str, dict], path: str) -> None:
    userns = namespaces.get("user")
    for field in ("uidMappings", "gidMappings"):
        mappings = linux.get(field) or []
        if userns is None and mappings:
            _fail(
                path,
                f'found {field} but no user namespace: add {{"type": "user"}} to '
                f"/linux/namespaces or remove {field}",
                "linux",
                field,
            )
        if userns is not None and not userns.get("path") and not mappings:
            _fail(
                path,
                f"a new user namespace is requested but {field} is empty: add at least one "
                'mapping such as {"containerID": 0, "hostID": 100000, "size": 65536}',
                "linux",
                field,
            )


def _check_cgroups_path(value: str, systemd_cgroup: bool, path: str) -> None:
    bad = next((c for c in value if ord(c) < 0x20 or c == "\x7f"), None)
    if bad is not None:
        _fail(
            path,
            f"found {_show(value)} with the control character {bad!r}, which no cgroup name "
            "may hold: use letters, digits and - _ . : /",
            "linux",
            "cgroupsPath",
        )
    if systemd_cgroup:
        parts = value.split(":")
        problem = ""
        if len(parts) != 3:
            problem = f"{len(parts)} colon-separated part(s)"
        elif parts[0] and not parts[0].endswith(".slice"):
            problem = f"slice {_show(parts[0])} that does not end in .slice"
        elif not parts[2]:
            problem = "an empty name"
        if problem:
            _fail(
                path,
                f"found {_show(value)} with {problem}; with --systemd-cgroup expected "
                '"slice:prefix:name", e.g. "system.slice:hyperpy:mycontainer"',
                "linux",
                "cgroupsPath",
            )
    elif ":" in value:
        _fail(
            path,
            f'found {_show(value)}, which looks like a systemd "slice:prefix:name"; expected a '
            "cgroup path such as /hyperpy/mycontainer, or pass --systemd-cgroup",
            "linux",
            "cgroupsPath",
        )


def _check_seccomp(seccomp: dict, path: str) -> None:
    from agent.syscalls import KNOWN_SYSCALLS

    if seccomp["defaultAction"] == "SCMP_ACT_NOTIFY":
        _fail(
            path,
            "found SCMP_ACT_NOTIFY, which cannot be the default action; use it only in "
            "/linux/seccomp/syscalls rules",
            "linux",
            "seccomp",
            "defaultAction",
        )
    for i, rule in enumerate(seccomp.get("syscalls") or []):
        if rule["action"] == "SCMP_ACT_NOTIFY" and not seccomp.get("listenerPath"):
            _fail(
                path,
                "found SCMP_ACT_NOTIFY but /linux/seccomp/listenerPath is not set; expected "
                "the path of the seccomp agent's socket",
                "linux",
                "seccomp",
                "syscalls",
                i,
                "action",
            )
        for j, name in enumerate(rule["names"]):
            if name not in KNOWN_SYSCALLS:
                _fail(
                    path,
                    f"found unknown syscall {_show(name)}, expected an x86_64 (or i386) syscall "
                    'name such as "openat"',
                    "linux",
                    "seccomp",
                    "syscalls",
                    i,
                    "names",
                    j,
                )
