"""The machine a trial runs on: CPU features, TensorFlow's kernels, threads and precision.

CPUs differ from one machine to the next, so nothing here assumes a feature: it reads
``/proc/cpuinfo`` and the cores this process may use, and decides from that.

- **oneDNN.** TensorFlow 2.21 enables its oneDNN kernels by default only on CPUs with
  AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; elsewhere (e.g. AMD Zen 3, most laptops) it
  trains with slower Eigen kernels, 1.5x to 2.3x slower on our networks. The environment
  variable is read once, when TensorFlow is imported, so ``prepare_environment`` (the CLI's
  first step; ``cnnbench.prepare()``) must run before any TensorFlow import; a user's own
  setting wins, and a call that comes too late is recorded as such, not as a setting.
- **Threads.** Intra-op threads follow the cores this process may use
  (``os.sched_getaffinity``), divided among worker processes; a worker is pinned to its
  share of the cores so two workers never fight over one core.
- **Precision.** ``auto`` means bf16 mixed precision only where the CPU computes bf16
  natively (AMX or AVX512_BF16); emulated bf16 is several times slower than float32.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Set by a parent sweep for its worker processes: the cores (comma-separated) a worker may use.
CPUS_ENV = "CNNBENCH_CPUS"
# Flags that change which kernels and precisions are fast; recorded beside every speed figure.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                  "asimd", "bf16", "sve")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512_BF16; aarch64 BF16
PRECISIONS = ("auto", "float32", "mixed_bfloat16")

# How TF_ENABLE_ONEDNN_OPTS came to have its value in this process (recorded in run.json).
_onednn_origin = "unset"


def prepare_environment(environ=os.environ) -> None:
    """Before TensorFlow is imported: oneDNN on unless the user chose, and a quiet start."""
    import sys

    global _onednn_origin
    if ONEDNN_ENV in environ:
        _onednn_origin = "user" if _onednn_origin == "unset" else _onednn_origin
    elif "tensorflow" in sys.modules and environ is os.environ:  # this process read it already
        environ[ONEDNN_ENV] = "1"  # the trial processes start fresh and still get it
        _onednn_origin = "cnnbench, for trial processes only (TensorFlow was imported before cnnbench.prepare())"
    else:
        environ[ONEDNN_ENV] = "1"
        _onednn_origin = "cnnbench"
    # TensorFlow's C++ start-up chatter buries our output; errors still show.
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with the process's C-level stderr silenced.

    TensorFlow's C++ side prints start-up lines (CUDA stubs on CPU-only machines, oneDNN
    notices) through absl before its log level applies, so TF_CPP_MIN_LOG_LEVEL cannot stop
    them; users should see only cnnbench's own output. Only the import is silenced:
    a failing import still raises, and later errors print as usual.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    with silenced_stderr():
        import keras  # noqa: F401  (imports TensorFlow, its backend)
        import tensorflow  # noqa: F401


@contextmanager
def silenced_stderr():
    """File descriptor 2 pointed at /dev/null meanwhile (C-level output included); for
    imports that may bring TensorFlow in (a trainer of the user's own)."""
    import sys

    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset
    cores: int  # cores this process may run on

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in NATIVE_BF16_FLAGS)

    def describe(self) -> dict:
        return {"model": self.model, "cores": self.cores,
                "flags": [f for f in RELEVANT_FLAGS if f in self.flags], "native_bf16": self.native_bf16}


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    """The model name and feature flags of the first processor in a /proc/cpuinfo text."""
    model, flags = "unknown CPU", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model == "unknown CPU":
            model = value.strip() or model
        elif key in ("flags", "features") and not flags:  # x86 says flags, aarch64 features
            flags = frozenset(value.split())
    return CpuInfo(model, flags, cores)


@lru_cache(maxsize=1)
def cpu() -> CpuInfo:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:  # not Linux: no flags known, so nothing is assumed
        import platform
        text = f"model name: {platform.processor() or platform.machine()}\n"
    return parse_cpuinfo(text, usable_cores())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_cpus(worker: int, workers: int, cores: list[int]) -> list[int]:
    """The cores worker ``worker`` (0-based) of ``workers`` is pinned to: an even share of
    ``cores``; with more workers than cores, workers share single cores round-robin."""
    if workers <= 1:
        return list(cores)
    if workers >= len(cores):
        return [cores[worker % len(cores)]]
    share = len(cores) // workers
    start = worker * share
    end = len(cores) if worker == workers - 1 else start + share
    return list(cores[start:end])


def worker_environment(worker: int, workers: int) -> dict[str, str]:
    """Variables for worker process ``worker`` (0-based) of ``workers``: its share of cores."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return {}
    return {CPUS_ENV: ",".join(map(str, worker_cpus(worker, workers, cores)))}


def pin_from_environment(environ=os.environ) -> None:
    """A worker process started by a sweep runs on the cores its parent gave it."""
    wanted = environ.get(CPUS_ENV)
    if wanted and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in wanted.split(",")})
        cpu.cache_clear()


@dataclass(frozen=True)
class ThreadPlan:
    intra_op: int  # threads inside one op (a convolution): the cores we may use
    inter_op: int  # ops run side by side; a CNN's graph is a chain, so few help


THREADS_ENV = ("CNNBENCH_INTRA_OP_THREADS", "CNNBENCH_INTER_OP_THREADS")  # explicit overrides


def thread_plan(cores: int, environ=os.environ) -> ThreadPlan:
    """Intra-op threads = the cores we may use; inter-op 1 on 2 cores, 2 above (a CNN's
    graph is mostly a chain). make bench's thread table (results/bench/README.md) measured
    inter-op 2 at 1.07x on ref-net in bf16 on a 2-core AMD EPYC: a candidate once it is
    measured on the default network too. CNNBENCH_INTRA_OP_THREADS / _INTER_OP_ override."""
    intra, inter = (environ.get(name) for name in THREADS_ENV)
    return ThreadPlan(intra_op=int(intra) if intra else max(1, cores),
                      inter_op=int(inter) if inter else (1 if cores <= 2 else 2))


_applied: ThreadPlan | None = None


def configure_tensorflow() -> dict:
    """Apply the thread plan (once per process, before TensorFlow runs an op) and describe
    the TensorFlow runtime: oneDNN state, threads, devices. Safe to call again."""
    global _applied
    import tensorflow as tf

    if _applied is None:
        plan = thread_plan(usable_cores())
        try:
            tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op)
            tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op)
        except RuntimeError:  # TensorFlow already ran something: its threads are fixed now
            pass
        _applied = plan
    return {
        "onednn": onednn_enabled(), "onednn_setting": os.environ.get(ONEDNN_ENV, "unset"),
        "onednn_set_by": _onednn_origin,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or _applied.intra_op,
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or _applied.inter_op,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs oneDNN kernels (what TensorFlow itself decided)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def resolve_precision(requested: str, info: CpuInfo | None = None, gpus: int = 0) -> str:
    """The Keras dtype policy a trial trains with. ``auto``: bf16 only on native bf16 CPUs."""
    if requested != "auto":
        return requested
    if gpus:
        return "float32"  # GPU users choose mixed precision themselves; we don't guess their card
    return "mixed_bfloat16" if (info or cpu()).native_bf16 else "float32"


ALLOCATOR_ENV = "CNNBENCH_ALLOCATOR"  # "glibc" keeps the system allocator in trial processes
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/"
                  "libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def trial_allocator(environ=os.environ) -> str | None:
    """The malloc library trial processes preload, or None for the system's.

    With glibc's allocator every large activation of a batch-1024 step is a fresh mmap
    whose pages the kernel faults in and zeroes: on the 2-core AMD EPYC (Zen 3) cnnbench's
    trial path trained airbench94's network at 154.9 images/s with it and 177.2 with
    tcmalloc (benchmarks/allocator.py), as PyTorch's CPU guide says for its own. So trial
    processes preload tcmalloc (Debian's libtcmalloc-minimal4) where it is installed,
    unless CNNBENCH_ALLOCATOR=glibc or the user preloads something already.
    """
    if environ.get(ALLOCATOR_ENV, "").lower() == "glibc" or environ.get("LD_PRELOAD"):
        return None
    return next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)


def machine() -> dict:
    """What run.json and model cards record about where they were made: the CPU (model,
    cores, the flags that matter), TensorFlow's kernels and threads, what ``auto`` means
    here, and the allocator trial processes use."""
    tf_runtime = configure_tensorflow()
    allocator = trial_allocator()
    return {"cpu": cpu().describe(), **tf_runtime,
            "auto_precision": resolve_precision("auto", gpus=tf_runtime["gpus"]),
            "trial_allocator": f"tcmalloc ({allocator})" if allocator else
            ("LD_PRELOAD " + os.environ["LD_PRELOAD"] if os.environ.get("LD_PRELOAD") else "glibc")}
