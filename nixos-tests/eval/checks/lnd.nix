{
  lib,
  config,
  options,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.lnd;
  bitcoind = config.bcm.bitcoind;
  h = import ./lib.nix { inherit lib rendered; };
  conf = "lnd.conf";
  unit = config.systemd.services.lnd;
  loopback = [
    "127.0.0.0/8"
    "::1/128"
  ];
in
lib.optionals cfg.enable (
  [
    (check "lnd: data on ${cfg.dataDir}${lib.optionalString (h.isDefault options.bcm.lnd.dataDir) " (fast tier)"}" (
      h.hasLine conf "lnddir=${cfg.dataDir}"
      && (h.isDefault options.bcm.lnd.dataDir -> h.under config.bcm.storage.fast cfg.dataDir)
      && lib.elem cfg.dataDir unit.unitConfig.RequiresMountsFor
    ) "lnddir not rendered, not on the fast tier or not guarded")
    (check "lnd: uses bitcoind's ZMQ endpoints ${bitcoind.zmq.endpoints.rawblock}, ${bitcoind.zmq.endpoints.rawtx}" (
      h.hasLine conf "bitcoind.zmqpubrawblock=${bitcoind.zmq.endpoints.rawblock}"
      && h.hasLine conf "bitcoind.zmqpubrawtx=${bitcoind.zmq.endpoints.rawtx}"
      && h.hasLine "bitcoin.conf" "zmqpubrawblock=${bitcoind.zmq.endpoints.rawblock}"
      && h.hasLine "bitcoin.conf" "zmqpubrawtx=${bitcoind.zmq.endpoints.rawtx}"
    ) "lnd.conf and bitcoin.conf disagree on ZMQ")
    (check "lnd: own whitelisted bitcoind RPC user, password appended at start" (
      h.hasLine conf "bitcoind.rpcuser=lnd"
      && lib.any (l: lib.hasPrefix "rpcwhitelist=lnd:" l) (h.lines "bitcoin.conf")
      && !(h.contains conf "rpcpass=")
      && h.contains "lnd-prepare" "bitcoind.rpcpass="
    ) "rpcuser, whitelist or password handling differs")
    (check "lnd: wallet created and unlocked without interaction" (
      h.hasLine conf "wallet-unlock-password-file=${cfg.walletPasswordFile}"
      && h.hasLine conf "wallet-unlock-allow-create=true"
      && h.contains "lnd-post-start" "/v1/initwallet"
      && config.bcm.lib.generatedSecrets.lnd-wallet-password.owner == cfg.user
    ) "wallet password file, allow-create or initwallet step missing")
    (check "lnd: macaroons baked per consumer (${lib.concatStringsSep ", " (lib.attrNames cfg.macaroons)})" (
      lib.all (
        name: h.contains "lnd-post-start" "bakemacaroon --save_to=/run/lnd/${name}.macaroon" && h.contains "lnd-post-start" cfg.macaroons.${name}.path
      ) (lib.attrNames cfg.macaroons)
      && !(lib.elem "macaroon:generate" cfg.macaroons.operator.permissions)
    ) "a macaroon is not baked or the operator may mint macaroons")
  ]
  ++ lib.optionals cfg.tor.proxy [
    (check "lnd: peers through Tor (tor.socks=${config.bcm.tor.socksEndpoint})" (
      h.hasLine conf "tor.active=true" && h.hasLine conf "tor.socks=${config.bcm.tor.socksEndpoint}"
    ) "tor section missing")
  ]
  ++ lib.optionals cfg.tor.enforce [
    (check "lnd: Tor enforced, loopback only" (unit.serviceConfig.IPAddressAllow == loopback) "IPAddressAllow is not loopback")
  ]
)
