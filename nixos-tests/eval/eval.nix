# Evaluates one host (a directory in the shape `bcm-tools gen-host` writes) with the bcm modules,
# the option skeleton and the stub pkgs, and runs every registered check on it.
# Returns a list of { check; ok; detail; }; the last entry also lists the rendered shell scripts
# (shellScripts) for `run` to parse.
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

  rendered = import ./rendered.nix { inherit lib config; };

  # The shell writers' checkPhase (bash -n) cannot run during evaluation: this entry hands `run`
  # every rendered file that starts with the shebang those writers write, and `run` parses each
  # with bash and fills in ok and detail. Appended after the checks, so a caller reading the
  # first result (broken.nix) is unaffected.
  shellScripts = lib.filter (file: lib.hasPrefix "#!${pkgs.runtimeShell}\n" file.text) rendered;
  shellScriptsEntry = {
    check = "every rendered shell script parses (bash -n, as the writers' checkPhase)";
    ok = true;
    detail = "";
    shellScripts = map (file: {
      inherit (file) name;
      path = builtins.unsafeDiscardStringContext file.path;
    }) shellScripts;
  };

  # Building a system reads the NixOS options (units, users, file systems...), so every
  # definition of them meets its type there; the checks read only some. Forcing every option the
  # skeleton declares fails evaluation where building would. Module options (bcm.*) are left to
  # be read as the modules use them: an unused one may have no value, as on NixOS.
  nixosOptions = lib.filter (option: lib.elem (toString ./skeleton.nix) (map toString option.declarations)) (
    lib.collect lib.isOption options
  );
  nixosOptionsEntry = {
    check = "every NixOS option the skeleton declares evaluates (each definition has its type)";
    ok = lib.all (option: builtins.deepSeq option.value true) nixosOptions;
    detail = "";
  };

  context = {
    inherit
      lib
      config
      options
      pkgs
      failedAssertions
      rendered
      ;
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
++ [
  nixosOptionsEntry
  shellScriptsEntry
]
