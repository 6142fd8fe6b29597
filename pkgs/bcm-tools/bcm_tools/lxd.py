"""LXD, through pylxd: the only module that speaks LXD's REST API.

`connect` opens a server: the local unix socket, or an HTTPS endpoint whose certificate must
have the SHA-256 fingerprint the spec pins (or that --accept-fingerprint names) and which must
trust the client certificate given. `Server` offers the few calls provisioning makes, each
turning LXD's refusals into one-line `LxdError`s, and waits for LXD's background operations
while reporting their progress.

Nothing here pulls an image from an image server: instances are created only from an image
already on the server, by its full fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pylxd
import pylxd.exceptions
import requests
import requests.adapters

from bcm_tools.errors import CredentialError, DaemonError, LxdError

# The calls made here are small; background operations are waited for separately.
CALL_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
# How long a call waits for an instance that is busy with another operation.
BUSY_PATIENCE = 30.0

Progress = Callable[[str], None]

# LXD's size suffixes (shared/units in LXD): decimal and binary.
_UNITS = {
    "": 1, "B": 1,
    "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "EB": 10**18,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50, "EiB": 2**60,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | None) -> int | None:
    """Bytes of an LXD size string ("300GB", "12288MiB", "1073741824"), or None for what is not
    a size (empty, a percentage)."""
    if not text:
        return None
    match = _SIZE_RE.match(text)
    if not match or match[2] not in _UNITS:
        return None
    return int(float(match[1]) * _UNITS[match[2]])


def local_socket() -> Path:
    """Where the local LXD listens: $LXD_DIR/unix.socket, the snap's socket, or Debian's."""
    if os.environ.get("LXD_DIR"):
        return Path(os.environ["LXD_DIR"]) / "unix.socket"
    snap = Path("/var/snap/lxd/common/lxd/unix.socket")
    return snap if snap.exists() else Path("/var/lib/lxd/unix.socket")


@dataclass(frozen=True)
class Remote:
    """An LXD server as the spec names it. `where` is the spec's field path, for messages."""

    endpoint: str
    client_cert: Path | None = None
    client_key: Path | None = None
    fingerprint: str | None = None
    where: str = "lxd"

    @property
    def label(self) -> str:
        return "local" if self.endpoint == "local" else self.endpoint


def presented_fingerprint(endpoint: str) -> str:
    """SHA-256 of the certificate an HTTPS endpoint presents, read without trusting it."""
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or 8443
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as sock:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as err:
        raise DaemonError(f"cannot reach LXD at {endpoint}: {_reason(err)}") from None
    if not der:
        raise CredentialError(f"LXD at {endpoint} presented no certificate")
    return hashlib.sha256(der).hexdigest()


def _reason(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the name ({err.strerror})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    return str(err) or type(err).__name__


def normalise_fingerprint(text: str) -> str:
    return text.replace(":", "").strip().lower()


def connect(remote: Remote, accept_fingerprint: str | None = None) -> Server:
    """Opens the server `remote` names. An HTTPS server must present the pinned certificate:
    the spec's fingerprint, or where the spec pins none, the one --accept-fingerprint names."""
    if remote.endpoint == "local":
        path = local_socket()
        if not path.exists():
            raise DaemonError(f"cannot reach LXD at local: no socket at {path} (is LXD running? LXD_DIR names another directory)")
        endpoint, session = str(path), None
    else:
        endpoint = remote.endpoint
        for field, file in (("client_cert", remote.client_cert), ("client_key", remote.client_key)):
            if file is None or not file.is_file():
                raise CredentialError(f"{remote.where}.{field}: {file}: no such file")
        presented = presented_fingerprint(endpoint)
        _check_pin(remote, presented, accept_fingerprint)
        session = requests.Session()
        session.cert = (str(remote.client_cert), str(remote.client_key))
        session.verify = False
        # Every connection must present the certificate just checked: a server swapped in after
        # the check is refused too. (pylxd's own pinning reads the file `verify` names, which
        # requests replaces with $REQUESTS_CA_BUNDLE where that is set.)
        session.mount("https://", _PinnedAdapter(presented))
    try:
        client = pylxd.Client(endpoint=endpoint, session=session, timeout=CALL_TIMEOUT)
    except pylxd.exceptions.ClientConnectionFailed as err:
        raise DaemonError(f"cannot reach LXD at {remote.label}: {_connection_reason(err)}") from None
    except (requests.exceptions.RequestException, OSError) as err:
        raise DaemonError(f"cannot reach LXD at {remote.label}: {_connection_reason(err)}") from None
    except pylxd.exceptions.LXDAPIException as err:
        raise DaemonError(f"LXD at {remote.label} refused the connection: {err}") from None
    if not client.trusted:
        raise CredentialError(
            f"LXD at {remote.label} does not trust the client certificate {remote.client_cert}; "
            f"add it on the server with `lxc config trust add {remote.client_cert}`"
        )
    return Server(client, remote.label)


def _check_pin(remote: Remote, presented: str, accept: str | None) -> None:
    if remote.fingerprint is not None:
        if presented != remote.fingerprint:
            raise CredentialError(
                f"LXD at {remote.endpoint} presents a certificate with SHA-256 {presented}, not the one "
                f"{remote.where}.fingerprint pins ({remote.fingerprint}); if the server's certificate was "
                "replaced, compare it with `lxc info` on the server and put the new fingerprint in the spec"
            )
        return
    if accept is None:
        raise CredentialError(
            f"LXD at {remote.endpoint} is not pinned: it presents a certificate with SHA-256 {presented}; "
            f"compare it with `lxc info` on the server, then set {remote.where}.fingerprint or pass "
            f"--accept-fingerprint {presented}"
        )
    if normalise_fingerprint(accept) != presented:
        raise CredentialError(
            f"LXD at {remote.endpoint} presents a certificate with SHA-256 {presented}, "
            f"not the {normalise_fingerprint(accept)} that --accept-fingerprint names"
        )


def _connection_reason(err: BaseException) -> str:
    """The innermost cause of a failed connection, in a few words."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and not type(seen).__module__.startswith(("requests", "urllib3")):
            return _reason(seen)
        seen = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
    text = str(err)
    if "Fingerprints did not match" in text:
        return "its certificate changed during the connection (the pinned fingerprint did not match)"
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0] if text else type(err).__name__


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """Accepts exactly the server certificate with this SHA-256 fingerprint, whatever CA bundle
    the environment names."""

    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint
        super().__init__()

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, False, cert)
        conn.assert_fingerprint = self._fingerprint


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    name: str
    driver: str
    total_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


@dataclass(frozen=True)
class Image:
    fingerprint: str
    type: str
    description: str


class Server:
    """One LXD server. Every call raises LxdError (or DaemonError when the server went away)."""

    def __init__(self, client: Any, label: str):
        self._client = client
        self._api = client.api
        self.label = label

    # -- calls ----------------------------------------------------------------------------------

    def _call(self, what: str, method: str, node: Any, **kwargs: Any) -> Any:
        try:
            response = getattr(node, method)(**kwargs)
        except pylxd.exceptions.NotFound:
            raise
        except pylxd.exceptions.LXDAPIException as err:
            raise LxdError([f"LXD at {self.label}: {what}: {_lxd_message(err)}"]) from None
        except (requests.exceptions.RequestException, OSError) as err:
            raise DaemonError(f"LXD at {self.label}: {what}: {_connection_reason(err)}") from None
        return response.json()

    def _get(self, what: str, node: Any) -> dict[str, Any] | None:
        try:
            return self._call(what, "get", node)["metadata"]
        except pylxd.exceptions.NotFound:
            return None

    def _wait(self, what: str, body: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
        """Waits for a background operation, passing its progress on; its failure is an error."""
        if body.get("type") != "async":
            return body.get("metadata") or {}
        operation = body["operation"].rsplit("/", 1)[-1]
        while True:
            state = self._call(what, "get", self._api.operations[operation].wait, params={"timeout": 1})["metadata"]
            if state["status_code"] == 200:
                return state
            if state["status_code"] >= 400:
                raise LxdError([f"LXD at {self.label}: {what}: {state.get('err') or state['status']}"])
            if progress is not None:
                progress(_progress_text(state.get("metadata")))

    # -- what there is --------------------------------------------------------------------------

    def pool(self, name: str) -> Pool | None:
        info = self._get(f"reading storage pool {name}", self._api.storage_pools[name])
        if info is None:
            return None
        space = (self._get(f"reading the space of storage pool {name}", self._api.storage_pools[name].resources) or {}).get("space", {})
        return Pool(name, info.get("driver", ""), int(space.get("total", 0)), int(space.get("used", 0)))

    def image(self, reference: str) -> Image | None:
        """The image with this alias, or whose fingerprint starts with it."""
        alias = self._get(f"reading image alias {reference}", self._api.images.aliases[reference])
        fingerprint = alias["target"] if alias else reference
        if not re.fullmatch(r"[0-9a-f]{1,64}", fingerprint):
            return None
        info = self._get(f"reading image {fingerprint}", self._api.images[fingerprint])
        if info is None:
            return None
        return Image(info["fingerprint"], info.get("type", "container"), info.get("properties", {}).get("description", ""))

    def instance(self, name: str) -> dict[str, Any] | None:
        return self._get(f"reading instance {name}", self._api.instances[name])

    def volume(self, pool: str, name: str) -> dict[str, Any] | None:
        return self._get(f"reading volume {pool}/{name}", self._api.storage_pools[pool].volumes.custom[name])

    # -- changes --------------------------------------------------------------------------------

    def create_volume(self, pool: str, name: str, config: dict[str, str], progress: Progress | None = None) -> None:
        what = f"creating volume {pool}/{name}"
        body = self._call(what, "post", self._api.storage_pools[pool].volumes.custom, json={"name": name, "type": "custom", "config": config})
        self._wait(what, body, progress)

    def update_volume(self, pool: str, name: str, config: dict[str, str], progress: Progress | None = None) -> None:
        what = f"changing volume {pool}/{name}"
        body = self._call(what, "patch", self._api.storage_pools[pool].volumes.custom[name], json={"config": config})
        self._wait(what, body, progress)

    def delete_volume(self, pool: str, name: str, progress: Progress | None = None) -> None:
        what = f"deleting volume {pool}/{name}"
        body = self._while_busy(lambda: self._call(what, "delete", self._api.storage_pools[pool].volumes.custom[name]))
        self._wait(what, body, progress)

    def _while_busy(self, call: Callable[[], Any], patience: float = BUSY_PATIENCE) -> Any:
        """Makes a call again while LXD says the instance is busy with another operation (as it
        is, briefly, cleaning up after a start that failed)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return call()
            except LxdError as err:
                if time.monotonic() > deadline or not any(word in str(err) for word in ("is busy", "still in use")):
                    raise
            time.sleep(0.5)

    def create_instance(self, request: dict[str, Any], progress: Progress | None = None) -> None:
        what = f"creating instance {request['name']}"
        body = self._call(what, "post", self._api.instances, json=request)
        self._wait(what, body, progress)

    def update_instance(self, name: str, config: dict[str, str], devices: dict[str, dict[str, str]], progress: Progress | None = None) -> None:
        """Sets these config keys and devices, leaving every other one as it is."""
        what = f"changing instance {name}"
        body = self._call(what, "patch", self._api.instances[name], json={"config": config, "devices": devices})
        self._wait(what, body, progress)

    def remove_device(self, name: str, device: str, progress: Progress | None = None) -> None:
        """Removes one of the instance's own devices (PATCH can only add or replace them)."""
        what = f"removing device {device} from instance {name}"
        info = self.instance(name)
        if info is None or device not in info.get("devices", {}):
            return
        keys = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful", "description")
        body = {key: info[key] for key in keys if key in info}
        body["devices"] = {key: value for key, value in info["devices"].items() if key != device}
        response = self._call(what, "put", self._api.instances[name], json=body)
        self._wait(what, response, progress)

    def set_state(self, name: str, action: str, progress: Progress | None = None) -> None:
        what = f"{action.rstrip('e')}ing instance {name}"
        body = self._call(what, "put", self._api.instances[name].state, json={"action": action, "force": action == "stop", "timeout": 30})
        self._wait(what, body, progress)

    def delete_instance(self, name: str, progress: Progress | None = None) -> None:
        """Stops the instance (forcibly) if it runs, then deletes it."""
        info = self.instance(name)
        if info is None:
            return
        if info.get("status") not in ("Stopped", None):
            self._while_busy(lambda: self.set_state(name, "stop", progress))
        what = f"deleting instance {name}"
        body = self._while_busy(lambda: self._call(what, "delete", self._api.instances[name]))
        self._wait(what, body, progress)


def _lxd_message(err: Any) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "refused"


def _progress_text(metadata: Any) -> str:
    """What an operation says of its progress ("Unpack: 37% (150MB/s)"), if anything."""
    if not isinstance(metadata, dict):
        return ""
    for key, value in metadata.items():
        if "progress" in key and isinstance(value, str):
            return value
        if key == "progress" and isinstance(value, dict):
            return " ".join(f"{k} {v}" for k, v in value.items())
    return ""
