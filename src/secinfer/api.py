"""The one contract: compile a model for a backend, serve its artifact, ask as a user.

Every backend is used the same way (``secinfer.compile`` and ``secinfer.Client`` are these;
``serve`` is ``secinfer.api.serve``, since ``secinfer.serve`` is the serving sub-package)::

    compiled = secinfer.compile(model, "mpc", "out/", input_shape=(1, 28, 28))
    secinfer.api.serve(topology, party_id, "out/")   # at each server, a long-lived process
    with secinfer.Client(topology) as c:         # at the user, any number of them
        result = c.classify(x)                   # or embed / zeroshot / generate

Backends (:data:`BACKENDS`) and the tasks a client can ask of them (:data:`TASKS`):

- ``mpc``: three servers on secret shares (P0 and P1 compute, P2 the helper; the user a fourth
  party that dials out). CNNs (block ReLU, the approximate DReLU), BERT-family encoders and
  CLIP. Semi-honest, non-colluding servers (:mod:`secinfer.mpc.engine`).
- ``tee``: TSQP. A trusted enclave holds the secrets and serves users; an untrusted device
  computes the int8 linear layers on masked values and every result is checked
  (:mod:`secinfer.tee.enclave`, :mod:`secinfer.tee.monitor`).
- ``stip``: the model owner permutes a transformer's weights; one cloud server runs it at
  plaintext speed; the user holds the key (embedding tables and permutations)
  (:mod:`secinfer.stip`).

The roles of a topology say which backend it runs (:func:`backend_of`): ``server`` and
``helper`` parties are ``mpc``, ``enclave`` and ``device`` are ``tee``, ``cloud`` is ``stip``;
users have role ``user`` everywhere. One compiled folder holds one sub-folder per party
(``party0``... / ``enclave``, ``device`` / ``cloud``, ``key``), each an artifact of the one
on-disk format (:mod:`secinfer.artifacts`: manifest, SHA-256 of every file); ``serve`` takes
the folder or the party's own sub-folder (:func:`resolve_artifact`) and dispatches on what
the manifest says it holds.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .artifacts import inspect_artifact
from .errors import ArtifactError, ConfigError
from .net.topology import Topology

__all__ = ["BACKENDS", "TASKS", "Compiled", "ClassifyResult", "GenerateResult",
           "EmbedResult", "ZeroShotResult", "Verification", "VERIFICATION", "compile", "serve",
           "resolve_artifact", "backend_of", "Client"]

BACKENDS = ("mpc", "tee", "stip")
_R = TypeVar("_R", "ClassifyResult", "EmbedResult", "ZeroShotResult", "GenerateResult")
TASKS: Mapping[str, tuple[str, ...]] = {
    "mpc": ("classify", "embed", "zeroshot", "fewshot"),
    "tee": ("classify",),
    "stip": ("classify", "embed", "generate"),
}
_ROLE_BACKEND = {"server": "mpc", "helper": "mpc", "enclave": "tee", "device": "tee",
                 "cloud": "stip"}
_FORMAT_BACKEND = {"secinfer-mpc-bundle": "mpc", "secinfer-tee-bundle": "tee",
                   "secinfer-stip-cloud": "stip", "secinfer-stip-key": "stip"}


@dataclass(frozen=True)
class Compiled:
    """What :func:`compile` wrote: one artifact folder per party (``name -> folder``)."""

    backend: str
    artifacts: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verification:
    """Whether a result was checked against a server that lies, and by what mechanism.

    ``checked`` is False where nothing stands between a deviating server and a wrong result
    that the user would accept: say so instead of letting silence read as a guarantee."""

    checked: bool
    mechanism: str

    def describe(self) -> str:
        return f"{'yes' if self.checked else 'no'} ({self.mechanism})"


VERIFICATION: dict[str, Verification] = {
    "mpc": Verification(False, "none: semi-honest 3-party computation; one server that "
                        "deviates can change the result undetected (docs/threat-models.md)"),
    "tee": Verification(True, "the enclave checked every device result: fingerprint "
                        "triples and secret Freivalds checksums (docs/tee.md)"),
    "stip": Verification(False, "none: STIP hides weights and data by permutation and does "
                         "not check the cloud's results (docs/stip.md)"),
}
"""What checks each backend's results today (``Result.verified``)."""


@dataclass(frozen=True)
class ClassifyResult:
    """One classification request: ``labels`` [batch] int64; ``logits`` [batch, C] float64
    and ``topk`` [batch, k] int64 (best first) where the owner's output policy reveals them."""

    labels: torch.Tensor
    logits: torch.Tensor | None = None
    topk: torch.Tensor | None = None
    verified: Verification | None = None  # filled in by Client: VERIFICATION[backend]


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings [n, D] float64 (L2-normalised where the model normalises)."""

    vectors: torch.Tensor
    verified: Verification | None = None  # filled in by Client: VERIFICATION[backend]


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot classification: ``labels`` [n] int64 (indices into the classes), ``scores``
    [n, classes] (cosine of each image with each class prompt), both embeddings."""

    labels: torch.Tensor
    scores: torch.Tensor
    image_embeddings: torch.Tensor
    text_embeddings: torch.Tensor
    verified: Verification | None = None  # filled in by Client: VERIFICATION[backend]


@dataclass(frozen=True)
class GenerateResult:
    """Greedy generation: the new ``tokens`` [batch, new_tokens] int64 (prompt excluded)."""

    tokens: torch.Tensor
    new_tokens: int
    verified: Verification | None = None  # filled in by Client: VERIFICATION[backend]


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; the backends are "
                          f"{', '.join(BACKENDS)}")
    return backend


def compile(model: Any, backend: str, out: str | Path, *,  # noqa: A001 - the contract's verb
            input_shape: tuple[int, ...] | None = None,
            calibration: torch.Tensor | None = None, **options: Any) -> Compiled:
    """Compile ``model`` for ``backend`` into per-party artifacts under ``out``.

    - ``mpc``, a CNN (any ``nn.Module`` the capture takes, :doc:`supported-ops`):
      ``input_shape`` (no batch dim) and the options of
      :func:`secinfer.models.bundle.compile_model` (``frac_bits``, ``relu_spec``,
      ``output_policy``, ``input_range``; ``calibration`` samples). Writes ``party0``..``party2``.
    - ``tee``: ``input_shape`` and ``calibration`` ([n, *input_shape] samples to quantize on);
      options ``reduce_range``, ``permute``, ``data`` (x, labels) to report accuracy on.
      Writes ``enclave`` and ``device``.
    - ``stip``: a ``transformers`` model of an architecture STIP supports
      (:mod:`secinfer.models.hf`). Writes ``cloud`` (for the server) and ``key`` (for the
      user only).
    """
    _check_backend(backend)
    out = Path(out)
    if backend == "mpc" and _is_clip(model):
        from .transformer.clip_bundle import compile_clip

        unknown = set(options) - {"text_length", "cfg"}
        if unknown or input_shape is not None or calibration is not None:
            raise ConfigError("a CLIP for mpc takes the options text_length and cfg (no "
                              "input_shape or calibration), got "
                              f"{', '.join(sorted(unknown)) or 'input_shape / calibration'}")
        dirs = compile_clip(model, out, **options)
        return Compiled("mpc", {d.name: d for d in dirs}, {"kind": "clip"})
    if backend == "mpc" and _is_encoder(model):
        from .transformer.bundle import compile_encoder

        unknown = set(options) - {"max_length", "cfg", "tokenizer"}
        if unknown or input_shape is not None or calibration is not None:
            raise ConfigError("an encoder for mpc takes the options max_length, cfg and "
                              "tokenizer (no input_shape or calibration), got "
                              f"{', '.join(sorted(unknown)) or 'input_shape / calibration'}")
        if options.get("tokenizer") is None:
            raise ConfigError("an encoder for mpc needs tokenizer= (its files go to the user)")
        dirs = compile_encoder(model, out, **options)
        return Compiled("mpc", {d.name: d for d in dirs}, {"kind": "encoder"})
    if backend == "mpc":
        if input_shape is None:
            raise ConfigError("backend mpc needs input_shape (without the batch dimension)")
        from .models.bundle import compile_model

        dirs = compile_model(model, tuple(input_shape), out, calibration=calibration,
                             **options)
        return Compiled("mpc", {d.name: d for d in dirs})
    if backend == "tee":
        if input_shape is None or calibration is None:
            raise ConfigError("backend tee needs input_shape and calibration samples "
                              "[n, *input_shape] to quantize on")
        from .tee.from_plan import provision_model

        report = provision_model(model, tuple(input_shape), out, calibration,
                                 options.pop("data", None), **options)
        return Compiled("tee", {"enclave": out / "enclave", "device": out / "device"}, report)
    from .stip.transform import transform_model, write_cloud, write_key

    if options:
        raise ConfigError(f"backend stip takes no options, got {', '.join(sorted(options))}")
    cloud, cloud_cfg, key = transform_model(model)
    write_cloud(out / "cloud", type(model).__name__, cloud, cloud_cfg)
    write_key(out / "key", key)
    return Compiled("stip", {"cloud": out / "cloud", "key": out / "key"},
                    {"model_class": type(model).__name__, "task": key.task})


def _is_clip(model: Any) -> bool:
    """A CLIP with its tokenizer (:class:`secinfer.seclmm.tinyclip.ClipBundle`)."""
    inner = getattr(model, "model", None)
    return callable(getattr(model, "tokenize", None)) and getattr(
        getattr(inner, "config", None), "model_type", None) == "clip"


def _is_encoder(model: Any) -> bool:
    """A Hugging Face BERT-family encoder (its config says so), not a CNN."""
    return getattr(getattr(model, "config", None), "model_type", None) in ("bert", "roberta")


def backend_of(topology: Topology) -> str:
    """The backend a topology runs, from its parties' roles (a mix is refused)."""
    found = {_ROLE_BACKEND[p.role] for p in topology.parties if p.role in _ROLE_BACKEND}
    if len(found) != 1:
        roles = sorted({p.role for p in topology.parties})
        raise ConfigError(
            f"the topology's roles {roles} name {'no' if not found else 'more than one'} "
            "backend: mpc has 'server' and 'helper' parties, tee 'enclave' and 'device', "
            "stip 'cloud'")
    return found.pop()


def resolve_artifact(path: str | Path, topology: Topology, party_id: int) -> Path:
    """The party's artifact folder: ``path`` itself when it is an artifact, else its
    sub-folder for this party (``party<N>``, or the party's role: ``enclave``, ``device``,
    ``cloud``), so every party of one machine can be given the same compiled folder."""
    path = Path(path)
    if (path / "manifest.json").exists() or path.is_symlink():
        return path
    role = topology.party(party_id).role
    for name in (f"party{party_id}", role):
        if (path / name / "manifest.json").exists():
            return path / name
    raise ArtifactError(f"{path} is neither an artifact nor a compiled folder with one for "
                        f"party {party_id} (looked for {path / f'party{party_id}'} and "
                        f"{path / role})")


def serve(topology: Topology, party_id: int, artifact: str | Path, *,
          stop: threading.Event | None = None, max_clients: int | None = None,
          **options: Any) -> int:
    """Serve ``artifact`` as party ``party_id`` until ``stop`` is set (or ``max_clients``
    user sessions have ended); returns the sessions served. Dispatches on the artifact's
    manifest, which must match the party's role in the topology."""
    folder = resolve_artifact(artifact, topology, party_id)
    art = inspect_artifact(folder)
    backend = _FORMAT_BACKEND.get(art.format)
    role = topology.party(party_id).role
    if backend is None or art.format == "secinfer-stip-key":
        raise ArtifactError(f"{folder} holds a {art.format!r} artifact ({art.role}), which "
                            "no server serves")
    if _ROLE_BACKEND.get(role) != backend or (backend == "tee" and art.role != role):
        raise ConfigError(f"party {party_id} has role {role!r} in the topology, but {folder} "
                          f"is a {backend} artifact for a {art.role!r}")
    if art.party is not None and art.party != party_id:
        raise ArtifactError(f"{folder} is the artifact of party {art.party}, not of party "
                            f"{party_id}")
    if backend == "mpc":
        from .serve.server import serve as serve_mpc

        return serve_mpc(topology, party_id, folder, max_clients=max_clients, stop=stop,
                         **options)
    if backend == "tee":
        from .tee import service

        if role == "enclave":
            return service.serve_enclave(topology, party_id, folder, stop=stop,
                                         max_clients=max_clients, **options)
        return service.serve_device(topology, party_id, folder, stop=stop, **options)
    from .stip.cloud import load_cloud
    from .stip.protocol import serve as serve_stip

    if options:
        raise ConfigError(f"stip serve takes no options {', '.join(sorted(options))}")
    return serve_stip(topology, party_id, load_cloud(folder), max_sessions=max_clients,
                      should_stop=(stop.is_set if stop is not None else None),
                      log=lambda m: print(m, flush=True))


class Client:
    """A user of any backend: ``with Client(topology) as c: c.classify(x)``.

    ``cert`` / ``key``: the user's certificate (``secinfer certs user``) for mpc and tee; a
    stip user is a topology party (``user_id``, default the first user) and needs the user's
    ``artifact`` (the ``key`` folder of :func:`compile`). Methods raise a
    :class:`~secinfer.errors.ConfigError` naming the backend's tasks when the backend (or the
    served model) cannot do what is asked.
    """

    def __init__(self, topology: Topology, *, cert: str | Path | None = None,
                 key: str | Path | None = None, user_id: int | None = None,
                 artifact: str | Path | None = None, timeout: float = 600.0) -> None:
        self.topology = topology
        self.backend = backend_of(topology)
        self._cert, self._key, self._user_id = cert, key, user_id
        self._artifact = Path(artifact) if artifact is not None else None
        self._timeout = timeout
        self._impl: Any = None
        self._stip: Any = None
        self._encoder: Any = None  # mpc embed: the user side of the compiled encoder

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        if self.backend == "mpc":
            from .serve.client import Client as MpcClient

            self._impl = MpcClient(self.topology, self._user_id, compute_timeout=self._timeout,
                                   cert=self._cert, key=self._key)
            self._impl.connect()
        elif self.backend == "tee":
            from .tee.service import TeeClient

            self._impl = TeeClient(self.topology, cert=self._cert, key=self._key,
                                   user_id=self._user_id, compute_timeout=self._timeout)
            self._impl.connect()
        else:
            self._connect_stip()

    def _connect_stip(self) -> None:
        from .stip.protocol import SessionLink, dial_cloud
        from .stip.transform import load_key
        from .stip.user import StipUser

        if self._artifact is None:
            raise ConfigError("a stip user needs its key artifact (Client(..., artifact=DIR): "
                              "the 'key' folder of compile)")
        clouds = self.topology.by_role("cloud")
        if len(clouds) != 1:
            raise ConfigError("a stip topology needs exactly one party with role 'cloud'")
        key = load_key(self._artifact)
        session = dial_cloud(self.topology, clouds[0].id, cert=self._cert, key=self._key,
                             user_id=self._user_id)
        self._stip = (session, SessionLink(session, clouds[0].id))
        self._impl = StipUser(key, self._stip[1])

    def close(self) -> None:
        if self._stip is not None:
            session, link = self._stip
            try:
                link.close()
            finally:
                session.close()
            self._stip = None
        elif self._impl is not None:
            self._impl.close()
        self._impl = None

    def _need(self, task: str) -> Any:
        if task not in TASKS[self.backend]:
            raise ConfigError(f"the {self.backend} backend does not do {task!r}; it does "
                              f"{', '.join(TASKS[self.backend])}")
        if self._impl is None:
            raise RuntimeError("the client is not connected (use it as a context manager)")
        return self._impl

    def classify(self, x: torch.Tensor) -> ClassifyResult:
        """Classify a batch: images ``[batch, *input_shape]`` (mpc, tee) or token ids
        ``[batch, seq]`` int64 (stip, a sequence classifier)."""
        impl = self._need("classify")
        if self.backend == "stip":
            logits = impl.classify(x).double()
            return self._verified(ClassifyResult(logits.argmax(-1), logits))
        out = impl.predict(x)
        if self.backend == "mpc":
            mode = impl.policy.mode
            if mode == "label":
                return self._verified(ClassifyResult(out))
            if mode == "topk":
                return self._verified(ClassifyResult(out[:, 0], topk=out))
        return self._verified(ClassifyResult(out.argmax(-1), out))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> GenerateResult:
        """Greedy generation from a causal LM served by stip (``input_ids`` [batch, seq],
        prompts of one length)."""
        impl = self._need("generate")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        tokens = impl.generate(input_ids, max_new_tokens)
        return self._verified(GenerateResult(tokens, max_new_tokens))

    def embed(self, inputs: Any) -> EmbedResult:
        """Embeddings: texts through a served encoder (mpc), or token ids [batch, seq] through
        a stip encoder (its mean-pooled, L2-normalised last hidden state)."""
        impl = self._need("embed")
        if self.backend == "stip":
            hidden = impl.encode(inputs)[0].double()
            pooled = hidden.mean(1)
            return self._verified(EmbedResult(pooled / pooled.norm(dim=-1, keepdim=True)))
        if isinstance(inputs, str):
            raise ValueError("embed takes a non-empty list of strings, not one string")
        x = self._user_encoder().request(list(inputs))
        if tuple(x.shape[1:]) != impl.input_shape:
            raise ConfigError(f"the servers take inputs {list(impl.input_shape)}; the user "
                              f"artifact {self._artifact} packs {list(x.shape[1:])}: not the "
                              "model they serve")
        return self._verified(EmbedResult(impl.predict(x)))

    def zeroshot(self, images: torch.Tensor, classes: list[str],
                 template: str = "a photo of a {label}.") -> ZeroShotResult:
        """Zero-shot classification by a served CLIP (mpc): the servers embed the images and
        the class prompts on shares; this user alone sees both embeddings and scores them."""
        impl = self._need("zeroshot")
        user = self._user_side("clip")
        if not classes:
            raise ValueError("zeroshot needs at least one class name")
        img = impl.predict(user.image_request(images))
        txt = impl.predict(user.text_request([template.format(label=c) for c in classes]))
        scores = img @ txt.T
        return self._verified(ZeroShotResult(scores.argmax(-1), scores, img, txt))

    def fewshot(self, support: Any, support_labels: torch.Tensor, queries: Any
                ) -> ZeroShotResult:
        """Few-shot classification by prototypes (SecLMM's few-shot task): the servers embed
        the labelled ``support`` examples and the ``queries`` on shares (images through a
        served CLIP, texts through a served encoder); this user alone averages each class's
        support embeddings into a prototype and scores every query by cosine.
        ``text_embeddings`` of the result holds the prototypes [classes, D]."""
        impl = self._need("fewshot")
        labels = torch.as_tensor(support_labels, dtype=torch.int64)
        if labels.dim() != 1 or labels.numel() == 0 or int(labels.min()) < 0:
            raise ValueError("support_labels must be a non-empty 1-d tensor of class indices")
        classes = int(labels.max()) + 1
        missing = sorted(set(range(classes)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no support example")
        if isinstance(support, torch.Tensor):
            user = self._user_side("clip")
            sup = impl.predict(user.image_request(support))
            qry = impl.predict(user.image_request(queries))
        else:
            enc = self._user_encoder()
            if isinstance(support, str) or isinstance(queries, str):
                raise ValueError("few-shot texts must be lists of strings")
            sup = impl.predict(enc.request(list(support)))
            qry = impl.predict(enc.request(list(queries)))
        if len(sup) != len(labels):
            raise ValueError(f"{len(sup)} support examples but {len(labels)} labels")
        protos = torch.stack([sup[labels == k].mean(0) for k in range(classes)])
        protos = protos / protos.norm(dim=-1, keepdim=True)
        scores = qry @ protos.T
        return self._verified(ZeroShotResult(scores.argmax(-1), scores, qry, protos))

    def _verified(self, result: _R) -> _R:
        """The result, saying what checked it (:data:`VERIFICATION`)."""
        return dataclasses.replace(result, verified=VERIFICATION[self.backend])

    def _user_encoder(self) -> Any:
        return self._user_side("encoder")

    def _user_side(self, kind: str) -> Any:
        """The user artifact's side of the served model (loaded once)."""
        if self._encoder is not None:
            if self._encoder[0] != kind:
                raise ConfigError(f"the user artifact {self._artifact} is a "
                                  f"{self._encoder[0]}'s, not a {kind}'s")
            return self._encoder[1]
        from .artifacts import inspect_artifact

        if self._artifact is None:
            raise ConfigError(f"this task needs the user artifact of the compiled {kind} "
                              "(Client(..., artifact=DIR/user))")
        path = self._artifact
        if not (path / "manifest.json").exists() and (path / "user").is_dir():
            path = path / "user"
        got = inspect_artifact(path).meta.get("kind")
        if got != kind:
            raise ConfigError(f"the user artifact {path} is of a {got!r}, not of a {kind}")
        if kind == "clip":
            from .transformer.clip_bundle import load_clip_user

            self._encoder = (kind, load_clip_user(path))
        else:
            from .transformer.user import load_user_encoder

            self._encoder = (kind, load_user_encoder(path))
        return self._encoder[1]

    @property
    def session(self) -> Any:
        """The backend's own client (for its costs, view and policy)."""
        return self._impl
