"""Run deployment files where they will run: a fresh process that cannot import TensorFlow.

``python -m cnnbench.deploy.check REFERENCE.npz FILE [FILE ...]`` prints one JSON object per
file (a list): how its outputs on the reference images compare with ``model.keras``'s, its
accuracy on them, its size and its CPU latency at batch 1 and 64. ``REFERENCE.npz`` holds
``images`` (uint8, the training size), ``labels`` and ``reference`` (model.keras's
probabilities for those images). TensorFlow and Keras are refused before anything is
imported, so a file that only works beside TensorFlow fails here instead of on a phone.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REFUSED = ("tensorflow", "keras", "tf_keras")
LATENCY_BATCHES = (1, 64)


def refuse_tensorflow() -> None:
    """After this, ``import tensorflow`` (or keras) raises ImportError in this process."""
    for name in REFUSED:
        sys.modules[name] = None  # type: ignore[assignment]


def compare(path: Path, images, labels, reference) -> dict:
    import numpy as np

    from cnnbench.deploy.runtimes import latency_ms, open_runner, runtime_of

    out: dict = {"file": path.name, "runtime": runtime_of(path), "size_bytes": path.stat().st_size}
    try:
        runner = open_runner(path)
        if runner.image_size != images.shape[1]:
            raise ValueError(f"takes {runner.image_size}x{runner.image_size} images, the model's are "
                             f"{images.shape[1]}x{images.shape[2]}")
        probabilities = runner.predict(images, batch_size=64)
    except Exception as error:  # a file that does not load or run: its failure, said in one line
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        return {**out, "error": f"{type(error).__name__}: {reason}"}
    predicted = probabilities.argmax(axis=1)
    out.update(images=int(len(images)),
               agreement=round(float((predicted == reference.argmax(axis=1)).mean()), 6),
               max_prob_diff=float(np.abs(probabilities - reference).max()),
               accuracy=round(float((predicted == labels).mean()), 6),
               latency_ms={f"batch_{b}": latency_ms(runner, images, b) for b in LATENCY_BATCHES},
               threads=_threads())
    return out


def _threads() -> int:
    from cnnbench.deploy.runtimes import threads

    return threads()


def main(argv: list[str]) -> int:
    refuse_tensorflow()
    import numpy as np

    if len(argv) < 2:
        print("usage: python -m cnnbench.deploy.check REFERENCE.npz FILE [FILE ...]", file=sys.stderr)
        return 2
    with np.load(argv[0]) as saved:
        images, labels, reference = saved["images"], saved["labels"], saved["reference"]
    results = [compare(Path(name), images, labels, reference) for name in argv[1:]]
    leaked = [name for name in REFUSED if sys.modules.get(name) is not None]
    print(json.dumps({"results": results, "tensorflow_imported": bool(leaked)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
