"""The cost of one trial checkpoint: seconds to save and to restore, and its size on disk, for a
submission's state after its first step (K-FAC's factors and inverses exist by then).

  python scripts/bench_checkpoint.py --workload=ogbg_small \
      --submission_path=submissions/ogbg_molpcba/kfac_reduce.py \
      --tuning_search_space=tuning_search_spaces/ogbg_molpcba/kfac_reduce.json --repeats=3
  python scripts/bench_checkpoint.py --workload=ogbg --data_source=embedded ...  # full model
  python scripts/bench_checkpoint.py --quick   # ogbg_tiny, one save: a smoke test

Prints one JSON line: workload, submission, state_mb (array bytes of params + optimiser state +
model state), disk_mb, save_seconds (each save), restore_seconds, load_average (1 min, before
and after). The runner pays one save per evaluation and per `--checkpoint_every_secs`, outside
submission time, and one restore per resume.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import List, Optional

import jax
import numpy as np


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workload', default='ogbg_small')
  parser.add_argument('--data_source', default=None)
  parser.add_argument('--submission_path', default='submissions/ogbg_molpcba/kfac_reduce.py')
  parser.add_argument('--tuning_search_space',
                      default='tuning_search_spaces/ogbg_molpcba/kfac_reduce.json')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--quick', action='store_true', help='ogbg_tiny, one save.')
  args = parser.parse_args(argv)
  if args.quick:
    args.workload, args.repeats = 'ogbg_tiny', 1
  return args


def _megabytes(tree) -> float:
  return sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)
             if hasattr(x, 'shape')) / 2**20


def _disk_megabytes(path: str) -> float:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names) / 2**20


def main(argv: Optional[List[str]] = None) -> None:
  args = parse_args(argv)
  import workloads
  from benchmark import evaluation, resume, submission_loader, tuning
  from benchmark.checkpoint import Checkpointer, TrialCheckpoint
  from benchmark.trial_state import TrialState
  load_before = os.getloadavg()[0]
  name, config = workloads.split_variant(args.workload)
  workload = workloads.get_workload(name, config, data_source=args.data_source)
  submission = submission_loader.load_submission(args.submission_path)
  point = tuning.generate_trials(tuning.load_search_space(args.tuning_search_space), 1, seed=0)[0]
  hparams = tuning.make_hyperparameters(point)
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  template = submission.init_optimizer_state(workload, params, model_state, hparams,
                                             jax.random.PRNGKey(1))
  batch = next(workload.build_input_queue(jax.random.PRNGKey(2), 'train', workload.data_dir,
                                          evaluation.batch_size(submission, workload)))
  opt_state, params, model_state = submission.update_params(
      workload, params, workload.model_params_types, model_state, hparams, batch,
      workload.loss_type, template, [], 0, jax.random.PRNGKey(3))
  jax.block_until_ready(params)
  checkpoint = TrialCheckpoint(params, opt_state, model_state, jax.random.PRNGKey(4), 1, 1, {}, 0,
                               resume.trial_status(TrialState(), 0.0))
  with tempfile.TemporaryDirectory() as directory:
    checkpointer = Checkpointer(directory, keep=2, log=print)
    saves = [checkpointer.save(checkpoint) for _ in range(args.repeats)]
    disk = _disk_megabytes(os.path.join(directory, checkpointer.names()[-1]))
    start = time.perf_counter()
    checkpointer.latest(template)
    restore = time.perf_counter() - start
  print(json.dumps({
      'workload': workload.variant_name, 'submission': submission.name,
      'state_mb': round(_megabytes((params, opt_state, model_state)), 2),
      'disk_mb': round(disk, 2), 'save_seconds': [round(s, 3) for s in saves],
      'restore_seconds': round(restore, 3),
      'load_average': [load_before, os.getloadavg()[0]]}))


if __name__ == '__main__':
  main()
