# The part of nixpkgs' nixos/modules/virtualisation/qemu-vm.nix that decides what a VM test node
# mounts, so the harness sees what the test VMs see: qemu-vm.nix replaces the whole of
# `fileSystems` with `virtualisation.fileSystems` (mkVMOverride), dropping every mount the host
# configuration declares, and attaches `virtualisation.emptyDiskImages` as extra virtio disks
# after the root disk.
#
# Read at the stored nixpkgs revision 00008e8e of qemu-vm.nix (the pinned nixos-26.05 revision
# fcb8fcd6 is not in the stored copies), and disk-size-option.nix at 34b62f7c. Each option names
# the file it mirrors and says "simplified:" where it is narrower. Used only for VM test nodes
# (vm-nodes.nix), never for hosts.
{
  config,
  lib,
  options,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.virtualisation;
in
{
  options.virtualisation = {
    # qemu-vm.nix: `virtualisation.fileSystems = options.fileSystems`, the same option again.
    fileSystems = mkOption {
      inherit (options.fileSystems) type;
      default = { };
      description = "The file systems of the VM; they replace `fileSystems` entirely.";
    };

    # qemu-vm.nix.
    emptyDiskImages = mkOption {
      type = types.listOf types.ints.positive;
      default = [ ];
      description = "Sizes in MiB of extra empty disks, attached after the root disk.";
    };

    # qemu-vm.nix; simplified: nixpkgs names the image after system.name, which is the host name
    # unless that is empty.
    diskImage = mkOption {
      type = types.nullOr types.str;
      default = "./${config.networking.hostName}.qcow2";
    };

    # qemu-vm.nix.
    rootDevice = mkOption {
      type = types.nullOr types.path;
      default = "/dev/disk/by-label/nixos";
    };

    # qemu-vm.nix.
    useDefaultFilesystems = mkOption {
      type = types.bool;
      default = true;
    };

    # qemu-vm.nix.
    useNixStoreImage = mkOption {
      type = types.bool;
      default = false;
    };

    # qemu-vm.nix; simplified: only the drives' order and names, which decide the guest's device
    # names (/dev/vda, /dev/vdb, ... with the default virtio disk interface).
    qemu.drives = mkOption {
      type = types.listOf (
        types.submodule {
          options.name = mkOption {
            type = types.nullOr types.str;
            default = null;
          };
          options.file = mkOption { type = types.str; };
        }
      );
    };

    # qemu-vm.nix.
    memorySize = mkOption {
      type = types.ints.positive;
      default = 1024;
    };
    # qemu-vm.nix.
    cores = mkOption {
      type = types.ints.positive;
      default = 1;
    };
    # disk-size-option.nix, with diskSizeAutoSupported = false as qemu-vm.nix sets it.
    diskSize = mkOption {
      type = types.either (types.enum [ "auto" ]) types.ints.positive;
      default = 1024;
    };
  };

  config = {
    assertions = [
      # disk-size-option.nix.
      {
        assertion = cfg.diskSize != "auto";
        message = "Setting virtualisation.diskSize to `auto` is not supported by the current image build or vm runner; use an explicit size.";
      }
    ];

    # qemu-vm.nix: the root disk, the Nix store image, then the empty disks, in this order.
    virtualisation.qemu.drives = lib.mkMerge [
      (lib.mkIf (cfg.diskImage != null) [
        {
          name = "root";
          file = ''"$NIX_DISK_IMAGE"'';
        }
      ])
      (lib.mkIf cfg.useNixStoreImage [
        {
          name = "nix-store";
          file = ''"$TMPDIR"/store.img'';
        }
      ])
      (lib.imap0 (index: _: { file = "$(pwd)/empty${toString index}.qcow2"; }) cfg.emptyDiskImages)
    ];

    # qemu-vm.nix: the override that drops the host's mounts. It applies whenever
    # virtualisation.fileSystems is non-empty, which the root file system below always makes it.
    fileSystems = lib.mkIf (cfg.fileSystems != { }) (lib.mkVMOverride cfg.fileSystems);

    # qemu-vm.nix; simplified: of the 9p shares only the host store and the exchange directories,
    # and no /nix/store overlay (the skeleton's fileSystems has no overlay options), no /tmp
    # tmpfs and no ESP.
    virtualisation.fileSystems =
      let
        share = tag: {
          device = tag;
          fsType = "9p";
          neededForBoot = true;
          options = [
            "trans=virtio"
            "version=9p2000.L"
            "msize=16384"
            "x-systemd.requires=modprobe@9pnet_virtio.service"
          ]
          ++ lib.optional (tag == "nix-store") "cache=loose";
        };
      in
      {
        "/" = lib.mkIf cfg.useDefaultFilesystems (
          if cfg.diskImage == null then
            {
              device = "tmpfs";
              fsType = "tmpfs";
              options = [ "mode=755" ];
            }
          else
            {
              device = cfg.rootDevice;
              fsType = "ext4";
            }
        );
        "/nix/.ro-store" = lib.mkIf (!cfg.useNixStoreImage) (share "nix-store");
        "/tmp/xchg" = share "xchg";
        "/tmp/shared" = share "shared";
      };
  };
}
