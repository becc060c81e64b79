"""How a MO-PBT clone takes over its parent's training state (run by the Train workers).

The parent's checkpoint brings its networks, its optimizers' buffers (momentum) and its
learning-rate schedules' positions, but also the parent's hyperparameters, which the optimizer
keeps in its parameter groups: loaded as they are, they would undo the clone's perturbation. So
the clone keeps the parent's state and its own hyperparameters: every parameter-group setting
is taken from the clone's freshly built optimizer, and the current learning rate is the
parent's scaled by the ratio of the two base rates (a schedule's current rate is proportional
to its base rate, so the clone continues the same schedule at its own scale).
"""
from __future__ import annotations

from typing import Any

from raysearch import trial_io

RATE = "lr"
BASE_RATES = ("initial_lr", "lr")  # the base rate a schedule set, else the optimizer's rate


def restore_clone(state: dict[str, Any], nets: dict, opts: dict, scheds: dict) -> int:
    """Load the parent's ``state`` into the clone's live objects, keeping the clone's
    hyperparameters; returns the epoch the state was saved after."""
    own = {k: [dict(g) for g in o.param_groups] for k, o in opts.items()}
    own_steps = {k: s.total_steps for k, s in scheds.items() if hasattr(s, "total_steps")}
    epoch = trial_io.restore(state, nets, opts, scheds)
    for k, steps in own_steps.items():  # a schedule over a different number of steps (batch size):
        s = scheds[k]  # the same fraction of it done
        s.last_epoch = round(s.last_epoch * steps / s.total_steps)
        s.total_steps = steps
    for k, o in opts.items():
        for group, mine in zip(o.param_groups, own[k]):
            parent_base = next((group[b] for b in BASE_RATES if b in group), None)
            own_base = next((mine[b] for b in BASE_RATES if b in mine), None)
            rate = group[RATE] * own_base / parent_base if parent_base else mine[RATE]
            group.update({key: value for key, value in mine.items() if key != "params"})
            group[RATE] = rate
    for k, s in scheds.items():
        if hasattr(s, "base_lrs"):  # schedules that keep their own copy of the base rates
            s.base_lrs = [g.get("initial_lr", g[RATE]) for g in opts[k].param_groups]
    return epoch
