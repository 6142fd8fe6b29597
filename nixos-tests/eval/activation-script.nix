# The text of one activation script of a host, evaluated as the harness does (skeleton, bcm
# modules, stub pkgs). pkgs/bcm-tools/tests/test_secrets_activation.py runs the secrets script
# it returns with bash, against real age, to show the host side really decrypts.
{
  nixpkgsLib,
  host,
  script,
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
    ];
  };
in
builtins.unsafeDiscardStringContext evaluated.config.system.activationScripts.${script}.text
