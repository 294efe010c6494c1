"""File names and log keys shared by the writers (the Trainer glue) and the readers (``hf-lpwd compare``).

One constant per name, so that a reader and a writer cannot drift apart; this module imports nothing.
"""

LPWD_CONFIG_NAME = "lpwd_config.json"
"""The settings a model was trained with (and the run's record, see :mod:`hf_lpwd.config`), beside its
weights."""

NORM_LOG_PREFIX = "lpwd/weight_norm/depth_"
"""Per-depth weight norms in the Trainer's logs: ``f"{NORM_LOG_PREFIX}{depth:02d}"`` → ‖θ_d‖₂."""

RECORD_DEPTH_SHRINK_KEY = "depth_shrink"
"""``lpwd_config.json``: ``{depth: S_d}``, the shrink Σ_t d_t per decayed depth over the run."""

RECORD_SHRINK_KEY = "shrink"
"""``lpwd_config.json``: the run's largest S over its decayed parameters."""


DISTANCE_LOG_PREFIX = "lpwd/distance_to_init/depth_"
"""``--lpwd_log_distance_to_init``: ``f"{DISTANCE_LOG_PREFIX}{depth:02d}"`` → ‖θ_d − θ₀_d‖₂, θ₀ the weights
when the optimizer was built."""


def distance_log_key(depth: int) -> str:
    """The log key of depth ``depth``'s distance to the weights training started from."""
    return f"{DISTANCE_LOG_PREFIX}{depth:02d}"


def norm_log_key(depth: int) -> str:
    """The log key of depth ``depth``'s weight norm."""
    return f"{NORM_LOG_PREFIX}{depth:02d}"
