"""The pipeline's bookkeeping: finished steps are skipped, changed ones refused, --force re-runs
exactly the changed step and those downstream. Uses the in-process steps (tiny model, seed,
segment) so it runs in seconds; tests/test_demo.py runs the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from humpback_ds import config as C
from humpback_ds import pipeline
from humpback_ds.layout import RunLayout

SAMPLE = Path(__file__).resolve().parent.parent / "humpback_ds" / "sample_data"


def _run_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[run]
run_dir = "{tmp_path / "run"}"
base_model = "tiny"
seed_input = "{SAMPLE / "oasst" / "messages.jsonl"}"
web_input = ["{SAMPLE / "web"}"]
iterations = 1

[seed]
num_examples = 12
{extra}
"""
    )
    return path


def _first_steps(run_file: Path) -> tuple[C.RunConfig, list[pipeline.Step]]:
    tables = C.load_toml(run_file)
    run = C.build(C.RunConfig, toml_table=tables["run"])
    steps = pipeline.plan(run, tables)
    return run, [s for s in steps if s.name in ("base", "seed", "segment")]


def test_plan_follows_the_method(tmp_path):
    tables = C.load_toml(_run_file(tmp_path))
    tables["run"]["iterations"] = 2
    tables["run"]["eval_prompts"] = "prompts.jsonl"
    run = C.build(C.RunConfig, toml_table=tables["run"])
    steps = pipeline.plan(run, tables)
    assert [s.name for s in steps] == [
        "base",
        "seed",
        "segment",
        "backward",
        "augment",
        "m0",
        "curate1",
        "select1",
        "m1",
        "curate2",
        "select2",
        "m2",
        "answer_m0",
        "answer_m2",
        "judge_m2_vs_m0",
        "report",
    ]
    by = {s.name: s for s in steps}
    lay = RunLayout(tmp_path / "run")
    base = lay.root / "models" / "base"
    # every model starts from the BASE model, never from the previous iteration's (METHOD.md)
    for name in ("backward", "m0", "m1", "m2"):
        assert Path(by[name].cfg.base_model) == base
    assert by["backward"].cfg.task == "backward" and by["m0"].cfg.task == "seed"
    assert by["m2"].cfg.task == "iteration"
    # m{t-1} rates the SAME candidate pool each iteration
    assert Path(by["curate2"].cfg.model) == lay.model(1)
    assert by["curate1"].cfg.candidates == by["curate2"].cfg.candidates == str(lay.candidates)
    assert Path(by["m2"].cfg.data) == lay.selected(2)


def test_stage_tables_cannot_set_paths(tmp_path):
    run_file = _run_file(tmp_path, extra='output = "elsewhere.jsonl"')
    with pytest.raises(C.ConfigError, match=r"\['output'\] are set by the pipeline"):
        _first_steps(run_file)


def test_rerun_skips_and_changes_are_refused_then_forced(tmp_path):
    run, steps = _first_steps(_run_file(tmp_path))
    rows = pipeline.run_steps(steps, run)
    assert [r[1] for r in rows] == ["ran", "ran", "ran"]
    seed_out = RunLayout(run.run_dir).seed_data
    assert len(seed_out.read_text().splitlines()) == 12
    # a second call does no work
    assert [r[1] for r in pipeline.run_steps(steps, run)] == ["skipped"] * 3
    assert [r[1] for r in pipeline.status_rows(steps)] == ["done"] * 3

    # change one seed setting: refused with what changed and how to force it
    tables = C.load_toml(_run_file(tmp_path))
    tables["seed"]["num_examples"] = 10
    steps2 = [s for s in pipeline.plan(run, tables) if s.name in ("base", "seed", "segment")]
    with pytest.raises(pipeline.StageChanged) as e:
        pipeline.run_steps(steps2, run)
    assert "config num_examples: 12 -> 10" in str(e.value) and "--force" in str(e.value)
    assert dict((r[0], r[1]) for r in pipeline.status_rows(steps2))["seed"] == "changed"

    rows = pipeline.run_steps(steps2, run, force=True)
    assert [r[1] for r in rows] == ["skipped", "ran", "skipped"]  # exactly the changed step
    assert len(seed_out.read_text().splitlines()) == 10
    record = json.loads(seed_out.with_name("seed.jsonl.step.json").read_text())
    assert record["state"] == "done" and record["config"]["num_examples"] == 10


def test_changed_input_invalidates_downstream(tmp_path):
    run, steps = _first_steps(_run_file(tmp_path))
    pipeline.run_steps(steps, run)
    # a step that reads the seed data sees a changed input after the seed step re-runs
    tables = C.load_toml(_run_file(tmp_path))
    full = {s.name: s for s in pipeline.plan(run, tables)}
    pipeline.execute(full["seed"], run)
    fp = full["backward"].fingerprint()
    assert str(RunLayout(run.run_dir).seed_data) in fp["inputs"]
    seed_hash = fp["inputs"][str(RunLayout(run.run_dir).seed_data)]
    tables["seed"]["num_examples"] = 5
    reseed = {s.name: s for s in pipeline.plan(run, tables)}["seed"]
    pipeline.execute(reseed, run, force=True)
    assert (
        full["backward"].fingerprint()["inputs"][str(RunLayout(run.run_dir).seed_data)] != seed_hash
    )


def test_status_from_the_run_directory(tmp_path, capsys):
    run_file = _run_file(tmp_path)
    from humpback_ds import cli

    assert cli.main(["status", "--run_dir", str(tmp_path / "nope")]) == 2
    assert "no run.toml" in capsys.readouterr().err
    run, steps = _first_steps(run_file)
    pipeline.run_steps(steps, run)
    pipeline._save_run_file(run, C.load_toml(run_file))
    assert cli.main(["status", "--run_dir", run.run_dir]) == 0
    out = capsys.readouterr().err
    assert "done" in out and "pending" in out and "m1" in out


def test_step_subsets(tmp_path):
    tables = C.load_toml(_run_file(tmp_path))
    run = C.build(C.RunConfig, toml_table=tables["run"])
    steps = pipeline.plan(run, tables)
    names = lambda sub: [s.name for s in sub]  # noqa: E731
    assert names(pipeline.select_steps(steps, "", "", "m0")) == [
        "base",
        "seed",
        "segment",
        "backward",
        "augment",
        "m0",
    ]
    assert names(pipeline.select_steps(steps, "", "curate1", "")) == ["curate1", "select1", "m1"]
    assert names(pipeline.select_steps(steps, "seed,m1", "", "")) == ["seed", "m1"]
    with pytest.raises(C.ConfigError, match=r"unknown step\(s\) \['m7'\]"):
        pipeline.select_steps(steps, "", "", "m7")
