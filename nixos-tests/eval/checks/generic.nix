# Checks every host must pass whatever it enables: assertions, storage guards on every unit,
# directory ownership, and the shared hardening profile.
{
  lib,
  config,
  failedAssertions,
  hardening,
  check,
  ...
}:
let
  units = lib.filterAttrs (_: unit: unit.enable) config.systemd.services;
  relaxations = removeAttrs hardening [ "strict" ];

  writablePaths = unit: lib.filter (p: !lib.hasPrefix "-" p) (lib.toList (unit.serviceConfig.ReadWritePaths or [ ]));
  mountGuards = unit: lib.toList (unit.unitConfig.RequiresMountsFor or [ ]);
  covered = guards: path: lib.any (g: path == g || lib.hasPrefix "${g}/" path) guards;

  unguarded = lib.concatLists (
    lib.mapAttrsToList (
      name: unit: map (p: "${name}: ${p}") (lib.filter (p: !covered (mountGuards unit) p) (writablePaths unit))
    ) units
  );

  # A data directory is created by a tmpfiles rule owned by the unit's user, writable by it alone.
  dirRule =
    user: path:
    lib.any (
      rule: builtins.match "d ${lib.escapeRegex path} 07[0-5][0-5] ${lib.escapeRegex user} .*" rule != null
    ) config.systemd.tmpfiles.rules;
  uncreated = lib.concatLists (
    lib.mapAttrsToList (
      name: unit:
      let
        user = unit.serviceConfig.User or null;
      in
      lib.optionals (user != null) (map (p: "${name}: ${p}") (lib.filter (p: !dirRule user p) (writablePaths unit)))
    ) units
  );

  # Each strict setting is kept, or replaced by the value of a named relaxation.
  allowedValues = key: [ hardening.strict.${key} ] ++ lib.concatMap (r: lib.optional (r ? ${key}) r.${key}) (lib.attrValues relaxations);
  hardeningViolations = lib.concatLists (
    lib.mapAttrsToList (
      name: unit:
      lib.concatMap (
        key:
        let
          value = unit.serviceConfig.${key} or null;
        in
        lib.optional (!(lib.elem value (allowedValues key))) "${name}.${key} = ${builtins.toJSON value}"
      ) (lib.attrNames hardening.strict)
    ) units
  );
  ipUnrestricted = lib.attrNames (lib.filterAttrs (_: unit: (unit.serviceConfig.IPAddressDeny or null) != "any") units);
in
[
  (check "assertions hold" (failedAssertions == [ ]) (lib.concatStringsSep "; " failedAssertions))
  (check "every unit has RequiresMountsFor on its writable paths" (unguarded == [ ]) (lib.concatStringsSep ", " unguarded))
  (check "data directories are created for the unit's user, writable by it alone" (uncreated == [ ]) (
    lib.concatStringsSep ", " uncreated
  ))
  (check "every unit uses the hardening library (${toString (lib.length (lib.attrNames units))} units)" (
    hardeningViolations == [ ]
  ) (lib.concatStringsSep ", " hardeningViolations))
  (check "every unit starts from IPAddressDeny=any" (ipUnrestricted == [ ]) (lib.concatStringsSep ", " ipUnrestricted))
]
