{
  lib,
  config,
  check,
  ...
}:
let
  cfg = config.bcm.operator;
  user = config.users.users.${cfg.name};
  toolNames = map (t: t.name) cfg.tools;
in
lib.optionals cfg.enable [
  (check "operator: ${cfg.name} is a normal user in ${config.bcm.lib.operatorGroup} only, with SSH keys" (
    user.isNormalUser
    && user.extraGroups == [ config.bcm.lib.operatorGroup ]
    && user.openssh.authorizedKeys.keys == cfg.sshAuthorizedKeys
  ) "operator user is not set up as expected")
  (check "operator: gets the CLI wrappers (${lib.concatStringsSep ", " toolNames})" (user.packages == cfg.tools) "packages differ from the CLI wrappers")
]
