"""The hyperpy command line: runc's verbs and flags, parsed with click; no logic here.

Each command parses, calls :mod:`hyperpy.runtime`, prints, and maps errors to exit codes
(documented in :mod:`hyperpy.errors`). Every error is also logged, so with
``--log-format json`` it lands in the --log file as the last JSON line, where containerd's
shim looks for it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from hyperpy import __version__
from hyperpy.cli_template import template
from hyperpy.errors import HyperpyError, UsageError
from hyperpy.runtime import Runtime
from hyperpy.verbs.flags import no_preserved_fds, parse_duration, parse_signal


def _runtime(ctx: click.Context) -> Runtime:
    obj = ctx.find_root().obj
    return Runtime(obj["root"], systemd_cgroup=obj["systemd_cgroup"])


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; turn a HyperpyError into a logged error and its exit code, and any other
    exception into a logged error (with its traceback) and exit 1: never a bare traceback
    on stderr, which under the runc shim goes to the container's stdio, not to docker."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HyperpyError as exc:
            from hyperpy import log as hlog

            hlog.report(exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: its usage error and exit code
        except Exception as exc:  # noqa: BLE001 - outside the tree: still a line in --log
            from hyperpy import log as hlog

            hlog.report_unexpected(exc, fn.__name__.rstrip("_").replace("_", "-"))
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    default="/run/hyperpy",
    show_default=True,
    help="directory for storage of container state (tmpfs recommended)",
)
@click.option("--log", "log_file", default=None, help="log file (default: stderr)")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--debug", is_flag=True, help="enable debug logging")
@click.option(
    "--systemd-cgroup", is_flag=True, help="cgroupsPath is systemd's slice:prefix:name form"
)
@click.option("--rootless", default="auto", hidden=True)
@click.option("--criu", default="criu", hidden=True)
@click.version_option(
    __version__,
    "-v",
    "--version",
    prog_name="hyperpy",
    message="hyperpy version %(version)s\nspec: 1.1.0",
)
@click.pass_context
def cli(
    ctx: click.Context,
    root: str,
    log_file: str | None,
    log_format: str,
    debug: bool,
    systemd_cgroup: bool,
    rootless: str,
    criu: str,
) -> None:
    """hyperpy: OCI containers, each in its own QEMU guest, with runc's command line."""
    from hyperpy import log as hlog

    hlog.setup(log_file, log_format, debug)
    if debug:
        os.environ["HYPERPY_DEBUG"] = "1"
    ctx.obj = {"root": os.path.abspath(root), "systemd_cgroup": systemd_cgroup}


@cli.command()
@click.option("--bundle", "-b", default=".", help="path to the OCI bundle")
@click.option("--pid-file", default=None)
@click.option("--console-socket", default=None)
@click.option("--no-pivot", is_flag=True)
@click.option("--no-new-keyring", is_flag=True)
@click.option("--preserve-fds", type=int, default=0)
@click.argument("container_id")
@click.pass_context
@command
def create(
    ctx: click.Context,
    bundle: str,
    pid_file: str | None,
    console_socket: str | None,
    no_pivot: bool,
    no_new_keyring: bool,
    preserve_fds: int,
    container_id: str,
) -> None:
    """Create a container (boots its VM); `start` runs its process."""
    from hyperpy.verbs.create import CreateOptions

    no_preserved_fds(preserve_fds)
    opts = CreateOptions(bundle, pid_file, console_socket, no_pivot=no_pivot)
    _runtime(ctx).create(container_id, opts)


@cli.command()
@click.argument("container_id")
@click.pass_context
@command
def start(ctx: click.Context, container_id: str) -> None:
    """Start the process of a created container."""
    _runtime(ctx).start(container_id)


@cli.command()
@click.argument("container_id")
@click.pass_context
@command
def state(ctx: click.Context, container_id: str) -> None:
    """Print the state of a container as JSON."""
    click.echo(json.dumps(_runtime(ctx).state(container_id), indent=2))


@cli.command()
@click.option("--all", "-a", "all_", is_flag=True, help="signal every process of the container")
@click.argument("container_id")
@click.argument("sig", default="SIGTERM")
@click.pass_context
@command
def kill(ctx: click.Context, all_: bool, container_id: str, sig: str) -> None:
    """Send a signal to the container's init process (or to all with --all)."""
    _runtime(ctx).kill(container_id, parse_signal(sig), all_)


@cli.command()
@click.option("--force", "-f", is_flag=True, help="delete even a running container")
@click.argument("container_id")
@click.pass_context
@command
def delete(ctx: click.Context, force: bool, container_id: str) -> None:
    """Delete a container and its VM."""
    _runtime(ctx).delete(container_id, force)


@cli.command(name="list")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
@click.pass_context
@command
def list_(ctx: click.Context, fmt: str, quiet: bool) -> None:
    """List containers."""
    states = _runtime(ctx).list()
    if quiet:
        for s in states:
            click.echo(s["id"])
    elif fmt == "json":
        click.echo(json.dumps(states))
    else:
        click.echo(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for s in states:
            click.echo(
                f"{s['id']:<20}{s['pid']:<10}{s['status']:<10}{s['bundle']:<40}"
                f"{s['created']:<32}{s['owner'] or 'root'}"
            )


@cli.command()
@click.option("--bundle", "-b", default=".")
@click.option("--pid-file", default=None)
@click.option("--console-socket", default=None)
@click.option("--detach", "-d", is_flag=True)
@click.option("--no-pivot", is_flag=True)
@click.option("--no-new-keyring", is_flag=True)
@click.option("--keep", is_flag=True, help="do not delete the container after it exits")
@click.argument("container_id")
@click.pass_context
@command
def run(
    ctx: click.Context,
    bundle: str,
    pid_file: str | None,
    console_socket: str | None,
    detach: bool,
    no_pivot: bool,
    no_new_keyring: bool,
    keep: bool,
    container_id: str,
) -> None:
    """Create and start a container; in the foreground, wait and exit with its status."""
    from hyperpy.verbs.create import CreateOptions

    opts = CreateOptions(bundle, pid_file, console_socket, no_pivot=no_pivot)
    status = _runtime(ctx).run(container_id, opts, detach, keep)
    if not detach:
        sys.exit(status)


@cli.command(name="exec", context_settings={"allow_interspersed_args": False})
@click.option("--process", "-p", "process_file", default=None, help="path to process.json")
@click.option("--console-socket", default=None)
@click.option("--detach", "-d", is_flag=True)
@click.option("--pid-file", default=None)
@click.option("--tty", "-t", is_flag=True)
@click.option("--cwd", default=None)
@click.option("--env", "-e", multiple=True)
@click.option("--user", "-u", default=None, help="uid[:gid]")
@click.option("--additional-gids", "-g", multiple=True, type=int)
@click.option("--no-new-privs", is_flag=True)
@click.option(
    "--cap", "-c", multiple=True, help="add a capability (bounding, effective, permitted)"
)
@click.option("--preserve-fds", type=int, default=0)
@click.argument("container_id")
@click.argument("command_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@command
def exec_(
    ctx: click.Context,
    process_file: str | None,
    console_socket: str | None,
    detach: bool,
    pid_file: str | None,
    tty: bool,
    cwd: str | None,
    env: tuple[str, ...],
    user: str | None,
    additional_gids: tuple[int, ...],
    no_new_privs: bool,
    cap: tuple[str, ...],
    preserve_fds: int,
    container_id: str,
    command_args: tuple[str, ...],
) -> None:
    """Run a new process in a running container."""
    from hyperpy.verbs.exec import ExecOptions, ProcessFlags

    no_preserved_fds(preserve_fds)
    flags = ProcessFlags(process_file, command_args, tty=tty, cwd=cwd, env=env, user=user,
                         additional_gids=additional_gids, no_new_privs=no_new_privs,
                         caps=cap)  # fmt: skip
    opts = ExecOptions(console_socket, pid_file, detach)
    sys.exit(_runtime(ctx).exec(container_id, flags, opts))


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.argument("container_id")
@click.argument("ps_args", nargs=-1)
@click.pass_context
@command
def ps(ctx: click.Context, fmt: str, container_id: str, ps_args: tuple[str, ...]) -> None:
    """List the processes of a container.

    --format json prints host pids, as runc does: those of the process proxies that stand
    for the container's processes on the host.  The table lists the processes inside the
    guest (their guest pids); ps options are not applied.
    """
    host, guest = _runtime(ctx).ps(container_id, guest=fmt != "json")
    if fmt == "json":
        click.echo(json.dumps(host))
    else:
        click.echo(f"{'PID':>7} {'PPID':>7} {'UID':>6} S CMD   (pids in the guest)")
        for p in guest:
            click.echo(f"{p['pid']:>7} {p['ppid']:>7} {p['uid']:>6} {p['state']} {p['cmd']}")


@cli.command()
@click.option("--resources", "-r", default=None, help="LinuxResources JSON file, - for stdin")
@click.option("--memory", default=None)
@click.option("--memory-reservation", default=None)
@click.option("--memory-swap", default=None)
@click.option("--kernel-memory", default=None, hidden=True)
@click.option("--kernel-memory-tcp", default=None, hidden=True)
@click.option("--cpu-shares", "--cpu-share", "cpu_shares", type=int, default=None)
@click.option("--cpu-period", type=int, default=None)
@click.option("--cpu-quota", type=int, default=None)
@click.option("--cpu-rt-period", type=int, default=None, hidden=True)
@click.option("--cpu-rt-runtime", type=int, default=None, hidden=True)
@click.option("--cpuset-cpus", default=None)
@click.option("--cpuset-mems", default=None)
@click.option("--pids-limit", type=int, default=None)
@click.option("--blkio-weight", type=int, default=None)
@click.argument("container_id")
@click.pass_context
@command
def update(ctx: click.Context, resources: str | None, container_id: str, **flags: Any) -> None:
    """Change a container's resource limits (its cgroup in the guest; CPU ones also the
    pod's cgroup on the host, where the direct driver's vCPUs run)."""
    from hyperpy.verbs.flags import update_resources
    from hyperpy.verbs.resources import read_document

    res = update_resources(read_document(resources) if resources else {}, flags)
    _runtime(ctx).update(container_id, res)


@cli.command()
@click.option("--stats", "once", is_flag=True, help="print the stats once and exit")
@click.option("--interval", default="5s", help="time between stats reports")
@click.argument("container_id")
@click.pass_context
@command
def events(ctx: click.Context, once: bool, interval: str, container_id: str) -> None:
    """Print the container's resource stats and OOM events as JSON lines (runc events)."""
    period = parse_duration(interval, "--interval")

    def emit(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    _runtime(ctx).events(container_id, once, period, emit)


@cli.command()
@click.argument("container_id")
@click.pass_context
@command
def pause(ctx: click.Context, container_id: str) -> None:
    """Suspend every process of the container."""
    _runtime(ctx).pause(container_id)


@cli.command()
@click.argument("container_id")
@click.pass_context
@command
def resume(ctx: click.Context, container_id: str) -> None:
    """Resume a paused container."""
    _runtime(ctx).pause(container_id, resume=True)


@cli.command()
@click.option("--rootless", is_flag=True)
@click.option("--bundle", "-b", default=".")
@command
def spec(rootless: bool, bundle: str) -> None:
    """Write a default config.json into the bundle."""
    from hyperpy.oci.spec import default_spec

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise UsageError(f"{path} already exists: remove it first")
    with open(path, "w") as f:
        json.dump(default_spec(rootless=rootless), f, indent="\t")
        f.write("\n")


@cli.command()
@command
def features() -> None:
    """Print the features this runtime supports (the runtime-spec features document)."""
    from hyperpy.oci.spec import features as feats

    click.echo(json.dumps(feats(), indent=2))


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["text", "json"]), default="text")
@command
def check(fmt: str) -> None:
    """Tell whether this host can run hyperpy, and how to fix what is missing."""
    from hyperpy.check import FAIL, run_all
    from hyperpy.config import load as load_config

    results = run_all(load_config().vm)
    if fmt == "json":
        click.echo(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            click.echo(
                f"[{r.status:>4}] {r.name}: {r.detail}"
                + (f"\n       fix: {r.fix}" if r.fix and r.status != "ok" else "")
            )
    if any(r.status == FAIL for r in results):
        sys.exit(1)


@cli.command()
@click.pass_context
@command
def env(ctx: click.Context) -> None:
    """Print the effective configuration as JSON."""
    from hyperpy.config import artifacts_dir, config_path
    from hyperpy.config import load as load_config

    source = config_path()
    obj = ctx.find_root().obj
    out = {
        "version": __version__,
        "config_file": source if os.path.exists(source) else None,
        "artifacts": artifacts_dir(),
        "root": obj["root"],
        "systemd_cgroup": obj["systemd_cgroup"],
        **load_config().as_dict(),
    }
    click.echo(json.dumps(out, indent=2))


for _sub in template.commands.values():  # their errors are reported as every verb's
    _sub.callback = command(_sub.callback) if _sub.callback else None
cli.add_command(template)


def main() -> None:
    cli(prog_name="hyperpy")


if __name__ == "__main__":
    main()
