"""Tables, summaries and training-curve plots of the hierarchy benchmark and its sweep."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from benchmarks.results_files import command_line, cpu_description, write_result
from semid.plots import plot_curves

TEST = ["recall@1", "recall@10", "mrr@10"]
EMBED = ["embed_map", "embed_mean_rank", "quant_map", "quant_mean_rank"]
HELD = ["embed_heldout_map", "embed_heldout_mean_rank"]
OTHER = ["val_recall10", "prefix1_lift", "prefix2_lift", "collision_rate", "c_final"]
EPOCHS = ["q_epochs", "q_best_epoch", "g_epochs", "g_best_epoch", "fit_s", "generator_s"]


def run_meta(argv: list[str] | None, threads: int, start: float, settings: dict) -> dict:
    """Command, date, machine, versions, wall time and settings of one benchmark process."""
    import geoopt

    module = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")
    return {
        "command": command_line(module, argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_description()}, {threads} thread(s), {platform.platform()}",
        "torch": torch.__version__,
        "geoopt": geoopt.__version__,
        "wall_s": time.perf_counter() - start,
        # 1, 5 and 15 minutes: the longer ones cover most of a run that took minutes
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "settings": settings,
    }


def stderr(values: list[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); nan below 2 values."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def summarise(rows: list[dict]) -> list[dict]:
    """Per (dataset, task, side): medians and standard errors over seeds, converged counts."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["task"], r["side"]), []).append(r)
    out = []
    for (dataset, task, side), rs in groups.items():
        s = {"dataset": dataset, "task": task, "side": side, "spec": rs[0]["spec"]}
        s.update(config=rs[0]["config"], seeds=[r["seed"] for r in rs])
        for m in TEST + EMBED + HELD + OTHER + EPOCHS:
            s[m] = statistics.median(r[m] for r in rs)
        for m in TEST:
            s[f"{m}_se"] = stderr([r[m] for r in rs])
        s["converged"] = sum(r["q_converged"] and r["g_converged"] for r in rs)
        out.append(s)
    for s in out:
        rq = next((b for b in out if _same(b, s) and b["side"] == "RQ"), None)
        s["r10_vs_rq"] = s["recall@10"] / rq["recall@10"] if rq and rq["recall@10"] else math.nan
    return out


def _same(a: dict, b: dict) -> bool:
    return (a["dataset"], a["task"]) == (b["dataset"], b["task"])


def header(metas: list[dict]) -> list[str]:
    """The markdown lines naming every command that produced a table, with its run details."""
    lines = []
    for m in metas:
        lines += [
            f"Command: `{m['command']}`  ",
            f"Date: {m['date']}; machine: {m['machine']}; torch {m['torch']}, geoopt {m['geoopt']}; "
            f"wall time {m['wall_s'] / 60:.1f} min{_load_text(m)}; settings `{json.dumps(m['settings'])}`.",
            "",
        ]
    return lines


def _load_text(meta: dict) -> str:
    """`` (load average 1/5/15 min at the end: a, b, c)``, or "" for runs that did not record it."""
    load = meta.get("load_average_end")
    return f" (load average 1/5/15 min at the end: {', '.join(map(str, load))})" if load else ""


def config_text(config: dict) -> str:
    """A short label of a config, e.g. ``latent=10 lr=0.001 3x16 c=1 mlp``."""
    curv = f"c={config['c']:g}" + (" learned" if config.get("learn_c") else "")
    shape = config.get("codes") or "default"
    return (
        f"latent={config['latent']} lr={config['lr']:g} {shape} {curv} {config.get('net', 'mlp')}"
    )


def final_markdown(summary: list[dict], metas: list[dict]) -> list[str]:
    """The results table (medians ± standard errors) and the embedding-check table."""
    lines = header(metas) + [
        "| dataset | task | side | setting | seeds | R@1 | R@10 | MRR@10 | R@10 vs RQ | "
        "converged | q epochs (best) | g epochs (best) | final c | prefix-1 lift |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['task']} | {s['side']} | {config_text(s['config'])} | "
            f"{len(s['seeds'])} | {_pm(s, 'recall@1')} | {_pm(s, 'recall@10')} | {_pm(s, 'mrr@10')} | "
            f"{s['r10_vs_rq']:.2f}x | {s['converged']}/{len(s['seeds'])} | "
            f"{s['q_epochs']:.0f} ({s['q_best_epoch']:.0f}) | {s['g_epochs']:.0f} ({s['g_best_epoch']:.0f}) | "
            f"{s['c_final']:.3g} | {s['prefix1_lift']:.2f} |"
        )
    lines += [
        "",
        "Embeddings before and after quantization (medians over seeds): closure reconstruction "
        "(training closure; Nickel & Kiela 2017) and held-out test children ranked against the full "
        "closure, each side with its own distance (hyperbolic for HRQ, Euclidean for RQ).",
        "",
        "| dataset | task | side | embed MAP | embed mean rank | quantized MAP | quantized mean rank | "
        "held-out MAP | held-out mean rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['task']} | {s['side']} | {s['embed_map']:.3f} | "
            f"{s['embed_mean_rank']:.1f} | {s['quant_map']:.3f} | {s['quant_mean_rank']:.1f} | "
            f"{s['embed_heldout_map']:.3f} | {s['embed_heldout_mean_rank']:.1f} |"
        )
    return lines


def _pm(s: dict, metric: str) -> str:
    se = s[f"{metric}_se"]
    return f"{s[metric]:.4f}" + ("" if math.isnan(se) else f" ± {se:.4f}")


def curve_panels(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Validation curves of each dataset's first seed, per task: quantizer and generator panels."""
    panels: dict[str, dict[str, list[float]]] = {}
    first: dict[str, int] = {}
    for r in rows:
        first[r["dataset"]] = min(first.get(r["dataset"], r["seed"]), r["seed"])
    for r in rows:
        if r["seed"] != first[r["dataset"]]:
            continue
        for part, name in (("q", "quantizer"), ("g", "generator")):
            title = f"{r['dataset']} {r['task']}: {name} val loss (seed {r['seed']})"
            panels.setdefault(title, {})[r["side"]] = r["curves"][f"{part}_val"]
    return panels


def write_final(out: str, rows: list[dict], metas: list[dict]) -> None:
    """Write out.json (runs with curves, summary, metadata), out.md and out_curves.png."""
    summary = summarise(rows)
    text = "\n".join(final_markdown(summary, metas)) + "\n"
    write_result(out, {"meta": metas, "summary": summary, "runs": rows}, text, show=False)
    plot_curves(curve_panels(rows), f"{out}_curves.png")
    print(text)


def _mean(rows: list[dict], metric: str) -> float:
    return statistics.mean(r[metric] for r in rows)


def sweep_summary(rows: list[dict]) -> list[str]:
    """One markdown row per swept (task, side, setting): means over seeds, in sweep order."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = json.dumps([r["dataset"], r["task"], r["side"], r["config"]], sort_keys=True)
        groups.setdefault(key, []).append(r)
    lines = [
        "| dataset | task | side | factor | setting | seeds | val R@10 (mean ± se) | test R@10 | "
        "embed MAP | quantized MAP | held-out MAP | converged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rs in groups.values():
        r, n = rs[0], len(rs)
        val_se = stderr([x["val_recall10"] for x in rs])
        lines.append(
            f"| {r['dataset']} | {r['task']} | {r['side']} | {r['factor']} | {config_text(r['config'])} | "
            f"{n} | {_mean(rs, 'val_recall10'):.3f} ± {val_se:.3f} | {_mean(rs, 'recall@10'):.3f} | "
            f"{_mean(rs, 'embed_map'):.3f} | {_mean(rs, 'quant_map'):.3f} | {_mean(rs, 'embed_heldout_map'):.3f} | "
            f"{sum(x['q_converged'] and x['g_converged'] for x in rs)}/{n} |"
        )
    return lines


def sweep_markdown(rows: list[dict], best: list[dict], metas: list[dict]) -> list[str]:
    """The sweep per setting, the chosen setting per (task, side), then every run."""
    lines = header(metas) + sweep_summary(rows)
    lines += ["", "Selected (best mean validation R@10, ties by validation MRR@10):", ""]
    lines += [f"- {b['task']} {b['side']}: {config_text(b['config'])}" for b in best]
    lines += [
        "",
        "Every run:",
        "",
        "| dataset | task | side | factor | setting | val R@10 | val MRR@10 | test R@10 | "
        "embed MAP | embed mean rank | quantized MAP | q epochs (best) | g epochs (best) | final c |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['task']} | {r['side']} | {r['factor']} | {config_text(r['config'])} | "
            f"{r['val_recall10']:.4f} | {r['val_mrr10']:.4f} | {r['recall@10']:.4f} | "
            f"{r['embed_map']:.3f} | {r['embed_mean_rank']:.1f} | {r['quant_map']:.3f} | "
            f"{r['q_epochs']} ({r['q_best_epoch']}) | {r['g_epochs']} ({r['g_best_epoch']}) | "
            f"{r['c_final']:.3g} |"
        )
    return lines


def write_sweep(out: str, rows: list[dict], best: list[dict], metas: list[dict]) -> None:
    """Write out.json (runs with curves, best configs, metadata) and out.md."""
    text = "\n".join(sweep_markdown(rows, best, metas)) + "\n"
    write_result(out, {"meta": metas, "best": best, "runs": rows}, text, show=False)
