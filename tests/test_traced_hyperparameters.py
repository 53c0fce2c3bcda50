"""The optimisers' numbers (schedule, momentum, weight decay, K-FAC's damping) are traced
arguments of the train step, held in the optimiser state: trials that differ only in them lower
to the same HLO, so trial 2 of a study hits the persistent compilation cache, and they train as
the optimisers with the numbers as constants did."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kfac
import workloads
from submissions import common, kfac_reduce, kfac_submission, nadamw, nesterov
from tests.kfac_models import ConvNet, batch, init

FIELDS = ('learning_rate one_minus_beta1 beta2 weight_decay warmup_factor decay_steps_factor '
          'end_factor damping clip_update_norm dropout_rate label_smoothing')
Point = collections.namedtuple('Point', FIELDS)
# Two trials of one study: every number differs (warmup 0 in one), the structure does not.
TRIALS = (Point(0.05, 0.1, 0.99, 1e-4, 0.05, 0.9, 0.001, 1e-3, 1.0, 0.1, 0.0),
          Point(0.3, 0.02, 0.999, 5e-3, 0.0, 0.5, 0.1, 0.2, 3.0, 0.1, 0.0))


def optax_linear_schedule(step_hint, point):
  """The Nesterov schedule as `common` built it before, of Python numbers (the oracle)."""
  peak, warmup = point.learning_rate, int(point.warmup_factor * step_hint)
  decay = optax.polynomial_schedule(
      init_value=peak, end_value=peak * point.end_factor, power=1,
      transition_steps=max(int(point.decay_steps_factor * (step_hint - warmup)), 1))
  return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), decay],
                              boundaries=[warmup])


def optax_cosine_schedule(step_hint, point):
  """The NAdamW schedule as `common` built it before (the oracle)."""
  peak, warmup = point.learning_rate, int(point.warmup_factor * step_hint)
  decay = optax.cosine_decay_schedule(
      init_value=peak,
      decay_steps=max(int(point.decay_steps_factor * (step_hint - warmup)), 1))
  return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), decay],
                              boundaries=[warmup])


def traced(values):
  """`values` as the optimiser state holds them: float32 scalars, int32 for ints."""
  return {k: jnp.asarray(v, jnp.int32 if isinstance(v, int) else jnp.float32)
          for k, v in values.items()}


SCHEDULE_POINTS = [  # (step_hint, learning_rate, warmup_factor, decay_steps_factor, end_factor)
    (1_000, 0.1, 0.05, 0.9, 0.01),
    (100, 2.0, 0.29, 1.0, 0.001),  # int(0.29 x 100) = 28 in float64, 29 in float32.
    (500, 0.3, 0.0, 0.5, 0.1),  # No warmup; the decay ends before the step hint.
    (40, 1.0, 0.5, 0.0, 0.5),  # No decay steps (optax's max(decay, 1)).
]


@pytest.mark.parametrize('step_hint,learning_rate,warmup_factor,decay_steps_factor,end_factor',
                         SCHEDULE_POINTS)
def test_traced_schedules_equal_the_optax_schedules_at_every_step(
    step_hint, learning_rate, warmup_factor, decay_steps_factor, end_factor):
  point = Point(learning_rate, 0.1, 0.99, 0.0, warmup_factor, decay_steps_factor, end_factor,
                1.0, 1.0, 0.0, 0.0)
  values = common.schedule_hyperparameters(step_hint, point)
  assert values['warmup_steps'] == int(warmup_factor * step_hint)
  steps = jnp.arange(step_hint + 5, dtype=jnp.int32)

  @jax.jit
  def schedules(steps, values, end_learning_rate):
    linear = common.warmup_linear_decay(values['learning_rate'], end_learning_rate,
                                        values['warmup_steps'], values['decay_steps'])
    cosine = common.warmup_cosine_decay(values['learning_rate'], values['warmup_steps'],
                                        values['decay_steps'])
    return linear(steps), cosine(steps)

  linear, cosine = schedules(steps, traced(values), jnp.float32(learning_rate * end_factor))
  # Up to float32 rounding at the peak's scale: optax subtracts `peak - end` in float64.
  np.testing.assert_allclose(linear, optax_linear_schedule(step_hint, point)(steps),
                             rtol=1e-6, atol=1e-7 * learning_rate)
  np.testing.assert_allclose(cosine, optax_cosine_schedule(step_hint, point)(steps),
                             rtol=1e-6, atol=1e-7 * learning_rate)


def nesterov_steps(optimizer, steps=12):
  """`steps` updates of `optimizer` on a quadratic (its parameters after each)."""
  params = {'w': jnp.linspace(-1.0, 2.0, 5), 'b': jnp.float32(0.5)}
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    loss = lambda p: jnp.sum(p['w'] ** 2 * jnp.arange(1.0, 6.0)) / 10 + p['b'] ** 2  # noqa: E731
    grads = jax.grad(loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  trajectory = []
  for _ in range(steps):
    params, state = step(params, state)
    trajectory.append(params)
  return trajectory


@pytest.mark.parametrize('point', TRIALS)
def test_nesterov_trains_as_optax_sgd_on_the_schedule(point):
  step_hint = 20
  want = nesterov_steps(optax.chain(
      optax.add_decayed_weights(point.weight_decay),
      optax.sgd(optax_linear_schedule(step_hint, point), momentum=1.0 - point.one_minus_beta1,
                nesterov=True)))
  got = nesterov_steps(nesterov.nesterov_optimizer(step_hint, point))
  for got_params, want_params in zip(got, want):
    for g, w in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('point', TRIALS)
def test_kfac_optimizer_trains_as_kfac_kfac_optimizer(point):
  """The submission's chain with its numbers in the state and the damping handed to every update
  equals `kfac.kfac_optimizer` with them as constants (statistics and inverses every step)."""
  model, step_hint = ConvNet(), 20
  x, y = batch()
  options = dict(loss='softmax_cross_entropy', sample_inputs=x, flavour='reduce',
                 fisher_type='type2', damping=point.damping)
  reference = kfac.kfac_optimizer(
      model.apply, learning_rate=optax_linear_schedule(step_hint, point),
      momentum=1.0 - point.one_minus_beta1, weight_decay=point.weight_decay,
      clip_update_norm=point.clip_update_norm, **options)
  ours = common.traced_hyperparameters(  # Configured with damping 1: the traced one applies.
      functools.partial(kfac_submission.kfac_optimizer,
                        kfac.precondition(model.apply, **dict(options, damping=1.0))),
      **kfac_submission.kfac_hyperparameters(step_hint, point))
  results = []
  for optimizer in (reference, ours):
    params = init(model, x)
    state = optimizer.init(params)
    step = jax.jit(lambda p, s, o=optimizer: o.update(
        jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(q, x), y).mean())(p), s, p, inputs=x, targets=y))
    for _ in range(4):
      updates, state = step(params, state)
      params = optax.apply_updates(params, updates)
    results.append(params)
  for got, want in zip(*(jax.tree.leaves(r) for r in results)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.fixture(name='ogbg', scope='module')
def fixture_ogbg():
  workload = workloads.get_workload('ogbg', 'tiny')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  batch_ = next(workload.build_input_queue(jax.random.PRNGKey(2), 'train', None, 32))
  return workload, params, model_state, batch_


@pytest.mark.parametrize('submission', [nesterov, nadamw, kfac_reduce])
def test_trials_differing_in_numbers_lower_to_one_train_step(ogbg, submission):
  """`train_step.lower(...).as_text()` of two trials is the same text: one compiled program
  (the persistent cache's key is a hash of it and the compile options)."""
  workload, params, model_state, batch_ = ogbg
  texts = []
  for point in TRIALS:
    state = submission.init_optimizer_state(workload, params, model_state, point,
                                            jax.random.PRNGKey(1))
    functions = state.functions or state.build(batch_)
    opt_state = jax.eval_shape(functions.init, params)
    hyperparams = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(
        s, optax.InjectStatefulHyperparamsState))[0].hyperparams
    assert {'learning_rate', 'warmup_steps', 'decay_steps'} <= set(hyperparams)
    texts.append(functions.train_step.lower(
        params, model_state, opt_state, batch_, jax.random.PRNGKey(3),
        jnp.float32(point.dropout_rate), jnp.float32(point.label_smoothing)).as_text())
  assert texts[0] == texts[1]
