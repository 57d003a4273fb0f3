"""Caption metrics: a fast corpus BLEU-4 and the standard COCO metrics.

* :func:`bleu4` is pure Python and needs no Java (about 0.2 ms of CPU per caption with
  five references); the solver calls it every epoch as its validation metric. It follows
  pycocoevalcap's ``Bleu(4)`` exactly (closest reference length, brevity penalty, the
  ``tiny``/``small`` smoothing constants) on the tokens that :func:`simple_tokenize` gives.
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
import importlib.util
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager

__all__ = [
    "METRIC_NAMES",
    "bleu4",
    "coco_metrics",
    "corpus_bleu",
    "format_metrics_table",
    "meteor_session",
    "scene_accuracy",
    "simple_tokenize",
]

#: The keys of :func:`coco_metrics`'s result that hold scores, in table order.
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

SPICE_REASON = (
    "not run: pycocoevalcap's SPICE downloads Stanford CoreNLP models at run time "
    "and captionlab works offline"
)
# Seconds a Java scorer may run before it is killed (METEOR's start-up alone, loading its
# paraphrase table, takes 13-25 s on 2 busy cores).
JAVA_TIMEOUT_S = 600.0

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
    constructions (brackets, which PTB keeps as "-lrb-"/"-rrb-" tokens; abbreviations with a
    final dot).
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    tokens: list[str] = []
    for word in _WORD.findall(caption.lower().replace("’", "'")):
        m = _CLITIC.search(word) if "'" in word else None
        if m and m.start() > 0:
            tokens.extend((word[: m.start()], m.group(1)))
        else:
            tokens.append(word)
    return tokens


def _ngram_counts(words: Sequence[str], max_n: int) -> Counter:
    """Counts of every n-gram (a tuple of words) of order 1..max_n."""
    counts: Counter = Counter()
    for k in range(1, max_n + 1):
        counts.update(zip(*[words[i:] for i in range(k)], strict=False))  # k-grams
    return counts


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
        ref_counts = []
        ref_lens = []
        for ref in refs:
            ref_words = simple_tokenize(ref)
            ref_lens.append(len(ref_words))
            ref_counts.append(_ngram_counts(ref_words, max_n))
        # Clip each hypothesis n-gram count by its largest count in any one reference.
        for ngram, count in _ngram_counts(hyp_words, max_n).items():
            clip = max(c.get(ngram, 0) for c in ref_counts)
            correct[len(ngram) - 1] += min(clip, count)
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


# --------------------------------------------------------------------------- COCO metrics


class _JavaToolError(RuntimeError):
    """A Java scorer could not run or gave output that could not be read."""


def _pycocoevalcap_dir(subpackage: str) -> str:
    """Directory of ``pycocoevalcap.<subpackage>`` (where its jar lies)."""
    spec = importlib.util.find_spec(f"pycocoevalcap.{subpackage}")
    if spec is None or not spec.submodule_search_locations:
        raise _JavaToolError(f"pycocoevalcap.{subpackage} is not installed")
    return next(iter(spec.submodule_search_locations))


def _stderr_tail(stderr: bytes | str, limit: int = 300) -> str:
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    text = " ".join(stderr.split())
    return text[-limit:] if text else "no message"


# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (with -lowerCase the bracket tokens come
# out as "-lrb-" and so stay in, as they do in pycocoevalcap).
_PTB_PUNCTUATION = frozenset("'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;".split())


def _ptb_tokenize(java: str, sentences: list[str]) -> list[str]:
    """Tokenize like pycocoevalcap's ``PTBTokenizer``, one output string per sentence.

    Runs the Stanford PTBTokenizer jar from the pycocoevalcap wheel with its arguments
    (``-preserveLines -lowerCase``) on a file in a private temp directory (pycocoevalcap
    writes it into site-packages), then drops the same punctuation tokens. Blank sentences
    are not sent (they map to ""), so the output lines align with the input by construction.
    """
    jar = os.path.join(_pycocoevalcap_dir("tokenizer"), "stanford-corenlp-3.4.1.jar")
    if not os.path.isfile(jar):
        raise _JavaToolError(f"the PTB tokenizer jar is missing: {jar}")
    todo = [i for i, s in enumerate(sentences) if s.strip()]
    out = [""] * len(sentences)
    if not todo:
        return out
    with tempfile.TemporaryDirectory(prefix="captionlab-ptb-") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(sentences[i] for i in todo) + "\n")
        cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer"]
        cmd += ["-preserveLines", "-lowerCase", "-encoding", "utf-8", path]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, timeout=JAVA_TIMEOUT_S, check=False, cwd=tmp
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _JavaToolError(f"the PTB tokenizer did not run: {exc}") from exc
    if proc.returncode != 0:
        raise _JavaToolError(
            f"the PTB tokenizer exited with status {proc.returncode}: {_stderr_tail(proc.stderr)}"
        )
    lines = proc.stdout.decode("utf-8", "replace").split("\n")
    if lines and not lines[-1].strip():
        lines.pop()  # after the final newline
    if len(lines) != len(todo):
        raise _JavaToolError(
            f"the PTB tokenizer returned {len(lines)} lines for {len(todo)} captions"
        )
    for i, line in zip(todo, lines, strict=True):
        out[i] = " ".join(w for w in line.split() if w not in _PTB_PUNCTUATION)
    return out


class _MeteorProcess:
    """One METEOR 1.5 process through the jar in the pycocoevalcap wheel, scoring any number
    of caption sets in turn (its start-up, loading the paraphrase table, is most of its cost).

    Speaks the same stdio protocol with the same arguments as
    ``pycocoevalcap.meteor.meteor.Meteor`` (``-l en -norm``, 2 GB heap): one ``SCORE`` line
    per image, then one ``EVAL`` line whose last answer is the corpus score of exactly those
    images (each set is scored on its own). Unlike that class, the process is always stopped
    (:meth:`close`), a watchdog kills it when one set takes over :data:`JAVA_TIMEOUT_S`,
    and its stderr goes to a temp file (no pipe to fill up).
    """

    def __init__(self, java: str) -> None:
        meteor_dir = _pycocoevalcap_dir("meteor")
        jar = os.path.join(meteor_dir, "meteor-1.5.jar")
        if not os.path.isfile(jar):
            raise _JavaToolError(f"the METEOR jar is missing: {jar}")
        # The serial collector changes no score; it halves start-up memory and time on few
        # cores (the paraphrase table loads in ~13 s on 2 busy cores, ~18 s with G1).
        cmd = [java, "-Xmx2G", "-XX:+UseSerialGC", "-jar", jar, "-", "-", "-stdio", "-l", "en",
               "-norm"]  # fmt: skip
        self._err = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                cmd, cwd=meteor_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._err,
            )  # fmt: skip
        except OSError as exc:
            self._err.close()
            raise _JavaToolError(f"METEOR did not start: {exc}") from exc
        self._timed_out = threading.Event()

    def _kill_slow(self) -> None:
        self._timed_out.set()
        self._proc.kill()

    def _ask(self, line: str) -> None:
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()

    def _answer(self) -> str:
        line = self._proc.stdout.readline().decode("utf-8", "replace").strip()
        if not line:
            if self._timed_out.is_set():
                raise _JavaToolError(f"METEOR took over {JAVA_TIMEOUT_S:.0f} s")
            raise _JavaToolError("METEOR stopped answering")
        return line

    def score(self, gts: dict, res: dict) -> float:
        """Corpus METEOR of ``res`` ({key: [caption]}) against ``gts`` ({key: [refs]});
        the process is killed when one call takes over :data:`JAVA_TIMEOUT_S`."""
        watchdog = threading.Timer(JAVA_TIMEOUT_S, self._kill_slow)
        watchdog.start()
        try:
            stats = []
            for key in gts:
                hyp = res[key][0].replace("|||", "").replace("  ", " ")
                refs = [r.replace("|||", "") for r in gts[key]]
                self._ask(" ||| ".join(["SCORE", *refs, hyp]))
                stats.append(self._answer())
            self._ask(" ||| ".join(["EVAL", *stats]))
            for _ in stats:  # per-image scores, not needed
                self._answer()
            return float(self._answer())
        except (OSError, ValueError, _JavaToolError) as exc:
            self._proc.kill()
            self._proc.wait()
            self._err.seek(0)
            tail = _stderr_tail(self._err.read())
            raise _JavaToolError(f"METEOR failed ({exc}); its stderr: {tail}") from exc
        finally:
            watchdog.cancel()

    def close(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._proc.kill()
        self._proc.wait()
        self._err.close()


# The process of the innermost open :func:`meteor_session` (None: one process per call).
_SESSION: list = [None]


@contextmanager
def meteor_session() -> Iterator[None]:
    """Inside the block, every :func:`coco_metrics` call shares one METEOR process, started
    at the first call and stopped at the end (scores are those of separate processes; the
    ~15 s start-up is paid once). Nested sessions share the outer one's process."""
    if _SESSION[0] is not None:
        yield
        return
    _SESSION[0] = False  # open, nothing started yet
    try:
        yield
    finally:
        proc, _SESSION[0] = _SESSION[0], None
        if proc:
            proc.close()


def _meteor(java: str, gts: dict, res: dict) -> float:
    """Corpus METEOR 1.5 (see :class:`_MeteorProcess`): in the open
    :func:`meteor_session`'s process, else in a process of its own."""
    if _SESSION[0] is None:
        proc = _MeteorProcess(java)
        try:
            return proc.score(gts, res)
        finally:
            proc.close()
    if _SESSION[0] is False:
        _SESSION[0] = _MeteorProcess(java)
    try:
        return _SESSION[0].score(gts, res)
    except _JavaToolError:
        _SESSION[0].close()
        _SESSION[0] = False  # a failed process is not reused
        raise


def _check_caption_dicts(
    hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> list[Hashable]:
    if not isinstance(hypotheses, Mapping) or not isinstance(references, Mapping):
        raise TypeError(
            "hypotheses and references must be dicts keyed by image, got "
            f"{type(hypotheses).__name__} and {type(references).__name__}"
        )
    if not hypotheses:
        raise ValueError("coco_metrics needs at least one hypothesis, got an empty dict")
    missing = [k for k in hypotheses if k not in references]
    extra = [k for k in references if k not in hypotheses]
    if missing or extra:
        raise ValueError(
            "hypotheses and references must have the same keys: "
            f"{len(missing)} hypothesis keys have no references (e.g. {missing[:3]}), "
            f"{len(extra)} reference keys have no hypothesis (e.g. {extra[:3]})"
        )
    for key, hyp in hypotheses.items():
        if not isinstance(hyp, str):
            raise TypeError(f"hypotheses[{key!r}] must be a str, got {type(hyp).__name__}")
        refs = references[key]
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"references[{key!r}] must be a non-empty list of str, got {refs!r}")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"references[{key!r}][{j}] must be a str, got {type(ref).__name__}")
    return list(hypotheses)


def coco_metrics(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    tokenize: bool = True,
    *,
    meteor: bool = True,
) -> dict:
    """The COCO caption metrics of generated captions, as pycocoevalcap computes them.

    Inputs:
    - hypotheses: {image key: generated caption}.
    - references: {image key: [reference caption, ...]}, the same keys, each list non-empty.
    - tokenize: run the PTB tokenizer (lower-case, punctuation dropped) as the COCO
      evaluation server does. With False the captions are taken as already tokenized
      (whitespace-separated words, used as given).
    - meteor: with False METEOR is skipped (reported unavailable); it costs ~15 s of Java
      start-up however few captions there are, paid once for all calls inside a
      :func:`meteor_session`. The tokenizer takes under a second.

    Returns ``{"BLEU-1": .., "BLEU-2": .., "BLEU-3": .., "BLEU-4": .., "METEOR": ..,
    "ROUGE-L": .., "CIDEr": .., "SPICE": None, "unavailable": {name: reason}}``, scores
    as floats in pycocoevalcap's scale (CIDEr is its CIDEr-D, up to ~10; the others in
    [0, 1]). A metric that cannot be computed is None, never 0, and ``unavailable`` says
    why: SPICE always (it needs a download); METEOR when Java is missing or fails. When the
    PTB tokenizer cannot run, ``unavailable["PTBTokenizer"]`` says so and
    :func:`simple_tokenize` is used instead, which agrees on ordinary captions.

    CIDEr's document frequencies come from the references given, so score a whole split at
    once: on one image every n-gram is in every reference and CIDEr is 0.
    """
    keys = _check_caption_dicts(hypotheses, references)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        raise ImportError(
            "coco_metrics needs pycocoevalcap (pip install pycocoevalcap==1.2)"
        ) from exc

    unavailable: dict[str, str] = {"SPICE": SPICE_REASON}
    java = shutil.which("java")
    sentences = [hypotheses[k] for k in keys] + [r for k in keys for r in references[k]]
    sentences = [" ".join(s.split()) for s in sentences]  # no newlines into line protocols
    if tokenize:
        sentences = _tokenize_for_coco(java, sentences, unavailable)
    res: dict = {}
    gts: dict = {}
    pos = len(keys)
    for i, k in enumerate(keys):
        res[k] = [sentences[i]]
        n_refs = len(references[k])
        gts[k] = sentences[pos : pos + n_refs]
        pos += n_refs

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    result: dict = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    result["METEOR"] = _meteor_or_reason(java, gts, res, meteor, unavailable)
    result["ROUGE-L"] = float(rouge)
    result["CIDEr"] = float(cider)
    result["SPICE"] = None
    result["unavailable"] = unavailable
    return result


_NO_JAVA = "Java was not found on PATH (pycocoevalcap runs it as `java`)"


def _tokenize_for_coco(java: str | None, sentences: list[str], unavailable: dict) -> list[str]:
    """The PTB tokenizer's tokens of ``sentences``, or captionlab's ``simple_tokenize`` (with
    the reason in ``unavailable["PTBTokenizer"]``) when the tokenizer cannot run."""
    if java is None:
        problem = _NO_JAVA
    else:
        try:
            return _ptb_tokenize(java, sentences)
        except _JavaToolError as exc:
            problem = str(exc)
    unavailable["PTBTokenizer"] = (
        f"{problem}; captions were tokenized by captionlab's simple_tokenize instead, "
        "so scores can differ slightly from published ones"
    )
    return [" ".join(simple_tokenize(s)) for s in sentences]


def _meteor_or_reason(
    java: str | None, gts: dict, res: dict, wanted: bool, unavailable: dict
) -> float | None:
    """METEOR of ``res`` against ``gts``, or None with the reason in ``unavailable``."""
    if not wanted:
        unavailable["METEOR"] = "skipped (meteor=False)"
    elif java is None:
        unavailable["METEOR"] = _NO_JAVA
    else:
        try:
            return _meteor(java, gts, res)
        except _JavaToolError as exc:
            unavailable["METEOR"] = str(exc)
    return None


def _format_cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def _is_scalar(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def format_metrics_table(rows: Mapping[str, Mapping]) -> str:
    """A plain-text table of several metric dicts, one row each, one column per metric.

    Inputs:
    - rows: {row name: metrics dict}, e.g. ``{"RNN greedy": coco_metrics(...),
      "LSTM beam 3": {...}}``. Any numeric or None entry becomes a column (COCO metrics
      first, in :data:`METRIC_NAMES` order, then others as first seen); nested values such
      as ``unavailable`` are not columns. None and missing entries print as ``n/a``.

    Reasons from ``unavailable`` entries are listed under the table, each once.
    """
    if not rows:
        raise ValueError("format_metrics_table needs at least one row, got none")
    columns: list[str] = [
        m for m in METRIC_NAMES if any(m in r and _is_scalar(r[m]) for r in rows.values())
    ]
    for metrics in rows.values():
        for name, value in metrics.items():
            if name not in columns and _is_scalar(value):
                columns.append(name)
    header = ["", *columns]
    body = [[str(name)] + [_format_cell(m.get(c)) for c in columns] for name, m in rows.items()]
    widths = [max(len(line[j]) for line in [header, *body]) for j in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = [render(header), "  ".join("-" * w for w in widths)]
    lines += [render(line) for line in body]
    notes: dict[str, None] = {}  # ordered set
    for metrics in rows.values():
        for name, reason in (metrics.get("unavailable") or {}).items():
            notes[f"{name} unavailable: {reason}"] = None
    lines += [f"* {note}" for note in notes]
    return "\n".join(lines)
