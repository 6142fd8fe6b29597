{
  lib,
  config,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.tor;
  h = import ./lib.nix { inherit lib rendered; };
  onions = lib.attrNames (lib.filterAttrs (_: o: o.enable) cfg.onionServices);
in
lib.optionals cfg.enable [
  (check "tor: SOCKS port on ${cfg.socksEndpoint}" (h.contains "torrc-settings" "SOCKSPort ${cfg.socksEndpoint}") "SOCKSPort line missing")
  (check "tor: onion services ${lib.concatStringsSep ", " onions}" (
    lib.all (name: h.contains "torrc" "HiddenServiceDir ${cfg.dataDir}/onion/${name}\n") onions
  ) "a HiddenServiceDir is missing")
  (check "tor: onion addresses exported for the operator" (
    lib.all (name: h.contains "bcm-export-onion-addresses" cfg.onionServices.${name}.hostnameFile) onions
  ) "export script does not write every hostname file")
]
