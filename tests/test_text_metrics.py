"""Our text metrics equal the reference libraries' on a few hundred real string pairs."""

import random

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.metrics import text as tm


@pytest.fixture(scope="module")
def pairs(tweets):
    """300 (prediction, reference) pairs: real tweets with words dropped/shuffled as 'predictions'."""
    rng = random.Random(0)
    refs = tweets["text"].astype(str).tolist()[:300]
    preds = []
    for r in refs:
        words = r.split()
        kept = [w for w in words if rng.random() > 0.3] or words[:1]
        if rng.random() < 0.3:
            rng.shuffle(kept)
        preds.append(" ".join(kept))
    return preds, refs


def test_rouge_equals_rouge_score_with_stemming(pairs):
    preds, refs = pairs
    ours = tm.rouge(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    ref_scores = [scorer.score(r, p) for p, r in zip(preds, refs)]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[key] == pytest.approx(np.mean([s[key].fmeasure for s in ref_scores]), abs=1e-12)
    assert 0.3 < ours["rouge1"] < 1


def test_rouge_stems_and_identical_strings_score_one():
    assert tm.rouge(["the cats were running"], ["the cat was running"])["rouge1"] > tm.rouge(
        ["the dogs were sitting"], ["the cat was running"])["rouge1"]
    assert tm.rouge(["same text here"], ["same text here"]) == {k: 1.0 for k in tm.ROUGE_TYPES}


def test_bleu_and_chrf_equal_sacrebleu(pairs):
    preds, refs = pairs
    assert tm.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=1e-9)
    assert tm.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score, abs=1e-9)
    assert tm.bleu(refs, refs) == pytest.approx(100.0)


def test_squad_normalisation_and_scores():
    # Worked examples of the official SQuAD v1.1 definitions.
    assert tm.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert tm.exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert tm.token_f1("in Paris France", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert tm.token_f1("", "") == 1.0 and tm.token_f1("x", "") == 0.0
    scores = tm.squad(["Paris", "in 1889", "blue"], [["Paris", "paris, france"], ["1889"], ["red"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 * 0.5 * 1 / 1.5 + 0) / 3)


def test_squad_f1_matches_a_direct_bag_of_words_count(pairs):
    """Token F1 over 300 pairs against an independent Counter-free computation."""
    preds, refs = pairs
    for p, r in zip(preds, refs):
        a, b = tm.normalize_answer(p).split(), tm.normalize_answer(r).split()
        if not a or not b:
            continue
        common = sum(min(a.count(w), b.count(w)) for w in set(a))
        expected = 0.0 if common == 0 else 2 * common / (len(a) + len(b))
        assert tm.token_f1(p, r) == pytest.approx(expected)
