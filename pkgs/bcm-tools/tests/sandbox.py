"""Runs a bcm host's systemd units the way systemd would start them, on this machine, with the
configuration the modules render and the sandbox the units declare.

Input is a host's export (`nixos-tests/eval/exported/<host>.json`, written by the evaluation
harness): each unit's `serviceConfig`, its environment, and the text of every file the modules
render, by store path. A `Host` turns that into a temporary machine:

- **Store.** Every rendered file is written at its store path inside a private `/nix/store`.
  Each stub package (`/nix/store/000…-<pname>`) gets a `bin/` of real programs: the daemons the
  tests build or Debian ships (LND, monerod, tor, and for lndinit, which no registry here
  serves, the stand-in in `tests/lndinit_standin`), this checkout's bcm-tools from the venv
  the tests run in (its interpreter, venv and source mounted read-only at their own paths, as
  the Nix package's closure would be in the store), and Debian's coreutils, util-linux,
  openssl, jq… for the rest. A package with no program here (bitcoind, Fulcrum) has an empty
  `bin/`, so a unit that needs it fails at exec, loudly.
- **File system.** `/srv`, `/var` and `/run` come from a directory of the test's; `/usr` and
  `/etc` from this machine, with `/etc/passwd` and `/etc/group` generated from the export's
  users and groups (each without a fixed id gets one from 61000 up).
- **Sandbox**, per command, through bubblewrap (mount, PID, IPC and UTS namespaces):
  `ProtectSystem=strict` (everything read-only but `ReadWritePaths`, `RuntimeDirectory`,
  `StateDirectory` and the private `/tmp`), `ReadWritePaths` that must exist unless prefixed
  with `-` (systemd fails such a unit with 226/NAMESPACE), `PrivateTmp`, `PrivateDevices` (a
  minimal `/dev`), `ProtectHome`, `LoadCredential` (copied into `$CREDENTIALS_DIRECTORY`,
  243/CREDENTIALS when the source is missing), `RuntimeDirectory`/`RuntimeDirectoryMode`.
  Then `sandbox_exec.py` applies `User`/`Group` with their supplementary groups, the capability
  bounding set, `UMask`, `NoNewPrivileges`, and libseccomp filters for `SystemCallFilter`
  (`@groups` expanded by this machine's `systemd-analyze syscall-filter`),
  `SystemCallErrorNumber`, `SystemCallArchitectures`, `RestrictAddressFamilies` and
  `MemoryDenyWriteExecute`, last, right before `execve`, as systemd does.
- **Command prefixes**: `+` runs as root without any of the above (only the host's file system
  mapping), `-` ignores a failure, `!`/`!!` are treated like `+`.
- **Stop**: `stop` runs ExecStop while the main process still runs, then ends it (SIGTERM, as
  systemd's KillMode=control-group would), then ExecStopPost.

Not emulated, so not tested here (the VM tests are their proof): `IPAddressAllow`/`IPAddressDeny`
(cgroup BPF; the daemons share this machine's network namespace, on loopback),
`ProtectKernel*`, `ProtectClock`, `ProtectHostname`, `ProtectProc`/`ProcSubset` (a fresh
`/proc` is mounted, not one with hidepid), `RestrictNamespaces`, `RestrictRealtime`,
`RestrictSUIDSGID`, `LockPersonality`, `RemoveIPC`, `PrivateMounts`, resource limits,
`Type=notify` readiness (the test waits on the daemon's own port instead), restarts, unit
ordering (the test starts units in order), and activation. systemd's @groups are those of
this machine's systemd 252; NixOS 26.05 ships a newer systemd whose groups add system calls
newer than 252, so a daemon refused here for a missing call needs that difference checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
import sys
from functools import cache
from pathlib import Path
from typing import Any

from lnd_regtest import daemon_env, stop_process, stubs_dir, wait_for

REPO = Path(__file__).resolve().parents[3]
EXPORTED = REPO / "nixos-tests" / "eval" / "exported"
EXEC_STAGE = Path(__file__).with_name("sandbox_exec.py")
DEBIAN_PYTHON = "/usr/bin/python3"
FIRST_DYNAMIC_ID = 61000

# Debian's programs for the nixpkgs packages whose programs the rendered scripts call.
HOST_PACKAGES = {"bash", "coreutils", "findutils", "gnugrep", "gnused", "jq", "openssl", "util-linux", "curl", "age", "systemd"}
# systemd's exit statuses for failures before the command runs (systemd.exec(5)).
EXIT_NAMESPACE = 226
EXIT_CREDENTIALS = 243


class UnitFailed(Exception):
    """A unit's command exited non-zero (or could not be set up), as systemd would report it."""

    def __init__(self, unit: str, command: str, status: int, output: str):
        super().__init__(f"{unit}: {command} exited with status {status}\n{output}")
        self.unit, self.command, self.status, self.output = unit, command, status, output


def load_export(host: str) -> dict[str, Any]:
    return json.loads((EXPORTED / f"{host}.json").read_text())


def sandbox_tools_missing() -> str | None:
    """Why the sandbox cannot run on this machine, or None (scripts/test.d/10-sandbox installs)."""
    for tool in ("bwrap", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.d/10-sandbox installs it)"
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import seccomp"], capture_output=True)
    if probe.returncode != 0:
        return "Debian's python3-seccomp is not installed (scripts/test.d/10-sandbox installs it)"
    return None


@cache
def syscall_groups() -> dict[str, list[str]]:
    """systemd's @groups, each as its members (calls and nested @groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                current.append(entry)
        elif not line.strip():
            current = None
    return groups


def expand_syscalls(entries: list[str]) -> set[str]:
    groups = syscall_groups()
    calls: set[str] = set()
    for entry in entries:
        if entry.startswith("@"):
            if entry not in groups:
                raise ValueError(f"unknown system call group {entry}")
            calls |= expand_syscalls(groups[entry])
        else:
            calls.add(entry)
    return calls


def syscall_plan(filters: list[str]) -> dict[str, Any]:
    """systemd's reading of SystemCallFilter: the first entry decides allow- or deny-list; later
    entries add to it, `~` entries take away."""
    if not filters:
        return {}
    allow_list = not filters[0].startswith("~")
    chosen: set[str] = set()
    for entry in filters:
        negated = entry.startswith("~")
        names = expand_syscalls(entry.lstrip("~").split())
        if negated == (not allow_list):
            chosen |= names
        else:
            chosen -= names
    if allow_list:
        # Always allowed, whatever the list says (systemd.exec(5), SystemCallFilter).
        chosen |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
        return {"syscall_allow": sorted(chosen)}
    return {"syscall_deny": sorted(chosen)}


def errno_number(name: str | None) -> int | None:
    import errno as errno_module

    if not name:
        return None
    return getattr(errno_module, name) if not name.isdigit() else int(name)


def address_families(names: list[str] | str | None) -> list[int] | None:
    if not names:
        return None
    names = names.split() if isinstance(names, str) else names
    if names[0].startswith("~"):
        raise NotImplementedError("deny-listed address families")
    return [getattr(socket, name) for name in names]


CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip


def bounding_set(value: list[str] | str | None) -> list[int] | None:
    """CapabilityBoundingSet: None keeps every capability; "" keeps none."""
    if value is None:
        return None
    names = value.split() if isinstance(value, str) else value
    return [CAPABILITIES.index(name) for name in names]


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@dataclass
class Command:
    """One Exec* line: its prefixes and its argv."""

    line: str
    privileged: bool
    ignore_failure: bool
    argv: list[str]

    @classmethod
    def parse(cls, line: str) -> Command:
        prefixes = ""
        while line and line[0] in "+-!@:":
            prefixes += line[0]
            line = line[1:]
        return cls(line, "+" in prefixes or "!" in prefixes, "-" in prefixes, shlex.split(line))


@dataclass
class Running:
    unit: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Host:
    """A bcm host's file system, users and store in `root`, with real programs for its packages.

    `programs` maps a stub package's pname to a directory of real programs (or one file per
    program name); the daemons built for the tests are found through `current.env`."""

    export: dict[str, Any]
    root: Path
    programs: dict[str, dict[str, Path]] = field(default_factory=dict)
    running: list[Running] = field(default_factory=list)
    # NFS with root squash, roughly: root's `+` commands lose the capabilities that let root
    # write, chown and chmod files it does not own (on every path, not only the tier's).
    root_squash: bool = False

    def __post_init__(self) -> None:
        self.fs = self.root / "fs"
        self.store = self.root / "store"
        self.etc = self.root / "etc"
        self.private = self.root / "private"
        for directory in (self.fs / "srv", self.fs / "var" / "lib", self.fs / "var" / "tmp", self.fs / "run", self.fs / "tmp", self.store, self.etc, self.private):
            directory.mkdir(parents=True, exist_ok=True)
        (self.fs / "tmp").chmod(0o1777)
        for tier in self.export["bcm"]["storage"].values():
            self.path(tier).mkdir(parents=True, exist_ok=True)
        self._write_accounts()
        self._write_store()

    # -- the host --------------------------------------------------------------------------

    def path(self, host_path: str) -> Path:
        """Where a path of the host lives in this temporary root."""
        return self.fs / host_path.lstrip("/")

    def uid(self, user: str) -> int:
        return self.users[user]

    def gid(self, group: str) -> int:
        return self.groups[group]

    def _write_accounts(self) -> None:
        next_id = FIRST_DYNAMIC_ID
        self.groups: dict[str, int] = {}
        for name, group in sorted(self.export["groups"].items()):
            if group["gid"] is None:
                group_id, next_id = next_id, next_id + 1
            else:
                group_id = group["gid"]
            self.groups[name] = group_id
        self.users: dict[str, int] = {}
        members: dict[str, list[str]] = {}
        passwd = []
        for name, user in sorted(self.export["users"].items()):
            if user["uid"] is None:
                user_id, next_id = next_id, next_id + 1
            else:
                user_id = user["uid"]
            self.users[name] = user_id
            for group in user.get("extraGroups", []):
                members.setdefault(group, []).append(name)
            passwd.append(f"{name}:x:{user_id}:{self.groups[user['group']]}::{user['home']}:/run/current-system/sw/bin/nologin")
        (self.etc / "passwd").write_text("\n".join(passwd) + "\n")
        (self.etc / "group").write_text("".join(f"{name}:x:{gid}:{','.join(members.get(name, []))}\n" for name, gid in sorted(self.groups.items())))
        self.members = members

    def _write_store(self) -> None:
        units_text = json.dumps(self.export["units"])
        for store_path, text in self.export["files"].items():
            target = self.store / Path(store_path).relative_to("/nix/store")
            # The harness writes a text file with a `destination` (nixpkgs' unit scripts are
            # `<out>/bin/<name>`) as one flat file; put it where the units look for it.
            inside = re.search(re.escape(store_path) + r'(/[^\s"]+)', units_text)
            if inside:
                target = target / inside.group(1).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o555 if text.startswith("#!") else 0o444)
        built = daemon_env() or {}
        daemons = {
            "lnd": {name: Path(built["LND_BIN"]) / name for name in ("lnd", "lncli")} if "LND_BIN" in built else {},
            "lndinit": {"lndinit": Path(built["LNDINIT_BIN"]) / "lndinit"} if "LNDINIT_BIN" in built else {},
            "monero-cli": {"monerod": Path("/usr/bin/monerod")},
            "tor": {"tor": Path("/usr/sbin/tor")},
        }
        if "bcm-tools" in self.export["packages"]:
            daemons["bcm-tools"] = self._bcm_tools(self.store / Path(self.export["packages"]["bcm-tools"]).name)
        daemons.update(self.programs)
        for pname, store_path in self.export["packages"].items():
            package = self.store / Path(store_path).name
            (package / "bin").mkdir(parents=True, exist_ok=True)
            if pname in HOST_PACKAGES:
                for directory in ("/usr/bin", "/usr/sbin"):
                    for program in os.listdir(directory):
                        link = package / "bin" / program
                        if not link.exists():
                            link.symlink_to(f"{directory}/{program}")
            for program, real in daemons.get(pname, {}).items():
                # A copy, not a symlink: the cache it was built into is under /root, which
                # ProtectHome hides from the unit.
                shutil.copy2(real, package / "bin" / program)

    def _bcm_tools(self, package: Path) -> dict[str, Path]:
        """A bin/bcm-tools that runs this checkout's bcm-tools with the stubs of the tests' LND,
        as the Nix package's wrapper does with its own."""
        stubs = stubs_dir()
        if stubs is not None:
            shutil.copytree(stubs, package / "share" / "lnd-stubs", dirs_exist_ok=True)
        wrapper = self.private / "bcm-tools"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'export BCM_LND_STUBS="${{BCM_LND_STUBS:-/nix/store/{package.name}/share/lnd-stubs}}"\n'
            f'exec {sys.prefix}/bin/bcm-tools "$@"\n'
        )
        wrapper.chmod(0o555)
        return {"bcm-tools": wrapper}

    def write(self, host_path: str, text: str, mode: int = 0o600, owner: str = "root", group: str = "root") -> Path:
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chown(target, self.uid(owner), self.gid(group))
        target.chmod(mode)
        return target

    def replace_file(self, name_suffix: str, edit) -> str:
        """Edits the rendered file whose store path ends with `name_suffix`; returns its path."""
        matches = [p for p in self.export["files"] if p.endswith(name_suffix)]
        if len(matches) == 1 and not (self.store / Path(matches[0]).relative_to("/nix/store")).is_file():
            raise NotImplementedError(f"{matches[0]} is written under a destination")
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rendered files end with {name_suffix}")
        target = self.store / Path(matches[0]).relative_to("/nix/store")
        mode = target.stat().st_mode & 0o555  # a script stays executable
        target.chmod(0o644)
        target.write_text(edit(target.read_text()))
        target.chmod(mode)
        return matches[0]

    def file_text(self, name_suffix: str) -> str:
        (match,) = [text for path, text in self.export["files"].items() if path.endswith(name_suffix)]
        return match

    def apply_tmpfiles(self) -> None:
        """The `d` rules of systemd-tmpfiles, as at boot."""
        for rule in self.export["tmpfiles"]:
            kind, path, mode, user, group, *_ = rule.split()
            if kind != "d":
                raise NotImplementedError(rule)
            directory = self.path(path)
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, self.uid(user), self.gid(group))
            directory.chmod(int(mode, 8))

    # -- units -----------------------------------------------------------------------------

    def unit(self, name: str) -> dict[str, Any]:
        return self.export["units"][name]

    def start(self, name: str, *, wait_main: bool | None = None, post: bool = True, timeout: float = 300) -> Running | None:
        """Runs ExecStartPre, starts ExecStart, then runs ExecStartPost, as systemd does. A
        oneshot unit's ExecStart runs to completion; others keep running (see `stop`).
        `post=False` leaves ExecStartPost out, for a test that watches the daemon alone."""
        unit = self.unit(name)
        config = unit["serviceConfig"]
        self._prepare_runtime(name, config)
        for line in as_list(config.get("ExecStartPre")):
            self.run_command(name, line, timeout=timeout)
        oneshot = config.get("Type") == "oneshot"
        if wait_main if wait_main is not None else oneshot:
            for line in as_list(config.get("ExecStart")):
                self.run_command(name, line, timeout=timeout)
            return None
        (main,) = as_list(config["ExecStart"])
        log = self.root / f"{name}.log"
        process = self._spawn(name, Command.parse(main), log.open("ab"))
        running = Running(name, process, log)
        self.running.append(running)
        for line in as_list(config.get("ExecStartPost")) if post else []:
            if process.poll() is not None:
                raise UnitFailed(name, main, process.returncode, running.output())
            self.run_command(name, line, timeout=timeout)
        return running

    def stop(self, running: Running) -> int | None:
        config = self.unit(running.unit)["serviceConfig"]
        if running.process.poll() is None:
            for line in as_list(config.get("ExecStop")):
                self.run_command(running.unit, line)
        stop_process(running.process)
        if running in self.running:
            self.running.remove(running)
        for line in as_list(config.get("ExecStopPost")):
            self.run_command(running.unit, line)
        return running.process.returncode

    def stop_all(self) -> None:
        for running in list(reversed(self.running)):
            self.stop(running)

    def run_command(self, name: str, line: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = Command.parse(line)
        log = self.root / f"{name}.log"
        with log.open("ab") as sink:
            start = sink.tell()
            process = self._spawn(name, command, sink)
            try:
                status = process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                raise
        output = log.read_bytes()[start:].decode(errors="replace")
        if status != 0 and not command.ignore_failure:
            raise UnitFailed(name, command.line, status, output)
        return subprocess.CompletedProcess(command.argv, status, output, "")

    def _prepare_runtime(self, name: str, config: dict[str, Any]) -> None:
        user, group = config.get("User", "root"), config.get("Group", config.get("User", "root"))
        for directory in as_list(config.get("RuntimeDirectory")):
            for part in directory.split():
                path = self.path(f"/run/{part}")
                if path.exists():
                    shutil.rmtree(path)
                path.mkdir(parents=True)
                os.chown(path, self.uid(user), self.gid(group))
                path.chmod(int(config.get("RuntimeDirectoryMode", "0755"), 8))
        for directory in as_list(config.get("StateDirectory")):
            for part in directory.split():
                path = self.path(f"/var/lib/{part}")
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, self.uid(user), self.gid(group))
        credentials = self.private / "credentials" / name
        if credentials.exists():
            shutil.rmtree(credentials)
        credentials.mkdir(parents=True)
        for entry in as_list(config.get("LoadCredential")):
            credential, source = entry.split(":", 1)
            source_path = self.path(source)
            if not source_path.is_file():
                raise UnitFailed(name, "LoadCredential", EXIT_CREDENTIALS, f"{source}: no such file (243/CREDENTIALS)")
            shutil.copyfile(source_path, credentials / credential)
            (credentials / credential).chmod(0o400)
            os.chown(credentials / credential, self.uid(user), self.gid(group))
        credentials.chmod(0o500)
        # The mount point, made beforehand: /run is read-only inside a strict unit.
        self.path(f"/run/credentials/{name}.service").mkdir(parents=True, exist_ok=True)
        os.chown(credentials, self.uid(user), self.gid(group))

    def _environment(self, name: str, config: dict[str, Any]) -> dict[str, str]:
        unit = self.unit(name)
        environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        environment.update(unit.get("environment", {}))
        user = config.get("User")
        if user:
            environment.update(USER=user, LOGNAME=user, HOME=self.export["users"][user]["home"], SHELL="/run/current-system/sw/bin/nologin")
        if config.get("LoadCredential"):
            environment["CREDENTIALS_DIRECTORY"] = f"/run/credentials/{name}.service"
        if config.get("RuntimeDirectory"):
            environment["RUNTIME_DIRECTORY"] = ":".join(f"/run/{d}" for d in config["RuntimeDirectory"].split())
        return environment

    def _spawn(self, name: str, command: Command, sink) -> subprocess.Popen[bytes]:
        config = self.unit(name)["serviceConfig"]
        plan_file = self.private / f"{name}.{'root' if command.privileged else 'unit'}.plan.json"
        plan_file.write_text(json.dumps(self._plan(name, config, command.privileged)))
        # Outside /run and /var, which are the host's and may be read-only here.
        stage = ["--ro-bind", str(EXEC_STAGE), "/.bcm-sandbox/exec.py", "--ro-bind", str(plan_file), "/.bcm-sandbox/plan.json"]
        argv = ["bwrap", *self._mounts(name, config, command.privileged), *stage, "--", DEBIAN_PYTHON, "/.bcm-sandbox/exec.py", "/.bcm-sandbox/plan.json", *command.argv]
        return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _plan(self, name: str, config: dict[str, Any], privileged: bool) -> dict[str, Any]:
        plan: dict[str, Any] = {"environment": self._environment(name, config), "cwd": "/"}
        if privileged:
            if self.root_squash:
                plan["bounding_set"] = [CAPABILITIES.index(c) for c in ("CAP_SETUID", "CAP_SETGID", "CAP_AUDIT_WRITE", "CAP_SYS_RESOURCE")]
            return plan
        user = config.get("User", "root")
        group = config.get("Group", self.export["users"][user]["group"])
        supplementary = [self.gid(g) for g, members in self.members.items() if user in members]
        plan.update(
            uid=self.uid(user),
            gid=self.gid(group),
            groups=supplementary,
            bounding_set=bounding_set(config.get("CapabilityBoundingSet")),
            umask=int(config.get("UMask", "0022"), 8),
            no_new_privs=bool(config.get("NoNewPrivileges")),
            native_only=config.get("SystemCallArchitectures") == "native",
            eafnosupport=errno_number("EAFNOSUPPORT"),
            mdwe=bool(config.get("MemoryDenyWriteExecute")),
            mdwe_errno=errno_number("EPERM"),
            address_families=address_families(config.get("RestrictAddressFamilies")),
            syscall_errno=errno_number(config.get("SystemCallErrorNumber")),
            **syscall_plan(as_list(config.get("SystemCallFilter"))),
        )
        return plan

    def _mounts(self, name: str, config: dict[str, Any], privileged: bool) -> list[str]:
        sandboxed = not privileged
        args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib64"):
            target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
            if target:
                args += ["--symlink", target, f"/{link}"]
        args += ["--ro-bind", "/etc", "/etc", "--ro-bind", str(self.etc / "passwd"), "/etc/passwd", "--ro-bind", str(self.etc / "group"), "/etc/group"]
        # bwrap makes missing parents 0700, which would lock unit users out of the store.
        args += ["--perms", "0755", "--dir", "/nix", "--perms", "0755", "--dir", "/.bcm-sandbox"]
        args += ["--ro-bind", str(self.store), "/nix/store", "--proc", "/proc", "--ro-bind", "/sys", "/sys"]
        args += ["--dev", "/dev"] if sandboxed and config.get("PrivateDevices") else ["--dev-bind", "/dev", "/dev"]
        strict = sandboxed and config.get("ProtectSystem") == "strict"
        bind = "--ro-bind" if strict else "--bind"
        for top in ("srv", "var", "run"):
            args += [bind, str(self.fs / top), f"/{top}"]
        if sandboxed and config.get("PrivateTmp"):
            private_tmp = self.private / "tmp" / name
            private_tmp.mkdir(parents=True, exist_ok=True)
            private_tmp.chmod(0o1777)
            args += ["--bind", str(private_tmp), "/tmp", "--bind", str(private_tmp), "/var/tmp"]
        else:
            args += ["--bind", str(self.fs / "tmp"), "/tmp"]
        if sandboxed and config.get("ProtectHome"):
            args += ["--tmpfs", "/root", "--tmpfs", "/home"]
        else:
            args += ["--bind", "/root", "/root"]
        if strict:
            writable = [p for p in as_list(config.get("ReadWritePaths"))]
            writable += [f"/run/{d}" for d in " ".join(as_list(config.get("RuntimeDirectory"))).split()]
            writable += [f"/var/lib/{d}" for d in " ".join(as_list(config.get("StateDirectory"))).split()]
            for path in writable:
                optional = path.startswith("-")
                path = path.lstrip("-")
                if not self.path(path).exists():
                    if optional:
                        continue
                    raise UnitFailed(name, "ReadWritePaths", EXIT_NAMESPACE, f"{path}: no such file or directory (226/NAMESPACE)")
                args += ["--bind", str(self.path(path)), path]
        credentials = self.private / "credentials" / name
        if config.get("LoadCredential") and credentials.exists():
            args += ["--ro-bind", str(credentials), f"/run/credentials/{name}.service"]
        if self.export["packages"].get("bcm-tools", "//") in json.dumps(config):
            # bin/bcm-tools runs from the venv; its interpreter, the venv and the checkout's source
            # stand in for the package's closure in the store (last, over a ProtectHome /root).
            for path in (sys.base_prefix, sys.prefix, str(REPO / "pkgs" / "bcm-tools")):
                for parent in reversed(Path(path).parents[:-1]):
                    args += ["--perms", "0755", "--dir", str(parent)]
                args += ["--ro-bind", path, path]
        return args


def wait_port(port: int, what: str, running: Running | None = None, timeout: float = 120) -> None:
    def listening() -> bool:
        if running is not None and running.process.poll() is not None:
            raise AssertionError(f"{running.unit} exited with {running.process.returncode}:\n{running.output()[-4000:]}")
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")

