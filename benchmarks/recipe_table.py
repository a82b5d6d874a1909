#!/usr/bin/env python3
"""The recipe issue's side-by-side table, from the files the runs left (nothing is retyped).

    .venv/bin/python benchmarks/recipe_table.py docs/measured/airbench94-amx

FOLDER holds ``peer-seed<N>.json`` (``make bench-recipe SEEDS=N``, the PyTorch peer) and
``cnnbench-seed<N>/`` (a ``make sweep SPACE=search_spaces/airbench94.yaml`` study's
run.json and model_card.json), and optionally ``ablate-<name>/`` studies (the same space
with one ``--set``). Prints a Markdown table per seed (peer, cnnbench, the gap), the means
and spreads over the seeds both sides have, and the ablation rows against cnnbench's mean.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def peer(path: Path) -> dict:
    report = json.loads(path.read_text())
    [run] = report["runs"] if "runs" in report else [report]
    return {"acc": run["test_accuracy_tta2"], "mirror": run["test_accuracy_tta1"], "none": run["test_accuracy_tta0"],
            "train_s": run["train_seconds"], "images_per_s": run["images_per_s"], "steps": run.get("steps")}


def cnnbench(folder: Path) -> dict:
    card = json.loads((folder / "model_card.json").read_text())
    final = card["final"]
    return {"acc": card["test"]["accuracy"], "train_s": final["train_seconds"], "images_per_s": final["images_per_s"],
            "set": json.loads((folder / "run.json").read_text()).get("set") or [],
            "precision": final.get("precision")}


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(folder: Path) -> None:
    seeds = sorted(int(p.stem.removeprefix("peer-seed")) for p in folder.glob("peer-seed*.json"))
    print("| seed | side | test acc (6 views) | training s | images/s |")
    print("|---|---|---|---|---|")
    pairs = []
    for seed in seeds:
        p = peer(folder / f"peer-seed{seed}.json")
        print(f"| {seed} | PyTorch peer | {p['acc']:.4f} | {p['train_s']:.1f} | {p['images_per_s']:.1f} |")
        ours = folder / f"cnnbench-seed{seed}"
        if (ours / "model_card.json").exists():
            c = cnnbench(ours)
            pairs.append((p, c))
            print(f"| {seed} | cnnbench | {c['acc']:.4f} | {c['train_s']:.1f} | {c['images_per_s']:.1f} |")
            print(f"| {seed} | gap | {100 * (c['acc'] - p['acc']):+.2f} points | {c['train_s'] / p['train_s']:.3f}x | |")
    if pairs:
        print(f"\nSeeds with both sides: {len(pairs)}. Test accuracy: peer {spread([p['acc'] for p, _ in pairs])}, "
              f"cnnbench {spread([c['acc'] for _, c in pairs])} (mean ± sample standard deviation); "
              f"gap {100 * statistics.mean(c['acc'] - p['acc'] for p, c in pairs):+.2f} points. Training time "
              f"ratio: median {statistics.median(c['train_s'] / p['train_s'] for p, c in pairs):.3f}x.")
        tta = [(p["none"], p["mirror"], p["acc"]) for p, _ in pairs]
        print("Peer's test-time augmentation (same weights): none "
              f"{statistics.mean(t[0] for t in tta):.4f}, mirror {statistics.mean(t[1] for t in tta):.4f}, "
              f"six views {statistics.mean(t[2] for t in tta):.4f}.")
    ablations = sorted(folder.glob("ablate-*"))
    if ablations and pairs:
        mean = statistics.mean(c["acc"] for _, c in pairs)
        time_ = statistics.mean(c["train_s"] for _, c in pairs)
        # the same seed with every ingredient: the paired comparison (one seed; noise about 0.1 point)
        seed0 = cnnbench(folder / "cnnbench-seed0") if (folder / "cnnbench-seed0" / "model_card.json").exists() else None
        print("\n| ablation (seed 0) | --set | test acc | vs cnnbench seed 0 | vs cnnbench's mean | training s |")
        print("|---|---|---|---|---|---|")
        for study in ablations:
            if (study / "model_card.json").exists():
                a = cnnbench(study)
                paired = f"{100 * (a['acc'] - seed0['acc']):+.2f} points" if seed0 else ""
                print(f"| {study.name.removeprefix('ablate-')} | `{' '.join(a['set'])}` | {a['acc']:.4f} | {paired} | "
                      f"{100 * (a['acc'] - mean):+.2f} points | {a['train_s']:.1f} ({a['train_s'] / time_:.2f}x) |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/measured/airbench94-amx"))
