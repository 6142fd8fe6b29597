# Placeholder written by `bcm-tools gen-host` because btc1 had no hardware configuration.
# Replace this file with the output of `nixos-generate-config --show-hardware-config` run on the
# machine. gen-host never overwrites it. Until then it assumes the partition labels of the NixOS
# manual's installation guide (root labelled "nixos", EFI system partition labelled "boot").
{ ... }:
{
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/boot";
    fsType = "vfat";
    options = [ "umask=0077" ];
  };
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;

  warnings = [
    "hosts/btc1/hardware-configuration.nix is the placeholder bcm-tools gen-host wrote; replace it with `nixos-generate-config --show-hardware-config` output from the machine."
  ];
}
