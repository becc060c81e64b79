"""The export CLI (``python -m raysearch.export``): one-line errors with exit code 2, a warning
for a trial without final evaluation, the files it wrote."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from raysearch import store
from raysearch.export.__main__ import main
from tests.conftest import run_cli


def _exit(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        sys.exit(main(argv))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_bad_input_is_one_line_and_exit_code_2(experiment, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = ["--out", str(tmp_path / "m.pt")]
    cases = [
        (["--experiment", str(tmp_path / "missing"), "--trial", "t0", *out], "trials.parquet not found"),
        (["--experiment", str(experiment), "--trial", "nope", *out], "unknown trial 'nope'; known: t0, t1, t9"),
        (["--experiment", str(experiment), "--trial", "t9", *out],
         "trial t9 has no checkpoint to export (failed: diverged)"),
        (["--experiment", str(experiment), "--trial", "t0", "--out", str(tmp_path)], "it is a folder"),
        (["--experiment", str(experiment), "--trial", "t0", "--out", str(blocker / "m.pt")], "cannot write"),
        (["--experiment", str(experiment), "--trial", "t0", *out, "--card", str(blocker / "c.json")], "cannot write"),
        (["--experiment", str(experiment), "--trial", "t0"], "required: --out"),
    ]
    for argv, expect in cases:
        code, _, err = _exit(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (argv, err)
    assert not (tmp_path / "m.pt").exists()


def test_a_checkpoint_gone_from_disk_is_one_line(experiment, tmp_path, capsys):
    shutil.rmtree(experiment / "t1")
    code, _, err = _exit(["--experiment", str(experiment), "--trial", "t1", "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 2 and "trial t1: checkpoint" in err and "not found" in err and len(err.splitlines()) == 1


def test_a_trial_without_final_evaluation_is_exported_with_a_warning(experiment, tmp_path, capsys):
    card_path = tmp_path / "cards" / "t0.json"
    code, out, err = _exit(["--experiment", str(experiment), "--trial", "t0", "--out", str(tmp_path / "m.pt"),
                            "--card", str(card_path)], capsys)
    assert code == 0, err
    assert err.startswith("warning: trial t0 has no final evaluation") and len(err.strip().splitlines()) == 1
    assert "trial t0 (standard, small_cnn, deterministic): no final evaluation" in out
    card = json.loads(card_path.read_text())
    assert card["evaluated"] is False and card["file"]["name"] == "m.pt" and (tmp_path / "m.pt").stat().st_size > 0


def test_the_command_line_prints_the_accuracies_and_the_files(experiment, tmp_path):
    rows = store.read_rows(experiment / store.TRIALS)
    for row in rows:  # as a final evaluation records it
        row.update(final_clean_acc=0.9, final_worst_seen=0.5, final_union_unseen=0.25, masking_flags="")
    store.write_trials(experiment, rows)
    proc = run_cli("--experiment", str(experiment), "--trial", "t1", "--out", str(tmp_path / "pgd.pt"),
                   module="raysearch.export", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("trial t1 (pgd_at, small_cnn, deterministic): clean 0.900, worst seen 0.500, union unseen 0.250"
            in proc.stdout)
    assert f"card:  {tmp_path / 'pgd.pt.json'}" in proc.stdout and "deprecated" not in proc.stderr
