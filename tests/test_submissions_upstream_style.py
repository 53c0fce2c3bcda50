"""An upstream-style AlgoPerf submission (`upstream_style_nadamw.py`, with its search space in
upstream's format) trains 20 steps on each of the three tiny configs through our runner,
unchanged: its batch size comes from upstream's base names (the runner asks for the variant
first), its `model_fn` calls pass a traced dropout rate, its optimiser state is built from
`param_shapes`' `.shape_tuple`."""

import csv
import os

import numpy as np
import pytest

import workloads
from benchmark import results, submission_loader, trial, tuning

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 20


@pytest.mark.parametrize('base_name', ('ogbg', 'imagenet_vit', 'cifar'))
def test_upstream_style_nadamw_trains_20_steps_on_the_tiny_config(tmp_path, base_name):
  submission = submission_loader.load_submission(os.path.join(HERE, 'upstream_style_nadamw.py'))
  space = tuning.load_search_space(os.path.join(HERE, 'upstream_style_nadamw.json'))
  point = tuning.generate_trials(space, 1, 0)[0]
  workload = workloads.get_workload(base_name, 'tiny')
  settings = trial.TrialSettings(rng_seed=0, max_global_steps=STEPS, eval_period_steps=10,
                                 max_runtime_sec=3600, stop_on_target=False)
  result = trial.run_trial(workload, submission, point, str(tmp_path), settings,
                           log=lambda m: None)
  assert result['global_steps'] == STEPS, result
  assert result['status'] != results.STATUS_DIVERGED, result
  with open(os.path.join(tmp_path, results.MEASUREMENTS_FILE)) as f:
    rows = list(csv.DictReader(f))
  losses = [float(row['train/loss']) for row in rows]
  assert [int(row['global_step']) for row in rows][-1] == STEPS and len(rows) >= 2
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]  # 20 NAdamW steps lower the training loss.
