"""The evaluation report: ``index.html`` (self-contained), PNG figures and ``results.json``.

Figures (matplotlib, Agg backend):

- ``rolling.png``: each strategy's prequential error over time, with its detected drifts;
- ``kshot.png``: k-shot error on the held-out devices against k;
- ``recovery.png``: the distribution of readings to recover after each detected drift;
- ``detectors.png``: detection delay, false alarms and misses per drift detector.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLORS = {
    "reptile": "#d62728",
    "fomaml": "#ff7f0e",
    "scratch": "#7f7f7f",
    "global": "#1f77b4",
    "finetune": "#2ca02c",
    "river-linear": "#9467bd",
    "river-hat": "#8c564b",
}


def write_report(
    out_dir: str | Path, results: dict[str, Any], runs: dict[str, Any], data: Any = None
) -> Path:
    """Write the figures, ``results.json`` and ``index.html`` into ``out_dir``; return the page's path.

    ``runs`` maps strategy names to :class:`learners.evaluation.kshot.HeldOutRun`;
    ``data`` is the evaluated :class:`pipeline.tools.datasets.Dataset` (for its time axis).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    if runs:
        task = results["task"]
        figures.append(("rolling.png", _save(plot_rolling(runs, task, data), out / "rolling.png")))
        figures.append(("kshot.png", _save(plot_kshot(results["strategies"], task), out / "kshot.png")))
        figures.append(("recovery.png", _save(plot_recovery(runs), out / "recovery.png")))
    if results.get("detectors"):
        figures.append(("detectors.png", _save(plot_detectors(results["detectors"]), out / "detectors.png")))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    page = out / "index.html"
    page.write_text(render_html(results, [(name, out / name) for name, _ in figures]))
    return page


# -- figures ---------------------------------------------------------------------------------


def _color(name: str) -> str:
    return COLORS.get(name, "#17becf")


def _time_axis(run: Any, data: Any) -> tuple[np.ndarray, str]:
    """Dates for daily data sets; otherwise the position in the training stream."""
    if getattr(data, "time_unit", "") == "day":
        t = np.asarray(data.time)[run.train_rows]
        return np.datetime64("1970-01-01") + t.astype("timedelta64[D]"), "date"
    return np.arange(len(run.errors)), "reading (training stream)"


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(values)])
    out = np.full(len(values), np.nan)
    out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def plot_rolling(runs: dict[str, Any], task: str, data: Any = None) -> plt.Figure:
    """One panel per strategy: rolling prequential error, detected drifts as red ticks."""
    n = len(runs)
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.6 * n + 1.2), sharex=True, sharey=True, squeeze=False)
    first = next(iter(runs.values()))
    # Readings interleave the devices: average over several readings of each.
    window = max(20, len(first.errors) // 300, 5 * int(first.summary.get("devices", 0)))
    curves = {name: _rolling(run.errors, window) for name, run in runs.items()}
    finite = np.concatenate([c[np.isfinite(c)] for c in curves.values()])
    top = float(np.percentile(finite, 99.5)) * 1.15 if finite.size else 1.0
    reference = "global" if "global" in curves else None
    label = "MAE" if task == "regression" else "error rate"
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        t, xlabel = _time_axis(run, data)
        if reference and name != reference:
            ax.plot(t, curves[reference], color="#bbbbbb", lw=0.8, label=f"{reference} (reference)")
        ax.plot(t, curves[name], color=_color(name), lw=1.0, label=name)
        drifts = run.drift_at[run.drift_at < len(t)]
        ax.plot(
            t[drifts],
            np.full(len(drifts), top * 0.04),
            "|",
            color="red",
            ms=9,
            mew=1.2,
            label=f"detected drift ({len(run.drift_at)})",
        )
        ax.set_ylim(0, top)
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8, ncol=3, frameon=False)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(f"Prequential error on the training devices (rolling mean over {window} readings)")
    fig.tight_layout()
    return fig


def plot_kshot(rows: Sequence[dict[str, Any]], task: str) -> plt.Figure:
    """k-shot error against k per strategy, ±1 s.e.: from the end-of-stream state, and online.

    The second row zooms in on the leaders: from the best value at any k to
    15% above the worst of the per-k best values.
    """
    keys = [("kshot", "from the state at the end of the stream")]
    if rows and rows[0].get("kshot_online"):
        keys.append(("kshot_online", "online: from the state when the episode began"))
    fig, axes = plt.subplots(2, len(keys), figsize=(6.2 * len(keys) + 1.8, 9), sharey="row", squeeze=False)
    values = [v for r in rows for key, _ in keys for v in r[key].values() if v is not None]
    top = min(max(values), 2.0 * float(np.median(values))) * 1.08 if values else 1.0
    best = min(values) if values else 1.0
    per_k = [
        min((r[key][k] for r in rows for key, _ in keys if r[key].get(k) is not None), default=best)
        for k in (rows[0]["kshot"] if rows else [])
    ]
    zoom_top = max(per_k, default=best) * 1.15
    for col, (key, title) in enumerate(keys):
        _kshot_panel(axes[0, col], rows, key, top)
        _kshot_panel(axes[1, col], rows, key, np.inf)
        episodes = rows[0].get(f"{key}_episodes") if rows else 0
        axes[0, col].set_title(f"{title}\n({episodes} episodes; ▲ = off the scale)", fontsize=10)
        axes[1, col].set_title("zoom on the leaders", fontsize=10)
        axes[1, col].set_xlabel("k (readings of the new device used to personalise)")
    axes[0, 0].set_ylim(best * 0.95, top)
    axes[1, 0].set_ylim(best * 0.98, zoom_top)
    metric = "MAE" if task == "regression" else "error rate"
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} on the next readings (mean ± s.e.)")
    axes[0, -1].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("k-shot personalisation of held-out devices")
    fig.tight_layout()
    return fig


def _kshot_panel(ax: Any, rows: Sequence[dict[str, Any]], key: str, top: float) -> None:
    stacked: dict[int, int] = {}
    for r in rows:
        ks = [int(k) for k in r[key]]
        err = np.array([np.nan if v is None else v for v in r[key].values()])
        sem = np.array([0.0 if v is None else v for v in r[f"{key}_sem"].values()])
        name = r["strategy"]
        ax.errorbar(
            ks,
            np.minimum(err, top),
            yerr=np.where(err > top, 0, sem),
            color=_color(name),
            marker="o",
            ms=4,
            capsize=3,
            lw=1.4,
            label=name,
        )
        for k, e in zip(ks, err, strict=True):
            if e > top:  # off the scale: a triangle at the top, labels stacked downwards
                stacked[k] = stacked.get(k, 0) + 1
                ax.plot([k], [top], marker="^", color=_color(name), ms=8, clip_on=False)
                right = k == max(ks)  # the last k's labels go to the left of the point
                ax.annotate(
                    f"{name}: {e:.3g}",
                    (k, top),
                    textcoords="offset points",
                    xytext=(-6 if right else 6, -12 * stacked[k]),
                    ha="right" if right else "left",
                    fontsize=8,
                    color=_color(name),
                )
    ax.set_xscale("log")
    if rows:
        ks = [int(k) for k in rows[0][key]]
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    ax.grid(alpha=0.3)


def plot_recovery(runs: dict[str, Any]) -> plt.Figure:
    """Box plot plus the points: readings until the error is back near its pre-drift level."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    names = list(runs)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        rec = np.asarray(runs[name].recoveries, dtype=np.float64)
        if rec.size:
            ax.boxplot([rec], positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"})
            ax.scatter(i + rng.uniform(-0.18, 0.18, rec.size), rec, s=10, color=_color(name), alpha=0.6)
    counts = [len(runs[name].recoveries) for name in names]
    ax.set_xticks(range(len(names)), [f"{name}\nn={c}" for name, c in zip(names, counts, strict=True)])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("readings to recover (symlog)")
    ax.set_title("Recovery after each detected drift (back within 10% of the pre-drift error)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_detectors(rows: Sequence[dict[str, Any]]) -> plt.Figure:
    """Mean delay, false alarms per 1,000 readings and share missed, per detector, mode and stream kind."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    metrics = [
        ("mean_delay", "mean delay (readings)"),
        ("false_alarms_per_1000", "false alarms / 1,000"),
        ("missed_ratio", "share of drifts missed"),
    ]
    fig, axes = plt.subplots(len(kinds), 3, figsize=(12, 3.2 * len(kinds) + 0.6), squeeze=False)
    width = 0.8 / max(len(modes), 1)
    for row, kind in enumerate(kinds):
        for col, (key, title) in enumerate(metrics):
            ax = axes[row, col]
            for m, mode in enumerate(modes):
                vals = [
                    next(
                        (r[key] for r in rows if (r["detector"], r["mode"], r["kind"]) == (d, mode, kind)),
                        None,
                    )
                    for d in detectors
                ]
                ax.bar(
                    np.arange(len(detectors)) + (m - (len(modes) - 1) / 2) * width,
                    [np.nan if v is None else v for v in vals],
                    width,
                    label=mode,
                    color=["#1f77b4", "#ff7f0e", "#2ca02c"][m % 3],
                )
            ax.set_xticks(range(len(detectors)), detectors)
            ax.set_title(f"{title}\n({kind} errors)", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Drift detectors on synthetic error streams with known drifts")
    fig.tight_layout()
    return fig


def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# -- the page ------------------------------------------------------------------------------


def render_html(results: dict[str, Any], images: Sequence[tuple[str, Path]]) -> str:
    """A self-contained page: settings, result tables, and the figures embedded as data URIs."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>metastream evaluate — {html.escape(str(results.get('dataset', 'detectors')))}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}.best{font-weight:bold;background:#e8f5e9}"
        "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}.note{color:#555;font-size:13px}</style>",
        "</head><body>",
    ]
    if "strategies" in results:
        parts.append(f"<h1>metastream evaluate: {html.escape(results['dataset'])}</h1>")
        parts.append(f"<p>{html.escape(results.get('description', ''))}</p>")
        held = results["held_out_devices"]
        parts.append(
            f"<p class='note'>{results['readings']:,} readings of {results['devices']} devices; "
            f"{len(held)} held out ({results['split']} split, seed {results['seed']}): "
            f"{html.escape(', '.join(held))}. k-shot: {results['episodes']} episode(s) per held-out device, "
            f"support order <b>{results['kshot_order']}</b>, scored on the next {results['horizon']} "
            f"readings. Micro-batch {results['batch_size']}.</p>"
        )
        parts.append(_strategy_table(results["strategies"], results["task"]))
        parts.append(_paired_table(results["strategies"]))
        if results.get("comparison"):
            parts.append(_comparison_table(results["comparison"], results["seeds"]))
        if results.get("prequential_comparison"):
            preq = results["prequential_comparison"]
            parts.append(_comparison_table(preq, results["seeds"], "prequential"))
        cfg = ", ".join(f"{k}={v}" for k, v in results["config"].items())
        parts.append(f"<p class='note'>Learner settings: {html.escape(cfg)}</p>")
        if results.get("overrides"):
            over = "; ".join(
                f"{name}: " + ", ".join(f"{k}={v}" for k, v in kv.items())
                for name, kv in results["overrides"].items()
            )
            parts.append(f"<p class='note'>Per-strategy settings: {html.escape(over)}</p>")
    if results.get("detectors"):
        parts.append("<h2>Drift detectors</h2>")
        parts.append(
            "<p class='note'>Synthetic error streams, one upward drift each (abrupt or gradual). "
            "A drift is detected by the first alarm within [start, end + 250]; every alarm outside "
            "such a window is a false alarm. <i>raw</i>: the River detector alone; <i>monitor</i>: "
            "metastream's DriftMonitor (fleet-scaled errors, upward-only, cooldown) over a steady fleet; "
            "<i>monitor-lockstep</i>: the same when every device drifts in the same stretch of time.</p>"
        )
        head = ["detector", "mode", "kind", "drifts", "missed", "mean_delay", "median_delay"]
        head += ["false_alarms_per_1000", "us_per_reading"]
        parts.append(_table(head, [[r[h] for h in head] for r in results["detectors"]]))
    for name, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(name)}</h3><a href='{html.escape(name)}'>")
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'></a>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _strategy_table(rows: Sequence[dict[str, Any]], task: str) -> str:
    metric = ["mae", "rmse"] if task == "regression" else ["accuracy"]
    ks = list(rows[0]["kshot"]) if rows else []
    online = [f"kshot_online/{k}" for k in ks] if rows and "kshot_online" in rows[0] else []
    cols = ["strategy", *metric, "drifts", "recovery_median", "recovery_measured"]
    cols += [f"kshot/{k}" for k in ks] + online + ["seconds"]
    head = [c.replace("kshot_online/", "online k=").replace("kshot/", "k-shot k=") for c in cols]
    table = [[r[c.split("/")[0]][c.split("/")[1]] if "/" in c else r.get(c) for c in cols] for r in rows]
    lower_better = {i for i, h in enumerate(head) if h in ("mae", "rmse", "recovery_median") or "k=" in h}
    higher_better = {i for i, h in enumerate(head) if h == "accuracy"}
    kshot_name = "MAE" if task == "regression" else "error rate"
    return _table(head, table, lower_better, higher_better) + (
        f"<p class='note'>Best per column in bold. k-shot columns: {kshot_name} on the held-out devices, "
        "personalised from the state at the end of the training stream (k-shot) or from the state just "
        "before the episode began (online; episodes in the first 10% of the stream left out).</p>"
    )


def _paired_table(rows: Sequence[dict[str, Any]], reference: str = "reptile") -> str:
    keys = [
        k for k in (f"kshot_minus_{reference}", f"kshot_online_minus_{reference}") if rows and k in rows[-1]
    ]
    if not keys:
        return ""
    ks = list(rows[-1][keys[0]])
    head = ["strategy", *(f"{'online ' if 'online' in key else ''}k={k}" for key in keys for k in ks)]
    table = []
    for r in rows:
        if keys[0] in r:
            cells = [r[key][k] for key in keys for k in ks]
            table.append(
                [r["strategy"], *(f"{m:+.4f} ± {s:.4f}" if s is not None else "–" for m, s in cells)]
            )
    return (
        f"<h3>k-shot error minus {reference}'s, paired over the same episodes</h3>"
        + _table(head, table)
        + "<p class='note'>Mean ± standard error of the per-episode difference; positive: "
        f"{reference} has the lower error. |mean| below about 2 s.e. is not a clear difference.</p>"
    )


def _comparison_table(rows: Sequence[dict[str, Any]], seeds: Sequence[int], what: str = "k-shot") -> str:
    head = ["baseline", "k", "reference error", "baseline error", "difference", "95% CI", "verdict"]
    table = [
        [
            r["baseline"],
            r["k"],
            r["reference_error"],
            r["baseline_error"],
            f"{r['mean_diff']:+.4f}",
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
            r["verdict"],
        ]
        for r in rows
    ]
    reference = rows[0]["reference"]
    return (
        f"<h3>{what}: {reference} minus each baseline over seeds {', '.join(map(str, seeds))}</h3>"
        + _table(head, table)
        + (
            f"<p class='note'>k-shot error of {reference} minus the baseline's on the same episodes, "
            "averaged over seeds and episodes; negative: "
            if what == "k-shot"
            else "<p class='note'>Each training device's mean prequential error (k column 0) under "
            f"{reference} minus the baseline's, averaged over seeds and devices; negative: "
        )
        + f"{reference} is better. 95% interval: bootstrap resampling seeds and episodes or devices "
        "(learners.evaluation.compare). "
        "ahead / behind: the interval excludes 0; tie: it does not. Figures and the tables above: "
        f"seed {seeds[0]}.</p>"
    )


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[Any]],
    low: set[int] | None = None,
    high: set[int] | None = None,
) -> str:
    best: dict[int, Any] = {}
    for i in (low or set()) | (high or set()):
        vals = [r[i] for r in rows if isinstance(r[i], int | float)]
        if vals:
            best[i] = min(vals) if i in (low or set()) else max(vals)
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = " class='best'" if i in best and v == best[i] else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
