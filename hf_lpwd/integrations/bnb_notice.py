"""Keep bitsandbytes' CPU-kernel notice out of a user's output.

transformers imports peft when it is installed (``transformers/trainer_utils.py``), and peft imports
bitsandbytes when it is installed (``peft/helpers.py``), so every command that touches the Trainer imports
bitsandbytes, whatever ``--optim`` says.  On a CPU with AVX512-BF16, bitsandbytes >= 0.48 then logs
``Failed to load CPU gemm_4bit_forward from kernels-community ...`` (its 4-bit inference kernel, used by no
LPWD run) through its logger ``bitsandbytes.backends.cpu.ops``; with no handler configured Python prints it on
stderr.  Neither import is LPWD's, so the notice is filtered where it is logged: that one message only, every
other bitsandbytes record passes.
"""

from __future__ import annotations

import logging

NOTICE_LOGGER = "bitsandbytes.backends.cpu.ops"
"""The logger bitsandbytes writes the notice to."""

NOTICE_START = "Failed to load CPU gemm_4bit_forward"
"""How the notice starts (its format string, before the exception text is filled in)."""

KERNELS_LOGGER = "kernels._internals.hf_hub"
"""Where the ``kernels`` package (when installed, bitsandbytes fetches that kernel through it) says, offline,
that it skips the publisher check of bitsandbytes' kernel repository."""

KERNELS_NOTICE_START = "Skipping publisher trust check for 'kernels-community/"
"""How that notice starts, for the kernels-community repositories only."""

_NOTICES = {NOTICE_LOGGER: NOTICE_START, KERNELS_LOGGER: KERNELS_NOTICE_START}


class _DropNotice(logging.Filter):
    """Drops the records of one logger whose message starts with one prefix; every other record passes."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_cpu_kernel_notice() -> None:
    """Drop the notices (call before transformers' Trainer modules are imported; twice is harmless)."""
    for name, start in _NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.start == start for f in logger.filters):
            logger.addFilter(_DropNotice(start))


__all__ = ["KERNELS_LOGGER", "KERNELS_NOTICE_START", "NOTICE_LOGGER", "NOTICE_START",
           "quiet_cpu_kernel_notice"]
