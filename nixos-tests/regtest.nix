# The regtest example host (hosts/regtest1, written by gen-host) in a VM: every service starts on
# its storage tier, secrets are generated with the right owners, the operator can use each CLI
# and read onion addresses but no secret of a service, bitcoind's RPC users are whitelisted, the
# LND wallet is created and unlocked without interaction, Fulcrum indexes, Kafka has its topics,
# and losing the bulk disk stops the services on it.
{
  lib,
  self,
  testDefaults,
  common,
}:
{
  name = "bcm-regtest";

  # The host file sets nixpkgs.hostPlatform, which the read-only test pkgs would reject.
  node.pkgsReadOnly = false;

  nodes.machine =
    args:
    let
      # The host's own mounts of its tiers. qemu-vm.nix replaces `fileSystems` with
      # `virtualisation.fileSystems` (mkVMOverride), so declared only the host's way they would
      # not exist in the VM and every service would write to the root disk.
      hostStorage = import "${self}/hosts/regtest1/storage.nix" args;
      inherit (hostStorage.bcm) storage;
    in
    {
      imports = [
        testDefaults
        "${self}/hosts/regtest1"
      ];
      virtualisation = {
        memorySize = 6144;
        cores = 2;
        diskSize = 4096;
        # /dev/vdb and /dev/vdc (the root disk is /dev/vda): the devices storage.nix names for
        # the fast and bulk tiers.
        emptyDiskImages = [
          4096
          8192
        ];
        fileSystems = lib.mapAttrs (_: mount: mount // { autoFormat = true; }) (
          lib.getAttrs [ storage.fast storage.bulk ] hostStorage.fileSystems
        );
      };
      bcm.kafka = {
        heapOptions = "-Xms128m -Xmx512m";
        clients.tester.user = "root";
        topics."bcm.test".partitions = 2;
      };
    };

  testScript =
    { nodes, ... }:
    let
      tiers = common.tiers nodes.machine;
      lnd = {
        inherit (nodes.machine.bcm.lnd)
          user
          networkDir
          seedMnemonicFile
          walletPasswordFile
          restPort
          ;
      };
    in
    ''
    ${common.pythonHelpers}

    tiers = json.loads(r"""${builtins.toJSON tiers}""")
    lnd = json.loads(r"""${builtins.toJSON lnd}""")

    def as_operator(command):
        return machine.succeed(f"runuser -l operator -c {json.dumps(command)}")

    machine.start()
    machine.wait_for_unit("multi-user.target")

    with subtest("each storage tier is a mount of its own disk"):
        assert_tiers_mounted(machine, tiers)

    with subtest("secrets are generated on the host with owner-only modes"):
        machine.wait_for_unit("bcm-secrets.service")
        for path, expected in [
            # bitcoind's RPC users' passwords: the client's user, group root (bitcoind.nix).
            ("/var/lib/bcm-secrets/bitcoind-rpc-fulcrum-password", "fulcrum root 600"),
            ("/var/lib/bcm-secrets/bitcoind-rpc-lnd-password", "lnd root 600"),
            ("/var/lib/bcm-secrets/bitcoind-rpcauth.conf", "bitcoind bitcoind 600"),
            ("/var/lib/bcm-secrets/bitcoind-rpc-cli-password.conf", "root bcm-operator 640"),
            ("/var/lib/bcm-secrets/lnd-wallet-password", "lnd lnd 600"),
            ("/var/lib/bcm-secrets/kafka-jaas.properties", "kafka kafka 600"),
        ]:
            got = machine.succeed(f"stat -c '%U %G %a' {path}").strip()
            assert got == expected, f"{path}: {got} != {expected}"
        # No generated secret value appears anywhere in the store.
        password = machine.succeed("cat /var/lib/bcm-secrets/bitcoind-rpc-fulcrum-password").strip()
        machine.fail(f"grep -rqF {password} /nix/store --include='*.conf' --include='*.properties'")

    with subtest("bitcoind keeps blocks on bulk and chainstate on fast"):
        machine.wait_for_unit("bitcoind.service")
        as_operator("bitcoin-cli createwallet test")
        as_operator("bitcoin-cli -generate 110")
        machine.succeed("test -e /srv/bulk/bitcoind/blocks/regtest/blocks/blk00000.dat")
        machine.succeed("test -d /srv/fast/bitcoind/regtest/chainstate")
        machine.succeed("test -d /srv/fast/bitcoind/regtest/indexes/txindex")
        machine.fail("test -e /srv/fast/bitcoind/regtest/blocks/blk00000.dat")
        assert_on_tier(machine, "/srv/bulk/bitcoind/blocks/regtest/blocks/blk00000.dat", tiers["bulk"])
        assert_on_tier(machine, "/srv/fast/bitcoind/regtest/chainstate", tiers["fast"])

    with subtest("RPC users are limited by rpcwhitelist"):
        def rpc_status(user, method):
            return machine.succeed(
                f"curl -s -o /dev/null -w '%{{http_code}}' --user {user}:$(cat /var/lib/bcm-secrets/bitcoind-rpc-{user}-password)"
                f" --data-binary '{{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"{method}\",\"params\":[]}}' http://127.0.0.1:18443/"
            ).strip()
        assert rpc_status("fulcrum", "getblockchaininfo") == "200"
        assert rpc_status("fulcrum", "stop") == "403"
        assert rpc_status("lnd", "dumptxoutset") == "403"

    with subtest("lndinit makes LND's wallet before LND starts; LND unlocks it without interaction"):
        machine.wait_for_unit("lnd.service")
        wait_for_lnd_server(machine, "operator")
        wallet = f"{lnd['networkDir']}/wallet.db"
        seed = lnd["seedMnemonicFile"]
        assert_on_tier(machine, wallet, tiers["fast"])
        # The seed lnd-init-wallet wrote (lndinit gen-seed), readable by LND alone.
        got = machine.succeed(f"stat -c '%U %a' {seed}").strip()
        assert got == f"{lnd['user']} 600", f"{seed}: {got}"
        assert len(machine.succeed(f"cat {seed}").split()) == 24
        # The wallet existed before LND's process started: it was made in ExecStartPre, not
        # through LND's unauthenticated WalletUnlocker once LND listened.
        born = int(machine.succeed(f"stat -c %W {wallet}"))
        started = int(machine.succeed(
            "echo $(( $(date +%s) - $(ps -o etimes= -p $(systemctl show -p MainPID --value lnd.service)) ))"
        ))
        assert 0 < born <= started + 1, f"wallet.db born at {born}, LND started at {started}"
        # LND never offers to create a wallet: no allow-create, the password file unlocks it, and
        # the WalletUnlocker RPCs answer nothing once it is unlocked.
        machine.fail("grep -q wallet-unlock-allow-create /run/lnd/lnd.conf")
        machine.succeed(f"grep -qxF wallet-unlock-password-file={lnd['walletPasswordFile']} /run/lnd/lnd.conf")
        rest = f"https://127.0.0.1:{lnd['restPort']}"
        machine.succeed(f"curl -sfk {rest}/v1/state | jq -e '.state == \"SERVER_ACTIVE\"'")
        for method, path in [("GET", "/v1/genseed"), ("POST", "/v1/initwallet")]:
            code = machine.succeed(f"curl -sk -o /dev/null -w '%{{http_code}}' -X {method} -d '{{}}' {rest}{path}").strip()
            assert code != "200", f"{method} {path} answered {code}"
        # After a restart LND unlocks the same wallet by itself.
        machine.succeed("systemctl restart lnd.service")
        machine.wait_for_unit("lnd.service")
        wait_for_lnd_server(machine, "operator")
        assert int(machine.succeed(f"stat -c %W {wallet}")) == born, "the wallet was made anew"
        as_operator("lncli getinfo")
        # The operator's macaroon cannot mint new macaroons.
        machine.fail("runuser -l operator -c 'lncli bakemacaroon info:read'")
        # The operator cannot read LND's own secrets.
        machine.fail(f"runuser -u operator -- cat {seed}")
        machine.fail(f"runuser -u operator -- cat {lnd['walletPasswordFile']}")

    with subtest("Fulcrum indexes the chain"):
        machine.wait_for_unit("fulcrum.service")
        assert_on_tier(machine, "/srv/fast/fulcrum", tiers["fast"])
        # One Electrum request over bash's /dev/tcp: nixpkgs' netcat is LibreSSL's, without -q.
        request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blockchain.headers.subscribe", "params": []})
        electrum = f"exec 3<>/dev/tcp/127.0.0.1/50001; printf '%s\\n' {shlex.quote(request)} >&3; timeout 10 head -n 1 <&3"
        machine.wait_until_succeeds(
            f"bash -c {shlex.quote(electrum)} | jq -e '.result.height == 110'",
            timeout=300,
        )

    with subtest("onion addresses are readable by the operator, the keys are not"):
        machine.wait_for_unit("tor.service")
        for name in ["bitcoind", "fulcrum", "lnd", "monerod", "monerod-rpc"]:
            address = as_operator(f"cat /var/lib/bcm-onion/{name}").strip()
            assert address.endswith(".onion") and len(address) == 62, address
        machine.fail("runuser -u operator -- cat /var/lib/tor/onion/bitcoind/hs_ed25519_secret_key")
        onion = machine.succeed("cat /var/lib/bcm-onion/bitcoind").strip()
        assert onion in as_operator("bitcoin-cli getnetworkinfo"), "bitcoind does not announce its onion"

    with subtest("Tor enforcement keeps peer daemons on loopback"):
        for unit in ["bitcoind", "lnd", "monerod"]:
            allow = machine.succeed(f"systemctl show -p IPAddressAllow --value {unit}").strip()
            deny = machine.succeed(f"systemctl show -p IPAddressDeny --value {unit}").strip()
            assert "127.0.0.0/8" in allow and "0.0.0.0/0" not in allow, f"{unit}: {allow}"
            assert deny != "", f"{unit}: IPAddressDeny is empty"

    with subtest("monerod answers on its restricted RPC and publishes on ZMQ"):
        machine.wait_for_unit("monerod.service")
        assert_on_tier(machine, "/srv/bulk/monerod", tiers["bulk"])
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:18089/get_info | jq -e '.status == \"OK\"'", timeout=300)
        machine.wait_until_succeeds("ss -ltn | grep -q '127.0.0.1:18084'")
        as_operator("monerod-cli status")

    with subtest("Kafka runs KRaft on loopback with SASL and has the declared topics"):
        machine.wait_for_unit("kafka.service")
        machine.wait_for_unit("kafka-topics.service")
        assert_on_tier(machine, "/srv/fast/kafka", tiers["fast"])
        topics = as_operator("kafka-cli topics --list")
        assert "bcm.test" in topics, topics
        machine.fail("ss -ltn | grep ':9092' | grep -v '127.0.0.1:9092'")

    with subtest("a missing bulk disk stops the services that store data there"):
        machine.succeed("systemctl stop srv-bulk.mount")
        machine.wait_until_fails("systemctl is-active bitcoind.service")
        machine.wait_until_fails("systemctl is-active monerod.service")
        machine.succeed("systemctl is-active kafka.service")
        machine.succeed("systemctl start srv-bulk.mount bitcoind.service monerod.service")
        machine.wait_for_unit("bitcoind.service")
  '';
}
