# A host `bcm-tools gen-host` writes from this test's own spec (generated-host.toml) while the
# test is evaluated, booted as written: its generated storage.nix mounts the tiers at the spec's
# mount points, and every service the spec places starts and answers on the spec's ports, with
# its data on the tier the spec chose. The spec moves everything gen-host can move (mount points,
# file systems, the operator's name, ports, LND and monerod to the other tier), so a default that
# gen-host or a module forgot to carry through shows here, where the regtest example would not.
{
  lib,
  testDefaults,
  common,
  genHost,
}:
let
  spec = lib.importTOML ./generated-host.toml;
  host = lib.head spec.hosts;
  generated = "${genHost ./generated-host.toml}/${host.name}";
in
{
  name = "bcm-generated-host";

  # The generated default.nix sets nixpkgs.hostPlatform, which the read-only test pkgs would reject.
  node.pkgsReadOnly = false;

  nodes.${host.name} =
    args:
    let
      # The generated mounts of the tiers. qemu-vm.nix replaces `fileSystems` with
      # `virtualisation.fileSystems` (mkVMOverride), so they must be declared there to exist.
      hostStorage = import "${generated}/storage.nix" args;
      inherit (hostStorage.bcm) storage;
    in
    {
      imports = [
        testDefaults
        generated
      ];
      virtualisation = {
        memorySize = host.memory_mb;
        cores = host.cpus;
        diskSize = 4096;
        # The spec's devices, /dev/vdb and /dev/vdc, in the spec's sizes.
        emptyDiskImages = map (tier: host.storage.${tier}.size_gb * 1024) [
          "fast"
          "bulk"
        ];
        fileSystems = lib.mapAttrs (_: mount: mount // { autoFormat = true; }) (
          lib.getAttrs [ storage.fast storage.bulk ] hostStorage.fileSystems
        );
      };
    };

  testScript =
    { nodes, ... }:
    let
      node = nodes.${host.name};
      services = host.services;
      # Each port the spec sets, beside the one the generated configuration gave the module.
      ports = {
        "bitcoind P2P" = {
          spec = services.bitcoind.port;
          config = node.bcm.bitcoind.port;
        };
        "bitcoind RPC" = {
          spec = services.bitcoind.rpc_port;
          config = node.bcm.bitcoind.rpc.port;
        };
        "LND REST" = {
          spec = services.lnd.rest_port;
          config = node.bcm.lnd.restPort;
        };
        "monerod restricted RPC" = {
          spec = services.monerod.restricted_rpc_port;
          config = node.bcm.monerod.restrictedRpc.port;
        };
        "Tor SOCKS" = {
          spec = services.tor.socks_port;
          config = node.bcm.tor.socksPort;
        };
      };
      cfg = {
        machine = host.name;
        info = common.serviceInfo node;
        inherit ports;
        # Where the spec put each service's data, and where the configuration put it.
        placements = {
          "bitcoind blocks" = {
            tier = services.bitcoind.blocks_tier or "bulk";
            dir = node.bcm.bitcoind.blocksDir;
          };
          "bitcoind chainstate" = {
            tier = services.bitcoind.data_tier or "fast";
            dir = node.bcm.bitcoind.dataDir;
          };
          "LND" = {
            tier = services.lnd.data_tier or "fast";
            dir = node.bcm.lnd.dataDir;
          };
          "monerod" = {
            tier = services.monerod.data_tier or "bulk";
            dir = node.bcm.monerod.dataDir;
          };
        };
        operator = spec.operator.user;
      };
    in
    ''
      ${common.pythonHelpers}

      cfg = json.loads(r"""${builtins.toJSON cfg}""")
      node = cfg["info"]
      require_service_checks({cfg["machine"]: node})
      generated = ${host.name}

      generated.start()
      generated.wait_for_unit("multi-user.target")

      with subtest("the generated storage.nix mounts each tier from its own disk at the spec's mount point"):
          assert_tiers_mounted(generated, node["tiers"])

      with subtest("the operator is the spec's user"):
          assert node["operator"]["name"] == cfg["operator"], node["operator"]
          generated.succeed(f"id {cfg['operator']}")

      with subtest("bitcoind starts, and the chain leaves its genesis block for LND"):
          lift_off_genesis(generated, node)

      check_services(generated, node)

      with subtest("each service keeps its data on the tier the spec chose"):
          for what, placement in cfg["placements"].items():
              assert_on_tier(generated, placement["dir"], node["tiers"][placement["tier"]])

      with subtest("each daemon listens on the port the spec gave it"):
          for what, port in cfg["ports"].items():
              assert port["config"] == port["spec"], f"{what}: the spec says {port['spec']}, the host has {port['config']}"
              generated.wait_until_succeeds(f"ss -ltnH 'sport = :{port['spec']}' | grep -q .", timeout=60)

      with subtest("no unit failed, not even one that Restart= brought back"):
          assert_no_unit_failed(generated)
    '';
}
