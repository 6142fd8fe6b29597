"""A real LXD daemon for tests: Debian's `lxd`, started here in a temporary LXD_DIR.

What it is given, and what it is not:
- no network: the preseed defines none, so there is no bridge and no DNS server (dnsmasq is not
  even installed), and instances get no NIC;
- no image server: every image is built here (a static busybox and a `metadata.yaml`) and
  imported from a file; the client configuration the `lxc` helper uses lists only `local:` (the
  `ubuntu:` and `ubuntu-daily:` remotes are compiled into Debian's lxc 5.0 and cannot be removed;
  nothing here names them);
- no name look-ups: LXD downloads its instance-types list at start and daily. Its HTTP proxy is
  set, through the environment at start and `core.proxy_*` after, to a closed loopback port, so
  that request fails on 127.0.0.1 without resolving the name (`test_lxd_looks_up_no_name`);
- two storage pools, `fast` and `bulk`, btrfs on sparse loop files of 1 TiB and 2 TiB (LXD makes
  them): large enough for the README's example host, small enough that a volume can be too big.
  btrfs enforces volume sizes (quota groups), which `dir` pools on ext4 do not;
- HTTPS on a free loopback port, for the tests of the https remote.

LXD mounts its pools in the host's mount namespace; `stop()` shuts the daemon down (which
unmounts them and frees the loop devices) and unmounts whatever is left under LXD_DIR.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lnd_regtest import free_port, stop_process

LXD = shutil.which("lxd") or "/usr/bin/lxd"
LXC = shutil.which("lxc") or "/usr/bin/lxc"
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), "/bin/busybox")
IMAGE_ALIAS = "bcm-test"
VM_IMAGE_ALIAS = "bcm-test-vm"
# A qcow2 header and nothing else: LXD files it as a virtual-machine image. No VM runs on this
# machine kind (no vhost_vsock), so it is never booted; creating a VM from it fails on this host.
VM_DISK = b"QFI\xfb" + bytes(1020)
FAST_POOL_SIZE = "1TiB"
BULK_POOL_SIZE = "2TiB"

_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def unavailable() -> str | None:
    """Why LXD cannot run here, or None."""
    for path, package in ((LXD, "lxd"), (LXC, "lxd-client"), (shutil.which("mkfs.btrfs") or "/usr/sbin/mkfs.btrfs", "btrfs-progs")):
        if not os.path.exists(path):
            return f"{path} is missing (Debian package {package}; scripts/test.d/17-lxd installs it)"
    if not os.path.exists(BUSYBOX):
        return "busybox is missing (Debian package busybox-static; scripts/test.d/17-lxd installs it)"
    if os.geteuid() != 0:
        return "LXD's daemon needs root"
    return None


def _static(path: str) -> bool:
    """Whether an ELF binary has no program interpreter (is statically linked)."""
    data = Path(path).read_bytes()[:4096]
    return b"ld-linux" not in data and b"ld-musl" not in data


def busybox_image(arch: str | None = None, description: str = "bcm test image: busybox") -> bytes:
    """A unified LXD container image: metadata.yaml and a rootfs of one static busybox, whose
    init waits until LXD asks it to stop."""
    if not _static(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is dynamically linked; install busybox-static")
    arch = arch or _ARCH.get(platform.machine(), platform.machine())
    metadata = (
        f"architecture: {arch}\n"
        f"creation_date: {int(time.time())}\n"
        "properties:\n"
        "  os: busybox\n"
        f"  description: {json.dumps(description)}\n"
    ).encode()
    init = b"#!/bin/sh\ntrap 'exit 0' PWR TERM INT\nwhile :; do /bin/busybox sleep 1; done\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes | None = None, mode: int = 0o755, link: str | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = int(time.time())
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        add("metadata.yaml", metadata, 0o644)
        for directory in ("rootfs", "rootfs/bin", "rootfs/sbin", "rootfs/dev", "rootfs/proc", "rootfs/sys",
                          "rootfs/tmp", "rootfs/run", "rootfs/etc", "rootfs/srv", "rootfs/root"):
            add(directory)
        add("rootfs/bin/busybox", Path(BUSYBOX).read_bytes())
        add("rootfs/bin/sh", link="busybox")
        add("rootfs/sbin/init", init)
    return buffer.getvalue()


def vm_metadata(arch: str | None = None) -> bytes:
    """The metadata tarball of a split virtual-machine image."""
    arch = arch or _ARCH.get(platform.machine(), platform.machine())
    metadata = f"architecture: {arch}\ncreation_date: {int(time.time())}\nproperties:\n  os: none\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(metadata)
        tar.addfile(info, io.BytesIO(metadata))
    return buffer.getvalue()


class LxdServer:
    """`lxd` in a temporary LXD_DIR under /tmp (its unix socket path must stay short)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bcm-lxd-", dir="/tmp"))
        # Containers' root is an unprivileged uid, which must be able to pass through to the pools.
        self.directory.chmod(0o711)
        self.lxd_dir = self.directory / "lxd"
        self.lxd_dir.mkdir(mode=0o711)
        self.client_conf = self.directory / "lxc-conf"
        self.client_conf.mkdir()
        self.home = self.directory / "home"
        self.home.mkdir()
        self.log = self.directory / "lxd.log"
        self.socket = self.lxd_dir / "unix.socket"
        self.https_port = free_port()
        self.https_address = f"127.0.0.1:{self.https_port}"
        # Nothing listens here: the proxy LXD is told to use, so its downloads fail on loopback.
        self.closed_proxy = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.image_fingerprint = ""
        self.vm_image_fingerprint = ""

    # --- running ------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for `lxd` and `lxc`: this LXD_DIR, the closed proxy, a client config
        with no remote but local:."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
        proxy = {"http_proxy": self.closed_proxy, "https_proxy": self.closed_proxy}
        env.update(proxy)
        env.update({k.upper(): v for k, v in proxy.items()})
        env.update(LXD_DIR=str(self.lxd_dir), LXD_CONF=str(self.client_conf), HOME=str(self.home))
        env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        return env

    def start(self) -> None:
        # The client configuration `lxc` reads: local: only (no images: remote).
        (self.client_conf / "config.yml").write_text(
            "default-remote: local\nremotes:\n  local:\n    addr: unix://\n    public: false\naliases: {}\n"
        )
        out = (self.directory / "lxd.out").open("ab")
        self.proc = subprocess.Popen(
            [LXD, "--group", "root", "--logfile", str(self.log)],
            env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        ready = subprocess.run([LXD, "waitready", "--timeout", "60"], env=self.env(), capture_output=True, text=True, timeout=90)
        if ready.returncode != 0:
            raise RuntimeError(f"lxd did not get ready: {ready.stderr.strip()}; {self.tail()}")
        preseed = {
            "config": {
                "core.https_address": self.https_address,
                "core.proxy_http": self.closed_proxy,
                "core.proxy_https": self.closed_proxy,
                "images.auto_update_interval": "0",
            },
            "networks": [],
            "storage_pools": [
                {"name": "fast", "driver": "btrfs", "config": {"size": FAST_POOL_SIZE}},
                {"name": "bulk", "driver": "btrfs", "config": {"size": BULK_POOL_SIZE}},
            ],
            "profiles": [{"name": "default", "devices": {"root": {"type": "disk", "path": "/", "pool": "fast"}}}],
        }
        # JSON is YAML; lxd init reads either.
        init = subprocess.run([LXD, "init", "--preseed"], input=json.dumps(preseed), env=self.env(), capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise RuntimeError(f"lxd init --preseed failed: {init.stderr.strip()}")
        client = self.client()
        image = client.images.create(busybox_image(), public=False, wait=True)
        image.add_alias(IMAGE_ALIAS, "busybox, built by the test fixture")
        self.image_fingerprint = image.fingerprint
        vm_image = client.images.create(VM_DISK, metadata=vm_metadata(), public=False, wait=True, vm=True)
        vm_image.add_alias(VM_IMAGE_ALIAS, "a virtual-machine image that boots nothing")
        self.vm_image_fingerprint = vm_image.fingerprint

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.clear()
            except Exception:  # noqa: BLE001 - shutting down regardless
                pass
            subprocess.run([LXD, "shutdown", "--timeout", "60"], env=self.env(), capture_output=True, timeout=90)
            stop_process(self.proc)
        # Whatever LXD left mounted (a daemon that died) goes before the directory does.
        for mount_point in reversed(self._mounts()):
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _mounts(self) -> list[str]:
        prefix = str(self.directory) + "/"
        with open("/proc/self/mountinfo") as mountinfo:
            return [line.split()[4] for line in mountinfo if line.split()[4].startswith(prefix)]

    # --- talking to it ------------------------------------------------------------------------

    def client(self):
        import pylxd

        return pylxd.Client(endpoint=str(self.socket))

    def lxc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The `lxc` command line against this server, as an operator would use it by hand."""
        result = subprocess.run([LXC, *args], env=self.env(), capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"lxc {' '.join(args)}: {result.stderr.strip()}")
        return result

    def server_fingerprint(self) -> str:
        cert = x509.load_pem_x509_certificate((self.lxd_dir / "server.crt").read_bytes())
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def trust(self, cert_pem: bytes, name: str = "bcm-test") -> None:
        """Adds a client certificate to the server's trust store (as `lxc config trust add`)."""
        self.client().api.certificates.post(json={"type": "client", "certificate": _pem_body(cert_pem), "name": name})

    def clear(self) -> None:
        """Removes every instance and custom volume, and every image but the fixture's own."""
        client = self.client()
        for instance in client.instances.all():
            if instance.status != "Stopped":
                instance.stop(force=True, wait=True)
            instance.delete(wait=True)
        for pool in client.storage_pools.all():
            for volume in pool.volumes.all():
                if volume.type == "custom":
                    volume.delete()
        for image in client.images.all():
            if image.fingerprint not in (self.image_fingerprint, self.vm_image_fingerprint):
                image.delete(wait=True)
        for alias in client.api.images.aliases.get().json()["metadata"]:
            name = alias.rsplit("/", 1)[-1]
            if name not in (IMAGE_ALIAS, VM_IMAGE_ALIAS):
                client.api.images.aliases[name].delete()

    def instance(self, name: str) -> dict[str, Any]:
        return self.client().api.instances[name].get().json()["metadata"]

    def volume(self, pool: str, name: str) -> dict[str, Any] | None:
        import pylxd.exceptions

        try:
            return self.client().api.storage_pools[pool].volumes.custom[name].get().json()["metadata"]
        except pylxd.exceptions.NotFound:
            return None


def _pem_body(cert_pem: bytes) -> str:
    """The base64 body of a PEM certificate, which LXD's certificates API takes."""
    lines = cert_pem.decode().strip().splitlines()
    return "".join(line for line in lines if not line.startswith("-----"))
