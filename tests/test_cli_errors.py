"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing written."""
import pytest

from raysearch import tune
from tests.conftest import run_cli

CASES = [
    (["--method", "nope"], "known: standard"),
    (["--method", "pgd_at", "--dataset", "mnist"], "unknown dataset"),
    (["--method", "pgd_at", "--arch", "vgg"], "unknown architecture"),
    (["--method", "pgd_at", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["--method", "pgd_at", "--num-samples", "many"], "invalid int value"),
    (["--method", "pgd_at", "--eps-eval", "-0.1"], "--eps-eval"),
    (["--method", "pgd_at", "--set", "eps_train=-0.1"], "must not be negative"),
    (["--method", "pgd_at", "--set", "eps_train"], "key=value"),
    (["--method", "pgd_at", "--set", "eps_train='big'"], "expected float"),
    (["--method", "pgd_at", "--set", "beta=3"], "has no such field"),
    (["--method", "pgd_at", "--sampler", "cmaes"], "unknown sampler"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(c[0][2:]) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    # in-process through the real entry point; the subprocess path is covered below
    try:
        code = tune.main([*args, "--storage-path", str(tmp_path / "r")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "r").exists()


def test_a_subprocess_sees_the_same_single_line(tmp_path):
    proc = run_cli("--method", "nope", timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_missing_dataset_offline_says_where_to_put_it(tmp_path):
    proc = run_cli("--method", "pgd_at", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "--download" in line and str(tmp_path / "none") in line


def test_existing_name_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "keep.txt").write_text("x")
    assert tune.main(["--method", "pgd_at", "--storage-path", str(tmp_path), "--name", "exp"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "exp" / "keep.txt").read_text() == "x"
    assert tune.main(["--method", "pgd_at", "--storage-path", str(tmp_path), "--name", "other", "--resume"]) == 2
    assert "no experiment" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_asked_on_a_cluster_without_gpus_fails_at_once(tmp_path):
    proc = run_cli("--method", "pgd_at", "--gpus-per-worker", "1", "--storage-path", str(tmp_path), timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "no GPUs" in err[0], proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for a search that cannot start"
