# Two clearnet nodes (bitcoind + LND each) on the test network: bitcoind peers sync, LND funds a
# wallet, opens a channel and a payment settles. Alice backs up her channels (bcm.lnd.backups),
# encrypted to the operator's key: the backup of the channel lands in its target on the bulk
# disk, and decrypted with that key (derived from the test vectors' mnemonic, as `--device
# mnemonic:` does) LND verifies it. Tor is off here: VMs cannot reach the Tor network.
{
  lib,
  testDefaults,
  common,
}:
let
  storage = {
    fast = "/srv/fast";
    bulk = "/srv/bulk";
  };

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
          # Alice's channel backups, to the default target on her bulk disk.
          backups = lib.mkIf (alias == "alice") {
            enable = true;
            recipients = [ common.vectors.operatorAgeRecipient ];
          };
        };
      };
    };
in
{
  name = "bcm-lightning";

  nodes = {
    alice = node "alice";
    bob = node "bob";
  };

  testScript =
    { nodes, ... }:
    let
      # What the script reads of each node: its name on the test network, ports, tiers.
      cfg = lib.mapAttrs (_: node: {
        host = node.networking.hostName;
        operator = node.bcm.operator.name;
        bitcoindPort = node.bcm.bitcoind.port;
        lndPort = node.bcm.lnd.port;
        tiers = common.tiers node;
        services = common.serviceInfo node;
      }) nodes;
      inherit (common.vectors) mnemonic;
    in
    ''
    ${common.pythonHelpers}

    cfg = json.loads(r"""${builtins.toJSON cfg}""")
    # The test vectors' mnemonic, from which the operator's age key (the backups' recipient) comes.
    MNEMONIC = "${mnemonic}"

    def cli(machine, command):
        return machine.succeed(f"runuser -l {cfg[machine.name]['operator']} -c {shlex.quote(command)}")

    def cli_until(machine, command, check, timeout=180):
        machine.wait_until_succeeds(
            f"runuser -l {cfg[machine.name]['operator']} -c {shlex.quote(command)} | jq -e {shlex.quote(check)}",
            timeout=timeout,
        )

    def lncli(machine, args):
        return json.loads(cli(machine, f"lncli {args}"))

    require_service_checks({name: node["services"] for name, node in cfg.items()})
    start_all()
    for m in [alice, bob]:
        m.wait_for_unit("multi-user.target")

    with subtest("each node's storage tiers are mounts of their own disks"):
        for m in [alice, bob]:
            assert_tiers_mounted(m, cfg[m.name]["tiers"])

    with subtest("bitcoind peers over the test network, and the chain leaves its genesis block"):
        for m in [alice, bob]:
            m.wait_for_unit("bitcoind.service")
        cli(alice, f"bitcoin-cli addnode {cfg['bob']['host']}:{cfg['bob']['bitcoindPort']} add")
        cli_until(alice, "bitcoin-cli getconnectioncount", ". > 0", timeout=60)
        # LND starts its server only once its backend's tip is recent (lift_off_genesis).
        lift_off_genesis(alice, cfg["alice"]["services"])
        cli_until(bob, "bitcoin-cli getblockcount", ". == 1", timeout=60)

    with subtest("LND's wallets are made and unlocked without interaction, and the servers start"):
        for m in [alice, bob]:
            m.wait_for_unit("lnd.service")
            wait_for_lnd_server(m, cfg[m.name]["operator"])

    with subtest("alice's LND wallet is funded"):
        address = lncli(alice, "newaddress p2wkh")["address"]
        cli(alice, "bitcoin-cli createwallet miner")
        cli(alice, f"bitcoin-cli generatetoaddress 1 {address}")
        cli(alice, "bitcoin-cli -generate 100")
        cli_until(alice, "lncli walletbalance", "(.confirmed_balance | tonumber) > 0", timeout=120)

    with subtest("a channel opens"):
        # Both LNDs at alice's chain tip, or bob refuses the channel while it syncs.
        height = int(cli(alice, "bitcoin-cli getblockcount"))
        for m in [alice, bob]:
            cli_until(m, "lncli getinfo", f".synced_to_chain and .block_height == {height}")
        bob_key = lncli(bob, "getinfo")["identity_pubkey"]
        cli(alice, f"lncli connect {bob_key}@{cfg['bob']['host']}:{cfg['bob']['lndPort']}")
        cli(alice, f"lncli openchannel --node_key {bob_key} --local_amt 1000000")
        cli(alice, "bitcoin-cli -generate 6")
        cli_until(bob, "lncli listchannels", ".channels | length == 1 and .[0].active")
        cli_until(alice, "lncli listchannels", ".channels | length == 1 and .[0].active")

    with subtest("a payment settles"):
        invoice = lncli(bob, "addinvoice --amt 1000")
        cli(alice, f"lncli payinvoice --force {invoice['payment_request']}")
        settled = lncli(bob, f"lookupinvoice {invoice['r_hash']}")
        assert settled["state"] == "SETTLED", settled

    with subtest("alice's channel backup lands on her bulk disk, and LND verifies it decrypted with the operator's key"):
        backups = cfg["alice"]["services"]["lnd.backups"]
        (target,) = backups["localTargets"]
        assert_on_tier(alice, target, cfg["alice"]["tiers"]["bulk"])
        (channel,) = lncli(alice, "listchannels")["channels"]
        alice_key = lncli(alice, "getinfo")["identity_pubkey"]
        alice.succeed(f"umask 077 && printf '%s\\n' {shlex.quote(MNEMONIC)} > /root/operator.mnemonic")
        verify = (
            f"bcm-tools backup verify --device mnemonic:/root/operator.mnemonic"
            f" --lnd-rpc {backups['lndRpc']} --lnd-tls-cert {backups['tlsCert']} --lnd-macaroon {backups['macaroon']}"
            f" \"$(ls -t {target}/channel-backup-*.age | head -n 1)\""
        )
        alice.wait_until_succeeds(f"{verify} | grep -qF {channel['channel_point']}", timeout=120)
        out = alice.succeed(verify)
        assert f"good backup of 1 channel(s) for node {alice_key}" in out, out

    for m in [alice, bob]:
        check_services(m, cfg[m.name]["services"])

    with subtest("no unit failed on either node, not even one that Restart= brought back"):
        for m in [alice, bob]:
            assert_no_unit_failed(m)
  '';
}
