"""Exporting a trained trial: ``python -m raysearch.export --experiment DIR --trial ID --out FILE``
writes the trial's deployed predictor as one TorchScript file that maps [0, 1] images
N×C×H×W float32 to logits and loads with ``torch.jit.load`` alone (no part of this project),
and a JSON card beside it (``FILE.json``): hyperparameters, threat model, the final
evaluation's accuracies with n and 95% Wilson intervals, masking flags.

Modules (this package imports none of them):

* ``scriptable`` — a predictor as a TorchScript module (scripted, traced, or a scriptable twin
  of atop's random purification and atld's test-time step), checked against the original;
* ``card`` — the JSON card;
* ``trial`` — one trial end to end (``export_trial``);
* ``__main__`` — the CLI.
"""
