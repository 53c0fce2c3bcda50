"""One forward pass for the loss gradient and the statistics (kfac/fused.py and
`kfac.gradient_and_statistics`), against the two separate passes it replaces: `jax.grad` of the
training loss and `kfac.compute_statistics`'s own forward and backward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kfac
from kfac import fused
from tests import kfac_oracles as oracles
from tests.kfac_models import Mixed, fixture_mixed  # noqa: F401 (the fixture)
from tests.kfac_models import NUM_CLASSES, batch

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


class BatchNormNet(nn.Module):
  """Conv -> BatchNorm (batch statistics, updated) -> relu -> mean -> Dense."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(4, (3, 3), padding='SAME')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
    return nn.Dense(NUM_CLASSES)(x.mean(axis=(1, 2)))


def _smoothed_loss(targets):
  """A training objective that differs from K-FAC's curvature loss (label smoothing 0.1)."""
  def loss_fn(logits):
    labels = optax.smooth_labels(jax.nn.one_hot(targets, NUM_CLASSES), 0.1)
    return optax.softmax_cross_entropy(logits, labels).mean()
  return loss_fn


def _bn_apply(variables_of):
  def apply_fn(params, x):
    logits, updates = BatchNormNet().apply(variables_of(params), x, mutable=['batch_stats'])
    return logits, updates['batch_stats']
  return apply_fn


def test_fused_gradient_and_statistics_equal_the_two_passes():
  """The loss gradient (1e-6) and the new batch statistics equal `jax.grad` of the same
  objective; every layer's A and B rows give the factors of `compute_statistics` (1e-5)."""
  x, y = batch(n=8)
  variables = jax.jit(BatchNormNet().init)(jax.random.PRNGKey(1), x)
  apply_fn = _bn_apply(lambda p: {'params': p, 'batch_stats': variables['batch_stats']})
  report = kfac.layer_report(lambda p, x: apply_fn(p, x)[0], variables['params'], x)
  flavours = {path: 'reduce' for path in report.layers}
  rng = jax.random.PRNGKey(3)
  options = dict(report=report, flavours=flavours, loss='softmax_cross_entropy',
                 fisher_type='mc', rng=rng, num_samples=2)

  @jax.jit
  def both(params):
    (value, new_stats), grads, statistics = fused.value_grad_and_statistics(
        _smoothed_loss(y), apply_fn, params, x, y, **options)

    def objective(p):
      logits, stats = apply_fn(p, x)
      return _smoothed_loss(y)(logits), stats
    (direct_value, direct_stats), direct_grads = jax.value_and_grad(objective, has_aux=True)(
        params)
    separate = kfac.compute_statistics(lambda p, x: apply_fn(p, x)[0], params, x, y, **options)
    return (value, new_stats, grads, statistics), (direct_value, direct_stats, direct_grads,
                                                   separate)

  (value, stats, grads, statistics), (d_value, d_stats, d_grads, separate) = both(
      variables['params'])
  np.testing.assert_allclose(value, d_value, rtol=1e-6)
  for got, want in zip(jax.tree_util.tree_leaves((stats, grads)),
                       jax.tree_util.tree_leaves((d_stats, d_grads))):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert set(statistics) == set(separate) == set(report.layers)
  for path in report.layers:
    for rows in ('a_rows', 'g_rows'):
      got, want = getattr(statistics[path], rows), getattr(separate[path], rows)
      np.testing.assert_allclose(got.T @ got, want.T @ want, rtol=1e-5, atol=1e-6,
                                 err_msg=f'{path} {rows}')


def test_fused_pass_on_every_layer_kind(mixed):
  """Attention projections, DenseGeneral, grouped and strided convs: the same gradient and
  factors as the separate passes, expand flavour, type-2 Fisher."""
  apply_plain, shapes, inputs = mixed
  variables = jax.jit(Mixed().init)(jax.random.key(1), *inputs)
  report = kfac.layer_report(apply_plain, shapes, inputs)
  targets = jnp.array([0, 4])
  options = dict(report=report, flavours={p: 'expand' for p in report.layers},
                 loss='softmax_cross_entropy', fisher_type='type2')
  loss_fn = lambda out: optax.softmax_cross_entropy_with_integer_labels(out, targets).mean()  # noqa: E731

  @jax.jit
  def both(variables):
    (value, _), grads, statistics = fused.value_grad_and_statistics(
        loss_fn, lambda v, x: (apply_plain(v, x), None), variables, inputs, targets, **options)
    direct = jax.grad(lambda v: loss_fn(apply_plain(v, inputs)))(variables)
    separate = kfac.compute_statistics(apply_plain, variables, inputs, targets, **options)
    return grads, statistics, direct, separate

  grads, statistics, direct, separate = both(variables)
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direct)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for path in report.layers:
    for rows in ('a_rows', 'g_rows'):
      got, want = getattr(statistics[path], rows), getattr(separate[path], rows)
      np.testing.assert_allclose(got.T @ got, want.T @ want, rtol=1e-5, atol=1e-6)


def _train_step(use_fused: bool):
  """A jitted K-FAC train step (T_cov = 2, T_inv = 3, no warm start) on the BatchNorm net, with
  the statistics of the gradient's forward pass or of `precondition`'s own pass, and its
  initial `(params, batch_stats, opt_state)`."""
  x, y = batch(n=8)
  variables = jax.jit(BatchNormNet().init)(jax.random.PRNGKey(1), x)
  options = dict(loss='softmax_cross_entropy', sample_inputs=x, flavour='reduce',
                 fisher_type='mc', cov_update_every=2, inverse_update_every=3,
                 warm_start_steps=0, damping=1e-2)

  def apply_with_stats(params, x, *, batch_stats):
    return _bn_apply(lambda p: {'params': p, 'batch_stats': batch_stats})(params, x)

  def apply_output(params, x, *, batch_stats):
    return apply_with_stats(params, x, batch_stats=batch_stats)[0]

  sample = {'batch_stats': variables['batch_stats']}
  optimizer = kfac.kfac_optimizer(apply_output, learning_rate=0.1, momentum=0.9,
                                  sample_apply_kwargs=sample, **options)
  gradient_fn = kfac.gradient_and_statistics(apply_with_stats, sample_apply_kwargs=sample,
                                             **options)

  @jax.jit
  def step(params, batch_stats, opt_state, rng):
    kwargs = {'batch_stats': batch_stats}
    if use_fused:
      (loss, new_stats), grads, statistics = gradient_fn(
          _smoothed_loss(y), params, opt_state, inputs=x, targets=y, rng=rng,
          apply_kwargs=kwargs)
      extra = {'statistics': statistics}
    else:
      def objective(p):
        logits, stats = apply_with_stats(p, x, **kwargs)
        return _smoothed_loss(y)(logits), stats
      (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
      extra = {'inputs': x, 'targets': y, 'rng': rng, 'apply_kwargs': kwargs}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  params, batch_stats = variables['params'], variables['batch_stats']
  return step, (params, batch_stats, optimizer.init(params))


def _optimizer_steps(use_fused: bool, steps: int = 5):
  """`steps` steps of `_train_step`: the parameters, the optimiser state and the losses."""
  step, (params, batch_stats, opt_state) = _train_step(use_fused)
  losses = []
  for i in range(steps):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                jax.random.PRNGKey(10 + i))
    losses.append(float(loss))
  return params, opt_state, losses


def test_training_with_the_fused_pass_equals_training_with_two_passes():
  """Five steps crossing statistics and plain steps (the `lax.cond`) and inverse steps: the same
  parameters, losses and curvature state as `precondition`'s own statistics pass."""
  params_f, state_f, losses_f = _optimizer_steps(True)
  params_t, state_t, losses_t = _optimizer_steps(False)
  np.testing.assert_allclose(losses_f, losses_t, rtol=1e-5)
  # Eigenbases are compared through the parameters they moved: the reduce factors of 8 examples
  # are rank-deficient, and an eigenbasis of a repeated (zero) eigenvalue is not unique.
  leaves_f = jax.tree_util.tree_leaves_with_path((params_f, state_f))
  leaves_t = jax.tree_util.tree_leaves_with_path((params_t, state_t))
  for (path, got), (_, want) in zip(leaves_f, leaves_t):
    if 'basis' not in jax.tree_util.keystr(path):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                 err_msg=jax.tree_util.keystr(path))
  (curvature,) = kfac.curvature.curvature_states(state_f)
  assert int(curvature.step) == 5 and all(int(c) == 3 for c in curvature.counts.values())


def test_a_train_step_with_the_fused_pass_does_one_forward_pass_less():
  """XLA's cost analysis of the whole train step (statistics under a `lax.cond`, counted as its
  costliest branch): with the fused pass a statistics step computes fewer flops, by at least
  one forward pass, than the gradient pass followed by `precondition`'s statistics pass (which
  XLA cannot merge with the gradient's forward across the conditional)."""
  x, _ = batch(n=8)

  def flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops']

  (fused_step, start), (two_pass_step, _) = _train_step(True), _train_step(False)
  variables = {'params': start[0], 'batch_stats': start[1]}
  forward = flops(lambda v: BatchNormNet().apply(v, x, mutable=['batch_stats']), variables)
  rng = jax.random.PRNGKey(0)
  assert flops(fused_step, *start, rng) <= flops(two_pass_step, *start, rng) - forward


def test_precondition_asks_for_inputs_or_statistics():
  x, y = batch(n=8)
  variables = jax.jit(BatchNormNet().init)(jax.random.PRNGKey(1), x)
  apply_fn = lambda p, x: _bn_apply(  # noqa: E731
      lambda q: {'params': q, 'batch_stats': variables['batch_stats']})(p, x)[0]
  transform = kfac.precondition(apply_fn, loss='softmax_cross_entropy', sample_inputs=x)
  state = transform.init(variables['params'])
  grads = jax.tree_util.tree_map(jnp.zeros_like, variables['params'])
  try:
    transform.update(grads, state, variables['params'])
  except ValueError as error:
    assert 'inputs=' in str(error) and 'statistics=' in str(error)
  else:
    raise AssertionError('no error without inputs or statistics')
  try:
    transform.update(grads, state, variables['params'], statistics={('Dense_0',): None})
  except ValueError as error:
    assert 'statistics given for layers' in str(error)
  else:
    raise AssertionError('no error for statistics of other layers')
