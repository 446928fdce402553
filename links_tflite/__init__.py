"""The shared core of MLink Edge: task specs, agreement metrics, the bundle format, the
TFLite interpreter shim and ensemble inference. Never imports TensorFlow."""

from importlib import metadata


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), shown by both CLIs' --version."""
    try:
        return metadata.version("mlink-edge")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
