"""One iteration, and the whole run, as straight-line stage calls over one run directory.

`plan` turns a run file into the ordered list of steps (METHOD.md 'The loop'); `execute` runs a
step unless it is already done. A step's provenance (its resolved config and the content hashes of
its inputs) is written to `<output>.step.json`: a re-run with the same provenance is skipped; a
changed one is refused with what changed, unless `--force`, which clears the step's old outputs and
re-runs it (and so, through their changed inputs, exactly the steps downstream of it).

Distributed stages (training, generation) run as a subprocess under launchers/launch.sh, the same
script a user or slurm/*.sh calls; the others run in this process.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humpback_ds import config as C
from humpback_ds import console, dist
from humpback_ds.layout import RunLayout
from humpback_ds.manifest import content_hash, manifest_path, read_manifest
from humpback_ds.records import write_json

ROOT = Path(__file__).resolve().parent.parent
RUN_FILE_COPY = "run.toml"  # the run file, copied into the run directory (status reads it)
DISTRIBUTED = {"train", "augment", "curate", "answer", "judge"}
# Fields the pipeline fills from the run layout; a stage table must not set them.
_PATH_FIELDS = {
    "input",
    "output",
    "output_dir",
    "data",
    "base_model",
    "model",
    "segments",
    "candidates",
    "scored",
    "seed_data",
    "prompts",
    "outputs",
    "reference",
    "run_dir",
    "task",
}


# Settings that do not change a step's result: they are left out of its fingerprint.
OPERATIONAL = {"stop_file", "num_workers", "log_every", "save_every", "max_bad_fraction"}
# Exit code of a stage that checkpointed and stopped on request (trainer.EXIT_PREEMPTED, EX_TEMPFAIL).
EXIT_PREEMPTED = 75


class Preempted(RuntimeError):
    """A step stopped on a pre-emption request after saving its state; re-running resumes it."""


class StageChanged(C.ConfigError):
    """A finished or started step whose config or inputs changed since it ran."""


@dataclass
class Step:
    name: str
    stage: str  # a humpback_ds.cli stage
    cfg: Any
    output: Path
    inputs: list[Path] = field(default_factory=list)

    @property
    def record(self) -> Path:
        return self.output.with_name(self.output.name + ".step.json")

    def fingerprint(self) -> dict[str, Any]:
        resolved = {k: v for k, v in C.to_dict(self.cfg).items() if k not in OPERATIONAL}
        return {
            "config": json.loads(json.dumps(resolved, default=str)),
            "inputs": {str(p): content_hash(p) for p in self.inputs},
        }


def _stage_cfg(stage: str, table: dict[str, Any], paths: dict[str, Any], where: str) -> Any:
    owned = sorted(set(table) & _PATH_FIELDS)
    if owned:
        raise C.ConfigError(
            f"{where}: {owned} are set by the pipeline from the run layout; remove them"
        )
    from humpback_ds.cli import STAGES

    return C.build(STAGES[stage][2], toml_table=table, overrides=paths, toml_path=where)


def _train_table(tables: dict[str, Any], task: str) -> dict[str, Any]:
    common = {k: v for k, v in tables.get("train", {}).items() if not isinstance(v, dict)}
    return {**common, **tables.get("train", {}).get(task, {})}


def base_model_dir(run: C.RunConfig) -> Path:
    return (
        RunLayout(run.run_dir).root / "models" / "base"
        if run.base_model == "tiny"
        else Path(run.base_model)
    )


def iteration_steps(run: C.RunConfig, tables: dict[str, Any], t: int, where: str) -> list[Step]:
    """curate the candidate pool with m{t-1} -> select -> train m{t} from the BASE model."""
    lay, base = RunLayout(run.run_dir), base_model_dir(run)
    curate = _stage_cfg(
        "curate",
        tables.get("curate", {}),
        {
            "model": str(lay.model(t - 1)),
            "candidates": str(lay.candidates),
            "output": str(lay.scored(t)),
        },
        where,
    )
    select = _stage_cfg(
        "select",
        tables.get("select", {}),
        {
            "scored": str(lay.scored(t)),
            "seed_data": str(lay.seed_data),
            "output": str(lay.selected(t)),
        },
        where,
    )
    train = _stage_cfg(
        "train",
        _train_table(tables, "iteration"),
        {
            "task": "iteration",
            "base_model": str(base),
            "data": str(lay.selected(t)),
            "output_dir": str(lay.model(t)),
        },
        where,
    )
    return [
        Step(f"curate{t}", "curate", curate, lay.scored(t), [lay.model(t - 1), lay.candidates]),
        Step(f"select{t}", "select", select, lay.selected(t), [lay.scored(t), lay.seed_data]),
        Step(f"m{t}", "train", train, lay.model(t), [base, lay.selected(t)]),
    ]


def plan(run: C.RunConfig, tables: dict[str, Any], where: str = "run file") -> list[Step]:
    """Every step of a whole run, in order (DESIGN.md 'Data flow')."""
    lay, base = RunLayout(run.run_dir), base_model_dir(run)
    steps: list[Step] = []
    if run.base_model == "tiny":
        tiny = C.build(
            C.TinyModelConfig,
            toml_table=tables.get("tiny_model", {}),
            overrides={"output_dir": str(base)},
            toml_path=where,
        )
        steps.append(Step("base", "tiny-model", tiny, base))
    seed = _stage_cfg(
        "seed",
        tables.get("seed", {}),
        {"input": run.seed_input, "output": str(lay.seed_data)},
        where,
    )
    segment = _stage_cfg(
        "segment",
        tables.get("segment", {}),
        {"input": run.web_input, "output": str(lay.segments)},
        where,
    )
    backward = _stage_cfg(
        "train",
        _train_table(tables, "backward"),
        {
            "task": "backward",
            "base_model": str(base),
            "data": str(lay.seed_data),
            "output_dir": str(lay.backward_model),
        },
        where,
    )
    augment = _stage_cfg(
        "augment",
        tables.get("augment", {}),
        {
            "model": str(lay.backward_model),
            "segments": str(lay.segments),
            "output": str(lay.candidates),
        },
        where,
    )
    m0 = _stage_cfg(
        "train",
        _train_table(tables, "seed"),
        {
            "task": "seed",
            "base_model": str(base),
            "data": str(lay.seed_data),
            "output_dir": str(lay.model(0)),
        },
        where,
    )
    steps += [
        Step("seed", "seed", seed, lay.seed_data, [Path(run.seed_input)]),
        Step("segment", "segment", segment, lay.segments, [Path(p) for p in run.web_input]),
        Step("backward", "train", backward, lay.backward_model, [base, lay.seed_data]),
        Step("augment", "augment", augment, lay.candidates, [lay.backward_model, lay.segments]),
        Step("m0", "train", m0, lay.model(0), [base, lay.seed_data]),
    ]
    for t in range(1, run.iterations + 1):
        steps += iteration_steps(run, tables, t, where)
    if run.eval_prompts:
        steps += eval_steps(run, tables, where)
    return steps


def eval_steps(run: C.RunConfig, tables: dict[str, Any], where: str) -> list[Step]:
    """Answers of m0 and the last model, the pairwise judgement, and the report."""
    lay, last = RunLayout(run.run_dir), run.iterations
    steps = []
    for t in sorted({0, last}):
        cfg = _stage_cfg(
            "answer",
            tables.get("answer", {}),
            {
                "model": str(lay.model(t)),
                "prompts": run.eval_prompts,
                "output": str(lay.eval_outputs(t)),
            },
            where,
        )
        steps.append(
            Step(
                f"answer_m{t}",
                "answer",
                cfg,
                lay.eval_outputs(t),
                [lay.model(t), Path(run.eval_prompts)],
            )
        )
    if last > 0:
        judge_model = Path(run.judge_model) if run.judge_model else lay.model(last)
        cfg = _stage_cfg(
            "judge",
            tables.get("judge", {}),
            {
                "model": str(judge_model),
                "outputs": str(lay.eval_outputs(last)),
                "reference": str(lay.eval_outputs(0)),
                "output": str(lay.judgement(last, 0)),
            },
            where,
        )
        steps.append(
            Step(
                f"judge_m{last}_vs_m0",
                "judge",
                cfg,
                lay.judgement(last, 0),
                [judge_model, lay.eval_outputs(last), lay.eval_outputs(0)],
            )
        )
    report = C.build(
        C.ReportConfig,
        toml_table=tables.get("report", {}),
        overrides={"run_dir": run.run_dir},
        toml_path=where,
    )
    watched = [
        lay.seed_data,
        lay.candidates,
        *[lay.selected(t) for t in range(1, last + 1)],
        *[s.output for s in steps],
    ]
    steps.append(Step("report", "report", report, lay.report, watched))
    return steps


# ------------------------------------------------------------------------------------------------
# Executing steps
# ------------------------------------------------------------------------------------------------


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(old.get("config", {})) | set(new["config"])):
        a, b = old.get("config", {}).get(key), new["config"].get(key)
        if a != b:
            changes.append(f"config {key}: {a!r} -> {b!r}")
    for path in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        if old.get("inputs", {}).get(path) != new["inputs"].get(path):
            changes.append(f"input {path} changed")
    return changes


def state(step: Step) -> tuple[str, list[str]]:
    """('done' | 'changed' | 'running' | 'pending', what changed)."""
    if not step.record.is_file():
        return "pending", []
    old = json.loads(step.record.read_text(encoding="utf-8"))
    changes = _diff(old, step.fingerprint())
    if changes:
        return "changed", changes
    if manifest_path(step.output).is_file() and old.get("state") == "done":
        return "done", []
    return "running", []  # started with this provenance, not finished: resume it


def clear(step: Step) -> None:
    """Remove a step's outputs before a forced re-run (stale checkpoints or part files would resume)."""
    out = step.output
    for path in (
        out,
        manifest_path(out),
        out.with_name(out.name + ".parts"),
        out.with_name(out.name + ".quarantine.jsonl"),
    ):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def launch_command(stage: str, args: list[str], run: C.RunConfig, port: str) -> list[str]:
    """launchers/launch.sh on this node, or under Slurm (HUMPBACK_LAUNCHER=srun) one srun task per
    node of the job, each starting launch.sh for its node; the first node is the rendezvous."""
    launch_sh = str(ROOT / "launchers" / "launch.sh")
    if os.environ.get("HUMPBACK_LAUNCHER", "local") != "srun":
        return ["bash", launch_sh, stage, *args]
    nnodes = os.environ.get("SLURM_JOB_NUM_NODES", str(run.nnodes))
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    per_node = (
        'exec bash "$0" --no_ssh --node_rank "$SLURM_NODEID" --nnodes "$1" '
        '--master_addr "$2" --master_port "$3" -- "${@:4}"'
    )
    return [
        "srun",
        f"--nodes={nnodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "bash",
        "-c",
        per_node,
        launch_sh,
        nnodes,
        nodes[0],
        port,
        stage,
        *args,
    ]


def launch(step: Step, run: C.RunConfig) -> None:
    """Run a stage: in this process, or under launchers/launch.sh for distributed stages."""
    if step.stage not in DISTRIBUTED:
        from humpback_ds.cli import STAGES

        module, func, _, _ = STAGES[step.stage]
        getattr(importlib.import_module(module), func)(step.cfg)
        return
    table = step.stage.replace("-", "_")
    run_file = step.output.with_name(step.output.name + ".step.toml")
    run_file.parent.mkdir(parents=True, exist_ok=True)
    values = C.to_dict(step.cfg)
    stop_file = os.environ.get("HUMPBACK_STOP_FILE", "")
    if "stop_file" in values and stop_file:
        values["stop_file"] = stop_file  # slurm/*.sh creates it on USR1 (pre-emption)
    body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in values.items())
    run_file.write_text(f"[{table}]\n{body}\n", encoding="utf-8")
    env = dict(os.environ)
    if run.nproc:
        env["NPROC"] = str(run.nproc)
    env.setdefault("MASTER_PORT", str(dist.free_port()))
    cmd = launch_command(step.stage, ["--config", str(run_file)], run, env["MASTER_PORT"])
    console.console.print(f"[bold]{step.name}[/]: {' '.join(cmd)}")
    result = subprocess.run(cmd, env=env, check=False)
    # srun --kill-on-bad-exit can report another status than the trainer's 75 (the other node's
    # task was killed): a failed step whose stop file exists was stopped on request.
    asked_to_stop = bool(stop_file) and Path(stop_file).exists()
    if result.returncode == EXIT_PREEMPTED or (result.returncode != 0 and asked_to_stop):
        raise Preempted(f"step {step.name} checkpointed and stopped on request; re-run to resume")
    if result.returncode != 0:
        raise RuntimeError(
            f"step {step.name} ({step.stage}) failed with exit code {result.returncode}; "
            f"fix the error above and re-run: finished steps are skipped"
        )


def execute(step: Step, run: C.RunConfig, *, force: bool = False) -> str:
    """Run one step unless done; returns 'skipped' or 'ran'."""
    status, changes = state(step)
    if status == "done":
        return "skipped"
    if status == "changed":
        if not force:
            raise StageChanged(
                f"step '{step.name}' ({step.output}) ran with other settings:\n  "
                + "\n  ".join(changes)
                + "\nRe-run with --force to redo it and the steps downstream, or restore the old value."
            )
        clear(step)
    write_json(step.record, {"state": "running", **step.fingerprint()})
    start = time.time()
    launch(step, run)
    if not manifest_path(step.output).is_file():
        raise RuntimeError(
            f"step {step.name} finished without writing {manifest_path(step.output)}"
        )
    wall = round(time.time() - start, 1)
    write_json(step.record, {"state": "done", "wall_time_s": wall, **step.fingerprint()})
    return "ran"


def run_steps(
    steps: list[Step], run: C.RunConfig, *, force: bool = False, title: str = "run"
) -> list[tuple]:
    """Execute the steps in order; print a summary table of what each did."""
    rows = []
    for step in steps:
        outcome = execute(step, run, force=force)
        rows.append((step.name, outcome, *summary(step)))
    columns = ("step", "this call", "records", "result", "wall s")
    console.show(console.summary_table(title, rows, columns))
    if all(r[1] == "skipped" for r in rows):
        console.console.print(f"nothing to do: all {len(rows)} steps of {title} are already done")
    return rows


def _records(counts: dict[str, Any]) -> Any:
    """Records a step wrote; a model directory reports the examples it trained on."""
    return counts.get("written", counts.get("examples", ""))


def summary(step: Step) -> tuple[Any, str, Any]:
    """(records written, what the step found, wall seconds) from its manifest and step record."""
    m = read_manifest(step.output) or {}
    counts, result = m.get("counts", {}), ""
    if step.stage == "train":
        metrics = step.output / "metrics.jsonl"
        first = json.loads(metrics.open().readline())["loss"] if metrics.is_file() else None
        if first is not None and "final_loss" in m:
            result = f"loss {first:.3f} -> {m['final_loss']:.3f} in {counts.get('steps')} steps"
    elif step.stage == "curate":
        hist = " ".join(f"{k}:{v}" for k, v in m.get("score_histogram", {}).items())
        result = f"scores {hist}; unparsed {counts.get('unparsed', 0)}"
    elif step.stage == "select":
        result = f"kept {counts.get('kept')} of {counts.get('scored')} + {counts.get('seed')} seed"
    elif step.stage == "judge" and "win_rate" in m:
        wr = m["win_rate"]
        result = f"win rate {wr['win_rate']:.1f} +- {wr['standard_error']:.1f}"
    elif m.get("rejected"):
        result = "rejected " + ", ".join(f"{k} {v}" for k, v in m["rejected"].items() if v)
    record = json.loads(step.record.read_text()) if step.record.is_file() else {}
    wall = record.get("wall_time_s", m.get("wall_time_s"))
    return _records(counts), result, "" if wall is None else f"{wall:.1f}"


def status_rows(steps: list[Step]) -> list[tuple]:
    rows = []
    for step in steps:
        st, changes = state(step)
        records, result, wall = summary(step) if st == "done" else ("", "", "")
        rows.append((step.name, st, records, "; ".join(changes)[:80] or result, wall))
    return rows


def _parse_args(command: str, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pipeline options (--config, --iteration, --force); the rest are [run] overrides."""
    opts: dict[str, Any] = {
        "config": "",
        "iteration": 0,
        "force": False,
        "steps": "",
        "from": "",
        "until": "",
    }
    rest: list[str] = []
    i = 0
    while i < len(argv):
        key, eq, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if key == "force":
            opts["force"] = True
        elif key in ("config", "iteration", "steps", "from", "until"):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            opts[key] = value
        else:
            rest.append(argv[i])
        i += 1
    try:
        opts["iteration"] = int(opts["iteration"])
    except ValueError:
        raise C.ConfigError(f"{command}: --iteration must be an integer") from None
    return opts, rest


def main(command: str, argv: list[str]) -> int:
    """`run --config RUN.toml [--force] [--steps a,b | --from A --until B] [--<run field>=v ...]`,
    `iterate --config RUN.toml --iteration T [--force]`, `status --run_dir DIR` (or --config)."""
    opts, rest = _parse_args(command, argv)
    overrides = C.parse_overrides(C.RunConfig, rest)
    if not opts["config"] and "run_dir" in overrides:
        opts["config"] = str(Path(overrides["run_dir"]) / RUN_FILE_COPY)
        if not Path(opts["config"]).is_file():
            raise C.ConfigError(
                f"{overrides['run_dir']}: no {RUN_FILE_COPY}; was it made by "
                "`humpback-ds run`? Pass --config RUN.toml instead"
            )
    if not opts["config"]:
        raise C.ConfigError(f"{command}: --config RUN.toml is required")
    tables = C.load_toml(opts["config"])
    if "run" not in tables:
        raise C.ConfigError(f"{opts['config']}: no [run] table; see launchers/demo.toml")
    run = C.build(
        C.RunConfig, toml_table=tables["run"], overrides=overrides, toml_path=opts["config"]
    )
    tables["run"] = C.to_dict(run)
    steps = plan(run, tables, where=opts["config"])
    if command == "status":
        rows = status_rows(steps)
        columns = ("step", "state", "records", "result / changes", "wall s")
        console.show(console.summary_table(f"status of {run.run_dir}", rows, columns))
        return 0
    _save_run_file(run, tables)
    if command == "iterate":
        t = opts["iteration"]
        if not 1 <= t <= max(run.iterations, 1):
            raise C.ConfigError(f"--iteration must be in 1..{run.iterations}, got {t}")
        steps = iteration_steps(run, tables, t, opts["config"])
    steps = select_steps(steps, opts["steps"], opts["from"], opts["until"])
    run_steps(steps, run, force=opts["force"], title=f"{command} {run.run_dir}")
    return 0


def select_steps(steps: list[Step], names: str, first: str, last: str) -> list[Step]:
    """`--steps a,b`, `--from NAME`, `--until NAME` (inclusive): a subset of the plan, in order."""
    known = [s.name for s in steps]
    wanted = names.split(",") if names else []
    unknown = sorted({*wanted, first, last} - {"", *known})
    if unknown:
        raise C.ConfigError(f"unknown step(s) {unknown}; this run has {known}")
    lo = known.index(first) if first else 0
    hi = known.index(last) if last else len(known) - 1
    return [s for i, s in enumerate(steps) if lo <= i <= hi and (not wanted or s.name in wanted)]


def _save_run_file(run: C.RunConfig, tables: dict[str, Any]) -> None:
    """Keep the resolved run file in the run directory: `status --run_dir` plans from it."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
        for sub, subtable in nested.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in subtable.items()]
        lines.append("")
    path = Path(run.run_dir) / RUN_FILE_COPY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], sys.argv[2:]))
