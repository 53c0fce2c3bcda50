"""PNG figures of the report: performance profiles and validation curves.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch) and returned as PNG bytes, which the report writes to files or embeds in HTML.
"""

from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Curve = Dict[str, List[float]]  # {'steps': [...], 'seconds': [...], 'values': [...]}
LINE_STYLES = ('-', '--', '-.', ':')  # Profiles often coincide: styles keep every line visible.


def _png(figure: Figure) -> bytes:
  FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100, bbox_inches='tight')
  return buffer.getvalue()


def performance_profiles_png(taus: Dict[str, Sequence[float]],
                             rho: Dict[str, Dict[str, Sequence[float]]],
                             max_ratio: float) -> bytes:
  """One panel per time measure ('seconds', 'steps'): rho_s(tau), one step line per submission.

  Args:
    taus: {measure: the tau values where rho is given (rho is constant until the next one)}.
    rho: {measure: {submission: rho(tau) at each of `taus[measure]`}}.
    max_ratio: the right end of the tau axis.
  """
  figure = Figure(figsize=(5.5 * len(taus), 4.0))
  for i, measure in enumerate(taus):
    axes = figure.add_subplot(1, len(taus), i + 1)
    for j, (submission, values) in enumerate(rho[measure].items()):
      axes.plot(taus[measure], values, drawstyle='steps-post', label=submission, linewidth=2,
                alpha=0.85, linestyle=LINE_STYLES[j % len(LINE_STYLES)])
    axes.set_xlim(1.0, max_ratio)
    axes.set_ylim(-0.02, 1.05)
    axes.set_xlabel(f'tau (ratio to the best {measure} to target)')
    axes.set_ylabel('fraction of workloads with ratio <= tau')
    axes.set_title(f'Performance profiles ({measure})')
    axes.grid(alpha=0.3)
    axes.legend(loc='lower right')
  return _png(figure)


def validation_curves_png(workload: str, curves: Dict[str, Curve], metric_name: str,
                          target: Optional[float]) -> bytes:
  """Validation metric against steps and against submission seconds, one line per submission.

  Args:
    workload: the workload variant, for the title.
    curves: {line label: {'steps', 'seconds', 'values'}} of equal lengths.
    metric_name: the validation metric's name, for the y axis.
    target: the validation target, drawn as a horizontal dashed line (None: not drawn).
  """
  figure = Figure(figsize=(11.0, 4.3))
  figure.suptitle(f'{workload}: validation/{metric_name}')
  for i, (x_key, x_label) in enumerate((('steps', 'global step'),
                                        ('seconds', 'submission time (s)'))):
    axes = figure.add_subplot(1, 2, i + 1)
    for label, curve in curves.items():
      axes.plot(curve[x_key], curve['values'], marker='.', label=label)
    if target is not None:
      axes.axhline(target, color='black', linestyle='--', linewidth=1, label=f'target {target:g}')
    axes.set_xlabel(x_label)
    axes.set_ylabel(f'validation/{metric_name}')
    axes.set_title(f'against {x_key}')
    axes.grid(alpha=0.3)
    axes.legend(loc='best', fontsize='small')
  return _png(figure)
