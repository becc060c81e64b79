"""The Ray side of a search, run by ``python -m raysearch.tune`` once its arguments are checked.

``launch.run(exp)`` connects to Ray (``cluster``), asks Optuna for trials through Ray Tune
(``searcher``, with an optional early-stopping scheduler from ``schedulers``; or evolves a
population with the ``schedulers`` MO-PBT instead of Optuna), runs each trial as
one Ray Train run of torch DDP workers (``trial``; the workers run ``raysearch.worker``), keeps the
results files current as results arrive (``recorder``), then hands the front's trials to the full
attack suite (``final``) and prints the front (``summary``). ``provenance`` is what
experiment.json records about the run.

Ray is imported only by this package, ``raysearch.worker`` and ``raysearch.ddp``; importing
``schedulers`` or ``summary`` alone does not import it, so the command line can check its
arguments without Ray. Why Ray is set up as it is: see README, 'Why Ray is configured as it is'.
"""
