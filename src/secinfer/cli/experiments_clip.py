"""``secinfer experiments clip zeroshot|fewshot|finetune|report``: SecLMM tasks, plaintext and
on shares (the code: ``experiments/clip_experiments.py`` in the repository).

``--secure`` also runs a random subset of ``--secure-limit`` test examples on secret shares
(four thread parties: P0 model owner and server, P1 server, P2 helper, the user): for
``fmnist-tinyclip`` both CLIP towers and the logits (:mod:`secinfer.transformer.clip`), for
``bbc`` the MiniLM article embeddings (zero-shot against plaintext prompt embeddings, and the
linear probe trained on plaintext training embeddings). It prints plaintext and secure
accuracy on that subset, their agreement and the minimum cosine of the embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_COMBOS = [("gelu", "softmax"), ("gelu", "quant"), ("sig", "softmax"), ("sig", "quant")]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``clip`` group under ``secinfer experiments`` (not a top-level ``register``)."""
    p = sub.add_parser("clip", help="SecLMM tasks: zero-shot, few-shot, fine-tuning "
                                    "(plaintext; --secure on shares)")
    csub = p.add_subparsers(dest="clip_command", required=True, metavar="ACTION")
    for name, help_ in (("zeroshot", "zero-shot accuracy by prompt embeddings"),
                        ("fewshot", "linear probe and N-way K-shot accuracy"),
                        ("finetune", "fine-tune with the approximations on; before and after"),
                        ("report", "all four gelu|sig x softmax|quant combinations, "
                                   "before and after fine-tuning")):
        c = csub.add_parser(name, help=help_)
        _common(c, combos=name != "report")
        c.set_defaults(handler=_run, clip_action=name)


def _common(p: argparse.ArgumentParser, combos: bool) -> None:
    p.add_argument("--task", required=True, choices=["bbc", "fmnist-tinyclip"])
    if combos:
        p.add_argument("--hidden_act", default="gelu", choices=["gelu", "sig"])
        p.add_argument("--softmax_act", default="softmax", choices=["softmax", "quant"])
    p.add_argument("--emulate-mpc", action="store_true",
                   help="also use the MPC forms of GELU, exp, reciprocal and LayerNorm")
    p.add_argument("--secure", action="store_true",
                   help="also run a subset of the test set on secret shares")
    p.add_argument("--secure-limit", type=int, default=None,
                   help="test examples run on shares (default 50 images, 5 BBC articles)")
    p.add_argument("--secure-tls", action="store_true",
                   help="secure parties over real mutual-TLS sockets (default: in memory)")
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--fewshot-method", choices=["proto", "probe"], default="proto")
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--ft-lr", type=float, default=3e-5)
    p.add_argument("--ft-steps", type=int, default=100, help="tiny CLIP fine-tuning steps")
    p.add_argument("--clip-train-steps", type=int, default=300)
    p.add_argument("--clip", type=str, default=None, help="CLIP folder (HF format) to load")
    p.add_argument("--save", type=str, default=None, help="save the trained tiny CLIP here")
    p.add_argument("--seed", type=int, default=None,
                   help="subsets/episodes/shuffling (default: from the OS CSPRNG)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster on a busy machine)")


def _row(label: str, res: dict[str, Any], when: str) -> str:
    m = res[when]
    return (f"| {label:<16} | {when:<6} | {100 * m['zeroshot']:6.2f} | {100 * m['probe']:6.2f} | "
            f"{100 * m['fewshot_mean']:6.2f} +- {100 * m['fewshot_std']:4.2f} |")


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"task {results[0]['task']}: n_train {results[0]['n_train']}, "
          f"n_test {results[0]['n_test']}, seed {results[0]['seed']}")
    if "plaintext_exact" in results[0]:
        print(f"tiny CLIP zero-shot before patching: {100 * results[0]['plaintext_exact']:.2f}")
    n_way = results[0]["before"]["fewshot_n_way"]
    k = results[0]["k_shot"]
    print(f"| approx           | when   | zero-shot % | probe % | {n_way}-way {k}-shot % |")
    print("|---|---|---|---|---|")
    for r in results:
        print(_row(r["label"], r, "before"))
        if "after" in r:
            print(_row(r["label"], r, "after"))
    for r in results:
        if "secure" in r:
            _print_secure(r)


def _print_secure(r: dict[str, Any]) -> None:
    s = r["secure"]
    where = "TLS" if s["tls"] else "in-memory"
    print(f"secure {r['label']} ({s['when']} fine-tuning), {s['n']} test examples on shares, "
          f"{where} parties, {s['seconds']:.1f} s:")
    if r["task"] == "bbc":
        for name in ("zeroshot", "probe"):
            m = s[name]
            print(f"  {name:<8} plaintext {100 * m['plaintext_acc']:6.2f}% | secure "
                  f"{100 * m['secure_acc']:6.2f}% | agreement {100 * m['agreement']:6.2f}%")
        print(f"  embedding cosine secure vs plaintext: min {s['min_cosine']:.6f}, "
              f"mean {s['mean_cosine']:.6f}")
        return
    print(f"  zeroshot plaintext {100 * s['plaintext_acc']:6.2f}% | secure "
          f"{100 * s['secure_acc']:6.2f}% | agreement {100 * s['agreement']:6.2f}%")
    print(f"  cosine secure vs plaintext: image min {s['min_cosine_image']:.6f}, text min "
          f"{s['min_cosine_text']:.6f}; max logit error {s['max_logit_error']:.2e}; "
          f"{s['bytes_inference'] / 1e6:.1f} MB sent (weights {s['bytes_weights'] / 1e6:.1f} MB)")


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.secure_limit is not None and args.secure_limit < 1:
        raise ValueError(f"--secure-limit must be positive, got {args.secure_limit}")
    from .experiments import load

    ex = load("clip_experiments")  # first: a missing folder fails before any heavy import
    ExperimentConfig, run_task = ex.ExperimentConfig, ex.run_task
    import torch

    from secinfer.mpc.approx import ApproxConfig

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)

    exp = ExperimentConfig(
        finetune=args.clip_action in ("finetune", "report"),
        test_per_class=args.test_per_class, train_per_class=args.train_per_class,
        max_length=args.max_length, k_shot=args.k_shot, episodes=args.episodes,
        fewshot_method=args.fewshot_method, ft_epochs=args.ft_epochs, ft_lr=args.ft_lr,
        ft_steps=args.ft_steps, seed=args.seed, clip_folder=args.clip,
        clip_train_steps=args.clip_train_steps, save_folder=args.save, secure=args.secure,
        secure_limit=args.secure_limit, secure_tls=args.secure_tls)
    combos = _COMBOS if args.clip_action == "report" else [(args.hidden_act, args.softmax_act)]
    if exp.seed is None:
        import secrets

        exp = _replace(exp, seed=secrets.randbits(31))
    results = []
    with tempfile.TemporaryDirectory(prefix="secinfer-clip-") as tmp:
        if args.task == "fmnist-tinyclip" and exp.clip_folder is None and len(combos) > 1:
            # Train the tiny CLIP once; every combination then starts from the same weights.
            exp = _replace(exp, save_folder=exp.save_folder or str(Path(tmp) / "tinyclip"))
        for i, (h, s) in enumerate(combos):
            approx = ApproxConfig(hidden_act=h, softmax_act=s,  # type: ignore[arg-type]
                                  emulate_mpc=args.emulate_mpc)
            res = run_task(args.task, approx, exp)
            results.append(res)
            print(f"done {res['label']}", flush=True)
            if i == 0 and "saved" in res:
                exp = _replace(exp, clip_folder=res["saved"], save_folder=None)
    _print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


def _replace(exp: Any, **kw: Any) -> Any:
    from dataclasses import replace

    return replace(exp, **kw)
