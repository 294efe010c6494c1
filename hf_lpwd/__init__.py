"""hf_lpwd: Layer-wise Pre-weight Decay for PyTorch and the Hugging Face Trainer.

Public API:

* :class:`LPWD` — the optimizer: *when* the decay is applied (timings wd / rwd / pwd, :data:`TIMINGS`)
  around any base optimizer, pwd folded into AdamW's step; how it follows the lr (:data:`LR_COUPLINGS`) and
  the masks of the decay;
* :func:`layer_depths`, :func:`lpwd_param_groups`, :func:`layer_table` — depth of each parameter
  and the param groups: *how much* per depth (uniform or layer-wise λ, layer-wise lr decay);
* :class:`LPWDTrainer`, :class:`LPWDMixin`, :class:`LPWDTrainingArguments` — the Trainer glue;
* :class:`LPWDConfig` — the decay settings as ``lpwd_config.json``.
"""

from .config import LPWD_CONFIG_NAME, WEIGHT_DECAY_MODES, LPWDConfig  # noqa: E402
from .model.groups import layer_table, lpwd_param_groups  # noqa: E402
from .model.layers import layer_depths  # noqa: E402
from .optim import DECAY_MODES, DEFAULT_WEIGHT_DECAY, LPWD, LR_COUPLINGS, TIMINGS  # noqa: E402
from .version import __version__  # noqa: E402,F401

_TRAINER_NAMES = ("LPWDMixin", "LPWDTrainer", "LPWDTrainingArguments")


def __getattr__(name: str):
    """Import the Trainer glue (and so transformers) only when it is asked for.

    ``from hf_lpwd import LPWD`` in a plain PyTorch loop then costs no transformers import.
    """
    if name in _TRAINER_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hf_lpwd' has no attribute {name!r}")

__all__ = [
    "DECAY_MODES",
    "DEFAULT_WEIGHT_DECAY",
    "LR_COUPLINGS",
    "TIMINGS",
    "LPWD",
    "LPWD_CONFIG_NAME",
    "WEIGHT_DECAY_MODES",
    "LPWDConfig",
    "LPWDMixin",
    "LPWDTrainer",
    "LPWDTrainingArguments",
    "__version__",
    "layer_depths",
    "layer_table",
    "lpwd_param_groups",
]
