"""``hyperpy template ls|rm|build``: the VM templates of this host (``vm/template.py``).

Templates are made by the first pod of each VM shape; these commands list them, remove
them (stopping their keeper processes; running pods keep their own mappings, and the next
pod of that shape builds a new one) and build the default shape's ahead of any pod, by
running a throwaway busybox container (a pod with the default spec: no resource limits,
its own network namespace).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import click

from hyperpy.errors import UsageError, VMError
from hyperpy.proc import run


def _store():  # noqa: ANN202
    from hyperpy.config import load as load_config
    from hyperpy.vm.template import Store

    return Store(load_config().template.dir)


@click.group(name="template")
def template() -> None:
    """List or remove VM templates (pods start from a saved, booted VM)."""


@template.command(name="ls")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
def ls(fmt: str) -> None:
    """List the templates, with their keeper's pid and whether it is alive."""
    items = _store().list()
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    click.echo(f"{'KEY':<34}{'MEMORY':<8}{'STATE':<10}{'BUILT':<9}{'PID':<9}CREATED")
    for t in items:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.get("created", 0)))
        pid = str(t.get("pid", "")) if t.get("alive") else "dead"
        click.echo(f"{t.get('key', '?'):<34}{str(t.get('memory_mb', '?')) + 'M':<8}"
                   f"{str(t.get('state_bytes', '?')):<10}{str(t.get('build_s', '?')) + 's':<9}"
                   f"{pid:<9}{created}")  # fmt: skip


@template.command(name="rm")
@click.option("--all", "-a", "all_", is_flag=True, help="remove every template")
@click.argument("keys", nargs=-1)
def rm(all_: bool, keys: tuple[str, ...]) -> None:
    """Stop the keepers of templates KEYS (or --all) and remove their files."""
    store = _store()
    if all_ == bool(keys):
        raise UsageError("template rm: name template keys (see `hyperpy template ls`) or --all")
    targets = [t["key"] for t in store.list() if "key" in t] if all_ else list(keys)
    missing = [k for k in targets if not store.remove(k)]
    store.sweep_locks()
    if missing:
        raise UsageError(f"template rm: no template {', '.join(missing)} in {store.dir}")


@template.command(name="build")
def build() -> None:
    """Build the template of the default VM shape now (pre-warm a node)."""
    from hyperpy.bundle import make_bundle
    from hyperpy.config import load

    if load().vm.driver != "qemu":
        raise UsageError(
            f'VM templates are the qemu driver\'s: with [vm] driver = "{load().vm.driver}" '
            "every pod boots cold, so there is nothing to build"
        )

    before = {t.get("key") for t in _store().list()}
    with tempfile.TemporaryDirectory(prefix="hyperpy-template-") as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, ["true"])
        argv = [sys.executable, "-m", "hyperpy.cli", "--root", os.path.join(work, "root"),
                "run", "--bundle", bundle, f"template-build-{os.getpid()}"]  # fmt: skip
        res = run(argv, timeout=600, check=False, input=b"")
        if res.returncode != 0:
            raise VMError(f"template build: the throwaway pod failed: "
                             f"{res.stderr.decode(errors='replace').strip()}")  # fmt: skip
    for t in _store().list():
        if t.get("alive"):
            click.echo(f"{t['key']} {'built' if t['key'] not in before else 'exists'}")
