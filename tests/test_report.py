"""The run report: built from a synthetic run directory, rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from humpback_ds.config import ReportConfig
from humpback_ds.layout import RunLayout
from humpback_ds.records import Candidate, Pair, Scored, write_json, write_records
from humpback_ds.stages import report as report_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>")

# (score, parsed, expected) of the synthetic candidates of iteration 1; logprob mode has no unparsed
# ratings, so the last one is a generate-mode record.
SCORES = [
    (5, True, 4.8),
    (5, True, 4.6),
    (4, True, 3.9),
    (3, True, 3.1),
    (1, True, 1.4),
    (5, True, 4.7),
    (None, False, None),
]


def _manifest(path: Path, stage: str, wall: float, **extra: object) -> None:
    write_json(
        path, {"stage": stage, "wall_time_s": wall, "started": "2026-01-01T00:00:00", **extra}
    )


def _texts(n: int, base: str) -> list[str]:
    return [f"{base} number {i} " + "with some words " * (3 + 5 * i) for i in range(n)]


def make_run(root: Path, *, with_eval: bool = True) -> RunLayout:
    """A small run directory with every artifact the report reads (no trainer, no model)."""
    lay = RunLayout(root)
    for name, wall, losses in (
        ("backward", 12.5, [3.0, 2.6, 2.2]),
        ("m0", 11.0, [3.1, 2.5, 2.4]),
        ("m1", 14.0, [3.2, 2.7, 2.1, 1.9]),
    ):
        d = lay.model(0).parent / name
        d.mkdir(parents=True)
        lines = [
            json.dumps({"step": i, "loss": v, "lr": 1e-5 - 1e-7 * i}) for i, v in enumerate(losses)
        ]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        _manifest(d / "manifest.json", "train", wall)
    ins, outs = _texts(4, "Explain topic"), _texts(4, "A seed answer")
    write_records(
        lay.seed_data,
        [
            Pair(id=f"s{i}", instruction=a, output=b)
            for i, (a, b) in enumerate(zip(ins, outs, strict=True))
        ],
    )
    _manifest(Path(f"{lay.seed_data}.manifest.json"), "seed", 0.5)
    cand_out = _texts(len(SCORES), "A web segment")
    write_records(
        lay.candidates,
        [
            Candidate(id=f"c{i}", segment_id=f"g{i}", instruction=f"Question {i}?", output=o)
            for i, o in enumerate(cand_out)
        ],
    )
    _manifest(Path(f"{lay.candidates}.manifest.json"), "augment", 30.0)
    scored = [
        Scored(
            id=f"c{i}",
            segment_id=f"g{i}",
            instruction=f"Question {i}?",
            output=cand_out[i],
            mode="logprob" if ok else "generate",
            model="m0",
            score=s,
            parsed=ok,
            expected=e,
            reason="" if ok else "no 'Score: N' found",
        )
        for i, (s, ok, e) in enumerate(SCORES)
    ]
    write_records(lay.scored(1), scored)
    _manifest(Path(f"{lay.scored(1)}.manifest.json"), "curate", 20.0)
    kept = [
        Pair(id=f"c{i}", instruction=f"Question {i}?", output=cand_out[i], source="augmented")
        for i, (s, _, _) in enumerate(SCORES)
        if s == 5
    ]
    write_records(lay.selected(1), kept + [Pair(id="s0", instruction=ins[0], output=outs[0])])
    _manifest(Path(f"{lay.selected(1)}.manifest.json"), "select", 0.2, config={"threshold": 5.0})
    if with_eval:
        prefs = [2.0, 1.75, 1.5, 1.0]
        recs = [
            {"id": str(i), "instruction": f"q{i}", "preference": p} for i, p in enumerate(prefs)
        ]
        write_records_plain(lay.judgement(1, 0), recs)
        wr = {
            "win_rate": 56.25,
            "standard_error": 21.347814095749,
            "discrete_win_rate": 62.5,
            "n_wins": 2,
            "n_wins_base": 1,
            "n_draws": 1,
            "n_total": 4,
        }
        _manifest(
            Path(f"{lay.judgement(1, 0)}.manifest.json"), "judge", 3.0, win_rate=wr, agreement=0.75
        )
    return lay


def write_records_plain(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_shows_every_part_of_a_run(tmp_path: Path) -> None:
    lay = make_run(tmp_path / "run")
    index = report_stage.run(ReportConfig(run_dir=str(lay.root), examples_per_score=1))
    assert index == lay.report
    html = index.read_text()
    images = IMG.findall(html)
    names = [n for n, _ in images]
    assert names == [
        "loss",
        "lr",
        "scores",
        "expected",
        "kept",
        "instruction_lengths",
        "output_lengths",
        "winrate",
        "walltime",
    ]
    for _, data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert "not run yet" not in html
    assert not re.search(r"(src|href)=['\"](https?:|//)", html), "the page must not fetch anything"
    # Numbers from the synthetic run: kept set (3 augmented + 1 seed), wall-time total, win rate.
    assert re.search(
        r"<td[^>]*>iteration 1</td><td[^>]*>5.0</td><td[^>]*>1</td><td[^>]*>3</td>"
        r"<td[^>]*>4</td>",
        html,
    )
    assert "total 91.2 s over 8 stages" in html  # 12.5 + 11 + 14 + 0.5 + 30 + 20 + 0.2 + 3
    assert '<td class="text">56.25</td><td class="text">21.35</td>' in html
    assert "iteration 1: 7 candidates scored (mode generate, logprob), 1 unparsed" in html
    # One example per score label, in score order, the unparsed one last with its reason.
    rows = re.findall(
        r"<tr><td class=\"text\">([^<]*)</td><td class=\"text\">(Question \d\?)</td>", html
    )
    assert rows == [
        ("1", "Question 4?"),
        ("3", "Question 3?"),
        ("4", "Question 2?"),
        ("5", "Question 0?"),
        ("unparsed", "Question 6?"),
    ]
    md = (index.parent / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(figures/(\w+)\.png\)", md)
    assert linked == names
    assert all(
        (index.parent / "figures" / f"{n}.png").read_bytes().startswith(PNG_MAGIC) for n in names
    )
    manifest = json.loads(Path(f"{index}.manifest.json").read_text())
    assert manifest["counts"] == {"sections": 7, "figures": 9, "not_run_yet": 0}


def test_missing_parts_say_not_run_yet(tmp_path: Path) -> None:
    lay = make_run(tmp_path / "run", with_eval=False)
    html = report_stage.run(ReportConfig(run_dir=str(lay.root))).read_text()
    assert html.count("not run yet") == 1
    assert "not run yet: no judgements in" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    index = report_stage.run(ReportConfig(run_dir=str(empty)))
    assert index.read_text().count("class='missing'>not run yet") == 7
    assert IMG.findall(index.read_text()) == []
    md = (index.parent / "report.md").read_text()
    assert md.count("> not run yet") == 7


def _chromium() -> str:
    """The chromium binary, installed with apt when missing and we are root; else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "chromium is not installed and cannot be installed here (not root or no apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(
        ["apt-get", "install", "-y", "chromium"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    found = shutil.which("chromium")
    if not found:
        pytest.skip(
            f"chromium is not installed and `apt-get install chromium` failed: {proc.stderr[-300:]}"
        )
    return found


# Run by the test only (not part of the report): after load, list the images that did not decode.
_PROBE = (
    "<script>window.addEventListener('load',()=>{const b=[...document.images]"
    ".filter(i=>!i.complete||i.naturalWidth===0).map(i=>i.alt);"
    "document.body.setAttribute('data-broken',JSON.stringify(b));"
    "document.body.setAttribute('data-images',String(document.images.length))});</script>"
)


def _chromium_run(binary: str, tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a new profile per launch
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    proc = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    lay = make_run(tmp_path / "run")
    index = report_stage.run(ReportConfig(run_dir=str(lay.root)))
    probe = tmp_path / "probe.html"
    probe.write_text(index.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _chromium_run(
        binary, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()
    )
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="([^"]*)"', dom)
    assert images and broken, f"the probe did not run: {dom[:300]}"
    assert int(images.group(1)) == 9
    assert json.loads(broken.group(1).replace("&quot;", '"')) == []
    shot = tmp_path / "report.png"
    _chromium_run(
        binary,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1100,2400",
        "--hide-scrollbars",
        index.as_uri(),
    )
    assert shot.read_bytes().startswith(PNG_MAGIC)
    if os.environ.get("HUMPBACK_KEEP_SCREENSHOT"):  # to look at the page: set it to a path
        shutil.copy(shot, os.environ["HUMPBACK_KEEP_SCREENSHOT"])
