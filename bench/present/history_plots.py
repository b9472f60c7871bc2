"""``bench history plot``: a case's trend across commits, with its change points (bench/runs/history.py finds them),
one chart per environment and operation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from ..runs.history import DEFAULT_DB, METRICS, change_points, relative_steps, series  # noqa: E402


def _label(case_key: str) -> str:
    """The case key without its op and device (both are in the figure's title)."""
    return case_key.split("|", 1)[1].rsplit("|", 1)[0] if "|" in case_key else case_key


def plot(db_path: Path = DEFAULT_DB, out_dir: Path = Path("results/history-plots"), env_key: str | None = None,
         case_filter: str | None = None, impl: str | None = None, metric: str = "time",
         min_size: int = 3) -> list[Path]:
    """PNG trends per (environment, op): x = run order labelled by short commit, y = the metric on a log axis, one
    line per (case, implementation); change points as dashed vertical lines labelled with their step."""
    frame = series(db_path, env_key, case_filter, impl, metric)
    if frame.empty:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unit = METRICS[metric][1]
    paths = []
    for (env, op), by_op in frame.groupby(["env_key", "op"], sort=True):
        runs = by_op.drop_duplicates("run_id")[["run_id", "commit"]]
        position = {rid: i for i, rid in enumerate(runs["run_id"])}
        impls = sorted(by_op["impl"].unique())
        colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(impls)}
        many = by_op.groupby(["case_key", "impl"]).ngroups > 12
        fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
        for (case, name), grp in by_op.groupby(["case_key", "impl"], sort=True):
            x = grp["run_id"].map(position).to_numpy()
            values = grp["value"].to_numpy(dtype=float)
            label = None if many else f"{name}: {_label(case)}"
            ax.plot(x, values, marker="o", markersize=3, linewidth=1, color=colors[name], alpha=0.6 if many else 1,
                    label=label)
            points = change_points(values, min_size)
            for i, step in zip(points, relative_steps(values, points)):
                at = x[i] - 0.5
                ax.axvline(at, color=colors[name], linestyle="--", linewidth=0.9)
                ax.annotate(f"{name} {step:+.1%}", (at, values[i]), xytext=(3, 3), textcoords="offset points",
                            fontsize=7, color=colors[name])
        if many:  # one legend entry per implementation; the cases are too many to name
            for name in impls:
                ax.plot([], [], color=colors[name], label=name)
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 4, not 4×10⁰
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        labels = [str(c)[:7] if c else "?" for c in runs["commit"]]
        stride = max(1, len(labels) // 30)
        ax.set_xticks(range(0, len(labels), stride), labels[::stride], rotation=60, fontsize=7)
        ax.set_xlabel("run (short commit, oldest first)")
        ax.set_ylabel(f"{'median time' if metric == 'time' else 'Callgrind count'} ({unit}, log scale)")
        ax.set_title(f"{op} {metric} history — {env} ({len(labels)} runs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        path = out_dir / f"history-{env}-{op}-{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
