"""Our submissions use only upstream AlgoPerf's Workload and submission API.

Every submission module in submissions/ runs 2 steps as upstream's runner drives it
(`get_batch_size` of the variant, then of the base name; `_build_input_queue`; `init_model_fn`;
`init_optimizer_state`; `data_selection`; `update_params`; `prepare_for_eval`) against a workload
that raises on any member upstream's workloads lack (`upstream_only_workload.py`).
"""

import collections
import glob
import importlib
import os

import jax
import numpy as np
import pytest

import workloads
from benchmark import tuning
from submissions import common
from tests.upstream_only_workload import NotAnUpstreamMember, UpstreamOnlyWorkload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folder of submissions/ and tuning_search_spaces/ -> registry name of the workload.
FOLDER_WORKLOADS = {'ogbg_molpcba': 'ogbg', 'imagenet_vit': 'imagenet_vit', 'cifar_wrn': 'cifar'}
SUBMISSION_FUNCTIONS = ('get_batch_size', 'init_optimizer_state', 'update_params',
                        'data_selection', 'prepare_for_eval')
# Compiling a curvature optimiser for the tiny ViT and WRN takes minutes on a loaded CPU: on the
# image workloads the default suite runs the references and K-FAC-reduce on the WRN (whose model
# state is BatchNorm's); the other curvature submissions there run with `make test-slow` (on
# ogbg the references and both K-FAC flavours run in the default suite; the low-rank and MAC
# modules' blocks are built on every tiny model by tests/test_new_submissions.py).
FAST_IMAGE_MODULES = {'nesterov', 'nadamw', 'cifar_wrn.kfac_reduce'}
FAST_OGBG_MODULES = {'nesterov', 'nadamw', 'kfac_reduce', 'kfac_expand'}


def submission_modules():
  """Module names of every module in submissions/ that defines the submission API: the
  workload-independent ones (`submissions.nesterov`) and the per-workload ones
  (`submissions.ogbg_molpcba.nesterov`)."""
  found = []
  for path in sorted(glob.glob(os.path.join(ROOT, 'submissions', '**', '*.py'), recursive=True)):
    module_name = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
    if all(hasattr(importlib.import_module(module_name), f) for f in SUBMISSION_FUNCTIONS[:2]):
      found.append(module_name)  # Not a shared helper module (common, kfac_submission).
  return found


def is_slow(module_name: str) -> bool:
  _, folder, name = module_name.split('.')
  if folder == 'ogbg_molpcba':
    return name not in FAST_OGBG_MODULES
  return not {name, f'{folder}.{name}'} & FAST_IMAGE_MODULES


def per_workload_modules():
  return [pytest.param(name, marks=pytest.mark.slow) if is_slow(name) else name
          for name in submission_modules() if name.count('.') == 2]


def hyperparameters_of(folder: str, name: str):
  """The first trial of the module's tuned search space (its plain one where none is tuned)."""
  space_dir = os.path.join(ROOT, 'tuning_search_spaces', folder)
  path = os.path.join(space_dir, f'{name}_tuned.json')
  if not os.path.exists(path):
    path = os.path.join(space_dir, f'{name}.json')
  point = tuning.generate_trials(tuning.load_search_space(path), 1, 0)[0]
  point = dict(point._asdict()) if hasattr(point, '_asdict') else dict(point)
  return collections.namedtuple('Hyperparameters', sorted(point))(**point)


def batch_size_as_upstream(module, variant_name: str, base_name: str) -> int:
  """Upstream's runner: the variant's batch size, else the base workload's."""
  try:
    return module.get_batch_size(variant_name)
  except ValueError:
    return module.get_batch_size(base_name)


def run_steps(module, workload, hyperparameters, batch_size: int, num_steps: int):
  data_rng, model_rng, opt_rng, train_rng = jax.random.split(jax.random.PRNGKey(0), 4)
  queue = workload._build_input_queue(data_rng, 'train', None, batch_size)
  params, model_state = workload.init_model_fn(model_rng)
  initial = params
  state = module.init_optimizer_state(workload, params, model_state, hyperparameters, opt_rng)
  eval_results = []
  for step in range(num_steps):
    step_rng = jax.random.fold_in(train_rng, step)
    batch = module.data_selection(workload, queue, state, params, model_state, hyperparameters,
                                  step, step_rng)
    state, params, model_state = module.update_params(
        workload, params, workload.model_params_types, model_state, hyperparameters, batch,
        workload.loss_type, state, eval_results, step, step_rng)
  state, params, model_state = module.prepare_for_eval(
      workload, params, workload.model_params_types, model_state, hyperparameters,
      workload.loss_type, state, eval_results, num_steps, train_rng)
  return initial, params


@pytest.mark.parametrize('module_name', per_workload_modules())
def test_submission_runs_two_steps_on_upstream_members_only(module_name):
  module = importlib.import_module(module_name)
  folder = module_name.split('.')[1]
  base_name = FOLDER_WORKLOADS[folder]
  inner = workloads.get_workload(base_name, 'tiny')
  workload = UpstreamOnlyWorkload(inner)
  hyperparameters = hyperparameters_of(folder, module_name.rsplit('.', 1)[-1])
  batch_size = batch_size_as_upstream(module, inner.variant_name, base_name)
  assert batch_size == inner.train_batch_size
  initial, params = run_steps(module, workload, hyperparameters, batch_size, num_steps=2)
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(initial),
                                                 jax.tree.leaves(params))]
  assert any(moved)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_every_workload_independent_module_runs_as_a_per_workload_one():
  """`submissions.<name>` is what `submissions.<workload>.<name>` re-exports, function for
  function, so the runs above run it too."""
  per_workload = [name for name in submission_modules() if name.count('.') == 2]
  for name in (name for name in submission_modules() if name.count('.') == 1):
    generic = importlib.import_module(name)
    users = [importlib.import_module(module) for module in per_workload
             if module.rsplit('.', 1)[1] == name.rsplit('.', 1)[1]]
    assert users, f'no per-workload module re-exports {name}'
    for user in users:
      for function in SUBMISSION_FUNCTIONS:
        assert getattr(user, function) is getattr(generic, function), (user.__name__, function)


def test_the_upstream_only_view_refuses_project_members():
  workload = UpstreamOnlyWorkload(workloads.get_workload('ogbg', 'tiny'))
  assert workload.step_hint == 3_000
  for name in ('kfac_model_fn', 'variant_name', 'config', 'train_batch_size',
               'build_input_queue', 'eval_period_steps'):
    with pytest.raises(NotAnUpstreamMember):
      getattr(workload, name)


@pytest.mark.parametrize('base_name', sorted(FOLDER_WORKLOADS.values()))
@pytest.mark.parametrize('config_name', ('full', 'small', 'tiny'))
def test_batch_size_table_matches_the_workload_configs(base_name, config_name):
  workload = workloads.get_workload(base_name, config_name)
  assert common.get_batch_size(workload.variant_name) == workload.get_config(
      config_name).batch_size


def test_batch_size_of_an_unknown_name_raises_value_error_as_upstream():
  for name in ('ogbg_molpcba', 'ogbg_paper', 'wmt', ''):
    with pytest.raises(ValueError, match='Unsupported workload name'):
      common.get_batch_size(name)
  # Upstream's runner falls back from the variant to the base name.
  assert batch_size_as_upstream(common, 'ogbg_paper', 'ogbg') == 512
