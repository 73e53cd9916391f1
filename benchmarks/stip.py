"""STIP over mutual TLS vs the plaintext model, in one command on this machine.

For all-MiniLM-L6-v2 (real weights, sequence length 128) and a Llama-architecture decoder with
random weights (GQA, RoPE, SwiGLU; about 156M parameters), the cloud P2 runs as its own OS
process (``secinfer stip serve``) and this process is the user P3. Per request it splits:

* user compute: local embedding + permutation + un-permutation;
* cloud compute: P2's forward time, reported by P2 with each reply;
* transport: the rest of the round trip (framing, TLS, loopback, scheduling).

The plaintext reference is the original ``transformers`` model in this process, measured
interleaved with the STIP requests. Generation: greedy tokens per second, STIP (KV cache on P2,
one permuted embedding per step over TLS) vs plaintext with its own cache. Also: the BBC News
accuracy of a logistic-regression head on MiniLM embeddings, plaintext vs STIP (test split
embedded through the TLS cloud).

    .venv/bin/python benchmarks/stip.py [--reps 7] [--bbc-per-class N] [--gen-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from secinfer.net import Topology, make_certs, write_local_topology  # noqa: E402
from secinfer.stip import (  # noqa: E402
    LocalLink,
    SessionLink,
    StipUser,
    build_cloud,
    dial_cloud,
    load_key,
    transform_model,
    write_cloud,
    write_key,
)
from secinfer.stip.bbc import (  # noqa: E402
    embed_texts,
    head_accuracy,
    load_bbc_news,
    minilm_path,
)

RESULTS = Path(__file__).resolve().parent / "results" / "stip.json"
CLOUD, USER = 1, 2


@contextmanager
def cloud_process(topo_path: Path, model_dir: Path, log: Path) -> Iterator[None]:
    """P2 as its own process (with this process's thread count), serving until the end."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "secinfer", "stip", "serve", "--topology", str(topo_path),
             "--model", str(model_dir)], stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while "stip serve:" not in log.read_text(errors="replace"):  # model loaded
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the cloud did not start; log {log}:\n{log.read_text()}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def timed_request(
    user: StipUser, link: SessionLink, prepare: Callable[[], list[torch.Tensor]], op: str,
    finish: Callable[[list[torch.Tensor]], Any],
) -> dict[str, float]:
    t0 = time.perf_counter()
    args = prepare()
    t1 = time.perf_counter()
    before = link.cloud_seconds
    out = link.call(op, args)
    t2 = time.perf_counter()
    finish(out)
    t3 = time.perf_counter()
    cloud = link.cloud_seconds - before
    return {"user": (t1 - t0) + (t3 - t2), "cloud": cloud, "transport": (t2 - t1) - cloud,
            "total": t3 - t0}


def ab_compute(plain: Callable[[], Any], stip: Callable[[], Any], reps: int) -> dict[str, float]:
    """Plaintext vs STIP compute in this one process, alternating which goes first, so that
    the load of a shared machine falls on both alike. STIP = user embed/permute + the cloud's
    transformed model + un-permute, with no transport."""
    a, b = [], []
    plain()
    stip()
    for r in range(reps):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (plain if which == 0 else stip)()
            (a if which == 0 else b).append(time.perf_counter() - t0)
    return {"plaintext": med(a), "stip": med(b), "ratio": med(b) / med(a), "reps": reps}


def split_table(name: str, plain: list[float], stip: list[dict[str, float]]) -> dict[str, Any]:
    row = {k: med([s[k] for s in stip]) for k in ("user", "cloud", "transport", "total")}
    row["plaintext"] = med(plain)
    row["compute"] = med([s["user"] + s["cloud"] for s in stip])
    row["compute_ratio"] = row["compute"] / row["plaintext"]
    row["cloud_ratio"] = row["cloud"] / row["plaintext"]
    row["total_ratio"] = row["total"] / row["plaintext"]
    print(f"\n{name} (median of {len(plain)}; seconds)")
    print(f"{'plaintext':>10} {'STIP user':>10} {'STIP cloud':>11} {'transport':>10} "
          f"{'STIP total':>11}")
    print(f"{row['plaintext']:10.4f} {row['user']:10.4f} {row['cloud']:11.4f} "
          f"{row['transport']:10.4f} {row['total']:11.4f}")
    return row


def bench_minilm(tmp: Path, topo: Topology, topo_path: Path, reps: int,
                 per_class: int | None, ab_reps: int) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertModel.from_pretrained(path, local_files_only=True).eval()
    cloud_state, cloud_cfg, key = transform_model(model)
    write_cloud(tmp / "minilm" / "cloud", key.model_class, cloud_state, cloud_cfg)
    write_key(tmp / "minilm" / "key", key)
    key = load_key(tmp / "minilm" / "key")
    local = StipUser(key, LocalLink(build_cloud(key.model_class, cloud_cfg, cloud_state)))
    data = load_bbc_news(per_class)
    enc = tok(data.texts[:8], padding="max_length", truncation=True, max_length=128,
              return_tensors="pt")
    ids, mask = enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for batch in (1, 8):
            b_ids, b_mask = ids[:batch], mask[:batch]
            ab = ab_compute(lambda b_ids=b_ids, b_mask=b_mask: model(
                                input_ids=b_ids, attention_mask=b_mask).last_hidden_state,
                            lambda b_ids=b_ids, b_mask=b_mask: local.encode(b_ids, b_mask),
                            ab_reps)
            out[f"compute_b{batch}"] = ab
            print(f"MiniLM batch {batch} x 128, same-process compute (median of {ab_reps}): "
                  f"plaintext {ab['plaintext']:.4f} s, STIP {ab['stip']:.4f} s")
    with cloud_process(topo_path, tmp / "minilm" / "cloud", tmp / "serve-minilm.log"), \
            dial_cloud(topo, CLOUD, user_id=USER) as session, torch.inference_mode():
        link = SessionLink(session, CLOUD)
        user = StipUser(key, link)
        for batch in (1, 8):
            b_ids, b_mask = ids[:batch], mask[:batch]
            plain, stip = [], []
            res: dict[str, torch.Tensor] = {}
            for r in range(reps + 1):  # the first round warms both up and is dropped
                t0 = time.perf_counter()
                ref = model(input_ids=b_ids, attention_mask=b_mask).last_hidden_state
                t = time.perf_counter() - t0
                s = timed_request(
                    user, link, lambda b_ids=b_ids, b_mask=b_mask: [
                        user.permute(user.embed_tokens(b_ids)), b_mask],
                    "encode", lambda o, res=res: res.update(h=user.unpermute(o[0])))
                if r:
                    plain.append(t)
                    stip.append(s)
            err = float((res["h"] - ref).abs().max() / ref.abs().max())
            row = split_table(f"MiniLM encoder, batch {batch} x seq 128", plain, stip)
            row["max_rel_err"] = err
            out[f"batch{batch}"] = row

        # accuracy: head fitted on plaintext train embeddings; test split both ways
        tr, te = train_test_split(range(len(data.texts)), test_size=0.3, stratify=data.labels,
                                  random_state=0)
        t0 = time.perf_counter()

        def plain_enc(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return model(input_ids=i, attention_mask=m).last_hidden_state

        def stip_enc(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return user.encode(i, m)[0]

        train_x = embed_texts([data.texts[i] for i in tr], tok, plain_enc)
        test_texts = [data.texts[i] for i in te]
        test_plain = embed_texts(test_texts, tok, plain_enc)
        test_stip = embed_texts(test_texts, tok, stip_enc)
        acc = head_accuracy(train_x, [data.labels[i] for i in tr],
                            {"plaintext": test_plain, "stip": test_stip},
                            [data.labels[i] for i in te])
        link.close()
    out["bbc"] = {"articles": len(data.texts), "train": len(tr), "test": len(te),
                  "accuracy_plaintext": acc["plaintext"], "accuracy_stip": acc["stip"],
                  "max_rel_err": float((test_stip - test_plain).abs().max()
                                       / test_plain.abs().max()),
                  "seconds": time.perf_counter() - t0}
    print(f"\nBBC News ({len(data.texts)} articles, test {len(te)}): accuracy plaintext "
          f"{acc['plaintext']:.4f}, STIP {acc['stip']:.4f}")
    return out


def llama_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=4, intermediate_size=2816, vocab_size=32000,
                      max_position_embeddings=2048, rope_theta=10000.0, initializer_range=0.05,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # trained-looking norms, not the default ones
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def plaintext_greedy(model: torch.nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    toks = []
    for i in range(n):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(tok)
        if i < n - 1:
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(toks, dim=1)


def bench_llama(tmp: Path, topo: Topology, topo_path: Path, reps: int,
                gen_tokens: int, ab_reps: int) -> dict[str, Any]:
    model = llama_model()
    n_params = sum(p.numel() for p in model.parameters())
    cloud_state, cloud_cfg, key = transform_model(model)
    write_cloud(tmp / "llama" / "cloud", key.model_class, cloud_state, cloud_cfg)
    write_key(tmp / "llama" / "key", key)
    key = load_key(tmp / "llama" / "key")
    ids = torch.randint(3, 32000, (1, 128))
    prompt = ids[:, :16]
    out: dict[str, Any] = {"params": n_params}
    local = StipUser(key, LocalLink(build_cloud(key.model_class, cloud_cfg, cloud_state)))
    del cloud_state
    ones = torch.ones_like(ids)
    with torch.inference_mode():
        ab = ab_compute(lambda: model(input_ids=ids, attention_mask=ones,
                                      logits_to_keep=1).logits[:, -1],
                        lambda: local.last_logits(ids), ab_reps)
    out["compute_prefill128"] = ab
    print(f"Llama-arch prefill 1 x 128, same-process compute (median of {ab_reps}): "
          f"plaintext {ab['plaintext']:.4f} s, STIP {ab['stip']:.4f} s")
    with cloud_process(topo_path, tmp / "llama" / "cloud", tmp / "serve-llama.log"), \
            dial_cloud(topo, CLOUD, user_id=USER) as session, torch.inference_mode():
        link = SessionLink(session, CLOUD)
        user = StipUser(key, link)
        mask = torch.ones_like(ids)
        plain, stip = [], []
        res: dict[str, torch.Tensor] = {}
        for r in range(reps + 1):
            t0 = time.perf_counter()
            ref = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
            t = time.perf_counter() - t0
            s = timed_request(user, link, lambda: [user.permute(user.embed_tokens(ids)), mask],
                              "lm_start", lambda o: res.update(y=user.unpermute(o[0], "vocab")))
            if r:
                plain.append(t)
                stip.append(s)
        row = split_table("Llama-arch prefill, batch 1 x seq 128", plain, stip)
        row["max_rel_err"] = float((res["y"] - ref).abs().max() / ref.abs().max())
        out["prefill128"] = row

        gen_plain, gen_stip, gen_cloud, same = [], [], [], True
        for r in range(max(2, reps // 2) + 1):
            t0 = time.perf_counter()
            want = plaintext_greedy(model, prompt, gen_tokens)
            t1 = time.perf_counter()
            before = link.cloud_seconds
            got = user.generate(prompt, gen_tokens)
            t2 = time.perf_counter()
            same = same and torch.equal(got, want)
            if r:
                gen_plain.append(t1 - t0)
                gen_stip.append(t2 - t1)
                gen_cloud.append(link.cloud_seconds - before)
        link.close()
    g = {"tokens": gen_tokens, "prompt": int(prompt.shape[1]), "token_identical": same,
         "plaintext_tok_s": gen_tokens / med(gen_plain), "stip_tok_s": gen_tokens / med(gen_stip),
         "stip_cloud_compute_s": med(gen_cloud), "plaintext_s": med(gen_plain),
         "stip_s": med(gen_stip)}
    g["tok_s_ratio"] = g["stip_tok_s"] / g["plaintext_tok_s"]
    g["cloud_compute_ratio"] = g["stip_cloud_compute_s"] / g["plaintext_s"]
    out["generation"] = g
    print(f"\nLlama-arch generation ({n_params / 1e6:.0f}M params, prompt {g['prompt']}, "
          f"{gen_tokens} greedy tokens; median of {len(gen_plain)})")
    print(f"{'plaintext tok/s':>16} {'STIP tok/s':>11} {'STIP cloud s':>13} {'identical':>10}")
    print(f"{g['plaintext_tok_s']:16.2f} {g['stip_tok_s']:11.2f} "
          f"{g['stip_cloud_compute_s']:13.3f} {str(same):>10}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--bbc-per-class", type=int, default=None,
                    help="cap articles per class (default: all 2,225)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--ab-reps", type=int, default=11,
                    help="same-process compute comparisons (alternating order)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process; 1 keeps a shared, busy machine from "
                         "thrashing (two threads on an oversubscribed pair of cores ran ~10x "
                         "slower here)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "reps": args.reps}
    with tempfile.TemporaryDirectory(prefix="stip-bench-") as d:
        tmp = Path(d)
        topo_path = write_local_topology(tmp, ["owner", "cloud", "user"], timeout=300.0)
        topo = Topology.load(topo_path)
        make_certs(topo, overwrite=True)
        t0 = time.perf_counter()
        results["minilm"] = bench_minilm(tmp, topo, topo_path, args.reps, args.bbc_per_class,
                                        args.ab_reps)
        results["llama"] = bench_llama(tmp, topo, topo_path, args.reps, args.gen_tokens,
                                       args.ab_reps)
        results["seconds"] = time.perf_counter() - t0
    m, ll = results["minilm"], results["llama"]
    print()
    print(f"MiniLM b1 STIP compute ratio: {m['compute_b1']['ratio']:.3f}")
    print(f"MiniLM b8 STIP compute ratio: {m['compute_b8']['ratio']:.3f}")
    print(f"Llama prefill STIP compute ratio: {ll['compute_prefill128']['ratio']:.3f}")
    for tag, row in (("MiniLM b1", m["batch1"]), ("MiniLM b8", m["batch8"]),
                     ("Llama prefill", ll["prefill128"])):
        print(f"{tag} over-TLS compute (user + cloud-reported) ratio: {row['compute_ratio']:.3f}")
        print(f"{tag} over-TLS total latency ratio: {row['total_ratio']:.3f}")
    print(f"Llama generation STIP/plaintext tokens-per-second ratio: "
          f"{ll['generation']['tok_s_ratio']:.3f}")
    print(f"Llama generation STIP cloud compute / plaintext time ratio: "
          f"{ll['generation']['cloud_compute_ratio']:.3f}")
    print(f"BBC News STIP/plaintext accuracy ratio: "
          f"{m['bbc']['accuracy_stip'] / m['bbc']['accuracy_plaintext']:.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
