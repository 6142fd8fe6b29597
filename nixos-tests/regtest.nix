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
      machine = nodes.machine;
      bcm = machine.bcm;
      enabled = lib.filterAttrs (_: x: x.enable);
      secrets = enabled bcm.lib.generatedSecrets;
      tiers = common.tiers machine;
      # What the script reads of the node: ports, paths, owners, units.
      cfg = {
        inherit tiers;
        operator = bcm.operator.name;
        secrets = lib.mapAttrs (_: secret: { inherit (secret) file owner group mode; }) secrets;
        primarySecretFiles = lib.mapAttrsToList (_: secret: secret.file) (lib.filterAttrs (_: s: !s.derived) secrets);
        bitcoind = {
          inherit (bcm.bitcoind) dataDir blocksDir;
          # bitcoind's subdirectory for regtest, signet and testnet4 is the network's name.
          chain = bcm.network;
          rpcPort = bcm.bitcoind.rpc.port;
          passwordFiles = lib.mapAttrs (_: user: user.passwordFile) bcm.bitcoind.rpc.users;
        };
        lnd = {
          inherit (bcm.lnd)
            user
            networkDir
            seedMnemonicFile
            walletPasswordFile
            restPort
            ;
        };
        fulcrum = { inherit (bcm.fulcrum) dataDir port; };
        monerod = {
          inherit (bcm.monerod) dataDir;
          restrictedRpcPort = bcm.monerod.restrictedRpc.port;
          zmqPubPort = bcm.monerod.zmq.pubPort;
        };
        kafka = {
          inherit (bcm.kafka) dataDir port controllerPort;
          topics = lib.attrNames bcm.kafka.topics;
        };
        tor = {
          inherit (bcm.tor) dataDir;
          onions = lib.mapAttrs (_: onion: onion.hostnameFile) (enabled bcm.tor.onionServices);
          enforced = lib.filter (service: bcm.${service}.tor.enforce) [
            "bitcoind"
            "lnd"
            "monerod"
          ];
        };
        bulkUnits = common.unitsOn machine tiers.bulk.path;
        services = common.serviceInfo machine;
      };
    in
    ''
    ${common.pythonHelpers}

    cfg = json.loads(r"""${builtins.toJSON cfg}""")
    tiers = cfg["tiers"]
    operator = cfg["operator"]
    lnd = cfg["lnd"]

    def as_operator(command):
        return machine.succeed(f"runuser -l {operator} -c {shlex.quote(command)}")

    require_service_checks({"machine": cfg["services"]})
    machine.start()
    machine.wait_for_unit("multi-user.target")

    with subtest("each storage tier is a mount of its own disk"):
        assert_tiers_mounted(machine, tiers)

    with subtest("secrets are generated on the host with owner-only modes"):
        machine.wait_for_unit("bcm-secrets.service")
        # Owners read from the modules (bitcoind.nix gives each RPC client's password to the
        # client's user with group root; the operator group reads only its own credentials).
        policy = {
            "bitcoind-rpc-fulcrum-password": "fulcrum root 600",
            "bitcoind-rpc-lnd-password": "lnd root 600",
            "bitcoind-rpcauth": "bitcoind bitcoind 600",
            "bitcoind-cli-credentials": "root bcm-operator 640",
            "lnd-wallet-password": "lnd lnd 600",
            "kafka-jaas": "kafka kafka 600",
        }
        assert policy.keys() <= cfg["secrets"].keys(), sorted(cfg["secrets"])
        for name, secret in cfg["secrets"].items():
            declared = f"{secret['owner']} {secret['group']} {secret['mode'].lstrip('0')}"
            assert policy.get(name, declared) == declared, f"{name} is declared {declared}, expected {policy[name]}"
            got = machine.succeed(f"stat -c '%U %G %a' {secret['file']}").strip()
            assert got == declared, f"{secret['file']}: {got} != {declared}"

    with subtest("bitcoind keeps blocks on bulk and chainstate on fast"):
        machine.wait_for_unit("bitcoind.service")
        as_operator("bitcoin-cli createwallet test")
        as_operator("bitcoin-cli -generate 110")
        bitcoind = cfg["bitcoind"]
        blocks = f"{bitcoind['blocksDir']}/{bitcoind['chain']}/blocks/blk00000.dat"
        chainstate = f"{bitcoind['dataDir']}/{bitcoind['chain']}/chainstate"
        machine.succeed(f"test -e {blocks}")
        machine.succeed(f"test -d {chainstate}")
        machine.succeed(f"test -d {bitcoind['dataDir']}/{bitcoind['chain']}/indexes/txindex")
        machine.fail(f"test -e {bitcoind['dataDir']}/{bitcoind['chain']}/blocks/blk00000.dat")
        assert_on_tier(machine, blocks, tiers["bulk"])
        assert_on_tier(machine, chainstate, tiers["fast"])

    with subtest("RPC users are limited by rpcwhitelist"):
        def rpc_status(user, method):
            request = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": []})
            return machine.succeed(
                f"curl -s -o /dev/null -w '%{{http_code}}' --user {user}:$(cat {bitcoind['passwordFiles'][user]})"
                f" --data-binary {shlex.quote(request)} http://127.0.0.1:{bitcoind['rpcPort']}/"
            ).strip()
        assert rpc_status("fulcrum", "getblockchaininfo") == "200"
        assert rpc_status("fulcrum", "stop") == "403"
        assert rpc_status("lnd", "dumptxoutset") == "403"

    with subtest("lndinit makes LND's wallet before LND starts; LND unlocks it without interaction"):
        machine.wait_for_unit("lnd.service")
        wait_for_lnd_server(machine, operator)
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
        wait_for_lnd_server(machine, operator)
        assert int(machine.succeed(f"stat -c %W {wallet}")) == born, "the wallet was made anew"
        as_operator("lncli getinfo")
        # The operator's macaroon cannot mint new macaroons.
        machine.fail(f"runuser -l {operator} -c 'lncli bakemacaroon info:read'")
        # The operator cannot read LND's own secrets.
        machine.fail(f"runuser -u {operator} -- cat {seed}")
        machine.fail(f"runuser -u {operator} -- cat {lnd['walletPasswordFile']}")

    with subtest("Fulcrum indexes the chain"):
        machine.wait_for_unit("fulcrum.service")
        fulcrum = cfg["fulcrum"]
        assert_on_tier(machine, fulcrum["dataDir"], tiers["fast"])
        # One Electrum request over bash's /dev/tcp: nixpkgs' netcat is LibreSSL's, without -q.
        request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blockchain.headers.subscribe", "params": []})
        electrum = f"exec 3<>/dev/tcp/127.0.0.1/{fulcrum['port']}; printf '%s\\n' {shlex.quote(request)} >&3; timeout 10 head -n 1 <&3"
        machine.wait_until_succeeds(
            f"bash -c {shlex.quote(electrum)} | jq -e '.result.height == 110'",
            timeout=300,
        )

    with subtest("no generated secret is readable by an unprivileged user anywhere"):
        # The secrets are made on the host after the store was built, so the store cannot hold
        # them. What can leak is a copy on the host: a runtime config, a log, a file with a
        # loose mode. Search every file `nobody` can read outside the store.
        def readable_copies(value):
            return machine.succeed(
                f"runuser -u nobody -- grep -rlsF -e {shlex.quote(value)} /etc /run /var /srv /tmp /home /root || true"
            ).split()
        values = {path: machine.succeed(f"cat {path}").strip() for path in cfg["primarySecretFiles"]}
        # The search finds a copy where there is one.
        canary = next(iter(values.values()))
        machine.succeed(f"printf '%s\\n' {shlex.quote(canary)} > /tmp/canary && chmod 0644 /tmp/canary")
        assert readable_copies(canary) == ["/tmp/canary"], readable_copies(canary)
        machine.succeed("rm /tmp/canary")
        for path, value in values.items():
            copies = readable_copies(value)
            assert copies == [], f"{path} can be read by anyone in {copies}"

    with subtest("onion addresses are readable by the operator, the keys are not"):
        machine.wait_for_unit("tor.service")
        tor = cfg["tor"]
        for name, hostname_file in tor["onions"].items():
            address = as_operator(f"cat {hostname_file}").strip()
            assert address.endswith(".onion") and len(address) == 62, f"{name}: {address}"
            machine.fail(f"runuser -u {operator} -- cat {tor['dataDir']}/onion/{name}/hs_ed25519_secret_key")
        onion = machine.succeed(f"cat {tor['onions']['bitcoind']}").strip()
        assert onion in as_operator("bitcoin-cli getnetworkinfo"), "bitcoind does not announce its onion"

    with subtest("Tor enforcement keeps peer daemons on loopback"):
        assert tor["enforced"], "no service has tor.enforce"
        for unit in tor["enforced"]:
            allow = machine.succeed(f"systemctl show -p IPAddressAllow --value {unit}").strip()
            deny = machine.succeed(f"systemctl show -p IPAddressDeny --value {unit}").strip()
            assert "127.0.0.0/8" in allow and "0.0.0.0/0" not in allow, f"{unit}: {allow}"
            assert deny != "", f"{unit}: IPAddressDeny is empty"

    with subtest("monerod answers on its restricted RPC and publishes on ZMQ"):
        machine.wait_for_unit("monerod.service")
        monerod = cfg["monerod"]
        assert_on_tier(machine, monerod["dataDir"], tiers["bulk"])
        machine.wait_until_succeeds(
            f"curl -sf http://127.0.0.1:{monerod['restrictedRpcPort']}/get_info | jq -e '.status == \"OK\"'", timeout=300
        )
        machine.wait_until_succeeds(f"ss -ltn | grep -qF '127.0.0.1:{monerod['zmqPubPort']} '")
        as_operator("monerod-cli status")

    with subtest("Kafka runs KRaft on loopback with SASL and has the declared topics"):
        machine.wait_for_unit("kafka.service")
        machine.wait_for_unit("kafka-topics.service")
        kafka = cfg["kafka"]
        assert_on_tier(machine, kafka["dataDir"], tiers["fast"])
        topics = as_operator("kafka-cli topics --list").split()
        assert set(kafka["topics"]) <= set(topics), topics
        for port in [kafka["port"], kafka["controllerPort"]]:
            listeners = machine.succeed(f"ss -ltnH 'sport = :{port}'").splitlines()
            assert listeners, f"nothing listens on {port}"
            for line in listeners:
                # Java binds IPv4 addresses on an IPv6 socket: [::ffff:127.0.0.1]:9092.
                address = line.split()[3].rsplit(":", 1)[0].strip("[]")
                assert address in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), line

    check_services(machine, cfg["services"])

    with subtest("a missing bulk disk stops the services that store data there"):
        assert set(cfg["bulkUnits"]) >= {"bitcoind", "monerod"}, cfg["bulkUnits"]
        mount = machine.succeed(f"systemd-escape --path --suffix=mount {tiers['bulk']['path']}").strip()
        machine.succeed(f"systemctl stop {mount}")
        for unit in cfg["bulkUnits"]:
            machine.wait_until_fails(f"systemctl is-active {unit}.service")
        machine.succeed("systemctl is-active kafka.service")
        # Back to where it was: the mount, the units on it and those that need them.
        machine.succeed(f"systemctl start {mount}")
        machine.succeed("systemctl start multi-user.target")
        for unit in cfg["bulkUnits"] + ["lnd", "fulcrum"]:
            machine.wait_for_unit(f"{unit}.service")

    with subtest("no unit failed, not even one that Restart= brought back"):
        assert_no_unit_failed(machine)
  '';
}
