"""Machine detection and the choices made from it: oneDNN, threads, worker cores, precision.
Logic only (no timings): the choices must follow the CPU flags and the cores we may use."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnnbench.training import runtime

ZEN3 = "processor: 0\nmodel name: AMD EPYC 7B13\nflags: fpu sse2 avx avx2 fma bmi2\n"
ZEN4 = "processor: 0\nmodel name: AMD EPYC 9B14\nflags: avx2 fma avx512f avx512_vnni avx512_bf16\n"
SAPPHIRE = ("processor: 0\nmodel name: Intel(R) Xeon(R) Platinum 8481C\n"
            "flags: avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\nprocessor: 1\nflags: other\n")
GRAVITON3 = "processor: 0\nFeatures: fp asimd sve bf16 i8mm\nCPU implementer: 0x41\n"


@pytest.mark.parametrize("text,model,native", [(ZEN3, "AMD EPYC 7B13", False), (ZEN4, "AMD EPYC 9B14", True),
                                               (SAPPHIRE, "Intel(R) Xeon(R) Platinum 8481C", True),
                                               (GRAVITON3, "unknown CPU", True)])
def test_cpuinfo_names_the_cpu_and_its_bf16_units(text, model, native):
    info = runtime.parse_cpuinfo(text, cores=2)
    assert info.model == model and info.native_bf16 is native
    described = info.describe()
    assert described["cores"] == 2 and described["native_bf16"] is native
    assert set(described["flags"]) <= set(runtime.RELEVANT_FLAGS)


def test_auto_precision_is_bf16_only_where_it_is_native():
    zen3, zen4 = runtime.parse_cpuinfo(ZEN3, 2), runtime.parse_cpuinfo(ZEN4, 2)
    assert runtime.resolve_precision("auto", zen3) == "float32"
    assert runtime.resolve_precision("auto", zen4) == "mixed_bfloat16"
    assert runtime.resolve_precision("auto", zen4, gpus=1) == "float32"
    for explicit in ("float32", "mixed_bfloat16"):  # an explicit choice is kept, even if slow here
        assert runtime.resolve_precision(explicit, zen3) == explicit


def test_worker_cores_are_divided_without_overlap_when_there_are_enough():
    assert runtime.worker_cpus(0, 1, [0, 1]) == [0, 1]
    assert [runtime.worker_cpus(i, 2, [0, 1]) for i in range(2)] == [[0], [1]]
    assert [runtime.worker_cpus(i, 2, [0, 1, 2, 3, 4]) for i in range(2)] == [[0, 1], [2, 3, 4]]
    assert [runtime.worker_cpus(i, 3, [0, 1]) for i in range(3)] == [[0], [1], [0]]  # oversubscribed: round robin


def test_thread_plan_follows_the_cores_and_honours_overrides():
    assert runtime.thread_plan(2, environ={}) == runtime.ThreadPlan(intra_op=2, inter_op=1)
    assert runtime.thread_plan(1, environ={}).intra_op == 1
    assert runtime.thread_plan(8, environ={}) == runtime.ThreadPlan(intra_op=8, inter_op=2)
    env = {"CNNBENCH_INTRA_OP_THREADS": "3", "CNNBENCH_INTER_OP_THREADS": "2"}
    assert runtime.thread_plan(2, environ=env) == runtime.ThreadPlan(intra_op=3, inter_op=2)


def test_onednn_is_enabled_unless_the_user_chose():
    env: dict = {}
    runtime.prepare_environment(env)
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    mine = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    runtime.prepare_environment(mine)
    assert mine["TF_ENABLE_ONEDNN_OPTS"] == "0"


def _fresh(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_prepare_turns_onednn_on_before_tensorflow_loads_and_says_when_it_came_too_late():
    code = ("import cnnbench, os; cnnbench.prepare(); from cnnbench.training import runtime; m = runtime.configure_tensorflow(); "
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], m['onednn'], m['onednn_set_by'], m['intra_op_threads'])")
    setting, enabled, origin, threads = _fresh(code).split()
    assert (setting, enabled, origin) == ("1", "True", "cnnbench")
    assert int(threads) == len(os.sched_getaffinity(0))
    # a user's own setting wins: test_onednn_is_enabled_unless_the_user_chose (no TensorFlow needed)
    assert _fresh("import cnnbench, os; print('TF_ENABLE_ONEDNN_OPTS' in os.environ)") == "False"  # import: nothing


def test_prepare_after_tensorflow_says_it_came_too_late_and_still_readies_the_trial_processes(monkeypatch):
    import sys

    import tensorflow  # noqa: F401  (this process, as a notebook that imported it first)

    assert "tensorflow" in sys.modules
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(runtime, "_onednn_origin", "unset")  # restored afterwards
    runtime.prepare_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"  # for the trial processes, which start fresh
    assert runtime._onednn_origin == ("cnnbench, for trial processes only (TensorFlow was imported before "
                                      "cnnbench.prepare())")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_worker_keeps_to_the_cores_its_parent_gave_it():
    code = ("import os; from cnnbench.training import runtime; runtime.pin_from_environment(); "
            "print(sorted(os.sched_getaffinity(0)), runtime.cpu().cores, runtime.thread_plan(runtime.cpu().cores).intra_op)")
    first = sorted(os.sched_getaffinity(0))[0]
    assert _fresh(code, CNNBENCH_CPUS=str(first)) == f"[{first}] 1 1"


def test_trial_processes_preload_tcmalloc_where_installed_unless_told_not_to(monkeypatch):
    from cnnbench.training import runtime

    monkeypatch.setattr(runtime.os.path, "exists", lambda p: p == runtime.TCMALLOC_PATHS[0])
    assert runtime.trial_allocator({}) == runtime.TCMALLOC_PATHS[0]
    assert runtime.trial_allocator({"CNNBENCH_ALLOCATOR": "glibc"}) is None
    assert runtime.trial_allocator({"LD_PRELOAD": "/opt/libjemalloc.so"}) is None  # the user's choice stands
    monkeypatch.setattr(runtime.os.path, "exists", lambda p: False)
    assert runtime.trial_allocator({}) is None
