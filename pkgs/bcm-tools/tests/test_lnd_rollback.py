"""bcm_tools.lnd_rollback on its own: versions, snapshots, the checks before a rollback, and
restores that are killed part-way. No daemon runs here; test_lnd_rollback_unit.py runs the same
code in the LND unit with real LND.

Stand-ins, each because the real thing cannot run in these tests: LND's data directory is a tree
of files shaped like LND's (`data/`, `logs/`, a wallet); LND's channel state is a
ChannelStateRecord built here (the unit tests read it from real LND); the LND unit is a
`RecordingUnit` (no systemd here); the lnd binary of the CLI tests is a script that prints an
`lnd --version` line. Tiers that are nearly full are real tmpfs mounts of a few MB (root only).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcm_tools import lnd_rollback as lr
from bcm_tools.errors import LndDataError, RollbackRefused
from bcm_tools.lnd import ChannelStateRecord, OpenChannelState

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
POINT = "ab" * 32 + ":0"


# --- helpers --------------------------------------------------------------------------------


def make_lnd_data(data_dir: Path, files: int = 3, size: int = 4096, seed: str = "a") -> None:
    """A directory shaped like LND's: databases under data/, logs, a TLS key, a symlink."""
    network = data_dir / "data" / "chain" / "bitcoin" / "regtest"
    network.mkdir(parents=True, exist_ok=True)
    (data_dir / "data" / "graph" / "regtest").mkdir(parents=True, exist_ok=True)
    (data_dir / "logs" / "bitcoin" / "regtest").mkdir(parents=True, exist_ok=True)
    (data_dir / "logs" / "bitcoin" / "regtest" / "lnd.log").write_text("log line\n" * 100)
    for i in range(files):
        (network / f"db{i}.db").write_bytes(hashlib.sha256(f"{seed}{i}".encode()).digest() * (size // 32))
    (network / "wallet.db").write_bytes(seed.encode() * 1000)
    (network / "wallet.db").chmod(0o600)
    (data_dir / "tls.key").write_text(f"key {seed}\n")
    link = data_dir / "current"
    if not link.is_symlink():
        link.symlink_to("data/chain")


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Each path under root with its mode, owner and the file's sha256 or link target."""
    found = {}
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        found[str(path.relative_to(root))] = (st_.st_mode, st_.st_uid, what)
    return found


def without_logs(found: dict[str, tuple[int, int, str]]) -> dict[str, tuple[int, int, str]]:
    return {k: v for k, v in found.items() if not k.startswith("logs")}


def channel_state(num_updates: int = 3, payment_index: int = 0, forwards: int = 0, closed: tuple[str, ...] = ()) -> ChannelStateRecord:
    channels = {} if POINT in closed else {
        POINT: OpenChannelState(num_updates=num_updates, local_balance=100_000 - num_updates, remote_balance=num_updates,
                                sent=0, received=num_updates, pending_htlcs=0)
    }  # fmt: skip
    return ChannelStateRecord(pubkey="02" + "11" * 32, alias="node1", channels=channels, pending={}, closed=list(closed),
                              payment_index=payment_index, forwards=forwards)  # fmt: skip


@pytest.fixture
def layout(tmp_path: Path) -> lr.Layout:
    data = tmp_path / "tier" / "lnd"
    data.mkdir(parents=True)
    return lr.Layout.of(data)


def run_version(layout: lr.Layout, version: str, at: datetime, **kwargs) -> lr.StartDecision:
    return lr.prepare_start(layout, version, now=at, **kwargs)


def upgraded(layout: lr.Layout, old: str = "0.20.1-beta", new: str = "0.21.0-beta") -> lr.SnapshotMeta:
    """`old` ran (with a final record of its channels), then `new` started: one snapshot."""
    run_version(layout, old, T0)
    make_lnd_data(layout.data_dir)
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(minutes=1))
    decision = run_version(layout, new, T0 + timedelta(hours=1))
    assert decision.refusal is None and decision.snapshot is not None
    return decision.snapshot


class RecordingUnit:
    """The LND unit for `rollback`: records stop and start (no systemd here)."""

    def __init__(self, active: bool = False):
        self.active = active
        self.calls: list[str] = []

    def is_active(self) -> bool:
        return self.active

    def stop(self) -> None:
        self.calls.append("stop")
        self.active = False

    def start(self) -> None:
        self.calls.append("start")
        self.active = True


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("mounting a small tmpfs as a nearly full tier needs root: run the tests as root")


@contextmanager
def small_tier(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (a tier that fills up), unmounted afterwards."""
    require_root()
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# --- versions -------------------------------------------------------------------------------


def test_the_version_is_read_from_lnds_own_output():
    # LND v0.20.1-beta as scripts/test.d/20-daemons builds it, and as a release build prints it.
    assert lr.parse_version_output("lnd version 0.20.1-beta commit=\n") == "0.20.1-beta"
    assert lr.parse_version_output("lnd version 0.19.3-beta commit=v0.19.3-beta\n") == "0.19.3-beta"
    with pytest.raises(LndDataError, match="cannot read LND's version"):
        lr.parse_version_output("something else")


@pytest.mark.parametrize(
    "older, newer",
    [
        ("0.19.3-beta", "0.20.1-beta"),
        ("0.20.0-beta", "0.20.1-beta"),
        ("0.20.1-beta.rc1", "0.20.1-beta.rc2"),
        ("0.20.1-beta.rc2", "0.20.1-beta"),
        ("0.9.2-beta", "0.10.0-beta"),
        ("v0.18.5-beta", "0.19.0-beta"),
    ],
)
def test_versions_are_ordered_as_lnd_releases_are(older, newer):
    assert lr.compare_versions(older, newer) == -1
    assert lr.compare_versions(newer, older) == 1


def test_versions_that_cannot_be_ordered_say_so():
    assert lr.compare_versions("0.20.1-beta", "0.20.1-beta") == 0
    assert lr.compare_versions("unknown", "0.20.1-beta") is None
    assert lr.compare_versions("0.20.1-beta", "0.20.1-beta.custom") is None


@given(st.tuples(*[st.integers(0, 40)] * 3, st.one_of(st.none(), st.integers(1, 9))),
       st.tuples(*[st.integers(0, 40)] * 3, st.one_of(st.none(), st.integers(1, 9))))  # fmt: skip
def test_version_order_is_the_order_of_the_numbers(a, b):
    def text(v):
        return f"{v[0]}.{v[1]}.{v[2]}-beta" + (f".rc{v[3]}" if v[3] else "")

    def key(v):
        return (v[0], v[1], v[2], 0 if v[3] else 1, v[3] or 0)

    expected = (key(a) > key(b)) - (key(a) < key(b))
    assert lr.compare_versions(text(a), text(b)) == expected
    assert lr.compare_versions(text(b), text(a)) == -expected


# --- before a start -------------------------------------------------------------------------


def test_a_fresh_directory_is_recorded_without_a_snapshot(layout):
    decision = run_version(layout, "0.20.1-beta", T0)
    assert decision.refusal is None and decision.snapshot is None
    assert lr.read_version(layout.data_dir).version == "0.20.1-beta"
    assert lr.list_snapshots(layout) == []


def test_the_same_version_starts_without_a_snapshot(layout):
    run_version(layout, "0.20.1-beta", T0)
    make_lnd_data(layout.data_dir)
    decision = run_version(layout, "0.20.1-beta", T0 + timedelta(hours=1))
    assert decision.refusal is None and decision.snapshot is None and lr.list_snapshots(layout) == []


def test_another_version_gets_a_complete_snapshot_of_the_data_first(layout):
    run_version(layout, "0.20.1-beta", T0, system=lr.SystemGeneration(system="/nix/store/x-nixos-system", generation=41))
    make_lnd_data(layout.data_dir)
    at_rest = tree(layout.data_dir)
    system = lr.SystemGeneration(system="/nix/store/y-nixos-system", generation=42)
    decision = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=1), system=system)
    meta = decision.snapshot
    assert meta is not None and decision.refusal is None
    assert (meta.version, meta.next_version, meta.system.generation) == ("0.20.1-beta", "0.21.0-beta", 42)
    assert meta.name == "20261130T130000Z-lnd-0.20.1-beta"
    # The data as it was before the start, logs left out; modes and links kept.
    assert tree(layout.snapshot(meta.name)) == without_logs(at_rest)
    assert f"Snapshot of the data: {layout.snapshot(meta.name)} (copy," in decision.messages[0]
    assert "NixOS generation 42" in decision.messages[0]
    assert lr.read_version(layout.data_dir).version == "0.21.0-beta"


def test_an_unrecorded_version_on_existing_data_is_snapshotted_as_unknown(layout):
    make_lnd_data(layout.data_dir)
    decision = run_version(layout, "0.20.1-beta", T0)
    assert decision.snapshot is not None and decision.snapshot.version == "unknown"
    assert "no record of the LND version that last ran" in decision.messages[0]


def test_only_the_newest_snapshots_are_kept(layout):
    run_version(layout, "0.17.0-beta", T0 - timedelta(hours=1))
    make_lnd_data(layout.data_dir)
    for hour, version in enumerate(["0.18.0-beta", "0.19.0-beta", "0.20.0-beta", "0.20.1-beta", "0.21.0-beta"]):
        run_version(layout, version, T0 + timedelta(hours=hour), keep=2)
    assert [m.version for m in lr.list_snapshots(layout)] == ["0.20.0-beta", "0.20.1-beta"]
    assert sorted(p.name for p in layout.snapshots_dir.iterdir() if not p.name.endswith(".json")) == [
        m.name for m in lr.list_snapshots(layout)
    ]


def test_an_older_version_is_refused_with_the_snapshot_and_the_command(layout):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    before = tree(layout.data_dir)
    decision = run_version(layout, "0.20.1-beta", T0 + timedelta(hours=3))
    assert decision.refusal == (
        f"LND 0.20.1-beta is older than LND 0.21.0-beta, which last ran on {layout.data_dir} and may have migrated "
        f"its database; not starting it. The snapshot of 0.20.1-beta's data is {layout.snapshot(meta.name)} "
        f"(taken 2026-11-30 13:00 UTC); run as root: bcm-tools lnd rollback --data-dir {layout.data_dir}"
    )
    assert tree(layout.data_dir) == before
    refusal = lr.Refusal.model_validate_json((layout.snapshots_dir / lr.REFUSAL_FILE).read_text())
    assert (refusal.installed, refusal.ran, refusal.snapshot) == ("0.20.1-beta", "0.21.0-beta", meta.name)


def test_an_older_version_without_a_snapshot_is_refused_with_the_way_out(layout):
    run_version(layout, "0.21.0-beta", T0)
    make_lnd_data(layout.data_dir)
    decision = run_version(layout, "0.20.1-beta", T0 + timedelta(hours=1))
    assert decision.refusal is not None
    assert f"No snapshot of 0.20.1-beta's data is kept in {layout.snapshots_dir}" in decision.refusal
    assert "bcm-tools backup restore" in decision.refusal


def test_a_snapshot_on_a_nearly_full_tier_is_refused_cleanly(tmp_path):
    with small_tier(tmp_path / "tier", "8m") as tier:
        layout = lr.Layout.of(tier / "lnd")
        layout.data_dir.mkdir()
        run_version(layout, "0.20.1-beta", T0)
        make_lnd_data(layout.data_dir, files=5, size=1_000_000)
        before = tree(layout.data_dir)
        decision = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=1), reserve=2_000_000)
        assert decision.refusal is not None and decision.snapshot is None
        assert decision.refusal.startswith(f"not enough free space in {layout.snapshots_dir} for a snapshot of {layout.data_dir}")
        assert "a copy needs 5 MB and 2 MB must stay free" in decision.refusal and "not starting LND" in decision.refusal
        # Nothing written: no partial copy, the data and its version record as they were.
        assert sorted(p.name for p in layout.snapshots_dir.iterdir()) == [lr.REFUSAL_FILE]
        assert tree(layout.data_dir) == before


def test_a_tier_that_fills_up_during_the_copy_leaves_no_partial_snapshot(tmp_path):
    """300 one-byte files pass the check (300 bytes) but take a 4 KiB page each on tmpfs."""
    with small_tier(tmp_path / "tier", "2m") as tier:
        layout = lr.Layout.of(tier / "lnd")
        make_lnd_data(layout.data_dir, files=0)
        many = layout.data_dir / "data" / "graph" / "regtest"
        for i in range(300):
            (many / f"f{i}").write_bytes(b"x")
        run_version(layout, "0.20.1-beta", T0)
        before = tree(layout.data_dir)
        decision = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=1))
        assert decision.refusal is not None and "filled up while copying" in decision.refusal
        assert sorted(p.name for p in layout.snapshots_dir.iterdir()) == [lr.REFUSAL_FILE]
        assert tree(layout.data_dir) == before


KILL_SNAPSHOT = """
import sys
from datetime import datetime, timezone
from pathlib import Path
from bcm_tools import lnd_rollback as lr
lr.prepare_start(lr.Layout.of(Path(sys.argv[1])), sys.argv[2])
"""


def test_a_snapshot_killed_part_way_is_removed_and_taken_again(layout):
    run_version(layout, "0.20.1-beta", T0)
    make_lnd_data(layout.data_dir, files=40, size=1_000_000)
    at_rest = tree(layout.data_dir)
    child = subprocess.Popen([sys.executable, "-c", KILL_SNAPSHOT, str(layout.data_dir), "0.21.0-beta"])
    # Killed once the copy has begun and before it is published.
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".partial-") for p in layout.snapshots_dir.glob(".partial-*")) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(child.pid, 9)
    child.wait()
    if lr.list_snapshots(layout):
        pytest.fail("the copy finished before it could be killed; make the data larger")
    assert lr.read_version(layout.data_dir).version == "0.20.1-beta"
    decision = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=1))
    assert any(m.startswith("removed the incomplete snapshot") for m in decision.messages)
    (meta,) = lr.list_snapshots(layout)
    assert tree(layout.snapshot(meta.name)) == without_logs(at_rest)
    assert not list(layout.snapshots_dir.glob(".partial-*"))


# --- records and the checks before a rollback -----------------------------------------------


def test_records_equal_to_the_baseline_allow_the_rollback(layout):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(3), final=False, now=T0 + timedelta(hours=1, minutes=1))
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    reasons, alias = lr.safety_reasons(layout, meta)
    assert reasons == [] and alias == "node1"


@pytest.mark.parametrize(
    "after, expected",
    [
        (channel_state(5), f"channel {POINT}: commitment height 3 → 5, local balance 99997 → 99995 sat (2 update(s))"),
        (channel_state(3, payment_index=1), "payments made (payment index 0 → 1)"),
        (channel_state(3, forwards=2), "2 HTLC(s) forwarded"),
        (channel_state(3, closed=(POINT,)), f"channel {POINT} closed"),
    ],
)
def test_any_movement_of_the_channels_since_the_snapshot_is_a_reason(layout, after, expected):
    meta = upgraded(layout)
    notes = lr.record_state(layout.data_dir, after, final=True, now=T0 + timedelta(hours=2))
    assert notes == [f"since snapshot {meta.name}: {expected}"]
    reasons, _ = lr.safety_reasons(layout, meta)
    assert reasons == [expected]


def test_a_change_seen_once_stays_a_reason_even_if_a_later_record_looks_like_the_baseline(layout):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(4), final=False, now=T0 + timedelta(hours=1, minutes=5))
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    reasons, _ = lr.safety_reasons(layout, meta)
    assert reasons == [f"channel {POINT}: commitment height 3 → 4, local balance 99997 → 99996 sat (1 update(s))"]


def test_no_final_record_after_the_last_start_is_a_reason(layout):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    # The newer version starts once more and is killed: its start makes the last record not final.
    run_version(layout, "0.21.0-beta", T0 + timedelta(hours=3))
    reasons, _ = lr.safety_reasons(layout, meta)
    assert len(reasons) == 1 and "last run has no final record of its channel state" in reasons[0]


def test_a_newer_version_that_never_reported_is_a_reason(layout):
    """The newer LND failed before it answered over RPC: nothing shows what it did."""
    meta = upgraded(layout)
    reasons, _ = lr.safety_reasons(layout, meta)
    assert len(reasons) == 1 and "ran on the data after the snapshot but never reported its channel state" in reasons[0]


def test_no_record_before_the_snapshot_is_a_reason(layout):
    run_version(layout, "0.20.1-beta", T0)
    make_lnd_data(layout.data_dir)
    meta = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=1)).snapshot
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    reasons, _ = lr.safety_reasons(layout, meta)
    assert reasons and "never recorded before snapshot" in reasons[0]


# --- rollback -------------------------------------------------------------------------------


def test_rollback_restores_the_snapshot_and_keeps_the_data_it_replaced(layout):
    meta = upgraded(layout)
    snapshot_tree = tree(layout.snapshot(meta.name))
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    run_version(layout, "0.20.1-beta", T0 + timedelta(hours=3))  # refused
    newer = tree(layout.data_dir)
    unit = RecordingUnit()
    result = lr.rollback(layout, unit, now=T0 + timedelta(hours=4))
    assert unit.calls == ["stop", "start"] and not result.forced
    assert tree(layout.data_dir) == snapshot_tree
    assert tree(result.replaced) == newer
    # The snapshot stays; the refusal is gone; the next start is the older version's own.
    assert tree(layout.snapshot(meta.name)) == snapshot_tree
    assert not (layout.snapshots_dir / lr.REFUSAL_FILE).exists()
    assert run_version(layout, "0.20.1-beta", T0 + timedelta(hours=5)).refusal is None


def test_a_refused_rollback_changes_nothing_and_restarts_a_unit_that_ran(layout):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(4), final=True, now=T0 + timedelta(hours=2))
    before = tree(layout.data_dir)
    unit = RecordingUnit(active=True)
    with pytest.raises(RollbackRefused) as refused:
        lr.rollback(layout, unit, snapshot=meta.name)
    assert refused.value.exit_code == 7
    assert refused.value.reasons == [f"channel {POINT}: commitment height 3 → 4, local balance 99997 → 99996 sat (1 update(s))"]
    assert "bcm-tools backup restore" in refused.value.notes()[0]
    assert unit.calls == ["stop", "start"] and tree(layout.data_dir) == before


def test_force_needs_the_alias_typed(layout):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(4), final=True, now=T0 + timedelta(hours=2))
    before = tree(layout.data_dir)
    asked = []

    def typed(word):
        return lambda alias, reasons: asked.append((alias, len(reasons))) or word

    with pytest.raises(RollbackRefused, match="did not match the node's alias 'node1'"):
        lr.rollback(layout, RecordingUnit(), snapshot=meta.name, force=True, confirm=typed("node2"))
    with pytest.raises(RollbackRefused):
        lr.rollback(layout, RecordingUnit(), snapshot=meta.name, force=True)
    assert tree(layout.data_dir) == before and asked == [("node1", 1)]
    result = lr.rollback(layout, RecordingUnit(), snapshot=meta.name, force=True, confirm=typed("node1\n"))
    assert result.forced and lr.read_version(layout.data_dir).version == "0.20.1-beta"


def test_a_forced_rollback_marks_the_older_snapshots_as_passed_over(layout):
    run_version(layout, "0.19.0-beta", T0)
    make_lnd_data(layout.data_dir)
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(minutes=1))
    first = run_version(layout, "0.20.1-beta", T0 + timedelta(hours=1)).snapshot
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=1, minutes=1))
    second = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=2)).snapshot
    lr.record_state(layout.data_dir, channel_state(6), final=True, now=T0 + timedelta(hours=3))
    lr.rollback(layout, RecordingUnit(), snapshot=second.name, force=True, confirm=lambda alias, _: alias)
    # Back on 0.20.1's data: a rollback further, to 0.19.0, must not pass on stale records.
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=4))
    reasons, _ = lr.safety_reasons(layout, first)
    assert f"a rollback to {second.name} was forced past channel changes" in reasons


KILL_RESTORE = """
import sys
from pathlib import Path
from bcm_tools import lnd_rollback as lr
layout = lr.Layout.of(Path(sys.argv[1]))
lr.restore_snapshot(layout, lr.choose_snapshot(layout, sys.argv[2]))
"""


def restore_setup(root: Path, files: int, size: int) -> tuple[lr.Layout, lr.SnapshotMeta, dict, dict]:
    layout = lr.Layout.of(root / "lnd")
    layout.data_dir.mkdir(parents=True)
    run_version(layout, "0.20.1-beta", T0)
    make_lnd_data(layout.data_dir, files=files, size=size, seed="old")
    meta = run_version(layout, "0.21.0-beta", T0 + timedelta(hours=1)).snapshot
    make_lnd_data(layout.data_dir, files=files, size=size, seed="new")
    return layout, meta, tree(layout.snapshot(meta.name)), tree(layout.data_dir)


def check_old_or_new(layout: lr.Layout, snapshot_tree: dict, current_tree: dict) -> str:
    """After a restore was stopped and finished or undone: the data is one whole tree or the other."""
    lr.finish_interrupted_restore(layout)
    now = tree(layout.data_dir)
    assert now in (snapshot_tree, current_tree), "the data directory is a mix of the snapshot and the data"
    assert not (layout.snapshots_dir / lr.RESTORE_JOURNAL).exists()
    assert not list(layout.snapshots_dir.glob(".restore-*"))
    if now == snapshot_tree:
        (replaced,) = layout.snapshots_dir.glob("replaced-*")
        assert tree(replaced) == current_tree
        return "restored"
    assert not list(layout.snapshots_dir.glob("replaced-*"))
    return "old"


def test_kill_9_during_a_restore_leaves_the_old_data_or_the_snapshot_never_a_mix(tmp_path):
    outcomes = []
    durations = []
    for trial in range(8):
        layout, meta, snapshot_tree, current_tree = restore_setup(tmp_path / f"t{trial}", files=20, size=1_000_000)
        child = subprocess.Popen([sys.executable, "-c", KILL_RESTORE, str(layout.data_dir), meta.name])
        if trial == 0:
            start = time.monotonic()
            child.wait()
            durations.append(time.monotonic() - start)
        else:
            # Spread over the whole run, interpreter start-up included.
            time.sleep(durations[0] * trial / 7)
            os.kill(child.pid, 9)
            child.wait()
        outcomes.append(check_old_or_new(layout, snapshot_tree, current_tree))
    assert outcomes[0] == "restored" and "old" in outcomes


def test_a_restore_stopped_after_any_step_is_finished_or_undone(tmp_path, monkeypatch):
    """Deterministic: the restore stops at each of its fsyncs in turn (a crash between two steps)."""

    class Stopped(BaseException):
        pass

    real_fsync_dir = lr._fsync_dir
    step = 0
    outcomes = set()
    while True:
        step += 1
        layout, meta, snapshot_tree, current_tree = restore_setup(tmp_path / f"s{step}", files=2, size=4096)
        calls = 0

        def fsync_dir(path, stop_at=step):
            nonlocal calls
            calls += 1
            if calls == stop_at:
                raise Stopped
            real_fsync_dir(path)

        monkeypatch.setattr(lr, "_fsync_dir", fsync_dir)
        try:
            lr.restore_snapshot(layout, meta)
            finished = True
        except Stopped:
            finished = False
        monkeypatch.setattr(lr, "_fsync_dir", real_fsync_dir)
        outcomes.add(check_old_or_new(layout, snapshot_tree, current_tree))
        if finished:
            break
    assert outcomes == {"old", "restored"} and step > 5


def test_an_interrupted_restore_refuses_the_start_until_rollback_finishes_it(layout, monkeypatch):
    meta = upgraded(layout)
    lr.record_state(layout.data_dir, channel_state(3), final=True, now=T0 + timedelta(hours=2))
    run_version(layout, "0.20.1-beta", T0 + timedelta(hours=3))
    monkeypatch.setattr(lr, "_renameat2", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        lr.rollback(layout, RecordingUnit())
    monkeypatch.undo()
    decision = run_version(layout, "0.20.1-beta", T0 + timedelta(hours=4))
    assert decision.refusal is not None and f"a rollback of {layout.data_dir} was interrupted" in decision.refusal
    unit = RecordingUnit()
    result = lr.rollback(layout, unit)
    assert result.snapshot.name == meta.name and unit.calls == ["stop", "start"]
    assert lr.read_version(layout.data_dir).version == "0.20.1-beta"


# --- the command line -----------------------------------------------------------------------


def fake_lnd(directory: Path, version: str) -> Path:
    """A stand-in for the lnd binary's `--version` (the unit tests run the real one)."""
    script = directory / f"lnd-{version}"
    script.write_text(f'#!/bin/sh\necho "lnd version {version} commit="\n')
    script.chmod(0o755)
    return script


def test_cli_prepare_start_refuses_an_older_version_with_one_line_and_exit_78(layout, tmp_path, run_cli):
    make_lnd_data(layout.data_dir)
    for version in ("0.20.1-beta", "0.21.0-beta"):
        done = run_cli("lnd", "prepare-start", f"--data-dir={layout.data_dir}", f"--lnd={fake_lnd(tmp_path, version)}")
        assert done.returncode == 0, done.stderr
    assert "Snapshot of the data:" in done.stderr
    refused = run_cli("lnd", "prepare-start", f"--data-dir={layout.data_dir}", f"--lnd={fake_lnd(tmp_path, '0.20.1-beta')}")
    assert refused.returncode == 78
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: LND 0.20.1-beta is older than LND 0.21.0-beta") and "bcm-tools lnd rollback" in line
    # With --refusal-file (the unit's way) the step succeeds and leaves the line for the start command.
    refusal = tmp_path / "refused"
    quiet = run_cli("lnd", "prepare-start", f"--data-dir={layout.data_dir}", f"--lnd={fake_lnd(tmp_path, '0.20.1-beta')}",
                    f"--refusal-file={refusal}")  # fmt: skip
    assert quiet.returncode == 0 and refusal.read_text() == line.removeprefix("error: ") + "\n"


def test_cli_errors_are_one_line_without_a_traceback(layout, tmp_path, run_cli):
    missing = run_cli("lnd", "prepare-start", f"--data-dir={layout.data_dir}", f"--lnd={tmp_path / 'no-such-lnd'}")
    assert missing.returncode == 7 and missing.stderr.startswith("error: cannot run") and "Traceback" not in missing.stderr
    nothing = run_cli("lnd", "rollback", f"--data-dir={layout.data_dir}")
    assert nothing.returncode == 7 and "Traceback" not in nothing.stderr
    assert nothing.stderr.splitlines() == [
        f"error: nothing to roll back: LND has not refused to start on {layout.data_dir}; name a snapshot with "
        f"--snapshot (bcm-tools lnd snapshots --data-dir {layout.data_dir} lists them)"
    ]
    bad = run_cli("lnd", "rollback", f"--data-dir={layout.data_dir}", "--snapshot=../../etc")
    assert bad.returncode == 7 and "is not a snapshot name" in bad.stderr


def test_cli_lists_the_snapshots(layout, run_cli):
    meta = upgraded(layout)
    listed = run_cli("lnd", "snapshots", f"--data-dir={layout.data_dir}")
    assert listed.returncode == 0
    assert listed.stdout == f"{meta.name}: LND 0.20.1-beta's data before 0.21.0-beta started, taken 2026-11-30 13:00:00 UTC (copy)\n"
