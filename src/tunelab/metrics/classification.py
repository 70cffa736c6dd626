"""Accuracy, macro/weighted F1 and per-class precision/recall/F1 (scikit-learn's definitions)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    _, _, wf, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average="weighted", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f)),
        "weighted_f1": float(wf),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "n": int(len(y_true)),
    }


def majority_baseline(train_labels, test_labels, labels: list[str]) -> dict:
    """Metrics of always predicting the most frequent training label: the floor a model must beat."""
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    top = values[np.argmax(counts)]
    return classification_metrics(test_labels, np.full(len(test_labels), top), labels)
