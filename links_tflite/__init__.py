"""The shared core of MLink Edge: task specs, agreement metrics, the bundle format, the
TFLite interpreter shim and ensemble inference. Never imports TensorFlow."""

__version__ = "0.1.0"
