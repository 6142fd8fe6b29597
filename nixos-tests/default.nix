# What the flake offers from nixos-tests/. `checks`: the evaluation harness run against the
# pinned nixpkgs; it needs neither KVM nor network, so `nix flake check` passes on any machine
# with Nix (the flake adds the bcm-tools package and the hosts-match-specs check, and
# `nix flake check` also evaluates every nixosConfigurations.<host>, failing on any failed
# assertion). `vmTests`: the VM tests (vm-tests.nix) in nixpkgs' runNixOSTest shape, which need
# KVM; the flake offers them as legacyPackages.<system>.vmTests, built one at a time with
# `nix build .#vmTests.<name>`.
#
# The VM tests cannot run on the development machines (no nixpkgs, no binary cache, no KVM);
# they are written to run on a machine with Nix, KVM and network.
{ pkgs, self }:
let
  inherit (pkgs) lib;
  vmTests = lib.mapAttrs (_: pkgs.testers.runNixOSTest) (import ./vm-tests.nix { inherit pkgs self; });
in
{
  inherit vmTests;

  checks = {
    # The same harness `scripts/test` runs, with the lib of the pinned nixpkgs. It evaluates
    # into a private store under $TMPDIR, so it needs no daemon inside the build sandbox.
    # bcm-tools writes the host of the generated-host VM test (its spec) before that test is
    # evaluated; pyflakes lints the VM test scripts as the test driver does.
    eval-harness =
      pkgs.runCommand "bcm-eval-harness"
        {
          nativeBuildInputs = [
            pkgs.nix
            (pkgs.python3.withPackages (ps: [ ps.pyflakes ]))
            (pkgs.callPackage ../pkgs/bcm-tools { })
          ];
        }
        ''
          export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/state NIX_CONF_DIR=$TMPDIR/conf NIX_LOG_DIR=$TMPDIR/log
          cp -r ${self} src && chmod -R u+w src && cd src
          patchShebangs nixos-tests/eval/run
          NIXPKGS_LIB=${pkgs.path}/lib nixos-tests/eval/run | tee $out
        '';
  };
}
