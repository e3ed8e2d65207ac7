"""Accuracy and F1 for MRPC, as an offline `evaluate` module (the Hub's `glue` metric needs the network).

evaluate parses this file's imports to check requirements: keep one import per line.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Accuracy and binary F1 (positive class 1, 'equivalent'), as GLUE reports for MRPC."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (0 or 1).
    references: gold labels (0 or 1).
Returns:
    accuracy: share of correct predictions.
    f1: F1 of the positive class.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MrpcMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1": float(f1_score(references, predictions, zero_division=0.0)),
        }
