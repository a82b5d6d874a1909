"""cnnbench: hyperparameter search and benchmarking for CNNs on CIFAR-10.

The flow, and the layout that follows it (each layer imports only from the ones before it;
tests/test_layout.py keeps it so): the records (``files``, ``provenance``, ``knobs``,
``trials``) -> ``model/`` (config -> keras.Model, counted on paper) -> ``space/`` (a space file
-> a validated Space) -> ``training/`` (the data, the trainer, the trial child process) ->
``forecast`` and ``deadline`` (an hour is an hour) -> ``engines/`` (Optuna or KerasTuner choose the
configurations; ``engines.trial.run_trial`` runs each one) beside ``reports/`` (leaderboards,
pictures, the report page, the export and its model card, predict) -> ``final`` (the best
configuration once more on all training images) -> the glue: ``request`` (validation),
``sweep`` (one sweep end to end), ``commands``/``results_commands``/``cli`` and ``api`` (its doors),
``benchmarking/``.

Importing the package changes nothing in the process. ``cnnbench.prepare()`` readies it for
TensorFlow (oneDNN kernels on unless the user chose otherwise, a quiet start); the
``cnnbench`` command and ``cnnbench.sweep`` call it, a notebook may call it before it imports
TensorFlow itself (after that it is too late, and run.json says so): see ``runtime``.

The Python API (``cnnbench.api``): ``load_space``, ``sweep``, ``load_study``, ``studies``.
"""
from cnnbench.training import runtime as _runtime

_API = ("Study", "load_space", "load_study", "studies", "sweep")


def prepare() -> None:
    """Prepare this process for TensorFlow as the CLI does (oneDNN on unless set; quiet),
    before TensorFlow is imported."""
    _runtime.prepare_environment()


def __getattr__(name: str):
    if name in _API:  # loaded on first use: ``import cnnbench`` stays light
        from cnnbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnbench' has no attribute {name!r}")
