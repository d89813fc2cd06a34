#!/usr/bin/python3.11 -SE
"""/init in the guest initrd: record when userspace started, then run the agent as PID 1.

-S skips site (no site-packages in the guest), -E ignores PYTHON* variables: start-up
imports under TCG cost about as much as the kernel boot, so nothing is imported here that
the agent does not need.
"""

import sys
import time

T_INIT = time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0
sys.path.insert(0, "/opt/hyperpy")

from agent.main import main  # noqa: E402

main(T_INIT)
