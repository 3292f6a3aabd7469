"""Metrics the Evaluator computes whose settings are class defaults, not TFMA `config` strings.

TFMA takes a metric's settings as a JSON string inside the EvalConfig, and TFX stores the EvalConfig
in ML Metadata as JSON: a JSON string inside JSON always holds a backslash (`"{\\"top_k\\": 1}"`).
ML Metadata 1.16 escapes values for PostgreSQL with libpq's PQescapeLiteral and strips the quotes it
adds, which breaks on a backslash (the literal becomes `' E'...'`: "syntax error at or near"), so
the Evaluator's execution could not be recorded there. A class whose default is the setting needs no
`config` (found by running the production profile on PostgreSQL).
"""

from __future__ import annotations

import tensorflow_model_analysis as tfma


class TopOneRecall(tfma.metrics.Recall):
    """Recall of the top-1 prediction (per class under binarization), not of a 0.5 probability
    cut-off; keyed `recall` like TFMA's own."""

    def __init__(self, thresholds=None, top_k: int | None = 1, class_id: int | None = None, name=None, **kwargs):
        super().__init__(thresholds=thresholds, top_k=top_k, class_id=class_id, name=name, **kwargs)
