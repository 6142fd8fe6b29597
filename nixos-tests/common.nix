# What the VM tests share: the storage tiers of a node as its test script checks them, and the
# Python helpers every test script starts with.
{ lib }:
{
  # A node's storage tiers with the mount the VM must have for each. qemu-vm.nix replaces the
  # host's `fileSystems` with `virtualisation.fileSystems`, so a node that declares its tiers
  # only the host's way has no mount here (device null), and the script says so.
  tiers =
    node:
    let
      defined = tier: (builtins.tryEval node.bcm.storage.${tier}).success;
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


    def assert_no_unit_failed(machine):
        """No unit failed during this boot, including one that Restart= brought back."""
        failed = machine.succeed(
            "journalctl --boot --quiet --no-pager --output=cat | grep -F 'Failed with result' || true"
        ).strip()
        assert failed == "", f"{machine.name}: units failed during the test:\n{failed}"


    def wait_for_lnd_server(machine, operator, timeout=300):
        """LND answers RPC before its server is up (and its wallet unlocked); peers and channels
        need the server, as the pytest fixture (tests/lnd_regtest.py) knows."""
        machine.wait_until_succeeds(
            f"runuser -l {operator} -c 'lncli state' | jq -e '.state == \"SERVER_ACTIVE\"'", timeout=timeout
        )
  '';
}
