"""Download an HF model repository (config, tokenizer, safetensors) and check that it loads.

usage: python tools/download_model.py huggyllama/llama-7b --local-dir models/llama-7b
           [--revision main] [--include 'GLOB' ...] [--exclude 'GLOB' ...]
           [--endpoint URL] [--token TOKEN] [--backend auto|hub|hf_transfer]

Backends. hub: huggingface_hub.snapshot_download; huggingface_hub >= 1.0 no longer uses hf_transfer
(2.4 warns that HF_HUB_ENABLE_HF_TRANSFER is deprecated), its fast path is Xet (hf_xet), which we
put in high-performance mode (HF_XET_HIGH_PERFORMANCE=1). hf_transfer: parallel HTTP range
requests driven by this script, for endpoints without Xet (mirrors); `auto` picks it when
HF_HUB_ENABLE_HF_TRANSFER=1. Either way: one commit for all files, sizes and hashes checked against
the hub's listing, AutoConfig must load the result, manifest.json records repository, commit, files.
The endpoint is --endpoint, else HF_ENDPOINT, else https://huggingface.co.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.util
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from humpback_ds import console
from humpback_ds.manifest import Manifest

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# This script honours HF_HUB_ENABLE_HF_TRANSFER itself (see above): silence the hub's notice that
# the hub no longer does.
warnings.filterwarnings("ignore", message=".*HF_HUB_ENABLE_HF_TRANSFER.*", category=FutureWarning)

DEFAULT_INCLUDE = [
    "*.json",  # config, generation_config, tokenizer files, safetensors index
    "*.model",  # SentencePiece tokenizer (LLaMA-1/2)
    "*.safetensors",
    "*.txt",  # merges / vocab of BPE tokenizers
]
DEFAULT_EXCLUDE = ["original/*", "*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.onnx", "*.gguf"]
CHUNK_BYTES = 10 * 2**20  # hf_transfer range size (huggingface_hub's former DOWNLOAD_CHUNK_SIZE)
DISK_MARGIN = 1.02  # free space asked for beyond the files' total


class DownloadError(ValueError):
    """The repository, revision, token or disk forbid the download; the message says why."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None  # regular git blobs


@contextmanager
def hub_errors(repo_id: str, revision: str, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub's HTTP errors into DownloadErrors that say what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id!r} at {endpoint}"
    try:
        yield
    except GatedRepoError as e:
        raise DownloadError(
            f"{where} is gated: accept its licence on the model page, then pass --token or set "
            "HF_TOKEN to a token of that account"
        ) from e
    except RevisionNotFoundError as e:
        raise DownloadError(f"{where} has no revision {revision!r}: check --revision") from e
    except RepositoryNotFoundError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise DownloadError(
            f"{where}: repository not found (HTTP {code}). Check the name (owner/name) and "
            "--endpoint; a private or gated repository also answers this way without a valid "
            "token: pass --token or set HF_TOKEN"
        ) from e
    except EntryNotFoundError as e:
        raise DownloadError(f"{where}: a listed file is missing at {revision!r}: {e}") from e
    except HfHubHTTPError as e:
        code = e.response.status_code if e.response is not None else None
        if code in (401, 403):
            raise DownloadError(
                f"{where}: access refused (HTTP {code}); the token is invalid or lacks read "
                "permission: pass --token or set HF_TOKEN"
            ) from e
        raise DownloadError(f"{where}: the hub answered HTTP {code}: {e}") from e


def list_files(
    api: HfApi, repo_id: str, revision: str, include: list[str], exclude: list[str]
) -> tuple[str, list[RemoteFile]]:
    """(commit sha, files matching the patterns) of the repository at `revision`."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    commit = api.repo_info(repo_id, revision=revision).sha
    files = [
        f
        for f in api.list_repo_tree(repo_id, revision=commit, recursive=True)
        if isinstance(f, RepoFile)
    ]
    keep = set(
        filter_repo_objects(
            [f.path for f in files], allow_patterns=include, ignore_patterns=exclude
        )
    )
    chosen = [
        RemoteFile(f.path, f.size, f.lfs.sha256 if f.lfs else None, None if f.lfs else f.blob_id)
        for f in files
        if f.path in keep
    ]
    if not chosen:
        raise DownloadError(
            f"{repo_id}@{revision}: no file matches --include {include} / --exclude {exclude}; "
            f"the repository has: {sorted(f.path for f in files)}"
        )
    return commit, sorted(chosen, key=lambda f: f.path)


def check_disk(local_dir: Path, files: list[RemoteFile]) -> None:
    need = sum(f.size for f in files if not (local_dir / f.path).is_file()) * DISK_MARGIN
    free = shutil.disk_usage(local_dir).free
    if need > free:
        raise DownloadError(
            f"{local_dir}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free; free space or "
            "choose another --local-dir"
        )


def file_ok(path: Path, f: RemoteFile) -> bool:
    """The local file has the listed size and hash (LFS sha256, else git blob sha1)."""
    if not path.is_file() or path.stat().st_size != f.size:
        return False
    h = hashlib.sha256() if f.sha256 else hashlib.sha1(b"blob %d\0" % f.size)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest() == (f.sha256 or f.git_sha1)


@dataclass(frozen=True)
class Request:
    """What to download and how; the CLI options, one for one."""

    repo_id: str
    local_dir: str
    revision: str = "main"
    include: list[str] | None = None  # None: DEFAULT_INCLUDE
    exclude: list[str] | None = None  # None: DEFAULT_EXCLUDE
    endpoint: str | None = None  # None: $HF_ENDPOINT, else https://huggingface.co
    token: str | bool | None = None  # None: $HF_TOKEN or the stored login; False: none
    backend: str = "auto"
    cache_dir: str | None = None
    workers: int = 8
    chunk_bytes: int = CHUNK_BYTES


def fetch_hub(req: Request, commit: str, files: list[RemoteFile], endpoint: str) -> None:
    from huggingface_hub import snapshot_download

    if importlib.util.find_spec("hf_xet") is not None:
        os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")
    snapshot_download(
        req.repo_id, revision=commit, local_dir=req.local_dir, endpoint=endpoint, token=req.token,
        allow_patterns=[f.path for f in files], cache_dir=req.cache_dir, max_workers=req.workers,
    )  # fmt: skip


def resolve(req: Request, commit: str, path: str, endpoint: str) -> tuple[str, dict[str, str]]:
    """A file's final URL (the hub redirects LFS files to a CDN) and the headers to send there.

    The HEAD request also turns auth and gated-repo refusals into the hub's own errors.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(req.repo_id, path, revision=commit, endpoint=endpoint)
    location = get_hf_file_metadata(url, token=req.token, endpoint=endpoint).location
    headers = build_hf_headers(token=req.token)
    if urlparse(location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
    return location, headers


def fetch_hf_transfer(req: Request, commit: str, files: list[RemoteFile], endpoint: str) -> None:
    import hf_transfer

    # hf_transfer holds the GIL for a whole file, so rich cannot redraw on its own: the callback
    # (one call per chunk) advances and redraws the bar.
    todo = [f for f in files if not file_ok(Path(req.local_dir, f.path), f)]
    with console.progress("MB") as bar:
        task = bar.add_task("hf_transfer", total=round(sum(f.size for f in todo) / 1e6, 1))
        done = 0
        for f in todo:
            dest = Path(req.local_dir, f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".incomplete")
            url, headers = resolve(req, commit, f.path, endpoint)
            try:
                hf_transfer.download(
                    url=url, filename=str(tmp), max_files=req.workers, chunk_size=req.chunk_bytes,
                    parallel_failures=min(3, req.workers), max_retries=5, headers=headers,
                    callback=lambda n: (bar.advance(task, n / 1e6), bar.refresh()),
                )  # fmt: skip
            except Exception as e:  # hf_transfer raises bare Exceptions only
                raise DownloadError(
                    f"{url}: hf_transfer failed ({e}); run again (finished files are kept) or "
                    "pass --backend hub"
                ) from e
            tmp.replace(dest)
            done += f.size
            bar.update(task, completed=round(done / 1e6, 1))  # callbacks undercount by 1 B/chunk


def choose_backend(requested: str) -> str:
    wanted = os.environ.get("HF_HUB_ENABLE_HF_TRANSFER", "").lower() in ("1", "true", "yes", "on")
    if requested == "auto":
        requested = "hf_transfer" if wanted else "hub"
    if requested == "hf_transfer" and importlib.util.find_spec("hf_transfer") is None:
        raise DownloadError(
            "the hf_transfer backend needs the hf_transfer package: pip install hf_transfer, or "
            "unset HF_HUB_ENABLE_HF_TRANSFER / pass --backend hub"
        )
    return requested


def download(req: Request) -> Path:
    """Download, verify, write the manifest, print the summary; return the directory."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise DownloadError("HF_HUB_OFFLINE=1 is set: unset it to download")
    endpoint = req.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    endpoint = endpoint.rstrip("/")
    include = req.include or DEFAULT_INCLUDE
    exclude = DEFAULT_EXCLUDE if req.exclude is None else req.exclude
    backend = choose_backend(req.backend)
    local_dir = Path(req.local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    settings = {"repo_id": req.repo_id, "revision": req.revision, "endpoint": endpoint,
                "include": include, "exclude": exclude, "backend": backend}  # fmt: skip
    manifest = Manifest("download", settings)  # never the token
    start = time.perf_counter()
    with hub_errors(req.repo_id, req.revision, endpoint):
        api = HfApi(endpoint=endpoint, token=req.token)
        commit, files = list_files(api, req.repo_id, req.revision, include, exclude)
        check_disk(local_dir, files)
        try:
            fetch = fetch_hf_transfer if backend == "hf_transfer" else fetch_hub
            fetch(req, commit, files, endpoint)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DownloadError(f"{local_dir}: disk full while downloading: {e}") from e
            raise
    seconds = time.perf_counter() - start
    shape = verify(local_dir, files)
    total = sum(f.size for f in files)
    manifest.counts.update(files=len(files), bytes=total)
    manifest.extra.update(commit=commit, files={f.path: f.size for f in files})
    manifest.write(local_dir)
    rows = [("repository", req.repo_id), ("commit", commit), ("backend", backend),
            ("files", len(files)), ("bytes", total), ("seconds", seconds),
            ("MB/s", total / 1e6 / max(seconds, 1e-9)), *shape]  # fmt: skip
    console.show(console.summary_table(f"download -> {local_dir}", rows))
    return local_dir


def verify(local_dir: Path, files: list[RemoteFile]) -> list[tuple[str, object]]:
    """Every file has its listed size and hash, and the directory loads as a transformers config."""
    from transformers import AutoConfig

    bad = [f.path for f in files if not file_ok(local_dir / f.path, f)]
    if bad:
        raise DownloadError(f"{local_dir}: size or hash differs from the hub listing for {bad}; "
                            "delete them and download again")  # fmt: skip
    try:
        config = AutoConfig.from_pretrained(local_dir)
    except (OSError, ValueError) as e:
        raise DownloadError(f"{local_dir}: downloaded, but not loadable as a config: {e}") from e
    keys = ("hidden_size", "num_hidden_layers", "vocab_size")
    return [("model_type", config.model_type), *((k, getattr(config, k, "-")) for k in keys)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("repo_id", help="owner/name on the hub")
    p.add_argument("--local-dir", required=True, help="directory that receives the files")
    p.add_argument("--revision", default="main", help="branch, tag or commit")
    p.add_argument("--include", nargs="+", help=f"globs to fetch (default: {DEFAULT_INCLUDE})")
    p.add_argument("--exclude", nargs="*", help=f"globs to skip (default: {DEFAULT_EXCLUDE})")
    p.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--token", help="access token (default: $HF_TOKEN or the stored login)")
    p.add_argument(
        "--backend",
        choices=["auto", "hub", "hf_transfer"],
        default="auto",
        help="auto: hf_transfer when HF_HUB_ENABLE_HF_TRANSFER=1, else hub (Xet)",
    )
    p.add_argument("--cache-dir", help="huggingface_hub cache (default: $HF_HUB_CACHE)")
    p.add_argument("--workers", type=int, default=8, help="files (hub) / connections (hf_transfer)")
    try:
        download(Request(**vars(p.parse_args(argv))))
    except DownloadError as e:
        sys.exit(f"download_model: {e}")


if __name__ == "__main__":
    main()
