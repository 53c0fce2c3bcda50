"""`kfac.laplace` against closed forms: the evidence of Bayesian linear regression, dense
log-determinants (`jnp.kron` + `slogdet`), finite differences and the evidence optimum."""

import functools

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import kfac
from kfac import laplace, marglik

NUM_EXAMPLES = 48
ROUNDS = 30  # Fit-then-update rounds of the online selection test.

INPUT_SPLIT = 3  # Inputs [:3] feed the first layer, [3:] the second.
NUM_INPUTS = 5
OUTPUTS = (2, 1)  # Output entries of the first and the second layer.
LAYERS = (('first',), ('second',))


class TwoBlockLinear(nn.Module):
  """`f = [x[:, :3] W_1, x[:, 3:] W_2]`: two bias-free Dense layers on disjoint inputs and
  outputs, so the GGN is block diagonal and each block is exactly `(X_l^T X_l) kron I / sigma^2`
  (K-FAC of either flavour is exact: no weight sharing, R = 1)."""

  @nn.compact
  def __call__(self, x):
    first = nn.Dense(OUTPUTS[0], use_bias=False, name='first')(x[:, :INPUT_SPLIT])
    second = nn.Dense(OUTPUTS[1], use_bias=False, name='second')(x[:, INPUT_SPLIT:])
    return jnp.concatenate([first, second], axis=-1)


def regression_data(seed=0):
  """Inputs `[N, 5]` float64 and targets `[N, 3]` from a noisy linear map."""
  rng = np.random.default_rng(seed)
  inputs = rng.standard_normal((NUM_EXAMPLES, NUM_INPUTS))
  weights = rng.standard_normal((NUM_INPUTS, sum(OUTPUTS))) * np.array([[1.5], [1.5], [1.5], [0.2], [0.2]])
  mask = np.zeros((NUM_INPUTS, sum(OUTPUTS)))
  mask[:INPUT_SPLIT, :OUTPUTS[0]] = 1
  mask[INPUT_SPLIT:, OUTPUTS[0]:] = 1
  targets = inputs @ (weights * mask) + 0.5 * rng.standard_normal((NUM_EXAMPLES, sum(OUTPUTS)))
  return inputs, targets


def blocks(inputs, targets):
  """`[(X_l, Y_l)]` of the two independent linear-Gaussian blocks."""
  return [(inputs[:, :INPUT_SPLIT], targets[:, :OUTPUTS[0]]),
          (inputs[:, INPUT_SPLIT:], targets[:, OUTPUTS[0]:])]


def block_log_evidence(x, y, prior_precision, sigma):
  """`sum_o log N(y_o | 0, sigma^2 I + X X^T / delta)`, numpy float64."""
  covariance = sigma**2 * np.eye(len(x)) + x @ x.T / prior_precision
  _, logdet = np.linalg.slogdet(covariance)
  solved = np.linalg.solve(covariance, y)
  return sum(-0.5 * (len(x) * np.log(2 * np.pi) + logdet + y[:, o] @ solved[:, o])
             for o in range(y.shape[1]))


def map_params(inputs, targets, precisions, sigma):
  """The posterior mode of each block: `(X^T X / sigma^2 + delta I)^-1 X^T Y / sigma^2`."""
  params = {}
  for name, (x, y), precision in zip(('first', 'second'), blocks(inputs, targets), precisions):
    kernel = np.linalg.solve(x.T @ x / sigma**2 + precision * np.eye(x.shape[1]),
                             x.T @ y / sigma**2)
    params[name] = {'kernel': jnp.asarray(kernel, jnp.float32)}
  return {'params': params}


def regression_config(flavour='reduce', **kwargs):
  return laplace.LaplaceConfig(likelihood='regression', flavour=flavour, fisher_type='type2',
                               **kwargs)


def laplace_fitter(apply_fn, config):
  """`fit(params, inputs, targets, num_batches) -> (LaplaceFit, layer_infos)`: statistics
  summed over `num_batches` equal batches (one jitted statistics function, compiled once)."""
  statistics_fn = jax.jit(functools.partial(laplace.batch_statistics, apply_fn, config=config))

  def fit(params, inputs, targets, num_batches):
    total = None
    for x, y in zip(np.split(inputs, num_batches), np.split(targets, num_batches)):
      batch = statistics_fn(params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
      total = batch if total is None else laplace.add_statistics(total, batch)
    layer_infos = kfac.layer_report(apply_fn, params,
                                            jnp.asarray(inputs, jnp.float32)).layers
    return laplace.laplace_fit(total, params, layer_infos, config), layer_infos

  return fit


def hyperparameters(precisions, sigma):
  return marglik.Hyperparameters(
      log_prior_precision={path: jnp.log(jnp.float32(p)) for path, p in zip(LAYERS, precisions)},
      log_sigma=jnp.log(jnp.float32(sigma)))


@pytest.mark.parametrize('flavour', ['expand', 'reduce'])
@pytest.mark.parametrize('num_batches', [1, 3])
def test_log_marginal_likelihood_is_the_linear_gaussian_evidence(flavour, num_batches):
  inputs, targets = regression_data()
  precisions, sigma = (2.0, 0.3), 0.7
  params = map_params(inputs, targets, precisions, sigma)
  config = regression_config(flavour)
  fit, _ = laplace_fitter(TwoBlockLinear().apply, config)(params, inputs, targets, num_batches)
  got = marglik.log_marginal_likelihood(hyperparameters(precisions, sigma), fit, config)
  want = sum(block_log_evidence(x, y, p, sigma)
             for (x, y), p in zip(blocks(inputs, targets), precisions))
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-3)


def random_spd(rng, dim):
  m = rng.standard_normal((dim, dim + 2))
  return m @ m.T / dim


def test_kron_log_determinant_matches_dense_slogdet():
  rng = np.random.default_rng(1)
  a, b = random_spd(rng, 4), random_spd(rng, 3)
  scale, precision = 7.0, 0.5
  got = marglik.kron_log_determinant(jnp.asarray(np.linalg.eigvalsh(a), jnp.float32),
                                     jnp.asarray(np.linalg.eigvalsh(b), jnp.float32),
                                     scale, precision)
  sign, want = jnp.linalg.slogdet(scale * jnp.kron(a, b) + precision * jnp.eye(12))
  assert sign > 0
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


class SmallMlp(nn.Module):
  """Dense(4)-tanh-LayerNorm-Dense(2) with biases: covered layers with a bias coordinate, and
  uncovered LayerNorm parameters (the fixed-prior rest)."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(4, name='hidden')(x))
    x = nn.LayerNorm(name='norm')(x)
    return nn.Dense(2, name='out')(x)


@pytest.fixture(scope='module')
def mlp_problem():
  """A LayerNorm MLP on regression data, its K-FAC-expand `LaplaceFit` over two batches."""
  rng = np.random.default_rng(2)
  inputs = jnp.asarray(rng.standard_normal((24, 3)), jnp.float32)
  targets = jnp.asarray(rng.standard_normal((24, 2)), jnp.float32)
  model = SmallMlp()
  params = model.init(jax.random.PRNGKey(0), inputs)
  config = regression_config('expand', rest_prior_precision=3.0)
  fit, layer_infos = laplace_fitter(model.apply, config)(params, inputs, targets, 2)
  return model, params, inputs, targets, config, fit, layer_infos


def test_marglik_terms_match_dense_posterior_precision(mlp_problem):
  """The log-determinant inside the marginal likelihood is that of the dense block
  `N s mean_b(A_b) kron mean_b(B_b) + delta I` built from `compute_factors` per batch."""
  model, params, inputs, targets, config, fit, layer_infos = mlp_problem
  precisions = {('hidden',): 0.8, ('out',): 5.0}
  sigma = 0.6
  hyper = marglik.Hyperparameters(
      log_prior_precision={path: jnp.log(jnp.float32(p)) for path, p in precisions.items()},
      log_sigma=jnp.log(jnp.float32(sigma)))
  compute_factors = jax.jit(functools.partial(kfac.compute_factors, model.apply, loss='mse',
                                              flavour='expand', fisher_type='type2'))
  batch_factors = [compute_factors(params, x, y) for x, y in zip(jnp.split(inputs, 2), jnp.split(targets, 2))]
  collection = params['params']
  logits = model.apply(params, inputs)
  want = (-jnp.sum(jnp.square(logits - targets)) / (2 * sigma**2)
          - 0.5 * logits.size * np.log(2 * np.pi * sigma**2))
  covered = 0.0
  for path, precision in precisions.items():
    a = (batch_factors[0][path][0] + batch_factors[1][path][0]) / 2
    b = (batch_factors[0][path][1] + batch_factors[1][path][1]) / 2
    theta = jnp.concatenate([collection[path[0]]['kernel'].ravel(), collection[path[0]]['bias']])
    dense = len(inputs) / sigma**2 * jnp.kron(a, b) + precision * jnp.eye(a.shape[0] * b.shape[0])
    want += (-0.5 * precision * theta @ theta + 0.5 * theta.size * np.log(precision)
             - 0.5 * jnp.linalg.slogdet(dense)[1])
    covered += theta @ theta
  rest = sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(collection['norm']))
  want -= 0.5 * config.rest_prior_precision * rest
  assert set(layer_infos) == set(precisions)
  got = marglik.log_marginal_likelihood(hyper, fit, config)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-3)


def test_gradient_matches_finite_differences(mlp_problem):
  _, _, _, _, config, fit, _ = mlp_problem
  with jax.enable_x64(True):
    fit64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), fit)
    hyper = marglik.Hyperparameters(
        log_prior_precision={('hidden',): jnp.float64(-0.3), ('out',): jnp.float64(1.2)},
        log_sigma=jnp.float64(-0.4))

    def objective(h):
      return marglik.log_marginal_likelihood(h, fit64, config)

    grads = jax.grad(objective)(hyper)
    step = 1e-5
    flat, unravel = jax.flatten_util.ravel_pytree(hyper)
    flat_grads, _ = jax.flatten_util.ravel_pytree(grads)
    for i in range(flat.size):
      delta = jnp.zeros_like(flat).at[i].set(step)
      numeric = (objective(unravel(flat + delta)) - objective(unravel(flat - delta))) / (2 * step)
      np.testing.assert_allclose(float(flat_grads[i]), float(numeric), rtol=1e-6, atol=1e-7)


def evidence_optimum(inputs, targets, sigma=None):
  """`argmax` of the closed-form evidence over `(log delta_1, log delta_2)` at a known `sigma`,
  or over `(log delta_1, log delta_2, log sigma)` when `sigma` is None."""

  def negative_evidence(h):
    noise = np.exp(h[2]) if sigma is None else sigma
    return -sum(block_log_evidence(x, y, np.exp(log_delta), noise)
                for (x, y), log_delta in zip(blocks(inputs, targets), h[:2]))

  result = scipy.optimize.minimize(negative_evidence, np.zeros(2 if sigma else 3),
                                   method='Nelder-Mead',
                                   options={'xatol': 1e-8, 'fatol': 1e-10, 'maxiter': 4000})
  assert result.success
  return result.x


@pytest.mark.parametrize('learn_sigma', [False, True])
def test_marglik_updates_move_a_bad_prior_to_the_evidence_optimum(learn_sigma):
  """Online selection (MAP, then K Adam steps on the hyperparameters at fixed theta, repeated)
  from far too strong priors ends at the evidence optimum: at a fixed point the Laplace gradient
  is the evidence gradient (linear-Gaussian: the Laplace evidence is exact, the GGN does not
  depend on theta). With the noise known, the first update already moves every precision
  toward the optimum (each block's fixed-theta optimum is MacKay's update)."""
  inputs, targets = regression_data(3)
  true_sigma = 0.5
  want = evidence_optimum(inputs, targets, None if learn_sigma else true_sigma)
  config = regression_config('reduce', learning_rate=0.1, num_steps=30, learn_sigma=learn_sigma)
  model = TwoBlockLinear()
  state = marglik.init_marglik_state(LAYERS, config, prior_precision=1e3,
                                     sigma=2.0 if learn_sigma else true_sigma)
  update = jax.jit(functools.partial(marglik.marglik_update, config=config))
  fit_laplace = laplace_fitter(model.apply, config)
  errors, traces = [], []
  for _ in range(ROUNDS):
    hyper = state.hyperparameters
    current = np.array([float(hyper.log_prior_precision[p]) for p in LAYERS]
                       + [float(hyper.log_sigma)])
    errors.append(np.abs(current[:len(want)] - want))
    params = map_params(inputs, targets, np.exp(current[:2]), np.exp(current[2]))
    fit, _ = fit_laplace(params, inputs, targets, 1)
    state, trace = update(state, fit)
    traces.append(np.asarray(trace))
  assert traces[0][-1] > traces[0][0]
  if not learn_sigma:
    assert np.all(errors[1] < errors[0])
    assert float(state.hyperparameters.log_sigma) == pytest.approx(np.log(true_sigma))
  assert np.all(errors[-1] < 1e-2), (errors[-1], want)
