"""Start every party of a topology as its own OS process on this machine.

``local_cluster`` is the front door for demos and tests::

    with secinfer.local_cluster(roles=["server", "server", "helper"]) as cluster:
        results = cluster.run("secinfer.net.programs:selftest", kwargs={"size": 16})

Each party runs ``python -m secinfer party --topology ... --id N --program ...`` with its log in
``<workdir>/logs/party<N>.log``. Every child is terminated when the context exits, on error
and on Ctrl-C alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .errors import SecinferNetError
from .tls import make_certs
from .topology import Topology, write_local_topology

__all__ = ["PartyFailed", "PartyProcess", "LocalCluster", "local_cluster"]


class PartyFailed(SecinferNetError):
    """One or more party processes exited with an error; the message holds their log tails."""


@dataclass
class PartyProcess:
    party_id: int
    proc: subprocess.Popen
    log: Path
    out: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def _party_env() -> dict[str, str]:
    """Environment of a local party: parties share this machine's cores, so one compute thread
    each (unless the caller set one), and a malloc that keeps big buffers instead of faulting
    fresh pages in for every tensor."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 30))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 30))
    return env


@dataclass
class LocalCluster:
    topology_path: Path
    workdir: Path
    procs: list[PartyProcess] = field(default_factory=list)
    _runs: int = 0

    @property
    def topology(self) -> Topology:
        return Topology.load(self.topology_path)

    def start(
        self,
        program: str = "secinfer.net.programs:selftest",
        kwargs: dict[str, Any] | None = None,
        party_kwargs: dict[int, dict[str, Any]] | None = None,
        ids: Sequence[int] | None = None,
        command: str = "party",
    ) -> list[PartyProcess]:
        """Start one process per party (or per id in ``ids``); returns their handles."""
        self._runs += 1
        run_dir = self.workdir / f"run{self._runs}"
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for pid in ids if ids is not None else self.topology.ids:
            args = dict(kwargs or {})
            args.update((party_kwargs or {}).get(pid, {}))
            args_file = run_dir / f"party{pid}.args.json"
            args_file.write_text(json.dumps(args))
            out = run_dir / f"party{pid}.safetensors"
            log = self.workdir / "logs" / f"party{pid}.log"
            cmd = [
                sys.executable, "-m", "secinfer", command, "--topology", str(self.topology_path),
                "--id", str(pid), "--program", program, "--args", str(args_file),
                "--out", str(out),
            ]
            with open(log, "ab") as fh:
                fh.write(f"\n=== run {self._runs}: {' '.join(cmd)}\n".encode())
                fh.flush()
                proc = subprocess.Popen(
                    cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=_party_env(),
                )
            pp = PartyProcess(pid, proc, log, out)
            self.procs.append(pp)
            started.append(pp)
        return started

    def spawn(self, party_id: int, args: Sequence[str], tag: str = "") -> PartyProcess:
        """Start ``python -m secinfer <args>`` as party ``party_id`` with its log file."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / f"party{party_id}{tag}.log"
        cmd = [sys.executable, "-m", "secinfer", *args]
        with open(log, "ab") as fh:
            fh.write(f"\n=== {' '.join(cmd)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env=_party_env())
        pp = PartyProcess(party_id, proc, log, self.workdir / f"party{party_id}.none")
        self.procs.append(pp)
        return pp

    def wait(self, procs: list[PartyProcess], timeout: float) -> dict[int, dict[str, torch.Tensor]]:
        deadline = time.monotonic() + timeout
        pending = list(procs)
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if p.proc.poll() is None]
            failed = [p for p in procs if p.proc.poll() not in (None, 0)]
            if failed and not pending:
                break
            time.sleep(0.05)
        for p in pending:
            p.kill()
        for p in procs:
            p.proc.wait()
        bad = [p for p in procs if p.proc.returncode != 0]
        if bad:
            detail = "\n".join(
                f"--- party {p.party_id} exited with {p.proc.returncode}"
                f"{' (killed: run timed out)' if p in pending else ''}; log {p.log}:\n{p.tail()}"
                for p in bad
            )
            raise PartyFailed(f"{len(bad)} of {len(procs)} parties failed:\n{detail}")
        return {p.party_id: load_file(str(p.out)) if p.out.is_file() else {} for p in procs}

    def run(
        self,
        program: str = "secinfer.net.programs:selftest",
        kwargs: dict[str, Any] | None = None,
        party_kwargs: dict[int, dict[str, Any]] | None = None,
        timeout: float = 300.0,
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Run ``program`` at every party and return each party's result tensors."""
        return self.wait(self.start(program, kwargs, party_kwargs), timeout)

    def costs(self, run: int | None = None) -> dict[int, dict[str, Any]]:
        run_dir = self.workdir / f"run{run or self._runs}"
        out = {}
        for f in sorted(run_dir.glob("party*.cost.json")):
            pid = int(f.name[len("party"):].split(".")[0])
            out[pid] = json.loads(f.read_text())
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            try:
                p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


@contextmanager
def local_cluster(
    roles: Sequence[str] = ("server", "server", "helper"),
    workdir: str | Path | None = None,
    timeout: float = 30.0,
    topology: str | Path | None = None,
    connect_timeout: float = 30.0,
    service: dict[str, int | bool] | None = None,
) -> Iterator[LocalCluster]:
    """A fresh loopback topology with new certificates (or an existing ``topology`` file)."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="secinfer-")
        workdir = tmp.name
    workdir = Path(workdir)
    if topology is None:
        topology_path = write_local_topology(workdir, list(roles), timeout=timeout,
                                             connect_timeout=connect_timeout, service=service)
        make_certs(Topology.load(topology_path), overwrite=True)
    else:
        topology_path = Path(topology).resolve()
    cluster = LocalCluster(topology_path, workdir)
    try:
        yield cluster
    finally:
        cluster.stop()
        if tmp is not None:
            tmp.cleanup()
