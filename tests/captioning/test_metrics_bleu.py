"""bleu4 / corpus_bleu / simple_tokenize: hand-computed cases and agreement with pycocoevalcap."""

import math
import random

import pytest

from captionlab.captioning.metrics import bleu4, corpus_bleu, simple_tokenize


def test_simple_tokenize_matches_ptb_conventions():
    # What pycocoevalcap's PTB tokenizer + punctuation filter gives for this line.
    got = simple_tokenize("A dog's T-shirt, on the grass. The kids don't  run! (3.5 m)")
    expected = "a dog 's t-shirt on the grass the kids do n't run 3.5 m".split()
    assert got == expected
    assert simple_tokenize("") == []
    assert simple_tokenize(" ... !") == []


def test_simple_tokenize_rejects_non_strings():
    with pytest.raises(TypeError, match="caption must be a str, got list"):
        simple_tokenize(["a", "dog"])


def test_bleu4_hand_computed():
    # hyp (6 words) vs ref1 (7 words, closest length) and ref2 (2 words).
    # matches: 1-grams 6/6, 2-grams 4/5, 3-grams 3/4, 4-grams 2/3; BP = exp(1 - 7/6).
    hyp = ["a dog runs on the grass"]
    refs = [["a dog runs on the green grass", "a cat"]]
    expected = (1.0 * 0.8 * 0.75 * (2 / 3)) ** 0.25 * math.exp(1 - 7 / 6)
    assert bleu4(hyp, refs) == pytest.approx(expected, rel=1e-8)
    b = corpus_bleu(hyp, refs)
    bp = math.exp(1 - 7 / 6)
    assert b[0] == pytest.approx(1.0 * bp, rel=1e-8)
    assert b[1] == pytest.approx(0.8**0.5 * bp, rel=1e-8)
    assert b[2] == pytest.approx((0.8 * 0.75) ** (1 / 3) * bp, rel=1e-8)


def test_bleu4_closest_reference_length_prefers_shorter_on_tie():
    # hyp has 4 words; refs have 3 and 5: both 1 away, the shorter (3) is used, so no
    # brevity penalty. Choosing 5 would give exp(1 - 5/4) ~= 0.78.
    assert bleu4(["a b c d"], [["a b c", "a b c d e"]]) == pytest.approx(1.0, abs=1e-8)
    # With only the longer reference the penalty applies.
    assert bleu4(["a b c d"], [["a b c d e"]]) == pytest.approx(math.exp(1 - 5 / 4), rel=1e-8)


def test_bleu4_sums_statistics_over_the_corpus():
    # Sentence 1 is perfect (4/4, 3/3, 2/2, 1/1); sentence 2 ("q r s t" vs "q z z z")
    # matches one 1-gram of 4 and nothing of higher order. Corpus precisions sum counts.
    hyps = ["a b c d", "q r s t"]
    refs = [["a b c d"], ["q z z z"]]
    p1, p2, p3, p4 = 5 / 8, 3 / 6, 2 / 4, 1 / 2
    expected = (p1 * p2 * p3 * p4) ** 0.25
    assert bleu4(hyps, refs) == pytest.approx(expected, rel=1e-8)
    # ...which is not the mean of the sentence scores (sentence 2 alone is ~0).
    mean_of_sentences = (bleu4(hyps[:1], refs[:1]) + bleu4(hyps[1:], refs[1:])) / 2
    assert abs(bleu4(hyps, refs) - mean_of_sentences) > 0.02  # 0.529 vs 0.500


def test_bleu4_clips_repeated_words():
    # "the the the the" against "the cat": 'the' counted at most once -> p1 = 1/4;
    # no 2-gram matches, so BLEU-4 is ~0 but BLEU-1 is exactly 1/4 (no brevity penalty).
    b = corpus_bleu(["the the the the"], [["the cat"]])
    assert b[0] == pytest.approx(0.25, rel=1e-8)
    assert b[3] < 1e-3


def test_bleu4_identical_captions_score_one_and_ignore_case_and_punctuation():
    hyps = ["A dog, running on the grass.", "two red squares above a blue circle"]
    refs = [["a dog running on the grass"], ["Two red squares above a blue circle!", "x"]]
    assert bleu4(hyps, refs) == pytest.approx(1.0, abs=1e-8)


def test_bleu4_empty_hypothesis_gives_zero_not_error():
    assert bleu4([""], [["a dog"]]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_corpus_bleu_equals_pycocoevalcap(seed):
    from pycocoevalcap.bleu.bleu import Bleu

    rng = random.Random(seed)
    words = "a the dog cat on red big small of in two square circle left".split()

    def sentence(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    n = rng.randint(5, 40)
    hyps = [sentence(0, 12) for _ in range(n)]
    refs = [[sentence(1, 14) for _ in range(rng.randint(1, 5))] for _ in range(n)]
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    got = corpus_bleu(hyps, refs)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert bleu4(hyps, refs) == pytest.approx(expected[3], rel=1e-12, abs=1e-15)
    assert expected[0] > 0.1  # the corpus is not degenerate


@pytest.mark.parametrize(
    ("hyps", "refs", "message"),
    [
        (["a"], [["a"], ["b"]], "one reference list per hypothesis, got 1 hypotheses and 2"),
        ([], [], "at least one hypothesis"),
        (["a"], [[]], r"references\[0\] must be a non-empty list"),
        (["a"], ["a dog"], r"references\[0\] must be a non-empty list"),
    ],
)
def test_bleu4_rejects_bad_inputs(hyps, refs, message):
    with pytest.raises(ValueError, match=message):
        bleu4(hyps, refs)
