# Checks every host must pass whatever it enables: assertions, storage guards on every unit,
# directory ownership, and the shared hardening profile.
{
  lib,
  config,
  options,
  rendered,
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

  # A data directory is created for the unit's user, writable by it alone: by a tmpfiles rule
  # on the root filesystem, or, on a storage tier, by the unit's own root ExecStartPre after the
  # mount (modules/lib mkDirsScript).
  dirRule =
    user: path:
    lib.any (
      rule: builtins.match "d ${lib.escapeRegex path} 07[0-5][0-5] ${lib.escapeRegex user} .*" rule != null
    ) config.systemd.tmpfiles.rules;
  dirsScriptText =
    name: unit:
    let
      pre = lib.filter (lib.hasSuffix "-${name}-dirs") (lib.toList (unit.serviceConfig.ExecStartPre or [ ]));
      files = lib.filter (f: pre != [ ] && "+${f.path}" == lib.head pre) rendered;
    in
    if files == [ ] then "" else (lib.head files).text;
  dirScripted =
    name: unit: user: path:
    # escapeShellArgs quotes only what needs quoting.
    builtins.match ".*\nensure_dir '?${lib.escapeRegex path}'? '?07[0-5][0-5]'? '?${lib.escapeRegex user}'? .*" (
      dirsScriptText name unit
    ) != null;
  uncreated = lib.concatLists (
    lib.mapAttrsToList (
      name: unit:
      let
        user = unit.serviceConfig.User or null;
      in
      lib.optionals (user != null) (
        map (p: "${name}: ${p}") (lib.filter (p: !(dirRule user p || dirScripted name unit user p)) (writablePaths unit))
      )
    ) units
  );

  # tmpfiles runs before a nofail or network mount is up: a rule on a tier creates the directory
  # under the bare mount point, which the mount then hides.
  # A tier without a definition (a host with everything on one disk) has no mount point; reading
  # the option would fail, so ask the option system whether it is set.
  tiers = map (tier: config.bcm.storage.${tier}) (
    lib.filter (tier: options.bcm.storage.${tier}.isDefined) [
      "fast"
      "bulk"
    ]
  );
  onTier = path: lib.any (t: path == t || lib.hasPrefix "${t}/" path) tiers;
  tmpfilesOnTiers = lib.filter (
    rule:
    let
      fields = lib.splitString " " rule;
    in
    lib.length fields > 1 && onTier (lib.elemAt fields 1)
  ) config.systemd.tmpfiles.rules;

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
  (check "no tmpfiles rule creates a directory on a storage tier (it would run before the mount)" (
    tmpfilesOnTiers == [ ]
  ) (lib.concatStringsSep ", " tmpfilesOnTiers))
  (check "every unit uses the hardening library (${toString (lib.length (lib.attrNames units))} units)" (
    hardeningViolations == [ ]
  ) (lib.concatStringsSep ", " hardeningViolations))
  (check "every unit starts from IPAddressDeny=any" (ipUnrestricted == [ ]) (lib.concatStringsSep ", " ipUnrestricted))
]
