"""The owner's transform: fresh permutations, no original matrix in the cloud's files, norms
permuted (the seed's bug), and clear errors for unknown parameters and bad artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from secinfer.models.hf import ArchSpec, Rule
from secinfer.stip import (
    ArtifactError,
    LocalLink,
    StipUser,
    build_cloud,
    inverse_permutation,
    load_cloud,
    load_key,
    random_permutation,
    spec_for,
    transform_model,
    transform_state,
    write_cloud,
    write_key,
)

from . import tiny


def test_random_permutation_is_fresh_and_invertible() -> None:
    a, b = random_permutation(300), random_permutation(300)
    assert torch.equal(torch.sort(a).values, torch.arange(300))
    assert not torch.equal(a, b)  # equal with probability 1/300!
    x = torch.randn(4, 300)
    assert torch.equal(x[:, a][:, inverse_permutation(a)], x)
    with pytest.raises(ValueError, match="at least 2"):
        random_permutation(1)


@pytest.mark.parametrize("arch", sorted(tiny.BUILDERS))
def test_cloud_files_hold_no_original_matrix(arch: str, tmp_path) -> None:
    m = tiny.BUILDERS[arch]()
    original = {k: v for k, v in m.state_dict().items() if v.dim() >= 2}
    cloud_state, cloud_cfg, key = transform_model(m)
    write_cloud(tmp_path / "cloud", key.model_class, cloud_state, cloud_cfg)
    on_disk = load_file(str(tmp_path / "cloud" / "model.safetensors"))
    assert set(on_disk) == set(cloud_state)
    matrices = [v for v in on_disk.values() if v.dim() >= 2]
    assert matrices
    for name, orig in original.items():
        for mat in matrices:
            assert not (mat.shape == orig.shape and torch.equal(mat, orig)), name
    # the embedding tables went to the user only
    assert set(key.tables) and not set(key.tables) & set(on_disk)
    for name in key.tables:
        assert torch.equal(key.tables[name], m.state_dict()[name])


def test_norm_parameters_are_permuted_not_left_in_place() -> None:
    """The seed code forgot the norms; doing so must visibly break equivalence here."""
    m = tiny.llama()
    cloud_state, cloud_cfg, key = transform_model(m)
    p = key.perms["hidden"]
    w = m.state_dict()["model.layers.0.input_layernorm.weight"]
    assert torch.equal(cloud_state["model.layers.0.input_layernorm.weight"], w[p])
    broken = dict(cloud_state)
    for name in broken:
        if "norm" in name:
            broken[name] = m.state_dict()[name]
    ids = torch.randint(3, 150, (1, 6))
    with torch.inference_mode():
        ref = m(ids).logits[:, -1]
        good = StipUser(key, LocalLink(build_cloud(key.model_class, cloud_cfg, cloud_state)))
        bad = StipUser(key, LocalLink(build_cloud(key.model_class, cloud_cfg, broken)))
        assert float((good.last_logits(ids) - ref).abs().max()) < 1e-4
        assert float((bad.last_logits(ids) - ref).abs().max()) > 1e-2


def test_unknown_parameter_and_class_are_named() -> None:
    spec = ArchSpec("X", "bert", "encoder", (Rule(r"^a$", rows="hidden"),),
                    lambda c: {"hidden": 3})
    with pytest.raises(ValueError, match="'b'"):
        transform_state(spec, {"a": torch.ones(3), "b": torch.ones(3)},
                        {"hidden": torch.tensor([2, 0, 1])})
    with pytest.raises(ValueError, match="cannot take permutation"):
        transform_state(spec, {"a": torch.ones(4)}, {"hidden": torch.tensor([2, 0, 1])})
    with pytest.raises(ValueError, match="does not support model class 'T5Model'"):
        spec_for("T5Model")


def test_bad_permutation_is_refused() -> None:
    m = tiny.gpt2()
    with pytest.raises(ValueError, match="not a permutation"):
        transform_model(m, perms={"hidden": torch.zeros(48, dtype=torch.int64),
                                  "vocab": random_permutation(150)})


def test_artifacts_detect_tampering_and_wrong_kind(tmp_path) -> None:
    m = tiny.bert_classifier()
    cloud_state, cloud_cfg, key = transform_model(m)
    write_cloud(tmp_path / "cloud", key.model_class, cloud_state, cloud_cfg)
    write_key(tmp_path / "key", key)
    with pytest.raises(FileExistsError):
        write_key(tmp_path / "key", key)
    k2 = load_key(tmp_path / "key")
    assert all(torch.equal(k2.perms[n], key.perms[n]) for n in key.perms)
    with pytest.raises(ArtifactError, match="expected 'secinfer-stip-cloud'"):
        load_cloud(tmp_path / "key")  # a key is not a model
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_key(tmp_path)
    f = tmp_path / "cloud" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["num_labels"] = 9
    f.write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="checksum mismatch for config.json"):
        load_cloud(tmp_path / "cloud")
