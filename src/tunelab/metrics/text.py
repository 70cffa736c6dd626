"""Metrics for generated text, computed by the reference libraries: ROUGE (rouge-score, Porter
stemming), BLEU and chrF (sacrebleu), and SQuAD exact match / token F1.

SQuAD's normalisation is written here because its reference implementation is a standalone script
(HF `evaluate` fetches it from the hub at run time, which fails offline); it follows the official
v1.1 definition: lower-case, drop punctuation and the articles a/an/the, collapse whitespace.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import nltk  # noqa: F401  (rouge-score imports it; imported here so a missing install fails early)
import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F-measure over examples (as HF `evaluate` reports it), for ROUGE-1/2/L/Lsum.
    rougeLsum treats newlines as sentence boundaries."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = {k: 0.0 for k in ROUGE_TYPES}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    n = max(1, len(predictions))
    return {k: totals[k] / n for k in ROUGE_TYPES}


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exponential smoothing off), 0-100."""
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (character n-gram F-score, beta=2), 0-100."""
    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Exact match and F1 (0-100), each the max over an example's gold answers, averaged."""
    n = max(1, len(predictions))
    em = sum(max(exact_match(p, a) for a in golds) for p, golds in zip(predictions, answers, strict=True))
    f1 = sum(max(token_f1(p, a) for a in golds) for p, golds in zip(predictions, answers, strict=True))
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}
