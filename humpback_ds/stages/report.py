"""The run report: one self-contained HTML page and a Markdown twin, with plots.

Reads whatever a run directory (humpback_ds/layout.py) holds so far: loss curves of every model,
self-curation score histograms per iteration, kept-set sizes, length distributions of seed /
candidates / kept pairs, win rates of the judgements, the wall time of every stage (from the
manifests) and example candidates at each score. A part of the run that has not happened yet shows
"not run yet" instead of failing. Runs in one process; writes `index.html`, `report.md` and
`figures/*.png` into `--output_dir` (default RUN_DIR/report) and a manifest beside index.html.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from humpback_ds import console, winrate
from humpback_ds import report as page
from humpback_ds.config import ConfigError, ReportConfig, to_dict
from humpback_ds.layout import RunLayout
from humpback_ds.manifest import Manifest, read_manifest
from humpback_ds.records import AtomicWriter, ReadStats, iter_json_lines
from humpback_ds.report import Figure, Section, Table

EXAMPLE_CHARS = 400  # characters of an example's output shown in the report
UNPARSED = "unparsed"


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSONL file; a malformed line is skipped (the stage that wrote it counted it)."""
    for _, obj in iter_json_lines(path, ReadStats(str(path)), None, max_bad_fraction=1.0):
        if isinstance(obj, dict):
            yield obj


def _iterations(lay: RunLayout) -> list[int]:
    found = (re.fullmatch(r"iter(\d+)", p.name) for p in lay.root.glob("iter*") if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _not_run(what: str) -> str:
    return f"not run yet: {what}"


def loss_section(lay: RunLayout) -> Section:
    sec = Section("Training loss")
    loss, lr = {}, {}
    for f in sorted(lay.models_dir.glob("*/metrics.jsonl")):
        rows = [r for r in _lines(f) if "step" in r and "loss" in r]
        if rows:
            steps, name = [r["step"] for r in rows], f.parent.name
            loss[name] = (steps, [r["loss"] for r in rows])
            lr[name] = (steps, [r.get("lr", math.nan) for r in rows])
            sec.notes.append(
                f"{name}: {len(rows):,} logged steps, last loss {rows[-1]['loss']:.4f}"
            )
    if not loss:
        return Section(sec.title, missing=_not_run(f"no {lay.models_dir}/*/metrics.jsonl"))
    png = page.line_plot(loss, title="Training loss", xlabel="step", ylabel="loss")
    sec.figures.append(Figure("loss", png, "Loss per optimizer step, every model"))
    png = page.line_plot(lr, title="Learning rate", xlabel="step", ylabel="lr")
    sec.figures.append(Figure("lr", png, "Learning rate (paper: 1e-5 decaying linearly to 9e-6)"))
    return sec


def _score_label(rec: dict[str, Any]) -> str:
    score = rec.get("score")
    return UNPARSED if score is None or not rec.get("parsed", True) else f"{float(score):g}"


def _ordered(counts: Counter) -> dict[str, int]:
    keys = sorted((k for k in counts if k != UNPARSED), key=float)
    return {k: counts[k] for k in keys} | ({UNPARSED: counts[UNPARSED]} if counts[UNPARSED] else {})


def score_section(lay: RunLayout, iters: list[int]) -> Section:
    sec = Section("Self-curation scores")
    panels, expected = {}, {}
    for t in (t for t in iters if lay.scored(t).is_file()):
        counts, modes, exp = Counter(), Counter(), []
        for rec in _lines(lay.scored(t)):
            counts[_score_label(rec)] += 1
            modes[str(rec.get("mode", "?"))] += 1
            if rec.get("expected") is not None:
                exp.append(float(rec["expected"]))
        panels[f"iteration {t}"] = _ordered(counts)
        if exp:
            expected[f"iteration {t}"] = exp
        sec.notes.append(
            f"iteration {t}: {sum(counts.values()):,} candidates scored "
            f"(mode {', '.join(sorted(modes))}), {counts[UNPARSED]:,} unparsed"
        )
    if not panels:
        return Section(sec.title, missing=_not_run("no iter*/scored.jsonl (curate)"))
    png = page.score_panels(panels, title="Ratings per iteration")
    sec.figures.append(Figure("scores", png, "Candidates at each score (logprob mode: the argmax)"))
    if expected:
        bins = [1 + 0.1 * i for i in range(41)]
        png = page.histograms(
            expected, title="Expected score (logprob mode)", xlabel="score", bins=bins
        )
        sec.figures.append(Figure("expected", png, "Distribution of sum_k k * P(k) per iteration"))
    return sec


def kept_section(lay: RunLayout, iters: list[int]) -> Section:
    rows, labels, values = [], [], []
    for t in (t for t in iters if lay.selected(t).is_file()):
        src = Counter(r.get("source", "?") for r in _lines(lay.selected(t)))
        k = (read_manifest(lay.selected(t)) or {}).get("config", {}).get("threshold", "?")
        rows.append(
            [f"iteration {t}", str(k), *(f"{n:,}" for n in (src["seed"], src["augmented"]))]
        )
        rows[-1].append(f"{sum(src.values()):,}")
        labels.append(f"iter {t}")
        values.append(src["augmented"])
    if not rows:
        return Section("Kept sets", missing=_not_run("no iter*/train.jsonl (select)"))
    png = page.bar_plot(labels, values, title="Augmented pairs kept", ylabel="pairs", fmt="%d")
    return Section(
        "Kept sets",
        figures=[Figure("kept", png, "Self-curated pairs kept per iteration")],
        tables=[Table(["iteration", "threshold k", "seed", "augmented", "total"], rows)],
    )


def length_section(lay: RunLayout, iters: list[int]) -> Section:
    sources: dict[str, tuple[Path, str]] = {
        "seed": (lay.seed_data, ""),
        "candidates": (lay.candidates, ""),
    }
    kept = [t for t in iters if lay.selected(t).is_file()]
    if kept:
        sources[f"kept (iter {kept[-1]})"] = (lay.selected(kept[-1]), "augmented")
    ins: dict[str, list[int]] = {}
    outs: dict[str, list[int]] = {}
    for name, (path, only) in sources.items():
        if path.is_file():
            recs = [r for r in _lines(path) if not only or r.get("source") == only]
            ins[name] = [len(r.get("instruction", "")) for r in recs]
            outs[name] = [len(r.get("output", "")) for r in recs]
    if not any(outs.values()):
        return Section("Lengths", missing=_not_run(f"no {lay.seed_data} or {lay.candidates}"))
    bins = [10 ** (i / 10) for i in range(0, 46)]  # 1 .. ~30k characters, log spaced
    figs = []
    for name, data in (("instruction", ins), ("output", outs)):
        png = page.histograms(
            data, title=f"{name.capitalize()} length", xlabel="characters", bins=bins, log_x=True
        )
        figs.append(Figure(f"{name}_lengths", png, f"{name.capitalize()} length (characters)"))
    return Section("Lengths", figures=figs)


def _judgement_summary(path: Path) -> dict[str, Any] | None:
    m = read_manifest(path) or {}
    if isinstance(m.get("win_rate"), dict):
        return {**m["win_rate"], "agreement": m.get("agreement", math.nan)}
    prefs = [r["preference"] for r in _lines(path) if isinstance(r.get("preference"), int | float)]
    return {**winrate.win_rate(prefs).to_dict(), "agreement": math.nan} if prefs else None


def winrate_section(lay: RunLayout) -> Section:
    eval_dir = lay.eval_dir
    files = sorted(p for p in eval_dir.glob("*.jsonl") if not p.name.endswith(".quarantine.jsonl"))
    found = {p.stem: s for p in files if (s := _judgement_summary(p))}
    if not found:
        return Section(
            "Win rates", missing=_not_run(f"no judgements in {eval_dir} (answer, judge)")
        )
    names = list(found)
    wr = [found[n]["win_rate"] for n in names]
    se = [
        0.0 if math.isnan(found[n]["standard_error"]) else found[n]["standard_error"] for n in names
    ]
    fig = page.bar_plot(
        names,
        wr,
        errors=se,
        title="Win rate of A against B (local judge)",
        ylabel="win rate (%)",
        reference=50.0,
    )
    rows = [
        [
            n,
            f"{found[n]['win_rate']:.2f}",
            f"{found[n]['standard_error']:.2f}",
            f"{found[n]['discrete_win_rate']:.2f}",
            f"{found[n]['agreement']:.3f}",
            str(found[n]["n_total"]),
        ]
        for n in names
    ]
    table = Table(
        ["judgement", "win rate", "std. error", "discrete", "order agreement", "pairs"], rows
    )
    return Section(
        "Win rates",
        figures=[Figure("winrate", fig, "Error bars: one standard error")],
        tables=[table],
    )


def walltime_section(lay: RunLayout, skip: Path) -> Section:
    rows = []
    for p in sorted(lay.root.rglob("*manifest.json")):
        if skip in p.parents or not (
            p.name == "manifest.json" or p.name.endswith(".manifest.json")
        ):
            continue
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a manifest being written right now; the next report shows it
        if isinstance(m, dict) and "wall_time_s" in m:
            rows.append(
                (
                    str(p.relative_to(lay.root)),
                    str(m.get("stage", "?")),
                    float(m["wall_time_s"]),
                    str(m.get("started", "")),
                )
            )
    if not rows:
        return Section("Stage wall time", missing=_not_run("no manifests in the run directory"))
    labels = [f"{stage}: {path.replace('.manifest.json', '')}" for path, stage, _, _ in rows]
    fig = page.bar_plot(
        labels, [r[2] for r in rows], title="Wall time per stage", ylabel="seconds", horizontal=True
    )
    table = Table(
        ["manifest", "stage", "wall time (s)", "started"],
        [[p, s, f"{w:,.1f}", st] for p, s, w, st in rows],
    )
    return Section(
        "Stage wall time",
        figures=[Figure("walltime", fig, "From each manifest's wall_time_s")],
        tables=[table],
        notes=[f"total {sum(r[2] for r in rows):,.1f} s over {len(rows)} stages"],
    )


def examples_section(lay: RunLayout, iters: list[int], per_score: int) -> Section:
    scored = [t for t in iters if lay.scored(t).is_file()]
    if not scored:
        return Section("Example candidates", missing=_not_run("no iter*/scored.jsonl (curate)"))
    t = scored[-1]
    picked: dict[str, list[dict[str, Any]]] = {}
    for rec in _lines(lay.scored(t)):
        bucket = picked.setdefault(_score_label(rec), [])
        if len(bucket) < per_score:
            bucket.append(rec)
    rows = []
    for label in _ordered(Counter({k: len(v) for k, v in picked.items()})):
        for r in picked[label]:
            out = r.get("output", "")
            out = out if len(out) <= EXAMPLE_CHARS else out[:EXAMPLE_CHARS] + " [...]"
            rows.append([label, r.get("instruction", ""), out, r.get("reason", "")])
    return Section(
        "Example candidates",
        notes=[f"From iteration {t}, the first {per_score} at each score."],
        tables=[Table(["score", "instruction", "output", "unparsed because"], rows)],
    )


def build_sections(cfg: ReportConfig, out_dir: Path) -> list[Section]:
    lay = RunLayout(cfg.run_dir)
    iters = _iterations(lay)
    builders: list[Callable[[], Section]] = [
        lambda: loss_section(lay),
        lambda: score_section(lay, iters),
        lambda: kept_section(lay, iters),
        lambda: length_section(lay, iters),
        lambda: winrate_section(lay),
        lambda: walltime_section(lay, out_dir),
        lambda: examples_section(lay, iters, cfg.examples_per_score),
    ]
    sections = []
    with console.progress("section") as bar:
        task = bar.add_task("report", total=len(builders))
        for build in builders:
            sections.append(build())
            bar.advance(task)
    return sections


def run(cfg: ReportConfig) -> Path:
    lay = RunLayout(cfg.run_dir)
    if not lay.root.is_dir():
        raise ConfigError(f"report: --run_dir {lay.root} is not a directory")
    if cfg.examples_per_score < 0:
        raise ConfigError("report: --examples_per_score must be >= 0")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else lay.report.parent
    manifest = Manifest("report", to_dict(cfg))
    sections = build_sections(cfg, out_dir)
    title, subtitle = "Humpback run report", f"Run directory: {lay.root.resolve()}"
    index = out_dir / lay.report.name
    n_fig = page.write_figures(sections, out_dir / "figures")
    with AtomicWriter(index) as w:
        w.write_line(page.render_html(title, sections, subtitle))
    with AtomicWriter(out_dir / "report.md") as w:
        w.write_line(page.render_markdown(title, sections, "figures", subtitle))
    missing = [s.title for s in sections if s.missing]
    manifest.counts.update(
        {"sections": len(sections), "figures": n_fig, "not_run_yet": len(missing)}
    )
    manifest.extra["not_run_yet"] = missing
    manifest.write(index)
    rows = [
        (s.title, s.missing or f"{len(s.figures)} figures, {len(s.tables)} tables")
        for s in sections
    ]
    console.show(console.summary_table(f"report -> {index}", rows, ("section", "content")))
    return index
