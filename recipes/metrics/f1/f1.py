"""F1 score, an ``evaluate`` metric module shipped with the recipes (numpy only, no Hub, no scikit-learn).

    evaluate.load("recipes/metrics/f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])  # f1 = 2/3

Same inputs and results as the Hub's ``evaluate-metric/f1`` (scikit-learn's ``f1_score`` with
``zero_division=0``): ``average="binary"`` (default, the F1 of ``pos_label``), ``"macro"`` (unweighted
mean over the labels that occur in the references or the predictions), ``"weighted"`` (mean weighted by
each label's number of references) or ``"micro"`` (from the summed counts: the accuracy, for one label
per example).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """F1 = 2·precision·recall / (precision + recall) = 2·TP / (2·TP + FP + FN)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str): "binary" (default), "macro", "weighted" or "micro".
    pos_label (int): the positive label when average="binary"; default 1.
Returns:
    f1 (float): in [0, 1]; a label with no true and no predicted positive counts 0.
Example:
    >>> metric = evaluate.load("recipes/metrics/f1")
    >>> metric.compute(predictions=[0, 1, 2, 0], references=[0, 1, 1, 2], average="macro")
    {'f1': 0.444...}
"""

AVERAGES = ("binary", "macro", "weighted", "micro")


def _f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        if average not in AVERAGES:
            raise ValueError(f"average={average!r} is not one of {AVERAGES}")
        preds = np.asarray(predictions)
        refs = np.asarray(references)
        labels = np.union1d(preds, refs)
        if average == "binary":
            if len(labels) > 2:
                raise ValueError(f"average='binary' needs at most 2 labels, got {labels.tolist()}: "
                                 "use average='macro', 'weighted' or 'micro'")
            labels = np.asarray([pos_label])
        tp = np.array([np.sum((preds == k) & (refs == k)) for k in labels], dtype=np.float64)
        fp = np.array([np.sum((preds == k) & (refs != k)) for k in labels], dtype=np.float64)
        fn = np.array([np.sum((preds != k) & (refs == k)) for k in labels], dtype=np.float64)
        if average == "micro":
            return {"f1": _f1(tp.sum(), fp.sum(), fn.sum())}
        scores = np.array([_f1(*counts) for counts in zip(tp, fp, fn, strict=True)])
        if average == "weighted":
            support = tp + fn
            return {"f1": float(np.sum(scores * support) / support.sum()) if support.sum() else 0.0}
        return {"f1": float(scores.mean())}
