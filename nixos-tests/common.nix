# What the VM tests share: the storage tiers of a node as its test script checks them, the bcm
# services a node enables and the registry of checks that exercise each, the key material of the
# published test vectors, and the Python helpers every test script starts with.
{ lib }:
let
  bcmLib = import ../modules/lib { inherit lib; };

  # A value, or null where evaluating it throws (an option used but not defined).
  valueOrNull =
    value:
    let
      tried = builtins.tryEval value;
    in
    if tried.success then tried.value else null;

  # An attribute set with `enable = true`, other than a package.
  isEnabled =
    value:
    let
      v = valueOrNull value;
    in
    lib.isAttrs v && !lib.isDerivation v && valueOrNull (v.enable or null) == true;
in
rec {
  # `virtualisation` settings for a node whose fast and bulk tiers are two small ext4 disks,
  # /dev/vdb and /dev/vdc (the root disk is /dev/vda). The tiers must be mounted through
  # virtualisation.fileSystems: qemu-vm.nix replaces `fileSystems` with it.
  twoDiskTiers = storage: {
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

  # A node's storage tiers with the mount the VM must have for each. qemu-vm.nix replaces the
  # host's `fileSystems` with `virtualisation.fileSystems`, so a node that declares its tiers
  # only the host's way has no mount here (device null), and the script says so.
  tiers =
    node:
    let
      # A node without the bcm modules has no tiers.
      defined = tier: node ? bcm && (builtins.tryEval node.bcm.storage.${tier}).success;
    in
    lib.genAttrs (lib.filter defined [
      "fast"
      "bulk"
    ]) (
      tier:
      let
        path = node.bcm.storage.${tier};
        mount = node.fileSystems.${path} or { };
      in
      {
        inherit path;
        device = mount.device or null;
        fsType = mount.fsType or null;
      }
    );

  # Units that keep data on `path` (RequiresMountsFor a directory under it): they must stop when
  # its mount goes away.
  unitsOn =
    node: path:
    lib.attrNames (
      lib.filterAttrs (
        _: unit:
        lib.any (dir: dir == path || lib.hasPrefix "${path}/" dir) (lib.toList (unit.unitConfig.RequiresMountsFor or [ ]))
      ) node.systemd.services
    );

  # The bcm services a node enables, named by their option path under `bcm`: each attribute set
  # there with `enable = true` ("bitcoind", "operator"), and each one level below an enabled one
  # ("lnd.backups", "lnd.snapshots"). Read from the configuration, not listed, so a new module's
  # service counts as soon as a node enables it, and then needs a check in the registry
  # (pythonHelpers, SERVICE_CHECKS); the evaluation harness (eval/vm-nodes.nix) and every test
  # script (require_service_checks) fail on one without.
  enabledServices =
    node:
    let
      bcm = node.bcm or { };
      top = lib.filter (name: isEnabled bcm.${name}) (lib.attrNames bcm);
      below = lib.concatMap (
        parent: map (child: "${parent}.${child}") (lib.filter (child: isEnabled bcm.${parent}.${child}) (lib.attrNames bcm.${parent}))
      ) top;
    in
    top ++ below;

  # What the checks of the registry read of a node: its tiers, its enabled services and, for
  # each of them, the ports, paths and names it was configured with. A test script passes this
  # (as JSON) to require_service_checks and check_services.
  serviceInfo =
    node:
    let
      bcm = node.bcm;
      services = enabledServices node;
      on = name: attrs: lib.optionalAttrs (lib.elem name services) { ${name} = attrs; };
      loopbackOf = address: if address == "0.0.0.0" || address == "::" then "127.0.0.1" else address;
    in
    {
      inherit services;
      tiers = tiers node;
    }
    // on "operator" {
      inherit (bcm.operator) name;
      group = bcm.lib.operatorGroup;
      tools = map (tool: baseNameOf (lib.getExe tool)) bcm.operator.tools;
    }
    // on "tor" {
      inherit (bcm.tor) socksAddress socksPort dataDir;
      onions = lib.mapAttrs (_: onion: onion.hostnameFile) (lib.filterAttrs (_: onion: onion.enable) bcm.tor.onionServices);
    }
    // on "bitcoind" {
      inherit (bcm.bitcoind) dataDir blocksDir port;
      rpcPort = bcm.bitcoind.rpc.port;
      # What getblockchaininfo calls the chain.
      chain = bcmLib.bitcoinChain.${bcm.network};
    }
    // on "fulcrum" { inherit (bcm.fulcrum) dataDir port; }
    // on "lnd" {
      inherit (bcm.lnd) alias dataDir restPort;
    }
    // on "lnd.snapshots" {
      inherit (bcm.lnd) dataDir;
      inherit (bcm.lnd.snapshots) dir;
    }
    // on "lnd.backups" {
      localTargets = lib.filter (target: !lib.hasPrefix "ssh://" target) bcm.lnd.backups.targets;
      inherit (bcm.lnd.backups) checkIdentityFile metricsFile;
      lndRpc = bcm.lnd.rpc.endpoint;
      inherit (bcm.lnd) tlsCert;
      # `backup verify` asks GetInfo and VerifyChanBackup: the operator's macaroon allows both.
      macaroon = bcm.lnd.macaroons.operator.path;
    }
    // on "monerod" {
      inherit (bcm.monerod) dataDir;
      restrictedRpc = bcmLib.hostPort (loopbackOf bcm.monerod.restrictedRpc.address) bcm.monerod.restrictedRpc.port;
    }
    // on "kafka" {
      inherit (bcm.kafka) dataDir port controllerPort;
      topics = lib.attrNames bcm.kafka.topics;
    }
    // on "connect" { inherit (bcm.connect) infoFile; };

  # The names of the services SERVICE_CHECKS covers, read from the `@service_check("...")` lines of
  # pythonHelpers, so the evaluation harness can tell a node's uncovered service before a VM runs.
  checkedServices = lib.unique (
    lib.concatMap (part: if lib.isList part then part else [ ]) (
      builtins.split "@service_check\\(\"([a-z0-9.-]+)\"\\)" pythonHelpers
    )
  );

  # The BIP-84 and BIP-86 test vectors (bitcoin/bips, kept in pkgs/bcm-tools/tests/vectors): one
  # mnemonic, and the first receive address of each account on mainnet.
  vectors =
    let
      read = name: lib.importJSON ../pkgs/bcm-tools/tests/vectors/${name}.json;
      bip84 = read "bip84";
      bip86 = read "bip86";
      first = vector: (lib.head (lib.filter (a: a.change == 0 && a.index == 0) vector.addresses)).address;
    in
    assert bip84.mnemonic == bip86.mnemonic;
    {
      inherit (bip84) mnemonic;
      firstAddress = {
        wpkh = first bip84;
        tr = first bip86;
      };
      # The operator's age recipient that `bcm-tools secrets init --device mnemonic:FILE` derives
      # from that mnemonic (SLIP-0011, docs/trezor.md); pkgs/bcm-tools/tests/test_vm_vectors.py
      # derives it again.
      operatorAgeRecipient = "age14tl3fk3h5p2uk6rt4e8d8ktpq55gz0awm2zt3wwnj2xracrqwyxsm4rv3l";
    };

  # A regtest address nobody holds (the witness program of 20 zero bytes; tests/lnd_regtest.py's
  # BURN_ADDRESS): lifting a fresh chain off its genesis block pays no one.
  regtestBurnAddress = "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202";

  pythonHelpers = ''
    import json
    import shlex


    def assert_tiers_mounted(machine, tiers):
        """Each storage tier is a mount of its own device, none of them the root disk's."""
        root = machine.succeed("findmnt --noheadings --output SOURCE --mountpoint /").strip()
        devices = set()
        for name, tier in tiers.items():
            assert tier["device"], f"{machine.name}: the {name} tier {tier['path']} has no mount in the VM (declare it in virtualisation.fileSystems)"
            status, out = machine.execute(f"findmnt --noheadings --output SOURCE,FSTYPE --mountpoint {tier['path']}")
            assert status == 0, f"{machine.name}: {tier['path']} ({name} tier) is not a mount point"
            source, fstype = out.split()
            assert source == tier["device"], f"{machine.name}: {tier['path']} is mounted from {source}, expected {tier['device']}"
            assert fstype == tier["fsType"], f"{machine.name}: {tier['path']} is {fstype}, expected {tier['fsType']}"
            assert source != root, f"{machine.name}: {tier['path']} is on the root disk"
            devices.add(source)
        assert len(devices) == len(tiers), f"{machine.name}: two tiers share a device: {tiers}"


    def assert_on_tier(machine, path, tier):
        """`path` lives on the tier's device, not on whatever is mounted above it."""
        source = machine.succeed(f"findmnt --noheadings --output SOURCE --target {shlex.quote(path)}").strip()
        assert source == tier["device"], f"{machine.name}: {path} is on {source}, not on the {tier['path']} tier ({tier['device']})"


    def assert_on_its_tier(machine, node, path):
        """`path` lives on the device of the tier whose mount point holds it."""
        holders = [t for t in node["tiers"].values() if path == t["path"] or path.startswith(t["path"] + "/")]
        assert holders, f"{machine.name}: {path} is on no storage tier ({node['tiers']})"
        assert_on_tier(machine, path, max(holders, key=lambda t: len(t["path"])))


    def assert_no_unit_failed(machine, allowed=()):
        """No unit failed during this boot, including one that Restart= brought back; `allowed`
        names units whose failure the test caused on purpose."""
        failed = machine.succeed(
            "journalctl --boot --quiet --no-pager --output=cat | grep -F 'Failed with result' || true"
        ).strip().splitlines()
        unexpected = [line for line in failed if line.split(":", 1)[0] not in allowed]
        assert not unexpected, f"{machine.name}: units failed during the test:\n" + "\n".join(unexpected)


    def assert_listens_on_loopback_only(machine, port):
        """Something listens on TCP `port`, and only on loopback addresses."""
        listeners = machine.succeed(f"ss -ltnH 'sport = :{port}'").splitlines()
        assert listeners, f"{machine.name}: nothing listens on {port}"
        for line in listeners:
            # Java binds IPv4 addresses on an IPv6 socket: [::ffff:127.0.0.1]:9092.
            address = line.split()[3].rsplit(":", 1)[0].strip("[]")
            assert address in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), f"{machine.name}: {line}"


    def wait_for_lnd_server(machine, operator, timeout=300):
        """LND answers RPC before its server is up (and its wallet unlocked); peers and channels
        need the server, as the pytest fixture (tests/lnd_regtest.py) knows."""
        machine.wait_until_succeeds(
            f"runuser -l {operator} -c 'lncli state' | jq -e '.state == \"SERVER_ACTIVE\"'", timeout=timeout
        )


    def run_as_operator(machine, node, command):
        return machine.succeed(f"runuser -l {node['operator']['name']} -c {shlex.quote(command)}")


    def lift_off_genesis(machine, node):
        """Mines one block on a regtest chain still at its genesis block. LND does not start its
        server while its backend's tip is older than two hours (btcwallet's IsSynced), and
        bitcoind counts itself in initial block download until then; the genesis block is from
        2011. The block pays an address nobody holds."""
        machine.wait_for_unit("bitcoind.service")
        assert node["bitcoind"]["chain"] == "regtest", node["bitcoind"]["chain"]
        if int(run_as_operator(machine, node, "bitcoin-cli getblockcount")) == 0:
            run_as_operator(machine, node, "bitcoin-cli generatetoaddress 1 ${regtestBurnAddress}")


    def socks5_greeting(address, port):
        """A bash command that offers Tor's SOCKS port the SOCKS5 greeting (no authentication)
        and prints the two bytes of the reply in hex: 0500 is a SOCKS5 server accepting it."""
        return (
            f"exec 3<>/dev/tcp/{address}/{port} && printf '\\x05\\x01\\x00' >&3"
            " && timeout 10 head -c 2 <&3 | od -An -tx1 | tr -d ' \\n'"
        )


    # --- the registry of service checks -------------------------------------------------------
    # Each bcm service a VM node can enable, mapped to the checks that exercise it. A test script
    # calls require_service_checks with every node's common.serviceInfo before it starts a VM, so
    # a node that enables a service no check covers fails at once, and check_services on each
    # node once its scenario has run, which runs every check of every service it enables as a
    # subtest of its own. Checks read ports, paths and names from serviceInfo, never defaults.
    SERVICE_CHECKS: dict = {}


    def service_check(service):
        def register(check):
            SERVICE_CHECKS.setdefault(service, []).append(check)
            return check
        return register


    def require_service_checks(nodes):
        """Fails when a node enables a bcm service that no check in SERVICE_CHECKS covers."""
        missing = [f"{name}: bcm.{service}" for name, node in nodes.items() for service in node["services"] if service not in SERVICE_CHECKS]
        assert not missing, "enabled with no check in the registry (nixos-tests/common.nix, SERVICE_CHECKS): " + ", ".join(missing)


    def check_services(machine, node):
        """Runs, each as a subtest, every check of every bcm service the node enables."""
        require_service_checks({machine.name: node})
        for service in node["services"]:
            for check in SERVICE_CHECKS[service]:
                with subtest(f"{machine.name}: bcm.{service}: {check.__doc__.splitlines()[0]}"):
                    check(machine, node)


    @service_check("operator")
    def check_operator(machine, node):
        """the operator has each service's CLI and no group beyond the operator group"""
        operator = node["operator"]
        groups = set(run_as_operator(machine, node, "id -nG").split())
        assert operator["group"] in groups and groups <= {operator["group"], "users"}, groups
        for tool in operator["tools"]:
            run_as_operator(machine, node, f"command -v {shlex.quote(tool)}")


    @service_check("tor")
    def check_tor(machine, node):
        """Tor's SOCKS port answers on loopback; the operator reads the onion addresses, not their keys"""
        tor = node["tor"]
        machine.wait_for_unit("tor.service")
        reply = machine.succeed(f"bash -c {shlex.quote(socks5_greeting(tor['socksAddress'], tor['socksPort']))}").strip()
        assert reply == "0500", f"Tor's SOCKS port replied {reply!r} to a SOCKS5 greeting"
        for name, hostname_file in tor["onions"].items():
            address = run_as_operator(machine, node, f"cat {hostname_file}").strip()
            assert address.endswith(".onion") and len(address) == 62, f"{name}: {address}"
            machine.fail(f"runuser -u {node['operator']['name']} -- cat {tor['dataDir']}/onion/{name}/hs_ed25519_secret_key")


    @service_check("bitcoind")
    def check_bitcoind(machine, node):
        """bitcoind answers the operator's bitcoin-cli on its chain, with blocks and chainstate on their tiers and RPC on loopback only"""
        bitcoind = node["bitcoind"]
        machine.wait_for_unit("bitcoind.service")
        info = json.loads(run_as_operator(machine, node, "bitcoin-cli getblockchaininfo"))
        assert info["chain"] == bitcoind["chain"], info
        assert_on_its_tier(machine, node, bitcoind["blocksDir"])
        assert_on_its_tier(machine, node, bitcoind["dataDir"])
        assert_listens_on_loopback_only(machine, bitcoind["rpcPort"])


    @service_check("fulcrum")
    def check_fulcrum(machine, node):
        """Fulcrum serves Electrum clients at bitcoind's tip from its index on its tier"""
        fulcrum = node["fulcrum"]
        machine.wait_for_unit("fulcrum.service")
        height = int(run_as_operator(machine, node, "bitcoin-cli getblockcount"))
        # One Electrum request over bash's /dev/tcp: nixpkgs' netcat is LibreSSL's, without -q.
        request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blockchain.headers.subscribe", "params": []})
        electrum = f"exec 3<>/dev/tcp/127.0.0.1/{fulcrum['port']}; printf '%s\\n' {shlex.quote(request)} >&3; timeout 10 head -n 1 <&3"
        machine.wait_until_succeeds(f"bash -c {shlex.quote(electrum)} | jq -e '.result.height == {height}'", timeout=300)
        assert_on_its_tier(machine, node, fulcrum["dataDir"])


    @service_check("lnd")
    def check_lnd(machine, node):
        """LND's server runs under its alias at bitcoind's tip, with its data on its tier"""
        lnd = node["lnd"]
        machine.wait_for_unit("lnd.service")
        wait_for_lnd_server(machine, node["operator"]["name"])
        height = int(run_as_operator(machine, node, "bitcoin-cli getblockcount"))
        alias = "" if lnd["alias"] is None else f" and .alias == {json.dumps(lnd['alias'])}"
        machine.wait_until_succeeds(
            f"runuser -l {node['operator']['name']} -c 'lncli getinfo'"
            f" | jq -e {shlex.quote(f'.synced_to_chain and .block_height == {height}{alias}')}",
            timeout=180,
        )
        assert_on_its_tier(machine, node, lnd["dataDir"])


    @service_check("lnd.snapshots")
    def check_lnd_snapshots(machine, node):
        """the LND version that runs is recorded with its data, and bcm-tools lists the snapshots"""
        snapshots = node["lnd.snapshots"]
        machine.succeed(f"jq -e '.version | length > 0' {snapshots['dataDir']}/bcm-lnd-version.json")
        machine.succeed(f"bcm-tools lnd snapshots --data-dir {snapshots['dataDir']} --snapshots-dir {snapshots['dir']}")
        assert_on_its_tier(machine, node, snapshots["dir"])


    @service_check("lnd.backups")
    def check_lnd_backups(machine, node):
        """each local target holds a backup of LND's channels that LND verifies, and no target is behind"""
        backups = node["lnd.backups"]
        channels = json.loads(run_as_operator(machine, node, "lncli listchannels"))["channels"]
        lnd = f"--lnd-rpc {backups['lndRpc']} --lnd-tls-cert {backups['tlsCert']} --lnd-macaroon {backups['macaroon']}"
        for target in backups["localTargets"]:
            assert_on_its_tier(machine, node, target)
            newest = f"\"$(ls -t {target}/channel-backup-*.age | head -n 1)\""
            verify = f"bcm-tools backup verify -i {backups['checkIdentityFile']} {lnd} {newest}"
            expected = f"good backup of {len(channels)} channel(s)"
            machine.wait_until_succeeds(f"{verify} | grep -qF {shlex.quote(expected)}", timeout=120)
            out = machine.succeed(verify)
            for channel in channels:
                assert channel["channel_point"] in out, out
        # The watcher rewrites its metrics after each copy is read back and verified.
        behind = "grep '^bcm_lnd_backup_behind{' " + backups["metricsFile"] + " | awk '$NF != 0 { bad = 1 } END { exit (NR == 0 || bad) }'"
        machine.wait_until_succeeds(behind, timeout=120)


    @service_check("monerod")
    def check_monerod(machine, node):
        """monerod answers on its restricted RPC and to the operator's monerod-cli, with its chain on its tier"""
        monerod = node["monerod"]
        machine.wait_for_unit("monerod.service")
        machine.wait_until_succeeds(f"curl -sf http://{monerod['restrictedRpc']}/get_info | jq -e '.status == \"OK\"'", timeout=300)
        run_as_operator(machine, node, "monerod-cli status")
        assert_on_its_tier(machine, node, monerod["dataDir"])


    @service_check("kafka")
    def check_kafka(machine, node):
        """Kafka lists the declared topics to the operator, listens on loopback only and keeps its logs on its tier"""
        kafka = node["kafka"]
        machine.wait_for_unit("kafka.service")
        topics = run_as_operator(machine, node, "kafka-cli topics --list").split()
        assert set(kafka["topics"]) <= set(topics), topics
        for port in [kafka["port"], kafka["controllerPort"]]:
            assert_listens_on_loopback_only(machine, port)
        assert_on_its_tier(machine, node, kafka["dataDir"])


    @service_check("connect")
    def check_connect(machine, node):
        """every file the wallet-connection manifest names is readable by the operator"""
        manifest = json.loads(machine.succeed(f"cat {node['connect']['infoFile']}"))
        files = [value for entry in manifest.values() if isinstance(entry, dict) for key, value in entry.items() if key.endswith("File")]
        assert files, manifest
        for path in files:
            machine.wait_until_succeeds(f"runuser -u {node['operator']['name']} -- test -r {shlex.quote(path)}", timeout=120)
  '';
}
