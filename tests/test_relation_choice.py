"""relation_choice: the teacher-forced relation question, on a fake model that answers by rule."""

import numpy as np
import pytest

from captionlab.captioning.generate import DecodeState
from captionlab.data.shapes import REL_WORDS
from captionlab.errors import UserError
from captionlab.runs.evaluate import relation_choice

WORDS = ["<NULL>", "<START>", "<END>", "a", "and", "small", "large", "red", "blue", "green",
         "circle", "square", "star", *sorted({w for fs in REL_WORDS.values() for f in fs
                                              for w in f.split()})]  # fmt: skip


class Favouring:
    """Scores +bonus for the words of one relation's forms: ``features[n]`` names it
    (an index into REL_WORDS), so each image can favour its own relation."""

    def __init__(self, bonus=12.0, words=WORDS):
        self.word_to_idx = {w: i for i, w in enumerate(words)}
        self.bonus = bonus

    def decode_start(self, features, max_length=30):
        return DecodeState(rows={"fav": np.asarray(features).astype(int)})

    def decode_step(self, words, state):
        names = list(REL_WORDS)
        scores = np.zeros((len(words), len(self.word_to_idx)))
        for n, f in enumerate(state.rows["fav"]):
            for form in REL_WORDS[names[f]]:
                for w in form.split():
                    if w not in ("of", "the", "on", "to"):  # words all forms share
                        scores[n, self.word_to_idx[w]] = self.bonus
        return scores, state, None


def obj(size, colour, shape):
    return {"size": size, "colour": colour, "shape": shape}


def rel(i, r, j):
    return {"subject": i, "relation": r, "object": j}


SCENES = [
    {"objects": [obj("small", "red", "circle")], "relations": []},
    {"objects": [obj("small", "red", "circle"), obj("large", "blue", "square")],
     "relations": [rel(0, "left of", 1), rel(1, "right of", 0)]},
    {"objects": [obj("small", "red", "circle"), obj("large", "blue", "square"),
                 obj("small", "green", "star")],
     "relations": [rel(0, "above", 1), rel(1, "below", 0), rel(0, "left of", 2),
                   rel(0, "above", 2), rel(2, "right of", 0), rel(2, "below", 0),
                   rel(1, "left of", 2), rel(2, "right of", 1)]},
]  # fmt: skip


def test_relation_choice_counts_questions_and_answers():
    model = Favouring()
    names = list(REL_WORDS)
    above = np.array([names.index("above")] * 3)
    out = relation_choice(model, above, SCENES)
    # questions: scene 1: (0,1) (1,0); scene 2: (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    assert out["n_relation_choices"] == 8
    # "above" holds for (0,1) and (0,2) of scene 2 only
    assert out["relation_choice_2"] == 0.0
    assert out["relation_choice_3"] == pytest.approx(2 / 6)
    assert out["relation_choice"] == pytest.approx(2 / 8)
    below = relation_choice(model, np.array([names.index("below")] * 3), SCENES)
    assert below["relation_choice_3"] == pytest.approx(2 / 6)  # (1,0) and (2,0)


def test_relation_choice_sums_a_relations_forms():
    # with no bonus every word costs log V, so one-word forms win, and "below" has three
    # of them ("below", "under", "beneath") against two for "above": every answer is below
    model = Favouring(bonus=0.0)
    out = relation_choice(model, np.zeros(3, int), SCENES)
    assert out["relation_choice_2"] == 0.0
    assert out["relation_choice_3"] == pytest.approx(2 / 6)  # below holds for (1,0), (2,0)
    assert out["n_relation_choices"] == 8


def test_relation_choice_without_questions_and_with_a_foreign_vocabulary():
    out = relation_choice(Favouring(), np.zeros(1, int), SCENES[:1])
    assert out == {"relation_choice": None, "relation_choice_2": None,
                   "relation_choice_3": None, "n_relation_choices": 0}  # fmt: skip
    with pytest.raises(UserError, match="vocabulary lacks"):
        relation_choice(Favouring(words=WORDS[:12]), np.zeros(3, int), SCENES)
