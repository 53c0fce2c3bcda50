"""The curvature report (kfac/report.py): every parameter, its block, flavour, factor shapes and
fallbacks, as text and as structured fields."""

import jax

import kfac
from tests import kfac_oracles as oracles
from tests.kfac_models import ConvNet, batch, init

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


def test_report_lists_every_parameter_and_fallback():
  model = ConvNet(grouped=True)
  x, _ = batch()
  params = init(model, x)
  rows = kfac.curvature_report(model.apply, params, loss='softmax_cross_entropy', sample_inputs=x,
                               max_factor_dim=10, max_factor_dim_overrides={'Dense_*': 4},
                               fallback_overrides={'Dense_*': 'identity'})
  by_name = {row.parameter: row for row in rows}
  assert len(rows) == len(jax.tree_util.tree_leaves(params))
  assert by_name['Conv_0/kernel'].factors == 'A [19] diagonal, B [4, 4] full'
  assert 'A diagonal: dimension 19 > max_factor_dim 10' in by_name['Conv_0/bias'].fallback
  assert by_name['Conv_0/bias'].fallbacks == (
      kfac.Fallback('A', 'diagonal', 'dimension 19 > max_factor_dim 10'),)
  assert by_name['Dense_0/kernel'].factors == 'A [1] identity, B [3, 3] full'
  assert by_name['Dense_0/kernel'].flavour == 'reduce'
  assert by_name['Dense_0/kernel'].block == 'eigh'
  assert by_name['Conv_1/kernel'].block == 'none' and by_name['Conv_1/kernel'].refused
  assert 'grouped convolution' in by_name['Conv_1/kernel'].fallback
  assert by_name['LayerNorm_0/scale'].block == 'none' and not by_name['LayerNorm_0/scale'].refused
  text = kfac.format_curvature_report(rows)
  assert len(text.splitlines()) == len(rows) + 2 and 'Conv_1/kernel' in text


def test_report_shows_the_inverse_method_of_every_layer():
  model = ConvNet()
  x, _ = batch()
  rows = kfac.curvature_report(model.apply, init(model, x), loss='mse', sample_inputs=x,
                               inverse_method='cholesky',
                               inverse_method_overrides={'Dense_*': 'pi_eigh', '*': 'diagonal'})
  blocks = {row.parameter: row.block for row in rows}
  assert blocks['Conv_0/kernel'] == 'diagonal'  # '*' matches, the default does not apply
  factors = {row.parameter: row.factors for row in rows}
  assert factors['Conv_0/kernel'] == 'A [19] diagonal, B [4] diagonal'
  assert blocks['Dense_0/kernel'] == blocks['Dense_0/bias'] == 'pi_eigh'  # first match wins
  assert 'pi_eigh' in kfac.format_curvature_report(rows)


def test_report_of_a_model_that_needs_apply_kwargs():
  model = ConvNet()
  x, _ = batch()

  def apply_fn(params, inputs, *, scale):
    return model.apply(params, inputs * scale)

  rows = kfac.curvature_report(apply_fn, init(model, x), loss='mse', sample_inputs=x,
                               sample_apply_kwargs={'scale': 2.0})
  assert {row.parameter for row in rows if row.block == 'eigh'} == {
      'Conv_0/kernel', 'Conv_0/bias', 'Dense_0/kernel', 'Dense_0/bias'}
