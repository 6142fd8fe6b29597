# Operator secrets (modules/secrets.nix): every declared secret is decrypted at activation from
# its age file with the host's SSH host key, into the runtime directory, with the declared owner,
# group and mode; a host without secrets gets no activation script.
{
  lib,
  config,
  check,
  ...
}:
let
  secrets = config.bcm.secrets;
  script = config.system.activationScripts.bcmSecrets or null;
  # Compared as plain text: store paths in a regex pattern are refused by Nix.
  plain = builtins.unsafeDiscardStringContext;
  text = if script == null then "" else plain script.text;

  perSecret = name: secret: [
    (check "secret ${name}: decrypted at activation from ${baseNameOf secret.file} to ${secret.owner}:${secret.group} ${secret.mode}"
      (lib.hasInfix (plain "decrypt ${
        lib.escapeShellArgs [
          name
          "${secret.file}"
          secret.owner
          secret.group
          secret.mode
        ]
      }") text)
      "the activation script does not decrypt ${name} with the declared file, owner, group and mode"
    )
    # age files are binary, which Nix cannot read into a string; pytest opens this one with age.
    (check "secret ${name}: ${baseNameOf secret.file} exists" (
      builtins.pathExists secret.file && lib.hasSuffix ".age" (toString secret.file)
    ) "${toString secret.file} is missing or not a .age file")
    (check "secret ${name}: appears at ${secret.path}" (secret.path == "${config.bcm.secretsDir}/${name}")
      "path is ${secret.path}"
    )
  ];
in
if secrets == { } then
  [
    (check "no operator secrets, no decryption at activation" (script == null) "bcmSecrets activation script without secrets")
  ]
else
  [
    (check "operator secrets are decrypted after users and groups exist" (
      lib.elem "users" script.deps && lib.elem "groups" script.deps
    ) "deps are ${toString script.deps}")
    (check "operator secrets are decrypted with the SSH host key" (
      lib.hasInfix "/etc/ssh/ssh_host_ed25519_key" text && lib.hasInfix "--decrypt" text
    ) "the activation script does not use the host key")
    (check "decrypted secrets stay out of the Nix store" (
      lib.hasPrefix "/run/" config.bcm.secretsDir && !(lib.hasInfix "-o /nix/store" text)
    ) "secretsDir is ${config.bcm.secretsDir}")
  ]
  ++ lib.concatLists (lib.mapAttrsToList perSecret secrets)
