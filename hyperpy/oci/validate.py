"""Load a bundle's config.json and check it: shapes by JSON Schema, then what a schema cannot say.

Reading (regular files only, size and nesting limits) is :mod:`hyperpy.oci.document`'s.

Every problem is a ``SpecError`` carrying the file path and the RFC 6901 JSON pointer of the bad
value (``/process/args/0``); for a missing member the pointer names the member itself.

Never stricter than runc: each refusal here is one runc makes too, or one a VM cannot honour,
and says which beside it (docs/compatibility.md lists them). What runc takes with a warning is
taken with the same warning: unknown capabilities, mount destinations that are not absolute,
an ociVersion other than 1.x; what runc skips is skipped: seccomp syscall names unknown on
x86_64 (podman's and docker's default profiles name syscalls of every architecture).
"""

from __future__ import annotations

import json
import logging
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
log = logging.getLogger(__name__)


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
    # runc reads any ociVersion (or none); an unexpected major is worth a word, not a refusal
    version = str(spec.get("ociVersion", ""))
    if version.split(".", 1)[0] != "1" or "." not in version:
        log.warning(
            "%s: ociVersion %s is not a 1.x runtime-spec version; hyperpy implements 1.x and "
            "reads the config as such",
            path,
            _show(version),
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
    unknown = sorted(
        {n for kind in CAPABILITY_SETS for n in caps.get(kind) or []} - set(KNOWN_CAPS)
    )
    if unknown:  # runc: "ignoring unknown or unavailable capabilities", and runs
        log.warning(
            "%s: ignoring unknown or unavailable capabilities: %s", path, ", ".join(unknown)
        )
    for i, rl in enumerate(process.get("rlimits") or []):
        # a type named twice is set twice, the last one winning, as runc sets them
        kind = rl["type"]
        if kind not in KNOWN_RLIMITS:  # runc refuses it too ("wrong rlimit value")
            _fail(
                path,
                f"found unknown rlimit {_show(kind)}, expected one of " + ", ".join(KNOWN_RLIMITS),
                "process",
                "rlimits",
                i,
                "type",
            )
        if rl["soft"] > rl["hard"]:  # runc fails too: setrlimit(2) says EINVAL at start
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
        if not m["destination"].startswith("/"):  # runc warns, and mounts it below /
            log.warning(
                "%s#/mounts/%d/destination: mount destination %s is not absolute: it is taken "
                "relative to the container's / (runc deprecates this)",
                path,
                i,
                _show(m["destination"]),
            )
        shared = [o for o in m.get("options") or [] if o in ("shared", "rshared")]
        if shared:
            # A VM cannot honour it: the container's mounts are the guest kernel's, and none
            # can propagate back to the host across the share (docs/compatibility.md).
            _fail(
                path,
                f"found {_show(shared[0])} propagation on the mount at "
                f"{_show(m['destination'])}: mounts made in the container cannot reach the "
                "host from inside a VM; use rslave or rprivate (the default), or runc for a "
                "container that must mount for the host",
                "mounts",
                i,
                "options",
                (m.get("options") or []).index(shared[0]),
            )
        if os.path.normpath("/" + m["destination"]) in ("/", "//"):
            # A VM cannot honour it: the container's root is the guest's overlay of the image
            # share (agent/layers.py), which a mount over / would hide from the agent.
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
            # The runtime-spec requires an absolute path; runc would run a relative one from
            # its own working directory, which is not one place in hyperpy: poststop runs from
            # `delete`, another process in another directory. Refused rather than guessed.
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
        if ns["type"] in namespaces:  # runc refuses it too: "duplicated ns"
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
        # The runtime-spec requires an absolute path; runc would open a relative one from its
        # working directory, and hyperpy opens namespaces from the monitor's: refused as hooks.
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
        # runc refuses it too: "unable to set hostname without a private UTS namespace"
        if spec.get(field) and "uts" not in namespaces:
            _fail(
                path,
                f"found {field} {_show(spec[field])} without a uts namespace: add "
                '{"type": "uts"} to /linux/namespaces or remove the ' + field,
                field,
            )
    _check_user_mappings(linux, namespaces, path)
    for key in linux.get("sysctl") or {}:
        if not key.strip():  # runc refuses it too (no such sysctl); it refuses more, we don't
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
        # runc takes a relative path below the rootfs and a missing major/minor as 0, and so
        # does the agent; only a word for the path
        if not dev["path"].startswith("/"):
            log.warning(
                "%s#/linux/devices/%d/path: device path %s is not absolute: it is made "
                "relative to the container's /",
                path,
                i,
                _show(dev["path"]),
            )
    if linux.get("seccomp") is not None:
        _check_seccomp(linux["seccomp"], path)


def _check_user_mappings(linux: dict, namespaces: dict[str, dict], path: str) -> None:
    userns = namespaces.get("user")
    for field in ("uidMappings", "gidMappings"):
        mappings = linux.get(field) or []
        if userns is None and mappings:  # runc refuses it too
            _fail(
                path,
                f'found {field} but no user namespace: add {{"type": "user"}} to '
                f"/linux/namespaces or remove {field}",
                "linux",
                field,
            )
        if userns is not None and not userns.get("path") and not mappings:  # runc too
            _fail(
                path,
                f"a new user namespace is requested but {field} is empty: add at least one "
                'mapping such as {"containerID": 0, "hostID": 100000, "size": 65536}',
                "linux",
                field,
            )


def _check_cgroups_path(value: str, systemd_cgroup: bool, path: str) -> None:
    if "\0" in value:  # runc fails too: no path holds a NUL
        _fail(path, f"found {_show(value)}, which holds a NUL byte", "linux", "cgroupsPath")
    if systemd_cgroup:  # runc refuses these too ("expected cgroupsPath to be of format ...")
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
    # Without --systemd-cgroup a value with colons is a cgroupfs path, as runc takes it:
    # containerd's CRI writes "kubepods.slice:cri-containerd:ID" when the kubelet's parent is
    # a .slice and the runtime was not told to use systemd.


def _check_seccomp(seccomp: dict, path: str) -> None:
    from agent.syscalls import KNOWN_SYSCALLS

    if seccomp["defaultAction"] == "SCMP_ACT_NOTIFY":  # runc refuses it too
        _fail(
            path,
            "found SCMP_ACT_NOTIFY, which cannot be the default action; use it only in "
            "/linux/seccomp/syscalls rules",
            "linux",
            "seccomp",
            "defaultAction",
        )
    for i, rule in enumerate(seccomp.get("syscalls") or []):
        if rule["action"] == "SCMP_ACT_NOTIFY":
            # runc refuses it without listenerPath; with one, a VM cannot honour it: the
            # notification fd is the guest kernel's and the seccomp agent is on the host
            why = (
                "the seccomp agent at /linux/seccomp/listenerPath is on the host, and a "
                "guest kernel's notification cannot reach it"
                if seccomp.get("listenerPath")
                else "/linux/seccomp/listenerPath is not set either"
            )
            _fail(
                path,
                f"found SCMP_ACT_NOTIFY, which hyperpy cannot honour: {why}; use "
                "SCMP_ACT_ERRNO or SCMP_ACT_LOG for these syscalls",
                "linux",
                "seccomp",
                "syscalls",
                i,
                "action",
            )
        unknown = [n for n in rule.get("names") or [] if n not in KNOWN_SYSCALLS]
        if unknown:  # runc: "unknown seccomp syscall ... ignored" (libseccomp has no number)
            log.debug(
                "%s#/linux/seccomp/syscalls/%d: unknown seccomp syscalls ignored: %s",
                path,
                i,
                ", ".join(unknown),
            )
