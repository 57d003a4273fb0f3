"""``captionlab gradcheck``: a table, exit 0 when all pass, 1 when a backward is wrong."""

import json

from captionlab import cli, nn


def test_gradcheck_passes_and_prints_a_table(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "rel. error" in out and "FAIL" not in out
    lines = [line for line in out.splitlines() if line.startswith("lstm ")]
    assert {line.split()[1] for line in lines} == {"x", "h0", "Wx", "Wh", "b"}
    assert all(line.split()[-1] == "pass" for line in lines)


def test_gradcheck_fails_with_a_wrong_backward(monkeypatch, capsys):
    real = nn.gru.gru_step_backward

    def wrong(dnext_h, cache):
        grads = list(real(dnext_h, cache))
        grads[5] = 2 * grads[5]  # dbh off by a factor of two
        return tuple(grads)

    monkeypatch.setattr(nn.gru, "gru_step_backward", wrong)
    assert cli.main(["gradcheck", "--layer", "gru_step", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["exit_status"] == 1 and summary["failed"] == 1
    (bad,) = [r for r in summary["results"] if not r["passed"]]
    assert (bad["layer"], bad["parameter"]) == ("gru_step", "bh")


def test_gradcheck_rejects_an_unknown_layer(capsys):
    assert cli.main(["gradcheck", "--layer", "transformer"]) == 2
    err = capsys.readouterr().err
    assert "--layer must be one of" in err and "transformer" in err
