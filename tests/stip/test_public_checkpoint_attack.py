"""STIP gives no protection to a model derived from a public checkpoint (docs/stip.md).

The cloud holds the permuted weights and the architecture. If it also holds the public
checkpoint the owner fine-tuned, it matches each permuted hidden index to an original one with
the Hungarian algorithm on the rows and columns that the hidden permutation moves, then
un-permutes the user's embeddings and reads the tokens off the public embedding table. This
test runs that attack on a fine-tuned copy (the claim in the docs), and on an unrelated model
(the negative control: the attack is not reading the answer from somewhere else).
"""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from secinfer.models.hf import spec_for
from secinfer.stip.transform import transform_model
from secinfer.stip.user import StipUser

from . import tiny


def _fine_tune(model: torch.nn.Module, steps: int = 30, lr: float = 1e-4) -> torch.nn.Module:
    """A real (if short) fine-tune: Adam on a regression of the hidden states to constant
    targets, at twice the usual top BERT fine-tuning rate (5e-5)."""
    tuned = copy.deepcopy(model).train()
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    vocab = tuned.config.vocab_size
    for _ in range(steps):
        ids = torch.randint(4, vocab, (8, 12))
        out = tuned(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        loss = (out - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


def _hidden_features(spec, state: dict[str, torch.Tensor], hidden: int) -> torch.Tensor:
    """Per hidden index, every weight entry that moves with it (rows or columns), concatenated."""
    cols = []
    for name in sorted(state):
        t = state[name]
        if not t.is_floating_point() or t.dim() == 0:
            continue
        try:
            rule = spec.match(name)
        except ValueError:
            continue
        if rule.user or (rule.rows == "hidden") == (rule.cols == "hidden"):
            continue  # not moved by the hidden permutation, or moved on both sides
        m = t if rule.rows == "hidden" else t.transpose(0, 1)
        if m.shape[0] != hidden:
            continue
        cols.append(m.reshape(hidden, -1).to(torch.float64))
    return torch.cat(cols, 1)


def _attack(public: torch.nn.Module, cloud: dict[str, torch.Tensor]) -> torch.Tensor:
    """The cloud's guess of pi, from its permuted weights and the public checkpoint alone."""
    spec = spec_for(type(public).__name__)
    hidden = int(public.config.hidden_size)
    pub = {k: v.detach() for k, v in public.state_dict().items()}
    fc, fp = _hidden_features(spec, cloud, hidden), _hidden_features(spec, pub, hidden)
    _, col = linear_sum_assignment(torch.cdist(fc, fp).numpy())
    return torch.as_tensor(col, dtype=torch.int64)


class _NoCloud:
    def call(self, *_args):  # the attack needs only what the user sends
        raise AssertionError("not used")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_cloud_recovers_the_permutation_and_tokens_of_a_fine_tuned_public_model(arch: str) -> None:
    public = tiny.BUILDERS[arch]()
    tuned = _fine_tune(public)
    drift = max((a - b).abs().max().item() for a, b in zip(
        tuned.state_dict().values(), public.state_dict().values(), strict=True)
        if a.is_floating_point())
    assert drift > 1e-3, "the fine-tune must actually move the weights"
    cloud, _, key = transform_model(tuned)
    guess = _attack(public, cloud)
    assert torch.equal(guess, key.perms["hidden"])

    # what the user sends for one prompt, un-permuted with the guess and decoded with the
    # PUBLIC tables (the cloud never sees the fine-tuned ones)
    user = StipUser(key, _NoCloud())  # type: ignore[arg-type]
    ids = torch.randint(4, public.config.vocab_size, (2, 10))
    sent = user.permute(user.embed_tokens(ids))
    x = torch.empty_like(sent)
    x[..., guess] = sent
    pos = torch.arange(ids.shape[1])
    if arch == "bert":
        emb = public.embeddings
        rest = emb.position_embeddings.weight[pos] + emb.token_type_embeddings.weight[0]
        words = emb.word_embeddings.weight
    else:
        rest, words = public.transformer.wpe.weight[pos], public.transformer.wte.weight
    dist = torch.cdist((x - rest).reshape(-1, x.shape[-1]).detach(), words.detach())
    assert (dist.argmin(-1).reshape(ids.shape) == ids).float().mean() == 1.0


def test_the_same_attack_on_an_unrelated_model_recovers_about_nothing() -> None:
    public, other = tiny.bert_encoder(), tiny.bert_encoder()
    cloud, _, key = transform_model(other)
    guess = _attack(public, cloud)
    # chance is one fixed point in expectation; 48 indices
    assert (guess == key.perms["hidden"]).sum() <= 6
