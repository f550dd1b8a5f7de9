"""The DeepSpeed-Inference engine: batched sampling and batched log-prob scoring.

`world / tp_size` replicas split the work; the ranks `[r*T .. r*T+T-1]` form replica r and share one
model through AutoTP (`deepspeed.init_inference`). Work comes as jobs (an id and one or more prompt
rows); jobs are length-sorted and packed into batches by a token budget. Decoding is our own loop
with a KV cache and left padding: greedy is token-for-token HF `generate`, and sampling draws every
row from its own `torch.Generator` seeded from the job id, so a sampled text does not depend on
which batch, replica or restart produced it. Replicas and exactly-once output: humpback_ds.parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from humpback_ds import dist, modeling
from humpback_ds.config import ConfigError, GenerationConfig
from humpback_ds.parts import Replica, replica_layout


def record_seed(base: int, key: str) -> int:
    """A per-record seed from the run seed and the record id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{base}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Job:
    """One unit of work: rows of token ids generated or scored together, written under `id`."""

    id: str
    rows: list[list[int]]
    seeds: list[int] = field(default_factory=list)  # one per row (sampling)
    targets: list[list[tuple[int, int]]] = field(default_factory=list)  # scoring: (position, token)

    @property
    def width(self) -> int:
        return max(len(r) for r in self.rows)


def token_batches(jobs: Sequence[Job], budget: int, new_tokens: int) -> list[list[Job]]:
    """Length-sorted batches whose padded size rows * (longest + new_tokens) stays within budget.

    Shortest first, ties by id, so the order is deterministic; a job over budget runs alone.
    """
    batches: list[list[Job]] = []
    current: list[Job] = []
    rows = 0
    for job in sorted(jobs, key=lambda j: (j.width, j.id)):
        cost = (rows + len(job.rows)) * (job.width + new_tokens)
        if current and cost > budget:
            batches.append(current)
            current, rows = [], 0
        current.append(job)
        rows += len(job.rows)
    if current:
        batches.append(current)
    return batches


class _TensorParallelUnit:
    """The `mpu` DeepSpeed-Inference accepts: without it, init_inference ignores `tp_group` and
    builds the group [0..T-1] on every rank, which breaks every replica but the first."""

    def __init__(self, replica: Replica):
        self.replica = replica

    def get_model_parallel_group(self) -> Any:
        return self.replica.group

    def get_model_parallel_rank(self) -> int:
        return self.replica.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.replica.tp_size


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if dist.cuda_available() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def check(cfg: GenerationConfig) -> None:
    """Decoding settings a user can get wrong, each named with its fix."""
    if cfg.kernel_inject and not dist.cuda_available():
        raise ConfigError("kernel_inject=true needs a GPU; DeepSpeed kernels do not run on CPU")
    if not cfg.greedy and not (cfg.temperature > 0 and 0 < cfg.top_p <= 1):
        raise ConfigError(
            f"sampling needs --temperature > 0 and 0 < --top_p <= 1 (got {cfg.temperature}, "
            f"{cfg.top_p}); for deterministic decoding pass --greedy"
        )
    if cfg.max_new_tokens < 1 or cfg.token_budget < 1:
        raise ConfigError("--max_new_tokens and --token_budget must be >= 1")


class Generator:
    """One model replica under DeepSpeed-Inference, generating and scoring batches of jobs."""

    def __init__(self, cfg: GenerationConfig):
        import deepspeed

        check(cfg)
        dist.init()
        if dist.cuda_available():  # one GPU per local rank (init_inference sets it only for TP)
            torch.cuda.set_device(dist.local_rank())
        self.cfg = cfg
        self.replica = replica_layout(cfg.tp_size)
        self.dtype = resolve_dtype(cfg.dtype)
        self.tokenizer = modeling.load_tokenizer(cfg.model)
        model = modeling.load_model(cfg.model, dtype=self.dtype)
        tp: dict[str, Any] = {"tp_size": cfg.tp_size}
        if cfg.tp_size > 1:
            tp.update(tp_group=self.replica.group, mpu=_TensorParallelUnit(self.replica))
            _avoid_world_shm_allreduce(self.replica)
        self.engine = deepspeed.init_inference(
            model,
            tensor_parallel=tp,
            dtype=self.dtype,
            replace_with_kernel_inject=cfg.kernel_inject,
            max_tokens=model.config.max_position_embeddings,
        )
        self.model = self.engine.module
        self.device = next(self.model.parameters()).device
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.max_positions: int = model.config.max_position_embeddings

    # ---------------------------------------------------------------------------------- inputs
    def encode(self, text: str) -> list[int]:
        # Web text is data: a literal "</s>" in a segment must not become the EOS token.
        return self.tokenizer(text, split_special_tokens=True)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def batches(self, jobs: Sequence[Job], new_tokens: int) -> list[list[Job]]:
        return token_batches(jobs, self.cfg.token_budget, new_tokens)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # -------------------------------------------------------------------------------- sampling
    def _pick(self, logits: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """Next token per row: argmax (greedy), or temperature + top-p from each row's generator."""
        if self.cfg.greedy:
            return logits.argmax(-1)
        logits = logits / self.cfg.temperature
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - self.cfg.top_p
        drop[:, -1] = False
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1).cpu()
        picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)]
        return torch.cat(picks).to(logits.device)

    def _agree(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every rank of a replica continues with TP rank 0's tokens (bitwise-equal ranks)."""
        if self.replica.tp_size > 1:
            import torch.distributed as td

            td.broadcast(tokens, src=self.replica.first_rank, group=self.replica.group)
        return tokens

    def generate(self, batch: list[Job], max_new_tokens: int) -> list[list[str]]:
        """Texts for every row of every job (EOS and what follows removed)."""
        rows = [row for job in batch for row in job.rows]
        seeds = [s for job in batch for s in (job.seeds or [0] * len(job.rows))]
        outs = self.generate_ids(rows, seeds, max_new_tokens)
        texts = [self.decode(o) for o in outs]
        split, at = [], 0
        for job in batch:
            split.append(texts[at : at + len(job.rows)])
            at += len(job.rows)
        return split

    def fits(self, row: list[int]) -> bool:
        """A prompt leaves room for at least one new token (generation stops at the last position)."""
        return len(row) < self.max_positions

    def _prefill(self, rows: list[list[int]], keep: int) -> tuple[Any, Any, Any, Any]:
        """Forward the prompts; returns (logits of the last `keep` positions, cache, mask, last
        position per row). A leading run of tokens shared by every row (the rating rubric of
        curation, ~1,400 tiny / ~550 LLaMA tokens) is computed once and its KV cache repeated;
        the rest of each row follows it left-padded (padding sits between prefix and row)."""
        shared = _common_prefix(*rows) if len(rows) > 1 else 0
        shared = min(shared, min(len(r) for r in rows) - keep)
        cache = None
        if shared >= self.cfg.shared_prefix_min:
            prefix = torch.tensor([rows[0][:shared]], device=self.device)
            cache = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
            cache.batch_repeat_interleave(len(rows))
        else:
            shared = 0
        ids, tail = self._left_pad([r[shared:] for r in rows])
        pos = shared + (tail.cumsum(-1) - 1).masked_fill(tail == 0, 0)
        mask = torch.cat([torch.ones_like(tail[:, :1]).expand(-1, shared), tail], dim=1)
        res = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            cache=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        return res.logits, res.cache, mask, pos[:, -1:]

    @torch.no_grad()
    def generate_ids(
        self, rows: list[list[int]], seeds: list[int], max_new: int
    ) -> list[list[int]]:
        """New token ids per row (EOS removed); `seeds` drive sampling, one generator per row."""
        max_new = min(max_new, self.max_positions - max(len(r) for r in rows))
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out: list[list[int]] = [[] for _ in rows]
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        logits, cache, mask, pos = self._prefill(rows, keep=1)
        for step in range(max_new):
            nxt = self._agree(self._pick(logits[:, -1, :].float(), gens))
            nxt = nxt.masked_fill(done, self.pad)
            for i in (~done).nonzero().flatten().tolist():
                out[i].append(int(nxt[i]))
            done |= nxt == self.eos
            if bool(done.all()) or step == max_new - 1:
                break
            pos = pos + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            res = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits, cache = res.logits, res.cache
        return [o[:-1] if o and o[-1] == self.eos else o for o in out]

    # --------------------------------------------------------------------------------- scoring
    def choice_job(self, job_id: str, context: str, choices: Sequence[str]) -> Job:
        """A job scoring `context + choice` for each choice as a WHOLE continuation.

        A continuation's tokens are those of tokenize(context + choice) past its common prefix
        with tokenize(context) (SentencePiece may put a lone space piece before a digit). When
        all choices differ only in their last token, one row serves them all.
        """
        ctx = self.encode(context)
        fulls = [self.encode(context + c) for c in choices]
        starts = [_common_prefix(ctx, f) for f in fulls]
        shared = _common_prefix(fulls[0], *fulls[1:]) if len(fulls) > 1 else len(fulls[0]) - 1
        targets = [
            [(p - 1, f[p]) for p in range(s, len(f))] for s, f in zip(starts, fulls, strict=True)
        ]
        if all(len(f) == shared + 1 for f in fulls):
            return Job(job_id, [fulls[0][:shared]], targets=targets)
        return Job(job_id, [f[:-1] for f in fulls], targets=targets)

    @torch.no_grad()
    def score(self, batch: list[Job]) -> list[list[float]]:
        """Summed log-probs of each job's targets: one forward pass per batch, logits kept only for
        the trailing positions some target needs (a full [rows, width, vocab] would not fit)."""
        rows = [row for job in batch for row in job.rows]
        reads, at = [], 0  # per job, per choice: (row index, [(distance from row end, token)])
        for job in batch:
            which = [at] * len(job.targets) if len(job.rows) == 1 else range(at, at + len(job.rows))
            reads.append(
                [
                    (r, [(len(rows[r]) - p, t) for p, t in tg])
                    for r, tg in zip(which, job.targets, strict=True)
                ]
            )
            at += len(job.rows)
        keep = max(back for job in reads for _, tg in job for back, _ in tg)
        logp = self._prefill(rows, keep)[0].float().log_softmax(-1).cpu()
        return [
            [sum(float(logp[r, keep - back, t]) for back, t in tg) for r, tg in job]
            for job in reads
        ]


def _common_prefix(first: list[int], *others: list[int]) -> int:
    n = len(first)
    for other in others:
        n = min(n, len(other))
        n = next((i for i in range(n) if first[i] != other[i]), n)
    return n


def _avoid_world_shm_allreduce(replica: Replica) -> None:
    """DeepSpeed's CPU shared-memory all-reduce ignores the group and reduces over the whole world:
    with several TP replicas, fall back to the group's own all-reduce."""
    if replica.count > 1 and not dist.cuda_available():
        import deepspeed.comm.comm as ds_comm

        if ds_comm.cdb is not None:
            ds_comm.cdb.shm_vector_kernel_level = 0
