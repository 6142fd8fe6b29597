# The VM tests, each as the module `pkgs.testers.runNixOSTest` takes, keyed by the name the flake
# offers it under. default.nix builds them; the evaluation harness (eval/vm-nodes.nix) evaluates
# their nodes and test scripts against its skeleton, without nixpkgs, and passes its own
# `genHost` (see below).
{
  pkgs,
  lib ? pkgs.lib,
  self,
  # genHost SPEC: a directory holding what `bcm-tools gen-host --spec SPEC` writes (one folder
  # per host). Here a derivation that runs gen-host when the test is evaluated, whose output the
  # generated-host test imports (import from derivation). The harness, which builds nothing,
  # passes the folders its `run` wrote with the same gen-host beforehand.
  genHost ? (
    spec:
    pkgs.runCommand "bcm-gen-host-${lib.removeSuffix ".toml" (baseNameOf spec)}"
      { nativeBuildInputs = [ (pkgs.callPackage ../pkgs/bcm-tools { }) ]; }
      ''
        bcm-tools gen-host --spec ${spec} --out $out
      ''
  ),
}:
let
  common = import ./common.nix { inherit lib; };

  # Modules every VM of these tests gets.
  testDefaults = {
    imports = [ self.nixosModules.default ];
    # Tests never reach the Tor network (project rule for every torrc in tests).
    bcm.tor.settings.DisableNetwork = true;
    environment.systemPackages = [
      pkgs.curl
      pkgs.jq
    ];
  };

  # Each test file takes the arguments it names from these.
  callTest =
    file:
    let
      test = import file;
    in
    test (
      builtins.intersectAttrs (builtins.functionArgs test) {
        inherit
          lib
          pkgs
          self
          testDefaults
          common
          genHost
          ;
      }
    );
in
# hosts/regtest1 and the generated-host spec pin nixpkgs.hostPlatform to x86_64-linux.
lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
  # The regtest example host exactly as gen-host wrote it, with VM disks for its two tiers.
  vm-regtest = callTest ./regtest.nix;
  # A host that gen-host writes from a spec of the test's own, while the test is evaluated.
  vm-generated-host = callTest ./generated-host.nix;
}
// {
  # Two clearnet nodes on a VM network: a channel opens, a payment settles, the channel backup
  # lands and verifies.
  vm-lightning = callTest ./lightning.nix;
  # An LND upgrade undone through a snapshot, and refused after a payment (specialisations).
  vm-lnd-rollback = callTest ./lnd-rollback.nix;
  # Tor enforcement probed from inside each enforced unit's sandbox against a second host.
  vm-tor-enforce = callTest ./tor-enforce.nix;
  # The bulk disk's mount stopped and the disk pulled while bitcoind and monerod run (mainnet,
  # offline), and the operator's watch-only wallet against the BIP-84 and BIP-86 vectors.
  vm-storage-fault = callTest ./storage-fault.nix;
}
