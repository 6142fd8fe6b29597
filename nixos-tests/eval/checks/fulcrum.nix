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
  # Every bitcoind RPC Fulcrum 2.1 makes on Bitcoin Core (src/BitcoinD.cpp, Controller.cpp,
  # Controller/SynchMempoolTask.cpp, Mempool.cpp, Servers.cpp); "help" is its keep-alive
  # fallback. A call missing from the whitelist gets HTTP 403.
  required = [
    "estimatesmartfee"
    "getblock"
    "getblockchaininfo"
    "getblockhash"
    "getblockheader"
    "getmempoolinfo"
    "getnetworkinfo"
    "getrawmempool"
    "getrawtransaction"
    "getzmqnotifications"
    "help"
    "sendrawtransaction"
    "submitpackage"
    "uptime"
    "validateaddress"
  ];
  whitelisted = h.whitelistOf "fulcrum";
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
  (check "fulcrum: its whitelist covers every RPC Fulcrum makes, and not stop" (
    lib.subtractLists whitelisted required == [ ] && !(lib.elem "stop" whitelisted)
  ) "rpcwhitelist=fulcrum lacks ${lib.concatStringsSep ", " (lib.subtractLists whitelisted required)} or allows stop")
  (check "fulcrum: TLS key made on the host at first start, password appended at start" (
    h.hasLine conf "key = ${cfg.tlsKey}" && h.contains "fulcrum-prepare" "openssl req -x509 -newkey rsa:" && !(h.contains conf "rpcpassword")
  ) "TLS key or password handling differs")
  (
    if cfg.adminPort == null then
      check "fulcrum: unauthenticated admin RPC off" (!(h.contains conf "admin =")) "admin RPC configured though adminPort is null"
    else
      check "fulcrum: admin RPC on loopback port ${toString cfg.adminPort}, wrapper for the operator" (
        h.hasLine conf "admin = 127.0.0.1:${toString cfg.adminPort}" && lib.elem cfg.cli config.bcm.operator.tools
      ) "admin RPC not on loopback or wrapper missing"
  )
]
