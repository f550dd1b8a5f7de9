"""Config precedence, type checking and clear errors (defaults < TOML < --field=value)."""

from __future__ import annotations

import pytest

from humpback_ds import cli
from humpback_ds.config import ConfigError, SegmentConfig, TrainConfig, build, parse_overrides


def test_defaults_are_the_papers():
    cfg = build(
        TrainConfig, overrides={"task": "seed", "base_model": "b", "data": "d", "output_dir": "o"}
    )
    assert (cfg.lr, cfg.final_lr, cfg.weight_decay, cfg.dropout) == (1e-5, 9e-6, 0.1, 0.1)
    assert (cfg.adam_beta1, cfg.adam_beta2) == (0.9, 0.95)
    seg = build(SegmentConfig, overrides={"input": ["x"], "output": "y"})
    assert (seg.min_chars, seg.max_chars) == (600, 3000)


def test_precedence_defaults_toml_cli(tmp_path):
    run = tmp_path / "run.toml"
    run.write_text('[segment]\ninput = ["a", "b"]\noutput = "from_toml"\nmin_chars = 500\n')
    cfg = cli.parse("segment", ["--config", str(run), "--min_chars=700", "--num_workers", "2"])
    assert cfg.input == ["a", "b"]
    assert cfg.output == "from_toml"
    assert cfg.min_chars == 700  # command line beats the run file
    assert cfg.num_workers == 2
    assert cfg.max_chars == 3000  # default


def test_list_and_bool_overrides():
    out = parse_overrides(SegmentConfig, ["--input", "a", "b", "c", "--output=o"])
    assert out == {"input": ["a", "b", "c"], "output": "o"}
    out = parse_overrides(TrainConfig, ["--packing", "false", "--seed", "3"])
    cfg = build(
        TrainConfig,
        overrides={**out, "task": "seed", "base_model": "b", "data": "d", "output_dir": "o"},
    )
    assert cfg.packing is False and cfg.seed == 3


def test_unknown_key_lists_valid_ones_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_overrides(SegmentConfig, ["--min_char=5"])
    msg = str(e.value)
    assert "unknown key 'min_char'" in msg and "Did you mean 'min_chars'?" in msg
    assert "Valid keys:" in msg and "max_chars" in msg
    run = tmp_path / "run.toml"
    run.write_text("[segment]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"run.toml: unknown key 'bogus'"):
        cli.parse("segment", ["--config", str(run), "--input", "x", "--output", "y"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "forward"], r"'task' must be one of \['backward', 'seed', 'iteration'\]"),
        (["--lr", "fast"], r"'lr' must be float, got 'fast'"),
        (["--packing", "maybe"], r"'packing' must be true or false"),
        (["--seed", "1.5"], r"'seed' must be int"),
    ],
)
def test_bad_values_name_the_field(argv, message):
    base = ["--task", "seed", "--base_model", "b", "--data", "d", "--output_dir", "o"]
    with pytest.raises(ConfigError, match=message):
        cli.parse("train", base + argv)


def test_missing_required_fields_say_how_to_pass_them():
    with pytest.raises(
        ConfigError, match=r"missing required field\(s\) \['output'\]; pass --output"
    ):
        cli.parse("segment", ["--input", "x"])


def test_bad_toml_and_missing_run_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[segment\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        cli.parse("segment", ["--config", str(bad)])
    with pytest.raises(ConfigError, match="does not exist"):
        cli.parse("segment", ["--config", str(tmp_path / "nope.toml")])


def test_cli_exit_codes_and_help(capsys):
    assert cli.main(["segment", "--help"]) == 0
    assert "--min_chars" in capsys.readouterr().out
    assert cli.main(["segment", "--input", "x", "--bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert cli.main(["nope"]) == 2
    # the deepspeed launcher's injected --local_rank is accepted and ignored
    assert cli._strip_local_rank(["--local_rank=1", "train", "--x", "1"]) == ["train", "--x", "1"]
    assert cli._strip_local_rank(["train", "--local_rank", "0", "--x", "1"]) == [
        "train",
        "--x",
        "1",
    ]


def test_pipeline_commands_have_help(capsys):
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "humpback-ds iterate --config RUN.toml --iteration T" in out and "--run_dir" in out
