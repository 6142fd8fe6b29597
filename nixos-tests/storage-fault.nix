# The bulk disk lost while bitcoind and monerod run, twice: its mount stopped, then the disk
# itself pulled from the VM (PCI hot-removal in the guest, as the kernel sees a disk unplugged).
# Each time the daemons stop, nothing is written under the mount point on the root file system
# (seen through a bind mount of the root alone, which mounts above do not hide), and once the
# disk is back and mounted they start again with their data. The node runs mainnet, offline (the
# test network has no Internet): storage does not depend on the chain, and the operator's
# watch-only wallet can then be compared with the BIP-84 and BIP-86 test vectors, which are
# mainnet addresses; the wallet lives on the fast tier and must outlast the bulk disk's loss.
{
  lib,
  pkgs,
  self,
  testDefaults,
  common,
}:
let
  storage = {
    fast = "/srv/fast";
    bulk = "/srv/bulk";
  };
  # Mounted as gen-host's storage.nix mounts a local disk (bcm_tools/templates/storage.nix.j2):
  # `nofail` and a device timeout, so a missing disk holds up neither the boot nor a restart
  # for long.
  tierMount = device: {
    inherit device;
    fsType = "ext4";
    autoFormat = true;
    options = [
      "noatime"
      "nofail"
      "x-systemd.device-timeout=30s"
    ];
  };
in
{
  name = "bcm-storage-fault";

  nodes.machine = {
    imports = [ testDefaults ];
    virtualisation = {
      memorySize = 2048;
      cores = 2;
      # /dev/vdb and /dev/vdc (the root disk is /dev/vda), one per tier; room for a mainnet
      # monerod's LMDB map, which it sizes at 1 GiB and up (sparse images take only what is used).
      emptyDiskImages = [
        2048
        4096
      ];
      fileSystems = {
        ${storage.fast} = tierMount "/dev/vdb";
        ${storage.bulk} = tierMount "/dev/vdc";
      };
    };
    # bcm-tools for the operator's watch-only wallet (LND, which would bring it, is not here).
    environment.systemPackages = [ (pkgs.callPackage "${self}/pkgs/bcm-tools" { }) ];
    bcm = {
      network = "mainnet";
      inherit storage;
      bitcoind = {
        enable = true;
        dbcache = 50;
      };
      monerod.enable = true;
    };
  };

  testScript =
    { nodes, ... }:
    let
      machine = nodes.machine;
      tiers = common.tiers machine;
      cfg = {
        node = common.serviceInfo machine;
        inherit (common) vectors;
        bulkUnits = common.unitsOn machine tiers.bulk.path;
        cli = {
          user = machine.bcm.bitcoind.rpc.users.cli.name;
          inherit (machine.bcm.bitcoind.rpc.users.cli) passwordFile;
          url = "http://${machine.bcm.bitcoind.rpc.endpoint}";
        };
        host = machine.networking.hostName;
      };
    in
    ''
      ${common.pythonHelpers}

      cfg = json.loads(r"""${builtins.toJSON cfg}""")
      node = cfg["node"]
      tiers = node["tiers"]
      bulk = tiers["bulk"]
      units = cfg["bulkUnits"]
      require_service_checks({"machine": node})
      assert set(units) >= {"bitcoind", "monerod"}, units
      MOUNT_UNIT = ""
      ROOT_VIEW = "/run/root-view"


      def nothing_under_mount_points():
          """Each tier's mount point, on the root file system, is still the empty directory it was."""
          for tier in tiers.values():
              found = machine.succeed(f"find {ROOT_VIEW}{tier['path']} -mindepth 1 | head -n 20").strip()
              assert found == "", f"written to the root file system under {tier['path']}:\n{found}"


      def stopped(units):
          """The units stop, and stay stopped past their restart delay and the device timeout."""
          for unit in units:
              machine.wait_until_succeeds(f"systemctl show -p ActiveState --value {unit}.service | grep -qxE 'inactive|failed'", timeout=180)
          machine.sleep(40)
          for unit in units:
              state = machine.succeed(f"systemctl show -p ActiveState --value {unit}.service").strip()
              assert state in ("inactive", "failed"), f"{unit} is {state} without its disk"


      # A file of each daemon's on the bulk disk: offline, the chains stay at their genesis
      # blocks, so "the same data" is the same files, not files made anew.
      DATA_FILES = [f"{node['bitcoind']['blocksDir']}/blocks/blk00000.dat", f"{node['monerod']['dataDir']}/lmdb/data.mdb"]


      def chain_state():
          """Each chain's tip, the files holding them (by inode), and bitcoind's loaded wallets."""
          tip = run_as_operator(machine, node, "bitcoin-cli getbestblockhash").strip()
          info = json.loads(machine.succeed(f"curl -sf http://{node['monerod']['restrictedRpc']}/get_info"))
          files = {path: machine.succeed(f"stat -c %i {path}").strip() for path in DATA_FILES}
          wallets = json.loads(run_as_operator(machine, node, "bitcoin-cli listwallets"))
          return {"bitcoind tip": tip, "monerod tip": info["top_block_hash"], "files": files, "wallets": wallets}


      def back_with_their_data(expected):
          """The mount comes back, the units start again, with the chain and wallet they had."""
          machine.succeed(f"systemctl start {MOUNT_UNIT}")
          assert_tiers_mounted(machine, tiers)
          machine.succeed("systemctl reset-failed " + " ".join(f"{unit}.service" for unit in units))
          machine.succeed("systemctl start " + " ".join(f"{unit}.service" for unit in units))
          for unit in units:
              machine.wait_for_unit(f"{unit}.service")
          machine.wait_until_succeeds(f"curl -sf http://{node['monerod']['restrictedRpc']}/get_info | jq -e '.status == \"OK\"'", timeout=300)
          assert chain_state() == expected, f"after the disk came back: {chain_state()}, before: {expected}"
          nothing_under_mount_points()


      machine.start()
      machine.wait_for_unit("multi-user.target")
      MOUNT_UNIT = machine.succeed(f"systemd-escape --path --suffix=mount {bulk['path']}").strip()

      with subtest("each tier is a mount of its own disk, with nothing under its mount point"):
          assert_tiers_mounted(machine, tiers)
          # A bind mount of / alone shows the root file system without the mounts above it.
          machine.succeed(f"mkdir -p {ROOT_VIEW} && mount --bind / {ROOT_VIEW}")
          nothing_under_mount_points()

      check_services(machine, node)

      with subtest("the operator's watch-only wallet has the first addresses of the BIP-84 and BIP-86 vectors"):
          vectors = cfg["vectors"]
          cli = cfg["cli"]
          run_as_operator(machine, node, f"umask 077 && printf '%s\\n' {shlex.quote(vectors['mnemonic'])} > ~/vectors.mnemonic")
          out = run_as_operator(
              machine,
              node,
              f"BCM_BITCOIND_RPC_USER={cli['user']} BCM_BITCOIND_RPC_PASSWORD=$(cat {cli['passwordFile']})"
              f" bcm-tools trezor watch-only --host {cfg['host']} --network mainnet --device mnemonic:$HOME/vectors.mnemonic"
              f" --rpc-url {cli['url']} 2>&1",
          )
          machine.log(out)
          printed = [line.split(":", 1)[1].strip() for line in out.splitlines() if "first receive address:" in line]
          assert printed == [vectors["firstAddress"]["wpkh"], vectors["firstAddress"]["tr"]], printed
          wallet = next(line.split()[1] for line in out.splitlines() if line.startswith("wallet "))
          # bitcoind derives the same addresses from the descriptors it imported.
          for kind, address_type in [("wpkh", "bech32"), ("tr", "bech32m")]:
              got = run_as_operator(machine, node, f"bitcoin-cli -rpcwallet={wallet} -named getnewaddress address_type={address_type}").strip()
              assert got == vectors["firstAddress"][kind], f"bitcoind's first {kind} address is {got}"
          info = json.loads(run_as_operator(machine, node, f"bitcoin-cli -rpcwallet={wallet} getwalletinfo"))
          assert info["private_keys_enabled"] is False, info
          assert_on_tier(machine, node["bitcoind"]["dataDir"], tiers["fast"])

      before = chain_state()
      assert wallet in before["wallets"], before

      with subtest("the bulk mount stopped: bitcoind and monerod stop, nothing is written under it"):
          machine.succeed(f"systemctl stop {MOUNT_UNIT}")
          stopped(units)
          machine.fail(f"findmnt --mountpoint {bulk['path']}")
          assert_tiers_mounted(machine, {"fast": tiers["fast"]})
          nothing_under_mount_points()

      with subtest("the bulk mount back: bitcoind and monerod start with their data and the wallet"):
          back_with_their_data(before)

      with subtest("the bulk disk pulled: bitcoind and monerod stop, nothing is written under its mount point"):
          block = bulk["device"].removeprefix("/dev/")
          # The disk's PCI function (virtio-blk): /sys/block/vdc/device is its virtio device.
          pci = machine.succeed(f"readlink -f /sys/block/{block}/device/..").strip()
          machine.succeed(f"echo 1 > {pci}/remove")
          machine.wait_until_fails(f"test -b {bulk['device']}")
          stopped(units)
          machine.fail(f"findmnt --mountpoint {bulk['path']}")
          nothing_under_mount_points()

      with subtest("the disk back: bitcoind and monerod start with their data and the wallet"):
          machine.succeed("echo 1 > /sys/bus/pci/rescan")
          machine.wait_until_succeeds(f"test -b {bulk['device']}", timeout=60)
          back_with_their_data(before)

      with subtest("nothing failed but the units on the disk that was pulled, its mount and its check"):
          fsck = "systemd-fsck@" + machine.succeed(f"systemd-escape --path {bulk['device']}").strip() + ".service"
          assert_no_unit_failed(machine, allowed=[f"{unit}.service" for unit in units] + [MOUNT_UNIT, fsck])
    '';
}
