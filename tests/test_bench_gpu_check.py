"""bench/gpu_check.py runs where only PyTorch, torchvision, normflows and POT are installed: in
a subprocess where Ray, Optuna, pyarrow, pandas, scikit-learn and Streamlit cannot be imported,
its quick CPU mode trains all seven methods, runs the final suite on the four seed defenses
and prints gpu_throughput's table."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainables import REGISTRY

ROOT = Path(__file__).resolve().parents[1]

ABSENT = ("ray", "optuna", "pyarrow", "pandas", "sklearn", "streamlit")
# an entry of None in sys.modules makes `import name` raise ModuleNotFoundError
RUN = ("import runpy, sys\n"
       f"for name in {ABSENT!r}:\n"
       "    sys.modules[name] = None\n"
       "sys.argv = ['gpu_check.py', '--quick', '--device', 'cpu']\n"
       "runpy.run_path('bench/gpu_check.py', run_name='__main__')\n")


def test_the_blocked_modules_are_really_unimportable():
    proc = subprocess.run([sys.executable, "-c", RUN.split("sys.argv")[0] + "import ray\n"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "import of ray halted" in proc.stderr


@pytest.mark.slow
def test_quick_cpu_run_without_ray_covers_every_method():
    proc = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "ray imported: False" in out and "FAILED" not in out
    training = out.split("\ntraining")[1].split("\nfinal suite")[0]
    suite = out.split("\nfinal suite")[1].split("gpu_throughput:")[0]
    for method in REGISTRY:  # a row of numbers per method: images/s, peak MB ("-" on CPU), GFLOP/img
        assert re.search(rf"^  {method} +[\d.]+ +- +[\d.]+ ", training, re.M), (method, training)
    for method in ("atop", "ijsat", "rvs", "atld"):
        assert re.search(rf"^  {method} +[\d.]+ +- +[\d.]+ +\d+ ", suite, re.M), (method, suite)
    assert "gpu_throughput: PGD-10 AT step" in out and "--bf16 --channels-last" in out
    assert "every method trained and every suite ran" in out
