# An LND upgrade undone: alice runs nixpkgs' LND with a channel to bob; her specialisation
# `newer` runs a newer LND; switching back makes the unit refuse, naming the snapshot and the
# command, and `bcm-tools lnd rollback` restores it with the channel. A second time, a payment
# on the newer LND makes the rollback refuse until it is forced with alice's alias.
#
# The newer LND is nixpkgs' LND behind a wrapper that reports another `--version` (no second
# LND release is packaged, and a release whose migration fails cannot be had on demand): the
# snapshot, the refusal and the rollback run for real, a database migration does not.
{
  lib,
  pkgs,
  testDefaults,
  common,
}:
let
  storage = {
    fast = "/srv/fast";
    bulk = "/srv/bulk";
  };
  newerVersion = "0.99.0-beta";

  newerLnd =
    pkgs.runCommand "lnd-${newerVersion}-stand-in"
      {
        # bcm-tools builds LND's gRPC stubs from the package's source.
        passthru = {
          inherit (pkgs.lnd) src;
          version = newerVersion;
        };
      }
      ''
        mkdir -p $out/bin
        ln -s ${pkgs.lnd}/bin/lncli $out/bin/lncli
        cat > $out/bin/lnd <<'EOF'
        #!${pkgs.runtimeShell}
        if [ "$1" = --version ]; then echo "lnd version ${newerVersion} commit=v${newerVersion}"; exit 0; fi
        exec ${pkgs.lnd}/bin/lnd "$@"
        EOF
        chmod +x $out/bin/lnd
      '';

  node =
    alias:
    { config, ... }:
    {
      imports = [ testDefaults ];
      virtualisation = common.twoDiskTiers storage // {
        memorySize = 2048;
      };
      networking.firewall.allowedTCPPorts = [
        config.bcm.bitcoind.port
        config.bcm.lnd.port
      ];
      bcm = {
        network = "regtest";
        inherit storage;
        bitcoind = {
          enable = true;
          address = "0.0.0.0";
          dbcache = 100;
        };
        lnd = {
          enable = true;
          inherit alias;
          address = "0.0.0.0";
          # The ext4 tiers have room for a copy; keep the reserve small on the 1 GB test disk.
          snapshots.reserveMB = 64;
        };
      };
    };
in
{
  name = "bcm-lnd-rollback";

  nodes = {
    alice = {
      imports = [ (node "alice") ];
      specialisation.newer.configuration.bcm.lnd.package = newerLnd;
    };
    bob = node "bob";
  };

  testScript =
    { nodes, ... }:
    let
      cfg = lib.mapAttrs (_: node: {
        host = node.networking.hostName;
        operator = node.bcm.operator.name;
        bitcoindPort = node.bcm.bitcoind.port;
        lndPort = node.bcm.lnd.port;
        dataDir = node.bcm.lnd.dataDir;
        snapshotsDir = node.bcm.lnd.snapshots.dir;
        version = node.bcm.lnd.package.version;
        services = common.serviceInfo node;
      }) nodes;
      newer = nodes.alice.specialisation.newer.configuration.bcm.lnd.package.version;
    in
    ''
      ${common.pythonHelpers}

      cfg = json.loads(r"""${builtins.toJSON cfg}""")
      NEWER = "${newer}"
      OLDER = cfg["alice"]["version"]
      ROLLBACK = f"bcm-tools lnd rollback --data-dir {cfg['alice']['dataDir']}"


      def cli(machine, command):
          return machine.succeed(f"runuser -l {cfg[machine.name]['operator']} -c {shlex.quote(command)}")


      def cli_until(machine, command, check, timeout=180):
          machine.wait_until_succeeds(
              f"runuser -l {cfg[machine.name]['operator']} -c {shlex.quote(command)} | jq -e {shlex.quote(check)}",
              timeout=timeout,
          )


      def lncli(machine, args):
          return json.loads(cli(machine, f"lncli {args}"))


      def switch(machine, specialisation=None):
          """switch-to-configuration test into the booted system or one of its specialisations;
          returns its exit status (non-zero when a unit failed to start)."""
          system = "/run/booted-system" + (f"/specialisation/{specialisation}" if specialisation else "")
          status, out = machine.execute(f"{system}/bin/switch-to-configuration test 2>&1")
          machine.log(out)
          return status


      def lnd_up(machine):
          machine.wait_for_unit("lnd.service")
          wait_for_lnd_server(machine, cfg[machine.name]["operator"])
          cli_until(machine, "lncli listchannels", ".channels | length == 1 and .[0].active", timeout=300)


      def refused(machine):
          """The unit failed with the refusal (78) and systemd did not restart it."""
          machine.wait_until_succeeds("systemctl show -p ExecMainStatus --value lnd.service | grep -qx 78", timeout=120)
          machine.sleep(15)
          assert machine.succeed("systemctl show -p NRestarts --value lnd.service").strip() == "0"
          assert machine.succeed("systemctl is-active lnd.service || true").strip() == "failed"
          return machine.succeed("journalctl -u lnd.service -b --no-pager --output=cat")


      def snapshots(machine):
          return machine.succeed(f"bcm-tools lnd snapshots --data-dir {cfg['alice']['dataDir']}").strip().splitlines()


      require_service_checks({name: node["services"] for name, node in cfg.items()})
      start_all()
      for m in [alice, bob]:
          m.wait_for_unit("multi-user.target")
          m.wait_for_unit("bitcoind.service")
      cli(alice, f"bitcoin-cli addnode {cfg['bob']['host']}:{cfg['bob']['bitcoindPort']} add")
      cli_until(alice, "bitcoin-cli getconnectioncount", ". > 0", timeout=60)
      # LND starts its server only once its backend's tip is recent (lift_off_genesis).
      lift_off_genesis(alice, cfg["alice"]["services"])
      cli_until(bob, "bitcoin-cli getblockcount", ". == 1", timeout=60)
      for m in [alice, bob]:
          m.wait_for_unit("lnd.service")
          wait_for_lnd_server(m, cfg[m.name]["operator"])

      with subtest("alice has a channel to bob on nixpkgs' LND"):
          address = lncli(alice, "newaddress p2wkh")["address"]
          cli(alice, "bitcoin-cli createwallet miner")
          cli(alice, f"bitcoin-cli generatetoaddress 1 {address}")
          cli(alice, "bitcoin-cli -generate 100")
          cli_until(alice, "lncli walletbalance", "(.confirmed_balance | tonumber) > 0", timeout=120)
          height = int(cli(alice, "bitcoin-cli getblockcount"))
          for m in [alice, bob]:
              cli_until(m, "lncli getinfo", f".synced_to_chain and .block_height == {height}")
          bob_key = lncli(bob, "getinfo")["identity_pubkey"]
          cli(alice, f"lncli connect {bob_key}@{cfg['bob']['host']}:{cfg['bob']['lndPort']}")
          cli(alice, f"lncli openchannel --node_key {bob_key} --local_amt 1000000")
          cli(alice, "bitcoin-cli -generate 6")
          lnd_up(alice)
          point = lncli(alice, "listchannels")["channels"][0]["channel_point"]
          assert snapshots(alice) == [f"no snapshots in {cfg['alice']['snapshotsDir']}"]

      with subtest("the newer LND starts after a snapshot of the older one's data"):
          assert switch(alice, "newer") == 0
          lnd_up(alice)
          (line,) = snapshots(alice)
          assert f"LND {OLDER}'s data before {NEWER} started" in line, line
          alice.succeed(f"journalctl -u lnd.service -b --output=cat | grep -F 'Snapshot of the data: {cfg['alice']['snapshotsDir']}/'")

      with subtest("back on the older LND, the unit refuses once, naming the snapshot and the command"):
          assert switch(alice) != 0
          journal = refused(alice)
          assert f"LND {OLDER} is older than LND {NEWER}" in journal, journal
          assert f"run as root: {ROLLBACK}" in journal, journal

      with subtest("rollback restores the snapshot and the channel is there"):
          alice.succeed(ROLLBACK)
          lnd_up(alice)
          assert lncli(alice, "listchannels")["channels"][0]["channel_point"] == point

      with subtest("after a payment on the newer LND, rollback refuses and changes nothing"):
          assert switch(alice, "newer") == 0
          lnd_up(alice)
          invoice = lncli(alice, "addinvoice --amt 1000")
          cli(bob, f"lncli payinvoice --force {invoice['payment_request']}")
          assert lncli(alice, f"lookupinvoice {invoice['r_hash']}")["state"] == "SETTLED"
          assert switch(alice) != 0
          refused(alice)
          before = alice.succeed(f"cat {cfg['alice']['dataDir']}/bcm-lnd-version.json")
          status, out = alice.execute(f"{ROLLBACK} 2>&1")
          assert status == 7, out
          assert "refused: the channels may have moved" in out and "bcm-tools backup restore" in out, out
          assert f"channel {point}: commitment height" in out, out
          status, out = alice.execute(f"echo bob | {ROLLBACK} --force 2>&1")
          assert status == 7 and "did not match the node's alias" in out, out
          assert alice.succeed(f"cat {cfg['alice']['dataDir']}/bcm-lnd-version.json") == before

      with subtest("--force with alice's alias restores it"):
          alice.succeed(f"echo alice | {ROLLBACK} --force")
          alice.wait_for_unit("lnd.service")
          wait_for_lnd_server(alice, cfg["alice"]["operator"])

      for m in [alice, bob]:
          check_services(m, cfg[m.name]["services"])
    '';
}
