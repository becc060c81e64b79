"""What experiment.json records about a search (raysearch.search.provenance): the git revision
and whether the checkout had uncommitted changes, read from a real git repository."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest

from raysearch.config import ExperimentConfig
from raysearch.schema import SCHEMA_VERSION
from raysearch.search import provenance as prov
from tests.conftest import python_c

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


@needs_git
def test_a_clean_checkout_is_not_dirty_and_has_its_revision(repo):
    assert prov.git_dirty(repo) is False
    assert prov.git_dirty(repo / "sub") is False  # any folder inside the checkout
    assert prov.git_revision(repo) == _git(repo, "rev-parse", "HEAD") and len(prov.git_revision(repo)) == 40


@needs_git
def test_a_changed_or_untracked_file_makes_the_checkout_dirty(repo):
    (repo / "code.py").write_text("x = 2\n")
    assert prov.git_dirty(repo) is True
    _git(repo, "commit", "-q", "-am", "second")
    assert prov.git_dirty(repo) is False
    (repo / "new.py").write_text("")
    assert prov.git_dirty(repo) is True


@needs_git
def test_outside_a_checkout_dirtiness_is_unknown(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    # a checkout above the temporary folder would answer for it
    if subprocess.run(["git", "rev-parse"], cwd=folder, capture_output=True).returncode == 0:
        pytest.skip("the temporary folder lies inside a git checkout")
    assert prov.git_dirty(folder) is None and prov.git_revision(folder) == ""


def test_without_git_dirtiness_is_unknown(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert prov.git_dirty() is None and prov.git_revision() == ""


def test_the_record_holds_config_objectives_space_versions_and_git_state():
    exp = ExperimentConfig(method="pgd_at", sets=(("lr", 0.1),))
    record = prov.provenance(exp, {"eps_train": {"type": "float", "low": 0.0, "high": 0.1}}, {"CPU": 2.0})
    assert record["schema_version"] == SCHEMA_VERSION
    assert record["config"] == dataclasses.asdict(exp) and "exp_dir" not in record["config"]
    assert record["objectives"] == ["clean_acc", "robust_acc"]
    assert record["hardware"]["cluster_resources"] == {"CPU": 2.0}
    assert record["git_dirty"] in (True, False, None) and isinstance(record["git_revision"], str)
    assert record["versions"]["torch"]
    json.dumps(record)  # plain JSON types: experiment.json holds what was recorded, not its str()


def test_library_versions_are_the_installed_ones_and_reading_them_imports_nothing():
    code = ("import sys; from raysearch.search import provenance as p; "
            "from raysearch.config import ExperimentConfig; "
            "r = p.provenance(ExperimentConfig(method='standard'), {}, {}); "
            "print([m for m in ('torchvision', 'ot', 'sklearn') if m in sys.modules]); "
            "import torchvision, ot, normflows, optuna, torch; "
            "v = r['versions']; "
            "print(v['torch'] == torch.__version__, v['ot'] == ot.__version__, "
            "v['normflows'] == normflows.__version__, "
            "v['optuna'] == optuna.__version__, torchvision.__version__.startswith(v['torchvision']))")
    out = python_c(code)
    imported, same = out.strip().splitlines()[-2:]
    assert imported == "[]"  # every search's driver starts without paying for them (seconds)
    assert same == "True True True True True"
    assert prov.library_version("no-such-distribution-here") is None
