"""`bcm-tools status`: one view of a node, read from its Prometheus (bcm.monitoring).

Everything shown is what Prometheus last scraped from the node's exporters, and the alerts it
evaluates: chain tips and sync of bitcoind and monerod, peers, LND's channels and balances, the
channel backups in each target, each storage tier against its capacity plan. Prometheus listens
on the node's loopback only; remotely it is reached through an SSH tunnel as the operator.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bcm_tools.errors import DaemonError, UsageError


class Prometheus:
    """Prometheus' HTTP API: instant queries and the alerts it holds."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout) as reply:
                answer = json.load(reply)
        except urllib.error.HTTPError as err:
            raise DaemonError(f"Prometheus at {self.url} answered HTTP {err.code} to {path.split('?')[0]}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err.__class__.__name__
            raise DaemonError(f"cannot reach Prometheus at {self.url} ({reason}); is bcm.monitoring enabled?") from None
        except json.JSONDecodeError:
            raise DaemonError(f"Prometheus at {self.url} answered something that is not JSON") from None
        if answer.get("status") != "success":
            raise DaemonError(f"Prometheus at {self.url}: {answer.get('error', 'query failed')}")
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        try:
            if data["resultType"] == "scalar":
                return [({}, float(data["result"][1]))]
            return [(r["metric"], float(r["value"][1])) for r in data["result"]]
        except (KeyError, TypeError, ValueError, IndexError):
            raise DaemonError(f"Prometheus at {self.url}: unexpected answer to {expr}") from None

    def one(self, expr: str) -> float | None:
        found = self.query(expr)
        return found[0][1] if found else None

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])


# --- the report -----------------------------------------------------------------------------


class Bitcoind(BaseModel):
    blocks: int
    headers: int
    verification_progress: float
    tip_age_seconds: float | None
    peers_in: int
    peers_out: int
    mempool_transactions: int


class Monerod(BaseModel):
    height: int
    target_height: int
    synchronized: bool
    tip_age_seconds: float | None
    peers_in: int
    peers_out: int


class Channel(BaseModel):
    chan_point: str
    remote_pubkey: str
    active: bool
    capacity_sat: int
    local_balance_sat: int
    remote_balance_sat: int


class Lightning(BaseModel):
    synced_to_chain: bool
    synced_to_graph: bool
    block_height: int
    peers: int
    wallet_confirmed_sat: int
    channels: list[Channel]


class BackupTarget(BaseModel):
    target: str
    last_success_age_seconds: float | None
    channels: int | None
    behind: bool
    failures: int


class Tier(BaseModel):
    tier: str
    mountpoint: str
    size_bytes: float
    avail_bytes: float
    planned_bytes: float | None


class Alert(BaseModel):
    name: str
    state: str  # pending | firing
    severity: str
    labels: dict[str, str]
    summary: str


class Report(BaseModel):
    host: str
    prometheus: str
    at: float
    bitcoind: Bitcoind | None
    monerod: Monerod | None
    fulcrum_height: int | None
    tor_bootstrap_percent: int | None
    lnd: Lightning | None
    backups: list[BackupTarget]
    tiers: list[Tier]
    alerts: list[Alert]
    targets_down: list[str]


def _by(prom: Prometheus, expr: str, label: str) -> dict[str, float]:
    return {labels.get(label, ""): value for labels, value in prom.query(expr)}


def _int(value: float | None) -> int:
    return int(value) if value is not None else 0


def read_report(prom: Prometheus, host: str) -> Report:
    now = prom.one("time()") or time.time()

    bitcoind = None
    if (blocks := prom.one("bcm_bitcoind_blocks")) is not None:
        tip = prom.one("bcm_bitcoind_tip_timestamp_seconds")
        peers = _by(prom, "bcm_bitcoind_peers", "direction")
        bitcoind = Bitcoind(
            blocks=int(blocks),
            headers=_int(prom.one("bcm_bitcoind_headers")),
            verification_progress=prom.one("bcm_bitcoind_verification_progress") or 0.0,
            tip_age_seconds=now - tip if tip else None,
            peers_in=int(peers.get("in", 0)),
            peers_out=int(peers.get("out", 0)),
            mempool_transactions=_int(prom.one("bcm_bitcoind_mempool_transactions")),
        )

    monerod = None
    if (height := prom.one("bcm_monerod_height")) is not None:
        tip = prom.one("bcm_monerod_tip_timestamp_seconds")
        peers = _by(prom, "bcm_monerod_peers", "direction")
        monerod = Monerod(
            height=int(height),
            target_height=_int(prom.one("bcm_monerod_target_height")),
            synchronized=bool(prom.one("bcm_monerod_synchronized")),
            tip_age_seconds=now - tip if tip else None,
            peers_in=int(peers.get("in", 0)),
            peers_out=int(peers.get("out", 0)),
        )

    lnd = None
    if (synced := prom.one("bcm_lnd_synced_to_chain")) is not None:
        fields = {
            name: {(m["chan_point"], m["remote_pubkey"]): v for m, v in prom.query(f"bcm_lnd_channel_{name}")}
            for name in ("active", "capacity_sat", "local_balance_sat", "remote_balance_sat")
        }
        channels = [
            Channel(
                chan_point=point,
                remote_pubkey=peer,
                active=bool(fields["active"][(point, peer)]),
                capacity_sat=int(fields["capacity_sat"].get((point, peer), 0)),
                local_balance_sat=int(fields["local_balance_sat"].get((point, peer), 0)),
                remote_balance_sat=int(fields["remote_balance_sat"].get((point, peer), 0)),
            )
            for point, peer in sorted(fields["active"])
        ]
        wallet = _by(prom, "bcm_lnd_wallet_balance_sat", "state")
        lnd = Lightning(
            synced_to_chain=bool(synced),
            synced_to_graph=bool(prom.one("bcm_lnd_synced_to_graph")),
            block_height=_int(prom.one("bcm_lnd_block_height")),
            peers=_int(prom.one("bcm_lnd_peers")),
            wallet_confirmed_sat=int(wallet.get("confirmed", 0)),
            channels=channels,
        )

    last = _by(prom, "bcm_lnd_backup_last_success_timestamp_seconds", "target")
    counts = _by(prom, "bcm_lnd_backup_channels", "target")
    behind = _by(prom, "bcm_lnd_backup_behind", "target")
    failures = _by(prom, "bcm_lnd_backup_failures_total", "target")
    backups = [
        BackupTarget(
            target=target,
            last_success_age_seconds=now - last[target] if target in last else None,
            channels=int(counts[target]) if target in counts else None,
            behind=bool(behind.get(target, 0)),
            failures=int(failures.get(target, 0)),
        )
        for target in sorted(set(last) | set(behind))
    ]

    size = _by(prom, "bcm_tier_size_bytes", "tier")
    avail = _by(prom, "bcm_tier_avail_bytes", "tier")
    planned = _by(prom, "bcm_tier_planned_bytes", "tier")
    mounts = {m["tier"]: m.get("mountpoint", "") for m, _ in prom.query("bcm_tier_size_bytes")}
    tiers = [
        Tier(tier=t, mountpoint=mounts[t], size_bytes=size[t], avail_bytes=avail.get(t, 0.0), planned_bytes=planned.get(t))
        for t in sorted(size)
    ]

    alerts = sorted(
        (
            Alert(
                name=a["labels"].get("alertname", "?"),
                state=a.get("state", "?"),
                severity=a["labels"].get("severity", ""),
                labels={k: v for k, v in a["labels"].items() if k not in ("alertname", "severity")},
                summary=a.get("annotations", {}).get("summary", ""),
            )
            for a in prom.alerts()
        ),
        key=lambda a: (a.state != "firing", a.name),
    )
    down = sorted(m.get("job", "?") for m, v in prom.query("up") if v == 0)
    tor = prom.one("bcm_tor_bootstrap_percent")
    fulcrum = prom.one("bcm_fulcrum_height")
    return Report(
        host=host,
        prometheus=prom.url,
        at=now,
        bitcoind=bitcoind,
        monerod=monerod,
        fulcrum_height=int(fulcrum) if fulcrum is not None else None,
        tor_bootstrap_percent=int(tor) if tor is not None else None,
        lnd=lnd,
        backups=backups,
        tiers=tiers,
        alerts=alerts,
        targets_down=down,
    )


# --- reaching the node ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ssh_tunnel(destination: str, remote_port: int, ssh_options: list[str], timeout: float = 30) -> Iterator[str]:
    """A local port forwarded to the node's loopback `remote_port` by `ssh -N -L`; yields its URL.
    The ssh process is ours and is ended by its PID when done."""
    if shutil.which("ssh") is None:
        raise UsageError("ssh is not installed")
    local = _free_port()
    args = [
        "ssh", "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
        "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}", *ssh_options, destination,
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                error = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
                raise DaemonError(f"ssh to {destination} failed: {error[-1] if error else f'exit {proc.returncode}'}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", local)) == 0:
                    break
            if time.monotonic() > deadline:
                raise DaemonError(f"ssh to {destination}: no tunnel after {timeout:.0f} s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{local}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def ssh_options(port: int | None, identity: Path | None, known_hosts: Path | None) -> list[str]:
    options: list[str] = []
    if port:
        options += ["-p", str(port)]
    if identity:
        options += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    if known_hosts:
        options += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    return options


# --- the screen -------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _short(text: str, keep: int = 10) -> str:
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-4:]}"


def render(report: Report) -> str:
    lines = [f"{report.host}: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.at))}"]
    b = report.bitcoind
    if b:
        lines.append(
            f"bitcoind   height {b.blocks:,} of {b.headers:,} headers, verified {b.verification_progress * 100:.2f} %, "
            f"tip {_age(b.tip_age_seconds)}; peers {b.peers_in} in, {b.peers_out} out; mempool {b.mempool_transactions:,} tx"
        )
    m = report.monerod
    if m:
        state = "synchronized" if m.synchronized else f"syncing to {m.target_height:,}"
        lines.append(f"monerod    height {m.height:,} ({state}), tip {_age(m.tip_age_seconds)}; peers {m.peers_in} in, {m.peers_out} out")
    if report.fulcrum_height is not None:
        lines.append(f"Fulcrum    height {report.fulcrum_height:,}")
    if report.tor_bootstrap_percent is not None:
        lines.append(f"Tor        bootstrapped {report.tor_bootstrap_percent} %")
    n = report.lnd
    if n:
        lines.append(
            f"LND        height {n.block_height:,}; synced to chain {'yes' if n.synced_to_chain else 'NO'}, graph {'yes' if n.synced_to_graph else 'no'}; "
            f"{n.peers} peers; wallet {n.wallet_confirmed_sat:,} sat confirmed"
        )
        if n.channels:
            lines.append(f"  {'channel':<24} {'peer':<16} {'state':<8} {'capacity':>12} {'local':>12} {'remote':>12}")
            for c in n.channels:
                lines.append(
                    f"  {_short(c.chan_point, 12):<24} {_short(c.remote_pubkey, 6):<16} {'active' if c.active else 'INACTIVE':<8} "
                    f"{c.capacity_sat:>12,} {c.local_balance_sat:>12,} {c.remote_balance_sat:>12,}"
                )
        else:
            lines.append("  no open channels")
    for t in report.backups:
        state = "BEHIND" if t.behind else "current"
        covered = f"{t.channels} channels" if t.channels is not None else "no copy yet"
        failed = f", {t.failures} failed attempts" if t.failures else ""
        lines.append(f"backup     {t.target}: {covered}, verified {_age(t.last_success_age_seconds)}, {state}{failed}")
    for t in report.tiers:
        used = t.size_bytes - t.avail_bytes
        free = t.avail_bytes / t.size_bytes * 100 if t.size_bytes else 0
        plan = f"; plan {_bytes(t.planned_bytes)}" if t.planned_bytes else ""
        lines.append(f"tier       {t.tier} ({t.mountpoint}): {_bytes(used)} used of {_bytes(t.size_bytes)}, {free:.0f} % free{plan}")
    if report.targets_down:
        lines.append(f"scrape     DOWN: {', '.join(report.targets_down)}")
    firing = [a for a in report.alerts if a.state == "firing"]
    pending = [a for a in report.alerts if a.state != "firing"]
    lines.append(f"alerts     {len(firing)} firing, {len(pending)} pending")
    for a in report.alerts:
        where = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items()) if k in ("tier", "target", "chan_point", "name", "daemon"))
        lines.append(f"  {a.state:<8} {a.name}{'{' + where + '}' if where else ''}: {a.summary}")
    return "\n".join(lines)
