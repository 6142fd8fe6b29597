{
  lib,
  config,
  options,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.fulcrum;
  h = import ./lib.nix { inherit lib rendered; };
  conf = "fulcrum.conf";
  rpcUser = config.bcm.bitcoind.rpc.users.fulcrum or null;
  unit = config.systemd.services.fulcrum;
in
lib.optionals cfg.enable [
  (check "fulcrum: data on ${cfg.dataDir}${lib.optionalString (h.isDefault options.bcm.fulcrum.dataDir) " (fast tier)"}" (
    h.hasLine conf "datadir = ${cfg.dataDir}"
    && (h.isDefault options.bcm.fulcrum.dataDir -> h.under config.bcm.storage.fast cfg.dataDir)
    && lib.elem cfg.dataDir unit.unitConfig.RequiresMountsFor
  ) "datadir not rendered, not on the fast tier or not guarded")
  (check "fulcrum: talks to bitcoind at ${config.bcm.bitcoind.rpc.endpoint} as its own RPC user" (
    h.hasLine conf "bitcoind = ${config.bcm.bitcoind.rpc.endpoint}" && h.hasLine conf "rpcuser = fulcrum" && rpcUser.owner == cfg.user
  ) "bitcoind endpoint or rpcuser wrong")
  (check "fulcrum: its RPC user is whitelisted in bitcoin.conf" (
    lib.any (l: lib.hasPrefix "rpcwhitelist=fulcrum:getbestblockhash," l || lib.hasPrefix "rpcwhitelist=fulcrum:" l) (h.lines "bitcoin.conf")
    && !(lib.any (l: lib.hasPrefix "rpcwhitelist=fulcrum:" l && lib.hasInfix "stop" l) (h.lines "bitcoin.conf"))
  ) "no rpcwhitelist line for fulcrum, or it allows stop")
  (check "fulcrum: TLS key made on the host at first start, password appended at start" (
    h.hasLine conf "key = ${cfg.tlsKey}" && h.contains "fulcrum-prepare" "openssl req -x509" && !(h.contains conf "rpcpassword")
  ) "TLS key or password handling differs")
]
