"""Matthews correlation coefficient, an ``evaluate`` metric module shipped with the recipes (numpy only).

    evaluate.load("recipes/metrics/matthews_correlation").compute(predictions=[0, 1, 1], references=[0, 1, 0])

Same inputs and result as the Hub's ``evaluate-metric/matthews_correlation`` (scikit-learn's
``matthews_corrcoef``, GLUE's CoLA metric): for K labels, with C the confusion matrix, t_k / p_k the
number of references / predictions of label k, c the correct ones and s all of them,

    MCC = (c·s − Σ p_k·t_k) / sqrt((s² − Σ p_k²)·(s² − Σ t_k²))

(for two labels: (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))); 0 when the denominator is 0.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Matthews correlation coefficient: +1 perfect, 0 no better than chance, -1 inverse."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    sample_weight (list of float): weight of each example; default 1.
Returns:
    matthews_correlation (float): in [-1, 1].
Example:
    >>> metric = evaluate.load("recipes/metrics/matthews_correlation")
    >>> metric.compute(predictions=[1, 1, 0, 0], references=[1, 0, 0, 0])
    {'matthews_correlation': 0.577...}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, sample_weight=None):
        preds = np.asarray(predictions)
        refs = np.asarray(references)
        weights = np.ones(len(refs)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        labels = np.union1d(preds, refs)
        confusion = np.array(
            [[np.sum(weights * ((refs == t) & (preds == p))) for p in labels] for t in labels]
        )
        t_sum = confusion.sum(axis=1)
        p_sum = confusion.sum(axis=0)
        correct = np.trace(confusion)
        total = confusion.sum()
        cov_ytyp = correct * total - np.dot(t_sum, p_sum)
        cov_ypyp = total**2 - np.dot(p_sum, p_sum)
        cov_ytyt = total**2 - np.dot(t_sum, t_sum)
        if cov_ypyp * cov_ytyt == 0:
            return {"matthews_correlation": 0.0}
        return {"matthews_correlation": float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))}
