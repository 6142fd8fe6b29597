"""`bcm-tools exporter` when a daemon cannot be asked: the scrape still answers, with
`bcm_up{daemon=...} 0` and no other series of that daemon, so BcmDaemonUnreachable (not
BcmScrapeFailing) fires. The daemons answering are covered by tests/test_monitoring.py."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request

from lnd_regtest import free_port, stop_process, wait_for
from monitoring_stack import CLI


def test_an_unreachable_daemon_is_bcm_up_0_and_the_scrape_still_answers(tmp_path):
    port = free_port()
    args = [*CLI, "exporter", f"--listen=127.0.0.1:{port}", f"--monerod-rpc=http://127.0.0.1:{free_port()}",
            f"--tor-control=127.0.0.1:{free_port()}", f"--tor-cookie={tmp_path / 'missing-cookie'}"]
    log = tmp_path / "exporter.log"
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def scrape(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
                assert reply.status == 200
                return reply.read().decode()

        monerod = wait_for("the exporter", lambda: scrape("/metrics/monerod"), timeout=30)
        assert 'bcm_up{daemon="monerod"} 0.0' in monerod and "bcm_monerod_height" not in monerod
        tor = scrape("/metrics/tor")
        assert 'bcm_up{daemon="tor"} 0.0' in tor and "bcm_tor_bootstrap_percent" not in tor
        try:
            scrape("/metrics/bitcoind")
            raise AssertionError("a daemon not configured must not have a path")
        except urllib.error.HTTPError as err:
            assert err.code == 404
        # Why, in the journal: one line per failed scrape, naming the daemon and the cause.
        text = log.read_text()
        assert "WARNING monerod: cannot reach monerod at http://127.0.0.1:" in text
        assert f"WARNING tor: cannot read Tor's control cookie {tmp_path / 'missing-cookie'}" in text
        assert "Traceback" not in text
    finally:
        stop_process(proc)
