"""What a run shows when it ends: the meta-loss plot, the task's own report as a table, and a one-line summary."""
import os

from unrolled_es.cli.run_folder import jsonable


def fmt(x) -> str:
  if x is None:
    return "n/a"
  if hasattr(x, "dtype") and getattr(x, "size", 0) == 1:
    x = jsonable(x)
  return f"{x:.4g}" if isinstance(x, float) else str(x)


def format_table(rows) -> str:
  """Rows (dicts with the same keys) as an aligned text table."""
  rows = list(rows)
  if not rows:
    return ""
  cols = list(rows[0])
  cells = [[fmt(r.get(c)) for c in cols] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
  line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
  return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def plot_metrics(metrics, path, title=""):
  """PNG of the training (window) loss and the evaluated meta-loss against total inner steps, and, when the run
  has diagnostics, the estimate's variance ratio and effective number of particles."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  diag = [(r["total_inner_steps"], r["variance_ratio"], r.get("effective_particles")) for r in metrics
          if r.get("variance_ratio") is not None]
  fig = Figure(figsize=(6.4, 6.8 if diag else 4.0), dpi=120)
  FigureCanvasAgg(fig)
  _plot_losses(fig.add_subplot(2 if diag else 1, 1, 1), metrics, title)
  if diag:
    _plot_diagnostics(fig.add_subplot(2, 1, 2), diag)
  fig.subplots_adjust(left=0.12, right=0.88, bottom=0.08 if diag else 0.12, top=0.95, hspace=0.3)
  tmp = path + ".tmp"
  fig.savefig(tmp, format="png")
  os.replace(tmp, path)


def _plot_losses(ax, metrics, title):
  train = [(r["total_inner_steps"], r["loss"]) for r in metrics if r.get("loss") is not None]
  evals = [(r["total_inner_steps"], r["eval_meta_loss"]) for r in metrics if r.get("eval_meta_loss") is not None]
  if train:
    ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="training loss (estimator windows)")
  if evals:
    ax.plot(*zip(*evals), "o-", ms=3, label="meta-loss (unperturbed evaluation)")
  ys = [y for _, y in train + evals]
  if ys and min(ys) > 0 and max(ys) > 20 * min(ys):
    ax.set_yscale("log")
  ax.set(xlabel="total inner steps", ylabel="loss", title=title)
  ax.grid(alpha=0.3)
  if train or evals:
    ax.legend()


def _plot_diagnostics(ax, diag):
  steps, ratio, eff = zip(*diag)
  ax.plot(steps, ratio, lw=0.8, color="C3", label="tr Var(ĝ) / ‖ĝ‖²")
  ax.set(xlabel="total inner steps", ylabel="variance ratio", yscale="log")
  ax.grid(alpha=0.3)
  if all(e is not None for e in eff):
    twin = ax.twinx()
    twin.plot(steps, eff, lw=0.8, color="C4", label="effective particles")
    twin.set_ylabel("effective particles")
    twin.legend(loc="upper right", fontsize=8)
  ax.legend(loc="upper left", fontsize=8)


def run_report(task, theta, out):
  """The task's end-of-run report (`Task.report(theta, out_dir)`), printed as a table, if the task has one."""
  if getattr(task, "report", None) is None:
    return
  result = task.report(theta, out)
  if isinstance(result, str):
    print(result)
  elif result:
    print(format_table(result))


def finish(cfg, task, result, out, report):
  """The plot, the task's report and the one-line summary at the end of a run."""
  plot_metrics(result.metrics, os.path.join(out, "meta_loss.png"), f"{cfg['task']} / {cfg['estimator']}")
  if report:
    run_report(task, result.theta, out)
  last = next((r for r in reversed(result.metrics) if r.get("eval_meta_loss") is not None), {})
  done = result.metrics[-1] if result.metrics else {}
  print(f"done: {result.step} outer steps, {done.get('total_inner_steps', 0)} total inner steps "
        f"({done.get('sequential_inner_steps', 0)} sequential), {result.num_skipped} skipped updates, "
        f"final meta_loss {fmt(last.get('eval_meta_loss'))}; results in {out}")
