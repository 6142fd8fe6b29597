# No file the modules render into the (world-readable) Nix store holds a secret: rendered files
# only point at secret files on the host. Generated secrets live outside the store with owner-only
# modes.
{
  lib,
  config,
  rendered,
  check,
  ...
}:
let
  # Shapes of secret values. A reference such as "rpcpassword=$(cat file)" does not match, nor a
  # printf placeholder ("password=\"%s\"") in a generator script.
  secretPatterns = [
    "rpcauth=[A-Za-z0-9_-]+:[0-9a-f]{16,}[$][0-9a-f]{64}"
    "(rpcpassword|bitcoind[.]rpcpass|rpc-login)[[:space:]]*=[[:space:]]*[^$%[:space:]\"]"
    "(password|user_[A-Za-z0-9_-]+)=\"[^\"$%]"
    "(pass(word)?|secret)[\"']?[[:space:]]*[=:][[:space:]]*[\"']?[A-Za-z0-9+/=]{16,}"
    "-----BEGIN [A-Z ]*PRIVATE KEY-----"
    "BCM-CANARY"
  ];
  findings = text: lib.filter (p: lib.any lib.isList (builtins.split p text)) secretPatterns;

  # The scanner must see a secret when there is one.
  selfTest =
    lib.all (sample: findings sample != [ ]) [
      "rpcauth=fulcrum:0123456789abcdef0123456789abcdef$0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
      "rpcpassword=hunter2"
      "bitcoind.rpcpass=hunter2"
      "user_admin=\"hunter2\""
      "password = c2VjcmV0c2VjcmV0c2VjcmV0"
    ]
    && findings "echo \"rpcpassword=$(cat /var/lib/bcm-secrets/x)\"" == [ ]
    && findings "printf 'username=\"%s\" password=\"%s\";'" == [ ];

  leaks = lib.concatMap (file: map (p: "${file.name} matches ${p}") (findings file.text)) rendered;

  secrets = lib.filterAttrs (_: s: s.enable) config.bcm.lib.generatedSecrets;
  inStore = lib.attrNames (lib.filterAttrs (_: s: lib.hasPrefix "/nix/store" s.file) secrets);
  badModes = lib.mapAttrsToList (n: s: "${n} ${s.mode}") (
    lib.filterAttrs (
      _: s:
      !(lib.elem s.mode [
        "0400"
        "0440"
        "0600"
        "0640"
      ])
    ) secrets
  );
in
[
  (check "secret scanner detects planted secrets" selfTest "a known secret sample was not detected")
  (check "no rendered store file contains a secret (${toString (lib.length rendered)} files scanned)" (leaks == [ ]) (
    lib.concatStringsSep "; " leaks
  ))
  (check "generated secrets live outside the Nix store" (inStore == [ ]) (lib.concatStringsSep ", " inStore))
  (check "generated secrets are 0600/0640 (or read-only)" (badModes == [ ]) (lib.concatStringsSep ", " badModes))
]
