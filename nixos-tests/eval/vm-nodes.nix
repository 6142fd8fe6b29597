# Evaluates the nodes of every VM test (nixos-tests/vm-tests.nix) as nixpkgs' test framework
# builds them, with the skeleton, the stand-in of qemu-vm.nix and the stub pkgs, and checks what
# a VM test can get wrong without any test failing: a storage tier that is not mounted in the VM
# (qemu-vm.nix drops the host's `fileSystems`, so the services write to the root disk and a
# "blocks on bulk" check passes there), a tier on a disk the VM does not have, failed
# assertions, and a test script that does not evaluate against its nodes or is not Python.
# It also checks that every bcm service a node enables has a check in the registry of
# nixos-tests/common.nix, and that the script runs the registry's checks.
# Returns a list of { check; ok; detail; } like eval.nix; an entry with `pythonScript` is decided
# by `run`, which compiles the script.
#   nixpkgsLib       path of nixpkgs' lib/
#   generatedHosts   a directory with, for each spec nixos-tests/NAME.toml, a folder NAME holding
#                    what `bcm-tools gen-host --spec nixos-tests/NAME.toml` wrote; `run` makes it.
#                    It stands in for vm-tests.nix's genHost, a derivation this harness cannot
#                    build.
{
  nixpkgsLib,
  generatedHosts ? null,
}:
let
  lib = import nixpkgsLib;
  pkgs = import ./pkgs.nix { inherit lib; };
  root = ../..;
  common = import ../common.nix { inherit lib; };

  # What the tests read of the flake's `self`: its path and its NixOS modules.
  self = {
    outPath = toString root;
    nixosModules = import ../../modules/flake-modules.nix;
  };

  tests = import ../vm-tests.nix {
    inherit pkgs lib self;
    genHost =
      spec:
      if generatedHosts == null then
        throw "vm-nodes.nix: no generatedHosts; nixos-tests/eval/run writes them with bcm-tools gen-host"
      else
        "${generatedHosts}/${lib.removeSuffix ".toml" (baseNameOf spec)}";
  };

  # nixos/lib/testing/nodes.nix and network.nix: each node is a NixOS system with qemu-vm.nix,
  # its name as a module argument and as default host name, and `nodes` (every node's config)
  # as a module argument; simplified: of the test framework's base modules only these, and
  # nixpkgs.hostPlatform from the test's pkgs (nodes.nix sets nixpkgs.pkgs or nixpkgs.system).
  evalNodes =
    test:
    let
      evaluated = lib.mapAttrs (
        name: node:
        lib.evalModules {
          modules = [
            ./skeleton.nix
            ./qemu-vm.nix
            {
              _module.args = {
                inherit pkgs name;
                nodes = lib.mapAttrs (_: e: e.config) evaluated;
              };
              networking.hostName = lib.mkDefault name;
              nixpkgs.hostPlatform = lib.mkDefault pkgs.stdenv.hostPlatform.system;
            }
            (test.defaults or { })
            node
          ];
        }
      ) test.nodes;
    in
    evaluated;

  check = name: ok: detail: {
    check = name;
    inherit ok;
    detail = if ok then "" else detail;
  };

  nodeChecks =
    testName: nodeName: evaluated:
    let
      inherit (evaluated) config options;
      label = "${testName}.${nodeName}";
      # A node without the bcm modules (a plain host on the test network) has no tiers.
      definedTiers = lib.filter (tier: options ? bcm && options.bcm.storage.${tier}.isDefined) [
        "fast"
        "bulk"
      ];
      tierPaths = lib.genAttrs definedTiers (tier: config.bcm.storage.${tier});
      mountOf = path: lib.findFirst (fs: fs.mountPoint == path) null (lib.attrValues config.fileSystems);

      unmounted = lib.filter (tier: mountOf tierPaths.${tier} == null) definedTiers;

      # With the default virtio interface the guest names the drives vda, vdb, ... in order.
      driveDevices = lib.imap0 (
        index: _: "/dev/vd${lib.elemAt lib.lowerChars index}"
      ) config.virtualisation.qemu.drives;
      tierDevice = tier: (mountOf tierPaths.${tier}).device or null;
      onMissingDisk = lib.filter (
        tier:
        let
          device = tierDevice tier;
        in
        device != null && lib.hasPrefix "/dev/vd" device && !lib.elem device driveDevices
      ) definedTiers;
      mountedTiers = lib.subtractLists unmounted definedTiers;
      tierDevices = map tierDevice mountedTiers;
      # The root file system's device, and the root disk by its guest name (the first drive).
      rootDevices = [
        config.fileSystems."/".device
      ]
      ++ lib.optional (config.virtualisation.diskImage != null) (lib.head driveDevices);

      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

      unchecked = lib.subtractLists common.checkedServices (common.enabledServices config);
    in
    [
      (check "${label}: every bcm storage tier is a mount point of the VM (virtualisation.fileSystems; qemu-vm.nix drops the host's fileSystems)" (
        unmounted == [ ]
      ) (lib.concatMapStringsSep ", " (tier: "${tier} (${tierPaths.${tier}}) is not mounted") unmounted))
      (check "${label}: every tier's disk is attached to the VM (root disk, then virtualisation.emptyDiskImages)" (
        onMissingDisk == [ ]
      ) (
        lib.concatMapStringsSep ", " (
          tier: "${tier} is on ${tierDevice tier}, the VM has ${toString driveDevices}"
        ) onMissingDisk
      ))
      (check "${label}: the tiers are on different devices, none of them the root disk's" (
        lib.length (lib.unique tierDevices) == lib.length tierDevices
        && lib.intersectLists rootDevices tierDevices == [ ]
      ) "tier devices: ${toString tierDevices}, root: ${toString rootDevices}")
      (check "${label}: the VM's file systems and virtualisation options evaluate (each definition has its type)" (
        builtins.deepSeq [
          config.fileSystems
          config.virtualisation
        ] true
      ) "")
      (check "${label}: no failed assertions" (failedAssertions == [ ]) (lib.concatStringsSep "; " failedAssertions))
      (check "${label}: every bcm service it enables has a check in the registry (nixos-tests/common.nix, SERVICE_CHECKS)" (
        unchecked == [ ]
      ) "no check for ${lib.concatMapStringsSep ", " (service: "bcm.${service}") unchecked}")
    ];

  testChecks =
    testName: test:
    let
      evaluated = evalNodes test;
      nodes = lib.mapAttrs (_: e: e.config) evaluated;
      # nixos/lib/testing/testScript.nix: a function is called with `nodes`.
      script = if lib.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
      scriptEvaluates = builtins.tryEval (builtins.deepSeq script true);
      # Nodes the registry's checks must run on: those that enable a bcm service.
      withServices = lib.attrNames (lib.filterAttrs (_: node: common.enabledServices node != [ ]) nodes);
      runsChecks = scriptEvaluates.success && lib.hasInfix "check_services(" script && lib.hasInfix "require_service_checks(" script;
    in
    lib.concatLists (lib.mapAttrsToList (nodeChecks testName) evaluated)
    # Each specialisation is a system of its own (the skeleton's `specialisation` extends the
    # node's modules as nixpkgs does): the same checks, and its units must evaluate.
    ++ lib.concatLists (
      lib.mapAttrsToList (
        nodeName: e:
        lib.concatLists (
          lib.mapAttrsToList (
            specName: spec:
            let
              label = "${nodeName} (specialisation ${specName})";
            in
            nodeChecks testName label {
              config = spec.configuration;
              inherit (e) options;
            }
            ++ [
              (check "${testName}.${label}: every unit's settings evaluate" (builtins.deepSeq (lib.mapAttrs (
                _: unit: unit.serviceConfig
              ) spec.configuration.systemd.services) true) "")
            ]
          ) e.config.specialisation
        )
      ) evaluated
    )
    ++ [
      (check "${testName}: the test script evaluates against its nodes" (
        scriptEvaluates.success && lib.isString script
      ) "evaluating testScript threw")
      (check "${testName}: the test script requires and runs the registry's checks (require_service_checks, check_services)" (
        withServices == [ ] || runsChecks
      ) "nodes ${toString withServices} enable bcm services, and the script does not call both")
    ]
    # `run` compiles the script with Python, as the test driver does before it starts a VM.
    ++ lib.optional (scriptEvaluates.success && lib.isString script) {
      check = "${testName}: the test script is valid Python";
      ok = true;
      detail = "";
      pythonScript = script;
      # The names the test driver defines in the script's scope besides its own symbols.
      machineNames = lib.attrNames test.nodes;
    };
in
lib.concatLists (lib.mapAttrsToList testChecks tests)
