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
  vmTests = lib.mapAttrs (_: pkgs.testers.runNixOSTest) (import ./vm-tests.nix { inherit pkgs self; });
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
// vmTests
