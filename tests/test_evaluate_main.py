"""The final evaluation's CLI (``python -m raysearch.evaluate``): one-line errors with exit
code 2, tables and fronts on stdout, results in evals.parquet."""
from __future__ import annotations

import subprocess
import sys

import pytest

from raysearch import store
from raysearch.evaluate.__main__ import main
from tests.conftest import ROOT


def test_cli_bad_input(experiment, tmp_path, capsys):
    for args, expect in [(["--experiment", str(tmp_path / "missing")], "not found"),
                         (["--experiment", str(experiment), "--attacks", "nope"], "unknown attack"),
                         (["--experiment", str(experiment), "--trials", "nope"], "unknown trial"),
                         (["--experiment", str(experiment), "--subset", "x"], "invalid int"),
                         (["--experiment", str(experiment), "--eot", "0"], "eot must be"),
                         (["--experiment", str(experiment), "--final-candidates", "best"],
                          "--final-candidates must be front, band, all or a whole number K >= 1, got 'best'"),
                         (["--experiment", str(experiment), "--final-candidates", "0"], "--final-candidates must be"),
                         (["--experiment", str(experiment), "--final-candidates", "2.5"], "--final-candidates must be"),
                         (["--experiment", str(experiment), "--trials", "t1", "--only-trials", "--final-candidates",
                           "front"], "drop --final-candidates")]:
        with pytest.raises(SystemExit) as exc:
            sys.exit(main(args))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (args, err)


def test_cli(experiment):
    p = subprocess.run([sys.executable, "-m", "raysearch.evaluate", "--experiment", str(experiment),
                        "--trials", "t1", "--only-trials", "--subset", "40", "--attacks", "fgsm", "jpeg",
                        "contrast_s5", "--device", "cpu", "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert "trial t1" in p.stdout and "worst_seen" in p.stdout and "masking flags" in p.stdout
    assert "front" in p.stdout
    rows = store.read_rows(experiment / store.EVALS)
    assert {r["attack"] for r in rows if r["stage"] == "final"} >= {"clean", "fgsm", "jpeg", "contrast_s5"}


def test_cli_eps_list(experiment, capsys):
    """--eps-list: each radius in (0, 1], else one line and exit 2; with it the report has a
    robustness curve per trial and evals.parquet rows per radius."""
    for values, expect in [(["0"], "must be in (0, 1]"), (["0.1", "1.5"], "must be in (0, 1]"),
                           (["nan"], "must be in (0, 1]"), (["-0.1"], "must be in (0, 1]"),
                           (["wide"], "invalid float value"), ([], "expected at least one argument")]:
        with pytest.raises(SystemExit) as exc:
            sys.exit(main(["--experiment", str(experiment), "--eps-list", *values]))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (values, err)
    code = main(["--experiment", str(experiment), "--trials", "t1", "--only-trials", "--subset", "40",
                 "--attacks", "fgsm", "--device", "cpu", "--eps-list", "0.3", "0.1", "0.2"])
    out = capsys.readouterr().out
    assert code == 0 and "robustness curve (worst case over seen attacks):" in out
    assert "0.2   " in out.split("robustness curve")[1] and "(eps_eval)" in out
    curve = {r["attack"]: r["eps"] for r in store.read_rows(experiment / store.EVALS) if "@" in r["attack"]}
    assert curve == {"fgsm@0.1": 0.1, "worst_seen@0.1": 0.1, "fgsm@0.3": 0.3, "worst_seen@0.3": 0.3}


def test_cli_final_candidates(experiment, capsys):
    """--final-candidates K: the K best trials by non-dominated sorting, said on stderr."""
    code = main(["--experiment", str(experiment), "--final-candidates", "1", "--subset", "40", "--attacks", "fgsm",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 candidate(s): the 1 best by non-dominated sorting of the proxy accuracies" in captured.err
    assert "\n1 trial(s), 40 test images" in captured.out
