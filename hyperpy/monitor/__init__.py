"""The sandbox monitor: one long-lived process per VM.

Owns the VM through its hypervisor driver (``vm/hypervisor.py``: QEMU here and jailed by
``vm/jail.py``, a libvirt domain, or a QEMU on a remote host), the single agent channel,
the sandbox's 9p export (``share.py``), and the record of exit statuses (exit.json). Serves
the CLI and the process proxies on ``monitor.sock`` with the agent's own framing
(:mod:`agent.protocol`):

- CLI requests (``create``, ``start``, ``exec``, ``signal``, ``ps``, ``pause``, ``resume``,
  ``shutdown``) are answered on the connection that sent them;
- a proxy sends ``attach {"proc": N}``: from then on the monitor sends it that process's
  stdout/stderr DATA frames and its ``exit`` event, and forwards its stdin DATA frames and
  ``signal``/``winsize`` requests to the agent. Output produced before a proxy attaches is
  kept until it does.

Its parts: ``__main__.py`` (the process: started by ``hyperpy create`` as ``python -m
hyperpy.monitor STATE_DIR READY_FD``), ``server.py`` (monitor.sock: clients, their budgets,
attach), ``pod.py`` (the VM, the agent channel, the requests, the network), ``procs.py``
(the pod's processes, one entry each).
"""
