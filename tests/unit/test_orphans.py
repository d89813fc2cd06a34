"""What a killed monitor's VM leaves behind is its driver's to reap (hyperpy/vm/orphans.py):
delete hands over the state dir and the driver's name, and knows no driver."""

from __future__ import annotations

import subprocess
import sys

from hyperpy import launcher
from hyperpy.vm import orphans, view


def test_only_a_libvirt_pod_with_a_view_left_is_reaped(monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(view, "remove_for", lambda d: asked.append(d) or False)
    for driver in ("qemu", "remote", ""):  # "": a record from before the driver was saved
        orphans.reap("/run/hyperpy/c1", driver)
    assert asked == []
    orphans.reap("/run/hyperpy/c1", "libvirt")  # no view left: the monitor cleaned up
    assert asked == ["/run/hyperpy/c1"]


def test_delete_imports_no_driver():
    """delete is a hot verb: the lean orphans module only, no driver's (python -S, as the
    launcher runs it)."""
    code = (
        "import sys; import hyperpy.verbs.delete as d; from hyperpy.vm import orphans; "
        "orphans.reap('/nonexistent/c1', 'qemu'); "
        "print(sorted(m for m in sys.modules if m.startswith(('hyperpy.vm.', 'libvirt', "
        "'asyncio', 'logging'))))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=launcher.packages_dir())  # fmt: skip
    assert out.stdout.strip() == "['hyperpy.vm.orphans']", out.stdout
