"""The best trial, evaluated once on the test split and exported with its model card."""
from __future__ import annotations

import errno
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np

from cnnbench.training.data import DataBundle
from cnnbench.reports.results import atomic_write, json_text
from cnnbench.trials import NO_TRIAL, StudyPaths, TrialRecord, State
from cnnbench.files import atomic_copy, temporary_name
from cnnbench.provenance import ModelCard, RunInfo


def evaluate(model, x: np.ndarray, y: np.ndarray, class_names) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true class, columns: predicted)."""
    predicted = model.predict(x, batch_size=512, verbose=0).argmax(axis=1)
    k = len(class_names)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, predicted), 1)
    seen = confusion.sum(axis=1)
    per_class = confusion.diagonal() / np.maximum(seen, 1)
    # a class with no images has no accuracy (None), not 0.0
    return {"images": int(len(y)), "accuracy": float((predicted == y).mean()),
            "per_class_accuracy": {n: (round(float(a), 4) if count else None)
                                   for n, a, count in zip(class_names, per_class, seen)},
            "confusion_matrix": confusion.tolist()}


def best_record(records: list[TrialRecord], paths: StudyPaths) -> TrialRecord | None:
    """The completed trial with the best validation accuracy whose model file exists, among
    those at the largest data fidelity (train_images)."""
    from cnnbench.trials import top_fidelity

    done = [r for r in top_fidelity(records) if paths.trial_model(r.trial).exists()]
    return max(done, key=lambda r: (r.val_accuracy, -r.trial), default=None)


class ExportError(ValueError):
    """The trial asked for cannot be exported; the message says why."""


def chosen_record(records: list[TrialRecord], paths: StudyPaths, trial: int) -> TrialRecord:
    """Trial ``trial``, which must have completed and kept its model."""
    found = next((r for r in records if r.trial == trial), None)
    if found is None:
        raise ExportError(f"{paths.root}: no trial {trial} (trials: {', '.join(str(r.trial) for r in records)})")
    if found.state != State.COMPLETE or not paths.trial_model(trial).exists():
        raise ExportError(f"{paths.root}: trial {trial} is {found.state}; only a completed trial has a model")
    return found


def load_or_set_aside(source: Path):
    """(model, None), or (None, one line) for a model file that cannot be loaded (torn by a
    kill while it was written, cut short by a full disk): it is renamed ``*.damaged`` (kept,
    never deleted) so that no later run stumbles on it again."""
    import keras

    try:
        return keras.models.load_model(source, compile=False), None
    except Exception as error:
        if _whole_zip(source):  # not damage (another Keras, a missing layer): say it, touch nothing
            raise
        aside = source.with_name(source.name + ".damaged")
        source.replace(aside)
        return None, (f"{source}: cannot be loaded ({type(error).__name__}: {str(error)[:120]}); "
                      f"set aside as {aside.name}")


def _whole_zip(path: Path) -> bool:
    """Whether ``path`` is a complete zip archive (a .keras file is one) with intact members."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def export_best(records: list[TrialRecord], paths: StudyPaths, data: DataBundle, run: RunInfo | dict,
                trial: int | None = None, final=None, say=_stderr, quantize: tuple[str, ...] = ()
                ) -> ModelCard | None:
    """Evaluate the best trial (or ``trial``, e.g. a point of a Pareto front) on the test
    split once; write best/model.keras, best/saved_model/, model.onnx and model.tflite (and
    the quantized LiteRT files ``quantize`` names), each checked against model.keras
    (``cnnbench.deploy``), and the model card.

    A model file that does not load is set aside (``load_or_set_aside``) and said through
    ``say``: the next best trial is exported instead (a damaged final model: the best trial's
    own, and the next run trains the final again); a trial chosen by hand raises ExportError.

    ``final`` (a ``final.FinalOutcome``) that completed replaces the trial's model with the
    final training's (same configuration, all training images); the card keeps the search
    trial's validation figures and says what the final training was in ``final``.
    """
    chosen = _loadable_choice(records, paths, trial, final)
    for line in chosen.set_aside:
        say(line)
    if chosen.model is None:
        return None
    test = evaluate(chosen.model, data.x_test, data.y_test, data.class_names)
    source, model = chosen.source, chosen.model
    assert source is not None  # set with the model
    paths.best.mkdir(parents=True, exist_ok=True)
    atomic_copy(source, paths.best / "model.keras")
    save_saved_model(model, paths.best / "saved_model")
    runtimes = deployment_files(model, paths.best, data, quantize, say)
    card = model_card(chosen, final, trial, test, data, run if isinstance(run, RunInfo) else RunInfo.from_dict(run),
                      runtimes)
    atomic_write(paths.best / "model_card.json", json_text(card.to_dict()))
    atomic_write(paths.best / "model_card.md", card_markdown(card))
    return card


def deployment_files(model, folder: Path, data: DataBundle, quantize: tuple[str, ...], say=_stderr,
                     keep_existing: bool = False) -> dict:
    """The model card's ``runtimes`` block (``cnnbench.deploy.verify``), each file's line said;
    anything unforeseen in the converters or the check is said too, and leaves the export
    as model.keras and the SavedModel."""
    from cnnbench.deploy.verify import deploy_and_check, summary_lines

    try:
        runtimes = deploy_and_check(model, folder, data.x_test, data.y_test, data.x_train, quantize, keep_existing)
    except Exception as error:  # the deployment files are extras: model.keras is the export
        say(f"{folder}: no ONNX or LiteRT files ({type(error).__name__}: {str(error)[:200]})")
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    for line in summary_lines(runtimes):
        say(f"{folder}/{line}")
    return runtimes


@dataclass
class _Choice:
    """What is exported: the best (or chosen) trial's record, whether the final training's
    model stands in for its own, the file and the model loaded from it."""
    best: TrialRecord | None
    use_final: bool
    source: Path | None = None
    model: Any = None
    set_aside: list[str] = field(default_factory=list)  # one line per damaged file set aside
    final_set_aside: bool = False                        # the final training's own model was one


def _loadable_choice(records, paths: StudyPaths, trial: int | None, final) -> _Choice:
    set_aside: list[str] = []
    final_aside = False
    while True:  # a damaged model file is set aside and the next best one chosen
        best = chosen_record(records, paths, trial) if trial is not None else best_record(records, paths)
        use_final = trial is None and final is not None and final.complete and paths.final_model.exists()
        if best is None and not use_final:
            return _Choice(None, False, set_aside=set_aside, final_set_aside=final_aside)
        if use_final:
            source = paths.final_model
        else:
            assert best is not None  # one of the two, by the test above
            source = paths.trial_model(best.trial)
        model, problem = load_or_set_aside(source)
        if model is not None:
            return _Choice(best, use_final, source, model, set_aside, final_aside)
        set_aside.append(problem)
        final_aside = final_aside or use_final
        if trial is not None:
            raise ExportError(problem)


def model_card(chosen: _Choice, final, trial: int | None, test: dict, data: DataBundle, run: RunInfo,
               runtimes: dict | None = None) -> ModelCard:
    """model_card.json: what the model is, how it was chosen and trained, its test figures,
    and the provenance of the study it came from."""
    best, use_final, set_aside = chosen.best, chosen.use_final, chosen.set_aside
    trained = final.record if use_final else best
    assert trained is not None  # the final training's record, or the best trial's
    validation = None if best is None else {
        "accuracy": best.val_accuracy, "loss": best.val_loss, "best_epoch": best.best_epoch,
        "images": int(len(data.y_val))}
    size = int(data.x_train.shape[1])
    return ModelCard(
        study=run.study or None, engine=trained.engine, trial=None if best is None else best.trial,
        classes=list(data.class_names),
        input=f"uint8 RGB images of any size, shape (batch, height, width, 3); resized to {size}x{size} inside "
              "the model",
        image_size=size, output="class probabilities (softmax) in the order of 'classes'",
        hyperparameters=trained.values, config=trained.config, validation=validation, test=test,
        parameter_count=trained.parameter_count, flops_per_image=trained.flops, latency_ms=trained.latency_ms,
        chosen=("by hand (cnnbench export --trial)" if trial is not None else
                (final.source or "the space's only configuration") if best is None else "best validation accuracy"),
        training={"epochs_run": trained.epochs_run, "train_seconds": trained.train_seconds,
                  "images_per_s": trained.images_per_s, "train_images": trained.train_images or int(len(data.y_train)),
                  "seed": trained.seed, "precision": trained.precision, "history": trained.history},
        final=final_block(final) if use_final else None,
        final_note=(f"{set_aside[0]}; exported the best trial's own model; the next run trains the final again"
                    if chosen.final_set_aside else final.message if final is not None else None),
        data={"source": data.source, "fingerprint": data.fingerprint},
        space_file=run.space_file, space_hash=run.space_hash, space=run.space, seed=run.seed, versions=run.versions,
        git_revision=run.git_revision, command=run.command, trainer=run.trainer, machine=run.machine,
        runtimes=runtimes or {}, extra={})


def final_block(outcome) -> dict:
    """The model card's ``final`` entry, from a ``final.FinalOutcome``."""
    r = outcome.record
    return {"train_images": r.train_images, "from_trial": None if r.trial == NO_TRIAL else r.trial,
            "seed": r.seed, "train_seconds": r.train_seconds, "epochs_run": r.epochs_run,
            "images_per_s": r.images_per_s, "precision": r.precision, "history": r.history}


def save_saved_model(model, folder: Path) -> None:
    """The same model as a TensorFlow SavedModel (Keras' ``export``), for TF Serving and
    TFLite: its ``serve`` signature takes uint8 images, like model.keras."""
    import keras
    import tensorflow as tf

    tmp = temporary_name(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    # An explicit endpoint: ``model.export`` would keep the functional model's list of one
    # input, so serving would need ``serve([images])`` instead of ``serve(images)``.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda images: model(images, training=False),
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")])
    archive.write_out(str(tmp), verbose=False)
    swap_in(tmp, folder)


def swap_in(tmp: Path, folder: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``folder``. Another sweep of the same
    study may export at the same moment and put its own folder there between the removal
    and the rename: then try again, and after a few tries let the other one stand."""
    for _ in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.replace(folder)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    shutil.rmtree(tmp, ignore_errors=True)


def card_markdown(card: ModelCard) -> str:
    from cnnbench.deploy.verify import runtimes_markdown

    names, test, training = card.classes, card.test, card.training
    validation, final = card.validation, card.final
    lines = [
        f"# Model card: {card.study} (trial {card.trial}, {card.engine})", "",
        f"- Chosen: {card.chosen}",
        f"- Test accuracy: **{test['accuracy']:.4f}** on {test['images']} images "
        f"({card.data.get('source')}, fingerprint {card.data.get('fingerprint')})",
        (f"- Validation accuracy (the search trial): {validation['accuracy']:.4f} (best epoch "
         f"{validation['best_epoch']})" if validation else "- Validation accuracy: none (nothing was searched)"),
        (f"- Final training: the configuration trained once more on all {final['train_images']:,} training "
         f"images, seed {final['seed']}, {final['train_seconds']} s; this is the exported model"
         if final else f"- Final training: none ({card.final_note or 'off'}); the exported model is the "
                       "search trial's own"),
        f"- Parameters: {card.parameter_count:,}; FLOPs per image: {card.flops_per_image:,}; CPU latency: "
        f"{card.latency_ms} ms per image (batch of 64, where it trained)",
        f"- Training: {training['epochs_run']} epochs, {training['train_seconds']} s, "
        f"{training['images_per_s']} images/s on {training['train_images']} images",
        f"- Space: `{card.space_file}` (hash {card.space_hash}), seed {card.seed}, code {card.git_revision}",
        f"- Made by: `{card.command}`",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in (card.versions or {}).items()),
        f"- Trained on: {_machine_line(card.machine)}, precision {training.get('precision')}",
        "", "Load it anywhere with plain Keras: `keras.models.load_model(\"model.keras\")`; it takes uint8 RGB. "
        "The same model as a TensorFlow SavedModel is in `saved_model/` (`tf.saved_model.load`, signature `serve`). "
        f"`model.onnx` (onnxruntime) and `model.tflite` (LiteRT) take uint8 RGB at {card.image_size}x{card.image_size} "
        "(resize first, as `cnnbench predict` does) and need no TensorFlow.",
        *runtimes_markdown(card.runtimes),
        "", "## Hyperparameters", "", "| knob | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in card.config.items()],
        "", "## Per-class test accuracy", "", "| class | accuracy |", "|---|---|",
        *[f"| {k} | {v:.4f} |" if v is not None else f"| {k} | (no images) |"
          for k, v in test["per_class_accuracy"].items()],
        "", "## Confusion matrix (rows: true class, columns: predicted)", "",
        "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
        *[f"| {n} | " + " | ".join(map(str, row)) + " |" for n, row in zip(names, test["confusion_matrix"])],
    ]
    return "\n".join(lines) + "\n"


def _machine_line(machine: dict | None) -> str:
    if not machine:
        return "unknown machine"
    cpu = machine.get("cpu", {})
    return (f"{cpu.get('model')} ({cpu.get('cores')} cores; {' '.join(cpu.get('flags', []))}), oneDNN "
            f"{'on' if machine.get('onednn') else 'off'}, {machine.get('intra_op_threads')} intra-op threads")

