"""The queuebench harness: CLI, brokers, supervised processes, runner, results and analysis."""

from importlib import metadata

try:
    __version__ = metadata.version("queuebench")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"
