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


def _not_the_cpu_kernel_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(NOTICE_START)


def quiet_cpu_kernel_notice() -> None:
    """Drop the notice (call before transformers' Trainer modules are imported; calling twice is harmless)."""
    logger = logging.getLogger(NOTICE_LOGGER)
    if _not_the_cpu_kernel_notice not in logger.filters:
        logger.addFilter(_not_the_cpu_kernel_notice)


__all__ = ["NOTICE_LOGGER", "NOTICE_START", "quiet_cpu_kernel_notice"]
