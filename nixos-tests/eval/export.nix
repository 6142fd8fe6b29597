# What a host would run, as data: every enabled unit with its settings and command lines, every
# file the modules render (configuration files and generated scripts, by store path), the users
# and groups, tmpfiles rules and activation scripts. The sandbox tests
# (pkgs/bcm-tools/tests/test_units_sandboxed.py) start the real daemons from this, so they run
# exactly what the modules render, under the sandbox each unit declares.
#   nixpkgsLib  path of nixpkgs' lib/
#   host        path of the host directory
{ nixpkgsLib, host }:
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
  inherit (evaluated) config;

  # JSON-safe copy: packages become their store path, functions are dropped.
  plain =
    value:
    if lib.isDerivation value || (lib.isAttrs value && value ? outPath) then
      toString value.outPath
    else if lib.isAttrs value then
      lib.mapAttrs (_: plain) (lib.filterAttrs (_: v: !lib.isFunction v) value)
    else if lib.isList value then
      map plain value
    else if lib.isString value then
      builtins.unsafeDiscardStringContext value
    else
      value;

  units = lib.filterAttrs (_: unit: unit.enable) config.systemd.services;
  unitData =
    unit:
    plain {
      inherit (unit)
        description
        serviceConfig
        unitConfig
        environment
        path
        script
        preStart
        postStart
        wantedBy
        requires
        wants
        after
        before
        bindsTo
        ;
    };

  # Stub packages (all-zero hash): the launcher maps each to real binaries on this machine.
  stubPackages = lib.mapAttrs (_: p: toString p.outPath) (
    lib.filterAttrs (_: p: lib.isAttrs p && (p.type or null) == "derivation" && lib.hasPrefix "/nix/store/0000" (toString (p.outPath or ""))) pkgs
  );

  rendered = import ./rendered.nix { inherit lib config; };
in
{
  host = baseNameOf (toString host);
  bcm = plain {
    inherit (config.bcm) network storage;
    secretsDir = config.bcm.lib.generatedSecretsDir;
  };
  units = lib.mapAttrs (_: unitData) units;
  files = lib.listToAttrs (
    map (file: {
      name = builtins.unsafeDiscardStringContext file.path;
      value = builtins.unsafeDiscardStringContext file.text;
    }) rendered
  );
  packages = stubPackages;
  users = lib.mapAttrs (
    _: user:
    plain {
      inherit (user)
        uid
        group
        extraGroups
        home
        isSystemUser
        ;
    }
  ) config.users.users;
  groups = lib.mapAttrs (_: group: plain { inherit (group) gid; }) config.users.groups;
  tmpfiles = plain config.systemd.tmpfiles.rules;
  activationScripts = lib.mapAttrs (
    _: script: if lib.isString script then { text = plain script; deps = [ ]; } else plain { inherit (script) text deps; }
  ) config.system.activationScripts;
}
