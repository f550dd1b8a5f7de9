"""HF LLaMA checkpoints: build a tiny one, load one, save one atomically, count its parameters.

A checkpoint is a normal Hugging Face directory: config.json, *.safetensors, generation_config.json
and the tokenizer files; a directory this project wrote also holds manifest.json (written last).

Tokenizer facts (the tiny tokenizer is transformers 5.24's LlamaTokenizer, the class it uses for
LLaMA-1/2 checkpoints, converted from a SentencePiece model trained with LLaMA's settings on the
text of tiny_corpus.py):
- ids: unk 0 "<unk>", bos 1 "<s>", eos 2 "</s>" as in LLaMA; `encode` adds bos, never eos.
- pad: a dedicated "<pad>" (id 3), so a padded position is never text. LLaMA-1/2 checkpoints have
  no pad token: `load_tokenizer` then pads with unk (id 0, which byte fallback never emits), or
  with eos when there is no unk.
- digits are single pieces (split_digits, as in LLaMA): "Score: 5" ends "▁", "5".
- "[INST]" and "[/INST]" are one (non-special) token each; `decode(..., skip_special_tokens=True)`
  keeps them. (Real LLaMA splits them into several pieces.)
- LlamaTokenizer's Metaspace pre-tokenizer folds ONE leading space of a text into the prefix "▁":
  decode(encode(" x")) == "x". Texts without a leading space round-trip exactly, non-ASCII
  included (byte fallback).

Dropout: transformers' LlamaConfig has only `attention_dropout` (on attention probabilities); LLaMA
has no hidden/residual dropout. `set_dropout` sets that and adds residual dropout (LIMA's
"dropout over residual connections", inherited by Humpback §4.1) as forward hooks on each layer's
attention and MLP outputs, i.e. before they are added to the residual stream. Active in train mode
only; nothing of it is saved except `attention_dropout` in config.json (unused at inference).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from humpback_ds import console, dist
from humpback_ds.config import ConfigError, TinyModelConfig, to_dict
from humpback_ds.manifest import Manifest
from humpback_ds.tiny_corpus import VOCAB_RANGE, tokenizer_corpus

PAD_PIECE = "<pad>"
PROMPT_SYMBOLS = ("[INST]", "[/INST]")  # one piece each in the tiny tokenizer
_RESIDUAL_HOOKS = "_humpback_residual_dropout"


class CheckpointError(ConfigError):
    """A path given as a checkpoint is not one; the message names the path and what is expected."""


# --------------------------------------------------------------------------------------------
# Building the tiny model
# --------------------------------------------------------------------------------------------


# LLaMA's SentencePiece trainer settings (normalizer off, digits split, byte fallback), our ids
# for <pad> and the prompt symbols, and one thread so that training is deterministic (the test pins
# identical tokenizer.model bytes across builds and processes).
_SPM_FLAGS = (
    "model_type=bpe byte_fallback=true split_digits=true add_dummy_prefix=true "
    "remove_extra_whitespaces=false normalization_rule_name=identity character_coverage=1.0 "
    "allow_whitespace_only_pieces=true unk_id=0 bos_id=1 eos_id=2 pad_id=3 "
    f"pad_piece={PAD_PIECE} user_defined_symbols={','.join(PROMPT_SYMBOLS)} num_threads=1 "
    "minloglevel=2"
)


def train_tokenizer_model(vocab_size: int, seed: int) -> bytes:
    """A LLaMA-style SentencePiece BPE model (serialized), trained in memory, deterministically."""
    import sentencepiece as spm

    if not VOCAB_RANGE[0] <= vocab_size <= VOCAB_RANGE[1]:
        raise ConfigError(
            f"TinyModelConfig.vocab_size={vocab_size}: the tiny tokenizer's corpus supports "
            f"{VOCAB_RANGE[0]}..{VOCAB_RANGE[1]}; pass --vocab_size in that range"
        )
    flags = dict(flag.split("=", 1) for flag in _SPM_FLAGS.split())
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=tokenizer_corpus(seed), model_writer=buf, vocab_size=vocab_size, **flags
    )
    return buf.getvalue()


def _wrap_tokenizer(sp_dir: Path, max_len: int) -> Any:
    """transformers' LlamaTokenizer converted from sp_dir/tokenizer.model."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(
        str(sp_dir),
        pad_token=PAD_PIECE,
        add_bos_token=True,
        add_eos_token=False,
        extra_special_tokens=[],
        model_max_length=max_len,
        padding_side="left",
    )
    # [INST]/[/INST] stay whole pieces as plain (non-special) added tokens mapped to their ids
    tok.add_tokens(list(PROMPT_SYMBOLS), special_tokens=False)
    return tok


def _check_shape(cfg: TinyModelConfig) -> None:
    for big, small in (("hidden_size", "num_heads"), ("num_heads", "num_kv_heads")):
        a, b = getattr(cfg, big), getattr(cfg, small)
        if b <= 0 or a % b:
            raise ConfigError(
                f"TinyModelConfig: {big}={a} is not a multiple of {small}={b}; change one of them"
            )


def _tiny_llama(cfg: TinyModelConfig, vocab_size: int) -> Any:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        rms_norm_eps=1e-6,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config).float()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return model


def build_tiny_model(cfg: TinyModelConfig) -> Path:
    """Train the tokenizer, initialise the model, save both as one HF checkpoint directory."""
    out = Path(cfg.output_dir)
    _check_shape(cfg)
    if dist.is_main():
        manifest = Manifest("tiny-model", to_dict(cfg))
        with _staging_dir(out) as tmp:
            sp_bytes = train_tokenizer_model(cfg.vocab_size, cfg.seed)
            (tmp / "tokenizer.model").write_bytes(sp_bytes)
            tokenizer = _wrap_tokenizer(tmp, cfg.max_position_embeddings)
            model = _tiny_llama(cfg, len(tokenizer))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        params = count_parameters(model)
        manifest.counts.update(parameters=params, vocab=len(tokenizer))
        manifest.write(out)
        console.show(
            console.summary_table(
                "tiny model",
                [
                    ("parameters", params),
                    ("vocab", len(tokenizer)),
                    ("layers", cfg.num_layers),
                    ("heads / kv heads", f"{cfg.num_heads} / {cfg.num_kv_heads}"),
                    ("path", str(out)),
                ],
            )
        )
    dist.barrier()
    return out


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def check_checkpoint(path: str | Path) -> Path:
    """`path` as a Path if it holds config.json and safetensors weights, else CheckpointError."""
    path = Path(path)
    expected = "a Hugging Face checkpoint directory with config.json and *.safetensors"
    hint = (
        "if it is a stage's output, did that stage finish? A finished stage leaves "
        "manifest.json there."
    )
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory; expected {expected}; {hint}")
    missing = [
        name
        for name, ok in (
            ("config.json", (path / "config.json").is_file()),
            ("*.safetensors", any(path.glob("*.safetensors"))),
        )
        if not ok
    ]
    if missing:
        found = sorted(p.name for p in path.iterdir())[:10] or "nothing"
        raise CheckpointError(
            f"{path}: missing {', '.join(missing)} (found: {found}); expected {expected}; {hint}"
        )
    return path


def load_tokenizer(path: str | Path, *, padding_side: str = "left") -> Any:
    """The checkpoint's tokenizer with a pad token (its own, else unk, else eos)."""
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{path}: no tokenizer (tokenizer.json / tokenizer_config.json); "
            "expected a Hugging Face checkpoint directory"
        )
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32, dropout: float | None = None
) -> Any:
    """A causal LM for plain (non-ZeRO) use, in eval mode; `dropout` see `set_dropout`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(check_checkpoint(path)), dtype=dtype)
    if dropout is not None:
        set_dropout(model, dropout)
    return model.eval()


def _residual_dropout_hook(p: float) -> Any:
    def hook(module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if not module.training or p == 0.0:
            return output
        if isinstance(output, tuple):  # attention returns (attn_output, attn_weights)
            return (torch.nn.functional.dropout(output[0], p, True), *output[1:])
        return torch.nn.functional.dropout(output, p, True)

    return hook


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Attention-probability dropout and residual dropout, both `p`; calling again replaces them."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    model.config.attention_dropout = p
    for handle in getattr(model, _RESIDUAL_HOOKS, []):
        handle.remove()
    handles = []
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p
        for name in ("self_attn", "mlp"):
            child = getattr(module, name, None)
            if isinstance(child, torch.nn.Module) and hasattr(module, "input_layernorm"):
                handles.append(child.register_forward_hook(_residual_dropout_hook(p)))
    setattr(model, _RESIDUAL_HOOKS, handles)


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write safetensors + config + generation config + tokenizer to out_dir atomically.

    Pass `state_dict` (full, consolidated tensors) for a ZeRO-3 model, whose own parameters are
    empty shards. Call it on one rank only.
    """
    out = Path(out_dir)
    with _staging_dir(out) as tmp:
        model.save_pretrained(tmp, state_dict=None if state_dict is None else dict(state_dict))
        tokenizer.save_pretrained(tmp)
    return out


@contextlib.contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """Yields a tmp sibling of `out`; on success fsyncs its files and swaps it into place."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in (p for p in tmp.iterdir() if p.is_file()):
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters; under ZeRO-3 the full (not the local shard's) count."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
