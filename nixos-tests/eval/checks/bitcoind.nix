{
  lib,
  config,
  options,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.bitcoind;
  opt = options.bcm.bitcoind;
  storage = config.bcm.storage;
  h = import ./lib.nix { inherit lib rendered; };
  unit = config.systemd.services.bitcoind;
  conf = "bitcoin.conf";
  chain =
    {
      mainnet = "main";
      testnet4 = "testnet4";
      signet = "signet";
      regtest = "regtest";
    }
    .${config.bcm.network};
  loopback = [
    "127.0.0.0/8"
    "::1/128"
  ];
in
lib.optionals cfg.enable [
  (check "bitcoind: bitcoin.conf selects chain=${chain} and its section" (
    h.hasLine conf "chain=${chain}" && h.hasLine conf "[${chain}]"
  ) "chain line or section missing")
  (check "bitcoind: blocksdir=${cfg.blocksDir}${lib.optionalString (h.isDefault opt.blocksDir) " (bulk tier)"}" (
    h.hasLine conf "blocksdir=${cfg.blocksDir}" && (h.isDefault opt.blocksDir -> h.under storage.bulk cfg.blocksDir)
  ) "blocksdir not rendered or not on ${storage.bulk}")
  (check "bitcoind: datadir ${cfg.dataDir}${lib.optionalString (h.isDefault opt.dataDir) " (fast tier)"}" (
    h.contains "bitcoind-start" "-datadir=${cfg.dataDir} " && (h.isDefault opt.dataDir -> h.under storage.fast cfg.dataDir)
  ) "datadir not passed or not on ${storage.fast}")
  (check "bitcoind: dbcache, prune and txindex from the spec" (
    h.hasLine conf "dbcache=${toString cfg.dbcache}"
    && h.hasLine conf "prune=${toString cfg.prune}"
    && h.hasLine conf "txindex=${if cfg.txindex then "1" else "0"}"
  ) "dbcache/prune/txindex lines differ from the options")
  (check "bitcoind: ZMQ endpoints published and rendered" (
    h.hasLine conf "zmqpubrawblock=${cfg.zmq.endpoints.rawblock}" && h.hasLine conf "zmqpubrawtx=${cfg.zmq.endpoints.rawtx}"
  ) "zmqpub lines missing")
  (check "bitcoind: rpcauth comes from the host, not the store" (
    h.hasLine conf "includeconf=${config.bcm.lib.generatedSecretsDir}/bitcoind-rpcauth.conf" && !(h.contains conf "rpcauth=")
  ) "includeconf missing or rpcauth rendered")
  (check "bitcoind: Type=notify with systemd-notify" (
    unit.serviceConfig.Type == "notify" && h.contains conf "startupnotify="
  ) "unit is not Type=notify")
  (check "bitcoind: RequiresMountsFor datadir and blocksdir" (
    lib.all (p: lib.elem p unit.unitConfig.RequiresMountsFor) [
      cfg.dataDir
      cfg.blocksDir
    ]
  ) "RequiresMountsFor lacks a data directory")
]
++ lib.optionals (cfg.enable && cfg.tor.proxy) [
  (check "bitcoind: peers through Tor (proxy=${config.bcm.tor.socksEndpoint}, listenonion=0)" (
    h.hasLine conf "proxy=${config.bcm.tor.socksEndpoint}" && h.hasLine conf "listenonion=0"
  ) "proxy settings missing")
]
++ lib.optionals (cfg.enable && cfg.tor.enforce) [
  (check "bitcoind: Tor enforced, loopback only" (
    unit.serviceConfig.IPAddressAllow == loopback && unit.serviceConfig.IPAddressDeny == "any"
  ) "IPAddressAllow is ${builtins.toJSON (unit.serviceConfig.IPAddressAllow or null)}")
]
++ lib.optionals (cfg.enable && config.bcm.tor.enable) [
  (check "bitcoind: onion service for P2P, address announced from its file" (
    h.contains "torrc" "HiddenServicePort ${toString cfg.port} 127.0.0.1:${toString cfg.onionPort}"
    && h.hasLine conf "bind=127.0.0.1:${toString cfg.onionPort}=onion"
    && h.contains "bitcoind-start" "-externalip="
  ) "onion service, onion bind or externalip missing")
]
