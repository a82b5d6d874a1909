#!/usr/bin/env python3
"""``make bench``: what users run, timed beside what they could run instead.

Side by side, in one run, rounds interleaved so machine noise hits every arm alike:

- ``cnnbench``: cnnbench's own trial path, ``train.train_and_evaluate`` on a synthetic
  data bundle (random images), exactly as a sweep trains a trial;
- ``keras-fit``: plain Keras ``fit`` of the same network built from the same config with
  the built-in layers (what a hand-written Keras script does; the harness overhead);
- ``pytorch``: the PyTorch peer ``../shared/bench/torch_peer.py`` on its own venv
  (``.venv-peer``, which ``make bench`` creates with torch==2.13.0 when it is missing).

The network is ref-net (3 stages x 2 convs 3x3 + BN + ReLU, max pool, global average
pool, dense 10; Adam 1e-3; batch 128): cnnbench's knob defaults. Each arm runs in a fresh
process, warms up on one pass, then times one pass; images/s are wall time of the timed
pass. fp32 always; bf16 only where the CPU computes it natively (else a line says why).

Also the per-trial fixed cost (process start + imports, model build, first-epoch tracing)
and its share of a one-epoch trial of the default space's first configuration; the cost of
training each trial in a child process (``isolation.py``) against training it in-process;
a real 30-trial smoke sweep's resident memory after its 1st and 30th trial; what each
thread setting gives (``threads.py``: intra/inter-op threads, workers pinned to cores); and
what a per-epoch checkpoint and op determinism cost (``resume_costs.py``).

Results: ``results/bench/<cpu>-<date>.json`` and a table in ``results/bench/README.md``.

    make bench                                   # 5 rounds of 8,192 images
    make bench BENCH_ARGS="--rounds 3 --images 4096"
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cnnbench  # noqa: E402

cnnbench.prepare()  # oneDNN and a quiet start, before TensorFlow loads
from cnnbench import provenance  # noqa: E402
from cnnbench.training import runtime  # noqa: E402

PEER = ROOT.parent / "shared" / "bench" / "torch_peer.py"
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
OUT = ROOT / "results" / "bench"
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}
# A trial child is replaced when its memory has grown by isolation.RECYCLE_MB; on smoke
# trials that is every ~20 trials, so its start-up is shared by about that many.
RECYCLE_EVERY = 20


def _in_fresh_process(function: str, *args) -> dict:
    """Run ``arms.<function>(*args)`` in a new Python process; its last stdout line is JSON."""
    code = f"import arms, json; print(json.dumps(arms.{function}(*{args!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{function}{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peer(precision: str, images: int, batch: int) -> dict:
    out = subprocess.run([str(PEER_PYTHON), str(PEER), "--precision", precision, "--images", str(images),
                          "--batch", str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput_table(rounds: int, images: int, batch: int) -> tuple[list[dict], list[str]]:
    cpu = runtime.cpu()
    precisions = ["fp32"] + (["bf16"] if cpu.native_bf16 else [])
    notes = [] if cpu.native_bf16 else [
        f"bf16 skipped: this CPU ({cpu.model}) has none of {', '.join(runtime.NATIVE_BF16_FLAGS)}, "
        "so bf16 would be emulated (several times slower than fp32)"]
    if not PEER_PYTHON.exists():
        notes.append("PyTorch peer skipped: .venv-peer is missing (make bench creates it)")
    runs: dict[str, list[float]] = {}
    for _ in range(rounds):
        for precision in precisions:
            policy = PRECISIONS[precision]
            arms = [(f"cnnbench {precision}", lambda: _in_fresh_process("cnnbench_trial", policy, images, batch)),
                    (f"keras-fit {precision}", lambda: _in_fresh_process("keras_fit", policy, images, batch))]
            if PEER_PYTHON.exists():
                arms.append((f"pytorch {precision}", lambda: _peer(precision, images, batch)))
            for name, measure in arms:
                runs.setdefault(name, []).append(measure()["images_per_s"])
    rows = []
    for name, values in runs.items():
        arm, precision = name.split()
        rows.append({"run": name, "arm": arm, "precision": precision,
                     "images_per_s": round(statistics.median(values), 1), "rounds": [round(v, 1) for v in values]})
    for row in rows:
        peer = next((r for r in rows if r["arm"] == "pytorch" and r["precision"] == row["precision"]), None)
        fit = next((r for r in rows if r["arm"] == "keras-fit" and r["precision"] == row["precision"]), None)
        row["vs_pytorch"] = round(row["images_per_s"] / peer["images_per_s"], 2) if peer else None
        row["vs_keras_fit"] = round(row["images_per_s"] / fit["images_per_s"], 2) if fit else None
    return rows, notes


def fixed_cost() -> dict:
    """Seconds a trial pays before its first useful step, and their share of one epoch.

    A trial builds its model and traces its first epoch; the trial process's start and
    imports are paid once per trial child, which trains about RECYCLE_EVERY trials."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cnnbench.training.train, keras, tensorflow"], check=True,
                   capture_output=True)
    imports = time.perf_counter() - started
    measured = _in_fresh_process("default_trial_costs")
    per_trial = measured["build_seconds"] + measured["tracing_seconds"] + imports / RECYCLE_EVERY
    return {"process_and_imports_s": round(imports, 2), **measured,
            "fixed_seconds": round(per_trial, 2),
            "share_of_one_epoch_trial": round(per_trial / (per_trial + measured["epoch_seconds"]), 4)}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_results(report: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{slug(report['cpu']['model'])}-{report['date']}.json"
    runs = 1
    while path.exists():  # a second run the same day keeps the first one's figures
        runs += 1
        path = OUT / f"{slug(report['cpu']['model'])}-{report['date']}-{runs}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"## {report['cpu']['model']}, {report['cpu']['cores']} cores, {report['date']}", "",
             f"`{report['command']}`; CPU flags: {' '.join(report['cpu']['flags'])}; oneDNN "
             f"{'on' if report['tensorflow']['onednn'] else 'off'}; intra-op threads "
             f"{report['tensorflow']['intra_op_threads']}, inter-op {report['tensorflow']['inter_op_threads']}; "
             f"code {report['git_revision']}; {report['images']} images, batch {report['batch']}, medians of "
             f"{report['rounds']} interleaved rounds. Raw: `{path.relative_to(ROOT)}`.", "",
             "| run | images/s | rounds | vs PyTorch | vs plain Keras fit |", "|---|---|---|---|---|"]
    for r in report["throughput"]:
        lines.append(f"| {r['run']} | {r['images_per_s']} | {', '.join(map(str, r['rounds']))} | "
                     f"{r['vs_pytorch'] or '-'} | {r['vs_keras_fit'] or '-'} |")
    lines += [f"- {n}" for n in report["notes"]]
    fc = report["fixed_cost"]
    lines += ["", f"Per-trial fixed cost ({fc['network']}): model build {fc['build_seconds']} s, first-epoch "
              f"tracing {fc['tracing_seconds']} s, and a {RECYCLE_EVERY}th of the trial process's start and imports "
              f"({fc['process_and_imports_s']} s per trial child); "
              f"{fc['fixed_seconds']} s in all, {fc['share_of_one_epoch_trial']:.1%} of a one-epoch trial "
              f"({fc['epoch_seconds']} s of training on {fc['train_images']:,} images)."]
    th = report["threads"]
    lines += ["", f"Thread settings (`benchmarks/threads.py`): cnnbench's trial path on ref-net, {th['precision']}, "
              f"{th['images']} images, medians of {th['rounds']} interleaved rounds; workers' images/s added up.", "",
              "| setting | images/s | rounds | vs cnnbench's plan |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['images_per_s']} | {', '.join(map(str, r['rounds']))} | {r['vs_cnnbench_plan']} |"
              for r in th["rows"]]
    pb, mem = report["process_boundary"], report["memory"]
    lines += ["", f"Each trial in its own child process: {pb['boundary_per_trial_s']} s per trial on top of training "
              f"in-process, plus {pb['child_start_s']} s each time a child starts (about every {RECYCLE_EVERY} "
              f"trials): {pb['share_of_one_epoch_trial']:.2%} of a one-epoch default trial.",
              "", f"Resident memory of a real {mem['trials']}-trial smoke sweep (sweep + trial child): "
              f"{mem['rss_after_first_mb']} MB after trial 1, {mem['rss_after_last_mb']} MB after trial {mem['trials']} "
              f"(growth {mem['growth_mb']} MB; peak {mem['peak_mb']} MB).", ""]
    lines += resume_lines(report["resume_costs"])
    readme = OUT / "README.md"
    header = ("# make bench\n\nEach section is one `make bench` run (newest first), written by "
              "`benchmarks/run.py`; the JSON beside it holds every figure. See the script's docstring for "
              "what each arm runs.\n\n")
    old = readme.read_text().split("\n## ", 1)[1] if readme.exists() and "\n## " in readme.read_text() else ""
    readme.write_text(header + "\n".join(lines) + ("\n## " + old if old else ""))
    return path


def resume_lines(costs: dict) -> list[str]:
    """The section's paragraph on what resuming costs (``resume_costs.py``)."""
    ck, det = costs["checkpoint"], costs["determinism"]
    return [f"Resuming (`benchmarks/resume_costs.py`, {costs['network']}, {ck['precision']}): a per-epoch checkpoint "
            f"({ck['checkpoint_mb']} MB) takes {ck['checkpoint_seconds']} s to write, {ck['share_of_an_epoch']:.2%} "
            f"of a 50,000-image epoch ({ck['epoch_seconds_50k']} s at {ck['images_per_s']} images/s); op "
            f"determinism trains at {det['deterministic_vs_default']}x the images/s of the default "
            f"({det['images_per_s']['deterministic']} against {det['images_per_s']['default']}, medians of "
            f"{len(det['rounds']['default'])} interleaved rounds).", ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--thread-rounds", type=int, default=3, help="rounds of the thread settings (4,096 images each)")
    a = p.parse_args()
    rows, notes = throughput_table(a.rounds, a.images, a.batch)
    report = {"date": time.strftime("%Y-%m-%d"), "command": "make bench " + " ".join(sys.argv[1:]),
              "cpu": runtime.cpu().describe(), "tensorflow": runtime.configure_tensorflow(),
              "versions": provenance.versions(), "git_revision": provenance.git_revision(),
              "images": a.images, "batch": a.batch, "rounds": a.rounds, "net": "ref-net-w32",
              "throughput": rows, "notes": notes, "fixed_cost": fixed_cost()}
    boundary = _in_fresh_process("process_boundary")
    epoch = report["fixed_cost"]["epoch_seconds"]
    report["process_boundary"] = {**boundary, "share_of_one_epoch_trial": round(
        (boundary["boundary_per_trial_s"] + boundary["child_start_s"] / RECYCLE_EVERY) / epoch, 4)}
    from memory import sweep_memory
    from threads import thread_settings

    from resume_costs import resume_costs

    report["threads"] = thread_settings(a.thread_rounds, 4096, a.batch)
    report["memory"] = sweep_memory()
    report["resume_costs"] = resume_costs(a.thread_rounds)
    path = write_results(report)
    print(f"CPU: {report['cpu']['model']} ({report['cpu']['cores']} cores; {' '.join(report['cpu']['flags'])})")
    for r in rows:
        print(f"  {r['run']:<16} {r['images_per_s']:>8.1f} images/s  rounds {r['rounds']}  "
              f"vs pytorch {r['vs_pytorch'] or '-'}  vs keras-fit {r['vs_keras_fit'] or '-'}")
    for n in notes:
        print(f"  {n}")
    fc = report["fixed_cost"]
    print(f"  per-trial fixed cost {fc['fixed_seconds']} s = {fc['share_of_one_epoch_trial']:.1%} of a one-epoch "
          f"trial of the default space")
    pb, mem = report["process_boundary"], report["memory"]
    print(f"  child process per trial: {pb['share_of_one_epoch_trial']:.2%} of a one-epoch default trial; "
          f"memory after 1 / {mem['trials']} smoke trials: {mem['rss_after_first_mb']} / {mem['rss_after_last_mb']} MB")
    for r in report["threads"]["rows"]:
        print(f"  threads {r['setting']:<36} {r['images_per_s']:>8.1f} images/s  x{r['vs_cnnbench_plan']}")
    ck, det = report["resume_costs"]["checkpoint"], report["resume_costs"]["determinism"]
    print(f"  checkpoint {ck['checkpoint_seconds']} s ({ck['checkpoint_mb']} MB) = {ck['share_of_an_epoch']:.2%} of a "
          f"50,000-image epoch; deterministic x{det['deterministic_vs_default']} images/s")
    print(f"written: {path} and {OUT / 'README.md'}")


if __name__ == "__main__":
    main()
