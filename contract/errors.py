"""The one error type of the contract: bad user input or a failed run, reported as one line."""


class BenchmarkError(Exception):
  """Bad user input or a failed run: the CLI prints its message as one line and exits non-zero."""
