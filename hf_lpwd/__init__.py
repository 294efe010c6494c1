"""hf_lpwd: Layer-wise Pre-weight Decay for PyTorch and the Hugging Face Trainer.

Public API:

* :class:`LPWD` — the optimizer (modes wd / rwd / pwd around any base optimizer);
* :func:`layer_depths`, :func:`lpwd_param_groups`, :func:`layer_table` — depth of each parameter
  and the layer-wise param groups;
* :class:`LPWDTrainer`, :class:`LPWDMixin`, :class:`LPWDTrainingArguments` — the Trainer glue;
* :class:`LPWDConfig` — the decay settings as ``lpwd_config.json``.
"""

__version__ = "0.1.0"

from .config import LPWD_CONFIG_NAME, WEIGHT_DECAY_MODES, LPWDConfig  # noqa: E402
from .groups import layer_table, lpwd_param_groups  # noqa: E402
from .layers import layer_depths  # noqa: E402
from .optim import DECAY_MODES, LPWD  # noqa: E402
from .trainer import LPWDMixin, LPWDTrainer, LPWDTrainingArguments  # noqa: E402

__all__ = [
    "DECAY_MODES",
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
