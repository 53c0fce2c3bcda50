"""MAC (kfac.mac, kfac.blocks.mac) against independent computations: dense solves in float64,
brute-force loops over examples, heads, queries and convolution locations."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Dict, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import kfac
import workloads
from kfac import factors, mac, tracing
from kfac.blocks import BlockOptions, LayerStatistics, make_block
from submissions import kfac_submission
from tests.kfac_oracles import fast_compilation  # noqa: F401 (fixture: compile without XLA passes)
from tests.test_submissions_upstream_api import hyperparameters_of

DAMPINGS = (1e-3, 0.1, 1.0, 10.0)


def _dense_solve(a_bar: np.ndarray, grad: np.ndarray, damping: float) -> np.ndarray:
  """`(abar abar^T + damping I)^-1 G` by a float64 dense solve."""
  a_bar = np.asarray(a_bar, np.float64)
  curvature = np.outer(a_bar, a_bar) + damping * np.eye(a_bar.size)
  return np.linalg.solve(curvature, np.asarray(grad, np.float64))


@pytest.mark.parametrize('damping', DAMPINGS)
def test_sherman_morrison_equals_dense_solve(damping):
  rng = np.random.default_rng(0)
  a_bar = np.append(rng.normal(size=6) + 0.5, 1.0).astype(np.float32)  # bias coordinate last
  grad = rng.normal(size=(7, 5)).astype(np.float32)
  expected = _dense_solve(a_bar, grad, damping)
  solved = mac.sherman_morrison_solve(jnp.asarray(a_bar), jnp.asarray(grad), damping)
  np.testing.assert_allclose(solved, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  step = mac.mac_precondition(jnp.asarray(a_bar), jnp.asarray(grad), damping)
  np.testing.assert_allclose(step, damping * expected, rtol=1e-5,
                             atol=1e-5 * damping * np.abs(expected).max())


@pytest.mark.parametrize('damping', DAMPINGS)
def test_mac_preconditioner_is_positive_definite(damping):
  a_bar = np.append(np.random.default_rng(1).normal(size=5) * 3.0, 1.0).astype(np.float32)
  matrix = np.asarray(mac.mac_precondition(jnp.asarray(a_bar), jnp.eye(6), damping), np.float64)
  np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
  eigenvalues = np.linalg.eigvalsh(matrix)
  assert eigenvalues.min() > 0
  # One eigenvalue damping / (damping + |abar|^2) along abar, 1 orthogonal to it.
  expected = sorted([damping / (damping + float(a_bar @ a_bar))] + [1.0] * 5)
  np.testing.assert_allclose(eigenvalues, expected, rtol=1e-4, atol=1e-6)


def _gated_steps(block, batches, weights, cov_every, inv_every, damping):
  """Runs `block` under jit with lax.cond gating (statistics every `cov_every` steps, inverse
  every `inv_every`) over the batches; returns the final state."""
  @jax.jit
  def step(state, index, stats, weight):
    state = jax.lax.cond(index % cov_every == 0, lambda s: block.update(s, stats, weight),
                         lambda s: s, state)
    return jax.lax.cond(index % inv_every == 0, lambda s: block.invert(s, damping),
                        lambda s: s, state)

  state = block.init()
  for index, (stats, weight) in enumerate(zip(batches, weights)):
    state = step(state, index, stats, weight)
  return state


def test_mac_block_bias_corrected_average_and_sherman_morrison():
  dim_a, dim_b, damping, decay = 5, 3, 0.5, 0.9
  rng = np.random.default_rng(2)
  means = [np.append(rng.normal(size=dim_a - 1) + 1.0, 1.0).astype(np.float32)
           for _ in range(7)]
  block = make_block('mac', dim_a, dim_b, BlockOptions())
  grad = rng.normal(size=(dim_a, dim_b)).astype(np.float32)
  np.testing.assert_allclose(block.apply(block.init(), jnp.asarray(grad), damping), grad)
  batches = [block.statistics(LayerStatistics(a_rows=jnp.zeros((1, dim_a)),
                                              g_rows=jnp.zeros((1, dim_b)), a_mean=m))
             for m in means]
  state = _gated_steps(block, batches, [1.0 - decay] * 7, cov_every=2, inv_every=3,
                       damping=damping)
  # Brute force: the paper's zero-initialised EMA on steps 0, 2, 4, 6, inverted at steps 0, 3, 6.
  average, updates = np.zeros(dim_a), 0
  for index, mean in enumerate(means):
    if index % 2 == 0:
      average, updates = decay * average + (1 - decay) * mean, updates + 1
    if index % 3 == 0:
      a_bar = average / (1 - decay ** updates)
  expected = damping * _dense_solve(a_bar, grad, damping)
  np.testing.assert_allclose(block.apply(state, jnp.asarray(grad), damping), expected,
                             rtol=1e-5, atol=1e-6)
  assert jax.tree_util.tree_reduce(lambda n, x: n + x.size, state, 0) == 2 * dim_a + 1


def test_mac_input_block_is_the_damped_exact_input_covariance():
  dim_a, dim_b, damping = 4, 2, 0.3
  rng = np.random.default_rng(3)
  rows = [rng.normal(size=(6, dim_a)).astype(np.float32) / np.sqrt(6) for _ in range(3)]
  block = make_block('mac_input', dim_a, dim_b, BlockOptions())
  batches = [block.statistics(LayerStatistics(a_rows=r, g_rows=jnp.zeros((1, dim_b)),
                                              a_mean=jnp.zeros(dim_a))) for r in rows]
  # The EMA weights are ignored: the covariance is the equal-weight mean over batches.
  state = _gated_steps(block, batches, [0.05, 0.5, 0.9], cov_every=1, inv_every=1,
                       damping=damping)
  covariance = np.mean([r.astype(np.float64).T @ r for r in rows], axis=0)
  grad = rng.normal(size=(dim_a, dim_b))
  expected = damping * np.linalg.solve(covariance + damping * np.eye(dim_a), grad)
  np.testing.assert_allclose(block.apply(state, jnp.asarray(grad, jnp.float32), damping),
                             expected, rtol=1e-4, atol=1e-6)


class _AttentionModel(nn.Module):
  """Optionally a LayerNorm, one self-attention layer (projections with biases) and a linear
  head on the mean token."""

  normalize_qk: bool = False
  layer_norm: bool = False

  @nn.compact
  def __call__(self, x, mask):
    if self.layer_norm:
      x = nn.LayerNorm(use_bias=False, name='norm')(x)
    y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, name='attention',
                                        normalize_qk=self.normalize_qk)(x, mask=mask)
    return nn.Dense(2, name='head')(y.mean(axis=1))


class _AttentionProblem(NamedTuple):
  """A batch of 4 sequences of 4 tokens for `_AttentionModel`: `inputs = (x, mask)` with the
  attention mask `[4, 1, 4, 4]` (key padding; example 1's query 3 attends nowhere), the loss
  mask `[4]` (example 2 is padding, with values far from the others), and random parameters."""

  model: nn.Module
  params: Any
  inputs: Tuple[np.ndarray, np.ndarray]
  loss_mask: np.ndarray


VALID_EXAMPLES = (0, 1, 3)


def _attention_problem(**model_options: bool) -> _AttentionProblem:
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4, 4, 5)).astype(np.float32)
  x[2] = 10.0 * x[2] + 30.0  # padding: must not move any mean
  key_valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]], bool)
  mask = np.broadcast_to(key_valid[:, None, None, :], (4, 1, 4, 4)).copy()
  mask[1, :, 3, :] = False  # example 1, query 3 attends nowhere: excluded from abar_V
  loss_mask = np.isin(np.arange(4), VALID_EXAMPLES).astype(np.float32)
  model = _AttentionModel(**model_options)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), x, mask)  # no init compilation
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  return _AttentionProblem(model, params, (x, mask), loss_mask)


def _layer_norm(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """Flax's `LayerNorm(use_bias=False)` over the last axis (epsilon 1e-6)."""
  centred = values - values.mean(axis=-1, keepdims=True)
  return centred / np.sqrt(centred.var(axis=-1, keepdims=True) + 1e-6) * scale


def _numpy_attention_probs(attention: Any, x: np.ndarray, mask: np.ndarray,
                           normalize_qk: bool) -> np.ndarray:
  """Flax's attention probabilities `S [N, H, L_q, L_k]` of input `x [N, L, D]`, float64, by a
  loop over examples, heads and queries (a query that attends nowhere gets uniform weights, as
  Flax's masked softmax gives it)."""
  q = np.einsum('nld,dhk->nlhk', x, attention['query']['kernel']) + attention['query']['bias']
  k = np.einsum('nld,dhk->nlhk', x, attention['key']['kernel']) + attention['key']['bias']
  if normalize_qk:
    q = _layer_norm(q, attention['query_ln']['scale'])
    k = _layer_norm(k, attention['key_ln']['scale'])
  n, length, heads, head_dim = q.shape
  probs = np.zeros((n, heads, length, length))
  for example in range(n):
    for head in range(heads):
      for query in range(length):
        allowed = mask[example, 0, query]
        if not allowed.any():
          probs[example, head, query] = 1.0 / length
          continue
        logits = np.array([q[example, query, head] @ k[example, j, head] / np.sqrt(head_dim)
                           for j in range(length)])
        scores = np.where(allowed, np.exp(logits - logits[allowed].max()), 0.0)
        probs[example, head, query] = scores / scores.sum()
  return probs


def _numpy_value_mean(probs: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The paper's `abar_V`: the mean over valid examples, heads and attending queries i of
  `sum_j S_hij x_j` (bias coordinate 1), by a loop."""
  rows = [np.append(sum(probs[example, head, query, j] * x[example, j]
                        for j in range(x.shape[1])), 1.0)
          for example in VALID_EXAMPLES for head in range(probs.shape[1])
          for query in range(x.shape[1]) if mask[example, 0, query].any()]
  return np.mean(rows, axis=0)


def _numpy_plain_mean(a: np.ndarray) -> np.ndarray:
  """The plain mean activation of layer inputs `a [N, L, P]` over valid examples and tokens,
  bias coordinate 1."""
  return np.append(a[list(VALID_EXAMPLES)].reshape(-1, a.shape[-1]).mean(axis=0), 1.0)


@pytest.mark.parametrize('normalize_qk', [False, True])
def test_attention_variant_equals_brute_force_formula(normalize_qk):
  """abar_V = mean over valid examples n, heads h, attending queries i of sum_j S_hij x_j."""
  problem = _attention_problem(normalize_qk=normalize_qk)
  apply_fn = lambda params, inputs: problem.model.apply(params, *inputs)
  report = tracing.layer_report(apply_fn, problem.params, problem.inputs)
  plain = {path: LayerStatistics(a_rows=jnp.zeros((1, 1)), g_rows=jnp.zeros((1, 1)),
                                 a_mean=jnp.zeros(6)) for path in report.layers}

  @jax.jit
  def statistics(params, inputs, example_weights):
    records = {}
    with mac.record_attention(records):
      apply_fn(params, inputs)
    assert list(records) == [('attention', 'value')]
    return mac.with_attention_means(plain, records, example_weights, report)

  replaced = statistics(problem.params, problem.inputs, problem.loss_mask)
  np.testing.assert_array_equal(replaced[('attention', 'key')].a_mean, np.zeros(6))
  attention = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64),
                                     problem.params['params']['attention'])
  x, mask = np.asarray(problem.inputs[0], np.float64), problem.inputs[1]
  expected = _numpy_value_mean(_numpy_attention_probs(attention, x, mask, normalize_qk), x, mask)
  np.testing.assert_allclose(replaced[('attention', 'value')].a_mean, expected, rtol=1e-5,
                             atol=1e-6)


def _mac_block_means(problem: _AttentionProblem, statistics_pass: str) -> Dict[str, np.ndarray]:
  """`{layer: abar}` of every 'mac' block after one `kfac.precondition` update (statistics and
  inverse at step 0, EMA weight 1: the batch's `a_mean`), its statistics from `precondition`'s
  own pass or from `kfac.gradient_and_statistics`."""
  apply_fn = lambda params, inputs: problem.model.apply(params, *inputs)  # noqa: E731
  options = dict(loss='mse', sample_inputs=problem.inputs, inverse_method='mac',
                 fisher_type='type2', damping=1.0)
  transform = kfac.precondition(apply_fn, **options)
  fused = kfac.gradient_and_statistics(lambda p, x: (apply_fn(p, x), None), **options)
  targets = jnp.zeros((4, 2))

  def curvature_state(params, inputs, loss_mask):
    state = transform.init(params)
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    if statistics_pass == 'precondition':
      return transform.update(grads, state, params, inputs=inputs, targets=targets,
                              mask=loss_mask)[1]
    _, _, statistics = fused(lambda output: jnp.mean(output ** 2), params, state, inputs=inputs,
                             targets=targets, mask=loss_mask)
    return transform.update(grads, state, params, statistics=statistics)[1]

  (curvature,) = kfac.curvature.curvature_states(
      jax.jit(curvature_state)(problem.params, problem.inputs, problem.loss_mask))
  return {'/'.join(path): np.asarray(block.a_bar) for path, block in curvature.blocks.items()}


@pytest.mark.parametrize('statistics_pass', ['precondition', 'fused'])
def test_mac_value_projection_gets_the_attention_mean_in_both_statistics_passes(statistics_pass):
  """LayerNorm -> attention -> head with a padding example: the value projection's MAC block
  holds the paper's `abar_V` (numpy loops), the query, key and output projections the plain mean
  activation of their inputs."""
  problem = _attention_problem(layer_norm=True)
  means = _mac_block_means(problem, statistics_pass)
  params = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), problem.params['params'])
  attention = params['attention']
  x, mask = np.asarray(problem.inputs[0], np.float64), problem.inputs[1]
  normed = _layer_norm(x, params['norm']['scale'])
  probs = _numpy_attention_probs(attention, normed, mask, normalize_qk=False)
  values = np.einsum('nld,dhk->nlhk', normed, attention['value']['kernel']
                     ) + attention['value']['bias']
  heads_out = np.einsum('nhij,njhk->nihk', probs, values)  # [N, L, H, head_dim]
  expected = {'attention/value': _numpy_value_mean(probs, normed, mask),
              'attention/query': _numpy_plain_mean(normed),
              'attention/key': _numpy_plain_mean(normed),
              'attention/out': _numpy_plain_mean(heads_out.reshape(4, 4, -1))}
  for layer, mean in expected.items():
    np.testing.assert_allclose(means[layer], mean, rtol=1e-5, atol=1e-6, err_msg=layer)
  assert not np.allclose(means['attention/value'], _numpy_plain_mean(normed), atol=1e-3)


def test_attention_recording_costs_no_flops_outside_mac(monkeypatch):
  """XLA's cost analysis: the K-FAC-reduce factors (what 'eigh' reads) of the attention model cost
  the same flops with and without the attention recording of the statistics pass (dead code,
  removed), while MAC's mean activations read it (a few more flops)."""
  problem = _attention_problem(layer_norm=True)
  apply_fn = lambda params, inputs: problem.model.apply(params, *inputs)  # noqa: E731
  report = tracing.layer_report(apply_fn, problem.params, problem.inputs)
  options = dict(report=report, loss='mse', fisher_type='type2', mask=problem.loss_mask)
  targets = jnp.zeros((4, 2))

  def reduce_factors(params):
    return factors.compute_factors(apply_fn, params, problem.inputs, targets, flavour='reduce',
                                   **options)

  def mean_activations(params):
    statistics = factors.compute_statistics(
        apply_fn, params, problem.inputs, targets,
        flavours={path: 'reduce' for path in report.layers}, **options)
    return {path: layer.a_mean for path, layer in statistics.items()}

  def flops(fn):
    analysis = jax.jit(lambda p: fn(p)).lower(problem.params).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops']

  recorded = flops(reduce_factors), flops(mean_activations)
  monkeypatch.setattr(mac, 'record_attention', lambda records: contextlib.nullcontext())
  unrecorded = flops(reduce_factors), flops(mean_activations)
  assert recorded[0] == unrecorded[0]
  assert recorded[1] > unrecorded[1]


class _ConvModel(nn.Module):
  """A strided SAME convolution with bias, then a linear head on the mean location."""

  @nn.compact
  def __call__(self, images):
    y = nn.Conv(3, (3, 3), strides=2, padding='SAME', name='conv')(images)
    return nn.Dense(2, name='head')(y.mean(axis=(1, 2)))


@pytest.mark.parametrize('flavour', ['expand', 'reduce'])
def test_conv_mean_activation_is_the_mean_patch_of_valid_examples(flavour):
  """`LayerStatistics.a_mean` (MAC's abar) of a conv = brute-force mean im2col patch."""
  rng = np.random.default_rng(5)
  images = rng.normal(size=(4, 5, 5, 2)).astype(np.float32) + 0.3
  images[1] = 1e3  # a padding example: must not move the mean
  mask = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
  model = _ConvModel()
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), params)
  report = tracing.layer_report(model.apply, params, images)
  assert mac.input_layer_paths(model.apply, params, images, report) == (('conv',),)
  statistics = jax.jit(lambda p, x, m: factors.compute_statistics(
      model.apply, p, x, jnp.zeros((4, 2)), report=report,
      flavours={path: flavour for path in report.layers}, loss='mse', fisher_type='type2',
      mask=m))(params, images, mask)
  # SAME, stride 2, kernel 3 on 5 pixels: 3 outputs, padding (1, 1) per side.
  padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = [np.append(padded[n, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].reshape(-1), 1.0)
             for n in (0, 2, 3) for i in range(3) for j in range(3)]
  np.testing.assert_allclose(statistics[('conv',)].a_mean, np.mean(patches, axis=0),
                             rtol=1e-5, atol=1e-6)


def test_input_layers_of_a_graph_network_and_their_overrides():
  """Node and edge embeddings both read the model input; the overrides name exactly them."""
  class GraphModel(nn.Module):
    @nn.compact
    def __call__(self, graph):
      graph = jraph.GraphMapFeatures(embed_node_fn=nn.Dense(4, name='node_embedding'),
                                     embed_edge_fn=nn.Dense(4, name='edge_embedding'))(graph)
      pooled = jax.ops.segment_sum(nn.Dense(4, name='hidden')(graph.nodes),
                                   jnp.repeat(jnp.arange(2), graph.n_node,
                                              total_repeat_length=5), num_segments=2)
      return nn.Dense(1, name='head')(pooled)

  graph = jraph.GraphsTuple(nodes=jnp.ones((5, 3)), edges=jnp.ones((6, 2)),
                            senders=jnp.zeros(6, jnp.int32), receivers=jnp.zeros(6, jnp.int32),
                            n_node=jnp.array([2, 3]), n_edge=jnp.array([3, 3]), globals=None)
  model = GraphModel()
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), graph)
  report = tracing.layer_report(model.apply, params, graph)
  paths = mac.input_layer_paths(model.apply, params, graph, report)
  assert sorted(paths) == [('edge_embedding',), ('node_embedding',)]
  methods, flavours = mac.mac_overrides(paths)
  assert methods == {'node_embedding': 'mac_input', 'edge_embedding': 'mac_input'}
  assert set(flavours.values()) == {'expand'}


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name='head')(jnp.tanh(nn.Dense(4, name='hidden')(x)))


def test_mac_through_precondition_equals_the_hand_computed_steps():
  """One `kfac.precondition` update (statistics and inverse at step 0): the input layer gets
  `damping (E[x x^T] + damping I)^-1 G`, the next layer the Sherman-Morrison step with the mean
  hidden activation, both over the valid examples only (numpy oracle)."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=(6, 5)).astype(np.float32) + 0.5
  mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
  x[mask == 0] = 50.0  # padding examples: must not enter the statistics
  model, damping = _MLP(), 0.7
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), params)
  report = tracing.layer_report(model.apply, params, x)
  methods, flavours = mac.mac_overrides(mac.input_layer_paths(model.apply, params, x, report))
  assert methods == {'hidden': 'mac_input'}
  transform = kfac.precondition(model.apply, loss='mse', sample_inputs=x, inverse_method='mac',
                                inverse_method_overrides=methods, flavour_overrides=flavours,
                                damping=damping, fisher_type='type2')
  grads = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), params)
  updates, _ = jax.jit(lambda g, p: transform.update(
      g, transform.init(p), p, inputs=x, targets=jnp.zeros((6, 3)), mask=mask))(grads, params)

  def as_matrix(tree, name):
    return np.concatenate([tree['params'][name]['kernel'], tree['params'][name]['bias'][None]])

  valid = np.concatenate([x[mask == 1], np.ones((4, 1))], axis=1).astype(np.float64)
  covariance = valid.T @ valid / 4
  expected_hidden = damping * np.linalg.solve(covariance + damping * np.eye(6),
                                              as_matrix(grads, 'hidden'))
  p = params['params']['hidden']
  hidden = np.tanh(x[mask == 1].astype(np.float64) @ p['kernel'] + p['bias'])
  a_bar = np.append(hidden.mean(axis=0), 1.0)
  expected_head = damping * _dense_solve(a_bar, as_matrix(grads, 'head'), damping)
  np.testing.assert_allclose(as_matrix(updates, 'hidden'), expected_hidden, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(as_matrix(updates, 'head'), expected_head, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 19 s alone, 38 s beside the other MAC/fused/capture/factors tests (2 cores).
def test_mac_submission_gives_the_vit_value_projections_attention_means():
  """Two steps of the `mac` submission on the tiny ViT (statistics and inverse at step 0 only):
  every value projection's block holds the attention-weighted mean of the first batch at the
  initial parameters, every query and key projection the plain mean of the same input (computed
  here from a recorded forward pass, outside the statistics pass)."""
  workload = workloads.get_workload('imagenet_vit', 'tiny')
  module = importlib.import_module('submissions.imagenet_vit.mac')
  hyperparameters = hyperparameters_of('imagenet_vit', 'mac')._replace(
      warm_start_steps=0, cov_update_every=5, inverse_update_every=5)
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  queue = workload._build_input_queue(jax.random.PRNGKey(1), 'train', None,
                                      workload.train_batch_size)
  state = module.init_optimizer_state(workload, params, model_state, hyperparameters,
                                     jax.random.PRNGKey(2))
  current, current_state, batches = params, model_state, []
  for step in range(2):
    batches.append(next(queue))
    state, current, current_state = module.update_params(
        workload, current, workload.model_params_types, current_state, hyperparameters,
        batches[-1], workload.loss_type, state, [], step, jax.random.PRNGKey(3 + step))
  (curvature,) = kfac.curvature.curvature_states(state.opt_state)
  blocks = {row.layer: row.block for row in state.functions.report()}

  @jax.jit
  def recorded_attention(params, inputs):
    records = {}
    with mac.record_attention(records):
      kfac_submission.training_logits(workload)(
          params, inputs, model_state=model_state, rng=jax.random.PRNGKey(0),
          dropout_rate=hyperparameters.dropout_rate)
    return records

  records = recorded_attention(params, batches[0]['inputs'])
  weights = kfac.losses.example_weights(kfac.losses.objective_mask(batches[0]['weights']),
                                        len(batches[0]['targets']))
  assert np.all(weights == 1)  # The plain means below are over all examples.
  value_layers = sorted(layer for layer in blocks if layer.endswith('/value'))
  assert value_layers and sorted('/'.join(path) for path in records) == value_layers
  for value_path, calls in records.items():
    attention_path = value_path[:-1]
    attention_mean = mac.attention_weighted_mean(calls, weights, has_bias=True)
    plain_mean = jnp.append(calls[0].value_input.reshape(-1, calls[0].value_input.shape[-1]
                                                         ).mean(axis=0), 1.0)
    assert blocks['/'.join(value_path)] == 'mac'
    np.testing.assert_allclose(curvature.blocks[value_path].a_bar, attention_mean, rtol=1e-4,
                               atol=1e-5)
    assert not np.allclose(attention_mean, plain_mean, atol=1e-3)
    for projection in ('query', 'key'):
      np.testing.assert_allclose(curvature.blocks[attention_path + (projection,)].a_bar,
                                 plain_mean, rtol=1e-4, atol=1e-5)
