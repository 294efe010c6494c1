"""Accuracy, an ``evaluate`` metric module shipped with the recipes (numpy only, no Hub, no scikit-learn).

    evaluate.load("recipes/metrics/accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    # {'accuracy': 0.666...}

Same inputs and result as the Hub's ``evaluate-metric/accuracy``: the fraction of predictions equal to
their reference, or their count with ``normalize=False``; ``sample_weight`` weighs each example.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy: the fraction of predictions that equal their reference label."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    normalize (bool): True (default) gives the fraction, False the number of correct predictions.
    sample_weight (list of float): weight of each example; default 1.
Returns:
    accuracy (float): in [0, 1] (or a count with normalize=False).
Example:
    >>> metric = evaluate.load("recipes/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 2, 0], references=[0, 1, 1, 1])
    {'accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        preds = np.asarray(predictions)
        refs = np.asarray(references)
        weights = np.ones(len(refs)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        correct = float(np.sum(weights * (preds == refs)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total else 0.0}
