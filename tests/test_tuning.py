"""Search-space parsing and scrambled-Halton trial generation."""

import json

import numpy as np
import pytest

from benchmark import tuning
from contract.errors import BenchmarkError


@pytest.mark.parametrize('raw, message', [
    ({'lr': {'min': 1e-3, 'max': 1.0, 'scaling': 'cubic'}}, "unknown scaling 'cubic'"),
    ({'lr': {'min': 1.0, 'max': 0.1, 'scaling': 'log'}}, 'min 1.0 is greater than max 0.1'),
    ({'lr': {'feasible_points': []}}, 'non-empty list'),
    ({'lr': {'min': 0.0, 'max': 1.0, 'scaling': 'log'}}, 'log scaling needs min > 0'),
    ({'lr': {'min': 0.1, 'scaling': 'log'}}, "missing key(s) ['max']"),
    ({'lr': 0.1}, "hyperparameter 'lr' must be an object"),
    ({}, 'has no hyperparameters'),
    ('lr', 'must be a JSON object'),
    ([], 'list of points is empty'),
])
def test_malformed_search_spaces_name_the_problem(raw, message):
  with pytest.raises(BenchmarkError, match=None) as info:
    tuning.parse_search_space(raw, source='space.json')
  assert message in str(info.value)
  assert 'space.json' in str(info.value)


def test_not_json_and_missing_file(tmp_path):
  bad = tmp_path / 'bad.json'
  bad.write_text('{"lr": ')
  with pytest.raises(BenchmarkError, match='is not valid JSON'):
    tuning.load_search_space(str(bad))
  with pytest.raises(BenchmarkError, match='does not exist'):
    tuning.load_search_space(str(tmp_path / 'missing.json'))


def _radical_inverse(i, base, perm):
  value, scale = 0.0, 1.0 / base
  while i:
    i, d = divmod(i, base)
    value += perm[d] * scale
    scale /= base
  return value


def test_unscrambled_structure_and_determinism():
  points = tuning.scrambled_halton(50, 3, seed=7, skip=0, shift=False)
  assert points.shape == (50, 3)
  assert np.all((points >= 0) & (points < 1))
  np.testing.assert_array_equal(points, tuning.scrambled_halton(50, 3, seed=7, skip=0, shift=False))
  assert not np.array_equal(points, tuning.scrambled_halton(50, 3, seed=8, skip=0, shift=False))
  # Base-2 dimension: the only digit permutation fixing 0 is the identity -> van der Corput.
  np.testing.assert_allclose(points[:, 0], [_radical_inverse(i + 1, 2, [0, 1]) for i in range(50)])
  # Every dimension is a permutation-scrambled radical inverse: low discrepancy in 1-D means the
  # first base^k points fall one in each interval of width base^-k.
  for dim, base in ((1, 3), (2, 5)):
    first = points[:base**2 - 1, dim]
    cells = np.floor(first * base**2 + 1e-9).astype(int)
    assert len(set(cells)) == len(cells)


def test_skip_and_shift_make_a_one_trial_study_draw_uniformly():
  """Upstream's skip and per-dimension shift: the first point of a study, over seeds, is spread
  over [0, 1) in every dimension (unshifted it took b - 1 values, always 1/2 in base 2)."""
  first = np.array([tuning.scrambled_halton(1, 3, seed=seed)[0] for seed in range(300)])
  assert np.all((first >= 0) & (first < 1))
  for dim in range(3):
    counts = np.histogram(first[:, dim], bins=10, range=(0, 1))[0]
    assert counts.min() >= 15, (dim, counts)  # 30 expected per bin.
  shifted = tuning.scrambled_halton(40, 2, seed=5, skip=0)
  unshifted = tuning.scrambled_halton(40, 2, seed=5, skip=0, shift=False)
  offsets = np.mod(shifted - unshifted, 1.0)  # The same rotation for every point of a dimension.
  np.testing.assert_allclose(offsets, np.broadcast_to(offsets[:1], offsets.shape), atol=1e-12)
  np.testing.assert_array_equal(tuning.scrambled_halton(5, 2, seed=5, skip=3, shift=False),
                                unshifted[3:8])


def test_generate_trials_maps_ranges_and_choices():
  space = tuning.parse_search_space({
      'learning_rate': {'min': 1e-4, 'max': 1e-1, 'scaling': 'log'},
      'momentum': {'min': 0.8, 'max': 0.99, 'scaling': 'linear'},
      'label_smoothing': {'feasible_points': [0.0, 0.1, 0.2]},
      'dropout_rate': {'feasible_points': [0.1]},
  })
  trials = tuning.generate_trials(space, 40, seed=3)
  assert trials == tuning.generate_trials(space, 40, seed=3)
  assert trials[:5] == tuning.generate_trials(space, 5, seed=3)
  lrs = np.array([t['learning_rate'] for t in trials])
  assert np.all((lrs >= 1e-4) & (lrs <= 1e-1))
  # log scaling: roughly as many trials per decade
  decades = np.floor(np.log10(lrs)).astype(int)
  assert set(decades) == {-4, -3, -2}
  assert all(0.8 <= t['momentum'] <= 0.99 for t in trials)
  assert {t['label_smoothing'] for t in trials} == {0.0, 0.1, 0.2}
  assert {t['dropout_rate'] for t in trials} == {0.1}


def test_point_list_space():
  space = tuning.parse_search_space([{'lr': 0.1}, {'lr': 0.2}])
  assert tuning.generate_trials(space, 2, seed=0) == [{'lr': 0.1}, {'lr': 0.2}]
  with pytest.raises(BenchmarkError, match='lists only 2 points'):
    tuning.generate_trials(space, 3, seed=0)


def test_shipped_search_spaces_parse():
  import glob
  paths = glob.glob('tuning_search_spaces/*/*.json')
  assert paths
  for path in paths:
    space = tuning.load_search_space(path)
    assert tuning.generate_trials(space, 3, seed=0)
    hp = tuning.make_hyperparameters(tuning.generate_trials(space, 1, seed=0)[0])
    assert json.loads(json.dumps(hp._asdict()))
