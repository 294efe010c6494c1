"""Trainer glue: LPWD in any ``transformers.Trainer`` with one flag.

``LPWDMixin`` goes in front of any Trainer subclass (``Trainer``, ``Seq2SeqTrainer``, TRL's ``SFTTrainer``)::

    class MySFTTrainer(LPWDMixin, SFTTrainer): ...

One module per concern: :mod:`.arguments` (the flags, derived from :mod:`hf_lpwd.settings`), :mod:`.mixin`
(what must touch the training loop), :mod:`.build` (base, λ, groups, LPWD), :mod:`.layer_log` (the layer
table), :mod:`.norms` (per-depth norms), :mod:`.card` (the model card), :mod:`.refusals` (what the arguments
alone rule out).
"""

from __future__ import annotations

from ..names import LPWD_CONFIG_NAME
from .arguments import LPWDTrainingArguments, lpwd_config_from_args
from .mixin import LPWDMixin, LPWDTrainer
from .refusals import check_deepspeed, check_training_arguments

__all__ = [
    "LPWD_CONFIG_NAME",
    "LPWDMixin",
    "LPWDTrainer",
    "LPWDTrainingArguments",
    "check_deepspeed",
    "check_training_arguments",
    "lpwd_config_from_args",
]
