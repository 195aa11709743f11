"""Linux process settings for the processes AdaSpec starts: die with the parent, a name in ps and top.

Both are best effort: elsewhere they do nothing (a service's engine process still stops when its pipe
closes; `Stack.stop` still stops the services).
"""

from __future__ import annotations

import ctypes

PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15


def _prctl(option: int, value) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)
    except (OSError, AttributeError):
        pass


def die_with_parent(signum: int) -> None:
    """Have `signum` sent to this process when the process that started it dies (no orphans after a crash)."""
    _prctl(PR_SET_PDEATHSIG, signum)


def set_process_name(name: str) -> None:
    """The name ps and top show (at most 15 bytes)."""
    _prctl(PR_SET_NAME, name.encode()[:15])
