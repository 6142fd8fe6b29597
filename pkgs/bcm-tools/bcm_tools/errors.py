"""The one error hierarchy of bcm-tools.

Domain modules raise these; the CLI converts them once into a message and an
exit code. Nothing below the CLI prints or exits.
"""

from __future__ import annotations


class BcmError(Exception):
    """Base of every error a user can cause or meet. `exit_code` is what the CLI returns."""

    exit_code = 1

    def lines(self) -> list[str]:
        """The lines shown to the user, one problem per line."""
        return [str(self)]

    def notes(self) -> list[str]:
        """What the user should know beside the problems (what could not be checked, and why)."""
        return []


class SpecError(BcmError):
    """A cluster spec that cannot be used. Carries every problem found, each with its field path,
    and a note for each check held back because another problem made it meaningless."""

    exit_code = 2

    def __init__(self, problems: list[tuple[str, str]], notes: list[str] | None = None):
        self.problems = problems
        self._notes = notes or []
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    def lines(self) -> list[str]:
        return [f"{path}: {msg}" if path else msg for path, msg in self.problems]

    def notes(self) -> list[str]:
        return list(self._notes)


class UsageError(BcmError):
    """A command was called with arguments that do not fit together."""

    exit_code = 2


class DaemonError(BcmError):
    """A daemon (LND, bitcoind, monerod, Kafka, LXD) could not be reached or refused a call."""

    exit_code = 3


class LxdError(DaemonError):
    """An LXD server that cannot take what the spec asks for: a pool or image it does not have, a
    pool without room, a name taken by something bcm-tools did not make, a call it refused.
    One line per problem."""

    def __init__(self, problems: list[str], notes: list[str] | None = None):
        self.problems = problems
        self._notes = notes or []
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)

    def notes(self) -> list[str]:
        return list(self._notes)


class ProvisionError(BcmError):
    """Provisioning refused or left undone: a disk that would shrink, an instance that cannot be
    changed into what the spec says, drift found without --apply, a destroy without --yes."""

    exit_code = 1

    def __init__(self, problems: list[str], notes: list[str] | None = None):
        self.problems = problems
        self._notes = notes or []
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)

    def notes(self) -> list[str]:
        return list(self._notes)


class CredentialError(BcmError):
    """A key, identity or device could not be used (wrong key, refused on device, not connected)."""

    exit_code = 4


class GenerateError(BcmError):
    """Generated files could not be written, or would overwrite a user's edits."""

    exit_code = 1

    def __init__(self, message: str, paths: list[str] | None = None):
        self.paths = paths or []
        super().__init__(message)

    def lines(self) -> list[str]:
        return [str(self)] + [f"  {p}" for p in self.paths]


class DriftError(GenerateError):
    """Generated files on disk differ from what the spec produces (`gen-host --check`)."""


class BackupError(BcmError):
    """A channel backup that cannot be used: truncated, damaged, or made by another node."""

    exit_code = 5


class TargetError(BcmError):
    """A backup target (local directory, remote over SSH) could not take or give back a file."""

    exit_code = 3


class SecretError(BcmError):
    """An operator secret that cannot be used: bad name, missing recipients, damaged file."""

    exit_code = 6


class RpcError(DaemonError):
    """A daemon answered an RPC call with an error; `code` is its own error code."""

    def __init__(self, message: str, code: int | None = None):
        self.code = code
        super().__init__(message)


class LndDataError(BcmError):
    """LND's data could not be snapshotted or rolled back as asked: no snapshot, no room, another
    file system, an interrupted restore."""

    exit_code = 7


class StartRefused(LndDataError):
    """LND must not start on this data: an older LND than the one that last ran on it, or no room
    for the snapshot a new version needs first. The exit code is the one the lnd unit lists in
    RestartPreventExitStatus, so systemd does not restart into the same refusal."""

    exit_code = 78


class RollbackRefused(LndDataError):
    """A rollback that could broadcast revoked channel state: the channels may have moved since the
    snapshot. `reasons` are what LND's records show."""

    def __init__(self, message: str, reasons: list[str], notes: list[str]):
        self.reasons = reasons
        self._notes = notes
        super().__init__(message)

    def lines(self) -> list[str]:
        return [str(self)] + [f"  {reason}" for reason in self.reasons]

    def notes(self) -> list[str]:
        return list(self._notes)
