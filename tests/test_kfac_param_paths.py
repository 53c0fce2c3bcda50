"""Parameter paths and gradient matrices (kfac/param_paths.py)."""

import jax.numpy as jnp
import numpy as np

import kfac
from tests import kfac_oracles as oracles
from tests.kfac_models import fixture_mixed  # noqa: F401 (the fixture)

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


def test_kernel_matrix_round_trip_and_layout(mixed):
  """`kernel_matrix` flattens (input axes, output axes) and puts the bias row last."""
  apply_fn, variables, inputs = mixed
  report = kfac.layer_report(apply_fn, variables, inputs)
  info = report.layers['DenseGeneral_0',]
  module = {name: jnp.arange(np.prod(leaf.shape), dtype=jnp.float32).reshape(leaf.shape)
            for name, leaf in variables['params']['DenseGeneral_0'].items()}
  matrix = kfac.kernel_matrix(info, module['kernel'], module['bias'])
  assert matrix.shape == (13, 6)
  np.testing.assert_array_equal(matrix[4 * 1 + 2], module['kernel'][1, 2].reshape(6))
  np.testing.assert_array_equal(matrix[-1], module['bias'].reshape(6))
  kernel, bias = kfac.split_kernel_matrix(info, matrix)
  np.testing.assert_array_equal(kernel, module['kernel'])
  np.testing.assert_array_equal(bias, module['bias'])
