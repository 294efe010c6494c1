"""Trainer glue: LPWD in any ``transformers.Trainer`` with one flag.

``LPWDMixin`` goes in front of any Trainer subclass (``Trainer``, ``Seq2SeqTrainer``, TRL's ``SFTTrainer``)::

    class MySFTTrainer(LPWDMixin, SFTTrainer): ...

One module per concern: :mod:`.arguments` (the flags, derived from :mod:`hf_lpwd.settings`), :mod:`.mixin`
(what must touch the training loop), :mod:`.build` (base, λ, groups, LPWD), :mod:`.layer_log` (the layer
table), :mod:`.norms` (per-depth norms), :mod:`.card` (the model card), :mod:`.refusals` (what the arguments
alone rule out).
"""

from __future__ import annotations

from ..integrations.bnb_notice import quiet_cpu_kernel_notice

quiet_cpu_kernel_notice()  # before transformers' Trainer imports peft, and peft bitsandbytes

from ..names import LPWD_CONFIG_NAME  # noqa: E402
from .arguments import LPWDTrainingArguments, lpwd_config_from_args  # noqa: E402
from .mixin import LPWDMixin, LPWDTrainer  # noqa: E402
from .refusals import check_deepspeed, check_training_arguments, depths_in_flag_words  # noqa: E402

__all__ = [
    "LPWD_CONFIG_NAME",
    "LPWDMixin",
    "LPWDTrainer",
    "LPWDTrainingArguments",
    "check_deepspeed",
    "check_training_arguments",
    "depths_in_flag_words",
    "lpwd_config_from_args",
]
