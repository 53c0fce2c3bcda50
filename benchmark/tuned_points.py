"""Each submission's fastest trial of a study, written as its `<submission>_tuned.json`.

`make run` trains every submission at one fixed point, `tuning_search_spaces/<workload
folder>/<submission>_tuned.json` (`benchmark.jobs.tuned_space_path`). After an equal-budget study
that point is the submission's *fastest trial*: of the trials that reached the validation
target, the one with the least submission time to it (AlgoPerf's score; compilation included),
ties broken by fewer steps, then by folder order. A submission with no trial on target gets no
file: its old point stays (`kfac-bench tuned` says so).

The file is a search space of one feasible point per hyperparameter, in upstream's format, so
that `--tuning_search_space=<it>` replays the trial's point exactly.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Tuple

from benchmark import jobs, load_results, results

Summary = Dict[str, Any]
Key = Tuple[str, str]  # (workload base name, submission name)


def _rank(summary: Summary) -> Tuple[float, int]:
  """Sort key of a trial on target: submission seconds to the target, then steps."""
  return summary['seconds_to_target'], summary.get('steps_to_target') or 0


def fastest_trials(summaries: List[Summary]) -> Tuple[Dict[Key, Summary], List[Key]]:
  """`({(workload, submission): fastest trial on target}, [keys with no trial on target])`."""
  best: Dict[Key, Summary] = {}
  seen = []
  for summary in summaries:
    key = (summary.get('workload'), summary.get('submission'))
    if None in key:
      continue
    if key not in seen:
      seen.append(key)
    if summary.get('seconds_to_target') is None:
      continue
    if key not in best or _rank(summary) < _rank(best[key]):
      best[key] = summary
  return best, [key for key in seen if key not in best]


def point_space(hyperparameters: Mapping[str, Any]) -> Dict[str, Dict[str, List[Any]]]:
  """`{name: {'feasible_points': [value]}}`, names sorted: a search space of one point."""
  return {name: {'feasible_points': [hyperparameters[name]]} for name in sorted(hyperparameters)}


def write_tuned_points(experiment_dir: str, spaces_root: str = jobs.SEARCH_SPACE_DIR
                       ) -> Tuple[List[Tuple[Key, str, Summary]], List[Key]]:
  """Writes every (workload, submission)'s fastest trial of `experiment_dir` as
  `<spaces_root>/<workload folder>/<submission>_tuned.json`.

  Returns:
    `([(key, path written, trial summary)], [keys without a trial on target])`.
  """
  best, missing = fastest_trials(load_results.load_trial_summaries(experiment_dir))
  written = []
  for key, summary in sorted(best.items()):
    folder = jobs.workload_folder(key[0], spaces_root)
    path = os.path.join(folder, f'{key[1]}_tuned.json')
    results.write_json(path, point_space(summary.get('hyperparameters') or {}))
    written.append((key, path, summary))
  return written, missing
