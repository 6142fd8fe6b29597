# Two clearnet nodes (bitcoind + LND each) on the test network: bitcoind peers sync, LND funds a
# wallet, opens a channel and a payment settles. Tor is off here: VMs cannot reach the Tor network.
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
    { ... }:
    {
      imports = [ testDefaults ];
      virtualisation = {
        memorySize = 2048;
        # /dev/vdb and /dev/vdc (the root disk is /dev/vda), one per tier. The tiers must be
        # mounted through virtualisation.fileSystems: qemu-vm.nix replaces `fileSystems` with it.
        emptyDiskImages = [
          1024
          2048
        ];
        fileSystems = {
          ${storage.fast} = {
            device = "/dev/vdb";
            fsType = "ext4";
            autoFormat = true;
          };
          ${storage.bulk} = {
            device = "/dev/vdc";
            fsType = "ext4";
            autoFormat = true;
          };
        };
      };
      networking.firewall.allowedTCPPorts = [
        18444
        9735
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
    ''
    ${common.pythonHelpers}

    tiers = {
        "alice": json.loads(r"""${builtins.toJSON (common.tiers nodes.alice)}"""),
        "bob": json.loads(r"""${builtins.toJSON (common.tiers nodes.bob)}"""),
    }

    def cli(machine, command):
        return machine.succeed(f"runuser -l operator -c {json.dumps(command)}")

    def lncli(machine, args):
        return json.loads(cli(machine, f"lncli {args}"))

    start_all()
    for m in [alice, bob]:
        m.wait_for_unit("multi-user.target")

    with subtest("each node's storage tiers are mounts of their own disks"):
        for m in [alice, bob]:
            assert_tiers_mounted(m, tiers[m.name])

    for m in [alice, bob]:
        m.wait_for_unit("lnd.service")

    with subtest("bitcoind peers over the test network"):
        cli(alice, "bitcoin-cli addnode bob:18444 add")
        alice.wait_until_succeeds("runuser -l operator -c 'bitcoin-cli getconnectioncount' | grep -qv '^0$'")

    with subtest("alice's LND wallet is funded"):
        address = lncli(alice, "newaddress p2wkh")["address"]
        cli(alice, "bitcoin-cli createwallet miner")
        cli(alice, f"bitcoin-cli generatetoaddress 1 {address}")
        cli(alice, "bitcoin-cli -generate 100")
        alice.wait_until_succeeds(
            "runuser -l operator -c 'lncli walletbalance' | jq -e '(.confirmed_balance | tonumber) > 0'", timeout=120
        )

    with subtest("a channel opens"):
        bob_key = lncli(bob, "getinfo")["identity_pubkey"]
        cli(alice, f"lncli connect {bob_key}@bob:9735")
        cli(alice, f"lncli openchannel --node_key {bob_key} --local_amt 1000000")
        cli(alice, "bitcoin-cli -generate 6")
        bob.wait_until_succeeds(
            "runuser -l operator -c 'lncli listchannels' | jq -e '.channels | length == 1 and .[0].active'", timeout=180
        )
        alice.wait_until_succeeds(
            "runuser -l operator -c 'lncli listchannels' | jq -e '.channels[0].active'", timeout=180
        )

    with subtest("a payment settles"):
        invoice = lncli(bob, "addinvoice --amt 1000")
        cli(alice, f"lncli payinvoice --force {invoice['payment_request']}")
        settled = lncli(bob, f"lookupinvoice {invoice['r_hash']}")
        assert settled["state"] == "SETTLED", settled
  '';
}
