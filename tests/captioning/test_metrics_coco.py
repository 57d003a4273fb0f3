"""coco_metrics (pycocoevalcap + Java), its Java-missing path, format_metrics_table, re-exports.

Only one test starts METEOR (~15 s of Java start-up); the rest skip it or hide Java.
"""

import os
import stat
import sys
import types

import pytest

from captionlab.captioning import metrics
from captionlab.captioning.metrics import coco_metrics, format_metrics_table

REFS = {
    1: ["A dog runs on the grass.", "a brown dog running in a field"],
    2: ["Two red squares above a blue circle.", "two red squares are above one blue circle"],
    3: ["a man riding a bike down the street", "A person rides a bicycle on a road."],
    4: ["a cat sleeping on a couch", "A cat is asleep on the sofa; it doesn't move."],
    "x": ["a T-shirt hanging on a line", 'laundry, hanging... "outside"'],
}
HYPS = {
    1: "a dog running on the grass",
    2: "two red squares above a blue circle",
    3: "A man riding a horse!",
    4: "a cat on a sofa",
    "x": "a shirt on a line",
}
# pycocoevalcap 1.2's own pipeline on HYPS/REFS (its PTBTokenizer, then Bleu(4), Meteor,
# Rouge, Cider), computed once with its classes and pinned here.
EXPECTED = {
    "BLEU-1": 0.7767168567165762,
    "BLEU-2": 0.6929718849589215,
    "BLEU-3": 0.585620425784065,
    "BLEU-4": 0.5041742704051857,
    "METEOR": 0.413021761290784,
    "ROUGE-L": 0.77104348175972,
    "CIDEr": 2.8550620874765222,
}
JAVA = pytest.mark.skipif(metrics.shutil.which("java") is None, reason="needs Java")


def _child_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                pids.add(int(entry))
    return pids


def _hide_java(monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert metrics.shutil.which("java") is None


@JAVA
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc for child processes")
def test_coco_metrics_equal_pycocoevalcap_and_leave_nothing_behind():
    jar_dirs = [metrics._pycocoevalcap_dir(p) for p in ("tokenizer", "meteor")]
    before = {d: sorted(os.listdir(d)) for d in jar_dirs}
    result = coco_metrics(HYPS, REFS)
    for name, value in EXPECTED.items():
        assert result[name] == pytest.approx(value, rel=1e-9), name
    assert result["SPICE"] is None
    assert set(result["unavailable"]) == {"SPICE"}
    assert "download" in result["unavailable"]["SPICE"]
    assert _child_pids() == set()  # METEOR's JVM was stopped
    assert {d: sorted(os.listdir(d)) for d in jar_dirs} == before  # no temp files there


@JAVA
def test_ptb_tokenizer_runs_without_meteor_and_splits_like_ptb():
    # Upper case and punctuation vanish only if tokenized; the clitic split ("does n't") and
    # the dropped quotes/ellipsis come from the PTB tokenizer.
    hyps = {"a": "A cat is asleep on the sofa; it doesn't move.", "b": 'Laundry, "outside"...'}
    refs = {"a": ["a cat is asleep on the sofa it does n't move"], "b": ["laundry outside"]}
    result = coco_metrics(hyps, refs, meteor=False)
    assert result["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert result["ROUGE-L"] == pytest.approx(1.0)
    assert result["METEOR"] is None
    assert result["unavailable"]["METEOR"] == "skipped (meteor=False)"
    assert "PTBTokenizer" not in result["unavailable"]
    raw = coco_metrics(hyps, refs, tokenize=False, meteor=False)
    assert raw["BLEU-1"] < 0.8  # "A", "sofa;", "doesn't" ... do not match


def test_without_java_the_rest_is_still_computed(monkeypatch, tmp_path):
    _hide_java(monkeypatch, tmp_path)
    result = coco_metrics(HYPS, REFS)
    # simple_tokenize agrees with PTB on these captions, so only METEOR is lost.
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert result[name] == pytest.approx(EXPECTED[name], rel=1e-9), name
    assert result["METEOR"] is None and result["SPICE"] is None
    reasons = result["unavailable"]
    assert set(reasons) == {"METEOR", "PTBTokenizer", "SPICE"}
    assert "Java was not found" in reasons["METEOR"]
    assert "simple_tokenize" in reasons["PTBTokenizer"]


def test_a_failing_java_is_reported_not_raised(monkeypatch, tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    java = fake_bin / "java"
    java.write_text("#!/bin/sh\necho 'Error: broken JVM for the test' >&2\nexit 3\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake_bin))
    result = coco_metrics(HYPS, REFS)
    assert result["BLEU-4"] == pytest.approx(EXPECTED["BLEU-4"], rel=1e-9)
    assert result["METEOR"] is None
    assert "status 3" in result["unavailable"]["PTBTokenizer"]
    assert "broken JVM for the test" in result["unavailable"]["PTBTokenizer"]
    assert "broken JVM for the test" in result["unavailable"]["METEOR"]


def test_identical_captions_give_bleu_one_and_high_cider(monkeypatch, tmp_path):
    _hide_java(monkeypatch, tmp_path)
    same = coco_metrics({k: v[0] for k, v in REFS.items()}, REFS)
    for n in range(1, 5):
        assert same[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-8)
    assert same["ROUGE-L"] == pytest.approx(1.0)
    assert same["CIDEr"] > 4.0 > EXPECTED["CIDEr"]


def test_rouge_bleu_and_cider_by_hand_on_pretokenized_input():
    # One image. LCS("a b c d", "a c d e") = 3: P = R = 3/4, so ROUGE-L = 3/4.
    # 1-grams match 3 of 4, 2-grams only "c d" of 3: BLEU-2 = sqrt(3/4 * 1/3) = 1/2.
    result = coco_metrics({0: "a b c d"}, {0: ["a c d e"]}, tokenize=False, meteor=False)
    assert result["ROUGE-L"] == pytest.approx(0.75)
    assert result["BLEU-1"] == pytest.approx(0.75, rel=1e-8)
    assert result["BLEU-2"] == pytest.approx(0.5, rel=1e-8)
    # CIDEr's idf comes from the references given: on one image every n-gram has df = N,
    # so CIDEr is 0 even for a perfect caption. Score whole splits.
    assert coco_metrics({0: "a b"}, {0: ["a b"]}, tokenize=False, meteor=False)["CIDEr"] == 0


@pytest.mark.parametrize(
    ("hyps", "refs", "error", "message"),
    [
        ({}, {}, ValueError, "at least one hypothesis"),
        ({1: "a"}, {2: ["a"]}, ValueError, "same keys: 1 hypothesis keys have no references"),
        ({1: "a"}, {1: []}, ValueError, r"references\[1\] must be a non-empty list"),
        ({1: "a"}, {1: "a dog"}, ValueError, r"references\[1\] must be a non-empty list"),
        ({1: ["a"]}, {1: ["a"]}, TypeError, r"hypotheses\[1\] must be a str, got list"),
        ({1: "a"}, {1: ["a", 3]}, TypeError, r"references\[1\]\[1\] must be a str, got int"),
        (["a"], [["a"]], TypeError, "must be dicts keyed by image, got list and list"),
    ],
)
def test_coco_metrics_rejects_bad_inputs(hyps, refs, error, message):
    with pytest.raises(error, match=message):
        coco_metrics(hyps, refs, meteor=False)


def test_format_metrics_table_lines_up_metrics_and_lists_reasons():
    rows = {
        "RNN greedy": {"BLEU-4": 0.41234, "CIDEr": 1.5, "METEOR": None, "object_f1": 0.9},
        "LSTM beam 3": {
            "BLEU-4": 0.5,
            "CIDEr": 2.25,
            "METEOR": 0.3,
            "n_images": 500,
            "unavailable": {"SPICE": "needs a download"},
        },
    }
    table = format_metrics_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["BLEU-4", "METEOR", "CIDEr", "object_f1", "n_images"]
    assert lines[2].split() == ["RNN", "greedy", "0.412", "n/a", "1.500", "0.900", "n/a"]
    assert lines[3].split() == ["LSTM", "beam", "3", "0.500", "0.300", "2.250", "n/a", "500"]
    assert lines[4] == "* SPICE unavailable: needs a download"
    assert len(lines) == 5
    # Right-aligned numbers: every column ends at the same offset in every row.
    assert len({len(line) for line in lines[:4]}) == 1
    with pytest.raises(ValueError, match="at least one row"):
        format_metrics_table({})


def test_scene_accuracy_is_reexported_lazily(monkeypatch):
    name = "captionlab.captioning.scene_accuracy"
    fake = types.ModuleType(name)
    fake.scene_accuracy = lambda parsed, scenes, per_image=False: ("called", parsed, per_image)
    monkeypatch.setitem(sys.modules, name, fake)
    assert metrics.scene_accuracy([1], [2], per_image=True) == ("called", [1], True)
    monkeypatch.setitem(sys.modules, name, None)  # as if the module were absent
    with pytest.raises(ImportError, match="scene_accuracy needs the module"):
        metrics.scene_accuracy([], [])


@pytest.mark.slow
@JAVA
def test_meteor_driver_equals_pycocoevalcap_meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {k: [" ".join(metrics.simple_tokenize(r)) for r in v] for k, v in REFS.items()}
    res = {k: [" ".join(metrics.simple_tokenize(v))] for k, v in HYPS.items()}
    reference = Meteor()
    try:
        expected, _ = reference.compute_score(gts, res)
    finally:
        del reference
    got = metrics._meteor(metrics.shutil.which("java"), gts, res)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
@JAVA
def test_meteor_session_scores_each_set_as_its_own_process_would(monkeypatch):
    """Two caption sets in one session: one Java process, each set's own corpus score."""
    gts = {k: [" ".join(metrics.simple_tokenize(r)) for r in v] for k, v in REFS.items()}
    res = {k: [" ".join(metrics.simple_tokenize(v))] for k, v in HYPS.items()}
    worse = {k: ["a " + v[0]] for k, v in list(res.items())[:2]}
    java = metrics.shutil.which("java")
    alone = [
        metrics._meteor(java, gts, res),
        metrics._meteor(java, dict(list(gts.items())[:2]), worse),
    ]
    started = []
    real = metrics._MeteorProcess
    monkeypatch.setattr(metrics, "_MeteorProcess", lambda j: started.append(j) or real(j))
    with metrics.meteor_session():
        with metrics.meteor_session():  # nested: the outer session's process
            first = metrics._meteor(java, gts, res)
        second = metrics._meteor(java, dict(list(gts.items())[:2]), worse)
    assert len(started) == 1
    assert [first, second] == pytest.approx(alone, rel=1e-12) and alone[1] != alone[0]
    assert metrics._SESSION[0] is None  # closed


@pytest.mark.parametrize("java", [True, False])
def test_empty_and_punctuation_only_hypotheses_score_low_not_fail(java, monkeypatch, tmp_path):
    if not java:
        _hide_java(monkeypatch, tmp_path)
    elif metrics.shutil.which("java") is None:
        pytest.skip("needs Java")
    hyps = {**HYPS, 1: "", 2: "..."}
    result = coco_metrics(hyps, REFS, meteor=False)
    assert ("PTBTokenizer" in result["unavailable"]) is not java
    assert 0 < result["BLEU-1"] < EXPECTED["BLEU-1"]
    assert 0 < result["CIDEr"] < EXPECTED["CIDEr"]
    assert 0 < result["ROUGE-L"] < EXPECTED["ROUGE-L"]
