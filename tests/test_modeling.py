"""modeling.py: the tiny LLaMA build, the tokenizer's LLaMA conventions, loading and saving."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from humpback_ds import modeling
from humpback_ds.config import ConfigError, TinyModelConfig

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The river explains the answer before noon."


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return modeling.load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model: Path):
    return modeling.load_model(tiny_model)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_build_is_deterministic_per_seed(tiny_model: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again = modeling.build_tiny_model(TinyModelConfig(output_dir=str(tmp_path / "again")))
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG stream is untouched
    other = modeling.build_tiny_model(TinyModelConfig(output_dir=str(tmp_path / "other"), seed=1))
    sp = (tiny_model / "tokenizer.model").read_bytes()
    assert (again / "tokenizer.model").read_bytes() == sp
    assert (again / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    assert _same(_weights(again), _weights(tiny_model))
    assert (other / "tokenizer.model").read_bytes() != sp
    base, changed = _weights(tiny_model), _weights(other)
    assert base.keys() == changed.keys()
    assert not any(torch.equal(base[k], changed[k]) for k in base if k.endswith("proj.weight"))
    assert not list(tmp_path.glob(".*tmp-*")), "staging directories left behind"


def test_checkpoint_files_and_manifest(tiny_model: Path, model) -> None:
    names = {p.name for p in tiny_model.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "manifest.json",
    } <= names
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    assert manifest["stage"] == "tiny-model"
    assert manifest["config"]["vocab_size"] == 512 and manifest["config"]["seed"] == 0
    assert manifest["counts"] == {"parameters": 158_016, "vocab": 512}
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 3)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_auto_classes_load_offline(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert isinstance(lm, LlamaForCausalLM)
    assert len(tok) == lm.config.vocab_size == 512
    assert lm.config.tie_word_embeddings is False
    assert not torch.equal(lm.lm_head.weight, lm.model.embed_tokens.weight)


def test_gqa_is_configured(model) -> None:
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size) == (4, 2, 64)
    attn = model.model.layers[0].self_attn
    head_dim = 64 // 4
    assert attn.q_proj.weight.shape == (4 * head_dim, 64)
    assert attn.k_proj.weight.shape == (2 * head_dim, 64)
    assert attn.v_proj.weight.shape == (2 * head_dim, 64)


def test_special_ids_like_llama(tokenizer) -> None:
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 3)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    ids = tokenizer.encode(TEXT)
    assert ids[0] == 1 and 2 not in ids and 3 not in ids  # bos added, never eos
    assert tokenizer.padding_side == "left"
    assert (
        modeling.load_tokenizer(Path(tokenizer.name_or_path), padding_side="right").padding_side
        == "right"
    )


def test_pad_falls_back_to_unk_like_llama(tiny_model: Path, tmp_path: Path) -> None:
    """LLaMA-1/2 checkpoints have no pad token: load_tokenizer pads with unk (id 0)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_model / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = modeling.load_tokenizer(tmp_path)
    assert (tok.pad_token, tok.pad_token_id) == ("<unk>", 0)
    batch = tok(["a", "a b c"], padding=True)["input_ids"]
    assert batch[0][:2] == [0, 0] and batch[0][2] == 1 and len(batch[0]) == len(batch[1])


def test_roundtrip_with_byte_fallback(tokenizer) -> None:
    text = "Crème brûlée für 3 Personen: naïve café, 東京 and a whale 🐋.\n\n- ünïcödé\tend"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids
    # pinned transformers-5 LlamaTokenizer quirk: ONE leading space folds into the prefix "▁"
    assert tokenizer.decode(tokenizer.encode(" x"), skip_special_tokens=True) == "x"
    assert tokenizer.decode(tokenizer.encode("  x"), skip_special_tokens=True) == " x"
    # the whale emoji is exactly its 4 UTF-8 bytes
    whale = tokenizer.encode("🐋", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(whale)[-4:] == ["<0xF0>", "<0x9F>", "<0x90>", "<0x8B>"]


def test_prompt_symbols_are_one_token(tokenizer) -> None:
    for symbol in modeling.PROMPT_SYMBOLS:
        ids = tokenizer.encode(symbol, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [symbol]
        assert ids[0] not in tokenizer.all_special_ids
    prompt = "[INST] How do I keep fresh bread? [/INST] Score: 5"
    pieces = tokenizer.tokenize(prompt)
    assert pieces[0] == "[INST]" and pieces.count("[/INST]") == 1
    assert tokenizer.decode(tokenizer.encode(prompt), skip_special_tokens=True) == prompt


def test_digits_split_like_llama(tiny_model: Path, tokenizer) -> None:
    import sentencepiece as spm

    digits = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(1, 6)]
    assert all(len(ids) == 2 and ids[0] == digits[0][0] for ids in digits)  # "▁" then the digit
    assert tokenizer.tokenize("Score: 12345")[-6:] == ["▁", "1", "2", "3", "4", "5"]
    sp = spm.SentencePieceProcessor(model_file=str(tiny_model / "tokenizer.model"))
    for text in (TEXT, "Score: 12345", '<p class="note">A &amp; B</p>', "## Title\n\n1. One"):
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text)


def test_fresh_forward_loss_near_uniform(tokenizer, model) -> None:
    batch = tokenizer([TEXT], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    t = batch["input_ids"].shape[1]
    assert out.logits.shape == (1, t, 512)
    assert math.isfinite(out.loss.item())
    assert abs(out.loss.item() - math.log(512)) < 0.15


def test_count_parameters_by_hand(model) -> None:
    v, h, i, kv, layers = 512, 64, 176, 32, 2
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    assert modeling.count_parameters(model) == 2 * v * h + layers * per_layer + h == 158_016


def test_save_checkpoint_roundtrip(tiny_model: Path, tokenizer, model, tmp_path: Path) -> None:
    out = modeling.save_checkpoint(model, tokenizer, tmp_path / "copy")
    loaded = modeling.load_model(out)
    assert _same(loaded.state_dict(), model.state_dict())
    assert modeling.load_tokenizer(out).encode(TEXT) == tokenizer.encode(TEXT)
    # an explicit (e.g. ZeRO-3 gathered) state dict wins over the module's own tensors
    shifted = {k: v + 1.0 for k, v in model.state_dict().items()}
    modeling.save_checkpoint(model, tokenizer, out, state_dict=shifted)  # replaces the old one
    assert shifted.keys() == model.state_dict().keys()  # the caller's dict is left intact
    assert _same(modeling.load_model(out).state_dict(), shifted)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no tmp/old siblings


def test_set_dropout(tiny_model: Path, tokenizer, model) -> None:
    ids = tokenizer([TEXT], return_tensors="pt")["input_ids"]
    lm = modeling.load_model(tiny_model, dropout=0.1)
    modeling.set_dropout(lm, 0.1)  # again: replaces, does not stack, the hooks
    assert lm.config.attention_dropout == 0.1
    assert len(getattr(lm, modeling._RESIDUAL_HOOKS)) == 2 * 2  # attn + mlp per layer
    with torch.no_grad():
        reference = model(ids).logits
        assert torch.equal(lm(ids).logits, reference)  # eval mode: no dropout
        lm.train()
        torch.manual_seed(0)
        assert not torch.equal(lm(ids).logits, reference)
        modeling.set_dropout(lm, 0.0)
        assert torch.equal(lm(ids).logits, reference)
    with pytest.raises(ConfigError, match="dropout"):
        modeling.set_dropout(lm, 1.0)


def test_load_model_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "m0"
    with pytest.raises(ValueError, match=rf"{missing}: no such directory.*manifest\.json"):
        modeling.load_model(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        modeling.CheckpointError,
        match=rf"{empty}: missing config\.json, "
        r"\*\.safetensors \(found: nothing\)",
    ):
        modeling.load_model(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(modeling.CheckpointError, match=r"missing \*\.safetensors"):
        modeling.load_model(empty)
    with pytest.raises(modeling.CheckpointError, match=rf"{empty}: no tokenizer"):
        modeling.load_tokenizer(empty)


def test_bad_shape_is_a_config_error(tmp_path: Path) -> None:
    cfg = TinyModelConfig(output_dir=str(tmp_path / "m"), num_heads=3)
    with pytest.raises(ConfigError, match="hidden_size=64 is not a multiple of num_heads=3"):
        modeling.build_tiny_model(cfg)
    cfg = TinyModelConfig(output_dir=str(tmp_path / "m"), num_kv_heads=3)
    with pytest.raises(ConfigError, match="num_heads=4 is not a multiple of num_kv_heads=3"):
        modeling.build_tiny_model(cfg)
    assert not (tmp_path / "m").exists()


def test_vocab_size_outside_the_corpus_range(tmp_path: Path) -> None:
    from humpback_ds import cli

    with pytest.raises(ConfigError, match=r"vocab_size=200: .* supports 360\.\.1600"):
        modeling.train_tokenizer_model(200, seed=0)
    argv = ["tiny-model", f"--output_dir={tmp_path / 'm'}", "--vocab_size=5000"]
    assert cli.main(argv) == 2  # a ConfigError: message on stderr, no traceback
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


def test_cli_builds_the_same_model(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-m", "humpback_ds", "tiny-model", f"--output_dir={out}", "--seed", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "158,016" in proc.stderr  # the summary table's parameter count
    assert (out / "tokenizer.model").read_bytes() == (tiny_model / "tokenizer.model").read_bytes()
    assert _same(_weights(out), _weights(tiny_model))
    assert json.loads((out / "manifest.json").read_text())["output"] == str(out)
