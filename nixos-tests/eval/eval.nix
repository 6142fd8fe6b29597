# Evaluates one host (a directory in the shape `bcm-tools gen-host` writes) with the bcm modules,
# the option skeleton and the stub pkgs, and runs every registered check on it.
# Returns a list of { check; ok; detail; }.
#   nixpkgsLib   path of nixpkgs' lib/
#   host         path of the host directory
#   extraModules modules applied on top of the host (the broken-config fixtures use this)
#   checkFiles   which checks to run (default: all registered in checks/default.nix)
{
  nixpkgsLib,
  host,
  extraModules ? [ ],
  checkFiles ? import ./checks,
}:
let
  lib = import nixpkgsLib;
  pkgs = import ./pkgs.nix { inherit lib; };

  evaluated = lib.evalModules {
    modules = [
      ./skeleton.nix
      ../../modules
      { _module.args.pkgs = pkgs; }
      host
    ]
    ++ extraModules;
  };
  inherit (evaluated) config options;

  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  context = {
    inherit
      lib
      config
      options
      pkgs
      failedAssertions
      ;
    rendered = import ./rendered.nix { inherit lib config; };
    hardening = import ../../modules/lib/hardening.nix;
    # One check result; `detail` explains a failure.
    check = name: ok: detail: {
      check = name;
      inherit ok;
      detail = if ok then "" else detail;
    };
  };
in
lib.concatMap (file: import file context) checkFiles
