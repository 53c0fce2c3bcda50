"""Options and plan (kfac/plan.py): block choice per layer, fallbacks, strict mode."""

import pytest

import kfac
from kfac import blocks
from tests import kfac_oracles as oracles
from tests.kfac_models import ConvNet, batch, init

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


@pytest.mark.parametrize('model,limit', [(ConvNet(), 4), (ConvNet(grouped=True), 4096)])
def test_strict_mode_turns_fallbacks_into_errors(model, limit):
  x, _ = batch()
  params = init(model, x)
  options = dict(loss='softmax_cross_entropy', sample_inputs=x, max_factor_dim=limit)
  kfac.precondition(model.apply, **options).init(params)  # falls back silently-but-reported
  with pytest.raises(ValueError, match='strict mode'):
    kfac.precondition(model.apply, strict=True, **options).init(params)


def test_strict_mode_accepts_a_fully_covered_model():
  model = ConvNet()
  x, _ = batch()
  params = init(model, x)
  kfac.precondition(model.apply, loss='mse', sample_inputs=x, strict=True).init(params)


def _unsupported_block(dim_a, dim_b, options):
  del dim_b, options
  raise blocks.UnsupportedLayer(f'side {dim_a} is not served')


def test_a_block_that_cannot_serve_a_layer_falls_back_or_raises_in_strict_mode(monkeypatch):
  monkeypatch.setitem(blocks.BLOCK_FACTORIES, 'unsupported', _unsupported_block)
  model = ConvNet()
  x, _ = batch()
  params = init(model, x)
  options = dict(loss='mse', sample_inputs=x, inverse_method_overrides={'Dense_*': 'unsupported'},
                 fallback='identity')
  rows = {row.parameter: row for row in kfac.curvature_report(model.apply, params, **options)}
  assert rows['Dense_0/kernel'].block == 'identity'
  assert rows['Dense_0/kernel'].fallbacks == (
      kfac.Fallback('block', 'identity', 'unsupported: side 5 is not served'),)
  assert rows['Conv_0/kernel'].block == 'eigh' and rows['Conv_0/kernel'].fallbacks == ()
  with pytest.raises(ValueError, match='strict mode(.|\n)*Dense_0: block identity'):
    kfac.precondition(model.apply, strict=True, **options).init(params)


@pytest.mark.parametrize('bad', [dict(flavour='both'), dict(fallback='zero'), dict(damping=-1.0),
                                 dict(inverse_update_every=0), dict(loss='hinge'),
                                 dict(max_factor_dim=0), dict(inverse_method='svd'),
                                 dict(inverse_method_overrides={'*': 'svd'})])
def test_bad_options_are_rejected_at_construction(bad):
  x, _ = batch()
  with pytest.raises(ValueError):
    kfac.precondition(ConvNet().apply, **{'loss': 'mse', 'sample_inputs': x, **bad})


def test_defaults_are_the_submissions_values():
  options = kfac.PreconditionOptions(loss='mse', sample_inputs=None)
  assert (options.cov_update_every, options.inverse_update_every, options.ema_decay,
          options.warm_start_steps, options.damping, options.inverse_method) == (
              1, 10, 0.95, 10, 1e-3, 'eigh')
  assert kfac.CurvatureConfig({}).inverse_update_every == options.inverse_update_every
