"""Loss-Hessian square roots and Fisher types (kfac/losses.py): type-2 roots vs `jax.hessian`, MC
convergence to type-2, empirical = gradient outer product, weighted masks, NaN labels under the
mask, padding examples, and the loss-scale convention against the dense GGN and empirical Fisher
of a training objective `sum(w * loss) / sum(w)`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
import pytest

import kfac
from kfac import losses
from kfac.losses import objective_mask
from tests import kfac_oracles as oracles
from workloads.ogbg_molpcba import input_pipeline, synthetic_data

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py

LOSSES = ('softmax_cross_entropy', 'sigmoid_cross_entropy', 'mse')


def _batch(loss, shape, seed=0, weighted=False):
  """Logits `shape`, targets and a mask with a padding example (last) and masked entries; a
  weighted mask has its other entries drawn from [0.2, 2]."""
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=shape), jnp.float32)
  if loss == 'softmax_cross_entropy':
    targets = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]))
    mask = np.ones(shape[:-1], np.float32)
  else:
    targets = jnp.asarray(rng.integers(0, 2, shape), jnp.float32)
    mask = np.ones(shape, np.float32)
  if weighted:
    mask = rng.uniform(0.2, 2.0, mask.shape).astype(np.float32)
  mask[-1] = 0.0
  mask[0, 0] = 0.0
  return logits, targets, jnp.asarray(mask)


def test_output_cotangents_factor_the_curvature_of_the_batch_mean_loss():
  """`sum_m c_m c_m^T` per example equals the Hessian (type2) and the gradient outer product
  (empirical) of `l_n / N` by `jax.hessian`/`jax.grad`, with 0/1 and weighted masks (a weight
  enters the empirical Fisher squared, the type-2 one linearly) and a padding example."""
  batches = {(loss, weighted): _batch(loss, (3, 2, 4), weighted=weighted)
             for loss in LOSSES for weighted in (False, True)}

  @jax.jit
  def per_example_curvatures(batches):
    result = {}
    for key, (logits, targets, mask) in batches.items():
      for fisher_type in ('type2', 'empirical'):
        columns = losses.output_cotangents(key[0], fisher_type, logits, targets, mask=mask)
        columns = columns.reshape(columns.shape[0], logits.shape[0], -1)
        result[key + (fisher_type,)] = (
            jnp.einsum('mni,mnj->nij', columns, columns),
            oracles.output_curvature(key[0], fisher_type, logits, targets, mask))
    return result

  for key, (curvature, expected) in per_example_curvatures(batches).items():
    np.testing.assert_allclose(curvature, expected, rtol=1e-5, atol=1e-7, err_msg=str(key))


def test_masked_targets_may_be_nan_and_mc_needs_an_rng():
  logits, targets, mask = _batch('sigmoid_cross_entropy', (3, 4))
  nan_targets = jnp.where(mask > 0, targets, jnp.nan)
  columns = losses.output_cotangents('sigmoid_cross_entropy', 'empirical', logits, nan_targets,
                                     mask=mask)
  np.testing.assert_array_equal(columns, losses.output_cotangents(
      'sigmoid_cross_entropy', 'empirical', logits, targets, mask=mask))
  with pytest.raises(ValueError, match='rng'):
    losses.output_cotangents('mse', 'mc', logits, targets)
  with pytest.raises(ValueError, match='fisher_type'):
    losses.output_cotangents('mse', 'fisher', logits, targets)


def test_masked_soft_label_targets_may_be_nan():
  """Soft-label (distribution) targets with NaN at masked positions give, for every Fisher
  type, the columns of the integer labels they one-hot encode (the integer-label empirical
  columns match `jax.grad` in the test above): masked targets are zeroed before any use."""
  logits, labels, mask = _batch('softmax_cross_entropy', (3, 2, 4), weighted=True)
  nan_soft = jnp.where(mask[..., None] > 0, jax.nn.one_hot(labels, 4), jnp.nan)

  @jax.jit
  def soft_and_integer_columns(logits, nan_soft, labels, mask, rng):
    return {fisher_type: [losses.output_cotangents('softmax_cross_entropy', fisher_type, logits,
                                                   targets, mask=mask, rng=rng)
                          for targets in (nan_soft, labels)]
            for fisher_type in losses.FISHER_TYPES}

  columns = soft_and_integer_columns(logits, nan_soft, labels, mask, jax.random.key(0))
  for fisher_type, (soft_columns, integer_columns) in columns.items():
    np.testing.assert_allclose(soft_columns, integer_columns, rtol=1e-6, atol=1e-8,
                               err_msg=fisher_type)


class PositionMixing(nn.Module):
  """Per-position outputs `[N, R, C]` of a network that mixes positions (a mean over them)."""

  @nn.compact
  def __call__(self, x):
    hidden = jnp.tanh(nn.Dense(4)(x))
    hidden = hidden + hidden.mean(axis=1, keepdims=True)
    return nn.Dense(3)(hidden)


SAMPLE_COUNTS = (1, 16, 1024)


def _assert_error_decreases(name, errors):
  print(f'MC vs type2, {name}: relative errors ' + ', '.join(
      f'{count} samples {error:.3f}' for count, error in zip(SAMPLE_COUNTS, errors)))
  assert errors[0] > errors[1] > errors[2], (name, errors)
  assert errors[2] < 0.15, (name, errors)


def test_mc_curvature_converges_to_type2():
  """Per example, the outer products of the MC columns approach the loss Hessian as the number
  of samples grows (labels drawn independently per position), for every loss."""
  batches = {loss: _batch(loss, (3, 2, 4)) for loss in LOSSES}

  @jax.jit
  def curvatures(batches, rng):
    result = {}
    for loss, (logits, targets, mask) in batches.items():
      for count in (0,) + SAMPLE_COUNTS:  # 0: type2
        columns = losses.output_cotangents(loss, 'mc' if count else 'type2', logits, targets,
                                           mask=mask, rng=rng, num_samples=max(count, 1))
        columns = columns.reshape(columns.shape[0], logits.shape[0], -1)
        result[loss, count] = jnp.einsum('mni,mnj->nij', columns, columns)
    return result

  result = curvatures(batches, jax.random.key(0))
  for loss in LOSSES:
    _assert_error_decreases(loss, [oracles.relative_error(result[loss, count], result[loss, 0])
                                   for count in SAMPLE_COUNTS])


def test_mc_fisher_factors_converge_to_type2():
  """The MC-Fisher factors of a network mixing positions approach the type-2 ones."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5))
  model = PositionMixing()
  config = dict(loss='softmax_cross_entropy', flavour='expand',
                flavour_overrides={'Dense_1': 'reduce'})

  @jax.jit
  def all_factors(x, rng):
    params = model.init(jax.random.key(1), x)
    type2 = kfac.compute_factors(model.apply, params, x, None, fisher_type='type2', **config)
    return type2, [kfac.compute_factors(model.apply, params, x, None, rng=rng, fisher_type='mc',
                                        num_samples=count, **config) for count in SAMPLE_COUNTS]

  type2, mc = all_factors(x, jax.random.key(2))
  _assert_error_decreases('factors', [
      max(oracles.relative_error(np.kron(*factors[path]), np.kron(*type2[path]))
          for path in type2) for factors in mc])


class MLP(nn.Module):
  """A nonlinear MLP on `[N, D]`."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(4, bias_init=nn.initializers.normal(0.5))(x))
    return nn.Dense(3, bias_init=nn.initializers.normal(0.5))(x)


def test_empirical_fisher_is_the_gradient_outer_product():
  """N = 1, R = 1: `A kron B` of the empirical Fisher equals `vec(grad) vec(grad)^T` of the
  layer's `[kernel; bias]` for the loss at the true targets."""
  x = jax.random.normal(jax.random.key(0), (1, 5))
  model = MLP()
  params = jax.jit(model.init)(jax.random.key(1), x)
  targets = {'softmax_cross_entropy': jnp.array([1]),
             'sigmoid_cross_entropy': jnp.array([[1.0, 0.0, 1.0]]),
             'mse': jnp.array([[0.3, -1.0, 2.0]])}

  @jax.jit
  def factors_and_gradients(params, x, targets):
    result = {}
    for loss, loss_targets in targets.items():
      factors = kfac.compute_factors(model.apply, params, x, loss_targets, loss=loss,
                                     flavour='expand', fisher_type='empirical')
      gradients = jax.grad(
          lambda p: oracles.batch_mean_loss(loss, model.apply(p, x), loss_targets))(params)
      result[loss] = factors, gradients
    return result

  for loss, (factors, gradients) in factors_and_gradients(params, x, targets).items():
    for path, (a_factor, b_factor) in factors.items():
      gradient = np.asarray(oracles.layer_parameters(gradients, path))
      np.testing.assert_allclose(np.kron(a_factor, b_factor), np.outer(gradient, gradient),
                                 rtol=1e-4, atol=1e-7, err_msg=f'{loss} {path}')


def test_padding_examples_do_not_change_the_factors():
  """Appending padding examples (mask all zero, arbitrary inputs, NaN targets) changes no factor:
  each loss with one Fisher type, both flavours; masked entries may hold NaN targets."""
  model = PositionMixing()
  x = jax.random.normal(jax.random.key(0), (5, 3, 5))
  settings = {'softmax_cross_entropy': 'mc', 'sigmoid_cross_entropy': 'empirical',
              'mse': 'type2'}
  batches = {}
  for loss in settings:
    _, targets, mask = _batch(loss, (5, 3, 3))
    mask = mask.at[-2:].set(0.0)
    if loss != 'softmax_cross_entropy':
      targets = jnp.where(mask > 0, targets, jnp.nan)
    batches[loss] = targets, mask

  @jax.jit
  def padded_and_unpadded(x, batches, rng):
    params = model.init(jax.random.key(1), x)
    result = []
    for loss, (targets, mask) in batches.items():
      config = dict(loss=loss, flavour='reduce', flavour_overrides={'Dense_0': 'expand'},
                    fisher_type=settings[loss], rng=rng)
      result.append((
          kfac.compute_factors(model.apply, params, x, targets, mask=mask, **config),
          kfac.compute_factors(model.apply, params, x[:3], targets[:3], mask=mask[:3], **config)))
    return result

  for padded, unpadded in padded_and_unpadded(x, batches, jax.random.key(2)):
    for path in unpadded:
      for padded_factor, factor in zip(padded[path], unpadded[path]):
        assert np.all(np.isfinite(padded_factor))
        np.testing.assert_allclose(padded_factor, factor, rtol=1e-5, atol=1e-6)


# -- The loss-scale convention: K-FAC's loss is the training objective under objective_mask ------


def _weighted_objective(loss, weights, targets):
  """`(objective(f), per_example_losses(f), N)`: the training objective
  `sum(w * loss) / sum(w)` as the mean over the N valid examples of per-example losses."""
  per_entry = {'sigmoid_cross_entropy': optax.sigmoid_binary_cross_entropy,
               'softmax_cross_entropy': optax.softmax_cross_entropy_with_integer_labels}[loss]
  num_valid = jnp.sum(jnp.any(weights.reshape(weights.shape[0], -1) > 0, axis=1))

  def objective(f):
    return jnp.sum(weights * per_entry(f, targets)) / jnp.sum(weights)

  def per_example_losses(f):
    weighted = (weights * per_entry(f, targets)).reshape(weights.shape[0], -1)
    return num_valid * jnp.sum(weighted, axis=1) / jnp.sum(weights)

  return objective, per_example_losses, num_valid


def _identical_examples(shape, seed):
  """Inputs `shape` whose rows (examples and positions) are all one vector, except the last
  example (padding: the weights zero it). Every layer then sees one input `a` on every valid
  row, so `A kron B` is the exact GGN / empirical Fisher block (`A = a a^T`) whatever the loss
  weights: the comparison below tests the scale, not the Kronecker approximation."""
  rng = np.random.default_rng(seed)
  inputs = np.broadcast_to(rng.normal(size=shape[-1]), shape).copy()
  inputs[-1] = rng.normal(size=shape[1:])
  return jnp.asarray(inputs, jnp.float32)


def test_kfac_curvature_is_that_of_the_training_objective_under_objective_mask():
  """With `mask = objective_mask(w)`, K-FAC's type-2 and empirical Fisher equal the dense GGN
  (`jax.hessian`, `jax.jacobian`) and the dense empirical Fisher (per-example gradients by
  `jax.jacobian`) of the training objective `sum(w * loss) / sum(w)`, for non-uniform weights
  (zeros, NaN labels under them, a padding example): multi-task sigmoid `[N, T]` and
  per-position softmax `[N, R, C]`, both flavours (but expand with the empirical Fisher of the
  positions: it drops the cross-position terms of the per-example gradient's outer product).
  Without the mask, a loss averaged over `R` positions gets `R` times the curvature (damping `R`
  times weaker)."""
  rng = np.random.default_rng(1)
  sigmoid_w = rng.uniform(0.2, 2.0, (5, 3)).astype(np.float32)
  sigmoid_w[0, 1] = sigmoid_w[-1] = 0.0
  softmax_w = rng.uniform(0.2, 2.0, (4, 3)).astype(np.float32)
  softmax_w[1, 2] = softmax_w[-1] = 0.0
  problems = {
      'sigmoid_cross_entropy': (_identical_examples((5, 2), 2), jnp.asarray(sigmoid_w),
                                jnp.asarray(rng.integers(0, 2, (5, 3)), jnp.float32)),
      'softmax_cross_entropy': (_identical_examples((4, 3, 2), 3), jnp.asarray(softmax_w),
                                jnp.asarray(rng.integers(0, 3, (4, 3)))),
  }
  model = MLP()

  @jax.jit
  def kfac_and_dense(problems):
    result = {}
    for loss, (x, weights, targets) in problems.items():
      params = model.init(jax.random.key(4), x)
      paths = [('Dense_0',), ('Dense_1',)]
      objective, per_example_losses, num_valid = _weighted_objective(loss, weights, targets)
      dense = {'type2': oracles.exact_ggn_blocks(model.apply, params, x, paths, objective),
               'empirical': oracles.empirical_fisher_blocks(model.apply, params, x, paths,
                                                            per_example_losses, num_valid)}
      if loss == 'sigmoid_cross_entropy':  # missing labels: NaN under a zero weight
        targets = jnp.where(weights > 0, targets, jnp.nan)
      for fisher_type in dense:
        for flavour in kfac.FLAVOURS:
          if (loss, fisher_type, flavour) == ('softmax_cross_entropy', 'empirical', 'expand'):
            continue
          result[loss, fisher_type, flavour] = dense[fisher_type], kfac.compute_factors(
              model.apply, params, x, targets, loss=loss, flavour=flavour,
              fisher_type=fisher_type, mask=objective_mask(weights))
    # The position average of an unweighted, unpadded batch, with and without the mask.
    x, _, targets = problems['softmax_cross_entropy']
    x, targets, ones = x[:3], targets[:3], jnp.ones((3, 3))
    params = model.init(jax.random.key(4), x)
    objective, _, _ = _weighted_objective('softmax_cross_entropy', ones, targets)
    dense = oracles.exact_ggn_blocks(model.apply, params, x, paths, objective)
    config = dict(loss='softmax_cross_entropy', flavour='expand', fisher_type='type2')
    result['position average', 'objective_mask'] = dense, kfac.compute_factors(
        model.apply, params, x, targets, mask=objective_mask(ones), **config)
    result['position average', 'no mask'] = jax.tree_util.tree_map(
        lambda block: 3 * block, dense), kfac.compute_factors(model.apply, params, x, targets,
                                                              **config)
    return result

  for key, (dense, factors) in kfac_and_dense(problems).items():
    for path, (a_factor, b_factor) in factors.items():
      np.testing.assert_allclose(np.kron(a_factor, b_factor), dense[path], rtol=2e-4, atol=1e-6,
                                 err_msg=str(key + (path,)))


class TinyGNN(nn.Module):
  """An ogbg-like GraphNetwork: node and edge embeddings, one message-passing step (Dense
  updates of edges, nodes, globals), a Dense decoder to the task logits `[n_graph, T]`."""
  num_tasks: int

  @nn.compact
  def __call__(self, graph):
    def update(features):
      return jnp.tanh(nn.Dense(4)(features))

    graph = jraph.GraphMapFeatures(embed_node_fn=nn.Dense(4), embed_edge_fn=nn.Dense(4))(graph)
    graph = graph._replace(globals=jnp.zeros((graph.n_node.shape[0], 4)))
    graph = jraph.GraphNetwork(*(jraph.concatenated_args(update),) * 3)(graph)
    return nn.Dense(self.num_tasks)(graph.globals)


def test_empirical_fisher_of_an_ogbg_batch_matches_per_example_gradients():
  """An ogbg-like batch (128 sigmoid tasks, missing labels NaN under the mask, padding graphs)
  with the submissions' objective mask of per-graph-weighted labels: every layer's empirical
  `B` (both flavours) equals the brute-force one from per-example gradients (`jax.jacobian` of
  the per-graph losses). With `sqrt(w / N)` columns it was 75-110x too large, off in shape."""
  molecules = synthetic_data.synthetic_molecules(np.random.default_rng(0), 6, 128, mean_nodes=4)
  batch = input_pipeline.padded_batch(molecules, input_pipeline.padding_budget(8, 6, 12))
  graph_weights = np.random.default_rng(1).uniform(0.2, 2.0, (batch['weights'].shape[0], 1))
  weights = jnp.asarray(batch['weights'] * graph_weights, jnp.float32)
  labels = jnp.where(weights > 0, batch['targets'], jnp.nan)
  graph = batch['inputs']
  model = TinyGNN(num_tasks=128)

  @jax.jit
  def factors_and_references(weights, labels):
    params = model.init(jax.random.key(0), graph)
    mask = objective_mask(weights)
    factors = {flavour: kfac.compute_factors(
        model.apply, params, graph, labels, loss='sigmoid_cross_entropy', flavour=flavour,
        fisher_type='empirical', mask=mask) for flavour in kfac.FLAVOURS}
    output, _, jacobians = oracles.layer_io(model.apply, params, graph)
    _, per_example_losses, num_valid = _weighted_objective(
        'sigmoid_cross_entropy', weights, jnp.where(weights > 0, labels, 0.0))
    return factors, output.ndim, jax.jacobian(per_example_losses)(output), jacobians, num_valid

  factors, output_ndim, loss_gradients, jacobians, num_valid = factors_and_references(
      weights, labels)
  assert set(jacobians) == set(factors['expand'])
  for path, jacobian in jacobians.items():
    references = oracles.empirical_b_factors(np.asarray(loss_gradients), np.asarray(jacobian),
                                             output_ndim, float(num_valid))
    for flavour, reference in references.items():
      b_factor = np.asarray(factors[flavour][path][1])
      assert oracles.relative_error(b_factor, reference) < 1e-4, (path, flavour)
