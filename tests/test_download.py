"""tools/download_model.py against a local stand-in of the hub's file endpoints (no network).

The stand-in serves what huggingface_hub 2.x calls for a download: model info
(/api/models/{repo}/revision/{rev}), the recursive tree listing (/api/models/{repo}/tree/{rev}) and
/{repo}/resolve/{rev}/{path} (HEAD and GET, ETag / X-Repo-Commit / Content-Length, byte ranges
for hf_transfer), with the X-Error-Code headers the hub uses for missing repos, revisions and files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_tool(name: str):
    """Import tools/<name>.py (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


download_model = load_tool("download_model")

REPO = "acme/tiny-llama"
PRIVATE = "acme/private-llama"
BROKEN = "acme/broken-llama"  # listed, but every file download answers 404
NO_RANGE = "acme/no-range-llama"  # a server that ignores Range headers (hf_transfer needs them)
GATED = "acme/gated-llama"  # listed, but files answer 403 GatedRepo (licence not accepted)
TOKEN = "hf_test_token_0123"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".model")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    """An HTTP server holding {repo: {path: bytes}} at one commit; logs every request.

    It runs in a forked process: hf_transfer holds the GIL for a whole download, so a server
    thread in the test process would never answer.
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], log: Path):
        self.repos = repos
        self.log = log
        self.log.write_text("")
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Queue()
        self.process = ctx.Process(target=self.serve, args=(ready,), daemon=True)
        self.process.start()
        self.url = f"http://127.0.0.1:{ready.get(timeout=30)}"

    def serve(self, ready) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        ready.put(server.server_address[1])
        server.serve_forever()

    def close(self) -> None:
        self.process.kill()
        self.process.join()

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        """(method, path, Range header) of every request since the last clear()."""
        return [tuple(json.loads(line)) for line in self.log.read_text().splitlines()]

    def clear(self) -> None:
        self.log.write_text("")

    def entry(self, path: str, data: bytes) -> dict:
        out = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        if path.endswith(LFS_SUFFIXES):
            out["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        return out

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.route(body=False)

            def do_GET(self) -> None:
                self.route(body=True)

            def reply(self, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(code)
                for k, v in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def error(self, code: int, error_code: str, body: bool) -> None:
                self.reply(code, b'{"error": "x"}', {"X-Error-Code": error_code}, body)

            def route(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                with hub.log.open("a") as f:
                    f.write(json.dumps([self.command, path, self.headers.get("Range")]) + "\n")
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
                r = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                repo, rev = (
                    (m.group(1), m.group(3)) if m else (r.group(1), r.group(2)) if r else ("", "")
                )
                if repo not in hub.repos:
                    return self.error(404, "RepoNotFound", body)
                if repo == PRIVATE and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.error(401, "RepoNotFound", body)
                if rev not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound", body)
                files = hub.repos[repo]
                if m and m.group(2) == "revision":
                    siblings = [{"rfilename": p} for p in files]
                    info = {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}
                    return self.reply(200, json.dumps(info).encode(), {}, body)
                if m:
                    listing = [hub.entry(p, d) for p, d in files.items()]
                    return self.reply(200, json.dumps(listing).encode(), {}, body)
                if repo == GATED:
                    return self.error(403, "GatedRepo", body)
                if r.group(3) not in files or repo == BROKEN:
                    return self.error(404, "EntryNotFound", body)
                self.serve_file(files[r.group(3)], hub.entry(r.group(3), files[r.group(3)]), body)

            def serve_file(self, data: bytes, entry: dict, body: bool) -> None:
                etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if rng is None or self.path.startswith(f"/{NO_RANGE}/"):
                    return self.reply(200, data, headers, body)
                start = int(rng.group(1))
                end = min(int(rng.group(2) or len(data) - 1), len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self.reply(206, data[start : end + 1], headers, body)

        return Handler


def tiny_checkpoint(out: Path) -> dict[str, bytes]:
    """A tiny random LlamaForCausalLM saved as safetensors, plus files the defaults must skip."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    files["README.md"] = b"# tiny llama\nA stand-in written for the downloader test.\n"
    files["pytorch_model.bin"] = b"legacy pickle weights the default patterns skip"
    files["original/consolidated.00.pth"] = b"meta-format weights the default patterns skip"
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    files = tiny_checkpoint(tmp_path_factory.mktemp("served"))
    hub = Hub(
        {REPO: files, PRIVATE: files, BROKEN: files, GATED: files, NO_RANGE: files},
        tmp_path_factory.mktemp("hub") / "requests.jsonl",
    )
    yield hub, files
    hub.close()


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest makes the session offline; these tests talk to 127.0.0.1 only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_ENABLE_HF_TRANSFER", raising=False)
    monkeypatch.setenv("HF_TOKEN", "")


def fetch(hub: Hub, tmp_path: Path, repo: str = REPO, **kw) -> Path:
    kw.setdefault("token", False)
    local_dir, cache_dir = str(tmp_path / "model"), str(tmp_path / "cache")
    request = download_model.Request(repo, local_dir, endpoint=hub.url, cache_dir=cache_dir, **kw)
    return download_model.download(request)


def check_model(out: Path, files: dict[str, bytes]) -> None:
    """The default patterns fetched exactly the HF files, byte-identical, and the model loads."""
    import torch
    from transformers import AutoModelForCausalLM

    expected = {"config.json", "generation_config.json", "model.safetensors"}
    assert expected == {p for p in files if p.endswith((".json", ".safetensors"))}
    got = {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts
    }
    assert got == expected | {"manifest.json"}
    for name in expected:
        assert (out / name).read_bytes() == files[name], name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert (
        sum(p.numel() for p in model.parameters())
        == 2 * 96 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32
    )  # embed + lm_head + layers (q, o; GQA k, v; MLP; norms) + final norm
    ids = torch.tensor([[1, 5, 9]])
    assert model(ids).logits.shape == (1, 3, 96)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["commit"] == COMMIT
    assert manifest["counts"] == {"files": 3, "bytes": sum(len(files[n]) for n in expected)}


def test_hub_backend_downloads_identical_files(served, tmp_path: Path) -> None:
    hub, files = served
    hub.clear()
    out = fetch(hub, tmp_path, backend="auto")
    check_model(out, files)
    gets = {p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}
    assert not any(p.endswith((".bin", ".pth", "README.md")) for p in gets)


def test_hf_transfer_backend_uses_ranges(served, tmp_path: Path, monkeypatch) -> None:
    hub, files = served
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "1")  # the env switch selects hf_transfer
    hub.clear()
    out = fetch(hub, tmp_path, chunk_bytes=4096)
    check_model(out, files)
    ranges = [rng for _, p, rng in hub.requests if p.endswith("model.safetensors") and rng]
    assert len(ranges) >= len(files["model.safetensors"]) // 4096  # parallel ranged requests


def test_include_and_commit_revision(served, tmp_path: Path) -> None:
    hub, files = served
    out = fetch(hub, tmp_path, revision=COMMIT, include=["config.json"], backend="hub")
    assert (out / "config.json").read_bytes() == files["config.json"]
    assert not (out / "model.safetensors").exists()


def test_rerun_skips_verified_files(served, tmp_path: Path) -> None:
    hub, files = served
    fetch(hub, tmp_path, backend="hf_transfer")
    hub.clear()
    fetch(hub, tmp_path, backend="hf_transfer")
    assert not [p for m, p, _ in hub.requests if "/resolve/" in p]


def test_private_repo_needs_token(served, tmp_path: Path) -> None:
    hub, files = served
    with pytest.raises(download_model.DownloadError, match="HTTP 401.*--token or set HF_TOKEN"):
        fetch(hub, tmp_path, repo=PRIVATE)
    out = fetch(hub, tmp_path, repo=PRIVATE, token=TOKEN)
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert TOKEN not in (out / "manifest.json").read_text()


def test_hf_transfer_switch_without_package(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        download_model.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "hf_transfer" else real(name, *a),
    )
    assert download_model.choose_backend("auto") == "hub"
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "1")
    with pytest.raises(download_model.DownloadError, match="pip install hf_transfer"):
        download_model.choose_backend("auto")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"repo": "acme/no-such-model"},
            r"'acme/no-such-model' at http://127.0.0.1:\d+: repository not found \(HTTP 404\)",
        ),
        ({"revision": "v9"}, "has no revision 'v9': check --revision"),
        ({"include": ["*.gguf"]}, r"no file matches --include \['\*.gguf'\]"),
    ],
)
def test_clear_errors(served, tmp_path: Path, kw: dict, message: str) -> None:
    hub, _ = served
    with pytest.raises(download_model.DownloadError, match=message):
        fetch(hub, tmp_path, **kw)


def test_disk_check(served, tmp_path: Path, monkeypatch) -> None:
    hub, _ = served
    usage = download_model.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download_model.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(download_model.DownloadError, match=r"GB needed, 0.0 GB free"):
        fetch(hub, tmp_path)


def test_cli_exit_message(served, tmp_path: Path) -> None:
    hub, _ = served
    with pytest.raises(SystemExit) as exc:
        download_model.main(
            ["acme/missing", "--local-dir", str(tmp_path / "m"), "--endpoint", hub.url]
        )
    assert "repository not found (HTTP 404)" in str(exc.value.code)


@pytest.mark.parametrize(
    ("backend", "repo", "message"),
    [
        ("hub", BROKEN, "a listed file is missing at 'main'"),
        ("hf_transfer", BROKEN, "a listed file is missing at 'main'"),
        ("hub", GATED, "is gated: accept its licence"),
        ("hf_transfer", GATED, "is gated: accept its licence"),
        ("hf_transfer", NO_RANGE, "hf_transfer failed .* pass --backend hub"),
    ],
)
def test_file_download_failure(served, tmp_path: Path, backend: str, repo: str, message: str):
    hub, _ = served
    with pytest.raises(download_model.DownloadError, match=message):
        fetch(hub, tmp_path, repo=repo, backend=backend)
    assert not list((tmp_path / "model").glob("*.safetensors"))
