"""The curvature report: every parameter, the block that serves it, flavour, factor shapes, and
every fallback with its reason (structured, and as text)."""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Tuple

import jax

from kfac import plan as planning
from kfac.blocks.kron import stored_shape
from kfac.param_paths import leaves_by_param_path


class ReportRow(NamedTuple):
  """One parameter in the curvature report.

  Attributes:
    parameter: its path in the `'params'` collection, `'/'`-joined.
    shape: its shape.
    block: the kind of its curvature block ('eigh', 'cholesky', ...), or `'none'` (gradient
      passed through).
    layer: the module path of its block (`''` for `'none'`).
    flavour: `'expand'` or `'reduce'` (`''` for `'none'`).
    factors: e.g. `'A [65, 65] full, B [10] diagonal'` (`''` for `'none'`).
    fallback: `''`, or what was downgraded and why (also why a parameter is not covered), and
      the plan's notes on the block's cost (`kfac.plan.LayerPlan.notes`).
    fallbacks: the structured `kfac.plan.Fallback`s of its layer (not printed).
    refused: whether its module is a Dense/DenseGeneral/Conv K-FAC cannot cover (not printed).
  """

  parameter: str
  shape: Tuple[int, ...]
  block: str
  layer: str
  flavour: str
  factors: str
  fallback: str
  fallbacks: Tuple[planning.Fallback, ...] = ()
  refused: bool = False


PRINTED_COLUMNS = ReportRow._fields[:7]


def _factors_description(layer: planning.LayerPlan) -> str:
  """`'A [shape] form, B [shape] form'` of a Kronecker-factored block, else its gradient shape."""
  dim_a, dim_b = layer.info.dims
  if layer.method not in planning.DENSE_FACTOR_METHODS + planning.FALLBACK_METHODS:
    return f'{layer.method} on G [{dim_a}, {dim_b}]'
  return ', '.join(f'{side} [{", ".join(map(str, stored_shape(dim, form)))}] {form}'
                   for side, dim, form in (('A', dim_a, layer.forms[0]),
                                           ('B', dim_b, layer.forms[1])))


def report_rows(plan: planning.Plan, params: Any) -> List[ReportRow]:
  """One `ReportRow` per parameter leaf, in the order of the parameter tree."""
  covered = {}
  for path, layer in plan.layers.items():
    for param_path in (layer.info.kernel_path, layer.info.bias_path):
      if param_path is not None:
        covered[param_path] = (layer.method, '/'.join(path), layer.flavour,
                               _factors_description(layer),
                               '; '.join([*map(str, layer.fallbacks), *layer.notes]),
                               layer.fallbacks)
  rows = []
  for param_path, leaf in leaves_by_param_path(params).items():
    block = covered.get(param_path)
    if block is None:
      reason = plan.uncovered.get(param_path, 'not covered')
      block = ('none', '', '', '', f'passed through: {reason}', (),
               param_path[:-1] in plan.report.refused)
    rows.append(ReportRow('/'.join(param_path), tuple(leaf.shape), *block))
  return rows


def curvature_report(apply_fn: Callable[..., jax.Array], params: Any, *,
                     sample_apply_kwargs: Optional[Mapping[str, Any]] = None,
                     **options: Any) -> List[ReportRow]:
  """The curvature report: every parameter, its block, flavour, factor shapes, fallbacks.

  Args:
    apply_fn: as for `kfac.precondition`.
    params: the model parameters (arrays or `jax.ShapeDtypeStruct`s).
    sample_apply_kwargs: as for `kfac.precondition`.
    **options: the other keyword arguments of `kfac.precondition` (`PreconditionOptions`).

  Returns:
    A list of `ReportRow`; `format_curvature_report` prints it.
  """
  options = planning.validate_options(planning.PreconditionOptions(**options))
  kwargs = dict(sample_apply_kwargs or {})
  plan = planning.make_plan(lambda p, x: apply_fn(p, x, **kwargs), params, options.sample_inputs,
                            options)
  return report_rows(plan, params)


def format_curvature_report(rows: List[ReportRow]) -> str:
  """A plain-text table of `rows`, one line per parameter (the printed columns)."""
  cells = [list(PRINTED_COLUMNS)]
  cells += [[row.parameter, 'x'.join(map(str, row.shape)) or 'scalar', *row[2:7]] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(PRINTED_COLUMNS))]
  lines = ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
           for line in cells]
  lines.insert(1, '  '.join('-' * width for width in widths))
  return '\n'.join(lines)
