"""The exported model in the runtimes people deploy with: ONNX (onnxruntime) and LiteRT.

- ``convert`` (TensorFlow side): the float32 twin of ``model.keras`` at its training size,
  written as ``model.onnx`` and ``model.tflite`` (and quantized LiteRT files on request).
- ``runtimes`` (no TensorFlow): open such a file and classify uint8 images with it; time it.
- ``check``: run in a fresh process that refuses to import TensorFlow, it compares each file
  with ``model.keras``'s own outputs on the same test images (``verify`` starts it).
- ``verify``: the sweep's and ``cnnbench verify-export``'s side of that check, and the
  thresholds a float32 file must meet.

``cnnbench.reports.predict`` classifies images with these files through ``runtimes``
(``python -m cnnbench.reports.predict model.onnx ...`` where TensorFlow is not installed).

The optional extra ``.[export]`` brings tf2onnx, onnx, onnxruntime and ai-edge-litert; without
it the export writes ``model.keras`` and the SavedModel and says which files it skipped.
"""
