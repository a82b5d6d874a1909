"""cnnbench: hyperparameter search and benchmarking for CNNs on CIFAR-10.

The flow: a space file (``space``) -> an engine (``engines``: Optuna or KerasTuner) picks
configurations -> each trains in a child process (``isolation`` -> ``train`` -> ``model``) and
leaves a record (``trials``) -> the best configuration is trained once more on all training
images (``final``) -> the model is tested once and exported (``export``) -> leaderboards,
pictures and a report page (``results``, ``report``, ``plots``, ``pages``); ``sweep`` runs
that flow, ``cli`` and ``api`` (below) are its doors.

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
