"""The one exception tree of hyperpy, and the exit codes the CLI maps it to.

::

    HyperpyError                      exit 1   anything hyperpy reports on purpose
     +-- UsageError                   exit 2   a flag or argument is wrong
     +-- SpecError                    exit 3   config.json is invalid (names the JSON pointer)
     +-- ConfigError                  exit 3   hyperpy's own configuration is invalid
     +-- ContainerNotFound            exit 4   no container with that id under --root
     +-- ContainerExists              exit 5   create of an id that is taken
     +-- InvalidState                 exit 6   the operation is not allowed in the current status
     +-- VMError                      exit 7   QEMU failed to start, boot, or died
     |    +-- BootTimeout                      the guest did not reach the agent in time
     |    +-- KernelPanic                      the console showed "Kernel panic"
     +-- AgentError                   exit 8   the guest agent refused or failed a request
     +-- ProtocolError                exit 8   a garbled, oversize or unexpected frame
     +-- HookError                    exit 9   an OCI hook failed or timed out
     +-- ProcessError                 exit 10  a host subprocess failed (carries argv, rc, output)
     +-- ArtifactMissing              exit 11  the kernel or initrd has not been built

Every error carries a message that says what was wrong, where, and how to fix it.
"""

from __future__ import annotations


class HyperpyError(Exception):
    """Base of every error hyperpy raises on purpose."""

    exit_code = 1


class UsageError(HyperpyError):
    exit_code = 2


class CgroupError(HyperpyError):
    """The pod's host cgroup could not be made, joined or removed."""


class SpecError(HyperpyError):
    """config.json is invalid; ``pointer`` is the RFC 6901 JSON pointer of the bad value."""

    exit_code = 3

    def __init__(self, message: str, pointer: str = "", path: str = "") -> None:
        self.message = message  # without the location, for passing on
        self.pointer = pointer
        self.path = path
        where = ""
        if path or pointer:
            where = f"{path or 'config.json'}#{pointer or ''}: "
        super().__init__(where + message)


class ConfigError(HyperpyError):
    exit_code = 3


class ContainerNotFound(HyperpyError):
    exit_code = 4


class ContainerExists(HyperpyError):
    exit_code = 5


class InvalidState(HyperpyError):
    exit_code = 6


class VMError(HyperpyError):
    exit_code = 7


class BootTimeout(VMError):
    pass


class KernelPanic(VMError):
    pass


class AgentError(HyperpyError):
    exit_code = 8


class ProtocolError(HyperpyError):
    exit_code = 8


class HookError(HyperpyError):
    exit_code = 9


class ProcessError(HyperpyError):
    """A host subprocess failed; carries what is needed to understand why."""

    exit_code = 10

    def __init__(self, argv: list[str], rc: int | None, stdout: str = "", stderr: str = "") -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr or stdout).strip().splitlines()[-5:]
        super().__init__(
            f"command {' '.join(self.argv)!r} exited with {rc}"
            + (": " + " | ".join(tail) if tail else "")
        )


class ArtifactMissing(HyperpyError):
    exit_code = 11
