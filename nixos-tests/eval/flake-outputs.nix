# Evaluates flake.nix's outputs without nixpkgs, with nixpkgs' lib and a stand-in of the
# `nixpkgs` input whose legacyPackages.<system> is the stub pkgs (pkgs.nix) of that system, and
# checks the names the flake offers: for each system, `legacyPackages.<system>.vmTests` (what
# `nix build .#vmTests.NAME` and scripts/vm-test build) names exactly the scenarios vm-tests.nix
# defines for that system, and `checks.<system>` (what `nix flake check` runs) holds every check
# of nixos-tests/default.nix. Only attribute names are evaluated: no test, package or host.
# Returns a list of { check; ok; detail; } like eval.nix.
#   nixpkgsLib   path of nixpkgs' lib/
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  root = ../..;

  # The stub pkgs, as nixpkgs.legacyPackages.<system> (only the system differs).
  pkgsFor =
    system:
    import ./pkgs.nix { inherit lib; }
    // {
      inherit lib system;
      stdenv.hostPlatform.system = system;
    };
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs lib.systems.flakeExposed pkgsFor;
  };

  # What Nix passes a flake's outputs as `self`: the outputs themselves and the source's path.
  flake = import ../../flake.nix;
  outputs = flake.outputs { inherit self nixpkgs; };
  self = outputs // {
    outPath = toString root;
  };

  systems = lib.attrNames (outputs.legacyPackages or { });

  check = name: ok: detail: {
    check = name;
    inherit ok;
    detail = if ok then "" else detail;
  };

  # "label: a, b" for the names in `a` and not in `b`; "" when there are none.
  missing =
    label: a: b:
    lib.optionalString (lib.subtractLists b a != [ ]) "${label}: ${lib.concatStringsSep ", " (lib.subtractLists b a)}";
  sentence = parts: lib.concatStringsSep "; " (lib.filter (part: part != "") parts);

  systemChecks =
    system:
    let
      pkgs = pkgsFor system;
      scenarios = lib.attrNames (
        import ../vm-tests.nix {
          inherit pkgs lib self;
          genHost = _: throw "flake-outputs.nix evaluates names only";
        }
      );
      offered = lib.attrNames (outputs.legacyPackages.${system}.vmTests or { });
      flakeChecks = lib.attrNames (outputs.checks.${system} or { });
      harnessChecks = lib.attrNames (import ../default.nix { inherit pkgs self; }).checks;
    in
    [
      (check "${system}: the flake's legacyPackages.${system}.vmTests are the scenarios of nixos-tests/vm-tests.nix (${lib.concatStringsSep ", " scenarios})" (
        offered == scenarios
      ) (sentence [
        (missing "not offered" scenarios offered)
        (missing "offered but not in vm-tests.nix" offered scenarios)
      ]))
      (check "${system}: the flake's checks.${system} hold the checks of nixos-tests/default.nix" (
        lib.subtractLists flakeChecks harnessChecks == [ ]
      ) (missing "missing" harnessChecks flakeChecks))
    ];
in
[
  (check "the flake offers vmTests for x86_64-linux and aarch64-linux" (
    lib.all (system: outputs ? legacyPackages.${system}.vmTests) [
      "x86_64-linux"
      "aarch64-linux"
    ]
  ) (if systems == [ ] then "the flake has no legacyPackages" else "legacyPackages has: ${toString systems}"))
]
++ lib.concatMap systemChecks systems
