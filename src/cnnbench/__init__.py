"""cnnbench: hyperparameter search and benchmarking for CNNs on CIFAR-10.

Importing the package prepares the process for TensorFlow (oneDNN kernels on unless the user
chose otherwise, a quiet start) before anything can import TensorFlow: see ``runtime``.
"""
from cnnbench import runtime as _runtime

_runtime.prepare_environment()
