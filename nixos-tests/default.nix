# The flake's checks (besides the bcm-tools package): the evaluation harness run against the
# pinned nixpkgs, and VM tests in nixpkgs' runNixOSTest shape that check behaviour, not just
# that units start. `nix flake check` also evaluates every nixosConfigurations.<host>, which
# fails on any failed assertion.
#
# The VM tests cannot run on the development machines (no nixpkgs, no binary cache, no KVM);
# they are written to run on a machine with Nix, KVM and network.
{ pkgs, self }:
let
  inherit (pkgs) lib;
  isX86 = pkgs.stdenv.hostPlatform.system == "x86_64-linux";

  # Modules every VM of these tests gets.
  testDefaults = {
    imports = [ self.nixosModules.default ];
    # Tests never reach the Tor network (project rule for every torrc in tests).
    bcm.tor.settings.DisableNetwork = true;
    environment.systemPackages = [
      pkgs.curl
      pkgs.jq
      pkgs.netcat
    ];
  };

  vmTests = {
    # The regtest example host exactly as gen-host wrote it, plus VM disks for its two tiers.
    vm-regtest = pkgs.testers.runNixOSTest (import ./regtest.nix { inherit self testDefaults; });
    # Two clearnet nodes on a VM network: a channel opens and a payment settles.
    vm-lightning = pkgs.testers.runNixOSTest (import ./lightning.nix { inherit testDefaults; });
  };
in
{
  # The same harness `scripts/test` runs, with the lib of the pinned nixpkgs. It evaluates into a
  # private store under $TMPDIR, so it needs no daemon inside the build sandbox.
  eval-harness =
    pkgs.runCommand "bcm-eval-harness"
      {
        nativeBuildInputs = [
          pkgs.nix
          pkgs.python3
        ];
      }
      ''
        export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/state NIX_CONF_DIR=$TMPDIR/conf NIX_LOG_DIR=$TMPDIR/log
        cp -r ${self} src && chmod -R u+w src && cd src
        patchShebangs nixos-tests/eval/run
        NIXPKGS_LIB=${pkgs.path}/lib nixos-tests/eval/run | tee $out
      '';
}
// lib.optionalAttrs isX86 vmTests
