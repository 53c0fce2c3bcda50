"""The learning-rate schedules: upstream's meaning of `warmup_factor` and `decay_steps_factor`,
and the search spaces converted to it without changing the schedules of the tuned points.

Before, `warmup_factor` was a fraction of a horizon `H = int(f x step_hint)` (f = 0.75 for the
references, 0.75 x 0.75 for K-FAC) and the decay ran over `decay_steps_factor x (H - warmup)`; the
oracle below is that old schedule, written out step by step.
"""

import collections
import glob
import json
import os

import numpy as np
import optax
import pytest

from submissions import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The factors the search spaces held before the conversion, and the old horizon of each family.
OLD_FACTORS = {'ogbg_molpcba': (0.05, 0.861509027839639), 'imagenet_vit': (0.05, 0.9),
               'cifar_wrn': (0.05, 0.9)}
OLD_HORIZON = {'nesterov': 0.75, 'kfac': 0.75 * 0.75}
# The step hints each folder's points run with (small, tiny, full; ogbg's small = tiny, and its
# paper config's 80,000, the old full). The ogbg K-FAC points are exact at 3,000 only: at 80,000
# no pair of factors also hits the old truncated horizon, and their decay is 36,821 steps where
# it was 36,829 (tuning_search_spaces/README.md).
STEP_HINTS = {'ogbg_molpcba': (3_000, 80_000), 'imagenet_vit': (1_000, 200, 167_999),
              'cifar_wrn': (1_000, 200, 4_883)}
INEXACT = {('ogbg_molpcba', 'kfac', 80_000)}


def old_linear_schedule(step_hint, horizon_factor, peak, warmup_factor, decay_steps_factor,
                        end_factor, steps):
  horizon = int(horizon_factor * step_hint)
  warmup = int(warmup_factor * horizon)
  decay = int(decay_steps_factor * (horizon - warmup))
  values = []
  for t in steps:
    if t < warmup:
      values.append(peak * t / warmup)
    else:
      fraction = min(t - warmup, decay) / decay
      values.append(peak + (peak * end_factor - peak) * fraction)
  return np.array(values)


def hyperparameters(**values):
  return collections.namedtuple('Hyperparameters', sorted(values))(**values)


def linear_schedule_spaces():
  for path in sorted(glob.glob(os.path.join(ROOT, 'tuning_search_spaces', '*', '*.json'))):
    name = os.path.basename(path)
    if name.startswith(('nesterov', 'kfac')):
      yield os.path.relpath(path, ROOT)


@pytest.mark.parametrize('space_path', list(linear_schedule_spaces()))
def test_converted_spaces_keep_the_schedules_of_their_points(space_path):
  folder, name = space_path.split(os.sep)[-2:]
  space = json.load(open(os.path.join(ROOT, space_path)))
  point = {key: value['feasible_points'][0] for key, value in space.items()
           if key in ('warmup_factor', 'decay_steps_factor', 'end_factor')}
  old_warmup, old_decay = OLD_FACTORS[folder]
  family = 'kfac' if name.startswith('kfac') else 'nesterov'
  horizon_factor = OLD_HORIZON[family]
  for step_hint in STEP_HINTS[folder]:
    if (folder, family, step_hint) in INEXACT:
      continue
    schedule = common.warmup_linear_decay_schedule(step_hint,
                                                   hyperparameters(learning_rate=1.0, **point))
    steps = np.arange(0, step_hint + 2, max(1, step_hint // 3_000))
    expected = old_linear_schedule(step_hint, horizon_factor, 1.0, old_warmup, old_decay,
                                   point['end_factor'], steps)
    np.testing.assert_allclose(np.asarray(schedule(steps)), expected, rtol=1e-5, atol=1e-7,
                               err_msg=f'{space_path} at step_hint {step_hint}')


def test_vit_nadamw_point_keeps_the_target_setting_schedule():
  """AlgoPerf's ViT target setting: warmup 6,999 steps, cosine to 0 over the rest of the
  0.75 x 167,999 = 125,999-step horizon."""
  space = json.load(open(os.path.join(ROOT, 'tuning_search_spaces/imagenet_vit/nadamw.json')))
  point = {key: value['feasible_points'][0] for key, value in space.items()}
  assert 'one_minus_beta2' not in point and point['beta2'] == pytest.approx(0.99785)
  schedule = common.warmup_cosine_decay_schedule(167_999, hyperparameters(**point))
  expected = optax.warmup_cosine_decay_schedule(0.0, point['learning_rate'], 6_999, 125_999)
  steps = np.arange(0, 130_000, 37)
  np.testing.assert_allclose(np.asarray(schedule(steps)), np.asarray(expected(steps)),
                             rtol=1e-5, atol=1e-9)


def test_schedules_mean_what_upstreams_baselines_mean():
  """Upstream's Nesterov: warmup `int(warmup_factor x step_hint)`, linear decay over
  `int(decay_steps_factor x (step_hint - warmup))`; its NAdamW: cosine over the rest."""
  point = hyperparameters(learning_rate=2.0, warmup_factor=0.1, decay_steps_factor=0.5,
                          end_factor=0.01)
  linear = common.warmup_linear_decay_schedule(1_000, point)
  assert float(linear(50)) == pytest.approx(1.0)  # Half of the 100 warmup steps.
  assert float(linear(100)) == pytest.approx(2.0)
  assert float(linear(100 + 225)) == pytest.approx(2.0 - 0.5 * (2.0 - 0.02))  # Half of 450.
  assert float(linear(100 + 450)) == pytest.approx(0.02)
  assert float(linear(999)) == pytest.approx(0.02)
  cosine = common.warmup_cosine_decay_schedule(
      1_000, hyperparameters(learning_rate=2.0, warmup_factor=0.1))
  assert float(cosine(100 + 450)) == pytest.approx(1.0)  # Half of the 900 cosine steps.
  assert float(cosine(1_000)) == pytest.approx(0.0, abs=1e-7)
