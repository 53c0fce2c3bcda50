"""The contract's exceptions: the user-facing error, and the one a submission raises when done."""


class BenchmarkError(Exception):
  """Bad user input or a failed run: the CLI prints its message as one line and exits non-zero."""


class TrainingCompleteError(Exception):
  """Raised by `update_params` when the submission believes it is done (AlgoPerf's name).

  The runner ends the trial cleanly after a final evaluation (status `complete`, unless that
  evaluation meets the targets); a target not met by then is never credited.
  """
