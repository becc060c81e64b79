"""Faults during a search, each caused for real: a killed Ray Train worker, a killed driver
continued with ``--resume``, trials that diverge or raise, and a process killed while it writes
the results store."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray  # noqa: F401  (puts the psutil bundled with Ray on the path)
import psutil

from raysearch import store
from raysearch.schema import Status
from tests.conftest import ROOT, run_cli
from tests.test_search_cluster import kill_tree, rows, wait_for

# the proxy after every epoch: these tests count every epoch's rows across kills and resumes
SMALL = ("--eval-size", "60", "--eval-steps", "5", "--eval-every", "1", "--no-final-eval")


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raysearch.tune", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    return out


def study(exp_dir: Path) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """(number, state) of every Optuna trial, and each failed trial's fail_reason."""
    with sqlite3.connect(exp_dir / "optuna.db") as con:
        trials = con.execute("select number, state from trials order by number").fetchall()
        reasons = dict(con.execute(
            "select t.number, a.value_json from trial_user_attributes a join trials t using (trial_id) "
            "where a.key = 'fail_reason'").fetchall())
    return trials, {k: json.loads(v) for k, v in reasons.items()}


def assert_epochs_once(exp_dir: Path, trial_ids, epochs: int) -> None:
    keys = [(r["trial_id"], r["epoch"], r["attack"]) for r in rows(exp_dir, store.EVALS)]
    assert len(keys) == len(set(keys)), "an epoch was recorded twice"
    assert sorted(keys) == sorted((t, e, a) for t in trial_ids for e in range(1, epochs + 1)
                                  for a in ("clean", "proxy_robust"))


# ---------------------------------------------------------------- Ray Train worker failure

@pytest.mark.slow
def test_a_killed_train_worker_resumes_from_its_checkpoint(tmp_path):
    exp_dir = tmp_path / "worker-kill"
    # small batches make each epoch last seconds: the kill lands between two checkpoints
    proc = start_cli("--method", "pgd_at", "--num-samples", "1", "--max-epochs", "4", "--set", "batch_size=16",
                     "--set", "attack_steps=5", "--max-failures", "1", *SMALL,
                     "--storage-path", str(tmp_path), "--name", "worker-kill")
    try:
        wait_for("the first checkpointed epoch",
                 lambda: any((r["epochs"] or 0) >= 1 and r["status"] == Status.RUNNING for r in rows(exp_dir)), 400,
                 proc=proc)

        def train_workers():
            found = []
            for p in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(p.cmdline()):  # Ray sets the actor's class as process title
                        found.append(p)
                except psutil.NoSuchProcess:
                    pass
            return found

        victims = wait_for("the Train worker process", train_workers, 30, proc=proc)
        for p in victims:
            p.send_signal(signal.SIGKILL)
        out = finish(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert proc.returncode == 0, out[-4000:]
    (trial,) = rows(exp_dir)
    assert trial["status"] == Status.COMPLETED and trial["epochs"] == 4, out[-3000:]
    assert trial["resumed_from"] >= 1  # the new worker group started from a checkpoint, not epoch 0
    assert_epochs_once(exp_dir, [trial["trial_id"]], 4)


# ---------------------------------------------------------------- driver killed, search resumed

@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_trials(tmp_path):
    exp_dir = tmp_path / "resume"
    # two trials at a time; epochs of seconds (pgd_at, small batches) so the kill lands mid-trial
    args = ("--method", "pgd_at", "--num-samples", "3", "--max-epochs", "3", "--set", "batch_size=16",
            "--set", "attack_steps=5", "--max-concurrent", "2", *SMALL, "--storage-path", str(tmp_path),
            "--name", "resume")
    proc = start_cli(*args)
    try:
        def mid_search():
            rs = rows(exp_dir)
            done = [r for r in rs if r["status"] == Status.COMPLETED]
            running = [r for r in rs if r["status"] == Status.RUNNING and (r["epochs"] or 0) >= 1]
            return (done, running) if done and running else None

        done_before, running_before = wait_for("one trial done and another mid-way", mid_search, 500, proc=proc)
        evals_before = rows(exp_dir, store.EVALS)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    # the local Ray the CLI started goes down with it (else its workers would hold the CPUs);
    # its two agents notice the raylet's death by polling and may take longer
    names = {}
    for p in tree[1:]:
        try:
            names[p.pid] = " ".join(p.cmdline())[:60]
        except psutil.NoSuchProcess:
            pass
    agents = [p for p in tree[1:] if "Agent" in names.get(p.pid, "")]
    for p in agents:  # no need to wait for their polling
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    _, alive = psutil.wait_procs([p for p in tree[1:] if p not in agents], timeout=60)
    for p in alive:
        p.kill()
    stuck = [names.get(p.pid, str(p.pid)) for p in alive]
    assert not stuck, f"still running after the driver was killed: {stuck}"
    studied_before, _ = study(exp_dir)

    resumed = run_cli(*args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    trials = rows(exp_dir)
    ids = [r["trial_id"] for r in trials]
    assert len(ids) == len(set(ids))
    completed = [r for r in trials if r["status"] == Status.COMPLETED]
    assert len(completed) == 3 and all(r["epochs"] == 3 for r in completed), trials
    # a trial started in the moments before the kill, before Ray Tune saved it, is not run on:
    # it is marked, and another trial took its place
    lost = [r for r in trials if r["status"] != Status.COMPLETED]
    assert all(r["status"] == Status.FAILED and r["error"].startswith("interrupted") for r in lost), lost
    by_id = {r["trial_id"]: r for r in trials}
    def measured(evals, trial_id):  # what a rerun of the epochs would change (eps is NaN for clean)
        return sorted((e["epoch"], e["attack"], e["accuracy"], e["seconds"]) for e in evals
                      if e["trial_id"] == trial_id)

    for r in done_before:  # a finished trial is not trained again
        assert by_id[r["trial_id"]]["clean_acc"] == r["clean_acc"]
        assert measured(rows(exp_dir, store.EVALS), r["trial_id"]) == measured(evals_before, r["trial_id"])
    for r in running_before:  # an interrupted trial continued from its checkpoint, not from scratch:
        # the epochs recorded before the kill keep their measurements (a rerun would replace them).
        # Its training may also have ended just before the kill, before the search recorded it.
        assert by_id[r["trial_id"]]["status"] == Status.COMPLETED
        before = [m for m in measured(evals_before, r["trial_id"]) if m[0] <= r["epochs"]]
        after = [m for m in measured(rows(exp_dir, store.EVALS), r["trial_id"]) if m[0] <= r["epochs"]]
        assert before and after == before
    assert_epochs_once(exp_dir, [r["trial_id"] for r in completed], 3)

    # the Optuna study went on: the same trials keep their numbers, each is told once
    studied, reasons = study(exp_dir)
    assert [n for n, _ in studied] == list(range(len(studied)))
    for n, state in studied_before:
        if state != "RUNNING":
            assert studied[n] == (n, state)
    states = [s for _, s in studied]
    # (an Optuna trial can also be asked for and lost before its Tune trial started)
    assert states.count("COMPLETE") == 3 and states.count("FAIL") >= len(lost) and "RUNNING" not in states
    assert all(reasons[n].startswith("interrupted") for n, s in studied if s == "FAIL")


# ---------------------------------------------------------------- trials that fail

@pytest.mark.slow
def test_diverging_and_raising_trials_are_recorded_as_failed_and_the_search_goes_on(tmp_path):
    # lr=1e6 blows the loss up to NaN in the first epoch; a negative momentum passes the
    # command line's type check but torch.optim.SGD rejects it inside the worker
    nan = start_cli("--method", "standard", "--set", "lr=1e6", "--num-samples", "2", "--max-epochs", "2",
                    "--max-concurrent", "1", *SMALL, "--storage-path", str(tmp_path), "--name", "nan")
    bad = start_cli("--method", "standard", "--set", "momentum=-1.0", "--num-samples", "2", "--max-epochs", "2",
                    "--max-concurrent", "1", "--max-failures", "0", *SMALL, "--storage-path", str(tmp_path),
                    "--name", "raise")
    outs = {"nan": finish(nan), "raise": finish(bad)}
    assert nan.returncode == 0 and bad.returncode == 0, outs

    expected = {"nan": "diverged: loss term 'loss' is nan", "raise": "Invalid momentum value: -1.0"}
    for name, reason in expected.items():
        trials = rows(tmp_path / name)
        assert len(trials) == 2, outs[name][-3000:]  # the second trial ran after the first failed
        for r in trials:
            assert r["status"] == Status.FAILED and reason in r["error"], (r["error"], outs[name][-3000:])
            assert r["clean_acc"] != r["clean_acc"]  # NaN: no objective for a failed trial
            assert f"failed trial {r['trial_id']}: {r['error']}" in outs[name]
        studied, reasons = study(tmp_path / name)
        assert [s for _, s in studied] == ["FAIL", "FAIL"]
        assert all(reason in reasons[n] for n, _ in studied)


# ---------------------------------------------------------------- the results store under crashes

WRITER = """
import sys
from pathlib import Path
from raysearch import store
folder, rows_per_version, versions = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for v in range(1, versions + 1):
    store.write_trials(folder, [{"trial_id": f"t{i}", "status": "running", "epochs": v, "clean_acc": i / rows_per_version,
                                 "error": f"{v}:{i}" * 8} for i in range(rows_per_version)])
    print(v, flush=True)
"""


def _whole(path: Path, rows_per_version: int, read=None) -> int:
    """The version a trials file holds, checking it is one whole version. The default reader
    opens the file once: a reader that opens it again (for the footer, then the data) can mix
    two versions renamed in between."""
    if read is None:
        with open(path, "rb") as fh:
            table = pq.read_table(fh)
    else:
        table = read(path)
    epochs = set(table.column("epochs").to_pylist())
    assert table.num_rows == rows_per_version and len(epochs) == 1, "a mix of versions or a partial file"
    return epochs.pop()


def test_a_writer_killed_mid_write_leaves_the_previous_file_whole(tmp_path):
    n = 60_000  # rows per version: each write takes long enough to be caught in the middle
    killed_mid_write = 0
    for attempt in range(8):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(n), "1000"], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "1"  # one complete version exists
            # kill the moment the next version's temporary file appears: mid-write
            deadline = time.time() + 60
            while not any(p.name.endswith(".tmp") for p in folder.iterdir()) and time.time() < deadline:
                pass
            writer.kill()
            writer.wait()
        finally:
            if writer.poll() is None:
                writer.kill()
        finished = [int(v) for v in writer.stdout.read().split()]
        version = _whole(folder / store.TRIALS, n)
        assert version >= max(finished, default=1)
        # a torn temporary file is what writing in place would have left as trials.parquet
        killed_mid_write += any(_torn(p, n) for p in folder.iterdir() if p.name.endswith(".tmp"))
        if killed_mid_write >= 2:
            break
    assert killed_mid_write >= 2, "the writer was never caught mid-write"


def _torn(path: Path, rows_per_version: int) -> bool:
    try:
        _whole(path, rows_per_version)
    except (OSError, pa.ArrowException, AssertionError):
        return True
    return False


def _poll_during_writes(tmp_path, read=None) -> list[int]:
    n, versions = 3000, 60
    store.write_trials(tmp_path, [{"trial_id": f"t{i}", "epochs": 0, "status": "running"} for i in range(n)])
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(n), str(versions)], cwd=ROOT,
                              stdout=subprocess.DEVNULL)
    seen = []
    try:
        while writer.poll() is None:
            seen.append(_whole(tmp_path / store.TRIALS, n, read))  # raises on a partial or mixed file
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0
    assert _whole(tmp_path / store.TRIALS, n) == versions
    assert len(set(seen)) >= 5, "the reads did not overlap the writes"
    assert seen == sorted(seen)  # versions only move forward
    return seen


def test_a_reader_polling_during_writes_never_sees_a_partial_file(tmp_path):
    _poll_during_writes(tmp_path)


def test_the_store_reader_polling_during_writes_never_sees_a_partial_file(tmp_path):
    _poll_during_writes(tmp_path, lambda path: pa.Table.from_pylist(store.read_rows(path)))


# ---------------------------------------------------------------- what --resume reconciles

def _searcher(db: Path):
    import optuna

    from raysearch.search import searcher

    space = {"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}
    return searcher.Searcher(space=space, metric=list(searcher.OBJECTIVES), mode=["max", "max"],
                             sampler=optuna.samplers.RandomSampler(seed=0),
                             storage=optuna.storages.RDBStorage(f"sqlite:///{db}"), study_name="s")


def test_resume_fails_optuna_trials_the_saved_search_state_does_not_know(tmp_path):
    import optuna

    done = {"clean_acc": 0.9, "robust_acc": 0.4, "status": Status.COMPLETED}
    db, state = tmp_path / "optuna.db", tmp_path / "searcher.pkl"
    searcher = _searcher(db)
    for trial_id in "abc":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", done)
    searcher.save(str(state))  # Ray Tune saves the search state every 10 s or so
    searcher.on_trial_complete("b", done)  # finished after the last save
    searcher.suggest("d")  # asked after the last save; then the driver is killed

    restored = _searcher(db)
    restored.restore(str(state))
    State = optuna.trial.TrialState

    def states():
        return [t.state for t in sorted(restored._ot_study.get_trials(), key=lambda t: t.number)]

    assert states() == [State.COMPLETE, State.COMPLETE, State.RUNNING, State.FAIL]
    assert restored._ot_study.get_trials()[3].user_attrs["fail_reason"].startswith("interrupted")
    # Ray Tune reruns b and c (saved as running): b's repeated ending changes nothing, c is told once
    restored.on_trial_complete("b", {"status": Status.FAILED, "error": "a late duplicate"})
    restored.on_trial_complete("c", {"clean_acc": float("nan"), "robust_acc": 0.1, "status": Status.FAILED,
                                     "error": "diverged: x"})
    assert states() == [State.COMPLETE, State.COMPLETE, State.FAIL, State.FAIL]
    assert restored._ot_study.get_trials()[2].user_attrs["fail_reason"] == "diverged: x"
    assert "fail_reason" not in restored._ot_study.get_trials()[1].user_attrs


def test_resume_marks_stored_trials_the_restored_search_will_not_run(tmp_path):
    from types import SimpleNamespace

    from raysearch.config import ExperimentConfig
    from raysearch.search import recorder

    store.write_trials(tmp_path, [{"trial_id": "kept", "status": Status.RUNNING, "epochs": 1},
                                  {"trial_id": "done", "status": Status.COMPLETED, "epochs": 3},
                                  {"trial_id": "unsaved", "status": Status.RUNNING, "epochs": 0}])
    callback = recorder.StoreCallback(ExperimentConfig(method="standard", resume=True), tmp_path)
    restored = [SimpleNamespace(trial_id="kept"), SimpleNamespace(trial_id="done")]
    callback.on_step_begin(0, restored)
    callback.on_step_begin(1, [])  # once only: later steps change nothing
    status = {r["trial_id"]: (r["status"], r["error"]) for r in store.read_rows(tmp_path / store.TRIALS)}
    assert status["kept"] == (Status.RUNNING, None) and status["done"] == (Status.COMPLETED, None)
    assert status["unsaved"][0] == Status.FAILED and status["unsaved"][1].startswith("interrupted")


def test_resume_records_each_epoch_once_including_one_in_flight_at_the_kill(tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from raysearch.config import ExperimentConfig
    from raysearch.search import recorder

    exp = ExperimentConfig(method="standard", eval_steps=5, num_samples=1)
    trial = SimpleNamespace(trial_id="t", config={"lr": 0.05})
    first = recorder.StoreCallback(exp, tmp_path)
    first.on_trial_start(0, [trial], trial)
    epoch1 = {"epoch": 1, "clean_acc": 0.5, "robust_acc": 0.1, "eval_n": 60, "eval_s": 0.1}
    first.on_trial_result(0, [trial], trial, epoch1)
    # the driver dies; epoch 2 was checkpointed but its result never reached the store
    second = recorder.StoreCallback(replace(exp, resume=True), tmp_path)
    second.on_step_begin(0, [trial])
    history = [epoch1, {**epoch1, "epoch": 2, "clean_acc": 0.7}]
    second.on_trial_result(1, [trial], trial, {"final": True, "status": Status.COMPLETED, "epoch": 2, "clean_acc": 0.7,
                                               "robust_acc": 0.1, "wall_s": 1.0, "history_json": json.dumps(history)})
    evals = store.read_rows(tmp_path / store.EVALS)
    assert sorted((r["epoch"], r["attack"], r["accuracy"]) for r in evals) == [
        (1, "clean", 0.5), (1, "proxy_robust", 0.1), (2, "clean", 0.7), (2, "proxy_robust", 0.1)]
    (row,) = store.read_rows(tmp_path / store.TRIALS)
    assert row["status"] == Status.COMPLETED and row["epochs"] == 2
