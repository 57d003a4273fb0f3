"""Caption metrics: a fast corpus BLEU-4 and the standard COCO metrics.

* :func:`bleu4` is pure Python, needs no Java and takes milliseconds; the solver calls it
  every epoch as its validation metric. It follows pycocoevalcap's ``Bleu(4)`` exactly
  (closest reference length, brevity penalty, the ``tiny``/``small`` smoothing constants)
  on the tokens that :func:`simple_tokenize` gives.
* :func:`coco_metrics` runs pycocoevalcap's scorers (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D)
  after its Stanford PTB tokenizer, so the numbers compare with published ones. METEOR and
  the tokenizer are Java programs shipped inside the pycocoevalcap wheel; they are started
  here with explicit arguments, a private temp directory and guaranteed clean-up. SPICE is
  never run (it downloads Stanford CoreNLP at run time) and is reported as unavailable.
* :func:`format_metrics_table` prints several result dicts side by side.

Nothing here touches the network, and importing this module starts no process.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "bleu4",
    "corpus_bleu",
    "scene_accuracy",
    "simple_tokenize",
]

# pycocoevalcap's BleuScorer constants: ``tiny`` keeps a zero match count finite in the
# product, ``small`` keeps a zero guess count from dividing by zero.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9

# Clitics that the PTB tokenizer splits off a word ("dog's" -> "dog 's", "don't" -> "do n't").
_CLITIC = re.compile(r"(?i)(n't|'s|'re|'ve|'ll|'d|'m)$")
# A token is a run of letters/digits, possibly joined by inner hyphens, dots or apostrophes
# ("t-shirt", "3.5", "o'clock"); everything else is punctuation and dropped, as
# pycocoevalcap drops PTB's punctuation tokens.
_WORD = re.compile(r"[^\W_]+(?:[-.'’][^\W_]+)*")


def simple_tokenize(caption: str) -> list[str]:
    """Lower-case a caption and split it into words, dropping punctuation.

    A pure-Python stand-in for pycocoevalcap's PTB tokenizer followed by its punctuation
    filter: identical on ordinary captions ("A dog's T-shirt, on the grass." ->
    ``["a", "dog", "'s", "t-shirt", "on", "the", "grass"]``); it may differ on rare
    constructions (quotes inside words, abbreviations with a final dot).
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    tokens: list[str] = []
    for word in _WORD.findall(caption.lower().replace("’", "'")):
        m = _CLITIC.search(word)
        if m and m.start() > 0:
            tokens.extend((word[: m.start()], m.group(1)))
        else:
            tokens.append(word)
    return tokens


def _ngram_counts(words: Sequence[str], max_n: int) -> Counter:
    return Counter(
        tuple(words[i : i + k]) for k in range(1, max_n + 1) for i in range(len(words) - k + 1)
    )


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> list[float]:
    """Corpus BLEU-1..max_n exactly as pycocoevalcap's ``Bleu(max_n)`` computes it.

    Inputs:
    - hypotheses: N generated captions (strings).
    - references: N lists of reference captions, each list non-empty.
    - max_n: the largest n-gram order.

    Returns [BLEU-1, ..., BLEU-max_n]. Each caption is tokenized by :func:`simple_tokenize`.
    The statistics are summed over the corpus: clipped n-gram matches ``c_k`` and hypothesis
    n-grams ``g_k``; ``r`` sums, per caption, the reference length closest to the hypothesis
    length (the shorter one on a tie), ``t`` the hypothesis lengths. Then
    ``BLEU-n = (prod_{k<=n} (c_k + tiny) / (g_k + small)) ** (1/n) * BP`` with
    ``BP = exp(1 - r/t)`` when ``t < r`` and 1 otherwise (both with the same constants).
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"need one reference list per hypothesis, got {len(hypotheses)} hypotheses "
            f"and {len(references)} reference lists"
        )
    if not hypotheses:
        raise ValueError("BLEU needs at least one hypothesis, got an empty list")
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    correct = [0] * max_n
    guess = [0] * max_n
    test_len = 0
    ref_len = 0
    for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")
        hyp_words = simple_tokenize(hyp)
        t = len(hyp_words)
        max_ref_counts: Counter = Counter()
        ref_lens = []
        for ref in refs:
            ref_words = simple_tokenize(ref)
            ref_lens.append(len(ref_words))
            max_ref_counts |= _ngram_counts(ref_words, max_n)  # elementwise max
        for ngram, count in _ngram_counts(hyp_words, max_n).items():
            correct[len(ngram) - 1] += min(max_ref_counts.get(ngram, 0), count)
        for k in range(max_n):
            guess[k] += max(0, t - k)
        test_len += t
        ref_len += min((abs(l - t), l) for l in ref_lens)[1]

    scores = []
    product = 1.0
    for k in range(max_n):
        product *= (correct[k] + _BLEU_TINY) / (guess[k] + _BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def bleu4(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 of N captions against their references, in [0, 1].

    Inputs:
    - hypotheses: N generated captions.
    - references: N non-empty lists of reference captions.

    Same definition as pycocoevalcap's ``Bleu(4)`` (see :func:`corpus_bleu`), on
    :func:`simple_tokenize` tokens (lower-case, punctuation dropped); no Java, so it is cheap
    enough to run on the validation split every epoch.
    """
    return corpus_bleu(hypotheses, references, max_n=4)[3]


_SCENE_ACCURACY_MODULE = "captionlab.captioning.scene_accuracy"


def scene_accuracy(*args, **kwargs):
    """Scene accuracy of captions on the shapes benchmark.

    Re-exported from ``captionlab.captioning.scene_accuracy`` (see its docstring for the
    arguments and the result); imported on first call so that this module imports on its own.
    """
    try:
        module = importlib.import_module(_SCENE_ACCURACY_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _SCENE_ACCURACY_MODULE:
            raise
        raise ImportError(
            f"scene_accuracy needs the module {_SCENE_ACCURACY_MODULE}, which is not installed"
        ) from exc
    return module.scene_accuracy(*args, **kwargs)
