"""`kfac.precondition` and `kfac.kfac_optimizer` on tiny Flax models.

Oracles: the dense solve `(A kron B + d I)^-1 vec(G)` built with `jnp.kron`/`jnp.linalg.solve`
from the factors of `kfac.compute_factors`, with the gradient flattened by hand; untouched
gradients for uncovered parameters; SGD with Nesterov momentum trained side by side.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kfac
from tests.kfac_models import NUM_CLASSES, ConvNet, batch, init


class MLP(nn.Module):
  """Dense -> LayerNorm -> tanh -> Dense."""

  @nn.compact
  def __call__(self, x):  # x [N, D]
    return nn.Dense(NUM_CLASSES)(jnp.tanh(nn.LayerNorm()(nn.Dense(8)(x))))


def loss_gradients(apply_fn, params, x, y):
  return jax.jit(jax.grad(functools.partial(mean_loss, apply_fn)))(params, x, y)


def mean_loss(apply_fn, params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()


def dense_preconditioned(a_factor, b_factor, grad_matrix, damping, mode):
  """The damped block inverse times `grad_matrix`, by a dense solve on the row-major flattening."""
  dim_a, dim_b = a_factor.shape[0], b_factor.shape[0]
  if mode == 'eigh':
    block = jnp.kron(a_factor, b_factor) + damping * jnp.eye(dim_a * dim_b)
  else:
    pi = jnp.sqrt((jnp.trace(a_factor) / dim_a) / (jnp.trace(b_factor) / dim_b))
    block = jnp.kron(a_factor + pi * jnp.sqrt(damping) * jnp.eye(dim_a),
                     b_factor + jnp.sqrt(damping) / pi * jnp.eye(dim_b))
  return jnp.linalg.solve(block, grad_matrix.reshape(-1)).reshape(grad_matrix.shape)


@pytest.mark.parametrize('mode,flavour', [('eigh', 'reduce'), ('pi_eigh', 'expand'),
                                          ('cholesky', 'reduce')])
def test_preconditioned_gradient_matches_dense_solve(mode, flavour):
  model = ConvNet()
  x, y = batch()
  params = init(model, x)
  damping = 0.01
  options = dict(loss='softmax_cross_entropy', sample_inputs=x, flavour=flavour,
                 fisher_type='type2', damping=damping, inverse_method=mode)
  transform = kfac.precondition(model.apply, **options)
  grads = loss_gradients(model.apply, params, x, y)
  update = jax.jit(lambda g, s, p: transform.update(g, s, p, inputs=x, targets=y))
  updates, state = update(grads, transform.init(params), params)

  factors = jax.jit(functools.partial(kfac.compute_factors, model.apply,
                                      loss='softmax_cross_entropy', flavour=flavour,
                                      fisher_type='type2'))(params, x, y)
  assert set(factors) == {('Conv_0',), ('Dense_0',)}
  for name in ('Conv_0', 'Dense_0'):
    kernel, bias = grads['params'][name]['kernel'], grads['params'][name]['bias']
    out_dim = kernel.shape[-1]
    grad_matrix = jnp.concatenate([kernel.reshape(-1, out_dim), bias[None]], axis=0)
    want = dense_preconditioned(*factors[(name,)], grad_matrix, damping, mode)
    got = jnp.concatenate([updates['params'][name]['kernel'].reshape(-1, out_dim),
                           updates['params'][name]['bias'][None]], axis=0)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5 * float(jnp.abs(want).max()))
  for leaf in ('scale', 'bias'):
    np.testing.assert_array_equal(updates['params']['LayerNorm_0'][leaf],
                                  grads['params']['LayerNorm_0'][leaf])
  assert int(state.step) == 1 and int(state.num_rejected) == 0


def test_bare_parameter_tree_and_chain_extra_args():
  model = MLP()
  x, y = batch()
  x = x.reshape(len(x), -1)
  variables = init(model, x)
  apply_fn = lambda p, inputs: model.apply({'params': p}, inputs)
  params = variables['params']
  optimizer = optax.chain(
      kfac.precondition(apply_fn, loss='softmax_cross_entropy', sample_inputs=x, fisher_type='mc'),
      optax.sgd(0.1, momentum=0.9, nesterov=True))
  grads = loss_gradients(apply_fn, params, x, y)
  state = optimizer.init(params)
  updates, state = jax.jit(lambda g, s, p, rng: optimizer.update(
      g, s, p, inputs=x, targets=y, rng=rng))(grads, state, params, jax.random.PRNGKey(2))
  assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(params)
  assert not np.allclose(updates['Dense_0']['kernel'], -0.19 * grads['Dense_0']['kernel'])
  np.testing.assert_allclose(updates['LayerNorm_0']['scale'], -0.19 * grads['LayerNorm_0']['scale'],
                             rtol=1e-6)


def test_unknown_option_is_rejected():
  x, _ = batch()
  with pytest.raises(TypeError):
    kfac.precondition(ConvNet().apply, loss='mse', sample_inputs=x, dampnig=1.0)


def test_plan_is_traced_once_and_apply_kwargs_reach_the_model(monkeypatch):
  """init traces the layers; updates (two jit traces, new apply_kwargs) reuse the plan; the
  statistics pass calls `apply_fn(params, inputs, **apply_kwargs)`."""
  traces = []
  layer_report = kfac.tracing.layer_report
  monkeypatch.setattr(kfac.tracing, 'layer_report',
                      lambda *args, **kwargs: traces.append(1) or layer_report(*args, **kwargs))
  model = MLP()
  x, y = batch()
  x = x.reshape(len(x), -1)
  params = init(model, x)

  def scaled_apply(p, inputs, *, scale):
    return model.apply(p, inputs * scale)

  options = dict(loss='softmax_cross_entropy', sample_inputs=x, fisher_type='type2',
                 inverse_update_every=1)
  transform = kfac.precondition(scaled_apply, sample_apply_kwargs={'scale': 1.0}, **options)
  grads = loss_gradients(model.apply, params, x, y)
  update = jax.jit(lambda g, s, p, scale: transform.update(
      g, s, p, inputs=x, targets=y, apply_kwargs={'scale': scale}))
  state = transform.init(params)
  updates, _ = update(grads, state, params, 3.0)
  update(grads, state, params, jnp.float32(3.0))  # a second trace (weak type -> float32)
  assert len(traces) == 1
  closed = kfac.precondition(lambda p, inputs: model.apply(p, inputs * 3.0), **options)
  want, _ = jax.jit(lambda g, s, p: closed.update(g, s, p, inputs=x, targets=y))(
      grads, closed.init(params), params)
  for got_leaf, want_leaf in zip(jax.tree_util.tree_leaves(updates),
                                 jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-3, atol=1e-3)  # two compilations


def test_float64_state_without_x64_warns_and_uses_float32():
  model = ConvNet()
  x, _ = batch()
  with pytest.warns(UserWarning, match='x64'):
    transform = kfac.precondition(model.apply, loss='mse', sample_inputs=x, state_dtype=jnp.float64)
  state = transform.init(init(model, x))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state.blocks))


def train_losses(optimizer_fn, num_steps=40):
  """Training losses of a tiny ill-conditioned classification task, one compiled scan.

  `optimizer_fn(apply_fn, x, learning_rate)` builds the optimiser; `learning_rate` is traced.
  """
  model = MLP()
  rng = np.random.default_rng(5)
  scales = np.geomspace(1.0, 0.02, 6).astype(np.float32)  # badly scaled input features
  x = rng.standard_normal((64, 6)).astype(np.float32) * scales
  teacher = rng.standard_normal((6, NUM_CLASSES))
  y = np.argmax((x / scales) @ teacher, axis=-1).astype(np.int32)
  params = init(model, x)
  loss_fn = functools.partial(mean_loss, model.apply)

  @jax.jit
  def run(learning_rate):
    optimizer = optimizer_fn(model.apply, x, learning_rate)

    def step(carry, rng):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, state = optimizer.update(grads, state, params, inputs=x, targets=y, rng=rng)
      return (optax.apply_updates(params, updates), state), loss

    _, losses = jax.lax.scan(step, (params, optimizer.init(params)),
                             jax.random.split(jax.random.PRNGKey(6), num_steps))
    return losses

  return {lr: np.asarray(run(lr)) for lr in (0.03, 0.1, 0.3)}


def test_kfac_optimizer_trains_at_least_as_fast_as_nesterov():
  kfac_losses = train_losses(lambda apply_fn, x, lr: kfac.kfac_optimizer(
      apply_fn, learning_rate=lr, loss='softmax_cross_entropy', sample_inputs=x,
      damping=1e-2, inverse_update_every=5, weight_decay=1e-4, clip_update_norm=10.0))
  sgd_losses = train_losses(lambda apply_fn, x, lr: optax.sgd(lr, momentum=0.9, nesterov=True))

  def best_final(losses):
    return min(float(np.mean(run[-5:])) for run in losses.values())

  kfac_final, sgd_final = best_final(kfac_losses), best_final(sgd_losses)
  initial = float(kfac_losses[0.1][0])
  print(f'initial loss {initial:.4f}; after 40 steps (best lr): K-FAC {kfac_final:.4f}, '
        f'Nesterov {sgd_final:.4f}')
  assert all(np.all(np.isfinite(run)) for run in kfac_losses.values())
  assert kfac_final < 0.8 * initial
  assert kfac_final <= 1.05 * sgd_final


class ZeroHeadMLP(nn.Module):
  """Dense -> tanh -> Dense with a zero-initialised head (as the ViT's): at init every gradient
  below the head is zero, so the hidden layer's output-gradient factor B is zero."""

  @nn.compact
  def __call__(self, x):  # x [N, D]
    hidden = jnp.tanh(nn.Dense(8)(x))  # Dense_0
    return nn.Dense(NUM_CLASSES, kernel_init=nn.initializers.zeros)(hidden)  # Dense_1


@pytest.mark.parametrize('warm_start_steps', [0, 2])
def test_warm_start_replaces_the_degenerate_first_inverse(warm_start_steps):
  model = ZeroHeadMLP()
  x, y = batch()
  x = x.reshape(len(x), -1)
  params_0 = init(model, x)
  head = params_0['params']['Dense_1']
  params_1 = {'params': dict(params_0['params'], Dense_1=dict(
      head, kernel=jnp.asarray(np.random.default_rng(3).standard_normal(head['kernel'].shape),
                               jnp.float32)))}
  damping = 0.01
  transform = kfac.precondition(model.apply, loss='softmax_cross_entropy', sample_inputs=x,
                                fisher_type='type2', damping=damping, cov_update_every=10,
                                inverse_update_every=10, warm_start_steps=warm_start_steps)
  update = jax.jit(lambda g, s, p: transform.update(g, s, p, inputs=x, targets=y))
  state = transform.init(params_0)
  _, state = update(loss_gradients(model.apply, params_0, x, y), state, params_0)
  grads = loss_gradients(model.apply, params_1, x, y)
  updates, _ = update(grads, state, params_1)

  factors = jax.jit(functools.partial(kfac.compute_factors, model.apply,
                                      loss='softmax_cross_entropy', flavour='reduce',
                                      fisher_type='type2'))
  (a_0, b_0), (a_1, b_1) = factors(params_0, x, y)[('Dense_0',)], factors(params_1, x, y)[('Dense_0',)]
  np.testing.assert_array_equal(b_0, np.zeros_like(b_0))  # The degenerate step-0 factor.
  kernel, bias = grads['params']['Dense_0']['kernel'], grads['params']['Dense_0']['bias']
  grad_matrix = jnp.concatenate([kernel, bias[None]], axis=0)
  got = jnp.concatenate([updates['params']['Dense_0']['kernel'],
                         updates['params']['Dense_0']['bias'][None]], axis=0)
  if warm_start_steps == 0:  # Step 0's inverse, (A_0 kron 0 + d I)^-1 = I / d, still serves.
    want = grad_matrix / damping
  else:  # Step 1 refreshes from the EMA: the mean of the two steps' factors.
    want = dense_preconditioned((a_0 + a_1) / 2, (b_0 + b_1) / 2, grad_matrix, damping, 'eigh')
  # float32 eigh of a factor damped by 0.01: an entry 1e-3 of the largest moved by 1.2e-5 of it
  # under pytest-xdist (thread count); the wrong inverse would be off by O(1).
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=5e-5 * float(jnp.abs(want).max()))
